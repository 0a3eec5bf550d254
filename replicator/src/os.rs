//! What the replicator needs from the operating system beyond `std`, for Unix and Windows in
//! one place: names as the journal stores them, file identity and versions, positioned I/O,
//! private files, locks, holes, and flushing a restore to disk.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::path::{Path, PathBuf};

/// A journal name (bytes: anything on Unix, WTF-8 from Windows) as an OS name. On Windows a
/// name that is not WTF-8 (made on Linux, with bytes Windows cannot spell) comes back lossy.
pub fn os_name(b: &[u8]) -> Cow<'_, OsStr> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Cow::Borrowed(OsStr::from_bytes(b))
    }
    #[cfg(not(unix))]
    {
        match std::str::from_utf8(b) {
            Ok(s) => Cow::Borrowed(OsStr::new(s)),
            Err(_) => Cow::Owned(journal::wtf8::to_os(b)),
        }
    }
}

/// An OS name as the journal stores it.
pub fn name_bytes(s: &OsStr) -> &[u8] {
    // Unix: the bytes themselves; Windows: WTF-8, which is what the journal keeps.
    s.as_encoded_bytes()
}

/// `base` joined with a journal path (empty: `base` itself).
pub fn join(base: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        base.to_owned()
    } else {
        base.join(os_name(rel))
    }
}

/// The file's identity on its drive (what the journal calls a file): the inode number on
/// Unix, the file index on Windows.
pub fn file_id(file: &File, md: &Metadata) -> std::io::Result<u64> {
    #[cfg(unix)]
    {
        let _ = file;
        use std::os::unix::fs::MetadataExt;
        Ok(md.ino())
    }
    #[cfg(windows)]
    {
        let _ = md;
        win::info(file).map(|i| (u64::from(i.nFileIndexHigh) << 32) | u64::from(i.nFileIndexLow))
    }
}

/// The identity of whatever is at `path` (not following a symlink there).
pub fn path_id(path: &Path) -> std::io::Result<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::symlink_metadata(path)?.ino())
    }
    #[cfg(windows)]
    {
        let f = open_dir(path)?;
        let md = f.metadata()?;
        file_id(&f, &md)
    }
}

/// A folder's identity: (device, inode) on Unix, (volume serial, file index) on Windows. A
/// destination remembers it, so a disk pulled out is not silently replaced by the folder
/// left on the machine's own disk.
pub fn dir_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok((m.dev(), m.ino()))
    }
    #[cfg(windows)]
    {
        let f = open_dir(path)?;
        let i = win::info(&f)?;
        Ok((
            u64::from(i.dwVolumeSerialNumber),
            (u64::from(i.nFileIndexHigh) << 32) | u64::from(i.nFileIndexLow),
        ))
    }
}

/// Whether a file changed between two looks at it (size, modification and change times).
pub fn changed(before: &Metadata, after: &Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        after.size() != before.size()
            || after.mtime() != before.mtime()
            || after.mtime_nsec() != before.mtime_nsec()
            || after.ctime() != before.ctime()
            || after.ctime_nsec() != before.ctime_nsec()
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::MetadataExt;
        after.file_size() != before.file_size()
            || after.last_write_time() != before.last_write_time()
            || after.creation_time() != before.creation_time()
    }
}

/// The data ranges of a file, holes left out, where the system can tell (SEEK_DATA). Always
/// asked, never guessed from the block count: XFS counts blocks preallocated past the end of
/// a file, so a file with holes can look dense by its blocks.
pub fn data_extents(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    if size == 0 {
        return Ok(Vec::new());
    }
    #[cfg(unix)]
    {
        use rustix::fs::{seek, SeekFrom};
        let mut out = Vec::new();
        let mut pos = 0u64;
        while pos < size {
            let start = match seek(file, SeekFrom::Data(pos)) {
                Ok(s) => s,
                Err(rustix::io::Errno::NXIO) => break,
                // A filesystem without SEEK_DATA: the whole file is data.
                Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => {
                    return Ok(vec![(0, size)])
                }
                Err(e) => return Err(e.into()),
            };
            if start >= size {
                break;
            }
            let end = seek(file, SeekFrom::Hole(start))?.min(size);
            out.push((start, end));
            pos = end;
        }
        Ok(out)
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        Ok(vec![(0, size)])
    }
}

/// Reads at `pos` without moving a shared cursor.
pub fn read_at(file: &File, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_at(file, buf, pos)
    }
    #[cfg(windows)]
    {
        std::os::windows::fs::FileExt::seek_read(file, buf, pos)
    }
}

/// Writes all of `buf` at `pos`.
pub fn write_all_at(file: &File, mut buf: &[u8], mut pos: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let _ = (&mut buf, &mut pos);
        std::os::unix::fs::FileExt::write_all_at(file, buf, pos)
    }
    #[cfg(windows)]
    {
        while !buf.is_empty() {
            let n = std::os::windows::fs::FileExt::seek_write(file, buf, pos)?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
            pos += n as u64;
        }
        Ok(())
    }
}

/// Opens a pocket file for reading as the drain does: never through a symlink, and without
/// updating its access time where the system allows.
pub fn open_source(path: &Path) -> std::io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Non-blocking: a path that became a fifo (or a device) since its record must not
        // hold the drain until a writer comes; the caller takes only regular files, whose
        // reads the flag does not change.
        let flags = (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32;
        let noatime = rustix::fs::OFlags::NOATIME.bits() as i32;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags | noatime)
            .open(path)
            // O_NOATIME is for the file's owner only.
            .or_else(|_| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(flags)
                    .open(path)
            })
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
            .open(path)
    }
}

/// Whether an open error means the file is gone (removed, or replaced by something else).
pub fn is_gone(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        // ENOENT, ENOTDIR, ELOOP (a symlink now stands there).
        matches!(e.raw_os_error(), Some(2) | Some(20) | Some(40))
    }
    #[cfg(windows)]
    {
        // ERROR_FILE_NOT_FOUND, ERROR_PATH_NOT_FOUND.
        matches!(e.raw_os_error(), Some(2) | Some(3))
    }
}

/// Makes a file readable by its owner only (a destination's objects, key files). Windows:
/// files take their folder's ACL, so there is nothing to do per file.
pub fn make_private(path: &Path, dir: bool) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if dir { 0o700 } else { 0o600 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(windows)]
    {
        let _ = (path, dir);
        Ok(())
    }
}

/// Takes an exclusive lock on an open file without waiting: Ok(false) when another process
/// holds it. The system drops it with the process.
pub fn try_lock(file: &File) -> std::io::Result<bool> {
    #[cfg(unix)]
    {
        match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
    #[cfg(windows)]
    {
        win::lock(file)
    }
}

/// Flushes what a restore wrote under `target` to disk: the whole filesystem on Unix
/// (`syncfs`), each written file on Windows (NTFS journals the rest).
pub fn flush_restore(target: &Path, written: &[PathBuf]) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let _ = written;
        let dir = File::open(target)?;
        rustix::fs::syncfs(&dir).map_err(Into::into)
    }
    #[cfg(windows)]
    {
        let _ = target;
        for p in written {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)?
                .sync_all()?;
        }
        Ok(())
    }
}

/// Opens a file or folder for its information only, not following a reparse point.
#[cfg(windows)]
fn open_dir(path: &Path) -> std::io::Result<File> {
    use std::os::windows::fs::OpenOptionsExt;
    const FILE_FLAG_BACKUP_SEMANTICS: u32 = 0x0200_0000;
    const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
    std::fs::OpenOptions::new()
        .access_mode(0)
        .custom_flags(FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OPEN_REPARSE_POINT)
        .open(path)
}

#[cfg(windows)]
mod win {
    use std::fs::File;
    use std::os::windows::io::AsRawHandle;

    use windows_sys::Win32::Foundation::{ERROR_LOCK_VIOLATION, HANDLE};
    use windows_sys::Win32::Storage::FileSystem::{
        GetFileInformationByHandle, LockFileEx, BY_HANDLE_FILE_INFORMATION,
        LOCKFILE_EXCLUSIVE_LOCK, LOCKFILE_FAIL_IMMEDIATELY,
    };
    use windows_sys::Win32::System::IO::OVERLAPPED;

    pub fn info(file: &File) -> std::io::Result<BY_HANDLE_FILE_INFORMATION> {
        // SAFETY: all-zero is a valid BY_HANDLE_FILE_INFORMATION (plain integers).
        let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
        // SAFETY: the handle is open while `file` lives; `info` is ours to fill.
        let ok = unsafe { GetFileInformationByHandle(file.as_raw_handle() as HANDLE, &mut info) };
        if ok == 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(info)
    }

    pub fn lock(file: &File) -> std::io::Result<bool> {
        // SAFETY: all-zero is a valid OVERLAPPED for a synchronous call (offset 0).
        let mut ov: OVERLAPPED = unsafe { std::mem::zeroed() };
        // SAFETY: the handle is open while `file` lives; `ov` outlives the call.
        let ok = unsafe {
            LockFileEx(
                file.as_raw_handle() as HANDLE,
                LOCKFILE_EXCLUSIVE_LOCK | LOCKFILE_FAIL_IMMEDIATELY,
                0,
                1,
                0,
                &mut ov,
            )
        };
        if ok != 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(ERROR_LOCK_VIOLATION as i32) {
            Ok(false)
        } else {
            Err(e)
        }
    }
}

/// This machine's name, for leases in a vault (who holds it).
pub fn hostname() -> String {
    #[cfg(unix)]
    {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    }
    #[cfg(windows)]
    {
        std::env::var("COMPUTERNAME").unwrap_or_else(|_| "windows".into())
    }
}

/// Whether a process of this machine still runs (a lease whose holder died here is stale at
/// once, not only when it expires).
pub fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
            return false;
        };
        match rustix::process::test_kill_process(pid) {
            Ok(()) => true,
            Err(e) => e != rustix::io::Errno::SRCH,
        }
    }
    #[cfg(windows)]
    {
        let _ = pid;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for n in ["plain", "été", "a b"] {
            assert_eq!(name_bytes(&os_name(n.as_bytes())), n.as_bytes());
        }
        assert_eq!(join(Path::new("base"), b""), PathBuf::from("base"));
        assert_eq!(
            join(Path::new("base"), b"x/y"),
            Path::new("base").join("x/y")
        );
    }

    #[test]
    fn positioned_io_and_locks() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        write_all_at(&f, b"hello world", 3).unwrap();
        let mut buf = [0u8; 5];
        assert_eq!(read_at(&f, &mut buf, 9).unwrap(), 5);
        assert_eq!(&buf, b"world");
        let md = f.metadata().unwrap();
        assert!(!changed(&md, &f.metadata().unwrap()));
        assert_eq!(data_extents(&f, 14).unwrap(), vec![(0, 14)]);
        assert!(file_id(&f, &md).unwrap() != 0);
        assert!(try_lock(&f).unwrap());
        let again = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        assert!(!try_lock(&again).unwrap(), "a second lock must be refused");
        let (_, id) = dir_identity(d.path()).unwrap();
        assert!(id != 0);
        flush_restore(d.path(), &[p]).unwrap();
    }
}
