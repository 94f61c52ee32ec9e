//! Graph requests per 1,000 users per hour at steady state.

use std::time::Duration;

use presence_demo::{Scenario, ScenarioOptions};

use crate::common::*;

/// Graph/Entra requests in one simulated hour of steady state after setup, with default
/// settings: the clock moves 5 s per step and the integration ticks at each step (720 steps).
/// Returns the requests by route.
pub(crate) async fn steady_state(users: usize) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    steady_state_with(users, users.div_ceil(650)).await
}

/// [`steady_state`] with `integration_users` integration users (0: polling only).
pub(crate) async fn steady_state_with(
    users: usize,
    integration_users: usize,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let dir = state_dir("steady");
    let sc = Scenario::start(ScenarioOptions::new(users, integration_users, dir.clone())).await?;
    let left = sc.wait_in_sync(users, Duration::from_secs(600)).await;
    anyhow::ensure!(left.is_empty(), "{} of {users} users never synced", left.len());
    // Let the setup's last requests finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let handle = sc.host.as_ref().unwrap().integrations().values().next().unwrap().clone();
    let before = sc.emulator.request_counts();
    let total = || sc.emulator.request_counts().values().sum::<u64>();
    for _ in 0..720 {
        sc.clock.advance(Duration::from_secs(5));
        handle.tick().await;
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
