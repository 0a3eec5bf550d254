//! `log`, `forget` and `prune`: a vault's history, read and trimmed.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use replicator::Mode;
use serde_json::json;

use super::{hold_destination, open_vault, remember_head, with_progress};
use crate::exit::{ExitCode, Failure};
use crate::keys::KeyArgs;
use crate::pocket::{DestConfig, Pocket};
use crate::report::{bytes, rfc3339};

/// `log PATH`: the versions each vault destination holds of a file.
pub fn log(
    pocket: Option<&Path>,
    path: &Path,
    from: Option<&str>,
    json: bool,
    args: &KeyArgs,
) -> Result<()> {
    let p = Pocket::find(pocket)?;
    let config = p.config()?;
    let rel = relative_to_pocket(&p, path)?;
    let dests: Vec<&DestConfig> = config
        .destinations
        .iter()
        .filter(|d| d.mode == Mode::Vault && from.is_none_or(|f| f == d.name))
        .collect();
    if dests.is_empty() {
        bail!("no vault destination to ask (mirrors keep old versions in .backpocket-versions/ at the destination)");
    }
    let mut out = Vec::new();
    for d in dests {
        let opened = match open_vault(Some(&p.root), &d.name, args) {
            Ok(o) => o,
            Err(e) => {
                if !json {
                    println!("{}: cannot read: {e:#}", d.name);
                }
                continue;
            }
        };
        // The version index lives in the pocket's cache, brought up to date as it answers.
        let vault = opened.vault.with_cache(&p.meta_dir().join("cache"));
        let versions = replicator::versions(&vault, &rel)?;
        if !json {
            println!("{} ({} versions):", d.name, versions.len());
            for v in &versions {
                // In a vault several devices write: who made each version, and whether this
                // pocket's own history has it (else `restore --device` gives it back).
                let by = match (&v.device, v.here) {
                    (None, _) => String::new(),
                    (Some(n), true) => format!("  by {n}"),
                    (Some(n), false) => format!("  by {n}, not taken here (restore --device {n})"),
                };
                println!(
                    "  {}  {:>10}  modified {}{by}",
                    rfc3339(v.time_ns),
                    bytes(v.size),
                    rfc3339(v.mtime_ns)
                );
            }
        }
        out.push(
            json!({"destination": d.name, "versions": versions.iter().map(|v| json!({
            "time": rfc3339(v.time_ns), "seq": v.seq, "size": v.size, "mtime": rfc3339(v.mtime_ns),
            "device": v.device, "here": v.here})).collect::<Vec<_>>()}),
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// A path given on the command line, as bytes relative to the pocket.
fn relative_to_pocket(p: &Pocket, path: &Path) -> Result<Vec<u8>> {
    let abs = std::path::absolute(path)?;
    if let Ok(rel) = abs.strip_prefix(&p.root) {
        return Ok(rel.as_os_str().as_bytes().to_vec());
    }
    if let Some(m) = platform::backpocket_mount_containing(&abs)? {
        if let Ok(rel) = abs.strip_prefix(&m.mountpoint) {
            return Ok(rel.as_os_str().as_bytes().to_vec());
        }
    }
    Ok(path.as_os_str().as_bytes().to_vec())
}

/// `forget`.
#[allow(clippy::too_many_arguments)]
pub fn forget(
    pocket: Option<&Path>,
    dest: &str,
    policy: &replicator::KeepPolicy,
    dry_run: bool,
    and_prune: Option<std::time::Duration>,
    json: bool,
    args: &KeyArgs,
) -> Result<()> {
    if policy.is_empty() {
        return Err(Failure::new(
            ExitCode::Usage,
            anyhow!("say what to keep, e.g. --keep-hourly 24 --keep-daily 30 (the newest point is always kept)"),
        )
        .into());
    }
    let held = hold_destination(pocket, dest)?;
    let opened = open_vault(pocket, dest, args)?;
    let (report, head) = replicator::forget(&opened.vault, policy, dry_run)?;
    if let (Some((p, _)), Some(h)) = (&held, &head) {
        remember_head(p, dest, h)?;
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "dry_run": dry_run, "points_before": report.points_before, "removed": report.removed,
                "kept": report.kept.iter().map(|p| rfc3339(p.time_ns)).collect::<Vec<_>>(),
            }))?
        );
    } else {
        let verb = if dry_run { "would keep" } else { "kept" };
        println!(
            "{verb} {} of {} restore points; {} {}",
            report.kept.len(),
            report.points_before,
            report.removed,
            if dry_run { "would go" } else { "forgotten" }
        );
        for p in &report.kept {
            println!("  keep {}", rfc3339(p.time_ns));
        }
    }
    if let (Some(grace), false) = (and_prune, dry_run) {
        let mut opened = opened;
        let progress = replicator::Progress::default();
        let r = with_progress(&progress, "pruning", || {
            replicator::prune(&mut opened.vault, grace, &progress)
        })?;
        print_maintained(&r, json)?;
    }
    Ok(())
}

/// `prune`.
pub fn prune(
    pocket: Option<&Path>,
    dest: &str,
    dry_run: bool,
    grace: std::time::Duration,
    json: bool,
    args: &KeyArgs,
) -> Result<()> {
    let _held = hold_destination(pocket, dest)?;
    let mut opened = open_vault(pocket, dest, args)?;
    if dry_run {
        let (chunks, bytes_unused) = replicator::unused(&opened.vault)?;
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "dry_run": true, "unused_chunks": chunks, "unused_bytes": bytes_unused,
                }))?
            );
        } else {
            println!(
                "would drop {chunks} chunks ({}) that no restore point needs",
                bytes(bytes_unused)
            );
        }
        return Ok(());
    }
    let progress = replicator::Progress::default();
    let r = with_progress(&progress, "pruning", || {
        replicator::prune(&mut opened.vault, grace, &progress)
    })?;
    print_maintained(&r, json)
}

/// `maintain`.
pub fn maintain(
    pocket: Option<&Path>,
    dest: &str,
    grace: std::time::Duration,
    json: bool,
    args: &KeyArgs,
) -> Result<()> {
    let _held = hold_destination(pocket, dest)?;
    let mut opened = open_vault(pocket, dest, args)?;
    let opts = replicator::MaintainOptions {
        grace,
        ..Default::default()
    };
    let progress = replicator::Progress::default();
    let r = with_progress(&progress, "repacking", || {
        replicator::maintain(&mut opened.vault, &opts, None, &|| false, &progress)
    })?;
    print_maintained(&r, json)
}

fn print_maintained(r: &replicator::MaintainReport, json: bool) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "upgraded": r.upgraded,
                "log_objects_before": r.log_objects_before, "log_objects_after": r.log_objects_after,
                "index_objects_before": r.index_objects_before, "index_objects_after": r.index_objects_after,
                "packs_before": r.packs_before, "packs_repacked": r.packs_repacked,
                "packs_written": r.packs_written, "bytes_repacked": r.bytes_repacked,
                "chunks_dropped": r.chunks_dropped, "objects_trashed": r.objects_trashed,
                "objects_deleted": r.objects_deleted, "bytes_deleted": r.bytes_deleted,
                "packs_rescued": r.packs_rescued,
            }))?
        );
        return Ok(());
    }
    if r.upgraded {
        println!("the vault is format 2 now (older backpocket versions cannot read it)");
    }
    println!(
        "log objects {} -> {}, index objects {} -> {}",
        r.log_objects_before, r.log_objects_after, r.index_objects_before, r.index_objects_after
    );
    println!(
        "repacked {} of {} packs into {} ({} read), {} chunks no point needs dropped",
        r.packs_repacked,
        r.packs_before,
        r.packs_written,
        bytes(r.bytes_repacked),
        r.chunks_dropped
    );
    println!(
        "{} objects replaced (deleted after the grace period); {} deleted now ({})",
        r.objects_trashed,
        r.objects_deleted,
        bytes(r.bytes_deleted)
    );
    Ok(())
}
