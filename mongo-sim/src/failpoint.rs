//! mongod's fail points (`configureFailPoint`), for fault injection in tests.
//!
//! `failCommand` follows the drivers' "Server Fail Point" test specification: it fires only
//! for the listed commands (and the given `appName` and `namespace`), a `times` mode counts
//! down only when it fires, and `configureFailPoint` itself is never failed. The other fail
//! points fire where mongod checks them in its code, with the data they were given:
//! `failGetMoreAfterCursorCheckout` (a getMore fails with `errorCode` once its cursor is
//! checked out, so mongod labels the error as it labels real ones), `onPrimaryTransactionalWrite`
//! (after each statement of a retryable write: close the connection, and with
//! `failBeforeCommitExceptionCode` fail the statement so it is not applied) and
//! `maxTimeAlwaysTimeOut` (every operation with `maxTimeMS` exceeds it).
//! Each counts how often it fired (`count` in the reply of the next `configureFailPoint`).

use crate::error::{self, CommandError, Result};
use bson::{Bson, Document, doc};
use parking_lot::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
enum Mode {
    AlwaysOn,
    /// Fires this many more times, then turns itself off.
    Times(i64),
    /// Lets this many matching commands pass, then fires every time.
    Skip(i64),
}

#[derive(Debug, Clone)]
struct FailCommand {
    mode: Mode,
    commands: Vec<String>,
    error_code: Option<i32>,
    error_labels: Option<Vec<String>>,
    close_connection: bool,
    block: Option<Duration>,
    write_concern_error: Option<Document>,
    app_name: Option<String>,
    namespace: Option<String>,
}

/// The fail points mongod checks at one place in its code, rather than per command name.
pub const SITE_FAIL_POINTS: &[&str] = &[
    "failGetMoreAfterCursorCheckout",
    "onPrimaryTransactionalWrite",
    "maxTimeAlwaysTimeOut",
];

/// A configured site fail point: when it fires, and its `data`.
#[derive(Debug, Clone)]
struct SitePoint {
    mode: Mode,
    data: Document,
}

/// Configured fail points.
#[derive(Default)]
pub struct FailPoints {
    fail_command: Option<FailCommand>,
    sites: std::collections::HashMap<&'static str, SitePoint>,
    /// How often each fail point fired, over the server's lifetime (mongod's `timesEntered`).
    times_entered: std::collections::HashMap<&'static str, i64>,
}

impl Mode {
    /// Whether a fail point in this mode fires now, counting it down as mongod's
    /// `shouldFail` does.
    fn fires(&mut self) -> bool {
        match self {
            Mode::AlwaysOn => true,
            Mode::Times(n) => {
                *n -= 1;
                true
            }
            Mode::Skip(n) if *n > 0 => {
                *n -= 1;
                false
            }
            Mode::Skip(_) => true,
        }
    }
}

/// What a fired `failCommand` does to a command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Triggered {
    /// Close the socket without replying.
    pub close_connection: bool,
    /// Sleep this long before running the command.
    pub block: Option<Duration>,
    /// Fail the command with this error instead of running it.
    pub error: Option<CommandError>,
    /// Run the command and attach this as `writeConcernError`.
    pub write_concern_error: Option<Document>,
    /// When given, exactly these labels are reported; none are added automatically.
    pub error_labels: Option<Vec<String>>,
}

impl FailPoints {
    /// Decides whether `failCommand` fires for `command` (from a client named `app_name`, on
    /// `namespace`, `db.coll`, when the command names a collection), counting it down if so.
    pub fn evaluate(
        &mut self,
        command: &str,
        app_name: Option<&str>,
        namespace: Option<&str>,
    ) -> Option<Triggered> {
        let fp = self.fail_command.as_mut()?;
        if !fp.commands.iter().any(|c| c == command) {
            return None;
        }
        if let Some(app) = &fp.app_name
            && app_name != Some(app.as_str())
        {
            return None;
        }
        if let Some(ns) = &fp.namespace
            && namespace != Some(ns.as_str())
        {
            return None;
        }
        if !fp.mode.fires() {
            return None;
        }
        let fp = fp.clone();
        if fp.mode == Mode::Times(0) {
            self.fail_command = None;
        }
        *self.times_entered.entry("failCommand").or_default() += 1;
        let error = fp.error_code.map(|code| {
            let mut e =
                CommandError::from_code(code, "Failing command via 'failCommand' failpoint");
            e.code_name = code_name(code);
            if let Some(labels) = &fp.error_labels {
                e.labels = labels.clone();
            }
            e
        });
        Some(Triggered {
            close_connection: fp.close_connection,
            block: fp.block,
            error,
            write_concern_error: fp.write_concern_error,
            error_labels: fp.error_labels,
        })
    }
}

impl FailPoints {
    /// Whether the site fail point `name` fires now; its `data` when it does.
    pub fn fire(&mut self, name: &str) -> Option<Document> {
        self.fire_if(name, |_| true)
    }

    /// As [`FailPoints::fire`], for a fail point that applies only where `applies` accepts its
    /// data (mongod's `executeIf`): one that does not apply is not counted down.
    pub fn fire_if(&mut self, name: &str, applies: impl Fn(&Document) -> bool) -> Option<Document> {
        let (key, point) = self.sites.iter_mut().find(|(k, _)| **k == name)?;
        let key = *key;
        if !applies(&point.data) || !point.mode.fires() {
            return None;
        }
        let data = point.data.clone();
        if point.mode == Mode::Times(0) {
            self.sites.remove(key);
        }
        *self.times_entered.entry(key).or_default() += 1;
        Some(data)
    }

    /// Whether the site fail point `name` is configured (it may still skip).
    pub fn is_set(&self, name: &str) -> bool {
        self.sites.contains_key(name)
    }
}

/// `codeName` for codes tests commonly inject that the shared table does not list.
pub fn code_name(code: i32) -> String {
    match code {
        8 => "UnknownError",
        11 => "UserNotFound",
        13 => "Unauthorized",
        18 => "AuthenticationFailed",
        63 => "OBSOLETE_StaleShardVersion",
        79 => "UnknownReplWriteConcern",
        100 => "UnsatisfiableWriteConcern",
        112 => "WriteConflict",
        133 => "FailedToSatisfyReadPreference",
        134 => "ReadConcernMajorityNotAvailableYet",
        150 => "StaleEpoch",
        186 => "ClientMetadataCannotBeMutated",
        225 => "TransactionTooOld",
        234 => "RetryChangeStream",
        251 => "NoSuchTransaction",
        352 => "UnsupportedOpQueryCommand",
        13388 => "StaleConfig",
        _ => return error::code_name(code),
    }
    .to_string()
}

fn bad_value(msg: impl Into<String>) -> CommandError {
    CommandError::bad_value(msg)
}

fn parse_mode(mode: &Bson) -> Result<Option<Mode>> {
    match mode {
        Bson::String(s) if s == "alwaysOn" => Ok(Some(Mode::AlwaysOn)),
        Bson::String(s) if s == "off" => Ok(None),
        Bson::String(s) => Err(bad_value(format!(
            "unknown mode: {s}; 'mode' must be one of 'off', 'alwaysOn', 'times', and 'skip'"
        ))),
        Bson::Document(d) => {
            let (key, value) = match d.iter().next() {
                Some(kv) if d.len() == 1 => kv,
                _ => {
                    return Err(bad_value(
                        "'mode' must be one of 'off', 'alwaysOn', 'times', and 'skip'",
                    ));
                }
            };
            let n = crate::bsontype::as_i64(value)
                .ok_or_else(|| error_type(format!("'{key}' option to 'mode' must be a number")))?;
            match key.as_str() {
                "times" if n > 0 => Ok(Some(Mode::Times(n))),
                "times" if n == 0 => Ok(None),
                "skip" if n >= 0 => Ok(Some(Mode::Skip(n))),
                "times" | "skip" => Err(bad_value(format!(
                    "'{key}' option to 'mode' must be positive"
                ))),
                "activationProbability" => Err(CommandError::not_supported(
                    "mongo-sim does not support the 'activationProbability' fail point mode",
                )),
                other => Err(bad_value(format!(
                    "unknown mode: {other}; 'mode' must be one of 'off', 'alwaysOn', 'times', and 'skip'"
                ))),
            }
        }
        _ => Err(error_type(
            "'mode' must be a string or JSON object".to_string(),
        )),
    }
}

fn error_type(msg: String) -> CommandError {
    CommandError::type_mismatch(msg)
}

fn parse_data(data: &Document, mode: Mode) -> Result<FailCommand> {
    let commands = match data.get("failCommands") {
        Some(Bson::Array(a)) => a
            .iter()
            .map(|c| match c {
                Bson::String(s) => Ok(s.clone()),
                other => Err(crate::fields::wrong_type(
                    "failCommand",
                    "failCommands",
                    other,
                    "string",
                )),
            })
            .collect::<Result<Vec<_>>>()?,
        Some(other) => {
            return Err(crate::fields::wrong_type(
                "failCommand",
                "failCommands",
                other,
                "array",
            ));
        }
        None => {
            return Err(bad_value(
                "Failed to parse failCommand fail point data: 'failCommands' is required",
            ));
        }
    };
    let int = |field: &str| -> Result<Option<i64>> {
        match data.get(field) {
            None => Ok(None),
            Some(v) => crate::bsontype::as_i64(v)
                .map(Some)
                .ok_or_else(|| crate::fields::wrong_type("failCommand", field, v, "int")),
        }
    };
    let flag = |field: &str| -> Result<bool> {
        match data.get(field) {
            None => Ok(false),
            Some(v) => crate::bsontype::as_bool(v)
                .ok_or_else(|| crate::fields::wrong_type("failCommand", field, v, "bool")),
        }
    };
    let string = |field: &str| -> Result<Option<String>> {
        match data.get(field) {
            None => Ok(None),
            Some(Bson::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(crate::fields::wrong_type("failCommand", field, v, "string")),
        }
    };
    let error_labels = match data.get("errorLabels") {
        None => None,
        Some(Bson::Array(a)) => Some(
            a.iter()
                .map(|l| match l {
                    Bson::String(s) => Ok(s.clone()),
                    other => Err(crate::fields::wrong_type(
                        "failCommand",
                        "errorLabels",
                        other,
                        "string",
                    )),
                })
                .collect::<Result<Vec<_>>>()?,
        ),
        Some(v) => {
            return Err(crate::fields::wrong_type(
                "failCommand",
                "errorLabels",
                v,
                "array",
            ));
        }
    };
    let write_concern_error = match data.get("writeConcernError") {
        None => None,
        Some(Bson::Document(d)) => Some(d.clone()),
        Some(v) => {
            return Err(crate::fields::wrong_type(
                "failCommand",
                "writeConcernError",
                v,
                "object",
            ));
        }
    };
    let block = if flag("blockConnection")? {
        let ms = int("blockTimeMS")?
            .ok_or_else(|| bad_value("'blockTimeMS' must be set when 'blockConnection' is true"))?;
        Some(Duration::from_millis(ms.max(0) as u64))
    } else {
        None
    };
    let error_code = match int("errorCode")? {
        None => None,
        Some(c) => Some(
            i32::try_from(c).map_err(|_| bad_value(format!("errorCode {c} is out of range")))?,
        ),
    };
    Ok(FailCommand {
        mode,
        commands,
        error_code,
        error_labels,
        close_connection: flag("closeConnection")?,
        block,
        write_concern_error,
        app_name: string("appName")?,
        namespace: string("namespace")?,
    })
}

/// `configureFailPoint` run on database `db` (manual: "configureFailPoint"); the reply's `count`
/// is how often the fail point fired before this call.
pub fn configure(failpoints: &Mutex<FailPoints>, db: &str, cmd: &Document) -> Result<Document> {
    if db != "admin" {
        let mut e = CommandError::from_code(
            13,
            "configureFailPoint may only be run against the admin database.",
        );
        e.code_name = code_name(13);
        return Err(e);
    }
    let name = match cmd.get("configureFailPoint") {
        Some(Bson::String(s)) => s.clone(),
        Some(v) => {
            return Err(crate::fields::wrong_type(
                "configureFailPoint",
                "configureFailPoint",
                v,
                "string",
            ));
        }
        None => return Err(bad_value("configureFailPoint requires a fail point name")),
    };
    let site = SITE_FAIL_POINTS.iter().find(|n| **n == name).copied();
    if name != "failCommand" && site.is_none() {
        return Err(CommandError::not_supported(format!(
            "mongo-sim does not support the fail point '{name}'"
        )));
    }
    let mode = match cmd.get("mode") {
        Some(m) => parse_mode(m)?,
        None => return Err(bad_value("Missing mode argument")),
    };
    let data = match cmd.get("data") {
        Some(Bson::Document(d)) => d.clone(),
        None => Document::new(),
        Some(v) => {
            return Err(crate::fields::wrong_type(
                "configureFailPoint",
                "data",
                v,
                "object",
            ));
        }
    };
    let mut fps = failpoints.lock();
    let key = site.unwrap_or("failCommand");
    let count = fps.times_entered.get(key).copied().unwrap_or(0);
    match site {
        Some(site) => match mode {
            Some(mode) => {
                fps.sites.insert(site, SitePoint { mode, data });
            }
            None => {
                fps.sites.remove(site);
            }
        },
        None => {
            let config = mode.map(|mode| parse_data(&data, mode)).transpose()?;
            fps.fail_command = config;
        }
    }
    // mongod's `appendIntOrLL`: an int when it fits.
    let count = match i32::try_from(count) {
        Ok(n) => Bson::Int32(n),
        Err(_) => Bson::Int64(count),
    };
    Ok(doc! {"count": count})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failpoints() -> Mutex<FailPoints> {
        Mutex::new(FailPoints::default())
    }

    fn fire(s: &Mutex<FailPoints>, cmd: &str) -> Option<Triggered> {
        s.lock().evaluate(cmd, None, Some("db.c"))
    }

    #[test]
    fn times_counts_down_only_for_listed_commands() {
        let s = failpoints();
        let r = configure(
            &s,
            "admin",
            &doc! {"configureFailPoint": "failCommand", "mode": {"times": 2},
            "data": {"failCommands": ["ping"], "errorCode": 91}},
        )
        .unwrap();
        assert_eq!(r, doc! {"count": 0});
        assert!(fire(&s, "buildInfo").is_none());
        let t = fire(&s, "ping").unwrap();
        let e = t.error.unwrap();
        assert_eq!((e.code, e.code_name.as_str()), (91, "ShutdownInProgress"));
        assert!(e.labels.is_empty());
        assert!(fire(&s, "ping").is_some());
        assert!(fire(&s, "ping").is_none());
        let r = configure(
            &s,
            "admin",
            &doc! {"configureFailPoint": "failCommand", "mode": "off"},
        )
        .unwrap();
        assert_eq!(r, doc! {"count": 2});
    }

    #[test]
    fn skip_lets_the_first_commands_pass() {
        let s = failpoints();
        configure(
            &s,
            "admin",
            &doc! {"configureFailPoint": "failCommand", "mode": {"skip": 1},
            "data": {"failCommands": ["ping"], "closeConnection": true}},
        )
        .unwrap();
        assert!(fire(&s, "ping").is_none());
        assert!(fire(&s, "ping").unwrap().close_connection);
        assert!(fire(&s, "ping").unwrap().close_connection);
    }

    #[test]
    fn app_name_and_namespace_narrow_the_fail_point() {
        let s = failpoints();
        configure(
            &s,
            "admin",
            &doc! {"configureFailPoint": "failCommand", "mode": "alwaysOn",
            "data": {"failCommands": ["insert"], "appName": "a", "namespace": "db.c",
                     "errorCode": 10107, "errorLabels": ["X"]}},
        )
        .unwrap();
        assert!(fire(&s, "insert").is_none());
        let mut fps = s.lock();
        assert!(
            fps.evaluate("insert", Some("a"), Some("db.other"))
                .is_none()
        );
        let t = fps.evaluate("insert", Some("a"), Some("db.c")).unwrap();
        assert_eq!(t.error.unwrap().labels, vec!["X".to_string()]);
    }

    #[test]
    fn only_failcommand_on_admin_is_accepted() {
        let s = failpoints();
        let cmd = doc! {"configureFailPoint": "failCommand", "mode": "off"};
        assert_eq!(configure(&s, "test", &cmd).unwrap_err().code, 13);
        let cmd = doc! {"configureFailPoint": "other", "mode": "off"};
        let e = configure(&s, "admin", &cmd).unwrap_err();
        assert_eq!(e.code, 115);
        assert!(e.errmsg.contains("other"));
        let cmd = doc! {"configureFailPoint": "failCommand", "mode": {"times": -1},
        "data": {"failCommands": ["ping"]}};
        assert_eq!(configure(&s, "admin", &cmd).unwrap_err().code, 2);
    }
}
