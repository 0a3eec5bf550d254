//! The writer thread: the only connection that writes. The filesystem hands it changes over a
//! channel and goes on; the writer commits them in groups (one transaction per batch, NORMAL
//! sync), and switches to FULL sync for a batch that an fsync is waiting on.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use rusqlite::Connection;
use tracing::{debug, error, warn};

use crate::db::{self, Tip};
use crate::error::{Error, Result};
use crate::ids::{DriveIds, Pending};
use crate::record::{Change, FileId};

/// How many changes one transaction takes at most; bounds the latency of a group commit.
const MAX_BATCH: usize = 8192;
/// How long a commit waits for more changes to join it when nobody waits on it (an fsync
/// commits at once). Records are not durable promises until fsync, so a short delay costs
/// nothing and saves a transaction per change under a stream of small changes.
const GATHER: Duration = Duration::from_millis(2);
/// The longest gathering pause: on a slow drive (exFAT through FUSE, a USB stick) the writer
/// gathers for four times as long as its last commit took, so that committing takes at most a
/// fifth of its time and each commit carries more records (the fixed cost of a commit, the
/// index pages every commit rewrites, is paid less often).
const MAX_GATHER: Duration = Duration::from_millis(50);
/// How long an unsynced mark may wait for its full sync when nobody waits for it. The kernel
/// writes a file's new pages back on its own only after `dirty_expire_centisecs` (30 s by
/// default), so a second is early enough; who writes through at once (fsync, `O_SYNC`,
/// `O_DIRECT`, writeback under pressure) waits for the mark instead. Syncing each mark at once
/// cost a full sync per gathering period while files are being written: 2,514 of them during
/// one extract of a source tree onto an exFAT drive.
const MARK_DELAY: Duration = Duration::from_secs(1);
/// The queue between the filesystem and the writer. A full queue slows writers down rather
/// than letting memory grow without bound.
const QUEUE: usize = 65536;
/// Room kept on the drive so the journal can still record the change that filled it.
const RESERVE_BYTES: u64 = 8 << 20;
const RESERVE_NAME: &str = "journal.reserve";

enum Msg {
    /// A change; true when it names files by the drive's numbers (the filesystem), false when
    /// by the journal's ids (the scan).
    Change(i64, Change, bool),
    /// The drive's number of a file the filesystem found by name (parent's number, name).
    Bind(u64, u64, Vec<u8>),
    /// The scan's map of the drive: numbers with their ids, and numbers that need new ids.
    #[cfg_attr(not(unix), allow(dead_code))]
    Rebind(
        Vec<(u64, FileId)>,
        Vec<u64>,
        Sender<Result<Vec<FileId>, String>>,
    ),
    /// From now on the journal allocates ids (the drive does not keep its numbers).
    PathIdentity(Sender<Result<(), String>>),
    /// Reply once every change sent before is committed and durable.
    Sync(Sender<Result<u64, String>>),
    /// Reply once every change sent before is committed (durable against a crash of this
    /// process, not yet against a power cut).
    Commit(Sender<Result<u64, String>>),
    Subscribe(Sender<u64>),
    Meta(&'static str, i64),
    Unsynced(i64, FileId),
    /// After the last change: make the whole drive durable, then forget the unsynced files.
    Settle(Sender<Result<(), String>>),
    Shutdown,
}

/// The journal, open for writing. Dropping it commits what is queued and stops the writer.
#[derive(Debug)]
pub struct Journal {
    handle: JournalHandle,
    thread: Option<JoinHandle<()>>,
}

/// A cheap, cloneable way to append to the journal from any thread.
#[derive(Clone, Debug)]
pub struct JournalHandle {
    tx: Sender<Msg>,
    /// Wakes the writer: when it is idle, or for a sync.
    wake: Sender<()>,
    /// Set by the writer while it sleeps with nothing to do.
    idle: Arc<AtomicBool>,
    ids: DriveIds,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Change(_, c, _) => write!(f, "Change({:?})", c.op()),
            Msg::Bind(n, ..) => write!(f, "Bind({n})"),
            Msg::Rebind(..) => f.write_str("Rebind"),
            Msg::PathIdentity(_) => f.write_str("PathIdentity"),
            Msg::Sync(_) => f.write_str("Sync"),
            Msg::Commit(_) => f.write_str("Commit"),
            Msg::Subscribe(_) => f.write_str("Subscribe"),
            Msg::Meta(k, _) => write!(f, "Meta({k})"),
            Msg::Unsynced(_, file) => write!(f, "Unsynced({file})"),
            Msg::Settle(_) => f.write_str("Settle"),
            Msg::Shutdown => f.write_str("Shutdown"),
        }
    }
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Journal {
    /// Creates a new, empty journal at `path` whose catalog root is `root`.
    pub fn create(path: &Path, root: u64) -> Result<Journal> {
        if path.exists() {
            return Err(Error::io(
                format!("cannot create the journal {}", path.display()),
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        let conn = db::open_rw(path, true)?;
        db::meta_set(&conn, "root", root as i64)?;
        db::meta_set(&conn, "created_ns", now_ns())?;
        Self::start(path, conn)
    }

    /// Opens an existing journal for writing.
    pub fn open(path: &Path) -> Result<Journal> {
        if !path.exists() {
            return Err(Error::io(
                format!("cannot open the journal {}", path.display()),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let conn = db::open_rw(path, false)?;
        Self::start(path, conn)
    }

    fn start(path: &Path, conn: Connection) -> Result<Journal> {
        let tip = db::read_tip(&conn)?;
        let ids = DriveIds::default();
        ids.set_by_path(db::meta_get(&conn, "ids")? == Some(1));
        ids.set_names_encoded(db::meta_get(&conn, "names_encoded")? == Some(1));
        let next_id = db::meta_get(&conn, "next_id")?.unwrap_or(0) as FileId;
        let reserve = path.with_file_name(RESERVE_NAME);
        ensure_reserve(&reserve);
        let (tx, rx) = bounded(QUEUE);
        let (wake_tx, wake) = bounded(1);
        let idle = Arc::new(AtomicBool::new(false));
        let writer_idle = idle.clone();
        let mut writer = Writer {
            conn,
            db_path: path.to_owned(),
            tip,
            // Opening may have committed (a format upgrade) without a full sync.
            undurable: true,
            reserve,
            subscribers: Vec::new(),
            ids: ids.clone(),
            next_id,
        };
        let thread = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run(rx, wake, writer_idle))
            .map_err(|e| Error::io("cannot start the journal writer", e))?;
        Ok(Journal {
            handle: JournalHandle {
                tx,
                wake: wake_tx,
                idle,
                ids,
            },
            thread: Some(thread),
        })
    }

    /// A handle for appending from other threads.
    pub fn handle(&self) -> JournalHandle {
        self.handle.clone()
    }

    /// From now on, files are known by their paths and the journal allocates their ids: for a
    /// drive that numbers its files afresh at each mount (exFAT, FAT). The files the catalog
    /// holds keep their ids; the next scan matches them to the drive by path. Cannot be undone
    /// (ids must stay what the destinations know). Returns once durable.
    pub fn use_path_identity(&self) -> Result<()> {
        self.handle.ask(
            Msg::PathIdentity,
            "the journal could not switch to ids of its own",
        )?;
        self.handle.sync().map(|_| ())
    }

    /// A channel that receives the last committed seq after each commit; it is how the
    /// replicator is woken. A slow receiver misses wake-ups, never blocks the writer.
    pub fn subscribe(&self) -> Receiver<u64> {
        let (tx, rx) = bounded(1);
        self.handle.send(Msg::Subscribe(tx));
        rx
    }

    /// The clean end: commits everything queued, makes the drive's whole filesystem durable
    /// (every file's bytes and metadata), and only then forgets the unsynced files, so that a
    /// journal left without `close` (a crash, a pulled drive) still names them to the next scan.
    /// Call it once nothing writes to the pocket any more.
    pub fn close(mut self) -> Result<()> {
        let settled = self.handle.settle();
        let stopped = self.shutdown();
        settled.and(stopped)
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let res = self.handle.sync();
        self.handle.send(Msg::Shutdown);
        let _ = self.handle.wake.try_send(());
        let _ = thread.join();
        res.map(|_| ())
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            error!("journal: closing: {e}");
        }
    }
}

impl JournalHandle {
    /// Queues a change, its files named by the drive's numbers (the backing inode numbers).
    /// Never waits on SQLite; waits only if the queue is full.
    pub fn record(&self, change: Change) {
        if !self.send(Msg::Change(now_ns(), change, true)) {
            error!("journal: the writer has stopped; a change could not be recorded (the next scan will find it)");
        }
    }

    /// Queues a change whose files are named by the journal's own ids (the scan's).
    #[cfg(unix)]
    pub(crate) fn record_ids(&self, change: Change) {
        if !self.send(Msg::Change(now_ns(), change, false)) {
            error!("journal: the writer has stopped; a change could not be recorded (the next scan will find it)");
        }
    }

    /// How the journal knows files: by the drive's numbers, or by path with ids of its own.
    pub fn ids(&self) -> &DriveIds {
        &self.ids
    }

    /// Tells the journal which file the drive's `number` is: the one named `name` in the folder
    /// numbered `parent`. The filesystem calls it for each file it looks up afresh, where files
    /// are known by path; elsewhere it costs nothing.
    pub fn bind(&self, number: u64, parent: u64, name: &[u8]) {
        if self.ids.by_path() {
            self.send(Msg::Bind(number, parent, name.to_vec()));
        }
    }

    /// Replaces the session's map of the drive: `known` numbers with their ids, and new ids
    /// for `fresh` numbers, returned in order. Once everything queued before is committed.
    #[cfg(unix)]
    pub(crate) fn rebind(&self, known: Vec<(u64, FileId)>, fresh: Vec<u64>) -> Result<Vec<FileId>> {
        self.ask(
            |tx| Msg::Rebind(known, fresh, tx),
            "the journal could not map the drive's files",
        )
    }

    /// Sends, and wakes the writer if it sleeps idle.
    fn send(&self, msg: Msg) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        if self.idle.swap(false, Ordering::SeqCst) {
            let _ = self.wake.try_send(());
        }
        true
    }

    /// Sets a fact in the journal's `meta` table (e.g. when the last scan ran), in order with
    /// the changes around it.
    pub fn set_meta(&self, key: &'static str, value: i64) {
        self.send(Msg::Meta(key, value));
    }

    /// Returns once every change queued before this call is committed, without waiting for
    /// the drive to make it durable: what a change the drive never sees (a mode kept for
    /// exFAT) needs to survive a kill -9 of this process, as the drive's own would.
    pub fn commit(&self) -> Result<u64> {
        self.ask(Msg::Commit, "the journal could not commit")
    }

    /// Sends the writer a message carrying where to answer, and waits for the answer. The
    /// writer's gathering pause is cut short: someone waits.
    fn ask<T>(&self, msg: impl FnOnce(Sender<Result<T, String>>) -> Msg, what: &str) -> Result<T> {
        let (tx, rx) = bounded(1);
        if !self.send(msg(tx)) {
            return Err(Error::WriterGone);
        }
        let _ = self.wake.try_send(());
        answer(rx.recv(), what)
    }

    /// Returns once every change queued before this call is committed with a full sync:
    /// the fsync promise.
    pub fn sync(&self) -> Result<u64> {
        self.ask(Msg::Sync, "the journal could not commit")
    }

    /// Remembers, durably before it returns, that `file` is open for writing and holds data.
    /// A filesystem writes such a file's pages back on its own while the new mtime waits in
    /// its log, so after a power cut the drive can hold new bytes under the old size and
    /// times, with this session's records of the file lost: a stat comparison then sees no
    /// change. The next scan reads every file named here again, unless the journal was closed
    /// cleanly (which makes the drive durable first). Cheap after the first call per file.
    pub fn mark_unsynced(&self, file: FileId) -> Result<()> {
        self.mark_unsynced_soon(file)?;
        self.sync().map(|_| ())
    }

    /// [`Self::mark_unsynced`] without waiting: the writer commits the mark with the next group
    /// commit, milliseconds after the call, and makes it durable with a full sync within a
    /// second (`MARK_DELAY`), long before the kernel writes a file's new pages back on its own.
    /// For opens whose bytes cannot reach the drive sooner.
    pub fn mark_unsynced_soon(&self, file: FileId) -> Result<()> {
        if !self.send(Msg::Unsynced(now_ns(), file)) {
            return Err(Error::WriterGone);
        }
        Ok(())
    }

    /// What [`Journal::close`] does before stopping: everything queued committed, the drive's
    /// whole filesystem durable, then the unsynced files forgotten. For a session that ends
    /// while the journal stays open (a private mount that filled a new pocket); call it once
    /// nothing writes to the pocket.
    pub fn settle(&self) -> Result<()> {
        self.ask(Msg::Settle, "the journal could not settle the drive")
    }
}

/// The writer's reply to a waiting caller, as an error of ours.
fn answer<T>(
    reply: std::result::Result<std::result::Result<T, String>, crossbeam_channel::RecvError>,
    what: &str,
) -> Result<T> {
    match reply {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(msg)) if msg == Error::DiskFull.to_string() => Err(Error::DiskFull),
        Ok(Err(msg)) => Err(Error::io(what.to_owned(), std::io::Error::other(msg))),
        Err(_) => Err(Error::WriterGone),
    }
}

fn ensure_reserve(path: &Path) {
    let ok = std::fs::metadata(path).map(|m| m.len() >= RESERVE_BYTES);
    if matches!(ok, Ok(true)) {
        return;
    }
    let res = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .and_then(|f| {
            // Blocks really allocated: a sparse file would free nothing when removed.
            #[cfg(unix)]
            match rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, RESERVE_BYTES) {
                Ok(()) => {}
                // exFAT and FAT cannot preallocate: the blocks are taken by writing them.
                Err(rustix::io::Errno::OPNOTSUPP) => write_zeros(&f, RESERVE_BYTES)?,
                Err(e) => return Err(e.into()),
            }
            #[cfg(not(unix))]
            write_zeros(&f, RESERVE_BYTES)?;
            f.sync_all()
        });
    if let Err(e) = res {
        warn!(
            "journal: cannot keep a {} MiB reserve at {}: {e}; a full drive may stop the journal",
            RESERVE_BYTES >> 20,
            path.display()
        );
        let _ = std::fs::remove_file(path);
    }
}

fn write_zeros(f: &std::fs::File, len: u64) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    let mut f = f;
    f.seek(std::io::SeekFrom::Start(0))?;
    let block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// What the writer holds until it commits.
enum Queued {
    Change(i64, Change, bool),
    Meta(&'static str, i64),
    Unsynced(i64, FileId),
    Bind(u64, u64, Vec<u8>),
    Rebind(
        Vec<(u64, FileId)>,
        Vec<u64>,
        Sender<Result<Vec<FileId>, String>>,
    ),
    PathIdentity(Sender<Result<(), String>>),
}

struct Writer {
    conn: Connection,
    /// For error messages.
    db_path: PathBuf,
    tip: Tip,
    /// Whether a commit since the last full sync is not durable yet.
    undurable: bool,
    reserve: PathBuf,
    subscribers: Vec<Sender<u64>>,
    ids: DriveIds,
    /// The next id to allocate, where the journal allocates them.
    next_id: FileId,
}

impl Writer {
    /// The loop. Changes are never a reason to wake the writer while it is busy or gathering:
    /// a sender wakes it only when it has gone idle, or for an fsync. Under a stream of
    /// changes the writer commits once per gathering period, and the filesystem's threads
    /// never pay for a wake-up per change.
    fn run(&mut self, rx: Receiver<Msg>, wake: Receiver<()>, idle: Arc<AtomicBool>) {
        let mut queue: Vec<Queued> = Vec::new();
        // Who waits for the next commit, and whether durably (an fsync) or not.
        let mut waiters: Vec<(Sender<Result<u64, String>>, bool)> = Vec::new();
        let mut settlers: Vec<Sender<Result<(), String>>> = Vec::new();
        // Unsynced marks not yet durable, since when: they are made durable (a full sync)
        // within MARK_DELAY, waited on or not.
        let mut marks: Option<std::time::Instant> = None;
        let mut backoff = Duration::from_millis(50);
        let mut shutdown = false;
        loop {
            while queue.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(msg) => {
                        if matches!(msg, Msg::Unsynced(..)) && marks.is_none() {
                            marks = Some(std::time::Instant::now());
                        }
                        shutdown |= self.take(msg, &mut queue, &mut waiters, &mut settlers)
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        shutdown = true;
                        break;
                    }
                }
            }
            let marks_due = marks.is_some_and(|t| t.elapsed() >= MARK_DELAY);
            let durable = waiters.iter().any(|(_, full)| *full)
                || !settlers.is_empty()
                || shutdown
                || marks_due;
            if queue.is_empty() && (!durable || !self.undurable) {
                self.answer(&mut waiters, &mut settlers);
                if shutdown {
                    return;
                }
                // Idle: say so, look once more (a change may have come in between), sleep
                // (until marks fall due, if some wait).
                idle.store(true, Ordering::SeqCst);
                if rx.is_empty() {
                    match marks {
                        Some(t) => {
                            let left = MARK_DELAY.saturating_sub(t.elapsed());
                            if let Err(RecvTimeoutError::Disconnected) = wake.recv_timeout(left) {
                                shutdown = true;
                            }
                        }
                        None => {
                            if wake.recv().is_err() {
                                shutdown = true;
                            }
                        }
                    }
                }
                idle.store(false, Ordering::SeqCst);
                continue;
            }
            let started = std::time::Instant::now();
            match self.commit_with_reserve(&queue, durable) {
                Ok(()) => {
                    let took = started.elapsed();
                    queue.clear();
                    if durable {
                        marks = None;
                    }
                    backoff = Duration::from_millis(50);
                    self.answer(&mut waiters, &mut settlers);
                    let seq = self.tip.last_seq;
                    self.subscribers.retain(|s| {
                        !matches!(
                            s.try_send(seq),
                            Err(crossbeam_channel::TrySendError::Disconnected(_))
                        )
                    });
                    if shutdown {
                        return;
                    }
                    // Let the next changes gather; an fsync cuts this short. A full sync is
                    // not what makes a drive slow to commit to: only ordinary commits count.
                    let mut gather = if durable {
                        GATHER
                    } else {
                        (took * 4).clamp(GATHER, MAX_GATHER)
                    };
                    if let Some(t) = marks {
                        gather = gather.min(MARK_DELAY.saturating_sub(t.elapsed()));
                    }
                    let _ = wake.recv_timeout(gather);
                }
                Err(e) => {
                    error!(
                        "journal: commit of {} changes failed: {e}; keeping them and retrying",
                        queue.len()
                    );
                    for (w, _) in waiters.drain(..) {
                        let _ = w.send(Err(e.to_string()));
                    }
                    for w in settlers.drain(..) {
                        let _ = w.send(Err(e.to_string()));
                    }
                    for item in &queue {
                        match item {
                            Queued::Rebind(_, _, w) => {
                                let _ = w.try_send(Err(e.to_string()));
                            }
                            Queued::PathIdentity(w) => {
                                let _ = w.try_send(Err(e.to_string()));
                            }
                            _ => {}
                        }
                    }
                    if shutdown {
                        error!(
                            "journal: {} changes could not be written before stopping; the next scan records them",
                            queue.len()
                        );
                        return;
                    }
                    let _ = wake.recv_timeout(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Everything is committed (durably, when anyone waits): tells those who wait.
    fn answer(
        &mut self,
        waiters: &mut Vec<(Sender<Result<u64, String>>, bool)>,
        settlers: &mut Vec<Sender<Result<(), String>>>,
    ) {
        for (w, _) in waiters.drain(..) {
            let _ = w.send(Ok(self.tip.last_seq));
        }
        for w in settlers.drain(..) {
            let _ = w.send(self.settle().map_err(|e| e.to_string()));
        }
    }

    /// Makes the drive's filesystem durable, then forgets the unsynced files: nothing on the
    /// drive can be newer than its metadata any more.
    fn settle(&mut self) -> Result<()> {
        if !sync_drive(&self.db_path)? {
            return Ok(());
        }
        let path = self.db_path.clone();
        let res = self.with_reserve(|w| {
            w.conn
                .execute_batch("PRAGMA synchronous=FULL; DELETE FROM unsynced;")
                .map_err(|e| db::classify(&path, e))
        });
        match res {
            // The drive is durable already; the marks only make the next scan read those files
            // again, which is the safe side of forgetting them.
            Err(Error::DiskFull) => {
                warn!(
                    "journal: the drive is full; the next scan reads again the files that were \
                     open for writing"
                );
                Ok(())
            }
            other => other,
        }
    }

    /// Returns true for a shutdown request.
    fn take(
        &mut self,
        msg: Msg,
        queue: &mut Vec<Queued>,
        waiters: &mut Vec<(Sender<Result<u64, String>>, bool)>,
        settlers: &mut Vec<Sender<Result<(), String>>>,
    ) -> bool {
        match msg {
            Msg::Change(t, c, drive) => queue.push(Queued::Change(t, c, drive)),
            Msg::Bind(n, p, name) => queue.push(Queued::Bind(n, p, name)),
            Msg::Rebind(k, f, w) => queue.push(Queued::Rebind(k, f, w)),
            Msg::PathIdentity(w) => queue.push(Queued::PathIdentity(w)),
            Msg::Meta(k, v) => queue.push(Queued::Meta(k, v)),
            Msg::Unsynced(t, f) => queue.push(Queued::Unsynced(t, f)),
            Msg::Settle(w) => settlers.push(w),
            Msg::Sync(w) => waiters.push((w, true)),
            Msg::Commit(w) => waiters.push((w, false)),
            Msg::Subscribe(s) => self.subscribers.push(s),
            Msg::Shutdown => return true,
        }
        false
    }

    fn commit_with_reserve(&mut self, queue: &[Queued], durable: bool) -> Result<()> {
        self.with_reserve(|w| w.commit(queue, durable))
    }

    /// Runs `f`; on a full drive, releases the reserve and runs it once more.
    fn with_reserve<T>(&mut self, mut f: impl FnMut(&mut Self) -> Result<T>) -> Result<T> {
        match f(self) {
            Err(Error::DiskFull) if self.reserve.exists() => {
                warn!(
                    "journal: the drive is full; releasing the reserve {} so the journal can go on",
                    self.reserve.display()
                );
                let _ = std::fs::remove_file(&self.reserve);
                f(self)
            }
            other => other,
        }
    }

    fn commit(&mut self, queue: &[Queued], durable: bool) -> Result<()> {
        let path = self.db_path.clone();
        let sync = if durable { "FULL" } else { "NORMAL" };
        self.conn
            .execute_batch(&format!("PRAGMA synchronous={sync}"))
            .map_err(|e| db::classify(&path, e))?;
        let mut tip = self.tip;
        // IMMEDIATE: take the write lock up front, so that a cursor update by the replicator
        // makes us wait (busy timeout) instead of failing the commit with a stale snapshot.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| db::classify(&path, e))?;
        let mut dropped = 0usize;
        let ids = self.ids.clone();
        let mut pending = Pending::new(&ids, self.next_id);
        let mut allocated: Vec<Vec<FileId>> = Vec::new();
        for item in queue {
            match item {
                Queued::Change(t, change, drive) => {
                    let change = if *drive {
                        pending.translate(change)
                    } else {
                        std::borrow::Cow::Borrowed(change)
                    };
                    if !db::append(&tx, &mut tip, *t, &change).map_err(|e| lift(&path, e))? {
                        dropped += 1;
                    }
                }
                Queued::Meta(k, v) => db::meta_set(&tx, k, *v).map_err(|e| lift(&path, e))?,
                Queued::Unsynced(t, f) => {
                    let f = pending.file(*f);
                    db::mark_unsynced(&tx, f, *t).map_err(|e| lift(&path, e))?
                }
                Queued::Bind(number, parent, name) => {
                    if let Some(parent) = pending.by_path.then(|| pending.get(*parent)).flatten() {
                        if let Some(file) =
                            db::name_file(&tx, parent, name).map_err(|e| lift(&path, e))?
                        {
                            pending.set(*number, file as FileId);
                        }
                    }
                }
                Queued::Rebind(known, fresh, _) => {
                    pending.replace();
                    for (number, file) in known {
                        pending.set(*number, *file);
                    }
                    let mut out = Vec::with_capacity(fresh.len());
                    for number in fresh {
                        let file = pending.fresh();
                        pending.set(*number, file);
                        out.push(file);
                    }
                    allocated.push(out);
                }
                Queued::PathIdentity(_) => {
                    if !pending.by_path {
                        pending.by_path = true;
                        let (files, max) = db::file_ids(&tx).map_err(|e| lift(&path, e))?;
                        let root = db::meta_get(&tx, "root").map_err(|e| lift(&path, e))?;
                        pending.next = pending.next.max(max.max(root.unwrap_or(0) as FileId) + 1);
                        // This session's numbers are the ids the catalog holds (the scan
                        // that starts every session maps them afresh).
                        for f in files.into_iter().chain(root.map(|r| r as FileId)) {
                            pending.set(f, f);
                        }
                        db::meta_set(&tx, "ids", 1).map_err(|e| lift(&path, e))?;
                        tx.execute_batch(&format!("PRAGMA user_version={}", db::PATH_IDS_VERSION))
                            .map_err(|e| db::classify(&path, e))?;
                    }
                }
            }
        }
        if pending.next != self.next_id {
            db::meta_set(&tx, "next_id", pending.next as i64).map_err(|e| lift(&path, e))?;
        }
        if durable {
            db::meta_set(&tx, "synced_ns", now_ns()).map_err(|e| lift(&path, e))?;
        }
        db::write_tip(&tx, tip).map_err(|e| lift(&path, e))?;
        platform::crash_point("journal-commit");
        tx.commit().map_err(|e| db::classify(&path, e))?;
        self.next_id = pending.next;
        pending.merge();
        let mut allocated = allocated.into_iter();
        for item in queue {
            match item {
                Queued::Rebind(_, _, w) => {
                    let _ = w.try_send(Ok(allocated.next().unwrap_or_default()));
                }
                Queued::PathIdentity(w) => {
                    let _ = w.try_send(Ok(()));
                }
                _ => {}
            }
        }
        if dropped > 0 {
            debug!("journal: dropped {dropped} changes to files that no longer exist");
        }
        self.tip = tip;
        self.undurable = !durable;
        Ok(())
    }
}

/// Flushes every file's bytes and metadata on the filesystem that holds `db`. Returns false
/// where that cannot be done, and the unsynced files must be kept.
#[cfg(unix)]
fn sync_drive(db: &Path) -> Result<bool> {
    let f = std::fs::File::open(db)
        .map_err(|e| Error::io(format!("cannot open {}", db.display()), e))?;
    #[cfg(target_os = "linux")]
    rustix::fs::syncfs(&f).map_err(|e| {
        Error::io(
            format!(
                "cannot flush the drive that holds {} (was it pulled?); nothing is lost: \
                 the next mount or scan reads again the files that were open for writing",
                db.display()
            ),
            e.into(),
        )
    })?;
    #[cfg(not(target_os = "linux"))]
    {
        drop(f);
        rustix::fs::sync();
    }
    Ok(true)
}

/// Nothing marks files unsynced here (the Windows front-end tracks no such thing yet), so
/// what a Unix mount of the same drive marked is kept for its next scan.
#[cfg(not(unix))]
fn sync_drive(_db: &Path) -> Result<bool> {
    Ok(false)
}

fn lift(path: &Path, e: Error) -> Error {
    match e {
        Error::Sqlite(s) => db::classify(path, s),
        other => other,
    }
}
