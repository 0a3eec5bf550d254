//! Formats on destinations are pinned: a small vault and a small mirror written by format 1
//! are stored in `tests/fixtures/` and restored by this code, exactly; and known answers pin
//! the key derivation, the subkeys, the associated data, the sealed-object layout and chunk
//! ids, read with the primitives directly, the way `docs/vault-format.md` tells another
//! reader to. A format slip fails here, not in a user's restore.
//!
//! The fixtures were made once by `BACKPOCKET_WRITE_FIXTURES=1 cargo test -p replicator --test
//! formats -- --ignored write_fixtures` (as root, so that an owner is stored) and committed; never make them again for
//! format 1: a new format gets fixtures of its own beside these.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

mod common;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use replicator::{
    format, restore, sync, DestSpec, GroupSpec, KdfParams, Key, Mode, Progress, RestoreOptions,
    Store, Vault,
};

const PASSPHRASE: &[u8] = b"correct horse battery staple";
const POCKET_ID: &str = "fixture-pocket-v1";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Argon2id parameters small enough for a test, with a fixed salt.
fn kdf() -> KdfParams {
    KdfParams {
        algorithm: "argon2id".into(),
        m_kib: 1024,
        t: 1,
        p: 1,
        salt: (0u8..16).collect(),
    }
}

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// The pocket the fixtures hold: one of everything a restore must reproduce.
fn build_pocket(p: &Path) {
    let w = |rel: &str, data: &[u8], mode: u32| {
        let f = p.join(rel);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, data).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    w("docs/report.txt", b"the report, second draft\n", 0o640);
    w("docs/notes.md", &b"# notes\n".repeat(5000), 0o644);
    w("bin/tool", b"#!/bin/sh\necho tool\n", 0o4755);
    w("bin/old-tool", b"removed before the second drain", 0o755);
    let latin1 = std::ffi::OsStr::from_bytes(b"r\xe9sum\xe9 \xff.txt");
    std::fs::write(p.join(latin1), b"a name that is not UTF-8").unwrap();
    // Two chunks' worth of data that compresses, and one that does not.
    let mut x = 0x1234_5678_9abc_def1u64;
    let noise: Vec<u8> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    w("data/noise.bin", &noise, 0o600);
    std::os::unix::fs::symlink("docs/report.txt", p.join("latest")).unwrap();
    std::fs::hard_link(p.join("docs/notes.md"), p.join("notes-link.md")).unwrap();
    std::fs::create_dir_all(p.join("empty/folder")).unwrap();
    std::fs::set_permissions(p.join("empty"), std::fs::Permissions::from_mode(0o750)).unwrap();
    rustix::fs::setxattr(
        p.join("docs/report.txt").as_path(),
        "user.reviewed",
        b"yes",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    // Sparse: data at 0 and at 1 MiB of a 2 MiB file.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(p.join("data/sparse.img")).unwrap();
        f.set_len(2 << 20).unwrap();
        f.write_all_at(&[0xab; 4096], 0).unwrap();
        f.write_all_at(&[0xcd; 4096], 1 << 20).unwrap();
    }
    if is_root() {
        rustix::fs::chownat(
            rustix::fs::CWD,
            p.join("docs/notes.md").as_path(),
            Some(rustix::fs::Uid::from_raw(1234)),
            Some(rustix::fs::Gid::from_raw(5678)),
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();
        std::fs::set_permissions(p.join("bin/tool"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
    }
    // Fixed times, folders last and deepest first.
    let mut all: Vec<PathBuf> = Vec::new();
    let mut stack = vec![p.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap().path();
            if e.file_name().unwrap() == ".backpocket" {
                continue;
            }
            if e.symlink_metadata().unwrap().is_dir() {
                stack.push(e.clone());
            }
            all.push(e);
        }
    }
    all.sort_by_key(|e| std::cmp::Reverse(e.components().count()));
    for (i, e) in all.iter().enumerate() {
        set_mtime(e, 1_700_000_000 + i as i64 * 61, 123_456_789);
    }
}

/// What a restore must give, one line per path: kind and mode, owner, mtime, size, contents
/// hash, data runs, link target, xattrs, hard-link identity.
fn manifest(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut first_of: BTreeMap<u64, String> = BTreeMap::new();
    let mut entries = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            if rel.starts_with(b".backpocket") {
                continue;
            }
            if p.symlink_metadata().unwrap().is_dir() {
                stack.push(p.clone());
            }
            // Names as bytes, escaped, so any name has one line.
            entries.push((rel.escape_ascii().to_string(), p));
        }
    }
    entries.sort();
    for (rel, p) in entries {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let mut line = format!(
            "mode={:o} owner={}:{} mtime={}.{:09}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.mtime(),
            m.mtime_nsec()
        );
        if m.is_file() {
            let data = std::fs::read(&p).unwrap();
            line += &format!(" size={} blake3={}", m.len(), blake3::hash(&data).to_hex());
            line += &format!(" data={:?}", data_runs(&p, m.len()));
            let first = first_of.entry(m.ino()).or_insert_with(|| rel.clone());
            if *first != rel {
                line += &format!(" hardlink-of={first}");
            }
        } else if m.is_symlink() {
            line += &format!(" -> {:?}", std::fs::read_link(&p).unwrap());
        }
        if !m.is_symlink() {
            for (n, v) in journal::read_xattrs(&p).unwrap_or_default() {
                line += &format!(" {}={}", n.escape_ascii(), v.escape_ascii());
            }
        }
        out.insert(rel, line);
    }
    out
}

fn data_runs(p: &Path, size: u64) -> Vec<(u64, u64)> {
    use rustix::fs::{seek, SeekFrom};
    let f = std::fs::File::open(p).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Ok(start) = seek(&f, SeekFrom::Data(pos)) else {
            break;
        };
        let end = seek(&f, SeekFrom::Hole(start)).unwrap().min(size);
        out.push((start, end));
        pos = end;
    }
    out
}

fn expected_path() -> PathBuf {
    fixtures().join("format-v1-expected.txt")
}

fn read_expected() -> BTreeMap<String, String> {
    std::fs::read_to_string(expected_path())
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// Owners come back only when restoring as root.
fn comparable(mut m: BTreeMap<String, String>) -> BTreeMap<String, String> {
    if !is_root() {
        for v in m.values_mut() {
            let start = v.find(" owner=").unwrap();
            let end = start + 1 + v[start + 1..].find(' ').unwrap();
            v.replace_range(start..end, "");
        }
    }
    m
}

fn assert_restored(what: &str, got: &Path) {
    let want = comparable(read_expected());
    let got = comparable(manifest(got));
    let mut diffs = Vec::new();
    for (k, v) in &want {
        match got.get(k) {
            None => diffs.push(format!("missing {k}: {v}")),
            Some(g) if g != v => diffs.push(format!("{k}:\n   stored {v}\n   got    {g}")),
            _ => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        diffs.push(format!("extra {k}"));
    }
    assert!(
        diffs.is_empty(),
        "{what} of format 1 did not restore exactly:\n{}",
        diffs.join("\n")
    );
}

fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Makes the fixtures (once per format version; see the module's comment). Not a test: run
/// by hand, it overwrites the stored fixtures.
#[test]
#[ignore = "writes the fixtures; run by hand with BACKPOCKET_WRITE_FIXTURES=1 -- --ignored"]
fn write_fixtures_when_asked() {
    assert!(
        std::env::var_os("BACKPOCKET_WRITE_FIXTURES").is_some(),
        "set BACKPOCKET_WRITE_FIXTURES=1 to overwrite the stored fixtures"
    );
    assert!(
        is_root(),
        "write the fixtures as root, so that an owner is stored"
    );
    let tmp = tempfile::tempdir().unwrap();
    let pocket = tmp.path().join("pocket");
    std::fs::create_dir_all(pocket.join(".backpocket")).unwrap();
    build_pocket(&pocket);
    let db = pocket.join(".backpocket/journal.db");
    let ino = std::fs::metadata(&pocket).unwrap().ino();
    journal::Journal::create(&db, ino).unwrap().close().unwrap();
    let scan = || {
        let j = journal::Journal::open(&db).unwrap();
        journal::scan(&pocket, &db, &j.handle()).unwrap();
        j.close().unwrap();
    };
    scan();

    // Fixtures of earlier formats (vault-v1, mirror-v1.tar, the expected manifest, vault-v2)
    // are history: they were written by the code of their time and stay as they are. This
    // writes the current format.
    let vault_dir = fixtures().join(format!("vault-v{}", replicator::format::VAULT_FORMAT));
    let _ = std::fs::remove_dir_all(&vault_dir);
    let key = kdf().derive(PASSPHRASE).unwrap();
    let rt = replicator::runtime().unwrap();
    let store = Store::open(vault_dir.to_str().unwrap(), rt.handle().clone(), true).unwrap();
    Vault::create(store, POCKET_ID, kdf(), &key).unwrap();
    let setup = common::vault_setup(&pocket, &vault_dir, POCKET_ID, &key);
    let sync_all = || {
        let target = journal::Reader::open(&db)
            .unwrap()
            .status()
            .unwrap()
            .last_seq;
        for outcome in sync(
            &setup,
            target,
            &Progress::default(),
            &AtomicBool::new(false),
        ) {
            outcome.result.unwrap();
        }
    };
    // A checkpoint, then three segments (a file made and removed again in the last two, so
    // the pocket ends as the expected manifest says), then maintenance: a log bundle, one
    // repacked pack, an index set.
    sync_all();
    std::fs::write(pocket.join("docs/report.txt"), b"the report, third draft\n").unwrap();
    set_mtime(&pocket.join("docs/report.txt"), 1_700_100_000, 5);
    std::fs::rename(
        pocket.join("data/noise.bin"),
        pocket.join("data/noise-moved.bin"),
    )
    .unwrap();
    std::fs::remove_file(pocket.join("bin/old-tool")).unwrap();
    set_mtime(&pocket.join("data"), 1_700_100_100, 0);
    set_mtime(&pocket.join("bin"), 1_700_100_200, 0);
    set_mtime(&pocket.join("docs"), 1_700_100_300, 0);
    scan();
    sync_all();
    std::fs::write(pocket.join("docs/draft.tmp"), b"a passing draft\n").unwrap();
    scan();
    sync_all();
    std::fs::remove_file(pocket.join("docs/draft.tmp")).unwrap();
    set_mtime(&pocket.join("docs"), 1_700_100_300, 0);
    scan();
    sync_all();
    // Format 3: two versions of a file edited in place, stored as patches (the second puts
    // the bytes back, so that the pocket ends as the manifest says).
    {
        use std::os::unix::fs::FileExt;
        let p = pocket.join("data/noise-moved.bin");
        let before = std::fs::symlink_metadata(&p).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        let old = std::fs::read(&p).unwrap()[150_000..154_096].to_vec();
        f.write_all_at(&[0x5a; 4096], 150_000).unwrap();
        set_mtime(&p, 1_700_100_400, 0);
        scan();
        sync_all();
        f.write_all_at(&old, 150_000).unwrap();
        set_mtime(&p, before.mtime(), before.mtime_nsec());
        scan();
        sync_all();
    }
    let store = Store::open(vault_dir.to_str().unwrap(), rt.handle().clone(), false).unwrap();
    let mut vault = Vault::open(store, &key).unwrap();
    let opts = replicator::MaintainOptions {
        grace: std::time::Duration::ZERO,
        ..Default::default()
    };
    let r = replicator::maintain(&mut vault, &opts, None, &|| false, &Progress::default()).unwrap();
    assert!(r.bundles_written == 1 && r.packs_written == 1, "{r:?}");
    rt.shutdown_background();
    assert_eq!(
        manifest(&pocket),
        read_expected(),
        "the pocket must end as the stored manifest says"
    );
}

/// Restores the newest point of `vault` into `out`, every file.
fn restore_whole(vault: &Vault, out: &Path) {
    let report = restore(
        vault,
        &RestoreOptions {
            target: out.to_owned(),
            at: None,
            paths: Vec::new(),
            owners: is_root(),
            workers: 2,
            map_names: false,
            specials: true,
            case_insensitive: false,
        },
        &Progress::default(),
    )
    .unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
}

/// Opens a copy of a stored vault fixture, restores it and checks it against the manifest.
fn restore_fixture(name: &str, maintain_first: bool) -> replicator::VerifyReport {
    let tmp = tempfile::tempdir().unwrap();
    let vault_dir = tmp.path().join("vault");
    copy_tree(&fixtures().join(name), &vault_dir);
    let rt = replicator::runtime().unwrap();
    let store = Store::open(vault_dir.to_str().unwrap(), rt.handle().clone(), false).unwrap();
    let key = kdf().derive(PASSPHRASE).unwrap();
    let mut vault = Vault::open(store, &key).unwrap();
    if maintain_first {
        let opts = replicator::MaintainOptions {
            grace: std::time::Duration::ZERO,
            ..Default::default()
        };
        let r =
            replicator::maintain(&mut vault, &opts, None, &|| false, &Progress::default()).unwrap();
        assert!(r.upgraded, "{r:?}");
        let store = Store::open(vault_dir.to_str().unwrap(), rt.handle().clone(), false).unwrap();
        assert_eq!(
            Vault::read_config(&store).unwrap().backpocket_vault,
            replicator::format::VAULT_FORMAT
        );
    }
    let out = tmp.path().join("out");
    restore_whole(&vault, &out);
    assert_restored(name, &out);
    replicator::verify(&vault, true, &Progress::default()).unwrap()
}

#[test]
fn a_vault_of_format_2_restores_exactly() {
    let v = restore_fixture("vault-v2", false);
    assert!(v.damage.is_empty(), "{:?}", v.damage);
    // It holds what format 2 adds: a bundle and an index set.
    let dir = fixtures().join("vault-v2");
    let names = |d: &str| -> Vec<String> {
        std::fs::read_dir(dir.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert!(
        names("log").iter().any(|n| n.contains('-')),
        "{:?}",
        names("log")
    );
    assert!(names("index").iter().all(|n| n.starts_with("set-")));
    // And the chunk sizes by file size that format 2 vaults are made with.
    let rt = replicator::runtime().unwrap();
    let store = Store::open(dir.to_str().unwrap(), rt.handle().clone(), false).unwrap();
    let config = Vault::read_config(&store).unwrap();
    assert_eq!(config.backpocket_vault, 2);
    assert!(config.chunker.large.is_some(), "{:?}", config.chunker);
}

#[test]
fn maintenance_moves_a_format_1_vault_to_the_current_format() {
    let v = restore_fixture("vault-v1", true);
    assert!(v.damage.is_empty(), "{:?}", v.damage);
}

#[test]
fn maintenance_moves_a_format_2_vault_to_the_current_format() {
    let v = restore_fixture("vault-v2", true);
    assert!(v.damage.is_empty(), "{:?}", v.damage);
}

#[test]
fn a_vault_of_format_3_restores_exactly() {
    let v = restore_fixture("vault-v3", false);
    assert!(v.damage.is_empty(), "{:?}", v.damage);
    let dir = fixtures().join("vault-v3");
    let rt = replicator::runtime().unwrap();
    let store = Store::open(dir.to_str().unwrap(), rt.handle().clone(), false).unwrap();
    let config = Vault::read_config(&store).unwrap();
    assert_eq!(config.backpocket_vault, 3);
    // What format 3 adds: small files cut smaller, and versions stored as patches.
    assert!(config.chunker.small.is_some(), "{:?}", config.chunker);
    let key = kdf().derive(PASSPHRASE).unwrap();
    let vault = Vault::open(store, &key).unwrap();
    let mut patches = 0;
    vault
        .replay_all(&mut |_, _, obj| {
            if let replicator::LogObject::Segment(s) = obj {
                patches += s
                    .records
                    .iter()
                    .filter(|r| matches!(r.change, replicator::format::VChange::Patch { .. }))
                    .count();
            }
            Ok(())
        })
        .unwrap();
    // The two edits (a scan may read the file once more as "racily clean": a third).
    assert!(patches >= 2, "{patches} patches");
}

/// A group of 2 of 3 members in `root` (`m0`, `m1`, `m2`; the group's folder `g` in each).
fn group_spec(root: &Path) -> DestSpec {
    let spec = |name: String, url: String, group: Option<GroupSpec>| DestSpec {
        name,
        url,
        mode: Mode::Vault,
        keep_versions: std::time::Duration::from_secs(0),
        access: Default::default(),
        when: Vec::new(),
        group,
    };
    let members = (0..3)
        .map(|i| {
            let dir = root.join(format!("m{i}"));
            spec(format!("m{i}"), dir.to_str().unwrap().into(), None)
        })
        .collect();
    spec(
        "g".into(),
        "group:m0,m1,m2".into(),
        Some(GroupSpec {
            k: 2,
            members,
            folder: "g".into(),
        }),
    )
}

/// The group fixture: the format 3 vault fixture, every object written through a group of 2
/// of 3 (so the shards pin the group layout `docs/vault-format.md` gives).
#[test]
#[ignore = "writes the fixtures; run by hand with BACKPOCKET_WRITE_FIXTURES=1 -- --ignored"]
fn write_group_fixture_when_asked() {
    assert!(
        std::env::var_os("BACKPOCKET_WRITE_FIXTURES").is_some(),
        "set BACKPOCKET_WRITE_FIXTURES=1 to overwrite the stored fixtures"
    );
    let dir = fixtures().join("group-v1");
    let _ = std::fs::remove_dir_all(&dir);
    for i in 0..3 {
        std::fs::create_dir_all(dir.join(format!("m{i}"))).unwrap();
    }
    let rt = replicator::runtime().unwrap();
    let from = fixtures().join("vault-v3");
    let from = Store::open(from.to_str().unwrap(), rt.handle().clone(), false).unwrap();
    let to = group_spec(&dir)
        .store(None, rt.handle().clone(), true)
        .unwrap();
    for (key, _) in from.list("").unwrap() {
        to.put(&key, from.get(&key).unwrap()).unwrap();
    }
}

#[test]
fn a_group_vault_restores_exactly_from_any_two_of_its_three_members() {
    let key = kdf().derive(PASSPHRASE).unwrap();
    for gone in [None, Some(0), Some(1), Some(2)] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("group");
        copy_tree(&fixtures().join("group-v1"), &root);
        if let Some(i) = gone {
            std::fs::remove_dir_all(root.join(format!("m{i}"))).unwrap();
        }
        let rt = replicator::runtime().unwrap();
        let store = group_spec(&root)
            .store(None, rt.handle().clone(), false)
            .unwrap();
        let vault = Vault::open(store, &key).unwrap();
        let out = tmp.path().join("out");
        restore_whole(&vault, &out);
        assert_restored("group-v1", &out);
        let v = replicator::verify(&vault, true, &Progress::default()).unwrap();
        assert!(v.damage.is_empty(), "{gone:?}: {:?}", v.damage);
        for m in &v.members {
            assert!(m.lacking.is_empty(), "{gone:?}: {m:?}");
            assert_eq!(
                m.away.is_some(),
                Some(m.member.as_str()) == gone.map(|i| format!("m{i}")).as_deref(),
                "{m:?}"
            );
        }
        rt.shutdown_background();
    }
    // A pack two members lost cannot be read: verify says so (it is listed by the third).
    {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("group");
        copy_tree(&fixtures().join("group-v1"), &root);
        for i in 0..2 {
            std::fs::remove_dir_all(root.join(format!("m{i}/g/data"))).unwrap();
        }
        let rt = replicator::runtime().unwrap();
        let store = group_spec(&root)
            .store(None, rt.handle().clone(), false)
            .unwrap();
        let vault = Vault::open(store, &key).unwrap();
        let v = replicator::verify(&vault, false, &Progress::default()).unwrap();
        assert!(
            v.damage
                .iter()
                .any(|d| d.object.starts_with("data/") && d.detail.contains("cannot be read")),
            "{:?}",
            v.damage
        );
        rt.shutdown_background();
    }
    // No member holds a whole object of the vault it spreads: each pack's bytes are in no
    // member's shard, 32 bytes in a row.
    let plain = fixtures().join("vault-v3/data");
    let mut packs = Vec::new();
    let mut stack = vec![plain];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                packs.push(std::fs::read(e.path()).unwrap());
            }
        }
    }
    for i in 0..3 {
        let mut stack = vec![fixtures().join(format!("group-v1/m{i}/g/data"))];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                    continue;
                }
                let shard = std::fs::read(e.path()).unwrap();
                for p in &packs {
                    for w in p.chunks(1024).filter(|w| w.len() >= 32) {
                        assert!(!shard.windows(32).any(|x| x == &w[..32]));
                    }
                }
            }
        }
    }
}

#[test]
fn a_vault_of_format_1_restores_exactly() {
    let v = restore_fixture("vault-v1", false);
    assert!(v.damage.is_empty(), "{:?}", v.damage);
    // A wrong passphrase is refused as such.
    let rt = replicator::runtime().unwrap();
    let dir = fixtures().join("vault-v1");
    let store = Store::open(dir.to_str().unwrap(), rt.handle().clone(), false).unwrap();
    let wrong = kdf().derive(b"Correct horse battery staple").unwrap();
    assert!(matches!(
        Vault::open(store, &wrong),
        Err(replicator::Error::WrongPassphrase)
    ));
}

#[test]
fn a_mirror_of_format_1_restores_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = tmp.path().join("mirror");
    std::fs::create_dir(&mirror).unwrap();
    let tar = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(fixtures().join("mirror-v1.tar"))
        .arg("-C")
        .arg(&mirror)
        .status()
        .unwrap();
    assert!(tar.success());
    let out = tmp.path().join("out");
    let report =
        replicator::restore_mirror(&mirror, &out, &[], is_root(), &Progress::default()).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_restored("the mirror", &out);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Known answers, read the way docs/vault-format.md tells another reader to.
#[test]
fn known_answers_pin_the_vault_crypto() {
    // The pocket key: Argon2id v0x13 of the passphrase.
    let pocket_key = kdf().derive(PASSPHRASE).unwrap();
    assert_eq!(
        hex(pocket_key.as_bytes()),
        KAT_POCKET_KEY,
        "the key a passphrase gives changed: every existing pocket and vault would be locked out"
    );
    // Subkeys: BLAKE3 derive_key with the documented contexts, of a fixed master key.
    let master = Key::from_bytes(&[0x42; 32]).unwrap();
    let subkeys: Vec<String> = [
        "backpocket vault 1 blob",
        "backpocket vault 1 objects",
        "backpocket vault 1 chunk id",
        "backpocket vault 1 pack name",
        "backpocket vault 1 gear seed",
    ]
    .iter()
    .map(|c| hex(master.derive(c).as_bytes()))
    .collect();
    assert_eq!(subkeys, KAT_SUBKEYS);
    // Associated data.
    assert_eq!(
        format::aad("log", "00000000000000000001"),
        b"backpocket-vault-1 log 00000000000000000001"
    );

    // The stored vault: the master key unwrapped with the documented associated data, a log
    // segment opened with plain AES-256-GCM (nonce first, then ciphertext and tag), its CBOR
    // read after zstd, and a chunk id computed as documented and as the vault computes it.
    let dir = fixtures().join("vault-v1");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config")).unwrap()).unwrap();
    let id = config["id"].as_str().unwrap();
    let wrapped = hex_decode(config["wrapped_key"].as_str().unwrap());
    let master = Key::from_bytes(&aes_open(
        &pocket_key,
        format!("backpocket-vault-1 master-key {id}").as_bytes(),
        &wrapped,
    ))
    .unwrap();
    let objects = master.derive("backpocket vault 1 objects");
    for (folder, kind, fields) in [
        (
            "checkpoints",
            "checkpoint",
            &["pos", "root", "files", "names"][..],
        ),
        ("log", "log", &["pos", "first_seq", "records"][..]),
    ] {
        let stored: Vec<PathBuf> = std::fs::read_dir(dir.join(folder))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(stored.len(), 1, "the fixture has one {kind}");
        let name = stored[0].file_name().unwrap().to_str().unwrap();
        assert!(
            name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()),
            "{kind} objects are named by 20 digits: {name}"
        );
        let plain = aes_open(
            &objects,
            &format::aad(kind, name),
            &std::fs::read(&stored[0]).unwrap(),
        );
        let cbor = zstd::decode_all(&plain[..]).unwrap();
        let value: ciborium::Value = ciborium::from_reader(&cbor[..]).unwrap();
        let keys: Vec<String> = value
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_text().unwrap().to_owned())
            .collect();
        assert_eq!(keys, fields, "the fields of a {kind}");
    }

    let rt = replicator::runtime().unwrap();
    let store = Store::open(dir.to_str().unwrap(), rt.handle().clone(), false).unwrap();
    let vault = Vault::open(store, &pocket_key).unwrap();
    let documented = blake3::keyed_hash(
        master.derive("backpocket vault 1 chunk id").as_bytes(),
        b"backpocket",
    );
    assert_eq!(vault.chunk_id(b"backpocket"), *documented.as_bytes());
    assert_eq!(hex(documented.as_bytes()), KAT_FIXTURE_CHUNK_ID);
}

fn aes_open(key: &Key, aad: &[u8], sealed: &[u8]) -> Vec<u8> {
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(key.as_bytes()).unwrap();
    let nonce = aes_gcm::aead::Nonce::<aes_gcm::Aes256Gcm>::try_from(&sealed[..12]).unwrap();
    cipher
        .decrypt(
            &nonce,
            Payload {
                msg: &sealed[12..],
                aad,
            },
        )
        .expect("a sealed object opens with AES-256-GCM, the nonce in its first 12 bytes")
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// Checked against implementations other than ours when pinned: argon2-cffi (the reference C
// Argon2) and the reference BLAKE3 (Python's blake3).
const KAT_POCKET_KEY: &str = "f0d1525842159cef972608e2f8bc1cb2c8230f81eea76f124789f6beb42403b2";
const KAT_SUBKEYS: [&str; 5] = [
    "bc1044750fb74b4bfc2a8b1f7b3ffeb2b1e40e5984250491634508a4a787cc05",
    "ab2167848cc7ffa88305223d4d705247e0fc0e4d3b6680b7370936d2432d7287",
    "7ce590f2375adb16c6b9cf1e944bae923825435dc05c5b02050c1a3fbbda932b",
    "1b659161602fa97f5ab13efa482c40be6bd96451ee56297c5c878fa612444ac4",
    "31b093ecfbcbb433f722b6b6488b8655b0fae5ef311cb10f1c2a57da61f82a63",
];
/// The chunk id of `backpocket` in the stored vault (whose master key is random, so this
/// also pins the fixture's key unwrapping).
const KAT_FIXTURE_CHUNK_ID: &str =
    "e8e206bbf4ab389b742cb02e5d5fd9ae7b28e88d007ae0588ff98c0add2be229";
