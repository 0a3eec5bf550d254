//! Backup nobody has to think about, end to end: the service installed, a drive plugged in
//! (a loop device, through the same entry points the udev rule's unit and the user unit run),
//! mounted without any other command, ejected with a verdict, pulled; warnings when protection
//! is at risk; the live view during a drain; completions and man pages.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::backed::{ok_out, pseudo_random, Backed};
use common::{is_mounted, ok, run, run_env};

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("bp-test")
        .tempdir()
        .unwrap()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mounted_from(dev: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dev = dev.to_str().unwrap();
    info.lines()
        .any(|l| l.split(" - ").nth(1).and_then(|r| r.split(' ').nth(1)) == Some(dev))
}

/// A drive: an ext4 image on a loop device. Dropped: whatever is still mounted from it is
/// detached and the loop device freed.
struct Drive {
    dev: PathBuf,
}

impl Drive {
    fn new(dir: &Path) -> Drive {
        let img = dir.join("drive.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .status()
            .expect("mkfs.ext4 (e2fsprogs)");
        assert!(st.success());
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&img)
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Drive {
            dev: PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()),
        }
    }

    fn name(&self) -> &str {
        self.dev.file_name().unwrap().to_str().unwrap()
    }
}

impl Drop for Drive {
    fn drop(&mut self) {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for l in info.lines() {
            let fields: Vec<&str> = l.split(' ').collect();
            if l.contains(&format!(" - ext4 {} ", self.dev.display())) {
                let _ = Command::new("umount").arg("-l").arg(fields[4]).status();
            }
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A unit's command line for `key` (ExecStart, ExecStop), with systemd's specifiers filled in.
fn unit_command(unit: &Path, key: &str, specifiers: &[(&str, &str)]) -> Vec<String> {
    let text = std::fs::read_to_string(unit).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{} has no {key}: {text}", unit.display()));
    let mut line = line.to_owned();
    for (spec, value) in specifiers {
        line = line.replace(spec, value);
    }
    line.split_whitespace().map(str::to_owned).collect()
}

fn run_unit_command(cmd: &[String], env: &[(&str, &Path)]) -> std::process::Output {
    Command::new(&cmd[0])
        .args(&cmd[1..])
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .env("BACKPOCKET_LOG", "warn")
        .output()
        .unwrap()
}

/// The watcher the user unit starts; killed and its mounts detached if the test fails.
struct Watcher {
    child: Option<Child>,
    log: PathBuf,
    mountpoint: PathBuf,
}

impl Watcher {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it as systemd does (SIGTERM); it unmounts what it mounted.
    fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&child),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        child.wait().unwrap()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

#[test]
fn the_installed_service_mounts_a_plugged_in_pocket_and_eject_releases_the_drive() {
    require_root!();
    let t = tmp();
    let home = t.path().join("home");
    let config = t.path().join("config");
    let root = t.path().join("root");
    let pocket_at = t.path().join("Pocket");
    let dest = t.path().join("dest");
    std::fs::create_dir_all(&home).unwrap();
    let user_env = [
        ("HOME", home.to_str().unwrap().to_owned()),
        ("XDG_CONFIG_HOME", config.to_str().unwrap().to_owned()),
    ];

    // Once per machine: the user part, then the system part (staged under `root`, the way a
    // package stages it, so that the test machine's /etc stays as it was).
    let out = run_env(
        &[
            "service",
            "install",
            "--mountpoint",
            pocket_at.to_str().unwrap(),
        ],
        None,
        &user_env,
    );
    let said = ok_out(&out);
    let user_unit = config.join("systemd/user/backpocket.service");
    assert!(
        said.contains(&format!("wrote {}", user_unit.display())),
        "{said}"
    );
    let install_system = || {
        run_env(
            &[
                "service",
                "install",
                "--system",
                "--root",
                root.to_str().unwrap(),
            ],
            None,
            &user_env,
        )
    };
    let said = ok_out(&install_system());
    let attach_unit = root.join("etc/systemd/system/backpocket-attach@.service");
    let rule = root.join("etc/udev/rules.d/90-backpocket.rules");
    for f in [&attach_unit, &rule] {
        assert!(said.contains(&format!("wrote {}", f.display())), "{said}");
    }
    assert!(std::fs::read_to_string(&rule)
        .unwrap()
        .contains("ENV{SYSTEMD_WANTS}+=\"backpocket-attach@%k.service\""));

    // A drive with a pocket on it, made elsewhere.
    let drive = Drive::new(t.path());
    let setup = t.path().join("setup");
    std::fs::create_dir_all(&setup).unwrap();
    assert!(Command::new("mount")
        .arg(&drive.dev)
        .arg(&setup)
        .status()
        .unwrap()
        .success());
    let pocket = setup.join("work");
    ok(&["init", pocket.to_str().unwrap()]);
    std::fs::write(pocket.join("notes.txt"), b"written at home\n").unwrap();
    ok(&[
        "dest",
        "add",
        "home",
        dest.to_str().unwrap(),
        "--mode",
        "mirror",
        "--pocket",
        pocket.to_str().unwrap(),
    ]);
    assert!(Command::new("umount")
        .arg(&setup)
        .status()
        .unwrap()
        .success());

    // The user's session starts the watcher, exactly as the unit says.
    let watch_cmd = unit_command(&user_unit, "ExecStart", &[("%h", home.to_str().unwrap())]);
    assert_eq!(watch_cmd[1..4], ["service", "run", "--mountpoint"]);
    let log = t.path().join("watcher.log");
    let child = Command::new(&watch_cmd[0])
        .args(&watch_cmd[1..])
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", &config)
        .env("BACKPOCKET_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let watcher = Watcher {
        child: Some(child),
        log,
        mountpoint: pocket_at.clone(),
    };

    // Plug it in: udev starts backpocket-attach@loopN.service, which runs its ExecStart.
    let plug = unit_command(&attach_unit, "ExecStart", &[("%I", drive.name())]);
    let stop_cmd = unit_command(&attach_unit, "ExecStop", &[("%I", drive.name())]);
    let out = run_unit_command(&plug, &[]);
    let said = ok_out(&out);
    assert!(said.contains("holds the pocket"), "{said}");
    wait_until("the pocket to be mounted", Duration::from_secs(20), || {
        is_mounted(&pocket_at)
    });
    assert_eq!(
        std::fs::read(pocket_at.join("notes.txt")).unwrap(),
        b"written at home\n",
        "{}",
        watcher.log()
    );
    std::fs::write(pocket_at.join("on-the-train.txt"), b"new work\n").unwrap();

    // Eject: the last drain, unmount, flush, the drive released, and the verdict.
    let out = run(&["eject", pocket_at.to_str().unwrap()], None);
    let said = ok_out(&out);
    assert!(
        said.contains("everything is protected: every change is at home"),
        "{said}\n{}",
        watcher.log()
    );
    assert!(said.contains("unplug it now"), "{said}");
    assert!(!is_mounted(&pocket_at));
    assert!(!mounted_from(&drive.dev), "eject left the drive mounted");
    assert_eq!(
        std::fs::read(dest.join("on-the-train.txt")).unwrap(),
        b"new work\n"
    );
    // Ejected means ejected: the watcher does not mount it again behind the user's back.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!is_mounted(&pocket_at), "{}", watcher.log());

    // Plugged in again: mounted again. Then pulled: the unit stops and runs its ExecStop.
    ok_out(&run_unit_command(&plug, &[]));
    wait_until(
        "the pocket to be mounted again",
        Duration::from_secs(20),
        || is_mounted(&pocket_at),
    );
    std::fs::write(pocket_at.join("late.txt"), b"just before the pull\n").unwrap();
    let out = run_unit_command(&stop_cmd, &[]);
    ok_out(&out);
    assert!(!is_mounted(&pocket_at));
    assert!(!mounted_from(&drive.dev));
    // What was written is on the drive, recorded in its journal.
    assert!(Command::new("mount")
        .arg(&drive.dev)
        .arg(&setup)
        .status()
        .unwrap()
        .success());
    assert_eq!(
        std::fs::read(pocket.join("late.txt")).unwrap(),
        b"just before the pull\n"
    );
    let log = ok(&[
        "journal",
        "log",
        "--json",
        "--pocket",
        pocket.to_str().unwrap(),
    ]);
    assert!(log.contains("\"late.txt\""), "{log}");
    assert!(Command::new("umount")
        .arg(&setup)
        .status()
        .unwrap()
        .success());

    let status = watcher.stop();
    assert!(status.success(), "the watcher exited with {status}");

    // Uninstall removes exactly what install wrote, and never a file someone else wrote.
    let said = ok_out(&run_env(&["service", "uninstall"], None, &user_env));
    assert!(
        said.contains(&format!("removed {}", user_unit.display())),
        "{said}"
    );
    assert!(!user_unit.exists());
    std::fs::write(&rule, "# the administrator's own rule\n").unwrap();
    let said = ok_out(&run_env(
        &[
            "service",
            "uninstall",
            "--system",
            "--root",
            root.to_str().unwrap(),
        ],
        None,
        &user_env,
    ));
    assert!(
        said.contains(&format!("removed {}", attach_unit.display())),
        "{said}"
    );
    assert!(
        said.contains(&format!("left {} alone", rule.display())),
        "{said}"
    );
    assert!(!attach_unit.exists());
    assert_eq!(
        std::fs::read_to_string(&rule).unwrap(),
        "# the administrator's own rule\n"
    );
    let out = install_system();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("was not written by backpocket"));
}

#[test]
fn eject_refuses_open_files_and_says_what_is_only_on_the_drive() {
    require_root!();
    let b = Backed::new();
    let dest = b.pocket.tmp.path().join("dest");
    b.dest("home", &dest, "mirror");
    let mut m = b.mount();
    std::fs::write(b.pocket.mnt.join("a.txt"), b"protected\n").unwrap();
    b.wait_drained(&m, Duration::from_secs(30));

    // The backup disk goes away; work goes on.
    std::fs::rename(&dest, b.pocket.tmp.path().join("dest-away")).unwrap();
    std::fs::write(b.pocket.mnt.join("b.txt"), b"only on the drive\n").unwrap();
    wait_until(
        "the destination to be found unreachable",
        Duration::from_secs(30),
        || b.pocket.status()["destinations"][0]["reachable"] == false,
    );

    let held = std::fs::File::open(b.pocket.mnt.join("a.txt")).unwrap();
    let out = run(&["eject", b.pocket.mnt.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("process {}", std::process::id())),
        "{err}"
    );
    assert!(err.contains("a.txt") && err.contains("--force"), "{err}");
    assert!(is_mounted(&b.pocket.mnt));
    drop(held);

    let out = run(&["eject", b.pocket.mnt.to_str().unwrap(), "--json"], None);
    let v: serde_json::Value = serde_json::from_str(&ok_out(&out)).unwrap();
    assert_eq!(v["protected"], false, "{v:#}");
    assert!(v["pending_records"].as_u64().unwrap() >= 2, "{v:#}");
    assert!(v["pending_bytes"].as_u64().unwrap() >= 18, "{v:#}");
    assert_eq!(v["destinations"][0]["obstacle"], "not reachable", "{v:#}");
    // A pocket in /tmp is not on a removable drive: its filesystem is left alone.
    assert_eq!(v["drive_unmounted"], false);
    let verdict = v["verdict"].as_str().unwrap();
    assert!(
        verdict.contains("are only on this drive; they go to home (not reachable)"),
        "{verdict}"
    );
    let status = m.child.take().unwrap().wait().unwrap();
    assert!(
        status.success(),
        "the daemon exited with {status}: {}",
        m.log()
    );
    assert!(!is_mounted(&b.pocket.mnt));
}

#[test]
fn eject_force_lets_an_open_file_finish_and_records_all_of_it() {
    require_root!();
    // The promise at stake: nothing written is lost or cut in half, even when the user
    // ejects over an application that is still writing.
    let b = Backed::new();
    b.dest("home", &b.pocket.tmp.path().join("dest"), "mirror");
    let mut m = b.mount();
    let mut f = std::fs::File::create(b.pocket.mnt.join("draft.bin")).unwrap();
    f.write_all(&pseudo_random(1 << 20, 5)).unwrap();
    let eject = Command::new(common::bin())
        .args(["eject", "--force", "--wait", "5"])
        .arg(&b.pocket.mnt)
        .env("XDG_CONFIG_HOME", common::config_home())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The mount is detached at once; the open file still works until it is closed.
    wait_until("the mount to be detached", Duration::from_secs(20), || {
        !is_mounted(&b.pocket.mnt)
    });
    f.write_all(&pseudo_random(1 << 20, 6)).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let out = eject.wait_with_output().unwrap();
    let said = ok_out(&out);
    assert!(said.contains("it can be unplugged"), "{said}");
    let status = m.child.take().unwrap().wait().unwrap();
    assert!(
        status.success(),
        "the daemon exited with {status}: {}",
        m.log()
    );
    let mut want = pseudo_random(1 << 20, 5);
    want.extend(pseudo_random(1 << 20, 6));
    assert!(
        std::fs::read(b.pocket.root.join("draft.bin")).unwrap() == want,
        "the file on the drive is not what was written"
    );
    let sizes: Vec<u64> = b
        .pocket
        .records(0)
        .iter()
        .filter(|r| r["op"] == "content")
        .filter_map(|r| r["size"].as_u64())
        .collect();
    assert_eq!(
        sizes.last(),
        Some(&(2 << 20)),
        "the journal's last content record: {sizes:?}"
    );
}

/// A `notify-send` that writes down what it was asked to show.
fn fake_notifier(dir: &Path) -> (PathBuf, PathBuf) {
    let bin = dir.join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("notifications.log");
    let script = bin.join("notify-send");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nprintf '%s\\n' \"$*\" >> {}\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (bin, log)
}

#[test]
fn warnings_come_when_changes_wait_too_long_the_drive_fills_and_verify_finds_damage() {
    require_root!();
    // The pocket on a small filesystem of its own, so that "nearly full" can be reached.
    let t = tmp();
    let small = t.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap()
        .success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _small = Unmount(small.clone());
    let pocket = small.join("pocket");
    let mnt = t.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    ok(&["init", pocket.to_str().unwrap()]);
    let gone = t.path().join("unplugged-disk/vault");
    std::fs::create_dir_all(gone.parent().unwrap()).unwrap();
    let pass = t.path().join("pass");
    std::fs::write(&pass, "a passphrase for the warnings\n").unwrap();
    ok(&[
        "dest",
        "add",
        "home",
        gone.to_str().unwrap(),
        "--warn-after",
        "2s",
        "--passphrase-file",
        pass.to_str().unwrap(),
        "--pocket",
        pocket.to_str().unwrap(),
    ]);
    let cfg = pocket.join(".backpocket/config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}\n[warnings]\nunprotected_after = \"3d\"\ndrive_free_below = \"40%\"\nnotify = true\n")).unwrap();
    // The backup disk is unplugged.
    std::fs::remove_dir_all(gone.parent().unwrap()).unwrap();

    let (fakebin, notes) = fake_notifier(t.path());
    let path = format!("{}:{}", fakebin.display(), std::env::var("PATH").unwrap());
    let mut cmd = Command::new(common::bin());
    let mut child = cmd
        .arg("mount")
        .arg(&pocket)
        .arg(&mnt)
        .args(["--passphrase-file", pass.to_str().unwrap()])
        .env("PATH", &path)
        .env(
            "DBUS_SESSION_BUS_ADDRESS",
            "unix:path=/nonexistent/for-the-fake",
        )
        .env("XDG_CONFIG_HOME", common::config_home())
        .env("BACKPOCKET_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(t.path().join("mount.log")).unwrap())
        .spawn()
        .unwrap();
    let daemon_log = || std::fs::read_to_string(t.path().join("mount.log")).unwrap_or_default();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("the mount", Duration::from_secs(20), || is_mounted(&mnt));
        let notes_text = || std::fs::read_to_string(&notes).unwrap_or_default();
        // Quiet for a short gap: nothing pending yet, nothing said.
        std::thread::sleep(Duration::from_secs(1));
        assert!(!notes_text().contains("home"), "{}", notes_text());
        std::fs::write(mnt.join("report.txt"), b"changes with nowhere to go\n").unwrap();
        wait_until(
            "the unprotected-changes warning",
            Duration::from_secs(30),
            || notes_text().contains("home has not received changes"),
        );
        // 40% of 48 MiB must stay free (the journal keeps 8 MiB in reserve): fill the drive past that.
        std::fs::write(mnt.join("big.bin"), pseudo_random(24 << 20, 7)).unwrap();
        wait_until("the drive-full warning", Duration::from_secs(30), || {
            notes_text().contains("the drive is nearly full")
        });
        let text = notes_text();
        // Each cause is told once, not at every check.
        assert_eq!(text.matches("home has not received").count(), 1, "{text}");
        assert!(text.contains("--urgency=critical"), "{text}");
        assert!(daemon_log().contains("WARN"), "{}", daemon_log());
        assert!(daemon_log().contains("home has not received changes"));
    }));
    let _ = run(&["unmount", mnt.to_str().unwrap()], None);
    let _ = child.wait();
    if let Err(e) = result {
        eprintln!("daemon log:\n{}", daemon_log());
        std::panic::resume_unwind(e);
    }

    // verify finding damage says so too.
    let b = Backed::new();
    let vault = b.pocket.tmp.path().join("vault");
    b.dest("home", &vault, "vault");
    std::fs::write(b.pocket.root.join("f.bin"), pseudo_random(200_000, 3)).unwrap();
    ok(&[
        "sync",
        "--pocket",
        b.pocket.p(),
        "--passphrase-file",
        b.pf(),
    ]);
    let pack = walk(&vault.join("data"))
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&pack, bytes).unwrap();
    let out = run_env(
        &[
            "verify",
            "home",
            "--read-data",
            "--pocket",
            b.pocket.p(),
            "--passphrase-file",
            b.pf(),
        ],
        None,
        &[
            ("PATH", path.clone()),
            ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent".into()),
        ],
    );
    assert_eq!(out.status.code(), Some(5));
    let text = std::fs::read_to_string(&notes).unwrap();
    assert!(text.contains("damage found at home"), "{text}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn status_watch_shows_the_rate_and_time_left_and_eject_waits_for_the_last_drain() {
    require_root!();
    let b = Backed::new();
    let vault = b.pocket.tmp.path().join("vault");
    ok_out(&run(
        &[
            "dest",
            "add",
            "home",
            vault.to_str().unwrap(),
            "--bandwidth-limit",
            "4MiB/s",
            "--pocket",
            b.pocket.p(),
            "--passphrase-file",
            b.pf(),
        ],
        None,
    ));
    let m = b.mount();
    let mut f = std::fs::File::create(b.pocket.mnt.join("video.bin")).unwrap();
    // Three packs: the rate counts bytes as their pack lands.
    f.write_all(&pseudo_random(40 << 20, 11)).unwrap();
    drop(f);

    let watch = |extra: &[&str], pocket: &Path| {
        Command::new(common::bin())
            .args([
                "journal",
                "status",
                "--watch",
                "--interval",
                "0.5",
                "--pocket",
            ])
            .arg(pocket)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let json = watch(&["--json"], &b.pocket.root);
    let text = watch(&[], &b.pocket.mnt);
    std::thread::sleep(Duration::from_secs(8));
    let mut frames = String::new();
    for mut c in [json, text] {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&c),
            rustix::process::Signal::INT,
        )
        .unwrap();
        let out = c.wait_with_output_ref();
        frames.push_str(&out);
    }
    let (json_lines, view): (Vec<&str>, Vec<&str>) =
        frames.lines().partition(|l| l.starts_with('{'));
    let sending: Vec<serde_json::Value> = json_lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| {
            let d = v["destinations"][0].clone();
            let measured = d["rate_bytes_per_s"].is_number() && d["eta_s"].is_number();
            (d["state"] == "sending" && measured).then_some(d)
        })
        .collect();
    assert!(!sending.is_empty(), "no refresh saw the transfer: {frames}");
    let d = sending.last().unwrap();
    let rate = d["rate_bytes_per_s"].as_f64().unwrap();
    // Capped at 4 MiB/s (after a burst of one part); the rate seen is of that order.
    assert!(
        rate > 256.0 * 1024.0 && rate < 12.0 * 1024.0 * 1024.0,
        "{d:#}"
    );
    assert!(d["eta_s"].as_f64().unwrap() > 0.0, "{d:#}");
    assert!(
        view.iter()
            .any(|l| l.starts_with("DESTINATION") && l.contains("RATE") && l.contains("ETA")),
        "{frames}"
    );
    assert!(
        view.iter()
            .any(|l| l.starts_with("home") && l.contains("sending") && l.contains("/s")),
        "{frames}"
    );
    for l in &view {
        assert!(
            l.chars().count() <= 80,
            "{} columns: {l}",
            l.chars().count()
        );
    }

    // Eject waits for the transfer to end, then says everything is protected.
    let out = run(&["eject", b.pocket.mnt.to_str().unwrap()], None);
    let said = ok_out(&out);
    assert!(
        said.contains("everything is protected: every change is at home"),
        "{said}\n{}",
        m.log()
    );
}

trait OutputRef {
    fn wait_with_output_ref(&mut self) -> String;
}

impl OutputRef for Child {
    fn wait_with_output_ref(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        self.stdout.take().unwrap().read_to_string(&mut s).unwrap();
        let st = self.wait().unwrap();
        assert!(st.success(), "status --watch exited with {st}");
        s
    }
}

#[test]
fn completions_and_man_pages_come_from_the_command_line_definition() {
    let bash = ok(&["completions", "bash"]);
    assert!(bash.contains("_backpocket()"), "{bash}");
    for word in ["eject", "service", "--watch", "--keep-drive-mounted"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    assert!(ok(&["completions", "zsh"]).contains("#compdef backpocket"));
    assert!(ok(&["completions", "fish"]).contains("complete -c backpocket"));
    let t = tmp();
    let man = t.path().join("man");
    ok(&["man", man.to_str().unwrap()]);
    let page = std::fs::read_to_string(man.join("backpocket.1")).unwrap();
    assert!(page.contains(".TH backpocket 1"), "{page}");
    let eject = std::fs::read_to_string(man.join("backpocket-eject.1")).unwrap();
    assert!(eject.contains("keep\\-drive\\-mounted"), "{eject}");
    assert!(man.join("backpocket-service-install.1").exists());
    let out = run(&["eject"], None);
    assert_eq!(out.status.code(), Some(2), "misuse is exit code 2");
}
