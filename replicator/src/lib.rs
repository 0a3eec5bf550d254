//! The replicator: drains the journal to destinations, and reads them back (restore, verify,
//! log). Formats are described in `docs/vault-format.md`.

mod access;
mod config;
pub mod crypto;
mod dest;
pub mod devices;
mod drain;
mod error;
mod faults;
pub mod format;
mod group;
mod lane;
mod maintain;
#[cfg(unix)]
mod mirror;
mod os;
mod policy;
pub mod pull;
mod repair;
mod restore;
mod retention;
#[cfg(test)]
mod robust;
mod service;
mod source;
mod state;
mod store;
mod sync;
mod tree;
mod vault;
mod verify;
mod versions;

pub use access::{open_secrets, parse_bandwidth, seal_secrets, Access, Secrets};
pub use config::{DestSpec, GroupSpec, Mode, Setup};
pub use crypto::{KdfParams, Key};
pub use dest::{is_unreachable, runtime};
pub use drain::{DrainReport, Progress};
pub use error::{Error, Result};
pub use maintain::{
    maintain, shape, take_lease, LeaseGuard, MaintainOptions, MaintainReport, Shape,
};
#[cfg(unix)]
pub use mirror::{init_mirror, is_mirror, restore_mirror};
pub use policy::Policy;
pub use repair::{repair, RepairReport};
pub use restore::{restore, versions, RestoreOptions, RestoreReport, Version};
pub use retention::{forget, prune, unused, ForgetReport, KeepPolicy};
pub use service::{Reload, Replicator};
pub use state::{DestLock, DestState, InFlight, Live, MemberState};
pub use store::{local_path, requests, Requests, Store, Target};
pub use sync::{sync, SyncOutcome, SyncReport};
pub use vault::{Head, LogObject, Point, Vault};
pub use verify::{verify, Damage, MemberCheck, VerifyReport};
