//! The journal on its own: records round-trip, the catalog follows them, status figures,
//! cursors and compaction, damaged and foreign files.

use journal::{Change, Journal, Kind, Meta, Reader};

fn meta(kind: Kind, size: u64) -> Meta {
    Meta {
        kind,
        perm: 0o644,
        uid: 1000,
        gid: 1000,
        size,
        mtime_ns: 1_700_000_000_000_000_000,
        ctime_ns: 1_700_000_000_000_000_000,
        rdev: 0,
    }
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf, Journal) {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("journal.db");
    let j = Journal::create(&db, 1).unwrap();
    (tmp, db, j)
}

#[test]
fn records_round_trip_and_the_catalog_follows() {
    let (_tmp, db, j) = setup();
    let h = j.handle();
    let changes = vec![
        Change::Mkdir {
            parent: 1,
            name: b"d".to_vec(),
            file: 10,
            meta: meta(Kind::Dir, 0),
        },
        Change::Create {
            parent: 10,
            name: b"caf\xe9".to_vec(),
            file: 11,
            meta: meta(Kind::File, 0),
        },
        Change::Content {
            file: 11,
            meta: meta(Kind::File, 1234),
        },
        Change::Link {
            parent: 1,
            name: b"hard".to_vec(),
            file: 11,
        },
        Change::Symlink {
            parent: 1,
            name: b"s".to_vec(),
            file: 12,
            meta: meta(Kind::Symlink, 3),
            target: b"d/x".to_vec(),
        },
        Change::SetXattr {
            file: 11,
            name: b"user.a".to_vec(),
            value: b"v".to_vec(),
        },
        Change::Rename {
            parent: 10,
            name: b"caf\xe9".to_vec(),
            new_parent: 1,
            new_name: b"moved".to_vec(),
            file: 11,
            exchange: false,
        },
        Change::Rename {
            parent: 1,
            name: b"moved".to_vec(),
            new_parent: 1,
            new_name: b"s".to_vec(),
            file: 11,
            exchange: true,
        },
        Change::SetAttr {
            file: 11,
            meta: Meta {
                perm: 0o600,
                ..meta(Kind::File, 1234)
            },
        },
        Change::RemoveXattr {
            file: 11,
            name: b"user.a".to_vec(),
        },
        Change::Unlink {
            parent: 1,
            name: b"hard".to_vec(),
            file: 11,
        },
        Change::Rmdir {
            parent: 1,
            name: b"d".to_vec(),
            file: 10,
        },
    ];
    for c in &changes {
        h.record(c.clone());
    }
    h.sync().unwrap();
    let r = Reader::open(&db).unwrap();
    let recs = r.records_after(0, 100).unwrap();
    let got: Vec<Change> = recs.iter().map(|r| r.change.clone()).collect();
    assert_eq!(got, changes);
    assert_eq!(
        recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    // After the exchange: "s" is the file, "moved" the symlink; the hard link went.
    let tree: Vec<(Vec<u8>, u64)> = r
        .tree()
        .unwrap()
        .into_iter()
        .map(|e| (e.path, e.file))
        .collect();
    assert_eq!(tree, vec![(b"moved".to_vec(), 12), (b"s".to_vec(), 11)]);
    assert_eq!(r.file(11).unwrap().unwrap().perm, 0o600);
    assert!(r.xattrs(11).unwrap().is_empty());
    assert_eq!(
        r.file(10).unwrap(),
        None,
        "the removed folder left the catalog"
    );
    j.close().unwrap();
}

#[test]
fn changes_to_files_without_a_name_are_dropped() {
    let (_tmp, db, j) = setup();
    let h = j.handle();
    h.record(Change::Create {
        parent: 1,
        name: b"t".to_vec(),
        file: 5,
        meta: meta(Kind::File, 0),
    });
    h.record(Change::Unlink {
        parent: 1,
        name: b"t".to_vec(),
        file: 5,
    });
    // Written and closed after the unlink (it was open): nothing a destination can take.
    h.record(Change::Content {
        file: 5,
        meta: meta(Kind::File, 99),
    });
    h.sync().unwrap();
    let ops: Vec<_> = Reader::open(&db)
        .unwrap()
        .records_after(0, 10)
        .unwrap()
        .iter()
        .map(|r| r.change.op())
        .collect();
    assert_eq!(ops, vec![journal::Op::Create, journal::Op::Unlink]);
    j.close().unwrap();
}

#[test]
fn status_counts_what_no_destination_holds() {
    let (_tmp, db, j) = setup();
    let h = j.handle();
    for i in 0..10u64 {
        h.record(Change::Create {
            parent: 1,
            name: format!("f{i}").into_bytes(),
            file: 100 + i,
            meta: meta(Kind::File, 0),
        });
        h.record(Change::Content {
            file: 100 + i,
            meta: meta(Kind::File, 1000),
        });
    }
    h.sync().unwrap();
    let s = Reader::open(&db).unwrap().status().unwrap();
    assert_eq!(
        (s.pending_records, s.pending_bytes, s.records, s.last_seq),
        (20, 10_000, 20, 20)
    );
    assert!(s.oldest_pending_ns.is_some());
    assert!(s.size_bytes > 0);
    assert!(s.destinations.is_empty());

    // Nothing is compacted while no destination holds anything.
    assert_eq!(journal::compact(&db).unwrap(), 0);

    journal::set_cursor(&db, "disk", 10).unwrap();
    journal::set_cursor(&db, "office", 4).unwrap();
    let s = Reader::open(&db).unwrap().status().unwrap();
    // Protected once any destination holds it: pending after the furthest cursor.
    assert_eq!((s.pending_records, s.pending_bytes), (10, 5_000));
    let office = s.destinations.iter().find(|d| d.name == "office").unwrap();
    assert_eq!(
        (office.cursor, office.pending_records, office.pending_bytes),
        (4, 16, 8_000)
    );

    // Compaction removes only what every destination holds.
    assert_eq!(journal::compact(&db).unwrap(), 4);
    let s = Reader::open(&db).unwrap().status().unwrap();
    assert_eq!((s.records, s.last_seq), (16, 20));
    let disk = s.destinations.iter().find(|d| d.name == "disk").unwrap();
    assert_eq!((disk.pending_records, disk.pending_bytes), (10, 5_000));
    // Numbering goes on after compaction and a reopen.
    j.close().unwrap();
    let j = Journal::open(&db).unwrap();
    j.handle().record(Change::Link {
        parent: 1,
        name: b"l".to_vec(),
        file: 100,
    });
    j.handle().sync().unwrap();
    assert_eq!(Reader::open(&db).unwrap().status().unwrap().last_seq, 21);
    j.close().unwrap();
}

#[test]
fn damaged_or_foreign_files_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let garbage = tmp.path().join("garbage.db");
    std::fs::write(&garbage, vec![0xAB; 8192]).unwrap();
    let e = Journal::open(&garbage).unwrap_err();
    assert!(matches!(e, journal::Error::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("damaged"));
    let e = Reader::open(&garbage).unwrap_err();
    assert!(matches!(e, journal::Error::Corrupt { .. }), "{e}");

    // A 0-byte file is an empty SQLite database: no tables, version 0, not ours.
    let other = tmp.path().join("other.db");
    std::fs::File::create(&other).unwrap();
    let e = Journal::open(&other).unwrap_err();
    assert!(matches!(e, journal::Error::Corrupt { .. }), "{e}");

    let missing = tmp.path().join("missing.db");
    assert!(Journal::open(&missing).is_err());
    assert!(!missing.exists(), "opening must not create a journal");
}

#[test]
fn a_newer_format_is_refused() {
    let (_tmp, db, j) = setup();
    j.close().unwrap();
    // Bump user_version in the header (offset 60, big-endian) as a newer backpocket would.
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[60..64].copy_from_slice(&99u32.to_be_bytes());
    std::fs::write(&db, bytes).unwrap();
    let e = Journal::open(&db).unwrap_err();
    assert!(matches!(e, journal::Error::TooNew { found: 99, .. }), "{e}");
    assert!(e.to_string().contains("upgrade backpocket"));
}

#[test]
fn appends_from_many_threads_keep_each_threads_order() {
    let (_tmp, db, j) = setup();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let h = j.handle();
            std::thread::spawn(move || {
                for i in 0..500u64 {
                    h.record(Change::Create {
                        parent: 1,
                        name: format!("t{t}-{i}").into_bytes(),
                        file: t * 1000 + i + 2,
                        meta: meta(Kind::File, i),
                    });
                }
                h.sync().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let recs = Reader::open(&db).unwrap().records_after(0, 10_000).unwrap();
    assert_eq!(recs.len(), 2000);
    for t in 0..4u64 {
        let sizes: Vec<u64> = recs
            .iter()
            .filter_map(|r| match &r.change {
                Change::Create { file, meta, .. } if file / 1000 == t => Some(meta.size),
                _ => None,
            })
            .collect();
        assert_eq!(sizes, (0..500).collect::<Vec<_>>());
    }
    j.close().unwrap();
}

/// The replicator's wake-up: after each commit a subscriber learns the last committed seq.
#[test]
fn subscribers_are_woken_after_commits() {
    let (_tmp, _db, j) = setup();
    let woken = j.subscribe();
    j.handle().record(Change::Mkdir {
        parent: 1,
        name: b"d".to_vec(),
        file: 3,
        meta: meta(Kind::Dir, 0),
    });
    let seq = woken
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("woken after the commit");
    assert_eq!(seq, 1);
    j.close().unwrap();
}
