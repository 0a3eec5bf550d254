//! Bad input, tried systematically: every object a destination hands back (packs' indexes, log
//! segments, checkpoints, the vault config) and what the tree makes of them. Garbage must give
//! an error, never a panic, a hang or a huge allocation. Objects are sealed, so garbage from
//! outside fails authentication; these tests also seal garbage with the right key, as a bug in
//! a writer would, and feed what decodes to the tree that restore and the drain rely on.

use std::time::Duration;

use proptest::prelude::*;

use crate::crypto::{self, KdfParams, Key};
use crate::format::{self, BlobEntry, Checkpoint, PackIndex, Position, Segment, VChange, VRecord};
use crate::tree::Tree;

fn key() -> Key {
    Key::from_bytes(&[7u8; 32]).unwrap()
}

fn pos(gen: u64) -> Position {
    Position {
        gen,
        prev: [0; 32],
        journal_id: 1,
        seq: 10,
        time_ns: 1,
        written_ns: 1,
    }
}

fn meta(kind: journal::Kind, size: u64) -> journal::Meta {
    journal::Meta {
        kind,
        perm: 0o644,
        uid: 1,
        gid: 1,
        size,
        mtime_ns: 5,
        ctime_ns: 5,
        rdev: 0,
    }
}

/// Records of one plausible drain: folders, files, a rename, a link, an unlink.
fn records() -> Vec<VRecord> {
    use journal::{Change, Kind};
    let changes = [
        Change::Mkdir {
            parent: 1,
            name: b"docs".to_vec(),
            file: 10,
            meta: meta(Kind::Dir, 0),
        },
        Change::Create {
            parent: 10,
            name: b"a.txt".to_vec(),
            file: 11,
            meta: meta(Kind::File, 3),
        },
        Change::Content {
            file: 11,
            meta: meta(Kind::File, 3),
        },
        Change::Link {
            parent: 1,
            name: b"hard".to_vec(),
            file: 11,
        },
        Change::Rename {
            parent: 10,
            name: b"a.txt".to_vec(),
            new_parent: 1,
            new_name: b"b.txt".to_vec(),
            file: 11,
            exchange: false,
        },
        Change::Unlink {
            parent: 1,
            name: b"hard".to_vec(),
            file: 11,
        },
    ];
    changes
        .iter()
        .enumerate()
        .map(|(i, c)| VRecord {
            seq: i as u64 + 1,
            time_ns: i as i64,
            change: VChange::from_journal(c),
        })
        .collect()
}

fn checkpoint() -> Checkpoint {
    let mut t = Tree::new(1);
    for r in records() {
        t.apply(&r.change);
    }
    t.to_checkpoint(pos(1))
}

fn cbor<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

/// Seals bytes as the writer would an encoded object.
fn seal_raw(kind: &str, name: &str, cbor: &[u8]) -> Vec<u8> {
    let z = zstd::bulk::compress(cbor, 3).unwrap();
    crypto::seal(&key(), &format::aad(kind, name), &z).unwrap()
}

/// Everything restore and the drain do with a tree, on a thread that must finish in time.
fn exercise(tree: Tree, more: Vec<VRecord>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut t = tree;
        for r in &more {
            t.apply(&r.change);
        }
        let paths = t.paths();
        for (p, f) in paths.iter().take(50) {
            let _ = t.lookup(p);
            let _ = t.path_of(*f);
        }
        let _ = t.contents().count();
        let _ = t.to_checkpoint(pos(9));
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).is_ok(),
        "the tree hung (or panicked) on decoded garbage"
    );
}

/// Decodes a sealed object of each kind; whatever decodes is fed to the tree.
fn open_everything(sealed: &[u8]) {
    let k = key();
    if let Ok(cp) = format::open_object::<Checkpoint>(&k, "checkpoint", "x", sealed) {
        exercise(Tree::from_checkpoint(cp), Vec::new());
    }
    if let Ok(seg) = format::open_object::<Segment>(&k, "segment", "x", sealed) {
        exercise(Tree::from_checkpoint(checkpoint()), seg.records);
    }
    let _ = format::open_object::<PackIndex>(&k, "index", "x", sealed);
    let _ = format::open_object::<Vec<BlobEntry>>(&k, "pack-header", "", sealed);
}

#[test]
fn a_folder_inside_itself_does_not_hang_the_tree() {
    // A checkpoint whose names make a cycle (a writer's bug; the kernel forbids it on disk).
    let mut cp = checkpoint();
    cp.names.push(format::NameEntry {
        parent: 10,
        name: b"loop".to_vec(),
        file: 10,
    });
    exercise(Tree::from_checkpoint(cp), Vec::new());
    // And one made by a recorded rename of a folder into its own child.
    let mut t = Tree::from_checkpoint(checkpoint());
    let sub = VChange::from_journal(&journal::Change::Mkdir {
        parent: 10,
        name: b"sub".to_vec(),
        file: 12,
        meta: meta(journal::Kind::Dir, 0),
    });
    t.apply(&sub);
    let into_child = VChange::from_journal(&journal::Change::Rename {
        parent: 1,
        name: b"docs".to_vec(),
        new_parent: 12,
        new_name: b"docs".to_vec(),
        file: 10,
        exchange: false,
    });
    exercise(
        t,
        vec![VRecord {
            seq: 99,
            time_ns: 0,
            change: into_child,
        }],
    );
}

#[test]
fn keys_and_credentials_are_wiped_when_dropped() {
    fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    wiped_on_drop::<Key>();
    wiped_on_drop::<crate::access::Secrets>();
    // What drop runs: every byte to zero.
    let mut k = Key::from_bytes(&[9u8; 32]).unwrap();
    zeroize::Zeroize::zeroize(&mut k);
    assert_eq!(k.as_bytes(), &[0u8; 32]);
}

#[test]
fn valid_objects_open() {
    let k = key();
    let cp = format::seal_object(&k, "checkpoint", "x", &checkpoint()).unwrap();
    assert!(format::open_object::<Checkpoint>(&k, "checkpoint", "x", &cp).is_ok());
    // Bound to its kind and name: a swapped object does not open.
    assert!(format::open_object::<Checkpoint>(&k, "checkpoint", "y", &cp).is_err());
    assert!(format::open_object::<Segment>(&k, "segment", "x", &cp).is_err());
}

#[test]
fn key_derivation_refuses_parameters_that_exhaust_memory_or_time() {
    let mut p = KdfParams::new().unwrap();
    for (m, t, par) in [
        (u32::MAX, 3, 1),
        (2 * 1024 * 1024, 3, 1),
        (65536, 10_000, 1),
        (65536, 3, 1000),
    ] {
        p.m_kib = m;
        p.t = t;
        p.p = par;
        let started = std::time::Instant::now();
        assert!(p.derive(b"pass").is_err(), "m={m} t={t} p={par} accepted");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    p.m_kib = 65536;
    p.t = 3;
    p.p = 1;
    p.salt = vec![1, 2];
    assert!(p.derive(b"pass").is_err(), "a short salt accepted");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Bytes from a destination that are not ours: refused, whatever they are.
    #[test]
    fn unauthenticated_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let k = key();
        prop_assert!(format::open_object::<Checkpoint>(&k, "checkpoint", "x", &bytes).is_err());
        prop_assert!(format::open_object::<Segment>(&k, "segment", "x", &bytes).is_err());
        prop_assert!(format::open_object::<PackIndex>(&k, "index", "x", &bytes).is_err());
    }

    /// Garbage sealed with the right key (a writer's bug): errors or harmless objects.
    #[test]
    fn sealed_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        for kind in ["checkpoint", "segment", "index"] {
            open_everything(&seal_raw(kind, "x", &bytes));
        }
    }

    /// Valid objects with bytes flipped, cut or inserted before sealing.
    #[test]
    fn mutated_objects_never_panic(
        which in 0usize..3,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let (kind, mut bytes) = match which {
            0 => ("checkpoint", cbor(&checkpoint())),
            1 => ("segment", cbor(&Segment { pos: pos(2), first_seq: 1, records: records(), pending: Vec::new() })),
            _ => ("index", cbor(&PackIndex {
                pack: "ab".repeat(32),
                size: 100,
                blobs: vec![BlobEntry { id: [3; 32], offset: 0, len: 40, raw_len: 24, zstd: false }],
            })),
        };
        for (at, byte, how) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = byte,
                1 => bytes[i] ^= 1 << (byte % 8),
                _ => bytes.insert(i, byte),
            }
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len() + 1));
        }
        open_everything(&seal_raw(kind, "x", &bytes));
    }

    /// What the pocket keeps about a destination, damaged on the drive: read as "nothing
    /// known" (it is a cache the next drain re-learns), never a panic.
    #[test]
    fn damaged_destination_state_reads_as_unknown(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().unwrap();
        let d = crate::state::dir(dir.path());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("home.json"), &bytes).unwrap();
        std::fs::write(d.join("home.live.json"), &bytes).unwrap();
        let st = crate::state::DestState::load(dir.path(), "home");
        if serde_json::from_slice::<crate::state::DestState>(&bytes).is_err() {
            prop_assert_eq!(st, crate::state::DestState::default());
        }
        let _ = crate::state::Live::load(dir.path(), "home");
    }

    /// A vault config is plain JSON at the destination: anything there gives an error or a
    /// config whose key derivation refuses what it cannot afford.
    #[test]
    fn vault_configs_from_anyone_are_safe(text in ".{0,400}") {
        if let Ok(c) = serde_json::from_str::<format::VaultConfig>(&text) {
            let k = &c.kdf;
            if k.m_kib > 1 << 20 || k.t > 16 || k.p > 16 {
                prop_assert!(k.derive(b"x").is_err());
            }
        }
    }
}
