//! Polling-only mode next to subscriptions: Graph requests per 1,000 users per hour, and
//! staleness (a Teams change until the switchboard shows it).

use std::time::{Duration, Instant};

use presence_demo::{Scenario, ScenarioOptions};

use crate::common::*;

/// Staleness: `changes` Teams presence changes of random users, spread evenly over
/// `seconds` (open loop), with `integration_users` integration users (0: polling only).
/// Returns the ms from each change until the switchboard showed it, and the polling
/// interval the status states (0 when nobody is polled).
pub(crate) async fn staleness(
    users: usize,
    integration_users: usize,
    changes: usize,
    seconds: u64,
) -> anyhow::Result<(Vec<f64>, u64)> {
    let dir = state_dir("staleness");
    let sc = Scenario::start(ScenarioOptions::new(users, integration_users, dir.clone())).await?;
    let left = sc.wait_in_sync(users, Duration::from_secs(600)).await;
    anyhow::ensure!(left.is_empty(), "{} of {users} users never synced", left.len());
    let s = sc.wait_status(Duration::from_secs(60), |s| s.state == "ok").await;
    let interval = s.policy.as_ref().map_or(0, |p| p.poll_interval_ms);
    let ids: Vec<String> = sc.emulator.with_world(|w| {
        let k = w.tenant_key(&sc.seed.tenant_id).unwrap();
        w.tenants[&k].users.iter().take(users).map(|u| u.id.clone()).collect()
    });
    const STATES: [(&str, &str); 3] = [("Available", "Available"), ("Away", "Away"), ("Busy", "InAMeeting")];
    sc.switchboard.start_recording();
    let t0 = tokio::time::Instant::now();
    let mut made = Vec::with_capacity(changes);
    let mut used = std::collections::HashSet::new();
    for i in 0..changes {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 * seconds as f64 / changes as f64)).await;
        // A user not changed yet in this run, so that each change is seen on its own.
        let u = loop {
            let u = rand::random::<u64>() as usize % users;
            if used.insert(u) {
                break u;
            }
        };
        let now = sc.emulator.truth(&sc.seed.tenant_id)[&ids[u]].clone();
        let (a, b) = STATES.iter().find(|s| s.0 != now.0).copied().unwrap();
        // Timed before the change: a switchboard that shows it at once is never missed.
        let at = Instant::now();
        sc.emulator.set_presence(&sc.seed.tenant_id, &ids[u], a, b, false);
        made.push((format!("sb-{u:05}"), a, b, at));
    }
    // Every change shows within two intervals (or seconds, with subscriptions).
    let deadline = Instant::now() + Duration::from_millis(2 * interval.max(1_000) + 5_000);
    loop {
        let shown = made
            .iter()
            .all(|(u, a, b, _)| sc.switchboard.shown(u).is_some_and(|s| s.availability == *a && s.activity == *b));
        if shown || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = sc.switchboard.take_recording();
    let mut out = Vec::with_capacity(made.len());
    for (user, a, b, at) in &made {
        let p = log
            .iter()
            .find(|p| p.0 == *user && p.1 == *a && p.2 == *b && p.3 >= *at)
            .ok_or_else(|| anyhow::anyhow!("the switchboard never showed {a}/{b} for {user}"))?;
        out.push(p.3.duration_since(*at).as_secs_f64() * 1000.0);
    }
    let throttled = sc.emulator.throttling().0;
    anyhow::ensure!(throttled == 0, "{throttled} requests were throttled (429)");
    stop(sc, dir).await;
    Ok((out, interval))
}
