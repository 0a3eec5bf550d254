//! How much a backup grows for what was changed in place: rounds of ordinary edits (four
//! 256 KiB overwrites in each of two large files, an append and an overwrite in each medium
//! file, small files rewritten), each kind backed up after it by backpocket (a vault), restic
//! and borg side by side; growth = the repository's bytes after minus before, against the
//! bytes the edits wrote. Then a copy of a medium file, which deduplication must store for
//! next to nothing. BENCH_ROUNDS (default 3) rounds; BENCH_LARGE_MB (default 256) per large
//! file.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use common::dataset::{du, have, sh, Rng};
use common::{bp, env, PASS};

fn random(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    rng.fill_random(&mut b);
    b
}

/// The kinds of edits in a round.
const KINDS: [&str; 3] = [
    "large files: 4 overwrites of 256 KiB each",
    "medium files (4 MiB): append 64 KiB, overwrite 64 KiB",
    "small files (8-24 KiB) rewritten",
];

/// One kind of edit; returns the bytes written.
fn edit(src: &Path, rng: &mut Rng, kind: usize) -> u64 {
    let mut written = 0u64;
    match kind {
        0 => {
            for b in 0..2 {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(src.join(format!("large-{b}.bin")))
                    .unwrap();
                let len = f.metadata().unwrap().len();
                for _ in 0..4 {
                    let at = rng.next() % (len - (256 << 10));
                    f.write_all_at(&random(rng, 256 << 10), at).unwrap();
                    written += 256 << 10;
                }
            }
        }
        1 => {
            for m in 0..20 {
                let p = src.join(format!("medium-{m}.bin"));
                let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
                let len = f.metadata().unwrap().len();
                f.write_all_at(&random(rng, 64 << 10), len).unwrap();
                let at = rng.next() % (len - (64 << 10));
                f.write_all_at(&random(rng, 64 << 10), at).unwrap();
                written += 128 << 10;
            }
        }
        _ => {
            for _ in 0..100 {
                let i = rng.next() % 400;
                let n = 8192 + (rng.next() % 16384) as usize;
                std::fs::write(src.join(format!("small/s{i}.txt")), random(rng, n)).unwrap();
                written += n as u64;
            }
        }
    }
    rustix::fs::sync();
    written
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds = env("BENCH_ROUNDS", 3);
    let large_mb = env("BENCH_LARGE_MB", 256);
    let tools: Vec<&str> = ["restic", "borg"].into_iter().filter(|t| have(t)).collect();
    let work =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or("/var/tmp".into())).unwrap();
    let base = work.path();
    let cfg = base.join("config");
    let src = base.join("pocket");
    std::fs::create_dir_all(src.join("small")).unwrap();
    let mut rng = Rng(0x6a09_e667);
    for b in 0..2 {
        std::fs::write(
            src.join(format!("large-{b}.bin")),
            random(&mut rng, large_mb << 20),
        )
        .unwrap();
    }
    for m in 0..20 {
        std::fs::write(
            src.join(format!("medium-{m}.bin")),
            random(&mut rng, 4 << 20),
        )
        .unwrap();
    }
    for i in 0..400 {
        let n = 8192 + (rng.next() % 16384) as usize;
        std::fs::write(src.join(format!("small/s{i}.txt")), random(&mut rng, n)).unwrap();
    }
    eprintln!(
        "growth benchmark: {} MiB of data, {rounds} rounds, beside {tools:?}",
        du(&src) >> 20
    );
    sh(&mut bp(&["init", src.to_str().unwrap()], &cfg));
    let vault = base.join("vault");
    sh(&mut bp(
        &[
            "dest",
            "add",
            "v",
            vault.to_str().unwrap(),
            "--pocket",
            src.to_str().unwrap(),
        ],
        &cfg,
    ));
    let restic = base.join("restic");
    let borg = base.join("borg");
    let backup = |who: &str, n: usize| match who {
        "restic" => sh(Command::new("restic")
            .args(["backup", "-q", "--exclude", ".backpocket", "-r"])
            .arg(&restic)
            .arg(&src)
            .env("RESTIC_PASSWORD", PASS)),
        "borg" => sh(Command::new("borg")
            .args(["create", "--exclude", "*/.backpocket"])
            .arg(format!("{}::r{n}", borg.display()))
            .arg(&src)
            .env("BORG_PASSPHRASE", PASS)),
        _ => sh(&mut bp(&["sync", "--pocket", src.to_str().unwrap()], &cfg)),
    };
    let repo = |who: &str| match who {
        "restic" => restic.clone(),
        "borg" => borg.clone(),
        _ => vault.clone(),
    };
    if tools.contains(&"restic") {
        sh(Command::new("restic")
            .args(["init", "-q", "-r"])
            .arg(&restic)
            .env("RESTIC_PASSWORD", PASS));
    }
    if tools.contains(&"borg") {
        sh(Command::new("borg")
            .args(["init", "-e", "repokey"])
            .arg(&borg)
            .env("BORG_PASSPHRASE", PASS));
    }
    let mut who: Vec<&str> = vec!["backpocket"];
    who.extend(tools.iter().copied());
    for w in &who {
        backup(w, 0);
        eprintln!("  first backup: {w} {} MiB", du(&repo(w)) >> 20);
    }
    // Per tool, per kind of edit (and all kinds together): growth / bytes written.
    let mut ratios: Vec<(String, Vec<Vec<f64>>)> = who
        .iter()
        .map(|w| (w.to_string(), vec![Vec::new(); KINDS.len() + 1]))
        .collect();
    let mut n = 0;
    for r in 0..rounds {
        let mut round_written = 0;
        let mut round_grew: Vec<u64> = vec![0; who.len()];
        for (k, kind) in KINDS.iter().enumerate() {
            let written = edit(&src, &mut rng, k);
            round_written += written;
            n += 1;
            let mut order = who.clone();
            order.rotate_left((r + k) % who.len());
            for w in &order {
                let before = du(&repo(w));
                backup(w, n);
                let grew = du(&repo(w)).saturating_sub(before);
                let ratio = grew as f64 / written as f64;
                eprintln!(
                    "  round {}, {kind}: {w} grew {} KiB for {} KiB written: {ratio:.2}",
                    r + 1,
                    grew >> 10,
                    written >> 10
                );
                let i = who.iter().position(|x| x == w).unwrap();
                round_grew[i] += grew;
                ratios[i].1[k].push(ratio);
            }
        }
        for (i, g) in round_grew.iter().enumerate() {
            ratios[i].1[KINDS.len()].push(*g as f64 / round_written as f64);
        }
    }
    // A copy of a medium file: deduplication across files.
    std::fs::copy(src.join("medium-3.bin"), src.join("copy-of-medium-3.bin")).unwrap();
    let before = du(&vault);
    backup("backpocket", 99);
    let copy_grew = du(&vault).saturating_sub(before);
    let med = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        format!("{:.2} ({:.2}-{:.2})", s[s.len() / 2], s[0], s[s.len() - 1])
    };
    print!("| tool |");
    for k in KINDS {
        print!(" {k} |");
    }
    println!(" the whole round |");
    println!("|---|---|---|---|---|");
    for (w, v) in &ratios {
        print!("| {w} |");
        for x in v {
            print!(" {} |", med(x));
        }
        println!();
    }
    println!("(growth / bytes written: median of {rounds} rounds, min-max) a copy of a 4 MiB file then grew the vault by {} KiB", copy_grew >> 10);
}
