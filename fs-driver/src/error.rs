//! The filesystem's one error type, and its one mapping to an errno.

/// Why a filesystem operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The backing folder's own answer, passed on unchanged.
    #[error("{0}")]
    Os(#[from] rustix::io::Errno),
    /// The kernel named an inode we no longer know (forgotten, or from before a restart).
    #[error("unknown inode {0}")]
    Stale(u64),
    /// An attempt to see or change the pocket's own `.backpocket/` folder.
    #[error("the pocket's own folder is not part of the mount")]
    Hidden,
    /// A write to `.backpocket/` or a new name of that name.
    #[error("the pocket's own folder cannot be changed through the mount")]
    Protected,
    /// The journal could not make a change durable (fsync).
    #[error("journal: {0}")]
    Journal(#[from] journal::Error),
    /// A file handle the kernel named is not open.
    #[error("unknown file handle {0}")]
    BadHandle(u64),
    /// An operation on a kind of file that does not support it.
    #[error("not supported for this kind of file")]
    Unsupported,
}

impl FsError {
    /// The errno the kernel gets. One exhaustive match: every error has exactly one answer.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Os(e) => e.raw_os_error(),
            FsError::Stale(_) => libc::ESTALE,
            FsError::Hidden => libc::ENOENT,
            FsError::Protected => libc::EACCES,
            FsError::Journal(journal::Error::DiskFull) => libc::ENOSPC,
            FsError::Journal(_) => libc::EIO,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::Unsupported => libc::EOPNOTSUPP,
        }
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        FsError::Os(rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO))
    }
}

pub type FsResult<T> = Result<T, FsError>;
