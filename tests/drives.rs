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
        said.contains("this drive (exfat") && said.contains("hard links"),
        "init must say what the drive cannot keep: {said}"
    );
    assert!(
        said.contains("journal keeps file modes and owners and exact times"),
        "and what the journal keeps for it: {said}"
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
    assert!(limits.contains("hard links"), "{limits}");
    // The reserve, without fallocate: its blocks written.
    let reserve = root.join(".backpocket/journal.reserve");
    assert_eq!(fs::metadata(&reserve).unwrap().len(), 8 << 20);
    let human = ok(&["journal", "status", "--pocket", root.to_str().unwrap()]);
    assert!(
        human.contains("drive    exfat") && human.contains("cannot keep"),
        "{human}"
    );
    // The mount works there: what it writes lands on the drive.
    let p = mountable(&root, tmp.path());
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

/// The pocket at `root`, to mount at `tmp/mnt`.
fn mountable(root: &std::path::Path, tmp: &std::path::Path) -> Pocket {
    let p = Pocket {
        tmp: tempfile::tempdir().unwrap(),
        root: root.to_owned(),
        mnt: tmp.join("mnt"),
    };
    fs::create_dir_all(&p.mnt).unwrap();
    p
}

/// A vault destination "home" for the pocket at `root`: (passphrase file, vault folder).
/// A pocket on a fresh exFAT image of `size_mb` MiB, ready to mount: the temporary folder
/// (keep it alive), the drive, the pocket's root, the mountable pocket.
fn exfat_pocket(size_mb: u64) -> (tempfile::TempDir, Drive, std::path::PathBuf, Pocket) {
    let tmp = tempfile::tempdir().unwrap();
    let (drive, root, _) = pocket_on(tmp.path(), "exfat", size_mb);
    let p = mountable(&root, tmp.path());
    (tmp, drive, root, p)
}

fn add_vault(
    root: &std::path::Path,
    tmp: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let pass = tmp.join("pass");
    fs::write(&pass, "correct horse battery staple\n").unwrap();
    let vault = tmp.join("vault");
    ok(&[
        "dest",
        "add",
        "home",
        vault.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
        "--pocket",
        root.to_str().unwrap(),
    ]);
    (pass, vault)
}

/// Syncs the pocket to its vault and restores the vault into `tmp/restored`.
fn sync_and_restore(
    root: &std::path::Path,
    (pass, vault): &(std::path::PathBuf, std::path::PathBuf),
    tmp: &std::path::Path,
) -> std::path::PathBuf {
    let out = run(
        &[
            "sync",
            "--pocket",
            root.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "sync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = tmp.join("restored");
    let out = run(
        &[
            "restore",
            "--from",
            vault.to_str().unwrap(),
            "--to",
            restored.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
        Some(std::path::Path::new("/")),
    );
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    restored
}

/// The journal's id of every path in the pocket.
fn ids_by_path(root: &std::path::Path) -> std::collections::BTreeMap<Vec<u8>, u64> {
    catalog_tree(&root.join(".backpocket/journal.db"))
        .into_iter()
        .map(|(path, (_, id, ..))| (path, id))
        .collect()
}

fn scan_report(root: &std::path::Path) -> serde_json::Value {
    let out = ok(&["scan", "--json", "--pocket", root.to_str().unwrap()]);
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

fn counts(r: &serde_json::Value) -> [u64; 6] {
    [
        "created", "removed", "renamed", "modified", "reread", "attrs",
    ]
    .map(|k| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}")))
}

/// The drive's number of every path in the pocket, looked at in name order or its reverse.
fn drive_numbers(
    root: &std::path::Path,
    reverse: bool,
) -> std::collections::BTreeMap<Vec<u8>, u64> {
    let mut paths: Vec<Vec<u8>> = ids_by_path(root).into_keys().collect();
    if reverse {
        paths.reverse();
    }
    paths
        .into_iter()
        .map(|p| {
            let md = fs::symlink_metadata(root.join(std::str::from_utf8(&p).unwrap())).unwrap();
            (p, std::os::unix::fs::MetadataExt::ino(&md))
        })
        .collect()
}

/// exFAT numbers files afresh at every mount. The journal knows them by path there: a replug
/// with nothing changed records nothing and reads nothing; what was done to the drive elsewhere
/// (an edit, a move, a removal, a new file) is recorded as exactly that, the moved file keeping
/// its identity (its history); the mount records its changes under the same ids; and the backup
/// restores what the drive holds.
#[test]
fn on_exfat_a_replug_changes_nothing_and_edits_made_elsewhere_are_recorded_exactly() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let drive = Drive::new(tmp.path(), "exfat", 128);
    let root = drive.dir.join("work");
    fs::create_dir_all(root.join("docs")).unwrap();
    fs::write(root.join("docs/plan.txt"), b"the plan").unwrap();
    fs::write(root.join("docs/budget.csv"), b"rent,1200\nfood,400\n").unwrap();
    fs::write(root.join("notes.txt"), b"carried around").unwrap();
    fs::write(root.join("photo.jpg"), Rng(3).bytes(300_000)).unwrap();
    let out = run(&["init", root.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_str(&ok(&[
        "journal",
        "status",
        "--json",
        "--pocket",
        root.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(st["journal"]["files_known_by"], "path", "{st}");
    let dest = add_vault(&root, tmp.path());
    let before = ids_by_path(&root);
    assert_eq!(before.len(), 5, "{before:?}");

    // 1. Unplugged and plugged back, nothing changed: nothing recorded, nothing read. (The
    // drive numbers files as they are first looked at: looked at in another order, they get
    // other numbers.)
    let numbers = drive_numbers(&root, false);
    drive.replug();
    assert_ne!(
        drive_numbers(&root, true),
        numbers,
        "the drive kept its numbers across a replug; the case is not tried"
    );
    let r = scan_report(&root);
    assert_eq!(counts(&r), [0; 6], "a replug with nothing changed: {r}");
    assert_eq!(ids_by_path(&root), before);

    // 2. Edited elsewhere while unplugged (as on another computer).
    fs::write(
        root.join("docs/plan.txt"),
        b"the plan, revised on the office PC",
    )
    .unwrap();
    fs::create_dir(root.join("archive")).unwrap();
    fs::rename(root.join("photo.jpg"), root.join("archive/photo-2026.jpg")).unwrap();
    fs::remove_file(root.join("notes.txt")).unwrap();
    fs::write(root.join("todo.txt"), b"call the bank").unwrap();
    drive.replug();
    let r = scan_report(&root);
    assert_eq!(counts(&r), [2, 1, 1, 1, 0, 0], "edits made elsewhere: {r}");
    let after = ids_by_path(&root);
    assert_eq!(
        after[b"archive/photo-2026.jpg".as_slice()],
        before[b"photo.jpg".as_slice()],
        "a file moved elsewhere keeps its identity"
    );
    assert_eq!(
        after[b"docs/plan.txt".as_slice()],
        before[b"docs/plan.txt".as_slice()]
    );
    let old: std::collections::HashSet<u64> = before.values().copied().collect();
    assert!(
        !old.contains(&after[b"todo.txt".as_slice()]),
        "a new file gets a new id"
    );

    // 3. Work in the mount, then a replug: the records the mount made describe the drive.
    let p = mountable(&root, tmp.path());
    let m = p.mount(&[]);
    fs::write(m.mnt.join("docs/minutes.txt"), b"met on Monday").unwrap();
    fs::rename(
        m.mnt.join("docs/budget.csv"),
        m.mnt.join("archive/budget-2026.csv"),
    )
    .unwrap();
    fs::write(m.mnt.join("todo.txt"), b"call the bank; done").unwrap();
    fs::create_dir(m.mnt.join("new folder")).unwrap();
    fs::write(m.mnt.join("new folder/a.txt"), b"a").unwrap();
    fs::remove_file(m.mnt.join("new folder/a.txt")).unwrap();
    m.unmount();
    let mounted = ids_by_path(&root);
    assert_eq!(
        mounted[b"archive/budget-2026.csv".as_slice()],
        before[b"docs/budget.csv".as_slice()],
        "a move in the mount keeps the file's id"
    );
    // The mount's records name the files the scan finds at their paths (the files it just
    // recorded are read again, git's "racily clean" rule, and folders get their new times).
    drive.replug();
    let r = scan_report(&root);
    assert_eq!(
        counts(&r)[..3],
        [0; 3],
        "after the mount's records and a replug: {r}"
    );
    assert_eq!(ids_by_path(&root), mounted);
    drive.replug();
    let r = scan_report(&root);
    assert_eq!(counts(&r), [0; 6], "a second replug: {r}");
    assert_eq!(ids_by_path(&root), mounted);

    // 4. The backup holds what the drive holds.
    let restored = sync_and_restore(&root, &dest, tmp.path());
    assert_eq!(kept_tree(&restored), kept_tree(&root));
}

/// exFAT through FUSE keeps times to the second: a file rewritten with as many bytes within the
/// second of its record keeps its size and times. The scan trusts no time that close to a
/// record (it waits the second out), so the rewrite is not missed.
#[test]
fn on_exfat_a_same_size_rewrite_within_the_second_is_not_missed() {
    require_root!();
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let tmp = tempfile::tempdir().unwrap();
    let (_drive, root, _) = pocket_on(tmp.path(), "exfat", 64);
    let f = root.join("ledger.txt");
    for round in 0..2 {
        // Just after a second begins, so that the write, the scan and the rewrite fit in it.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        std::thread::sleep(Duration::from_nanos(
            1_020_000_000 - u64::from(now.subsec_nanos()),
        ));
        fs::write(&f, format!("balance {round}: 100")).unwrap();
        scan_report(&root);
        fs::write(&f, format!("balance {round}: 999")).unwrap();
        let r = scan_report(&root);
        assert_eq!(
            r["modified"], 1,
            "round {round}: the rewrite was missed: {r}"
        );
    }
}

/// The same through the mount: a file closed, opened again within the second and rewritten
/// with as many bytes shows the mount the size and time it recorded at the first close. The
/// second close must still be recorded, or the backup keeps the first bytes (found by the
/// endurance rounds on exFAT).
#[test]
fn on_exfat_a_same_size_rewrite_through_the_mount_within_the_second_is_backed_up() {
    require_root!();
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let (tmp, _drive, root, p) = exfat_pocket(64);
    let dest = add_vault(&root, tmp.path());
    let m = p.mount(&[]);
    let restored = tmp.path().join("restored");
    // The case needs the first write, its backup and the rewrite within one second of the
    // drive's: tried again (with a new file) when a slow machine spills over.
    for attempt in 0..5 {
        let name = format!("ledger{attempt}.txt");
        let f = m.mnt.join(&name);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        std::thread::sleep(Duration::from_nanos(
            1_020_000_000 - u64::from(now.subsec_nanos()),
        ));
        fs::write(&f, b"balance: 100").unwrap();
        let first = fs::metadata(root.join(&name)).unwrap();
        // The first bytes backed up (the drain reads them now), then written over in place,
        // as an editor or a database does (no truncation, which would be recorded).
        let _ = fs::remove_dir_all(&restored);
        sync_and_restore(&root, &dest, tmp.path());
        std::os::unix::fs::FileExt::write_all_at(
            &fs::File::options().write(true).open(&f).unwrap(),
            b"999",
            9,
        )
        .unwrap();
        let second = fs::metadata(root.join(&name)).unwrap();
        if first.modified().unwrap() != second.modified().unwrap() {
            continue;
        }
        // Synced while mounted: no scan looks at the drive, only the mount's records count.
        fs::remove_dir_all(&restored).unwrap();
        sync_and_restore(&root, &dest, tmp.path());
        assert_eq!(fs::read(restored.join(&name)).unwrap(), b"balance: 999");
        m.unmount();
        return;
    }
    panic!("never wrote, backed up and wrote again within one second (this tries nothing)");
}

/// What exFAT keeps of a tree: path (the pocket's names) -> kind, size and, for files, mtime and
/// a hash of the bytes.
fn kept_tree(root: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_name() == ".backpocket" {
                continue;
            }
            // The pocket's names (a drive's look-alikes read back; real names unchanged).
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_encoded_bytes()
                .to_vec();
            let rel =
                String::from_utf8_lossy(&journal::spelling::path_from_drive(&rel)).into_owned();
            let md = fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                stack.push(e.path());
                out.insert(rel, "dir".to_owned());
            } else {
                let bytes = fs::read(e.path()).unwrap();
                let mtime = md
                    .modified()
                    .unwrap()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                out.insert(
                    rel,
                    format!(
                        "file {} bytes, mtime {}s, {}",
                        bytes.len(),
                        mtime.as_secs(),
                        blake3::hash(&bytes)
                    ),
                );
            }
        }
    }
    out
}

/// The catalog as paths: kind and size (and mtime for files, in whole seconds: the catalog
/// keeps exact times the drive rounds), to set beside the drive's.
fn catalog_paths(root: &std::path::Path) -> std::collections::BTreeMap<String, (u8, u64, i64)> {
    catalog_tree(&root.join(".backpocket/journal.db"))
        .into_iter()
        .map(|(p, (kind, _, size, mtime, ..))| {
            let secs = mtime.div_euclid(1_000_000_000);
            (String::from_utf8(p).unwrap(), (kind, size, secs))
        })
        .collect()
}

/// The drive as paths (the pocket's names): kind, size, and mtime for files in whole seconds.
fn drive_paths(root: &std::path::Path) -> std::collections::BTreeMap<String, (u8, u64, i64)> {
    disk_tree(root)
        .into_iter()
        .map(|(p, (kind, _, size, mtime, ..))| {
            let secs = mtime.div_euclid(1_000_000_000);
            // The pocket's names, from the look-alikes the drive stores.
            let p = journal::spelling::from_drive(&p).into_owned();
            (String::from_utf8(p).unwrap(), (kind, size, secs))
        })
        .collect()
}

/// Random work through the mount on an exFAT pocket (new files, rewrites, appends,
/// truncations, moves over other files, new and removed folders), rounds ended by a clean
/// unmount or by kill -9, the drive unplugged and plugged back after each: after a clean
/// unmount the journal's catalog is the drive, path by path; at the end the backup restores
/// exactly what the drive holds. `BACKPOCKET_EXFAT_SEED` runs a failing schedule again.
#[test]
fn on_exfat_random_work_with_kills_and_replugs_is_backed_up_exactly() {
    require_root!();
    let seed = seed_from_env("BACKPOCKET_EXFAT_SEED");
    println!("BACKPOCKET_EXFAT_SEED={seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let drive = Drive::new(tmp.path(), "exfat", 256);
    let root = drive.dir.join("work");
    fs::create_dir(&root).unwrap();
    ok(&["init", root.to_str().unwrap()]);
    let dest = add_vault(&root, tmp.path());
    let p = mountable(&root, tmp.path());
    let mut counter = 0u64;
    for round in 0..4 {
        let m = p.mount(&[]);
        let mnt = m.mnt.clone();
        for _ in 0..120 {
            // What is there now, through the mount.
            let mut dirs = vec![mnt.clone()];
            let mut files = Vec::new();
            let mut stack = vec![mnt.clone()];
            while let Some(d) = stack.pop() {
                for e in fs::read_dir(&d).unwrap() {
                    let path = e.unwrap().path();
                    if path.is_dir() {
                        stack.push(path.clone());
                        dirs.push(path);
                    } else {
                        files.push(path);
                    }
                }
            }
            dirs.sort();
            files.sort();
            counter += 1;
            let dir = rng.pick(&dirs).unwrap().clone();
            // Some names exFAT cannot spell: the pocket keeps them under look-alikes.
            let fresh = if counter % 3 == 0 {
                dir.join(format!("n{counter}: \"why?\".txt"))
            } else {
                dir.join(format!("n{counter}.txt"))
            };
            let file = rng.pick(&files).cloned();
            let size = rng.size().min(200_000);
            let mode = *rng
                .pick(&[0o600, 0o640, 0o644, 0o700, 0o750, 0o755])
                .unwrap();
            let when = std::time::UNIX_EPOCH
                + std::time::Duration::new(
                    1_500_000_000 + rng.below(1 << 28),
                    rng.below(1_000_000_000) as u32,
                );
            let res = match (rng.below(12), file) {
                (0..=2, _) | (_, None) => fs::write(&fresh, rng.bytes(size)),
                (3, Some(f)) => fs::write(&f, rng.bytes(size)),
                (4, Some(f)) => fs::OpenOptions::new()
                    .append(true)
                    .open(&f)
                    .and_then(|mut h| std::io::Write::write_all(&mut h, &rng.bytes(3000))),
                (5, Some(f)) => fs::OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .and_then(|h| h.set_len(rng.below(5000))),
                (6, Some(f)) => match rng.pick(&files) {
                    Some(over) if rng.chance(0.5) && *over != f => fs::rename(&f, over),
                    _ => fs::rename(&f, &fresh),
                },
                (7, Some(f)) => fs::remove_file(&f),
                (8, _) => fs::create_dir(dir.join(format!("d{counter}"))),
                (10, Some(f)) => {
                    use std::os::unix::fs::PermissionsExt;
                    let target = if rng.chance(0.3) { dir.clone() } else { f };
                    fs::set_permissions(target, fs::Permissions::from_mode(mode))
                }
                (11, Some(f)) => fs::File::options()
                    .write(true)
                    .open(&f)
                    .and_then(|h| h.set_modified(when)),
                (_, _) => {
                    let d = rng.pick(&dirs).unwrap().clone();
                    if d == mnt {
                        Ok(())
                    } else if rng.chance(0.5) {
                        fs::remove_dir_all(&d)
                    } else {
                        let to = mnt.join(format!("moved{counter}"));
                        fs::rename(&d, &to)
                    }
                }
            };
            res.unwrap_or_else(|e| panic!("seed {seed}, round {round}: {e}"));
        }
        if round % 2 == 1 {
            m.kill9();
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&p.mnt)
                .status();
        } else {
            m.unmount();
            assert_eq!(
                catalog_paths(&root),
                drive_paths(&root),
                "seed {seed}, round {round}: after a clean unmount the catalog is the drive"
            );
        }
        drive.replug();
    }
    // The last round was killed: a scan records what its journal had not committed yet; then
    // a replug changes nothing.
    scan_report(&root);
    drive.replug();
    let r = scan_report(&root);
    assert_eq!(
        counts(&r),
        [0; 6],
        "seed {seed}: a replug after the scan: {r}"
    );
    assert_eq!(catalog_paths(&root), drive_paths(&root), "seed {seed}");
    let restored = sync_and_restore(&root, &dest, tmp.path());
    assert_eq!(kept_tree(&restored), kept_tree(&root), "seed {seed}");
    // Modes and exact times, which the drive does not keep: the backup has what the mount
    // shows.
    let m = p.mount(&[]);
    assert_eq!(
        modes_and_times(&restored),
        modes_and_times(&m.mnt),
        "seed {seed}"
    );
    m.unmount();
}

/// Every path's mode, and a file's modification time to the nanosecond.
fn modes_and_times(root: &std::path::Path) -> std::collections::BTreeMap<String, (u32, i64)> {
    use std::os::unix::fs::MetadataExt;
    disk_tree(root)
        .into_keys()
        .map(|p| {
            let p = String::from_utf8(p).unwrap();
            let md = fs::symlink_metadata(root.join(&p)).unwrap();
            let mtime = if md.is_dir() {
                0
            } else {
                md.mtime() * 1_000_000_000 + md.mtime_nsec()
            };
            (p, (md.mode() & 0o7777, mtime))
        })
        .collect()
}

/// exFAT keeps no modes and no owners, and times to the second only. The mount keeps them for
/// the pocket: files adopted at `init` get 0644 (folders 0755), a chmod, a chown and a time set
/// to the nanosecond show through the mount, last across an unmount and a replug (the scan
/// then records nothing), and the backup restores them onto a drive that can hold them.
/// Symbolic links, fifos and devices, which exFAT cannot hold, are held as small files (a
/// link's target, or nothing) and shown as what they are; extended attributes are kept too.
#[test]
fn on_exfat_the_mount_keeps_modes_owners_and_exact_times() {
    use std::os::unix::ffi::OsStringExt;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    require_root!();
    let (tmp, drive, root, p) = exfat_pocket(128);
    let dest = add_vault(&root, tmp.path());
    let exact = std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000, 123_456_789);
    let shown = |mnt: &std::path::Path| -> Vec<(String, u32, u32, i64)> {
        ["notes.txt", "secret.txt", "bin", "bin/run.sh"]
            .iter()
            .map(|name| {
                let md = fs::symlink_metadata(mnt.join(name)).unwrap();
                (
                    name.to_string(),
                    md.mode() & 0o7777,
                    md.uid(),
                    md.mtime_nsec(),
                )
            })
            .collect()
    };
    let m = p.mount(&[]);
    let adopted = fs::metadata(m.mnt.join("notes.txt")).unwrap();
    assert_eq!(adopted.mode() & 0o7777, 0o644, "a file adopted at init");
    fs::write(m.mnt.join("secret.txt"), b"pin 1234").unwrap();
    fs::set_permissions(m.mnt.join("secret.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(m.mnt.join("bin")).unwrap();
    fs::write(m.mnt.join("bin/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(m.mnt.join("bin/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(m.mnt.join("bin"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(m.mnt.join("notes.txt"), Some(1000), Some(1000)).unwrap();
    fs::File::options()
        .write(true)
        .open(m.mnt.join("secret.txt"))
        .unwrap()
        .set_modified(exact)
        .unwrap();
    let want = vec![
        ("notes.txt".to_string(), 0o644, 1000, adopted.mtime_nsec()),
        ("secret.txt".to_string(), 0o600, 0, 123_456_789),
        (
            "bin".to_string(),
            0o700,
            0,
            fs::metadata(m.mnt.join("bin")).unwrap().mtime_nsec(),
        ),
        ("bin/run.sh".to_string(), 0o755, 0, 0),
    ];
    assert_eq!(shown(&m.mnt), want, "as the mount shows them");
    // A symbolic link: the drive holds a file of its target, the mount shows a link.
    std::os::unix::fs::symlink("notes.txt", m.mnt.join("link")).unwrap();
    std::os::unix::fs::symlink("../notes.txt", m.mnt.join("bin/up")).unwrap();
    assert!(fs::symlink_metadata(m.mnt.join("link"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::read_link(m.mnt.join("link")).unwrap(),
        std::path::Path::new("notes.txt")
    );
    assert_eq!(fs::read(m.mnt.join("bin/up")).unwrap(), b"carried around");
    // A fifo and a device, which exFAT cannot hold either: empty files on the drive, a fifo
    // that works (the kernel's pipe, as on any drive) and a device with its number here.
    let c_path =
        |name: &str| std::ffi::CString::new(m.mnt.join(name).into_os_string().into_vec()).unwrap();
    // SAFETY: valid C strings.
    unsafe {
        assert_eq!(libc::mkfifo(c_path("fifo").as_ptr(), 0o640), 0);
        assert_eq!(
            libc::mknod(
                c_path("null").as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(1, 3)
            ),
            0
        );
    }
    let specials = |dir: &std::path::Path| {
        let (f, n) = (md_of(&dir.join("fifo")), md_of(&dir.join("null")));
        (
            f.file_type().is_fifo(),
            f.mode() & 0o7777,
            n.file_type().is_char_device(),
            n.rdev(),
        )
    };
    let want_specials = (true, 0o640, true, libc::makedev(1, 3));
    // Extended attributes, which exFAT has none of.
    let xattrs = |path: &std::path::Path| -> Vec<(String, Vec<u8>)> {
        let mut names = vec![0u8; 1024];
        let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap();
        names[..n]
            .split(|b| *b == 0)
            .filter(|n| !n.is_empty())
            .map(|name| {
                let mut v = vec![0u8; 1024];
                let len = rustix::fs::lgetxattr(path, name, &mut v[..]).unwrap();
                v.truncate(len);
                (String::from_utf8(name.to_vec()).unwrap(), v)
            })
            .collect()
    };
    let set = |name: &str, value: &[u8], how| {
        rustix::fs::setxattr(m.mnt.join("secret.txt"), name, value, how)
    };
    use rustix::fs::XattrFlags as X;
    set("user.origin", b"scanned", X::empty()).unwrap();
    set("user.tag", b"draft", X::CREATE).unwrap();
    assert_eq!(
        set("user.tag", b"again", X::CREATE),
        Err(rustix::io::Errno::EXIST)
    );
    set("user.tag", b"final", X::REPLACE).unwrap();
    set("user.gone", b"", X::empty()).unwrap();
    rustix::fs::removexattr(m.mnt.join("secret.txt"), "user.gone").unwrap();
    assert_eq!(
        rustix::fs::removexattr(m.mnt.join("secret.txt"), "user.gone"),
        Err(rustix::io::Errno::NODATA)
    );
    let want_xattrs = vec![
        ("user.origin".to_string(), b"scanned".to_vec()),
        ("user.tag".to_string(), b"final".to_vec()),
    ];
    assert_eq!(xattrs(&m.mnt.join("secret.txt")), want_xattrs);
    assert!(xattrs(&m.mnt.join("link")).is_empty(), "a link has none");
    fs::write(m.mnt.join("tagged.txt"), b"v1").unwrap();
    rustix::fs::setxattr(m.mnt.join("tagged.txt"), "user.k", b"v", X::empty()).unwrap();
    let tagged = vec![("user.k".to_string(), b"v".to_vec())];
    assert_eq!(specials(&m.mnt), want_specials, "as the mount shows them");
    let mut pipe = fs::File::options()
        .read(true)
        .write(true)
        .open(m.mnt.join("fifo"))
        .unwrap();
    std::io::Write::write_all(&mut pipe, b"through the pipe").unwrap();
    let mut got = [0u8; 16];
    std::io::Read::read_exact(&mut pipe, &mut got).unwrap();
    assert_eq!(&got, b"through the pipe");
    drop(pipe);
    m.unmount();
    assert_eq!(
        fs::metadata(root.join("fifo")).unwrap().len(),
        0,
        "an empty file on the drive"
    );
    assert_eq!(
        fs::metadata(root.join("secret.txt")).unwrap().mode() & 0o777,
        0o777,
        "the drive itself keeps no mode (else this test tries nothing)"
    );

    // Written elsewhere (the drive has no xattrs to read): the journal's stay.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fs::write(root.join("tagged.txt"), b"v2, written elsewhere").unwrap();

    // (Files the mount recorded within the drive's second of their last change are read
    // again by the next scan: their times cannot tell a later change.)
    drive.replug();
    let r = scan_report(&root);
    let [created, removed, renamed, _, _, attrs] = counts(&r);
    assert_eq!(
        [created, removed, renamed, attrs],
        [0; 4],
        "what the mount keeps is not a change: {r}"
    );
    drive.replug();
    let r = scan_report(&root);
    assert_eq!(counts(&r), [0; 6], "a second replug: {r}");
    let m = p.mount(&[]);
    assert_eq!(shown(&m.mnt), want, "after an unmount and a replug");
    assert_eq!(
        fs::read_link(m.mnt.join("link")).unwrap(),
        std::path::Path::new("notes.txt")
    );
    let names: Vec<_> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_symlink())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("link")],
        "readdir says link"
    );
    assert_eq!(
        specials(&m.mnt),
        want_specials,
        "after an unmount and a replug"
    );
    assert_eq!(
        xattrs(&m.mnt.join("secret.txt")),
        want_xattrs,
        "after a replug"
    );
    assert_eq!(
        xattrs(&m.mnt.join("tagged.txt")),
        tagged,
        "written elsewhere"
    );
    m.unmount();

    let restored = sync_and_restore(&root, &dest, tmp.path());
    let md = |name: &str| fs::symlink_metadata(restored.join(name)).unwrap();
    assert_eq!(md("secret.txt").mode() & 0o7777, 0o600);
    assert_eq!(md("secret.txt").modified().unwrap(), exact);
    assert_eq!(md("bin").mode() & 0o7777, 0o700);
    assert_eq!(md("bin/run.sh").mode() & 0o7777, 0o755);
    assert_eq!((md("notes.txt").uid(), md("notes.txt").gid()), (1000, 1000));
    assert_eq!(
        fs::read_link(restored.join("bin/up")).unwrap(),
        std::path::Path::new("../notes.txt")
    );
    assert!(md("link").file_type().is_symlink());
    assert_eq!(specials(&restored), want_specials, "restored");
    assert_eq!(
        xattrs(&restored.join("secret.txt")),
        want_xattrs,
        "restored"
    );
    assert_eq!(xattrs(&restored.join("tagged.txt")), tagged, "restored");
}

fn md_of(path: &std::path::Path) -> fs::Metadata {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An exFAT drive pulled out while mounted (its FUSE driver gone: every call says ENOTCONN):
/// `backpocket unmount` still takes the mount away and says the drive cannot be read (it
/// failed on the pocket's lock, leaving the mountpoint to a daemon with no drive), and after
/// the drive is plugged back in the pocket mounts and holds what was fsynced.
#[test]
fn on_exfat_a_pulled_drive_can_be_unmounted_and_mounted_again() {
    require_root!();
    let (_tmp, drive, root, p) = exfat_pocket(64);
    let m = p.mount(&[]);
    let f = fs::File::create(m.mnt.join("kept.txt")).unwrap();
    std::io::Write::write_all(&mut &f, b"fsynced").unwrap();
    f.sync_all().unwrap();
    drop(f);
    // What the kernel still has cached of the drive answers for a moment after it is gone
    // (the unmount command found the pocket by it, then failed on its lock).
    let _ = fs::metadata(root.join(".backpocket/config.toml"));
    let _ = fs::metadata(root.join(".backpocket/lock"));
    drive.pull();
    std::thread::sleep(std::time::Duration::from_millis(50));
    // (The daemon cannot close its journal there: how it exits is not the point.)
    let _ = m.unmount_status();
    assert!(fs::read_dir(&root).is_err(), "the drive was gone");
    drive.replug();
    let m = p.mount(&[]);
    assert_eq!(fs::read(m.mnt.join("kept.txt")).unwrap(), b"fsynced");
    m.unmount();
}

/// exFAT's FUSE driver keeps a file unlinked while open under a hidden name in its folder and
/// removes it at the last close, which moves the folder's times: the backup must follow (it
/// kept the folder's time from before; found by the endurance rounds on exFAT).
#[test]
fn on_exfat_a_file_unlinked_while_open_leaves_its_folder_times_backed_up() {
    use std::os::unix::fs::MetadataExt;
    require_root!();
    let (tmp, _drive, root, p) = exfat_pocket(64);
    let dest = add_vault(&root, tmp.path());
    let m = p.mount(&[]);
    fs::create_dir(m.mnt.join("tmp")).unwrap();
    let mut f = fs::File::create(m.mnt.join("tmp/scratch")).unwrap();
    std::io::Write::write_all(&mut f, b"1").unwrap();
    fs::remove_file(m.mnt.join("tmp/scratch")).unwrap();
    // The folder's time moves at the close, a second later (the drive's times are seconds).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::io::Write::write_all(&mut f, b"2").unwrap();
    drop(f);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let shown = fs::metadata(m.mnt.join("tmp")).unwrap();
    let restored = sync_and_restore(&root, &dest, tmp.path());
    m.unmount();
    let got = fs::metadata(restored.join("tmp")).unwrap();
    assert_eq!(
        (got.mtime(), got.mtime_nsec()),
        (shown.mtime(), shown.mtime_nsec()),
        "the folder's time"
    );
}

/// A folder whose last file was unlinked while open can be removed right after the close, and
/// no listing shows the hidden name exFAT's FUSE driver keeps such a file under until then.
#[test]
fn on_exfat_a_folder_emptied_while_a_file_was_open_can_be_removed() {
    require_root!();
    let (_tmp, _drive, _root, p) = exfat_pocket(64);
    let m = p.mount(&[]);
    for i in 0..20 {
        let dir = m.mnt.join(format!("tmp{i}"));
        fs::create_dir(&dir).unwrap();
        let mut f = fs::File::create(dir.join("scratch")).unwrap();
        fs::remove_file(dir.join("scratch")).unwrap();
        std::io::Write::write_all(&mut f, b"still open").unwrap();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "round {i}: listed");
        drop(f);
        fs::remove_dir(&dir).unwrap_or_else(|e| panic!("round {i}: rmdir: {e}"));
    }
    m.unmount();
}

/// A file moved out of a folder that is then removed can still be fsynced (its editor saves
/// it): the mount made the old folder durable too, and exFAT's driver refuses to open a
/// removed folder (the fsync failed with ENOENT; found by the endurance rounds).
#[test]
fn on_exfat_a_file_moved_out_of_a_removed_folder_can_be_fsynced() {
    require_root!();
    let (_tmp, _drive, root, p) = exfat_pocket(64);
    let m = p.mount(&[]);
    fs::create_dir_all(m.mnt.join("old")).unwrap();
    fs::create_dir_all(m.mnt.join("new")).unwrap();
    fs::write(m.mnt.join("old/draft.txt"), b"text").unwrap();
    fs::rename(m.mnt.join("old/draft.txt"), m.mnt.join("new/draft.txt")).unwrap();
    fs::remove_dir(m.mnt.join("old")).unwrap();
    let f = fs::File::options()
        .append(true)
        .open(m.mnt.join("new/draft.txt"))
        .unwrap();
    std::io::Write::write_all(&mut &f, b", saved").unwrap();
    f.sync_all().unwrap();
    drop(f);
    m.unmount();
    assert_eq!(
        fs::read(root.join("new/draft.txt")).unwrap(),
        b"text, saved"
    );
}

/// What the mount keeps for exFAT is in the journal before the call returns: a chmod, a
/// chown, an xattr and a link survive a kill -9 of the daemon right after, as they would on a
/// drive that holds them (the journal commits every few milliseconds; without the wait these
/// were lost).
#[test]
fn on_exfat_what_the_mount_keeps_survives_a_kill_9_right_after() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    require_root!();
    let (_tmp, _drive, _root, p) = exfat_pocket(128);
    for round in 0..5u32 {
        let m = p.mount(&[]);
        let mode = 0o600 + round;
        let file = m.mnt.join("notes.txt");
        fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&file, Some(1000 + round), None).unwrap();
        rustix::fs::setxattr(
            &file,
            "user.round",
            &[round as u8],
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let link = format!("link{round}");
        std::os::unix::fs::symlink("notes.txt", m.mnt.join(&link)).unwrap();
        m.kill9();
        let m = p.mount(&[]);
        let md = fs::metadata(m.mnt.join("notes.txt")).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid()),
            (mode, 1000 + round),
            "round {round}"
        );
        let mut v = [0u8; 1];
        rustix::fs::getxattr(m.mnt.join("notes.txt"), "user.round", &mut v).unwrap();
        assert_eq!(v[0], round as u8, "round {round}");
        assert!(
            fs::symlink_metadata(m.mnt.join(&link))
                .unwrap()
                .file_type()
                .is_symlink(),
            "round {round}: the link"
        );
        m.unmount();
    }
}

/// The journal knows an exFAT drive's files by path: a rename, a new folder or a new file not
/// committed when the daemon dies would be found by the scan as new, with the drive's defaults
/// (the mode, owner and xattrs only the journal keeps, lost). They are committed before the
/// call returns, unless the file is only what the scan would make of it.
#[test]
fn on_exfat_renames_and_new_files_survive_a_kill_9_right_after() {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    require_root!();
    let (_tmp, _drive, _root, p) = exfat_pocket(128);
    // Modes the test's umask (022) leaves as they are.
    let modes = [0o700, 0o750, 0o711, 0o701, 0o705, 0o751, 0o715, 0o710];
    for (round, mode) in modes.into_iter().enumerate() {
        let m = p.mount(&[]);
        let dir = m.mnt.join(format!("made{round}"));
        fs::DirBuilder::new().mode(mode).create(&dir).unwrap();
        rustix::fs::setxattr(
            &dir,
            "user.round",
            &[round as u8],
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let moved = m.mnt.join(format!("moved{round}"));
        fs::rename(&dir, &moved).unwrap();
        let file = m.mnt.join(format!("new{round}.txt"));
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&file)
            .unwrap();
        // A file with nothing only the journal keeps does not wait: the scan finds it as it
        // was, at its new name.
        let plain = m.mnt.join(format!("plain{round}.txt"));
        fs::write(&plain, b"plain").unwrap();
        fs::rename(&plain, m.mnt.join(format!("plain-moved{round}.txt"))).unwrap();
        m.kill9();
        let m = p.mount(&[]);
        let md = fs::metadata(m.mnt.join(format!("plain-moved{round}.txt"))).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o644, "round {round}: the plain file");
        assert!(!m.mnt.join(format!("plain{round}.txt")).exists());
        let md = fs::metadata(m.mnt.join(format!("moved{round}"))).unwrap();
        assert_eq!(md.mode() & 0o7777, mode, "round {round}: the moved folder");
        let mut v = [0u8; 1];
        rustix::fs::getxattr(m.mnt.join(format!("moved{round}")), "user.round", &mut v)
            .unwrap_or_else(|e| panic!("round {round}: the moved folder's xattr: {e}"));
        assert_eq!(v[0], round as u8, "round {round}");
        let md = fs::metadata(m.mnt.join(format!("new{round}.txt"))).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o640, "round {round}: the new file");
        m.unmount();
    }
}

/// exFAT refuses `" * : < > ? \ |`, control characters and names that are not UTF-8. The pocket
/// keeps such names: the drive stores look-alikes (Apple's and Samba's mapping), the mount,
/// the scan and the backups see the real names, and a replug changes nothing.
#[test]
fn on_exfat_names_the_drive_cannot_spell_are_kept() {
    use std::os::unix::ffi::OsStrExt;
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let (drive, root, said) = pocket_on(tmp.path(), "exfat", 128);
    assert!(said.contains("names with"), "{said}");
    let dest = add_vault(&root, tmp.path());
    let p = mountable(&root, tmp.path());
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9 (latin-1).txt");
    let names = |dir: &std::path::Path| -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = disk_tree(dir).into_keys().collect();
        out.sort();
        out
    };
    let m = p.mount(&[]);
    fs::write(m.mnt.join("12:30 meeting.txt"), b"agenda").unwrap();
    fs::write(m.mnt.join("what?"), b"a question").unwrap();
    fs::create_dir(m.mnt.join("a|b")).unwrap();
    fs::write(m.mnt.join("a|b/\"quoted\" <x>.txt"), b"inside").unwrap();
    fs::write(m.mnt.join(odd), b"not UTF-8").unwrap();
    fs::rename(m.mnt.join("what?"), m.mnt.join("a|b/why*")).unwrap();
    let want: Vec<Vec<u8>> = vec![
        b"12:30 meeting.txt".to_vec(),
        b"a|b".to_vec(),
        b"a|b/\"quoted\" <x>.txt".to_vec(),
        b"a|b/why*".to_vec(),
        b"caf\xe9 (latin-1).txt".to_vec(),
        b"notes.txt".to_vec(),
    ];
    assert_eq!(names(&m.mnt), want, "as the mount shows them");
    assert_eq!(fs::read(m.mnt.join("a|b/why*")).unwrap(), b"a question");
    m.unmount();
    // On the drive: look-alikes, which Windows and macOS can open.
    assert!(root.join("12\u{F022}30 meeting.txt").exists());
    assert!(root.join("a\u{F027}b/why\u{F021}").exists());

    drive.replug();
    let r = scan_report(&root);
    let [created, removed, renamed, ..] = counts(&r);
    assert_eq!([created, removed, renamed], [0; 3], "a replug: {r}");
    let m = p.mount(&[]);
    assert_eq!(names(&m.mnt), want, "after a replug");
    m.unmount();
    let restored = sync_and_restore(&root, &dest, tmp.path());
    assert_eq!(names(&restored), want, "the backup has the real names");
    assert_eq!(fs::read(restored.join(odd)).unwrap(), b"not UTF-8");
}

/// A drive lost, a new exFAT stick bought: `init --from` must give a pocket that shows what
/// the old one held, everything the stick cannot keep included (modes, owners, exact times,
/// links, a fifo, xattrs, names it cannot spell), in its journal where the mount and the
/// backups read it. Hard links, which neither exFAT nor the mount on it has, become copies.
#[test]
fn init_from_onto_exfat_gives_back_what_the_drive_cannot_keep() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::ffi::OsStringExt;
    use std::os::unix::fs::PermissionsExt;
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let lost = tmp.path().join("lost");
    fs::create_dir(&lost).unwrap();
    ok(&["init", lost.to_str().unwrap()]);
    let (pass, vault) = add_vault(&lost, tmp.path());
    let at = |rel: &str| lost.join(rel);
    fs::create_dir(at("d")).unwrap();
    fs::write(at("d/a.txt"), b"kept with its mode").unwrap();
    fs::set_permissions(at("d/a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    rustix::fs::setxattr(
        at("d/a.txt"),
        "user.origin",
        b"the lost drive",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::hard_link(at("d/a.txt"), at("d/also a.txt")).unwrap();
    std::os::unix::fs::symlink("a.txt", at("d/link")).unwrap();
    std::os::unix::fs::lchown(at("d/link"), Some(1234), Some(1234)).unwrap();
    fs::write(at("12:30 meeting?.txt"), b"agenda").unwrap();
    fs::write(
        lost.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")),
        b"latin-1",
    )
    .unwrap();
    // Names that differ only in case, which exFAT takes for one.
    fs::write(at("Makefile"), b"all: build").unwrap();
    fs::write(at("makefile"), b"# lower-case twin").unwrap();
    fs::create_dir(at("private")).unwrap();
    fs::write(at("private/key"), b"secret").unwrap();
    std::os::unix::fs::chown(at("private/key"), Some(1234), Some(5678)).unwrap();
    fs::set_permissions(at("private"), fs::Permissions::from_mode(0o700)).unwrap();
    let fifo = std::ffi::CString::new(at("pipe").into_os_string().into_vec()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let exact = fs::File::options().write(true).open(at("d/a.txt")).unwrap();
    exact
        .set_times(fs::FileTimes::new().set_modified(
            std::time::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789),
        ))
        .unwrap();
    drop(exact);
    ok(&[
        "sync",
        "--pocket",
        lost.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    // What the new pocket must show: the same, with the hard link a copy.
    let mut want = exact_tree(&lost);
    let copy = want.get_mut(b"d/also a.txt".as_slice()).unwrap();
    *copy = copy.split(" hardlink-of=").next().unwrap().to_owned()
        + &copy[copy.find(" xattrs=").unwrap()..];
    // And the second of the twins numbered.
    let twin = want.remove(b"makefile".as_slice()).unwrap();
    want.insert(b"makefile (2)".to_vec(), twin);

    let drive = Drive::new(tmp.path(), "exfat", 128);
    let root = drive.dir.join("work");
    let init_from = || {
        run(
            &[
                "init",
                "--from",
                vault.to_str().unwrap(),
                root.to_str().unwrap(),
                "--passphrase-file",
                pass.to_str().unwrap(),
            ],
            None,
        )
    };
    // What a cut one leaves (a journal, no config) is said, not taken for a pocket.
    fs::create_dir_all(root.join(".backpocket")).unwrap();
    let out = init_from();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("never finished"),
        "{said}"
    );
    fs::remove_dir_all(&root).unwrap();
    let out = init_from();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "init --from: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("copied d/also a.txt"), "{said}");
    assert!(
        said.contains("renamed makefile to makefile (2): a name differing only in case"),
        "{said}"
    );

    // A plain restore onto the stick, not a pocket: what it can hold, with the rest said.
    let plain = drive.dir.join("plain");
    let out = run(
        &[
            "restore",
            "--from",
            vault.to_str().unwrap(),
            "--to",
            plain.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
        None,
    );
    let said = String::from_utf8_lossy(&out.stdout);
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "restore: {said}{warned}");
    assert!(
        warned.contains("cannot keep modes, owners and exact times"),
        "{warned}"
    );
    for line in [
        "skipped d/link: this drive cannot hold it",
        "skipped pipe: this drive cannot hold it",
        "renamed 12:30 meeting?.txt to 12\u{F022}30 meeting\u{F025}.txt",
        "restored d/a.txt without its extended attributes",
        "renamed makefile to makefile (2): a name differing only in case",
        "copied d/also a.txt",
    ] {
        assert!(said.contains(line), "{line} in: {said}");
    }
    assert_eq!(
        fs::read(plain.join("12\u{F022}30 meeting\u{F025}.txt")).unwrap(),
        b"agenda"
    );
    assert_eq!(fs::read(plain.join("caf\u{F0E9}.txt")).unwrap(), b"latin-1");
    assert_eq!(fs::read(plain.join("private/key")).unwrap(), b"secret");
    assert_eq!(fs::read(plain.join("Makefile")).unwrap(), b"all: build");
    assert_eq!(
        fs::read(plain.join("makefile (2)")).unwrap(),
        b"# lower-case twin"
    );
    assert_eq!(
        fs::read(plain.join("d/also a.txt")).unwrap(),
        b"kept with its mode"
    );
    assert!(!plain.join("d/link").exists() && !plain.join("pipe").exists());

    let p = mountable(&root, tmp.path());
    let m = p.mount(&[]);
    assert_same_tree(&want, &exact_tree(&m.mnt));
    m.unmount();
    // The journal holds what the drive holds: a replug finds nothing to record.
    drive.replug();
    let r = scan_report(&root);
    assert_eq!(counts(&r), [0; 6], "a replug after init --from: {r}");
    let m = p.mount(&[]);
    assert_same_tree(&want, &exact_tree(&m.mnt));
    m.unmount();
}
