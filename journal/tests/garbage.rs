//! Bad input, tried systematically: a journal whose rows were damaged (a bug, a bad sector
//! that SQLite still reads, an edit by hand) and files that are not journals at all. Every
//! reader gives an error or an answer, never a panic or a hang.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use journal::{Change, Journal, Kind, Meta, Reader};
use proptest::prelude::*;

fn meta(kind: Kind, size: u64) -> Meta {
    Meta {
        kind,
        perm: 0o644,
        uid: 1,
        gid: 1,
        size,
        mtime_ns: 5,
        ctime_ns: 5,
        rdev: 0,
    }
}

/// A journal with a few records of each shape, closed.
fn journal(dir: &Path) -> std::path::PathBuf {
    let db = dir.join("journal.db");
    let j = Journal::create(&db, 1).unwrap();
    let h = j.handle();
    h.record(Change::Mkdir {
        parent: 1,
        name: b"docs".to_vec(),
        file: 10,
        meta: meta(Kind::Dir, 0),
    });
    h.record(Change::Create {
        parent: 10,
        name: b"a.txt".to_vec(),
        file: 11,
        meta: meta(Kind::File, 0),
    });
    h.record(Change::Content {
        file: 11,
        meta: meta(Kind::File, 42),
    });
    h.record(Change::SetXattr {
        file: 11,
        name: b"user.x".to_vec(),
        value: b"v".to_vec(),
    });
    h.record(Change::Rename {
        parent: 10,
        name: b"a.txt".to_vec(),
        new_parent: 1,
        new_name: b"b.txt".to_vec(),
        file: 11,
        exchange: false,
    });
    h.sync().unwrap();
    j.close().unwrap();
    db
}

/// Everything a command reads, on a thread that must finish in time.
fn read_everything(db: &Path) {
    let db = db.to_owned();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok(r) = Reader::open(&db) {
            let _ = r.status();
            let _ = r.records_after(0, 1000);
            let _ = r.root();
            let _ = r.children(1);
            let _ = r.tree();
            let _ = r.snapshot();
            for f in [1, 10, 11, 12] {
                let _ = r.path_of(f);
                let _ = r.file(f);
                let _ = r.xattrs(f);
            }
            let _ = r.cursor("home");
            let _ = r.journal_id();
        }
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(20)).is_ok(),
        "a reader hung (or panicked) on a damaged journal"
    );
}

/// A column of a table, and a value to put there.
#[derive(Clone, Debug)]
enum Value {
    Int(i64),
    Blob(Vec<u8>),
    Null,
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Int),
        (-3i64..20).prop_map(Value::Int),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Blob),
        Just(Value::Null),
    ]
}

const COLUMNS: &[(&str, &str)] = &[
    ("records", "op"),
    ("records", "file"),
    ("records", "parent"),
    ("records", "name"),
    ("records", "parent2"),
    ("records", "name2"),
    ("records", "flags"),
    ("records", "kind"),
    ("records", "perm"),
    ("records", "size"),
    ("records", "mtime_ns"),
    ("records", "data"),
    ("records", "bytes"),
    ("records", "cum_bytes"),
    ("records", "time_ns"),
    ("files", "kind"),
    ("files", "size"),
    ("files", "perm"),
    ("names", "parent"),
    ("names", "file"),
    ("names", "name"),
    ("xattrs", "value"),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Damaged values in any column of the records and the catalog.
    #[test]
    fn damaged_rows_give_errors_not_panics(
        edits in proptest::collection::vec((0..COLUMNS.len(), value(), any::<prop::sample::Index>()), 1..6)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = journal(dir.path());
        {
            let conn = rusqlite::Connection::open(&db).unwrap();
            for (c, v, row) in edits {
                let (table, column) = COLUMNS[c];
                let rowids: Vec<i64> = conn
                    .prepare(&format!("SELECT rowid FROM {table}"))
                    .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                    .unwrap_or_default();
                if rowids.is_empty() {
                    continue;
                }
                let id = rowids[row.index(rowids.len())];
                let sql = format!("UPDATE {table} SET {column} = ?1 WHERE rowid = ?2");
                // Constraint failures (NOT NULL, keys) are SQLite keeping the file sane.
                let _ = match v {
                    Value::Int(i) => conn.execute(&sql, rusqlite::params![i, id]),
                    Value::Blob(b) => conn.execute(&sql, rusqlite::params![b, id]),
                    Value::Null => conn.execute(&sql, rusqlite::params![rusqlite::types::Null, id]),
                };
            }
        }
        read_everything(&db);
    }

    /// Files that are not journals (or journals cut short): refused with an error.
    #[test]
    fn files_that_are_not_journals_are_refused(
        bytes in proptest::collection::vec(any::<u8>(), 0..8192),
        keep in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = journal(dir.path());
        let data = match keep {
            // A real journal cut short, then garbage.
            Some(k) => {
                let mut real = std::fs::read(&db).unwrap();
                real.truncate(k.index(real.len()));
                real.extend_from_slice(&bytes);
                real
            }
            None => bytes,
        };
        std::fs::write(&db, &data).unwrap();
        let _ = std::fs::remove_file(db.with_extension("db-wal"));
        read_everything(&db);
        let _ = Journal::open(&db);
    }
}

#[test]
fn a_folder_inside_itself_in_the_catalog_does_not_hang_readers() {
    let dir = tempfile::tempdir().unwrap();
    let db = journal(dir.path());
    let conn = rusqlite::Connection::open(&db).unwrap();
    // docs (10) named inside itself, and the root inside docs.
    conn.execute(
        "INSERT INTO names(parent, name, file) VALUES (10, X'6c6f6f70', 10)",
        [],
    )
    .unwrap();
    conn.execute(
        "UPDATE names SET parent = 10 WHERE file = 10 AND parent = 1",
        [],
    )
    .unwrap();
    drop(conn);
    read_everything(&db);
}
