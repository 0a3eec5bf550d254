//! A group destination: one vault spread over several members (a disk at home, the office
//! SFTP server, an S3 bucket), so that any `k` of the `n` members restore it and no member
//! holds a whole chunk.
//!
//! The vault above does not know: it reads and writes keys as on any store. Here a pack
//! (`data/…`) is cut into `k` data shards and `n - k` Reed-Solomon parity shards, one per
//! member under the pack's own key; every other object (config, index, log, checkpoints,
//! trash, leases) is small and goes whole to every member, so any `k` members hold everything
//! a restore needs. Each object at a member carries its own hash (whole objects one, shards
//! one per block), so a damaged copy is found and not used: the read goes to another member.
//!
//! Shard layout: the pack is taken in blocks of `k * piece` bytes. Inside a block the pack's
//! bytes are dealt to the data shards 16 bytes at a time, in turn, so that every sealed chunk
//! (at least 28 bytes: nonce and tag) has bytes in two shards, and no member can read a chunk
//! even with the passphrase. Each block's `k` data pieces give `n - k` parity pieces. A shard
//! object is a 64-byte header (geometry and pack length, hashed) followed, per block, by the
//! piece and the hash of (key, shard, block, piece): a range of the pack maps to the same
//! range of blocks in every shard.
//!
//! Writes: an object counts as stored once `k` members hold it (a member away, such as the
//! home disk while at the office, is left behind and caught up from the others when it is
//! back: [`Group::catch_up`]). Deletes need every member, so no member ever misses one and
//! catching up (which only adds) can never bring back what maintenance removed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::state::MemberState;
use crate::store::Single;

/// Bytes dealt to one data shard before the next one's turn.
const UNIT: usize = 16;
/// At most this many bytes of one shard per block (a range read fetches whole blocks).
const MAX_PIECE: usize = 64 << 10;
/// Per block, the piece's hash.
const HASH: usize = 32;
const SHARD_HEADER: usize = 64;
const SHARD_MAGIC: &[u8; 8] = b"BPSHARD1";
const WHOLE_MAGIC: &[u8; 8] = b"BPWHOLE1";
const WHOLE_HEADER: usize = 8 + HASH;
/// A member that is behind and away is looked at again after this, then less and less often.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(30);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(600);
/// Keys cached with their geometry (a restore reads many ranges of one pack).
const GEOMETRY_CACHE: usize = 4096;

/// One member's objects with their sizes.
type Listing = Vec<(String, u64)>;

/// Whether `key` is a pack: the objects that are spread rather than copied.
fn is_pack(key: &str) -> bool {
    key.starts_with("data/")
}

/// How a pack of `len` bytes is cut, for a group of `k` of `n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    k: usize,
    n: usize,
    piece: usize,
    blocks: usize,
    len: u64,
}

impl Geometry {
    fn of(k: usize, n: usize, len: u64) -> Geometry {
        let per_shard = (len as usize).div_ceil(k);
        // Small packs get small pieces (a multiple of 64: the coder's unit and ours).
        let piece = per_shard.div_ceil(64).max(1) * 64;
        let piece = piece.min(MAX_PIECE);
        let blocks = (len as usize).div_ceil(k * piece).max(1);
        Geometry {
            k,
            n,
            piece,
            blocks,
            len,
        }
    }

    fn block_bytes(&self) -> usize {
        self.k * self.piece
    }

    fn stride(&self) -> usize {
        self.piece + HASH
    }

    fn shard_size(&self) -> u64 {
        (SHARD_HEADER + self.blocks * self.stride()) as u64
    }

    fn header(&self, index: usize) -> [u8; SHARD_HEADER] {
        let mut h = [0u8; SHARD_HEADER];
        h[..8].copy_from_slice(SHARD_MAGIC);
        h[8..10].copy_from_slice(&(self.k as u16).to_le_bytes());
        h[10..12].copy_from_slice(&(self.n as u16).to_le_bytes());
        h[12..14].copy_from_slice(&(index as u16).to_le_bytes());
        h[16..20].copy_from_slice(&(self.piece as u32).to_le_bytes());
        h[20..24].copy_from_slice(&(self.blocks as u32).to_le_bytes());
        h[24..32].copy_from_slice(&self.len.to_le_bytes());
        let sum = blake3::hash(&h[..32]);
        h[32..].copy_from_slice(sum.as_bytes());
        h
    }

    /// The geometry a shard's header states, and the shard's index; None if the header is
    /// damaged or not a shard's.
    fn read_header(h: &[u8]) -> Option<(Geometry, usize)> {
        if h.len() < SHARD_HEADER || &h[..8] != SHARD_MAGIC {
            return None;
        }
        if blake3::hash(&h[..32]).as_bytes() != &h[32..64] {
            return None;
        }
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]) as usize;
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap()) as usize;
        let (k, n) = (u16_at(8), u16_at(10));
        if k == 0 || n < k {
            return None;
        }
        let g = Geometry {
            k: u16_at(8),
            n: u16_at(10),
            piece: u32_at(16),
            blocks: u32_at(20),
            len: u64::from_le_bytes(h[24..32].try_into().unwrap()),
        };
        (g == Geometry::of(g.k, g.n, g.len)).then_some((g, u16_at(12)))
    }

    /// The `k` data pieces of block `b` of `pack`.
    fn deal(&self, pack: &[u8], b: usize) -> Vec<Vec<u8>> {
        let mut pieces = vec![vec![0u8; self.piece]; self.k];
        let base = b * self.block_bytes();
        let end = (base + self.block_bytes()).min(pack.len());
        let mut pos = base;
        let mut t = 0;
        while pos < end {
            let n = UNIT.min(end - pos);
            let (j, m) = (t % self.k, t / self.k);
            pieces[j][m * UNIT..m * UNIT + n].copy_from_slice(&pack[pos..pos + n]);
            pos += UNIT;
            t += 1;
        }
        pieces
    }

    /// Copies the bytes of block `b` in `[from, to)` of the pack, out of its data pieces.
    fn gather(&self, pieces: &[Vec<u8>], b: usize, from: u64, to: u64, out: &mut Vec<u8>) {
        let base = (b * self.block_bytes()) as u64;
        let lo = from.max(base);
        let hi = to.min(base + self.block_bytes() as u64).min(self.len);
        let mut pos = lo;
        while pos < hi {
            let t = ((pos - base) as usize) / UNIT;
            let within = ((pos - base) as usize) % UNIT;
            let n = (UNIT - within).min((hi - pos) as usize);
            let (j, m) = (t % self.k, t / self.k);
            let at = m * UNIT + within;
            out.extend_from_slice(&pieces[j][at..at + n]);
            pos += n as u64;
        }
    }
}

fn piece_hash(key: &str, index: usize, block: usize, piece: &[u8]) -> [u8; HASH] {
    let mut h = blake3::Hasher::new_derive_key("backpocket group shard piece v1");
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key.as_bytes());
    h.update(&(index as u64).to_le_bytes());
    h.update(&(block as u64).to_le_bytes());
    h.update(piece);
    *h.finalize().as_bytes()
}

fn whole_hash(key: &str, body: &[u8]) -> [u8; HASH] {
    let mut h = blake3::Hasher::new_derive_key("backpocket group whole object v1");
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key.as_bytes());
    h.update(body);
    *h.finalize().as_bytes()
}

/// The `n` shard objects of a pack, in member order.
fn encode(key: &str, k: usize, n: usize, pack: &[u8]) -> Result<Vec<Vec<u8>>> {
    let g = Geometry::of(k, n, pack.len() as u64);
    let mut shards: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut s = Vec::with_capacity(g.shard_size() as usize);
            s.extend_from_slice(&g.header(i));
            s
        })
        .collect();
    for b in 0..g.blocks {
        let data = g.deal(pack, b);
        let parity = if n > k {
            reed_solomon_simd::encode(k, n - k, &data)
                .map_err(|e| Error::Format(format!("cannot spread {key}: {e}")))?
        } else {
            Vec::new()
        };
        for (i, piece) in data.iter().chain(parity.iter()).enumerate() {
            shards[i].extend_from_slice(piece);
            shards[i].extend_from_slice(&piece_hash(key, i, b, piece));
        }
    }
    Ok(shards)
}

/// The data pieces of one block from whichever `k` good pieces there are (`have[i]` is shard
/// i's piece, if good).
fn restore_block(g: &Geometry, have: &BTreeMap<usize, Vec<u8>>) -> Option<Vec<Vec<u8>>> {
    if (0..g.k).all(|i| have.contains_key(&i)) {
        return Some((0..g.k).map(|i| have[&i].clone()).collect());
    }
    if have.len() < g.k {
        return None;
    }
    let originals = have.iter().filter(|(i, _)| **i < g.k).map(|(i, p)| (*i, p));
    let recovery = have
        .iter()
        .filter(|(i, _)| **i >= g.k)
        .map(|(i, p)| (*i - g.k, p));
    let restored = reed_solomon_simd::decode(g.k, g.n - g.k, originals, recovery).ok()?;
    (0..g.k)
        .map(|i| have.get(&i).or_else(|| restored.get(&i)).cloned())
        .collect()
}

/// What a check found at one member.
#[derive(Clone, Debug)]
pub(crate) struct Finding {
    pub member: String,
    /// Objects it lacked or held damaged.
    pub keys: Vec<String>,
    /// How many of them it still lacks (all, unless repaired).
    pub left: u64,
    /// It did not answer: why.
    pub away: Option<String>,
}

/// One member of a group: a place, reached when needed.
pub(crate) struct Member {
    pub name: String,
    connect: Box<dyn Fn() -> Result<(Single, bool)> + Send + Sync>,
    store: Mutex<Option<Single>>,
    /// May lack objects the others hold: caught up when it answers again.
    behind: AtomicBool,
    /// A local folder (a disk that is plugged in or not).
    local: bool,
    /// Its own `--when`: while it does not hold, the member waits as if away.
    policy: Policy,
    /// What it waits for is cheap to check again (not `host=`).
    waiting_quick: AtomicBool,
    /// When to look at it again while it is behind and does not answer (backing off).
    retry: Mutex<(Option<std::time::Instant>, std::time::Duration)>,
    state: Mutex<MemberState>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member").field("name", &self.name).finish()
    }
}

impl Member {
    pub fn new(
        name: String,
        local: bool,
        policy: Policy,
        connect: Box<dyn Fn() -> Result<(Single, bool)> + Send + Sync>,
    ) -> Member {
        Member {
            policy,
            waiting_quick: AtomicBool::new(false),
            state: Mutex::new(MemberState {
                name: name.clone(),
                ..Default::default()
            }),
            name,
            local,
            connect,
            store: Mutex::new(None),
            // Until a first look at everything, nobody knows.
            behind: AtomicBool::new(true),
            retry: Mutex::new((None, RETRY_FIRST)),
        }
    }

    /// The member's store, connected (again) if needed.
    fn store(&self, pause: &Arc<AtomicBool>) -> Result<Single> {
        let mut s = self.store.lock();
        // Per request only the conditions that cost no connection; a new connection checks
        // all (`host=` connects).
        if let Some(what) = self.policy.quick_waiting_for() {
            return Err(self.waiting(what, true));
        }
        if let Some(st) = s.as_ref() {
            if st.check_present().is_ok() {
                return Ok(st.clone());
            }
        }
        if let Some(what) = self.policy.waiting_for() {
            return Err(self.waiting(what, false));
        }
        let (st, seatable) = (self.connect)()?;
        let st = st.with_pause(pause.clone());
        // The member's folder must be the group's, unless it is known to be there and may be
        // seated (it missed the group's making, or joins it): an empty folder at its place (a
        // write that raced an unplugged disk recreates the path on the machine's own disk) is
        // not it.
        if !seatable && !st.exists("config")? {
            return Err(Error::io(
                format!(
                    "{} holds nothing of this group (is the disk plugged in, or the share mounted?)",
                    st.url()
                ),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        *s = Some(st.clone());
        Ok(st)
    }

    /// Its policy does not hold: it is left behind as if away, and status says what it waits
    /// for rather than an error.
    fn waiting(&self, what: String, quick: bool) -> Error {
        self.waiting_quick.store(quick, Ordering::Relaxed);
        let e = Error::io(
            format!(
                "{} is not used now: it waits for {what} (its --when)",
                self.name
            ),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        self.state.lock().waiting_for = Some(what);
        e
    }

    fn failed(&self, e: &Error) {
        self.behind.store(true, Ordering::Release);
        // The first failure sets when to look again; the writes failing beside it (in
        // parallel, before the member was known to be away) do not push it further.
        {
            let mut r = self.retry.lock();
            if r.0.is_none_or(|t| std::time::Instant::now() >= t) {
                r.0 = Some(std::time::Instant::now() + r.1);
            }
        }
        let mut st = self.state.lock();
        st.reachable = Some(false);
        st.last_error = Some(e.to_string());
    }

    /// Whether a catch-up should try it now: it is behind, and its backoff has passed or
    /// (a local folder) it is there again, which costs nothing to see.
    fn due(&self, pause: &Arc<AtomicBool>) -> bool {
        if !self.behind.load(Ordering::Acquire) {
            return false;
        }
        // Waiting for a condition that costs nothing to check, which holds now (a network
        // change): at once. One that connects (`host=`) waits for the backoff.
        if self.waiting_quick.load(Ordering::Relaxed)
            && self.state.lock().waiting_for.is_some()
            && self.policy.quick_waiting_for().is_none()
        {
            return true;
        }
        if self
            .retry
            .lock()
            .0
            .is_none_or(|t| std::time::Instant::now() >= t)
        {
            return true;
        }
        self.local && self.store(pause).is_ok_and(|s| s.check_present().is_ok())
    }

    /// A catch-up tried it and could not finish: wait longer before the next try.
    fn later(&self) {
        let mut r = self.retry.lock();
        r.0 = Some(std::time::Instant::now() + r.1);
        r.1 = (r.1 * 2).min(RETRY_MAX);
    }

    fn answered(&self) {
        // Back: a member that missed writes is due for its catch-up at once.
        if self.behind.load(Ordering::Acquire) {
            self.retry.lock().0 = None;
        }
        let mut st = self.state.lock();
        st.reachable = Some(true);
        st.waiting_for = None;
    }
}

/// A vault spread over members; see the module's comment.
#[derive(Debug)]
pub(crate) struct Group {
    pub name: String,
    pub k: usize,
    members: Vec<Member>,
    pause: Mutex<Arc<AtomicBool>>,
    geometry: Mutex<HashMap<String, Geometry>>,
    /// Keys whose delete reached some members and not others: never copied back.
    half_deleted: Mutex<HashSet<String>>,
}

/// Runs `f` on every member at once; the results in member order.
fn each<T: Send>(
    members: &[usize],
    f: impl Fn(usize) -> Result<T> + Sync,
) -> Vec<(usize, Result<T>)> {
    if members.len() == 1 {
        return vec![(members[0], f(members[0]))];
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = members
            .iter()
            .map(|&i| {
                let f = &f;
                (i, s.spawn(move || f(i)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(i, h)| {
                (
                    i,
                    h.join().unwrap_or_else(|_| {
                        Err(Error::Format("a member's request panicked".into()))
                    }),
                )
            })
            .collect()
    })
}

impl Group {
    /// `k` of the `members` restore the vault. Checked: 1 <= k <= n, and a coder for it.
    pub fn new(name: String, k: usize, members: Vec<Member>) -> Result<Group> {
        let n = members.len();
        if n < 2 || k == 0 || k > n || n > 255 {
            return Err(Error::Format(format!(
                "group {name}: {k} of {n} members is not a usable spread; give at least 2 members and a --k from 1 to their number"
            )));
        }
        if n > k && !reed_solomon_simd::ReedSolomonEncoder::supports(k, n - k) {
            return Err(Error::Format(format!(
                "group {name}: {k} of {n} is beyond what the coder supports"
            )));
        }
        Ok(Group {
            name,
            k,
            members,
            pause: Mutex::new(Arc::default()),
            geometry: Mutex::new(HashMap::new()),
            half_deleted: Mutex::new(HashSet::new()),
        })
    }

    /// A group known only by its members' folders (the drive and its config lost): each
    /// member's place, and the group's `k` and `n`, are read from the shards it holds. Places
    /// no folder was given for are away.
    pub fn discover(name: String, given: Vec<(String, Result<Single>)>) -> Result<Group> {
        let mut placed: BTreeMap<usize, (String, Single)> = BTreeMap::new();
        let mut unplaced: Vec<(String, Single)> = Vec::new();
        let mut shape: Option<(usize, usize)> = None;
        let mut errors = Vec::new();
        for (url, st) in given {
            let st = match st {
                Ok(st) => st,
                Err(e) => {
                    warn!("{url}: {e}; going on without it");
                    errors.push(e);
                    continue;
                }
            };
            let header = st.list("data/").map(|packs| {
                packs.iter().find_map(|(key, _)| {
                    let h = st.get_range(key, 0, SHARD_HEADER as u64).ok()?;
                    Geometry::read_header(&h)
                })
            });
            match header {
                Ok(Some((g, i))) => {
                    if shape.is_some_and(|s| s != (g.k, g.n)) || placed.contains_key(&i) {
                        return Err(Error::Format(format!(
                            "{url} holds shards of another group than the folders before it \
                             (or the same member twice); give the folders of one group"
                        )));
                    }
                    shape = Some((g.k, g.n));
                    placed.insert(i, (url, st));
                }
                Ok(None) => unplaced.push((url, st)),
                Err(e) => {
                    warn!("{url}: {e}; going on without it");
                    errors.push(e);
                }
            }
        }
        // No pack anywhere: everything is whole at every member, so any one reads it.
        let (k, n) = shape.unwrap_or((1, (placed.len() + unplaced.len()).max(2)));
        if placed.len() + unplaced.len() < k {
            return Err(Self::pick(errors, || {
                Error::Format(format!(
                    "{} of the group's folders answered and {k} are needed",
                    placed.len() + unplaced.len()
                ))
            }));
        }
        let mut unplaced = unplaced.into_iter();
        let members = (0..n)
            .map(|i| {
                let found = placed.remove(&i).or_else(|| unplaced.next());
                match found {
                    Some((url, st)) => Member::new(
                        url.clone(),
                        crate::store::local_path(&url).is_some(),
                        Policy::default(),
                        Box::new(move || Ok((st.clone(), false))),
                    ),
                    None => Member::new(
                        format!("member {i}"),
                        false,
                        Policy::default(),
                        Box::new(move || {
                            Err(Error::io(
                                format!("member {i} of the group: its folder was not given"),
                                std::io::Error::from(std::io::ErrorKind::NotFound),
                            ))
                        }),
                    ),
                }
            })
            .collect();
        Group::new(name, k, members)
    }

    pub fn n(&self) -> usize {
        self.members.len()
    }

    pub fn set_pause(&self, flag: Arc<AtomicBool>) {
        *self.pause.lock() = flag;
        for m in &self.members {
            *m.store.lock() = None;
        }
    }

    pub fn paused(&self) -> bool {
        self.pause.lock().load(Ordering::Relaxed)
    }

    fn on<T>(&self, i: usize, f: impl FnOnce(&Single) -> Result<T>) -> Result<T> {
        let m = &self.members[i];
        let pause = self.pause.lock().clone();
        let r = m.store(&pause).and_then(|s| f(&s));
        match &r {
            Ok(_) => m.answered(),
            Err(Error::Paused) => {}
            // It answered, without the object: it missed a write (or lost it).
            Err(Error::Store { source, .. }) if source.kind() == opendal::ErrorKind::NotFound => {
                m.answered();
                m.behind.store(true, Ordering::Release);
            }
            Err(e) => m.failed(e),
        }
        r
    }

    fn all(&self) -> Vec<usize> {
        (0..self.n()).collect()
    }

    /// The first error that says a member could not be reached (what the replicator backs
    /// off from), else the first error.
    fn pick(errors: Vec<Error>, what: impl FnOnce() -> Error) -> Error {
        let mut errors = errors;
        if errors.iter().any(|e| matches!(e, Error::Paused)) {
            return Error::Paused;
        }
        if let Some(i) = errors.iter().position(crate::dest::is_unreachable) {
            return errors.swap_remove(i);
        }
        errors.into_iter().next().unwrap_or_else(what)
    }

    /// Too few members did it: why, keeping what the members said (an unreachable member
    /// makes the whole "unreachable", so the replicator waits rather than fails).
    fn short(&self, what: &str, held: usize, errors: Vec<Error>) -> Error {
        let first = Self::pick(errors, || Error::Format("no member answered".into()));
        if matches!(first, Error::Paused) {
            return first;
        }
        Error::Group {
            context: format!(
                "group {}: only {held} of its {} members {what} ({} are needed; it goes on by \
                 itself as they answer again, and `backpocket journal status` shows each one)",
                self.name,
                self.n(),
                self.k
            ),
            source: Box::new(first),
        }
    }

    pub fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let objects: Vec<Vec<u8>> = if is_pack(key) {
            let shards = encode(key, self.k, self.n(), &data)?;
            self.geometry.lock().insert(
                key.to_owned(),
                Geometry::of(self.k, self.n(), data.len() as u64),
            );
            shards
        } else {
            let mut o = Vec::with_capacity(WHOLE_HEADER + data.len());
            o.extend_from_slice(WHOLE_MAGIC);
            o.extend_from_slice(&whole_hash(key, &data));
            o.extend_from_slice(&data);
            vec![o; self.n()]
        };
        // A member known to be away is not asked again until it is due for a catch-up (which
        // brings it this object too): a drain does not wait on its timeouts at every write.
        let pause = self.pause.lock().clone();
        let mut targets: Vec<usize> = (0..self.n())
            .filter(|&i| {
                let m = &self.members[i];
                !m.behind.load(Ordering::Acquire) || m.due(&pause)
            })
            .collect();
        // Too few without them: every member is asked (one may be back before its time).
        if targets.len() < self.k {
            targets = self.all();
        }
        // Each member's object moves into its request (a pack's shards are large).
        let slots: Vec<Mutex<Option<Vec<u8>>>> =
            objects.into_iter().map(|o| Mutex::new(Some(o))).collect();
        let results = each(&targets, |i| {
            let object = slots[i].lock().take().unwrap_or_default();
            self.on(i, |s| s.put(key, object))
        });
        let mut held = 0;
        let mut errors = Vec::new();
        for (i, r) in results {
            match r {
                Ok(()) => held += 1,
                Err(e) => {
                    warn!(group = %self.name, member = %self.members[i].name, "{key} waits for this member: {e}");
                    errors.push(e);
                }
            }
        }
        if held >= self.k {
            return Ok(());
        }
        Err(self.short(&format!("took {key}"), held, errors))
    }

    /// Member indices in the order reads try them: data shards first (no decoding), members
    /// known to be behind last.
    fn read_order(&self) -> Vec<usize> {
        let mut order = self.all();
        order.sort_by_key(|&i| (self.members[i].behind.load(Ordering::Acquire), i >= self.k));
        order
    }

    fn get_whole(&self, key: &str) -> Result<Vec<u8>> {
        let mut errors = Vec::new();
        for i in self.read_order() {
            match self.on(i, |s| s.get(key)) {
                Ok(o) => {
                    if o.len() >= WHOLE_HEADER
                        && &o[..8] == WHOLE_MAGIC
                        && o[8..WHOLE_HEADER] == whole_hash(key, &o[WHOLE_HEADER..])
                    {
                        return Ok(o[WHOLE_HEADER..].to_vec());
                    }
                    warn!(group = %self.name, member = %self.members[i].name, "{key} is damaged there; reading another member's copy");
                    self.members[i].behind.store(true, Ordering::Release);
                    errors.push(Error::Damaged {
                        object: format!("{key} at {}", self.members[i].name),
                        detail: "its hash does not match".into(),
                    });
                }
                Err(e) => errors.push(e),
            }
        }
        Err(Self::pick(errors, || Error::Format("no members".into())))
    }

    fn geometry_of(&self, key: &str) -> Result<Geometry> {
        if let Some(g) = self.geometry.lock().get(key) {
            return Ok(*g);
        }
        let mut errors = Vec::new();
        for i in self.read_order() {
            match self.on(i, |s| s.get_range(key, 0, SHARD_HEADER as u64)) {
                Ok(h) => match Geometry::read_header(&h) {
                    Some((g, index)) if index == i && g.k == self.k && g.n == self.n() => {
                        let mut cache = self.geometry.lock();
                        if cache.len() >= GEOMETRY_CACHE {
                            cache.clear();
                        }
                        cache.insert(key.to_owned(), g);
                        return Ok(g);
                    }
                    _ => errors.push(Error::Damaged {
                        object: format!("{key} at {}", self.members[i].name),
                        detail: "not a shard of this group (damaged header)".into(),
                    }),
                },
                Err(e) => errors.push(e),
            }
        }
        Err(Self::pick(errors, || Error::Format("no members".into())))
    }

    /// Blocks `b0..=b1` of member `i`'s shard: each piece if it passes its hash.
    fn pieces(
        &self,
        key: &str,
        g: &Geometry,
        i: usize,
        b0: usize,
        b1: usize,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let from = (SHARD_HEADER + b0 * g.stride()) as u64;
        let len = ((b1 - b0 + 1) * g.stride()) as u64;
        let bytes = self.on(i, |s| s.get_range(key, from, len))?;
        let mut out = Vec::with_capacity(b1 - b0 + 1);
        for (n, b) in (b0..=b1).enumerate() {
            let at = n * g.stride();
            let piece = bytes.get(at..at + g.piece);
            let sum = bytes.get(at + g.piece..at + g.stride());
            out.push(match (piece, sum) {
                (Some(p), Some(s)) if s == piece_hash(key, i, b, p) => Some(p.to_vec()),
                _ => None,
            });
        }
        if out.iter().any(Option::is_none) {
            warn!(group = %self.name, member = %self.members[i].name, "{key}: damaged blocks there; using other members' shards");
            self.members[i].behind.store(true, Ordering::Release);
        }
        Ok(out)
    }

    /// The data pieces of blocks `b0..=b1`, from any `k` good pieces of each block.
    fn blocks(&self, key: &str, g: &Geometry, b0: usize, b1: usize) -> Result<Vec<Vec<Vec<u8>>>> {
        let count = b1 - b0 + 1;
        let mut have: Vec<BTreeMap<usize, Vec<u8>>> = vec![BTreeMap::new(); count];
        let mut order = self.read_order().into_iter();
        let mut errors = Vec::new();
        loop {
            let short = have
                .iter()
                .map(|h| g.k.saturating_sub(h.len()))
                .max()
                .unwrap_or(0);
            if short == 0 {
                break;
            }
            let ask: Vec<usize> = order.by_ref().take(short).collect();
            if ask.is_empty() {
                let worst = have.iter().map(BTreeMap::len).min().unwrap_or(0);
                if !errors.is_empty() && worst == 0 {
                    return Err(Self::pick(errors, || Error::Format(String::new())));
                }
                return Err(Error::Damaged {
                    object: key.to_owned(),
                    detail: format!(
                        "only {worst} good shards of a block could be read from group {}, and {} are needed{}",
                        self.name,
                        g.k,
                        errors.first().map(|e| format!(" ({e})")).unwrap_or_default()
                    ),
                });
            }
            for (i, r) in each(&ask, |i| self.pieces(key, g, i, b0, b1)) {
                match r {
                    Ok(pieces) => {
                        for (n, p) in pieces.into_iter().enumerate() {
                            if let Some(p) = p {
                                have[n].insert(i, p);
                            }
                        }
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        have.iter()
            .map(|h| {
                restore_block(g, h).ok_or_else(|| Error::Damaged {
                    object: key.to_owned(),
                    detail: "its shards do not decode".into(),
                })
            })
            .collect()
    }

    fn get_pack_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let g = self.geometry_of(key)?;
        let end = (offset + len).min(g.len);
        if offset >= end {
            return Ok(Vec::new());
        }
        let bb = g.block_bytes() as u64;
        let (b0, b1) = ((offset / bb) as usize, ((end - 1) / bb) as usize);
        let blocks = self.blocks(key, &g, b0, b1)?;
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (n, pieces) in blocks.iter().enumerate() {
            g.gather(pieces, b0 + n, offset, end, &mut out);
        }
        Ok(out)
    }

    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        if is_pack(key) {
            self.get_pack_range(key, 0, u64::MAX / 2)
        } else {
            self.get_whole(key)
        }
    }

    pub fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        if is_pack(key) {
            self.get_pack_range(key, offset, len)
        } else {
            let all = self.get_whole(key)?;
            let from = (offset as usize).min(all.len());
            let to = (offset.saturating_add(len) as usize).min(all.len());
            Ok(all[from..to].to_vec())
        }
    }

    /// Every member's listing of `prefix` (None for a member that did not answer); at least
    /// `k` must answer.
    fn listings(&self, prefix: &str) -> Result<Vec<Option<Listing>>> {
        let mut out = vec![None; self.n()];
        let mut errors = Vec::new();
        for (i, r) in each(&self.all(), |i| self.on(i, |s| s.list(prefix))) {
            match r {
                Ok(l) => out[i] = Some(l),
                Err(e) => errors.push(e),
            }
        }
        let answered = out.iter().filter(|l| l.is_some()).count();
        if answered < self.k {
            return Err(self.short("answered", answered, errors));
        }
        Ok(out)
    }

    /// What the members hold under `prefix`, together: packs with their shards' size, other
    /// objects with their own.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let mut all: BTreeMap<String, u64> = BTreeMap::new();
        for l in self.listings(prefix)?.into_iter().flatten() {
            for (key, size) in l {
                let size = if is_pack(&key) {
                    size
                } else {
                    size.saturating_sub(WHOLE_HEADER as u64)
                };
                let e = all.entry(key).or_insert(size);
                *e = (*e).max(size);
            }
        }
        Ok(all.into_iter().collect())
    }

    /// Packs fewer than `k` members hold (with how many do): unreadable though listed. A
    /// member that does not answer counts as holding them (verify says it was not checked).
    pub fn short_packs(&self) -> Result<HashMap<String, usize>> {
        let listings = self.listings("data/")?;
        // A member that did not answer may hold it.
        let away = listings.iter().filter(|l| l.is_none()).count();
        let mut held: HashMap<String, usize> = HashMap::new();
        for l in listings.into_iter().flatten() {
            for (key, _) in l {
                *held.entry(key).or_default() += 1;
            }
        }
        held.retain(|_, n| *n + away < self.k);
        Ok(held)
    }

    /// What a listing shows for a pack of `len` bytes.
    pub fn listed_size(&self, len: u64) -> u64 {
        Geometry::of(self.k, self.n(), len).shard_size()
    }

    pub fn exists(&self, key: &str) -> Result<bool> {
        // An object that was stored is on at least k members: once n - k + 1 say no, it is not.
        let mut no = 0;
        let mut errors = Vec::new();
        for i in self.read_order() {
            match self.on(i, |s| s.exists(key)) {
                Ok(true) => return Ok(true),
                Ok(false) => no += 1,
                Err(e) => errors.push(e),
            }
            if no > self.n() - self.k {
                return Ok(false);
            }
        }
        Err(Self::pick(errors, || Error::Format("no members".into())))
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        let results = each(&self.all(), |i| self.on(i, |s| s.delete(key)));
        let errors: Vec<Error> = results.into_iter().filter_map(|(_, r)| r.err()).collect();
        if errors.is_empty() {
            self.half_deleted.lock().remove(key);
            self.geometry.lock().remove(key);
            return Ok(());
        }
        self.half_deleted.lock().insert(key.to_owned());
        let e = Self::pick(errors, || Error::Format(String::new()));
        Err(Error::Group {
            context: format!(
                "group {}: {key} is deleted only while every member answers (none may miss a delete)",
                self.name
            ),
            source: Box::new(e),
        })
    }

    pub fn delete_briefly(&self, key: &str, limit: std::time::Duration) -> Result<()> {
        let results = each(&self.all(), |i| {
            self.on(i, |s| s.delete_briefly(key, limit))
        });
        match results.into_iter().find_map(|(_, r)| r.err()) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    pub fn is_empty(&self) -> Result<bool> {
        let mut errors = Vec::new();
        let mut answered = 0;
        for (_, r) in each(&self.all(), |i| self.on(i, |s| s.is_empty())) {
            match r {
                Ok(false) => return Ok(false),
                Ok(true) => answered += 1,
                Err(e) => errors.push(e),
            }
        }
        if answered == 0 {
            return Err(Self::pick(errors, || Error::Format("no members".into())));
        }
        Ok(true)
    }

    /// Runs `f` on every member at once; Ok once `k` of them did it (`what` says what, in
    /// the error).
    pub fn each_member(&self, what: &str, f: impl Fn(&Single) -> Result<()> + Sync) -> Result<()> {
        let mut answered = 0;
        let mut errors = Vec::new();
        for (_, r) in each(&self.all(), |i| self.on(i, &f)) {
            match r {
                Ok(()) => answered += 1,
                Err(e) => errors.push(e),
            }
        }
        if answered >= self.k {
            Ok(())
        } else {
            Err(self.short(what, answered, errors))
        }
    }

    /// Whether `k` members can be used now.
    pub fn check_present(&self) -> Result<()> {
        self.each_member("are there", Single::check_present)
    }

    /// Brings the members that missed writes (and answer again) up to what the others hold:
    /// whole objects copied from a good copy, shards rebuilt from `k` others. Never deletes.
    pub fn catch_up(&self) -> Result<()> {
        let pause = self.pause.lock().clone();
        let due: Vec<usize> = (0..self.n())
            .filter(|&i| self.members[i].due(&pause))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        self.reconcile(due, false, true, &|_, _| {}).map(|_| ())
    }

    /// Member `name`, new in the group (in place of another), gets the group's config: from
    /// then on it counts as the group's own, behind until [`Self::fill_member`] or the drains'
    /// catch-up brings it the rest.
    pub fn seat_member(&self, name: &str) -> Result<()> {
        let i = self.index_of(name)?;
        let config = self.copy_for(i, "config")?;
        // Empty, or this group's share from an earlier try: anything else would be spread
        // to the others as if it were the group's.
        let held = self.on(i, |s| s.list(""))?;
        if held.iter().any(|(k, _)| !k.starts_with("locks/"))
            && self.on(i, |s| s.get("config")).ok().as_ref() != Some(&config)
        {
            return Err(Error::Format(format!(
                "{name}'s folder for group {} is not empty and holds no share of it; give a \
                 member whose folder for it is empty or new",
                self.name
            )));
        }
        self.on(i, |s| s.put("config", config))
    }

    /// Brings member `name` everything the others hold (copies, shards rebuilt from `k`
    /// others), telling `progress` (objects done, objects in all). Returns how many it still
    /// lacks: those wait for the drains' catch-up.
    pub fn fill_member(&self, name: &str, progress: &dyn Fn(u64, u64)) -> Result<u64> {
        let i = self.index_of(name)?;
        let found = self.reconcile(vec![i], false, true, progress)?;
        match found.into_iter().next() {
            Some(Finding {
                away: Some(why), ..
            }) => Err(Error::Group {
                context: format!("group {}: {name} did not answer", self.name),
                source: Box::new(Error::Format(why)),
            }),
            Some(f) => Ok(f.left),
            None => Ok(0),
        }
    }

    pub fn delete_member_folders(&self) -> Vec<(String, Option<String>)> {
        each(&self.all(), |i| self.on(i, Single::delete_all))
            .into_iter()
            .map(|(i, r)| (self.members[i].name.clone(), r.err().map(|e| e.to_string())))
            .collect()
    }

    fn index_of(&self, name: &str) -> Result<usize> {
        self.members
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| Error::Format(format!("{name} is not a member of group {}", self.name)))
    }

    /// Every member against what the others hold: what it lacks, and with `read` what it
    /// holds damaged (every object read and checked); with `repair` each is rebuilt from the
    /// others. Per member, the objects found.
    pub fn check(&self, read: bool, repair: bool) -> Result<Vec<Finding>> {
        self.reconcile(self.all(), read, repair, &|_, _| {})
    }

    fn reconcile(
        &self,
        behind: Vec<usize>,
        scrub: bool,
        repair: bool,
        progress: &dyn Fn(u64, u64),
    ) -> Result<Vec<Finding>> {
        let listings = self.listings("")?;
        let mut holders: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, l) in listings.iter().enumerate() {
            for (key, _) in l.iter().flatten() {
                if key.starts_with("locks/") {
                    continue;
                }
                holders.entry(key.clone()).or_default().push(i);
            }
        }
        let half_deleted = self.half_deleted.lock().clone();
        let mut found = Vec::new();
        for i in behind {
            if listings[i].is_none() {
                let m = &self.members[i];
                m.later();
                found.push(Finding {
                    member: m.name.clone(),
                    keys: Vec::new(),
                    left: 0,
                    away: Some(m.state.lock().last_error.clone().unwrap_or_default()),
                });
                continue;
            }
            let mut bad: Vec<String> = Vec::new();
            for (key, who) in &holders {
                // A pack on fewer than k members was never stored (its write failed, and the
                // drain sends it again): nothing to rebuild it from.
                if half_deleted.contains(key) || (is_pack(key) && who.len() < self.k) {
                    continue;
                }
                // Lacking, or (reading) held damaged.
                if !who.contains(&i) || (scrub && !self.member_copy_good(i, key)?) {
                    bad.push(key.clone());
                }
            }
            let member = &self.members[i];
            if !bad.is_empty() {
                info!(group = %self.name, member = %member.name, "{} objects to bring there", bad.len());
            }
            let mut left = bad.len() as u64;
            if repair {
                let total = left;
                for (done, key) in bad.iter().enumerate() {
                    progress(done as u64, total);
                    if self.paused() {
                        return Err(Error::Paused);
                    }
                    let object = match self.copy_for(i, key) {
                        Ok(o) => o,
                        Err(e) => {
                            warn!(group = %self.name, member = %member.name, "cannot read {key} from the other members to bring it there: {e}");
                            continue;
                        }
                    };
                    match self.on(i, |s| s.put(key, object)) {
                        Ok(()) => left -= 1,
                        Err(e) => {
                            warn!(group = %self.name, member = %member.name, "cannot bring {key} there yet: {e}");
                            break;
                        }
                    }
                }
            }
            {
                let mut st = member.state.lock();
                st.missing = left;
                if left == 0 {
                    st.complete_ns = Some(crate::vault::now_ns());
                }
                if scrub {
                    st.checked_ns = Some(crate::vault::now_ns());
                }
            }
            if left == 0 {
                member.behind.store(false, Ordering::Release);
                *member.retry.lock() = (None, RETRY_FIRST);
            } else {
                member.later();
            }
            found.push(Finding {
                member: member.name.clone(),
                keys: bad,
                left,
                away: None,
            });
        }
        Ok(found)
    }

    /// Whether member `i`'s copy of `key` reads back whole and matches its hashes.
    fn member_copy_good(&self, i: usize, key: &str) -> Result<bool> {
        let bytes = match self.on(i, |s| s.get(key)) {
            Ok(b) => b,
            Err(e) if crate::dest::is_unreachable(&e) || matches!(e, Error::Paused) => {
                return Err(e)
            }
            Err(_) => return Ok(false),
        };
        if !is_pack(key) {
            return Ok(bytes.len() >= WHOLE_HEADER
                && &bytes[..8] == WHOLE_MAGIC
                && bytes[8..WHOLE_HEADER] == whole_hash(key, &bytes[WHOLE_HEADER..]));
        }
        let Some((g, index)) = Geometry::read_header(&bytes) else {
            return Ok(false);
        };
        if index != i || g.k != self.k || g.n != self.n() || bytes.len() as u64 != g.shard_size() {
            return Ok(false);
        }
        Ok((0..g.blocks).all(|b| {
            let at = SHARD_HEADER + b * g.stride();
            let piece = &bytes[at..at + g.piece];
            bytes[at + g.piece..at + g.stride()] == piece_hash(key, i, b, piece)
        }))
    }

    /// Member `i`'s copy of `key`, made from the others.
    fn copy_for(&self, i: usize, key: &str) -> Result<Vec<u8>> {
        let object = if is_pack(key) {
            let pack = self.get(key)?;
            encode(key, self.k, self.n(), &pack)?.swap_remove(i)
        } else {
            let body = self.get_whole(key)?;
            let mut o = Vec::with_capacity(WHOLE_HEADER + body.len());
            o.extend_from_slice(WHOLE_MAGIC);
            o.extend_from_slice(&whole_hash(key, &body));
            o.extend_from_slice(&body);
            o
        };
        Ok(object)
    }

    /// Each member as last seen, for status.
    pub fn report(&self) -> Vec<MemberState> {
        self.members
            .iter()
            .map(|m| {
                let mut st = m.state.lock().clone();
                st.behind = m.behind.load(Ordering::Acquire);
                st
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
            .collect()
    }

    fn decode_all(
        key: &str,
        shards: &[Option<Vec<u8>>],
        k: usize,
        n: usize,
        len: u64,
    ) -> Option<Vec<u8>> {
        let g = Geometry::of(k, n, len);
        let mut out = Vec::new();
        for b in 0..g.blocks {
            let mut have = BTreeMap::new();
            for (i, s) in shards.iter().enumerate() {
                let Some(s) = s else { continue };
                let at = SHARD_HEADER + b * g.stride();
                let p = &s[at..at + g.piece];
                if s[at + g.piece..at + g.stride()] == piece_hash(key, i, b, p) {
                    have.insert(i, p.to_vec());
                }
            }
            let pieces = restore_block(&g, &have)?;
            g.gather(&pieces, b, 0, len, &mut out);
        }
        Some(out)
    }

    #[test]
    fn any_k_shards_give_the_pack_back_and_fewer_do_not() {
        for (k, n) in [(2, 3), (2, 4), (3, 5), (1, 2), (3, 3)] {
            for len in [1usize, 28, 100, 4096, 200_000, 3 * MAX_PIECE * k + 17] {
                let p = pack(len, k as u8);
                let shards = encode("data/ab/x", k, n, &p).unwrap();
                let g = Geometry::of(k, n, len as u64);
                assert!(shards.iter().all(|s| s.len() as u64 == g.shard_size()));
                // Every subset of members.
                for mask in 0u32..(1 << n) {
                    let present: Vec<Option<Vec<u8>>> = (0..n)
                        .map(|i| (mask & (1 << i) != 0).then(|| shards[i].clone()))
                        .collect();
                    let got = decode_all("data/ab/x", &present, k, n, len as u64);
                    if mask.count_ones() as usize >= k {
                        assert_eq!(
                            got.as_deref(),
                            Some(&p[..]),
                            "{k} of {n}, {len} bytes, members {mask:b}"
                        );
                    } else {
                        assert!(got.is_none(), "{k} of {n}: {mask:b} must not be enough");
                    }
                }
            }
        }
    }

    #[test]
    fn a_flipped_byte_is_found_and_worked_around() {
        let (k, n) = (2, 3);
        let p = pack(300_000, 7);
        let mut shards: Vec<Option<Vec<u8>>> = encode("data/k", k, n, &p)
            .unwrap()
            .into_iter()
            .map(Some)
            .collect();
        let s0 = shards[0].as_mut().unwrap();
        s0[SHARD_HEADER + 5] ^= 1;
        assert_eq!(
            decode_all("data/k", &shards, k, n, p.len() as u64).as_deref(),
            Some(&p[..])
        );
        // Two damaged shards in the same block: not enough left.
        let s1 = shards[1].as_mut().unwrap();
        s1[SHARD_HEADER + 9] ^= 0x80;
        assert!(decode_all("data/k", &shards, k, n, p.len() as u64).is_none());
        // A shard under another key does not pass as this one's.
        let other: Vec<Option<Vec<u8>>> = encode("data/other", k, n, &p)
            .unwrap()
            .into_iter()
            .map(Some)
            .collect();
        assert!(decode_all("data/k", &other, k, n, p.len() as u64).is_none());
    }

    #[test]
    fn no_shard_holds_a_run_longer_than_the_unit() {
        // A known plaintext of 64 bytes: in no shard, nor any 32 bytes of it in a row (16 may
        // be there, and then a 17th by chance).
        let mut p = pack(50_000, 3);
        let known: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(97) ^ 0x5a).collect();
        for at in [0usize, 1000, 33_333, 49_936] {
            p[at..at + 64].copy_from_slice(&known);
        }
        for (k, n) in [(2, 3), (3, 5)] {
            for (i, s) in encode("data/p", k, n, &p).unwrap().iter().enumerate() {
                let hit = s
                    .windows(2 * UNIT)
                    .position(|w| known.windows(2 * UNIT).any(|kw| kw == w));
                assert_eq!(
                    hit, None,
                    "{k} of {n}: shard {i} holds 32 bytes of the known text"
                );
                if i < k {
                    // The test looks where it means to: data shards do hold 16 bytes of it.
                    assert!(known
                        .windows(UNIT)
                        .any(|kw| s.windows(UNIT).any(|w| w == kw)));
                }
            }
        }
    }

    #[test]
    fn a_range_needs_only_its_blocks() {
        let (k, n) = (2, 3);
        let p = pack(5 * MAX_PIECE * k + 1234, 9);
        let g = Geometry::of(k, n, p.len() as u64);
        assert_eq!(g.piece, MAX_PIECE);
        let shards = encode("data/r", k, n, &p).unwrap();
        for (from, to) in [
            (0u64, 10u64),
            (131_000, 140_000),
            (p.len() as u64 - 5, p.len() as u64),
        ] {
            let bb = g.block_bytes() as u64;
            let mut out = Vec::new();
            for b in (from / bb) as usize..=((to - 1) / bb) as usize {
                let pieces: Vec<Vec<u8>> = (0..k)
                    .map(|i| {
                        let at = SHARD_HEADER + b * g.stride();
                        shards[i][at..at + g.piece].to_vec()
                    })
                    .collect();
                g.gather(&pieces, b, from, to, &mut out);
            }
            assert_eq!(out, &p[from as usize..to as usize]);
        }
        assert!(Geometry::read_header(&shards[2]).is_some_and(|(h, i)| h == g && i == 2));
    }

    /// A group of local folders `<root>/m<i>/<folder>`.
    fn folders(
        root: &std::path::Path,
        folder: &str,
        k: usize,
        n: usize,
        rt: &tokio::runtime::Runtime,
    ) -> Group {
        let members = (0..n)
            .map(|i| {
                let url = root.join(format!("m{i}/{folder}"));
                std::fs::create_dir_all(url.parent().unwrap()).unwrap();
                let (url, rt) = (url.to_str().unwrap().to_owned(), rt.handle().clone());
                Member::new(
                    format!("m{i}"),
                    true,
                    Policy::default(),
                    Box::new(move || {
                        let none = (crate::Access::default(), crate::Secrets::default());
                        Single::connect(&url, &none.0, &none.1, rt.clone(), true).map(|s| (s, true))
                    }),
                )
            })
            .collect();
        Group::new(folder.into(), k, members).unwrap()
    }

    #[test]
    fn a_copy_to_a_new_shape_leaves_out_unstored_packs_and_its_folders_alone_restore_it() {
        let rt = crate::dest::runtime().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let from = crate::Store::of_group(folders(tmp.path(), "g", 2, 3, &rt));
        from.put("config", b"the vault's config".to_vec()).unwrap();
        from.put("index/1", b"an index".to_vec()).unwrap();
        from.put("data/aa/stored", pack(300_000, 1)).unwrap();
        from.put("data/bb/unstored", pack(5_000, 2)).unwrap();
        // A write two members missed: fewer than k hold it, so it was never stored.
        for i in 0..2 {
            std::fs::remove_file(tmp.path().join(format!("m{i}/g/data/bb/unstored"))).unwrap();
        }
        let to = crate::Store::of_group(folders(tmp.path(), "g.2", 3, 4, &rt));
        assert_eq!(from.copy_into(&to, &|_, _| {}).unwrap(), 3);
        assert_eq!(to.get("data/aa/stored").unwrap(), pack(300_000, 1));
        assert!(!tmp.path().join("m3/g.2/data/bb/unstored").exists());
        // Any three of the new folders, named in any order, give the shape and the pack back;
        // two are too few.
        let url = |i: usize| {
            tmp.path()
                .join(format!("m{i}/g.2"))
                .to_str()
                .unwrap()
                .to_owned()
        };
        let none = (crate::Access::default(), crate::Secrets::default());
        let urls = format!("{},{},{}", url(3), url(0), url(2));
        let found =
            crate::Store::connect_group(&urls, &none.0, &none.1, rt.handle().clone()).unwrap();
        assert_eq!(found.get("data/aa/stored").unwrap(), pack(300_000, 1));
        assert_eq!(found.get("index/1").unwrap(), b"an index");
        let urls = format!("{},{}", url(3), url(1));
        let two = crate::Store::connect_group(&urls, &none.0, &none.1, rt.handle().clone());
        assert!(two.is_err_and(|e| e.to_string().contains("3 are needed")));
    }
}
