//! The filesystem core without a mount: operations on a backing folder and the records they
//! hand to the journal.
#![cfg(unix)]

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use fs_driver::{Caller, FsError, Options, PocketFs, SetAttr, ROOT};
use journal::{Journal, Op, Reader};

struct Fixture {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    db: std::path::PathBuf,
    journal: Option<Journal>,
    fs: Arc<PocketFs>,
}

const ME: Caller = Caller { uid: 0, gid: 0 };

fn fixture(quiet: Duration) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pocket");
    std::fs::create_dir_all(root.join(".backpocket")).unwrap();
    let db = root.join(".backpocket/journal.db");
    let journal = Journal::create(&db, std::fs::metadata(&root).unwrap().ino()).unwrap();
    let fs = PocketFs::new(
        &root,
        Some(journal.handle()),
        Options {
            quiet_period: quiet,
        },
    )
    .unwrap();
    Fixture {
        _tmp: tmp,
        root,
        db,
        journal: Some(journal),
        fs: Arc::new(fs),
    }
}

impl Fixture {
    fn ops(&self) -> Vec<Op> {
        self.journal.as_ref().unwrap().handle().sync().unwrap();
        Reader::open(&self.db)
            .unwrap()
            .records_after(0, 10_000)
            .unwrap()
            .iter()
            .map(|r| r.change.op())
            .collect()
    }
}

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn a_write_is_recorded_once_at_release() {
    let f = fixture(Duration::from_secs(60));
    let (e, fh) =
        f.fs.create(ME, ROOT, name("a"), 0o644, 0o022, libc::O_RDWR)
            .unwrap();
    for i in 0..10 {
        f.fs.write(fh, i * 3, b"abc").unwrap();
    }
    assert_eq!(
        f.ops(),
        vec![Op::Create],
        "no record while the file is open and fresh"
    );
    f.fs.release(fh).unwrap();
    assert_eq!(f.ops(), vec![Op::Create, Op::Content]);
    assert_eq!(std::fs::read(f.root.join("a")).unwrap().len(), 30);
    assert_eq!(e.stat.st_mode & 0o777, 0o644);

    // Opened for writing but not changed: nothing to record.
    let fh = f.fs.open(e.ino, libc::O_RDWR).unwrap();
    f.fs.release(fh).unwrap();
    // Opened read-only: never a record.
    let fh = f.fs.open(e.ino, libc::O_RDONLY).unwrap();
    assert_eq!(f.fs.read(fh, 0, 3).unwrap(), b"abc");
    f.fs.release(fh).unwrap();
    assert_eq!(f.ops(), vec![Op::Create, Op::Content]);

    // A new size is new contents; a new mode is metadata.
    f.fs.setattr(
        e.ino,
        None,
        SetAttr {
            size: Some(5),
            ..Default::default()
        },
    )
    .unwrap();
    f.fs.setattr(
        e.ino,
        None,
        SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        f.ops(),
        vec![Op::Create, Op::Content, Op::Content, Op::SetAttr]
    );
}

#[test]
fn fsync_makes_the_record_durable_before_returning() {
    let f = fixture(Duration::from_secs(60));
    let (_, fh) =
        f.fs.create(ME, ROOT, name("a"), 0o644, 0, libc::O_WRONLY)
            .unwrap();
    f.fs.write(fh, 0, b"data").unwrap();
    f.fs.fsync(fh, false).unwrap();
    // Read straight away, without syncing the writer: the record is there.
    let recs = Reader::open(&f.db).unwrap().records_after(0, 10).unwrap();
    assert_eq!(
        recs.iter().map(|r| r.change.op()).collect::<Vec<_>>(),
        vec![Op::Create, Op::Content]
    );
    f.fs.release(fh).unwrap();
    assert_eq!(
        f.ops(),
        vec![Op::Create, Op::Content],
        "release after fsync adds nothing"
    );
}

#[test]
fn a_file_held_open_is_recorded_after_its_quiet_period() {
    let f = fixture(Duration::from_millis(100));
    let (_, fh) =
        f.fs.create(ME, ROOT, name("log"), 0o644, 0, libc::O_WRONLY)
            .unwrap();
    f.fs.write(fh, 0, b"line 1\n").unwrap();
    f.fs.record_quiet_files(); // sees the change, starts the clock
    assert_eq!(f.ops(), vec![Op::Create]);
    std::thread::sleep(Duration::from_millis(150));
    f.fs.record_quiet_files();
    assert_eq!(f.ops(), vec![Op::Create, Op::Content]);
    // Quiet and unchanged since: nothing more.
    std::thread::sleep(Duration::from_millis(150));
    f.fs.record_quiet_files();
    f.fs.release(fh).unwrap();
    assert_eq!(f.ops(), vec![Op::Create, Op::Content]);
}

#[test]
fn the_pocket_folder_is_hidden_and_protected() {
    let f = fixture(Duration::from_secs(60));
    assert!(matches!(
        f.fs.lookup(ROOT, name(".backpocket")),
        Err(FsError::Hidden)
    ));
    let e =
        f.fs.mkdir(ME, ROOT, name(".backpocket"), 0o755, 0)
            .unwrap_err();
    assert_eq!(e.errno(), libc::EACCES);
    let e =
        f.fs.create(ME, ROOT, name(".backpocket"), 0o644, 0, libc::O_RDWR)
            .unwrap_err();
    assert_eq!(e.errno(), libc::EACCES);
    assert_eq!(
        f.fs.unlink(ROOT, name(".backpocket")).unwrap_err().errno(),
        libc::ENOENT
    );
    let dh = f.fs.opendir(ROOT).unwrap();
    let mut names = Vec::new();
    f.fs.readdir(dh, 0, |_, e| {
        names.push(e.name.clone());
        false
    })
    .unwrap();
    assert!(!names.iter().any(|n| n == b".backpocket"), "{names:?}");
    // Inside a subfolder the name is an ordinary name.
    let d = f.fs.mkdir(ME, ROOT, name("sub"), 0o755, 0).unwrap();
    f.fs.mkdir(ME, d.ino, name(".backpocket"), 0o755, 0)
        .unwrap();
}

#[test]
fn identity_survives_rename_link_and_forget() {
    let f = fixture(Duration::from_secs(60));
    let (e, fh) =
        f.fs.create(ME, ROOT, name("a"), 0o644, 0, libc::O_RDWR)
            .unwrap();
    f.fs.release(fh).unwrap();
    let d = f.fs.mkdir(ME, ROOT, name("d"), 0o755, 0).unwrap();
    f.fs.rename(ROOT, name("a"), d.ino, name("b"), 0).unwrap();
    let l = f.fs.link(e.ino, ROOT, name("c")).unwrap();
    assert_eq!(l.ino, e.ino);
    assert_eq!(l.stat.st_nlink, 2);
    // Renaming one name of a file onto another name of it changes nothing, records nothing.
    let before = f.ops().len();
    f.fs.rename(ROOT, name("c"), d.ino, name("b"), 0).unwrap();
    assert_eq!(f.ops().len(), before);
    // The kernel forgets it; a new lookup gives the same number.
    f.fs.forget(e.ino, 3);
    assert!(matches!(f.fs.getattr(e.ino), Err(FsError::Stale(_))));
    assert_eq!(f.fs.lookup(d.ino, name("b")).unwrap().ino, e.ino);
    assert_eq!(
        f.fs.getattr(e.ino).unwrap().st_ino,
        std::fs::metadata(f.root.join("d/b")).unwrap().ino()
    );
}

#[test]
fn recording_off_records_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = PocketFs::new(tmp.path(), None, Options::default()).unwrap();
    let (_, fh) = fs
        .create(ME, ROOT, name("a"), 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.write(fh, 0, b"x").unwrap();
    fs.fsync(fh, false).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(std::fs::read(tmp.path().join("a")).unwrap(), b"x");
}

/// Bytes written past the daemon (kernel passthrough writes the backing file directly), then
/// a chmod while the file stays open: the record must ask for the contents, or a kill -9
/// before the release leaves a catalog whose size and times match bytes no drain read. Times
/// set explicitly afterwards (as `cp -a` does) change no contents and ask for none.
#[test]
fn attributes_changed_after_unrecorded_writes_ask_for_the_contents() {
    let f = fixture(Duration::from_secs(60));
    let (e, fh) =
        f.fs.create(ME, ROOT, name("a"), 0o644, 0o022, libc::O_RDWR)
            .unwrap();
    f.fs.with_backing_file(fh, |file| {
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"written through passthrough", 0)
            .unwrap();
    })
    .unwrap();
    let chmod = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    f.fs.setattr(e.ino, Some(fh), chmod).unwrap();
    assert_eq!(
        f.ops(),
        vec![Op::Create, Op::Content],
        "chmod after a write"
    );
    let times = SetAttr {
        mtime: Some(fs_driver::SetTime::At(1_700_000_000, 0)),
        ..SetAttr::default()
    };
    f.fs.setattr(e.ino, Some(fh), times).unwrap();
    f.fs.release(fh).unwrap();
    assert_eq!(
        f.ops(),
        vec![Op::Create, Op::Content, Op::SetAttr],
        "times set after the contents were recorded, then a release with nothing new"
    );
}
