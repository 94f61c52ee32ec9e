//! [`IntegrationHandle`]: how the rest of the host (and a platform) talks to one integration's
//! actor; [`spawn`] starts one.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::actor::Actor;
use crate::bindings::{presence, sync};
use crate::clock::Clock;
use crate::command::Command;
use crate::context::{CtxParts, InboxLimits, IntegrationCtx};
use crate::engine::Runtime;
use crate::error::{LineEventError, OverrideError, Stopping};
use crate::http::HttpClient;
use crate::inbox::{self, AcceptError};
use crate::keys::NotificationKey;
use crate::release::Release;
use crate::seal::Kek;
use crate::status::{StatusView, SwapReport};
use crate::store::StateStore;
use crate::switchboard::Switchboard;

/// How often the periodic `tick` comes.
pub const TICK_EVERY: Duration = Duration::from_secs(1);
/// Commands an integration's queue holds; a caller that finds it full waits (the API, outbound
/// answers) or lets the next one do (ticks, inbox wakes). Notifications do not pass through it:
/// they wait in the durable inbox.
pub const QUEUE_CAPACITY: usize = 256;

/// The host's handle to an integration's actor. Cheap to clone.
#[derive(Clone)]
pub struct IntegrationHandle {
    /// Name.
    pub name: String,
    tx: mpsc::Sender<Command>,
    ctx: Arc<IntegrationCtx>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl IntegrationHandle {
    async fn ask<T>(&self, cmd: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Stopping> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(cmd(tx)).await.map_err(|_| Stopping)?;
        rx.await.map_err(|_| Stopping)
    }

    /// Takes a notification (or lifecycle notification) body: persists it in the durable
    /// inbox, so that it survives a crash, and wakes the actor, which takes the inbox's rows in
    /// order. When this returns `Ok` the caller may acknowledge it to Graph.
    /// The fsync of its commit does not hold the runtime's worker (see [`inbox::accept`]).
    pub async fn accept(&self, kind: &str, body: Vec<u8>) -> Result<(), AcceptError> {
        let keys = crate::unwrap::read_envelope(&body).unwrap_or_default();
        self.accept_read(kind, body, keys).await
    }

    /// [`IntegrationHandle::accept`] of a body whose wrapped keys the caller has read: their
    /// RSA unwraps start on the host's pool while the body is stored (see [`crate::unwrap`]).
    pub(crate) async fn accept_read(
        &self,
        kind: &str,
        body: Vec<u8>,
        keys: Vec<crate::unwrap::DataKey>,
    ) -> Result<(), AcceptError> {
        self.ctx.unwraps.start(&keys);
        let r = inbox::accept(&self.ctx, &self.tx, kind, &body).await;
        if r.is_err() {
            self.ctx.unwraps.forget(&keys);
        }
        r
    }

    /// Rows were put in the inbox by another host (several hosts): the actor takes them.
    /// Reads the inbox's size from the store: call it off the runtime's workers.
    pub(crate) fn inbox_arrived(&self) {
        inbox::arrived(&self.ctx, &self.tx);
    }

    /// Whether `token` is this integration's webhook path segment (constant time).
    pub fn webhook_token_matches(&self, token: &str) -> bool {
        bool::from(subtle::ConstantTimeEq::ct_eq(token.as_bytes(), self.ctx.webhook_token.as_bytes()))
    }

    /// The path of this integration's webhook of `kind` (`notifications` or `lifecycle`),
    /// with its secret segment: `/webhook/{name}/{token}/{kind}`.
    pub fn webhook_path(&self, kind: &str) -> String {
        format!("/webhook/{}/{}/{kind}", self.name, self.ctx.webhook_token)
    }

    /// Rows and bytes waiting in the inbox.
    pub fn inbox_size(&self) -> (u64, u64) {
        (self.ctx.inbox_rows.load(Ordering::SeqCst), self.ctx.inbox_bytes.load(Ordering::SeqCst))
    }

    /// Whether the integration is running and its actor finished a guest call within
    /// `within` (it ticks every second): cheap, no guest call.
    pub fn alive(&self, within: std::time::Duration) -> bool {
        !self.ctx.stopping.load(Ordering::SeqCst)
            && self.ctx.last_call.lock().unwrap().is_some_and(|t| t.elapsed() <= within)
    }

    /// Requests of the plugin in flight.
    pub fn outbound_in_flight(&self) -> u64 {
        self.ctx.in_flight.load(Ordering::SeqCst)
    }

    /// Adds one to a host counter of this integration.
    pub fn count(&self, name: &str) {
        self.ctx.count(name);
    }

    /// The integration's status.
    pub async fn status(&self) -> Result<StatusView, Stopping> {
        self.ask(Command::Status).await
    }

    /// Replaces the overrides set through the API.
    pub async fn set_overrides(&self, o: Vec<sync::MappingOverride>) -> Result<(), OverrideError> {
        self.ask(|tx| Command::SetOverrides(o, tx)).await.map_err(|_| OverrideError::Stopping)?
    }

    /// The overrides set through the API.
    pub async fn overrides(&self) -> Result<Vec<sync::MappingOverride>, Stopping> {
        self.ask(Command::GetOverrides).await
    }

    /// Hands the plugin a line event of the switchboard.
    pub async fn line_event(&self, ev: presence::LineEvent) -> Result<(), LineEventError> {
        self.ask(|tx| Command::Line(ev, tx)).await.map_err(|_| LineEventError::Stopping)?
    }

    /// A switchboard absence starts, changes or ends (WIT `absence.on-absence`).
    pub async fn absence(&self, ev: crate::switchboard::AbsenceEvent) -> Result<(), crate::error::AbsenceError> {
        self.ask(|tx| Command::Absence(ev, tx)).await.map_err(|_| crate::error::AbsenceError::Stopping)?
    }

    /// "Sync now": re-read the directory at once.
    pub async fn sync_now(&self) -> Result<(), Stopping> {
        self.tx.send(Command::SyncNow).await.map_err(|_| Stopping)
    }

    /// A tick now, besides the periodic one (benchmarks that move the clock forward).
    pub async fn tick(&self) {
        let _ = self.tx.send(Command::Tick).await;
    }

    /// Retires the integration (see WIT `admin.retire`): idempotent, answers what is left;
    /// `None` when its plugin cannot (built against WIT 3.0 or 3.1).
    pub async fn retire(&self) -> Result<Option<crate::status::Retirement>, Stopping> {
        self.ask(Command::Retire).await
    }

    /// A page of the "Teams Presence users" list; `None` when its plugin cannot (built
    /// against WIT 3.2 or earlier).
    pub async fn users_page(
        &self,
        q: crate::status::UsersQuery,
    ) -> Result<Option<crate::status::UsersPageView>, Stopping> {
        self.ask(|tx| Command::UsersPage(q, tx)).await
    }

    /// The switchboard's users by outcome (what explains "OK, but 0 users"); `None` when its
    /// plugin cannot.
    pub async fn mapping_counts(&self) -> Result<Option<crate::status::MappingCountsView>, Stopping> {
        self.ask(Command::MappingCounts).await
    }

    /// What `policy` would do to the users in a call (see [`Command::DryRun`]).
    pub async fn dry_run(
        &self,
        policy: crate::bindings::policy::SyncPolicy,
    ) -> Result<Option<Result<Vec<crate::status::DryRunView>, String>>, Stopping> {
        self.ask(|tx| Command::DryRun(policy, tx)).await
    }

    /// Hot swap: switches this integration to `release` (see [`SwapReport`]).
    pub async fn swap(&self, release: Arc<Release>) -> Result<SwapReport, Stopping> {
        self.ask(|tx| Command::Swap(release, tx)).await
    }

    /// Makes the instance's next guest call trap on its deadline (tests).
    pub async fn interrupt_next_call(&self) {
        let _ = self.tx.send(Command::InterruptNextCall).await;
    }

    /// Stops the actor: it takes no further command (what is queued stays in the durable
    /// inbox, as after a crash).
    pub fn shutdown(&self) {
        self.ctx.stopping.store(true, Ordering::SeqCst);
        // A full queue means a busy actor, which sees the flag after its current command.
        let _ = self.tx.try_send(Command::Shutdown);
    }

    /// Waits until the actor has stopped (after [`IntegrationHandle::shutdown`]).
    pub async fn stopped(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// What an integration runs on: its settings and backends.
pub struct Spawn {
    /// Settings (with secrets).
    pub settings: sync::Settings,
    /// The sync policy, set right after every `configure` (a plugin without the `policy`
    /// export runs without it, and its status says so when it is not the default).
    pub policy: crate::policy::PolicyConfig,
    /// Origins the plugin may call (`scheme://host:port`).
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
    /// The plugin release to run.
    pub release: Arc<Release>,
    /// Seals what the integration stores.
    pub kek: Kek,
    /// The secret path segment of its webhook URLs (see [`webhook_token`]).
    pub webhook_token: String,
    /// Bounds of its inbox.
    pub inbox_limits: InboxLimits,
    /// The host's metrics, which it adds to.
    pub metrics: crate::metrics::IntegrationMetrics,
    /// When the client secret expires, as the admin entered it (ms since the epoch).
    pub client_secret_expires_ms: Option<u64>,
}

/// The secret path segment of an integration's webhook URLs: derived from the KEK and the
/// name, so it holds across restarts (Graph's subscriptions keep their URL) and no one
/// without the KEK can guess it. A request to any other path is refused before its body is
/// read.
pub fn webhook_token(kek: &Kek, integration: &str) -> String {
    kek.derive_token(&format!("webhook/{integration}"))
}

/// Starts an integration's actor, configures its instance and replays its inbox.
pub async fn spawn(rt: Arc<Runtime>, s: Spawn) -> anyhow::Result<IntegrationHandle> {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let done = tx.clone();
    let ctx = Arc::new(IntegrationCtx::new(
        s.settings.name.clone(),
        s.allowed_origins,
        s.http,
        s.store,
        s.switchboard,
        Arc::new(s.key),
        s.clock,
        Box::new(move |id, outcome| {
            let done = done.clone();
            Box::pin(async move { done.send(Command::HttpDone(id, outcome)).await.is_ok() })
        }),
        CtxParts {
            kek: s.kek,
            webhook_token: s.webhook_token,
            inbox_limits: s.inbox_limits,
            metrics: s.metrics,
            client_secret_expires_ms: s.client_secret_expires_ms,
        },
    ));
    let handle =
        IntegrationHandle { name: ctx.name.clone(), tx: tx.clone(), ctx: ctx.clone(), task: Default::default() };
    let mut actor = Actor::start(rt, ctx.clone(), tx.clone(), s.settings, s.policy, s.release).await?;
    // Notifications acknowledged before a crash but never processed: the actor takes them,
    // oldest first, before anything else reaches the new instance.
    inbox::replay(&ctx)?;
    *handle.task.lock().unwrap() = Some(tokio::spawn(async move { actor.run(rx).await }));
    let ticker = tx;
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(TICK_EVERY);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            iv.tick().await;
            // A full queue means a busy actor: this tick is skipped, the next one comes.
            if let Err(mpsc::error::TrySendError::Closed(_)) = ticker.try_send(Command::Tick) {
                return;
            }
        }
    });
    Ok(handle)
}
