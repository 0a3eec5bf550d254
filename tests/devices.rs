//! Several devices on one vault: a second pocket joins the first one's vault, both are
//! mounted at once, and the changes made in either appear in the other; edits made on both
//! at once keep both versions (one as a Syncthing-style conflict copy, the same on both
//! sides), a change wins over a removal, a removed device can no longer write, and a wrong
//! passphrase cannot join.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::backed::{ok_out, Backed};
use common::{ok, run, Mounted, Pocket};

/// Mounts `b` polling the vault only every 300 s: what arrives sooner came by push, and the
/// order of the devices' rounds is the test's.
fn mount_slow(b: &Backed) -> Mounted {
    Mounted::start_with(
        &b.pocket.root,
        &b.pocket.mnt,
        &["--passphrase-file", b.pf()],
        &["env".to_owned(), "BACKPOCKET_PULL_POLL_SECS=300".to_owned()],
    )
}

/// The first pocket (the drive), with a vault `home` in a folder beside it.
fn drive_with_vault() -> (Backed, PathBuf) {
    let a = Backed::new();
    let vault = a.pocket.tmp.path().join("vault");
    std::fs::create_dir(&vault).unwrap();
    a.dest("home", &vault, "vault");
    (a, vault)
}

/// The second device: a pocket joined to `vault`, named `name`, with the first's passphrase.
fn join(first: &Backed, vault: &Path, name: &str) -> Backed {
    join_url(first, vault.to_str().unwrap(), name, &[])
}

/// A device joined to the vault at `url` (with `env` for a remote one).
fn join_url(first: &Backed, url: &str, name: &str, env: &[(&str, String)]) -> Backed {
    let tmp = tempfile::Builder::new()
        .prefix("bp-device")
        .tempdir()
        .unwrap();
    let p = Pocket::inside(tmp);
    std::fs::remove_dir(&p.root).unwrap();
    ok_out(&common::run_env(
        &[
            "init",
            p.p(),
            "--join",
            url,
            "--name",
            name,
            "--passphrase-file",
            first.pf(),
        ],
        None,
        env,
    ));
    Backed {
        pocket: p,
        pass: first.pass.clone(),
    }
}

/// Waits until `f` holds, showing both daemons' logs if it never does.
fn eventually(what: &str, m: &[&Mounted], f: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > Duration::from_secs(120) {
            let logs: Vec<String> = m.iter().map(|m| m.log()).collect();
            panic!("{what}: not within 120 s\n{}", logs.join("\n----\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

fn read(p: &Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}

/// A mount's files with their contents, for a failure's message.
fn show(d: &Path) -> String {
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
}

/// Waits until both mounts show the same files for 10 s in a row.
fn settle(what: &str, ma: &Mounted, mb: &Mounted, am: &Path, bm: &Path) {
    let same_since: std::cell::RefCell<Option<Instant>> = Default::default();
    let agreed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually(what, &[ma, mb], || {
            if visible(am) == visible(bm) {
                let t = *same_since.borrow_mut().get_or_insert_with(Instant::now);
                t.elapsed() > Duration::from_secs(10)
            } else {
                *same_since.borrow_mut() = None;
                false
            }
        })
    }));
    if agreed.is_err() {
        panic!("{what}: drive:\n{}\nlaptop:\n{}", show(am), show(bm));
    }
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

/// Both mounts edited `report.txt` at once: waits until each holds one conflict copy, the same
/// on both sides, with `also` holding too; then both versions are there, one at the name and
/// one as the copy. Returns the copy's path in the first mount.
fn both_versions_kept(
    (ma, mb): (&Mounted, &Mounted),
    (am, bm): (&Path, &Path),
    versions: [&[u8]; 2],
    also: &dyn Fn() -> bool,
) -> PathBuf {
    let agreed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually("both sides agree after the conflict", &[ma, mb], || {
            let (ca, cb) = (copies(am, "report"), copies(bm, "report"));
            ca.len() == 1
                && cb.len() == 1
                && ca[0].file_name() == cb[0].file_name()
                && read(&am.join("report.txt")) == read(&bm.join("report.txt"))
                && read(&ca[0]) == read(&cb[0])
                && also()
        })
    }));
    if agreed.is_err() {
        panic!("drive:\n{}\nlaptop:\n{}", show(am), show(bm));
    }
    let ca = copies(am, "report");
    let mut got = vec![read(&am.join("report.txt")).unwrap(), read(&ca[0]).unwrap()];
    got.sort();
    let mut want: Vec<Vec<u8>> = versions.iter().map(|v| v.to_vec()).collect();
    want.sort();
    assert_eq!(
        got, want,
        "both versions survive, one at the name and one as the copy"
    );
    ca[0].clone()
}

/// What the user sees in a mount (names, kinds, modes, contents), without backpocket's own
/// folder. Read while the other device's changes may arrive: an entry that goes away while
/// it is looked at is left out (the next look sees the tree as it then is).
fn visible(dir: &Path) -> std::collections::BTreeMap<Vec<u8>, String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().as_os_str().as_bytes().to_vec();
            if rel == b".backpocket" {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let line = if m.is_dir() {
                stack.push(p.clone());
                format!("dir mode={:o}", m.mode())
            } else if m.is_file() {
                let Some(data) = read(&p) else { continue };
                format!(
                    "file mode={:o} size={} blake3={}",
                    m.mode(),
                    data.len(),
                    blake3::hash(&data).to_hex()
                )
            } else {
                format!("other mode={:o}", m.mode())
            };
            out.insert(rel, line);
        }
    }
    out
}

#[test]
fn two_devices_mounted_at_once_take_each_others_changes_and_lose_nothing() {
    let (a, vault) = drive_with_vault();
    // A mirror of the drive's own: not the laptop's to write.
    a.dest("desk", &a.pocket.tmp.path().join("desk-mirror"), "mirror");
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

    let bb = join(&a, &vault, "laptop");
    assert_eq!(
        read(&bb.pocket.root.join("report.txt")).unwrap(),
        b"first draft\n",
        "the joined pocket starts with the vault's files"
    );
    let dests = ok(&["dest", "list", "--pocket", bb.pocket.p()]);
    assert!(
        dests.contains("home") && !dests.contains("desk"),
        "the laptop drains to the shared vault only, not to the drive's mirror: {dests}"
    );
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
    let copy = both_versions_kept(
        (&ma, &mb),
        (&am, &bm),
        [b"third draft, drive\n", b"third draft, laptop\n"],
        &|| {
            read(&bm.join("notes/todo.md")).as_deref()
                == Some(b"- call the office\n- and the bank\n")
        },
    );
    let copy_name = copy.file_name().unwrap().to_string_lossy().into_owned();
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

    // `journal status` shows them too, from what the mount last saw (no vault reached).
    let st = a.pocket.status();
    let devs = st["devices"]["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("{st:#}"));
    assert!(
        devs.iter()
            .any(|d| d["name"] == "laptop" && d["online"] == true),
        "{st:#}"
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
    // The laptop's drains look at its record every 30 s: the next one after that is refused.
    std::fs::write(bm.join("while-being-removed.txt"), b"x").unwrap();
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
    // From then on nothing it does reaches the vault or the drive.
    std::fs::write(bm.join("after-removal.txt"), b"x").unwrap();
    std::fs::write(am.join("still-backed-up.txt"), b"y").unwrap();
    a.wait_drained(&ma, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(5));
    assert!(!am.join("after-removal.txt").exists());
    assert!(bb
        .pocket
        .status()
        .to_string()
        .contains("removed from the vault"));
    mb.unmount();
    ma.unmount();
}

/// One device's random work in its mount: writes (new contents each time, named so that
/// every version is known), removals and renames among a few names in a few folders.
struct Worker {
    mnt: PathBuf,
    side: &'static str,
    /// The last contents this side left at each path it wrote (forgotten when this side
    /// removes or renames the path away): every one must survive, at its name or in a copy.
    left: std::collections::BTreeMap<String, Vec<u8>>,
}

const NAMES: [&str; 8] = [
    "a.txt",
    "b.txt",
    "c.md",
    "docs/d.txt",
    "docs/e.txt",
    "docs/deep/f.txt",
    "g",
    "docs/h.odt",
];

impl Worker {
    fn step(&mut self, rng: &mut common::Rng, n: u64) {
        let name = *rng.pick(&NAMES).unwrap();
        let p = self.mnt.join(name);
        match rng.below(10) {
            0..=5 => {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                let data =
                    format!("{} version {n}\n", self.side).repeat(1 + rng.below(40) as usize);
                std::fs::write(&p, &data).unwrap();
                self.left.insert(name.to_owned(), data.into_bytes());
            }
            6..=7 => {
                if std::fs::remove_file(&p).is_ok() {
                    self.left.remove(name);
                }
            }
            _ => {
                let to = *rng.pick(&NAMES).unwrap();
                let q = self.mnt.join(to);
                if to != name && p.is_file() && !q.exists() && q.parent().unwrap().is_dir() {
                    std::fs::rename(&p, &q).unwrap();
                    if let Some(d) = self.left.remove(name) {
                        self.left.insert(to.to_owned(), d);
                    }
                }
            }
        }
    }
}

/// Every file's contents in a mount.
fn all_contents(dir: &Path) -> std::collections::BTreeSet<Vec<u8>> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.file_name().unwrap() == ".backpocket" {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if let Some(c) = read(&p) {
                out.insert(c);
            }
        }
    }
    out
}

/// Both devices work while linked, then with the link between them cut (the vault they share
/// taken away), then linked again: afterwards both pockets are equal and every version either
/// side left while cut off is there, at its name or as a conflict copy.
#[test]
fn concurrent_work_on_two_devices_cut_apart_and_joined_again_loses_nothing() {
    let seed = common::seed_from_env("BACKPOCKET_DEVICES_SEED");
    eprintln!("seed {seed} (again with BACKPOCKET_DEVICES_SEED={seed})");
    let mut rng = common::Rng(seed);
    let (a, vault) = drive_with_vault();
    std::fs::write(a.pocket.root.join("a.txt"), b"to begin with\n").unwrap();
    let ma = a.mount();
    a.wait_drained(&ma, Duration::from_secs(60));
    let b = join(&a, &vault, "laptop");
    let mb = b.mount();
    let mut wa = Worker {
        mnt: a.pocket.mnt.clone(),
        side: "drive",
        left: Default::default(),
    };
    let mut wb = Worker {
        mnt: b.pocket.mnt.clone(),
        side: "laptop",
        left: Default::default(),
    };
    // Linked: each side's work reaches the other.
    for n in 0..30 {
        let w = if rng.chance(0.5) { &mut wa } else { &mut wb };
        w.step(&mut rng, n);
        std::thread::sleep(Duration::from_millis(rng.below(150)));
    }
    settle(
        "both pockets agree while linked",
        &ma,
        &mb,
        &a.pocket.mnt,
        &b.pocket.mnt,
    );

    // Cut: the vault is gone for both; both keep working.
    let away = a.pocket.tmp.path().join("vault-away");
    std::fs::rename(&vault, &away).unwrap();
    wa.left.clear();
    wb.left.clear();
    for n in 100..160 {
        let w = if rng.chance(0.5) { &mut wa } else { &mut wb };
        w.step(&mut rng, n);
    }
    std::thread::sleep(Duration::from_secs(2));
    std::fs::rename(&away, &vault).unwrap();
    // A folder moved back is no mount event: the next change each side makes has its
    // destination tried again at once.
    std::fs::write(wa.mnt.join("back-on-the-drive.txt"), b"linked again").unwrap();
    std::fs::write(wb.mnt.join("back-on-the-laptop.txt"), b"linked again").unwrap();
    settle(
        "both pockets agree once linked again",
        &ma,
        &mb,
        &a.pocket.mnt,
        &b.pocket.mnt,
    );

    let have = all_contents(&a.pocket.mnt);
    for (side, left) in [("drive", &wa.left), ("laptop", &wb.left)] {
        for (path, data) in left {
            assert!(
                have.contains(data),
                "seed {seed}: the {side}'s last version of {path} ({:?}) was lost",
                String::from_utf8_lossy(&data[..data.len().min(40)])
            );
        }
    }
    mb.unmount();
    ma.unmount();
}

/// Two devices on a vault on an SFTP server (the sshd the tests start). The laptop joins with
/// the key it has for the server (its own ssh, as a user's `~/.ssh` would give it); from then
/// on both mounts reach the server with the identity the drive's config sealed. Changes go
/// each way, and a removal too.
#[test]
fn two_devices_share_a_vault_on_an_sftp_server() {
    use common::servers::{ssh_client, Sshd};
    let sshd = Sshd::start("127.0.0.1", None, false);
    let client = ssh_client();
    let a = Backed::new();
    let url = sshd.url(&a.pocket.tmp.path().join("vault"));
    let key = client.key.to_str().unwrap().to_owned();
    a.dest_url("office", &url, &["--identity", &key], &[]);
    std::fs::write(a.pocket.root.join("plan.txt"), b"the plan\n").unwrap();
    let ma = a.mount();
    a.wait_drained(&ma, Duration::from_secs(60));
    // The laptop's own ssh knows the key (the tests' ssh is given none by default).
    let own_ssh = a.pocket.tmp.path().join("laptop-ssh");
    std::fs::create_dir(&own_ssh).unwrap();
    let wrapper = own_ssh.join("ssh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec /usr/bin/ssh -F {} -i {key} \"$@\"\n",
            client.dir.join("ssh_config").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", own_ssh.display(), client.path);
    let laptop = join_url(&a, &url, "laptop", &[("PATH", path)]);
    assert_eq!(
        read(&laptop.pocket.root.join("plan.txt")).unwrap(),
        b"the plan\n"
    );
    let ml = laptop.mount();
    let (am, lm) = (a.pocket.mnt.clone(), laptop.pocket.mnt.clone());
    std::fs::write(lm.join("from-laptop.txt"), b"lap").unwrap();
    eventually("the laptop's file reaches the drive", &[&ma, &ml], || {
        read(&am.join("from-laptop.txt")).as_deref() == Some(&b"lap"[..])
    });
    std::fs::write(am.join("plan.txt"), b"the plan, revised\n").unwrap();
    eventually("the drive's edit reaches the laptop", &[&ma, &ml], || {
        read(&lm.join("plan.txt")).as_deref() == Some(&b"the plan, revised\n"[..])
    });
    std::fs::remove_file(am.join("from-laptop.txt")).unwrap();
    eventually(
        "the drive's removal reaches the laptop",
        &[&ma, &ml],
        || !lm.join("from-laptop.txt").exists(),
    );
    ml.unmount();
    ma.unmount();
}

/// Three devices on a vault in an S3 bucket (the Garage server the tests start): each
/// device's change reaches the two others, and all three list each other.
#[test]
fn three_devices_share_a_vault_in_an_s3_bucket() {
    let garage = common::servers::Garage::start("127.0.0.1", None);
    let a = Backed::new();
    let url = "s3://pockets/devices";
    a.dest_url(
        "bucket",
        url,
        &["--endpoint", &garage.endpoint(), "--region", "garage"],
        &garage.env(),
    );
    std::fs::write(a.pocket.root.join("plan.txt"), b"the plan\n").unwrap();
    let ma = a.mount();
    a.wait_drained(&ma, Duration::from_secs(60));
    let mut env = garage.env();
    env.push(("AWS_ENDPOINT_URL", garage.endpoint()));
    env.push(("AWS_REGION", "garage".into()));
    let laptop = join_url(&a, url, "laptop", &env);
    let desktop = join_url(&a, url, "desktop", &env);
    assert_eq!(
        read(&desktop.pocket.root.join("plan.txt")).unwrap(),
        b"the plan\n"
    );
    // The joined pockets reach the bucket with the credentials the first one sealed.
    let (ml, md) = (laptop.mount(), desktop.mount());
    let mnts = [&a.pocket.mnt, &laptop.pocket.mnt, &desktop.pocket.mnt];
    std::fs::write(desktop.pocket.mnt.join("from-desktop.txt"), b"desk").unwrap();
    eventually(
        "the desktop's file reaches the drive and the laptop",
        &[&ma, &ml, &md],
        || {
            mnts.iter()
                .all(|m| read(&m.join("from-desktop.txt")).as_deref() == Some(&b"desk"[..]))
        },
    );
    std::fs::write(a.pocket.mnt.join("plan.txt"), b"the plan, revised\n").unwrap();
    eventually("the drive's edit reaches both", &[&ma, &ml, &md], || {
        mnts.iter()
            .all(|m| read(&m.join("plan.txt")).as_deref() == Some(&b"the plan, revised\n"[..]))
    });
    std::fs::remove_file(laptop.pocket.mnt.join("from-desktop.txt")).unwrap();
    eventually(
        "the laptop's removal reaches both",
        &[&ma, &ml, &md],
        || mnts.iter().all(|m| !m.join("from-desktop.txt").exists()),
    );
    let list = ok(&[
        "devices",
        "--json",
        "--pocket",
        desktop.pocket.p(),
        "--passphrase-file",
        a.pf(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let mut names: Vec<&str> = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["desktop", "drive", "laptop"], "{v:#}");
    md.unmount();
    ml.unmount();
    ma.unmount();
}

/// Push through a real XMPP server (Prosody, started here on loopback with TLS): with the
/// vault polled only every 5 minutes, a change still reaches the other device within seconds,
/// both ways; a device that dies is seen offline at once (its presence in the vault would say
/// online for 90 s more); a wrong password is refused when set; and with the server gone the
/// mounts still end promptly. Without a server the other tests here show polling alone.
#[test]
fn an_xmpp_server_brings_changes_at_once_and_says_who_is_online() {
    let mut xmpp = common::servers::Prosody::start();
    let (a, vault) = drive_with_vault();
    let push = |p: &Pocket, password: &str| {
        common::run_env(
            &[
                "devices",
                "push",
                &xmpp.account,
                "--server",
                &xmpp.server(),
                "--pocket",
                p.p(),
                "--passphrase-file",
                a.pf(),
            ],
            None,
            &[("BACKPOCKET_XMPP_PASSWORD", password.to_owned())],
        )
    };
    let out = push(&a.pocket, "not the password");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("refused"), "{err}");
    assert!(
        !std::fs::read_to_string(a.pocket.root.join(".backpocket/config.toml"))
            .unwrap()
            .contains("[push]")
    );
    ok_out(&push(&a.pocket, &xmpp.password));
    let config = std::fs::read_to_string(a.pocket.root.join(".backpocket/config.toml")).unwrap();
    assert!(config.contains("[push]"), "{config}");
    assert!(
        !config.contains(&xmpp.password),
        "the password is sealed: {config}"
    );

    std::fs::write(a.pocket.root.join("plan.txt"), b"the plan\n").unwrap();
    let ma = mount_slow(&a);
    a.wait_drained(&ma, Duration::from_secs(60));
    // The laptop joins after: the account comes with the config.
    let bb = join(&a, &vault, "laptop");
    let mb = mount_slow(&bb);
    let (am, bm) = (a.pocket.mnt.clone(), bb.pocket.mnt.clone());
    // Polling every 300 s would take minutes: within 60 s is push at work.
    fn in_time(
        what: &str,
        m: &[&Mounted],
        xmpp: &common::servers::Prosody,
        f: &dyn Fn() -> bool,
    ) -> Duration {
        let start = Instant::now();
        while !f() {
            if start.elapsed() > Duration::from_secs(60) {
                let logs: Vec<String> = m.iter().map(|m| m.log()).collect();
                panic!(
                    "{what}: not within 60 s (the vault is polled every 300 s)\n{}\n----\nprosody:\n{}",
                    logs.join("\n----\n"),
                    xmpp.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }
    // Both connected (each says so in its log) before the first change.
    in_time("both devices log in", &[&ma, &mb], &xmpp, &|| {
        ma.log().contains("push: connected") && mb.log().contains("push: connected")
    });
    for (from, to, name, data, what) in [
        (
            &am,
            &bm,
            "pushed.txt",
            &b"from the drive"[..],
            "drive -> laptop",
        ),
        (
            &bm,
            &am,
            "plan.txt",
            &b"the plan, from the laptop\n"[..],
            "laptop -> drive",
        ),
    ] {
        std::fs::write(from.join(name), data).unwrap();
        let took = in_time(
            &format!("{what}: the change arrives"),
            &[&ma, &mb],
            &xmpp,
            &|| read(&to.join(name)).as_deref() == Some(data),
        );
        eprintln!("{what} with push: {took:?}");
    }

    // The laptop dies: the server tells the drive at once.
    let online = |want: bool| {
        let st = a.pocket.status();
        st["devices"]["devices"].as_array().is_some_and(|d| {
            d.iter()
                .any(|d| d["name"] == "laptop" && d["online"] == want)
        })
    };
    in_time(
        "the drive sees the laptop online",
        &[&ma, &mb],
        &xmpp,
        &|| online(true),
    );
    mb.kill9();
    // The dead daemon's mount goes with the test.
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&bm)
        .status();
    let took = in_time(
        "the drive sees the laptop go offline",
        &[&ma],
        &xmpp,
        &|| online(false),
    );
    eprintln!("offline seen after {took:?}");

    // The server goes away: the drive's mount still ends promptly.
    xmpp.stop();
    std::fs::write(am.join("after.txt"), b"server away").unwrap();
    let t = Instant::now();
    ma.unmount();
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "unmount took {:?} with the XMPP server away",
        t.elapsed()
    );
}

/// The laptop's clock is three hours behind the drive's (its mount runs under libfaketime):
/// the drive still sees it online (by its presence changing, not by the time it writes) and
/// says how far off its clock is; both edit one file at once and both versions survive, the
/// same way on both sides.
#[test]
fn clocks_hours_apart_lose_nothing_and_are_reported() {
    let (a, vault) = drive_with_vault();
    std::fs::write(a.pocket.root.join("report.txt"), b"first draft\n").unwrap();
    let ma = a.mount();
    a.wait_drained(&ma, Duration::from_secs(60));
    let bb = join(&a, &vault, "laptop");
    let behind = common::clock_3h_behind();
    let mb = Mounted::start_with(
        &bb.pocket.root,
        &bb.pocket.mnt,
        &["--passphrase-file", bb.pf()],
        &behind,
    );
    let (am, bm) = (a.pocket.mnt.clone(), bb.pocket.mnt.clone());
    let laptop = |st: &serde_json::Value| -> Option<serde_json::Value> {
        st["devices"]["devices"]
            .as_array()?
            .iter()
            .find(|d| d["name"] == "laptop")
            .cloned()
    };
    // Seen changing within two of its presence periods (30 s each) and a listing.
    eventually(
        "the drive sees the laptop online, 3 h off",
        &[&ma, &mb],
        || {
            laptop(&a.pocket.status()).is_some_and(|d| {
                d["online"] == true
                    && d["clock_ahead_secs"]
                        .as_i64()
                        .is_some_and(|s| (s + 3 * 3600).abs() < 120)
            })
        },
    );
    assert!(
        ma.log()
            .contains("the clock of device laptop is about 3h behind"),
        "{}",
        ma.log()
    );
    // Both edit one file at once: both versions are kept, the same way on both sides.
    std::fs::write(am.join("report.txt"), b"second draft, drive\n").unwrap();
    std::fs::write(bm.join("report.txt"), b"second draft, laptop\n").unwrap();
    both_versions_kept(
        (&ma, &mb),
        (&am, &bm),
        [b"second draft, drive\n", b"second draft, laptop\n"],
        &|| true,
    );
    mb.unmount();
    ma.unmount();
}

/// The laptop renames a file while the drive edits it: the edit follows the rename, on both
/// sides, with no copy. The order is made certain: both change while neither polls (every
/// 300 s), then the drive mounts alone and takes the rename, then the laptop takes the result.
#[test]
fn a_rename_against_an_edit_keeps_the_edit_at_the_new_name() {
    let (a, vault) = drive_with_vault();
    std::fs::write(a.pocket.root.join("draft.txt"), b"first draft\n").unwrap();
    let ma = mount_slow(&a);
    a.wait_drained(&ma, Duration::from_secs(60));
    let bb = join(&a, &vault, "laptop");
    let mb = mount_slow(&bb);
    let (am, bm) = (a.pocket.mnt.clone(), bb.pocket.mnt.clone());
    // Both have looked at the other once (the drive notices the join within 10 s).
    eventually("the drive has met the laptop", &[&ma, &mb], || {
        !a.pocket.status()["devices"].is_null() && !bb.pocket.status()["devices"].is_null()
    });
    std::fs::rename(bm.join("draft.txt"), bm.join("final.txt")).unwrap();
    std::fs::write(am.join("draft.txt"), b"second draft, edited on the drive\n").unwrap();
    a.wait_drained(&ma, Duration::from_secs(60));
    bb.wait_drained(&mb, Duration::from_secs(60));
    mb.unmount();
    ma.unmount();

    let ma = a.mount();
    eventually(
        "the drive's edit follows the laptop's rename",
        &[&ma],
        || {
            read(&am.join("final.txt")).as_deref()
                == Some(&b"second draft, edited on the drive\n"[..])
                && !am.join("draft.txt").exists()
        },
    );
    a.wait_drained(&ma, Duration::from_secs(60));
    let mb = bb.mount();
    settle("both agree after the rename", &ma, &mb, &am, &bm);
    assert_eq!(
        read(&bm.join("final.txt")).unwrap(),
        b"second draft, edited on the drive\n"
    );
    assert!(!bm.join("draft.txt").exists());
    assert!(
        copies(&am, "final").is_empty() && copies(&am, "draft").is_empty(),
        "{}",
        show(&am)
    );
    mb.unmount();
    ma.unmount();
}

/// Waits until `p`'s mount has taken everything `device` wrote: a listing made in a later second than `since`
/// (RFC 3339) that says it is 0 log objects behind.
fn taken_all_of(p: &Backed, m: &Mounted, device: &str, since: &str) {
    eventually(&format!("{device}'s log taken"), &[m], || {
        let s = p.pocket.status();
        let d = &s["devices"];
        d["as_of"].as_str().is_some_and(|t| t > since)
            && d["devices"].as_array().is_some_and(|v| {
                v.iter()
                    .any(|x| x["name"] == device && x["behind_log_objects"] == 0)
            })
    });
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The laptop takes the drive's new file and so writes it into its own log too; before the
/// drive sees that, it edits the file. What the laptop carried back is behind the drive's
/// edit, not beside it: no conflict copy, on either side. Then `log` says which device made
/// each version, `journal status` which change was last taken from whom, and `restore
/// --device` gives back the laptop's own history.
#[test]
fn versions_carried_back_by_the_other_device_are_behind_not_beside() {
    let (a, vault) = drive_with_vault();
    std::fs::write(a.pocket.root.join("readme.txt"), b"shared\n").unwrap();
    let ma = a.mount();
    a.wait_drained(&ma, Duration::from_secs(60));
    let bb = join(&a, &vault, "laptop");
    let (am, bm) = (a.pocket.mnt.clone(), bb.pocket.mnt.clone());
    let mb = bb.mount();
    bb.wait_drained(&mb, Duration::from_secs(60));
    taken_all_of(&a, &ma, "laptop", &now_rfc3339());

    // New on the drive; the drive goes away before the laptop carries them back.
    std::fs::write(am.join("notes.txt"), b"notes, first version\n").unwrap();
    a.wait_drained(&ma, Duration::from_secs(60));
    ma.unmount();
    eventually("the laptop takes the drive's files", &[&mb], || {
        read(&bm.join("notes.txt")).as_deref() == Some(&b"notes, first version\n"[..])
    });
    bb.wait_drained(&mb, Duration::from_secs(60));
    mb.unmount();

    // Meanwhile, on the drive alone: an edit.
    std::fs::write(a.pocket.root.join("notes.txt"), b"notes, second version\n").unwrap();
    let since = now_rfc3339();
    let ma = a.mount();
    taken_all_of(&a, &ma, "laptop", &since);
    assert_eq!(
        read(&am.join("notes.txt")).unwrap(),
        b"notes, second version\n"
    );
    assert!(copies(&am, "notes").is_empty(), "{}", show(&am));
    a.wait_drained(&ma, Duration::from_secs(60));

    let mb = bb.mount();
    settle("both agree", &ma, &mb, &am, &bm);
    assert!(copies(&bm, "notes").is_empty(), "{}", show(&bm));
    assert_eq!(
        read(&bm.join("notes.txt")).unwrap(),
        b"notes, second version\n"
    );

    // The laptop edits and the drive takes it: on either side `log` names the device that
    // made each version, whichever chain it is read from.
    let third = b"notes, third version, from the laptop\n";
    std::fs::write(bm.join("notes.txt"), third).unwrap();
    eventually("the drive takes the laptop's edit", &[&ma, &mb], || {
        read(&am.join("notes.txt")).as_deref() == Some(&third[..])
    });
    // `journal status` says who changed what last.
    eventually(
        "the drive's status names the laptop's change",
        &[&ma],
        || {
            let s = a.pocket.status();
            s["devices"]["devices"].as_array().is_some_and(|v| {
                v.iter().any(|d| {
                    d["name"] == "laptop"
                        && d["last_change"]["path"] == "notes.txt"
                        && d["last_change"]["removed"] == false
                })
            })
        },
    );
    let status = ok(&["journal", "status", "--pocket", a.pocket.p()]);
    assert!(
        status.contains("last took its change: changed notes.txt"),
        "{status}"
    );
    bb.wait_drained(&mb, Duration::from_secs(60));
    a.wait_drained(&ma, Duration::from_secs(60));
    let log_of = |p: &Backed| -> serde_json::Value {
        let log = ok(&[
            "log",
            "notes.txt",
            "--pocket",
            p.pocket.p(),
            "--passphrase-file",
            p.pf(),
            "--json",
        ]);
        serde_json::from_str(&log).unwrap()
    };
    // (A drain that lands between the creation of a file and its first write keeps an empty
    // version too: a true point of the history, left out here.)
    let made_by = |p: &Backed| -> Vec<(u64, String, bool)> {
        let log = log_of(p);
        log[0]["versions"]
            .as_array()
            .unwrap_or_else(|| panic!("{log:#}"))
            .iter()
            .filter(|v| v["size"] != 0)
            .map(|v| {
                let by = v["device"].as_str().unwrap().to_owned();
                (v["size"].as_u64().unwrap(), by, v["here"] == true)
            })
            .collect()
    };
    let here = |size: usize, n: &str| (size as u64, n.to_owned(), true);
    let want = vec![
        here(b"notes, first version\n".len(), "drive"),
        here(b"notes, second version\n".len(), "drive"),
        here(third.len(), "laptop"),
    ];
    assert_eq!(made_by(&a), want, "the drive's log: {:#}", log_of(&a));
    assert_eq!(made_by(&bb), want, "the laptop's log: {:#}", log_of(&bb));

    // From the drive's pocket, the laptop's own history, named as such.
    let to = a.pocket.tmp.path().join("laptop-restored");
    let restored = ok(&[
        "restore",
        "--from",
        "home",
        "--to",
        to.to_str().unwrap(),
        "--device",
        "laptop",
        "--pocket",
        a.pocket.p(),
        "--passphrase-file",
        a.pf(),
        "--json",
    ]);
    let restored: serde_json::Value = serde_json::from_str(&restored).unwrap();
    assert_eq!(restored["device"], "laptop", "{restored:#}");
    assert_eq!(read(&to.join("notes.txt")).unwrap(), third);
    let wrong = run(
        &[
            "restore",
            "--from",
            "home",
            "--to",
            a.pocket.tmp.path().join("nobody").to_str().unwrap(),
            "--device",
            "nobody",
            "--pocket",
            a.pocket.p(),
            "--passphrase-file",
            a.pf(),
        ],
        None,
    );
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(2), "{said}");
    assert!(
        said.contains("no device nobody") && said.contains("laptop"),
        "{said}"
    );
    mb.unmount();
    ma.unmount();
}

/// A device that joins the vault by another address than the first pocket's (here a link to
/// the folder, as a share mounted elsewhere) gets a destination of its own for it, which
/// drains; the first pocket's entry is not copied.
#[test]
fn a_device_joined_by_another_address_drains_to_it() {
    let (a, vault) = drive_with_vault();
    std::fs::write(a.pocket.root.join("report.txt"), b"first draft\n").unwrap();
    ok(&[
        "sync",
        "--pocket",
        a.pocket.p(),
        "--passphrase-file",
        a.pf(),
    ]);
    let elsewhere = a.pocket.tmp.path().join("share");
    std::os::unix::fs::symlink(&vault, &elsewhere).unwrap();
    let bb = join(&a, &elsewhere, "laptop");
    let dests = ok(&["dest", "list", "--pocket", bb.pocket.p()]);
    assert!(
        dests.contains("vault")
            && dests.contains(elsewhere.to_str().unwrap())
            && !dests.contains("home"),
        "{dests}"
    );
    std::fs::write(bb.pocket.root.join("notes.txt"), b"from the laptop\n").unwrap();
    let out = ok(&[
        "sync",
        "--pocket",
        bb.pocket.p(),
        "--passphrase-file",
        bb.pf(),
    ]);
    assert!(out.contains("up to date"), "{out}");
}

/// A drive and a laptop mounted, the laptop caught writing the drive's new large file into
/// its mount (the pull's temporary file is there, the file not yet). Returns the file's bytes.
fn caught_taking_a_big_file() -> (Backed, Mounted, Backed, Mounted, Vec<u8>) {
    let (a, vault) = drive_with_vault();
    let ma = a.mount();
    a.wait_drained(&ma, Duration::from_secs(60));
    let bb = join(&a, &vault, "laptop");
    let bm = bb.pocket.mnt.clone();
    let mb = bb.mount();
    bb.wait_drained(&mb, Duration::from_secs(60));
    // Large and not compressible: the laptop takes a while to write it.
    let mut big = vec![0u8; 192 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for c in big.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    std::fs::write(a.pocket.mnt.join("big.bin"), &big).unwrap();
    a.wait_drained(&ma, Duration::from_secs(120));
    let start = Instant::now();
    let writing = loop {
        let names: Vec<String> = std::fs::read_dir(&bm)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if names.iter().any(|n| n.starts_with(".backpocket-pull-")) {
            break true;
        }
        if names.iter().any(|n| n == "big.bin") || start.elapsed() > Duration::from_secs(120) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(writing, "the pull was never seen writing: {}", mb.log());
    (a, ma, bb, mb, big)
}

/// `unmount` while the pull is writing another device's large file into the mount: the
/// daemon's own open file is not the user's, so the unmount waits for it instead of refusing
/// the user ("in use") and leaving the mount up.
#[test]
fn unmount_waits_for_the_pull_instead_of_refusing() {
    let (_a, ma, _bb, mb, _) = caught_taking_a_big_file();
    mb.unmount();
    ma.unmount();
}

/// kill -9 of a daemon while its pull writes into the mount: the daemon dies at once (the pull
/// is a process of its own; a daemon waiting on its own mount could never exit), and the next
/// mount takes the file whole, with no temporary file left in sight.
#[test]
fn a_daemon_killed_while_its_pull_writes_dies_and_the_next_mount_takes_the_file() {
    let (_a, ma, bb, mb, big) = caught_taking_a_big_file();
    let bm = bb.pocket.mnt.clone();
    assert!(
        !mb.kill9(),
        "the daemon hung on its own mount after kill -9"
    );
    let mb = bb.mount();
    eventually("the laptop takes the file after the crash", &[&mb], || {
        std::fs::metadata(bm.join("big.bin")).is_ok_and(|m| m.len() == big.len() as u64)
    });
    assert!(read(&bm.join("big.bin")).unwrap() == big, "big.bin differs");
    let temps: Vec<String> = std::fs::read_dir(&bm)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".backpocket-pull-"))
        .collect();
    assert!(temps.is_empty(), "{temps:?}: {}", mb.log());
    mb.unmount();
    ma.unmount();
}
