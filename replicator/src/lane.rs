//! The lane for large files: their contents are read, chunked and uploaded by a thread beside
//! the drain, so that a small change made meanwhile is in the vault within a second instead of
//! waiting behind a gigabyte. The drain writes its segment at once, listing such a file as
//! pending; a later segment brings its contents as a content record of at least the record it
//! was pending for (see `docs/vault-format.md`, "Files in flight").

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tracing::{debug, warn};

use crate::drain::{read_one, Outcome};
use crate::error::{Error, Result};
use crate::vault::Vault;

/// Files at least this large (on the drive, when a drain finds them changed) go through the
/// lane. At 10 MiB/s, a smaller one costs the changes behind it well under a second.
const LANE_FROM: u64 = 8 << 20;

/// [`LANE_FROM`], or `BACKPOCKET_LANE_FROM` bytes (a benchmark turns the lane off with a
/// size no file has, to measure what it saves).
pub(crate) fn lane_from() -> u64 {
    std::env::var("BACKPOCKET_LANE_FROM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LANE_FROM)
}

/// A file to read: its contents as read after the journal held record `asked` stand for every
/// content record of it up to `asked`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Job {
    pub file: u64,
    pub asked: u64,
    pub journal_id: i64,
}

/// What the lane made of a job.
#[derive(Debug)]
pub(crate) struct Done {
    pub job: Job,
    pub outcome: Result<Outcome>,
    /// Bytes written to the destination, and chunks it did not hold.
    pub uploaded: u64,
    pub new_chunks: u64,
}

#[derive(Debug, Default)]
struct Shared {
    queue: VecDeque<Job>,
    done: Vec<Done>,
    /// The file being read now.
    current: Option<u64>,
    /// A thread is working through the queue.
    running: bool,
}

/// The lane of one vault destination. Its thread lives while there is work, so that the vault
/// is not shared when there is none (maintenance needs it alone).
#[derive(Debug)]
pub(crate) struct Lane {
    shared: Arc<Mutex<Shared>>,
    cancel: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pocket: PathBuf,
    journal: PathBuf,
    ids: journal::DriveIds,
}

impl Lane {
    pub fn new() -> Lane {
        Lane {
            shared: Arc::default(),
            cancel: Arc::default(),
            thread: None,
            pocket: PathBuf::new(),
            journal: PathBuf::new(),
            ids: journal::DriveIds::default(),
        }
    }

    /// Queues a file (a queued job for the same file is brought up to date instead) and
    /// starts the thread if none runs; `landed` counts the source bytes that reach the
    /// destination.
    pub fn push(&mut self, vault: &Arc<Vault>, src: &crate::drain::Source<'_>, job: Job) {
        {
            let mut s = self.shared.lock();
            match s.queue.iter_mut().find(|j| j.file == job.file) {
                Some(j) => *j = job,
                None => s.queue.push_back(job),
            }
            if s.running {
                return;
            }
            s.running = true;
        }
        if let Some(t) = self.thread.take() {
            // It said it was done; it only has to return.
            let _ = t.join();
        }
        self.pocket = src.pocket.to_owned();
        self.journal = src.journal.to_owned();
        self.ids = src.ids.clone();
        let (shared, cancel, vault, landed) = (
            self.shared.clone(),
            self.cancel.clone(),
            vault.clone(),
            src.progress.bytes_done.clone(),
        );
        let (pocket, journal, ids) = (self.pocket.clone(), self.journal.clone(), self.ids.clone());
        let spawned = std::thread::Builder::new()
            .name("large-files".into())
            .spawn(move || work(&shared, &cancel, &vault, (&pocket, &journal, &ids), &landed));
        match spawned {
            Ok(t) => self.thread = Some(t),
            Err(e) => {
                let mut s = self.shared.lock();
                s.running = false;
                let jobs: Vec<Job> = s.queue.drain(..).collect();
                for job in jobs {
                    s.done.push(Done {
                        job,
                        outcome: Err(Error::io(
                            "cannot start the thread for large files",
                            std::io::Error::other(e.to_string()),
                        )),
                        uploaded: 0,
                        new_chunks: 0,
                    });
                }
            }
        }
    }

    /// What the lane finished since the last call.
    pub fn take_done(&self) -> Vec<Done> {
        std::mem::take(&mut self.shared.lock().done)
    }

    /// Whether files are queued or being read.
    pub fn busy(&self) -> bool {
        let s = self.shared.lock();
        s.running || !s.done.is_empty()
    }

    /// Waits for a thread that has said it is done to return, so that it no longer shares
    /// the vault. False while there is work.
    pub fn reap(&mut self) -> bool {
        if self.busy() {
            return false;
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        true
    }

    /// Stops the thread (a read in progress ends at its next chunk) and forgets the queue.
    pub fn stop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.shared.lock().queue.clear();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut s = self.shared.lock();
        s.running = false;
        s.done.clear();
        s.current = None;
        drop(s);
        self.cancel.store(false, Ordering::Relaxed);
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn work(
    shared: &Mutex<Shared>,
    cancel: &AtomicBool,
    vault: &Vault,
    (pocket, journal, ids): (&std::path::Path, &std::path::Path, &journal::DriveIds),
    landed: &Arc<AtomicU64>,
) {
    let chunker = vault.chunker();
    loop {
        let job = {
            let mut s = shared.lock();
            match s.queue.pop_front() {
                Some(j) => {
                    s.current = Some(j.file);
                    j
                }
                None => {
                    s.current = None;
                    s.running = false;
                    return;
                }
            }
        };
        let mut packer = vault.packer().counting(landed.clone()).apart();
        let outcome = (|| {
            // The path as the catalog has it now: the file may have moved since its record.
            let reader = journal::Reader::open(journal)?;
            let Some(rel) = reader.path_of(job.file)? else {
                return Ok(Outcome::Gone);
            };
            drop(reader);
            let path = crate::os::join(pocket, &ids.path_to_drive(&rel));
            read_one(&path, job.file, ids, &chunker, &mut packer, cancel)
                .and_then(|o| packer.finish().map(|()| o))
        })();
        if outcome.is_err() {
            packer.abandon();
        }
        let (uploaded, new_chunks) = (packer.uploaded_bytes, packer.new_chunks);
        drop(packer);
        match &outcome {
            Ok(Outcome::Done(c, _)) => {
                debug!(file = job.file, bytes = c.size, "large file uploaded")
            }
            Ok(Outcome::Gone) => debug!(file = job.file, "large file gone before it was read"),
            Err(Error::Cancelled) => {}
            Err(e) => warn!(file = job.file, "large file: {e}"),
        }
        let mut s = shared.lock();
        s.done.push(Done {
            job,
            outcome,
            uploaded,
            new_chunks,
        });
        if cancel.load(Ordering::Relaxed) {
            s.current = None;
            s.running = false;
            return;
        }
    }
}
