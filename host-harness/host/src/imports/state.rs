//! `state`: the plugin's key-value state, scoped to its integration, in the state store.

use crate::bindings::state;
use crate::error::StoreError;
use crate::instance::HostState;
use crate::sandbox::{MAX_STATE_KEY, MAX_STATE_VALUE};

impl state::Host for HostState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        match self.ctx.store.get(&self.ctx.name, &key) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(integration = %self.ctx.name, %key, error = %e, "state read failed");
                None
            }
        }
    }
    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), state::StateError> {
        if key.len() > MAX_STATE_KEY || value.len() > MAX_STATE_VALUE {
            self.ctx.count("state.refused-oversized");
            return Err(state::StateError::TooLarge(MAX_STATE_VALUE as u64));
        }
        self.ctx.store.set(&self.ctx.name, &key, &value).map_err(|e| match e {
            StoreError::Quota(q) => state::StateError::QuotaExceeded(q),
            StoreError::Unavailable(r) => state::StateError::Unavailable(r),
        })
    }
    fn delete(&mut self, key: String) {
        if let Err(e) = self.ctx.store.delete(&self.ctx.name, &key) {
            tracing::error!(integration = %self.ctx.name, %key, error = %e, "state delete failed");
        }
    }
    fn list_keys(&mut self, prefix: String) -> Vec<String> {
        self.ctx.store.keys(&self.ctx.name, &prefix).unwrap_or_default()
    }
}
