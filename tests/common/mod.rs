//! Helpers for the end-to-end tests: real pockets, real mounts, the real binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod backed;
pub mod drive;
pub mod servers;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_backpocket")
}

/// A wrapper (a prefix to a command) that runs it with its wall clock three hours behind, as on
/// a machine whose clock is set wrong: libfaketime, the monotonic clock left alone.
pub fn clock_3h_behind() -> Vec<String> {
    [
        "env",
        "FAKETIME_DONT_FAKE_MONOTONIC=1",
        "faketime",
        "-f",
        "-3h",
    ]
    .map(str::to_owned)
    .to_vec()
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Skips a test that needs root, loudly: these run for real in CI, which runs as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            eprintln!(
                "SKIPPED {}: needs root (loop devices, mount(2)); CI runs it as root",
                module_path!()
            );
            return;
        }
    };
}

/// Where the binary under test keeps per-user state (remembered pocket keys): a folder of
/// this test process, never the user's own `~/.config`.
pub fn config_home() -> PathBuf {
    let d = std::env::temp_dir().join(format!("bp-test-config-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the binary, returns its output.
pub fn run(args: &[&str], cwd: Option<&Path>) -> Output {
    run_env(args, cwd, &[])
}

/// Runs the binary with more environment, returns its output.
pub fn run_env(args: &[&str], cwd: Option<&Path>, env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("BACKPOCKET_LOG", "warn")
        .env("XDG_CONFIG_HOME", config_home())
        .envs(servers::child_env())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    cmd.output().expect("run backpocket")
}

/// Runs the binary and insists on success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args, None);
    assert!(
        out.status.success(),
        "backpocket {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A pocket in a temporary folder, with a mountpoint beside it.
pub struct Pocket {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub mnt: PathBuf,
}

impl Pocket {
    pub fn new() -> Pocket {
        let tmp = tempfile::Builder::new()
            .prefix("bp-test")
            .tempdir()
            .unwrap();
        Self::inside(tmp)
    }

    /// A pocket inside an existing folder (e.g. a loop-mounted filesystem).
    pub fn inside(tmp: tempfile::TempDir) -> Pocket {
        let root = tmp.path().join("pocket");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        Pocket { tmp, root, mnt }
    }

    pub fn init(&self) {
        ok(&["init", self.root.to_str().unwrap()]);
    }

    pub fn p(&self) -> &str {
        self.root.to_str().unwrap()
    }

    pub fn mount(&self, extra: &[&str]) -> Mounted {
        Mounted::start(&self.root, &self.mnt, extra)
    }

    pub fn journal(&self) -> PathBuf {
        self.root.join(".backpocket/journal.db")
    }

    /// The journal's records after `after`, as `journal log --json` prints them.
    pub fn records(&self, after: u64) -> Vec<serde_json::Value> {
        let out = ok(&[
            "journal",
            "log",
            "--pocket",
            self.p(),
            "--after",
            &after.to_string(),
            "--limit",
            "1000000",
            "--json",
        ]);
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn last_seq(&self) -> u64 {
        self.records(0)
            .last()
            .map(|r| r["seq"].as_u64().unwrap())
            .unwrap_or(0)
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&ok(&["journal", "status", "--pocket", self.p(), "--json"])).unwrap()
    }
}

/// Aborts the FUSE connection of the mount at `mnt`: every call waiting on it fails, and its
/// daemon can exit. `umount -f` does it (the unmount itself may then fail as busy: a stale
/// mount, cleaned up by the next mount); else the connection's `abort` file (root, fusectl).
pub fn abort_fuse_connection(mnt: &Path) {
    let _ = Command::new("umount")
        .arg("-f")
        .arg(mnt)
        .stderr(Stdio::null())
        .status();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = mnt.to_string_lossy();
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() > 4 && f[4] == want {
            if let Some(minor) = f[2].split(':').nth(1) {
                let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
            }
        }
    }
}

/// A foreground `backpocket mount` child process.
pub struct Mounted {
    pub child: Option<Child>,
    pub mnt: PathBuf,
    /// The daemon's stderr, drained by a thread so a chatty daemon never blocks on the pipe.
    log: std::sync::Arc<std::sync::Mutex<String>>,
    drain: Option<std::thread::JoinHandle<()>>,
}

pub fn is_mounted(mnt: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = mnt.as_os_str().as_bytes();
    info.lines()
        .any(|l| l.split(' ').nth(4).map(|m| m.as_bytes()) == Some(want))
}

impl Mounted {
    pub fn start(root: &Path, mnt: &Path, extra: &[&str]) -> Mounted {
        Self::start_as(root, mnt, extra, None)
    }

    /// Starts the mount, as another user when `user` is (uid, gid).
    pub fn start_as(root: &Path, mnt: &Path, extra: &[&str], user: Option<(u32, u32)>) -> Mounted {
        let prefix: Vec<String> = match user {
            Some((uid, gid)) => vec![
                "setpriv".into(),
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".into(),
                "--".into(),
            ],
            None => Vec::new(),
        };
        Self::start_with(root, mnt, extra, &prefix)
    }

    /// Starts the mount behind a wrapper command (`prefix` then the binary).
    pub fn start_with(root: &Path, mnt: &Path, extra: &[&str], prefix: &[String]) -> Mounted {
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let child = cmd
            .arg("mount")
            .arg(root)
            .arg(mnt)
            .args(extra)
            .env("BACKPOCKET_LOG", "info")
            .env("XDG_CONFIG_HOME", config_home())
            .envs(servers::child_env())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start backpocket mount");
        let mut child = child;
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let drain = {
            let log = log.clone();
            let mut err = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    log.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        };
        let mut m = Mounted {
            child: Some(child),
            mnt: mnt.to_owned(),
            log,
            drain: Some(drain),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        // Ready when the daemon says so (a killed daemon's stale mount may still answer for a
        // moment), and the mount answers.
        while !(m.log().contains("mounted ") && is_mounted(mnt)) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                m.child = None;
                let _ = m.drain.take().unwrap().join();
                panic!("mount exited early ({status}): {}", m.log());
            }
            assert!(Instant::now() < deadline, "mount did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    /// What the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// kill -9: no unmount, no journal close. Returns whether the daemon hung instead of
    /// dying: a thread of it in a call on its own mount that a thread now dead had taken
    /// would wait for an answer that cannot come, holding the process as a zombie with the
    /// mount's connection open (the pull, which writes through the mount, runs in a process
    /// of its own so that this cannot happen); its connection is then aborted, as `umount -f`
    /// would (docs/devices.md, known limits).
    pub fn kill9(mut self) -> bool {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                eprintln!(
                    "NOTE: the daemon of {} did not die of kill -9 in 5 s (a call on its own mount waits for an answer); aborting its FUSE connection",
                    self.mnt.display()
                );
                abort_fuse_connection(&self.mnt);
                child.wait().unwrap();
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Unmounts through the command and waits for the daemon to exit; returns its stderr.
    pub fn unmount(mut self) -> String {
        self.unmount_inner(true).1
    }

    /// Unmounts through the command; returns how the daemon exited and what it said.
    pub fn unmount_status(mut self) -> (std::process::ExitStatus, String) {
        self.unmount_inner(false)
    }

    fn unmount_inner(&mut self, must_succeed: bool) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("mounted");
        let out = run(&["unmount", self.mnt.to_str().unwrap()], None);
        if !out.status.success() {
            let _ = child.kill();
            // A daemon killed while a call on its own mount waits would never end.
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if child.try_wait().unwrap().is_none() {
                abort_fuse_connection(&self.mnt);
            }
        }
        let status = child.wait().unwrap();
        if let Some(d) = self.drain.take() {
            let _ = d.join();
        }
        let err = self.log();
        assert!(
            out.status.success(),
            "unmount failed: {}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        if must_succeed {
            assert!(
                status.success(),
                "mount process exited with {status}: {err}"
            );
        }
        (status, err)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a tree looks like, for comparing the pocket with the catalog: path -> (kind, ino,
/// size, mtime_ns, perm, symlink target). Directory mtimes are left out: the journal records
/// a folder's mtime only when it is set explicitly or a scan finds it changed.
pub type Tree = BTreeMap<Vec<u8>, (u8, u64, u64, i64, u32, Option<Vec<u8>>)>;

pub fn disk_tree(root: &Path) -> Tree {
    fn walk(dir: &Path, prefix: &[u8], out: &mut Tree, top: bool) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            if top && name == ".backpocket" {
                continue;
            }
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            let mut path = prefix.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name.as_bytes());
            let meta = journal::Meta::from_std(&md).unwrap();
            let is_dir = md.is_dir();
            let target = md.file_type().is_symlink().then(|| {
                std::fs::read_link(e.path())
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            });
            out.insert(
                path.clone(),
                (
                    meta.kind as u8,
                    md.ino(),
                    if is_dir { 0 } else { meta.size },
                    if is_dir { 0 } else { meta.mtime_ns },
                    meta.perm,
                    target,
                ),
            );
            if is_dir {
                walk(&e.path(), &path, out, false);
            }
        }
    }
    let mut out = Tree::new();
    walk(root, b"", &mut out, true);
    out
}

pub fn catalog_tree(journal_db: &Path) -> Tree {
    let reader = journal::Reader::open(journal_db).unwrap();
    reader
        .tree()
        .unwrap()
        .into_iter()
        .map(|e| {
            let is_dir = e.meta.kind == journal::Kind::Dir;
            (
                e.path,
                (
                    e.meta.kind as u8,
                    e.file,
                    if is_dir { 0 } else { e.meta.size },
                    if is_dir { 0 } else { e.meta.mtime_ns },
                    e.meta.perm,
                    e.target,
                ),
            )
        })
        .collect()
}

/// Asserts that the journal's catalog describes the pocket exactly; prints the first
/// differences otherwise.
pub fn assert_catalog_matches(pocket: &Pocket) {
    let disk = disk_tree(&pocket.root);
    let cat = catalog_tree(&pocket.journal());
    if disk != cat {
        let mut diffs = Vec::new();
        for (k, v) in &disk {
            if cat.get(k) != Some(v) {
                diffs.push(format!(
                    "{}: disk {:?} catalog {:?}",
                    String::from_utf8_lossy(k),
                    v,
                    cat.get(k)
                ));
            }
        }
        for (k, v) in &cat {
            if !disk.contains_key(k) {
                diffs.push(format!(
                    "{}: only in catalog {:?}",
                    String::from_utf8_lossy(k),
                    v
                ));
            }
        }
        diffs.truncate(20);
        panic!("catalog differs from the pocket:\n{}", diffs.join("\n"));
    }
}

/// Names of ops in records, with the entry name where there is one.
pub fn ops(records: &[serde_json::Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            let op = r["op"].as_str().unwrap().to_string();
            match (r["name"].as_str(), r["new_name"].as_str()) {
                (Some(n), Some(nn)) => format!("{op} {n}->{nn}"),
                (Some(n), None) => format!("{op} {n}"),
                _ => op,
            }
        })
        .collect()
}

/// Everything a restore promises, per path (relative, bytes): kind and mode, owner, mtime
/// (folders too), size, a hash of the contents, the data runs (hole map), symlink target,
/// xattrs, and which earlier path it is a hard link of. `.backpocket` is left out.
pub fn exact_tree(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    let mut first_of_inode: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    let mut entries = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            if rel == b".backpocket" {
                continue;
            }
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            entries.push((rel, p));
        }
    }
    entries.sort();
    for (rel, p) in entries {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let mut line = format!(
            "mode={:o} owner={}:{} mtime={}.{:09}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.mtime(),
            m.mtime_nsec()
        );
        if m.is_file() {
            let data = std::fs::read(&p).unwrap();
            line += &format!(" size={} blake3={}", m.len(), blake3::hash(&data).to_hex());
            line += &format!(" data={:?}", data_runs(&p, m.len()));
            let first = first_of_inode.entry(m.ino()).or_insert_with(|| rel.clone());
            if *first != rel {
                line += &format!(" hardlink-of={}", String::from_utf8_lossy(first));
            }
        } else if m.file_type().is_symlink() {
            line += &format!(" -> {:?}", std::fs::read_link(&p).unwrap());
        }
        if !m.file_type().is_symlink() {
            let mut x = journal::read_xattrs(&p).unwrap_or_default();
            x.sort();
            if !x.is_empty() {
                line += &format!(" xattrs={x:?}");
            }
        }
        out.insert(rel, line);
    }
    out
}

/// The seed `var` gives, else a new one from the clock (printed by the caller, to repeat a run).
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000_007
        })
}

/// splitmix64: small, seedable, good enough to pick operations.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> Option<&'a T> {
        if xs.is_empty() {
            None
        } else {
            Some(&xs[self.below(xs.len() as u64) as usize])
        }
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }
    /// Mostly small, sometimes a hundred KiB, rarely a few MiB: the sizes of real work.
    pub fn size(&mut self) -> usize {
        match self.below(100) {
            0..=79 => self.below(8 << 10) as usize,
            80..=98 => self.below(128 << 10) as usize,
            _ => self.below(3 << 20) as usize,
        }
    }
}

/// A POSIX ACL as the kernel stores it in `system.posix_acl_access`, with only the three
/// entries a mode has: what `cp -a` and `rsync -A` write for every file they copy. The kernel
/// sets the mode from it and stores no ACL.
pub fn minimal_acl(mode: u32) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [
        (0x01u16, (mode >> 6) & 7),
        (0x04, (mode >> 3) & 7),
        (0x20, mode & 7),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&(perm as u16).to_le_bytes());
        v.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    v
}

/// A file's data runs (SEEK_DATA/SEEK_HOLE), to compare hole maps.
pub fn data_runs(p: &Path, size: u64) -> Vec<(u64, u64)> {
    use rustix::fs::{seek, SeekFrom};
    let f = std::fs::File::open(p).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Ok(start) = seek(&f, SeekFrom::Data(pos)) else {
            break;
        };
        let end = seek(&f, SeekFrom::Hole(start)).unwrap().min(size);
        out.push((start, end));
        pos = end;
    }
    out
}

/// Asserts two trees are equal, printing the first differences.
pub fn assert_same_tree(want: &BTreeMap<Vec<u8>, String>, got: &BTreeMap<Vec<u8>, String>) {
    if want == got {
        return;
    }
    let mut diffs = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => diffs.push(format!("missing {}: {v}", String::from_utf8_lossy(k))),
            Some(g) if g != v => diffs.push(format!(
                "differs {}:\n   want {v}\n   got  {g}",
                String::from_utf8_lossy(k)
            )),
            _ => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        diffs.push(format!("extra {}", String::from_utf8_lossy(k)));
    }
    diffs.truncate(12);
    panic!("trees differ:\n{}", diffs.join("\n"));
}
