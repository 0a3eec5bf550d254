//! Several devices on one vault: who writes it, when each was last seen, and whose log is
//! whose.
//!
//! The vault's first pocket keeps the plain `log/` and `checkpoints/`; a pocket that joins
//! (`init --join`) is a device with its own id, its own hash chain under `chains/<id>/` and
//! the same packs and index as everyone (content is deduplicated across devices). No lock is
//! taken to write: each device only ever appends to its own chain and adds packs. What a
//! device is and whether it was removed is `devices/<id>`; when it was last seen, and how far
//! its log goes, is `presence/<id>`, rewritten while it is mounted. Both are sealed with the
//! vault's key, so only a holder of the passphrase can join, announce or remove a device.

use serde::{Deserialize, Serialize};

use tracing::warn;

use crate::error::{Error, Result};
use crate::format::{self, DEVICES_FORMAT};
use crate::vault::{now_ns, Vault};

/// A device is online while its presence is younger than this (it is rewritten every
/// [`PRESENCE_EVERY`] while mounted).
pub const ONLINE_FOR_NS: i64 = 90 * 1_000_000_000;
/// How often a mounted device rewrites its presence.
pub const PRESENCE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// `devices/<id>`: a device that writes the vault.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeviceRecord {
    pub id: String,
    /// The name the user knows it by (`--name`, or the machine's name).
    pub name: String,
    pub joined_ns: i64,
    /// Set by `devices remove`: its drains are refused from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_ns: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_by: Option<String>,
    /// What it started from when it joined: a chain (`""`: the first pocket's) and the log
    /// object whose tree it took. The others compare its changes with that the first time
    /// they meet it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_from: Option<(String, u64)>,
}

/// `presence/<id>`: the device's last word.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Presence {
    pub time_ns: i64,
    /// False once it unmounted cleanly (a crash leaves it true until it grows old).
    pub online: bool,
    /// The newest log object of its chain when it wrote this.
    pub gen: u64,
    pub host: String,
}

/// What `devices` shows for one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub record: DeviceRecord,
    pub presence: Option<Presence>,
    /// The vault's first pocket (whose log is `log/`).
    pub first: bool,
    /// Its newest log object, from a listing of its chain.
    pub head_gen: u64,
}

impl DeviceInfo {
    pub fn online(&self) -> bool {
        self.presence
            .as_ref()
            .is_some_and(|p| p.online && now_ns() - p.time_ns < ONLINE_FOR_NS)
    }
}

/// A clock this far from this machine's is said to be off (the presence period, and the time
/// between two listings, explain less than a minute).
pub const CLOCK_OFF_NS: i64 = 5 * 60 * 1_000_000_000;

/// Whether devices are online, by this machine's clock. A mounted device rewrites its presence
/// every [`PRESENCE_EVERY`]: one whose presence changed within the last 90 s, as seen here, is
/// online, whatever its own clock says (devices' clocks may disagree by hours). At first
/// sight there is nothing to compare with, so its time is taken, until 90 s without a change
/// say it is not writing any more. Once seen changing, its clock's offset is known too.
#[derive(Debug, Default)]
pub struct PresenceWatch {
    seen: std::collections::BTreeMap<String, Seen>,
}

#[derive(Debug)]
struct Seen {
    time_ns: i64,
    first: std::time::Instant,
    changed: Option<std::time::Instant>,
    ahead_ns: Option<i64>,
}

impl PresenceWatch {
    /// Takes a listing, made when this machine's clocks said `now_ns` and `now`.
    pub fn update(&mut self, devices: &[DeviceInfo], now_ns: i64, now: std::time::Instant) {
        for d in devices {
            let Some(p) = &d.presence else { continue };
            match self.seen.get_mut(&d.record.id) {
                None => {
                    self.seen.insert(
                        d.record.id.clone(),
                        Seen {
                            time_ns: p.time_ns,
                            first: now,
                            changed: None,
                            ahead_ns: None,
                        },
                    );
                }
                Some(s) if s.time_ns != p.time_ns => {
                    s.time_ns = p.time_ns;
                    s.changed = Some(now);
                    s.ahead_ns = Some(p.time_ns - now_ns);
                }
                Some(_) => {}
            }
        }
    }

    pub fn online(&self, d: &DeviceInfo, now: std::time::Instant) -> bool {
        let Some(p) = &d.presence else { return false };
        if !p.online {
            return false;
        }
        let fresh = |t: std::time::Instant| {
            now.saturating_duration_since(t).as_nanos() < ONLINE_FOR_NS as u128
        };
        match self.seen.get(&d.record.id) {
            Some(Seen {
                changed: Some(t), ..
            }) => fresh(*t),
            Some(s) => fresh(s.first) && d.online(),
            None => d.online(),
        }
    }

    /// How far its clock is ahead of this one's (negative: behind), once seen changing, and
    /// only when more than [`CLOCK_OFF_NS`].
    pub fn clock_ahead_ns(&self, id: &str) -> Option<i64> {
        self.seen
            .get(id)?
            .ahead_ns
            .filter(|a| a.abs() > CLOCK_OFF_NS)
    }
}

/// A device id as `init` makes them (hex): it names paths in the vault and on the drive, so
/// nothing else is taken for one.
pub fn is_device_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Vault {
    fn device_key(id: &str) -> String {
        format!("devices/{id}")
    }

    fn read_sealed<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
        kind: &str,
        name: &str,
    ) -> Result<Option<T>> {
        match self.store.get(key) {
            Ok(raw) => Ok(Some(format::open_object(
                self.objects_key(),
                kind,
                name,
                &raw,
            )?)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The device's record, if it joined (the first pocket has one once it has announced
    /// itself).
    pub fn device_record(&self, id: &str) -> Result<Option<DeviceRecord>> {
        let r: Option<DeviceRecord> = self.read_sealed(&Vault::device_key(id), "device", id)?;
        if let Some(r) = &r {
            if r.id != id {
                return Err(Error::Damaged {
                    object: Vault::device_key(id),
                    detail: format!("it names another device ({})", r.id),
                });
            }
        }
        Ok(r)
    }

    fn put_device_record(&self, r: &DeviceRecord) -> Result<()> {
        let sealed = format::seal_object(self.objects_key(), "device", &r.id, r)?;
        self.store.put(&Vault::device_key(&r.id), sealed)
    }

    /// Makes `id` a device of this vault, writing to its own chain. The vault's config moves
    /// to the devices format first, so that an older backpocket, which would not see the
    /// other chains (and whose maintenance would drop their data), refuses it.
    pub fn join_device(
        &mut self,
        id: &str,
        name: &str,
        first_name: &str,
        started_gen: u64,
    ) -> Result<()> {
        if !is_device_id(id) {
            return Err(Error::Format(format!("{id} is not a device id")));
        }
        if id == self.config.pocket_id {
            return Err(Error::Format(
                "this pocket already writes the vault; a device joins with a pocket of its own"
                    .into(),
            ));
        }
        if name == first_name || self.devices()?.iter().any(|d| d.record.name == name) {
            return Err(Error::Format(format!(
                "a device named {name} already writes this vault; give another --name"
            )));
        }
        self.raise_config(DEVICES_FORMAT)?;
        let prefix = Vault::chain_prefix(id);
        self.store.make_dirs(&[
            "devices".to_owned(),
            "presence".to_owned(),
            "chains".to_owned(),
            prefix.trim_end_matches('/').to_owned(),
            format!("{prefix}log"),
            format!("{prefix}checkpoints"),
        ])?;
        // The first pocket gets its record with the first device that joins: every device
        // then names it alike (conflict copies carry the name).
        let first = self.config.pocket_id.clone();
        if self.device_record(&first)?.is_none() {
            self.put_device_record(&DeviceRecord {
                id: first,
                name: first_name.to_owned(),
                joined_ns: self.config.created_ns,
                removed_ns: None,
                removed_by: None,
                started_from: None,
            })?;
        }
        self.put_device_record(&DeviceRecord {
            id: id.to_owned(),
            name: name.to_owned(),
            joined_ns: now_ns(),
            removed_ns: None,
            removed_by: None,
            started_from: Some((String::new(), started_gen)),
        })
    }

    /// Whether devices other than the first have joined (the vault's format says so).
    pub fn has_devices(&self) -> bool {
        self.config.backpocket_vault >= DEVICES_FORMAT
    }

    /// Refuses a pocket that may not write this vault: another vault's pocket, or a device
    /// that was removed.
    pub fn check_writer(&self, pocket_id: &str) -> Result<()> {
        if pocket_id == self.config.pocket_id && !self.has_devices() {
            return Ok(());
        }
        match self.device_record(pocket_id)? {
            Some(r) if r.removed_ns.is_some() => Err(Error::RemovedDevice {
                name: r.name,
                by: r.removed_by.unwrap_or_else(|| "another device".into()),
            }),
            Some(_) => Ok(()),
            None if pocket_id == self.config.pocket_id => Ok(()),
            None => Err(Error::OtherPocket(self.config.pocket_id.clone())),
        }
    }

    /// Every device, the first pocket first, with its presence and how far its log goes.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>> {
        let mut out = Vec::new();
        let first = self.config.pocket_id.clone();
        let mut ids = vec![first.clone()];
        for (key, _) in self.store.list("devices/")? {
            let id = key.trim_start_matches("devices/");
            if is_device_id(id) && id != first {
                ids.push(id.to_owned());
            }
        }
        for id in ids {
            let record = match self.device_record(&id) {
                Ok(Some(r)) => r,
                // Not sealed with this vault's key (planted from another vault, or damaged):
                // no device of this vault, whatever its name says.
                Err(e @ (Error::Auth | Error::Damaged { .. })) => {
                    warn!(device = id, "not a device of this vault: {e}");
                    continue;
                }
                Err(e) => return Err(e),
                Ok(None) if id == first => DeviceRecord {
                    id: id.clone(),
                    name: "drive".into(),
                    joined_ns: self.config.created_ns,
                    removed_ns: None,
                    removed_by: None,
                    started_from: None,
                },
                Ok(None) => continue,
            };
            // A damaged presence is as good as none.
            let presence: Option<Presence> = self
                .read_sealed(&format!("presence/{id}"), "presence", &id)
                .unwrap_or_else(|e| {
                    warn!(device = id, "its presence cannot be read: {e}");
                    None
                });
            let head_gen = self.chain_head(if id == first { "" } else { &id })?;
            out.push(DeviceInfo {
                first: id == first,
                record,
                presence,
                head_gen,
            });
        }
        Ok(out)
    }

    /// The newest log object of a device's chain (0: none yet), from its listing.
    pub fn chain_head(&self, chain: &str) -> Result<u64> {
        Ok(self
            .chain_map(chain, &Default::default())?
            .at
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0))
    }

    /// Says this device is online (or, at a clean unmount, that it is not).
    pub fn put_presence(&self, online: bool, gen: u64) -> Result<()> {
        let id = self.device().to_owned();
        let p = Presence {
            time_ns: now_ns(),
            online,
            gen,
            host: crate::os::hostname(),
        };
        let sealed = format::seal_object(self.objects_key(), "presence", &id, &p)?;
        self.store.put(&format!("presence/{id}"), sealed)
    }

    /// `devices remove`: the device's drains are refused from now on. It keeps the
    /// passphrase, so it can still read what the vault held when it was removed.
    pub fn remove_device(&self, name: &str, by: &str) -> Result<DeviceRecord> {
        let devices = self.devices()?;
        let d = devices
            .iter()
            .find(|d| d.record.name == name || d.record.id == name)
            .ok_or_else(|| {
                Error::Format(format!(
                    "no device named {name} writes this vault; see `backpocket devices`"
                ))
            })?;
        if d.first {
            return Err(Error::Format(format!(
                "{name} is the vault's first pocket; its log is where the vault began and cannot be removed"
            )));
        }
        if d.record.id == self.device() {
            return Err(Error::Format(format!(
                "{name} is this pocket; remove it from another device"
            )));
        }
        let mut r = d.record.clone();
        if r.removed_ns.is_none() {
            r.removed_ns = Some(now_ns());
            r.removed_by = Some(by.to_owned());
            self.put_device_record(&r)?;
        }
        Ok(r)
    }

    /// Every chain of the vault (`""`: the first pocket's), removed devices' too (their log
    /// stays restorable).
    pub(crate) fn chains(&self) -> Result<Vec<String>> {
        let mut out = vec![String::new()];
        if !self.has_devices() {
            return Ok(out);
        }
        for (key, _) in self.store.list("devices/")? {
            let id = key.trim_start_matches("devices/");
            if is_device_id(id) && id != self.config.pocket_id {
                out.push(id.to_owned());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen_at(time_ns: i64, online: bool) -> DeviceInfo {
        DeviceInfo {
            record: DeviceRecord {
                id: "a1a1".into(),
                name: "laptop".into(),
                joined_ns: 0,
                removed_ns: None,
                removed_by: None,
                started_from: None,
            },
            presence: Some(Presence {
                time_ns,
                online,
                gen: 0,
                host: "laptop".into(),
            }),
            first: false,
            head_gen: 0,
        }
    }

    /// A device whose clock is hours behind is online while its presence keeps changing, and
    /// one hours ahead is not online for hours after it stopped: this machine's clock judges.
    #[test]
    fn presence_is_judged_by_this_machines_clock_whatever_the_others_say() {
        use std::time::{Duration, Instant};
        let hour = 3_600_000_000_000i64;
        let t0 = Instant::now();
        let now_ns = now_ns();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let ns = |n: i64| now_ns + n * 1_000_000_000;

        // Three hours behind: its time says offline, its changes say online.
        let mut w = PresenceWatch::default();
        let d = seen_at(ns(0) - 3 * hour, true);
        w.update(std::slice::from_ref(&d), ns(0), s(0));
        assert!(!w.online(&d, s(0)), "at first sight its own time is taken");
        let d = seen_at(ns(30) - 3 * hour, true);
        w.update(std::slice::from_ref(&d), ns(30), s(30));
        assert!(w.online(&d, s(30)));
        assert!(w.online(&d, s(100)));
        assert!(!w.online(&d, s(130)), "90 s without a change: gone");
        let ahead = w.clock_ahead_ns("a1a1").unwrap();
        assert!((ahead + 3 * hour).abs() < 60_000_000_000, "{ahead}");

        // Three hours ahead, and gone: online at first sight, not once 90 s pass unchanged.
        let mut w = PresenceWatch::default();
        let d = seen_at(ns(0) + 3 * hour, true);
        w.update(std::slice::from_ref(&d), ns(0), s(0));
        assert!(w.online(&d, s(0)));
        w.update(std::slice::from_ref(&d), ns(60), s(60));
        assert!(!w.online(&d, s(91)));
        assert_eq!(w.clock_ahead_ns("a1a1"), None, "never seen changing");

        // Said offline (a clean unmount): offline whatever the times.
        let mut w = PresenceWatch::default();
        let d = seen_at(ns(0), false);
        w.update(std::slice::from_ref(&d), ns(0), s(0));
        assert!(!w.online(&d, s(0)));

        // A clock right: no offset reported.
        let mut w = PresenceWatch::default();
        w.update(&[seen_at(ns(0), true)], ns(0), s(0));
        w.update(&[seen_at(ns(30), true)], ns(31), s(31));
        assert_eq!(w.clock_ahead_ns("a1a1"), None);
    }

    /// A device record from another vault, planted in this one, is no device of it: the
    /// listing leaves it out and its drains are refused.
    #[test]
    fn a_device_planted_from_another_vault_is_refused() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (rt, mut vault) = crate::vault::test_vault(one.path());
        let (rt2, mut other) = crate::vault::test_vault(two.path());
        vault.join_device("a1a1", "laptop", "drive", 0).unwrap();
        other.join_device("b2b2", "intruder", "drive", 0).unwrap();
        std::fs::copy(
            two.path().join("v/devices/b2b2"),
            one.path().join("v/devices/b2b2"),
        )
        .unwrap();
        let names: Vec<String> = vault
            .devices()
            .unwrap()
            .into_iter()
            .map(|d| d.record.name)
            .collect();
        assert_eq!(names, ["drive", "laptop"]);
        assert!(vault.check_writer("a1a1").is_ok());
        assert!(vault.check_writer("b2b2").is_err());
        assert!(matches!(
            vault.check_writer("stranger"),
            Err(Error::OtherPocket(_))
        ));
        // Removed: refused with who removed it.
        vault.remove_device("laptop", "drive").unwrap();
        assert!(matches!(
            vault.check_writer("a1a1"),
            Err(Error::RemovedDevice { .. })
        ));
        assert!(
            vault.remove_device("drive", "laptop").is_err(),
            "the first stays"
        );
        rt.shutdown_background();
        rt2.shutdown_background();
    }
}
