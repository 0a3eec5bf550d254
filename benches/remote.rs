//! Protecting the replication data set to an S3 server (Garage) and to an SFTP server
//! (OpenSSH), side by side with `restic` on the same backend and `rclone copy` to the same
//! server: first protection and an incremental one after changing about 1% of the data.
//!
//! The servers run on loopback, started here as the tests start them; every timing ends with
//! `sync` (the servers' data durable on this machine's disk). Contenders alternate within each
//! round (who goes first rotates). Data set: BENCH_DATA_MB (default 256), rounds: BENCH_ROUNDS
//! (default 3). Needs openssh-server, restic, rclone and garage; contenders that are missing
//! are left out and said so.

mod common;

#[path = "../tests/common/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::path::Path;
use std::process::Command;

use common::dataset::{have, mutate, prepare, sh, timed, Table};
use common::{env, PASS};
use servers::{ssh_client, Garage, Sshd};

fn bp(args: &[&str], cfg: &Path) -> Command {
    let mut c = common::bp(args, cfg);
    c.env("PATH", &ssh_client().path);
    c
}

/// A place for round `r`: the URL, more arguments, environment.
type Invocation = (String, Vec<String>, Vec<(String, String)>);

/// How each contender reaches one server.
struct Server {
    kind: &'static str,
    /// backpocket's URL for round `r`, with `dest add` arguments.
    bp_url: Box<dyn Fn(u64) -> (String, Vec<String>)>,
    /// restic's repository for round `r`, with its extra arguments and environment.
    restic: Box<dyn Fn(u64) -> Invocation>,
    /// rclone's target for round `r`, with its arguments and environment.
    rclone: Box<dyn Fn(u64) -> Invocation>,
}

fn s3_server(g: &Garage) -> Server {
    let (ep, ak, sk) = (g.endpoint(), g.access_key.clone(), g.secret_key.clone());
    let env = vec![
        ("AWS_ACCESS_KEY_ID".to_owned(), ak),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), sk),
        // This machine's environment names a CA bundle rclone's S3 client cannot load for a
        // plain-HTTP endpoint; nothing here uses TLS.
        ("AWS_CA_BUNDLE".to_owned(), String::new()),
    ];
    let (e1, e2, e3) = (ep.clone(), ep.clone(), env.clone());
    let env2 = env.clone();
    Server {
        kind: "S3",
        bp_url: Box::new(move |r| {
            (
                format!("s3://pockets/bp-{r}"),
                vec![
                    "--endpoint".into(),
                    e1.clone(),
                    "--region".into(),
                    "garage".into(),
                ],
            )
        }),
        restic: Box::new(move |r| {
            (
                format!("s3:{e2}/pockets/restic-{r}"),
                vec!["-o".into(), "s3.region=garage".into()],
                e3.clone(),
            )
        }),
        rclone: Box::new(move |r| {
            (
                format!(":s3:pockets/rclone-{r}"),
                vec![
                    "--s3-provider".into(),
                    "Other".into(),
                    "--s3-endpoint".into(),
                    ep.clone(),
                    "--s3-region".into(),
                    "garage".into(),
                    "--s3-env-auth".into(),
                ],
                env2.clone(),
            )
        }),
    }
}

fn sftp_server(s: &Sshd, base: &Path, client_dir: &Path) -> Server {
    let c = ssh_client();
    let (addr, port) = (s.addr.clone(), s.port);
    let base = base.to_owned();
    let key = c.key.to_string_lossy().into_owned();
    let config = c.dir.join("ssh_config").to_string_lossy().into_owned();
    // rclone's own SSH client does not take a `*` host pattern: name this server.
    let host_pub = std::fs::read_to_string(c.dir.join("host_key.pub")).unwrap();
    let mut parts = host_pub.split_whitespace();
    let known_file = client_dir.join("known_hosts_rclone");
    std::fs::write(
        &known_file,
        format!(
            "[{addr}]:{port} {} {}\n",
            parts.next().unwrap(),
            parts.next().unwrap()
        ),
    )
    .unwrap();
    let known = known_file.to_string_lossy().into_owned();
    let (a1, a2, a3) = (addr.clone(), addr.clone(), addr);
    let (b1, b2, b3) = (base.clone(), base.clone(), base);
    let k1 = key.clone();
    Server {
        kind: "SFTP",
        bp_url: Box::new(move |r| {
            (
                format!("sftp://root@{a1}:{port}{}/bp-{r}", b1.display()),
                vec!["--identity".into(), k1.clone()],
            )
        }),
        restic: Box::new(move |r| {
            let cmd = format!("ssh -F {config} -i {key} -p {port} root@{a2} -s sftp");
            (
                format!("sftp:root@{a2}:{}/restic-{r}", b2.display()),
                vec!["-o".into(), format!("sftp.command={cmd}")],
                Vec::new(),
            )
        }),
        rclone: Box::new(move |r| {
            (
                format!(":sftp:{}/rclone-{r}", b3.display()),
                vec![
                    "--sftp-host".into(),
                    a3.clone(),
                    "--sftp-port".into(),
                    port.to_string(),
                    "--sftp-user".into(),
                    "root".into(),
                    "--sftp-key-file".into(),
                    ssh_client().key.to_string_lossy().into_owned(),
                    "--sftp-known-hosts-file".into(),
                    known.clone(),
                    // No remote md5sum/sha1sum runs (the server offers only SFTP): rclone's
                    // fastest setting for this server.
                    "--sftp-disable-hashcheck".into(),
                ],
                Vec::new(),
            )
        }),
    }
}

fn run_restic(srv: &Server, round: u64, src: &Path, init: bool) -> std::time::Duration {
    let (repo, extra, envs) = (srv.restic)(round);
    let cmd = |args: &[&str]| {
        let mut c = Command::new("restic");
        c.args(args)
            .arg("-r")
            .arg(&repo)
            .args(&extra)
            .env("RESTIC_PASSWORD", PASS)
            .envs(envs.iter().map(|(k, v)| (k, v)));
        c
    };
    if init {
        sh(&mut cmd(&["init", "-q"]));
    }
    timed(|| {
        sh(cmd(&["backup", "-q", "--exclude", ".backpocket"]).arg(src));
    })
}

fn run_rclone(srv: &Server, round: u64, src: &Path) -> std::time::Duration {
    let (target, extra, envs) = (srv.rclone)(round);
    timed(|| {
        sh(Command::new("rclone")
            .args(["copy", "--exclude", ".backpocket/**", "--transfers", "4"])
            .arg(src)
            .arg(&target)
            .args(&extra)
            .envs(envs.iter().map(|(k, v)| (k, v))))
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let total_mb = env("BENCH_DATA_MB", 256);
    let rounds = env("BENCH_ROUNDS", 3) as u64;
    let mut tools: Vec<&str> = vec!["backpocket"];
    for t in ["restic", "rclone"] {
        if have(t) {
            tools.push(t);
        } else {
            eprintln!("NOTE: {t} is not installed; it is left out");
        }
    }
    if !have("garage") {
        eprintln!("NOTE: garage is not installed: the S3 part is left out");
    }
    eprintln!("remote benchmark: {total_mb} MiB, {rounds} rounds, contenders: {tools:?}");
    let (work, bytes) = prepare("remote", total_mb);
    let base = work.path();
    let cfg = base.join("config");
    let src = base.join("pocket");
    sh(&mut bp(&["init", src.to_str().unwrap()], &cfg));
    let srv_dir = base.join("sftp-server");
    std::fs::create_dir_all(&srv_dir).unwrap();
    let known_dir = base.join("client");
    std::fs::create_dir_all(&known_dir).unwrap();
    let sshd = Sshd::start("127.0.0.1", None, false);
    let garage = have("garage").then(|| Garage::start("127.0.0.1", None));
    let mut servers = vec![sftp_server(&sshd, &srv_dir, &known_dir)];
    if let Some(g) = &garage {
        servers.push(s3_server(g));
    }
    let mut table = Table::default();
    for round in 0..rounds {
        eprintln!("  round {}", round + 1);
        for srv in &servers {
            let mut order = tools.clone();
            let n = order.len();
            order.rotate_left(round as usize % n);
            // Each contender's first backup to a fresh place, then after ~1% changed, an
            // incremental one; the data set is put back for the next contender.
            let first = format!("{} first", srv.kind);
            let incr = format!("{} incremental", srv.kind);
            for who in &order {
                let gen_backup = base.join("pocket-backup");
                let _ = std::fs::remove_dir_all(&gen_backup);
                sh(Command::new("cp").arg("-a").arg(&src).arg(&gen_backup));
                match *who {
                    "restic" => {
                        table.add(&first, who, run_restic(srv, round, &src, true));
                        mutate(&src, round, total_mb);
                        table.add(&incr, who, run_restic(srv, round, &src, false));
                    }
                    "rclone" => {
                        table.add(&first, who, run_rclone(srv, round, &src));
                        mutate(&src, round, total_mb);
                        table.add(&incr, who, run_rclone(srv, round, &src));
                    }
                    _ => {
                        let (url, extra) = (srv.bp_url)(round);
                        let name = format!("bench-{}-{round}", srv.kind.to_lowercase());
                        let mut add = bp(
                            &[
                                "dest",
                                "add",
                                &name,
                                &url,
                                "--pocket",
                                src.to_str().unwrap(),
                            ],
                            &cfg,
                        );
                        add.args(&extra);
                        if let Some(g) = &garage {
                            add.env("AWS_ACCESS_KEY_ID", &g.access_key)
                                .env("AWS_SECRET_ACCESS_KEY", &g.secret_key);
                        }
                        sh(&mut add);
                        let sync =
                            || sh(&mut bp(&["sync", "--pocket", src.to_str().unwrap()], &cfg));
                        table.add(&first, who, timed(sync));
                        mutate(&src, round, total_mb);
                        table.add(&incr, who, timed(sync));
                        sh(&mut bp(
                            &["dest", "remove", &name, "--pocket", src.to_str().unwrap()],
                            &cfg,
                        ));
                    }
                }
                // The same data for the next contender (the pocket's own folder kept).
                for e in std::fs::read_dir(&src).unwrap().flatten() {
                    if e.file_name() != ".backpocket" {
                        let p = e.path();
                        if p.is_dir() {
                            std::fs::remove_dir_all(&p).unwrap();
                        } else {
                            std::fs::remove_file(&p).unwrap();
                        }
                    }
                }
                for e in std::fs::read_dir(&gen_backup).unwrap().flatten() {
                    if e.file_name() != ".backpocket" {
                        sh(Command::new("cp").arg("-a").arg(e.path()).arg(&src));
                    }
                }
            }
        }
    }
    println!(
        "\nremote protection of {:.0} MiB ({} rounds; servers on loopback; every timing ends with sync)",
        bytes as f64 / 1048576.0,
        rounds
    );
    for srv in &servers {
        table.print(&format!("{} first", srv.kind), "backpocket", "");
        table.print(&format!("{} incremental", srv.kind), "backpocket", "");
    }
    drop(garage);
    drop(sshd);
}
