//! The data set the replication benchmarks share, and how they time and report.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::stats;

pub fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn du(p: &Path) -> u64 {
    let out = Command::new("du").arg("-sb").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0)
}

pub fn sync_all() {
    rustix::fs::sync();
}

/// Timed, ending with everything durable.
pub fn timed(f: impl FnOnce()) -> Duration {
    sync_all();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    f();
    sync_all();
    t.elapsed()
}

pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn fill_random(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    /// Text-like bytes: words from a small vocabulary (compresses about 3-4x with zstd).
    pub fn fill_text(&mut self, buf: &mut [u8]) {
        const WORDS: [&str; 16] = [
            "backup ", "pocket ", "journal ", "the ", "of ", "drive ", "restore ", "data ", "and ",
            "vault ", "chunk ", "file ", "report\n", "2026 ", "mirror ", "office ",
        ];
        let mut i = 0;
        while i < buf.len() {
            let w = WORDS[(self.next() % 16) as usize].as_bytes();
            let n = w.len().min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&w[..n]);
            i += n;
        }
    }
    pub fn fill(&mut self, buf: &mut [u8], compressible: bool) {
        if compressible {
            self.fill_text(buf)
        } else {
            self.fill_random(buf)
        }
    }
}

/// Tens of thousands of small files in nested folders and a few large ones, half of the bytes
/// compressible. Returns the bytes written.
pub fn generate(root: &Path, total_mb: usize) -> u64 {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let small_files = (total_mb * 20).max(100); // 20,000 for 1 GiB
    let mut written = 0u64;
    for i in 0..small_files {
        let dir = root.join(format!("projects/p{:02}/d{:03}", i % 20, i % 400));
        std::fs::create_dir_all(&dir).unwrap();
        let size = 1024 + (rng.next() % (24 * 1024)) as usize;
        let mut buf = vec![0u8; size];
        rng.fill(&mut buf, i % 2 == 0);
        std::fs::write(dir.join(format!("f{i:06}.dat")), &buf).unwrap();
        written += size as u64;
    }
    let big_total = (total_mb as u64) << 20;
    let big_total = big_total.saturating_sub(written);
    let big_count = 8;
    std::fs::create_dir_all(root.join("media")).unwrap();
    for i in 0..big_count {
        let size = (big_total / big_count) as usize;
        let mut buf = vec![0u8; size];
        rng.fill(&mut buf, i % 2 == 0);
        std::fs::write(root.join(format!("media/big-{i}.bin")), &buf).unwrap();
        written += size as u64;
    }
    written
}

/// About 1% of the data changed: small files rewritten, added and deleted, and a region in
/// the middle of two large files. Returns the bytes changed.
pub fn mutate(root: &Path, round: u64, total_mb: usize) -> u64 {
    let mut rng = Rng(0xfeed_0000 + round * 7919 + 1);
    let small_files = (total_mb * 20).max(100);
    let mut changed = 0u64;
    let n = small_files / 100;
    for k in 0..n {
        let i = (rng.next() as usize) % small_files;
        let p = root.join(format!(
            "projects/p{:02}/d{:03}/f{i:06}.dat",
            i % 20,
            i % 400
        ));
        if p.exists() {
            let size = 1024 + (rng.next() % (24 * 1024)) as usize;
            let mut buf = vec![0u8; size];
            rng.fill(&mut buf, k % 2 == 0);
            std::fs::write(&p, &buf).unwrap();
            changed += size as u64;
        }
    }
    for k in 0..n / 4 {
        let dir = root.join(format!("projects/new-{round}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut buf = vec![0u8; 8192];
        rng.fill(&mut buf, k % 2 == 0);
        std::fs::write(dir.join(format!("n{k}.dat")), &buf).unwrap();
        changed += 8192;
    }
    for _ in 0..n / 4 {
        let i = (rng.next() as usize) % small_files;
        let _ = std::fs::remove_file(root.join(format!(
            "projects/p{:02}/d{:03}/f{i:06}.dat",
            i % 20,
            i % 400
        )));
    }
    let region = (((total_mb as u64) << 20) / 100).saturating_sub(changed);
    for b in [0, 1] {
        let p = root.join(format!("media/big-{b}.bin"));
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        let len = f.metadata().unwrap().len();
        let mut buf = vec![0u8; (region / 2) as usize];
        rng.fill(&mut buf, b == 0);
        std::os::unix::fs::FileExt::write_all_at(&f, &buf, len / 2).unwrap();
        changed += buf.len() as u64;
    }
    changed
}

#[derive(Default)]
pub struct Table {
    pub rows: BTreeMap<(String, String), Vec<Duration>>,
    pub bytes: BTreeMap<(String, String), Vec<u64>>,
}

impl Table {
    pub fn add(&mut self, section: &str, who: &str, d: Duration) {
        eprintln!("    {section:<12} {who:<12} {:.2}s", d.as_secs_f64());
        self.rows
            .entry((section.into(), who.into()))
            .or_default()
            .push(d);
    }
    pub fn bytes(&mut self, section: &str, who: &str, b: u64) {
        self.bytes
            .entry((section.into(), who.into()))
            .or_default()
            .push(b);
    }
    pub fn median(&self, section: &str, who: &str) -> Option<f64> {
        self.rows
            .get(&(section.into(), who.into()))
            .map(|v| stats(v).0)
    }
    pub fn print(&self, section: &str, baseline: &str, extra: &str) {
        println!("\n{section} (ratio = contender time / {baseline} time; lower is faster){extra}");
        println!(
            "| contender | median s (min-max) | ratio to {baseline} | destination bytes (median) |"
        );
        println!("| --- | --- | --- | --- |");
        let base = self.median(section, baseline).unwrap_or(f64::NAN);
        for ((s, who), v) in &self.rows {
            if s != section {
                continue;
            }
            let (m, lo, hi) = stats(v);
            let b = self.bytes.get(&(s.clone(), who.clone())).map(|b| {
                let mut b = b.clone();
                b.sort();
                format!("{:.1} MiB", b[b.len() / 2] as f64 / 1048576.0)
            });
            println!(
                "| {who} | {m:.2} ({lo:.2}-{hi:.2}) | {:.2} | {} |",
                m / base,
                b.unwrap_or_default()
            );
        }
    }
}

/// The benchmark's working folder with a freshly generated data set in `pocket/`; says how
/// long generating took. Returns (work dir, bytes generated).
pub fn prepare(tag: &str, total_mb: usize) -> (tempfile::TempDir, u64) {
    let work = super::workdir(tag);
    let src = work.path().join("pocket");
    std::fs::create_dir_all(&src).unwrap();
    let t = Instant::now();
    let bytes = generate(&src, total_mb);
    eprintln!(
        "  generated {:.0} MiB ({:.1}s)",
        bytes as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );
    (work, bytes)
}
