//! A vault spread 2 of 3 against the alternatives a user has for three places: one vault
//! (one place, no redundancy) and three full vaults (three copies). Protection time and the
//! storage used, then restore: from one vault, from the spread with all members, and from the
//! spread with its first member (a data shard) gone, so every block is decoded.
//!
//! The three places are three folders on this machine's disk (one disk: the figures compare
//! CPU and bytes written, not three independent links). Contenders alternate within each
//! round (who goes first rotates); every timing ends with `sync`. Data set: BENCH_DATA_MB
//! (default 512), rounds: BENCH_ROUNDS (default 3).

mod common;

use std::path::{Path, PathBuf};

use common::dataset::{du, prepare, sh, timed, Table};
use common::{bp, drop_caches, env};

struct Pocket<'a> {
    src: &'a Path,
    cfg: &'a Path,
}

impl Pocket<'_> {
    fn run(&self, args: &[&str]) {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--pocket", self.src.to_str().unwrap()]);
        sh(&mut bp(&a, self.cfg));
    }

    fn add(&self, name: &str, dir: &Path) {
        self.run(&["dest", "add", name, dir.to_str().unwrap()]);
    }

    fn restore(&self, from: &str, to: &Path) {
        self.run(&["restore", "--from", from, "--to", to.to_str().unwrap()]);
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let total_mb = env("BENCH_DATA_MB", 512);
    let rounds = env("BENCH_ROUNDS", 3);
    eprintln!("spread benchmark: {total_mb} MiB, {rounds} rounds");
    let (work, bytes) = prepare("spread", total_mb);
    let base = work.path();
    let cfg = base.join("config");
    let src = base.join("pocket");
    sh(&mut bp(&["init", src.to_str().unwrap()], &cfg));
    let p = Pocket {
        src: &src,
        cfg: &cfg,
    };
    let mut table = Table::default();
    for round in 0..rounds as u64 {
        eprintln!("  round {}", round + 1);
        let rd = base.join(format!("round-{round}"));
        std::fs::create_dir_all(&rd).unwrap();
        let places: Vec<PathBuf> = (0..3).map(|i| rd.join(format!("place-{i}"))).collect();
        for d in &places {
            std::fs::create_dir_all(d).unwrap();
        }
        let mut order = ["one vault", "three vaults", "spread 2 of 3"];
        order.rotate_left(round as usize % 3);
        for who in order {
            match who {
                "one vault" => {
                    let v = places[0].join("single");
                    p.add("single", &v);
                    table.add("protect", who, timed(|| p.run(&["sync"])));
                    table.bytes("protect", who, du(&v));
                }
                "three vaults" => {
                    let vs: Vec<PathBuf> = places.iter().map(|d| d.join("copy")).collect();
                    for (i, v) in vs.iter().enumerate() {
                        p.add(&format!("copy{i}"), v);
                    }
                    table.add("protect", who, timed(|| p.run(&["sync"])));
                    table.bytes("protect", who, vs.iter().map(|v| du(v)).sum());
                    for i in 0..3 {
                        p.run(&["dest", "remove", &format!("copy{i}")]);
                    }
                }
                _ => {
                    for (i, d) in places.iter().enumerate() {
                        p.add(&format!("m{i}"), &d.join("member"));
                    }
                    p.run(&["dest", "add-group", "spread", "--k", "2", "m0", "m1", "m2"]);
                    table.add("protect", who, timed(|| p.run(&["sync"])));
                    table.bytes(
                        "protect",
                        who,
                        places.iter().map(|d| du(&d.join("member/spread"))).sum(),
                    );
                }
            }
            // Only one contender is a destination at a time: `sync` drains them all.
            if who == "one vault" {
                // Kept for the restore below; out of the way of the next contender's sync.
                p.run(&["dest", "remove", "single"]);
            }
            if who == "spread 2 of 3" {
                p.run(&["dest", "remove", "spread"]);
            }
        }
        // Restores, cold caches: the same vaults, added back by URL (a vault opens as is).
        let single = places[0].join("single");
        let mut order = ["one vault", "spread, all members", "spread, member 0 gone"];
        order.rotate_left(round as usize % 3);
        for who in order {
            let out = rd.join(format!("restore-{}", who.replace([' ', ','], "")));
            drop_caches();
            match who {
                "one vault" => {
                    let d = timed(|| p.restore(single.to_str().unwrap(), &out));
                    table.add("restore", who, d);
                }
                _ => {
                    for (i, d) in places.iter().enumerate() {
                        p.add(&format!("m{i}"), &d.join("member"));
                    }
                    p.run(&["dest", "add-group", "spread", "--k", "2", "m0", "m1", "m2"]);
                    let gone = places[0].join("member-unplugged");
                    if who.contains("gone") {
                        std::fs::rename(places[0].join("member"), &gone).unwrap();
                    }
                    let d = timed(|| p.restore("spread", &out));
                    table.add("restore", who, d);
                    if who.contains("gone") {
                        std::fs::rename(&gone, places[0].join("member")).unwrap();
                    }
                    p.run(&["dest", "remove", "spread"]);
                }
            }
            let _ = std::fs::remove_dir_all(&out);
        }
        let _ = std::fs::remove_dir_all(&rd);
    }
    println!(
        "\ndata set: {:.0} MiB (half the bytes compressible), {rounds} rounds; three places = three folders on one disk",
        bytes as f64 / 1048576.0
    );
    table.print("protect", "one vault", "");
    table.print("restore", "one vault", "");
}
