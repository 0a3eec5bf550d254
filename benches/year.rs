//! A year of use, simulated: the mount's replicator drains a realistic mix of changes one
//! drain at a time (small saves, renames, deletes, now and then a large file), generated at
//! full speed, with vault maintenance on and off side by side. Then, per vault: objects and
//! bytes, and the time of what a user does with it: `sync` of one new file (opening the vault
//! included), `log FILE`, `verify` without data, a whole restore (against `cp -a`).
//!
//! BENCH_DRAINS (default 100000) drains per contender; BENCH_ROUNDS (default 3) timings of
//! each command, alternating contenders, medians with min-max. Every timing ends durable.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common::dataset::{du, sync_all, Rng};
use common::{env, stats};
use journal::{Change, Meta};
use replicator::{DestSpec, KdfParams, Mode, Progress, RestoreOptions, Setup, Store, Vault};

struct Pocket {
    root: PathBuf,
    vault: PathBuf,
    setup: Setup,
    key: replicator::Key,
}

fn meta(p: &Path) -> Meta {
    Meta::from_std(&std::fs::symlink_metadata(p).unwrap()).unwrap()
}

fn make(base: &Path, name: &str) -> Pocket {
    let root = base.join(name).join("pocket");
    let vault = base.join(name).join("vault");
    std::fs::create_dir_all(root.join(".backpocket")).unwrap();
    let db = root.join(".backpocket/journal.db");
    journal::Journal::create(&db, std::fs::metadata(&root).unwrap().ino())
        .unwrap()
        .close()
        .unwrap();
    let mut kdf = KdfParams::new().unwrap();
    kdf.m_kib = 1024;
    kdf.t = 1;
    let key = kdf.derive(b"year").unwrap();
    let rt = replicator::runtime().unwrap();
    let store = Store::open(vault.to_str().unwrap(), rt.handle().clone(), true).unwrap();
    Vault::create(store, "year", kdf, &key).unwrap();
    rt.shutdown_background();
    let setup = Setup {
        pocket: root.clone(),
        meta_dir: root.join(".backpocket"),
        journal: db,
        pocket_id: "year".into(),
        key: Some(key.clone()),
        dests: vec![DestSpec {
            name: "v".into(),
            url: vault.to_str().unwrap().into(),
            mode: Mode::Vault,
            keep_versions: Duration::ZERO,
            access: Default::default(),
            when: Vec::new(),
        }],
    };
    Pocket {
        root,
        vault,
        setup,
        key,
    }
}

/// Drives `drains` drains through the replicator as the mount would: one change, a journal
/// commit, wait until the destination's cursor has it.
fn live(p: &Pocket, drains: usize, seed: u64) -> Duration {
    let j = journal::Journal::open(&p.setup.journal).unwrap();
    let h = j.handle();
    let rep = replicator::Replicator::start(p.setup.clone(), j.subscribe(), None).unwrap();
    let reader = journal::Reader::open(&p.setup.journal).unwrap();
    let root_ino = std::fs::metadata(&p.root).unwrap().ino();
    let mut rng = Rng(seed);
    let mut files: Vec<String> = Vec::new();
    let t = Instant::now();
    for i in 0..drains {
        let pick = rng.next() % 100;
        let name = format!("f{}", rng.next() % 4000);
        let path = p.root.join(&name);
        if pick < 70 || files.is_empty() {
            // A save: a new file or one rewritten, 1-16 KiB; one in 200 a large file.
            let big = rng.next() % 200 == 0;
            let len = if big {
                8 << 20
            } else {
                1024 + (rng.next() % 15_360) as usize
            };
            let mut data = vec![0u8; len];
            rng.fill_random(&mut data);
            let existed = path.exists();
            std::fs::write(&path, &data).unwrap();
            let m = meta(&path);
            let ino = std::fs::metadata(&path).unwrap().ino();
            if !existed {
                h.record(Change::Create {
                    parent: root_ino,
                    name: name.clone().into_bytes(),
                    file: ino,
                    meta: m,
                });
                files.push(name);
            }
            h.record(Change::Content { file: ino, meta: m });
        } else if pick < 85 {
            let k = (rng.next() as usize) % files.len();
            let from = files[k].clone();
            let to = format!("r{i}");
            let ino = std::fs::metadata(p.root.join(&from)).unwrap().ino();
            std::fs::rename(p.root.join(&from), p.root.join(&to)).unwrap();
            h.record(Change::Rename {
                parent: root_ino,
                name: from.into_bytes(),
                new_parent: root_ino,
                new_name: to.clone().into_bytes(),
                file: ino,
                exchange: false,
            });
            files[k] = to;
        } else {
            let k = (rng.next() as usize) % files.len();
            let gone = files.swap_remove(k);
            let ino = std::fs::metadata(p.root.join(&gone)).unwrap().ino();
            std::fs::remove_file(p.root.join(&gone)).unwrap();
            h.record(Change::Unlink {
                parent: root_ino,
                name: gone.into_bytes(),
                file: ino,
            });
        }
        let seq = h.sync().unwrap();
        while reader.cursor("v").unwrap().unwrap_or(0) < seq {
            std::thread::sleep(Duration::from_micros(300));
        }
        if (i + 1) % (drains / 10).max(1) == 0 {
            eprintln!(
                "  {}: {} drains in {:.0?}",
                p.root.display(),
                i + 1,
                t.elapsed()
            );
        }
    }
    let took = t.elapsed();
    // Maintenance, when on, runs once the destination is idle: give it its idle time.
    std::thread::sleep(Duration::from_secs(3));
    rep.stop();
    drop(h);
    j.close().unwrap();
    took
}

fn open(p: &Pocket) -> (tokio::runtime::Runtime, Vault) {
    let rt = replicator::runtime().unwrap();
    let store = Store::open(p.vault.to_str().unwrap(), rt.handle().clone(), false).unwrap();
    let v = Vault::open(store, &p.key).unwrap();
    (rt, v)
}

fn count(dir: &Path) -> usize {
    walk(dir).len()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let drains = env("BENCH_DRAINS", 100_000);
    let rounds = env("BENCH_ROUNDS", 3);
    let base =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or("/var/tmp".into())).unwrap();
    eprintln!("a year of drains: {drains} drains per vault, {rounds} rounds of each command");
    let on = make(base.path(), "on");
    let off = make(base.path(), "off");
    // Read by the replicator threads this process starts (no other thread reads the
    // environment meanwhile).
    std::env::set_var("BACKPOCKET_MAINTAIN_IDLE_SECS", "1");
    std::env::set_var("BACKPOCKET_MAINTAIN_GRACE_SECS", "0");
    let t_on = live(&on, drains, 7);
    std::env::set_var("BACKPOCKET_MAINTAIN_IDLE_SECS", "100000000");
    let t_off = live(&off, drains, 7);
    println!("drains: maintenance on {t_on:.1?}, off {t_off:.1?}");
    let contenders = [("on", &on), ("off", &off)];
    let mut times: Vec<Vec<Vec<Duration>>> = vec![vec![Vec::new(); 5]; 2];
    for r in 0..rounds {
        for k in 0..2 {
            let c = (k + r) % 2;
            let (_, p) = contenders[c];
            // sync of one new file, the vault opened as the command does.
            let name = format!("new-{r}");
            std::fs::write(p.root.join(&name), b"one new file").unwrap();
            let j = journal::Journal::open(&p.setup.journal).unwrap();
            journal::scan(&p.root, &p.setup.journal, &j.handle()).unwrap();
            j.close().unwrap();
            let target = journal::Reader::open(&p.setup.journal)
                .unwrap()
                .status()
                .unwrap()
                .last_seq;
            let t = Instant::now();
            for o in replicator::sync(
                &p.setup,
                target,
                &Progress::default(),
                &AtomicBool::new(false),
            ) {
                o.result.unwrap();
            }
            times[c][0].push(t.elapsed());
            // log FILE
            let t = Instant::now();
            let (_rt, v) = open(p);
            let versions = replicator::versions(&v, name.as_bytes()).unwrap();
            assert!(!versions.is_empty());
            times[c][1].push(t.elapsed());
            // verify without data
            let t = Instant::now();
            let rep = replicator::verify(&v, false, &Progress::default()).unwrap();
            assert!(rep.damage.is_empty(), "{:?}", rep.damage);
            times[c][2].push(t.elapsed());
            // restore, against cp -a of the pocket
            let out = base.path().join(format!("restore-{}-{r}", contenders[c].0));
            let t = Instant::now();
            replicator::restore(
                &v,
                &RestoreOptions {
                    target: out.clone(),
                    at: None,
                    paths: Vec::new(),
                    owners: false,
                    workers: 2,
                },
                &Progress::default(),
            )
            .unwrap();
            sync_all();
            times[c][3].push(t.elapsed());
            std::fs::remove_dir_all(&out).unwrap();
            let cp = base.path().join(format!("cp-{}-{r}", contenders[c].0));
            let t = Instant::now();
            let st = std::process::Command::new("cp")
                .arg("-a")
                .arg(&p.root)
                .arg(&cp)
                .status()
                .unwrap();
            assert!(st.success());
            sync_all();
            times[c][4].push(t.elapsed());
            std::fs::remove_dir_all(&cp).unwrap();
        }
    }
    println!("| vault | objects | bytes | pocket | sync 1 file | log FILE | verify (no data) | restore | cp -a | restore / cp -a |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (c, (name, p)) in contenders.iter().enumerate() {
        let cell = |v: &[Duration]| {
            let (med, min, max) = stats(v);
            format!("{med:.3} s ({min:.3}-{max:.3})")
        };
        let ratio: Vec<Duration> = times[c][3]
            .iter()
            .zip(&times[c][4])
            .map(|(r, c)| Duration::from_secs_f64(r.as_secs_f64() / c.as_secs_f64()))
            .collect();
        println!(
            "| maintenance {name} | {} | {:.1} MiB | {:.1} MiB | {} | {} | {} | {} | {} | {:.2} |",
            count(&p.vault),
            du(&p.vault) as f64 / 1048576.0,
            du(&p.root) as f64 / 1048576.0,
            cell(&times[c][0]),
            cell(&times[c][1]),
            cell(&times[c][2]),
            cell(&times[c][3]),
            cell(&times[c][4]),
            stats(&ratio).0,
        );
    }
}
