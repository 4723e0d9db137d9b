//! Retryable writes on the server side: per session, the statements of the latest
//! transaction number that were applied, with their results, so that a retried statement is
//! answered from its first execution and never applied twice (retryable-writes spec,
//! "Supported Write Operations"; manual: "Retryable Writes").
//!
//! As in mongod's `config.transactions`, the record is keyed by the session id, holds one
//! `txnNumber` at a time (a newer one starts afresh, an older one is refused with
//! TransactionTooOld) and the statement ids executed under it. Statement ids come from the
//! command (`stmtIds`, or `stmtId` for the first statement), else from the statement's index.
//! A statement is recorded only when it succeeded: a failed one runs again on retry
//! (`commands::statement` runs, records and replays them).

use crate::error::{CommandError, Result};
use bson::{Bson, Document};
use std::collections::HashMap;

/// What one applied statement returned, replayed for a retry of it.
#[derive(Debug, Clone, PartialEq)]
pub enum StatementResult {
    Insert,
    Update {
        n: usize,
        modified: usize,
        upserted: Option<Bson>,
    },
    Delete {
        n: usize,
    },
    /// A whole `findAndModify` reply (`lastErrorObject`, `value`).
    FindAndModify(Document),
}

/// One session's latest retryable write.
#[derive(Debug, Default)]
struct SessionRecord {
    txn_number: i64,
    executed: HashMap<i32, StatementResult>,
}

/// Every session's latest retryable write (mongod's `config.transactions`).
#[derive(Debug, Default)]
pub struct TransactionTable {
    sessions: HashMap<Vec<u8>, SessionRecord>,
}

impl TransactionTable {
    /// Checks `txn` against the session's latest transaction number, starting a new record
    /// when it is newer; an older one fails with 225 TransactionTooOld.
    pub fn begin(&mut self, write: &RetryableWrite) -> Result<()> {
        let record = self.sessions.entry(write.session.clone()).or_default();
        if write.txn_number < record.txn_number {
            return Err(CommandError::new(
                crate::error::TRANSACTION_TOO_OLD,
                format!(
                    "Retryable write with txnNumber {} is prohibited on session {} because a \
                     newer retryable write with txnNumber {} has already started on this session.",
                    write.txn_number, write.display, record.txn_number
                ),
            ));
        }
        if write.txn_number > record.txn_number {
            record.txn_number = write.txn_number;
            record.executed.clear();
        }
        Ok(())
    }

    /// The result of statement `stmt` of this write, when it was already applied.
    pub fn executed(&self, write: &RetryableWrite, stmt: i32) -> Option<StatementResult> {
        let record = self.sessions.get(&write.session)?;
        if record.txn_number != write.txn_number {
            return None;
        }
        record.executed.get(&stmt).cloned()
    }

    /// Notes that statement `stmt` of this write was applied with `result`.
    pub(crate) fn record(&mut self, write: &RetryableWrite, stmt: i32, result: StatementResult) {
        let record = self.sessions.entry(write.session.clone()).or_default();
        if record.txn_number == write.txn_number {
            record.executed.insert(stmt, result);
        }
    }

    /// Forgets the given sessions (`endSessions`, `killSessions`).
    pub fn forget(&mut self, session: &[u8]) {
        self.sessions.remove(session);
    }
}

/// The retryable-write identity of the command being run: its session and transaction
/// number, and how its statements are numbered.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryableWrite {
    session: Vec<u8>,
    /// The session id as mongod prints it in errors.
    pub(crate) display: String,
    pub txn_number: i64,
    /// `stmtIds` of the command, one per statement.
    stmt_ids: Option<Vec<i32>>,
    /// `stmtId` of the command: the first statement's id.
    first_stmt: i32,
}

impl RetryableWrite {
    /// The retryable write `cmd` is, when it carries `lsid` and `txnNumber`.
    pub fn of(cmd: &Document, lsid: &Document, txn_number: i64) -> RetryableWrite {
        let stmt_ids = match cmd.get("stmtIds") {
            Some(Bson::Array(a)) => Some(
                a.iter()
                    .filter_map(crate::bsontype::as_i64)
                    .map(|n| n as i32)
                    .collect(),
            ),
            _ => None,
        };
        RetryableWrite {
            session: session_key(lsid),
            display: lsid_display(lsid),
            txn_number,
            stmt_ids,
            first_stmt: cmd
                .get("stmtId")
                .and_then(crate::bsontype::as_i64)
                .map_or(0, |n| n as i32),
        }
    }

    /// The statement id of the command's `index`-th statement.
    pub fn stmt_id(&self, index: usize) -> i32 {
        match &self.stmt_ids {
            Some(ids) => ids.get(index).copied().unwrap_or(index as i32),
            None => self.first_stmt + index as i32,
        }
    }
}

/// The key a session is known by: its UUID's bytes.
pub fn session_key(lsid: &Document) -> Vec<u8> {
    let mut key = Vec::new();
    match lsid.get("id") {
        Some(Bson::Binary(b)) => key.extend_from_slice(&b.bytes),
        _ => {
            let _ = lsid.to_writer(&mut key);
        }
    }
    key
}

fn lsid_display(lsid: &Document) -> String {
    match lsid.get("id") {
        Some(Bson::Binary(b)) if b.bytes.len() == 16 => {
            let h = hex::encode(&b.bytes);
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        }
        _ => lsid.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Binary, doc, spec::BinarySubtype};

    fn write(txn: i64, cmd: Document) -> RetryableWrite {
        let lsid = doc! {"id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![3; 16] }};
        RetryableWrite::of(&cmd, &lsid, txn)
    }

    #[test]
    fn statement_ids_come_from_the_command_or_the_index() {
        assert_eq!(write(1, doc! {}).stmt_id(2), 2);
        assert_eq!(write(1, doc! {"stmtId": 5}).stmt_id(2), 7);
        assert_eq!(write(1, doc! {"stmtIds": [9, 4]}).stmt_id(1), 4);
    }

    #[test]
    fn a_newer_txn_number_forgets_the_older_statements_and_an_older_one_is_refused() {
        let mut table = TransactionTable::default();
        let first = write(5, doc! {});
        table.begin(&first).unwrap();
        table.record(&first, 0, StatementResult::Insert);
        assert_eq!(table.executed(&first, 0), Some(StatementResult::Insert));
        assert_eq!(table.executed(&first, 1), None);
        let newer = write(6, doc! {});
        table.begin(&newer).unwrap();
        assert_eq!(table.executed(&newer, 0), None);
        assert_eq!(table.executed(&first, 0), None);
        let err = table.begin(&first).unwrap_err();
        assert_eq!(
            (err.code, err.code_name.as_str()),
            (225, "TransactionTooOld")
        );
    }
}
