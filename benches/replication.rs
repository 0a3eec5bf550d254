//! Replication against the tools people know, on one generated data set, side by side:
//! first protection (`cp -a`, `rsync -a`, `restic backup`, `borg create`, `backpocket sync`
//! to a local vault), incremental protection after changing about 1% of the data, restore,
//! and the protection delay of a mounted pocket (close in the mount -> durable in the vault).
//!
//! Contenders alternate within each round (who goes first rotates); every timing ends with
//! `sync`, as a backup must be durable. Data set size: BENCH_DATA_MB (default 1024), rounds:
//! BENCH_ROUNDS (default 3), delay samples: BENCH_DELAY_FILES (default 100).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{bin, drop_caches, env, stats, workdir};

const PASS: &str = "benchmark passphrase";

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn du(p: &Path) -> u64 {
    let out = Command::new("du").arg("-sb").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0)
}

fn sync_all() {
    rustix::fs::sync();
}

/// Timed, ending with everything durable.
fn timed(f: impl FnOnce()) -> Duration {
    sync_all();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    f();
    sync_all();
    t.elapsed()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill_random(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    /// Text-like bytes: words from a small vocabulary (compresses about 3-4x with zstd).
    fn fill_text(&mut self, buf: &mut [u8]) {
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
    fn fill(&mut self, buf: &mut [u8], compressible: bool) {
        if compressible {
            self.fill_text(buf)
        } else {
            self.fill_random(buf)
        }
    }
}

/// Tens of thousands of small files in nested folders and a few large ones, half of the bytes
/// compressible. Returns the bytes written.
fn generate(root: &Path, total_mb: usize) -> u64 {
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
fn mutate(root: &Path, round: u64, total_mb: usize) -> u64 {
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

fn bp(args: &[&str], cfg: &Path) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env("XDG_CONFIG_HOME", cfg)
        .env("BACKPOCKET_LOG", "warn");
    c
}

#[derive(Default)]
struct Table {
    rows: BTreeMap<(String, String), Vec<Duration>>,
    bytes: BTreeMap<(String, String), Vec<u64>>,
}

impl Table {
    fn add(&mut self, section: &str, who: &str, d: Duration) {
        eprintln!("    {section:<12} {who:<12} {:.2}s", d.as_secs_f64());
        self.rows
            .entry((section.into(), who.into()))
            .or_default()
            .push(d);
    }
    fn bytes(&mut self, section: &str, who: &str, b: u64) {
        self.bytes
            .entry((section.into(), who.into()))
            .or_default()
            .push(b);
    }
    fn median(&self, section: &str, who: &str) -> Option<f64> {
        self.rows
            .get(&(section.into(), who.into()))
            .map(|v| stats(v).0)
    }
    fn print(&self, section: &str, baseline: &str, extra: &str) {
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

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let total_mb = env("BENCH_DATA_MB", 1024);
    let rounds = env("BENCH_ROUNDS", 3);
    let tools: Vec<&str> = ["restic", "borg", "rsync"]
        .into_iter()
        .filter(|t| have(t))
        .collect();
    eprintln!("replication benchmark: {total_mb} MiB, {rounds} rounds, other tools: {tools:?}");
    let work = workdir("repl");
    let base = work.path();
    let cfg = base.join("config");
    let src = base.join("pocket");
    std::fs::create_dir_all(&src).unwrap();
    let t = Instant::now();
    let bytes = generate(&src, total_mb);
    let files = walk_count(&src);
    eprintln!(
        "  generated {:.0} MiB in {files} files ({:.1}s)",
        bytes as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );
    sh(&mut bp(&["init", src.to_str().unwrap()], &cfg));
    let mut table = Table::default();
    let mut made_key = false;
    for round in 0..rounds as u64 {
        eprintln!("  round {}", round + 1);
        let rd = base.join(format!("round-{round}"));
        std::fs::create_dir_all(&rd).unwrap();
        let mut first: Vec<&str> = vec!["cp -a", "backpocket"];
        first.extend(tools.iter().copied());
        let n = first.len();
        first.rotate_left(round as usize % n);
        let vault = rd.join("vault");
        for who in &first {
            match *who {
                "cp -a" => {
                    let d = timed(|| sh(Command::new("cp").arg("-a").arg(&src).arg(rd.join("cp"))));
                    table.add("first", who, d);
                    table.bytes("first", who, du(&rd.join("cp")));
                }
                "rsync" => {
                    let d = timed(|| {
                        sh(Command::new("rsync")
                            .args(["-a", "--exclude", ".backpocket"])
                            .arg(format!("{}/", src.display()))
                            .arg(rd.join("rsync")))
                    });
                    table.add("first", "rsync -a", d);
                    table.bytes("first", "rsync -a", du(&rd.join("rsync")));
                }
                "restic" => {
                    let repo = rd.join("restic");
                    sh(Command::new("restic")
                        .args(["init", "-q", "-r"])
                        .arg(&repo)
                        .env("RESTIC_PASSWORD", PASS));
                    let d = timed(|| {
                        sh(Command::new("restic")
                            .args(["backup", "-q", "--exclude", ".backpocket", "-r"])
                            .arg(&repo)
                            .arg(&src)
                            .env("RESTIC_PASSWORD", PASS))
                    });
                    table.add("first", "restic", d);
                    table.bytes("first", "restic", du(&repo));
                }
                "borg" => {
                    let repo = rd.join("borg");
                    sh(Command::new("borg")
                        .args(["init", "-e", "repokey"])
                        .arg(&repo)
                        .env("BORG_PASSPHRASE", PASS));
                    let d = timed(|| {
                        sh(Command::new("borg")
                            .args(["create", "--exclude", "*/.backpocket"])
                            .arg(format!("{}::first", repo.display()))
                            .arg(&src)
                            .env("BORG_PASSPHRASE", PASS))
                    });
                    table.add("first", "borg", d);
                    table.bytes("first", "borg", du(&repo));
                }
                _ => {
                    let mut add = bp(
                        &[
                            "dest",
                            "add",
                            "bench",
                            vault.to_str().unwrap(),
                            "--pocket",
                            src.to_str().unwrap(),
                        ],
                        &cfg,
                    );
                    if !made_key {
                        add.env("BACKPOCKET_PASSPHRASE", PASS);
                        made_key = true;
                    }
                    sh(&mut add);
                    let d =
                        timed(|| sh(&mut bp(&["sync", "--pocket", src.to_str().unwrap()], &cfg)));
                    table.add("first", "backpocket", d);
                    table.bytes("first", "backpocket", du(&vault));
                }
            }
        }
        // About 1% changed, then every contender's incremental run.
        let changed = mutate(&src, round, total_mb);
        table.bytes("changed", "bytes", changed);
        let mut incr: Vec<&str> = vec!["backpocket"];
        incr.extend(tools.iter().copied());
        let n = incr.len();
        incr.rotate_left(round as usize % n);
        for who in &incr {
            match *who {
                "rsync" => {
                    let before = du(&rd.join("rsync"));
                    let d = timed(|| {
                        sh(Command::new("rsync")
                            .args(["-a", "--delete", "--exclude", ".backpocket"])
                            .arg(format!("{}/", src.display()))
                            .arg(rd.join("rsync")))
                    });
                    table.add("incremental", "rsync -a", d);
                    table.bytes(
                        "incremental",
                        "rsync -a",
                        du(&rd.join("rsync")).saturating_sub(before),
                    );
                }
                "restic" => {
                    let repo = rd.join("restic");
                    let before = du(&repo);
                    let d = timed(|| {
                        sh(Command::new("restic")
                            .args(["backup", "-q", "--exclude", ".backpocket", "-r"])
                            .arg(&repo)
                            .arg(&src)
                            .env("RESTIC_PASSWORD", PASS))
                    });
                    table.add("incremental", "restic", d);
                    table.bytes("incremental", "restic", du(&repo).saturating_sub(before));
                }
                "borg" => {
                    let repo = rd.join("borg");
                    let before = du(&repo);
                    let d = timed(|| {
                        sh(Command::new("borg")
                            .args(["create", "--exclude", "*/.backpocket"])
                            .arg(format!("{}::second", repo.display()))
                            .arg(&src)
                            .env("BORG_PASSPHRASE", PASS))
                    });
                    table.add("incremental", "borg", d);
                    table.bytes("incremental", "borg", du(&repo).saturating_sub(before));
                }
                _ => {
                    let before = du(&vault);
                    let d =
                        timed(|| sh(&mut bp(&["sync", "--pocket", src.to_str().unwrap()], &cfg)));
                    table.add("incremental", "backpocket", d);
                    table.bytes(
                        "incremental",
                        "backpocket",
                        du(&vault).saturating_sub(before),
                    );
                }
            }
        }
        // Restore everything, cold caches, into new folders.
        let mut rest: Vec<&str> = vec!["cp -a", "backpocket"];
        rest.extend(tools.iter().copied().filter(|t| *t != "rsync"));
        let n = rest.len();
        rest.rotate_left(round as usize % n);
        for who in &rest {
            drop_caches();
            let out = rd.join(format!("restore-{}", who.replace(' ', "")));
            match *who {
                "cp -a" => {
                    let d = timed(|| sh(Command::new("cp").arg("-a").arg(rd.join("cp")).arg(&out)));
                    table.add("restore", who, d);
                }
                "restic" => {
                    let d = timed(|| {
                        sh(Command::new("restic")
                            .args(["restore", "latest", "-q", "-r"])
                            .arg(rd.join("restic"))
                            .arg("--target")
                            .arg(&out)
                            .env("RESTIC_PASSWORD", PASS))
                    });
                    table.add("restore", "restic", d);
                }
                "borg" => {
                    std::fs::create_dir_all(&out).unwrap();
                    let d = timed(|| {
                        sh(Command::new("borg")
                            .arg("extract")
                            .arg(format!("{}::second", rd.join("borg").display()))
                            .current_dir(&out)
                            .env("BORG_PASSPHRASE", PASS))
                    });
                    table.add("restore", "borg", d);
                }
                _ => {
                    let d = timed(|| {
                        sh(&mut bp(
                            &[
                                "restore",
                                "--from",
                                "bench",
                                "--to",
                                out.to_str().unwrap(),
                                "--pocket",
                                src.to_str().unwrap(),
                            ],
                            &cfg,
                        ))
                    });
                    table.add("restore", "backpocket", d);
                }
            }
            let _ = std::fs::remove_dir_all(&out);
        }
        sh(&mut bp(
            &["dest", "remove", "bench", "--pocket", src.to_str().unwrap()],
            &cfg,
        ));
        let _ = std::fs::remove_dir_all(&rd);
    }
    let changed = {
        let mut v = table
            .bytes
            .get(&("changed".into(), "bytes".into()))
            .cloned()
            .unwrap_or_default();
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "\ndata set: {:.0} MiB, {files} files (half the bytes compressible), {rounds} rounds",
        bytes as f64 / 1048576.0
    );
    table.print("first", "cp -a", "");
    table.print(
        "incremental",
        "rsync -a",
        &format!("; {:.1} MiB changed (median)", changed as f64 / 1048576.0),
    );
    table.print("restore", "cp -a", "");
    protection_delay(base, &cfg);
}

fn walk_count(d: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![d.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                n += 1;
            }
        }
    }
    n
}

/// Close in the mount -> durable in a local vault, per file, one file at a time.
fn protection_delay(base: &Path, cfg: &Path) {
    let samples = env("BENCH_DELAY_FILES", 100);
    let root = base.join("delay-pocket");
    let mnt = base.join("delay-mnt");
    let vault = base.join("delay-vault");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    sh(&mut bp(&["init", root.to_str().unwrap()], cfg));
    sh(bp(
        &[
            "dest",
            "add",
            "v",
            vault.to_str().unwrap(),
            "--pocket",
            root.to_str().unwrap(),
        ],
        cfg,
    )
    .env("BACKPOCKET_PASSPHRASE", PASS));
    sh(&mut bp(
        &[
            "mount",
            "--daemon",
            root.to_str().unwrap(),
            mnt.to_str().unwrap(),
        ],
        cfg,
    ));
    let journal_db = root.join(".backpocket/journal.db");
    let mut delays = Vec::new();
    let mut rng = Rng(99);
    for i in 0..samples {
        let reader = journal::Reader::open(&journal_db).unwrap();
        let before = reader.status().unwrap().last_seq;
        let mut buf = vec![0u8; 64 * 1024];
        rng.fill(&mut buf, i % 2 == 0);
        std::fs::write(mnt.join(format!("doc-{i}.txt")), &buf).unwrap();
        let closed = Instant::now();
        // Durable in the vault: the create and content records committed and the cursor past them.
        loop {
            let s = reader.status().unwrap();
            let cursor = reader.cursor("v").unwrap().unwrap_or(0);
            if s.last_seq >= before + 2 && cursor >= s.last_seq {
                break;
            }
            assert!(
                closed.elapsed() < Duration::from_secs(30),
                "not protected after 30 s"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
        delays.push(closed.elapsed());
    }
    let _ = Command::new(bin())
        .args(["unmount", mnt.to_str().unwrap()])
        .output();
    let (med, lo, hi) = stats(&delays);
    println!("\nprotection delay (close in the mount -> durable in a local vault), {samples} files of 64 KiB");
    println!("| median s | min s | worst s | target |");
    println!("| --- | --- | --- | --- |");
    println!("| {med:.3} | {lo:.3} | {hi:.3} | median < 0.5, worst < 1 |");
}
