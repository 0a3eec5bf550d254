//! Shared by the replicator's end-to-end tests: a setup that drains a pocket to one vault
//! folder, and a restore of all of it.
#![allow(dead_code)]

use std::path::Path;

use replicator::{
    restore, DestSpec, KdfParams, Key, Mode, Progress, RestoreOptions, RestoreReport, Setup, Vault,
};

/// Key derivation made cheap for tests; the real parameters are exercised by the binary's
/// tests.
pub fn kdf() -> KdfParams {
    let mut k = KdfParams::new().unwrap();
    k.m_kib = 1024;
    k.t = 1;
    k
}

/// What drains the pocket at `pocket` (its journal in `.backpocket/`) to the vault folder
/// `vault_dir`.
pub fn vault_setup(pocket: &Path, vault_dir: &Path, pocket_id: &str, key: &Key) -> Setup {
    Setup {
        pocket: pocket.to_owned(),
        meta_dir: pocket.join(".backpocket"),
        journal: pocket.join(".backpocket/journal.db"),
        pocket_id: pocket_id.into(),
        key: Some(key.clone()),
        dests: vec![DestSpec {
            name: "v".into(),
            url: vault_dir.to_str().unwrap().into(),
            mode: Mode::Vault,
            keep_versions: std::time::Duration::from_secs(0),
            access: Default::default(),
            when: Vec::new(),
            group: None,
        }],
        ids: Default::default(),
        drained: None,
    }
}

/// The whole vault at `at` (its newest point when None) into `target`.
pub fn restore_all(
    v: &Vault,
    target: &Path,
    at: Option<i64>,
    owners: bool,
) -> replicator::Result<RestoreReport> {
    restore(
        v,
        &RestoreOptions {
            target: target.to_owned(),
            at,
            paths: Vec::new(),
            owners,
            workers: 2,
            map_names: false,
            specials: true,
            case_insensitive: false,
        },
        &Progress::default(),
    )
}
