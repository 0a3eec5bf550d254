//! `backpocket mount`: lock, (detach), open the journal, reconcile, mount, serve, close.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tracing::{error, info};

use crate::exit::{ExitCode, Failure};
use crate::pocket::Pocket;
use crate::MountArgs;

pub fn run(args: MountArgs, key_args: &crate::keys::KeyArgs) -> Result<()> {
    // Everything before the fork is single-threaded: no logger thread, no SQLite, no runtime.
    let pocket = Pocket::at(&args.pocket)?;
    let config = pocket.config()?;
    // The key before the fork, so that the prompt (if any) is at the terminal. Without it the
    // mount still records everything; vault destinations wait for `backpocket key remember`.
    let needs_key = config
        .destinations
        .iter()
        .any(|d| d.mode == replicator::Mode::Vault);
    let key = if needs_key {
        match crate::keys::pocket_key(&config, key_args, std::io::stdin().is_terminal()) {
            Ok(k) => k,
            Err(e)
                if e.downcast_ref::<replicator::Error>()
                    .is_some_and(|r| matches!(r, replicator::Error::NeedPassphrase)) =>
            {
                eprintln!(
                    "backpocket: this machine does not know the pocket key; vault destinations wait until `backpocket key remember` (changes are recorded meanwhile)"
                );
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let mountpoint: PathBuf = std::path::absolute(&args.mountpoint)
        .with_context(|| format!("cannot use {}", args.mountpoint.display()))?;
    // A mount inside its own pocket would serve itself (the daemon would call into its own
    // mount and hang); a pocket inside its mount would be hidden by it.
    let resolved = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.clone());
    if resolved.starts_with(&pocket.root) || pocket.root.starts_with(&resolved) {
        return Err(Failure::new(
            ExitCode::Error,
            anyhow::anyhow!(
                "the mountpoint {} and the pocket {} are inside one another; mount the pocket \
                 at a folder outside it (for example ~/Pocket)",
                mountpoint.display(),
                pocket.root.display()
            ),
        )
        .into());
    }
    let mut lock = platform::PocketLock::acquire(&pocket.lock_path(), &pocket.root)?;
    let cleaned_stale = platform::prepare_mountpoint(&mountpoint, &pocket.root)?;
    pocket.probe_drive();

    let mut detached = if args.daemon {
        let d = platform::detach()?;
        lock.update_pid();
        Some(d)
    } else {
        None
    };
    if detached.is_some() {
        // The daemon logs to the drive; its standard streams go away once the parent exits.
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(pocket.log_path())
        {
            Ok(f) => {
                let filter = crate::log_filter("info");
                let _ = tracing_subscriber::fmt()
                    .with_env_filter(filter)
                    .with_ansi(false)
                    .with_writer(std::sync::Mutex::new(f))
                    .try_init();
            }
            Err(_) => crate::init_logging("info"),
        }
    } else {
        crate::init_logging("info");
    }
    let fd_limit = platform::raise_fd_limit();
    tracing::debug!("open files allowed: {fd_limit}");
    if cleaned_stale {
        tracing::warn!(
            "{} was a stale mount of this pocket (its daemon had died); cleaned it up",
            mountpoint.display()
        );
    }

    let result = serve(&args, &pocket, &config, key, &mountpoint, &mut detached);
    if let (Some(d), Err(e)) = (detached.as_mut(), &result) {
        // Before the mount was ready the parent prints it; after, only the log has it.
        error!("{e:#}");
        d.report(Err((
            crate::exit::code_of(e) as i32,
            &format!("backpocket: {e:#}"),
        )));
    }
    drop(lock);
    result
}

fn serve(
    args: &MountArgs,
    pocket: &Pocket,
    config: &crate::pocket::Config,
    key: Option<replicator::Key>,
    mountpoint: &std::path::Path,
    detached: &mut Option<platform::Detached>,
) -> Result<()> {
    let journal = pocket.open_journal().map_err(|e| {
        let code = match e {
            journal::Error::Corrupt { .. } | journal::Error::TooNew { .. } => ExitCode::Damaged,
            _ => ExitCode::Error,
        };
        Failure::new(code, anyhow::Error::from(e))
    })?;
    // Reconcile first: whatever happened while nothing was recording gets its records.
    let report = journal::scan(&pocket.root, &pocket.journal_path(), &journal.handle())
        .context("the start-up scan failed")?;
    info!("{}", crate::report::scan_line(&report));

    // The other devices' changes come in through the mount (a vault devices joined).
    let pull_key = key.clone();
    // What this device's drains wrote to a vault, for the others to hear of at once.
    let (drained_tx, drained_rx) = crossbeam_channel::bounded(16);
    // The replicator drains to the destinations while the mount runs.
    // It follows destinations added or removed while mounted (`backpocket dest add`).
    let replicator = if args.no_journal {
        None
    } else {
        let mut setup = crate::backup::setup(pocket, config, key)?;
        // The writer's own map of the drive's numbers, kept current while mounted.
        setup.ids = journal.handle().ids().clone();
        setup.drained = Some(drained_tx);
        let p = pocket.clone();
        let reload: replicator::Reload = Box::new(move || {
            let config = p.config().ok()?;
            let specs = config.destinations.iter().map(|d| d.spec()).collect();
            Some((specs, crate::keys::remembered(&config)))
        });
        Some(replicator::Replicator::start(
            setup,
            journal.subscribe(),
            Some(reload),
        )?)
    };

    // Tells the user when protection is at risk (changes waiting for days, a drive filling).
    let warn_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let warnings = if args.no_journal {
        None
    } else {
        match crate::warn::spawn_watch(pocket.clone(), warn_stop.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("cannot watch for risks to the backup: {e}");
                None
            }
        }
    };

    let handle = (!args.no_journal).then(|| journal.handle());
    let quiet = Duration::from_secs(config.journal.quiet_period_secs.max(1));
    let (core, keeps) = pocket_fs(pocket, handle, quiet)?;
    let cfg = fs_driver::fuse::MountConfig {
        fsname: pocket.root.to_string_lossy().into_owned(),
        allow_other: args.allow_other,
        default_permissions: args.default_permissions || keeps,
        opts: fs_driver::fuse::MountOptions {
            ttl: Duration::from_secs_f64(args.ttl.max(0.0)),
            passthrough: !args.no_passthrough,
            threads: args.threads,
        },
    };
    let mut mount = fs_driver::fuse::mount(core, mountpoint, &cfg).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EPERM) || e.kind() == std::io::ErrorKind::PermissionDenied {
            " (is fuse3 installed, and /dev/fuse usable by you? --allow-other as a user needs user_allow_other in /etc/fuse.conf)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot mount at {}: {e}{hint}", mountpoint.display())
    })?;

    // Ctrl-C, SIGTERM, SIGHUP: unmount cleanly; the session then ends and the journal closes.
    let mut unmounter = mount.unmounter();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])?;
    let signal_handle = signals.handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                info!("signal {sig}: unmounting");
                if let Err(e) = unmounter.unmount() {
                    error!("unmount on signal failed: {e}; run `backpocket unmount` by hand");
                }
            }
        })?;

    let io = if mount.passthrough() {
        "kernel passthrough"
    } else {
        "through the daemon"
    };
    let ready = format!(
        "mounted {} at {} (reads and writes {io}; {})",
        pocket.root.display(),
        mountpoint.display(),
        if args.no_journal {
            "journal OFF"
        } else {
            "journal on"
        }
    );
    info!("{ready}");
    if let Some(d) = detached.as_mut() {
        d.report(Ok(&ready));
    }
    let pull_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let puller = if args.no_journal {
        None
    } else {
        crate::devices::spawn_pull(
            pocket.clone(),
            config.clone(),
            pull_key,
            mountpoint.to_owned(),
            drained_rx,
            pull_stop.clone(),
            // (A daemon logs to the drive; the pull beside it too.)
            detached.is_some().then(|| pocket.log_path()),
        )
    };
    let res = mount.run();
    pull_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = puller {
        let _ = t.join();
    }
    signal_handle.close();
    info!("unmounted {}; closing the journal", mountpoint.display());
    info!("served: {}", fs_driver::fuse::served_summary());
    if let Some(r) = replicator {
        // A drain in progress is abandoned; its records stay pending for the next one.
        r.stop();
    }
    warn_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = warnings {
        let _ = t.join();
    }
    let closed = journal.close();
    res.context("the mount session ended with an error")?;
    closed.context(
        "the pocket's journal could not be closed (was the drive pulled?); nothing on the drive \
         is lost: the next mount scans the pocket and records what the journal is missing",
    )?;
    Ok(())
}

/// The filesystem over `pocket`, and whether it keeps what the drive cannot (modes, owners,
/// links and xattrs on exFAT or FAT): then the kernel must check permissions against what it
/// shows, since the drive lets anyone do anything.
fn pocket_fs(
    pocket: &Pocket,
    handle: Option<journal::JournalHandle>,
    quiet_period: Duration,
) -> Result<(Arc<fs_driver::PocketFs>, bool)> {
    let options = fs_driver::Options { quiet_period };
    let mut core = fs_driver::PocketFs::new(&pocket.root, handle, options)
        .map_err(|e| anyhow::anyhow!("cannot open the pocket {}: {e}", pocket.root.display()))?;
    // The mount keeps it from the catalog on.
    let keeps = pocket.drive().filter(|d| !d.modes);
    if let Some(d) = &keeps {
        let (files, xattrs) = journal::Reader::open(&pocket.journal_path())
            .and_then(|r| Ok((r.all_files()?, r.all_xattrs()?)))
            .context("cannot read the modes, owners and xattrs the journal keeps for this drive; check that the drive is present (`backpocket journal status` says whether the journal can be read)")?;
        core.keep_metadata(
            i64::try_from(d.time_granularity_ns).unwrap_or(i64::MAX),
            files.into_iter().map(|(id, meta, _)| (id, meta)),
            xattrs,
        );
    }
    Ok((Arc::new(core), keeps.is_some()))
}

/// Runs `work` in a private mount of `pocket` (a fresh folder only this user can enter), so
/// that what it makes there goes into the pocket as through the user's mount: on a drive that
/// cannot keep modes, links, xattrs or some names (exFAT, FAT), into the journal, which is the
/// only place they can live. Nothing drains meanwhile; the caller holds the pocket's lock and
/// gives the journal it opened.
pub fn in_private_mount<T>(
    pocket: &Pocket,
    journal: &journal::Journal,
    work: impl FnOnce(&std::path::Path) -> Result<T>,
) -> Result<T> {
    let dir = tempfile::Builder::new()
        .prefix("backpocket-private-")
        .tempdir()
        .context("cannot make a private mountpoint in the system's temporary folder")?;
    // A descriptor for each file the kernel caches, beside what `work` keeps open.
    platform::raise_fd_limit();
    let (core, keeps) = pocket_fs(pocket, Some(journal.handle()), Duration::from_secs(1))?;
    let cfg = fs_driver::fuse::MountConfig {
        fsname: pocket.root.to_string_lossy().into_owned(),
        allow_other: false,
        default_permissions: keeps,
        opts: fs_driver::fuse::MountOptions::default(),
    };
    let mut mount = fs_driver::fuse::mount(core, dir.path(), &cfg).map_err(|e| {
        anyhow::anyhow!(
            "cannot mount the pocket at {} to fill it ({e}); is fuse3 installed, and /dev/fuse usable by you?",
            dir.path().display()
        )
    })?;
    let mut unmounter = mount.unmounter();
    let session = std::thread::Builder::new()
        .name("private-mount".into())
        .spawn(move || mount.run())?;
    let res = work(dir.path());
    if let Err(e) = unmounter.unmount() {
        // (Something is inside it.) The session ends with this process.
        let e = anyhow::Error::from(e).context(format!(
            "cannot unmount the private mount at {}; run `umount {}`",
            dir.path().display(),
            dir.path().display()
        ));
        return Err(res.err().unwrap_or(e));
    }
    let served = session
        .join()
        .map_err(|_| anyhow::anyhow!("the private mount's session panicked"))?;
    let out = res?;
    served.context("the private mount's session ended with an error")?;
    Ok(out)
}
