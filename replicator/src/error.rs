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
    /// A group destination could not do something on enough of its members.
    #[error("{context}: {source}")]
    Group {
        context: String,
        #[source]
        source: Box<Error>,
    },
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
    /// The device was removed from the vault (`devices remove`): it may not write any more.
    #[error("this pocket was removed from the vault's devices by {by} ({name}); it can still restore what the vault held, but not back up to it: join again with `backpocket init DIR --join DEST` from a fresh folder")]
    RemovedDevice { name: String, by: String },
    /// The destination went back in time compared with what this pocket wrote there.
    #[error("the destination was rolled back or replaced: it ends at {found}, but this pocket wrote up to {expected}; check it, or remove and re-add the destination to start a new history")]
    RolledBack { found: String, expected: String },
    #[error("{path}: {detail}")]
    Source { path: PathBuf, detail: String },
    #[error("stopped")]
    Cancelled,
    /// Transfers were abandoned because a `--when` condition stopped holding (the office
    /// network went away mid-drain); they start over once it holds again.
    #[error("paused: a condition of the destination stopped holding")]
    Paused,
    /// Another process holds the vault for maintenance (or writes it while maintenance wants
    /// to delete): said with who and until when.
    #[error("{0}")]
    Busy(String),
    /// The pocket changed under a drain in a way newer journal records will explain.
    #[error("the pocket changed while it was being copied; it will be taken again")]
    Retry,
}

impl Error {
    pub(crate) fn store(context: impl Into<String>, source: opendal::Error) -> Error {
        let context = context.into();
        // ENOSPC and EDQUOT deserve their own words: told by the OS error under OpenDAL's
        // where there is one, else by the words an SFTP server sends (its status carries no
        // code for a full disk).
        let full_disk = io_cause(&source)
            .and_then(|io| io.raw_os_error())
            .is_some_and(|code| code == 28 || code == 122);
        let text = source.to_string();
        if full_disk || text.contains("No space left") || text.contains("Disk quota exceeded") {
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

/// An error and its causes in one line: OpenDAL keeps the server's or ssh's own words in the
/// sources, and they are what tells a user what to fix.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

/// The OS error under an error, wherever it sits among the causes.
pub(crate) fn io_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = c.source();
    }
    None
}

/// Whether the OS said the network or the server could not be reached. (ssh reports this
/// only in words: see [`network_failure`].)
pub(crate) fn is_network_error(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind as K;
    io_cause(e).is_some_and(|io| {
        matches!(
            io.kind(),
            K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::NotConnected
                | K::TimedOut
                | K::HostUnreachable
                | K::NetworkUnreachable
                | K::NetworkDown
                | K::AddrNotAvailable
        )
    })
}

/// When an error's words say the network or the server could not be reached, what to tell
/// the user.
pub fn network_failure(text: &str) -> Option<&'static str> {
    const SIGNS: [(&str, &str); 10] = [
        (
            "Connection refused",
            "the server refused the connection (is it running, and is the port right?)",
        ),
        (
            "No route to host",
            "there is no route to the server (are you on its network?)",
        ),
        (
            "Network is unreachable",
            "the network is unreachable (are you connected?)",
        ),
        (
            "Could not resolve",
            "the server's name cannot be resolved (is the name right, are you on its network?)",
        ),
        (
            "failed to lookup address",
            "the server's name cannot be resolved (is the name right, are you on its network?)",
        ),
        (
            "dns error",
            "the server's name cannot be resolved (is the name right, are you on its network?)",
        ),
        (
            "timed out",
            "the server did not answer in time (is the network up?)",
        ),
        (
            "connection request: timeout",
            "the server did not answer in time (is the network up?)",
        ),
        (
            "Connection reset",
            "the connection was cut (network trouble, or the server restarted)",
        ),
        (
            "error sending request",
            "the server could not be reached (is the endpoint right, is the network up?)",
        ),
    ];
    SIGNS
        .iter()
        .find(|(sign, _)| text.contains(sign))
        .map(|(_, what)| *what)
}

/// What to do about a failure, from the words of the server, ssh or the network stack.
pub fn hint(text: &str) -> Option<&'static str> {
    const SIGNS: [(&str, &str); 11] = [
        ("Invalid signature", "the S3 secret key is wrong: store the right one with `backpocket dest credentials NAME`"),
        ("Host key verification failed", "the server's host key is not in ~/.ssh/known_hosts, or it changed: confirm its fingerprint with the server's administrator, then add it (ssh-keyscan -p PORT HOST >> ~/.ssh/known_hosts, or connect once with ssh)"),
        ("Permission denied", "the server refused the login: check the user in the URL and the key (`backpocket dest credentials NAME --identity KEY_FILE`, or load it into ssh-agent)"),
        ("InvalidAccessKeyId", "the S3 server does not know this access key: store the right one with `backpocket dest credentials NAME`"),
        ("SignatureDoesNotMatch", "the S3 secret key is wrong: store the right one with `backpocket dest credentials NAME`"),
        ("NoSuchBucket", "the bucket does not exist: create it on the S3 server (backpocket never creates buckets)"),
        ("AuthorizationHeaderMalformed", "the S3 server expects another region: give it with --region when adding the destination"),
        ("AccessDenied", "the S3 server refused: the key may not read or write this bucket"),
        ("Forbidden", "the server refused: the credentials may not read or write there"),
        ("No space left", "the destination is full: free space there"),
        ("no S3 credentials", "store them with `backpocket dest credentials NAME`"),
    ];
    SIGNS
        .iter()
        .find(|(sign, _)| text.contains(sign))
        .map(|(_, what)| *what)
        .or_else(|| network_failure(text))
}

impl Error {
    /// The error with its causes, and what to do about it when the words tell.
    pub fn explain(&self) -> String {
        let text = chain(self);
        match hint(&text) {
            Some(h) => format!("{h} ({text})"),
            None => text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(io: std::io::Error) -> opendal::Error {
        opendal::Error::new(opendal::ErrorKind::Unexpected, "write failed").set_source(io)
    }

    #[test]
    fn a_full_disk_and_a_refused_connection_are_told_by_their_os_error() {
        let full = Error::store(
            "writing data/ab",
            wrapped(std::io::Error::from_raw_os_error(28)),
        );
        assert!(matches!(full, Error::StoreFull { .. }), "{full:?}");
        let quota = Error::store(
            "writing data/ab",
            wrapped(std::io::Error::from_raw_os_error(122)),
        );
        assert!(matches!(quota, Error::StoreFull { .. }), "{quota:?}");
        let refused = wrapped(std::io::ErrorKind::ConnectionRefused.into());
        assert!(is_network_error(&refused));
        let denied = wrapped(std::io::ErrorKind::PermissionDenied.into());
        assert!(!is_network_error(&denied));
        assert!(matches!(Error::store("x", denied), Error::Store { .. }));
    }
}
