//! Processing latency at fixed rates, open loop.

use std::time::{Duration, Instant};

use presence_demo::{Scenario, ScenarioOptions};

use crate::common::*;

/// Processing latency at a fixed rate: `rate` notifications a second for `seconds`, each one
/// POST sent as the emulator delivers it (open loop: sent on schedule whether or not earlier
/// ones are done), 650 users. Returns the ms from sending each notification until the
/// switchboard shows it, for those sent after the first half second (warm-up); and how many
/// of them were overtaken (see [`Latencies`]).
pub(crate) async fn latency_at_rate(rate: usize, seconds: usize) -> anyhow::Result<Latencies> {
    latency_at_rate_on(rate, seconds, None).await
}

/// One latency run.
pub(crate) struct Latencies {
    /// Ms per notification counted.
    pub ms: Vec<f64>,
    /// Notifications that reached the host after a newer one of the same user (their POST
    /// waited, e.g. for a new connection whose SYN the kernel dropped and resent a second
    /// later): the plugin drops them by their sequence number, as it must, so the switchboard
    /// never shows them. Each counts with the time until its POST was answered.
    pub overtaken: usize,
}

/// [`latency_at_rate`], the state in the PostgreSQL database `db` when given (else SQLite).
pub(crate) async fn latency_at_rate_on(rate: usize, seconds: usize, db: Option<String>) -> anyhow::Result<Latencies> {
    let dir = state_dir("latency");
    let users = 650;
    let mut opts = ScenarioOptions::new(users, 1, dir.clone());
    opts.database = db;
    let sc = Scenario::start(opts).await?;
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
    let before = sc.status().await;
    let accepted_before = before.counters.get("notifications.accepted").copied().unwrap_or(0);
    let stale_before = before.counters.get("rejected.stale").copied().unwrap_or(0);
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
        posts.push(tokio::spawn(async move { req.send().await.map(|r| (r.status(), Instant::now())) }));
    }
    let mut answered = Vec::with_capacity(n);
    for p in posts {
        let (status, at) = p.await??;
        anyhow::ensure!(status.is_success(), "the webhook answered {status}");
        answered.push(at);
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
    let mut overtaken = 0;
    for (i, (user, a, b, at)) in sent.iter().enumerate() {
        let shown = by_user.get(user.as_str()).and_then(|ps| ps.iter().find(|p| p.1 == *a && p.2 == *b && p.3 >= *at));
        let ms = match shown {
            Some(p) => p.3.duration_since(*at).as_secs_f64() * 1000.0,
            None => {
                // Never shown: only right if a newer notification of the user was shown
                // and the plugin dropped this one as stale (counted below).
                let newer_shown = sent[i + 1..].iter().any(|(u, a2, b2, at2)| {
                    u == user
                        && by_user
                            .get(user.as_str())
                            .is_some_and(|ps| ps.iter().any(|p| p.1 == *a2 && p.2 == *b2 && p.3 >= *at2))
                });
                anyhow::ensure!(newer_shown, "the switchboard never showed {a}/{b} for {user}");
                overtaken += 1;
                answered[i].duration_since(*at).as_secs_f64() * 1000.0
            }
        };
        if i >= warm_up {
            out.push(ms);
        }
    }
    let stale = s.counters.get("rejected.stale").copied().unwrap_or(0) - stale_before;
    anyhow::ensure!(
        stale as usize >= overtaken,
        "{overtaken} notifications were never shown but only {stale} were dropped as stale"
    );
    stop(sc, dir).await;
    Ok(Latencies { ms: out, overtaken })
}
