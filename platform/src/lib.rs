//! What differs per operating system and is not the filesystem itself: the mount table,
//! stale-mount cleanup and mountpoint checks, unmounting, the single-mount lock, detaching
//! into the background, service installation and removable-drive events; network and
//! mount-table change events; the machine's key store; small files
//! written durably (temp file, fsync, rename, fsync of the folder); and, in
//! `fault-injection` builds only, the crash points the endurance tests aim kill -9 with.

mod crash;
#[cfg(unix)]
pub mod drive;
mod durable;
mod keystore;
#[cfg(target_os = "linux")]
mod linux;
mod watch;
#[cfg(target_os = "linux")]
pub use linux::*;
#[cfg(target_os = "linux")]
pub mod service;
pub use crash::crash_point;
pub use durable::{create_dir_all_durably, sync_dir, write_durably, write_durably_private};
pub use keystore::{forget_key, key_path, load_key, store_key};
pub use watch::ChangeWatch;
pub mod win;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::PocketLock;

/// Errors of the platform crate; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the mountpoint {0} does not exist; create the folder first")]
    MountpointMissing(std::path::PathBuf),
    #[error("the mountpoint {0} is not a folder")]
    MountpointNotDir(std::path::PathBuf),
    #[error(
        "the mountpoint {0} is already a mount point ({1}); unmount it or choose another folder"
    )]
    MountpointBusy(std::path::PathBuf, String),
    #[error("the mountpoint {0} is not empty; choose an empty folder")]
    MountpointNotEmpty(std::path::PathBuf),
    #[error("the pocket {path} is already mounted or in use by process {pid}; unmount it first (`backpocket unmount`)")]
    Locked {
        path: std::path::PathBuf,
        pid: String,
    },
    #[error("the pocket {path} is held by process {pid}, a daemon that was killed but still waits on a call to its own mount; `umount -f` on its mountpoint (as root; `grep fuse.backpocket /proc/self/mounts` lists them) frees it, then mount again (nothing is lost: the journal is on the drive)")]
    HeldByDeadDaemon {
        path: std::path::PathBuf,
        pid: String,
    },
    #[error("{0} is not a mounted pocket (nothing to do); `grep fuse.backpocket /proc/self/mounts` lists the mounted ones")]
    NotMounted(std::path::PathBuf),
    #[error("{0} exists and was not written by backpocket; move it away first")]
    NotOurs(std::path::PathBuf),
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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
