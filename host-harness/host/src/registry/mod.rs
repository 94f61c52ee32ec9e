//! [`Registry`]: the integrations a host runs, which operators add, change and remove at run
//! time (the admin API, [`crate::admin_api`]) without a restart and without pausing the
//! others.
//!
//! Where an integration's configuration comes from, and which wins:
//! - The TOML file bootstraps the host: an integration the admin API never touched runs as
//!   the file says, and follows the file across restarts.
//! - What the admin API creates, changes or deletes is written durably in the state store
//!   (sealed under the KEK: it holds secrets) before the API answers, and wins over the file
//!   from then on, also after a restart: an integration changed through the API runs as the
//!   API left it (a warning at start says when the file's entry differs), and one deleted
//!   through the API stays deleted (a warning names the file's entry). `GET /integrations`
//!   shows each one's `source`.
//!
//! A change re-starts only that integration's actor on the new settings, with its state (its
//! subscriptions, mapping and inbox carry over; webhooks arriving meanwhile wait in the
//! inbox). A delete retires it first (WIT `admin.retire`: users withdrawn, sessions cleared,
//! subscriptions deleted at Microsoft), then removes its state, inbox and key.
//!
//! Several hosts on one PostgreSQL database (`fleet`): every host knows every integration
//! (the records are shared, and a change is announced to the others), but runs only those
//! whose lease it holds (see [`crate::lease`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

mod calls;
mod fleet;

pub use calls::MAX_CALL_BODY;
pub(crate) use calls::owner_path;
pub(crate) use fleet::keep;

use crate::allow_list;
use crate::bindings::sync;
use crate::clock::Clock;
use crate::config::{ConfigError, HostConfig, IntegrationConfig, MatchSource, Secret, UserConfig};
use crate::engine::Runtime;
use crate::http::HttpClient;
use crate::integration::{self, IntegrationHandle, Spawn};
use crate::keys::NotificationKey;
use crate::release::Release;
use crate::status::{Retirement, SwapOutcome, SwapReport};
use crate::store::StateStore;
use crate::switchboard::Switchboards;

/// How long a delete waits for the plugin to clear what it holds at Microsoft before it
/// removes the integration anyway (and says what was left).
pub const RETIRE_WITHIN: Duration = Duration::from_secs(30);
/// How long a change waits for the integration's requests in flight to finish before it
/// re-starts the integration.
pub const DRAIN_WITHIN: Duration = Duration::from_secs(5);

/// Where an integration's configuration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The TOML file, untouched by the admin API.
    File,
    /// The admin API (created or changed there; kept in the state store).
    AdminApi,
}

/// An integration the host runs, as configured.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its configuration.
    pub config: IntegrationConfig,
    /// Where it comes from.
    pub source: Source,
    /// The SHA-256 of the release its configuration names (a hot swap holds while it does).
    configured_sha256: String,
    /// A create, change or delete of it is under way.
    busy: bool,
}

/// Why the registry refused a change. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No integration of that name.
    #[error("no integration named '{0}'")]
    NotFound(String),
    /// The name is taken.
    #[error("an integration named '{0}' exists already")]
    Exists(String),
    /// Another change of it is under way.
    #[error("integration '{0}' is being changed or deleted; try again when that is done")]
    Busy(String),
    /// The configuration is refused.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// It does not start (its switchboard, its plugin, its key).
    #[error("integration '{0}' does not start: {1}")]
    Start(String, String),
    /// The state store refused the record.
    #[error("the change could not be stored: {0}")]
    Store(String),
}

/// What a delete did.
#[derive(Debug, Clone, Serialize)]
pub struct DeleteReport {
    /// The integration.
    pub name: String,
    /// What its plugin left at Microsoft when it was removed; `None`: its plugin cannot
    /// retire (built against WIT 3.0 or 3.1).
    pub retired: Option<Retirement>,
    /// Everything at Microsoft was cleared.
    pub complete: bool,
    /// What happens to what was left, when something was.
    pub note: Option<String>,
}

/// What it takes to start an integration.
pub(crate) struct Launch {
    pub(crate) rt: Arc<Runtime>,
    pub(crate) host: HostConfig,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) http: Arc<dyn HttpClient>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) switchboards: Arc<dyn Switchboards>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// The release integrations run unless they name their own.
    pub(crate) default_release: Arc<Release>,
    /// Several hosts: this host's leases (`None`: it runs every integration).
    pub(crate) leases: Option<Arc<crate::lease::Leases>>,
}

/// The integrations of a host. See the module docs.
pub struct Registry {
    live: RwLock<Arc<BTreeMap<String, IntegrationHandle>>>,
    entries: Mutex<BTreeMap<String, Entry>>,
    launch: Launch,
    /// Several hosts: calls forwarded to, and answered for, other hosts.
    calls: calls::Calls,
}

/// An integration as the state store keeps it (sealed).
#[derive(Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
enum Record {
    Active {
        config: StoredConfig,
    },
    /// Deleted, but its plugin had not finished retiring: finished at the next start.
    Deleting {
        config: StoredConfig,
    },
    Deleted,
}

/// [`IntegrationConfig`] with its secrets in the clear: only ever stored sealed.
#[derive(Serialize, Deserialize)]
struct StoredConfig {
    name: String,
    display_name: Option<String>,
    #[serde(default = "yes")]
    manual_client_setup: bool,
    tenant_id: String,
    client_id: String,
    client_secret: String,
    client_secret_expires_ms: Option<u64>,
    users: Vec<(String, String)>,
    push_line_status: bool,
    min_call_length_ms: u64,
    reconcile_interval_s: u64,
    directory_delta_interval_s: u64,
    match_order: Vec<MatchSource>,
    overrides: Vec<(String, String)>,
    switchboard_csv: Option<std::path::PathBuf>,
    plugin: Option<std::path::PathBuf>,
    #[serde(default)]
    policy: crate::policy::PolicyConfig,
}

impl From<&IntegrationConfig> for StoredConfig {
    fn from(c: &IntegrationConfig) -> Self {
        StoredConfig {
            name: c.name.clone(),
            display_name: c.display_name.clone(),
            manual_client_setup: c.manual_client_setup,
            tenant_id: c.tenant_id.clone(),
            client_id: c.client_id.clone(),
            client_secret: c.client_secret.expose().to_string(),
            client_secret_expires_ms: c.client_secret_expires_ms,
            users: c.users.iter().map(|u| (u.username.clone(), u.password.expose().to_string())).collect(),
            push_line_status: c.push_line_status,
            min_call_length_ms: c.min_call_length_ms,
            reconcile_interval_s: c.reconcile_interval_s,
            directory_delta_interval_s: c.directory_delta_interval_s,
            match_order: c.match_order.clone(),
            overrides: c.overrides.clone(),
            switchboard_csv: c.switchboard_csv.clone(),
            plugin: c.plugin.clone(),
            policy: c.policy.clone(),
        }
    }
}

impl From<StoredConfig> for IntegrationConfig {
    fn from(c: StoredConfig) -> Self {
        IntegrationConfig {
            name: c.name,
            display_name: c.display_name,
            manual_client_setup: c.manual_client_setup,
            tenant_id: c.tenant_id,
            client_id: c.client_id,
            client_secret: Secret::new(c.client_secret),
            client_secret_expires_ms: c.client_secret_expires_ms,
            users: c.users.into_iter().map(|(username, p)| UserConfig { username, password: Secret::new(p) }).collect(),
            push_line_status: c.push_line_status,
            min_call_length_ms: c.min_call_length_ms,
            reconcile_interval_s: c.reconcile_interval_s,
            directory_delta_interval_s: c.directory_delta_interval_s,
            match_order: c.match_order,
            overrides: c.overrides,
            switchboard_csv: c.switchboard_csv,
            plugin: c.plugin,
            policy: c.policy,
        }
    }
}

fn yes() -> bool {
    true
}

fn place(name: &str) -> String {
    format!("integration-record/{name}")
}

/// The same settings, secrets included (a change that changes nothing re-starts nothing).
fn same(a: &IntegrationConfig, b: &IntegrationConfig) -> bool {
    serde_json::to_vec(&StoredConfig::from(a)).ok() == serde_json::to_vec(&StoredConfig::from(b)).ok()
}

/// Reads and loads a plugin component from `path`.
pub(crate) fn load_file(rt: &Runtime, path: &std::path::Path) -> anyhow::Result<Arc<Release>> {
    let wasm = std::fs::read(path).with_context(|| format!("reading the plugin {}", path.display()))?;
    rt.load(&wasm).with_context(|| format!("loading the plugin {}", path.display()))
}

impl Launch {
    fn write(&self, name: &str, record: &Record) -> Result<(), RegistryError> {
        let plain = serde_json::to_vec(record).map_err(|e| RegistryError::Store(e.to_string()))?;
        let sealed = self.host.kek.seal(&place(name), &plain);
        self.store.put_integration_record(name, &sealed).map_err(|e| RegistryError::Store(e.to_string()))
    }

    fn records(&self) -> anyhow::Result<BTreeMap<String, Record>> {
        let mut out = BTreeMap::new();
        for (name, sealed) in self.store.integration_records()? {
            let plain = self
                .host
                .kek
                .open(&place(&name), &sealed)
                .map_err(|e| anyhow::anyhow!("the stored record of integration {name} does not open: {e}"))?;
            let record = serde_json::from_slice(&plain)
                .with_context(|| format!("the stored record of integration {name} is damaged"))?;
            out.insert(name, record);
        }
        Ok(out)
    }

    /// Starts `ic`; answers its handle and the SHA-256 of the release its configuration
    /// names.
    async fn spawn(&self, ic: &IntegrationConfig) -> anyhow::Result<(IntegrationHandle, String)> {
        let mut switchboard = self.switchboards.switchboard(ic)?;
        let mut http = self.http.clone();
        if let Some(leases) = &self.leases {
            // Nothing reaches Microsoft or the switchboard once the lease may have run out.
            (http, switchboard) = fleet::fenced(leases, &ic.name, http, switchboard);
        }
        let kek = self.host.kek.clone();
        let key = NotificationKey::load_or_create(self.store.as_ref(), &ic.name, &kek)?;
        let token = integration::webhook_token(&kek, &ic.name);
        let configured_release = match &ic.plugin {
            Some(path) => load_file(&self.rt, path)?,
            None => self.default_release.clone(),
        };
        // A hot swap holds across restarts while the configuration names the same release.
        let release = match self.store.swapped_release(&ic.name, &configured_release.sha256)? {
            Some(wasm) => match self.rt.load(&wasm) {
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
        let mut settings = settings_for(&self.host, ic, &key, &token);
        if !ic.manual_client_setup {
            // The automated setup: the host's own app, which the customer's admin consented to.
            settings.client_secret = match &self.host.platform_app {
                Some(p) => p.client_secret.expose().to_string(),
                None => anyhow::bail!("it uses the automated setup, and this host has no platform_client_id"),
            };
        }
        let allowed_origins = [&self.host.login_base_url, &self.host.graph_base_url]
            .iter()
            .map(|u| url::Url::parse(u).map(|u| allow_list::origin_of(&u)))
            .collect::<Result<Vec<_>, _>>()?;
        let handle = integration::spawn(
            self.rt.clone(),
            Spawn {
                settings,
                policy: ic.policy.clone(),
                allowed_origins,
                http,
                store: self.store.clone(),
                switchboard: switchboard.clone(),
                key,
                clock: self.clock.clone(),
                release,
                kek,
                webhook_token: token,
                inbox_limits: self.host.inbox_limits,
                metrics: self.metrics.for_integration(&ic.name),
                client_secret_expires_ms: ic.client_secret_expires_ms,
            },
        )
        .await?;
        // After a (re)start the plugin must learn which calls are still going on: replay the
        // switchboard's calls in progress (it clears every other session it had).
        for ev in switchboard.calls_in_progress() {
            let _ = handle.line_event(ev).await;
        }
        // And its absences: the plugin keeps the status messages it set for those still in
        // force, and clears the others'.
        for ev in switchboard.absences_in_progress() {
            let _ = handle.absence(ev).await;
        }
        Ok((handle, configured_release.sha256.clone()))
    }
}

/// Retires `h` (see WIT `admin.retire`) until nothing is left at Microsoft or `within`.
async fn retire(h: &IntegrationHandle, within: Duration) -> Option<Retirement> {
    let end = Instant::now() + within;
    let mut last = None;
    loop {
        match h.retire().await {
            Ok(Some(p)) => {
                let done = p.done();
                last = Some(p);
                if done || Instant::now() >= end {
                    return last;
                }
            }
            Ok(None) => return None,
            Err(_) => return last,
        }
        // The plugin's requests go out and come back meanwhile; its answer is read again.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to `within`) until `h` has no request in flight, so that a re-started
/// integration does not miss the answer to one (a subscription created, say).
async fn drain(h: &IntegrationHandle, within: Duration) {
    let end = Instant::now() + within;
    while h.outbound_in_flight() > 0 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Registry {
    /// Starts the integrations: the file's, as the admin API's records amend them (see the
    /// module docs), finishing the deletes a stop interrupted.
    pub(crate) async fn start(launch: Launch, file: &[IntegrationConfig]) -> anyhow::Result<Registry> {
        let mut records = launch.records()?;
        let mut wanted: BTreeMap<String, (IntegrationConfig, Source, bool)> = BTreeMap::new();
        for ic in file {
            match records.remove(&ic.name) {
                None => {
                    wanted.insert(ic.name.clone(), (ic.clone(), Source::File, false));
                }
                Some(Record::Deleted) => tracing::warn!(
                    integration = %ic.name,
                    "the configuration file names an integration that was deleted through the admin API: it stays \
                     deleted (remove it from the file, or create it again through the API)"
                ),
                Some(Record::Active { config }) => {
                    let config = IntegrationConfig::from(config);
                    if !same(&config, ic) {
                        tracing::warn!(
                            integration = %ic.name,
                            "the configuration file's entry differs from what the admin API set; the admin API's wins"
                        );
                    }
                    wanted.insert(ic.name.clone(), (config, Source::AdminApi, false));
                }
                Some(Record::Deleting { config }) => {
                    wanted.insert(ic.name.clone(), (config.into(), Source::AdminApi, true));
                }
            }
        }
        for (name, r) in records {
            match r {
                Record::Active { config } => {
                    wanted.insert(name, (config.into(), Source::AdminApi, false));
                }
                Record::Deleting { config } => {
                    wanted.insert(name, (config.into(), Source::AdminApi, true));
                }
                Record::Deleted => {}
            }
        }
        let registry =
            Registry { live: Default::default(), entries: Default::default(), launch, calls: Default::default() };
        if let Some(leases) = registry.launch.leases.clone() {
            // Several hosts: each integration runs where its lease is taken (`keep`).
            let names: Vec<String> = wanted.keys().cloned().collect();
            {
                let mut entries = registry.entries.lock().unwrap();
                for (name, (config, source, is_deleting)) in wanted {
                    entries.insert(name, Entry { config, source, configured_sha256: String::new(), busy: is_deleting });
                }
            }
            leases.ensure(names).await?;
            return Ok(registry);
        }
        let mut deleting = Vec::new();
        for (name, (config, source, is_deleting)) in wanted {
            let (handle, configured_sha256) =
                registry.launch.spawn(&config).await.with_context(|| format!("starting integration {name}"))?;
            tracing::info!(integration = %name, ?source, "integration started");
            registry
                .entries
                .lock()
                .unwrap()
                .insert(name.clone(), Entry { config, source, configured_sha256, busy: is_deleting });
            registry.publish(|m| {
                m.insert(name.clone(), handle);
            });
            if is_deleting {
                deleting.push(name);
            }
        }
        for name in deleting {
            tracing::info!(integration = %name, "finishing a delete a stop interrupted");
            let report = registry.finish_delete(&name).await;
            tracing::info!(integration = %name, complete = report.complete, "integration deleted");
        }
        Ok(registry)
    }

    /// Replaces the live map (readers keep the one they took).
    fn publish(&self, f: impl FnOnce(&mut BTreeMap<String, IntegrationHandle>)) {
        let mut live = self.live.write().unwrap();
        let mut next = (**live).clone();
        f(&mut next);
        *live = Arc::new(next);
    }

    /// The app an integration signs in with: its own (manual client setup) or the host's.
    pub(crate) fn client_of(&self, c: &IntegrationConfig) -> (String, String) {
        match (&self.launch.host.platform_app, c.manual_client_setup) {
            (Some(p), false) => (p.client_id.clone(), p.client_secret.expose().to_string()),
            _ => (c.client_id.clone(), c.client_secret.expose().to_string()),
        }
    }

    pub(crate) fn login_base_url(&self) -> &str {
        &self.launch.host.login_base_url
    }

    pub(crate) fn kek(&self) -> &crate::seal::Kek {
        &self.launch.host.kek
    }

    pub(crate) fn store(&self) -> &Arc<dyn StateStore> {
        &self.launch.store
    }

    pub(crate) fn http(&self) -> &Arc<dyn HttpClient> {
        &self.launch.http
    }

    /// The host's own app registration's client id (the automated setup), if it has one.
    pub fn platform_client_id(&self) -> Option<&str> {
        self.launch.host.platform_app.as_ref().map(|p| p.client_id.as_str())
    }

    /// The origin (`scheme://host[:port]`) of Microsoft's sign-in service.
    pub fn login_origin(&self) -> Option<String> {
        url::Url::parse(&self.launch.host.login_base_url).ok().map(|u| crate::allow_list::origin_of(&u))
    }

    /// The admin consent URL for `tenant` (v2: `{login}/{tenant}/v2.0/adminconsent`, all of
    /// Graph's permissions the app registration lists, `/.default`), coming back to
    /// `{admin_base_url}/ui/consent` with `state`; `None` without a platform app.
    pub fn admin_consent_url(&self, tenant: &str, state: &str) -> Option<String> {
        let app = self.launch.host.platform_app.as_ref()?;
        let back = format!("{}/ui/consent", self.launch.host.admin_base_url.as_deref()?);
        let mut u = url::Url::parse(&format!("{}/{tenant}/v2.0/adminconsent", self.launch.host.login_base_url)).ok()?;
        u.query_pairs_mut()
            .append_pair("client_id", &app.client_id)
            .append_pair("scope", "https://graph.microsoft.com/.default")
            .append_pair("redirect_uri", &back)
            .append_pair("state", state);
        Some(u.to_string())
    }

    /// Re-starts integration `name` on its configuration and state (after its admin consented:
    /// it signs in at once instead of at its next retry).
    pub async fn restart(&self, name: &str) -> Result<(), RegistryError> {
        self.claim(name, |current, _| match current {
            None => Err(RegistryError::NotFound(name.into())),
            Some(_) => Ok(()),
        })?;
        let config = self.entry(name).expect("claimed").config;
        let started = self.replace_running(name, &config).await;
        let mut entries = self.entries.lock().unwrap();
        let e = entries.get_mut(name).expect("claimed");
        e.busy = false;
        let sha = started.map_err(|err| RegistryError::Start(name.into(), format!("{err:#}")))?;
        e.configured_sha256 = sha;
        Ok(())
    }

    /// Stops `name`'s running actor (after its requests in flight, up to [`DRAIN_WITHIN`])
    /// and starts it on `config`; answers the configured release's SHA-256. When it does not
    /// start, it is no longer running.
    async fn replace_running(&self, name: &str, config: &IntegrationConfig) -> anyhow::Result<String> {
        if let Some(old) = self.get(name) {
            drain(&old, DRAIN_WITHIN).await;
            old.shutdown();
            old.stopped().await;
        }
        match self.launch.spawn(config).await {
            Ok((handle, sha)) => {
                self.publish(|m| {
                    m.insert(name.to_string(), handle);
                });
                Ok(sha)
            }
            Err(e) => {
                self.publish(|m| {
                    m.remove(name);
                });
                Err(e)
            }
        }
    }

    /// The running integration `name`.
    pub fn get(&self, name: &str) -> Option<IntegrationHandle> {
        self.live.read().unwrap().get(name).cloned()
    }

    /// The running integrations, as they are now.
    pub fn snapshot(&self) -> Arc<BTreeMap<String, IntegrationHandle>> {
        self.live.read().unwrap().clone()
    }

    /// Every integration's configuration and source, by name.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().unwrap().values().cloned().collect()
    }

    /// One integration's configuration and source.
    pub fn entry(&self, name: &str) -> Option<Entry> {
        self.entries.lock().unwrap().get(name).cloned()
    }

    /// Marks `name` busy for a change, after `check` (with the others' configurations).
    fn claim(
        &self,
        name: &str,
        check: impl FnOnce(Option<&Entry>, &BTreeMap<String, Entry>) -> Result<(), RegistryError>,
    ) -> Result<(), RegistryError> {
        let mut entries = self.entries.lock().unwrap();
        if entries.get(name).is_some_and(|e| e.busy) {
            return Err(RegistryError::Busy(name.into()));
        }
        check(entries.get(name), &entries)?;
        if let Some(e) = entries.get_mut(name) {
            e.busy = true;
        }
        Ok(())
    }

    fn check_conflicts(new: &IntegrationConfig, entries: &BTreeMap<String, Entry>) -> Result<(), RegistryError> {
        let others = entries
            .values()
            .filter(|e| e.config.name != new.name)
            .map(|e| (format!("integration '{}'", e.config.name), &e.config));
        match crate::config::conflict(new, others) {
            Some((field, reason)) => {
                Err(RegistryError::Invalid(ConfigError { file: "request body".into(), field, reason }))
            }
            None => Ok(()),
        }
    }

    /// Creates and starts an integration; the others do not pause.
    pub async fn create(&self, config: IntegrationConfig) -> Result<(), RegistryError> {
        let name = config.name.clone();
        {
            // Checked and held (as a busy placeholder while it starts) under one lock, so that
            // no second create of the name, or of the same app in the tenant, passes meanwhile.
            let mut entries = self.entries.lock().unwrap();
            if entries.contains_key(&name) {
                return Err(RegistryError::Exists(name));
            }
            Self::check_conflicts(&config, &entries)?;
            entries.insert(
                name.clone(),
                Entry {
                    config: config.clone(),
                    source: Source::AdminApi,
                    configured_sha256: String::new(),
                    busy: true,
                },
            );
        }
        let started = async {
            self.launch.write(&name, &Record::Active { config: StoredConfig::from(&config) })?;
            if self.launch.leases.is_some() {
                // Several hosts: it runs where its lease is taken, here or on another host.
                self.announce(&name).await.map_err(|e| RegistryError::Store(format!("{e:#}")))?;
                return Ok(None);
            }
            match self.launch.spawn(&config).await {
                Ok(r) => Ok(Some(r)),
                Err(e) => {
                    // Not started: nothing of it stays.
                    let _ = self.launch.write(&name, &Record::Deleted);
                    let _ = self.launch.store.purge(&name);
                    Err(RegistryError::Start(name.clone(), format!("{e:#}")))
                }
            }
        }
        .await;
        match started {
            Ok(Some((handle, sha))) => {
                self.publish(|m| {
                    m.insert(name.clone(), handle);
                });
                let mut entries = self.entries.lock().unwrap();
                let e = entries.get_mut(&name).expect("claimed");
                e.configured_sha256 = sha;
                e.busy = false;
                tracing::info!(integration = %name, "integration created");
                Ok(())
            }
            Ok(None) => {
                self.entries.lock().unwrap().get_mut(&name).expect("claimed").busy = false;
                tracing::info!(integration = %name, "integration created; it starts on the host that takes its lease");
                Ok(())
            }
            Err(e) => {
                self.entries.lock().unwrap().remove(&name);
                Err(e)
            }
        }
    }

    /// Changes an integration: stored, then only it re-starts on the new settings (its state
    /// carries over); the others do not pause. A change that changes nothing does nothing.
    pub async fn update(&self, config: IntegrationConfig) -> Result<(), RegistryError> {
        let name = config.name.clone();
        let mut unchanged = false;
        self.claim(&name, |current, entries| match current {
            None => Err(RegistryError::NotFound(name.clone())),
            Some(e) => {
                unchanged = e.source == Source::AdminApi && same(&e.config, &config);
                Self::check_conflicts(&config, entries)
            }
        })?;
        let release = |r: Result<(), RegistryError>| {
            if let Some(e) = self.entries.lock().unwrap().get_mut(&name) {
                e.busy = false;
            }
            r
        };
        if unchanged {
            return release(Ok(()));
        }
        if let Err(e) = self.launch.write(&name, &Record::Active { config: StoredConfig::from(&config) }) {
            return release(Err(e));
        }
        if let Err(e) = self.announce(&name).await {
            tracing::warn!(integration = %name, "the other hosts did not hear of the change: {e:#}");
        }
        if self.launch.leases.is_some() && self.get(&name).is_none() {
            // It runs on another host, which re-starts it on the change.
            if let Some(e) = self.entries.lock().unwrap().get_mut(&name) {
                e.config = config;
                e.source = Source::AdminApi;
            }
            return release(Ok(()));
        }
        let started = self.replace_running(&name, &config).await;
        let mut entries = self.entries.lock().unwrap();
        let e = entries.get_mut(&name).expect("claimed");
        e.config = config;
        e.source = Source::AdminApi;
        e.busy = false;
        match started {
            Ok(sha) => {
                e.configured_sha256 = sha;
                tracing::info!(integration = %name, "integration changed");
                Ok(())
            }
            // The new settings are stored but do not start (a switchboard refused, say): it is
            // shown stopped until a change that starts.
            Err(err) => Err(RegistryError::Start(name.clone(), format!("{err:#}"))),
        }
    }

    /// Deletes an integration: retires it (users withdrawn, sessions cleared, subscriptions
    /// deleted; up to [`RETIRE_WITHIN`]), stops it and removes its state, inbox and key.
    pub async fn delete(&self, name: &str) -> Result<DeleteReport, RegistryError> {
        self.claim(name, |current, _| match current {
            None => Err(RegistryError::NotFound(name.into())),
            Some(_) => Ok(()),
        })?;
        let config = self.entry(name).expect("claimed").config;
        if let Err(e) = self.launch.write(name, &Record::Deleting { config: StoredConfig::from(&config) }) {
            if let Some(e) = self.entries.lock().unwrap().get_mut(name) {
                e.busy = false;
            }
            return Err(e);
        }
        if self.launch.leases.is_some() && self.get(name).is_none() {
            // It runs on another host (or none yet): the host that runs it retires it.
            if let Err(e) = self.announce(name).await {
                tracing::warn!(integration = %name, "the other hosts did not hear of the delete: {e:#}");
            }
            // Forgotten here when the owner's "deleted" arrives.
            if let Some(e) = self.entries.lock().unwrap().get_mut(name) {
                e.busy = false;
            }
            return Ok(DeleteReport {
                name: name.into(),
                retired: None,
                complete: false,
                note: Some(
                    "it runs on another host, which retires it (users withdrawn, sessions cleared, subscriptions \
                     deleted) and removes it within seconds"
                        .into(),
                ),
            });
        }
        Ok(self.finish_delete(name).await)
    }

    async fn finish_delete(&self, name: &str) -> DeleteReport {
        let retired = match self.get(name) {
            Some(h) => {
                let r = retire(&h, RETIRE_WITHIN).await;
                // From here on its webhooks answer 404.
                self.publish(|m| {
                    m.remove(name);
                });
                h.shutdown();
                h.stopped().await;
                r
            }
            None => None,
        };
        let complete = retired.as_ref().is_some_and(Retirement::done);
        let note = match &retired {
            _ if complete => None,
            None => Some(
                "its plugin cannot retire (built against WIT 3.0 or 3.1): its subscriptions expire at Microsoft \
                 within 60 minutes (their notifications are refused meanwhile), its presence sessions within 5 \
                 minutes, and its users keep their last presence in the switchboard until the platform clears them"
                    .into(),
            ),
            Some(r) => Some(format!(
                "{} subscription(s) and {} presence session(s) could not be cleared within {} s{}: the subscriptions \
                 expire at Microsoft within 60 minutes (their notifications are refused meanwhile), the sessions \
                 within 5 minutes",
                r.subscriptions,
                r.sessions,
                RETIRE_WITHIN.as_secs(),
                r.problem.as_ref().map(|p| format!(" ({p})")).unwrap_or_default()
            )),
        };
        if let Err(e) = self.launch.store.purge(name) {
            tracing::error!(integration = %name, "could not remove its state: {e}");
        }
        if let Err(e) = self.launch.write(name, &Record::Deleted) {
            tracing::error!(integration = %name, "could not record the delete: {e}");
        }
        self.launch.metrics.remove_integration(name);
        self.launch.switchboards.removed(name);
        self.entries.lock().unwrap().remove(name);
        if let Err(e) = self.forget(name).await {
            tracing::error!(integration = %name, "could not remove its lease: {e:#}");
        }
        tracing::info!(integration = %name, complete, "integration deleted");
        DeleteReport { name: name.into(), retired, complete, note }
    }

    /// Hot swap: loads `wasm` and switches every integration, or only `only`, to it; see
    /// [`crate::Host::swap`]. (An integration created later runs its configured release.)
    pub(crate) async fn swap(&self, wasm: &[u8], only: Option<&str>) -> anyhow::Result<Vec<SwapReport>> {
        let integrations = self.snapshot();
        if let Some(name) = only {
            anyhow::ensure!(integrations.contains_key(name), "no integration named {name:?}");
        }
        let release = self.launch.rt.load(wasm)?;
        let mut reports = Vec::new();
        for (name, h) in integrations.iter() {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let r = h.swap(release.clone()).await.with_context(|| format!("integration {name}"))?;
            let configured = self.entry(name).map(|e| e.configured_sha256).unwrap_or_default();
            if r.outcome == SwapOutcome::Switched
                && let Err(e) = self.launch.store.put_swapped_release(name, &configured, wasm)
            {
                tracing::error!(integration = %name, "could not record the swap; a restart runs the configured release: {e:#}");
            }
            reports.push(r);
        }
        Ok(reports)
    }
}

/// The plugin settings of one integration; its webhook URLs carry `webhook_token` (see
/// [`integration::webhook_token`]).
pub fn settings_for(
    host: &HostConfig,
    ic: &IntegrationConfig,
    key: &NotificationKey,
    webhook_token: &str,
) -> sync::Settings {
    let base = format!("{}/webhook/{}/{webhook_token}", host.public_base_url, ic.name);
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
        login_base_url: host.login_base_url.clone(),
        graph_base_url: host.graph_base_url.clone(),
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
