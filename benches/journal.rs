//! The journal's figures: `journal status` with a million records pending (the promise: an
//! answer within 100 ms), the writer's throughput getting there, and a scan of an unchanged
//! pocket against `find` stat-ing every file (the contract: at most twice).
//!
//!     cargo bench --bench journal
//!     BENCH_RECORDS=1000000 BENCH_SCAN_FILES=100000 BENCH_ROUNDS=5 cargo bench --bench journal

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use journal::{Change, Journal, Kind, Meta, Reader};

fn meta(size: u64) -> Meta {
    Meta {
        kind: Kind::File,
        perm: 0o644,
        uid: 0,
        gid: 0,
        size,
        mtime_ns: 0,
        ctime_ns: 0,
        rdev: 0,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let records = env("BENCH_RECORDS", 1_000_000);
    let files = env("BENCH_SCAN_FILES", 100_000);
    let rounds = env("BENCH_ROUNDS", 5).max(3);
    let base = workdir("journal");

    // 1. A journal with `records` pending: 10% creates of new files, the rest content changes.
    let root = base.path().join("pocket");
    fs::create_dir_all(root.join(".backpocket")).unwrap();
    let db = root.join(".backpocket/journal.db");
    fs::write(
        root.join(".backpocket/config.toml"),
        "format = 1\nid = \"bench\"\n",
    )
    .unwrap();
    let j = Journal::create(&db, fs::metadata(&root).unwrap().ino()).unwrap();
    let h = j.handle();
    let nfiles = (records / 10).max(1) as u64;
    let t = Instant::now();
    for i in 0..records as u64 {
        if i < nfiles {
            h.record(Change::Create {
                parent: fs::metadata(&root).unwrap().ino(),
                name: format!("file-{i:07}").into_bytes(),
                file: 1_000_000 + i,
                meta: meta(0),
            });
        } else {
            h.record(Change::Content {
                file: 1_000_000 + i % nfiles,
                meta: meta(4096 + i % 100_000),
            });
        }
    }
    h.sync().unwrap();
    let fill = t.elapsed();
    j.close().unwrap();
    println!();
    println!(
        "journal writer: {records} records committed in {:.2} s ({:.0} records/s, group commit, NORMAL sync)",
        fill.as_secs_f64(),
        records as f64 / fill.as_secs_f64()
    );

    // 2. Status, in-process and as the command a person runs.
    let mut lib = Vec::new();
    let mut cmd = Vec::new();
    for _ in 0..rounds {
        lib.push(time(|| {
            let s = Reader::open(&db).unwrap().status().unwrap();
            assert_eq!(s.pending_records, records as u64);
        }));
        cmd.push(time(|| {
            let out = Command::new(bin())
                .args([
                    "journal",
                    "status",
                    "--json",
                    "--pocket",
                    root.to_str().unwrap(),
                ])
                .output()
                .unwrap();
            assert!(out.status.success());
        }));
    }
    let (lm, lmin, lmax) = stats(&lib);
    let (cm, cmin, cmax) = stats(&cmd);
    println!("| measure | median ms (min-max), {rounds} runs |");
    println!("| --- | --- |");
    println!(
        "| status with {records} records pending (library) | {:.1} ({:.1}-{:.1}) |",
        lm * 1e3,
        lmin * 1e3,
        lmax * 1e3
    );
    println!(
        "| `backpocket journal status --json` (whole process) | {:.1} ({:.1}-{:.1}) |",
        cm * 1e3,
        cmin * 1e3,
        cmax * 1e3
    );

    // 3. Scan of an unchanged pocket against find stat-ing every file, alternating.
    let scan_root = base.path().join("scanned");
    fs::create_dir(&scan_root).unwrap();
    for i in 0..files {
        let d = scan_root.join(format!("d{:03}", i % 500));
        if i < 500 {
            fs::create_dir(&d).unwrap();
        }
        fs::write(d.join(format!("f{i}")), b"x").unwrap();
    }
    run(&["init", scan_root.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(50));
    run(&["scan", "--pocket", scan_root.to_str().unwrap()]);
    let mut scan = Vec::new();
    let mut find = Vec::new();
    for r in 0..rounds {
        let mut s = || {
            scan.push(time(|| {
                run(&["scan", "--pocket", scan_root.to_str().unwrap()]);
            }))
        };
        let mut f = || {
            find.push(time(|| {
                let out = Command::new("find")
                    .arg(&scan_root)
                    .args(["-printf", "%s %T@ %C@ %i\\n"])
                    .output()
                    .unwrap();
                assert!(out.status.success());
            }))
        };
        if r % 2 == 0 {
            s();
            f();
        } else {
            f();
            s();
        }
    }
    let (sm, smin, smax) = stats(&scan);
    let (fm, fmin, fmax) = stats(&find);
    println!();
    println!("| {files} unchanged files, warm cache | median s (min-max) | ratio to find |");
    println!("| --- | --- | --- |");
    println!("| `find -printf` (stats every file) | {fm:.3} ({fmin:.3}-{fmax:.3}) | 1.00 |");
    println!(
        "| `backpocket scan` | {sm:.3} ({smin:.3}-{smax:.3}) | {:.2} |",
        sm / fm
    );
}
