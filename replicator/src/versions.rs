//! `log FILE` from a per-path version index, not by replaying the log on every question.
//!
//! The index is a cache on the drive (`.backpocket/cache/<vault id>/versions.db`, SQLite; a
//! `versions-<device>.db` beside it for each other device's chain of a shared vault): for
//! each path, a row at every point where what the path holds changed (another file, size,
//! modification time or contents), or where it stopped holding anything. It remembers the
//! point it was built up to (gen and hash) and the tree there; each question first checks that
//! point against the vault (one read) and replays only what came after. A vault whose log was
//! rewritten (`forget`) no longer has that point: the index is built again. Without a drive
//! (a vault given by URL) the same index is built in memory.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::format::{Checkpoint, Content, Position, VChange, KIND_DIR};
use crate::restore::Version;
use crate::tree::Tree;
use crate::vault::{LogObject, Vault};

fn db_err(e: rusqlite::Error) -> Error {
    Error::Format(format!("the version index: {e}"))
}

/// The versions of `path`, oldest first, from the index in `cache_dir` (built or brought up
/// to date first), or from an index built in memory when there is no cache.
///
/// In a vault several devices write, each version says which device made it: a version this
/// handle's chain holds is the device's whose chain held the same thing (kind, size and
/// modification time to the nanosecond) earliest, since a version one device carries from
/// another keeps its time. Contents are not compared: two devices may chunk the same bytes
/// differently (a patch of a large file against a whole new file). Versions only other
/// devices hold (replaced before this device took them, or kept here under a conflict name)
/// are listed too, not `here`. "Earliest" is by each device's own clock: with clocks hours
/// apart the device that carried a version can be named instead of the one that made it.
pub fn versions_indexed(
    vault: &Vault,
    path: &[u8],
    cache_dir: Option<&Path>,
) -> Result<Vec<Version>> {
    let own = vault.chain().to_owned();
    // What the trash objects list is read once, for every chain.
    let trashed = vault.trashed()?.keys;
    let mine = chain_versions(vault, &own, &trashed, path, cache_dir)?;
    if !vault.has_devices() {
        return Ok(mine.into_iter().map(|(v, _)| v).collect());
    }
    let devices = vault.devices()?;
    let chain_of = |d: &crate::devices::DeviceInfo| {
        if d.first {
            String::new()
        } else {
            d.record.id.clone()
        }
    };
    let name_of = |chain: &str| {
        devices
            .iter()
            .find(|d| chain_of(d) == chain)
            .map(|d| d.record.name.clone())
            .unwrap_or_else(|| vault.device().to_owned())
    };
    // The earliest row of each version among the other devices' chains.
    let mut elsewhere: HashMap<Key, (Version, String)> = HashMap::new();
    for d in &devices {
        let chain = chain_of(d);
        if chain == own {
            continue;
        }
        for (v, key) in chain_versions(vault, &chain, &trashed, path, cache_dir)? {
            match elsewhere.get(&key) {
                Some((e, _)) if e.time_ns <= v.time_ns => {}
                _ => {
                    elsewhere.insert(key, (v, chain.clone()));
                }
            }
        }
    }
    let mut held = HashSet::new();
    let mine: Vec<Version> = mine
        .into_iter()
        .map(|(mut v, key)| {
            v.device = Some(match elsewhere.get(&key) {
                Some((e, chain)) if e.time_ns < v.time_ns => name_of(chain),
                _ => name_of(&own),
            });
            held.insert(key);
            v
        })
        .collect();
    let mut others: Vec<Version> = elsewhere
        .into_iter()
        .filter(|(key, _)| !held.contains(key))
        .map(|(_, (mut v, chain))| {
            v.device = Some(name_of(&chain));
            v.here = false;
            v
        })
        .collect();
    others.sort_by_key(|v| v.time_ns);
    // This chain's own order stays; the others' versions go in by time.
    let mut out = Vec::with_capacity(mine.len() + others.len());
    let mut others = others.into_iter().peekable();
    for v in mine {
        while let Some(o) = others.next_if(|o| o.time_ns < v.time_ns) {
            out.push(o);
        }
        out.push(v);
    }
    out.extend(others);
    Ok(out)
}

/// What makes two chains' versions the same version: kind, size and modification time (file
/// ids differ between devices).
type Key = (u8, u64, i64);

/// One chain's versions of `path`, from its own index.
fn chain_versions(
    vault: &Vault,
    chain: &str,
    trashed: &HashSet<String>,
    path: &[u8],
    cache_dir: Option<&Path>,
) -> Result<Vec<(Version, Key)>> {
    let conn = match cache_dir {
        Some(d) => {
            let dir = d.join(&vault.config.id);
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
            let p = if chain.is_empty() {
                dir.join("versions.db")
            } else {
                dir.join(format!("versions-{chain}.db"))
            };
            match open_db(&p) {
                Ok(c) => c,
                Err(_) => {
                    // A damaged cache is only a cache.
                    let _ = std::fs::remove_file(&p);
                    open_db(&p)?
                }
            }
        }
        None => {
            let c = Connection::open_in_memory().map_err(db_err)?;
            schema(&c)?;
            c
        }
    };
    let mut index = Index { conn };
    index.update(vault, chain, trashed)?;
    index.query(path)
}

fn open_db(p: &Path) -> Result<Connection> {
    let c = Connection::open(p).map_err(db_err)?;
    c.pragma_update(None, "journal_mode", "WAL")
        .map_err(db_err)?;
    c.pragma_update(None, "synchronous", "NORMAL")
        .map_err(db_err)?;
    schema(&c)?;
    Ok(c)
}

fn schema(c: &Connection) -> Result<()> {
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS versions (path BLOB NOT NULL, gen INTEGER NOT NULL,
             time_ns INTEGER NOT NULL, seq INTEGER NOT NULL, size INTEGER NOT NULL,
             mtime_ns INTEGER NOT NULL, kind INTEGER NOT NULL, gone INTEGER NOT NULL);
         CREATE INDEX IF NOT EXISTS versions_path ON versions (path, gen);
         CREATE TABLE IF NOT EXISTS latest (path BLOB PRIMARY KEY, state BLOB NOT NULL);",
    )
    .map_err(db_err)
}

struct Index {
    conn: Connection,
}

/// What a path held at the last row written for it: (file, size, mtime, hash of contents).
type State = (u64, u64, i64, [u8; 32]);

fn state_bytes(s: &State) -> Vec<u8> {
    let mut v = Vec::with_capacity(56);
    v.extend_from_slice(&s.0.to_le_bytes());
    v.extend_from_slice(&s.1.to_le_bytes());
    v.extend_from_slice(&s.2.to_le_bytes());
    v.extend_from_slice(&s.3);
    v
}

fn content_hash(c: &Option<Content>) -> [u8; 32] {
    let mut cbor = Vec::new();
    let _ = ciborium::into_writer(c, &mut cbor);
    *blake3::hash(&cbor).as_bytes()
}

/// The tree being replayed, with each file's names (so that the paths a record touches are
/// found without listing the tree).
struct Walk {
    tree: Tree,
    names_of: HashMap<u64, Vec<(u64, Vec<u8>)>>,
}

impl Walk {
    fn new(tree: Tree) -> Walk {
        let mut names_of: HashMap<u64, Vec<(u64, Vec<u8>)>> = HashMap::new();
        for ((parent, name), file) in &tree.names {
            names_of
                .entry(*file)
                .or_default()
                .push((*parent, name.clone()));
        }
        Walk { tree, names_of }
    }

    /// Every path of `file` (through its names and its folders' names).
    fn paths_of(&self, file: u64) -> Vec<Vec<u8>> {
        if file == self.tree.root {
            return vec![Vec::new()];
        }
        let mut out = Vec::new();
        for (parent, name) in self.names_of.get(&file).into_iter().flatten() {
            let mut dir = *parent;
            let mut parts: Vec<&[u8]> = vec![name];
            let mut ok = true;
            let mut hops = 0;
            while dir != self.tree.root {
                hops += 1;
                match self.names_of.get(&dir).and_then(|n| n.first()) {
                    Some((p, n)) if hops < 4096 => {
                        parts.push(n);
                        dir = *p;
                    }
                    _ => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                parts.reverse();
                out.push(parts.join(&b'/'));
            }
        }
        out
    }

    fn path_at(&self, parent: u64, name: &[u8]) -> Option<Vec<u8>> {
        let mut p = self.paths_of(parent).into_iter().next()?;
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        Some(p)
    }

    /// The paths under folder `dir` (its whole subtree).
    fn subtree(&self, dir: u64, prefix: &[u8], out: &mut Vec<Vec<u8>>) {
        let mut stack = vec![(dir, prefix.to_vec())];
        let mut seen = HashSet::new();
        while let Some((d, pre)) = stack.pop() {
            if !seen.insert(d) {
                continue;
            }
            for ((_, name), file) in self
                .tree
                .names
                .range((d, Vec::new())..)
                .take_while(|((p, _), _)| *p == d)
            {
                let mut p = pre.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                if self
                    .tree
                    .files
                    .get(file)
                    .is_some_and(|f| f.meta.kind == KIND_DIR)
                {
                    stack.push((*file, p.clone()));
                }
                out.push(p);
            }
        }
    }

    /// Applies one record, noting the paths whose holding may have changed: before (names
    /// that go) and after (names that come, files that change).
    fn apply(&mut self, c: &VChange, touched: &mut HashSet<Vec<u8>>, prefixes: &mut Vec<Vec<u8>>) {
        let named = |w: &Walk,
                     parent: u64,
                     name: &[u8],
                     touched: &mut HashSet<Vec<u8>>,
                     prefixes: &mut Vec<Vec<u8>>| {
            if let Some(p) = w.path_at(parent, name) {
                // A folder's name moving moves everything under it.
                if let Some(f) = w.tree.names.get(&(parent, name.to_vec())) {
                    if w.tree.files.get(f).is_some_and(|f| f.meta.kind == KIND_DIR) {
                        let mut sub = Vec::new();
                        w.subtree(*f, &p, &mut sub);
                        touched.extend(sub);
                        prefixes.push(p.clone());
                    }
                }
                touched.insert(p);
            }
        };
        // Before: the names the record moves or removes (and a new name's path).
        for (parent, name) in name_keys(c) {
            named(self, parent, &name, touched, prefixes);
        }
        let before: Vec<(u64, Vec<u8>, Option<u64>)> = name_keys(c)
            .into_iter()
            .map(|(p, n)| {
                let f = self.tree.names.get(&(p, n.clone())).copied();
                (p, n, f)
            })
            .collect();
        self.tree.apply(c);
        // Keep names_of in step with the names the record moved.
        for (p, n, old) in before {
            let now = self.tree.names.get(&(p, n.clone())).copied();
            if old == now {
                continue;
            }
            if let Some(o) = old {
                if let Some(v) = self.names_of.get_mut(&o) {
                    v.retain(|(pp, nn)| !(*pp == p && *nn == n));
                    if v.is_empty() {
                        self.names_of.remove(&o);
                    }
                }
            }
            if let Some(f) = now {
                self.names_of.entry(f).or_default().push((p, n.clone()));
            }
        }
        // After: the names the record made, and the files it changed.
        for (parent, name) in name_keys(c) {
            named(self, parent, &name, touched, prefixes);
        }
        if let VChange::SetAttr { file, .. }
        | VChange::SetXattr { file, .. }
        | VChange::RemoveXattr { file, .. }
        | VChange::Content { file, .. }
        | VChange::Patch { file, .. } = c
        {
            touched.extend(self.paths_of(*file));
        }
    }
}

/// The (parent, name) keys a record may change.
fn name_keys(c: &VChange) -> Vec<(u64, Vec<u8>)> {
    match c {
        VChange::Create { parent, name, .. }
        | VChange::Mkdir { parent, name, .. }
        | VChange::Symlink { parent, name, .. }
        | VChange::Link { parent, name, .. }
        | VChange::Unlink { parent, name, .. }
        | VChange::Rmdir { parent, name, .. } => vec![(*parent, name.clone())],
        VChange::Rename {
            parent,
            name,
            new_parent,
            new_name,
            ..
        } => vec![(*parent, name.clone()), (*new_parent, new_name.clone())],
        _ => Vec::new(),
    }
}

impl Index {
    fn meta(&self, k: &str) -> Result<Option<Vec<u8>>> {
        self.conn
            .query_row("SELECT v FROM meta WHERE k = ?1", [k], |r| r.get(0))
            .optional()
            .map_err(db_err)
    }

    /// Brings the index up to the vault's newest point.
    fn update(&mut self, vault: &Vault, chain: &str, trashed: &HashSet<String>) -> Result<()> {
        let map = vault.chain_map(chain, trashed)?;
        let Some(&newest) = map.at.keys().next_back() else {
            return Ok(());
        };
        // Where the index stands, if that point is still the vault's.
        let mut resume: Option<(u64, Walk)> = None;
        if let (Some(g), Some(h), Some(t)) =
            (self.meta("gen")?, self.meta("hash")?, self.meta("tree")?)
        {
            let gen = u64::from_le_bytes(g.as_slice().try_into().unwrap_or_default());
            if map.at.contains_key(&gen) {
                let (hash, _) = vault.read_point(&map, gen, &mut None)?;
                if hash.as_slice() == h.as_slice() {
                    if gen == newest {
                        return Ok(());
                    }
                    let cbor = zstd::bulk::decompress(&t, crate::format::MAX_OBJECT).ok();
                    let cp: Option<Checkpoint> =
                        cbor.and_then(|c| ciborium::from_reader(&c[..]).ok());
                    if let Some(cp) = cp {
                        resume = Some((gen, Walk::new(Tree::from_checkpoint(cp))));
                    }
                }
            }
        }
        let tx = self.conn.transaction().map_err(db_err)?;
        let (start, mut walk) = match resume {
            Some((g, w)) => (g + 1, Some(w)),
            None => {
                tx.execute_batch("DELETE FROM versions; DELETE FROM latest; DELETE FROM meta;")
                    .map_err(db_err)?;
                (*map.at.keys().next().unwrap_or(&1), None)
            }
        };
        let mut cache = None;
        let mut last_hash = [0u8; 32];
        let mut last_gen = 0;
        let mut last_pos: Option<Position> = None;
        for &gen in map.at.range(start..).map(|(g, _)| g) {
            let (hash, obj) = vault.read_point(&map, gen, &mut cache)?;
            let pos = obj.pos().clone();
            let mut touched: HashSet<Vec<u8>> = HashSet::new();
            let mut prefixes: Vec<Vec<u8>> = Vec::new();
            match obj {
                LogObject::Checkpoint(c) => {
                    // Everything that was, and everything that is.
                    let w = Walk::new(Tree::from_checkpoint(c));
                    let mut all = Vec::new();
                    w.subtree(w.tree.root, b"", &mut all);
                    touched.extend(all);
                    prefixes.push(Vec::new());
                    walk = Some(w);
                }
                LogObject::Segment(s) => {
                    let Some(w) = walk.as_mut() else {
                        return Err(Error::Damaged {
                            object: format!("log object {gen}"),
                            detail: "the log does not start with a checkpoint".into(),
                        });
                    };
                    for r in &s.records {
                        w.apply(&r.change, &mut touched, &mut prefixes);
                    }
                }
            }
            let w = walk.as_ref().expect("set above");
            // Paths the index knows under a folder that moved or went.
            for pre in &prefixes {
                // "a/" <= path < "a0": everything under a ('0' follows '/').
                let (lo, hi) = if pre.is_empty() {
                    (Vec::new(), vec![0xffu8; 8])
                } else {
                    let mut lo = pre.clone();
                    lo.push(b'/');
                    let mut hi = pre.clone();
                    hi.push(b'/' + 1);
                    (lo, hi)
                };
                let mut st = tx
                    .prepare_cached(
                        "SELECT path FROM latest WHERE (path >= ?1 AND path < ?2) OR ?3",
                    )
                    .map_err(db_err)?;
                let rows = st
                    .query_map(params![lo, hi, pre.is_empty()], |r| r.get::<_, Vec<u8>>(0))
                    .map_err(db_err)?;
                for p in rows {
                    touched.insert(p.map_err(db_err)?);
                }
            }
            for path in touched {
                let now: Option<(State, u8, u64)> = w.tree.lookup(&path).and_then(|id| {
                    let f = w.tree.files.get(&id)?;
                    Some((
                        (id, f.meta.size, f.meta.mtime_ns, content_hash(&f.content)),
                        f.meta.kind,
                        f.meta.size,
                    ))
                });
                let was: Option<Vec<u8>> = tx
                    .prepare_cached("SELECT state FROM latest WHERE path = ?1")
                    .map_err(db_err)?
                    .query_row([&path], |r| r.get(0))
                    .optional()
                    .map_err(db_err)?;
                match (now, was) {
                    (Some((st, kind, size)), was) => {
                        let b = state_bytes(&st);
                        if was.as_deref() == Some(b.as_slice()) {
                            continue;
                        }
                        tx.prepare_cached(
                            "INSERT INTO versions VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)",
                        )
                        .map_err(db_err)?
                        .execute(params![
                            path,
                            gen as i64,
                            pos.time_ns,
                            pos.seq as i64,
                            size as i64,
                            st.2,
                            kind
                        ])
                        .map_err(db_err)?;
                        tx.prepare_cached("INSERT OR REPLACE INTO latest VALUES (?1, ?2)")
                            .map_err(db_err)?
                            .execute(params![path, b])
                            .map_err(db_err)?;
                    }
                    (None, Some(_)) => {
                        tx.prepare_cached(
                            "INSERT INTO versions VALUES (?1, ?2, ?3, ?4, 0, 0, 0, 1)",
                        )
                        .map_err(db_err)?
                        .execute(params![path, gen as i64, pos.time_ns, pos.seq as i64])
                        .map_err(db_err)?;
                        tx.prepare_cached("DELETE FROM latest WHERE path = ?1")
                            .map_err(db_err)?
                            .execute([&path])
                            .map_err(db_err)?;
                    }
                    (None, None) => {}
                }
            }
            last_hash = hash;
            last_gen = gen;
            last_pos = Some(pos);
        }
        if let (Some(w), Some(pos)) = (&walk, last_pos) {
            let mut cbor = Vec::new();
            ciborium::into_writer(&w.tree.to_checkpoint(pos), &mut cbor)
                .map_err(|e| Error::Format(e.to_string()))?;
            let z = zstd::bulk::compress(&cbor, 3).map_err(|e| Error::Format(e.to_string()))?;
            let put = |k: &str, v: &[u8]| {
                tx.execute("INSERT OR REPLACE INTO meta VALUES (?1, ?2)", params![k, v])
                    .map(|_| ())
                    .map_err(db_err)
            };
            put("gen", &last_gen.to_le_bytes())?;
            put("hash", &last_hash)?;
            put("tree", &z)?;
        }
        tx.commit().map_err(db_err)
    }

    fn query(&self, path: &[u8]) -> Result<Vec<(Version, Key)>> {
        let path: Vec<u8> = path
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>()
            .join(&b'/');
        let mut st = self
            .conn
            .prepare(
                "SELECT time_ns, seq, size, mtime_ns, kind FROM versions
                 WHERE path = ?1 AND gone = 0 ORDER BY gen",
            )
            .map_err(db_err)?;
        let rows = st
            .query_map([&path], |r| {
                let v = Version {
                    time_ns: r.get(0)?,
                    seq: r.get::<_, i64>(1)? as u64,
                    size: r.get::<_, i64>(2)? as u64,
                    mtime_ns: r.get(3)?,
                    kind: r.get(4)?,
                    device: None,
                    here: true,
                };
                let key = (v.kind, v.size, v.mtime_ns);
                Ok((v, key))
            })
            .map_err(db_err)?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Segment, VMeta, VRecord, KIND_FILE};
    use crate::vault::Head;

    fn meta(kind: u8, size: u64, mtime: i64) -> VMeta {
        VMeta {
            kind,
            perm: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime_ns: mtime,
            ctime_ns: mtime,
            rdev: 0,
        }
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Random histories (files and folders made, written, renamed over each other, linked,
    /// exchanged, removed; checkpoints now and then): the index, built at once or a little at
    /// a time, answers as a replay of the whole log does, for every path ever used.
    #[test]
    fn the_index_agrees_with_a_replay() {
        let mut rich = 0;
        // Wine runs this several times slower: fewer histories there (CI's time is shared).
        let seeds: u64 = if cfg!(windows) { 2 } else { 6 };
        for seed in 1..=seeds {
            let tmp = tempfile::tempdir().unwrap();
            let (rt, vault) = crate::vault::test_vault(tmp.path());
            let vault = vault.with_cache(&tmp.path().join("cache"));
            let mut rng = Rng(seed * 7919);
            let root = 1u64;
            let mut tree = Tree::new(root);
            let mut head = Head::default();
            let pos = |head: &Head, seq: u64| Position {
                gen: head.gen + 1,
                prev: head.hash,
                journal_id: 1,
                seq,
                time_ns: seq as i64 * 1000,
                written_ns: 0,
            };
            head = vault
                .append_log(
                    &head,
                    &LogObject::Checkpoint(tree.to_checkpoint(pos(&head, 0))),
                )
                .unwrap();
            let mut next_id = 2u64;
            let mut seq = 0u64;
            let names: Vec<Vec<u8>> = ["a", "b", "c", "d"]
                .iter()
                .map(|s| s.as_bytes().to_vec())
                .collect();
            let mut paths_seen: HashSet<Vec<u8>> = HashSet::new();
            for round in 0..60 {
                if round % 17 == 16 {
                    head = vault
                        .append_log(
                            &head,
                            &LogObject::Checkpoint(tree.to_checkpoint(pos(&head, seq))),
                        )
                        .unwrap();
                    continue;
                }
                let mut records = Vec::new();
                for _ in 0..1 + rng.below(5) {
                    seq += 1;
                    let dirs: Vec<u64> = std::iter::once(root)
                        .chain(
                            tree.files
                                .values()
                                .filter(|f| f.meta.kind == KIND_DIR && f.id != root)
                                .map(|f| f.id),
                        )
                        .collect();
                    let mut dirs = dirs;
                    dirs.sort();
                    let parent = dirs[rng.below(dirs.len() as u64) as usize];
                    let name = names[rng.below(4) as usize].clone();
                    let existing = tree.names.get(&(parent, name.clone())).copied();
                    let c = match (rng.below(8), existing) {
                        (0, None) => {
                            next_id += 1;
                            VChange::Mkdir {
                                parent,
                                name,
                                file: next_id,
                                meta: meta(KIND_DIR, 0, seq as i64),
                            }
                        }
                        (1 | 2, None) => {
                            next_id += 1;
                            VChange::Create {
                                parent,
                                name,
                                file: next_id,
                                meta: meta(KIND_FILE, 0, seq as i64),
                            }
                        }
                        (3, Some(f)) if tree.files[&f].meta.kind == KIND_FILE => VChange::Content {
                            file: f,
                            meta: meta(KIND_FILE, rng.below(100), seq as i64),
                            content: Content {
                                size: rng.below(3),
                                extents: Vec::new(),
                            },
                        },
                        (4, Some(f)) if tree.files[&f].meta.kind == KIND_FILE => VChange::Unlink {
                            parent,
                            name,
                            file: f,
                        },
                        (5, Some(f)) if tree.files[&f].meta.kind == KIND_FILE => {
                            let np = dirs[rng.below(dirs.len() as u64) as usize];
                            let nn = names[rng.below(4) as usize].clone();
                            match tree.names.get(&(np, nn.clone())) {
                                Some(t) if tree.files[t].meta.kind == KIND_DIR => continue,
                                _ => VChange::Link {
                                    parent: np,
                                    name: nn,
                                    file: f,
                                },
                            }
                        }
                        (6, Some(f)) => {
                            // A rename within the root (never a folder into itself).
                            let nn = names[rng.below(4) as usize].clone();
                            let target = tree.names.get(&(root, nn.clone())).copied();
                            let ok = match target {
                                None => true,
                                Some(t) if t == f => false,
                                Some(t) => {
                                    tree.files[&t].meta.kind != KIND_DIR
                                        && tree.files[&f].meta.kind != KIND_DIR
                                }
                            };
                            if !ok || parent != root {
                                continue;
                            }
                            VChange::Rename {
                                parent,
                                name,
                                new_parent: root,
                                new_name: nn,
                                file: f,
                                exchange: rng.below(4) == 0 && target.is_some(),
                            }
                        }
                        (7, Some(f)) => VChange::SetAttr {
                            file: f,
                            meta: meta(
                                tree.files[&f].meta.kind,
                                tree.files[&f].meta.size,
                                seq as i64,
                            ),
                        },
                        _ => continue,
                    };
                    tree.apply(&c);
                    records.push(VRecord {
                        seq,
                        time_ns: seq as i64 * 1000,
                        change: c,
                    });
                }
                for (p, _) in tree.paths() {
                    paths_seen.insert(p);
                }
                if records.is_empty() {
                    continue;
                }
                let first_seq = records[0].seq;
                head = vault
                    .append_log(
                        &head,
                        &LogObject::Segment(Segment {
                            pos: pos(&head, seq),
                            first_seq,
                            records,
                            pending: Vec::new(),
                        }),
                    )
                    .unwrap();
                // Now and then a question: the index catches up a little at a time.
                if round % 9 == 4 {
                    let p = paths_seen.iter().next().unwrap().clone();
                    assert_eq!(
                        crate::restore::versions(&vault, &p).unwrap(),
                        crate::restore::versions_replayed(&vault, &p).unwrap()
                    );
                }
            }
            assert!(
                paths_seen.iter().any(|p| p.contains(&b'/')),
                "seed {seed}: no folders"
            );
            for p in &paths_seen {
                let want = crate::restore::versions_replayed(&vault, p).unwrap();
                if want.len() >= 3 {
                    rich += 1;
                }
                assert_eq!(
                    versions_indexed(&vault, p, None).unwrap(),
                    want,
                    "seed {seed}, {} (in memory)",
                    String::from_utf8_lossy(p)
                );
                assert_eq!(
                    crate::restore::versions(&vault, p).unwrap(),
                    want,
                    "seed {seed}, {} (cached)",
                    String::from_utf8_lossy(p)
                );
            }
            rt.shutdown_background();
        }
        assert!(
            rich >= seeds,
            "the histories are too plain to test anything ({rich})"
        );
    }

    /// A version one device carried from another is named by the device that made it, in
    /// either device's `log`; a version only the other device's history holds is listed as
    /// not here; and the answer is the same from the cache and from memory.
    #[test]
    fn each_version_names_the_device_that_made_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (rt, mut vault) = crate::vault::test_vault(tmp.path());
        vault.join_device("a1a1", "laptop", "drive", 0).unwrap();
        let mut vault = vault.with_cache(&tmp.path().join("cache"));
        // (time of the point, size, modification time): each device's own clock.
        let write = |vault: &mut Vault, chain: &str, file: u64, points: &[(i64, u64, i64)]| {
            vault.set_chain(chain);
            let mut head = Head::default();
            let mut tree = Tree::new(1);
            tree.apply(&VChange::Create {
                parent: 1,
                name: b"doc".to_vec(),
                file,
                meta: meta(KIND_FILE, 0, 0),
            });
            for &(time_ns, size, mtime) in points {
                tree.apply(&VChange::Content {
                    file,
                    meta: meta(KIND_FILE, size, mtime),
                    content: Content {
                        size,
                        extents: Vec::new(),
                    },
                });
                let pos = Position {
                    gen: head.gen + 1,
                    prev: head.hash,
                    journal_id: 1,
                    seq: head.gen + 1,
                    time_ns,
                    written_ns: 0,
                };
                head = vault
                    .append_log(&head, &LogObject::Checkpoint(tree.to_checkpoint(pos)))
                    .unwrap();
            }
        };
        // The drive makes 1, takes the laptop's 2, makes 4; the laptop takes 1, makes 2 and
        // then 3, which the drive never took (4 came first).
        write(&mut vault, "", 2, &[(10, 1, 5), (40, 2, 30), (60, 4, 55)]);
        write(
            &mut vault,
            "a1a1",
            7,
            &[(20, 1, 5), (31, 2, 30), (35, 3, 34)],
        );
        let shown = |vault: &Vault, cached: bool| -> Vec<(i64, u64, String, bool)> {
            let vs = if cached {
                crate::restore::versions(vault, b"doc").unwrap()
            } else {
                versions_indexed(vault, b"doc", None).unwrap()
            };
            vs.into_iter()
                .map(|v| (v.time_ns, v.size, v.device.unwrap(), v.here))
                .collect()
        };
        let s = |n: &str| n.to_owned();
        vault.set_chain("");
        let drive = vec![
            (10, 1, s("drive"), true),
            (35, 3, s("laptop"), false),
            (40, 2, s("laptop"), true),
            (60, 4, s("drive"), true),
        ];
        for cached in [true, false, true] {
            assert_eq!(shown(&vault, cached), drive, "cached: {cached}");
        }
        vault.set_chain("a1a1");
        let laptop = vec![
            (20, 1, s("drive"), true),
            (31, 2, s("laptop"), true),
            (35, 3, s("laptop"), true),
            (60, 4, s("drive"), false),
        ];
        for cached in [true, false] {
            assert_eq!(shown(&vault, cached), laptop, "cached: {cached}");
        }
        rt.shutdown_background();
    }
}
