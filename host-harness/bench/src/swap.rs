//! Plugin load (compile vs cache) and the hot-swap pause under load.

use std::time::{Duration, Instant};

use presence_demo::{Scenario, ScenarioOptions};

use crate::common::*;

/// Plugin load times: a compile (empty cache) and a load from the compile cache, in ms, and
/// the size of the cached `.cwasm`.
pub(crate) fn plugin_load(wasm: &[u8]) -> anyhow::Result<(f64, f64, u64)> {
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
pub(crate) async fn swap_under_load(rate: usize, seconds: usize) -> anyhow::Result<(Vec<f64>, u64, u64)> {
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
