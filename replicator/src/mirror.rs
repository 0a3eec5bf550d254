//! The mirror format: a plain copy of the pocket's tree that anyone can open without
//! backpocket. Files are copied atomically (temporary file, fsync, rename, fsync of the
//! folder); what the copy cannot say by itself (owners, xattrs, hard links, hole maps, names,
//! and a hash per data run to prove a restore) is in `.backpocket-mirror/tree`, written last,
//! so the mirror's metadata always describes a consistent point. Replaced and deleted files
//! are moved to `.backpocket-versions/<time>/` and kept for the configured time.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::config::DestSpec;
use crate::drain::{refresh_metadata, DrainReport, Progress, Source};
use crate::error::{Error, Result};
use crate::format::{
    Checkpoint, ChunkRef, Content, Extent, Position, VChange, VMeta, KIND_DIR, KIND_FILE,
    KIND_SYMLINK,
};
use crate::restore::{make_special, prepare_target, set_meta, RestoreReport, NOT_ROOT};
use crate::store::{sync_dir, Store};
use crate::tree::Tree;
use crate::vault::now_ns;

const META_DIR: &str = ".backpocket-mirror";
const VERSIONS_DIR: &str = ".backpocket-versions";
const MIRROR_FORMAT: u32 = 1;
/// Each data run is hashed in pieces of this size (the metadata's lengths are 32-bit).
const PIECE: u64 = 64 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorConfig {
    backpocket_mirror: u32,
    pocket_id: String,
}

/// Makes `store` a mirror of the pocket `pocket_id` (or checks that it is one already).
pub fn init_mirror(store: &Store, pocket_id: &str) -> Result<()> {
    let root = store
        .local_root()
        .ok_or_else(|| Error::Format("mirrors need a local folder in this version".into()))?;
    let cfg = root.join(META_DIR).join("config");
    if let Ok(raw) = std::fs::read(&cfg) {
        let c: MirrorConfig = serde_json::from_slice(&raw)
            .map_err(|e| Error::NotAVault(format!("{}: {e}", cfg.display())))?;
        if c.pocket_id != pocket_id {
            return Err(Error::OtherPocket(c.pocket_id));
        }
        return Ok(());
    }
    let busy = std::fs::read_dir(root)
        .map_err(|e| Error::io(format!("cannot read {}", root.display()), e))?
        .any(|e| e.map(|e| e.file_name() != ".tmp").unwrap_or(true));
    if busy {
        return Err(Error::Format(format!(
            "{} is not empty and is not a mirror; give an empty or new folder",
            root.display()
        )));
    }
    store.make_dirs(&[META_DIR.to_owned(), VERSIONS_DIR.to_owned()])?;
    let c = MirrorConfig {
        backpocket_mirror: MIRROR_FORMAT,
        pocket_id: pocket_id.to_owned(),
    };
    store.put(
        &format!("{META_DIR}/config"),
        serde_json::to_vec_pretty(&c).map_err(|e| Error::Format(e.to_string()))?,
    )
}

/// Whether `path` holds a mirror.
pub fn is_mirror(path: &Path) -> bool {
    path.join(META_DIR).join("config").is_file()
}

/// A mirror destination's drain state.
#[derive(Debug)]
pub struct MirrorDrain {
    store: Store,
    root: PathBuf,
    keep: Duration,
    state: Option<Option<(Tree, Position)>>,
}

impl MirrorDrain {
    pub fn open(store: Store, spec: &DestSpec, pocket_id: &str) -> Result<MirrorDrain> {
        let root = store
            .local_root()
            .ok_or_else(|| Error::Format("mirrors need a local folder in this version".into()))?
            .to_owned();
        if !is_mirror(&root) {
            return Err(Error::NotAVault(format!(
                "{} is not a mirror (no {META_DIR}/config)",
                root.display()
            )));
        }
        init_mirror(&store, pocket_id)?;
        Ok(MirrorDrain {
            store,
            root,
            keep: spec.keep_versions,
            state: None,
        })
    }

    pub fn drain_once(&mut self, src: &Source<'_>) -> Result<Option<DrainReport>> {
        let mut attempts = 0;
        loop {
            let res = self.drain_inner(src);
            if res.is_err() {
                self.state = None;
            }
            match res {
                // A changed file was not where the journal says (a rename or removal whose
                // record is not committed yet): take the newer records and try again.
                Err(Error::Retry) if attempts < 40 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(25));
                }
                res => return res,
            }
        }
    }

    fn drain_inner(&mut self, src: &Source<'_>) -> Result<Option<DrainReport>> {
        self.store.check_present()?;
        let reader = journal::Reader::open(src.journal)?;
        let jid = reader.journal_id()?;
        if self.state.is_none() {
            self.state = Some(read_tree(&self.root)?);
        }
        let mut cursor = reader.cursor(src.dest)?;
        if let Some(Some((_, pos))) = &self.state {
            if pos.journal_id == jid && cursor.is_none_or(|c| pos.seq > c) {
                journal::set_cursor(src.journal, src.dest, pos.seq)?;
                cursor = Some(pos.seq);
            }
        }
        let old = self.state.take().flatten();
        let full = match (&old, cursor) {
            (Some((_, pos)), Some(c)) => pos.journal_id != jid || pos.seq != c,
            _ => true,
        };
        let mut report = DrainReport::default();
        let (new_tree, seq, time_ns, changed): (Tree, u64, i64, Vec<u64>) = if full {
            let snap = reader.snapshot()?;
            let t = Tree::from_snapshot(&snap);
            let changed = t
                .files
                .values()
                .filter(|f| f.meta.kind == KIND_FILE)
                .map(|f| f.id)
                .collect();
            report.checkpoint = true;
            (t, snap.seq, snap.time_ns, changed)
        } else {
            let c = cursor.unwrap_or(0);
            let records = reader.records_after(c, 100_000)?;
            if records.is_empty() {
                self.state = Some(old);
                return Ok(None);
            }
            let mut t = old.as_ref().map(|(t, _)| t.clone()).unwrap_or_default();
            let mut changed = Vec::new();
            for r in &records {
                t.apply(&VChange::from_journal(&r.change));
                // A file created in the batch is new, even under an inode number an old file
                // had: its copy is made afresh, never the old file's taken as moved.
                let born = matches!(r.change, journal::Change::Create { .. });
                if born || crate::drain::content_of(&r.change).is_some() {
                    changed.push(r.change.file());
                }
            }
            // Contents the records changed: keep the old hash map for files not changed.
            if let Some((ot, _)) = &old {
                for (id, f) in t.files.iter_mut() {
                    if f.content.is_none()
                        || f.content
                            .as_ref()
                            .is_some_and(|c| c.extents.is_empty() && c.size == 0)
                    {
                        if let Some(of) = ot.files.get(id) {
                            if !changed.contains(id) {
                                f.content = of.content.clone();
                            }
                        }
                    }
                }
            }
            changed.sort();
            changed.dedup();
            let last = records.last().expect("not empty");
            (t, last.seq, last.time_ns, changed)
        };
        let mut new_tree = new_tree;
        refresh_metadata(&mut new_tree, src, journal::Keeping::of(&reader)?);
        let paths = new_tree.paths();
        let old_tree = old.map(|(t, _)| t).unwrap_or_default();
        self.apply(
            src,
            &reader,
            &old_tree,
            &mut new_tree,
            &paths,
            &changed,
            &mut report,
        )?;
        let pos = Position {
            gen: 0,
            prev: [0; 32],
            journal_id: jid,
            seq,
            time_ns,
            written_ns: now_ns(),
        };
        // Never ahead of the journal (see journal::make_durable).
        journal::make_durable(src.journal)?;
        write_tree(&self.store, &new_tree, &pos)?;
        platform::crash_point("before-cursor");
        journal::set_cursor(src.journal, src.dest, seq)?;
        self.expire_versions();
        report.records = seq - cursor.unwrap_or(0).min(seq);
        report.cursor = seq;
        debug!(dest = src.dest, ?report, "mirror updated");
        self.state = Some(Some((new_tree, pos)));
        Ok(Some(report))
    }

    /// Makes the folder match `new`. Moves are done as moves (a renamed folder is one rename,
    /// nothing is copied again); names that went away and contents that were replaced are
    /// kept in the versions folder; changed files are copied; then links and metadata.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        src: &Source<'_>,
        reader: &journal::Reader,
        old: &Tree,
        new: &mut Tree,
        paths: &[(Vec<u8>, u64)],
        changed: &[u64],
        report: &mut DrainReport,
    ) -> Result<()> {
        self.store.check_present()?;
        // Milliseconds: two drains within a second keep separate versions.
        let stamp = humantime::format_rfc3339_millis(std::time::SystemTime::now())
            .to_string()
            .replace(':', "");
        let versions = self.root.join(VERSIONS_DIR).join(&stamp);
        let new_by_path: HashMap<&[u8], u64> =
            paths.iter().map(|(p, id)| (p.as_slice(), *id)).collect();
        let changed: std::collections::HashSet<u64> = changed.iter().copied().collect();
        let old_paths = old.paths();
        let mut old_loc: HashMap<u64, Vec<u8>> = HashMap::new();
        for (p, id) in &old_paths {
            old_loc.entry(*id).or_insert_with(|| p.clone());
        }
        let kind_of = |t: &Tree, id: u64| t.files.get(&id).map(|f| f.meta.kind);
        let dst = |rel: &[u8]| self.root.join(OsStr::from_bytes(rel));
        let io = |what: &str, p: &Path, e| Error::io(format!("cannot {what} {}", p.display()), e);
        let keep_aside = |rel: &[u8]| -> Result<()> {
            let from = dst(rel);
            match std::fs::symlink_metadata(&from) {
                Ok(m) if !m.is_dir() => {}
                _ => return Ok(()),
            }
            let to = versions.join(OsStr::from_bytes(rel));
            std::fs::create_dir_all(to.parent().expect("has parent"))
                .map_err(|e| io("keep an old version of", &from, e))?;
            std::fs::rename(&from, &to).map_err(|e| io("keep an old version of", &from, e))
        };
        // Where an old path's copy is now, after the folder moves done so far.
        let mut moved_dirs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let relocate = |p: &[u8], moved: &[(Vec<u8>, Vec<u8>)]| -> Vec<u8> {
            let hit = moved
                .iter()
                .filter(|(from, _)| p.starts_with(from) && p.get(from.len()) == Some(&b'/'))
                .max_by_key(|(from, _)| from.len());
            match hit {
                Some((from, to)) => [to.as_slice(), &p[from.len()..]].concat(),
                None => p.to_vec(),
            }
        };

        // 1. Folders that moved, parents first: one rename each.
        let parking = self.root.join(".tmp");
        for (rel, id) in paths {
            if kind_of(new, *id) != Some(KIND_DIR) || kind_of(old, *id) != Some(KIND_DIR) {
                continue;
            }
            let Some(op) = old_loc.get(id) else { continue };
            let cur = relocate(op, &moved_dirs);
            if &cur == rel || !dst(&cur).is_dir() || std::fs::symlink_metadata(dst(rel)).is_ok() {
                continue;
            }
            let mut from = dst(&cur);
            if rel.starts_with(&cur) && rel.get(cur.len()) == Some(&b'/') {
                // It moved under a new folder that took its old name: the copy cannot go
                // into itself, so it steps aside first.
                let aside = parking.join(format!("mirror-park-dir-{id}"));
                std::fs::rename(&from, &aside).map_err(|e| io("move", &from, e))?;
                from = aside;
            }
            if let Some(parent) = dst(rel).parent() {
                std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
            }
            std::fs::rename(&from, dst(rel)).map_err(|e| io("move", &from, e))?;
            moved_dirs.push((op.clone(), rel.clone()));
        }
        // Where each old file's copy is now (by any of its names), and which file each copy
        // is, as moves proceed.
        let mut here: HashMap<PathBuf, (u64, Vec<u8>)> = HashMap::new();
        let mut at: HashMap<u64, PathBuf> = HashMap::new();
        // On exFAT and FAT the journal keeps modes, owners and exact times.
        let keeping = journal::Keeping::of(reader)?;
        for (op, id) in &old_paths {
            if kind_of(old, *id) == Some(KIND_DIR) {
                continue;
            }
            let p = dst(&relocate(op, &moved_dirs));
            at.entry(*id).or_insert_with(|| p.clone());
            here.insert(p, (*id, op.clone()));
        }
        let put_aside = |from: &Path, old_rel: &[u8]| -> Result<()> {
            if std::fs::symlink_metadata(from).is_err() {
                return Ok(());
            }
            let to = versions.join(OsStr::from_bytes(old_rel));
            std::fs::create_dir_all(to.parent().expect("has parent"))
                .map_err(|e| io("keep an old version of", from, e))?;
            std::fs::rename(from, &to).map_err(|e| io("keep an old version of", from, e))
        };
        // Old files that are still in the tree (by id, as the same kind).
        let lives_on: std::collections::HashSet<u64> = at
            .keys()
            .copied()
            .filter(|x| kind_of(new, *x).is_some() && kind_of(new, *x) == kind_of(old, *x))
            .collect();
        let mut parked = 0u64;
        // Frees the name `d` (new path `rel`): a copy there that another name still needs is
        // parked in .tmp (a swap or a cycle of renames); anything else there is an old version.
        let mut vacate = |d: &Path,
                          rel: &[u8],
                          here: &mut HashMap<PathBuf, (u64, Vec<u8>)>,
                          at: &mut HashMap<u64, PathBuf>|
         -> Result<()> {
            let Some((x, old_rel)) = here.remove(d) else {
                return keep_aside(rel);
            };
            if std::fs::symlink_metadata(d).is_err() {
                // The tree says a copy is here, but a drain killed midway already moved or
                // removed it (parked copies go when .tmp is emptied): the name is free, and
                // the file is copied again where it belongs.
                if at.get(&x).map(PathBuf::as_path) == Some(d) {
                    at.remove(&x);
                }
                return Ok(());
            }
            if !lives_on.contains(&x) {
                return put_aside(d, &old_rel);
            }
            if at.get(&x).map(PathBuf::as_path) != Some(d) {
                // Another name of a file that lives on: its data stays under that name.
                return std::fs::remove_file(d).map_err(|e| io("remove", d, e));
            }
            parked += 1;
            let tmp = parking.join(format!("mirror-park-{x}-{parked}"));
            std::fs::rename(d, &tmp).map_err(|e| io("move", d, e))?;
            at.insert(x, tmp.clone());
            here.insert(tmp, (x, old_rel));
            Ok(())
        };
        // 2. New, moved and changed entries, parents first.
        let mut first_name: HashMap<u64, Vec<u8>> = HashMap::new();
        src.progress
            .files_total
            .fetch_add(changed.len() as u64, Ordering::Relaxed);
        for (rel, id) in paths {
            src.check_cancel()?;
            let kind = new.files[id].meta.kind;
            let d = dst(rel);
            match kind {
                KIND_DIR if !d.is_dir() => {
                    vacate(&d, rel, &mut here, &mut at)?;
                    std::fs::create_dir(&d).map_err(|e| io("create", &d, e))?;
                }
                KIND_DIR => {}
                KIND_FILE => {
                    if let Some(first) = first_name.get(id) {
                        // Another name of a file already done: a hard link to it.
                        let ino = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
                        if ino(&d).is_none() || ino(&d) != ino(&dst(first)) {
                            vacate(&d, rel, &mut here, &mut at)?;
                            std::fs::hard_link(dst(first), &d).map_err(|e| io("link", &d, e))?;
                        }
                        here.remove(&d);
                        continue;
                    }
                    first_name.insert(*id, rel.clone());
                    let copy = at
                        .get(id)
                        .filter(|_| kind_of(old, *id) == Some(KIND_FILE))
                        .filter(|c| is_copy_of(c, &old.files[id].meta))
                        .cloned();
                    let in_place = copy.as_deref() == Some(d.as_path());
                    let previous = old.files.get(id).and_then(|f| f.content.clone());
                    let mut keep_previous = || -> Result<()> {
                        if !in_place {
                            return Ok(());
                        }
                        // The previous contents stay readable among the kept versions; the new
                        // copy then replaces the name atomically.
                        let to = versions.join(OsStr::from_bytes(rel));
                        std::fs::create_dir_all(to.parent().expect("has parent"))
                            .map_err(|e| io("keep an old version of", &d, e))?;
                        let _ = std::fs::remove_file(&to);
                        std::fs::hard_link(&d, &to).map_err(|e| io("keep an old version of", &d, e))
                    };
                    if in_place {
                        here.remove(&d);
                        if !changed.contains(id) {
                            continue;
                        }
                    } else {
                        vacate(&d, rel, &mut here, &mut at)?;
                        if let Some(from) = copy {
                            let (_, old_rel) = here.remove(&from).unwrap_or((*id, rel.clone()));
                            if !changed.contains(id) {
                                // A move: the copy moves too, nothing is sent again.
                                std::fs::rename(&from, &d).map_err(|e| io("move", &d, e))?;
                                at.insert(*id, d.clone());
                                continue;
                            }
                            // Moved and changed: the old copy is an old version.
                            put_aside(&from, &old_rel)?;
                        }
                    }
                    let previous = if in_place { previous } else { None };
                    // Read through the catalog's current path: the file may have moved since.
                    // Never describe contents that were not copied: a file not found where
                    // the catalog says makes the drain start over with newer records.
                    let from = reader
                        .path_of(*id)?
                        .map(|r| src.abs(&r))
                        .ok_or(Error::Retry)?;
                    let (c, m) = self
                        .copy_in(
                            src,
                            (&from, *id),
                            &d,
                            previous.as_ref(),
                            &mut keep_previous,
                            report,
                        )?
                        .ok_or(Error::Retry)?;
                    let f = new.files.get_mut(id).expect("listed");
                    f.content = Some(c);
                    f.meta = m.kept(keeping, &f.meta);
                    at.insert(*id, d.clone());
                }
                KIND_SYMLINK => {
                    let t = new.files[id].target.clone().unwrap_or_default();
                    let same = std::fs::read_link(&d).ok().as_deref()
                        == Some(Path::new(OsStr::from_bytes(&t)));
                    if same {
                        here.remove(&d);
                    } else {
                        vacate(&d, rel, &mut here, &mut at)?;
                        std::os::unix::fs::symlink(OsStr::from_bytes(&t), &d)
                            .map_err(|e| io("create", &d, e))?;
                    }
                }
                _ => {
                    // Fifos, sockets and devices live in the metadata file only.
                }
            }
        }
        // 3. What is left of the old tree: old versions; then empty old folders, deepest first.
        let mut left: Vec<(PathBuf, (u64, Vec<u8>))> = here.into_iter().collect();
        left.sort();
        for (p, (x, old_rel)) in left {
            let rel = p
                .strip_prefix(&self.root)
                .map(|r| r.as_os_str().as_bytes())
                .unwrap_or_default();
            if new_by_path.contains_key(rel) {
                continue;
            }
            if lives_on.contains(&x) && at.get(&x) != Some(&p) {
                // An old name of a file that lives on under another.
                let _ = std::fs::remove_file(&p);
                continue;
            }
            put_aside(&p, &old_rel)?;
        }
        for (op, id) in old_paths.iter().rev() {
            let cur = relocate(op, &moved_dirs);
            if kind_of(old, *id) == Some(KIND_DIR) && !new_by_path.contains_key(cur.as_slice()) {
                let _ = std::fs::remove_dir(dst(&cur));
            }
        }
        // 4. Times and modes as far as this folder can hold them (owners and xattrs are in
        // the metadata file; setting them needs root).
        for (rel, id) in paths.iter().rev() {
            let f = &new.files[id];
            if matches!(f.meta.kind, KIND_DIR | KIND_FILE | KIND_SYMLINK) {
                let mut g = f.clone();
                g.xattrs.clear();
                let _ = set_meta(&dst(rel), &g, false);
            }
        }
        sync_tree_dirs(&self.root, paths, new)?;
        Ok(())
    }

    /// Copies file `id` from the drive to `dest` atomically, keeping holes, and returns its
    /// data runs with a hash per run. None when the file is gone (its removal follows).
    fn copy_in(
        &self,
        src: &Source<'_>,
        (from, id): (&Path, u64),
        dest: &Path,
        previous: Option<&Content>,
        keep_previous: &mut dyn FnMut() -> Result<()>,
        report: &mut DrainReport,
    ) -> Result<Option<(Content, VMeta)>> {
        let from = from.to_owned();
        for attempt in 0..8u32 {
            // As the vault's reads: never following a link, never waiting on a fifo that
            // took the file's place.
            let f = match crate::os::open_source(&from) {
                Ok(f) => f,
                Err(_) => return Ok(None),
            };
            let before = f
                .metadata()
                .map_err(|e| Error::io(format!("cannot read {}", from.display()), e))?;
            if !src.ids.may_be(before.ino(), id) || !before.is_file() {
                return Ok(None);
            }
            let tmp = self
                .root
                .join(".tmp")
                .join(format!("mirror-{id}-{}", std::process::id()));
            let out = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e))?;
            out.set_len(before.size())
                .map_err(|e| Error::io("cannot write the mirror", e))?;
            let mut extents = Vec::new();
            let runs = crate::os::data_extents(&f, before.size())
                .map_err(|e| Error::io(format!("cannot read {}", from.display()), e))?;
            let mut buf = vec![0u8; 1 << 20];
            for (start, end) in runs {
                let mut chunks = Vec::new();
                let mut piece = start;
                while piece < end {
                    let piece_end = (piece + PIECE).min(end);
                    let mut h = blake3::Hasher::new();
                    let mut pos = piece;
                    while pos < piece_end {
                        let n = ((piece_end - pos) as usize).min(buf.len());
                        f.read_exact_at(&mut buf[..n], pos)
                            .map_err(|e| Error::io(format!("cannot read {}", from.display()), e))?;
                        out.write_all_at(&buf[..n], pos)
                            .map_err(|e| Error::io("cannot write the mirror", e))?;
                        h.update(&buf[..n]);
                        pos += n as u64;
                        report.bytes_read += n as u64;
                        src.progress
                            .bytes_done
                            .fetch_add(n as u64, Ordering::Relaxed);
                    }
                    chunks.push(ChunkRef {
                        id: *h.finalize().as_bytes(),
                        len: (piece_end - piece) as u32,
                    });
                    piece = piece_end;
                }
                extents.push(Extent {
                    offset: start,
                    chunks,
                });
            }
            let after = f
                .metadata()
                .map_err(|e| Error::io(format!("cannot read {}", from.display()), e))?;
            let torn = after.size() != before.size()
                || after.mtime_nsec() != before.mtime_nsec()
                || after.mtime() != before.mtime()
                || after.ctime_nsec() != before.ctime_nsec()
                || after.ctime() != before.ctime();
            if torn {
                let _ = std::fs::remove_file(&tmp);
                std::thread::sleep(Duration::from_millis(10 << attempt.min(6)));
                continue;
            }
            let meta = journal::Meta::from_std(&after)
                .map(VMeta::from)
                .ok_or_else(|| Error::Format("unknown file type".into()))?;
            let content = Content {
                size: after.size(),
                extents,
            };
            src.progress.files_done.fetch_add(1, Ordering::Relaxed);
            if previous == Some(&content) && dest.exists() {
                // Recorded as changed (a scan is conservative) but the same bytes: the copy
                // there stays, and no old version is made of it.
                drop(out);
                let _ = std::fs::remove_file(&tmp);
                return Ok(Some((content, meta)));
            }
            out.sync_all()
                .map_err(|e| Error::io("cannot write the mirror", e))?;
            drop(out);
            keep_previous()?;
            std::fs::rename(&tmp, dest)
                .map_err(|e| Error::io(format!("cannot write {}", dest.display()), e))?;
            report.files += 1;
            report.bytes_uploaded += after.size();
            return Ok(Some((content, meta)));
        }
        Err(Error::Source {
            path: from,
            detail: "it keeps changing while being copied; it will be taken once it settles".into(),
        })
    }

    /// Removes kept versions older than the configured time.
    fn expire_versions(&self) {
        let dir = self.root.join(VERSIONS_DIR);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let now = std::time::SystemTime::now();
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok());
            if old.is_some_and(|age| age > self.keep) {
                info!("removing old versions {}", e.path().display());
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Whether the file at `p` is the copy the mirror's last tree describes (its size and
/// modification time), not whatever a drain killed midway left under that name. A copy that
/// does not look like one is copied again: never wrong, at worst sent twice.
fn is_copy_of(p: &Path, meta: &crate::format::VMeta) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| {
        m.is_file()
            && m.len() == meta.size
            && m.mtime() * 1_000_000_000 + m.mtime_nsec() == meta.mtime_ns
    })
}

/// fsync every folder of the mirror once (renames into them must survive a power cut).
fn sync_tree_dirs(root: &Path, paths: &[(Vec<u8>, u64)], t: &Tree) -> Result<()> {
    sync_dir(root)?;
    for (rel, id) in paths {
        if t.files[id].meta.kind == KIND_DIR {
            sync_dir(&root.join(OsStr::from_bytes(rel)))?;
        }
    }
    Ok(())
}

fn read_tree(root: &Path) -> Result<Option<(Tree, Position)>> {
    let p = root.join(META_DIR).join("tree");
    let raw = match std::fs::read(&p) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("cannot read {}", p.display()), e)),
    };
    let damaged = |d: String| Error::Damaged {
        object: p.display().to_string(),
        detail: d,
    };
    let cbor = zstd::bulk::decompress(&raw, crate::format::MAX_OBJECT)
        .map_err(|e| damaged(e.to_string()))?;
    let cp: Checkpoint = ciborium::from_reader(&cbor[..]).map_err(|e| damaged(e.to_string()))?;
    let pos = cp.pos.clone();
    Ok(Some((Tree::from_checkpoint(cp), pos)))
}

fn write_tree(store: &Store, t: &Tree, pos: &Position) -> Result<()> {
    let cp = t.to_checkpoint(pos.clone());
    let mut cbor = Vec::new();
    ciborium::into_writer(&cp, &mut cbor).map_err(|e| Error::Format(e.to_string()))?;
    let z = zstd::bulk::compress(&cbor, 3).map_err(|e| Error::Format(e.to_string()))?;
    store.put(&format!("{META_DIR}/tree"), z)
}

/// Restores a mirror's tree into `target`, checking every data run against its hash.
pub fn restore_mirror(
    root: &Path,
    target: &Path,
    paths: &[Vec<u8>],
    owners: bool,
    progress: &Progress,
) -> Result<RestoreReport> {
    let (tree, pos) = read_tree(root)?
        .ok_or_else(|| Error::Format(format!("{} holds no mirrored tree yet", root.display())))?;
    prepare_target(target)?;
    let entries = crate::restore::select(&tree, paths)?;
    let mut report = RestoreReport {
        point_time_ns: pos.time_ns,
        point_seq: pos.seq,
        ..RestoreReport::default()
    };
    let mut first: HashMap<u64, Vec<u8>> = HashMap::new();
    // Files whose copy failed its check: every other name of theirs is refused too.
    let mut refused: HashMap<u64, String> = HashMap::new();
    let mut buf = vec![0u8; 1 << 20];
    for (rel, id) in &entries {
        let f = &tree.files[id];
        let to = target.join(OsStr::from_bytes(rel));
        let from = root.join(OsStr::from_bytes(rel));
        let made: std::io::Result<()> = match f.meta.kind {
            KIND_DIR => {
                report.dirs += 1;
                std::fs::create_dir(&to)
            }
            KIND_SYMLINK => {
                report.symlinks += 1;
                std::os::unix::fs::symlink(
                    OsStr::from_bytes(f.target.as_deref().unwrap_or_default()),
                    &to,
                )
            }
            KIND_FILE => {
                if let Some(e) = refused.get(id) {
                    report.failed.push((rel.clone(), e.clone()));
                    continue;
                }
                if let Some(fst) = first.get(id) {
                    std::fs::hard_link(target.join(OsStr::from_bytes(fst)), &to)
                } else {
                    first.insert(*id, rel.clone());
                    report.files += 1;
                    let c = f.content.clone().unwrap_or_default();
                    match copy_checked(&from, &to, &c, &mut buf, progress) {
                        Ok(()) => {
                            report.bytes += c.data_bytes();
                            Ok(())
                        }
                        Err(e) => {
                            let _ = std::fs::remove_file(&to);
                            refused.insert(*id, e.clone());
                            report.failed.push((rel.clone(), e));
                            continue;
                        }
                    }
                }
            }
            _ => {
                report.other += 1;
                match make_special(&to, f.meta.kind, f.meta.rdev) {
                    Ok(true) => Ok(()),
                    Ok(false) => {
                        report.skipped.push((rel.clone(), NOT_ROOT.into()));
                        continue;
                    }
                    Err(e) => Err(e),
                }
            }
        };
        made.map_err(|e| Error::io(format!("cannot create {}", to.display()), e))?;
    }
    let mut done = std::collections::HashSet::new();
    for (rel, id) in entries.iter().rev() {
        if report.failed.iter().any(|(p, _)| p == rel)
            || report.skipped.iter().any(|(p, _)| p == rel)
            || !done.insert(*id)
        {
            continue;
        }
        let to = target.join(OsStr::from_bytes(rel));
        set_meta(&to, &tree.files[id], owners)
            .map(|_| ())
            .map_err(|e| Error::io(format!("cannot set the attributes of {}", to.display()), e))?;
    }
    if paths.is_empty() {
        if let Some(r) = tree.files.get(&tree.root) {
            let _ = set_meta(target, r, owners);
        }
    }
    let dir = File::open(target)
        .map_err(|e| Error::io(format!("cannot open {}", target.display()), e))?;
    rustix::fs::syncfs(&dir)
        .map_err(|e| Error::io("cannot flush the restored files to disk", e.into()))?;
    Ok(report)
}

fn copy_checked(
    from: &Path,
    to: &Path,
    c: &Content,
    buf: &mut [u8],
    progress: &Progress,
) -> Result<(), String> {
    let src = File::open(from).map_err(|e| format!("the mirror's copy cannot be read: {e}"))?;
    let size = src.metadata().map_err(|e| e.to_string())?.len();
    if size != c.size {
        return Err(format!(
            "the mirror's copy is {size} bytes, the mirror's metadata says {}",
            c.size
        ));
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| e.to_string())?;
    out.set_len(c.size).map_err(|e| e.to_string())?;
    for ext in &c.extents {
        let mut pos = ext.offset;
        for piece in &ext.chunks {
            let end = pos + piece.len as u64;
            let mut h = blake3::Hasher::new();
            while pos < end {
                let n = ((end - pos) as usize).min(buf.len());
                src.read_exact_at(&mut buf[..n], pos)
                    .map_err(|e| e.to_string())?;
                out.write_all_at(&buf[..n], pos)
                    .map_err(|e| e.to_string())?;
                h.update(&buf[..n]);
                pos += n as u64;
                progress.bytes_done.fetch_add(n as u64, Ordering::Relaxed);
            }
            if piece.id != *h.finalize().as_bytes() {
                return Err("the mirror's copy does not match its hash (changed or damaged at the destination)".into());
            }
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(())
}
