//! Wiring: durable state, keys, switchboards and one actor per integration, behind one HTTP
//! listener that serves
//! - `/webhook/{integration}/notifications` and `/webhook/{integration}/lifecycle` (Graph),
//! - `/status` and `/status/{integration}` (the admin's view),
//! - `/switchboard/{integration}/...` (the switchboard simulator's API).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::json;

use crate::config::{Config, IntegrationConfig, Secret};
use crate::keys::NotificationKey;
use crate::release::Release;
use crate::runtime::{self, HostClock, IntegrationHandle, Runtime, Spawn, SwapReport, WebhookRequest};
use crate::store::Db;
use crate::switchboard::Switchboard;

/// Largest webhook body the host reads; larger requests get 400 without reaching the plugin.
pub const MAX_WEBHOOK_BODY: usize = presence_core::core::MAX_WEBHOOK_BODY;

/// A running host.
pub struct Host {
    /// Integrations by name.
    pub integrations: BTreeMap<String, IntegrationHandle>,
    /// Where the listener listens.
    pub addr: SocketAddr,
    /// The clock the plugins see.
    pub clock: Arc<HostClock>,
    swaps: Arc<Swaps>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct AppState {
    integrations: Arc<BTreeMap<String, IntegrationHandle>>,
    swaps: Arc<Swaps>,
    admin_token: Option<Secret>,
}

/// What a hot swap needs: the runtime, the state (to keep a swap across restarts) and each
/// integration's configured release.
struct Swaps {
    rt: Arc<Runtime>,
    db: Arc<Db>,
    configured: BTreeMap<String, String>,
}

fn load_file(rt: &Runtime, path: &std::path::Path) -> anyhow::Result<Arc<Release>> {
    let wasm = std::fs::read(path).with_context(|| format!("reading the plugin {}", path.display()))?;
    rt.load(&wasm).with_context(|| format!("loading the plugin {}", path.display()))
}

impl Swaps {
    async fn swap(
        &self,
        integrations: &BTreeMap<String, IntegrationHandle>,
        wasm: &[u8],
        only: Option<&str>,
    ) -> anyhow::Result<Vec<SwapReport>> {
        if let Some(name) = only {
            anyhow::ensure!(integrations.contains_key(name), "no integration named {name:?}");
        }
        let release = self.rt.load(wasm)?;
        let mut reports = Vec::new();
        for (name, h) in integrations {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let r = h.swap(release.clone()).await.ok_or_else(|| anyhow::anyhow!("integration {name} is stopping"))?;
            if r.outcome == "switched"
                && let Err(e) = self.db.put_swapped_release(name, &self.configured[name], wasm)
            {
                tracing::error!(integration = %name, "could not record the swap; a restart runs the configured release: {e:#}");
            }
            reports.push(r);
        }
        Ok(reports)
    }
}

impl Host {
    /// Starts every integration of `config` with the plugin `wasm` and serves on `listener`.
    /// `switchboards` overrides the CSV-loaded switchboard of an integration (tests, demo).
    pub async fn start(
        config: &Config,
        wasm: &[u8],
        clock: Arc<HostClock>,
        listener: tokio::net::TcpListener,
        mut switchboards: BTreeMap<String, Arc<Switchboard>>,
    ) -> anyhow::Result<Host> {
        let db = Arc::new(Db::open(&config.host.state_dir)?);
        let rt = Runtime::new(config.host.limits, Some(config.host.plugin_cache_dir.clone()))?;
        let default_release = match &config.host.plugin {
            Some(path) => load_file(&rt, path)?,
            None => rt.load(wasm).context("loading the plugin built into the host")?,
        };
        let http = reqwest::Client::builder().build().context("building the HTTP client")?;
        let mut integrations = BTreeMap::new();
        let mut configured = BTreeMap::new();
        for ic in &config.integrations {
            let sb = match switchboards.remove(&ic.name) {
                Some(sb) => sb,
                None => Arc::new(match &ic.switchboard_csv {
                    Some(p) => Switchboard::from_csv(p)?,
                    None => Switchboard::default(),
                }),
            };
            let key = NotificationKey::load_or_create(&db, &ic.name)?;
            let configured_release = match &ic.plugin {
                Some(path) => load_file(&rt, path).with_context(|| format!("integration {}", ic.name))?,
                None => default_release.clone(),
            };
            // A hot swap holds across restarts while the configuration names the same release.
            let release = match db.swapped_release(&ic.name, &configured_release.sha256)? {
                Some(wasm) => match rt.load(&wasm) {
                    Ok(r) => {
                        tracing::info!(integration = %ic.name, sha256 = %&r.sha256[..12], "running the release it was swapped to");
                        r
                    }
                    Err(e) => {
                        tracing::error!(integration = %ic.name, "the release it was swapped to no longer loads ({e:#}); running the configured one");
                        configured_release.clone()
                    }
                },
                None => configured_release.clone(),
            };
            configured.insert(ic.name.clone(), configured_release.sha256.clone());
            let settings = settings_for(config, ic, &key);
            let allowed_origins = [&config.host.login_base_url, &config.host.graph_base_url]
                .iter()
                .map(|u| url::Url::parse(u).map(|u| runtime::origin_of(&u)))
                .collect::<Result<Vec<_>, _>>()?;
            let handle = runtime::spawn(
                rt.clone(),
                Spawn {
                    settings,
                    allowed_origins,
                    http: http.clone(),
                    db: db.clone(),
                    switchboard: sb,
                    key,
                    clock: clock.clone(),
                    release,
                },
            )
            .await
            .with_context(|| format!("starting integration {}", ic.name))?;
            // After a restart the plugin must learn which calls are still going on: replay the
            // switchboard's current line states (it clears every other session it had).
            for (user, state) in handle.switchboard.lines_in_call() {
                if let Some(state) = line_state(&state) {
                    let _ = handle.line_event(runtime::LineEvent { user_id: user, state, at_ms: now_ms() }).await;
                }
            }
            tracing::info!(integration = %ic.name, "integration started");
            integrations.insert(ic.name.clone(), handle);
        }
        let swaps = Arc::new(Swaps { rt: rt.clone(), db: db.clone(), configured });
        let state = AppState {
            integrations: Arc::new(integrations.clone()),
            swaps: swaps.clone(),
            admin_token: config.host.admin_token.clone(),
        };
        let app = Router::new()
            .route("/webhook/{name}/{kind}", any(webhook))
            .route("/status", get(status_all))
            .route("/status/{name}", get(status_one))
            .route("/integrations/{name}/sync-now", post(sync_now))
            .route("/integrations/{name}/overrides", get(get_overrides).put(put_overrides))
            .route(
                "/admin/plugin",
                axum::routing::put(put_plugin)
                    .layer(axum::extract::DefaultBodyLimit::max(crate::release::MAX_PLUGIN_BYTES)),
            )
            .route("/switchboard/{name}/users", get(sb_users))
            .route("/switchboard/{name}/users/{id}", get(sb_user))
            .route("/switchboard/{name}/users/{id}/line-events", post(sb_line_event))
            .with_state(state);
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Host { integrations, addr, clock, swaps, shutdown: Some(tx), server })
    }

    /// Hot swap: loads `wasm` (checks, compiles or takes it from the cache) and switches every
    /// integration, or only `only`, to it, one after the other. A release that does not load
    /// is refused before anything switches; an integration whose new instance does not
    /// configure rolls back on its own (see its report).
    pub async fn swap(&self, wasm: &[u8], only: Option<&str>) -> anyhow::Result<Vec<SwapReport>> {
        self.swaps.swap(&self.integrations, wasm, only).await
    }

    /// Stops the listener and the integrations.
    pub async fn stop(mut self) {
        for h in self.integrations.values() {
            h.shutdown();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.server).await;
        for h in self.integrations.values() {
            h.stopped().await;
        }
    }
}

/// The plugin settings of one integration.
pub fn settings_for(config: &Config, ic: &IntegrationConfig, key: &NotificationKey) -> runtime::WitSettings {
    let base = format!("{}/webhook/{}", config.host.public_base_url, ic.name);
    runtime::WitSettings {
        name: ic.name.clone(),
        tenant_id: ic.tenant_id.clone(),
        client_id: ic.client_id.clone(),
        client_secret: ic.client_secret.expose().to_string(),
        integration_users: ic
            .users
            .iter()
            .map(|u| runtime::WitIntegrationUser {
                username: u.username.clone(),
                password: u.password.expose().to_string(),
            })
            .collect(),
        login_base_url: config.host.login_base_url.clone(),
        graph_base_url: config.host.graph_base_url.clone(),
        notification_url: format!("{base}/notifications"),
        lifecycle_notification_url: format!("{base}/lifecycle"),
        encryption_certificate: key.cert_base64.clone(),
        encryption_certificate_id: key.cert_id.clone(),
        push_line_status: ic.push_line_status,
        min_call_length_ms: ic.min_call_length_ms,
        reconcile_interval_ms: ic.reconcile_interval_s * 1000,
        directory_delta_interval_ms: ic.directory_delta_interval_s * 1000,
        match_order: ic
            .match_order
            .iter()
            .map(|m| match m {
                crate::config::MatchSource::Mail => runtime::WitMatchSource::Mail,
                crate::config::MatchSource::ProxyAddresses => runtime::WitMatchSource::ProxyAddresses,
                crate::config::MatchSource::Upn => runtime::WitMatchSource::Upn,
            })
            .collect(),
        overrides: ic
            .overrides
            .iter()
            .map(|(s, m)| runtime::WitMappingOverride { switchboard_user_id: s.clone(), microsoft_user: m.clone() })
            .collect(),
    }
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
    let handshake = parts
        .uri
        .query()
        .is_some_and(|q| url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "validationToken"));
    if parts.method == axum::http::Method::POST && !handshake {
        // A notification: check the envelope, persist it, acknowledge at once (Graph wants 202
        // within 3 s) and let the plugin process it from the inbox.
        if let Err(e) = check_envelope(&body) {
            h.count("rejected.malformed");
            return (StatusCode::BAD_REQUEST, format!("malformed notification JSON: {e}")).into_response();
        }
        return match h.accept(&kind, body.to_vec()) {
            Ok(()) => StatusCode::ACCEPTED.into_response(),
            Err(e) => {
                tracing::error!(integration = %name, "inbox write failed: {e:#}");
                h.count("rejected.inbox-unavailable");
                // Not acknowledged: Graph retries.
                (StatusCode::SERVICE_UNAVAILABLE, "inbox unavailable; retry later").into_response()
            }
        };
    }
    let wreq = WebhookRequest {
        method: parts.method.to_string(),
        path: format!("/{kind}"),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: body.to_vec(),
    };
    match h.webhook(wreq).await {
        Some(r) => (
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [(header::CONTENT_TYPE, r.content_type)],
            r.body,
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "integration is stopping").into_response(),
    }
}

/// The shape every notification body has: `{"value": [ ... ]}`.
fn check_envelope(body: &[u8]) -> Result<(), serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[allow(dead_code)]
        value: Vec<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Envelope>(body).map(|_| ())
}

async fn status_json(h: &IntegrationHandle) -> serde_json::Value {
    serde_json::to_value(h.status().await).unwrap_or_default()
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
    match st.integrations.get(&name) {
        Some(h) if h.sync_now() => (StatusCode::ACCEPTED, "directory refresh started").into_response(),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "integration is stopping").into_response(),
        None => not_found("integration"),
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
        Some(list) => axum::Json(
            list.into_iter()
                .map(|o| OverrideBody { switchboard_user: o.switchboard_user_id, microsoft_user: o.microsoft_user })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "integration is stopping").into_response(),
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
        .map(|o| runtime::WitMappingOverride {
            switchboard_user_id: o.switchboard_user,
            microsoft_user: o.microsoft_user,
        })
        .collect();
    match h.set_overrides(list).await {
        Some(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Some(Err(e)) => (StatusCode::BAD_REQUEST, e).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "integration is stopping").into_response(),
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
    body: axum::body::Bytes,
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
    match st.swaps.swap(&st.integrations, &body, q.integration.as_deref()).await {
        Ok(reports) => {
            let code =
                if reports.iter().all(|r| r.outcome == "switched") { StatusCode::OK } else { StatusCode::CONFLICT };
            (code, axum::Json(json!({ "reports": reports }))).into_response()
        }
        Err(e) => {
            (StatusCode::UNPROCESSABLE_ENTITY, format!("plugin refused, nothing switched: {e:#}")).into_response()
        }
    }
}

async fn sb_users(State(st): State<AppState>, Path(name): Path<String>) -> Response {
    let Some(h) = st.integrations.get(&name) else { return not_found("integration") };
    let shown = h.switchboard.all_shown();
    let users: Vec<_> = h
        .switchboard
        .users()
        .into_iter()
        .map(|u| {
            let p = shown.get(&u.id).cloned();
            json!({ "user": u, "teams_presence": p })
        })
        .collect();
    axum::Json(json!({ "users": users })).into_response()
}

async fn sb_user(State(st): State<AppState>, Path((name, id)): Path<(String, String)>) -> Response {
    let Some(h) = st.integrations.get(&name) else { return not_found("integration") };
    match h.switchboard.users().into_iter().find(|u| u.id == id) {
        Some(u) => axum::Json(json!({ "user": u, "teams_presence": h.switchboard.shown(&id) })).into_response(),
        None => not_found("user"),
    }
}

#[derive(serde::Deserialize)]
struct LineEventBody {
    state: String,
}

async fn sb_line_event(
    State(st): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Some(h) = st.integrations.get(&name) else { return not_found("integration") };
    let Ok(b) = serde_json::from_slice::<LineEventBody>(&body) else {
        return (StatusCode::BAD_REQUEST, "body must be {\"state\": \"idle|ringing|connected|on-hold|ended\"}")
            .into_response();
    };
    let Some(state) = line_state(&b.state) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("unknown line state '{}': use idle, ringing, connected, on-hold or ended", b.state),
        )
            .into_response();
    };
    if !h.switchboard.has_user(&id) {
        return not_found("user");
    }
    h.switchboard.set_line(&id, &b.state);
    let ev = runtime::LineEvent { user_id: id, state, at_ms: now_ms() };
    match h.line_event(ev).await {
        Some(Ok(())) => StatusCode::ACCEPTED.into_response(),
        Some(Err(e)) => (StatusCode::UNPROCESSABLE_ENTITY, e).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "integration is stopping").into_response(),
    }
}

fn line_state(s: &str) -> Option<runtime::LineState> {
    Some(match s {
        "idle" => runtime::LineState::Idle,
        "ringing" => runtime::LineState::Ringing,
        "connected" => runtime::LineState::Connected,
        "on-hold" => runtime::LineState::OnHold,
        "ended" => runtime::LineState::Ended,
        _ => return None,
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}
