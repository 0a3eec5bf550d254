//! Model-based test of the reconciliation scan: random changes made directly to a folder
//! (creates, writes, moves of files and folders, swaps, links, removals, chmod, xattrs), then
//! a scan; the journal's catalog must describe the folder exactly, every time.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use journal::{Journal, Kind, Reader};
use proptest::prelude::*;

type Tree = BTreeMap<
    Vec<u8>,
    (
        u8,
        u64,
        u64,
        i64,
        u32,
        Option<Vec<u8>>,
        Vec<(Vec<u8>, Vec<u8>)>,
    ),
>;

fn disk(root: &Path) -> Tree {
    fn walk(dir: &Path, prefix: &[u8], out: &mut Tree) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if prefix.is_empty() && e.file_name() == ".backpocket" {
                continue;
            }
            let md = fs::symlink_metadata(e.path()).unwrap();
            let m = journal::Meta::from_std(&md).unwrap();
            let mut p = prefix.to_vec();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(e.file_name().as_bytes());
            let dir = m.kind == Kind::Dir;
            let target = (m.kind == Kind::Symlink).then(|| {
                fs::read_link(e.path())
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            });
            let x = if m.kind == Kind::Symlink {
                vec![]
            } else {
                journal::read_xattrs(&e.path()).unwrap()
            };
            out.insert(
                p.clone(),
                (
                    m.kind as u8,
                    md.ino(),
                    if dir { 0 } else { m.size },
                    m.mtime_ns,
                    m.perm,
                    target,
                    x,
                ),
            );
            if dir {
                walk(&e.path(), &p, out);
            }
        }
    }
    let mut t = Tree::new();
    walk(root, b"", &mut t);
    t
}

fn catalog(db: &Path) -> Tree {
    let r = Reader::open(db).unwrap();
    r.tree()
        .unwrap()
        .into_iter()
        .map(|e| {
            let dir = e.meta.kind == Kind::Dir;
            let x = r.xattrs(e.file).unwrap();
            (
                e.path,
                (
                    e.meta.kind as u8,
                    e.file,
                    if dir { 0 } else { e.meta.size },
                    e.meta.mtime_ns,
                    e.meta.perm,
                    e.target,
                    x,
                ),
            )
        })
        .collect()
}

/// Every regular file's bytes, by inode number.
fn contents(root: &Path) -> BTreeMap<u64, Vec<u8>> {
    let (all, _) = entries(root);
    all.into_iter()
        .filter_map(|p| {
            let md = fs::symlink_metadata(&p).ok()?;
            md.is_file().then(|| (md.ino(), fs::read(&p).unwrap()))
        })
        .collect()
}

/// One random change, chosen by numbers and applied to whatever exists.
#[derive(Clone, Debug)]
enum Step {
    Write(u8, u16),
    Mkdir(u8),
    Move(u8, u8),
    Swap(u8, u8),
    Link(u8, u8),
    Symlink(u8),
    Remove(u8),
    Chmod(u8, u16),
    Xattr(u8, u8),
    Touch(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (any::<u8>(), any::<u16>()).prop_map(|(a, n)| Step::Write(a, n)),
        1 => any::<u8>().prop_map(Step::Mkdir),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Step::Move(a, b)),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Step::Swap(a, b)),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Step::Link(a, b)),
        1 => any::<u8>().prop_map(Step::Symlink),
        2 => any::<u8>().prop_map(Step::Remove),
        1 => (any::<u8>(), any::<u16>()).prop_map(|(a, m)| Step::Chmod(a, m)),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(a, v)| Step::Xattr(a, v)),
        1 => any::<u8>().prop_map(Step::Touch),
    ]
}

/// Everything under root (but the pocket's own folder), sorted, for picking by number.
fn entries(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut all = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if d == root && e.file_name() == ".backpocket" {
                continue;
            }
            let p = e.path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
                dirs.push(p.clone());
            }
            all.push(p);
        }
    }
    all.sort();
    dirs.sort();
    (all, dirs)
}

fn apply(root: &Path, s: &Step, counter: &mut u32) {
    let (all, dirs) = entries(root);
    let pick = |v: &Vec<PathBuf>, i: u8| -> Option<PathBuf> {
        (!v.is_empty()).then(|| v[i as usize % v.len()].clone())
    };
    let mut fresh = |dir: &Path| {
        *counter += 1;
        dir.join(format!("n{counter}"))
    };
    let is_dir = |p: &Path| fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false);
    let _ = match s {
        Step::Write(a, n) => {
            let target = match pick(&all, *a).filter(|p| {
                fs::symlink_metadata(p)
                    .map(|m| m.is_file())
                    .unwrap_or(false)
            }) {
                Some(p) if a % 2 == 0 => p,
                _ => fresh(&pick(&dirs, *a).unwrap()),
            };
            fs::write(target, vec![*a; *n as usize % 3000])
        }
        Step::Mkdir(a) => fs::create_dir(fresh(&pick(&dirs, *a).unwrap())),
        Step::Move(a, b) => match (pick(&all, *a), pick(&dirs, *b)) {
            (Some(src), Some(dst_dir)) if !dst_dir.starts_with(&src) => {
                let dst = if b % 3 == 0 {
                    // Onto an existing file name, replacing it.
                    match pick(&all, *b).filter(|p| !is_dir(p) && !is_dir(&src)) {
                        Some(p) => p,
                        None => fresh(&dst_dir),
                    }
                } else {
                    fresh(&dst_dir)
                };
                fs::rename(src, dst)
            }
            _ => Ok(()),
        },
        Step::Swap(a, b) => match (pick(&all, *a), pick(&all, *b)) {
            (Some(x), Some(y)) if !x.starts_with(&y) && !y.starts_with(&x) => {
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    x.as_path(),
                    rustix::fs::CWD,
                    y.as_path(),
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .map_err(Into::into)
            }
            _ => Ok(()),
        },
        Step::Link(a, b) => match pick(&all, *a).filter(|p| !is_dir(p)) {
            Some(src) => fs::hard_link(src, fresh(&pick(&dirs, *b).unwrap())),
            None => Ok(()),
        },
        Step::Symlink(a) => {
            std::os::unix::fs::symlink("some/target", fresh(&pick(&dirs, *a).unwrap()))
        }
        Step::Remove(a) => match pick(&all, *a) {
            Some(p) if is_dir(&p) => fs::remove_dir_all(p),
            Some(p) => fs::remove_file(p),
            None => Ok(()),
        },
        Step::Chmod(a, m) => match pick(&all, *a)
            .filter(|p| !fs::symlink_metadata(p).unwrap().file_type().is_symlink())
        {
            Some(p) => {
                fs::set_permissions(p, fs::Permissions::from_mode(0o700 | (*m as u32 & 0o077)))
            }
            None => Ok(()),
        },
        Step::Xattr(a, v) => match pick(&all, *a)
            .filter(|p| !fs::symlink_metadata(p).unwrap().file_type().is_symlink())
        {
            Some(p) if v % 4 == 0 => rustix::fs::removexattr(p.as_path(), "user.k")
                .or(Ok(()))
                .map_err(|e: rustix::io::Errno| e.into()),
            Some(p) => rustix::fs::setxattr(
                p.as_path(),
                "user.k",
                &[*v],
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(Into::into),
            None => Ok(()),
        },
        Step::Touch(a) => {
            match pick(&all, *a).filter(|p| fs::symlink_metadata(p).unwrap().is_file()) {
                // Rewrite the same size and put the old mtime back: only ctime tells.
                Some(p) => {
                    let md = fs::metadata(&p).unwrap();
                    let len = md.len() as usize;
                    fs::write(&p, vec![0xEE; len]).and_then(|_| {
                        fs::File::options()
                            .write(true)
                            .open(&p)?
                            .set_modified(md.modified()?)
                    })
                }
                None => Ok(()),
            }
        }
    };
}

proptest! {
    // 24 cases by default (a few seconds); PROPTEST_CASES=1000 for a long run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        .. ProptestConfig::default()
    })]

    #[test]
    fn scan_makes_the_catalog_equal_the_folder(rounds in prop::collection::vec(prop::collection::vec(step(), 1..25), 1..4)) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pocket");
        fs::create_dir_all(root.join(".backpocket")).unwrap();
        let db = root.join(".backpocket/journal.db");
        let j = Journal::create(&db, fs::metadata(&root).unwrap().ino()).unwrap();
        let mut counter = 0;
        let mut before = contents(&root);
        for steps in &rounds {
            for s in steps {
                apply(&root, s, &mut counter);
            }
            let last = Reader::open(&db).unwrap().status().unwrap().last_seq;
            journal::scan(&root, &db, &j.handle()).unwrap();
            let (d, c) = (disk(&root), catalog(&db));
            prop_assert_eq!(&d, &c, "after {:?}", steps);
            // Contents are not in the catalog: check that every file whose bytes changed got
            // a record that makes destinations read it again.
            let after = contents(&root);
            let recs = Reader::open(&db).unwrap().records_after(last, usize::MAX >> 1).unwrap();
            for (ino, bytes) in &after {
                if before.get(ino) != Some(bytes) {
                    prop_assert!(
                        recs.iter().any(|r| r.change.file() == *ino
                            && matches!(r.change.op(), journal::Op::Content | journal::Op::Create)),
                        "file {} changed without a content record, after {:?}", ino, steps
                    );
                }
            }
            before = after;
        }
        // Nothing changed since the last scan: the next one records nothing.
        let again = journal::scan(&root, &db, &j.handle()).unwrap();
        prop_assert_eq!(again.changes(), 0, "{:?}", again);
        j.close().unwrap();
    }
}

/// An inode number freed and taken again by another kind of file under the same name while
/// nothing recorded (a symlink replaced by a file): the scan must see a new file. Found by
/// the property test above on a fresh machine.
#[test]
fn a_reused_inode_number_of_another_kind_is_a_new_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pocket");
    fs::create_dir_all(root.join(".backpocket")).unwrap();
    let db = root.join(".backpocket/journal.db");
    let j = Journal::create(&db, fs::metadata(&root).unwrap().ino()).unwrap();
    let mut reused = false;
    for _ in 0..50 {
        let path = root.join("x");
        let _ = fs::remove_file(&path);
        std::os::unix::fs::symlink("target", &path).unwrap();
        journal::scan(&root, &db, &j.handle()).unwrap();
        let old = fs::symlink_metadata(&path).unwrap().ino();
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"now a file").unwrap();
        journal::scan(&root, &db, &j.handle()).unwrap();
        assert_eq!(disk(&root), catalog(&db));
        if fs::metadata(&path).unwrap().ino() == old {
            reused = true;
            break;
        }
    }
    assert!(
        reused,
        "the filesystem never reused the number; the case was not tried"
    );
    j.close().unwrap();
}

/// A file marked unsynced (open for writing over its data) is read again by the next scan
/// even though its stat did not change, as after a power cut that kept new bytes under old
/// metadata; a clean close forgets the mark, and a journal left without one keeps it.
#[test]
fn unsynced_files_are_read_again_until_a_clean_close() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pocket");
    fs::create_dir_all(root.join(".backpocket")).unwrap();
    let db = root.join(".backpocket/journal.db");
    fs::write(root.join("doc"), b"version one").unwrap();
    fs::write(root.join("other"), b"untouched").unwrap();
    let j = Journal::create(&db, fs::metadata(&root).unwrap().ino()).unwrap();
    journal::scan(&root, &db, &j.handle()).unwrap();
    j.close().unwrap();
    let doc = fs::metadata(root.join("doc")).unwrap().ino();
    // Let the racy window pass, so that an unchanged stat is trusted.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let contents = |db: &Path, after: u64| -> Vec<u64> {
        Reader::open(db)
            .unwrap()
            .records_after(after, 1000)
            .unwrap()
            .into_iter()
            .filter_map(|r| match r.change {
                journal::Change::Content { file, .. } => Some(file),
                _ => None,
            })
            .collect()
    };

    // Marked, then the session ends without a clean close (dropped: committed, not settled,
    // the rows a crash leaves).
    let j = Journal::open(&db).unwrap();
    let seq = journal::scan(&root, &db, &j.handle()).unwrap();
    assert_eq!(seq.changes(), 0, "nothing changed yet: {seq:?}");
    j.handle().mark_unsynced(doc).unwrap();
    let last = Reader::open(&db).unwrap().status().unwrap().last_seq;
    drop(j);

    // The next scan reads it again, and only it; the mark stays until a clean close.
    let j = Journal::open(&db).unwrap();
    let r = journal::scan(&root, &db, &j.handle()).unwrap();
    assert_eq!((r.reread, r.modified, r.changes()), (1, 0, 1), "{r:?}");
    assert_eq!(contents(&db, last), vec![doc]);
    let last = Reader::open(&db).unwrap().status().unwrap().last_seq;
    let r = journal::scan(&root, &db, &j.handle()).unwrap();
    assert_eq!(r.reread, 1, "the mark lasts until a clean close: {r:?}");
    j.close().unwrap();

    // Closed cleanly: the drive was made durable, the mark is gone.
    let j = Journal::open(&db).unwrap();
    let r = journal::scan(&root, &db, &j.handle()).unwrap();
    assert_eq!(r.changes(), 0, "{r:?}");
    assert_eq!(contents(&db, last + 1), Vec::<u64>::new());
    j.close().unwrap();
}

/// The pocket as paths: kind, size, mtime, perm, target, xattrs (no ids), and which paths are
/// one file (hard links), as groups of paths.
fn shape(t: &Tree) -> (BTreeMap<Vec<u8>, Tree2>, Vec<LinkGroup>) {
    let mut groups: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (p, (kind, id, size, mtime, perm, target, x)) in t {
        groups.entry(*id).or_default().push(p.clone());
        out.insert(
            p.clone(),
            (*kind, *size, *mtime, *perm, target.clone(), x.clone()),
        );
    }
    let mut groups: Vec<LinkGroup> = groups.into_values().collect();
    groups.sort();
    (out, groups)
}

type Tree2 = (u8, u64, i64, u32, Option<Vec<u8>>, Vec<(Vec<u8>, Vec<u8>)>);
/// The paths of one file.
type LinkGroup = Vec<Vec<u8>>;

/// Gives every file in the pocket a new inode number, keeping paths, contents, times, modes,
/// xattrs and hard links: what a drive that numbers files afresh at each mount shows after a
/// replug. (The change times move: a copy cannot keep them.)
fn renumber(root: &Path) {
    let tmp = root.join(".backpocket/renumber");
    fs::create_dir_all(&tmp).unwrap();
    let top: Vec<PathBuf> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != ".backpocket")
        .collect();
    if top.is_empty() {
        return;
    }
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .args(&top)
        .arg(&tmp)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a failed");
    for p in &top {
        if fs::symlink_metadata(p).unwrap().is_dir() {
            fs::remove_dir_all(p).unwrap();
        } else {
            fs::remove_file(p).unwrap();
        }
    }
    for e in fs::read_dir(&tmp).unwrap() {
        let e = e.unwrap();
        fs::rename(e.path(), root.join(e.file_name())).unwrap();
    }
    fs::remove_dir(&tmp).unwrap();
}

/// The path of each file id in the catalog.
fn ids_by_path(db: &Path) -> BTreeMap<Vec<u8>, u64> {
    let r = Reader::open(db).unwrap();
    r.tree()
        .unwrap()
        .into_iter()
        .map(|e| (e.path, e.file))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(12),
        .. ProptestConfig::default()
    })]

    /// Where files are known by path (a drive that renumbers them, as exFAT does): random
    /// changes, a scan, then every file renumbered; the scan after it records no file as new,
    /// removed or moved, every path keeps its id, and the catalog still describes the folder.
    #[test]
    fn by_path_a_renumbered_pocket_keeps_every_file(rounds in prop::collection::vec(prop::collection::vec(step(), 1..25), 1..4)) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pocket");
        fs::create_dir_all(root.join(".backpocket")).unwrap();
        let db = root.join(".backpocket/journal.db");
        let j = Journal::create(&db, fs::metadata(&root).unwrap().ino()).unwrap();
        journal::scan(&root, &db, &j.handle()).unwrap();
        j.use_path_identity().unwrap();
        let mut counter = 0;
        for steps in &rounds {
            for s in steps {
                apply(&root, s, &mut counter);
            }
            journal::scan(&root, &db, &j.handle()).unwrap();
            prop_assert_eq!(shape(&disk(&root)), shape(&catalog(&db)), "after {:?}", steps);
            let ids = ids_by_path(&db);
            renumber(&root);
            let r = journal::scan(&root, &db, &j.handle()).unwrap();
            prop_assert_eq!((r.created, r.removed, r.renamed, r.linked), (0, 0, 0, 0), "{:?} after {:?}", r, steps);
            prop_assert_eq!(&ids, &ids_by_path(&db));
            prop_assert_eq!(shape(&disk(&root)), shape(&catalog(&db)), "after renumbering, after {:?}", steps);
        }
        j.close().unwrap();
    }
}

/// Where files are known by path: a file moved while the pocket was elsewhere (same size and
/// time, a path the catalog no longer finds) is a move and keeps its id; a file with new bytes
/// at an old path is that file, modified; new files get ids never used before.
#[test]
fn by_path_moves_made_elsewhere_are_moves() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pocket");
    fs::create_dir_all(root.join(".backpocket")).unwrap();
    fs::create_dir_all(root.join("docs")).unwrap();
    fs::write(root.join("docs/report.txt"), b"quarterly figures").unwrap();
    fs::write(root.join("notes.txt"), b"a note").unwrap();
    let db = root.join(".backpocket/journal.db");
    let j = Journal::create(&db, fs::metadata(&root).unwrap().ino()).unwrap();
    journal::scan(&root, &db, &j.handle()).unwrap();
    j.use_path_identity().unwrap();
    let before = ids_by_path(&db);

    renumber(&root);
    fs::create_dir(root.join("archive")).unwrap();
    fs::rename(
        root.join("docs/report.txt"),
        root.join("archive/report-2026.txt"),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(30));
    fs::write(root.join("notes.txt"), b"a longer note").unwrap();
    fs::write(root.join("new.txt"), b"new").unwrap();
    let r = journal::scan(&root, &db, &j.handle()).unwrap();
    // (The copy that renumbers moves every change time, so every file reads as modified.)
    assert_eq!((r.created, r.removed, r.renamed), (2, 0, 1), "{r:?}");
    let after = ids_by_path(&db);
    assert_eq!(
        after[b"archive/report-2026.txt".as_slice()],
        before[b"docs/report.txt".as_slice()]
    );
    assert_eq!(
        after[b"notes.txt".as_slice()],
        before[b"notes.txt".as_slice()]
    );
    let old: std::collections::HashSet<u64> = before.values().copied().collect();
    assert!(!old.contains(&after[b"new.txt".as_slice()]));
    assert!(!old.contains(&after[b"archive".as_slice()]));
    assert_eq!(shape(&disk(&root)), shape(&catalog(&db)));
    j.close().unwrap();
}
