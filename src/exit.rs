//! Exit codes: a documented table (README.md), so scripts can tell failures apart.

use std::fmt;

/// What a failed command exits with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// Something else failed; the message says what.
    Error = 1,
    /// The command line was wrong (clap's own code).
    Usage = 2,
    /// The folder is not a pocket, or no pocket was found.
    NotAPocket = 3,
    /// The pocket is mounted or in use, or the mountpoint is busy.
    Busy = 4,
    /// The journal, the config or a destination's data is damaged.
    Damaged = 5,
    /// The passphrase was wrong, or a key was needed and none was given.
    Key = 6,
}

/// An error that knows its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: ExitCode,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn new(code: ExitCode, error: anyhow::Error) -> Failure {
        Failure { code, error }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Failure {}

/// The exit code for any error: a [`Failure`] says it; otherwise the kind of error decides.
pub fn code_of(e: &anyhow::Error) -> ExitCode {
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.code;
        }
        if let Some(j) = cause.downcast_ref::<journal::Error>() {
            if matches!(
                j,
                journal::Error::Corrupt { .. } | journal::Error::TooNew { .. }
            ) {
                return ExitCode::Damaged;
            }
        }
        if let Some(r) = cause.downcast_ref::<replicator::Error>() {
            match r {
                replicator::Error::WrongPassphrase | replicator::Error::NeedPassphrase => {
                    return ExitCode::Key
                }
                replicator::Error::Damaged { .. }
                | replicator::Error::Auth
                | replicator::Error::RolledBack { .. } => return ExitCode::Damaged,
                replicator::Error::Busy(_) => return ExitCode::Busy,
                _ => {}
            }
        }
        if let Some(p) = cause.downcast_ref::<platform::Error>() {
            if matches!(
                p,
                platform::Error::Locked { .. }
                    | platform::Error::HeldByDeadDaemon { .. }
                    | platform::Error::MountpointBusy(..)
                    | platform::Error::MountpointNotEmpty(..)
            ) {
                return ExitCode::Busy;
            }
        }
    }
    ExitCode::Error
}
