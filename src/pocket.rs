//! A pocket on disk: where its parts live, its config, and how commands find it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::exit::{ExitCode, Failure};
use platform::drive::DriveTraits;

/// The pocket's own folder name.
pub const DIR: &str = journal::POCKET_DIR;

/// A located pocket.
#[derive(Debug, Clone)]
pub struct Pocket {
    pub root: PathBuf,
}

/// `.backpocket/config.toml`. Unknown keys are refused, so a typo is an error, not a silent
/// default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Config format version.
    pub format: u32,
    /// The pocket's identity (random, made at init).
    pub id: String,
    #[serde(default)]
    pub journal: JournalConfig,
    /// When to tell the user that protection is at risk.
    #[serde(default, skip_serializing_if = "WarningsConfig::is_default")]
    pub warnings: WarningsConfig,
    /// How the pocket key comes from the passphrase (made with the first vault).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyConfig>,
    /// This pocket's name among the devices of a vault it shares (`init --join --name`;
    /// the machine's name when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The devices of a shared vault hear of each other at once through an XMPP server
    /// (`devices push`); without it they poll the vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushConfig>,
    /// Where backups go; the drive carries them to every machine.
    #[serde(default, rename = "destination", skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<DestConfig>,
}

/// An XMPP account on a server the user hosts. The config travels with `init --join`, so the
/// devices of a vault log in as one account, each as its own resource (its id): the server
/// then tells each of the others' presence, and the vault's publish-subscribe node tells
/// each what the others wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// The account, `name@domain`.
    pub xmpp: String,
    /// `host:port` of the server, when not the domain's own (its SRV record, or port 5222).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// A publish-subscribe service where the account may make nodes (default: the
    /// account's own, PEP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubsub: Option<String>,
    /// The account's password, sealed with the pocket key.
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub kdf: replicator::KdfParams,
    /// A known text sealed with the pocket key: tells a wrong passphrase from a right one.
    pub check: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestConfig {
    pub name: String,
    /// A folder (an external disk, a mounted share: a path or a file:// URL),
    /// sftp://[user@]host[:port]/path or s3://bucket[/prefix].
    pub url: String,
    #[serde(default = "default_mode")]
    pub mode: replicator::Mode,
    /// Mirror: days that replaced and deleted files stay in `.backpocket-versions/`.
    #[serde(default = "default_keep_days")]
    pub keep_versions_days: u64,
    /// When it may be used (`--when`); every condition must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<String>,
    /// S3: the service's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3: the signing region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// S3: bucket.host addressing instead of host/bucket.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub virtual_host_style: bool,
    /// Transfers in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
    /// Upload bandwidth cap, such as "5MiB/s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_limit: Option<String>,
    /// Credentials, sealed with the pocket key (never in plain text on the drive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
    /// Warn once changes have waited this long for this destination (overrides
    /// `[warnings] unprotected_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_after: Option<String>,
    /// A group (`dest add-group`): any `k` of its members restore the vault spread over them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    /// A group's members: each a destination of its own kind, holding the group's shards in a
    /// folder named after the group.
    #[serde(default, rename = "member", skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<DestConfig>,
    /// A group re-spread over other members (`dest add-member`): the folder its members keep
    /// it in, when not the group's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
}

fn default_mode() -> replicator::Mode {
    replicator::Mode::Vault
}

fn default_keep_days() -> u64 {
    30
}

impl DestConfig {
    /// A destination named by its URL alone (not in the config; the drive may be lost): a
    /// vault, used always, reached with the environment's S3 settings or ssh's own.
    pub fn for_url(url: &str) -> DestConfig {
        let access = replicator::Access::from_env();
        DestConfig {
            name: url.to_owned(),
            url: url.to_owned(),
            mode: replicator::Mode::Vault,
            keep_versions_days: default_keep_days(),
            when: Vec::new(),
            endpoint: access.endpoint,
            region: access.region,
            virtual_host_style: false,
            connections: None,
            bandwidth_limit: None,
            credentials: None,
            warn_after: None,
            k: None,
            members: Vec::new(),
            folder: None,
        }
    }

    pub fn spec(&self) -> replicator::DestSpec {
        replicator::DestSpec {
            name: self.name.clone(),
            url: self.url.clone(),
            mode: self.mode,
            keep_versions: Duration::from_secs(self.keep_versions_days * 86_400),
            access: replicator::Access {
                endpoint: self.endpoint.clone(),
                region: self.region.clone(),
                virtual_host_style: self.virtual_host_style,
                connections: self.connections,
                // Checked when added; a hand-edited value that does not parse means no cap.
                bandwidth: self
                    .bandwidth_limit
                    .as_deref()
                    .and_then(|b| replicator::parse_bandwidth(b).ok()),
                sealed_secrets: self.credentials.clone(),
            },
            when: self.when.clone(),
            group: self.k.map(|k| replicator::GroupSpec {
                k,
                folder: self.folder.clone().unwrap_or_else(|| self.name.clone()),
                members: self.members.iter().map(DestConfig::spec).collect(),
            }),
        }
    }
}

impl Config {
    /// The config as written to disk.
    pub fn to_text(&self) -> Result<String> {
        Ok(format!(
            "# backpocket pocket configuration (README.md explains every key)\n{}",
            toml::to_string_pretty(self)?
        ))
    }

    pub fn destination(&self, name: &str) -> Option<&DestConfig> {
        self.destinations.iter().find(|d| d.name == name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// A file held open for writing is recorded once it has not changed for this long.
    pub quiet_period_secs: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            quiet_period_secs: 5,
        }
    }
}

/// `[warnings]`: quiet for the short gaps of a drive that travels, loud when changes have
/// been at risk for days or the drive is about to fill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarningsConfig {
    /// Warn when a destination has lacked changes this long without reaching it ("3d", "12h").
    pub unprotected_after: String,
    /// Warn when the drive's free space falls below this: a share ("5%") or a size ("2GiB").
    pub drive_free_below: String,
    /// Desktop notifications where a notification service runs (log lines are always written).
    pub notify: bool,
}

impl Default for WarningsConfig {
    fn default() -> Self {
        WarningsConfig {
            unprotected_after: "3d".into(),
            drive_free_below: "5%".into(),
            notify: true,
        }
    }
}

impl WarningsConfig {
    fn is_default(&self) -> bool {
        *self == WarningsConfig::default()
    }
}

impl Pocket {
    pub fn drive_path(&self) -> PathBuf {
        self.meta_dir().join("drive.toml")
    }

    /// What the drive can keep, as last found (`.backpocket/drive.toml`, beside the config
    /// so that older versions still read the config); None before the first probe.
    pub fn drive(&self) -> Option<DriveTraits> {
        let text = std::fs::read_to_string(self.drive_path()).ok()?;
        toml::from_str(&text).ok()
    }

    /// Tries what the drive can keep and records it (when it changed). Says, once per drive,
    /// what the pocket loses there; a probe that fails is logged and changes nothing. Call it
    /// with the pocket's lock held.
    pub fn probe_drive(&self) -> Option<DriveTraits> {
        // Under the pocket's lock: no other probe runs; one killed midway left its folder.
        let scratch = self.meta_dir().join("probe");
        let _ = std::fs::remove_dir_all(&scratch);
        let now = match platform::drive::probe(&scratch) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(
                    "cannot try what the drive can keep ({e}); assuming it keeps what it did"
                );
                return self.drive();
            }
        };
        let before = self.drive();
        if before.as_ref() != Some(&now) {
            let limits = now.limits();
            if !limits.is_empty() {
                eprintln!(
                    "backpocket: this drive ({}) cannot keep {}. Files and folders work; what \
                     the drive cannot keep is not kept in the pocket or its backups either. \
                     A drive formatted ext4, XFS or btrfs keeps everything (Linux only).",
                    now.fs,
                    limits.join(", "),
                );
            }
            let kept = now.kept_by_the_journal();
            if !kept.is_empty() {
                eprintln!(
                    "backpocket: the pocket's journal keeps {} for this drive: the mount shows \
                     them and backups restore them; other programs see the drive's own.",
                    kept.join(" and ")
                );
            }
            match toml::to_string(&now) {
                Ok(text) => {
                    if let Err(e) = write_durably(&self.drive_path(), text.as_bytes()) {
                        tracing::warn!("cannot record what the drive can keep: {e:#}");
                    }
                }
                Err(e) => tracing::warn!("cannot record what the drive can keep: {e}"),
            }
        }
        Some(now)
    }

    /// Opens the journal for writing. On a drive that numbers its files afresh at each mount
    /// (as the last probe found: exFAT, FAT), the journal knows files by path from then on.
    pub fn open_journal(&self) -> journal::Result<journal::Journal> {
        let j = journal::Journal::open(&self.journal_path())?;
        self.adapt_journal(&j)?;
        Ok(j)
    }

    /// Tells the journal what the drive keeps (as the last probe found): how coarse its times
    /// are (the scan trusts no time closer to a record than that), whether it keeps modes and
    /// owners (where not, the catalog keeps them), whether it can spell every name (where not,
    /// names are stored under look-alikes), and whether it keeps file numbers (where not, the
    /// journal knows files by path from now on).
    pub fn adapt_journal(&self, j: &journal::Journal) -> journal::Result<()> {
        let Some(d) = self.drive() else {
            return Ok(());
        };
        j.handle().set_meta(
            "time_granularity_ns",
            i64::try_from(d.time_granularity_ns).unwrap_or(i64::MAX),
        );
        j.handle().set_meta("modes_kept", i64::from(d.modes));
        // Names the drive refuses are stored under look-alikes (journal::spelling).
        j.handle().set_meta("names_encoded", i64::from(!d.any_name));
        j.handle().ids().set_names_encoded(!d.any_name);
        // A journal that keeps anything for its drive is format version 3, which older
        // versions refuse (they would take its ids for inode numbers, and the drive's modes and
        // names for the pocket's): that is the switch to knowing files by path, which works on
        // any drive.
        let keeps = !d.stable_inodes || !d.modes || !d.any_name;
        if keeps && !j.handle().ids().by_path() {
            tracing::info!(
                "this drive keeps less than the pocket holds: the journal knows files by path from now on"
            );
            j.use_path_identity()?;
        }
        Ok(())
    }

    pub fn meta_dir(&self) -> PathBuf {
        self.root.join(DIR)
    }
    pub fn journal_path(&self) -> PathBuf {
        self.meta_dir().join("journal.db")
    }
    pub fn config_path(&self) -> PathBuf {
        self.meta_dir().join("config.toml")
    }
    pub fn lock_path(&self) -> PathBuf {
        self.meta_dir().join("lock")
    }
    /// Saves the config durably.
    pub fn save_config(&self, config: &Config) -> Result<()> {
        write_durably(&self.config_path(), config.to_text()?.as_bytes())
    }
    pub fn log_path(&self) -> PathBuf {
        self.meta_dir().join("mount.log")
    }

    /// Opens the pocket at `root`, which must be one.
    pub fn at(root: &Path) -> Result<Pocket> {
        let root = root
            .canonicalize()
            .with_context(|| {
                format!(
                    "cannot find the pocket folder {} (is the drive plugged in and the path right?)",
                    root.display()
                )
            })
            .map_err(|e| Failure::new(ExitCode::NotAPocket, e))?;
        let pocket = Pocket { root };
        if !pocket.config_path().is_file() {
            return Err(Failure::new(
                ExitCode::NotAPocket,
                anyhow::anyhow!(
                    "{} is not a pocket (it has no {}/config.toml); make one with `backpocket init {}`",
                    pocket.root.display(),
                    DIR,
                    pocket.root.display()
                ),
            )
            .into());
        }
        Ok(pocket)
    }

    /// Finds the pocket the way git finds a repository: `--pocket`, else the current folder
    /// or one above it, or the pocket behind the backpocket mount we are inside.
    pub fn find(explicit: Option<&Path>) -> Result<Pocket> {
        if let Some(p) = explicit {
            // A mountpoint stands for the pocket mounted there.
            if let Some(m) = std::path::absolute(p)
                .ok()
                .and_then(|abs| platform::mount_at(&abs).ok().flatten())
                .filter(|m| m.fstype == platform::FSTYPE)
            {
                return Pocket::at(&m.source);
            }
            return Pocket::at(p);
        }
        let cwd = std::env::current_dir().context("cannot read the current folder")?;
        if let Some(m) = platform::backpocket_mount_containing(&cwd)? {
            return Pocket::at(&m.source);
        }
        let mut dir = Some(cwd.as_path());
        while let Some(d) = dir {
            if d.join(DIR).join("config.toml").is_file() {
                return Pocket::at(d);
            }
            dir = d.parent();
        }
        Err(Failure::new(
            ExitCode::NotAPocket,
            anyhow::anyhow!(
                "no pocket here: {} is not inside a pocket or a mounted pocket; use --pocket DIR",
                cwd.display()
            ),
        )
        .into())
    }

    pub fn config(&self) -> Result<Config> {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let config: Config = toml::from_str(&text).map_err(|e| {
            Failure::new(
                ExitCode::Damaged,
                anyhow::anyhow!(
                    "the pocket's config {} is not valid: {}; fix it by hand (the format is in README.md)",
                    path.display(),
                    e.message()
                ),
            )
        })?;
        if config.format != 1 {
            bail!(
                "the pocket's config {} has format {}, which this backpocket does not know; upgrade backpocket",
                path.display(),
                config.format
            );
        }
        Ok(config)
    }
}

/// Writes `bytes` to `path` durably (see [`platform::write_durably`]).
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    platform::write_durably(path, bytes).with_context(|| {
        format!(
            "cannot write {}; check that the drive is plugged in, writable and not full",
            path.display()
        )
    })
}

/// A new random pocket id.
pub fn new_id() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VALID: &str = r#"format = 1
id = "0123456789abcdef0123456789abcdef"

[journal]
quiet_period_secs = 5

[warnings]
unprotected_after = "2d"
drive_free_below = "5%"
notify = true

[[destination]]
name = "office"
url = "s3://pockets/alice"
mode = "vault"
when = ["network=10.20.0.0/16"]
endpoint = "https://s3.office.lan"
bandwidth_limit = "5MiB/s"
warn_after = "12h"
"#;

    #[test]
    fn the_documented_config_parses_and_typos_do_not() {
        let c: Config = toml::from_str(VALID).unwrap();
        assert_eq!(c.destinations[0].warn_after.as_deref(), Some("12h"));
        assert!(toml::from_str::<Config>(&VALID.replace("notify", "notfy")).is_err());
        assert!(toml::from_str::<Config>(&VALID.replace("bandwidth_limit", "bandwith")).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The config is a file anyone can edit: garbage, or the real one damaged, gives an
        /// error or a config, never a panic.
        #[test]
        fn damaged_configs_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<char>()), 0..6),
            cut in proptest::option::of(any::<prop::sample::Index>()),
            garbage in ".{0,200}",
        ) {
            let mut chars: Vec<char> = VALID.chars().collect();
            for (at, c) in edits {
                let i = at.index(chars.len());
                chars[i] = c;
            }
            if let Some(c) = cut {
                chars.truncate(c.index(chars.len() + 1));
            }
            let text: String = chars.into_iter().collect();
            let _ = toml::from_str::<Config>(&text);
            let _ = toml::from_str::<Config>(&garbage);
        }
    }
}
