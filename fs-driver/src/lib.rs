//! The pocket's filesystem: a passthrough of the pocket's user files (everything but
//! `.backpocket/`) that records every change in the journal. [`PocketFs`] is the core, usable
//! without a mount; [`fuse`] is the thin fuser front-end and the mount session.

mod core;
mod error;
pub mod fuse;

pub use crate::core::{
    meta_of, Caller, DirEntry, Entry, Options, PocketFs, SetAttr, SetTime, ROOT,
};
pub use crate::error::{FsError, FsResult};
