//! Errors with stable codes.
//!
//! Every rejection that reaches a user carries one of the codes of design §9. The code is the
//! part scripts and the embedding database match on; the message is for a person and says what
//! to do. Codes are serialised as their snake_case names and never renamed.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The stable error codes (design §9). Adding a code is a compatible change; renaming one is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Conflict,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The wire name of the code, as it appears in CLI output and API replies.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::FailedPrecondition => "failed_precondition",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused command or failed operation: a stable code plus a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

impl Error {
    /// Worth retrying as it is: the log or the store was unreachable, or another writer moved
    /// the stream first (the retry re-reads and decides again). Everything else is an answer.
    pub fn is_transient(&self) -> bool {
        matches!(self.code, ErrorCode::Unavailable | ErrorCode::Conflict)
    }

    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::AlreadyExists, message)
    }
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::FailedPrecondition, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

/// Errors of the event log itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The stream moved since the caller read it: the optimistic-concurrency fence refused the
    /// append. `actual` is the stream's current version (0 = empty stream).
    #[error("conflict: stream '{stream}' is at version {actual}, expected {expected}")]
    Conflict {
        stream: String,
        expected: u64,
        actual: u64,
    },
    /// A stored record failed its checksum or could not be decoded. Never skipped silently.
    /// Position 0: damage no single record can be named for (sled's own files); the reason
    /// then names the last acknowledged position.
    #[error("internal: {}", corrupt_message(*.position, .reason))]
    Corrupt { position: u64, reason: String },
    /// The append or read was refused because its input is not acceptable (empty batch,
    /// oversized event, bad stream name).
    #[error("invalid_argument: {0}")]
    Invalid(String),
    /// The record was written by a newer build (schema version this build does not know).
    #[error("failed_precondition: {0}")]
    UnsupportedVersion(String),
    /// The backend cannot be reached or failed to perform the I/O. Whether the append took
    /// effect is unknown ("ambiguous"); callers re-read before retrying.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

fn corrupt_message(position: u64, reason: &str) -> String {
    if position == 0 {
        format!("damaged log: {reason}")
    } else {
        format!("corrupt log record at position {position}: {reason}")
    }
}

impl LogError {
    pub fn code(&self) -> ErrorCode {
        match self {
            LogError::Conflict { .. } => ErrorCode::Conflict,
            LogError::Corrupt { .. } => ErrorCode::Internal,
            LogError::Invalid(_) => ErrorCode::InvalidArgument,
            LogError::UnsupportedVersion(_) => ErrorCode::FailedPrecondition,
            LogError::Unavailable(_) => ErrorCode::Unavailable,
        }
    }
}

impl LogError {
    /// The message without the code prefix that `Display` adds.
    pub fn message(&self) -> String {
        let text = self.to_string();
        let prefix = format!("{}: ", self.code());
        text.strip_prefix(&prefix)
            .map(str::to_string)
            .unwrap_or(text)
    }
}

impl From<LogError> for Error {
    fn from(e: LogError) -> Self {
        Error::new(e.code(), e.message())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
