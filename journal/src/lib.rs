//! The pocket's journal: the ordered, durable record of every change to the pocket (SQLite in
//! WAL mode, inside `.backpocket/`), the catalog of what the pocket holds, the destinations'
//! cursors, the reconciliation scan and the status queries.
//!
//! The filesystem appends through a [`JournalHandle`] without waiting; a single writer thread
//! commits in groups. [`JournalHandle::sync`] is the fsync promise: it returns once everything
//! appended before it is committed with a full sync.

mod db;
mod error;
mod record;
mod scan;
mod status;
mod writer;

pub use db::FORMAT_VERSION;
pub use error::{Error, Result};
pub use record::{Change, FileId, Kind, Meta, Op, Record};
pub use scan::{read_xattrs, scan, ScanReport, POCKET_DIR};
pub use status::{
    compact, remove_cursor, set_cursor, CatalogEntry, CursorStatus, Reader, Snapshot, Status,
};
pub use writer::{Journal, JournalHandle};
