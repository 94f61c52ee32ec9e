//! Hot swap, between two commands of an integration's actor: hold events, let the old
//! instance's outbound requests finish, back up the key-value state, configure the new
//! release on it and switch; if the new release does not configure, put the state back and
//! keep the old instance, which never stopped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::actor::{Actor, Configured, configure_instance};
use crate::command::Command;
use crate::instance::arm;
use crate::release::Release;
use crate::sandbox::cap;
use crate::status::{SwapOutcome, SwapReport};

/// How long a swap waits for the old instance's outbound requests in flight.
pub const SWAP_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

impl Actor {
    /// Switches to `release`. Returns the report and the events held meanwhile, for the
    /// running instance to process.
    pub(crate) async fn swap(
        &mut self,
        release: Arc<Release>,
        rx: &mut mpsc::Receiver<Command>,
    ) -> (SwapReport, Vec<Command>) {
        let started = Instant::now();
        let label = |version: &str, r: &Release| format!("{version} ({})", &r.sha256[..12]);
        let mut report = SwapReport {
            integration: self.ctx.name.clone(),
            outcome: SwapOutcome::Refused,
            from: label(&self.plugin_version, &self.release),
            to: label("?", &release),
            reason: None,
            pause_ms: 0.0,
            drain_ms: 0.0,
            held_events: 0,
            at_ms: self.ctx.clock.now_ms(),
        };
        // 1. Drain: answers to the old instance's requests go to it; everything else waits.
        let mut held = Vec::new();
        let drain_until = tokio::time::Instant::now() + SWAP_DRAIN_TIMEOUT;
        while self.ctx.in_flight.load(Ordering::SeqCst) > 0 {
            match tokio::time::timeout_at(drain_until, rx.recv()).await {
                Ok(Some(cmd @ Command::HttpDone(..))) => self.call(cmd).await,
                Ok(Some(cmd)) => held.push(cmd),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(integration = %self.ctx.name, in_flight = self.ctx.in_flight.load(Ordering::SeqCst),
                        "swap: outbound requests still in flight after the drain timeout; their answers go to the new release");
                    break;
                }
            }
        }
        report.drain_ms = started.elapsed().as_secs_f64() * 1000.0;
        // 2. Keep the state as the old release left it, for a rollback.
        if let Err(e) = self.ctx.store.kv_backup(&self.ctx.name) {
            report.reason = Some(format!("could not back up the state before the swap: {e:#}"));
            report.pause_ms = started.elapsed().as_secs_f64() * 1000.0;
            return self.finish_swap(report, held);
        }
        // 3. The new release, configured on that state.
        let mut store = self.rt.new_store(self.ctx.clone());
        let t0 = Instant::now();
        let instantiated = release.pre.instantiate_async(&mut store).await;
        let instantiate_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let outcome = match instantiated {
            Ok(bindings) => match configure_instance(&mut store, &bindings, &self.settings, &self.policy).await {
                Configured::Ok(version) => Ok((bindings, version)),
                Configured::Refused(msg) => Err(format!("the new release refused the settings: {msg}")),
                Configured::Trapped(e) => Err(format!("the new release trapped while configuring: {e:#}")),
            },
            Err(e) => Err(format!("the new release could not be instantiated: {e:#}")),
        };
        match outcome {
            Ok((bindings, version)) => {
                // The old release's counters carry over (its instance is still healthy here),
                // less what the new one restored from the state itself (a release that keeps
                // its counters in the state, as this plugin does, would count them twice).
                arm(&mut self.store, false);
                if let Ok(old) = self.bindings.teams_presence_plugin_sync().call_status(&mut self.store).await {
                    arm(&mut store, false);
                    let restored: BTreeMap<String, u64> =
                        match bindings.teams_presence_plugin_sync().call_status(&mut store).await {
                            Ok(new) => new.counters.into_iter().collect(),
                            Err(_) => BTreeMap::new(),
                        };
                    for (k, v) in old.counters {
                        let already = restored.get(&k).copied().unwrap_or(0);
                        *self.carried.entry(k).or_default() += v.saturating_sub(already);
                    }
                }
                report.to = label(&version, &release);
                report.outcome = SwapOutcome::Switched;
                self.store = store;
                self.bindings = bindings;
                self.release = release;
                self.instantiate_ms = instantiate_ms;
                self.plugin_version = version;
                self.config_error = None;
                self.ctx.count("plugin.swaps");
                self.wake_if_asked();
            }
            Err(reason) => {
                // Roll back: the state as it was, and the old instance, which never stopped.
                if let Err(e) = self.ctx.store.kv_restore(&self.ctx.name) {
                    tracing::error!(integration = %self.ctx.name, "swap rollback: restoring the state failed: {e:#}");
                }
                report.outcome = SwapOutcome::RolledBack;
                report.reason = Some(cap(reason, 1024));
                self.ctx.count("plugin.rollbacks");
            }
        }
        report.pause_ms = started.elapsed().as_secs_f64() * 1000.0;
        // What waited: taken aside while draining, plus what queued up meanwhile.
        report.held_events = held.len() + rx.len();
        self.finish_swap(report, held)
    }

    fn finish_swap(&mut self, report: SwapReport, held: Vec<Command>) -> (SwapReport, Vec<Command>) {
        match &report.reason {
            None => tracing::info!(integration = %self.ctx.name, from = %report.from, to = %report.to,
                pause_ms = format!("{:.2}", report.pause_ms), "plugin swapped"),
            Some(r) => tracing::error!(integration = %self.ctx.name, from = %report.from, to = %report.to,
                outcome = ?report.outcome, "plugin swap failed: {r}"),
        }
        self.last_swap = Some(report.clone());
        (report, held)
    }
}
