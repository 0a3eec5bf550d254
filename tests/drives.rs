//! Pockets on the drives users carry: exFAT keeps no modes, links or xattrs, rounds times, folds
//! the case of names, cannot preallocate and numbers its files anew at every mount. The pocket
//! must find that out by itself, say it, show it in `journal status`, and keep its journal's
//! reserve there all the same. (Real exFAT images on loop devices through exfat-fuse.)

mod common;

use std::fs;

use common::drive::Drive;
use common::*;

/// A pocket made on a fresh drive of `fs_type` (a "work" folder holding `notes.txt`), and what
/// `init` said on stderr.
fn pocket_on(
    tmp: &std::path::Path,
    fs_type: &str,
    size_mb: u64,
) -> (Drive, std::path::PathBuf, String) {
    let drive = Drive::new(tmp, fs_type, size_mb);
    let root = drive.dir.join("work");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("notes.txt"), b"carried around").unwrap();
    let out = run(&["init", root.to_str().unwrap()], None);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "init: {said}");
    (drive, root, said)
}

fn drive_status(dir: &std::path::Path) -> serde_json::Value {
    let out = ok(&[
        "journal",
        "status",
        "--json",
        "--pocket",
        dir.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["drive"].clone()
}

#[test]
fn a_pocket_on_exfat_says_what_the_drive_cannot_keep_and_keeps_its_reserve() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let (_drive, root, said) = pocket_on(tmp.path(), "exfat", 128);
    assert!(
        said.contains("this drive (exfat") && said.contains("file modes"),
        "init must say what the drive cannot keep: {said}"
    );
    let d = drive_status(&root);
    assert!(d["fs"].as_str().unwrap().starts_with("exfat"), "{d}");
    for (key, want) in [
        ("stable_inodes", false),
        ("modes", false),
        ("symlinks", false),
        ("hard_links", false),
        ("xattrs", false),
        ("case_insensitive", true),
        ("preallocate", false),
    ] {
        assert_eq!(d[key], want, "{key}: {d}");
    }
    assert!(
        d["time_granularity_ns"].as_u64().unwrap() >= 10_000_000,
        "{d}"
    );
    let limits = d["limits"].to_string();
    assert!(limits.contains("symbolic links"), "{limits}");
    // The reserve, without fallocate: its blocks written.
    let reserve = root.join(".backpocket/journal.reserve");
    assert_eq!(fs::metadata(&reserve).unwrap().len(), 8 << 20);
    let human = ok(&["journal", "status", "--pocket", root.to_str().unwrap()]);
    assert!(
        human.contains("drive    exfat") && human.contains("cannot keep"),
        "{human}"
    );
    // The mount works there: what it writes lands on the drive.
    let p = Pocket {
        tmp: tempfile::tempdir().unwrap(),
        root: root.clone(),
        mnt: tmp.path().join("mnt"),
    };
    fs::create_dir_all(&p.mnt).unwrap();
    let m = p.mount(&[]);
    fs::write(m.mnt.join("more.txt"), b"written in the mount").unwrap();
    m.unmount();
    assert_eq!(
        fs::read(root.join("more.txt")).unwrap(),
        b"written in the mount"
    );
}

#[test]
fn a_pocket_on_a_posix_drive_has_nothing_to_say() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let (_drive, root, said) = pocket_on(tmp.path(), "xfs", 320);
    assert!(!said.contains("cannot keep"), "{said}");
    let d = drive_status(&root);
    assert_eq!(d["fs"], "xfs", "{d}");
    assert_eq!(d["limits"], serde_json::json!([]), "{d}");
    assert_eq!(d["stable_inodes"], true, "{d}");
}
