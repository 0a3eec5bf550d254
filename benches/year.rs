//! A year of use, simulated: the mount's replicator drains a realistic mix of changes one
//! drain at a time (small saves, renames, deletes, now and then a large file), generated at
//! full speed, with vault maintenance on and off side by side. Then, per vault: objects and
//! bytes, and the time of what a user does with it: `sync` of one new file (opening the vault
//! included), `log FILE`, `verify` without data, a whole restore (against `cp -a`).
//!
//! BENCH_DRAINS (default 100000) drains per contender (BENCH_OFF=0: maintenance on only), a
//! rest every BENCH_DAY (default 500) drains in which the mount (1 s idle here, 60 s in use)
//! maintains its vault; BENCH_ROUNDS (default 3) timings of each command, alternating
//! contenders, medians with min-max. Every timing ends durable. The drain phase's times
//! include the rests.

mod common;

#[path = "../tests/common/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common::dataset::{du, have, sync_all, Rng};
use common::{env, stats};
use journal::{Change, Meta};
use replicator::{
    Access, DestSpec, KdfParams, Mode, Progress, RestoreOptions, Secrets, Setup, Store, Vault,
};

struct Pocket {
    root: PathBuf,
    setup: Setup,
    key: replicator::Key,
    secrets: Secrets,
}

fn meta(p: &Path) -> Meta {
    Meta::from_std(&std::fs::symlink_metadata(p).unwrap()).unwrap()
}

/// A pocket and a new vault for it at `url` (a folder when None).
fn make(base: &Path, name: &str, s3: Option<&servers::Garage>) -> Pocket {
    let root = base.join(name).join("pocket");
    let (url, mut access, secrets) = match s3 {
        None => (
            base.join(name).join("vault").to_str().unwrap().to_owned(),
            Access::default(),
            Secrets::default(),
        ),
        Some(g) => (
            format!("s3://{}/{name}", g.bucket),
            Access {
                endpoint: Some(g.endpoint()),
                region: Some("garage".into()),
                ..Access::default()
            },
            {
                let mut s = Secrets::default();
                s.access_key_id = Some(g.access_key.clone());
                s.secret_access_key = Some(g.secret_key.clone());
                s
            },
        ),
    };
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
    let store = Store::connect(&url, &access, &secrets, rt.handle().clone(), true).unwrap();
    Vault::create(store, "year", kdf, &key).unwrap();
    rt.shutdown_background();
    if s3.is_some() {
        access.sealed_secrets = Some(replicator::seal_secrets(&key, "v", &secrets).unwrap());
    }
    let setup = Setup {
        pocket: root.clone(),
        meta_dir: root.join(".backpocket"),
        journal: db,
        pocket_id: "year".into(),
        key: Some(key.clone()),
        dests: vec![DestSpec {
            name: "v".into(),
            url,
            mode: Mode::Vault,
            keep_versions: Duration::ZERO,
            access,
            when: Vec::new(),
            group: None,
        }],
        ids: Default::default(),
        drained: None,
    };
    Pocket {
        root,
        setup,
        key,
        secrets,
    }
}

/// Drives `drains` drains through the replicator as the mount would: one change, a journal
/// commit, wait until the destination's cursor has it. Every `day` drains the pocket rests
/// (as people do): with maintenance on, until the mount has maintained its vault.
fn live(p: &Pocket, drains: usize, seed: u64, day: Option<usize>) -> Duration {
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
        if day.is_some_and(|d| (i + 1) % d == 0) {
            let (_rt, v) = open(p);
            let rest = Instant::now();
            // Until the vault no longer wants maintenance (the mount's own test), its trash
            // emptied: a long history keeps a few bundles, so no fixed count would do.
            while rest.elapsed() < Duration::from_secs(120) {
                std::thread::sleep(Duration::from_millis(200));
                let s = replicator::shape(&v).unwrap();
                if !s.wants_maintenance(Duration::ZERO) && s.trash_objects == 0 {
                    break;
                }
            }
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
    let d = &p.setup.dests[0];
    let store = Store::connect(&d.url, &d.access, &p.secrets, rt.handle().clone(), false).unwrap();
    let v = Vault::open(store, &p.key)
        .unwrap()
        .with_cache(&p.setup.meta_dir.join("cache"));
    (rt, v)
}

/// The vault's objects and their bytes, from one listing.
fn objects(p: &Pocket) -> (usize, u64) {
    let (_rt, v) = open(p);
    let all = v.store.list("").unwrap();
    (all.len(), all.iter().map(|(_, s)| s).sum())
}

fn requests_since(before: replicator::Requests) -> u64 {
    let now = replicator::requests();
    (now.get + now.put + now.list + now.delete)
        - (before.get + before.put + before.list + before.delete)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let drains = env("BENCH_DRAINS", 100_000);
    let s3_drains = env("BENCH_S3_DRAINS", drains / 5);
    let rounds = env("BENCH_ROUNDS", 3);
    let day = env("BENCH_DAY", 500);
    // BENCH_OFF=0 leaves out the vaults without maintenance (for long runs: they only grow).
    let off = env("BENCH_OFF", 1) != 0;
    let base =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or("/var/tmp".into())).unwrap();
    let garage =
        (have("garage") && s3_drains > 0).then(|| servers::Garage::start("127.0.0.1", None));
    if garage.is_none() {
        eprintln!(
            "NOTE: garage is not installed (or BENCH_S3_DRAINS=0): the S3 vaults are left out"
        );
    }
    eprintln!("a year of drains: {drains} drains per local vault, {s3_drains} per S3 vault, {rounds} rounds of each command");
    // (name, pocket, drains, maintenance on)
    let mut contenders: Vec<(String, Pocket, usize, bool)> = vec![
        (
            "local, maintenance on".into(),
            make(base.path(), "local-on", None),
            drains,
            true,
        ),
        (
            "local, maintenance off".into(),
            make(base.path(), "local-off", None),
            drains,
            false,
        ),
    ];
    if let Some(g) = &garage {
        contenders.push((
            "S3, maintenance on".into(),
            make(base.path(), "s3-on", Some(g)),
            s3_drains,
            true,
        ));
        contenders.push((
            "S3, maintenance off".into(),
            make(base.path(), "s3-off", Some(g)),
            s3_drains,
            false,
        ));
    }
    if !off {
        contenders.retain(|c| c.3);
    }
    // Read by the replicator threads this process starts (no other thread reads the
    // environment meanwhile).
    std::env::set_var("BACKPOCKET_MAINTAIN_GRACE_SECS", "0");
    for (name, p, n, on) in &contenders {
        std::env::set_var(
            "BACKPOCKET_MAINTAIN_IDLE_SECS",
            if *on { "1" } else { "100000000" },
        );
        let t = live(p, *n, 7, on.then_some(day));
        println!("{name}: {n} drains in {t:.1?}");
    }
    let k = contenders.len();
    // Per contender: timings of sync, log, verify, restore, cp -a; requests of the first four.
    let mut times: Vec<Vec<Vec<Duration>>> = vec![vec![Vec::new(); 5]; k];
    let mut reqs: Vec<[u64; 4]> = vec![[0; 4]; k];
    for r in 0..rounds {
        for i in 0..k {
            let c = (i + r) % k;
            let p = &contenders[c].1;
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
            let before = replicator::requests();
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
            reqs[c][0] = requests_since(before);
            // log FILE (the version index in the pocket's cache, as the command keeps it).
            let before = replicator::requests();
            let t = Instant::now();
            let (_rt, v) = open(p);
            let versions = replicator::versions(&v, name.as_bytes()).unwrap();
            assert!(!versions.is_empty());
            times[c][1].push(t.elapsed());
            reqs[c][1] = requests_since(before);
            // verify without data
            let before = replicator::requests();
            let t = Instant::now();
            let rep = replicator::verify(&v, false, &Progress::default()).unwrap();
            assert!(rep.damage.is_empty(), "{:?}", rep.damage);
            times[c][2].push(t.elapsed());
            reqs[c][2] = requests_since(before);
            // restore, against cp -a of the pocket (what the commands before left dirty is
            // flushed first)
            sync_all();
            let out = base.path().join(format!("restore-{c}-{r}"));
            let before = replicator::requests();
            let t = Instant::now();
            replicator::restore(
                &v,
                &RestoreOptions {
                    target: out.clone(),
                    at: None,
                    paths: Vec::new(),
                    owners: false,
                    // As `backpocket restore` does.
                    workers: 8,
                    map_names: false,
                    specials: true,
                    case_insensitive: false,
                },
                &Progress::default(),
            )
            .unwrap();
            sync_all();
            times[c][3].push(t.elapsed());
            reqs[c][3] = requests_since(before);
            // Removed and flushed before the next timing: a timing includes its own work
            // made durable, not the last one's deletion.
            std::fs::remove_dir_all(&out).unwrap();
            sync_all();
            let cp = base.path().join(format!("cp-{c}-{r}"));
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
            sync_all();
        }
    }
    println!("| vault | drains | objects | bytes | pocket | sync 1 file | log FILE | verify (no data) | restore | cp -a | restore / cp -a |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (c, (name, p, n, _)) in contenders.iter().enumerate() {
        let cell = |v: &[Duration], q: u64| {
            let (med, min, max) = stats(v);
            format!("{med:.3} s ({min:.3}-{max:.3}), {q} req")
        };
        let ratio: Vec<Duration> = times[c][3]
            .iter()
            .zip(&times[c][4])
            .map(|(r, c)| Duration::from_secs_f64(r.as_secs_f64() / c.as_secs_f64()))
            .collect();
        let (objs, bytes) = objects(p);
        let (med, min, max) = stats(&times[c][4]);
        println!(
            "| {name} | {n} | {objs} | {:.1} MiB | {:.1} MiB | {} | {} | {} | {} | {med:.3} s ({min:.3}-{max:.3}) | {:.2} |",
            bytes as f64 / 1048576.0,
            du(&p.root) as f64 / 1048576.0,
            cell(&times[c][0], reqs[c][0]),
            cell(&times[c][1], reqs[c][1]),
            cell(&times[c][2], reqs[c][2]),
            cell(&times[c][3], reqs[c][3]),
            stats(&ratio).0,
        );
    }
    println!("(requests: those of the last round; a listing of several pages counts once)");
}
