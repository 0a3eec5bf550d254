//! The mirror format: a plain copy of the tree.

use crate::drain::{DrainReport, Source};
use crate::error::{Error, Result};
use crate::service::DestSpec;
use crate::store::Store;

/// A mirror destination's drain state.
#[derive(Debug)]
pub struct MirrorDrain {
    _store: Store,
}

impl MirrorDrain {
    pub fn open(store: Store, _spec: &DestSpec, _pocket_id: &str) -> Result<MirrorDrain> {
        let _ = store;
        Err(Error::Format(
            "mirror destinations are not available in this version".into(),
        ))
    }

    pub fn drain_once(&mut self, _src: &Source<'_>) -> Result<Option<DrainReport>> {
        Err(Error::Format(
            "mirror destinations are not available in this version".into(),
        ))
    }
}
