//! `backpocket service`: the commands, and the watcher's decisions (which pockets to mount,
//! where, and when to let go). The units, the udev rule and the drive events themselves are
//! in `platform::service`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tracing::{info, warn};

use platform::service::{self as svc, MountWatch, ATTACH_DIR, REMOVABLE_PLACES};

/// What `service install` was asked.
#[derive(Debug)]
pub struct InstallOptions {
    pub system: bool,
    pub mountpoint: Option<PathBuf>,
    /// Stage the files under this folder instead of `/` (packaging, tests).
    pub root: Option<PathBuf>,
    pub layout: svc::Layout,
    /// The binary the units run (default: this one).
    pub bin: Option<PathBuf>,
}

fn this_binary() -> Result<String> {
    let exe = std::env::current_exe().context("cannot tell where this backpocket binary is")?;
    Ok(exe
        .canonicalize()
        .unwrap_or(exe)
        .to_string_lossy()
        .into_owned())
}

pub fn install(opts: &InstallOptions) -> Result<()> {
    let root = opts.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let staged = opts.root.is_some();
    let bin = match &opts.bin {
        Some(b) => b.to_string_lossy().into_owned(),
        None => this_binary()?,
    };
    if opts.system && !staged && !rustix::process::geteuid().is_root() {
        bail!("the system part (--system: a udev rule and a system unit) needs root: run it with sudo; the user part needs no root (drop --system)");
    }
    let wrote = svc::install_files(
        opts.layout,
        &root,
        &bin,
        opts.mountpoint.as_deref(),
        opts.system,
    )?;
    for w in &wrote {
        println!("wrote {}", w.display());
    }
    if staged {
        return Ok(());
    }
    let mut notes = Vec::new();
    if opts.system {
        if svc::system_manager() {
            if let Err(e) = svc::try_run("systemctl", &["daemon-reload"]) {
                notes.push(e);
            }
        }
        match svc::try_run("udevadm", &["control", "--reload"]) {
            Ok(true) => println!(
                "udev rules reloaded: removable drives holding a pocket are mounted under {}/ as they are plugged in",
                svc::ATTACH_DIR
            ),
            Ok(false) => notes.push("udevadm is not installed: the rule takes effect once udev runs".into()),
            Err(e) => notes.push(format!("{e} (is udevd running? the rule takes effect when it starts)")),
        }
    } else if svc::user_manager() {
        match svc::try_run("systemctl", &["--user", "daemon-reload"])
            .and_then(|_| svc::try_run("systemctl", &["--user", "enable", "--now", svc::USER_UNIT]))
        {
            Ok(_) => println!(
                "started {}: pockets on drives you plug in are mounted at {}",
                svc::USER_UNIT,
                opts.mountpoint
                    .as_deref()
                    .map_or("~/Pocket".into(), |m| m.display().to_string())
            ),
            Err(e) => notes.push(e),
        }
        notes.push(format!(
            "to have it run without logging in, once: loginctl enable-linger {}",
            std::env::var("USER").unwrap_or_else(|_| "$USER".into())
        ));
    } else {
        notes.push(format!(
            "systemd's user manager is not running in this session: start the watcher with \
             `systemctl --user enable --now {}` once it is, or run `backpocket service run` \
             from your session's start-up",
            svc::USER_UNIT
        ));
    }
    for n in notes {
        println!("note: {n}");
    }
    Ok(())
}

pub fn uninstall(system: bool, root: Option<&Path>) -> Result<()> {
    let staged = root.is_some();
    let root = root
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("/"));
    if system && !staged && !rustix::process::geteuid().is_root() {
        bail!("removing the system part (--system) needs root: run it with sudo");
    }
    if !system && !staged && svc::user_manager() {
        if let Err(e) = svc::try_run("systemctl", &["--user", "disable", "--now", svc::USER_UNIT]) {
            println!("note: {e}");
        }
    }
    let done = svc::remove_files(&root, system)?;
    for d in &done {
        match d {
            svc::Removal::Removed(p) => println!("removed {}", p.display()),
            svc::Removal::NotOurs(p) => {
                println!("left {} alone: backpocket did not write it", p.display())
            }
        }
    }
    if system && !staged {
        if svc::system_manager() {
            let _ = svc::try_run("systemctl", &["daemon-reload"]);
        }
        let _ = svc::try_run("udevadm", &["control", "--reload"]);
    }
    if done.is_empty() {
        println!(
            "nothing to remove: the {} part was not installed",
            if system { "system" } else { "user" }
        );
    }
    Ok(())
}

/// Pockets on a mounted filesystem: at its top, or one folder down.
fn pockets_on(mountpoint: &Path) -> Vec<PathBuf> {
    let is_pocket = |d: &Path| d.join(crate::pocket::DIR).join("config.toml").is_file();
    let mut out = Vec::new();
    if is_pocket(mountpoint) {
        out.push(mountpoint.to_owned());
    }
    if let Ok(entries) = std::fs::read_dir(mountpoint) {
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .filter(|d| is_pocket(d))
            .collect();
        found.sort();
        out.extend(found);
    }
    out
}

/// One pocket the watcher mounted.
struct Mounted {
    pocket: PathBuf,
    at: PathBuf,
}

/// `service run`: the watcher the user unit runs.
pub fn run(mountpoint: &Path, extra_places: &[PathBuf]) -> Result<()> {
    let stop = crate::StopOnSignal::new(&[
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])?;
    // Taken now: after an upgrade replaces the binary, this path names the new one (the
    // running one's /proc/self/exe then names a deleted file).
    let exe = std::env::current_exe().context("cannot tell where this backpocket binary is")?;
    let places: Vec<PathBuf> = REMOVABLE_PLACES
        .iter()
        .map(PathBuf::from)
        .chain(extra_places.iter().cloned())
        .collect();
    info!(
        "watching for pockets on drives mounted under {}; the first is mounted at {}",
        places
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        mountpoint.display()
    );
    // Each appearance of a drive (a mount id) is handled once: a pocket the user ejected or
    // unmounted stays unmounted until the drive is plugged in again.
    let mut seen: HashMap<u64, Vec<Mounted>> = HashMap::new();
    let mut watch = MountWatch::open();
    while !stop.stopped() {
        let table = match platform::mounts() {
            Ok(t) => t,
            Err(e) => {
                warn!("{e}");
                watch.wait(Duration::from_secs(5));
                continue;
            }
        };
        // Drives that went away: let go of their pockets' mounts.
        let gone: Vec<u64> = seen
            .keys()
            .filter(|id| !table.iter().any(|m| m.id == **id))
            .copied()
            .collect();
        for id in gone {
            for m in seen.remove(&id).unwrap_or_default() {
                let still = table
                    .iter()
                    .any(|t| t.fstype == platform::FSTYPE && t.mountpoint == m.at);
                if still {
                    info!(
                        "the drive holding {} went away; unmounting {}",
                        m.pocket.display(),
                        m.at.display()
                    );
                    if let Err(e) = platform::unmount(&m.at, true) {
                        warn!("cannot unmount {}: {e}", m.at.display());
                    }
                }
            }
        }
        for fs in &table {
            if fs.fstype == platform::FSTYPE || seen.contains_key(&fs.id) {
                continue;
            }
            if !places
                .iter()
                .any(|p| fs.mountpoint.starts_with(p) && fs.mountpoint != *p)
            {
                continue;
            }
            let mut mounted = Vec::new();
            for pocket in pockets_on(&fs.mountpoint) {
                match mount_pocket(&exe, &pocket, mountpoint, &table) {
                    Ok(Some(at)) => mounted.push(Mounted { pocket, at }),
                    Ok(None) => {}
                    // Nobody is at a terminal: say it where the user will see it.
                    Err(e) => {
                        crate::warn::warn(
                            &format!("cannot mount the pocket {}", pocket.display()),
                            &format!("{e:#}"),
                            true,
                        );
                    }
                }
            }
            seen.insert(fs.id, mounted);
        }
        watch.wait(Duration::from_secs(5));
    }
    // Stopped (logout, `systemctl --user stop`): unmount what it mounted, journals closed.
    let table = platform::mounts().unwrap_or_default();
    for m in seen.into_values().flatten() {
        if table
            .iter()
            .any(|t| t.fstype == platform::FSTYPE && t.mountpoint == m.at)
        {
            match crate::eject::unmount_and_wait(&m.at, &m.pocket, false, Duration::from_secs(60)) {
                Ok(_) => info!("unmounted {}", m.at.display()),
                Err(e) => {
                    warn!("{e:#}; detaching it");
                    let _ = platform::unmount(&m.at, true);
                }
            }
        }
    }
    Ok(())
}

/// Mounts `pocket` at `preferred`, or beside it when that is taken by another pocket.
/// None when the pocket is mounted already (by hand, or by another watcher).
fn mount_pocket(
    exe: &Path,
    pocket: &Path,
    preferred: &Path,
    table: &[platform::MountEntry],
) -> Result<Option<PathBuf>> {
    if table
        .iter()
        .any(|m| m.fstype == platform::FSTYPE && m.source == pocket)
    {
        return Ok(None);
    }
    let taken = |p: &Path| table.iter().any(|m| m.mountpoint == p);
    let at = if !taken(preferred) {
        preferred.to_owned()
    } else {
        let name = pocket
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "drive".into());
        let mut alt = preferred.as_os_str().to_owned();
        alt.push(format!("-{name}"));
        PathBuf::from(alt)
    };
    if taken(&at) {
        bail!("{} is taken by another mount", at.display());
    }
    std::fs::create_dir_all(&at).with_context(|| format!("cannot create {}", at.display()))?;
    let out = std::process::Command::new(exe)
        .arg("mount")
        .arg(pocket)
        .arg(&at)
        .arg("--daemon")
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot start backpocket mount")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    info!(
        "mounted the pocket {} at {}",
        pocket.display(),
        at.display()
    );
    Ok(Some(at))
}

/// `service attach DEV`: what the udev rule's unit runs when a drive appears.
pub fn attach(dev: &Path) -> Result<()> {
    let table = platform::mounts()?;
    if let Some(m) = table.iter().find(|m| m.source == dev) {
        println!(
            "{} is mounted already at {}; pockets on it are mounted by the watcher",
            dev.display(),
            m.mountpoint.display()
        );
        return Ok(());
    }
    let name = dev
        .file_name()
        .context("give a device, such as /dev/sdb1")?
        .to_string_lossy()
        .into_owned();
    let at = Path::new(ATTACH_DIR).join(&name);
    svc::mount_drive(dev, &at)?;
    let found = pockets_on(&at);
    if found.is_empty() {
        let _ = rustix::mount::unmount(&at, rustix::mount::UnmountFlags::empty());
        let _ = std::fs::remove_dir(&at);
        println!("no pocket on {}; left it alone", dev.display());
        return Ok(());
    }
    println!(
        "mounted {} at {}: it holds the pocket{} {}",
        dev.display(),
        at.display(),
        if found.len() == 1 { "" } else { "s" },
        found
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// `service detach DEV`: the drive is going (or gone). Unmounts the pockets on it (their
/// daemons finish serving open files) and its filesystem.
pub fn detach(dev: &Path) -> Result<()> {
    let table = platform::mounts()?;
    let filesystems: Vec<&platform::MountEntry> =
        table.iter().filter(|m| m.source == dev).collect();
    if filesystems.is_empty() {
        println!("{} is not mounted; nothing to do", dev.display());
        return Ok(());
    }
    for fs in filesystems {
        for m in table
            .iter()
            .filter(|m| m.fstype == platform::FSTYPE && m.source.starts_with(&fs.mountpoint))
        {
            match crate::eject::unmount_and_wait(
                &m.mountpoint,
                &m.source,
                true,
                Duration::from_secs(10),
            ) {
                Ok(_) => println!("unmounted the pocket at {}", m.mountpoint.display()),
                Err(e) => println!("{e:#}"),
            }
        }
        svc::release_drive(&fs.mountpoint)?;
        svc::forget_attached(&fs.mountpoint);
        println!(
            "unmounted {} from {}",
            dev.display(),
            fs.mountpoint.display()
        );
    }
    Ok(())
}
