//! The registry of a host among several on one PostgreSQL database: which integrations run
//! here follows the leases (see [`crate::lease`] for the rules); the keeper renews them,
//! balances, starts what this host took and stops what it lost or let go of; changes made
//! through another host's admin API arrive as notifications.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::{Entry, Record, Registry, Source, same};
use crate::config::IntegrationConfig;
use crate::http::{HttpClient, HttpError, HttpFuture, OutboundRequest};
use crate::inbox::AcceptError;
use crate::lease::{self, Leases};
use crate::switchboard::{LineEvent, PresenceUpdate, Switchboard, SwitchboardUser, UnknownUser};

/// Integrations started at once when a host takes many leases (a failover).
const START_CONCURRENCY: usize = 16;

/// `http` and `switchboard` for integration `name`, refusing to act once this host may have
/// lost its lease: nothing reaches Microsoft or the switchboard from a host that did.
pub(super) fn fenced(
    leases: &Arc<Leases>,
    name: &str,
    http: Arc<dyn HttpClient>,
    switchboard: Arc<dyn Switchboard>,
) -> (Arc<dyn HttpClient>, Arc<dyn Switchboard>) {
    (
        Arc::new(FencedHttp { inner: http, leases: leases.clone(), name: name.into() }),
        Arc::new(FencedSwitchboard { inner: switchboard, leases: leases.clone(), name: name.into() }),
    )
}

struct FencedHttp {
    inner: Arc<dyn HttpClient>,
    leases: Arc<Leases>,
    name: String,
}

impl HttpClient for FencedHttp {
    fn send(&self, req: OutboundRequest) -> HttpFuture {
        if !self.leases.may_act(&self.name) {
            return Box::pin(std::future::ready(Err(HttpError::Connection(
                "this host no longer holds the integration's lease: another host runs it".into(),
            ))));
        }
        self.inner.send(req)
    }
}

struct FencedSwitchboard {
    inner: Arc<dyn Switchboard>,
    leases: Arc<Leases>,
    name: String,
}

impl Switchboard for FencedSwitchboard {
    fn users_page(&self, start: usize, count: usize) -> Vec<SwitchboardUser> {
        self.inner.users_page(start, count)
    }
    fn revision(&self) -> u64 {
        self.inner.revision()
    }
    fn publish(&self, update: PresenceUpdate) -> Result<(), UnknownUser> {
        let Some(fence) = self.leases.fence(&self.name) else {
            tracing::warn!(integration = %self.name, "presence not shown: this host no longer holds the lease");
            return Ok(());
        };
        self.inner.publish_fenced(update, &fence)
    }
    fn withdraw(&self, user_id: &str) {
        if let Some(fence) = self.leases.fence(&self.name) {
            self.inner.withdraw_fenced(user_id, &fence);
        }
    }
    fn calls_in_progress(&self) -> Vec<LineEvent> {
        self.inner.calls_in_progress()
    }
    fn show_note(&self, user_id: &str, microsoft_user_id: &str, note: &crate::switchboard::TeamsNote) {
        // A note is shown under the lease, as a presence is.
        if self.leases.fence(&self.name).is_some() {
            self.inner.show_note(user_id, microsoft_user_id, note);
        }
    }
    fn absences_in_progress(&self) -> Vec<crate::switchboard::AbsenceEvent> {
        self.inner.absences_in_progress()
    }
}

impl Registry {
    /// This host's leases, when it is one of several.
    pub fn leases(&self) -> Option<&Arc<Leases>> {
        self.launch.leases.as_ref()
    }

    /// Starts `name` here (this host just took its lease), on its configuration as its shared
    /// `record` has it now (none: the file's); finishes its delete when one was under way.
    async fn run_here(&self, name: &str, record: Option<Record>) -> anyhow::Result<()> {
        let (config, source, deleting) = match (record, self.entry(name)) {
            (Some(Record::Active { config }), _) => (IntegrationConfig::from(config), Source::AdminApi, false),
            (Some(Record::Deleting { config }), _) => (IntegrationConfig::from(config), Source::AdminApi, true),
            (Some(Record::Deleted), _) => {
                self.entries.lock().unwrap().remove(name);
                return self.forget(name).await;
            }
            (None, Some(e)) => (e.config, e.source, false),
            // A lease of an integration this host does not know of: not in its file, and no
            // record (the record of a create on another host is written before its lease).
            (None, None) => anyhow::bail!("no configuration of integration {name} is known here"),
        };
        let (handle, sha) = self.launch.spawn(&config).await?;
        self.entries
            .lock()
            .unwrap()
            .insert(name.to_string(), Entry { config, source, configured_sha256: sha, busy: deleting });
        self.publish(|m| {
            m.insert(name.to_string(), handle);
        });
        tracing::info!(integration = %name, "integration started here (lease taken)");
        if deleting {
            tracing::info!(integration = %name, "finishing a delete under way");
            self.finish_delete(name).await;
        }
        Ok(())
    }

    /// Stops `name` here: after its requests in flight when this host still holds the lease
    /// (it lets go of it), at once when it lost it.
    async fn stop_here(&self, name: &str) {
        let Some(h) = self.get(name) else { return };
        if self.launch.leases.as_ref().is_some_and(|l| l.may_act(name)) {
            super::drain(&h, super::DRAIN_WITHIN).await;
        }
        self.publish(|m| {
            m.remove(name);
        });
        h.shutdown();
        h.stopped().await;
        // Its metrics are the new owner's to show.
        self.launch.metrics.remove_integration(name);
        tracing::info!(integration = %name, "integration stopped here");
    }

    /// A deleted integration: its lease row goes, and the other hosts hear of it.
    pub(super) async fn forget(&self, name: &str) -> anyhow::Result<()> {
        if let Some(l) = &self.launch.leases {
            l.forget(name).await?;
            l.notify(lease::REGISTRY_CHANNEL, name).await?;
        }
        Ok(())
    }

    /// Announces a change of `name` to the other hosts, and makes sure it has a lease row.
    pub(super) async fn announce(&self, name: &str) -> anyhow::Result<()> {
        if let Some(l) = &self.launch.leases {
            l.ensure(vec![name.to_string()]).await?;
            l.notify(lease::REGISTRY_CHANNEL, name).await?;
        }
        Ok(())
    }

    /// Re-reads the shared records: integrations another host's admin API created, changed
    /// or deleted. A change of one running here re-starts it; a delete of one running here
    /// is finished here (its retirement needs it running).
    async fn reload(self: &Arc<Self>) -> anyhow::Result<()> {
        let records = self.launch.records()?;
        for (name, record) in records {
            let current = self.entry(&name);
            let running = self.get(&name).is_some();
            match record {
                Record::Active { config } => {
                    let config = IntegrationConfig::from(config);
                    match current {
                        None => {
                            self.entries.lock().unwrap().insert(
                                name.clone(),
                                Entry {
                                    config,
                                    source: Source::AdminApi,
                                    configured_sha256: String::new(),
                                    busy: false,
                                },
                            );
                        }
                        Some(e) if e.busy || (e.source == Source::AdminApi && same(&e.config, &config)) => {}
                        Some(_) => {
                            {
                                let mut entries = self.entries.lock().unwrap();
                                let e = entries.get_mut(&name).expect("present");
                                e.config = config.clone();
                                e.source = Source::AdminApi;
                            }
                            if running {
                                tracing::info!(integration = %name, "changed on another host: re-starting it here");
                                let _ = self.restart(&name).await;
                            }
                        }
                    }
                }
                Record::Deleting { .. } => {
                    if running && current.as_ref().is_some_and(|e| !e.busy) {
                        self.entries.lock().unwrap().get_mut(&name).expect("present").busy = true;
                        let me = self.clone();
                        tokio::spawn(async move {
                            me.finish_delete(&name).await;
                        });
                    }
                }
                Record::Deleted => {
                    if !running && current.is_some_and(|e| !e.busy) {
                        self.entries.lock().unwrap().remove(&name);
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `name` is an integration of the fleet that runs on another host (or on none
    /// yet): its webhooks are taken here into the shared inbox.
    pub(crate) fn runs_elsewhere(&self, name: &str) -> bool {
        self.launch.leases.is_some() && self.get(name).is_none() && self.entries.lock().unwrap().contains_key(name)
    }

    /// Counts what happened to a webhook taken here for an integration another host runs.
    pub(crate) fn count_elsewhere(&self, what: &str) {
        if let Some(l) = &self.launch.leases {
            l.count_elsewhere(what);
        }
    }

    /// The webhook path segment of `name` (the same on every host: derived from the KEK).
    pub(crate) fn webhook_token_of(&self, name: &str) -> String {
        crate::integration::webhook_token(&self.launch.host.kek, name)
    }

    /// Takes a webhook body of `name`, which runs on another host: into the shared inbox,
    /// and its owner is woken.
    pub(crate) async fn accept_elsewhere(&self, name: &str, kind: &str, body: Vec<u8>) -> Result<(), AcceptError> {
        let store = self.launch.store.clone();
        let kek = self.launch.host.kek.clone();
        let limits = self.launch.host.inbox_limits;
        let now = self.launch.clock.now_ms();
        let (n, k) = (name.to_string(), kind.to_string());
        tokio::task::spawn_blocking(move || {
            crate::inbox::accept_elsewhere(store.as_ref(), &kek, limits, &n, &k, &body, now)
        })
        .await
        .unwrap_or_else(|e| Err(AcceptError::Store(crate::error::StoreError::Unavailable(e.to_string()))))?;
        if let Some(l) = &self.launch.leases
            && let Err(e) = l.notify(lease::INBOX_CHANNEL, name).await
        {
            // Stored: the owner finds it at its next round.
            tracing::warn!(integration = %name, "could not wake the host that runs it: {e:#}");
        }
        Ok(())
    }

    /// Stops every integration here and lets go of their leases (a stop): the other hosts
    /// take them over at once instead of after the leases run out.
    pub(crate) async fn hand_over(&self) {
        let Some(leases) = self.launch.leases.clone() else { return };
        for name in leases.held() {
            self.stop_here(&name).await;
            if let Err(e) = leases.release(&name).await {
                tracing::warn!(integration = %name, "could not let go of its lease ({e:#}); it runs out in {} s", lease::LEASE_TTL.as_secs());
            }
        }
    }
}

/// Keeps the leases of a host among several (nothing for a host on its own): every
/// [`lease::ROUND`] renews them, stops what was lost, balances (see [`lease::share`]), starts
/// what was taken, and wakes the integrations whose inbox another host wrote to; at once on a
/// notification.
pub(crate) fn keep(registry: Arc<Registry>) -> Option<tokio::task::JoinHandle<()>> {
    let leases = registry.launch.leases.clone()?;
    let (tx, mut rx) = mpsc::channel::<(String, String)>(1024);
    leases.listen(tx);
    Some(tokio::spawn(async move {
        let mut next = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {
                    next = Instant::now() + lease::ROUND;
                    round(&registry, &leases).await;
                }
                n = rx.recv() => match n {
                    None => return,
                    Some((channel, payload)) => notified(&registry, &channel, &payload).await,
                },
            }
        }
    }))
}

async fn notified(registry: &Arc<Registry>, channel: &str, payload: &str) {
    match channel {
        lease::INBOX_CHANNEL => {
            if let Some(h) = registry.get(payload) {
                let _ = tokio::task::spawn_blocking(move || h.inbox_arrived()).await;
            }
        }
        lease::CALL_CHANNEL => {
            if registry.get(payload).is_some()
                && let Some(leases) = registry.leases().cloned()
            {
                registry.answer_calls(&leases, vec![payload.to_string()]).await;
            }
        }
        lease::ANSWER_CHANNEL => registry.answered(payload),
        lease::REGISTRY_CHANNEL => {
            if let Err(e) = registry.reload().await {
                tracing::error!("could not read the integrations' records: {e:#}");
            }
        }
        // Notifications may have been missed: look at everything now.
        _ => {
            let _ = registry.reload().await;
            if let Some(leases) = registry.leases().cloned() {
                wake_waiting(registry, &leases).await;
            }
        }
    }
}

async fn round(registry: &Arc<Registry>, leases: &Arc<Leases>) {
    let may_move = leases.next_round();
    match leases.renew().await {
        Ok(lost) => {
            for name in lost {
                tracing::warn!(integration = %name, "lease lost: another host took it over; stopping it here");
                registry.stop_here(&name).await;
            }
        }
        Err(e) => {
            leases.stats.lock().unwrap().renew_failed += 1;
            tracing::error!("could not renew the leases: {e:#}");
            // Past its own deadline a lease counts as lost: the integration stops here (its
            // requests and publications were refused since).
            for name in registry.snapshot().keys() {
                if !leases.may_act(name) {
                    registry.stop_here(name).await;
                }
            }
            return;
        }
    }
    // Integrations that should run here but do not (a start that failed): their lease goes.
    for name in leases.held() {
        if registry.get(&name).is_none() && !registry.entry(&name).is_some_and(|e| e.busy) {
            let _ = leases.release(&name).await;
        }
    }
    if !may_move {
        return;
    }
    let view = match leases.view().await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("could not read the fleet's leases: {e:#}");
            return;
        }
    };
    match lease::plan(&view, &leases.me, leases.held().len()) {
        lease::Plan::Take(n) => match leases.acquire(n).await {
            Ok(taken) => start_all(registry, leases, taken).await,
            Err(e) => tracing::error!("could not take leases: {e:#}"),
        },
        lease::Plan::HandOver(n) => {
            // The last by name: the same ones each round, whichever host holds them.
            let mut held = leases.held();
            for name in held.split_off(held.len() - n) {
                tracing::info!(integration = %name, "handing over to balance the hosts");
                registry.stop_here(&name).await;
                let _ = leases.release(&name).await;
            }
        }
        lease::Plan::Hold => {}
    }
    wake_waiting(registry, leases).await;
    // Calls whose notification was missed.
    registry.answer_calls(leases, registry.snapshot().keys().cloned().collect()).await;
}

/// Starts the integrations whose leases were just taken, some at once.
async fn start_all(registry: &Arc<Registry>, leases: &Arc<Leases>, names: Vec<String>) {
    if names.is_empty() {
        return;
    }
    // The shared records, read (and opened) once for all of them.
    let mut records = registry.launch.records().map_err(|e| format!("{e:#}"));
    let mut set = tokio::task::JoinSet::new();
    for name in names {
        let record = match &mut records {
            Ok(all) => Ok(all.remove(&name)),
            Err(e) => Err(anyhow::anyhow!("{e}")),
        };
        while set.len() >= START_CONCURRENCY {
            set.join_next().await;
        }
        let (registry, leases) = (registry.clone(), leases.clone());
        set.spawn(async move {
            let started = Instant::now();
            let started_here = match record {
                Ok(record) => registry.run_here(&name, record).await,
                Err(e) => Err(e),
            };
            match started_here {
                Ok(()) => tracing::info!(integration = %name, ms = started.elapsed().as_millis() as u64, "lease taken"),
                Err(e) => {
                    tracing::error!(
                        integration = %name,
                        "does not start here ({e:#}); letting go of its lease (not taken here again for {} s)",
                        lease::START_FAILED_PAUSE.as_secs()
                    );
                    leases.start_failed(&name);
                    let _ = leases.release(&name).await;
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// Wakes each integration running here whose inbox holds rows (a notification missed, or a
/// row that committed after rows written after it were taken): one query for all of them.
async fn wake_waiting(registry: &Arc<Registry>, leases: &Arc<Leases>) {
    let running: Vec<String> = registry.snapshot().keys().cloned().collect();
    if running.is_empty() {
        return;
    }
    let waiting = match leases.with_inbox_rows(running).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("could not look at the inbox: {e:#}");
            return;
        }
    };
    for name in waiting {
        if let Some(h) = registry.get(&name) {
            let _ = tokio::task::spawn_blocking(move || h.inbox_arrived()).await;
        }
    }
}
