//! Several devices on one vault: joining, listing, removing, and the mount's pull of the
//! others' changes.
//!
//! Devices share through one vault: the first vault destination of the pocket's config that
//! devices joined (a joined pocket's config is a copy of the first one's, so all agree).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use replicator::{Mode, Vault};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::keys::{self, KeyArgs};
use crate::pocket::{Config, Pocket};

/// This device's name: the one it joined with, else the machine's.
pub fn own_name(config: &Config) -> String {
    config.device.clone().unwrap_or_else(|| {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    })
}

/// `init DIR --join DEST`: a new pocket in DIR that joins the vault at DEST as a device of its
/// own, with the vault's files and the vault as its destination.
pub fn join(from: &str, dir: &Path, name: Option<String>, args: &KeyArgs) -> Result<()> {
    crate::backup::refuse_a_pocket(dir)?;
    if from.starts_with("group:") {
        bail!("devices cannot share a group spread over several places yet; join a folder, SFTP or S3 vault");
    }
    let mut opened = crate::backup::open_vault_of_url(from, args)?;
    let key = opened.key.clone();
    let vault = &mut opened.vault;
    let text = vault.pocket_config()?.ok_or_else(|| {
        anyhow!("{from} does not hold its pocket's config yet (the first drain writes it); mount the first pocket until a drain has finished, then join")
    })?;
    let text = String::from_utf8(text).context("the stored pocket config is not text")?;
    let mut config: Config =
        toml::from_str(&text).context("the stored pocket config cannot be read")?;
    let first_id = config.id.clone();
    if first_id != vault.config.pocket_id {
        bail!("{from} holds the config of another pocket than the one that made it; it cannot be joined");
    }
    // The first pocket is known by the name its config gives, else as the drive.
    let first_name = config.device.clone().unwrap_or_else(|| "drive".into());
    config.id = crate::pocket::new_id()?;
    let name = name.unwrap_or_else(|| {
        own_name(&Config {
            device: None,
            push: None,
            ..config.clone()
        })
    });
    config.device = Some(name.clone());
    // Registered first: a join cut short leaves a device that never wrote (remove it with
    // `devices remove`), never a pocket the vault refuses.
    let (tree, head) = vault.load_tree(None)?.ok_or_else(|| {
        anyhow!("{from} holds no restore point yet; let the first pocket drain once")
    })?;
    let left_out = keep_shared_only(&mut config, from, &key)?;
    vault.join_device(&config.id, &name, &first_name, head.gen)?;
    keys::adopt(&mut config, &key)?;
    crate::backup::init_restored(vault, dir, config)?;
    let meta = dir.canonicalize()?.join(crate::pocket::DIR);
    replicator::pull::record_base(&meta, &first_id, head.gen, &tree)?;
    println!(
        "{} joined the vault at {from} as device {name}; mount it with: backpocket mount {} MOUNTPOINT",
        dir.display(),
        dir.display()
    );
    if !left_out.is_empty() {
        println!(
            "not taken from {first_name}: its destinations {} (they keep {first_name}'s own backups); give this device more with `backpocket dest add`",
            left_out.join(", ")
        );
    }
    Ok(())
}

/// A joined device drains only to the vault it joined. The first pocket's other
/// destinations hold that pocket's own backups (a mirror of its tree, its groups, vaults of
/// its own): each would refuse this device, and stay a destination that is never up to date.
/// Returns their names.
fn keep_shared_only(config: &mut Config, from: &str, key: &replicator::Key) -> Result<Vec<String>> {
    let local = |url: &str| replicator::local_path(url).and_then(|p| std::path::absolute(p).ok());
    let same = |url: &str| match (local(url), local(from)) {
        (Some(a), Some(b)) => a == b,
        (None, None) => url.trim_end_matches('/') == from.trim_end_matches('/'),
        _ => false,
    };
    let (kept, left): (Vec<_>, Vec<_>) = std::mem::take(&mut config.destinations)
        .into_iter()
        .partition(|d| d.mode == Mode::Vault && d.members.is_empty() && same(&d.url));
    config.destinations = kept;
    if config.destinations.is_empty() {
        // Joined by another address than the first pocket's (a share mounted elsewhere, the
        // server by another name): reached as the join reached it, credentials included.
        let name = "vault";
        let secrets = replicator::Secrets::from_env();
        let credentials = match local(from) {
            None if !secrets.is_empty() => Some(replicator::seal_secrets(key, name, &secrets)?),
            _ => None,
        };
        let url = local(from).map_or_else(|| from.to_owned(), |p| p.to_string_lossy().into_owned());
        config.destinations.push(crate::pocket::DestConfig {
            name: name.into(),
            credentials,
            ..crate::pocket::DestConfig::for_url(&url)
        });
    }
    Ok(left.into_iter().map(|d| d.name).collect())
}

/// The vault devices share, opened on this pocket's own chain: the first vault destination
/// that devices joined. Groups are not shared between devices (yet): they are left out.
fn shared_vault(
    p: &Pocket,
    config: &Config,
    key: &replicator::Key,
    rt: &tokio::runtime::Runtime,
) -> Result<Option<(String, Vault)>> {
    let mut stores = Stores::default();
    stores.shared(p, config, key, rt)
}

/// The mount's connections to its vault destinations, made once: whether devices joined a
/// vault is asked again with one read of its `config`, never a new connection (an SFTP
/// destination would otherwise log in every few seconds).
#[derive(Default)]
struct Stores {
    open: BTreeMap<String, replicator::Store>,
}

impl Stores {
    fn shared(
        &mut self,
        p: &Pocket,
        config: &Config,
        key: &replicator::Key,
        rt: &tokio::runtime::Runtime,
    ) -> Result<Option<(String, Vault)>> {
        let mut last_err = None;
        for d in config
            .destinations
            .iter()
            .filter(|d| d.mode == Mode::Vault && d.members.is_empty())
        {
            let store = match self.open.get(&d.name) {
                Some(s) => s.clone(),
                None => match d.spec().store(Some(key), rt.handle().clone(), false) {
                    Ok(s) => {
                        self.open.insert(d.name.clone(), s.clone());
                        s
                    }
                    Err(e) => {
                        last_err = Some((d.name.clone(), e));
                        continue;
                    }
                },
            };
            match Vault::read_config(&store) {
                Ok(vc) if vc.backpocket_vault >= replicator::format::DEVICES_FORMAT => {}
                Ok(_) => continue,
                Err(e) => {
                    // Connected anew next time.
                    self.open.remove(&d.name);
                    last_err = Some((d.name.clone(), e));
                    continue;
                }
            }
            match Vault::open(store, key) {
                Ok(v) => {
                    let v = v
                        .with_cache(&p.meta_dir().join("cache"))
                        .on_chain(&config.id);
                    return Ok(Some((d.name.clone(), v)));
                }
                Err(e) => last_err = Some((d.name.clone(), e)),
            }
        }
        match last_err {
            Some((name, e)) => Err(anyhow!(e).context(format!("cannot open {name}"))),
            None => Ok(None),
        }
    }
}

#[derive(Serialize)]
struct DeviceJson {
    name: String,
    id: String,
    this: bool,
    first: bool,
    online: bool,
    last_seen: Option<String>,
    last_seen_age_secs: Option<f64>,
    #[serde(skip)]
    last_seen_ns: Option<i64>,
    log_objects: u64,
    /// Its log objects this pocket has not taken yet (None: this pocket itself).
    behind: Option<u64>,
    removed: Option<String>,
}

/// `devices`: each device of the shared vault, online or when last seen, how far behind.
pub fn list(p: &Pocket, json: bool, args: &KeyArgs) -> Result<()> {
    let config = p.config()?;
    let key = keys::pocket_key(&config, args, true)?
        .ok_or_else(|| anyhow!("this pocket has no vault destination; devices share a vault"))?;
    let rt = replicator::runtime()?;
    let Some((dest, vault)) = shared_vault(p, &config, &key, &rt)? else {
        if json {
            println!("[]");
        } else {
            println!("no other device shares this pocket's vaults; join one with: backpocket init DIR --join DEST");
        }
        return Ok(());
    };
    let taken = replicator::pull::taken(&p.meta_dir());
    let now = replicator_now();
    let mut out = Vec::new();
    for d in vault.devices()? {
        let this = d.record.id == config.id;
        out.push(DeviceJson {
            online: this || d.online(),
            name: d.record.name.clone(),
            id: d.record.id.clone(),
            this,
            first: d.first,
            last_seen: d
                .presence
                .as_ref()
                .map(|s| crate::report::rfc3339(s.time_ns)),
            last_seen_age_secs: d.presence.as_ref().map(|s| (now - s.time_ns) as f64 / 1e9),
            last_seen_ns: d.presence.as_ref().map(|s| s.time_ns),
            log_objects: d.head_gen,
            behind: (!this).then(|| {
                d.head_gen
                    .saturating_sub(taken.get(&d.record.id).copied().unwrap_or(0))
            }),
            removed: d.record.removed_ns.map(crate::report::rfc3339),
        });
    }
    let conflicts = replicator::pull::conflicts(&p.meta_dir(), 10);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "vault": dest,
                "devices": out,
                "conflicts": conflicts.iter().map(|c| serde_json::json!({"time": c.0, "path": c.1, "copy": c.2, "device": c.3})).collect::<Vec<_>>(),
            }))?
        );
        return Ok(());
    }
    println!("devices sharing {dest}:");
    for d in &out {
        let state = if let Some(r) = &d.removed {
            format!("removed {r}")
        } else if d.this {
            "this device".into()
        } else if d.online {
            "online".into()
        } else {
            match d.last_seen_ns {
                Some(t) => format!("last seen {}", crate::report::ago(t)),
                None => "never seen".into(),
            }
        };
        let behind = match d.behind {
            Some(0) => ", all taken here".to_owned(),
            Some(n) => format!(", {n} log objects not taken here yet"),
            None => String::new(),
        };
        println!(
            "  {:<16} {state}{behind}{}",
            d.name,
            if d.first { " (first)" } else { "" }
        );
    }
    if !conflicts.is_empty() {
        println!("recent conflicts (both versions kept):");
        for (t, path, copy, device) in &conflicts {
            println!("  {t}  {path}: {device}'s version is at {copy}");
        }
    }
    Ok(())
}

fn replicator_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// `devices remove NAME`: it can no longer write the vault.
pub fn remove(p: &Pocket, name: &str, args: &KeyArgs) -> Result<()> {
    let config = p.config()?;
    let key = keys::pocket_key(&config, args, true)?
        .ok_or_else(|| anyhow!("this pocket has no vault destination; devices share a vault"))?;
    let rt = replicator::runtime()?;
    let Some((dest, vault)) = shared_vault(p, &config, &key, &rt)? else {
        bail!("no other device shares this pocket's vaults");
    };
    let me = match vault.device_record(vault.device())? {
        Some(r) => r.name,
        None => own_name(&config),
    };
    let r = vault.remove_device(name, &me)?;
    println!(
        "{} can no longer back up to {dest}. It still knows the passphrase: it can read what {dest} held until now. To keep it from reading what comes next, move the pocket to a new vault with a new passphrase.",
        r.name
    );
    Ok(())
}

/// The mount's pull, in a process of its own (`backpocket pull-helper`), started and stopped
/// with the mount: it writes into the mount, and a process must never wait on its own mount.
/// A daemon killed while one of its threads waited there could not exit (its own FUSE
/// connection holds it, and it would hold the pocket until `umount -f`); the helper instead
/// dies with the daemon (parent-death signal), and its calls on the mount fail once the
/// daemon is gone. A helper that ends early is started again.
pub fn spawn_pull(
    pocket: Pocket,
    config: Config,
    key: Option<replicator::Key>,
    mountpoint: PathBuf,
    drained: crossbeam_channel::Receiver<(String, u64)>,
    stop: Arc<AtomicBool>,
    log_to: Option<PathBuf>,
) -> Option<std::thread::JoinHandle<()>> {
    let key = key?;
    if !config.destinations.iter().any(|d| d.mode == Mode::Vault) {
        return None;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            warn!("cannot pull the other devices' changes: cannot find this program ({e})");
            return None;
        }
    };
    let start = move || -> std::io::Result<std::process::Child> {
        use std::io::Write;
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("pull-helper")
            .arg("--pocket")
            .arg(&pocket.root)
            .arg("--mountpoint")
            .arg(&mountpoint)
            .arg("--parent")
            .arg(std::process::id().to_string());
        if let Some(l) = &log_to {
            cmd.arg("--log-file").arg(l);
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let key_hex = hex::encode(key.as_bytes());
        if let Err(e) = child
            .stdin
            .as_mut()
            .map_or(Ok(()), |i| writeln!(i, "{key_hex}"))
        {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(child)
    };
    let t = std::thread::Builder::new()
        .name("pull".into())
        .spawn(move || {
            use std::io::Write;
            let mut child: Option<std::process::Child> = None;
            let mut next_start = Instant::now();
            let mut started = Instant::now();
            let mut backoff = Duration::from_secs(5);
            while !stop.load(Ordering::Relaxed) {
                if child.is_none() && Instant::now() >= next_start {
                    match start() {
                        Ok(c) => {
                            child = Some(c);
                            started = Instant::now();
                        }
                        Err(e) => {
                            warn!("cannot start pulling the other devices' changes: {e}");
                            next_start = Instant::now() + backoff;
                            backoff = (backoff * 2).min(Duration::from_secs(300));
                        }
                    }
                }
                if let Some(c) = child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        warn!("the pull ended by itself ({status}); starting it again");
                        child = None;
                        // A helper that had been running a while starts again soon.
                        if started.elapsed() > Duration::from_secs(300) {
                            backoff = Duration::from_secs(5);
                        }
                        next_start = Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(300));
                        continue;
                    }
                }
                // This device's drains, passed on for the helper to announce.
                match drained.recv_timeout(Duration::from_millis(100)) {
                    Ok((dest, gen)) => {
                        if let Some(i) = child.as_mut().and_then(|c| c.stdin.as_mut()) {
                            let _ = writeln!(i, "{dest}\t{gen}");
                        }
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                        std::thread::sleep(Duration::from_millis(100))
                    }
                }
            }
            // Its standard input closing is its signal to stop (it says it is offline first).
            if let Some(mut c) = child {
                drop(c.stdin.take());
                let deadline = Instant::now() + Duration::from_secs(10);
                while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if matches!(c.try_wait(), Ok(None)) {
                    warn!("the pull did not stop within 10 s; ending it");
                    let _ = c.kill();
                }
                let _ = c.wait();
            }
        });
    match t {
        Ok(t) => Some(t),
        Err(e) => {
            warn!("cannot start pulling the other devices' changes: {e}");
            None
        }
    }
}

/// `backpocket pull-helper`: the mount's pull (see [`spawn_pull`]). Its standard input gives
/// the vault's key (hex, one line), then this device's drains (`DEST<TAB>GEN` lines); it
/// stops when that input ends.
pub fn pull_helper(
    pocket_dir: &Path,
    mountpoint: &Path,
    parent: u32,
    log_file: Option<&Path>,
) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .context("cannot tie the pull to its mount's life")?;
        // The mount may have ended before the line above.
        if rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32) != Some(parent) {
            return Ok(());
        }
    }
    let _ = parent;
    let logged = log_file.and_then(|l| {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(l)
            .ok()?;
        tracing_subscriber::fmt()
            .with_env_filter(crate::log_filter("info"))
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .try_init()
            .ok()
    });
    if logged.is_none() {
        crate::init_logging("info");
    }
    use std::io::BufRead;
    let mut lines = std::io::stdin().lock().lines();
    let key_hex = lines
        .next()
        .transpose()?
        .ok_or_else(|| anyhow!("no key given"))?;
    let key =
        replicator::Key::from_bytes(&hex::decode(key_hex.trim()).context("a malformed key")?)?;
    let pocket = Pocket::at(pocket_dir)?;
    let config = pocket.config()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, drained) = crossbeam_channel::bounded(16);
    {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("pull-input".into())
            .spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    let Ok(line) = line else { break };
                    if let Some((dest, gen)) = line.rsplit_once('\t') {
                        if let Ok(gen) = gen.parse::<u64>() {
                            let _ = tx.send((dest.to_owned(), gen));
                        }
                    }
                }
                stop.store(true, Ordering::Relaxed);
            })?;
    }
    drop(lines);
    pull_loop(pocket, config, key, mountpoint.to_owned(), drained, stop);
    Ok(())
}

/// Takes every other device's changes into the mount, says this device is online, and waits
/// between rounds from 1 s (something just changed) to 2 s while another device is online,
/// 8 s while none is.
fn pull_loop(
    pocket: Pocket,
    config: Config,
    key: replicator::Key,
    mountpoint: PathBuf,
    drained: crossbeam_channel::Receiver<(String, u64)>,
    stop: Arc<AtomicBool>,
) {
    let rt = match replicator::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            warn!("cannot pull the other devices' changes: {e}");
            return;
        }
    };
    let mut name = own_name(&config);
    let meta = pocket.meta_dir();
    // The mount is a filesystem of its own: once it ends, the mountpoint's device differs
    // from what it was while mounted, and nothing is written there.
    let dev_of = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
    };
    let pocket_dev = dev_of(&pocket.root);
    // The mount's device, once it serves. Looked at only once a vault devices joined
    // is open: a look holds the mountpoint for a moment, and an unmount at that
    // moment finds it busy (a pocket that shares nothing must never cause that).
    let mounted_dev = std::cell::Cell::new(None::<u64>);
    let serving = || {
        if mounted_dev.get().is_none() {
            match dev_of(&mountpoint) {
                Some(d)
                    if Some(d) != pocket_dev
                        && d != dev_of(mountpoint.parent().unwrap_or(&mountpoint)).unwrap_or(0) =>
                {
                    mounted_dev.set(Some(d))
                }
                _ => {}
            }
        }
        mounted_dev.get().is_some()
    };
    let still_there = || {
        !stop.load(Ordering::Relaxed)
            && mounted_dev.get().is_some()
            && dev_of(&mountpoint) == mounted_dev.get()
    };
    let mut vault: Option<(String, Vault)> = None;
    // What earlier sessions took, from the bases on the drive (read once here).
    let mut seen = replicator::pull::taken(&meta);
    let mut snapshot = Snapshot::resume(&meta);
    let mut stores = Stores::default();
    let mut listed: Option<(Vec<replicator::devices::DeviceInfo>, Instant)> = None;
    let mut next_open = Instant::now();
    let mut last_presence: Option<Instant> = None;
    let mut delay = Duration::from_secs(1);
    // The XMPP connection, once devices joined and the config names a server: the
    // others hear of this device's drains at once, and it of theirs.
    let mut push: Option<crate::push::Push> = None;
    let mut push_tried = false;
    let (mut push_open, mut drained_open) = (true, true);
    // A fixed time between polls, for tests that show push at work (slow polling)
    // and for tuning.
    let poll_every = std::env::var("BACKPOCKET_PULL_POLL_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut live = Liveness::default();
    while !stop.load(Ordering::Relaxed) {
        if vault.is_none() && Instant::now() >= next_open {
            match stores.shared(&pocket, &config, &key, &rt) {
                Ok(v) => vault = v,
                Err(e) => debug!("pull: {e:#}"),
            }
            // The name the other devices know this one by (their copies of its
            // versions carry it, so both sides must spell it alike).
            if let Some((_, v)) = &vault {
                if let Ok(Some(r)) = v.device_record(v.device()) {
                    name = r.name;
                }
            }
            // A vault no device joined yet is looked at again every 10 s (one
            // small read): a device that joins is heard from soon.
            next_open = Instant::now() + Duration::from_secs(10);
        }
        if let (Some((_, v)), None, false, Some(cfg)) = (&vault, &push, push_tried, &config.push) {
            push_tried = true;
            match crate::push::Account::open(cfg, &key) {
                Ok(a) => {
                    let node = format!("backpocket-{}", v.config.id);
                    push = Some(crate::push::Push::start(rt.handle(), a, v.device(), node));
                }
                Err(e) => {
                    warn!("no push: {e:#}; the other devices' changes come by polling")
                }
            }
        }
        if let Some((dest, v)) = &vault {
            if last_presence.is_none_or(|t| t.elapsed() >= replicator::devices::PRESENCE_EVERY) {
                let said = v.put_presence(true, 0);
                match said {
                    Ok(()) => last_presence = Some(Instant::now()),
                    Err(e) => {
                        debug!("pull: cannot say this device is online at {dest}: {e}")
                    }
                }
            }
            let p = replicator::pull::Pocket {
                root: &mountpoint,
                meta_dir: &meta,
                name: &name,
                still_there: &still_there,
            };
            // Who the devices are, and when each was last seen: read every 30 s.
            if listed
                .as_ref()
                .is_none_or(|(_, t)| t.elapsed() >= replicator::devices::PRESENCE_EVERY)
            {
                match v.devices() {
                    Ok(d) => {
                        live.listed(&d);
                        snapshot.save(&meta, v.device(), &d, &seen, &live);
                        listed = Some((d, Instant::now()));
                    }
                    Err(e) => debug!("pull: cannot list the devices at {dest}: {e}"),
                }
            }
            let devices = listed
                .as_ref()
                .map(|(d, _)| d.as_slice())
                .unwrap_or_default();
            let pulled = if serving() {
                replicator::pull::pull(v, &p, devices, &mut seen)
            } else {
                // Not serving yet: the next round.
                Ok(Default::default())
            };
            match pulled {
                Ok(r) => {
                    if !r.last.is_empty() {
                        // Who changed what is in `journal status` at once.
                        snapshot.took(&r.last);
                        if let Some((d, _)) = &listed {
                            snapshot.save(&meta, v.device(), d, &seen, &live);
                        }
                    }
                    if r.written + r.removed + r.conflicts.len() > 0 {
                        info!(
                            from = ?r.taken_from,
                            written = r.written,
                            removed = r.removed,
                            conflicts = r.conflicts.len(),
                            "took the other devices' changes"
                        );
                        delay = Duration::from_secs(1);
                    } else if r.deferred > 0 && r.failed == 0 {
                        delay = Duration::from_secs(1);
                    } else {
                        // Another device online is likely to write soon: look
                        // every 2 s; every 8 s when none is.
                        let others_online = devices
                            .iter()
                            .any(|d| d.record.id != v.device() && live.online(d));
                        let most = if others_online { 2 } else { 8 };
                        delay = (delay * 2).min(Duration::from_secs(most));
                    }
                }
                Err(e) => {
                    warn!("cannot take the other devices' changes from {dest}: {e}");
                    delay = (delay * 2).clamp(Duration::from_secs(2), Duration::from_secs(30));
                    vault = None;
                    listed = None;
                    next_open = Instant::now();
                }
            }
        }
        // Until the next look: woken at once by a notice that another device wrote.
        let until = match &vault {
            Some(_) => Instant::now() + poll_every.unwrap_or(delay),
            // Until the vault is looked at again.
            None => next_open.max(Instant::now() + Duration::from_millis(100)),
        };
        let (never, never_heard) = (crossbeam_channel::never(), crossbeam_channel::never());
        while !stop.load(Ordering::Relaxed) {
            // A channel whose other end is gone is not listened to (it would answer
            // at once, forever).
            let drained = if drained_open { &drained } else { &never };
            let heard = match &push {
                Some(p) if push_open => p.heard(),
                _ => &never_heard,
            };
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let tick = left.min(Duration::from_millis(100));
            crossbeam_channel::select! {
                recv(drained) -> m => match m {
                    // This device's drain wrote to the shared vault: tell the others.
                    Ok((d, gen)) => {
                        if let (Some(p), Some((dest, _))) = (&push, &vault) {
                            if &d == dest {
                                p.wrote(gen);
                            }
                        }
                    }
                    Err(_) => drained_open = false,
                },
                recv(heard) -> m => match m {
                    Ok(crate::push::Heard::Wrote { device, gen }) => {
                        if seen.get(&device).is_none_or(|s| *s < gen) {
                            debug!(device, gen, "push: another device wrote");
                            delay = Duration::from_secs(1);
                            break;
                        }
                    }
                    Ok(crate::push::Heard::Presence { device, online }) => {
                        live.xmpp.insert(device, online);
                        // Shown at once (the devices are listed again now), and the
                        // poll is quicker while another device is online.
                        listed = None;
                        delay = Duration::from_secs(1);
                        break;
                    }
                    Ok(crate::push::Heard::Connected) => {
                        // What was written while this one was not connected.
                        live.xmpp.clear();
                        delay = Duration::from_secs(1);
                        break;
                    }
                    Err(_) => push_open = false,
                },
                default(tick) => {}
            }
        }
    }
    if let Some(p) = push.take() {
        p.stop(rt.handle());
    }
    if let Some((_, v)) = &vault {
        if last_presence.is_some() {
            let _ = v.put_presence(false, 0);
        }
    }
}

/// Who is online, as the mount knows it: the XMPP server's word first (it knows at once), else
/// the vault's presence objects, judged by this machine's clock.
#[derive(Default)]
struct Liveness {
    xmpp: BTreeMap<String, bool>,
    watch: replicator::devices::PresenceWatch,
    /// Devices whose clock was said to be off (once each).
    warned: std::collections::BTreeSet<String>,
}

impl Liveness {
    fn online(&self, d: &replicator::devices::DeviceInfo) -> bool {
        self.xmpp
            .get(&d.record.id)
            .copied()
            .unwrap_or_else(|| self.watch.online(d, Instant::now()))
    }

    fn listed(&mut self, devices: &[replicator::devices::DeviceInfo]) {
        self.watch.update(devices, replicator_now(), Instant::now());
        for d in devices {
            if let Some(ahead) = self.watch.clock_ahead_ns(&d.record.id) {
                if self.warned.insert(d.record.id.clone()) {
                    warn!(
                        "the clock of device {} is {}: nothing is lost, but where both change a file the newer modification time keeps the name, so set the clocks right (NTP)",
                        d.record.name,
                        clock_offset(ahead / 1_000_000_000)
                    );
                }
            }
        }
    }
}

/// "about 3h behind this one's": another device's clock offset in words, to 5 minutes (the
/// measure is good to a minute or so).
pub fn clock_offset(ahead_secs: i64) -> String {
    let by = (ahead_secs.unsigned_abs() + 150) / 300 * 300;
    format!(
        "about {} {} this one's",
        humantime::format_duration(Duration::from_secs(by)),
        if ahead_secs > 0 { "ahead of" } else { "behind" }
    )
}

/// What the mount last saw of the devices, in `.backpocket/devices.json`: `journal status`
/// shows it without reaching the vault. Written when something in it changes, and at most
/// once a minute for the times alone (not a drive write per poll).
#[derive(Default)]
struct Snapshot {
    last: Option<(serde_json::Value, Instant)>,
    /// Per device id, the last of its changes taken here: `{path, removed, at_ns}` (kept
    /// across mounts through the file itself).
    changes: BTreeMap<String, serde_json::Value>,
}

impl Snapshot {
    /// Starts from what the last mount wrote, so that who changed what last survives a
    /// remount.
    fn resume(meta: &Path) -> Snapshot {
        let mut s = Snapshot::default();
        let old: Option<serde_json::Value> = std::fs::read(meta.join("devices.json"))
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok());
        for d in old
            .as_ref()
            .and_then(|v| v["devices"].as_array())
            .into_iter()
            .flatten()
        {
            if let (Some(id), c) = (d["id"].as_str(), &d["last_change"]) {
                if c.is_object() {
                    s.changes.insert(id.to_owned(), c.clone());
                }
            }
        }
        s
    }

    /// Notes the last change a pull round took from each device.
    fn took(&mut self, last: &BTreeMap<String, (Vec<u8>, bool)>) {
        for (id, (path, removed)) in last {
            self.changes.insert(
                id.clone(),
                serde_json::json!({
                    "path": String::from_utf8_lossy(path),
                    "removed": removed,
                    "at_ns": replicator_now(),
                }),
            );
        }
    }

    /// `taken`: the newest log object taken from each device (the pull's own count, so the
    /// bases on the drive are not read again for it).
    fn save(
        &mut self,
        meta: &Path,
        me: &str,
        seen: &[replicator::devices::DeviceInfo],
        taken: &BTreeMap<String, u64>,
        live: &Liveness,
    ) {
        let devices: Vec<serde_json::Value> = seen
            .iter()
            .map(|d| {
                let this = d.record.id == me;
                serde_json::json!({
                    "name": d.record.name,
                    "id": d.record.id,
                    "this": this,
                    "online": this || live.online(d),
                    "clock_ahead_secs": live.watch.clock_ahead_ns(&d.record.id).map(|n| n / 1_000_000_000),
                    "last_seen_ns": d.presence.as_ref().map(|p| p.time_ns),
                    "log_objects": d.head_gen,
                    "behind": (!this).then(|| d.head_gen.saturating_sub(taken.get(&d.record.id).copied().unwrap_or(0))),
                    "removed": d.record.removed_ns.is_some(),
                    "last_change": self.changes.get(&d.record.id),
                })
            })
            .collect();
        let same = |v: &serde_json::Value| {
            let strip = |v: &serde_json::Value| {
                let mut v = v.clone();
                for d in v.as_array_mut().into_iter().flatten() {
                    d["last_seen_ns"] = serde_json::Value::Null;
                }
                v
            };
            strip(v) == strip(&serde_json::Value::from(devices.clone()))
        };
        if let Some((prev, at)) = &self.last {
            if same(prev) && at.elapsed() < Duration::from_secs(60) {
                return;
            }
        }
        let out = serde_json::json!({
            "as_of_ns": replicator_now(),
            "devices": devices,
        });
        let path = meta.join("devices.json");
        let tmp = meta.join("devices.json.tmp");
        let written = serde_json::to_vec_pretty(&out)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        match written {
            Ok(()) => self.last = Some((serde_json::Value::from(devices), Instant::now())),
            Err(e) => debug!("cannot write {}: {e}", path.display()),
        }
    }
}

/// For `journal status`: the devices as the mount last saw them, and the conflicts noted.
pub fn status_snapshot(meta: &Path) -> Option<serde_json::Value> {
    let raw = std::fs::read(meta.join("devices.json")).ok()?;
    let mut v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    v["conflicts"] = replicator::pull::conflict_count(meta).into();
    Some(v)
}
