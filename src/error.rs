//! Errors of the daemon, and the one policy that decides what a worker does about each.
//!
//! The policy reads what the server and the driver say about an error: the error labels the
//! server attaches (`RetryableWriteError`, `ResumableChangeStreamError`,
//! `TransientTransactionError`, `NonResumableChangeStreamError`: MongoDB specifications,
//! "Retryable Writes", "Change Streams", "Transactions"), the driver's own error kinds (network,
//! server selection, authentication) and mongod's error codes. Each error gets one
//! [`ErrorAction`]:
//! - **retry**, for what is known to pass (a network error, a step-down, a write concern not
//!   yet satisfied): the same thing again after a jittered pause ([`crate::backoff`]), for as
//!   long as it takes, one log line per pause;
//! - **history lost**: the stored resume point is gone; recover from the event collection;
//! - **stop**, for what retrying cannot fix (no privilege, a namespace gone, an operator or
//!   command the server lacks, a newer lease holder, an internal fault): the worker stops with
//!   the reason in `/status`, `mongo_projector_worker_stopped` and the log;
//! - **unknown**, for everything else: retried like a transient error, but at most
//!   `source.unknown_error_retries` times in a row, after which the worker stops.

use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};

/// What to do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// Known to be transient: try again after a pause, without limit.
    Retry,
    /// The stored resume point is gone from the oplog: rebuild from the event collection.
    HistoryLost,
    /// Retrying cannot help: stop the worker.
    Stop(StopReason),
    /// Not known to be transient: retry a bounded number of times, then stop.
    Unknown,
}

/// Why a worker stopped for good (the `reason` label of `mongo_projector_worker_stopped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopReason {
    /// The user lacks a privilege, or authentication failed.
    Unauthorized,
    /// A collection the worker needs was dropped, renamed or is not a valid namespace.
    Namespace,
    /// The server lacks an operator, stage or command the configuration needs.
    Unsupported,
    /// A newer lease holder took the worker over (a lease matter, not a fault).
    Fenced,
    /// An error not known to be transient persisted through every allowed retry.
    RetriesExhausted,
    /// Stored state the daemon cannot read, or a fault of the daemon itself.
    Internal,
}

impl StopReason {
    pub(crate) const ALL: [StopReason; 6] = [
        StopReason::Unauthorized,
        StopReason::Namespace,
        StopReason::Unsupported,
        StopReason::Fenced,
        StopReason::RetriesExhausted,
        StopReason::Internal,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            StopReason::Unauthorized => "unauthorized",
            StopReason::Namespace => "namespace",
            StopReason::Unsupported => "unsupported",
            StopReason::Fenced => "fenced",
            StopReason::RetriesExhausted => "retries_exhausted",
            StopReason::Internal => "internal",
        }
    }

    /// What an operator can do about it.
    pub fn fix(self) -> &'static str {
        match self {
            StopReason::Unauthorized => {
                "grant the user the privileges `mongo-projector doctor` lists, then restart"
            }
            StopReason::Namespace => {
                "check the configured database and collections (`mongo-projector doctor`), then restart"
            }
            StopReason::Unsupported => {
                "run a supported MongoDB version (README, \"Supported MongoDB versions\") or change the configuration, then restart"
            }
            StopReason::Fenced => "none: another instance runs this worker",
            StopReason::RetriesExhausted => {
                "see the last error; once the server accepts the operation again, restart"
            }
            StopReason::Internal => "see the last error and report it; restart to try again",
        }
    }
}

/// An error talking to MongoDB or interpreting its answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Mongo(#[from] MongoError),
    /// The write was applied on the primary but is not yet majority-durable.
    #[error("write concern not satisfied: {0}")]
    WriteConcern(String),
    /// A reply the daemon did not expect (not known to be transient).
    #[error("unexpected reply from the server: {0}")]
    Reply(String),
    /// A write error of one statement that is about the server, not the event: transient, or
    /// a missing privilege or namespace, or an operator the server lacks.
    #[error("write refused with code {code}: {message}")]
    Write { code: i32, message: String },
    /// The worker cannot go on, for the reason given.
    #[error("{1}")]
    Stop(StopReason, String),
    /// A checkpoint write was refused because a newer lease holder (a higher epoch) has
    /// claimed the checkpoint: this worker run must stop; retrying with the same epoch would
    /// only be refused again.
    #[error("fenced: {0}")]
    Fenced(String),
}

impl StoreError {
    /// Stored state that cannot be read, or a fault of the daemon.
    pub(crate) fn internal(message: impl Into<String>) -> StoreError {
        StoreError::Stop(StopReason::Internal, message.into())
    }

    pub fn action(&self) -> ErrorAction {
        match self {
            StoreError::Mongo(e) => mongo_action(e),
            StoreError::WriteConcern(_) => ErrorAction::Retry,
            StoreError::Reply(_) => ErrorAction::Unknown,
            StoreError::Write { code, .. } => code_action(*code).unwrap_or(ErrorAction::Unknown),
            StoreError::Stop(reason, _) => ErrorAction::Stop(*reason),
            StoreError::Fenced(_) => ErrorAction::Stop(StopReason::Fenced),
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
            StoreError::Write { code, .. } => format!("server_error_{code}"),
            StoreError::Stop(reason, _) => reason.label().into(),
            StoreError::Fenced(_) => "fenced".into(),
        }
    }
}

/// mongod's ChangeStreamHistoryLost, and its pre-4.4 code; InvalidResumeToken and
/// ChangeStreamFatalError: the stored token can never be resumed from, so the worker
/// recovers from the event collection as for a lost history.
const HISTORY_LOST_CODES: &[i32] = &[286, 40576, 260, 280];

/// mongod codes that pass by themselves: network and host errors, the "not primary" and
/// "shutting down" family of a failover (server discovery and monitoring specification,
/// "not writable primary" and "node is recovering" errors), interrupted or timed-out
/// operations, a killed or lost cursor, write conflicts, a lock or majority read concern not
/// available yet, and write concern failures.
const TRANSIENT_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    24,    // LockTimeout
    43,    // CursorNotFound
    46,    // LockBusy
    50,    // MaxTimeMSExpired
    64,    // WriteConcernFailed
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    112,   // WriteConflict
    133,   // FailedToSatisfyReadPreference
    134,   // ReadConcernMajorityNotAvailableYet
    189,   // PrimarySteppedDown
    216,   // ElectionInProgress
    237,   // CursorKilled
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10058, // LegacyNotPrimary
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11601, // Interrupted
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// mongod codes no retry can fix: missing privileges and failed authentication.
const UNAUTHORIZED_CODES: &[i32] = &[13, 18];

/// A namespace that is gone or invalid.
const NAMESPACE_CODES: &[i32] = &[26, 73];

/// The server does not know an operator, stage, variable or command the configuration needs
/// (an older server than the feature requires, or a feature its deployment lacks).
const UNSUPPORTED_CODES: &[i32] = &[
    59,    // CommandNotFound
    115,   // CommandNotSupported
    168,   // InvalidPipelineOperator: unknown expression operator ($toHashedIndexKey, ...)
    238,   // NotImplemented
    17276, // use of an undefined variable ($$NOW on a server without it)
    40324, // unrecognized pipeline stage
];

/// The labels that say an operation may be retried as it is.
const RETRYABLE_LABELS: &[&str] = &[
    "RetryableWriteError",
    "ResumableChangeStreamError",
    "TransientTransactionError",
    "RetryableReadError",
];

/// What a server code alone decides: lost history, a stop, or known-transient; `None` for a
/// code the policy does not know.
fn code_action(code: i32) -> Option<ErrorAction> {
    if HISTORY_LOST_CODES.contains(&code) {
        Some(ErrorAction::HistoryLost)
    } else if UNAUTHORIZED_CODES.contains(&code) {
        Some(ErrorAction::Stop(StopReason::Unauthorized))
    } else if NAMESPACE_CODES.contains(&code) {
        Some(ErrorAction::Stop(StopReason::Namespace))
    } else if UNSUPPORTED_CODES.contains(&code) {
        Some(ErrorAction::Stop(StopReason::Unsupported))
    } else if TRANSIENT_CODES.contains(&code) {
        Some(ErrorAction::Retry)
    } else {
        None
    }
}

fn mongo_action(e: &MongoError) -> ErrorAction {
    let by_kind = match &*e.kind {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Shutdown
        | ErrorKind::Write(WriteFailure::WriteConcernError(_)) => Some(ErrorAction::Retry),
        ErrorKind::Authentication { .. } => Some(ErrorAction::Stop(StopReason::Unauthorized)),
        ErrorKind::InvalidArgument { .. }
        | ErrorKind::BsonDeserialization(_)
        | ErrorKind::BsonSerialization(_) => Some(ErrorAction::Stop(StopReason::Internal)),
        ErrorKind::IncompatibleServer { .. } | ErrorKind::SessionsNotSupported => {
            Some(ErrorAction::Stop(StopReason::Unsupported))
        }
        _ => None,
    };
    let labelled = RETRYABLE_LABELS.iter().any(|l| e.contains_label(l));
    decide(server_code(e), labelled, by_kind)
}

/// The policy over what an error says: the server's code, whether it carries a label that
/// makes it retryable, and what the driver's error kind alone says.
fn decide(code: Option<i32>, retryable_label: bool, by_kind: Option<ErrorAction>) -> ErrorAction {
    let by_code = code.and_then(code_action);
    // Lost history and stops first: no label makes them pass.
    if let Some(action @ (ErrorAction::HistoryLost | ErrorAction::Stop(_))) = by_code {
        return action;
    }
    if retryable_label {
        return ErrorAction::Retry;
    }
    by_kind.or(by_code).unwrap_or(ErrorAction::Unknown)
}

/// A per-statement write error that is about the server rather than the event (transient,
/// or a stop): the statement is not the event's fault, so it must not be dead-lettered.
/// `None` for the others (a handler that does not fit the document, a type mismatch...),
/// which are the event's own.
pub(crate) fn server_write_error(code: i32, message: &str) -> Option<StoreError> {
    matches!(
        code_action(code),
        Some(ErrorAction::Retry | ErrorAction::Stop(_))
    )
    .then(|| StoreError::Write {
        code,
        message: message.to_string(),
    })
}

/// mongod's DuplicateKey: an upsert whose filter did not match a document that exists.
pub(crate) const DUPLICATE_KEY: i32 = 11000;

/// The server's error code, for command errors.
pub(crate) fn server_code(e: &MongoError) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    }
}

/// A worker's tally of consecutive failures: the pause before the next attempt, and how many
/// errors not known to be transient came in a row. Progress resets both, and so does a quiet
/// spell of twice the longest pause without any failure (sporadic errors hours apart are not
/// "in a row", even on a stream too idle to show progress).
#[derive(Debug)]
pub(crate) struct Failures {
    pub(crate) backoff: crate::backoff::Backoff,
    unknown_in_a_row: u32,
    unknown_limit: u32,
    last_failure: Option<tokio::time::Instant>,
    quiet: std::time::Duration,
}

impl Failures {
    pub fn new(source: &crate::config::SourceConfig) -> Self {
        Failures {
            backoff: crate::backoff::Backoff::new(
                source.reopen_backoff_initial,
                source.reopen_backoff_max,
            ),
            unknown_in_a_row: 0,
            unknown_limit: source.unknown_error_retries,
            last_failure: None,
            quiet: source.reopen_backoff_max * 2,
        }
    }

    /// Counts a failure; `Some(reason)` when the worker must stop: at once for a stop, or once
    /// errors not known to be transient have come more than the allowed number of times in a
    /// row.
    pub fn count(&mut self, e: &StoreError) -> Option<StopReason> {
        let now = tokio::time::Instant::now();
        if self
            .last_failure
            .is_some_and(|at| now.duration_since(at) > self.quiet)
        {
            self.progress();
        }
        self.last_failure = Some(now);
        match e.action() {
            ErrorAction::Stop(reason) => Some(reason),
            ErrorAction::Unknown => {
                self.unknown_in_a_row += 1;
                (self.unknown_in_a_row > self.unknown_limit).then_some(StopReason::RetriesExhausted)
            }
            ErrorAction::Retry | ErrorAction::HistoryLost => None,
        }
    }

    /// Something worked: the next failure starts from the first pause and a fresh count.
    pub fn progress(&mut self) {
        self.backoff.reset();
        self.unknown_in_a_row = 0;
    }

    /// Errors not known to be transient in a row so far.
    pub(crate) fn unknown_in_a_row(&self) -> u32 {
        self.unknown_in_a_row
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::error::CommandError;

    fn command_error(code: i32) -> StoreError {
        let reply = bson::doc! {"code": code, "codeName": "X", "errmsg": "m"};
        let command: CommandError = bson::from_document(reply).unwrap();
        StoreError::Mongo(MongoError::from(ErrorKind::Command(command)))
    }

    #[test]
    fn codes_decide_the_action_of_a_server_error() {
        use ErrorAction::*;
        let cases = [
            (286, HistoryLost),
            (280, HistoryLost),
            (13, Stop(StopReason::Unauthorized)),
            (26, Stop(StopReason::Namespace)),
            (168, Stop(StopReason::Unsupported)),
            (91, Retry),
            (11602, Retry),
            (2, Unknown),
            (14, Unknown),
        ];
        for (code, expected) in cases {
            assert_eq!(command_error(code).action(), expected, "{code}");
        }
    }

    #[test]
    fn labels_make_errors_retryable_but_never_undo_a_stop() {
        use ErrorAction::*;
        assert_eq!(decide(Some(2), true, None), Retry);
        assert_eq!(decide(Some(12345), true, None), Retry);
        assert_eq!(decide(Some(12345), false, None), Unknown);
        assert_eq!(decide(Some(13), true, None), Stop(StopReason::Unauthorized));
        assert_eq!(decide(Some(286), true, None), HistoryLost);
        // Without a code, the driver's error kind decides.
        assert_eq!(decide(None, false, Some(Retry)), Retry);
        assert_eq!(decide(None, false, None), Unknown);
    }

    #[test]
    fn the_daemons_own_errors_have_their_actions() {
        assert_eq!(
            StoreError::WriteConcern("x".into()).action(),
            ErrorAction::Retry
        );
        assert_eq!(StoreError::Reply("x".into()).action(), ErrorAction::Unknown);
        assert_eq!(
            StoreError::internal("x").action(),
            ErrorAction::Stop(StopReason::Internal)
        );
        assert_eq!(
            StoreError::Fenced("x".into()).action(),
            ErrorAction::Stop(StopReason::Fenced)
        );
        let network = StoreError::Mongo(MongoError::from(ErrorKind::Io(std::sync::Arc::new(
            std::io::Error::other("reset"),
        ))));
        assert_eq!(network.action(), ErrorAction::Retry);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_far_apart_are_not_in_a_row() {
        let mut source = crate::config::Config::parse(crate::config::tests::MINIMAL)
            .unwrap()
            .source;
        source.unknown_error_retries = 1;
        let mut f = Failures::new(&source);
        assert_eq!(f.count(&command_error(2)), None);
        // Twice the longest pause (30 s by default) without a failure.
        tokio::time::advance(std::time::Duration::from_secs(61)).await;
        assert_eq!(f.count(&command_error(2)), None);
        assert_eq!(f.unknown_in_a_row(), 1);
        tokio::time::advance(std::time::Duration::from_secs(59)).await;
        assert_eq!(
            f.count(&command_error(2)),
            Some(StopReason::RetriesExhausted)
        );
    }

    #[test]
    fn unknown_errors_stop_the_worker_after_the_allowed_retries_in_a_row() {
        let mut source = crate::config::Config::parse(crate::config::tests::MINIMAL)
            .unwrap()
            .source;
        source.unknown_error_retries = 2;
        let mut f = Failures::new(&source);
        let unknown = command_error(2);
        let transient = command_error(91);
        assert_eq!(f.count(&unknown), None);
        assert_eq!(f.count(&transient), None, "transient errors do not count");
        assert_eq!(f.count(&unknown), None);
        assert_eq!(f.count(&unknown), Some(StopReason::RetriesExhausted));
        f.progress();
        assert_eq!(f.unknown_in_a_row(), 0);
        assert_eq!(f.count(&unknown), None);
        assert_eq!(f.count(&command_error(13)), Some(StopReason::Unauthorized));
    }
}
