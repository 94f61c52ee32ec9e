//! The simulator's HTTP routes, served beside the host's (on its admin listener):
//! - `GET /switchboard/{integration}/users[/{id}]`: the users and what the console shows;
//! - `PUT /switchboard/{integration}/users/{id}` `{"name", "emails", "line_number", "active"}`:
//!   adds the user (`201`) or changes it (`200`);
//! - `DELETE /switchboard/{integration}/users/{id}`: removes the user (`204`, or `404`);
//! - `POST /switchboard/{integration}/users/changes` `{"upsert": [user...], "remove": [id...]}`:
//!   many changes at once, all or nothing; answers what changed;
//! - `POST /switchboard/{integration}/users/{id}/line-events` `{"state": "connected"}`: a line
//!   event, recorded and handed to the integration;
//! - `POST /switchboard/{integration}/users/{id}/absence` `{"message": "At lunch", "until_ms":
//!   1764331200000}` (an empty message ends it): an absence, recorded and handed to the
//!   integration, which shows it as the user's Teams status message.
//!
//! Every change moves the directory's change counter, which the plugin reads each tick. Bad
//! input is answered `400` (unreadable JSON) or `422` (a bad user) naming the problem, and
//! changes nothing.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use presence_host::switchboard::{LineEvent, line_state};
use presence_host::{LineEventError, Registry};
use serde_json::json;

use crate::{Switchboards, User};

/// Largest body of a change (about 50,000 users).
const MAX_CHANGE_BODY: usize = 16 << 20;

#[derive(Clone)]
struct Sims {
    switchboards: Arc<Switchboards>,
    integrations: Arc<Registry>,
}

/// The routes of `switchboards` (by integration name), handing line events to the
/// integrations of `integrations`.
pub fn routes(switchboards: Arc<Switchboards>, integrations: Arc<Registry>) -> Router {
    Router::new()
        .route("/switchboard/{name}/users", get(users))
        .route("/switchboard/{name}/users/changes", post(changes).layer(DefaultBodyLimit::max(MAX_CHANGE_BODY)))
        .route("/switchboard/{name}/users/{id}", get(user).put(put_user).delete(delete_user))
        .route("/switchboard/{name}/users/{id}/line-events", post(line_event))
        .route("/switchboard/{name}/users/{id}/absence", post(absence))
        .with_state(Sims { switchboards, integrations })
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
            let note = sb.note(&u.id);
            json!({ "user": u, "teams_presence": p, "teams_note": note })
        })
        .collect();
    axum::Json(json!({ "revision": sb.revision(), "csv_error": sb.last_csv_error(), "users": users })).into_response()
}

fn refused(status: StatusCode, why: String) -> Response {
    (status, axum::Json(json!({ "error": why }))).into_response()
}

/// A user as `PUT` takes it: the id is the path's.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    emails: Vec<String>,
    #[serde(default)]
    line_number: Option<String>,
    #[serde(default = "yes")]
    active: bool,
}

fn yes() -> bool {
    true
}

async fn put_user(
    State(st): State<Sims>,
    Path((name, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Some(sb) = st.switchboards.get(&name) else { return not_found("integration") };
    let b = match serde_json::from_slice::<UserBody>(&body) {
        Ok(b) => b,
        Err(e) => {
            return refused(
                StatusCode::BAD_REQUEST,
                format!("body must be {{\"name\", \"emails\": [..], \"line_number\", \"active\"}}: {e}"),
            );
        }
    };
    if b.id.as_ref().is_some_and(|b| *b != id) {
        return refused(StatusCode::UNPROCESSABLE_ENTITY, format!("the body's id is not the path's ('{id}')"));
    }
    let user = User { id, name: b.name, emails: b.emails, line_number: b.line_number, active: b.active };
    match sb.change(vec![user], &[]) {
        Ok(s) => {
            let status = if s.added > 0 { StatusCode::CREATED } else { StatusCode::OK };
            (status, axum::Json(json!({ "summary": s, "revision": sb.revision() }))).into_response()
        }
        Err(why) => refused(StatusCode::UNPROCESSABLE_ENTITY, why),
    }
}

async fn delete_user(State(st): State<Sims>, Path((name, id)): Path<(String, String)>) -> Response {
    let Some(sb) = st.switchboards.get(&name) else { return not_found("integration") };
    match sb.change(vec![], std::slice::from_ref(&id)) {
        Ok(s) if s.removed == 1 => StatusCode::NO_CONTENT.into_response(),
        Ok(_) => not_found("user"),
        Err(why) => refused(StatusCode::UNPROCESSABLE_ENTITY, why),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesBody {
    #[serde(default)]
    upsert: Vec<User>,
    #[serde(default)]
    remove: Vec<String>,
}

async fn changes(State(st): State<Sims>, Path(name): Path<String>, body: axum::body::Bytes) -> Response {
    let Some(sb) = st.switchboards.get(&name) else { return not_found("integration") };
    let b = match serde_json::from_slice::<ChangesBody>(&body) {
        Ok(b) => b,
        Err(e) => {
            return refused(
                StatusCode::BAD_REQUEST,
                format!(
                    "body must be {{\"upsert\": [{{\"id\", \"name\", \"emails\", \"line_number\", \"active\"}}], \"remove\": [id]}}: {e}"
                ),
            );
        }
    };
    // Removing a user who is not there changes nothing (a retried request stays harmless);
    // the answer names them.
    let not_found: Vec<&String> = b.remove.iter().filter(|id| !sb.has_user(id)).collect();
    match sb.change(b.upsert, &b.remove) {
        Ok(s) => axum::Json(json!({ "summary": s, "revision": sb.revision(), "not_found": not_found })).into_response(),
        Err(why) => refused(StatusCode::UNPROCESSABLE_ENTITY, why),
    }
}

async fn user(State(st): State<Sims>, Path((name, id)): Path<(String, String)>) -> Response {
    let Some(sb) = st.switchboards.get(&name) else { return not_found("integration") };
    match sb.user(&id) {
        Some(u) => axum::Json(json!({ "user": u, "teams_presence": sb.shown(&id) })).into_response(),
        None => not_found("user"),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AbsenceBody {
    message: String,
    #[serde(default)]
    until_ms: Option<u64>,
}

async fn absence(
    State(st): State<Sims>,
    Path((name, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let (Some(sb), Some(h)) = (st.switchboards.get(&name), st.integrations.get(&name)) else {
        return not_found("integration");
    };
    let b = match serde_json::from_slice::<AbsenceBody>(&body) {
        Ok(b) => b,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("body must be {{\"message\": \"...\", \"until_ms\": ms}}: {e}"))
                .into_response();
        }
    };
    if !sb.has_user(&id) {
        return not_found("user");
    }
    let message = b.message.trim().to_string();
    let ev = presence_host::switchboard::AbsenceEvent {
        user_id: id.clone(),
        message: message.clone(),
        until_ms: b.until_ms,
    };
    match h.absence(ev).await {
        Ok(()) => {
            sb.set_absence(&id, (!message.is_empty()).then_some((message, b.until_ms)));
            StatusCode::ACCEPTED.into_response()
        }
        Err(presence_host::error::AbsenceError::Stopping) => {
            (StatusCode::SERVICE_UNAVAILABLE, "integration is stopping").into_response()
        }
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).into_response(),
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
