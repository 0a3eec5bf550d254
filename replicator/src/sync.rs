//! `backpocket sync`: every destination drained once, in parallel, up to a record, beside a
//! running mount (whose replicator it then waits for) or without one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

use crate::config::{DestSpec, Setup};
use crate::dest::{is_unreachable, runtime, DestDrain};
use crate::drain::{DrainReport, Progress, Source};
use crate::error::{Error, Result};
use crate::state::{DestLock, DestState};
use crate::vault::now_ns;

/// The outcome of `sync` for one destination.
#[derive(Debug)]
pub struct SyncOutcome {
    pub name: String,
    pub result: Result<SyncReport>,
}

#[derive(Debug, Default, Clone)]
pub struct SyncReport {
    pub drained: DrainReport,
    /// The mount's replicator was draining this destination; `sync` waited for it.
    pub waited_for_mount: bool,
}

/// Drains every destination once, in parallel, until each holds record `target` or fails.
pub fn sync(
    setup: &Setup,
    target: u64,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Vec<SyncOutcome> {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            let msg = e.to_string();
            return setup
                .dests
                .iter()
                .map(|d| SyncOutcome {
                    name: d.name.clone(),
                    result: Err(Error::Format(msg.clone())),
                })
                .collect();
        }
    };
    let out = std::thread::scope(|s| {
        let handles: Vec<_> = setup
            .dests
            .iter()
            .map(|spec| {
                let handle = rt.handle().clone();
                s.spawn(move || SyncOutcome {
                    name: spec.name.clone(),
                    result: sync_one(spec, setup, handle, target, progress, cancel),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sync thread"))
            .collect()
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    out
}

fn sync_one(
    spec: &DestSpec,
    setup: &Setup,
    rt: Handle,
    target: u64,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<SyncReport> {
    let src = Source {
        pocket: &setup.pocket,
        journal: &setup.journal,
        dest: &spec.name,
        ids: &setup.ids,
        cancel,
        progress,
    };
    let Some(_lock) = DestLock::try_take(&setup.meta_dir, &spec.name)? else {
        // The mount's replicator has it: wait until it holds `target`, or reports a failure.
        let started = now_ns();
        loop {
            let reader = journal::Reader::open(&setup.journal)?;
            // Large files in flight are listed in the state before the cursor moves past them.
            let st = DestState::load(&setup.meta_dir, &spec.name);
            if reader.cursor(&spec.name)?.is_some_and(|c| c >= target) && st.in_flight.is_empty() {
                return Ok(SyncReport {
                    waited_for_mount: true,
                    ..SyncReport::default()
                });
            }
            if let (Some(err), Some(at)) = (&st.last_error, st.last_error_ns) {
                if at > started {
                    return Err(Error::Format(err.clone()));
                }
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let attempt = now_ns();
    let res = (|| {
        let mut d = DestDrain::open(spec, setup, rt, Arc::default())?;
        let mut total = DrainReport::default();
        while let Some(r) = d.drain_once(&src)? {
            total.absorb(&r);
            if r.cursor >= target && !d.settling() {
                break;
            }
        }
        // Large files read beside the drain: wait for them, and write the segment that
        // completes the points waiting for them.
        while d.settling() {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            match d.drain_once(&src)? {
                Some(r) => total.absorb(&r),
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        Ok((d, total))
    })();
    // Read after the drain: it writes the files in flight into the state.
    let mut st = DestState::load(&setup.meta_dir, &spec.name);
    st.last_attempt_ns = Some(attempt);
    let out = match res {
        Ok((d, total)) => {
            st.reachable = Some(true);
            st.last_success_ns = Some(now_ns());
            st.last_error = None;
            d.note_head(&mut st);
            Ok(SyncReport {
                drained: total,
                waited_for_mount: false,
            })
        }
        Err(e) => {
            st.reachable = Some(!is_unreachable(&e));
            st.last_error = Some(e.explain());
            st.last_error_ns = Some(now_ns());
            Err(e)
        }
    };
    st.save(&setup.meta_dir, &spec.name)?;
    out
}
