//! Replication against the tools people know, on one generated data set, side by side:
//! first protection (`cp -a`, `rsync -a`, `restic backup`, `borg create`, `backpocket sync`
//! to a local vault), incremental protection after changing about 1% of the data, restore,
//! and the protection delay of a mounted pocket (close in the mount -> durable in the vault).
//!
//! Contenders alternate within each round (who goes first rotates); every timing ends with
//! `sync`, as a backup must be durable. Data set size: BENCH_DATA_MB (default 1024), rounds:
//! BENCH_ROUNDS (default 3), delay samples: BENCH_DELAY_FILES (default 100).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::dataset::{du, have, mutate, prepare, sh, timed, Rng, Table};
use common::{bin, drop_caches, env, stats};

const PASS: &str = "benchmark passphrase";

fn bp(args: &[&str], cfg: &Path) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env("XDG_CONFIG_HOME", cfg)
        .env("BACKPOCKET_LOG", "warn");
    c
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
    let (work, bytes) = prepare("repl", total_mb);
    let base = work.path();
    let cfg = base.join("config");
    let src = base.join("pocket");
    let files = walk_count(&src);
    eprintln!("  {files} files");
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
