//! Real work in the mount against the plain drive folder and bindfs, side by side in one run:
//! extracting a source tree, listing it (`ls -lR`, `find`, `du`), rewriting files in place,
//! deleting the tree, a `git clone` and `git status`, a `cargo build` of a real crate, and a
//! large file written and read. Every timing that writes ends with the data durable (syncfs).
//!
//!     cargo bench --bench workloads            # BENCH_ROUNDS=3 BENCH_FILE_MB=512
//!     BENCH_ONLY=mount,plain BENCH_ROUNDS=5 cargo bench --bench workloads
//!
//! As root, the "drive" is a fresh ext4 image on a loop device (BENCH_FS=exfat: exFAT through
//! exfat-fuse, as USB drives come; BENCH_IMAGE=0: the work folder's own filesystem): the plain
//! folder, the pockets and bindfs's folder live on it, and the mounts' vault destinations on
//! the machine's disk. Each timing starts once the previous contender's journal has drained,
//! so that no contender pays for another's replication. "journal off" is the mount without
//! journal or destination: it shows what the journal and the replicator cost. The daemon's
//! memory (RSS) is reported after the extract. Speed = plain folder's time / contender's time.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const PASS: &str = "benchmark passphrase";

/// A fresh ext4 filesystem on a loop device, as a drive just formatted: the machine's own
/// disk carries the history of every earlier run (ext4 without a journal even searches its
/// recently deleted inodes on each create), which would time the disk, not the contenders.
struct Drive {
    dir: PathBuf,
    mounted: bool,
    /// exFAT: the loop device exfat-fuse reads.
    loop_dev: Option<String>,
    /// The filesystem: "ext4" (default) or "exfat" (`BENCH_FS`).
    fs: String,
}

impl Drive {
    fn new(base: &Path) -> Drive {
        let dir = base.join("drive");
        fs::create_dir(&dir).unwrap();
        let fs_type = std::env::var("BENCH_FS").unwrap_or_else(|_| "ext4".into());
        if !is_root() || std::env::var("BENCH_IMAGE").is_ok_and(|v| v == "0") {
            return Drive {
                dir,
                mounted: false,
                loop_dev: None,
                fs: "the work folder's".into(),
            };
        }
        let img = base.join("drive.img");
        let gib = env("BENCH_IMAGE_GB", 12);
        sh(Command::new("truncate").arg(format!("-s{gib}G")).arg(&img));
        if fs_type == "exfat" {
            // A USB drive as it comes: exFAT, here through exfat-fuse (no kernel module).
            sh(Command::new("mkfs.exfat").arg(&img));
            let out = Command::new("losetup")
                .args(["-f", "--show"])
                .arg(&img)
                .output()
                .unwrap();
            let dev = String::from_utf8(out.stdout).unwrap().trim().to_owned();
            sh(Command::new("mount.exfat-fuse").arg(&dev).arg(&dir));
            return Drive {
                dir,
                mounted: true,
                loop_dev: Some(dev),
                fs: fs_type,
            };
        }
        sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
        sh(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&dir));
        Drive {
            dir,
            mounted: true,
            loop_dev: None,
            fs: fs_type,
        }
    }
}

impl Drop for Drive {
    fn drop(&mut self) {
        if self.mounted {
            // The last mount's daemon may still be letting go of the drive (busy for a moment).
            for _ in 0..50 {
                let done = Command::new("umount")
                    .arg(&self.dir)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if done {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
    }
}

fn sh(cmd: &mut Command) {
    let out = cmd.stdout(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The data every contender works on, made once outside the contenders' folders.
struct Data {
    tar: PathBuf,
    repo: PathBuf,
    krate: Option<PathBuf>,
    /// Regular files of the tree, relative to its top, for the rewrite.
    files: Vec<PathBuf>,
    entries: usize,
    /// What `tar -x` is told beyond the archive: on exFAT, not to set owners or modes.
    extract_args: Vec<&'static str>,
}

/// `exfat`: the drive keeps no symlinks, owners or modes, so the archive holds what its
/// symlinks point to, and extraction sets neither (what a user's tar on such a drive does).
fn prepare(base: &Path, exfat: bool) -> Data {
    let tar = base.join("include.tar");
    sh(Command::new("tar")
        .args(["-C", "/usr"])
        .args(if exfat {
            &["--dereference", "--hard-dereference"][..]
        } else {
            &[]
        })
        .arg("-cf")
        .arg(&tar)
        .arg("include"));
    let mut files = Vec::new();
    let mut entries = 0;
    for e in walk(Path::new("/usr/include")) {
        entries += 1;
        if e.1.is_file() {
            files.push(Path::new("include").join(e.0.strip_prefix("/usr/include").unwrap()));
        }
    }
    files.sort();
    files.truncate(env("BENCH_REWRITE", 8000));
    // A repository of the same tree, cloned through git's own transport (packs, not links).
    let repo = base.join("repo");
    fs::create_dir(&repo).unwrap();
    sh(Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&repo));
    let git = |args: &[&str]| {
        sh(Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .env("GIT_AUTHOR_NAME", "bench")
            .env("GIT_AUTHOR_EMAIL", "bench@example.org")
            .env("GIT_COMMITTER_NAME", "bench")
            .env("GIT_COMMITTER_EMAIL", "bench@example.org"))
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "tree"]);
    git(&["gc", "-q"]);
    Data {
        tar,
        repo,
        krate: find_crate(base),
        files,
        entries,
        extract_args: if exfat {
            vec!["--no-same-owner", "--no-same-permissions"]
        } else {
            Vec::new()
        },
    }
}

/// A real crate without dependencies, from cargo's registry cache, so the build needs no
/// network: regex-syntax (about 58,000 lines), its optional dependency cut.
fn find_crate(base: &Path) -> Option<PathBuf> {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let mut found = Vec::new();
    for index in fs::read_dir(home.join("registry/src")).ok()? {
        for e in fs::read_dir(index.ok()?.path()).ok()? {
            let p = e.ok()?.path();
            if p.file_name()?.to_str()?.starts_with("regex-syntax-0.8.") {
                found.push(p);
            }
        }
    }
    found.sort();
    let src = found.pop()?;
    let dst = base.join("crate");
    sh(Command::new("cp").arg("-a").arg(&src).arg(&dst));
    let toml = fs::read_to_string(dst.join("Cargo.toml")).ok()?;
    let mut out = String::new();
    let mut skipping = false;
    for line in toml.lines() {
        if line.starts_with('[') {
            skipping = line.starts_with("[dependencies.") || line.starts_with("[dev-dependencies");
        }
        if skipping || line.starts_with("arbitrary = ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    fs::write(dst.join("Cargo.toml"), out).ok()?;
    let _ = fs::remove_file(dst.join("Cargo.lock"));
    Some(dst)
}

fn walk(dir: &Path) -> Vec<(PathBuf, fs::FileType)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path(), t));
        }
    }
    out
}

fn extract(dir: &Path, data: &Data) -> Duration {
    let x = dir.join("x");
    fs::create_dir(&x).unwrap();
    time(|| {
        sh(Command::new("tar")
            .args(&data.extract_args)
            .arg("-xf")
            .arg(&data.tar)
            .arg("-C")
            .arg(&x));
        syncfs(dir);
    })
}

fn ls_lr(dir: &Path) -> Duration {
    let x = dir.join("x");
    // Attributes fetched once, as a user who looked at the tree a moment ago.
    sh(Command::new("ls").arg("-lR").arg(&x));
    time(|| sh(Command::new("ls").arg("-lR").arg(&x)))
}

fn find_du(dir: &Path) -> Duration {
    let x = dir.join("x");
    time(|| {
        sh(Command::new("find").arg(&x).args(["-type", "f"]));
        sh(Command::new("du").arg("-s").arg(&x));
    })
}

fn rewrite(dir: &Path, data: &Data) -> Duration {
    let x = dir.join("x");
    time(|| {
        for f in &data.files {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(x.join(f))
                .unwrap();
            file.write_all_at(b"rewritten-in-pla", 0).unwrap();
        }
        syncfs(dir);
    })
}

fn delete(dir: &Path) -> Duration {
    let x = dir.join("x");
    time(|| {
        fs::remove_dir_all(&x).unwrap();
        syncfs(dir);
    })
}

fn clone_status(dir: &Path, data: &Data) -> Duration {
    let c = dir.join("clone");
    let url = format!("file://{}", data.repo.display());
    let t = time(|| {
        sh(Command::new("git").args(["clone", "-q", &url]).arg(&c));
        sh(Command::new("git").arg("-C").arg(&c).arg("status"));
        syncfs(dir);
    });
    fs::remove_dir_all(&c).unwrap();
    t
}

fn build(dir: &Path, data: &Data) -> Duration {
    let src = data.krate.as_ref().unwrap();
    let k = dir.join("crate");
    sh(Command::new("cp").arg("-a").arg(src).arg(&k));
    syncfs(dir);
    let t = time(|| {
        sh(Command::new("cargo")
            .args(["build", "--offline", "-q"])
            .current_dir(&k)
            .env("CARGO_TARGET_DIR", k.join("target")));
        syncfs(dir);
    });
    fs::remove_dir_all(&k).unwrap();
    t
}

fn seq_write(dir: &Path, mb: usize) -> Duration {
    write_big(&dir.join("big"), mb)
}

fn seq_read(dir: &Path, mb: usize) -> Duration {
    let path = dir.join("big");
    let t = read_big(&path, mb);
    fs::remove_file(&path).unwrap();
    t
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Plain,
    Mount,
    Bindfs,
}

struct Contender {
    name: &'static str,
    dir: PathBuf,
    kind: Kind,
    pocket: Option<PathBuf>,
    _mount: Option<Mount>,
}

impl Drop for Contender {
    /// bindfs unmounted even when a timing panics, so that the drive can be unmounted.
    fn drop(&mut self) {
        if self.kind == Kind::Bindfs {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
    }
}

/// The process serving a FUSE mountpoint, found by its command line.
fn daemon_pid(mnt: &Path) -> Option<u32> {
    let want = mnt.to_str()?;
    for e in fs::read_dir("/proc").ok()? {
        let e = e.ok()?;
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.contains(&want.as_bytes())
            && args
                .first()
                .is_some_and(|a| a.ends_with(b"backpocket") || a.ends_with(b"bindfs"))
        {
            return Some(pid);
        }
    }
    None
}

fn rss_mib(pid: u32) -> Option<f64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Waits until the pocket's journal has drained to its destinations, so the next timing does
/// not share the disk with this contender's replication.
fn wait_drained(pocket: &Path) {
    let start = Instant::now();
    loop {
        let out = Command::new(bin())
            .args(["journal", "status", "--json", "--pocket"])
            .arg(pocket)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["pending_records"].as_u64() == Some(0) {
            return;
        }
        if start.elapsed() > Duration::from_secs(300) {
            eprintln!(
                "  warning: {} still not drained after 300 s",
                pocket.display()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds = env("BENCH_ROUNDS", 3).max(1);
    let mb = env("BENCH_FILE_MB", 512);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let base = workdir("workloads");
    let drive = Drive::new(base.path());
    set_drive(&drive.dir);
    // Every backpocket command of this run, and the mounts' daemons, share one key store.
    std::env::set_var("XDG_CONFIG_HOME", base.path().join("config"));
    std::env::set_var("BACKPOCKET_PASSPHRASE", PASS);
    std::env::set_var("BACKPOCKET_LOG", "warn");
    let data = prepare(base.path(), drive.fs == "exfat");
    eprintln!(
        "backpocket workloads benchmark: /usr/include ({} entries), {} files rewritten, {} MiB file, {rounds} rounds, in {}{}",
        data.entries,
        data.files.len(),
        mb,
        drive.dir.display(),
        if drive.mounted {
            format!(" (a fresh {} image)", drive.fs)
        } else {
            String::new()
        }
    );
    if data.krate.is_none() {
        eprintln!("  SKIPPED: cargo build (no regex-syntax 0.8 in cargo's registry cache)");
    }
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|o| name.starts_with(o));
    let mut contenders = Vec::new();
    let plain = drive.dir.join("plain");
    fs::create_dir(&plain).unwrap();
    contenders.push(Contender {
        name: "plain folder",
        dir: plain,
        kind: Kind::Plain,
        pocket: None,
        _mount: None,
    });
    let pocket = |name: &'static str, tag: &str, args: &[&str], dest: bool| {
        let m = Mount::prepare(&drive.dir, tag);
        if dest {
            let vault = base.path().join(format!("{tag}-vault"));
            sh(Command::new(bin())
                .args(["dest", "add", "disk"])
                .arg(&vault)
                .arg("--pocket")
                .arg(&m.root));
        }
        let m = m.mount(tag, args);
        Contender {
            name,
            dir: m.mnt.clone(),
            kind: Kind::Mount,
            pocket: dest.then(|| m.root.clone()),
            _mount: Some(m),
        }
    };
    if wanted("mount") {
        contenders.push(pocket("mount", "mount", &[], true));
    }
    if wanted("daemon") {
        contenders.push(pocket(
            "mount, daemon path",
            "daemon",
            &["--no-passthrough"],
            true,
        ));
    }
    if wanted("journal-off") {
        contenders.push(pocket(
            "mount, journal off",
            "nojournal",
            &["--no-journal"],
            false,
        ));
    }
    if wanted("bindfs") {
        let src = drive.dir.join("bindfs-src");
        let mnt = drive.dir.join("bindfs-mnt");
        fs::create_dir(&src).unwrap();
        fs::create_dir(&mnt).unwrap();
        match Command::new("bindfs").arg(&src).arg(&mnt).status() {
            Ok(s) if s.success() => contenders.push(Contender {
                name: "bindfs",
                dir: mnt,
                kind: Kind::Bindfs,
                pocket: None,
                _mount: None,
            }),
            _ => eprintln!("  SKIPPED: bindfs (not installed: apt-get install bindfs)"),
        }
    }
    type Work<'a> = (&'static str, Box<dyn Fn(&Path) -> Duration + 'a>);
    let mut works: Vec<Work> = vec![
        (
            "extract a tar of /usr/include + syncfs",
            Box::new(|d| extract(d, &data)),
        ),
        ("ls -lR (attributes fetched once)", Box::new(ls_lr)),
        ("find -type f, du -s", Box::new(find_du)),
        (
            "rewrite files in place (r+, 16 bytes) + syncfs",
            Box::new(|d| rewrite(d, &data)),
        ),
        ("delete the tree + syncfs", Box::new(delete)),
        (
            "git clone (file://) + git status + syncfs",
            Box::new(|d| clone_status(d, &data)),
        ),
    ];
    if data.krate.is_some() {
        works.push((
            "cargo build of regex-syntax (debug) + syncfs",
            Box::new(|d| build(d, &data)),
        ));
    }
    works.push((
        "sequential write + fsync",
        Box::new(move |d| seq_write(d, mb)),
    ));
    works.push(("sequential read (cold)", Box::new(move |d| seq_read(d, mb))));
    let mut results: BTreeMap<(usize, &str), Vec<Duration>> = BTreeMap::new();
    let mut rss: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        let order: Vec<usize> = (0..contenders.len())
            .map(|i| (i + round) % contenders.len())
            .collect();
        for (wi, (_, w)) in works.iter().enumerate() {
            for &ci in &order {
                let c = &contenders[ci];
                if let Some(p) = &c.pocket {
                    wait_drained(p);
                }
                rustix::fs::sync();
                std::thread::sleep(Duration::from_millis(300));
                let t = w(&c.dir);
                results.entry((wi, c.name)).or_default().push(t);
                if wi == 0 && c.kind != Kind::Plain {
                    if let Some(m) = daemon_pid(&c.dir).and_then(rss_mib) {
                        rss.entry(c.name).or_default().push(m);
                    }
                }
            }
        }
        eprintln!("  round {} done", round + 1);
    }
    println!();
    println!("| workload | contender | median s (min-max) | speed vs plain folder |");
    println!("| --- | --- | --- | --- |");
    for (wi, (wname, _)) in works.iter().enumerate() {
        let (plain_med, _, _) = stats(&results[&(wi, "plain folder")]);
        for c in &contenders {
            let (med, min, max) = stats(&results[&(wi, c.name)]);
            println!(
                "| {wname} | {} | {med:.3} ({min:.3}-{max:.3}) | {:.2} |",
                c.name,
                plain_med / med
            );
        }
    }
    if contenders.iter().any(|c| c.name == "mount, journal off")
        && contenders.iter().any(|c| c.name == "mount")
    {
        println!();
        println!("| workload | journal and replication: time off / time on |");
        println!("| --- | --- |");
        for (wi, (wname, _)) in works.iter().enumerate() {
            let (on, _, _) = stats(&results[&(wi, "mount")]);
            let (off, _, _) = stats(&results[&(wi, "mount, journal off")]);
            println!("| {wname} | {:.2} |", off / on);
        }
    }
    println!();
    for (name, v) in &rss {
        let v: Vec<Duration> = v.iter().map(|m| Duration::from_secs_f64(*m)).collect();
        let (med, min, max) = stats(&v);
        println!("daemon RSS after the extract, {name}: {med:.0} MiB ({min:.0}-{max:.0})");
    }
}
