//! Keys and sealing. One primitive for every encrypted object: AES-256-GCM with a fresh random
//! 96-bit nonce from the OS generator, and associated data binding the object to its format
//! version, type and name, so that an object moved, swapped or replayed under another name
//! fails to open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, Result};

/// Bytes a sealed object adds to its plaintext: nonce and tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + 16;
const NONCE_LEN: usize = 12;

/// 32 bytes of key material that is wiped when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A new random key from the OS generator.
    pub fn random() -> Result<Key> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| Error::Crypto(format!("no randomness: {e}")))?;
        Ok(Key(k))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Key> {
        let k: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::Crypto("a key must be 32 bytes".into()))?;
        Ok(Key(k))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A subkey for one purpose (BLAKE3's key derivation), so that no key is used for two
    /// things.
    pub fn derive(&self, purpose: &str) -> Key {
        Key(blake3::derive_key(purpose, &self.0))
    }
}

/// Argon2id parameters as stored in configs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    /// Always "argon2id".
    pub algorithm: String,
    /// Memory in KiB.
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
    #[serde(with = "hex_bytes")]
    pub salt: Vec<u8>,
}

impl KdfParams {
    /// Fresh parameters: 64 MiB, 3 passes, a random 16-byte salt (about a third of a second
    /// here, and the same memory cost that makes guessing expensive on GPUs).
    pub fn new() -> Result<KdfParams> {
        let mut salt = vec![0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| Error::Crypto(format!("no randomness: {e}")))?;
        Ok(KdfParams {
            algorithm: "argon2id".into(),
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
            salt,
        })
    }

    /// The key a passphrase gives under these parameters.
    pub fn derive(&self, passphrase: &[u8]) -> Result<Key> {
        if self.algorithm != "argon2id" {
            return Err(Error::Format(format!(
                "unknown key derivation {:?}",
                self.algorithm
            )));
        }
        // Refuse parameters that would make a crafted config exhaust memory or time (the vault
        // config is plain text at the destination): at most 1 GiB, 16 passes, 16 lanes; ours
        // are 64 MiB, 3, 1.
        if self.m_kib > 1024 * 1024 || self.t > 16 || self.p > 16 || self.salt.len() < 8 {
            return Err(Error::Format(
                "key derivation parameters out of range".into(),
            ));
        }
        let params = argon2::Params::new(self.m_kib, self.t, self.p, Some(32))
            .map_err(|e| Error::Format(format!("key derivation parameters: {e}")))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        argon
            .hash_password_into(passphrase, &self.salt, &mut out)
            .map_err(|e| Error::Crypto(format!("key derivation: {e}")))?;
        let key = Key(out);
        out.zeroize();
        Ok(key)
    }
}

/// Encrypts `plain` under `key`; `aad` names what the object is.
pub fn seal(key: &Key, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| Error::Crypto(format!("no randomness: {e}")))?;
    let cipher = Aes256Gcm::new_from_slice(&key.0).map_err(|_| Error::Crypto("bad key".into()))?;
    let n = aes_gcm::aead::Nonce::<Aes256Gcm>::try_from(&nonce[..])
        .map_err(|_| Error::Crypto("bad nonce".into()))?;
    let ct = cipher
        .encrypt(&n, Payload { msg: plain, aad })
        .map_err(|_| Error::Crypto("encryption failed".into()))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Decrypts and authenticates; any change to the bytes, the key or the name fails.
pub fn open(key: &Key, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(Error::Auth);
    }
    let cipher = Aes256Gcm::new_from_slice(&key.0).map_err(|_| Error::Crypto("bad key".into()))?;
    let n = aes_gcm::aead::Nonce::<Aes256Gcm>::try_from(&sealed[..NONCE_LEN])
        .map_err(|_| Error::Auth)?;
    cipher
        .decrypt(
            &n,
            Payload {
                msg: &sealed[NONCE_LEN..],
                aad,
            },
        )
        .map_err(|_| Error::Auth)
}

/// Hex in configs: readable and unambiguous.
pub(crate) mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_objects_open_only_with_their_key_and_name() {
        let k = Key::random().unwrap();
        let s = seal(&k, b"v1 pack abc", b"hello").unwrap();
        assert_eq!(open(&k, b"v1 pack abc", &s).unwrap(), b"hello");
        assert!(matches!(open(&k, b"v1 pack abd", &s), Err(Error::Auth)));
        let other = Key::random().unwrap();
        assert!(matches!(open(&other, b"v1 pack abc", &s), Err(Error::Auth)));
        let mut flipped = s.clone();
        flipped[20] ^= 1;
        assert!(matches!(
            open(&k, b"v1 pack abc", &flipped),
            Err(Error::Auth)
        ));
        // Two seals of the same text differ (fresh nonce).
        assert_ne!(
            seal(&k, b"x", b"hello").unwrap(),
            seal(&k, b"x", b"hello").unwrap()
        );
    }

    #[test]
    fn passphrase_derivation_is_deterministic_per_salt() {
        let mut p = KdfParams::new().unwrap();
        p.m_kib = 1024;
        p.t = 1;
        let a = p.derive(b"secret").unwrap();
        let b = p.derive(b"secret").unwrap();
        let c = p.derive(b"Secret").unwrap();
        assert_eq!(a.as_bytes(), b.as_bytes());
        assert_ne!(a.as_bytes(), c.as_bytes());
    }
}
