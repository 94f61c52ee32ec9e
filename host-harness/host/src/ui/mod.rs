//! The admin page, server-rendered on the admin listener under `/ui`: the product guide's
//! screens (the integration list with Name, Type, Users and Status ✓ / ✗ / "No status"; the
//! integration form with Name, "Push line status to Teams", Tenant ID, Client ID, Client
//! Secret, integration users with + and ✕, Save, Sync now, Delete, and how many users are
//! synced or why not; the "Teams Presence users" list, searchable and paged).
//!
//! Security:
//! - Sign-in with the admin token (compared in constant time) opens a session: a random
//!   256-bit id in a cookie (`HttpOnly`, `SameSite=Strict`, `Path=/ui`, 8 hours), kept on the
//!   server only as its SHA-256; at most [`MAX_SESSIONS`] at once (the oldest goes).
//! - Every form carries the session's CSRF token, checked in constant time before anything
//!   is done; a POST without it is refused (`403`).
//! - Every answer says `Cache-Control: no-store` and carries a strict CSP (no inline script,
//!   no framing, forms only to this origin). No page holds a secret's value: secret fields
//!   are empty and say "set" when one is.
//! - The bearer token still opens every other admin route; the page's routes take the
//!   session instead.

mod pages;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::config::{IntegrationSpec, IntegrationUserSpec, OverrideSpec, Secret};
use crate::registry::{Entry, RegistryError};
use crate::web::{AppState, BODY_READ_TIMEOUT, read_body};

/// Sessions open at once; a new one pushes the oldest out.
pub const MAX_SESSIONS: usize = 64;
/// A session's life.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 60 * 60);
/// The largest form body.
pub const MAX_FORM_BODY: usize = 256 << 10;
/// The session cookie's name.
pub const COOKIE: &str = "tps_session";
/// How long the list waits for each integration's status.
pub const STATUS_WITHIN: Duration = Duration::from_secs(2);

struct Session {
    csrf: String,
    expires: Instant,
}

/// The open sessions, by the SHA-256 of their id.
pub(crate) struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    token: Secret,
    /// Admin consents asked for and not answered yet, by the SHA-256 of their `state`.
    consents: Mutex<HashMap<[u8; 32], PendingConsent>>,
}

/// An admin consent the page sent a browser to.
struct PendingConsent {
    integration: String,
    expires: Instant,
}

/// How long an admin has to answer Microsoft's consent prompt.
pub const CONSENT_WITHIN: Duration = Duration::from_secs(30 * 60);
/// Consents waiting at once; a new one pushes the oldest out.
pub const MAX_PENDING_CONSENTS: usize = 64;

fn random_hex() -> String {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).expect("the system's random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn ct_eq(a: &str, b: &str) -> bool {
    bool::from(subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()))
}

/// Puts `value` under the SHA-256 of `secret` in `map`, after dropping what expired, and the
/// entry that expires first when `max` are there already.
fn insert_bounded<V>(
    map: &mut HashMap<[u8; 32], V>,
    secret: &str,
    value: V,
    max: usize,
    expires: impl Fn(&V) -> Instant,
) {
    let now = Instant::now();
    map.retain(|_, v| expires(v) > now);
    if map.len() >= max
        && let Some(oldest) = map.iter().min_by_key(|(_, v)| expires(v)).map(|(k, _)| *k)
    {
        map.remove(&oldest);
    }
    map.insert(Sha256::digest(secret.as_bytes()).into(), value);
}

impl Sessions {
    fn open(&self) -> (String, String) {
        let (id, csrf) = (random_hex(), random_hex());
        let session = Session { csrf: csrf.clone(), expires: Instant::now() + SESSION_LIFETIME };
        insert_bounded(&mut self.map.lock().unwrap(), &id, session, MAX_SESSIONS, |s| s.expires);
        (id, csrf)
    }

    fn id_of(headers: &HeaderMap) -> Option<String> {
        headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(
            |c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == COOKIE).then(|| v.to_string())
            },
        )
    }

    /// The CSRF token of the request's session, if it has a live one.
    fn current(&self, headers: &HeaderMap) -> Option<String> {
        let id = Self::id_of(headers)?;
        let key: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        let map = self.map.lock().unwrap();
        map.get(&key).filter(|s| s.expires > Instant::now()).map(|s| s.csrf.clone())
    }

    /// A new `state` for a consent of `integration`'s tenant.
    fn consent_state(&self, integration: &str) -> String {
        let state = random_hex();
        let pending = PendingConsent { integration: integration.into(), expires: Instant::now() + CONSENT_WITHIN };
        insert_bounded(&mut self.consents.lock().unwrap(), &state, pending, MAX_PENDING_CONSENTS, |c| c.expires);
        state
    }

    /// The integration a consent's `state` was made for: once (it is then gone), and only
    /// within [`CONSENT_WITHIN`].
    fn take_consent(&self, state: &str) -> Option<String> {
        let key: [u8; 32] = Sha256::digest(state.as_bytes()).into();
        let c = self.consents.lock().unwrap().remove(&key)?;
        (c.expires > Instant::now()).then_some(c.integration)
    }

    fn close(&self, headers: &HeaderMap) {
        if let Some(id) = Self::id_of(headers) {
            let key: [u8; 32] = Sha256::digest(id.as_bytes()).into();
            self.map.lock().unwrap().remove(&key);
        }
    }
}

#[derive(Clone)]
struct Ui {
    app: AppState,
    sessions: Arc<Sessions>,
}

/// The page's routes (they take the session, not the bearer token).
pub(crate) fn router(app: AppState, admin_token: Secret) -> Router {
    let sessions = Arc::new(Sessions { map: Default::default(), token: admin_token, consents: Default::default() });
    Router::new()
        .route("/ui/style.css", get(|| async { ([(header::CONTENT_TYPE, "text/css")], include_str!("style.css")) }))
        .route("/ui/app.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], include_str!("app.js")) }))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", axum::routing::post(logout))
        .route("/ui", get(list))
        .route("/ui/integrations/new", get(new_form).post(create))
        .route("/ui/integrations/{name}", get(edit_form).post(change))
        .route("/ui/integrations/{name}/users", get(users_list))
        .route("/ui/integrations/{name}/consent", get(consent_again))
        .route("/ui/consent", get(consent_answer))
        .route("/ui/integrations/{name}/sign-in", get(sign_in_state).post(start_sign_in))
        .with_state(Ui { app: app.clone(), sessions })
        .layer(axum::middleware::from_fn_with_state(Arc::new(csp(&app)), headers))
}

/// The page's content security policy. Forms go to this origin only, and, with the automated
/// setup, on to Microsoft's sign-in for the admin consent (a Save redirects there, and
/// `form-action` covers redirects).
fn csp(app: &AppState) -> HeaderValue {
    let consent = match app.registry.platform_client_id() {
        Some(_) => app.registry.login_origin().map(|o| format!(" {o}")).unwrap_or_default(),
        None => String::new(),
    };
    HeaderValue::from_str(&format!(
        "default-src 'none'; style-src 'self'; script-src 'self'; form-action 'self'{consent}; \
         frame-ancestors 'none'; base-uri 'none'"
    ))
    .expect("a header value")
}

/// What every page answer carries.
async fn headers(State(csp): State<Arc<HeaderValue>>, req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, (*csp).clone());
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

fn to_login() -> Response {
    Redirect::to("/ui/login").into_response()
}

fn page(code: StatusCode, m: maud::Markup) -> Response {
    (code, Html(m.into_string())).into_response()
}

/// The form's fields, in order (a field may repeat: the users' rows).
struct Form(Vec<(String, String)>);

impl Form {
    fn get(&self, k: &str) -> &str {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.trim()).unwrap_or("")
    }
    fn all(&self, k: &str) -> impl Iterator<Item = &str> {
        self.0.iter().filter(move |(n, _)| n == k).map(|(_, v)| v.as_str())
    }
}

/// Reads a form body and checks its CSRF token against the session's; the refusal is the
/// answer to send.
async fn checked_form(ui: &Ui, headers: &HeaderMap, body: Body) -> Result<(Form, String), Response> {
    let Some(csrf) = ui.sessions.current(headers) else { return Err(to_login()) };
    let bytes = read_body(body, MAX_FORM_BODY, BODY_READ_TIMEOUT).await?;
    let form = Form(url::form_urlencoded::parse(&bytes).into_owned().collect());
    if !ct_eq(form.get("csrf"), &csrf) {
        return Err((
            StatusCode::FORBIDDEN,
            "the form is not from this session (it expired, or came from another site): reload the page",
        )
            .into_response());
    }
    Ok((form, csrf))
}

async fn login_page(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    if ui.sessions.current(&headers).is_some() {
        return Redirect::to("/ui").into_response();
    }
    page(StatusCode::OK, pages::login(None))
}

async fn login(State(ui): State<Ui>, body: Body) -> Response {
    let bytes = match read_body(body, MAX_FORM_BODY, BODY_READ_TIMEOUT).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let form = Form(url::form_urlencoded::parse(&bytes).into_owned().collect());
    if !ct_eq(form.get("token"), ui.sessions.token.expose()) {
        return page(StatusCode::UNAUTHORIZED, pages::login(Some("Wrong admin token.")));
    }
    let (id, _) = ui.sessions.open();
    let cookie = format!("{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_LIFETIME.as_secs());
    let mut r = Redirect::to("/ui").into_response();
    r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("a cookie"));
    r
}

async fn logout(State(ui): State<Ui>, headers: HeaderMap, body: Body) -> Response {
    if let Err(r) = checked_form(&ui, &headers, body).await {
        return r;
    }
    ui.sessions.close(&headers);
    let mut r = to_login();
    let gone = format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0");
    r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&gone).expect("a cookie"));
    r
}

async fn status_of(ui: &Ui, name: &str) -> Option<crate::status::StatusView> {
    let h = ui.app.registry.get(name)?;
    tokio::time::timeout(STATUS_WITHIN, h.status()).await.ok()?.ok()
}

/// `s` as a URL path segment.
fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The status mark and synced users of `name`, from the host that runs it (this one, or,
/// several hosts, another one, asked through the database).
async fn brief_of(ui: &Ui, name: &str) -> (pages::Mark, Option<u32>, Option<crate::status::PolicyView>) {
    if ui.app.registry.runs_elsewhere(name) {
        let path = format!("/status/{name}");
        let asked = tokio::time::timeout(STATUS_WITHIN, ui.app.registry.ask_owner(name, "GET", &path, None));
        return match asked.await {
            Ok((StatusCode::OK, s)) => (
                pages::Mark::of_json(&s),
                s["users"].as_u64().map(|u| u as u32),
                serde_json::from_value(s["policy"].clone()).ok(),
            ),
            _ => (pages::Mark::None, None, None),
        };
    }
    let s = status_of(ui, name).await;
    (pages::Mark::of(s.as_ref()), s.as_ref().map(|s| s.users), s.and_then(|s| s.policy))
}

/// A page of the users list and the counts, from the host that runs `name`; `None` when its
/// plugin has no users list (or it did not answer).
async fn users_of(
    ui: &Ui,
    name: &str,
    q: crate::status::UsersQuery,
) -> Option<(crate::status::UsersPageView, crate::status::MappingCountsView)> {
    if ui.app.registry.runs_elsewhere(name) {
        let filter = serde_json::to_value(q.filter).ok()?;
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("search", &q.search)
            .append_pair("filter", filter.as_str().unwrap_or("all"))
            .append_pair("offset", &q.offset.to_string())
            .append_pair("limit", &q.limit.to_string())
            .finish();
        let (code, v) =
            ui.app.registry.ask_owner(name, "GET", &format!("/integrations/{name}/users?{query}"), None).await;
        if code != StatusCode::OK {
            return None;
        }
        let page = crate::status::UsersPageView {
            total: v["total"].as_u64()? as u32,
            rows: serde_json::from_value(v["rows"].clone()).ok()?,
        };
        return Some((page, serde_json::from_value(v["counts"].clone()).ok()?));
    }
    let h = ui.app.registry.get(name)?;
    match (h.users_page(q).await, h.mapping_counts().await) {
        (Ok(Some(list)), Ok(Some(counts))) => Some((list, counts)),
        _ => None,
    }
}

#[derive(serde::Deserialize)]
struct ListQuery {
    deleted: Option<String>,
    complete: Option<bool>,
}

async fn list(State(ui): State<Ui>, headers: HeaderMap, Query(q): Query<ListQuery>) -> Response {
    let Some(csrf) = ui.sessions.current(&headers) else { return to_login() };
    let mut rows = Vec::new();
    for e in ui.app.registry.entries() {
        let (mark, users, _) = brief_of(&ui, &e.config.name).await;
        rows.push(pages::Row {
            display_name: e.config.display_name.clone().unwrap_or_else(|| e.config.name.clone()),
            name: e.config.name,
            users,
            mark,
        });
    }
    rows.sort_by_key(|r| r.display_name.to_lowercase());
    let notice = q.deleted.filter(|n| crate::config::check_name(n).is_ok()).map(|n| match q.complete {
        Some(true) => format!("{n} deleted: its users were withdrawn and nothing of it is left at Microsoft."),
        _ => format!(
            "{n} deleted. Not everything at Microsoft could be cleared: its subscriptions expire within 60 \
             minutes, its presence sessions within 5 (the host's log says what was left)."
        ),
    });
    page(StatusCode::OK, pages::list(&rows, notice.as_deref(), &csrf))
}

fn view_of(e: &Entry, mark: Option<pages::Mark>) -> pages::FormView {
    let c = &e.config;
    pages::FormView {
        name: Some(c.name.clone()),
        display_name: c.display_name.clone().unwrap_or_else(|| c.name.clone()),
        tenant_id: c.tenant_id.clone(),
        client_id: c.client_id.clone(),
        secret_set: !c.client_secret.expose().is_empty(),
        secret_expires: c.client_secret_expires_ms.map(crate::status::date_of).unwrap_or_default(),
        push_line_status: c.push_line_status,
        manual: c.manual_client_setup,
        automated_available: false,
        consent_url: None,
        users: c.users.iter().map(|u| (u.username.clone(), !u.password.expose().is_empty())).collect(),
        mark,
        counts: None,
        error: None,
        notice: None,
        policy: c.policy.clone(),
        policy_status: None,
    }
}

/// The form as the admin filled it in (no secret in it), to show again with an error.
fn view_of_form(name: Option<String>, f: &Form, current: Option<&Entry>) -> pages::FormView {
    let set = |u: &str| {
        current.is_some_and(|e| {
            e.config.users.iter().any(|x| x.username.eq_ignore_ascii_case(u) && !x.password.expose().is_empty())
        })
    };
    pages::FormView {
        name,
        display_name: f.get("display_name").to_string(),
        tenant_id: f.get("tenant_id").to_string(),
        client_id: f.get("client_id").to_string(),
        secret_set: current.is_some_and(|e| !e.config.client_secret.expose().is_empty()),
        secret_expires: f.get("client_secret_expires").to_string(),
        push_line_status: !f.get("push_line_status").is_empty(),
        manual: !f.get("manual_client_setup").is_empty(),
        automated_available: false,
        consent_url: None,
        users: f.all("username").map(str::trim).filter(|u| !u.is_empty()).map(|u| (u.to_string(), set(u))).collect(),
        mark: None,
        counts: None,
        error: None,
        notice: None,
        policy: policy_of(f),
        policy_status: None,
    }
}

/// The sync policy the form describes: lists one entry per line (or comma-separated),
/// working hours when a time zone is given.
fn policy_of(f: &Form) -> crate::policy::PolicyConfig {
    let list = |k: &str| -> Vec<String> {
        f.get(k).split(['\n', ',']).map(str::trim).filter(|x| !x.is_empty()).map(str::to_string).collect()
    };
    crate::policy::PolicyConfig {
        groups: list("policy_groups"),
        excluded_users: list("policy_excluded"),
        teams_to_switchboard_only: list("policy_teams_only"),
        call_replaces: list("policy_call_replaces"),
        do_not_disturb_in_call: !f.get("policy_dnd").is_empty(),
        working_hours: (!f.get("policy_time_zone").is_empty()).then(|| crate::policy::WorkingHoursConfig {
            time_zone: f.get("policy_time_zone").to_string(),
            days: f.all("policy_days").map(str::to_string).collect(),
            start: f.get("policy_start").to_string(),
            end: f.get("policy_end").to_string(),
        }),
    }
}

/// Whether the form asks for manual client setup: always, when the host has no app of its
/// own for the automated setup (the toggle is then disabled, and a disabled box is not sent).
fn manual_of(f: &Form, automated_available: bool) -> bool {
    !automated_available || !f.get("manual_client_setup").is_empty()
}

/// The spec the form describes; what the page does not show is kept from `current`.
fn spec_of(f: &Form, current: Option<&Entry>, automated_available: bool) -> IntegrationSpec {
    let c = current.map(|e| &e.config);
    let users = f
        .all("username")
        .zip(f.all("password"))
        .filter(|(u, _)| !u.trim().is_empty())
        .map(|(u, p)| IntegrationUserSpec {
            username: u.trim().to_string(),
            password: (!p.is_empty()).then(|| p.to_string()),
        })
        .collect();
    IntegrationSpec {
        display_name: Some(f.get("display_name").to_string()),
        manual_client_setup: Some(manual_of(f, automated_available)),
        tenant_id: f.get("tenant_id").to_string(),
        client_id: f.get("client_id").to_string(),
        client_secret: Some(f.get("client_secret").to_string()).filter(|s| !s.is_empty()),
        client_secret_expires: Some(f.get("client_secret_expires").to_string()).filter(|s| !s.is_empty()),
        users,
        push_line_status: !f.get("push_line_status").is_empty(),
        min_call_length_ms: c.map_or(0, |c| c.min_call_length_ms),
        reconcile_interval_s: c.map_or(300, |c| c.reconcile_interval_s),
        directory_delta_interval_s: c.map_or(60, |c| c.directory_delta_interval_s),
        match_order: c.map(|c| c.match_order.clone()).unwrap_or_default(),
        overrides: c
            .map(|c| {
                c.overrides
                    .iter()
                    .map(|(s, m)| OverrideSpec { switchboard_user: s.clone(), microsoft_user: m.clone() })
                    .collect()
            })
            .unwrap_or_default(),
        policy: Some(policy_of(f)),
    }
}

/// An integration id from a display name: lower case, a-z 0-9 and '-'.
fn slug(display: &str) -> String {
    let mut s = String::new();
    for c in display.trim().to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c);
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
    }
    s.trim_end_matches('-').chars().take(64).collect::<String>().trim_end_matches('-').to_string()
}

fn refused_message(e: &RegistryError) -> String {
    match e {
        RegistryError::Invalid(c) => format!("Not saved: {}: {}", c.field, c.reason),
        e => format!("Not saved: {e}"),
    }
}

async fn new_form(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let Some(csrf) = ui.sessions.current(&headers) else { return to_login() };
    let automated = ui.app.registry.platform_client_id().is_some();
    // The guide's default is the automated setup, where the host has an app of its own.
    let mut fields = vec![("push_line_status".to_string(), "on".to_string())];
    if !automated {
        fields.push(("manual_client_setup".into(), "on".into()));
    }
    let mut v = view_of_form(None, &Form(fields), None);
    v.automated_available = automated;
    page(StatusCode::OK, pages::form(&v, &csrf))
}

async fn create(State(ui): State<Ui>, headers: HeaderMap, body: Body) -> Response {
    let (form, csrf) = match checked_form(&ui, &headers, body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let name = match form.get("name") {
        "" => slug(form.get("display_name")),
        n => n.to_string(),
    };
    let refuse = |e: RegistryError| {
        let mut v = view_of_form(None, &form, None);
        v.automated_available = ui.app.registry.platform_client_id().is_some();
        v.manual = manual_of(&form, v.automated_available);
        v.error = Some(refused_message(&e));
        page(StatusCode::UNPROCESSABLE_ENTITY, pages::form(&v, &csrf))
    };
    if let Err(reason) = crate::config::check_name(&name) {
        return refuse(RegistryError::Invalid(crate::config::ConfigError {
            file: "form".into(),
            field: "Integration id".into(),
            reason,
        }));
    }
    let platform = ui.app.registry.platform_client_id();
    let config = match spec_of(&form, None, platform.is_some()).into_config(&name, None, platform) {
        Ok(c) => c,
        Err(e) => return refuse(e.into()),
    };
    let (automated, tenant) = (!config.manual_client_setup, config.tenant_id.clone());
    match ui.app.registry.create(config).await {
        // The guide: "Upon save you will be redirected to a Microsoft login" for the consent.
        Ok(()) if automated => to_consent(&ui, &name, &tenant),
        Ok(()) => Redirect::to(&format!("/ui/integrations/{name}?saved=1")).into_response(),
        Err(e) => refuse(e),
    }
}

#[derive(serde::Deserialize)]
struct FormQuery {
    saved: Option<u8>,
    synced: Option<u8>,
}

async fn edit_form(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<FormQuery>,
) -> Response {
    let Some(csrf) = ui.sessions.current(&headers) else { return to_login() };
    let Some(e) = ui.app.registry.entry(&name) else {
        return (StatusCode::NOT_FOUND, "no such integration").into_response();
    };
    let (mark, _, policy_status) = brief_of(&ui, &name).await;
    let mut v = view_of(&e, Some(mark));
    v.policy_status = policy_status;
    v.automated_available = ui.app.registry.platform_client_id().is_some();
    if !e.config.manual_client_setup {
        v.consent_url = Some(format!("/ui/integrations/{name}/consent"));
    }
    if let Some(h) = ui.app.registry.get(&name) {
        v.counts = tokio::time::timeout(STATUS_WITHIN, h.mapping_counts()).await.ok().and_then(|r| r.ok()).flatten();
    } else if ui.app.registry.runs_elsewhere(&name) {
        let one = crate::status::UsersQuery { search: String::new(), filter: Default::default(), offset: 0, limit: 1 };
        v.counts = tokio::time::timeout(STATUS_WITHIN, users_of(&ui, &name, one)).await.ok().flatten().map(|(_, c)| c);
    }
    v.notice = match (q.saved, q.synced) {
        (Some(_), _) => Some("Saved.".into()),
        (_, Some(_)) => Some("Directory refresh started.".into()),
        _ => None,
    };
    page(StatusCode::OK, pages::form(&v, &csrf))
}

/// Sends the browser to Microsoft's admin consent for `name`'s tenant.
fn to_consent(ui: &Ui, name: &str, tenant: &str) -> Response {
    let state = ui.sessions.consent_state(name);
    match ui.app.registry.admin_consent_url(tenant, &state) {
        Some(url) => Redirect::to(&url).into_response(),
        None => Redirect::to(&format!("/ui/integrations/{name}?saved=1")).into_response(),
    }
}

/// "Grant admin consent" on the form (again: another admin, a declined consent).
async fn consent_again(State(ui): State<Ui>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if ui.sessions.current(&headers).is_none() {
        return to_login();
    }
    match ui.app.registry.entry(&name) {
        Some(e) if !e.config.manual_client_setup => to_consent(&ui, &name, &e.config.tenant_id),
        Some(_) => {
            (StatusCode::CONFLICT, "this integration uses manual client setup: no consent to ask for").into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such integration").into_response(),
    }
}

#[derive(serde::Deserialize)]
struct ConsentAnswer {
    state: Option<String>,
    admin_consent: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// What to do about a refused consent, by its AADSTS code (the `error_description` starts
/// with it) or its `error`.
fn consent_hint(error: &str, description: &str) -> (String, &'static str) {
    let code = description
        .strip_prefix("AADSTS")
        .map(|r| r.chars().take_while(char::is_ascii_digit).collect::<String>())
        .filter(|c| !c.is_empty())
        .map(|c| format!("AADSTS{c}"));
    let hint = match code.as_deref() {
        Some("AADSTS65004") => "The admin declined the consent. Open the consent again and choose Accept.",
        Some("AADSTS90094") | Some("AADSTS90008") => {
            "This account cannot consent for the organization. Sign in with a Global Administrator, Privileged Role Administrator or Cloud Application Administrator of the tenant."
        }
        Some("AADSTS50020") => {
            "The account belongs to another tenant. Sign in with an administrator of this integration's tenant."
        }
        Some("AADSTS700016") => "The application is unknown to Microsoft: check the host's platform_client_id.",
        Some("AADSTS50011") => {
            "The redirect URI is not registered on the host's app: add {admin_base_url}/ui/consent to it."
        }
        Some("AADSTS70011") => "The consent asked for a scope Microsoft refused: report this to the host's operator.",
        _ if error == "access_denied" => "The admin declined the consent. Open the consent again and choose Accept.",
        _ => "Open the consent again; if it fails again, the code says why (login.microsoftonline.com/error?code=...).",
    };
    (code.unwrap_or_else(|| error.to_string()), hint)
}

/// Microsoft's answer to an admin consent (the redirect URI). It comes from Microsoft's site,
/// so the session cookie (`SameSite=Strict`) does not come with it: the single-use `state`
/// is what ties it to the request this host made.
async fn consent_answer(State(ui): State<Ui>, Query(a): Query<ConsentAnswer>) -> Response {
    let Some(name) = a.state.as_deref().and_then(|s| ui.sessions.take_consent(s)) else {
        return page(
            StatusCode::BAD_REQUEST,
            pages::consent(None, Err(("state".into(), "This answer belongs to no consent this host asked for, or it was used already, or it is older than 30 minutes. Open the integration and ask for the consent again.".into()))),
        );
    };
    let display = ui.app.registry.entry(&name).and_then(|e| e.config.display_name).unwrap_or_else(|| name.clone());
    if a.admin_consent.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("true")) && a.error.is_none() {
        // It signs in now rather than at its next retry.
        if let Err(e) = ui.app.registry.restart(&name).await {
            tracing::warn!(integration = %name, "could not restart it after the consent: {e}");
        }
        tracing::info!(integration = %name, "admin consent granted");
        return page(StatusCode::OK, pages::consent(Some((&name, &display)), Ok(())));
    }
    let (code, hint) = consent_hint(a.error.as_deref().unwrap_or(""), a.error_description.as_deref().unwrap_or(""));
    tracing::warn!(integration = %name, %code, "admin consent refused");
    page(StatusCode::OK, pages::consent(Some((&name, &display)), Err((code, hint.to_string()))))
}

/// "Sign in (MFA)" on a user's row: starts the device code sign-in and shows the code.
async fn start_sign_in(State(ui): State<Ui>, headers: HeaderMap, Path(name): Path<String>, body: Body) -> Response {
    let (form, csrf) = match checked_form(&ui, &headers, body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let user = form.get("user").to_string();
    if ui.app.registry.runs_elsewhere(&name) {
        // Its sign-in runs where the integration runs (which keeps the refresh token).
        let path = format!("/integrations/{name}/users/{}/device-code", encode(&user));
        return match ui.app.registry.ask_owner(&name, "POST", &path, None).await {
            (StatusCode::ACCEPTED, v) => match serde_json::from_value::<crate::signin::SignIn>(v) {
                Ok(state) => page(StatusCode::OK, pages::sign_in(&name, &user, &state, &csrf)),
                Err(_) => (StatusCode::BAD_GATEWAY, "the host that runs it answered something else").into_response(),
            },
            (code, v) => {
                let detail = v["error"].as_str().unwrap_or("the host that runs it did not start it").to_string();
                let state = crate::signin::SignIn::Failed { code: "not-started".into(), detail };
                page(
                    if code.is_client_error() { code } else { StatusCode::BAD_GATEWAY },
                    pages::sign_in(&name, &user, &state, &csrf),
                )
            }
        };
    }
    match ui.app.sign_ins.start(&ui.app.registry, &name, &user).await {
        Ok(state) => page(StatusCode::OK, pages::sign_in(&name, &user, &state, &csrf)),
        Err(e) => {
            let state = crate::signin::SignIn::Failed { code: "not-started".into(), detail: e.to_string() };
            page(StatusCode::UNPROCESSABLE_ENTITY, pages::sign_in(&name, &user, &state, &csrf))
        }
    }
}

#[derive(serde::Deserialize)]
struct SignInQuery {
    user: String,
}

async fn sign_in_state(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<SignInQuery>,
) -> Response {
    let Some(csrf) = ui.sessions.current(&headers) else { return to_login() };
    if ui.app.registry.runs_elsewhere(&name) {
        let path = format!("/integrations/{name}/users/{}/device-code", encode(&q.user));
        return match ui.app.registry.ask_owner(&name, "GET", &path, None).await {
            (StatusCode::OK, v) => match serde_json::from_value::<crate::signin::SignIn>(v) {
                Ok(state) => page(StatusCode::OK, pages::sign_in(&name, &q.user, &state, &csrf)),
                Err(_) => (StatusCode::BAD_GATEWAY, "the host that runs it answered something else").into_response(),
            },
            _ => (StatusCode::NOT_FOUND, "no sign-in was started for this user").into_response(),
        };
    }
    match ui.app.sign_ins.get(&name, &q.user) {
        Some(state) => page(StatusCode::OK, pages::sign_in(&name, &q.user, &state, &csrf)),
        None => (StatusCode::NOT_FOUND, "no sign-in was started for this user").into_response(),
    }
}

#[derive(serde::Deserialize)]
struct UsersAskQuery {
    #[serde(default)]
    search: String,
    #[serde(default)]
    filter: crate::status::UsersFilter,
    page: Option<u32>,
}

/// Rows per page of the users list.
pub const USERS_PER_PAGE: u32 = 50;

async fn users_list(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(name): Path<String>,
    q: Result<Query<UsersAskQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(csrf) = ui.sessions.current(&headers) else { return to_login() };
    let Some(e) = ui.app.registry.entry(&name) else {
        return (StatusCode::NOT_FOUND, "no such integration").into_response();
    };
    if ui.app.registry.get(&name).is_none() && !ui.app.registry.runs_elsewhere(&name) {
        return (StatusCode::NOT_FOUND, "no such integration").into_response();
    }
    let Ok(Query(q)) = q else { return (StatusCode::BAD_REQUEST, "unknown filter or page").into_response() };
    let page = q.page.unwrap_or(1).max(1);
    let query = crate::status::UsersQuery {
        search: q.search.chars().take(200).collect(),
        filter: q.filter,
        offset: (page - 1).saturating_mul(USERS_PER_PAGE),
        limit: USERS_PER_PAGE,
    };
    let Some((list, counts)) = users_of(&ui, &name, query.clone()).await else {
        return (StatusCode::NOT_IMPLEMENTED, "this integration's plugin has no users list (WIT 3.2 or earlier)")
            .into_response();
    };
    let display = e.config.display_name.clone().unwrap_or_else(|| name.clone());
    let ask = pages::UsersAsk { search: &query.search, filter: q.filter, page, per_page: USERS_PER_PAGE };
    page_of(pages::users(&name, &display, &list, &counts, &ask, &csrf))
}

fn page_of(m: maud::Markup) -> Response {
    page(StatusCode::OK, m)
}

async fn change(State(ui): State<Ui>, headers: HeaderMap, Path(name): Path<String>, body: Body) -> Response {
    let (form, csrf) = match checked_form(&ui, &headers, body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(current) = ui.app.registry.entry(&name) else {
        return (StatusCode::NOT_FOUND, "no such integration").into_response();
    };
    match form.get("action") {
        "sync-now" => {
            if let Some(h) = ui.app.registry.get(&name) {
                let _ = h.sync_now().await;
            } else if ui.app.registry.runs_elsewhere(&name) {
                let _ = ui.app.registry.ask_owner(&name, "POST", &format!("/integrations/{name}/sync-now"), None).await;
            }
            Redirect::to(&format!("/ui/integrations/{name}?synced=1")).into_response()
        }
        "delete" => {
            let display = current.config.display_name.clone().unwrap_or_else(|| name.clone());
            page(StatusCode::OK, pages::confirm_delete(&name, &display, &csrf))
        }
        "delete-confirmed" => match ui.app.registry.delete(&name).await {
            Ok(r) => Redirect::to(&format!("/ui?deleted={name}&complete={}", r.complete)).into_response(),
            Err(e) => {
                let mut v = view_of(&current, None);
                v.error = Some(format!("Not deleted: {e}"));
                page(StatusCode::CONFLICT, pages::form(&v, &csrf))
            }
        },
        _ => {
            let refuse = |e: RegistryError| {
                let mut v = view_of_form(Some(name.clone()), &form, Some(&current));
                v.automated_available = ui.app.registry.platform_client_id().is_some();
                v.manual = manual_of(&form, v.automated_available);
                v.error = Some(refused_message(&e));
                page(StatusCode::UNPROCESSABLE_ENTITY, pages::form(&v, &csrf))
            };
            let platform = ui.app.registry.platform_client_id();
            let spec = spec_of(&form, Some(&current), platform.is_some());
            let config = match spec.into_config(&name, Some(&current.config), platform) {
                Ok(c) => c,
                Err(e) => return refuse(e.into()),
            };
            // A consent is asked for when the app or the tenant it is for changed.
            let consent = !config.manual_client_setup
                && (current.config.manual_client_setup
                    || !current.config.tenant_id.eq_ignore_ascii_case(&config.tenant_id));
            let tenant = config.tenant_id.clone();
            match ui.app.registry.update(config).await {
                Ok(()) if consent => to_consent(&ui, &name, &tenant),
                Ok(()) => Redirect::to(&format!("/ui/integrations/{name}?saved=1")).into_response(),
                Err(e) => refuse(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_integration_id_is_made_from_the_display_name() {
        assert_eq!(slug("Telia Company AB Teams Presence"), "telia-company-ab-teams-presence");
        assert_eq!(slug("  Åre & Co. "), "re-co");
        assert_eq!(slug("---"), "");
        assert!(crate::config::check_name(&slug(&"x y".repeat(40))).is_ok());
    }

    #[test]
    fn a_session_is_found_by_its_cookie_only_and_the_oldest_goes_first() {
        let s = Sessions { map: Default::default(), token: Secret::new("t"), consents: Default::default() };
        let (id, csrf) = s.open();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(&format!("other=1; {COOKIE}={id}")).unwrap());
        assert_eq!(s.current(&h), Some(csrf));
        let mut forged = HeaderMap::new();
        forged.insert(header::COOKIE, HeaderValue::from_str(&format!("{COOKIE}={}", random_hex())).unwrap());
        assert_eq!(s.current(&forged), None);
        for _ in 0..MAX_SESSIONS {
            s.open();
        }
        assert_eq!(s.current(&h), None, "the oldest session was pushed out");
        assert_eq!(s.map.lock().unwrap().len(), MAX_SESSIONS);
    }
}
