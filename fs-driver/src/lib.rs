//! The pocket's filesystem: a passthrough of the pocket's user files (everything but
//! `.backpocket/`) that records every change in the journal. [`PocketFs`] is the core, usable
//! without a mount; [`fuse`] is the thin fuser front-end and the mount session. On Windows,
//! `winfsp` is the WinFsp front-end; what it translates (errors, attributes, times, name rules)
//! is in [`win`], plain functions tested on every platform.

#[cfg(unix)]
mod core;
#[cfg(unix)]
mod error;
#[cfg(unix)]
pub mod fuse;
#[cfg(unix)]
mod keep;
pub mod win;
#[cfg(all(windows, feature = "winfsp"))]
pub mod winfsp;

#[cfg(unix)]
pub use crate::core::{
    meta_of, Caller, DirEntry, Entry, Options, PocketFs, SetAttr, SetTime, ROOT,
};
#[cfg(unix)]
pub use crate::error::{FsError, FsResult};
