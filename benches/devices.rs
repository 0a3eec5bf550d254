//! Several devices on one vault: the time from a file closed (and fsynced) in one device's
//! mount until the other device's mount shows it whole, both mounted at once on one local
//! vault, changes travelling by polling. BENCH_SAVES (default 10) saves each way, the two
//! directions alternating, BENCH_RUNS (default 3) runs; medians with min-max over the runs of
//! each run's median and worst. Before each save the devices have been quiet for a while
//! (BENCH_IDLE_S, default 3 s), so the poll interval has grown as it does between a person's
//! saves; a save that lands while the other device polls every second is faster.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{bp, env, stats, workdir};

fn ok(args: &[&str], cfg: &Path) -> String {
    let out = bp(args, cfg).output().unwrap();
    assert!(
        out.status.success(),
        "backpocket {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `path` holds `want`, polling every 5 ms.
fn arrival(path: &Path, want: &[u8], start: Instant) -> Duration {
    loop {
        if std::fs::read(path).ok().as_deref() == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} never arrived",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn main() {
    let saves = env("BENCH_SAVES", 10);
    let runs = env("BENCH_RUNS", 3);
    let idle = Duration::from_secs(env("BENCH_IDLE_S", 3) as u64);
    let mut per_run: Vec<[(Duration, Duration); 2]> = Vec::new();
    for run in 0..runs {
        let dir = workdir("devices");
        let base = dir.path();
        let cfg = base.join("config");
        let (a, am, b, bm, vault) = (
            base.join("drive"),
            base.join("drive-mnt"),
            base.join("laptop"),
            base.join("laptop-mnt"),
            base.join("vault"),
        );
        for d in [&a, &am, &bm, &vault] {
            std::fs::create_dir_all(d).unwrap();
        }
        let s = |p: &Path| p.to_str().unwrap().to_owned();
        ok(&["init", &s(&a)], &cfg);
        ok(
            &["dest", "add", "home", &s(&vault), "--pocket", &s(&a)],
            &cfg,
        );
        std::fs::write(a.join("start.txt"), b"start").unwrap();
        ok(&["sync", "--pocket", &s(&a)], &cfg);
        ok(
            &["init", &s(&b), "--join", &s(&vault), "--name", "laptop"],
            &cfg,
        );
        ok(&["mount", "--daemon", &s(&a), &s(&am)], &cfg);
        ok(&["mount", "--daemon", &s(&b), &s(&bm)], &cfg);
        // Both pull threads have met the other device (the drive's looks at the vault again
        // every 10 s until a device has joined).
        let warm = b"warm".to_vec();
        let mut f = std::fs::File::create(bm.join("warm.txt")).unwrap();
        f.write_all(&warm).unwrap();
        f.sync_all().unwrap();
        drop(f);
        arrival(&am.join("warm.txt"), &warm, Instant::now());
        let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
        for n in 0..saves * 2 {
            std::thread::sleep(idle);
            let dir_ix = n % 2;
            let (from, to) = if dir_ix == 0 { (&am, &bm) } else { (&bm, &am) };
            let name = format!("save-{run}-{n}.txt");
            let data = format!("save {n} of run {run}\n").repeat(200).into_bytes();
            let mut f = std::fs::File::create(from.join(&name)).unwrap();
            f.write_all(&data).unwrap();
            f.sync_all().unwrap();
            drop(f);
            let start = Instant::now();
            let t = arrival(&to.join(&name), &data, start);
            times[dir_ix].push(t);
        }
        ok(&["unmount", &s(&bm)], &cfg);
        ok(&["unmount", &s(&am)], &cfg);
        let summary = |v: &[Duration]| {
            let (med, _, max) = stats(v);
            (Duration::from_secs_f64(med), Duration::from_secs_f64(max))
        };
        let r = [summary(&times[0]), summary(&times[1])];
        eprintln!(
            "run {run}: drive -> laptop median {:.2} s worst {:.2} s; laptop -> drive median {:.2} s worst {:.2} s",
            r[0].0.as_secs_f64(),
            r[0].1.as_secs_f64(),
            r[1].0.as_secs_f64(),
            r[1].1.as_secs_f64()
        );
        per_run.push(r);
    }
    println!(
        "close on one device -> whole in the other's mount ({saves} saves each way, {} s quiet before each, {runs} runs; polling):",
        idle.as_secs()
    );
    for (i, what) in ["drive -> laptop", "laptop -> drive"].iter().enumerate() {
        let meds: Vec<Duration> = per_run.iter().map(|r| r[i].0).collect();
        let worst: Vec<Duration> = per_run.iter().map(|r| r[i].1).collect();
        let (m, lo, hi) = stats(&meds);
        let (w, wlo, whi) = stats(&worst);
        println!(
            "  {what:<16} median {m:.2} s ({lo:.2}-{hi:.2})   worst {w:.2} s ({wlo:.2}-{whi:.2})"
        );
    }
}
