//! Crash points, for the endurance tests: a build with the `fault-injection` feature kills its
//! own process with SIGKILL at a named point the N-th time it passes there, when
//! `BACKPOCKET_CRASH_AT=POINT:N` says so. A kill -9 from outside lands wherever the process
//! happens to be; these land exactly where a promise is most at risk (inside a group commit,
//! between an upload and the cursor advance). Elsewhere [`crash_point`] is a constant no-op the
//! compiler removes, and the environment is never read.
//!
//! Points: `journal-commit` (a group commit written but not committed), `upload` (an object
//! at the destination, not yet synced there nor known to the index), `before-cursor` (a log
//! segment durable at the destination, the journal's cursor not yet moved).

/// Dies here if the crash plan names this point and this is the time it counts to.
pub fn crash_point(point: &str) {
    #[cfg(feature = "fault-injection")]
    imp::hit(point);
    #[cfg(not(feature = "fault-injection"))]
    let _ = point;
}

#[cfg(feature = "fault-injection")]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    fn plan() -> Option<&'static (String, u64)> {
        static PLAN: OnceLock<Option<(String, u64)>> = OnceLock::new();
        PLAN.get_or_init(|| {
            let spec = std::env::var("BACKPOCKET_CRASH_AT").ok()?;
            let (point, n) = spec.split_once(':').unwrap_or((&spec, "1"));
            match n.parse::<u64>() {
                Ok(n) if n > 0 => {
                    tracing::warn!("crash point armed: {point}, time {n}");
                    Some((point.to_owned(), n))
                }
                _ => {
                    tracing::error!(
                        "BACKPOCKET_CRASH_AT={spec} ignored: expected POINT:N, N from 1"
                    );
                    None
                }
            }
        })
        .as_ref()
    }

    pub(super) fn hit(point: &str) {
        static HITS: AtomicU64 = AtomicU64::new(0);
        let Some((armed, n)) = plan() else { return };
        if armed != point || HITS.fetch_add(1, Ordering::SeqCst) + 1 != *n {
            return;
        }
        tracing::warn!("crash point {point} reached (time {n}): killing this process");
        #[cfg(unix)]
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
}
