//! Several devices on one vault: a second pocket joins the first one's vault, both are
//! mounted at once, and the changes made in either appear in the other; edits made on both
//! at once keep both versions (one as a Syncthing-style conflict copy, the same on both
//! sides), a change wins over a removal, a removed device can no longer write, and a wrong
//! passphrase cannot join.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::backed::{ok_out, Backed};
use common::{exact_tree, ok, run, Mounted, Pocket};

/// The second device: a pocket joined to `vault`, named `name`.
fn join(first: &Backed, vault: &Path, name: &str) -> Pocket {
    let tmp = tempfile::Builder::new()
        .prefix("bp-device")
        .tempdir()
        .unwrap();
    let p = Pocket::inside(tmp);
    std::fs::remove_dir(&p.root).unwrap();
    ok_out(&run(
        &[
            "init",
            p.p(),
            "--join",
            vault.to_str().unwrap(),
            "--name",
            name,
            "--passphrase-file",
            first.pf(),
        ],
        None,
    ));
    p
}

/// Waits until `f` holds, showing both daemons' logs if it never does.
fn eventually(what: &str, m: &[&Mounted], f: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > Duration::from_secs(60) {
            let logs: Vec<String> = m.iter().map(|m| m.log()).collect();
            panic!("{what}: not within 60 s\n{}", logs.join("\n----\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

fn read(p: &Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}

/// The conflict copies of `name` in `dir`.
fn copies(dir: &Path, stem: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{stem}.sync-conflict-"))
        })
        .collect();
    v.sort();
    v
}

/// What the user sees in a mount, without backpocket's own folder.
fn visible(dir: &Path) -> std::collections::BTreeMap<Vec<u8>, String> {
    let mut t = exact_tree(dir);
    t.retain(|k, _| !k.starts_with(b".backpocket"));
    // Times of folders differ between devices (each made its own); contents, modes and names
    // are what must agree.
    for v in t.values_mut() {
        if let Some(i) = v.find(" mtime=") {
            let end = v[i + 1..].find(' ').map_or(v.len(), |j| i + 1 + j);
            v.replace_range(i..end, "");
        }
    }
    t
}

#[test]
fn two_devices_mounted_at_once_take_each_others_changes_and_lose_nothing() {
    let a = Backed::new();
    let vault = a.pocket.tmp.path().join("vault");
    std::fs::create_dir(&vault).unwrap();
    a.dest("home", &vault, "vault");
    std::fs::write(a.pocket.root.join("report.txt"), b"first draft\n").unwrap();
    std::fs::create_dir(a.pocket.root.join("photos")).unwrap();
    std::fs::write(a.pocket.root.join("photos/cat.jpg"), vec![7u8; 300_000]).unwrap();
    let ma = a.mount();
    a.wait_drained(&ma, Duration::from_secs(60));

    // A wrong passphrase cannot join.
    let bad = a.pocket.tmp.path().join("bad-pass");
    std::fs::write(&bad, "not the passphrase\n").unwrap();
    let intruder = a.pocket.tmp.path().join("intruder");
    let out = run(
        &[
            "init",
            intruder.to_str().unwrap(),
            "--join",
            vault.to_str().unwrap(),
            "--passphrase-file",
            bad.to_str().unwrap(),
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!intruder.join(".backpocket").exists());

    let b = join(&a, &vault, "laptop");
    assert_eq!(
        read(&b.root.join("report.txt")).unwrap(),
        b"first draft\n",
        "the joined pocket starts with the vault's files"
    );
    let bb = Backed {
        pocket: b,
        pass: a.pass.clone(),
    };
    let mb = bb.mount();
    let (am, bm) = (a.pocket.mnt.clone(), bb.pocket.mnt.clone());

    // A change on either side appears on the other.
    std::fs::write(am.join("from-drive.txt"), b"written on the drive").unwrap();
    let took = eventually(
        "a new file on the drive reaches the laptop",
        &[&ma, &mb],
        || read(&bm.join("from-drive.txt")).as_deref() == Some(b"written on the drive"),
    );
    eprintln!("drive -> laptop: {took:?}");
    std::fs::write(bm.join("report.txt"), b"second draft, from the laptop\n").unwrap();
    std::fs::create_dir(bm.join("notes")).unwrap();
    std::fs::write(bm.join("notes/todo.md"), b"- call the office\n").unwrap();
    eventually("the laptop's edit reaches the drive", &[&ma, &mb], || {
        read(&am.join("report.txt")).as_deref() == Some(b"second draft, from the laptop\n")
            && read(&am.join("notes/todo.md")).as_deref() == Some(b"- call the office\n")
    });
    std::fs::remove_file(am.join("photos/cat.jpg")).unwrap();
    eventually("a removal reaches the laptop", &[&ma, &mb], || {
        !bm.join("photos/cat.jpg").exists()
    });

    // Both edit one file at once: both versions are kept, the same way on both sides.
    std::fs::write(am.join("report.txt"), b"third draft, drive\n").unwrap();
    std::fs::write(bm.join("report.txt"), b"third draft, laptop\n").unwrap();
    // One removes a file the other edits: the edit wins.
    std::fs::write(
        am.join("notes/todo.md"),
        b"- call the office\n- and the bank\n",
    )
    .unwrap();
    std::fs::remove_file(bm.join("notes/todo.md")).unwrap();
    let show = |d: &Path| -> String {
        let mut out = String::new();
        for (k, v) in visible(d) {
            let p = d.join(String::from_utf8_lossy(&k).as_ref());
            let c = if p.is_file() {
                String::from_utf8_lossy(&read(&p).unwrap_or_default()).into_owned()
            } else {
                String::new()
            };
            out += &format!("{} {v} {c:?}\n", String::from_utf8_lossy(&k));
        }
        out
    };
    let agreed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually("both sides agree after the conflict", &[&ma, &mb], || {
            let (ca, cb) = (copies(&am, "report"), copies(&bm, "report"));
            ca.len() == 1
                && cb.len() == 1
                && ca[0].file_name() == cb[0].file_name()
                && read(&am.join("report.txt")) == read(&bm.join("report.txt"))
                && read(&ca[0]) == read(&cb[0])
                && read(&bm.join("notes/todo.md")).as_deref()
                    == Some(b"- call the office\n- and the bank\n")
        })
    }));
    if agreed.is_err() {
        panic!("drive:\n{}\nlaptop:\n{}", show(&am), show(&bm));
    }
    let ca = copies(&am, "report");
    let mut versions = vec![read(&am.join("report.txt")).unwrap(), read(&ca[0]).unwrap()];
    versions.sort();
    assert_eq!(
        versions,
        vec![
            b"third draft, drive\n".to_vec(),
            b"third draft, laptop\n".to_vec()
        ],
        "both versions survive, one at the name and one as the copy"
    );
    let copy_name = ca[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        copy_name.ends_with("-laptop.txt") || copy_name.contains(".sync-conflict-2"),
        "{copy_name}"
    );

    // Then both pockets hold the same tree (and stay so).
    a.wait_drained(&ma, Duration::from_secs(60));
    bb.wait_drained(&mb, Duration::from_secs(60));
    eventually("both mounts hold the same files", &[&ma, &mb], || {
        visible(&am) == visible(&bm)
    });

    // `devices` lists both, online, and the conflict.
    let list = ok(&[
        "devices",
        "--json",
        "--pocket",
        a.pocket.p(),
        "--passphrase-file",
        a.pf(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let devs = v["devices"].as_array().unwrap();
    assert_eq!(devs.len(), 2, "{v:#}");
    let laptop = devs.iter().find(|d| d["name"] == "laptop").unwrap();
    assert_eq!(laptop["online"], true, "{v:#}");
    assert_eq!(devs.iter().filter(|d| d["this"] == true).count(), 1);
    assert!(
        !v["conflicts"].as_array().unwrap().is_empty()
            || !ok(&[
                "devices",
                "--json",
                "--pocket",
                bb.pocket.p(),
                "--passphrase-file",
                a.pf()
            ])
            .contains("\"conflicts\": []"),
        "one side noted the conflict: {v:#}"
    );

    // The laptop is removed: its drains are refused, the drive's go on.
    let said = ok(&[
        "devices",
        "remove",
        "laptop",
        "--pocket",
        a.pocket.p(),
        "--passphrase-file",
        a.pf(),
    ]);
    assert!(said.contains("can no longer back up"), "{said}");
    std::fs::write(bm.join("after-removal.txt"), b"x").unwrap();
    eventually(
        "the removed laptop's destination says why",
        &[&ma, &mb],
        || {
            bb.pocket
                .status()
                .to_string()
                .contains("removed from the vault")
        },
    );
    std::fs::write(am.join("still-backed-up.txt"), b"y").unwrap();
    a.wait_drained(&ma, Duration::from_secs(60));
    assert!(!am.join("after-removal.txt").exists());
    mb.unmount();
    ma.unmount();
}
