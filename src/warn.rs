//! Telling the user when protection is at risk: changes that have waited too long for a
//! destination, a drive about to fill, damage found by verify. Always a log line; a desktop
//! notification too where a notification service runs. Quiet for short gaps: a drive that
//! travels is away from the office for a weekend as a matter of course.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::pocket::{Config, Pocket};
use crate::report::{bytes, Protection};

/// A warning is repeated this often while its cause lasts.
const REPEAT: Duration = Duration::from_secs(24 * 3600);

/// For clap: a duration such as "12h", "3d", "90s".
pub fn parse_duration_arg(s: &str) -> Result<String, String> {
    humantime::parse_duration(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("{e}: give a duration such as 12h, 3d or 90s"))
}

/// How little free space is too little.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FreeLimit {
    Percent(f64),
    Bytes(u64),
}

impl FreeLimit {
    pub fn parse(s: &str) -> Result<FreeLimit, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            return match p.trim().parse::<f64>() {
                Ok(v) if (0.0..=100.0).contains(&v) => Ok(FreeLimit::Percent(v)),
                _ => Err(format!("{s:?} is not a share between 0% and 100%")),
            };
        }
        parse_size(t)
            .map(FreeLimit::Bytes)
            .ok_or_else(|| format!("{s:?} is neither a share (5%) nor a size (2GiB)"))
    }

    fn too_little(self, free: u64, total: u64) -> bool {
        match self {
            FreeLimit::Percent(p) => total > 0 && (free as f64) < total as f64 * p / 100.0,
            FreeLimit::Bytes(b) => free < b,
        }
    }
}

/// "2GiB", "500M", "1T", "4096".
fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim_end_matches('B');
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((n * mult) as u64)
}

/// Logs the warning and shows it as a desktop notification when `desktop` and a notification
/// service can be reached. Returns whether a notification was shown.
pub fn warn(title: &str, body: &str, desktop: bool) -> bool {
    tracing::warn!("{title}: {body}");
    if !desktop {
        return false;
    }
    match notify(title, body) {
        Ok(()) => true,
        Err(why) => {
            tracing::debug!("no desktop notification ({why}); the log has it");
            false
        }
    }
}

/// Through `notify-send` (libnotify), which speaks the freedesktop notification protocol on
/// the session bus: every desktop's notification service answers it.
fn notify(title: &str, body: &str) -> Result<(), String> {
    let mut cmd = std::process::Command::new("notify-send");
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none() {
        // A daemon started outside the session (a unit, --daemon from a script) still reaches
        // the user's bus at its standard place.
        let bus = format!("/run/user/{}/bus", rustix::process::getuid().as_raw());
        if !Path::new(&bus).exists() {
            return Err("no session bus".into());
        }
        cmd.env("DBUS_SESSION_BUS_ADDRESS", format!("unix:path={bus}"));
    }
    let mut child = cmd
        .args([
            "--app-name=backpocket",
            "--urgency=critical",
            "--icon=drive-removable-media",
            &format!("backpocket: {title}"),
            body,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("notify-send: {e}"))?;
    // A hung bus must not hang the caller.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => return Err(format!("notify-send: {s}")),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("notify-send did not answer".into());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// One check's findings: a key per cause (so each is told once) and what to say.
fn findings(p: &Pocket, config: &Config) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let default_after = humantime::parse_duration(&config.warnings.unprotected_after)
        .unwrap_or(Duration::from_secs(3 * 86_400));
    match Protection::read(p) {
        Ok(prot) => {
            let now = replicator_now_ns();
            for d in &prot.dests {
                let after = config
                    .destination(&d.name)
                    .and_then(|c| c.warn_after.as_deref())
                    .and_then(|a| humantime::parse_duration(a).ok())
                    .unwrap_or(default_after);
                let (records, b, oldest) = d.pending;
                let Some(oldest) = oldest else { continue };
                let waited = Duration::from_nanos((now - oldest).max(0) as u64);
                if records == 0 || waited < after {
                    continue;
                }
                let why = match (d.obstacle(), &d.state.last_error) {
                    (Some(o), _) => o,
                    (None, Some(e)) => format!("failing: {e}"),
                    (None, None) => "still sending".into(),
                };
                let waited = humantime::format_duration(Duration::from_secs(waited.as_secs()));
                out.push((
                    format!("dest:{}", d.name),
                    format!("{} has not received changes for {waited}", d.name),
                    format!(
                        "{records} changes ({}) made on the drive are not at {} yet ({why}); \
                         they are only on the drive until it is reachable",
                        bytes(b),
                        d.name
                    ),
                ));
            }
        }
        Err(e) => tracing::debug!("warnings: cannot read the journal: {e:#}"),
    }
    let limit =
        FreeLimit::parse(&config.warnings.drive_free_below).unwrap_or(FreeLimit::Percent(5.0));
    if let Ok(st) = rustix::fs::statvfs(&p.root) {
        let free = st.f_bavail * st.f_frsize;
        let total = st.f_blocks * st.f_frsize;
        if limit.too_little(free, total) {
            out.push((
                "drive".into(),
                "the drive is nearly full".into(),
                format!(
                    "{} free of {} on the drive holding {}; once it is full, saving files in the \
                     pocket fails: make room or move files off it",
                    bytes(free),
                    bytes(total),
                    p.root.display()
                ),
            ));
        }
    }
    out
}

fn replicator_now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// How often the mount checks: every minute, or more often for limits shorter than minutes.
fn interval(config: &Config) -> Duration {
    let shortest = std::iter::once(config.warnings.unprotected_after.as_str())
        .chain(
            config
                .destinations
                .iter()
                .filter_map(|d| d.warn_after.as_deref()),
        )
        .filter_map(|a| humantime::parse_duration(a).ok())
        .min()
        .unwrap_or(Duration::from_secs(60));
    (shortest / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The mount's watch over its pocket: checks until `stop`, telling each cause once (again
/// every day while it lasts) and logging when it clears.
pub fn spawn_watch(
    p: Pocket,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("warnings".into())
        .spawn(move || {
            let mut told: HashMap<String, Instant> = HashMap::new();
            let mut next = Instant::now() + Duration::from_secs(1);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                if Instant::now() < next {
                    continue;
                }
                let Ok(config) = p.config() else {
                    next = Instant::now() + Duration::from_secs(60);
                    continue;
                };
                next = Instant::now() + interval(&config);
                let found = findings(&p, &config);
                told.retain(|key, _| {
                    let still = found.iter().any(|(k, _, _)| k == key);
                    if !still {
                        tracing::info!("resolved: {}", key.trim_start_matches("dest:"));
                    }
                    still
                });
                for (key, title, body) in found {
                    if told.get(&key).is_some_and(|t| t.elapsed() < REPEAT) {
                        continue;
                    }
                    warn(&title, &body, config.warnings.notify);
                    told.insert(key, Instant::now());
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_limits() {
        assert_eq!(FreeLimit::parse("5%"), Ok(FreeLimit::Percent(5.0)));
        assert_eq!(FreeLimit::parse("2GiB"), Ok(FreeLimit::Bytes(2 << 30)));
        assert_eq!(FreeLimit::parse("8GiB"), Ok(FreeLimit::Bytes(8 << 30)));
        assert_eq!(FreeLimit::parse("500M"), Ok(FreeLimit::Bytes(500_000_000)));
        assert!(FreeLimit::parse("120%").is_err());
        assert!(FreeLimit::parse("lots").is_err());
        assert!(FreeLimit::Percent(5.0).too_little(4, 100));
        assert!(!FreeLimit::Percent(5.0).too_little(5, 100));
        assert!(FreeLimit::Bytes(10).too_little(9, 1000));
        assert!(!FreeLimit::Percent(5.0).too_little(0, 0));
    }

    #[test]
    fn checks_often_enough_for_short_limits() {
        let mut c: Config = toml::from_str("format = 1\nid = \"x\"\n").unwrap();
        assert_eq!(interval(&c), Duration::from_secs(60));
        c.warnings.unprotected_after = "8s".into();
        assert_eq!(interval(&c), Duration::from_secs(2));
        c.warnings.unprotected_after = "1s".into();
        assert_eq!(interval(&c), Duration::from_secs(1));
    }
}
