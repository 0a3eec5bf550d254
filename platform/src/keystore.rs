//! The machine's key store: secrets this machine may use without asking, such as a pocket's
//! key, so that plugging a drive in needs no prompt. Each is a file readable by its owner only
//! in the user's config folder (`$XDG_CONFIG_HOME/backpocket/keys/NAME`, else
//! `~/.config/…`, else `%APPDATA%\…` on Windows), written durably. The OS key stores (Secret
//! Service, Keychain, Credential Manager) are not used yet.

use std::io;
use std::path::PathBuf;

use zeroize::Zeroizing;

/// Where the secret `name` is kept; None when the user has no config folder.
pub fn key_path(name: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|x| !x.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })
        .or_else(|| std::env::var_os("APPDATA").map(PathBuf::from))?;
    Some(base.join("backpocket").join("keys").join(name))
}

/// Keeps `secret` under `name`; false when there is nowhere to keep it.
pub fn store_key(name: &str, secret: &[u8]) -> io::Result<bool> {
    let Some(path) = key_path(name) else {
        return Ok(false);
    };
    crate::write_durably_private(&path, secret)?;
    Ok(true)
}

/// The secret kept under `name`, if any.
pub fn load_key(name: &str) -> Option<Zeroizing<Vec<u8>>> {
    std::fs::read(key_path(name)?).ok().map(Zeroizing::new)
}

/// Forgets the secret kept under `name`; returns whether there was one.
pub fn forget_key(name: &str) -> io::Result<bool> {
    let Some(path) = key_path(name) else {
        return Ok(false);
    };
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
