//! Real servers for the destination tests, started by the tests themselves: an OpenSSH sshd
//! with its own config, host key and authorized key, and Garage (an S3 implementation), on
//! loopback or inside a network namespace. Each is stopped (by process id) when dropped, with
//! the `ssh` masters the SFTP client left behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn wait_port(addr: &str, port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // A server in a namespace is reached through its veth from here too.
        let ok = std::net::TcpStream::connect_timeout(
            &format!("{addr}:{port}").parse().unwrap(),
            Duration::from_millis(300),
        )
        .is_ok();
        if ok {
            return;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "server exited ({st}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "server on {addr}:{port} not ready: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn(
    netns: Option<&str>,
    program: &str,
    args: &[&str],
    log: &Path,
    envs: &[(&str, &str)],
) -> Child {
    let mut cmd = match netns {
        // Only the network namespace: `ip netns exec` would give the server a mount namespace
        // of its own, a copy of every mount there is, and keep a pocket's FUSE mount (and its
        // drive) alive there after the test has unmounted it.
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"))
                .arg("--")
                .arg(program);
            c
        }
        None => Command::new(program),
    };
    let logf = std::fs::File::create(log).unwrap();
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"))
}

fn stop(child: &mut Child) {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The ssh client setup every SFTP test shares: a host key all test servers use, a client
/// key they all accept, a known_hosts holding that host key, and an `ssh` wrapper first on
/// the PATH of the backpocket processes so that `ssh` reads this config instead of the
/// user's. Nothing in the user's ~/.ssh is touched.
pub struct SshClient {
    pub dir: PathBuf,
    /// The client's private key (authorized on every test server).
    pub key: PathBuf,
    pub host_key: PathBuf,
    /// PATH with the wrapper first.
    pub path: String,
}

/// A new ed25519 key pair at `path` (and `path`.pub), protected by `passphrase` unless empty.
pub fn keygen(path: &Path, passphrase: &str) {
    let st = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-C",
            "backpocket-test",
            "-N",
            passphrase,
            "-f",
        ])
        .arg(path)
        .status()
        .expect("ssh-keygen (install openssh-client)");
    assert!(st.success());
}

static SSH_CLIENT: OnceLock<SshClient> = OnceLock::new();

/// The certificate authority of the tests' XMPP server, once one started.
static TEST_CA: OnceLock<PathBuf> = OnceLock::new();

/// What every backpocket process of this test process gets in its environment: the ssh
/// wrapper on PATH, once an SFTP test set it up; the test CA as the only one trusted, once an
/// XMPP test made it.
pub fn child_env() -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    if let Some(c) = SSH_CLIENT.get() {
        env.push(("PATH", c.path.clone()));
    }
    if let Some(ca) = TEST_CA.get() {
        env.push(("SSL_CERT_FILE", ca.to_string_lossy().into_owned()));
    }
    env
}

/// A certificate authority, made once per test process, and a certificate it signed for
/// `localhost` and `pubsub.localhost` (the XMPP server's domain and its service).
fn test_ca() -> (&'static Path, PathBuf, PathBuf) {
    let ca = TEST_CA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("bp-test-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sh = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl (installed by scripts/install-test-deps.sh)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=backpocket test CA",
        ]);
        sh(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:localhost,DNS:pubsub.localhost\n",
        )
        .unwrap();
        sh(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        dir.join("ca.pem")
    });
    let dir = ca.parent().unwrap();
    (ca, dir.join("server.pem"), dir.join("server.key"))
}

/// A Prosody XMPP server on loopback (TLS required, with the test CA's certificate), one
/// account, PEP (each account's own publish-subscribe service), and a publish-subscribe
/// component at `pubsub.localhost`.
pub struct Prosody {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub account: String,
    pub password: String,
    config: PathBuf,
}

impl Prosody {
    pub fn start() -> Prosody {
        let dir = tempfile::Builder::new()
            .prefix("bp-test-prosody")
            .tempdir()
            .unwrap();
        let (_, cert, key) = test_ca();
        let port = free_port();
        let d = dir.path();
        std::fs::create_dir(d.join("data")).unwrap();
        let config = d.join("prosody.cfg.lua");
        std::fs::write(
            &config,
            format!(
                r#"-- The tests' own server: loopback only, no server-to-server, nothing kept.
run_as_root = true
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
log = {{ info = "{d}/prosody.log" }}
c2s_ports = {{ {port} }}
c2s_interfaces = {{ "127.0.0.1" }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
modules_enabled = {{ "roster", "saslauth", "tls", "disco", "ping", "posix", "pep" }}
modules_disabled = {{ "s2s", "offline" }}
authentication = "internal_hashed"
c2s_require_encryption = true
certificates = "{d}"
ssl = {{ key = "{key}", certificate = "{cert}" }}
VirtualHost "localhost"
Component "pubsub.localhost" "pubsub"
"#,
                d = d.display(),
                key = key.display(),
                cert = cert.display(),
            ),
        )
        .unwrap();
        let password = random_hex(16);
        let cfg = config.to_string_lossy().into_owned();
        let out = Command::new("prosodyctl")
            .args([
                "--config",
                &cfg,
                "register",
                "devices",
                "localhost",
                &password,
            ])
            .output()
            .expect("prosodyctl (installed by scripts/install-test-deps.sh)");
        assert!(
            out.status.success(),
            "prosodyctl register: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut p = Prosody {
            child: None,
            dir,
            port,
            account: "devices@localhost".into(),
            password,
            config,
        };
        p.start_again();
        p
    }

    /// Starts the server (again, after [`Prosody::stop`]).
    pub fn start_again(&mut self) {
        let log = self.dir.path().join("stdout.log");
        let cfg = self.config.to_string_lossy().into_owned();
        let mut child = spawn(None, "prosody", &["--config", &cfg, "-F"], &log, &[]);
        wait_port("127.0.0.1", self.port, &mut child, &log);
        self.child = Some(child);
    }

    /// Stops the server: every connection to it ends.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
    }

    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's log, for a failure's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prosody.log")).unwrap_or_default()
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn ssh_client() -> &'static SshClient {
    SSH_CLIENT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("bp-test-ssh-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        for name in ["host_key", "other_host_key", "id"] {
            keygen(&dir.join(name), "");
        }
        let host_pub = std::fs::read_to_string(dir.join("host_key.pub")).unwrap();
        let mut parts = host_pub.split_whitespace();
        let (kt, kb) = (parts.next().unwrap(), parts.next().unwrap());
        std::fs::write(dir.join("known_hosts"), format!("* {kt} {kb}\n")).unwrap();
        std::fs::write(
            dir.join("ssh_config"),
            format!(
                "Host *\n  UserKnownHostsFile {d}/known_hosts\n  GlobalKnownHostsFile /dev/null\n  IdentitiesOnly yes\n  IdentityFile {d}/agentless-none\n  ConnectTimeout 5\n  ServerAliveInterval 5\n  ServerAliveCountMax 2\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let wrapper = dir.join("bin/ssh");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec /usr/bin/ssh -F {} \"$@\"\n",
                dir.join("ssh_config").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        SshClient {
            key: dir.join("id"),
            host_key: dir.join("host_key"),
            dir,
            path,
        }
    })
}

/// An OpenSSH server of the test's own.
pub struct Sshd {
    child: Child,
    pub addr: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
    netns: Option<String>,
}

impl Sshd {
    /// Listens on `addr` (inside `netns` when given), with the shared test host key or
    /// another one (`other_host_key`: a server that is not the one known_hosts knows).
    pub fn start(addr: &str, netns: Option<&str>, other_host_key: bool) -> Sshd {
        let client = ssh_client();
        let dir = tempfile::Builder::new()
            .prefix("bp-test-sshd")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port();
        let host_key = if other_host_key {
            client.dir.join("other_host_key")
        } else {
            client.host_key.clone()
        };
        std::fs::copy(
            client.dir.join("id.pub"),
            dir.path().join("authorized_keys"),
        )
        .unwrap();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress {addr}\nHostKey {hk}\nAuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel ERROR\nMaxStartups 100\nMaxSessions 100\n",
                hk = host_key.display(),
                d = dir.path().display()
            ),
        )
        .unwrap();
        let child = Self::spawn_in(netns, dir.path());
        let mut s = Sshd {
            child,
            addr: addr.to_owned(),
            port,
            dir,
            netns: netns.map(str::to_owned),
        };
        wait_port(addr, port, &mut s.child, &s.dir.path().join("log"));
        s
    }

    fn spawn_in(netns: Option<&str>, dir: &Path) -> Child {
        let cfg = dir.join("sshd_config").to_string_lossy().into_owned();
        spawn(
            netns,
            "/usr/sbin/sshd",
            &["-D", "-e", "-f", &cfg],
            &dir.join("log"),
            &[],
        )
    }

    /// The server dies (its sessions with it, as when its machine goes down).
    pub fn kill(&mut self) {
        self.kill_sessions();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Back on the same address and port, with the same keys.
    pub fn start_again(&mut self) {
        self.child = Self::spawn_in(self.netns.as_deref(), self.dir.path());
        wait_port(
            &self.addr,
            self.port,
            &mut self.child,
            &self.dir.path().join("log"),
        );
    }

    fn kill_sessions(&self) {
        for pid in descendants(self.child.id()) {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
    }

    /// `sftp://` URL of `path` on this server.
    pub fn url(&self, path: &Path) -> String {
        let user = whoami();
        format!(
            "sftp://{user}@{}:{}{}",
            self.addr,
            self.port,
            path.display()
        )
    }
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // The sessions first: they outlive the listener, and one whose client vanished with
        // a deleted network link would wait for TCP to give up.
        self.kill_sessions();
        stop(&mut self.child);
        kill_ssh_masters(self.port);
    }
}

/// Every process below `pid`, from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may hold spaces and parentheses.
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        if let Some(ppid) = after
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u32>().ok())
        {
            parent_of.push((p, ppid));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(q) = frontier.pop() {
        for (p, pp) in &parent_of {
            if *pp == q && !out.contains(p) {
                out.push(*p);
                frontier.push(*p);
            }
        }
    }
    out
}

/// Ends the `ssh` processes connected to `port` (OpenDAL's SFTP client runs ssh as a master
/// that outlives a killed backpocket).
pub fn kill_ssh_masters(port: u16) {
    let port = port.to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_ssh = args
            .first()
            .is_some_and(|a| a.ends_with(b"/ssh") || *a == b"ssh");
        let ours = args
            .windows(2)
            .any(|w| w[0] == b"-p" && w[1] == port.as_bytes())
            || args
                .iter()
                .any(|a| a.ends_with(format!(":{port}").as_bytes()));
        if is_ssh && ours {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
    }
}

/// A Garage S3 server (single node), with a bucket and a key made at start.
pub struct Garage {
    children: Vec<Child>,
    configs: Vec<PathBuf>,
    pub ports: Vec<u16>,
    pub addr: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
}

pub fn have_garage() -> bool {
    Command::new("garage")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Skips a test when Garage is not installed, loudly (CI installs it: tests/run.sh).
#[macro_export]
macro_rules! require_garage {
    () => {
        if !common::servers::have_garage() {
            eprintln!(
                "SKIPPED {}: garage is not on PATH (tests/run.sh installs it with cargo install garage)",
                module_path!()
            );
            return;
        }
    };
}

/// One Garage node's config; returns (config path, S3 port).
fn garage_config(dir: &Path, addr: &str, secret: &str, replication: u32) -> (PathBuf, u16) {
    let port = free_port();
    let rpc = free_port();
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("garage.toml");
    std::fs::write(
        &config,
        format!(
            "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\nreplication_factor = {replication}\nrpc_bind_addr = \"{addr}:{rpc}\"\nrpc_public_addr = \"{addr}:{rpc}\"\nrpc_secret = \"{secret}\"\n[s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"{addr}:{port}\"\nroot_domain = \".s3.garage\"\n",
            d = dir.display(),
        ),
    )
    .unwrap();
    (config, port)
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).unwrap();
    hex::encode(b)
}

/// Runs the garage CLI against a node; returns stdout.
fn garage_cli(config: &Path, args: &[&str]) -> String {
    let out = Command::new("garage")
        .arg("-c")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "garage {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Garage {
    pub fn start(addr: &str, netns: Option<&str>) -> Garage {
        let dir = tempfile::Builder::new()
            .prefix("bp-test-garage")
            .tempdir()
            .unwrap();
        let (config, port) = garage_config(dir.path(), addr, &random_hex(32), 1);
        let access_key = format!("GK{}", random_hex(12));
        let secret_key = random_hex(32);
        let bucket = "pockets".to_owned();
        let log = dir.path().join("log");
        let cfg = config.to_string_lossy().into_owned();
        let mut child = spawn(
            netns,
            "garage",
            &["-c", &cfg, "server", "--single-node", "--default-bucket"],
            &log,
            &[
                ("GARAGE_DEFAULT_ACCESS_KEY", &access_key),
                ("GARAGE_DEFAULT_SECRET_KEY", &secret_key),
                ("GARAGE_DEFAULT_BUCKET", &bucket),
                ("RUST_LOG", "warn"),
            ],
        );
        wait_port(addr, port, &mut child, &log);
        Garage {
            children: vec![child],
            configs: vec![config],
            ports: vec![port],
            addr: addr.to_owned(),
            port,
            dir,
            access_key,
            secret_key,
            bucket,
        }
    }

    /// Three nodes on loopback with replication factor 3, a bucket and a key; clients talk to
    /// the first node.
    pub fn cluster() -> Garage {
        let dir = tempfile::Builder::new()
            .prefix("bp-test-garage3")
            .tempdir()
            .unwrap();
        let secret = random_hex(32);
        let (mut children, mut configs, mut ports) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..3 {
            let d = dir.path().join(format!("node{i}"));
            let (config, port) = garage_config(&d, "127.0.0.1", &secret, 3);
            let log = d.join("log");
            let cfg = config.to_string_lossy().into_owned();
            let mut child = spawn(
                None,
                "garage",
                &["-c", &cfg, "server"],
                &log,
                &[("RUST_LOG", "warn")],
            );
            wait_port("127.0.0.1", port, &mut child, &log);
            children.push(child);
            configs.push(config);
            ports.push(port);
        }
        let ids: Vec<String> = configs
            .iter()
            .map(|c| garage_cli(c, &["node", "id", "-q"]).trim().to_owned())
            .collect();
        for id in &ids[1..] {
            garage_cli(&configs[0], &["node", "connect", id]);
        }
        for id in &ids {
            let short = &id[..16];
            garage_cli(
                &configs[0],
                &["layout", "assign", "-z", "dc1", "-c", "1G", short],
            );
        }
        garage_cli(&configs[0], &["layout", "apply", "--version", "1"]);
        let access_key = format!("GK{}", random_hex(12));
        let secret_key = random_hex(32);
        let bucket = "pockets".to_owned();
        // The layout takes a moment to reach every node.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new("garage")
                .arg("-c")
                .arg(&configs[0])
                .args(["bucket", "create", &bucket])
                .env("RUST_LOG", "warn")
                .output()
                .unwrap()
                .status
                .success();
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the garage cluster did not come up"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        garage_cli(
            &configs[0],
            &[
                "key",
                "import",
                "--yes",
                "-n",
                "test",
                &access_key,
                &secret_key,
            ],
        );
        garage_cli(
            &configs[0],
            &[
                "bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", "test",
            ],
        );
        Garage {
            children,
            configs,
            port: ports[0],
            ports,
            addr: "127.0.0.1".into(),
            dir,
            access_key,
            secret_key,
            bucket,
        }
    }

    /// Starts node `i` again after [`Garage::kill_node`], on the same ports and data.
    pub fn restart_node(&mut self, i: usize) {
        let cfg = self.configs[i].to_string_lossy().into_owned();
        let log = self.configs[i].with_file_name("log-restarted");
        let mut child = if self.configs.len() == 1 {
            spawn(
                None,
                "garage",
                &["-c", &cfg, "server", "--single-node", "--default-bucket"],
                &log,
                &[
                    ("GARAGE_DEFAULT_ACCESS_KEY", &self.access_key),
                    ("GARAGE_DEFAULT_SECRET_KEY", &self.secret_key),
                    ("GARAGE_DEFAULT_BUCKET", &self.bucket),
                    ("RUST_LOG", "warn"),
                ],
            )
        } else {
            spawn(
                None,
                "garage",
                &["-c", &cfg, "server"],
                &log,
                &[("RUST_LOG", "warn")],
            )
        };
        wait_port(&self.addr, self.ports[i], &mut child, &log);
        self.children[i] = child;
    }

    /// Kills node `i` (as a crash: SIGKILL).
    pub fn kill_node(&mut self, i: usize) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.addr, self.port)
    }

    /// The environment a client needs for this server's key.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
        ]
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for c in &mut self.children {
            stop(c);
        }
    }
}

/// A network namespace holding the servers, reached through a veth pair whose near end the
/// test sets down and up.
pub struct Office {
    pub ns: String,
    near: String,
    pub net: String,
    pub host_addr: String,
    pub server_addr: String,
}

impl Office {
    pub fn new() -> Option<Office> {
        let id = std::process::id() % 200 + 20;
        let ns = format!("bp-office-{}", std::process::id());
        let near = format!("bpv{}", std::process::id() % 100_000);
        let far = format!("{near}p");
        let office = Office {
            ns: ns.clone(),
            near: near.clone(),
            net: format!("10.231.{id}.0/24"),
            host_addr: format!("10.231.{id}.1"),
            server_addr: format!("10.231.{id}.2"),
        };
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ip(&["netns", "add", &ns]) {
            return None;
        }
        let host_cidr = format!("{}/24", office.host_addr);
        let server_cidr = format!("{}/24", office.server_addr);
        let steps: [&[&str]; 7] = [
            &["link", "add", &near, "type", "veth", "peer", "name", &far],
            &["link", "set", &far, "netns", &ns],
            &["addr", "add", &host_cidr, "dev", &near],
            &["link", "set", &near, "up"],
            &["-n", &ns, "addr", "add", &server_cidr, "dev", &far],
            &["-n", &ns, "link", "set", &far, "up"],
            &["-n", &ns, "link", "set", "lo", "up"],
        ];
        for s in steps {
            assert!(ip(s), "ip {s:?} failed");
        }
        Some(office)
    }

    pub fn link(&self, up: bool) {
        let st = Command::new("ip")
            .args(["link", "set", &self.near, if up { "up" } else { "down" }])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Office {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.near])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}
