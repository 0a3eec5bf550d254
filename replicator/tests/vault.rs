//! The vault end to end without a mount: a pocket changed on disk and scanned into a journal,
//! drained to a vault, restored, compared; tampering, wrong keys, points in time.
// Builds pockets with Unix metadata (owners, xattrs, special files) and scans them.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

mod common;

use replicator::{
    restore, sync, versions, DestSpec, KdfParams, Key, Mode, Progress, RestoreOptions, Setup,
    Store, Vault,
};

struct Fixture {
    _tmp: tempfile::TempDir,
    pocket: PathBuf,
    vault_dir: PathBuf,
    key: Key,
    kdf: KdfParams,
}

use common::kdf;

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let pocket = tmp.path().join("pocket");
        std::fs::create_dir_all(pocket.join(".backpocket")).unwrap();
        let ino = std::fs::metadata(&pocket).unwrap().ino();
        journal::Journal::create(&pocket.join(".backpocket/journal.db"), ino)
            .unwrap()
            .close()
            .unwrap();
        let kdf = kdf();
        let key = kdf.derive(b"correct horse").unwrap();
        let vault_dir = tmp.path().join("vault");
        let rt = replicator::runtime().unwrap();
        let store = Store::open(vault_dir.to_str().unwrap(), rt.handle().clone(), true).unwrap();
        Vault::create(store, "pocket-1", kdf.clone(), &key).unwrap();
        rt.shutdown_background();
        Fixture {
            _tmp: tmp,
            pocket,
            vault_dir,
            key,
            kdf,
        }
    }

    fn scan(&self) {
        let j = journal::Journal::open(&self.journal()).unwrap();
        journal::scan(&self.pocket, &self.journal(), &j.handle()).unwrap();
        j.close().unwrap();
    }

    fn journal(&self) -> PathBuf {
        self.pocket.join(".backpocket/journal.db")
    }

    fn setup(&self) -> Setup {
        common::vault_setup(&self.pocket, &self.vault_dir, "pocket-1", &self.key)
    }

    fn sync(&self) -> replicator::SyncReport {
        self.scan();
        let target = journal::Reader::open(&self.journal())
            .unwrap()
            .status()
            .unwrap()
            .last_seq;
        let mut out = sync(
            &self.setup(),
            target,
            &Progress::default(),
            &AtomicBool::new(false),
        );
        out.remove(0).result.unwrap()
    }

    /// A mirror destination instead of the vault: its folder, and the setup that drains to it.
    fn mirror(&self) -> (PathBuf, Setup) {
        let mirror = self._tmp.path().join("mirror");
        let rt = replicator::runtime().unwrap();
        let store = Store::open(mirror.to_str().unwrap(), rt.handle().clone(), true).unwrap();
        replicator::init_mirror(&store, "pocket-1").unwrap();
        let mut setup = self.setup();
        setup.dests = vec![DestSpec {
            name: "m".into(),
            url: mirror.to_str().unwrap().into(),
            mode: Mode::Mirror,
            keep_versions: std::time::Duration::from_secs(3600),
            access: Default::default(),
            when: Vec::new(),
            group: None,
        }];
        (mirror, setup)
    }

    /// Restores the mirror into a new folder `into` and insists it is the pocket exactly.
    fn restore_mirror_exactly(&self, mirror: &Path, into: &str) {
        let out = self._tmp.path().join(into);
        let r = replicator::restore_mirror(mirror, &out, &[], false, &Progress::default()).unwrap();
        assert!(r.failed.is_empty(), "{:?}", r.failed);
        assert_eq!(snapshot(&self.pocket), snapshot(&out));
    }

    /// Drains what the journal holds to `setup`'s destination (without scanning first).
    fn drain(&self, setup: &Setup) -> replicator::SyncReport {
        let target = journal::Reader::open(&self.journal())
            .unwrap()
            .status()
            .unwrap()
            .last_seq;
        let mut out = sync(setup, target, &Progress::default(), &AtomicBool::new(false));
        out.remove(0).result.unwrap()
    }

    fn open_vault(&self) -> (tokio::runtime::Runtime, Vault) {
        let rt = replicator::runtime().unwrap();
        let store =
            Store::open(self.vault_dir.to_str().unwrap(), rt.handle().clone(), false).unwrap();
        let v = Vault::open(store, &self.key).unwrap();
        (rt, v)
    }

    fn restore(&self, to: &Path, at: Option<i64>) -> replicator::RestoreReport {
        let (_rt, v) = self.open_vault();
        common::restore_all(&v, to, at, rustix::process::geteuid().is_root()).unwrap()
    }
}

/// Everything restore promises, per path: kind, mode, size, mtime (not for folders whose
/// entries we compare anyway), link target, contents hash, xattrs, link identity.
fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            if rel.starts_with(b".backpocket") {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mut line = format!(
                "mode={:o} uid={} gid={} mtime={}.{}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime(),
                m.mtime_nsec()
            );
            if m.is_file() {
                let data = std::fs::read(&p).unwrap();
                line += &format!(
                    " size={} blocks0={} hash={}",
                    m.len(),
                    m.blocks() == 0,
                    blake3::hash(&data).to_hex()
                );
                let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone());
                line += &format!(" link={}", String::from_utf8_lossy(first));
            } else if m.is_symlink() {
                line += &format!(" target={:?}", std::fs::read_link(&p).unwrap());
            } else if m.is_dir() {
                stack.push(p.clone());
            }
            if let Ok(names) = xattr_list(&p) {
                line += &format!(" xattrs={names:?}");
            }
            out.insert(rel, line);
        }
    }
    out
}

fn xattr_list(p: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    journal::read_xattrs(p)
}

fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn drain_then_restore_is_exact() {
    let f = Fixture::new();
    let p = &f.pocket;
    write(&p.join("a/b/small.txt"), b"hello world\n");
    write(&p.join("big.bin"), &pseudo_random(5 << 20, 7));
    write(
        &p.join("text.txt"),
        &b"the same line again\n".repeat(100_000),
    );
    std::fs::create_dir_all(p.join("empty/dir")).unwrap();
    std::os::unix::fs::symlink("a/b/small.txt", p.join("link")).unwrap();
    std::fs::hard_link(p.join("a/b/small.txt"), p.join("hard")).unwrap();
    let weird = std::ffi::OsStr::from_bytes(b"caf\xe9 \xff name");
    write(&p.join(weird), b"latin-1 name");
    std::fs::set_permissions(
        p.join("a/b/small.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    // A sparse file: 1 MiB of data in the middle of 64 MiB.
    {
        let sp = std::fs::File::create(p.join("sparse")).unwrap();
        sp.set_len(64 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&sp, &pseudo_random(1 << 20, 3), 20 << 20)
            .unwrap();
    }
    rustix::fs::setxattr(
        p.join("text.txt").as_path(),
        "user.colour",
        b"blue",
        rustix::fs::XattrFlags::empty(),
    )
    .ok();
    let r = f.sync();
    assert!(r.drained.checkpoint, "the first drain writes a checkpoint");
    let out = f._tmp.path().join("out");
    let rep = f.restore(&out, None);
    assert!(rep.failed.is_empty(), "{:?}", rep.failed);
    assert_eq!(snapshot(p), snapshot(&out));
    // The hole map survives: the restored sparse file does not use 64 MiB.
    assert!(std::fs::metadata(out.join("sparse")).unwrap().blocks() * 512 < 8 << 20);

    // Changes: edit, rename, delete, new file; drained as a segment.
    write(&p.join("a/b/small.txt"), b"hello again\n");
    std::fs::rename(p.join("big.bin"), p.join("a/big-moved.bin")).unwrap();
    std::fs::remove_file(p.join("hard")).unwrap();
    write(&p.join("new/file"), b"new");
    std::fs::remove_dir(p.join("empty/dir")).unwrap();
    let r2 = f.sync();
    assert!(!r2.drained.checkpoint);
    assert!(
        r2.drained.bytes_uploaded < 1 << 20,
        "a rename re-sends nothing: {r2:?}"
    );
    let out2 = f._tmp.path().join("out2");
    f.restore(&out2, None);
    assert_eq!(snapshot(p), snapshot(&out2));

    // The first point is still there.
    let out3 = f._tmp.path().join("out3");
    let first = f.restore(&f._tmp.path().join("probe"), None).point_time_ns;
    assert!(first > 0);
    let (_rt, v) = f.open_vault();
    let points = v.points().unwrap();
    assert_eq!(points.len(), 2);
    f.restore(&out3, Some(points[0].time_ns));
    assert_eq!(
        std::fs::read(out3.join("a/b/small.txt")).unwrap(),
        b"hello world\n"
    );
    assert!(out3.join("big.bin").exists() && !out3.join("new").exists());
    let vs = versions(&v, b"a/b/small.txt").unwrap();
    assert_eq!(vs.len(), 2, "{vs:?}");
}

#[test]
fn wrong_key_is_refused_and_vault_holds_no_plaintext() {
    let f = Fixture::new();
    let secret_name = "quarterly-salaries-2026.ods";
    let secret_text = b"Alice earns exactly 123456 per year, do not share";
    write(&f.pocket.join(secret_name), &secret_text.repeat(50));
    write(&f.pocket.join("tiny"), b"x");
    f.sync();
    // No object at the vault contains a name or content in plain text.
    let mut stack = vec![f.vault_dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            assert!(!p.to_string_lossy().contains("salaries"));
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let b = std::fs::read(&p).unwrap();
            for needle in [secret_name.as_bytes(), b"earns exactly", b"tiny"] {
                assert!(
                    !b.windows(needle.len()).any(|w| w == needle),
                    "{} holds plaintext",
                    p.display()
                );
            }
        }
    }
    let rt = replicator::runtime().unwrap();
    let store = Store::open(f.vault_dir.to_str().unwrap(), rt.handle().clone(), false).unwrap();
    let wrong = f.kdf.derive(b"wrong horse").unwrap();
    let err = Vault::open(store, &wrong).unwrap_err();
    assert!(matches!(err, replicator::Error::WrongPassphrase), "{err}");
    assert!(err.to_string().contains("wrong passphrase"));
}

#[test]
fn a_flipped_byte_is_found_by_verify_and_refused_by_restore() {
    let f = Fixture::new();
    write(&f.pocket.join("doc/report.txt"), &pseudo_random(300_000, 9));
    write(&f.pocket.join("other.txt"), &pseudo_random(2_000, 10));
    f.sync();
    let (_rt, v) = f.open_vault();
    let clean = replicator::verify(&v, true, &Progress::default()).unwrap();
    assert!(clean.damage.is_empty(), "{:?}", clean.damage);
    assert!(clean.packs >= 1 && clean.chunks >= 2);
    // Flip one byte in the middle of the first pack.
    let pack = walk_files(&f.vault_dir.join("data"))
        .into_iter()
        .next()
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = 1000;
    bytes[mid] ^= 0x40;
    std::fs::write(&pack, &bytes).unwrap();
    let fast = replicator::verify(&v, false, &Progress::default()).unwrap();
    assert!(
        fast.damage.is_empty(),
        "presence and size still match without --read-data"
    );
    let rep = replicator::verify(&v, true, &Progress::default()).unwrap();
    assert_eq!(rep.damage.len(), 1, "{:?}", rep.damage);
    let d = &rep.damage[0];
    assert!(d.object.starts_with("data/"), "{d:?}");
    assert!(
        d.affects
            .iter()
            .any(|a| a.starts_with("doc/report.txt") || a.starts_with("other.txt")),
        "{d:?}"
    );
    let out = f._tmp.path().join("out");
    let r = common::restore_all(&v, &out, None, false).unwrap();
    assert_eq!(r.failed.len(), 1, "{:?}", r.failed);
    let bad = String::from_utf8_lossy(&r.failed[0].0).into_owned();
    assert!(
        !out.join(&bad).exists(),
        "a damaged file is not left looking restored"
    );
}

fn walk_files(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![d.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn forget_keeps_what_the_policy_names_and_prune_frees_the_rest() {
    let f = Fixture::new();
    let p = &f.pocket;
    write(&p.join("stable.txt"), b"never changes");
    for round in 0..4u64 {
        write(
            &p.join("big.bin"),
            &pseudo_random(2 << 20, 1000 + 2 * round),
        );
        write(&p.join(format!("round-{round}")), b"x");
        f.sync();
    }
    let (_rt, mut v) = f.open_vault();
    assert_eq!(v.points().unwrap().len(), 4);
    let before = dir_size(&f.vault_dir.join("data"));
    let policy = replicator::KeepPolicy {
        last: 2,
        ..Default::default()
    };
    let (dry, _) = replicator::forget(&v, &policy, true).unwrap();
    assert_eq!((dry.kept.len(), dry.removed), (2, 2));
    assert_eq!(v.points().unwrap().len(), 4, "a dry run changes nothing");
    replicator::forget(&v, &policy, false).unwrap();
    let points = v.points().unwrap();
    assert_eq!(points.len(), 2, "{points:?}");
    let (unused_chunks, unused_bytes) = replicator::unused(&v).unwrap();
    assert!(
        unused_chunks >= 2 && unused_bytes >= 4 << 20,
        "{unused_chunks} {unused_bytes}"
    );
    // Without a grace period, what prune replaces is deleted in the same run.
    let pr = replicator::prune(&mut v, std::time::Duration::ZERO, &Progress::default()).unwrap();
    // The two forgotten versions of big.bin are dropped, and their bytes leave the vault.
    assert!(
        pr.chunks_dropped >= 2 && pr.bytes_deleted >= 4 << 20,
        "{pr:?}"
    );
    assert_eq!(replicator::unused(&v).unwrap(), (0, 0));
    assert!(dir_size(&f.vault_dir.join("data")) + (4 << 20) <= before);
    // Both kept points restore exactly what they held.
    let newest = f._tmp.path().join("newest");
    f.restore(&newest, None);
    assert_eq!(snapshot(p), snapshot(&newest));
    let older = f._tmp.path().join("older");
    f.restore(&older, Some(points[0].time_ns));
    assert!(older.join("round-2").exists() && !older.join("round-3").exists());
    assert_eq!(
        std::fs::read(older.join("big.bin")).unwrap(),
        pseudo_random(2 << 20, 1004)
    );
    let rep = replicator::verify(&v, true, &Progress::default()).unwrap();
    assert!(rep.damage.is_empty(), "{:?}", rep.damage);
    // And the pocket keeps draining to it afterwards.
    write(&p.join("after-forget"), b"y");
    drop(v);
    f.sync();
    let after = f._tmp.path().join("after");
    f.restore(&after, None);
    assert_eq!(snapshot(p), snapshot(&after));
}

fn dir_size(d: &Path) -> u64 {
    walk_files(d)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn a_drain_cut_before_the_cursor_moved_resends_nothing() {
    let f = Fixture::new();
    write(&f.pocket.join("a.bin"), &pseudo_random(3 << 20, 1));
    f.sync();
    write(&f.pocket.join("b.bin"), &pseudo_random(3 << 20, 2));
    let r = f.sync();
    assert!(r.drained.bytes_uploaded > 2 << 20);
    // As if the process died after the segment was durable but before the cursor moved.
    let cursor = journal::Reader::open(&f.journal())
        .unwrap()
        .cursor("v")
        .unwrap()
        .unwrap();
    journal::set_cursor(&f.journal(), "v", cursor - 2).unwrap();
    let objects = walk_files(&f.vault_dir).len();
    let again = f.sync();
    assert_eq!(again.drained.bytes_uploaded, 0, "{again:?}");
    assert_eq!(
        walk_files(&f.vault_dir).len(),
        objects,
        "no new object at the vault"
    );
    assert_eq!(
        journal::Reader::open(&f.journal())
            .unwrap()
            .cursor("v")
            .unwrap(),
        Some(cursor)
    );
}

#[test]
fn a_vault_put_back_to_an_older_copy_is_reported_as_rolled_back() {
    let f = Fixture::new();
    write(&f.pocket.join("a.txt"), b"one");
    f.sync();
    let old = f._tmp.path().join("old-copy");
    copy_tree(&f.vault_dir, &old);
    write(&f.pocket.join("b.txt"), b"two");
    f.sync();
    // Someone restores the destination from an old copy of the disk.
    std::fs::remove_dir_all(&f.vault_dir).unwrap();
    copy_tree(&old, &f.vault_dir);
    write(&f.pocket.join("c.txt"), b"three");
    f.scan();
    let target = journal::Reader::open(&f.journal())
        .unwrap()
        .status()
        .unwrap()
        .last_seq;
    let mut out = replicator::sync(
        &f.setup(),
        target,
        &Progress::default(),
        &std::sync::atomic::AtomicBool::new(false),
    );
    let err = out.remove(0).result.unwrap_err();
    assert!(matches!(err, replicator::Error::RolledBack { .. }), "{err}");
    assert!(err.to_string().contains("rolled back"));
}

#[test]
fn a_cut_or_missing_object_is_named_by_verify() {
    let f = Fixture::new();
    write(&f.pocket.join("one.bin"), &pseudo_random(200_000, 21));
    f.sync();
    write(&f.pocket.join("two.bin"), &pseudo_random(200_000, 22));
    f.sync();
    write(&f.pocket.join("three.bin"), &pseudo_random(1_000, 23));
    f.sync();
    let (_rt, v) = f.open_vault();
    assert!(replicator::verify(&v, false, &Progress::default())
        .unwrap()
        .damage
        .is_empty());

    // A pack cut short: named without reading any data.
    let packs = walk_files(&f.vault_dir.join("data"));
    let cut = &packs[0];
    let len = std::fs::metadata(cut).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(cut)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let rep = replicator::verify(&v, false, &Progress::default()).unwrap();
    assert!(
        rep.damage
            .iter()
            .any(|d| cut.ends_with(&d.object) && d.detail.contains("its index says")),
        "{:?}",
        rep.damage
    );

    // A pack deleted and its index damaged too (the endurance harness's seed 1796207765):
    // the index's name still says which pack it described, so both are named.
    let gone = &packs[1];
    let name = gone.file_name().unwrap().to_owned();
    std::fs::remove_file(gone).unwrap();
    let index = f.vault_dir.join("index").join(&name);
    let mut bytes = std::fs::read(&index).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&index, &bytes).unwrap();
    let rep = replicator::verify(&v, false, &Progress::default()).unwrap();
    for object in [gone, &index] {
        assert!(
            rep.damage.iter().any(|d| object.ends_with(&d.object)),
            "{} not named: {:?}",
            object.display(),
            rep.damage
        );
    }
    // A pack damaged and its index too (the endurance harness, seed 1 on exFAT): reading the
    // data, the pack's own header shows its damage.
    let hurt = &packs[2];
    let name = hurt.file_name().unwrap().to_owned();
    let len = std::fs::metadata(hurt).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(hurt)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let hurt_index = f.vault_dir.join("index").join(&name);
    let mut bytes = std::fs::read(&hurt_index).unwrap();
    bytes[3] ^= 0x01;
    std::fs::write(&hurt_index, &bytes).unwrap();
    let rep = replicator::verify(&v, true, &Progress::default()).unwrap();
    for object in [hurt, &hurt_index] {
        assert!(
            rep.damage.iter().any(|d| object.ends_with(&d.object)),
            "{} not named: {:?}",
            object.display(),
            rep.damage
        );
    }
    // A name the destination's owner chose, not one of ours: named, no panic.
    std::fs::write(f.vault_dir.join("index").join("aé"), b"not an index").unwrap();
    let rep = replicator::verify(&v, false, &Progress::default()).unwrap();
    assert!(
        rep.damage.iter().any(|d| d.object == "index/aé"),
        "{:?}",
        rep.damage
    );

    // A log segment taken out of the middle: the chain says which is missing.
    let mut segs = walk_files(&f.vault_dir.join("log"));
    segs.sort();
    assert!(segs.len() >= 2, "{segs:?}");
    let gone = segs[segs.len() - 2].clone();
    std::fs::remove_file(&gone).unwrap();
    let rep = replicator::verify(&v, false, &Progress::default()).unwrap();
    assert!(
        rep.damage
            .iter()
            .any(|d| d.detail.contains("missing from the chain")),
        "{:?}",
        rep.damage
    );
}

fn copy_tree(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn the_pocket_config_travels_in_the_vault_and_follows_changes() {
    let f = Fixture::new();
    let cfg = f.pocket.join(".backpocket/config.toml");
    std::fs::write(&cfg, "format = 1\nid = \"pocket-1\"\n").unwrap();
    write(&f.pocket.join("a"), b"a");
    f.sync();
    let (_rt, v) = f.open_vault();
    assert_eq!(
        v.pocket_config().unwrap().unwrap(),
        b"format = 1\nid = \"pocket-1\"\n"
    );
    // A destination added later changes the config; the next drain carries it.
    std::fs::write(&cfg, "format = 1\nid = \"pocket-1\"\n# changed\n").unwrap();
    write(&f.pocket.join("b"), b"b");
    f.sync();
    assert!(v
        .pocket_config()
        .unwrap()
        .unwrap()
        .ends_with(b"# changed\n"));
}

#[test]
fn a_mirror_never_describes_contents_it_did_not_copy() {
    // The race CI once hit: a file's contents are recorded, then it is renamed on the drive,
    // and the mirror drains before the rename's record is committed.
    let f = Fixture::new();
    let p = &f.pocket;
    let (mirror, setup) = f.mirror();
    write(&p.join("a.txt"), b"first");
    f.scan();
    let drain = |setup: &Setup| f.drain(setup);
    drain(&setup);
    // Changed and then renamed on the drive; the journal learns of the rename 200 ms later.
    write(&p.join("a.txt"), b"second, longer");
    let root = std::fs::metadata(p).unwrap().ino();
    let md = std::fs::metadata(p.join("a.txt")).unwrap();
    let j = journal::Journal::open(&f.journal()).unwrap();
    j.handle().record(journal::Change::Content {
        file: md.ino(),
        meta: journal::Meta::from_std(&md).unwrap(),
    });
    j.handle().sync().unwrap();
    std::fs::rename(p.join("a.txt"), p.join("b.txt")).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(200));
            j.handle().record(journal::Change::Rename {
                parent: root,
                name: b"a.txt".to_vec(),
                new_parent: root,
                new_name: b"b.txt".to_vec(),
                file: md.ino(),
                exchange: false,
            });
            j.handle().sync().unwrap();
        });
        drain(&setup);
    });
    drain(&setup);
    j.close().unwrap();
    let out = f._tmp.path().join("restored");
    let r = replicator::restore_mirror(&mirror, &out, &[], false, &Progress::default()).unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(std::fs::read(out.join("b.txt")).unwrap(), b"second, longer");
    assert!(!out.join("a.txt").exists());
}

#[test]
fn repair_makes_a_damaged_vault_whole_again_from_the_pocket() {
    let f = Fixture::new();
    // Three drains, so there are several packs to damage in different ways.
    write(&f.pocket.join("a/one.bin"), &pseudo_random(400_000, 31));
    write(&f.pocket.join("old.bin"), &pseudo_random(300_000, 32));
    f.sync();
    write(&f.pocket.join("b/two.bin"), &pseudo_random(500_000, 33));
    f.sync();
    write(&f.pocket.join("three.bin"), &pseudo_random(200_000, 34));
    f.sync();
    let packs = walk_files(&f.vault_dir.join("data"));
    assert!(packs.len() >= 3, "{packs:?}");
    // A flipped byte, a pack cut short, a pack gone.
    let mut bytes = std::fs::read(&packs[0]).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&packs[0], &bytes).unwrap();
    let len = std::fs::metadata(&packs[1]).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&packs[1])
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    std::fs::remove_file(&packs[2]).unwrap();

    let (rt, v) = f.open_vault();
    let found = replicator::verify(&v, true, &Progress::default()).unwrap();
    assert!(found.damage.len() >= 3, "{:?}", found.damage);
    let setup = f.setup();
    let done = replicator::repair(
        &setup,
        &setup.dests[0],
        &found,
        &Progress::default(),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(done.chunks_resent > 0, "{done:?}");
    assert!(done.files_read >= 4, "{done:?}");
    // Every damaged pack is gone (with its index object); the flipped pack's good chunks
    // were packed again.
    for p in &packs[..3] {
        assert!(!p.exists(), "{p:?} is still there");
    }
    assert!(done.objects_removed.len() >= 5, "{done:?}");
    drop(v);
    rt.shutdown_background();

    let (_rt, v) = f.open_vault();
    let after = replicator::verify(&v, true, &Progress::default()).unwrap();
    assert!(after.damage.is_empty(), "{:?}", after.damage);
    let out = f._tmp.path().join("out");
    let r = f.restore(&out, None);
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(snapshot(&f.pocket), snapshot(&out));
    // The next drain carries on from the repaired vault.
    write(&f.pocket.join("four.bin"), &pseudo_random(10_000, 35));
    f.sync();
    let out2 = f._tmp.path().join("out2");
    f.restore(&out2, None);
    assert_eq!(snapshot(&f.pocket), snapshot(&out2));
}

#[test]
fn a_mirror_follows_a_folder_moved_under_a_new_folder_of_its_old_name() {
    // What the endurance harness found: d5 moves away, a new d5 is made, and the old folder
    // moves into it. The mirror's copy of d5 cannot be renamed into itself.
    let f = Fixture::new();
    let p = &f.pocket;
    let (mirror, setup) = f.mirror();
    write(&p.join("d5/e/inner.txt"), b"inner");
    write(&p.join("d5/top.txt"), b"top");
    f.scan();
    f.drain(&setup);
    std::fs::rename(p.join("d5"), p.join("d3")).unwrap();
    std::fs::create_dir(p.join("d5")).unwrap();
    write(&p.join("d5/new.txt"), b"new");
    std::fs::rename(p.join("d3"), p.join("d5/d1")).unwrap();
    f.scan();
    f.drain(&setup);
    let out = f._tmp.path().join("restored");
    let r = replicator::restore_mirror(&mirror, &out, &[], false, &Progress::default()).unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(snapshot(p), snapshot(&out));
    // And the other way round: a folder moved out from under its parent, which then takes
    // the place of its old child.
    std::fs::rename(p.join("d5/d1/e"), p.join("e")).unwrap();
    std::fs::rename(p.join("d5"), p.join("e/d5")).unwrap();
    f.scan();
    f.drain(&setup);
    f.restore_mirror_exactly(&mirror, "restored2");
}

#[test]
fn a_mirror_drain_resumes_where_a_killed_one_left_its_copies() {
    // A drain killed midway leaves the mirror's files ahead of the tree it last wrote: here
    // the second name of a hard-linked file is already gone when the next drain frees that
    // name for another file. Freeing a name that is already free is no error.
    let f = Fixture::new();
    let p = &f.pocket;
    let (mirror, setup) = f.mirror();
    write(&p.join("d1/f1"), b"linked");
    std::fs::hard_link(p.join("d1/f1"), p.join("d1/h1")).unwrap();
    write(&p.join("other"), b"other file");
    f.scan();
    f.drain(&setup);
    std::fs::remove_file(mirror.join("d1/h1")).unwrap();
    std::fs::rename(p.join("other"), p.join("d1/h1")).unwrap();
    f.scan();
    f.drain(&setup);
    f.restore_mirror_exactly(&mirror, "restored");
}

#[test]
fn a_mirror_drain_resumes_after_a_killed_one_parked_a_copy() {
    // A swap parks one copy in .tmp while the other takes its name; a drain killed right
    // then loses the parked copy (.tmp is emptied when the store opens). The next drain
    // finds the name it wants to park already free, and copies the file again.
    let f = Fixture::new();
    let p = &f.pocket;
    let (mirror, setup) = f.mirror();
    write(&p.join("f1"), b"one");
    write(&p.join("f2"), b"two");
    f.scan();
    f.drain(&setup);
    std::fs::remove_file(mirror.join("f1")).unwrap();
    std::fs::rename(p.join("f1"), p.join("t")).unwrap();
    std::fs::rename(p.join("f2"), p.join("f1")).unwrap();
    std::fs::rename(p.join("t"), p.join("f2")).unwrap();
    f.scan();
    f.drain(&setup);
    f.restore_mirror_exactly(&mirror, "restored");
}

#[test]
fn holes_are_kept_when_blocks_preallocated_past_the_end_hide_them() {
    // XFS counts blocks it preallocated past the end of a file in st_blocks, so a file with
    // a hole can look dense by its block count; its hole map must be kept all the same.
    let f = Fixture::new();
    let p = f.pocket.join("sparse.bin");
    let file = std::fs::File::create(&p).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(&pseudo_random(64 << 10, 41), 0).unwrap();
    file.write_all_at(&pseudo_random(16 << 10, 42), 68 << 10)
        .unwrap();
    rustix::fs::fallocate(
        &file,
        rustix::fs::FallocateFlags::KEEP_SIZE,
        1 << 20,
        4 << 20,
    )
    .unwrap();
    let md = file.metadata().unwrap();
    assert!(
        md.blocks() * 512 >= md.len(),
        "the test needs st_blocks to hide the hole"
    );
    drop(file);
    f.sync();
    let out = f._tmp.path().join("out");
    f.restore(&out, None);
    assert_eq!(snapshot(&f.pocket), snapshot(&out));
    let runs = |path: &Path| {
        let file = std::fs::File::open(path).unwrap();
        let size = file.metadata().unwrap().len();
        let data = rustix::fs::seek(&file, rustix::fs::SeekFrom::Hole(0)).unwrap();
        (size, data)
    };
    assert_eq!(
        runs(&p),
        runs(&out.join("sparse.bin")),
        "the hole at 64 KiB is kept"
    );
    // The mirror too.
    let (mirror, setup) = f.mirror();
    f.drain(&setup);
    let out = f._tmp.path().join("out-mirror");
    replicator::restore_mirror(&mirror, &out, &[], false, &Progress::default()).unwrap();
    assert_eq!(
        runs(&p),
        runs(&mirror.join("sparse.bin")),
        "the mirror's copy keeps it"
    );
    assert_eq!(
        runs(&p),
        runs(&out.join("sparse.bin")),
        "and so does its restore"
    );
}

#[test]
fn a_damaged_file_is_refused_under_every_name_it_has() {
    // Found by the endurance harness: restore links a file's other names before writing its
    // data, so when the data fails its check, every name must go, not only the first.
    let f = Fixture::new();
    write(&f.pocket.join("a/first"), &pseudo_random(200_000, 51));
    std::fs::hard_link(f.pocket.join("a/first"), f.pocket.join("b-second")).unwrap();
    std::fs::hard_link(f.pocket.join("a/first"), f.pocket.join("z-third")).unwrap();
    f.sync();
    for pack in walk_files(&f.vault_dir.join("data")) {
        let mut bytes = std::fs::read(&pack).unwrap();
        bytes[500] ^= 0x10;
        std::fs::write(&pack, &bytes).unwrap();
    }
    let (_rt, v) = f.open_vault();
    let out = f._tmp.path().join("out");
    let r = restore(
        &v,
        &RestoreOptions {
            target: out.clone(),
            at: None,
            paths: Vec::new(),
            owners: false,
            workers: 2,
            map_names: false,
            specials: true,
            case_insensitive: false,
        },
        &Progress::default(),
    )
    .unwrap();
    let mut failed: Vec<String> = r
        .failed
        .iter()
        .map(|(p, _)| String::from_utf8_lossy(p).into_owned())
        .collect();
    failed.sort();
    assert_eq!(failed, ["a/first", "b-second", "z-third"]);
    for name in ["a/first", "b-second", "z-third"] {
        assert!(!out.join(name).exists(), "{name} looks restored but is not");
    }
    // The same at a mirror whose copy was changed behind its back.
    let (mirror, setup) = f.mirror();
    f.drain(&setup);
    let copy = mirror.join("a/first");
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes[500] ^= 0x10;
    std::fs::write(&copy, &bytes).unwrap();
    let out = f._tmp.path().join("out-mirror");
    let r = replicator::restore_mirror(&mirror, &out, &[], false, &Progress::default()).unwrap();
    let mut failed: Vec<String> = r
        .failed
        .iter()
        .map(|(p, _)| String::from_utf8_lossy(p).into_owned())
        .collect();
    failed.sort();
    assert_eq!(failed, ["a/first", "b-second", "z-third"]);
    for name in ["a/first", "b-second", "z-third"] {
        assert!(!out.join(name).exists(), "{name} looks restored but is not");
    }
}

#[test]
fn a_mirror_never_takes_a_new_file_under_a_reused_inode_for_the_old_one() {
    // Found by the endurance harness: f5 is removed and a new, empty f3 gets its inode
    // number. The journal says "create f3" and nothing about contents (it has none); the
    // mirror, which knows its copies by inode, took the old copy of f5 as f3 moved.
    let f = Fixture::new();
    let p = &f.pocket;
    let (mirror, setup) = f.mirror();
    f.scan();
    f.drain(&setup);
    let mut reused = false;
    let mut last = PathBuf::new();
    for i in 0..50 {
        let old = p.join(format!("f5-{i}"));
        write(&old, b"the old file's contents");
        f.scan();
        f.drain(&setup);
        let ino = std::fs::metadata(&old).unwrap().ino();
        // The removal is recorded, then the new file: one drain takes both.
        std::fs::remove_file(&old).unwrap();
        f.scan();
        let new = p.join(format!("f3-{i}"));
        std::fs::File::create(&new).unwrap();
        reused = std::fs::metadata(&new).unwrap().ino() == ino;
        f.scan();
        f.drain(&setup);
        last = new.strip_prefix(p).unwrap().to_owned();
        if reused {
            break;
        }
    }
    if !reused {
        eprintln!("SKIPPED a_mirror_never_takes_a_new_file_under_a_reused_inode_for_the_old_one: this filesystem never gave a freed inode number again");
        return;
    }
    assert_eq!(
        std::fs::read(mirror.join(&last)).unwrap(),
        b"",
        "{last:?} at the mirror"
    );
    f.restore_mirror_exactly(&mirror, "restored");
}

/// Keys under `prefix` in the vault folder (recursively), sorted.
fn objects(vault: &Path, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![vault.join(prefix)];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(vault).unwrap().to_owned();
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// Many drains of small changes: saves, renames, deletes, a large file now and then.
fn many_drains(f: &Fixture, n: u64) -> Vec<(i64, BTreeMap<Vec<u8>, String>)> {
    let p = &f.pocket;
    std::fs::create_dir_all(p.join("docs")).unwrap();
    let mut states = Vec::new();
    for i in 0..n {
        match i % 5 {
            0 => write(
                &p.join(format!("docs/note-{i}.txt")),
                format!("note {i}").as_bytes(),
            ),
            1 => write(&p.join("docs/report.txt"), format!("draft {i}").as_bytes()),
            2 if i > 5 => {
                let _ = std::fs::rename(
                    p.join(format!("docs/note-{}.txt", i - 2)),
                    p.join(format!("docs/moved-{i}.txt")),
                );
            }
            3 if i > 10 => {
                let _ = std::fs::remove_file(p.join(format!("docs/moved-{}.txt", i - 1)));
            }
            _ => write(
                &p.join(format!("data-{}.bin", i % 3)),
                &pseudo_random(300_000, i),
            ),
        }
        f.sync();
        if i % 17 == 0 {
            let (_rt, v) = f.open_vault();
            let t = v.points().unwrap().last().unwrap().time_ns;
            states.push((t, snapshot(p)));
        }
    }
    states
}

fn maintain(v: &mut Vault, grace: std::time::Duration) -> replicator::MaintainReport {
    let opts = replicator::MaintainOptions {
        grace,
        ..Default::default()
    };
    replicator::maintain(v, &opts, None, &|| false, &Progress::default()).unwrap()
}

#[test]
fn maintenance_folds_many_drains_and_every_point_still_restores() {
    let f = Fixture::new();
    let states = many_drains(&f, 90);
    let (_rt, mut v) = f.open_vault();
    let points_before: Vec<(u64, i64, u64)> = v
        .points()
        .unwrap()
        .iter()
        .map(|p| (p.gen, p.time_ns, p.seq))
        .collect();
    let log_before = objects(&f.vault_dir, "log").len();
    assert!(log_before >= 80, "{log_before}");
    let index_before = objects(&f.vault_dir, "index").len();
    let packs_before = objects(&f.vault_dir, "data").len();
    assert!(
        index_before >= 30 && packs_before >= 30,
        "{index_before} {packs_before}"
    );

    let r = maintain(&mut v, std::time::Duration::ZERO);
    assert!(r.bundles_written >= 1 && r.packs_repacked >= 30, "{r:?}");
    // Bounded by the live data: one bundle and the checkpoint, one index set, few packs.
    let log = objects(&f.vault_dir, "log").len() + objects(&f.vault_dir, "checkpoints").len();
    assert!(log <= 3, "{:?}", objects(&f.vault_dir, "log"));
    assert_eq!(objects(&f.vault_dir, "index").len(), 1);
    assert!(objects(&f.vault_dir, "data").len() <= 3);
    assert!(objects(&f.vault_dir, "trash").is_empty());
    assert!(objects(&f.vault_dir, "locks").is_empty());
    // Every drain is still a point, with the same identity.
    let points_after: Vec<(u64, i64, u64)> = v
        .points()
        .unwrap()
        .iter()
        .map(|p| (p.gen, p.time_ns, p.seq))
        .collect();
    assert_eq!(points_before, points_after);
    for (i, (t, want)) in states.iter().enumerate() {
        let out = f._tmp.path().join(format!("at-{i}"));
        let rep = f.restore(&out, Some(*t));
        assert!(rep.failed.is_empty(), "{:?}", rep.failed);
        assert_eq!(*want, snapshot(&out), "point {i}");
    }
    let rep = replicator::verify(&v, true, &Progress::default()).unwrap();
    assert!(rep.damage.is_empty(), "{:?}", rep.damage);
    assert_eq!(rep.unreferenced_packs, 0);
    // The pocket drains on into the maintained vault, and a second run has little to do.
    drop(v);
    write(&f.pocket.join("after.txt"), b"after maintenance");
    f.sync();
    let out = f._tmp.path().join("newest");
    f.restore(&out, None);
    assert_eq!(snapshot(&f.pocket), snapshot(&out));
    let (_rt2, mut v) = f.open_vault();
    let again = maintain(&mut v, std::time::Duration::ZERO);
    assert!(
        again.packs_repacked <= 2 && again.bundles_written <= 1,
        "{again:?}"
    );
    let rep = replicator::verify(&v, true, &Progress::default()).unwrap();
    assert!(rep.damage.is_empty(), "{:?}", rep.damage);
}

#[test]
fn replaced_objects_stay_for_the_grace_period_and_readers_ignore_them() {
    let f = Fixture::new();
    many_drains(&f, 30);
    let (_rt, mut v) = f.open_vault();
    let old_log = objects(&f.vault_dir, "log");
    let old_packs = objects(&f.vault_dir, "data");
    // A reader that listed the vault before maintenance.
    let (_rt2, early) = f.open_vault();
    early.load_index().unwrap();
    let before = f._tmp.path().join("before");
    let want = snapshot(&f.pocket);

    let r = maintain(&mut v, std::time::Duration::from_secs(3600));
    assert!(r.objects_trashed > 30 && r.objects_deleted == 0, "{r:?}");
    // Still there for readers that started earlier...
    for k in old_log.iter().chain(&old_packs) {
        assert!(
            f.vault_dir.join(k).exists(),
            "{k} deleted within the grace period"
        );
    }
    let rep = restore(
        &early,
        &RestoreOptions {
            target: before.clone(),
            at: None,
            paths: Vec::new(),
            owners: rustix::process::geteuid().is_root(),
            workers: 2,
            map_names: false,
            specials: true,
            case_insensitive: false,
        },
        &Progress::default(),
    )
    .unwrap();
    assert!(rep.failed.is_empty());
    assert_eq!(want, snapshot(&before));
    // ...while new readers see only what replaced them.
    let (_rt3, fresh) = f.open_vault();
    assert_eq!(fresh.log_map().unwrap().objects.len(), 2);
    // Within the grace period nothing is deleted; after it, everything replaced is.
    let r = maintain(&mut v, std::time::Duration::from_secs(3600));
    assert_eq!(r.objects_deleted, 0);
    let r = maintain(&mut v, std::time::Duration::ZERO);
    assert!(r.objects_deleted as usize >= old_log.len(), "{r:?}");
    assert!(objects(&f.vault_dir, "trash").is_empty());
    let after = f._tmp.path().join("after");
    f.restore(&after, None);
    assert_eq!(want, snapshot(&after));
}

#[test]
fn two_maintainers_at_once_the_second_is_refused() {
    let f = Fixture::new();
    many_drains(&f, 6);
    let (_rt, v1) = f.open_vault();
    let (_rt2, mut v2) = f.open_vault();
    let held = replicator::take_lease(&v1, "maintain", None).unwrap();
    let opts = replicator::MaintainOptions::default();
    let err =
        replicator::maintain(&mut v2, &opts, None, &|| false, &Progress::default()).unwrap_err();
    assert!(matches!(err, replicator::Error::Busy(_)), "{err}");
    assert!(err.to_string().contains("maintains it"), "{err}");
    // A pocket writing the vault (its drain's lease) holds maintenance off too...
    drop(held);
    let writing = replicator::take_lease(&v1, "write", None).unwrap();
    let err =
        replicator::maintain(&mut v2, &opts, None, &|| false, &Progress::default()).unwrap_err();
    assert!(err.to_string().contains("writes to it"), "{err}");
    // ...except for the drain's own maintenance.
    replicator::maintain(
        &mut v2,
        &opts,
        Some(writing.key()),
        &|| false,
        &Progress::default(),
    )
    .unwrap();
    drop(writing);
    // The refused run left nothing behind, and the vault is whole.
    assert!(objects(&f.vault_dir, "locks").is_empty());
    let out = f._tmp.path().join("out");
    f.restore(&out, None);
    assert_eq!(snapshot(&f.pocket), snapshot(&out));
}

fn wait_for(what: &str, limit: std::time::Duration, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The newest record's sequence number and time.
fn last_record(f: &Fixture) -> (u64, i64) {
    let r = journal::Reader::open(&f.journal()).unwrap();
    let last = r.status().unwrap().last_seq;
    let rec = r.records_after(last - 1, 1).unwrap().remove(0);
    (rec.seq, rec.time_ns)
}

#[test]
fn a_small_change_is_protected_while_a_large_file_uploads() {
    let f = Fixture::new();
    write(&f.pocket.join("notes.txt"), b"first");
    f.sync();
    // 24 MiB at 2 MiB/s (after a burst of 9 MiB): seven seconds on the way.
    let big = pseudo_random(24 << 20, 11);
    write(&f.pocket.join("big.bin"), &big);
    f.scan();
    let (big_seq, big_time) = last_record(&f);
    let mut setup = f.setup();
    setup.dests[0].access.bandwidth = Some(2 << 20);
    let meta_dir = setup.meta_dir.clone();
    let (wake, woken) = crossbeam_channel::bounded(16);
    let rep = replicator::Replicator::start(setup, woken, None).unwrap();
    let cursor = || {
        journal::Reader::open(&f.journal())
            .unwrap()
            .cursor("v")
            .unwrap()
            .unwrap_or(0)
    };
    let in_flight = || replicator::DestState::load(&meta_dir, "v").in_flight;
    wake.send(big_seq).unwrap();
    // The cursor passes the large file's record at once; the state says it is on its way.
    wait_for(
        "the large file's record",
        std::time::Duration::from_secs(5),
        || cursor() >= big_seq,
    );
    let listed = in_flight();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].path, "big.bin");
    assert_eq!(listed[0].bytes, big.len() as u64);

    write(&f.pocket.join("notes.txt"), b"second");
    f.scan();
    let (small_seq, _) = last_record(&f);
    wake.send(small_seq).unwrap();
    wait_for(
        "the small change",
        std::time::Duration::from_secs(5),
        || cursor() >= small_seq,
    );
    assert!(
        !in_flight().is_empty(),
        "the large file landed before the small change was taken: the test proves nothing"
    );
    // The newest point has the small change, and the large file as it was before (absent
    // here: restored empty, and said).
    let now = f._tmp.path().join("while-uploading");
    let r = f.restore(&now, None);
    assert_eq!(std::fs::read(now.join("notes.txt")).unwrap(), b"second");
    if !in_flight().is_empty() {
        assert_eq!(r.earlier, vec![b"big.bin".to_vec()]);
    }
    // Stopped midway (an unmount, a crash): the state still says the file is on its way,
    // and the next replicator reads it again from the point's list.
    rep.stop();
    let left = in_flight();
    let mut setup = f.setup();
    setup.dests[0].access.bandwidth = Some(8 << 20);
    let (wake, woken) = crossbeam_channel::bounded(16);
    let rep = replicator::Replicator::start(setup, woken, None).unwrap();
    wake.send(small_seq).unwrap();
    wait_for("the large file", std::time::Duration::from_secs(60), || {
        in_flight().is_empty()
    });
    rep.stop();
    assert_eq!(left.len(), 1, "{left:?}");
    // Every point is exact: the newest, and the one that waited for the large file (its
    // contents come from the later segment that brought them).
    let all = f._tmp.path().join("all");
    let r = f.restore(&all, None);
    assert!(r.earlier.is_empty(), "{:?}", r.earlier);
    assert_eq!(snapshot(&f.pocket), snapshot(&all));
    let then = f._tmp.path().join("then");
    let r = f.restore(&then, Some(big_time));
    assert!(r.earlier.is_empty(), "{:?}", r.earlier);
    assert_eq!(std::fs::read(then.join("notes.txt")).unwrap(), b"first");
    assert!(std::fs::read(then.join("big.bin")).unwrap() == big);
    // And the vault is whole.
    let (_rt, v) = f.open_vault();
    let report = replicator::verify(&v, true, &Progress::default()).unwrap();
    assert!(report.damage.is_empty(), "{:?}", report.damage);
}

#[test]
fn versions_stored_as_patches_restore_exactly_and_survive_forget_and_prune() {
    use std::os::unix::fs::FileExt;
    let f = Fixture::new();
    let p = &f.pocket;
    // 2 MiB (small chunks) and 20 MiB (the middle size): overwrites in place, an append, a
    // truncation, each drained as its own version.
    write(&p.join("doc.bin"), &pseudo_random(2 << 20, 1));
    write(&p.join("image.bin"), &pseudo_random(20 << 20, 2));
    f.sync();
    let mut states = Vec::new();
    for round in 0..6u64 {
        let name = if round % 2 == 0 {
            "doc.bin"
        } else {
            "image.bin"
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(p.join(name))
            .unwrap();
        let len = file.metadata().unwrap().len();
        match round {
            4 => file.set_len(len - 100_000).unwrap(),
            5 => file.write_all_at(&pseudo_random(70_000, 77), len).unwrap(),
            _ => file
                .write_all_at(&pseudo_random(40_000, 10 + round), len / 3 + round * 9000)
                .unwrap(),
        }
        drop(file);
        f.sync();
        let (_rt, v) = f.open_vault();
        states.push((v.points().unwrap().last().unwrap().time_ns, snapshot(p)));
    }
    // The log grew by what changed: far less than the chunk lists (about 1,600 chunks).
    let log_bytes = dir_size(&f.vault_dir.join("log"));
    assert!(log_bytes < 120_000, "log {log_bytes} bytes");
    for (i, (t, want)) in states.iter().enumerate() {
        let out = f._tmp.path().join(format!("at-{i}"));
        let r = f.restore(&out, Some(*t));
        assert!(r.failed.is_empty(), "{:?}", r.failed);
        assert_eq!(&snapshot(&out), want, "point {i}");
    }
    // Forget drops the bases some patches were made against: the kept points stay exact.
    let (_rt, mut v) = f.open_vault();
    let policy = replicator::KeepPolicy {
        last: 2,
        ..Default::default()
    };
    replicator::forget(&v, &policy, false).unwrap();
    replicator::prune(&mut v, std::time::Duration::ZERO, &Progress::default()).unwrap();
    let rep = replicator::verify(&v, true, &Progress::default()).unwrap();
    assert!(rep.damage.is_empty(), "{:?}", rep.damage);
    for (i, (t, want)) in states.iter().enumerate().skip(4) {
        let out = f._tmp.path().join(format!("kept-{i}"));
        let r = f.restore(&out, Some(*t));
        assert!(r.failed.is_empty(), "{:?}", r.failed);
        assert_eq!(&snapshot(&out), want, "kept point {i}");
    }
    // And new versions go on as patches of what forget left.
    drop(v);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(p.join("image.bin"))
        .unwrap();
    file.write_all_at(b"after forget", 5).unwrap();
    drop(file);
    f.sync();
    let out = f._tmp.path().join("after");
    f.restore(&out, None);
    assert_eq!(snapshot(p), snapshot(&out));
}
