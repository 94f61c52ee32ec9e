//! [`Actor`]: one task per integration that owns the wasmtime `Store` and its instance and
//! serves the integration's bounded queue of [`Command`]s one at a time, so an instance is
//! never re-entered. After every command it takes what waits in the durable inbox, in order
//! and a step at a time, so that a flood of notifications never crowds out the other
//! commands (and never grows the queue: notifications wait on disk).
//!
//! A trap poisons a `Store`; the actor then builds a new `Store` and instance from the
//! release, configures it again (the plugin restores itself from durable state) and reports
//! the trap in the status. Hot swap ([`crate::swap`]) happens between two commands.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;
use wasmtime::Store;

use crate::bindings::{absence, policy, status, sync, users};
use crate::command::Command;
use crate::context::IntegrationCtx;
use crate::engine::{Runtime, wt};
use crate::error::{LineEventError, OverrideError};
use crate::inbox;
use crate::instance::{HostState, arm, extend};
use crate::release::Plugin;
use crate::release::Release;
use crate::sandbox::{cap, printable, thread_cpu};
use crate::status::{
    HostSide, MappingCountsView, PluginView, StatusView, SwapReport, UserRowView, UsersFilter, UsersPageView,
};

/// The task that runs one integration's plugin.
pub(crate) struct Actor {
    pub(crate) rt: Arc<Runtime>,
    pub(crate) ctx: Arc<IntegrationCtx>,
    /// The actor's own queue (for the ticks the plugin asks for, and to yield during a flood).
    tx: mpsc::Sender<Command>,
    pub(crate) settings: sync::Settings,
    /// The sync policy the host holds for the integration.
    pub(crate) policy: crate::policy::PolicyConfig,
    pub(crate) release: Arc<Release>,
    pub(crate) store: Store<HostState>,
    pub(crate) bindings: Plugin,
    traps: u64,
    last_trap: Option<String>,
    pub(crate) config_error: Option<String>,
    pub(crate) plugin_version: String,
    interrupt_next: bool,
    /// Guest calls per kind: how many, their total time and their total CPU time, in µs.
    call_totals: BTreeMap<&'static str, (u64, u64, u64)>,
    /// The longest guest call seen, per kind of call (ms).
    slowest: BTreeMap<&'static str, u64>,
    /// The most CPU time a guest call took so far, per kind, in µs.
    slowest_cpu: BTreeMap<&'static str, u64>,
    /// The last hot swap.
    pub(crate) last_swap: Option<SwapReport>,
    /// Counters of the releases that ran before a swap, so that the status counts since start.
    pub(crate) carried: BTreeMap<String, u64>,
    /// The id of the last inbox row the plugin took (rows not removed yet): the next one is
    /// after it. Back to 0 once they are removed (see [`inbox::Deletes::rewind`]).
    inbox_cursor: i64,
    /// Rows the plugin took in this step (id, stored bytes), removed together at its end.
    taken: Vec<(i64, u64)>,
    /// Their removal, which the actor does not wait for.
    deletes: Arc<inbox::Deletes>,
    /// The plugin answered `retry-later` (it is restoring its state): the inbox waits until
    /// after its next tick.
    inbox_blocked: bool,
    /// How long the running instance took to instantiate (ms).
    pub(crate) instantiate_ms: f64,
}

/// What `configure` made of an instance.
pub(crate) enum Configured {
    /// Configured; the plugin's version.
    Ok(String),
    /// The plugin refused the settings.
    Refused(String),
    /// The call trapped.
    Trapped(wasmtime::Error),
}

/// Configures a fresh instance, and sets its sync policy.
pub(crate) async fn configure_instance(
    store: &mut Store<HostState>,
    bindings: &Plugin,
    settings: &sync::Settings,
    policy_config: &crate::policy::PolicyConfig,
) -> Configured {
    arm(store, false);
    let sync = bindings.teams_presence_plugin_sync();
    match sync.call_configure(&mut *store, settings).await {
        Ok(Ok(())) => {}
        // The guest's words are escaped and cut wherever they go (log, status, swap report).
        Ok(Err(sync::ConfigError::Missing(f))) => {
            return Configured::Refused(format!("missing {}", printable(&cap(f, 512))));
        }
        Ok(Err(sync::ConfigError::Invalid(r))) => {
            return Configured::Refused(format!("invalid {}", printable(&cap(r, 512))));
        }
        Err(e) => return Configured::Trapped(e),
    }
    match (bindings.policy(), policy_config.to_wit()) {
        (Some(p), Ok(wanted)) => {
            arm(store, false);
            match p.call_set_policy(&mut *store, &wanted).await {
                Ok(Ok(())) => {}
                Ok(Err(policy::PolicyError::Invalid(r))) => {
                    return Configured::Refused(format!("invalid policy: {}", printable(&cap(r, 512))));
                }
                Err(e) => return Configured::Trapped(e),
            }
        }
        (None, _) if policy_config.is_default() => {}
        (None, _) => {
            return Configured::Refused(
                "this plugin release has no policy export (WIT 3.5.0): its sync policy is not applied".into(),
            );
        }
        (Some(_), Err((field, reason))) => return Configured::Refused(format!("invalid {field}: {reason}")),
    }
    arm(store, false);
    match sync.call_plugin_version(&mut *store).await {
        Ok(v) => Configured::Ok(printable(&cap(v, 128))),
        Err(e) => Configured::Trapped(e),
    }
}

/// A dry run's entry as the host shows it: the guest's words capped and printable.
fn dry_run_view(e: policy::DryRunEntry) -> crate::status::DryRunView {
    let shows = |c: policy::CallPresence| match c {
        policy::CallPresence::None => "none",
        policy::CallPresence::InACall => "in-a-call",
        policy::CallPresence::DoNotDisturb => "do-not-disturb",
    };
    crate::status::DryRunView {
        user_id: printable(&cap(e.user_id, 256)),
        microsoft_user_id: printable(&cap(e.microsoft_user_id, 256)),
        now: shows(e.now).into(),
        after: shows(e.after).into(),
        reason: printable(&cap(e.reason, 512)),
    }
}

/// A page of the users list as the host shows it: the guest's words capped and printable.
fn users_page_view(p: users::UsersPage) -> UsersPageView {
    let text = |s: String| printable(&cap(s, 512));
    UsersPageView {
        total: p.total,
        rows: p
            .rows
            .into_iter()
            .take(500)
            .map(|r| UserRowView {
                switchboard_user_id: text(r.switchboard_user_id),
                name: text(r.name),
                emails: r.emails.into_iter().take(32).map(text).collect(),
                active: r.active,
                microsoft_user_id: r.microsoft_user_id.map(text),
                microsoft_user: r.microsoft_user.map(text),
                matched_by: r.matched_by.map(|m| {
                    match m {
                        users::MatchedBy::Override => "override",
                        users::MatchedBy::Mail => "mail",
                        users::MatchedBy::Alias => "alias",
                        users::MatchedBy::Upn => "upn",
                    }
                    .into()
                }),
                unmatched: r.unmatched.map(|u| {
                    match u {
                        users::UnmatchedReason::NoAddress => "no-address",
                        users::UnmatchedReason::NoMatch => "no-match",
                        users::UnmatchedReason::Conflict => "conflict",
                        users::UnmatchedReason::UnresolvedOverride => "unresolved-override",
                        users::UnmatchedReason::DirectoryNotRead => "directory-not-read",
                    }
                    .into()
                }),
                presence: r.presence.map(|p| (text(p.availability), text(p.activity))),
                integration_user: r.integration_user.map(text),
                conflict: r.conflict.map(text),
            })
            .collect(),
    }
}

/// The host's typed error for the plugin's refusal of a line event.
fn line_event_error(e: sync::LineEventError) -> LineEventError {
    match e {
        sync::LineEventError::UnmappedUser(u) => LineEventError::UnmappedUser(cap(u, 256)),
        sync::LineEventError::PassiveUser(u) => LineEventError::PassiveUser(cap(u, 256)),
        sync::LineEventError::PushDisabled => LineEventError::PushDisabled,
    }
}

impl Actor {
    /// Instantiates `release` for `ctx`'s integration and configures it.
    pub(crate) async fn start(
        rt: Arc<Runtime>,
        ctx: Arc<IntegrationCtx>,
        tx: mpsc::Sender<Command>,
        settings: sync::Settings,
        policy: crate::policy::PolicyConfig,
        release: Arc<Release>,
    ) -> anyhow::Result<Actor> {
        let mut store = rt.new_store(ctx.clone());
        let t0 = Instant::now();
        let bindings = wt(release.pre.instantiate_async(&mut store).await).context("instantiating the plugin")?;
        let instantiate_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let mut actor = Actor {
            rt,
            ctx,
            tx,
            settings,
            policy,
            release,
            store,
            bindings,
            traps: 0,
            last_trap: None,
            config_error: None,
            plugin_version: String::new(),
            interrupt_next: false,
            slowest: Default::default(),
            slowest_cpu: Default::default(),
            call_totals: Default::default(),
            last_swap: None,
            carried: Default::default(),
            inbox_cursor: 0,
            taken: Vec::new(),
            deletes: Default::default(),
            inbox_blocked: false,
            instantiate_ms,
        };
        actor.configure().await;
        Ok(actor)
    }

    async fn configure(&mut self) {
        match configure_instance(&mut self.store, &self.bindings, &self.settings, &self.policy).await {
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
            msg = format!("{msg}; guest stderr: {}", printable(&cap(stderr, 512)));
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

    /// Serves the queue until it closes, the host stops or a [`Command::Shutdown`] comes;
    /// after every command, takes what waits in the inbox.
    pub(crate) async fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        // Commands a swap held back go first, in the order they came (a swap among them
        // waits for the one before to finish).
        let mut held = std::collections::VecDeque::new();
        loop {
            self.take_inbox().await;
            let cmd = match held.pop_front() {
                Some(cmd) => cmd,
                None => match rx.recv().await {
                    Some(cmd) => cmd,
                    None => return,
                },
            };
            if self.ctx.is_stopping() {
                return;
            }
            match cmd {
                Command::Shutdown => return,
                Command::InboxWake => {}
                Command::Swap(release, reply) => {
                    let (report, more) = self.swap(release, &mut rx).await;
                    let _ = reply.send(report);
                    held.extend(more);
                }
                cmd => self.call(cmd).await,
            }
        }
    }

    /// Offers the plugin the inbox's rows after the cursor, in order, [`inbox::STEP`] at a
    /// time: more waiting go back in line behind the commands queued meanwhile. Stops at a
    /// `retry-later` until the plugin's next tick.
    async fn take_inbox(&mut self) {
        if self.inbox_blocked || self.ctx.is_stopping() || !self.ctx.inbox_waiting.swap(false, Ordering::SeqCst) {
            return;
        }
        if self.deletes.rewind() {
            self.inbox_cursor = 0;
        }
        let rows = match self.ctx.store.inbox_after(&self.ctx.name, self.inbox_cursor, inbox::STEP) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(integration = %self.ctx.name, "inbox read failed: {e}; retried after the next command");
                self.ctx.inbox_waiting.store(true, Ordering::SeqCst);
                return;
            }
        };
        let full = rows.len() == inbox::STEP;
        self.take_rows(rows).await;
        // What the plugin took is removed while the actor goes on (the inbox writer's fsync
        // does not hold it); once it is gone, the next step reads from the inbox's start.
        self.deletes.start(&self.ctx, &self.tx, &std::mem::take(&mut self.taken));
        if self.deletes.rewind() {
            self.inbox_cursor = 0;
        }
        if full && !self.inbox_blocked {
            inbox::wake(&self.ctx, &self.tx);
        }
    }

    /// Offers `rows` in order; stops at a `retry-later`. The RSA unwraps of all of them are
    /// queued first, so that they run on every core while the plugin takes the rows one after
    /// the other (rows the webhook took have theirs queued already: see [`crate::unwrap`]).
    async fn take_rows(&mut self, rows: Vec<crate::store::InboxEntry>) {
        let mut opened = Vec::with_capacity(rows.len());
        for row in rows {
            match inbox::open(&self.ctx, &row) {
                Some(body) => {
                    let keys = crate::unwrap::read_envelope(&body).unwrap_or_default();
                    self.ctx.unwraps.start(&keys);
                    opened.push((row, body, keys));
                }
                None => self.inbox_cursor = row.id,
            }
        }
        for (row, body, keys) in opened {
            let stored = row.body.len() as u64;
            self.ctx.unwraps.ready(&keys).await;
            self.call(Command::Inbox(row.id, body, stored)).await;
            self.ctx.unwraps.forget(&keys);
            if self.inbox_blocked {
                self.ctx.inbox_waiting.store(true, Ordering::SeqCst);
                return;
            }
            let waited_ms = self.ctx.clock.now_ms().saturating_sub(row.received_ms);
            self.ctx.metrics.processed(waited_ms as f64 / 1000.0);
            self.inbox_cursor = row.id;
        }
    }

    /// One command, one guest call.
    pub(crate) async fn call(&mut self, cmd: Command) {
        tracing::trace!(integration = %self.ctx.name, command = cmd.name(), "guest call");
        match cmd {
            Command::InterruptNextCall => {
                self.interrupt_next = true;
                return;
            }
            Command::InboxWake => return,
            _ => {}
        }
        let is_tick = matches!(cmd, Command::Tick);
        if is_tick {
            self.ctx.retry_writes();
        }
        let force = std::mem::take(&mut self.interrupt_next);
        arm(&mut self.store, force);
        let started = Instant::now();
        let started_cpu = thread_cpu();
        let kind = cmd.name();
        if matches!(cmd, Command::UsersPage(..) | Command::MappingCounts(..) | Command::DryRun(..)) {
            extend(&mut self.store, Duration::from_millis(crate::sandbox::ADMIN_QUERY_DEADLINE_MS));
        }
        let sync = self.bindings.teams_presence_plugin_sync();
        let mut offered = None;
        let result: Result<(), wasmtime::Error> = match cmd {
            Command::Shutdown | Command::Swap(..) | Command::InterruptNextCall | Command::InboxWake => Ok(()),
            Command::Inbox(id, body, stored) => {
                let (o, r) = inbox::offer(&mut self.store, sync, &self.ctx, id, body, stored).await;
                offered = Some(o);
                r
            }
            Command::HttpDone(id, outcome) => {
                self.ctx.in_flight.fetch_sub(1, Ordering::SeqCst);
                sync.call_on_http_response(&mut self.store, id, outcome.as_ref()).await
            }
            Command::SetOverrides(o, reply) => sync.call_set_overrides(&mut self.store, &o).await.map(|r| {
                let _ = reply.send(r.map_err(|sync::OverrideError::InvalidEntry(p)| OverrideError::InvalidEntry {
                    index: p.index,
                    reason: cap(p.reason, 1024),
                }));
            }),
            Command::GetOverrides(reply) => sync.call_get_overrides(&mut self.store).await.map(|r| {
                let _ = reply.send(r);
            }),
            Command::Tick => sync.call_tick(&mut self.store).await,
            Command::SyncNow => sync.call_sync_now(&mut self.store).await,
            Command::Status(reply) => match sync.call_status(&mut self.store).await {
                Ok(s) => {
                    let mut view = self.view(Some(s));
                    let policy = match self.bindings.policy() {
                        Some(p) => {
                            arm(&mut self.store, false);
                            p.call_status(&mut self.store).await.map(|s| Some(s.into()))
                        }
                        None => Ok(None),
                    };
                    match policy {
                        Ok(p) => {
                            view.policy = p;
                            let _ = reply.send(view);
                            Ok(())
                        }
                        Err(e) => {
                            let _ = reply.send(view);
                            Err(e)
                        }
                    }
                }
                Err(e) => {
                    let _ = reply.send(self.view(None));
                    Err(e)
                }
            },
            Command::Line(ev, reply) => sync.call_on_line_event(&mut self.store, &ev).await.map(|r| {
                let _ = reply.send(r.map_err(line_event_error));
            }),
            Command::Absence(ev, reply) => match self.bindings.absence() {
                Some(a) => a.call_on_absence(&mut self.store, &ev).await.map(|r| {
                    let _ = reply.send(r.map_err(|e| match e {
                        absence::AbsenceError::UnmappedUser(u) => {
                            crate::error::AbsenceError::UnmappedUser(printable(&cap(u, 256)))
                        }
                        absence::AbsenceError::TooLong(n) => crate::error::AbsenceError::TooLong(n),
                        absence::AbsenceError::PushDisabled => crate::error::AbsenceError::PushDisabled,
                    }));
                }),
                None => {
                    let _ = reply.send(Err(crate::error::AbsenceError::NotSupported));
                    Ok(())
                }
            },
            Command::Retire(reply) => match self.bindings.admin() {
                Some(admin) => admin.call_retire(&mut self.store).await.map(|p| {
                    let _ = reply.send(Some(crate::status::Retirement {
                        subscriptions: p.subscriptions,
                        sessions: p.sessions,
                        users_withdrawn: p.users_withdrawn,
                        problem: p.problem.map(|m| printable(&cap(m, 1024))),
                    }));
                }),
                None => {
                    let _ = reply.send(None);
                    Ok(())
                }
            },
            Command::UsersPage(q, reply) => match self.bindings.users() {
                Some(u) => {
                    let query = users::UsersQuery {
                        search: q.search,
                        filter: match q.filter {
                            UsersFilter::All => users::UsersFilter::All,
                            UsersFilter::Unmatched => users::UsersFilter::Unmatched,
                            UsersFilter::Uncovered => users::UsersFilter::Uncovered,
                            UsersFilter::Conflicts => users::UsersFilter::Conflicts,
                        },
                        offset: q.offset,
                        limit: q.limit.clamp(1, 500),
                    };
                    u.call_page(&mut self.store, &query).await.map(|p| {
                        let _ = reply.send(Some(users_page_view(p)));
                    })
                }
                None => {
                    let _ = reply.send(None);
                    Ok(())
                }
            },
            Command::DryRun(proposed, reply) => match self.bindings.policy() {
                Some(p) => p.call_dry_run(&mut self.store, &proposed).await.map(|r| {
                    let _ = reply.send(Some(
                        r.map(|entries| entries.into_iter().take(10_000).map(dry_run_view).collect())
                            .map_err(|policy::PolicyError::Invalid(m)| printable(&cap(m, 1024))),
                    ));
                }),
                None => {
                    let _ = reply.send(None);
                    Ok(())
                }
            },
            Command::MappingCounts(reply) => match self.bindings.users() {
                Some(u) => u.call_counts(&mut self.store).await.map(|c| {
                    let _ = reply.send(Some(MappingCountsView {
                        switchboard_users: c.switchboard_users,
                        mapped: c.mapped,
                        by_override: c.by_override,
                        by_mail: c.by_mail,
                        by_alias: c.by_alias,
                        by_upn: c.by_upn,
                        no_address: c.no_address,
                        no_match: c.no_match,
                        conflict: c.conflict,
                        unresolved_override: c.unresolved_override,
                        directory_not_read: c.directory_not_read,
                        uncovered: c.uncovered,
                        passive: c.passive,
                    }));
                }),
                None => {
                    let _ = reply.send(None);
                    Ok(())
                }
            },
        };
        *self.ctx.last_call.lock().unwrap() = Some(Instant::now());
        let total = self.call_totals.entry(kind).or_default();
        total.0 += 1;
        total.1 += started.elapsed().as_micros() as u64;
        // A call runs on this thread from start to end (nothing in it yields).
        let cpu_us = thread_cpu().saturating_sub(started_cpu).as_micros() as u64;
        total.2 += cpu_us;
        let slowest_cpu = self.slowest_cpu.entry(kind).or_default();
        *slowest_cpu = (*slowest_cpu).max(cpu_us);
        let slowest = self.slowest.entry(kind).or_default();
        *slowest = (*slowest).max(started.elapsed().as_millis() as u64);
        match offered {
            Some(inbox::Offered::Taken(id, stored)) => self.taken.push((id, stored)),
            Some(inbox::Offered::Deferred) => self.inbox_blocked = true,
            None => {}
        }
        if let Err(e) = result {
            self.record_trap(e);
            self.recover().await;
        }
        // After each step of the plugin's work, a batch it asked to see again is offered again.
        if is_tick && self.inbox_blocked {
            self.inbox_blocked = false;
        }
        self.wake_if_asked();
    }

    /// The next step of the plugin's background work, after what is queued already.
    pub(crate) fn wake_if_asked(&self) {
        if self.ctx.tick_requested.swap(false, Ordering::SeqCst) && self.tx.try_send(Command::Tick).is_err() {
            // The queue is full: asked again after the next command.
            self.ctx.tick_requested.store(true, Ordering::SeqCst);
        }
    }

    fn view(&self, s: Option<status::IntegrationStatus>) -> StatusView {
        let mut counters = self.carried.clone();
        for (k, n) in self.ctx.counters() {
            *counters.entry(k).or_default() += n;
        }
        StatusView::new(
            HostSide {
                name: self.ctx.name.clone(),
                plugin_version: self.plugin_version.clone(),
                plugin: PluginView {
                    sha256: self.release.sha256.clone(),
                    wit_version: self.release.wit_version.clone(),
                    bytes: self.release.bytes,
                    from_cache: self.release.from_cache,
                    load_ms: self.release.load_ms,
                    instantiate_ms: self.instantiate_ms,
                },
                last_swap: self.last_swap.clone(),
                traps: self.traps,
                last_trap: self.last_trap.clone(),
                config_error: self.config_error.clone(),
                refused_requests: self.ctx.refused_requests.load(Ordering::Relaxed),
                outbound_in_flight: self.ctx.in_flight.load(Ordering::SeqCst),
                call_totals: self.call_totals.clone(),
                slowest: self.slowest.clone(),
                slowest_cpu: self.slowest_cpu.clone(),
                linear_memory_bytes: self.store.data().linear_memory_bytes() as u64,
                counters,
                inbox: (self.ctx.inbox_rows.load(Ordering::SeqCst), self.ctx.inbox_bytes.load(Ordering::SeqCst)),
                state_writes_pending: self.ctx.pending_writes.lock().unwrap().len() as u64,
                state_error: self.ctx.state_error.lock().unwrap().clone(),
                client_secret_expires_ms: self.ctx.client_secret_expires_ms,
                now_ms: self.ctx.clock.now_ms(),
            },
            s,
        )
    }
}
