//! Alerts: when an integration leaves `ok` the host tells a configured webhook (`[host]
//! alert_url`), once per incident, and once more when the integration is `ok` again; an
//! admin learns that sync stopped without watching the admin page.
//!
//! An incident opens when an integration's state turns `error`, `missing-credentials` or
//! `degraded` (a change of code while it lasts is the same incident), or when a periodic
//! presence re-read found changes that no notification brought (the plugin's
//! `reconcile.corrected` grew: a subscription did not deliver while its users changed; code
//! [`MISSED`]). It closes when the state is `ok` again and a re-read that ended after the
//! last such finding found nothing more, or when the integration is deleted. `starting`
//! opens and closes nothing. Each alert is one `POST` of a JSON [`Alert`] (with `Authorization: Bearer` when
//! `alert_token_env` names a token), retried with a doubling backoff while the receiver
//! fails or answers 408, 429 or 5xx; alerts go out one at a time, in order. `/metrics`
//! counts them (`tps_alerts_total` by kind and outcome) and shows the incidents open
//! (`tps_incidents_open`).
//!
//! Several hosts: each host watches the integrations it runs; an integration that moves
//! while in incident is announced again by its new host (the incident's `since_ms` then
//! says when that host saw it begin).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::config::Secret;
use crate::status::StatusView;

/// How often the host looks at the statuses.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Attempts per alert before it is given up (counted as failed).
pub const ATTEMPTS: u32 = 8;
/// The first retry's wait; it doubles, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Alerts waiting to be sent at most; beyond, new ones are dropped (counted).
pub const QUEUE: usize = 1024;
/// Time for one attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The code of an incident of notifications that did not come.
pub const MISSED: &str = "notifications-missed";

/// Where alerts go.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// The webhook (`http://` or `https://`).
    pub url: String,
    /// Sent as `Authorization: Bearer <token>`, if any.
    pub token: Option<Secret>,
}

/// One alert, as the webhook receives it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Alert {
    /// `incident` (the integration left `ok`) or `recovered` (it is `ok` again, or deleted).
    pub kind: String,
    /// The integration.
    pub integration: String,
    /// Its state now (`error`, `missing-credentials`, `degraded`; `ok` or `deleted` when
    /// recovered).
    pub state: String,
    /// The incident's code (AADSTS, Graph's, or ours), as the status shows it.
    pub code: Option<String>,
    /// What to do, as the status shows it.
    pub hint: Option<String>,
    /// When the incident began (ms since the epoch).
    pub since_ms: u64,
    /// When this alert was raised (ms since the epoch).
    pub at_ms: u64,
    /// The host that raised it (`[host] host_id` of a fleet, or `host`).
    pub host: String,
}

/// What [`Incidents`] looks at of a status.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// The integration.
    pub name: String,
    /// Its state.
    pub state: String,
    /// Its code.
    pub code: Option<String>,
    /// Its hint.
    pub hint: Option<String>,
    /// Changes the periodic re-reads found that no notification brought, so far.
    pub corrected: u64,
    /// When the last re-read ended.
    pub last_reconcile_ms: Option<u64>,
}

impl From<&StatusView> for Seen {
    fn from(s: &StatusView) -> Seen {
        Seen {
            name: s.name.clone(),
            state: s.state.clone(),
            code: s.code.clone(),
            hint: s.hint.clone(),
            corrected: s.counters.get("reconcile.corrected").copied().unwrap_or(0),
            last_reconcile_ms: s.last_reconcile_ms,
        }
    }
}

impl Seen {
    /// The alert of `kind` about what was seen, for the incident begun at `since_ms`.
    fn alert(&self, kind: &str, since_ms: u64, code: Option<String>, hint: Option<String>, at: (u64, &str)) -> Alert {
        Alert {
            kind: kind.into(),
            integration: self.name.clone(),
            state: self.state.clone(),
            code,
            hint,
            since_ms,
            at_ms: at.0,
            host: at.1.into(),
        }
    }
}

struct Open {
    since_ms: u64,
    code: Option<String>,
}

/// What was seen of an integration's re-reads.
#[derive(Default)]
struct Reads {
    corrected: Option<u64>,
    /// When the re-reads were last seen to have found missed changes, until one that ended
    /// later found none.
    missed_at: Option<u64>,
}

/// The incidents open, from the statuses observed (no I/O).
#[derive(Default)]
pub struct Incidents {
    open: BTreeMap<String, Open>,
    reads: BTreeMap<String, Reads>,
}

fn bad(state: &str) -> bool {
    matches!(state, "error" | "missing-credentials" | "degraded")
}

impl Incidents {
    /// Looks at `s` (seen at `now_ms`): the alert it raises, if any.
    pub fn observe(&mut self, s: &Seen, now_ms: u64, host: &str) -> Option<Alert> {
        let alert = |kind: &str, since_ms: u64, code: Option<String>, hint: Option<String>| {
            s.alert(kind, since_ms, code, hint, (now_ms, host))
        };
        let r = self.reads.entry(s.name.clone()).or_default();
        // The first look is the baseline (a restart or a takeover starts the plugin's
        // counters again).
        if r.corrected.is_some_and(|c| s.corrected > c) {
            r.missed_at = Some(now_ms);
        } else if r.missed_at.is_some_and(|at| s.last_reconcile_ms.is_some_and(|end| end > at)) {
            r.missed_at = None;
        }
        r.corrected = Some(s.corrected);
        let missed = r.missed_at.is_some();
        match (self.open.contains_key(&s.name), bad(&s.state), s.state == "ok" && !missed) {
            (false, true, _) => {
                self.open.insert(s.name.clone(), Open { since_ms: now_ms, code: s.code.clone() });
                Some(alert("incident", now_ms, s.code.clone(), s.hint.clone()))
            }
            (false, false, false) if missed => {
                self.open.insert(s.name.clone(), Open { since_ms: now_ms, code: Some(MISSED.into()) });
                Some(alert(
                    "incident",
                    now_ms,
                    Some(MISSED.into()),
                    Some(
                        "A presence re-read found changes that no change notification brought: a subscription \
                         did not deliver (Microsoft lost notifications, or deleted the subscription). They are \
                         shown now, and the subscription is checked and created again if it is gone; this ends \
                         when a later re-read finds nothing missed."
                            .into(),
                    ),
                ))
            }
            (true, _, true) => {
                let o = self.open.remove(&s.name).expect("open");
                Some(alert("recovered", o.since_ms, o.code, None))
            }
            _ => None,
        }
    }

    /// Closes the incidents of integrations no longer here (deleted, or moved to another
    /// host): `recovered` with the state `deleted` for those `deleted` names.
    pub fn keep_only(
        &mut self,
        here: &BTreeSet<String>,
        deleted: &dyn Fn(&str) -> bool,
        now_ms: u64,
        host: &str,
    ) -> Vec<Alert> {
        self.reads.retain(|n, _| here.contains(n));
        let gone: Vec<String> = self.open.keys().filter(|n| !here.contains(*n)).cloned().collect();
        let mut out = Vec::new();
        for name in gone {
            let o = self.open.remove(&name).expect("open");
            if deleted(&name) {
                let seen = Seen { name, state: "deleted".into(), ..Default::default() };
                out.push(seen.alert("recovered", o.since_ms, o.code, None, (now_ms, host)));
            }
        }
        out
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// What the alerts did (shown in `/metrics`).
#[derive(Debug, Default)]
pub struct AlertStats {
    /// Incidents raised.
    pub incidents: AtomicU64,
    /// Recoveries raised.
    pub recoveries: AtomicU64,
    /// Alerts the webhook took (2xx).
    pub sent: AtomicU64,
    /// Attempts that failed and were tried again.
    pub retried: AtomicU64,
    /// Alerts given up (refused with a 4xx other than 408 and 429, or failed [`ATTEMPTS`]
    /// times), or dropped because [`QUEUE`] were waiting.
    pub failed: AtomicU64,
    /// Incidents open now.
    pub open: AtomicU64,
    /// Rounds of looking at the statuses done.
    pub rounds: AtomicU64,
}

/// The sending side: a queue and the task that empties it.
pub struct Sender {
    tx: tokio::sync::mpsc::Sender<Alert>,
    stats: Arc<AlertStats>,
}

impl Sender {
    /// Starts the task that sends to `config`'s webhook.
    pub fn start(config: AlertConfig, stats: Arc<AlertStats>) -> anyhow::Result<Sender> {
        let client = reqwest::Client::builder().timeout(ATTEMPT_TIMEOUT).build()?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Alert>(QUEUE);
        let st = stats.clone();
        tokio::spawn(async move {
            while let Some(alert) = rx.recv().await {
                deliver(&client, &config, &alert, &st).await;
            }
        });
        Ok(Sender { tx, stats })
    }

    /// Queues `alert` (dropped, counted as failed, when the queue is full).
    pub fn send(&self, alert: Alert) {
        let c = if alert.kind == "incident" { &self.stats.incidents } else { &self.stats.recoveries };
        c.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(alert).is_err() {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("an alert was dropped: {QUEUE} are waiting to be sent");
        }
    }
}

async fn deliver(client: &reqwest::Client, config: &AlertConfig, alert: &Alert, stats: &AlertStats) {
    let mut wait = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let mut req = client
            .post(&config.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(alert).expect("an alert serializes"));
        if let Some(t) = &config.token {
            req = req.bearer_auth(t.expose());
        }
        let why = match req.send().await {
            Ok(r) if r.status().is_success() => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(r) => {
                let code = r.status().as_u16();
                if (400..500).contains(&code) && code != 408 && code != 429 {
                    tracing::warn!(integration = %alert.integration, kind = %alert.kind, status = code, "the alert webhook refused an alert; not retried");
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                format!("status {code}")
            }
            // Never the URL's query (it may hold a key): only what failed.
            Err(e) => format!("{}", e.without_url()),
        };
        if attempt == ATTEMPTS {
            tracing::warn!(integration = %alert.integration, kind = %alert.kind, "the alert webhook failed {ATTEMPTS} times ({why}); alert given up");
            stats.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        stats.retried.fetch_add(1, Ordering::Relaxed);
        tracing::info!(integration = %alert.integration, kind = %alert.kind, "the alert webhook failed ({why}); trying again in {wait:?}");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_BACKOFF);
    }
}

/// Watches the integrations `registry` runs every [`CHECK_EVERY`] and sends the alerts
/// their statuses raise to `config`'s webhook, as host `host`.
pub fn watch(
    registry: Arc<crate::registry::Registry>,
    clock: Arc<dyn crate::clock::Clock>,
    config: AlertConfig,
    stats: Arc<AlertStats>,
    host: String,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let sender = Sender::start(config, stats.clone())?;
    Ok(tokio::spawn(async move {
        let mut incidents = Incidents::default();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let live = registry.snapshot();
            for h in live.values() {
                // A status that does not come in time (the integration is busy or stopping)
                // is looked at next time.
                if let Ok(Ok(s)) = tokio::time::timeout(CHECK_EVERY, h.status()).await
                    && let Some(a) = incidents.observe(&Seen::from(&s), clock.now_ms(), &host)
                {
                    sender.send(a);
                }
            }
            let here: BTreeSet<String> = live.keys().cloned().collect();
            for a in incidents.keep_only(&here, &|n| registry.entry(n).is_none(), clock.now_ms(), &host) {
                sender.send(a);
            }
            stats.open.store(incidents.len() as u64, Ordering::Relaxed);
            stats.rounds.fetch_add(1, Ordering::Relaxed);
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, state: &str, code: Option<&str>) -> Seen {
        Seen { name: name.into(), state: state.into(), code: code.map(str::to_string), ..Default::default() }
    }

    /// A re-read that finds changes no notification brought opens an incident, while the
    /// state stays ok; a re-read that ended later and found nothing more ends it.
    #[test]
    fn missed_notifications_are_an_incident_until_a_later_re_read_finds_none() {
        let mut i = Incidents::default();
        let seen = |corrected: u64, reconcile: u64| Seen {
            corrected,
            last_reconcile_ms: Some(reconcile),
            ..status("a", "ok", None)
        };
        // The first look is the baseline, whatever the counter says.
        assert_eq!(i.observe(&seen(5, 100), 110, "h"), None);
        assert_eq!(i.observe(&seen(5, 100), 120, "h"), None);
        let open = i.observe(&seen(7, 100), 130, "h").unwrap();
        assert_eq!((open.kind.as_str(), open.code.as_deref(), open.state.as_str()), ("incident", Some(MISSED), "ok"));
        // The re-read that found them ends (before it was seen to find them: not a clean one).
        assert_eq!(i.observe(&seen(7, 125), 140, "h"), None);
        // More found later: the same incident.
        assert_eq!(i.observe(&seen(8, 125), 150, "h"), None);
        assert_eq!(i.observe(&seen(8, 149), 160, "h"), None);
        // A re-read that ended after the last finding, with nothing more: over.
        let over = i.observe(&seen(8, 155), 170, "h").unwrap();
        assert_eq!((over.kind.as_str(), over.code.as_deref(), over.since_ms), ("recovered", Some(MISSED), 130));
        assert_eq!(i.observe(&seen(8, 200), 210, "h"), None);
    }

    #[test]
    fn one_alert_per_incident_and_one_when_it_is_over() {
        let mut i = Incidents::default();
        assert_eq!(i.observe(&status("a", "starting", None), 1, "h"), None);
        assert_eq!(i.observe(&status("a", "ok", None), 2, "h"), None);
        let open = i.observe(&status("a", "error", Some("AADSTS7000215")), 3, "h").unwrap();
        assert_eq!((open.kind.as_str(), open.code.as_deref(), open.since_ms), ("incident", Some("AADSTS7000215"), 3));
        // The same incident, whatever it shows meanwhile.
        for (t, (state, code)) in [("error", Some("x")), ("degraded", None), ("starting", None)].into_iter().enumerate()
        {
            assert_eq!(i.observe(&status("a", state, code), 4 + t as u64, "h"), None);
        }
        assert_eq!(i.len(), 1);
        let over = i.observe(&status("a", "ok", None), 10, "h").unwrap();
        assert_eq!(
            (over.kind.as_str(), over.since_ms, over.at_ms, over.code.as_deref()),
            ("recovered", 3, 10, Some("AADSTS7000215"))
        );
        assert!(i.is_empty());
        assert_eq!(i.observe(&status("a", "ok", None), 11, "h"), None);
        // A new incident is a new alert.
        assert!(i.observe(&status("a", "missing-credentials", None), 12, "h").is_some());
        // Deleted while open: closed as deleted; moved away: closed silently.
        assert!(i.observe(&status("b", "degraded", None), 13, "h").is_some());
        let closed = i.keep_only(&BTreeSet::new(), &|n| n == "a", 14, "h");
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].integration.as_str(), closed[0].state.as_str()), ("a", "deleted"));
        assert!(i.is_empty());
    }
}
