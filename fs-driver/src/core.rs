//! The filesystem core: every operation on the pocket, done on the backing folder, with the
//! journal record that carries it to the destinations. No FUSE types here, so it can be driven
//! and tested without a mount.
//!
//! Each known inode holds an `O_PATH` descriptor of its backing file. Operations go through
//! `*at` calls relative to those descriptors (or `/proc/self/fd/N` where Linux offers no `*at`
//! form), never through path strings, so names with any bytes are no danger. The inode number
//! the kernel sees is the backing inode number (the root is 1), so it is stable across rename,
//! link, and remounts.
//!
//! Descriptors are bounded by the open-files limit, and the kernel may cache more inodes than
//! that. Past a budget, the least recently used idle files (one link, not open) let go of
//! theirs and are opened again by their last name when needed, checked by inode number.
//! Folders, open files and files with several links always keep theirs, and a file about to
//! lose a name through the mount gets its descriptor back first: a backing inode the kernel
//! still knows stays allocated, so its number cannot be reused under it.
//!
//! Records are handed to the journal before the reply, so the journal's order is the order in
//! which the kernel saw the operations complete.

// Field types of `struct stat` differ between targets; the casts are for the others.
#![allow(clippy::unnecessary_cast)]

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use journal::{Change, JournalHandle, Kind, Meta};
use parking_lot::{Mutex, RwLock};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;
use tracing::{debug, warn};

use crate::error::{FsError, FsResult};

/// The inode number the kernel uses for the root.
pub const ROOT: u64 = 1;

/// The least time a record must be taken after a file's modification time for its times to
/// tell a later write, beyond the drive's granularity (the scan's racy window is the same): a
/// driver may stamp times from the coarse clock, a timer tick behind.
const MIN_TIME_GRANULARITY_NS: i64 = 20_000_000;

/// Who asks: the caller's ids, for ownership of what they create.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// A name and its attributes, as returned by lookup and the creating operations.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub ino: u64,
    pub stat: Stat,
}

/// A time to set: a given time, or the current time.
#[derive(Clone, Copy, Debug)]
pub enum SetTime {
    At(i64, u32),
    Now,
}

/// What a setattr asks to change.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// One directory entry.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: FileType,
    pub name: Vec<u8>,
}

/// How the filesystem behaves; the defaults are what `backpocket mount` uses.
#[derive(Clone, Debug)]
pub struct Options {
    /// Files held open for writing are recorded once unchanged for this long.
    pub quiet_period: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            quiet_period: Duration::from_secs(5),
        }
    }
}

/// Size and mtime: what a content write always changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Snap {
    size: u64,
    mtime_ns: i64,
}

impl Snap {
    fn of(st: &Stat) -> Snap {
        Snap {
            size: st.st_size as u64,
            mtime_ns: mtime_ns(st),
        }
    }
}

impl WriteState {
    fn set_recorded(&mut self, snap: Snap) {
        self.recorded = Some(snap);
        self.recorded_at = crate::keep::now_ns();
    }

    /// Whether `snap` shows the contents as last recorded. On a drive with coarse times
    /// (`granularity_ns`; 0 where they are exact), not when the record was taken within that
    /// of its modification time: a write since then of as many bytes leaves size and time as
    /// they were (exFAT keeps times to the second through its FUSE driver).
    fn as_recorded(&self, snap: Snap, granularity_ns: i64) -> bool {
        self.recorded == Some(snap)
            && (granularity_ns == 0 || self.recorded_at - snap.mtime_ns >= granularity_ns)
    }

    /// Remembers a folder that got a new entry for this file, once.
    fn new_name_in(&mut self, parent: &Arc<Inode>) {
        if !self.unsynced_parents.iter().any(|p| Arc::ptr_eq(p, parent)) {
            self.unsynced_parents.push(parent.clone());
        }
    }
}

#[derive(Debug, Default)]
struct WriteState {
    /// The contents last recorded (or found at first open).
    recorded: Option<Snap>,
    /// When `recorded` was taken (the daemon's clock).
    recorded_at: i64,
    /// Written through the daemon, or its size or times set, since the last record.
    dirty: bool,
    /// Directories whose entry for this file is not yet known to be on the drive.
    unsynced_parents: Vec<Arc<Inode>>,
    /// Handles open for writing now: with kernel passthrough their writes reach the drive
    /// without the daemon seeing them.
    writers: u32,
}

#[derive(Debug)]
struct Inode {
    nodeid: u64,
    ino: u64,
    is_symlink: bool,
    is_dir: bool,
    /// The `O_PATH` descriptor, while we hold one. A file's may be closed when descriptors run
    /// short (see [`PocketFs::shed`]) and is opened again by name on demand; a folder's stays.
    fd: Mutex<Option<Arc<OwnedFd>>>,
    lookups: AtomicU64,
    write: Mutex<WriteState>,
    /// The name we last saw it under (parent's inode number, name), to open it again by.
    name: Mutex<(u64, Vec<u8>)>,
    /// When the kernel last looked it up (a tick of [`PocketFs::tick`]).
    used: AtomicU64,
    /// Its last name was removed (it may still be open).
    unlinked: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct OpenFile {
    inode: Arc<Inode>,
    file: File,
    writable: bool,
    /// What the quiet-period watcher saw last, and since when.
    seen: Mutex<Option<(Snap, Instant)>>,
}

#[derive(Debug)]
struct OpenDir {
    inode: Arc<Inode>,
    entries: Mutex<Vec<DirEntry>>,
}

#[derive(Debug)]
enum Handle {
    File(Arc<OpenFile>),
    Dir(Arc<OpenDir>),
}

/// The pocket's filesystem over its backing folder.
#[derive(Debug)]
pub struct PocketFs {
    root_ino: u64,
    proc_fd: OwnedFd,
    inodes: RwLock<HashMap<u64, Arc<Inode>>>,
    handles: RwLock<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    journal: Option<JournalHandle>,
    euid: u32,
    options: Options,
    /// Orders inode use, for choosing what the kernel should forget first.
    tick: AtomicU64,
    /// How many `O_PATH` descriptors we hold before closing idle files' ones.
    budget: usize,
    /// `O_PATH` descriptors held now.
    held: std::sync::atomic::AtomicUsize,
    /// Files this session has marked unsynced in the journal, and whether the mark is known
    /// durable (a mark lasts until the journal is closed cleanly, so once per file is enough).
    unsynced: Mutex<HashMap<u64, bool>>,
    writeback: Writeback,
    /// Modes, owners and exact times, where the drive cannot keep them.
    keeper: Option<crate::keep::Keeper>,
    /// How coarse the drive's file times are, where they are (0: exact).
    time_granularity_ns: i64,
    /// Names the drive cannot spell are stored under look-alikes (`journal::spelling`).
    names_encoded: bool,
}

/// Whether the kernel is writing dirty pages back on its own right now (or about to), read
/// from `/proc/meminfo` at most every 50 ms. Unknown counts as yes.
#[derive(Debug, Default)]
struct Writeback {
    /// When it was last read, in ms since `start`, plus one; 0 = never.
    read_at_ms: AtomicU64,
    pressing: std::sync::atomic::AtomicBool,
    start: std::sync::OnceLock<Instant>,
}

impl Writeback {
    const EVERY_MS: u64 = 50;

    fn pressing(&self) -> bool {
        let start = *self.start.get_or_init(Instant::now);
        let now = start.elapsed().as_millis() as u64 + 1;
        let at = self.read_at_ms.load(Ordering::Relaxed);
        if at == 0 || now.saturating_sub(at) >= Self::EVERY_MS {
            let p = dirty_pressure().unwrap_or(true);
            self.pressing.store(p, Ordering::Relaxed);
            self.read_at_ms.store(now, Ordering::Relaxed);
            return p;
        }
        self.pressing.load(Ordering::Relaxed)
    }
}

/// Dirty and in-writeback pages at half the background writeback threshold or more: the
/// flusher may be writing any file's pages back (the kernel's threshold is a share of the
/// memory that may hold dirty pages: free plus file pages, roughly).
fn dirty_pressure() -> Option<bool> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = |key: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().next()?.parse().ok()
    };
    let dirty = kb("Dirty:")? + kb("Writeback:")?;
    let sysctl = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/sys/vm/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let threshold_kb = match sysctl("dirty_background_bytes")? {
        0 => {
            let dirtyable = kb("MemFree:")? + kb("Active(file):")? + kb("Inactive(file):")?;
            dirtyable * sysctl("dirty_background_ratio")? / 100
        }
        bytes => bytes / 1024,
    };
    Some(dirty * 2 >= threshold_kb)
}

pub(crate) fn mtime_ns(st: &Stat) -> i64 {
    st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64
}

fn ctime_ns(st: &Stat) -> i64 {
    st.st_ctime as i64 * 1_000_000_000 + st.st_ctime_nsec as i64
}

/// The journal's view of a stat.
pub fn meta_of(st: &Stat) -> Meta {
    Meta {
        kind: Kind::from_mode(st.st_mode as u32).unwrap_or(Kind::File),
        perm: st.st_mode as u32 & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        mtime_ns: mtime_ns(st),
        ctime_ns: ctime_ns(st),
        rdev: st.st_rdev as u64,
    }
}

/// A name a FUSE driver gives a file unlinked while it is open, until its last close.
fn is_fuse_hidden(name: &[u8]) -> bool {
    name.starts_with(b".fuse_hidden")
}

/// An xattr's name as a C string.
fn cname(name: &OsStr) -> FsResult<CString> {
    CString::new(name.as_bytes()).map_err(|_| FsError::Os(Errno::INVAL))
}

fn proc_name(fd: &OwnedFd) -> CString {
    use std::os::fd::AsRawFd;
    CString::new(fd.as_raw_fd().to_string()).expect("digits have no NUL")
}

fn timestamp(t: Option<SetTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(SetTime::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(SetTime::At(sec, nsec)) => Timespec {
            tv_sec: sec,
            tv_nsec: nsec as _,
        },
    }
}

impl PocketFs {
    /// Serves the pocket at `root`. `journal` None switches recording off (for measuring what
    /// the journal costs; never for real use).
    ///
    /// Sets the process umask to 0: the kernel already applied the caller's umask to the modes
    /// it sends, and the daemon's own umask must not be applied a second time.
    pub fn new(root: &Path, journal: Option<JournalHandle>, options: Options) -> FsResult<Self> {
        rustix::process::umask(Mode::empty());
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        let proc_fd = rustix::fs::open(
            "/proc/self/fd",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let root_inode = Arc::new(Inode {
            nodeid: ROOT,
            ino: st.st_ino as u64,
            is_symlink: false,
            is_dir: true,
            fd: Mutex::new(Some(Arc::new(fd))),
            lookups: AtomicU64::new(1),
            write: Mutex::new(WriteState::default()),
            name: Mutex::new((ROOT, Vec::new())),
            used: AtomicU64::new(0),
            unlinked: std::sync::atomic::AtomicBool::new(false),
        });
        // Three quarters of the descriptors we may hold; the rest is for open files, the
        // journal and everything else.
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(1 << 20);
        let budget = (limit as usize / 4 * 3).max(64);
        let mut inodes = HashMap::new();
        inodes.insert(ROOT, root_inode);
        let names_encoded = journal.as_ref().is_some_and(|j| j.ids().names_encoded());
        Ok(PocketFs {
            root_ino: st.st_ino as u64,
            proc_fd,
            inodes: RwLock::new(inodes),
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            journal,
            euid: rustix::process::geteuid().as_raw(),
            options,
            tick: AtomicU64::new(1),
            budget,
            held: std::sync::atomic::AtomicUsize::new(1),
            unsynced: Mutex::new(HashMap::new()),
            writeback: Writeback::default(),
            keeper: None,
            time_granularity_ns: 0,
            names_encoded,
        })
    }

    /// For a drive that cannot keep modes, owners or exact times (exFAT, FAT): the mount keeps
    /// them, starting from the catalog's (`files`: every file's id and recorded metadata), shows
    /// them, and records them; the same for extended attributes (`xattrs`: the catalog's).
    /// `granularity_ns`: how the drive rounds times.
    pub fn keep_metadata(
        &mut self,
        granularity_ns: i64,
        files: impl IntoIterator<Item = (journal::FileId, Meta)>,
        xattrs: impl IntoIterator<Item = (journal::FileId, Vec<u8>, Vec<u8>)>,
    ) {
        let ids = self
            .journal
            .as_ref()
            .map(|j| j.ids().clone())
            .unwrap_or_default();
        let owner = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        self.time_granularity_ns = granularity_ns
            .max(0)
            .saturating_add(MIN_TIME_GRANULARITY_NS);
        self.keeper = Some(crate::keep::Keeper::new(
            ids,
            granularity_ns,
            files,
            xattrs,
            owner,
        ));
    }

    /// A file's name as the drive stores it (names it cannot spell under look-alikes:
    /// `journal::spelling`).
    fn drive_name(&self, name: &OsStr) -> FsResult<CString> {
        let bytes = if self.names_encoded {
            journal::spelling::to_drive(name.as_bytes())
        } else {
            std::borrow::Cow::Borrowed(name.as_bytes())
        };
        CString::new(bytes.into_owned()).map_err(|_| FsError::Os(Errno::INVAL))
    }

    /// A name the drive stores, as the pocket has it.
    fn pocket_name<'a>(&self, name: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        if self.names_encoded {
            journal::spelling::from_drive(name)
        } else {
            std::borrow::Cow::Borrowed(name)
        }
    }

    /// A stat of a backing file as the pocket shows it (with what the mount keeps).
    pub fn shown(&self, st: &Stat) -> Stat {
        let mut st = *st;
        if let Some(k) = &self.keeper {
            k.show(&mut st);
        }
        st
    }

    /// The metadata a record carries: what the mount shows, but the drive's change time (the
    /// scan compares records with the drive's).
    fn meta(&self, st: &Stat) -> Meta {
        Meta {
            ctime_ns: ctime_ns(st),
            ..meta_of(&self.shown(st))
        }
    }

    /// Backing inode number -> the kernel's inode number (the root and 1 trade places).
    fn nodeid_of(&self, ino: u64) -> u64 {
        if ino == self.root_ino {
            ROOT
        } else if ino == ROOT {
            self.root_ino
        } else {
            ino
        }
    }

    /// The inode number as the kernel sees it, for a stat of a backing file.
    pub fn visible_ino(&self, st: &Stat) -> u64 {
        self.nodeid_of(st.st_ino as u64)
    }

    fn inode(&self, nodeid: u64) -> FsResult<Arc<Inode>> {
        self.inodes
            .read()
            .get(&nodeid)
            .cloned()
            .ok_or(FsError::Stale(nodeid))
    }

    fn record(&self, change: Change) {
        if let Some(j) = &self.journal {
            j.record(change);
        }
    }

    /// The root's entries hide the pocket's own folder.
    fn check_name(&self, parent: &Inode, name: &OsStr) -> FsResult<()> {
        if parent.nodeid == ROOT && name.as_bytes() == journal::POCKET_DIR.as_bytes() {
            return Err(FsError::Hidden);
        }
        Ok(())
    }

    fn check_new_name(&self, parent: &Inode, name: &OsStr) -> FsResult<()> {
        self.check_name(parent, name)
            .map_err(|_| FsError::Protected)
    }

    /// Registers one more kernel reference to the inode behind `fd`/`st`.
    fn remember(
        &self,
        st: &Stat,
        fd: Option<OwnedFd>,
        parent: &Inode,
        name: &CStr,
    ) -> FsResult<Entry> {
        let nodeid = self.nodeid_of(st.st_ino as u64);
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        if let Some(inode) = self.inodes.read().get(&nodeid) {
            inode.lookups.fetch_add(1, Ordering::Relaxed);
            inode.used.store(tick, Ordering::Relaxed);
            let mut known = inode.name.lock();
            if known.0 != parent.nodeid || known.1 != name.to_bytes() {
                *known = (parent.nodeid, name.to_bytes().to_vec());
            }
            drop(known);
            return Ok(Entry {
                ino: nodeid,
                stat: *st,
            });
        }
        let fd = match fd {
            Some(fd) => fd,
            None => self.open_path(parent, name)?,
        };
        let st = rustix::fs::fstat(&fd)?;
        let nodeid = self.nodeid_of(st.st_ino as u64);
        {
            let mut inodes = self.inodes.write();
            let inode = match inodes.entry(nodeid) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    self.held.fetch_add(1, Ordering::Relaxed);
                    let kind = FileType::from_raw_mode(st.st_mode as _);
                    // Where the journal knows files by path, it learns which file this
                    // number is (the catalog's file at this name).
                    if let Some(j) = &self.journal {
                        j.bind(
                            st.st_ino as u64,
                            parent.ino,
                            &self.pocket_name(name.to_bytes()),
                        );
                    }
                    e.insert(Arc::new(Inode {
                        nodeid,
                        ino: st.st_ino as u64,
                        is_symlink: kind == FileType::Symlink,
                        is_dir: kind == FileType::Directory,
                        fd: Mutex::new(Some(Arc::new(fd))),
                        lookups: AtomicU64::new(0),
                        write: Mutex::new(WriteState::default()),
                        name: Mutex::new((parent.nodeid, name.to_bytes().to_vec())),
                        used: AtomicU64::new(tick),
                        unlinked: std::sync::atomic::AtomicBool::new(false),
                    }))
                }
            };
            inode.lookups.fetch_add(1, Ordering::Relaxed);
        }
        if self.held.load(Ordering::Relaxed) > self.budget {
            self.shed();
        }
        Ok(Entry {
            ino: nodeid,
            stat: st,
        })
    }

    /// An `O_PATH` descriptor for a name in a folder.
    fn open_path(&self, parent: &Inode, name: &CStr) -> FsResult<OwnedFd> {
        let pfd = self.path_fd(parent)?;
        let open = || {
            rustix::fs::openat(
                &*pfd,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        match open() {
            Err(Errno::MFILE) | Err(Errno::NFILE) => {
                self.shed();
                Ok(open().inspect_err(|_| {
                    warn!(
                        "out of file descriptors with {} held for {} inodes; raise the \
                         open-files limit (ulimit -n) and remount",
                        self.held.load(Ordering::Relaxed),
                        self.inodes.read().len()
                    )
                })?)
            }
            other => Ok(other?),
        }
    }

    /// The inode's `O_PATH` descriptor, opened again by its name if it was shed. The number
    /// is checked, so a name that now holds another file gives ESTALE, never the wrong file.
    fn path_fd(&self, inode: &Inode) -> FsResult<Arc<OwnedFd>> {
        if let Some(fd) = inode.fd.lock().as_ref() {
            return Ok(fd.clone());
        }
        let (parent_id, name) = inode.name.lock().clone();
        let parent = self.inode(parent_id)?;
        let cname = CString::new(name).map_err(|_| FsError::Stale(inode.nodeid))?;
        let fd = self.open_path(&parent, &cname).map_err(|e| match e {
            FsError::Os(Errno::NOENT) => FsError::Stale(inode.nodeid),
            other => other,
        })?;
        let st = rustix::fs::fstat(&fd)?;
        if st.st_ino as u64 != inode.ino {
            // A drive that numbers files afresh (exFAT) may give an idle file a new number once
            // it leaves the drive's cache. There the journal knows files by path, and only the
            // mount changes names while it runs: the name still holds the file, if the kind
            // agrees. Its records keep the number the journal knows it by.
            let kind = FileType::from_raw_mode(st.st_mode as _);
            let by_path = self.journal.as_ref().is_some_and(|j| j.ids().by_path());
            if !by_path
                || (kind == FileType::Directory) != inode.is_dir
                || (kind == FileType::Symlink) != inode.is_symlink
            {
                return Err(FsError::Stale(inode.nodeid));
            }
            debug!(
                "inode {} is numbered {} by the drive now; same name, same file",
                inode.ino, st.st_ino
            );
        }
        let mut slot = inode.fd.lock();
        if let Some(fd) = slot.as_ref() {
            return Ok(fd.clone());
        }
        let fd = Arc::new(fd);
        *slot = Some(fd.clone());
        drop(slot);
        if self.held.fetch_add(1, Ordering::Relaxed) >= self.budget {
            self.shed();
        }
        Ok(fd)
    }

    /// Before a name goes away: an inode the kernel still knows, whose descriptor was shed,
    /// gets one again, so that its backing inode (and so its number) stays taken until the
    /// kernel forgets it.
    fn pin(&self, st: &Stat, parent_fd: &OwnedFd, name: &CStr) {
        let Ok(inode) = self.inode(self.nodeid_of(st.st_ino as u64)) else {
            return;
        };
        if inode.fd.lock().is_some() {
            return;
        }
        if let Ok(fd) = rustix::fs::openat(
            parent_fd,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            let mut slot = inode.fd.lock();
            if slot.is_none() && rustix::fs::fstat(&fd).map(|s| s.st_ino) == Ok(st.st_ino) {
                *slot = Some(Arc::new(fd));
                self.held.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Closes the descriptors of the least recently used files that nothing holds, down to
    /// half the budget. Folders keep theirs (every operation in them needs it), and so do files
    /// that cannot be found again by one name: open, unlinked, or with several links.
    fn shed(&self) {
        let inodes = self.inodes.read();
        let mut idle: Vec<(u64, &Arc<Inode>)> = inodes
            .values()
            .filter(|i| !i.is_dir && Arc::strong_count(i) == 1)
            .map(|i| (i.used.load(Ordering::Relaxed), i))
            .collect();
        idle.sort_by_key(|(used, _)| *used);
        let target = self.budget / 2;
        for (_, inode) in idle {
            if self.held.load(Ordering::Relaxed) <= target {
                break;
            }
            let mut slot = inode.fd.lock();
            let Some(fd) = slot.as_ref() else { continue };
            if Arc::strong_count(fd) > 1 {
                continue; // in use by an operation right now
            }
            match rustix::fs::fstat(&**fd) {
                Ok(st) if st.st_nlink == 1 => {
                    *slot = None;
                    self.held.fetch_sub(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }

    /// `O_PATH` descriptors held, and how many we allow before shedding.
    pub fn descriptors(&self) -> (usize, usize) {
        (self.held.load(Ordering::Relaxed), self.budget)
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        let parent = self.inode(parent)?;
        let parent_fd = self.path_fd(&parent)?;
        self.check_name(&parent, name)?;
        let c = self.drive_name(name)?;
        let st = rustix::fs::statat(&*parent_fd, &c, AtFlags::SYMLINK_NOFOLLOW)?;
        self.remember(&st, None, &parent, &c)
    }

    pub fn forget(&self, nodeid: u64, n: u64) {
        if nodeid == ROOT {
            return;
        }
        let mut inodes = self.inodes.write();
        if let Some(inode) = inodes.get(&nodeid) {
            let prev = inode.lookups.fetch_sub(
                n.min(inode.lookups.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            if prev <= n {
                if let Some(gone) = inodes.remove(&nodeid) {
                    if gone.fd.lock().is_some() {
                        self.held.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    pub fn getattr(&self, nodeid: u64) -> FsResult<Stat> {
        let inode = self.inode(nodeid)?;
        let inode_fd = self.path_fd(&inode)?;
        Ok(rustix::fs::fstat(&*inode_fd)?)
    }

    /// Attributes of "." or ".." of a directory; the root's ".." is the root itself, so the
    /// mount never shows what lies outside the pocket.
    pub fn dot_attr(&self, dir: u64, dotdot: bool) -> FsResult<Stat> {
        let inode = self.inode(dir)?;
        let inode_fd = self.path_fd(&inode)?;
        if dotdot && dir != ROOT {
            Ok(rustix::fs::statat(
                &*inode_fd,
                c"..",
                AtFlags::SYMLINK_NOFOLLOW,
            )?)
        } else {
            Ok(rustix::fs::fstat(&*inode_fd)?)
        }
    }

    /// Opens the backing file behind an `O_PATH` descriptor for real I/O.
    fn reopen(&self, inode: &Inode, flags: OFlags) -> FsResult<OwnedFd> {
        let inode_fd = self.path_fd(inode)?;
        let open = || {
            rustix::fs::openat(
                &self.proc_fd,
                proc_name(&inode_fd),
                flags | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        match open() {
            Err(Errno::MFILE) | Err(Errno::NFILE) => {
                self.shed();
                Ok(open()?)
            }
            other => Ok(other?),
        }
    }

    fn open_file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        match self.handles.read().get(&fh) {
            Some(Handle::File(f)) => Ok(f.clone()),
            _ => Err(FsError::BadHandle(fh)),
        }
    }

    fn open_dir(&self, fh: u64) -> FsResult<Arc<OpenDir>> {
        match self.handles.read().get(&fh) {
            Some(Handle::Dir(d)) => Ok(d.clone()),
            _ => Err(FsError::BadHandle(fh)),
        }
    }

    pub fn setattr(&self, nodeid: u64, fh: Option<u64>, attr: SetAttr) -> FsResult<Stat> {
        let inode = self.inode(nodeid)?;
        let inode_fd = self.path_fd(&inode)?;
        let handle = fh.and_then(|fh| self.open_file(fh).ok());
        // Whether its bytes changed since their last record is told by the times before this
        // call, which may set them.
        let before = rustix::fs::fstat(&*inode_fd)?;
        if let Some(keeper) = &self.keeper {
            // The drive keeps none of these: the mount does (the kernel checked who may).
            if attr.mode.is_some() || attr.uid.is_some() || attr.gid.is_some() {
                if attr.mode.is_some() && (inode.is_symlink || keeper.is_symlink(inode.ino)) {
                    return Err(FsError::Unsupported);
                }
                keeper.change(&before, |k| {
                    if let Some(mode) = attr.mode {
                        k.perm = mode & 0o7777;
                    }
                    if let Some(uid) = attr.uid {
                        k.uid = uid;
                    }
                    if let Some(gid) = attr.gid {
                        k.gid = gid;
                    }
                });
            }
        } else if let Some(mode) = attr.mode {
            if inode.is_symlink {
                return Err(FsError::Unsupported);
            }
            rustix::fs::chmodat(
                &self.proc_fd,
                proc_name(&inode_fd),
                Mode::from_raw_mode(mode as _),
                AtFlags::empty(),
            )?;
        }
        if self.keeper.is_none() && (attr.uid.is_some() || attr.gid.is_some()) {
            rustix::fs::chownat(
                &*inode_fd,
                c"",
                attr.uid.map(uid_of),
                attr.gid.map(gid_of),
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        if let Some(size) = attr.size {
            match &handle {
                Some(h) if h.writable => h.file.set_len(size)?,
                _ => {
                    let fd = self.reopen(&inode, OFlags::WRONLY)?;
                    rustix::fs::ftruncate(&fd, size)?;
                }
            }
        }
        // The daemon's clock when "now" is asked: the drive keeps that moment rounded.
        let asked_at = crate::keep::now_ns();
        if attr.atime.is_some() || attr.mtime.is_some() {
            // exFAT's FUSE driver ignores a new time that comes with the other left as it is
            // (UTIME_OMIT): on such drives the other is given, as the pocket shows it.
            let (mut atime, mut mtime) = (attr.atime, attr.mtime);
            if self.keeper.is_some() {
                let shown = self.shown(&before);
                atime = atime.or(Some(SetTime::At(
                    shown.st_atime as i64,
                    shown.st_atime_nsec as u32,
                )));
                mtime = mtime.or(Some(SetTime::At(
                    shown.st_mtime as i64,
                    shown.st_mtime_nsec as u32,
                )));
            }
            let times = Timestamps {
                last_access: timestamp(atime),
                last_modification: timestamp(mtime),
            };
            if inode.is_symlink {
                rustix::fs::utimensat(
                    &*inode_fd,
                    c"",
                    &times,
                    AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
                )?;
            } else {
                rustix::fs::utimensat(
                    &self.proc_fd,
                    proc_name(&inode_fd),
                    &times,
                    AtFlags::empty(),
                )?;
            }
        }
        let st = rustix::fs::fstat(&*inode_fd)?;
        if let Some(keeper) = &self.keeper {
            if attr.atime.is_some() || attr.mtime.is_some() {
                // A time given is kept exact (the drive keeps it rounded), "now" as the moment
                // it was asked: shown while the drive's time is it rounded.
                let exact = |t: SetTime| match t {
                    SetTime::At(s, ns) => s * 1_000_000_000 + i64::from(ns),
                    SetTime::Now => asked_at,
                };
                keeper.change(&st, |k| {
                    if let Some(t) = attr.mtime {
                        k.mtime_ns = exact(t);
                    }
                    if let Some(t) = attr.atime {
                        k.atime_ns = Some(exact(t));
                    }
                });
            }
        }
        if attr.size.is_some() {
            // A new size is new contents.
            let mut w = inode.write.lock();
            w.set_recorded(Snap::of(&st));
            w.dirty = false;
            self.record(Change::Content {
                file: inode.ino,
                meta: self.meta(&st),
            });
        } else {
            // Even a change of access time alone moves ctime, which the scan compares.
            self.record_attrs(&inode, &before, &st);
        }
        if attr.mode.is_some() && !inode.is_symlink && self.keeper.is_none() {
            // chmod rewrites the mask entry of an extended ACL.
            if let Err(e) = self.record_drive_xattr(&inode, c"system.posix_acl_access", false) {
                warn!(
                    "cannot read the ACL of inode {} after chmod: {e}; the next scan records it",
                    inode.ino
                );
            }
        }
        if attr.mode.is_some() || attr.uid.is_some() || attr.gid.is_some() {
            self.keep_committed()?;
        }
        Ok(st)
    }

    /// Where the journal keeps what the drive cannot (exFAT: modes, owners, xattrs, what a
    /// stand-in file is) and knows files by path, a change recorded but not committed when
    /// the daemon dies is lost for good: the scan finds a renamed file as a new one, and a new
    /// file with the scan's defaults. So on such drives the changes that carry kept metadata
    /// (a mode, owner or xattr changed; a file made, or a file or folder renamed, that is not
    /// just what the scan would give it: `Keeper::plain`) return once the journal holds them:
    /// they survive a kill -9 of the daemon as the drive's own changes do (committed, not made
    /// durable: fsync does that). Kept exact times do not wait: the drive has them rounded.
    fn keep_committed_unless_plain(&self, st: &rustix::fs::Stat) -> FsResult<()> {
        match &self.keeper {
            Some(k) if !k.plain(st) => self.keep_committed(),
            _ => Ok(()),
        }
    }

    fn keep_committed(&self) -> FsResult<()> {
        if let (Some(_), Some(j)) = (&self.keeper, &self.journal) {
            j.commit()?;
        }
        Ok(())
    }

    pub fn readlink(&self, nodeid: u64) -> FsResult<Vec<u8>> {
        let inode = self.inode(nodeid)?;
        if self
            .keeper
            .as_ref()
            .is_some_and(|k| k.is_symlink(inode.ino))
        {
            // A link the drive holds as a file of its target.
            let fd = self.reopen(&inode, OFlags::RDONLY)?;
            let mut target = Vec::new();
            std::io::Read::read_to_end(&mut File::from(fd), &mut target)?;
            return Ok(target);
        }
        let inode_fd = self.path_fd(&inode)?;
        let target = rustix::fs::readlinkat(&*inode_fd, c"", Vec::new())?;
        Ok(target.into_bytes())
    }

    /// A new file's owner and mode: given on the drive, or kept by the mount where the drive
    /// cannot keep them (the mode asked for, the creator as owner). Returns its stat.
    /// `stand_in`: what a regular file made on a drive without links, fifos or devices stands
    /// for (kind and device number).
    fn own_new(
        &self,
        fd: BorrowedFd<'_>,
        parent: &Inode,
        caller: Caller,
        mode: u32,
        stand_in: Option<(Kind, u64)>,
    ) -> FsResult<Stat> {
        let Some(keeper) = &self.keeper else {
            self.give_to_caller(fd, parent, caller, mode)?;
            return Ok(rustix::fs::fstat(fd)?);
        };
        let st = rustix::fs::fstat(fd)?;
        let owner = if self.euid == 0 {
            (caller.uid, caller.gid)
        } else {
            (self.euid, rustix::process::getegid().as_raw())
        };
        keeper.born(&st, stand_in, mode & 0o7777, owner);
        Ok(st)
    }

    /// Gives a new file to its creator, as the kernel would have: the caller's uid, and the
    /// caller's gid unless the folder is set-group-ID.
    fn give_to_caller(
        &self,
        fd: BorrowedFd<'_>,
        parent: &Inode,
        caller: Caller,
        mode: u32,
    ) -> FsResult<()> {
        let parent_fd = self.path_fd(parent)?;
        if self.euid != 0 || (caller.uid == 0 && caller.gid == 0) {
            return Ok(());
        }
        let pst = rustix::fs::fstat(&*parent_fd)?;
        let gid = if pst.st_mode as u32 & libc::S_ISGID != 0 {
            pst.st_gid
        } else {
            caller.gid
        };
        rustix::fs::chownat(
            fd,
            c"",
            Some(uid_of(caller.uid)),
            Some(gid_of(gid)),
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        )?;
        // chown clears set-user-ID and set-group-ID; put back what the caller asked for.
        if mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
            rustix::fs::chmodat(
                &self.proc_fd,
                proc_name_b(fd),
                Mode::from_raw_mode((mode & 0o7777) as _),
                AtFlags::empty(),
            )?;
        }
        Ok(())
    }

    /// Common tail of every creating operation: ownership, the record, the new inode.
    fn finish_create(
        &self,
        parent: &Arc<Inode>,
        name: &OsStr,
        caller: Caller,
        mode: u32,
        stand_in: Option<(Kind, u64)>,
        make_change: impl FnOnce(u64, Meta) -> Change,
    ) -> FsResult<Entry> {
        let parent_fd = self.path_fd(parent)?;
        let c = self.drive_name(name)?;
        let fd = rustix::fs::openat(
            &*parent_fd,
            &c,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = self.own_new(fd.as_fd(), parent, caller, mode, stand_in)?;
        self.record(make_change(st.st_ino as u64, self.meta(&st)));
        if FileType::from_raw_mode(st.st_mode as _) != FileType::Symlink {
            self.record_inherited_xattrs(st.st_ino as u64, fd.as_fd(), false);
        }
        let entry = self.remember(&st, Some(fd), parent, &c)?;
        if let Ok(inode) = self.inode(entry.ino) {
            inode.write.lock().new_name_in(parent);
        }
        self.keep_committed_unless_plain(&st)?;
        Ok(entry)
    }

    pub fn mknod(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> FsResult<Entry> {
        let p = self.inode(parent)?;
        let p_fd = self.path_fd(&p)?;
        self.check_new_name(&p, name)?;
        let c = self.drive_name(name)?;
        let ftype = FileType::from_raw_mode(mode as _);
        let perm = Mode::from_raw_mode((mode & !umask & 0o7777) as _);
        let kind = Kind::from_mode(mode).unwrap_or(Kind::File);
        let stand_in = match &self.keeper {
            // exFAT and FAT hold no fifos, sockets or devices (exFAT's FUSE driver answers
            // EIO): an empty file stands in for one, and the mount keeps what it is.
            Some(_) if kind.held_as_file() => {
                rustix::fs::openat(
                    &*p_fd,
                    &c,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o644),
                )?;
                let rdev = if matches!(kind, Kind::CharDev | Kind::BlockDev) {
                    u64::from(rdev)
                } else {
                    0
                };
                Some((kind, rdev))
            }
            _ => {
                rustix::fs::mknodat(&*p_fd, &c, ftype, perm, rdev as _)?;
                None
            }
        };
        let pid = p.ino;
        let name_b = name.as_bytes().to_vec();
        let entry =
            self.finish_create(&p, name, caller, mode & !umask, stand_in, |file, meta| {
                Change::Create {
                    parent: pid,
                    name: name_b,
                    file,
                    meta,
                }
            })?;
        Ok(entry)
    }

    pub fn mkdir(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> FsResult<Entry> {
        let p = self.inode(parent)?;
        let p_fd = self.path_fd(&p)?;
        self.check_new_name(&p, name)?;
        let c = self.drive_name(name)?;
        rustix::fs::mkdirat(
            &*p_fd,
            &c,
            Mode::from_raw_mode((mode & !umask & 0o7777) as _),
        )?;
        let pid = p.ino;
        let name_b = name.as_bytes().to_vec();
        self.finish_create(&p, name, caller, mode & !umask, None, |file, meta| {
            Change::Mkdir {
                parent: pid,
                name: name_b,
                file,
                meta,
            }
        })
    }

    pub fn symlink(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        target: &Path,
    ) -> FsResult<Entry> {
        let p = self.inode(parent)?;
        let p_fd = self.path_fd(&p)?;
        self.check_new_name(&p, name)?;
        let c = self.drive_name(name)?;
        let stand_in = match (
            rustix::fs::symlinkat(target.as_os_str().as_bytes(), &*p_fd, &c),
            &self.keeper,
        ) {
            (Ok(()), _) => None,
            // A drive without symlinks (exFAT through FUSE says ENOSYS): the link is held as a
            // small file of its target, and the mount keeps that it is a link (as Git does
            // where a checkout cannot make links).
            (Err(Errno::NOSYS | Errno::PERM), Some(_)) => {
                let fd = rustix::fs::openat(
                    &*p_fd,
                    &c,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o644),
                )?;
                let mut f = File::from(fd);
                std::io::Write::write_all(&mut f, target.as_os_str().as_bytes())?;
                Some((Kind::Symlink, 0))
            }
            (Err(e), _) => return Err(e.into()),
        };
        let pid = p.ino;
        let name_b = name.as_bytes().to_vec();
        let target_b = target.as_os_str().as_bytes().to_vec();
        let entry = self.finish_create(&p, name, caller, 0o777, stand_in, |file, meta| {
            Change::Symlink {
                parent: pid,
                name: name_b,
                file,
                meta,
                target: target_b,
            }
        })?;
        Ok(entry)
    }

    /// Removes a name; returns the kernel's inode number of what it named when that file lives
    /// on under other names, whose cached attributes (link count, ctime) are now stale.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<Option<u64>> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<Option<u64>> {
        self.remove(parent, name, true)
    }

    /// A FUSE driver (exFAT's) keeps a file unlinked while open under a hidden name
    /// (`.fuse_hidden…`) until its last close, which reaches it a moment after ours: a folder
    /// left with nothing else is removed once they are gone (within a second), as it would be
    /// on a drive that has no such names.
    fn rmdir_after_hidden(&self, p_fd: &OwnedFd, c: &CStr) -> FsResult<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        loop {
            let dir = rustix::fs::openat(
                p_fd,
                c,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let mut only_hidden = true;
            for entry in rustix::fs::Dir::new(dir)? {
                let name = entry?.file_name().to_bytes().to_vec();
                if name != b"." && name != b".." && !is_fuse_hidden(&name) {
                    only_hidden = false;
                    break;
                }
            }
            if !only_hidden || std::time::Instant::now() >= deadline {
                return Err(FsError::Os(Errno::NOTEMPTY));
            }
            std::thread::sleep(Duration::from_millis(10));
            match rustix::fs::unlinkat(p_fd, c, AtFlags::REMOVEDIR) {
                Err(Errno::NOTEMPTY) => continue,
                other => return Ok(other?),
            }
        }
    }

    fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> FsResult<Option<u64>> {
        let p = self.inode(parent)?;
        let p_fd = self.path_fd(&p)?;
        self.check_name(&p, name)?;
        let c = self.drive_name(name)?;
        let st = rustix::fs::statat(&*p_fd, &c, AtFlags::SYMLINK_NOFOLLOW)?;
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        self.pin(&st, &p_fd, &c);
        match rustix::fs::unlinkat(&*p_fd, &c, flags) {
            Err(Errno::NOTEMPTY) if dir && self.keeper.is_some() => {
                self.rmdir_after_hidden(&p_fd, &c)?
            }
            other => other?,
        }
        let (parent, name, file) = (p.ino, name.as_bytes().to_vec(), st.st_ino as u64);
        if !dir && st.st_nlink <= 1 {
            if let Ok(gone) = self.inode(self.nodeid_of(file)) {
                gone.unlinked.store(true, Ordering::Relaxed);
            }
        }
        self.record(if dir {
            Change::Rmdir { parent, name, file }
        } else {
            Change::Unlink { parent, name, file }
        });
        let lives_on = !dir && st.st_nlink > 1;
        if lives_on {
            // One link fewer, and a new ctime, under its other names.
            self.record_attrs_of(file);
        }
        Ok(lives_on.then(|| self.nodeid_of(file)))
    }

    /// Renames; returns the kernel's inode numbers whose cached attributes are now stale.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> FsResult<Vec<u64>> {
        let p = self.inode(parent)?;
        let p_fd = self.path_fd(&p)?;
        let np = self.inode(new_parent)?;
        let np_fd = self.path_fd(&np)?;
        self.check_name(&p, name)?;
        self.check_new_name(&np, new_name)?;
        let c = self.drive_name(name)?;
        let nc = self.drive_name(new_name)?;
        let st = rustix::fs::statat(&*p_fd, &c, AtFlags::SYMLINK_NOFOLLOW)?;
        let target = rustix::fs::statat(&*np_fd, &nc, AtFlags::SYMLINK_NOFOLLOW).ok();
        let rflags = RenameFlags::from_bits(flags).ok_or(FsError::Os(Errno::INVAL))?;
        if let Some(t) = &target {
            self.pin(t, &np_fd, &nc);
        }
        rustix::fs::renameat_with(&*p_fd, &c, &*np_fd, &nc, rflags)?;
        let file = st.st_ino as u64;
        let mut stale = vec![self.nodeid_of(file)];
        if let Some(t) = &target {
            if t.st_ino as u64 != file {
                stale.push(self.nodeid_of(t.st_ino as u64));
            } else if !rflags.contains(RenameFlags::EXCHANGE) {
                // Two names of one file: POSIX says nothing happens.
                return Ok(stale);
            }
        }
        self.record(Change::Rename {
            parent: p.ino,
            name: name.as_bytes().to_vec(),
            new_parent: np.ino,
            new_name: new_name.as_bytes().to_vec(),
            file,
            exchange: rflags.contains(RenameFlags::EXCHANGE),
        });
        if let Ok(inode) = self.inode(self.nodeid_of(file)) {
            inode.write.lock().new_name_in(&np);
            *inode.name.lock() = (np.nodeid, nc.to_bytes().to_vec());
        }
        // A rename gives the moved file a new ctime (the mount keeps it where the drive gives
        // none); a replaced file that lives on under other names loses a link. The journal
        // must hold the rename before it returns unless the scan, finding the file anew at
        // its new name, would lose nothing: a folder (what is under it) or an exchange always
        // wait.
        let mut wait = false;
        if let Some(keeper) = &self.keeper {
            if let Ok(moved) = rustix::fs::statat(&*np_fd, &nc, AtFlags::SYMLINK_NOFOLLOW) {
                wait = rflags.contains(RenameFlags::EXCHANGE)
                    || FileType::from_raw_mode(moved.st_mode as _) == FileType::Directory
                    || !keeper.plain(&moved);
                keeper.change(&moved, |_| {});
            }
        }
        self.record_attrs_of(file);
        if let Some(t) = &target {
            let other = t.st_ino as u64;
            if rflags.contains(RenameFlags::EXCHANGE) {
                if let Ok(o) = self.inode(self.nodeid_of(other)) {
                    *o.name.lock() = (p.nodeid, c.to_bytes().to_vec());
                }
                self.record_attrs_of(other);
            } else if t.st_nlink > 1
                && FileType::from_raw_mode(t.st_mode as _) != FileType::Directory
            {
                self.record_attrs_of(other);
            } else if let Ok(gone) = self.inode(self.nodeid_of(other)) {
                gone.unlinked.store(true, Ordering::Relaxed);
            }
        }
        if wait {
            self.keep_committed()?;
        }
        Ok(stale)
    }

    pub fn link(&self, nodeid: u64, new_parent: u64, new_name: &OsStr) -> FsResult<Entry> {
        let inode = self.inode(nodeid)?;
        let inode_fd = self.path_fd(&inode)?;
        let np = self.inode(new_parent)?;
        let np_fd = self.path_fd(&np)?;
        self.check_new_name(&np, new_name)?;
        let nc = self.drive_name(new_name)?;
        // linkat with AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the /proc link works for anyone.
        let mut path = b"/proc/self/fd/".to_vec();
        path.extend_from_slice(proc_name(&inode_fd).as_bytes());
        rustix::fs::linkat(
            rustix::fs::CWD,
            path.as_slice(),
            &*np_fd,
            &nc,
            AtFlags::SYMLINK_FOLLOW,
        )?;
        let st = rustix::fs::fstat(&*inode_fd)?;
        self.record(Change::Link {
            parent: np.ino,
            name: new_name.as_bytes().to_vec(),
            file: inode.ino,
        });
        self.record_attrs(&inode, &st, &st);
        inode.write.lock().new_name_in(&np);
        inode.lookups.fetch_add(1, Ordering::Relaxed);
        Ok(Entry {
            ino: nodeid,
            stat: st,
        })
    }

    /// Records the attributes the drive holds for `inode` after an operation that changed
    /// them, as asked or as a side effect (ctime on link and rename, the mode on an ACL
    /// write, set-ID bits on chown). `before` is its stat before the operation. Contents that
    /// changed since their last record (written through kernel passthrough or the daemon) go
    /// as a content record, which carries the same attributes: an attributes record would let
    /// the catalog take the new size and times while no drain reads the bytes behind them
    /// (kill -9 before the release that would have recorded them).
    fn record_attrs(&self, inode: &Inode, before: &Stat, after: &Stat) {
        let meta = self.meta(after);
        let mut w = inode.write.lock();
        let content = meta.kind == Kind::File
            && (w.dirty
                || (w.recorded.is_some()
                    && !w.as_recorded(Snap::of(before), self.time_granularity_ns)));
        if content {
            w.dirty = false;
            w.set_recorded(Snap::of(after));
            let open_for_writing = w.writers > 0;
            drop(w);
            self.record(Change::Content {
                file: inode.ino,
                meta,
            });
            if open_for_writing {
                // A drain may read it now, while it stays open for writing (as for fsync).
                if let Err(e) = self.mark_unsynced(inode.ino, false) {
                    warn!("cannot mark inode {} unsynced: {e}", inode.ino);
                }
            }
        } else {
            if w.recorded.is_some() {
                // The contents recorded last are still the contents; only times it set moved.
                w.set_recorded(Snap::of(after));
            }
            drop(w);
            self.record(Change::SetAttr {
                file: inode.ino,
                meta,
            });
        }
    }

    /// [`Self::record_attrs`] for a file known by its backing inode number, when the kernel
    /// still knows it (it does for whatever an operation just named). One it has forgotten
    /// keeps its old record; the next scan sees its ctime moved and records it.
    fn record_attrs_of(&self, file: u64) {
        let Ok(inode) = self.inode(self.nodeid_of(file)) else {
            return;
        };
        match self
            .path_fd(&inode)
            .and_then(|fd| Ok(rustix::fs::fstat(&*fd)?))
        {
            Ok(st) => self.record_attrs(&inode, &st, &st),
            Err(e) => debug!("cannot stat inode {file} after a change: {e}"),
        }
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.write().insert(fh, h);
        fh
    }

    /// A file whose data may be overwritten in place from now on is marked in the journal,
    /// durably, before any such write can reach the drive (see
    /// [`JournalHandle::mark_unsynced`]): after a power cut the next scan reads it again.
    /// `wait`: return only once the mark is durable; otherwise the journal makes it durable
    /// within a second (see `must_wait_for_mark` for when that is soon enough).
    fn mark_unsynced(&self, ino: u64, wait: bool) -> FsResult<()> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        {
            // The mark is queued under the lock, so a second opener that finds it here and
            // waits with `sync` waits for it too: no write through either open can reach the
            // drive before the mark is durable.
            let mut marks = self.unsynced.lock();
            match marks.get(&ino) {
                Some(true) => return Ok(()),
                Some(false) if !wait => return Ok(()),
                Some(false) => {}
                None => {
                    j.mark_unsynced_soon(ino)?;
                    marks.insert(ino, false);
                }
            }
        }
        if wait {
            j.sync().inspect_err(|_| {
                self.unsynced.lock().remove(&ino);
            })?;
            self.unsynced.lock().insert(ino, true);
        }
        Ok(())
    }

    /// Whether an open for writing in place must wait until the file's unsynced mark is
    /// durable. The mark is made durable within a second of being queued; the bytes written
    /// through this open reach the drive before that only if something writes them back at
    /// once: the open asks for it (`O_SYNC`, `O_DSYNC`, `O_DIRECT`), or the kernel
    /// is writing dirty pages back already because too many are waiting. `fsync` waits for
    /// the mark before it syncs the data. Otherwise the kernel keeps new pages for
    /// `dirty_expire_centisecs` (30 s by default) first, so the open need not wait.
    fn must_wait_for_mark(&self, oflags: OFlags) -> bool {
        if oflags.contains(OFlags::TRUNC) {
            return false;
        }
        oflags.intersects(OFlags::SYNC | OFlags::DSYNC | OFlags::DIRECT)
            || self.writeback.pressing()
    }

    fn begin_write(&self, inode: &Inode, st: &Stat) {
        let mut w = inode.write.lock();
        if w.recorded.is_none() {
            w.set_recorded(Snap::of(st));
        }
    }

    fn open_flags(flags: i32) -> (OFlags, bool) {
        let f = OFlags::from_bits_retain(flags as _)
            & !(OFlags::CREATE
                | OFlags::EXCL
                | OFlags::NOCTTY
                | OFlags::NOFOLLOW
                | OFlags::CLOEXEC);
        let acc = flags & libc::O_ACCMODE;
        (f, acc == libc::O_WRONLY || acc == libc::O_RDWR)
    }

    /// Opens a file; returns the handle.
    pub fn open(&self, nodeid: u64, flags: i32) -> FsResult<u64> {
        let inode = self.inode(nodeid)?;
        let inode_fd = self.path_fd(&inode)?;
        let (oflags, writable) = Self::open_flags(flags);
        if writable {
            let st = rustix::fs::fstat(&*inode_fd)?;
            self.begin_write(&inode, &st);
            // Data it has may be written over in place (or, truncated, read by a drain in
            // the middle of its rewriting); an empty file's first writes need new blocks,
            // which the filesystem's log orders with its metadata.
            if st.st_size > 0 {
                self.mark_unsynced(inode.ino, self.must_wait_for_mark(oflags))?;
            }
        }
        let fd = self.reopen(&inode, oflags)?;
        if writable {
            let mut w = inode.write.lock();
            w.writers += 1;
            if oflags.contains(OFlags::TRUNC) {
                w.dirty = true;
            }
        }
        Ok(self.add_handle(Handle::File(Arc::new(OpenFile {
            inode,
            file: File::from(fd),
            writable,
            seen: Mutex::new(None),
        }))))
    }

    pub fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> FsResult<(Entry, u64)> {
        let p = self.inode(parent)?;
        let p_fd = self.path_fd(&p)?;
        self.check_new_name(&p, name)?;
        let c = self.drive_name(name)?;
        let (oflags, writable) = Self::open_flags(flags);
        let perm = mode & !umask & 0o7777;
        let fd = rustix::fs::openat(
            &*p_fd,
            &c,
            oflags | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(perm as _),
        )?;
        let st = self.own_new(fd.as_fd(), &p, caller, perm, None)?;
        self.record(Change::Create {
            parent: p.ino,
            name: name.as_bytes().to_vec(),
            file: st.st_ino as u64,
            meta: self.meta(&st),
        });
        self.record_inherited_xattrs(st.st_ino as u64, fd.as_fd(), true);
        let entry = self.remember(&st, None, &p, &c)?;
        let inode = self.inode(entry.ino)?;
        {
            let mut w = inode.write.lock();
            w.new_name_in(&p);
            if w.recorded.is_none() {
                w.set_recorded(Snap::of(&st));
            }
            if writable {
                w.writers += 1;
            }
        }
        let fh = self.add_handle(Handle::File(Arc::new(OpenFile {
            inode,
            file: File::from(fd),
            writable,
            seen: Mutex::new(None),
        })));
        self.keep_committed_unless_plain(&st)?;
        Ok((entry, fh))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let h = self.open_file(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match h.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        let h = self.open_file(fh)?;
        let n = h.file.write_at(data, offset)?;
        h.inode.write.lock().dirty = true;
        Ok(n)
    }

    /// Records the contents of a file if they changed since the last record; returns whether
    /// it did.
    fn note_content(&self, inode: &Inode, st: &Stat) -> bool {
        let snap = Snap::of(st);
        let mut w = inode.write.lock();
        if w.dirty || !w.as_recorded(snap, self.time_granularity_ns) {
            w.dirty = false;
            w.set_recorded(snap);
            self.record(Change::Content {
                file: inode.ino,
                meta: self.meta(st),
            });
            true
        } else {
            false
        }
    }

    /// The record comes at release, not flush: with passthrough (and mmap) the data may still
    /// change after `close()` until the last reference goes.
    pub fn release(&self, fh: u64) -> FsResult<()> {
        let h = match self.handles.write().remove(&fh) {
            Some(Handle::File(h)) => h,
            Some(other) => {
                debug!("release of a directory handle {fh}: {other:?}");
                return Err(FsError::BadHandle(fh));
            }
            None => return Err(FsError::BadHandle(fh)),
        };
        if h.writable {
            {
                let mut w = h.inode.write.lock();
                w.writers = w.writers.saturating_sub(1);
            }
            match rustix::fs::fstat(&h.file) {
                Ok(st) => {
                    self.note_content(&h.inode, &st);
                }
                Err(e) => warn!(
                    "release: cannot stat inode {}: {e}; the next scan records it",
                    h.inode.ino
                ),
            }
        }
        // A FUSE driver (exFAT's) keeps a file unlinked while open under a hidden name and
        // removes it at its last close, which moves the folder's times with no record of
        // ours: the folder is recorded again, and a drain reads its times afresh.
        let hidden_in = (self.keeper.is_some() && h.inode.unlinked.load(Ordering::Relaxed))
            .then(|| h.inode.name.lock().0)
            .and_then(|parent| self.inode(parent).ok());
        drop(h);
        if let Some(parent) = hidden_in {
            self.record_attrs_of(parent.ino);
        }
        Ok(())
    }

    /// fsync: the data on the drive, the new name in its folder, the record committed.
    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let h = self.open_file(fh)?;
        if h.writable {
            // The data reaches the drive now: its mark must be there first. From here on it
            // is also on the drive with a record a drain may read it by, while it stays open
            // for writing over that data.
            self.mark_unsynced(h.inode.ino, true)?;
        }
        if datasync {
            rustix::fs::fdatasync(&h.file)?;
        } else {
            rustix::fs::fsync(&h.file)?;
        }
        let parents = std::mem::take(&mut h.inode.write.lock().unsynced_parents);
        for parent in &parents {
            match self.reopen(parent, OFlags::RDONLY | OFlags::DIRECTORY) {
                Ok(fd) => rustix::fs::fsync(&fd)?,
                // A folder the file was given a name in and that is gone since (moved out,
                // then removed): no entry of it to make durable there. (A drive read through
                // FUSE, exFAT's, refuses to open a removed folder; ext4 opens it.)
                Err(FsError::Os(Errno::NOENT) | FsError::Stale(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if h.writable {
            let st = rustix::fs::fstat(&h.file)?;
            self.note_content(&h.inode, &st);
        }
        if let Some(j) = &self.journal {
            j.sync()?;
        }
        Ok(())
    }

    pub fn opendir(&self, nodeid: u64) -> FsResult<u64> {
        let inode = self.inode(nodeid)?;
        Ok(self.add_handle(Handle::Dir(Arc::new(OpenDir {
            inode,
            entries: Mutex::new(Vec::new()),
        }))))
    }

    /// Entries from `offset` (an index; the entry at index i has offset i + 1). The listing is
    /// read afresh at offset 0, as after `rewinddir`.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, &DirEntry) -> bool,
    ) -> FsResult<()> {
        let d = self.open_dir(fh)?;
        let mut entries = d.entries.lock();
        if offset == 0 {
            *entries = self.list(&d.inode)?;
        }
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if add(i as u64 + 1, e) {
                break;
            }
        }
        Ok(())
    }

    fn list(&self, inode: &Inode) -> FsResult<Vec<DirEntry>> {
        let fd = self.reopen(inode, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let mut dir = rustix::fs::Dir::new(fd)?;
        let mut out = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if inode.nodeid == ROOT && name == journal::POCKET_DIR.as_bytes() {
                continue;
            }
            if self.keeper.is_some() && is_fuse_hidden(name) {
                // A file unlinked while open, kept by the drive's FUSE driver until closed.
                continue;
            }
            let ino = if inode.nodeid == ROOT && name == b".." {
                ROOT
            } else {
                self.nodeid_of(entry.ino())
            };
            let kind = match self.keeper.as_ref().and_then(|k| k.stand_in(entry.ino())) {
                Some(Kind::Symlink) => FileType::Symlink,
                Some(Kind::Fifo) => FileType::Fifo,
                Some(Kind::Socket) => FileType::Socket,
                Some(Kind::CharDev) => FileType::CharacterDevice,
                Some(Kind::BlockDev) => FileType::BlockDevice,
                _ => entry.file_type(),
            };
            out.push(DirEntry {
                ino,
                kind,
                name: self.pocket_name(name).into_owned(),
            });
        }
        Ok(out)
    }

    pub fn releasedir(&self, fh: u64) -> FsResult<()> {
        match self.handles.write().remove(&fh) {
            Some(Handle::Dir(_)) => Ok(()),
            _ => Err(FsError::BadHandle(fh)),
        }
    }

    pub fn fsyncdir(&self, fh: u64) -> FsResult<()> {
        let d = self.open_dir(fh)?;
        let fd = self.reopen(&d.inode, OFlags::RDONLY | OFlags::DIRECTORY)?;
        rustix::fs::fsync(&fd)?;
        if let Some(j) = &self.journal {
            j.sync()?;
        }
        Ok(())
    }

    pub fn statfs(&self) -> FsResult<rustix::fs::StatVfs> {
        let root = self.inode(ROOT)?;
        let root_fd = self.path_fd(&root)?;
        Ok(rustix::fs::fstatvfs(&*root_fd)?)
    }

    /// xattrs go through the /proc link. Linux offers no race-free way to reach a symlink's
    /// own, and allows only trusted.* and security.* there: a symlink has none through the
    /// mount (reads say ENODATA, writes EPERM, as for user.* on a symlink).
    ///
    /// The descriptor comes back with the path: the path names it, so it must stay open
    /// while the path is used.
    fn xattr_path(&self, inode: &Inode, write: bool) -> FsResult<(CString, Arc<OwnedFd>)> {
        if inode.is_symlink {
            return Err(FsError::Os(if write { Errno::PERM } else { Errno::NODATA }));
        }
        let fd = self.path_fd(inode)?;
        let mut p = b"/proc/self/fd/".to_vec();
        p.extend_from_slice(proc_name(&fd).as_bytes());
        Ok((CString::new(p).expect("no NUL"), fd))
    }

    /// The keeper, where it keeps the xattrs of `inode` (the drive has none): Err for a link,
    /// as [`Self::xattr_path`].
    fn xattr_keeper(&self, inode: &Inode, write: bool) -> FsResult<Option<&crate::keep::Keeper>> {
        match &self.keeper {
            Some(k) if k.is_symlink(inode.ino) => {
                Err(FsError::Os(if write { Errno::PERM } else { Errno::NODATA }))
            }
            Some(k) => Ok(Some(k)),
            None => Ok(None),
        }
    }

    /// An xattr change the keeper made: recorded, with the change time it moves.
    fn kept_xattr_changed(
        &self,
        keeper: &crate::keep::Keeper,
        inode: &Inode,
        change: Change,
    ) -> FsResult<()> {
        self.record(change);
        let st = rustix::fs::fstat(&*self.path_fd(inode)?)?;
        keeper.change(&st, |_| {});
        self.record_attrs(inode, &st, &st);
        self.keep_committed()
    }

    pub fn setxattr(&self, nodeid: u64, name: &OsStr, value: &[u8], flags: i32) -> FsResult<()> {
        let inode = self.inode(nodeid)?;
        if let Some(keeper) = self.xattr_keeper(&inode, true)? {
            let how = match flags {
                libc::XATTR_CREATE => crate::keep::XattrSet::Create,
                libc::XATTR_REPLACE => crate::keep::XattrSet::Replace,
                0 => crate::keep::XattrSet::Any,
                _ => return Err(FsError::Os(Errno::INVAL)),
            };
            keeper.set_xattr(inode.ino, name.as_bytes(), Some(value), how)?;
            return self.kept_xattr_changed(
                keeper,
                &inode,
                Change::SetXattr {
                    file: inode.ino,
                    name: name.as_bytes().to_vec(),
                    value: value.to_vec(),
                },
            );
        }
        let (path, _fd) = self.xattr_path(&inode, true)?;
        let c = cname(name)?;
        rustix::fs::setxattr(
            path.as_c_str(),
            c.as_c_str(),
            value,
            rustix::fs::XattrFlags::from_bits_retain(flags as _),
        )?;
        // The kernel interprets the system.* names: an ACL equal to the mode is not stored at
        // all, and writing one changes the mode. Those are read back as the drive keeps them.
        let read_back = name.as_bytes().starts_with(b"system.")
            && self
                .record_drive_xattr(&inode, &c, true)
                .inspect_err(|e| warn!("cannot read back {name:?} of inode {}: {e}", inode.ino))
                .is_ok();
        if !read_back {
            self.record(Change::SetXattr {
                file: inode.ino,
                name: name.as_bytes().to_vec(),
                value: value.to_vec(),
            });
        }
        self.record_attrs_after_xattr(&inode)
    }

    /// A kept xattr's value (ENODATA where it is not set).
    fn kept_xattr(keeper: &crate::keep::Keeper, inode: &Inode, name: &OsStr) -> FsResult<Vec<u8>> {
        crate::keep::Keeper::kept_name(name.as_bytes())?;
        keeper
            .xattrs(inode.ino)
            .remove(name.as_bytes())
            .ok_or(FsError::Os(Errno::NODATA))
    }

    /// A kept file's xattr names, as listxattr gives them.
    fn kept_xattr_names(keeper: &crate::keep::Keeper, inode: &Inode) -> Vec<u8> {
        let mut out = Vec::new();
        for name in keeper.xattrs(inode.ino).into_keys() {
            out.extend_from_slice(&name);
            out.push(0);
        }
        out
    }

    /// `buf` into a caller's buffer of `size` bytes: ERANGE when too small.
    fn fits(buf: Vec<u8>, size: u32) -> FsResult<Vec<u8>> {
        if buf.len() > size as usize {
            return Err(FsError::Os(Errno::RANGE));
        }
        Ok(buf)
    }

    /// The value, into a buffer of `size` bytes (ERANGE when too small).
    pub fn getxattr(&self, nodeid: u64, name: &OsStr, size: u32) -> FsResult<Vec<u8>> {
        let inode = self.inode(nodeid)?;
        if let Some(keeper) = self.xattr_keeper(&inode, false)? {
            return Self::fits(Self::kept_xattr(keeper, &inode, name)?, size);
        }
        let (path, _fd) = self.xattr_path(&inode, false)?;
        let c = cname(name)?;
        let mut buf = vec![0u8; size as usize];
        let n = rustix::fs::getxattr(path.as_c_str(), c.as_c_str(), &mut buf[..])?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn getxattr_len(&self, nodeid: u64, name: &OsStr) -> FsResult<usize> {
        let inode = self.inode(nodeid)?;
        if let Some(keeper) = self.xattr_keeper(&inode, false)? {
            return Ok(Self::kept_xattr(keeper, &inode, name)?.len());
        }
        let (path, _fd) = self.xattr_path(&inode, false)?;
        let c = cname(name)?;
        Ok(rustix::fs::getxattr_query(path.as_c_str(), c.as_c_str())?)
    }

    pub fn listxattr(&self, nodeid: u64, size: u32) -> FsResult<Vec<u8>> {
        let inode = self.inode(nodeid)?;
        if inode.is_symlink {
            return Ok(Vec::new());
        }
        match self.xattr_keeper(&inode, false) {
            Ok(Some(keeper)) => return Self::fits(Self::kept_xattr_names(keeper, &inode), size),
            Err(_) => return Ok(Vec::new()), // a link held as a file: none
            Ok(None) => {}
        }
        let (path, _fd) = self.xattr_path(&inode, false)?;
        let mut buf = vec![0u8; size as usize];
        let n = rustix::fs::listxattr(path.as_c_str(), &mut buf[..])?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn listxattr_len(&self, nodeid: u64) -> FsResult<usize> {
        let inode = self.inode(nodeid)?;
        if inode.is_symlink {
            return Ok(0);
        }
        match self.xattr_keeper(&inode, false) {
            Ok(Some(keeper)) => return Ok(Self::kept_xattr_names(keeper, &inode).len()),
            Err(_) => return Ok(0),
            Ok(None) => {}
        }
        let (path, _fd) = self.xattr_path(&inode, false)?;
        Ok(rustix::fs::listxattr_query(path.as_c_str())?)
    }

    pub fn removexattr(&self, nodeid: u64, name: &OsStr) -> FsResult<()> {
        let inode = self.inode(nodeid)?;
        if let Some(keeper) = self.xattr_keeper(&inode, true)? {
            keeper.set_xattr(inode.ino, name.as_bytes(), None, crate::keep::XattrSet::Any)?;
            return self.kept_xattr_changed(
                keeper,
                &inode,
                Change::RemoveXattr {
                    file: inode.ino,
                    name: name.as_bytes().to_vec(),
                },
            );
        }
        let (path, _fd) = self.xattr_path(&inode, true)?;
        let c = cname(name)?;
        rustix::fs::removexattr(path.as_c_str(), c.as_c_str())?;
        self.record(Change::RemoveXattr {
            file: inode.ino,
            name: name.as_bytes().to_vec(),
        });
        self.record_attrs_after_xattr(&inode)
    }

    /// The xattr change is done: a failure to read what it changed is logged, not returned.
    fn record_attrs_after_xattr(&self, inode: &Inode) -> FsResult<()> {
        match self
            .path_fd(inode)
            .and_then(|fd| Ok(rustix::fs::fstat(&*fd)?))
        {
            Ok(st) => self.record_attrs(inode, &st, &st),
            Err(e) => warn!(
                "cannot read the attributes of inode {} after an xattr change: {e}; the next \
                 scan records them",
                inode.ino
            ),
        }
        Ok(())
    }

    /// Records one xattr as the drive holds it now: its value, or its removal (`gone_too`:
    /// also when it is absent, for a name just written that the kernel chose not to keep).
    fn record_drive_xattr(&self, inode: &Inode, name: &CStr, gone_too: bool) -> FsResult<()> {
        let (path, _fd) = self.xattr_path(inode, false)?;
        match read_xattr(&path, name)? {
            Some(value) => self.record(Change::SetXattr {
                file: inode.ino,
                name: name.to_bytes().to_vec(),
                value,
            }),
            None if gone_too => self.record(Change::RemoveXattr {
                file: inode.ino,
                name: name.to_bytes().to_vec(),
            }),
            None => {}
        }
        Ok(())
    }

    /// A new entry gets xattrs from its folder without asking: the default ACL becomes its
    /// access ACL (and a folder's default ACL), and security modules label it.
    fn record_inherited_xattrs(&self, file: u64, fd: BorrowedFd<'_>, opened: bool) {
        if self.journal.is_none() {
            return;
        }
        if let Err(e) = self.try_record_inherited_xattrs(file, fd, opened) {
            warn!("cannot read the xattrs of new inode {file}: {e}; the next scan records them");
        }
    }

    /// `fd` is open for I/O when `opened`, an `O_PATH` descriptor otherwise (which the xattr
    /// calls reach only through its /proc link).
    fn try_record_inherited_xattrs(
        &self,
        file: u64,
        fd: BorrowedFd<'_>,
        opened: bool,
    ) -> FsResult<()> {
        let proc_path = || {
            let mut path = b"/proc/self/fd/".to_vec();
            path.extend_from_slice(proc_name_b(fd).as_bytes());
            CString::new(path).expect("no NUL")
        };
        let mut names = vec![0u8; 256];
        let n = loop {
            // Nearly always empty: the one call a create pays, on the descriptor itself when
            // there is one.
            let listed = if opened {
                rustix::fs::flistxattr(fd, &mut names[..])
            } else {
                rustix::fs::listxattr(proc_path().as_c_str(), &mut names[..])
            };
            match listed {
                Ok(n) => break n,
                Err(Errno::RANGE) => names.resize(names.len() * 4, 0),
                Err(Errno::NOTSUP) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            return Ok(());
        }
        let path = proc_path();
        for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let cname = CString::new(name).expect("split at NUL");
            if let Some(value) = read_xattr(&path, &cname)? {
                self.record(Change::SetXattr {
                    file,
                    name: name.to_vec(),
                    value,
                });
            }
        }
        Ok(())
    }

    pub fn access(&self, nodeid: u64, mask: i32) -> FsResult<()> {
        let inode = self.inode(nodeid)?;
        let inode_fd = self.path_fd(&inode)?;
        if inode.is_symlink {
            return Ok(());
        }
        rustix::fs::accessat(
            &self.proc_fd,
            proc_name(&inode_fd),
            rustix::fs::Access::from_bits_retain(mask as _),
            AtFlags::empty(),
        )?;
        Ok(())
    }

    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        let h = self.open_file(fh)?;
        rustix::fs::fallocate(
            &h.file,
            rustix::fs::FallocateFlags::from_bits_retain(mode as _),
            offset,
            len,
        )?;
        h.inode.write.lock().dirty = true;
        Ok(())
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        let h = self.open_file(fh)?;
        let pos = match whence {
            libc::SEEK_SET => rustix::fs::SeekFrom::Start(offset as u64),
            libc::SEEK_CUR => rustix::fs::SeekFrom::Current(offset),
            libc::SEEK_END => rustix::fs::SeekFrom::End(offset),
            libc::SEEK_DATA => rustix::fs::SeekFrom::Data(offset as u64),
            libc::SEEK_HOLE => rustix::fs::SeekFrom::Hole(offset as u64),
            _ => return Err(FsError::Os(Errno::INVAL)),
        };
        Ok(rustix::fs::seek(&h.file, pos)? as i64)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> FsResult<usize> {
        let src = self.open_file(fh_in)?;
        let dst = self.open_file(fh_out)?;
        let (mut oi, mut oo) = (off_in, off_out);
        let n = rustix::fs::copy_file_range(
            &src.file,
            Some(&mut oi),
            &dst.file,
            Some(&mut oo),
            len as usize,
        )?;
        dst.inode.write.lock().dirty = true;
        Ok(n)
    }

    /// Lends the backing file of an open handle (for kernel passthrough).
    pub fn with_backing_file<R>(&self, fh: u64, f: impl FnOnce(&File) -> R) -> FsResult<R> {
        let h = self.open_file(fh)?;
        Ok(f(&h.file))
    }

    /// The backing inode number of an open handle's file: one passthrough backing id each.
    pub fn handle_ino(&self, fh: u64) -> FsResult<u64> {
        Ok(self.open_file(fh)?.inode.nodeid)
    }

    /// Records files held open for writing once they stopped changing for the quiet period.
    /// Called about once a second by the mount's watcher thread.
    pub fn record_quiet_files(&self) {
        let open: Vec<Arc<OpenFile>> = self
            .handles
            .read()
            .values()
            .filter_map(|h| match h {
                Handle::File(f) if f.writable => Some(f.clone()),
                _ => None,
            })
            .collect();
        let now = Instant::now();
        for f in open {
            let Ok(st) = rustix::fs::fstat(&f.file) else {
                continue;
            };
            let snap = Snap::of(&st);
            let mut seen = f.seen.lock();
            match *seen {
                Some((s, since)) if s == snap => {
                    if now.duration_since(since) >= self.options.quiet_period
                        && self.note_content(&f.inode, &st)
                    {
                        // A drain may read it now, while it stays open for writing.
                        if let Err(e) = self.mark_unsynced(f.inode.ino, true) {
                            warn!("cannot mark inode {} unsynced: {e}", f.inode.ino);
                        }
                    }
                }
                _ => *seen = Some((snap, now)),
            }
        }
    }

    /// How many files are open, for `eject` and the unmount path.
    pub fn open_files(&self) -> usize {
        self.handles.read().len()
    }
}

/// One xattr's value, None when the file has no such name.
fn read_xattr(path: &CStr, name: &CStr) -> FsResult<Option<Vec<u8>>> {
    let mut value = vec![0u8; 256];
    loop {
        match rustix::fs::getxattr(path, name, &mut value[..]) {
            Ok(n) => {
                value.truncate(n);
                return Ok(Some(value));
            }
            Err(Errno::RANGE) => value.resize(value.len() * 4, 0),
            Err(Errno::NODATA) | Err(Errno::NOTSUP) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

fn proc_name_b(fd: BorrowedFd<'_>) -> CString {
    use std::os::fd::AsRawFd;
    CString::new(fd.as_raw_fd().to_string()).expect("digits have no NUL")
}

fn uid_of(u: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(u)
}

fn gid_of(g: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Were /proc/meminfo or the writeback sysctls no longer read, every open for writing in
    /// place would wait for its mark again, silently.
    #[test]
    fn dirty_memory_is_read() {
        assert!(dirty_pressure().is_some());
        let w = Writeback::default();
        let first = w.pressing();
        // Within 50 ms the answer is the remembered one.
        assert_eq!(w.pressing(), first);
    }
}
