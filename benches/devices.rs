//! Several devices on one vault: the time from a file closed (and fsynced) in one device's
//! mount until the other device's mount shows it whole, both mounted at once on one local
//! vault; changes travel by polling alone, then with push through an XMPP server (Prosody,
//! started here on loopback), the two alternating in each run. BENCH_SAVES (default 10)
//! saves each way, the two directions alternating, BENCH_RUNS (default 3) runs; medians with
//! min-max over the runs of each run's median and worst. Before each save the devices have
//! been quiet for a while (BENCH_IDLE_S, default 3 s), so the poll interval has grown as it
//! does between a person's saves; a save that lands while the other device polls every
//! second is faster.

mod common;
#[allow(dead_code)]
#[path = "../tests/common/servers.rs"]
mod servers;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{bp, env, stats, workdir};

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

/// One run of one contender: the two devices set up anew, `saves` each way; each direction's
/// median and worst.
fn one_run(
    run: usize,
    saves: usize,
    idle: Duration,
    xmpp: Option<&servers::Prosody>,
) -> [(Duration, Duration); 2] {
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
    let env: Vec<(&str, String)> = match xmpp {
        Some(x) => {
            let mut e = servers::child_env();
            e.push(("BACKPOCKET_XMPP_PASSWORD", x.password.clone()));
            e
        }
        None => Vec::new(),
    };
    let ok = |args: &[&str]| {
        let out = bp(args, &cfg)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "backpocket {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&["init", &s(&a)]);
    ok(&["dest", "add", "home", &s(&vault), "--pocket", &s(&a)]);
    if let Some(x) = xmpp {
        ok(&[
            "devices",
            "push",
            &x.account,
            "--server",
            &x.server(),
            "--pocket",
            &s(&a),
        ]);
    }
    std::fs::write(a.join("start.txt"), b"start").unwrap();
    ok(&["sync", "--pocket", &s(&a)]);
    ok(&["init", &s(&b), "--join", &s(&vault), "--name", "laptop"]);
    ok(&["mount", "--daemon", &s(&a), &s(&am)]);
    ok(&["mount", "--daemon", &s(&b), &s(&bm)]);
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
    ok(&["unmount", &s(&bm)]);
    ok(&["unmount", &s(&am)]);
    let summary = |v: &[Duration]| {
        let (med, _, max) = stats(v);
        (Duration::from_secs_f64(med), Duration::from_secs_f64(max))
    };
    let r = [summary(&times[0]), summary(&times[1])];
    eprintln!(
        "run {run} ({}): drive -> laptop median {:.3} s worst {:.3} s; laptop -> drive median {:.3} s worst {:.3} s",
        if xmpp.is_some() { "push" } else { "polling" },
        r[0].0.as_secs_f64(),
        r[0].1.as_secs_f64(),
        r[1].0.as_secs_f64(),
        r[1].1.as_secs_f64()
    );
    r
}

fn main() {
    let saves = env("BENCH_SAVES", 10);
    let runs = env("BENCH_RUNS", 3);
    let idle = Duration::from_secs(env("BENCH_IDLE_S", 3) as u64);
    let xmpp = servers::Prosody::start();
    // [polling, push] per run, the two alternating.
    let mut per_run: Vec<[[(Duration, Duration); 2]; 2]> = Vec::new();
    for run in 0..runs {
        let polling = one_run(run, saves, idle, None);
        let push = one_run(run, saves, idle, Some(&xmpp));
        per_run.push([polling, push]);
    }
    println!(
        "close on one device -> whole in the other's mount ({saves} saves each way, {} s quiet before each, {runs} runs):",
        idle.as_secs()
    );
    for (c, contender) in ["polling", "push (XMPP)"].iter().enumerate() {
        for (i, what) in ["drive -> laptop", "laptop -> drive"].iter().enumerate() {
            let meds: Vec<Duration> = per_run.iter().map(|r| r[c][i].0).collect();
            let worst: Vec<Duration> = per_run.iter().map(|r| r[c][i].1).collect();
            let (m, lo, hi) = stats(&meds);
            let (w, wlo, whi) = stats(&worst);
            println!(
                "  {contender:<12} {what:<16} median {m:.3} s ({lo:.3}-{hi:.3})   worst {w:.3} s ({wlo:.3}-{whi:.3})"
            );
        }
    }
}
