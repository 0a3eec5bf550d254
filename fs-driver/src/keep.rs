//! What the drive cannot keep, kept by the mount. On exFAT or FAT a file has no mode and no
//! owner, and its times are rounded (to the second through exFAT's FUSE driver, to two seconds
//! on FAT). The pocket still has them: every record the mount makes carries the mode, owner and
//! exact modification time the mount shows, so the journal's catalog holds them (and the
//! backups restore them); at mount the keeper loads them from the catalog and shows them over
//! what the drive says. A modification time is shown exact while the drive's rounded time is
//! the exact one rounded: once the file is written (here or elsewhere) the drive's time is the
//! truth again. A symbolic link, which such a drive cannot hold, is a small file of its target
//! there, kept as a link here.

// Field types of `struct stat` differ between targets; the casts are for the others.
#![allow(clippy::unnecessary_cast)]

use std::collections::HashMap;

use journal::{DriveIds, FileId, Keeping, Kind, Meta};
use parking_lot::RwLock;
use rustix::fs::Stat;

/// What the mount keeps of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Kept {
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    /// A symbolic link the drive holds as a small file of its target (the drive has no
    /// symlinks).
    pub symlink: bool,
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
}

impl Keeper {
    /// The catalog's metadata of every file (`files`: id and metadata as recorded).
    pub fn new(
        ids: DriveIds,
        granularity_ns: i64,
        files: impl IntoIterator<Item = (FileId, Meta)>,
        owner: (u32, u32),
    ) -> Keeper {
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
                        symlink: m.kind == Kind::Symlink,
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
        }
    }

    fn get(&self, number: u64) -> Option<Kept> {
        if let Some(k) = self.by_number.read().get(&number) {
            return Some(*k);
        }
        let id = self.ids.file_of(number)?;
        self.by_file.read().get(&id).copied()
    }

    /// What a file the keeper knows nothing of gets: a folder 0755, a file 0644, the mount's
    /// owner, the drive's time.
    fn default_for(&self, st: &Stat) -> Kept {
        let dir = Kind::from_mode(st.st_mode as u32) == Some(Kind::Dir);
        Kept {
            perm: if dir { 0o755 } else { 0o644 },
            uid: self.owner.0,
            gid: self.owner.1,
            mtime_ns: crate::core::mtime_ns(st),
            symlink: false,
        }
    }

    /// Whether the file the drive numbers `number` is a symbolic link held as a file.
    pub fn is_symlink(&self, number: u64) -> bool {
        self.get(number).is_some_and(|k| k.symlink)
    }

    /// The stat as the pocket has it.
    pub fn show(&self, st: &mut Stat) {
        let k = self
            .get(st.st_ino as u64)
            .unwrap_or_else(|| self.default_for(st));
        let kind = if k.symlink && st.st_mode & libc::S_IFMT == libc::S_IFREG {
            libc::S_IFLNK
        } else {
            st.st_mode & libc::S_IFMT
        };
        st.st_mode = kind as libc::mode_t | k.perm as libc::mode_t;
        st.st_uid = k.uid;
        st.st_gid = k.gid;
        let mtime = self.keeping.mtime(k.mtime_ns, crate::core::mtime_ns(st));
        st.st_mtime = mtime.div_euclid(1_000_000_000) as _;
        st.st_mtime_nsec = mtime.rem_euclid(1_000_000_000) as _;
    }

    /// Changes what is kept of the file the drive numbers `st.st_ino` (as it is shown now).
    pub fn change(&self, st: &Stat, f: impl FnOnce(&mut Kept)) {
        let mut shown = *st;
        self.show(&mut shown);
        let mut k = Kept {
            perm: shown.st_mode as u32 & 0o7777,
            uid: shown.st_uid,
            gid: shown.st_gid,
            mtime_ns: crate::core::mtime_ns(&shown),
            symlink: shown.st_mode & libc::S_IFMT == libc::S_IFLNK
                && st.st_mode & libc::S_IFMT == libc::S_IFREG,
        };
        f(&mut k);
        self.by_number.write().insert(st.st_ino as u64, k);
    }
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
        let k = Keeper::new(ids, 1_000_000_000, [(7, meta)], (0, 0));
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
    }
}
