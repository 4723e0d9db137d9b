//! `audit`: the drift audit of one projection, and its confirmed repair.

use crate::cli::args::*;
use crate::cli::*;
use crate::config::Config;
use crate::model::partition::Worker;
use std::process::ExitCode;

/// The drift audit; with `repair`, the audit runs first, its findings are the plan, and the
/// repair runs once confirmed.
pub(crate) async fn audit(
    config: Config,
    uri: String,
    projection: String,
    options: crate::tools::audit::AuditOptions,
    json: bool,
    repair: Option<Confirmation>,
) -> ExitCode {
    let p = match find_projection(&config, &projection) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let client = match connect(&uri).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let audit = crate::tools::audit::Audit::new(
        Worker::whole(std::sync::Arc::new(p.clone())),
        &client.database(&p.database),
    );
    let show = |report: &crate::tools::audit::AuditReport| {
        if json {
            println!("{}", report.to_json());
        } else {
            print!("{}", report.to_table());
        }
    };
    let report = match audit.run(options).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("audit of {projection} failed: {e}");
            return ExitCode::from(2);
        }
    };
    show(&report);
    if let Some(confirm) = repair
        && report.drifted() > 0
    {
        let action = format!(
            "repair {} aggregate(s) of {projection} through the sequence guard",
            report.drifted()
        );
        if let Err(code) = confirm.go_ahead(&action) {
            return code;
        }
        let repaired = audit
            .run(crate::tools::audit::AuditOptions {
                repair: true,
                ..options
            })
            .await;
        return match repaired {
            Ok(report) => {
                show(&report);
                if report.unresolved() {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("repair of {projection} failed: {e}");
                ExitCode::from(2)
            }
        };
    }
    if report.unresolved() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
