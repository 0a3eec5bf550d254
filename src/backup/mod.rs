//! The backup commands, one module each: destinations, sync, restore and a new drive from a
//! destination, verify and repair, the log and its trimming. Here, what several of them share.

mod dest;
mod history;
mod restore;
mod sync;
mod verify;

pub use dest::{
    dest_add, dest_add_group, dest_add_member, dest_credentials, dest_list, dest_remove,
    dest_replace, setup, RemoteArgs,
};
pub use history::{forget, log, maintain, prune};
pub use restore::{init_from, init_restored, refuse_a_pocket, restore, Wanted};
pub use sync::sync;
pub use verify::{repair, verify};

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use replicator::{Mode, Progress, Store, Vault};

use crate::exit::{ExitCode, Failure};
use crate::keys::{self, KeyArgs};
use crate::pocket::Pocket;

/// Shows a progress bar for `progress` while `f` runs, when a person is watching.
pub fn with_progress<T>(progress: &Progress, label: &str, f: impl FnOnce() -> T) -> T {
    if !std::io::stderr().is_terminal() {
        return f();
    }
    let bar = indicatif::ProgressBar::new(0).with_message(label.to_owned());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                bar.set_length(progress.bytes_total.load(Ordering::Relaxed));
                bar.set_position(progress.bytes_done.load(Ordering::Relaxed));
                std::thread::sleep(Duration::from_millis(100));
            }
            bar.finish_and_clear();
        });
        let out = f();
        done.store(true, Ordering::Relaxed);
        out
    })
}

/// A destination for reading: a configured name (with the pocket's key), or a folder/URL
/// (with the passphrase) when the drive is lost.
pub struct Opened {
    pub vault: Vault,
    /// The key that opened it (the passphrase's, or the pocket's).
    pub key: replicator::Key,
    _rt: tokio::runtime::Runtime,
}

pub fn open_vault(pocket: Option<&Path>, dest: &str, args: &KeyArgs) -> Result<Opened> {
    open_vault_of(Pocket::find(pocket).ok(), dest, args)
}

/// As [`open_vault`], with the pocket (if any) already found.
pub(super) fn open_vault_of(found: Option<Pocket>, dest: &str, args: &KeyArgs) -> Result<Opened> {
    let rt = replicator::runtime()?;
    let configured = found.as_ref().and_then(|p| {
        let c = p.config().ok()?;
        let d = c.destination(dest)?.clone();
        Some((c, d))
    });
    let configured_id = found.as_ref().and_then(|p| p.config().ok()).map(|c| c.id);
    let (store, key) = match configured {
        Some((c, d)) => {
            if d.mode != Mode::Vault {
                bail!("{dest} is a mirror; read it with any file browser, or restore from it with `backpocket restore --from {}`", d.url);
            }
            let key = keys::pocket_key(&c, args, true)?;
            let store = d.spec().store(key.as_ref(), rt.handle().clone(), false)?;
            let vc = Vault::read_config(&store)?;
            // The first pocket's key, or a joined device's (the same passphrase and KDF).
            let key = match key {
                Some(k)
                    if c.id == vc.pocket_id
                        || c.key.as_ref().is_some_and(|kc| kc.kdf == vc.kdf) =>
                {
                    k
                }
                _ => keys::key_for_vault(&vc, args)?,
            };
            (store, key)
        }
        None => {
            if replicator::local_path(dest).is_none()
                && !dest.contains('/')
                && !dest.starts_with("group:")
            {
                bail!("{dest} is neither a configured destination nor a folder; see `backpocket dest list`");
            }
            let pocket_cfg = found.and_then(|p| p.config().ok());
            // A URL without a pocket (the drive is lost): S3 settings come from the
            // environment (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ...), SFTP uses ssh's.
            let (access, secrets) = (
                replicator::Access::from_env(),
                replicator::Secrets::from_env(),
            );
            let store = match dest.strip_prefix("group:") {
                // A group by its members' folders: `group:URL,URL,...`.
                Some(urls) => Store::connect_group(urls, &access, &secrets, rt.handle().clone())?,
                None => Store::connect(dest, &access, &secrets, rt.handle().clone(), false)?,
            };
            let vc = Vault::read_config(&store)?;
            let key = match &pocket_cfg {
                Some(c) if c.id == vc.pocket_id && c.key.is_some() => {
                    keys::pocket_key(c, args, true)?.expect("has a key")
                }
                _ => keys::key_for_vault(&vc, args)?,
            };
            (store, key)
        }
    };
    let vault = Vault::open(store, &key)?;
    // A pocket that joined the vault reads its own log.
    let joined = match &configured_id {
        Some(id) if vault.has_devices() && *id != vault.config.pocket_id => {
            vault.device_record(id)?.is_some()
        }
        _ => false,
    };
    let vault = match &configured_id {
        Some(id) if joined => vault.on_chain(id),
        _ => vault,
    };
    Ok(Opened {
        vault,
        key,
        _rt: rt,
    })
}

/// A destination named by its URL alone, with the passphrase (`init --join`).
pub fn open_vault_of_url(dest: &str, args: &KeyArgs) -> Result<Opened> {
    open_vault_of(None, dest, args)
}

/// Parses `--at`: RFC 3339, or "YYYY-MM-DD HH:MM[:SS]" in UTC.
pub fn parse_time(s: &str) -> Result<i64> {
    let try_parse = |t: &str| humantime::parse_rfc3339_weak(t).ok();
    let t = try_parse(s)
        .or_else(|| try_parse(&format!("{s}:00")))
        .or_else(|| try_parse(&format!("{s} 23:59:59")))
        .ok_or_else(|| {
            Failure::new(
                ExitCode::Usage,
                anyhow!("{s:?} is not a time; write e.g. \"2026-11-20 10:00\" (UTC) or RFC 3339"),
            )
        })?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_nanos() as i64)
}

/// Scans the pocket when no mount records its changes; returns whether it is mounted.
pub(super) fn scan_unless_mounted(p: &Pocket) -> Result<bool> {
    let _lock = match platform::PocketLock::acquire(&p.lock_path(), &p.root) {
        Ok(l) => l,
        Err(platform::Error::Locked { .. }) => return Ok(true),
        Err(e) => return Err(e.into()),
    };
    let j = p.open_journal()?;
    journal::scan(&p.root, &p.journal_path(), &j.handle())
        .context("the scan before syncing failed")?;
    j.close()?;
    Ok(false)
}

/// Holds a configured destination against the mount's replicator while retention rewrites
/// it (one writer per vault). None when `dest` is a folder given directly.
pub(super) fn hold_destination(
    pocket: Option<&Path>,
    dest: &str,
) -> Result<Option<(Pocket, replicator::DestLock)>> {
    let Some(p) = Pocket::find(pocket).ok() else {
        return Ok(None);
    };
    if p.config()?.destination(dest).is_none() {
        return Ok(None);
    }
    match replicator::DestLock::try_take(&p.meta_dir(), dest)? {
        Some(l) => Ok(Some((p, l))),
        None => Err(Failure::new(
            ExitCode::Busy,
            anyhow!("the mount is backing up to {dest} right now; unmount the pocket (or wait for `backpocket sync` to end) and try again"),
        )
        .into()),
    }
}

/// The pocket remembers the vault's newest log object, or it would take a vault whose log
/// was rewritten (forget, repair) as rolled back.
pub(super) fn remember_head(p: &Pocket, dest: &str, h: &replicator::Head) -> Result<()> {
    let mut st = replicator::DestState::load(&p.meta_dir(), dest);
    st.head_gen = Some(h.gen);
    st.head_hash = Some(hex::encode(h.hash));
    st.save(&p.meta_dir(), dest)?;
    Ok(())
}
