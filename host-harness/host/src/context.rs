//! [`IntegrationCtx`]: what the host gives one integration's instances. It outlives each
//! instance (a trap or a hot swap replaces the instance, not the context).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::bindings::outbound_http::{HttpError, Response};
use crate::clock::Clock;
use crate::http::HttpClient;
use crate::keys::NotificationKey;
use crate::sandbox::LogBudget;
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
    pub key: NotificationKey,
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
        key: NotificationKey,
        clock: Arc<dyn Clock>,
        http_done: HttpDone,
    ) -> IntegrationCtx {
        IntegrationCtx {
            name,
            allowed_origins,
            http,
            store,
            switchboard,
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
        }
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
        self.counters.lock().unwrap().clone()
    }

    /// Whether the host is stopping.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}
