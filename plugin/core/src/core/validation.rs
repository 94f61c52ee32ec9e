//! Trusting notifications: the `validationTokens` of rich notifications are checked against
//! the login service's published signing keys (see [`crate::jwt`]) before any item of a batch
//! is looked at; clientState and the HMAC are checked per item afterwards.
//!
//! - Keys come from `{login}/common/.well-known/openid-configuration` → `jwks_uri`, are kept in
//!   state, and are re-read daily (Microsoft rotates them) and when a token names an unknown
//!   `kid` (at most every 5 minutes).
//! - A batch whose token names a key we do not know yet waits until the keys are re-read, then
//!   is processed or rejected; only a batch that carries one of our subscriptions' clientState
//!   waits. Each waiting batch is stored under a key of its own (never the whole queue
//!   rewritten), at most [`MAX_WAITING_BATCHES`] and [`MAX_WAITING_BYTES`] of them; the oldest
//!   go first beyond.
//! - A token must be issued for the integration's tenant (`tid`, `iss`): the configured tenant
//!   id when it is a GUID, else the tenant of the first token that verified (pinned).
//! - Verified tokens are cached until they expire: Graph reuses a token across many batches,
//!   so the RSA verification runs about once per token, not once per batch.

use std::collections::VecDeque;

use super::*;
use crate::jwt::{Jwk, KeySet, TokenError};

/// Re-read the signing keys this often (Microsoft rotates them daily).
pub const KEYS_REFRESH_MS: u64 = 12 * 60 * 60 * 1000;
/// An unknown `kid` re-reads the keys at most this often.
pub const KEYS_MIN_REFETCH_MS: u64 = 5 * 60 * 1000;
/// Batches held while the keys are re-read; the oldest are dropped beyond (the reconcile
/// repairs what they carried).
pub const MAX_WAITING_BATCHES: usize = 500;
/// Bytes of batches held while the keys are re-read.
pub const MAX_WAITING_BYTES: usize = 8 << 20;
const MAX_CACHED_TOKENS: usize = 256;
const STATE_KEYS: &str = "v1/signing-keys";
/// Schema 1 kept every waiting batch in one value; read once, then dropped.
const STATE_WAITING_V1: &str = "v1/waiting-batches";
/// One waiting batch per key: `v2/waiting/{seq:016x}`.
const WAITING_PREFIX: &str = "v2/waiting/";
/// The tenant the validation tokens are pinned to when the tenant id is a domain.
const STATE_TOKEN_TENANT: &str = "v2/token-tenant";

#[derive(serde::Serialize, serde::Deserialize)]
struct PersistedKeys {
    fetched_at_ms: u64,
    keys: Vec<Jwk>,
}

#[derive(Default)]
pub(super) struct SigningKeys {
    set: KeySet,
    fetched_at_ms: Option<u64>,
    fetching: bool,
    refresh_wanted: bool,
    retry: Backoff,
    pub problem: Option<Problem>,
    /// Verified tokens and their expiry.
    verified: HashMap<String, u64>,
    /// Batches waiting for the keys: their sequence number (their key) and raw body.
    waiting: VecDeque<(u64, String)>,
    /// Bytes of the waiting batches.
    waiting_bytes: usize,
    /// The next waiting batch's sequence number.
    next_waiting: u64,
    /// The tenant tokens must be issued for, pinned from the first verified token when the
    /// configured tenant id is a domain.
    tenant_pin: Option<String>,
    /// The keys came while the directory was still being restored: release the waiting
    /// batches once it is back.
    pub(super) release_pending: bool,
    /// Set while rich notifications arrive without tokens (a tenant misconfiguration the
    /// admin must fix); cleared by the next batch whose tokens verify.
    pub refused: Option<Problem>,
}

/// What to do with a batch.
pub(super) enum Verdict {
    /// Its tokens are good (or it needs none): process the items.
    Trusted,
    /// Wait for the keys.
    Wait,
    /// Drop it; counted.
    Refused,
}

impl SigningKeys {
    /// Whether no batch waits for the keys.
    pub fn waiting_is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

impl Core {
    pub(super) fn restore_keys(&mut self, env: &mut dyn Env) {
        if let Some(p) = env.load(STATE_KEYS).and_then(|b| serde_json::from_slice::<PersistedKeys>(&b).ok()) {
            self.keys.set = KeySet::new(p.keys);
            self.keys.fetched_at_ms = Some(p.fetched_at_ms);
        }
        self.keys.tenant_pin = env.load(STATE_TOKEN_TENANT).and_then(|b| String::from_utf8(b).ok());
        self.keys.waiting.clear();
        self.keys.waiting_bytes = 0;
        for key in env.keys(WAITING_PREFIX) {
            let seq = u64::from_str_radix(&key[WAITING_PREFIX.len()..], 16).ok();
            match (seq, env.load(&key).and_then(|b| String::from_utf8(b).ok())) {
                (Some(seq), Some(body)) => {
                    self.keys.waiting_bytes += body.len();
                    self.keys.next_waiting = self.keys.next_waiting.max(seq + 1);
                    self.keys.waiting.push_back((seq, body));
                }
                _ => self.effects.push(Effect::Store { key, value: None }),
            }
        }
        if let Some(w) = env.load(STATE_WAITING_V1).and_then(|b| serde_json::from_slice::<VecDeque<String>>(&b).ok()) {
            for body in w {
                self.park(body);
            }
            self.effects.push(Effect::Store { key: STATE_WAITING_V1.into(), value: None });
        }
    }

    /// Keeps a batch until the keys are re-read: stored under a key of its own; the oldest
    /// go beyond the bounds.
    fn park(&mut self, body: String) {
        let k = &mut self.keys;
        while !k.waiting.is_empty()
            && (k.waiting.len() >= MAX_WAITING_BATCHES || k.waiting_bytes + body.len() > MAX_WAITING_BYTES)
        {
            let (seq, old) = k.waiting.pop_front().unwrap();
            k.waiting_bytes -= old.len();
            self.effects.push(Effect::Store { key: waiting_key(seq), value: None });
            *self.counters.entry("rejected.waiting-overflow".into()).or_default() += 1;
        }
        let k = &mut self.keys;
        if body.len() > MAX_WAITING_BYTES {
            *self.counters.entry("rejected.waiting-overflow".into()).or_default() += 1;
            return;
        }
        let seq = k.next_waiting;
        k.next_waiting += 1;
        k.waiting_bytes += body.len();
        self.effects.push(Effect::Store { key: waiting_key(seq), value: Some(body.clone().into_bytes()) });
        self.keys.waiting.push_back((seq, body));
    }

    pub(super) fn drive_keys(&mut self, settings: &Settings, now: u64) {
        let k = &self.keys;
        if k.fetching || !k.retry.ready(now) {
            return;
        }
        let age = k.fetched_at_ms.map(|t| now.saturating_sub(t));
        let due = match age {
            None => true,
            Some(a) => a >= KEYS_REFRESH_MS || (k.refresh_wanted && a >= KEYS_MIN_REFETCH_MS),
        };
        if due {
            self.keys.fetching = true;
            let url = format!("{}/common/.well-known/openid-configuration", settings.login_base_url);
            self.start(Pending::OpenIdConfig, plain_get(&url));
        }
    }

    pub(super) fn on_openid_config(
        &mut self,
        settings: &Settings,
        outcome: Result<HttpResponse, HttpError>,
        now: u64,
        jitter: u8,
    ) {
        let uri = match &outcome {
            Ok(r) if r.status == 200 => serde_json::from_slice::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v.get("jwks_uri").and_then(|u| u.as_str()).map(str::to_owned))
                .ok_or_else(|| "openid-configuration has no jwks_uri".to_string()),
            Ok(r) => Err(format!("openid-configuration: HTTP {}", r.status)),
            Err(e) => Err(format!("openid-configuration: {e}")),
        };
        match uri {
            Ok(u) if super::on_origin(&settings.login_base_url, &u) => self.start(Pending::Jwks, plain_get(&u)),
            Ok(u) => self.keys_failed(format!("jwks_uri {u} is not on the login service"), now, jitter),
            Err(e) => self.keys_failed(e, now, jitter),
        }
    }

    pub(super) fn on_jwks(
        &mut self,
        env: &mut dyn Env,
        outcome: Result<HttpResponse, HttpError>,
        now: u64,
        jitter: u8,
    ) {
        let set = match &outcome {
            Ok(r) if r.status == 200 => KeySet::from_jwks_json(&r.body),
            Ok(r) => Err(format!("signing keys: HTTP {}", r.status)),
            Err(e) => Err(format!("signing keys: {e}")),
        };
        match set {
            Ok(set) => {
                self.count("signing-keys.fetched");
                let persisted = PersistedKeys { fetched_at_ms: now, keys: set.jwks.clone() };
                self.effects.push(Effect::Store {
                    key: STATE_KEYS.into(),
                    value: Some(serde_json::to_vec(&persisted).unwrap()),
                });
                let k = &mut self.keys;
                k.set = set;
                k.fetched_at_ms = Some(now);
                k.fetching = false;
                k.refresh_wanted = false;
                k.retry.succeed();
                k.problem = None;
                self.release_waiting(env);
            }
            Err(e) => self.keys_failed(e, now, jitter),
        }
    }

    fn keys_failed(&mut self, detail: String, now: u64, jitter: u8) {
        self.log(Level::Warn, "signing keys could not be read", vec![("detail".into(), detail.clone())]);
        let k = &mut self.keys;
        k.fetching = false;
        k.retry.fail(now, None, jitter);
        k.problem = Some(problem("signing-keys", detail));
    }

    /// Processes (or finally refuses) the batches that waited for the keys.
    pub(super) fn release_waiting(&mut self, env: &mut dyn Env) {
        if self.keys.waiting.is_empty() {
            return;
        }
        if !self.ready() {
            // Not before the directory is back: the core's tick releases them then.
            self.keys.release_pending = true;
            return;
        }
        self.keys.release_pending = false;
        let waiting = std::mem::take(&mut self.keys.waiting);
        self.keys.waiting_bytes = 0;
        for (seq, body) in waiting {
            self.effects.push(Effect::Store { key: waiting_key(seq), value: None });
            self.on_batch(env, body.as_bytes(), false);
        }
    }

    /// Checks a batch's validation tokens. `ours`: an item carries one of our subscriptions'
    /// `clientState` (see `carries_our_client_state`); only then may missing tokens show in
    /// the status, and a batch signed with a key not yet known wait for the keys (`may_wait`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn verdict(
        &mut self,
        body: &[u8],
        tokens: Option<&[String]>,
        rich: bool,
        ours: bool,
        items: usize,
        now: u64,
        may_wait: bool,
    ) -> Verdict {
        let tokens = tokens.unwrap_or_default();
        if tokens.is_empty() {
            if !rich {
                return Verdict::Trusted;
            }
            self.count_n("rejected.validation-token-missing", items);
            // Graph sent rich data without tokens: the tenant needs a setting (the hint says
            // which). A batch without our clientState proves nothing and is only counted.
            if ours {
                self.keys.refused = Some(problem(
                    "validation-tokens-missing",
                    "a batch of rich notifications came without validationTokens",
                ));
            }
            return Verdict::Refused;
        }
        let client_id = self.settings.as_ref().map(|s| s.client_id.clone()).unwrap_or_default();
        let configured = self.settings.as_ref().map(|s| s.tenant_id.to_ascii_lowercase()).unwrap_or_default();
        let tenant = if crate::model::is_guid(&configured) { Some(configured) } else { self.keys.tenant_pin.clone() };
        // Tokens carry Microsoft's times: check them by Microsoft's clock.
        let now = self.microsoft_now(now);
        for t in tokens {
            if self.keys.verified.get(t).is_some_and(|&exp| exp + crate::jwt::SKEW_MS > now) {
                continue;
            }
            match self.keys.set.verify(t, &client_id, tenant.as_deref(), now) {
                Ok((exp, tid)) => {
                    if tenant.is_none() {
                        self.log(
                            Level::Info,
                            "validation tokens pinned to a tenant",
                            vec![("tenant".into(), tid.clone())],
                        );
                        self.effects.push(Effect::Store {
                            key: STATE_TOKEN_TENANT.into(),
                            value: Some(tid.clone().into_bytes()),
                        });
                        self.keys.tenant_pin = Some(tid);
                    }
                    if self.keys.verified.len() >= MAX_CACHED_TOKENS {
                        self.keys.verified.retain(|_, e| *e + crate::jwt::SKEW_MS > now);
                        if self.keys.verified.len() >= MAX_CACHED_TOKENS {
                            self.keys.verified.clear();
                        }
                    }
                    self.keys.verified.insert(t.clone(), exp);
                }
                Err(TokenError::UnknownKey(_)) if may_wait && ours => {
                    self.keys.refresh_wanted = true;
                    self.count("notifications.waiting-for-keys");
                    self.park(String::from_utf8_lossy(body).into_owned());
                    return Verdict::Wait;
                }
                Err(e) => {
                    // Counted, not shown as the integration's health: anyone can post junk.
                    self.count_n("rejected.validation-token", items);
                    self.log(Level::Warn, "notification batch refused", vec![("reason".into(), e.to_string())]);
                    return Verdict::Refused;
                }
            }
        }
        self.keys.refused = None;
        Verdict::Trusted
    }
}

/// A GET without credentials (the login service's public documents).
fn plain_get(url: &str) -> HttpRequest {
    HttpRequest { method: "GET".into(), url: url.into(), headers: vec![], body: Vec::new() }
}

fn waiting_key(seq: u64) -> String {
    format!("{WAITING_PREFIX}{seq:016x}")
}
