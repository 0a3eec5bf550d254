//! Remote destinations from the command line: where their credentials come from, and
//! `dest test`, which walks through reaching one step by step and says what failed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use replicator::{Secrets, Store, Target, Vault};
use serde_json::json;

use crate::exit::{ExitCode, Failure};
use crate::keys::{self, KeyArgs};
use crate::pocket::{DestConfig, Pocket};

/// Where a destination's credentials come from.
#[derive(clap::Args, Debug, Default)]
pub struct CredentialArgs {
    /// S3: read the keys from this profile of ~/.aws/credentials (else from
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).
    #[arg(long)]
    pub profile: Option<String>,
    /// SFTP: carry this private key in the pocket, sealed with the pocket key (else ssh
    /// uses the agent and the keys of ~/.ssh as usual).
    #[arg(long, value_name = "KEY_FILE")]
    pub identity: Option<PathBuf>,
}

/// The credentials `dest add` and `dest credentials` seal into the pocket.
pub fn gather_credentials(target: &Target, args: &CredentialArgs) -> Result<Secrets> {
    let usage = |e: anyhow::Error| -> anyhow::Error { Failure::new(ExitCode::Usage, e).into() };
    match target {
        Target::Local(_) => Ok(Secrets::default()),
        Target::Sftp { .. } => {
            if args.profile.is_some() {
                return Err(usage(anyhow!(
                    "--profile is for S3; an SFTP destination takes --identity KEY_FILE"
                )));
            }
            let Some(file) = &args.identity else {
                return Ok(Secrets::default());
            };
            let mut s = Secrets::default();
            s.ssh_key = Some(read_ssh_key(file)?);
            Ok(s)
        }
        Target::S3 { .. } => {
            if args.identity.is_some() {
                return Err(usage(anyhow!("--identity is for SFTP; an S3 destination takes its keys from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or --profile")));
            }
            let s = match &args.profile {
                Some(profile) => from_profile(profile)?,
                None => Secrets::from_env(),
            };
            if s.access_key_id.is_none() || s.secret_access_key.is_none() {
                bail!("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give --profile NAME (from ~/.aws/credentials)");
            }
            Ok(s)
        }
    }
}

/// A private key ssh can use without asking for anything (the replicator runs unattended).
fn read_ssh_key(file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the key {}", file.display()))?;
    if !text.contains("PRIVATE KEY") {
        bail!(
            "{} is not a private key (a public key ends in .pub; give the file without it)",
            file.display()
        );
    }
    let check = std::process::Command::new("ssh-keygen")
        .args(["-y", "-P", "", "-f"])
        .arg(file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if let Ok(st) = check {
        if !st.success() {
            bail!(
                "{} is protected by a passphrase, which an unattended backup cannot type: load it into ssh-agent and add the destination without --identity, or use a key made for backups",
                file.display()
            );
        }
    }
    Ok(text)
}

/// S3 keys from a profile of the shared credentials file.
fn from_profile(profile: &str) -> Result<Secrets> {
    let path = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".aws/credentials")))
        .ok_or_else(|| anyhow!("cannot find ~/.aws/credentials (HOME is not set)"))?;
    let ini = ini::Ini::load_from_file(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let sec = ini
        .section(Some(profile))
        .ok_or_else(|| anyhow!("{} has no profile [{profile}]", path.display()))?;
    let get = |k: &str| sec.get(k).map(str::to_owned).filter(|v| !v.is_empty());
    Ok(Secrets {
        access_key_id: get("aws_access_key_id"),
        secret_access_key: get("aws_secret_access_key"),
        session_token: get("aws_session_token"),
        ssh_key: None,
        password: None,
    })
}

/// Reaches the store once (a listing of its top), for `dest add`.
pub fn probe(store: &Store) -> Result<()> {
    store
        .is_empty()
        .map(|_| ())
        .map_err(|e| anyhow!("{}", e.explain()))
}

/// One step of `dest test`.
struct Step {
    name: &'static str,
    ok: bool,
    ms: u128,
    detail: String,
}

/// `dest test`: `name` is a configured destination, or a URL or folder (which needs no pocket:
/// the drive may be lost).
pub fn dest_test(found: Result<Pocket>, name: &str, json_out: bool, args: &KeyArgs) -> Result<()> {
    let is_url = name.contains('/');
    let config = match found {
        Ok(p) => Some(p.config()?),
        Err(_) if is_url => None,
        Err(e) => return Err(e),
    };
    let d = match config.as_ref().and_then(|c| c.destination(name)) {
        Some(d) => d.clone(),
        None if is_url => DestConfig::for_url(name),
        None => bail!(
            "no destination named {name} (see `backpocket dest list`), and not a URL or folder"
        ),
    };
    let spec = d.spec();
    let mut steps: Vec<Step> = Vec::new();
    let mut run = |name: &'static str, f: &mut dyn FnMut() -> Result<String>| -> bool {
        let t = Instant::now();
        let r = f();
        let ms = t.elapsed().as_millis();
        let ok = r.is_ok();
        let detail = r.unwrap_or_else(|e| format!("{e:#}"));
        if !json_out {
            let mark = if ok { "ok  " } else { "FAIL" };
            println!("{mark} {name:<12} {detail} ({ms} ms)");
        }
        steps.push(Step {
            name,
            ok,
            ms,
            detail,
        });
        ok
    };
    // The conditions are reported, not enforced: a test is asked for now.
    let policy = replicator::Policy::parse(&d.when)?;
    run("conditions", &mut || {
        Ok(match policy.waiting_for() {
            None if policy.is_always() => "none; used whenever it is reachable".into(),
            None => format!("met ({})", d.when.join(", ")),
            Some(w) => format!("not met: the replicator waits for {w} (testing anyway)"),
        })
    });
    // Sealed credentials need the pocket key; reading whose vault it is does not.
    let key = match (&config, &d.credentials) {
        (Some(c), Some(_)) => keys::pocket_key(c, args, true)?,
        _ => None,
    };
    let rt = replicator::runtime()?;
    let mut store = None;
    let opened = run("credentials", &mut || {
        let s = spec
            .store(key.as_ref(), rt.handle().clone(), false)
            .map_err(|e| anyhow!("{}", e.explain()))?;
        store = Some(s);
        Ok(match &d.credentials {
            Some(_) => "stored in the pocket, sealed; opened".into(),
            None if matches!(Target::parse(&d.url)?, Target::Sftp { .. }) => {
                "none stored: ssh uses its agent and ~/.ssh".into()
            }
            None => "none needed".into(),
        })
    });
    let ok = opened
        && {
            let store = store.as_ref().expect("opened");
            let probe_key = format!(".backpocket-test/{}", random_hex());
            let mut data = vec![0u8; 256 * 1024];
            getrandom::fill(&mut data).map_err(|e| anyhow!("no randomness: {e}"))?;
            run("reach", &mut || {
                store.is_empty().map_err(|e| anyhow!("{}", e.explain()))?;
                Ok(format!("{} answered and let us in", spec.url))
            }) && run("write", &mut || {
                let t = Instant::now();
                store
                    .put(&probe_key, data.clone())
                    .map_err(|e| anyhow!("{}", e.explain()))?;
                Ok(format!(
                    "256 KiB written ({:.1} MB/s)",
                    data.len() as f64 / t.elapsed().as_secs_f64().max(1e-6) / 1e6
                ))
            }) && run("read back", &mut || {
                let back = store
                    .get(&probe_key)
                    .map_err(|e| anyhow!("{}", e.explain()))?;
                if back != data {
                    bail!("what came back differs from what was written ({} bytes back): the server or something in between damages data", back.len());
                }
                Ok("identical".into())
            }) && run("delete", &mut || {
                store
                    .delete(&probe_key)
                    .map_err(|e| anyhow!("{}", e.explain()))?;
                if store.exists(&probe_key).unwrap_or(false) {
                    bail!("the test object is still there after deleting it");
                }
                Ok("removed".into())
            }) && run("vault", &mut || {
                match d.mode {
                replicator::Mode::Mirror => Ok("a mirror; nothing more to check".into()),
                replicator::Mode::Vault => match Vault::read_config(store) {
                    Ok(vc) if config.as_ref().is_some_and(|c| c.id == vc.pocket_id) => {
                        Ok(format!("holds this pocket's vault {}", vc.id))
                    }
                    Ok(vc) if config.is_none() => Ok(format!(
                        "holds the vault {} of pocket {} (`backpocket init --from {name} DIR` makes a drive of it)",
                        vc.id, vc.pocket_id
                    )),
                    Err(replicator::Error::NotAVault(_)) if config.is_none() => {
                        Ok("no vault here yet".into())
                    }
                    Ok(vc) => bail!(
                        "holds the vault of another pocket ({}); give each pocket its own place",
                        vc.pocket_id
                    ),
                    Err(e) => bail!("{}", e.explain()),
                },
            }
            })
        };
    rt.shutdown_background();
    if json_out {
        let list: Vec<_> = steps
            .iter()
            .map(|s| json!({"step": s.name, "ok": s.ok, "ms": s.ms, "detail": s.detail}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"name": name, "url": d.url, "ok": ok, "steps": list})
            )?
        );
    }
    if !ok {
        return Err(Failure::new(ExitCode::Error, anyhow!("{name}: the test failed")).into());
    }
    if !json_out {
        println!("{name} works");
    }
    Ok(())
}

fn random_hex() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}
