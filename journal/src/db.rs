//! The journal database: schema, connection setup, record rows and the catalog they update.
//!
//! Format version 2 (`PRAGMA user_version`; version 1 lacked `unsynced` and is upgraded in
//! place when opened for writing). Tables:
//! - `records`: one row per change, `seq` dense and increasing (compaction removes a prefix only),
//!   `cum_bytes` the running total of `bytes`, so that pending byte counts are two lookups.
//! - `files`, `names`, `xattrs`: the catalog, the pocket as the records describe it.
//! - `cursors`: per destination, the last seq it holds durably.
//! - `unsynced`: files opened for writing since the pocket was last closed cleanly, whose bytes
//!   on the drive may be newer than their metadata after a power cut.
//! - `meta`: key/value facts (`root`, `last_seq`, `cum_bytes`, `last_scan_ns`, ...).

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};

use crate::error::{Error, Result};
use crate::record::{Change, FileId, Kind, Meta, Op, Record};

/// The newest journal format this code writes and reads. Version 3 is version 2 whose files
/// are known by path, with ids of the journal's own (`meta.ids` = 1, `meta.next_id`): the
/// tables are the same, but a version that took the ids for inode numbers would corrupt it.
/// A journal becomes version 3 when its drive is found to keep less than the pocket holds
/// (file numbers, modes, names: the journal then keeps them); others stay version 2, readable
/// by older versions.
pub const FORMAT_VERSION: i64 = 3;

/// The version of a new journal, and of one whose files are known by their inode numbers.
const INODE_IDS_VERSION: i64 = 2;
/// The version of a journal whose files are known by path.
pub(crate) const PATH_IDS_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE records(
    seq INTEGER PRIMARY KEY,
    time_ns INTEGER NOT NULL,
    op INTEGER NOT NULL,
    file INTEGER NOT NULL,
    parent INTEGER,
    name BLOB,
    parent2 INTEGER,
    name2 BLOB,
    flags INTEGER NOT NULL DEFAULT 0,
    kind INTEGER,
    perm INTEGER,
    uid INTEGER,
    gid INTEGER,
    size INTEGER,
    mtime_ns INTEGER,
    ctime_ns INTEGER,
    rdev INTEGER,
    data BLOB,
    bytes INTEGER NOT NULL,
    cum_bytes INTEGER NOT NULL
);
CREATE TABLE files(
    id INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,
    perm INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    rdev INTEGER NOT NULL,
    target BLOB,
    seq INTEGER NOT NULL,
    recorded_ns INTEGER NOT NULL
);
CREATE TABLE names(
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    file INTEGER NOT NULL,
    PRIMARY KEY(parent, name)
) WITHOUT ROWID;
CREATE INDEX names_by_file ON names(file);
CREATE TABLE xattrs(
    file INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY(file, name)
) WITHOUT ROWID;
CREATE TABLE cursors(
    dest TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
);
CREATE TABLE meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE unsynced(file INTEGER PRIMARY KEY, since_ns INTEGER NOT NULL);
";

/// What version 2 added to version 1.
const UPGRADE_1_TO_2: &str =
    "CREATE TABLE unsynced(file INTEGER PRIMARY KEY, since_ns INTEGER NOT NULL);";

const FLAG_EXCHANGE: i64 = 1;

/// Opens the journal for writing, creating it when `create` is set.
pub(crate) fn open_rw(path: &Path, create: bool) -> Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(|e| classify(path, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // WAL: readers (status, the replicator) never block the writer. NORMAL for ordinary group
    // commits; the writer switches to FULL for commits that an fsync waits on.
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| classify(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            detail: format!("cannot switch to WAL mode (got {mode})"),
        });
    }
    // A larger page cache keeps the catalog's indexes in memory under a stream of changes.
    conn.execute_batch(
        "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF; PRAGMA cache_size=-32768; \
         PRAGMA temp_store=MEMORY;",
    )?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| classify(path, e))?;
    if version == 0 {
        let empty: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type='table'",
            [],
            |r| r.get(0),
        )?;
        if empty != 0 || !create {
            return Err(Error::Corrupt {
                path: path.to_owned(),
                detail: "not a backpocket journal".into(),
            });
        }
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA} PRAGMA user_version={INODE_IDS_VERSION}; COMMIT;"
        ))?;
    } else if version > FORMAT_VERSION {
        return Err(Error::TooNew {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    } else if version == 1 {
        check_integrity(&conn, path, 1)?;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {UPGRADE_1_TO_2} PRAGMA user_version=2; COMMIT;"
        ))
        .map_err(|e| classify(path, e))?;
    }
    check_integrity(&conn, path, version.max(INODE_IDS_VERSION))?;
    Ok(conn)
}

/// Opens the journal for reading only (status): never blocks or disturbs the writer.
pub(crate) fn open_ro(path: &Path) -> Result<Connection> {
    if !path.exists() {
        return Err(Error::io(
            format!("cannot open the journal {}", path.display()),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    // Read-write open (without create) so the WAL index can be set up even when no writer is
    // running; we only ever read through it.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| classify(path, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| classify(path, e))?;
    if version == 0 {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            detail: "not a backpocket journal".into(),
        });
    }
    if version > FORMAT_VERSION {
        return Err(Error::TooNew {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    Ok(conn)
}

/// A cheap structural check: every table of format `version` is there.
fn check_integrity(conn: &Connection, path: &Path, version: i64) -> Result<()> {
    let v2: &[&str] = if version >= 2 { &["unsynced"] } else { &[] };
    for table in ["records", "files", "names", "xattrs", "cursors", "meta"]
        .iter()
        .chain(v2)
    {
        let n: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name=?1",
            [table],
            |r| r.get(0),
        )?;
        if n != 1 {
            return Err(Error::Corrupt {
                path: path.to_owned(),
                detail: format!("table {table} is missing"),
            });
        }
    }
    Ok(())
}

/// Turns SQLite's "not a database" and friends into [`Error::Corrupt`].
pub(crate) fn classify(path: &Path, e: rusqlite::Error) -> Error {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        if matches!(
            f.code,
            rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
        ) {
            return Error::Corrupt {
                path: path.to_owned(),
                detail: e.to_string(),
            };
        }
        if f.code == rusqlite::ErrorCode::DiskFull {
            return Error::DiskFull;
        }
    }
    Error::Sqlite(e)
}

/// Remembers that `file` is open for writing (see the `unsynced` table); a file already there
/// keeps its first time.
pub(crate) fn mark_unsynced(conn: &Connection, file: FileId, since_ns: i64) -> Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO unsynced(file, since_ns) VALUES(?1, ?2)",
        params![file as i64, since_ns],
    )?;
    Ok(())
}

/// The files marked unsynced (the scan reads them again).
#[cfg(unix)]
pub(crate) fn unsynced(conn: &Connection) -> Result<Vec<FileId>> {
    let mut stmt = conn.prepare("SELECT file FROM unsynced ORDER BY file")?;
    let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
    Ok(rows
        .map(|r| r.map(|f| f as FileId))
        .collect::<rusqlite::Result<_>>()?)
}

pub(crate) fn meta_get(conn: &Connection, key: &str) -> Result<Option<i64>> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key=?1", [key], |r| r.get(0))
        .optional()?)
}

pub(crate) fn meta_set(conn: &Connection, key: &str, value: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO meta(key, value) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// The running totals the writer continues from.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tip {
    pub last_seq: u64,
    pub cum_bytes: u64,
}

pub(crate) fn read_tip(conn: &Connection) -> Result<Tip> {
    Ok(Tip {
        last_seq: meta_get(conn, "last_seq")?.unwrap_or(0) as u64,
        cum_bytes: meta_get(conn, "cum_bytes")?.unwrap_or(0) as u64,
    })
}

pub(crate) fn write_tip(conn: &Connection, tip: Tip) -> Result<()> {
    meta_set(conn, "last_seq", tip.last_seq as i64)?;
    meta_set(conn, "cum_bytes", tip.cum_bytes as i64)
}

/// Whether the catalog knows this file; changes to files that no longer have a name (written
/// after being unlinked while open) carry nothing to any destination and are dropped.
fn file_exists(tx: &Transaction<'_>, file: FileId) -> Result<bool> {
    Ok(tx
        .query_row("SELECT 1 FROM files WHERE id=?1", [file as i64], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Appends one change and applies it to the catalog. Returns false when the change was
/// dropped because it cannot matter to any destination.
pub(crate) fn append(
    tx: &Transaction<'_>,
    tip: &mut Tip,
    time_ns: i64,
    change: &Change,
) -> Result<bool> {
    let relevant = match change {
        Change::SetAttr { file, .. }
        | Change::SetXattr { file, .. }
        | Change::RemoveXattr { file, .. }
        | Change::Content { file, .. } => file_exists(tx, *file)?,
        _ => true,
    };
    if !relevant {
        return Ok(false);
    }
    let seq = tip.last_seq + 1;
    let bytes = change.payload_bytes();
    let cum = tip.cum_bytes + bytes;
    insert_row(tx, seq, time_ns, change, bytes, cum)?;
    apply(tx, seq, time_ns, change)?;
    tip.last_seq = seq;
    tip.cum_bytes = cum;
    Ok(true)
}

fn insert_row(
    tx: &Transaction<'_>,
    seq: u64,
    time_ns: i64,
    change: &Change,
    bytes: u64,
    cum: u64,
) -> Result<()> {
    let mut row = Row {
        file: change.file() as i64,
        ..Row::default()
    };
    match change {
        Change::Create {
            parent, name, meta, ..
        }
        | Change::Mkdir {
            parent, name, meta, ..
        } => {
            row.entry(*parent, name);
            row.meta = Some(*meta);
        }
        Change::Symlink {
            parent,
            name,
            meta,
            target,
            ..
        } => {
            row.entry(*parent, name);
            row.meta = Some(*meta);
            row.data = Some(target);
        }
        Change::Link { parent, name, .. }
        | Change::Unlink { parent, name, .. }
        | Change::Rmdir { parent, name, .. } => row.entry(*parent, name),
        Change::Rename {
            parent,
            name,
            new_parent,
            new_name,
            exchange,
            ..
        } => {
            row.entry(*parent, name);
            row.parent2 = Some(*new_parent as i64);
            row.name2 = Some(new_name);
            row.flags = if *exchange { FLAG_EXCHANGE } else { 0 };
        }
        Change::SetAttr { meta, .. } | Change::Content { meta, .. } => row.meta = Some(*meta),
        Change::SetXattr { name, value, .. } => {
            row.name = Some(name);
            row.data = Some(value);
        }
        Change::RemoveXattr { name, .. } => row.name = Some(name),
    }
    let m = row.meta;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO records(seq, time_ns, op, file, parent, name, parent2, name2, flags, kind, perm, \
         uid, gid, size, mtime_ns, ctime_ns, rdev, data, bytes, cum_bytes) \
         VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
    )?;
    stmt.execute(params![
        seq as i64,
        time_ns,
        change.op() as u8 as i64,
        row.file,
        row.parent,
        row.name,
        row.parent2,
        row.name2,
        row.flags,
        m.map(|m| m.kind as u8 as i64),
        m.map(|m| m.perm as i64),
        m.map(|m| m.uid as i64),
        m.map(|m| m.gid as i64),
        m.map(|m| m.size as i64),
        m.map(|m| m.mtime_ns),
        m.map(|m| m.ctime_ns),
        m.map(|m| m.rdev as i64),
        row.data,
        bytes as i64,
        cum as i64,
    ])?;
    Ok(())
}

#[derive(Default)]
struct Row<'a> {
    file: i64,
    parent: Option<i64>,
    name: Option<&'a [u8]>,
    parent2: Option<i64>,
    name2: Option<&'a [u8]>,
    flags: i64,
    meta: Option<Meta>,
    data: Option<&'a [u8]>,
}

impl<'a> Row<'a> {
    fn entry(&mut self, parent: FileId, name: &'a [u8]) {
        self.parent = Some(parent as i64);
        self.name = Some(name);
    }
}

fn upsert_file(
    tx: &Transaction<'_>,
    file: FileId,
    meta: &Meta,
    target: Option<&[u8]>,
    seq: u64,
    now: i64,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO files(id, kind, perm, uid, gid, size, mtime_ns, ctime_ns, rdev, target, seq, recorded_ns) \
         VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
         ON CONFLICT(id) DO UPDATE SET kind=excluded.kind, perm=excluded.perm, uid=excluded.uid, \
         gid=excluded.gid, size=excluded.size, mtime_ns=excluded.mtime_ns, ctime_ns=excluded.ctime_ns, \
         rdev=excluded.rdev, target=coalesce(excluded.target, files.target), seq=excluded.seq, \
         recorded_ns=excluded.recorded_ns",
    )?
    .execute(params![
        file as i64,
        meta.kind as u8 as i64,
        meta.perm as i64,
        meta.uid as i64,
        meta.gid as i64,
        meta.size as i64,
        meta.mtime_ns,
        meta.ctime_ns,
        meta.rdev as i64,
        target,
        seq as i64,
        now,
    ])?;
    Ok(())
}

/// Removes one name; the file goes from the catalog with its last name.
fn unname(tx: &Transaction<'_>, parent: FileId, name: &[u8]) -> Result<()> {
    let file: Option<i64> = tx
        .prepare_cached("DELETE FROM names WHERE parent=?1 AND name=?2 RETURNING file")?
        .query_row(params![parent as i64, name], |r| r.get(0))
        .optional()?;
    if let Some(file) = file {
        forget_if_nameless(tx, file)?;
    }
    Ok(())
}

fn forget_if_nameless(tx: &Transaction<'_>, file: i64) -> Result<()> {
    let still_named = tx
        .prepare_cached("SELECT 1 FROM names WHERE file=?1 LIMIT 1")?
        .query_row([file], |_| Ok(()))
        .optional()?
        .is_some();
    if !still_named {
        tx.prepare_cached("DELETE FROM files WHERE id=?1")?
            .execute([file])?;
        tx.prepare_cached("DELETE FROM xattrs WHERE file=?1")?
            .execute([file])?;
    }
    Ok(())
}

pub(crate) fn name_file(tx: &Transaction<'_>, parent: FileId, name: &[u8]) -> Result<Option<i64>> {
    Ok(tx
        .prepare_cached("SELECT file FROM names WHERE parent=?1 AND name=?2")?
        .query_row(params![parent as i64, name], |r| r.get(0))
        .optional()?)
}

fn set_name(tx: &Transaction<'_>, parent: FileId, name: &[u8], file: FileId) -> Result<()> {
    if let Some(old) = name_file(tx, parent, name)? {
        if old as u64 == file {
            return Ok(());
        }
        unname(tx, parent, name)?;
    }
    tx.prepare_cached("INSERT INTO names(parent, name, file) VALUES(?1, ?2, ?3)")?
        .execute(params![parent as i64, name, file as i64])?;
    Ok(())
}

/// Every file id the catalog holds, and the largest.
pub(crate) fn file_ids(conn: &Connection) -> Result<(Vec<FileId>, FileId)> {
    let mut stmt = conn.prepare("SELECT id FROM files")?;
    let ids: Vec<FileId> = stmt
        .query_map([], |r| r.get::<_, i64>(0))?
        .map(|r| r.map(|v| v as FileId))
        .collect::<rusqlite::Result<_>>()?;
    let max = ids.iter().copied().max().unwrap_or(0);
    Ok((ids, max))
}

/// Keeps the catalog equal to "the pocket after every record so far".
fn apply(tx: &Transaction<'_>, seq: u64, now: i64, change: &Change) -> Result<()> {
    match change {
        Change::Create {
            parent,
            name,
            file,
            meta,
        }
        | Change::Mkdir {
            parent,
            name,
            file,
            meta,
        } => {
            upsert_file(tx, *file, meta, None, seq, now)?;
            set_name(tx, *parent, name, *file)?;
        }
        Change::Symlink {
            parent,
            name,
            file,
            meta,
            target,
        } => {
            upsert_file(tx, *file, meta, Some(target), seq, now)?;
            set_name(tx, *parent, name, *file)?;
        }
        Change::Link { parent, name, file } => set_name(tx, *parent, name, *file)?,
        Change::Rename {
            parent,
            name,
            new_parent,
            new_name,
            file,
            exchange,
        } => {
            if *exchange {
                let other = name_file(tx, *new_parent, new_name)?;
                tx.prepare_cached("DELETE FROM names WHERE parent=?1 AND name=?2")?
                    .execute(params![*parent as i64, name])?;
                tx.prepare_cached("DELETE FROM names WHERE parent=?1 AND name=?2")?
                    .execute(params![*new_parent as i64, new_name])?;
                tx.prepare_cached("INSERT INTO names(parent, name, file) VALUES(?1, ?2, ?3)")?
                    .execute(params![*new_parent as i64, new_name, *file as i64])?;
                if let Some(other) = other {
                    tx.prepare_cached("INSERT INTO names(parent, name, file) VALUES(?1, ?2, ?3)")?
                        .execute(params![*parent as i64, name, other])?;
                }
            } else {
                if name_file(tx, *new_parent, new_name)? == Some(*file as i64) {
                    // Renaming a name onto another name of the same file: POSIX leaves both.
                    return Ok(());
                }
                tx.prepare_cached("DELETE FROM names WHERE parent=?1 AND name=?2")?
                    .execute(params![*parent as i64, name])?;
                set_name(tx, *new_parent, new_name, *file)?;
            }
        }
        Change::Unlink { parent, name, .. } | Change::Rmdir { parent, name, .. } => {
            unname(tx, *parent, name)?
        }
        Change::SetAttr { file, meta } | Change::Content { file, meta } => {
            upsert_file(tx, *file, meta, None, seq, now)?
        }
        Change::SetXattr { file, name, value } => {
            tx.prepare_cached(
                "INSERT INTO xattrs(file, name, value) VALUES(?1, ?2, ?3) \
                 ON CONFLICT(file, name) DO UPDATE SET value=excluded.value",
            )?
            .execute(params![*file as i64, name, value])?;
        }
        Change::RemoveXattr { file, name } => {
            tx.prepare_cached("DELETE FROM xattrs WHERE file=?1 AND name=?2")?
                .execute(params![*file as i64, name])?;
        }
    }
    Ok(())
}

/// The eight metadata columns (kind, perm, uid, gid, size, mtime_ns, ctime_ns, rdev) from
/// `base` on; a kind this version does not know is a damaged row.
pub(crate) fn meta_at(r: &rusqlite::Row<'_>, base: usize) -> rusqlite::Result<Meta> {
    let kind: i64 = r.get(base)?;
    let kind = Kind::from_i64(kind).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            base,
            rusqlite::types::Type::Integer,
            format!("unknown file kind {kind}").into(),
        )
    })?;
    Ok(Meta {
        kind,
        perm: r.get::<_, i64>(base + 1)? as u32,
        uid: r.get::<_, i64>(base + 2)? as u32,
        gid: r.get::<_, i64>(base + 3)? as u32,
        size: r.get::<_, i64>(base + 4)? as u64,
        mtime_ns: r.get(base + 5)?,
        ctime_ns: r.get(base + 6)?,
        rdev: r.get::<_, i64>(base + 7)? as u64,
    })
}

/// A record's metadata, absent (NULL kind) for changes that carry none.
fn meta_from_row(r: &rusqlite::Row<'_>, base: usize) -> rusqlite::Result<Option<Meta>> {
    match r.get::<_, Option<i64>>(base)? {
        None => Ok(None),
        Some(_) => meta_at(r, base).map(Some),
    }
}

/// Reads records with `seq > after`, in order, at most `limit`.
pub(crate) fn read_records(conn: &Connection, after: u64, limit: usize) -> Result<Vec<Record>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, time_ns, op, file, parent, name, parent2, name2, flags, kind, perm, uid, gid, \
         size, mtime_ns, ctime_ns, rdev, data FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after as i64, limit as i64], |r| {
        let seq: i64 = r.get(0)?;
        let op: i64 = r.get(2)?;
        let file = r.get::<_, i64>(3)? as u64;
        let parent = r.get::<_, Option<i64>>(4)?.unwrap_or(0) as u64;
        let name: Vec<u8> = r.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default();
        let parent2 = r.get::<_, Option<i64>>(6)?.unwrap_or(0) as u64;
        let name2: Vec<u8> = r.get::<_, Option<Vec<u8>>>(7)?.unwrap_or_default();
        let flags: i64 = r.get(8)?;
        let meta = meta_from_row(r, 9)?;
        let data: Vec<u8> = r.get::<_, Option<Vec<u8>>>(17)?.unwrap_or_default();
        Ok((
            seq,
            r.get::<_, i64>(1)?,
            op,
            file,
            parent,
            name,
            parent2,
            name2,
            flags,
            meta,
            data,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, time_ns, op, file, parent, name, new_parent, new_name, flags, meta, data) = row?;
        let bad = || Error::Corrupt {
            path: Default::default(),
            detail: format!("record {seq} is malformed"),
        };
        let op = Op::from_i64(op).ok_or_else(bad)?;
        let need_meta = || meta.ok_or_else(bad);
        let change = match op {
            Op::Create => Change::Create {
                parent,
                name,
                file,
                meta: need_meta()?,
            },
            Op::Mkdir => Change::Mkdir {
                parent,
                name,
                file,
                meta: need_meta()?,
            },
            Op::Symlink => Change::Symlink {
                parent,
                name,
                file,
                meta: need_meta()?,
                target: data,
            },
            Op::Link => Change::Link { parent, name, file },
            Op::Rename => Change::Rename {
                parent,
                name,
                new_parent,
                new_name,
                file,
                exchange: flags & FLAG_EXCHANGE != 0,
            },
            Op::Unlink => Change::Unlink { parent, name, file },
            Op::Rmdir => Change::Rmdir { parent, name, file },
            Op::SetAttr => Change::SetAttr {
                file,
                meta: need_meta()?,
            },
            Op::SetXattr => Change::SetXattr {
                file,
                name,
                value: data,
            },
            Op::RemoveXattr => Change::RemoveXattr { file, name },
            Op::Content => Change::Content {
                file,
                meta: need_meta()?,
            },
        };
        out.push(Record {
            seq: seq as u64,
            time_ns,
            change,
        });
    }
    Ok(out)
}
