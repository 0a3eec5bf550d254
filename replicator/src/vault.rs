//! A vault at a destination: opening it, its index, writing packs, and its log (segments and
//! checkpoints, one hash-chained sequence).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use tracing::debug;

use crate::crypto::{self, KdfParams, Key};
use crate::error::{Error, Result};
use crate::format::{
    self, gen_name, BlobEntry, Bundle, Bundled, Checkpoint, ChunkId, ChunkRef, ChunkerParams,
    IndexSet, Lease, PackIndex, Pending, Position, Segment, Trash, VChange, VaultConfig,
    VAULT_FORMAT,
};
use crate::source::Chunker;
use crate::store::Store;
use crate::tree::Tree;

/// Packs are cut at about this size (DESIGN: at most 64 MiB, so a cut upload re-sends little).
pub const PACK_TARGET: usize = 16 << 20;

/// Where a chunk lives.
#[derive(Clone, Debug)]
pub struct Loc {
    pub pack: Arc<str>,
    pub blob: BlobEntry,
}

/// The chunk index in memory. Small chunks mean many (a GiB of files under 16 MiB is about
/// 65,000 of them), so an entry is the chunk's id and 20 bytes: its pack by number and its
/// place there. A `Loc` is made when asked for.
#[derive(Debug, Default)]
pub(crate) struct ChunkIndex {
    packs: Vec<Arc<str>>,
    numbers: HashMap<Arc<str>, u32>,
    slots: HashMap<ChunkId, Slot>,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    pack: u32,
    offset: u32,
    len: u32,
    raw_len: u32,
    zstd: bool,
}

impl ChunkIndex {
    /// Adds a pack's blobs (a later pack holding a chunk again takes its place).
    fn add_pack(&mut self, pack: &str, blobs: impl IntoIterator<Item = BlobEntry>) {
        let n = match self.numbers.get(pack) {
            Some(&n) => n,
            None => {
                let name: Arc<str> = Arc::from(pack);
                let n = self.packs.len() as u32;
                self.packs.push(name.clone());
                self.numbers.insert(name, n);
                n
            }
        };
        for b in blobs {
            // Packs are far below 4 GiB; a blob said to lie beyond is not believed (its
            // chunk is then sent again).
            let Ok(offset) = u32::try_from(b.offset) else {
                continue;
            };
            self.slots.insert(
                b.id,
                Slot {
                    pack: n,
                    offset,
                    len: b.len,
                    raw_len: b.raw_len,
                    zstd: b.zstd,
                },
            );
        }
    }

    fn contains(&self, id: &ChunkId) -> bool {
        self.slots.contains_key(id)
    }

    fn get(&self, id: &ChunkId) -> Option<Loc> {
        let s = self.slots.get(id)?;
        Some(Loc {
            pack: self.packs[s.pack as usize].clone(),
            blob: BlobEntry {
                id: *id,
                offset: u64::from(s.offset),
                len: s.len,
                raw_len: s.raw_len,
                zstd: s.zstd,
            },
        })
    }

    fn from_map(map: HashMap<ChunkId, Loc>) -> ChunkIndex {
        let mut by_pack: HashMap<Arc<str>, Vec<BlobEntry>> = HashMap::new();
        for (_, loc) in map {
            by_pack.entry(loc.pack).or_default().push(loc.blob);
        }
        let mut ix = ChunkIndex::default();
        for (pack, blobs) in by_pack {
            ix.add_pack(&pack, blobs);
        }
        ix
    }

    fn to_map(&self) -> HashMap<ChunkId, Loc> {
        self.slots
            .keys()
            .filter_map(|id| self.get(id).map(|l| (*id, l)))
            .collect()
    }
}

struct Keys {
    blob: Key,
    objects: Key,
    chunk_id: Key,
    pack_name: Key,
    gear_seed: u64,
}

/// An open vault.
pub struct Vault {
    pub store: Store,
    pub config: VaultConfig,
    keys: Keys,
    index: Mutex<ChunkIndex>,
    /// Chunks being packed by some worker right now (so two workers never pack one twice).
    in_flight: Mutex<HashSet<ChunkId>>,
    /// Where index objects of a remote vault are kept on the drive once read, so that
    /// opening the vault again reads only the ones it has not seen.
    cache: Option<std::path::PathBuf>,
    /// The pocket's cache folder, for caches of any vault (the version index).
    cache_root: Option<std::path::PathBuf>,
    /// Whose log this handle reads and writes: empty for the vault's first pocket (its log
    /// is `log/`, `checkpoints/`), a device id for a pocket that joined (`chains/<id>/…`).
    chain: String,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("url", &self.store.url())
            .field("id", &self.config.id)
            .finish()
    }
}

/// The newest log object: where the next one continues.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub gen: u64,
    pub hash: [u8; 32],
    pub journal_id: i64,
    pub seq: u64,
    pub time_ns: i64,
}

/// One log object in the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogKind {
    Segment,
    Checkpoint,
}

impl LogKind {
    fn dir(self) -> &'static str {
        match self {
            LogKind::Segment => "log",
            LogKind::Checkpoint => "checkpoints",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            LogKind::Segment => "log",
            LogKind::Checkpoint => "checkpoint",
        }
    }
}

/// A restore point: the end of one log object.
#[derive(Clone, Debug)]
pub struct Point {
    pub gen: u64,
    pub kind: LogKind,
    pub time_ns: i64,
    pub written_ns: i64,
    pub seq: u64,
    pub records: usize,
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Vault {
    /// Makes a new vault in an empty folder, its master key sealed with `pocket_key`.
    pub fn create(
        store: Store,
        pocket_id: &str,
        kdf: KdfParams,
        pocket_key: &Key,
    ) -> Result<Vault> {
        if store.exists("config")? {
            return Err(Error::Format(format!(
                "{} already holds a vault; add it with its own pocket, or pick an empty folder",
                store.url()
            )));
        }
        let master = Key::random()?;
        let mut idb = [0u8; 16];
        getrandom::fill(&mut idb).map_err(|e| Error::Crypto(e.to_string()))?;
        let id = hex::encode(idb);
        let wrapped_key = crypto::seal(pocket_key, &master_aad(&id), master.as_bytes())?;
        let config = VaultConfig {
            backpocket_vault: VAULT_FORMAT,
            id,
            pocket_id: pocket_id.to_owned(),
            kdf,
            wrapped_key,
            created_ns: now_ns(),
            chunker: ChunkerParams::default(),
        };
        store.make_private()?;
        let mut dirs: Vec<String> = (0..=255u8).map(|b| format!("data/{b:02x}")).collect();
        dirs.extend(["index", "log", "checkpoints", "trash", "locks"].map(String::from));
        store.make_dirs(&dirs)?;
        let json = serde_json::to_vec_pretty(&config).map_err(|e| Error::Format(e.to_string()))?;
        // The config goes last: a folder without one is not a vault yet, so a creation cut
        // short can simply be retried.
        store.put("config", json)?;
        Ok(Vault::with_key(store, config, master))
    }

    /// Reads a vault's config (no key needed): to learn its KDF parameters and owner.
    pub fn read_config(store: &Store) -> Result<VaultConfig> {
        let raw = match store.get("config") {
            Ok(r) => r,
            Err(e) if e.is_not_found() => {
                return Err(Error::NotAVault(format!(
                    "{} has no vault config",
                    store.url()
                )))
            }
            Err(e) => return Err(e),
        };
        let config: VaultConfig = serde_json::from_slice(&raw).map_err(|e| {
            Error::NotAVault(format!("{}: its config cannot be read: {e}", store.url()))
        })?;
        if config.backpocket_vault > format::DEVICES_FORMAT {
            return Err(Error::Format(format!(
                "{} is vault format {}, this backpocket reads up to {}: update backpocket",
                store.url(),
                config.backpocket_vault,
                format::DEVICES_FORMAT
            )));
        }
        Ok(config)
    }

    /// Opens a vault with the pocket key (from the pocket, or derived from the passphrase with
    /// the vault's KDF parameters).
    pub fn open(store: Store, pocket_key: &Key) -> Result<Vault> {
        let config = Vault::read_config(&store)?;
        let master = crypto::open(pocket_key, &master_aad(&config.id), &config.wrapped_key)
            .map_err(|_| Error::WrongPassphrase)?;
        let master = Key::from_bytes(&master)?;
        Ok(Vault::with_key(store, config, master))
    }

    fn with_key(store: Store, config: VaultConfig, master: Key) -> Vault {
        let seed_key = master.derive("backpocket vault 1 gear seed");
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&seed_key.as_bytes()[..8]);
        Vault {
            store,
            config,
            keys: Keys {
                blob: master.derive("backpocket vault 1 blob"),
                objects: master.derive("backpocket vault 1 objects"),
                chunk_id: master.derive("backpocket vault 1 chunk id"),
                pack_name: master.derive("backpocket vault 1 pack name"),
                gear_seed: u64::from_le_bytes(seed),
            },
            index: Mutex::new(ChunkIndex::default()),
            in_flight: Mutex::new(HashSet::new()),
            cache: None,
            cache_root: None,
            chain: String::new(),
        }
    }

    /// This handle reads and writes the log of `device` (a pocket that joined the vault);
    /// content stays shared. The vault's first pocket keeps the plain `log/`.
    pub fn on_chain(mut self, device: &str) -> Vault {
        self.chain = if device == self.config.pocket_id {
            String::new()
        } else {
            device.to_owned()
        };
        self
    }

    /// Follows another chain (tests write several devices' logs with one handle).
    #[cfg(test)]
    pub(crate) fn set_chain(&mut self, chain: &str) {
        self.chain = chain.to_owned();
    }

    /// The chain this handle follows (`""`: the first pocket's).
    pub(crate) fn chain(&self) -> &str {
        &self.chain
    }

    /// The device whose log this handle follows.
    pub fn device(&self) -> &str {
        if self.chain.is_empty() {
            &self.config.pocket_id
        } else {
            &self.chain
        }
    }

    /// Where a chain's objects live: `""` for the first pocket's, `chains/<id>/` otherwise.
    pub(crate) fn chain_prefix(chain: &str) -> String {
        if chain.is_empty() {
            String::new()
        } else {
            format!("chains/{chain}/")
        }
    }

    /// The name an object of the chain is sealed under: a device's objects carry its id, so
    /// one cannot be passed off as another device's.
    fn sealed_name(chain: &str, name: &str) -> String {
        if chain.is_empty() {
            name.to_owned()
        } else {
            format!("{chain}/{name}")
        }
    }

    /// Keeps index objects of a remote vault in `dir` (on the drive). They stay sealed and are
    /// authenticated on every use like those read from the vault, so the cache is neither
    /// secret nor trusted; a local vault needs none.
    pub fn with_cache(mut self, dir: &std::path::Path) -> Vault {
        if !self.store.is_local() {
            self.cache = Some(dir.join(&self.config.id));
        }
        self.cache_root = Some(dir.to_owned());
        self
    }

    /// The key that seals every object but chunks.
    pub(crate) fn objects_key(&self) -> &Key {
        &self.keys.objects
    }

    /// The pocket's cache folder, when the vault was opened with one.
    pub(crate) fn cache_root(&self) -> Option<&std::path::Path> {
        self.cache_root.as_deref()
    }

    pub fn chunker(&self) -> Chunker {
        Chunker {
            params: self.config.chunker,
            seed: self.keys.gear_seed,
        }
    }

    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        *blake3::keyed_hash(self.keys.chunk_id.as_bytes(), data).as_bytes()
    }

    /// Reads every index object not in the trash (those of a remote vault from the cache
    /// when it has them, the others several at a time) into the index. A damaged index
    /// object is reported, not fatal: its chunks are simply sent again.
    pub fn load_index(&self) -> Result<Vec<String>> {
        let trashed = self.trashed()?;
        let objects = self.read_index_objects(&trashed.keys)?;
        let mut damaged = Vec::new();
        let mut ix = ChunkIndex::default();
        for o in objects {
            let Some(packs) = o.packs else {
                damaged.push(o.key);
                continue;
            };
            for idx in packs {
                ix.add_pack(&idx.pack, idx.blobs);
            }
        }
        debug!(chunks = ix.slots.len(), "vault index loaded");
        *self.index.lock() = ix;
        Ok(damaged)
    }

    /// Every index object not in `trashed`, read and opened (None: it does not open).
    pub(crate) fn read_index_objects(&self, trashed: &HashSet<String>) -> Result<Vec<IndexObject>> {
        let listed: Vec<(String, u64)> = self
            .store
            .list("index/")?
            .into_iter()
            .filter(|(k, _)| !trashed.contains(k))
            .collect();
        if let Some(dir) = &self.cache {
            // Index objects that are gone (pruned, merged) leave the cache too.
            if let Ok(rd) = std::fs::read_dir(dir) {
                let names: HashSet<&str> = listed
                    .iter()
                    .map(|(k, _)| k.trim_start_matches("index/"))
                    .collect();
                for e in rd.flatten() {
                    if !names.contains(e.file_name().to_string_lossy().as_ref()) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<Result<Vec<IndexObject>>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..self.store.parallel().clamp(1, 16))
                .map(|_| {
                    s.spawn(|| {
                        let mut out = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some((key, size)) = listed.get(i) else {
                                break;
                            };
                            out.push(IndexObject {
                                key: key.clone(),
                                packs: self.read_index_cached(key, *size)?,
                            });
                        }
                        Ok(out)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err(Error::Format(
                    "reading the vault's index failed unexpectedly (a bug; please report it)".into(),
                )))
                })
                .collect()
        });
        let mut out = Vec::new();
        for r in results {
            out.extend(r?);
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// One index object's packs, None when it does not open; from the cache when it holds it.
    fn read_index_cached(&self, key: &str, size: u64) -> Result<Option<Vec<PackIndex>>> {
        let name = key.trim_start_matches("index/");
        let open = |raw: &[u8]| self.open_index(name, raw);
        let cached = self.cache.as_ref().map(|d| d.join(name));
        if let Some(c) = &cached {
            if let Ok(raw) = std::fs::read(c) {
                if raw.len() as u64 == size {
                    if let Some(idx) = open(&raw) {
                        return Ok(Some(idx));
                    }
                }
            }
        }
        let raw = self.store.get(key)?;
        let idx = open(&raw);
        if let (Some(c), Some(_)) = (&cached, &idx) {
            // Best effort: a cache that cannot be written only costs a read next time.
            let tmp = c.with_extension("tmp");
            let _ = std::fs::create_dir_all(c.parent().unwrap_or(c))
                .and_then(|()| std::fs::write(&tmp, &raw))
                .and_then(|()| std::fs::rename(&tmp, c));
        }
        Ok(idx)
    }

    /// An index object's packs: a set (format 2), or the index of the one pack it is named
    /// after.
    fn open_index(&self, name: &str, raw: &[u8]) -> Option<Vec<PackIndex>> {
        if name.starts_with("set-") {
            format::open_object::<IndexSet>(&self.keys.objects, "index-set", name, raw)
                .ok()
                .map(|s| s.packs)
        } else {
            format::open_object::<PackIndex>(&self.keys.objects, "index", name, raw)
                .ok()
                .filter(|idx| idx.pack == name)
                .map(|idx| vec![idx])
        }
    }

    pub fn locate(&self, id: &ChunkId) -> Option<Loc> {
        self.index.lock().get(id)
    }

    pub fn index_len(&self) -> usize {
        self.index.lock().slots.len()
    }

    /// Forgets the chunks held in these packs (damaged ones, for repair): whatever still has
    /// their data sends them again.
    pub(crate) fn forget_packs(&self, packs: &HashSet<&str>) {
        let mut ix = self.index.lock();
        let gone: HashSet<u32> = packs
            .iter()
            .filter_map(|p| ix.numbers.get(*p).copied())
            .collect();
        ix.slots.retain(|_, s| !gone.contains(&s.pack));
    }

    /// All the index knows, for verify and prune.
    pub fn index_snapshot(&self) -> HashMap<ChunkId, Loc> {
        self.index.lock().to_map()
    }

    /// The store key of a pack.
    pub fn pack_key(name: &str) -> String {
        // Names come from listings a destination's owner controls: never slice inside a
        // character.
        format!("data/{}/{}", name.get(..2).unwrap_or(name), name)
    }

    /// Reads one blob out of a pack's bytes, checks it and returns the plaintext.
    pub fn open_blob(&self, pack_bytes: &[u8], blob: &BlobEntry) -> Result<Vec<u8>> {
        let name = hex::encode(blob.id);
        let damaged = |d: &str| Error::Damaged {
            object: format!("chunk {name}"),
            detail: d.to_owned(),
        };
        let start = blob.offset as usize;
        let end = start + blob.len as usize;
        let sealed = pack_bytes
            .get(start..end)
            .ok_or_else(|| damaged("the pack is shorter than its index says"))?;
        self.open_sealed_blob(sealed, blob)
    }

    fn open_sealed_blob(&self, sealed: &[u8], blob: &BlobEntry) -> Result<Vec<u8>> {
        let name = hex::encode(blob.id);
        let damaged = |d: &str| Error::Damaged {
            object: format!("chunk {name}"),
            detail: d.to_owned(),
        };
        let plain = crypto::open(&self.keys.blob, &format::aad("blob", &name), sealed)
            .map_err(|_| damaged("authentication failed (damaged, swapped or tampered with)"))?;
        let data = if blob.zstd {
            zstd::bulk::decompress(&plain, blob.raw_len as usize)
                .map_err(|_| damaged("cannot decompress"))?
        } else {
            plain
        };
        if data.len() != blob.raw_len as usize || self.chunk_id(&data) != blob.id {
            return Err(damaged("its contents do not match its hash"));
        }
        Ok(data)
    }

    /// Fetches and checks one chunk.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let loc = self.locate(id).ok_or_else(|| Error::Damaged {
            object: format!("chunk {}", hex::encode(id)),
            detail: "no pack holds it".into(),
        })?;
        let sealed = self.store.get_range(
            &Vault::pack_key(&loc.pack),
            loc.blob.offset,
            loc.blob.len as u64,
        )?;
        self.open_sealed_blob(&sealed, &loc.blob)
    }

    /// The keyed name of a pack's bytes (verify checks it with `--read-data`).
    pub fn pack_name(&self, bytes: &[u8]) -> String {
        blake3::keyed_hash(self.keys.pack_name.as_bytes(), bytes)
            .to_hex()
            .to_string()
    }

    /// Ends a pack: its blobs' bytes in `buf`, then the sealed header and its length. Returns
    /// the pack's bytes and its index.
    pub(crate) fn seal_pack(
        &self,
        mut buf: Vec<u8>,
        blobs: Vec<BlobEntry>,
    ) -> Result<(Vec<u8>, PackIndex)> {
        let mut header = Vec::new();
        ciborium::into_writer(&blobs, &mut header).map_err(|e| Error::Format(e.to_string()))?;
        let sealed_header =
            crypto::seal(&self.keys.objects, &format::aad("pack-header", ""), &header)?;
        buf.extend_from_slice(&sealed_header);
        buf.extend_from_slice(&(sealed_header.len() as u32).to_le_bytes());
        let name = self.pack_name(&buf);
        let index = PackIndex {
            pack: name,
            size: buf.len() as u64,
            blobs,
        };
        Ok((buf, index))
    }

    /// The blob list a pack carries at its end (for a pack no index object lists).
    pub(crate) fn open_pack_header(&self, pack: &[u8]) -> Result<Vec<BlobEntry>> {
        let damaged = |d: &str| Error::Damaged {
            object: "pack header".into(),
            detail: d.to_owned(),
        };
        let n = pack.len();
        let len = pack
            .get(n.saturating_sub(4)..)
            .filter(|b| b.len() == 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| damaged("too short"))?;
        let sealed = pack
            .get(n.saturating_sub(4 + len)..n - 4)
            .filter(|s| s.len() == len)
            .ok_or_else(|| damaged("its length is wrong"))?;
        let plain = crypto::open(&self.keys.objects, &format::aad("pack-header", ""), sealed)
            .map_err(|_| damaged("authentication failed"))?;
        ciborium::from_reader(&plain[..]).map_err(|e| damaged(&format!("cannot decode: {e}")))
    }

    /// A packer for one worker thread.
    pub fn packer(&self) -> Packer<'_> {
        Packer {
            vault: self,
            buf: Vec::with_capacity(PACK_TARGET + (1 << 20)),
            blobs: Vec::new(),
            uploads: std::collections::VecDeque::new(),
            uploaded_bytes: 0,
            apart: None,
            new_chunks: 0,
            landed: None,
        }
    }

    // --- the log ---

    /// Where every log object of the chain is stored: one listing of `log/` and
    /// `checkpoints/`, without what trash objects list.
    pub fn log_map(&self) -> Result<LogMap> {
        let trashed = self.trashed()?;
        self.log_map_without(&trashed.keys)
    }

    pub(crate) fn log_map_without(&self, trashed: &HashSet<String>) -> Result<LogMap> {
        self.chain_map(&self.chain, trashed)
    }

    /// The log map of any device's chain (`""`: the first pocket's).
    pub(crate) fn chain_map(&self, chain: &str, trashed: &HashSet<String>) -> Result<LogMap> {
        let prefix = Vault::chain_prefix(chain);
        let mut objects = Vec::new();
        for kind in [LogKind::Segment, LogKind::Checkpoint] {
            for (key, size) in self.store.list(&format!("{prefix}{}/", kind.dir()))? {
                if trashed.contains(&key) {
                    continue;
                }
                let name = key.rsplit('/').next().unwrap_or("");
                let bad = || Error::Damaged {
                    object: key.clone(),
                    detail: "not a log object name".into(),
                };
                let (first, last, bundle) = match name.split_once('-') {
                    Some((a, b)) if kind == LogKind::Segment => (
                        parse_gen(a).ok_or_else(bad)?,
                        parse_gen(b).ok_or_else(bad)?,
                        true,
                    ),
                    _ => {
                        let g = parse_gen(name).ok_or_else(bad)?;
                        (g, g, false)
                    }
                };
                if first > last || first == 0 {
                    return Err(bad());
                }
                objects.push(LogEntry {
                    key: key.clone(),
                    first,
                    last,
                    size,
                    kind: (!bundle).then_some(kind),
                });
            }
        }
        // Bundles first, widest first: a gen held both alone and in a bundle (maintenance
        // between writing the bundle and trashing the singles) is read from the bundle.
        objects.sort_by_key(|o| {
            (
                o.kind.is_some(),
                std::cmp::Reverse(o.last - o.first),
                o.first,
            )
        });
        let mut at: BTreeMap<u64, usize> = BTreeMap::new();
        let mut checkpoints = BTreeSet::new();
        let mut singles: HashMap<u64, LogKind> = HashMap::new();
        for (i, o) in objects.iter().enumerate() {
            if let Some(k) = o.kind {
                if let Some(other) = singles.insert(o.first, k) {
                    if other != k {
                        return Err(Error::Damaged {
                            object: format!("log object {}", o.first),
                            detail: "stored both as a segment and as a checkpoint".into(),
                        });
                    }
                }
                if k == LogKind::Checkpoint {
                    checkpoints.insert(o.first);
                }
            }
            for g in o.first..=o.last {
                at.entry(g).or_insert(i);
            }
        }
        Ok(LogMap {
            objects,
            at,
            checkpoints,
            chain: chain.to_owned(),
        })
    }

    fn log_key(&self, kind: LogKind, gen: u64) -> String {
        format!(
            "{}{}/{}",
            Vault::chain_prefix(&self.chain),
            kind.dir(),
            gen_name(gen)
        )
    }

    /// Reads log object `gen` as the map says where it is; `cache` keeps the last bundle
    /// read, so that walking the chain reads each bundle once.
    pub(crate) fn read_point(
        &self,
        map: &LogMap,
        gen: u64,
        cache: &mut Option<(usize, HashMap<u64, Bundled>)>,
    ) -> Result<([u8; 32], LogObject)> {
        let i = *map.at.get(&gen).ok_or_else(|| Error::Damaged {
            object: format!("log object {gen}"),
            detail: "missing from the chain".into(),
        })?;
        let entry = &map.objects[i];
        let (raw, kind) = match entry.kind {
            Some(kind) => (self.store.get(&entry.key)?, kind),
            None => {
                if cache.as_ref().is_none_or(|(c, _)| *c != i) {
                    *cache = Some((i, self.read_bundle(entry)?));
                }
                let held = cache.as_mut().and_then(|(_, b)| b.remove(&gen));
                let b = held.ok_or_else(|| Error::Damaged {
                    object: entry.key.clone(),
                    detail: format!("it does not hold log object {gen} that its name promises"),
                })?;
                let kind = if b.checkpoint {
                    LogKind::Checkpoint
                } else {
                    LogKind::Segment
                };
                (b.sealed, kind)
            }
        };
        self.open_chain_log(&map.chain, gen, kind, &raw)
    }

    /// A bundle's objects by gen, checked against its name.
    pub(crate) fn read_bundle(&self, entry: &LogEntry) -> Result<HashMap<u64, Bundled>> {
        let raw = self.store.get(&entry.key)?;
        let (prefix, name) = entry.key.rsplit_once("log/").unwrap_or(("", &entry.key));
        let chain = prefix
            .strip_prefix("chains/")
            .and_then(|c| c.strip_suffix('/'))
            .unwrap_or("");
        let b: Bundle = format::open_object(
            &self.keys.objects,
            "log-bundle",
            &Vault::sealed_name(chain, name),
            &raw,
        )?;
        let gens: Vec<u64> = b.objects.iter().map(|o| o.gen).collect();
        if b.first != entry.first
            || b.last != entry.last
            || gens != (entry.first..=entry.last).collect::<Vec<_>>()
        {
            return Err(Error::Damaged {
                object: entry.key.clone(),
                detail: "it holds other log objects than its name says".into(),
            });
        }
        Ok(b.objects.into_iter().map(|o| (o.gen, o)).collect())
    }

    pub(crate) fn open_log(
        &self,
        gen: u64,
        kind: LogKind,
        raw: &[u8],
    ) -> Result<([u8; 32], LogObject)> {
        self.open_chain_log(&self.chain.clone(), gen, kind, raw)
    }

    fn open_chain_log(
        &self,
        chain: &str,
        gen: u64,
        kind: LogKind,
        raw: &[u8],
    ) -> Result<([u8; 32], LogObject)> {
        let hash = *blake3::hash(raw).as_bytes();
        let name = Vault::sealed_name(chain, &gen_name(gen));
        let obj = match kind {
            LogKind::Segment => LogObject::Segment(format::open_object(
                &self.keys.objects,
                kind.kind(),
                &name,
                raw,
            )?),
            LogKind::Checkpoint => LogObject::Checkpoint(format::open_object(
                &self.keys.objects,
                kind.kind(),
                &name,
                raw,
            )?),
        };
        if obj.pos().gen != gen {
            return Err(Error::Damaged {
                object: format!(
                    "{}{}/{}",
                    Vault::chain_prefix(chain),
                    kind.dir(),
                    gen_name(gen)
                ),
                detail: "its content names another position".into(),
            });
        }
        Ok((hash, obj))
    }

    /// Seals a log object as stored (its bytes are what the next object's `prev` hashes).
    pub(crate) fn seal_log(&self, obj: &LogObject) -> Result<Vec<u8>> {
        let name = Vault::sealed_name(&self.chain, &gen_name(obj.pos().gen));
        match obj {
            LogObject::Segment(s) => format::seal_object(&self.keys.objects, "log", &name, s),
            LogObject::Checkpoint(c) => {
                format::seal_object(&self.keys.objects, "checkpoint", &name, c)
            }
        }
    }

    /// Seals a bundle of stored log objects.
    pub(crate) fn seal_bundle(&self, b: &Bundle) -> Result<(String, Vec<u8>)> {
        let name = format!("{}-{}", gen_name(b.first), gen_name(b.last));
        let sealed = format::seal_object(
            &self.keys.objects,
            "log-bundle",
            &Vault::sealed_name(&self.chain, &name),
            b,
        )?;
        Ok((
            format!("{}log/{name}", Vault::chain_prefix(&self.chain)),
            sealed,
        ))
    }

    /// Writes the next log object after `head` and returns the new head.
    pub fn append_log(&self, head: &Head, obj: &LogObject) -> Result<Head> {
        let kind = obj.kind();
        let pos = obj.pos();
        debug_assert_eq!(pos.gen, head.gen + 1);
        let bytes = self.seal_log(obj)?;
        let hash = *blake3::hash(&bytes).as_bytes();
        self.store.put(&self.log_key(kind, pos.gen), bytes)?;
        Ok(Head {
            gen: pos.gen,
            hash,
            journal_id: pos.journal_id,
            seq: pos.seq,
            time_ns: pos.time_ns,
        })
    }

    /// The restore points, oldest first (reads the whole log: few objects once maintained).
    pub fn points(&self) -> Result<Vec<Point>> {
        let map = self.log_map()?;
        let mut out = Vec::new();
        let mut cache = None;
        for &gen in map.at.keys() {
            let (_, obj) = self.read_point(&map, gen, &mut cache)?;
            let pos = obj.pos();
            out.push(Point {
                gen,
                kind: obj.kind(),
                time_ns: pos.time_ns,
                written_ns: pos.written_ns,
                seq: pos.seq,
                records: match &obj {
                    LogObject::Segment(s) => s.records.len(),
                    LogObject::Checkpoint(_) => 0,
                },
            });
        }
        Ok(out)
    }

    /// Rebuilds the tree at the newest point whose changes were all made at or before
    /// `until` (all of the log when None), checking the hash chain on the way. Returns None
    /// for an empty vault, or when no point is that old.
    pub fn load_tree(&self, until: Option<i64>) -> Result<Option<(Tree, Head)>> {
        Ok(self
            .replay(until, false, &mut |_, _, _| Ok(()))?
            .map(|r| (r.tree, r.head)))
    }

    /// A chain's tree at log object `gen` (None if the chain does not hold it).
    pub(crate) fn chain_tree_at(&self, chain: &str, gen: u64) -> Result<Option<Tree>> {
        let mut found = None;
        self.replay_chain(chain, true, &mut |tree, point, _| {
            if point.gen == gen {
                found = Some(tree.clone());
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// The newest tree of another device's chain (`""`: the first pocket's).
    pub fn load_chain_tree(&self, chain: &str) -> Result<Option<(Tree, Head)>> {
        let trashed = self.trashed()?;
        let map = self.chain_map(chain, &trashed.keys)?;
        Ok(self
            .replay_map(map, None, false, &mut |_, _, _| Ok(()))?
            .map(|r| (r.tree, r.head)))
    }

    /// Replays a device's chain, calling `visit` with the tree after each object: from its
    /// oldest checkpoint (its whole history the vault keeps), or from its newest (what loading
    /// its tree reads anyway).
    pub(crate) fn replay_chain(
        &self,
        chain: &str,
        from_oldest: bool,
        visit: &mut dyn FnMut(&Tree, &Point, &LogObject) -> Result<()>,
    ) -> Result<()> {
        let trashed = self.trashed()?;
        let map = self.chain_map(chain, &trashed.keys)?;
        self.replay_map(map, None, from_oldest, visit)?;
        Ok(())
    }

    /// As [`Vault::load_tree`] for the newest point, with what a drain needs to know of the
    /// log since its newest checkpoint.
    pub(crate) fn load_newest(&self) -> Result<Option<Replayed>> {
        self.replay(None, false, &mut |_, _, _| Ok(()))
    }

    /// Replays the whole log from its oldest checkpoint, calling `visit` after each object
    /// with the tree and the object itself.
    pub fn replay_all(
        &self,
        visit: &mut dyn FnMut(&Tree, &Point, &LogObject) -> Result<()>,
    ) -> Result<Option<(Tree, Head)>> {
        Ok(self.replay(None, true, visit)?.map(|r| (r.tree, r.head)))
    }

    /// As [`Vault::load_tree`], calling `visit` after each log object.
    fn replay(
        &self,
        until: Option<i64>,
        from_oldest: bool,
        visit: &mut dyn FnMut(&Tree, &Point, &LogObject) -> Result<()>,
    ) -> Result<Option<Replayed>> {
        let map = self.log_map()?;
        self.replay_map(map, until, from_oldest, visit)
    }

    fn replay_map(
        &self,
        map: LogMap,
        until: Option<i64>,
        from_oldest: bool,
        visit: &mut dyn FnMut(&Tree, &Point, &LogObject) -> Result<()>,
    ) -> Result<Option<Replayed>> {
        let Some(&oldest) = map.at.keys().next() else {
            return Ok(None);
        };
        let mut cache = None;
        // Start at the newest stand-alone checkpoint that is old enough; when none is (the
        // old ones live in bundles), from the start of the log.
        let mut start = oldest;
        if !from_oldest {
            for &gen in map.checkpoints.iter().rev() {
                let (_, obj) = self.read_point(&map, gen, &mut cache)?;
                if until.is_none_or(|t| obj.pos().time_ns <= t) {
                    start = gen;
                    break;
                }
            }
        }
        let mut tree = Tree::default();
        let mut head: Option<Head> = None;
        let mut since = LogSince::default();
        let mut started = false;
        let mut stopped_before = None;
        for &gen in map.at.range(start..).map(|(g, _)| g) {
            let (hash, obj) = self.read_point(&map, gen, &mut cache)?;
            let pos = obj.pos().clone();
            if let Some(h) = &head {
                if pos.gen != h.gen + 1 {
                    return Err(Error::Damaged {
                        object: format!("log object {}", h.gen + 1),
                        detail: "missing from the chain".into(),
                    });
                }
                if pos.prev != h.hash {
                    return Err(Error::Damaged {
                        object: map.key_of(gen),
                        detail: "it does not follow the object before it (replaced or reordered)"
                            .into(),
                    });
                }
            }
            if until.is_some_and(|t| pos.time_ns > t) {
                stopped_before = Some(gen);
                break;
            }
            let records = match &obj {
                LogObject::Segment(s) => {
                    if !started {
                        // The log must start with a checkpoint.
                        return Ok(None);
                    }
                    tree.apply_segment(s);
                    since.segments += 1;
                    since.records += s.records.len() as u64;
                    s.records.len()
                }
                LogObject::Checkpoint(c) => {
                    tree = Tree::from_checkpoint(c.clone());
                    since = LogSince {
                        checkpoint_files: c.files.len() as u64,
                        ..LogSince::default()
                    };
                    started = true;
                    0
                }
            };
            head = Some(Head {
                gen: pos.gen,
                hash,
                journal_id: pos.journal_id,
                seq: pos.seq,
                time_ns: pos.time_ns,
            });
            visit(
                &tree,
                &Point {
                    gen: pos.gen,
                    kind: obj.kind(),
                    time_ns: pos.time_ns,
                    written_ns: pos.written_ns,
                    seq: pos.seq,
                    records,
                },
                &obj,
            )?;
        }
        if let Some(next) = stopped_before {
            self.complete_pending(&map, &mut tree, next, &mut cache)?;
        }
        Ok(head.map(|head| Replayed { tree, head, since }))
    }

    /// Gives the files a point still waited for the contents that arrived later: the first
    /// content record of each, from gen `from` on, of at least the record the point waited
    /// for (read from the drive after it, so exact for the point). A file made anew under the
    /// same number first, or whose contents never came, stays in `tree.pending` with what the
    /// destination held of it before.
    fn complete_pending(
        &self,
        map: &LogMap,
        tree: &mut Tree,
        from: u64,
        cache: &mut Option<(usize, HashMap<u64, Bundled>)>,
    ) -> Result<()> {
        let mut looking: BTreeMap<u64, Pending> = tree.pending.clone();
        // Each waiting file's contents as the log goes on (a patch applies to what came
        // before it, a stale read included).
        let mut shadow: HashMap<u64, crate::format::FileState> = looking
            .keys()
            .filter_map(|f| tree.files.get(f).map(|s| (*f, s.clone())))
            .collect();
        let gens: Vec<u64> = map.at.range(from..).map(|(g, _)| *g).collect();
        for gen in gens {
            if looking.is_empty() {
                break;
            }
            let (_, obj) = self.read_point(map, gen, cache)?;
            let LogObject::Segment(s) = obj else { continue };
            for r in s.records {
                match &r.change {
                    VChange::Content { file, .. } | VChange::Patch { file, .. } => {
                        let Some(p) = looking.get(file) else { continue };
                        let Some(f) = shadow.get_mut(file) else {
                            continue;
                        };
                        let fits = crate::tree::apply_contents(f, &r.change);
                        if r.seq >= p.seq {
                            looking.remove(file);
                            if fits {
                                tree.pending.remove(file);
                                if let Some(t) = tree.files.get_mut(file) {
                                    t.meta = f.meta;
                                    t.content = f.content.clone();
                                }
                            }
                        }
                    }
                    VChange::Create { file, .. }
                    | VChange::Mkdir { file, .. }
                    | VChange::Symlink { file, .. } => {
                        looking.remove(file);
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The newest log object's head without rebuilding the tree (one listing, one read).
    pub fn head(&self) -> Result<Option<Head>> {
        let map = self.log_map()?;
        let Some(&gen) = map.at.keys().next_back() else {
            return Ok(None);
        };
        let (hash, obj) = self.read_point(&map, gen, &mut None)?;
        let pos = obj.pos();
        Ok(Some(Head {
            gen: pos.gen,
            hash,
            journal_id: pos.journal_id,
            seq: pos.seq,
            time_ns: pos.time_ns,
        }))
    }

    // --- trash and leases ---

    /// What the trash objects list (readers ignore those objects), and the trash objects.
    pub(crate) fn trashed(&self) -> Result<Trashed> {
        let mut out = Trashed::default();
        for (key, _) in self.store.list("trash/")? {
            let name = key.trim_start_matches("trash/");
            let raw = match self.store.get(&key) {
                Ok(r) => r,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            // A trash object that does not open lists nothing: its objects stay visible,
            // which only costs duplicates.
            match format::open_object::<Trash>(&self.keys.objects, "trash", name, &raw) {
                Ok(t) => {
                    out.keys.extend(t.keys.iter().cloned());
                    out.objects.push((key, t));
                }
                Err(e) => tracing::warn!("{key}: {e}; ignored"),
            }
        }
        Ok(out)
    }

    /// Writes a trash object listing `keys`.
    pub(crate) fn put_trash(&self, keys: Vec<String>) -> Result<String> {
        let written_ns = now_ns();
        let name = format!("{}-{}", gen_name(written_ns.max(0) as u64), random_hex(8)?);
        let sealed = format::seal_object(
            &self.keys.objects,
            "trash",
            &name,
            &Trash { written_ns, keys },
        )?;
        let key = format!("trash/{name}");
        self.store.put(&key, sealed)?;
        Ok(key)
    }

    /// Every lease in the vault (those that do not open are skipped: they bind no one).
    pub(crate) fn leases(&self) -> Result<Vec<(String, Lease)>> {
        let mut out = Vec::new();
        for (key, _) in self.store.list("locks/")? {
            let name = key.trim_start_matches("locks/");
            let raw = match self.store.get(&key) {
                Ok(r) => r,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            if let Ok(l) = format::open_object::<Lease>(&self.keys.objects, "lock", name, &raw) {
                out.push((key, l));
            }
        }
        Ok(out)
    }

    /// Writes (or renews) the lease `key`.
    pub(crate) fn put_lease(&self, key: &str, lease: &Lease) -> Result<()> {
        let name = key.trim_start_matches("locks/");
        let sealed = format::seal_object(&self.keys.objects, "lock", name, lease)?;
        self.store.put(key, sealed)
    }

    /// The sealed bytes of an index set, and its key.
    pub(crate) fn seal_index_set(&self, set: &IndexSet) -> Result<(String, Vec<u8>)> {
        let name = format!("set-{}", random_hex(16)?);
        let sealed = format::seal_object(&self.keys.objects, "index-set", &name, set)?;
        Ok((format!("index/{name}"), sealed))
    }

    /// Rewrites the config with this code's format: done by maintenance before it writes the
    /// first object an older reader would not understand.
    pub(crate) fn upgrade_config(&mut self) -> Result<()> {
        self.raise_config(VAULT_FORMAT)
    }

    /// Rewrites the config with format `to` if it is older.
    pub(crate) fn raise_config(&mut self, to: u32) -> Result<()> {
        if self.config.backpocket_vault >= to {
            return Ok(());
        }
        let mut c = self.config.clone();
        c.backpocket_vault = to;
        let json = serde_json::to_vec_pretty(&c).map_err(|e| Error::Format(e.to_string()))?;
        self.store.put("config", json)?;
        self.config = c;
        Ok(())
    }

    /// Replaces the in-memory index (maintenance moved chunks).
    pub(crate) fn set_index(&self, map: HashMap<ChunkId, Loc>) {
        *self.index.lock() = ChunkIndex::from_map(map);
    }

    /// Stores the pocket's config in the vault (sealed), so that a new drive made from the
    /// vault knows its destinations.
    pub fn put_pocket_config(&self, text: &[u8]) -> Result<()> {
        let sealed = format::seal_object(
            &self.keys.objects,
            "pocket",
            &Vault::sealed_name(&self.chain, "config"),
            &serde_bytes::ByteBuf::from(text.to_vec()),
        )?;
        self.store.put(
            &format!("{}pocket", Vault::chain_prefix(&self.chain)),
            sealed,
        )
    }

    pub fn pocket_config(&self) -> Result<Option<Vec<u8>>> {
        let raw = match self
            .store
            .get(&format!("{}pocket", Vault::chain_prefix(&self.chain)))
        {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let b: serde_bytes::ByteBuf = format::open_object(
            &self.keys.objects,
            "pocket",
            &Vault::sealed_name(&self.chain, "config"),
            &raw,
        )?;
        Ok(Some(b.into_vec()))
    }
}

/// One stored log object: a segment or checkpoint alone (`kind`), or a bundle (None) of the
/// objects `first..=last`.
#[derive(Clone, Debug)]
pub struct LogEntry {
    pub key: String,
    pub first: u64,
    pub last: u64,
    pub size: u64,
    pub kind: Option<LogKind>,
}

/// The log as one listing found it.
#[derive(Clone, Debug, Default)]
pub struct LogMap {
    /// Every stored log object not in the trash.
    pub objects: Vec<LogEntry>,
    /// For each gen, the object to read it from (an index into `objects`).
    pub at: BTreeMap<u64, usize>,
    /// Gens stored as stand-alone checkpoints.
    pub checkpoints: BTreeSet<u64>,
    /// Whose chain this is (`""`: the first pocket's).
    pub chain: String,
}

impl LogMap {
    fn key_of(&self, gen: u64) -> String {
        self.at
            .get(&gen)
            .map(|i| self.objects[*i].key.clone())
            .unwrap_or_else(|| format!("log object {gen}"))
    }
}

/// A tree rebuilt from the log, its head, and how much log lies after its checkpoint.
#[derive(Debug)]
pub(crate) struct Replayed {
    pub tree: Tree,
    pub head: Head,
    pub since: LogSince,
}

/// The log after the newest checkpoint: what a restore replays on top of it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LogSince {
    pub segments: u64,
    pub records: u64,
    pub checkpoint_files: u64,
}

/// What the trash objects list.
#[derive(Debug, Default)]
pub(crate) struct Trashed {
    pub keys: HashSet<String>,
    pub objects: Vec<(String, Trash)>,
}

fn parse_gen(s: &str) -> Option<u64> {
    s.parse::<u64>().ok().filter(|g| gen_name(*g) == s)
}

pub(crate) fn random_hex(bytes: usize) -> Result<String> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|e| Error::Crypto(e.to_string()))?;
    Ok(hex::encode(b))
}

/// A new vault in `dir`/v with a cheap key, for unit tests (keep the runtime alive).
#[cfg(test)]
pub(crate) fn test_vault(dir: &std::path::Path) -> (tokio::runtime::Runtime, Vault) {
    let rt = crate::dest::runtime().expect("runtime");
    let store = Store::open(
        dir.join("v").to_str().expect("utf-8"),
        rt.handle().clone(),
        true,
    )
    .expect("store");
    let mut kdf = KdfParams::new().expect("kdf");
    kdf.m_kib = 64;
    kdf.t = 1;
    let key = kdf.derive(b"x").expect("key");
    let vault = Vault::create(store, "p", kdf, &key).expect("vault");
    (rt, vault)
}

fn master_aad(vault_id: &str) -> Vec<u8> {
    format::aad("master-key", vault_id)
}

/// An index object: its key and the packs it lists when it opened.
#[derive(Clone, Debug)]
pub struct IndexObject {
    pub key: String,
    pub packs: Option<Vec<PackIndex>>,
}

/// A segment or a checkpoint.
#[derive(Debug)]
pub enum LogObject {
    Segment(Segment),
    Checkpoint(Checkpoint),
}

impl LogObject {
    pub fn pos(&self) -> &Position {
        match self {
            LogObject::Segment(s) => &s.pos,
            LogObject::Checkpoint(c) => &c.pos,
        }
    }
    pub fn kind(&self) -> LogKind {
        match self {
            LogObject::Segment(_) => LogKind::Segment,
            LogObject::Checkpoint(_) => LogKind::Checkpoint,
        }
    }
}

/// Packs chunks for one worker: dedup against the index and the other workers, compress,
/// seal, and upload a pack with its index object once it is full. Uploads run beside the
/// packing (up to the store's `parallel()` packs in flight per worker), so a slow link and
/// the CPU work overlap; memory stays bounded by that many packs.
pub struct Packer<'v> {
    vault: &'v Vault,
    buf: Vec<u8>,
    blobs: Vec<BlobEntry>,
    uploads: std::collections::VecDeque<Upload>,
    /// Bytes written to the destination.
    pub uploaded_bytes: u64,
    pub new_chunks: u64,
    /// Counts the source bytes whose chunks are at the destination.
    landed: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Chunks in flight in this packer alone, for one that works beside the drain (the lane
    /// for large files): it relies on no other packer's uploads, and none on its own, since
    /// the two finish at unrelated times.
    apart: Option<HashSet<ChunkId>>,
}

/// A pack on its way: its index once both objects are at the destination.
struct Upload {
    ids: Vec<ChunkId>,
    done: std::thread::JoinHandle<Result<(PackIndex, u64)>>,
}

impl std::fmt::Debug for Packer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packer")
            .field("blobs", &self.blobs.len())
            .field("uploads", &self.uploads.len())
            .finish()
    }
}

impl Packer<'_> {
    /// Counts into `landed` the source bytes whose chunks reach the destination.
    pub fn counting(mut self, landed: Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.landed = Some(landed);
        self
    }

    /// A packer that shares no chunks in flight with the others (see `apart`).
    pub(crate) fn apart(mut self) -> Self {
        self.apart = Some(HashSet::new());
        self
    }

    /// Takes one chunk; returns how the file refers to it.
    pub fn add(&mut self, data: &[u8]) -> Result<ChunkRef> {
        self.vault.store.check_paused()?;
        let id = self.vault.chunk_id(data);
        let r = ChunkRef {
            id,
            len: data.len() as u32,
        };
        if self.vault.index.lock().contains(&id) {
            // Held already: nothing to send.
            if let Some(l) = &self.landed {
                l.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            return Ok(r);
        }
        let fresh = match &mut self.apart {
            Some(own) => own.insert(id),
            None => self.vault.in_flight.lock().insert(id),
        };
        if !fresh {
            return Ok(r);
        }
        let compressed =
            zstd::bulk::compress(data, 1).map_err(|e| Error::Format(format!("zstd: {e}")))?;
        let (plain, zstd) = if compressed.len() < data.len() - data.len() / 32 {
            (compressed.as_slice(), true)
        } else {
            (data, false)
        };
        let sealed = crypto::seal(
            &self.vault.keys.blob,
            &format::aad("blob", &hex::encode(id)),
            plain,
        )?;
        self.blobs.push(BlobEntry {
            id,
            offset: self.buf.len() as u64,
            len: sealed.len() as u32,
            raw_len: data.len() as u32,
            zstd,
        });
        self.buf.extend_from_slice(&sealed);
        self.new_chunks += 1;
        if self.buf.len() >= PACK_TARGET {
            self.flush()?;
        }
        Ok(r)
    }

    /// Sends the pack being filled: the pack, then its index object; only once both are at
    /// the destination do its chunks count as held.
    fn flush(&mut self) -> Result<()> {
        if self.blobs.is_empty() {
            return Ok(());
        }
        let buf = std::mem::replace(&mut self.buf, Vec::with_capacity(PACK_TARGET + (1 << 20)));
        let (pack, index) = self.vault.seal_pack(buf, std::mem::take(&mut self.blobs))?;
        let name = index.pack.clone();
        let size = index.size;
        let sealed = format::seal_object(&self.vault.keys.objects, "index", &name, &index)?;
        let ids = index.blobs.iter().map(|b| b.id).collect();
        let store = self.vault.store.clone();
        let raw: u64 = index.blobs.iter().map(|b| u64::from(b.raw_len)).sum();
        let landed = self.landed.clone();
        let done = std::thread::Builder::new()
            .name("upload".into())
            .spawn(move || {
                let bytes = size + sealed.len() as u64;
                store.put(&Vault::pack_key(&name), pack)?;
                store.put(&format!("index/{name}"), sealed)?;
                if let Some(l) = landed {
                    l.fetch_add(raw, std::sync::atomic::Ordering::Relaxed);
                }
                Ok((index, bytes))
            })
            .map_err(|e| Error::io("cannot start an upload thread", e))?;
        self.uploads.push_back(Upload { ids, done });
        while self.uploads.len() >= self.vault.store.parallel() {
            self.complete_oldest()?;
        }
        Ok(())
    }

    /// Waits for the oldest upload and makes its chunks count as held.
    fn complete_oldest(&mut self) -> Result<()> {
        let Some(up) = self.uploads.pop_front() else {
            return Ok(());
        };
        let res = up
            .done
            .join()
            .unwrap_or_else(|_| Err(Error::Format(
                "an upload failed unexpectedly (a bug; please report it); its pack will be sent again".into(),
            )));
        let (index, bytes) = match res {
            Ok(r) => r,
            Err(e) => {
                self.forget_flight(up.ids.iter());
                return Err(e);
            }
        };
        self.uploaded_bytes += bytes;
        let mut map = self.vault.index.lock();
        self.forget_flight(index.blobs.iter().map(|b| &b.id));
        map.add_pack(&index.pack, index.blobs);
        Ok(())
    }

    /// Sends what is left and waits until every pack of this worker is at the destination.
    pub fn finish(&mut self) -> Result<()> {
        self.flush()?;
        let mut first_err = None;
        while !self.uploads.is_empty() {
            if let Err(e) = self.complete_oldest() {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Forgets chunks this packer took but never uploaded (the drain failed), so that the
    /// next drain packs them again. Uploads already under way are waited for: what arrived
    /// counts as held and is not sent again.
    pub fn abandon(&mut self) {
        while !self.uploads.is_empty() {
            let _ = self.complete_oldest();
        }
        let blobs = std::mem::take(&mut self.blobs);
        self.forget_flight(blobs.iter().map(|b| &b.id));
        self.buf.clear();
    }

    fn forget_flight<'a>(&mut self, ids: impl Iterator<Item = &'a ChunkId>) {
        match &mut self.apart {
            Some(own) => ids.for_each(|id| {
                own.remove(id);
            }),
            None => {
                let mut fl = self.vault.in_flight.lock();
                ids.for_each(|id| {
                    fl.remove(id);
                });
            }
        }
    }
}

/// A point in time as people read it (RFC 3339, UTC).
pub fn format_time(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::format::{Content, VMeta, VRecord, KIND_FILE};

    /// A plain file's metadata of `size` bytes, for the tests' trees.
    pub(crate) fn meta(size: u64) -> VMeta {
        VMeta {
            kind: KIND_FILE,
            perm: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime_ns: 0,
            ctime_ns: 0,
            rdev: 0,
        }
    }

    /// Content told apart by size alone (the look-ahead never reads chunks).
    fn content(size: u64) -> VChange {
        VChange::Content {
            file: 2,
            meta: meta(size),
            content: Content {
                size,
                extents: Vec::new(),
            },
        }
    }

    fn size_at(vault: &Vault, t: i64) -> (Option<u64>, bool) {
        let (tree, _) = vault.load_tree(Some(t)).unwrap().unwrap();
        let f = tree.lookup(b"f").and_then(|id| tree.files.get(&id));
        (
            f.and_then(|f| f.content.as_ref()).map(|c| c.size),
            tree.pending.contains_key(&2),
        )
    }

    /// A segment: its seq (and time), its records by seq, what of file 2 it waits for.
    type Step = (u64, Vec<(u64, VChange)>, Option<u64>);

    /// Writes a checkpoint with file 2 (size 1) at seq 1, then the segments, each at time =
    /// seq.
    fn history(vault: &Vault, segments: Vec<Step>) {
        let pos = |h: &Head, seq: u64| Position {
            gen: h.gen + 1,
            prev: h.hash,
            journal_id: 1,
            seq,
            time_ns: seq as i64,
            written_ns: 0,
        };
        let mut tree = Tree::new(1);
        tree.apply(&VChange::Create {
            parent: 1,
            name: b"f".to_vec(),
            file: 2,
            meta: meta(1),
        });
        tree.apply(&content(1));
        let cp = tree.to_checkpoint(pos(&Head::default(), 1));
        let mut head = vault
            .append_log(&Head::default(), &LogObject::Checkpoint(cp))
            .unwrap();
        for (seq, records, pending) in segments {
            let seg = Segment {
                pos: pos(&head, seq),
                first_seq: seq,
                records: records
                    .into_iter()
                    .map(|(s, change)| VRecord {
                        seq: s,
                        time_ns: s as i64,
                        change,
                    })
                    .collect(),
                pending: pending
                    .map(|s| Pending {
                        file: 2,
                        seq: s,
                        time_ns: s as i64,
                    })
                    .into_iter()
                    .collect(),
            };
            head = vault.append_log(&head, &LogObject::Segment(seg)).unwrap();
        }
    }

    #[test]
    fn a_point_waiting_for_a_file_takes_the_first_contents_read_after_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let (_rt, vault) = test_vault(dir.path());
        history(
            &vault,
            vec![
                // seq 2: file 2 changed (size 2), its contents in flight.
                (2, vec![], Some(2)),
                // seq 3: changed again before the first read landed (size 3).
                (3, vec![], Some(3)),
                // The first read lands: it was asked at seq 2, so it completes 2, not 3.
                (4, vec![(2, content(2))], Some(3)),
                (5, vec![(3, content(3))], None),
            ],
        );
        // Point 2: completed by the record of seq 2, found ahead.
        assert_eq!(size_at(&vault, 2), (Some(2), false));
        // Point 3: the later read, never the stale one that landed first.
        assert_eq!(size_at(&vault, 3), (Some(3), false));
        // Point 4 holds the stale read itself until the later one: completed too.
        assert_eq!(size_at(&vault, 4), (Some(3), false));
        assert_eq!(size_at(&vault, 5), (Some(3), false));
    }

    #[test]
    fn a_file_made_anew_under_the_same_number_never_completes_an_old_point() {
        let dir = tempfile::tempdir().unwrap();
        let (_rt, vault) = test_vault(dir.path());
        let recreate = VChange::Create {
            parent: 1,
            name: b"f".to_vec(),
            file: 2,
            meta: meta(0),
        };
        let unlink = VChange::Unlink {
            parent: 1,
            name: b"f".to_vec(),
            file: 2,
        };
        history(
            &vault,
            vec![
                (2, vec![], Some(2)),
                // Removed before its contents were read; the number is used again.
                (3, vec![(3, unlink)], None),
                (4, vec![(4, recreate), (4, content(9))], None),
            ],
        );
        // Point 2 keeps what the destination held before, and says so.
        assert_eq!(size_at(&vault, 2), (Some(1), true));
        assert_eq!(size_at(&vault, 4), (Some(9), false));
    }
}
/// The memory the chunk index takes per chunk, against the layout it replaced (a map of ids to
/// `Loc`): `cargo test -p replicator --lib index_memory -- --ignored --nocapture` (a
/// measurement for BENCHMARKS.md, not a test).
#[cfg(test)]
mod index_memory {
    use super::*;

    fn rss() -> u64 {
        let s = std::fs::read_to_string("/proc/self/statm").unwrap();
        s.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
    }
    #[test]
    #[ignore = "a measurement: run by hand with --ignored --nocapture"]
    fn measure() {
        let n = 1_000_000u64;
        let blob = |i: u64| {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&blake3::hash(&i.to_le_bytes()).as_bytes()[..8]);
            BlobEntry {
                id,
                offset: i * 100,
                len: 16000,
                raw_len: 16384,
                zstd: true,
            }
        };
        let a = rss();
        let mut ix = ChunkIndex::default();
        for p in 0..n / 1000 {
            ix.add_pack(&format!("{p:064x}"), (0..1000).map(|j| blob(p * 1000 + j)));
        }
        let b = rss();
        let mut old: HashMap<ChunkId, Loc> = HashMap::new();
        for p in 0..n / 1000 {
            let pack: Arc<str> = Arc::from(format!("{p:064x}").as_str());
            for j in 0..1000 {
                let bl = blob(p * 1000 + j);
                old.insert(
                    bl.id,
                    Loc {
                        pack: pack.clone(),
                        blob: bl,
                    },
                );
            }
        }
        let c = rss();
        eprintln!(
            "index memory for {n} chunks: {} B a chunk (the map of Loc it replaced: {} B)",
            (b - a) / n,
            (c - b) / n
        );
        assert_eq!((ix.slots.len(), old.len()), (n as usize, n as usize));
    }
}
