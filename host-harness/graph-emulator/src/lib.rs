//! A Microsoft Graph / Entra ID emulator: the stand-in for Microsoft in tests and the demo.
//!
//! It follows Microsoft's documentation of Graph and Entra ID (and the project's OpenAPI subset
//! of the operations the plugin calls), not what the plugin happens to need. It shares no code
//! with the plugin or the host, so that a bug they share cannot hide here: the token endpoint answers with Entra's error JSON and AADSTS codes; `/users` pages
//! with `@odata.nextLink` (`$top` 1-999, default 100); presence aggregates sessions as Graph
//! documents; `getPresencesByUserId` takes at most 650 ids; subscriptions enforce the
//! presence rules (delegated only, `updated` only, at most 650 users, at most 60 minutes, one
//! per app per delegated user, encryption certificate for rich data) and run the validation
//! handshake against `notificationUrl` (and `lifecycleNotificationUrl`) before answering
//! `201`; change notifications are encrypted exactly as Graph does (RSA-OAEP-SHA1 wrapped
//! AES-256 key, HMAC-SHA256, AES-CBC/PKCS7 with IV = first 16 key bytes).
//!
//! One deliberate difference: `notificationUrl` may be plain `http` when it points to
//! loopback, so tests need no TLS certificates. Anything else must be `https`, as in Graph.
//!
//! Groups (`Tenant::set_group`, or `PUT /_emulator/tenants/{t}/groups/{id}`) answer
//! `/groups/{id}/transitiveMembers` (and its `microsoft.graph.user` cast) with nested members
//! flattened, typed by `@odata.type`, paged like `/users`, and only to an app token with
//! `GroupMember.Read.All`, `Group.Read.All` or `Directory.Read.All`.
//!
//! The control API under `/_emulator` changes a user's Teams presence (as if the user did it
//! in Teams), toggles MFA, lists subscriptions and injects faults.

pub mod model;
mod routes;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use aws_lc_rs::rsa::{OAEP_SHA1_MGF1SHA1, OaepPublicEncryptingKey, PublicEncryptingKey};
use base64::Engine as _;
use tokio::sync::mpsc;

pub use model::{Fault, PlatformApp, Subscription, TenantSeed, World};

/// Microsoft's clock, as the emulator keeps time: tokens, expirations and sessions follow it.
/// Tests move it forward, or set it apart from the host's.
pub trait Clock: Send + Sync + 'static {
    /// Now, in ms since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
    }
}

/// A notification waiting to be delivered.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    url: String,
    sub_id: String,
    client_state: Option<String>,
    tenant: String,
    expires_at_ms: u64,
    spki: Vec<u8>,
    cert_id: String,
    thumbprint: String,
    rich: bool,
    user_id: String,
    availability: String,
    activity: String,
    sequence: String,
    client_id: String,
    /// `statusMessage` and `outOfOfficeSettings` of the new presence.
    note: (serde_json::Value, serde_json::Value),
}

impl Delivery {
    /// A notification of subscription `s` about `user_id`'s new presence.
    fn new(s: &Subscription, user_id: &str, availability: &str, activity: &str, seq: u64) -> Delivery {
        Delivery {
            url: s.notification_url.clone(),
            sub_id: s.id.clone(),
            client_state: s.client_state.clone(),
            tenant: s.tenant.clone(),
            expires_at_ms: s.expires_at_ms,
            spki: s.spki.clone(),
            cert_id: s.cert_id.clone(),
            thumbprint: s.thumbprint.clone(),
            rich: s.include_resource_data,
            user_id: user_id.to_string(),
            availability: availability.to_string(),
            activity: activity.to_string(),
            sequence: sequence_string(seq),
            client_id: s.client_id.clone(),
            note: (serde_json::Value::Null, serde_json::Value::Null),
        }
    }
}

/// Delivery counters.
#[derive(Debug, Default, serde::Serialize)]
pub struct DeliveryStats {
    /// Notifications put in the delivery queue.
    pub queued: AtomicU64,
    /// Notifications acknowledged with 2xx.
    pub delivered: AtomicU64,
    /// Delivery attempts that failed (non-2xx or no answer).
    pub failed_attempts: AtomicU64,
    /// Notifications given up after all retries.
    pub dropped: AtomicU64,
}

pub(crate) struct Inner {
    pub(crate) world: Mutex<World>,
    pub(crate) base_url: RwLock<String>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) http: reqwest::Client,
    deliveries: mpsc::UnboundedSender<Delivery>,
    pub(crate) stats: DeliveryStats,
    /// When each user's presence was last written by an app (setPresence/clearPresence).
    pub(crate) writes: Mutex<HashMap<String, std::time::Instant>>,
    /// The login service's token signing key (validationTokens).
    pub(crate) signer: Mutex<Signer>,
    /// Set by [`Emulator::stop`]: the listeners close and the timers end.
    stopped: tokio::sync::watch::Sender<bool>,
}

/// The login service's signing key, and the validation tokens issued with it (Graph reuses a
/// token for a while, so the emulator issues one per app and tenant per hour).
pub(crate) struct Signer {
    key: aws_lc_rs::rsa::KeyPair,
    kid: String,
    issued: HashMap<(String, String), (String, u64)>,
}

/// How long a validation token lives.
const VALIDATION_TOKEN_LIFETIME_MS: u64 = 60 * 60 * 1000;

impl Signer {
    fn new() -> Signer {
        let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key generation");
        Signer { key, kid: uuid::Uuid::new_v4().simple().to_string(), issued: HashMap::new() }
    }

    /// The JWKS entries of the current key.
    pub(crate) fn jwks(&self) -> Vec<serde_json::Value> {
        use aws_lc_rs::signature::KeyPair as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let pk = self.key.public_key();
        vec![serde_json::json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": b64.encode(pk.modulus().big_endian_without_leading_zero()),
            "e": b64.encode(pk.exponent().big_endian_without_leading_zero()),
        })]
    }

    /// A validation token for `client_id` in `tenant` (v1.0 style: the caller in `appid`).
    pub(crate) fn token(&mut self, tenant: &str, client_id: &str, now_ms: u64) -> String {
        let k = (tenant.to_string(), client_id.to_string());
        if let Some((t, exp)) = self.issued.get(&k)
            && *exp > now_ms + 5 * 60 * 1000
        {
            return t.clone();
        }
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let exp = now_ms + VALIDATION_TOKEN_LIFETIME_MS;
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5t": self.kid, "kid": self.kid});
        let claims = serde_json::json!({
            "aud": client_id,
            "iss": format!("https://sts.windows.net/{tenant}/"),
            "iat": now_ms / 1000,
            "nbf": now_ms / 1000,
            "exp": exp / 1000,
            "appid": wire::CHANGE_TRACKING_APP_ID,
            "appidacr": "2",
            "idp": format!("https://sts.windows.net/{tenant}/"),
            "tid": tenant,
            "ver": "1.0",
        });
        let input = format!("{}.{}", b64.encode(header.to_string()), b64.encode(claims.to_string()));
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .expect("RSA signing");
        let token = format!("{input}.{}", b64.encode(&sig));
        self.issued.insert(k, (token.clone(), exp));
        token
    }
}

/// The emulator. Cheap to clone.
#[derive(Clone)]
pub struct Emulator {
    pub(crate) inner: Arc<Inner>,
}

impl Emulator {
    /// A new, empty emulator using `clock`. Must be called inside a tokio runtime.
    pub fn new(clock: Arc<dyn Clock>) -> Emulator {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            world: Mutex::new(World::default()),
            base_url: RwLock::new(String::new()),
            clock,
            http: reqwest::Client::builder().build().expect("http client"),
            deliveries: tx,
            stats: DeliveryStats::default(),
            writes: Mutex::new(HashMap::new()),
            signer: Mutex::new(Signer::new()),
            stopped: tokio::sync::watch::Sender::new(false),
        });
        tokio::spawn(deliver_loop(Arc::downgrade(&inner), rx));
        tokio::spawn(expire_sessions(Arc::downgrade(&inner)));
        Emulator { inner }
    }

    /// Adds a seeded tenant.
    pub fn add_tenant(&self, seed: &TenantSeed) {
        let mut t = seed.build();
        let now = self.inner.clock.now_ms();
        for u in &mut t.users {
            u.last_aggregate = u.aggregate(now);
        }
        self.with_world(|w| w.tenants.insert(t.id.clone(), t));
    }

    /// Serves on `listener` (in the background). Returns the base URL
    /// (`http://127.0.0.1:PORT`), used for both the login and the Graph base URL.
    pub async fn serve(&self, listener: tokio::net::TcpListener) -> anyhow::Result<String> {
        let addr = listener.local_addr()?;
        let base = format!("http://{addr}");
        *self.inner.base_url.write().unwrap() = base.clone();
        let app = routes::router(self.clone());
        let mut stopped = self.inner.stopped.subscribe();
        tokio::spawn(async move {
            let stop = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let _ = axum::serve(listener, app).with_graceful_shutdown(stop).await;
        });
        Ok(base)
    }

    /// Stops serving (open connections finish their request and close) and ends the
    /// background timers, so that the emulator's world is freed once the last handle goes.
    /// Until then a served listener holds the emulator, and its session timer scans every
    /// user four times a second.
    pub fn stop(&self) {
        self.inner.stopped.send_replace(true);
    }

    /// Binds `127.0.0.1:0` and serves.
    pub async fn start(&self) -> anyhow::Result<String> {
        self.serve(tokio::net::TcpListener::bind("127.0.0.1:0").await?).await
    }

    /// Runs `f` on a tenant (by id or domain); panics if there is no such tenant.
    pub fn with_tenant<R>(&self, tenant: &str, f: impl FnOnce(&mut model::Tenant) -> R) -> R {
        self.with_world(|w| {
            let k = w.tenant_key(tenant).expect("tenant exists");
            f(w.tenants.get_mut(&k).unwrap())
        })
    }

    /// Registers a multi-tenant app (the switchboard vendor's, for the automated setup): a
    /// tenant gets it through admin consent.
    pub fn add_platform_app(&self, app: model::PlatformApp) {
        self.with_world_no_expiry(|w| {
            w.platform_apps.insert(app.client_id.clone(), app);
        });
    }

    /// The user `upn` enters `user_code` at the device login page, signs in (with MFA where
    /// required) and accepts (`accept`) or declines; false when no such code waits.
    pub fn answer_device_code(&self, user_code: &str, upn: &str, accept: bool) -> bool {
        self.with_world_no_expiry(|w| {
            let Some(k) = w.device_codes.iter().find(|(_, d)| d.user_code == user_code).map(|(k, _)| k.clone()) else {
                return false;
            };
            let tenant = w.device_codes[&k].tenant.clone();
            let Some(user_id) = w.tenants.get_mut(&tenant).and_then(|t| t.user_by_upn(upn)).map(|u| u.id.clone())
            else {
                return false;
            };
            w.device_codes.get_mut(&k).unwrap().state =
                if accept { model::DeviceCodeState::Approved(user_id) } else { model::DeviceCodeState::Declined };
            true
        })
    }

    /// Makes every access token issued so far expire now (Graph then answers 401).
    pub fn expire_all_tokens(&self) {
        let now = self.inner.clock.now_ms();
        self.with_world_no_expiry(|w| w.tokens.values_mut().for_each(|t| t.expires_at_ms = t.expires_at_ms.min(now)));
    }

    /// Deletes a subscription at "Microsoft" (an admin or a cleanup job did); no notification
    /// tells the app. False if there is no such subscription.
    pub fn delete_subscription(&self, id: &str) -> bool {
        self.with_world_no_expiry(|w| w.subscriptions.remove(id).is_some())
    }

    /// Requests that came sooner than a `Retry-After` (rate limit or injected fault) allowed,
    /// with what they were.
    pub fn early_requests(&self) -> (u64, Vec<String>) {
        self.with_world_no_expiry(|w| (w.early_requests, w.early_log.clone()))
    }

    /// Invalidates every `/users/delta` token of the tenant: the next delta round gets `410 Gone`.
    pub fn expire_delta_tokens(&self, tenant: &str) {
        self.with_tenant(tenant, |t| t.delta_epoch += 1);
    }

    /// Runs `f` on the world.
    pub fn with_world<R>(&self, f: impl FnOnce(&mut World) -> R) -> R {
        let mut w = self.inner.world.lock().unwrap();
        let r = f(&mut w);
        // `f` may have set something that runs out: the session timer looks at every user.
        w.next_expiry_ms = 0;
        r
    }

    /// [`Emulator::with_world`] for the emulator's own code, which sets nothing that runs
    /// out through it (the session timer keeps skipping its scan).
    pub(crate) fn with_world_no_expiry<R>(&self, f: impl FnOnce(&mut World) -> R) -> R {
        f(&mut self.inner.world.lock().unwrap())
    }

    /// Sets a user's Teams-client session (as if the user changed it in Teams), or the
    /// user-preferred presence when `preferred`. Notifies subscribers if the aggregate changed.
    pub fn set_presence(
        &self,
        tenant: &str,
        user_id: &str,
        availability: &str,
        activity: &str,
        preferred: bool,
    ) -> bool {
        self.change_presence(tenant, user_id, availability, activity, preferred, true)
    }

    /// Sets (or clears: `None`) a user's status message as if the user typed it in Teams:
    /// `(text, expiry ms)`. Notifies subscribers.
    pub fn set_status_message(&self, tenant: &str, user_id: &str, message: Option<(&str, Option<u64>)>) -> bool {
        self.change_note(tenant, user_id, |u, now| {
            u.status_message = message.map(|(content, expires_at_ms)| model::StatusMessage {
                content: content.into(),
                expires_at_ms,
                published_ms: now,
            })
        })
    }

    /// Turns a user's out of office (automatic replies) on with `message`, or off. Notifies
    /// subscribers.
    pub fn set_out_of_office(&self, tenant: &str, user_id: &str, message: Option<&str>) -> bool {
        self.change_note(tenant, user_id, |u, _| u.out_of_office = message.map(str::to_string))
    }

    /// A user's status message now (its text).
    pub fn status_message(&self, tenant: &str, user_id: &str) -> Option<String> {
        let now = self.inner.clock.now_ms();
        let w = self.inner.world.lock().unwrap();
        let key = w.tenant_key(tenant)?;
        let t = &w.tenants[&key];
        let u = &t.users[*t.by_id.get(user_id)?];
        u.status_message_at(now).map(|m| m.content.clone())
    }

    fn change_note(&self, tenant: &str, user_id: &str, f: impl FnOnce(&mut model::User, u64)) -> bool {
        let now = self.inner.clock.now_ms();
        let mut w = self.inner.world.lock().unwrap();
        let Some(key) = w.tenant_key(tenant) else { return false };
        let Some(user) = w.tenants.get_mut(&key).and_then(|t| t.user_mut(user_id)) else { return false };
        f(user, now);
        if let Some(e) = user.next_expiry_ms() {
            w.next_expiry_ms = w.next_expiry_ms.min(e);
        }
        let deliveries = touch(&mut w, &key, user_id, now);
        drop(w);
        self.send(deliveries);
        true
    }

    /// Like [`Emulator::set_presence`] on the Teams-client session, but the change
    /// notification is lost (never delivered), as happens to real ones now and then.
    pub fn set_presence_losing_notification(
        &self,
        tenant: &str,
        user_id: &str,
        availability: &str,
        activity: &str,
    ) -> bool {
        self.change_presence(tenant, user_id, availability, activity, false, false)
    }

    fn change_presence(
        &self,
        tenant: &str,
        user_id: &str,
        availability: &str,
        activity: &str,
        preferred: bool,
        deliver: bool,
    ) -> bool {
        let now = self.inner.clock.now_ms();
        let mut w = self.inner.world.lock().unwrap();
        let Some(key) = w.tenant_key(tenant) else { return false };
        let Some(user) = w.tenants.get_mut(&key).and_then(|t| t.user_mut(user_id)) else { return false };
        let s = model::Session {
            availability: availability.into(),
            activity: activity.into(),
            expires_at_ms: None,
            set_at_ms: now,
        };
        if preferred {
            user.preferred = Some(s);
        } else {
            user.sessions.insert(model::TEAMS_CLIENT_SESSION.into(), s);
        }
        let deliveries = touch(&mut w, &key, user_id, now);
        drop(w);
        if deliver {
            self.send(deliveries);
        }
        true
    }

    pub(crate) fn send(&self, deliveries: Vec<Delivery>) {
        for d in deliveries {
            self.inner.stats.queued.fetch_add(1, Ordering::Relaxed);
            let _ = self.inner.deliveries.send(d);
        }
    }

    /// Notifications queued so far, and how many of them are done with (delivered or given
    /// up). Equal: nothing of Microsoft's is on its way to the host.
    pub fn deliveries(&self) -> (u64, u64) {
        let s = &self.inner.stats;
        let done = s.delivered.load(Ordering::SeqCst) + s.dropped.load(Ordering::SeqCst);
        (s.queued.load(Ordering::SeqCst), done)
    }

    /// The current aggregated presence (availability, activity) of the user at `index` (in
    /// seeding order) of `tenant`, if there is one.
    pub fn truth_at(&self, tenant: &str, index: usize) -> Option<(String, String)> {
        let now = self.inner.clock.now_ms();
        let w = self.inner.world.lock().unwrap();
        let t = w.tenant_key(tenant).and_then(|k| w.tenants.get(&k))?;
        t.users.get(index).map(|u| u.aggregate(now))
    }

    /// Every user's current aggregated presence in `tenant`: id → (availability, activity).
    pub fn truth(&self, tenant: &str) -> HashMap<String, (String, String)> {
        let now = self.inner.clock.now_ms();
        let w = self.inner.world.lock().unwrap();
        w.tenant_key(tenant)
            .and_then(|k| w.tenants.get(&k))
            .map(|t| t.users.iter().map(|u| (u.id.clone(), u.aggregate(now))).collect())
            .unwrap_or_default()
    }

    /// Live subscriptions.
    pub fn subscriptions(&self) -> Vec<Subscription> {
        let now = self.inner.clock.now_ms();
        self.inner.world.lock().unwrap().subscriptions.values().filter(|s| s.expires_at_ms > now).cloned().collect()
    }

    /// Builds a change-notification item exactly as Graph would send it for subscription
    /// `sub_id` (encrypted with its certificate), without delivering it. Tests tamper with it
    /// to check that the plugin rejects forgeries.
    pub fn notification_for(
        &self,
        sub_id: &str,
        user_id: &str,
        availability: &str,
        activity: &str,
    ) -> Option<serde_json::Value> {
        let d = {
            let mut w = self.inner.world.lock().unwrap();
            w.sequence += 1;
            let seq = w.sequence;
            let s = w.subscriptions.get(sub_id)?;
            Delivery::new(s, user_id, availability, activity, seq)
        };
        notification_item(&d).ok()
    }

    /// Wraps items of subscription `sub_id` into a notification POST body as Graph sends it,
    /// with the validation token of the subscription's app and tenant.
    pub fn batch_body(&self, sub_id: &str, items: Vec<serde_json::Value>) -> serde_json::Value {
        let (tenant, client) = self
            .with_world_no_expiry(|w| w.subscriptions.get(sub_id).map(|s| (s.tenant.clone(), s.client_id.clone())))
            .unwrap_or_default();
        let token = self.inner.signer.lock().unwrap().token(&tenant, &client, self.inner.clock.now_ms());
        serde_json::json!({ "value": items, "validationTokens": [token] })
    }

    /// Rotates the login service's signing key (Microsoft does daily): tokens issued from now on
    /// carry a `kid` that relying parties learn only by re-reading the keys.
    pub fn rotate_signing_key(&self) {
        *self.inner.signer.lock().unwrap() = Signer::new();
    }

    /// Sends `reauthorizationRequired` for a subscription to its lifecycle URL (as Graph does
    /// before an access token behind it expires, or when the admin changes permissions).
    /// Graph delivers no change notifications for it until the app renews it.
    pub fn require_reauthorization(&self, sub_id: &str) -> bool {
        let Some((url, item, tenant, client)) = self.with_world_no_expiry(|w| {
            let s = w.subscriptions.get_mut(sub_id)?;
            s.reauthorization_required = true;
            let url = s.lifecycle_notification_url.clone().unwrap_or_else(|| s.notification_url.clone());
            let item = serde_json::json!({
                "subscriptionId": s.id,
                "subscriptionExpirationDateTime": wire::graph_time(s.expires_at_ms),
                "tenantId": s.tenant,
                "organizationId": s.tenant,
                "clientState": s.client_state,
                "lifecycleEvent": "reauthorizationRequired",
            });
            Some((url, item, s.tenant.clone(), s.client_id.clone()))
        }) else {
            return false;
        };
        let token = self.inner.signer.lock().unwrap().token(&tenant, &client, self.inner.clock.now_ms());
        let body = serde_json::json!({ "value": [item], "validationTokens": [token] }).to_string();
        let http = self.inner.http.clone();
        tokio::spawn(async move {
            for _ in 0..8 {
                let r = http.post(&url).header("content-type", "application/json").body(body.clone()).send().await;
                if matches!(&r, Ok(resp) if resp.status().is_success()) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        });
        true
    }

    /// Sets the presence rate limit (requests per window) for every app.
    pub fn set_presence_limit(&self, limit: usize, window: std::time::Duration) {
        self.with_world_no_expiry(|w| w.presence_limit = (limit, window.as_millis() as u64));
    }

    /// (presence requests answered 429, requests that came sooner than Retry-After allowed).
    pub fn throttling(&self) -> (u64, u64) {
        self.with_world_no_expiry(|w| (w.throttled, w.early_requests))
    }

    /// The presence sessions of a user: session id → (availability, activity).
    pub fn sessions(&self, tenant: &str, user_id: &str) -> std::collections::BTreeMap<String, (String, String)> {
        let now = self.inner.clock.now_ms();
        self.with_world_no_expiry(|w| {
            let k = w.tenant_key(tenant)?;
            let t = w.tenants.get_mut(&k)?;
            let u = t.user_mut(user_id)?;
            Some(
                u.sessions
                    .iter()
                    .filter(|(_, s)| s.expires_at_ms.is_none_or(|e| e > now))
                    .map(|(k, s)| (k.clone(), (s.availability.clone(), s.activity.clone())))
                    .collect(),
            )
        })
        .unwrap_or_default()
    }

    /// How many requests matched a route name such as `POST /v1.0/users/{id}/presence/setPresence`
    /// (requests inside a `$batch` count one each).
    pub fn count(&self, route: &str) -> u64 {
        self.with_world_no_expiry(|w| w.requests.get(route).copied().unwrap_or(0))
    }

    /// When an app last wrote the presence of `user_id` (setPresence or clearPresence).
    pub fn last_write(&self, user_id: &str) -> Option<std::time::Instant> {
        self.inner.writes.lock().unwrap().get(user_id).copied()
    }

    /// Delivery counters.
    pub fn stats(&self) -> &DeliveryStats {
        &self.inner.stats
    }

    /// Requests served, by route.
    pub fn request_counts(&self) -> std::collections::BTreeMap<String, u64> {
        self.inner.world.lock().unwrap().requests.clone()
    }
}

/// Ends presence sessions (and preferred presences) whose expiration passed, notifying the
/// resulting changes, as Graph does when an app session's `expirationDuration` runs out.
async fn expire_sessions(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let Some(inner) = inner.upgrade() else { return };
        if *inner.stopped.borrow() {
            return;
        }
        let now = inner.clock.now_ms();
        let mut w = inner.world.lock().unwrap();
        if now < w.next_expiry_ms {
            continue;
        }
        let mut expired = Vec::new();
        let mut next = u64::MAX;
        for (tk, t) in w.tenants.iter_mut() {
            for u in t.users.iter_mut() {
                let before = u.sessions.len();
                u.sessions.retain(|_, s| s.expires_at_ms.is_none_or(|e| e > now));
                let pref_gone = u.preferred.as_ref().is_some_and(|p| p.expires_at_ms.is_some_and(|e| e <= now));
                if pref_gone {
                    u.preferred = None;
                }
                let message_gone = u.status_message.as_ref().is_some_and(|m| m.expires_at_ms.is_some_and(|e| e <= now));
                if message_gone {
                    u.status_message = None;
                }
                if before != u.sessions.len() || pref_gone || message_gone {
                    expired.push((tk.clone(), u.id.clone()));
                }
                next = next.min(u.next_expiry_ms().unwrap_or(u64::MAX));
            }
        }
        w.next_expiry_ms = next;
        let mut deliveries = Vec::new();
        for (t, u) in expired {
            deliveries.extend(touch(&mut w, &t, &u, now));
        }
        drop(w);
        for d in deliveries {
            inner.stats.queued.fetch_add(1, Ordering::Relaxed);
            let _ = inner.deliveries.send(d);
        }
    }
}

/// Recomputes a user's aggregate; if it changed, bumps the sequence and returns the
/// notifications to deliver.
pub(crate) fn touch(w: &mut World, tenant: &str, user_id: &str, now: u64) -> Vec<Delivery> {
    w.sequence += 1;
    let seq = w.sequence;
    let Some(user) = w.tenants.get_mut(tenant).and_then(|t| t.user_mut(user_id)) else { return vec![] };
    let agg = user.aggregate(now);
    let note = (user.status_message_at(now).cloned(), user.out_of_office.clone());
    if agg == user.last_aggregate && note == user.last_note {
        return vec![];
    }
    user.last_aggregate = agg.clone();
    user.last_note = note;
    user.sequence = seq;
    let note_json = user.note_json(now);
    w.subscriptions
        .values()
        .filter(|s| {
            s.tenant == tenant && s.expires_at_ms > now && !s.reauthorization_required && s.user_ids.contains(user_id)
        })
        .map(|s| Delivery { note: note_json.clone(), ..Delivery::new(s, user_id, &agg.0, &agg.1, seq) })
        .collect()
}

/// The sequence number string of a user's current presence.
pub(crate) fn sequence_string(seq: u64) -> String {
    format!("{seq:020}")
}

fn notification_item(d: &Delivery) -> anyhow::Result<serde_json::Value> {
    let mut item = serde_json::json!({
        "subscriptionId": d.sub_id,
        "clientState": d.client_state,
        "changeType": "updated",
        "tenantId": d.tenant,
        "organizationId": d.tenant,
        "resource": format!("communications/presences/{}", d.user_id),
        "subscriptionExpirationDateTime": wire::graph_time(d.expires_at_ms),
        "resourceData": {
            "@odata.id": format!("users/{}/presence", d.user_id),
            "@odata.type": "#microsoft.graph.presence",
            "id": d.user_id,
        },
    });
    if d.rich {
        let plain = serde_json::json!({
            "@odata.type": "#microsoft.graph.presence",
            "@odata.id": format!("users/{}/presence", d.user_id),
            "id": d.user_id,
            "availability": d.availability,
            "activity": d.activity,
            "sequenceNumber": d.sequence,
            "statusMessage": d.note.0,
            "outOfOfficeSettings": d.note.1,
        });
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).map_err(|_| anyhow::anyhow!("randomness"))?;
        let (data, sig) = wire::encrypt_resource_data(&key, plain.to_string().as_bytes());
        let pk = OaepPublicEncryptingKey::new(
            PublicEncryptingKey::from_der(&d.spki).map_err(|e| anyhow::anyhow!("certificate key: {e}"))?,
        )
        .map_err(|_| anyhow::anyhow!("certificate key is not RSA"))?;
        let mut wrapped = vec![0u8; pk.ciphertext_size()];
        let n =
            pk.encrypt(&OAEP_SHA1_MGF1SHA1, &key, &mut wrapped, None).map_err(|_| anyhow::anyhow!("RSA-OAEP"))?.len();
        wrapped.truncate(n);
        item["encryptedContent"] = serde_json::json!({
            "data": data,
            "dataSignature": sig,
            "dataKey": base64::engine::general_purpose::STANDARD.encode(&wrapped),
            "encryptionCertificateId": d.cert_id,
            "encryptionCertificateThumbprint": d.thumbprint,
        });
    }
    Ok(item)
}

/// Delivers notifications: batches what is queued per URL (Graph may put several into one
/// POST), at most 8 POSTs at once, retrying failures with exponential backoff a bounded
/// number of times (Graph retries for up to 4 hours; the emulator for about a minute).
async fn deliver_loop(inner: std::sync::Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Delivery>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(8));
    while let Some(first) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        let mut batch = vec![first];
        while batch.len() < 100 {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        let mut by_url: HashMap<String, Vec<Delivery>> = HashMap::new();
        for d in batch {
            by_url.entry(d.url.clone()).or_default().push(d);
        }
        for (url, ds) in by_url {
            let items: Vec<serde_json::Value> = ds.iter().filter_map(|d| notification_item(d).ok()).collect();
            let count = items.len() as u64;
            inner.stats.dropped.fetch_add(ds.len() as u64 - count, Ordering::Relaxed);
            // One validation token per app and tenant in the batch (Microsoft's rich-notification docs: one token per app and tenant).
            let pairs: std::collections::BTreeSet<(String, String)> =
                ds.iter().filter(|d| d.rich).map(|d| (d.tenant.clone(), d.client_id.clone())).collect();
            let now = inner.clock.now_ms();
            let tokens: Vec<String> = {
                let mut signer = inner.signer.lock().unwrap();
                pairs.iter().map(|(t, c)| signer.token(t, c, now)).collect()
            };
            let body = if tokens.is_empty() {
                serde_json::json!({ "value": items })
            } else {
                serde_json::json!({ "value": items, "validationTokens": tokens })
            }
            .to_string();
            let permit = permits.clone().acquire_owned().await.expect("semaphore");
            let inner = inner.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let mut delay = std::time::Duration::from_millis(250);
                for attempt in 0..8 {
                    let r = inner
                        .http
                        .post(&url)
                        .header("content-type", "application/json")
                        .timeout(std::time::Duration::from_secs(10))
                        .body(body.clone())
                        .send()
                        .await;
                    if matches!(&r, Ok(resp) if resp.status().is_success()) {
                        inner.stats.delivered.fetch_add(count, Ordering::Relaxed);
                        return;
                    }
                    inner.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    if attempt < 7 {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_secs(15));
                    }
                }
                inner.stats.dropped.fetch_add(count, Ordering::Relaxed);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_emulator_closes_its_listener_and_is_freed() {
        let emu = Emulator::new(Arc::new(SystemClock));
        let base = emu.start().await.unwrap();
        // A client that keeps its connection open, as a host's does.
        let http = reqwest::Client::new();
        let r = http.get(format!("{base}/v1.0/users")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let weak = Arc::downgrade(&emu.inner);
        emu.stop();
        drop(emu);
        // The listener's task ends and, with it, the last handle: the world is freed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while weak.upgrade().is_some() {
            assert!(std::time::Instant::now() < deadline, "the emulator is still held after stop");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(reqwest::get(format!("{base}/v1.0/users")).await.is_err(), "the listener still answers");
    }
}
