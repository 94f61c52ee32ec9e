//! The durable webhook inbox, host side: Graph's notification batches are checked for their
//! envelope, written to the state store and acknowledged at once, and the actor is woken. The
//! inbox is the queue of notifications: the actor pulls its rows, in order, [`STEP`] at a
//! time (so other commands get their turn during a flood), and offers each to the plugin
//! (`sync.on-notification`). A plugin that answers `retry-later` (it is restoring its state)
//! gets the same batch again after its next step; no later batch passes it.

use wasmtime::Store;

use crate::bindings::sync;
use crate::context::IntegrationCtx;
use crate::instance::HostState;

/// Rows the actor pulls from the inbox before it serves its queue again.
pub const STEP: usize = 64;

/// The shape every notification body has: `{"value": [ ... ]}`.
pub fn check_envelope(body: &[u8]) -> Result<(), serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[allow(dead_code)]
        value: Vec<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Envelope>(body).map(|_| ())
}

/// What came of offering a batch.
pub(crate) enum Offered {
    /// The plugin took it (or trapped on it: it would again, and one poisonous body must not
    /// loop): remove it from the inbox with [`taken`].
    Taken(i64),
    /// The plugin is restoring its state: the batch stays in the inbox, first in line.
    Deferred,
}

/// Offers a batch from the inbox to the plugin. The inbox row is not touched here, so that
/// the guest call's cost is the plugin's alone.
pub(crate) async fn offer(
    store: &mut Store<HostState>,
    sync: &sync::Guest,
    ctx: &IntegrationCtx,
    id: i64,
    body: Vec<u8>,
) -> (Offered, Result<(), wasmtime::Error>) {
    match sync.call_on_notification(&mut *store, &body).await {
        Ok(sync::NotificationOutcome::RetryLater) => {
            ctx.count("inbox.deferred");
            (Offered::Deferred, Ok(()))
        }
        Ok(sync::NotificationOutcome::Taken) => (Offered::Taken(id), Ok(())),
        Err(e) => (Offered::Taken(id), Err(e)),
    }
}

/// Removes a batch the plugin took from the inbox.
pub(crate) fn taken(ctx: &IntegrationCtx, id: i64) {
    if let Err(e) = ctx.store.inbox_delete(id) {
        tracing::error!(integration = %ctx.name, "inbox delete failed: {e:#}");
    }
    ctx.count("inbox.processed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_is_an_object_with_a_value_list() {
        assert!(check_envelope(br#"{"value": []}"#).is_ok());
        assert!(check_envelope(br#"{"value": [{"a": 1}], "validationTokens": ["x"]}"#).is_ok());
        for bad in [&b"[]"[..], b"{}", b"{\"value\": 1}", b"not json", b""] {
            assert!(check_envelope(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
