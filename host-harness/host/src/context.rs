//! [`IntegrationCtx`]: what the host gives one integration's instances. It outlives each
//! instance (a trap or a hot swap replaces the instance, not the context).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::bindings::outbound_http::{HttpError, Response};
use crate::clock::Clock;
use crate::error::StoreError;
use crate::http::HttpClient;
use crate::keys::NotificationKey;
use crate::sandbox::LogBudget;
use crate::seal::Kek;
use crate::store::StateStore;
use crate::switchboard::Switchboard;

/// Where the outcome of an outbound request goes: the integration's actor queue (waiting for
/// room in it); resolves to false once the actor is gone.
pub type HttpDone = Box<dyn Fn(u64, Result<Response, HttpError>) -> BoxFuture<bool> + Send + Sync>;

/// A boxed future, as the seams return them.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Everything the host gives one integration's instance. Survives instance replacement.
pub struct IntegrationCtx {
    /// Integration name.
    pub name: String,
    /// Origins (`scheme://host:port`) the plugin may call.
    pub allowed_origins: Vec<String>,
    /// Sends the plugin's requests.
    pub http: Arc<dyn HttpClient>,
    /// Durable state.
    pub store: Arc<dyn StateStore>,
    /// The customer's switchboard.
    pub switchboard: Arc<dyn Switchboard>,
    /// The notification key.
    pub key: Arc<NotificationKey>,
    /// Its RSA unwraps, done in parallel ahead of the plugin's calls.
    pub(crate) unwraps: crate::unwrap::Unwraps,
    /// Clock.
    pub clock: Arc<dyn Clock>,
    /// Hands an outbound request's outcome to the actor; false once the actor is gone.
    pub(crate) http_done: HttpDone,
    /// Requests the allow-list refused.
    pub refused_requests: AtomicU64,
    /// The host's own counters (webhook rejects, inbox replays), merged into the status.
    pub counters: Mutex<BTreeMap<String, u64>>,
    /// Outbound requests started and not yet answered to the plugin.
    pub(crate) in_flight: AtomicU64,
    /// The host is stopping: the actor takes no further command (nothing is cleaned up on the
    /// way out, as in a crash).
    pub(crate) stopping: AtomicBool,
    /// The plugin asked for a prompt `tick` (`scheduler.request-tick`).
    pub(crate) tick_requested: AtomicBool,
    /// Rows wait in the inbox that the actor has not pulled yet.
    pub(crate) inbox_waiting: AtomicBool,
    /// The plugin's log allowance.
    pub(crate) log_budget: Mutex<LogBudget>,
    /// Seals what the plugin stores, the key and the inbox rows.
    pub(crate) kek: Kek,
    /// The secret path segment of this integration's webhook URLs.
    pub(crate) webhook_token: String,
    /// Bounds of the inbox.
    pub(crate) inbox_limits: InboxLimits,
    /// Rows in the inbox now.
    pub(crate) inbox_rows: AtomicU64,
    /// Bytes in the inbox now (as stored).
    pub(crate) inbox_bytes: AtomicU64,
    /// Plugin state writes the store refused (sealed values; `None`: a delete), retried on
    /// every tick until they succeed; a later write of the key replaces its entry.
    pub(crate) pending_writes: Mutex<BTreeMap<String, Option<Vec<u8>>>>,
    /// Why the last state write failed, while writes are pending.
    pub(crate) state_error: Mutex<Option<String>>,
    /// This integration's handle on the host's metrics.
    pub metrics: crate::metrics::IntegrationMetrics,
    /// When the actor last finished a guest call (ticks come every second): readiness, read
    /// without a guest call.
    pub(crate) last_call: Mutex<Option<std::time::Instant>>,
    /// When the client secret expires, as the admin entered it (ms since the epoch).
    pub(crate) client_secret_expires_ms: Option<u64>,
}

/// Bytes of failed state writes an integration's context keeps for retrying: the plugin
/// cannot grow the host's memory without bound while the store is down.
pub const MAX_PENDING_WRITE_BYTES: usize = 64 << 20;

pub use crate::config::InboxLimits;

/// What [`IntegrationCtx`] needs besides its backends.
pub(crate) struct CtxParts {
    pub kek: Kek,
    pub webhook_token: String,
    pub inbox_limits: InboxLimits,
    pub metrics: crate::metrics::IntegrationMetrics,
    pub client_secret_expires_ms: Option<u64>,
}

impl IntegrationCtx {
    /// A context; `http_done` takes the outcomes of outbound requests.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        allowed_origins: Vec<String>,
        http: Arc<dyn HttpClient>,
        store: Arc<dyn StateStore>,
        switchboard: Arc<dyn Switchboard>,
        key: Arc<NotificationKey>,
        clock: Arc<dyn Clock>,
        http_done: HttpDone,
        parts: CtxParts,
    ) -> IntegrationCtx {
        IntegrationCtx {
            name,
            allowed_origins,
            http,
            store,
            switchboard,
            unwraps: crate::unwrap::Unwraps::new(key.clone()),
            key,
            clock,
            http_done,
            refused_requests: AtomicU64::new(0),
            counters: Default::default(),
            in_flight: AtomicU64::new(0),
            stopping: Default::default(),
            tick_requested: Default::default(),
            inbox_waiting: Default::default(),
            log_budget: Default::default(),
            kek: parts.kek,
            webhook_token: parts.webhook_token,
            inbox_limits: parts.inbox_limits,
            metrics: parts.metrics,
            last_call: Mutex::new(None),
            client_secret_expires_ms: parts.client_secret_expires_ms,
            inbox_rows: AtomicU64::new(0),
            inbox_bytes: AtomicU64::new(0),
            pending_writes: Default::default(),
            state_error: Default::default(),
        }
    }

    /// Where a plugin value is sealed: binds it to its integration and key.
    pub(crate) fn kv_place(&self, key: &str) -> String {
        format!("kv/{}/{key}", self.name)
    }

    /// Writes a plugin value (sealed; `None` deletes it). A write the store refuses as
    /// unavailable is kept and retried by [`IntegrationCtx::retry_writes`], up to
    /// [`MAX_PENDING_WRITE_BYTES`] of them (beyond, it is not kept: the plugin sees the error).
    pub(crate) fn write_state(&self, key: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
        let sealed = value.map(|v| self.kek.seal(&self.kv_place(key), v));
        let r = match &sealed {
            Some(v) => self.store.set(&self.name, key, v),
            None => self.store.delete(&self.name, key),
        };
        let mut pending = self.pending_writes.lock().unwrap();
        match r {
            Ok(()) => {
                pending.remove(key);
                Ok(())
            }
            Err(StoreError::Unavailable(why)) => {
                tracing::error!(integration = %self.name, %key, error = %why, "state write failed; retried every tick");
                self.count("state.write-failed");
                let held: usize = pending
                    .iter()
                    .filter(|(k, _)| k.as_str() != key)
                    .map(|(_, v)| v.as_ref().map_or(0, Vec::len))
                    .sum();
                if held + sealed.as_ref().map_or(0, Vec::len) <= MAX_PENDING_WRITE_BYTES {
                    pending.insert(key.to_string(), sealed);
                } else {
                    self.count("state.write-dropped");
                }
                *self.state_error.lock().unwrap() = Some(why.clone());
                Err(StoreError::Unavailable(why))
            }
            Err(e) => Err(e),
        }
    }

    /// A plugin value: a pending write of it first, else the store's (opened).
    pub(crate) fn read_state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let stored = match self.pending_writes.lock().unwrap().get(key) {
            Some(v) => v.clone(),
            None => self.store.get(&self.name, key)?,
        };
        stored
            .map(|v| self.kek.open(&self.kv_place(key), &v).map_err(|e| StoreError::Unavailable(e.to_string())))
            .transpose()
    }

    /// Retries the writes the store refused, oldest key first; stops at the first that fails.
    pub(crate) fn retry_writes(&self) {
        let mut pending = self.pending_writes.lock().unwrap();
        while let Some((key, value)) = pending.first_key_value().map(|(k, v)| (k.clone(), v.clone())) {
            let r = match &value {
                Some(v) => self.store.set(&self.name, &key, v),
                None => self.store.delete(&self.name, &key),
            };
            match r {
                Ok(()) => {
                    pending.remove(&key);
                    self.count("state.write-retried");
                }
                Err(e) => {
                    *self.state_error.lock().unwrap() = Some(e.to_string());
                    return;
                }
            }
        }
        *self.state_error.lock().unwrap() = None;
    }

    /// Adds one to a host counter.
    pub fn count(&self, name: &str) {
        self.count_by(name, 1);
    }

    /// Adds `n` to a host counter.
    pub fn count_by(&self, name: &str, n: u64) {
        *self.counters.lock().unwrap().entry(name.to_string()).or_default() += n;
    }

    /// The host counters so far.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let mut c = self.counters.lock().unwrap().clone();
        let u = &self.unwraps.counts;
        for (name, n) in [
            ("unwrap.parallel", &u.parallel),
            ("unwrap.in-call", &u.in_call),
            ("unwrap.on-demand", &u.on_demand),
            ("unwrap.cpu-us", &u.cpu_us),
            ("unwrap.in-call-cpu-us", &u.in_call_cpu_us),
        ] {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                c.insert(name.to_string(), n);
            }
        }
        c
    }

    /// Whether the host is stopping.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}
