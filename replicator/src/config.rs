//! What the replicator is told about the pocket and its destinations: plain configuration
//! types, read by every other part and depending on none of them.

use std::path::PathBuf;
use std::time::Duration;

use crate::access::Access;
use crate::crypto::Key;

/// How a destination stores the pocket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Encrypted, deduplicated, versioned.
    Vault,
    /// A plain copy of the tree, readable without backpocket.
    Mirror,
}

/// A configured destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestSpec {
    pub name: String,
    pub url: String,
    pub mode: Mode,
    /// Mirror: how long replaced and deleted files stay in `.backpocket-versions/`.
    pub keep_versions: Duration,
    /// Endpoint, limits and sealed credentials.
    pub access: Access,
    /// `--when` conditions (checked by [`crate::Policy::parse`] when the destination is added).
    pub when: Vec<String>,
    /// A group: the vault is spread over these members, any `k` of which restore it.
    pub group: Option<GroupSpec>,
}

/// How a group destination spreads its vault (`dest add-group`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSpec {
    pub k: usize,
    /// Each member's own destination; the group's objects live in `folder` inside it.
    pub members: Vec<DestSpec>,
    /// The group's name, or a new one for each re-spread (`dest add-member`), so that the
    /// members' old folders stay whole until the new ones are.
    pub folder: String,
}

/// Everything the replicator needs to know about the pocket.
#[derive(Clone, Debug)]
pub struct Setup {
    pub pocket: PathBuf,
    pub meta_dir: PathBuf,
    pub journal: PathBuf,
    pub pocket_id: String,
    /// The pocket key, when this machine has it; vaults wait for it otherwise.
    pub key: Option<Key>,
    pub dests: Vec<DestSpec>,
    /// Which file of the journal a number of the drive is: a file read by path is checked to
    /// be the one the journal means.
    pub ids: journal::DriveIds,
    /// Told after each drain that wrote to a vault: the destination's name and this pocket's
    /// newest log object there. The other devices hear of it at once (push) instead of at
    /// their next poll.
    pub drained: Option<crossbeam_channel::Sender<(String, u64)>>,
}
