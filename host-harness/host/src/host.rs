//! [`Host`]: the integrations of one host, wired to their backends and the plugin, and the
//! HTTP API in front of them ([`crate::api`]).
//!
//! A platform builds a [`Backends`] (its switchboards, and the default state store and HTTP
//! client or its own), starts the host on a [`Config`], and serves [`Host::router`] on its
//! listener, or lets [`Host::serve`] do it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use crate::allow_list;
use crate::bindings::sync;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, IntegrationConfig, MatchSource};
use crate::engine::Runtime;
use crate::http::{HttpClient, ReqwestClient};
use crate::integration::{self, IntegrationHandle, Spawn};
use crate::keys::NotificationKey;
use crate::listener::{self, ListenerLimits, ListenerStats, Serving};
use crate::release::Release;
use crate::status::{SwapOutcome, SwapReport};
use crate::store::{DirLock, SqliteStore, StateStore, secure_dir};
use crate::switchboard::Switchboard;

/// What a host runs on: a state store, an HTTP client, a clock, and each integration's
/// switchboard (by integration name).
pub struct Backends {
    /// Durable state of every integration.
    pub store: Arc<dyn StateStore>,
    /// Sends the plugins' requests (after the allow-list).
    pub http: Arc<dyn HttpClient>,
    /// The clock the plugins see.
    pub clock: Arc<dyn Clock>,
    /// Each integration's switchboard, by integration name. An integration without one is
    /// refused at start.
    pub switchboards: BTreeMap<String, Arc<dyn Switchboard>>,
}

impl Backends {
    /// The defaults: SQLite in `config.host.state_dir`, reqwest, the system clock; and these
    /// switchboards.
    pub fn defaults(config: &Config, switchboards: BTreeMap<String, Arc<dyn Switchboard>>) -> anyhow::Result<Self> {
        Ok(Backends {
            store: Arc::new(SqliteStore::open(&config.host.state_dir)?),
            http: Arc::new(ReqwestClient::new().context("building the HTTP client")?),
            clock: Arc::new(SystemClock),
            switchboards,
        })
    }
}

/// A running host.
pub struct Host {
    /// Integrations by name.
    pub integrations: BTreeMap<String, IntegrationHandle>,
    /// The clock the plugins see.
    pub clock: Arc<dyn Clock>,
    pub(crate) swaps: Arc<Swaps>,
    pub(crate) admin_token: crate::config::Secret,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    public_limits: ListenerLimits,
    /// Counters of the public and the admin listener.
    pub listener_stats: (Arc<ListenerStats>, Arc<ListenerStats>),
    /// What `/metrics` shows besides the statuses.
    pub metrics: Arc<crate::metrics::Metrics>,
    server: Option<(Serving, Serving)>,
    /// Held while the host runs: no second host on the state directory.
    _lock: DirLock,
}

/// What a hot swap needs: the runtime, the state (to keep a swap across restarts) and each
/// integration's configured release.
pub(crate) struct Swaps {
    rt: Arc<Runtime>,
    store: Arc<dyn StateStore>,
    configured: BTreeMap<String, String>,
}

fn load_file(rt: &Runtime, path: &std::path::Path) -> anyhow::Result<Arc<Release>> {
    let wasm = std::fs::read(path).with_context(|| format!("reading the plugin {}", path.display()))?;
    rt.load(&wasm).with_context(|| format!("loading the plugin {}", path.display()))
}

impl Swaps {
    pub(crate) async fn swap(
        &self,
        integrations: &BTreeMap<String, IntegrationHandle>,
        wasm: &[u8],
        only: Option<&str>,
    ) -> anyhow::Result<Vec<SwapReport>> {
        if let Some(name) = only {
            anyhow::ensure!(integrations.contains_key(name), "no integration named {name:?}");
        }
        let release = self.rt.load(wasm)?;
        let mut reports = Vec::new();
        for (name, h) in integrations {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let r = h.swap(release.clone()).await.with_context(|| format!("integration {name}"))?;
            if r.outcome == SwapOutcome::Switched
                && let Err(e) = self.store.put_swapped_release(name, &self.configured[name], wasm)
            {
                tracing::error!(integration = %name, "could not record the swap; a restart runs the configured release: {e:#}");
            }
            reports.push(r);
        }
        Ok(reports)
    }
}

impl Host {
    /// Starts every integration of `config` on `backends`, running `plugin` (the component's
    /// bytes) unless the configuration names another release. Nothing is served yet: see
    /// [`Host::serve`] and [`Host::router`].
    pub async fn start(config: &Config, plugin: &[u8], mut backends: Backends) -> anyhow::Result<Host> {
        secure_dir(&config.host.state_dir)?;
        let lock = DirLock::take(&config.host.state_dir)?;
        // Native code the host loads: the cache must be as private as the state.
        secure_dir(&config.host.plugin_cache_dir)?;
        let tls = match &config.host.tls {
            Some((cert, key)) => Some(listener::tls_config(cert, key)?),
            None => None,
        };
        let rt = Runtime::new(config.host.limits, Some(config.host.plugin_cache_dir.clone()))?;
        let default_release = match &config.host.plugin {
            Some(path) => load_file(&rt, path)?,
            None => rt.load(plugin).context("loading the plugin")?,
        };
        let store = backends.store.clone();
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let mut integrations = BTreeMap::new();
        let mut configured = BTreeMap::new();
        for ic in &config.integrations {
            let switchboard = backends
                .switchboards
                .remove(&ic.name)
                .with_context(|| format!("integration {}: no switchboard was given for it", ic.name))?;
            let kek = config.host.kek.clone();
            let key = NotificationKey::load_or_create(store.as_ref(), &ic.name, &kek)?;
            let token = integration::webhook_token(&kek, &ic.name);
            let configured_release = match &ic.plugin {
                Some(path) => load_file(&rt, path).with_context(|| format!("integration {}", ic.name))?,
                None => default_release.clone(),
            };
            // A hot swap holds across restarts while the configuration names the same release.
            let release = match store.swapped_release(&ic.name, &configured_release.sha256)? {
                Some(wasm) => match rt.load(&wasm) {
                    Ok(r) => {
                        tracing::info!(integration = %ic.name, sha256 = %&r.sha256[..12], "running the release it was swapped to");
                        r
                    }
                    Err(e) => {
                        tracing::error!(integration = %ic.name, "the release it was swapped to no longer loads ({e:#}); running the configured one");
                        configured_release.clone()
                    }
                },
                None => configured_release.clone(),
            };
            configured.insert(ic.name.clone(), configured_release.sha256.clone());
            let settings = settings_for(config, ic, &key, &token);
            let allowed_origins = [&config.host.login_base_url, &config.host.graph_base_url]
                .iter()
                .map(|u| url::Url::parse(u).map(|u| allow_list::origin_of(&u)))
                .collect::<Result<Vec<_>, _>>()?;
            let handle = integration::spawn(
                rt.clone(),
                Spawn {
                    settings,
                    allowed_origins,
                    http: backends.http.clone(),
                    store: store.clone(),
                    switchboard: switchboard.clone(),
                    key,
                    clock: backends.clock.clone(),
                    release,
                    kek,
                    webhook_token: token,
                    inbox_limits: config.host.inbox_limits,
                    metrics: metrics.for_integration(&ic.name),
                    client_secret_expires_ms: ic.client_secret_expires_ms,
                },
            )
            .await
            .with_context(|| format!("starting integration {}", ic.name))?;
            // After a restart the plugin must learn which calls are still going on: replay the
            // switchboard's calls in progress (it clears every other session it had).
            for ev in switchboard.calls_in_progress() {
                let _ = handle.line_event(ev).await;
            }
            tracing::info!(integration = %ic.name, "integration started");
            integrations.insert(ic.name.clone(), handle);
        }
        Ok(Host {
            integrations,
            clock: backends.clock,
            swaps: Arc::new(Swaps { rt, store, configured }),
            admin_token: config.host.admin_token.clone(),
            tls,
            public_limits: config.host.public_limits,
            listener_stats: Default::default(),
            metrics,
            server: None,
            _lock: lock,
        })
    }

    /// Serves [`Host::public_router`] on `public` (with TLS when configured) and
    /// [`Host::admin_router`] with `extra` admin routes (a platform's own, or the switchboard
    /// simulator's) on `admin`, until [`Host::stop`]. Both are bounded in connections and
    /// time (see [`ListenerLimits`]).
    pub fn serve(
        &mut self,
        public: tokio::net::TcpListener,
        admin: tokio::net::TcpListener,
        extra: axum::Router,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(self.server.is_none(), "the host is already serving");
        let p = listener::serve(
            public,
            self.public_router(),
            self.tls.clone(),
            self.public_limits,
            self.listener_stats.0.clone(),
        )?;
        let a = listener::serve(
            admin,
            self.admin_router(extra),
            None,
            ListenerLimits::ADMIN,
            self.listener_stats.1.clone(),
        )?;
        self.server = Some((p, a));
        Ok(())
    }

    /// Where the public listener listens.
    ///
    /// # Panics
    /// If the host is not serving.
    pub fn addr(&self) -> SocketAddr {
        self.server.as_ref().expect("the host is serving").0.addr
    }

    /// Where the admin listener listens.
    ///
    /// # Panics
    /// If the host is not serving.
    pub fn admin_addr(&self) -> SocketAddr {
        self.server.as_ref().expect("the host is serving").1.addr
    }

    /// An integration by name.
    pub fn integration(&self, name: &str) -> Option<&IntegrationHandle> {
        self.integrations.get(name)
    }

    /// Hot swap: loads `wasm` (checks, compiles or takes it from the cache) and switches every
    /// integration, or only `only`, to it, one after the other. A release that does not load
    /// is refused before anything switches; an integration whose new instance does not
    /// configure rolls back on its own (see its report).
    pub async fn swap(&self, wasm: &[u8], only: Option<&str>) -> anyhow::Result<Vec<SwapReport>> {
        self.swaps.swap(&self.integrations, wasm, only).await
    }

    /// Stops the listener and the integrations.
    pub async fn stop(mut self) {
        for h in self.integrations.values() {
            h.shutdown();
        }
        if let Some((p, a)) = self.server.take() {
            tokio::join!(p.stop(), a.stop());
        }
        for h in self.integrations.values() {
            h.stopped().await;
        }
    }
}

/// The plugin settings of one integration; its webhook URLs carry `webhook_token` (see
/// [`integration::webhook_token`]).
pub fn settings_for(
    config: &Config,
    ic: &IntegrationConfig,
    key: &NotificationKey,
    webhook_token: &str,
) -> sync::Settings {
    let base = format!("{}/webhook/{}/{webhook_token}", config.host.public_base_url, ic.name);
    sync::Settings {
        name: ic.name.clone(),
        tenant_id: ic.tenant_id.clone(),
        client_id: ic.client_id.clone(),
        client_secret: ic.client_secret.expose().to_string(),
        integration_users: ic
            .users
            .iter()
            .map(|u| sync::IntegrationUser { username: u.username.clone(), password: u.password.expose().to_string() })
            .collect(),
        login_base_url: config.host.login_base_url.clone(),
        graph_base_url: config.host.graph_base_url.clone(),
        notification_url: format!("{base}/notifications"),
        lifecycle_notification_url: format!("{base}/lifecycle"),
        encryption_certificate: key.cert_base64.clone(),
        encryption_certificate_id: key.cert_id.clone(),
        push_line_status: ic.push_line_status,
        min_call_length_ms: ic.min_call_length_ms,
        reconcile_interval_ms: ic.reconcile_interval_s * 1000,
        directory_delta_interval_ms: ic.directory_delta_interval_s * 1000,
        match_order: ic
            .match_order
            .iter()
            .map(|m| match m {
                MatchSource::Mail => sync::MatchSource::Mail,
                MatchSource::ProxyAddresses => sync::MatchSource::ProxyAddresses,
                MatchSource::Upn => sync::MatchSource::Upn,
            })
            .collect(),
        overrides: ic
            .overrides
            .iter()
            .map(|(s, m)| sync::MappingOverride { switchboard_user_id: s.clone(), microsoft_user: m.clone() })
            .collect(),
    }
}
