//! Command errors shaped exactly as mongod reports them: `{ok: 0, errmsg, code, codeName,
//! errorLabels?}`.
//!
//! Codes and names follow mongod's `src/mongo/base/error_codes.yml`; every error the server
//! returns goes through [`CommandError`] so that replies never invent a shape of their own.

use bson::{Document, doc};

/// One of mongod's error codes together with its `codeName`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub code: i32,
    pub name: &'static str,
}

macro_rules! codes {
    ($($ident:ident = $code:literal, $name:literal;)*) => {
        $(pub const $ident: ErrorCode = ErrorCode { code: $code, name: $name };)*
        /// The `codeName` mongod uses for `code`, or `"Location<code>"` for assertion ids.
        pub fn code_name(code: i32) -> String {
            match code {
                $($code => $name.to_string(),)*
                other => format!("Location{other}"),
            }
        }
    };
}

codes! {
    INTERNAL_ERROR = 1, "InternalError";
    BAD_VALUE = 2, "BadValue";
    UNAUTHORIZED = 13, "Unauthorized";
    NO_SUCH_KEY = 4, "NoSuchKey";
    HOST_UNREACHABLE = 6, "HostUnreachable";
    HOST_NOT_FOUND = 7, "HostNotFound";
    FAILED_TO_PARSE = 9, "FailedToParse";
    TYPE_MISMATCH = 14, "TypeMismatch";
    OVERFLOW = 15, "Overflow";
    PROTOCOL_ERROR = 17, "ProtocolError";
    ILLEGAL_OPERATION = 20, "IllegalOperation";
    EMPTY_ARRAY_OPERATION = 21, "EmptyArrayOperation";
    INVALID_BSON = 22, "InvalidBSON";
    NAMESPACE_NOT_FOUND = 26, "NamespaceNotFound";
    INDEX_NOT_FOUND = 27, "IndexNotFound";
    PATH_NOT_VIABLE = 28, "PathNotViable";
    CONFLICTING_UPDATE_OPERATORS = 40, "ConflictingUpdateOperators";
    CURSOR_NOT_FOUND = 43, "CursorNotFound";
    NAMESPACE_EXISTS = 48, "NamespaceExists";
    MAX_TIME_MS_EXPIRED = 50, "MaxTimeMSExpired";
    DOLLAR_PREFIXED_FIELD_NAME = 52, "DollarPrefixedFieldName";
    INVALID_ID_FIELD = 53, "InvalidIdField";
    NOT_SINGLE_VALUE_FIELD = 54, "NotSingleValueField";
    EMPTY_FIELD_NAME = 56, "EmptyFieldName";
    COMMAND_NOT_FOUND = 59, "CommandNotFound";
    IMMUTABLE_FIELD = 66, "ImmutableField";
    CANNOT_CREATE_INDEX = 67, "CannotCreateIndex";
    INDEX_ALREADY_EXISTS = 68, "IndexAlreadyExists";
    INVALID_OPTIONS = 72, "InvalidOptions";
    INVALID_NAMESPACE = 73, "InvalidNamespace";
    INDEX_OPTIONS_CONFLICT = 85, "IndexOptionsConflict";
    INDEX_KEY_SPECS_CONFLICT = 86, "IndexKeySpecsConflict";
    NETWORK_TIMEOUT = 89, "NetworkTimeout";
    SHUTDOWN_IN_PROGRESS = 91, "ShutdownInProgress";
    OPERATION_FAILED = 96, "OperationFailed";
    WRITE_CONCERN_FAILED = 64, "WriteConcernFailed";
    COMMAND_NOT_SUPPORTED = 115, "CommandNotSupported";
    INVALID_PIPELINE_OPERATOR = 168, "InvalidPipelineOperator";
    PRIMARY_STEPPED_DOWN = 189, "PrimarySteppedDown";
    TRANSACTION_TOO_OLD = 225, "TransactionTooOld";
    CURSOR_IN_USE = 236, "CursorInUse";
    CURSOR_KILLED = 237, "CursorKilled";
    CONVERSION_FAILURE = 241, "ConversionFailure";
    INVALID_RESUME_TOKEN = 260, "InvalidResumeToken";
    EXCEEDED_TIME_LIMIT = 262, "ExceededTimeLimit";
    CHANGE_STREAM_FATAL_ERROR = 280, "ChangeStreamFatalError";
    CHANGE_STREAM_HISTORY_LOST = 286, "ChangeStreamHistoryLost";
    SOCKET_EXCEPTION = 9001, "SocketException";
    BSON_OBJECT_TOO_LARGE = 10334, "BSONObjectTooLarge";
    NOT_WRITABLE_PRIMARY = 10107, "NotWritablePrimary";
    DUPLICATE_KEY = 11000, "DuplicateKey";
    INTERRUPTED_AT_SHUTDOWN = 11600, "InterruptedAtShutdown";
    INTERRUPTED = 11601, "Interrupted";
    INTERRUPTED_DUE_TO_REPL_STATE_CHANGE = 11602, "InterruptedDueToReplStateChange";
    NOT_PRIMARY_NO_SECONDARY_OK = 13435, "NotPrimaryNoSecondaryOk";
    NOT_PRIMARY_OR_SECONDARY = 13436, "NotPrimaryOrSecondary";
    UNKNOWN_FIELD = 40415, "Location40415";
}

/// Codes for which a change stream's getMore failure is resumable; mongod adds the
/// `ResumableChangeStreamError` label for these (`error_labels.cpp`,
/// `isResumableChangeStreamError`: retriable, network and stale-routing errors,
/// RetryChangeStream and FailedToSatisfyReadPreference). CursorNotFound is not among them:
/// drivers resume on it by its code.
pub const RESUMABLE_CHANGE_STREAM_CODES: &[i32] = &[
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 63, 150, 13388, 234, 133,
];

/// Codes for which mongod adds `RetryableWriteError` to a failed retryable write
/// (retryable-writes spec, "Determining Retryable Errors").
pub const RETRYABLE_WRITE_CODES: &[i32] = &[
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

/// An error reply to one command.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code_name} ({code}): {errmsg}")]
pub struct CommandError {
    pub code: i32,
    pub code_name: String,
    pub errmsg: String,
    /// Labels as mongod attaches them (`RetryableWriteError`, `ResumableChangeStreamError`,
    /// `NonResumableChangeStreamError`, ...).
    pub labels: Vec<String>,
    /// Extra fields mongod puts beside the error (for example `keyPattern`/`keyValue`).
    pub extra: Document,
}

impl CommandError {
    pub fn new(code: ErrorCode, errmsg: impl Into<String>) -> Self {
        Self {
            code: code.code,
            code_name: code.name.to_string(),
            errmsg: errmsg.into(),
            labels: Vec::new(),
            extra: Document::new(),
        }
    }

    /// An error with a numeric code only (fail points may name any code).
    pub fn from_code(code: i32, errmsg: impl Into<String>) -> Self {
        Self {
            code,
            code_name: code_name(code),
            errmsg: errmsg.into(),
            labels: Vec::new(),
            extra: Document::new(),
        }
    }

    /// An assertion-style error (`Location<code>`), as mongod raises from `uassert(code, ...)`.
    pub fn location(code: i32, errmsg: impl Into<String>) -> Self {
        Self::from_code(code, errmsg)
    }

    pub fn bad_value(errmsg: impl Into<String>) -> Self {
        Self::new(BAD_VALUE, errmsg)
    }

    pub fn type_mismatch(errmsg: impl Into<String>) -> Self {
        Self::new(TYPE_MISMATCH, errmsg)
    }

    pub fn failed_to_parse(errmsg: impl Into<String>) -> Self {
        Self::new(FAILED_TO_PARSE, errmsg)
    }

    pub fn not_supported(errmsg: impl Into<String>) -> Self {
        Self::new(COMMAND_NOT_SUPPORTED, errmsg)
    }

    pub fn with_label(mut self, label: &str) -> Self {
        if !self.labels.iter().any(|l| l == label) {
            self.labels.push(label.to_string());
        }
        self
    }

    pub fn with_extra(mut self, extra: Document) -> Self {
        self.extra.extend(extra);
        self
    }

    /// The `{ok: 0, ...}` reply body (without `$clusterTime`/`operationTime`).
    pub fn to_reply(&self) -> Document {
        let mut reply = doc! {
            "ok": 0.0,
            "errmsg": self.errmsg.clone(),
            "code": self.code,
            "codeName": self.code_name.clone(),
        };
        for (k, v) in &self.extra {
            reply.insert(k.clone(), v.clone());
        }
        if !self.labels.is_empty() {
            reply.insert("errorLabels", self.labels.clone());
        }
        reply
    }

    /// The same error as one element of a write reply's `writeErrors`.
    pub fn to_write_error(&self, index: usize) -> Document {
        let mut e = doc! {
            "index": index as i32,
            "code": self.code,
            "errmsg": self.errmsg.clone(),
        };
        for (k, v) in &self.extra {
            e.insert(k.clone(), v.clone());
        }
        e
    }
}

pub type Result<T, E = CommandError> = std::result::Result<T, E>;
