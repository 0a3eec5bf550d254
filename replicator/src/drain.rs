//! The drain of one vault: records after the destination's cursor become one log segment,
//! with the contents of the files they changed read from the drive, chunked, deduplicated and
//! packed. The cursor moves only after the segment (and every pack it refers to) is durable.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::format::{
    Content, Pending, Position, Segment, VChange, VMeta, VRecord, KIND_DIR, KIND_FILE,
};
use crate::lane::Lane;
use crate::maintain::WriteLease;
use crate::source::{read_file, ReadOutcome};
use crate::tree::Tree;
use crate::vault::{now_ns, Head, LogObject, LogSince, Vault};

/// Records taken into one segment at most.
const BATCH: usize = 100_000;
/// A checkpoint is written after at least this many segments, once they hold more records than
/// the checkpoint has files (a restore then replays at most about a checkpoint's worth), and
/// after `CHECKPOINT_MAX` segments whatever they hold. Checkpoints thus take at most about as
/// much room as the segments, however many drains there are.
const CHECKPOINT_EVERY: u64 = 256;
const CHECKPOINT_MAX: u64 = 16_384;

/// [`CHECKPOINT_EVERY`], or `BACKPOCKET_CHECKPOINT_EVERY` (tests that look at the checkpoints
/// a drain writes from its own tree, and tuning).
fn checkpoint_every() -> u64 {
    std::env::var("BACKPOCKET_CHECKPOINT_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CHECKPOINT_EVERY)
}
/// How often a file that keeps changing while read is tried before the drain gives up for now.
const TORN_RETRIES: u32 = 8;

/// What one drain did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    pub records: u64,
    pub files: u64,
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    pub new_chunks: u64,
    /// The cursor after the drain.
    pub cursor: u64,
    /// Whether a full checkpoint was written (a new destination, or a new journal).
    pub checkpoint: bool,
    /// Large files whose contents this drain brought after a point that waited for them.
    pub late_files: u64,
    /// Large files whose contents are still on their way after it.
    pub in_flight: u64,
}

impl DrainReport {
    /// Adds what a later drain did (the cursor and the files in flight are its).
    pub fn absorb(&mut self, r: &DrainReport) {
        self.records += r.records;
        self.files += r.files;
        self.bytes_read += r.bytes_read;
        self.bytes_uploaded += r.bytes_uploaded;
        self.new_chunks += r.new_chunks;
        self.checkpoint |= r.checkpoint;
        self.late_files += r.late_files;
        self.cursor = r.cursor;
        self.in_flight = r.in_flight;
    }
}

/// Live counters for a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    pub files_total: AtomicU64,
    pub files_done: AtomicU64,
    pub bytes_total: AtomicU64,
    /// Bytes of the pocket's files at the destination: counted as their packs land (or at
    /// once for chunks it holds already), so the rate is what really arrives.
    pub bytes_done: Arc<AtomicU64>,
}

/// Where the drain reads from.
#[derive(Debug)]
pub struct Source<'a> {
    pub pocket: &'a Path,
    pub journal: &'a Path,
    pub dest: &'a str,
    /// Which file of the journal a number of the drive is.
    pub ids: &'a journal::DriveIds,
    pub cancel: &'a AtomicBool,
    pub progress: &'a Progress,
}

impl Source<'_> {
    /// Where a path of the pocket is on the drive (names the drive cannot spell are stored
    /// under look-alikes there).
    pub(crate) fn abs(&self, rel: &[u8]) -> PathBuf {
        crate::os::join(self.pocket, &self.ids.path_to_drive(rel))
    }

    pub(crate) fn check_cancel(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// A vault destination's drain state: the vault and its tree at the destination's cursor.
#[derive(Debug)]
pub struct VaultDrain {
    pub vault: Arc<Vault>,
    /// Large files read beside the drain.
    lane: Lane,
    state: Option<Option<(Tree, Head)>>,
    /// The log after the newest checkpoint.
    since: LogSince,
    /// Held while this drain may write the vault.
    lease: Option<WriteLease>,
    workers: usize,
    /// The pocket's config file, and what of it the vault holds.
    config_path: PathBuf,
    config_sent: Option<Vec<u8>>,
    /// Where the destination's state is kept (`.backpocket`, name), and the files in flight
    /// it lists.
    state_file: Option<(PathBuf, String)>,
    noted: Vec<(u64, u64)>,
    /// How often the lane found each file gone while the tree still has it.
    gone_tries: HashMap<u64, u32>,
    /// When a joined device last checked that it may still write (`devices remove`).
    writer_checked: Option<std::time::Instant>,
}

impl Drop for VaultDrain {
    fn drop(&mut self) {
        self.lane.stop();
        if let Some(l) = self.lease.take() {
            l.release(&self.vault);
        }
    }
}

impl VaultDrain {
    pub fn new(vault: Vault, config_path: PathBuf) -> VaultDrain {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 8);
        VaultDrain {
            vault: Arc::new(vault),
            lane: Lane::new(),
            state: None,
            since: LogSince::default(),
            lease: None,
            workers,
            config_path,
            config_sent: None,
            state_file: None,
            // Unlike any list: the first drain writes what it finds (clearing a stale one).
            noted: vec![(u64::MAX, u64::MAX)],
            gone_tries: HashMap::new(),
            writer_checked: None,
        }
    }

    /// Keeps the destination's state (`.backpocket/dest/<name>.json`) told of large files
    /// in flight.
    pub fn with_state(mut self, meta_dir: &Path, name: &str) -> VaultDrain {
        self.state_file = Some((meta_dir.to_owned(), name.to_owned()));
        self
    }

    /// Writes the files in flight to the destination's state when they changed; called
    /// before the cursor moves past their records.
    fn note_in_flight(&mut self, tree: &Tree, pocket: &Path) -> Result<()> {
        let Some((meta_dir, name)) = &self.state_file else {
            return Ok(());
        };
        let mut now: Vec<Pending> = tree.pending_list();
        now.sort_by_key(|p| p.seq);
        let ids: Vec<(u64, u64)> = now.iter().map(|p| (p.file, p.seq)).collect();
        if ids == self.noted {
            return Ok(());
        }
        let paths: HashMap<u64, Vec<u8>> = if now.is_empty() {
            HashMap::new()
        } else {
            tree.paths().into_iter().map(|(p, f)| (f, p)).collect()
        };
        let mut st = crate::state::DestState::load(meta_dir, name);
        st.in_flight = now
            .iter()
            .map(|p| {
                let rel = paths.get(&p.file).cloned().unwrap_or_default();
                crate::state::InFlight {
                    file: p.file,
                    seq: p.seq,
                    time_ns: p.time_ns,
                    bytes: std::fs::symlink_metadata(crate::os::join(pocket, &rel))
                        .map_or(0, |m| m.len()),
                    path: String::from_utf8_lossy(&rel).into_owned(),
                }
            })
            .collect();
        st.save(meta_dir, name)?;
        self.noted = ids;
        Ok(())
    }

    /// Stores the pocket's config in the vault when it changed (a destination added while
    /// mounted, say): whoever rebuilds the drive from this vault gets the current one.
    fn send_config(&mut self) -> Result<()> {
        let Ok(text) = std::fs::read(&self.config_path) else {
            return Ok(());
        };
        if self.config_sent.as_ref() != Some(&text) {
            self.vault.put_pocket_config(&text)?;
            self.config_sent = Some(text);
        }
        Ok(())
    }

    /// Runs maintenance on the vault (the drain's own lease does not stand in its way).
    pub fn maintain(
        &mut self,
        opts: &crate::maintain::MaintainOptions,
        interrupt: &dyn Fn() -> bool,
        progress: &Progress,
    ) -> Result<crate::maintain::MaintainReport> {
        let own = self.lease.as_ref().map(|l| l.key().to_owned());
        if !self.lane.reap() {
            return Err(Error::Busy(
                "large files are still being uploaded; maintenance waits for them".into(),
            ));
        }
        let vault = Arc::get_mut(&mut self.vault).ok_or_else(|| {
            Error::Busy("the vault is in use by the upload of a large file".into())
        })?;
        let res = crate::maintain::maintain(vault, opts, own.as_deref(), interrupt, progress);
        if res.is_err() {
            self.state = None;
        }
        res
    }

    /// The vault's newest head, once loaded.
    pub fn head(&self) -> Option<&Head> {
        self.state.as_ref().and_then(|s| s.as_ref()).map(|(_, h)| h)
    }

    /// Whether a drain has more to do without a new journal record: large files uploading, or
    /// their contents ready to be written.
    pub fn settling(&self) -> bool {
        self.lane.busy()
            || self
                .state
                .as_ref()
                .and_then(|s| s.as_ref())
                .is_some_and(|(t, _)| !t.pending.is_empty())
    }

    /// Drains what is pending, one segment's worth. Ok(None) when nothing was pending.
    pub fn drain_once(&mut self, src: &Source<'_>) -> Result<Option<DrainReport>> {
        let res = self.drain_inner(src);
        if res.is_err() {
            // Whatever was applied in memory may be ahead of the vault: reload next time.
            self.state = None;
        }
        res
    }

    fn drain_inner(&mut self, src: &Source<'_>) -> Result<Option<DrainReport>> {
        self.vault.store.check_present()?;
        // A device that joined may have been removed by another since it opened the vault:
        // looked at again every half minute (one small read), never for a vault of one.
        if self.vault.has_devices()
            && self
                .writer_checked
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
        {
            self.vault.check_writer(self.vault.device())?;
            self.writer_checked = Some(std::time::Instant::now());
        }
        self.send_config()?;
        let reader = journal::Reader::open(src.journal)?;
        let jid = reader.journal_id()?;
        // On exFAT and FAT the journal keeps modes, owners and exact times, not the drive.
        let keeping = journal::Keeping::of(&reader)?;
        match &mut self.lease {
            Some(l) => l.renew(&self.vault)?,
            None => self.lease = Some(WriteLease::take(&self.vault)?),
        }
        if self.state.is_none() {
            self.vault.load_index()?;
            let loaded = self.vault.load_newest()?;
            self.since = loaded.as_ref().map(|r| r.since).unwrap_or_default();
            // Files still in flight when the last drain stopped are read again.
            self.lane.stop();
            if let Some(r) = &loaded {
                if r.head.journal_id == jid {
                    for p in r.tree.pending.values() {
                        self.send_large(src, p.file, r.head.seq, jid);
                    }
                }
            }
            self.state = Some(loaded.map(|r| (r.tree, r.head)));
        }
        let mut cursor = reader.cursor(src.dest)?;
        let head = self.head().cloned();
        if let Some(h) = &head {
            // A drain killed between the segment and the cursor: the vault is the truth.
            if h.journal_id == jid && cursor.is_none_or(|c| h.seq > c) {
                info!(
                    dest = src.dest,
                    seq = h.seq,
                    "the destination holds more than the cursor said; moving the cursor"
                );
                journal::set_cursor(src.journal, src.dest, h.seq)?;
                cursor = Some(h.seq);
            }
        }
        let needs_checkpoint = match (&head, cursor) {
            (None, _) | (_, None) => true,
            (Some(h), Some(c)) => h.journal_id != jid || c != h.seq,
        };
        if needs_checkpoint {
            self.lane.stop();
            return self.checkpoint_from_journal(src, &reader, head).map(Some);
        }
        let cursor = cursor.unwrap_or(0);
        let mut records = reader.records_after(cursor, BATCH)?;
        if records.first().is_some_and(|r| r.seq != cursor + 1) {
            // Compaction removed records this destination never took: start from the catalog.
            warn!(
                dest = src.dest,
                "records after the cursor were compacted away; writing a checkpoint"
            );
            self.lane.stop();
            return self.checkpoint_from_journal(src, &reader, head).map(Some);
        }
        let finished = self.lane.take_done();
        let (mut tree, head) = self
            .state
            .take()
            .flatten()
            .ok_or_else(|| Error::Format("internal: the vault's tree was not loaded".into()))?;
        // Contents the lane brought that a point waits for: they go first, as records of the
        // change they complete (read after it, so exact for every point that waits for it).
        let mut late = Vec::new();
        let mut lane_error = None;
        let mut regone = Vec::new();
        let mut report = DrainReport::default();
        for d in finished {
            report.bytes_uploaded += d.uploaded;
            report.new_chunks += d.new_chunks;
            match d.outcome {
                Ok(Outcome::Done(content, meta)) => {
                    let resolves = d.job.journal_id == jid
                        && tree.alive(d.job.file)
                        && tree
                            .pending
                            .get(&d.job.file)
                            .is_some_and(|p| p.seq <= d.job.asked);
                    if resolves {
                        self.gone_tries.remove(&d.job.file);
                        report.files += 1;
                        report.bytes_read += content.data_bytes();
                        let p = tree.pending.remove(&d.job.file).expect("checked above");
                        // Where the journal keeps what the drive cannot (a mode changed while
                        // the file was in flight), its catalog has it now, as a POSIX drive
                        // would have it beside the bytes just read: the tree's is older.
                        let meta = match keeping.map(|_| reader.file(p.file)).transpose()? {
                            Some(Some(now)) => meta.kept(keeping, &VMeta::from(now)),
                            _ => tree.kept(p.file, meta, keeping),
                        };
                        // First in the segment: applied now, before the batch's records.
                        let change = self.contents_record(&tree, p.file, meta, content);
                        tree.apply(&change);
                        late.push(VRecord {
                            seq: p.seq,
                            time_ns: p.time_ns,
                            change,
                        });
                    }
                }
                // Its removal is in the journal, or will be (a drain soon drops it from the
                // tree); until then, it is looked for again, as the drain does.
                Ok(Outcome::Gone) => {
                    if tree.pending.contains_key(&d.job.file) && tree.alive(d.job.file) {
                        let tries = self.gone_tries.entry(d.job.file).or_default();
                        *tries += 1;
                        if *tries > 40 {
                            let path = tree.path_of(d.job.file).unwrap_or_default();
                            lane_error.get_or_insert(Error::Source {
                                path: crate::os::join(src.pocket, &path),
                                detail: "this changed file could not be found on the drive".into(),
                            });
                        } else {
                            regone.push(d.job.file);
                        }
                    }
                }
                Err(Error::Cancelled) => {}
                Err(e) => {
                    lane_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = lane_error {
            // The next drain loads the vault again and reads what is still in flight anew.
            return Err(e);
        }
        for file in regone {
            std::thread::sleep(Duration::from_millis(25));
            self.send_large(src, file, head.seq, jid);
        }
        if records.is_empty() && late.is_empty() {
            self.state = Some(Some((tree, head)));
            return Ok(None);
        }
        let mut applied = 0usize;
        let mut attempts = 0u32;
        // Apply, read contents; if a changed file is already gone from the drive, its removal
        // is in the journal (or about to be): take those records too and try again. Content
        // records are left to the contents read: a file whose contents stay in flight keeps
        // what the destination had of it.
        let (last_content, mut done, to_lane) = loop {
            for r in &records[applied..] {
                if is_birth(&r.change) {
                    // An inode number used again: what the old file was waited for is moot.
                    tree.pending.remove(&r.change.file());
                }
                if !matches!(r.change, journal::Change::Content { .. }) {
                    tree.apply(&VChange::from_journal(&r.change));
                }
            }
            applied = records.len();
            let mut last_content: HashMap<u64, usize> = HashMap::new();
            for (i, r) in records.iter().enumerate() {
                if is_birth(&r.change) {
                    // An inode number used again: what the old file asked for is moot.
                    last_content.remove(&r.change.file());
                }
                if let Some(file) = content_of(&r.change) {
                    last_content.insert(file, i);
                }
            }
            last_content.retain(|f, _| tree.files.get(f).is_some_and(|f| f.meta.kind == KIND_FILE));
            let (wanted, large) = self.split_large(src, &reader, last_content.keys().copied())?;
            let outcome = self.read_contents(src, &reader, &wanted, &mut report)?;
            if outcome.gone.is_empty() {
                break (last_content, outcome.done, large);
            }
            attempts += 1;
            if attempts > 40 {
                let first = outcome
                    .gone
                    .first()
                    .and_then(|id| tree.path_of(*id))
                    .unwrap_or_default();
                return Err(Error::Source {
                    path: crate::os::join(src.pocket, &first),
                    detail: format!(
                        "this and {} other changed files could not be found on the drive",
                        outcome.gone.len() - 1
                    ),
                });
            }
            let more =
                reader.records_after(records.last().map(|r| r.seq).unwrap_or(cursor), BATCH)?;
            if more.is_empty() {
                std::thread::sleep(Duration::from_millis(25));
            }
            records.extend(more);
        };
        let (end_seq, end_time) = records
            .last()
            .map_or((head.seq, head.time_ns), |r| (r.seq, r.time_ns));
        let late_n = late.len();
        let mut out = late;
        report.late_files = late_n as u64;
        let mut touched_dirs = BTreeSet::new();
        for (i, r) in records.iter().enumerate() {
            if !matches!(r.change, journal::Change::Content { .. }) {
                note_dirs(&r.change, &mut touched_dirs);
                out.push(VRecord {
                    seq: r.seq,
                    time_ns: r.time_ns,
                    change: VChange::from_journal(&r.change),
                });
            }
            // The file's contents go with its last content-bearing record of the batch.
            let Some(file) = content_of(&r.change) else {
                continue;
            };
            if last_content.get(&file) != Some(&i) {
                continue;
            }
            if to_lane.contains(&file) {
                // Read beside the drain: this point waits for it.
                tree.pending.insert(
                    file,
                    Pending {
                        file,
                        seq: r.seq,
                        time_ns: r.time_ns,
                    },
                );
                continue;
            }
            let Some((content, meta)) = done.remove(&file) else {
                continue;
            };
            let meta = match r.change.meta() {
                Some(m) => meta.kept(keeping, &VMeta::from(*m)),
                None => meta,
            };
            tree.pending.remove(&file);
            out.push(VRecord {
                seq: r.seq,
                time_ns: r.time_ns,
                change: VChange::Content {
                    file,
                    meta,
                    content,
                },
            });
        }
        // Folder times move with every entry made or removed in them, which the journal does
        // not record: take them as they are now.
        let folder_times = out.len();
        for dir in touched_dirs {
            if !tree.alive(dir) {
                continue;
            }
            let rel = if dir == tree.root {
                Some(Vec::new())
            } else {
                reader.path_of(dir)?
            };
            let Some(rel) = rel else { continue };
            if let Some(meta) = lstat_meta(
                src,
                &src.abs(&rel),
                if dir == tree.root { None } else { Some(dir) },
            ) {
                let meta = tree.kept(dir, meta, keeping);
                out.push(VRecord {
                    seq: end_seq,
                    time_ns: end_time,
                    change: VChange::SetAttr { file: dir, meta },
                });
            }
        }
        // The batch's contents and folder times, in the order a restore replays them; new
        // versions of large files as patches of the version before. The batch's other records
        // are in the tree already: applied again here, after the records that follow them, a
        // file's times would land on whatever later took its number (a symlink made under a
        // number just freed would become a file in this tree, and so in the next checkpoint).
        for (i, r) in out.iter_mut().enumerate().skip(late_n) {
            if let VChange::Content {
                file,
                meta,
                content,
            } = &r.change
            {
                if let Some(patch) = self.patch(&tree, *file, meta, content) {
                    r.change = patch;
                }
            }
            let contents = matches!(r.change, VChange::Content { .. } | VChange::Patch { .. });
            let folder_time = i >= folder_times && matches!(r.change, VChange::SetAttr { .. });
            if contents || folder_time {
                tree.apply(&r.change);
            }
        }
        let alive: Vec<u64> = tree.pending.keys().copied().collect();
        for f in alive {
            if !tree.alive(f) {
                tree.pending.remove(&f);
            }
        }
        let segment = Segment {
            pos: Position {
                gen: head.gen + 1,
                prev: head.hash,
                journal_id: jid,
                seq: end_seq,
                time_ns: end_time,
                written_ns: now_ns(),
            },
            first_seq: cursor + 1,
            records: out,
            pending: tree.pending_list(),
        };
        src.check_cancel()?;
        // Everything up to `end_seq` is in the journal: the lane's reads start after it.
        for &file in &to_lane {
            self.send_large(src, file, end_seq, jid);
        }
        // Never ahead of the journal: what the segment holds survives a power cut there too.
        journal::make_durable(src.journal)?;
        let records = segment.records.len() as u64;
        let mut new_head = self.vault.append_log(&head, &LogObject::Segment(segment))?;
        self.since.segments += 1;
        self.since.records += records;
        if self.since.segments >= CHECKPOINT_MAX
            || (self.since.segments >= checkpoint_every()
                && self.since.records >= self.since.checkpoint_files)
        {
            new_head = self.write_checkpoint(&tree, &new_head, jid, end_seq, end_time)?;
            report.checkpoint = true;
        }
        self.note_in_flight(&tree, src.pocket)?;
        platform::crash_point("before-cursor");
        journal::set_cursor(src.journal, src.dest, end_seq)?;
        report.records = end_seq - cursor;
        report.cursor = end_seq;
        report.in_flight = tree.pending.len() as u64;
        debug!(dest = src.dest, ?report, "segment written");
        self.state = Some(Some((tree, new_head)));
        Ok(Some(report))
    }

    /// A file's new contents as the log records them: a patch of its contents before when
    /// that is much smaller, else whole.
    fn contents_record(&self, tree: &Tree, file: u64, meta: VMeta, content: Content) -> VChange {
        self.patch(tree, file, &meta, &content)
            .unwrap_or(VChange::Content {
                file,
                meta,
                content,
            })
    }

    fn patch(&self, tree: &Tree, file: u64, meta: &VMeta, content: &Content) -> Option<VChange> {
        if self.vault.config.backpocket_vault < 3 || tree.broken.contains(&file) {
            return None;
        }
        let base = tree.files.get(&file)?.content.as_ref()?;
        let extents = content.patch_of(base)?;
        Some(VChange::Patch {
            file,
            meta: *meta,
            size: content.size,
            extents,
        })
    }

    /// Queues a file on the lane for large files.
    fn send_large(&mut self, src: &Source<'_>, file: u64, asked: u64, journal_id: i64) {
        self.lane.push(
            &self.vault,
            src,
            crate::lane::Job {
                file,
                asked,
                journal_id,
            },
        );
    }

    /// Splits the changed files into those read now and the large ones read beside the drain.
    fn split_large(
        &self,
        src: &Source<'_>,
        reader: &journal::Reader,
        files: impl Iterator<Item = u64>,
    ) -> Result<(Vec<u64>, BTreeSet<u64>)> {
        let mut now = Vec::new();
        let mut large = BTreeSet::new();
        let from = crate::lane::lane_from();
        for f in files {
            let size = match reader.path_of(f)? {
                Some(rel) => std::fs::symlink_metadata(src.abs(&rel)).map_or(0, |m| m.len()),
                None => 0,
            };
            if size >= from {
                large.insert(f);
            } else {
                now.push(f);
            }
        }
        Ok((now, large))
    }

    fn write_checkpoint(
        &mut self,
        tree: &Tree,
        head: &Head,
        jid: i64,
        seq: u64,
        time_ns: i64,
    ) -> Result<Head> {
        let cp = tree.to_checkpoint(Position {
            gen: head.gen + 1,
            prev: head.hash,
            journal_id: jid,
            seq,
            time_ns,
            written_ns: now_ns(),
        });
        self.since = LogSince {
            checkpoint_files: cp.files.len() as u64,
            ..LogSince::default()
        };
        self.vault.append_log(head, &LogObject::Checkpoint(cp))
    }

    /// Writes a full checkpoint from the journal's catalog now, reading every file of the
    /// pocket and sending the chunks the vault lacks (repair).
    pub(crate) fn rewrite_checkpoint(&mut self, src: &Source<'_>) -> Result<DrainReport> {
        self.vault.store.check_present()?;
        let reader = journal::Reader::open(src.journal)?;
        let head = self.vault.head()?;
        self.checkpoint_from_journal(src, &reader, head)
    }

    /// A full checkpoint from the journal's catalog: the start of a new destination, or of a
    /// vault continued by a new drive.
    fn checkpoint_from_journal(
        &mut self,
        src: &Source<'_>,
        reader: &journal::Reader,
        head: Option<Head>,
    ) -> Result<DrainReport> {
        let jid = reader.journal_id()?;
        // On exFAT and FAT the journal keeps modes, owners and exact times, not the drive.
        let keeping = journal::Keeping::of(reader)?;
        let mut report = DrainReport {
            checkpoint: true,
            ..DrainReport::default()
        };
        let mut attempts = 0;
        loop {
            let snap = reader.snapshot()?;
            let mut tree = Tree::from_snapshot(&snap);
            refresh_metadata(&mut tree, src, keeping);
            let wanted: Vec<u64> = tree
                .files
                .values()
                .filter(|f| f.meta.kind == KIND_FILE)
                .map(|f| f.id)
                .collect();
            let outcome = self.read_contents(src, reader, &wanted, &mut report)?;
            if !outcome.gone.is_empty() {
                attempts += 1;
                if attempts > 10 {
                    return Err(Error::Source {
                        path: src.pocket.to_owned(),
                        detail: "files keep disappearing while the first backup reads them; try again when the pocket is quieter".into(),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            for (id, (content, meta)) in outcome.done {
                let meta = tree.kept(id, meta, keeping);
                tree.apply(&VChange::Content {
                    file: id,
                    meta,
                    content,
                });
            }
            let head = head.clone().unwrap_or_default();
            journal::make_durable(src.journal)?;
            let new_head = self.write_checkpoint(&tree, &head, jid, snap.seq, snap.time_ns)?;
            self.note_in_flight(&tree, src.pocket)?;
            journal::set_cursor(src.journal, src.dest, snap.seq)?;
            report.records = snap.seq;
            report.cursor = snap.seq;
            self.state = Some(Some((tree, new_head)));
            info!(
                dest = src.dest,
                seq = snap.seq,
                files = report.files,
                "checkpoint written"
            );
            return Ok(report);
        }
    }

    /// Reads, chunks and uploads the given files in parallel. Every pack is durable when this
    /// returns Ok.
    fn read_contents(
        &self,
        src: &Source<'_>,
        reader: &journal::Reader,
        files: &[u64],
        report: &mut DrainReport,
    ) -> Result<ReadResult> {
        // Paths come from the catalog as it is now: the file may have moved since its record.
        let mut jobs = Vec::with_capacity(files.len());
        let mut gone = Vec::new();
        for &id in files {
            match reader.path_of(id)? {
                Some(rel) => jobs.push((id, src.abs(&rel))),
                None => gone.push(id),
            }
        }
        src.progress
            .files_total
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        let next = AtomicUsize::new(0);
        let uploaded = AtomicU64::new(0);
        let new_chunks = AtomicU64::new(0);
        let bytes_read = AtomicU64::new(0);
        let results: Vec<Result<Vec<(u64, Outcome)>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.workers.min(jobs.len().max(1)))
                .map(|_| {
                    s.spawn(|| {
                        let mut packer = self
                            .vault
                            .packer()
                            .counting(src.progress.bytes_done.clone());
                        let chunker = self.vault.chunker();
                        let mut out = Vec::new();
                        let res = (|| {
                            loop {
                                let i = next.fetch_add(1, Ordering::Relaxed);
                                let Some((id, path)) = jobs.get(i) else { break };
                                src.check_cancel()?;
                                let outcome = read_one(
                                    path,
                                    *id,
                                    src.ids,
                                    &chunker,
                                    &mut packer,
                                    src.cancel,
                                )?;
                                if let Outcome::Done(c, _) = &outcome {
                                    bytes_read.fetch_add(c.data_bytes(), Ordering::Relaxed);
                                }
                                src.progress.files_done.fetch_add(1, Ordering::Relaxed);
                                out.push((*id, outcome));
                            }
                            packer.finish()
                        })();
                        uploaded.fetch_add(packer.uploaded_bytes, Ordering::Relaxed);
                        new_chunks.fetch_add(packer.new_chunks, Ordering::Relaxed);
                        match res {
                            Ok(()) => Ok(out),
                            Err(e) => {
                                packer.abandon();
                                Err(e)
                            }
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Format("a drain worker panicked".into())))
                })
                .collect()
        });
        let mut done = HashMap::new();
        let mut first_err = None;
        for r in results {
            match r {
                Ok(v) => {
                    for (id, o) in v {
                        match o {
                            Outcome::Done(c, m) => {
                                done.insert(id, (c, m));
                            }
                            Outcome::Gone => gone.push(id),
                        }
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        report.files += done.len() as u64;
        report.bytes_read += bytes_read.load(Ordering::Relaxed);
        report.bytes_uploaded += uploaded.load(Ordering::Relaxed);
        report.new_chunks += new_chunks.load(Ordering::Relaxed);
        Ok(ReadResult { done, gone })
    }
}

/// What reading one changed file gave.
#[derive(Debug)]
pub(crate) enum Outcome {
    Done(Content, VMeta),
    Gone,
}

/// Reads one file into `packer`, again while it changes under the read (up to
/// `TORN_RETRIES` times, then an error: it is taken once it settles).
pub(crate) fn read_one(
    path: &Path,
    id: u64,
    ids: &journal::DriveIds,
    chunker: &crate::source::Chunker,
    packer: &mut crate::vault::Packer<'_>,
    cancel: &AtomicBool,
) -> Result<Outcome> {
    let mut tries = 0;
    loop {
        let mut sink = |c: &[u8]| {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            packer.add(c)
        };
        match read_file(path, id, ids, chunker, &mut sink)? {
            ReadOutcome::Done(c, m) => return Ok(Outcome::Done(c, m)),
            ReadOutcome::Gone => return Ok(Outcome::Gone),
            ReadOutcome::Torn => {
                tries += 1;
                if tries > TORN_RETRIES {
                    return Err(Error::Source {
                        path: path.to_owned(),
                        detail:
                            "it keeps changing while being read; it will be taken once it settles"
                                .into(),
                    });
                }
                std::thread::sleep(Duration::from_millis(10 << tries.min(6)));
            }
        }
    }
}

struct ReadResult {
    done: HashMap<u64, (Content, VMeta)>,
    gone: Vec<u64>,
}

/// The file whose contents a change asks for: a content record, or the creation of a regular
/// file that already has data (the scan records a file that appeared with data as a create
/// alone; the mount creates files empty and records their contents at release).
pub(crate) fn content_of(c: &journal::Change) -> Option<u64> {
    match c {
        journal::Change::Content { file, .. } => Some(*file),
        journal::Change::Create { file, meta, .. }
            if meta.kind == journal::Kind::File && meta.size > 0 =>
        {
            Some(*file)
        }
        _ => None,
    }
}

/// Whether a change makes a new file (possibly under a reused inode number).
fn is_birth(c: &journal::Change) -> bool {
    matches!(
        c,
        journal::Change::Create { .. }
            | journal::Change::Mkdir { .. }
            | journal::Change::Symlink { .. }
    )
}

/// The folders whose entries a change touches.
fn note_dirs(c: &journal::Change, dirs: &mut BTreeSet<u64>) {
    use journal::Change as C;
    match c {
        C::Create { parent, .. }
        | C::Mkdir { parent, .. }
        | C::Symlink { parent, .. }
        | C::Link { parent, .. }
        | C::Unlink { parent, .. }
        | C::Rmdir { parent, .. } => {
            dirs.insert(*parent);
        }
        C::Rename {
            parent, new_parent, ..
        } => {
            dirs.insert(*parent);
            dirs.insert(*new_parent);
        }
        // A folder recorded again (its times moved by something the journal cannot name).
        C::SetAttr { file, meta } if meta.kind == journal::Kind::Dir => {
            dirs.insert(*file);
        }
        _ => {}
    }
}

/// Takes the metadata of the root and of everything but regular files as it is on the drive
/// now: folder times move with their entries, which the journal does not record.
/// `keeping`: what the journal keeps for the drive (modes, owners, exact times on exFAT).
pub(crate) fn refresh_metadata(
    tree: &mut Tree,
    src: &Source<'_>,
    keeping: Option<journal::Keeping>,
) {
    let root = tree.root;
    if let (Some(meta), Some(r)) = (lstat_meta(src, src.pocket, None), tree.files.get_mut(&root)) {
        r.meta = meta.kept(keeping, &r.meta);
    }
    for (rel, id) in tree.paths() {
        let Some(f) = tree.files.get_mut(&id) else {
            continue;
        };
        if f.meta.kind != KIND_FILE {
            if let Some(meta) = lstat_meta(src, &src.abs(&rel), Some(id)) {
                f.meta = meta.kept(keeping, &f.meta);
            }
        }
    }
}

/// An entry's metadata now, if it still is file `expect` (None: do not check, for the root).
pub(crate) fn lstat_meta(src: &Source<'_>, path: &Path, expect: Option<u64>) -> Option<VMeta> {
    let m = std::fs::symlink_metadata(path).ok()?;
    if expect.is_some_and(|id| {
        crate::os::path_id(path)
            .ok()
            .is_none_or(|number| !src.ids.may_be(number, id))
    }) {
        return None;
    }
    let meta = journal::Meta::from_std(&m)?;
    let mut v = VMeta::from(meta);
    if v.kind == KIND_DIR {
        v.size = 0;
    }
    Some(v)
}
