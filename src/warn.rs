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
    let mut out = match Protection::read(p) {
        Ok(prot) => dest_findings(&prot, config, replicator_now_ns()),
        Err(e) => {
            tracing::debug!("warnings: cannot read the journal: {e:#}");
            Vec::new()
        }
    };
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

/// Per destination, at most one: changes it has lacked longer than its limit; or, with
/// nothing waiting, that it has been unreachable that long (what changes next would have
/// nowhere to go). Waiting for a `--when` condition with nothing pending is by design.
fn dest_findings(prot: &Protection, config: &Config, now: i64) -> Vec<(String, String, String)> {
    let default_after = humantime::parse_duration(&config.warnings.unprotected_after)
        .unwrap_or(Duration::from_secs(3 * 86_400));
    let age = |t: i64| Duration::from_nanos((now - t).max(0) as u64);
    let words = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs()));
    let mut out = Vec::new();
    for d in &prot.dests {
        let after = config
            .destination(&d.name)
            .and_then(|c| c.warn_after.as_deref())
            .and_then(|a| humantime::parse_duration(a).ok())
            .unwrap_or(default_after);
        let key = format!("dest:{}", d.name);
        let (records, b, oldest) = d.pending;
        if let Some(waited) = oldest.map(age).filter(|w| records > 0 && *w >= after) {
            let why = match (d.obstacle(), &d.state.last_error) {
                (Some(o), _) => o,
                (None, Some(e)) => format!("failing: {e}"),
                (None, None) => "still sending".into(),
            };
            out.push((
                key,
                format!("{} has not received changes for {}", d.name, words(waited)),
                format!(
                    "{records} changes ({}) made on the drive are not at {} yet ({why}); \
                     they are only on the drive until it is reachable",
                    bytes(b),
                    d.name
                ),
            ));
            continue;
        }
        let since = d
            .state
            .last_success_ns
            .or(d.cursor.as_ref().map(|c| c.updated_ns));
        let unreachable = d.state.reachable == Some(false) && d.state.waiting_for.is_none();
        if let Some(gone) = since.map(age).filter(|g| unreachable && *g >= after) {
            let last = d
                .state
                .last_error
                .as_deref()
                .map_or(String::new(), |e| format!(" ({e})"));
            out.push((
                key,
                format!("{} has not been reachable for {}", d.name, words(gone)),
                format!(
                    "the last backup to {} was {} ago{last}; nothing waits for it now, but \
                     what changes next stays only on the drive until it is reachable again",
                    d.name,
                    words(gone)
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

    fn dest(
        name: &str,
        pending: (u64, u64, Option<i64>),
        state: replicator::DestState,
    ) -> crate::report::DestLine {
        crate::report::DestLine {
            name: name.into(),
            url: String::new(),
            mode: "vault",
            cursor: None,
            state,
            pending,
        }
    }

    #[test]
    fn destinations_warn_after_their_limit_and_not_before() {
        let c: Config = toml::from_str("format = 1\nid = \"x\"\n").unwrap();
        let day = 86_400_000_000_000i64;
        let now = 100 * day;
        let unreachable = replicator::DestState {
            reachable: Some(false),
            last_success_ns: Some(now - 4 * day),
            last_error: Some("the disk is not plugged in".into()),
            ..Default::default()
        };
        let prot = |dests| Protection {
            status: journal::Status::default(),
            dests,
            pending: (0, 0, None),
        };
        // Changes waiting 4 days (limit 3): told, with why.
        let f = dest_findings(
            &prot(vec![dest(
                "home",
                (3, 10, Some(now - 4 * day)),
                unreachable.clone(),
            )]),
            &c,
            now,
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].1.contains("home has not received changes for 4days"),
            "{f:?}"
        );
        assert!(f[0].2.contains("not reachable"), "{f:?}");
        // Waiting 2 days: quiet.
        let f = dest_findings(
            &prot(vec![dest(
                "home",
                (3, 10, Some(now - 2 * day)),
                Default::default(),
            )]),
            &c,
            now,
        );
        assert!(f.is_empty(), "{f:?}");
        // Nothing pending but unreachable for 4 days: told.
        let f = dest_findings(
            &prot(vec![dest("home", (0, 0, None), unreachable.clone())]),
            &c,
            now,
        );
        assert!(f[0].1.contains("has not been reachable for 4days"), "{f:?}");
        assert!(f[0].2.contains("the disk is not plugged in"), "{f:?}");
        // Waiting for its --when condition with nothing pending: by design, quiet.
        let waiting = replicator::DestState {
            waiting_for: Some("network 10.20.0.0/16".into()),
            ..unreachable
        };
        assert!(
            dest_findings(&prot(vec![dest("office", (0, 0, None), waiting)]), &c, now).is_empty()
        );
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
