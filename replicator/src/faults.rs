//! Faults injected into every destination's requests, for the endurance tests: errors,
//! slow answers, requests that hang until they time out, and uploads cut off midway (part of
//! the object sent, the connection gone). Active only in builds with the `fault-injection`
//! feature (elsewhere [`before`] is a constant `None` the compiler removes, and the
//! environment is never read); even there, nothing happens unless `BACKPOCKET_FAULTS` is set.
//!
//! `BACKPOCKET_FAULTS` holds space-separated settings: `seed=N`, and per kind a probability
//! per request, `error=0.05`, `cut=0.05` (uploads only), `slow=0.1:300ms`,
//! `timeout=0.02:2s`. Each fault injected is appended as a line (`kind op key`) to the file
//! `BACKPOCKET_FAULTS_LOG` names, so a test can count them across kill -9.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// What a request should suffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Fail at once.
    Error,
    /// Send part of the object, then fail as a dropped connection does.
    Cut,
    /// Hang this long, then fail as a timed-out request does.
    Timeout(Duration),
}

#[derive(Debug, Default)]
struct Plan {
    error: f64,
    cut: f64,
    slow: (f64, Duration),
    timeout: (f64, Duration),
    state: AtomicU64,
    log: Option<std::path::PathBuf>,
}

fn plan() -> Option<&'static Plan> {
    static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let spec = std::env::var("BACKPOCKET_FAULTS").ok()?;
        match parse(&spec) {
            Ok(mut p) => {
                p.log = std::env::var_os("BACKPOCKET_FAULTS_LOG").map(Into::into);
                tracing::warn!("fault injection is on: {spec}");
                Some(p)
            }
            Err(e) => {
                tracing::error!("BACKPOCKET_FAULTS ignored: {e}");
                None
            }
        }
    })
    .as_ref()
}

fn parse(spec: &str) -> Result<Plan, String> {
    let mut p = Plan::default();
    let mut seed = 1u64;
    for item in spec.split_whitespace() {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("{item}: expected key=value"))?;
        let prob = |s: &str| {
            s.parse::<f64>()
                .ok()
                .filter(|p| (0.0..=1.0).contains(p))
                .ok_or_else(|| format!("{item}: a probability is between 0 and 1"))
        };
        let with_time = |s: &str| -> Result<(f64, Duration), String> {
            let (pr, t) = s
                .split_once(':')
                .ok_or_else(|| format!("{item}: expected PROBABILITY:DURATION"))?;
            let t = humantime::parse_duration(t).map_err(|e| format!("{item}: {e}"))?;
            Ok((prob(pr)?, t))
        };
        match k {
            "seed" => seed = v.parse().map_err(|_| format!("{item}: not a number"))?,
            "error" => p.error = prob(v)?,
            "cut" => p.cut = prob(v)?,
            "slow" => p.slow = with_time(v)?,
            "timeout" => p.timeout = with_time(v)?,
            _ => return Err(format!("{item}: unknown fault")),
        }
    }
    p.state = AtomicU64::new(seed);
    Ok(p)
}

impl Plan {
    /// A uniform number in [0, 1): splitmix64 over a shared counter, so any thread may draw.
    fn draw(&self) -> f64 {
        let mut z = self
            .state
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn note(&self, kind: &str, op: &str, key: &str) {
        tracing::warn!(kind, op, key, "fault injected");
        if let Some(path) = &self.log {
            // One write(2) per line with O_APPEND: lines from several threads never mix.
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = f.write_all(format!("{kind} {op} {key}\n").as_bytes());
            }
        }
    }
}

/// Called before each request to a destination: sleeps if the plan says this one is slow,
/// and says which fault, if any, it must suffer. `upload` requests may be cut.
pub(crate) fn before(op: &str, key: &str, upload: bool) -> Option<Fault> {
    if !cfg!(feature = "fault-injection") {
        return None;
    }
    let p = plan()?;
    if p.slow.0 > 0.0 && p.draw() < p.slow.0 {
        p.note("slow", op, key);
        std::thread::sleep(p.slow.1);
    }
    if p.timeout.0 > 0.0 && p.draw() < p.timeout.0 {
        p.note("timeout", op, key);
        return Some(Fault::Timeout(p.timeout.1));
    }
    if upload && p.cut > 0.0 && p.draw() < p.cut {
        p.note("cut", op, key);
        return Some(Fault::Cut);
    }
    if p.error > 0.0 && p.draw() < p.error {
        p.note("error", op, key);
        return Some(Fault::Error);
    }
    None
}

/// The error a faulted request returns: temporary, as a real outage's would be.
pub(crate) fn error(fault: Fault) -> opendal::Error {
    let (kind, what) = match fault {
        Fault::Error => (opendal::ErrorKind::Unexpected, "injected error"),
        Fault::Cut => (
            opendal::ErrorKind::Unexpected,
            "injected fault: connection cut mid-upload",
        ),
        Fault::Timeout(_) => (
            opendal::ErrorKind::Unexpected,
            "injected fault: the request timed out",
        ),
    };
    opendal::Error::new(kind, what).set_temporary()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_bad_ones_are_refused() {
        let p = parse("seed=7 error=0.1 cut=0.5 slow=0.2:300ms timeout=0.01:2s").unwrap();
        assert_eq!(p.error, 0.1);
        assert_eq!(p.cut, 0.5);
        assert_eq!(p.slow, (0.2, Duration::from_millis(300)));
        assert_eq!(p.timeout, (0.01, Duration::from_secs(2)));
        assert!(parse("error=2").is_err());
        assert!(parse("slow=0.1").is_err());
        assert!(parse("explode=0.1").is_err());
        assert!(parse("error").is_err());
    }

    #[test]
    fn draws_are_uniform_enough_and_repeat_with_the_seed() {
        let a = parse("seed=3").unwrap();
        let b = parse("seed=3").unwrap();
        let xs: Vec<f64> = (0..10_000).map(|_| a.draw()).collect();
        let ys: Vec<f64> = (0..10_000).map(|_| b.draw()).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let below = xs.iter().filter(|x| **x < 0.1).count();
        assert!((800..1200).contains(&below), "{below}");
    }
}
