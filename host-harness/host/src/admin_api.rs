//! The integrations API on the admin listener (behind its token): operators add, change and
//! remove integrations at run time ([`crate::registry`]).
//!
//! - `GET /integrations`: every integration, with its source and a short status.
//! - `POST /integrations` with `{"name": ..., <spec>}`: creates and starts one (`201`).
//! - `GET /integrations/{name}`: one.
//! - `PUT /integrations/{name}` with a spec: changes it; only it re-starts (`200`).
//! - `GET /integrations/{name}/users`: the "Teams Presence users" list, paged and searchable,
//!   with the counts by outcome.
//! - `POST /integrations/{name}/users/{username}/device-code`: starts the device code sign-in
//!   of an integration user who must use MFA (`202` with the code to enter and where);
//!   `GET` the same path: `pending`, `signed-in` or `failed` with Entra's code.
//! - `POST /integrations/{name}/policy/dry-run` with a policy (the `policy` of the spec):
//!   what it would do to the users now in a call (`{"changes": [{"user_id",
//!   "microsoft_user_id", "now", "after", "reason"}]}`), without doing it.
//! - `DELETE /integrations/{name}`: retires it (users withdrawn, sessions cleared,
//!   subscriptions deleted at Microsoft), then removes it and its state (`200` with what was
//!   done).
//!
//! The spec is [`IntegrationSpec`]'s JSON. Secrets are write-only: an answer shows whether
//! each is set (`"set"` / `"not set"`), never its value, and a change that leaves one out
//! keeps it. A refused body gets `400` (not JSON of that shape) or `422` naming the field;
//! nothing changes then.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::config::{IntegrationConfig, IntegrationSpec, check_name};
use crate::registry::{Entry, RegistryError};
use crate::web::{AppState, read_body};

/// The largest integration body.
pub const MAX_SPEC_BODY: usize = 1 << 20;
/// How long a listing waits for each integration's status.
pub const LIST_STATUS_WITHIN: Duration = Duration::from_secs(2);

/// The integration routes, for [`crate::Host::admin_router`].
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/integrations", get(list).post(create))
        .route("/integrations/{name}", get(show).put(update).delete(delete))
        .route("/integrations/{name}/users", get(users))
        .route("/integrations/{name}/policy/dry-run", axum::routing::post(dry_run))
        .route("/integrations/{name}/users/{username}/device-code", get(sign_in_state).post(start_sign_in))
}

fn set(v: &str) -> &'static str {
    if v.is_empty() { "not set" } else { "set" }
}

/// An integration as the API shows it: no secret, only whether each is set.
pub(crate) fn view(c: &IntegrationConfig, source: crate::registry::Source) -> serde_json::Value {
    json!({
        "name": c.name,
        "display_name": c.display_name.as_deref().unwrap_or(&c.name),
        "manual_client_setup": c.manual_client_setup,
        "source": source,
        "tenant_id": c.tenant_id,
        "client_id": c.client_id,
        "client_secret": set(c.client_secret.expose()),
        "client_secret_expires": c.client_secret_expires_ms.map(crate::status::date_of),
        "users": c.users.iter().map(|u| json!({"username": u.username, "password": set(u.password.expose())})).collect::<Vec<_>>(),
        "push_line_status": c.push_line_status,
        "min_call_length_ms": c.min_call_length_ms,
        "reconcile_interval_s": c.reconcile_interval_s,
        "directory_delta_interval_s": c.directory_delta_interval_s,
        "match_order": c.match_order,
        "overrides": c.overrides.iter().map(|(s, m)| json!({"switchboard_user": s, "microsoft_user": m})).collect::<Vec<_>>(),
        "policy": c.policy,
    })
}

/// What a proposed policy would do to the users now in a call, asked of the host that runs
/// the integration.
async fn dry_run(State(st): State<AppState>, Path(name): Path<String>, body: Body) -> Response {
    let bytes = match read_body(body, MAX_SPEC_BODY, crate::web::BODY_READ_TIMEOUT).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let policy: crate::policy::PolicyConfig = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({ "error": format!("the body must be a policy as JSON (the \"policy\" of GET /integrations/{{name}}): {e}"), "field": null })),
            )
                .into_response();
        }
    };
    let wit = match policy.to_wit() {
        Ok(w) => w,
        Err((field, reason)) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(json!({ "error": format!("{field}: {reason}"), "field": field })),
            )
                .into_response();
        }
    };
    if st.registry.runs_elsewhere(&name) {
        let path = format!("/integrations/{name}/policy/dry-run");
        let body = serde_json::to_value(&policy).unwrap_or_default();
        let (status, answer) = st.registry.ask_owner(&name, "POST", &path, Some(body)).await;
        return (status, axum::Json(answer)).into_response();
    }
    let Some(h) = st.registry.get(&name) else { return refused(RegistryError::NotFound(name)) };
    match h.dry_run(wit).await {
        Ok(Some(Ok(changes))) => axum::Json(json!({ "changes": changes })).into_response(),
        Ok(Some(Err(reason))) => {
            (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(json!({ "error": reason, "field": "policy" })))
                .into_response()
        }
        Ok(None) => (
            StatusCode::NOT_IMPLEMENTED,
            axum::Json(json!({
                "error": "this integration's plugin has no sync policy (it was built against WIT 3.4 or earlier)",
                "field": null,
            })),
        )
            .into_response(),
        Err(crate::error::Stopping) => (StatusCode::SERVICE_UNAVAILABLE, "integration is stopping").into_response(),
    }
}

/// The short status of a listing: state, code, hint, users (`null` fields when it did not
/// answer in time).
async fn brief(st: &AppState, name: &str) -> serde_json::Value {
    if st.registry.runs_elsewhere(name) {
        return brief_elsewhere(st, name).await;
    }
    let Some(h) = st.registry.get(name) else { return json!({ "state": "stopped" }) };
    match tokio::time::timeout(LIST_STATUS_WITHIN, h.status()).await {
        Ok(Ok(s)) => json!({ "state": s.state, "code": s.code, "hint": s.hint, "users": s.users }),
        _ => json!({ "state": null }),
    }
}

/// The short status of an integration another host runs, asked of that host.
async fn brief_elsewhere(st: &AppState, name: &str) -> serde_json::Value {
    let path = format!("/status/{name}");
    match tokio::time::timeout(LIST_STATUS_WITHIN, st.registry.ask_owner(name, "GET", &path, None)).await {
        Ok((StatusCode::OK, s)) => {
            json!({ "state": s["state"], "code": s["code"], "hint": s["hint"], "users": s["users"] })
        }
        _ => json!({ "state": null }),
    }
}

async fn with_status(st: &AppState, e: &Entry) -> serde_json::Value {
    let mut v = view(&e.config, e.source);
    v["status"] = brief(st, &e.config.name).await;
    v
}

async fn list(State(st): State<AppState>) -> Response {
    let mut all = Vec::new();
    for e in st.registry.entries() {
        all.push(with_status(&st, &e).await);
    }
    axum::Json(json!({ "integrations": all })).into_response()
}

async fn show(State(st): State<AppState>, Path(name): Path<String>) -> Response {
    match st.registry.entry(&name) {
        Some(e) => {
            let mut v = with_status(&st, &e).await;
            if let Some(h) = st.registry.get(&name)
                && let Ok(Ok(Some(c))) = tokio::time::timeout(LIST_STATUS_WITHIN, h.mapping_counts()).await
            {
                v["mapping"] = json!(c);
            }
            axum::Json(v).into_response()
        }
        None => refused(RegistryError::NotFound(name)),
    }
}

/// The "Teams Presence users" list: `?search=&filter=all|unmatched|uncovered|conflicts&offset=&limit=`
/// (limit 1 to 500, default 50) answers `{"total", "rows": [...], "counts": {...}}`.
async fn users(
    State(st): State<AppState>,
    Path(name): Path<String>,
    q: Result<axum::extract::Query<crate::status::UsersQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(h) = st.registry.get(&name) else { return refused(RegistryError::NotFound(name)) };
    let q = match q {
        Ok(q) => q.0,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": e.body_text(), "field": null })))
                .into_response();
        }
    };
    if q.limit == 0 || q.limit > 500 {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": "limit must be 1 to 500", "field": "limit" })))
            .into_response();
    }
    match (h.users_page(q).await, h.mapping_counts().await) {
        (Ok(Some(page)), Ok(Some(counts))) => {
            axum::Json(json!({ "total": page.total, "rows": page.rows, "counts": counts })).into_response()
        }
        (Ok(None), _) | (_, Ok(None)) => (
            StatusCode::NOT_IMPLEMENTED,
            axum::Json(json!({
                "error": "this integration's plugin has no users list (it was built against WIT 3.2 or earlier)",
                "field": null,
            })),
        )
            .into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "integration is stopping").into_response(),
    }
}

fn refused(e: RegistryError) -> Response {
    let code = match &e {
        RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
        RegistryError::Exists(_) | RegistryError::Busy(_) => StatusCode::CONFLICT,
        RegistryError::Invalid(_) | RegistryError::Start(..) => StatusCode::UNPROCESSABLE_ENTITY,
        RegistryError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let field = match &e {
        RegistryError::Invalid(c) => Some(c.field.clone()),
        _ => None,
    };
    (code, axum::Json(json!({ "error": e.to_string(), "field": field }))).into_response()
}

fn unreadable(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({
            "error": format!("the body must be an integration as JSON (see GET /integrations for the shape): {e}"),
            "field": null,
        })),
    )
        .into_response()
}

/// The spec in `body`, and for a create its `name`.
async fn spec_of(body: Body, with_name: bool) -> Result<(Option<String>, IntegrationSpec), Response> {
    let bytes = read_body(body, MAX_SPEC_BODY, crate::web::BODY_READ_TIMEOUT).await?;
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).map_err(unreadable)?;
    let name = if with_name {
        let Some(obj) = v.as_object_mut() else { return Err(unreadable("not a JSON object")) };
        match obj.remove("name") {
            Some(serde_json::Value::String(n)) => Some(n),
            _ => {
                return Err(refused(RegistryError::Invalid(crate::config::ConfigError {
                    file: "request body".into(),
                    field: "name".into(),
                    reason: "required: 1-64 characters of a-z, 0-9 and '-'".into(),
                })));
            }
        }
    } else {
        None
    };
    let spec = serde_json::from_value::<IntegrationSpec>(v).map_err(unreadable)?;
    Ok((name, spec))
}

async fn create(State(st): State<AppState>, body: Body) -> Response {
    let (name, spec) = match spec_of(body, true).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let name = name.expect("asked for");
    if let Err(reason) = check_name(&name) {
        return refused(RegistryError::Invalid(crate::config::ConfigError {
            file: "request body".into(),
            field: "name".into(),
            reason,
        }));
    }
    let config = match spec.into_config(&name, None, st.registry.platform_client_id()) {
        Ok(c) => c,
        Err(e) => return refused(e.into()),
    };
    match st.registry.create(config).await {
        Ok(()) => {
            let e = st.registry.entry(&name).expect("created");
            (StatusCode::CREATED, axum::Json(with_status(&st, &e).await)).into_response()
        }
        Err(e) => refused(e),
    }
}

async fn update(State(st): State<AppState>, Path(name): Path<String>, body: Body) -> Response {
    let Some(current) = st.registry.entry(&name) else { return refused(RegistryError::NotFound(name)) };
    let (_, spec) = match spec_of(body, false).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let config = match spec.into_config(&name, Some(&current.config), st.registry.platform_client_id()) {
        Ok(c) => c,
        Err(e) => return refused(e.into()),
    };
    match st.registry.update(config).await {
        Ok(()) => {
            let e = st.registry.entry(&name).expect("updated");
            axum::Json(with_status(&st, &e).await).into_response()
        }
        Err(e) => refused(e),
    }
}

async fn delete(State(st): State<AppState>, Path(name): Path<String>) -> Response {
    match st.registry.delete(&name).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => refused(e),
    }
}

async fn start_sign_in(State(st): State<AppState>, Path((name, username)): Path<(String, String)>) -> Response {
    match st.sign_ins.start(&st.registry, &name, &username).await {
        Ok(s) => (StatusCode::ACCEPTED, axum::Json(s)).into_response(),
        Err(e) => refused(e),
    }
}

async fn sign_in_state(State(st): State<AppState>, Path((name, username)): Path<(String, String)>) -> Response {
    match st.sign_ins.get(&name, &username) {
        Some(s) => axum::Json(s).into_response(),
        None => refused(RegistryError::NotFound(format!("{name}/{username}: no device code sign-in was started"))),
    }
}
