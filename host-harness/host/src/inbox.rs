//! The durable webhook inbox, host side: Graph's notification bodies are checked for their
//! envelope, written to the state store and acknowledged at once; the actor then offers each
//! to the plugin in order. A plugin that answers `503` (it is restoring its state) gets the
//! notification again, in order, after its next step ([`Deferred`]).

use std::collections::VecDeque;

use wasmtime::Store;

use crate::bindings::sync;
use crate::context::IntegrationCtx;
use crate::instance::HostState;
use crate::sandbox::MAX_WEBHOOK_RESPONSE;

/// Notifications the plugin answered 503, oldest first, with those that came after them.
pub(crate) type Deferred = VecDeque<(i64, sync::WebhookRequest)>;

/// The shape every notification body has: `{"value": [ ... ]}`.
pub fn check_envelope(body: &[u8]) -> Result<(), serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[allow(dead_code)]
        value: Vec<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Envelope>(body).map(|_| ())
}

/// The plugin request for a persisted notification body.
pub(crate) fn request(kind: &str, body: Vec<u8>) -> sync::WebhookRequest {
    sync::WebhookRequest {
        method: "POST".into(),
        path: format!("/{kind}"),
        query: String::new(),
        headers: vec![("content-type".into(), "application/json".into())],
        body,
    }
}

/// Hands a notification from the inbox to the plugin. Taken (`Ok(true)`): it leaves the
/// inbox, also when it made the plugin trap (it would again: one poisonous body must not
/// loop). Answered 503 (`Ok(false)`): the plugin is restoring its state; the notification
/// stays in the inbox and goes back in line (`front`: at the head, where it came from).
pub(crate) async fn offer(
    store: &mut Store<HostState>,
    sync: &sync::Guest,
    ctx: &IntegrationCtx,
    deferred: &mut Deferred,
    id: i64,
    req: sync::WebhookRequest,
    front: bool,
) -> Result<bool, wasmtime::Error> {
    let r = sync.call_on_webhook(&mut *store, &req).await;
    if let Ok(resp) = &r
        && resp.status == 503
    {
        ctx.count("inbox.deferred");
        if front {
            deferred.push_front((id, req));
        } else {
            deferred.push_back((id, req));
        }
        return Ok(false);
    }
    if let Err(e) = ctx.store.inbox_delete(id) {
        tracing::error!(integration = %ctx.name, "inbox delete failed: {e:#}");
    }
    ctx.count("inbox.processed");
    r.map(|_| true)
}

/// The plugin's webhook answer, unless it is oversized or malformed: then a 500 that says so.
pub(crate) fn checked_response(ctx: &IntegrationCtx, r: sync::WebhookResponse) -> sync::WebhookResponse {
    if r.body.len() <= MAX_WEBHOOK_RESPONSE && r.content_type.len() <= 256 && (100..=599).contains(&r.status) {
        return r;
    }
    ctx.count("plugin.bad-webhook-response");
    tracing::error!(integration = %ctx.name, bytes = r.body.len(), status = r.status,
        "the plugin's webhook response is oversized or malformed; answered 500 instead");
    sync::WebhookResponse {
        status: 500,
        content_type: "text/plain".into(),
        body: format!("the plugin's response was refused (over {MAX_WEBHOOK_RESPONSE} bytes or malformed)")
            .into_bytes(),
    }
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
