//! `backpocket unmount` and `backpocket eject`: the mount ends with its journal closed; eject
//! first lets reachable destinations take the last changes, then flushes the drive, lets go of
//! its filesystem, and says in one line what is still only on the drive.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde_json::json;

use crate::exit::{ExitCode, Failure};
use crate::pocket::Pocket;
use crate::report::{bytes, DestLine, Protection};

/// The backpocket mount at `path`, or of the pocket at `path`.
pub fn find_mount(path: &Path) -> Result<platform::MountEntry> {
    let abs = path
        .canonicalize()
        .or_else(|_| std::path::absolute(path))
        .with_context(|| format!("cannot find {}", path.display()))?;
    let table = platform::mounts()?;
    table
        .iter()
        .rev()
        .find(|m| m.fstype == platform::FSTYPE && (m.mountpoint == abs || m.source == abs))
        .cloned()
        .ok_or_else(|| platform::Error::NotMounted(abs).into())
}

fn busy(mp: &Path, open: &[platform::OpenUnder]) -> anyhow::Error {
    let mut what = String::new();
    for o in open.iter().take(5) {
        what.push_str(&format!(
            "\n  process {} ({}) uses {}",
            o.pid,
            o.command,
            o.path.display()
        ));
    }
    if open.len() > 5 {
        what.push_str(&format!("\n  and {} more", open.len() - 5));
    }
    Failure::new(
        ExitCode::Busy,
        anyhow!(
            "{} is in use: files or folders in it are open{}\nclose them (or leave the folder) and \
             try again{}",
            mp.display(),
            if what.is_empty() {
                format!(" (see `fuser -vm {}`)", mp.display())
            } else {
                what
            },
            if open.is_empty() {
                ""
            } else {
                "; `--force` unmounts now and lets them finish what they write first"
            }
        ),
    )
    .into()
}

/// Unmounts and waits (up to `wait`) until the daemon has closed the journal. `lazy` detaches
/// the mount while files are open: the daemon serves them until they are closed, so no write
/// is cut in half. Returns the pocket, or None when its drive cannot be read any more.
pub fn unmount_and_wait(
    mp: &Path,
    source: &Path,
    lazy: bool,
    wait: Duration,
) -> Result<Option<Pocket>> {
    // Busy with nothing open is a look in passing (a `stat` of the mountpoint, a shell's
    // completion): it is over in a moment, so the unmount is tried again for a while. Busy
    // with only the daemon's own files open is its pull writing or reading another device's
    // change: that ends by itself too, so it is waited for (up to `wait`).
    let started = Instant::now();
    loop {
        match platform::unmount(mp, lazy) {
            Ok(()) => break,
            Err(e) => {
                let is_busy = matches!(&e, platform::Error::Io { source, .. }
                    if source.raw_os_error() == Some(libc::EBUSY) || source.to_string().contains("busy"));
                if !is_busy {
                    return Err(e.into());
                }
                let all = platform::open_under(mp);
                let open = not_the_daemons(source, all.clone());
                let daemon_only = open.is_empty() && !all.is_empty();
                let patience = if daemon_only {
                    wait
                } else {
                    Duration::from_secs(3)
                };
                if daemon_only && started.elapsed() > patience {
                    return Err(Failure::new(
                        ExitCode::Busy,
                        anyhow!(
                            "{} is still taking another device's change ({}); try again when it \
                             is done",
                            mp.display(),
                            all[0].path.display()
                        ),
                    )
                    .into());
                }
                if !open.is_empty() || started.elapsed() > patience {
                    return Err(busy(mp, &all));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let Ok(p) = Pocket::at(source) else {
        return Ok(None);
    };
    // The daemon lets go of the pocket's lock last, once the journal is closed.
    let deadline = Instant::now() + wait;
    loop {
        match platform::PocketLock::acquire(&p.lock_path(), &p.root) {
            Ok(_) => return Ok(Some(p)),
            Err(platform::Error::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            // The drive went away (pulled, or its FUSE driver gone: ENOTCONN): the daemon
            // cannot close its journal there; the next mount scans and records the rest.
            Err(platform::Error::Io { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(
                        libc::EIO | libc::ENOTCONN | libc::ENODEV | libc::ENXIO | libc::ENOENT
                    )
                ) =>
            {
                return Ok(None)
            }
            Err(platform::Error::Locked { pid, .. }) => {
                return Err(Failure::new(
                    ExitCode::Busy,
                    anyhow!(
                        "unmounted {}, but its daemon (process {pid}) still serves files that \
                         were open; the drive is in use until they are closed: do not unplug it yet",
                        mp.display()
                    ),
                )
                .into())
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What is open under the mount but by others than the pocket's own daemon (the holder of its
/// lock) and its pull (a child of it), which opens files in the mount for a moment to take
/// other devices' changes.
fn not_the_daemons(pocket: &Path, open: Vec<platform::OpenUnder>) -> Vec<platform::OpenUnder> {
    let daemon: Option<u32> = Pocket::at(pocket).ok().and_then(|p| {
        match platform::PocketLock::acquire(&p.lock_path(), &p.root) {
            Err(platform::Error::Locked { pid, .. }) => pid.parse().ok(),
            _ => None,
        }
    });
    let Some(daemon) = daemon else {
        return open;
    };
    open.into_iter()
        .filter(|o| o.pid != daemon && platform::parent_of(o.pid) != Some(daemon))
        .collect()
}

/// `backpocket unmount`.
pub fn unmount(mountpoint: &Path) -> Result<()> {
    let mp = mountpoint
        .canonicalize()
        .or_else(|_| std::path::absolute(mountpoint))
        .with_context(|| format!("cannot find {}", mountpoint.display()))?;
    let entry = platform::mount_at(&mp)?
        .filter(|m| m.fstype == platform::FSTYPE)
        .ok_or_else(|| platform::Error::NotMounted(mp.clone()))?;
    match unmount_and_wait(&mp, &entry.source, false, Duration::from_secs(60))? {
        Some(_) => println!("unmounted {}", mp.display()),
        None => println!(
            "unmounted {}; the pocket's drive cannot be read, so its journal may hold less than \
             was done: the next mount scans the pocket and records the rest",
            mp.display()
        ),
    }
    Ok(())
}

/// What eject was asked to do.
#[derive(Debug)]
pub struct EjectOptions {
    pub force: bool,
    /// How long the last drain may take (and, with --force, how long open files may take).
    pub wait: Duration,
    /// Leave the drive's filesystem mounted.
    pub keep_drive_mounted: bool,
    pub json: bool,
}

/// `backpocket eject`.
pub fn eject(path: &Path, opts: &EjectOptions) -> Result<()> {
    let entry = find_mount(path)?;
    let mp = entry.mountpoint.clone();
    let open = not_the_daemons(&entry.source, platform::open_under(&mp));
    if !open.is_empty() && !opts.force {
        return Err(busy(&mp, &open));
    }
    let Ok(p) = Pocket::at(&entry.source) else {
        // The drive is gone already: all that is left is the mount.
        platform::unmount(&mp, true)?;
        let verdict = format!(
            "the drive of {} was already gone; unmounted {}. What the journal holds is on the \
             drive: plug it in again and everything it recorded is backed up",
            entry.source.display(),
            mp.display()
        );
        return say(
            opts.json,
            &json!({"mountpoint": mp, "verdict": verdict}),
            &verdict,
        );
    };
    let drained = last_drain(&p, opts)?;
    unmount_and_wait(
        &mp,
        &p.root,
        opts.force,
        opts.wait.max(Duration::from_secs(60)),
    )?;
    platform::syncfs(&p.root)?;
    let prot = Protection::read(&p)?;
    let verdict = verdict(&prot);
    let drive = if opts.keep_drive_mounted {
        DriveOutcome::Kept
    } else {
        release_drive(&p.root)
    };
    let after = match &drive {
        DriveOutcome::Released(at) => {
            format!("unmounted the drive ({}): unplug it now", at.display())
        }
        DriveOutcome::Kept | DriveOutcome::NotRemovable => {
            "everything is written to the drive: it can be unplugged".to_owned()
        }
        DriveOutcome::Failed(why) => format!(
            "everything is written to the drive, but its filesystem is still mounted ({why}); \
             unmount it before unplugging"
        ),
    };
    let out = json!({
        "mountpoint": mp,
        "pocket": p.root,
        "protected": prot.pending.0 == 0 && !prot.dests.is_empty(),
        "pending_records": prot.pending.0,
        "pending_bytes": prot.pending.1,
        "last_drain": drained,
        "destinations": prot.dests.iter().map(|d| json!({
            "name": d.name,
            "pending_records": d.pending.0,
            "pending_bytes": d.pending.1,
            "obstacle": d.obstacle(),
        })).collect::<Vec<_>>(),
        "drive_unmounted": matches!(drive, DriveOutcome::Released(_)),
        "verdict": verdict,
    });
    say(opts.json, &out, &format!("{verdict}\n{after}"))
}

fn say(json: bool, out: &serde_json::Value, text: &str) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(out)?);
    } else {
        println!("{text}");
    }
    Ok(())
}

/// Lets the mount's replicator send what reachable destinations lack, for up to `wait`, with
/// a progress bar. Returns the names of destinations that took everything. Ctrl-C ends the
/// wait (the changes stay in the journal for next time).
fn last_drain(p: &Pocket, opts: &EjectOptions) -> Result<Vec<String>> {
    let prot = Protection::read(p)?;
    let target = prot.status.last_seq;
    let mut waiting: Vec<&DestLine> = prot
        .dests
        .iter()
        .filter(|d| d.pending.0 > 0 && d.obstacle().is_none())
        .collect();
    if waiting.is_empty() || opts.wait.is_zero() {
        return Ok(Vec::new());
    }
    let stop = crate::StopOnSignal::new(&crate::INTERRUPT)?;
    let total: u64 = waiting.iter().map(|d| d.pending.1).max().unwrap_or(0);
    let bar = (!opts.json && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "last backup {msg:20} [{bar:30}] {bytes}/{total_bytes} (Ctrl-C: eject now)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let started = now_ns();
    let deadline = Instant::now() + opts.wait;
    let mut done = Vec::new();
    let reader = journal::Reader::open(&p.journal_path())?;
    while !waiting.is_empty() && Instant::now() < deadline && !stop.stopped() {
        std::thread::sleep(Duration::from_millis(100));
        // One status read per round: cursors and pending bytes of every destination.
        let status = reader.status()?;
        let mut still = Vec::new();
        let mut left = 0;
        for d in waiting {
            let c = status.destinations.iter().find(|c| c.name == d.name);
            let st = replicator::DestState::load(&p.meta_dir(), &d.name);
            if c.is_some_and(|c| c.cursor >= target) && st.in_flight.is_empty() {
                done.push(d.name.clone());
            } else if st.last_error_ns.is_some_and(|t| t > started) || st.waiting_for.is_some() {
                // It failed or stopped holding its conditions: the verdict says so.
            } else {
                left = left.max(c.map_or(d.pending.1, |c| c.pending_bytes));
                still.push(d);
            }
        }
        waiting = still;
        if let Some(b) = &bar {
            b.set_message(
                waiting
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            b.set_position(total.saturating_sub(left));
        }
    }
    drop(stop);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(done)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The one line eject ends with.
pub fn verdict(prot: &Protection) -> String {
    let (records, b, _) = prot.pending;
    let changes =
        |n: u64, b: u64| format!("{n} change{} ({})", if n == 1 { "" } else { "s" }, bytes(b));
    if prot.dests.is_empty() {
        if records == 0 {
            return "nothing to protect yet, and no backup destination: add one with `backpocket dest add`".into();
        }
        return format!(
            "NOT PROTECTED: {} are only on this drive, which has no backup destination \
             (`backpocket dest add`)",
            changes(records, b)
        );
    }
    let behind: Vec<&DestLine> = prot.dests.iter().filter(|d| d.pending.0 > 0).collect();
    let where_ = |d: &DestLine| match d.obstacle() {
        Some(o) => format!("{} ({o})", d.name),
        None => d.name.clone(),
    };
    if behind.is_empty() {
        let names: Vec<&str> = prot.dests.iter().map(|d| d.name.as_str()).collect();
        return format!(
            "everything is protected: every change is at {}",
            join(&names)
        );
    }
    let later: Vec<String> = behind.iter().map(|d| where_(d)).collect();
    if records == 0 {
        let at: Vec<&str> = prot
            .dests
            .iter()
            .filter(|d| d.pending.0 == 0)
            .map(|d| d.name.as_str())
            .collect();
        let most = behind
            .iter()
            .map(|d| d.pending)
            .max_by_key(|p| p.0)
            .unwrap_or_default();
        return format!(
            "everything is protected at {}; {} will get {} when the drive is next mounted where \
             it can be reached",
            join(&at),
            join(&later.iter().map(String::as_str).collect::<Vec<_>>()),
            changes(most.0, most.1)
        );
    }
    format!(
        "{} are only on this drive; they go to {} when the drive is next mounted where {} \
         reached",
        changes(records, b),
        join(&later.iter().map(String::as_str).collect::<Vec<_>>()),
        if later.len() == 1 {
            "it can be"
        } else {
            "they can be"
        }
    )
}

fn join(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

enum DriveOutcome {
    Kept,
    NotRemovable,
    Released(PathBuf),
    Failed(String),
}

/// Unmounts the removable drive's filesystem holding `pocket`, when no other pocket on it is
/// still mounted: as root directly, else through udisks as a desktop's file manager would.
fn release_drive(pocket: &Path) -> DriveOutcome {
    let Ok(table) = platform::mounts() else {
        return DriveOutcome::NotRemovable;
    };
    let Some(fs) = table
        .iter()
        .filter(|m| m.fstype != platform::FSTYPE && pocket.starts_with(&m.mountpoint))
        .max_by_key(|m| m.mountpoint.as_os_str().len())
    else {
        return DriveOutcome::NotRemovable;
    };
    let place = fs.mountpoint.to_string_lossy();
    if !platform::service::REMOVABLE_PLACES
        .iter()
        .any(|r| place.starts_with(r))
    {
        return DriveOutcome::NotRemovable;
    }
    if let Some(other) = table
        .iter()
        .find(|m| m.fstype == platform::FSTYPE && m.source.starts_with(&fs.mountpoint))
    {
        return DriveOutcome::Failed(format!(
            "another pocket on it is mounted at {}",
            other.mountpoint.display()
        ));
    }
    match platform::service::eject_drive(&fs.mountpoint, &fs.source) {
        Ok(()) => {
            platform::service::forget_attached(&fs.mountpoint);
            DriveOutcome::Released(fs.mountpoint.clone())
        }
        Err(e) => DriveOutcome::Failed(format!("{}: {e}", fs.mountpoint.display())),
    }
}
