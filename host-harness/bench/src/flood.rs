//! A forged flood against the public listener, and the cost of a durable inbox commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use presence_demo::{Scenario, ScenarioOptions};

use crate::common::*;

/// What the admin and Graph see, quiet and under a flood.
pub(crate) struct Flood {
    /// Medians of (handshake, status, genuine change) in ms, without the flood.
    pub quiet: (f64, f64, f64),
    /// The same, the worst of the samples, under the flood.
    pub flooded: (f64, f64, f64),
    /// Forged requests per second the clients got answered.
    pub forged_per_s: f64,
    /// Their answers by status code.
    pub codes: std::collections::BTreeMap<u16, u64>,
    /// The inbox's largest row count seen during the flood.
    pub inbox_rows_max: u64,
    /// This process's RSS (host, emulator and clients together) before and after, in MiB.
    pub rss_mib: (f64, f64),
}

async fn sample(sc: &Scenario, user: usize, round: usize) -> anyhow::Result<(f64, f64, f64)> {
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    let r = client.post(format!("{}?validationToken=ping{round}", sc.notification_url())).send().await?;
    anyhow::ensure!(r.status() == 200 && r.text().await? == format!("ping{round}"), "handshake failed");
    let handshake = t0.elapsed().as_secs_f64() * 1e3;
    let t0 = Instant::now();
    let s = sc.admin_json("/status/contoso").await;
    anyhow::ensure!(s["name"] == "contoso", "status failed");
    let status = t0.elapsed().as_secs_f64() * 1e3;
    let (a, b) = if round.is_multiple_of(2) { ("DoNotDisturb", "Presenting") } else { ("Away", "Away") };
    let sb = format!("sb-{user:05}");
    let t0 = Instant::now();
    sc.emulator.set_presence(&sc.seed.tenant_id, &sc.ms_user(user), a, b, false);
    let shown =
        sc.wait_until(Duration::from_secs(30), || sc.switchboard.shown(&sb).is_some_and(|p| p.activity == b)).await;
    anyhow::ensure!(shown, "the genuine change never arrived");
    Ok((handshake, status, t0.elapsed().as_secs_f64() * 1e3))
}

fn self_rss_mib() -> f64 {
    crate::memory::rss_of(std::process::id()).map(|(r, _)| r as f64 / (1 << 20) as f64).unwrap_or(f64::NAN)
}

/// 650 users; `clients` clients forge POSTs (4 KiB bodies, to guessed webhook paths) at full
/// speed while the handshake, the status and a genuine change are measured `samples` times.
pub(crate) async fn flood(clients: usize, samples: usize) -> anyhow::Result<Flood> {
    let dir = state_dir("flood");
    let sc = Scenario::start(ScenarioOptions::new(650, 1, dir.clone())).await?;
    anyhow::ensure!(sc.wait_in_sync(650, Duration::from_secs(60)).await.is_empty(), "never synced");
    let mut quiet = Vec::new();
    for round in 0..samples {
        quiet.push(sample(&sc, round, round).await?);
    }
    let rss_before = self_rss_mib();
    let public = format!("http://{}", sc.host().addr());
    let stop_flag = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let body =
        format!(r#"{{"value": [{{"subscriptionId": "x", "clientState": "y", "pad": "{}"}}]}}"#, "z".repeat(4096));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (stop_flag, sent, public, body) = (stop_flag.clone(), sent.clone(), public.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut codes = std::collections::BTreeMap::<u16, u64>::new();
            let mut n = 0u64;
            while !stop_flag.load(Ordering::Relaxed) {
                let path = if n.is_multiple_of(2) {
                    "/webhook/contoso/notifications".to_string()
                } else {
                    format!("/webhook/contoso/g{c}x{n}/notifications")
                };
                if let Ok(r) = client.post(format!("{public}{path}")).body(body.clone()).send().await {
                    *codes.entry(r.status().as_u16()).or_default() += 1;
                }
                n += 1;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            codes
        }));
    }
    while sent.load(Ordering::Relaxed) < 1000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t0 = Instant::now();
    let at_start = sent.load(Ordering::Relaxed);
    let mut flooded = Vec::new();
    let mut inbox_rows_max = 0;
    for round in 0..samples {
        flooded.push(sample(&sc, 100 + round, samples + round).await?);
        inbox_rows_max = inbox_rows_max.max(sc.status().await.inbox_rows);
    }
    let forged_per_s = (sent.load(Ordering::Relaxed) - at_start) as f64 / t0.elapsed().as_secs_f64();
    let rss_after = self_rss_mib();
    stop_flag.store(true, Ordering::Relaxed);
    let mut codes = std::collections::BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await? {
            *codes.entry(k).or_default() += v;
        }
    }
    stop(sc, dir).await;
    let med = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| median(v.iter().map(f).collect());
    let max = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| v.iter().map(f).fold(0.0, f64::max);
    Ok(Flood {
        quiet: (med(&quiet, |x| x.0), med(&quiet, |x| x.1), med(&quiet, |x| x.2)),
        flooded: (max(&flooded, |x| x.0), max(&flooded, |x| x.1), max(&flooded, |x| x.2)),
        forged_per_s,
        codes,
        inbox_rows_max,
        rss_mib: (rss_before, rss_after),
    })
}

/// Microseconds per inbox-sized commit (a 2 KiB row) with `synchronous` FULL and NORMAL, on
/// the disk of the temporary directory, one writer: the cost of the fsync before the 202.
pub(crate) fn commit_cost(n: usize) -> anyhow::Result<(f64, f64)> {
    let dir = state_dir("commit");
    std::fs::create_dir_all(&dir)?;
    let mut out = Vec::new();
    for mode in ["FULL", "NORMAL"] {
        let path = dir.join(format!("{mode}.db"));
        let c = rusqlite::Connection::open(&path)?;
        c.pragma_update(None, "journal_mode", "WAL")?;
        c.pragma_update(None, "synchronous", mode)?;
        c.execute_batch("CREATE TABLE inbox (id INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL)")?;
        let body = vec![7u8; 2048];
        let t0 = Instant::now();
        for _ in 0..n {
            c.execute("INSERT INTO inbox (body) VALUES (?1)", [&body])?;
        }
        out.push(t0.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((out[0], out[1]))
}
