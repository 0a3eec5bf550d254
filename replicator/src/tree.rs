//! The pocket's tree as a destination holds it: a checkpoint with the segments after it
//! replayed. Restore, `log` and the drain (which must know what is alive at the end of a
//! batch) all work on it.

use std::collections::{BTreeMap, HashMap};

use crate::format::{
    Checkpoint, Content, FileState, NameEntry, Pending, Position, Segment, VChange, VMeta, Xattr,
    KIND_DIR,
};

#[derive(Clone, Debug, Default)]
pub struct Tree {
    pub root: u64,
    pub files: HashMap<u64, FileState>,
    /// (parent, name) → file, sorted so that listings and checkpoints are deterministic.
    pub names: BTreeMap<(u64, Vec<u8>), u64>,
    /// How many names each file has.
    links: HashMap<u64, u32>,
    /// Files whose contents at this point are still on their way, by file: the tree holds
    /// what the destination had of them before.
    pub pending: BTreeMap<u64, Pending>,
    /// Files whose last `Patch` did not fit the contents before it (a damaged log): their
    /// contents are unknown.
    pub broken: std::collections::BTreeSet<u64>,
}

impl Tree {
    pub fn new(root: u64) -> Tree {
        let mut t = Tree {
            root,
            ..Tree::default()
        };
        t.files.insert(
            root,
            FileState {
                id: root,
                meta: VMeta {
                    kind: KIND_DIR,
                    perm: 0o755,
                    uid: 0,
                    gid: 0,
                    size: 0,
                    mtime_ns: 0,
                    ctime_ns: 0,
                    rdev: 0,
                },
                target: None,
                xattrs: Vec::new(),
                content: None,
            },
        );
        t
    }

    /// The journal's catalog as a tree (contents not yet known).
    pub fn from_snapshot(snap: &journal::Snapshot) -> Tree {
        let mut t = Tree::new(snap.root);
        for (id, meta, target) in &snap.files {
            t.files.insert(
                *id,
                FileState {
                    id: *id,
                    meta: VMeta::from(*meta),
                    target: target.clone(),
                    xattrs: Vec::new(),
                    content: None,
                },
            );
        }
        for (file, name, value) in &snap.xattrs {
            if let Some(f) = t.files.get_mut(file) {
                f.xattrs.push(Xattr {
                    name: name.clone(),
                    value: value.clone(),
                });
            }
        }
        for f in t.files.values_mut() {
            f.xattrs.sort();
        }
        for (parent, name, file) in &snap.names {
            t.apply(&VChange::Link {
                parent: *parent,
                name: name.clone(),
                file: *file,
            });
        }
        t
    }

    pub fn from_checkpoint(cp: Checkpoint) -> Tree {
        let mut t = Tree {
            root: cp.root,
            ..Tree::default()
        };
        for f in cp.files {
            t.files.insert(f.id, f);
        }
        for n in cp.names {
            *t.links.entry(n.file).or_default() += 1;
            t.names.insert((n.parent, n.name), n.file);
        }
        t.pending = cp.pending.into_iter().map(|p| (p.file, p)).collect();
        t
    }

    /// Replays a segment: its records, then its list of files in flight.
    pub fn apply_segment(&mut self, s: &Segment) {
        for r in &s.records {
            self.apply(&r.change);
        }
        self.pending = s.pending.iter().map(|p| (p.file, *p)).collect();
    }

    /// The files in flight, as a segment or checkpoint lists them.
    pub fn pending_list(&self) -> Vec<Pending> {
        self.pending.values().copied().collect()
    }

    pub fn to_checkpoint(&self, pos: Position) -> Checkpoint {
        let mut files: Vec<FileState> = self.files.values().cloned().collect();
        files.sort_by_key(|f| f.id);
        Checkpoint {
            pos,
            root: self.root,
            files,
            names: self
                .names
                .iter()
                .map(|((parent, name), file)| NameEntry {
                    parent: *parent,
                    name: name.clone(),
                    file: *file,
                })
                .collect(),
            pending: self.pending_list(),
        }
    }

    pub fn alive(&self, file: u64) -> bool {
        self.files.contains_key(&file)
    }

    fn add_name(&mut self, parent: u64, name: Vec<u8>, file: u64) {
        if let Some(old) = self.names.insert((parent, name), file) {
            if old != file {
                self.drop_link(old);
            } else {
                return;
            }
        }
        *self.links.entry(file).or_default() += 1;
    }

    fn remove_name(&mut self, parent: u64, name: &[u8]) -> Option<u64> {
        let file = self.names.remove(&(parent, name.to_vec()))?;
        self.drop_link(file);
        Some(file)
    }

    fn drop_link(&mut self, file: u64) {
        let n = self.links.entry(file).or_default();
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.links.remove(&file);
            if let Some(f) = self.files.remove(&file) {
                if f.meta.kind == KIND_DIR {
                    self.drop_subtree(file);
                }
            }
        }
    }

    /// A folder replaced by a rename loses whatever the records never removed (there is
    /// nothing, since only empty folders are replaced, but replay stays total).
    fn drop_subtree(&mut self, dir: u64) {
        let children: Vec<(Vec<u8>, u64)> = self
            .names
            .range((dir, Vec::new())..)
            .take_while(|((p, _), _)| *p == dir)
            .map(|((_, n), f)| (n.clone(), *f))
            .collect();
        for (name, _) in children {
            self.remove_name(dir, &name);
        }
    }

    fn new_file(&mut self, file: u64, meta: VMeta, target: Option<Vec<u8>>) {
        // A number used again: nothing of the old file's contents applies.
        self.broken.remove(&file);
        self.files.insert(
            file,
            FileState {
                id: file,
                meta,
                target,
                xattrs: Vec::new(),
                content: None,
            },
        );
    }

    /// Applies one change. Changes to files the tree does not know are ignored (the journal
    /// drops them too).
    pub fn apply(&mut self, change: &VChange) {
        match change {
            VChange::Create {
                parent,
                name,
                file,
                meta,
            }
            | VChange::Mkdir {
                parent,
                name,
                file,
                meta,
            } => {
                self.new_file(*file, *meta, None);
                self.add_name(*parent, name.clone(), *file);
            }
            VChange::Symlink {
                parent,
                name,
                file,
                meta,
                target,
            } => {
                self.new_file(*file, *meta, Some(target.clone()));
                self.add_name(*parent, name.clone(), *file);
            }
            VChange::Link { parent, name, file } => {
                if self.alive(*file) {
                    self.add_name(*parent, name.clone(), *file);
                }
            }
            VChange::Rename {
                parent,
                name,
                new_parent,
                new_name,
                file,
                exchange,
            } => {
                if *exchange {
                    let a = self.names.get(&(*parent, name.clone())).copied();
                    let b = self.names.get(&(*new_parent, new_name.clone())).copied();
                    if let (Some(a), Some(b)) = (a, b) {
                        self.names.insert((*parent, name.clone()), b);
                        self.names.insert((*new_parent, new_name.clone()), a);
                    }
                } else {
                    // Keep the file alive while its name moves.
                    *self.links.entry(*file).or_default() += 1;
                    if self.names.get(&(*parent, name.clone())) == Some(file) {
                        self.remove_name(*parent, name);
                    }
                    self.add_name(*new_parent, new_name.clone(), *file);
                    self.drop_link(*file);
                }
            }
            VChange::Unlink { parent, name, .. } | VChange::Rmdir { parent, name, .. } => {
                self.remove_name(*parent, name);
            }
            VChange::SetAttr { file, meta } => {
                if let Some(f) = self.files.get_mut(file) {
                    f.meta = *meta;
                }
            }
            VChange::SetXattr { file, name, value } => {
                if let Some(f) = self.files.get_mut(file) {
                    match f.xattrs.binary_search_by(|x| x.name.as_slice().cmp(name)) {
                        Ok(i) => f.xattrs[i].value = value.clone(),
                        Err(i) => f.xattrs.insert(
                            i,
                            Xattr {
                                name: name.clone(),
                                value: value.clone(),
                            },
                        ),
                    }
                }
            }
            VChange::RemoveXattr { file, name } => {
                if let Some(f) = self.files.get_mut(file) {
                    f.xattrs.retain(|x| &x.name != name);
                }
            }
            VChange::Content { file, .. } | VChange::Patch { file, .. } => {
                if let Some(f) = self.files.get_mut(file) {
                    if apply_contents(f, change) {
                        self.broken.remove(file);
                    } else {
                        self.broken.insert(*file);
                    }
                }
            }
        }
    }

    /// Every name as a path (bytes, relative to the pocket) with its file, parents before
    /// children.
    pub fn paths(&self) -> Vec<(Vec<u8>, u64)> {
        let mut out = Vec::new();
        let mut stack = vec![(self.root, Vec::new())];
        // Each folder is listed once: names that make a folder its own ancestor (a damaged or
        // buggy log; the kernel never makes one) must not send this round forever.
        let mut listed = std::collections::HashSet::new();
        while let Some((dir, prefix)) = stack.pop() {
            if !listed.insert(dir) {
                continue;
            }
            for ((_, name), file) in self
                .names
                .range((dir, Vec::new())..)
                .take_while(|((p, _), _)| *p == dir)
            {
                let Some(f) = self.files.get(file) else {
                    // A name for a file the records never made: not restorable, not listed.
                    continue;
                };
                let mut path = prefix.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(name);
                if f.meta.kind == KIND_DIR {
                    stack.push((*file, path.clone()));
                }
                out.push((path, *file));
            }
        }
        out.sort();
        out
    }

    /// The file at `path` (bytes, relative to the pocket).
    pub fn lookup(&self, path: &[u8]) -> Option<u64> {
        let mut cur = self.root;
        for comp in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            cur = *self.names.get(&(cur, comp.to_vec()))?;
        }
        Some(cur)
    }

    /// Metadata of `file` just read from the drive, with what the journal keeps for a drive that
    /// cannot (`keeping`): mode, owner, exact time and being a link, as this tree has them.
    pub fn kept(&self, file: u64, read: VMeta, keeping: Option<journal::Keeping>) -> VMeta {
        match self.files.get(&file) {
            Some(f) => read.kept(keeping, &f.meta),
            None => read,
        }
    }

    /// One path of `file`, if it has a name.
    pub fn path_of(&self, file: u64) -> Option<Vec<u8>> {
        self.paths()
            .into_iter()
            .find(|(_, f)| *f == file)
            .map(|(p, _)| p)
    }

    /// The content every regular file refers to (what restore and verify need).
    pub fn contents(&self) -> impl Iterator<Item = (&FileState, &Content)> {
        self.files
            .values()
            .filter_map(|f| f.content.as_ref().map(|c| (f, c)))
    }
}

/// Gives `f` the contents a `Content` or `Patch` record brings (other records: nothing).
/// False when a patch does not fit the contents before it; `f` then has none.
pub(crate) fn apply_contents(f: &mut FileState, change: &VChange) -> bool {
    match change {
        VChange::Content { meta, content, .. } => {
            f.meta = *meta;
            f.content = Some(content.clone());
            true
        }
        VChange::Patch {
            meta,
            size,
            extents,
            ..
        } => {
            f.meta = *meta;
            let empty = Content::default();
            f.content = Content::patched(f.content.as_ref().unwrap_or(&empty), *size, extents);
            f.content.is_some()
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: u8) -> VMeta {
        VMeta {
            kind,
            perm: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            rdev: 0,
        }
    }

    #[test]
    fn replay_follows_renames_links_and_unlinks() {
        let mut t = Tree::new(1);
        t.apply(&VChange::Mkdir {
            parent: 1,
            name: b"d".to_vec(),
            file: 2,
            meta: meta(KIND_DIR),
        });
        t.apply(&VChange::Create {
            parent: 2,
            name: b"a".to_vec(),
            file: 3,
            meta: meta(1),
        });
        t.apply(&VChange::Link {
            parent: 1,
            name: b"h".to_vec(),
            file: 3,
        });
        t.apply(&VChange::Create {
            parent: 1,
            name: b"b".to_vec(),
            file: 4,
            meta: meta(1),
        });
        // b replaces h: the file 3 keeps its other name.
        t.apply(&VChange::Rename {
            parent: 1,
            name: b"b".to_vec(),
            new_parent: 1,
            new_name: b"h".to_vec(),
            file: 4,
            exchange: false,
        });
        assert!(t.alive(3) && t.alive(4));
        assert_eq!(
            t.paths().into_iter().map(|(p, _)| p).collect::<Vec<_>>(),
            vec![b"d".to_vec(), b"d/a".to_vec(), b"h".to_vec()]
        );
        t.apply(&VChange::Unlink {
            parent: 2,
            name: b"a".to_vec(),
            file: 3,
        });
        assert!(!t.alive(3));
        t.apply(&VChange::Create {
            parent: 2,
            name: b"x".to_vec(),
            file: 5,
            meta: meta(1),
        });
        t.apply(&VChange::Rename {
            parent: 2,
            name: b"x".to_vec(),
            new_parent: 1,
            new_name: b"h".to_vec(),
            file: 5,
            exchange: true,
        });
        assert_eq!(t.names[&(1, b"h".to_vec())], 5);
        assert_eq!(t.names[&(2, b"x".to_vec())], 4);
        // A renamed-onto name of the same file is a no-op.
        t.apply(&VChange::Rename {
            parent: 1,
            name: b"h".to_vec(),
            new_parent: 1,
            new_name: b"h".to_vec(),
            file: 5,
            exchange: false,
        });
        assert!(t.alive(5));
    }

    #[test]
    fn a_patch_that_does_not_fit_leaves_the_file_broken_until_whole_contents_come() {
        use crate::format::{ChunkRef, Extent, PatchExtent, Run};
        let mut t = Tree::new(1);
        let create = VChange::Create {
            parent: 1,
            name: b"f".to_vec(),
            file: 2,
            meta: meta(crate::format::KIND_FILE),
        };
        t.apply(&create);
        let chunk = ChunkRef {
            id: [7; 32],
            len: 10,
        };
        let whole = VChange::Content {
            file: 2,
            meta: meta(crate::format::KIND_FILE),
            content: Content {
                size: 10,
                extents: vec![Extent {
                    offset: 0,
                    chunks: vec![chunk.clone()],
                }],
            },
        };
        t.apply(&whole);
        let patch = |from| VChange::Patch {
            file: 2,
            meta: meta(crate::format::KIND_FILE),
            size: 20,
            extents: vec![PatchExtent {
                offset: 0,
                runs: vec![Run::Keep { from, count: 1 }, Run::New(vec![chunk.clone()])],
            }],
        };
        t.apply(&patch(0));
        assert!(t.broken.is_empty());
        assert_eq!(
            t.files[&2].content.as_ref().unwrap().extents[0]
                .chunks
                .len(),
            2
        );
        t.apply(&patch(5));
        assert!(t.broken.contains(&2) && t.files[&2].content.is_none());
        t.apply(&whole);
        assert!(t.broken.is_empty());
        t.apply(&patch(9));
        t.apply(&VChange::Unlink {
            parent: 1,
            name: b"f".to_vec(),
            file: 2,
        });
        t.apply(&create);
        assert!(t.broken.is_empty(), "a new file under the number is whole");
    }
}
