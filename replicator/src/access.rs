//! What reaching a destination takes beyond its URL: the S3 endpoint and region, how many
//! transfers at once, a bandwidth cap, and the credentials. Credentials travel with the drive
//! (so the pocket backs itself up on any machine), but never in plain text: they are sealed
//! with a key derived from the pocket key and opened only in the replicator's memory.

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crypto::{self, Key};
use crate::error::{Error, Result};

/// A destination's connection settings, as the pocket's config gives them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// S3: the service's address (`https://s3.office.lan`); AWS's when absent.
    pub endpoint: Option<String>,
    /// S3: the region requests are signed for ("us-east-1" when absent).
    pub region: Option<String>,
    /// S3: `bucket.host` addressing instead of `host/bucket` (path style suits self-hosted
    /// servers, so it is the default).
    pub virtual_host_style: bool,
    /// Transfers in flight at once, for this destination.
    pub connections: Option<usize>,
    /// Bytes per second, all of this destination's uploads together.
    pub bandwidth: Option<u64>,
    /// The credentials, sealed (see [`seal_secrets`]).
    pub sealed_secrets: Option<String>,
}

impl Access {
    /// The S3 settings of the environment (`AWS_ENDPOINT_URL`, `AWS_REGION` or
    /// `AWS_DEFAULT_REGION`): for a destination named by URL alone, when the drive is lost.
    pub fn from_env() -> Access {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Access {
            endpoint: var("AWS_ENDPOINT_URL"),
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            ..Access::default()
        }
    }
}

/// Credentials: wiped from memory when dropped, never printed.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct Secrets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// An SSH private key (OpenSSH format), for SFTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<String>,
    /// An account's password (the devices' push server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("access_key_id", &self.access_key_id.as_ref().map(|_| ".."))
            .field("ssh_key", &self.ssh_key.as_ref().map(|_| ".."))
            .field("password", &self.password.as_ref().map(|_| ".."))
            .finish_non_exhaustive()
    }
}

impl Secrets {
    pub fn is_empty(&self) -> bool {
        self == &Secrets::default()
    }

    /// S3 credentials from the usual environment variables, when set.
    pub fn from_env() -> Secrets {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Secrets {
            access_key_id: var("AWS_ACCESS_KEY_ID"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
            session_token: var("AWS_SESSION_TOKEN"),
            ssh_key: None,
            password: None,
        }
    }
}

/// Seals `secrets` for the destination `name` (bound to the name: sealed credentials copied to
/// another destination's entry do not open).
pub fn seal_secrets(pocket_key: &Key, name: &str, secrets: &Secrets) -> Result<String> {
    let mut plain = serde_json::to_vec(secrets).map_err(|e| Error::Format(e.to_string()))?;
    let sealed = crypto::seal(&secrets_key(pocket_key), &aad(name), &plain);
    plain.zeroize();
    use base64::Engine;
    Ok(base64::engine::general_purpose::STANDARD.encode(sealed?))
}

/// Opens what [`seal_secrets`] made.
pub fn open_secrets(pocket_key: &Key, name: &str, sealed: &str) -> Result<Secrets> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(sealed.trim())
        .map_err(|_| Error::Format(format!("the credentials of destination {name} are damaged in the config; add them again with `backpocket dest credentials {name}`")))?;
    let mut plain = crypto::open(&secrets_key(pocket_key), &aad(name), &raw)
        .map_err(|_| Error::Format(format!("the credentials of destination {name} do not open with this pocket's key; add them again with `backpocket dest credentials {name}`")))?;
    let s = serde_json::from_slice(&plain).map_err(|e| Error::Format(e.to_string()));
    plain.zeroize();
    s
}

fn secrets_key(pocket_key: &Key) -> Key {
    pocket_key.derive("backpocket 2026 destination credentials v1")
}

fn aad(name: &str) -> Vec<u8> {
    crate::format::aad("dest-secrets", name)
}

/// Parses a bandwidth such as `5MiB/s`, `800k`, `2M` (bytes per second; k/M/G are powers of
/// 1000, Ki/Mi/Gi of 1024).
pub fn parse_bandwidth(s: &str) -> Result<u64> {
    let t = s.trim().trim_end_matches("/s").trim_end_matches('B');
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad_bandwidth(s))?;
    let mult: f64 = match unit {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad_bandwidth(s)),
    };
    let v = (n * mult).round();
    if !(1.0..4e9).contains(&v) {
        return Err(bad_bandwidth(s));
    }
    Ok(v as u64)
}

fn bad_bandwidth(s: &str) -> Error {
    Error::Format(format!(
        "{s:?} is not a bandwidth: give bytes per second such as 800k, 5MiB/s or 2M (between 1 byte/s and 4 GB/s)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_open_only_with_the_key_and_name_they_were_sealed_for() {
        let k = Key::random().unwrap();
        let s = Secrets {
            access_key_id: Some("GK123".into()),
            secret_access_key: Some("shh".into()),
            session_token: None,
            ssh_key: None,
            password: None,
        };
        let sealed = seal_secrets(&k, "office", &s).unwrap();
        assert!(!sealed.contains("shh"));
        assert_eq!(open_secrets(&k, "office", &sealed).unwrap(), s);
        assert!(open_secrets(&k, "home", &sealed).is_err());
        assert!(open_secrets(&Key::random().unwrap(), "office", &sealed).is_err());
        let mut flipped = sealed.into_bytes();
        flipped[20] ^= 1;
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(open_secrets(&k, "office", &flipped).is_err());
    }

    #[test]
    fn secrets_are_not_printed() {
        let s = Secrets {
            access_key_id: None,
            secret_access_key: Some("hunter2".into()),
            session_token: None,
            ssh_key: Some("-----BEGIN OPENSSH PRIVATE KEY-----".into()),
            password: Some("correct horse".into()),
        };
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("BEGIN") && !shown.contains("horse"),
            "{shown}"
        );
    }

    #[test]
    fn bandwidths() {
        assert_eq!(parse_bandwidth("5MiB/s").unwrap(), 5 * 1024 * 1024);
        assert_eq!(parse_bandwidth("800k").unwrap(), 800_000);
        assert_eq!(parse_bandwidth("2M").unwrap(), 2_000_000);
        assert_eq!(parse_bandwidth("1.5MB/s").unwrap(), 1_500_000);
        assert_eq!(parse_bandwidth("4096").unwrap(), 4096);
        for bad in ["", "fast", "0", "5Q", "-3M", "9G"] {
            assert!(parse_bandwidth(bad).is_err(), "{bad}");
        }
    }
}
