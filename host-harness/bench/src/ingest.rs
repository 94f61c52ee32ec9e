//! Webhook ingest through the whole host, next to a bare server.

use std::time::{Duration, Instant};

use presence_demo::{Scenario, ScenarioOptions};

use crate::common::*;

/// Webhook ingest through the whole harness, and a bare 202 server with the same load.
pub(crate) async fn ingest(n: usize) -> anyhow::Result<(f64, f64, u64)> {
    ingest_on(n, None).await
}

/// [`ingest`], the state in the PostgreSQL database `db` when given (else SQLite).
pub(crate) async fn ingest_on(n: usize, db: Option<String>) -> anyhow::Result<(f64, f64, u64)> {
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
    let (rate, s) = if handle.is_some() {
        let rate = n as f64 / t0.elapsed().as_secs_f64();
        (rate, sc.wait_status(Duration::from_secs(120), all).await)
    } else {
        let s = sc.wait_status(Duration::from_secs(120), all).await;
        (n as f64 / t0.elapsed().as_secs_f64(), s)
    };
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
