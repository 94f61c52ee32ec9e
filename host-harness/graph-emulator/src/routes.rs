//! HTTP routes of the emulator: Entra's token endpoint, the Graph operations we call, and the
//! `/_emulator` control API.

// Handlers return an axum `Response` as their error (it is the answer to send); its size is
// not worth boxing here.
#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use base64::Engine as _;
use serde_json::{Value, json};

use super::model::{DeviceCode, DeviceCodeState, Grant, RefreshToken, TokenInfo};

/// The device code grant's `grant_type`.
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

fn grant_of(w: &super::World, access: &str) -> Grant {
    w.tokens[access].grant.clone()
}
use super::{Emulator, touch};
use crate::wire::{self, is_guid};

/// Largest `$top` Graph accepts on `/users`.
const MAX_PAGE: usize = 999;
const DEFAULT_PAGE: usize = 100;
const MAX_PRESENCE_IDS: usize = 650;
const MAX_SUBSCRIPTION_USERS: usize = 650;
const MAX_PRESENCE_SUBSCRIPTION_MS: u64 = 60 * 60 * 1000;
/// Marks the requests of one `$batch` inside the emulator (they were all sent at once).
const BATCH_HEADER: &str = "x-emulator-batch";

pub(super) fn router(emu: Emulator) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/{tenant}/v2.0/adminconsent", get(admin_consent))
        .route("/{tenant}/oauth2/v2.0/devicecode", post(device_code))
        .route("/common/.well-known/openid-configuration", get(openid_configuration))
        .route("/common/discovery/keys", get(signing_keys))
        .route("/v1.0/users", get(list_users))
        .route("/v1.0/users/delta", get(users_delta))
        .route("/v1.0/users/delta()", get(users_delta))
        .route("/v1.0/groups/{id}/transitiveMembers", get(transitive_members))
        .route("/v1.0/groups/{id}/transitiveMembers/{cast}", get(transitive_members_cast))
        .route("/v1.0/users/{id}/presence", get(get_presence))
        .route("/v1.0/communications/presences/{id}", get(get_presence))
        .route("/v1.0/communications/getPresencesByUserId", post(get_presences))
        .route("/v1.0/users/{id}/presence/setPresence", post(set_presence))
        .route("/v1.0/users/{id}/presence/clearPresence", post(clear_presence))
        .route("/v1.0/users/{id}/presence/setStatusMessage", post(set_status_message))
        .route("/v1.0/$batch", post(batch))
        .route("/v1.0/subscriptions", post(create_subscription).get(list_subscriptions))
        // No GET of one subscription: Graph has it, but the operations we were given
        // (the OpenAPI description of the operations the plugin calls) do not, so the
        // plugin must not need it.
        .route("/v1.0/subscriptions/{id}", patch(update_subscription).delete(delete_subscription))
        .route("/_emulator/tenants/{tenant}/users", get(control_users))
        .route("/_emulator/tenants/{tenant}/users/{id}/presence", post(control_presence))
        .route("/_emulator/tenants/{tenant}/users/{upn}/mfa", post(control_mfa))
        .route("/_emulator/tenants/{tenant}/groups/{id}", axum::routing::put(control_group))
        .route("/_emulator/subscriptions", get(control_subscriptions))
        .route("/_emulator/subscriptions/{id}", axum::routing::delete(control_delete_subscription))
        .route("/_emulator/faults", post(control_fault))
        .route("/_emulator/presence-limit", post(control_presence_limit))
        .route("/_emulator/stats", get(control_stats))
        .layer(middleware::from_fn_with_state(emu.clone(), count_and_inject))
        .layer(middleware::from_fn_with_state(emu.clone(), date_header))
        .with_state(emu)
}

/// Every answer carries `Date` by the emulator's clock, as Microsoft's carry theirs (the
/// server's own would show the machine's clock instead).
async fn date_header(State(emu): State<Emulator>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now(&emu));
    if let Ok(v) = httpdate::fmt_http_date(at).parse() {
        resp.headers_mut().insert(header::DATE, v);
    }
    resp
}

/// Counts requests by route and answers injected faults.
async fn count_and_inject(State(emu): State<Emulator>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().to_string();
    if !path.starts_with("/_emulator") {
        let route = route_name(&method, &path);
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let now = now(&emu);
        let fault = emu.with_world_no_expiry(|w| {
            *w.requests.entry(route.clone()).or_default() += 1;
            // Which service, tenant and app: Retry-After binds all their requests.
            let key = service_of(&path)
                .zip(bearer.as_ref().and_then(|b| w.tokens.get(b)))
                .map(|(s, t)| (s.to_string(), t.tenant.clone(), t.client_id.clone()));
            if let Some(k) = &key
                && w.fault_retry_until.get(k).is_some_and(|&until| now < until)
            {
                w.early_requests += 1;
                let line = format!("{route} came {} ms before Retry-After allowed", w.fault_retry_until[k] - now);
                w.early_log.push(line);
            }
            let f = w.take_fault(&method, &path);
            if let (Some(k), Some(f)) = (key, &f)
                && let Some(s) = f.retry_after
            {
                let until = w.fault_retry_until.entry(k).or_default();
                *until = (*until).max(now + s * 1000);
            }
            f
        });
        if let Some(f) = fault {
            let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut resp = if path.contains("/oauth2/") {
                token_error(status, "temporarily_unavailable", 50196, "Injected fault.")
            } else {
                graph_error(status, fault_code(f.status), "Injected fault.")
            };
            if let Some(s) = f.retry_after {
                resp.headers_mut().insert(header::RETRY_AFTER, s.to_string().parse().unwrap());
            }
            return resp;
        }
    }
    next.run(req).await
}

/// The Graph service a path belongs to, for `Retry-After` bookkeeping.
fn service_of(path: &str) -> Option<&'static str> {
    if path.starts_with("/v1.0/subscriptions") {
        Some("subscriptions")
    } else if path.starts_with("/v1.0/communications") || path.contains("/presence") || path == "/v1.0/$batch" {
        Some("presence")
    } else if path.starts_with("/v1.0/users") {
        Some("directory")
    } else {
        None
    }
}

fn fault_code(status: u16) -> &'static str {
    match status {
        429 => "TooManyRequests",
        503 => "serviceNotAvailable",
        504 => "gatewayTimeout",
        401 => "InvalidAuthenticationToken",
        403 => "Authorization_RequestDenied",
        404 => "itemNotFound",
        _ => "generalException",
    }
}

fn route_name(method: &str, path: &str) -> String {
    let generic: Vec<&str> =
        path.split('/').map(|seg| if is_guid(seg) || seg.len() > 30 { "{id}" } else { seg }).collect();
    format!("{method} {}", generic.join("/"))
}

fn now(emu: &Emulator) -> u64 {
    emu.inner.clock.now_ms()
}

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "request-id": uuid::Uuid::new_v4().to_string(),
                "date": wire::graph_time(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64),
                "client-request-id": uuid::Uuid::new_v4().to_string(),
            }
        }
    });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn token_error(status: StatusCode, error: &str, code: u64, text: &str) -> Response {
    let trace = uuid::Uuid::new_v4().to_string();
    let corr = uuid::Uuid::new_v4().to_string();
    let ts = wire::graph_time(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64,
    );
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {text}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\nTimestamp: {ts}"),
        "error_codes": [code],
        "timestamp": ts,
        "trace_id": trace,
        "correlation_id": corr,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    (status, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], body.to_string()).into_response()
}

/// An error page of the sign-in service (what the browser shows when the request is not one
/// to redirect back: an unknown app, a redirect URI that is not registered).
fn consent_page_error(code: u64, text: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!("<!doctype html><title>Sign in</title><p>AADSTS{code}: {text}</p>"),
    )
        .into_response()
}

/// Admin consent, v2 (<https://learn.microsoft.com/en-us/entra/identity-platform/v2-admin-consent>):
/// `GET /{tenant}/v2.0/adminconsent?client_id&scope&redirect_uri&state`. The tenant's admin
/// accepts (the app's service principal is created with its permissions; redirect with
/// `admin_consent=True&tenant&scope&state`) or declines (`tenant.refuse_consent`: redirect with
/// `error=access_denied&error_description=AADSTS65004...&state`).
async fn admin_consent(State(emu): State<Emulator>, Path(tenant): Path<String>, RawQuery(q): RawQuery) -> Response {
    let q: std::collections::HashMap<String, String> =
        form_urlencoded::parse(q.unwrap_or_default().as_bytes()).into_owned().collect();
    let f = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let mut w = emu.inner.world.lock().unwrap();
    if matches!(tenant.as_str(), "common" | "organizations" | "consumers") {
        return consent_page_error(
            90130,
            "Admin consent needs the tenant: not 'common', 'organizations' or 'consumers'.",
        );
    }
    let Some(app) = w.platform_apps.get(f("client_id")).cloned() else {
        return consent_page_error(
            700016,
            &format!("Application with identifier '{}' was not found in the directory.", f("client_id")),
        );
    };
    if !app.redirect_uris.iter().any(|u| u == f("redirect_uri")) {
        return consent_page_error(
            50011,
            &format!(
                "The redirect URI '{}' specified in the request does not match the redirect URIs configured for the application '{}'.",
                f("redirect_uri"),
                app.client_id
            ),
        );
    }
    let back = |pairs: &[(&str, &str)]| {
        let mut u = url::Url::parse(f("redirect_uri")).expect("a registered URI");
        {
            let mut qp = u.query_pairs_mut();
            for (k, v) in pairs {
                qp.append_pair(k, v);
            }
            if !f("state").is_empty() {
                qp.append_pair("state", f("state"));
            }
        }
        (StatusCode::FOUND, [(header::LOCATION, u.to_string())]).into_response()
    };
    if f("scope") != "https://graph.microsoft.com/.default" {
        return back(&[
            ("error", "invalid_request"),
            ("error_description", "AADSTS70011: The provided value for the input parameter 'scope' is not valid."),
        ]);
    }
    let Some(tkey) = w.tenant_key(&tenant) else {
        return consent_page_error(90002, &format!("Tenant '{tenant}' not found."));
    };
    let t = w.tenants.get_mut(&tkey).unwrap();
    if t.refuse_consent {
        return back(&[
            ("error", "access_denied"),
            ("error_description", "AADSTS65004: User declined to consent to access the app."),
        ]);
    }
    t.apps.insert(
        app.client_id.clone(),
        super::model::App {
            client_id: app.client_id.clone(),
            secret: app.secret.clone(),
            secret_expired: false,
            app_roles: app.app_roles.clone(),
            delegated_consent: true,
        },
    );
    let tid = t.id.clone();
    back(&[("admin_consent", "True"), ("tenant", &tid), ("scope", "https://graph.microsoft.com/.default")])
}

/// Device authorization (<https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-device-code>):
/// `POST /{tenant}/oauth2/v2.0/devicecode` with `client_id` and `scope`; the user then signs in
/// elsewhere ([`Emulator::approve_device_code`]) while the client polls the token endpoint.
async fn device_code(State(emu): State<Emulator>, Path(tenant): Path<String>, body: Bytes) -> Response {
    let form: std::collections::HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let f = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let now = now(&emu);
    let mut w = emu.inner.world.lock().unwrap();
    let Some(tkey) = w.tenant_key(&tenant) else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    };
    if !w.tenants[&tkey].apps.contains_key(f("client_id")) {
        return token_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{}' was not found in the directory.", f("client_id")),
        );
    }
    if f("scope").trim().is_empty() {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain 'scope'.",
        );
    }
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw).expect("randomness");
    let device = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let user_code: String = raw.iter().take(8).map(|b| (b'A' + b % 26) as char).collect();
    let (expires_in, interval) = (900u64, 5u64);
    w.device_codes.insert(
        device.clone(),
        DeviceCode {
            tenant: tkey,
            client_id: f("client_id").to_string(),
            user_code: user_code.clone(),
            expires_at_ms: now + expires_in * 1000,
            interval_s: interval,
            last_poll_ms: None,
            slow_down_next: false,
            state: DeviceCodeState::Pending,
        },
    );
    let verification_uri = "https://microsoft.com/devicelogin";
    let body = json!({
        "device_code": device,
        "user_code": user_code,
        "verification_uri": verification_uri,
        "expires_in": expires_in,
        "interval": interval,
        "message": format!("To sign in, use a web browser to open the page {verification_uri} and enter the code {user_code} to authenticate."),
    });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], body.to_string()).into_response()
}

async fn token(State(emu): State<Emulator>, Path(tenant): Path<String>, body: Bytes) -> Response {
    let form: std::collections::HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let f = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let now = now(&emu);
    let mut w = emu.inner.world.lock().unwrap();
    let domain_like = tenant.contains('.') && tenant.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if !is_guid(&tenant) && !domain_like {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900023,
            &format!(
                "Specified tenant identifier '{tenant}' is neither a valid DNS name, nor a valid external domain."
            ),
        );
    }
    let Some(tkey) = w.tenant_key(&tenant) else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        );
    };
    let grant_type = f("grant_type");
    if !matches!(grant_type, "client_credentials" | "password" | "refresh_token" | DEVICE_CODE_GRANT) {
        return token_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    let t = w.tenants.get(&tkey).unwrap();
    let Some(app) = t.apps.get(f("client_id")).cloned() else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{}' was not found in the directory '{}'.", f("client_id"), t.id),
        );
    };
    if f("client_secret").is_empty() {
        return token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        );
    }
    if f("client_secret") != app.secret {
        return token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
        );
    }
    if app.secret_expired {
        return token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000222,
            "The provided client secret keys are expired.",
        );
    }
    let grant = if grant_type == DEVICE_CODE_GRANT {
        let code = f("device_code").to_string();
        let Some(dc) = w.device_codes.get_mut(&code).filter(|d| d.tenant == tkey && d.client_id == app.client_id)
        else {
            return token_error(
                StatusCode::BAD_REQUEST,
                "bad_verification_code",
                70000,
                "The device code is not known.",
            );
        };
        if now >= dc.expires_at_ms {
            return token_error(
                StatusCode::BAD_REQUEST,
                "expired_token",
                70020,
                "The provided device code has expired.",
            );
        }
        // RFC 8628 3.5: a client that polls sooner than the interval is told to slow down,
        // and the interval grows by 5 s.
        let early = dc.last_poll_ms.is_some_and(|t| now < t + dc.interval_s * 1000);
        dc.last_poll_ms = Some(now);
        if early || std::mem::take(&mut dc.slow_down_next) {
            dc.interval_s += 5;
            if early {
                w.device_code_early_polls += 1;
            }
            return token_error(StatusCode::BAD_REQUEST, "slow_down", 70016, "Polled faster than the interval allows.");
        }
        match dc.state.clone() {
            DeviceCodeState::Pending => {
                return token_error(
                    StatusCode::BAD_REQUEST,
                    "authorization_pending",
                    70016,
                    "The provided request has not yet been authorized by the user. The user must input their code.",
                );
            }
            DeviceCodeState::Declined => {
                w.device_codes.remove(&code);
                return token_error(
                    StatusCode::BAD_REQUEST,
                    "authorization_declined",
                    70000,
                    "The user declined the sign-in.",
                );
            }
            DeviceCodeState::Approved(user_id) => {
                w.device_codes.remove(&code);
                Grant::Delegated { user_id }
            }
        }
    } else if grant_type == "refresh_token" {
        // Each refresh token is used once: the answer carries its successor.
        let Some(rt) =
            w.refresh_tokens.remove(f("refresh_token")).filter(|r| r.tenant == tkey && r.client_id == app.client_id)
        else {
            return token_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                70008,
                "The provided authorization code or refresh token has expired or was already used.",
            );
        };
        Grant::Delegated { user_id: rt.user_id }
    } else if grant_type == "client_credentials" {
        if !f("scope").ends_with("/.default") {
            return token_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                1002012,
                "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
            );
        }
        Grant::App { roles: app.app_roles.clone() }
    } else {
        let scope = f("scope");
        if !(scope.contains("Presence.Read.All") || scope.contains("/.default")) {
            return token_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                70011,
                "The provided value for the input parameter 'scope' is not valid.",
            );
        }
        let username = f("username").to_string();
        let password = f("password").to_string();
        let t = w.tenants.get_mut(&tkey).unwrap();
        let Some(user) = t.user_by_upn(&username) else {
            return token_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                50034,
                "The user account does not exist in this directory.",
            );
        };
        if user.password.as_deref() != Some(password.as_str()) {
            return token_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                50126,
                "Error validating credentials due to invalid username or password.",
            );
        }
        if user.mfa_required {
            return token_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                50076,
                "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access the resource.",
            );
        }
        if !app.delegated_consent {
            return token_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                65001,
                "The user or administrator has not consented to use the application.",
            );
        }
        Grant::Delegated { user_id: user.id.clone() }
    };
    let t = w.tenants.get(&tkey).unwrap();
    let (lo, hi) = t.token_lifetime_s;
    let lifetime = lo + rand::random::<u64>() % (hi - lo + 1);
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw).expect("randomness");
    let access = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    w.tokens.insert(
        access.clone(),
        TokenInfo { tenant: tkey, client_id: app.client_id.clone(), grant, expires_at_ms: now + lifetime * 1000 },
    );
    let mut body =
        json!({ "token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": access });
    if grant_type != "client_credentials" {
        body["scope"] = json!("https://graph.microsoft.com/Presence.Read.All https://graph.microsoft.com/User.Read");
        if let Grant::Delegated { user_id } = &grant_of(&w, &access)
            && (grant_type != "password" || f("scope").contains("offline_access"))
        {
            let mut raw = [0u8; 32];
            aws_lc_rs::rand::fill(&mut raw).expect("randomness");
            let refresh = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
            let tenant = w.tokens[&access].tenant.clone();
            w.refresh_tokens.insert(
                refresh.clone(),
                RefreshToken { tenant, client_id: app.client_id.clone(), user_id: user_id.clone() },
            );
            body["refresh_token"] = json!(refresh);
        }
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], body.to_string()).into_response()
}

fn auth(emu: &Emulator, headers: &HeaderMap) -> Result<TokenInfo, Response> {
    let now = now(emu);
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| graph_error(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", "Access token is empty."))?;
    let w = emu.inner.world.lock().unwrap();
    match w.tokens.get(token) {
        Some(t) if t.expires_at_ms > now => Ok(t.clone()),
        Some(_) => Err(graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
        )),
        None => Err(graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "IDX14100: JWT is not well formed.",
        )),
    }
}

fn has_role(t: &TokenInfo, roles: &[&str]) -> bool {
    matches!(&t.grant, Grant::App { roles: r } if roles.iter().any(|x| r.contains(*x)))
}

fn denied() -> Response {
    graph_error(
        StatusCode::FORBIDDEN,
        "Authorization_RequestDenied",
        "Insufficient privileges to complete the operation.",
    )
}

/// A directory read: the caller's token (with a directory role) and the query parameters.
fn directory_read(
    emu: &Emulator,
    headers: &HeaderMap,
    q: Option<String>,
) -> Result<(TokenInfo, Vec<(String, String)>), Response> {
    let t = auth(emu, headers)?;
    if !has_role(&t, &["User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"]) {
        return Err(denied());
    }
    Ok((t, form_urlencoded::parse(q.unwrap_or_default().as_bytes()).into_owned().collect()))
}

/// A directory page's size (`$top`: 1 to 999, default 100) and where it starts (the offset a
/// `$skiptoken` of ours carries), or the error Graph answers.
fn page_window(p: &dyn Fn(&str) -> Option<String>) -> Result<(usize, usize), Response> {
    let top = match p("$top").map(|v| v.parse::<usize>()) {
        None => DEFAULT_PAGE,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => {
            return Err(graph_error(
                StatusCode::BAD_REQUEST,
                "Request_UnsupportedQuery",
                &format!(
                    "Invalid page size specified: '{}'. Must be between 1 and 999 inclusive.",
                    p("$top").unwrap_or_default()
                ),
            ));
        }
    };
    let offset = match p("$skiptoken") {
        None => 0,
        Some(tok) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&tok)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("offset:").and_then(|n| n.parse::<usize>().ok()))
            .ok_or_else(|| {
                graph_error(
                    StatusCode::BAD_REQUEST,
                    "Directory_ExpiredPageToken",
                    "The specified page token value has expired or is invalid.",
                )
            })?,
    };
    Ok((top, offset))
}

/// The query of the next page's `@odata.nextLink`: the first request's `$select`, `$top`, and
/// a `$skiptoken` for `offset`.
fn next_page_query(select: Option<String>, top: usize, offset: usize) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    if let Some(s) = select {
        ser.append_pair("$select", &s);
    }
    ser.append_pair("$top", &top.to_string());
    ser.append_pair("$skiptoken", &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("offset:{offset}")));
    ser.finish()
}

async fn list_users(State(emu): State<Emulator>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let (t, params) = match directory_read(&emu, &headers, q) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let p = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (top, offset) = match page_window(&p) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let select: Option<BTreeSet<String>> = p("$select").map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let w = emu.inner.world.lock().unwrap();
    let tenant = &w.tenants[&t.tenant];
    let page: Vec<Value> = tenant.users.iter().skip(offset).take(top).map(|u| user_json(u, select.as_ref())).collect();
    let mut body = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users",
        "value": page,
    });
    if offset + top < tenant.users.len() {
        let query = next_page_query(p("$select"), top, offset + top);
        body["@odata.nextLink"] = json!(format!("{}/v1.0/users?{query}", emu.inner.base_url.read().unwrap()));
    }
    json_response(StatusCode::OK, body)
}

/// `GET /groups/{id}/transitiveMembers`: every nested member, as directoryObjects with their
/// `@odata.type` (<https://learn.microsoft.com/en-us/graph/api/group-list-transitivemembers>).
async fn transitive_members(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    members_page(&emu, &headers, &id, false, q)
}

/// The OData cast `.../transitiveMembers/microsoft.graph.user` (the OpenAPI description
/// spells it `graph.user`): users only.
async fn transitive_members_cast(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    Path((id, cast)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    match cast.as_str() {
        "microsoft.graph.user" | "graph.user" => members_page(&emu, &headers, &id, true, q),
        "microsoft.graph.group" | "graph.group" | "microsoft.graph.device" | "microsoft.graph.orgContact" => {
            json_response(StatusCode::OK, json!({"value": []}))
        }
        _ => graph_error(
            StatusCode::BAD_REQUEST,
            "Request_UnsupportedQuery",
            &format!("'{cast}' is not a supported member type."),
        ),
    }
}

fn members_page(emu: &Emulator, headers: &HeaderMap, id: &str, users_only: bool, q: Option<String>) -> Response {
    let t = match auth(emu, headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if !has_role(
        &t,
        &[
            "GroupMember.Read.All",
            "Group.Read.All",
            "Group.ReadWrite.All",
            "Directory.Read.All",
            "Directory.ReadWrite.All",
        ],
    ) {
        return denied();
    }
    let params: Vec<(String, String)> = form_urlencoded::parse(q.unwrap_or_default().as_bytes()).into_owned().collect();
    let p = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (top, offset) = match page_window(&p) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let select: Option<BTreeSet<String>> = p("$select").map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let w = emu.inner.world.lock().unwrap();
    let tenant = &w.tenants[&t.tenant];
    let Some(all) = tenant.transitive_members(id) else {
        return graph_error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            &format!(
                "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
            ),
        );
    };
    let all: Vec<(String, bool)> = all.into_iter().filter(|(_, g)| !users_only || !g).collect();
    let page: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(top)
        .map(|(mid, is_group)| {
            if *is_group {
                json!({"@odata.type": "#microsoft.graph.group", "id": mid})
            } else {
                let u = &tenant.users[tenant.by_id[mid.as_str()]];
                let mut v = user_json(u, select.as_ref());
                v["@odata.type"] = json!("#microsoft.graph.user");
                v
            }
        })
        .collect();
    let mut body = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directoryObjects",
        "value": page,
    });
    if offset + top < all.len() {
        let query = next_page_query(p("$select"), top, offset + top);
        let cast = if users_only { "/microsoft.graph.user" } else { "" };
        body["@odata.nextLink"] =
            json!(format!("{}/v1.0/groups/{id}/transitiveMembers{cast}?{query}", emu.inner.base_url.read().unwrap()));
    }
    json_response(StatusCode::OK, body)
}

/// `PUT /_emulator/tenants/{tenant}/groups/{id}` with `{"members": [ids]}` (users or groups).
async fn control_group(
    State(emu): State<Emulator>,
    Path((tenant, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    #[derive(serde::Deserialize)]
    struct Body {
        members: Vec<String>,
    }
    let Ok(b) = serde_json::from_slice::<Body>(&body) else {
        return (StatusCode::BAD_REQUEST, "body must be {\"members\": [ids]}").into_response();
    };
    let mut w = emu.inner.world.lock().unwrap();
    let Some(key) = w.tenant_key(&tenant) else { return StatusCode::NOT_FOUND.into_response() };
    w.tenants.get_mut(&key).unwrap().set_group(&id, b.members);
    StatusCode::NO_CONTENT.into_response()
}

/// A user as `/users` and `/users/delta` return it: `$select`ed properties (and `id`), or the
/// documented default set.
fn user_json(u: &super::model::User, select: Option<&BTreeSet<String>>) -> Value {
    const DEFAULT: [&str; 11] = [
        "businessPhones",
        "displayName",
        "givenName",
        "jobTitle",
        "mail",
        "mobilePhone",
        "officeLocation",
        "preferredLanguage",
        "surname",
        "userPrincipalName",
        "id",
    ];
    let keep = |k: &str| {
        k == "id"
            || match select {
                Some(s) => s.contains(k),
                None => DEFAULT.contains(&k),
            }
    };
    // Only the properties kept are built (a directory page holds up to 999 users).
    let mut o = serde_json::Map::new();
    let mut put = |k: &str, v: &dyn Fn() -> Value| {
        if keep(k) {
            o.insert(k.to_string(), v());
        }
    };
    put("id", &|| json!(u.id));
    put("displayName", &|| json!(u.display_name));
    put("userPrincipalName", &|| json!(u.upn));
    put("mail", &|| json!(u.mail));
    put("proxyAddresses", &|| json!(u.proxy_addresses));
    put("businessPhones", &|| json!([]));
    for k in ["givenName", "surname", "jobTitle", "mobilePhone", "officeLocation", "preferredLanguage"] {
        put(k, &|| Value::Null);
    }
    Value::Object(o)
}

/// Users per `/users/delta` page.
const DELTA_PAGE: usize = 200;
/// Directory delta tokens last 7 days (<https://learn.microsoft.com/en-us/graph/delta-query-overview>).
const DELTA_TOKEN_LIFETIME_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// What a delta or skip token carries (opaque to clients).
#[derive(serde::Serialize, serde::Deserialize)]
struct DeltaState {
    /// Delta epoch of the tenant when issued.
    e: u64,
    /// Changes after this directory version (none: every user).
    v: Option<u64>,
    /// The round's upper version (becomes the next deltaLink's `v`).
    u: u64,
    /// Keyset cursor: ids after this one.
    a: Option<String>,
    /// `$select` of the first request.
    s: Option<String>,
    /// Issued at (ms).
    t: u64,
}

impl DeltaState {
    fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap())
    }
    fn decode(s: &str) -> Option<DeltaState> {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok()?;
        serde_json::from_slice(&b).ok()
    }
}

/// `GET /users/delta`: the first round returns every user (or nothing with
/// `$deltatoken=latest`), later rounds what changed since, as pages of `@odata.nextLink`
/// ending in an `@odata.deltaLink`. Removed users come as `@removed`. Tokens of an older delta
/// epoch get `410 Gone` (resync), tokens older than 7 days `syncStateNotFound`.
async fn users_delta(State(emu): State<Emulator>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let (t, params) = match directory_read(&emu, &headers, q) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let p = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if p("$top").is_some() || p("$orderby").is_some() || p("$expand").is_some() {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "Request_UnsupportedQuery",
            "$top, $orderby and $expand are not supported on users/delta.",
        );
    }
    let now = now(&emu);
    let base = emu.inner.base_url.read().unwrap().clone();
    let w = emu.inner.world.lock().unwrap();
    let tenant = &w.tenants[&t.tenant];
    let token = p("$deltatoken").map(|v| (true, v)).or_else(|| p("$skiptoken").map(|v| (false, v)));
    let st = match token {
        None => DeltaState { e: tenant.delta_epoch, v: None, u: tenant.dir_version, a: None, s: p("$select"), t: now },
        Some((true, latest)) if latest == "latest" => {
            let st = DeltaState {
                e: tenant.delta_epoch,
                v: Some(tenant.dir_version),
                u: tenant.dir_version,
                a: None,
                s: p("$select"),
                t: now,
            };
            let body = json!({
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users",
                "value": [],
                "@odata.deltaLink": format!("{base}/v1.0/users/delta?$deltatoken={}", st.encode()),
            });
            return json_response(StatusCode::OK, body);
        }
        Some((is_delta, tok)) => {
            let Some(st) = DeltaState::decode(&tok) else {
                return graph_error(StatusCode::BAD_REQUEST, "invalidRequest", "The delta or skip token is malformed.");
            };
            if st.e != tenant.delta_epoch {
                let mut r = graph_error(
                    StatusCode::GONE,
                    "resyncRequired",
                    "The delta state is gone; start over with a full synchronization.",
                );
                r.headers_mut().insert(header::LOCATION, format!("{base}/v1.0/users/delta").parse().unwrap());
                return r;
            }
            if now.saturating_sub(st.t) > DELTA_TOKEN_LIFETIME_MS {
                return graph_error(StatusCode::BAD_REQUEST, "syncStateNotFound", "The delta token has expired.");
            }
            if is_delta { DeltaState { e: st.e, v: st.v, u: tenant.dir_version, a: None, s: st.s, t: now } } else { st }
        }
    };
    let select: Option<BTreeSet<String>> = st.s.as_ref().map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let mut items: Vec<(String, Value)> = tenant
        .users
        .iter()
        .filter(|u| st.v.is_none_or(|v| u.dir_version > v))
        .map(|u| (u.id.clone(), user_json(u, select.as_ref())))
        .collect();
    if let Some(v) = st.v {
        items.extend(
            tenant
                .removed
                .iter()
                .filter(|(_, rv)| *rv > v)
                .map(|(id, _)| (id.clone(), json!({"id": id, "@removed": {"reason": "deleted"}}))),
        );
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let rest: Vec<(String, Value)> =
        items.into_iter().filter(|(id, _)| st.a.as_ref().is_none_or(|a| id > a)).take(DELTA_PAGE + 1).collect();
    let more = rest.len() > DELTA_PAGE;
    let page: Vec<(String, Value)> = rest.into_iter().take(DELTA_PAGE).collect();
    let mut body = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users",
        "value": page.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
    });
    if more {
        let next = DeltaState { a: page.last().map(|(id, _)| id.clone()), t: now, ..st };
        body["@odata.nextLink"] = json!(format!("{base}/v1.0/users/delta?$skiptoken={}", next.encode()));
    } else {
        let next = DeltaState { v: Some(st.u), a: None, t: now, ..st };
        body["@odata.deltaLink"] = json!(format!("{base}/v1.0/users/delta?$deltatoken={}", next.encode()));
    }
    json_response(StatusCode::OK, body)
}

/// The login service's OpenID configuration (the part relying parties read).
async fn openid_configuration(State(emu): State<Emulator>) -> Response {
    let base = emu.inner.base_url.read().unwrap().clone();
    json_response(
        StatusCode::OK,
        json!({
            "issuer": "https://sts.windows.net/{tenantid}/",
            "authorization_endpoint": format!("{base}/common/oauth2/authorize"),
            "token_endpoint": format!("{base}/common/oauth2/token"),
            "jwks_uri": format!("{base}/common/discovery/keys"),
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "subject_types_supported": ["pairwise"],
            "tenant_region_scope": null,
        }),
    )
}

/// The login service's published signing keys (JWKS).
async fn signing_keys(State(emu): State<Emulator>) -> Response {
    let keys = emu.inner.signer.lock().unwrap().jwks();
    json_response(StatusCode::OK, json!({ "keys": keys }))
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json; odata.metadata=minimal")], body.to_string()).into_response()
}

fn may_read_presence(t: &TokenInfo) -> bool {
    matches!(t.grant, Grant::Delegated { .. }) || has_role(t, &["Presence.Read.All", "Presence.ReadWrite.All"])
}

fn presence_json(u: &super::model::User, now: u64) -> Value {
    let (a, b) = u.aggregate(now);
    let (message, ooo) = u.note_json(now);
    json!({
        "id": u.id,
        "availability": a,
        "activity": b,
        "sequenceNumber": super::sequence_string(u.sequence),
        "statusMessage": message,
        "outOfOfficeSettings": ooo,
    })
}

/// Graph's presence throttling: at most N requests per window per app per tenant, then 429
/// with `Retry-After`. A request that comes sooner than a `Retry-After` allowed is counted.
fn presence_rate_limit(emu: &Emulator, t: &TokenInfo, headers: &HeaderMap) -> Option<Response> {
    let now = now(emu);
    let batch = headers.get(BATCH_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let mut w = emu.inner.world.lock().unwrap();
    let key = (t.tenant.clone(), t.client_id.clone());
    if w.retry_until.get(&key).is_some_and(|(until, b)| now < *until && (b.is_none() || *b != batch)) {
        w.early_requests += 1;
    }
    let (limit, window) = w.presence_limit;
    let calls = w.presence_calls.entry(key.clone()).or_default();
    while calls.front().is_some_and(|&t0| t0 + window <= now) {
        calls.pop_front();
    }
    if calls.len() >= limit {
        let wait_ms = calls.front().map_or(1000, |&t0| t0 + window - now);
        let secs = wait_ms.div_ceil(1000).max(1);
        w.retry_until.insert(key, (now + secs * 1000, batch));
        w.throttled += 1;
        let mut r = graph_error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", "Too many requests.");
        r.headers_mut().insert(header::RETRY_AFTER, secs.to_string().parse().unwrap());
        return Some(r);
    }
    calls.push_back(now);
    None
}

/// Parses an ISO-8601 duration of the form `PT#H#M#S` into milliseconds.
fn iso_duration_ms(s: &str) -> Option<u64> {
    let rest = s.strip_prefix("PT")?;
    let (mut total, mut num) = (0u64, String::new());
    for c in rest.chars() {
        match c {
            '0'..='9' => num.push(c),
            'H' | 'M' | 'S' => {
                let n: u64 = num.parse().ok()?;
                num.clear();
                total += n * match c {
                    'H' => 3_600_000,
                    'M' => 60_000,
                    _ => 1_000,
                };
            }
            _ => return None,
        }
    }
    num.is_empty().then_some(total)
}

/// The caller of setPresence/clearPresence: an app token with Presence.ReadWrite.All, within
/// the presence rate limit.
fn presence_writer(emu: &Emulator, headers: &HeaderMap) -> Result<TokenInfo, Response> {
    let t = auth(emu, headers)?;
    if !has_role(&t, &["Presence.ReadWrite.All"]) {
        return Err(denied());
    }
    match presence_rate_limit(emu, &t, headers) {
        Some(r) => Err(r),
        None => Ok(t),
    }
}

const SET_PRESENCE_PAIRS: [(&str, &str); 5] = [
    ("Available", "Available"),
    ("Busy", "InACall"),
    ("Busy", "InAConferenceCall"),
    ("Away", "Away"),
    ("DoNotDisturb", "Presenting"),
];

async fn set_presence(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let t = match presence_writer(&emu, &headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Ok(b) = serde_json::from_slice::<Value>(&body) else {
        return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "Invalid JSON.");
    };
    let s = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    if s("sessionId") != t.client_id {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "sessionId must be the application (client) id of the caller.",
        );
    }
    let (availability, activity) = (s("availability"), s("activity"));
    if !SET_PRESENCE_PAIRS.iter().any(|(a, b)| *a == availability && *b == activity) {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("The combination {availability}/{activity} is not supported."),
        );
    }
    let duration = match b.get("expirationDuration").and_then(Value::as_str) {
        None => 5 * 60_000,
        Some(d) => match iso_duration_ms(d) {
            Some(ms) if (5 * 60_000..=4 * 3_600_000).contains(&ms) => ms,
            _ => {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "expirationDuration must be between PT5M and PT4H.",
                );
            }
        },
    };
    write_session(&emu, &t, &id, |user, now| {
        let session =
            super::model::Session { availability, activity, expires_at_ms: Some(now + duration), set_at_ms: now };
        user.sessions.insert(t.client_id.clone(), session);
        Ok(())
    })
}

/// Changes the caller's presence session of user `id` with `change`, then notifies the
/// resulting change (if any) and records the write.
fn write_session(
    emu: &Emulator,
    t: &TokenInfo,
    id: &str,
    change: impl FnOnce(&mut super::model::User, u64) -> Result<(), Response>,
) -> Response {
    let now = now(emu);
    let mut w = emu.inner.world.lock().unwrap();
    let Some(user) = w.tenants.get_mut(&t.tenant).and_then(|tn| tn.user_mut(id)) else {
        return graph_error(StatusCode::NOT_FOUND, "itemNotFound", &format!("User '{id}' not found."));
    };
    if let Err(r) = change(user, now) {
        return r;
    }
    if let Some(e) = user.next_expiry_ms() {
        w.next_expiry_ms = w.next_expiry_ms.min(e);
    }
    let d = touch(&mut w, &t.tenant, id, now);
    drop(w);
    emu.inner.writes.lock().unwrap().insert(id.to_string(), std::time::Instant::now());
    emu.send(d);
    StatusCode::OK.into_response()
}

/// `setStatusMessage` (<https://learn.microsoft.com/en-us/graph/api/presence-setstatusmessage>):
/// `statusMessage.message.content` (empty: no message) and an optional `expiryDateTime`
/// (`dateTime` with `timeZone` `UTC`, or an offset in `dateTime`). Application permission
/// `Presence.ReadWrite.All`; `200` with no body.
async fn set_status_message(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let t = match presence_writer(&emu, &headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Ok(b) = serde_json::from_slice::<Value>(&body) else {
        return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "Invalid JSON.");
    };
    let Some(sm) = b.get("statusMessage").filter(|v| v.is_object()) else {
        return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "statusMessage is required.");
    };
    let content = sm.pointer("/message/content").and_then(Value::as_str).unwrap_or("").to_string();
    if content.chars().count() > 280 {
        return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "The status message is longer than 280 characters.");
    }
    let expiry = match sm.get("expiryDateTime").filter(|v| !v.is_null()) {
        None => None,
        Some(e) => {
            let dt = e.get("dateTime").and_then(Value::as_str).unwrap_or("");
            let tz = e.get("timeZone").and_then(Value::as_str).unwrap_or("UTC");
            let has_offset = dt.ends_with('Z') || dt.get(10..).is_some_and(|rest| rest.contains(['+', '-']));
            let with_zone = if has_offset {
                dt.to_string()
            } else if tz.eq_ignore_ascii_case("UTC") {
                format!("{dt}Z")
            } else {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("Time zone '{tz}' is not supported here."),
                );
            };
            match super::wire::parse_time(&with_zone) {
                Some(ms) => Some(ms),
                None => {
                    return graph_error(StatusCode::BAD_REQUEST, "BadRequest", &format!("'{dt}' is not a date-time."));
                }
            }
        }
    };
    write_session(&emu, &t, &id, |user, now| {
        user.status_message = (!content.is_empty()).then_some(super::model::StatusMessage {
            content,
            expires_at_ms: expiry,
            published_ms: now,
        });
        Ok(())
    })
}

async fn clear_presence(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let t = match presence_writer(&emu, &headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let session = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b.get("sessionId").and_then(Value::as_str).map(str::to_string));
    if session.as_deref() != Some(t.client_id.as_str()) {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "sessionId must be the application (client) id of the caller.",
        );
    }
    write_session(&emu, &t, &id, |user, now| {
        let live = user.sessions.get(&t.client_id).is_some_and(|s| s.expires_at_ms.is_none_or(|e| e > now));
        if user.sessions.remove(&t.client_id).is_none() || !live {
            return Err(graph_error(
                StatusCode::NOT_FOUND,
                "itemNotFound",
                "No presence session of this application exists for the user.",
            ));
        }
        Ok(())
    })
}

/// JSON batching: at most 20 requests, unique ids; each inner request is served (and
/// throttled) on its own, and the outer status is 200 (<https://learn.microsoft.com/en-us/graph/json-batching>).
async fn batch(State(emu): State<Emulator>, headers: HeaderMap, body: Bytes) -> Response {
    use tower::ServiceExt;
    let Ok(b) = serde_json::from_slice::<Value>(&body) else {
        return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "Invalid JSON.");
    };
    let Some(reqs) = b.get("requests").and_then(Value::as_array) else {
        return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "requests is required.");
    };
    if reqs.is_empty() || reqs.len() > 20 {
        return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "A batch holds 1 to 20 requests.");
    }
    let ids: BTreeSet<&str> = reqs.iter().filter_map(|r| r.get("id").and_then(Value::as_str)).collect();
    if ids.len() != reqs.len() {
        return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "Batch request ids must be present and unique.");
    }
    let router = router(emu.clone());
    let batch_id = uuid::Uuid::new_v4().to_string();
    let mut responses = Vec::new();
    for r in reqs {
        let id = r["id"].as_str().unwrap_or_default().to_string();
        let method = r.get("method").and_then(Value::as_str).unwrap_or("GET");
        let url = r.get("url").and_then(Value::as_str).unwrap_or("");
        if r.get("body").is_some()
            && r.get("headers").and_then(|h| h.get("Content-Type").or_else(|| h.get("content-type"))).is_none()
        {
            responses.push(json!({"id": id, "status": 400, "body": {"error": {"code": "BadRequest", "message": "Content-Type header is required when a body is present."}}}));
            continue;
        }
        let mut builder =
            axum::http::Request::builder().method(method).uri(format!("/v1.0/{}", url.trim_start_matches('/')));
        if let Some(a) = headers.get(header::AUTHORIZATION) {
            builder = builder.header(header::AUTHORIZATION, a);
        }
        builder = builder.header(BATCH_HEADER, batch_id.as_str());
        if let Some(h) = r.get("headers").and_then(Value::as_object) {
            for (k, v) in h {
                if let Some(v) = v.as_str() {
                    builder = builder.header(k.as_str(), v);
                }
            }
        }
        let inner_body = r.get("body").map(|b| b.to_string()).unwrap_or_default();
        let Ok(req) = builder.body(axum::body::Body::from(inner_body)) else {
            responses.push(json!({"id": id, "status": 400, "body": {"error": {"code": "BadRequest", "message": "Malformed request."}}}));
            continue;
        };
        let resp = router.clone().oneshot(req).await.unwrap_or_else(|e| match e {});
        let status = resp.status().as_u16();
        let mut hdrs = serde_json::Map::new();
        for (k, v) in resp.headers() {
            if let Ok(v) = v.to_str() {
                let name = if k == header::RETRY_AFTER { "Retry-After".to_string() } else { k.to_string() };
                hdrs.insert(name, json!(v));
            }
        }
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        responses.push(json!({"id": id, "status": status, "headers": hdrs, "body": body}));
    }
    json_response(StatusCode::OK, json!({ "responses": responses }))
}

async fn get_presence(State(emu): State<Emulator>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let t = match auth(&emu, &headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if !may_read_presence(&t) {
        return denied();
    }
    if let Some(r) = presence_rate_limit(&emu, &t, &headers) {
        return r;
    }
    let now = now(&emu);
    let mut w = emu.inner.world.lock().unwrap();
    match w.tenants.get_mut(&t.tenant).and_then(|tn| tn.user_mut(&id)) {
        Some(u) => json_response(StatusCode::OK, presence_json(u, now)),
        None => graph_error(StatusCode::NOT_FOUND, "itemNotFound", &format!("User '{id}' not found.")),
    }
}

async fn get_presences(State(emu): State<Emulator>, headers: HeaderMap, body: Bytes) -> Response {
    let t = match auth(&emu, &headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if !may_read_presence(&t) {
        return denied();
    }
    #[derive(serde::Deserialize)]
    struct Body {
        ids: Vec<String>,
    }
    let Ok(b) = serde_json::from_slice::<Body>(&body) else {
        return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "The request body must be {\"ids\": [...]}.");
    };
    if let Some(r) = presence_rate_limit(&emu, &t, &headers) {
        return r;
    }
    if b.ids.is_empty() || b.ids.len() > MAX_PRESENCE_IDS {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("ids must hold 1 to {MAX_PRESENCE_IDS} user ids; got {}.", b.ids.len()),
        );
    }
    let now = now(&emu);
    let mut w = emu.inner.world.lock().unwrap();
    let tenant = w.tenants.get_mut(&t.tenant).unwrap();
    let value: Vec<Value> = b.ids.iter().filter_map(|id| tenant.user_mut(id).map(|u| presence_json(u, now))).collect();
    json_response(
        StatusCode::OK,
        json!({ "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(presence)", "value": value }),
    )
}

fn parse_presence_resource(resource: &str) -> Result<BTreeSet<String>, String> {
    let r = resource.trim_start_matches('/');
    if let Some(id) = r.strip_prefix("communications/presences/") {
        return if is_guid(id) {
            Ok(BTreeSet::from([id.to_string()]))
        } else {
            Err(format!("'{id}' is not a user id"))
        };
    }
    let filter = r.strip_prefix("communications/presences?$filter=").ok_or_else(|| {
        format!("resource '{}' is not a presence resource", resource.chars().take(80).collect::<String>())
    })?;
    let inner = filter
        .trim()
        .strip_prefix("id in (")
        .and_then(|s| s.strip_suffix(')'))
        .ok_or("the filter must be \"id in ('...','...')\"")?;
    let mut ids = BTreeSet::new();
    for part in inner.split(',') {
        let id = part.trim().strip_prefix('\'').and_then(|s| s.strip_suffix('\'')).ok_or("ids must be quoted")?;
        if !is_guid(id) {
            return Err(format!("'{id}' is not a user id"));
        }
        ids.insert(id.to_string());
    }
    Ok(ids)
}

fn allowed_notification_url(u: &str) -> bool {
    match url::Url::parse(u) {
        Ok(url) => url.scheme() == "https" || (url.scheme() == "http" && wire::is_loopback(&url)),
        Err(_) => false,
    }
}

async fn create_subscription(State(emu): State<Emulator>, headers: HeaderMap, body: Bytes) -> Response {
    let t = match auth(&emu, &headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Ok(b) = serde_json::from_slice::<Value>(&body) else {
        return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "Invalid JSON.");
    };
    let s = |k: &str| b.get(k).and_then(Value::as_str).map(str::to_string);
    let bad = |m: &str| graph_error(StatusCode::BAD_REQUEST, "ValidationError", m);
    let Some(resource) = s("resource") else { return bad("resource is required.") };
    let user_ids = match parse_presence_resource(&resource) {
        Ok(ids) => ids,
        Err(e) => return bad(&e),
    };
    let creator = match &t.grant {
        Grant::Delegated { user_id } => user_id.clone(),
        Grant::App { .. } => {
            return graph_error(
                StatusCode::FORBIDDEN,
                "ExtensionError",
                "Operation: Create; Exception: [Status Code: Forbidden; Reason: Application permissions are not supported for presence subscriptions]",
            );
        }
    };
    if s("changeType").as_deref() != Some("updated") {
        return bad("changeType must be 'updated' for presence.");
    }
    if user_ids.len() > MAX_SUBSCRIPTION_USERS {
        return bad(&format!(
            "A presence subscription is limited to {MAX_SUBSCRIPTION_USERS} distinct users; got {}.",
            user_ids.len()
        ));
    }
    let Some(url) = s("notificationUrl").filter(|u| allowed_notification_url(u)) else {
        return bad("notificationUrl must be an https URL.");
    };
    let lifecycle = s("lifecycleNotificationUrl");
    if lifecycle.as_deref().is_some_and(|u| !allowed_notification_url(u)) {
        return bad("lifecycleNotificationUrl must be an https URL.");
    }
    let now = now(&emu);
    let Some(exp) = s("expirationDateTime").and_then(|e| wire::parse_time(&e)) else {
        return bad("expirationDateTime is required and must be a DateTimeOffset.");
    };
    if exp <= now || exp > now + MAX_PRESENCE_SUBSCRIPTION_MS + 60_000 {
        return bad("Subscription expiration can only be 60 minutes in the future for presence.");
    }
    let client_state = s("clientState");
    if client_state.as_ref().is_some_and(|c| c.len() > 128) {
        return bad("clientState can be at most 128 characters.");
    }
    let rich = b.get("includeResourceData").and_then(Value::as_bool).unwrap_or(false);
    let (mut spki, mut thumbprint, mut cert_id) = (vec![], String::new(), String::new());
    if rich {
        let (Some(cert), Some(id)) = (s("encryptionCertificate"), s("encryptionCertificateId")) else {
            return bad(
                "encryptionCertificate and encryptionCertificateId are required when includeResourceData is true.",
            );
        };
        let Ok(der) = base64::engine::general_purpose::STANDARD.decode(cert.trim()) else {
            return bad("encryptionCertificate is not base64.");
        };
        let Ok((_, x509)) = x509_parser::parse_x509_certificate(&der) else {
            return bad("encryptionCertificate is not an X.509 certificate.");
        };
        spki = x509.public_key().raw.to_vec();
        match aws_lc_rs::rsa::PublicEncryptingKey::from_der(&spki) {
            Ok(k) if (2048..=4096).contains(&k.key_size_bits()) => {}
            _ => return bad("encryptionCertificate must hold an RSA key of 2048 to 4096 bits."),
        }
        thumbprint = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &der)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        cert_id = id;
    }
    let quota_or_conflict = |w: &super::World| -> Option<Response> {
        let live = w
            .subscriptions
            .values()
            .filter(|x| x.expires_at_ms > now && x.client_id == t.client_id && x.tenant == t.tenant);
        for x in live {
            if x.resource == resource {
                return Some(graph_error(
                    StatusCode::CONFLICT,
                    "Conflict",
                    &format!("Subscription Id {} already exists for the requested combination", x.id),
                ));
            }
            if x.creator_id == creator {
                return Some(graph_error(
                    StatusCode::FORBIDDEN,
                    "ExtensionError",
                    "Operation: Create; Exception: [Status Code: Forbidden; Reason: The limit of one presence subscription per application per user has been reached]",
                ));
            }
        }
        None
    };
    if let Some(r) = quota_or_conflict(&emu.inner.world.lock().unwrap()) {
        return r;
    }
    // The validation handshake happens while this request is still open, as in Graph.
    for u in std::iter::once(&url).chain(lifecycle.as_ref()) {
        if let Err(e) = validate_endpoint(&emu, u).await {
            return bad(&format!("Subscription validation request failed. {e}"));
        }
    }
    let mut w = emu.inner.world.lock().unwrap();
    if let Some(r) = quota_or_conflict(&w) {
        return r;
    }
    let id = uuid::Uuid::new_v4().to_string();
    let sub = super::Subscription {
        id: id.clone(),
        tenant: t.tenant.clone(),
        client_id: t.client_id.clone(),
        creator_id: creator,
        resource,
        users: user_ids.len(),
        user_ids,
        notification_url: url,
        lifecycle_notification_url: lifecycle,
        client_state,
        expires_at_ms: exp,
        spki,
        cert_id,
        thumbprint,
        include_resource_data: rich,
        reauthorization_required: false,
    };
    let body = subscription_json(&sub);
    w.subscriptions.insert(id, sub);
    json_response(StatusCode::CREATED, body)
}

fn subscription_json(s: &super::Subscription) -> Value {
    json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
        "id": s.id,
        "resource": s.resource,
        "applicationId": s.client_id,
        "changeType": "updated",
        "clientState": s.client_state,
        "notificationUrl": s.notification_url,
        "lifecycleNotificationUrl": s.lifecycle_notification_url,
        "expirationDateTime": wire::graph_time(s.expires_at_ms),
        "creatorId": s.creator_id,
        "includeResourceData": s.include_resource_data,
        "encryptionCertificateId": if s.cert_id.is_empty() { Value::Null } else { json!(s.cert_id) },
        "latestSupportedTlsVersion": "v1_2",
        "notificationContentType": null,
    })
}

async fn validate_endpoint(emu: &Emulator, url: &str) -> Result<(), String> {
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        uuid::Uuid::new_v4()
    );
    let encoded: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
    let sep = if url.contains('?') { '&' } else { '?' };
    let resp = emu
        .inner
        .http
        .post(format!("{url}{sep}validationToken={encoded}"))
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .map_err(|_| "The endpoint could not be reached within 10 seconds.".to_string())?;
    if resp.status() != StatusCode::OK {
        return Err(format!("Response status code does not indicate success: {}.", resp.status().as_u16()));
    }
    let ct = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if !ct.starts_with("text/plain") {
        return Err(format!("The response content type '{ct}' is not text/plain."));
    }
    let body = resp.text().await.unwrap_or_default();
    if body != token {
        return Err("The response body does not match the validation token.".into());
    }
    Ok(())
}

/// The subscription `id` if it is live and belongs to the caller's app. Takes the world
/// already locked (and the caller already authenticated: `auth` locks the world too).
fn own_subscription<'a>(
    t: &TokenInfo,
    now: u64,
    id: &str,
    w: &'a super::World,
) -> Result<&'a super::Subscription, Response> {
    match w.subscriptions.get(id) {
        Some(s) if s.expires_at_ms > now && s.client_id == t.client_id && s.tenant == t.tenant => Ok(s),
        _ => Err(graph_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("The object was not found. Subscription '{id}'."),
        )),
    }
}

async fn update_subscription(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let now = now(&emu);
    let Ok(b) = serde_json::from_slice::<Value>(&body) else {
        return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "Invalid JSON.");
    };
    let t = match auth(&emu, &headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut w = emu.inner.world.lock().unwrap();
    if let Err(r) = own_subscription(&t, now, &id, &w) {
        return r;
    }
    let exp = b.get("expirationDateTime").and_then(Value::as_str).and_then(wire::parse_time);
    let url = b.get("notificationUrl").and_then(Value::as_str);
    if exp.is_none() && url.is_none() {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            "expirationDateTime or notificationUrl is required.",
        );
    }
    if let Some(e) = exp
        && (e <= now || e > now + MAX_PRESENCE_SUBSCRIPTION_MS + 60_000)
    {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            "Subscription expiration can only be 60 minutes in the future for presence.",
        );
    }
    let s = w.subscriptions.get_mut(&id).unwrap();
    // A renewal (with the caller's fresh token) is a reauthorization.
    s.reauthorization_required = false;
    if let Some(e) = exp {
        s.expires_at_ms = e;
    }
    if let Some(u) = url {
        s.notification_url = u.to_string();
    }
    json_response(StatusCode::OK, subscription_json(s))
}

async fn delete_subscription(State(emu): State<Emulator>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let t = match auth(&emu, &headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let now = now(&emu);
    let mut w = emu.inner.world.lock().unwrap();
    if let Err(r) = own_subscription(&t, now, &id, &w) {
        return r;
    }
    w.subscriptions.remove(&id);
    StatusCode::NO_CONTENT.into_response()
}

async fn list_subscriptions(State(emu): State<Emulator>, headers: HeaderMap) -> Response {
    let t = match auth(&emu, &headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let now = now(&emu);
    let w = emu.inner.world.lock().unwrap();
    // Delegated: the app's subscriptions created by the signed-in user; app-only: all the app's.
    let value: Vec<Value> = w
        .subscriptions
        .values()
        .filter(|s| s.expires_at_ms > now && s.client_id == t.client_id && s.tenant == t.tenant)
        .filter(|s| match &t.grant {
            Grant::Delegated { user_id } => &s.creator_id == user_id,
            Grant::App { .. } => true,
        })
        .map(subscription_json)
        .collect();
    json_response(StatusCode::OK, json!({ "value": value }))
}

// ---- control API ----

async fn control_users(State(emu): State<Emulator>, Path(tenant): Path<String>) -> Response {
    let now = now(&emu);
    let w = emu.inner.world.lock().unwrap();
    let Some(t) = w.tenant_key(&tenant).and_then(|k| w.tenants.get(&k)) else {
        return (StatusCode::NOT_FOUND, "no such tenant").into_response();
    };
    let users: Vec<Value> = t
        .users
        .iter()
        .map(|u| {
            let (a, b) = u.aggregate(now);
            json!({"id": u.id, "userPrincipalName": u.upn, "mail": u.mail, "availability": a, "activity": b})
        })
        .collect();
    json_response(StatusCode::OK, json!({ "value": users }))
}

#[derive(serde::Deserialize)]
struct PresenceChange {
    availability: String,
    activity: String,
    #[serde(default)]
    preferred: bool,
}

async fn control_presence(
    State(emu): State<Emulator>,
    Path((tenant, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Ok(c) = serde_json::from_slice::<PresenceChange>(&body) else {
        return (StatusCode::BAD_REQUEST, "body must be {\"availability\",\"activity\",\"preferred\"?}")
            .into_response();
    };
    if emu.set_presence(&tenant, &id, &c.availability, &c.activity, c.preferred) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::NOT_FOUND, "no such tenant or user").into_response()
    }
}

#[derive(serde::Deserialize)]
struct Mfa {
    required: bool,
}

async fn control_mfa(
    State(emu): State<Emulator>,
    Path((tenant, upn)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Ok(m) = serde_json::from_slice::<Mfa>(&body) else {
        return (StatusCode::BAD_REQUEST, "body must be {\"required\": bool}").into_response();
    };
    let found = emu.with_world_no_expiry(|w| {
        let k = w.tenant_key(&tenant)?;
        let u = w.tenants.get_mut(&k)?.user_by_upn(&upn)?;
        u.mfa_required = m.required;
        Some(())
    });
    if found.is_some() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::NOT_FOUND, "no such tenant or user").into_response()
    }
}

async fn control_subscriptions(State(emu): State<Emulator>) -> Response {
    json_response(StatusCode::OK, json!({ "value": emu.subscriptions() }))
}

async fn control_delete_subscription(State(emu): State<Emulator>, Path(id): Path<String>) -> Response {
    match emu.with_world_no_expiry(|w| w.subscriptions.remove(&id)) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn control_fault(State(emu): State<Emulator>, body: Bytes) -> Response {
    match serde_json::from_slice::<super::Fault>(&body) {
        Ok(f) => {
            emu.with_world_no_expiry(|w| w.faults.push(f));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("bad fault: {e}")).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct Limit {
    limit: usize,
    window_ms: u64,
}

async fn control_presence_limit(State(emu): State<Emulator>, body: Bytes) -> Response {
    match serde_json::from_slice::<Limit>(&body) {
        Ok(l) => {
            emu.set_presence_limit(l.limit, std::time::Duration::from_millis(l.window_ms));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("body must be {{\"limit\", \"window_ms\"}}: {e}")).into_response(),
    }
}

async fn control_stats(State(emu): State<Emulator>) -> Response {
    let s = emu.stats();
    let o = std::sync::atomic::Ordering::Relaxed;
    json_response(
        StatusCode::OK,
        json!({
            "requests": emu.request_counts(),
            "delivered": s.delivered.load(o),
            "failedAttempts": s.failed_attempts.load(o),
            "dropped": s.dropped.load(o),
        }),
    )
}
