//! Webhook ingest through the whole host, next to a bare server.

use std::time::{Duration, Instant};

use presence_demo::{Scenario, ScenarioOptions};

use crate::common::*;

/// One ingest run.
pub(crate) struct Ingest {
    /// Notifications processed a second.
    pub rate: f64,
    /// Requests a second the bare 202 server answered, same load.
    pub bare: f64,
    /// Notifications the plugin accepted.
    pub processed: u64,
    /// CPU time of the whole bench process per notification while they were sent and
    /// processed (µs): the load generator, HTTP, the inbox, the actor and its guest calls,
    /// the unwraps, and whatever else ran meanwhile (the emulator's timers).
    pub cpu_us: f64,
    /// Of it, the RSA unwraps' (µs per notification), on the pool or in the call.
    pub unwrap_us: f64,
}

/// Webhook ingest through the whole harness, and a bare 202 server with the same load.
pub(crate) async fn ingest(n: usize) -> anyhow::Result<Ingest> {
    ingest_on(n, None).await
}

/// [`ingest`], the state in the PostgreSQL database `db` when given (else SQLite).
pub(crate) async fn ingest_on(n: usize, db: Option<String>) -> anyhow::Result<Ingest> {
    let dir = state_dir("ingest");
    let mut opts = ScenarioOptions::new(650, 1, dir.clone());
    opts.database = db;
    let sc = Scenario::start(opts).await?;
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
    // processed every one (decrypted, checked, published): until the inbox is empty, which
    // the host tells without a guest call, looked at every 2 ms (the status then confirms).
    let handle = sc.host.as_ref().and_then(|h| h.integrations().values().next().cloned());
    let unwrap_cpu = |s: &presence_host::StatusView| {
        ["unwrap.cpu-us", "unwrap.in-call-cpu-us"].iter().map(|k| s.counters.get(*k).copied().unwrap_or(0)).sum::<u64>()
    };
    let unwrap0 = unwrap_cpu(&sc.status().await);
    let cpu0 = cpu_time::ProcessTime::now();
    let t0 = Instant::now();
    load(&sc.notification_url(), bodies.clone(), 8).await?;
    if let Some(h) = &handle {
        let end = Instant::now() + Duration::from_secs(120);
        while h.inbox_size().0 > 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let all =
        |s: &presence_host::StatusView| s.counters.get("notifications.accepted").copied().unwrap_or(0) >= n as u64;
    let (rate, cpu, s) = if handle.is_some() {
        let (rate, cpu) = (n as f64 / t0.elapsed().as_secs_f64(), cpu0.elapsed());
        (rate, cpu, sc.wait_status(Duration::from_secs(120), all).await)
    } else {
        let s = sc.wait_status(Duration::from_secs(120), all).await;
        (n as f64 / t0.elapsed().as_secs_f64(), cpu0.elapsed(), s)
    };
    let unwrap_us = unwrap_cpu(&s).saturating_sub(unwrap0) as f64 / n as f64;
    let processed = s.counters.get("notifications.accepted").copied().unwrap_or(0);
    stop(sc, dir).await;
    // The same load against a server that only answers 202.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/", axum::routing::post(|| async { axum::http::StatusCode::ACCEPTED }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let bare = load(&format!("http://{addr}/"), bodies, 8).await?;
    server.abort();
    Ok(Ingest { rate, bare, processed, cpu_us: cpu.as_secs_f64() * 1e6 / n as f64, unwrap_us })
}
