//! What the pocket remembers about each destination between runs, in
//! `.backpocket/dest/<name>.json`: reachability, the last success and failure (for
//! `journal status`), and the newest log object it wrote there (to notice a destination that
//! went back in time).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DestState {
    pub reachable: Option<bool>,
    pub last_attempt_ns: Option<i64>,
    pub last_success_ns: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_ns: Option<i64>,
    /// The newest log object this pocket wrote to the destination, and its hash.
    pub head_gen: Option<u64>,
    pub head_hash: Option<String>,
    /// The vault this state is about (a destination re-added at another folder starts over).
    pub vault_id: Option<String>,
    /// The `--when` condition the destination waits for, while it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// Large files whose contents are still on their way to the destination, though its cursor
    /// is past their records: written before the cursor moves, so status never calls them
    /// protected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_flight: Vec<InFlight>,
    /// A group destination: how many members restore it, and each member as last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_k: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberState>,
}

/// One member of a group destination, as the last drain, catch-up or verify saw it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberState {
    pub name: String,
    pub reachable: Option<bool>,
    /// It may lack objects the others hold (away during a write, or damaged).
    #[serde(default)]
    pub behind: bool,
    /// Objects it lacked at the last look (what is queued for it).
    #[serde(default)]
    pub missing: u64,
    pub last_error: Option<String>,
    /// Its `--when` does not hold now: what it waits for.
    #[serde(default)]
    pub waiting_for: Option<String>,
    /// When it last held everything the others did.
    pub complete_ns: Option<i64>,
    /// When every object it holds was last read and checked (`verify --read-data`).
    pub checked_ns: Option<i64>,
}

/// A file whose new contents a destination does not hold yet.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InFlight {
    pub file: u64,
    /// The record it completes, and when that was made.
    pub seq: u64,
    pub time_ns: i64,
    pub path: String,
    pub bytes: u64,
}

/// The folder of per-destination state inside `.backpocket/`.
pub fn dir(meta_dir: &Path) -> PathBuf {
    meta_dir.join("dest")
}

fn path(meta_dir: &Path, name: &str) -> PathBuf {
    dir(meta_dir).join(format!("{name}.json"))
}

impl DestState {
    /// The saved state, or the default when there is none (or it cannot be read: it is only
    /// a cache of facts the next drain re-learns).
    pub fn load(meta_dir: &Path, name: &str) -> DestState {
        std::fs::read(path(meta_dir, name))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Saves atomically and durably.
    pub fn save(&self, meta_dir: &Path, name: &str) -> Result<()> {
        let p = path(meta_dir, name);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Format(e.to_string()))?;
        platform::write_durably(&p, &bytes)
            .map_err(|e| Error::io(format!("cannot save {}", p.display()), e))
    }

    pub fn remove(meta_dir: &Path, name: &str) {
        let _ = std::fs::remove_file(path(meta_dir, name));
        let _ = std::fs::remove_file(live_path(meta_dir, name));
        let _ = std::fs::remove_file(dir(meta_dir).join(format!("{name}.lock")));
    }
}

fn live_path(meta_dir: &Path, name: &str) -> PathBuf {
    dir(meta_dir).join(format!("{name}.live.json"))
}

/// What a destination's drain is doing now, for `journal status --watch`: rewritten twice a
/// second while it sends. Not durable (a live view, not a fact to keep), and stale once
/// `updated_ns` stops moving.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Live {
    /// Whether a drain is running.
    pub sending: bool,
    /// Bytes of the pocket's files at the destination since the replicator started, counted as
    /// their packs land (a counter: the rate is its change over time).
    pub bytes_done: u64,
    pub updated_ns: i64,
}

impl Live {
    pub fn load(meta_dir: &Path, name: &str) -> Option<Live> {
        std::fs::read(live_path(meta_dir, name))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    pub(crate) fn save(&self, meta_dir: &Path, name: &str) -> std::io::Result<()> {
        let p = live_path(meta_dir, name);
        let tmp = p.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, &p)
    }
}

/// Holds a destination for one drainer at a time (the mount's replicator or `sync`): two
/// writers would fork the vault's log.
#[derive(Debug)]
pub struct DestLock {
    _file: std::fs::File,
}

impl DestLock {
    /// Takes the lock, or None if another process holds it.
    pub fn try_take(meta_dir: &Path, name: &str) -> Result<Option<DestLock>> {
        let d = dir(meta_dir);
        std::fs::create_dir_all(&d)
            .map_err(|e| Error::io(format!("cannot create {}", d.display()), e))?;
        let p = d.join(format!("{name}.lock"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| Error::io(format!("cannot open {}", p.display()), e))?;
        match crate::os::try_lock(&f) {
            Ok(true) => Ok(Some(DestLock { _file: f })),
            Ok(false) => Ok(None),
            Err(e) => Err(Error::io(format!("cannot lock {}", p.display()), e)),
        }
    }
}
