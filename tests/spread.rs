//! A vault spread 2 of 3 over a local folder, an SFTP server and an S3 store (servers the
//! tests start themselves): restored exactly with each member gone in turn, a member away
//! while the pocket is worked in caught up when it is back, no member holding a run of a
//! file's bytes, shards flipped and deleted found by `verify` and rebuilt by `--repair`, and
//! bad groups refused with words a user can act on. A vault spread 2 of 4 over a folder, the
//! servers and a slow stick, restored with each pair gone after the stick was cut off
//! mid-write and replaced by another disk; a member
//! whose `--when` does not hold left waiting while the others take every change.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::backed::{ok_out, pseudo_random, workload, Backed};
use common::servers::{ssh_client, Garage, Sshd};
use common::{exact_tree, ok, run};

fn group_status(b: &Backed) -> serde_json::Value {
    let s = b.pocket.status();
    s["destinations"][0]["group"].clone()
}

/// Waits until status says every member holds everything, so the group survives the loss of
/// any `spare`.
fn wait_members_whole(b: &Backed, m: &common::Mounted, spare: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let g = group_status(b);
        if g["members"]
            .as_array()
            .is_some_and(|a| a.iter().all(|m| m["holds_everything"] == true))
        {
            assert_eq!(g["survives_losses"], spare, "{g:#}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the members never caught up: {g:#}\n{}",
            m.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every file under `dir`, read whole.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn fails(args: &[&str]) -> String {
    let out = run(args, None);
    assert!(!out.status.success(), "should have failed: {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_vault_spread_over_a_folder_sftp_and_s3_restores_from_any_two() {
    let b = Backed::new();
    let tmp = b.pocket.tmp.path().to_owned();
    let home = tmp.join("home-disk");
    std::fs::create_dir(&home).unwrap();
    let mut sshd = Sshd::start("127.0.0.1", None, false);
    let mut garage = Garage::start("127.0.0.1", None);
    let office_dir = tmp.join("office");
    b.dest("home", &home, "vault");
    let key = ssh_client().key.to_str().unwrap().to_owned();
    b.dest_url("office", &sshd.url(&office_dir), &["--identity", &key], &[]);
    b.dest_url(
        "bucket",
        "s3://pockets/spread",
        &["--endpoint", &garage.endpoint(), "--region", "garage"],
        &garage.env(),
    );
    let pocket = b.pocket.p().to_owned();
    let add = |k: &str, members: &[&str]| {
        let mut a = vec!["dest", "add-group", "spread", "--k", k];
        a.extend_from_slice(members);
        a.extend_from_slice(&["--pocket", &pocket, "--passphrase-file", b.pf()]);
        run(&a, None)
    };
    // Bad groups first: nothing changes.
    let e = String::from_utf8_lossy(&add("4", &["home", "office", "bucket"]).stderr).into_owned();
    assert!(e.contains("--k from 1 to their number"), "{e}");
    let e = String::from_utf8_lossy(&add("2", &["home", "nowhere"]).stderr).into_owned();
    assert!(e.contains("no destination named nowhere"), "{e}");
    let e = String::from_utf8_lossy(&add("1", &["home", "home"]).stderr).into_owned();
    assert!(e.contains("named twice"), "{e}");
    let out = add("2", &["home", "office", "bucket"]);
    let said = ok_out(&out);
    assert!(said.contains("survives the loss of any 1"), "{said}");
    let list = ok(&["dest", "list", "--pocket", &pocket]);
    assert!(
        list.contains("group  any 2 of 3: home, office, bucket"),
        "{list}"
    );

    // Work, with a known file no member may hold a run of.
    let known = pseudo_random(400_000, 1234);
    let m = b.mount();
    workload(&b.pocket.mnt);
    std::fs::write(b.pocket.mnt.join("known.bin"), &known).unwrap();
    b.wait_drained(&m, Duration::from_secs(120));
    wait_members_whole(&b, &m, 1);
    let local_members = [home.join("spread"), office_dir.join("spread")];
    for dir in &local_members {
        let objects = files_under(dir);
        assert!(objects
            .iter()
            .any(|(p, _)| p.to_string_lossy().contains("/data/")));
        for (p, bytes) in objects {
            // 32 bytes of the file in a row anywhere would be a piece of it readable there.
            for w in known.chunks(4096) {
                assert!(
                    !bytes.windows(32).any(|x| x == &w[..32]),
                    "{} holds bytes of the file",
                    p.display()
                );
            }
        }
    }

    // The office server goes away while work goes on: 2 of 3 still take every change.
    sshd.kill();
    std::fs::write(
        b.pocket.mnt.join("while-office-away.txt"),
        b"written at home",
    )
    .unwrap();
    std::fs::write(b.pocket.mnt.join("big-away"), pseudo_random(2_500_000, 9)).unwrap();
    b.wait_drained(&m, Duration::from_secs(120));
    let g = group_status(&b);
    let office = &g["members"][1];
    assert_eq!(office["name"], "office", "{g:#}");
    assert_eq!(office["holds_everything"], false, "{g:#}");
    assert_eq!(g["survives_losses"], 0, "{g:#}");
    let text = ok(&["journal", "status", "--pocket", &pocket]);
    assert!(text.contains("survives NO member loss"), "{text}");
    // Back: the next drain brings it what it missed, from the others.
    sshd.start_again();
    std::fs::write(b.pocket.mnt.join("office-back.txt"), b"and again").unwrap();
    b.wait_drained(&m, Duration::from_secs(120));
    wait_members_whole(&b, &m, 1);
    let want = exact_tree(&b.pocket.mnt);
    m.unmount();
    b.assert_restores("spread", &want, "all-three");

    // Each member gone in turn: any two restore everything, what office missed included.
    let hidden = tmp.join("home-disk-unplugged");
    std::fs::rename(&home, &hidden).unwrap();
    b.assert_restores("spread", &want, "without-home");
    std::fs::rename(&hidden, &home).unwrap();
    sshd.kill();
    b.assert_restores("spread", &want, "without-office");
    sshd.start_again();
    garage.kill_node(0);
    b.assert_restores("spread", &want, "without-bucket");
    // Two gone: refused, with a reason, never a wrong file.
    std::fs::rename(&home, &hidden).unwrap();
    let out = b.restore("spread", &tmp.join("without-two"));
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("members") && e.contains("2 are needed"), "{e}");
    std::fs::rename(&hidden, &home).unwrap();
    garage.restart_node(0);

    // Damage at one member: a flipped byte in a shard, a deleted index copy. Restore reads
    // around it; verify names both; --repair rebuilds them from the others.
    let objects = files_under(&home.join("spread"));
    let (shard, _) = objects
        .iter()
        .filter(|(p, _)| p.to_string_lossy().contains("/data/"))
        .max_by_key(|(_, b)| b.len())
        .unwrap();
    let mut bytes = std::fs::read(shard).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(shard, bytes).unwrap();
    let (index, _) = objects
        .iter()
        .find(|(p, _)| p.to_string_lossy().contains("/index/"))
        .unwrap();
    std::fs::remove_file(index).unwrap();
    let out = b.restore("spread", &tmp.join("around-damage"));
    ok_out(&out);
    common::assert_same_tree(&want, &exact_tree(&tmp.join("around-damage")));
    let v = run(
        &[
            "verify",
            "spread",
            "--read-data",
            "--json",
            "--pocket",
            &pocket,
            "--passphrase-file",
            b.pf(),
        ],
        None,
    );
    assert_eq!(v.status.code(), Some(5), "damage must fail verify");
    let v: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    let home_check = &v["members"][0];
    assert_eq!(home_check["member"], "home", "{v:#}");
    let lacking: Vec<String> = home_check["lacking"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    let rel = |p: &Path| {
        p.strip_prefix(home.join("spread"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    assert!(lacking.contains(&rel(shard)), "{v:#}");
    assert!(lacking.contains(&rel(index)), "{v:#}");
    assert!(
        v["members"][1]["lacking"].as_array().unwrap().is_empty(),
        "{v:#}"
    );
    let r = ok(&[
        "verify",
        "spread",
        "--repair",
        "--pocket",
        &pocket,
        "--passphrase-file",
        b.pf(),
    ]);
    assert!(
        r.contains("rebuilt 2 objects at the group's members"),
        "{r}"
    );
    let again = r.split("verifying again:").nth(1).unwrap_or_default();
    assert!(
        again.contains("no damage found") && !again.contains("MEMBER"),
        "{r}"
    );
    // Whole again: home and bucket alone restore it.
    sshd.kill();
    b.assert_restores("spread", &want, "after-repair");
}

#[test]
fn a_member_cannot_leave_a_group_by_accident_and_a_mirror_cannot_join() {
    let b = Backed::new();
    let tmp = b.pocket.tmp.path().to_owned();
    b.dest("a", &tmp.join("a"), "vault");
    b.dest("m", &tmp.join("m"), "mirror");
    let e = fails(&[
        "dest",
        "add-group",
        "g",
        "--k",
        "1",
        "a",
        "m",
        "--pocket",
        b.pocket.p(),
        "--passphrase-file",
        b.pf(),
    ]);
    assert!(e.contains("m is a mirror"), "{e}");
    // Nothing changed: both are still destinations of their own.
    let list = ok(&["dest", "list", "--pocket", b.pocket.p()]);
    assert!(list.contains("a ") && list.contains("m "), "{list}");
}

/// `dest add-group spread --k K MEMBERS...`: what it said.
fn add_group(b: &Backed, k: &str, members: &[&str]) -> String {
    let mut a = vec!["dest", "add-group", "spread", "--k", k];
    a.extend_from_slice(members);
    a.extend_from_slice(&["--pocket", b.pocket.p(), "--passphrase-file", b.pf()]);
    ok(&a)
}

/// Moves a member's folder away (a disk unplugged, or broken) and back.
fn gone(dir: &Path) {
    std::fs::rename(dir, dir.with_extension("away")).unwrap();
}

fn back(dir: &Path) {
    std::fs::rename(dir.with_extension("away"), dir).unwrap();
}

#[test]
fn two_of_four_outlives_a_member_cut_mid_write_is_repaired_by_replace_and_any_pair_gone() {
    let b = Backed::new();
    let tmp = b.pocket.tmp.path().to_owned();
    let pocket = b.pocket.p().to_owned();
    let mut sshd = Sshd::start("127.0.0.1", None, false);
    let mut garage = Garage::start("127.0.0.1", None);
    let home = tmp.join("home-disk");
    let stick = tmp.join("usb-stick");
    let spare = tmp.join("spare-disk");
    b.dest("home", &home, "vault");
    let key = ssh_client().key.to_str().unwrap().to_owned();
    b.dest_url(
        "office",
        &sshd.url(&tmp.join("office")),
        &["--identity", &key],
        &[],
    );
    b.dest_url(
        "bucket",
        "s3://pockets/spread4",
        &["--endpoint", &garage.endpoint(), "--region", "garage"],
        &garage.env(),
    );
    // A slow stick (USB 1): a big file's shard is still being written when it goes.
    b.dest_url(
        "stick",
        stick.to_str().unwrap(),
        &["--bandwidth-limit", "1MiB/s"],
        &[],
    );
    add_group(&b, "2", &["home", "office", "bucket", "stick"]);
    let m = b.mount();
    workload(&b.pocket.mnt);
    b.wait_drained(&m, Duration::from_secs(120));
    wait_members_whole(&b, &m, 2);
    std::fs::write(b.pocket.mnt.join("big.bin"), pseudo_random(8 << 20, 77)).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    gone(&stick);
    std::fs::write(b.pocket.mnt.join("after-stick.txt"), b"the stick is gone").unwrap();
    // Three members take every change.
    b.wait_drained(&m, Duration::from_secs(120));
    let g = group_status(&b);
    assert_eq!(g["members"][3]["holds_everything"], false, "{g:#}");
    assert_eq!(g["survives_losses"], 1, "{g:#}");

    // The stick broke for good: a spare disk takes its place, its share rebuilt from the
    // others while the pocket stays mounted.
    let e = fails(&[
        "dest", "replace", "spread", "x", "spare", "--pocket", &pocket,
    ]);
    assert!(
        e.contains("x is not a member of spread (its members: home, office, bucket, stick)"),
        "{e}"
    );
    let e = fails(&[
        "dest", "replace", "spread", "stick", "spare", "--pocket", &pocket,
    ]);
    assert!(
        e.contains("no destination named spare: add it first"),
        "{e}"
    );
    b.dest("spare", &spare, "vault");
    // A folder holding something else would be spread as if it were the group's: refused.
    std::fs::create_dir_all(spare.join("spread")).unwrap();
    std::fs::write(spare.join("spread/index-of-something"), b"other").unwrap();
    let replace = [
        "dest",
        "replace",
        "spread",
        "stick",
        "spare",
        "--pocket",
        &pocket,
        "--passphrase-file",
        b.pf(),
    ];
    let e = fails(&replace);
    assert!(e.contains("is not empty and holds no share of it"), "{e}");
    std::fs::remove_file(spare.join("spread/index-of-something")).unwrap();
    let said = ok(&replace);
    assert!(
        said.contains("spare holds its share: any 2 of 4 restore spread again"),
        "{said}"
    );
    let list = ok(&["dest", "list", "--pocket", &pocket]);
    assert!(
        list.contains("any 2 of 4: home, office, bucket, spare"),
        "{list}"
    );
    std::fs::write(b.pocket.mnt.join("after-spare.txt"), b"the spare is in").unwrap();
    b.wait_drained(&m, Duration::from_secs(120));
    wait_members_whole(&b, &m, 2);
    let want = exact_tree(&b.pocket.mnt);
    m.unmount();
    // The stick comes back (found in a drawer): no member any more, nothing touches it.
    back(&stick);
    let stick_before = files_under(&stick);

    // Any two of the four gone: the other two restore everything.
    let mut down = |i: usize, up: bool| match (i, up) {
        (0, false) => gone(&home),
        (0, true) => back(&home),
        (1, false) => sshd.kill(),
        (1, true) => sshd.start_again(),
        (2, false) => garage.kill_node(0),
        (2, true) => garage.restart_node(0),
        (_, false) => gone(&spare),
        (_, true) => back(&spare),
    };
    for i in 0..4 {
        for j in i + 1..4 {
            down(i, false);
            down(j, false);
            let out = tmp.join(format!("without-{i}-{j}"));
            ok_out(&b.restore("spread", &out));
            common::assert_same_tree(&want, &exact_tree(&out));
            std::fs::remove_dir_all(&out).unwrap();
            down(i, true);
            down(j, true);
        }
    }
    // Three gone: refused, never a wrong file.
    for i in 0..3 {
        down(i, false);
    }
    let out = b.restore("spread", &tmp.join("without-three"));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("2 are needed"), "{e}");
    for i in 0..3 {
        down(i, true);
    }
    assert_eq!(files_under(&stick).len(), stick_before.len());
    b.assert_restores("spread", &want, "all-four");
}

#[test]
fn a_member_waits_for_its_when_while_the_others_take_every_change() {
    let b = Backed::new();
    let tmp = b.pocket.tmp.path().to_owned();
    let pocket = b.pocket.p().to_owned();
    b.dest("x", &tmp.join("x"), "vault");
    b.dest("y", &tmp.join("y"), "vault");
    // The office share, used only on the office network (TEST-NET-3, a documentation range:
    // never here).
    b.dest_url(
        "office",
        tmp.join("office").to_str().unwrap(),
        &["--when", "network=203.0.113.0/24"],
        &[],
    );
    add_group(&b, "2", &["x", "y", "office"]);
    let m = b.mount();
    workload(&b.pocket.mnt);
    b.wait_drained(&m, Duration::from_secs(120));
    let g = group_status(&b);
    let office = &g["members"][2];
    assert_eq!(office["waiting_for"], "network 203.0.113.0/24", "{g:#}");
    assert_eq!(office["holds_everything"], false, "{g:#}");
    assert_eq!(g["survives_losses"], 0, "{g:#}");
    let text = ok(&["journal", "status", "--pocket", &pocket]);
    assert!(
        text.contains("office       waiting for network 203.0.113.0/24 (its --when)"),
        "{text}"
    );
    // Nothing went there, not even the group's config.
    assert!(!tmp.join("office/spread/config").exists());
    // Its condition holds (here: the condition is taken away, as a hand edit does; the mount
    // follows its config): it gets the group, and everything it missed, from the others.
    let config = b.pocket.root.join(".backpocket/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let edited = text.replace("when = [\"network=203.0.113.0/24\"]\n", "");
    assert_ne!(text, edited);
    std::fs::write(&config, edited).unwrap();
    std::fs::write(b.pocket.mnt.join("at-the-office.txt"), b"now").unwrap();
    b.wait_drained(&m, Duration::from_secs(120));
    wait_members_whole(&b, &m, 1);
    let want = exact_tree(&b.pocket.mnt);
    m.unmount();
    std::fs::rename(tmp.join("x"), tmp.join("x-away")).unwrap();
    b.assert_restores("spread", &want, "from-y-and-office");
}

#[test]
fn a_member_added_re_spreads_the_group_and_keeps_its_history() {
    let b = Backed::new();
    let tmp = b.pocket.tmp.path().to_owned();
    let pocket = b.pocket.p().to_owned();
    let dirs: Vec<_> = ["x", "y", "z", "w"].iter().map(|n| tmp.join(n)).collect();
    for d in &dirs {
        b.dest(d.file_name().unwrap().to_str().unwrap(), d, "vault");
    }
    add_group(&b, "2", &["x", "y", "z"]);
    let add = [
        "dest",
        "add-member",
        "spread",
        "w",
        "--pocket",
        &pocket,
        "--passphrase-file",
        b.pf(),
    ];
    let m = b.mount();
    workload(&b.pocket.mnt);
    std::fs::write(b.pocket.mnt.join("letter.txt"), b"first version").unwrap();
    b.wait_drained(&m, Duration::from_secs(120));
    std::fs::write(b.pocket.mnt.join("letter.txt"), b"second version, longer").unwrap();
    b.wait_drained(&m, Duration::from_secs(120));
    // The mount writes to the group: a re-spread would race it.
    let e = fails(&add);
    assert!(
        e.contains("the mount is backing up to spread right now"),
        "{e}"
    );
    let want = exact_tree(&b.pocket.mnt);
    m.unmount();

    // Too few of the new shape's members there (3 needed; w's disk and y unplugged): the
    // copy stops, nothing changes, and the same command (or another shape) starts over.
    let add_k3 = [&add[..], &["--k", "3"]].concat();
    std::fs::rename(&dirs[1], tmp.join("y-away")).unwrap();
    std::fs::rename(&dirs[3], tmp.join("w-away")).unwrap();
    let e = fails(&add_k3);
    assert!(
        e.contains("nothing changed") && e.contains("run the same command again to start it over"),
        "{e}"
    );
    let list = ok(&["dest", "list", "--pocket", &pocket]);
    assert!(list.contains("any 2 of 3: x, y, z"), "{list}");
    std::fs::rename(tmp.join("y-away"), &dirs[1]).unwrap();
    b.assert_restores("spread", &want, "still-the-old-shape");
    std::fs::rename(tmp.join("w-away"), &dirs[3]).unwrap();

    let said = ok(&add);
    assert!(
        said.contains("spread lives in spread.2 now") && said.contains("any 2 of 4 restore it"),
        "{said}"
    );
    for d in &dirs[..3] {
        assert!(!d.join("spread").exists(), "{said}");
    }
    for d in &dirs {
        assert!(d.join("spread.2/config").is_file(), "{said}");
    }
    let list = ok(&["dest", "list", "--pocket", &pocket]);
    assert!(list.contains("any 2 of 4: x, y, z, w"), "{list}");
    // History kept: both versions, asked of the vault afresh.
    std::fs::remove_dir_all(b.pocket.root.join(".backpocket/cache")).ok();
    let log = run(
        &[
            "log",
            "letter.txt",
            "--from",
            "spread",
            "--json",
            "--pocket",
            &pocket,
            "--passphrase-file",
            b.pf(),
        ],
        None,
    );
    let log: serde_json::Value = serde_json::from_slice(&ok_out(&log).into_bytes()).unwrap();
    let sizes: Vec<u64> = log[0]["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("{log:#}"))
        .iter()
        .filter_map(|v| v["size"].as_u64())
        .collect();
    assert!(sizes.contains(&13) && sizes.contains(&22), "{log:#}");
    // The drive lost: the group by its members' folders alone (any order, any two), its
    // shape read from the shards.
    let out = tmp.join("by-url");
    let urls = format!(
        "group:{},{}",
        dirs[3].join("spread.2").display(),
        dirs[1].join("spread.2").display()
    );
    let r = run(
        &[
            "restore",
            "--from",
            &urls,
            "--to",
            out.to_str().unwrap(),
            "--passphrase-file",
            b.pf(),
        ],
        None,
    );
    ok_out(&r);
    common::assert_same_tree(&want, &exact_tree(&out));
    let urls = format!("group:{}", dirs[3].join("spread.2").display());
    let r = run(
        &[
            "restore",
            "--from",
            &urls,
            "--to",
            tmp.join("by-one-url").to_str().unwrap(),
            "--passphrase-file",
            b.pf(),
        ],
        None,
    );
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && e.contains("2 are needed"), "{e}");
    // Any two restore it, the new member among them; later drains go to the new shape.
    std::fs::rename(&dirs[0], tmp.join("x-away")).unwrap();
    std::fs::rename(&dirs[1], tmp.join("y-away")).unwrap();
    b.assert_restores("spread", &want, "from-z-and-w");
    std::fs::rename(tmp.join("x-away"), &dirs[0]).unwrap();
    std::fs::rename(tmp.join("y-away"), &dirs[1]).unwrap();
    let m = b.mount();
    std::fs::write(b.pocket.mnt.join("after.txt"), b"in the new shape").unwrap();
    b.wait_drained(&m, Duration::from_secs(120));
    wait_members_whole(&b, &m, 2);
    let want = exact_tree(&b.pocket.mnt);
    m.unmount();
    b.assert_restores("spread", &want, "after");
}
