//! Retention: `forget` keeps the restore points a policy names and rewrites the log so that
//! the others are gone; `prune` then drops the chunks no kept point needs. Both go through
//! maintenance's trash: what they replace is ignored by readers at once and deleted after the
//! grace period, and never while a kept point still refers to it (see `maintain`).

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::error::Result;
use crate::format::{Position, Segment, VChange, VRecord};
use crate::tree::Tree;
use crate::vault::{now_ns, Head, LogObject, Point, Vault};

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
        // Points of one moment (a drain and its checkpoint; a point and the segment that
        // brought the large files it waited for) count once, as the newest of them.
        newest_first.dedup_by_key(|p| p.time_ns);
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
    let trashed = vault.trashed()?;
    let map = vault.log_map_without(&trashed.keys)?;
    let Some(mut head) = vault.head()? else {
        return Ok((report, None));
    };
    let mut tree = Tree::default();
    let mut pending: Vec<VRecord> = Vec::new();
    // After an old checkpoint the records since the last kept point no longer say how to get
    // there: the next kept point is written as a checkpoint.
    let mut need_checkpoint = true;
    let mut cache = None;
    let gens: Vec<u64> = map.at.keys().copied().collect();
    for gen in &gens {
        let (_, obj) = vault.read_point(&map, *gen, &mut cache)?;
        let pos: Position = obj.pos().clone();
        match obj {
            LogObject::Segment(s) => {
                tree.apply_segment(&s);
                pending.extend(s.records);
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
                pending: tree.pending_list(),
            })
        };
        head = vault.append_log(&head, &obj)?;
        pending.clear();
        need_checkpoint = false;
    }
    // The new objects are durable: the old ones go to the trash, deleted by maintenance once
    // the grace period has passed (a restore started before still finds them).
    vault.put_trash(map.objects.iter().map(|o| o.key.clone()).collect())?;
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
            VChange::Content { file, .. } | VChange::Patch { file, .. } => {
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
        .map(|(_, mut r)| {
            // What a patch applied to is gone: the kept version is written whole (it is the
            // one the end of the range holds).
            if let VChange::Patch { file, meta, .. } = r.change {
                if let Some(content) = end.files.get(&file).and_then(|f| f.content.clone()) {
                    r.change = VChange::Content {
                        file,
                        meta,
                        content,
                    };
                }
            }
            r
        })
        .collect()
}

/// What prune would drop: chunks no point of the log needs, and their sealed bytes.
pub fn unused(vault: &Vault) -> Result<(u64, u64)> {
    let trashed = vault.trashed()?;
    let map = vault.log_map_without(&trashed.keys)?;
    let used = crate::maintain::used_chunks(vault, &map)?;
    let mut seen = HashSet::new();
    let (mut n, mut bytes) = (0, 0);
    for p in vault
        .read_index_objects(&trashed.keys)?
        .iter()
        .flat_map(|o| o.packs.iter().flatten())
    {
        for b in &p.blobs {
            if !used.contains(&b.id) && seen.insert(b.id) {
                n += 1;
                bytes += u64::from(b.len);
            }
        }
    }
    Ok((n, bytes))
}

/// Prune: maintenance that drops every chunk no kept point needs, whatever the pack it is
/// in. What it replaces goes to the trash, deleted after `grace`.
pub fn prune(
    vault: &mut Vault,
    grace: std::time::Duration,
    progress: &crate::drain::Progress,
) -> Result<crate::maintain::MaintainReport> {
    let opts = crate::maintain::MaintainOptions {
        grace,
        unused_share: 0.0,
        find_unused: true,
        max_repack_bytes: u64::MAX,
        ..Default::default()
    };
    crate::maintain::maintain(vault, &opts, None, &|| false, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::LogKind;

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
