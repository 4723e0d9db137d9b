//! Operator commands that describe the server process itself: `getCmdLineOpts` and
//! `getParameter`.
//!
//! Drivers' test harnesses ask these at start-up, before any test runs: whether the server
//! runs with authentication (`getCmdLineOpts.parsed.security`), and whether test commands
//! such as `configureFailPoint` are enabled (`getParameter: "*"`, `enableTestCommands`). The
//! answers describe mongo-sim as the equivalent `mongod` command line would: a replica-set
//! member on the announced port with `--setParameter enableTestCommands=1`, no auth, no TLS.

use crate::error::{self, CommandError, Result};
use crate::handshake::LOGICAL_SESSION_TIMEOUT_MINUTES;
use crate::state::{CommandContext, Shared};
use bson::{Bson, Document, doc};

/// Commands this module answers.
pub const COMMANDS: &[&str] = &["getCmdLineOpts", "getParameter"];

/// Runs one of [`COMMANDS`].
pub fn run(shared: &Shared, ctx: &CommandContext, name: &str, cmd: &Document) -> Result<Document> {
    match name {
        "getCmdLineOpts" => get_cmd_line_opts(shared, ctx),
        _ => get_parameter(ctx, cmd),
    }
}

/// Both commands are admin-only in mongod (`adminOnly()`): elsewhere they fail with
/// Unauthorized, "<name> may only be run against the admin database."
fn admin_only(ctx: &CommandContext, name: &str) -> Result<()> {
    if ctx.db == "admin" {
        return Ok(());
    }
    Err(CommandError::new(
        error::UNAUTHORIZED,
        format!("{name} may only be run against the admin database."),
    ))
}

/// `getCmdLineOpts` (manual: "getCmdLineOpts"): `argv` and the `parsed` options, as mongod
/// started with `--replSet <set> --bind_ip <ip> --port <port> --setParameter
/// enableTestCommands=1` reports them.
fn get_cmd_line_opts(shared: &Shared, ctx: &CommandContext) -> Result<Document> {
    admin_only(ctx, "getCmdLineOpts")?;
    let (bind, port) = match shared.host.rsplit_once(':') {
        Some((bind, port)) => (bind.to_string(), port.parse::<i32>().unwrap_or(0)),
        None => (shared.options.bind.clone(), i32::from(shared.options.port)),
    };
    let set = shared.options.replica_set.clone();
    Ok(doc! {
        "argv": [
            "mongod", "--replSet", set.clone(), "--bind_ip", bind.clone(),
            "--port", port.to_string(), "--setParameter", "enableTestCommands=1",
        ],
        "parsed": {
            "net": {"bindIp": bind, "port": port},
            "replication": {"replSet": set},
            "setParameter": {"enableTestCommands": "1"},
            "storage": {"engine": "inMemory"},
        },
    })
}

/// The server parameters mongo-sim reports, with the values it actually behaves by.
fn parameters() -> Vec<(&'static str, Bson)> {
    vec![
        // configureFailPoint and the other test commands are available.
        ("enableTestCommands", Bson::Boolean(true)),
        (
            "featureCompatibilityVersion",
            Bson::Document(doc! {"version": "7.0"}),
        ),
        (
            "localLogicalSessionTimeoutMinutes",
            Bson::Int32(LOGICAL_SESSION_TIMEOUT_MINUTES),
        ),
        ("requireApiVersion", Bson::Boolean(false)),
        ("transactionLifetimeLimitSeconds", Bson::Int32(60)),
    ]
}

/// `getParameter` (manual: "getParameter"): `getParameter: "*"` returns every parameter;
/// otherwise each named field is looked up and an unknown one fails with InvalidOptions.
fn get_parameter(ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    admin_only(ctx, "getParameter")?;
    let all = matches!(cmd.get("getParameter"), Some(Bson::String(s)) if s == "*");
    let known = parameters();
    let mut reply = Document::new();
    if all {
        for (name, value) in known {
            reply.insert(name, value);
        }
        return Ok(reply);
    }
    for key in cmd.keys().skip(1) {
        if crate::fields::GENERIC_FIELDS.contains(&key.as_str()) {
            continue;
        }
        match known.iter().find(|(name, _)| name == key) {
            Some((name, value)) => {
                reply.insert(*name, value.clone());
            }
            None => {
                return Err(CommandError::new(
                    error::INVALID_OPTIONS,
                    format!("no option found to get: {key}"),
                ));
            }
        }
    }
    if reply.is_empty() {
        return Err(CommandError::new(
            error::INVALID_OPTIONS,
            "no option found to get",
        ));
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ServerOptions;

    fn ctx(db: &str) -> CommandContext {
        CommandContext {
            db: db.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn get_parameter_names_one_or_all() {
        let r = get_parameter(
            &ctx("admin"),
            &doc! {"getParameter": 1, "featureCompatibilityVersion": 1},
        )
        .unwrap();
        assert_eq!(r, doc! {"featureCompatibilityVersion": {"version": "7.0"}});
        let err = get_parameter(&ctx("admin"), &doc! {"getParameter": 1, "nope": 1}).unwrap_err();
        assert_eq!(err.code, 72);
        let r = get_parameter(&ctx("admin"), &doc! {"getParameter": "*"}).unwrap();
        assert!(r.get_bool("enableTestCommands").unwrap());
        let err = get_parameter(&ctx("test"), &doc! {"getParameter": "*"}).unwrap_err();
        assert_eq!(err.code, 13);
    }

    #[test]
    fn command_line_options_show_the_port_and_the_set() {
        let shared = Shared::new(ServerOptions::default(), "127.0.0.1:4321".to_string());
        let r = get_cmd_line_opts(&shared, &ctx("admin")).unwrap();
        let parsed = r.get_document("parsed").unwrap();
        assert_eq!(
            parsed.get_document("net").unwrap().get_i32("port").unwrap(),
            4321
        );
        assert_eq!(
            parsed
                .get_document("replication")
                .unwrap()
                .get_str("replSet")
                .unwrap(),
            "rs0"
        );
        assert!(!parsed.contains_key("security"));
        assert!(get_cmd_line_opts(&shared, &ctx("test")).is_err());
    }
}
