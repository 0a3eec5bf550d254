//! `restore` from a vault or a mirror, and `init --from`: a new drive from a destination.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use replicator::{Mode, Progress, Vault};
use serde_json::json;

use super::{open_vault, open_vault_of, parse_time, with_progress};
use crate::exit::{ExitCode, Failure};
use crate::keys::KeyArgs;
use crate::pocket::{Config, Pocket};
use crate::report::{bytes, rfc3339};

/// What `restore` gives back: which device's history (`--device`), as of when (`--at`), and
/// which paths (all when empty).
pub struct Wanted<'a> {
    pub at: Option<&'a str>,
    pub device: Option<&'a str>,
    pub paths: &'a [PathBuf],
}

/// `restore`.
pub fn restore(
    pocket: Option<&Path>,
    from: &str,
    to: &Path,
    wanted: Wanted<'_>,
    json: bool,
    args: &KeyArgs,
) -> Result<()> {
    let Wanted { at, device, paths } = wanted;
    let at = at.map(parse_time).transpose()?;
    let t = std::path::absolute(to)?;
    let in_pocket = Pocket::find(pocket).is_ok_and(|p| t.starts_with(&p.root));
    let in_mount = t
        .ancestors()
        .find(|a| a.exists())
        .map(platform::backpocket_mount_containing)
        .transpose()?
        .flatten()
        .is_some();
    if in_pocket || in_mount {
        bail!(
            "{} is inside a live pocket; restore to another folder and copy back what you need",
            t.display()
        );
    }
    if let Some(mirror) = mirror_url(pocket, from) {
        if device.is_some() {
            bail!(
                "{from} is a mirror: it holds one tree, whoever wrote it; restore without --device"
            );
        }
        return restore_mirror(&mirror, to, paths, json);
    }
    let opened = open_vault(pocket, from, args)?;
    let vault = on_device(opened.vault, device)?;
    let paths = paths
        .iter()
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .collect();
    let drive = target_drive(to);
    if let Some(d) = &drive {
        say_what_the_drive_loses(to, d);
    }
    restore_vault(&vault, to, to, at, paths, json, drive.as_ref())
}

/// The handle on `device`'s own history (by name or id) in a vault several devices write.
fn on_device(vault: Vault, device: Option<&str>) -> Result<Vault> {
    let Some(wanted) = device else {
        return Ok(vault);
    };
    let devices = if vault.has_devices() {
        vault.devices()?
    } else {
        Vec::new()
    };
    match devices
        .iter()
        .find(|d| d.record.name == wanted || d.record.id == wanted)
    {
        Some(d) => Ok(vault.on_chain(&d.record.id)),
        None if devices.is_empty() => Err(Failure::new(
            ExitCode::Usage,
            anyhow!("only one pocket writes this vault; restore without --device {wanted}"),
        )
        .into()),
        None => Err(Failure::new(
            ExitCode::Usage,
            anyhow!(
                "no device {wanted} writes this vault; its devices are {}",
                devices
                    .iter()
                    .map(|d| d.record.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .into()),
    }
}

/// The name of the device whose history `vault` follows, in a vault several devices write.
fn whose(vault: &Vault) -> Option<String> {
    if !vault.has_devices() {
        return None;
    }
    let devices = vault.devices().ok()?;
    let d = devices.iter().find(|d| d.record.id == vault.device())?;
    Some(d.record.name.clone())
}

/// Before a plain restore onto a drive that keeps less (exFAT, FAT): what will be missing.
fn say_what_the_drive_loses(to: &Path, d: &platform::drive::DriveTraits) {
    let lost = d.lost_in_a_plain_folder();
    if !lost.is_empty() {
        eprintln!(
            "backpocket: {} is on a drive ({}) that cannot keep {}: the files come back \
                 without them. For an exact copy restore onto ext4, XFS or btrfs, or make a \
                 pocket of it (`backpocket init --from`), whose journal keeps them.",
            to.display(),
            d.fs,
            lost.join(", ")
        );
    }
}

/// Refuses `dir` for a new pocket from a vault when it is one already, or the start of one.
pub fn refuse_a_pocket(dir: &Path) -> Result<()> {
    let meta = dir.join(crate::pocket::DIR);
    if meta.join("config.toml").exists() {
        bail!("{} is already a pocket", dir.display());
    }
    if meta.exists() {
        bail!(
            "{} holds a pocket that was never finished (an `init --from` or `init --join` cut \
             short: it has no config); remove the folder and run the command again",
            dir.display()
        );
    }
    Ok(())
}

/// Makes a pocket of `dir` (missing or empty) holding the newest point of `vault`, with
/// `config`. On a drive that keeps everything the files are restored onto it and adopted. On
/// one that keeps less (exFAT, FAT) they go in through a private mount, so that what the drive
/// cannot hold (modes, owners, exact times, links, xattrs, names it cannot spell) lands in the
/// journal as the user's mount would put it there: the new pocket shows all of it, and its
/// backups keep it.
pub fn init_restored(vault: &Vault, dir: &Path, config: Config) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let drive = platform::drive::probe(&dir.join(".backpocket-probe"));
    let exact = match &drive {
        Ok(d) => d.modes && d.symlinks && d.xattrs && d.any_name,
        // Tried again by the pocket; a plain restore says what fails, if anything does.
        Err(_) => true,
    };
    if exact {
        restore_vault(
            vault,
            dir,
            dir,
            None,
            Vec::new(),
            false,
            drive.as_ref().ok(),
        )?;
        return crate::init_filled(dir, config, |_, _| Ok(())).map(drop);
    }
    // The mount keeps all but hard links (copies) and names that differ only in case.
    let mounted = drive.ok().map(|d| platform::drive::DriveTraits {
        modes: true,
        symlinks: true,
        xattrs: true,
        any_name: true,
        ..d
    });
    crate::init_filled(dir, config, |pocket, journal| {
        crate::mount::in_private_mount(pocket, journal, |mnt| {
            restore_vault(vault, mnt, dir, None, Vec::new(), false, mounted.as_ref())
        })
    })
    .map(drop)
}

/// Restores a point of `vault` into `to` (shown to the user as `shown`), with a progress bar,
/// and says what it did. `drive`: what the target keeps, where it was found.
fn restore_vault(
    vault: &Vault,
    to: &Path,
    shown: &Path,
    at: Option<i64>,
    paths: Vec<Vec<u8>>,
    json: bool,
    drive: Option<&platform::drive::DriveTraits>,
) -> Result<()> {
    let progress = Progress::default();
    // The workers keep files open as far as the limit lets them.
    platform::raise_fd_limit();
    let opts = replicator::RestoreOptions {
        target: to.to_owned(),
        at,
        paths,
        // (A drive without modes refuses a chown.)
        owners: rustix::process::geteuid().is_root() && drive.is_none_or(|d| d.modes),
        workers: 8,
        map_names: drive.is_some_and(|d| !d.any_name),
        specials: drive.is_none_or(|d| d.symlinks),
        case_insensitive: drive.is_some_and(|d| d.case_insensitive),
    };
    let started = std::time::Instant::now();
    let report = with_progress(&progress, "restoring", || {
        replicator::restore(vault, &opts, &progress)
    })?;
    print_restore(
        &report,
        shown,
        whose(vault).as_deref(),
        started.elapsed(),
        json,
    )
}

/// What the drive that will hold `to` can keep, tried beside it; None if it cannot be tried
/// (the restore then says what fails, if anything does).
fn target_drive(to: &Path) -> Option<platform::drive::DriveTraits> {
    let dir = to.ancestors().find(|a| a.is_dir())?;
    let scratch = dir.join(format!(".backpocket-probe-{}", std::process::id()));
    platform::drive::probe(&scratch).ok()
}

/// `whose`: the device whose files these are, in a vault several devices write.
fn print_restore(
    report: &replicator::RestoreReport,
    to: &Path,
    whose: Option<&str>,
    elapsed: Duration,
    json: bool,
) -> Result<()> {
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "target": to, "device": whose, "point": rfc3339(report.point_time_ns), "seq": report.point_seq,
                "files": report.files, "dirs": report.dirs, "symlinks": report.symlinks,
                "other": report.other, "bytes": report.bytes,
                "failed": report.failed.iter().map(|(p, e)| json!({"path": lossy(p), "error": e})).collect::<Vec<_>>(),
                "unwritten": report.unwritten.iter().map(|(p, e)| json!({"path": lossy(p), "error": e})).collect::<Vec<_>>(),
                "skipped": report.skipped.iter().map(|(p, e)| json!({"path": lossy(p), "reason": e})).collect::<Vec<_>>(),
                "earlier_version": report.earlier.iter().map(|p| lossy(p)).collect::<Vec<_>>(),
                "copies_of_hard_links": report.copies.iter().map(|p| lossy(p)).collect::<Vec<_>>(),
                "renamed": report.renamed.iter().map(|(p, m)| json!({"path": lossy(p), "as": lossy(m)})).collect::<Vec<_>>(),
                "not_kept": report.not_kept.iter().map(|(p, e)| json!({"path": lossy(p), "what": e})).collect::<Vec<_>>(),
            }))?
        );
    } else {
        let pocket = match whose {
            Some(name) => format!("{name}'s pocket"),
            None => "the pocket".to_owned(),
        };
        println!(
            "restored {pocket} as of {} into {}: {} files, {} folders, {} symlinks, {} in {:.1}s",
            rfc3339(report.point_time_ns),
            to.display(),
            report.files,
            report.dirs,
            report.symlinks,
            bytes(report.bytes),
            elapsed.as_secs_f64()
        );
        for (p, why) in &report.skipped {
            println!("  skipped {}: {why}", lossy(p));
        }
        for (p, e) in report.failed.iter().chain(&report.unwritten) {
            println!("  NOT restored {}: {e}", lossy(p));
        }
        for (p, m) in &report.renamed {
            let name = p.rsplit(|&b| b == b'/').next().unwrap_or(p);
            let why = if journal::spelling::from_drive(m) == name {
                "this drive cannot spell the name (a pocket made here reads it back)"
            } else {
                "a name differing only in case is there, and this drive takes both for one"
            };
            println!("  renamed {} to {}: {why}", lossy(p), lossy(m));
        }
        for (p, what) in &report.not_kept {
            println!("  restored {} without {what}", lossy(p));
        }
        for p in &report.copies {
            println!(
                "  copied {}: another name of a file, made as a copy of it (this drive has no hard links)",
                lossy(p)
            );
        }
        for p in &report.earlier {
            println!(
                "  earlier version of {}: its contents at this point were still uploading (a later point has them)",
                lossy(p)
            );
        }
    }
    if !report.unwritten.is_empty() {
        return Err(Failure::new(
            ExitCode::Error,
            anyhow!(
                "{} files could not be written to {} (named above with the reason; the destination's data for them is fine): mend that (free space, or a larger open-files limit) and restore again",
                report.unwritten.len(),
                to.display()
            ),
        )
        .into());
    }
    if !report.failed.is_empty() {
        return Err(Failure::new(
            ExitCode::Damaged,
            anyhow!(
                "{} files could not be restored because the destination's data for them is damaged or missing (run `backpocket verify --read-data` on it; another destination may hold them)",
                report.failed.len()
            ),
        )
        .into());
    }
    Ok(())
}

/// The folder of a mirror destination, when `from` names one.
fn mirror_url(pocket: Option<&Path>, from: &str) -> Option<String> {
    if let Some(d) = Pocket::find(pocket)
        .ok()
        .and_then(|p| p.config().ok())
        .and_then(|c| c.destination(from).cloned())
    {
        return (d.mode == Mode::Mirror).then_some(d.url);
    }
    let path = replicator::local_path(from)?;
    replicator::is_mirror(&path).then(|| from.to_owned())
}

fn restore_mirror(url: &str, to: &Path, paths: &[PathBuf], json: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let progress = Progress::default();
    let wanted: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .collect();
    let report = with_progress(&progress, "restoring", || {
        replicator::restore_mirror(
            Path::new(url),
            to,
            &wanted,
            rustix::process::geteuid().is_root(),
            &progress,
        )
    })?;
    print_restore(&report, to, None, started.elapsed(), json)
}

/// `init --from DEST DIR`: a new drive from a destination.
pub fn init_from(from: &str, dir: &Path, args: &KeyArgs) -> Result<()> {
    refuse_a_pocket(dir)?;
    // The drive is lost: the destination alone, and the passphrase.
    let opened = open_vault_of(None, from, args)?;
    let text = opened.vault.pocket_config()?.ok_or_else(|| {
        anyhow!("{from} does not hold its pocket's config (written by the first drain); make the pocket with `backpocket init` and restore into it")
    })?;
    let text = String::from_utf8(text).context("the stored pocket config is not text")?;
    let config: Config =
        toml::from_str(&text).context("the stored pocket config cannot be read")?;
    init_restored(&opened.vault, dir, config)?;
    println!(
        "the new pocket backs up to the same destinations ({}); mount it with: backpocket mount {} MOUNTPOINT",
        p_names(&p_config_names(dir)?),
        dir.display()
    );
    Ok(())
}

fn p_config_names(dir: &Path) -> Result<Vec<String>> {
    Ok(Pocket::at(dir)?
        .config()?
        .destinations
        .into_iter()
        .map(|d| d.name)
        .collect())
}

fn p_names(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}
