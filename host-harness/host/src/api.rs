//! The host's HTTP API, on two listeners:
//! - the **public** one, which Graph must reach: `/webhook/{integration}/{secret}/notifications`
//!   and `.../lifecycle` (the secret segment is derived from the KEK: see
//!   [`crate::integration::webhook_token`]), and `GET /healthz` (liveness);
//! - the **admin** one (loopback by default), every route behind `Authorization: Bearer
//!   <admin token>`, checked in constant time before any body is read: `/status` and
//!   `/status/{integration}`, `/integrations/{integration}/sync-now`,
//!   `/integrations/{integration}/overrides`, `PUT /admin/plugin` (hot swap), `/healthz`,
//!   `/readyz`, `/metrics`, `/fleet` (several hosts), the integrations API ([`crate::admin_api`]), and
//!   whatever routes the platform adds (the workshop's switchboard simulator).

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::json;

use crate::bindings::sync;
use crate::config::Secret;
use crate::error::{OverrideError, Stopping};
use crate::host::Host;
use crate::inbox::AcceptError;
use crate::integration::IntegrationHandle;
use crate::release::MAX_PLUGIN_BYTES;
use crate::sandbox::MAX_WEBHOOK_BODY;
use crate::status::SwapOutcome;
use crate::unwrap::{DataKey, read_envelope};
use crate::web::{AppState, read_body};

pub use crate::web::BODY_READ_TIMEOUT;
/// Time a client has to send a plugin (up to 64 MiB) once its head arrived.
pub const PLUGIN_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest overrides list body.
pub const MAX_OVERRIDES_BODY: usize = 1 << 20;

/// An integration is ready when its actor finished a guest call this recently (it ticks every
/// second).
pub const READY_WITHIN: Duration = Duration::from_secs(5);
/// How long `/metrics` waits for each integration's status.
pub const METRICS_STATUS_WITHIN: Duration = Duration::from_secs(2);

impl Host {
    fn app_state(&self) -> AppState {
        AppState { registry: self.registry.clone(), metrics: self.metrics.clone(), sign_ins: self.sign_ins.clone() }
    }

    /// The public routes (what Graph calls, and `GET /healthz`), for a platform that serves
    /// them itself (else [`Host::serve`]).
    pub fn public_router(&self) -> Router {
        Router::new()
            .route("/webhook/{name}/{token}/{kind}", any(webhook))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz_public))
            .with_state(self.app_state())
    }

    /// The admin routes, merged with `extra` (a platform's own, or the switchboard
    /// simulator's), all behind the admin token; for a platform that serves them itself.
    pub fn admin_router(&self, extra: Router) -> Router {
        let routes = Router::new()
            .route("/status", get(status_all))
            .route("/status/{name}", get(status_one))
            .route("/integrations/{name}/sync-now", post(sync_now))
            .route("/integrations/{name}/overrides", get(get_overrides).put(put_overrides))
            .route("/admin/plugin", axum::routing::put(put_plugin))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz_admin))
            .route("/metrics", get(metrics))
            .route("/fleet", get(fleet))
            .merge(crate::admin_api::routes())
            .with_state(self.app_state())
            .merge(extra);
        // Several hosts: what another host forwards runs on these routes, past the token
        // check the first host made.
        self.registry.set_call_router(routes.clone());
        let protected = routes
            .layer(axum::middleware::from_fn_with_state(self.app_state(), to_owner))
            .layer(axum::middleware::from_fn_with_state(self.admin_token.clone(), require_admin_token));
        // The admin page takes a session (signed in with the same token) instead.
        Router::new().merge(protected).merge(crate::ui::router(self.app_state(), self.admin_token.clone())).fallback(
            axum::routing::any(|| async { (StatusCode::NOT_FOUND, "no such route") })
                .layer(axum::middleware::from_fn_with_state(self.admin_token.clone(), require_admin_token)),
        )
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// Lets a request through only with `Authorization: Bearer <admin token>`, compared in
/// constant time, before its body is read (by anyone).
async fn require_admin_token(State(token): State<Secret>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(subtle::ConstantTimeEq::ct_eq(given.as_bytes(), token.expose().as_bytes())) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "missing or wrong admin token (Authorization: Bearer ...)",
        )
            .into_response();
    }
    next.run(req).await
}

/// Several hosts: a call about an integration another host runs goes to that host (see
/// `registry::calls`), after the token check.
async fn to_owner(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(name) = crate::registry::owner_path(req.uri().path())
        && st.registry.runs_elsewhere(name)
    {
        let name = name.to_string();
        let (parts, body) = req.into_parts();
        let body = match read_body(body, crate::registry::MAX_CALL_BODY, BODY_READ_TIMEOUT).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        return st.registry.call_owner(&name, parts, &body).await;
    }
    next.run(req).await
}

fn stopping() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "integration is stopping").into_response()
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("no such {what}")).into_response()
}

/// What a webhook reaches: the integration running here, or (several hosts) the shared
/// inbox of one that runs on another host.
enum Target {
    Here(IntegrationHandle),
    Elsewhere(std::sync::Arc<crate::registry::Registry>, String),
}

impl Target {
    fn webhook_token_matches(&self, token: &str) -> bool {
        match self {
            Target::Here(h) => h.webhook_token_matches(token),
            Target::Elsewhere(r, name) => {
                bool::from(subtle::ConstantTimeEq::ct_eq(token.as_bytes(), r.webhook_token_of(name).as_bytes()))
            }
        }
    }
    fn count(&self, what: &str) {
        match self {
            Target::Here(h) => h.count(what),
            Target::Elsewhere(r, _) => r.count_elsewhere(what),
        }
    }
    async fn accept(&self, kind: &str, body: Vec<u8>, keys: Vec<DataKey>) -> Result<(), AcceptError> {
        match self {
            Target::Here(h) => h.accept_read(kind, body, keys).await,
            Target::Elsewhere(r, name) => r.accept_elsewhere(name, kind, body).await,
        }
    }
}

async fn webhook(
    State(st): State<AppState>,
    Path((name, token, kind)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    let h = match st.registry.get(&name) {
        Some(h) => Target::Here(h),
        None if st.registry.runs_elsewhere(&name) => Target::Elsewhere(st.registry.clone(), name.clone()),
        None => return not_found("webhook"),
    };
    // The secret path segment, before anything is read: a forged request costs a compare.
    if !h.webhook_token_matches(&token) {
        h.count("rejected.webhook-path");
        return not_found("webhook");
    }
    if kind != "notifications" && kind != "lifecycle" {
        return not_found("webhook");
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(body, MAX_WEBHOOK_BODY, BODY_READ_TIMEOUT).await {
        Ok(b) => b,
        Err(r) => {
            h.count(if r.status() == StatusCode::REQUEST_TIMEOUT {
                "rejected.slow-body"
            } else {
                "rejected.oversized"
            });
            return r;
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
    // The wrapped keys are read along: the host starts their RSA unwraps now, in parallel
    // (crate::unwrap), and the plugin finds them done.
    let keys = match read_envelope(&body) {
        Ok(keys) => keys,
        Err(e) => {
            h.count("rejected.malformed");
            return (StatusCode::BAD_REQUEST, format!("malformed notification JSON: {e}")).into_response();
        }
    };
    match h.accept(&kind, body.to_vec(), keys).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e @ AcceptError::Full { .. }) => {
            // Graph retries a 503, for up to 4 hours.
            (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "10")], format!("{e}; retry later"))
                .into_response()
        }
        Err(e) => {
            tracing::error!(integration = %name, "inbox write failed: {e}");
            h.count("rejected.inbox-unavailable");
            // Not acknowledged: Graph retries.
            (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], "inbox unavailable; retry later")
                .into_response()
        }
    }
}

/// The integrations whose actor finished no guest call within [`READY_WITHIN`] (stopping,
/// starting, or stuck). Reads a timestamp only: a flood of `/readyz` on the public listener
/// costs no guest call and delays no integration.
fn not_ready(st: &AppState) -> Vec<String> {
    st.registry.snapshot().iter().filter(|(_, h)| !h.alive(READY_WITHIN)).map(|(n, _)| n.clone()).collect()
}

/// Readiness for a load balancer: 200 when every integration runs, else 503. The public
/// listener says no more than that.
async fn readyz_public(State(st): State<AppState>) -> Response {
    if not_ready(&st).is_empty() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// Readiness with the names of the integrations that did not answer.
async fn readyz_admin(State(st): State<AppState>) -> Response {
    let late = not_ready(&st);
    let code = if late.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(json!({ "ready": late.is_empty(), "not_ready": late }))).into_response()
}

/// Prometheus metrics (see [`crate::metrics`]).
async fn metrics(State(st): State<AppState>) -> Response {
    let mut statuses = Vec::new();
    for h in st.registry.snapshot().values() {
        if let Ok(Ok(s)) = tokio::time::timeout(METRICS_STATUS_WITHIN, h.status()).await {
            statuses.push(s);
        }
    }
    ([(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], st.metrics.render(&statuses)).into_response()
}

/// An integration's status; one that is stopping (deleted, changed, or handed to another
/// host) has no other: `{"name", "state": "stopping"}`.
async fn status_json(name: &str, h: &IntegrationHandle) -> serde_json::Value {
    match h.status().await {
        Ok(s) => serde_json::to_value(s).unwrap_or_default(),
        Err(Stopping) => json!({ "name": name, "state": "stopping" }),
    }
}

async fn status_all(State(st): State<AppState>) -> Response {
    let mut all = Vec::new();
    for (name, h) in st.registry.snapshot().iter() {
        all.push(status_json(name, h).await);
    }
    axum::Json(json!({ "integrations": all })).into_response()
}

/// Several hosts on one database: this host's id, the integrations whose lease it holds, what
/// its lease keeper did, the webhooks it took for integrations other hosts run, and the
/// writes refused because a lease was gone. 404 on a host on its own.
async fn fleet(State(st): State<AppState>) -> Response {
    let Some(l) = st.registry.leases() else {
        return (StatusCode::NOT_FOUND, "this host runs on its own (no database_url_env)").into_response();
    };
    axum::Json(json!({
        "host_id": l.me,
        "held": l.held(),
        "keeper": l.stats(),
        "webhooks_for_other_hosts": l.elsewhere_counters(),
        "fenced_writes": l.store().fenced_writes(),
    }))
    .into_response()
}

async fn status_one(State(st): State<AppState>, Path(name): Path<String>) -> Response {
    match st.registry.get(&name) {
        Some(h) => axum::Json(status_json(&name, &h).await).into_response(),
        None => not_found("integration"),
    }
}

async fn sync_now(State(st): State<AppState>, Path(name): Path<String>) -> Response {
    let Some(h) = st.registry.get(&name) else { return not_found("integration") };
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
    let Some(h) = st.registry.get(&name) else { return not_found("integration") };
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
async fn put_overrides(State(st): State<AppState>, Path(name): Path<String>, body: Body) -> Response {
    let Some(h) = st.registry.get(&name) else { return not_found("integration") };
    let body = match read_body(body, MAX_OVERRIDES_BODY, BODY_READ_TIMEOUT).await {
        Ok(b) => b,
        Err(r) => return r,
    };
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

/// Hot swap: `PUT /admin/plugin[?integration=NAME]` with the component as the body (on the
/// admin listener, with its token). 200 with the reports when every integration switched,
/// 409 with the reports when one rolled back, 422 when the component was refused (nothing
/// switched).
async fn put_plugin(
    State(st): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<SwapQuery>,
    body: Body,
) -> Response {
    let body = match read_body(body, MAX_PLUGIN_BYTES, PLUGIN_READ_TIMEOUT).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match st.registry.swap(&body, q.integration.as_deref()).await {
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
