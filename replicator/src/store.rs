//! A destination's storage, through OpenDAL: a local folder, an SFTP server or an
//! S3-compatible store. Every write is atomic before it returns, so a cut connection or a
//! killed process never leaves half an object under its final name: a local folder gets
//! OpenDAL's temporary file, fsync and rename plus our fsync of the directory; SFTP a
//! temporary name renamed into place (posix-rename, atomic on OpenSSH servers); S3 a single
//! PUT, or a multipart upload that only appears once completed.
//!
//! The calls block: the drain's workers are plain threads doing CPU work (chunking, zstd,
//! AES), and they hand each transfer to the replicator's tokio runtime.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opendal::layers::{ConcurrentLimitLayer, RetryLayer, ThrottleLayer, TimeoutLayer};
use opendal::Operator;
use tokio::runtime::Handle;

use crate::access::{Access, Secrets};
use crate::error::{Error, Result};
use crate::faults::{self, Fault};
use crate::group::Group;

/// Where temporary files live inside a local or SFTP destination (same filesystem, so rename
/// is atomic); leftovers of a killed write are removed at the next open.
const TMP_DIR: &str = ".tmp";

/// Calls made to destinations by this process, by kind: what a remote destination bills and
/// waits for (benchmarks read them). A write in several parts, or a listing of several
/// pages, counts once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    pub get: u64,
    pub put: u64,
    pub list: u64,
    pub delete: u64,
}

static REQUESTS: [std::sync::atomic::AtomicU64; 4] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

fn count(kind: usize) {
    REQUESTS[kind].fetch_add(1, Ordering::Relaxed);
}

/// The requests this process has made so far.
pub fn requests() -> Requests {
    let r = |i: usize| REQUESTS[i].load(Ordering::Relaxed);
    Requests {
        get: r(0),
        put: r(1),
        list: r(2),
        delete: r(3),
    }
}

/// Uploads of one pack go in parts of this size (S3 multipart: at least 5 MiB).
const PART_SIZE: usize = 8 << 20;

/// One destination's storage: one place, or a group of places that together hold a vault
/// k of n (see [`crate::group`]). The vault reads and writes keys the same way on both.
#[derive(Clone, Debug)]
pub struct Store(Backend);

#[derive(Clone, Debug)]
enum Backend {
    Single(Single),
    Group(Arc<Group>),
}

impl Store {
    /// Opens the storage that `url` names, with no settings beyond the URL (a local folder
    /// needs none). See [`Store::connect`].
    pub fn open(url: &str, rt: Handle, create: bool) -> Result<Store> {
        Store::connect(url, &Access::default(), &Secrets::default(), rt, create)
    }

    /// Opens the storage that `url` names. A local folder: `create` makes it (its parent must
    /// exist); otherwise a missing folder means the destination is not reachable (an external
    /// disk not plugged in), and we never create a folder on the machine's own disk in its
    /// place. A remote store is reached lazily, by the first request.
    pub fn connect(
        url: &str,
        access: &Access,
        secrets: &Secrets,
        rt: Handle,
        create: bool,
    ) -> Result<Store> {
        Single::connect(url, access, secrets, rt, create).map(|s| Store(Backend::Single(s)))
    }

    /// A group named by its members' folders, `group:URL,URL,...` (any order, any `k` of
    /// them), for reading it without the pocket's config (the drive lost): the group's shape
    /// and each member's place are read from the shards.
    pub fn connect_group(
        urls: &str,
        access: &Access,
        secrets: &Secrets,
        rt: Handle,
    ) -> Result<Store> {
        let given = urls
            .split(',')
            .filter(|u| !u.is_empty())
            .map(|u| {
                let st = Single::connect(u, access, secrets, rt.clone(), false);
                (u.to_owned(), st)
            })
            .collect();
        // Named as each member names its folder: after the group.
        let name = urls
            .split(',')
            .next()
            .and_then(|u| u.trim_end_matches('/').rsplit('/').next())
            .unwrap_or("group");
        Group::discover(name.to_owned(), given).map(Store::of_group)
    }

    pub(crate) fn of_group(g: Group) -> Store {
        Store(Backend::Group(Arc::new(g)))
    }

    /// A group destination: how many members restore it, and each member as last seen (for
    /// status). None for one place.
    pub fn group_state(&self) -> Option<(usize, Vec<crate::state::MemberState>)> {
        self.group().map(|g| (g.k, g.report()))
    }

    /// A group that destination `name` joins in place of a member: it gets the group's config
    /// first (so a crash after the pocket's config names it leaves a member that is behind,
    /// never a stranger), then [`Self::fill_member`] brings the rest.
    pub fn seat_member(&self, name: &str) -> Result<()> {
        self.only_group()?.seat_member(name)
    }

    /// Rebuilds what member `name` lacks from the others, with `progress` (objects done, in
    /// all). Returns how many objects it still lacks.
    pub fn fill_member(&self, name: &str, progress: &dyn Fn(u64, u64)) -> Result<u64> {
        self.only_group()?.fill_member(name, progress)
    }

    /// Copies every object of this store into `to` (a group re-spread over other members:
    /// packs decoded here and encoded there), `config` first, telling `progress` (objects
    /// done, in all). Never deletes.
    pub fn copy_into(&self, to: &Store, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<u64> {
        // A pack fewer than k members took was never stored (its write failed and was made
        // again): nothing refers to it, and it cannot be read.
        let short = match self.group() {
            Some(g) => g.short_packs()?,
            None => Default::default(),
        };
        let mut keys: Vec<String> = self
            .list("")?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !k.starts_with("locks/") && !short.contains_key(k))
            .collect();
        // The config first: a member holds it before anything else, as a group's member must.
        keys.sort_by_key(|k| k != "config");
        let total = keys.len() as u64;
        let one = |key: &str| -> Result<()> {
            let body = self.get(key)?;
            to.put(key, body)
        };
        let start = if keys.first().is_some_and(|k| k == "config") {
            one("config")?;
            1
        } else {
            0
        };
        let next = AtomicU64::new(start);
        let failed: parking_lot::Mutex<Option<Error>> = parking_lot::Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| loop {
                    if failed.lock().is_some() {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(key) = keys.get(i as usize) else {
                        return;
                    };
                    progress(i, total);
                    if let Err(e) = one(key) {
                        failed.lock().get_or_insert(e);
                    }
                });
            }
        });
        match failed.into_inner() {
            Some(e) => Err(e),
            None => {
                progress(total, total);
                Ok(total)
            }
        }
    }

    /// A group: deletes everything each member holds of it (its folder there, once the group
    /// lives in another). Per member, why not, if it could not be done.
    pub fn delete_member_folders(&self) -> Result<Vec<(String, Option<String>)>> {
        Ok(self.only_group()?.delete_member_folders())
    }

    fn only_group(&self) -> Result<&Group> {
        self.group()
            .ok_or_else(|| Error::Format(format!("{} is not a group", self.url())))
    }

    pub(crate) fn group(&self) -> Option<&Group> {
        match &self.0 {
            Backend::Group(g) => Some(g),
            Backend::Single(_) => None,
        }
    }

    /// Makes `flag` abandon this store's transfers when set (see [`Error::Paused`]).
    pub fn with_pause(self, flag: Arc<AtomicBool>) -> Store {
        match self.0 {
            Backend::Single(s) => Store(Backend::Single(s.with_pause(flag))),
            Backend::Group(g) => {
                g.set_pause(flag);
                Store(Backend::Group(g))
            }
        }
    }

    /// Fails with [`Error::Paused`] once the pause flag is set: work that only leads to
    /// transfers (chunking, sealing) stops too.
    pub fn check_paused(&self) -> Result<()> {
        match &self.0 {
            Backend::Single(s) => s.check_paused(),
            Backend::Group(g) if g.paused() => Err(Error::Paused),
            Backend::Group(_) => Ok(()),
        }
    }

    /// How many uploads a drain keeps in flight.
    pub fn parallel(&self) -> usize {
        match &self.0 {
            Backend::Single(s) => s.parallel(),
            // Each upload goes to every member at once.
            Backend::Group(_) => 2,
        }
    }

    /// Whether this is a local folder (mirrors need one).
    pub fn is_local(&self) -> bool {
        matches!(&self.0, Backend::Single(s) if s.is_local())
    }

    /// Fails (as "not there") when the local folder is no longer the one opened; a group,
    /// when fewer than k of its members are there.
    pub fn check_present(&self) -> Result<()> {
        match &self.0 {
            Backend::Single(s) => s.check_present(),
            Backend::Group(g) => g.check_present(),
        }
    }

    pub fn url(&self) -> &str {
        match &self.0 {
            Backend::Single(s) => s.url(),
            Backend::Group(g) => &g.name,
        }
    }

    /// Whether the destination can be used now.
    pub fn reachable(&self) -> bool {
        self.check_present().is_ok()
    }

    /// Writes `key` atomically, and durably where the store lets us ask for it.
    pub fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        match &self.0 {
            Backend::Single(s) => s.put(key, data),
            Backend::Group(g) => g.put(key, data),
        }
    }

    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        match &self.0 {
            Backend::Single(s) => s.get(key),
            Backend::Group(g) => g.get(key),
        }
    }

    /// `len` bytes of `key` from `offset`.
    pub fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        match &self.0 {
            Backend::Single(s) => s.get_range(key, offset, len),
            Backend::Group(g) => g.get_range(key, offset, len),
        }
    }

    /// The objects under `prefix` (a folder, ending in `/`), with their sizes, sorted.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        match &self.0 {
            Backend::Single(s) => s.list(prefix),
            Backend::Group(g) => g.list(prefix),
        }
    }

    /// The size a listing shows for an object of `len` bytes (a group lists a pack's shards).
    pub fn listed_size(&self, key: &str, len: u64) -> u64 {
        match &self.0 {
            Backend::Group(g) if key.starts_with("data/") => g.listed_size(len),
            _ => len,
        }
    }

    /// Removes what killed writes left in the temporary folder of an SFTP destination (a
    /// local one is cleaned when opened; S3 keeps no temporary objects).
    pub fn remove_leftovers(&self) {
        match &self.0 {
            Backend::Single(s) => s.remove_leftovers(),
            Backend::Group(g) => {
                let _ = g.each_member("were cleaned", |s| {
                    s.remove_leftovers();
                    Ok(())
                });
            }
        }
    }

    /// Whether the destination holds nothing yet (ignoring our own temporary folder).
    pub fn is_empty(&self) -> Result<bool> {
        match &self.0 {
            Backend::Single(s) => s.is_empty(),
            Backend::Group(g) => g.is_empty(),
        }
    }

    pub fn exists(&self, key: &str) -> Result<bool> {
        match &self.0 {
            Backend::Single(s) => s.exists(key),
            Backend::Group(g) => g.exists(key),
        }
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        match &self.0 {
            Backend::Single(s) => s.delete(key),
            Backend::Group(g) => g.delete(key),
        }
    }

    /// Deletes `key` if that takes at most `limit` and the store is not paused: for
    /// housekeeping (a lease given back) that must never hold up its caller when the
    /// destination has gone away. Whatever is not deleted expires on its own.
    pub fn delete_briefly(&self, key: &str, limit: Duration) -> Result<()> {
        match &self.0 {
            Backend::Single(s) => s.delete_briefly(key, limit),
            Backend::Group(g) => g.delete_briefly(key, limit),
        }
    }

    /// Makes sure the folders in `dirs` exist and are durable (so that later writes need to
    /// sync only the folder they write into).
    pub fn make_dirs(&self, dirs: &[String]) -> Result<()> {
        match &self.0 {
            Backend::Single(s) => s.make_dirs(dirs),
            Backend::Group(g) => g.each_member("made their folders", |s| s.make_dirs(dirs)),
        }
    }

    /// Makes the destination's own folder private (a vault: nobody else has any business in it).
    pub fn make_private(&self) -> Result<()> {
        match &self.0 {
            Backend::Single(s) => s.make_private(),
            Backend::Group(g) => g.each_member("were made private", Single::make_private),
        }
    }

    /// The local folder, when the destination is one.
    pub fn local_root(&self) -> Option<&Path> {
        match &self.0 {
            Backend::Single(s) => s.local_root(),
            Backend::Group(_) => None,
        }
    }
}

/// One place's storage.
#[derive(Clone, Debug)]
pub(crate) struct Single {
    op: Operator,
    rt: Handle,
    kind: Kind,
    url: String,
    parallel: usize,
    /// Set from outside to abandon transfers in flight (the network the destination may be
    /// used on went away): they fail at once with [`Error::Paused`].
    pause: Arc<AtomicBool>,
}

#[derive(Clone, Debug)]
enum Kind {
    Local {
        root: PathBuf,
        /// The folder's identity (device, inode) when opened: a disk pulled out (or a share
        /// unmounted) leaves an ordinary folder or nothing at that path, and nothing may be
        /// written there in its place.
        identity: (u64, u64),
    },
    // Built only where ssh's control sockets exist.
    #[cfg_attr(not(unix), allow(dead_code))]
    Sftp {
        /// The private key, written for `ssh` to read while the store is open.
        #[cfg(unix)]
        _key: Option<Arc<KeyFile>>,
    },
    S3,
}

/// Where a destination URL points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Local(PathBuf),
    /// `sftp://[user@]host[:port]/absolute/path`
    Sftp {
        user: Option<String>,
        host: String,
        port: Option<u16>,
        path: String,
    },
    /// `s3://bucket[/prefix]`
    S3 {
        bucket: String,
        prefix: String,
    },
}

impl Target {
    /// Reads a destination URL; says what a usable one looks like when it is not.
    pub fn parse(url: &str) -> Result<Target> {
        if let Some(p) = local_path(url) {
            return Ok(Target::Local(p));
        }
        let bad = |why: &str| {
            Error::Format(format!(
                "{url}: {why}; a destination is a folder path, sftp://[user@]host[:port]/path or s3://bucket[/prefix]"
            ))
        };
        let u = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let path = percent_decode(u.path());
        match u.scheme() {
            "sftp" => {
                let host = u
                    .host_str()
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| bad("no server named"))?;
                let path = path.trim_end_matches('/');
                if path.is_empty() {
                    return Err(bad("give the folder on the server (sftp://host/folder)"));
                }
                Ok(Target::Sftp {
                    user: Some(percent_decode(u.username())).filter(|s| !s.is_empty()),
                    host: host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                    port: u.port(),
                    path: path.to_owned(),
                })
            }
            "s3" => {
                let bucket = u
                    .host_str()
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| bad("no bucket named"))?;
                Ok(Target::S3 {
                    bucket: bucket.to_owned(),
                    prefix: path.trim_matches('/').to_owned(),
                })
            }
            other => Err(bad(&format!(
                "{other}:// is not a kind of destination backpocket knows"
            ))),
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Target::Local(_))
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

impl Single {
    /// See [`Store::connect`].
    pub fn connect(
        url: &str,
        access: &Access,
        secrets: &Secrets,
        rt: Handle,
        create: bool,
    ) -> Result<Single> {
        let target = Target::parse(url)?;
        let path = match target {
            Target::Local(p) => p,
            #[cfg(unix)]
            Target::Sftp {
                user,
                host,
                port,
                path,
            } => {
                let endpoint = match port {
                    Some(p) if host.contains(':') => format!("ssh://[{host}]:{p}"),
                    Some(p) => format!("ssh://{host}:{p}"),
                    None => host,
                };
                let mut b = opendal::services::Sftp::default()
                    .endpoint(&endpoint)
                    .root(&path)
                    .known_hosts_strategy("strict");
                if let Some(u) = &user {
                    b = b.user(u);
                }
                let key = match &secrets.ssh_key {
                    Some(k) => Some(Arc::new(KeyFile::write(k)?)),
                    None => None,
                };
                if let Some(k) = &key {
                    b = b.key(&k.path.to_string_lossy());
                }
                let op =
                    Operator::new(b).map_err(|e| Error::store(format!("cannot use {url}"), e))?;
                return Ok(Single::remote(
                    op,
                    access,
                    rt,
                    Kind::Sftp { _key: key },
                    url,
                ));
            }
            #[cfg(not(unix))]
            Target::Sftp { .. } => {
                let _ = (secrets, rt);
                return Err(Error::Format(format!(
                    "{url}: SFTP destinations are not available on this system (backpocket \
                     drives ssh through its control sockets, which it lacks); use an S3 store \
                     or a folder"
                )));
            }
            Target::S3 { bucket, prefix } => {
                // The HTTP client OpenDAL's S3 service uses (reqwest with rustls); first call
                // installs it, later ones do nothing.
                opendal::install_default();
                let mut b = opendal::services::S3::default()
                    .bucket(&bucket)
                    .root(&format!("/{prefix}"))
                    .region(access.region.as_deref().unwrap_or("us-east-1"))
                    // Credentials are ours to give: never probe a metadata service or read
                    // another program's config behind the user's back.
                    .disable_config_load()
                    .disable_ec2_metadata();
                if let Some(e) = &access.endpoint {
                    b = b.endpoint(e);
                }
                if access.virtual_host_style {
                    b = b.enable_virtual_host_style();
                }
                let env = Secrets::from_env();
                let creds = if secrets.access_key_id.is_some() {
                    secrets
                } else {
                    &env
                };
                match (&creds.access_key_id, &creds.secret_access_key) {
                    (Some(id), Some(secret)) => {
                        b = b.access_key_id(id).secret_access_key(secret);
                        if let Some(t) = &creds.session_token {
                            b = b.session_token(t);
                        }
                    }
                    _ => {
                        return Err(Error::Format(format!(
                            "{url}: no S3 credentials: give them with `backpocket dest credentials` (from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or --profile), or set those variables for the mount"
                        )))
                    }
                }
                let op =
                    Operator::new(b).map_err(|e| Error::store(format!("cannot use {url}"), e))?;
                return Ok(Single::remote(op, access, rt, Kind::S3, url));
            }
        };
        if create {
            match std::fs::create_dir(&path) {
                Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("/")))?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("cannot create the destination folder {}", path.display()),
                        e,
                    ))
                }
            }
        }
        if !path.is_dir() {
            return Err(Error::io(
                format!(
                    "the destination folder {} is not there (is the disk plugged in or the share mounted?)",
                    path.display()
                ),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let path = path
            .canonicalize()
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        let tmp = path.join(TMP_DIR);
        // A write killed midway leaves a temporary file; nothing refers to it.
        let _ = std::fs::remove_dir_all(&tmp);
        private_dir(&tmp)
            .map_err(|e| Error::io(format!("cannot write to {}", path.display()), e))?;
        let builder = opendal::services::Fs::default()
            .root(&path.to_string_lossy())
            .atomic_write_dir(&tmp.to_string_lossy());
        let mut op =
            Operator::new(builder).map_err(|e| Error::store(format!("cannot open {url}"), e))?;
        if let Some(bw) = access.bandwidth {
            op = op.layer(throttle(bw));
        }
        Ok(Single {
            op,
            rt,
            kind: Kind::Local {
                identity: identity(&path)?,
                root: path,
            },
            url: url.to_owned(),
            parallel: access.connections.unwrap_or(2).max(1),
            pause: Arc::default(),
        })
    }

    fn remote(op: Operator, access: &Access, rt: Handle, kind: Kind, url: &str) -> Single {
        let parallel = access.connections.unwrap_or(4).max(1);
        // Bounded connections; a stalled request (a link gone without a reset) fails after a
        // while instead of hanging the drain; brief outages are retried here, longer ones by
        // the replicator's backoff. One I/O step may carry a whole 8 MiB part: on a 64 KB/s
        // uplink that is two minutes of honest work, so the limit is generous (a destination
        // whose network goes away is paused at once by the change watcher anyway).
        let mut op = op
            .layer(
                TimeoutLayer::new()
                    .with_timeout(Duration::from_secs(300))
                    .with_io_timeout(Duration::from_secs(180)),
            )
            .layer(
                RetryLayer::new()
                    .with_max_times(3)
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(5))
                    .with_jitter(),
            )
            .layer(ConcurrentLimitLayer::new(parallel * 2));
        if let Some(bw) = access.bandwidth {
            op = op.layer(throttle(bw));
        }
        Single {
            op,
            rt,
            kind,
            url: url.to_owned(),
            parallel,
            pause: Arc::default(),
        }
    }

    /// Makes `flag` abandon this store's transfers when set (see [`Error::Paused`]).
    pub fn with_pause(mut self, flag: Arc<AtomicBool>) -> Single {
        self.pause = flag;
        self
    }

    /// Fails with [`Error::Paused`] once the pause flag is set: work that only leads to
    /// transfers (chunking, sealing) stops too.
    pub fn check_paused(&self) -> Result<()> {
        if self.pause.load(Ordering::Relaxed) {
            return Err(Error::Paused);
        }
        Ok(())
    }

    /// Runs one transfer on the runtime; [`Error::Paused`] if the pause flag is set meanwhile
    /// (the transfer is abandoned), else what the store answered.
    fn block<T>(
        &self,
        fut: impl Future<Output = opendal::Result<T>>,
    ) -> Result<opendal::Result<T>> {
        let pause = self.pause.clone();
        self.rt.block_on(async move {
            tokio::select! {
                r = fut => Ok(r),
                () = async {
                    while !pause.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                } => Err(Error::Paused),
            }
        })
    }

    /// How many uploads a drain keeps in flight.
    pub fn parallel(&self) -> usize {
        self.parallel
    }

    /// Whether this is a local folder (mirrors need one).
    pub fn is_local(&self) -> bool {
        matches!(self.kind, Kind::Local { .. })
    }

    /// Fails (as "not there") when the local folder is no longer the one opened.
    pub fn check_present(&self) -> Result<()> {
        let Kind::Local { root, identity: id } = &self.kind else {
            return Ok(());
        };
        match identity(root) {
            Ok(now) if now == *id => Ok(()),
            _ => Err(Error::io(
                format!(
                    "the destination folder {} is not there any more (was the disk unplugged or the share unmounted?)",
                    root.display()
                ),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Writes `key` atomically, and durably where the store lets us ask for it.
    pub fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        self.check_present()?;
        count(1);
        if let Some(f) = faults::before("put", key, true) {
            return Err(self.suffer(f, key, Some(&data)));
        }
        let op = self.op.clone();
        let k = key.to_owned();
        // In parts: S3 uploads big objects in parallel multipart pieces, and a bandwidth cap
        // meters every kind of store part by part.
        let res = match &self.kind {
            Kind::Local { .. } => self
                .block(async move { op.write_with(&k, data).chunk(PART_SIZE).await.map(|_| ()) })?,
            Kind::S3 => self.block(async move {
                op.write_with(&k, data)
                    .chunk(PART_SIZE)
                    .concurrent(2)
                    .await
                    .map(|_| ())
            })?,
            Kind::Sftp { .. } => {
                let tmp = format!("{TMP_DIR}/{}", random_name());
                self.block(async move {
                    op.write_with(&tmp, data).chunk(PART_SIZE).await?;
                    match op.rename(&tmp, &k).await {
                        Ok(()) => Ok(()),
                        Err(e) => {
                            let _ = op.delete(&tmp).await;
                            Err(e)
                        }
                    }
                })?
            }
        };
        res.map_err(|e| Error::store(format!("cannot write {key} to {}", self.url), e))?;
        platform::crash_point("upload");
        if let Kind::Local { root, .. } = &self.kind {
            let file = root.join(key);
            // Our own objects are private whatever the process umask (the mount runs with 0).
            // Checked again: a folder pulled away during the write may have let it land on
            // the machine's own disk (the write makes the folders it needs); it must not
            // count as held, and what it made there goes (only what is empty once the file
            // is gone: nothing of anyone else's).
            if let Err(e) = self.check_present() {
                let _ = std::fs::remove_file(&file);
                let _ = std::fs::remove_dir(root.join(TMP_DIR));
                for dir in file.ancestors().skip(1) {
                    if !dir.starts_with(root) || std::fs::remove_dir(dir).is_err() {
                        break;
                    }
                }
                return Err(e);
            }
            crate::os::make_private(&file, false)
                .map_err(|e| Error::io(format!("cannot write {}", file.display()), e))?;
            sync_dir(file.parent().unwrap_or(root))?;
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        count(0);
        if let Some(f) = faults::before("get", key, false) {
            return Err(self.suffer(f, key, None));
        }
        let op = self.op.clone();
        let k = key.to_owned();
        let buf = self
            .block(async move { op.read(&k).await })?
            .map_err(|e| Error::store(format!("cannot read {key} from {}", self.url), e))?;
        Ok(buf.to_vec())
    }

    /// `len` bytes of `key` from `offset`.
    pub fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        count(0);
        if let Some(f) = faults::before("get", key, false) {
            return Err(self.suffer(f, key, None));
        }
        let op = self.op.clone();
        let k = key.to_owned();
        let buf = self
            .block(async move { op.read_with(&k).range(offset..offset + len).await })?
            .map_err(|e| Error::store(format!("cannot read {key} from {}", self.url), e))?;
        Ok(buf.to_vec())
    }

    /// The objects under `prefix` (a folder, ending in `/`), with their sizes, sorted.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        count(2);
        if let Some(f) = faults::before("list", prefix, false) {
            return Err(self.suffer(f, prefix, None));
        }
        let op = self.op.clone();
        let p = prefix.to_owned();
        let entries = self.block(async move { op.list_with(&p).recursive(true).await })?;
        let entries = match entries {
            Ok(e) => e,
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::store(
                    format!("cannot list {prefix} at {}", self.url),
                    e,
                ))
            }
        };
        let mut out: Vec<(String, u64)> = entries
            .into_iter()
            .filter(|e| e.metadata().mode() == opendal::EntryMode::FILE)
            .filter(|e| !e.path().starts_with(TMP_DIR))
            .map(|e| (e.path().to_owned(), e.metadata().content_length()))
            .collect();
        // Local listings may not carry sizes; stat what lacks one.
        if let Kind::Local { root, .. } = &self.kind {
            for (k, size) in &mut out {
                if *size == 0 {
                    *size = std::fs::metadata(root.join(&k))
                        .map(|m| m.len())
                        .unwrap_or(0);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes what killed writes left in the temporary folder of an SFTP destination (a
    /// local one is cleaned when opened; S3 keeps no temporary objects).
    pub fn remove_leftovers(&self) {
        if matches!(self.kind, Kind::Sftp { .. }) {
            let op = self.op.clone();
            let _ = self
                .block(async move { op.delete_with(&format!("{TMP_DIR}/")).recursive(true).await });
        }
    }

    /// Whether the destination holds nothing yet (ignoring our own temporary folder).
    pub fn is_empty(&self) -> Result<bool> {
        let op = self.op.clone();
        let entries = self.block(async move { op.list_with("").limit(8).await })?;
        match entries {
            Ok(e) => Ok(e
                .iter()
                .all(|e| matches!(e.path(), "" | "/") || e.path().starts_with(TMP_DIR))),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(Error::store(format!("cannot list {}", self.url), e)),
        }
    }

    pub fn exists(&self, key: &str) -> Result<bool> {
        count(0);
        if let Some(f) = faults::before("stat", key, false) {
            return Err(self.suffer(f, key, None));
        }
        let op = self.op.clone();
        let k = key.to_owned();
        self.block(async move { op.exists(&k).await })?
            .map_err(|e| Error::store(format!("cannot check {key} at {}", self.url), e))
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        count(3);
        if let Some(f) = faults::before("delete", key, false) {
            return Err(self.suffer(f, key, None));
        }
        let op = self.op.clone();
        let k = key.to_owned();
        // Pausable like transfers: maintenance deleting when the network goes must let go.
        self.block(async move { op.delete(&k).await })?
            .map_err(|e| Error::store(format!("cannot delete {key} at {}", self.url), e))
    }

    /// Deletes everything this store holds, and its folder when local: a group's old
    /// folder at a member once the group lives in a new one.
    pub fn delete_all(&self) -> Result<()> {
        count(3);
        let op = self.op.clone();
        self.block(async move { op.delete_with("/").recursive(true).await })?
            .map_err(|e| Error::store(format!("cannot delete what {} holds", self.url), e))?;
        if let Kind::Local { root, .. } = &self.kind {
            let _ = std::fs::remove_dir_all(root);
        }
        Ok(())
    }

    /// Deletes `key` if that takes at most `limit` and the store is not paused: for
    /// housekeeping (a lease given back) that must never hold up its caller when the
    /// destination has gone away. Whatever is not deleted expires on its own.
    pub fn delete_briefly(&self, key: &str, limit: Duration) -> Result<()> {
        count(3);
        let op = self.op.clone();
        let k = key.to_owned();
        match self.block(async move {
            match tokio::time::timeout(limit, op.delete(&k)).await {
                Ok(r) => r,
                Err(_) => Err(opendal::Error::new(
                    opendal::ErrorKind::Unexpected,
                    "no answer in time",
                )),
            }
        })? {
            Ok(()) => Ok(()),
            Err(e) => Err(Error::store(
                format!("cannot delete {key} at {}", self.url),
                e,
            )),
        }
    }

    /// Makes sure the folders in `dirs` exist and are durable (so that later writes need to
    /// sync only the folder they write into).
    pub fn make_dirs(&self, dirs: &[String]) -> Result<()> {
        let Kind::Local { root, .. } = &self.kind else {
            return Ok(());
        };
        for d in dirs {
            let p = root.join(d);
            private_dir(&p).map_err(|e| Error::io(format!("cannot create {}", p.display()), e))?;
        }
        for d in dirs {
            let p = root.join(d);
            sync_dir(&p)?;
            sync_dir(p.parent().unwrap_or(root))?;
        }
        sync_dir(root)
    }

    /// Makes the destination's own folder private (a vault: nobody else has any business in it).
    pub fn make_private(&self) -> Result<()> {
        match &self.kind {
            Kind::Local { root, .. } => crate::os::make_private(root, true).map_err(|e| {
                Error::io(
                    format!("cannot set the permissions of {}", root.display()),
                    e,
                )
            }),
            _ => Ok(()),
        }
    }

    /// Makes a request suffer an injected fault (see [`crate::faults`]) and returns its error.
    /// A cut upload really begins the object and abandons it, as a dropped link does, so the
    /// test shows that nothing half-written ever appears under the final name.
    fn suffer(&self, fault: Fault, key: &str, data: Option<&[u8]>) -> Error {
        match fault {
            Fault::Timeout(t) => std::thread::sleep(t),
            Fault::Cut => {
                if let Some(d) = data {
                    let op = self.op.clone();
                    let k = match self.kind {
                        Kind::Sftp { .. } => format!("{TMP_DIR}/{}", random_name()),
                        _ => key.to_owned(),
                    };
                    let half = d[..d.len() / 2].to_vec();
                    let _ = self.block(async move {
                        let mut w = op.writer_with(&k).chunk(PART_SIZE).await?;
                        w.write(half).await
                        // Dropped unclosed: the object is never completed.
                    });
                }
            }
            Fault::Error => {}
        }
        Error::store(
            format!("cannot reach {key} at {}", self.url),
            faults::error(fault),
        )
    }

    /// The local folder, when the destination is one.
    pub fn local_root(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Local { root, .. } => Some(root),
            _ => None,
        }
    }
}

/// A path when `url` names a local folder.
pub fn local_path(url: &str) -> Option<PathBuf> {
    if let Some(rest) = url.strip_prefix("file://") {
        return Some(PathBuf::from(rest));
    }
    if url.contains("://") {
        return None;
    }
    Some(PathBuf::from(url))
}

/// A folder (and its missing parents) that only the owner can enter.
fn private_dir(p: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(p)?;
    crate::os::make_private(p, true)
}

fn identity(p: &Path) -> Result<(u64, u64)> {
    crate::os::dir_identity(p).map_err(|e| Error::io(format!("cannot open {}", p.display()), e))
}

/// Makes a folder's entries durable (a rename into it, a new file). Windows has no fsync of
/// a folder: NTFS journals its metadata.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    platform::sync_dir(dir).map_err(|e| Error::io(format!("cannot sync {}", dir.display()), e))
}

fn throttle(bytes_per_sec: u64) -> ThrottleLayer {
    let bw = bytes_per_sec.clamp(1, u32::MAX as u64) as u32;
    // A burst must admit the largest single write (one part); the rate holds over time.
    ThrottleLayer::new(bw, (PART_SIZE as u32 + (1 << 20)).max(bw))
}

fn random_name() -> String {
    let mut b = [0u8; 12];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

/// A private key written where `ssh` can read it, and nobody else: a file only the owner can
/// read, in a folder only the owner can enter, removed when the store closes.
#[cfg(unix)]
#[derive(Debug)]
struct KeyFile {
    path: PathBuf,
}

#[cfg(unix)]
impl KeyFile {
    fn write(key: &str) -> Result<KeyFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let uid = rustix::process::getuid().as_raw();
        // Memory-backed where there is one (the session's runtime folder, /dev/shm): a key
        // left behind by a killed process never reaches a disk.
        let base = [
            std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
            Some(PathBuf::from("/dev/shm")),
        ]
        .into_iter()
        .flatten()
        .find(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("backpocket-keys-{uid}"));
        private_dir(&dir).map_err(|e| Error::io(format!("cannot make {}", dir.display()), e))?;
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(&dir)
            .map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?;
        if meta.uid() != uid || !meta.is_dir() {
            return Err(Error::Format(format!(
                "{} is not ours; refusing to put a private key there",
                dir.display()
            )));
        }
        // Keys of processes that were killed before they could remove theirs.
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let owner = name.strip_prefix("key-").and_then(|r| r.split('-').next());
            if let Some(pid) = owner.and_then(|p| p.parse::<u32>().ok()) {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let path = dir.join(format!("key-{}-{}", std::process::id(), random_name()));
        let mut text = key.to_owned();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let res = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
        zeroize::Zeroize::zeroize(&mut text);
        res.map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        Ok(KeyFile { path })
    }
}

#[cfg(unix)]
impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_urls() {
        assert_eq!(
            Target::parse("/media/backup").unwrap(),
            Target::Local("/media/backup".into())
        );
        assert_eq!(
            Target::parse("file:///media/b").unwrap(),
            Target::Local("/media/b".into())
        );
        assert_eq!(
            Target::parse("sftp://alice@files.office.lan/backups/alice").unwrap(),
            Target::Sftp {
                user: Some("alice".into()),
                host: "files.office.lan".into(),
                port: None,
                path: "/backups/alice".into()
            }
        );
        assert_eq!(
            Target::parse("sftp://[::1]:2222/srv/my%20pocket/").unwrap(),
            Target::Sftp {
                user: None,
                host: "::1".into(),
                port: Some(2222),
                path: "/srv/my pocket".into()
            }
        );
        assert_eq!(
            Target::parse("s3://pockets/alice/laptop/").unwrap(),
            Target::S3 {
                bucket: "pockets".into(),
                prefix: "alice/laptop".into()
            }
        );
        assert_eq!(
            Target::parse("s3://pockets").unwrap(),
            Target::S3 {
                bucket: "pockets".into(),
                prefix: String::new()
            }
        );
        for bad in [
            "sftp://host",
            "sftp:///x",
            "s3:///x",
            "ftp://host/x",
            "http://x/y",
        ] {
            let e = Target::parse(bad).unwrap_err().to_string();
            assert!(e.contains("sftp://[user@]host"), "{bad}: {e}");
        }
    }
}
