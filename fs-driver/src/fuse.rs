//! The fuser front-end: converts arguments, calls [`PocketFs`], replies. No logic of its own
//! beyond kernel passthrough bookkeeping (one backing id per inode while any handle is open)
//! and telling the kernel which cached attributes went stale.

// Field types of `struct stat` differ between targets; the casts are for the others.
#![allow(clippy::unnecessary_cast)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle,
    FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;
use rustix::fs::Stat;
use tracing::{error, info, warn};

use crate::core::{Caller, PocketFs, SetAttr, SetTime};
use crate::error::{FsError, FsResult};

/// How the mount talks to the kernel.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// How long the kernel may trust attributes and names without asking. Everything that
    /// changes the pocket goes through the mount while it is mounted, so this can be long;
    /// changes that bypass it (the backing folder edited directly) show after this delay.
    pub ttl: Duration,
    /// Use the kernel's FUSE passthrough for reads and writes when it is offered.
    pub passthrough: bool,
    /// Worker threads serving requests.
    pub threads: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            ttl: Duration::from_secs(3600),
            passthrough: true,
            threads: 4,
        }
    }
}

/// The fuser adapter over a [`PocketFs`].
#[derive(Debug)]
pub struct FuseFs {
    core: Arc<PocketFs>,
    opts: MountOptions,
    passthrough: Arc<std::sync::atomic::AtomicBool>,
    backing: Mutex<Backing>,
    notifier: Arc<OnceLock<Notifier>>,
}

#[derive(Debug, Default)]
struct Backing {
    by_inode: HashMap<u64, Weak<BackingId>>,
    /// Each open handle's backing id, and the inode it belongs to.
    by_handle: HashMap<u64, (u64, Arc<BackingId>)>,
}

impl FuseFs {
    pub fn new(core: Arc<PocketFs>, opts: MountOptions) -> Self {
        FuseFs {
            core,
            opts,
            passthrough: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            backing: Mutex::new(Backing::default()),
            notifier: Arc::new(OnceLock::new()),
        }
    }

    /// Set once the session exists, so stale attributes can be invalidated.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// Whether reads and writes go through the kernel's passthrough (known after init).
    pub fn passthrough_active(&self) -> bool {
        self.passthrough.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn attr(&self, st: &Stat) -> FileAttr {
        attr_of(self.core.visible_ino(st), &self.core.shown(st))
    }

    fn invalidate(&self, inos: &[u64]) {
        if let Some(n) = self.notifier.get() {
            for &ino in inos {
                // -1: attributes only; the cached pages are still right.
                if let Err(e) = n.inval_inode(INodeNo(ino), -1, 0) {
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        warn!("cannot invalidate cached attributes of inode {ino}: {e}");
                    }
                }
            }
        }
    }

    /// Registers the open handle's file with the kernel for passthrough, reusing the inode's
    /// backing id while any handle of it is open.
    fn backing_for(
        &self,
        fh: u64,
        open_backing: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        if !self.passthrough_active() {
            return None;
        }
        let ino = self.core.handle_ino(fh).ok()?;
        let mut b = self.backing.lock();
        let id = match b.by_inode.get(&ino).and_then(Weak::upgrade) {
            Some(id) => id,
            None => match self.core.with_backing_file(fh, open_backing) {
                Ok(Ok(id)) => {
                    let id = Arc::new(id);
                    b.by_inode.insert(ino, Arc::downgrade(&id));
                    id
                }
                Ok(Err(e)) => {
                    warn!("kernel passthrough refused ({e}); serving reads and writes through the daemon");
                    self.passthrough
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    return None;
                }
                Err(_) => return None,
            },
        };
        b.by_handle.insert(fh, (ino, id.clone()));
        Some(id)
    }

    /// The flags the backing file is opened with. Through the daemon, `O_DIRECT` is left to
    /// the kernel's side of the mount: the daemon's buffers are not aligned to the drive's
    /// blocks, so a direct backing file would refuse every write (EINVAL).
    fn backing_flags(&self, flags: i32) -> i32 {
        if self.passthrough_active() {
            flags
        } else {
            flags & !libc::O_DIRECT
        }
    }

    fn drop_backing(&self, fh: u64) {
        let mut b = self.backing.lock();
        if let Some((ino, id)) = b.by_handle.remove(&fh) {
            drop(id);
            // The last handle of the inode gone: so is its backing id, and its entry.
            if b.by_inode.get(&ino).is_some_and(|w| w.strong_count() == 0) {
                b.by_inode.remove(&ino);
            }
        }
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::new((-sec) as u64, 0) + Duration::from_nanos(nsec as u64)
    }
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn dir_kind(t: rustix::fs::FileType) -> FileType {
    use rustix::fs::FileType as T;
    match t {
        T::Directory => FileType::Directory,
        T::Symlink => FileType::Symlink,
        T::Fifo => FileType::NamedPipe,
        T::Socket => FileType::Socket,
        T::CharacterDevice => FileType::CharDevice,
        T::BlockDevice => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// A stat as the kernel wants it, under the kernel's inode number.
pub fn attr_of(ino: u64, st: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime as i64, st.st_atime_nsec as i64),
        mtime: time(st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime: time(st.st_ctime as i64, st.st_ctime_nsec as i64),
        crtime: UNIX_EPOCH,
        kind: kind_of(st.st_mode as u32),
        perm: (st.st_mode as u32 & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// What a negative entry carries: inode 0, nothing else the kernel reads.
fn absent() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::At(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                let (mut s, mut n) = (-(d.as_secs() as i64), d.subsec_nanos());
                if n > 0 {
                    s -= 1;
                    n = 1_000_000_000 - n;
                }
                SetTime::At(s, n)
            }
        },
    })
}

/// Runs a core call; a panic becomes EIO instead of a request the kernel waits on forever.
fn guard<T>(op: &'static str, f: impl FnOnce() -> FsResult<T>) -> Result<T, Errno> {
    let _span = tracing::trace_span!("fs", op).entered();
    let i = OPS.iter().position(|o| *o == op).unwrap_or(OPS.len() - 1);
    STATS.calls[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let res = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            if let FsError::Journal(_) | FsError::Stale(_) = e {
                warn!("{op}: {e}");
            }
            Err(Errno::from_i32(e.errno()))
        }
        Err(_) => {
            error!("{op}: internal error (panic); answered EIO");
            Err(Errno::EIO)
        }
    };
    if res.is_err() {
        STATS.errors[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    res
}

/// The operations counted, in the order the summary lists them; the last catches the rest.
const OPS: [&str; 32] = [
    "lookup",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "read",
    "write",
    "release",
    "fsync",
    "opendir",
    "readdir",
    "readdirplus",
    "releasedir",
    "fsyncdir",
    "statfs",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "access",
    "create",
    "fallocate",
    "lseek",
    "copy_file_range",
    "other",
];

/// Requests served and failed, per operation, for the summary at unmount.
struct Stats {
    calls: [std::sync::atomic::AtomicU64; OPS.len()],
    errors: [std::sync::atomic::AtomicU64; OPS.len()],
}

static STATS: Stats = Stats {
    calls: [const { std::sync::atomic::AtomicU64::new(0) }; OPS.len()],
    errors: [const { std::sync::atomic::AtomicU64::new(0) }; OPS.len()],
};

/// One line: what the mount served, busiest first (e.g. "lookup 1200 (3 failed), getattr 90").
pub fn served_summary() -> String {
    let mut v: Vec<(u64, u64, &str)> = OPS
        .iter()
        .enumerate()
        .map(|(i, op)| {
            (
                STATS.calls[i].load(std::sync::atomic::Ordering::Relaxed),
                STATS.errors[i].load(std::sync::atomic::Ordering::Relaxed),
                *op,
            )
        })
        .filter(|(calls, _, _)| *calls > 0)
        .collect();
    v.sort_by_key(|(calls, _, _)| std::cmp::Reverse(*calls));
    v.iter()
        .map(|(calls, errors, op)| {
            if *errors > 0 {
                format!("{op} {calls} ({errors} failed)")
            } else {
                format!("{op} {calls}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(
            InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_READDIRPLUS_AUTO
                | InitFlags::FUSE_PARALLEL_DIROPS,
        );
        let _ = config.set_max_write(1 << 20);
        let root = rustix::process::geteuid().is_root();
        if self.opts.passthrough {
            if !config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH) {
                info!(
                    "the kernel offers no FUSE passthrough; reads and writes go through the daemon"
                );
            } else if !root {
                info!(
                    "FUSE passthrough needs CAP_SYS_ADMIN; reads and writes go through the daemon"
                );
            } else if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(2).is_ok()
            {
                self.passthrough
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match guard("lookup", || self.core.lookup(parent.0, name)) {
            Ok(e) => reply.entry(&self.opts.ttl, &self.attr(&e.stat), Generation(0)),
            // A name that is not there is remembered by the kernel too (an entry with inode
            // 0): builds and `git status` ask for the same missing files again and again.
            // Only the mount creates names, and the kernel forgets the negative entry then.
            Err(Errno::ENOENT) => reply.entry(&self.opts.ttl, &absent(), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match guard("getattr", || self.core.getattr(ino.0)) {
            Ok(st) => reply.attr(&self.opts.ttl, &self.attr(&st)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let attr = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        match guard("setattr", || {
            self.core.setattr(ino.0, fh.map(|f| f.0), attr)
        }) {
            Ok(st) => reply.attr(&self.opts.ttl, &self.attr(&st)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match guard("readlink", || self.core.readlink(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match guard("mknod", || {
            self.core
                .mknod(caller(req), parent.0, name, mode, umask, rdev)
        }) {
            Ok(e) => reply.entry(&self.opts.ttl, &self.attr(&e.stat), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match guard("mkdir", || {
            self.core.mkdir(caller(req), parent.0, name, mode, umask)
        }) {
            Ok(e) => reply.entry(&self.opts.ttl, &self.attr(&e.stat), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match guard("unlink", || self.core.unlink(parent.0, name)) {
            Ok(stale) => {
                reply.ok();
                self.invalidate(stale.as_slice());
            }
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match guard("rmdir", || self.core.rmdir(parent.0, name)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match guard("symlink", || {
            self.core.symlink(caller(req), parent.0, link_name, target)
        }) {
            Ok(e) => reply.entry(&self.opts.ttl, &self.attr(&e.stat), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match guard("rename", || {
            self.core
                .rename(parent.0, name, newparent.0, newname, flags.bits())
        }) {
            Ok(stale) => {
                reply.ok();
                self.invalidate(&stale);
            }
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match guard("link", || self.core.link(ino.0, newparent.0, newname)) {
            Ok(e) => reply.entry(&self.opts.ttl, &self.attr(&e.stat), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let flags = self.backing_flags(flags.0);
        match guard("open", || self.core.open(ino.0, flags)) {
            Ok(fh) => match self.backing_for(fh, |f| reply.open_backing(f)) {
                Some(id) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id),
                None => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            },
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match guard("read", || self.core.read(fh.0, offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match guard("write", || self.core.write(fh.0, offset, data)) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do at close(): data goes straight to the backing file and the record
        // comes at release. ENOSYS tells the kernel to stop sending FLUSH, one round trip
        // less for every close.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let res = guard("release", || self.core.release(fh.0));
        self.drop_backing(fh.0);
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match guard("fsync", || self.core.fsync(fh.0, datasync)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match guard("opendir", || self.core.opendir(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let res = guard("readdir", || {
            self.core.readdir(fh.0, offset, |next, e| {
                reply.add(
                    INodeNo(e.ino),
                    next,
                    dir_kind(e.kind),
                    OsStr::from_bytes_compat(&e.name),
                )
            })
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let res = guard("readdirplus", || {
            self.core.readdir(fh.0, offset, |next, e| {
                let name = OsStr::from_bytes_compat(&e.name);
                if e.name == b"." || e.name == b".." {
                    // No lookup reference for these: the kernel does not forget them.
                    let st = match self.core.dot_attr(ino.0, e.name == b"..") {
                        Ok(st) => st,
                        Err(_) => return false,
                    };
                    let mut attr = self.attr(&st);
                    attr.ino = INodeNo(e.ino);
                    return reply.add(
                        INodeNo(0),
                        next,
                        name,
                        &Duration::ZERO,
                        &attr,
                        Generation(0),
                    );
                }
                match self.core.lookup(ino.0, name) {
                    Ok(entry) => {
                        let full = reply.add(
                            INodeNo(entry.ino),
                            next,
                            name,
                            &self.opts.ttl,
                            &self.attr(&entry.stat),
                            Generation(0),
                        );
                        if full {
                            // Not sent: the kernel will not count this reference.
                            self.core.forget(entry.ino, 1);
                        }
                        full
                    }
                    Err(_) => false,
                }
            })
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        match guard("releasedir", || self.core.releasedir(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match guard("fsyncdir", || self.core.fsyncdir(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match guard("statfs", || self.core.statfs()) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match guard("setxattr", || self.core.setxattr(ino.0, name, value, flags)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if size == 0 {
            match guard("getxattr", || self.core.getxattr_len(ino.0, name)) {
                Ok(n) => reply.size(n as u32),
                Err(e) => reply.error(e),
            }
        } else {
            match guard("getxattr", || self.core.getxattr(ino.0, name, size)) {
                Ok(v) => reply.data(&v),
                Err(e) => reply.error(e),
            }
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            match guard("listxattr", || self.core.listxattr_len(ino.0)) {
                Ok(n) => reply.size(n as u32),
                Err(e) => reply.error(e),
            }
        } else {
            match guard("listxattr", || self.core.listxattr(ino.0, size)) {
                Ok(v) => reply.data(&v),
                Err(e) => reply.error(e),
            }
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match guard("removexattr", || self.core.removexattr(ino.0, name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match guard("access", || self.core.access(ino.0, mask.bits())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let flags = self.backing_flags(flags);
        match guard("create", || {
            self.core
                .create(caller(req), parent.0, name, mode, umask, flags)
        }) {
            Ok((entry, fh)) => {
                let attr = self.attr(&entry.stat);
                match self.backing_for(fh, |f| reply.open_backing(f)) {
                    Some(id) => reply.created_passthrough(
                        &self.opts.ttl,
                        &attr,
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::empty(),
                        &id,
                    ),
                    None => reply.created(
                        &self.opts.ttl,
                        &attr,
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::FOPEN_KEEP_CACHE,
                    ),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match guard("fallocate", || {
            self.core.fallocate(fh.0, offset, length, mode)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match guard("lseek", || self.core.lseek(fh.0, offset, whence)) {
            Ok(pos) => reply.offset(pos),
            Err(e) => reply.error(e),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match guard("copy_file_range", || {
            self.core
                .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        }) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }
}

/// `OsStr` from bytes (Unix names are bytes).
trait FromBytes {
    fn from_bytes_compat(b: &[u8]) -> &OsStr;
}

impl FromBytes for OsStr {
    fn from_bytes_compat(b: &[u8]) -> &OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Shown as the mount's source; the pocket's path, so commands run inside the mount can
    /// find the pocket.
    pub fsname: String,
    /// Let other users in (`allow_other`); implies `default_permissions`, so that the kernel
    /// checks permissions and a root daemon never serves another user's files unchecked.
    pub allow_other: bool,
    /// The kernel checks permissions against the attributes we report.
    pub default_permissions: bool,
    pub opts: MountOptions,
}

/// A mounted pocket, ready for use: the kernel handshake is done.
#[derive(Debug)]
pub struct Mount {
    session: fuser::Session<FuseFs>,
    core: Arc<PocketFs>,
    passthrough: Arc<std::sync::atomic::AtomicBool>,
    quiet_every: Duration,
}

/// Mounts `core` at `mountpoint`. Returns once the kernel has finished the handshake, so the
/// folder is usable when this returns.
pub fn mount(core: Arc<PocketFs>, mountpoint: &Path, cfg: &MountConfig) -> std::io::Result<Mount> {
    let fs = FuseFs::new(core.clone(), cfg.opts.clone());
    let slot = fs.notifier_slot();
    let passthrough = fs.passthrough.clone();
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(cfg.fsname.clone()),
        // As a kernel option, so it works both for root's mount(2) and through fusermount3.
        fuser::MountOption::CUSTOM("subtype=backpocket".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::RW,
    ];
    if cfg.allow_other || cfg.default_permissions {
        config
            .mount_options
            .push(fuser::MountOption::DefaultPermissions);
    }
    if cfg.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(cfg.opts.threads.max(1));
    config.clone_fd = true;
    let session = fuser::Session::new(fs, mountpoint, &config)?;
    let _ = slot.set(session.notifier());
    Ok(Mount {
        session,
        core,
        passthrough,
        quiet_every: Duration::from_secs(1),
    })
}

impl Mount {
    /// Whether the kernel's passthrough serves reads and writes (else the daemon does).
    pub fn passthrough(&self) -> bool {
        self.passthrough.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Something that unmounts from another thread (a signal handler thread).
    pub fn unmounter(&mut self) -> fuser::SessionUnmounter {
        self.session.unmount_callable()
    }

    /// Serves requests until unmounted. Files held open for writing are recorded after their
    /// quiet period by a watcher thread meanwhile.
    pub fn run(self) -> std::io::Result<()> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let watcher = {
            let core = self.core.clone();
            let every = self.quiet_every;
            std::thread::Builder::new()
                .name("quiet-watcher".into())
                .spawn(move || {
                    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                        stopped.recv_timeout(every)
                    {
                        core.record_quiet_files();
                    }
                })?
        };
        let res = self.session.run();
        drop(stop);
        let _ = watcher.join();
        res
    }
}
