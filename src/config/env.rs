//! Configuration from the environment: every setting outside `[[projections]]` can be
//! overridden by a variable named `MONGO_PROJECTOR_<SECTION>_<KEY>` in upper case
//! (`MONGO_PROJECTOR_HTTP_ADDRESS=127.0.0.1:9465`, `MONGO_PROJECTOR_CHECKPOINTS_EVERY_EVENTS=5000`).
//!
//! An override is typed by the setting it names and then validated exactly like the file: it
//! is put into the parsed file's table before the file is read, and any problem is reported
//! with the variable's name. A `MONGO_PROJECTOR_*` variable that names no setting is an error,
//! not ignored: a typo would otherwise leave the file's value in force silently.

/// The prefix of every override.
pub(crate) const PREFIX: &str = "MONGO_PROJECTOR_";

/// Variables with the prefix that are not settings: `--config`'s.
pub(crate) const RESERVED: &[&str] = &["MONGO_PROJECTOR_CONFIG"];

/// How a variable's text becomes a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Integer,
    Boolean,
    /// Kept as text: the reader parses and checks durations (`"250ms"`, `"5s"`).
    Duration,
}

/// Every overridable setting, by section.
pub(crate) const SETTINGS: &[(&str, &[(&str, Kind)])] = &[
    (
        "http",
        &[
            ("enabled", Kind::Boolean),
            ("address", Kind::Text),
            ("liveness_timeout", Kind::Duration),
            ("readiness_max_lag", Kind::Duration),
            ("poll_every", Kind::Duration),
        ],
    ),
    (
        "checkpoints",
        &[
            ("database", Kind::Text),
            ("collection", Kind::Text),
            ("every_events", Kind::Integer),
            ("every", Kind::Duration),
        ],
    ),
    ("shutdown", &[("deadline", Kind::Duration)]),
    (
        "source",
        &[
            ("max_await", Kind::Duration),
            ("reopen_backoff_initial", Kind::Duration),
            ("reopen_backoff_max", Kind::Duration),
            ("unknown_error_retries", Kind::Integer),
            ("lanes", Kind::Integer),
            ("batch_size", Kind::Integer),
        ],
    ),
    ("audit", &[("every", Kind::Duration)]),
    (
        "leases",
        &[
            ("enabled", Kind::Boolean),
            ("ttl", Kind::Duration),
            ("renew_every", Kind::Duration),
            ("collection", Kind::Text),
            ("holder", Kind::Text),
        ],
    ),
];

/// One applied override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The variable, e.g. `MONGO_PROJECTOR_HTTP_ADDRESS`.
    pub variable: String,
    /// The setting it overrides, e.g. `http.address`.
    pub path: String,
}

/// The variable that overrides `section.key`.
pub fn variable(section: &str, key: &str) -> String {
    format!("{PREFIX}{}_{}", section.to_uppercase(), key.to_uppercase())
}

/// Puts every `MONGO_PROJECTOR_*` variable of `vars` into `root` (the parsed file), typed by
/// the setting it names. Returns the overrides applied; problems go to `errors`, each naming
/// its variable.
pub fn apply(
    root: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
    errors: &mut Vec<String>,
) -> Vec<Override> {
    let mut applied = Vec::new();
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(PREFIX) && !RESERVED.contains(&name.as_str()))
        .collect();
    vars.sort();
    for (name, text) in vars {
        let Some((section, key, kind)) = setting(&name) else {
            errors.push(format!(
                "{name}: no such setting (overridable: {})",
                all_variables().join(", ")
            ));
            continue;
        };
        let value = match kind {
            Kind::Text | Kind::Duration => toml::Value::String(text),
            Kind::Integer => match text.trim().parse::<i64>() {
                Ok(n) => toml::Value::Integer(n),
                Err(_) => {
                    errors.push(format!("{name}: expected an integer, found {text:?}"));
                    continue;
                }
            },
            Kind::Boolean => match text.trim() {
                "true" => toml::Value::Boolean(true),
                "false" => toml::Value::Boolean(false),
                _ => {
                    errors.push(format!("{name}: expected true or false, found {text:?}"));
                    continue;
                }
            },
        };
        let table = root
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match table {
            toml::Value::Table(t) => {
                t.insert(key.to_string(), value);
                applied.push(Override {
                    variable: name,
                    path: format!("{section}.{key}"),
                });
            }
            // The file's own type error for the section is reported by the reader.
            _ => continue,
        }
    }
    applied
}

/// Problems the reader found in overridden settings name the variable as well as the path.
pub(crate) fn name_variables(errors: &mut [String], applied: &[Override]) {
    for e in errors.iter_mut() {
        if let Some(o) = applied
            .iter()
            .find(|o| e.starts_with(&format!("{}:", o.path)))
        {
            *e = format!("{} (from {}){}", o.path, o.variable, &e[o.path.len()..]);
        }
    }
}

fn setting(variable: &str) -> Option<(&'static str, &'static str, Kind)> {
    SETTINGS.iter().find_map(|(section, keys)| {
        keys.iter()
            .find(|(key, _)| self::variable(section, key) == variable)
            .map(|(key, kind)| (*section, *key, *kind))
    })
}

/// Every overridable variable, for messages and documentation.
pub fn all_variables() -> Vec<String> {
    SETTINGS
        .iter()
        .flat_map(|(section, keys)| keys.iter().map(move |(key, _)| variable(section, key)))
        .collect()
}

/// The connection string: `MONGODB_URI`, or else the contents of the file `MONGODB_URI_FILE`
/// names (a Kubernetes secret volume), trimmed. `lookup` reads a variable. The message of an
/// error never contains the connection string.
pub fn connection_string(lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    if let Some(uri) = lookup("MONGODB_URI").filter(|u| !u.trim().is_empty()) {
        return Ok(uri);
    }
    let Some(path) = lookup("MONGODB_URI_FILE").filter(|p| !p.trim().is_empty()) else {
        return Err(
            "MONGODB_URI is not set (nor MONGODB_URI_FILE): one of them must give the \
                    connection string (it is never read from the config file)"
                .into(),
        );
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("MONGODB_URI_FILE {path}: cannot read: {e}"))?;
    let uri = text.trim();
    if uri.is_empty() {
        return Err(format!("MONGODB_URI_FILE {path}: the file is empty"));
    }
    Ok(uri.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_connection_string_comes_from_the_variable_or_from_a_file() {
        let file = std::env::temp_dir().join(format!("uri-{}", std::process::id()));
        std::fs::write(&file, "mongodb://u:s3cret@h/?replicaSet=rs0\n").unwrap();
        let path = file.display().to_string();
        let from = |uri: Option<&str>, file: Option<&str>| {
            let (uri, file) = (uri.map(str::to_string), file.map(str::to_string));
            connection_string(move |name| match name {
                "MONGODB_URI" => uri.clone(),
                "MONGODB_URI_FILE" => file.clone(),
                _ => None,
            })
        };
        assert_eq!(
            from(None, Some(&path)).unwrap(),
            "mongodb://u:s3cret@h/?replicaSet=rs0"
        );
        assert_eq!(
            from(Some("mongodb://a/"), Some(&path)).unwrap(),
            "mongodb://a/"
        );
        assert!(from(None, None).unwrap_err().contains("MONGODB_URI_FILE"));
        let missing = from(None, Some("/nonexistent/uri")).unwrap_err();
        assert!(missing.contains("cannot read"), "{missing}");
        std::fs::write(&file, "\n").unwrap();
        assert!(from(None, Some(&path)).unwrap_err().contains("empty"));
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn overrides_take_the_place_of_the_file_and_are_listed() {
        let text = format!(
            "[checkpoints]\nevery_events = 100\n{}",
            crate::config::tests::MINIMAL
        );
        let config = Config::parse_with_env(
            &text,
            vars(&[
                ("MONGO_PROJECTOR_HTTP_ADDRESS", "127.0.0.1:9465"),
                ("MONGO_PROJECTOR_CHECKPOINTS_EVERY_EVENTS", "5000"),
                ("MONGO_PROJECTOR_LEASES_ENABLED", "false"),
                ("MONGO_PROJECTOR_SOURCE_MAX_AWAIT", "2s"),
                ("MONGO_PROJECTOR_CONFIG", "/etc/x.toml"),
                ("UNRELATED", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(config.http.address, "127.0.0.1:9465".parse().unwrap());
        assert_eq!(config.checkpoints.every_events, 5000);
        assert!(!config.leases.enabled);
        assert_eq!(config.source.max_await, std::time::Duration::from_secs(2));
        let paths: Vec<&str> = config.overrides.iter().map(|o| o.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "checkpoints.every_events",
                "http.address",
                "leases.enabled",
                "source.max_await"
            ]
        );
    }

    #[test]
    fn bad_and_unknown_variables_are_errors_that_name_the_variable() {
        let errors = Config::parse_with_env(
            crate::config::tests::MINIMAL,
            vars(&[
                ("MONGO_PROJECTOR_CHECKPOINTS_EVERY_EVENTS", "lots"),
                ("MONGO_PROJECTOR_LEASES_ENABLED", "yes"),
                ("MONGO_PROJECTOR_SOURCE_MAX_AWAIT", "soon"),
                ("MONGO_PROJECTOR_SOURCE_LANES", "0"),
                ("MONGO_PROJECTOR_HTTP_ADRESS", "127.0.0.1:1"),
            ]),
        )
        .unwrap_err()
        .0;
        let has = |needle: &str| errors.iter().any(|e| e.contains(needle));
        assert!(
            has("MONGO_PROJECTOR_CHECKPOINTS_EVERY_EVENTS: expected an integer, found \"lots\""),
            "{errors:#?}"
        );
        assert!(has(
            "MONGO_PROJECTOR_LEASES_ENABLED: expected true or false"
        ));
        assert!(has(
            "source.max_await (from MONGO_PROJECTOR_SOURCE_MAX_AWAIT): not a duration"
        ));
        assert!(has(
            "source.lanes (from MONGO_PROJECTOR_SOURCE_LANES): must be at least 1"
        ));
        assert!(has("MONGO_PROJECTOR_HTTP_ADRESS: no such setting"));
        assert_eq!(errors.len(), 5, "{errors:#?}");
    }

    #[test]
    fn every_setting_outside_projections_can_be_overridden() {
        // The reader lists a section's known keys when it meets an unknown one.
        for (section, keys) in SETTINGS {
            let text = format!(
                "{}\n[{section}]\nzzz_unknown = 1\n",
                crate::config::tests::MINIMAL
            );
            let errors = Config::parse(&text).unwrap_err().0;
            let listed = errors
                .iter()
                .find_map(|e| e.split("known keys: ").nth(1))
                .unwrap_or_else(|| panic!("{errors:?}"));
            let mut known: Vec<&str> = listed.trim_end_matches(')').split(", ").collect();
            known.sort_unstable();
            let mut ours: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
            ours.sort_unstable();
            assert_eq!(ours, known, "[{section}]");
        }
        let text = format!("zzz_unknown = 1\n{}", crate::config::tests::MINIMAL);
        let errors = Config::parse(&text).unwrap_err().0;
        let sections: Vec<&str> = SETTINGS.iter().map(|(s, _)| *s).collect();
        for e in &errors {
            if let Some(listed) = e.split("known keys: ").nth(1) {
                for key in listed.trim_end_matches(')').split(", ") {
                    assert!(
                        key == "projections" || sections.contains(&key),
                        "top-level {key} has no overrides"
                    );
                }
            }
        }
    }
}
