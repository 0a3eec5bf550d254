//! Retention: `forget` keeps the restore points a policy names and rewrites the log so that
//! the others are gone; `prune` then deletes the packs no kept point needs. Neither ever
//! removes something a kept point refers to: prune computes what is referenced from the log
//! as it is after forget, and deletes only packs none of whose chunks are referenced.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::error::{Error, Result};
use crate::format::{ChunkId, Position, Segment, VChange, VRecord};
use crate::tree::Tree;
use crate::vault::{now_ns, Head, LogKind, LogObject, Point, Vault};

/// Which points to keep. Like restic's: for each unit, the newest point of each of the
/// last N units that have one; the newest point is always kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: usize,
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        *self == KeepPolicy::default()
    }

    /// The gens of the points to keep.
    pub fn select(&self, points: &[Point]) -> BTreeSet<u64> {
        let mut newest_first: Vec<&Point> = points.iter().collect();
        newest_first.sort_by_key(|p| std::cmp::Reverse((p.time_ns, p.gen)));
        let mut keep = BTreeSet::new();
        if let Some(p) = newest_first.first() {
            keep.insert(p.gen);
        }
        for p in newest_first.iter().take(self.last) {
            keep.insert(p.gen);
        }
        const H: i64 = 3_600_000_000_000;
        for (n, unit) in [
            (self.hourly, H),
            (self.daily, 24 * H),
            (self.weekly, 7 * 24 * H),
            (self.monthly, 30 * 24 * H),
        ] {
            let mut buckets = HashSet::new();
            for p in &newest_first {
                if buckets.len() >= n {
                    break;
                }
                if buckets.insert(p.time_ns.div_euclid(unit)) {
                    keep.insert(p.gen);
                }
            }
        }
        keep
    }
}

/// What forget did (or would do).
#[derive(Clone, Debug, Default)]
pub struct ForgetReport {
    pub points_before: usize,
    pub kept: Vec<Point>,
    pub removed: usize,
}

/// Rewrites the log to hold only the points `policy` keeps. The new objects continue the
/// chain after the current head, and the old ones are deleted only once the new ones are
/// durable, so an interrupted forget leaves a log that restores every point it had.
pub fn forget(
    vault: &Vault,
    policy: &KeepPolicy,
    dry_run: bool,
) -> Result<(ForgetReport, Option<Head>)> {
    let points = vault.points()?;
    let keep = policy.select(&points);
    let mut report = ForgetReport {
        points_before: points.len(),
        kept: points
            .iter()
            .filter(|p| keep.contains(&p.gen))
            .cloned()
            .collect(),
        removed: points.len() - keep.len(),
    };
    if dry_run || report.removed == 0 {
        report.kept.sort_by_key(|p| p.gen);
        return Ok((report, None));
    }
    let log = vault.list_log()?;
    let Some(mut head) = vault.head()? else {
        return Ok((report, None));
    };
    let old_last = head.gen;
    let mut tree = Tree::default();
    let mut pending: Vec<VRecord> = Vec::new();
    // After an old checkpoint the records since the last kept point no longer say how to get
    // there: the next kept point is written as a checkpoint.
    let mut need_checkpoint = true;
    for (gen, kind) in &log {
        let (_, obj) = vault.read_log(*gen, *kind)?;
        let pos: Position = obj.pos().clone();
        match obj {
            LogObject::Segment(s) => {
                for r in s.records {
                    tree.apply(&r.change);
                    pending.push(r);
                }
            }
            LogObject::Checkpoint(c) => {
                tree = Tree::from_checkpoint(c);
                pending.clear();
                need_checkpoint = true;
            }
        }
        if !keep.contains(gen) {
            continue;
        }
        let new_pos = Position {
            gen: head.gen + 1,
            prev: head.hash,
            journal_id: pos.journal_id,
            seq: pos.seq,
            time_ns: pos.time_ns,
            written_ns: now_ns(),
        };
        let obj = if need_checkpoint {
            LogObject::Checkpoint(tree.to_checkpoint(new_pos))
        } else {
            let first_seq = pending.first().map_or(pos.seq, |r| r.seq);
            LogObject::Segment(Segment {
                pos: new_pos,
                first_seq,
                records: collapse(std::mem::take(&mut pending), &tree),
            })
        };
        head = vault.append_log(&head, &obj)?;
        pending.clear();
        need_checkpoint = false;
    }
    // Oldest first: whatever is left if this is interrupted still chains to the new objects.
    for (gen, kind) in &log {
        if *gen <= old_last {
            vault.store.delete(&format!(
                "{}/{}",
                match kind {
                    LogKind::Segment => "log",
                    LogKind::Checkpoint => "checkpoints",
                },
                crate::format::gen_name(*gen)
            ))?;
        }
    }
    report.kept.sort_by_key(|p| p.gen);
    Ok((report, Some(head)))
}

/// Drops the content records a later one supersedes, and those of files gone by the end:
/// their chunks are then free for prune. Records that shape the tree all stay.
fn collapse(records: Vec<VRecord>, end: &Tree) -> Vec<VRecord> {
    // Per record index: is it the last content of a file incarnation that is alive at the end?
    let mut last: HashMap<u64, usize> = HashMap::new();
    let mut dead: HashSet<usize> = HashSet::new();
    for (i, r) in records.iter().enumerate() {
        match &r.change {
            VChange::Create { file, .. }
            | VChange::Mkdir { file, .. }
            | VChange::Symlink { file, .. } => {
                if let Some(prev) = last.remove(file) {
                    dead.insert(prev);
                }
            }
            VChange::Content { file, .. } => {
                if let Some(prev) = last.insert(*file, i) {
                    dead.insert(prev);
                }
            }
            _ => {}
        }
    }
    for (file, i) in &last {
        if !end.alive(*file) {
            dead.insert(*i);
        }
    }
    records
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !dead.contains(i))
        .map(|(_, r)| r)
        .collect()
}

/// What prune did.
#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    pub packs_deleted: u64,
    pub bytes_freed: u64,
    pub packs_kept: u64,
    /// Bytes in kept packs that no point refers to (kept because the pack holds live chunks).
    pub unused_bytes_kept: u64,
}

/// Deletes every pack (and its index object) that no point of the log refers to, and packs
/// left by interrupted drains that no index names.
pub fn prune(vault: &Vault, dry_run: bool) -> Result<PruneReport> {
    let mut used: HashSet<ChunkId> = HashSet::new();
    let replayed = vault.replay_all(&mut |tree, _| {
        for (_, c) in tree.contents() {
            for ch in c.extents.iter().flat_map(|e| &e.chunks) {
                used.insert(ch.id);
            }
        }
        Ok(())
    })?;
    if replayed.is_none() && !vault.list_log()?.is_empty() {
        return Err(Error::Format(
            "the log cannot be replayed; run verify first".into(),
        ));
    }
    vault.load_index()?;
    let mut report = PruneReport::default();
    let stored: HashMap<String, u64> = vault.store.list("data/")?.into_iter().collect();
    let mut indexed = HashSet::new();
    for (key, _) in vault.store.list("index/")? {
        let name = key.trim_start_matches("index/").to_owned();
        let idx = vault.read_index_object(&name)?;
        let pack_key = Vault::pack_key(&name);
        indexed.insert(pack_key.clone());
        let live: u64 = idx
            .blobs
            .iter()
            .filter(|b| used.contains(&b.id))
            .map(|b| b.len as u64)
            .sum();
        if live == 0 {
            report.packs_deleted += 1;
            report.bytes_freed += idx.size;
            if !dry_run {
                // The index object first: a pack without one is merely unreferenced.
                vault.store.delete(&key)?;
                vault.store.delete(&pack_key)?;
            }
        } else {
            report.packs_kept += 1;
            report.unused_bytes_kept += idx.size.saturating_sub(live);
        }
    }
    for (key, size) in &stored {
        if !indexed.contains(key) {
            report.packs_deleted += 1;
            report.bytes_freed += size;
            if !dry_run {
                vault.store.delete(key)?;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(gen: u64, hours: f64) -> Point {
        Point {
            gen,
            kind: LogKind::Segment,
            time_ns: (hours * 3.6e12) as i64,
            written_ns: 0,
            seq: gen,
            records: 1,
        }
    }

    #[test]
    fn policy_keeps_the_newest_of_each_unit() {
        // Points every 20 minutes over 3 days.
        let points: Vec<Point> = (0..216).map(|i| point(i + 1, i as f64 / 3.0)).collect();
        let hourly = KeepPolicy {
            hourly: 24,
            ..Default::default()
        }
        .select(&points);
        assert_eq!(hourly.len(), 24);
        assert!(hourly.contains(&216), "the newest is kept");
        // The newest of hour 71 (points 214, 215, 216) is 216; of hour 70, 213.
        assert!(hourly.contains(&213) && !hourly.contains(&214));
        let both = KeepPolicy {
            hourly: 2,
            daily: 3,
            ..Default::default()
        }
        .select(&points);
        // Days 2, 1, 0 -> their newest points: 216, 144, 72; hours: 216, 213.
        assert_eq!(
            both.into_iter().collect::<Vec<_>>(),
            vec![72, 144, 213, 216]
        );
        let none = KeepPolicy::default().select(&points);
        assert_eq!(
            none.into_iter().collect::<Vec<_>>(),
            vec![216],
            "the newest always stays"
        );
    }
}
