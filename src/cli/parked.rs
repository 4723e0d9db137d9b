//! `parked list | retry | skip`: an operator's view of parked and dead-lettered events.

use crate::cli::args::{Confirmation, ParkedAction};
use crate::cli::{connect, find_projection};
use crate::config::Config;
use crate::error::StoreError;
use crate::model::partition::Worker;
use crate::pipeline::apply::Applier;
use crate::store::park::ParkedEvent;
use bson::Bson;
use std::process::ExitCode;
use std::sync::Arc;

pub(crate) async fn parked(config: Config, uri: String, action: ParkedAction) -> ExitCode {
    let target = match &action {
        ParkedAction::List { target, .. }
        | ParkedAction::Retry { target }
        | ParkedAction::Skip { target, .. } => target,
    };
    let projection = match find_projection(&config, &target.projection) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let client = match connect(&uri).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let applier = Applier::new(
        &Worker::whole(Arc::new(projection.clone())),
        &client.database(&projection.database),
        Arc::default(),
    );
    let aggregate = target.aggregate.clone().map(Bson::String);
    let result = match &action {
        ParkedAction::List { limit, .. } => list(&applier, aggregate.as_ref(), *limit).await,
        ParkedAction::Retry { .. } => retry(&applier, aggregate.as_ref()).await,
        ParkedAction::Skip {
            sequence,
            all,
            confirm,
            ..
        } => {
            if aggregate.is_none() && !all {
                eprintln!(
                    "parked skip gives events up for good: name the aggregate (--aggregate A), or pass --all for every entry of {}",
                    target.projection
                );
                return ExitCode::from(2);
            }
            skip(&applier, aggregate.as_ref(), *sequence, *confirm).await
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

/// "1 entry", "2 entries".
fn entries(n: usize) -> String {
    format!("{n} entr{}", if n == 1 { "y" } else { "ies" })
}

async fn list(
    applier: &Applier,
    aggregate: Option<&Bson>,
    limit: i64,
) -> Result<ExitCode, StoreError> {
    let found = applier.parked.list(aggregate, limit).await?;
    for e in &found {
        println!(
            "{}\t{}\t{}\tattempts={}\tparked={}\t{}",
            e.state,
            e.reason,
            Bson::Document(e.id.clone()),
            e.attempts,
            e.first_parked_at
                .try_to_rfc3339_string()
                .unwrap_or_default(),
            e.detail
        );
    }
    println!("{}", entries(found.len()));
    Ok(ExitCode::SUCCESS)
}

async fn retry(applier: &Applier, aggregate: Option<&Bson>) -> Result<ExitCode, StoreError> {
    let n = applier.parked.retry_now(aggregate).await?;
    println!(
        "{n} entr{} due for retry now",
        if n == 1 { "y is" } else { "ies are" }
    );
    Ok(ExitCode::SUCCESS)
}

/// Skips the entries (of one aggregate, optionally one sequence), oldest first, once the
/// operator confirms the list.
async fn skip(
    applier: &Applier,
    aggregate: Option<&Bson>,
    sequence: Option<i64>,
    confirm: Confirmation,
) -> Result<ExitCode, StoreError> {
    let sequence_of = |e: &ParkedEvent| e.id.get("sequenceNumber").and_then(Bson::as_i64);
    let mut found = applier.parked.list(aggregate, i64::MAX).await?;
    if let Some(seq) = sequence {
        found.retain(|e| sequence_of(e) == Some(seq));
    }
    found.sort_by_key(|e| sequence_of(e).unwrap_or(0));
    if found.is_empty() {
        println!("no entry to skip");
        return Ok(ExitCode::SUCCESS);
    }
    println!("would skip, without applying them:");
    for e in &found {
        println!(
            "  {}\t{}\t{}",
            e.state,
            e.reason,
            Bson::Document(e.id.clone())
        );
    }
    if let Err(code) = confirm.go_ahead(&format!("skip these {} for good", entries(found.len()))) {
        return Ok(code);
    }
    let mut failed = false;
    for e in &found {
        match applier.skip_parked(e).await? {
            Ok(()) => println!("skipped {}", Bson::Document(e.id.clone())),
            Err(why) => {
                failed = true;
                eprintln!("not skipped {}: {why}", Bson::Document(e.id.clone()));
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
