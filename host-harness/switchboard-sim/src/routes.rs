//! The simulator's HTTP routes, served beside the host's:
//! - `GET /switchboard/{integration}/users[/{id}]`: what the console shows;
//! - `POST /switchboard/{integration}/users/{id}/line-events` `{"state": "connected"}`: a line
//!   event, recorded and handed to the integration.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use presence_host::switchboard::{LineEvent, line_state};
use presence_host::{IntegrationHandle, LineEventError};
use serde_json::json;

use crate::Switchboard;

#[derive(Clone)]
struct Sims {
    switchboards: Arc<BTreeMap<String, Arc<Switchboard>>>,
    integrations: Arc<BTreeMap<String, IntegrationHandle>>,
}

/// The routes of `switchboards` (by integration name), handing line events to `integrations`.
pub fn routes(
    switchboards: BTreeMap<String, Arc<Switchboard>>,
    integrations: BTreeMap<String, IntegrationHandle>,
) -> Router {
    Router::new()
        .route("/switchboard/{name}/users", get(users))
        .route("/switchboard/{name}/users/{id}", get(user))
        .route("/switchboard/{name}/users/{id}/line-events", post(line_event))
        .with_state(Sims { switchboards: Arc::new(switchboards), integrations: Arc::new(integrations) })
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("no such {what}")).into_response()
}

async fn users(State(st): State<Sims>, Path(name): Path<String>) -> Response {
    let Some(sb) = st.switchboards.get(&name) else { return not_found("integration") };
    let shown = sb.all_shown();
    let users: Vec<_> = sb
        .users()
        .into_iter()
        .map(|u| {
            let p = shown.get(&u.id).cloned();
            json!({ "user": u, "teams_presence": p })
        })
        .collect();
    axum::Json(json!({ "users": users })).into_response()
}

async fn user(State(st): State<Sims>, Path((name, id)): Path<(String, String)>) -> Response {
    let Some(sb) = st.switchboards.get(&name) else { return not_found("integration") };
    match sb.user(&id) {
        Some(u) => axum::Json(json!({ "user": u, "teams_presence": sb.shown(&id) })).into_response(),
        None => not_found("user"),
    }
}

#[derive(serde::Deserialize)]
struct LineEventBody {
    state: String,
}

async fn line_event(
    State(st): State<Sims>,
    Path((name, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let (Some(sb), Some(h)) = (st.switchboards.get(&name), st.integrations.get(&name)) else {
        return not_found("integration");
    };
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
    if !sb.has_user(&id) {
        return not_found("user");
    }
    let at_ms = presence_host::clock::system_now_ms();
    sb.set_line(&id, &b.state, at_ms);
    match h.line_event(LineEvent { user_id: id, state, at_ms }).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(LineEventError::Stopping) => (StatusCode::SERVICE_UNAVAILABLE, "integration is stopping").into_response(),
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).into_response(),
    }
}
