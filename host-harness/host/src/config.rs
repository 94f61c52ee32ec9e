//! The host's TOML configuration: a `[host]` section and `[[integration]]` entries.
//!
//! A bad config is refused at load with the file, the field and the reason. Secrets are held
//! in [`Secret`], whose `Debug` and `Display` never show the value.

use std::path::{Path, PathBuf};

pub use crate::policy::PolicyConfig;
use serde::Deserialize;

/// A secret value (client secret, password). Never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(v: impl Into<String>) -> Self {
        Secret(v.into())
    }
    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How much the inbox of one integration may hold; beyond it a notification is answered 503
/// with `Retry-After` (Graph retries).
#[derive(Debug, Clone, Copy)]
pub struct InboxLimits {
    /// Rows.
    pub rows: u64,
    /// Bytes of bodies.
    pub bytes: u64,
}

impl Default for InboxLimits {
    fn default() -> Self {
        InboxLimits { rows: 20_000, bytes: 256 << 20 }
    }
}

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `[host]` section.
    pub host: HostConfig,
    /// The integrations.
    pub integrations: Vec<IntegrationConfig>,
}

/// The `[host]` section.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Listen address of the public listener: only Graph's webhook paths and `/healthz`.
    pub listen: String,
    /// Listen address of the admin listener (status, overrides, sync-now, plugin swap);
    /// default `127.0.0.1:8081`.
    pub admin_listen: String,
    /// TLS certificate chain and private key (PEM files) of the public listener; `None`:
    /// plain HTTP (behind a reverse proxy that terminates TLS).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Bounds of the public listener: `max_connections` (default 512) and
    /// `header_read_timeout_ms` (default 10000).
    pub public_limits: crate::listener::ListenerLimits,
    /// Bounds of each integration's inbox (`inbox_max_rows`, `inbox_max_mib`).
    pub inbox_limits: InboxLimits,
    /// Public base URL Graph reaches the listener at; webhook URLs are built from it.
    pub public_base_url: String,
    /// Directory for the SQLite state file (and the compile cache).
    pub state_dir: PathBuf,
    /// Several hosts on one PostgreSQL database (`database_url_env`, `host_id`): `None`, the
    /// embedded SQLite file in `state_dir` and every integration runs here.
    pub database: Option<Database>,
    /// Graph base URL (default `https://graph.microsoft.com`).
    pub graph_base_url: String,
    /// Login base URL (default `https://login.microsoftonline.com`).
    pub login_base_url: String,
    /// Sandbox limits of the plugin instances.
    pub limits: crate::sandbox::Limits,
    /// The plugin component every integration runs unless it names its own (`None`: the one
    /// built into the host).
    pub plugin: Option<PathBuf>,
    /// Where compiled plugins are cached (default `<state_dir>/plugin-cache`).
    pub plugin_cache_dir: PathBuf,
    /// The bearer token of every admin route.
    pub admin_token: Secret,
    /// The key-encryption key that seals private keys and client states at rest.
    pub kek: crate::seal::Kek,
    /// Where administrators' browsers reach the admin listener (`admin_base_url`), e.g.
    /// `https://switchboard.example.com/presence-admin`: the admin consent comes back to
    /// `{admin_base_url}/ui/consent`.
    pub admin_base_url: Option<String>,
    /// The host's own multi-tenant app registration, for the product guide's automated setup
    /// ("Manual client setup" off): a customer's admin consents to it once per tenant.
    pub platform_app: Option<PlatformApp>,
    /// Where alerts go when an integration leaves `ok` (see [`crate::alerts`]).
    pub alerts: Option<crate::alerts::AlertConfig>,
}

/// The machine's name and a random suffix: a host id new at each start.
fn default_host_id() -> String {
    let machine = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let machine: String = machine.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(40).collect();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", if machine.is_empty() { "host" } else { &machine }, &suffix[..8])
}

/// The shared PostgreSQL database of several hosts.
#[derive(Debug, Clone)]
pub struct Database {
    /// Its connection string (`postgres://user:password@host:port/db`): a secret, read from
    /// the environment variable `database_url_env` names.
    pub url: Secret,
    /// This host's id among the hosts (`host_id`; default: the machine's name and a random
    /// suffix, new at each start).
    pub host_id: String,
}

/// The host's own app registration (`platform_client_id`, `platform_client_secret_env`).
#[derive(Debug, Clone)]
pub struct PlatformApp {
    /// Application (client) id.
    pub client_id: String,
    /// Its client secret.
    pub client_secret: Secret,
}

/// One `[[integration]]`.
#[derive(Debug, Clone)]
pub struct IntegrationConfig {
    /// Unique name; also the webhook path segment.
    pub name: String,
    /// The name the admin page shows (the product guide's "Name"); `None`: the name.
    pub display_name: Option<String>,
    /// The product guide's "Manual client setup": the customer's own app registration
    /// (`client_id`, `client_secret`). Off: the host's platform app, which the customer's admin
    /// consents to (`client_id` is then the platform app's, and no secret is kept here).
    pub manual_client_setup: bool,
    /// Tenant id (GUID) or domain.
    pub tenant_id: String,
    /// Application (client) id.
    pub client_id: String,
    /// Client secret (empty = missing credentials, shown in the status).
    pub client_secret: Secret,
    /// When the client secret expires (ms since the epoch), as the app registration shows
    /// it: the status warns 30 days ahead.
    pub client_secret_expires_ms: Option<u64>,
    /// Integration users.
    pub users: Vec<UserConfig>,
    /// "Push line status to Teams".
    pub push_line_status: bool,
    /// Calls shorter than this are not pushed to Teams (ms; default 0).
    pub min_call_length_ms: u64,
    /// Presence re-read interval in seconds (default 300).
    pub reconcile_interval_s: u64,
    /// Interval between `/users/delta` rounds in seconds (default 60).
    pub directory_delta_interval_s: u64,
    /// Address sources for matching, in order (default mail, proxy_addresses, upn).
    pub match_order: Vec<MatchSource>,
    /// Explicit mappings: switchboard user id → Microsoft user id or address.
    pub overrides: Vec<(String, String)>,
    /// CSV of switchboard users for the workshop's switchboard simulator
    /// (`id,name,email,line_number[,active]`); the host itself does not read it.
    pub switchboard_csv: Option<PathBuf>,
    /// This integration's own plugin component (a canary release), instead of the host's.
    pub plugin: Option<PathBuf>,
    /// The sync policy (scope, direction, push rules).
    pub policy: PolicyConfig,
}

/// An address source for matching (`match_order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchSource {
    /// `mail`.
    Mail,
    /// `smtp:` entries of `proxyAddresses`.
    ProxyAddresses,
    /// `userPrincipalName`.
    Upn,
}

/// An integration user.
#[derive(Debug, Clone)]
pub struct UserConfig {
    /// User principal name.
    pub username: String,
    /// Password.
    pub password: Secret,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host: RawHost,
    #[serde(default)]
    integration: Vec<RawIntegration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    listen: Option<String>,
    admin_base_url: Option<String>,
    platform_client_id: Option<String>,
    platform_client_secret_env: Option<String>,
    database_url_env: Option<String>,
    host_id: Option<String>,
    admin_listen: Option<String>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    max_connections: Option<usize>,
    header_read_timeout_ms: Option<u64>,
    inbox_max_rows: Option<u64>,
    inbox_max_mib: Option<u64>,
    kek_env: Option<String>,
    kek_file: Option<PathBuf>,
    public_base_url: String,
    state_dir: Option<PathBuf>,
    graph_base_url: Option<String>,
    login_base_url: Option<String>,
    call_deadline_ms: Option<u64>,
    memory_limit_mib: Option<u64>,
    plugin: Option<PathBuf>,
    plugin_cache_dir: Option<PathBuf>,
    admin_token_env: Option<String>,
    admin_token_file: Option<PathBuf>,
    alert_url: Option<String>,
    alert_token_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntegration {
    name: String,
    display_name: Option<String>,
    manual_client_setup: Option<bool>,
    tenant_id: String,
    #[serde(default)]
    client_id: String,
    client_secret: Option<String>,
    client_secret_env: Option<String>,
    client_secret_expires: Option<RawDate>,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    push_line_status: bool,
    #[serde(default)]
    min_call_length_ms: u64,
    #[serde(default = "default_reconcile_s")]
    reconcile_interval_s: u64,
    #[serde(default = "default_delta_s")]
    directory_delta_interval_s: u64,
    #[serde(default)]
    match_order: Vec<MatchSource>,
    #[serde(default)]
    overrides: Vec<RawOverride>,
    switchboard_csv: Option<PathBuf>,
    plugin: Option<PathBuf>,
    #[serde(default)]
    policy: PolicyConfig,
}

/// A date as TOML writes it (`2027-05-01`, or a date-time) or as a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawDate {
    Toml(toml::value::Datetime),
    Text(String),
}

/// Milliseconds since the epoch of a date (`YYYY-MM-DD`, the day's start in UTC) or an
/// RFC 3339 date-time.
fn date_ms(d: RawDate) -> Result<u64, String> {
    let text = match d {
        RawDate::Toml(t) => t.to_string(),
        RawDate::Text(s) => s,
    };
    let at = time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339).or_else(|_| {
        time::Date::parse(&text, time::macros::format_description!("[year]-[month]-[day]"))
            .map(|d| d.midnight().assume_utc())
    });
    match at {
        Ok(t) if t.unix_timestamp() >= 0 => Ok((t.unix_timestamp_nanos() / 1_000_000) as u64),
        _ => Err(format!("'{text}' is not a date (YYYY-MM-DD, as the app registration shows the expiry)")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    switchboard_user: String,
    microsoft_user: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    username: String,
    password: Option<String>,
    password_env: Option<String>,
}

/// A refused configuration: where and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// The field path, e.g. `integration[0].tenant_id`.
    pub field: String,
    /// Why.
    pub reason: String,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            field: "(file)".into(),
            reason: format!("cannot read: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &file, base, &|k| std::env::var(k).ok())
    }

    /// Parses and validates config text. `env` resolves `*_env` variables; relative paths are
    /// taken from `base`.
    pub fn parse(
        text: &str,
        file: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let err = |field: &str, reason: String| ConfigError { file: file.into(), field: field.into(), reason };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // toml's message names the key and line; keep it, without echoing values.
            err(
                "(syntax)",
                e.message().to_string() + &e.span().map(|s| format!(" (at byte {})", s.start)).unwrap_or_default(),
            )
        })?;
        let h = raw.host;
        let graph_base_url = h.graph_base_url.unwrap_or_else(|| "https://graph.microsoft.com".into());
        let login_base_url = h.login_base_url.unwrap_or_else(|| "https://login.microsoftonline.com".into());
        for (field, v) in [
            ("host.graph_base_url", &graph_base_url),
            ("host.login_base_url", &login_base_url),
            ("host.public_base_url", &h.public_base_url),
        ] {
            check_base_url(v).map_err(|r| err(field, r))?;
        }
        let listen = h.listen.unwrap_or_else(|| "127.0.0.1:8080".into());
        let admin_listen = h.admin_listen.unwrap_or_else(|| "127.0.0.1:8081".into());
        for (field, v) in [("host.listen", &listen), ("host.admin_listen", &admin_listen)] {
            v.parse::<std::net::SocketAddr>().map_err(|e| err(field, format!("'{v}' is not an address:port ({e})")))?;
        }
        if listen == admin_listen && !listen.ends_with(":0") {
            return Err(err(
                "host.admin_listen",
                format!("'{admin_listen}' is also host.listen: the admin routes need a listener of their own"),
            ));
        }
        let tls = match (h.tls_cert_file, h.tls_key_file) {
            (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
            (None, None) => None,
            (Some(_), None) => return Err(err("host.tls_key_file", "tls_cert_file is set, so set this too".into())),
            (None, Some(_)) => return Err(err("host.tls_cert_file", "tls_key_file is set, so set this too".into())),
        };
        let dp = crate::listener::ListenerLimits::PUBLIC;
        let max_connections = h.max_connections.unwrap_or(dp.max_connections);
        if !(8..=65_536).contains(&max_connections) {
            return Err(err("host.max_connections", format!("{max_connections} must be between 8 and 65536")));
        }
        let header_ms = h.header_read_timeout_ms.unwrap_or(dp.header_read_timeout.as_millis() as u64);
        if !(100..=120_000).contains(&header_ms) {
            return Err(err("host.header_read_timeout_ms", format!("{header_ms} must be between 100 and 120000")));
        }
        let public_limits = crate::listener::ListenerLimits {
            max_connections,
            header_read_timeout: std::time::Duration::from_millis(header_ms),
        };
        let dl = InboxLimits::default();
        let inbox_limits = InboxLimits {
            rows: h.inbox_max_rows.unwrap_or(dl.rows),
            bytes: h.inbox_max_mib.map(|m| m << 20).unwrap_or(dl.bytes),
        };
        if !(100..=10_000_000).contains(&inbox_limits.rows) {
            return Err(err("host.inbox_max_rows", format!("{} must be between 100 and 10000000", inbox_limits.rows)));
        }
        if !((1 << 20)..=(64u64 << 30)).contains(&inbox_limits.bytes) {
            return Err(err("host.inbox_max_mib", "must be between 1 and 65536".into()));
        }
        let kek_text = match (h.kek_env, h.kek_file) {
            (Some(var), None) => env(&var).ok_or_else(|| err("host.kek_env", format!("${var} is not set")))?,
            (None, Some(f)) => {
                let f = base.join(f);
                std::fs::read_to_string(&f)
                    .map_err(|e| err("host.kek_file", format!("cannot read {}: {e}", f.display())))?
            }
            (Some(_), Some(_)) => return Err(err("host.kek_env", "give kek_env or kek_file, not both".into())),
            (None, None) => {
                return Err(err(
                    "host.kek_env",
                    "required (or host.kek_file): the key that encrypts private keys and client states at rest; \
                     make one with `openssl rand -base64 32`"
                        .into(),
                ));
            }
        };
        let kek = crate::seal::Kek::from_base64(kek_text.trim())
            .map_err(|r| err(if kek_text.is_empty() { "host.kek_file" } else { "host.kek_env" }, r))?;
        let defaults = crate::sandbox::Limits::default();
        let call_deadline_ms = h.call_deadline_ms.unwrap_or(defaults.call_deadline_ms);
        if !(20..=60_000).contains(&call_deadline_ms) {
            return Err(err("host.call_deadline_ms", format!("{call_deadline_ms} must be between 20 and 60000")));
        }
        let memory_mib = h.memory_limit_mib.unwrap_or((defaults.memory_bytes >> 20) as u64);
        if !(16..=4096).contains(&memory_mib) {
            return Err(err("host.memory_limit_mib", format!("{memory_mib} must be between 16 and 4096")));
        }
        let limits = crate::sandbox::Limits { call_deadline_ms, memory_bytes: (memory_mib as usize) << 20 };
        let (token, source) = match (h.admin_token_env, h.admin_token_file) {
            (Some(var), None) => {
                (env(&var).ok_or_else(|| err("host.admin_token_env", format!("${var} is not set")))?, format!("${var}"))
            }
            (None, Some(f)) => {
                let f = base.join(f);
                let t = std::fs::read_to_string(&f)
                    .map_err(|e| err("host.admin_token_file", format!("cannot read {}: {e}", f.display())))?;
                (t.trim().to_string(), f.display().to_string())
            }
            (Some(_), Some(_)) => {
                return Err(err("host.admin_token_env", "give admin_token_env or admin_token_file, not both".into()));
            }
            (None, None) => {
                return Err(err(
                    "host.admin_token_env",
                    "required (or host.admin_token_file): the admin listener's bearer token (16 characters or more)"
                        .into(),
                ));
            }
        };
        if token.len() < 16 {
            return Err(err(
                "host.admin_token_env",
                format!("the token in {source} is too short: use at least 16 characters"),
            ));
        }
        let admin_token = Secret::new(token);
        let admin_base_url = match h.admin_base_url {
            Some(u) => {
                check_base_url(&u).map_err(|r| err("host.admin_base_url", r))?;
                Some(u.trim_end_matches('/').to_string())
            }
            None => None,
        };
        let platform_app = match (h.platform_client_id, h.platform_client_secret_env) {
            (None, None) => None,
            (Some(id), Some(var)) => {
                if !is_guid(&id) {
                    return Err(err("host.platform_client_id", format!("'{id}' is not a GUID")));
                }
                if admin_base_url.is_none() {
                    return Err(err(
                        "host.admin_base_url",
                        "required with platform_client_id: the admin consent comes back to {admin_base_url}/ui/consent"
                            .into(),
                    ));
                }
                let secret =
                    env(&var).ok_or_else(|| err("host.platform_client_secret_env", format!("${var} is not set")))?;
                Some(PlatformApp { client_id: id, client_secret: Secret::new(secret) })
            }
            (Some(_), None) => {
                return Err(err(
                    "host.platform_client_secret_env",
                    "platform_client_id is set, so set this too".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(err(
                    "host.platform_client_id",
                    "platform_client_secret_env is set, so set this too".into(),
                ));
            }
        };
        let state_dir = base.join(h.state_dir.unwrap_or_else(|| "state".into()));
        let database = match (h.database_url_env, h.host_id) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(err("host.host_id", "only with database_url_env (several hosts on PostgreSQL)".into()));
            }
            (Some(var), id) => {
                let url = env(&var).ok_or_else(|| err("host.database_url_env", format!("${var} is not set")))?;
                crate::store::postgres::parse_url(&url)
                    .map_err(|e| err("host.database_url_env", format!("${var}: {e}")))?;
                let host_id = match id {
                    Some(id)
                        if !id.is_empty()
                            && id.len() <= 64
                            && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
                    {
                        id
                    }
                    Some(id) => {
                        return Err(err(
                            "host.host_id",
                            format!("'{id}' is not a host id: 1 to 64 letters, digits, '-', '_' or '.'"),
                        ));
                    }
                    None => default_host_id(),
                };
                Some(Database { url: Secret::new(url), host_id })
            }
        };
        let alerts = match (h.alert_url, h.alert_token_env) {
            (None, None) => None,
            (None, Some(_)) => return Err(err("host.alert_token_env", "only with alert_url".into())),
            (Some(url), var) => {
                check_base_url(&url).map_err(|e| err("host.alert_url", e))?;
                let token = match var {
                    Some(var) => Some(Secret::new(
                        env(&var).ok_or_else(|| err("host.alert_token_env", format!("${var} is not set")))?,
                    )),
                    None => None,
                };
                Some(crate::alerts::AlertConfig { url, token })
            }
        };
        let host = HostConfig {
            alerts,
            limits,
            plugin: h.plugin.map(|p| base.join(p)),
            plugin_cache_dir: h
                .plugin_cache_dir
                .map(|p| base.join(p))
                .unwrap_or_else(|| state_dir.join("plugin-cache")),
            admin_token,
            kek,
            admin_base_url,
            platform_app,
            listen,
            admin_listen,
            tls,
            public_limits,
            inbox_limits,
            public_base_url: h.public_base_url.trim_end_matches('/').to_string(),
            state_dir,
            database,
            graph_base_url: graph_base_url.trim_end_matches('/').to_string(),
            login_base_url: login_base_url.trim_end_matches('/').to_string(),
        };
        let mut integrations = Vec::new();
        for (i, r) in raw.integration.into_iter().enumerate() {
            let f = |name: &str| format!("integration[{i}].{name}");
            let platform = host.platform_app.as_ref().map(|p| p.client_id.as_str());
            let ic = integration_of(r, &|v| base.join(v), env, platform)
                .map_err(|(field, reason)| err(&f(&field), reason))?;
            let others = integrations.iter().enumerate().map(|(k, o)| (format!("integration[{k}]"), o));
            if let Some((field, reason)) = conflict(&ic, others) {
                return Err(err(&f(&field), reason));
            }
            integrations.push(ic);
        }
        Ok(Config { host, integrations })
    }
}

/// An integration as the admin API takes it (JSON), validated as the TOML file's
/// `[[integration]]` is. Secrets are write-only: left out in an update, the ones set stay
/// (an integration user's password by its username). File paths (`switchboard_csv`,
/// `plugin`) are not taken from the network: an update keeps the file's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationSpec {
    /// "Name" on the admin page.
    pub display_name: Option<String>,
    /// "Manual client setup" (default on); off: the host's app, after the admin's consent.
    pub manual_client_setup: Option<bool>,
    /// Directory (tenant) ID, or a domain.
    pub tenant_id: String,
    /// Application (client) ID (manual client setup only).
    #[serde(default)]
    pub client_id: String,
    /// Client secret value; `None`: keep the one set (none on create: missing credentials).
    pub client_secret: Option<String>,
    /// The secret's expiry, `YYYY-MM-DD`.
    pub client_secret_expires: Option<String>,
    /// Integration users.
    #[serde(default)]
    pub users: Vec<IntegrationUserSpec>,
    /// "Push line status to Teams".
    #[serde(default)]
    pub push_line_status: bool,
    /// Calls shorter than this are not pushed (ms).
    #[serde(default)]
    pub min_call_length_ms: u64,
    /// Presence re-read interval (s, at least 30).
    #[serde(default = "default_reconcile_s")]
    pub reconcile_interval_s: u64,
    /// Directory delta interval (s, at least 10).
    #[serde(default = "default_delta_s")]
    pub directory_delta_interval_s: u64,
    /// Address sources for matching, in order.
    #[serde(default)]
    pub match_order: Vec<MatchSource>,
    /// Explicit mappings.
    #[serde(default)]
    pub overrides: Vec<OverrideSpec>,
    /// The sync policy; `None`: keep the one set (the default on create).
    pub policy: Option<PolicyConfig>,
}

/// An integration user in an [`IntegrationSpec`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationUserSpec {
    /// User principal name.
    pub username: String,
    /// Password; `None`: keep the one set for this username.
    pub password: Option<String>,
}

/// An override in an [`IntegrationSpec`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideSpec {
    /// Switchboard user id.
    pub switchboard_user: String,
    /// Microsoft user id or address.
    pub microsoft_user: String,
}

impl IntegrationSpec {
    /// The validated integration `name`, taking what the spec leaves out from `current` (an
    /// update). Errors name the field of the request body.
    pub fn into_config(
        self,
        name: &str,
        current: Option<&IntegrationConfig>,
        platform: Option<&str>,
    ) -> Result<IntegrationConfig, ConfigError> {
        let kept = |s: &Secret| Some(s.expose().to_string()).filter(|v| !v.is_empty());
        let manual = self.manual_client_setup.unwrap_or(true);
        let raw = RawIntegration {
            name: name.to_string(),
            display_name: self.display_name,
            manual_client_setup: Some(manual),
            tenant_id: self.tenant_id,
            client_id: if manual { self.client_id } else { String::new() },
            client_secret: if manual {
                self.client_secret.or_else(|| current.and_then(|c| kept(&c.client_secret)))
            } else {
                None
            },
            client_secret_env: None,
            client_secret_expires: self.client_secret_expires.filter(|d| !d.trim().is_empty()).map(RawDate::Text),
            users: self
                .users
                .into_iter()
                .map(|u| {
                    let password = u.password.or_else(|| {
                        current
                            .and_then(|c| c.users.iter().find(|x| x.username.eq_ignore_ascii_case(&u.username)))
                            .and_then(|x| kept(&x.password))
                    });
                    RawUser { username: u.username, password, password_env: None }
                })
                .collect(),
            push_line_status: self.push_line_status,
            min_call_length_ms: self.min_call_length_ms,
            reconcile_interval_s: self.reconcile_interval_s,
            directory_delta_interval_s: self.directory_delta_interval_s,
            match_order: self.match_order,
            overrides: self
                .overrides
                .into_iter()
                .map(|o| RawOverride { switchboard_user: o.switchboard_user, microsoft_user: o.microsoft_user })
                .collect(),
            switchboard_csv: current.and_then(|c| c.switchboard_csv.clone()),
            plugin: current.and_then(|c| c.plugin.clone()),
            policy: self.policy.or_else(|| current.map(|c| c.policy.clone())).unwrap_or_default(),
        };
        integration_of(raw, &|p| p, &|_| None, platform).map_err(|(field, reason)| ConfigError {
            file: "request body".into(),
            field,
            reason,
        })
    }
}

/// One integration checked on its own (not against the others: see [`conflict`]); an error
/// is `(field, reason)`, the field relative to the integration. `path` resolves file paths.
fn integration_of(
    mut r: RawIntegration,
    path: &dyn Fn(PathBuf) -> PathBuf,
    env: &dyn Fn(&str) -> Option<String>,
    platform: Option<&str>,
) -> Result<IntegrationConfig, (String, String)> {
    let e = |field: &str, reason: String| (field.to_string(), reason);
    let manual_client_setup = r.manual_client_setup.unwrap_or(true);
    if !manual_client_setup {
        let Some(platform) = platform else {
            return Err(e(
                "manual_client_setup",
                "the automated setup needs the host's own app registration (host.platform_client_id): set it, or \
                 use manual client setup"
                    .into(),
            ));
        };
        if !r.client_id.is_empty() && !r.client_id.eq_ignore_ascii_case(platform) {
            return Err(e("client_id", "not used with the automated setup (the host's app is): leave it empty".into()));
        }
        if r.client_secret.as_deref().is_some_and(|s| !s.is_empty()) || r.client_secret_env.is_some() {
            return Err(e(
                "client_secret",
                "not used with the automated setup (the host's app is): leave it empty".into(),
            ));
        }
        r.client_id = platform.to_string();
        r.client_secret = None;
    }
    if r.reconcile_interval_s < 30 {
        return Err(e(
            "reconcile_interval_s",
            format!("{} s is too often: use at least 30 s (Graph's presence limit is shared)", r.reconcile_interval_s),
        ));
    }
    if r.directory_delta_interval_s < 10 {
        return Err(e(
            "directory_delta_interval_s",
            format!("{} s is too often: use at least 10 s", r.directory_delta_interval_s),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for m in &r.match_order {
        if !seen.insert(*m) {
            return Err(e("match_order", format!("{m:?} is listed twice")));
        }
    }
    for (j, o) in r.overrides.iter().enumerate() {
        if o.switchboard_user.trim().is_empty() || o.microsoft_user.trim().is_empty() {
            return Err(e(&format!("overrides[{j}]"), "switchboard_user and microsoft_user must not be empty".into()));
        }
        if r.overrides[..j].iter().any(|p| p.switchboard_user == o.switchboard_user) {
            return Err(e(
                &format!("overrides[{j}].switchboard_user"),
                format!("'{}' has two overrides", o.switchboard_user),
            ));
        }
    }
    r.policy.check()?;
    check_name(&r.name).map_err(|reason| e("name", reason))?;
    let display_name = match r.display_name.map(|d| d.trim().to_string()) {
        Some(d) if d.is_empty() => None,
        Some(d) if d.chars().count() > 100 || d.chars().any(char::is_control) => {
            return Err(e("display_name", "must be at most 100 characters, without control characters".into()));
        }
        d => d,
    };
    if !is_guid(&r.tenant_id) && !is_domain(&r.tenant_id) {
        return Err(e(
            "tenant_id",
            format!("'{}' is neither a GUID nor a domain name (use the Directory (tenant) ID)", r.tenant_id),
        ));
    }
    if !is_guid(&r.client_id) {
        return Err(e("client_id", format!("'{}' is not a GUID (use the Application (client) ID)", r.client_id)));
    }
    let client_secret = secret(r.client_secret, r.client_secret_env, env).map_err(|r| e("client_secret", r))?;
    let client_secret_expires_ms =
        r.client_secret_expires.map(date_ms).transpose().map_err(|r| e("client_secret_expires", r))?;
    let mut users = Vec::new();
    for (j, u) in r.users.into_iter().enumerate() {
        if !u.username.contains('@') {
            return Err(e(
                &format!("users[{j}].username"),
                format!("'{}' is not a user principal name (name@domain)", u.username),
            ));
        }
        if users.iter().any(|x: &UserConfig| x.username.eq_ignore_ascii_case(&u.username)) {
            return Err(e(
                &format!("users[{j}].username"),
                format!("'{}' is listed twice; each integration user holds one subscription", u.username),
            ));
        }
        let password = secret(u.password, u.password_env, env).map_err(|r| e(&format!("users[{j}].password"), r))?;
        users.push(UserConfig { username: u.username, password });
    }
    Ok(IntegrationConfig {
        name: r.name,
        display_name,
        manual_client_setup,
        tenant_id: r.tenant_id,
        client_id: r.client_id,
        client_secret,
        client_secret_expires_ms,
        users,
        push_line_status: r.push_line_status,
        min_call_length_ms: r.min_call_length_ms,
        reconcile_interval_s: r.reconcile_interval_s,
        directory_delta_interval_s: r.directory_delta_interval_s,
        match_order: r.match_order,
        overrides: r.overrides.into_iter().map(|o| (o.switchboard_user, o.microsoft_user)).collect(),
        switchboard_csv: r.switchboard_csv.map(path),
        plugin: r.plugin.map(path),
        policy: r.policy,
    })
}

/// Checks an integration's name: 1-64 characters of a-z, 0-9 and '-' (it is a path segment).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!("'{name}' must be 1-64 characters of a-z, 0-9 and '-'"));
    }
    Ok(())
}

/// What `new` conflicts with among `others` (each with the label an error names it by), as
/// `(field, reason)`: the same name; the same app registration in the same tenant (the
/// product guide: "the last one activated receives status updates"); an integration user
/// that another integration of the same app has (Graph allows one presence subscription per
/// app and user, so the two would delete each other's).
pub fn conflict<'a>(
    new: &IntegrationConfig,
    others: impl IntoIterator<Item = (String, &'a IntegrationConfig)>,
) -> Option<(String, String)> {
    for (label, o) in others {
        if o.name == new.name {
            return Some(("name".into(), format!("'{}' is used by another integration ({label})", new.name)));
        }
        if !o.client_id.eq_ignore_ascii_case(&new.client_id) {
            continue;
        }
        if o.tenant_id.eq_ignore_ascii_case(&new.tenant_id) {
            return Some((
                "client_id".into(),
                format!(
                    "{label} already uses this app registration in tenant {}; give each integration its own app \
                     registration (else only one of them receives presence)",
                    new.tenant_id
                ),
            ));
        }
        for (j, u) in new.users.iter().enumerate() {
            if o.users.iter().any(|x| x.username.eq_ignore_ascii_case(&u.username)) {
                return Some((
                    format!("users[{j}].username"),
                    format!(
                        "'{}' is already an integration user of {label} with the same app registration; Graph \
                         allows one presence subscription per app and user",
                        u.username
                    ),
                ));
            }
        }
    }
    None
}

fn default_reconcile_s() -> u64 {
    300
}

fn default_delta_s() -> u64 {
    60
}

fn secret(
    value: Option<String>,
    env_name: Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, String> {
    match (value, env_name) {
        (Some(_), Some(_)) => Err("give the value or the *_env variable name, not both".into()),
        (Some(v), None) => Ok(Secret::new(v)),
        (None, Some(name)) => {
            env(&name).map(Secret::new).ok_or_else(|| format!("environment variable {name} is not set"))
        }
        (None, None) => Ok(Secret::default()),
    }
}

/// A GUID in its 8-4-4-4-12 hex form.
pub fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn is_domain(s: &str) -> bool {
    s.contains('.')
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
        })
}

/// Checks a base URL: https, or plain http only towards loopback.
pub fn check_base_url(v: &str) -> Result<(), String> {
    let u = url::Url::parse(v).map_err(|e| format!("'{v}' is not a URL ({e})"))?;
    match u.scheme() {
        "https" => Ok(()),
        "http" if crate::allow_list::is_loopback(&u) => Ok(()),
        "http" => Err(format!("'{v}': plain http is allowed only for loopback hosts")),
        s => Err(format!("'{v}': scheme {s} is not http(s)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[host]
listen = "127.0.0.1:0"
public_base_url = "https://presence.example.com"
admin_token_env = "ADMIN_TOKEN"
kek_env = "KEK"

[[integration]]
name = "contoso"
tenant_id = "5db68c59-bbeb-41d7-a5df-b316a4434048"
client_id = "0ed2fcf1-b202-4699-afe4-cbc36ead3235"
client_secret_env = "CONTOSO_SECRET"
users = [{ username = "sync1@contoso.com", password = "pw" }]
"#;

    fn env(k: &str) -> Option<String> {
        match k {
            "CONTOSO_SECRET" => Some("s3cret".into()),
            "ADMIN_TOKEN" => Some("an-admin-token-of-32-characters!".into()),
            "KEK" => Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into()),
            _ => None,
        }
    }

    #[test]
    fn good_config_loads_with_defaults() {
        let c = Config::parse(GOOD, "c.toml", Path::new("/etc"), &env).unwrap();
        assert_eq!(c.host.graph_base_url, "https://graph.microsoft.com");
        assert_eq!(c.integrations[0].client_secret.expose(), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!format!("{c:?}").contains("\"pw\""));
    }

    #[test]
    fn one_app_registration_per_tenant_and_one_integration_user_per_app_across_integrations() {
        let second = |tenant: &str, client: &str, user: &str| {
            format!(
                "{GOOD}\n[[integration]]\nname = \"second\"\ntenant_id = \"{tenant}\"\nclient_id = \"{client}\"\n\
                 client_secret = \"x\"\nusers = [{{ username = \"{user}\", password = \"pw\" }}]\n"
            )
        };
        const TENANT: &str = "5db68c59-bbeb-41d7-a5df-b316a4434048";
        const CLIENT: &str = "0ed2fcf1-b202-4699-afe4-cbc36ead3235";
        const OTHER_TENANT: &str = "8c1d5e2a-3f4b-4c6d-9e8f-0a1b2c3d4e5f";
        const OTHER_CLIENT: &str = "4b2e8d1c-7a6f-4e3d-8c2b-1a0f9e8d7c6b";
        let parse = |text: String| Config::parse(&text, "c.toml", Path::new("/etc"), &env).map_err(|e| e.to_string());
        let e = parse(second(TENANT, CLIENT, "sync2@contoso.com")).unwrap_err();
        assert!(e.contains("integration[1].client_id") && e.contains("integration[0] already uses"), "{e}");
        let e = parse(second(OTHER_TENANT, CLIENT, "SYNC1@contoso.com")).unwrap_err();
        assert!(e.contains("integration[1].users[0].username") && e.contains("one presence subscription"), "{e}");
        // Another app, or the same app in another tenant with its own user: fine.
        assert!(parse(second(TENANT, OTHER_CLIENT, "sync1@contoso.com")).is_ok());
        assert!(parse(second(OTHER_TENANT, CLIENT, "sync2@contoso.com")).is_ok());
    }

    #[test]
    fn the_client_secret_expiry_loads_as_a_toml_date_or_a_string_and_a_bad_one_names_the_field() {
        let with = |v: &str| GOOD.replace("users = [", &format!("client_secret_expires = {v}\nusers = ["));
        for v in ["2027-05-01", "\"2027-05-01\"", "2027-05-01T00:00:00Z", "\"2027-05-01T02:00:00+02:00\""] {
            let c = Config::parse(&with(v), "c.toml", Path::new("/etc"), &env).unwrap();
            assert_eq!(c.integrations[0].client_secret_expires_ms, Some(1_809_129_600_000), "{v}");
        }
        let e = Config::parse(&with("\"next spring\""), "c.toml", Path::new("/etc"), &env).unwrap_err().to_string();
        assert!(e.contains("client_secret_expires") && e.contains("'next spring' is not a date"), "{e}");
        assert_eq!(
            Config::parse(GOOD, "c.toml", Path::new("/etc"), &env).unwrap().integrations[0].client_secret_expires_ms,
            None
        );
    }

    #[test]
    fn match_order_and_overrides_load_and_bad_ones_name_the_field() {
        let extra = "match_order = [\"upn\", \"mail\"]\ndirectory_delta_interval_s = 120\n\
                     overrides = [{ switchboard_user = \"sb-1\", microsoft_user = \"anna@contoso.com\" }]\n";
        let c = Config::parse(&format!("{GOOD}{extra}"), "c.toml", Path::new("."), &env).unwrap();
        let i = &c.integrations[0];
        assert_eq!(i.match_order, vec![MatchSource::Upn, MatchSource::Mail]);
        assert_eq!(i.directory_delta_interval_s, 120);
        assert_eq!(i.overrides, vec![("sb-1".to_string(), "anna@contoso.com".to_string())]);
        for (bad, field) in [
            ("match_order = [\"mail\", \"mail\"]\n", "integration[0].match_order"),
            ("match_order = [\"email\"]\n", "(syntax)"),
            ("directory_delta_interval_s = 1\n", "integration[0].directory_delta_interval_s"),
            (
                "overrides = [{ switchboard_user = \"a\", microsoft_user = \"x\" }, { switchboard_user = \"a\", microsoft_user = \"y\" }]\n",
                "integration[0].overrides[1].switchboard_user",
            ),
        ] {
            let e = Config::parse(&format!("{GOOD}{bad}"), "c.toml", Path::new("."), &env).unwrap_err();
            assert_eq!(e.field, field, "{bad}: {e}");
        }
    }

    #[test]
    fn sandbox_limits_load_and_out_of_range_ones_name_the_field() {
        let c = Config::parse(GOOD, "c.toml", Path::new("."), &env).unwrap();
        assert_eq!(c.host.limits.call_deadline_ms, crate::sandbox::DEFAULT_CALL_DEADLINE_MS);
        let custom = GOOD.replace("[host]\n", "[host]\ncall_deadline_ms = 250\nmemory_limit_mib = 64\n");
        let c = Config::parse(&custom, "c.toml", Path::new("."), &env).unwrap();
        assert_eq!((c.host.limits.call_deadline_ms, c.host.limits.memory_bytes), (250, 64 << 20));
        for (bad, field) in
            [("call_deadline_ms = 5", "host.call_deadline_ms"), ("memory_limit_mib = 1", "host.memory_limit_mib")]
        {
            let e =
                Config::parse(&GOOD.replace("[host]\n", &format!("[host]\n{bad}\n")), "c.toml", Path::new("."), &env)
                    .unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn malformed_tenant_id_names_the_field() {
        let bad = GOOD.replace("5db68c59-bbeb-41d7-a5df-b316a4434048", "not a tenant!");
        let e = Config::parse(&bad, "c.toml", Path::new("."), &env).unwrap_err();
        assert_eq!(e.field, "integration[0].tenant_id");
        assert!(e.to_string().starts_with("c.toml: integration[0].tenant_id:"));
    }

    #[test]
    fn plain_http_only_for_loopback() {
        let bad = GOOD.replace("https://presence.example.com", "http://presence.example.com");
        let e = Config::parse(&bad, "c.toml", Path::new("."), &env).unwrap_err();
        assert_eq!(e.field, "host.public_base_url");
        let ok = GOOD.replace("https://presence.example.com", "http://127.0.0.1:9");
        assert!(Config::parse(&ok, "c.toml", Path::new("."), &env).is_ok());
    }

    #[test]
    fn the_alert_webhook_loads_with_its_token_and_a_bad_one_names_the_field() {
        let with = |lines: &str| GOOD.replace("kek_env = \"KEK\"\n", &format!("kek_env = \"KEK\"\n{lines}\n"));
        let c = Config::parse(
            &with("alert_url = \"https://alerts.example.com/hook\"\nalert_token_env = \"ADMIN_TOKEN\""),
            "c.toml",
            Path::new("."),
            &env,
        )
        .unwrap();
        let a = c.host.alerts.as_ref().expect("alerts");
        assert_eq!(
            (a.url.as_str(), a.token.as_ref().map(|t| t.expose())),
            ("https://alerts.example.com/hook", Some("an-admin-token-of-32-characters!"))
        );
        assert!(!format!("{c:?}").contains("an-admin-token"), "the token is a secret");
        assert!(Config::parse(GOOD, "c.toml", Path::new("."), &env).unwrap().host.alerts.is_none());
        for (lines, field, says) in [
            ("alert_url = \"http://alerts.example.com/hook\"", "host.alert_url", "plain http"),
            ("alert_url = \"https://alerts.example.com\"\nalert_token_env = \"NOPE\"", "host.alert_token_env", "NOPE"),
            ("alert_token_env = \"ADMIN_TOKEN\"", "host.alert_token_env", "alert_url"),
        ] {
            let e = Config::parse(&with(lines), "c.toml", Path::new("."), &env).unwrap_err();
            assert_eq!(e.field, field, "{lines}");
            assert!(e.reason.contains(says), "{lines}: {}", e.reason);
        }
    }

    #[test]
    fn the_sync_policy_loads_from_its_table_and_a_bad_one_names_the_field() {
        let with = |lines: &str| format!("{GOOD}\n[integration.policy]\n{lines}\n");
        let c = Config::parse(
            &with(
                "groups = [\"5d2f0a7c-1b3e-4c5d-9e8f-0a1b2c3d4e5f\"]\nexcluded_users = [\"ceo@contoso.com\"]\n\
                 do_not_disturb_in_call = true\n\
                 working_hours = { time_zone = \"Europe/Copenhagen\", days = [\"mon\", \"fri\"], start = \"08:00\", end = \"16:30\" }",
            ),
            "c.toml",
            Path::new("."),
            &env,
        )
        .unwrap();
        let p = &c.integrations[0].policy;
        assert_eq!(p.groups.len(), 1);
        assert!(p.do_not_disturb_in_call);
        let w = p.to_wit().unwrap().working_hours.unwrap();
        assert_eq!((w.start_minute, w.end_minute, w.days.len()), (480, 990, 2));
        assert!(Config::parse(GOOD, "c.toml", Path::new("."), &env).unwrap().integrations[0].policy.is_default());
        for (lines, field) in [
            ("groups = [\"sales\"]", "integration[0].policy.groups[0]"),
            (
                "working_hours = { time_zone = \"UTC\", start = \"8am\", end = \"17:00\" }",
                "integration[0].policy.working_hours.start",
            ),
        ] {
            let e = Config::parse(&with(lines), "c.toml", Path::new("."), &env).unwrap_err();
            assert_eq!(e.field, field, "{lines}: {}", e.reason);
        }
        let e = Config::parse(&with("call_replace = [\"Away\"]"), "c.toml", Path::new("."), &env).unwrap_err();
        assert!(e.reason.contains("call_replace"), "an unknown key is named: {}", e.reason);
    }

    #[test]
    fn missing_env_var_is_named() {
        let e = Config::parse(GOOD, "c.toml", Path::new("."), &|k| (k != "CONTOSO_SECRET").then(|| env(k)).flatten())
            .unwrap_err();
        assert_eq!(e.field, "integration[0].client_secret");
        assert!(e.reason.contains("CONTOSO_SECRET"));
    }

    #[test]
    fn admin_token_and_kek_are_required_and_checked() {
        let c = Config::parse(GOOD, "c.toml", Path::new("."), &env).unwrap();
        assert_eq!(c.host.admin_listen, "127.0.0.1:8081");
        assert!(!format!("{c:?}").contains("an-admin-token"));
        assert!(!format!("{c:?}").contains("AAECAwQF"));
        for (edit, field) in [
            (GOOD.replace("admin_token_env = \"ADMIN_TOKEN\"\n", ""), "host.admin_token_env"),
            (GOOD.replace("kek_env = \"KEK\"\n", ""), "host.kek_env"),
            (GOOD.replace("\"KEK\"", "\"CONTOSO_SECRET\""), "host.kek_env"),
            (GOOD.replace("\"ADMIN_TOKEN\"", "\"CONTOSO_SECRET\""), "host.admin_token_env"),
            (GOOD.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:8081\""), "host.admin_listen"),
            (GOOD.replace("[host]\n", "[host]\ntls_cert_file = \"c.pem\"\n"), "host.tls_key_file"),
        ] {
            let e = Config::parse(&edit, "c.toml", Path::new("."), &env).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn the_automated_setup_needs_the_hosts_app_and_takes_its_client_id() {
        const PLATFORM: &str = "7f3c2a91-5e4d-4b8a-9c1f-2d6e8a0b4c37";
        let env = |k: &str| match k {
            "PLATFORM_SECRET" => Some("p".to_string()),
            k => env(k),
        };
        let automated = "[[integration]]\nname = \"auto\"\ntenant_id = \"fabrikam.example\"\nmanual_client_setup = false\n\
                         users = [{ username = \"sync@fabrikam.example\", password = \"pw\" }]\n";
        let with_app = GOOD.replace(
            "[host]\n",
            &format!(
                "[host]\nadmin_base_url = \"https://switchboard.example\"\nplatform_client_id = \"{PLATFORM}\"\n\
                 platform_client_secret_env = \"PLATFORM_SECRET\"\n"
            ),
        );
        let c = Config::parse(&format!("{with_app}{automated}"), "c.toml", Path::new("."), &env).unwrap();
        let auto = &c.integrations[1];
        assert!(!auto.manual_client_setup);
        assert_eq!((auto.client_id.as_str(), auto.client_secret.expose()), (PLATFORM, ""));
        assert_eq!(c.host.platform_app.as_ref().unwrap().client_secret.expose(), "p");
        assert!(!format!("{c:?}").contains("\"p\""));
        assert!(c.integrations[0].manual_client_setup, "manual is the default in the file");
        // Without the host's app, or with a secret of its own, it is refused.
        let e = Config::parse(&format!("{GOOD}{automated}"), "c.toml", Path::new("."), &env).unwrap_err();
        assert_eq!(e.field, "integration[1].manual_client_setup", "{e}");
        let own =
            automated.replace("manual_client_setup = false\n", "manual_client_setup = false\nclient_secret = \"x\"\n");
        let e = Config::parse(&format!("{with_app}{own}"), "c.toml", Path::new("."), &env).unwrap_err();
        assert_eq!(e.field, "integration[1].client_secret", "{e}");
        let no_base = with_app.replace("admin_base_url = \"https://switchboard.example\"\n", "");
        let e = Config::parse(&no_base, "c.toml", Path::new("."), &env).unwrap_err();
        assert_eq!(e.field, "host.admin_base_url", "{e}");
    }

    #[test]
    fn unknown_field_is_refused() {
        let bad = GOOD.replace("push_line_status", "x").replace("[host]", "[host]\nbogus = 1");
        assert!(Config::parse(&bad, "c.toml", Path::new("."), &env).is_err());
    }
}
