//! Remote destinations against real servers the tests start themselves: an OpenSSH sshd and
//! Garage (S3). One suite runs against a local folder, SFTP and S3 alike; `dest test` and
//! `journal status` are checked for words a user can act on; the office-network policy is
//! tested for real with a network namespace whose link goes down and up mid-drain.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::backed::{ok_out, pseudo_random, workload, Backed};
use common::servers::{keygen, ssh_client, Garage, Office, Sshd};
use common::{assert_same_tree, exact_tree, ok, run_env};

/// Where a suite's destination lives.
enum Kind {
    Local,
    Sftp,
    S3,
}

/// The destination test suite: add, drain a mounted workload, restore exactly, change things,
/// drain again, restore again, verify every byte, and `dest test`. The mount gets no
/// credentials in its environment: it must use the ones sealed in the pocket.
fn suite(kind: Kind) {
    let b = Backed::new();
    let tmp = b.pocket.tmp.path().to_owned();
    let mut _sshd = None;
    let mut garage = None;
    match kind {
        Kind::Local => {
            b.dest("d", &tmp.join("vault"), "vault");
        }
        Kind::Sftp => {
            let s = Sshd::start("127.0.0.1", None, false);
            let key = ssh_client().key.to_str().unwrap().to_owned();
            b.dest_url("d", &s.url(&tmp.join("vault")), &["--identity", &key], &[]);
            _sshd = Some(s);
        }
        Kind::S3 => {
            let g = Garage::start("127.0.0.1", None);
            b.dest_url(
                "d",
                "s3://pockets/alice",
                &["--endpoint", &g.endpoint(), "--region", "garage"],
                &g.env(),
            );
            garage = Some(g);
        }
    }
    // Credentials are sealed, never in the config in plain text.
    let config = std::fs::read_to_string(b.pocket.root.join(".backpocket/config.toml")).unwrap();
    assert!(!config.contains("PRIVATE KEY"), "{config}");
    if let Some(g) = &garage {
        assert!(!config.contains(&g.secret_key), "{config}");
        assert!(config.contains("credentials = "), "{config}");
    }
    let m = b.mount();
    workload(&b.pocket.mnt);
    b.wait_drained(&m, Duration::from_secs(90));
    let want = exact_tree(&b.pocket.mnt);
    let out = tmp.join("restored");
    ok_out(&b.restore("d", &out));
    assert_same_tree(&want, &exact_tree(&out));
    // An incremental round: edits, a move, a delete.
    let mnt = &b.pocket.mnt;
    std::fs::write(mnt.join("docs/report.txt"), b"third draft\n").unwrap();
    std::fs::rename(mnt.join("docs/deep"), mnt.join("deep-moved")).unwrap();
    std::fs::remove_file(mnt.join("run.sh")).unwrap();
    std::fs::write(mnt.join("big-2"), pseudo_random(3_000_000, 77)).unwrap();
    b.wait_drained(&m, Duration::from_secs(60));
    let want = exact_tree(mnt);
    let s = b.pocket.status();
    let d = &s["destinations"][0];
    assert_eq!(d["reachable"], true, "{d:#}");
    assert!(d["waiting_for"].is_null(), "{d:#}");
    m.unmount();
    b.assert_restores("d", &want, "restored-again");
    let t = ok(&[
        "dest",
        "test",
        "d",
        "--json",
        "--pocket",
        b.pocket.p(),
        "--passphrase-file",
        b.pf(),
    ]);
    let t: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!(t["ok"], true, "{t:#}");
    let steps: Vec<&str> = t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "conditions",
            "credentials",
            "reach",
            "write",
            "read back",
            "delete",
            "vault"
        ]
    );
    if let Some(g) = &garage {
        drive_lost_rebuilt_from_s3(&b, g);
    }
}

/// The drive is lost and S3 holds the only backup: a new drive is made from the bucket with
/// the passphrase and the keys (as a user has them: in the environment), and it carries on
/// backing up there with the credentials the vault kept, sealed.
fn drive_lost_rebuilt_from_s3(b: &Backed, g: &Garage) {
    let mut env = g.env();
    env.push(("AWS_ENDPOINT_URL", g.endpoint()));
    env.push(("AWS_REGION", "garage".into()));
    // The sync inside gets no keys in its environment: the sealed ones came back with the
    // config.
    // Before rebuilding: the bucket can be tested by URL alone, from no pocket.
    let t = ok_out(&run_env(
        &["dest", "test", "s3://pockets/alice"],
        Some(Path::new("/")),
        &env,
    ));
    assert!(t.contains("holds the vault") && t.contains("works"), "{t}");
    let newdrive = b.rebuild_drive("s3://pockets/alice", &env);
    let again = b.pocket.tmp.path().join("again");
    ok(&[
        "restore",
        "--from",
        "d",
        "--to",
        again.to_str().unwrap(),
        "--pocket",
        newdrive.to_str().unwrap(),
        "--passphrase-file",
        b.pf(),
    ]);
    assert_eq!(
        std::fs::read(again.join("after-loss.txt")).unwrap(),
        b"new work on the new drive"
    );
}

#[test]
fn a_bandwidth_cap_holds_uploads_to_its_rate() {
    let b = Backed::new();
    let vault = b.pocket.tmp.path().join("vault");
    b.dest_url(
        "capped",
        vault.to_str().unwrap(),
        &["--bandwidth-limit", "2MiB/s"],
        &[],
    );
    // 24 MiB that neither compress nor deduplicate; the cap lets one 9 MiB burst through,
    // then 2 MiB a second: at least 7 s in all.
    std::fs::write(b.pocket.root.join("big"), pseudo_random(24 << 20, 9)).unwrap();
    let t = Instant::now();
    ok(&[
        "sync",
        "--pocket",
        b.pocket.p(),
        "--passphrase-file",
        b.pf(),
    ]);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(6),
        "24 MiB went up in {took:?} under a 2 MiB/s cap"
    );
}

#[test]
fn suite_on_a_local_folder() {
    require_root!();
    suite(Kind::Local);
}

#[test]
fn suite_on_sftp() {
    require_root!();
    suite(Kind::Sftp);
}

#[test]
fn suite_on_s3() {
    require_root!();
    require_garage!();
    suite(Kind::S3);
}

/// `dest add` and `dest test` output for a failure, with its exit status.
fn fails(args: &[&str], env: &[(&str, String)]) -> String {
    let out = run_env(args, None, env);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "should have failed: {text}");
    text
}

#[test]
fn failures_are_explained_in_words_a_user_can_act_on() {
    require_root!();
    let b = Backed::new();
    let tmp = b.pocket.tmp.path().to_owned();
    let key = ssh_client().key.to_str().unwrap().to_owned();
    let common_args = ["--pocket", b.pocket.p(), "--passphrase-file", b.pf()];
    let add = |name: &str, url: &str, extra: &[&str], env: &[(&str, String)]| {
        let mut a = vec!["dest", "add", name, url];
        a.extend_from_slice(extra);
        a.extend_from_slice(&common_args);
        fails(&a, env)
    };
    // A server whose host key is not the one known_hosts holds: never accepted silently.
    let impostor = Sshd::start("127.0.0.1", None, true);
    let e = add(
        "x",
        &impostor.url(&tmp.join("v")),
        &["--identity", &key],
        &[],
    );
    assert!(e.contains("host key"), "{e}");
    assert!(
        !tmp.join("v").exists(),
        "nothing was written to an unverified server"
    );
    drop(impostor);
    // A key the server does not accept.
    let sshd = Sshd::start("127.0.0.1", None, false);
    let other = tmp.join("other-key");
    keygen(&other, "");
    let e = add(
        "x",
        &sshd.url(&tmp.join("v")),
        &["--identity", other.to_str().unwrap()],
        &[],
    );
    assert!(e.contains("refused the login"), "{e}");
    // A passphrase-protected key cannot be used unattended: said at once.
    let locked = tmp.join("locked-key");
    keygen(&locked, "secret");
    let e = add(
        "x",
        &sshd.url(&tmp.join("v")),
        &["--identity", locked.to_str().unwrap()],
        &[],
    );
    assert!(e.contains("passphrase"), "{e}");
    // Added while the server runs; then the server goes away: `dest test` says so.
    b.dest_url(
        "office",
        &sshd.url(&tmp.join("v")),
        &["--identity", &key],
        &[],
    );
    drop(sshd);
    let mut a = vec!["dest", "test", "office"];
    a.extend_from_slice(&common_args);
    let e = fails(&a, &[]);
    assert!(
        e.contains("FAIL") && e.contains("refused the connection"),
        "{e}"
    );
    // S3: a wrong secret, a missing bucket, no credentials at all.
    if common::servers::have_garage() {
        let g = Garage::start("127.0.0.1", None);
        let s3 = ["--endpoint", &g.endpoint(), "--region", "garage"];
        let mut env = g.env();
        env[1].1 = "0".repeat(64);
        let e = add("y", "s3://pockets/a", &s3, &env);
        assert!(e.contains("secret key is wrong"), "{e}");
        let e = add("y", "s3://no-such-bucket/a", &s3, &g.env());
        assert!(e.contains("bucket does not exist"), "{e}");
        let e = add("y", "s3://pockets/a", &s3, &[]);
        assert!(e.contains("no S3 credentials"), "{e}");
    } else {
        eprintln!("SKIPPED the S3 part: garage is not on PATH");
    }
    // Usage mistakes are refused before anything is reached.
    let e = add("z", "s3://pockets/a", &["--when", "sometimes"], &[]);
    assert!(e.contains("network=CIDR"), "{e}");
    let e = add("z", "sftp://host/x", &["--mode", "mirror"], &[]);
    assert!(e.contains("mirror needs a local folder"), "{e}");
    let e = add("z", "ftp://host/x", &[], &[]);
    assert!(e.contains("sftp://"), "{e}");
}

fn dir_bytes(d: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![d.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                n += m.len();
            }
        }
    }
    n
}

/// Packs at the destination with their inode and mtime: a pack sent again would be a new
/// file under the same name.
fn packs(vault: &Path) -> Vec<(String, u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![vault.join("data")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.push((
                    e.file_name().to_string_lossy().into_owned(),
                    m.ino(),
                    m.mtime_nsec() + m.mtime() * 1_000_000_000,
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_office_network_goes_down_mid_drain_and_comes_back() {
    require_root!();
    let Some(office) = Office::new() else {
        eprintln!("SKIPPED the_office_network_goes_down_mid_drain_and_comes_back: network namespaces are not available here (ip netns add failed)");
        return;
    };
    let sshd = Sshd::start(&office.server_addr, Some(&office.ns), false);
    let b = Backed::new();
    let vault = b.pocket.tmp.path().join("office-vault");
    let key = ssh_client().key.to_str().unwrap().to_owned();
    let when = format!("network={}", office.net);
    b.dest_url(
        "office",
        &sshd.url(&vault),
        &[
            "--identity",
            &key,
            "--when",
            &when,
            "--bandwidth-limit",
            "12MiB/s",
        ],
        &[],
    );
    let m = b.mount();
    // Incompressible data, enough for several packs at the capped rate.
    let total: usize = 160 << 20;
    for i in 0..8 {
        std::fs::write(
            b.pocket.mnt.join(format!("f{i}")),
            pseudo_random(total / 8, 1000 + i as u64),
        )
        .unwrap();
    }
    // Wait for some packs to arrive, then pull the office network away.
    let deadline = Instant::now() + Duration::from_secs(60);
    while dir_bytes(&vault.join("data")) < 40 << 20 {
        assert!(Instant::now() < deadline, "nothing arrived: {}", m.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    office.link(false);
    let down_at = Instant::now();
    let waiting = loop {
        let s = b.pocket.status();
        let w = s["destinations"][0]["waiting_for"].clone();
        if w.is_string() {
            break w;
        }
        assert!(
            down_at.elapsed() < Duration::from_secs(5),
            "not paused within 5 s of the link going down: {s:#}\n{}",
            m.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(waiting, format!("network {}", office.net));
    let paused_after = down_at.elapsed();
    let arrived = packs(&vault);
    assert!(!arrived.is_empty());
    let bytes_at_cut = dir_bytes(&vault);
    // Paused: nothing more arrives while the link is down.
    std::thread::sleep(Duration::from_secs(3));
    let pending = b.pocket.status()["destinations"][0]["pending_records"].clone();
    assert!(
        pending.as_u64().unwrap() > 0,
        "drained before the cut; make the data larger"
    );
    let human = ok(&["journal", "status", "--pocket", b.pocket.p()]);
    assert!(
        human.contains(&format!("waiting for network {}", office.net)),
        "{human}"
    );
    office.link(true);
    let up_at = Instant::now();
    // Resumes within seconds of the link coming back: bytes flow to the server again (the
    // drain first reads again what it had packed, finding most of it held already).
    loop {
        let s = b.pocket.status();
        let d = &s["destinations"][0];
        if d["waiting_for"].is_null() && dir_bytes(&vault) > bytes_at_cut {
            break;
        }
        assert!(
            up_at.elapsed() < Duration::from_secs(15),
            "did not resume within 15 s: {s:#}\n{}",
            m.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let resumed_after = up_at.elapsed();
    b.wait_drained(&m, Duration::from_secs(120));
    // Nothing that had arrived was sent again.
    let after = packs(&vault);
    for p in &arrived {
        assert!(after.contains(p), "pack {} was sent again or lost", p.0);
    }
    let want = exact_tree(&b.pocket.mnt);
    m.unmount();
    let out = b.pocket.tmp.path().join("restored");
    ok_out(&b.restore("office", &out));
    assert_same_tree(&want, &exact_tree(&out));
    eprintln!(
        "paused {paused_after:?} after the link went down; resumed {resumed_after:?} after it came back; {} packs kept",
        arrived.len()
    );
    drop(sshd);
}

/// A pocket draining to S3 through `endpoint`, with `total` bytes of incompressible files
/// being written through the mount, capped so that the drain lasts a few seconds.
fn s3_pocket(g: &Garage, total: usize) -> (Backed, common::Mounted) {
    let b = Backed::new();
    b.dest_url(
        "s3",
        "s3://pockets/alice",
        &[
            "--endpoint",
            &g.endpoint(),
            "--region",
            "garage",
            "--bandwidth-limit",
            "10MiB/s",
        ],
        &g.env(),
    );
    let m = b.mount();
    for i in 0..4 {
        std::fs::write(
            b.pocket.mnt.join(format!("f{i}")),
            pseudo_random(total / 4, 500 + i as u64),
        )
        .unwrap();
    }
    (b, m)
}

fn pending(b: &Backed) -> u64 {
    b.pocket.status()["destinations"][0]["pending_records"]
        .as_u64()
        .unwrap()
}

fn restore_exactly(b: &Backed, m: common::Mounted) {
    let want = exact_tree(&b.pocket.mnt);
    m.unmount();
    b.assert_restores("s3", &want, "restored");
}

#[test]
fn a_garage_node_dies_mid_drain_and_the_cluster_carries_on() {
    require_root!();
    require_garage!();
    let mut g = Garage::cluster();
    let (b, m) = s3_pocket(&g, 60 << 20);
    std::thread::sleep(Duration::from_secs(2));
    // Not the node the client talks to: replication factor 3 keeps a quorum of two.
    g.kill_node(2);
    assert!(
        pending(&b) > 0,
        "drained before the node died; make the data larger"
    );
    b.wait_drained(&m, Duration::from_secs(120));
    restore_exactly(&b, m);
}

#[test]
fn the_s3_server_dies_mid_drain_and_comes_back() {
    require_root!();
    require_garage!();
    let mut g = Garage::start("127.0.0.1", None);
    let (b, m) = s3_pocket(&g, 60 << 20);
    std::thread::sleep(Duration::from_secs(2));
    g.kill_node(0);
    assert!(
        pending(&b) > 0,
        "drained before the server died; make the data larger"
    );
    // The failure is reported in words, while the data waits in the journal.
    let deadline = Instant::now() + Duration::from_secs(90);
    let err = loop {
        let s = b.pocket.status();
        if let Some(e) = s["destinations"][0]["last_error"].as_str() {
            break e.to_owned();
        }
        assert!(Instant::now() < deadline, "no failure reported: {s:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        err.contains("server") || err.contains("connection"),
        "not in words a user can act on: {err}"
    );
    g.restart_node(0);
    b.wait_drained(&m, Duration::from_secs(360));
    restore_exactly(&b, m);
}

#[test]
fn a_slow_destination_never_holds_back_another() {
    require_root!();
    let b = Backed::new();
    let tmp = b.pocket.tmp.path();
    b.dest_url(
        "slow",
        tmp.join("slow").to_str().unwrap(),
        &["--bandwidth-limit", "1MiB/s"],
        &[],
    );
    b.dest("fast", &tmp.join("fast"), "vault");
    let m = b.mount();
    // 32 MiB: the slow one needs over 20 s for it, the fast one a moment.
    std::fs::write(b.pocket.mnt.join("big"), pseudo_random(32 << 20, 21)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = b.pocket.status();
        let d = s["destinations"].as_array().unwrap();
        let pending = |name: &str, what: &str| {
            d.iter().find(|x| x["name"] == name).unwrap()[what]
                .as_u64()
                .unwrap()
        };
        // The slow one cannot be done within the deadline (9 MiB burst, then 1 MiB/s).
        if pending("fast", "pending_records") == 0 && pending("slow", "pending_bytes") >= 16 << 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fast destination waited for the slow one: {s:#}\n{}",
            m.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nor does it hold up the unmount: its transfer in flight is abandoned (the cursor stays,
    // so the next mount sends it again), not finished at 1 MiB/s.
    let t = Instant::now();
    m.unmount();
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "the unmount waited {:?} for the slow destination",
        t.elapsed()
    );
}
