//! The journal's one error type. Each variant says what the user can do about it.

use std::path::PathBuf;

/// Errors of the journal crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The journal file exists but SQLite cannot read it as a database, or its schema is not ours.
    #[error(
        "the journal {path} is damaged ({detail}); keep the drive as it is and run \
         `backpocket scan` after moving the file aside, which rebuilds the journal from the pocket"
    )]
    Corrupt { path: PathBuf, detail: String },

    /// A newer backpocket wrote this journal.
    #[error(
        "the journal {path} has format version {found}, newer than this backpocket understands \
         ({supported}); upgrade backpocket"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    /// The drive is full and the reserve is already spent: the record stays queued and is retried.
    #[error("the drive holding the journal is full; free some space on it (the change is kept in memory and retried)")]
    DiskFull,

    /// The writer thread is gone (the journal was closed, or it hit an unrecoverable error).
    #[error("the journal writer has stopped; unmount and mount the pocket again")]
    WriterGone,

    /// A SQLite error without a more specific meaning.
    #[error("journal database error: {0} (the journal is on the pocket's drive; check that the drive is present and healthy)")]
    Sqlite(#[from] rusqlite::Error),

    /// An I/O error on the pocket (scan) or the journal's files.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether retrying later may succeed without the user doing anything.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::DiskFull)
            || matches!(self, Error::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
    }
}

/// Result alias for the journal crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
