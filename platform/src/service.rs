//! Service installation and removable-drive events on Linux: the systemd units and udev rule
//! that make a plugged-in drive mount itself, written and removed exactly; the managers told;
//! mount-table changes waited for; drives mounted and let go of.
//!
//! Two parts, so that a desktop user needs no root: a user unit running the watcher
//! (`backpocket service run`), and for machines without a desktop automounter a udev rule
//! starting `backpocket-attach@DEV.service` (`service attach /dev/DEV`), bound to the device
//! so that its stop (`service detach`) runs when the drive goes. Every file written carries
//! a marker line; removal touches only files that carry it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Error, Result};

const MARKER: &str = "# Written by `backpocket service install`";
pub const USER_UNIT: &str = "backpocket.service";
const ATTACH_UNIT: &str = "backpocket-attach@.service";
const RULE: &str = "90-backpocket.rules";
/// Where `service attach` mounts drives.
pub const ATTACH_DIR: &str = "/media/backpocket";

/// Unmounts a removable drive's filesystem (mounted at `mountpoint` from the device `source`)
/// so that it can be pulled: as root directly, else through udisks, as a desktop's file
/// manager would. The error says what the system said.
pub fn eject_drive(mountpoint: &Path, source: &Path) -> std::result::Result<(), String> {
    if rustix::process::geteuid().is_root() {
        rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::empty())
            .map_err(|e| e.to_string())
    } else {
        std::process::Command::new("udisksctl")
            .args(["unmount", "--no-user-interaction", "--block-device"])
            .arg(source)
            .output()
            .map_err(|e| format!("udisksctl: {e}"))
            .and_then(|o| {
                if o.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&o.stderr).trim().to_owned())
                }
            })
    }
}

/// Removes the folder `service attach` made for a drive, once the drive is unmounted.
pub fn forget_attached(mountpoint: &Path) {
    if mountpoint.starts_with(ATTACH_DIR) && mountpoint != Path::new(ATTACH_DIR) {
        let _ = std::fs::remove_dir(mountpoint);
    }
}

/// Where drives are mounted when plugged in (udisks, `service attach`, by hand): the watcher
/// looks for pockets there, and eject lets go of a drive there, never of a system disk.
pub const REMOVABLE_PLACES: [&str; 3] = ["/media/", "/run/media/", "/mnt/"];

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

/// Where the files of `layout` go under `root`.
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
        .ok_or_else(|| {
            Error::io(
                "cannot tell where your systemd user units live",
                std::io::Error::other("HOME is not set"),
            )
        })?;
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
fn user_unit_text(bin: &str, mountpoint: Option<&Path>) -> String {
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
fn attach_unit_text(bin: &str) -> String {
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
fn rule_text() -> String {
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

/// Writes the files of the user part (`system` false) or the system part, or both for a
/// package. Refuses to replace a file that backpocket did not write.
pub fn install_files(
    layout: Layout,
    root: &Path,
    bin: &str,
    mountpoint: Option<&Path>,
    system: bool,
) -> Result<Vec<PathBuf>> {
    let f = files(layout, root)?;
    let mut plan = Vec::new();
    if layout == Layout::Package || !system {
        plan.push((f.user_unit.clone(), user_unit_text(bin, mountpoint)));
    }
    if layout == Layout::Package || system {
        plan.push((f.attach_unit.clone(), attach_unit_text(bin)));
        plan.push((f.rule.clone(), rule_text()));
    }
    // All checked before any is written: a refusal leaves nothing half-installed.
    for (path, _) in &plan {
        if let Ok(old) = std::fs::read_to_string(path) {
            if !old.contains(MARKER) {
                return Err(Error::NotOurs(path.clone()));
            }
        }
    }
    let mut wrote = Vec::new();
    for (path, text) in plan {
        write_durably(&path, text.as_bytes())?;
        wrote.push(path);
    }
    Ok(wrote)
}

/// What removal did with one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removal {
    Removed(PathBuf),
    /// There, but not written by backpocket: left alone.
    NotOurs(PathBuf),
}

/// Removes the files of the user part or the system part that backpocket wrote.
pub fn remove_files(root: &Path, system: bool) -> Result<Vec<Removal>> {
    let f = files(Layout::Admin, root)?;
    let paths = if system {
        vec![f.attach_unit, f.rule]
    } else {
        vec![f.user_unit]
    };
    let mut out = Vec::new();
    for p in paths {
        match std::fs::read_to_string(&p) {
            Ok(text) if text.contains(MARKER) => {
                std::fs::remove_file(&p)
                    .map_err(|e| Error::io(format!("cannot remove {}", p.display()), e))?;
                out.push(Removal::Removed(p));
            }
            Ok(_) => out.push(Removal::NotOurs(p)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("cannot read {}", p.display()), e)),
        }
    }
    Ok(out)
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::write_durably(path, bytes)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

/// Runs a command: `Ok(false)` when the tool is not installed, `Err` saying what it said
/// when it failed.
pub fn try_run(program: &str, args: &[&str]) -> std::result::Result<bool, String> {
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
pub fn user_manager() -> bool {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(|d| Path::new(&d).join("systemd/private").exists())
        .unwrap_or(false)
}

/// Whether systemd runs this machine.
pub fn system_manager() -> bool {
    Path::new("/run/systemd/system").exists()
}

/// Waits for the mount table to change, or a timeout: the kernel flags /proc/self/mountinfo
/// on every mount and unmount.
#[derive(Debug)]
pub struct MountWatch(Option<std::fs::File>);

impl MountWatch {
    pub fn open() -> MountWatch {
        MountWatch(std::fs::File::open("/proc/self/mountinfo").ok())
    }

    pub fn wait(&mut self, timeout: Duration) {
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
        let _ = std::io::copy(&mut Read::by_ref(f), &mut std::io::sink());
    }
}

/// Mounts a drive's filesystem (any type the kernel and libblkid know) without set-uid
/// programs or device files honoured.
pub fn mount_drive(dev: &Path, at: &Path) -> Result<()> {
    std::fs::create_dir_all(at)
        .map_err(|e| Error::io(format!("cannot create {}", at.display()), e))?;
    let out = std::process::Command::new("mount")
        .args(["-o", "nosuid,nodev"])
        .arg(dev)
        .arg(at)
        .output()
        .map_err(|e| Error::io("cannot run mount (install util-linux)", e))?;
    if out.status.success() {
        return Ok(());
    }
    let _ = std::fs::remove_dir(at);
    Err(Error::io(
        format!("cannot mount {}", dev.display()),
        std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
    ))
}

/// Lets go of a drive's filesystem: unmounted once it is no longer busy (a few seconds), else
/// detached (the drive was pulled, or something still holds it).
pub fn release_drive(mountpoint: &Path) -> Result<()> {
    use rustix::mount::{unmount, UnmountFlags};
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match unmount(mountpoint, UnmountFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::BUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(_) => {
                return unmount(mountpoint, UnmountFlags::DETACH).map_err(|e| {
                    Error::io(format!("cannot unmount {}", mountpoint.display()), e.into())
                })
            }
        }
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
