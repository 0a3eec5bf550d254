//! The pocket key: from a passphrase (a file, the environment, or a prompt), checked against
//! the pocket's config, and remembered on this machine (a 0600 file in the user's config
//! folder) so that the mount can back up without asking again.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use replicator::{crypto, KdfParams, Key};
use zeroize::Zeroizing;

use crate::pocket::{Config, KeyConfig, Pocket};

/// How a command gets the passphrase when it needs one.
#[derive(Args, Debug, Clone, Default)]
pub struct KeyArgs {
    /// Read the passphrase from this file (its first line).
    #[arg(long, value_name = "FILE", global = true)]
    pub passphrase_file: Option<PathBuf>,
}

const ENV: &str = "BACKPOCKET_PASSPHRASE";

fn check_aad(pocket_id: &str) -> Vec<u8> {
    format!("backpocket pocket-key-check {pocket_id}").into_bytes()
}

/// The passphrase, if given by file or environment; a prompt when `prompt` and a person is
/// at the terminal.
pub fn passphrase(args: &KeyArgs, prompt: Option<&str>) -> Result<Option<Zeroizing<String>>> {
    if let Some(f) = &args.passphrase_file {
        let text = Zeroizing::new(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the passphrase file {}", f.display()))?,
        );
        let line = text.lines().next().unwrap_or("").to_owned();
        return Ok(Some(Zeroizing::new(line)));
    }
    if let Ok(p) = std::env::var(ENV) {
        return Ok(Some(Zeroizing::new(p)));
    }
    match prompt {
        Some(msg) if std::io::stdin().is_terminal() => Ok(Some(Zeroizing::new(
            rpassword::prompt_password(msg).context("cannot read the passphrase")?,
        ))),
        _ => Ok(None),
    }
}

fn remember(pocket_id: &str, key: &Key) -> Result<()> {
    let text = Zeroizing::new(hex::encode(key.as_bytes()));
    platform::store_key(pocket_id, text.as_bytes()).with_context(|| {
        format!(
            "cannot keep the pocket key in {}; check that your config folder is writable and \
             not full",
            platform::key_path(pocket_id).unwrap_or_default().display()
        )
    })?;
    Ok(())
}

/// Forgets this machine's copy of the pocket key. Returns whether there was one.
pub fn forget(pocket_id: &str) -> Result<bool> {
    platform::forget_key(pocket_id).with_context(|| {
        format!(
            "cannot remove {}; remove it by hand to make this machine forget the pocket key",
            platform::key_path(pocket_id).unwrap_or_default().display()
        )
    })
}

/// The pocket key if this machine remembers it (never asks, never derives).
pub fn remembered(config: &Config) -> Option<Key> {
    let kc = config.key.as_ref()?;
    let text = platform::load_key(&config.id)?;
    let bytes = Zeroizing::new(hex::decode(text.trim_ascii()).ok()?);
    let key = Key::from_bytes(&bytes).ok()?;
    checks(kc, &config.id, &key).then_some(key)
}

fn checks(kc: &KeyConfig, pocket_id: &str, key: &Key) -> bool {
    hex::decode(&kc.check)
        .ok()
        .and_then(|c| crypto::open(key, &check_aad(pocket_id), &c).ok())
        .is_some()
}

/// The pocket key, if this pocket has one: remembered on this machine, else derived from the
/// passphrase (file, environment, or a prompt when `interactive`). Remembers it on success.
pub fn pocket_key(config: &Config, args: &KeyArgs, interactive: bool) -> Result<Option<Key>> {
    let Some(kc) = &config.key else {
        return Ok(None);
    };
    if args.passphrase_file.is_none() && std::env::var_os(ENV).is_none() {
        if let Some(key) = remembered(config) {
            return Ok(Some(key));
        }
    }
    let prompt = interactive.then_some("pocket passphrase: ");
    let Some(pass) = passphrase(args, prompt)? else {
        return Err(replicator::Error::NeedPassphrase.into());
    };
    let key = kc.kdf.derive(pass.as_bytes())?;
    if !checks(kc, &config.id, &key) {
        return Err(replicator::Error::WrongPassphrase.into());
    }
    remember(&config.id, &key)?;
    Ok(Some(key))
}

/// The pocket key, making one (and asking for a new passphrase) if the pocket has none yet.
pub fn pocket_key_or_new(p: &Pocket, config: &mut Config, args: &KeyArgs) -> Result<Key> {
    if config.key.is_some() {
        return Ok(pocket_key(config, args, true)?.expect("the pocket has a key"));
    }
    let pass = match passphrase(args, None)? {
        Some(p) => p,
        None if std::io::stdin().is_terminal() => {
            let a = Zeroizing::new(rpassword::prompt_password(
                "new passphrase for this pocket's backups: ",
            )?);
            let b = Zeroizing::new(rpassword::prompt_password("the same again: ")?);
            if a != b {
                bail!("the two passphrases differ; nothing was changed");
            }
            a
        }
        None => return Err(replicator::Error::NeedPassphrase.into()),
    };
    if pass.is_empty() {
        bail!("an empty passphrase protects nothing; choose one");
    }
    let kdf = KdfParams::new()?;
    let key = kdf.derive(pass.as_bytes())?;
    let check = crypto::seal(&key, &check_aad(&config.id), b"backpocket")?;
    config.key = Some(KeyConfig {
        kdf,
        check: hex::encode(check),
    });
    p.save_config(config)?;
    remember(&config.id, &key)?;
    Ok(key)
}

/// Makes `key` (the passphrase's, checked against a vault) the key of a new pocket whose
/// config came from another device: the check is bound to the pocket's own id.
pub fn adopt(config: &mut Config, key: &Key) -> Result<()> {
    let kc = config
        .key
        .as_mut()
        .context("the stored pocket config has no key settings; it cannot have written a vault")?;
    kc.check = hex::encode(crypto::seal(key, &check_aad(&config.id), b"backpocket")?);
    remember(&config.id, key)
}

/// The key for a vault reached without its pocket (the drive is lost): the passphrase with the
/// vault's own KDF parameters.
pub fn key_for_vault(config: &replicator::format::VaultConfig, args: &KeyArgs) -> Result<Key> {
    let Some(pass) = passphrase(args, Some("passphrase of the pocket this vault backs up: "))?
    else {
        return Err(replicator::Error::NeedPassphrase.into());
    };
    Ok(config.kdf.derive(pass.as_bytes())?)
}
