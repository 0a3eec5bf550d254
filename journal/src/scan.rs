//! Reconciliation: compare the pocket on the drive with the catalog and record every
//! difference, so that changes made while no mount was recording (a crash, kill -9, the drive
//! used on another machine) still reach the destinations.
//!
//! Unchanged files cost one `lstat` and a hash lookup; nothing is read or hashed. A file is
//! looked at closer when its size, mtime, ctime, mode or owner differ from the catalog, or when
//! it is "racily clean" (git's rule): changed within the timestamp granularity of the moment its
//! record was taken, where a second change could hide behind an unchanged timestamp.
//!
//! Files the journal holds as unsynced (open for writing when the last session ended without
//! a clean close) are read again even when their stat is unchanged: a power cut can leave new
//! bytes under old metadata (see [`crate::JournalHandle::mark_unsynced`]).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::record::{Change, FileId, Kind, Meta};
use crate::status::Reader;
use crate::writer::{now_ns, JournalHandle};
use crate::POCKET_DIR;

/// Timestamps closer than this to the moment a record was taken are not trusted; on a drive
/// that keeps times more coarsely (exFAT through FUSE: to the second), closer than its
/// granularity (`meta.time_granularity_ns`) and this: a second change within it leaves the
/// same times. The margin counts on top of the granularity because a driver may stamp times
/// from the coarse clock (exfat-fuse calls `time()`, which lags the real clock by up to a
/// timer tick): just after a second begins it still stamps the second before.
const RACY_WINDOW_NS: i64 = 20_000_000;

/// What a scan found and recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Entries (names) looked at.
    pub entries: u64,
    pub created: u64,
    pub removed: u64,
    pub renamed: u64,
    pub linked: u64,
    pub modified: u64,
    /// Files read again, their stat unchanged, because they were open for writing when the
    /// last session ended without a clean close.
    pub reread: u64,
    pub attrs: u64,
    pub xattrs: u64,
    /// Entries that could not be read; they are not recorded and the message says why.
    pub unreadable: Vec<String>,
    pub duration: Duration,
}

impl ScanReport {
    /// Records made.
    pub fn changes(&self) -> u64 {
        self.created
            + self.removed
            + self.renamed
            + self.linked
            + self.modified
            + self.reread
            + self.attrs
            + self.xattrs
    }
}

type Key = (FileId, Vec<u8>);

struct DiskFile {
    meta: Meta,
    /// The drive's number for it (its inode number now).
    number: u64,
    path: PathBuf,
    depth: usize,
}

/// Walks the pocket at `root` and records every difference with the catalog of the journal
/// at `journal_path` through `journal`. Waits until the records are durable.
pub fn scan(root: &Path, journal_path: &Path, journal: &JournalHandle) -> Result<ScanReport> {
    let started = Instant::now();
    let started_ns = now_ns();
    journal.sync()?;
    let reader = Reader::open(journal_path)?;
    let cat_root = reader.root()?;
    let by_path = reader.identity_by_path()?;
    let names_encoded = reader.names_encoded()?;
    let racy = RACY_WINDOW_NS.saturating_add(reader.time_granularity_ns()?.max(0));
    let mut report = ScanReport::default();

    // The drive as it is, and the catalog as the records left it, read side by side.
    let (walked, catalog) = std::thread::scope(|s| {
        let loader = s.spawn(|| load_catalog(journal_path));
        let walked = walk(
            root,
            if by_path { DRIVE_ROOT } else { cat_root },
            names_encoded,
            &mut report,
        );
        let catalog = loader.join().unwrap_or_else(|_| {
            Err(Error::io(
                "scan",
                std::io::Error::other("catalog loader panicked"),
            ))
        });
        (walked, catalog)
    });
    let mut walked = walked?;
    let (cat_names, cat_files) = catalog?;
    let keeping = crate::Keeping::of(&reader)?;
    if by_path {
        walked = identify(
            walked,
            (&cat_names, &cat_files, cat_root),
            keeping.is_some(),
            &reader,
            journal,
        )?;
    }
    let kept = keep_unseen(&mut walked, &cat_names, &cat_files);
    let Walked {
        names: disk_names,
        files: mut disk_files,
        ..
    } = walked;

    // Entries changed within the timestamp granularity of our look at them could change again
    // without their timestamps moving. Wait until that window has passed and look again, so
    // that what we record (and the time we record it at) is safely past their last change.
    settle(&mut disk_files, racy);
    if let Some(keeping) = keeping {
        keep_what_the_drive_cannot(&mut disk_files, &cat_files, keeping);
    }

    // A file is "the same" on both sides when its id exists on both with the same kind.
    let same = |id: FileId| -> bool {
        matches!((cat_files.get(&id), disk_files.get(&id)), (Some((c, _)), Some(d)) if c.kind == d.meta.kind)
    };

    // A name is unchanged when it names the same file id, of the same kind, on both sides (an
    // inode number reused for another kind of file while nothing recorded is a new file).
    let structural = cat_names.len() != disk_names.len()
        || cat_names
            .iter()
            .any(|(k, f)| disk_names.get(k) != Some(f) || !same(*f));
    let mut plan = Plan::new(&cat_names, &cat_files, journal, structural);

    // Renames and extra names of files that exist on both sides.
    let mut gone_by_file: HashMap<FileId, Vec<Key>> = HashMap::new();
    for (key, file) in &cat_names {
        if disk_names.get(key) != Some(file) && same(*file) {
            gone_by_file.entry(*file).or_default().push(key.clone());
        }
    }
    let mut new_names: Vec<Key> = if structural {
        disk_names
            .iter()
            .filter(|(k, f)| cat_names.get(*k) != Some(*f) || !same(**f))
            .map(|(k, _)| k.clone())
            .collect()
    } else {
        Vec::new()
    };
    new_names.sort_by(|a, b| {
        let da = disk_files[&disk_names[a]].depth;
        let db = disk_files[&disk_names[b]].depth;
        da.cmp(&db).then_with(|| a.cmp(b))
    });

    // Moves: pair each file's vanished names with its new names. Known before anything is
    // created, so a name that a new entry takes is moved away first, not removed.
    for key in &new_names {
        let file = disk_names[key];
        if !same(file) {
            continue;
        }
        if let Some(src) = gone_by_file.get_mut(&file).and_then(|g| g.pop()) {
            plan.renames.insert(src, (key.clone(), file));
        }
    }
    // 1. Directories that are new, top-down, so later records can name them as parents.
    for key in &new_names {
        let file = disk_names[key];
        let d = &disk_files[&file];
        if d.meta.kind == Kind::Dir && !same(file) {
            plan.new_dirs
                .insert(file, (key.clone(), d.meta, d.path.clone()));
        }
    }
    for key in &new_names {
        plan.ensure_dir(disk_names[key], &mut report);
    }
    // 2. The moves not done yet.
    let sources: Vec<Key> = plan.renames.keys().cloned().collect();
    for src in sources {
        plan.rename(&src, &mut report);
    }
    // 3. New files, and new names of existing files.
    for key in &new_names {
        let file = disk_names[key];
        if plan.state.get(key) == Some(&file) && (same(file) || plan.created.contains(&file)) {
            continue;
        }
        let d = &disk_files[&file];
        if same(file) || plan.created.contains(&file) {
            plan.ensure_dir(key.0, &mut report);
            plan.make_room(key, &mut report);
            plan.emit(Change::Link {
                parent: key.0,
                name: key.1.clone(),
                file,
            });
            plan.put(key.clone(), file);
            report.linked += 1;
        } else if d.meta.kind != Kind::Dir {
            plan.drop_conflicting(file);
            plan.create(key.clone(), file, d, &mut report);
        }
    }
    // 4. Names that are gone, deepest first (a folder empties before it goes).
    let mut gone: Vec<Key> = cat_names
        .iter()
        .filter(|(k, f)| disk_names.get(*k) != Some(*f) || !same(**f))
        .map(|(k, _)| k.clone())
        .collect();
    gone.sort();
    for key in gone {
        // Still the catalog's file under that name, and not a new file that took its number.
        let old = cat_names[&key];
        if plan.state.get(&key) == Some(&old) && !plan.created.contains(&old) {
            plan.remove(&key, &mut report);
        }
    }
    // 5. Files on both sides: metadata, contents, xattrs.
    let unsynced: HashSet<FileId> = reader.unsynced()?.into_iter().collect();
    let mut ids: Vec<&FileId> = disk_files.keys().collect();
    ids.sort();
    for &id in ids {
        if !same(id) || plan.created.contains(&id) || kept.contains(&id) {
            continue;
        }
        let d = &disk_files[&id];
        let (c, recorded_ns) = cat_files[&id];
        let m = d.meta;
        let owner_mode = m.perm != c.perm || m.uid != c.uid || m.gid != c.gid;
        let data = m.kind == Kind::File
            && (m.size != c.size
                || m.mtime_ns != c.mtime_ns
                || m.ctime_ns != c.ctime_ns
                || m.ctime_ns >= recorded_ns - racy);
        let reread = !data && m.kind == Kind::File && unsynced.contains(&id);
        if data || reread {
            plan.emit(Change::Content { file: id, meta: m });
            if reread {
                report.reread += 1;
            } else {
                report.modified += 1;
            }
        } else if owner_mode || m.mtime_ns != c.mtime_ns || m.size != c.size {
            plan.emit(Change::SetAttr { file: id, meta: m });
            report.attrs += 1;
        }
        // (Where the journal keeps modes it keeps xattrs too: the drive has none to read.)
        if m.ctime_ns != c.ctime_ns && keeping.is_none() {
            let old = reader.xattrs(id)?;
            let new = read_xattrs(&d.path).unwrap_or_else(|e| {
                warn!("scan: cannot read xattrs of {}: {e}", d.path.display());
                old.clone()
            });
            diff_xattrs(id, &old, &new, &mut plan, &mut report);
        }
    }
    if report.reread > 0 {
        warn!(
            "scan: {} files were open for writing when the pocket was last left without a clean \
             unmount (a crash, a pulled drive, a power cut); reading them again, since the drive \
             may hold bytes newer than their size and times say",
            report.reread
        );
    }
    debug!(records = plan.emitted, "scan: recorded");
    journal.set_meta("last_scan_ns", started_ns);
    journal.sync()?;
    report.duration = started.elapsed();
    Ok(report)
}

type DiskNames = HashMap<Key, FileId>;
type DiskFiles = HashMap<FileId, DiskFile>;
type CatNames = HashMap<Key, FileId>;
type CatFiles = HashMap<FileId, (Meta, i64)>;

/// Every entry under `root` (but the pocket's own folder), with one `lstat` each.
/// What the walk saw, and where it could not look.
struct Walked {
    names: DiskNames,
    files: DiskFiles,
    /// Folders whose listing failed in whole or in part.
    incomplete: HashSet<FileId>,
    /// Entries listed but not readable.
    unsure: HashSet<Key>,
    /// The drive's number for the pocket's root.
    root_number: u64,
}

/// `names_encoded`: the drive stores names it cannot spell under look-alikes
/// ([`crate::spelling`]); the walk gives the pocket's names.
fn walk(
    root: &Path,
    cat_root: FileId,
    names_encoded: bool,
    report: &mut ScanReport,
) -> Result<Walked> {
    let root_meta = std::fs::symlink_metadata(root)
        .map_err(|e| Error::io(format!("cannot read the pocket {}", root.display()), e))?;
    let disk_root = root_meta.ino();
    let mut disk_names: DiskNames = HashMap::new();
    let mut disk_files: DiskFiles = HashMap::new();
    let mut incomplete = HashSet::new();
    let mut unsure = HashSet::new();
    let mut stack: Vec<(PathBuf, FileId, usize)> = vec![(root.to_owned(), cat_root, 0)];
    while let Some((dir, dir_id, depth)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                report.unreadable.push(format!("{}: {e}", dir.display()));
                incomplete.insert(dir_id);
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    report.unreadable.push(format!("{}: {e}", dir.display()));
                    incomplete.insert(dir_id);
                    continue;
                }
            };
            let drive_name = entry.file_name();
            if depth == 0 && drive_name == OsStr::new(POCKET_DIR) {
                continue;
            }
            let name = if names_encoded {
                crate::spelling::from_drive(drive_name.as_bytes())
            } else {
                std::borrow::Cow::Borrowed(drive_name.as_bytes())
            };
            let md = match entry.metadata() {
                Ok(m) => m,
                Err(e) => {
                    report
                        .unreadable
                        .push(format!("{}: {e}", entry.path().display()));
                    unsure.insert((dir_id, name.to_vec()));
                    continue;
                }
            };
            let Some(meta) = Meta::from_std(&md) else {
                continue;
            };
            report.entries += 1;
            let mut ino = md.ino();
            if ino == disk_root {
                ino = cat_root;
            }
            disk_names.insert((dir_id, name.to_vec()), ino);
            let path = entry.path();
            if meta.kind == Kind::Dir {
                stack.push((path.clone(), ino, depth + 1));
            }
            disk_files.entry(ino).or_insert(DiskFile {
                meta,
                number: md.ino(),
                path,
                depth: depth + 1,
            });
        }
    }
    Ok(Walked {
        names: disk_names,
        files: disk_files,
        incomplete,
        unsure,
        root_number: disk_root,
    })
}

/// The walk's key for the pocket's root where files are known by path (no drive number is
/// this large).
const DRIVE_ROOT: u64 = u64::MAX;

/// Where files are known by path: which file of the catalog each file on the drive is, so that
/// a drive that numbers its files afresh at each mount looks unchanged when it is. A file is
/// the catalog's file at the same path, of the same kind (found top-down: a folder must match
/// for its entries to); failing that, a file of the same size and modification time that the
/// catalog holds at a path no longer on the drive (a move made elsewhere; only where both sides
/// have one such file, of some bytes). Every other file is new and gets a new id. The journal
/// takes the map for the session; the walk comes back in the journal's ids.
fn identify(
    walked: Walked,
    (cat_names, cat_files, cat_root): (&CatNames, &CatFiles, FileId),
    stand_ins_kept: bool,
    reader: &Reader,
    journal: &JournalHandle,
) -> Result<Walked> {
    // Where the journal keeps what the drive cannot, a symbolic link made in the mount is a
    // small file of its target on the drive: still the link while it holds that target. A
    // fifo, socket or device is an empty file: still that while it is empty.
    let mut stand_ins: HashMap<u64, Kind> = HashMap::new();
    let mut children: HashMap<u64, Vec<(&Vec<u8>, u64)>> = HashMap::new();
    for ((parent, name), number) in &walked.names {
        children.entry(*parent).or_default().push((name, *number));
    }
    for list in children.values_mut() {
        list.sort();
    }
    let mut assign: HashMap<u64, FileId> = HashMap::from([(DRIVE_ROOT, cat_root)]);
    let mut used: HashSet<FileId> = HashSet::from([cat_root]);
    // 1. By path, top-down.
    let mut todo = vec![DRIVE_ROOT];
    while let Some(dir) = todo.pop() {
        let dir_id = assign[&dir];
        for (name, number) in children.get(&dir).into_iter().flatten() {
            if assign.contains_key(number) {
                continue; // another name of a file already matched
            }
            let Some(&file) = cat_names.get(&(dir_id, (*name).clone())) else {
                continue;
            };
            let disk = &walked.files[number];
            let mut kind = disk.meta.kind;
            let cat = cat_files.get(&file).map(|(m, _)| m);
            let cat_kind = cat.map(|m| m.kind);
            // (Only a file of the target's length is read: a big file put there elsewhere is
            // not a link.)
            match cat_kind {
                Some(k) if stand_ins_kept && k.held_as_file() && kind == Kind::File => {
                    let stands = if k == Kind::Symlink {
                        cat.map(|m| m.size) == Some(disk.meta.size) && {
                            let held = std::fs::read(&disk.path).ok();
                            held.is_some() && held == reader.symlink_target(file)?
                        }
                    } else {
                        disk.meta.size == 0
                    };
                    if stands {
                        stand_ins.insert(*number, k);
                        kind = k;
                    }
                }
                _ => {}
            }
            if used.contains(&file) || cat_kind != Some(kind) {
                continue;
            }
            assign.insert(*number, file);
            used.insert(file);
            if kind == Kind::Dir {
                todo.push(*number);
            }
        }
    }
    // 2. Moves made elsewhere: one file of that size and time on each side.
    type Sig = (u64, i64);
    fn single<T: Copy>(m: &mut HashMap<Sig, Option<T>>, k: Sig, v: T) {
        m.entry(k).and_modify(|e| *e = None).or_insert(Some(v));
    }
    let mut disk_left: HashMap<Sig, Option<u64>> = HashMap::new();
    for (number, d) in &walked.files {
        if !assign.contains_key(number) && d.meta.kind == Kind::File && d.meta.size > 0 {
            single(&mut disk_left, (d.meta.size, d.meta.mtime_ns), *number);
        }
    }
    if !disk_left.is_empty() {
        let mut cat_left: HashMap<Sig, Option<FileId>> = HashMap::new();
        for (file, (m, _)) in cat_files {
            if !used.contains(file) && m.kind == Kind::File && m.size > 0 {
                single(&mut cat_left, (m.size, m.mtime_ns), *file);
            }
        }
        for (sig, number) in disk_left {
            if let (Some(number), Some(Some(file))) = (number, cat_left.get(&sig)) {
                assign.insert(number, *file);
            }
        }
    }
    // 3. New files.
    let mut fresh: Vec<u64> = walked
        .files
        .keys()
        .filter(|n| !assign.contains_key(n))
        .copied()
        .collect();
    fresh.sort_unstable();
    let mut known: Vec<(u64, FileId)> = assign
        .iter()
        .filter(|(n, _)| **n != DRIVE_ROOT)
        .map(|(n, f)| (*n, *f))
        .collect();
    known.push((walked.root_number, cat_root));
    let ids = journal.rebind(known, fresh.clone())?;
    assign.extend(fresh.into_iter().zip(ids));

    let id = |n: &u64| assign[n];
    Ok(Walked {
        names: walked
            .names
            .into_iter()
            .map(|((p, name), n)| ((id(&p), name), id(&n)))
            .collect(),
        files: walked
            .files
            .into_iter()
            .map(|(n, mut d)| {
                if let Some(k) = stand_ins.get(&n) {
                    d.meta.kind = *k;
                }
                (id(&n), d)
            })
            .collect(),
        incomplete: walked.incomplete.iter().map(id).collect(),
        unsure: walked
            .unsure
            .into_iter()
            .filter_map(|(p, name)| assign.get(&p).map(|p| (*p, name)))
            .collect(),
        root_number: walked.root_number,
    })
}

/// What could not be looked at is taken to be as the catalog says: a folder that cannot be
/// read (a permission, an I/O error, a drive going away) must never read as "everything in it
/// was deleted". Returns the files taken from the catalog; nothing is recorded for them.
fn keep_unseen(walked: &mut Walked, cat_names: &CatNames, cat_files: &CatFiles) -> HashSet<FileId> {
    let mut kept = HashSet::new();
    if walked.incomplete.is_empty() && walked.unsure.is_empty() {
        return kept;
    }
    let mut by_parent: HashMap<FileId, Vec<(&Key, FileId)>> = HashMap::new();
    for (k, f) in cat_names {
        by_parent.entry(k.0).or_default().push((k, *f));
    }
    let mut keep_name = |k: &Key, f: FileId, todo: &mut Vec<FileId>| {
        if walked.names.contains_key(k) {
            return;
        }
        let Some((meta, _)) = cat_files.get(&f) else {
            return;
        };
        walked.names.insert(k.clone(), f);
        walked.files.entry(f).or_insert(DiskFile {
            meta: *meta,
            number: 0,
            path: PathBuf::new(),
            depth: 0,
        });
        kept.insert(f);
        if meta.kind == Kind::Dir {
            todo.push(f);
        }
    };
    let mut todo: Vec<FileId> = walked.incomplete.iter().copied().collect();
    for k in walked.unsure.clone() {
        if let Some(f) = cat_names.get(&k) {
            keep_name(&k, *f, &mut todo);
        }
    }
    while let Some(dir) = todo.pop() {
        for (k, f) in by_parent.get(&dir).into_iter().flatten() {
            keep_name(k, *f, &mut todo);
        }
    }
    kept
}

/// The catalog, from its own connection (it is read while the walk runs).
fn load_catalog(journal_path: &Path) -> Result<(CatNames, CatFiles)> {
    let reader = Reader::open(journal_path)?;
    let names = reader.all_names()?.into_iter().collect();
    let files = reader
        .all_files()?
        .into_iter()
        .map(|(id, m, rec)| (id, (m, rec)))
        .collect();
    Ok((names, files))
}

fn settle(disk_files: &mut HashMap<FileId, DiskFile>, racy: i64) {
    let looked = now_ns();
    let newest = disk_files
        .values()
        .map(|d| d.meta.ctime_ns)
        .filter(|&c| c >= looked - racy)
        .max();
    let Some(newest) = newest else { return };
    // A time past the window is from another clock (a drive last written by a machine whose
    // clock is ahead): waiting for it would hang the mount for hours. The window is all that
    // can matter; a change made here later is stamped by this clock and differs anyway.
    let wait = (newest + racy - now_ns()).min(racy);
    if wait > 0 {
        std::thread::sleep(Duration::from_nanos(wait as u64));
    }
    for d in disk_files.values_mut() {
        if d.meta.ctime_ns >= looked - racy {
            if let Ok(md) = std::fs::symlink_metadata(&d.path) {
                if md.ino() == d.number {
                    if let Some(mut meta) = Meta::from_std(&md) {
                        // A link or a fifo held as a file (identify) stays what it is.
                        if d.meta.kind.held_as_file() && meta.kind == Kind::File {
                            meta.kind = d.meta.kind;
                        }
                        d.meta = meta;
                    }
                }
            }
        }
    }
}

/// On a drive without modes and owners, whose times are rounded (exFAT, FAT): a file's mode
/// and owner are what the catalog keeps (the mount keeps them there), and so is its exact
/// modification time while the drive's is that time rounded. A file the catalog does not know
/// gets a folder's 0755 or a file's 0644, and this process's owner (the mount's, as the mount
/// shows files it knows nothing of).
fn keep_what_the_drive_cannot(
    disk_files: &mut DiskFiles,
    cat_files: &CatFiles,
    keeping: crate::Keeping,
) {
    let owner = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    for (id, d) in disk_files.iter_mut() {
        let m = &mut d.meta;
        match cat_files.get(id) {
            Some((c, _)) if c.kind == m.kind => *m = keeping.merge(*m, c),
            _ => {
                m.perm = if m.kind == Kind::Dir { 0o755 } else { 0o644 };
                (m.uid, m.gid) = owner;
            }
        }
    }
}

fn diff_xattrs(
    file: FileId,
    old: &[(Vec<u8>, Vec<u8>)],
    new: &[(Vec<u8>, Vec<u8>)],
    plan: &mut Plan<'_>,
    report: &mut ScanReport,
) {
    let old_map: HashMap<&[u8], &[u8]> = old
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    let new_map: HashMap<&[u8], &[u8]> = new
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    for (name, value) in new {
        if old_map.get(name.as_slice()) != Some(&value.as_slice()) {
            plan.emit(Change::SetXattr {
                file,
                name: name.clone(),
                value: value.clone(),
            });
            report.xattrs += 1;
        }
    }
    for (name, _) in old {
        if !new_map.contains_key(name.as_slice()) {
            plan.emit(Change::RemoveXattr {
                file,
                name: name.clone(),
            });
            report.xattrs += 1;
        }
    }
}

/// The xattrs of a path (not following a symlink), sorted by name.
pub fn read_xattrs(path: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
        let mut value = vec![0u8; 4096];
        let len = loop {
            match rustix::fs::lgetxattr(path, cname.as_c_str(), &mut value) {
                Ok(n) => break Some(n),
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(len) = len {
            value.truncate(len);
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// The replay state while the scan orders its records: each record must make sense applied
/// to the catalog as the records before it left it.
struct Plan<'a> {
    state: HashMap<Key, FileId>,
    /// Names per directory in `state`, so emptying a folder does not scan every name.
    children: HashMap<FileId, std::collections::BTreeSet<Vec<u8>>>,
    cat_files: &'a HashMap<FileId, (Meta, i64)>,
    /// Pending moves: old name -> (new name, the file moved).
    renames: HashMap<Key, (Key, FileId)>,
    in_progress: HashSet<Key>,
    created: HashSet<FileId>,
    /// New folders not created yet: (their entry, their file on disk).
    new_dirs: HashMap<FileId, (Key, Meta, PathBuf)>,
    journal: &'a JournalHandle,
    emitted: u64,
}

impl<'a> Plan<'a> {
    /// `structural`: whether any name differs; if not, the replay state is never needed and
    /// not built (the common case of an unchanged pocket).
    fn new(
        cat_names: &HashMap<Key, FileId>,
        cat_files: &'a HashMap<FileId, (Meta, i64)>,
        journal: &'a JournalHandle,
        structural: bool,
    ) -> Self {
        let mut children: HashMap<FileId, std::collections::BTreeSet<Vec<u8>>> = HashMap::new();
        if structural {
            for (parent, name) in cat_names.keys() {
                children.entry(*parent).or_default().insert(name.clone());
            }
        }
        Plan {
            state: if structural {
                cat_names.clone()
            } else {
                HashMap::new()
            },
            children,
            cat_files,
            renames: HashMap::new(),
            in_progress: HashSet::new(),
            created: HashSet::new(),
            new_dirs: HashMap::new(),
            journal,
            emitted: 0,
        }
    }

    fn put(&mut self, key: Key, file: FileId) {
        self.children
            .entry(key.0)
            .or_default()
            .insert(key.1.clone());
        self.state.insert(key, file);
    }

    fn take(&mut self, key: &Key) -> Option<FileId> {
        if let Some(set) = self.children.get_mut(&key.0) {
            set.remove(&key.1);
        }
        self.state.remove(key)
    }

    fn emit(&mut self, change: Change) {
        self.emitted += 1;
        self.journal.record_ids(change);
    }

    fn kind_of(&self, file: FileId) -> Option<Kind> {
        self.cat_files.get(&file).map(|(m, _)| m.kind)
    }

    /// A file id that the catalog knows as another kind of file (the inode number was reused
    /// while nothing recorded): the old file's names go first.
    fn drop_conflicting(&mut self, file: FileId) {
        if self.kind_of(file).is_none() || self.created.contains(&file) {
            return;
        }
        let mut names: Vec<Key> = self
            .state
            .iter()
            .filter(|(_, f)| **f == file)
            .map(|(k, _)| k.clone())
            .collect();
        names.sort();
        let mut dummy = ScanReport::default();
        for key in names {
            self.remove(&key, &mut dummy);
        }
    }

    /// Creates a new folder (and first its new parents) unless done already.
    fn ensure_dir(&mut self, file: FileId, report: &mut ScanReport) {
        let Some((key, meta, path)) = self.new_dirs.remove(&file) else {
            return;
        };
        self.ensure_dir(key.0, report);
        self.drop_conflicting(file);
        let d = DiskFile {
            meta,
            number: 0,
            path,
            depth: 0,
        };
        self.create(key, file, &d, report);
    }

    fn create(&mut self, key: Key, file: FileId, d: &DiskFile, report: &mut ScanReport) {
        self.ensure_dir(key.0, report);
        self.make_room(&key, report);
        let (parent, name) = key.clone();
        let change = match d.meta.kind {
            Kind::Dir => Change::Mkdir {
                parent,
                name,
                file,
                meta: d.meta,
            },
            Kind::Symlink => match std::fs::read_link(&d.path) {
                Ok(target) => Change::Symlink {
                    parent,
                    name,
                    file,
                    meta: d.meta,
                    target: target.into_os_string().as_bytes().to_vec(),
                },
                Err(e) => {
                    report.unreadable.push(format!("{}: {e}", d.path.display()));
                    return;
                }
            },
            _ => Change::Create {
                parent,
                name,
                file,
                meta: d.meta,
            },
        };
        self.emit(change);
        self.put(key, file);
        self.created.insert(file);
        report.created += 1;
        match read_xattrs(&d.path) {
            Ok(xattrs) => {
                for (name, value) in xattrs {
                    self.emit(Change::SetXattr { file, name, value });
                }
            }
            Err(e) => warn!("scan: cannot read xattrs of {}: {e}", d.path.display()),
        }
    }

    /// Frees a name before something is put there: a pending move away, else a removal.
    fn make_room(&mut self, key: &Key, report: &mut ScanReport) {
        if !self.state.contains_key(key) {
            return;
        }
        if self.renames.contains_key(key) {
            if self.in_progress.contains(key) {
                // A cycle of moves (a swap): park this one under a temporary name.
                let dst = self.renames.remove(key).expect("checked above");
                let mut tmp = key.1.clone();
                tmp.extend_from_slice(format!(".backpocket-scan-{}", self.emitted).as_bytes());
                let tmp_key = (key.0, tmp);
                let file = self.take(key).expect("checked above");
                self.emit(Change::Rename {
                    parent: key.0,
                    name: key.1.clone(),
                    new_parent: tmp_key.0,
                    new_name: tmp_key.1.clone(),
                    file,
                    exchange: false,
                });
                self.put(tmp_key.clone(), file);
                self.renames.insert(tmp_key, dst);
            } else {
                self.rename(key, report);
            }
        } else {
            self.remove(key, report);
        }
    }

    fn rename(&mut self, src: &Key, report: &mut ScanReport) {
        let Some((dst, _)) = self.renames.get(src).cloned() else {
            return;
        };
        self.in_progress.insert(src.clone());
        self.make_room(&dst, report);
        self.in_progress.remove(src);
        // make_room may have parked `src` under a temporary name.
        let (src, (dst, file)) = match self.renames.remove(src) {
            Some(d) => (src.clone(), d),
            None => match self.renames.iter().find(|(_, (d, _))| *d == dst) {
                Some((s, d)) => {
                    let (s, d) = (s.clone(), d.clone());
                    self.renames.remove(&s);
                    (s, d)
                }
                None => return,
            },
        };
        self.ensure_dir(dst.0, report);
        if self.state.get(&src) != Some(&file) {
            // Something else holds the old name now; the file gets its new name as a link.
            return;
        }
        self.take(&src);
        self.emit(Change::Rename {
            parent: src.0,
            name: src.1.clone(),
            new_parent: dst.0,
            new_name: dst.1.clone(),
            file,
            exchange: false,
        });
        self.put(dst, file);
        report.renamed += 1;
    }

    fn remove(&mut self, key: &Key, report: &mut ScanReport) {
        let Some(&file) = self.state.get(key) else {
            return;
        };
        let is_dir = self.kind_of(file) == Some(Kind::Dir) && !self.created.contains(&file);
        if is_dir {
            let children: Vec<Key> = self
                .children
                .get(&file)
                .map(|set| set.iter().map(|n| (file, n.clone())).collect())
                .unwrap_or_default();
            for child in children {
                if self.renames.contains_key(&child) {
                    self.rename(&child, report);
                } else {
                    self.remove(&child, report);
                }
            }
        }
        self.take(key);
        let (parent, name) = key.clone();
        self.emit(if is_dir {
            Change::Rmdir { parent, name, file }
        } else {
            Change::Unlink { parent, name, file }
        });
        report.removed += 1;
    }
}
