//! The wasmtime embedding: one `bindgen!` site, one `Host` impl per WIT interface, and one
//! actor per integration that owns the component instance.
//!
//! Each integration runs in its own task with its own `Store` (memory cap, epoch deadline) and
//! serves a queue of [`Command`]s one at a time, so an instance is never re-entered. Outbound
//! HTTP is asynchronous for the plugin: `outbound-http.start` spawns the request on tokio and
//! its outcome comes back through the queue as [`Command::HttpDone`]. That is why Graph's
//! validation handshake, which arrives while `POST /subscriptions` waits, cannot deadlock: the
//! instance is idle, not blocked, while the request is in flight.
//!
//! A trap poisons a `Store`; the actor then builds a new `Store` and instance from the
//! `InstancePre`, configures it again (the plugin restores itself from durable state) and
//! reports the trap in the status.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::keys::NotificationKey;
use crate::release::Release;
use crate::store::Db;
use crate::switchboard::{Shown, Switchboard};

/// Bindings generated from `wit/` (the only `bindgen!` site of the host).
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "presence-sync",
        exports: { default: async },
    });
}

use bindings::PresenceSync;
use bindings::exports::teams_presence::plugin::sync;
use bindings::teams_presence::plugin::{
    clock, crypto, directory, log, outbound_http, presence, scheduler, state, status, types,
};

/// Epoch ticks happen every this many milliseconds.
pub const EPOCH_TICK_MS: u64 = 10;
/// Default CPU bound of one guest call: a runaway call is stopped within this, plus at most one
/// epoch tick (epoch interruption; see [`arm`]). The plugin splits long work into steps below
/// it. It was 100 ms: at 100,000 users on a 2-core VM the heaviest legitimate call (one
/// presence read of 650 users, each published) measured 38 to 99 ms of CPU, depending on what
/// the other core ran, and some runs trapped (BENCHMARKS.md shows the traps of each run).
pub const DEFAULT_CALL_DEADLINE_MS: u64 = 250;
/// Default memory cap per instance.
pub const MEMORY_LIMIT_BYTES: usize = 256 << 20;

/// The sandbox limits of every instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// CPU bound of one guest call, in milliseconds.
    pub call_deadline_ms: u64,
    /// Linear memory cap per instance, in bytes.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { call_deadline_ms: DEFAULT_CALL_DEADLINE_MS, memory_bytes: MEMORY_LIMIT_BYTES }
    }
}

/// A guest call's clocks, for the deadline check at every epoch tick.
struct CallClock {
    /// CPU time of the thread that runs the call (guest code and the host imports it calls)
    /// when it started. A call runs on one thread: nothing in it yields to the executor.
    cpu: Duration,
    wall: std::time::Instant,
    /// Stop at the first check (tests).
    force: bool,
}

/// CPU time used by the current thread.
fn thread_cpu() -> Duration {
    cpu_time::ThreadTime::now().as_duration()
}

/// Arms the deadline for the next guest call on `store`: checked at every epoch tick, it
/// stops the call once it has used the CPU bound (or, whatever the CPU, ten times the bound
/// in wall time, at least a second). CPU, not wall time, so that a busy machine does not
/// stop a legitimate call that merely waited for a core.
fn arm(store: &mut Store<HostState>, force: bool) {
    store.data_mut().call = Some(CallClock { cpu: thread_cpu(), wall: std::time::Instant::now(), force });
    // Checked at the next tick; a forced stop at the very first check.
    store.set_epoch_deadline(if force { 0 } else { 1 });
}
/// Largest HTTP request or response body crossing the boundary (either way).
pub const MAX_HTTP_BODY: usize = 16 << 20;
/// Most headers on an outbound request.
pub const MAX_HTTP_HEADERS: usize = 64;
/// Largest outbound header (name plus value), in bytes.
pub const MAX_HTTP_HEADER_BYTES: usize = 16 << 10;
/// Longest outbound URL, in bytes.
pub const MAX_URL_BYTES: usize = 8 << 10;
/// Largest state value (bytes); the integration's total is [`crate::store::KV_QUOTA_BYTES`].
pub const MAX_STATE_VALUE: usize = 32 << 20;
/// Longest state key (bytes).
pub const MAX_STATE_KEY: usize = 512;
/// Longest string the plugin may put in a presence update (ids, availability, activity).
pub const MAX_PRESENCE_FIELD: usize = 256;
/// Timeout of one outbound request.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// wasmtime 48 has its own error type; bring it into anyhow with its full chain.
fn wt<T>(r: wasmtime::Result<T>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e:#}"))
}

/// Why a state write failed (host side of `state.state-error`).
#[derive(Debug)]
pub enum StateFailure {
    /// Quota reached.
    Quota(u64),
    /// Storage failed.
    Unavailable(String),
}

/// Time as the plugins see it: the system clock plus an offset that tests can move forward.
#[derive(Default)]
pub struct HostClock {
    offset_ms: AtomicI64,
}

impl HostClock {
    /// Now in ms since the epoch.
    pub fn now_ms(&self) -> u64 {
        let real =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
        (real + self.offset_ms.load(Ordering::Relaxed)).max(0) as u64
    }
    /// Moves time forward (tests).
    pub fn advance(&self, d: Duration) {
        self.offset_ms.fetch_add(d.as_millis() as i64, Ordering::Relaxed);
    }
}

/// Everything the host gives one integration's instance. Survives instance replacement.
pub struct IntegrationCtx {
    /// Integration name.
    pub name: String,
    /// Origins (`scheme://host:port`) the plugin may call.
    pub allowed_origins: Vec<String>,
    /// Shared HTTP client.
    pub http: reqwest::Client,
    /// Durable state.
    pub db: Arc<Db>,
    /// The customer's switchboard.
    pub switchboard: Arc<Switchboard>,
    /// The notification key.
    pub key: NotificationKey,
    /// Clock.
    pub clock: Arc<HostClock>,
    /// The actor's own queue, for HTTP completions.
    tx: mpsc::UnboundedSender<Command>,
    /// Requests the allow-list refused.
    pub refused_requests: AtomicU64,
    /// The host's own counters (webhook rejects, inbox replays), merged into the status.
    pub counters: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Outbound requests started and not yet answered to the plugin.
    in_flight: AtomicU64,
    /// The host is stopping: the actor takes no further command (nothing is cleaned up on the
    /// way out, as in a crash).
    stopping: std::sync::atomic::AtomicBool,
    /// The plugin asked for a prompt `tick` (`scheduler.request-tick`).
    tick_requested: std::sync::atomic::AtomicBool,
    /// The plugin's log allowance.
    log_budget: std::sync::Mutex<LogBudget>,
}

/// A token bucket for the plugin's log records: a burst of [`LOG_BURST`], then
/// [`LOG_PER_SECOND`]; what is over it is counted (`log.suppressed`) and dropped.
pub struct LogBudget {
    tokens: f64,
    at: std::time::Instant,
    suppressed_since_report: u64,
}

/// Log records a plugin may write at once.
pub const LOG_BURST: f64 = 200.0;
/// Log records a plugin may write per second, sustained.
pub const LOG_PER_SECOND: f64 = 50.0;
/// Longest log message forwarded (bytes); longer ones are cut.
pub const MAX_LOG_MESSAGE: usize = 2048;
/// Most key/value fields forwarded per log record.
pub const MAX_LOG_FIELDS: usize = 32;

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget { tokens: LOG_BURST, at: std::time::Instant::now(), suppressed_since_report: 0 }
    }
}

impl IntegrationCtx {
    /// Adds one to a host counter.
    pub fn count(&self, name: &str) {
        *self.counters.lock().unwrap().entry(name.to_string()).or_default() += 1;
    }
}

/// Per-store state.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryMeter,
    ctx: Arc<IntegrationCtx>,
    stderr: GuestStderr,
    call: Option<CallClock>,
}

/// The store's limits ([`StoreLimits`]), and how much linear memory the instance holds: the
/// status reports it, since the limiter is the one place that sees every memory grow.
struct MemoryMeter {
    limits: StoreLimits,
    /// Linear memory in bytes, all memories of the instance.
    bytes: usize,
    /// The last grow allowed, taken back if it then failed.
    pending: usize,
}

impl ResourceLimiter for MemoryMeter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allow = self.limits.memory_growing(current, desired, maximum)?;
        if allow {
            self.pending = desired.saturating_sub(current);
            self.bytes += self.pending;
        }
        Ok(allow)
    }
    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.bytes -= std::mem::take(&mut self.pending);
        self.limits.memory_grow_failed(error)
    }
    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }
    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }
    fn instances(&self) -> usize {
        self.limits.instances()
    }
    fn tables(&self) -> usize {
        self.limits.tables()
    }
    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl types::Host for HostState {}
impl status::Host for HostState {}

impl outbound_http::Host for HostState {
    fn start(&mut self, id: u64, req: outbound_http::Request) -> Result<(), outbound_http::HttpError> {
        use outbound_http::HttpError as E;
        if req.url.len() > MAX_URL_BYTES {
            return Err(E::InvalidRequest(format!("url longer than {MAX_URL_BYTES} bytes")));
        }
        let url = match check_outbound(&self.ctx.allowed_origins, &req.url) {
            Ok(u) => u,
            Err(e) => {
                if let E::NotAllowed(origin) = &e {
                    self.ctx.refused_requests.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(integration = %self.ctx.name, %origin, "outbound request refused: origin not allowed");
                }
                return Err(e);
            }
        };
        if !matches!(req.method.as_str(), "GET" | "POST" | "PATCH" | "PUT" | "DELETE") {
            return Err(E::InvalidRequest(format!("method {}", cap(req.method, 16))));
        }
        let method =
            reqwest::Method::from_bytes(req.method.as_bytes()).map_err(|_| E::InvalidRequest("method".into()))?;
        if req.body.len() > MAX_HTTP_BODY {
            return Err(E::TooLarge(MAX_HTTP_BODY as u64));
        }
        if req.headers.len() > MAX_HTTP_HEADERS
            || req.headers.iter().any(|(k, v)| k.len() + v.len() > MAX_HTTP_HEADER_BYTES)
        {
            return Err(E::InvalidRequest(format!(
                "at most {MAX_HTTP_HEADERS} headers of at most {MAX_HTTP_HEADER_BYTES} bytes each"
            )));
        }
        let mut builder = self.ctx.http.request(method, url).timeout(HTTP_TIMEOUT).body(req.body);
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        let ctx = self.ctx.clone();
        ctx.in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let outcome = perform(builder).await;
            if ctx.tx.send(Command::HttpDone(id, outcome)).is_err() {
                ctx.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        });
        Ok(())
    }
}

async fn perform(builder: reqwest::RequestBuilder) -> Result<outbound_http::Response, outbound_http::HttpError> {
    use outbound_http::HttpError as E;
    let classify = |e: reqwest::Error| {
        if e.is_timeout() {
            E::Timeout
        } else if e.is_builder() {
            E::InvalidRequest(e.to_string())
        } else {
            E::Connection(without_url(&e))
        }
    };
    let mut resp = builder.send().await.map_err(classify)?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > MAX_HTTP_BODY {
            return Err(E::TooLarge(MAX_HTTP_BODY as u64));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(outbound_http::Response { status, headers, body })
}

fn without_url(e: &reqwest::Error) -> String {
    // reqwest's Display includes the URL, whose query may hold ids; keep only the cause.
    let mut msg = String::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    if msg.is_empty() { "connection failed".into() } else { msg }
}

/// Checks an outbound URL against the integration's allow-list (exact `scheme://host:port`
/// origins) and the rule that plain http goes only to loopback. Deny by default.
pub fn check_outbound(allowed: &[String], url: &str) -> Result<url::Url, outbound_http::HttpError> {
    use outbound_http::HttpError as E;
    let u = url::Url::parse(url).map_err(|e| E::InvalidRequest(format!("url: {e}")))?;
    let origin = origin_of(&u);
    let scheme_ok = u.scheme() == "https" || (u.scheme() == "http" && crate::config::is_loopback(&u));
    if !scheme_ok || !allowed.contains(&origin) {
        return Err(E::NotAllowed(origin));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(E::InvalidRequest("credentials in the URL are not allowed".into()));
    }
    Ok(u)
}

/// `scheme://host:port` of a URL.
pub fn origin_of(u: &url::Url) -> String {
    format!("{}://{}:{}", u.scheme(), u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(0))
}

impl directory::Host for HostState {
    fn list_users(&mut self) -> Vec<directory::SwitchboardUser> {
        self.ctx.switchboard.users().into_iter().map(to_wit_user).collect()
    }
    fn list_users_page(&mut self, start: u32, count: u32) -> Vec<directory::SwitchboardUser> {
        self.ctx.switchboard.users_page(start as usize, count as usize).into_iter().map(to_wit_user).collect()
    }
    fn find_by_email(&mut self, email: String) -> Vec<directory::SwitchboardUser> {
        if email.len() > MAX_PRESENCE_FIELD {
            return vec![];
        }
        self.ctx.switchboard.find_by_email(&email).into_iter().map(to_wit_user).collect()
    }
}

fn to_wit_user(u: crate::switchboard::User) -> directory::SwitchboardUser {
    directory::SwitchboardUser {
        id: u.id,
        display_name: u.name,
        emails: u.emails,
        line_number: u.line_number,
        active: u.active,
    }
}

impl presence::Host for HostState {
    fn publish(&mut self, u: presence::PresenceUpdate) -> Result<(), presence::PublishError> {
        if [&u.user_id, &u.microsoft_user_id, &u.presence.availability, &u.presence.activity]
            .iter()
            .any(|f| f.len() > MAX_PRESENCE_FIELD)
        {
            self.ctx.count("publish.refused-oversized");
            return Err(presence::PublishError::UnknownUser(cap(u.user_id, 64)));
        }
        if !self.ctx.switchboard.has_user(&u.user_id) {
            return Err(presence::PublishError::UnknownUser(u.user_id));
        }
        let origin = match u.origin {
            types::PresenceOrigin::Teams => "teams",
            types::PresenceOrigin::OwnLineStatus => "own-line-status",
            types::PresenceOrigin::Snapshot => "snapshot",
        };
        self.ctx.switchboard.publish(
            &u.user_id,
            Shown {
                availability: u.presence.availability,
                activity: u.presence.activity,
                origin: origin.into(),
                microsoft_user_id: u.microsoft_user_id,
                observed_at_ms: u.observed_at_ms,
                updates: 0,
            },
        );
        Ok(())
    }
}

impl state::Host for HostState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        match self.ctx.db.get(&self.ctx.name, &key) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(integration = %self.ctx.name, %key, error = %e, "state read failed");
                None
            }
        }
    }
    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), state::StateError> {
        if key.len() > MAX_STATE_KEY || value.len() > MAX_STATE_VALUE {
            self.ctx.count("state.refused-oversized");
            return Err(state::StateError::Unavailable(format!(
                "keys are limited to {MAX_STATE_KEY} bytes and values to {MAX_STATE_VALUE} bytes"
            )));
        }
        self.ctx.db.set(&self.ctx.name, &key, &value).map_err(|e| match e {
            StateFailure::Quota(q) => state::StateError::QuotaExceeded(q),
            StateFailure::Unavailable(r) => state::StateError::Unavailable(r),
        })
    }
    fn delete(&mut self, key: String) {
        if let Err(e) = self.ctx.db.delete(&self.ctx.name, &key) {
            tracing::error!(integration = %self.ctx.name, %key, error = %e, "state delete failed");
        }
    }
    fn list_keys(&mut self, prefix: String) -> Vec<String> {
        self.ctx.db.keys(&self.ctx.name, &prefix).unwrap_or_default()
    }
}

impl scheduler::Host for HostState {
    fn request_tick(&mut self) {
        self.ctx.tick_requested.store(true, Ordering::SeqCst);
    }
}

impl clock::Host for HostState {
    fn now_ms(&mut self) -> u64 {
        self.ctx.clock.now_ms()
    }
}

impl log::Host for HostState {
    fn emit(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) {
        let name = &self.ctx.name;
        {
            let mut b = self.ctx.log_budget.lock().unwrap();
            let now = std::time::Instant::now();
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * LOG_PER_SECOND).min(LOG_BURST);
            b.at = now;
            if b.tokens < 1.0 {
                b.suppressed_since_report += 1;
                drop(b);
                self.ctx.count("log.suppressed");
                return;
            }
            b.tokens -= 1.0;
            let suppressed = std::mem::take(&mut b.suppressed_since_report);
            if suppressed > 0 {
                tracing::warn!(integration = %name, suppressed, "plugin log records over the allowance were dropped");
            }
        }
        let message = cap(message, MAX_LOG_MESSAGE);
        let fields = fields
            .into_iter()
            .take(MAX_LOG_FIELDS)
            .map(|(k, v)| format!("{}={}", cap(k, 64), cap(v, 512)))
            .collect::<Vec<_>>()
            .join(" ");
        match level {
            log::Level::Debug => tracing::debug!(integration = %name, "{message} {fields}"),
            log::Level::Info => tracing::info!(integration = %name, "{message} {fields}"),
            log::Level::Warn => tracing::warn!(integration = %name, "{message} {fields}"),
            log::Level::Error => tracing::error!(integration = %name, "{message} {fields}"),
        }
    }
}

impl crypto::Host for HostState {
    fn unwrap_key(&mut self, certificate_id: String, wrapped_key: Vec<u8>) -> Result<Vec<u8>, crypto::UnwrapError> {
        if certificate_id != self.ctx.key.cert_id {
            return Err(crypto::UnwrapError::UnknownCertificate(certificate_id));
        }
        self.ctx.key.unwrap(&wrapped_key).ok_or(crypto::UnwrapError::DecryptFailed)
    }
    fn random_bytes(&mut self, len: u32) -> Vec<u8> {
        let mut v = vec![0u8; len.min(4096) as usize];
        aws_lc_rs::rand::fill(&mut v).expect("system randomness");
        v
    }
}

/// The engine and the linker, shared by all integrations, and the compile cache. Releases
/// (compiled plugins) are loaded with [`Runtime::load`]; each integration's actor runs one.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache: Option<crate::release::CompileCache>,
    /// The sandbox limits of every instance.
    pub limits: Limits,
}

impl Runtime {
    /// An engine with epoch interruption, a linker with the WIT imports and WASI p2, and the
    /// compile cache in `cache_dir` (none: always compile). Starts the epoch ticker.
    pub fn new(limits: Limits, cache_dir: Option<std::path::PathBuf>) -> anyhow::Result<Arc<Runtime>> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = wt(Engine::new(&config))?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        wt(wasmtime_wasi::p2::add_to_linker_async(&mut linker))?;
        wt(PresenceSync::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s))?;
        let weak = engine.weak();
        std::thread::Builder::new().name("epoch-ticker".into()).spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
            }
        })?;
        let cache = cache_dir.map(crate::release::CompileCache::new);
        Ok(Arc::new(Runtime { engine, linker, cache, limits }))
    }

    /// Checks, compiles (or loads from the cache) and prepares a plugin release. Nothing runs
    /// it yet; see [`crate::release`] for the checks.
    pub fn load(&self, wasm: &[u8]) -> anyhow::Result<Arc<Release>> {
        let r = crate::release::load(&self.engine, &self.linker, self.cache.as_ref(), wasm)?;
        tracing::info!(sha256 = %&r.sha256[..12], wit = %r.wit_version, from_cache = r.from_cache,
            load_ms = format!("{:.1}", r.load_ms), "plugin release loaded");
        Ok(Arc::new(r))
    }

    fn new_store(&self, ctx: Arc<IntegrationCtx>) -> Store<HostState> {
        let stderr = GuestStderr::default();
        let state = HostState {
            // No preopened directories, environment, arguments, stdin or sockets; stderr (where
            // a panicking guest writes its message) is kept, its tail only, for trap reports.
            wasi: WasiCtx::builder().stderr(stderr.clone()).build(),
            table: ResourceTable::new(),
            limiter: MemoryMeter {
                limits: StoreLimitsBuilder::new()
                    .memory_size(self.limits.memory_bytes)
                    .table_elements(1 << 20)
                    .instances(8)
                    .tables(16)
                    .memories(4)
                    // A failed memory.grow traps with a message that names memory, instead of an
                    // allocation failure that ends in an anonymous `unreachable`.
                    .trap_on_grow_failure(true)
                    .build(),
                bytes: 0,
                pending: 0,
            },
            ctx,
            stderr,
            call: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let cpu_bound = Duration::from_millis(self.limits.call_deadline_ms);
        let wall_bound = (cpu_bound * 10).max(Duration::from_secs(1));
        store.epoch_deadline_callback(move |ctx| {
            Ok(match &ctx.data().call {
                Some(c)
                    if c.force || thread_cpu().saturating_sub(c.cpu) >= cpu_bound || c.wall.elapsed() >= wall_bound =>
                {
                    wasmtime::UpdateDeadline::Interrupt
                }
                _ => wasmtime::UpdateDeadline::Continue(1),
            })
        });
        // Instantiation runs guest code too (start functions): give it the same deadline.
        arm(&mut store, false);
        store
    }
}

/// A guest's stderr: only the last [`STDERR_TAIL`] bytes are kept, whatever it writes.
#[derive(Clone, Default)]
pub struct GuestStderr(Arc<std::sync::Mutex<std::collections::VecDeque<u8>>>);

/// How much of a guest's stderr is kept for the trap report.
pub const STDERR_TAIL: usize = 2048;

impl GuestStderr {
    /// The kept tail, as text, and empties it.
    fn take(&self) -> String {
        let bytes: Vec<u8> = self.0.lock().unwrap().drain(..).collect();
        String::from_utf8_lossy(&bytes).trim().to_string()
    }
}

impl wasmtime_wasi::cli::IsTerminal for GuestStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestStderr {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for GuestStderr {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut tail = self.0.lock().unwrap();
        tail.extend(buf.iter().rev().take(STDERR_TAIL).rev());
        let excess = tail.len().saturating_sub(STDERR_TAIL);
        tail.drain(..excess);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A command for an integration's actor.
pub enum Command {
    /// A webhook request, with where to send the answer.
    Webhook(sync::WebhookRequest, oneshot::Sender<sync::WebhookResponse>),
    /// A notification already acknowledged and persisted in the inbox under this id.
    Inbox(i64, sync::WebhookRequest),
    /// An outbound request finished.
    HttpDone(u64, Result<outbound_http::Response, outbound_http::HttpError>),
    /// The periodic timer.
    Tick,
    /// "Sync now".
    SyncNow,
    /// A status query.
    Status(oneshot::Sender<StatusView>),
    /// Replace the API overrides.
    SetOverrides(Vec<sync::MappingOverride>, oneshot::Sender<Result<(), String>>),
    /// Read the API overrides.
    GetOverrides(oneshot::Sender<Vec<sync::MappingOverride>>),
    /// A line event.
    Line(presence::LineEvent, oneshot::Sender<Result<(), String>>),
    /// Switch to another plugin release (hot swap), with where to send the outcome.
    Swap(Arc<Release>, oneshot::Sender<SwapReport>),
    /// Make the next guest call hit its deadline at once (a real epoch-interruption trap):
    /// how tests show that a trap restarts only this integration's instance.
    InterruptNextCall,
    /// Stop the actor.
    Shutdown,
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Webhook(..) => "webhook",
            Command::Inbox(..) => "inbox",
            Command::HttpDone(..) => "http-done",
            Command::Tick => "tick",
            Command::SyncNow => "sync-now",
            Command::Status(..) => "status",
            Command::SetOverrides(..) => "set-overrides",
            Command::GetOverrides(..) => "get-overrides",
            Command::Line(..) => "line-event",
            Command::Swap(..) => "swap",
            Command::InterruptNextCall => "interrupt-next-call",
            Command::Shutdown => "shutdown",
        }
    }
}

/// The outcome of a hot swap, as the admin API returns it.
#[derive(Debug, Clone, Serialize)]
pub struct SwapReport {
    /// The integration.
    pub integration: String,
    /// `switched`, `rolled-back` or `refused`.
    pub outcome: String,
    /// The release that ran before (plugin version and SHA-256 prefix).
    pub from: String,
    /// The release asked for.
    pub to: String,
    /// Why it rolled back or was refused.
    pub reason: Option<String>,
    /// How long this integration's events waited: from the swap's start (events held) to the
    /// moment the new instance was configured and took them, in ms.
    pub pause_ms: f64,
    /// Of the pause, the time spent waiting for outbound requests in flight to finish, in ms.
    pub drain_ms: f64,
    /// Events (webhooks, line events, ticks, answers) that waited during the swap and were
    /// then processed by the release that runs after it.
    pub held_events: usize,
    /// When it happened (ms since the epoch).
    pub at_ms: u64,
}

/// How long a swap waits for the old instance's outbound requests in flight.
pub const SWAP_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The host's handle to an integration's actor.
#[derive(Clone)]
pub struct IntegrationHandle {
    /// Name.
    pub name: String,
    tx: mpsc::UnboundedSender<Command>,
    /// The customer's switchboard.
    pub switchboard: Arc<Switchboard>,
    ctx: Arc<IntegrationCtx>,
    task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl IntegrationHandle {
    /// Sends a webhook request and waits for the plugin's answer.
    pub async fn webhook(&self, req: sync::WebhookRequest) -> Option<sync::WebhookResponse> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Webhook(req, tx)).ok()?;
        rx.await.ok()
    }
    /// Takes a notification (or lifecycle notification) body: persists it in the durable inbox,
    /// so that it survives a crash, and queues it for the plugin. When this returns `Ok` the
    /// caller may acknowledge it to Graph.
    pub fn accept(&self, kind: &str, body: Vec<u8>) -> anyhow::Result<()> {
        let id = self.ctx.db.inbox_push(&self.name, kind, &body, self.ctx.clock.now_ms())?;
        self.ctx.count("inbox.accepted");
        let req = inbox_request(kind, body);
        self.tx.send(Command::Inbox(id, req)).map_err(|_| anyhow::anyhow!("integration is stopping"))?;
        Ok(())
    }
    /// Adds one to a host counter of this integration.
    pub fn count(&self, name: &str) {
        self.ctx.count(name);
    }
    /// The integration's status.
    pub async fn status(&self) -> Option<StatusView> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Status(tx)).ok()?;
        rx.await.ok()
    }
    /// Replaces the overrides set through the API.
    pub async fn set_overrides(&self, o: Vec<sync::MappingOverride>) -> Option<Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::SetOverrides(o, tx)).ok()?;
        rx.await.ok()
    }
    /// The overrides set through the API.
    pub async fn overrides(&self) -> Option<Vec<sync::MappingOverride>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::GetOverrides(tx)).ok()?;
        rx.await.ok()
    }
    /// Sends a line event.
    pub async fn line_event(&self, ev: presence::LineEvent) -> Option<Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Line(ev, tx)).ok()?;
        rx.await.ok()
    }
    /// "Sync now": re-read the directory at once. False if the actor is gone.
    pub fn sync_now(&self) -> bool {
        self.tx.send(Command::SyncNow).is_ok()
    }
    /// A tick now, besides the periodic one (benchmarks that move the clock forward).
    pub fn tick(&self) {
        let _ = self.tx.send(Command::Tick);
    }
    /// Hot swap: switches this integration to `release` (see [`SwapReport`]). `None` if the
    /// actor is gone.
    pub async fn swap(&self, release: Arc<Release>) -> Option<SwapReport> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Swap(release, tx)).ok()?;
        rx.await.ok()
    }
    /// Makes the instance's next guest call trap on its deadline (tests).
    pub fn interrupt_next_call(&self) {
        let _ = self.tx.send(Command::InterruptNextCall);
    }
    /// Stops the actor.
    pub fn shutdown(&self) {
        self.ctx.stopping.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Command::Shutdown);
    }
    /// Waits until the actor has stopped (after [`IntegrationHandle::shutdown`]).
    pub async fn stopped(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// What the plugin needs to be configured, host side.
pub struct Spawn {
    /// Settings (with secrets).
    pub settings: sync::Settings,
    /// Allowed origins.
    pub allowed_origins: Vec<String>,
    /// HTTP client.
    pub http: reqwest::Client,
    /// State.
    pub db: Arc<Db>,
    /// Switchboard.
    pub switchboard: Arc<Switchboard>,
    /// Key.
    pub key: NotificationKey,
    /// Clock.
    pub clock: Arc<HostClock>,
    /// The plugin release to run.
    pub release: Arc<Release>,
}

/// Starts an integration's actor and configures its instance.
pub async fn spawn(rt: Arc<Runtime>, s: Spawn) -> anyhow::Result<IntegrationHandle> {
    let (tx, rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(IntegrationCtx {
        name: s.settings.name.clone(),
        allowed_origins: s.allowed_origins,
        http: s.http,
        db: s.db,
        switchboard: s.switchboard.clone(),
        key: s.key,
        clock: s.clock,
        tx: tx.clone(),
        refused_requests: AtomicU64::new(0),
        counters: Default::default(),
        in_flight: AtomicU64::new(0),
        tick_requested: Default::default(),
        stopping: Default::default(),
        log_budget: Default::default(),
    });
    let handle = IntegrationHandle {
        name: ctx.name.clone(),
        tx: tx.clone(),
        switchboard: s.switchboard,
        ctx: ctx.clone(),
        task: Default::default(),
    };
    let mut actor = Actor::start(rt, ctx.clone(), s.settings, s.release).await?;
    // Notifications acknowledged before a crash but never processed: replay them, oldest
    // first, before anything else reaches the new instance.
    for (id, kind, body) in ctx.db.inbox(&ctx.name)? {
        ctx.count("inbox.replayed");
        let _ = tx.send(Command::Inbox(id, inbox_request(&kind, body)));
    }
    *handle.task.lock().unwrap() = Some(tokio::spawn(async move { actor.run(rx).await }));
    let ticker = tx.clone();
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(Duration::from_secs(1));
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            iv.tick().await;
            if ticker.send(Command::Tick).is_err() {
                return;
            }
        }
    });
    Ok(handle)
}

/// The plugin request for a persisted notification body.
fn inbox_request(kind: &str, body: Vec<u8>) -> sync::WebhookRequest {
    sync::WebhookRequest {
        method: "POST".into(),
        path: format!("/{kind}"),
        query: String::new(),
        headers: vec![("content-type".into(), "application/json".into())],
        body,
    }
}

struct Actor {
    rt: Arc<Runtime>,
    ctx: Arc<IntegrationCtx>,
    settings: sync::Settings,
    release: Arc<Release>,
    store: Store<HostState>,
    bindings: PresenceSync,
    traps: u64,
    last_trap: Option<String>,
    config_error: Option<String>,
    plugin_version: String,
    interrupt_next: bool,
    /// Guest calls per kind: how many, their total time and their total CPU time, in µs.
    call_totals: std::collections::BTreeMap<&'static str, (u64, u64, u64)>,
    /// The longest guest call seen, per kind of call (ms).
    slowest: std::collections::BTreeMap<&'static str, u64>,
    /// The last hot swap.
    last_swap: Option<SwapReport>,
    /// Counters of the releases that ran before a swap, so that the status counts since start.
    carried: std::collections::BTreeMap<String, u64>,
    /// Inbox notifications the plugin answered 503 (restoring its state), oldest first, with
    /// those that came after them: offered again after each tick.
    deferred: std::collections::VecDeque<(i64, sync::WebhookRequest)>,
    /// How long the running instance took to instantiate (ms).
    instantiate_ms: f64,
}

/// What `configure` made of an instance.
enum Configured {
    /// Configured; the plugin's version.
    Ok(String),
    /// The plugin refused the settings.
    Refused(String),
    /// The call trapped.
    Trapped(wasmtime::Error),
}

/// Configures a fresh instance.
async fn configure_instance(
    store: &mut Store<HostState>,
    bindings: &PresenceSync,
    settings: &sync::Settings,
) -> Configured {
    arm(store, false);
    let sync = bindings.teams_presence_plugin_sync();
    match sync.call_configure(&mut *store, settings).await {
        Ok(Ok(())) => {}
        Ok(Err(sync::ConfigError::Missing(f))) => return Configured::Refused(format!("missing {f}")),
        Ok(Err(sync::ConfigError::Invalid(r))) => return Configured::Refused(format!("invalid {r}")),
        Err(e) => return Configured::Trapped(e),
    }
    arm(store, false);
    match sync.call_plugin_version(&mut *store).await {
        Ok(v) => Configured::Ok(cap(v, 128)),
        Err(e) => Configured::Trapped(e),
    }
}

/// `s`, cut to at most `max` bytes (on a character boundary).
fn cap(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

impl Actor {
    async fn start(
        rt: Arc<Runtime>,
        ctx: Arc<IntegrationCtx>,
        settings: sync::Settings,
        release: Arc<Release>,
    ) -> anyhow::Result<Actor> {
        let mut store = rt.new_store(ctx.clone());
        let t0 = Instant::now();
        let bindings = wt(release.pre.instantiate_async(&mut store).await).context("instantiating the plugin")?;
        let instantiate_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let mut actor = Actor {
            rt,
            ctx,
            settings,
            release,
            store,
            bindings,
            traps: 0,
            last_trap: None,
            config_error: None,
            plugin_version: String::new(),
            interrupt_next: false,
            slowest: Default::default(),
            call_totals: Default::default(),
            last_swap: None,
            carried: Default::default(),
            deferred: Default::default(),
            instantiate_ms,
        };
        actor.configure().await;
        Ok(actor)
    }

    async fn configure(&mut self) {
        match configure_instance(&mut self.store, &self.bindings, &self.settings).await {
            Configured::Ok(v) => {
                self.config_error = None;
                self.plugin_version = v;
            }
            Configured::Refused(msg) => {
                tracing::error!(integration = %self.ctx.name, "plugin refused settings: {msg}");
                self.config_error = Some(msg);
            }
            Configured::Trapped(e) => self.record_trap(e),
        }
        self.wake_if_asked();
    }

    fn record_trap(&mut self, e: wasmtime::Error) {
        self.traps += 1;
        let mut msg = format!("{e:#}");
        let stderr = self.store.data().stderr.take();
        if !stderr.is_empty() {
            msg = format!("{msg}; guest stderr: {}", cap(stderr, 512));
        }
        tracing::error!(integration = %self.ctx.name, error = %msg, "plugin trapped; restarting its instance");
        self.ctx.count("plugin.traps");
        self.last_trap = Some(msg);
    }

    /// After a trap the Store is poisoned: build a new one and configure again.
    async fn recover(&mut self) {
        let mut store = self.rt.new_store(self.ctx.clone());
        let t0 = Instant::now();
        match self.release.pre.instantiate_async(&mut store).await {
            Ok(b) => {
                self.instantiate_ms = t0.elapsed().as_secs_f64() * 1000.0;
                self.store = store;
                self.bindings = b;
                Box::pin(self.configure()).await;
            }
            Err(e) => self.record_trap(e),
        }
    }

    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        // Commands a swap held back go first, in the order they came (a swap among them
        // waits for the one before to finish).
        let mut held = std::collections::VecDeque::new();
        loop {
            let cmd = match held.pop_front() {
                Some(cmd) => cmd,
                None => match rx.recv().await {
                    Some(cmd) => cmd,
                    None => return,
                },
            };
            if self.ctx.stopping.load(Ordering::SeqCst) {
                return;
            }
            match cmd {
                Command::Shutdown => return,
                Command::Swap(release, reply) => {
                    let (report, more) = self.swap(release, &mut rx).await;
                    let _ = reply.send(report);
                    held.extend(more);
                }
                cmd => self.call(cmd).await,
            }
        }
    }

    /// Hot swap: hold events, let outbound requests in flight finish on the old instance,
    /// configure the new release on the state the old one left in the key-value store, and
    /// switch; if the new release does not configure, put the state back and keep the old
    /// one. Returns the report and the held events, for the running instance to process.
    async fn swap(
        &mut self,
        release: Arc<Release>,
        rx: &mut mpsc::UnboundedReceiver<Command>,
    ) -> (SwapReport, Vec<Command>) {
        let started = std::time::Instant::now();
        let label = |version: &str, r: &Release| format!("{version} ({})", &r.sha256[..12]);
        let mut report = SwapReport {
            integration: self.ctx.name.clone(),
            outcome: String::new(),
            from: label(&self.plugin_version, &self.release),
            to: label("?", &release),
            reason: None,
            pause_ms: 0.0,
            drain_ms: 0.0,
            held_events: 0,
            at_ms: self.ctx.clock.now_ms(),
        };
        // 1. Drain: answers to the old instance's requests go to it; everything else waits.
        let mut held = Vec::new();
        let drain_until = tokio::time::Instant::now() + SWAP_DRAIN_TIMEOUT;
        while self.ctx.in_flight.load(Ordering::SeqCst) > 0 {
            match tokio::time::timeout_at(drain_until, rx.recv()).await {
                Ok(Some(cmd @ Command::HttpDone(..))) => self.call(cmd).await,
                Ok(Some(cmd)) => held.push(cmd),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(integration = %self.ctx.name, in_flight = self.ctx.in_flight.load(Ordering::SeqCst),
                        "swap: outbound requests still in flight after the drain timeout; their answers go to the new release");
                    break;
                }
            }
        }
        report.drain_ms = started.elapsed().as_secs_f64() * 1000.0;
        // 2. Keep the state as the old release left it, for a rollback.
        if let Err(e) = self.ctx.db.kv_backup(&self.ctx.name) {
            report.outcome = "refused".into();
            report.reason = Some(format!("could not back up the state before the swap: {e:#}"));
            report.pause_ms = started.elapsed().as_secs_f64() * 1000.0;
            return self.finish_swap(report, held);
        }
        // 3. The new release, configured on that state.
        let mut store = self.rt.new_store(self.ctx.clone());
        let t0 = Instant::now();
        let instantiated = release.pre.instantiate_async(&mut store).await;
        let instantiate_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let outcome = match instantiated {
            Ok(bindings) => match configure_instance(&mut store, &bindings, &self.settings).await {
                Configured::Ok(version) => Ok((bindings, version)),
                Configured::Refused(msg) => Err(format!("the new release refused the settings: {msg}")),
                Configured::Trapped(e) => Err(format!("the new release trapped while configuring: {e:#}")),
            },
            Err(e) => Err(format!("the new release could not be instantiated: {e:#}")),
        };
        match outcome {
            Ok((bindings, version)) => {
                // The old release's counters carry over (its instance is still healthy here).
                arm(&mut self.store, false);
                if let Ok(s) = self.bindings.teams_presence_plugin_sync().call_status(&mut self.store).await {
                    for (k, v) in s.counters {
                        *self.carried.entry(k).or_default() += v;
                    }
                }
                report.to = label(&version, &release);
                report.outcome = "switched".into();
                self.store = store;
                self.bindings = bindings;
                self.release = release;
                self.instantiate_ms = instantiate_ms;
                self.plugin_version = version;
                self.config_error = None;
                self.ctx.count("plugin.swaps");
                self.wake_if_asked();
            }
            Err(reason) => {
                // Roll back: the state as it was, and the old instance, which never stopped.
                if let Err(e) = self.ctx.db.kv_restore(&self.ctx.name) {
                    tracing::error!(integration = %self.ctx.name, "swap rollback: restoring the state failed: {e:#}");
                }
                report.outcome = "rolled-back".into();
                report.reason = Some(cap(reason, 1024));
                self.ctx.count("plugin.rollbacks");
            }
        }
        report.pause_ms = started.elapsed().as_secs_f64() * 1000.0;
        // What waited: taken aside while draining, plus what queued up meanwhile.
        report.held_events = held.len() + rx.len();
        self.finish_swap(report, held)
    }

    fn finish_swap(&mut self, report: SwapReport, held: Vec<Command>) -> (SwapReport, Vec<Command>) {
        match &report.reason {
            None => tracing::info!(integration = %self.ctx.name, from = %report.from, to = %report.to,
                pause_ms = format!("{:.2}", report.pause_ms), "plugin swapped"),
            Some(r) => tracing::error!(integration = %self.ctx.name, from = %report.from, to = %report.to,
                outcome = %report.outcome, "plugin swap failed: {r}"),
        }
        self.last_swap = Some(report.clone());
        (report, held)
    }

    /// One command, one guest call.
    async fn call(&mut self, cmd: Command) {
        tracing::trace!(integration = %self.ctx.name, command = cmd.name(), "guest call");
        if matches!(cmd, Command::InterruptNextCall) {
            self.interrupt_next = true;
            return;
        }
        // Notifications wait, in order, behind those the plugin asked to be offered again.
        let cmd = match cmd {
            Command::Inbox(id, req) if !self.deferred.is_empty() => {
                self.deferred.push_back((id, req));
                return;
            }
            cmd => cmd,
        };
        let retry_deferred = matches!(cmd, Command::Tick);
        let force = std::mem::take(&mut self.interrupt_next);
        arm(&mut self.store, force);
        let started = std::time::Instant::now();
        let started_cpu = thread_cpu();
        let kind = cmd.name();
        let sync = self.bindings.teams_presence_plugin_sync();
        let result: Result<(), wasmtime::Error> = match cmd {
            Command::Shutdown | Command::Swap(..) | Command::InterruptNextCall => Ok(()),
            Command::Webhook(req, reply) => match sync.call_on_webhook(&mut self.store, &req).await {
                Ok(r) => {
                    let _ = reply.send(checked_response(&self.ctx, r));
                    Ok(())
                }
                Err(e) => {
                    let _ = reply.send(sync::WebhookResponse {
                        status: 500,
                        content_type: "text/plain".into(),
                        body: b"plugin failed; retry later".to_vec(),
                    });
                    Err(e)
                }
            },
            Command::Inbox(id, req) => {
                inbox_call(&mut self.store, sync, &self.ctx, &mut self.deferred, id, req, false).await.map(|_| ())
            }
            Command::HttpDone(id, outcome) => {
                self.ctx.in_flight.fetch_sub(1, Ordering::SeqCst);
                sync.call_on_http_response(&mut self.store, id, outcome.as_ref()).await
            }
            Command::SetOverrides(o, reply) => sync.call_set_overrides(&mut self.store, &o).await.map(|r| {
                let _ = reply.send(r);
            }),
            Command::GetOverrides(reply) => sync.call_get_overrides(&mut self.store).await.map(|r| {
                let _ = reply.send(r);
            }),
            Command::Tick => sync.call_tick(&mut self.store).await,
            Command::SyncNow => sync.call_sync_now(&mut self.store).await,
            Command::Status(reply) => match sync.call_status(&mut self.store).await {
                Ok(s) => {
                    let _ = reply.send(self.view(Some(s)));
                    Ok(())
                }
                Err(e) => {
                    let _ = reply.send(self.view(None));
                    Err(e)
                }
            },
            Command::Line(ev, reply) => match sync.call_on_line_event(&mut self.store, &ev).await {
                Ok(r) => {
                    let _ = reply.send(r.map_err(|e| match e {
                        sync::LineEventError::UnmappedUser(u) => {
                            format!("switchboard user {} is not mapped to a Microsoft user", cap(u, 256))
                        }
                        sync::LineEventError::PassiveUser(u) => {
                            format!(
                                "switchboard user {} is passive (no line); passive users get no pushes",
                                cap(u, 256)
                            )
                        }
                        sync::LineEventError::PushDisabled => {
                            "\"Push line status to Teams\" is off for this integration".into()
                        }
                    }));
                    Ok(())
                }
                Err(e) => Err(e),
            },
        };
        let ms = started.elapsed().as_millis() as u64;
        let total = self.call_totals.entry(kind).or_default();
        total.0 += 1;
        total.1 += started.elapsed().as_micros() as u64;
        // A call runs on this thread from start to end (nothing in it yields).
        total.2 += thread_cpu().saturating_sub(started_cpu).as_micros() as u64;
        let slowest = self.slowest.entry(kind).or_default();
        *slowest = (*slowest).max(ms);
        if let Err(e) = result {
            self.record_trap(e);
            self.recover().await;
        }
        // After each step of the plugin's work, offer the deferred notifications again, oldest
        // first, until it takes them or asks again to wait.
        if retry_deferred {
            while let Some((id, req)) = self.deferred.pop_front() {
                arm(&mut self.store, false);
                let sync = self.bindings.teams_presence_plugin_sync();
                match inbox_call(&mut self.store, sync, &self.ctx, &mut self.deferred, id, req, true).await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        self.record_trap(e);
                        self.recover().await;
                        break;
                    }
                }
            }
        }
        self.wake_if_asked();
    }

    /// The next step of the plugin's background work, after what is queued already.
    fn wake_if_asked(&self) {
        if self.ctx.tick_requested.swap(false, Ordering::SeqCst) {
            let _ = self.ctx.tx.send(Command::Tick);
        }
    }

    fn view(&self, s: Option<status::IntegrationStatus>) -> StatusView {
        StatusView::new(self, s)
    }
}

/// Hands a notification from the inbox to the plugin. Taken (`Ok(true)`): it leaves the
/// inbox, also when it made the plugin trap (it would again: one poisonous body must not
/// loop). Answered 503 (`Ok(false)`): the plugin is restoring its state; the notification
/// stays in the inbox and goes back in line (`front`: at the head, where it came from).
async fn inbox_call(
    store: &mut Store<HostState>,
    sync: &sync::Guest,
    ctx: &IntegrationCtx,
    deferred: &mut std::collections::VecDeque<(i64, sync::WebhookRequest)>,
    id: i64,
    req: sync::WebhookRequest,
    front: bool,
) -> Result<bool, wasmtime::Error> {
    let r = sync.call_on_webhook(&mut *store, &req).await;
    if let Ok(resp) = &r
        && resp.status == 503
    {
        ctx.count("inbox.deferred");
        if front {
            deferred.push_front((id, req));
        } else {
            deferred.push_back((id, req));
        }
        return Ok(false);
    }
    if let Err(e) = ctx.db.inbox_delete(id) {
        tracing::error!(integration = %ctx.name, "inbox delete failed: {e:#}");
    }
    ctx.count("inbox.processed");
    r.map(|_| true)
}

/// Largest webhook response the host forwards from the plugin.
pub const MAX_WEBHOOK_RESPONSE: usize = 64 << 10;

/// The plugin's webhook answer, unless it is oversized or malformed: then a 500 that says so.
fn checked_response(ctx: &IntegrationCtx, r: sync::WebhookResponse) -> sync::WebhookResponse {
    if r.body.len() <= MAX_WEBHOOK_RESPONSE && r.content_type.len() <= 256 && (100..=599).contains(&r.status) {
        return r;
    }
    ctx.count("plugin.bad-webhook-response");
    tracing::error!(integration = %ctx.name, bytes = r.body.len(), status = r.status,
        "the plugin's webhook response is oversized or malformed; answered 500 instead");
    sync::WebhookResponse {
        status: 500,
        content_type: "text/plain".into(),
        body: format!("the plugin's response was refused (over {MAX_WEBHOOK_RESPONSE} bytes or malformed)")
            .into_bytes(),
    }
}

/// An integration's status as the status API returns it (JSON). Holds no secrets.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// Integration name.
    pub name: String,
    /// `ok`, `starting`, `missing-credentials` or `error`.
    pub state: String,
    /// For `error`: the code (AADSTS or Graph code, or one of ours).
    pub code: Option<String>,
    /// For `error`: what to do.
    pub hint: Option<String>,
    /// For `error`: what happened.
    pub detail: Option<String>,
    /// For `missing-credentials`: which fields.
    pub missing: Vec<String>,
    /// Mapped users (the "Users" column).
    pub users: u32,
    /// Microsoft users read.
    pub microsoft_users: u32,
    /// Switchboard users.
    pub switchboard_users: u32,
    /// Users no subscription covers.
    pub uncovered_users: u32,
    /// Integration users to add.
    pub integration_users_needed: u32,
    /// Per integration user.
    pub subscriptions: Vec<SubscriptionView>,
    /// Ambiguous addresses.
    pub conflicts: Vec<ConflictView>,
    /// Last good directory read (ms since epoch).
    pub last_directory_refresh_ms: Option<u64>,
    /// Last accepted notification (ms since epoch).
    pub last_notification_ms: Option<u64>,
    /// Oldest last full presence re-read (ms since epoch).
    pub last_reconcile_ms: Option<u64>,
    /// Counters from the plugin.
    pub counters: std::collections::BTreeMap<String, u64>,
    /// The running plugin's version.
    pub plugin_version: String,
    /// The running release: SHA-256 of the component, its WIT version, how it was loaded.
    pub plugin: PluginView,
    /// The last hot swap, if any.
    pub last_swap: Option<SwapReport>,
    /// The WIT package version the host speaks (the plugin's is in `plugin`).
    pub wit_version: String,
    /// Traps of this integration's plugin since start.
    pub traps: u64,
    /// The last trap.
    pub last_trap: Option<String>,
    /// Outbound requests refused by the allow-list.
    pub refused_requests: u64,
    /// The longest guest call so far per kind of call, in ms (the CPU bound is
    /// `call_deadline_ms`).
    pub slowest_calls_ms: std::collections::BTreeMap<String, u64>,
    /// The mean guest call per kind, in µs (guest code plus the host imports it calls).
    pub mean_calls_us: std::collections::BTreeMap<String, f64>,
    /// Guest calls per kind so far.
    pub calls: std::collections::BTreeMap<String, u64>,
    /// The CPU time those calls used, per kind, in µs.
    pub total_calls_cpu_us: std::collections::BTreeMap<String, u64>,
    /// The instance's linear memory, in bytes, all its memories (the sandbox's memory cap
    /// applies to each; the plugin has one).
    pub linear_memory_bytes: u64,
}

/// The running release in [`StatusView`].
#[derive(Debug, Clone, Serialize)]
pub struct PluginView {
    /// SHA-256 of the component, hex.
    pub sha256: String,
    /// The WIT package version the component speaks.
    pub wit_version: String,
    /// Component size in bytes.
    pub bytes: usize,
    /// Whether its compiled code came from the compile cache.
    pub from_cache: bool,
    /// Time to load it (compile or deserialize, plus prepare), in ms.
    pub load_ms: f64,
    /// Time to instantiate the running instance from the loaded release, in ms.
    pub instantiate_ms: f64,
}

/// One subscription in [`StatusView`].
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionView {
    /// Integration user.
    pub integration_user: String,
    /// Graph subscription id.
    pub subscription_id: Option<String>,
    /// Users covered.
    pub users_covered: u32,
    /// Expiry (ms since epoch).
    pub expires_at_ms: Option<u64>,
    /// Last accepted notification (ms since epoch).
    pub last_notification_ms: Option<u64>,
    /// Last full presence re-read of its users (ms since epoch).
    pub last_reconcile_ms: Option<u64>,
    /// Problem code.
    pub code: Option<String>,
    /// Problem hint.
    pub hint: Option<String>,
}

/// One conflict in [`StatusView`].
#[derive(Debug, Clone, Serialize)]
pub struct ConflictView {
    /// Address.
    pub email: String,
    /// `several-microsoft-users` or `several-switchboard-users`.
    pub kind: String,
    /// Candidates.
    pub candidates: Vec<String>,
}

/// The WIT package version this host implements.
pub const WIT_VERSION: &str = "2.1.0";

impl StatusView {
    fn new(a: &Actor, s: Option<status::IntegrationStatus>) -> StatusView {
        let mut v = StatusView {
            name: a.ctx.name.clone(),
            state: "error".into(),
            code: None,
            hint: None,
            detail: None,
            missing: vec![],
            users: 0,
            microsoft_users: 0,
            switchboard_users: 0,
            uncovered_users: 0,
            integration_users_needed: 0,
            subscriptions: vec![],
            conflicts: vec![],
            last_directory_refresh_ms: None,
            last_notification_ms: None,
            last_reconcile_ms: None,
            counters: Default::default(),
            plugin_version: a.plugin_version.clone(),
            plugin: PluginView {
                sha256: a.release.sha256.clone(),
                wit_version: a.release.wit_version.clone(),
                bytes: a.release.bytes,
                from_cache: a.release.from_cache,
                load_ms: a.release.load_ms,
                instantiate_ms: a.instantiate_ms,
            },
            last_swap: a.last_swap.clone(),
            wit_version: WIT_VERSION.into(),
            traps: a.traps,
            last_trap: a.last_trap.clone(),
            refused_requests: a.ctx.refused_requests.load(Ordering::Relaxed),
            slowest_calls_ms: a.slowest.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            mean_calls_us: a
                .call_totals
                .iter()
                .map(|(k, (n, us, _))| (k.to_string(), *us as f64 / (*n).max(1) as f64))
                .collect(),
            calls: a.call_totals.iter().map(|(k, (n, _, _))| (k.to_string(), *n)).collect(),
            total_calls_cpu_us: a.call_totals.iter().map(|(k, (_, _, cpu))| (k.to_string(), *cpu)).collect(),
            linear_memory_bytes: a.store.data().limiter.bytes as u64,
        };
        let Some(s) = s else {
            v.code = Some("plugin-trap".into());
            v.hint = Some(
                "The plugin failed and is being restarted; if this persists, roll back the plugin release.".into(),
            );
            return v;
        };
        if let Some(e) = &a.config_error {
            v.code = Some("invalid-settings".into());
            v.hint = Some("The plugin refused the settings; correct them in the integration.".into());
            v.detail = Some(e.clone());
        }
        match s.health {
            status::Health::Ok => v.state = "ok".into(),
            status::Health::Starting => v.state = "starting".into(),
            status::Health::Degraded(p) => {
                v.state = "degraded".into();
                v.code = Some(p.code);
                v.hint = Some(p.hint);
                v.detail = Some(p.detail);
            }
            status::Health::MissingCredentials(f) => {
                v.state = "missing-credentials".into();
                v.missing = f;
            }
            status::Health::Error(p) => {
                v.code = Some(p.code);
                v.hint = Some(p.hint);
                v.detail = Some(p.detail);
            }
        }
        v.users = s.mapped_users;
        v.microsoft_users = s.microsoft_users;
        v.switchboard_users = s.switchboard_users;
        v.uncovered_users = s.uncovered_users;
        v.integration_users_needed = s.integration_users_needed;
        v.subscriptions = s
            .subscriptions
            .into_iter()
            .map(|x| SubscriptionView {
                integration_user: x.integration_user,
                subscription_id: x.subscription_id,
                users_covered: x.users_covered,
                expires_at_ms: x.expires_at_ms,
                last_notification_ms: x.last_notification_ms,
                last_reconcile_ms: x.last_reconcile_ms,
                code: x.problem.as_ref().map(|p| p.code.clone()),
                hint: x.problem.map(|p| p.hint),
            })
            .collect();
        v.conflicts = s
            .conflicts
            .into_iter()
            .map(|c| ConflictView {
                email: c.email,
                kind: match c.kind {
                    status::ConflictKind::SeveralMicrosoftUsers => "several-microsoft-users",
                    status::ConflictKind::SeveralSwitchboardUsers => "several-switchboard-users",
                    status::ConflictKind::UnresolvedOverride => "unresolved-override",
                }
                .into(),
                candidates: c.candidates,
            })
            .collect();
        v.last_directory_refresh_ms = s.last_directory_refresh_ms;
        v.last_notification_ms = s.last_notification_ms;
        v.last_reconcile_ms = s.last_reconcile_ms;
        v.counters = s.counters.into_iter().collect();
        for (k, n) in a.carried.iter().chain(a.ctx.counters.lock().unwrap().iter()) {
            *v.counters.entry(k.clone()).or_default() += n;
        }
        v
    }
}

pub use presence::{LineEvent, LineState};
pub use sync::{
    IntegrationUser as WitIntegrationUser, MappingOverride as WitMappingOverride, MatchSource as WitMatchSource,
    Settings as WitSettings, WebhookRequest, WebhookResponse,
};

#[cfg(test)]
mod tests {
    use super::*;
    use outbound_http::HttpError as E;

    fn allowed() -> Vec<String> {
        vec![
            "https://login.microsoftonline.com:443".into(),
            "https://graph.microsoft.com:443".into(),
            "http://127.0.0.1:9000".into(),
        ]
    }

    #[test]
    fn configured_origins_are_allowed() {
        assert!(check_outbound(&allowed(), "https://graph.microsoft.com/v1.0/users?$top=999").is_ok());
        assert!(check_outbound(&allowed(), "https://login.microsoftonline.com/t/oauth2/v2.0/token").is_ok());
        assert!(check_outbound(&allowed(), "http://127.0.0.1:9000/v1.0/users").is_ok());
    }

    #[test]
    fn anything_else_is_not_allowed() {
        for url in [
            "https://evil.example.com/steal",
            "https://graph.microsoft.com:8443/v1.0/users",
            "http://graph.microsoft.com/v1.0/users",
            "http://127.0.0.1:9001/",
            "https://graph.microsoft.com.evil.example/v1.0",
        ] {
            assert!(matches!(check_outbound(&allowed(), url), Err(E::NotAllowed(_))), "{url}");
        }
        assert!(matches!(check_outbound(&allowed(), "not a url"), Err(E::InvalidRequest(_))));
        assert!(matches!(check_outbound(&allowed(), "https://u:p@graph.microsoft.com/"), Err(E::InvalidRequest(_))));
    }
}
