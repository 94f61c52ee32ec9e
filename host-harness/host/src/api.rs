//! The host's HTTP API:
//! - `/webhook/{integration}/notifications` and `/webhook/{integration}/lifecycle` (Graph),
//! - `/status` and `/status/{integration}` (the admin's view),
//! - `/integrations/{integration}/sync-now` and `/integrations/{integration}/overrides`,
//! - `PUT /admin/plugin` (hot swap, with the admin token).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::json;

use crate::bindings::sync;
use crate::config::Secret;
use crate::error::{OverrideError, Stopping};
use crate::host::{Host, Swaps};
use crate::inbox::check_envelope;
use crate::integration::IntegrationHandle;
use crate::release::MAX_PLUGIN_BYTES;
use crate::sandbox::MAX_WEBHOOK_BODY;
use crate::status::SwapOutcome;

#[derive(Clone)]
struct AppState {
    integrations: Arc<BTreeMap<String, IntegrationHandle>>,
    swaps: Arc<Swaps>,
    admin_token: Option<Secret>,
}

impl Host {
    /// The host's routes, for a platform that serves them itself (else [`Host::serve`]).
    pub fn router(&self) -> Router {
        let state = AppState {
            integrations: Arc::new(self.integrations.clone()),
            swaps: self.swaps.clone(),
            admin_token: self.admin_token.clone(),
        };
        Router::new()
            .route("/webhook/{name}/{kind}", any(webhook))
            .route("/status", get(status_all))
            .route("/status/{name}", get(status_one))
            .route("/integrations/{name}/sync-now", post(sync_now))
            .route("/integrations/{name}/overrides", get(get_overrides).put(put_overrides))
            .route(
                "/admin/plugin",
                axum::routing::put(put_plugin).layer(axum::extract::DefaultBodyLimit::max(MAX_PLUGIN_BYTES)),
            )
            .with_state(state)
    }
}

fn stopping() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "integration is stopping").into_response()
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("no such {what}")).into_response()
}

async fn webhook(State(st): State<AppState>, Path((name, kind)): Path<(String, String)>, req: Request) -> Response {
    let Some(h) = st.integrations.get(&name) else { return not_found("integration") };
    if kind != "notifications" && kind != "lifecycle" {
        return not_found("webhook");
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(Body::new(body), MAX_WEBHOOK_BODY).await {
        Ok(b) => b,
        Err(_) => {
            h.count("rejected.oversized");
            return (StatusCode::BAD_REQUEST, format!("body exceeds {MAX_WEBHOOK_BODY} bytes")).into_response();
        }
    };
    // Graph's validation handshake: echo the decoded token as plain text, at once (Graph waits
    // 10 s, and the plugin may be busy). It never reaches the plugin.
    if let Some(token) = parts.uri.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "validationToken").map(|(_, v)| v.into_owned())
    }) {
        h.count("validation.answered");
        return (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], token).into_response();
    }
    if parts.method != axum::http::Method::POST {
        h.count("rejected.method");
        return (StatusCode::METHOD_NOT_ALLOWED, "only POST is accepted").into_response();
    }
    // A notification batch: check the envelope, persist it, acknowledge at once (Graph wants
    // 202 within 3 s) and let the plugin process it from the inbox.
    if let Err(e) = check_envelope(&body) {
        h.count("rejected.malformed");
        return (StatusCode::BAD_REQUEST, format!("malformed notification JSON: {e}")).into_response();
    }
    match h.accept(&kind, body.to_vec()) {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => {
            tracing::error!(integration = %name, "inbox write failed: {e}");
            h.count("rejected.inbox-unavailable");
            // Not acknowledged: Graph retries.
            (StatusCode::SERVICE_UNAVAILABLE, "inbox unavailable; retry later").into_response()
        }
    }
}

async fn status_json(h: &IntegrationHandle) -> serde_json::Value {
    match h.status().await {
        Ok(s) => serde_json::to_value(s).unwrap_or_default(),
        Err(Stopping) => serde_json::Value::Null,
    }
}

async fn status_all(State(st): State<AppState>) -> Response {
    let mut all = Vec::new();
    for h in st.integrations.values() {
        all.push(status_json(h).await);
    }
    axum::Json(json!({ "integrations": all })).into_response()
}

async fn status_one(State(st): State<AppState>, Path(name): Path<String>) -> Response {
    match st.integrations.get(&name) {
        Some(h) => axum::Json(status_json(h).await).into_response(),
        None => not_found("integration"),
    }
}

async fn sync_now(State(st): State<AppState>, Path(name): Path<String>) -> Response {
    let Some(h) = st.integrations.get(&name) else { return not_found("integration") };
    match h.sync_now().await {
        Ok(()) => (StatusCode::ACCEPTED, "directory refresh started").into_response(),
        Err(Stopping) => stopping(),
    }
}

/// One override as the API shows and takes it.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideBody {
    switchboard_user: String,
    microsoft_user: String,
}

async fn get_overrides(State(st): State<AppState>, Path(name): Path<String>) -> Response {
    let Some(h) = st.integrations.get(&name) else { return not_found("integration") };
    match h.overrides().await {
        Ok(list) => axum::Json(
            list.into_iter()
                .map(|o| OverrideBody { switchboard_user: o.switchboard_user_id, microsoft_user: o.microsoft_user })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(Stopping) => stopping(),
    }
}

/// Replaces the API overrides with the JSON list in the body:
/// `[{"switchboard_user": "...", "microsoft_user": "<id or address>"}]`.
async fn put_overrides(State(st): State<AppState>, Path(name): Path<String>, body: axum::body::Bytes) -> Response {
    let Some(h) = st.integrations.get(&name) else { return not_found("integration") };
    let list = match serde_json::from_slice::<Vec<OverrideBody>>(&body) {
        Ok(l) => l,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("body must be [{{\"switchboard_user\": \"...\", \"microsoft_user\": \"...\"}}]: {e}"),
            )
                .into_response();
        }
    };
    let list = list
        .into_iter()
        .map(|o| sync::MappingOverride { switchboard_user_id: o.switchboard_user, microsoft_user: o.microsoft_user })
        .collect();
    match h.set_overrides(list).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e @ OverrideError::InvalidEntry { .. }) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        Err(OverrideError::Stopping) => stopping(),
    }
}

#[derive(serde::Deserialize)]
struct SwapQuery {
    integration: Option<String>,
}

/// Hot swap: `PUT /admin/plugin[?integration=NAME]` with the component as the body and
/// `Authorization: Bearer <admin token>`. 200 with the reports when every integration
/// switched, 409 with the reports when one rolled back, 422 when the component was refused
/// (nothing switched), 401/403 without a valid token or with the admin API disabled.
async fn put_plugin(
    State(st): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<SwapQuery>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    let Some(token) = &st.admin_token else {
        return (StatusCode::FORBIDDEN, "the admin API is disabled: set [host] admin_token_env").into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(subtle::ConstantTimeEq::ct_eq(given.as_bytes(), token.expose().as_bytes())) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong admin token (Authorization: Bearer ...)").into_response();
    }
    // The body (up to 64 MiB) is read only now, after the token was checked.
    let body = match axum::body::to_bytes(body, MAX_PLUGIN_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return (StatusCode::PAYLOAD_TOO_LARGE, format!("the plugin may be at most {MAX_PLUGIN_BYTES} bytes"))
                .into_response();
        }
    };
    match st.swaps.swap(&st.integrations, &body, q.integration.as_deref()).await {
        Ok(reports) => {
            let switched = reports.iter().all(|r| r.outcome == SwapOutcome::Switched);
            let code = if switched { StatusCode::OK } else { StatusCode::CONFLICT };
            (code, axum::Json(json!({ "reports": reports }))).into_response()
        }
        Err(e) => {
            (StatusCode::UNPROCESSABLE_ENTITY, format!("plugin refused, nothing switched: {e:#}")).into_response()
        }
    }
}
