//! `verify` and `verify --repair`.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use replicator::{Mode, Progress, Vault};
use serde_json::json;

use super::{
    hold_destination, open_vault, remember_head, scan_unless_mounted, setup, with_progress,
};
use crate::exit::{ExitCode, Failure};
use crate::keys::{self, KeyArgs};
use crate::pocket::Pocket;
use crate::report::bytes;

/// `verify`.
pub fn verify(
    pocket: Option<&Path>,
    dest: &str,
    read_data: bool,
    json: bool,
    args: &KeyArgs,
) -> Result<()> {
    let opened = open_vault(pocket, dest, args)?;
    let report = run_verify(&opened.vault, read_data)?;
    note_members(pocket, dest, &opened.vault);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&verify_json(&report, read_data))?
        );
    } else {
        print_verify(&report, read_data);
    }
    damage_verdict(pocket, dest, &report)
}

/// A group: what verify learnt of each member goes to the pocket's state (`journal status`).
fn note_members(pocket: Option<&Path>, dest: &str, vault: &Vault) {
    let Some((k, members)) = vault.store.group_state() else {
        return;
    };
    let Ok(p) = Pocket::find(pocket) else {
        return;
    };
    if p.config().is_ok_and(|c| c.destination(dest).is_some()) {
        let mut st = replicator::DestState::load(&p.meta_dir(), dest);
        st.group_k = Some(k);
        st.members = members;
        if let Err(e) = st.save(&p.meta_dir(), dest) {
            tracing::warn!("cannot note what verify found of {dest}'s members: {e}");
        }
    }
}

fn run_verify(vault: &Vault, read_data: bool) -> Result<replicator::VerifyReport> {
    let progress = Progress::default();
    Ok(with_progress(&progress, "verifying", || {
        replicator::verify(vault, read_data, &progress)
    })?)
}

fn verify_json(report: &replicator::VerifyReport, read_data: bool) -> serde_json::Value {
    json!({
        "packs": report.packs, "chunks": report.chunks, "log_objects": report.log_objects,
        "bytes_read": report.bytes_read, "unreferenced_packs": report.unreferenced_packs,
        "read_data": read_data,
        "damage": report.damage.iter().map(|d| json!({"object": d.object, "detail": d.detail, "affects": d.affects})).collect::<Vec<_>>(),
        "members": report.members.iter().map(|m| json!({"member": m.member, "lacking": m.lacking, "away": m.away})).collect::<Vec<_>>(),
    })
}

fn print_verify(report: &replicator::VerifyReport, read_data: bool) {
    println!(
        "checked {} packs ({} chunks{}), {} log objects",
        report.packs,
        report.chunks,
        if read_data {
            format!(", {} read and decrypted", bytes(report.bytes_read))
        } else {
            ", presence and size; --read-data reads every byte".into()
        },
        report.log_objects
    );
    for d in &report.damage {
        println!("DAMAGED {}: {}", d.object, d.detail);
        for a in &d.affects {
            println!("    affects {a}");
        }
    }
    for m in &report.members {
        if let Some(why) = &m.away {
            println!("member {} not reachable, so not checked: {why}", m.member);
        } else if !m.lacking.is_empty() {
            println!(
                "MEMBER {} lacks{} {} objects the other members hold (`--repair` rebuilds them there):",
                m.member,
                if read_data { " or holds damaged" } else { "" },
                m.lacking.len()
            );
            for k in m.lacking.iter().take(10) {
                println!("    {k}");
            }
            if m.lacking.len() > 10 {
                println!("    and {} more", m.lacking.len() - 10);
            }
        } else {
            println!(
                "member {}: holds everything{}",
                m.member,
                if read_data {
                    ", every byte checked"
                } else {
                    ""
                }
            );
        }
    }
    if report.damage.is_empty() {
        println!("no damage found");
    }
}

/// Objects a group's members lack that the others hold.
fn members_lacking(report: &replicator::VerifyReport) -> usize {
    report.members.iter().map(|m| m.lacking.len()).sum()
}

/// Damage is told (a desktop notification too, so a scheduled verify is not silent) and
/// ends the command with exit code 5.
fn damage_verdict(
    pocket: Option<&Path>,
    dest: &str,
    report: &replicator::VerifyReport,
) -> Result<()> {
    if !report.damage.is_empty() {
        let desktop = Pocket::find(pocket)
            .and_then(|p| p.config())
            .map_or(true, |c| c.warnings.notify);
        crate::warn::warn(
            &format!("damage found at {dest}"),
            &format!(
                "verify found {} damaged objects at {dest}; the versions they hold cannot be \
                 restored from there (`backpocket verify {dest}` names them)",
                report.damage.len()
            ),
            desktop,
        );
        return Err(Failure::new(
            ExitCode::Damaged,
            anyhow!(
                "{} damaged objects at {dest}: run `backpocket verify {dest} --repair` in the \
                 pocket to send what it still has again",
                report.damage.len()
            ),
        )
        .into());
    }
    let lacking = members_lacking(report);
    if lacking > 0 {
        return Err(Failure::new(
            ExitCode::Damaged,
            anyhow!(
                "the members of {dest} lack {lacking} objects the others hold, so it survives fewer losses than it should: run `backpocket verify {dest} --repair` to rebuild them"
            ),
        )
        .into());
    }
    Ok(())
}

/// `verify DEST --repair`: verify every byte, then send again from the pocket (and from the
/// damaged packs' good chunks) whatever the vault lost, remove the damaged objects, and verify
/// again. Needs the pocket and its destination held: the mount must not be writing to it.
pub fn repair(pocket: Option<&Path>, dest: &str, json: bool, args: &KeyArgs) -> Result<()> {
    let Some((p, _lock)) = hold_destination(pocket, dest)? else {
        return Err(Failure::new(
            ExitCode::Usage,
            anyhow!("--repair sends data again from the pocket, so {dest} must be one of its destinations: run it inside the pocket (or give --pocket) with the destination's name"),
        )
        .into());
    };
    let config = p.config()?;
    let spec = config
        .destination(dest)
        .map(|d| d.spec())
        .ok_or_else(|| anyhow!("{dest} is not a destination of this pocket"))?;
    if spec.mode != Mode::Vault {
        bail!("{dest} is a mirror: its next drain copies again each file it lacks; only vaults have --repair");
    }
    let opened = open_vault(Some(&p.root), dest, args)?;
    let before = run_verify(&opened.vault, true)?;
    if !json {
        print_verify(&before, true);
    }
    if before.damage.is_empty() && members_lacking(&before) == 0 {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"before": verify_json(&before, true), "repair": null, "after": null})
                )?
            );
        } else {
            println!("nothing to repair");
        }
        return Ok(());
    }
    // The mount is not running (we hold the destination): record what changed meanwhile, so
    // the checkpoint repair writes is the pocket as it is.
    scan_unless_mounted(&p)?;
    let key = keys::pocket_key(&config, args, true)?;
    let setup = setup(&p, &config, key)?;
    let stop = crate::StopOnSignal::new(&crate::INTERRUPT)?;
    let progress = Progress::default();
    let done = with_progress(&progress, "repairing", || {
        replicator::repair(&setup, &spec, &before, &progress, &stop.flag)
    })
    .with_context(|| {
        format!("the repair of {dest} stopped; the vault is no worse than before (run it again)")
    })?;
    if let Some(h) = opened.vault.head()? {
        remember_head(&p, dest, &h)?;
    }
    let after = run_verify(&opened.vault, true)?;
    note_members(Some(&p.root), dest, &opened.vault);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "before": verify_json(&before, true),
                "repair": {
                    "chunks_salvaged": done.chunks_salvaged, "chunks_resent": done.chunks_resent,
                    "files_read": done.files_read, "bytes_uploaded": done.bytes_uploaded,
                    "objects_removed": done.objects_removed, "checkpoint_seq": done.checkpoint_seq,
                    "member_objects_rebuilt": done.member_objects_rebuilt,
                },
                "after": verify_json(&after, true),
            }))?
        );
    } else {
        if done.member_objects_rebuilt > 0 {
            println!(
                "rebuilt {} objects at the group's members from the other members",
                done.member_objects_rebuilt
            );
        }
        if !before.damage.is_empty() {
            println!(
            "repaired: {} good chunks of damaged packs packed again, {} chunks sent again from {} files of the pocket ({}), {} damaged objects removed; a new checkpoint holds record {}",
            done.chunks_salvaged,
            done.chunks_resent,
            done.files_read,
            bytes(done.bytes_uploaded),
            done.objects_removed.len(),
            done.checkpoint_seq
        );
        }
        println!("verifying again:");
        print_verify(&after, true);
        if !after.damage.is_empty() {
            println!("what is still damaged was only in versions the pocket no longer has; restore them from another destination if one holds them");
        }
    }
    damage_verdict(Some(&p.root), dest, &after)
}
