//! Which file of the journal a number from the drive names.
//!
//! On ext4, XFS or btrfs a file keeps its inode number for life, and the journal uses it as the
//! file's id. exFAT, FAT and many FUSE-backed drives number files afresh when the drive is
//! mounted, and the kernel's exFAT driver even when an idle file falls out of its cache: the
//! same number can name another file after a replug. On such drives the journal allocates file
//! ids itself (`meta.ids` = 1, the next one in `meta.next_id`) and keeps, for the running
//! session only, the map from the drive's numbers to its ids. The scan that starts every session
//! rebuilds the map by matching the drive's paths against the catalog; the filesystem keeps it
//! current (a new file gets a new id, a file it looks up is found by its name in the catalog).
//! Nothing in a record or at a destination changes: records carry the journal's ids, as before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use tracing::warn;

use crate::record::{Change, FileId, Meta};

/// Where the journal's view of files meets the drive's: the map from the drive's numbers to the
/// journal's file ids, and whether names are stored under look-alikes ([`crate::spelling`]).
/// Shared by the journal's writer (which keeps it) and the readers of the drive (the replicator
/// finds a file by its path there and checks that it is the one it means). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct DriveIds {
    inner: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    by_path: AtomicBool,
    /// The drive cannot spell every name: see [`crate::spelling`].
    names_encoded: AtomicBool,
    map: RwLock<HashMap<u64, FileId>>,
}

impl DriveIds {
    /// The journal's way of knowing files, for a process that reads the drive while no writer
    /// of this journal runs in it: by path, every number is taken on its path's word.
    pub fn of_journal(path: &std::path::Path) -> crate::Result<DriveIds> {
        let ids = DriveIds::default();
        let reader = crate::Reader::open(path)?;
        ids.set_by_path(reader.identity_by_path()?);
        ids.set_names_encoded(reader.names_encoded()?);
        Ok(ids)
    }

    /// For reading files that are not the journal's own (another device's pull compares what
    /// a path holds): every number is taken on its path's word.
    pub fn any() -> DriveIds {
        let ids = DriveIds::default();
        ids.set_by_path(true);
        ids
    }

    /// Whether names the drive cannot spell are stored under look-alikes
    /// ([`crate::spelling`]).
    pub fn names_encoded(&self) -> bool {
        self.inner.names_encoded.load(Ordering::Acquire)
    }

    pub fn set_names_encoded(&self, on: bool) {
        self.inner.names_encoded.store(on, Ordering::Release);
    }

    /// A path of the pocket ('/'-separated) as the drive has it.
    pub fn path_to_drive<'a>(&self, path: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        if self.names_encoded() {
            crate::spelling::path_to_drive(path)
        } else {
            std::borrow::Cow::Borrowed(path)
        }
    }

    /// Whether the journal's ids are its own (matched by path), not the drive's numbers.
    pub fn by_path(&self) -> bool {
        self.inner.by_path.load(Ordering::Acquire)
    }

    /// Whether the file the drive numbers `number` may be the journal's `file`. By path, a
    /// number the session has not seen is taken on its path's word (nothing has touched the file
    /// since the scan, which rebinds every number it walks).
    pub fn may_be(&self, number: u64, file: FileId) -> bool {
        if !self.by_path() {
            return number == file;
        }
        let map = self.inner.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(&number).is_none_or(|f| *f == file)
    }

    /// The journal's id for a number of the drive, if the session knows it.
    pub fn file_of(&self, number: u64) -> Option<FileId> {
        if !self.by_path() {
            return Some(number);
        }
        let map = self.inner.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(&number).copied()
    }

    pub(crate) fn set_by_path(&self, on: bool) {
        self.inner.by_path.store(on, Ordering::Release);
    }
}

/// A drive that cannot keep modes, owners or exact times (exFAT, FAT): the journal keeps them
/// (the mount records what it shows, and the catalog holds it). Whoever reads a file's
/// metadata from such a drive (the scan, a drain) takes them from the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keeping {
    /// How the drive rounds times (down, to a multiple of this).
    pub granularity_ns: i64,
}

impl Keeping {
    /// What the journal says of the drive at `path`: None where the drive keeps everything.
    pub fn of(reader: &crate::Reader) -> crate::Result<Option<Keeping>> {
        Ok((!reader.keeps_modes()?).then(|| Keeping {
            granularity_ns: reader.time_granularity_ns().unwrap_or(0).max(1),
        }))
    }

    /// A file's metadata as the pocket has it: `drive` as the drive shows it now, with the
    /// mode and owner the journal keeps (`kept`), and its exact modification time while the
    /// drive's is that time rounded.
    /// A device keeps its number. (The change time stays the drive's: the scan compares it.)
    pub fn merge(&self, drive: Meta, kept: &Meta) -> Meta {
        let mut m = drive;
        (m.perm, m.uid, m.gid) = (kept.perm, kept.uid, kept.gid);
        m.mtime_ns = self.mtime(kept.mtime_ns, drive.mtime_ns);
        if m.kind.held_as_file() {
            m.rdev = kept.rdev;
        }
        m
    }

    /// The modification time to show: the kept exact one while the drive's is it rounded.
    pub fn mtime(&self, kept_ns: i64, drive_ns: i64) -> i64 {
        let g = self.granularity_ns;
        if kept_ns.div_euclid(g) * g == drive_ns {
            kept_ns
        } else {
            drive_ns
        }
    }
}

/// The writer's changes to the map during one transaction: merged into the shared map only once
/// the transaction commits, so that a failed commit, retried, allocates the same ids again.
pub(crate) struct Pending<'a> {
    ids: &'a DriveIds,
    pub by_path: bool,
    over: HashMap<u64, FileId>,
    /// Set by a rebind: the shared map is replaced, not added to.
    replaced: bool,
    pub next: FileId,
}

impl<'a> Pending<'a> {
    pub fn new(ids: &'a DriveIds, next: FileId) -> Self {
        Pending {
            ids,
            by_path: ids.by_path(),
            over: HashMap::new(),
            replaced: false,
            next,
        }
    }

    pub fn get(&self, number: u64) -> Option<FileId> {
        if let Some(f) = self.over.get(&number) {
            return Some(*f);
        }
        if self.replaced {
            return None;
        }
        let map = self.ids.inner.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(&number).copied()
    }

    pub fn set(&mut self, number: u64, file: FileId) {
        self.over.insert(number, file);
    }

    /// Starts the map afresh (the scan's view of the drive replaces the session's).
    pub fn replace(&mut self) {
        self.over.clear();
        self.replaced = true;
    }

    pub fn fresh(&mut self) -> FileId {
        let f = self.next;
        self.next += 1;
        f
    }

    /// The id of a file the filesystem names by its drive number. One it never told us about
    /// (it should not happen) gets a new id: its records then describe a file the catalog
    /// does not hold, which the next scan sets right.
    fn known(&mut self, number: u64) -> FileId {
        if let Some(f) = self.get(number) {
            return f;
        }
        warn!("journal: the drive's file {number} was never looked up; recording it under a new id (the next scan sets it right)");
        let f = self.fresh();
        self.set(number, f);
        f
    }

    /// A file the filesystem just made: a new id, whatever its number named before.
    fn made(&mut self, number: u64) -> FileId {
        let f = self.fresh();
        self.set(number, f);
        f
    }

    /// A change from the filesystem, in the drive's numbers, in the journal's ids (the same
    /// change where the ids are the numbers).
    pub fn translate<'c>(&mut self, change: &'c Change) -> std::borrow::Cow<'c, Change> {
        if !self.by_path {
            return std::borrow::Cow::Borrowed(change);
        }
        std::borrow::Cow::Owned(change.map_files(|number, made| {
            if made {
                self.made(number)
            } else {
                self.known(number)
            }
        }))
    }

    /// The id of a file the filesystem names by its drive number, for a mark.
    pub fn file(&mut self, number: u64) -> FileId {
        if self.by_path {
            self.known(number)
        } else {
            number
        }
    }

    /// Makes the transaction's changes the session's.
    pub fn merge(self) {
        let mut map = self
            .ids
            .inner
            .map
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if self.replaced {
            map.clear();
        }
        map.extend(self.over);
        drop(map);
        self.ids.set_by_path(self.by_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Kind, Meta};

    fn meta() -> Meta {
        Meta {
            kind: Kind::File,
            perm: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            rdev: 0,
        }
    }

    #[test]
    fn a_number_reused_by_a_new_file_gets_a_new_id_and_nothing_leaks_before_commit() {
        let ids = DriveIds::default();
        ids.set_by_path(true);
        let mut p = Pending::new(&ids, 100);
        p.set(7, 1); // the root
        p.set(40, 50);
        p.merge();
        assert!(ids.may_be(40, 50) && !ids.may_be(40, 51) && ids.may_be(41, 51));

        let mut p = Pending::new(&ids, 100);
        let c = p
            .translate(&Change::Create {
                parent: 7,
                name: b"a".to_vec(),
                file: 40,
                meta: meta(),
            })
            .into_owned();
        assert_eq!(
            c,
            Change::Create {
                parent: 1,
                name: b"a".to_vec(),
                file: 100,
                meta: meta()
            }
        );
        let content = Change::Content {
            file: 40,
            meta: meta(),
        };
        let c = p.translate(&content);
        assert_eq!(c.file(), 100);
        // Not committed yet: the shared map still says 50.
        assert_eq!(ids.file_of(40), Some(50));
        p.merge();
        assert_eq!(ids.file_of(40), Some(100));
    }
}
