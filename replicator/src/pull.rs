//! Pull: a device applies the other devices' changes to its own pocket.
//!
//! Each other device's newest tree (its own chain in the vault) is compared with what this
//! device last took from it (the *base*, kept in `.backpocket/peers/<id>`), path by path.
//! Only paths the other device changed since are looked at, and for each the pocket's own
//! file decides (three-way, by content):
//! - the pocket still holds the base (or nothing where the base had nothing): the other
//!   device's version is applied, a delete included;
//! - the pocket already holds the other device's version: nothing to do (this is how a
//!   change that went round comes back without effect);
//! - both changed: nothing is lost. Modify wins over delete on either side; two different
//!   versions keep both: the newer (modification time, then device id) at the name, the
//!   other as `NAME.sync-conflict-YYYYMMDD-HHMMSS-DEVICE.EXT` (Syncthing's form). Both
//!   devices make the same choice and the same copy name, so they agree after one round.
//!
//! Files are written where the pocket is used (the mount, so the journal records them as any
//! change): into a temporary name beside the file, then renamed over it, so an application
//! holding the old file open never sees it change; a file that changed while it was being
//! fetched is left for the next round. Folders are removed only once empty: files added in a
//! folder the other device deleted stay.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::format::{Content, FileState, KIND_DIR, KIND_FILE, KIND_SYMLINK};
use crate::source::{read_file, ReadOutcome};
use crate::tree::Tree;
use crate::vault::Vault;

/// What a path holds, as far as pulling cares: its kind, mode and contents (a hash of its
/// chunk list, or of a link's target). Times are not compared: a touch alone is not a change.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Print {
    kind: u8,
    perm: u32,
    #[serde(with = "serde_bytes")]
    hash: Vec<u8>,
    /// The modification time, which picks the winner of a conflict.
    mtime_ns: i64,
}

impl PartialEq for Print {
    fn eq(&self, o: &Print) -> bool {
        self.kind == o.kind && self.perm == o.perm && self.hash == o.hash
    }
}

fn content_hash(c: &Content) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(&c.size.to_le_bytes());
    for e in &c.extents {
        h.update(&e.offset.to_le_bytes());
        for ch in &e.chunks {
            h.update(&ch.id);
            h.update(&ch.len.to_le_bytes());
        }
    }
    h.finalize().as_bytes().to_vec()
}

fn print_of(f: &FileState) -> Option<Print> {
    let hash = match f.meta.kind {
        KIND_FILE => content_hash(f.content.as_ref()?),
        KIND_SYMLINK => blake3::hash(f.target.as_deref()?).as_bytes().to_vec(),
        KIND_DIR => Vec::new(),
        // Fifos, sockets and devices are not carried between devices.
        _ => return None,
    };
    Some(Print {
        kind: f.meta.kind,
        perm: if f.meta.kind == KIND_SYMLINK {
            0
        } else {
            f.meta.perm & 0o7777
        },
        hash,
        mtime_ns: f.meta.mtime_ns,
    })
}

/// Every path of a tree with its print (files in flight and damaged ones left out: their
/// contents at this point are not known).
fn prints(tree: &Tree) -> BTreeMap<Vec<u8>, Print> {
    let mut out = BTreeMap::new();
    for (path, id) in tree.paths() {
        if tree.pending.contains_key(&id) || tree.broken.contains(&id) || is_temp(&path) {
            continue;
        }
        if let Some(p) = tree.files.get(&id).and_then(print_of) {
            out.insert(path, p);
        }
    }
    out
}

/// The names of the files a pull writes before renaming them into place.
const TEMP_PREFIX: &[u8] = b".backpocket-pull-";

/// A pull's temporary file (a crash can leave one behind, and a drain may carry it into a
/// tree before it is cleaned up): never taken from another device.
fn is_temp(path: &[u8]) -> bool {
    let name = path.rsplit(|b| *b == b'/').next().unwrap_or(path);
    name.starts_with(TEMP_PREFIX)
}

/// The folders a round put temporary files in, listed (and made durable) before the first
/// one goes there: a round cut short by a crash or a power cut leaves its temporary files
/// behind, and the next round removes them.
fn temps_path(meta_dir: &Path) -> PathBuf {
    meta_dir.join("pull-temporaries")
}

/// Removes what a round cut short left behind.
fn clean_temps(pocket: &Pocket<'_>) -> Result<()> {
    let list = temps_path(pocket.meta_dir);
    let Ok(text) = std::fs::read(&list) else {
        return Ok(());
    };
    // One line per folder; an empty line is the pocket's root (the hex of no bytes).
    let body = text.strip_suffix(b"\n").unwrap_or(&text);
    for line in body.split(|b| *b == b'\n') {
        let Some(rel) = hex::decode(line).ok() else {
            continue;
        };
        let dir = crate::os::join(pocket.root, &rel);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            if name.as_encoded_bytes().starts_with(TEMP_PREFIX) {
                let p = e.path();
                match std::fs::remove_file(&p) {
                    Ok(()) => {
                        info!(file = %p.display(), "removed what a pull cut short left behind")
                    }
                    Err(e) => warn!(file = %p.display(), "cannot remove a pull's leftover: {e}"),
                }
            }
        }
    }
    std::fs::remove_file(&list)
        .map_err(|e| Error::io(format!("cannot remove {}", list.display()), e))
}

/// What was last taken from one device.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Base {
    gen: u64,
    entries: Vec<(serde_bytes::ByteBuf, Print)>,
}

fn base_path(meta_dir: &Path, device: &str) -> PathBuf {
    meta_dir.join("peers").join(device)
}

fn load_base(meta_dir: &Path, device: &str) -> Result<Option<Base>> {
    let p = base_path(meta_dir, device);
    match std::fs::read(&p) {
        Ok(raw) => ciborium::from_reader(&raw[..])
            .map(Some)
            .map_err(|e| Error::Damaged {
                object: p.display().to_string(),
                detail: format!("cannot be read ({e}); remove it to take the device's files again"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("cannot read {}", p.display()), e)),
    }
}

fn save_base(meta_dir: &Path, device: &str, gen: u64, m: &BTreeMap<Vec<u8>, Print>) -> Result<()> {
    let p = base_path(meta_dir, device);
    let dir = p.parent().expect("has a parent");
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let base = Base {
        gen,
        entries: m
            .iter()
            .map(|(k, v)| (serde_bytes::ByteBuf::from(k.clone()), v.clone()))
            .collect(),
    };
    let mut buf = Vec::new();
    ciborium::into_writer(&base, &mut buf).map_err(|e| Error::Format(e.to_string()))?;
    let tmp = p.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| Error::io(format!("cannot write {}", p.display()), e))
}

/// Records `tree` (device `device`'s, at `gen`) as what this pocket holds of it: after
/// `init --join` restored it, nothing of it is new.
pub fn record_base(meta_dir: &Path, device: &str, gen: u64, tree: &Tree) -> Result<()> {
    save_base(meta_dir, device, gen, &prints(tree))
}

/// One conflict: both devices changed `path`; the version that lost is at `copy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub path: Vec<u8>,
    pub copy: Vec<u8>,
    /// The device whose version went to the copy.
    pub loser: String,
}

/// What `devices` shows of each device: the newest log object taken from it.
pub fn taken(meta_dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(meta_dir.join("peers")) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            continue;
        }
        if let Ok(Some(b)) = load_base(meta_dir, &name) {
            out.insert(name, b.gen);
        }
    }
    out
}

/// Conflicts go to `.backpocket/conflicts.log`, one line each (time, path, copy, device), for
/// `devices` and `journal status` to list.
fn log_conflicts(meta_dir: &Path, conflicts: &[Conflict]) {
    if conflicts.is_empty() {
        return;
    }
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(meta_dir.join("conflicts.log"))?;
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        for c in conflicts {
            writeln!(
                f,
                "{now}\t{}\t{}\t{}",
                String::from_utf8_lossy(&c.path),
                String::from_utf8_lossy(&c.copy),
                c.loser
            )?;
        }
        f.sync_all()
    })();
    if let Err(e) = res {
        warn!("cannot note the conflicts in {}: {e}", meta_dir.display());
    }
}

/// The newest `n` conflicts noted: (time, path, copy, device whose version is the copy).
pub fn conflicts(meta_dir: &Path, n: usize) -> Vec<(String, String, String, String)> {
    let text = std::fs::read_to_string(meta_dir.join("conflicts.log")).unwrap_or_default();
    let all: Vec<(String, String, String, String)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split('\t');
            Some((
                it.next()?.to_owned(),
                it.next()?.to_owned(),
                it.next()?.to_owned(),
                it.next()?.to_owned(),
            ))
        })
        .collect();
    all[all.len().saturating_sub(n)..].to_vec()
}

/// How many conflicts were noted in all.
pub fn conflict_count(meta_dir: &Path) -> usize {
    std::fs::read_to_string(meta_dir.join("conflicts.log"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// What a pull did.
#[derive(Clone, Debug, Default)]
pub struct PullReport {
    /// Devices looked at, and those whose changes were taken.
    pub devices: usize,
    pub taken_from: Vec<String>,
    pub written: usize,
    pub removed: usize,
    pub conflicts: Vec<Conflict>,
    /// Paths left for the next round: changed here while being applied...
    pub deferred: usize,
    /// ...or that could not be applied (an error, logged).
    pub failed: usize,
    /// Per device (by id), the last of its changes this round applied here: the path, and
    /// whether it was a removal. What `journal status` shows as who changed what.
    pub last: BTreeMap<String, (Vec<u8>, bool)>,
}

/// The pocket as the pull sees it: where to write, and who this device is.
pub struct Pocket<'a> {
    /// Where the pocket is used: the mount while mounted.
    pub root: &'a Path,
    pub meta_dir: &'a Path,
    /// This device's name (for the copies of its versions that lose a conflict).
    pub name: &'a str,
    /// Asked before each change: whether `root` is still the pocket (the mount may end at
    /// any moment, and its bare mountpoint must never be written).
    pub still_there: &'a dyn Fn() -> bool,
}

impl std::fmt::Debug for Pocket<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pocket")
            .field("root", &self.root)
            .field("name", &self.name)
            .finish()
    }
}

/// Takes every other device's changes that this pocket has not taken yet. `devices` is the
/// vault's list (read by the caller now and then: who joined, who was removed); `seen` holds
/// the newest log object already taken per device (kept by the caller across rounds), so a
/// round where nobody wrote costs a listing of each device's log.
pub fn pull(
    vault: &Vault,
    pocket: &Pocket<'_>,
    devices: &[crate::devices::DeviceInfo],
    seen: &mut BTreeMap<String, u64>,
) -> Result<PullReport> {
    let mut report = PullReport::default();
    if !vault.has_devices() {
        return Ok(report);
    }
    // Taken before the check: if the pocket is still there after, this was its device.
    let root_dev = device_of(pocket.root);
    if !(pocket.still_there)() {
        return Ok(report);
    }
    clean_temps(pocket)?;
    let me = vault.device().to_owned();
    let my_chain = match devices.iter().find(|d| d.record.id == me) {
        Some(d) if !d.first => me.clone(),
        _ => String::new(),
    };
    let mut index_loaded = false;
    let temp_dirs = std::cell::RefCell::new(BTreeSet::new());
    for d in devices {
        if d.record.id == me || d.record.removed_ns.is_some() {
            continue;
        }
        report.devices += 1;
        let id = d.record.id.clone();
        let chain = if d.first { "" } else { id.as_str() };
        // One listing of its log: whether it wrote since.
        let head_gen = vault.chain_head(chain)?;
        if seen.get(&id).is_some_and(|g| *g >= head_gen) {
            continue;
        }
        let base = load_base(pocket.meta_dir, &id)?;
        if base.as_ref().is_some_and(|b| b.gen >= head_gen) {
            seen.insert(id, head_gen);
            continue;
        }
        let Some((tree, head)) = vault.load_chain_tree(chain)? else {
            continue;
        };
        if !index_loaded {
            // Their packs: what the index knew at the last round may not hold them yet.
            vault.load_index()?;
            index_loaded = true;
        }
        let theirs = prints(&tree);
        let base: BTreeMap<Vec<u8>, Print> = match base {
            Some(b) => b
                .entries
                .into_iter()
                .map(|(k, v)| (k.into_vec(), v))
                .collect(),
            None => first_base(vault, &d.record, chain, &theirs)?,
        };
        let conflicts_before = report.conflicts.len();
        let mut ctx = Apply {
            vault,
            gone_there: gone_there(&base, &theirs),
            pocket,
            tree: &tree,
            their_name: &d.record.name,
            their_id: &id,
            my_id: &me,
            my_chain: &my_chain,
            temp_dirs: &temp_dirs,
            mine_before: None,
            looked_at: BTreeSet::new(),
            unsynced: Default::default(),
            root_dev,
            report: &mut report,
        };
        let kept = ctx.merge(&base, &theirs);
        // What was applied is on the drive before the base says it was taken: a power cut
        // must not leave a base ahead of the pocket (the lost change would then look like
        // this device undoing it, and go back to the others as such).
        ctx.make_durable()?;
        // What was left for later stays as the base had it, and the device is looked at
        // again next round (gen 0: not all of it taken).
        let whole = kept.is_empty();
        let mut next = theirs;
        for p in kept {
            match base.get(&p) {
                Some(b) => next.insert(p, b.clone()),
                None => next.remove(&p),
            };
        }
        log_conflicts(pocket.meta_dir, &report.conflicts[conflicts_before..]);
        save_base(
            pocket.meta_dir,
            &id,
            if whole { head.gen } else { 0 },
            &next,
        )?;
        report.taken_from.push(d.record.name.clone());
        if whole {
            seen.insert(id, head.gen);
        } else {
            seen.remove(&id);
        }
    }
    // Every temporary file was renamed into place or removed; the list goes (and anything a
    // failed write could not remove with it).
    if !temp_dirs.borrow().is_empty() {
        clean_temps(pocket)?;
    }
    Ok(report)
}

/// The base for a device met for the first time: what it started from (a device that joined
/// took the first pocket's tree at a log object its record names; the first pocket started
/// from nothing), except where this device's own log holds a version that the other
/// device's history went through: that version is behind theirs, not beside it (they took it
/// from here, then changed or removed it).
fn first_base(
    vault: &Vault,
    record: &crate::devices::DeviceRecord,
    chain: &str,
    theirs: &BTreeMap<Vec<u8>, Print>,
) -> Result<BTreeMap<Vec<u8>, Print>> {
    let mut base = match &record.started_from {
        Some((from, gen)) => vault
            .chain_tree_at(from, *gen)?
            .map(|t| prints(&t))
            .unwrap_or_default(),
        None => BTreeMap::new(),
    };
    let mine = match vault.load_tree(None)? {
        Some((t, _)) => prints(&t),
        None => return Ok(base),
    };
    // Only where the two differ is there anything to decide.
    let differ: BTreeMap<&Vec<u8>, &Print> = mine
        .iter()
        .filter(|(p, m)| theirs.get(*p) != Some(*m))
        .collect();
    if differ.is_empty() {
        return Ok(base);
    }
    let mut seen_here: BTreeSet<Vec<u8>> = BTreeSet::new();
    vault.replay_chain(chain, true, &mut |tree, _, _| {
        for (path, m) in &differ {
            if seen_here.contains(*path) {
                continue;
            }
            let had = tree
                .lookup(path)
                .and_then(|id| tree.files.get(&id))
                .and_then(print_of);
            if had.as_ref() == Some(*m) {
                seen_here.insert((*path).clone());
            }
        }
        Ok(())
    })?;
    for p in seen_here {
        if let Some(m) = mine.get(&p) {
            base.insert(p, m.clone());
        }
    }
    Ok(base)
}

struct Apply<'a, 'p> {
    vault: &'a Vault,
    /// The paths the other device removed or moved away since the base, by their print
    /// there before: a file here at a name the base lacks with one of these prints, whose old
    /// name is gone here too, was moved here and not changed.
    gone_there: HashMap<Vec<u8>, Vec<(Vec<u8>, Print)>>,
    pocket: &'a Pocket<'p>,
    tree: &'a Tree,
    their_name: &'a str,
    their_id: &'a str,
    my_id: &'a str,
    /// This device's own chain in the vault ("" for the first pocket's `log/`).
    my_chain: &'a str,
    /// The folders this round listed in [`temps_path`] (shared by the devices of a round).
    temp_dirs: &'a std::cell::RefCell<BTreeSet<Vec<u8>>>,
    /// The versions this device's own chain held at each path this round looks at, since
    /// its newest checkpoint: read once, when a path first needs it.
    mine_before: Option<HashMap<Vec<u8>, Vec<Print>>>,
    /// The paths this round looks at.
    looked_at: BTreeSet<Vec<u8>>,
    /// Folders whose entries changed, and entries whose mode changed, not yet fsynced.
    unsynced: std::cell::RefCell<BTreeSet<PathBuf>>,
    /// The device the pocket's root was on when the round began (the mount's).
    root_dev: Option<u64>,
    report: &'a mut PullReport,
}

/// The pocket's own file at a path: its print and what to check before replacing it.
struct Local {
    print: Option<Print>,
    stat: Option<std::fs::Metadata>,
}

impl Apply<'_, '_> {
    /// Applies the other device's changes since `base`; returns the paths left for later.
    fn merge(
        &mut self,
        base: &BTreeMap<Vec<u8>, Print>,
        theirs: &BTreeMap<Vec<u8>, Print>,
    ) -> Vec<Vec<u8>> {
        // Their renames first: the file here moves to the new name, so an edit made here
        // meanwhile follows it instead of staying behind at the old name.
        let mut followed: BTreeSet<Vec<u8>> = BTreeSet::new();
        for (old, new) in renames(base, theirs) {
            if !(self.pocket.still_there)() {
                break;
            }
            match self.follow_rename(old, new, &base[old]) {
                Ok(true) => {
                    followed.insert(old.clone());
                    followed.insert(new.clone());
                }
                // Not a plain case here: the removal and the addition it also is decide.
                Ok(false) => {}
                Err(e) => {
                    warn!(path = %String::from_utf8_lossy(old), "cannot follow the other device's rename: {e}")
                }
            }
        }
        let changed: BTreeSet<&Vec<u8>> = base
            .keys()
            .chain(theirs.keys())
            .filter(|p| base.get(*p) != theirs.get(*p) && !followed.contains(*p))
            .collect();
        self.looked_at = changed.iter().map(|p| (*p).clone()).collect();
        let mut later = Vec::new();
        let failed_before = self.report.failed;
        let mut removals: Vec<(&Vec<u8>, &Print)> = Vec::new();
        // Parents before children (a path sorts after its folder's).
        for path in changed {
            if !(self.pocket.still_there)() {
                later.push(path.clone());
                continue;
            }
            let (b, t) = (base.get(path), theirs.get(path));
            let result = match t {
                Some(t) => self.take(path, b, t),
                None => {
                    // Removals last, deepest first, so folders are empty when their turn comes.
                    removals.push((path, b.expect("changed: in one of the two")));
                    Ok(true)
                }
            };
            match result {
                Ok(true) => {}
                Ok(false) => later.push(path.clone()),
                Err(e) => {
                    warn!(path = %String::from_utf8_lossy(path), "cannot take the other device's change: {e}");
                    self.report.failed += 1;
                    later.push(path.clone());
                }
            }
        }
        for (path, b) in removals.into_iter().rev() {
            if !(self.pocket.still_there)() {
                later.push(path.clone());
                continue;
            }
            match self.remove(path, b) {
                Ok(true) => {}
                Ok(false) => later.push(path.clone()),
                Err(e) => {
                    warn!(path = %String::from_utf8_lossy(path), "cannot take the other device's removal: {e}");
                    self.report.failed += 1;
                    later.push(path.clone());
                }
            }
        }
        let failed = self.report.failed - failed_before;
        self.report.deferred += later.len().saturating_sub(failed);
        later
    }

    fn abs(&self, path: &[u8]) -> PathBuf {
        crate::os::join(self.pocket.root, path)
    }

    /// Lists the folder of `at` in [`temps_path`] before a temporary file goes there.
    fn note_temp_dir(&self, at: &[u8]) -> Result<()> {
        let dir = match at.iter().rposition(|b| *b == b'/') {
            Some(i) => at[..i].to_vec(),
            None => Vec::new(),
        };
        if self.temp_dirs.borrow().contains(&dir) {
            return Ok(());
        }
        let list = temps_path(self.pocket.meta_dir);
        let io = |e| Error::io(format!("cannot write {}", list.display()), e);
        if let Some(parent) = list.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let new = !list.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&list)
            .map_err(io)?;
        f.write_all(format!("{}\n", hex::encode(&dir)).as_bytes())
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        if new {
            if let Some(parent) = list.parent() {
                sync_path(parent).map_err(io)?;
            }
        }
        self.temp_dirs.borrow_mut().insert(dir);
        Ok(())
    }

    /// `p`'s folder gained, lost or renamed an entry.
    fn entry_changed(&self, p: &Path) {
        if let Some(dir) = p.parent() {
            self.unsynced.borrow_mut().insert(dir.to_owned());
        }
    }

    /// fsyncs what this round changed (through the mount: its fsync reaches the drive and
    /// the journal).
    fn make_durable(&self) -> Result<()> {
        for p in std::mem::take(&mut *self.unsynced.borrow_mut()) {
            match sync_path(&p) {
                Ok(()) => {}
                // Removed since by the user: nothing of it to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // A mode this user cannot open (0o000 as the mode taken): its change stays
                // as durable as the file system makes an inode's on its own.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                Err(e) => return Err(Error::io(format!("cannot fsync {}", p.display()), e)),
            }
        }
        Ok(())
    }

    fn local(&self, path: &[u8]) -> Result<Local> {
        let p = self.abs(path);
        let stat = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Local {
                    print: None,
                    stat: None,
                })
            }
            Err(e) => return Err(Error::io(format!("cannot look at {}", p.display()), e)),
        };
        let Some(meta) = journal::Meta::from_std(&stat) else {
            return Ok(Local {
                print: None,
                stat: Some(stat),
            });
        };
        let mut f = FileState {
            id: 0,
            meta: meta.into(),
            target: None,
            xattrs: Vec::new(),
            content: None,
        };
        if stat.file_type().is_symlink() {
            let t = std::fs::read_link(&p)
                .map_err(|e| Error::io(format!("cannot read {}", p.display()), e))?;
            f.target = Some(crate::os::name_bytes(t.as_os_str()).to_vec());
        } else if stat.is_file() {
            let chunker = self.vault.chunker();
            let ids = journal::DriveIds::any();
            let mut sink = |c: &[u8]| {
                Ok(crate::format::ChunkRef {
                    id: self.vault.chunk_id(c),
                    len: c.len() as u32,
                })
            };
            match read_file(&p, 0, &ids, &chunker, &mut sink)? {
                ReadOutcome::Done(c, _) => f.content = Some(c),
                // Changing or gone right now: not a state to decide on.
                ReadOutcome::Gone | ReadOutcome::Torn => {
                    return Err(Error::Retry);
                }
            }
        }
        Ok(Local {
            print: print_of(&f),
            stat: Some(stat),
        })
    }

    /// The other device has `t` at `path` (the base had `b`). False: left for later.
    fn take(&mut self, path: &[u8], b: Option<&Print>, t: &Print) -> Result<bool> {
        let local = match self.local(path) {
            Ok(l) => l,
            Err(Error::Retry) => return Ok(false),
            Err(e) => return Err(e),
        };
        let mine = local.print.as_ref();
        if mine == Some(t) {
            return Ok(true);
        }
        let uncarried = mine.is_none() && local.stat.is_some();
        if mine.is_some() && mine != b && self.was_mine(path, t)? {
            // Both changed, and theirs is a version this device had here and moved on from:
            // they took it from here and carried it back before taking what followed. It is
            // behind ours, not beside it, and in this device's history already. (Not asked
            // where the file is gone here: a version there of a path removed here may as well
            // be theirs anew, the same bytes made again, and a change wins over a removal.)
            return Ok(true);
        }
        if local.stat.is_none() || (mine == b && !uncarried) {
            // Unchanged here since the base, or removed here (a change there wins over a
            // removal here).
            if t.kind == KIND_DIR {
                if local.stat.as_ref().is_some_and(|s| s.is_dir()) {
                    // Only its mode differs.
                    self.set_mode(path, t)?;
                } else if local.stat.is_none() {
                    self.make_dir(path, t)?;
                } else {
                    // A file here where they have a folder: the file moves aside.
                    self.conflict_aside(path, &local, self.my_name_owned())?;
                    self.make_dir(path, t)?;
                }
                return Ok(true);
            }
            return self.write(path, t, local.stat.as_ref(), None);
        }
        // Theirs where this device only renamed: taken as if unchanged here (their change to
        // the file reaches its new name).
        if b.is_none() && mine.is_some_and(|m| m.kind != KIND_DIR && self.renamed_here_unchanged(m))
        {
            return self.write(path, t, local.stat.as_ref(), None);
        }
        // Both changed.
        let Some(m) = mine else {
            // Something here that is not carried (a fifo): leave it, keep theirs beside.
            let copy = self.copy_name(path, self.their_name, t.mtime_ns);
            return self.write(&copy, t, None, Some((path, self.their_name)));
        };
        if m.kind == KIND_DIR || t.kind == KIND_DIR {
            if m.kind == KIND_DIR && t.kind == KIND_DIR {
                // Modes only: the newer wins, no copy.
                if self.they_win(m, t) {
                    self.set_mode(path, t)?;
                }
                return Ok(true);
            }
            if m.kind == KIND_DIR {
                // Their file beside our folder.
                let copy = self.copy_name(path, self.their_name, t.mtime_ns);
                return self.write(&copy, t, None, Some((path, self.their_name)));
            }
            self.conflict_aside(path, &local, self.my_name_owned())?;
            self.make_dir(path, t)?;
            return Ok(true);
        }
        if m.kind == t.kind && m.hash == t.hash {
            // Same contents, modes differ: the newer mode, no copy.
            if self.they_win(m, t) {
                self.set_mode(path, t)?;
            }
            return Ok(true);
        }
        if self.they_win(m, t) {
            let stat = local.stat.as_ref();
            let my_copy = self.copy_name(path, self.pocket.name, m.mtime_ns);
            // Ours goes aside first (a rename: nothing is copied, nothing lost if cut here).
            let from = self.abs(path);
            if !same_stat(stat, &from) {
                return Ok(false);
            }
            let to = self.abs(&my_copy);
            std::fs::rename(&from, &to)
                .map_err(|e| Error::io(format!("cannot move {} aside", from.display()), e))?;
            self.entry_changed(&to);
            self.note_conflict(path, &my_copy, self.pocket.name);
            self.write(path, t, None, None)
        } else {
            let copy = self.copy_name(path, self.their_name, t.mtime_ns);
            self.write(&copy, t, None, Some((path, self.their_name)))
        }
    }

    /// They renamed `old` to `new` (its print `b` in the base): the file here moves too,
    /// edited here or not. False when this is not the plain case (gone here, something at the
    /// new name here, changed while looked at).
    fn follow_rename(&mut self, old: &[u8], new: &[u8], b: &Print) -> Result<bool> {
        let (from, to) = (self.abs(old), self.abs(new));
        if std::fs::symlink_metadata(&to).is_ok() {
            return Ok(false);
        }
        let local = match self.local(old) {
            Ok(l) => l,
            Err(Error::Retry) => return Ok(false),
            Err(e) => return Err(e),
        };
        let Some(mine) = &local.print else {
            return Ok(false);
        };
        if mine.kind == KIND_DIR {
            return Ok(false);
        }
        self.make_parents(new)?;
        if !same_stat(local.stat.as_ref(), &from) || std::fs::symlink_metadata(&to).is_ok() {
            return Ok(false);
        }
        std::fs::rename(&from, &to).map_err(|e| {
            Error::io(
                format!("cannot move {} to {}", from.display(), to.display()),
                e,
            )
        })?;
        self.entry_changed(&from);
        self.entry_changed(&to);
        if mine != b {
            info!(
                from = %String::from_utf8_lossy(old),
                to = %String::from_utf8_lossy(new),
                "the other device renamed a file edited here: the edit follows the new name"
            );
        }
        self.took(new, false);
        Ok(true)
    }

    /// Whether the file here (`mine`, at a name the base does not have) is one this device
    /// moved and did not change: its print is the one a path had in the base that the other
    /// device moved away or removed since, and that path is gone here too (both moved it; they
    /// changed it too).
    fn renamed_here_unchanged(&self, mine: &Print) -> bool {
        self.gone_there.get(&mine.hash).is_some_and(|olds| {
            olds.iter()
                .any(|(q, b)| b == mine && std::fs::symlink_metadata(self.abs(q)).is_err())
        })
    }

    /// Whether this device's own chain held `t` at `path` since its newest checkpoint (at
    /// least 256 drains back). Read once per round, for every path the round looks at.
    fn was_mine(&mut self, path: &[u8], t: &Print) -> Result<bool> {
        if self.mine_before.is_none() {
            let mut seen: HashMap<Vec<u8>, Vec<Print>> = HashMap::new();
            let looked_at = &self.looked_at;
            self.vault
                .replay_chain(self.my_chain, false, &mut |tree, _, _| {
                    for p in looked_at {
                        let had = tree
                            .lookup(p)
                            .and_then(|id| tree.files.get(&id))
                            .and_then(print_of);
                        if let Some(had) = had {
                            let versions = seen.entry(p.clone()).or_default();
                            if !versions.contains(&had) {
                                versions.push(had);
                            }
                        }
                    }
                    Ok(())
                })?;
            self.mine_before = Some(seen);
        }
        Ok(self
            .mine_before
            .as_ref()
            .and_then(|m| m.get(path))
            .is_some_and(|v| v.contains(t)))
    }

    fn my_name_owned(&self) -> String {
        self.pocket.name.to_owned()
    }

    /// The newer version wins; at the same time, the greater device id (both sides agree).
    fn they_win(&self, mine: &Print, theirs: &Print) -> bool {
        (theirs.mtime_ns, self.their_id) > (mine.mtime_ns, self.my_id)
    }

    fn note_conflict(&mut self, path: &[u8], copy: &[u8], loser: &str) {
        info!(
            path = %String::from_utf8_lossy(path),
            copy = %String::from_utf8_lossy(copy),
            loser,
            "conflict: both devices changed the file; both versions kept"
        );
        self.report.conflicts.push(Conflict {
            path: path.to_vec(),
            copy: copy.to_vec(),
            loser: loser.to_owned(),
        });
    }

    /// Moves what the pocket has at `path` to a conflict copy's name.
    fn conflict_aside(&mut self, path: &[u8], local: &Local, who: String) -> Result<()> {
        let mtime = local
            .print
            .as_ref()
            .map(|p| p.mtime_ns)
            .unwrap_or_else(crate::vault::now_ns);
        let copy = self.copy_name(path, &who, mtime);
        let (from, to) = (self.abs(path), self.abs(&copy));
        std::fs::rename(&from, &to)
            .map_err(|e| Error::io(format!("cannot move {} aside", from.display()), e))?;
        self.entry_changed(&to);
        self.note_conflict(path, &copy, &who);
        Ok(())
    }

    /// `NAME.sync-conflict-YYYYMMDD-HHMMSS-DEVICE.EXT`, the time being the losing version's.
    fn copy_name(&self, path: &[u8], device: &str, mtime_ns: i64) -> Vec<u8> {
        let (dir, name) = match path.iter().rposition(|b| *b == b'/') {
            Some(i) => (&path[..=i], &path[i + 1..]),
            None => (&path[..0], path),
        };
        let (stem, ext) = match name.iter().rposition(|b| *b == b'.') {
            Some(i) if i > 0 => (&name[..i], &name[i..]),
            _ => (name, &name[..0]),
        };
        let t = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(mtime_ns.max(0) as u64 / 1_000_000_000);
        let stamp: String = humantime::format_rfc3339_seconds(t)
            .to_string()
            .chars()
            .filter(|c| c.is_ascii_digit() || *c == 'T')
            .map(|c| if c == 'T' { '-' } else { c })
            .collect();
        let device: String = device
            .chars()
            .map(|c| if c == '/' || c == '.' { '_' } else { c })
            .collect();
        let mut out = dir.to_vec();
        out.extend_from_slice(stem);
        out.extend_from_slice(format!(".sync-conflict-{stamp}-{device}").as_bytes());
        out.extend_from_slice(ext);
        out
    }

    fn make_dir(&mut self, path: &[u8], t: &Print) -> Result<()> {
        self.make_parents(path)?;
        let p = self.abs(path);
        match make_dir_in_pocket(self.root_dev, &p) {
            Ok(()) => self.entry_changed(&p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(format!("cannot make {}", p.display()), e)),
        }
        self.set_mode(path, t)?;
        self.took(path, false);
        Ok(())
    }

    /// Makes the folders above `path` that are missing, each with the mode it has in their
    /// tree (a folder made with the process's default mode would count as changed here, and
    /// its newer time would then keep that mode against theirs).
    fn make_parents(&mut self, path: &[u8]) -> Result<()> {
        let mut end = 0;
        while let Some(i) = path[end..].iter().position(|b| *b == b'/') {
            end += i;
            let dir = &path[..end];
            end += 1;
            let p = self.abs(dir);
            match make_dir_in_pocket(self.root_dev, &p) {
                Ok(()) => {
                    self.entry_changed(&p);
                    let theirs = self
                        .tree
                        .lookup(dir)
                        .and_then(|id| self.tree.files.get(&id))
                        .and_then(print_of)
                        .filter(|t| t.kind == KIND_DIR);
                    if let Some(t) = theirs {
                        self.set_mode(dir, &t)?;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(format!("cannot make {}", p.display()), e)),
            }
        }
        Ok(())
    }

    fn set_mode(&self, path: &[u8], t: &Print) -> Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let p = self.abs(path);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(t.perm))
                .map_err(|e| Error::io(format!("cannot set the mode of {}", p.display()), e))?;
            self.unsynced.borrow_mut().insert(p);
        }
        #[cfg(not(unix))]
        let _ = (path, t);
        Ok(())
    }

    /// Writes their version of the file at their `path` to `at`: into a temporary name
    /// beside it, then renamed over what is there if that is still `expect` (None: nothing
    /// may be there). `conflict` names the path and device a copy is made for.
    fn write(
        &mut self,
        at: &[u8],
        t: &Print,
        expect: Option<&std::fs::Metadata>,
        conflict: Option<(&[u8], &str)>,
    ) -> Result<bool> {
        let src_path = conflict.map(|(p, _)| p).unwrap_or(at);
        let Some(f) = self
            .tree
            .lookup(src_path)
            .and_then(|id| self.tree.files.get(&id))
        else {
            return Ok(true);
        };
        let dest = self.abs(at);
        let dir = dest.parent().expect("a path in the pocket").to_owned();
        self.make_parents(at)?;
        self.note_temp_dir(at)?;
        let tmp = dir.join(format!(
            "{}{}",
            String::from_utf8_lossy(TEMP_PREFIX),
            crate::vault::random_hex(8)?
        ));
        let made = self.fill(&tmp, f, t);
        if let Err(e) = made {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        // Still what was looked at? (Otherwise it changed here meanwhile: next round.)
        let ok = match expect {
            Some(_) => same_stat(expect, &dest),
            None => std::fs::symlink_metadata(&dest).is_err(),
        };
        if !ok {
            let _ = std::fs::remove_file(&tmp);
            return Ok(false);
        }
        std::fs::rename(&tmp, &dest).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(format!("cannot put {} in place", dest.display()), e)
        })?;
        self.entry_changed(&dest);
        if let Some((path, who)) = conflict {
            self.note_conflict(path, at, who);
        }
        self.took(at, false);
        Ok(true)
    }

    /// Makes the file `f` (their version) at `tmp`, contents checked chunk by chunk.
    fn fill(&self, tmp: &Path, f: &FileState, t: &Print) -> Result<()> {
        let io = |e: std::io::Error| Error::io(format!("cannot write {}", tmp.display()), e);
        if t.kind == KIND_SYMLINK {
            return make_link(self.root_dev, f.target.as_deref().unwrap_or_default(), tmp)
                .map_err(io);
        }
        let file = new_file_in_pocket(self.root_dev, tmp).map_err(io)?;
        if let Some(c) = &f.content {
            for e in &c.extents {
                let mut off = e.offset;
                for ch in &e.chunks {
                    let data = self.vault.read_chunk(&ch.id)?;
                    crate::os::write_all_at(&file, &data, off).map_err(io)?;
                    off += data.len() as u64;
                }
            }
            file.set_len(c.size).map_err(io)?;
        }
        let mut st = f.clone();
        st.xattrs.clear();
        crate::restore::set_meta(tmp, &st, false).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(())
    }

    /// Counts a change of theirs applied at `path` (a removal or not).
    fn took(&mut self, path: &[u8], removed: bool) {
        if removed {
            self.report.removed += 1;
        } else {
            self.report.written += 1;
        }
        self.report
            .last
            .insert(self.their_id.to_owned(), (path.to_vec(), removed));
    }

    /// The other device removed `path` (the base had `b`): removed here too if unchanged.
    fn remove(&mut self, path: &[u8], b: &Print) -> Result<bool> {
        let p = self.abs(path);
        if b.kind == KIND_DIR {
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {}
                _ => return Ok(true),
            }
            // Only an empty folder goes: what was added in it here stays.
            return match std::fs::remove_dir(&p) {
                Ok(()) => {
                    self.entry_changed(&p);
                    self.took(path, true);
                    Ok(true)
                }
                Err(_) => Ok(true),
            };
        }
        let local = match self.local(path) {
            Ok(l) => l,
            Err(Error::Retry) => return Ok(false),
            Err(e) => return Err(e),
        };
        if local.print.as_ref() != Some(b) {
            // Gone here too, or changed here: a change wins over a removal.
            return Ok(true);
        }
        if !same_stat(local.stat.as_ref(), &p) {
            return Ok(false);
        }
        std::fs::remove_file(&p)
            .map_err(|e| Error::io(format!("cannot remove {}", p.display()), e))?;
        self.entry_changed(&p);
        self.took(path, true);
        Ok(true)
    }
}

/// Paths by what they hold (kind, mode, contents).
type ByPrint<'m> = HashMap<(u8, u32, Vec<u8>), Vec<&'m Vec<u8>>>;

/// Their renames since the base: a file or link gone there and one new there with the same
/// print, each the only one of its print among the gone and the new (a rename keeps the
/// contents; anything less sure stays a removal and an addition).
fn renames<'m>(
    base: &'m BTreeMap<Vec<u8>, Print>,
    theirs: &'m BTreeMap<Vec<u8>, Print>,
) -> Vec<(&'m Vec<u8>, &'m Vec<u8>)> {
    let key = |p: &Print| (p.kind, p.perm, p.hash.clone());
    let mut gone: ByPrint = HashMap::new();
    for (path, b) in base {
        if b.kind != KIND_DIR && !theirs.contains_key(path) {
            gone.entry(key(b)).or_default().push(path);
        }
    }
    let mut new: ByPrint = HashMap::new();
    for (path, t) in theirs {
        if t.kind != KIND_DIR && !base.contains_key(path) {
            new.entry(key(t)).or_default().push(path);
        }
    }
    let mut out: Vec<(&Vec<u8>, &Vec<u8>)> = gone
        .iter()
        .filter_map(
            |(k, olds)| match (olds.as_slice(), new.get(k).map(Vec::as_slice)) {
                ([old], Some([to])) => Some((*old, *to)),
                _ => None,
            },
        )
        .collect();
    out.sort();
    out
}

/// The paths the other device removed (or moved away) since the base, files and links, by
/// their print in the base's contents.
fn gone_there(
    base: &BTreeMap<Vec<u8>, Print>,
    theirs: &BTreeMap<Vec<u8>, Print>,
) -> HashMap<Vec<u8>, Vec<(Vec<u8>, Print)>> {
    let mut out: HashMap<Vec<u8>, Vec<(Vec<u8>, Print)>> = HashMap::new();
    for (path, b) in base {
        if b.kind != KIND_DIR && !theirs.contains_key(path) {
            out.entry(b.hash.clone())
                .or_default()
                .push((path.clone(), b.clone()));
        }
    }
    out
}

/// fsync of a file or folder by its path.
#[cfg(unix)]
fn sync_path(p: &Path) -> std::io::Result<()> {
    std::fs::File::open(p)?.sync_all()
}

/// Windows opens no folder for fsync this way, and NTFS orders its metadata in its log.
#[cfg(not(unix))]
fn sync_path(_p: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn make_link(root_dev: Option<u64>, target: &[u8], at: &Path) -> std::io::Result<()> {
    let (dir, name) = pocket_folder_of(root_dev, at)?;
    rustix::fs::symlinkat(&*crate::os::os_name(target), &dir, name)?;
    Ok(())
}

/// The device `p` is on.
#[cfg(unix)]
fn device_of(p: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| m.dev())
}

#[cfg(not(unix))]
fn device_of(_p: &Path) -> Option<u64> {
    None
}

/// The folder `p` is to be made in, opened, and `p`'s name, when that folder is on the
/// pocket's device (`root_dev`, the mount's). The mount may end at any moment, and the same
/// path then leads into the bare mountpoint, which must never be written; what is made
/// through this descriptor goes into the mount, or fails once it is gone.
#[cfg(unix)]
fn pocket_folder_of(
    root_dev: Option<u64>,
    p: &Path,
) -> std::io::Result<(rustix::fd::OwnedFd, &std::ffi::OsStr)> {
    use rustix::fs::{Mode, OFlags};
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    let dir = rustix::fs::open(
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if let Some(dev) = root_dev {
        if rustix::fs::fstat(&dir)?.st_dev as u64 != dev {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the pocket's mount is gone",
            ));
        }
    }
    Ok((dir, name))
}

/// A folder made at `p` in the pocket ([`pocket_folder_of`]), with every mode bit the
/// process's mask lets through (set as theirs after).
#[cfg(unix)]
fn make_dir_in_pocket(root_dev: Option<u64>, p: &Path) -> std::io::Result<()> {
    let (dir, name) = pocket_folder_of(root_dev, p)?;
    rustix::fs::mkdirat(&dir, name, rustix::fs::Mode::from_raw_mode(0o777))?;
    Ok(())
}

#[cfg(not(unix))]
fn make_dir_in_pocket(_root_dev: Option<u64>, p: &Path) -> std::io::Result<()> {
    std::fs::create_dir(p)
}

/// A new file at `p` in the pocket ([`pocket_folder_of`]), for writing; its mode is set
/// after.
#[cfg(unix)]
fn new_file_in_pocket(root_dev: Option<u64>, p: &Path) -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let (dir, name) = pocket_folder_of(root_dev, p)?;
    let fd = rustix::fs::openat(
        &dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(std::fs::File::from(fd))
}

#[cfg(not(unix))]
fn new_file_in_pocket(_root_dev: Option<u64>, p: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(p)
}

/// Windows makes links only with a privilege most users lack: not carried there.
#[cfg(not(unix))]
fn make_link(_root_dev: Option<u64>, _target: &[u8], _at: &Path) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "symbolic links are not carried to this system",
    ))
}

/// Whether `path` is still the file `before` described (same inode, size, times).
fn same_stat(before: Option<&std::fs::Metadata>, path: &Path) -> bool {
    let Some(before) = before else {
        return std::fs::symlink_metadata(path).is_err();
    };
    match std::fs::symlink_metadata(path) {
        Ok(now) => !crate::os::changed(before, &now) && same_file(before, &now),
        Err(_) => false,
    }
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.ino() == b.ino() && a.dev() == b.dev()
}

#[cfg(not(unix))]
fn same_file(_a: &std::fs::Metadata, _b: &std::fs::Metadata) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &str) -> Print {
        Print {
            kind: KIND_FILE,
            perm: 0o644,
            hash: blake3::hash(content.as_bytes()).as_bytes().to_vec(),
            mtime_ns: 0,
        }
    }

    fn map(entries: &[(&str, Print)]) -> BTreeMap<Vec<u8>, Print> {
        entries
            .iter()
            .map(|(p, v)| (p.as_bytes().to_vec(), v.clone()))
            .collect()
    }

    /// Only a sure rename is one: the only file of its contents gone and the only one new;
    /// twins, changed contents and folders stay removals and additions.
    #[test]
    fn renames_are_only_the_sure_ones() {
        let dir = Print {
            kind: KIND_DIR,
            perm: 0o755,
            hash: Vec::new(),
            mtime_ns: 0,
        };
        let base = map(&[
            ("draft.txt", file("a")),
            ("twin1", file("t")),
            ("twin2", file("t")),
            ("edited", file("e")),
            ("old-dir", dir.clone()),
            ("stays", file("s")),
        ]);
        let theirs = map(&[
            ("final.txt", file("a")),
            ("twin3", file("t")),
            ("renamed-and-edited", file("e2")),
            ("new-dir", dir),
            ("stays", file("s")),
        ]);
        let got: Vec<(String, String)> = renames(&base, &theirs)
            .into_iter()
            .map(|(a, b)| {
                (
                    String::from_utf8_lossy(a).into_owned(),
                    String::from_utf8_lossy(b).into_owned(),
                )
            })
            .collect();
        assert_eq!(got, [("draft.txt".to_owned(), "final.txt".to_owned())]);
        let gone = gone_there(&base, &theirs);
        assert!(gone.contains_key(&file("a").hash) && gone.contains_key(&file("e").hash));
        assert!(!gone.contains_key(&file("s").hash), "unchanged there");
    }

    /// Once the mount is gone its path leads into the bare mountpoint, on another device:
    /// nothing is made there.
    #[cfg(unix)]
    #[test]
    fn nothing_is_made_off_the_pockets_device() {
        let tmp = tempfile::tempdir().unwrap();
        let here = device_of(tmp.path());
        let elsewhere = device_of(Path::new("/proc"));
        assert_ne!(here, elsewhere);
        let at = |n: &str| tmp.path().join(n);
        assert!(make_dir_in_pocket(elsewhere, &at("d")).is_err());
        assert!(new_file_in_pocket(elsewhere, &at("f")).is_err());
        assert!(make_link(elsewhere, b"f", &at("l")).is_err());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        // On its own device all three are made.
        make_dir_in_pocket(here, &at("d")).unwrap();
        new_file_in_pocket(here, &at("d/f")).unwrap();
        make_link(here, b"f", &at("d/l")).unwrap();
        assert_eq!(std::fs::read_dir(at("d")).unwrap().count(), 2);
    }

    /// What a round cut short left behind goes at the next round, in the pocket's root (listed
    /// as an empty line) as in a folder; files of the user's stay.
    #[test]
    fn leftovers_of_a_cut_round_go_in_the_root_too() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, meta) = (tmp.path().join("pocket"), tmp.path().join("meta"));
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::create_dir_all(&meta).unwrap();
        let temp = String::from_utf8_lossy(TEMP_PREFIX).into_owned() + "0123";
        for f in [temp.clone(), format!("docs/{temp}"), "notes.txt".into()] {
            std::fs::write(root.join(&f), b"x").unwrap();
        }
        std::fs::write(temps_path(&meta), format!("\n{}\n", hex::encode("docs"))).unwrap();
        let pocket = Pocket {
            root: &root,
            meta_dir: &meta,
            name: "laptop",
            still_there: &|| true,
        };
        clean_temps(&pocket).unwrap();
        assert!(!root.join(&temp).exists(), "the root's leftover");
        assert!(
            !root.join("docs").join(&temp).exists(),
            "the folder's leftover"
        );
        assert!(root.join("notes.txt").exists());
        assert!(!temps_path(&meta).exists());
    }
}
