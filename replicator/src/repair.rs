//! `verify --repair`: a vault that lost or damaged objects is made whole again from what is
//! still good, in the same order a drain writes (new objects durable first, then the log, and
//! only then are the damaged objects removed), so an interrupted repair leaves the vault no
//! worse than it found it.
//!
//! Chunks are named by their contents, so one good copy of a chunk serves every version that
//! refers to it. Repair packs again the chunks of damaged packs that still pass their check,
//! reads every file the pocket has now (as a new destination's first drain does) so that the
//! chunks they need are sent again, writes a checkpoint of the catalog, and removes the
//! damaged packs and index objects. What only old versions needed, and the pocket no longer
//! has, cannot come back; the verify that follows names it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tracing::{info, warn};

use crate::config::{DestSpec, Setup};
use crate::dest::{runtime, DestDrain};
use crate::drain::{Progress, Source};
use crate::error::{Error, Result};
use crate::format::{IndexSet, PackIndex};
use crate::vault::Vault;
use crate::verify::VerifyReport;

/// What a repair did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Good chunks of damaged packs, packed again.
    pub chunks_salvaged: u64,
    /// Chunks read again from the pocket's files and sent.
    pub chunks_resent: u64,
    /// Files of the pocket read to find them.
    pub files_read: u64,
    pub bytes_uploaded: u64,
    /// Damaged objects removed from the destination once their replacements were durable.
    pub objects_removed: Vec<String>,
    /// The journal record the new checkpoint holds (the destination's cursor now).
    pub checkpoint_seq: u64,
    /// A group: members' objects (shards, copies) rebuilt from the other members.
    pub member_objects_rebuilt: u64,
}

/// Repairs the vault of `spec` after `found` (a `verify` with read_data of the same vault).
/// The caller holds the destination's lock ([`crate::DestLock`]): nothing else may write the
/// vault meanwhile.
pub fn repair(
    setup: &Setup,
    spec: &DestSpec,
    found: &VerifyReport,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<RepairReport> {
    let rt = runtime()?;
    let res = (|| {
        let d = DestDrain::open(spec, setup, rt.handle().clone(), Arc::default())?;
        let Some(mut d) = d.into_vault() else {
            return Err(Error::Format(format!(
                "{} is a mirror: a mirror is repaired by the next drain of each file it lacks; only vaults have --repair",
                spec.name
            )));
        };
        let src = Source {
            pocket: &setup.pocket,
            journal: &setup.journal,
            dest: &spec.name,
            ids: &setup.ids,
            cancel,
            progress,
        };
        let mut report = RepairReport::default();
        if let Some(g) = d.vault.store.group() {
            if found.found.members > 0 {
                for f in g.check(true, true)? {
                    report.member_objects_rebuilt += f.keys.len() as u64 - f.left;
                    if f.left > 0 {
                        warn!(
                            dest = spec.name,
                            member = f.member,
                            "{} objects could not be rebuilt there (is it reachable?)",
                            f.left
                        );
                    }
                }
            }
            if found.found.packs.is_empty() && found.found.index.is_empty() {
                return Ok(report);
            }
        }
        let vault = &d.vault;
        vault.load_index()?;
        let damaged: HashSet<&str> = found.found.packs.iter().map(String::as_str).collect();
        // From here on the damaged packs' chunks count as missing, so whatever still has them
        // (the pack's good chunks, the pocket's files) sends them again.
        vault.forget_packs(&damaged);
        report.chunks_salvaged = salvage(vault, &found.found.packs)?;
        let drained = d.rewrite_checkpoint(&src)?;
        report.chunks_resent = drained.new_chunks;
        report.files_read = drained.files;
        report.bytes_uploaded = drained.bytes_uploaded;
        report.checkpoint_seq = drained.cursor;
        // Everything the damaged objects held that still exists is durable elsewhere now.
        // Index sets that list a damaged pack are written again without it.
        let vault = &d.vault;
        let trashed = vault.trashed()?;
        for o in vault.read_index_objects(&trashed.keys)? {
            let Some(packs) = &o.packs else { continue };
            if !o.key.starts_with("index/set-")
                || !packs.iter().any(|p| found.found.packs.contains(&p.pack))
            {
                continue;
            }
            let keep: Vec<_> = packs
                .iter()
                .filter(|p| !found.found.packs.contains(&p.pack))
                .cloned()
                .collect();
            if !keep.is_empty() {
                let (key, sealed) = vault.seal_index_set(&IndexSet { packs: keep })?;
                vault.store.put(&key, sealed)?;
            }
            remove(vault, &o.key, &mut report)?;
        }
        for name in &found.found.packs {
            remove(vault, &format!("index/{name}"), &mut report)?;
            remove(vault, &Vault::pack_key(name), &mut report)?;
        }
        for key in &found.found.index {
            remove(vault, key, &mut report)?;
            let name = key.trim_start_matches("index/");
            if !name.starts_with("set-") {
                remove(vault, &Vault::pack_key(name), &mut report)?;
            }
        }
        info!(dest = spec.name, ?report, "repaired");
        Ok(report)
    })();
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    res
}

/// Packs again every chunk of the damaged packs that still passes its check.
fn salvage(vault: &Vault, packs: &std::collections::BTreeSet<String>) -> Result<u64> {
    let mut packer = vault.packer();
    let mut salvaged = 0;
    let listed: HashMap<String, PackIndex> = vault
        .read_index_objects(&HashSet::new())?
        .into_iter()
        .flat_map(|o| o.packs.into_iter().flatten())
        .map(|p| (p.pack.clone(), p))
        .collect();
    for name in packs {
        let (Ok(bytes), Some(idx)) = (vault.store.get(&Vault::pack_key(name)), listed.get(name))
        else {
            continue;
        };
        for blob in &idx.blobs {
            match vault.open_blob(&bytes, blob) {
                Ok(data) => {
                    packer.add(&data)?;
                    salvaged += 1;
                }
                Err(e) => warn!(pack = name, "{e}"),
            }
        }
    }
    packer.finish()?;
    Ok(salvaged)
}

fn remove(vault: &Vault, key: &str, report: &mut RepairReport) -> Result<()> {
    if vault.store.exists(key)? {
        vault.store.delete(key)?;
        report.objects_removed.push(key.to_owned());
    }
    Ok(())
}
