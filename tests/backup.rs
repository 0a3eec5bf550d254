//! Backup end to end: real mounts, real destinations, the real binary. A workload through the
//! mount is restored exactly from a vault and a mirror; the daemon is killed with -9 mid-drain
//! again and again; the destination fills up and goes read-only; a byte is flipped; a wrong
//! passphrase is given; the drive is lost and a new one made from the vault.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::backed::{ok_out, pseudo_random, workload, Backed};
use common::{assert_same_tree, exact_tree, ok, run, Mounted};

#[test]
fn a_mounted_workload_restores_exactly_from_a_vault_and_a_mirror() {
    let b = Backed::new();
    let vault = b.pocket.tmp.path().join("vault");
    let mirror = b.pocket.tmp.path().join("mirror");
    b.dest("home", &vault, "vault");
    b.dest("office", &mirror, "mirror");
    let m = b.mount();
    workload(&b.pocket.mnt);
    let s = b.wait_drained(&m, Duration::from_secs(60));
    for d in s["destinations"].as_array().unwrap() {
        for key in [
            "name",
            "url",
            "mode",
            "reachable",
            "pending_records",
            "pending_bytes",
            "last_success",
            "last_error",
            "cursor",
        ] {
            assert!(d.get(key).is_some(), "status lacks {key}: {d:#}");
        }
        assert_eq!(d["reachable"], true);
        assert!(d["last_error"].is_null(), "{d:#}");
        assert!(d["last_success"].is_string());
    }
    let want = exact_tree(&b.pocket.mnt);
    let from_vault = b.pocket.tmp.path().join("from-vault");
    ok_out(&b.restore("home", &from_vault));
    assert_same_tree(&want, &exact_tree(&from_vault));
    let from_mirror = b.pocket.tmp.path().join("from-mirror");
    ok_out(&b.restore("office", &from_mirror));
    assert_same_tree(&want, &exact_tree(&from_mirror));
    // The mirror is a plain folder anyone can read.
    assert_eq!(
        std::fs::read(mirror.join("docs/report.txt")).unwrap(),
        b"second draft, longer\n"
    );
    m.unmount();
    // Edits after the drain: the mirror keeps the replaced version aside.
    let m = b.mount();
    let mnt = &b.pocket.mnt;
    b.wait_drained(&m, Duration::from_secs(30));
    let kept_before = walk(&mirror.join(".backpocket-versions"));
    std::fs::write(mnt.join("docs/report.txt"), b"third draft\n").unwrap();
    std::fs::remove_file(mnt.join("run.sh")).unwrap();
    // A folder moved, and two files swapping names (one of them hard-linked).
    std::fs::rename(mnt.join("docs/deep"), mnt.join("deep-moved")).unwrap();
    std::fs::rename(mnt.join("truncated"), mnt.join("swap.tmp")).unwrap();
    std::fs::rename(mnt.join("notes.md"), mnt.join("truncated")).unwrap();
    std::fs::rename(mnt.join("swap.tmp"), mnt.join("notes.md")).unwrap();
    b.wait_drained(&m, Duration::from_secs(30));
    let kept: Vec<PathBuf> = walk(&mirror.join(".backpocket-versions"))
        .into_iter()
        .filter(|p| !kept_before.contains(p))
        .collect();
    assert!(
        kept.iter().any(|p| p.ends_with("docs/report.txt")
            && std::fs::read(p).unwrap() == b"second draft, longer\n"),
        "{kept:?}"
    );
    assert!(kept.iter().any(|p| p.ends_with("run.sh")), "{kept:?}");
    // Moves are moves at the mirror: nothing moved was kept aside as if deleted.
    assert_eq!(
        kept.len(),
        2,
        "only the replaced report and the deleted script: {kept:?}"
    );
    let want = exact_tree(mnt);
    let again = b.pocket.tmp.path().join("from-mirror-again");
    ok_out(&b.restore("office", &again));
    assert_same_tree(&want, &exact_tree(&again));
    let again = b.pocket.tmp.path().join("from-vault-again");
    ok_out(&b.restore("home", &again));
    assert_same_tree(&want, &exact_tree(&again));
    // `log` lists both versions of the report from the vault.
    let log = ok(&[
        "log",
        b.pocket.mnt.join("docs/report.txt").to_str().unwrap(),
        "--pocket",
        b.pocket.p(),
        "--passphrase-file",
        b.pf(),
        "--json",
    ]);
    let log: serde_json::Value = serde_json::from_str(&log).unwrap();
    let versions = log[0]["versions"].as_array().unwrap();
    assert!(versions.len() >= 2, "{log:#}");
    m.unmount();
    let ver = ok(&[
        "verify",
        "home",
        "--read-data",
        "--pocket",
        b.pocket.p(),
        "--passphrase-file",
        b.pf(),
    ]);
    assert!(ver.contains("no damage found"), "{ver}");
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![d.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
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
fn killed_mid_drain_again_and_again_nothing_is_lost() {
    let b = Backed::new();
    let vault = b.pocket.tmp.path().join("vault");
    // Capped, so that each round's drain lasts about a second whatever the machine's speed
    // and the kills land in it.
    b.dest_url(
        "home",
        vault.to_str().unwrap(),
        &["--bandwidth-limit", "8MiB/s"],
        &[],
    );
    let rounds: u64 = std::env::var("BACKPOCKET_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let mut seed = 0x5eed_u64;
    let mut killed_mid_drain = 0;
    for round in 0..rounds {
        let m = b.mount();
        let dir = b.pocket.mnt.join(format!("round-{round}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..12u64 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // 0.5 to 2.5 MB of random data: about 18 MB a round.
            let size = 500_000 + (seed >> 43) as usize;
            std::fs::write(dir.join(format!("f{i}")), pseudo_random(size, seed)).unwrap();
        }
        if round > 0 {
            // Change earlier rounds too: edits, a rename, a delete.
            let prev = b.pocket.mnt.join(format!("round-{}", round - 1));
            std::fs::write(prev.join("f0"), pseudo_random(50_000, seed ^ 1)).unwrap();
            std::fs::rename(prev.join("f1"), prev.join("f1-renamed")).unwrap();
            std::fs::remove_file(prev.join("f2")).unwrap();
        }
        // Kill at a different moment of the drain each round.
        std::thread::sleep(Duration::from_millis((seed >> 40) % 300));
        let pending = b.pocket.status()["destinations"][0]["pending_records"]
            .as_u64()
            .unwrap();
        if pending > 0 {
            killed_mid_drain += 1;
        }
        m.kill9();
    }
    assert!(
        killed_mid_drain > 0,
        "no kill landed while records were pending; the test proves nothing"
    );
    eprintln!("{killed_mid_drain} of {rounds} kills landed with records still pending");
    // A last clean run drains everything.
    let m = b.mount();
    b.wait_drained(&m, Duration::from_secs(120));
    let want = exact_tree(&b.pocket.mnt);
    m.unmount();
    b.assert_restores("home", &want, "restored");
    // Nothing half-written is left where restore could see it.
    assert!(
        walk(&vault.join(".tmp")).is_empty(),
        "temporary files left behind"
    );
}

/// A small tmpfs to be a destination that fills up and goes read-only, like a real disk.
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    fn new(parent: &Path, size: &str) -> SmallFs {
        let dir = parent.join("smallfs");
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success());
        SmallFs { dir }
    }

    fn remount(&self, opts: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn wait_for_error(b: &Backed, what: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = b.pocket.status();
        let d = &s["destinations"][0];
        if d["last_error"].as_str().is_some_and(|e| e.contains(what)) {
            return s;
        }
        assert!(Instant::now() < deadline, "no {what:?} error: {s:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_full_then_read_only_destination_is_reported_and_resumed() {
    require_root!();
    let b = Backed::new();
    let fs = SmallFs::new(b.pocket.tmp.path(), "3m");
    let vault = fs.dir.join("vault");
    b.dest("disk", &vault, "vault");
    let m = b.mount();
    for i in 0..6 {
        std::fs::write(
            b.pocket.mnt.join(format!("big-{i}")),
            pseudo_random(1 << 20, i),
        )
        .unwrap();
    }
    let s = wait_for_error(&b, "full");
    assert!(
        s["destinations"][0]["pending_records"].as_u64().unwrap() > 0,
        "{s:#}"
    );
    // Give it room: the replicator retries by itself and catches up.
    fs.remount("size=64m");
    b.wait_drained(&m, Duration::from_secs(60));
    // Now read-only.
    fs.remount("ro");
    std::fs::write(
        b.pocket.mnt.join("after-ro"),
        b"written while the destination is read-only",
    )
    .unwrap();
    wait_for_error(&b, "Read-only");
    fs.remount("rw");
    b.wait_drained(&m, Duration::from_secs(60));
    let want = exact_tree(&b.pocket.mnt);
    m.unmount();
    let out = b.pocket.tmp.path().join("restored");
    ok_out(&b.restore("disk", &out));
    assert_same_tree(&want, &exact_tree(&out));
}

#[test]
fn wrong_passphrase_flipped_byte_and_a_lost_drive() {
    let b = Backed::new();
    let vault = b.pocket.tmp.path().join("vault");
    b.dest("home", &vault, "vault");
    std::fs::write(
        b.pocket.root.join("contract.txt"),
        pseudo_random(400_000, 7),
    )
    .unwrap();
    std::fs::write(
        b.pocket.root.join("letter.txt"),
        b"Dear Alice, the plans are in the usual place.\n",
    )
    .unwrap();
    let out = run(
        &[
            "sync",
            "--pocket",
            b.pocket.p(),
            "--passphrase-file",
            b.pf(),
            "--json",
        ],
        None,
    );
    let text = ok_out(&out);
    let sync: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(sync["destinations"][0]["ok"], true, "{sync:#}");

    // Wrong passphrase: refused, says so, exit code 6; nothing restored.
    let bad = b.pocket.tmp.path().join("bad-pass");
    std::fs::write(&bad, "hunter2\n").unwrap();
    let target = b.pocket.tmp.path().join("never");
    let out = run(
        &[
            "restore",
            "--from",
            vault.to_str().unwrap(),
            "--to",
            target.to_str().unwrap(),
            "--passphrase-file",
            bad.to_str().unwrap(),
        ],
        Some(Path::new("/")),
    );
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
    assert!(!target.exists() || std::fs::read_dir(&target).unwrap().next().is_none());

    // The vault holds neither names nor contents in plain text.
    for p in walk(&vault) {
        assert!(
            !p.to_string_lossy().contains("contract") && !p.to_string_lossy().contains("letter")
        );
        let bytes = std::fs::read(&p).unwrap();
        for needle in [&b"Dear Alice"[..], b"contract.txt", b"letter.txt"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds plaintext",
                p.display()
            );
        }
    }

    // The drive is lost: a new pocket from the vault, with only the passphrase; it knows its
    // destinations and continues the same vault.
    let newdrive = b.rebuild_drive(vault.to_str().unwrap(), &[]);
    let dests = ok(&[
        "dest",
        "list",
        "--pocket",
        newdrive.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        dests.contains("\"home\""),
        "the new drive knows its destinations: {dests}"
    );
    let again = b.pocket.tmp.path().join("again");
    let out = run(
        &[
            "restore",
            "--from",
            vault.to_str().unwrap(),
            "--to",
            again.to_str().unwrap(),
            "--passphrase-file",
            b.pf(),
        ],
        Some(Path::new("/")),
    );
    ok_out(&out);
    assert_same_tree(&exact_tree(&newdrive), &exact_tree(&again));

    // Retention through the command line: only the newest point stays, and it restores.
    let f = ok(&[
        "forget",
        "home",
        "--keep-last",
        "1",
        "--prune",
        "--pocket",
        newdrive.to_str().unwrap(),
        "--passphrase-file",
        b.pf(),
    ]);
    assert!(f.contains("kept 1 of"), "{f}");
    let pruned = b.pocket.tmp.path().join("pruned");
    let out = run(
        &[
            "restore",
            "--from",
            vault.to_str().unwrap(),
            "--to",
            pruned.to_str().unwrap(),
            "--passphrase-file",
            b.pf(),
        ],
        Some(Path::new("/")),
    );
    ok_out(&out);
    assert_same_tree(&exact_tree(&newdrive), &exact_tree(&pruned));

    // A flipped byte in a pack: verify names it and the file; restore refuses that file.
    let packs: Vec<PathBuf> = walk(&vault.join("data"));
    for pack in &packs {
        let mut bytes = std::fs::read(pack).unwrap();
        let i = bytes.len() / 3;
        bytes[i] ^= 0x01;
        std::fs::write(pack, &bytes).unwrap();
    }
    let out = run(
        &[
            "verify",
            vault.to_str().unwrap(),
            "--read-data",
            "--passphrase-file",
            b.pf(),
        ],
        Some(Path::new("/")),
    );
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("DAMAGED data/"), "{report}");
    assert!(
        report.contains("affects contract.txt") || report.contains("affects letter.txt"),
        "{report}"
    );
    let refused = b.pocket.tmp.path().join("refused");
    let out = run(
        &[
            "restore",
            "--from",
            vault.to_str().unwrap(),
            "--to",
            refused.to_str().unwrap(),
            "--passphrase-file",
            b.pf(),
        ],
        Some(Path::new("/")),
    );
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT restored"));

    // Repair needs the pocket, which holds the data to send again: a folder alone is a usage
    // error, and a mounted pocket is busy (its mount writes to the vault).
    let out = run(
        &[
            "verify",
            vault.to_str().unwrap(),
            "--repair",
            "--passphrase-file",
            b.pf(),
        ],
        Some(Path::new("/")),
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("inside the pocket"));
    let mnt = b.pocket.tmp.path().join("mnt-new");
    std::fs::create_dir_all(&mnt).unwrap();
    let m = Mounted::start(&newdrive, &mnt, &["--passphrase-file", b.pf()]);
    let nd = newdrive.to_str().unwrap();
    let repair = [
        "verify",
        "home",
        "--repair",
        "--pocket",
        nd,
        "--passphrase-file",
        b.pf(),
    ];
    let out = run(&repair, None);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.unmount();
    // Unmounted: every pack was damaged, and the pocket still has every file of the newest
    // point, so the vault is whole again.
    let out = run(&repair, None);
    let text = ok_out(&out);
    assert!(text.contains("repaired:"), "{text}");
    assert!(text.trim_end().ends_with("no damage found"), "{text}");
    let repaired = b.pocket.tmp.path().join("repaired");
    let out = run(
        &[
            "restore",
            "--from",
            vault.to_str().unwrap(),
            "--to",
            repaired.to_str().unwrap(),
            "--passphrase-file",
            b.pf(),
        ],
        Some(Path::new("/")),
    );
    ok_out(&out);
    assert_same_tree(&exact_tree(&newdrive), &exact_tree(&repaired));
}

#[test]
fn a_destination_unplugged_mid_drain_then_plugged_back_resumes() {
    require_root!();
    let b = Backed::new();
    // The "backup disk": a folder bind-mounted at `disk`, unmounted to pull it out.
    let storage = b.pocket.tmp.path().join("storage");
    let disk = b.pocket.tmp.path().join("disk");
    std::fs::create_dir_all(&storage).unwrap();
    std::fs::create_dir_all(&disk).unwrap();
    let plug = || {
        assert!(Command::new("mount")
            .arg("--bind")
            .arg(&storage)
            .arg(&disk)
            .status()
            .unwrap()
            .success())
    };
    let unplug = || {
        assert!(Command::new("umount")
            .arg("-l")
            .arg(&disk)
            .status()
            .unwrap()
            .success())
    };
    plug();
    b.dest("disk", &disk.join("vault"), "vault");
    let m = b.mount();
    for i in 0..20 {
        std::fs::write(
            b.pocket.mnt.join(format!("f{i}")),
            pseudo_random(512 << 10, 50 + i),
        )
        .unwrap();
    }
    // Pull it out while that drains.
    std::thread::sleep(Duration::from_millis(30));
    unplug();
    for i in 20..30 {
        std::fs::write(
            b.pocket.mnt.join(format!("f{i}")),
            pseudo_random(64 << 10, 50 + i),
        )
        .unwrap();
    }
    let s = wait_for_error(&b, "not there");
    assert_eq!(s["destinations"][0]["reachable"], false, "{s:#}");
    assert!(s["destinations"][0]["pending_records"].as_u64().unwrap() > 0);
    // Nothing was written to the machine's own disk in its place.
    assert!(!disk.join("vault").exists());
    plug();
    b.wait_drained(&m, Duration::from_secs(60));
    let want = exact_tree(&b.pocket.mnt);
    m.unmount();
    let out = b.pocket.tmp.path().join("restored");
    ok_out(&b.restore("disk", &out));
    assert_same_tree(&want, &exact_tree(&out));
    unplug();
}

#[test]
fn a_wrong_passphrase_at_mount_is_refused() {
    let b = Backed::new();
    b.dest("home", &b.pocket.tmp.path().join("vault"), "vault");
    let bad = b.pocket.tmp.path().join("bad");
    std::fs::write(&bad, "not it\n").unwrap();
    let out = run(
        &[
            "mount",
            b.pocket.p(),
            b.pocket.mnt.to_str().unwrap(),
            "--passphrase-file",
            bad.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
    assert!(!common::is_mounted(&b.pocket.mnt));
}

#[test]
fn a_destination_added_while_mounted_starts_draining() {
    let b = Backed::new();
    let m = b.mount();
    std::fs::write(
        b.pocket.mnt.join("before.txt"),
        b"written before any destination",
    )
    .unwrap();
    // The first vault makes the pocket key and remembers it on this machine; the running
    // mount picks up both within seconds.
    let vault = b.pocket.tmp.path().join("vault");
    b.dest("late", &vault, "vault");
    std::fs::write(b.pocket.mnt.join("after.txt"), b"written after").unwrap();
    b.wait_drained(&m, Duration::from_secs(30));
    let want = exact_tree(&b.pocket.mnt);
    let out = b.pocket.tmp.path().join("restored");
    ok_out(&b.restore("late", &out));
    assert_same_tree(&want, &exact_tree(&out));
    m.unmount();
}

/// A user's open-files limit is 1024 by default. A restore of a few thousand files kept up to
/// 256 open in each of its eight workers, ran out, and called every file it could not open
/// "damaged at the destination" (exit 5): thousands of files lost to the restore, and a false
/// alarm about the backup. Under a hard limit of 128 every file must come back.
#[test]
fn a_restore_of_thousands_of_files_fits_a_small_open_files_limit() {
    use std::os::unix::process::CommandExt;
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("pocket");
    std::fs::create_dir(&root).unwrap();
    for d in 0..20 {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..150 {
            std::fs::write(dir.join(format!("f{f}")), format!("{d}/{f}").repeat(f + 1)).unwrap();
        }
    }
    ok(&["init", root.to_str().unwrap()]);
    let pass = t.path().join("pass");
    std::fs::write(&pass, "open files\n").unwrap();
    let vault = t.path().join("vault");
    let (p, v, pf) = (
        root.to_str().unwrap(),
        vault.to_str().unwrap(),
        pass.to_str().unwrap(),
    );
    ok(&[
        "dest",
        "add",
        "v",
        v,
        "--passphrase-file",
        pf,
        "--pocket",
        p,
    ]);
    ok(&["sync", "--pocket", p, "--passphrase-file", pf]);
    let out_dir = t.path().join("restored");
    let mut cmd = std::process::Command::new(common::bin());
    cmd.args([
        "restore",
        "--from",
        v,
        "--to",
        out_dir.to_str().unwrap(),
        "--passphrase-file",
        pf,
    ])
    .env("XDG_CONFIG_HOME", common::config_home());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 128,
                rlim_max: 128,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(&exact_tree(&root), &exact_tree(&out_dir));
}
