//! Maintenance: a vault bounded by its live data, not by the number of drains ever made.
//!
//! Every drain adds a log segment, and a pack with its index object when it sent data; left
//! alone, opening the vault would cost one request per drain ever made. A maintenance run:
//!
//! 1. empties the trash: objects that earlier runs replaced, once the grace period has passed
//!    (a reader that listed the vault before still finds them); a pack is kept if the log
//!    refers to a chunk no other pack holds, or an index object still lists it;
//! 2. bundles log objects: runs of small segments and old checkpoints become one object each
//!    (`log/<first>-<last>`), every object kept byte for byte, so every drain stays a restore
//!    point and the hash chain holds; the newest checkpoint stays alone, where a restore starts;
//! 3. repacks: packs under a quarter of the pack size, packs mostly unused, and packs no index
//!    lists (an interrupted drain's) have the chunks the log needs copied, still sealed, into
//!    full packs; the rest is dropped;
//! 4. merges index objects into index sets (`index/set-…`);
//! 5. lists everything it replaced in one trash object, written only once the replacements
//!    are durable. Until then the old objects are still what readers see; after it, readers
//!    ignore them, and the next run past the grace period deletes them.
//!
//! A run cut anywhere leaves a vault that opens and restores exactly (at worst holding some
//! objects twice, which the next run folds). It holds a lease in the vault (`locks/`):
//! two maintainers, or maintenance from a machine other than the one writing, are refused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::drain::Progress;
use crate::error::{Error, Result};
use crate::format::{BlobEntry, Bundle, Bundled, ChunkId, IndexSet, Lease, PackIndex, VChange};
use crate::vault::{
    now_ns, random_hex, IndexObject, LogKind, LogMap, LogObject, Vault, PACK_TARGET,
};

/// A lease lasts this long unless renewed: a maintainer that died stops blocking others.
const LEASE_NS: i64 = 30 * 60 * 1_000_000_000;
/// Giving a lease back waits at most this long (a destination that went away must not hold
/// up the drain that is letting go of it; the lease then expires on its own).
const RELEASE_WITHIN: Duration = Duration::from_secs(2);
/// Index sets hold at most this many chunks (so one rewrite stays bounded).
const SET_FULL: usize = 200_000;

/// How a run behaves. The defaults are the ones the mount's replicator uses.
#[derive(Clone, Debug)]
pub struct MaintainOptions {
    /// Replaced objects are deleted this long after they were replaced.
    pub grace: Duration,
    /// Packs smaller than this are repacked.
    pub small_pack: u64,
    /// Packs with more than this share of their bytes unused are repacked (prune: 0).
    pub unused_share: f64,
    /// Bytes of packs read for repacking in one run at most (the rest waits for the next).
    pub max_repack_bytes: u64,
    /// Log bundles are cut at about this size.
    pub bundle_target: u64,
    /// Compute which chunks the log uses even when no small pack asks for it (prune).
    pub find_unused: bool,
}

impl Default for MaintainOptions {
    fn default() -> Self {
        MaintainOptions {
            grace: Duration::from_secs(3600),
            small_pack: (PACK_TARGET / 4) as u64,
            unused_share: 0.25,
            max_repack_bytes: 1 << 30,
            bundle_target: 8 << 20,
            find_unused: false,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaintainReport {
    /// The vault was format 1 and is format 2 now.
    pub upgraded: bool,
    pub log_objects_before: u64,
    pub log_objects_after: u64,
    pub bundles_written: u64,
    pub index_objects_before: u64,
    pub index_objects_after: u64,
    pub packs_before: u64,
    pub packs_repacked: u64,
    pub packs_written: u64,
    /// Bytes of packs read to repack them.
    pub bytes_repacked: u64,
    /// Chunks no restore point needs, left behind.
    pub chunks_dropped: u64,
    /// Objects listed in the trash by this run.
    pub objects_trashed: u64,
    /// Objects deleted because their grace period was over, and their bytes.
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
    /// Trashed packs kept after all (the log needs them, or an index lists them).
    pub packs_rescued: u64,
    /// The run stopped early to let a drain go first.
    pub interrupted: bool,
}

/// How much a vault would gain from maintenance: counted from listings alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    pub log_objects: u64,
    pub index_objects: u64,
    /// Trash objects, and the time the oldest was written.
    pub trash_objects: u64,
    pub oldest_trash_ns: Option<i64>,
}

impl Shape {
    /// Whether a run is worth it: many small objects, or trash whose grace has passed.
    pub fn wants_maintenance(&self, grace: Duration) -> bool {
        self.log_objects > 48
            || self.index_objects > 48
            || self
                .oldest_trash_ns
                .is_some_and(|t| now_ns() - t > grace.as_nanos() as i64)
    }
}

/// Counts the vault's objects (three or four listings).
pub fn shape(vault: &Vault) -> Result<Shape> {
    let trash = vault.store.list("trash/")?;
    let oldest_trash_ns = trash.first().and_then(|(k, _)| {
        k.trim_start_matches("trash/")
            .split('-')
            .next()?
            .parse()
            .ok()
    });
    Ok(Shape {
        log_objects: (vault.store.list("log/")?.len() + vault.store.list("checkpoints/")?.len())
            as u64,
        index_objects: vault.store.list("index/")?.len() as u64,
        trash_objects: trash.len() as u64,
        oldest_trash_ns,
    })
}

/// A lease held in the vault; removed when dropped.
#[derive(Debug)]
pub struct LeaseGuard<'v> {
    vault: &'v Vault,
    key: String,
    lease: Lease,
}

impl LeaseGuard<'_> {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Renews the lease when a third of its time has passed.
    pub fn renew(&mut self) -> Result<()> {
        let now = now_ns();
        if self.lease.expires_ns - now > LEASE_NS * 2 / 3 {
            return Ok(());
        }
        self.lease.expires_ns = now + LEASE_NS;
        self.vault.put_lease(&self.key, &self.lease)
    }
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.vault.store.delete_briefly(&self.key, RELEASE_WITHIN) {
            debug!("cannot remove the lease {}: {e}", self.key);
        }
    }
}

fn is_stale(l: &Lease, host: &str) -> bool {
    l.expires_ns < now_ns() || (l.host == host && !crate::os::process_alive(l.pid))
}

/// Takes a lease of `kind` (`maintain` or `write`). A maintain lease is refused while another
/// live lease exists, except `ignore` (the caller's own write lease).
pub fn take_lease<'v>(
    vault: &'v Vault,
    kind: &str,
    ignore: Option<&str>,
) -> Result<LeaseGuard<'v>> {
    let now = now_ns();
    let host = crate::os::hostname();
    let guard = LeaseGuard {
        vault,
        key: format!("locks/{}", random_hex(16)?),
        lease: Lease {
            kind: kind.to_owned(),
            host: host.clone(),
            pid: std::process::id(),
            taken_ns: now,
            expires_ns: now + LEASE_NS,
        },
    };
    vault.put_lease(&guard.key, &guard.lease)?;
    if kind == "maintain" {
        check_leases(vault, &guard.key, ignore)?;
    }
    Ok(guard)
}

/// Fails with [`Error::Busy`] if a live lease other than `own` and `ignore` exists; removes
/// stale ones on the way.
fn check_leases(vault: &Vault, own: &str, ignore: Option<&str>) -> Result<()> {
    let host = crate::os::hostname();
    for (key, l) in vault.leases()? {
        if key == own || Some(key.as_str()) == ignore {
            continue;
        }
        if is_stale(&l, &host) {
            info!(
                lease = key,
                holder = l.host,
                pid = l.pid,
                "removing a stale lease"
            );
            let _ = vault.store.delete(&key);
            continue;
        }
        let what = if l.kind == "maintain" {
            "maintains it"
        } else {
            "writes to it"
        };
        return Err(Error::Busy(format!(
            "{} on {} (process {}) {what} until {} at the latest; try again later (a lease whose holder died expires by then)",
            vault.store.url(),
            l.host,
            l.pid,
            crate::vault::format_time(l.expires_ns)
        )));
    }
    Ok(())
}

/// Runs maintenance on `vault`. `own_write` is the caller's write lease (the mount's
/// replicator maintains the vault it drains); `interrupt` is asked between steps and ends the
/// run early, with what it did so far made durable.
pub fn maintain(
    vault: &mut Vault,
    opts: &MaintainOptions,
    own_write: Option<&str>,
    interrupt: &dyn Fn() -> bool,
    progress: &Progress,
) -> Result<MaintainReport> {
    let mut report = MaintainReport::default();
    // Folders of a local vault made before format 2 (made durable, as at creation); never
    // on the machine's own disk where an unplugged one was.
    vault.store.check_present()?;
    vault
        .store
        .make_dirs(&["trash".to_owned(), "locks".to_owned()])?;
    // The format first: a format 1 reader must not meet objects it cannot read.
    if vault.config.backpocket_vault < crate::format::VAULT_FORMAT {
        vault.upgrade_config()?;
        report.upgraded = true;
        info!(
            vault = vault.store.url(),
            "vault upgraded to format {}",
            crate::format::VAULT_FORMAT
        );
    }
    let vault: &Vault = vault;
    let mut lease = take_lease(vault, "maintain", own_write)?;
    empty_trash(vault, opts, own_write, &lease, &mut report)?;
    platform::crash_point("maintain-emptied");
    lease.renew()?;

    let trashed = vault.trashed()?;
    let map = vault.log_map_without(&trashed.keys)?;
    let index = vault.read_index_objects(&trashed.keys)?;
    report.log_objects_before = map.objects.len() as u64;
    report.index_objects_before = index.len() as u64;
    let mut replaced: Vec<String> = Vec::new();

    bundle_log(vault, &map, opts, interrupt, &mut replaced, &mut report)?;
    lease.renew()?;
    let packs = repack(
        vault,
        &map,
        &index,
        &trashed.keys,
        opts,
        interrupt,
        progress,
        &mut report,
    )?;
    lease.renew()?;

    // The index: one-pack objects and small sets merged, objects naming repacked packs
    // rewritten without them.
    let gone: HashSet<&str> = packs.removed.iter().map(String::as_str).collect();
    let mut merge: Vec<&IndexObject> = Vec::new();
    let mut keep = 0u64;
    for o in &index {
        let Some(p) = &o.packs else { continue };
        let blobs: usize = p.iter().map(|i| i.blobs.len()).sum();
        let names_gone = p.iter().any(|i| gone.contains(i.pack.as_str()));
        if blobs < SET_FULL / 2 || names_gone {
            merge.push(o);
        } else {
            keep += 1;
        }
    }
    let undamaged = index.iter().filter(|o| o.packs.is_some()).count() as u64;
    let mut new_sets = 0u64;
    if merge.len() > 1 || !packs.written.is_empty() || !gone.is_empty() {
        let mut seen = HashSet::new();
        let mut all: Vec<PackIndex> = Vec::new();
        for o in &merge {
            for p in o.packs.iter().flatten() {
                if !gone.contains(p.pack.as_str()) && seen.insert(p.pack.clone()) {
                    all.push(p.clone());
                }
            }
        }
        for p in &packs.written {
            if seen.insert(p.pack.clone()) {
                all.push(p.clone());
            }
        }
        let mut set = IndexSet { packs: Vec::new() };
        let mut n = 0usize;
        let mut flush = |set: &mut IndexSet| -> Result<()> {
            if set.packs.is_empty() {
                return Ok(());
            }
            let (key, sealed) = vault.seal_index_set(set)?;
            vault.store.put(&key, sealed)?;
            new_sets += 1;
            set.packs.clear();
            Ok(())
        };
        for p in all {
            n += p.blobs.len();
            set.packs.push(p);
            if n >= SET_FULL {
                flush(&mut set)?;
                n = 0;
            }
        }
        flush(&mut set)?;
        replaced.extend(merge.iter().map(|o| o.key.clone()));
        report.index_objects_after = keep + new_sets + (index.len() as u64 - undamaged);
    } else {
        report.index_objects_after = index.len() as u64;
    }
    replaced.extend(packs.removed.iter().map(|p| Vault::pack_key(p)));
    replaced.extend(packs.orphans_dropped.iter().cloned());

    let replaced_log = replaced
        .iter()
        .filter(|k| k.starts_with("log/") || k.starts_with("checkpoints/"))
        .count();
    // Everything that replaces them is durable: from here on readers ignore the old.
    platform::crash_point("maintain-written");
    if !replaced.is_empty() {
        check_leases(vault, lease.key(), own_write)?;
        report.objects_trashed = replaced.len() as u64;
        let key = vault.put_trash(replaced)?;
        debug!(trash = key, "replaced objects trashed");
    }
    platform::crash_point("maintain-trashed");
    if opts.grace.is_zero() {
        // Nothing to wait for: what was just replaced goes now.
        empty_trash(vault, opts, own_write, &lease, &mut report)?;
    }
    // Derived, not listed again: what was there, less what went to the trash, plus bundles.
    let log_replaced = replaced_log as u64;
    report.log_objects_after = report.log_objects_before
        - log_replaced.min(report.log_objects_before)
        + report.bundles_written;
    vault.load_index()?;
    info!(vault = vault.store.url(), ?report, "maintenance done");
    Ok(report)
}

/// Deletes what trash objects past their grace period list, keeping packs the log still
/// needs (a drain reused one of their chunks meanwhile) or an index still lists.
fn empty_trash(
    vault: &Vault,
    opts: &MaintainOptions,
    own_write: Option<&str>,
    lease: &LeaseGuard<'_>,
    report: &mut MaintainReport,
) -> Result<()> {
    let trashed = vault.trashed()?;
    let cutoff = now_ns() - opts.grace.as_nanos() as i64;
    let ready: Vec<&(String, crate::format::Trash)> = trashed
        .objects
        .iter()
        .filter(|(_, t)| t.written_ns <= cutoff)
        .collect();
    if ready.is_empty() {
        return Ok(());
    }
    check_leases(vault, lease.key(), own_write)?;
    let keys: HashSet<&String> = ready.iter().flat_map(|(_, t)| &t.keys).collect();
    let ready_packs: Vec<&String> = keys
        .iter()
        .copied()
        .filter(|k| k.starts_with("data/"))
        .collect();
    let mut keep: HashSet<String> = HashSet::new();
    if !ready_packs.is_empty() {
        // What readers see now, and what the log needs now.
        let visible = vault.read_index_objects(&trashed.keys)?;
        let mut held: HashSet<ChunkId> = HashSet::new();
        let mut listed: HashSet<String> = HashSet::new();
        for p in visible.iter().flat_map(|o| o.packs.iter().flatten()) {
            listed.insert(Vault::pack_key(&p.pack));
            held.extend(p.blobs.iter().map(|b| b.id));
        }
        // What the log uses is read only if a trashed pack holds a chunk no other pack does
        // (one dropped as unused, which a drain may have used again since).
        let mut used: Option<HashSet<ChunkId>> = None;
        // The blobs of each trashed pack, from the trashed index objects that list them (or
        // the pack's own header).
        let trashed_index = vault.read_index_objects(&HashSet::new())?;
        let mut blobs_of: HashMap<String, PackIndex> = HashMap::new();
        for p in trashed_index
            .into_iter()
            .flat_map(|o| o.packs.into_iter().flatten())
        {
            blobs_of.insert(Vault::pack_key(&p.pack), p);
        }
        let mut rescued: Vec<PackIndex> = Vec::new();
        for key in ready_packs {
            if listed.contains(key) {
                keep.insert(key.clone());
                continue;
            }
            let idx = match blobs_of.remove(key) {
                Some(i) => Some(i),
                None => match vault.store.get(key) {
                    Ok(bytes) => vault.open_pack_header(&bytes).ok().map(|blobs| PackIndex {
                        pack: key.rsplit('/').next().unwrap_or("").to_owned(),
                        size: bytes.len() as u64,
                        blobs,
                    }),
                    Err(e) if e.is_not_found() => None,
                    Err(e) => return Err(e),
                },
            };
            let Some(idx) = idx else { continue };
            let unheld: Vec<&ChunkId> = idx
                .blobs
                .iter()
                .map(|b| &b.id)
                .filter(|id| !held.contains(*id))
                .collect();
            if unheld.is_empty() {
                continue;
            }
            if used.is_none() {
                let map = vault.log_map_without(&trashed.keys)?;
                used = Some(used_chunks(vault, &map)?);
            }
            let used = used.as_ref().expect("read above");
            if unheld.iter().any(|id| used.contains(*id)) {
                warn!(
                    pack = key,
                    "a trashed pack holds chunks the log needs; keeping it"
                );
                held.extend(idx.blobs.iter().map(|b| b.id));
                keep.insert(key.clone());
                rescued.push(idx);
            }
        }
        if !rescued.is_empty() {
            report.packs_rescued = rescued.len() as u64;
            let (key, sealed) = vault.seal_index_set(&IndexSet { packs: rescued })?;
            vault.store.put(&key, sealed)?;
        }
    }
    // Sizes (for the report) and presence, from one listing of each folder that holds
    // something doomed: a run that deletes no pack does not list every pack.
    let folders: std::collections::BTreeSet<String> = keys
        .iter()
        .filter(|k| !keep.contains(**k))
        .filter_map(|k| k.split_once('/').map(|(d, _)| format!("{d}/")))
        .collect();
    let sizes: HashMap<String, u64> = folders
        .iter()
        .map(|p| vault.store.list(p))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    // Index objects first (a pack no index names is merely unreferenced), then packs, then
    // log objects; the trash objects last, so a run cut short is finished by the next.
    let order = |k: &str| match k.split('/').next() {
        Some("index") => 0,
        Some("data") => 1,
        _ => 2,
    };
    let mut doomed: Vec<&String> = keys
        .iter()
        .copied()
        .filter(|k| !keep.contains(*k))
        .collect();
    doomed.sort_by_key(|k| (order(k), (*k).clone()));
    for (i, key) in doomed.iter().enumerate() {
        if i == doomed.len() / 2 {
            platform::crash_point("maintain-deleting");
        }
        if let Some(size) = sizes.get(*key) {
            vault.store.delete(key)?;
            report.objects_deleted += 1;
            report.bytes_deleted += size;
        }
    }
    for (key, _) in ready {
        vault.store.delete(key)?;
    }
    Ok(())
}

/// Every chunk some restore point refers to: of `map`'s chain, and of every other device's
/// (content is shared: a chunk only another device's log uses is still used).
pub(crate) fn used_chunks(vault: &Vault, map: &LogMap) -> Result<HashSet<ChunkId>> {
    let mut used = HashSet::new();
    chain_chunks(vault, map, &mut used)?;
    let others: Vec<String> = vault
        .chains()?
        .into_iter()
        .filter(|c| *c != map.chain)
        .collect();
    if !others.is_empty() {
        let trashed = vault.trashed()?;
        for chain in others {
            let m = vault.chain_map(&chain, &trashed.keys)?;
            chain_chunks(vault, &m, &mut used)?;
        }
    }
    Ok(used)
}

fn chain_chunks(vault: &Vault, map: &LogMap, used: &mut HashSet<ChunkId>) -> Result<()> {
    let mut cache = None;
    for &gen in map.at.keys() {
        let (_, obj) = vault.read_point(map, gen, &mut cache)?;
        match obj {
            LogObject::Checkpoint(c) => {
                for f in &c.files {
                    for ch in f
                        .content
                        .iter()
                        .flat_map(|c| &c.extents)
                        .flat_map(|e| &e.chunks)
                    {
                        used.insert(ch.id);
                    }
                }
            }
            LogObject::Segment(s) => {
                for r in &s.records {
                    match &r.change {
                        VChange::Content { content, .. } => {
                            for ch in content.extents.iter().flat_map(|e| &e.chunks) {
                                used.insert(ch.id);
                            }
                        }
                        // The chunks a patch keeps are those of earlier records.
                        VChange::Patch { extents, .. } => {
                            for r in extents.iter().flat_map(|e| &e.runs) {
                                if let crate::format::Run::New(v) = r {
                                    used.extend(v.iter().map(|c| c.id));
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(())
}

/// Bundles runs of small log objects. The newest stand-alone checkpoint stays alone: a
/// restore of the newest point starts there.
fn bundle_log(
    vault: &Vault,
    map: &LogMap,
    opts: &MaintainOptions,
    interrupt: &dyn Fn() -> bool,
    replaced: &mut Vec<String>,
    report: &mut MaintainReport,
) -> Result<()> {
    let newest_cp = map.checkpoints.iter().next_back().copied();
    // The objects in chain order, each once, with the gens it serves.
    let mut order: Vec<(usize, u64, u64)> = Vec::new();
    for (&gen, &i) in &map.at {
        match order.last_mut() {
            Some((j, _, last)) if *j == i && *last + 1 == gen => *last = gen,
            _ => order.push((i, gen, gen)),
        }
    }
    let served: HashSet<usize> = order.iter().map(|(i, _, _)| *i).collect();
    // Objects wholly covered by others (a run cut before it trashed them).
    for (i, o) in map.objects.iter().enumerate() {
        if !served.contains(&i) {
            replaced.push(o.key.clone());
        }
    }
    let small = |i: usize| map.objects[i].size < opts.bundle_target / 2;
    let mut groups: Vec<Vec<(usize, u64, u64)>> = Vec::new();
    let mut cur: Vec<(usize, u64, u64)> = Vec::new();
    let mut cur_size = 0u64;
    for &(i, first, last) in &order {
        let alone =
            newest_cp.is_some_and(|c| first <= c && c <= last && map.objects[i].kind.is_some());
        let size = map.objects[i].size;
        if alone || !small(i) || cur_size + size > opts.bundle_target {
            groups.push(std::mem::take(&mut cur));
            cur_size = 0;
        }
        if alone || !small(i) {
            continue;
        }
        cur.push((i, first, last));
        cur_size += size;
    }
    groups.push(cur);
    for group in groups.into_iter().filter(|g| g.len() > 1) {
        if interrupt() {
            report.interrupted = true;
            return Ok(());
        }
        let first = group[0].1;
        let last = group[group.len() - 1].2;
        let mut objects: Vec<Bundled> = Vec::new();
        let mut ok = true;
        for &(i, from, to) in &group {
            let entry = &map.objects[i];
            let mut got: HashMap<u64, Bundled> = match entry.kind {
                Some(kind) => {
                    let sealed = vault.store.get(&entry.key)?;
                    HashMap::from([(
                        entry.first,
                        Bundled {
                            gen: entry.first,
                            checkpoint: kind == LogKind::Checkpoint,
                            sealed,
                        },
                    )])
                }
                None => vault.read_bundle(entry)?,
            };
            for g in from..=to {
                match got.remove(&g) {
                    Some(b) => objects.push(b),
                    None => ok = false,
                }
            }
        }
        // Each object must open and follow the one before: a damaged one is not copied into a
        // bundle (verify names it where it is).
        let mut prev: Option<[u8; 32]> = None;
        for b in &objects {
            let kind = if b.checkpoint {
                LogKind::Checkpoint
            } else {
                LogKind::Segment
            };
            match vault.open_log(b.gen, kind, &b.sealed) {
                Ok((hash, obj)) => {
                    if prev.is_some_and(|p| p != obj.pos().prev) {
                        ok = false;
                    }
                    prev = Some(hash);
                }
                Err(_) => ok = false,
            }
        }
        if !ok || objects.len() as u64 != last - first + 1 {
            warn!(
                first,
                last, "log objects that do not open or chain are left as they are; run verify"
            );
            continue;
        }
        let (key, sealed) = vault.seal_bundle(&Bundle {
            first,
            last,
            objects,
        })?;
        vault.store.put(&key, sealed)?;
        report.bundles_written += 1;
        replaced.extend(group.iter().map(|(i, _, _)| map.objects[*i].key.clone()));
    }
    Ok(())
}

/// Packs written and removed by a repack.
#[derive(Default)]
struct Repacked {
    written: Vec<PackIndex>,
    /// Names of indexed packs whose chunks now live elsewhere (or are not needed).
    removed: Vec<String>,
    /// Keys of packs no index lists that hold nothing the log needs.
    orphans_dropped: Vec<String>,
}

/// Copies the chunks the log needs out of small, mostly unused and unlisted packs into full
/// ones. Chunks stay sealed as they are (a chunk's sealing is bound to its id, not its pack).
#[allow(clippy::too_many_arguments)]
fn repack(
    vault: &Vault,
    map: &LogMap,
    index: &[IndexObject],
    trashed: &HashSet<String>,
    opts: &MaintainOptions,
    interrupt: &dyn Fn() -> bool,
    progress: &Progress,
    report: &mut MaintainReport,
) -> Result<Repacked> {
    let mut out = Repacked::default();
    // Every listed pack once.
    let mut packs: BTreeMap<String, &PackIndex> = BTreeMap::new();
    for p in index.iter().flat_map(|o| o.packs.iter().flatten()) {
        packs.entry(p.pack.clone()).or_insert(p);
    }
    report.packs_before = packs.len() as u64;
    let stored: Vec<(String, u64)> = vault.store.list("data/")?;
    let orphans: Vec<(String, u64)> = stored
        .into_iter()
        .filter(|(k, _)| {
            !trashed.contains(k) && !packs.contains_key(k.rsplit('/').next().unwrap_or(""))
        })
        .collect();
    let small: Vec<&str> = packs
        .values()
        .filter(|p| p.size < opts.small_pack)
        .map(|p| p.pack.as_str())
        .collect();
    if small.len() < 2 && orphans.is_empty() && !opts.find_unused {
        return Ok(out);
    }
    // Which chunks the log uses costs a read of the whole log: only prune, and packs no
    // index lists, need it. Otherwise every chunk counts as used (small packs are folded,
    // nothing is dropped).
    let used: Option<HashSet<ChunkId>> = if opts.find_unused || !orphans.is_empty() {
        Some(used_chunks(vault, map)?)
    } else {
        None
    };
    let is_used = |id: &ChunkId| used.as_ref().is_none_or(|u| u.contains(id));
    // Which packs to rewrite, in name order (stable across runs): small ones, mostly unused
    // ones, and where a chunk is held twice the copy in a candidate goes.
    let mut candidates: Vec<&PackIndex> = Vec::new();
    for p in packs.values() {
        let live: u64 = p
            .blobs
            .iter()
            .filter(|b| is_used(&b.id))
            .map(|b| u64::from(b.len))
            .sum();
        let unused = 1.0 - live as f64 / p.size.max(1) as f64;
        if p.size < opts.small_pack || (unused > opts.unused_share && p.size > 0) || live == 0 {
            candidates.push(p);
        }
    }
    // One small pack copied into another small pack gains nothing; dropping unused chunks
    // or folding several does.
    let drops = candidates
        .iter()
        .any(|p| p.blobs.iter().any(|b| !is_used(&b.id)));
    if candidates.len() < 2 && orphans.is_empty() && !drops {
        return Ok(out);
    }
    let cand_names: HashSet<&str> = candidates.iter().map(|p| p.pack.as_str()).collect();
    // Chunks held by packs that stay.
    let mut held: HashSet<ChunkId> = packs
        .values()
        .filter(|p| !cand_names.contains(p.pack.as_str()))
        .flat_map(|p| p.blobs.iter().map(|b| b.id))
        .collect();
    let total: u64 = candidates.iter().map(|p| p.size).sum::<u64>()
        + orphans.iter().map(|(_, s)| *s).sum::<u64>();
    progress
        .bytes_total
        .store(total.min(opts.max_repack_bytes), Ordering::Relaxed);
    // The newest point's chunks go first and in the order of its files, the others after
    // them: a restore of the newest point (the one people make) then reads long runs of few
    // packs instead of a chunk here and there among older versions.
    let wanted: HashSet<ChunkId> = candidates
        .iter()
        .flat_map(|p| p.blobs.iter().map(|b| b.id))
        .collect();
    let rank = newest_order(vault, &wanted)?;
    let first_rank = |p: &PackIndex| {
        p.blobs
            .iter()
            .filter_map(|b| rank.get(&b.id))
            .min()
            .copied()
            .unwrap_or(u32::MAX)
    };
    candidates.sort_by_cached_key(|p| (first_rank(p), p.pack.clone()));
    let mut writer = RawPacker::new(vault);
    // Blobs copied, held in memory up to REPACK_BATCH bytes so that they can be written in
    // that order across the packs they come from.
    let mut batch: Vec<(u32, Vec<u8>, BlobEntry)> = Vec::new();
    let mut batch_bytes = 0usize;
    let write_batch = |batch: &mut Vec<(u32, Vec<u8>, BlobEntry)>,
                       writer: &mut RawPacker<'_>,
                       written: &mut Vec<PackIndex>|
     -> Result<()> {
        batch.sort_by_key(|(r, _, _)| *r);
        for (_, sealed, b) in batch.drain(..) {
            writer.add(&sealed, &b, written)?;
        }
        Ok(())
    };
    for p in candidates {
        if interrupt()
            || report.bytes_repacked + p.size > opts.max_repack_bytes && report.bytes_repacked > 0
        {
            report.interrupted |= interrupt();
            break;
        }
        let needed: Vec<&BlobEntry> = p
            .blobs
            .iter()
            .filter(|b| is_used(&b.id) && !held.contains(&b.id))
            .collect();
        if !needed.is_empty() {
            let bytes = vault.store.get(&Vault::pack_key(&p.pack))?;
            report.bytes_repacked += bytes.len() as u64;
            progress
                .bytes_done
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            for b in needed {
                let sealed = bytes
                    .get(b.offset as usize..b.offset as usize + b.len as usize)
                    .ok_or_else(|| Error::Damaged {
                        object: Vault::pack_key(&p.pack),
                        detail: "shorter than its index says; run verify".into(),
                    })?;
                // Checked before it is copied: a damaged chunk is not spread to a new pack.
                vault.open_blob(&bytes, b)?;
                batch_bytes += sealed.len();
                batch.push((
                    rank.get(&b.id).copied().unwrap_or(u32::MAX),
                    sealed.to_vec(),
                    b.clone(),
                ));
                held.insert(b.id);
            }
            if batch_bytes >= REPACK_BATCH {
                write_batch(&mut batch, &mut writer, &mut out.written)?;
                batch_bytes = 0;
            }
        }
        report.chunks_dropped += p.blobs.iter().filter(|b| !is_used(&b.id)).count() as u64;
        report.packs_repacked += 1;
        out.removed.push(p.pack.clone());
    }
    write_batch(&mut batch, &mut writer, &mut out.written)?;
    for (key, size) in &orphans {
        if interrupt() {
            report.interrupted = true;
            break;
        }
        let bytes = match vault.store.get(key) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        report.bytes_repacked += size;
        progress.bytes_done.fetch_add(*size, Ordering::Relaxed);
        let blobs = match vault.open_pack_header(&bytes) {
            Ok(b) => b,
            Err(e) => {
                // Not ours to judge by its header: leave it for verify to name.
                warn!(pack = key, "{e}; left as it is");
                continue;
            }
        };
        for b in &blobs {
            if !is_used(&b.id) || held.contains(&b.id) || vault.open_blob(&bytes, b).is_err() {
                continue;
            }
            let sealed = &bytes[b.offset as usize..b.offset as usize + b.len as usize];
            writer.add(sealed, b, &mut out.written)?;
            held.insert(b.id);
        }
        out.orphans_dropped.push(key.clone());
    }
    writer.finish(&mut out.written)?;
    report.packs_written = out.written.len() as u64;
    Ok(out)
}

/// Writes packs of sealed blobs copied from other packs.
/// How many bytes of blobs a repack holds in memory to put them in order.
const REPACK_BATCH: usize = 128 << 20;

/// The place of each of `wanted` among the chunks of the newest point, in the order of its
/// paths and of each file's data (chunks it does not use have none).
fn newest_order(vault: &Vault, wanted: &HashSet<ChunkId>) -> Result<HashMap<ChunkId, u32>> {
    let mut rank = HashMap::new();
    if wanted.is_empty() {
        return Ok(rank);
    }
    let Some((tree, _)) = vault.load_tree(None)? else {
        return Ok(rank);
    };
    let mut seen = HashSet::new();
    for (_, id) in tree.paths() {
        if !seen.insert(id) {
            continue;
        }
        let Some(c) = tree.files.get(&id).and_then(|f| f.content.as_ref()) else {
            continue;
        };
        for ch in c.extents.iter().flat_map(|e| &e.chunks) {
            if wanted.contains(&ch.id) {
                let n = rank.len() as u32;
                rank.entry(ch.id).or_insert(n);
            }
        }
    }
    Ok(rank)
}

struct RawPacker<'v> {
    vault: &'v Vault,
    buf: Vec<u8>,
    blobs: Vec<BlobEntry>,
}

impl<'v> RawPacker<'v> {
    fn new(vault: &'v Vault) -> Self {
        RawPacker {
            vault,
            buf: Vec::new(),
            blobs: Vec::new(),
        }
    }

    fn add(&mut self, sealed: &[u8], b: &BlobEntry, written: &mut Vec<PackIndex>) -> Result<()> {
        self.blobs.push(BlobEntry {
            offset: self.buf.len() as u64,
            ..b.clone()
        });
        self.buf.extend_from_slice(sealed);
        if self.buf.len() >= PACK_TARGET {
            self.finish(written)?;
        }
        Ok(())
    }

    /// Writes the pack being filled (durable when this returns).
    fn finish(&mut self, written: &mut Vec<PackIndex>) -> Result<()> {
        if self.blobs.is_empty() {
            return Ok(());
        }
        let (bytes, index) = self.vault.seal_pack(
            std::mem::take(&mut self.buf),
            std::mem::take(&mut self.blobs),
        )?;
        self.vault.store.put(&Vault::pack_key(&index.pack), bytes)?;
        written.push(index);
        Ok(())
    }
}

/// The lease a pocket's drain holds while it writes a vault, so that maintenance from
/// elsewhere never deletes what the drain may still count on. Kept by value (the drain owns
/// the vault); removed with [`WriteLease::release`].
#[derive(Debug)]
pub(crate) struct WriteLease {
    key: String,
    lease: Lease,
}

impl WriteLease {
    pub(crate) fn take(vault: &Vault) -> Result<WriteLease> {
        let g = take_lease(vault, "write", None)?;
        let out = WriteLease {
            key: g.key.clone(),
            lease: g.lease.clone(),
        };
        std::mem::forget(g);
        Ok(out)
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    pub(crate) fn renew(&mut self, vault: &Vault) -> Result<()> {
        let now = now_ns();
        if self.lease.expires_ns - now > LEASE_NS * 2 / 3 {
            return Ok(());
        }
        self.lease.expires_ns = now + LEASE_NS;
        vault.put_lease(&self.key, &self.lease)
    }

    pub(crate) fn release(self, vault: &Vault) {
        if let Err(e) = vault.store.delete_briefly(&self.key, RELEASE_WITHIN) {
            debug!("cannot remove the lease {}: {e}", self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Content, Extent, Position, Segment, VMeta, VRecord};
    use crate::tree::Tree;
    use crate::vault::Head;

    fn content_of(refs: Vec<crate::format::ChunkRef>) -> Content {
        Content {
            size: refs.iter().map(|r| u64::from(r.len)).sum(),
            extents: vec![Extent {
                offset: 0,
                chunks: refs,
            }],
        }
    }

    use crate::vault::tests::meta as file_meta;

    /// A tree of one file `f` (id 2) made of `chunk`.
    fn one_file_tree(chunk: &crate::format::ChunkRef) -> Tree {
        let meta = file_meta(u64::from(chunk.len));
        let mut tree = Tree::new(1);
        tree.apply(&VChange::Create {
            parent: 1,
            name: b"f".to_vec(),
            file: 2,
            meta,
        });
        tree.apply(&VChange::Content {
            file: 2,
            meta,
            content: content_of(vec![chunk.clone()]),
        });
        tree
    }

    /// A drain whose index still listed a chunk that prune had dropped (a stale index in
    /// another process) refers to it again: emptying the trash keeps the pack that holds it.
    #[test]
    fn a_trashed_pack_the_log_needs_again_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let (rt, mut vault) = crate::vault::test_vault(tmp.path());
        let a_data = vec![1u8; 5000];
        let b_data = vec![2u8; 7000];
        // Two packs: chunk A, chunk B.
        let mut packer = vault.packer();
        let a = packer.add(&a_data).unwrap();
        packer.finish().unwrap();
        let mut packer = vault.packer();
        let b = packer.add(&b_data).unwrap();
        packer.finish().unwrap();
        let meta = file_meta(5000);
        let pos = |h: &Head, seq: u64| Position {
            gen: h.gen + 1,
            prev: h.hash,
            journal_id: 1,
            seq,
            time_ns: seq as i64,
            written_ns: 0,
        };
        let tree = one_file_tree(&a);
        let head = vault
            .append_log(
                &Head::default(),
                &LogObject::Checkpoint(tree.to_checkpoint(pos(&Head::default(), 1))),
            )
            .unwrap();
        // Prune: B is used by no point; its pack goes to the trash (grace: an hour).
        let opts = MaintainOptions {
            grace: Duration::from_secs(3600),
            find_unused: true,
            unused_share: 0.0,
            ..Default::default()
        };
        let r = maintain(&mut vault, &opts, None, &|| false, &Default::default()).unwrap();
        assert_eq!(r.chunks_dropped, 1, "{r:?}");
        // A drain that still believed B held writes a version made of it.
        let seg = Segment {
            pos: pos(&head, 2),
            first_seq: 2,
            records: vec![VRecord {
                seq: 2,
                time_ns: 2,
                change: VChange::Content {
                    file: 2,
                    meta: VMeta { size: 7000, ..meta },
                    content: content_of(vec![b.clone()]),
                },
            }],
            pending: Vec::new(),
        };
        vault.append_log(&head, &LogObject::Segment(seg)).unwrap();
        // The grace period is over: the trash is emptied, but B's pack stays and is indexed.
        let opts = MaintainOptions {
            grace: Duration::ZERO,
            ..Default::default()
        };
        let r = maintain(&mut vault, &opts, None, &|| false, &Default::default()).unwrap();
        assert_eq!(r.packs_rescued, 1, "{r:?}");
        vault.load_index().unwrap();
        assert_eq!(vault.read_chunk(&b.id).unwrap(), b_data);
        assert_eq!(vault.read_chunk(&a.id).unwrap(), a_data);
        let v = crate::verify::verify(&vault, true, &Default::default()).unwrap();
        assert!(v.damage.is_empty(), "{:?}", v.damage);
        rt.shutdown_background();
    }

    /// Content is shared between devices: a prune run by one device keeps the chunks only
    /// another device's log uses.
    #[test]
    fn maintenance_keeps_what_only_another_devices_log_uses() {
        let tmp = tempfile::tempdir().unwrap();
        let (rt, mut vault) = crate::vault::test_vault(tmp.path());
        vault.join_device("a1a1", "laptop", "drive", 0).unwrap();
        let (mine, theirs) = (vec![1u8; 5000], vec![2u8; 7000]);
        let mut packer = vault.packer();
        let a = packer.add(&mine).unwrap();
        packer.finish().unwrap();
        let mut packer = vault.packer();
        let b = packer.add(&theirs).unwrap();
        packer.finish().unwrap();
        let checkpoint = |r: &crate::format::ChunkRef| {
            LogObject::Checkpoint(one_file_tree(r).to_checkpoint(Position {
                gen: 1,
                prev: [0; 32],
                journal_id: 1,
                seq: 1,
                time_ns: 1,
                written_ns: 0,
            }))
        };
        vault.set_chain("a1a1");
        vault.append_log(&Head::default(), &checkpoint(&b)).unwrap();
        vault.set_chain("");
        vault.append_log(&Head::default(), &checkpoint(&a)).unwrap();
        let opts = MaintainOptions {
            grace: Duration::ZERO,
            find_unused: true,
            unused_share: 0.0,
            ..Default::default()
        };
        let r = maintain(&mut vault, &opts, None, &|| false, &Default::default()).unwrap();
        assert_eq!(r.chunks_dropped, 0, "{r:?}");
        vault.load_index().unwrap();
        assert_eq!(vault.read_chunk(&a.id).unwrap(), mine);
        assert_eq!(vault.read_chunk(&b.id).unwrap(), theirs);
        // The laptop's tree is read from its own chain.
        let (t, _) = vault.load_chain_tree("a1a1").unwrap().unwrap();
        assert_eq!(t.files[&2].meta.size, 7000);
        rt.shutdown_background();
    }

    /// Small packs written in any order are folded with the newest point's chunks first, in
    /// the order of its paths and data, and chunks no longer in it after them.
    #[test]
    fn repacking_puts_the_newest_point_in_file_order() {
        let tmp = tempfile::tempdir().unwrap();
        let (rt, mut vault) = crate::vault::test_vault(tmp.path());
        // Twelve chunks, each in its own small pack, written in a shuffled order.
        let data: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 3000 + i as usize]).collect();
        let mut refs = vec![None; data.len()];
        for i in [7usize, 2, 11, 0, 5, 9, 1, 10, 3, 8, 6, 4] {
            let mut packer = vault.packer();
            refs[i] = Some(packer.add(&data[i]).unwrap());
            packer.finish().unwrap();
        }
        let refs: Vec<_> = refs.into_iter().map(Option::unwrap).collect();
        let meta = file_meta;
        // The newest point: "a" holds chunks 4, 5; "b" holds 0..4; chunks 6.. were older
        // versions (in an earlier point only).
        let mut tree = Tree::new(1);
        let files = [(b"b".to_vec(), 2u64, 0..4usize), (b"a".to_vec(), 3, 4..6)];
        for (name, id, range) in files.iter().cloned() {
            tree.apply(&VChange::Create {
                parent: 1,
                name,
                file: id,
                meta: meta(0),
            });
            tree.apply(&VChange::Content {
                file: id,
                meta: meta(0),
                content: content_of(refs[range].to_vec()),
            });
        }
        let mut old = tree.clone();
        old.apply(&VChange::Content {
            file: 2,
            meta: meta(0),
            content: content_of(refs[6..].to_vec()),
        });
        let pos = |gen: u64, prev: [u8; 32]| Position {
            gen,
            prev,
            journal_id: 1,
            seq: gen,
            time_ns: gen as i64,
            written_ns: 0,
        };
        let head = vault
            .append_log(
                &Head::default(),
                &LogObject::Checkpoint(old.to_checkpoint(pos(1, [0; 32]))),
            )
            .unwrap();
        vault
            .append_log(
                &head,
                &LogObject::Checkpoint(tree.to_checkpoint(pos(2, head.hash))),
            )
            .unwrap();
        let opts = MaintainOptions {
            grace: Duration::ZERO,
            ..Default::default()
        };
        let r = maintain(&mut vault, &opts, None, &|| false, &Default::default()).unwrap();
        assert_eq!((r.packs_repacked, r.packs_written), (12, 1), "{r:?}");
        let index = vault.read_index_objects(&HashSet::new()).unwrap();
        let packs: Vec<&PackIndex> = index
            .iter()
            .flat_map(|o| o.packs.iter().flatten())
            .collect();
        assert_eq!(packs.len(), 1);
        let mut blobs = packs[0].blobs.clone();
        blobs.sort_by_key(|b| b.offset);
        let order: Vec<usize> = blobs
            .iter()
            .map(|b| refs.iter().position(|r| r.id == b.id).unwrap())
            .collect();
        // "a" (4, 5) before "b" (0..4), then the rest.
        assert_eq!(&order[..6], &[4, 5, 0, 1, 2, 3], "{order:?}");
        rt.shutdown_background();
    }
}
