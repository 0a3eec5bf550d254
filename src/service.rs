//! Plug in and it mounts. Two parts, so that a desktop user needs no root:
//!
//! - the user part, a systemd user unit running `backpocket service run`: it watches the mount
//!   table and mounts every pocket found on a newly mounted drive (by the desktop's automounter,
//!   or by the system part) at a stable place, `~/Pocket`; when the drive goes, it unmounts it;
//! - the system part (`--system`, root), for machines without a desktop automounter: a udev
//!   rule that, when a removable drive with a filesystem appears, starts
//!   `backpocket-attach@DEV.service`, which runs `backpocket service attach /dev/DEV`: mount
//!   the filesystem under /media/backpocket/ if it holds a pocket, leave the drive alone if not.
//!   When the drive goes away the unit stops and `service detach` lets go of it.
//!
//! Every file written carries a marker line; uninstall removes only files that carry it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tracing::{info, warn};

use crate::eject::REMOVABLE_PLACES;

const MARKER: &str = "# Written by `backpocket service install`";
const USER_UNIT: &str = "backpocket.service";
const ATTACH_UNIT: &str = "backpocket-attach@.service";
const RULE: &str = "90-backpocket.rules";
/// Where `service attach` mounts drives.
pub const ATTACH_DIR: &str = "/media/backpocket";

/// Where the files go: for an administrator's install (`/etc`, the user's config), or inside a
/// package (`/usr/lib`, where a distribution's packages put rules and units).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Admin,
    Package,
}

/// The files of each part, under `root` (`/` unless staging a package).
struct Files {
    user_unit: PathBuf,
    attach_unit: PathBuf,
    rule: PathBuf,
}

fn files(layout: Layout, root: &Path) -> Result<Files> {
    let under = |p: &str| root.join(p.trim_start_matches('/'));
    Ok(match layout {
        Layout::Admin => Files {
            user_unit: config_home()?.join("systemd/user").join(USER_UNIT),
            attach_unit: under("/etc/systemd/system").join(ATTACH_UNIT),
            rule: under("/etc/udev/rules.d").join(RULE),
        },
        Layout::Package => Files {
            user_unit: under("/usr/lib/systemd/user").join(USER_UNIT),
            attach_unit: under("/usr/lib/systemd/system").join(ATTACH_UNIT),
            rule: under("/usr/lib/udev/rules.d").join(RULE),
        },
    })
}

fn config_home() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("HOME is not set: cannot tell where your systemd user units live")?;
    Ok(PathBuf::from(home).join(".config"))
}

/// A word of a unit's command line, quoted for systemd (and `%` escaped).
fn unit_word(s: &str) -> String {
    let escaped = s.replace('%', "%%");
    if escaped
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@=,".contains(c))
    {
        escaped
    } else {
        format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// The user unit: the watcher. `mountpoint` None means `~/Pocket` (`%h` to systemd).
pub fn user_unit_text(bin: &str, mountpoint: Option<&Path>) -> String {
    let mp = match mountpoint {
        Some(m) => unit_word(&m.to_string_lossy()),
        None => "%h/Pocket".into(),
    };
    format!(
        "{MARKER}; `backpocket service uninstall` removes it.
[Unit]
Description=backpocket: mount pockets on drives as they are plugged in
Documentation=man:backpocket-service(1)

[Service]
ExecStart={bin} service run --mountpoint {mp}
Restart=on-failure
RestartSec=5
# On stop every pocket it mounted is unmounted cleanly, its journal closed.
KillMode=control-group
TimeoutStopSec=90

[Install]
WantedBy=default.target
",
        bin = unit_word(bin)
    )
}

/// The system unit `service attach` runs in, one instance per device, bound to it: when the
/// drive goes away, systemd stops the unit and `service detach` lets go of it.
pub fn attach_unit_text(bin: &str) -> String {
    format!(
        "{MARKER} --system; `backpocket service uninstall --system` removes it.
[Unit]
Description=backpocket: look for a pocket on /dev/%I
Documentation=man:backpocket-service(1)
BindsTo=dev-%i.device
After=dev-%i.device

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={bin} service attach /dev/%I
ExecStop={bin} service detach /dev/%I
TimeoutStopSec=120
",
        bin = unit_word(bin)
    )
}

/// The udev rule: removable drives (USB, SD, anything the kernel calls removable) with a
/// filesystem start the attach unit. System disks never match.
pub fn rule_text() -> String {
    format!(
        r#"{MARKER} --system; `backpocket service uninstall --system` removes it.
# A removable drive with a filesystem appeared: let backpocket look for a pocket on it.
ACTION!="add", GOTO="backpocket_end"
SUBSYSTEM!="block", GOTO="backpocket_end"
ENV{{ID_FS_USAGE}}!="filesystem", GOTO="backpocket_end"
ENV{{UDISKS_IGNORE}}=="1", GOTO="backpocket_end"
ENV{{ID_BUS}}=="usb", GOTO="backpocket_attach"
ENV{{ID_DRIVE_FLASH_SD}}=="1", GOTO="backpocket_attach"
ATTRS{{removable}}=="1", GOTO="backpocket_attach"
GOTO="backpocket_end"
LABEL="backpocket_attach"
TAG+="systemd", ENV{{SYSTEMD_WANTS}}+="backpocket-attach@%k.service"
LABEL="backpocket_end"
"#
    )
}

/// What `service install` was asked.
#[derive(Debug)]
pub struct InstallOptions {
    pub system: bool,
    pub mountpoint: Option<PathBuf>,
    /// Stage the files under this folder instead of `/` (packaging, tests).
    pub root: Option<PathBuf>,
    pub layout: Layout,
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

fn write_ours(path: &Path, text: &str, wrote: &mut Vec<PathBuf>) -> Result<()> {
    if let Ok(old) = std::fs::read_to_string(path) {
        if !old.contains(MARKER) {
            bail!(
                "{} exists and was not written by backpocket; move it away first",
                path.display()
            );
        }
    }
    let dir = path.parent().context("a file has a folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::pocket::write_durably(path, text.as_bytes())?;
    wrote.push(path.to_owned());
    Ok(())
}

/// Runs a command, saying what happened: `Ok(false)` when the tool is not there.
fn try_run(program: &str, args: &[&str]) -> Result<bool, String> {
    match std::process::Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => Ok(true),
        Ok(o) => Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("cannot run {program}: {e}")),
    }
}

/// Whether this session has a systemd user manager to talk to.
fn user_manager() -> bool {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(|d| Path::new(&d).join("systemd/private").exists())
        .unwrap_or(false)
}

fn system_manager() -> bool {
    Path::new("/run/systemd/system").exists()
}

pub fn install(opts: &InstallOptions) -> Result<()> {
    let root = opts.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let staged = opts.root.is_some();
    let f = files(opts.layout, &root)?;
    let bin = match &opts.bin {
        Some(b) => b.to_string_lossy().into_owned(),
        None => this_binary()?,
    };
    if opts.system && !staged && !rustix::process::geteuid().is_root() {
        bail!("the system part (--system: a udev rule and a system unit) needs root: run it with sudo; the user part needs no root (drop --system)");
    }
    let mut wrote = Vec::new();
    let mut next = Vec::new();
    // A package stages both parts; an administrator installs one or the other.
    if opts.layout == Layout::Package || !opts.system {
        write_ours(
            &f.user_unit,
            &user_unit_text(&bin, opts.mountpoint.as_deref()),
            &mut wrote,
        )?;
    }
    if opts.system {
        write_ours(&f.attach_unit, &attach_unit_text(&bin), &mut wrote)?;
        write_ours(&f.rule, &rule_text(), &mut wrote)?;
    }
    for w in &wrote {
        println!("wrote {}", w.display());
    }
    if staged {
        return Ok(());
    }
    if opts.system {
        if system_manager() {
            if let Err(e) = try_run("systemctl", &["daemon-reload"]) {
                next.push(e);
            }
        }
        match try_run("udevadm", &["control", "--reload"]) {
            Ok(true) => println!("udev rules reloaded: removable drives with a pocket are mounted under {ATTACH_DIR}/ as they are plugged in"),
            Ok(false) => next.push("udevadm is not installed: the rule takes effect once udev runs".into()),
            Err(e) => next.push(format!("{e} (is udevd running? the rule takes effect when it starts)")),
        }
    }
    if !opts.system {
        if user_manager() {
            match try_run("systemctl", &["--user", "daemon-reload"])
                .and_then(|_| try_run("systemctl", &["--user", "enable", "--now", USER_UNIT]))
            {
                Ok(_) => println!(
                    "started {USER_UNIT}: pockets on drives you plug in are mounted at {}",
                    opts.mountpoint
                        .as_deref()
                        .map_or("~/Pocket".into(), |m| m.display().to_string())
                ),
                Err(e) => next.push(e),
            }
            next.push(format!(
                "to have it run without logging in, once: loginctl enable-linger {}",
                std::env::var("USER").unwrap_or_else(|_| "$USER".into())
            ));
        } else {
            next.push(format!(
                "systemd's user manager is not running in this session: start the watcher with \
                 `systemctl --user enable --now {USER_UNIT}` once it is, or run \
                 `backpocket service run` from your session's start-up"
            ));
        }
    }
    for n in next {
        println!("note: {n}");
    }
    Ok(())
}

pub fn uninstall(system: bool, root: Option<&Path>) -> Result<()> {
    let staged = root.is_some();
    let root = root
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("/"));
    let f = files(Layout::Admin, &root)?;
    if system && !staged && !rustix::process::geteuid().is_root() {
        bail!("removing the system part (--system) needs root: run it with sudo");
    }
    if !staged && user_manager() && f.user_unit.exists() {
        if let Err(e) = try_run("systemctl", &["--user", "disable", "--now", USER_UNIT]) {
            println!("note: {e}");
        }
    }
    let mut paths = vec![f.user_unit.clone()];
    if system {
        paths.push(f.attach_unit.clone());
        paths.push(f.rule.clone());
    }
    let mut removed = 0;
    for p in paths {
        match std::fs::read_to_string(&p) {
            Ok(text) if text.contains(MARKER) => {
                std::fs::remove_file(&p)
                    .with_context(|| format!("cannot remove {}", p.display()))?;
                println!("removed {}", p.display());
                removed += 1;
            }
            Ok(_) => println!("left {} alone: backpocket did not write it", p.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }
    if system && !staged {
        if system_manager() {
            let _ = try_run("systemctl", &["daemon-reload"]);
        }
        let _ = try_run("udevadm", &["control", "--reload"]);
    }
    if removed == 0 {
        println!(
            "nothing to remove: the service was not installed{}",
            if system {
                ""
            } else {
                " for this user (the system part needs --system)"
            }
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

/// Waits for the mount table to change, or `timeout`: the kernel flags /proc/self/mountinfo
/// on every mount and unmount.
struct MountWatch(Option<std::fs::File>);

impl MountWatch {
    fn open() -> MountWatch {
        MountWatch(std::fs::File::open("/proc/self/mountinfo").ok())
    }

    fn wait(&mut self, timeout: Duration) {
        use std::io::{Read, Seek};
        let Some(f) = self.0.as_mut() else {
            std::thread::sleep(timeout);
            return;
        };
        let mut fds = [rustix::event::PollFd::new(f, rustix::event::PollFlags::PRI)];
        let ts = rustix::event::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: timeout.subsec_nanos() as i64,
        };
        let _ = rustix::event::poll(&mut fds, Some(&ts));
        // Reading to the end re-arms the notification.
        let _ = f.rewind();
        let _ = std::io::copy(&mut f.by_ref(), &mut std::io::sink());
    }
}

/// One pocket the watcher mounted.
struct Mounted {
    pocket: PathBuf,
    at: PathBuf,
}

/// `service run`: the watcher the user unit runs.
pub fn run(mountpoint: &Path, extra_places: &[PathBuf]) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])?;
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                stop.store(true, Ordering::Relaxed);
            }
        });
    }
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
    while !stop.load(Ordering::Relaxed) {
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
    std::fs::create_dir_all(&at).with_context(|| format!("cannot create {}", at.display()))?;
    let out = std::process::Command::new("mount")
        .args(["-o", "nosuid,nodev"])
        .arg(dev)
        .arg(&at)
        .output()
        .context("cannot run mount (util-linux)")?;
    if !out.status.success() {
        let _ = std::fs::remove_dir(&at);
        bail!(
            "cannot mount {}: {}",
            dev.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
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
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match rustix::mount::unmount(&fs.mountpoint, rustix::mount::UnmountFlags::empty()) {
                Ok(()) => break,
                Err(rustix::io::Errno::BUSY) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => {
                    // Pulled out already, or still in use: let go of it anyway.
                    rustix::mount::unmount(&fs.mountpoint, rustix::mount::UnmountFlags::DETACH)
                        .map_err(|d| {
                            anyhow!("cannot unmount {}: {e}; {d}", fs.mountpoint.display())
                        })?;
                    break;
                }
            }
        }
        forget_attached(&fs.mountpoint);
        println!(
            "unmounted {} from {}",
            dev.display(),
            fs.mountpoint.display()
        );
    }
    Ok(())
}

/// Removes the folder `service attach` made for a drive, once the drive is unmounted.
pub fn forget_attached(mountpoint: &Path) {
    if mountpoint.starts_with(ATTACH_DIR) && mountpoint != Path::new(ATTACH_DIR) {
        let _ = std::fs::remove_dir(mountpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_words_are_quoted_for_systemd() {
        assert_eq!(unit_word("/usr/bin/backpocket"), "/usr/bin/backpocket");
        assert_eq!(unit_word("/home/a b/100%"), "\"/home/a b/100%%\"");
        assert_eq!(unit_word("say \"hi\""), "\"say \\\"hi\\\"\"");
    }

    #[test]
    fn units_run_this_binary() {
        let u = user_unit_text("/opt/bp/backpocket", None);
        assert!(u.contains("ExecStart=/opt/bp/backpocket service run --mountpoint %h/Pocket\n"));
        assert!(u.contains("WantedBy=default.target"));
        let a = attach_unit_text("/usr/bin/backpocket");
        assert!(a.contains("ExecStart=/usr/bin/backpocket service attach /dev/%I\n"));
        assert!(a.contains("ExecStop=/usr/bin/backpocket service detach /dev/%I\n"));
        assert!(a.contains("BindsTo=dev-%i.device"));
        let r = rule_text();
        assert!(r.contains(r#"ENV{SYSTEMD_WANTS}+="backpocket-attach@%k.service""#));
        // Every GOTO has its label.
        for label in ["backpocket_end", "backpocket_attach"] {
            assert!(r.contains(&format!("LABEL=\"{label}\"")));
        }
        assert!(r.contains(MARKER) && u.contains(MARKER) && a.contains(MARKER));
    }
}
