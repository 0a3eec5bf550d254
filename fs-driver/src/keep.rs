//! What the drive cannot keep, kept by the mount. On exFAT or FAT a file has no mode and no
//! owner, and its times are rounded (to the second through exFAT's FUSE driver, to two seconds
//! on FAT). The pocket still has them: every record the mount makes carries the mode, owner and
//! exact modification time the mount shows, so the journal's catalog holds them (and the
//! backups restore them); at mount the keeper loads them from the catalog and shows them over
//! what the drive says. A time is shown exact while the drive's rounded time is the exact one
//! rounded: once the file is written (here or elsewhere) the drive's time is the truth again.
//! A change only the mount makes (chmod, chown, a rename the drive gives no new time) moves the
//! change time the mount shows while it runs; access times given to `utimens` are kept exact
//! as long. A symbolic link, fifo, socket or device, which such a drive cannot hold, is a
//! small file there (a link's target, or nothing), kept as what it is here. Extended
//! attributes are kept too (user, trusted and security names; the system names, ACLs, are
//! refused as on a drive without them: the kernel would not enforce them).

// Field types of `struct stat` differ between targets; the casts are for the others.
#![allow(clippy::unnecessary_cast)]

use std::collections::{BTreeMap, HashMap};

use journal::{DriveIds, FileId, Keeping, Kind, Meta};
use parking_lot::RwLock;
use rustix::fs::Stat;
use rustix::io::Errno;

/// What the mount keeps of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Kept {
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    /// Moved by what only the mount changes, for this session; shown when later than the
    /// drive's (records carry the drive's, which the scan compares).
    pub ctime_ns: i64,
    /// An access time given to `utimens`, for this session (records carry none).
    pub atime_ns: Option<i64>,
    /// What the drive's regular file stands for: a link, fifo, socket or device.
    pub kind: Option<Kind>,
    pub rdev: u64,
}

/// The metadata the drive cannot keep, for every file of the pocket.
#[derive(Debug)]
pub(crate) struct Keeper {
    ids: DriveIds,
    keeping: Keeping,
    /// From the catalog, by the journal's ids.
    by_file: RwLock<HashMap<FileId, Kept>>,
    /// Set during this session, by the drive's numbers (a new file's id is the journal
    /// writer's to give, a moment later).
    by_number: RwLock<HashMap<u64, Kept>>,
    /// The owner of a file the catalog does not know: the mount's.
    owner: (u32, u32),
    /// Extended attributes, from the catalog by id, and this session's by number.
    xattrs_by_file: RwLock<HashMap<FileId, Xattrs>>,
    xattrs_by_number: RwLock<HashMap<u64, Xattrs>>,
}

/// One file's extended attributes, by name.
pub(crate) type Xattrs = BTreeMap<Vec<u8>, Vec<u8>>;

/// What `setxattr` asks beside the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum XattrSet {
    Any,
    /// XATTR_CREATE: fails with EEXIST where the name is set.
    Create,
    /// XATTR_REPLACE: fails with ENODATA where it is not.
    Replace,
}

/// The `S_IFMT` bits of a kind.
fn type_bits(kind: Kind) -> u32 {
    (match kind {
        Kind::File => libc::S_IFREG,
        Kind::Dir => libc::S_IFDIR,
        Kind::Symlink => libc::S_IFLNK,
        Kind::Fifo => libc::S_IFIFO,
        Kind::Socket => libc::S_IFSOCK,
        Kind::CharDev => libc::S_IFCHR,
        Kind::BlockDev => libc::S_IFBLK,
    }) as u32
}

fn ns(s: i64, nsec: i64) -> i64 {
    s * 1_000_000_000 + nsec
}

/// Sets a `struct stat` time (seconds and nanoseconds) to `t` nanoseconds.
macro_rules! set_time {
    ($s:expr, $nsec:expr, $t:expr) => {{
        let t: i64 = $t;
        $s = t.div_euclid(1_000_000_000) as _;
        $nsec = t.rem_euclid(1_000_000_000) as _;
    }};
}

impl Keeper {
    /// The catalog's metadata of every file (`files`: id and metadata as recorded).
    pub fn new(
        ids: DriveIds,
        granularity_ns: i64,
        files: impl IntoIterator<Item = (FileId, Meta)>,
        xattrs: impl IntoIterator<Item = (FileId, Vec<u8>, Vec<u8>)>,
        owner: (u32, u32),
    ) -> Keeper {
        let mut xattrs_by_file: HashMap<FileId, Xattrs> = HashMap::new();
        for (file, name, value) in xattrs {
            xattrs_by_file.entry(file).or_default().insert(name, value);
        }
        let by_file = files
            .into_iter()
            .map(|(id, m)| {
                (
                    id,
                    Kept {
                        perm: m.perm,
                        uid: m.uid,
                        gid: m.gid,
                        mtime_ns: m.mtime_ns,
                        ctime_ns: 0,
                        atime_ns: None,
                        kind: m.kind.held_as_file().then_some(m.kind),
                        rdev: m.rdev,
                    },
                )
            })
            .collect();
        Keeper {
            ids,
            keeping: Keeping {
                granularity_ns: granularity_ns.max(1),
            },
            by_file: RwLock::new(by_file),
            by_number: RwLock::new(HashMap::new()),
            owner,
            xattrs_by_file: RwLock::new(xattrs_by_file),
            xattrs_by_number: RwLock::new(HashMap::new()),
        }
    }

    /// The extended attributes of the file the drive numbers `number`.
    pub fn xattrs(&self, number: u64) -> Xattrs {
        if let Some(x) = self.xattrs_by_number.read().get(&number) {
            return x.clone();
        }
        self.ids
            .file_of(number)
            .and_then(|id| self.xattrs_by_file.read().get(&id).cloned())
            .unwrap_or_default()
    }

    /// Ok for the names kept (user, trusted, security); EOPNOTSUPP for the others, as a drive
    /// without xattrs answers (so that `ls -l` stops asking for ACLs after the first file).
    pub fn kept_name(name: &[u8]) -> Result<(), Errno> {
        let kept = [&b"user."[..], b"trusted.", b"security."];
        if kept.iter().any(|p| name.starts_with(p)) {
            Ok(())
        } else {
            Err(Errno::OPNOTSUPP)
        }
    }

    /// Sets (`value` Some) or removes an extended attribute, with the errors Linux gives.
    pub fn set_xattr(
        &self,
        number: u64,
        name: &[u8],
        value: Option<&[u8]>,
        how: XattrSet,
    ) -> Result<(), Errno> {
        Self::kept_name(name)?;
        let mut x = self.xattrs(number);
        let had = x.contains_key(name);
        match (value, how) {
            (Some(_), XattrSet::Create) if had => return Err(Errno::EXIST),
            (Some(_), XattrSet::Replace) | (None, _) if !had => return Err(Errno::NODATA),
            (Some(v), _) => {
                x.insert(name.to_vec(), v.to_vec());
            }
            (None, _) => {
                x.remove(name);
            }
        }
        self.xattrs_by_number.write().insert(number, x);
        Ok(())
    }

    fn get(&self, number: u64) -> Option<Kept> {
        if let Some(k) = self.by_number.read().get(&number) {
            return Some(*k);
        }
        let id = self.ids.file_of(number)?;
        self.by_file.read().get(&id).copied()
    }

    /// What a file the keeper knows nothing of gets: a folder 0755, a file 0644, the mount's
    /// owner, the drive's times.
    fn default_for(&self, st: &Stat) -> Kept {
        let dir = Kind::from_mode(st.st_mode as u32) == Some(Kind::Dir);
        Kept {
            perm: if dir { 0o755 } else { 0o644 },
            uid: self.owner.0,
            gid: self.owner.1,
            mtime_ns: crate::core::mtime_ns(st),
            ctime_ns: 0,
            atime_ns: None,
            kind: None,
            rdev: 0,
        }
    }

    /// Whether what is kept of the file (`st` as the drive has it) is only what the scan gives
    /// a file it finds new (a folder's 0755 or a file's 0644, the mount's owner, no xattrs, not
    /// a stand-in): then a record of it lost with the daemon loses nothing only the journal
    /// keeps, and the call need not wait for the journal.
    pub fn plain(&self, st: &Stat) -> bool {
        let number = st.st_ino as u64;
        let d = self.default_for(st);
        let k = self.get(number).unwrap_or(d);
        (k.perm, k.uid, k.gid, k.kind) == (d.perm, d.uid, d.gid, None) && !self.has_xattrs(number)
    }

    /// Whether the file the drive numbers `number` has extended attributes (no copy made:
    /// asked at every create).
    fn has_xattrs(&self, number: u64) -> bool {
        if let Some(x) = self.xattrs_by_number.read().get(&number) {
            return !x.is_empty();
        }
        self.ids
            .file_of(number)
            .and_then(|id| self.xattrs_by_file.read().get(&id).map(|x| !x.is_empty()))
            .unwrap_or(false)
    }

    /// What the file the drive numbers `number` is where the drive holds a regular file
    /// standing in for it (a link, fifo, socket or device).
    pub fn stand_in(&self, number: u64) -> Option<Kind> {
        self.get(number).and_then(|k| k.kind)
    }

    /// Whether the file the drive numbers `number` is a symbolic link held as a file.
    pub fn is_symlink(&self, number: u64) -> bool {
        self.stand_in(number) == Some(Kind::Symlink)
    }

    /// The stat as the pocket has it.
    pub fn show(&self, st: &mut Stat) {
        let k = self
            .get(st.st_ino as u64)
            .unwrap_or_else(|| self.default_for(st));
        let mut kind = st.st_mode as u32 & libc::S_IFMT as u32;
        if let Some(stands_for) = k.kind.filter(|_| kind == libc::S_IFREG as u32) {
            kind = type_bits(stands_for);
            st.st_rdev = k.rdev as _;
        }
        st.st_mode = (kind | k.perm) as libc::mode_t;
        st.st_uid = k.uid;
        st.st_gid = k.gid;
        let mtime = self.keeping.mtime(k.mtime_ns, crate::core::mtime_ns(st));
        set_time!(st.st_mtime, st.st_mtime_nsec, mtime);
        let ctime = ns(st.st_ctime as i64, st.st_ctime_nsec as i64).max(k.ctime_ns);
        set_time!(st.st_ctime, st.st_ctime_nsec, ctime);
        if let Some(a) = k.atime_ns {
            // Access times: some drives round them coarser (exFAT's hold 2 seconds).
            let drive = ns(st.st_atime as i64, st.st_atime_nsec as i64);
            let two_s = Keeping {
                granularity_ns: 2_000_000_000,
            };
            if self.keeping.mtime(a, drive) == a || two_s.mtime(a, drive) == a {
                set_time!(st.st_atime, st.st_atime_nsec, a);
            }
        }
    }

    /// Changes what is kept of the file the drive numbers `st.st_ino` (as it is shown now);
    /// its change time is now.
    pub fn change(&self, st: &Stat, f: impl FnOnce(&mut Kept)) {
        let mut shown = *st;
        self.show(&mut shown);
        let drive_kind = st.st_mode as u32 & libc::S_IFMT as u32;
        let shown_kind = shown.st_mode as u32 & libc::S_IFMT as u32;
        let stand_in = (shown_kind != drive_kind)
            .then(|| Kind::from_mode(shown_kind))
            .flatten();
        let mut k = Kept {
            perm: shown.st_mode as u32 & 0o7777,
            uid: shown.st_uid,
            gid: shown.st_gid,
            mtime_ns: crate::core::mtime_ns(&shown),
            ctime_ns: now_ns(),
            atime_ns: self.get(st.st_ino as u64).and_then(|k| k.atime_ns),
            kind: stand_in,
            rdev: if stand_in.is_some() {
                shown.st_rdev as u64
            } else {
                0
            },
        };
        f(&mut k);
        self.by_number.write().insert(st.st_ino as u64, k);
    }

    /// A file just made in the mount (`st` as the drive has it): nothing of what was kept
    /// under its number before counts.
    pub fn born(&self, st: &Stat, stand_in: Option<(Kind, u64)>, perm: u32, owner: (u32, u32)) {
        let k = Kept {
            perm,
            uid: owner.0,
            gid: owner.1,
            mtime_ns: crate::core::mtime_ns(st),
            ctime_ns: 0,
            atime_ns: None,
            kind: stand_in.map(|(k, _)| k),
            rdev: stand_in.map_or(0, |(_, r)| r),
        };
        self.by_number.write().insert(st.st_ino as u64, k);
        self.xattrs_by_number
            .write()
            .insert(st.st_ino as u64, Xattrs::new());
    }
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(ino: u64, mode: u32, mtime_s: i64) -> Stat {
        // SAFETY: Stat is plain old data; all zeroes is a valid value.
        let mut st: Stat = unsafe { std::mem::zeroed() };
        st.st_ino = ino as _;
        st.st_mode = mode as _;
        st.st_mtime = mtime_s as _;
        st
    }

    #[test]
    fn kept_metadata_is_shown_and_the_exact_time_only_while_the_drive_agrees() {
        let ids = DriveIds::default(); // numbers are ids
        let meta = Meta {
            kind: Kind::File,
            perm: 0o600,
            uid: 1000,
            gid: 100,
            size: 0,
            mtime_ns: 1_700_000_000_123_456_789,
            ctime_ns: 0,
            rdev: 0,
        };
        let k = Keeper::new(ids, 1_000_000_000, [(7, meta)], [], (0, 0));
        let mut st = stat(7, libc::S_IFREG | 0o777, 1_700_000_000);
        k.show(&mut st);
        assert_eq!(st.st_mode, libc::S_IFREG | 0o600);
        assert_eq!((st.st_uid, st.st_gid), (1000, 100));
        assert_eq!(
            (st.st_mtime, st.st_mtime_nsec),
            (1_700_000_000, 123_456_789)
        );
        // Written since: the drive's time is the truth.
        let mut st = stat(7, libc::S_IFREG | 0o777, 1_700_000_005);
        k.show(&mut st);
        assert_eq!((st.st_mtime, st.st_mtime_nsec), (1_700_000_005, 0));
        // A file nobody knows: the defaults, a folder 0755.
        let mut st = stat(8, libc::S_IFDIR | 0o777, 5);
        k.show(&mut st);
        assert_eq!(st.st_mode, libc::S_IFDIR | 0o755);
        // A chmod made in the mount.
        k.change(&stat(7, libc::S_IFREG | 0o777, 1_700_000_000), |k| {
            k.perm = 0o640
        });
        let mut st = stat(7, libc::S_IFREG | 0o777, 1_700_000_000);
        k.show(&mut st);
        assert_eq!(st.st_mode, libc::S_IFREG | 0o640);
        assert_eq!(st.st_mtime_nsec, 123_456_789, "the rest is kept as it was");
        assert!(
            st.st_ctime > 1_700_000_000,
            "a chmod the drive never saw moves the change time shown"
        );
    }

    #[test]
    fn a_fifo_or_device_is_an_empty_file_on_the_drive_and_shown_as_what_it_is() {
        let k = Keeper::new(DriveIds::default(), 1_000_000_000, [], [], (0, 0));
        let drive = stat(9, libc::S_IFREG | 0o777, 5);
        k.born(&drive, Some((Kind::CharDev, 0x0103)), 0o666, (0, 0));
        let mut st = drive;
        k.show(&mut st);
        assert_eq!(st.st_mode, libc::S_IFCHR | 0o666);
        assert_eq!(st.st_rdev, 0x0103);
        assert_eq!(k.stand_in(9), Some(Kind::CharDev));
        // A chmod keeps what it is.
        k.change(&drive, |k| k.perm = 0o600);
        let mut st = drive;
        k.show(&mut st);
        assert_eq!((st.st_mode, st.st_rdev), (libc::S_IFCHR | 0o600, 0x0103));
        // A new file under the number (the drive reused it): nothing of the old one counts.
        k.born(&drive, None, 0o644, (0, 0));
        let mut st = drive;
        k.show(&mut st);
        assert_eq!(st.st_mode, libc::S_IFREG | 0o644);
        assert_eq!(k.stand_in(9), None);
    }

    #[test]
    fn an_access_time_given_is_shown_exact_while_the_drive_agrees() {
        let k = Keeper::new(DriveIds::default(), 1_000_000_000, [], [], (0, 0));
        let mut drive = stat(3, libc::S_IFREG | 0o777, 5);
        drive.st_atime = 1_900_000_000;
        k.change(&drive, |k| k.atime_ns = Some(1_900_000_000_250_000_000));
        let mut st = drive;
        k.show(&mut st);
        assert_eq!(
            (st.st_atime, st.st_atime_nsec),
            (1_900_000_000, 250_000_000)
        );
        // Read since (the drive moved it): the drive's.
        drive.st_atime = 1_900_000_100;
        let mut st = drive;
        k.show(&mut st);
        assert_eq!((st.st_atime, st.st_atime_nsec), (1_900_000_100, 0));
    }

    #[test]
    fn extended_attributes_are_kept_with_the_errors_linux_gives() {
        let k = Keeper::new(
            DriveIds::default(),
            1,
            [],
            [(4, b"user.a".to_vec(), b"1".to_vec())],
            (0, 0),
        );
        assert_eq!(k.xattrs(4).get(&b"user.a"[..]).unwrap(), b"1");
        let set = |name: &[u8], v: Option<&[u8]>, how| k.set_xattr(4, name, v, how);
        assert_eq!(
            set(b"user.a", Some(b"2"), XattrSet::Create),
            Err(Errno::EXIST)
        );
        assert_eq!(
            set(b"user.b", Some(b"2"), XattrSet::Replace),
            Err(Errno::NODATA)
        );
        assert_eq!(set(b"user.b", None, XattrSet::Any), Err(Errno::NODATA));
        assert_eq!(
            set(b"system.posix_acl_access", Some(b"x"), XattrSet::Any),
            Err(Errno::OPNOTSUPP)
        );
        assert_eq!(
            Keeper::kept_name(b"system.posix_acl_access"),
            Err(Errno::OPNOTSUPP),
            "asked for, as refused"
        );
        set(b"user.a", Some(b"3"), XattrSet::Replace).unwrap();
        set(b"user.b", Some(b""), XattrSet::Create).unwrap();
        set(b"user.a", None, XattrSet::Any).unwrap();
        let want: Xattrs = [(b"user.b".to_vec(), Vec::new())].into_iter().collect();
        assert_eq!(k.xattrs(4), want);
        assert!(k.xattrs(5).is_empty(), "another file has none");
    }
}
