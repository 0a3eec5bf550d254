//! Shared by the benchmarks: timing side by side, medians, mounting.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub mod dataset;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_backpocket")
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Empties the page cache so reads come from the drive, as after plugging it in. Root only.
pub fn drop_caches() {
    rustix::fs::sync();
    if is_root() {
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    }
}

/// The passphrase every benchmark's pocket key is made from.
pub const PASS: &str = "benchmark passphrase";

/// The binary with its own config folder, quiet logs and the benchmark passphrase.
pub fn bp(args: &[&str], cfg: &Path) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env("XDG_CONFIG_HOME", cfg)
        .env("BACKPOCKET_LOG", "warn")
        .env("BACKPOCKET_PASSPHRASE", PASS);
    c
}

/// A size or count from the environment, for shorter or longer runs.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn time(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// Median and range of a few timings.
pub fn stats(v: &[Duration]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = v.iter().map(|d| d.as_secs_f64()).collect();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (med, s[0], s[s.len() - 1])
}

/// A pocket mounted for the length of a benchmark.
#[derive(Debug)]
pub struct Mount {
    pub root: PathBuf,
    pub mnt: PathBuf,
}

impl Mount {
    pub fn new(base: &Path, name: &str, args: &[&str]) -> Mount {
        Mount::prepare(base, name).mount(name, args)
    }

    /// A new pocket, not yet mounted, so destinations can be added first.
    pub fn prepare(base: &Path, name: &str) -> Unmounted {
        let root = base.join(format!("{name}-pocket"));
        let mnt = base.join(format!("{name}-mnt"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        run(&["init", root.to_str().unwrap()]);
        Unmounted { root, mnt }
    }
}

/// A pocket made by [`Mount::prepare`].
#[derive(Debug)]
pub struct Unmounted {
    pub root: PathBuf,
    pub mnt: PathBuf,
}

impl Unmounted {
    pub fn mount(self, name: &str, args: &[&str]) -> Mount {
        let mut a = vec![
            "mount",
            "--daemon",
            self.root.to_str().unwrap(),
            self.mnt.to_str().unwrap(),
        ];
        a.extend_from_slice(args);
        let line = run(&a);
        eprintln!("  {name}: {}", line.trim());
        Mount {
            root: self.root,
            mnt: self.mnt,
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new(bin())
            .args(["unmount", self.mnt.to_str().unwrap()])
            .output();
    }
}

pub fn run(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "backpocket {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A folder for benchmark data on the same filesystem as the pockets (not tmpfs).
pub fn workdir(tag: &str) -> tempfile::TempDir {
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    tempfile::Builder::new()
        .prefix(&format!("bp-bench-{tag}"))
        .tempdir_in(base)
        .unwrap()
}

/// Writes `mb` MiB to `path` and fsyncs it: the sequential-write workload.
pub fn write_big(path: &Path, mb: usize) -> Duration {
    use std::io::Write;
    let buf = vec![0x5au8; 1 << 20];
    time(|| {
        let mut f = std::fs::File::create(path).unwrap();
        for _ in 0..mb {
            f.write_all(&buf).unwrap();
        }
        f.sync_all().unwrap();
    })
}

/// Reads `path` (of `mb` MiB) from the drive, the page cache dropped first.
pub fn read_big(path: &Path, mb: usize) -> Duration {
    use std::io::Read;
    drop_caches();
    time(|| {
        let mut f = std::fs::File::open(path).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, mb << 20);
    })
}

static DRIVE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Names the filesystem that holds every contender's backing folder, for [`syncfs`].
pub fn set_drive(dir: &Path) {
    DRIVE.set(dir.to_path_buf()).expect("the drive is set once");
}

/// Ends a timing with the data durable. `syncfs` on a FUSE mount does not reach the drive (the
/// kernel sends it to no daemon but virtiofs'), so the filesystem holding every contender's
/// backing folder is synced as well: the plain folder pays for that just the same.
pub fn syncfs(dir: &Path) {
    let d = std::fs::File::open(dir).unwrap();
    rustix::fs::syncfs(&d).unwrap();
    let drive = std::fs::File::open(DRIVE.get().expect("set_drive first")).unwrap();
    rustix::fs::syncfs(&drive).unwrap();
}
