//! The checkpoints a drain writes from its own tree hold what a replay of its segments gives.
//! A program of its own: it makes the drain write a checkpoint after every segment
//! (`BACKPOCKET_CHECKPOINT_EVERY`), which no other test must see.
#![cfg(unix)]

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::AtomicBool;

mod common;

use replicator::{sync, Progress, Store, Vault};

/// Found by the endurance rounds (a group restored regular files where the pocket had
/// symlinks): a file's attribute change, then its removal, then a symlink made under the
/// number just freed (XFS gives numbers back at once), all in one batch. The drain applied the
/// attribute change to its tree a second time after the batch, on the symlink, which became a
/// file in the next checkpoint: restored as a file of zeros.
#[test]
fn a_number_freed_and_taken_by_a_symlink_in_one_batch_stays_a_symlink_in_checkpoints() {
    std::env::set_var("BACKPOCKET_CHECKPOINT_EVERY", "1");
    let tmp = tempfile::tempdir().unwrap();
    let pocket = tmp.path().join("pocket");
    std::fs::create_dir_all(pocket.join(".backpocket")).unwrap();
    let root = std::fs::metadata(&pocket).unwrap().ino();
    let jpath = pocket.join(".backpocket/journal.db");
    journal::Journal::create(&jpath, root)
        .unwrap()
        .close()
        .unwrap();
    let kdf = common::kdf();
    let key = kdf.derive(b"correct horse").unwrap();
    let vault_dir = tmp.path().join("vault");
    let rt = replicator::runtime().unwrap();
    let store = Store::open(vault_dir.to_str().unwrap(), rt.handle().clone(), true).unwrap();
    Vault::create(store, "pocket-1", kdf.clone(), &key).unwrap();
    let setup = common::vault_setup(&pocket, &vault_dir, "pocket-1", &key);
    let drain = || {
        let target = journal::Reader::open(&jpath)
            .unwrap()
            .status()
            .unwrap()
            .last_seq;
        let mut out = sync(
            &setup,
            target,
            &Progress::default(),
            &AtomicBool::new(false),
        );
        out.remove(0).result.unwrap()
    };

    std::fs::write(pocket.join("f"), vec![7u8; 50_000]).unwrap();
    let j = journal::Journal::open(&jpath).unwrap();
    journal::scan(&pocket, &jpath, &j.handle()).unwrap();
    j.close().unwrap();
    drain();

    // One batch: f's mode changed, f removed, and a symlink `s` under f's number.
    let f = std::fs::metadata(pocket.join("f")).unwrap();
    let number = f.ino();
    std::fs::remove_file(pocket.join("f")).unwrap();
    std::os::unix::fs::symlink("nowhere", pocket.join("s")).unwrap();
    let s = std::fs::symlink_metadata(pocket.join("s")).unwrap();
    let j = journal::Journal::open(&jpath).unwrap();
    let h = j.handle();
    let mut chmodded = journal::Meta::from_std(&f).unwrap();
    chmodded.perm = 0o600;
    h.record(journal::Change::SetAttr {
        file: number,
        meta: chmodded,
    });
    h.record(journal::Change::Unlink {
        parent: root,
        name: b"f".to_vec(),
        file: number,
    });
    h.record(journal::Change::Symlink {
        parent: root,
        name: b"s".to_vec(),
        file: number,
        meta: journal::Meta::from_std(&s).unwrap(),
        target: b"nowhere".to_vec(),
    });
    h.sync().unwrap();
    j.close().unwrap();
    let report = drain();
    assert!(
        report.drained.checkpoint,
        "a checkpoint after the segment: {report:?}"
    );

    // Restored from the newest checkpoint: the symlink, as the segment says.
    let store = Store::open(vault_dir.to_str().unwrap(), rt.handle().clone(), false).unwrap();
    let v = Vault::open(store, &key).unwrap();
    let out = tmp.path().join("restored");
    common::restore_all(&v, &out, None, false).unwrap();
    let got = std::fs::symlink_metadata(out.join("s")).unwrap();
    assert!(
        got.file_type().is_symlink(),
        "s restored as {:?} of {} bytes",
        got.file_type(),
        got.len()
    );
    assert_eq!(
        std::fs::read_link(out.join("s")).unwrap(),
        std::path::Path::new("nowhere")
    );
    assert!(!out.join("f").exists());
    rt.shutdown_background();
}
