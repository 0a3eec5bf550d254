//! Stored journals of every format version are opened and read by this code, so a change
//! that breaks reading what users' drives already hold fails here. The fixtures are made by
//! `BACKPOCKET_WRITE_FIXTURES=1 cargo test -p journal --test fixtures` (once per version, then
//! committed; never regenerated for an old version).

use std::path::{Path, PathBuf};

use journal::{Change, Journal, Kind, Meta, Reader};

fn fixture(version: i64) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/journal-v{version}.db"))
}

fn meta(kind: Kind, size: u64) -> Meta {
    Meta {
        kind,
        perm: 0o640,
        uid: 1000,
        gid: 100,
        size,
        mtime_ns: 1_763_900_000_123_456_789,
        ctime_ns: 1_763_900_000_987_654_321,
        rdev: 0,
    }
}

/// The changes stored in the v1 fixture: one of each kind.
fn v1_changes() -> Vec<Change> {
    vec![
        Change::Mkdir {
            parent: 2,
            name: b"docs".to_vec(),
            file: 10,
            meta: meta(Kind::Dir, 0),
        },
        Change::Create {
            parent: 10,
            name: b"r\xe9sum\xe9.odt".to_vec(),
            file: 11,
            meta: meta(Kind::File, 0),
        },
        Change::Content {
            file: 11,
            meta: meta(Kind::File, 48_213),
        },
        Change::Symlink {
            parent: 2,
            name: b"latest".to_vec(),
            file: 12,
            meta: meta(Kind::Symlink, 16),
            target: b"docs/r\xe9sum\xe9.odt".to_vec(),
        },
        Change::Link {
            parent: 2,
            name: b"hard".to_vec(),
            file: 11,
        },
        Change::SetXattr {
            file: 11,
            name: b"user.tag".to_vec(),
            value: b"blue".to_vec(),
        },
        Change::SetAttr {
            file: 11,
            meta: meta(Kind::File, 48_213),
        },
        Change::Rename {
            parent: 2,
            name: b"hard".to_vec(),
            new_parent: 10,
            new_name: b"copy".to_vec(),
            file: 11,
            exchange: false,
        },
        Change::Create {
            parent: 2,
            name: b"fifo".to_vec(),
            file: 13,
            meta: meta(Kind::Fifo, 0),
        },
        Change::RemoveXattr {
            file: 11,
            name: b"user.tag".to_vec(),
        },
        Change::Unlink {
            parent: 2,
            name: b"fifo".to_vec(),
            file: 13,
        },
        Change::Mkdir {
            parent: 2,
            name: b"tmp".to_vec(),
            file: 14,
            meta: meta(Kind::Dir, 0),
        },
        Change::Rmdir {
            parent: 2,
            name: b"tmp".to_vec(),
            file: 14,
        },
        Change::Rename {
            parent: 10,
            name: b"copy".to_vec(),
            new_parent: 2,
            new_name: b"latest".to_vec(),
            file: 11,
            exchange: true,
        },
    ]
}

#[test]
fn write_fixtures_when_asked() {
    if std::env::var("BACKPOCKET_WRITE_FIXTURES").is_err() {
        return;
    }
    let path = fixture(journal::FORMAT_VERSION);
    assert!(
        !path.exists(),
        "fixtures of a released version are never rewritten"
    );
    let j = Journal::create(&path, 2).unwrap();
    for c in v1_changes() {
        j.handle().record(c);
    }
    journal::set_cursor(&path, "home-disk", 5).unwrap();
    // Version 2: a file open for writing when the session ended without a clean close
    // (dropped, not closed, so the mark stays).
    j.handle().mark_unsynced(11).unwrap();
    // Version 3: files known by path; a file the mount made, numbered 500 by the drive, gets
    // the journal's next id.
    j.use_path_identity().unwrap();
    j.handle().record(Change::Create {
        parent: 2,
        name: b"from the stick".to_vec(),
        file: 500,
        meta: meta(Kind::File, 0),
    });
    j.handle().sync().unwrap();
    drop(j);
}

#[test]
fn version_3_journal_knows_files_by_path_and_goes_on_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("journal.db");
    std::fs::copy(fixture(3), &db).unwrap();
    assert_eq!(user_version(&db), 3);
    let r = Reader::open(&db).unwrap();
    assert!(r.identity_by_path().unwrap());
    let made = r.records_after(14, 10).unwrap();
    assert_eq!(made.len(), 1);
    assert_eq!(
        made[0].change.file(),
        13,
        "the next id after the catalog's largest"
    );
    drop(r);
    // The writer goes on from there (the scan that starts a session maps the drive's numbers
    // afresh; the next id is kept in the journal).
    let j = Journal::open(&db).unwrap();
    assert!(j.handle().ids().by_path());
    j.close().unwrap();
    let next: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT value FROM meta WHERE key='next_id'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(next, 14);
    assert_eq!(user_version(&db), 3);
}

fn user_version(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

/// What both versions hold: the v1 changes, the root, a cursor at 5.
fn assert_v1_contents(r: &Reader) {
    let recs = r.records_after(0, 100).unwrap();
    let changes: Vec<Change> = recs.iter().map(|r| r.change.clone()).collect();
    assert_eq!(changes, v1_changes());
    assert_eq!(r.root().unwrap(), 2);
    let s = r.status().unwrap();
    assert_eq!(s.last_seq, 14);
    assert_eq!(s.destinations.len(), 1);
    assert_eq!(s.destinations[0].cursor, 5);
    assert_eq!(s.destinations[0].pending_records, 9);
    let tree: Vec<(Vec<u8>, u64)> = r
        .tree()
        .unwrap()
        .into_iter()
        .map(|e| (e.path, e.file))
        .collect();
    assert_eq!(
        tree,
        vec![
            (b"docs".to_vec(), 10),
            (b"docs/copy".to_vec(), 12),
            (b"docs/r\xe9sum\xe9.odt".to_vec(), 11),
            (b"latest".to_vec(), 11),
        ]
    );
}

#[test]
fn version_2_journal_reads_and_keeps_its_unsynced_files() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("journal.db");
    std::fs::copy(fixture(2), &db).unwrap();
    assert_eq!(user_version(&db), 2);
    assert_v1_contents(&Reader::open(&db).unwrap());
    let unsynced: Vec<i64> = rusqlite::Connection::open(&db)
        .unwrap()
        .prepare("SELECT file FROM unsynced")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(unsynced, vec![11]);
    // A clean close flushes the drive and forgets them. Windows has no way to flush a whole
    // drive without administrator rights, so there they stay for the next Unix scan.
    Journal::open(&db).unwrap().close().unwrap();
    let left: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM unsynced", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, if cfg!(unix) { 0 } else { 1 });
}

#[test]
fn version_1_journal_reads() {
    let tmp = tempfile::tempdir().unwrap();
    // Opening may create -wal and -shm files beside it: work on a copy.
    let db = tmp.path().join("journal.db");
    std::fs::copy(fixture(1), &db).unwrap();
    let r = Reader::open(&db).unwrap();
    assert_v1_contents(&r);
    // And the writer takes it up where it was, upgraded to the current version.
    drop(r);
    let j = Journal::open(&db).unwrap();
    j.handle().record(Change::Unlink {
        parent: 2,
        name: b"latest".to_vec(),
        file: 11,
    });
    j.close().unwrap();
    assert_eq!(Reader::open(&db).unwrap().status().unwrap().last_seq, 15);
    // Upgraded to version 2; version 3 only for a drive that numbers its files afresh.
    assert_eq!(user_version(&db), 2);
    let j = Journal::open(&db).unwrap();
    j.handle().mark_unsynced(11).unwrap();
    j.close().unwrap();
}
