//! Read-only views of the journal: status totals, records after a cursor, cursors, and the
//! compaction of what every destination holds. Every query here is an index lookup, so status
//! stays fast with millions of records pending.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::db;
use crate::error::Result;
use crate::record::Record;

/// A directory entry: (parent file id, name).
#[cfg(unix)]
pub(crate) type NameKey = (u64, Vec<u8>);

/// What is recorded and not yet protected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Records that no destination holds yet (all records when there are no destinations).
    pub pending_records: u64,
    pub pending_bytes: u64,
    /// When the oldest change that no destination holds was recorded.
    pub oldest_pending_ns: Option<i64>,
    /// Records kept in the journal (compaction removes those every destination holds).
    pub records: u64,
    pub last_seq: u64,
    /// Journal files on the drive (database and write-ahead log).
    pub size_bytes: u64,
    pub last_scan_ns: Option<i64>,
    pub destinations: Vec<CursorStatus>,
    /// What a destination that never drained lacks: every record kept, their bytes, and when
    /// the oldest was made.
    pub all_pending: (u64, u64, Option<i64>),
}

/// One destination's position in the journal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CursorStatus {
    pub name: String,
    pub cursor: u64,
    pub pending_records: u64,
    pub pending_bytes: u64,
    pub oldest_pending_ns: Option<i64>,
    pub updated_ns: i64,
}

/// A read-only connection to the journal, safe beside a running writer.
#[derive(Debug)]
pub struct Reader {
    conn: Connection,
    path: PathBuf,
}

/// One extended attribute of one file: (file, name, value).
pub type FileXattr = (u64, Vec<u8>, Vec<u8>);

impl Reader {
    pub fn open(path: &Path) -> Result<Reader> {
        Ok(Reader {
            conn: db::open_ro(path)?,
            path: path.to_owned(),
        })
    }

    pub fn status(&self) -> Result<Status> {
        let tx = self.conn.unchecked_transaction()?;
        let tip = db::read_tip(&tx)?;
        let first: Option<i64> = tx.query_row("SELECT min(seq) FROM records", [], |r| r.get(0))?;
        let records = match first {
            Some(first) => tip.last_seq + 1 - first as u64,
            None => 0,
        };
        let mut destinations = Vec::new();
        {
            let mut stmt = tx.prepare("SELECT dest, seq, updated_ns FROM cursors ORDER BY dest")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (name, cursor, updated_ns) = row?;
                let (pending_records, pending_bytes, oldest_pending_ns) =
                    pending_after(&tx, tip, cursor)?;
                destinations.push(CursorStatus {
                    name,
                    cursor,
                    pending_records,
                    pending_bytes,
                    oldest_pending_ns,
                    updated_ns,
                });
            }
        }
        // "Not yet protected" means no destination holds it: measured from the furthest cursor.
        let base = destinations.iter().map(|d| d.cursor).max().unwrap_or(0);
        let (pending_records, pending_bytes, oldest_pending_ns) = pending_after(&tx, tip, base)?;
        let all_pending = pending_after(&tx, tip, 0)?;
        let last_scan_ns = db::meta_get(&tx, "last_scan_ns")?;
        drop(tx);
        let size_bytes = ["", "-wal", "-shm"]
            .iter()
            .filter_map(|suffix| {
                let mut p = self.path.clone().into_os_string();
                p.push(suffix);
                std::fs::metadata(p).ok().map(|m| m.len())
            })
            .sum();
        Ok(Status {
            pending_records,
            pending_bytes,
            oldest_pending_ns,
            records,
            last_seq: tip.last_seq,
            size_bytes,
            last_scan_ns,
            destinations,
            all_pending,
        })
    }

    /// Records after `seq`, oldest first, at most `limit`.
    pub fn records_after(&self, seq: u64, limit: usize) -> Result<Vec<Record>> {
        db::read_records(&self.conn, seq, limit)
    }

    /// The catalog's entries of one directory: (name, file id), sorted by name.
    pub fn children(&self, parent: u64) -> Result<Vec<(Vec<u8>, u64)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name, file FROM names WHERE parent=?1 ORDER BY name")?;
        let rows = stmt.query_map([parent as i64], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Whether the journal knows files by path, with ids of its own, because the drive numbers
    /// its files afresh at each mount (see [`crate::DriveIds`]).
    pub fn identity_by_path(&self) -> Result<bool> {
        Ok(db::meta_get(&self.conn, "ids")? == Some(1))
    }

    /// A symbolic link's target, as the catalog has it.
    pub fn symlink_target(&self, file: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached("SELECT target FROM files WHERE id=?1")?
            .query_row([file as i64], |r| r.get::<_, Option<Vec<u8>>>(0))
            .optional()?
            .flatten())
    }

    /// Whether the drive keeps modes and owners (as its probe found; assumed so when unknown).
    /// Where it does not, the catalog keeps them and the scan takes the catalog's word.
    pub fn keeps_modes(&self) -> Result<bool> {
        Ok(db::meta_get(&self.conn, "modes_kept")? != Some(0))
    }

    /// Whether names the drive cannot spell are stored under look-alikes
    /// ([`crate::spelling`]).
    pub fn names_encoded(&self) -> Result<bool> {
        Ok(db::meta_get(&self.conn, "names_encoded")? == Some(1))
    }

    /// How coarsely the drive keeps times, as its probe found (0 when unknown or fine).
    pub fn time_granularity_ns(&self) -> Result<i64> {
        Ok(db::meta_get(&self.conn, "time_granularity_ns")?.unwrap_or(0))
    }

    /// The root directory's file id.
    pub fn root(&self) -> Result<u64> {
        Ok(db::meta_get(&self.conn, "root")?.unwrap_or(0) as u64)
    }
}

/// (records, bytes, time of the oldest) after `cursor`.
fn pending_after(conn: &Connection, tip: db::Tip, cursor: u64) -> Result<(u64, u64, Option<i64>)> {
    let next: Option<(i64, i64)> = conn
        .prepare_cached(
            "SELECT time_ns, cum_bytes - bytes FROM records WHERE seq > ?1 ORDER BY seq LIMIT 1",
        )?
        .query_row([cursor as i64], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match next {
        Some((time_ns, cum_before)) => (
            tip.last_seq.saturating_sub(cursor),
            tip.cum_bytes.saturating_sub(cum_before as u64),
            Some(time_ns),
        ),
        None => (0, 0, None),
    })
}

/// Removes the records that every destination holds. With no destination nothing is held
/// anywhere, so nothing is removed. Returns how many records went.
pub fn compact(path: &Path) -> Result<u64> {
    let conn = db::open_rw(path, false)?;
    let min: Option<i64> = conn.query_row("SELECT min(seq) FROM cursors", [], |r| r.get(0))?;
    let Some(min) = min else { return Ok(0) };
    let n = conn.execute("DELETE FROM records WHERE seq <= ?1", params![min])?;
    Ok(n as u64)
}

/// Moves a destination's cursor (the replicator calls this once the destination holds every
/// record up to `seq` durably). Creates the cursor if needed.
pub fn set_cursor(path: &Path, dest: &str, seq: u64) -> Result<()> {
    let conn = db::open_rw(path, false)?;
    conn.execute(
        "INSERT INTO cursors(dest, seq, updated_ns) VALUES(?1, ?2, ?3) \
         ON CONFLICT(dest) DO UPDATE SET seq=excluded.seq, updated_ns=excluded.updated_ns",
        params![dest, seq as i64, crate::writer::now_ns()],
    )?;
    Ok(())
}

/// Makes every record committed so far durable on the drive. Commits no fsync asked for are
/// `synchronous=NORMAL`: in the WAL, not yet on the disk. A destination must never hold a
/// record that a power cut can take back out of the journal: after the cut, new records would
/// reuse its sequence numbers, and the destination would skip them as held. So the replicator
/// calls this before a log segment, checkpoint or mirror tree refers to records: one fsync of
/// the WAL per drain (checkpointed pages were synced by the checkpoint itself).
pub fn make_durable(path: &Path) -> Result<()> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    // Opened for writing: Windows flushes only handles that may write.
    match std::fs::OpenOptions::new().write(true).open(&wal) {
        Ok(f) => f.sync_all().map_err(|e| crate::Error::Io {
            context: format!(
                "cannot make the journal durable ({})",
                Path::new(&wal).display()
            ),
            source: e,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(crate::Error::Io {
            context: format!(
                "cannot open the journal's log {}",
                Path::new(&wal).display()
            ),
            source: e,
        }),
    }
}

impl Reader {
    /// The catalog's xattrs of one file, sorted by name.
    pub fn xattrs(&self, file: u64) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name, value FROM xattrs WHERE file=?1 ORDER BY name")?;
        let rows = stmt.query_map([file as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every extended attribute in the catalog: (file, name, value). (What a mount keeps for
    /// a drive without them.)
    pub fn all_xattrs(&self) -> Result<Vec<FileXattr>> {
        let mut stmt = self.conn.prepare("SELECT file, name, value FROM xattrs")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every name in the catalog: ((parent, name), file).
    #[cfg(unix)]
    pub(crate) fn all_names(&self) -> Result<Vec<(NameKey, u64)>> {
        let mut stmt = self.conn.prepare("SELECT parent, name, file FROM names")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                (r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?),
                r.get::<_, i64>(2)? as u64,
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The files marked unsynced (see [`crate::JournalHandle::mark_unsynced`]): what the next
    /// scan reads again if the journal is not closed cleanly. A mark seen here is durable
    /// within a second of its commit (at once if someone waited for it).
    #[cfg(unix)]
    pub fn unsynced(&self) -> Result<Vec<u64>> {
        db::unsynced(&self.conn)
    }

    /// Every file in the catalog with its metadata, symlink target and when it was recorded.
    #[cfg(unix)]
    /// Every file of the catalog: id, metadata, when it was recorded. For passes over the
    /// whole catalog (the scan; the mount that keeps modes a drive cannot).
    pub fn all_files(&self) -> Result<Vec<(u64, crate::record::Meta, i64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, kind, perm, uid, gid, size, mtime_ns, ctime_ns, rdev, recorded_ns FROM files",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, db::meta_at(r, 1)?, r.get(9)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

impl Reader {
    /// The catalog's metadata of one file, None when the catalog does not know it.
    pub fn file(&self, file: u64) -> Result<Option<crate::record::Meta>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT kind, perm, uid, gid, size, mtime_ns, ctime_ns, rdev FROM files WHERE id=?1",
        )?;
        Ok(stmt
            .query_row([file as i64], |r| db::meta_at(r, 0))
            .optional()?)
    }

    /// The catalog as a list of (path, file id, metadata, symlink target), depth first from
    /// the root, paths relative to the pocket: what a replica would rebuild.
    pub fn tree(&self) -> Result<Vec<CatalogEntry>> {
        let root = self.root()?;
        let mut out = Vec::new();
        let mut stack = vec![(root, Vec::new())];
        while let Some((dir, prefix)) = stack.pop() {
            for (name, file) in self.children(dir)? {
                let mut path = prefix.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(&name);
                let Some(meta) = self.file(file)? else {
                    continue;
                };
                let target: Option<Vec<u8>> = self
                    .conn
                    .prepare_cached("SELECT target FROM files WHERE id=?1")?
                    .query_row([file as i64], |r| r.get(0))
                    .optional()?
                    .flatten();
                if meta.kind == crate::record::Kind::Dir {
                    stack.push((file, path.clone()));
                }
                out.push(CatalogEntry {
                    path,
                    file,
                    meta,
                    target,
                });
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

/// One name in the catalog, for comparisons with the pocket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    pub path: Vec<u8>,
    pub file: u64,
    pub meta: crate::record::Meta,
    pub target: Option<Vec<u8>>,
}

/// The whole catalog at one journal position, read in one transaction: what a new
/// destination starts from (a checkpoint), so that it never replays from record 0.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every record up to this one is reflected, none after.
    pub seq: u64,
    /// When the last reflected record was made (0 for an empty journal).
    pub time_ns: i64,
    pub root: u64,
    /// (file id, metadata, symlink target).
    pub files: Vec<(u64, crate::record::Meta, Option<Vec<u8>>)>,
    /// (parent, name, file).
    pub names: Vec<(u64, Vec<u8>, u64)>,
    /// (file, name, value).
    pub xattrs: Vec<(u64, Vec<u8>, Vec<u8>)>,
}

impl Reader {
    /// A consistent copy of the catalog and the seq it stands at.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let tx = self.conn.unchecked_transaction()?;
        let tip = db::read_tip(&tx)?;
        let time_ns: i64 = tx
            .query_row(
                "SELECT time_ns FROM records WHERE seq=?1",
                [tip.last_seq as i64],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        let root = db::meta_get(&tx, "root")?.unwrap_or(0) as u64;
        let files = {
            let mut stmt = tx.prepare(
                "SELECT id, kind, perm, uid, gid, size, mtime_ns, ctime_ns, rdev, target FROM files",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, i64>(0)? as u64, db::meta_at(r, 1)?, r.get(9)?))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        let names = {
            let mut stmt = tx.prepare("SELECT parent, name, file FROM names")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get(1)?,
                    r.get::<_, i64>(2)? as u64,
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        let xattrs = {
            let mut stmt = tx.prepare("SELECT file, name, value FROM xattrs")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        Ok(Snapshot {
            seq: tip.last_seq,
            time_ns,
            root,
            files,
            names,
            xattrs,
        })
    }

    /// One path of a file as the catalog has it now (relative to the pocket, bytes), None
    /// when the file has no name any more. The replicator reads contents through it.
    pub fn path_of(&self, file: u64) -> Result<Option<Vec<u8>>> {
        let root = self.root()?;
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut cur = file;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT parent, name FROM names WHERE file=?1 LIMIT 1")?;
        while cur != root {
            let Some((parent, name)) = stmt
                .query_row([cur as i64], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
                })
                .optional()?
            else {
                return Ok(None);
            };
            parts.push(name);
            cur = parent;
            if parts.len() > 4096 {
                return Ok(None);
            }
        }
        parts.reverse();
        Ok(Some(parts.join(&b'/')))
    }

    /// Identifies this journal among all journals (its creation time): a vault that a new
    /// drive continues (after `init --from`) tells the two journals' sequence numbers apart.
    pub fn journal_id(&self) -> Result<i64> {
        Ok(db::meta_get(&self.conn, "created_ns")?.unwrap_or(0))
    }

    /// A destination's cursor, None before its first drain.
    pub fn cursor(&self, dest: &str) -> Result<Option<u64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT seq FROM cursors WHERE dest=?1")?
            .query_row([dest], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|s| s as u64))
    }
}

/// Forgets a destination's cursor (the destination was removed), so it no longer holds back
/// compaction.
pub fn remove_cursor(path: &Path, dest: &str) -> Result<()> {
    let conn = db::open_rw(path, false)?;
    conn.execute("DELETE FROM cursors WHERE dest=?1", [dest])?;
    Ok(())
}
