//! The replicator as it runs: one thread per destination, so that a slow or absent one never
//! holds the others back, all sharing one tokio runtime for their transfers. Woken by the
//! journal after each commit; failures retry with backoff and are written where
//! `journal status` reads them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, select, Receiver, Sender};
use tokio::runtime::{Handle, Runtime};
use tracing::{info, warn};

use crate::config::{DestSpec, Mode, Setup};
use crate::crypto::Key;
use crate::dest::{is_unreachable, runtime, DestDrain};
use crate::drain::{Progress, Source};
use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::state::{DestLock, DestState};
use crate::vault::now_ns;
use platform::ChangeWatch;

/// The running replicator.
#[derive(Debug)]
pub struct Replicator {
    cancel: Arc<AtomicBool>,
    stop: Option<Sender<()>>,
    coordinator: Option<JoinHandle<()>>,
    _rt: Option<Runtime>,
}

/// Reads the destinations as configured now, and the pocket key if this machine has it (None
/// when the config cannot be read): the replicator follows destinations added and removed
/// while it runs, and vaults start once a key appears (`backpocket key remember`).
pub type Reload = Box<dyn Fn() -> Option<(Vec<DestSpec>, Option<Key>)> + Send>;

/// One destination's thread, as the coordinator holds it.
struct Running {
    spec: DestSpec,
    wake: Sender<()>,
    /// Dropped to stop the thread.
    _stop: Sender<()>,
    cancel: Arc<AtomicBool>,
    /// Set when the network or the mount table changed: retry now, whatever the backoff.
    net_changed: Arc<AtomicBool>,
    /// Set when a condition stopped holding: transfers in flight are abandoned.
    pause: Arc<AtomicBool>,
    policy: Policy,
    thread: JoinHandle<()>,
}

impl Running {
    fn start(spec: DestSpec, setup: &Arc<Setup>, rt: &Handle) -> Result<Running> {
        let (wake, wake_rx) = bounded(1);
        let (stop, stop_rx) = bounded::<()>(0);
        let cancel = Arc::new(AtomicBool::new(false));
        let net_changed = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let policy = Policy::parse(&spec.when).unwrap_or_else(|e| {
            // Checked when added; a hand-edited config that breaks it must not back up
            // somewhere it was told not to.
            warn!(dest = spec.name, "{e}");
            Policy::never()
        });
        let (s, setup, rt, c) = (spec.clone(), setup.clone(), rt.clone(), cancel.clone());
        let (n, pa, po) = (net_changed.clone(), pause.clone(), policy.clone());
        let thread = std::thread::Builder::new()
            .name(format!("dest-{}", spec.name))
            .spawn(move || {
                let ctl = Control {
                    wake: wake_rx,
                    stop: stop_rx,
                    cancel: &c,
                    net_changed: &n,
                    pause: pa,
                    policy: po,
                };
                run_dest(&s, &setup, rt, &ctl)
            })
            .map_err(|e| Error::io("cannot start a replicator thread", e))?;
        Ok(Running {
            spec,
            wake,
            _stop: stop,
            cancel,
            net_changed,
            pause,
            policy,
            thread,
        })
    }

    /// Stops the thread; a drain in progress is abandoned.
    fn finish(self) {
        self.cancel.store(true, Ordering::Relaxed);
        // Transfers in flight are abandoned too: a destination held to a slow rate must not
        // hold up an unmount for the rest of its pack.
        self.pause.store(true, Ordering::Relaxed);
        drop(self._stop);
        let _ = self.thread.join();
    }
}

impl Replicator {
    /// Starts draining every destination; `wake` receives the journal's commits. With
    /// `reload`, destinations added to or removed from the config while running are started
    /// and stopped within a few seconds.
    pub fn start(setup: Setup, wake: Receiver<u64>, reload: Option<Reload>) -> Result<Replicator> {
        let rt = runtime()?;
        let cancel = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop) = bounded::<()>(0);
        let mut setup = Arc::new(setup);
        let mut running: Vec<Running> = Vec::new();
        for spec in setup.dests.clone() {
            running.push(Running::start(spec, &setup, rt.handle())?);
        }
        let (handle, all_cancel) = (rt.handle().clone(), cancel.clone());
        let net = watch_changes(cancel.clone());
        let coordinator = std::thread::Builder::new()
            .name("replicator".into())
            .spawn(move || {
                loop {
                    select! {
                        recv(wake) -> m => {
                            if m.is_err() { break; }
                            for r in &running { let _ = r.wake.try_send(()); }
                        }
                        recv(net) -> m => {
                            if m.is_err() { continue; }
                            for r in &running {
                                if let Some(what) = r.policy.quick_waiting_for() {
                                    if !r.pause.swap(true, Ordering::Relaxed) {
                                        info!(dest = r.spec.name, "pausing: no longer on {what}");
                                    }
                                }
                                r.net_changed.store(true, Ordering::Relaxed);
                                let _ = r.wake.try_send(());
                            }
                        }
                        recv(stop) -> _ => break,
                        default(Duration::from_secs(2)) => {
                            if let Some((specs, key)) = reload.as_ref().and_then(|r| r()) {
                                if setup.key.is_none() && key.is_some() {
                                    // The key came: vaults that waited for it start over.
                                    setup = Arc::new(Setup { key, ..(*setup).clone() });
                                    let (vaults, rest): (Vec<_>, Vec<_>) = running
                                        .into_iter()
                                        .partition(|r| r.spec.mode == Mode::Vault);
                                    vaults.into_iter().for_each(Running::finish);
                                    running = rest;
                                }
                                running = follow(running, specs, &setup, &handle);
                            }
                        }
                    }
                }
                for r in running {
                    r.cancel
                        .store(all_cancel.load(Ordering::Relaxed), Ordering::Relaxed);
                    r.finish();
                }
            })
            .map_err(|e| Error::io("cannot start the replicator thread", e))?;
        Ok(Replicator {
            cancel,
            stop: Some(stop_tx),
            coordinator: Some(coordinator),
            _rt: Some(rt),
        })
    }

    /// Stops: a drain in progress is abandoned (its cursor does not move, so nothing is lost).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.stop.take();
        if let Some(t) = self.coordinator.take() {
            let _ = t.join();
        }
        if let Some(rt) = self._rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// A thread that reports network and mount-table changes on the returned channel until
/// `stop` is set; a channel that never fires where neither can be watched.
fn watch_changes(stop: Arc<AtomicBool>) -> Receiver<()> {
    let (tx, rx) = bounded(1);
    let Some(mut watch) = ChangeWatch::open() else {
        warn!("network and mount changes cannot be watched here; destinations are retried with backoff");
        return crossbeam_channel::never();
    };
    let spawned = std::thread::Builder::new()
        .name("netwatch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if watch.wait(Duration::from_millis(500)) {
                    let _ = tx.try_send(());
                }
            }
        });
    if let Err(e) = spawned {
        warn!("cannot watch network changes: {e}");
    }
    rx
}

/// Starts threads for destinations that appeared in the config, stops those that went or
/// changed; the others keep running undisturbed.
fn follow(
    running: Vec<Running>,
    specs: Vec<DestSpec>,
    setup: &Arc<Setup>,
    rt: &Handle,
) -> Vec<Running> {
    let mut keep = Vec::new();
    for r in running {
        if specs.contains(&r.spec) {
            keep.push(r);
        } else {
            info!(
                dest = r.spec.name,
                "destination removed or changed in the config; stopping it"
            );
            r.finish();
        }
    }
    for spec in specs {
        if keep.iter().any(|r| r.spec == spec) {
            continue;
        }
        info!(
            dest = spec.name,
            "destination added to the config; starting it"
        );
        match Running::start(spec, setup, rt) {
            Ok(r) => keep.push(r),
            Err(e) => warn!("{e}"),
        }
    }
    keep
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What a destination's thread listens to.
struct Control<'a> {
    /// The journal committed.
    wake: Receiver<()>,
    /// Dropped: stop.
    stop: Receiver<()>,
    cancel: &'a AtomicBool,
    net_changed: &'a AtomicBool,
    pause: Arc<AtomicBool>,
    policy: Policy,
}

impl Control<'_> {
    /// Sleeps until woken, stopped (false) or `wait` passed.
    fn sleep(&self, wait: Duration) -> bool {
        select! {
            recv(self.wake) -> _ => {
                // Coalesce a burst of commits into one drain.
                std::thread::sleep(Duration::from_millis(2));
                true
            }
            recv(self.stop) -> _ => false,
            default(wait) => true,
        }
    }

    /// Sleeps while a condition does not hold: until the network changes, `wait` passes or
    /// it is stopped (false). Journal commits do not end it: checking a `host=` condition
    /// is a connection attempt, not something to do on every write.
    fn sleep_waiting(&self, wait: Duration) -> bool {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            select! {
                recv(self.wake) -> _ => {
                    if self.net_changed.load(Ordering::Relaxed) {
                        return true;
                    }
                }
                recv(self.stop) -> _ => return false,
                default(left) => return true,
            }
        }
    }
}

fn run_dest(spec: &DestSpec, setup: &Setup, rt: Handle, ctl: &Control<'_>) {
    let progress = Progress::default();
    let sending = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let ticker = std::thread::Builder::new()
            .name(format!("live-{}", spec.name))
            .spawn_scoped(s, || report_live(spec, setup, &progress, &sending, &done));
        if let Err(e) = ticker {
            warn!(dest = spec.name, "no live progress for status --watch: {e}");
        }
        run_dest_loop(spec, setup, rt, ctl, &progress, &sending);
        done.store(true, Ordering::Relaxed);
    });
}

/// Writes what the drain is doing twice a second while it sends, for `status --watch`.
fn report_live(
    spec: &DestSpec,
    setup: &Setup,
    progress: &Progress,
    sending: &AtomicBool,
    done: &AtomicBool,
) {
    let mut last = crate::state::Live::default();
    let mut ticks = 0u32;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        ticks += 1;
        let now = crate::state::Live {
            sending: sending.load(Ordering::Relaxed),
            bytes_done: progress.bytes_done.load(Ordering::Relaxed),
            updated_ns: 0,
        };
        // Twice a second while sending; at once when it starts or stops.
        let changed = now.sending != last.sending;
        if !(changed || (now.sending && ticks >= 2)) {
            continue;
        }
        ticks = 0;
        last = crate::state::Live {
            updated_ns: now_ns(),
            ..now
        };
        if let Err(e) = last.save(&setup.meta_dir, &spec.name) {
            tracing::debug!(dest = spec.name, "live progress: {e}");
        }
    }
    let _ = (crate::state::Live {
        sending: false,
        updated_ns: now_ns(),
        ..last
    })
    .save(&setup.meta_dir, &spec.name);
}

fn run_dest_loop(
    spec: &DestSpec,
    setup: &Setup,
    rt: Handle,
    ctl: &Control<'_>,
    progress: &Progress,
    sending: &AtomicBool,
) {
    // `sync` may hold the destination; wait for it.
    let _lock = loop {
        match DestLock::try_take(&setup.meta_dir, &spec.name) {
            Ok(Some(l)) => break l,
            Ok(None) => {}
            Err(e) => warn!(dest = spec.name, "{e}"),
        }
        if ctl.stop.recv_timeout(Duration::from_secs(1))
            != Err(crossbeam_channel::RecvTimeoutError::Timeout)
        {
            return;
        }
    };
    let policy = &ctl.policy;
    let src = Source {
        pocket: &setup.pocket,
        journal: &setup.journal,
        dest: &spec.name,
        ids: &setup.ids,
        cancel: ctl.cancel,
        progress,
    };
    let mut drain: Option<DestDrain> = None;
    // Maintenance waits until the destination has been idle (and reachable) this long.
    let maintain_opts = maintenance_options();
    let idle_for = Duration::from_secs(env_secs("BACKPOCKET_MAINTAIN_IDLE_SECS").unwrap_or(60));
    let mut last_drain = std::time::Instant::now();
    // Whether the vault may want maintenance (drains since the last run, or just opened).
    let mut maintenance_pending = spec.mode == Mode::Vault;
    let mut backoff = Duration::from_secs(1);
    let mut waiting_backoff = Duration::from_secs(2);
    // Whether the last check found a condition unmet (status then says what it waits for).
    let mut was_waiting = false;
    loop {
        if ctl.net_changed.swap(false, Ordering::Relaxed) {
            // The network or the mounts changed (a disk plugged in, the office network
            // reached): whatever failed may work now.
            backoff = Duration::from_secs(1);
            waiting_backoff = Duration::from_secs(2);
        }
        if let Some(what) = policy.waiting_for() {
            let mut st = DestState::load(&setup.meta_dir, &spec.name);
            if st.waiting_for.as_deref() != Some(what.as_str()) {
                info!(dest = spec.name, "waiting for {what}");
                st.waiting_for = Some(what);
                if let Err(e) = st.save(&setup.meta_dir, &spec.name) {
                    warn!(dest = spec.name, "{e}");
                }
            }
            was_waiting = true;
            // Network changes wake us at once; schedules and probes are checked again with
            // a backoff (a host= probe is a connection attempt).
            let wait = waiting_backoff;
            waiting_backoff = (waiting_backoff * 2).min(Duration::from_secs(30));
            if !ctl.sleep_waiting(wait) {
                return;
            }
            continue;
        }
        if std::mem::take(&mut was_waiting) {
            // It was waiting: say at once that it no longer is.
            let mut st = DestState::load(&setup.meta_dir, &spec.name);
            if st.waiting_for.take().is_some() {
                info!(dest = spec.name, "conditions hold again; resuming");
                if let Err(e) = st.save(&setup.meta_dir, &spec.name) {
                    warn!(dest = spec.name, "{e}");
                }
            }
        }
        waiting_backoff = Duration::from_secs(2);
        ctl.pause.store(false, Ordering::Relaxed);
        sending.store(true, Ordering::Relaxed);
        // A bug must show in status, not end this destination's thread silently.
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            drain_all(spec, setup, &rt, &mut drain, &src, &ctl.pause)
        }))
        .unwrap_or_else(|p| {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            drain = None;
            Err(Error::Format(format!(
                "internal error while draining ({what}); please report it"
            )))
        });
        // Large files still uploading beside the drain: it is still sending.
        let settling = res.is_ok() && drain.as_ref().is_some_and(|d| d.settling());
        sending.store(settling, Ordering::Relaxed);
        let mut st = DestState::load(&setup.meta_dir, &spec.name);
        let before = st.clone();
        st.last_attempt_ns = Some(now_ns());
        st.waiting_for = None;
        let mut drained = 0;
        let wait = match res {
            Err(Error::Cancelled) => return,
            // A condition stopped holding mid-drain: what arrived stays, the rest waits. The
            // vault is read again when it resumes (a write cut off may still have landed).
            Err(Error::Paused) if ctl.cancel.load(Ordering::Relaxed) => return,
            Err(Error::Paused) => {
                drain = None;
                continue;
            }
            Ok(n) => {
                drained = n;
                if n > 0 {
                    info!(dest = spec.name, records = n, "drained");
                    compact_if_large(&setup.journal);
                }
                st.reachable = Some(true);
                st.last_success_ns = Some(now_ns());
                st.last_error = None;
                if let Some(d) = &drain {
                    d.note_head(&mut st);
                }
                if let (true, Some(tx), Some(gen)) = (n > 0, &setup.drained, st.head_gen) {
                    // Never blocks a drain: a listener that fell behind hears of the newest.
                    let _ = tx.try_send((spec.name.clone(), gen));
                }
                backoff = Duration::from_secs(1);
                if n > 0 {
                    last_drain = std::time::Instant::now();
                    maintenance_pending = spec.mode == Mode::Vault;
                }
                let idle = last_drain.elapsed();
                if maintenance_pending && idle >= idle_for && !settling {
                    maintenance_pending = false;
                    if let Some(d) = drain.as_mut() {
                        // A journal commit (or a pause) ends the run early: the drain goes first.
                        let interrupt = || {
                            !ctl.wake.is_empty()
                                || ctl.cancel.load(Ordering::Relaxed)
                                || ctl.pause.load(Ordering::Relaxed)
                        };
                        match d.maintain_if_due(&maintain_opts, &interrupt) {
                            Ok(Some(r)) => {
                                maintenance_pending = r.interrupted;
                                info!(
                                    dest = spec.name,
                                    log_objects = r.log_objects_after,
                                    index_objects = r.index_objects_after,
                                    packs_repacked = r.packs_repacked,
                                    deleted = r.objects_deleted,
                                    "vault maintained"
                                );
                            }
                            Ok(None) => {}
                            // Another device (or machine) holds the vault's lease: its turn.
                            Err(Error::Busy(who)) => {
                                info!(dest = spec.name, "maintenance waits: {who}");
                            }
                            Err(e) => {
                                // Not a backup failure: the drains go on, the next idle
                                // period tries again.
                                warn!(dest = spec.name, "maintenance: {e}");
                                drain = None;
                            }
                        }
                    }
                }
                // Nothing pending: sleep until the journal commits, or check again in a while
                // (a destination may have come back, a scan may have run), or when the
                // destination will have been idle long enough for maintenance.
                if settling {
                    // Large files on their way: write the segment that completes their points
                    // soon after they land.
                    Duration::from_millis(50)
                } else if maintenance_pending {
                    idle_for
                        .saturating_sub(last_drain.elapsed())
                        .clamp(Duration::from_millis(100), Duration::from_secs(30))
                } else {
                    Duration::from_secs(30)
                }
            }
            Err(e) => {
                warn!(dest = spec.name, "{e}");
                if let Some(d) = &drain {
                    d.note_members(&mut st);
                }
                st.reachable = Some(!is_unreachable(&e));
                st.last_error = Some(e.explain());
                st.last_error_ns = Some(now_ns());
                drain = None;
                let w = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(300));
                w
            }
        };
        // An idle destination checked every 30 s must not mean a durable write to the drive
        // every 30 s: save what changed, and refresh "last success" every 10 minutes.
        let stale = before
            .last_success_ns
            .is_none_or(|t| now_ns() - t > 600_000_000_000);
        // Failures are always saved: `sync` waits on the mount's next one.
        let changed = drained > 0
            || stale
            || st.last_error.is_some()
            || st.reachable != before.reachable
            || st.last_error != before.last_error
            || st.waiting_for != before.waiting_for
            || st.head_gen != before.head_gen
            || st.members != before.members;
        if changed {
            if let Err(e) = st.save(&setup.meta_dir, &spec.name) {
                warn!(dest = spec.name, "{e}");
            }
        }
        if !ctl.sleep(wait) {
            return;
        }
    }
}

/// A setting in whole seconds from the environment (for tests and tuning).
fn env_secs(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// Maintenance as the mount runs it; the grace period can be shortened for tests
/// (`BACKPOCKET_MAINTAIN_GRACE_SECS`).
fn maintenance_options() -> crate::maintain::MaintainOptions {
    let mut o = crate::maintain::MaintainOptions::default();
    if let Some(g) = env_secs("BACKPOCKET_MAINTAIN_GRACE_SECS") {
        o.grace = Duration::from_secs(g);
    }
    o
}

/// Removes the records every destination holds once the journal has many: the journal on the
/// drive stays small without anyone running `journal compact`.
fn compact_if_large(journal_path: &std::path::Path) {
    const KEEP_AT_MOST: u64 = 100_000;
    let records = journal::Reader::open(journal_path)
        .and_then(|r| r.status())
        .map(|s| s.records)
        .unwrap_or(0);
    if records > KEEP_AT_MOST {
        match journal::compact(journal_path) {
            Ok(n) => info!(removed = n, "journal compacted"),
            Err(e) => warn!("journal compaction: {e}"),
        }
    }
}

/// Drains until nothing is pending. Returns how many records went.
fn drain_all(
    spec: &DestSpec,
    setup: &Setup,
    rt: &Handle,
    drain: &mut Option<DestDrain>,
    src: &Source<'_>,
    pause: &Arc<AtomicBool>,
) -> Result<u64> {
    if drain.is_none() {
        *drain = Some(DestDrain::open(spec, setup, rt.clone(), pause.clone())?);
    }
    let d = drain.as_mut().expect("opened above");
    let mut total = 0;
    while let Some(r) = d.drain_once(src)? {
        total += r.records;
        if src.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
    }
    Ok(total)
}
