//! Several hosts: an admin call or a line event for an integration another host runs reaches
//! its owner the way webhooks do. The host that took the request writes it (sealed) to the
//! shared database and notifies `presence_call`; the owner, woken by the notification (or at
//! its next round), runs it on its own admin routes and writes the answer (sealed), and
//! notifies `presence_answer`; the first host answers its client with it. A call the owner
//! does not answer within [`CALL_WITHIN`] gets 504 (the integration may be moving to another
//! host: retry).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tower::ServiceExt;

use super::Registry;
use crate::lease::{self, Leases};

/// How long a host waits for the owner's answer (an owner that is starting, after a
/// failover, answers once it runs).
pub const CALL_WITHIN: Duration = Duration::from_secs(30);
/// The largest request or answer body carried between hosts.
pub const MAX_CALL_BODY: usize = 4 << 20;
/// How often a waiting host looks for the answer besides the notification.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// What a host keeps for the calls between hosts.
#[derive(Default)]
pub(crate) struct Calls {
    /// The admin routes that answer calls from other hosts (no token check: the host that
    /// took the request checked it; no forwarding).
    router: OnceLock<axum::Router>,
    /// Calls this host waits for, by id.
    waiting: Mutex<HashMap<i64, Arc<Notify>>>,
}

#[derive(Serialize, Deserialize)]
struct WireRequest {
    method: String,
    uri: String,
    content_type: Option<String>,
    body: String,
}

#[derive(Serialize, Deserialize)]
struct WireAnswer {
    status: u16,
    content_type: Option<String>,
    retry_after: Option<String>,
    body: String,
}

fn place(integration: &str) -> String {
    format!("call/{integration}")
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_default()
}

fn answer(status: StatusCode, why: &str) -> Response {
    (status, [(header::RETRY_AFTER, "2")], why.to_string()).into_response()
}

/// The integration an admin path is about, when it must run on the integration's owner:
/// `/status/{name}`, `/integrations/{name}/...` below the integration itself (its record is
/// shared: `GET`/`PUT`/`DELETE /integrations/{name}` are answered by any host), and the
/// switchboard's routes `/switchboard/{name}/...`.
pub(crate) fn owner_path(path: &str) -> Option<&str> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["status", name] => Some(name),
        ["integrations", name, _, ..] => Some(name),
        ["switchboard", name, ..] => Some(name),
        _ => None,
    }
}

impl Registry {
    /// The admin routes that answer the calls other hosts forward (set once, when the admin
    /// router is built).
    pub(crate) fn set_call_router(&self, router: axum::Router) {
        let _ = self.calls.router.set(router);
    }

    /// Runs a request (its head, and its body, read by the caller: at most [`MAX_CALL_BODY`])
    /// for integration `name`, which runs on another host, on its owner.
    pub(crate) async fn call_owner(&self, name: &str, parts: axum::http::request::Parts, body: &[u8]) -> Response {
        let Some(leases) = self.launch.leases.clone() else {
            return answer(StatusCode::NOT_FOUND, "no such integration");
        };
        let wire = WireRequest {
            method: parts.method.to_string(),
            uri: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_else(|| parts.uri.path().to_string()),
            content_type: parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string),
            body: b64(body),
        };
        let sealed = self.launch.host.kek.seal(&place(name), &serde_json::to_vec(&wire).expect("serializable"));
        let (n, me) = (name.to_string(), leases.me.clone());
        let id: i64 = match leases
            .db(move |pool| {
                Box::pin(async move {
                    let row = pool
                        .get()
                        .await?
                        .query_one(
                            "INSERT INTO host_call (integration, caller, request) VALUES ($1, $2, $3) RETURNING id",
                            &[&n, &me, &sealed],
                        )
                        .await?;
                    Ok(row.get(0))
                })
            })
            .await
        {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(integration = %name, "could not pass a call to the host that runs it: {e:#}");
                return answer(StatusCode::SERVICE_UNAVAILABLE, "the database is unavailable; retry later");
            }
        };
        let woken = Arc::new(Notify::new());
        self.calls.waiting.lock().unwrap().insert(id, woken.clone());
        let _ = leases.notify(lease::CALL_CHANNEL, name).await;
        let end = Instant::now() + CALL_WITHIN;
        let got = loop {
            match take_answer(&leases, id).await {
                Ok(Some(a)) => break Some(a),
                Ok(None) => {}
                Err(e) => tracing::warn!(integration = %name, "could not read a call's answer: {e:#}"),
            }
            if Instant::now() >= end {
                break None;
            }
            let _ = tokio::time::timeout(POLL_EVERY, woken.notified()).await;
        };
        self.calls.waiting.lock().unwrap().remove(&id);
        let Some(sealed) = got else {
            let _ = leases
                .db(move |pool| {
                    Box::pin(async move {
                        pool.get().await?.execute("DELETE FROM host_call WHERE id = $1", &[&id]).await?;
                        Ok(())
                    })
                })
                .await;
            return answer(
                StatusCode::GATEWAY_TIMEOUT,
                "the host that runs this integration did not answer in time (it may be moving to another host); retry",
            );
        };
        let Ok(plain) = self.launch.host.kek.open(&place(name), &sealed) else {
            return answer(StatusCode::BAD_GATEWAY, "the answer of the host that runs it does not open (another KEK?)");
        };
        let Ok(a) = serde_json::from_slice::<WireAnswer>(&plain) else {
            return answer(StatusCode::BAD_GATEWAY, "the answer of the host that runs it is damaged");
        };
        let mut r = Response::new(Body::from(unb64(&a.body)));
        *r.status_mut() = StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_GATEWAY);
        for (h, v) in [(header::CONTENT_TYPE, a.content_type), (header::RETRY_AFTER, a.retry_after)] {
            if let Some(v) = v.and_then(|v| HeaderValue::from_str(&v).ok()) {
                r.headers_mut().insert(h, v);
            }
        }
        r
    }

    /// Runs `method path` (with a JSON `body`) for `name` on the host that runs it, and
    /// answers its status and JSON body (`Null` when it is not JSON).
    pub(crate) async fn ask_owner(
        &self,
        name: &str,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = Request::builder().method(method).uri(path);
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (parts, _) = req.body(()).expect("a request").into_parts();
        let r = self.call_owner(name, parts, body.as_bytes()).await;
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), MAX_CALL_BODY).await.unwrap_or_default();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    /// An answer arrived (`<caller>/<id>`): wakes the call waiting for it, if this host's.
    pub(super) fn answered(&self, payload: &str) {
        let Some(leases) = &self.launch.leases else { return };
        if let Some((caller, id)) = payload.rsplit_once('/')
            && caller == leases.me
            && let Ok(id) = id.parse::<i64>()
            && let Some(n) = self.calls.waiting.lock().unwrap().get(&id)
        {
            n.notify_one();
        }
    }

    /// Answers the calls waiting for `names` (integrations running here), and drops calls
    /// nobody waits for any more.
    pub(super) async fn answer_calls(self: &Arc<Self>, leases: &Arc<Leases>, names: Vec<String>) {
        if names.is_empty() {
            return;
        }
        let me = leases.me.clone();
        let (within, forgotten) = (CALL_WITHIN.as_secs_f64(), 2.0 * CALL_WITHIN.as_secs_f64());
        let calls: Vec<(i64, String, String, Vec<u8>)> = match leases
            .db(move |pool| {
                Box::pin(async move {
                    let c = pool.get().await?;
                    c.execute(
                        "DELETE FROM host_call WHERE created_at < now() - make_interval(secs => $1)",
                        &[&forgotten],
                    )
                    .await?;
                    let rows = c
                        .query(
                            "UPDATE host_call SET taken_by = $1 WHERE id IN (
                                 SELECT id FROM host_call
                                 WHERE answer IS NULL AND taken_by IS NULL AND integration = ANY($2)
                                   AND created_at > now() - make_interval(secs => $3)
                                 ORDER BY id FOR UPDATE SKIP LOCKED)
                             RETURNING id, integration, caller, request",
                            &[&me, &names, &within],
                        )
                        .await?;
                    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect())
                })
            })
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("could not read the calls for this host: {e:#}");
                return;
            }
        };
        for (id, name, caller, sealed) in calls {
            let (me, leases) = (self.clone(), leases.clone());
            tokio::spawn(async move {
                let a = me.run_call(&name, &sealed).await;
                let sealed = me.launch.host.kek.seal(&place(&name), &serde_json::to_vec(&a).expect("serializable"));
                let stored = leases
                    .db(move |pool| {
                        Box::pin(async move {
                            pool.get()
                                .await?
                                .execute("UPDATE host_call SET answer = $2 WHERE id = $1", &[&id, &sealed])
                                .await?;
                            Ok(())
                        })
                    })
                    .await;
                match stored {
                    Ok(()) => {
                        let _ = leases.notify(lease::ANSWER_CHANNEL, &format!("{caller}/{id}")).await;
                    }
                    Err(e) => tracing::warn!(integration = %name, "could not answer a call: {e:#}"),
                }
            });
        }
    }

    /// Runs a call on this host's admin routes.
    async fn run_call(&self, name: &str, sealed: &[u8]) -> WireAnswer {
        let fail = |status: StatusCode, why: &str| WireAnswer {
            status: status.as_u16(),
            content_type: Some("text/plain; charset=utf-8".into()),
            retry_after: Some("2".into()),
            body: b64(why.as_bytes()),
        };
        let Ok(plain) = self.launch.host.kek.open(&place(name), sealed) else {
            return fail(StatusCode::BAD_GATEWAY, "the call does not open here (another KEK?)");
        };
        let Ok(w) = serde_json::from_slice::<WireRequest>(&plain) else {
            return fail(StatusCode::BAD_GATEWAY, "the call is damaged");
        };
        let (Some(router), true) = (self.calls.router.get(), self.get(name).is_some()) else {
            return fail(StatusCode::SERVICE_UNAVAILABLE, "the integration is moving to another host; retry");
        };
        let mut req = Request::builder().method(w.method.as_str()).uri(w.uri.as_str());
        if let Some(ct) = &w.content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let Ok(req) = req.body(Body::from(unb64(&w.body))) else {
            return fail(StatusCode::BAD_REQUEST, "the call is not a request");
        };
        let r = match router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let (parts, body) = r.into_parts();
        let body = axum::body::to_bytes(body, MAX_CALL_BODY).await.unwrap_or_default();
        let header = |h: header::HeaderName| parts.headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
        WireAnswer {
            status: parts.status.as_u16(),
            content_type: header(header::CONTENT_TYPE),
            retry_after: header(header::RETRY_AFTER),
            body: b64(&body),
        }
    }
}

/// The answer of call `id`, once there (the row goes with it).
async fn take_answer(leases: &Leases, id: i64) -> anyhow::Result<Option<Vec<u8>>> {
    leases
        .db(move |pool| {
            Box::pin(async move {
                let row = pool
                    .get()
                    .await?
                    .query_opt("DELETE FROM host_call WHERE id = $1 AND answer IS NOT NULL RETURNING answer", &[&id])
                    .await?;
                Ok(row.map(|r| r.get(0)))
            })
        })
        .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn calls_about_a_running_integration_go_to_its_owner() {
        use super::owner_path;
        assert_eq!(owner_path("/status/contoso"), Some("contoso"));
        assert_eq!(owner_path("/status"), None);
        assert_eq!(owner_path("/integrations/contoso/users"), Some("contoso"));
        assert_eq!(owner_path("/integrations/contoso/sync-now"), Some("contoso"));
        assert_eq!(owner_path("/integrations/contoso"), None, "the record is shared");
        assert_eq!(owner_path("/integrations"), None);
        assert_eq!(owner_path("/switchboard/contoso/users/sb-1/line-events"), Some("contoso"));
        assert_eq!(owner_path("/metrics"), None);
    }
}
