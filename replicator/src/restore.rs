//! Restore from a vault: the tree at a point, rebuilt in a new folder, contents fetched pack
//! by pack in parallel and every chunk checked against its hash before it is written.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::drain::Progress;
use crate::error::{Error, Result};
use crate::format::{BlobEntry, Content, FileState, KIND_DIR, KIND_FILE, KIND_SYMLINK};
use crate::tree::Tree;
use crate::vault::{Loc, Vault};

/// What to restore and where.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// The newest point whose changes were all made at or before this time (ns since the
    /// epoch); the newest point when None.
    pub at: Option<i64>,
    /// Only these paths (and what is under them); everything when empty.
    pub paths: Vec<Vec<u8>>,
    /// Set owners (only root can).
    pub owners: bool,
    pub workers: usize,
    /// The target's drive cannot spell every name (exFAT, FAT): names are made under the
    /// look-alikes a pocket on that drive uses (`journal::spelling`), which a pocket made there
    /// later reads back as the real names.
    pub map_names: bool,
    /// The target's drive can hold symlinks, fifos, sockets and devices; where not (exFAT,
    /// FAT: its driver may even make a regular file before it fails), they are left out and
    /// listed.
    pub specials: bool,
    /// The target's drive takes names that differ only in case for one (exFAT, FAT): the
    /// second of such names is made as `NAME (2).EXT`, never over the first.
    pub case_insensitive: bool,
}

/// Where each entry is made, for those not made at their own path: names the drive cannot
/// spell under their look-alikes (`map_names`), the later of names that differ only in case
/// under a numbered name (`case_insensitive`), and whatever is under those. Entries come
/// parents first. Also the renamed entries, with the name each got.
#[allow(clippy::type_complexity)]
fn names_here(
    entries: &[(Vec<u8>, u64)],
    map_names: bool,
    case_insensitive: bool,
) -> (HashMap<Vec<u8>, Vec<u8>>, Vec<(Vec<u8>, Vec<u8>)>) {
    let mut made_as: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut renamed = Vec::new();
    if !map_names && !case_insensitive {
        return (made_as, renamed);
    }
    // Names taken in each folder as made, folded.
    let mut taken: std::collections::HashSet<(Vec<u8>, String)> = std::collections::HashSet::new();
    let fold = |n: &[u8]| String::from_utf8_lossy(n).to_lowercase();
    for (rel, _) in entries {
        if rel.is_empty() {
            continue;
        }
        let (parent, name) = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&rel[..0], &rel[..]),
        };
        let parent_made = made_as
            .get(parent)
            .cloned()
            .unwrap_or_else(|| parent.to_vec());
        let mut here = if map_names {
            journal::spelling::to_drive(name).into_owned()
        } else {
            name.to_vec()
        };
        if case_insensitive {
            let base = here.clone();
            let mut k = 2;
            while !taken.insert((parent_made.clone(), fold(&here))) {
                here = numbered(&base, k);
                k += 1;
            }
        }
        if here != name {
            renamed.push((rel.clone(), here.clone()));
        }
        if here != name || parent_made != parent {
            let mut full = parent_made;
            if !full.is_empty() {
                full.push(b'/');
            }
            full.extend_from_slice(&here);
            made_as.insert(rel.clone(), full);
        }
    }
    (made_as, renamed)
}

/// `NAME (k).EXT` for `NAME.EXT`.
fn numbered(name: &[u8], k: usize) -> Vec<u8> {
    let dot = name
        .iter()
        .rposition(|&b| b == b'.')
        .filter(|&i| i > 0)
        .unwrap_or(name.len());
    let mut out = name[..dot].to_vec();
    out.extend_from_slice(format!(" ({k})").as_bytes());
    out.extend_from_slice(&name[dot..]);
    out
}

/// What a restore did.
#[derive(Clone, Debug, Default)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub other: u64,
    pub bytes: u64,
    /// The point restored: when its last change was made, and the journal record it ends at.
    pub point_time_ns: i64,
    pub point_seq: u64,
    /// Files that could not be restored exactly (damaged or missing data), with the reason.
    pub failed: Vec<(Vec<u8>, String)>,
    /// Entries that could not be made here (device nodes as an ordinary user).
    pub skipped: Vec<(Vec<u8>, String)>,
    /// Files whose contents at this point were still on their way to the destination (a
    /// large file uploading beside the drain) and never arrived: restored as the destination
    /// held them before.
    pub earlier: Vec<Vec<u8>>,
    /// Other names of a file, made as copies of it: the target's filesystem has no hard
    /// links (exFAT, FAT).
    pub copies: Vec<Vec<u8>>,
    /// Names made under their look-alikes ([`RestoreOptions::map_names`]): (name, as made).
    pub renamed: Vec<(Vec<u8>, Vec<u8>)>,
    /// Entries restored without something the target's drive cannot hold (their xattrs).
    pub not_kept: Vec<(Vec<u8>, String)>,
    /// Files that could not be written here (the target full, out of open files): the
    /// destination's data is fine, and a restore once that is mended brings them.
    pub unwritten: Vec<(Vec<u8>, String)>,
}

/// The target's filesystem cannot make this kind of entry (a symlink on exFAT).
fn cannot_make_here(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            e.raw_os_error(),
            Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS)
        )
    }
    #[cfg(not(unix))]
    {
        e.kind() == std::io::ErrorKind::Unsupported
    }
}

/// Why an entry the drive cannot hold was left out.
const NOT_ON_THIS_DRIVE: &str = "this drive cannot hold it (restore onto ext4, XFS or btrfs, or make a pocket of it with `backpocket init --from`, for an exact copy)";

/// The target's filesystem cannot link (rather than this link being wrong): it cannot make
/// links at all, or not this many to one file (EMLINK).
fn no_hard_links(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::EMLINK) {
        return true;
    }
    cannot_make_here(e)
}

/// Restores the vault's tree at `opts.at` into `opts.target`, which must be missing or empty.
pub fn restore(vault: &Vault, opts: &RestoreOptions, progress: &Progress) -> Result<RestoreReport> {
    let (tree, head) = vault.load_tree(opts.at)?.ok_or_else(|| {
        Error::Format(match opts.at {
            Some(_) => "the destination holds no backup that old; `backpocket log PATH` lists the versions it holds".into(),
            None => "the destination holds no backup yet; back up first (mount the pocket, or `backpocket sync`)".into(),
        })
    })?;
    prepare_target(&opts.target)?;
    vault.load_index()?;
    let mut report = RestoreReport {
        point_time_ns: head.time_ns,
        point_seq: head.seq,
        ..RestoreReport::default()
    };
    let mut entries = select(&tree, &opts.paths)?;
    for (rel, id) in &entries {
        if tree.pending.contains_key(id) {
            report.earlier.push(rel.clone());
        }
        if tree.broken.contains(id) {
            report.failed.push((
                rel.clone(),
                "its record in the log does not fit the version before it (a damaged log; run `backpocket verify`)".into(),
            ));
        }
    }
    // Never a silently wrong file: one whose contents are unknown is not made.
    entries.retain(|(_, id)| !tree.broken.contains(id));
    let target = &opts.target;
    let (made_as, renamed) = names_here(&entries, opts.map_names, opts.case_insensitive);
    report.renamed = renamed;
    let abs = |rel: &[u8]| crate::os::join(target, made_as.get(rel).map_or(rel, |m| m.as_slice()));

    // 1. The tree's shape: folders, files (at full size, so holes stay holes), links.
    let mut first_name: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut writes: Vec<(PathBuf, &Content)> = Vec::new();
    // A file's other names, made as hard links before its data is written: a file refused
    // for damaged data must go under every one of them.
    let mut other_names: HashMap<PathBuf, Vec<PathBuf>> = HashMap::new();
    // Other names made as copies, which get their metadata as the first name does.
    let mut copies: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    for (rel, id) in &entries {
        let f = &tree.files[id];
        let p = abs(rel);
        let made = match f.meta.kind {
            KIND_DIR => {
                report.dirs += 1;
                std::fs::create_dir(&p).or_else(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
            }
            KIND_FILE => {
                let linked = match first_name.get(id) {
                    None => None,
                    Some(first) => match std::fs::hard_link(abs(first), &p) {
                        Err(e) if no_hard_links(&e) => {
                            copies.insert(p.clone());
                            report.copies.push(rel.clone());
                            None
                        }
                        r => {
                            other_names.entry(abs(first)).or_default().push(p.clone());
                            Some(r)
                        }
                    },
                };
                if let Some(r) = linked {
                    r
                } else {
                    first_name.entry(*id).or_insert_with(|| rel.clone());
                    report.files += 1;
                    let size = f.content.as_ref().map_or(f.meta.size, |c| c.size);
                    let r = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&p)
                        .and_then(|file| file.set_len(size));
                    if let Some(c) = &f.content {
                        writes.push((p.clone(), c));
                        report.bytes += c.data_bytes();
                    }
                    r
                }
            }
            // Links, fifos, sockets, devices.
            _ if !opts.specials => {
                report.skipped.push((rel.clone(), NOT_ON_THIS_DRIVE.into()));
                continue;
            }
            KIND_SYMLINK => {
                let t = f.target.clone().unwrap_or_default();
                match make_symlink(&t, &p) {
                    Err(e) if cannot_make_here(&e) => {
                        report.skipped.push((rel.clone(), NOT_ON_THIS_DRIVE.into()));
                        continue;
                    }
                    r => {
                        report.symlinks += 1;
                        r
                    }
                }
            }
            kind => {
                if let Some(first) = first_name.get(id) {
                    std::fs::hard_link(abs(first), &p)
                } else {
                    first_name.insert(*id, rel.clone());
                    report.other += 1;
                    match make_special(&p, kind, f.meta.rdev) {
                        Ok(true) => Ok(()),
                        Ok(false) => {
                            report.skipped.push((rel.clone(), NOT_ROOT.into()));
                            continue;
                        }
                        Err(e) if cannot_make_here(&e) => {
                            report.skipped.push((rel.clone(), NOT_ON_THIS_DRIVE.into()));
                            continue;
                        }
                        Err(e) => Err(e),
                    }
                }
            }
        };
        made.map_err(|e| Error::io(format!("cannot create {}", p.display()), e))?;
    }

    // 2. Contents, pack by pack.
    progress
        .bytes_total
        .fetch_add(report.bytes, Ordering::Relaxed);
    progress
        .files_total
        .fetch_add(writes.len() as u64, Ordering::Relaxed);
    let failed = Mutex::new(Vec::<(PathBuf, String)>::new());
    let mut by_pack: BTreeMap<std::sync::Arc<str>, Targets> = BTreeMap::new();
    {
        let mut blob_slot: HashMap<[u8; 32], (std::sync::Arc<str>, usize)> = HashMap::new();
        for (fi, (path, content)) in writes.iter().enumerate() {
            for ext in &content.extents {
                let mut off = ext.offset;
                for c in &ext.chunks {
                    match blob_slot.get(&c.id) {
                        Some((pack, i)) => {
                            by_pack.get_mut(pack).expect("slot")[*i].1.push((fi, off))
                        }
                        None => match vault.locate(&c.id) {
                            Some(Loc { pack, blob }) => {
                                let v = by_pack.entry(pack.clone()).or_default();
                                blob_slot.insert(c.id, (pack, v.len()));
                                v.push((blob, vec![(fi, off)]));
                            }
                            None => failed.lock().push((
                                path.clone(),
                                format!(
                                    "chunk {} is missing from the destination",
                                    hex::encode(c.id)
                                ),
                            )),
                        },
                    }
                    off += c.len as u64;
                }
            }
        }
    }
    let packs: Vec<_> = by_pack.into_iter().collect();
    let next = AtomicUsize::new(0);
    let workers = opts.workers.clamp(1, 16);
    let open_cap = open_files_per_worker(workers);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((pack, blobs)) = packs.get(i) else {
                    break;
                };
                for (fi, e) in restore_pack(vault, pack, blobs, &writes, open_cap, progress) {
                    failed.lock().push((writes[fi].0.clone(), e));
                }
            });
        }
    });
    let mut failed = failed.into_inner();
    failed.sort();
    failed.dedup_by(|a, b| a.0 == b.0);
    let links: Vec<(PathBuf, String)> = failed
        .iter()
        .flat_map(|(p, e)| {
            other_names
                .get(p)
                .into_iter()
                .flatten()
                .map(move |o| (o.clone(), e.clone()))
        })
        .collect();
    failed.extend(links);
    failed.sort();
    let failed_paths: std::collections::HashSet<PathBuf> =
        failed.iter().map(|(p, _)| p.clone()).collect();
    for (p, e) in failed {
        let rel = crate::os::name_bytes(p.strip_prefix(target).unwrap_or(&p).as_os_str()).to_vec();
        if e.starts_with(UNWRITTEN) {
            report.unwritten.push((rel, e));
        } else {
            report.failed.push((rel, e));
        }
    }
    for p in &failed_paths {
        // Never leave a file that looks restored but is not, under any of its names.
        let _ = std::fs::remove_file(p);
    }
    progress
        .files_done
        .fetch_add(writes.len() as u64, Ordering::Relaxed);

    // 3. Metadata: files first, folders deepest first so their times stay as set.
    let mut done_ids = std::collections::HashSet::new();
    for (rel, id) in entries.iter().rev() {
        let p = abs(rel);
        if failed_paths.contains(&p) || report.skipped.iter().any(|(s, _)| s == rel) {
            continue;
        }
        if !copies.contains(&p) && !done_ids.insert(*id) {
            continue;
        }
        let xattrs_kept = set_meta(&p, &tree.files[id], opts.owners)
            .map_err(|e| Error::io(format!("cannot set the attributes of {}", p.display()), e))?;
        if !xattrs_kept {
            report.not_kept.push((
                rel.clone(),
                "its extended attributes (this drive has none)".into(),
            ));
        }
    }
    if let Some(root) = tree.files.get(&tree.root) {
        if opts.paths.is_empty() {
            let _ = set_meta(target, root, opts.owners);
        }
    }
    // A restore is done when it is on disk.
    let written: Vec<PathBuf> = writes.iter().map(|(p, _)| p.clone()).collect();
    crate::os::flush_restore(target, &written)
        .map_err(|e| Error::io("cannot flush the restored files to disk", e))?;
    Ok(report)
}

/// Why a device node was left out.
#[cfg(unix)]
pub(crate) const NOT_ROOT: &str = "device nodes can be made only by root";
#[cfg(not(unix))]
pub(crate) const NOT_ROOT: &str = "fifos, sockets and device nodes do not exist on this system";

/// Makes a fifo, socket or device node (`kind` as stored). Ok(false) when this process may
/// not (only root makes device nodes; Windows has none of them).
#[cfg(unix)]
pub(crate) fn make_special(p: &Path, kind: u8, rdev: u64) -> std::io::Result<bool> {
    use rustix::fs::{FileType, Mode, CWD};
    let ty = match kind {
        4 => FileType::Fifo,
        5 => FileType::Socket,
        6 => FileType::CharacterDevice,
        _ => FileType::BlockDevice,
    };
    match rustix::fs::mknodat(CWD, p, ty, Mode::from_raw_mode(0o600), rdev) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::PERM => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(unix))]
pub(crate) fn make_special(_p: &Path, _kind: u8, _rdev: u64) -> std::io::Result<bool> {
    Ok(false)
}

/// A symlink as recorded: its target bytes, unchanged. (Windows: a file symlink, which needs
/// the right to make one; without it the restore says so.)
fn make_symlink(target: &[u8], link: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(crate::os::os_name(target), link)
    }
    #[cfg(windows)]
    {
        std::os::windows::fs::symlink_file(&*crate::os::os_name(target), link)
    }
}

pub(crate) fn prepare_target(target: &Path) -> Result<()> {
    match std::fs::read_dir(target) {
        Ok(mut d) => {
            if d.next().is_some() {
                return Err(Error::Format(format!(
                    "{} is not empty; restore into a new or empty folder",
                    target.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(target)
            .map_err(|e| Error::io(format!("cannot create {}", target.display()), e)),
        Err(e) => Err(Error::io(format!("cannot open {}", target.display()), e)),
    }
}

/// The entries to restore: all, or the given paths with what is under them and the folders
/// above them.
pub(crate) fn select(tree: &Tree, wanted: &[Vec<u8>]) -> Result<Vec<(Vec<u8>, u64)>> {
    let all = tree.paths();
    if wanted.is_empty() {
        return Ok(all);
    }
    let wanted: Vec<Vec<u8>> = wanted
        .iter()
        .map(|w| w.strip_suffix(b"/").unwrap_or(w).to_vec())
        .collect();
    let mut out = Vec::new();
    let mut found = vec![false; wanted.len()];
    for (p, id) in all {
        let mut keep = false;
        for (i, w) in wanted.iter().enumerate() {
            if &p == w || (p.starts_with(w) && p.get(w.len()) == Some(&b'/')) {
                found[i] = true;
                keep = true;
            } else if w.starts_with(&p) && w.get(p.len()) == Some(&b'/') {
                keep = true;
            }
        }
        if keep {
            out.push((p, id));
        }
    }
    if let Some(i) = found.iter().position(|f| !f) {
        return Err(Error::Format(format!(
            "{} is not in that backup",
            String::from_utf8_lossy(&wanted[i])
        )));
    }
    Ok(out)
}

type Targets = Vec<(BlobEntry, Vec<(usize, u64)>)>;

/// How many files each restore worker may keep open: a share of the process's open-files
/// limit (1024 for a user by default, where eight workers keeping 256 each ran out, and every
/// file then refused was lost to the restore).
fn open_files_per_worker(workers: usize) -> usize {
    #[cfg(unix)]
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    #[cfg(not(unix))]
    let limit = 8192u64;
    (limit.saturating_sub(128) / (2 * workers as u64)).clamp(4, 256) as usize
}

/// How a failure to write the target (not the destination's data) begins.
const UNWRITTEN: &str = "cannot write ";

fn restore_pack(
    vault: &Vault,
    pack: &str,
    blobs: &Targets,
    writes: &[(PathBuf, &Content)],
    open_cap: usize,
    progress: &Progress,
) -> Vec<(usize, String)> {
    let key = Vault::pack_key(pack);
    let mut failed = Vec::new();
    let fail_all = |targets: &[(usize, u64)], e: &Error, failed: &mut Vec<(usize, String)>| {
        for (f, _) in targets {
            failed.push((*f, e.to_string()));
        }
    };
    // Reads of the pack: the wanted blobs in offset order, neighbours less than SPAN_GAP
    // apart read together (one request instead of many on a remote store; a gap costs less
    // than a round trip).
    const SPAN_GAP: u64 = 1 << 20;
    let mut order: Vec<usize> = (0..blobs.len()).collect();
    order.sort_by_key(|&i| blobs[i].0.offset);
    let mut spans: Vec<(u64, u64, Vec<usize>)> = Vec::new();
    for i in order {
        let b = &blobs[i].0;
        let (start, end) = (b.offset, b.offset + b.len as u64);
        match spans.last_mut() {
            Some((_, e, members)) if start <= *e + SPAN_GAP => {
                *e = (*e).max(end);
                members.push(i);
            }
            _ => spans.push((start, end, vec![i])),
        }
    }
    let mut open: HashMap<usize, std::fs::File> = HashMap::new();
    for (start, end, members) in spans {
        let bytes = match vault.store.get_range(&key, start, end - start) {
            Ok(b) => b,
            Err(e) => {
                for i in members {
                    fail_all(&blobs[i].1, &e, &mut failed);
                }
                continue;
            }
        };
        for i in members {
            let (blob, targets) = &blobs[i];
            let mut at = blob.clone();
            at.offset -= start;
            let data = vault.open_blob(&bytes, &at);
            if let Err(e) = write_targets(
                data,
                targets,
                writes,
                (&mut open, open_cap),
                &mut failed,
                progress,
            ) {
                fail_all(targets, &e, &mut failed);
            }
        }
    }
    failed
}

/// Writes one blob's data wherever the files being restored hold it; an error in reading or
/// checking it is returned for the caller to fail those files.
fn write_targets(
    data: Result<Vec<u8>>,
    targets: &[(usize, u64)],
    writes: &[(PathBuf, &Content)],
    (open, open_cap): (&mut HashMap<usize, std::fs::File>, usize),
    failed: &mut Vec<(usize, String)>,
    progress: &Progress,
) -> Result<()> {
    {
        let data = data?;
        for (f, off) in targets {
            let path = &writes[*f].0;
            if open.len() >= open_cap && !open.contains_key(f) {
                open.clear();
            }
            let file = match open.entry(*f) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    match std::fs::OpenOptions::new().write(true).open(path) {
                        Ok(file) => v.insert(file),
                        Err(e) => {
                            failed.push((*f, format!("{UNWRITTEN}{}: {e}", path.display())));
                            continue;
                        }
                    }
                }
            };
            if let Err(e) = crate::os::write_all_at(file, &data, *off) {
                failed.push((*f, format!("{UNWRITTEN}{}: {e}", path.display())));
                continue;
            }
            progress
                .bytes_done
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Sets what the file's record says: xattrs, owner (`owners`: only root can), mode, mtime.
/// False when the drive has no xattrs to set (the rest is set all the same).
#[cfg(unix)]
pub(crate) fn set_meta(p: &Path, f: &FileState, owners: bool) -> std::io::Result<bool> {
    use rustix::fs::{AtFlags, Mode, Timespec, Timestamps, CWD};
    let mut xattrs_kept = true;
    for x in &f.xattrs {
        match rustix::fs::lsetxattr(
            p,
            &*crate::os::os_name(&x.name),
            &x.value,
            rustix::fs::XattrFlags::empty(),
        ) {
            Ok(()) => {}
            Err(rustix::io::Errno::OPNOTSUPP) => {
                xattrs_kept = false;
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if owners {
        rustix::fs::chownat(
            CWD,
            p,
            Some(rustix::process::Uid::from_raw(f.meta.uid)),
            Some(rustix::process::Gid::from_raw(f.meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    if f.meta.kind != KIND_SYMLINK {
        // After chown, which clears set-id bits.
        rustix::fs::chmodat(CWD, p, Mode::from_raw_mode(f.meta.perm), AtFlags::empty())?;
    }
    let t = Timespec {
        tv_sec: f.meta.mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: f.meta.mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    rustix::fs::utimensat(
        CWD,
        p,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(xattrs_kept)
}

/// Windows keeps no owners, modes or xattrs: a file without write bits becomes read-only,
/// and files get their modification time back.
#[cfg(not(unix))]
pub(crate) fn set_meta(p: &Path, f: &FileState, _owners: bool) -> std::io::Result<bool> {
    if f.meta.kind != KIND_FILE {
        return Ok(f.xattrs.is_empty());
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(f.meta.mtime_ns.max(0) as u64);
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)?
        .set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))?;
    if f.meta.perm & 0o222 == 0 {
        let mut perms = std::fs::metadata(p)?.permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(p, perms)?;
    }
    Ok(f.xattrs.is_empty())
}

/// One version of a file that a destination holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// When the point's last change was made.
    pub time_ns: i64,
    pub seq: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub kind: u8,
    /// The name of the device that made it, in a vault several devices write (None in a
    /// vault of one pocket, where there is no one else to name).
    pub device: Option<String>,
    /// Whether this pocket's own history holds it at this path (else only another device's
    /// does: `restore --device` gives it back).
    pub here: bool,
}

/// The distinct versions of `path` across the vault's history, oldest first: from the
/// version index in the pocket's cache when the vault was opened with one
/// ([`Vault::with_cache`]), else from one built in memory.
pub fn versions(vault: &Vault, path: &[u8]) -> Result<Vec<Version>> {
    crate::versions::versions_indexed(vault, path, vault.cache_root())
}

/// The same by replaying the whole log (what the index must agree with).
#[cfg(test)]
pub(crate) fn versions_replayed(vault: &Vault, path: &[u8]) -> Result<Vec<Version>> {
    let mut out: Vec<Version> = Vec::new();
    let mut last: Option<(u64, u64, i64, Option<Content>)> = None;
    vault.replay_all(&mut |tree, point, _| {
        let Some(id) = tree.lookup(path) else {
            last = None;
            return Ok(());
        };
        let f = &tree.files[&id];
        let now = (id, f.meta.size, f.meta.mtime_ns, f.content.clone());
        if last.as_ref() != Some(&now) {
            out.push(Version {
                time_ns: point.time_ns,
                seq: point.seq,
                size: f.meta.size,
                mtime_ns: f.meta.mtime_ns,
                kind: f.meta.kind,
                device: None,
                here: true,
            });
            last = Some(now);
        }
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(names: &[&str]) -> Vec<(Vec<u8>, u64)> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_bytes().to_vec(), i as u64))
            .collect()
    }

    #[test]
    fn names_differing_in_case_get_numbers_and_what_is_under_them_follows() {
        let entries = paths(&[
            "Src",
            "Src/Makefile",
            "Src/makefile",
            "Src/makefile (2)",
            "src",
            "src/a:b.txt",
            "x.tar.gz",
            "X.tar.gz",
        ]);
        let (made_as, renamed) = names_here(&entries, true, true);
        let at = |rel: &str| {
            String::from_utf8(made_as.get(rel.as_bytes()).cloned().unwrap_or(rel.into())).unwrap()
        };
        assert_eq!(at("Src/Makefile"), "Src/Makefile");
        assert_eq!(at("Src/makefile"), "Src/makefile (2)");
        // A real name the numbering took is numbered in its turn.
        assert_eq!(at("Src/makefile (2)"), "Src/makefile (2) (2)");
        assert_eq!(at("src"), "src (2)");
        assert_eq!(at("src/a:b.txt"), "src (2)/a\u{F022}b.txt");
        assert_eq!(at("X.tar.gz"), "X.tar (2).gz");
        let names: Vec<String> = renamed
            .iter()
            .map(|(r, _)| String::from_utf8_lossy(r).into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "Src/makefile",
                "Src/makefile (2)",
                "src",
                "src/a:b.txt",
                "X.tar.gz"
            ]
        );
        // A drive that keeps everything: nothing moves.
        assert!(names_here(&entries, false, false).0.is_empty());
        // Case kept, names spelled: only the odd name.
        let (made_as, _) = names_here(&entries, true, false);
        assert_eq!(made_as.len(), 1);
    }
}
