//! Bad situations get a clear error and lose nothing: a second mount, a bad mountpoint, a
//! folder that is not a pocket, a damaged journal, a pulled drive, a power cut, a full drive,
//! and an ordinary user mounting through fusermount3.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;

use common::drive::Drive;
use common::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_second_mount_is_refused() {
    let p = Pocket::new();
    p.init();
    let m = p.mount(&[]);
    let other = p.tmp.path().join("mnt2");
    fs::create_dir(&other).unwrap();
    let out = run(&["mount", p.p(), other.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already mounted or in use"),
        "{}",
        stderr(&out)
    );
    // scan is refused too while mounted: the mount records changes itself.
    let out = run(&["scan", "--pocket", p.p()], None);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    m.unmount();
}

#[test]
fn bad_mountpoints_and_folders_get_clear_errors() {
    let p = Pocket::new();
    p.init();
    let missing = p.tmp.path().join("nope");
    let out = run(&["mount", p.p(), missing.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));

    let busy = p.tmp.path().join("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("x"), b"x").unwrap();
    let out = run(&["mount", p.p(), busy.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));

    let plain = p.tmp.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let out = run(
        &["mount", plain.to_str().unwrap(), p.mnt.to_str().unwrap()],
        None,
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("is not a pocket"), "{}", stderr(&out));
    let out = run(&["journal", "status"], Some(&plain));
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("no pocket here"), "{}", stderr(&out));

    // Mounting on a folder that is already a mount point.
    let m = p.mount(&[]);
    let q = Pocket::new();
    q.init();
    let out = run(&["mount", q.p(), p.mnt.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    m.unmount();

    // Inside one another: refused before anything is mounted.
    let inner = p.root.join("mnt");
    fs::create_dir(&inner).unwrap();
    let out = run(&["mount", p.p(), inner.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("inside one another"),
        "{}",
        stderr(&out)
    );
    let out = run(&["mount", p.p(), p.tmp.path().to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("inside one another"),
        "{}",
        stderr(&out)
    );

    let out = run(&["unmount", plain.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a mounted pocket"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_damaged_journal_or_config_is_reported() {
    let p = Pocket::new();
    p.init();
    fs::write(
        p.journal(),
        b"this is not a database, just garbage bytes .........",
    )
    .unwrap();
    let _ = fs::remove_file(p.root.join(".backpocket/journal.db-wal"));
    let _ = fs::remove_file(p.root.join(".backpocket/journal.db-shm"));
    let out = run(&["mount", p.p(), p.mnt.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
    // The same through --daemon: the parent passes on the daemon's message and exit code.
    let out = run(&["mount", "--daemon", p.p(), p.mnt.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
    let out = run(&["journal", "status", "--pocket", p.p()], None);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(!is_mounted(&p.mnt));

    let q = Pocket::new();
    q.init();
    fs::write(
        q.root.join(".backpocket/config.toml"),
        b"format = 1\nid = 'x'\nbogus = 3\n",
    )
    .unwrap();
    let out = run(&["mount", q.p(), q.mnt.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("config"), "{}", stderr(&out));
}

/// `mount --daemon` returns once the folder is usable; `unmount` returns once the daemon has
/// closed the journal.
#[test]
fn daemon_mode_detaches_when_ready() {
    let p = Pocket::new();
    p.init();
    let out = run(&["mount", "--daemon", p.p(), p.mnt.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mounted"));
    fs::write(p.mnt.join("f"), b"1").unwrap();
    let out = run(&["unmount", p.mnt.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(p
        .records(0)
        .iter()
        .any(|r| r["op"] == "create" && r["name"] == "f"));
}

/// A pocket made on a fresh loop-mounted filesystem, with a mountpoint beside the drive.
struct PocketOnDrive {
    tmp: tempfile::TempDir,
    drive: Drive,
    root: PathBuf,
    mnt: PathBuf,
}

impl PocketOnDrive {
    fn new(fs_type: &str, size_mb: u64) -> PocketOnDrive {
        let tmp = tempfile::tempdir().unwrap();
        let drive = Drive::new(tmp.path(), fs_type, size_mb);
        let root = drive.dir.join("pocket");
        let mnt = tmp.path().join("mnt");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&mnt).unwrap();
        ok(&["init", root.to_str().unwrap()]);
        PocketOnDrive {
            tmp,
            drive,
            root,
            mnt,
        }
    }

    /// The same pocket through the helpers that take a [`Pocket`].
    fn pocket(&self) -> Pocket {
        Pocket {
            tmp: tempfile::tempdir_in(self.tmp.path()).unwrap(),
            root: self.root.clone(),
            mnt: self.mnt.clone(),
        }
    }
}

/// A power cut right after fsync: after the drive comes back, the fsynced file and the
/// journal record that carries it are there.
#[test]
fn power_cut_keeps_what_fsync_promised() {
    require_root!();
    let mut d = PocketOnDrive::new("xfs", 320);
    let (root, mnt) = (d.root.clone(), d.mnt.clone());
    let drive = &mut d.drive;
    for mode in [&[][..], &["--no-passthrough"][..]] {
        let m = Mounted::start(&root, &mnt, mode);
        let name = format!("fsynced-{}", mode.len());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut f = fs::File::create(mnt.join(&name)).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        let ino = f.metadata().unwrap().ino();
        drop(f);
        // Written after, never fsynced: may or may not survive, but must not break anything.
        fs::write(mnt.join(format!("unsynced-{}", mode.len())), b"later").unwrap();
        drive.shutdown();
        // The daemon survives the dead drive, and unmount works.
        let _ = fs::metadata(mnt.join("whatever"));
        let out = run(&["unmount", mnt.to_str().unwrap()], None);
        assert!(
            out.status.success(),
            "unmount after shutdown: {}",
            stderr(&out)
        );
        let mut m = m;
        if let Some(mut c) = m.child.take() {
            let _ = c.wait();
        }
        drive.umount();
        drive.mount();
        assert_eq!(
            fs::read(root.join(&name)).unwrap(),
            data,
            "fsynced data lost"
        );
        let reader = journal::Reader::open(&root.join(".backpocket/journal.db")).unwrap();
        let recs = reader.records_after(0, 1_000_000).unwrap();
        assert!(
            recs.iter().any(|r| matches!(&r.change,
                journal::Change::Content { file, meta } if *file == ino && meta.size == data.len() as u64)),
            "the fsynced file's record was lost ({mode:?})"
        );
    }
    // And the next mount reconciles whatever the cut left half-recorded.
    let m = Mounted::start(&root, &mnt, &[]);
    m.unmount();
    assert_catalog_matches(&d.pocket());
}

/// The drive is pulled while mounted: operations fail with EIO, the daemon stays up, status
/// says what happened, and unmount works.
#[test]
fn a_pulled_drive_gives_eio_and_unmount_works() {
    require_root!();
    let d = PocketOnDrive::new("xfs", 320);
    let (root, mnt, drive) = (&d.root, &d.mnt, &d.drive);
    let m = Mounted::start(root, mnt, &[]);
    fs::write(mnt.join("before"), b"x").unwrap();
    let out = Command::new("xfs_io")
        .args(["-x", "-c", "shutdown -f"])
        .arg(&drive.dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let e = fs::write(mnt.join("after"), b"y").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let e = fs::read_dir(mnt).and_then(|d| d.collect::<Result<Vec<_>, _>>());
    assert!(e.is_err());
    assert!(is_mounted(mnt), "the daemon must stay up");
    let out = run(
        &["journal", "status", "--pocket", root.to_str().unwrap()],
        None,
    );
    assert!(!out.status.success());
    assert!(!stderr(&out).is_empty());
    // The daemon cannot close the journal on a dead drive: it says so and exits non-zero.
    let (status, log) = m.unmount_status();
    assert!(!is_mounted(mnt));
    assert!(!status.success());
    assert!(log.contains("the next mount scans the pocket"), "{log}");
}

/// A full drive: writes get ENOSPC, and no journal record is lost (the reserve is released
/// so the journal can record the changes that still happen).
#[test]
fn a_full_drive_gives_enospc_and_keeps_records() {
    require_root!();
    full_drive("ext4");
}

/// The same on exFAT, whose journal reserve is written rather than preallocated (no
/// fallocate there) and whose files are known by path.
#[test]
fn a_full_exfat_drive_gives_enospc_and_keeps_records() {
    require_root!();
    full_drive("exfat");
}

fn full_drive(fs_type: &str) {
    let d = PocketOnDrive::new(fs_type, 48);
    let m = Mounted::start(&d.root, &d.mnt, &[]);
    let mnt = &d.mnt;
    let mut f = fs::File::create(mnt.join("filler")).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let err = loop {
        if let Err(e) = f.write_all(&chunk) {
            break e;
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(f);
    // Metadata changes still happen on a full drive (inodes are left); each must be recorded.
    let mut made = Vec::new();
    for i in 0..50 {
        let name = format!("small-{i}");
        if fs::File::create(mnt.join(&name)).is_ok() {
            made.push(name);
        }
    }
    let _ = fs::create_dir(mnt.join("dir-on-full-drive"));
    let log = m.unmount();
    let recs = d.pocket().records(0);
    for name in &made {
        assert!(
            recs.iter()
                .any(|r| r["op"] == "create" && r["name"] == name.as_str()),
            "record of {name} lost on a full drive; daemon log:\n{log}"
        );
    }
    assert!(recs.iter().any(|r| r["op"] == "content"
        && r["name"].is_null()
        && r["size"].as_u64() > Some(1 << 20)));
}

/// An ordinary user mounts through fusermount3: the daemon path (no passthrough without
/// CAP_SYS_ADMIN), files owned by that user, unmount by that user.
#[test]
fn an_ordinary_user_mounts_through_fusermount3() {
    require_root!();
    let uid = user_id("tests");
    let Some((uid, gid)) = uid else {
        eprintln!("SKIPPED an_ordinary_user_mounts_through_fusermount3: no user `tests` (tests/run.sh creates it)");
        return;
    };
    let fuse_mode = fs::metadata("/dev/fuse").map(|m| m.mode()).unwrap_or(0);
    if fuse_mode & 0o006 != 0o006 {
        eprintln!(
            "SKIPPED an_ordinary_user_mounts_through_fusermount3: /dev/fuse is {:o}, not usable by \
             other users (udev makes it 0666; tests/run.sh does so where no udev runs)",
            fuse_mode & 0o777
        );
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("bp-user")
        .tempdir()
        .unwrap();
    fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let root = tmp.path().join("pocket");
    let mnt = tmp.path().join("mnt");
    for d in [&root, &mnt] {
        fs::create_dir(d).unwrap();
        std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap();
    }
    let as_user = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
                "--",
            ])
            .arg(bin())
            .args(args)
            .output()
            .unwrap()
    };
    let out = as_user(&["init", root.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m = Mounted::start_as(&root, &mnt, &[], Some((uid, gid)));
    assert!(m.log().contains("through the daemon"), "{}", m.log());
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "--",
        ])
        .args([
            "sh",
            "-c",
            &format!(
                "echo hi > {}/mine && cat {}/mine",
                mnt.display(),
                mnt.display()
            ),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert_eq!(fs::metadata(root.join("mine")).unwrap().uid(), uid);
    let out = as_user(&["unmount", mnt.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut m = m;
    let status = m.child.take().unwrap().wait().unwrap();
    assert!(status.success());
    let out = as_user(&[
        "journal",
        "log",
        "--pocket",
        root.to_str().unwrap(),
        "--json",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"mine\""));
}

fn user_id(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name)).then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
    })
}

/// A folder that cannot be read while scanning (here: a filesystem mounted inside the pocket
/// that fails every I/O) is not "everything in it deleted": the scan says it could not read it
/// and records nothing for it.
#[test]
fn an_unreadable_folder_is_not_taken_as_deleted() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let p = Pocket::inside(tempfile::tempdir().unwrap());
    let sub = p.root.join("sub");
    fs::create_dir(&sub).unwrap();
    let mut drive = Drive::new(tmp.path(), "xfs", 320);
    // Move the drive's mount under the pocket.
    let out = Command::new("mount")
        .args(["--move"])
        .arg(&drive.dir)
        .arg(&sub)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    drive.dir = sub.clone();
    fs::create_dir(sub.join("docs")).unwrap();
    for i in 0..5 {
        fs::write(sub.join(format!("docs/f{i}")), b"precious").unwrap();
    }
    p.init();
    let before = catalog_tree(&p.journal());
    assert!(before.keys().any(|k| k.ends_with(b"docs/f4")));
    drive.shutdown();
    let out = run(&["scan", "--pocket", p.p(), "--json"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let scan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(scan["removed"], 0, "{scan}");
    assert!(!scan["unreadable"].as_array().unwrap().is_empty(), "{scan}");
    assert_eq!(
        catalog_tree(&p.journal()),
        before,
        "the catalog must be left as it was"
    );
}

/// A pocket with a passphrase on a fresh loop-mounted XFS drive, its mountpoint beside it.
fn backed_on_xfs(tmp: &std::path::Path) -> (Drive, common::backed::Backed) {
    let drive = Drive::new(tmp, "xfs", 320);
    let root = drive.dir.join("pocket");
    fs::create_dir_all(&root).unwrap();
    let pocket = Pocket {
        tmp: tempfile::tempdir_in(tmp).unwrap(),
        root,
        mnt: tmp.join("mnt"),
    };
    fs::create_dir_all(&pocket.mnt).unwrap();
    (drive, common::backed::Backed::with_pocket(pocket))
}

/// The power goes while `m` is mounted (the log not flushed), then the drive comes back.
fn cut_power(drive: &mut Drive, m: Mounted) {
    drive.shutdown();
    power_back(drive, m);
}

/// The drive shut down already: the mount goes, then the drive comes back.
fn power_back(drive: &mut Drive, mut m: Mounted) {
    let _ = run(&["unmount", m.mnt.to_str().unwrap()], None);
    if let Some(mut c) = m.child.take() {
        let _ = c.wait();
    }
    drive.umount();
    drive.mount();
}

/// A power cut after a drain of changes nobody fsynced: the journal must still hold every
/// record a destination holds. Were the destination ahead, the records made after the cut
/// would reuse its sequence numbers and it would skip them as held.
#[test]
fn a_power_cut_never_leaves_a_destination_ahead_of_the_journal() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let (mut drive, b) = backed_on_xfs(tmp.path());
    let root = b.pocket.root.clone();
    let vault = tmp.path().join("vault");
    b.dest("v", &vault, "vault");
    let m = b.mount();
    for i in 0..20 {
        fs::write(
            m.mnt.join(format!("note-{i}")),
            format!("never fsynced {i}"),
        )
        .unwrap();
    }
    b.wait_drained(&m, std::time::Duration::from_secs(60));
    cut_power(&mut drive, m);
    let reader = journal::Reader::open(&root.join(".backpocket/journal.db")).unwrap();
    let journal_seq = reader.status().unwrap().last_seq;
    let out = tmp.path().join("restored");
    let o = run(
        &[
            "restore",
            "--from",
            "v",
            "--to",
            out.to_str().unwrap(),
            "--json",
            "--pocket",
            root.to_str().unwrap(),
            "--passphrase-file",
            b.pf(),
        ],
        None,
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let dest_seq = r["seq"].as_u64().unwrap();
    assert!(dest_seq > 0);
    assert!(
        journal_seq >= dest_seq,
        "the destination holds record {dest_seq}, the journal after the cut only {journal_seq}"
    );
}

/// An overwrite in place whose bytes reached the drive while the power cut took back its
/// metadata and its journal record: the file comes back with its old size and times but new
/// bytes (the kernel writes dirty pages back on its own; a filesystem logs the new mtime
/// separately and later). A scan that trusted the unchanged stat would call the file
/// unchanged, and the backup would keep bytes the drive no longer holds, silently and for
/// good. The next mount must read such a file again.
#[test]
fn a_power_cut_after_an_overwrite_in_place_is_backed_up_as_the_drive_holds_it() {
    overwrite_in_place_then_cut_power(false);
}

/// The same with the bytes reaching the drive at once: an `O_DIRECT` write goes to the drive
/// before it returns, without the new mtime (nothing forces the filesystem's log for it, and no
/// fsync reaches the mount), and the power goes right after, with no time for a journal commit
/// that an ordinary open does not wait for. Such an open waits until the file's mark is durable.
/// (An `O_SYNC` or `O_DSYNC` write syncs through the mount, which records the file durably.)
#[test]
fn a_power_cut_right_after_an_o_direct_overwrite_is_backed_up_as_the_drive_holds_it() {
    overwrite_in_place_then_cut_power(true);
}

fn overwrite_in_place_then_cut_power(direct: bool) {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let (mut drive, b) = backed_on_xfs(tmp.path());
    let root = b.pocket.root.clone();
    // The backup disk counts as plugged in while something answers on this port: the vault
    // is used only then (`--when host=`), so the overwrite below is not drained before the
    // cut, and no failed drain syncs the drive meanwhile either.
    let port = common::servers::free_port();
    let plugged = || std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let vault = tmp.path().join("vault");
    let when = format!("host=127.0.0.1:{port}");
    let listener = plugged();
    ok(&[
        "dest",
        "add",
        "v",
        vault.to_str().unwrap(),
        "--mode",
        "vault",
        "--when",
        &when,
        "--pocket",
        root.to_str().unwrap(),
        "--passphrase-file",
        b.pf(),
    ]);
    drop(listener);
    // Through the daemon an O_DIRECT write is not direct on the drive (see `backing_flags`):
    // it is the ordinary case there.
    let modes: &[&[&str]] = if direct {
        &[&[]]
    } else {
        &[&[], &["--no-passthrough"]]
    };
    for &mode in modes {
        let name = format!("doc-{}", mode.len());
        let mut args = vec!["--passphrase-file", b.pf()];
        args.extend_from_slice(mode);
        let listener = plugged();
        let m = b.pocket.mount(&args);
        let old = common::backed::pseudo_random(256 << 10, 1);
        fs::write(m.mnt.join(&name), &old).unwrap();
        b.wait_drained(&m, std::time::Duration::from_secs(60));
        m.unmount();
        // The old version settled on the drive (the clean unmount flushed it), like a file
        // saved long ago and backed up: a scan records it again once its timestamps can no
        // longer hide a change ("racily clean"), so that from now on its stat is trusted.
        ok(&[
            "sync",
            "--pocket",
            root.to_str().unwrap(),
            "--passphrase-file",
            b.pf(),
        ]);
        let before = fs::metadata(root.join(&name)).unwrap();
        // The backup disk unplugged, the pocket mounted again.
        drop(listener);
        let m = b.pocket.mount(&args);
        let new = common::backed::pseudo_random(256 << 10, 2);
        {
            use std::os::unix::fs::{FileExt, OpenOptionsExt};
            let f = fs::OpenOptions::new()
                .write(true)
                .custom_flags(if direct { libc::O_DIRECT } else { 0 })
                .open(m.mnt.join(&name))
                .unwrap();
            if direct {
                // One block, so that it is on the drive within the journal's gathering pause
                // (an open that did not wait would lose the race); O_DIRECT wants a buffer
                // aligned to the drive's blocks.
                let mut buf = vec![0u8; 2 * 4096];
                let at = buf.as_ptr().align_offset(4096);
                buf[at..at + 4096].copy_from_slice(&new[..4096]);
                f.write_all_at(&buf[at..at + 4096], 0).unwrap();
            } else {
                // Written once the file's mark is durable (an open does not wait for it), as
                // an editor saves a while after opening. Were the mark synced after the write,
                // its sync would force the drive's log with the new mtime too, and the case
                // under test could not arise.
                let journal = journal::Reader::open(&root.join(".backpocket/journal.db")).unwrap();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                while !journal.unsynced().unwrap().contains(&before.ino()) {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the open's unsynced mark was not committed within 30 s"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                // Committed marks are durable within a second; the kernel's own write-back
                // comes 30 s after the write.
                std::thread::sleep(std::time::Duration::from_secs(2));
                f.write_all_at(&new, 0).unwrap();
            }
        }
        if direct {
            // The drive as the write left it, this instant.
            drive.shutdown_now();
            power_back(&mut drive, m);
        } else {
            std::thread::sleep(std::time::Duration::from_millis(200));
            // The dirty pages written back, as the kernel does by itself: fdatasync of the
            // backing file (not through the mount) writes the data, and on XFS does not force
            // the log for a change of times alone.
            let wb = Command::new("xfs_io")
                .args(["-c", "fdatasync"])
                .arg(root.join(&name))
                .output()
                .unwrap();
            assert!(wb.status.success(), "xfs_io fdatasync: {}", stderr(&wb));
            cut_power(&mut drive, m);
        }
        let after = fs::metadata(root.join(&name)).unwrap();
        let on_drive = fs::read(root.join(&name)).unwrap();
        // What the cut left: the new bytes under the old metadata (else this test tests nothing).
        assert_eq!(
            (after.size(), after.mtime(), after.mtime_nsec(), after.ino()),
            (
                before.size(),
                before.mtime(),
                before.mtime_nsec(),
                before.ino()
            ),
            "the power cut kept the overwrite's metadata; the case under test did not arise"
        );
        let written = if direct { &new[..4096] } else { &new[..] };
        assert!(
            on_drive[..written.len()] == *written,
            "the overwrite's bytes did not reach the drive; the case under test did not arise"
        );
        let listener = plugged();
        let m = b.pocket.mount(&args);
        b.wait_drained(&m, std::time::Duration::from_secs(60));
        m.unmount();
        drop(listener);
        let out = tmp.path().join(format!("restored-{}", mode.len()));
        common::backed::ok_out(&b.restore("v", &out));
        assert!(
            fs::read(out.join(&name)).unwrap() == on_drive,
            "{mode:?}: the backup keeps bytes the drive no longer holds"
        );
    }
}

/// Every small file backpocket keeps is written whole and durably: after a power cut right
/// after the command that wrote it returned, each one holds what that command wrote. The
/// pocket's config (its destinations), a destination's state (the newest segment hash: the
/// rollback detection), the machine's copy of the pocket key, and the service unit that
/// plugging in runs.
#[test]
fn every_state_file_survives_a_power_cut() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let (mut drive, b) = backed_on_xfs(tmp.path());
    let home = drive.dir.join("home");
    fs::create_dir_all(&home).unwrap();
    let config_home = home.join(".config");
    let env = [
        ("HOME", home.to_str().unwrap().to_owned()),
        ("XDG_CONFIG_HOME", config_home.to_str().unwrap().to_owned()),
    ];
    let pocket = b.pocket.p().to_owned();
    let vault = tmp.path().join("vault");
    fs::write(b.pocket.root.join("work.txt"), b"to back up").unwrap();
    let meta = b.pocket.root.join(".backpocket");
    let keys = config_home.join("backpocket/keys");
    let steps: [(&[&str], PathBuf); 4] = [
        (
            &[
                "dest",
                "add",
                "v",
                vault.to_str().unwrap(),
                "--pocket",
                &pocket,
                "--passphrase-file",
                b.pf(),
            ],
            meta.join("config.toml"),
        ),
        (
            &["sync", "--pocket", &pocket, "--passphrase-file", b.pf()],
            meta.join("dest/v.json"),
        ),
        (
            &[
                "key",
                "remember",
                "--pocket",
                &pocket,
                "--passphrase-file",
                b.pf(),
            ],
            keys.clone(),
        ),
        (
            &["service", "install", "--mountpoint", "/nonexistent/Pocket"],
            config_home.join("systemd/user/backpocket.service"),
        ),
    ];
    for (args, kept) in steps {
        let out = run_env(args, None, &env);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        // The key file is named by the pocket's id.
        let kept = if kept == keys {
            fs::read_dir(&keys).unwrap().next().unwrap().unwrap().path()
        } else {
            kept
        };
        let before = fs::read(&kept).unwrap();
        drive.shutdown();
        drive.umount();
        drive.mount();
        let after = fs::read(&kept).unwrap_or_else(|e| {
            panic!(
                "{} was lost in a power cut after {args:?}: {e}",
                kept.display()
            )
        });
        assert!(
            after == before,
            "{} after a power cut holds {:?}, not what {args:?} wrote",
            kept.display(),
            String::from_utf8_lossy(&after)
        );
    }
}

/// Files stamped by a clock hours ahead of this machine's (a drive last written elsewhere; here
/// the mount runs under libfaketime, 3 hours behind the kernel that stamps the files): the
/// mount is ready at once and records changes as usual. The start-up scan waited for the
/// newest change time to be safely past, which was hours away.
#[test]
fn a_drive_written_by_a_clock_hours_ahead_mounts_at_once() {
    let p = Pocket::new();
    p.init();
    std::fs::create_dir(p.root.join("docs")).unwrap();
    std::fs::write(p.root.join("docs/a.txt"), b"written just now").unwrap();
    let behind = common::clock_3h_behind();
    let t = std::time::Instant::now();
    // Ready within Mounted's 20 s, or it panics.
    let m = Mounted::start_with(&p.root, &p.mnt, &[], &behind);
    eprintln!("ready after {:?}", t.elapsed());
    std::fs::write(m.mnt.join("docs/b.txt"), b"and this").unwrap();
    m.unmount();
    let records = p.records(0);
    assert!(
        records
            .iter()
            .any(|r| r["op"] == "create" && r["name"] == "b.txt"),
        "{records:?}"
    );
}
