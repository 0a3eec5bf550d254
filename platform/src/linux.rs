//! Linux: /proc/self/mountinfo, umount2 or fusermount3, flock, fork.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use tracing::info;

use crate::{Error, Result};

/// One line of the mount table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Unique while mounted and never reused soon: tells one appearance of a drive from the
    /// next, at the same place.
    pub id: u64,
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: PathBuf,
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(field: &str) -> OsString {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

/// Parses /proc/self/mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let id = left.split(' ').next()?.parse().ok()?;
            let mountpoint = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let source = r.next()?;
            Some(MountEntry {
                id,
                mountpoint: PathBuf::from(unescape(mountpoint)),
                fstype: fstype.to_owned(),
                source: PathBuf::from(unescape(source)),
            })
        })
        .collect()
}

/// The current mount table.
pub fn mounts() -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("cannot read /proc/self/mountinfo", e))?;
    Ok(parse_mountinfo(&text))
}

/// The mount whose mountpoint is exactly `path`.
pub fn mount_at(path: &Path) -> Result<Option<MountEntry>> {
    Ok(mounts()?.into_iter().rev().find(|m| m.mountpoint == path))
}

/// The filesystem type of backpocket mounts in the mount table.
pub const FSTYPE: &str = "fuse.backpocket";

/// The backpocket mount containing `path` (walking up from it), if any: commands run inside a
/// mount find their pocket through its source field.
pub fn backpocket_mount_containing(path: &Path) -> Result<Option<MountEntry>> {
    let table = mounts()?;
    let mut p = Some(path);
    while let Some(dir) = p {
        if let Some(m) = table.iter().rev().find(|m| m.mountpoint == dir) {
            return Ok((m.fstype == FSTYPE).then(|| m.clone()));
        }
        p = dir.parent();
    }
    Ok(None)
}

/// Checks that `mountpoint` can take a mount of the pocket at `pocket`, cleaning up a stale
/// mount of that pocket left by a killed daemon first. The caller holds the pocket's lock, so
/// any mount of this pocket that is still listed has lost its daemon. Returns whether it
/// cleaned one up (callers log it: this runs before logging is set up).
pub fn prepare_mountpoint(mountpoint: &Path, pocket: &Path) -> Result<bool> {
    let mut cleaned = false;
    if let Some(m) = mount_at(mountpoint)? {
        if m.fstype == FSTYPE && m.source == pocket {
            unmount(mountpoint, true)?;
            cleaned = true;
        }
    }
    match std::fs::metadata(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            unmount(mountpoint, true)?;
            cleaned = true;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::MountpointMissing(mountpoint.to_owned()))
        }
        Err(e) => {
            return Err(Error::io(
                format!("cannot use the mountpoint {}", mountpoint.display()),
                e,
            ))
        }
        Ok(m) if !m.is_dir() => return Err(Error::MountpointNotDir(mountpoint.to_owned())),
        Ok(_) => {}
    }
    if let Some(m) = mount_at(mountpoint)? {
        return Err(Error::MountpointBusy(
            mountpoint.to_owned(),
            format!("{} from {}", m.fstype, m.source.display()),
        ));
    }
    let mut entries = std::fs::read_dir(mountpoint)
        .map_err(|e| Error::io(format!("cannot read {}", mountpoint.display()), e))?;
    if entries.next().is_some() {
        return Err(Error::MountpointNotEmpty(mountpoint.to_owned()));
    }
    Ok(cleaned)
}

/// Unmounts a FUSE mount: `umount2` as root, else through fusermount3. `lazy` detaches even
/// when busy (for stale mounts).
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<()> {
    if rustix::process::geteuid().is_root() {
        let flags = if lazy {
            rustix::mount::UnmountFlags::DETACH
        } else {
            rustix::mount::UnmountFlags::empty()
        };
        rustix::mount::unmount(mountpoint, flags)
            .map_err(|e| Error::io(format!("cannot unmount {}", mountpoint.display()), e.into()))
    } else {
        let mut cmd = std::process::Command::new("fusermount3");
        cmd.arg("-u");
        if lazy {
            cmd.arg("-z");
        }
        let out = cmd
            .arg("--")
            .arg(mountpoint)
            .output()
            .map_err(|e| Error::io("cannot run fusermount3 (install the fuse3 package)", e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::io(
                format!("cannot unmount {}", mountpoint.display()),
                std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
            ))
        }
    }
}

/// A process using something under a folder: a file it holds open, or its current folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenUnder {
    pub pid: u32,
    pub command: String,
    pub path: PathBuf,
}

/// What keeps a mount busy, as `fuser -m` finds it: every process's open files and current
/// folder under `dir` (another user's processes only as root). Readlinks only: nothing here
/// calls into the mount.
pub fn open_under(dir: &Path) -> Vec<OpenUnder> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let base = p.path();
        let mut paths: Vec<PathBuf> = std::fs::read_link(base.join("cwd")).into_iter().collect();
        if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
            paths.extend(
                fds.flatten()
                    .filter_map(|fd| std::fs::read_link(fd.path()).ok()),
            );
        }
        let command = std::fs::read_to_string(base.join("comm"))
            .map(|c| c.trim().to_owned())
            .unwrap_or_default();
        for path in paths {
            if path.starts_with(dir)
                && !out
                    .iter()
                    .any(|o: &OpenUnder| o.pid == pid && o.path == path)
            {
                out.push(OpenUnder {
                    pid,
                    command: command.clone(),
                    path,
                });
            }
        }
    }
    out
}

/// The parent of process `pid` (None once it is gone).
pub fn parent_of(pid: u32) -> Option<u32> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let (_, rest) = st.rsplit_once(") ")?;
    rest.split(' ').nth(1)?.parse().ok()
}

/// Flushes the filesystem holding `path` to its device: once it returns, the drive can be
/// pulled without losing what was written.
pub fn syncfs(path: &Path) -> Result<()> {
    let f =
        File::open(path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    rustix::fs::syncfs(&f).map_err(|e| {
        Error::io(
            format!("cannot flush the drive holding {}", path.display()),
            e.into(),
        )
    })
}

/// The single-mount lock of a pocket: an `flock`, so the kernel drops it with the process
/// (kill -9 leaves no stale lock).
#[derive(Debug)]
pub struct PocketLock {
    _file: File,
}

impl PocketLock {
    /// Takes the lock at `path` or says who holds it.
    pub fn acquire(path: &Path, pocket: &Path) -> Result<PocketLock> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io(format!("cannot open the lock {}", path.display()), e))?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim().to_owned();
                // A killed daemon whose thread waits on its own mount: a zombie that keeps
                // its files (and this lock) until the mount's connection is aborted.
                let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|st| st.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
                    .unwrap_or(false);
                if zombie {
                    return Err(Error::HeldByDeadDaemon {
                        path: pocket.to_owned(),
                        pid,
                    });
                }
                return Err(Error::Locked {
                    path: pocket.to_owned(),
                    pid,
                });
            }
            Err(e) => {
                return Err(Error::io(
                    format!("cannot lock {}", path.display()),
                    e.into(),
                ))
            }
        }
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", std::process::id());
        Ok(PocketLock { _file: file })
    }

    /// Records the process that holds the lock now (after a fork).
    pub fn update_pid(&mut self) {
        let _ = self._file.set_len(0);
        let _ = std::io::Seek::rewind(&mut self._file);
        let _ = writeln!(self._file, "{}", std::process::id());
    }
}

/// The child's end of a detach: tell the waiting parent how the start went.
#[derive(Debug)]
pub struct Detached {
    pipe: Option<File>,
}

impl Detached {
    /// Tells the parent the mount is ready (it prints the line, exits 0) or failed (it prints
    /// the message and exits with the code).
    pub fn report(&mut self, result: std::result::Result<&str, (i32, &str)>) {
        if let Some(mut p) = self.pipe.take() {
            let msg = match result {
                Ok(m) => format!("ok {m}"),
                Err((code, m)) => format!("err {code} {m}"),
            };
            let _ = p.write_all(msg.as_bytes());
        }
        // Standard streams go to /dev/null once the parent has gone.
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            let _ = rustix::stdio::dup2_stdin(&null);
            let _ = rustix::stdio::dup2_stdout(&null);
            let _ = rustix::stdio::dup2_stderr(&null);
        }
    }
}

/// Forks into the background. Must be called before any thread exists (no runtime, no SQLite
/// handle, no logger thread). In the parent it does not return: it waits for the child's
/// report and exits with it. In the child it returns the reporting end.
pub fn detach() -> Result<Detached> {
    let (r, w) = rustix::pipe::pipe().map_err(|e| Error::io("cannot create a pipe", e.into()))?;
    // SAFETY: fork is called while the process has a single thread (the caller's contract);
    // the child only continues the program, it does not need async-signal-safety.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::io("cannot fork", std::io::Error::last_os_error()));
    }
    if pid > 0 {
        drop(w);
        let mut msg = String::new();
        let _ = File::from(r).read_to_string(&mut msg);
        match msg.split_once(' ') {
            Some(("ok", m)) => {
                if !m.is_empty() {
                    println!("{m}");
                }
                std::process::exit(0)
            }
            Some(("err", rest)) => {
                let (code, m) = rest.split_once(' ').unwrap_or(("1", rest));
                eprintln!("{m}");
                std::process::exit(code.parse().unwrap_or(1))
            }
            _ => {
                eprintln!("backpocket: the background mount process ended before the mount was ready; run without --daemon to see why");
                std::process::exit(1)
            }
        }
    }
    drop(r);
    let _ = rustix::process::setsid();
    info!("detached into the background");
    let w: OwnedFd = w;
    Ok(Detached {
        pipe: Some(File::from(w)),
    })
}

/// Raises the limit of open descriptors as far as allowed (as root, to the kernel's
/// `fs/nr_open`; otherwise to the hard limit) and returns it. The filesystem holds one
/// descriptor per inode the kernel caches, so this limit bounds how many files the mount can
/// show at once.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    let mut want = cur.maximum;
    if rustix::process::geteuid().is_root() {
        if let Some(n) = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            want = Some(want.map_or(n, |m| m.max(n)));
        }
    }
    let new = Rlimit {
        current: want,
        maximum: want.max(cur.maximum),
    };
    if setrlimit(Resource::Nofile, new).is_err() {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: cur.maximum,
                maximum: cur.maximum,
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Bytes of a path, for messages and comparisons.
pub fn path_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt/my\\040pocket rw,noatime master:1 - fuse.backpocket /media/usb/p\\040x rw,user_id=0\n\
                    22 27 0:21 / /proc rw,relatime - proc proc rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mountpoint, PathBuf::from("/mnt/my pocket"));
        assert_eq!(m[0].fstype, "fuse.backpocket");
        assert_eq!(m[0].source, PathBuf::from("/media/usb/p x"));
        assert_eq!(m[1].fstype, "proc");
    }

    #[test]
    fn second_lock_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("lock");
        let _first = PocketLock::acquire(&lock, dir.path()).unwrap();
        match PocketLock::acquire(&lock, dir.path()) {
            Err(Error::Locked { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected Locked, got {other:?}"),
        }
    }
}
