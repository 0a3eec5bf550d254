//! What commands print: short human lines, or JSON with stable keys.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde_json::json;

use crate::pocket::Pocket;

fn system_time(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)
}

/// RFC 3339, UTC, whole seconds.
pub fn rfc3339(ns: i64) -> String {
    humantime::format_rfc3339_seconds(system_time(ns)).to_string()
}

fn age_s(ns: i64) -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    ((now - ns).max(0) as f64 / 1e9 * 1000.0).round() / 1000.0
}

/// "3.4 MiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// "2h 3m ago", rounded to what a person cares about.
pub fn ago(ns: i64) -> String {
    let secs = age_s(ns) as u64;
    let rounded = if secs >= 3600 { secs / 60 * 60 } else { secs };
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(rounded))
    )
}

/// One destination as status shows it: the config, the journal's cursor, what the replicator
/// last saw, and what it lacks.
pub struct DestLine {
    pub name: String,
    pub url: String,
    pub mode: &'static str,
    pub cursor: Option<journal::CursorStatus>,
    pub state: replicator::DestState,
    /// Records, bytes, and when the oldest was made, that this destination does not hold yet.
    pub pending: (u64, u64, Option<i64>),
}

impl DestLine {
    /// "waiting for network 10.20.0.0/16", "not reachable", or None when it can be used.
    pub fn obstacle(&self) -> Option<String> {
        match (&self.state.waiting_for, self.state.reachable) {
            (Some(w), _) => Some(format!("waiting for {w}")),
            (None, Some(false)) => Some("not reachable".into()),
            _ => None,
        }
    }
}

/// What is protected and where: the journal's figures and each destination's. Every figure
/// is an index lookup, so status, eject and the live view can ask as often as they like.
pub struct Protection {
    pub status: journal::Status,
    pub dests: Vec<DestLine>,
    /// Records, bytes and the oldest change that no configured destination holds yet.
    pub pending: (u64, u64, Option<i64>),
}

impl Protection {
    pub fn read(p: &Pocket) -> Result<Protection> {
        let reader = journal::Reader::open(&p.journal_path())?;
        let s = reader.status()?;
        let config = p.config()?;
        let dests: Vec<DestLine> = config
            .destinations
            .iter()
            .map(|d| {
                let cursor = s.destinations.iter().find(|c| c.name == d.name).cloned();
                let state = replicator::DestState::load(&p.meta_dir(), &d.name);
                // A destination that never drained lacks everything recorded.
                let mut pending = match &cursor {
                    Some(c) => (c.pending_records, c.pending_bytes, c.oldest_pending_ns),
                    None => s.all_pending,
                };
                // Large files still uploading: their records are behind the cursor, their
                // contents are not at the destination yet.
                for f in &state.in_flight {
                    pending.0 += 1;
                    pending.1 += f.bytes;
                    pending.2 = Some(pending.2.map_or(f.time_ns, |t| t.min(f.time_ns)));
                }
                DestLine {
                    name: d.name.clone(),
                    url: d.url.clone(),
                    mode: match d.mode {
                        replicator::Mode::Vault => "vault",
                        replicator::Mode::Mirror => "mirror",
                    },
                    cursor,
                    state,
                    pending,
                }
            })
            .collect();
        // "Protected" means some configured destination holds it.
        let pending = if dests.is_empty() {
            (s.pending_records, s.pending_bytes, s.oldest_pending_ns)
        } else {
            dests
                .iter()
                .map(|d| d.pending)
                .min_by_key(|(r, _, _)| *r)
                .unwrap_or((0, 0, None))
        };
        Ok(Protection {
            status: s,
            dests,
            pending,
        })
    }
}

pub fn status(p: &Pocket, json: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let Protection {
        status: s,
        dests,
        pending: (pending_records, pending_bytes, oldest_ns),
    } = Protection::read(p)?;
    // Whether the journal knows files by path (the drive renumbers them at each mount).
    let by_path = journal::Reader::open(&p.journal_path())?.identity_by_path()?;
    tracing::debug!("status took {:?}", started.elapsed());
    if json {
        let destinations: Vec<_> = dests
            .iter()
            .map(|d| {
                let (records, bytes, oldest) = d.pending;
                json!({
                    "name": d.name,
                    "url": d.url,
                    "mode": d.mode,
                    "reachable": d.state.reachable,
                    "waiting_for": d.state.waiting_for,
                    "cursor": d.cursor.as_ref().map(|c| c.cursor),
                    "pending_records": records,
                    "pending_bytes": bytes,
                    "oldest_pending_age_s": oldest.map(age_s),
                    "last_success": d.state.last_success_ns.map(rfc3339),
                    "last_error": d.state.last_error,
                    "uploading": d.state.in_flight.iter().map(|f| json!({"path": f.path, "bytes": f.bytes})).collect::<Vec<_>>(),
                    "group": d.state.group_k.map(|k| json!({
                        "k": k,
                        "n": d.state.members.len(),
                        "survives_losses": survives(k, &d.state.members),
                        "members": d.state.members.iter().map(|m| json!({
                            "name": m.name,
                            "reachable": m.reachable,
                            "holds_everything": !m.behind,
                            "objects_waiting": m.missing,
                            "last_complete": m.complete_ns.map(rfc3339),
                            "last_verified": m.checked_ns.map(rfc3339),
                            "last_error": m.last_error,
                            "waiting_for": m.waiting_for,
                        })).collect::<Vec<_>>(),
                    })),
                })
            })
            .collect();
        let out = json!({
            "pocket": p.root,
            "pending_records": pending_records,
            "pending_bytes": pending_bytes,
            "oldest_pending_age_s": oldest_ns.map(age_s),
            "journal": {
                "records": s.records,
                "last_seq": s.last_seq,
                "size_bytes": s.size_bytes,
                "last_scan": s.last_scan_ns.map(rfc3339),
                "files_known_by": if by_path { "path" } else { "inode" },
            },
            "destinations": destinations,
            "devices": crate::devices::status_snapshot(&p.meta_dir()).map(|v| json!({
                "as_of": v["as_of_ns"].as_i64().map(rfc3339),
                "devices": v["devices"].as_array().cloned().unwrap_or_default().iter().map(|d| json!({
                    "name": d["name"],
                    "this": d["this"],
                    "online": d["online"],
                    "last_seen": d["last_seen_ns"].as_i64().map(rfc3339),
                    "behind_log_objects": d["behind"],
                    "removed": d["removed"],
                    "clock_ahead_secs": d["clock_ahead_secs"],
                    "last_change": d["last_change"].is_object().then(|| json!({
                        "path": d["last_change"]["path"],
                        "removed": d["last_change"]["removed"],
                        "taken": d["last_change"]["at_ns"].as_i64().map(rfc3339),
                    })),
                })).collect::<Vec<_>>(),
                "conflicts": v["conflicts"],
            })),
            "drive": p.drive().map(|d| {
                let limits = d.limits();
                let kept = d.kept_by_the_journal();
                let mut v = serde_json::to_value(d).unwrap_or_default();
                v["limits"] = json!(limits);
                v["kept_by_the_journal"] = json!(kept);
                v
            }),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("pocket   {}", p.root.display());
    if let Some(d) = p.drive() {
        let limits = d.limits();
        if limits.is_empty() {
            println!("drive    {}", d.fs);
        } else {
            println!("drive    {}: cannot keep {}", d.fs, limits.join(", "));
        }
        let kept = d.kept_by_the_journal();
        if !kept.is_empty() {
            println!("         the journal keeps {}", kept.join(" and "));
        }
        if by_path {
            println!("         files known by path: the drive numbers them afresh at each mount");
        }
    }
    if pending_records == 0 {
        println!("pending  nothing: every recorded change is protected");
    } else {
        println!(
            "pending  {} changes, {}, oldest {}",
            pending_records,
            bytes(pending_bytes),
            oldest_ns.map(ago).unwrap_or_default()
        );
    }
    if dests.is_empty() {
        println!("         no destinations yet: these changes are only on the drive (`backpocket dest add`)");
    }
    for d in &dests {
        let (records, b, oldest) = d.pending;
        let what = if records == 0 {
            "up to date".to_owned()
        } else {
            format!(
                "{records} changes, {} pending, oldest {}",
                bytes(b),
                oldest.map(ago).unwrap_or_default()
            )
        };
        let reach = match d.obstacle() {
            Some(o) if d.state.waiting_for.is_none() => format!(", {}", o.to_uppercase()),
            Some(o) => format!(", {o}"),
            None => String::new(),
        };
        let last = d
            .state
            .last_success_ns
            .map(|t| format!("; last success {}", ago(t)))
            .unwrap_or_else(|| "; never backed up".into());
        println!("  {:<12} {:<6} {what}{reach}{last}", d.name, d.mode);
        for f in &d.state.in_flight {
            println!(
                "               uploading {} ({}), saved {}",
                f.path,
                bytes(f.bytes),
                ago(f.time_ns)
            );
        }
        if let Some(e) = &d.state.last_error {
            println!("               last error: {e}");
        }
        if let Some(k) = d.state.group_k {
            print_group(k, &d.state.members);
        }
    }
    if let Some(v) = crate::devices::status_snapshot(&p.meta_dir()) {
        print_devices(&v);
    }
    println!(
        "journal  {} records, {}, last scan {}",
        s.records,
        bytes(s.size_bytes),
        s.last_scan_ns.map(ago).unwrap_or_else(|| "never".into())
    );
    Ok(())
}

/// The devices sharing the pocket's vault, as the mount last saw them.
fn print_devices(v: &serde_json::Value) {
    let as_of = v["as_of_ns"].as_i64().map(ago).unwrap_or_default();
    println!("devices  as the mount saw them {as_of}:");
    for d in v["devices"].as_array().into_iter().flatten() {
        let name = d["name"].as_str().unwrap_or("?");
        let state = if d["removed"] == true {
            "REMOVED: may no longer write".to_owned()
        } else if d["this"] == true {
            "this device".to_owned()
        } else {
            let seen = if d["online"] == true {
                "online".to_owned()
            } else {
                match d["last_seen_ns"].as_i64() {
                    Some(t) => format!("last seen {}", ago(t)),
                    None => "never seen".into(),
                }
            };
            let state = match d["behind"].as_u64() {
                Some(0) => format!("{seen}; all its changes taken here"),
                Some(n) => format!("{seen}; {n} log objects of its changes not taken here yet"),
                None => seen,
            };
            match d["clock_ahead_secs"].as_i64() {
                Some(s) => format!("{state}; its clock is {}", crate::devices::clock_offset(s)),
                None => state,
            }
        };
        println!("  {name:<12} {state}");
        // Who changed what: the last of its changes taken here.
        let c = &d["last_change"];
        if let (Some(path), Some(at)) = (c["path"].as_str(), c["at_ns"].as_i64()) {
            let what = if c["removed"] == true {
                "removed"
            } else {
                "changed"
            };
            println!(
                "  {:<12} last took its change: {what} {path}, {}",
                "",
                ago(at)
            );
        }
    }
    match v["conflicts"].as_u64() {
        Some(0) | None => {}
        Some(n) => {
            println!("         {n} conflicts kept both versions (`backpocket devices` lists them)")
        }
    }
}

/// How many member losses a group survives now: members holding everything, beyond the `k`
/// a restore needs (None while fewer than k hold everything).
fn survives(k: usize, members: &[replicator::MemberState]) -> Option<usize> {
    let whole = members
        .iter()
        .filter(|m| !m.behind && m.reachable != Some(false))
        .count();
    whole.checked_sub(k)
}

fn print_group(k: usize, members: &[replicator::MemberState]) {
    let n = members.len();
    match survives(k, members) {
        Some(0) => {
            println!("               any {k} of {n} restore it; it survives NO member loss now")
        }
        Some(s) => println!(
            "               any {k} of {n} restore it; it survives the loss of any {s} now"
        ),
        None => println!(
            "               any {k} of {n} restore it; FEWER THAN {k} members hold everything now"
        ),
    }
    for m in members {
        let away = match &m.waiting_for {
            Some(what) => format!("waiting for {what} (its --when)"),
            None => "AWAY".into(),
        };
        let state = match (m.reachable, m.behind) {
            (Some(false), _) => format!(
                "{away}{}",
                if m.missing > 0 {
                    format!(", {} objects waiting for it", m.missing)
                } else {
                    ", may miss what was written since".into()
                }
            ),
            (_, true) if m.missing > 0 => format!("behind: {} objects to bring there", m.missing),
            (_, true) => "not looked at yet in this session".into(),
            (_, false) => "holds everything".into(),
        };
        let checked = m
            .checked_ns
            .map(|t| format!("; verified {}", ago(t)))
            .unwrap_or_else(|| "; never verified".into());
        println!("                 {:<12} {state}{checked}", m.name);
        if let (Some(false), Some(e), None) = (m.reachable, &m.last_error, &m.waiting_for) {
            println!("                              {e}");
        }
    }
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn log(p: &Pocket, after: u64, limit: usize, json: bool) -> Result<()> {
    let reader = journal::Reader::open(&p.journal_path())?;
    for r in reader.records_after(after, limit)? {
        use journal::Change as C;
        let op = r.change.op().name();
        let file = r.change.file();
        let (mut parent, mut name, mut to_parent, mut to_name, mut size) =
            (None, None, None, None, None);
        let mut value = None;
        match &r.change {
            C::Create {
                parent: p,
                name: n,
                meta,
                ..
            }
            | C::Mkdir {
                parent: p,
                name: n,
                meta,
                ..
            }
            | C::Symlink {
                parent: p,
                name: n,
                meta,
                ..
            } => {
                parent = Some(*p);
                name = Some(n.clone());
                size = Some(meta.size);
            }
            C::Link {
                parent: p, name: n, ..
            }
            | C::Unlink {
                parent: p, name: n, ..
            }
            | C::Rmdir {
                parent: p, name: n, ..
            } => {
                parent = Some(*p);
                name = Some(n.clone());
            }
            C::Rename {
                parent: p,
                name: n,
                new_parent,
                new_name,
                ..
            } => {
                parent = Some(*p);
                name = Some(n.clone());
                to_parent = Some(*new_parent);
                to_name = Some(new_name.clone());
            }
            C::SetAttr { meta, .. } | C::Content { meta, .. } => size = Some(meta.size),
            C::SetXattr {
                name: n, value: v, ..
            } => {
                name = Some(n.clone());
                value = Some(v.len());
            }
            C::RemoveXattr { name: n, .. } => name = Some(n.clone()),
        }
        if json {
            let out = json!({
                "seq": r.seq,
                "time": rfc3339(r.time_ns),
                "op": op,
                "file": file,
                "parent": parent,
                "name": name.as_deref().map(show),
                "new_parent": to_parent,
                "new_name": to_name.as_deref().map(show),
                "size": size,
                "value_len": value,
            });
            println!("{out}");
        } else {
            let mut line = format!(
                "{:>8} {} {:<11} file {}",
                r.seq,
                rfc3339(r.time_ns),
                op,
                file
            );
            if let (Some(pa), Some(n)) = (parent, &name) {
                line.push_str(&format!(" {pa}/{}", show(n)));
            }
            if let (Some(pa), Some(n)) = (to_parent, &to_name) {
                line.push_str(&format!(" -> {pa}/{}", show(n)));
            }
            if let Some(s) = size {
                line.push_str(&format!(" size {s}"));
            }
            println!("{line}");
        }
    }
    Ok(())
}

pub fn scan(p: &Pocket, r: &journal::ScanReport, json: bool) {
    if json {
        let out = json!({
            "pocket": p.root,
            "entries": r.entries,
            "changes": r.changes(),
            "created": r.created,
            "removed": r.removed,
            "renamed": r.renamed,
            "linked": r.linked,
            "modified": r.modified,
            "reread": r.reread,
            "attrs": r.attrs,
            "xattrs": r.xattrs,
            "unreadable": r.unreadable,
            "duration_s": r.duration.as_secs_f64(),
        });
        println!("{out}");
        return;
    }
    println!("{}", scan_line(r));
    for u in &r.unreadable {
        println!("  could not read: {u}");
    }
}

/// One line: what a scan found.
pub fn scan_line(r: &journal::ScanReport) -> String {
    if r.changes() == 0 {
        return format!(
            "scanned {} entries in {:.2} s: no changes made outside the mount",
            r.entries,
            r.duration.as_secs_f64()
        );
    }
    let mut parts = Vec::new();
    for (n, what) in [
        (r.created, "new"),
        (r.removed, "removed"),
        (r.renamed, "moved"),
        (r.linked, "new links"),
        (r.modified, "modified"),
        (r.reread, "read again after an unclean end"),
        (r.attrs, "metadata changes"),
        (r.xattrs, "xattr changes"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    format!(
        "scanned {} entries in {:.2} s: recorded {}",
        r.entries,
        r.duration.as_secs_f64(),
        parts.join(", ")
    )
}
