//! # presence-demo
//!
//! The demo, and the scenario builder that the demo, the end-to-end tests and the benchmarks
//! share: a seeded emulator tenant, a switchboard simulator whose users match it by email, and
//! a host running the real plugin component against both, all on loopback.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use graph_emulator::{Emulator, TenantSeed};
use presence_host::config::{HostConfig, IntegrationConfig, Secret, UserConfig};
use presence_host::sandbox::Limits;
use presence_host::switchboard::{LineEvent, LineState};
use presence_host::{Backends, Config, Host, StatusView};
use switchboard_sim::{Switchboard, User};

/// The plugin component the scenarios run (built from `plugin/component`).
pub use presence_plugin_wasm::PLUGIN_WASM;

/// One clock for the host and the emulator, that tests move forward: the system clock plus an
/// offset.
#[derive(Default)]
pub struct TestClock {
    offset_ms: AtomicI64,
}

impl TestClock {
    /// Now in ms since the epoch.
    pub fn now_ms(&self) -> u64 {
        let real = presence_host::clock::system_now_ms() as i64;
        (real + self.offset_ms.load(Ordering::Relaxed)).max(0) as u64
    }
    /// Moves time forward.
    pub fn advance(&self, d: Duration) {
        self.offset_ms.fetch_add(d.as_millis() as i64, Ordering::Relaxed);
    }
}

impl presence_host::Clock for TestClock {
    fn now_ms(&self) -> u64 {
        TestClock::now_ms(self)
    }
}

impl graph_emulator::Clock for TestClock {
    fn now_ms(&self) -> u64 {
        TestClock::now_ms(self)
    }
}

/// Microsoft's clock when it is not the host's: a [`TestClock`] plus a fixed offset.
pub struct SkewedClock {
    /// The host's clock.
    pub base: Arc<TestClock>,
    /// How far Microsoft's clock is ahead (ms; negative: behind).
    pub ahead_ms: i64,
}

impl graph_emulator::Clock for SkewedClock {
    fn now_ms(&self) -> u64 {
        (self.base.now_ms() as i64 + self.ahead_ms).max(0) as u64
    }
}

/// The demo tenant (the product guide's example ids).
pub const DEMO_TENANT: &str = "5db68c59-bbeb-41d7-a5df-b316a4434048";
/// The demo app's client id.
pub const DEMO_CLIENT: &str = "0ed2fcf1-b202-4699-afe4-cbc36ead3235";
/// The demo app's secret (an emulator secret, not a real one).
pub const DEMO_SECRET: &str = "emulator-secret-value";

/// What to build.
#[derive(Debug, Clone)]
pub struct ScenarioOptions {
    /// Microsoft users (each with a matching switchboard user).
    pub users: usize,
    /// Integration users configured (and existing in the tenant).
    pub integration_users: usize,
    /// Client secret the integration is configured with (the tenant's is [`DEMO_SECRET`]).
    pub configured_secret: String,
    /// State directory.
    pub state_dir: PathBuf,
    /// Integration name.
    pub name: String,
    /// Integration users (by index) that the tenant requires MFA for.
    pub mfa_users: Vec<usize>,
    /// "Push line status to Teams".
    pub push_line_status: bool,
    /// Application permissions the tenant's admin granted (default: the product guide's).
    pub app_roles: Option<Vec<String>>,
    /// Seconds between `/users/delta` rounds.
    pub directory_delta_interval_s: u64,
    /// A second integration of this name, for a second tenant (fabrikam.example, same user
    /// count, its own app registration and switchboard), to show integrations are isolated.
    pub second_integration: Option<String>,
    /// Sandbox limits.
    pub limits: Limits,
    /// More integrations on the same host, each running its own plugin component (name, path
    /// of the `.wasm`); they get the first integration's settings under their own name and an
    /// empty switchboard. The sandbox tests run hostile components this way.
    pub extra_integrations: Vec<(String, PathBuf)>,
    /// The admin listener's bearer token (default: a random one).
    pub admin_token: String,
    /// Bounds of the public listener.
    pub public_limits: presence_host::listener::ListenerLimits,
    /// TLS certificate chain and key (PEM files) of the public listener.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// How far the emulator's (Microsoft's) clock is ahead of the host's (ms; negative:
    /// behind).
    pub microsoft_ahead_ms: i64,
    /// Bounds of the inbox.
    pub inbox_limits: presence_host::context::InboxLimits,
    /// How many switchboard users (matching the tenant's first ones); `None`: `users`.
    pub switchboard_users: Option<usize>,
    /// The host has an app registration of its own ([`PLATFORM_CLIENT`], registered at the
    /// emulator as a multi-tenant app), for the automated setup with admin consent.
    pub platform_app: bool,
    /// The switchboard's users live in this CSV (written at the start, watched for edits,
    /// and where changes through its API go), as `host-harness run` does it.
    pub switchboard_csv: Option<PathBuf>,
    /// State in this PostgreSQL database (a fleet of one host) instead of SQLite.
    pub database: Option<String>,
    /// Alerts go to this webhook.
    pub alert_url: Option<String>,
    /// The integration's sync policy.
    pub policy: presence_host::policy::PolicyConfig,
}

impl ScenarioOptions {
    /// `users` users and `integration_users` integration users, state in `state_dir`.
    pub fn new(users: usize, integration_users: usize, state_dir: PathBuf) -> Self {
        ScenarioOptions {
            users,
            integration_users,
            configured_secret: DEMO_SECRET.into(),
            state_dir,
            name: "contoso".into(),
            mfa_users: vec![],
            push_line_status: true,
            app_roles: None,
            directory_delta_interval_s: 60,
            second_integration: None,
            limits: Limits::default(),
            extra_integrations: vec![],
            admin_token: random_token(),
            public_limits: presence_host::listener::ListenerLimits::PUBLIC,
            tls: None,
            microsoft_ahead_ms: 0,
            inbox_limits: Default::default(),
            switchboard_users: None,
            switchboard_csv: None,
            platform_app: false,
            database: None,
            alert_url: None,
            policy: Default::default(),
        }
    }
}

/// A fresh random token of 32 hex digits (an admin token).
pub fn random_token() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..16).map(|_| format!("{:02x}", rng.random::<u8>())).collect()
}

/// A running scenario.
pub struct Scenario {
    /// The emulator.
    pub emulator: Emulator,
    /// The host (None while stopped).
    pub host: Option<Host>,
    /// The tenant seed.
    pub seed: TenantSeed,
    /// The config the host runs with.
    pub config: Config,
    /// The switchboard.
    pub switchboard: Arc<Switchboard>,
    /// The clock the host and the emulator share.
    pub clock: Arc<TestClock>,
    /// Emulator base URL.
    pub emulator_url: String,
    /// The second integration's switchboard, if there is one.
    pub second_switchboard: Option<Arc<Switchboard>>,
    /// The second integration's tenant, if there is one.
    pub second_seed: Option<TenantSeed>,
    /// Every integration's switchboard (those created at run time too).
    pub sims: Arc<switchboard_sim::Switchboards>,
}

/// The host's own multi-tenant app (the automated setup) in scenarios with `platform_app`.
pub const PLATFORM_CLIENT: &str = "7f3c2a91-5e4d-4b8a-9c1f-2d6e8a0b4c37";
/// Its secret.
pub const PLATFORM_SECRET: &str = "platform-app-secret-value";

/// The second scenario tenant (fabrikam.example) and its app.
pub const SECOND_TENANT: &str = "8c1d5e2a-3f4b-4c6d-9e8f-0a1b2c3d4e5f";
/// The second tenant's app registration.
pub const SECOND_CLIENT: &str = "4b2e8d1c-7a6f-4e3d-8c2b-1a0f9e8d7c6b";

/// Switchboard users matching a seed's first `n` users by email, some written with other case
/// and spacing (matching is trimmed and case-insensitive), every fifth one passive.
pub fn switchboard_users(seed: &TenantSeed, n: usize) -> Vec<User> {
    (0..n)
        .map(|i| {
            let email = seed.user_email(i);
            User {
                id: format!("sb-{i:05}"),
                name: format!("User {i:05}"),
                emails: vec![if i % 10 == 3 { format!("  {}  ", email.to_uppercase()) } else { email }],
                line_number: (i % 5 != 4).then(|| format!("+46701{i:06}")),
                active: i % 5 != 4,
            }
        })
        .collect()
}

/// A scenario's emulator stops with it: its listener, and the session timer that scans every
/// user, do not outlive it beside the next scenario of the same process.
impl Drop for Scenario {
    fn drop(&mut self) {
        self.emulator.stop();
    }
}

impl Scenario {
    /// Starts emulator and host.
    pub async fn start(opts: ScenarioOptions) -> anyhow::Result<Scenario> {
        let clock = Arc::new(TestClock::default());
        let emulator = if opts.microsoft_ahead_ms == 0 {
            Emulator::new(clock.clone())
        } else {
            Emulator::new(Arc::new(SkewedClock { base: clock.clone(), ahead_ms: opts.microsoft_ahead_ms }))
        };
        let mut seed = TenantSeed::new(
            DEMO_TENANT,
            "contoso.example",
            DEMO_CLIENT,
            DEMO_SECRET,
            opts.users,
            opts.integration_users.max(1),
        );
        if let Some(roles) = &opts.app_roles {
            seed.app_roles = roles.clone();
        }
        emulator.add_tenant(&seed);
        for &n in &opts.mfa_users {
            let upn = seed.integration_user(n);
            emulator.with_world(|w| {
                let k = w.tenant_key(&seed.tenant_id).unwrap();
                if let Some(u) = w.tenants.get_mut(&k).unwrap().user_by_upn(&upn) {
                    u.mfa_required = true;
                }
            });
        }
        let emulator_url = emulator.start().await?;
        let sb_users = switchboard_users(&seed, opts.switchboard_users.unwrap_or(opts.users));
        let switchboard = match &opts.switchboard_csv {
            Some(csv) => {
                Switchboard::write_csv(csv, &sb_users)?;
                let sb = Arc::new(Switchboard::from_csv(csv)?);
                sb.watch_csv(csv.clone());
                sb
            }
            None => Arc::new(Switchboard::new(sb_users)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        if opts.platform_app {
            emulator.add_platform_app(graph_emulator::PlatformApp {
                client_id: PLATFORM_CLIENT.into(),
                secret: PLATFORM_SECRET.into(),
                app_roles: seed.app_roles.iter().cloned().collect(),
                redirect_uris: vec![format!("http://{}/ui/consent", admin.local_addr()?)],
            });
        }
        let mut config = Config {
            host: HostConfig {
                listen: addr.to_string(),
                admin_listen: admin.local_addr()?.to_string(),
                tls: opts.tls.clone(),
                public_limits: opts.public_limits,
                inbox_limits: opts.inbox_limits,
                kek: presence_host::seal::Kek::random(),
                public_base_url: format!("http://{addr}"),
                state_dir: opts.state_dir.clone(),
                database: opts.database.as_ref().map(|url| presence_host::config::Database {
                    url: Secret::new(url.clone()),
                    host_id: "scenario".into(),
                }),
                graph_base_url: emulator_url.clone(),
                login_base_url: emulator_url.clone(),
                limits: opts.limits,
                plugin: None,
                plugin_cache_dir: opts.state_dir.join("plugin-cache"),
                admin_token: Secret::new(opts.admin_token.clone()),
                admin_base_url: Some(format!("http://{}", admin.local_addr()?)),
                alerts: opts
                    .alert_url
                    .clone()
                    .map(|url| presence_host::alerts::AlertConfig { url, token: Some(Secret::new("alert-token")) }),
                platform_app: opts.platform_app.then(|| presence_host::config::PlatformApp {
                    client_id: PLATFORM_CLIENT.into(),
                    client_secret: Secret::new(PLATFORM_SECRET),
                }),
            },
            integrations: vec![IntegrationConfig {
                name: opts.name.clone(),
                display_name: None,
                manual_client_setup: true,
                tenant_id: DEMO_TENANT.into(),
                client_id: DEMO_CLIENT.into(),
                client_secret: Secret::new(opts.configured_secret.clone()),
                client_secret_expires_ms: None,
                users: (0..opts.integration_users)
                    .map(|n| UserConfig {
                        username: seed.integration_user(n),
                        password: Secret::new(seed.integration_password.clone()),
                    })
                    .collect(),
                push_line_status: opts.push_line_status,
                min_call_length_ms: 0,
                reconcile_interval_s: 300,
                directory_delta_interval_s: opts.directory_delta_interval_s,
                match_order: vec![],
                overrides: vec![],
                switchboard_csv: None,
                plugin: None,
                policy: opts.policy.clone(),
            }],
        };
        let second = opts.second_integration.as_ref().map(|name| {
            let seed2 = TenantSeed::new(SECOND_TENANT, "fabrikam.example", SECOND_CLIENT, DEMO_SECRET, opts.users, 1);
            emulator.add_tenant(&seed2);
            let mut ic = config.integrations[0].clone();
            ic.name = name.clone();
            ic.tenant_id = SECOND_TENANT.into();
            ic.client_id = SECOND_CLIENT.into();
            ic.client_secret = Secret::new(DEMO_SECRET);
            ic.users = vec![UserConfig {
                username: seed2.integration_user(0),
                password: Secret::new(seed2.integration_password.clone()),
            }];
            config.integrations.push(ic);
            (Arc::new(Switchboard::new(switchboard_users(&seed2, opts.users))), seed2)
        });
        for (name, plugin) in &opts.extra_integrations {
            let mut ic = config.integrations[0].clone();
            ic.name = name.clone();
            ic.plugin = Some(plugin.clone());
            config.integrations.push(ic);
        }
        let (second_switchboard, second_seed) = match second {
            Some((sb, s)) => (Some(sb), Some(s)),
            None => (None, None),
        };
        let sims = switchboard_sim::Switchboards::new(BTreeMap::from([(opts.name.clone(), switchboard.clone())]));
        if let (Some(name), Some(sb)) = (&opts.second_integration, &second_switchboard) {
            sims.insert(name, sb.clone());
        }
        let host = start_host(&config, clock.clone(), listener, admin, sims.clone()).await?;
        Ok(Scenario {
            emulator,
            host: Some(host),
            seed,
            config,
            switchboard,
            clock,
            emulator_url,
            second_switchboard,
            second_seed,
            sims,
        })
    }

    /// Stops the host (the emulator keeps running, like Microsoft does).
    pub async fn stop_host(&mut self) {
        if let Some(h) = self.host.take() {
            h.stop().await;
        }
    }

    /// Starts the host again with the same config and state directory, listening where it
    /// listened before (Graph's subscriptions point there).
    pub async fn restart_host(&mut self) -> anyhow::Result<()> {
        self.stop_host().await;
        let listener = tokio::net::TcpListener::bind(&self.config.host.listen).await?;
        let admin = tokio::net::TcpListener::bind(&self.config.host.admin_listen).await?;
        let host = start_host(&self.config, self.clock.clone(), listener, admin, self.sims.clone()).await?;
        self.host = Some(host);
        Ok(())
    }

    /// The webhook URL of the integration (with its secret path segment).
    pub fn notification_url(&self) -> String {
        let h = self.host().integrations().values().next().expect("an integration").clone();
        format!("{}{}", self.config.host.public_base_url, h.webhook_path("notifications"))
    }

    /// The URL of `path` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.config.host.admin_listen)
    }

    /// An HTTP client that sends the admin token with every request.
    pub fn admin_client(&self) -> reqwest::Client {
        admin_client(self.config.host.admin_token.expose())
    }

    /// GETs `path` on the admin listener, as JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let r = self.admin_client().get(self.admin_url(path)).send().await.expect("admin request");
        let status = r.status();
        let text = r.text().await.expect("admin body");
        assert!(status.is_success(), "GET {path}: {status}: {text}");
        serde_json::from_str(&text).expect("admin JSON")
    }

    /// The integration's status.
    pub async fn status(&self) -> StatusView {
        let h = self.host.as_ref().expect("host running");
        h.integrations().values().next().unwrap().status().await.expect("status")
    }

    /// The running host.
    ///
    /// # Panics
    /// While the host is stopped.
    pub fn host(&self) -> &Host {
        self.host.as_ref().expect("host running")
    }

    /// Waits until `pred` holds for the status, or `timeout`. Returns the last status.
    pub async fn wait_status(&self, timeout: Duration, pred: impl Fn(&StatusView) -> bool) -> StatusView {
        let end = Instant::now() + timeout;
        loop {
            let s = self.status().await;
            if pred(&s) || Instant::now() > end {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Switchboard users whose shown presence differs from the emulator's truth (mapped users
    /// only: the first `users` of the seed). Empty means in sync.
    pub fn mismatches(&self, users: usize) -> Vec<String> {
        let truth = self.emulator.truth(&self.seed.tenant_id);
        let ms_ids: Vec<String> = self.emulator.with_world(|w| {
            let k = w.tenant_key(&self.seed.tenant_id).unwrap();
            w.tenants[&k].users.iter().take(users).map(|u| u.id.clone()).collect()
        });
        ms_ids
            .iter()
            .enumerate()
            .filter(|(i, id)| {
                let want = &truth[*id];
                match self.switchboard.shown(&format!("sb-{i:05}")) {
                    Some(s) => s.availability != want.0 || s.activity != want.1,
                    None => true,
                }
            })
            .map(|(i, _)| format!("sb-{i:05}"))
            .collect()
    }

    /// Waits until every one of the first `users` switchboard users shows the emulator's truth.
    ///
    /// At each change it checks users in order only up to the first that does not match yet
    /// (so that a wait for 100,000 users costs about one check per user, not a core taken
    /// from the host it measures); past the last, every user is checked again, and the wait
    /// ends only when that full check agrees.
    pub async fn wait_in_sync(&self, users: usize, timeout: Duration) -> Vec<String> {
        let end = Instant::now() + timeout;
        let mut pending: Vec<usize> = (0..users).collect();
        let mut next = 0;
        loop {
            while next < pending.len() && self.shows_truth(pending[next]) {
                next += 1;
            }
            if next == pending.len() {
                let m = self.mismatches(users);
                if m.is_empty() {
                    return m;
                }
                pending = m.iter().filter_map(|sb| sb.strip_prefix("sb-")?.parse().ok()).collect();
                next = 0;
            }
            if Instant::now() > end {
                return self.mismatches(users);
            }
            self.switchboard.wait_change(Duration::from_millis(100)).await;
        }
    }

    /// Whether the `i`-th switchboard user shows its Microsoft user's presence now.
    fn shows_truth(&self, i: usize) -> bool {
        let Some(shown) = self.switchboard.shown(&format!("sb-{i:05}")) else { return false };
        self.emulator
            .truth_at(&self.seed.tenant_id, i)
            .is_some_and(|want| shown.availability == want.0 && shown.activity == want.1)
    }

    /// Waits until nothing is on its way, then returns the status: every notification the
    /// emulator queued was delivered (or given up), every one the host took was processed, the
    /// plugin waits for no answer, and the emulator queued nothing new meanwhile. After it,
    /// "nothing more happened" can be asserted. Panics after `timeout`.
    pub async fn settle(&self, timeout: Duration) -> StatusView {
        let end = Instant::now() + timeout;
        loop {
            let (queued, done) = self.emulator.deliveries();
            // The status is answered after every command queued before it.
            let s = self.status().await;
            let c = |k: &str| s.counters.get(k).copied().unwrap_or(0);
            let processed = c("inbox.processed") == c("inbox.accepted") + c("inbox.replayed");
            if queued == done && processed && s.outbound_in_flight == 0 && self.emulator.deliveries() == (queued, done)
            {
                return s;
            }
            assert!(Instant::now() < end, "never settled: {:?} {s:?}", self.emulator.deliveries());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `f` holds (polled every 50 ms), or `timeout`; returns whether it held.
    pub async fn wait_until(&self, timeout: Duration, f: impl Fn() -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if f() {
                return true;
            }
            if Instant::now() > end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Microsoft user id of seed user `i`.
    pub fn ms_user(&self, i: usize) -> String {
        self.emulator.with_world(|w| {
            let k = w.tenant_key(&self.seed.tenant_id).unwrap();
            w.tenants[&k].users[i].id.clone()
        })
    }
}

/// An HTTP client that sends `token` as the admin bearer token with every request.
pub fn admin_client(token: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("a header value");
    v.set_sensitive(true);
    h.insert(reqwest::header::AUTHORIZATION, v);
    reqwest::Client::builder().default_headers(h).build().expect("an HTTP client")
}

/// Starts a host on `config` with the scenario's clock and switchboards (others, also those
/// created at run time, get their CSV's or an empty one), and serves it on `listener`
/// (public) and `admin` (with the simulator's routes).
pub async fn start_host(
    config: &Config,
    clock: Arc<TestClock>,
    listener: tokio::net::TcpListener,
    admin: tokio::net::TcpListener,
    sims: Arc<switchboard_sim::Switchboards>,
) -> anyhow::Result<Host> {
    let mut backends = Backends::defaults(config, sims.clone())?;
    backends.clock = clock;
    let mut host = Host::start(config, PLUGIN_WASM, backends).await?;
    // On a database, the integrations start once this host took their leases (at once: it
    // is the only host).
    let end = Instant::now() + Duration::from_secs(30);
    while host.integrations().len() < config.integrations.len() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let routes = switchboard_sim::routes(sims, host.registry.clone());
    host.serve(listener, admin, routes)?;
    Ok(host)
}

/// Runs the demo: 1,353 users and 3 integration users, then random presence changes, printing
/// what the switchboard shows. Stops after `duration` (forever if `None`).
pub async fn run(users: usize, integration_users: usize, duration: Option<Duration>) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("teams-presence-demo-{}", std::process::id()));
    let started = Instant::now();
    let sc = Scenario::start(ScenarioOptions::new(users, integration_users, dir.clone())).await?;
    let host = sc.host.as_ref().unwrap();
    println!("teams-presence-sync demo");
    println!("  Graph/Entra emulator : {}", sc.emulator_url);
    println!("  host, public (Graph) : http://{}", host.addr());
    let token_file = dir.join("admin-token");
    presence_host::store::create_private_file(&token_file)?;
    std::fs::write(&token_file, sc.config.host.admin_token.expose())?;
    println!(
        "  host, admin          : http://{} (Authorization: Bearer $(cat {}))",
        host.admin_addr(),
        token_file.display()
    );
    println!("  tenant {} with {users} users and {integration_users} integration users", DEMO_TENANT);
    println!("  switchboard          : http://{}/switchboard/contoso/users", host.admin_addr());
    println!("  status               : http://{}/status/contoso", host.admin_addr());
    println!("  admin page           : http://{}/ui (sign in with the admin token)", host.admin_addr());
    println!();
    let s = sc.wait_status(Duration::from_secs(60), |s| s.state != "starting").await;
    let remaining = sc.wait_in_sync(users, Duration::from_secs(60)).await;
    let synced = users - remaining.len();
    println!(
        "status: {} | users synced: {} | {} ms from start to every user showing Teams presence",
        s.state,
        s.users,
        started.elapsed().as_millis()
    );
    for sub in &s.subscriptions {
        println!(
            "  integration user {:<38} subscription {} covers {} users",
            sub.integration_user,
            sub.subscription_id.as_deref().unwrap_or("-"),
            sub.users_covered
        );
    }
    println!("switchboard shows Teams presence for {synced} of {users} users");
    print_sample(&sc, 8);
    if let Some(code) = &s.code {
        println!("problem: {code}: {}", s.hint.clone().unwrap_or_default());
    }
    demo_call(&sc).await;
    demo_directory(&sc, users).await;
    println!();
    println!("Now changing presence in Teams (the emulator) at random; the switchboard follows:");
    const STATES: [(&str, &str); 5] = [
        ("Available", "Available"),
        ("Busy", "InACall"),
        ("Away", "Away"),
        ("DoNotDisturb", "Presenting"),
        ("Busy", "InAMeeting"),
    ];
    let end = duration.map(|d| Instant::now() + d);
    let mut n = 0usize;
    loop {
        if end.is_some_and(|e| Instant::now() > e) {
            break;
        }
        n += 1;
        let i = rand::random::<u64>() as usize % users;
        let (a, b) = STATES[rand::random::<u64>() as usize % STATES.len()];
        let t0 = Instant::now();
        sc.emulator.set_presence(&sc.seed.tenant_id, &sc.ms_user(i), a, b, false);
        let sb = format!("sb-{i:05}");
        let mut shown = None;
        while t0.elapsed() < Duration::from_secs(5) {
            if let Some(s) = sc.switchboard.shown(&sb).filter(|s| s.availability == a && s.activity == b) {
                shown = Some(s);
                break;
            }
            sc.switchboard.wait_change(Duration::from_millis(50)).await;
        }
        match shown {
            Some(_) => println!(
                "  #{n:<4} {sb} set to {a}/{b} in Teams -> switchboard shows it after {} ms",
                t0.elapsed().as_millis()
            ),
            None => println!("  #{n:<4} {sb} set to {a}/{b} in Teams -> unchanged (same as before, or not delivered)"),
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let s = sc.status().await;
    println!(
        "final status: {} | users synced: {} | notifications accepted: {}",
        s.state,
        s.users,
        s.counters.get("notifications.accepted").copied().unwrap_or(0)
    );
    if let Some(h) = { sc }.host.take() {
        h.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One call on an Available user's mobile line: Teams shows "In a call", then not.
async fn demo_call(sc: &Scenario) {
    let handle = sc.host.as_ref().unwrap().integrations().values().next().unwrap().clone();
    let ms = sc.ms_user(0);
    let teams = |sc: &Scenario| sc.emulator.truth(&sc.seed.tenant_id)[&ms].clone();
    let wait = |want: &'static str| async move {
        let t0 = Instant::now();
        while teams(sc).1 != want && t0.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (teams(sc), t0.elapsed().as_millis())
    };
    println!();
    println!("A call on sb-00000's mobile line (Teams shows {}/{}):", teams(sc).0, teams(sc).1);
    for (state, want, label) in
        [(LineState::Connected, "InACall", "call connected"), (LineState::Ended, "Available", "call ended    ")]
    {
        let ev = LineEvent { user_id: "sb-00000".into(), state, at_ms: 0 };
        if let Err(e) = handle.line_event(ev).await {
            println!("  {label} -> refused: {e}");
            return;
        }
        let ((a, b), ms) = wait(want).await;
        println!("  {label} -> Teams shows {a}/{b} after {ms} ms");
    }
}

/// A user leaves the switchboard and a new one joins (the simulator's API; no restart, no wait
/// for Microsoft's directory round): the plugin sees the directory's change counter.
async fn demo_directory(sc: &Scenario, users: usize) {
    let Some(user) = sc.switchboard.user("sb-00010") else { return };
    println!();
    println!("The switchboard's directory changes while it runs:");
    let t0 = Instant::now();
    if let Err(e) = sc.switchboard.change(vec![], std::slice::from_ref(&user.id)) {
        println!("  refused: {e}");
        return;
    }
    let s = sc.wait_status(Duration::from_secs(10), |s| s.switchboard_users as usize == users - 1).await;
    println!(
        "  {} leaves                 -> the plugin maps {} users after {} ms",
        user.id,
        s.users,
        t0.elapsed().as_millis()
    );
    let joiner = User { id: "sb-new-1".into(), name: "New colleague".into(), ..user };
    let t0 = Instant::now();
    if let Err(e) = sc.switchboard.change(vec![joiner], &[]) {
        println!("  refused: {e}");
        return;
    }
    let mut shown = None;
    while t0.elapsed() < Duration::from_secs(10) {
        if let Some(s) = sc.switchboard.shown("sb-new-1") {
            shown = Some(s);
            break;
        }
        sc.switchboard.wait_change(Duration::from_millis(50)).await;
    }
    match shown {
        Some(s) => println!(
            "  sb-new-1 joins with its address -> switchboard shows {}/{} after {} ms",
            s.availability,
            s.activity,
            t0.elapsed().as_millis()
        ),
        None => println!("  sb-new-1 joins with its address -> not shown within 10 s"),
    }
}

fn print_sample(sc: &Scenario, n: usize) {
    println!("  {:<10} {:<12} {:<16} {:<14}", "user", "name", "availability", "activity");
    for u in sc.switchboard.users().iter().take(n) {
        let s = sc.switchboard.shown(&u.id);
        println!(
            "  {:<10} {:<12} {:<16} {:<14}",
            u.id,
            u.name,
            s.as_ref().map_or("-", |s| s.availability.as_str()),
            s.as_ref().map_or("-", |s| s.activity.as_str())
        );
    }
}

/// A round-robin TCP balancer on loopback in front of `backends` (what stands before several
/// hosts): each connection goes to the next backend that accepts one, a dead one is skipped.
/// Runs until the process ends; answers its address.
pub async fn round_robin(backends: Vec<std::net::SocketAddr>) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let backends = backends.clone();
            let first = next.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                for k in 0..backends.len() {
                    let connect = tokio::net::TcpStream::connect(backends[(first + k) % backends.len()]);
                    if let Ok(Ok(mut server)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}
