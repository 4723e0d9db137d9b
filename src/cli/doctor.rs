//! `doctor`: every check of the server and its user, printed as lines or JSON.

use crate::config::{Config, redact_uri};
use std::process::ExitCode;

pub(crate) async fn doctor(
    config: Config,
    uri: String,
    options: crate::tools::doctor::DoctorOptions,
    json: bool,
) -> ExitCode {
    let client = match mongodb::options::ClientOptions::parse(&uri).await {
        Ok(mut o) => {
            // An unreachable server is one failed check, reported within seconds.
            o.server_selection_timeout
                .get_or_insert(std::time::Duration::from_secs(10));
            match mongodb::Client::with_options(o) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("cannot use MONGODB_URI {}: {e}", redact_uri(&uri));
                    return ExitCode::from(2);
                }
            }
        }
        Err(e) => {
            eprintln!("cannot use MONGODB_URI {}: {e}", redact_uri(&uri));
            return ExitCode::from(2);
        }
    };
    let report = crate::tools::doctor::run(&config, &client, &uri, &options).await;
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
