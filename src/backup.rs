//! The backup commands: destinations, sync, restore, verify, log, and a new drive from a
//! destination.

use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use replicator::{Mode, Progress, Store, Vault};
use serde_json::json;

use crate::exit::{ExitCode, Failure};
use crate::keys::{self, KeyArgs};
use crate::pocket::{Config, DestConfig, Pocket};
use crate::remote::CredentialArgs;
use crate::report::{bytes, rfc3339};

/// Shows a progress bar for `progress` while `f` runs, when a person is watching.
pub fn with_progress<T>(progress: &Progress, label: &str, f: impl FnOnce() -> T) -> T {
    if !std::io::stderr().is_terminal() {
        return f();
    }
    let bar = indicatif::ProgressBar::new(0).with_message(label.to_owned());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                bar.set_length(progress.bytes_total.load(Ordering::Relaxed));
                bar.set_position(progress.bytes_done.load(Ordering::Relaxed));
                std::thread::sleep(Duration::from_millis(100));
            }
            bar.finish_and_clear();
        });
        let out = f();
        done.store(true, Ordering::Relaxed);
        out
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with('.')
}

/// How to reach a remote destination and when to use it (`dest add`).
#[derive(clap::Args, Debug, Default)]
pub struct RemoteArgs {
    /// When to back up there (comma-separated or repeated; all must hold): always, reachable,
    /// network=CIDR[|CIDR...], gateway=MAC, host=NAME:PORT, not-metered,
    /// schedule='Mon-Fri 09:00-18:00'.
    #[arg(long = "when", value_name = "CONDITION")]
    pub when: Vec<String>,
    /// S3: the service's address, such as https://s3.office.lan.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// S3: the region requests are signed for (default us-east-1).
    #[arg(long)]
    pub region: Option<String>,
    /// S3: address buckets as bucket.host instead of host/bucket.
    #[arg(long)]
    pub virtual_host_style: bool,
    /// Transfers in flight at once (default 4 for a server, 2 for a folder).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub connections: Option<u16>,
    /// Upload bandwidth cap, such as 5MiB/s or 800k.
    #[arg(long, value_name = "RATE")]
    pub bandwidth_limit: Option<String>,
    /// Warn once changes have waited this long for this destination, such as 12h or 7d
    /// (default: `[warnings] unprotected_after` of the config, 3d).
    #[arg(long, value_name = "DURATION", value_parser = crate::warn::parse_duration_arg)]
    pub warn_after: Option<String>,
    #[command(flatten)]
    pub creds: CredentialArgs,
}

/// `dest add`.
pub fn dest_add(
    p: &Pocket,
    name: &str,
    url: &str,
    mode: Mode,
    keep_days: u64,
    remote: &RemoteArgs,
    args: &KeyArgs,
) -> Result<()> {
    if !valid_name(name) {
        return Err(Failure::new(
            ExitCode::Usage,
            anyhow!(
                "{name:?} is not a usable destination name: use letters, digits, '-', '_' and '.'"
            ),
        )
        .into());
    }
    let usage = |e: anyhow::Error| -> anyhow::Error { Failure::new(ExitCode::Usage, e).into() };
    let mut config = p.config()?;
    if config.destination(name).is_some() {
        bail!("a destination named {name} exists already (`backpocket dest remove {name}` first)");
    }
    replicator::Policy::parse(&remote.when).map_err(|e| usage(e.into()))?;
    if let Some(b) = &remote.bandwidth_limit {
        replicator::parse_bandwidth(b).map_err(|e| usage(e.into()))?;
    }
    let target = replicator::Target::parse(url).map_err(|e| usage(e.into()))?;
    let url = match &target {
        replicator::Target::Local(path) => {
            let path = std::path::absolute(path)?;
            if path.starts_with(&p.root) || p.root.starts_with(&path) {
                bail!(
                    "{} is inside the pocket (or holds it); a backup must live somewhere else",
                    path.display()
                );
            }
            path.to_string_lossy().into_owned()
        }
        _ => {
            if mode == Mode::Mirror {
                return Err(usage(anyhow!("a mirror needs a local folder (it keeps owners, links and special files as they are); SFTP and S3 destinations are vaults: drop --mode mirror")));
            }
            url.to_owned()
        }
    };
    let mut dest = DestConfig {
        name: name.to_owned(),
        url: url.clone(),
        mode,
        keep_versions_days: keep_days,
        when: remote.when.clone(),
        endpoint: remote.endpoint.clone(),
        region: remote.region.clone(),
        virtual_host_style: remote.virtual_host_style,
        connections: remote.connections.map(usize::from),
        bandwidth_limit: remote.bandwidth_limit.clone(),
        credentials: None,
        warn_after: remote.warn_after.clone(),
    };
    let key = match mode {
        Mode::Vault => Some(keys::pocket_key_or_new(p, &mut config, args)?),
        Mode::Mirror => None,
    };
    if !target.is_local() {
        let secrets = crate::remote::gather_credentials(&target, &remote.creds)?;
        if !secrets.is_empty() {
            let key = key.as_ref().expect("remote destinations are vaults");
            dest.credentials = Some(replicator::seal_secrets(key, name, &secrets)?);
        }
    }
    let rt = replicator::runtime()?;
    let store = dest
        .spec()
        .store(key.as_ref(), rt.handle().clone(), true)
        .map_err(anyhow::Error::from)
        .and_then(|s| {
            if target.is_local() {
                Ok(s)
            } else {
                // Reach it now: a typo in the host or a refused key is better found here.
                crate::remote::probe(&s).map(|()| s)
            }
        })
        .with_context(|| match &target {
            replicator::Target::Local(_) => {
                format!("cannot use {url} as a destination (its parent folder must exist)")
            }
            _ => format!("cannot use {url} as a destination; `backpocket dest test` explains step by step once it is added, or check the URL and credentials"),
        })?;
    match mode {
        Mode::Vault => {
            let key = key.expect("made above");
            match Vault::read_config(&store) {
                Ok(vc) if vc.pocket_id == config.id => {
                    Vault::open(store, &key)?;
                    println!("{url} already holds this pocket's vault; continuing it");
                }
                Ok(vc) => return Err(replicator::Error::OtherPocket(vc.pocket_id).into()),
                Err(replicator::Error::NotAVault(_)) => {
                    if !store.is_empty()? {
                        bail!("{url} is not empty and is not a vault; give an empty or new folder");
                    }
                    let kdf = config.key.as_ref().expect("made above").kdf.clone();
                    Vault::create(store, &config.id, kdf, &key)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Mode::Mirror => {
            replicator::init_mirror(&store, &config.id)?;
        }
    }
    rt.shutdown_background();
    config.destinations.push(dest);
    p.save_config(&config)?;
    let mode_name = match mode {
        Mode::Vault => "vault",
        Mode::Mirror => "mirror",
    };
    println!("added destination {name}: {mode_name} at {url}");
    if !remote.when.is_empty() {
        println!("used only when: {}", remote.when.join(", "));
    }
    println!("it is backed up while the pocket is mounted, or now with `backpocket sync`");
    Ok(())
}

/// `dest credentials`.
pub fn dest_credentials(
    p: &Pocket,
    name: &str,
    creds: &CredentialArgs,
    args: &KeyArgs,
) -> Result<()> {
    let mut config = p.config()?;
    let Some(d) = config.destination(name).cloned() else {
        bail!("no destination named {name} (see `backpocket dest list`)");
    };
    let target = replicator::Target::parse(&d.url)?;
    if target.is_local() {
        bail!("{name} is a local folder; it needs no credentials");
    }
    let secrets = crate::remote::gather_credentials(&target, creds)?;
    let key = keys::pocket_key_or_new(p, &mut config, args)?;
    let sealed = if secrets.is_empty() {
        None
    } else {
        Some(replicator::seal_secrets(&key, name, &secrets)?)
    };
    for dc in &mut config.destinations {
        if dc.name == name {
            dc.credentials = sealed.clone();
        }
    }
    p.save_config(&config)?;
    match sealed {
        Some(_) => println!("stored the credentials of {name}, sealed with the pocket key"),
        None => println!("{name} keeps no credentials: ssh's agent and ~/.ssh are used"),
    }
    Ok(())
}

pub fn dest_list(p: &Pocket, json: bool) -> Result<()> {
    let config = p.config()?;
    if json {
        let list: Vec<_> = config
            .destinations
            .iter()
            .map(|d| json!({"name": d.name, "url": d.url, "mode": d.mode, "keep_versions_days": d.keep_versions_days,
                "when": d.when, "endpoint": d.endpoint, "region": d.region, "connections": d.connections,
                "bandwidth_limit": d.bandwidth_limit, "has_credentials": d.credentials.is_some()}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if config.destinations.is_empty() {
        println!("no destinations; add one with `backpocket dest add NAME FOLDER`");
    }
    for d in &config.destinations {
        let mode = match d.mode {
            Mode::Vault => "vault ",
            Mode::Mirror => "mirror",
        };
        let when = if d.when.is_empty() {
            String::new()
        } else {
            format!("  (when {})", d.when.join(", "))
        };
        println!("{:<16} {mode} {}{when}", d.name, d.url);
    }
    Ok(())
}

pub fn dest_remove(p: &Pocket, name: &str) -> Result<()> {
    let mut config = p.config()?;
    let before = config.destinations.len();
    config.destinations.retain(|d| d.name != name);
    if config.destinations.len() == before {
        bail!("no destination named {name} (see `backpocket dest list`)");
    }
    p.save_config(&config)?;
    journal::remove_cursor(&p.journal_path(), name)?;
    replicator::DestState::remove(&p.meta_dir(), name);
    println!("removed destination {name}; what it holds is left as it is");
    Ok(())
}

/// What the replicator needs, for the mount and for `sync`.
pub fn setup(
    p: &Pocket,
    config: &Config,
    key: Option<replicator::Key>,
) -> Result<replicator::Setup> {
    Ok(replicator::Setup {
        pocket: p.root.clone(),
        meta_dir: p.meta_dir(),
        journal: p.journal_path(),
        pocket_id: config.id.clone(),
        key,
        dests: config.destinations.iter().map(|d| d.spec()).collect(),
    })
}

/// `sync`: record what changed (when not mounted), then drain every destination.
pub fn sync(p: &Pocket, watch: bool, json: bool, args: &KeyArgs) -> Result<()> {
    let config = p.config()?;
    if config.destinations.is_empty() {
        bail!("this pocket has no destinations; add one with `backpocket dest add NAME FOLDER`");
    }
    let needs_key = config.destinations.iter().any(|d| d.mode == Mode::Vault);
    let key = if needs_key {
        keys::pocket_key(&config, args, true)?
    } else {
        None
    };
    let setup = setup(p, &config, key)?;
    let stop = crate::StopOnSignal::new(&crate::INTERRUPT)?;
    let cancel = stop.flag.clone();
    loop {
        let mounted = scan_unless_mounted(p)?;
        let target = journal::Reader::open(&p.journal_path())?.status()?.last_seq;
        let progress = Progress::default();
        let started = std::time::Instant::now();
        let outcomes = with_progress(&progress, "backing up", || {
            replicator::sync(&setup, target, &progress, &cancel)
        });
        let elapsed = started.elapsed();
        let mut failed = 0;
        let mut lines = Vec::new();
        for o in &outcomes {
            match &o.result {
                Ok(r) => {
                    lines.push(
                        json!({"name": o.name, "ok": true, "records": r.drained.records,
                        "files": r.drained.files, "bytes_read": r.drained.bytes_read,
                        "bytes_uploaded": r.drained.bytes_uploaded, "cursor": r.drained.cursor,
                        "waited_for_mount": r.waited_for_mount}),
                    );
                    if !json {
                        if r.waited_for_mount {
                            println!("{:<16} up to date (drained by the mount)", o.name);
                        } else {
                            println!(
                                "{:<16} up to date: {} changes, {} files read, {} sent in {:.1}s",
                                o.name,
                                r.drained.records,
                                r.drained.files,
                                bytes(r.drained.bytes_uploaded),
                                elapsed.as_secs_f64()
                            );
                        }
                    }
                }
                Err(e) => {
                    failed += 1;
                    let reachable = !replicator::is_unreachable(e);
                    lines.push(json!({"name": o.name, "ok": false, "reachable": reachable, "error": e.explain()}));
                    if !json {
                        let what = if reachable { "failed" } else { "not reachable" };
                        println!("{:<16} {what}: {}", o.name, e.explain());
                    }
                }
            }
        }
        if json {
            println!(
                "{}",
                serde_json::to_string(&json!({"mounted": mounted, "destinations": lines}))?
            );
        }
        if !watch || cancel.load(Ordering::Relaxed) {
            if failed > 0 {
                // Keep the most telling error's exit code (a wrong key, damage).
                let first = outcomes
                    .into_iter()
                    .find_map(|o| o.result.err())
                    .expect("failed");
                return Err(Failure::new(
                    crate::exit::code_of(&anyhow::Error::from(first)),
                    anyhow!(
                        "{failed} of {} destinations are not up to date",
                        setup.dests.len()
                    ),
                )
                .into());
            }
            return Ok(());
        }
        for _ in 0..50 {
            if cancel.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Scans the pocket when no mount records its changes; returns whether it is mounted.
fn scan_unless_mounted(p: &Pocket) -> Result<bool> {
    let _lock = match platform::PocketLock::acquire(&p.lock_path(), &p.root) {
        Ok(l) => l,
        Err(platform::Error::Locked { .. }) => return Ok(true),
        Err(e) => return Err(e.into()),
    };
    let j = journal::Journal::open(&p.journal_path())?;
    journal::scan(&p.root, &p.journal_path(), &j.handle())
        .context("the scan before syncing failed")?;
    j.close()?;
    Ok(false)
}

/// A destination for reading: a configured name (with the pocket's key), or a folder/URL
/// (with the passphrase) when the drive is lost.
pub struct Opened {
    pub vault: Vault,
    _rt: tokio::runtime::Runtime,
}

pub fn open_vault(pocket: Option<&Path>, dest: &str, args: &KeyArgs) -> Result<Opened> {
    open_vault_of(Pocket::find(pocket).ok(), dest, args)
}

/// As [`open_vault`], with the pocket (if any) already found.
fn open_vault_of(found: Option<Pocket>, dest: &str, args: &KeyArgs) -> Result<Opened> {
    let rt = replicator::runtime()?;
    let configured = found.as_ref().and_then(|p| {
        let c = p.config().ok()?;
        let d = c.destination(dest)?.clone();
        Some((c, d))
    });
    let (store, key) = match configured {
        Some((c, d)) => {
            if d.mode != Mode::Vault {
                bail!("{dest} is a mirror; read it with any file browser, or restore from it with `backpocket restore --from {}`", d.url);
            }
            let key = keys::pocket_key(&c, args, true)?;
            let store = d.spec().store(key.as_ref(), rt.handle().clone(), false)?;
            let vc = Vault::read_config(&store)?;
            let key = match key {
                Some(k) if c.id == vc.pocket_id => k,
                _ => keys::key_for_vault(&vc, args)?,
            };
            (store, key)
        }
        None => {
            if replicator::local_path(dest).is_none() && !dest.contains('/') {
                bail!("{dest} is neither a configured destination nor a folder; see `backpocket dest list`");
            }
            let pocket_cfg = found.and_then(|p| p.config().ok());
            // A URL without a pocket (the drive is lost): S3 settings come from the
            // environment (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ...), SFTP uses ssh's.
            let store = Store::connect(
                dest,
                &replicator::Access::from_env(),
                &replicator::Secrets::from_env(),
                rt.handle().clone(),
                false,
            )?;
            let vc = Vault::read_config(&store)?;
            let key = match &pocket_cfg {
                Some(c) if c.id == vc.pocket_id && c.key.is_some() => {
                    keys::pocket_key(c, args, true)?.expect("has a key")
                }
                _ => keys::key_for_vault(&vc, args)?,
            };
            (store, key)
        }
    };
    let vault = Vault::open(store, &key)?;
    Ok(Opened { vault, _rt: rt })
}

/// Parses `--at`: RFC 3339, or "YYYY-MM-DD HH:MM[:SS]" in UTC.
pub fn parse_time(s: &str) -> Result<i64> {
    let try_parse = |t: &str| humantime::parse_rfc3339_weak(t).ok();
    let t = try_parse(s)
        .or_else(|| try_parse(&format!("{s}:00")))
        .or_else(|| try_parse(&format!("{s} 23:59:59")))
        .ok_or_else(|| {
            Failure::new(
                ExitCode::Usage,
                anyhow!("{s:?} is not a time; write e.g. \"2026-11-20 10:00\" (UTC) or RFC 3339"),
            )
        })?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_nanos() as i64)
}

/// `restore`.
pub fn restore(
    pocket: Option<&Path>,
    from: &str,
    to: &Path,
    at: Option<&str>,
    paths: &[PathBuf],
    json: bool,
    args: &KeyArgs,
) -> Result<()> {
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
        return restore_mirror(&mirror, to, paths, json);
    }
    let opened = open_vault(pocket, from, args)?;
    let paths = paths
        .iter()
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .collect();
    restore_vault(&opened.vault, to, at, paths, json)
}

/// Restores a vault's point into `to`, with a progress bar, and says what it did.
fn restore_vault(
    vault: &Vault,
    to: &Path,
    at: Option<i64>,
    paths: Vec<Vec<u8>>,
    json: bool,
) -> Result<()> {
    let progress = Progress::default();
    let opts = replicator::RestoreOptions {
        target: to.to_owned(),
        at,
        paths,
        owners: rustix::process::geteuid().is_root(),
        workers: 8,
    };
    let started = std::time::Instant::now();
    let report = with_progress(&progress, "restoring", || {
        replicator::restore(vault, &opts, &progress)
    })?;
    print_restore(&report, to, started.elapsed(), json)
}

fn print_restore(
    report: &replicator::RestoreReport,
    to: &Path,
    elapsed: Duration,
    json: bool,
) -> Result<()> {
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "target": to, "point": rfc3339(report.point_time_ns), "seq": report.point_seq,
                "files": report.files, "dirs": report.dirs, "symlinks": report.symlinks,
                "other": report.other, "bytes": report.bytes,
                "failed": report.failed.iter().map(|(p, e)| json!({"path": lossy(p), "error": e})).collect::<Vec<_>>(),
                "skipped": report.skipped.iter().map(|(p, e)| json!({"path": lossy(p), "reason": e})).collect::<Vec<_>>(),
            }))?
        );
    } else {
        println!(
            "restored the pocket as of {} into {}: {} files, {} folders, {} symlinks, {} in {:.1}s",
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
        for (p, e) in &report.failed {
            println!("  NOT restored {}: {e}", lossy(p));
        }
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
    print_restore(&report, to, started.elapsed(), json)
}

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
    if report.damage.is_empty() {
        println!("no damage found");
    }
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
    if before.damage.is_empty() {
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
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "before": verify_json(&before, true),
                "repair": {
                    "chunks_salvaged": done.chunks_salvaged, "chunks_resent": done.chunks_resent,
                    "files_read": done.files_read, "bytes_uploaded": done.bytes_uploaded,
                    "objects_removed": done.objects_removed, "checkpoint_seq": done.checkpoint_seq,
                },
                "after": verify_json(&after, true),
            }))?
        );
    } else {
        println!(
            "repaired: {} good chunks of damaged packs packed again, {} chunks sent again from {} files of the pocket ({}), {} damaged objects removed; a new checkpoint holds record {}",
            done.chunks_salvaged,
            done.chunks_resent,
            done.files_read,
            bytes(done.bytes_uploaded),
            done.objects_removed.len(),
            done.checkpoint_seq
        );
        println!("verifying again:");
        print_verify(&after, true);
        if !after.damage.is_empty() {
            println!("what is still damaged was only in versions the pocket no longer has; restore them from another destination if one holds them");
        }
    }
    damage_verdict(Some(&p.root), dest, &after)
}

/// The pocket remembers the vault's newest log object, or it would take a vault whose log
/// was rewritten (forget, repair) as rolled back.
fn remember_head(p: &Pocket, dest: &str, h: &replicator::Head) -> Result<()> {
    let mut st = replicator::DestState::load(&p.meta_dir(), dest);
    st.head_gen = Some(h.gen);
    st.head_hash = Some(hex::encode(h.hash));
    st.save(&p.meta_dir(), dest)?;
    Ok(())
}

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
        let versions = replicator::versions(&opened.vault, &rel)?;
        if !json {
            println!("{} ({} versions):", d.name, versions.len());
            for v in &versions {
                println!(
                    "  {}  {:>10}  modified {}",
                    rfc3339(v.time_ns),
                    bytes(v.size),
                    rfc3339(v.mtime_ns)
                );
            }
        }
        out.push(json!({"destination": d.name, "versions": versions.iter().map(|v| json!({
            "time": rfc3339(v.time_ns), "seq": v.seq, "size": v.size, "mtime": rfc3339(v.mtime_ns)})).collect::<Vec<_>>()}));
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

/// `init --from DEST DIR`: a new drive from a destination.
pub fn init_from(from: &str, dir: &Path, args: &KeyArgs) -> Result<()> {
    if dir.join(crate::pocket::DIR).exists() {
        bail!("{} is already a pocket", dir.display());
    }
    // The drive is lost: the destination alone, and the passphrase.
    let opened = open_vault_of(None, from, args)?;
    let text = opened.vault.pocket_config()?.ok_or_else(|| {
        anyhow!("{from} does not hold its pocket's config (written by the first drain); make the pocket with `backpocket init` and restore into it")
    })?;
    let text = String::from_utf8(text).context("the stored pocket config is not text")?;
    let config: Config =
        toml::from_str(&text).context("the stored pocket config cannot be read")?;
    restore_vault(&opened.vault, dir, None, Vec::new(), false)?;
    crate::init_with(dir, config)?;
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

/// Holds a configured destination against the mount's replicator while retention rewrites
/// it (one writer per vault). None when `dest` is a folder given directly.
fn hold_destination(
    pocket: Option<&Path>,
    dest: &str,
) -> Result<Option<(Pocket, replicator::DestLock)>> {
    let Some(p) = Pocket::find(pocket).ok() else {
        return Ok(None);
    };
    if p.config()?.destination(dest).is_none() {
        return Ok(None);
    }
    match replicator::DestLock::try_take(&p.meta_dir(), dest)? {
        Some(l) => Ok(Some((p, l))),
        None => Err(Failure::new(
            ExitCode::Busy,
            anyhow!("the mount is backing up to {dest} right now; unmount the pocket (or wait for `backpocket sync` to end) and try again"),
        )
        .into()),
    }
}

/// `forget`.
#[allow(clippy::too_many_arguments)]
pub fn forget(
    pocket: Option<&Path>,
    dest: &str,
    policy: &replicator::KeepPolicy,
    dry_run: bool,
    and_prune: bool,
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
    if and_prune && !dry_run {
        print_prune(&replicator::prune(&opened.vault, false)?, false, json)?;
    }
    Ok(())
}

/// `prune`.
pub fn prune(
    pocket: Option<&Path>,
    dest: &str,
    dry_run: bool,
    json: bool,
    args: &KeyArgs,
) -> Result<()> {
    let _held = hold_destination(pocket, dest)?;
    let opened = open_vault(pocket, dest, args)?;
    print_prune(&replicator::prune(&opened.vault, dry_run)?, dry_run, json)
}

fn print_prune(r: &replicator::PruneReport, dry_run: bool, json: bool) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "dry_run": dry_run, "packs_deleted": r.packs_deleted, "bytes_freed": r.bytes_freed,
                "packs_kept": r.packs_kept, "unused_bytes_kept": r.unused_bytes_kept,
            }))?
        );
    } else {
        println!(
            "{} {} packs, {}; kept {} packs ({} in them no point needs)",
            if dry_run { "would delete" } else { "deleted" },
            r.packs_deleted,
            bytes(r.bytes_freed),
            r.packs_kept,
            bytes(r.unused_bytes_kept)
        );
    }
    Ok(())
}
