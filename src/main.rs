//! The `backpocket` command: the command line, config loading and wiring of the crates.

mod backup;
mod devices;
mod eject;
mod exit;
mod keys;
mod mount;
mod pocket;
mod push;
mod remote;
mod report;
mod service;
mod warn;
mod watch;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::exit::{ExitCode, Failure};
use crate::pocket::Pocket;

/// A portable drive that backs itself up. Mount the pocket, work in it as in any folder;
/// every change lands on the drive and in the pocket's journal.
#[derive(Parser, Debug)]
#[command(name = "backpocket", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    key: keys::KeyArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a pocket of a folder; files already there are adopted (recorded in the journal).
    Init {
        /// The folder on the drive (created if missing).
        dir: PathBuf,
        /// Make the pocket from a destination (a configured name or its folder): the drive
        /// was lost. The files, and the pocket's config with its destinations, come back.
        #[arg(long, value_name = "DEST", conflicts_with = "join")]
        from: Option<String>,
        /// Join the vault at DEST (its folder or URL) as another device: the new pocket gets
        /// the vault's files and destinations, writes its own log there, and takes the other
        /// devices' changes while mounted (asks for the vault's passphrase).
        #[arg(long, value_name = "DEST")]
        join: Option<String>,
        /// This device's name among the vault's devices (default: the machine's name).
        #[arg(long, value_name = "NAME", requires = "join")]
        name: Option<String>,
    },
    /// The devices that share this pocket's vault: online or when last seen, how far behind,
    /// and recent conflicts.
    Devices {
        #[command(subcommand)]
        command: Option<DevicesCommand>,
        #[command(flatten)]
        pocket: PocketArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Mount a pocket as a folder. Runs in the foreground until unmounted (Ctrl-C, SIGTERM or
    /// `backpocket unmount`), unless --daemon.
    Mount(MountArgs),
    /// Unmount a mounted pocket; returns once its journal is closed.
    Unmount {
        /// The mountpoint.
        mountpoint: PathBuf,
    },
    /// Make the drive safe to unplug: let reachable destinations take the last changes,
    /// unmount, flush the drive, unmount its filesystem, and say what is still only on it.
    Eject {
        /// The mountpoint (or the pocket folder).
        mountpoint: PathBuf,
        /// Unmount even while files in it are open: they stay usable until closed, and the
        /// drive is released once they are.
        #[arg(long)]
        force: bool,
        /// Seconds to wait for the last backup to reachable destinations (0: do not wait;
        /// Ctrl-C stops waiting). What is not sent stays in the journal for next time.
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        wait: u64,
        /// Leave the drive's filesystem mounted (only the pocket is unmounted).
        #[arg(long)]
        keep_drive_mounted: bool,
        #[arg(long)]
        json: bool,
    },
    /// Plug in and it mounts: install the service that mounts pockets on drives as they are
    /// plugged in, or run its parts.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (backpocket.1 and one per command) into a folder.
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// The mount's pull, started by the mount in a process of its own (reads the key and the
    /// drains on standard input).
    #[command(hide = true)]
    PullHelper {
        #[arg(long)]
        pocket: PathBuf,
        #[arg(long)]
        mountpoint: PathBuf,
        #[arg(long)]
        parent: u32,
        #[arg(long)]
        log_file: Option<PathBuf>,
    },
    /// Record changes made to the pocket without the mount (while the daemon was dead, or on a
    /// machine without backpocket).
    Scan {
        #[command(flatten)]
        pocket: PocketArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Backup destinations: where the pocket's changes go.
    Dest {
        #[command(subcommand)]
        command: DestCommand,
    },
    /// Back up now: record changes made without the mount, then drain the journal to every
    /// reachable destination. Returns when they hold everything, and says which could not be
    /// reached. With a mounted pocket, waits for the mount's own replicator.
    Sync {
        #[command(flatten)]
        pocket: PocketArg,
        /// Keep going: sync again every few seconds until interrupted.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    /// The versions the destinations hold of a file.
    Log {
        /// The file (in the pocket or its mount, or a path relative to the pocket).
        path: PathBuf,
        /// Ask only this destination.
        #[arg(long, value_name = "DEST")]
        from: Option<String>,
        #[command(flatten)]
        pocket: PocketArg,
        #[arg(long)]
        json: bool,
    },
    /// Restore from a destination into a new folder, exactly as it was (contents, names, modes,
    /// times, links, xattrs, holes), every chunk checked against its hash.
    Restore {
        /// A configured destination, or its folder (when the drive is lost).
        #[arg(long, value_name = "DEST")]
        from: String,
        /// A new or empty folder (never the live pocket).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// The pocket as it was at this time (UTC): "2026-11-20 10:00" or RFC 3339.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// In a vault several devices write: this device's files, as its own history holds
        /// them (its name or id, as `backpocket devices` shows it). Default: this pocket's
        /// own, or the vault's first pocket's when there is no pocket here.
        #[arg(long, value_name = "NAME")]
        device: Option<String>,
        /// Only these paths (relative to the pocket) and what is under them.
        paths: Vec<PathBuf>,
        #[command(flatten)]
        pocket: PocketArg,
        #[arg(long)]
        json: bool,
    },
    /// Check a vault: every object present and of the right size; with --read-data every byte
    /// decrypted and hashed. Names each damaged object and the file versions it affects.
    Verify {
        /// A configured destination, or its folder.
        dest: String,
        #[arg(long)]
        read_data: bool,
        /// Make the vault whole again from what is still good: the damaged packs' good chunks
        /// and the pocket's files are sent again, then the damaged objects are removed
        /// (implies --read-data; the pocket must not be mounted).
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        pocket: PocketArg,
        #[arg(long)]
        json: bool,
    },
    /// Keep only the restore points a policy names (the newest is always kept); with
    /// --prune, then delete the data no kept point needs.
    Forget {
        /// A configured destination, or its folder.
        dest: String,
        /// Keep the N newest points.
        #[arg(long, default_value_t = 0, value_name = "N")]
        keep_last: usize,
        /// Keep the newest point of each of the last N hours that have one.
        #[arg(long, default_value_t = 0, value_name = "N")]
        keep_hourly: usize,
        #[arg(long, default_value_t = 0, value_name = "N")]
        keep_daily: usize,
        #[arg(long, default_value_t = 0, value_name = "N")]
        keep_weekly: usize,
        #[arg(long, default_value_t = 0, value_name = "N")]
        keep_monthly: usize,
        /// Say what would be kept and removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Delete unneeded data afterwards.
        #[arg(long)]
        prune: bool,
        /// With --prune: how long replaced objects stay for readers that started before.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        #[command(flatten)]
        pocket: PocketArg,
        #[arg(long)]
        json: bool,
    },
    /// Drop the data (chunks) that no restore point of a vault needs: the packs holding it
    /// are repacked, and what they replace is deleted after the grace period.
    Prune {
        dest: String,
        #[arg(long)]
        dry_run: bool,
        /// How long replaced objects stay for readers that started before (e.g. "1h", "0s"
        /// when nothing else reads the vault).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        #[command(flatten)]
        pocket: PocketArg,
        #[arg(long)]
        json: bool,
    },
    /// Fold a vault's many small objects (log segments, index objects, small packs) into few,
    /// and delete what earlier runs replaced once the grace period has passed. The mount does
    /// this by itself once a destination has been idle for a minute.
    Maintain {
        dest: String,
        /// How long replaced objects stay for readers that started before.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        #[command(flatten)]
        pocket: PocketArg,
        #[arg(long)]
        json: bool,
    },
    /// The pocket key this machine remembers.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// The journal: what is recorded and not yet protected.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
}

#[derive(Subcommand, Debug)]
enum DevicesCommand {
    /// Tell the other devices of changes at once through an XMPP server you host (the
    /// account's password from BACKPOCKET_XMPP_PASSWORD or a prompt, kept sealed with the
    /// pocket key); without it they poll the vault every few seconds.
    Push {
        /// The account, name@domain; every device logs in with it as its own resource.
        #[arg(required_unless_present = "off")]
        account: Option<String>,
        /// The server's HOST:PORT, when not found from the account's domain.
        #[arg(long, value_name = "HOST:PORT")]
        server: Option<String>,
        /// A publish-subscribe service where the account may make nodes (default: the
        /// account's own, PEP).
        #[arg(long, value_name = "JID")]
        pubsub: Option<String>,
        /// Stop using the XMPP server: the devices poll the vault.
        #[arg(long, conflicts_with_all = ["account", "server", "pubsub"])]
        off: bool,
        #[command(flatten)]
        pocket: PocketArg,
    },
    /// A device may no longer back up to the vault (a lost or retired laptop). It keeps what
    /// it could read until now.
    Remove {
        /// Its name (or id), as `backpocket devices` shows it.
        name: String,
        #[command(flatten)]
        pocket: PocketArg,
    },
}

#[derive(Subcommand, Debug)]
enum JournalCommand {
    /// Records and bytes not yet protected, the oldest unprotected change, the journal's size.
    Status {
        #[command(flatten)]
        pocket: PocketArg,
        /// Machine-readable output (stable keys; times RFC 3339 UTC, ages in seconds).
        #[arg(long)]
        json: bool,
        /// A live view, refreshed until Ctrl-C: per destination its state, what it lacks,
        /// the transfer rate and the time left (with --json: one object per refresh).
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes of --watch.
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
        interval: f64,
    },
    /// The records themselves, oldest first.
    Log {
        #[command(flatten)]
        pocket: PocketArg,
        /// Show records after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many records.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Remove records that every destination holds.
    Compact {
        #[command(flatten)]
        pocket: PocketArg,
    },
}

#[derive(Subcommand, Debug)]
enum DestCommand {
    /// Add a destination: a folder on another disk or a mounted share, an SFTP server, an
    /// S3-compatible store.
    Add {
        /// A short name for it (letters, digits, '-', '_', '.').
        name: String,
        /// A folder (created if its parent exists; a path or file:// URL),
        /// sftp://[user@]host[:port]/path, or s3://bucket[/prefix].
        url: String,
        /// vault: encrypted, deduplicated, versioned. mirror: a plain copy anyone can open
        /// (local folders only).
        #[arg(long, value_enum, default_value = "vault")]
        mode: ModeArg,
        /// Mirror: days that replaced and deleted files are kept in .backpocket-versions/.
        #[arg(long, default_value_t = 30)]
        keep_versions_days: u64,
        #[command(flatten)]
        remote: backup::RemoteArgs,
        #[command(flatten)]
        pocket: PocketArg,
    },
    /// Spread one vault over destinations already added (a disk, the office server, a
    /// bucket): any K of them restore it, and none holds a whole chunk of a file. The members
    /// become the group's; each keeps its shards in a folder named after the group.
    AddGroup {
        /// A short name for the group.
        name: String,
        /// How many members a restore needs; the group survives the loss of the others.
        #[arg(long)]
        k: usize,
        /// The member destinations (at least 2).
        #[arg(required = true, num_args = 2..)]
        members: Vec<String>,
        #[command(flatten)]
        pocket: PocketArg,
    },
    /// Spread GROUP over one more member, NEW (added with `dest add`), keeping its history:
    /// every pack is re-encoded, so the group is copied into a new folder at each member and
    /// the old folders are removed once it is whole. Not while the pocket is mounted.
    AddMember {
        group: String,
        new: String,
        /// How many members a restore needs from now on (the group's K if not given).
        #[arg(long)]
        k: Option<usize>,
        #[command(flatten)]
        pocket: PocketArg,
    },
    /// Put destination NEW (added with `dest add`) in member OLD's place in GROUP (a disk that
    /// broke, a server that moves) and rebuild its share from the other members.
    Replace {
        group: String,
        old: String,
        new: String,
        #[command(flatten)]
        pocket: PocketArg,
    },
    /// Replace a destination's stored credentials (S3 keys from the environment or
    /// --profile; an SSH key with --identity).
    Credentials {
        name: String,
        #[command(flatten)]
        creds: remote::CredentialArgs,
        #[command(flatten)]
        pocket: PocketArg,
    },
    /// Reach a destination, authenticate, write, read back and delete a test object; say what
    /// failed and what to do about it.
    Test {
        /// A configured destination, or a URL or folder (no pocket needed: the drive may be
        /// lost; S3 settings then come from AWS_ENDPOINT_URL, AWS_REGION and the keys'
        /// variables).
        name: String,
        #[command(flatten)]
        pocket: PocketArg,
        #[arg(long)]
        json: bool,
    },
    /// The configured destinations.
    List {
        #[command(flatten)]
        pocket: PocketArg,
        #[arg(long)]
        json: bool,
    },
    /// Stop backing up to a destination (what it holds is left alone).
    Remove {
        name: String,
        #[command(flatten)]
        pocket: PocketArg,
    },
}

#[derive(Subcommand, Debug)]
enum ServiceCommand {
    /// Install it: the user part (a systemd user unit that mounts pockets found on newly
    /// mounted drives at ~/Pocket; no root needed), or with --system the system part (a
    /// udev rule and a unit that mount removable drives holding a pocket, for machines
    /// without a desktop's automounter; needs root).
    Install {
        /// The system part instead of the user part.
        #[arg(long)]
        system: bool,
        /// Where pockets are mounted (default ~/Pocket; a second pocket goes beside it).
        #[arg(long, value_name = "DIR")]
        mountpoint: Option<PathBuf>,
        /// Write the files under this folder instead of / (staging, packaging).
        #[arg(long, hide = true, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Stage the files as a package installs them (/usr/lib), both parts.
        #[arg(long, hide = true, requires = "root")]
        package: bool,
        /// The binary the units run (default: this one).
        #[arg(long, hide = true)]
        bin: Option<PathBuf>,
    },
    /// Remove what install wrote (only files it wrote).
    Uninstall {
        #[arg(long)]
        system: bool,
        #[arg(long, hide = true, value_name = "DIR")]
        root: Option<PathBuf>,
    },
    /// The watcher the user unit runs: mounts every pocket found on a drive mounted under
    /// /media, /run/media or /mnt, and unmounts it when the drive goes.
    Run {
        /// Where pockets are mounted.
        #[arg(long, value_name = "DIR")]
        mountpoint: Option<PathBuf>,
        /// Also look for drives mounted under this folder.
        #[arg(long = "watch", value_name = "DIR")]
        places: Vec<PathBuf>,
    },
    /// What the udev rule's unit runs when a drive appears: mount its filesystem under
    /// /media/backpocket/ if it holds a pocket.
    Attach {
        /// The block device, such as /dev/sdb1.
        device: PathBuf,
    },
    /// What the unit runs when the drive goes: unmount its pockets and its filesystem.
    Detach { device: PathBuf },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ModeArg {
    Vault,
    Mirror,
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Check the passphrase and remember the pocket key on this machine (so the mount backs up
    /// to vaults without asking).
    Remember {
        #[command(flatten)]
        pocket: PocketArg,
    },
    /// Forget this machine's copy of the pocket key.
    Forget {
        #[command(flatten)]
        pocket: PocketArg,
    },
}

#[derive(Args, Debug)]
struct PocketArg {
    /// The pocket folder (default: found from the current folder, or the mount it is in).
    #[arg(long, value_name = "DIR")]
    pocket: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// The pocket folder on the drive.
    pocket: PathBuf,
    /// An empty folder to mount it at.
    mountpoint: PathBuf,
    /// Detach into the background once the mount is ready.
    #[arg(long)]
    daemon: bool,
    /// Let other users use the mount (implies --default-permissions; as a non-root user it
    /// needs `user_allow_other` in /etc/fuse.conf).
    #[arg(long)]
    allow_other: bool,
    /// Let the kernel check permissions against file modes (always so on a drive that keeps
    /// no modes, such as exFAT: the modes the journal keeps are then checked by the kernel).
    #[arg(long)]
    default_permissions: bool,
    /// Serve reads and writes through the daemon even where kernel passthrough is offered.
    #[arg(long)]
    no_passthrough: bool,
    /// Seconds the kernel may cache names and attributes. Every change goes through the
    /// mount, which tells the kernel what it changed, so this can be long.
    #[arg(long, default_value_t = 3600.0)]
    ttl: f64,
    /// Threads serving requests.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Do not record changes (for measuring what the journal costs). Changes made this way are
    /// found by the next scan; never use it for real work.
    #[arg(long, hide = true)]
    no_journal: bool,
}

/// The log filter: `BACKPOCKET_LOG` (a level, or full tracing directives), else `default`.
/// The transfer libraries' own chatter (every SSH session opened, every HTTP request) is kept
/// to warnings unless directives name them.
pub fn log_filter(default: &str) -> tracing_subscriber::EnvFilter {
    let given = std::env::var("BACKPOCKET_LOG").unwrap_or_default();
    let directives = if given.contains('=') {
        given
    } else {
        let level = if given.is_empty() { default } else { &given };
        format!(
            "{level},openssh=warn,openssh_sftp_client=warn,openssh_sftp_client_lowlevel=warn,opendal=warn,reqwest=warn,hyper=warn,hyper_util=warn"
        )
    };
    tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
}

fn init_logging(default: &str) {
    let filter = log_filter(default);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                ExitCode::Usage as i32
            } else {
                0
            });
        }
    };
    let result = match cli.command {
        // The mount sets up logging itself: after the fork for --daemon.
        Command::Mount(args) => mount::run(args, &cli.key),
        // Logs where its mount does.
        Command::PullHelper {
            pocket,
            mountpoint,
            parent,
            log_file,
        } => devices::pull_helper(&pocket, &mountpoint, parent, log_file.as_deref()),
        other => {
            init_logging("warn");
            run(other, &cli.key)
        }
    };
    if let Err(e) = result {
        eprintln!("backpocket: {e:#}");
        std::process::exit(exit::code_of(&e) as i32);
    }
}

fn run(command: Command, key: &keys::KeyArgs) -> Result<()> {
    match command {
        Command::Init {
            dir,
            join: Some(join),
            name,
            ..
        } => devices::join(&join, &dir, name, key),
        Command::Init {
            dir, from: None, ..
        } => init(&dir),
        Command::Init {
            dir,
            from: Some(from),
            ..
        } => backup::init_from(&from, &dir, key),
        Command::Devices {
            command,
            pocket,
            json,
        } => match command {
            None => devices::list(&Pocket::find(pocket.pocket.as_deref())?, json, key),
            Some(DevicesCommand::Remove {
                name,
                pocket: inner,
            }) => {
                let dir = inner.pocket.or(pocket.pocket);
                devices::remove(&Pocket::find(dir.as_deref())?, &name, key)
            }
            Some(DevicesCommand::Push {
                account,
                server,
                pubsub,
                off: _,
                pocket: inner,
            }) => {
                let dir = inner.pocket.or(pocket.pocket);
                push::set(
                    &Pocket::find(dir.as_deref())?,
                    account.as_deref(),
                    server.as_deref(),
                    pubsub.as_deref(),
                    key,
                )
            }
        },
        Command::Dest { command } => match command {
            DestCommand::Add {
                name,
                url,
                mode,
                keep_versions_days,
                remote,
                pocket,
            } => {
                let p = Pocket::find(pocket.pocket.as_deref())?;
                let mode = match mode {
                    ModeArg::Vault => replicator::Mode::Vault,
                    ModeArg::Mirror => replicator::Mode::Mirror,
                };
                backup::dest_add(&p, &name, &url, mode, keep_versions_days, &remote, key)
            }
            DestCommand::AddGroup {
                name,
                k,
                members,
                pocket,
            } => backup::dest_add_group(
                &Pocket::find(pocket.pocket.as_deref())?,
                &name,
                k,
                &members,
                key,
            ),
            DestCommand::AddMember {
                group,
                new,
                k,
                pocket,
            } => backup::dest_add_member(
                &Pocket::find(pocket.pocket.as_deref())?,
                &group,
                &new,
                k,
                key,
            ),
            DestCommand::Replace {
                group,
                old,
                new,
                pocket,
            } => backup::dest_replace(
                &Pocket::find(pocket.pocket.as_deref())?,
                &group,
                &old,
                &new,
                key,
            ),
            DestCommand::Credentials {
                name,
                creds,
                pocket,
            } => backup::dest_credentials(
                &Pocket::find(pocket.pocket.as_deref())?,
                &name,
                &creds,
                key,
            ),
            DestCommand::Test { name, pocket, json } => {
                remote::dest_test(Pocket::find(pocket.pocket.as_deref()), &name, json, key)
            }
            DestCommand::List { pocket, json } => {
                backup::dest_list(&Pocket::find(pocket.pocket.as_deref())?, json)
            }
            DestCommand::Remove { name, pocket } => {
                backup::dest_remove(&Pocket::find(pocket.pocket.as_deref())?, &name)
            }
        },
        Command::Sync {
            pocket,
            watch,
            json,
        } => backup::sync(&Pocket::find(pocket.pocket.as_deref())?, watch, json, key),
        Command::Log {
            path,
            from,
            pocket,
            json,
        } => backup::log(pocket.pocket.as_deref(), &path, from.as_deref(), json, key),
        Command::Restore {
            from,
            to,
            at,
            device,
            paths,
            pocket,
            json,
        } => backup::restore(
            pocket.pocket.as_deref(),
            &from,
            &to,
            backup::Wanted {
                at: at.as_deref(),
                device: device.as_deref(),
                paths: &paths,
            },
            json,
            key,
        ),
        Command::Verify {
            dest,
            read_data,
            repair,
            pocket,
            json,
        } => {
            if repair {
                backup::repair(pocket.pocket.as_deref(), &dest, json, key)
            } else {
                backup::verify(pocket.pocket.as_deref(), &dest, read_data, json, key)
            }
        }
        Command::Forget {
            dest,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            dry_run,
            prune,
            grace,
            pocket,
            json,
        } => {
            let policy = replicator::KeepPolicy {
                last: keep_last,
                hourly: keep_hourly,
                daily: keep_daily,
                weekly: keep_weekly,
                monthly: keep_monthly,
            };
            backup::forget(
                pocket.pocket.as_deref(),
                &dest,
                &policy,
                dry_run,
                prune.then_some(grace),
                json,
                key,
            )
        }
        Command::Prune {
            dest,
            dry_run,
            grace,
            pocket,
            json,
        } => backup::prune(pocket.pocket.as_deref(), &dest, dry_run, grace, json, key),
        Command::Maintain {
            dest,
            grace,
            pocket,
            json,
        } => backup::maintain(pocket.pocket.as_deref(), &dest, grace, json, key),
        Command::Key { command } => match command {
            KeyCommand::Remember { pocket } => {
                let p = Pocket::find(pocket.pocket.as_deref())?;
                let config = p.config()?;
                if config.key.is_none() {
                    anyhow::bail!("this pocket has no key yet: it is made with the first vault destination (`backpocket dest add`)");
                }
                keys::forget(&config.id)?;
                keys::pocket_key(&config, key, true)?;
                println!(
                    "this machine now remembers the key of the pocket {}",
                    p.root.display()
                );
                Ok(())
            }
            KeyCommand::Forget { pocket } => {
                let p = Pocket::find(pocket.pocket.as_deref())?;
                let config = p.config()?;
                if keys::forget(&config.id)? {
                    println!("forgot this machine's copy of the pocket key; vault backups wait for `backpocket key remember`");
                } else {
                    println!("this machine did not remember the pocket key");
                }
                Ok(())
            }
        },
        Command::Mount(_) | Command::PullHelper { .. } => unreachable!("handled in main"),
        Command::Unmount { mountpoint } => eject::unmount(&mountpoint),
        Command::Eject {
            mountpoint,
            force,
            wait,
            keep_drive_mounted,
            json,
        } => eject::eject(
            &mountpoint,
            &eject::EjectOptions {
                force,
                wait: Duration::from_secs(wait),
                keep_drive_mounted,
                json,
            },
        ),
        Command::Service { command } => match command {
            ServiceCommand::Install {
                system,
                mountpoint,
                root,
                package,
                bin,
            } => service::install(&service::InstallOptions {
                system: system || package,
                mountpoint: mountpoint.map(|m| std::path::absolute(&m)).transpose()?,
                root,
                layout: if package {
                    platform::service::Layout::Package
                } else {
                    platform::service::Layout::Admin
                },
                bin,
            }),
            ServiceCommand::Uninstall { system, root } => {
                service::uninstall(system, root.as_deref())
            }
            ServiceCommand::Run { mountpoint, places } => {
                let mp = match mountpoint {
                    Some(m) => std::path::absolute(&m)?,
                    None => PathBuf::from(
                        std::env::var_os("HOME").context("HOME is not set: give --mountpoint")?,
                    )
                    .join("Pocket"),
                };
                service::run(&mp, &places)
            }
            ServiceCommand::Attach { device } => service::attach(&device),
            ServiceCommand::Detach { device } => service::detach(&device),
        },
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "backpocket",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
            Ok(())
        }
        Command::Scan { pocket, json } => scan(pocket.pocket.as_deref(), json),
        Command::Journal { command } => match command {
            JournalCommand::Status {
                pocket,
                json,
                watch,
                interval,
            } => {
                let p = Pocket::find(pocket.pocket.as_deref())?;
                if watch {
                    watch::watch(
                        &p,
                        Duration::from_secs_f64(interval.clamp(0.1, 3600.0)),
                        json,
                    )
                } else {
                    report::status(&p, json)
                }
            }
            JournalCommand::Log {
                pocket,
                after,
                limit,
                json,
            } => {
                let p = Pocket::find(pocket.pocket.as_deref())?;
                report::log(&p, after, limit, json)
            }
            JournalCommand::Compact { pocket } => {
                let p = Pocket::find(pocket.pocket.as_deref())?;
                let n = journal::compact(&p.journal_path())?;
                println!("removed {n} records that every destination holds");
                Ok(())
            }
        },
    }
}

fn init(dir: &Path) -> Result<()> {
    let config = pocket::Config {
        format: 1,
        id: pocket::new_id()?,
        journal: Default::default(),
        warnings: Default::default(),
        key: None,
        device: None,
        push: None,
        destinations: Vec::new(),
    };
    init_with(dir, config)
}

/// Makes a pocket of `dir` with `config` (new, or the one a destination kept).
pub fn init_with(dir: &Path, config: pocket::Config) -> Result<()> {
    let adopted = init_filled(dir, config, |_, _| Ok(()))?;
    let root = dir.canonicalize()?;
    println!(
        "made a pocket at {} ({adopted} existing entries adopted)",
        root.display()
    );
    println!(
        "mount it with: backpocket mount {} MOUNTPOINT",
        root.display()
    );
    Ok(())
}

/// Makes a pocket of `dir` with `config`, filled by `fill` once its journal records (before
/// the config is written: a folder with a config is a complete pocket). Returns how many
/// entries the journal adopted after the fill.
pub fn init_filled(
    dir: &Path,
    config: pocket::Config,
    fill: impl FnOnce(&Pocket, &journal::Journal) -> Result<()>,
) -> Result<u64> {
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!(
            "{} exists and is not a folder; give a folder (it is created if missing)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let root = dir.canonicalize()?;
    let meta = root.join(pocket::DIR);
    if meta.join("config.toml").exists() {
        return Err(Failure::new(
            ExitCode::Error,
            anyhow::anyhow!("{} is already a pocket", root.display()),
        )
        .into());
    }
    std::fs::create_dir_all(&meta).with_context(|| format!("cannot create {}", meta.display()))?;
    let p = Pocket { root: root.clone() };
    let _lock = platform::PocketLock::acquire(&p.lock_path(), &p.root)?;
    let text = config.to_text()?;
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&root)?);
    // What the drive can keep, first: on one that numbers files afresh, the journal knows
    // them by path from the start.
    p.probe_drive();
    let journal = match journal::Journal::create(&p.journal_path(), ino) {
        Ok(j) => j,
        Err(e) => return Err(e).context("cannot create the journal"),
    };
    p.adapt_journal(&journal)?;
    // Settled after: what the fill wrote is on the drive, and the scan need not read it again.
    if let Err(e) = fill(&p, &journal).and_then(|()| Ok(journal.handle().settle()?)) {
        let _ = journal.close();
        return Err(e);
    }
    let spinner = spinner(&format!("adopting the files in {}", root.display()));
    let report = journal::scan(&p.root, &p.journal_path(), &journal.handle());
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let report = report?;
    journal.close()?;
    // The config last: a folder with a config is a complete pocket.
    pocket::write_durably(&p.config_path(), text.as_bytes())?;
    Ok(report.created)
}

/// A flag set by the first of `signals` (Ctrl-C, SIGTERM…): long waits end cleanly instead of
/// the process dying mid-step. Dropping the guard gives the signals back their default.
#[derive(Debug)]
pub struct StopOnSignal {
    pub flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: signal_hook::iterator::Handle,
}

impl StopOnSignal {
    pub fn new(signals: &[std::ffi::c_int]) -> Result<StopOnSignal> {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut it =
            signal_hook::iterator::Signals::new(signals).context("cannot listen for Ctrl-C")?;
        let handle = it.handle();
        let f = flag.clone();
        std::thread::spawn(move || {
            if it.forever().next().is_some() {
                f.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        });
        Ok(StopOnSignal { flag, handle })
    }

    pub fn stopped(&self) -> bool {
        self.flag.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for StopOnSignal {
    fn drop(&mut self) {
        self.handle.close();
    }
}

/// Ctrl-C and SIGTERM.
pub const INTERRUPT: [std::ffi::c_int; 2] =
    [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM];

/// A spinner on stderr for work whose length is not known, when a person is watching.
fn spinner(message: &str) -> Option<indicatif::ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let s = indicatif::ProgressBar::new_spinner().with_message(message.to_owned());
        s.enable_steady_tick(Duration::from_millis(120));
        s
    })
}

fn scan(pocket: Option<&Path>, json: bool) -> Result<()> {
    let p = Pocket::find(pocket)?;
    let _lock = platform::PocketLock::acquire(&p.lock_path(), &p.root).map_err(|e| match e {
        platform::Error::Locked { pid, .. } => Failure::new(
            ExitCode::Busy,
            anyhow::anyhow!(
                "the pocket {} is mounted (process {pid}); the mount records changes itself and scans when it starts",
                p.root.display()
            ),
        )
        .into(),
        other => anyhow::Error::from(other),
    })?;
    let journal = p.open_journal()?;
    let spinner = if json {
        None
    } else {
        spinner(&format!("scanning {}", p.root.display()))
    };
    let result = journal::scan(&p.root, &p.journal_path(), &journal.handle());
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let report = result?;
    journal.close()?;
    report::scan(&p, &report, json);
    Ok(())
}
