//! Errors of the daemon, each with a kind that decides what the caller does with it.

use mongodb::error::{Error as MongoError, ErrorKind};

/// What to do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// Transient (network, step-down, write concern): try the same thing again after a pause.
    Retry,
    /// The stored resume point is gone from the oplog: rebuild from the event collection.
    HistoryLost,
    /// The stream can never continue (collection dropped or renamed, bad configuration).
    Fatal,
}

/// An error talking to MongoDB or interpreting its answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Mongo(#[from] MongoError),
    /// The write was applied on the primary but is not yet majority-durable.
    #[error("write concern not satisfied: {0}")]
    WriteConcern(String),
    #[error("unexpected reply from the server: {0}")]
    Reply(String),
    #[error("{0}")]
    Fatal(String),
    /// A checkpoint write was refused because a newer lease holder (a higher epoch) has
    /// claimed the checkpoint: this worker run must stop; retrying with the same epoch would
    /// only be refused again.
    #[error("fenced: {0}")]
    Fenced(String),
}

/// mongod's ChangeStreamHistoryLost, and its pre-4.4 code.
const HISTORY_LOST_CODES: &[i32] = &[286, 40576];

impl StoreError {
    pub fn action(&self) -> ErrorAction {
        match self {
            StoreError::Mongo(e) => match server_code(e) {
                Some(code) if HISTORY_LOST_CODES.contains(&code) => ErrorAction::HistoryLost,
                // InvalidResumeToken and ChangeStreamFatalError cannot be retried with the same token.
                Some(260 | 280) => ErrorAction::HistoryLost,
                // NamespaceNotFound, Unauthorized, InvalidNamespace...
                Some(13 | 73) => ErrorAction::Fatal,
                _ => ErrorAction::Retry,
            },
            StoreError::WriteConcern(_) | StoreError::Reply(_) => ErrorAction::Retry,
            StoreError::Fatal(_) | StoreError::Fenced(_) => ErrorAction::Fatal,
        }
    }

    /// A short, stable label for counting restarts by reason.
    pub fn reason(&self) -> String {
        match self {
            StoreError::Mongo(e) => match server_code(e) {
                Some(code) => format!("server_error_{code}"),
                None => match *e.kind {
                    ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => "network".into(),
                    ErrorKind::ServerSelection { .. } => "server_selection".into(),
                    _ => "driver".into(),
                },
            },
            StoreError::WriteConcern(_) => "write_concern".into(),
            StoreError::Reply(_) => "reply".into(),
            StoreError::Fatal(_) => "fatal".into(),
            StoreError::Fenced(_) => "fenced".into(),
        }
    }
}

/// mongod's DuplicateKey: an upsert whose filter did not match a document that exists.
pub const DUPLICATE_KEY: i32 = 11000;

/// The server's error code, for command errors.
pub fn server_code(e: &MongoError) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::BulkWrite(_) | ErrorKind::InsertMany(_) => None,
        _ => None,
    }
}
