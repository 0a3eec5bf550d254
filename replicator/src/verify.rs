//! `verify`: every object of a vault checked, and each damaged one named with the files and
//! versions it affects. Without `--read-data` packs are checked for presence and size; with
//! it every byte is read, authenticated and hashed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;

use crate::drain::Progress;
use crate::error::{Error, Result};
use crate::format::ChunkId;
use crate::vault::Vault;

/// One damaged object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The object's key at the destination.
    pub object: String,
    pub detail: String,
    /// "path (version of TIME)" for each file version that needs it.
    pub affects: Vec<String>,
}

/// One member of a group, as verify found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberCheck {
    pub member: String,
    /// Objects it lacks, or (reading every byte) holds damaged, that the others hold:
    /// `--repair` rebuilds them there from the others.
    pub lacking: Vec<String>,
    /// It did not answer (so was not checked): why.
    pub away: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub packs: u64,
    pub chunks: u64,
    pub log_objects: u64,
    pub bytes_read: u64,
    /// Packs no index refers to (left by an interrupted drain; prune removes them).
    pub unreferenced_packs: u64,
    pub damage: Vec<Damage>,
    /// A group: each member against the others.
    pub members: Vec<MemberCheck>,
    /// What `repair` acts on.
    pub(crate) found: Found,
}

/// The damaged objects, as repair needs them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Found {
    /// Names of packs that are missing, cut, or hold a chunk that fails its check.
    pub packs: BTreeSet<String>,
    /// Keys of index objects that do not open.
    pub index: Vec<String>,
    /// A group: objects its members lack or hold damaged (the others hold them).
    pub members: u64,
}

pub fn verify(vault: &Vault, read_data: bool, progress: &Progress) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut damage: Vec<Damage> = Vec::new();
    // Chunks that cannot be read back, and which object is to blame.
    let mut bad_chunks: HashMap<ChunkId, usize> = HashMap::new();

    let mut found = Found::default();
    let trashed = vault.trashed()?;
    let objects = vault.read_index_objects(&trashed.keys)?;
    let mut index_map = std::collections::HashMap::new();
    for o in &objects {
        match &o.packs {
            None => {
                found.index.push(o.key.clone());
                damage.push(Damage {
                    object: o.key.clone(),
                    detail: "the index object cannot be opened (damaged or tampered with); its packs' chunks will be sent again".into(),
                    affects: Vec::new(),
                });
            }
            Some(packs) => {
                for idx in packs {
                    let pack: std::sync::Arc<str> = std::sync::Arc::from(idx.pack.as_str());
                    for b in &idx.blobs {
                        index_map.insert(
                            b.id,
                            crate::vault::Loc {
                                pack: pack.clone(),
                                blob: b.clone(),
                            },
                        );
                    }
                }
            }
        }
    }
    vault.set_index(index_map);
    let stored: HashMap<String, u64> = vault.store.list("data/")?.into_iter().collect();
    // A group: packs fewer than k members hold cannot be read, though listed.
    let short: HashMap<String, usize> = match vault.store.group() {
        Some(g) => g.short_packs()?,
        None => HashMap::new(),
    };
    let mut packs: Vec<&crate::format::PackIndex> = Vec::new();
    let mut seen_packs = HashSet::new();
    for o in &objects {
        for idx in o.packs.iter().flatten() {
            if seen_packs.insert(idx.pack.as_str()) {
                packs.push(idx);
            }
        }
    }
    let mut indexed_packs = HashSet::new();
    let total: u64 = stored.values().sum();
    progress
        .bytes_total
        .store(if read_data { total } else { 0 }, Ordering::Relaxed);
    progress
        .files_total
        .store(packs.len() as u64, Ordering::Relaxed);
    for idx in packs {
        progress.files_done.fetch_add(1, Ordering::Relaxed);
        let name = &idx.pack;
        let key = Vault::pack_key(name);
        indexed_packs.insert(key.clone());
        report.packs += 1;
        report.chunks += idx.blobs.len() as u64;
        let mut blame =
            |detail: String, ids: &mut dyn Iterator<Item = ChunkId>, damage: &mut Vec<Damage>| {
                found.packs.insert(name.clone());
                damage.push(Damage {
                    object: key.clone(),
                    detail,
                    affects: Vec::new(),
                });
                for id in ids {
                    bad_chunks.insert(id, damage.len() - 1);
                }
            };
        if let Some(held) = short.get(&key) {
            blame(
                format!(
                    "only {held} of the group's members hold a shard of it, fewer than it needs: it cannot be read"
                ),
                &mut idx.blobs.iter().map(|b| b.id),
                &mut damage,
            );
            continue;
        }
        match stored.get(&key) {
            None => {
                blame(
                    "missing".into(),
                    &mut idx.blobs.iter().map(|b| b.id),
                    &mut damage,
                );
                continue;
            }
            Some(size) if *size != vault.store.listed_size(&key, idx.size) => {
                let stored_as = vault.store.listed_size(&key, idx.size);
                blame(
                    if stored_as == idx.size {
                        format!("{size} bytes, but its index says {}", idx.size)
                    } else {
                        format!(
                            "{size} bytes, but its index says {} (its shards {stored_as})",
                            idx.size
                        )
                    },
                    &mut idx.blobs.iter().map(|b| b.id),
                    &mut damage,
                );
                continue;
            }
            Some(_) => {}
        }
        if !read_data {
            continue;
        }
        let bytes = vault.store.get(&key)?;
        report.bytes_read += bytes.len() as u64;
        progress
            .bytes_done
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let mut bad: Vec<(ChunkId, String)> = Vec::new();
        for b in &idx.blobs {
            if let Err(e) = vault.open_blob(&bytes, b) {
                bad.push((b.id, e.to_string()));
            }
        }
        if vault.pack_name(&bytes) != *name && bad.is_empty() {
            blame(
                "its contents do not match its name (changed outside the chunks)".into(),
                &mut std::iter::empty(),
                &mut damage,
            );
        }
        if !bad.is_empty() {
            let detail = format!(
                "{} of its {} chunks fail their check (damaged or tampered with)",
                bad.len(),
                idx.blobs.len()
            );
            blame(detail, &mut bad.iter().map(|(id, _)| *id), &mut damage);
        }
    }
    // An index that does not open still names its pack: say so when that pack is gone too,
    // rather than leave it to be guessed from the chunks the log misses.
    for key in &found.index {
        let name = key.trim_start_matches("index/");
        if name.starts_with("set-") {
            continue;
        }
        let pack = Vault::pack_key(name);
        if !stored.contains_key(&pack) {
            damage.push(Damage {
                object: pack,
                detail: "missing (and its index cannot be opened either)".into(),
                affects: Vec::new(),
            });
        } else if read_data && !indexed_packs.contains(&pack) {
            // Nothing else describes it: its own header says what it holds.
            let bytes = vault.store.get(&pack)?;
            report.bytes_read += bytes.len() as u64;
            let detail = match vault.open_pack_header(&bytes) {
                Err(e) => Some(format!(
                    "its header cannot be read ({e}), and its index cannot be opened either"
                )),
                Ok(blobs) => {
                    let bad = blobs
                        .iter()
                        .filter(|b| vault.open_blob(&bytes, b).is_err())
                        .count();
                    if bad > 0 {
                        Some(format!(
                            "{bad} of its {} chunks fail their check, and its index cannot be opened either",
                            blobs.len()
                        ))
                    } else if vault.pack_name(&bytes) != name {
                        Some("its contents do not match its name, and its index cannot be opened either".into())
                    } else {
                        None
                    }
                }
            };
            if let Some(detail) = detail {
                damage.push(Damage {
                    object: pack,
                    detail,
                    affects: Vec::new(),
                });
            }
        }
    }
    report.unreferenced_packs = stored
        .keys()
        .filter(|k| !indexed_packs.contains(*k) && !trashed.keys.contains(*k))
        .count() as u64;

    // The log: the chain, and every chunk every version refers to.
    let known: HashSet<ChunkId> = vault.index_snapshot().keys().copied().collect();
    let mut missing: HashMap<ChunkId, BTreeSet<String>> = HashMap::new();
    let mut affected: HashMap<usize, BTreeSet<String>> = HashMap::new();
    let mut seen_versions: HashSet<(u64, ChunkId)> = HashSet::new();
    let mut objects = 0u64;
    let mut broken: HashSet<u64> = HashSet::new();
    // Only what each object adds is checked (a checkpoint's files, a segment's content
    // records): every version is looked at once, not once per point after it.
    let replay = vault.replay_all(&mut |tree, point, obj| {
        objects += 1;
        let when = crate::vault::format_time(point.time_ns);
        use crate::format::{ChunkRef, Run, VChange};
        let added: Vec<(u64, Vec<&ChunkRef>)> = match obj {
            crate::vault::LogObject::Checkpoint(c) => c
                .files
                .iter()
                .filter_map(|f| {
                    let c = f.content.as_ref()?;
                    Some((f.id, c.extents.iter().flat_map(|e| &e.chunks).collect()))
                })
                .collect(),
            crate::vault::LogObject::Segment(s) => s
                .records
                .iter()
                .filter_map(|r| match &r.change {
                    VChange::Content { file, content, .. } => Some((
                        *file,
                        content.extents.iter().flat_map(|e| &e.chunks).collect(),
                    )),
                    // What a patch keeps was checked with the version it comes from.
                    VChange::Patch { file, extents, .. } => Some((
                        *file,
                        extents
                            .iter()
                            .flat_map(|e| &e.runs)
                            .flat_map(|r| match r {
                                Run::New(v) => v.as_slice(),
                                Run::Keep { .. } => &[],
                            })
                            .collect(),
                    )),
                    _ => None,
                })
                .collect(),
        };
        for &file in &tree.broken {
            if broken.insert(file) {
                let path = tree
                    .path_of(file)
                    .map(|p| String::from_utf8_lossy(&p).into_owned())
                    .unwrap_or_else(|| format!("file {file}"));
                damage.push(Damage {
                    object: format!("log object {}", point.gen),
                    detail: "a patch in it does not fit the version before it".into(),
                    affects: vec![format!("{path} (version of {when})")],
                });
            }
        }
        for (file, chunks) in added {
            for ch in chunks {
                let bad = bad_chunks.get(&ch.id);
                let lost = !known.contains(&ch.id);
                if (bad.is_some() || lost) && seen_versions.insert((file, ch.id)) {
                    let path = tree
                        .path_of(file)
                        .map(|p| String::from_utf8_lossy(&p).into_owned())
                        .unwrap_or_else(|| format!("file {file}"));
                    let label = format!("{path} (version of {when})");
                    match bad {
                        Some(i) => {
                            affected.entry(*i).or_default().insert(label);
                        }
                        None => {
                            missing.entry(ch.id).or_default().insert(label);
                        }
                    }
                }
            }
        }
        Ok(())
    });
    match replay {
        Ok(None) if vault.log_map()?.at.is_empty() => {}
        Ok(None) => damage.push(Damage {
            object: "checkpoints/".into(),
            detail: "the log has no checkpoint to start from".into(),
            affects: Vec::new(),
        }),
        Ok(Some(_)) => {}
        Err(Error::Damaged { object, detail }) => damage.push(Damage {
            object,
            detail: format!("{detail}; versions after it cannot be restored"),
            affects: Vec::new(),
        }),
        Err(e) => return Err(e),
    }
    report.log_objects = objects;
    for (i, labels) in affected {
        damage[i].affects = labels.into_iter().collect();
    }
    for (id, labels) in missing {
        damage.push(Damage {
            object: format!("chunk {}", hex::encode(id)),
            detail: "referenced by the log, but no pack holds it".into(),
            affects: labels.into_iter().collect(),
        });
    }
    // A group: what each member lacks (or, reading, holds damaged) of what the others hold.
    // The vault reads around it, but the group survives fewer losses until it is rebuilt.
    if let Some(g) = vault.store.group() {
        for f in g.check(read_data, false)? {
            found.members += f.keys.len() as u64;
            report.members.push(MemberCheck {
                member: f.member,
                lacking: f.keys,
                away: f.away,
            });
        }
    }
    damage.sort_by(|a, b| a.object.cmp(&b.object));
    report.damage = damage;
    report.found = found;
    Ok(report)
}
