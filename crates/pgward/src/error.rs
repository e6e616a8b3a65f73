//! The error policy: every failure pgward reports is an [`Error`] with a
//! [`ErrorKind`] (stable, machine-readable, mapped to the documented exit
//! code), a one-line message that names the cause (lowercase, no trailing
//! period), and an optional hint that says how to fix it.
//!
//! Operators read these at 3 a.m. and scripts branch on them, so the message
//! carries the evidence (a path, pg_dump's own words) and the hint carries the
//! remedy; neither ever carries a secret.

use std::fmt;

/// What went wrong, at the granularity a script needs to decide what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad arguments or an unusable configuration: nothing was attempted.
    Config,
    /// The named backup (or repository) does not exist.
    NotFound,
    /// The database could not be reached or queried.
    Connection,
    /// pg_dump (or another child tool) failed or could not be run.
    Dump,
    /// The dump finished but failed validation; it was quarantined.
    Validation,
    /// An artifact does not match its manifest.
    Integrity,
    /// The repository could not be read or written.
    Repository,
    /// pg_restore failed, or the restore could not be carried out.
    Restore,
    /// Another run holds the lock for this repository and database.
    Busy,
    /// A signal stopped the run; the partial artifact was quarantined.
    Interrupted { signal: i32 },
    /// `apply`: a precondition did not hold; nothing was changed.
    Blocked,
    /// `apply`: the change ran and was rolled back, or its verification
    /// after COMMIT failed.
    Apply,
    /// `status`: an objective is LATE or FAILED, or the journal is broken.
    Status,
}

impl ErrorKind {
    /// The stable name used in JSON output and reason files.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Connection => "connection",
            ErrorKind::Dump => "dump",
            ErrorKind::Validation => "validation",
            ErrorKind::Integrity => "integrity",
            ErrorKind::Repository => "repository",
            ErrorKind::Restore => "restore",
            ErrorKind::Busy => "busy",
            ErrorKind::Interrupted { .. } => "interrupted",
            ErrorKind::Blocked => "blocked",
            ErrorKind::Apply => "apply",
            ErrorKind::Status => "status",
        }
    }

    /// The process exit code; README.md documents this table.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Config | ErrorKind::NotFound => 2,
            ErrorKind::Busy => 3,
            ErrorKind::Blocked => 4,
            ErrorKind::Interrupted { signal } => 128 + signal,
            ErrorKind::Connection
            | ErrorKind::Dump
            | ErrorKind::Validation
            | ErrorKind::Integrity
            | ErrorKind::Repository
            | ErrorKind::Restore
            | ErrorKind::Apply
            | ErrorKind::Status => 1,
        }
    }
}

/// A failure with its kind, a one-line message and an optional hint.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds the remedy, shown after the message as `hint: ...`.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn config(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Config, message)
    }

    pub fn repository(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Repository, message)
    }

    /// An I/O failure on a repository path, with the path in the message.
    pub fn repository_io(what: &str, path: &std::path::Path, err: std::io::Error) -> Self {
        let hint = match err.kind() {
            std::io::ErrorKind::PermissionDenied => Some(
                "make the repository directory writable by the user running pgward, or choose another with --repo",
            ),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                Some("free space on the repository's filesystem or move the repository")
            }
            _ => None,
        };
        let error = Error::repository(format!("{what} {}: {err}", path.display()));
        match hint {
            Some(hint) => error.with_hint(hint),
            None => error,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// Appends what else is known about the failure to its message.
    pub fn append(mut self, more: impl fmt::Display) -> Self {
        self.message = format!("{}; {more}", self.message);
        self
    }

    /// Prefixes the message with where it happened, keeping kind and hint.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}
