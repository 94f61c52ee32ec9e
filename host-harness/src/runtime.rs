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
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::keys::NotificationKey;
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

use bindings::exports::teams_presence::plugin::sync;
use bindings::teams_presence::plugin::{clock, crypto, directory, log, outbound_http, presence, state, status, types};
use bindings::{PresenceSync, PresenceSyncPre};

/// Epoch ticks happen every this many milliseconds.
pub const EPOCH_TICK_MS: u64 = 10;
/// Default CPU bound of one guest call: a runaway call is stopped within this (epoch
/// interruption; the bound is rounded up to whole ticks). Not yet the 100 ms issue 4/5 asks
/// for: a directory read of 100,000 users still rebuilds the mapping in one call (about 2 s;
/// see `slowest_calls_ms` in the status and BENCHMARKS.md).
pub const DEFAULT_CALL_DEADLINE_MS: u64 = 10_000;
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

impl Limits {
    fn deadline_ticks(&self) -> u64 {
        self.call_deadline_ms.div_ceil(EPOCH_TICK_MS).max(1)
    }
}
/// Largest HTTP response body handed to the plugin.
pub const MAX_HTTP_BODY: usize = 16 << 20;
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
    limits: StoreLimits,
    ctx: Arc<IntegrationCtx>,
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
        let method = reqwest::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| E::InvalidRequest(format!("method {}", req.method)))?;
        if req.body.len() > MAX_HTTP_BODY {
            return Err(E::TooLarge(MAX_HTTP_BODY as u64));
        }
        let mut builder = self.ctx.http.request(method, url).timeout(HTTP_TIMEOUT).body(req.body);
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let outcome = perform(builder).await;
            let _ = ctx.tx.send(Command::HttpDone(id, outcome));
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
    fn find_by_email(&mut self, email: String) -> Vec<directory::SwitchboardUser> {
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

impl clock::Host for HostState {
    fn now_ms(&mut self) -> u64 {
        self.ctx.clock.now_ms()
    }
}

impl log::Host for HostState {
    fn emit(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) {
        let name = &self.ctx.name;
        let fields = fields.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
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

/// The engine and the prepared component, shared by all integrations.
pub struct Runtime {
    engine: Engine,
    pre: PresenceSyncPre<HostState>,
    /// The component's `plugin-version`, read at load.
    pub plugin_version: String,
    /// The sandbox limits of its instances.
    pub limits: Limits,
}

impl Runtime {
    /// Compiles `wasm` and prepares it for instantiation. Starts the epoch ticker.
    pub fn new(wasm: &[u8], limits: Limits) -> anyhow::Result<Arc<Runtime>> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = wt(Engine::new(&config))?;
        let component = wt(Component::new(&engine, wasm)).context("compiling the plugin component")?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        wt(wasmtime_wasi::p2::add_to_linker_async(&mut linker))?;
        wt(PresenceSync::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s))?;
        let pre = wt(PresenceSyncPre::new(wt(linker.instantiate_pre(&component))?))?;
        let weak = engine.weak();
        std::thread::Builder::new().name("epoch-ticker".into()).spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
            }
        })?;
        Ok(Arc::new(Runtime { engine, pre, plugin_version: String::new(), limits }))
    }

    fn new_store(&self, ctx: Arc<IntegrationCtx>) -> Store<HostState> {
        let state = HostState {
            // No preopened directories, environment, arguments, stdin or sockets.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                .instances(4)
                .tables(16)
                .memories(4)
                .build(),
            ctx,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        // Instantiation runs guest code too (start functions): give it the same deadline.
        store.set_epoch_deadline(self.limits.deadline_ticks());
        store
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
            Command::InterruptNextCall => "interrupt-next-call",
            Command::Shutdown => "shutdown",
        }
    }
}

/// The host's handle to an integration's actor.
#[derive(Clone)]
pub struct IntegrationHandle {
    /// Name.
    pub name: String,
    tx: mpsc::UnboundedSender<Command>,
    /// The customer's switchboard.
    pub switchboard: Arc<Switchboard>,
    ctx: Arc<IntegrationCtx>,
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
    /// Makes the instance's next guest call trap on its deadline (tests).
    pub fn interrupt_next_call(&self) {
        let _ = self.tx.send(Command::InterruptNextCall);
    }
    /// Stops the actor.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
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
    });
    let handle =
        IntegrationHandle { name: ctx.name.clone(), tx: tx.clone(), switchboard: s.switchboard, ctx: ctx.clone() };
    let mut actor = Actor::start(rt, ctx.clone(), s.settings).await?;
    // Notifications acknowledged before a crash but never processed: replay them, oldest
    // first, before anything else reaches the new instance.
    for (id, kind, body) in ctx.db.inbox(&ctx.name)? {
        ctx.count("inbox.replayed");
        let _ = tx.send(Command::Inbox(id, inbox_request(&kind, body)));
    }
    tokio::spawn(async move { actor.run(rx).await });
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
    store: Store<HostState>,
    bindings: PresenceSync,
    traps: u64,
    last_trap: Option<String>,
    config_error: Option<String>,
    plugin_version: String,
    interrupt_next: bool,
    /// The longest guest call seen, per kind of call (ms).
    slowest: std::collections::BTreeMap<&'static str, u64>,
}

impl Actor {
    async fn start(rt: Arc<Runtime>, ctx: Arc<IntegrationCtx>, settings: sync::Settings) -> anyhow::Result<Actor> {
        let mut store = rt.new_store(ctx.clone());
        let bindings = wt(rt.pre.instantiate_async(&mut store).await).context("instantiating the plugin")?;
        let mut actor = Actor {
            rt,
            ctx,
            settings,
            store,
            bindings,
            traps: 0,
            last_trap: None,
            config_error: None,
            plugin_version: String::new(),
            interrupt_next: false,
            slowest: Default::default(),
        };
        actor.configure().await;
        Ok(actor)
    }

    async fn configure(&mut self) {
        self.store.set_epoch_deadline(self.rt.limits.deadline_ticks());
        let settings = self.settings.clone();
        match self.bindings.teams_presence_plugin_sync().call_configure(&mut self.store, &settings).await {
            Ok(Ok(())) => self.config_error = None,
            Ok(Err(e)) => {
                let msg = match e {
                    sync::ConfigError::Missing(f) => format!("missing {f}"),
                    sync::ConfigError::Invalid(r) => format!("invalid {r}"),
                };
                tracing::error!(integration = %self.ctx.name, "plugin refused settings: {msg}");
                self.config_error = Some(msg);
            }
            Err(e) => {
                self.record_trap(e);
                return;
            }
        }
        self.store.set_epoch_deadline(self.rt.limits.deadline_ticks());
        if let Ok(v) = self.bindings.teams_presence_plugin_sync().call_plugin_version(&mut self.store).await {
            self.plugin_version = v;
        }
    }

    fn record_trap(&mut self, e: wasmtime::Error) {
        self.traps += 1;
        let msg = format!("{e:#}");
        tracing::error!(integration = %self.ctx.name, error = %msg, "plugin trapped; restarting its instance");
        self.last_trap = Some(msg);
    }

    /// After a trap the Store is poisoned: build a new one and configure again.
    async fn recover(&mut self) {
        let mut store = self.rt.new_store(self.ctx.clone());
        match self.rt.pre.instantiate_async(&mut store).await {
            Ok(b) => {
                self.store = store;
                self.bindings = b;
                Box::pin(self.configure()).await;
            }
            Err(e) => self.record_trap(e),
        }
    }

    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        while let Some(cmd) = rx.recv().await {
            tracing::trace!(integration = %self.ctx.name, command = cmd.name(), "guest call");
            if matches!(cmd, Command::InterruptNextCall) {
                self.interrupt_next = true;
                continue;
            }
            let deadline = if std::mem::take(&mut self.interrupt_next) { 0 } else { self.rt.limits.deadline_ticks() };
            self.store.set_epoch_deadline(deadline);
            let started = std::time::Instant::now();
            let kind = cmd.name();
            let sync = self.bindings.teams_presence_plugin_sync();
            let result: Result<(), wasmtime::Error> = match cmd {
                Command::Shutdown => return,
                Command::InterruptNextCall => Ok(()),
                Command::Webhook(req, reply) => match sync.call_on_webhook(&mut self.store, &req).await {
                    Ok(r) => {
                        let _ = reply.send(r);
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
                    let r = sync.call_on_webhook(&mut self.store, &req).await.map(|_| ());
                    // Processed (or it made the plugin trap, and would again): either way it
                    // leaves the inbox, so that one poisonous body cannot loop.
                    if let Err(e) = self.ctx.db.inbox_delete(id) {
                        tracing::error!(integration = %self.ctx.name, "inbox delete failed: {e:#}");
                    }
                    r
                }
                Command::HttpDone(id, outcome) => {
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
                                format!("switchboard user {u} is not mapped to a Microsoft user")
                            }
                            sync::LineEventError::PassiveUser(u) => {
                                format!("switchboard user {u} is passive (no line); passive users get no pushes")
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
            let slowest = self.slowest.entry(kind).or_default();
            *slowest = (*slowest).max(ms);
            if let Err(e) = result {
                self.record_trap(e);
                self.recover().await;
            }
        }
    }

    fn view(&self, s: Option<status::IntegrationStatus>) -> StatusView {
        StatusView::new(self, s)
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
    /// The WIT package version the host speaks.
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
pub const WIT_VERSION: &str = "2.0.0";

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
            wit_version: WIT_VERSION.into(),
            traps: a.traps,
            last_trap: a.last_trap.clone(),
            refused_requests: a.ctx.refused_requests.load(Ordering::Relaxed),
            slowest_calls_ms: a.slowest.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
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
        for (k, n) in a.ctx.counters.lock().unwrap().iter() {
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
