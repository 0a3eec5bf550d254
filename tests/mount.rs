//! Operations through a real mount: the drive's contents, the journal's records, errnos.

mod common;

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

use common::*;

fn modes() -> [&'static [&'static str]; 2] {
    [&[], &["--no-passthrough"]]
}

/// Every kind of change through the mount gives exactly its record, in order, and the drive
/// holds the result. Runs with kernel passthrough and through the daemon.
#[test]
fn operations_produce_their_records() {
    for mode in modes() {
        let p = Pocket::new();
        p.init();
        let start = p.last_seq();
        let m = p.mount(mode);
        let mnt = &m.mnt;

        fs::write(mnt.join("a.txt"), b"hello").unwrap();
        fs::create_dir(mnt.join("dir")).unwrap();
        fs::rename(mnt.join("a.txt"), mnt.join("dir/b.txt")).unwrap();
        fs::hard_link(mnt.join("dir/b.txt"), mnt.join("link")).unwrap();
        std::os::unix::fs::symlink("dir/b.txt", mnt.join("sym")).unwrap();
        fs::set_permissions(mnt.join("link"), fs::Permissions::from_mode(0o600)).unwrap();
        xattr_set(&mnt.join("link"), "user.color", b"blue");
        xattr_remove(&mnt.join("link"), "user.color");
        OpenOptions::new()
            .write(true)
            .open(mnt.join("link"))
            .unwrap()
            .set_len(2)
            .unwrap();
        fs::remove_file(mnt.join("sym")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            mnt.join("fifo").as_path(),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        fs::create_dir(mnt.join("empty")).unwrap();
        fs::remove_dir(mnt.join("empty")).unwrap();

        // Inside the mount, commands find the pocket by themselves.
        let out = run(&["journal", "status", "--json"], Some(mnt));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(st["pocket"].as_str().unwrap(), p.root.to_str().unwrap());
        m.unmount();

        let recs = p.records(start);
        let got = ops(&recs);
        // A rename, a link and an xattr change move the file's ctime (and a link its link
        // count): each is followed by the attributes the drive holds after it.
        let want = [
            "create a.txt",
            "content",
            "mkdir dir",
            "rename a.txt->b.txt",
            "setattr",
            "link link",
            "setattr",
            "symlink sym",
            "setattr",
            "setxattr user.color",
            "setattr",
            "removexattr user.color",
            "setattr",
            "content",
            "unlink sym",
            "create fifo",
            "mkdir empty",
            "rmdir empty",
        ];
        assert_eq!(got, want, "mode {mode:?}");
        // The content records carry the sizes the destinations will read.
        assert_eq!(recs[1]["size"], 5);
        assert_eq!(recs[13]["size"], 2);
        // Hard links and renames keep one file id.
        let file = recs[0]["file"].as_u64().unwrap();
        for i in [3, 4, 5, 6, 8] {
            assert_eq!(recs[i]["file"].as_u64().unwrap(), file, "record {i}");
        }

        assert_eq!(fs::read(p.root.join("dir/b.txt")).unwrap(), b"he");
        assert_eq!(
            fs::metadata(p.root.join("link"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert!(fs::symlink_metadata(p.root.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo_like());
        assert_catalog_matches(&p);
        // Nothing happened behind the journal's back: a scan finds no file changed.
        let scan: serde_json::Value =
            serde_json::from_str(&ok(&["scan", "--pocket", p.p(), "--json"])).unwrap();
        assert_eq!(scan["created"], 0, "{scan}");
        assert_eq!(scan["removed"], 0, "{scan}");
        assert_eq!(scan["renamed"], 0, "{scan}");
    }
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}
impl FifoLike for fs::FileType {
    fn is_fifo_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_fifo(self)
    }
}

fn xattr_set(path: &std::path::Path, name: &str, value: &[u8]) {
    rustix::fs::setxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

fn xattr_remove(path: &std::path::Path, name: &str) {
    rustix::fs::removexattr(path, name).unwrap();
}

/// When fsync returns, the content record is committed: a reader sees it at once.
#[test]
fn fsync_returns_after_the_record_is_committed() {
    for mode in modes() {
        let p = Pocket::new();
        p.init();
        let m = p.mount(mode);
        for i in 0..20u64 {
            let path = m.mnt.join(format!("f{i}"));
            let mut f = File::create(&path).unwrap();
            f.write_all(&vec![7u8; 1000 + i as usize]).unwrap();
            f.sync_all().unwrap();
            let reader = journal::Reader::open(&p.journal()).unwrap();
            let recs = reader.records_after(0, 100_000).unwrap();
            let ino = fs::metadata(&path).unwrap().ino();
            assert!(
                recs.iter().any(|r| matches!(&r.change,
                    journal::Change::Content { file, meta } if *file == ino && meta.size == 1000 + i)),
                "no committed content record for f{i} after fsync ({mode:?})"
            );
            drop(f);
        }
        m.unmount();
    }
}

/// `O_DIRECT` opens work on both I/O paths: through the daemon the backing file used to be
/// opened direct too, and every write failed (EINVAL) on the daemon's unaligned buffers.
#[test]
fn o_direct_writes_land_on_both_paths() {
    for mode in modes() {
        let p = Pocket::new();
        p.init();
        let m = p.mount(mode);
        // One aligned block, as O_DIRECT wants, written into a new file and then over it.
        let mut buf = vec![0u8; 2 * 4096];
        let at = buf.as_ptr().align_offset(4096);
        for (i, fill) in [(0u64, 0x11u8), (1, 0x22)] {
            buf[at..at + 4096].fill(fill);
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_DIRECT)
                .open(m.mnt.join("direct"))
                .unwrap();
            let n = std::os::unix::fs::FileExt::write_at(&f, &buf[at..at + 4096], 0)
                .unwrap_or_else(|e| panic!("O_DIRECT write {i} ({mode:?}): {e}"));
            assert_eq!(n, 4096);
        }
        m.unmount();
        assert_eq!(fs::read(p.root.join("direct")).unwrap(), vec![0x22u8; 4096]);
    }
}

/// Several writers at once: every file arrives whole, each gets its records.
#[test]
fn concurrent_writers() {
    for mode in modes() {
        let p = Pocket::new();
        p.init();
        let m = p.mount(mode);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let dir = m.mnt.join(format!("w{t}"));
                std::thread::spawn(move || {
                    fs::create_dir(&dir).unwrap();
                    for i in 0..50usize {
                        let data = vec![(t * 50 + i) as u8; 4096 * (1 + i % 7)];
                        fs::write(dir.join(format!("{i}")), &data).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        m.unmount();
        for t in 0..4usize {
            for i in 0..50usize {
                let data = fs::read(p.root.join(format!("w{t}/{i}"))).unwrap();
                assert_eq!(data, vec![(t * 50 + i) as u8; 4096 * (1 + i % 7)]);
            }
        }
        let recs = p.records(0);
        let contents = recs.iter().filter(|r| r["op"] == "content").count();
        assert_eq!(
            contents, 200,
            "one content record per written file ({mode:?})"
        );
        assert_catalog_matches(&p);
    }
}

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// Failing operations return the right errno; the pocket's own folder is invisible and
/// cannot be made through the mount.
#[test]
fn errno_cases_and_the_hidden_folder() {
    let p = Pocket::new();
    p.init();
    let m = p.mount(&[]);
    let mnt = &m.mnt;
    fs::create_dir(mnt.join("d")).unwrap();
    fs::write(mnt.join("d/f"), b"x").unwrap();
    assert_eq!(errno_of(fs::metadata(mnt.join("nope"))), libc::ENOENT);
    assert_eq!(errno_of(fs::create_dir(mnt.join("d"))), libc::EEXIST);
    assert_eq!(errno_of(fs::remove_dir(mnt.join("d"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::metadata(mnt.join("d/f/x"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::remove_file(mnt.join("d"))), libc::EISDIR);
    let long = "n".repeat(256);
    assert_eq!(
        errno_of(fs::write(mnt.join(&long), b"")),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno_of(fs::metadata(mnt.join(".backpocket"))),
        libc::ENOENT
    );
    assert_eq!(
        errno_of(fs::create_dir(mnt.join(".backpocket"))),
        libc::EACCES
    );
    assert_eq!(
        errno_of(fs::write(mnt.join(".backpocket"), b"")),
        libc::EACCES
    );
    assert_eq!(
        errno_of(fs::rename(mnt.join("d"), mnt.join(".backpocket"))),
        libc::EACCES
    );
    let names: Vec<_> = fs::read_dir(mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(!names.iter().any(|n| n == ".backpocket"), "{names:?}");
    // RENAME_NOREPLACE and RENAME_EXCHANGE.
    fs::write(mnt.join("x"), b"x").unwrap();
    fs::write(mnt.join("y"), b"y").unwrap();
    let noreplace = rustix::fs::renameat_with(
        rustix::fs::CWD,
        mnt.join("x").as_path(),
        rustix::fs::CWD,
        mnt.join("y").as_path(),
        rustix::fs::RenameFlags::NOREPLACE,
    );
    assert_eq!(noreplace.unwrap_err().raw_os_error(), libc::EEXIST);
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        mnt.join("x").as_path(),
        rustix::fs::CWD,
        mnt.join("y").as_path(),
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .unwrap();
    assert_eq!(fs::read(mnt.join("x")).unwrap(), b"y");
    assert_eq!(fs::read(mnt.join("y")).unwrap(), b"x");
    m.unmount();
    assert!(p.root.join(".backpocket/journal.db").exists());
    assert_catalog_matches(&p);
}

/// Names are bytes, 255 bytes work, files over 4 GiB and sparse files work, a file unlinked
/// while open keeps working, inode numbers survive rename and link.
#[test]
fn names_sizes_holes_and_identity() {
    for mode in modes() {
        let p = Pocket::new();
        p.init();
        let m = p.mount(mode);
        let mnt = &m.mnt;
        let latin1 = OsStr::from_bytes(b"caf\xe9-\xff");
        fs::write(mnt.join(latin1), b"bytes").unwrap();
        let long = "L".repeat(255);
        fs::write(mnt.join(&long), b"long").unwrap();
        assert_eq!(fs::read(p.root.join(latin1)).unwrap(), b"bytes");
        assert_eq!(fs::read(mnt.join(&long)).unwrap(), b"long");

        // 5 GiB sparse: data at 1 MiB and past 4 GiB, holes between.
        let big = mnt.join("big");
        {
            let mut f = File::create(&big).unwrap();
            f.seek(SeekFrom::Start(1 << 20)).unwrap();
            f.write_all(&[1u8; 4096]).unwrap();
            f.seek(SeekFrom::Start(5 << 30)).unwrap();
            f.write_all(&[2u8; 4096]).unwrap();
            f.sync_all().unwrap();
        }
        let f = File::open(&big).unwrap();
        assert_eq!(f.metadata().unwrap().len(), (5 << 30) + 4096);
        let data = rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(0)).unwrap();
        assert_eq!(data, 1 << 20);
        let hole = rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(1 << 20)).unwrap();
        assert!(
            ((1 << 20) + 4096..5 << 30).contains(&hole),
            "hole at {hole}"
        );
        let mut buf = [0u8; 4096];
        rustix::io::pread(&f, &mut buf, 5 << 30).unwrap();
        assert_eq!(buf, [2u8; 4096]);
        drop(f);
        assert!(fs::metadata(p.root.join("big")).unwrap().blocks() < 1024);

        // Unlinked while open.
        let mut open = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(mnt.join("tmp"))
            .unwrap();
        fs::remove_file(mnt.join("tmp")).unwrap();
        open.write_all(b"still here").unwrap();
        open.seek(SeekFrom::Start(0)).unwrap();
        let mut s = String::new();
        open.read_to_string(&mut s).unwrap();
        assert_eq!(s, "still here");
        drop(open);

        // Stable inode numbers.
        fs::write(mnt.join("id"), b"x").unwrap();
        let ino = fs::metadata(mnt.join("id")).unwrap().ino();
        fs::create_dir(mnt.join("sub")).unwrap();
        fs::rename(mnt.join("id"), mnt.join("sub/id2")).unwrap();
        fs::hard_link(mnt.join("sub/id2"), mnt.join("id3")).unwrap();
        assert_eq!(fs::metadata(mnt.join("sub/id2")).unwrap().ino(), ino);
        assert_eq!(fs::metadata(mnt.join("id3")).unwrap().ino(), ino);
        assert_eq!(fs::metadata(mnt.join("id3")).unwrap().nlink(), 2);
        assert_eq!(fs::metadata(p.root.join("id3")).unwrap().ino(), ino);
        m.unmount();
        assert_catalog_matches(&p);
    }
}

/// The daemon holds a descriptor per inode the kernel caches: it must not be bounded by the
/// soft open-files limit it was started with (1024 on most systems), and where even the hard
/// limit is lower than the files the kernel caches, it makes the kernel forget idle ones.
#[test]
fn more_files_than_the_open_files_limit() {
    for limit in ["--nofile=256:", "--nofile=256:256"] {
        more_files_under(limit);
    }
}

fn more_files_under(limit: &str) {
    let p = Pocket::new();
    p.init();
    let n = 1500;
    let m = Mounted::start_with(
        &p.root,
        &p.mnt,
        &[],
        &["prlimit".into(), limit.into(), "--".into()],
    );
    let d = m.mnt.join("many");
    fs::create_dir(&d).unwrap();
    for i in 0..n {
        fs::write(d.join(format!("f{i}")), i.to_string()).unwrap();
    }
    // The first files' descriptors were let go of by now; moving them must still move the
    // right files, and every file must still read as itself.
    fs::create_dir(m.mnt.join("moved")).unwrap();
    for i in 0..100 {
        fs::rename(d.join(format!("f{i}")), m.mnt.join(format!("moved/m{i}"))).unwrap();
    }
    for i in 0..n {
        let path = if i < 100 {
            m.mnt.join(format!("moved/m{i}"))
        } else {
            d.join(format!("f{i}"))
        };
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            i.to_string(),
            "{}",
            path.display()
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    }
    // Names going away and new files coming (ext4 hands freed inode numbers out again at once).
    for i in 100..200 {
        fs::remove_file(d.join(format!("f{i}"))).unwrap();
        fs::write(d.join(format!("g{i}")), format!("new {i}")).unwrap();
    }
    for i in 100..200 {
        assert_eq!(
            fs::read_to_string(d.join(format!("g{i}"))).unwrap(),
            format!("new {i}")
        );
    }
    assert_eq!(fs::read_dir(&d).unwrap().count(), n - 100);
    m.unmount();
    assert_catalog_matches(&p);
}
