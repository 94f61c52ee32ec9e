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

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::engine::Runtime;
use crate::http::{HttpClient, ReqwestClient};
use crate::integration::IntegrationHandle;
use crate::lease::Leases;
use crate::listener::{self, ListenerLimits, ListenerStats, Serving};
pub use crate::registry::settings_for;
use crate::registry::{Launch, Registry};
use crate::status::SwapReport;
use crate::store::{DirLock, PgStore, SqliteStore, StateStore, secure_dir};
use crate::switchboard::Switchboards;

/// What a host runs on: a state store, an HTTP client, a clock, and where each integration's
/// switchboard is found.
pub struct Backends {
    /// Durable state of every integration.
    pub store: Arc<dyn StateStore>,
    /// Sends the plugins' requests (after the allow-list).
    pub http: Arc<dyn HttpClient>,
    /// The clock the plugins see.
    pub clock: Arc<dyn Clock>,
    /// Each integration's switchboard, also for integrations added at run time (a map by
    /// integration name serves a host whose integrations are all known at start). An
    /// integration without one is refused.
    pub switchboards: Arc<dyn Switchboards>,
    /// Several hosts on one PostgreSQL database: this host's leases there (`store` must be
    /// that database's [`PgStore`], fenced). `None`: this host runs every integration.
    pub leases: Option<Arc<Leases>>,
}

impl Backends {
    /// The defaults: SQLite in `config.host.state_dir` (or, with `database_url_env`, the
    /// shared PostgreSQL database and this host's leases there), reqwest, the system clock;
    /// and these switchboards.
    pub fn defaults(config: &Config, switchboards: impl Switchboards) -> anyhow::Result<Self> {
        let (store, leases): (Arc<dyn StateStore>, _) = match &config.host.database {
            None => (Arc::new(SqliteStore::open(&config.host.state_dir)?), None),
            Some(db) => {
                let pg = Arc::new(
                    PgStore::connect_host(db.url.expose(), &db.host_id).context("opening the PostgreSQL database")?,
                );
                (pg.clone(), Some(Leases::new(pg, db.host_id.clone())))
            }
        };
        Ok(Backends {
            store,
            http: Arc::new(ReqwestClient::new().context("building the HTTP client")?),
            clock: Arc::new(SystemClock),
            switchboards: Arc::new(switchboards),
            leases,
        })
    }
}

/// A running host.
pub struct Host {
    /// The integrations, changed at run time through the admin API.
    pub registry: Arc<Registry>,
    /// The clock the plugins see.
    pub clock: Arc<dyn Clock>,
    pub(crate) admin_token: crate::config::Secret,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    public_limits: ListenerLimits,
    /// Counters of the public and the admin listener.
    pub listener_stats: (Arc<ListenerStats>, Arc<ListenerStats>),
    /// What `/metrics` shows besides the statuses.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Device code sign-ins of integration users (MFA).
    pub sign_ins: Arc<crate::signin::SignIns>,
    server: Option<(Serving, Serving)>,
    /// Several hosts: the task that keeps this host's leases.
    keeper: Option<tokio::task::JoinHandle<()>>,
    /// The task that watches the statuses for alerts, if alerts are configured.
    alerts: Option<tokio::task::JoinHandle<()>>,
    /// Held while the host runs: no second host on the state directory.
    _lock: DirLock,
}

impl Host {
    /// Starts every integration of `config` (as the admin API's stored changes amend them:
    /// see [`crate::registry`]) on `backends`, running `plugin` (the component's bytes)
    /// unless the configuration names another release. Nothing is served yet: see
    /// [`Host::serve`] and [`Host::router`].
    pub async fn start(config: &Config, plugin: &[u8], backends: Backends) -> anyhow::Result<Host> {
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
            Some(path) => crate::registry::load_file(&rt, path)?,
            None => rt.load(plugin).context("loading the plugin")?,
        };
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let launch = Launch {
            rt,
            host: config.host.clone(),
            store: backends.store,
            http: backends.http,
            clock: backends.clock.clone(),
            switchboards: backends.switchboards,
            metrics: metrics.clone(),
            default_release,
            leases: backends.leases,
        };
        let registry = Arc::new(Registry::start(launch, &config.integrations).await?);
        let keeper = crate::registry::keep(registry.clone());
        let alerts = match &config.host.alerts {
            Some(a) => Some(crate::alerts::watch(
                registry.clone(),
                backends.clock.clone(),
                a.clone(),
                metrics.alerts.clone(),
                config.host.database.as_ref().map_or_else(|| "host".to_string(), |d| d.host_id.clone()),
            )?),
            None => None,
        };
        Ok(Host {
            alerts,
            registry,
            clock: backends.clock,
            admin_token: config.host.admin_token.clone(),
            tls,
            public_limits: config.host.public_limits,
            listener_stats: Default::default(),
            metrics,
            sign_ins: Default::default(),
            server: None,
            keeper,
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

    /// A running integration by name.
    pub fn integration(&self, name: &str) -> Option<IntegrationHandle> {
        self.registry.get(name)
    }

    /// The running integrations, as they are now.
    pub fn integrations(&self) -> Arc<BTreeMap<String, IntegrationHandle>> {
        self.registry.snapshot()
    }

    /// Hot swap: loads `wasm` (checks, compiles or takes it from the cache) and switches every
    /// integration, or only `only`, to it, one after the other. A release that does not load
    /// is refused before anything switches; an integration whose new instance does not
    /// configure rolls back on its own (see its report).
    pub async fn swap(&self, wasm: &[u8], only: Option<&str>) -> anyhow::Result<Vec<SwapReport>> {
        self.registry.swap(wasm, only).await
    }

    /// Stops this host as a crash would (a failover drill, the benchmarks): its listeners and
    /// integrations stop where they are, and its leases are not handed over: the other hosts
    /// take them when they run out.
    pub async fn abandon(self) {
        self.halt(false).await;
    }

    /// Stops the listener and the integrations (several hosts: hands their leases over, so
    /// that the others take them at once).
    pub async fn stop(self) {
        self.halt(true).await;
    }

    /// Stops the keeper (handing the leases over, or not, as a crash), the integrations and
    /// the listeners.
    async fn halt(mut self, hand_over: bool) {
        if let Some(a) = self.alerts.take() {
            a.abort();
        }
        if let Some(k) = self.keeper.take() {
            k.abort();
            let _ = k.await;
            if hand_over {
                self.registry.hand_over().await;
            }
        }
        let integrations = self.integrations();
        for h in integrations.values() {
            h.shutdown();
        }
        if let Some((p, a)) = self.server.take() {
            tokio::join!(p.stop(), a.stop());
        }
        for h in integrations.values() {
            h.stopped().await;
        }
    }
}
