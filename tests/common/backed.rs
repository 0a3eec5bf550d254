//! A pocket with a passphrase and backup destinations, and the workload every backup test
//! restores exactly.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{ok, run, Pocket};

pub const PASS: &str = "correct horse battery staple";

/// A pocket with a passphrase file and its backup destinations.
pub struct Backed {
    pub pocket: Pocket,
    pub pass: PathBuf,
}

impl Backed {
    pub fn new() -> Backed {
        Backed::with_pocket(Pocket::new())
    }

    /// Makes a pocket of `pocket` (on a drive of the test's own, say).
    pub fn with_pocket(pocket: Pocket) -> Backed {
        pocket.init();
        let pass = pocket.tmp.path().join("passphrase");
        std::fs::write(&pass, format!("{PASS}\n")).unwrap();
        Backed { pocket, pass }
    }

    pub fn pf(&self) -> &str {
        self.pass.to_str().unwrap()
    }

    pub fn dest(&self, name: &str, dir: &Path, mode: &str) {
        ok(&[
            "dest",
            "add",
            name,
            dir.to_str().unwrap(),
            "--mode",
            mode,
            "--pocket",
            self.pocket.p(),
            "--passphrase-file",
            self.pf(),
        ]);
    }

    /// Adds a destination by URL, with more arguments and environment (remote ones).
    pub fn dest_url(&self, name: &str, url: &str, extra: &[&str], env: &[(&str, String)]) {
        let mut args = vec![
            "dest",
            "add",
            name,
            url,
            "--pocket",
            self.pocket.p(),
            "--passphrase-file",
            self.pf(),
        ];
        args.extend_from_slice(extra);
        ok_out(&super::run_env(&args, None, env));
    }

    pub fn mount(&self) -> super::Mounted {
        self.pocket.mount(&["--passphrase-file", self.pf()])
    }

    /// Waits until every destination holds every record. The kernel sends a file's release
    /// (which records its contents) just after `close()` returns, so "nothing pending" counts
    /// only once no record has come for a moment.
    pub fn wait_drained(&self, m: &super::Mounted, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        let mut last_seq = None;
        let mut quiet_since = Instant::now();
        loop {
            let s = self.pocket.status();
            if last_seq != s["journal"]["last_seq"].as_u64() {
                last_seq = s["journal"]["last_seq"].as_u64();
                quiet_since = Instant::now();
            }
            let dests = s["destinations"].as_array().unwrap();
            if !dests.is_empty()
                && dests
                    .iter()
                    .all(|d| d["pending_records"] == 0 && d["cursor"].is_u64())
                && quiet_since.elapsed() >= Duration::from_millis(500)
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "not drained in {timeout:?}: {s:#}\ndaemon log:\n{}",
                m.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The drive is lost: makes a new one from `from` (a destination's URL or folder) with
    /// only the passphrase (and `env`), checks it holds the pocket exactly, then does new work
    /// on it (`after-loss.txt`) and backs that up with the config the vault kept. Returns
    /// the new drive.
    pub fn rebuild_drive(&self, from: &str, env: &[(&str, String)]) -> PathBuf {
        let newdrive = self.pocket.tmp.path().join("new-drive");
        let out = super::run_env(
            &[
                "init",
                "--from",
                from,
                newdrive.to_str().unwrap(),
                "--passphrase-file",
                self.pf(),
            ],
            Some(Path::new("/")),
            env,
        );
        ok_out(&out);
        super::assert_same_tree(
            &super::exact_tree(&self.pocket.root),
            &super::exact_tree(&newdrive),
        );
        std::fs::write(
            newdrive.join("after-loss.txt"),
            b"new work on the new drive",
        )
        .unwrap();
        ok(&[
            "sync",
            "--pocket",
            newdrive.to_str().unwrap(),
            "--passphrase-file",
            self.pf(),
        ]);
        newdrive
    }

    /// Restores `dest` into the new folder `into`, insists it is `want` exactly, and that
    /// `verify --read-data` finds every byte there intact.
    pub fn assert_restores(
        &self,
        dest: &str,
        want: &std::collections::BTreeMap<Vec<u8>, String>,
        into: &str,
    ) {
        let out = self.pocket.tmp.path().join(into);
        ok_out(&self.restore(dest, &out));
        super::assert_same_tree(want, &super::exact_tree(&out));
        let ver = ok(&[
            "verify",
            dest,
            "--read-data",
            "--pocket",
            self.pocket.p(),
            "--passphrase-file",
            self.pf(),
        ]);
        assert!(ver.contains("no damage found"), "{ver}");
    }

    pub fn restore(&self, from: &str, to: &Path) -> std::process::Output {
        run(
            &[
                "restore",
                "--from",
                from,
                "--to",
                to.to_str().unwrap(),
                "--pocket",
                self.pocket.p(),
                "--passphrase-file",
                self.pf(),
            ],
            None,
        )
    }
}

pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn ok_out(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A workload with every kind of change restore must reproduce.
pub fn workload(m: &Path) {
    std::fs::create_dir_all(m.join("docs/deep/er")).unwrap();
    std::fs::write(m.join("docs/report.txt"), b"first draft\n").unwrap();
    std::fs::write(m.join("docs/report.txt"), b"second draft, longer\n").unwrap();
    std::fs::write(m.join("docs/deep/er/data.bin"), pseudo_random(3 << 20, 1)).unwrap();
    std::fs::write(m.join("notes.md"), b"# notes\n".repeat(20_000)).unwrap();
    for i in 0..40 {
        std::fs::write(
            m.join(format!("docs/small-{i}.txt")),
            format!("file {i}\n").repeat(i + 1),
        )
        .unwrap();
    }
    // Renames, a swap target, deletes, a temp file created and removed.
    std::fs::rename(m.join("docs/small-0.txt"), m.join("docs/deep/moved.txt")).unwrap();
    std::fs::write(m.join("tmp.swp"), b"scratch").unwrap();
    std::fs::remove_file(m.join("tmp.swp")).unwrap();
    std::fs::remove_file(m.join("docs/small-1.txt")).unwrap();
    std::fs::create_dir(m.join("gone")).unwrap();
    std::fs::remove_dir(m.join("gone")).unwrap();
    std::fs::create_dir_all(m.join("empty/folder")).unwrap();
    // Links.
    std::os::unix::fs::symlink("docs/report.txt", m.join("report-link")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", m.join("dangling")).unwrap();
    std::fs::hard_link(m.join("notes.md"), m.join("docs/notes-hardlink.md")).unwrap();
    // Names as bytes.
    let odd = std::ffi::OsStr::from_bytes(b"r\xe9sum\xe9 \xff.txt");
    std::fs::write(m.join(odd), b"latin-1 named").unwrap();
    std::fs::write(m.join("emoji-\u{1F600}.txt"), b"utf-8 named").unwrap();
    // Modes, times, xattrs.
    std::fs::set_permissions(
        m.join("docs/report.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(m.join("empty"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let script = m.join("run.sh");
    std::fs::write(&script, b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let st = Command::new("touch")
        .args(["-m", "-d", "2001-02-03 04:05:06.789"])
        .arg(m.join("notes.md"))
        .status()
        .unwrap();
    assert!(st.success());
    rustix::fs::setxattr(
        m.join("docs/report.txt").as_path(),
        "user.reviewed",
        b"yes",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    // A sparse file: data at 1 MiB and at 40 MiB of a 64 MiB file.
    {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(m.join("disk.img"))
            .unwrap();
        f.set_len(64 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &pseudo_random(256 << 10, 2), 1 << 20)
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &pseudo_random(128 << 10, 3), 40 << 20)
            .unwrap();
        f.sync_all().unwrap();
    }
    // Truncation and an in-place edit in the middle of a big file.
    std::fs::write(m.join("truncated"), pseudo_random(100_000, 4)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(m.join("truncated"))
        .unwrap()
        .set_len(777)
        .unwrap();
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.join("docs/deep/er/data.bin"))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"EDITED IN THE MIDDLE", 1_500_000).unwrap();
    }
    // A file written after being unlinked while open leaves nothing.
    {
        let mut f = std::fs::File::create(m.join("ghost")).unwrap();
        std::fs::remove_file(m.join("ghost")).unwrap();
        std::io::Write::write_all(&mut f, b"boo").unwrap();
    }
    let st = Command::new("mkfifo")
        .arg(m.join("a-fifo"))
        .status()
        .unwrap();
    assert!(st.success());
}
