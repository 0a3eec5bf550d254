//! Windows: the single-mount lock. (Mount tables, stale mounts and detaching belong to
//! WinFsp's launcher there, and the service to WinFsp's own service registration: not built.)

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::windows::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// ERROR_SHARING_VIOLATION: another process has the lock file open.
const SHARING_VIOLATION: i32 = 32;

/// The single-mount lock of a pocket: the lock file opened with no sharing, so Windows itself
/// refuses a second opener and drops the lock with the process.
#[derive(Debug)]
pub struct PocketLock {
    file: File,
}

impl PocketLock {
    /// Takes the lock, or says which process holds it.
    pub fn acquire(path: &Path, pocket: &Path) -> Result<PocketLock> {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .share_mode(0)
            .open(path);
        match opened {
            Ok(mut file) => {
                let pid = std::process::id().to_string();
                file.set_len(0)
                    .and_then(|_| file.rewind())
                    .and_then(|_| file.write_all(pid.as_bytes()))
                    .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
                Ok(PocketLock { file })
            }
            Err(e) if e.raw_os_error() == Some(SHARING_VIOLATION) => Err(Error::Locked {
                path: PathBuf::from(pocket),
                pid: "another process".into(),
            }),
            Err(e) => Err(Error::io(format!("cannot open {}", path.display()), e)),
        }
    }

    /// The process id written in the lock (for messages).
    pub fn holder(&mut self) -> String {
        let mut s = String::new();
        let _ = self
            .file
            .rewind()
            .and_then(|_| self.file.read_to_string(&mut s));
        s
    }
}
