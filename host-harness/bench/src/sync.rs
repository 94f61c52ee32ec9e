//! Time from start until every user shows Teams presence.

use std::time::{Duration, Instant};

use presence_demo::{Scenario, ScenarioOptions};

use crate::common::*;

/// Seconds from start until every one of `users` shows its Teams presence.
pub(crate) async fn time_to_sync(users: usize) -> anyhow::Result<Synced> {
    let dir = state_dir("sync");
    let t0 = Instant::now();
    let sc = Scenario::start(ScenarioOptions::new(users, users.div_ceil(650), dir.clone())).await?;
    let left = sc.wait_in_sync(users, Duration::from_secs(600)).await;
    let secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(left.is_empty(), "{} of {users} users never synced", left.len());
    let requests: u64 = sc.emulator.request_counts().values().sum();
    let s = sc.status().await;
    let slowest = s.slowest_calls_ms.values().copied().max().unwrap_or(0);
    let slowest_cpu = s
        .slowest_calls_cpu_ms
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(k, v)| (k.clone(), *v))
        .unwrap_or_default();
    if s.traps > 0 {
        eprintln!(
            "bench: {users} users: {} traps; slowest calls {:?}; last: {}",
            s.traps,
            s.slowest_calls_ms,
            s.last_trap.as_deref().unwrap_or("")
        );
    }
    stop(sc, dir).await;
    Ok(Synced { secs, requests, slowest, slowest_cpu, traps: s.traps, instantiate_ms: s.plugin.instantiate_ms })
}

/// One run of the time-to-sync figure.
pub(crate) struct Synced {
    pub secs: f64,
    /// Requests the emulator answered.
    pub requests: u64,
    /// The longest guest call, wall time, ms.
    pub slowest: u64,
    /// The guest call that took the most CPU time: its kind and ms.
    pub slowest_cpu: (String, f64),
    pub traps: u64,
    pub instantiate_ms: f64,
}
