//! Changes that no mount recorded: the daemon killed with -9 mid-work, edits made with the
//! drive on a machine without backpocket. The next mount (or `scan`) must record them all.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;

/// A small deterministic generator (no dependency, reproducible by seed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random work in `dir` until `until`: create, overwrite, append, rename across folders,
/// link, symlink, unlink, mkdir, chmod. Errors from racing writers are expected and ignored.
fn churn(dir: &std::path::Path, seed: u64, until: Instant) -> u64 {
    let mut rng = Rng(seed | 1);
    let mut ops = 0;
    while Instant::now() < until {
        let a = dir.join(format!("d{}/f{}", rng.below(4), rng.below(40)));
        let b = dir.join(format!("d{}/f{}", rng.below(4), rng.below(40)));
        let _ = fs::create_dir_all(a.parent().unwrap());
        let _ = fs::create_dir_all(b.parent().unwrap());
        let _ = match rng.below(9) {
            0 | 1 => fs::write(&a, vec![rng.below(256) as u8; rng.below(200_000) as usize]),
            2 => fs::OpenOptions::new()
                .append(true)
                .open(&a)
                .and_then(|mut f| f.write_all(&[1u8; 5000])),
            3 => fs::rename(&a, &b),
            4 => fs::hard_link(&a, &b),
            5 => std::os::unix::fs::symlink("target", &b),
            6 => fs::remove_file(&a),
            7 => fs::set_permissions(
                &a,
                fs::Permissions::from_mode(0o600 + rng.below(0o100) as u32),
            ),
            _ => fs::File::create(&a).and_then(|f| f.sync_all()),
        };
        ops += 1;
    }
    ops
}

/// kill -9 of the daemon during a write-heavy run; the next mount cleans up the stale mount,
/// scans, and afterwards the journal's catalog describes the pocket exactly.
#[test]
fn kill9_during_writes_then_remount_records_everything() {
    for round in 0..3u64 {
        let p = Pocket::new();
        p.init();
        let m = p.mount(if round % 2 == 0 {
            &[]
        } else {
            &["--no-passthrough"]
        });
        let until = Instant::now() + Duration::from_millis(1500);
        let writers: Vec<_> = (0..3)
            .map(|t| {
                let dir = m.mnt.clone();
                std::thread::spawn(move || churn(&dir, 1000 * round + t + 1, until))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(700 + 200 * round));
        m.kill9();
        let ops: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        assert!(ops > 0);
        // The mount is stale now (ENOTCONN); mounting again must clean it up and reconcile.
        let m = p.mount(&[]);
        let log = m.unmount();
        assert!(log.contains("stale mount"), "the clean-up is said: {log}");
        assert_catalog_matches(&p);
        // And a scan afterwards finds nothing left to record.
        let scan: serde_json::Value =
            serde_json::from_str(&ok(&["scan", "--pocket", p.p(), "--json"])).unwrap();
        assert_eq!(scan["created"], 0, "round {round}: {scan}");
        assert_eq!(scan["removed"], 0, "round {round}: {scan}");
    }
}

/// Edits made directly on the drive while it was not mounted are all found by `scan`, with
/// moves kept as moves (so a folder's contents are not sent again).
#[test]
fn offline_edits_are_found() {
    let p = Pocket::new();
    fs::create_dir_all(p.root.join("docs/old")).unwrap();
    fs::write(p.root.join("docs/old/a.txt"), b"a").unwrap();
    fs::write(p.root.join("docs/b.txt"), b"b").unwrap();
    fs::write(p.root.join("keep.txt"), b"keep").unwrap();
    fs::write(p.root.join("gone.txt"), b"gone").unwrap();
    fs::write(p.root.join("x"), b"x").unwrap();
    fs::write(p.root.join("y"), b"y").unwrap();
    p.init();
    // Settle the racily-clean window of init, so the counts below are exact.
    std::thread::sleep(Duration::from_millis(50));
    ok(&["scan", "--pocket", p.p()]);
    assert_catalog_matches(&p);

    // The drive, on a machine without backpocket:
    fs::rename(p.root.join("docs/old"), p.root.join("archive")).unwrap(); // a folder moves
    fs::write(p.root.join("keep.txt"), b"changed!").unwrap(); // contents change
                                                              // New before gone: ext4 reuses a freed inode number at once, and a reused number with
                                                              // the same kind is taken as a move (correct on replay, but the counts below would differ).
    fs::write(p.root.join("new.txt"), b"new").unwrap();
    fs::remove_file(p.root.join("gone.txt")).unwrap();
    fs::set_permissions(p.root.join("docs/b.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::hard_link(p.root.join("docs/b.txt"), p.root.join("b-link")).unwrap();
    rustix::fs::setxattr(
        p.root.join("archive/a.txt").as_path(),
        "user.tag",
        b"1",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    // Two names swapped: a cycle of moves.
    fs::rename(p.root.join("x"), p.root.join("tmp")).unwrap();
    fs::rename(p.root.join("y"), p.root.join("x")).unwrap();
    fs::rename(p.root.join("tmp"), p.root.join("y")).unwrap();

    let scan: serde_json::Value =
        serde_json::from_str(&ok(&["scan", "--pocket", p.p(), "--json"])).unwrap();
    assert_eq!(scan["created"], 1, "{scan}");
    assert_eq!(scan["removed"], 1, "{scan}");
    assert!(scan["renamed"].as_u64().unwrap() >= 3, "{scan}"); // the folder, x and y
    assert_eq!(scan["linked"], 1, "{scan}");
    assert_eq!(scan["xattrs"], 1, "{scan}");
    assert!(scan["modified"].as_u64().unwrap() >= 1, "{scan}");
    assert_catalog_matches(&p);
    // The moved folder kept its file id: no create for a.txt.
    let recs = p.records(0);
    let creates_a = recs
        .iter()
        .filter(|r| r["op"] == "create" && r["name"] == "a.txt")
        .count();
    assert_eq!(creates_a, 1, "a.txt was created once, at init");

    // A scan of an unchanged pocket records nothing.
    std::thread::sleep(Duration::from_millis(50));
    let again: serde_json::Value =
        serde_json::from_str(&ok(&["scan", "--pocket", p.p(), "--json"])).unwrap();
    assert_eq!(again["changes"], 0, "{again}");
}
