//! The objects a vault holds, as stored. `docs/vault-format.md` describes the same thing for
//! someone writing another reader; a change here is a change of the format version.
//!
//! Structured objects are CBOR (RFC 8949), compressed with zstd, then sealed (see
//! [`crate::crypto`]) with associated data `backpocket-vault-1 <type> <name>`.

use serde::{Deserialize, Serialize};

use crate::crypto::{self, Key};
use crate::error::{Error, Result};

/// The vault format this code writes and reads. Format 2 added log bundles, index sets,
/// trash and leases (maintenance); format 3 adds `Patch` records (a new version of a file as
/// the chunks that changed) and smaller chunks for small files. Older vaults are read as they
/// are and move to the current format at their first maintenance.
pub const VAULT_FORMAT: u32 = 3;

/// The format of a vault that devices joined: format 3, plus each joined device's own log
/// under `chains/<id>/`, `devices/<id>` and `presence/<id>`. A vault moves to it when the
/// first device joins, so that an older backpocket (which would see only the first pocket's
/// log, and whose maintenance would drop the other devices' data) refuses it.
pub const DEVICES_FORMAT: u32 = 4;

/// The tag in every object's associated data. It stays that of format 1: objects of format 1
/// are kept verbatim by format 2 (bundles hold them byte for byte), so their binding must
/// not change with the format number.
const AAD_TAG: &str = "backpocket-vault-1";

/// Largest object we will decode (a checkpoint of a very large pocket fits well within it);
/// a damaged length never turns into a huge allocation.
pub const MAX_OBJECT: usize = 1 << 30;

/// A chunk's identity: keyed BLAKE3 of its plaintext.
pub type ChunkId = [u8; 32];

/// The vault's `config`: plaintext JSON, everything needed to open the vault with only a
/// passphrase.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// The vault format version.
    pub backpocket_vault: u32,
    /// This vault's random identity.
    pub id: String,
    /// The pocket that writes this vault (one writer per vault).
    pub pocket_id: String,
    /// How the pocket key comes from the passphrase.
    pub kdf: crypto::KdfParams,
    /// The vault's master key, sealed with the pocket key.
    #[serde(with = "crypto::hex_bytes")]
    pub wrapped_key: Vec<u8>,
    pub created_ns: i64,
    pub chunker: ChunkerParams,
}

/// FastCDC sizes, fixed for the life of a vault (changing them would end deduplication).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
    /// Files of at least this many bytes are cut with these other sizes (format 2; absent in
    /// vaults made before, which cut every file alike).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub large: Option<LargeFiles>,
    /// Files under this many bytes are cut with these other sizes (vaults made with format 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub small: Option<SmallFiles>,
}

/// The chunk sizes of small files.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SmallFiles {
    pub below: u64,
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

/// The chunk sizes of the largest files.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LargeFiles {
    pub from: u64,
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl ChunkerParams {
    /// The (min, avg, max) sizes for a file of `size` bytes.
    pub fn for_size(&self, size: u64) -> (u32, u32, u32) {
        match (self.large, self.small) {
            (Some(l), _) if size >= l.from => (l.min, l.avg, l.max),
            (_, Some(s)) if size < s.below => (s.min, s.avg, s.max),
            _ => (self.min, self.avg, self.max),
        }
    }

    /// What vaults made before format 2 use: 1 MiB on average for every file.
    pub fn format_1() -> ChunkerParams {
        ChunkerParams {
            min: 256 * 1024,
            avg: 1024 * 1024,
            max: 4 * 1024 * 1024,
            large: None,
            small: None,
        }
    }
}

impl Default for ChunkerParams {
    fn default() -> Self {
        // 32 KiB on average: an edit in place rewrites the chunks it touches and about two
        // more (FastCDC's cut points fall back in step a chunk or two after it), so a 256 KiB
        // overwrite stores about 1.3 times what was written (64 KiB chunks: 1.5; 1 MiB
        // chunks, as restic's, 4 to 8 times). Files under 16 MiB (documents, sources: small
        // edits, few bytes in all) are cut in 16 KiB chunks, so that an append or overwrite of
        // 64 KiB stores little more than itself. Files of 1 GiB and more (disk images, where
        // the index in memory would weigh) keep 1 MiB chunks. Copies of a file share its
        // chunks either way.
        ChunkerParams {
            min: 8 * 1024,
            avg: 32 * 1024,
            max: 128 * 1024,
            large: Some(LargeFiles {
                from: 1 << 30,
                min: 256 * 1024,
                avg: 1024 * 1024,
                max: 4 * 1024 * 1024,
            }),
            small: Some(SmallFiles {
                below: 16 << 20,
                min: 4 * 1024,
                avg: 16 * 1024,
                max: 64 * 1024,
            }),
        }
    }
}

/// One blob in a pack, as listed in the pack's header and in its index object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobEntry {
    #[serde(with = "serde_bytes")]
    pub id: ChunkId,
    /// Where the sealed blob starts in the pack.
    pub offset: u64,
    /// Sealed length.
    pub len: u32,
    /// Plaintext length.
    pub raw_len: u32,
    /// Whether the plaintext was zstd-compressed before sealing.
    pub zstd: bool,
}

/// `index/<pack name>`: which blobs a pack holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PackIndex {
    pub pack: String,
    pub size: u64,
    pub blobs: Vec<BlobEntry>,
}

/// `index/set-<32 hex>` (format 2): the index of many packs in one object, written by
/// maintenance in place of the one-pack objects drains write.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IndexSet {
    pub packs: Vec<PackIndex>,
}

/// One log object kept verbatim in a bundle: its stored (sealed) bytes, so that the hash chain
/// over stored bytes holds whether a reader finds it alone or in a bundle.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bundled {
    pub gen: u64,
    pub checkpoint: bool,
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
}

/// `log/<first>-<last>` (format 2): the consecutive log objects `first..=last` in one object.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bundle {
    pub first: u64,
    pub last: u64,
    pub objects: Vec<Bundled>,
}

/// `trash/<time>-<random>` (format 2): objects maintenance replaced. Readers ignore what a
/// trash object lists at once; maintenance deletes it once `written_ns` is older than the
/// grace period, so a reader that started before still finds every object it listed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Trash {
    pub written_ns: i64,
    pub keys: Vec<String>,
}

/// `locks/<random>` (format 2): who maintains or writes the vault, until when.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lease {
    /// `maintain` (exclusive) or `write` (a pocket draining into the vault).
    pub kind: String,
    pub host: String,
    pub pid: u32,
    pub taken_ns: i64,
    pub expires_ns: i64,
}

/// Metadata as stored (the journal's `Meta`, in a form this format owns).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VMeta {
    /// 1 file, 2 folder, 3 symlink, 4 fifo, 5 socket, 6 char device, 7 block device.
    pub kind: u8,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub rdev: u64,
}

impl VMeta {
    /// On a drive that cannot keep modes, owners or exact times: this metadata, read from the
    /// drive, with what the journal keeps of them (`kept`). A symbolic link, fifo, socket or
    /// device is a file on such a drive: it stays what it is.
    pub fn kept(self, keeping: Option<journal::Keeping>, kept: &VMeta) -> VMeta {
        let Some(k) = keeping else { return self };
        // A link, fifo, socket or device the drive holds as a file.
        let stand_in = self.kind == KIND_FILE && kept.kind > KIND_DIR;
        VMeta {
            kind: if stand_in { kept.kind } else { self.kind },
            rdev: if stand_in { kept.rdev } else { self.rdev },
            perm: kept.perm,
            uid: kept.uid,
            gid: kept.gid,
            mtime_ns: k.mtime(kept.mtime_ns, self.mtime_ns),
            ..self
        }
    }
}

pub const KIND_FILE: u8 = 1;
pub const KIND_DIR: u8 = 2;
pub const KIND_SYMLINK: u8 = 3;

impl From<journal::Meta> for VMeta {
    fn from(m: journal::Meta) -> VMeta {
        VMeta {
            kind: m.kind as u8,
            perm: m.perm,
            uid: m.uid,
            gid: m.gid,
            size: m.size,
            mtime_ns: m.mtime_ns,
            ctime_ns: m.ctime_ns,
            rdev: m.rdev,
        }
    }
}

/// A chunk of a file's data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkRef {
    #[serde(with = "serde_bytes")]
    pub id: ChunkId,
    pub len: u32,
}

/// A run of data at `offset`; what lies between extents is a hole.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub chunks: Vec<ChunkRef>,
}

/// A regular file's contents: its size and its data extents (the hole map is what they leave).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Content {
    pub size: u64,
    pub extents: Vec<Extent>,
}

/// A run of data (format 3) made of runs of the previous version's chunks and new ones.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PatchExtent {
    pub offset: u64,
    pub runs: Vec<Run>,
}

/// Part of a patched extent's chunk list.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Run {
    /// `count` chunks of the previous version's list (all its extents' chunks in order) from
    /// index `from`.
    Keep {
        from: u32,
        count: u32,
    },
    New(Vec<ChunkRef>),
}

/// A patch is written only for files of at least this many chunks, and only when at most
/// three quarters of their chunks are new: below, the whole list costs about the same.
const PATCH_MIN_CHUNKS: usize = 8;

impl Content {
    /// `self` as a patch of `base`, when that is much smaller than the whole list.
    pub fn patch_of(&self, base: &Content) -> Option<Vec<PatchExtent>> {
        let total: usize = self.extents.iter().map(|e| e.chunks.len()).sum();
        if total < PATCH_MIN_CHUNKS {
            return None;
        }
        let old: Vec<&ChunkRef> = base.extents.iter().flat_map(|e| &e.chunks).collect();
        let mut at: std::collections::HashMap<&ChunkId, u32> =
            std::collections::HashMap::with_capacity(old.len());
        for (i, c) in old.iter().enumerate().rev() {
            at.insert(&c.id, i as u32);
        }
        let mut new_chunks = 0usize;
        let mut out = Vec::with_capacity(self.extents.len());
        for e in &self.extents {
            let mut runs: Vec<Run> = Vec::new();
            let mut next_old: Option<u32> = None;
            for c in &e.chunks {
                // Continue the run being kept when the next old chunk is this one.
                if let (Some(n), Some(Run::Keep { count, .. })) = (next_old, runs.last_mut()) {
                    if old
                        .get(n as usize)
                        .is_some_and(|o| o.id == c.id && o.len == c.len)
                    {
                        *count += 1;
                        next_old = Some(n + 1);
                        continue;
                    }
                }
                match at.get(&c.id).filter(|&&i| old[i as usize].len == c.len) {
                    Some(&i) => {
                        runs.push(Run::Keep { from: i, count: 1 });
                        next_old = Some(i + 1);
                    }
                    None => {
                        new_chunks += 1;
                        next_old = None;
                        match runs.last_mut() {
                            Some(Run::New(v)) => v.push(c.clone()),
                            _ => runs.push(Run::New(vec![c.clone()])),
                        }
                    }
                }
            }
            out.push(PatchExtent {
                offset: e.offset,
                runs,
            });
        }
        (new_chunks * 4 <= total * 3).then_some(out)
    }

    /// The contents a patch describes over `base`; None when it refers to chunks `base` does
    /// not have (a log that does not fit together).
    pub fn patched(base: &Content, size: u64, extents: &[PatchExtent]) -> Option<Content> {
        let old: Vec<&ChunkRef> = base.extents.iter().flat_map(|e| &e.chunks).collect();
        let mut out = Vec::with_capacity(extents.len());
        for e in extents {
            let mut chunks = Vec::new();
            for r in &e.runs {
                match r {
                    Run::Keep { from, count } => {
                        let (from, count) = (*from as usize, *count as usize);
                        let end = from.checked_add(count)?;
                        chunks.extend(old.get(from..end)?.iter().map(|c| (*c).clone()));
                    }
                    Run::New(v) => chunks.extend(v.iter().cloned()),
                }
            }
            out.push(Extent {
                offset: e.offset,
                chunks,
            });
        }
        Some(Content { size, extents: out })
    }

    pub fn data_bytes(&self) -> u64 {
        self.extents
            .iter()
            .flat_map(|e| &e.chunks)
            .map(|c| c.len as u64)
            .sum()
    }
}

/// One change, as replayed by a restore. Names are bytes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum VChange {
    Create {
        parent: u64,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        file: u64,
        meta: VMeta,
    },
    Mkdir {
        parent: u64,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        file: u64,
        meta: VMeta,
    },
    Symlink {
        parent: u64,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        file: u64,
        meta: VMeta,
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
    },
    Link {
        parent: u64,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        file: u64,
    },
    Rename {
        parent: u64,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        new_parent: u64,
        #[serde(with = "serde_bytes")]
        new_name: Vec<u8>,
        file: u64,
        exchange: bool,
    },
    Unlink {
        parent: u64,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        file: u64,
    },
    Rmdir {
        parent: u64,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        file: u64,
    },
    SetAttr {
        file: u64,
        meta: VMeta,
    },
    SetXattr {
        file: u64,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    RemoveXattr {
        file: u64,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    /// The file's contents as read from the drive after its last change in the segment.
    Content {
        file: u64,
        meta: VMeta,
        content: Content,
    },
    /// The same as the chunks that changed against the file's contents before (format 3):
    /// a large file edited in place costs the log what changed, not its whole chunk list.
    Patch {
        file: u64,
        meta: VMeta,
        size: u64,
        extents: Vec<PatchExtent>,
    },
}

impl VChange {
    pub fn from_journal(c: &journal::Change) -> VChange {
        use journal::Change as C;
        match c.clone() {
            C::Create {
                parent,
                name,
                file,
                meta,
            } => VChange::Create {
                parent,
                name,
                file,
                meta: meta.into(),
            },
            C::Mkdir {
                parent,
                name,
                file,
                meta,
            } => VChange::Mkdir {
                parent,
                name,
                file,
                meta: meta.into(),
            },
            C::Symlink {
                parent,
                name,
                file,
                meta,
                target,
            } => VChange::Symlink {
                parent,
                name,
                file,
                meta: meta.into(),
                target,
            },
            C::Link { parent, name, file } => VChange::Link { parent, name, file },
            C::Rename {
                parent,
                name,
                new_parent,
                new_name,
                file,
                exchange,
            } => VChange::Rename {
                parent,
                name,
                new_parent,
                new_name,
                file,
                exchange,
            },
            C::Unlink { parent, name, file } => VChange::Unlink { parent, name, file },
            C::Rmdir { parent, name, file } => VChange::Rmdir { parent, name, file },
            C::SetAttr { file, meta } => VChange::SetAttr {
                file,
                meta: meta.into(),
            },
            C::SetXattr { file, name, value } => VChange::SetXattr { file, name, value },
            C::RemoveXattr { file, name } => VChange::RemoveXattr { file, name },
            C::Content { file, meta } => VChange::Content {
                file,
                meta: meta.into(),
                content: Content::default(),
            },
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VRecord {
    pub seq: u64,
    pub time_ns: i64,
    pub change: VChange,
}

/// A file in a tree.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileState {
    pub id: u64,
    pub meta: VMeta,
    #[serde(with = "serde_bytes")]
    pub target: Option<Vec<u8>>,
    pub xattrs: Vec<Xattr>,
    pub content: Option<Content>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Xattr {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NameEntry {
    pub parent: u64,
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub file: u64,
}

/// Where a log object stands in the pocket's history.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Position {
    /// The vault's own sequence of log objects (segments and checkpoints), from 1.
    pub gen: u64,
    /// BLAKE3 of the previous log object's stored bytes (zeros for the first): the chain
    /// that makes a removed or reordered segment visible.
    #[serde(with = "serde_bytes")]
    pub prev: [u8; 32],
    /// Which journal the sequence numbers belong to (a new drive made by `init --from`
    /// starts a new journal and continues the vault).
    pub journal_id: i64,
    /// The last journal record reflected.
    pub seq: u64,
    /// When that record was made (the point a restore `--at` compares with).
    pub time_ns: i64,
    /// When the object was written.
    pub written_ns: i64,
}

/// `log/<gen>`: the records of one drain.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Segment {
    pub pos: Position,
    pub first_seq: u64,
    pub records: Vec<VRecord>,
    /// Files whose contents at this point were still on their way (a large file read beside
    /// the drain): a later segment brings them as a content record of at least `seq`. Older
    /// readers ignore the field and restore such a file as it was before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<Pending>,
}

/// A file whose contents for the record `seq` (made at `time_ns`) a point still waits for.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pending {
    pub file: u64,
    pub seq: u64,
    pub time_ns: i64,
}

/// `checkpoints/<gen>`: the whole tree at a point.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    pub pos: Position,
    pub root: u64,
    pub files: Vec<FileState>,
    pub names: Vec<NameEntry>,
    /// As [`Segment::pending`]: the files in flight at this point.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<Pending>,
}

/// The name that binds a sealed object to its place.
pub fn aad(kind: &str, name: &str) -> Vec<u8> {
    format!("{AAD_TAG} {kind} {name}").into_bytes()
}

/// CBOR, zstd, seal.
pub fn seal_object<T: Serialize>(key: &Key, kind: &str, name: &str, value: &T) -> Result<Vec<u8>> {
    let mut cbor = Vec::new();
    ciborium::into_writer(value, &mut cbor)
        .map_err(|e| Error::Format(format!("encoding {kind}: {e}")))?;
    let z = zstd::bulk::compress(&cbor, 3)
        .map_err(|e| Error::Format(format!("compressing {kind}: {e}")))?;
    crypto::seal(key, &aad(kind, name), &z)
}

/// Opens, decompresses and decodes; any damage is an error naming the object.
pub fn open_object<T: for<'de> Deserialize<'de>>(
    key: &Key,
    kind: &str,
    name: &str,
    sealed: &[u8],
) -> Result<T> {
    let damaged = |detail: String| Error::Damaged {
        object: name.to_owned(),
        detail,
    };
    let z = crypto::open(key, &aad(kind, name), sealed)
        .map_err(|_| damaged("authentication failed (damaged, swapped or tampered with)".into()))?;
    let cbor = zstd::bulk::decompress(&z, MAX_OBJECT)
        .map_err(|e| damaged(format!("cannot decompress: {e}")))?;
    ciborium::from_reader(&cbor[..]).map_err(|e| damaged(format!("cannot decode: {e}")))
}

/// The name of a log object.
pub fn gen_name(gen: u64) -> String {
    format!("{gen:020}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u64) -> ChunkRef {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&n.to_le_bytes());
        ChunkRef {
            id,
            len: 1000 + (n % 7) as u32,
        }
    }

    fn content(extents: Vec<(u64, Vec<u64>)>) -> Content {
        Content {
            size: 1 << 40,
            extents: extents
                .into_iter()
                .map(|(offset, ids)| Extent {
                    offset,
                    chunks: ids.into_iter().map(chunk).collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_patch_gives_back_the_new_version_exactly() {
        let mut x = 7u64;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut next = 1000u64;
        for round in 0..300 {
            // A base of one to three extents (holes between), then edits in place: chunks
            // replaced, inserted, removed, moved, an extent added or dropped.
            let mut base = Vec::new();
            let mut id = round * 10_000;
            for e in 0..=rnd(3) {
                let n = 1 + rnd(120);
                base.push((e << 30, (id..id + n).collect::<Vec<u64>>()));
                id += n;
            }
            let mut new = base.clone();
            for _ in 0..=rnd(6) {
                let e = rnd(new.len() as u64) as usize;
                let list = &mut new[e].1;
                let at = rnd(list.len() as u64 + 1) as usize;
                match rnd(5) {
                    0 if at < list.len() => list[at] = next,
                    1 => list.insert(at, next),
                    2 if at < list.len() => {
                        list.remove(at);
                    }
                    3 => {
                        let c = list[rnd(list.len() as u64) as usize];
                        list.insert(at, c);
                    }
                    _ => new.push(((new.len() as u64 + 5) << 30, vec![next, next + 1])),
                }
                next += 2;
            }
            new.retain(|(_, l)| !l.is_empty());
            let (base, new) = (content(base), content(new));
            if let Some(p) = new.patch_of(&base) {
                assert_eq!(Content::patched(&base, new.size, &p), Some(new.clone()));
                let kept: usize = p
                    .iter()
                    .flat_map(|e| &e.runs)
                    .map(|r| match r {
                        Run::Keep { .. } => 0,
                        Run::New(v) => v.len(),
                    })
                    .sum();
                assert!(kept <= 20, "a few edits, a few new chunks: {kept}");
            }
        }
    }

    #[test]
    fn a_patch_is_written_only_where_it_is_much_smaller() {
        let base = content(vec![(0, (0..100).collect())]);
        let few = content(vec![(
            0,
            (0..100).map(|i| if i == 50 { 999 } else { i }).collect(),
        )]);
        let p = few.patch_of(&base).unwrap();
        // Two kept runs and the one new chunk.
        assert_eq!(p[0].runs.len(), 3, "{p:?}");
        let most = content(vec![(0, (0..100).map(|i| i + 500).collect())]);
        assert!(most.patch_of(&base).is_none());
        let small = content(vec![(0, (0..7).collect())]);
        assert!(small
            .patch_of(&content(vec![(0, (0..6).collect())]))
            .is_none());
        // A patch that refers past its base does not fit.
        let bad = vec![PatchExtent {
            offset: 0,
            runs: vec![Run::Keep {
                from: 90,
                count: 20,
            }],
        }];
        assert_eq!(Content::patched(&base, 1, &bad), None);
    }
}
