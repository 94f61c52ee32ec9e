//! The durable webhook inbox, host side, all of it: Graph's notification batches are checked
//! for their envelope, written to the state store and acknowledged at once, and the actor is
//! woken ([`accept`]). The inbox is the queue of notifications: after every command the actor
//! pulls its rows, in order, [`STEP`] at a time (so other commands get their turn during a
//! flood; `Actor::take_inbox`), and [`offer`]s each to the plugin (`sync.on-notification`).
//! Rows a crash left are taken first ([`replay`]). A plugin that answers `retry-later` (it is
//! restoring its state) gets the same batch again after its next tick; no later batch passes
//! it.

use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use wasmtime::Store;

use crate::bindings::sync;
use crate::command::Command;
use crate::context::IntegrationCtx;
use crate::error::StoreError;
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

/// Persists a notification body (it survives a crash from here on) and wakes the actor. When
/// this returns `Ok` the caller may acknowledge it to Graph.
pub(crate) fn accept(
    ctx: &IntegrationCtx,
    tx: &mpsc::Sender<Command>,
    kind: &str,
    body: &[u8],
) -> Result<(), StoreError> {
    ctx.store.inbox_push(&ctx.name, kind, body, ctx.clock.now_ms())?;
    ctx.count("inbox.accepted");
    wake(ctx, tx);
    Ok(())
}

/// Rows wait in the inbox: the actor takes them after its current command (woken if idle).
pub(crate) fn wake(ctx: &IntegrationCtx, tx: &mpsc::Sender<Command>) {
    if !ctx.inbox_waiting.swap(true, Ordering::SeqCst) {
        // A full queue means a busy actor, which looks at the flag after every command.
        let _ = tx.try_send(Command::InboxWake);
    }
}

/// At an integration's start: the rows a crash left wait, and are taken first.
pub(crate) fn replay(ctx: &IntegrationCtx) -> Result<(), StoreError> {
    let waiting = ctx.store.inbox_len(&ctx.name)?;
    ctx.count_by("inbox.replayed", waiting);
    if waiting > 0 {
        ctx.inbox_waiting.store(true, Ordering::SeqCst);
    }
    Ok(())
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
