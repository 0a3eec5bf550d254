//! What a journal record says. Records name files by a stable [`FileId`] (the backing inode
//! number, stable across rename and link) and entries by (parent id, name bytes), so a replica
//! can replay the history without knowing any path.

/// A file's identity for as long as it exists: the inode number on the drive.
pub type FileId = u64;

/// The kind of a file, as stored in the journal. Values are part of the on-disk format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    Socket = 5,
    CharDev = 6,
    BlockDev = 7,
}

impl Kind {
    /// From the `S_IFMT` bits of a mode.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc_s_ifmt::S_IFMT {
            libc_s_ifmt::S_IFREG => Kind::File,
            libc_s_ifmt::S_IFDIR => Kind::Dir,
            libc_s_ifmt::S_IFLNK => Kind::Symlink,
            libc_s_ifmt::S_IFIFO => Kind::Fifo,
            libc_s_ifmt::S_IFSOCK => Kind::Socket,
            libc_s_ifmt::S_IFCHR => Kind::CharDev,
            libc_s_ifmt::S_IFBLK => Kind::BlockDev,
            _ => return None,
        })
    }

    /// Kinds a drive without them (exFAT, FAT) holds as a small regular file standing in for
    /// the real thing (a link's target; nothing for a fifo, socket or device), the journal
    /// keeping what it is.
    pub fn held_as_file(self) -> bool {
        !matches!(self, Kind::File | Kind::Dir)
    }

    pub(crate) fn from_i64(v: i64) -> Option<Kind> {
        Some(match v {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::Socket,
            6 => Kind::CharDev,
            7 => Kind::BlockDev,
            _ => return None,
        })
    }
}

/// The `S_IFMT` constants, spelled out so this crate needs no libc.
mod libc_s_ifmt {
    pub const S_IFMT: u32 = 0o170000;
    pub const S_IFSOCK: u32 = 0o140000;
    pub const S_IFLNK: u32 = 0o120000;
    pub const S_IFREG: u32 = 0o100000;
    pub const S_IFBLK: u32 = 0o060000;
    pub const S_IFDIR: u32 = 0o040000;
    pub const S_IFCHR: u32 = 0o020000;
    pub const S_IFIFO: u32 = 0o010000;
}

/// The metadata a record carries: what a restore needs, plus ctime for the scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Permission and special bits (`mode & 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub rdev: u64,
}

impl Meta {
    /// From a `std` metadata (the scan's `lstat`). None for a file type we cannot name.
    #[cfg(unix)]
    pub fn from_std(m: &std::fs::Metadata) -> Option<Meta> {
        use std::os::unix::fs::MetadataExt;
        Some(Meta {
            kind: Kind::from_mode(m.mode())?,
            perm: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            rdev: m.rdev(),
        })
    }

    /// From a `std` metadata on Windows, which has no modes or owners: a folder is 0o755, a
    /// file 0o644, less the write bits when read-only; the last change time stands for ctime.
    #[cfg(windows)]
    pub fn from_std(m: &std::fs::Metadata) -> Option<Meta> {
        use std::os::windows::fs::MetadataExt;
        let t = m.file_type();
        let kind = if t.is_symlink() {
            Kind::Symlink
        } else if t.is_dir() {
            Kind::Dir
        } else {
            Kind::File
        };
        let mut perm = if kind == Kind::Dir { 0o755 } else { 0o644 };
        if m.permissions().readonly() {
            perm &= !0o222;
        }
        Some(Meta {
            kind,
            perm,
            uid: 0,
            gid: 0,
            size: m.file_size(),
            mtime_ns: filetime_to_unix_ns(m.last_write_time()),
            ctime_ns: filetime_to_unix_ns(m.last_write_time()),
            rdev: 0,
        })
    }
}

/// Windows FILETIME (100 ns ticks since 1601-01-01 UTC) to nanoseconds since the Unix epoch.
pub fn filetime_to_unix_ns(ft: u64) -> i64 {
    const EPOCH_DIFF_TICKS: i64 = 116_444_736_000_000_000;
    (ft as i64 - EPOCH_DIFF_TICKS).saturating_mul(100)
}

/// Nanoseconds since the Unix epoch to a Windows FILETIME (0 before 1601).
pub fn unix_ns_to_filetime(ns: i64) -> u64 {
    const EPOCH_DIFF_TICKS: i64 = 116_444_736_000_000_000;
    (ns.div_euclid(100) + EPOCH_DIFF_TICKS).max(0) as u64
}

/// One change to the pocket. The operation codes are part of the on-disk format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new regular file, fifo, socket or device node.
    Create {
        parent: FileId,
        name: Vec<u8>,
        file: FileId,
        meta: Meta,
    },
    Mkdir {
        parent: FileId,
        name: Vec<u8>,
        file: FileId,
        meta: Meta,
    },
    Symlink {
        parent: FileId,
        name: Vec<u8>,
        file: FileId,
        meta: Meta,
        target: Vec<u8>,
    },
    /// A new name for an existing file.
    Link {
        parent: FileId,
        name: Vec<u8>,
        file: FileId,
    },
    /// `exchange` swaps the two names (RENAME_EXCHANGE); otherwise the target name, if it
    /// existed, is replaced.
    Rename {
        parent: FileId,
        name: Vec<u8>,
        new_parent: FileId,
        new_name: Vec<u8>,
        file: FileId,
        exchange: bool,
    },
    Unlink {
        parent: FileId,
        name: Vec<u8>,
        file: FileId,
    },
    Rmdir {
        parent: FileId,
        name: Vec<u8>,
        file: FileId,
    },
    /// Mode, owner or times changed (not the contents).
    SetAttr {
        file: FileId,
        meta: Meta,
    },
    SetXattr {
        file: FileId,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    RemoveXattr {
        file: FileId,
        name: Vec<u8>,
    },
    /// The file's contents changed; the destinations read them from the drive.
    Content {
        file: FileId,
        meta: Meta,
    },
}

/// Operation codes as stored in `records.op`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Create = 1,
    Mkdir = 2,
    Symlink = 3,
    Link = 4,
    Rename = 5,
    Unlink = 6,
    Rmdir = 7,
    SetAttr = 8,
    SetXattr = 9,
    RemoveXattr = 10,
    Content = 11,
}

impl Op {
    pub(crate) fn from_i64(v: i64) -> Option<Op> {
        Some(match v {
            1 => Op::Create,
            2 => Op::Mkdir,
            3 => Op::Symlink,
            4 => Op::Link,
            5 => Op::Rename,
            6 => Op::Unlink,
            7 => Op::Rmdir,
            8 => Op::SetAttr,
            9 => Op::SetXattr,
            10 => Op::RemoveXattr,
            11 => Op::Content,
            _ => return None,
        })
    }

    /// The short name used in logs and `journal log`.
    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Mkdir => "mkdir",
            Op::Symlink => "symlink",
            Op::Link => "link",
            Op::Rename => "rename",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::SetAttr => "setattr",
            Op::SetXattr => "setxattr",
            Op::RemoveXattr => "removexattr",
            Op::Content => "content",
        }
    }
}

impl Change {
    pub fn op(&self) -> Op {
        match self {
            Change::Create { .. } => Op::Create,
            Change::Mkdir { .. } => Op::Mkdir,
            Change::Symlink { .. } => Op::Symlink,
            Change::Link { .. } => Op::Link,
            Change::Rename { .. } => Op::Rename,
            Change::Unlink { .. } => Op::Unlink,
            Change::Rmdir { .. } => Op::Rmdir,
            Change::SetAttr { .. } => Op::SetAttr,
            Change::SetXattr { .. } => Op::SetXattr,
            Change::RemoveXattr { .. } => Op::RemoveXattr,
            Change::Content { .. } => Op::Content,
        }
    }

    /// The file the change is about.
    pub fn file(&self) -> FileId {
        match self {
            Change::Create { file, .. }
            | Change::Mkdir { file, .. }
            | Change::Symlink { file, .. }
            | Change::Link { file, .. }
            | Change::Rename { file, .. }
            | Change::Unlink { file, .. }
            | Change::Rmdir { file, .. }
            | Change::SetAttr { file, .. }
            | Change::SetXattr { file, .. }
            | Change::RemoveXattr { file, .. }
            | Change::Content { file, .. } => *file,
        }
    }

    /// The same change with each file id passed through `f`, which is told whether the id is
    /// of a file the change makes (create, mkdir, symlink). Parents go first.
    pub(crate) fn map_files(&self, mut f: impl FnMut(FileId, bool) -> FileId) -> Change {
        let mut c = self.clone();
        match &mut c {
            Change::Create { parent, file, .. }
            | Change::Mkdir { parent, file, .. }
            | Change::Symlink { parent, file, .. } => {
                *parent = f(*parent, false);
                *file = f(*file, true);
            }
            Change::Link { parent, file, .. }
            | Change::Unlink { parent, file, .. }
            | Change::Rmdir { parent, file, .. } => {
                *parent = f(*parent, false);
                *file = f(*file, false);
            }
            Change::Rename {
                parent,
                new_parent,
                file,
                ..
            } => {
                *parent = f(*parent, false);
                *new_parent = f(*new_parent, false);
                *file = f(*file, false);
            }
            Change::SetAttr { file, .. }
            | Change::SetXattr { file, .. }
            | Change::RemoveXattr { file, .. }
            | Change::Content { file, .. } => *file = f(*file, false),
        }
        c
    }

    /// The metadata the change carries, for those that carry it.
    pub fn meta(&self) -> Option<&Meta> {
        match self {
            Change::Create { meta, .. }
            | Change::Mkdir { meta, .. }
            | Change::Symlink { meta, .. }
            | Change::SetAttr { meta, .. }
            | Change::Content { meta, .. } => Some(meta),
            _ => None,
        }
    }

    /// Bytes a destination will have to take in for this change: file contents for a content
    /// record, the target of a symlink, an xattr's value. Metadata-only changes count 0.
    pub fn payload_bytes(&self) -> u64 {
        match self {
            Change::Content { meta, .. } => meta.size,
            Change::Symlink { target, .. } => target.len() as u64,
            Change::SetXattr { value, .. } => value.len() as u64,
            _ => 0,
        }
    }
}

/// A committed record, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub time_ns: i64,
    pub change: Change,
}
