//! No waiting behind big files: a destination capped at BENCH_BW bytes/s (default 10 MiB/s),
//! a BENCH_BIG_MB file (default 1024) closed, then BENCH_SAVES (default 20) small saves one
//! after another, each timed from its journal commit until the destination holds it (its
//! segment durable, the cursor past it). The lane for large files on, and off (every file read
//! in the drain, as before), alternating, BENCH_RUNS (default 3) runs each; medians with
//! min-max over the runs of each run's median and worst save, and of the time until the large
//! file is at the destination too. Every run ends with everything durable there.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::dataset::Rng;
use common::{env, stats};
use journal::{Change, Meta};
use replicator::{Access, DestSpec, KdfParams, Mode, Setup, Store, Vault};

fn meta(p: &Path) -> Meta {
    Meta::from_std(&std::fs::symlink_metadata(p).unwrap()).unwrap()
}

fn setup(base: &Path, bw: u64) -> Setup {
    let root = base.join("pocket");
    std::fs::create_dir_all(root.join(".backpocket")).unwrap();
    let db = root.join(".backpocket/journal.db");
    journal::Journal::create(&db, std::fs::metadata(&root).unwrap().ino())
        .unwrap()
        .close()
        .unwrap();
    let mut kdf = KdfParams::new().unwrap();
    kdf.m_kib = 1024;
    kdf.t = 1;
    let key = kdf.derive(b"waiting").unwrap();
    let url = base.join("vault").to_str().unwrap().to_owned();
    let rt = replicator::runtime().unwrap();
    let store = Store::open(&url, rt.handle().clone(), true).unwrap();
    Vault::create(store, "waiting", kdf, &key).unwrap();
    rt.shutdown_background();
    Setup {
        pocket: root.clone(),
        meta_dir: root.join(".backpocket"),
        journal: db,
        pocket_id: "waiting".into(),
        key: Some(key),
        dests: vec![DestSpec {
            name: "v".into(),
            url,
            mode: Mode::Vault,
            keep_versions: Duration::ZERO,
            access: Access {
                bandwidth: Some(bw),
                ..Access::default()
            },
            when: Vec::new(),
            group: None,
        }],
        ids: Default::default(),
        drained: None,
    }
}

struct Run {
    saves: Vec<Duration>,
    /// From the large file's commit until it too is at the destination.
    all: Duration,
}

fn write_durably(p: &Path, data: &[u8]) {
    let mut f = std::fs::File::create(p).unwrap();
    std::io::Write::write_all(&mut f, data).unwrap();
    f.sync_all().unwrap();
}

fn run(base: &Path, big: &[u8], saves: usize, bw: u64, seed: u64) -> Run {
    let s = setup(base, bw);
    let root = s.pocket.clone();
    let root_ino = std::fs::metadata(&root).unwrap().ino();
    let j = journal::Journal::open(&s.journal).unwrap();
    let h = j.handle();
    let rep = replicator::Replicator::start(s.clone(), j.subscribe(), None).unwrap();
    let reader = journal::Reader::open(&s.journal).unwrap();
    let protected = |seq: u64| {
        while reader.cursor("v").unwrap().unwrap_or(0) < seq {
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    // A first save, so that the vault holds a point before the large file comes.
    let record = |name: &str, data: &[u8], new: bool| -> u64 {
        let path: PathBuf = root.join(name);
        write_durably(&path, data);
        let m = meta(&path);
        let ino = std::fs::metadata(&path).unwrap().ino();
        if new {
            h.record(Change::Create {
                parent: root_ino,
                name: name.as_bytes().to_vec(),
                file: ino,
                meta: m,
            });
        }
        h.record(Change::Content { file: ino, meta: m });
        h.sync().unwrap()
    };
    protected(record("doc.txt", b"start", true));
    let mut rng = Rng(seed);
    let started = Instant::now();
    record("big.bin", big, true);
    let mut out = Vec::with_capacity(saves);
    for i in 0..saves {
        let mut data = vec![0u8; 4096];
        rng.fill_text(&mut data);
        let t = Instant::now();
        let seq = record(&format!("doc-{}.txt", i % 4), &data, i < 4);
        protected(seq);
        out.push(t.elapsed());
    }
    let last = h.sync().unwrap();
    protected(last);
    while !replicator::DestState::load(&s.meta_dir, "v")
        .in_flight
        .is_empty()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let all = started.elapsed();
    rep.stop();
    drop(h);
    j.close().unwrap();
    Run { saves: out, all }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let big_mb = env("BENCH_BIG_MB", 1024);
    let saves = env("BENCH_SAVES", 20);
    let runs = env("BENCH_RUNS", 3);
    let bw = env("BENCH_BW", 10 << 20) as u64;
    let work = common::workdir("waiting");
    let mut big = vec![0u8; big_mb << 20];
    Rng(7).fill_random(&mut big);
    println!(
        "waiting behind a large file: {big_mb} MiB closed, then {saves} saves of 4 KiB, destination capped at {:.1} MiB/s, {runs} runs each",
        bw as f64 / 1048576.0
    );
    let mut results: Vec<(&str, Vec<Run>)> =
        vec![("lane on", Vec::new()), ("lane off", Vec::new())];
    for r in 0..runs {
        for (who, list) in results.iter_mut() {
            let base = work.path().join(format!("{}-{r}", who.replace(' ', "-")));
            if *who == "lane off" {
                std::env::set_var("BACKPOCKET_LANE_FROM", u64::MAX.to_string());
            } else {
                std::env::remove_var("BACKPOCKET_LANE_FROM");
            }
            let run = run(&base, &big, saves, bw, r as u64 + 1);
            let (med, _, worst) = stats(&run.saves);
            eprintln!(
                "  {who} run {r}: saves median {med:.3}s worst {worst:.3}s; large file there after {:.1}s",
                run.all.as_secs_f64()
            );
            list.push(run);
            let _ = std::fs::remove_dir_all(&base);
        }
    }
    println!("| contender | save protected, median | save protected, worst | large file at the destination |");
    println!("| --- | --- | --- | --- |");
    for (who, list) in &results {
        let meds: Vec<Duration> = list.iter().map(|r| dur(stats(&r.saves).0)).collect();
        let worsts: Vec<Duration> = list.iter().map(|r| dur(stats(&r.saves).2)).collect();
        let alls: Vec<Duration> = list.iter().map(|r| r.all).collect();
        println!(
            "| {who} | {} | {} | {} |",
            fmt(stats(&meds)),
            fmt(stats(&worsts)),
            fmt(stats(&alls))
        );
    }
}

fn dur(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn fmt((med, lo, hi): (f64, f64, f64)) -> String {
    format!("{med:.3} s ({lo:.3}-{hi:.3})")
}
