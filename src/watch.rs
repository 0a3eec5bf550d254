//! `journal status --watch`: a live view, one line per destination in 80 columns, refreshed
//! until interrupted. Rates come from the replicator's live counters (`<dest>.live.json`);
//! everything else is what `journal status` reads.

use std::collections::{HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use crate::pocket::Pocket;
use crate::report::{bytes, DestLine, Protection};

pub const WIDTH: usize = 80;

/// A live counter older than this belongs to a replicator that is not running.
const STALE: Duration = Duration::from_secs(4);
/// The rate is measured over about this long: bytes count as their pack lands (16 MiB at a
/// time), so the window must span a few packs on a slow link.
const WINDOW: Duration = Duration::from_secs(30);

/// One destination's transfer, as measured between refreshes.
#[derive(Default)]
struct Meter {
    /// (when, bytes sent so far) while sending.
    samples: VecDeque<(Instant, u64)>,
    /// The destination's cursor, and the byte counter when it was last seen to move: bytes
    /// sent since then are part of the batch in flight, still counted as pending.
    cursor: Option<u64>,
    bytes_at_cursor: u64,
}

impl Meter {
    fn observe(&mut self, p: &Pocket, d: &DestLine) -> (Option<f64>, Option<f64>, bool) {
        let now = Instant::now();
        let live = replicator::Live::load(&p.meta_dir(), &d.name).filter(|l| {
            let age = now_ns() - l.updated_ns;
            l.sending && age >= 0 && (age as u128) < STALE.as_nanos()
        });
        let cursor = d.cursor.as_ref().map(|c| c.cursor);
        let Some(live) = live else {
            self.samples.clear();
            self.cursor = cursor;
            return (None, None, false);
        };
        if self.cursor != cursor || self.samples.is_empty() {
            self.cursor = cursor;
            self.bytes_at_cursor = live.bytes_done;
        }
        if self
            .samples
            .back()
            .is_none_or(|(_, b)| *b != live.bytes_done)
        {
            self.samples.push_back((now, live.bytes_done));
        }
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
            && self.samples.len() > 2
        {
            self.samples.pop_front();
        }
        // Two different readings at least: one alone says nothing about speed.
        let rate = match (self.samples.front(), self.samples.back()) {
            (Some((t0, b0)), Some((_, b1)))
                if self.samples.len() >= 2
                    && now.duration_since(*t0) >= Duration::from_millis(500) =>
            {
                Some((b1 - b0) as f64 / now.duration_since(*t0).as_secs_f64())
            }
            _ => None,
        };
        let remaining = d
            .pending
            .1
            .saturating_sub(live.bytes_done - self.bytes_at_cursor);
        let eta = rate.filter(|r| *r > 0.0).map(|r| remaining as f64 / r);
        (rate, eta, true)
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// "3s", "4m 10s", "2h 5m", "3d 4h": the two largest units.
pub fn short_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// Cuts `s` to `w` characters, marking the cut.
fn fit(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn state_word(d: &DestLine, sending: bool) -> &'static str {
    if d.pending.0 == 0 {
        // A drain that just moved the cursor may still be looking for more.
        "up to date"
    } else if sending {
        "sending"
    } else if d.state.waiting_for.is_some() {
        "waiting"
    } else if d.state.reachable == Some(false) {
        "unreachable"
    } else if d.state.last_error.is_some() {
        "failing"
    } else {
        "pending"
    }
}

struct Row<'a> {
    d: &'a DestLine,
    rate: Option<f64>,
    eta: Option<f64>,
    sending: bool,
}

/// The view, each line at most [`WIDTH`] characters.
fn frame(p: &Pocket, prot: &Protection, rows: &[Row<'_>]) -> Vec<String> {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let clock = now.get(11..19).unwrap_or("").to_owned() + " UTC";
    let head = format!("backpocket  {}", p.root.display());
    let mut out = vec![format!(
        "{:<w$} {clock}",
        fit(&head, WIDTH - clock.len() - 1),
        w = WIDTH - clock.len() - 1
    )];
    let (records, b, oldest) = prot.pending;
    out.push(if records == 0 {
        "unprotected  nothing: every recorded change is at a destination".to_owned()
    } else {
        fit(
            &format!(
                "unprotected  {records} changes, {}, oldest {} ago",
                bytes(b),
                oldest.map_or("?".into(), |t| short_duration((now_ns() - t) as f64 / 1e9))
            ),
            WIDTH,
        )
    });
    if rows.is_empty() {
        out.push("no destinations: add one with `backpocket dest add`".into());
        return out;
    }
    out.push(format!(
        "{:<12} {:<11} {:>19} {:>8} {:>11} {:>8}",
        "DESTINATION", "STATE", "PENDING", "OLDEST", "RATE", "ETA"
    ));
    for r in rows {
        let d = r.d;
        let pending = if d.pending.0 == 0 {
            "-".to_owned()
        } else {
            format!("{} / {}", d.pending.0, bytes(d.pending.1))
        };
        let oldest = d
            .pending
            .2
            .filter(|_| d.pending.0 > 0)
            .map_or("-".into(), |t| short_duration((now_ns() - t) as f64 / 1e9));
        let rate = r
            .rate
            .map_or("-".into(), |v| format!("{}/s", bytes(v as u64)));
        let eta = match (r.eta, r.sending) {
            (Some(e), _) => short_duration(e),
            (None, true) => "…".into(),
            (None, false) => "-".into(),
        };
        out.push(format!(
            "{:<12} {:<11} {:>19} {:>8} {:>11} {:>8}",
            fit(&d.name, 12),
            state_word(d, r.sending),
            fit(&pending, 19),
            oldest,
            rate,
            eta
        ));
        let why = match (&d.state.waiting_for, &d.state.last_error) {
            (Some(w), _) if d.pending.0 > 0 => Some(format!("waiting for {w}")),
            (None, Some(e)) if !r.sending && d.pending.0 > 0 => Some(e.clone()),
            _ => None,
        };
        if let Some(w) = why {
            out.push(fit(&format!("{:13}{w}", ""), WIDTH));
        }
    }
    out
}

/// Runs the live view until Ctrl-C. `json`: one object per refresh, one per line.
pub fn watch(p: &Pocket, every: Duration, json: bool) -> Result<()> {
    let stop = crate::StopOnSignal::new(&crate::INTERRUPT)?;
    let tty = !json && std::io::stdout().is_terminal();
    let mut meters: HashMap<String, Meter> = HashMap::new();
    let mut stdout = std::io::stdout();
    while !stop.stopped() {
        let prot = Protection::read(p)?;
        let rows: Vec<Row<'_>> = prot
            .dests
            .iter()
            .map(|d| {
                let (rate, eta, sending) = meters.entry(d.name.clone()).or_default().observe(p, d);
                Row {
                    d,
                    rate,
                    eta,
                    sending,
                }
            })
            .collect();
        if json {
            let out = json!({
                "time": crate::report::rfc3339(now_ns()),
                "pending_records": prot.pending.0,
                "pending_bytes": prot.pending.1,
                "destinations": rows.iter().map(|r| json!({
                    "name": r.d.name,
                    "state": state_word(r.d, r.sending),
                    "reachable": r.d.state.reachable,
                    "waiting_for": r.d.state.waiting_for,
                    "pending_records": r.d.pending.0,
                    "pending_bytes": r.d.pending.1,
                    "rate_bytes_per_s": r.rate.map(|v| v.round()),
                    "eta_s": r.eta.map(|v| v.round()),
                })).collect::<Vec<_>>(),
            });
            writeln!(stdout, "{out}")?;
        } else {
            let lines = frame(p, &prot, &rows);
            if tty {
                // Home and clear: the view stays in place.
                write!(stdout, "\x1b[H\x1b[2J{}", lines.join("\n"))?;
            } else {
                writeln!(stdout, "{}\n", lines.join("\n"))?;
            }
        }
        stdout.flush()?;
        let until = Instant::now() + every;
        while Instant::now() < until && !stop.stopped() {
            std::thread::sleep(Duration::from_millis(50).min(every));
        }
    }
    if tty {
        writeln!(stdout)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(0.4), "0s");
        assert_eq!(short_duration(59.0), "59s");
        assert_eq!(short_duration(250.0), "4m 10s");
        assert_eq!(short_duration(7500.0), "2h 5m");
        assert_eq!(short_duration(3.0 * 86400.0 + 4.0 * 3600.0), "3d 4h");
    }

    #[test]
    fn lines_fit_80_columns() {
        let d = DestLine {
            name: "a-destination-with-a-long-name".into(),
            url: String::new(),
            mode: "vault",
            cursor: None,
            state: replicator::DestState {
                reachable: Some(false),
                last_error: Some("x".repeat(300)),
                ..Default::default()
            },
            pending: (9_999_999, u64::MAX / 2, Some(0)),
        };
        let prot = Protection {
            status: journal::Status::default(),
            dests: Vec::new(),
            pending: (9_999_999, u64::MAX / 2, Some(0)),
        };
        let p = Pocket {
            root: std::path::PathBuf::from(format!("/{}", "deep/".repeat(40))),
        };
        let rows = [Row {
            d: &d,
            rate: Some(1e12),
            eta: Some(1e9),
            sending: false,
        }];
        let lines = frame(&p, &prot, &rows);
        assert!(lines.len() >= 4, "{lines:?}");
        for l in &lines {
            assert!(
                l.chars().count() <= WIDTH,
                "{} columns: {l}",
                l.chars().count()
            );
        }
    }
}
