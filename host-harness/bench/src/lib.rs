//! The benchmark suite (`host-harness bench`): measures, side by side in one run, what the
//! product does against the limits of the machine, and writes BENCHMARKS.md.
//!
//! Figures (each the median of several runs), after a table of the goals each one meets:
//! - time from start to "every user synced" against the emulator, by tenant size;
//! - processing latency (webhook POST → switchboard) at fixed rates, open loop;
//! - webhook ingest through the full harness (HTTP → component → switchboard) next to the
//!   machine's native RSA-OAEP-2048 decrypt rate (the ceiling: one per notification) and a
//!   bare server that only answers 202;
//! - line event → setPresence latency;
//! - plugin load: compile vs the compile cache vs instantiate;
//! - hot-swap pause under a stream of notifications;
//! - cost per notification, component vs the same core compiled natively;
//! - Graph requests per 1,000 users per hour at steady state;
//! - memory: the host process's RSS and each instance's linear memory.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use presence_demo::{Scenario, ScenarioOptions};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Runs per figure (the median is reported).
    pub runs: usize,
    /// Tenant sizes for the sync-time figure.
    pub sync_sizes: Vec<usize>,
    /// Notifications per ingest run.
    pub notifications: usize,
    /// Calls per latency run.
    pub calls: usize,
    /// Presence changes per second during the hot-swap figure.
    pub swap_rate: usize,
    /// Seconds of the hot-swap figure.
    pub swap_seconds: usize,
    /// Tenant sizes for the steady-state request figure.
    pub steady_sizes: Vec<usize>,
    /// Notifications per cost-per-notification run.
    pub cost_notifications: usize,
    /// Rates (notifications a second) of the latency figure.
    pub latency_rates: Vec<usize>,
    /// Seconds per latency run.
    pub latency_seconds: usize,
    /// Tenant sizes of the memory figure (one integration each).
    pub memory_sizes: Vec<usize>,
    /// The many-integrations memory figure: integrations, users each.
    pub memory_fleet: (usize, usize),
    /// Only these sections (all when empty): sync, latency, ingest, line, load, swap, cost,
    /// steady, memory.
    pub only: Vec<String>,
}

/// The sections of the suite, in the order they run.
pub const SECTIONS: [&str; 9] = ["sync", "latency", "ingest", "line", "load", "swap", "cost", "steady", "memory"];

impl BenchOptions {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
    /// The full suite.
    pub fn full() -> Self {
        BenchOptions {
            runs: 3,
            sync_sizes: vec![1_000, 10_000, 100_000],
            notifications: 4_000,
            calls: 300,
            swap_rate: 1000,
            swap_seconds: 6,
            steady_sizes: vec![1_000, 10_000],
            cost_notifications: 2_000,
            latency_rates: vec![500, 1000, 2000],
            latency_seconds: 4,
            memory_sizes: vec![10_000, 100_000],
            memory_fleet: (100, 1000),
            only: vec![],
        }
    }
    /// A tiny smoke run that only proves the suite still works (CI).
    pub fn smoke() -> Self {
        BenchOptions {
            runs: 1,
            sync_sizes: vec![200],
            notifications: 100,
            calls: 10,
            swap_rate: 100,
            swap_seconds: 1,
            steady_sizes: vec![200],
            cost_notifications: 50,
            latency_rates: vec![100],
            latency_seconds: 1,
            memory_sizes: vec![200],
            memory_fleet: (2, 100),
            only: vec![],
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() { f64::NAN } else { v[((v.len() - 1) as f64 * p).round() as usize] }
}

fn state_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tps-bench-{}-{tag}-{}", std::process::id(), rand::random::<u32>()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

async fn stop(mut sc: Scenario, dir: std::path::PathBuf) {
    sc.stop_host().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Seconds from start until every one of `users` shows its Teams presence.
async fn time_to_sync(users: usize) -> anyhow::Result<(f64, u64, u64, u64, f64)> {
    let dir = state_dir("sync");
    let t0 = Instant::now();
    let sc = Scenario::start(ScenarioOptions::new(users, users.div_ceil(650), dir.clone())).await?;
    let left = sc.wait_in_sync(users, Duration::from_secs(600)).await;
    let secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(left.is_empty(), "{} of {users} users never synced", left.len());
    let requests: u64 = sc.emulator.request_counts().values().sum();
    let s = sc.status().await;
    let slowest = s.slowest_calls_ms.values().copied().max().unwrap_or(0);
    if s.traps > 0 {
        eprintln!(
            "bench: {users} users: {} traps; slowest calls {:?}; last: {}",
            s.traps,
            s.slowest_calls_ms,
            s.last_trap.as_deref().unwrap_or("")
        );
    }
    stop(sc, dir).await;
    Ok((secs, requests, slowest, s.traps, s.plugin.instantiate_ms))
}

/// Native RSA-OAEP-2048 (SHA-1) private-key operations per second on one core, with the
/// host's crypto library (aws-lc-rs).
fn rsa_decrypts_per_second(n: usize) -> f64 {
    use aws_lc_rs::rsa::{
        KeySize, OAEP_SHA1_MGF1SHA1, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey,
    };
    let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).expect("RSA key");
    let public = OaepPublicEncryptingKey::new(key.public_key()).expect("public key");
    let private = OaepPrivateDecryptingKey::new(key).expect("private key");
    let mut wrapped = vec![0u8; public.ciphertext_size()];
    let len = public.encrypt(&OAEP_SHA1_MGF1SHA1, &[7u8; 32], &mut wrapped, None).expect("encrypt").len();
    wrapped.truncate(len);
    let mut out = vec![0u8; private.min_output_size()];
    let t0 = Instant::now();
    for _ in 0..n {
        private.decrypt(&OAEP_SHA1_MGF1SHA1, &wrapped, &mut out, None).expect("decrypt");
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

/// Posts `bodies` to `url` with `concurrency` clients; returns requests per second.
async fn load(url: &str, bodies: Vec<String>, concurrency: usize) -> anyhow::Result<f64> {
    let client = reqwest::Client::new();
    let bodies = Arc::new(std::sync::Mutex::new(bodies));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    let total = bodies.lock().unwrap().len();
    for _ in 0..concurrency {
        let (client, bodies, url) = (client.clone(), bodies.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(b) = bodies.lock().unwrap().pop() else { return Ok::<_, anyhow::Error>(()) };
                let r = client.post(&url).header("content-type", "application/json").body(b).send().await?;
                anyhow::ensure!(r.status().is_success(), "status {}", r.status());
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(total as f64 / t0.elapsed().as_secs_f64())
}

/// Webhook ingest through the whole harness, and a bare 202 server with the same load.
async fn ingest(n: usize) -> anyhow::Result<(f64, f64, u64)> {
    let dir = state_dir("ingest");
    let sc = Scenario::start(ScenarioOptions::new(650, 1, dir.clone())).await?;
    sc.wait_status(Duration::from_secs(60), |s| s.state == "ok").await;
    let sub = sc.emulator.subscriptions()[0].id.clone();
    let ids: Vec<String> = (0..650).map(|i| sc.ms_user(i)).collect();
    const STATES: [(&str, &str); 3] = [("Available", "Available"), ("Busy", "InACall"), ("Away", "Away")];
    let bodies: Vec<String> = (0..n)
        .map(|i| {
            let (a, b) = STATES[i % 3];
            let item = sc.emulator.notification_for(&sub, &ids[i % ids.len()], a, b).expect("notification");
            sc.emulator.batch_body(&sub, vec![item]).to_string()
        })
        .rev()
        .collect();
    // Acknowledged at once from the durable inbox; the rate counts until the plugin has
    // processed every one (decrypted, checked, published).
    let t0 = Instant::now();
    load(&sc.notification_url(), bodies.clone(), 8).await?;
    let s = sc
        .wait_status(Duration::from_secs(120), |s| {
            s.counters.get("notifications.accepted").copied().unwrap_or(0) >= n as u64
        })
        .await;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let processed = s.counters.get("notifications.accepted").copied().unwrap_or(0);
    stop(sc, dir).await;
    // The same load against a server that only answers 202.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/", axum::routing::post(|| async { axum::http::StatusCode::ACCEPTED }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let bare = load(&format!("http://{addr}/"), bodies, 8).await?;
    server.abort();
    Ok((rate, bare, processed))
}

/// Processing latency at a fixed rate: `rate` notifications a second for `seconds`, each one
/// POST sent as the emulator delivers it (open loop: sent on schedule whether or not earlier
/// ones are done), 650 users. Returns the ms from sending each notification until the
/// switchboard shows it, for those sent after the first half second (warm-up).
async fn latency_at_rate(rate: usize, seconds: usize) -> anyhow::Result<Vec<f64>> {
    let dir = state_dir("latency");
    let users = 650;
    let sc = Scenario::start(ScenarioOptions::new(users, 1, dir.clone())).await?;
    let left = sc.wait_in_sync(users, Duration::from_secs(60)).await;
    anyhow::ensure!(left.is_empty(), "{} users never synced", left.len());
    let sub = sc.emulator.subscriptions()[0].id.clone();
    let truth = sc.emulator.truth(&sc.seed.tenant_id);
    const STATES: [(&str, &str); 3] = [("Available", "Available"), ("Away", "Away"), ("DoNotDisturb", "Presenting")];
    let n = rate * seconds;
    // Each user cycles through the three states, starting with one it is not in, so every
    // notification is a change the switchboard must show.
    let start_at: Vec<usize> = (0..users)
        .map(|u| {
            let cur = &truth[&sc.ms_user(u)];
            (0..3).find(|&k| STATES[k].0 != cur.0).unwrap_or(0)
        })
        .collect();
    let mut sends = Vec::with_capacity(n);
    for i in 0..n {
        let u = i % users;
        let (a, b) = STATES[(start_at[u] + i / users) % 3];
        let item = sc.emulator.notification_for(&sub, &sc.ms_user(u), a, b).expect("notification");
        sends.push((format!("sb-{u:05}"), a, b, sc.emulator.batch_body(&sub, vec![item]).to_string()));
    }
    let accepted_before = sc.status().await.counters.get("notifications.accepted").copied().unwrap_or(0);
    sc.switchboard.start_recording();
    let client = reqwest::Client::new();
    let url = sc.notification_url();
    let mut sent = Vec::with_capacity(n);
    let mut posts = Vec::with_capacity(n);
    let t0 = tokio::time::Instant::now();
    for (i, (user, a, b, body)) in sends.into_iter().enumerate() {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / rate as f64)).await;
        sent.push((user, a, b, Instant::now()));
        let req = client.post(&url).header("content-type", "application/json").body(body);
        posts.push(tokio::spawn(async move { req.send().await.map(|r| r.status()) }));
    }
    for p in posts {
        let status = p.await??;
        anyhow::ensure!(status.is_success(), "the webhook answered {status}");
    }
    let want = accepted_before + n as u64;
    let s = sc
        .wait_status(Duration::from_secs(120), |s| {
            s.counters.get("notifications.accepted").copied().unwrap_or(0) >= want
        })
        .await;
    let accepted = s.counters.get("notifications.accepted").copied().unwrap_or(0);
    anyhow::ensure!(accepted >= want, "only {} of {n} notifications accepted", accepted - accepted_before);
    let log = sc.switchboard.take_recording();
    let mut by_user: std::collections::HashMap<&str, Vec<&switchboard_sim::Published>> = Default::default();
    for p in &log {
        by_user.entry(p.0.as_str()).or_default().push(p);
    }
    let warm_up = rate / 2;
    let mut out = Vec::with_capacity(n);
    for (user, a, b, at) in sent.iter().skip(warm_up) {
        let shown = by_user
            .get(user.as_str())
            .and_then(|ps| ps.iter().find(|p| p.1 == *a && p.2 == *b && p.3 >= *at))
            .ok_or_else(|| anyhow::anyhow!("the switchboard never showed {a}/{b} for {user}"))?;
        out.push(shown.3.duration_since(*at).as_secs_f64() * 1000.0);
    }
    stop(sc, dir).await;
    Ok(out)
}

/// Milliseconds from a line event reaching the plugin to Graph receiving setPresence.
async fn line_to_set_presence(calls: usize) -> anyhow::Result<Vec<f64>> {
    let dir = state_dir("line");
    let users = 1300;
    let sc = Scenario::start(ScenarioOptions::new(users, 2, dir.clone())).await?;
    sc.wait_status(Duration::from_secs(60), |s| s.state == "ok").await;
    let handle = sc.host.as_ref().unwrap().integrations.values().next().unwrap().clone();
    // Users whose Teams state lets a call show (Available or Busy) and who have a line.
    let truth = sc.emulator.truth(&sc.seed.tenant_id);
    let eligible: Vec<usize> = (0..users)
        .filter(|&i| i % 5 != 4 && matches!(truth[&sc.ms_user(i)].0.as_str(), "Available" | "Busy"))
        .take(calls)
        .collect();
    let mut out = Vec::new();
    for &i in &eligible {
        let ms = sc.ms_user(i);
        let before = sc.emulator.last_write(&ms);
        let t0 = Instant::now();
        let ev = presence_host::switchboard::LineEvent {
            user_id: format!("sb-{i:05}"),
            state: presence_host::switchboard::LineState::Connected,
            at_ms: 0,
        };
        handle.line_event(ev).await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let at = loop {
            match sc.emulator.last_write(&ms) {
                Some(t) if Some(t) != before => break t,
                _ if Instant::now() > deadline => anyhow::bail!("no setPresence for {ms}"),
                _ => tokio::task::yield_now().await,
            }
        };
        out.push(at.duration_since(t0).as_secs_f64() * 1000.0);
        let ev = presence_host::switchboard::LineEvent {
            user_id: format!("sb-{i:05}"),
            state: presence_host::switchboard::LineState::Ended,
            at_ms: 0,
        };
        let _ = handle.line_event(ev).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop(sc, dir).await;
    Ok(out)
}

/// Plugin load times: a compile (empty cache) and a load from the compile cache, in ms, and
/// the size of the cached `.cwasm`.
fn plugin_load(wasm: &[u8]) -> anyhow::Result<(f64, f64, u64)> {
    let dir = state_dir("cache");
    let rt = presence_host::engine::Runtime::new(Default::default(), Some(dir.clone()))?;
    let compiled = rt.load(wasm)?;
    anyhow::ensure!(!compiled.from_cache, "the cache was not empty");
    let cached = rt.load(wasm)?;
    anyhow::ensure!(cached.from_cache, "the second load did not come from the cache");
    let size = std::fs::read_dir(&dir)?.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
    let _ = std::fs::remove_dir_all(&dir);
    Ok((compiled.load_ms, cached.load_ms, size))
}

/// Hot swaps v1 ⇄ v2 every 500 ms under a stream of `rate` presence changes a second for
/// `seconds`; returns every swap's pause (ms), the changes made and the notifications the
/// plugin accepted (equal when nothing was lost or duplicated).
async fn swap_under_load(rate: usize, seconds: usize) -> anyhow::Result<(Vec<f64>, u64, u64)> {
    let dir = state_dir("swap");
    let users = 650;
    let sc = Scenario::start(ScenarioOptions::new(users, 1, dir.clone())).await?;
    sc.wait_status(Duration::from_secs(60), |s| s.state == "ok").await;
    let host = sc.host.as_ref().unwrap();
    let v2 = std::fs::read(test_components::PLUGIN_NEXT)?;
    let tenant = sc.seed.tenant_id.clone();
    let ids: Vec<String> = (0..users).map(|i| sc.ms_user(i)).collect();
    let mut current = sc.emulator.truth(&tenant);
    let emulator = sc.emulator.clone();
    const STATES: [(&str, &str); 3] = [("Available", "Available"), ("Away", "Away"), ("DoNotDisturb", "Presenting")];
    let per_tick = rate / 100;
    let stream = tokio::spawn(async move {
        let mut iv = tokio::time::interval(Duration::from_millis(10));
        let mut n = 0u64;
        for _ in 0..seconds * 100 {
            iv.tick().await;
            for _ in 0..per_tick {
                let id = &ids[n as usize % ids.len()];
                let cur = current.get(id).cloned().unwrap_or_default();
                let at = STATES.iter().position(|(a, b)| (a.to_string(), b.to_string()) == cur);
                let next = STATES[at.map_or(0, |i| (i + 1) % 3)];
                emulator.set_presence(&tenant, id, next.0, next.1, false);
                current.insert(id.clone(), (next.0.into(), next.1.into()));
                n += 1;
            }
        }
        n
    });
    let mut pauses = Vec::new();
    let started = Instant::now();
    let mut next_is_v2 = true;
    while started.elapsed() < Duration::from_secs(seconds as u64) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let wasm: &[u8] = if next_is_v2 { &v2 } else { presence_demo::PLUGIN_WASM };
        for r in host.swap(wasm, None).await? {
            anyhow::ensure!(r.outcome == presence_host::SwapOutcome::Switched, "swap failed: {r:?}");
            pauses.push(r.pause_ms);
        }
        next_is_v2 = !next_is_v2;
    }
    let total = stream.await?;
    let s = sc
        .wait_status(Duration::from_secs(60), |s| {
            s.counters.get("notifications.accepted").copied().unwrap_or(0) >= total
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted = sc.status().await.counters.get("notifications.accepted").copied().unwrap_or(0);
    anyhow::ensure!(s.traps == 0, "traps during the swaps: {:?}", s.last_trap);
    stop(sc, dir).await;
    Ok((pauses, total, accepted))
}

/// Graph/Entra requests in one simulated hour of steady state after setup, with default
/// settings: the clock moves 5 s per step and the integration ticks at each step (720 steps).
/// Returns the requests by route.
async fn steady_state(users: usize) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let dir = state_dir("steady");
    let sc = Scenario::start(ScenarioOptions::new(users, users.div_ceil(650), dir.clone())).await?;
    let left = sc.wait_in_sync(users, Duration::from_secs(600)).await;
    anyhow::ensure!(left.is_empty(), "{} of {users} users never synced", left.len());
    // Let the setup's last requests finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let handle = sc.host.as_ref().unwrap().integrations.values().next().unwrap().clone();
    let before = sc.emulator.request_counts();
    let total = || sc.emulator.request_counts().values().sum::<u64>();
    for _ in 0..720 {
        sc.clock.advance(Duration::from_secs(5));
        handle.tick();
        // Let what the step started finish (the simulated 5 s are long enough for any
        // exchange): until no request has come for 15 ms.
        let mut seen = total();
        loop {
            tokio::time::sleep(Duration::from_millis(15)).await;
            let now = total();
            if now == seen {
                break;
            }
            seen = now;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = sc.emulator.request_counts();
    let s = sc.status().await;
    anyhow::ensure!(s.state == "ok", "not healthy after the hour: {:?} {:?}", s.code, s.detail);
    stop(sc, dir).await;
    Ok(after
        .into_iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(&k).copied().unwrap_or(0);
            (d > 0).then_some((k, d))
        })
        .collect())
}

/// The sync core natively, on the state a running integration stored: the other side of the
/// per-notification comparison. RSA unwrap with the same host key and library.
struct NativeEnv {
    stored: std::collections::HashMap<String, Vec<u8>>,
    key: presence_host::keys::NotificationKey,
    switchboard: Arc<switchboard_sim::Switchboard>,
    clock: Arc<presence_demo::TestClock>,
}

impl presence_core::Env for NativeEnv {
    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
    fn random_bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| rand::random::<u8>()).collect()
    }
    fn unwrap_key(&mut self, cert: &str, wrapped: &[u8]) -> Result<Vec<u8>, presence_core::UnwrapError> {
        if cert != self.key.cert_id {
            return Err(presence_core::UnwrapError::UnknownCertificate(cert.into()));
        }
        self.key.unwrap(wrapped).ok_or(presence_core::UnwrapError::DecryptFailed)
    }
    fn switchboard_users_page(&mut self, start: usize, count: usize) -> Vec<presence_core::SwitchboardUser> {
        self.switchboard
            .users_page(start, count)
            .into_iter()
            .map(|u| presence_core::SwitchboardUser {
                id: u.id,
                display_name: u.name,
                emails: u.emails,
                line_number: u.line_number,
                active: u.active,
            })
            .collect()
    }
    fn load(&mut self, key: &str) -> Option<Vec<u8>> {
        self.stored.get(key).cloned()
    }
    fn keys(&mut self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.stored.keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        keys.sort();
        keys
    }
}

/// The plugin settings of the scenario's integration, as the core takes them.
fn core_settings(s: presence_host::bindings::sync::Settings) -> presence_core::Settings {
    presence_core::Settings {
        name: s.name,
        tenant_id: s.tenant_id,
        client_id: s.client_id,
        client_secret: s.client_secret,
        integration_users: s
            .integration_users
            .into_iter()
            .map(|u| presence_core::IntegrationUser { username: u.username, password: u.password })
            .collect(),
        login_base_url: s.login_base_url,
        graph_base_url: s.graph_base_url,
        notification_url: s.notification_url,
        lifecycle_notification_url: s.lifecycle_notification_url,
        encryption_certificate: s.encryption_certificate,
        encryption_certificate_id: s.encryption_certificate_id,
        push_line_status: s.push_line_status,
        min_call_length_ms: s.min_call_length_ms,
        reconcile_interval_ms: s.reconcile_interval_ms,
        directory_delta_interval_ms: s.directory_delta_interval_ms,
        match_order: vec![],
        overrides: vec![],
    }
}

/// Cost per notification, component vs the same core compiled natively (µs each), and one
/// RSA unwrap alone. Both process the same `n` bodies in order, the component first. Both
/// count CPU time of the thread doing the work (wall time moved with what else the two cores
/// ran: the component figure varied from 297 to 442 µs between runs, the native one far less);
/// each figure is the median of the means of batches of [`COST_BATCH`].
async fn per_notification(n: usize) -> anyhow::Result<(f64, f64, f64)> {
    let dir = state_dir("cost");
    let sc = Scenario::start(ScenarioOptions::new(650, 1, dir.clone())).await?;
    sc.wait_status(Duration::from_secs(60), |s| s.state == "ok").await;
    let sub = sc.emulator.subscriptions()[0].id.clone();
    const STATES: [(&str, &str); 3] = [("Available", "Available"), ("Busy", "InACall"), ("Away", "Away")];
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let (a, b) = STATES[i % 3];
            let item = sc.emulator.notification_for(&sub, &sc.ms_user(i % 650), a, b).expect("notification");
            sc.emulator.batch_body(&sub, vec![item]).to_string().into_bytes()
        })
        .collect();
    let handle = sc.host.as_ref().unwrap().integrations.values().next().unwrap().clone();
    let accepted = |s: &presence_host::StatusView| s.counters.get("notifications.accepted").copied().unwrap_or(0);
    let start = accepted(&sc.status().await);

    // The same core, natively, configured on what the integration stored.
    let name = sc.config.integrations[0].name.clone();
    use presence_host::StateStore as _;
    let db = presence_host::SqliteStore::open(&sc.config.host.state_dir)?;
    let mut stored = std::collections::HashMap::new();
    for k in db.keys(&name, "")? {
        if let Some(v) = db.get(&name, &k)? {
            stored.insert(k, v);
        }
    }
    let key = presence_host::keys::NotificationKey::load_or_create(&db, &name)?;
    let settings = core_settings(presence_host::host::settings_for(&sc.config, &sc.config.integrations[0], &key));
    let mut env = NativeEnv { stored, key, switchboard: sc.switchboard.clone(), clock: sc.clock.clone() };
    let mut core = presence_core::Core::new();
    core.configure(&mut env, settings).map_err(|e| anyhow::anyhow!("native configure: {e:?}"))?;
    while !core.ready() {
        core.take_effects();
        core.tick(&mut env);
    }
    core.take_effects();
    let native_sb = switchboard_sim::Switchboard::new(sc.switchboard.users());
    let count = |core: &presence_core::Core, env: &NativeEnv| {
        core.status(env).counters.iter().find(|(k, _)| k == "notifications.accepted").map_or(0, |(_, v)| *v)
    };
    let native_before = count(&core, &env);
    // The notification guest calls so far and their CPU time (the guest call alone: the
    // inbox's write and delete are the host's, outside it).
    let totals = |s: &presence_host::StatusView| {
        let calls = s.calls.get("inbox").copied().unwrap_or(0);
        (calls, s.total_calls_cpu_us.get("inbox").copied().unwrap_or(0) as f64)
    };
    let (mut components, mut natives) = (Vec::new(), Vec::new());
    for batch in bodies.chunks(COST_BATCH) {
        // Through the inbox, one batch after the other: the mean `inbox` guest call is the
        // figure.
        let (calls0, us0) = totals(&sc.status().await);
        for b in batch {
            handle.accept("notifications", b.clone())?;
            let (calls, _) = totals(&sc.status().await);
            anyhow::ensure!(calls > calls0, "the batch was not offered");
        }
        let (calls1, us1) = totals(&sc.status().await);
        anyhow::ensure!(calls1 - calls0 == batch.len() as u64, "{} inbox calls for {}", calls1 - calls0, batch.len());
        components.push((us1 - us0) / batch.len() as f64);
    }
    for batch in bodies.chunks(COST_BATCH) {
        // CPU time like the component's: this loop runs on this thread, without yielding.
        let t0 = cpu_time::ThreadTime::now();
        for b in batch {
            core.on_notification(&mut env, b);
            for e in core.take_effects() {
                match e {
                    presence_core::Effect::Publish(u) => native_sb.publish(
                        &u.user_id,
                        switchboard_sim::Shown {
                            availability: u.presence.availability,
                            activity: u.presence.activity,
                            origin: "teams".into(),
                            microsoft_user_id: u.microsoft_user_id,
                            observed_at_ms: u.observed_at_ms,
                            updates: 0,
                        },
                    ),
                    presence_core::Effect::Store { key, value: Some(v) } => {
                        env.stored.insert(key, v);
                    }
                    _ => {}
                }
            }
        }
        natives.push(t0.elapsed().as_secs_f64() * 1e6 / batch.len() as f64);
    }
    let s = sc.status().await;
    anyhow::ensure!(accepted(&s) == start + n as u64, "the component took {} of {n}", accepted(&s) - start);
    let taken = count(&core, &env) - native_before;
    anyhow::ensure!(taken == n as u64, "the native core accepted {taken} of {n}");
    stop(sc, dir).await;
    let rsa = 1e6 / rsa_decrypts_per_second(n.min(2000));
    Ok((median(components), median(natives), rsa))
}

/// Notifications per batch of the cost-per-notification figure.
const COST_BATCH: usize = 100;

/// What a host process holds once every user of every integration is synced.
struct MemoryFigures {
    /// Resident set of the host process, now and at its peak, in bytes.
    rss: u64,
    peak_rss: u64,
    /// Linear memory of each instance, in bytes.
    linear: Vec<u64>,
    /// Seconds from starting the process until every user was synced.
    sync_secs: f64,
}

/// `VmRSS` and `VmHWM` of a process, in bytes.
fn rss_of(pid: u32) -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = text.lines().find(|l| l.starts_with(name)).ok_or_else(|| anyhow::anyhow!("no {name}"))?;
        let kib: u64 = line.split_whitespace().nth(1).unwrap_or("").parse()?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Memory of the host alone: this binary's `run` as its own process (the switchboard
/// simulator of each integration in it, read from a CSV), against the emulator in this
/// process, with `integrations` tenants of `users` users each. Measured once every user is
/// synced, after a 2 s pause.
async fn memory(integrations: usize, users: usize) -> anyhow::Result<MemoryFigures> {
    use graph_emulator::{Emulator, TenantSeed};
    let dir = state_dir("memory");
    std::fs::create_dir_all(&dir)?;
    let emulator = Emulator::new(Arc::new(graph_emulator::SystemClock));
    let mut config = String::new();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let seeds: Vec<TenantSeed> = (0..integrations)
        .map(|k| {
            TenantSeed::new(
                &format!("{k:08x}-0000-4000-8000-00000000be7c"),
                &format!("tenant{k}.example"),
                &format!("{k:08x}-1111-4000-8000-00000000be7c"),
                presence_demo::DEMO_SECRET,
                users,
                users.div_ceil(650),
            )
        })
        .collect();
    for seed in &seeds {
        emulator.add_tenant(seed);
    }
    let url = emulator.start().await?;
    writeln!(
        config,
        "[host]\nlisten = \"{addr}\"\npublic_base_url = \"http://{addr}\"\nstate_dir = \"{}\"\n\
         graph_base_url = \"{url}\"\nlogin_base_url = \"{url}\"\nplugin_cache_dir = \"{}\"\n",
        dir.join("state").display(),
        dir.join("cache").display()
    )?;
    for (k, seed) in seeds.iter().enumerate() {
        let csv = dir.join(format!("switchboard-{k}.csv"));
        switchboard_sim::Switchboard::write_csv(&csv, &presence_demo::switchboard_users(seed, users))?;
        writeln!(
            config,
            "[[integration]]\nname = \"tenant{k}\"\ntenant_id = \"{}\"\nclient_id = \"{}\"\n\
             client_secret_env = \"TPS_BENCH_SECRET\"\nswitchboard_csv = \"{}\"\npush_line_status = true",
            seed.tenant_id,
            seed.client_id,
            csv.display()
        )?;
        for n in 0..seed.integration_users {
            writeln!(
                config,
                "[[integration.users]]\nusername = \"{}\"\npassword_env = \"TPS_BENCH_PASSWORD\"",
                seed.integration_user(n)
            )?;
        }
    }
    // A host restarts with its releases in the compile cache: warm it, so that the figures
    // are the running host's, not Cranelift's.
    presence_host::engine::Runtime::new(Default::default(), Some(dir.join("cache")))?
        .load(presence_demo::PLUGIN_WASM)?;
    let config_path = dir.join("host.toml");
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(dir.join("host.log"))?;
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .env("TPS_BENCH_SECRET", presence_demo::DEMO_SECRET)
        .env("TPS_BENCH_PASSWORD", &seeds[0].integration_password)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("the host process ended at once"))?;
    let client = reqwest::Client::new();
    let synced = |v: &serde_json::Value| -> bool {
        let all = v["integrations"].as_array().cloned().unwrap_or_default();
        all.len() == integrations
            && all.iter().all(|i| {
                let subs = i["subscriptions"].as_array().cloned().unwrap_or_default();
                i["state"] == "ok"
                    && i["users"].as_u64() == Some(users as u64)
                    && subs.iter().map(|s| s["users_covered"].as_u64().unwrap_or(0)).sum::<u64>() == users as u64
                    && subs.iter().all(|s| s["subscription_id"].is_string() && s["last_reconcile_ms"].is_u64())
            })
    };
    let deadline = Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(exit) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("host.log")).unwrap_or_default();
            anyhow::bail!("the host process ended ({exit}): {}", log.lines().last().unwrap_or(""));
        }
        let got = client.get(format!("http://{addr}/status")).send().await;
        if let Ok(r) = got
            && let Ok(text) = r.text().await
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && synced(&v)
        {
            break v;
        }
        anyhow::ensure!(Instant::now() < deadline, "the host never synced every user");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sync_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, peak_rss) = rss_of(pid)?;
    let linear = status["integrations"]
        .as_array()
        .map(|a| a.iter().map(|i| i["linear_memory_bytes"].as_u64().unwrap_or(0)).collect())
        .unwrap_or_default();
    child.kill().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(MemoryFigures { rss, peak_rss, linear, sync_secs })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0) / 1024 / 1024)
        })
        .unwrap_or(0);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cpu}, {cores} cores, {mem} GiB RAM, {} {}", std::env::consts::OS, std::env::consts::ARCH)
}

/// Runs the suite and returns BENCHMARKS.md.
pub async fn run(opts: &BenchOptions, command: &str) -> anyhow::Result<String> {
    let mut md = String::new();
    let mut instantiates = Vec::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(md, "Reproduce: `{command}` (release build; writes this file).\n")?;
    writeln!(md, "- machine: {}", machine())?;
    writeln!(md, "- date: {}", graph_emulator::wire::graph_time(presence_host::clock::system_now_ms()))?;
    writeln!(
        md,
        "- each figure is the median of {} run(s); everything runs on loopback against the embedded emulator\n",
        opts.runs
    )?;
    // Goals of the issue, filled in as the sections run, shown first: (goal, measured, met).
    let mut goals: Vec<(String, String, bool)> = Vec::new();
    let goals_at = md.len();

    if opts.wants("sync") {
        eprintln!("bench: time to sync");
        writeln!(md, "## Start to every user synced\n")?;
        writeln!(
            md,
            "From starting the host (plugin compile included) until every mapped user shows the emulator's presence in the switchboard. Integration users: one per 650 users.\n"
        )?;
        writeln!(
            md,
            "| users | integration users | seconds (median) | Graph/Entra requests | slowest guest call, ms (max) | traps |"
        )?;
        writeln!(md, "|---:|---:|---:|---:|---:|---:|")?;
        let mut grows = Vec::new();
        for &n in &opts.sync_sizes {
            let mut secs = Vec::new();
            let (mut reqs, mut slowest, mut traps) = (0, 0, 0);
            for _ in 0..opts.runs {
                let (s, r, slow, t, inst) = time_to_sync(n).await?;
                instantiates.push(inst);
                secs.push(s);
                reqs = r;
                slowest = slowest.max(slow);
                traps += t;
            }
            let secs = median(secs);
            writeln!(md, "| {n} | {} | {secs:.2} | {reqs} | {slowest} | {traps} |", n.div_ceil(650))?;
            if n == 10_000 {
                goals.push(("10,000 users synced in under 2 s".into(), format!("{secs:.2} s"), secs < 2.0));
            }
            grows.push((n, secs));
        }
        let steps: Vec<String> = grows
            .windows(2)
            .map(|w| format!("{} → {} users: × {:.1} the time", w[0].0, w[1].0, w[1].1 / w[0].1))
            .collect();
        if !steps.is_empty() {
            writeln!(
                md,
                "\nGrowth: {}. A fixed part (starting the host, the app token, the first directory page) dominates small tenants; beyond it the time grows about linearly with users (directory pages of 999, one subscription and one presence read per 650, matching in steps).",
                steps.join("; ")
            )?;
        }
    }
    if opts.wants("latency") {
        eprintln!("bench: latency at fixed rates");
        writeln!(md, "\n## Processing latency at fixed rates\n")?;
        writeln!(
            md,
            "650 users, one subscription. For {} s per rate, notifications are POSTed to the webhook on a fixed schedule (open loop: each is sent on time whether or not earlier ones are done, so queueing shows), each POST one encrypted notification that the emulator built as it delivers them (the bench sends them, so that the schedule is exact and the send time known); each user cycles through three states, so every notification is a change. Latency: from sending the POST until the switchboard simulator receives the publish (HTTP, durable inbox, actor, component, switchboard). The first half second of each run is warm-up and not counted. Goal: p99 under 5 ms at 1,000 a second.\n",
            opts.latency_seconds
        )?;
        writeln!(md, "| notifications a second | counted | p50 ms | p99 ms | max ms |")?;
        writeln!(md, "|---:|---:|---:|---:|---:|")?;
        for &rate in &opts.latency_rates {
            let (mut p50s, mut p99s, mut maxes, mut counted) = (Vec::new(), Vec::new(), Vec::new(), 0);
            for _ in 0..opts.runs {
                let mut v = latency_at_rate(rate, opts.latency_seconds).await?;
                counted = v.len();
                p50s.push(percentile(&mut v, 0.5));
                p99s.push(percentile(&mut v, 0.99));
                maxes.push(percentile(&mut v, 1.0));
            }
            let p99 = median(p99s.clone());
            writeln!(md, "| {rate} | {counted} | {:.2} | {p99:.2} | {:.2} |", median(p50s), median(maxes))?;
            if rate == 1000 {
                goals.push((
                    "processing latency p99 under 5 ms at 1,000 notifications/s".into(),
                    format!("{p99:.2} ms"),
                    p99 < 5.0,
                ));
            }
        }
    }
    if opts.wants("ingest") {
        eprintln!("bench: ingest");
        writeln!(md, "\n## Webhook ingest vs the RSA ceiling\n")?;
        writeln!(
            md,
            "{} encrypted rich notifications, one per POST, 8 concurrent clients, through HTTP → durable inbox (SQLite, acknowledged with 202) → integration actor → component (validation token, clientState, host RSA-OAEP unwrap, HMAC, AES, sequence) → switchboard. The ceiling is one native RSA-OAEP-2048 private-key operation per notification on one core (aws-lc-rs, the host's library; one integration's notifications are processed in order by one actor), measured right before and right after each run and averaged.\n",
            opts.notifications
        )?;
        let (mut rates, mut bares, mut rsas) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..opts.runs {
            // The ceiling right before and right after each run (this machine's speed moves).
            let before = rsa_decrypts_per_second(opts.notifications.min(2000));
            let (r, b, processed) = ingest(opts.notifications).await?;
            anyhow::ensure!(
                processed as usize == opts.notifications,
                "only {processed} of {} notifications processed",
                opts.notifications
            );
            rates.push(r);
            bares.push(b);
            rsas.push((before + rsa_decrypts_per_second(opts.notifications.min(2000))) / 2.0);
        }
        let (rate, bare, rsa) = (median(rates), median(bares), median(rsas));
        goals.push((
            "webhook ingest at least 0.7 of the native RSA-OAEP decrypt rate".into(),
            format!("{:.2} ({rate:.0} of {rsa:.0} a second)", rate / rsa),
            rate / rsa >= 0.7,
        ));
        writeln!(md, "| measure | per second (median) |")?;
        writeln!(md, "|---|---:|")?;
        writeln!(md, "| native RSA-OAEP-2048 decrypts, one core (ceiling) | {rsa:.0} |")?;
        writeln!(md, "| notifications ingested through the harness | {rate:.0} ({:.2} of the ceiling) |", rate / rsa)?;
        writeln!(md, "| bare axum (hyper) server answering 202, same load generator | {bare:.0} |")?;
        writeln!(
            md,
            "\nWhat bounds it: one integration's notifications are processed in order by its one actor. Each costs the actor the guest call (its CPU time is in \"Cost per notification\" below: about 1.2 × the native core, which is itself about one RSA operation) plus the host's part (the inbox delete, the hand-over, waiting for a core the HTTP side also uses). That caps the rate near 1 / (1.2 × RSA + host part), about 0.7 of the one-core RSA rate when the other core is free for the HTTP side: the goal sits at the edge of this design, and whatever else the machine runs pushes a run below it. Going clearly past it needs the RSA unwrap off the actor, in parallel on the HTTP workers, which would move Graph-payload parsing into the host; it was not done."
        )?;
    }
    if opts.wants("line") {
        eprintln!("bench: line event → setPresence");
        writeln!(md, "\n## Line event → setPresence\n")?;
        writeln!(
            md,
            "{} calls, one after another: from handing the line event to the integration's actor until the emulator has received the `setPresence` (a user whose Teams state is Available or Busy).\n",
            opts.calls
        )?;
        let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
        for _ in 0..opts.runs {
            let mut v = line_to_set_presence(opts.calls).await?;
            p50s.push(percentile(&mut v, 0.5));
            p99s.push(percentile(&mut v, 0.99));
        }
        writeln!(md, "| p50 ms | p99 ms |")?;
        writeln!(md, "|---:|---:|")?;
        writeln!(md, "| {:.3} | {:.3} |", median(p50s), median(p99s))?;
    }
    if opts.wants("load") {
        eprintln!("bench: plugin load");
        writeln!(md, "\n## Plugin load: compile vs compile cache\n")?;
        writeln!(
            md,
            "Checking, compiling (Cranelift) and preparing the plugin component ({} bytes) with an empty cache, then the same from the compile cache (`Component::serialize` / `deserialize_file`, keyed by the component's SHA-256 and wasmtime's compatibility hash).\n",
            presence_demo::PLUGIN_WASM.len()
        )?;
        let (mut compiled, mut cached, mut size) = (Vec::new(), Vec::new(), 0);
        for _ in 0..opts.runs {
            let (c, k, s) = plugin_load(presence_demo::PLUGIN_WASM)?;
            compiled.push(c);
            cached.push(k);
            size = s;
        }
        writeln!(md, "| load | ms (median) |")?;
        writeln!(md, "|---|---:|")?;
        writeln!(md, "| compile (empty cache) | {:.1} |", median(compiled))?;
        writeln!(md, "| from the compile cache ({} KiB `.cwasm`) | {:.2} |", size / 1024, median(cached))?;
        if !instantiates.is_empty() {
            writeln!(
                md,
                "| instantiate a loaded release (`InstancePre::instantiate_async`, from the sync runs above) | {:.2} |",
                median(instantiates)
            )?;
        }
    }
    if opts.wants("swap") {
        eprintln!("bench: hot swap");
        writeln!(md, "\n## Hot swap under load\n")?;
        writeln!(
            md,
            "650 users, one subscription, {} presence changes a second at the emulator for {} s (each one notification, encrypted, through the webhook and the durable inbox); every 500 ms the integration swaps v1 ⇄ v2 (the plugin and its `next` build; both in the compile cache after the first swap). The pause is the time the integration's events wait: drain, state backup, instantiate and configure the new release on the handed-over state. Goal: under 50 ms.\n",
            opts.swap_rate, opts.swap_seconds
        )?;
        let (mut p50s, mut maxes, mut swaps) = (Vec::new(), Vec::new(), 0);
        let (mut total, mut accepted) = (0, 0);
        for _ in 0..opts.runs {
            let (mut pauses, t, a) = swap_under_load(opts.swap_rate, opts.swap_seconds).await?;
            swaps += pauses.len();
            p50s.push(percentile(&mut pauses, 0.5));
            maxes.push(percentile(&mut pauses, 1.0));
            total += t;
            accepted += a;
        }
        writeln!(md, "| swaps | pause p50 ms | pause max ms | notifications sent | accepted (once each) |")?;
        writeln!(md, "|---:|---:|---:|---:|---:|")?;
        let worst = median(maxes);
        writeln!(md, "| {swaps} | {:.2} | {worst:.2} | {total} | {accepted} |", median(p50s))?;
        goals.push((
            "hot-swap pause under 50 ms, nothing lost".into(),
            format!("max {worst:.2} ms; {accepted} of {total} accepted"),
            worst < 50.0 && accepted == total,
        ));
    }
    if opts.wants("cost") {
        eprintln!("bench: cost per notification");
        writeln!(md, "\n## Cost per notification: component vs native\n")?;
        writeln!(
            md,
            "{} encrypted notifications (one per body) handed to the plugin one after the other; the component figure is the CPU time of the guest call (guest code plus the host imports it calls: RSA unwrap, publish). The native figure runs the same core, compiled natively, configured on the state the integration stored, over the same bodies, with the same RSA key and library and its effects performed alike. The native figure is CPU time too. Each figure is the median of the means of batches of {COST_BATCH}. Goal: ratio at most 1.3.\n",
            opts.cost_notifications
        )?;
        let (mut comps, mut nats, mut rsas2) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..opts.runs {
            let (c, n, r) = per_notification(opts.cost_notifications).await?;
            comps.push(c);
            nats.push(n);
            rsas2.push(r);
        }
        let (c, n, r) = (median(comps), median(nats), median(rsas2));
        goals.push((
            "cost per notification, component / native, at most 1.3".into(),
            format!("{:.2}", c / n),
            c / n <= 1.3,
        ));
        writeln!(md, "| measure | µs per notification (median) |")?;
        writeln!(md, "|---|---:|")?;
        writeln!(md, "| component (guest call) | {c:.1} |")?;
        writeln!(md, "| native core | {n:.1} |")?;
        writeln!(md, "| ratio component / native | {:.2} |", c / n)?;
        writeln!(md, "| one RSA-OAEP-2048 unwrap alone, same library (part of both) | {r:.1} |")?;
    }
    if opts.wants("steady") {
        eprintln!("bench: steady state");
        writeln!(md, "\n## Graph requests at steady state\n")?;
        writeln!(
            md,
            "Requests the emulator counted in one simulated hour after setup, default settings (delta round every minute, presence re-read every 5 minutes, subscriptions renewed before their 60 minutes run out, tokens refreshed; a re-read that finds a change no notification brought would also list the subscriptions, which this quiet hour never needs): the clock moves 5 s per step, the integration ticks at each step, and the next step waits until the requests it started are answered. Polling presence every 10 s instead would cost 3600 / 10 × 1000 / 650 ≈ 554 requests per 1,000 users per hour. Goal at 10,000 users: at most 30.\n"
        )?;
        writeln!(md, "| users | requests in the hour | per 1,000 users per hour | by route |")?;
        writeln!(md, "|---:|---:|---:|---|")?;
        for &n in &opts.steady_sizes {
            let mut totals = Vec::new();
            let mut routes = std::collections::BTreeMap::new();
            for _ in 0..opts.runs {
                routes = steady_state(n).await?;
                totals.push(routes.values().sum::<u64>() as f64);
            }
            let total = median(totals);
            let by_route = routes.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ");
            let per = total / (n as f64 / 1000.0);
            writeln!(md, "| {n} | {total:.0} | {per:.1} | {by_route} |")?;
            if n == 10_000 {
                goals.push((
                    "at most 30 Graph requests per 1,000 users per hour at 10,000 users".into(),
                    format!("{per:.1}"),
                    per <= 30.0,
                ));
            }
        }
    }
    if opts.wants("memory") {
        eprintln!("bench: memory");
        writeln!(md, "\n## Memory\n")?;
        writeln!(
            md,
            "The host as its own process (`host-harness run` with a generated config; each integration's switchboard simulator, read from a CSV, lives in it too) against the emulator in the bench process. Measured from `/proc/<pid>/status` once every user of every integration is synced (the status shows each subscription covering its users and its presence read), after a 2 s pause. Linear memory is what each plugin instance's memories hold (the sandbox's memory limit counts the same). Integration users: one per 650 users. The plugin comes from the compile cache, as at any restart after the first.\n"
        )?;
        writeln!(
            md,
            "| integrations × users | seconds to every user synced | host RSS MiB | host peak RSS MiB | linear memory per instance MiB (max) | linear memory, all instances MiB |"
        )?;
        writeln!(md, "|---|---:|---:|---:|---:|---:|")?;
        let mib = |b: f64| b / (1024.0 * 1024.0);
        let mut cases: Vec<(usize, usize)> = opts.memory_sizes.iter().map(|&n| (1, n)).collect();
        cases.push(opts.memory_fleet);
        for (integrations, users) in cases {
            let (mut secs, mut rss, mut peak, mut per, mut all) = (vec![], vec![], vec![], vec![], vec![]);
            for _ in 0..opts.runs {
                let m = memory(integrations, users).await?;
                secs.push(m.sync_secs);
                rss.push(m.rss as f64);
                peak.push(m.peak_rss as f64);
                per.push(m.linear.iter().copied().max().unwrap_or(0) as f64);
                all.push(m.linear.iter().sum::<u64>() as f64);
            }
            writeln!(
                md,
                "| {integrations} × {users} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} |",
                median(secs),
                mib(median(rss)),
                mib(median(peak)),
                mib(median(per)),
                mib(median(all))
            )?;
        }
    }
    if !goals.is_empty() {
        let mut table = String::from("## Goals\n\n| goal | measured (median) | met |\n|---|---|---|\n");
        for (goal, measured, met) in &goals {
            writeln!(table, "| {goal} | {measured} | {} |", if *met { "yes" } else { "**no**" })?;
        }
        table.push('\n');
        md.insert_str(goals_at, &table);
    }
    Ok(md)
}
