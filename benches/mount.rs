//! The mount against the plain pocket folder, side by side in one run: sequential write and
//! read of a large file (ended by fsync), creating, stat-ing (by path, and as `ls -l` does)
//! and deleting many small files (ended by syncfs); and the mount with the journal against
//! the mount without it.
//!
//!     cargo bench --bench mount                 # 1 GiB file, 10,000 files, 3 rounds
//!     BENCH_FILE_MB=256 BENCH_FILES=2000 BENCH_ROUNDS=5 cargo bench --bench mount
//!
//! Contenders run alternately within each round, so a noisy neighbour hits them all alike.
//! Ratios are speed relative to the plain folder (plain time / contender time): 1.0 is as fast,
//! 0.5 is twice as slow.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::*;

fn seq_write(dir: &Path, mb: usize) -> Duration {
    let path = dir.join("big");
    let _ = fs::remove_file(&path);
    drop_caches();
    write_big(&path, mb)
}

fn seq_read(dir: &Path, mb: usize) -> Duration {
    read_big(&dir.join("big"), mb)
}

fn create_files(dir: &Path, n: usize) -> Duration {
    let d = dir.join("small");
    let _ = fs::remove_dir_all(&d);
    fs::create_dir(&d).unwrap();
    syncfs(dir);
    let data = [7u8; 1024];
    time(|| {
        for i in 0..n {
            let mut f = File::create(d.join(format!("f{i:05}"))).unwrap();
            f.write_all(&data).unwrap();
        }
        syncfs(dir);
    })
}

fn stat_files(dir: &Path, n: usize) -> Duration {
    let d = dir.join("small");
    time(|| {
        for i in 0..n {
            let m = fs::symlink_metadata(d.join(format!("f{i:05}"))).unwrap();
            assert_eq!(m.len(), 1024);
        }
    })
}

/// What `ls -l`, `find` and `du` do: list the folder, then stat each entry. Run on a second
/// set of just-written files (untimed writing), so its attributes are as stale as the first's.
fn list_stat_files(dir: &Path, n: usize) -> Duration {
    let d = dir.join("listed");
    let _ = fs::remove_dir_all(&d);
    fs::create_dir(&d).unwrap();
    for i in 0..n {
        fs::write(d.join(format!("f{i:05}")), [7u8; 1024]).unwrap();
    }
    syncfs(dir);
    let t = time(|| {
        let mut seen = 0;
        for e in fs::read_dir(&d).unwrap() {
            let m = fs::symlink_metadata(e.unwrap().path()).unwrap();
            assert_eq!(m.len(), 1024);
            seen += 1;
        }
        assert_eq!(seen, n);
    });
    fs::remove_dir_all(&d).unwrap();
    t
}

/// Writes over the start of each small file in place (no truncation), as a database or an
/// editor that saves in place does: on the mount, the first such open of a file in a session
/// waits for the journal to mark it unsynced durably.
fn rewrite_files(dir: &Path, n: usize) -> Duration {
    use std::os::unix::fs::FileExt;
    let d = dir.join("small");
    let data = [9u8; 512];
    time(|| {
        for i in 0..n {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(d.join(format!("f{i:05}")))
                .unwrap();
            f.write_all_at(&data, 0).unwrap();
        }
        syncfs(dir);
    })
}

fn delete_files(dir: &Path, n: usize) -> Duration {
    let d = dir.join("small");
    time(|| {
        for i in 0..n {
            fs::remove_file(d.join(format!("f{i:05}"))).unwrap();
        }
        syncfs(dir);
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mb = env("BENCH_FILE_MB", 1024);
    let n = env("BENCH_FILES", 10_000);
    let rounds = env("BENCH_ROUNDS", 3).max(1);
    let base = workdir("mount");
    set_drive(base.path());
    eprintln!(
        "backpocket mount benchmark: {mb} MiB file, {n} small files, {rounds} rounds, in {}{}",
        base.path().display(),
        if is_root() {
            ""
        } else {
            " (not root: page cache not dropped before reads)"
        }
    );
    let plain = base.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let journal = Mount::new(base.path(), "journal", &[]);
    let nojournal = Mount::new(base.path(), "nojournal", &["--no-journal"]);
    let daemon = Mount::new(base.path(), "daemon", &["--no-passthrough"]);
    let contenders: Vec<(&str, &Path)> = vec![
        ("plain folder", &plain),
        ("mount", &journal.mnt),
        ("mount, journal off", &nojournal.mnt),
        ("mount, daemon path", &daemon.mnt),
    ];
    type Results = BTreeMap<(&'static str, String), Vec<Duration>>;
    let mut results: Results = BTreeMap::new();
    type Workload<'a> = (&'static str, &'a dyn Fn(&Path) -> Duration);
    let workloads: [Workload; 7] = [
        ("1 sequential write + fsync", &|d| seq_write(d, mb)),
        ("2 sequential read (cold)", &|d| seq_read(d, mb)),
        ("3 create small files + syncfs", &|d| create_files(d, n)),
        ("4 stat small files by path", &|d| stat_files(d, n)),
        ("5 list + stat small files (ls -l)", &|d| {
            list_stat_files(d, n)
        }),
        ("6 rewrite small files in place + syncfs", &|d| {
            rewrite_files(d, n)
        }),
        ("7 delete small files + syncfs", &|d| delete_files(d, n)),
    ];
    for round in 0..rounds {
        // Rotate who goes first each round.
        let order: Vec<usize> = (0..contenders.len())
            .map(|i| (i + round) % contenders.len())
            .collect();
        for (wname, w) in workloads.iter() {
            for &c in &order {
                let (cname, dir) = contenders[c];
                // Start each timing from a quiet disk: what the previous one left is written.
                rustix::fs::sync();
                std::thread::sleep(Duration::from_millis(300));
                let t = w(dir);
                results
                    .entry((wname, cname.to_string()))
                    .or_default()
                    .push(t);
            }
        }
        for (_, dir) in &contenders {
            let _ = fs::remove_file(dir.join("big"));
        }
        eprintln!("  round {} done", round + 1);
    }
    println!();
    println!("| workload | contender | median s (min-max) | speed vs plain folder |");
    println!("| --- | --- | --- | --- |");
    for (wname, _) in workloads.iter() {
        let (plain_med, _, _) = stats(&results[&(*wname, "plain folder".to_string())]);
        for (cname, _) in &contenders {
            let (med, min, max) = stats(&results[&(*wname, cname.to_string())]);
            println!(
                "| {} | {cname} | {med:.3} ({min:.3}-{max:.3}) | {:.2} |",
                &wname[2..],
                plain_med / med
            );
        }
    }
    println!();
    println!("| workload | journal on vs off (time off / time on) |");
    println!("| --- | --- |");
    for (wname, _) in workloads.iter() {
        let (on, _, _) = stats(&results[&(*wname, "mount".to_string())]);
        let (off, _, _) = stats(&results[&(*wname, "mount, journal off".to_string())]);
        println!("| {} | {:.2} |", &wname[2..], off / on);
    }
}
