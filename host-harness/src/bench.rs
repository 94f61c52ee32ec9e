//! The benchmark suite (`host-harness bench`): measures, side by side in one run, what the
//! product does against the limits of the machine, and writes BENCHMARKS.md.
//!
//! Figures (each the median of several runs):
//! - time from start to "every user synced" against the emulator, by tenant size;
//! - webhook ingest through the full harness (HTTP → component → switchboard) next to the
//!   machine's native RSA-OAEP-2048 decrypt rate (the ceiling: one per notification) and a
//!   bare HTTP server that only answers 202;
//! - line event → setPresence latency.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::demo::{Scenario, ScenarioOptions};

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
}

impl BenchOptions {
    /// The full suite.
    pub fn full() -> Self {
        BenchOptions { runs: 3, sync_sizes: vec![1_000, 10_000, 100_000], notifications: 4_000, calls: 300 }
    }
    /// A tiny smoke run that only proves the suite still works (CI).
    pub fn smoke() -> Self {
        BenchOptions { runs: 1, sync_sizes: vec![200], notifications: 100, calls: 10 }
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
async fn time_to_sync(users: usize) -> anyhow::Result<(f64, u64, u64, u64)> {
    let dir = state_dir("sync");
    let t0 = Instant::now();
    let sc = Scenario::start(ScenarioOptions::new(users, users.div_ceil(650), dir.clone())).await?;
    let left = sc.wait_in_sync(users, Duration::from_secs(600)).await;
    let secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(left.is_empty(), "{} of {users} users never synced", left.len());
    let requests: u64 = sc.emulator.request_counts().values().sum();
    let s = sc.status().await;
    let slowest = s.slowest_calls_ms.values().copied().max().unwrap_or(0);
    stop(sc, dir).await;
    Ok((secs, requests, slowest, s.traps))
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
        let ev = crate::runtime::LineEvent {
            user_id: format!("sb-{i:05}"),
            state: crate::runtime::LineState::Connected,
            at_ms: 0,
        };
        handle.line_event(ev).await.ok_or_else(|| anyhow::anyhow!("actor gone"))?.map_err(anyhow::Error::msg)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let at = loop {
            match sc.emulator.last_write(&ms) {
                Some(t) if Some(t) != before => break t,
                _ if Instant::now() > deadline => anyhow::bail!("no setPresence for {ms}"),
                _ => tokio::task::yield_now().await,
            }
        };
        out.push(at.duration_since(t0).as_secs_f64() * 1000.0);
        let ev = crate::runtime::LineEvent {
            user_id: format!("sb-{i:05}"),
            state: crate::runtime::LineState::Ended,
            at_ms: 0,
        };
        handle.line_event(ev).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop(sc, dir).await;
    Ok(out)
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
    writeln!(md, "# Benchmarks\n")?;
    writeln!(md, "Reproduce: `{command}` (release build; writes this file).\n")?;
    writeln!(md, "- machine: {}", machine())?;
    writeln!(md, "- date: {}", presence_core::core::rfc3339(crate::runtime::HostClock::default().now_ms()))?;
    writeln!(
        md,
        "- each figure is the median of {} run(s); everything runs on loopback against the embedded emulator\n",
        opts.runs
    )?;

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
    for &n in &opts.sync_sizes {
        let mut secs = Vec::new();
        let (mut reqs, mut slowest, mut traps) = (0, 0, 0);
        for _ in 0..opts.runs {
            let (s, r, slow, t) = time_to_sync(n).await?;
            secs.push(s);
            reqs = r;
            slowest = slowest.max(slow);
            traps += t;
        }
        writeln!(md, "| {n} | {} | {:.2} | {reqs} | {slowest} | {traps} |", n.div_ceil(650), median(secs))?;
    }

    eprintln!("bench: ingest");
    writeln!(md, "\n## Webhook ingest vs the RSA ceiling\n")?;
    writeln!(
        md,
        "{} encrypted rich notifications, one per POST, 8 concurrent clients, through HTTP → durable inbox (SQLite, acknowledged with 202) → integration actor → component (validation token, clientState, host RSA-OAEP unwrap, HMAC, AES, sequence) → switchboard. The ceiling is one native RSA-OAEP-2048 private-key operation per notification on one core (aws-lc-rs, the host's library), measured in the same run.\n",
        opts.notifications
    )?;
    let (mut rates, mut bares, mut rsas) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        let (r, b, processed) = ingest(opts.notifications).await?;
        anyhow::ensure!(
            processed as usize == opts.notifications,
            "only {processed} of {} notifications processed",
            opts.notifications
        );
        rates.push(r);
        bares.push(b);
        rsas.push(rsa_decrypts_per_second(opts.notifications.min(2000)));
    }
    let (rate, bare, rsa) = (median(rates), median(bares), median(rsas));
    writeln!(md, "| measure | per second (median) |")?;
    writeln!(md, "|---|---:|")?;
    writeln!(md, "| native RSA-OAEP-2048 decrypts, one core (ceiling) | {rsa:.0} |")?;
    writeln!(md, "| notifications ingested through the harness | {rate:.0} ({:.2} of the ceiling) |", rate / rsa)?;
    writeln!(md, "| bare HTTP server answering 202, same load generator | {bare:.0} |")?;

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
    writeln!(
        md,
        "\nFigures of the other benchmark classes (per-notification cost in the component vs native, latency at fixed rates, memory, steady-state Graph requests, compile/load/instantiate, hot-swap) are not measured yet."
    )?;
    Ok(md)
}
