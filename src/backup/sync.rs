//! `sync`: record what changed (when not mounted), then drain every destination.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use replicator::{Mode, Progress};
use serde_json::json;

use super::{scan_unless_mounted, setup, with_progress};
use crate::exit::Failure;
use crate::keys::{self, KeyArgs};
use crate::pocket::Pocket;
use crate::report::bytes;

/// `sync`: record what changed (when not mounted), then drain every destination.
pub fn sync(p: &Pocket, watch: bool, json: bool, args: &KeyArgs) -> Result<()> {
    let config = p.config()?;
    if config.destinations.is_empty() {
        bail!("this pocket has no destinations; add one with `backpocket dest add NAME FOLDER`");
    }
    let needs_key = config.destinations.iter().any(|d| d.mode == Mode::Vault);
    let key = if needs_key {
        keys::pocket_key(&config, args, true)?
    } else {
        None
    };
    let setup = setup(p, &config, key)?;
    let stop = crate::StopOnSignal::new(&crate::INTERRUPT)?;
    let cancel = stop.flag.clone();
    loop {
        let mounted = scan_unless_mounted(p)?;
        let status = journal::Reader::open(&p.journal_path())?.status()?;
        let target = status.last_seq;
        let progress = Progress::default();
        // The bar's total: what each destination lacks (all that is recorded, for one that
        // never drained), as the drains count what lands at every destination.
        let total: u64 = config
            .destinations
            .iter()
            .map(|d| {
                status
                    .destinations
                    .iter()
                    .find(|c| c.name == d.name)
                    .map_or(status.all_pending.1, |c| c.pending_bytes)
            })
            .sum();
        progress.bytes_total.store(total, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let outcomes = with_progress(&progress, "backing up", || {
            replicator::sync(&setup, target, &progress, &cancel)
        });
        let elapsed = started.elapsed();
        let mut failed = 0;
        let mut lines = Vec::new();
        for o in &outcomes {
            match &o.result {
                Ok(r) => {
                    lines.push(
                        json!({"name": o.name, "ok": true, "records": r.drained.records,
                        "files": r.drained.files, "bytes_read": r.drained.bytes_read,
                        "bytes_uploaded": r.drained.bytes_uploaded, "cursor": r.drained.cursor,
                        "waited_for_mount": r.waited_for_mount}),
                    );
                    if !json {
                        if r.waited_for_mount {
                            println!("{:<16} up to date (drained by the mount)", o.name);
                        } else {
                            println!(
                                "{:<16} up to date: {} changes, {} files read, {} sent in {:.1}s",
                                o.name,
                                r.drained.records,
                                r.drained.files,
                                bytes(r.drained.bytes_uploaded),
                                elapsed.as_secs_f64()
                            );
                        }
                    }
                }
                Err(e) => {
                    failed += 1;
                    let reachable = !replicator::is_unreachable(e);
                    lines.push(json!({"name": o.name, "ok": false, "reachable": reachable, "error": e.explain()}));
                    if !json {
                        let what = if reachable { "failed" } else { "not reachable" };
                        println!("{:<16} {what}: {}", o.name, e.explain());
                    }
                }
            }
        }
        if json {
            println!(
                "{}",
                serde_json::to_string(&json!({"mounted": mounted, "destinations": lines}))?
            );
        }
        if !watch || cancel.load(Ordering::Relaxed) {
            if failed > 0 {
                // Keep the most telling error's exit code (a wrong key, damage).
                let first = outcomes
                    .into_iter()
                    .find_map(|o| o.result.err())
                    .expect("failed");
                return Err(Failure::new(
                    crate::exit::code_of(&anyhow::Error::from(first)),
                    anyhow!(
                        "{failed} of {} destinations are not up to date",
                        setup.dests.len()
                    ),
                )
                .into());
            }
            return Ok(());
        }
        for _ in 0..50 {
            if cancel.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
