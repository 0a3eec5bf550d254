//! The pocket's journal: the ordered, durable record of every change to the pocket (SQLite in
//! WAL mode, inside `.backpocket/`), the catalog of what the pocket holds, the destinations'
//! cursors, the reconciliation scan and the status queries.
//!
//! The filesystem appends through a [`JournalHandle`] without waiting; a single writer thread
//! commits in groups. [`JournalHandle::sync`] is the fsync promise: it returns once everything
//! appended before it is committed with a full sync.

mod db;
mod error;
mod ids;
mod record;
#[cfg(unix)]
mod scan;
pub mod spelling;
mod status;
mod writer;
pub mod wtf8;

pub use db::FORMAT_VERSION;
pub use error::{Error, Result};
pub use ids::{DriveIds, Keeping};
pub use record::{
    filetime_to_unix_ns, unix_ns_to_filetime, Change, FileId, Kind, Meta, Op, Record,
};
#[cfg(unix)]
pub use scan::{read_xattrs, scan, ScanReport};

/// The pocket's own folder, inside the pocket: hidden in the mount, never recorded.
pub const POCKET_DIR: &str = ".backpocket";
pub use status::{
    compact, make_durable, remove_cursor, set_cursor, CatalogEntry, CursorStatus, Reader, Snapshot,
    Status,
};
pub use writer::{Journal, JournalHandle};
