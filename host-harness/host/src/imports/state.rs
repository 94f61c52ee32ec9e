//! `state`: the plugin's key-value state, scoped to its integration, in the state store,
//! sealed under the host's key-encryption key. A write the store refuses is retried by the
//! host (see [`crate::context::IntegrationCtx::write_state`]) and shown in the status.

use crate::bindings::state;
use crate::error::StoreError;
use crate::instance::HostState;
use crate::sandbox::{MAX_STATE_KEY, MAX_STATE_VALUE};

impl state::Host for HostState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        match self.ctx.read_state(&key) {
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
        self.ctx.write_state(&key, Some(&value)).map_err(|e| match e {
            StoreError::Quota(q) => state::StateError::QuotaExceeded(q),
            StoreError::Unavailable(r) => state::StateError::Unavailable(r),
            // The host stops the integration: another host runs it now.
            e @ StoreError::Fenced(_) => state::StateError::Unavailable(e.to_string()),
        })
    }
    fn delete(&mut self, key: String) {
        let _ = self.ctx.write_state(&key, None);
    }
    fn list_keys(&mut self, prefix: String) -> Vec<String> {
        let mut keys = self.ctx.store.keys(&self.ctx.name, &prefix).unwrap_or_default();
        for (k, v) in self.ctx.pending_writes.lock().unwrap().iter() {
            if k.starts_with(&prefix) {
                match v {
                    Some(_) => keys.push(k.clone()),
                    None => keys.retain(|x| x != k),
                }
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }
}
