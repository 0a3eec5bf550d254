//! Errors of the replicator. Each says what happened in words a user can act on; the binary
//! adds which destination and which command.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The destination could not be reached or refused an operation.
    #[error("{context}: {source}")]
    Store {
        context: String,
        #[source]
        source: opendal::Error,
    },
    /// The destination has no room left.
    #[error("the destination is full ({context}); free space there or add another destination")]
    StoreFull { context: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] journal::Error),
    /// The passphrase does not open the key.
    #[error("wrong passphrase: it does not open this pocket's key")]
    WrongPassphrase,
    /// A key is needed and none was given.
    #[error("this needs the pocket's passphrase: give it with --passphrase-file or BACKPOCKET_PASSPHRASE, or type it at the prompt")]
    NeedPassphrase,
    /// An object failed authentication: damaged, swapped or tampered with.
    #[error("authentication failed (the object was damaged or tampered with)")]
    Auth,
    #[error("damaged object {object}: {detail}")]
    Damaged { object: String, detail: String },
    #[error("{0}")]
    Format(String),
    #[error("{0}")]
    Crypto(String),
    #[error("not a backpocket vault or mirror: {0}")]
    NotAVault(String),
    /// The vault belongs to another pocket: two writers would fork its history.
    #[error("this vault belongs to another pocket ({0}); give each pocket its own vault")]
    OtherPocket(String),
    /// The destination went back in time compared with what this pocket wrote there.
    #[error("the destination was rolled back or replaced: it ends at {found}, but this pocket wrote up to {expected}; check it, or remove and re-add the destination to start a new history")]
    RolledBack { found: String, expected: String },
    #[error("{path}: {detail}")]
    Source { path: PathBuf, detail: String },
    #[error("stopped")]
    Cancelled,
    /// The pocket changed under a drain in a way newer journal records will explain.
    #[error("the pocket changed while it was being copied; it will be taken again")]
    Retry,
}

impl Error {
    pub(crate) fn store(context: impl Into<String>, source: opendal::Error) -> Error {
        let context = context.into();
        // OpenDAL passes the OS error's text through; ENOSPC and EDQUOT deserve their own words.
        let text = source.to_string();
        if text.contains("No space left") || text.contains("Disk quota exceeded") {
            return Error::StoreFull { context };
        }
        Error::Store { context, source }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        let context = context.into();
        if matches!(source.raw_os_error(), Some(28) | Some(122)) {
            return Error::StoreFull { context };
        }
        Error::Io { context, source }
    }

    /// Whether the object the error is about is missing (rather than the store unreachable).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Store { source, .. } if source.kind() == opendal::ErrorKind::NotFound)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
