//! Line event to setPresence.

use std::time::{Duration, Instant};

use presence_demo::{Scenario, ScenarioOptions};

use crate::common::*;

/// Milliseconds from a line event reaching the plugin to Graph receiving setPresence.
pub(crate) async fn line_to_set_presence(calls: usize) -> anyhow::Result<Vec<f64>> {
    let dir = state_dir("line");
    let users = 1300;
    let sc = Scenario::start(ScenarioOptions::new(users, 2, dir.clone())).await?;
    sc.wait_status(Duration::from_secs(60), |s| s.state == "ok").await;
    let handle = sc.host.as_ref().unwrap().integrations().values().next().unwrap().clone();
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
