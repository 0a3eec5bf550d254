//! One destination opened for draining, whatever its mode: the dispatch between a vault and a
//! mirror, the check that the destination is ours and has not gone back in time, whether an
//! error means "unreachable", and the runtime transfers run on.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::runtime::{Handle, Runtime};
use tracing::warn;

use crate::access::{open_secrets, Secrets};
use crate::config::{DestSpec, Mode, Setup};
use crate::crypto::Key;
use crate::drain::{DrainReport, Source, VaultDrain};
use crate::error::{Error, Result};
use crate::group::{Group, Member};
#[cfg(unix)]
use crate::mirror::MirrorDrain;
use crate::policy::Policy;
use crate::state::DestState;
use crate::store::{Single, Store};
use crate::vault::Vault;

impl DestSpec {
    /// The destination's storage, its credentials opened with the pocket key.
    pub fn store(&self, key: Option<&Key>, rt: Handle, create: bool) -> Result<Store> {
        self.store_joining(key, rt, create, None)
    }

    /// [`Self::store`] of a group that member `joining` joins: its folder is made, and it
    /// counts as the group's before it holds anything.
    pub fn store_joining(
        &self,
        key: Option<&Key>,
        rt: Handle,
        create: bool,
        joining: Option<&str>,
    ) -> Result<Store> {
        if let Some(g) = &self.group {
            let mut members = Vec::with_capacity(g.members.len());
            for m in &g.members {
                let secrets = m.secrets(key)?;
                let url = format!("{}/{}", m.url.trim_end_matches('/'), g.folder);
                let (access, rt) = (m.access.clone(), rt.clone());
                let create = create || joining == Some(m.name.as_str());
                let local = crate::store::local_path(&m.url);
                let policy = Policy::parse(&m.when).unwrap_or_else(|e| {
                    // As for a destination of its own: never used where it was told not to be.
                    warn!(
                        "{} (member of {}): {e}; it is not used until its `when` in the \
                         pocket's config reads again",
                        m.name, self.name
                    );
                    Policy::never()
                });
                members.push(Member::new(
                    m.name.clone(),
                    local.is_some(),
                    policy,
                    Box::new(move || {
                        // Whether it may be given the group now though it holds none of it (it
                        // missed the group's making: away, or waiting for its `--when`). A
                        // server is there if it answers; a folder if it holds the vault `dest
                        // add` made at its root, which an unplugged disk's empty mount point
                        // does not.
                        let seatable = create
                            || local
                                .as_ref()
                                .is_none_or(|root| root.join("config").is_file());
                        Single::connect(&url, &access, &secrets, rt.clone(), seatable)
                            .map(|s| (s, seatable))
                    }),
                ));
            }
            return Ok(Store::of_group(Group::new(
                self.name.clone(),
                g.k,
                members,
            )?));
        }
        Store::connect(&self.url, &self.access, &self.secrets(key)?, rt, create)
    }

    fn secrets(&self, key: Option<&Key>) -> Result<Secrets> {
        match &self.access.sealed_secrets {
            Some(sealed) => {
                let key = key.ok_or(Error::NeedPassphrase)?;
                open_secrets(key, &self.name, sealed)
            }
            None => Ok(Secrets::default()),
        }
    }
}

/// A destination opened for draining.
#[derive(Debug)]
pub enum DestDrain {
    Vault(Box<VaultDrain>),
    #[cfg(unix)]
    Mirror(Box<MirrorDrain>),
}

impl DestDrain {
    /// Opens the destination (it must be reachable), checking that it is ours and has not gone
    /// back in time.
    pub fn open(
        spec: &DestSpec,
        setup: &Setup,
        rt: Handle,
        pause: Arc<AtomicBool>,
    ) -> Result<DestDrain> {
        let store = spec.store(setup.key.as_ref(), rt, false)?.with_pause(pause);
        store.remove_leftovers();
        match spec.mode {
            Mode::Vault => {
                let key = setup.key.as_ref().ok_or(Error::NeedPassphrase)?;
                let vault = Vault::open(store, key)?.with_cache(&setup.meta_dir.join("cache"));
                // The first pocket, or a device that joined: each writes its own log.
                vault.check_writer(&setup.pocket_id)?;
                let vault = vault.on_chain(&setup.pocket_id);
                let st = DestState::load(&setup.meta_dir, &spec.name);
                if st.vault_id.as_deref() == Some(vault.config.id.as_str()) {
                    if let (Some(gen), Some(hash)) = (st.head_gen, &st.head_hash) {
                        let head = vault.head()?;
                        let found = head.as_ref().map(|h| (h.gen, hex::encode(h.hash)));
                        let ok = match &found {
                            Some((g, _)) if *g > gen => true,
                            Some((g, h)) => *g == gen && h == hash,
                            None => false,
                        };
                        if !ok {
                            return Err(Error::RolledBack {
                                found: found.map_or("an empty log".into(), |(g, _)| {
                                    format!("log object {g}")
                                }),
                                expected: format!("log object {gen}"),
                            });
                        }
                    }
                }
                // The pocket's config travels in the vault, so a new drive can be made from it.
                let config = setup.meta_dir.join("config.toml");
                Ok(DestDrain::Vault(Box::new(
                    VaultDrain::new(vault, config).with_state(&setup.meta_dir, &spec.name),
                )))
            }
            // A mirror keeps owners, modes, xattrs and special files as the pocket has them.
            #[cfg(not(unix))]
            Mode::Mirror => Err(Error::Format(format!(
                "{}: mirror destinations are not available on this system yet; use a vault",
                spec.name
            ))),
            #[cfg(unix)]
            Mode::Mirror => Ok(DestDrain::Mirror(Box::new(MirrorDrain::open(
                store,
                spec,
                &setup.pocket_id,
            )?))),
        }
    }

    /// The vault's drain; None for a mirror (repair is for vaults).
    pub(crate) fn into_vault(self) -> Option<Box<VaultDrain>> {
        match self {
            DestDrain::Vault(v) => Some(v),
            #[cfg(unix)]
            DestDrain::Mirror(_) => None,
        }
    }

    pub fn drain_once(&mut self, src: &Source<'_>) -> Result<Option<DrainReport>> {
        match self {
            DestDrain::Vault(v) => {
                // A group's members that missed writes get them from the others first.
                if let Some(g) = v.vault.store.group() {
                    g.catch_up()?;
                }
                v.drain_once(src)
            }
            #[cfg(unix)]
            DestDrain::Mirror(m) => m.drain_once(src),
        }
    }

    /// Whether a drain has more to do without a new journal record (large files in flight).
    pub fn settling(&self) -> bool {
        match self {
            DestDrain::Vault(v) => v.settling(),
            #[cfg(unix)]
            DestDrain::Mirror(_) => false,
        }
    }

    /// Maintains a vault destination if it is due (None for a mirror, or when not due).
    pub(crate) fn maintain_if_due(
        &mut self,
        opts: &crate::maintain::MaintainOptions,
        interrupt: &dyn Fn() -> bool,
    ) -> Result<Option<crate::maintain::MaintainReport>> {
        match self {
            DestDrain::Vault(v) => {
                if v.settling() || !crate::maintain::shape(&v.vault)?.wants_maintenance(opts.grace)
                {
                    return Ok(None);
                }
                v.maintain(opts, interrupt, &Default::default()).map(Some)
            }
            #[cfg(unix)]
            DestDrain::Mirror(_) => Ok(None),
        }
    }

    /// A group: records each member as last seen in the pocket's state.
    #[allow(irrefutable_let_patterns)]
    pub(crate) fn note_members(&self, st: &mut DestState) {
        if let DestDrain::Vault(v) = self {
            if let Some((k, members)) = v.vault.store.group_state() {
                st.group_k = Some(k);
                st.members = members;
            }
        }
    }

    /// Records the destination's newest log object in the pocket's state.
    // Irrefutable where mirrors are not built (Windows).
    #[allow(irrefutable_let_patterns)]
    pub(crate) fn note_head(&self, st: &mut DestState) {
        self.note_members(st);
        if let DestDrain::Vault(v) = self {
            if let Some(h) = v.head() {
                st.vault_id = Some(v.vault.config.id.clone());
                st.head_gen = Some(h.gen);
                st.head_hash = Some(hex::encode(h.hash));
            }
        }
    }
}

/// Whether an error means "not reachable now" rather than "reached, and it failed".
pub fn is_unreachable(e: &Error) -> bool {
    match e {
        Error::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        Error::Group { source, .. } => is_unreachable(source),
        Error::Store { source, .. } => {
            source.is_temporary()
                || source.kind() == opendal::ErrorKind::NotFound
                || crate::error::is_network_error(source)
                || crate::error::network_failure(&crate::error::chain(source)).is_some()
        }
        _ => false,
    }
}

/// A tokio runtime for transfers.
pub fn runtime() -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("replicator-io")
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the replicator's runtime", e))
}
