//! The WinFsp front-end: the pocket's files served to Windows, every change recorded in the
//! journal with the same records the fuser front-end writes. A thin adapter: it opens files
//! in the backing folder with `std::fs` (the Unix core's `O_PATH`/`*at` design has no Windows
//! counterpart) and leaves every translation (errors, attributes, times, name rules) to
//! [`crate::win`].
//!
//! Type-checked in CI on the `x86_64-pc-windows-gnu` target with pre-generated bindings
//! (feature `winfsp-check`); it has not been mounted on Windows here.

use std::ffi::c_void;
use std::fs::{File, OpenOptions};
use std::os::windows::ffi::OsStringExt;
use std::os::windows::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::windows::io::AsRawHandle;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use winfsp::filesystem::{
    DirBuffer, DirInfo, DirMarker, FileInfo, FileSecurity, FileSystemContext, OpenFileInfo,
    VolumeInfo, WideNameInfo,
};
use winfsp::host::{FileSystemHost, VolumeParams};
use winfsp::{FspError, U16CStr};
use winfsp_sys::{FILE_ACCESS_RIGHTS, FILE_FLAGS_AND_ATTRIBUTES};

use journal::{Change, FileId, JournalHandle, Meta};

use crate::win::{self, status};

/// `CreateOptions` bit: the caller asks for a folder.
const FILE_DIRECTORY_FILE: u32 = 0x1;
/// Opens folders as well as files.
const FILE_FLAG_BACKUP_SEMANTICS: u32 = 0x0200_0000;
/// `Cleanup` flag: the last handle of a file marked for deletion is closing.
const CLEANUP_DELETE: u32 = 0x1;

/// An error WinFsp passes to the application.
fn nt(status: i32) -> FspError {
    FspError::NTSTATUS(status)
}

fn io(e: std::io::Error) -> FspError {
    nt(win::ntstatus_from_io(&e))
}

/// The pocket as WinFsp serves it.
#[derive(Debug)]
pub struct WinPocketFs {
    root: PathBuf,
    journal: Option<JournalHandle>,
}

/// An open file or folder.
pub struct Handle {
    /// The path under the root, as WinFsp names it; follows renames.
    path: Mutex<Vec<u16>>,
    file: File,
    dir: bool,
    dir_buffer: DirBuffer,
    delete_on_close: AtomicBool,
    written: AtomicBool,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("path", &String::from_utf16_lossy(&self.path.lock()))
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl WinPocketFs {
    /// Serves the pocket at `root`, recording into `journal` (None: nothing is recorded,
    /// for measuring).
    pub fn new(root: &Path, journal: Option<JournalHandle>) -> WinPocketFs {
        WinPocketFs {
            root: root.to_owned(),
            journal,
        }
    }

    /// The backing path of a WinFsp path; the pocket's own folder does not exist here.
    fn backing(&self, path: &[u16]) -> Result<PathBuf, FspError> {
        let mut out = self.root.clone();
        for (i, c) in win::components(path).enumerate() {
            if i == 0 && win::is_pocket_dir(c) {
                return Err(nt(status::OBJECT_NAME_NOT_FOUND));
            }
            out.push(std::ffi::OsString::from_wide(c));
        }
        Ok(out)
    }

    /// The parent's backing path and the last name of a WinFsp path (None for the root).
    fn split<'a>(&self, path: &'a [u16]) -> Option<(&'a [u16], &'a [u16])> {
        let end = path.iter().rposition(|&c| c != u16::from(b'\\'))? + 1;
        let trimmed = &path[..end];
        let cut = trimmed.iter().rposition(|&c| c == u16::from(b'\\'))?;
        Some((&trimmed[..cut], &trimmed[cut + 1..]))
    }

    fn record(&self, change: Change) {
        if let Some(j) = &self.journal {
            j.record(change);
        }
    }

    fn open_backing(path: &Path, write: bool) -> std::io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(FILE_FLAG_BACKUP_SEMANTICS)
            .open(path)
    }

    /// The file's identity on the drive (what the journal calls it).
    fn id_of(file: &File) -> Result<FileId, FspError> {
        use windows::Win32::Foundation::HANDLE;
        use windows::Win32::Storage::FileSystem::{
            GetFileInformationByHandle, BY_HANDLE_FILE_INFORMATION,
        };
        let mut info = BY_HANDLE_FILE_INFORMATION::default();
        // SAFETY: the handle is open for as long as `file` lives; `info` is ours to fill.
        unsafe { GetFileInformationByHandle(HANDLE(file.as_raw_handle()), &mut info) }
            .map_err(|e| nt(win::ntstatus_from_win32((e.code().0 & 0xFFFF) as u32)))?;
        Ok((u64::from(info.nFileIndexHigh) << 32) | u64::from(info.nFileIndexLow))
    }

    fn parent_id(&self, path: &[u16]) -> Result<FileId, FspError> {
        let parent = match self.split(path) {
            Some((p, _)) => self.backing(p)?,
            None => self.root.clone(),
        };
        Self::id_of(&Self::open_backing(&parent, false).map_err(io)?)
    }

    fn meta(file: &File) -> Result<Meta, FspError> {
        let md = file.metadata().map_err(io)?;
        Meta::from_std(&md).ok_or(nt(status::NOT_SUPPORTED))
    }

    fn fill(file: &File, info: &mut FileInfo) -> Result<(), FspError> {
        info_from(&file.metadata().map_err(io)?, info);
        info.index_number = Self::id_of(file)?;
        Ok(())
    }

    /// Mounts at `mountpoint` ("X:" or a folder that does not exist yet) and serves until
    /// the returned host is stopped.
    pub fn mount(self, mountpoint: &Path) -> Result<FileSystemHost<WinPocketFs>, FspError> {
        let mut params = VolumeParams::new();
        params
            .filesystem_name("backpocket")
            .case_preserved_names(true)
            .unicode_on_disk(true)
            .persistent_acls(false)
            .post_cleanup_when_modified_only(true)
            .file_info_timeout(1000);
        let mut host: FileSystemHost<WinPocketFs> = FileSystemHost::new(params, self)?;
        host.mount(mountpoint.as_os_str())?;
        host.start()?;
        Ok(host)
    }
}

impl FileSystemContext for WinPocketFs {
    type FileContext = Handle;

    fn get_security_by_name(
        &self,
        file_name: &U16CStr,
        _security_descriptor: Option<&mut [c_void]>,
        _resolver: impl FnOnce(&U16CStr) -> Option<FileSecurity>,
    ) -> winfsp::Result<FileSecurity> {
        let md = std::fs::symlink_metadata(self.backing(file_name.as_slice())?).map_err(io)?;
        Ok(FileSecurity {
            reparse: false,
            sz_security_descriptor: 0,
            attributes: md.file_attributes(),
        })
    }

    fn open(
        &self,
        file_name: &U16CStr,
        _create_options: u32,
        granted_access: FILE_ACCESS_RIGHTS,
        file_info: &mut OpenFileInfo,
    ) -> winfsp::Result<Handle> {
        let path = self.backing(file_name.as_slice())?;
        // FILE_WRITE_DATA | FILE_APPEND_DATA
        let write = granted_access & 0x6 != 0;
        let file = Self::open_backing(&path, write)
            .or_else(|_| Self::open_backing(&path, false))
            .map_err(io)?;
        Self::fill(&file, file_info.as_mut())?;
        let dir = file.metadata().map_err(io)?.is_dir();
        Ok(Handle {
            path: Mutex::new(file_name.as_slice().to_vec()),
            file,
            dir,
            dir_buffer: DirBuffer::new(),
            delete_on_close: AtomicBool::new(false),
            written: AtomicBool::new(false),
        })
    }

    fn close(&self, context: Handle) {
        if context.written.load(Ordering::Relaxed) {
            if let (Ok(file), Ok(meta)) = (Self::id_of(&context.file), Self::meta(&context.file)) {
                self.record(Change::Content { file, meta });
            }
        }
    }

    fn create(
        &self,
        file_name: &U16CStr,
        create_options: u32,
        _granted_access: FILE_ACCESS_RIGHTS,
        _file_attributes: FILE_FLAGS_AND_ATTRIBUTES,
        _security_descriptor: Option<&[c_void]>,
        _allocation_size: u64,
        _extra_buffer: Option<&[u8]>,
        _extra_buffer_is_reparse_point: bool,
        file_info: &mut OpenFileInfo,
    ) -> winfsp::Result<Handle> {
        let wide = file_name.as_slice();
        let (_, name) = self.split(wide).ok_or(nt(status::OBJECT_NAME_COLLISION))?;
        win::check_name(name).map_err(|p| nt(p.ntstatus()))?;
        let path = self.backing(wide)?;
        let dir = create_options & FILE_DIRECTORY_FILE != 0;
        let file = if dir {
            std::fs::create_dir(&path).map_err(io)?;
            Self::open_backing(&path, false).map_err(io)?
        } else {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(io)?
        };
        let (parent, id, meta) = (
            self.parent_id(wide)?,
            Self::id_of(&file)?,
            Self::meta(&file)?,
        );
        let name = win::journal_name(name);
        self.record(if dir {
            Change::Mkdir {
                parent,
                name,
                file: id,
                meta,
            }
        } else {
            Change::Create {
                parent,
                name,
                file: id,
                meta,
            }
        });
        Self::fill(&file, file_info.as_mut())?;
        Ok(Handle {
            path: Mutex::new(wide.to_vec()),
            file,
            dir,
            dir_buffer: DirBuffer::new(),
            delete_on_close: AtomicBool::new(false),
            written: AtomicBool::new(false),
        })
    }

    fn cleanup(&self, context: &Handle, _file_name: Option<&U16CStr>, flags: u32) {
        if flags & CLEANUP_DELETE == 0 || !context.delete_on_close.load(Ordering::Relaxed) {
            return;
        }
        let wide = context.path.lock().clone();
        let (Ok(path), Ok(parent), Ok(file)) = (
            self.backing(&wide),
            self.parent_id(&wide),
            Self::id_of(&context.file),
        ) else {
            return;
        };
        let name = self
            .split(&wide)
            .map(|(_, n)| win::journal_name(n))
            .unwrap_or_default();
        let removed = if context.dir {
            std::fs::remove_dir(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if removed.is_ok() {
            self.record(if context.dir {
                Change::Rmdir { parent, name, file }
            } else {
                Change::Unlink { parent, name, file }
            });
        }
    }

    fn flush(&self, context: Option<&Handle>, file_info: &mut FileInfo) -> winfsp::Result<()> {
        let Some(h) = context else {
            return Ok(());
        };
        // The fsync promise: on the drive, and its record committed, before this returns.
        h.file.sync_all().map_err(io)?;
        if h.written.swap(false, Ordering::Relaxed) {
            self.record(Change::Content {
                file: Self::id_of(&h.file)?,
                meta: Self::meta(&h.file)?,
            });
        }
        if let Some(j) = &self.journal {
            j.sync().map_err(|e| nt(win::ntstatus_from_journal(&e)))?;
        }
        Self::fill(&h.file, file_info)
    }

    fn get_file_info(&self, context: &Handle, file_info: &mut FileInfo) -> winfsp::Result<()> {
        Self::fill(&context.file, file_info)
    }

    fn get_security(
        &self,
        _context: &Handle,
        _security_descriptor: Option<&mut [c_void]>,
    ) -> winfsp::Result<u64> {
        Ok(0)
    }

    fn overwrite(
        &self,
        context: &Handle,
        _file_attributes: FILE_FLAGS_AND_ATTRIBUTES,
        _replace_file_attributes: bool,
        _allocation_size: u64,
        _extra_buffer: Option<&[u8]>,
        file_info: &mut FileInfo,
    ) -> winfsp::Result<()> {
        context.file.set_len(0).map_err(io)?;
        context.written.store(true, Ordering::Relaxed);
        Self::fill(&context.file, file_info)
    }

    fn read_directory(
        &self,
        context: &Handle,
        _pattern: Option<&U16CStr>,
        marker: DirMarker,
        buffer: &mut [u8],
    ) -> winfsp::Result<u32> {
        if marker.is_none() {
            let at_root = win::components(&context.path.lock()).next().is_none();
            let dir = self.backing(&context.path.lock())?;
            let lock = context.dir_buffer.acquire(true, None)?;
            let mut entries: Vec<(Vec<u16>, std::fs::Metadata)> = std::fs::read_dir(&dir)
                .map_err(io)?
                .flatten()
                .filter_map(|e| Some((e.file_name().encode_wide_vec(), e.metadata().ok()?)))
                .filter(|(n, _)| !(at_root && win::is_pocket_dir(n)))
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, md) in entries {
                let mut info: DirInfo = DirInfo::new();
                info_from(&md, info.file_info_mut());
                info.set_name_raw(name.as_slice())?;
                lock.write(&mut info)?;
            }
        }
        Ok(context.dir_buffer.read(marker, buffer))
    }

    fn rename(
        &self,
        context: &Handle,
        file_name: &U16CStr,
        new_file_name: &U16CStr,
        replace_if_exists: bool,
    ) -> winfsp::Result<()> {
        let (from, to) = (file_name.as_slice(), new_file_name.as_slice());
        let (_, new_name) = self.split(to).ok_or(nt(status::ACCESS_DENIED))?;
        win::check_name(new_name).map_err(|p| nt(p.ntstatus()))?;
        let (src, dst) = (self.backing(from)?, self.backing(to)?);
        if !replace_if_exists && std::fs::symlink_metadata(&dst).is_ok() {
            return Err(nt(status::OBJECT_NAME_COLLISION));
        }
        let (parent, new_parent) = (self.parent_id(from)?, self.parent_id(to)?);
        std::fs::rename(&src, &dst).map_err(io)?;
        let name = self
            .split(from)
            .map(|(_, n)| win::journal_name(n))
            .unwrap_or_default();
        self.record(Change::Rename {
            parent,
            name,
            new_parent,
            new_name: win::journal_name(new_name),
            file: Self::id_of(&context.file)?,
            exchange: false,
        });
        *context.path.lock() = to.to_vec();
        Ok(())
    }

    fn set_basic_info(
        &self,
        context: &Handle,
        file_attributes: u32,
        _creation_time: u64,
        last_access_time: u64,
        last_write_time: u64,
        _last_change_time: u64,
        file_info: &mut FileInfo,
    ) -> winfsp::Result<()> {
        let mut times = std::fs::FileTimes::new();
        let to_time = |ft: u64| {
            let ns = journal::filetime_to_unix_ns(ft);
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64)
        };
        // Zero means "leave it".
        if last_write_time != 0 {
            times = times.set_modified(to_time(last_write_time));
        }
        if last_access_time != 0 {
            times = times.set_accessed(to_time(last_access_time));
        }
        context.file.set_times(times).map_err(io)?;
        // INVALID_FILE_ATTRIBUTES (all ones) means "leave them".
        if file_attributes != u32::MAX {
            let mut perms = context.file.metadata().map_err(io)?.permissions();
            perms.set_readonly(file_attributes & win::attr::READONLY != 0);
            let path = self.backing(&context.path.lock())?;
            std::fs::set_permissions(path, perms).map_err(io)?;
        }
        self.record(Change::SetAttr {
            file: Self::id_of(&context.file)?,
            meta: Self::meta(&context.file)?,
        });
        Self::fill(&context.file, file_info)
    }

    fn set_delete(
        &self,
        context: &Handle,
        _file_name: &U16CStr,
        delete_file: bool,
    ) -> winfsp::Result<()> {
        if delete_file && context.dir {
            let dir = self.backing(&context.path.lock())?;
            if std::fs::read_dir(dir).map_err(io)?.next().is_some() {
                return Err(nt(status::DIRECTORY_NOT_EMPTY));
            }
        }
        context
            .delete_on_close
            .store(delete_file, Ordering::Relaxed);
        Ok(())
    }

    fn set_file_size(
        &self,
        context: &Handle,
        new_size: u64,
        set_allocation_size: bool,
        file_info: &mut FileInfo,
    ) -> winfsp::Result<()> {
        let size = context.file.metadata().map_err(io)?.file_size();
        // Allocation only ever shrinks the file to it; growing it is the file system's call.
        if !set_allocation_size || new_size < size {
            context.file.set_len(new_size).map_err(io)?;
            context.written.store(true, Ordering::Relaxed);
        }
        Self::fill(&context.file, file_info)
    }

    fn read(&self, context: &Handle, buffer: &mut [u8], offset: u64) -> winfsp::Result<u32> {
        match context.file.seek_read(buffer, offset) {
            Ok(0) if !buffer.is_empty() => Err(nt(0xC000_0011_u32 as i32)), // END_OF_FILE
            Ok(n) => Ok(n as u32),
            Err(e) => Err(io(e)),
        }
    }

    fn write(
        &self,
        context: &Handle,
        buffer: &[u8],
        offset: u64,
        write_to_eof: bool,
        constrained_io: bool,
        file_info: &mut FileInfo,
    ) -> winfsp::Result<u32> {
        let size = context.file.metadata().map_err(io)?.file_size();
        let offset = if write_to_eof { size } else { offset };
        let mut data = buffer;
        if constrained_io {
            // Paging I/O never extends the file.
            if offset >= size {
                return Ok(0);
            }
            data = &data[..data.len().min((size - offset) as usize)];
        }
        let mut done = 0;
        while done < data.len() {
            let n = context
                .file
                .seek_write(&data[done..], offset + done as u64)
                .map_err(io)?;
            if n == 0 {
                return Err(nt(status::DISK_FULL));
            }
            done += n;
        }
        context.written.store(true, Ordering::Relaxed);
        Self::fill(&context.file, file_info)?;
        Ok(done as u32)
    }

    fn get_volume_info(&self, out_volume_info: &mut VolumeInfo) -> winfsp::Result<()> {
        use windows::core::HSTRING;
        use windows::Win32::Storage::FileSystem::GetDiskFreeSpaceExW;
        let (mut free, mut total) = (0u64, 0u64);
        // SAFETY: the out-pointers are to locals that outlive the call.
        unsafe {
            GetDiskFreeSpaceExW(
                &HSTRING::from(self.root.as_os_str()),
                Some(&mut free),
                Some(&mut total),
                None,
            )
        }
        .map_err(|e| nt(win::ntstatus_from_win32((e.code().0 & 0xFFFF) as u32)))?;
        out_volume_info.total_size = total;
        out_volume_info.free_size = free;
        out_volume_info.set_volume_label("Pocket");
        Ok(())
    }
}

/// What Windows is told about a file: the backing file's own attributes and times (NTFS and
/// exFAT keep them), its size rounded up to a cluster for the allocation.
fn info_from(md: &std::fs::Metadata, info: &mut FileInfo) {
    info.file_attributes = md.file_attributes();
    info.file_size = md.file_size();
    info.allocation_size = md.file_size().div_ceil(4096) * 4096;
    info.creation_time = md.creation_time();
    info.last_access_time = md.last_access_time();
    info.last_write_time = md.last_write_time();
    info.change_time = md.last_write_time();
}

/// A file name as UTF-16 code units.
trait EncodeWideVec {
    fn encode_wide_vec(&self) -> Vec<u16>;
}

impl EncodeWideVec for std::ffi::OsString {
    fn encode_wide_vec(&self) -> Vec<u16> {
        std::os::windows::ffi::OsStrExt::encode_wide(self.as_os_str()).collect()
    }
}
