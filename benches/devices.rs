//! Several devices on one vault: the time from a file closed (and fsynced) in one device's
//! mount until the other device's mount shows it whole, both mounted at once on one local
//! vault; changes travel by polling alone, then with push through an XMPP server (Prosody,
//! started here on loopback), the two alternating in each run. BENCH_SAVES (default 10)
//! saves each way, the two directions alternating, BENCH_RUNS (default 3) runs; medians with
//! min-max over the runs of each run's median and worst. Before each save the devices have
//! been quiet for a while (BENCH_IDLE_S, default 3 s), so the poll interval has grown as it
//! does between a person's saves; a save that lands while the other device polls every
//! second is faster.
//!
//! The anchor is Syncthing (Debian's `syncthing`, two instances on loopback with discovery
//! and relays off, inotify watching with its shortest delay of 1 s), on the same two
//! folders' worth of saves, alternating with the others; left out, and said so, when it is
//! not installed.

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

/// `saves` each way between the folders `am` and `bm`, the directions alternating, each after
/// `idle` of quiet: each direction's median and worst.
fn saves_each_way(
    run: usize,
    saves: usize,
    idle: Duration,
    (am, bm): (&Path, &Path),
    what: &str,
) -> [(Duration, Duration); 2] {
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for n in 0..saves * 2 {
        std::thread::sleep(idle);
        let dir_ix = n % 2;
        let (from, to) = if dir_ix == 0 { (am, bm) } else { (bm, am) };
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
    let summary = |v: &[Duration]| {
        let (med, _, max) = stats(v);
        (Duration::from_secs_f64(med), Duration::from_secs_f64(max))
    };
    let r = [summary(&times[0]), summary(&times[1])];
    eprintln!(
        "run {run} ({what}): drive -> laptop median {:.3} s worst {:.3} s; laptop -> drive median {:.3} s worst {:.3} s",
        r[0].0.as_secs_f64(),
        r[0].1.as_secs_f64(),
        r[1].0.as_secs_f64(),
        r[1].1.as_secs_f64()
    );
    r
}

/// Two Syncthing instances sharing one folder over loopback; stopped when dropped.
struct Syncthing {
    children: Vec<std::process::Child>,
}

impl Syncthing {
    fn installed() -> bool {
        std::process::Command::new("syncthing")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Both instances under `base`, sharing `a` and `b`; returns once a file written in
    /// each has reached the other.
    fn start(base: &Path, a: &Path, b: &Path) -> Syncthing {
        let homes = [base.join("st-a"), base.join("st-b")];
        let ids: Vec<String> = homes
            .iter()
            .map(|h| {
                let out = std::process::Command::new("syncthing")
                    .arg("generate")
                    .arg(format!("--home={}", h.display()))
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr);
                text.lines()
                    .find_map(|l| l.split("Device ID: ").nth(1))
                    .unwrap_or_else(|| panic!("syncthing generate: {text}"))
                    .trim()
                    .to_owned()
            })
            .collect();
        let ports = [servers::free_port(), servers::free_port()];
        let folders = [a, b];
        let mut children = Vec::new();
        for i in 0..2 {
            let other = 1 - i;
            std::fs::create_dir_all(folders[i].join(".stfolder")).unwrap();
            let config = format!(
                r#"<configuration version="36">
    <folder id="bench" label="bench" path="{path}" type="sendreceive" rescanIntervalS="3600" fsWatcherEnabled="true" fsWatcherDelayS="1" ignorePerms="false" autoNormalize="true">
        <device id="{me}"></device>
        <device id="{them}"></device>
    </folder>
    <device id="{me}" name="d{i}" compression="metadata"><address>dynamic</address></device>
    <device id="{them}" name="d{other}" compression="metadata"><address>tcp://127.0.0.1:{their_port}</address></device>
    <gui enabled="true" tls="false"><address>127.0.0.1:{gui}</address><apikey>bench-{i}</apikey></gui>
    <options>
        <listenAddress>tcp://127.0.0.1:{port}</listenAddress>
        <globalAnnounceEnabled>false</globalAnnounceEnabled>
        <localAnnounceEnabled>false</localAnnounceEnabled>
        <relaysEnabled>false</relaysEnabled>
        <natEnabled>false</natEnabled>
        <urAccepted>-1</urAccepted>
        <autoUpgradeIntervalH>0</autoUpgradeIntervalH>
        <crashReportingEnabled>false</crashReportingEnabled>
        <startBrowser>false</startBrowser>
    </options>
</configuration>
"#,
                path = folders[i].display(),
                me = ids[i],
                them = ids[other],
                their_port = ports[other],
                port = ports[i],
                gui = servers::free_port(),
            );
            std::fs::write(homes[i].join("config.xml"), config).unwrap();
            children.push(
                std::process::Command::new("syncthing")
                    .arg("serve")
                    .arg(format!("--home={}", homes[i].display()))
                    .args(["--no-browser", "--no-restart"])
                    .arg(format!("--logfile={}", homes[i].join("log").display()))
                    .env("STNOUPGRADE", "1")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("start syncthing"),
            );
        }
        for (from, to) in [(a, b), (b, a)] {
            let warm = b"warm".to_vec();
            std::fs::write(from.join("warm.txt"), &warm).unwrap();
            arrival(&to.join("warm.txt"), &warm, Instant::now());
            std::fs::remove_file(from.join("warm.txt")).unwrap();
        }
        Syncthing { children }
    }
}

impl Drop for Syncthing {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(c.id() as i32).expect("a child's pid"),
                rustix::process::Signal::TERM,
            );
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

/// One run of Syncthing on two plain folders.
fn syncthing_run(run: usize, saves: usize, idle: Duration) -> [(Duration, Duration); 2] {
    let dir = workdir("devices-syncthing");
    let (a, b) = (dir.path().join("drive"), dir.path().join("laptop"));
    let st = Syncthing::start(dir.path(), &a, &b);
    let r = saves_each_way(run, saves, idle, (&a, &b), "Syncthing");
    drop(st);
    r
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
    let what = if xmpp.is_some() { "push" } else { "polling" };
    let r = saves_each_way(run, saves, idle, (&am, &bm), what);
    ok(&["unmount", &s(&bm)]);
    ok(&["unmount", &s(&am)]);
    r
}

fn main() {
    let saves = env("BENCH_SAVES", 10);
    let runs = env("BENCH_RUNS", 3);
    let idle = Duration::from_secs(env("BENCH_IDLE_S", 3) as u64);
    let xmpp = servers::Prosody::start();
    let syncthing = Syncthing::installed();
    if !syncthing {
        eprintln!(
            "NOTE: syncthing is not installed (apt-get install syncthing): the anchor is left out"
        );
    }
    // [polling, push, Syncthing] per run, alternating.
    let mut per_run: Vec<Vec<[(Duration, Duration); 2]>> = Vec::new();
    for run in 0..runs {
        let mut r = vec![
            one_run(run, saves, idle, None),
            one_run(run, saves, idle, Some(&xmpp)),
        ];
        if syncthing {
            r.push(syncthing_run(run, saves, idle));
        }
        per_run.push(r);
    }
    println!(
        "close on one device -> whole in the other's mount ({saves} saves each way, {} s quiet before each, {runs} runs):",
        idle.as_secs()
    );
    let contenders = ["polling", "push (XMPP)", "Syncthing"];
    for (c, contender) in contenders.iter().enumerate().take(per_run[0].len()) {
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
