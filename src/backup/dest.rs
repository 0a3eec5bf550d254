//! `dest add`, `dest credentials`, `dest list`, `dest remove`: the pocket's destinations, and
//! what the replicator is told of them.

use std::io::IsTerminal;

use anyhow::{anyhow, bail, Context, Result};
use replicator::{Mode, Vault};
use serde_json::json;
use tracing::warn;

use crate::exit::{ExitCode, Failure};
use crate::keys::{self, KeyArgs};
use crate::pocket::{Config, DestConfig, Pocket};
use crate::remote::CredentialArgs;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with('.')
}

/// How to reach a remote destination and when to use it (`dest add`).
#[derive(clap::Args, Debug, Default)]
pub struct RemoteArgs {
    /// When to back up there (comma-separated or repeated; all must hold): always, reachable,
    /// network=CIDR[|CIDR...], gateway=MAC, host=NAME:PORT, not-metered,
    /// schedule='Mon-Fri 09:00-18:00'.
    #[arg(long = "when", value_name = "CONDITION")]
    pub when: Vec<String>,
    /// S3: the service's address, such as https://s3.office.lan.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// S3: the region requests are signed for (default us-east-1).
    #[arg(long)]
    pub region: Option<String>,
    /// S3: address buckets as bucket.host instead of host/bucket.
    #[arg(long)]
    pub virtual_host_style: bool,
    /// Transfers in flight at once (default 4 for a server, 2 for a folder).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub connections: Option<u16>,
    /// Upload bandwidth cap, such as 5MiB/s or 800k.
    #[arg(long, value_name = "RATE")]
    pub bandwidth_limit: Option<String>,
    /// Warn once changes have waited this long for this destination, such as 12h or 7d
    /// (default: `[warnings] unprotected_after` of the config, 3d).
    #[arg(long, value_name = "DURATION", value_parser = crate::warn::parse_duration_arg)]
    pub warn_after: Option<String>,
    #[command(flatten)]
    pub creds: CredentialArgs,
}

/// `dest add`.
pub fn dest_add(
    p: &Pocket,
    name: &str,
    url: &str,
    mode: Mode,
    keep_days: u64,
    remote: &RemoteArgs,
    args: &KeyArgs,
) -> Result<()> {
    if !valid_name(name) {
        return Err(Failure::new(
            ExitCode::Usage,
            anyhow!(
                "{name:?} is not a usable destination name: use letters, digits, '-', '_' and '.'"
            ),
        )
        .into());
    }
    let usage = |e: anyhow::Error| -> anyhow::Error { Failure::new(ExitCode::Usage, e).into() };
    let mut config = p.config()?;
    if config.destination(name).is_some() {
        bail!("a destination named {name} exists already (`backpocket dest remove {name}` first)");
    }
    replicator::Policy::parse(&remote.when).map_err(|e| usage(e.into()))?;
    if let Some(b) = &remote.bandwidth_limit {
        replicator::parse_bandwidth(b).map_err(|e| usage(e.into()))?;
    }
    let target = replicator::Target::parse(url).map_err(|e| usage(e.into()))?;
    let url = match &target {
        replicator::Target::Local(path) => {
            let path = std::path::absolute(path)?;
            if path.starts_with(&p.root) || p.root.starts_with(&path) {
                bail!(
                    "{} is inside the pocket (or holds it); a backup must live somewhere else",
                    path.display()
                );
            }
            path.to_string_lossy().into_owned()
        }
        _ => {
            if mode == Mode::Mirror {
                return Err(usage(anyhow!("a mirror needs a local folder (it keeps owners, links and special files as they are); SFTP and S3 destinations are vaults: drop --mode mirror")));
            }
            url.to_owned()
        }
    };
    let mut dest = DestConfig {
        name: name.to_owned(),
        url: url.clone(),
        mode,
        keep_versions_days: keep_days,
        when: remote.when.clone(),
        endpoint: remote.endpoint.clone(),
        region: remote.region.clone(),
        virtual_host_style: remote.virtual_host_style,
        connections: remote.connections.map(usize::from),
        bandwidth_limit: remote.bandwidth_limit.clone(),
        credentials: None,
        warn_after: remote.warn_after.clone(),
        k: None,
        members: Vec::new(),
        folder: None,
    };
    let key = match mode {
        Mode::Vault => Some(keys::pocket_key_or_new(p, &mut config, args)?),
        Mode::Mirror => None,
    };
    if !target.is_local() {
        let secrets = crate::remote::gather_credentials(&target, &remote.creds)?;
        if !secrets.is_empty() {
            let key = key.as_ref().expect("remote destinations are vaults");
            dest.credentials = Some(replicator::seal_secrets(key, name, &secrets)?);
        }
    }
    let rt = replicator::runtime()?;
    let store = dest
        .spec()
        .store(key.as_ref(), rt.handle().clone(), true)
        .map_err(anyhow::Error::from)
        .and_then(|s| {
            if target.is_local() {
                Ok(s)
            } else {
                // Reach it now: a typo in the host or a refused key is better found here.
                crate::remote::probe(&s).map(|()| s)
            }
        })
        .with_context(|| match &target {
            replicator::Target::Local(_) => {
                format!("cannot use {url} as a destination (its parent folder must exist)")
            }
            _ => format!("cannot use {url} as a destination; `backpocket dest test` explains step by step once it is added, or check the URL and credentials"),
        })?;
    match mode {
        Mode::Vault => {
            let key = key.expect("made above");
            match Vault::read_config(&store) {
                Ok(vc) if vc.pocket_id == config.id => {
                    Vault::open(store, &key)?;
                    println!("{url} already holds this pocket's vault; continuing it");
                }
                Ok(vc) => return Err(replicator::Error::OtherPocket(vc.pocket_id).into()),
                Err(replicator::Error::NotAVault(_)) => {
                    if !store.is_empty()? {
                        bail!("{url} is not empty and is not a vault; give an empty or new folder");
                    }
                    let kdf = config.key.as_ref().expect("made above").kdf.clone();
                    Vault::create(store, &config.id, kdf, &key)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Mode::Mirror => {
            replicator::init_mirror(&store, &config.id)?;
        }
    }
    rt.shutdown_background();
    config.destinations.push(dest);
    p.save_config(&config)?;
    let mode_name = match mode {
        Mode::Vault => "vault",
        Mode::Mirror => "mirror",
    };
    println!("added destination {name}: {mode_name} at {url}");
    if !remote.when.is_empty() {
        println!("used only when: {}", remote.when.join(", "));
    }
    println!("it is backed up while the pocket is mounted, or now with `backpocket sync`");
    Ok(())
}

/// `dest add-group`: one vault spread over destinations already added, any `k` of which
/// restore it and none of which holds a whole chunk. The members leave the list of
/// destinations drained on their own (what they hold stays as it is) and become the group's.
pub fn dest_add_group(
    p: &Pocket,
    name: &str,
    k: usize,
    members: &[String],
    args: &KeyArgs,
) -> Result<()> {
    let usage = |e: anyhow::Error| -> anyhow::Error { Failure::new(ExitCode::Usage, e).into() };
    if !valid_name(name) {
        return Err(usage(anyhow!(
            "{name:?} is not a usable destination name: use letters, digits, '-', '_' and '.'"
        )));
    }
    let n = members.len();
    if n < 2 || k == 0 || k > n {
        return Err(usage(anyhow!(
            "a group needs at least 2 members and a --k from 1 to their number ({n} given)"
        )));
    }
    let mut config = p.config()?;
    if config.destination(name).is_some() {
        bail!("a destination named {name} exists already (`backpocket dest remove {name}` first)");
    }
    let mut taken: Vec<DestConfig> = Vec::new();
    for m in members {
        if taken.iter().any(|t| &t.name == m) {
            return Err(usage(anyhow!(
                "{m} is named twice; each member holds one shard"
            )));
        }
        let Some(d) = config.destination(m) else {
            bail!("no destination named {m}: add each member first with `backpocket dest add {m} URL`, then group them");
        };
        if d.mode != Mode::Vault {
            bail!(
                "{m} is a mirror; a group spreads a vault, so its members are vault destinations"
            );
        }
        if d.k.is_some() {
            bail!("{m} is a group itself; give the places it spreads over instead");
        }
        taken.push(d.clone());
    }
    let key = keys::pocket_key_or_new(p, &mut config, args)?;
    let group = DestConfig {
        name: name.to_owned(),
        url: format!("group:{}", members.join(",")),
        mode: Mode::Vault,
        keep_versions_days: 0,
        when: Vec::new(),
        endpoint: None,
        region: None,
        virtual_host_style: false,
        connections: None,
        bandwidth_limit: None,
        credentials: None,
        warn_after: None,
        k: Some(k),
        members: taken,
        folder: None,
    };
    let rt = replicator::runtime()?;
    let store = group
        .spec()
        .store(Some(&key), rt.handle().clone(), true)
        .with_context(|| format!("cannot use the members of {name}"))?;
    match Vault::read_config(&store) {
        Ok(vc) if vc.pocket_id == config.id => {
            Vault::open(store, &key)?;
            println!("the members already hold group {name} of this pocket; continuing it");
        }
        Ok(vc) => return Err(replicator::Error::OtherPocket(vc.pocket_id).into()),
        Err(replicator::Error::NotAVault(_)) => {
            if !store.is_empty()? {
                bail!("the members' {name} folders are not empty and hold no vault; give members whose {name} folder is empty or new");
            }
            let kdf = config.key.as_ref().expect("made above").kdf.clone();
            Vault::create(store, &config.id, kdf, &key).with_context(|| {
                format!("cannot make group {name} on at least {k} of its members")
            })?;
        }
        Err(e) => return Err(e.into()),
    }
    rt.shutdown_background();
    config.destinations.retain(|d| !members.contains(&d.name));
    config.destinations.push(group);
    p.save_config(&config)?;
    for m in members {
        journal::remove_cursor(&p.journal_path(), m)?;
        replicator::DestState::remove(&p.meta_dir(), m);
    }
    println!(
        "added group {name}: any {k} of {n} ({}) restore it; it survives the loss of any {}",
        members.join(", "),
        n - k
    );
    println!("each member keeps the group's shards in a folder named {name}; what a member held before stays as it is");
    Ok(())
}

/// `dest replace`: destination `new` (already added) takes member `old`'s place in `group`
/// and gets its share rebuilt from the other members; `old` leaves the group (what its folder
/// holds stays, never enough alone to read anything).
pub fn dest_replace(p: &Pocket, group: &str, old: &str, new: &str, args: &KeyArgs) -> Result<()> {
    let mut config = p.config()?;
    let Some(g) = config.destination(group).cloned() else {
        bail!("no destination named {group} (see `backpocket dest list`)");
    };
    if g.k.is_none() {
        bail!("{group} is not a group; `backpocket dest add-group` makes one");
    }
    let Some(at) = g.members.iter().position(|m| m.name == old) else {
        let names: Vec<&str> = g.members.iter().map(|m| m.name.as_str()).collect();
        bail!(
            "{old} is not a member of {group} (its members: {})",
            names.join(", ")
        );
    };
    let joining = joining_member(&config, &g, group, new)?;
    let key = keys::pocket_key(&config, args, true)?
        .ok_or_else(|| anyhow!("the pocket has no key; a group is a vault, made with one"))?;
    let mut changed = g.clone();
    changed.members[at] = joining;
    changed.url = group_url(&changed.members);
    let rt = replicator::runtime()?;
    let store = changed
        .spec()
        .store_joining(Some(&key), rt.handle().clone(), false, Some(new))
        .with_context(|| format!("cannot use the members of {group}"))?;
    let vc = Vault::read_config(&store)
        .with_context(|| format!("cannot read group {group} from its other members"))?;
    if vc.pocket_id != config.id {
        return Err(replicator::Error::OtherPocket(vc.pocket_id).into());
    }
    store
        .seat_member(new)
        .with_context(|| format!("cannot write to {new}"))?;
    // From here on the pocket's config names it: a crash or a cut leaves a member that is
    // behind, which the drains bring up to date.
    take_into_group(p, &mut config, changed, new)?;
    println!("{new} replaces {old} in group {group}; rebuilding its share from the other members");
    let bar = objects_bar(&format!("rebuilding {new}"));
    let left = store.fill_member(new, &counting(&bar));
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    rt.shutdown_background();
    println!(
        "{old} left the group; what its {} folder holds stays there (never a whole chunk), remove it when you like",
        g.folder.as_deref().unwrap_or(group)
    );
    match left {
        Ok(0) => {
            let (k, n) = (g.k.unwrap_or(0), g.members.len());
            println!(
                "{new} holds its share: any {k} of {n} restore {group} again; it survives the loss of any {}",
                n - k
            );
            Ok(())
        }
        Ok(left) => Err(anyhow!(
            "{new} still lacks {left} objects that could not be rebuilt now (too few other \
             members answered); the mount or `backpocket sync` goes on with them, and \
             `backpocket journal status` shows how far it is"
        )),
        Err(e) => Err(anyhow::Error::from(e).context(format!(
            "{new} is in the group but its share could not be rebuilt now; the mount or \
             `backpocket sync` goes on with it, and `backpocket journal status` shows how far it is"
        ))),
    }
}

/// `dest add-member`: the group spread over its members and `new` (optionally with another
/// `k`). Every pack is re-encoded for the new shape, so the whole group is copied into a new
/// folder at every member, from the old one; the pocket's config moves to it only once the
/// copy is whole, and the old folders are removed after. History is kept.
pub fn dest_add_member(
    p: &Pocket,
    group: &str,
    new: &str,
    k: Option<usize>,
    args: &KeyArgs,
) -> Result<()> {
    let usage = |e: anyhow::Error| -> anyhow::Error { Failure::new(ExitCode::Usage, e).into() };
    let mut config = p.config()?;
    let Some(g) = config.destination(group).cloned() else {
        bail!("no destination named {group} (see `backpocket dest list`)");
    };
    let Some(old_k) = g.k else {
        bail!("{group} is not a group; `backpocket dest add-group` makes one");
    };
    let joining = joining_member(&config, &g, group, new)?;
    let (k, n) = (k.unwrap_or(old_k), g.members.len() + 1);
    if k == 0 || k > n {
        return Err(usage(anyhow!(
            "--k must be from 1 to the number of members ({n} with {new})"
        )));
    }
    // One writer per vault: the mount's replicator holds the group while it runs.
    let Some((_, _held)) = super::hold_destination(Some(&p.root), group)? else {
        bail!("{group} is not a destination of this pocket");
    };
    let key = keys::pocket_key(&config, args, true)?
        .ok_or_else(|| anyhow!("the pocket has no key; a group is a vault, made with one"))?;
    let old_folder = g.folder.clone().unwrap_or_else(|| group.to_owned());
    let folder = next_folder(group, g.folder.as_deref());
    let mut changed = g.clone();
    changed.members.push(joining);
    changed.k = Some(k);
    changed.folder = Some(folder.clone());
    changed.url = group_url(&changed.members);
    let rt = replicator::runtime()?;
    let from = g
        .spec()
        .store(Some(&key), rt.handle().clone(), false)
        .with_context(|| format!("cannot use the members of {group}"))?;
    let vc = Vault::read_config(&from)
        .with_context(|| format!("cannot read group {group} from its members"))?;
    if vc.pocket_id != config.id {
        return Err(replicator::Error::OtherPocket(vc.pocket_id).into());
    }
    let to = changed
        .spec()
        .store_joining(Some(&key), rt.handle().clone(), false, Some(new))
        .with_context(|| format!("cannot use the members of {group} with {new}"))?;
    let names: Vec<&str> = changed.members.iter().map(|m| m.name.as_str()).collect();
    println!(
        "re-spreading {group} over {} (any {k} of {n}): every object is copied into a folder {folder} at each member",
        names.join(", ")
    );
    // What an earlier try left there may have another shape: start afresh.
    for (member, failed) in to.delete_member_folders()? {
        if let Some(e) = failed {
            warn!("{member}: {folder} not cleared ({e}); what an earlier try left there is found as damage and rebuilt");
        }
    }
    let bar = objects_bar(&format!("re-spreading {group}"));
    let copied = from.copy_into(&to, &counting(&bar));
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let copied = copied.with_context(|| {
        format!(
            "the copy of {group} into {folder} stopped; nothing changed (the group still lives \
             in its {old_folder} folders); run the same command again to start it over"
        )
    })?;
    // Every object is held by k members at least (a write counts once k hold it): the
    // group moves. Members that missed some are behind and caught up by the drains.
    take_into_group(p, &mut config, changed, new)?;
    println!(
        "{group} lives in {folder} now ({copied} objects copied): any {k} of {n} restore it; it survives the loss of any {}",
        n - k
    );
    for (member, failed) in from.delete_member_folders()? {
        match failed {
            None => println!("  {member}: its {old_folder} folder removed"),
            Some(e) => println!(
                "  {member}: its {old_folder} folder is left ({e}); nothing reads it any more, remove it when you like"
            ),
        }
    }
    rt.shutdown_background();
    Ok(())
}

/// Saves group `changed` in the pocket's config, with destination `new` now only its member
/// (no longer drained on its own: its cursor and state go).
fn take_into_group(p: &Pocket, config: &mut Config, changed: DestConfig, new: &str) -> Result<()> {
    config
        .destinations
        .retain(|d| d.name != new && d.name != changed.name);
    config.destinations.push(changed);
    p.save_config(config)?;
    journal::remove_cursor(&p.journal_path(), new)?;
    replicator::DestState::remove(&p.meta_dir(), new);
    Ok(())
}

/// The folder a group's next re-spread goes to: `NAME.2`, `NAME.3`, ...
fn next_folder(group: &str, folder: Option<&str>) -> String {
    let gen = folder
        .and_then(|f| {
            f.strip_prefix(group)?
                .strip_prefix('.')?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(1);
    format!("{group}.{}", gen + 1)
}

fn group_url(members: &[DestConfig]) -> String {
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    format!("group:{}", names.join(","))
}

/// Destination `new`, checked as one that may join group `g`.
fn joining_member(config: &Config, g: &DestConfig, group: &str, new: &str) -> Result<DestConfig> {
    if g.members.iter().any(|m| m.name == new) {
        bail!("{new} is a member of {group} already");
    }
    let Some(joining) = config.destination(new).cloned() else {
        bail!("no destination named {new}: add it first with `backpocket dest add {new} URL`");
    };
    if joining.mode != Mode::Vault {
        bail!("{new} is a mirror; a group spreads a vault, so its members are vault destinations");
    }
    if joining.k.is_some() {
        bail!("{new} is a group itself; give one place");
    }
    Ok(joining)
}

/// A bar counting objects, when a person is watching.
fn objects_bar(message: &str) -> Option<indicatif::ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} objects eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_message(message.to_owned());
        b
    })
}

/// What moves `bar` (objects done, in all).
fn counting(bar: &Option<indicatif::ProgressBar>) -> impl Fn(u64, u64) + Sync + '_ {
    move |done, total| {
        if let Some(b) = bar {
            b.set_length(total);
            b.set_position(done);
        }
    }
}

/// `dest credentials`.
pub fn dest_credentials(
    p: &Pocket,
    name: &str,
    creds: &CredentialArgs,
    args: &KeyArgs,
) -> Result<()> {
    let mut config = p.config()?;
    // A group's member keeps its own credentials.
    let Some(d) = config
        .destinations
        .iter()
        .flat_map(|d| std::iter::once(d).chain(&d.members))
        .find(|d| d.name == name)
        .cloned()
    else {
        bail!("no destination named {name} (see `backpocket dest list`)");
    };
    if d.k.is_some() {
        bail!("{name} is a group: give the credentials of each member (`backpocket dest credentials MEMBER`)");
    }
    let target = replicator::Target::parse(&d.url)?;
    if target.is_local() {
        bail!("{name} is a local folder; it needs no credentials");
    }
    let secrets = crate::remote::gather_credentials(&target, creds)?;
    let key = keys::pocket_key_or_new(p, &mut config, args)?;
    let sealed = if secrets.is_empty() {
        None
    } else {
        Some(replicator::seal_secrets(&key, name, &secrets)?)
    };
    for dc in &mut config.destinations {
        if dc.name == name {
            dc.credentials = sealed.clone();
        }
        for m in dc.members.iter_mut().filter(|m| m.name == name) {
            m.credentials = sealed.clone();
        }
    }
    p.save_config(&config)?;
    match sealed {
        Some(_) => println!("stored the credentials of {name}, sealed with the pocket key"),
        None => println!("{name} keeps no credentials: ssh's agent and ~/.ssh are used"),
    }
    Ok(())
}

pub fn dest_list(p: &Pocket, json: bool) -> Result<()> {
    let config = p.config()?;
    if json {
        let list: Vec<_> = config
            .destinations
            .iter()
            .map(|d| json!({"name": d.name, "url": d.url, "mode": d.mode, "keep_versions_days": d.keep_versions_days,
                "k": d.k, "members": d.members.iter().map(|m| json!({"name": m.name, "url": m.url})).collect::<Vec<_>>(),
                "when": d.when, "endpoint": d.endpoint, "region": d.region, "connections": d.connections,
                "bandwidth_limit": d.bandwidth_limit, "has_credentials": d.credentials.is_some()}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if config.destinations.is_empty() {
        println!("no destinations; add one with `backpocket dest add NAME FOLDER`");
    }
    for d in &config.destinations {
        if let Some(k) = d.k {
            let names: Vec<&str> = d.members.iter().map(|m| m.name.as_str()).collect();
            println!(
                "{:<16} group  any {k} of {}: {}",
                d.name,
                names.len(),
                names.join(", ")
            );
            for m in &d.members {
                println!(
                    "  {:<14} member {}/{}",
                    m.name,
                    m.url.trim_end_matches('/'),
                    d.name
                );
            }
            continue;
        }
        let mode = match d.mode {
            Mode::Vault => "vault ",
            Mode::Mirror => "mirror",
        };
        let when = if d.when.is_empty() {
            String::new()
        } else {
            format!("  (when {})", d.when.join(", "))
        };
        println!("{:<16} {mode} {}{when}", d.name, d.url);
    }
    Ok(())
}

pub fn dest_remove(p: &Pocket, name: &str) -> Result<()> {
    let mut config = p.config()?;
    let Some(removed) = config.destination(name).cloned() else {
        bail!("no destination named {name} (see `backpocket dest list`)");
    };
    config.destinations.retain(|d| d.name != name);
    p.save_config(&config)?;
    journal::remove_cursor(&p.journal_path(), name)?;
    replicator::DestState::remove(&p.meta_dir(), name);
    println!("removed destination {name}; what it holds is left as it is");
    if !removed.members.is_empty() {
        let names: Vec<&str> = removed.members.iter().map(|m| m.name.as_str()).collect();
        println!(
            "its members ({}) went with it; add one again with `backpocket dest add` to back up there on its own",
            names.join(", ")
        );
    }
    Ok(())
}

/// What the replicator needs, for the mount and for `sync`.
pub fn setup(
    p: &Pocket,
    config: &Config,
    key: Option<replicator::Key>,
) -> Result<replicator::Setup> {
    Ok(replicator::Setup {
        pocket: p.root.clone(),
        meta_dir: p.meta_dir(),
        journal: p.journal_path(),
        pocket_id: config.id.clone(),
        key,
        dests: config.destinations.iter().map(|d| d.spec()).collect(),
        ids: journal::DriveIds::of_journal(&p.journal_path())
            .context("cannot read how the journal knows files")?,
        drained: None,
    })
}
