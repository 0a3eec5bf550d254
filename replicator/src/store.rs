//! A destination's storage, through OpenDAL. Every write is atomic and durable before it
//! returns: for a local folder OpenDAL writes a temporary file, fsyncs it and renames it into
//! place; we add the fsync of the directory that makes the rename itself survive a power cut.
//!
//! The calls block: the drain's workers are plain threads doing CPU work (chunking, zstd,
//! AES), and they hand each transfer to the replicator's tokio runtime.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use opendal::Operator;
use tokio::runtime::Handle;

use crate::error::{Error, Result};

/// Where temporary files live inside a local destination (same filesystem, so rename is
/// atomic); leftovers of a killed write are removed at the next open.
const TMP_DIR: &str = ".tmp";

/// One destination's storage.
#[derive(Clone, Debug)]
pub struct Store {
    op: Operator,
    rt: Handle,
    /// The folder, for local destinations.
    local: Option<PathBuf>,
    /// The local folder's identity (device, inode) when opened: a disk pulled out (or a share
    /// unmounted) leaves an ordinary folder or nothing at that path, and nothing may be
    /// written there in its place.
    identity: Option<(u64, u64)>,
    url: String,
}

impl Store {
    /// Opens the storage that `url` names: a local folder (a path or `file://` URL).
    /// `create` makes the folder (its parent must exist); otherwise a missing folder means the
    /// destination is not reachable (an external disk not plugged in), and we never create a
    /// folder on the machine's own disk in its place.
    pub fn open(url: &str, rt: Handle, create: bool) -> Result<Store> {
        let path = local_path(url).ok_or_else(|| {
            Error::Format(format!(
                "{url}: only local folders are supported as destinations in this version (a path or file:// URL)"
            ))
        })?;
        if create {
            match std::fs::create_dir(&path) {
                Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("/")))?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("cannot create the destination folder {}", path.display()),
                        e,
                    ))
                }
            }
        }
        if !path.is_dir() {
            return Err(Error::io(
                format!(
                    "the destination folder {} is not there (is the disk plugged in or the share mounted?)",
                    path.display()
                ),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let path = path
            .canonicalize()
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        let tmp = path.join(TMP_DIR);
        // A write killed midway leaves a temporary file; nothing refers to it.
        let _ = std::fs::remove_dir_all(&tmp);
        private_dir(&tmp)
            .map_err(|e| Error::io(format!("cannot write to {}", path.display()), e))?;
        let builder = opendal::services::Fs::default()
            .root(&path.to_string_lossy())
            .atomic_write_dir(&tmp.to_string_lossy());
        let op =
            Operator::new(builder).map_err(|e| Error::store(format!("cannot open {url}"), e))?;
        Ok(Store {
            op,
            rt,
            identity: Some(identity(&path)?),
            local: Some(path),
            url: url.to_owned(),
        })
    }

    /// Fails (as "not there") when the local folder is no longer the one opened.
    pub fn check_present(&self) -> Result<()> {
        let (Some(root), Some(id)) = (&self.local, self.identity) else {
            return Ok(());
        };
        match identity(root) {
            Ok(now) if now == id => Ok(()),
            _ => Err(Error::io(
                format!(
                    "the destination folder {} is not there any more (was the disk unplugged or the share unmounted?)",
                    root.display()
                ),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the destination can be used now.
    pub fn reachable(&self) -> bool {
        self.check_present().is_ok()
    }

    /// Writes `key` atomically and durably.
    pub fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        self.check_present()?;
        let op = self.op.clone();
        let k = key.to_owned();
        self.rt
            .block_on(async move { op.write(&k, data).await })
            .map_err(|e| Error::store(format!("cannot write {key} to {}", self.url), e))?;
        if let Some(root) = &self.local {
            let file = root.join(key);
            // Our own objects are private whatever the process umask (the mount runs with 0).
            // Checked again: a folder pulled away during the write may have let it land on
            // the machine's own disk; it must not count as held.
            self.check_present()?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io(format!("cannot write {}", file.display()), e))?;
            sync_dir(file.parent().unwrap_or(root))?;
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        let op = self.op.clone();
        let k = key.to_owned();
        let buf = self
            .rt
            .block_on(async move { op.read(&k).await })
            .map_err(|e| Error::store(format!("cannot read {key} from {}", self.url), e))?;
        Ok(buf.to_vec())
    }

    /// `len` bytes of `key` from `offset`.
    pub fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let op = self.op.clone();
        let k = key.to_owned();
        let buf = self
            .rt
            .block_on(async move { op.read_with(&k).range(offset..offset + len).await })
            .map_err(|e| Error::store(format!("cannot read {key} from {}", self.url), e))?;
        Ok(buf.to_vec())
    }

    /// The objects under `prefix` (a folder, ending in `/`), with their sizes, sorted.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let op = self.op.clone();
        let p = prefix.to_owned();
        let entries = self
            .rt
            .block_on(async move { op.list_with(&p).recursive(true).await });
        let entries = match entries {
            Ok(e) => e,
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::store(
                    format!("cannot list {prefix} at {}", self.url),
                    e,
                ))
            }
        };
        let mut out: Vec<(String, u64)> = entries
            .into_iter()
            .filter(|e| e.metadata().mode() == opendal::EntryMode::FILE)
            .map(|e| (e.path().to_owned(), e.metadata().content_length()))
            .collect();
        // Local listings may not carry sizes; stat what lacks one.
        if let Some(root) = &self.local {
            for (k, size) in &mut out {
                if *size == 0 {
                    *size = std::fs::metadata(root.join(&k))
                        .map(|m| m.len())
                        .unwrap_or(0);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn exists(&self, key: &str) -> Result<bool> {
        let op = self.op.clone();
        let k = key.to_owned();
        self.rt
            .block_on(async move { op.exists(&k).await })
            .map_err(|e| Error::store(format!("cannot check {key} at {}", self.url), e))
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        let op = self.op.clone();
        let k = key.to_owned();
        self.rt
            .block_on(async move { op.delete(&k).await })
            .map_err(|e| Error::store(format!("cannot delete {key} at {}", self.url), e))
    }

    /// Makes sure the folders in `dirs` exist and are durable (so that later writes need to
    /// sync only the folder they write into).
    pub fn make_dirs(&self, dirs: &[String]) -> Result<()> {
        let Some(root) = &self.local else {
            return Ok(());
        };
        for d in dirs {
            let p = root.join(d);
            private_dir(&p).map_err(|e| Error::io(format!("cannot create {}", p.display()), e))?;
        }
        for d in dirs {
            let p = root.join(d);
            sync_dir(&p)?;
            sync_dir(p.parent().unwrap_or(root))?;
        }
        sync_dir(root)
    }

    /// Makes the destination's own folder private (a vault: nobody else has any business in it).
    pub fn make_private(&self) -> Result<()> {
        match &self.local {
            Some(root) => std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| {
                    Error::io(
                        format!("cannot set the permissions of {}", root.display()),
                        e,
                    )
                }),
            None => Ok(()),
        }
    }

    /// The local folder, when the destination is one.
    pub fn local_root(&self) -> Option<&Path> {
        self.local.as_deref()
    }
}

/// A path when `url` names a local folder.
pub fn local_path(url: &str) -> Option<PathBuf> {
    if let Some(rest) = url.strip_prefix("file://") {
        return Some(PathBuf::from(rest));
    }
    if url.contains("://") {
        return None;
    }
    Some(PathBuf::from(url))
}

/// A folder (and its missing parents) that only the owner can enter.
fn private_dir(p: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
}

fn identity(p: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m =
        std::fs::metadata(p).map_err(|e| Error::io(format!("cannot open {}", p.display()), e))?;
    Ok((m.dev(), m.ino()))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let f = std::fs::File::open(dir)
        .map_err(|e| Error::io(format!("cannot open {}", dir.display()), e))?;
    f.sync_all()
        .map_err(|e| Error::io(format!("cannot sync {}", dir.display()), e))
}
