//! Prometheus metrics: `GET /metrics` on the admin listener (behind its token, as every admin
//! route; Prometheus sends it with `authorization: {type: Bearer, credentials_file: ...}`), in
//! the OpenMetrics text format (`prometheus-client`).
//!
//! Two kinds:
//! - measured as it happens, for every integration: Graph and Entra requests by route and
//!   status (`tps_graph_requests_total`), those answered 429 (`tps_graph_throttled_total`),
//!   their latency (`tps_graph_request_seconds`), and the time from a notification's arrival
//!   to the plugin taking it (`tps_notification_processing_seconds`);
//! - read from each integration's status at the scrape: notifications accepted and refused by
//!   reason, presence published, users, subscriptions, inbox depth, traps, the state.

use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::status::StatusView;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Integration {
    integration: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    integration: String,
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    integration: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    integration: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    integration: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertOutcome {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    integration: String,
    state: String,
}

type Histograms = Family<Integration, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The metrics measured as things happen, shared by every integration of a host.
pub struct Metrics {
    graph_requests: Family<Request, Counter>,
    graph_throttled: Family<Route, Counter>,
    graph_seconds: Histograms,
    processing_seconds: Histograms,
    /// What the alerts did (see [`crate::alerts`]).
    pub alerts: std::sync::Arc<crate::alerts::AlertStats>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            graph_requests: Family::default(),
            graph_throttled: Family::default(),
            graph_seconds: Family::new_with_constructor(seconds),
            processing_seconds: Family::new_with_constructor(seconds),
            alerts: Default::default(),
        }
    }
}

/// One integration's handle on the host's [`Metrics`]: its histograms resolved once, so that
/// recording a notification costs no label lookup or allocation.
#[derive(Clone)]
pub struct IntegrationMetrics {
    integration: String,
    graph_requests: Family<Request, Counter>,
    graph_throttled: Family<Route, Counter>,
    graph_seconds: Histogram,
    processing_seconds: Histogram,
}

impl IntegrationMetrics {
    /// One outbound request answered `status` (`None`: no answer) after `secs`.
    pub fn graph_request(&self, method: &str, url: &str, status: Option<u16>, secs: f64) {
        let route = route_of(method, url);
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        if status == "429" {
            self.graph_throttled
                .get_or_create(&Route { integration: self.integration.clone(), route: route.clone() })
                .inc();
        }
        self.graph_requests.get_or_create(&Request { integration: self.integration.clone(), route, status }).inc();
        self.graph_seconds.observe(secs);
    }

    /// A notification batch taken by the plugin `secs` after it arrived.
    pub fn processed(&self, secs: f64) {
        self.processing_seconds.observe(secs);
    }
}

impl Metrics {
    /// The handle `integration` records through.
    pub fn for_integration(&self, integration: &str) -> IntegrationMetrics {
        let label = Integration { integration: integration.into() };
        IntegrationMetrics {
            integration: integration.into(),
            graph_requests: self.graph_requests.clone(),
            graph_throttled: self.graph_throttled.clone(),
            graph_seconds: self.graph_seconds.get_or_create_owned(&label),
            processing_seconds: self.processing_seconds.get_or_create_owned(&label),
        }
    }

    /// Forgets a deleted integration's histograms. (Its request counters stay until the
    /// host restarts: counters only grow, and a scraper sees them stop.)
    pub fn remove_integration(&self, integration: &str) {
        let label = Integration { integration: integration.into() };
        self.graph_seconds.remove(&label);
        self.processing_seconds.remove(&label);
    }

    /// The metrics as text: what was measured, and what the statuses say now.
    pub fn render(&self, statuses: &[StatusView]) -> String {
        let mut r = <Registry>::with_prefix("tps");
        r.register(
            "graph_requests",
            "Requests to Graph and Entra by route and status (error: no answer)",
            self.graph_requests.clone(),
        );
        r.register("graph_throttled", "Requests Graph or Entra answered 429", self.graph_throttled.clone());
        r.register(
            "graph_request_seconds",
            "Time to the answer of a Graph or Entra request",
            self.graph_seconds.clone(),
        );
        r.register(
            "notification_processing_seconds",
            "Time from a notification batch's arrival to the plugin taking it",
            self.processing_seconds.clone(),
        );
        let counter = |r: &mut Registry, name: &str, help: &str, pick: &dyn Fn(&StatusView) -> u64| {
            let f = Family::<Integration, Counter>::default();
            for s in statuses {
                f.get_or_create(&Integration { integration: s.name.clone() }).inc_by(pick(s));
            }
            r.register(name, help, f);
        };
        let c = |s: &StatusView, k: &str| s.counters.get(k).copied().unwrap_or(0);
        counter(&mut r, "notifications_accepted", "Change notifications accepted", &|s| c(s, "notifications.accepted"));
        counter(&mut r, "presence_published", "Presence updates shown in the switchboard", &|s| {
            c(s, "presence.published")
        });
        counter(&mut r, "plugin_traps", "Plugin instances stopped by a trap (and replaced)", &|s| s.traps);
        let rejected = Family::<Reason, Counter>::default();
        for s in statuses {
            for (k, v) in s.counters.range("rejected.".to_string()..).take_while(|(k, _)| k.starts_with("rejected.")) {
                let reason = k["rejected.".len()..].to_string();
                rejected.get_or_create(&Reason { integration: s.name.clone(), reason }).inc_by(*v);
            }
        }
        r.register("notifications_rejected", "Notifications and webhook requests refused, by reason", rejected);
        let gauge = |r: &mut Registry, name: &str, help: &str, pick: &dyn Fn(&StatusView) -> i64| {
            let f = Family::<Integration, Gauge>::default();
            for s in statuses {
                f.get_or_create(&Integration { integration: s.name.clone() }).set(pick(s));
            }
            r.register(name, help, f);
        };
        gauge(&mut r, "subscriptions", "Presence subscriptions in effect", &|s| {
            s.subscriptions.iter().filter(|x| x.subscription_id.is_some()).count() as i64
        });
        gauge(&mut r, "inbox_rows", "Notification batches waiting in the inbox", &|s| s.inbox_rows as i64);
        gauge(&mut r, "inbox_bytes", "Bytes waiting in the inbox", &|s| s.inbox_bytes as i64);
        gauge(&mut r, "outbound_in_flight", "Requests whose answer the plugin waits for", &|s| {
            s.outbound_in_flight as i64
        });
        let users = Family::<Kind, Gauge>::default();
        let states = Family::<State, Gauge>::default();
        for s in statuses {
            let kinds: BTreeMap<&str, u32> = [
                ("mapped", s.users),
                ("microsoft", s.microsoft_users),
                ("switchboard", s.switchboard_users),
                ("uncovered", s.uncovered_users),
            ]
            .into();
            for (kind, n) in kinds {
                users.get_or_create(&Kind { integration: s.name.clone(), kind: kind.into() }).set(n.into());
            }
            states.get_or_create(&State { integration: s.name.clone(), state: s.state.clone() }).set(1);
        }
        r.register("users", "Users by kind: mapped, microsoft, switchboard, uncovered", users);
        r.register("integration_state", "1 for the integration's state (ok, degraded, error, starting, ...)", states);
        let alerts = Family::<AlertOutcome, Counter>::default();
        let a = &self.alerts;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        for (kind, outcome, n) in [
            ("incident", "raised", load(&a.incidents)),
            ("recovered", "raised", load(&a.recoveries)),
            ("any", "sent", load(&a.sent)),
            ("any", "retried", load(&a.retried)),
            ("any", "failed", load(&a.failed)),
        ] {
            alerts.get_or_create(&AlertOutcome { kind: kind.into(), outcome: outcome.into() }).inc_by(n);
        }
        r.register(
            "alerts",
            "Alerts raised (incident, recovered) and their delivery to the alert webhook (sent, retried, failed)",
            alerts,
        );
        let open = Gauge::<i64>::default();
        open.set(load(&a.open) as i64);
        r.register("incidents_open", "Integrations this host runs that are in an incident (not ok)", open);
        let rounds = Counter::<u64>::default();
        rounds.inc_by(load(&a.rounds));
        r.register("alert_rounds", "Rounds of the alert watcher's look at the statuses", rounds);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).expect("writing to a String");
        out
    }
}

/// A request's route for a label: the method and the path with ids, tenants and addresses
/// replaced by `{id}` (so that labels stay few), without the query.
pub fn route_of(method: &str, url: &str) -> String {
    let path = url::Url::parse(url).map(|u| u.path().to_string()).unwrap_or_default();
    let segments: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let id_like = !matches!(s, "v1.0" | "v2.0" | "beta")
                && !s.starts_with('.')
                && (s.contains('@')
                    || s.contains("%40")
                    || (s.len() >= 8 && s.contains(|c: char| c.is_ascii_digit() || c == '.')));
            if id_like { "{id}" } else { s }
        })
        .collect();
    format!("{method} /{}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_keep_their_shape_and_lose_their_ids() {
        let cases = [
            ("GET", "https://graph.microsoft.com/v1.0/users/delta?$deltatoken=x", "GET /v1.0/users/delta"),
            (
                "PATCH",
                "https://graph.microsoft.com/v1.0/subscriptions/7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
                "PATCH /v1.0/subscriptions/{id}",
            ),
            (
                "POST",
                "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
                "POST /{id}/oauth2/v2.0/token",
            ),
            (
                "GET",
                "https://login.microsoftonline.com/common/.well-known/openid-configuration",
                "GET /common/.well-known/openid-configuration",
            ),
            (
                "GET",
                "https://graph.microsoft.com/v1.0/users/anna%40contoso.com/presence",
                "GET /v1.0/users/{id}/presence",
            ),
            (
                "POST",
                "https://graph.microsoft.com/v1.0/communications/getPresencesByUserId",
                "POST /v1.0/communications/getPresencesByUserId",
            ),
        ];
        for (m, u, want) in cases {
            assert_eq!(route_of(m, u), want, "{u}");
        }
    }

    #[test]
    fn a_render_holds_what_was_measured_and_what_the_status_says() {
        let m = Metrics::default();
        let c = m.for_integration("contoso");
        c.graph_request("POST", "https://g.example/v1.0/subscriptions", Some(201), 0.02);
        c.graph_request("GET", "https://g.example/v1.0/users", Some(429), 0.01);
        c.graph_request("GET", "https://g.example/v1.0/users", None, 5.0);
        c.processed(0.003);
        let text = m.render(&[]);
        for line in [
            r#"tps_graph_requests_total{integration="contoso",route="POST /v1.0/subscriptions",status="201"} 1"#,
            r#"tps_graph_requests_total{integration="contoso",route="GET /v1.0/users",status="error"} 1"#,
            r#"tps_graph_throttled_total{integration="contoso",route="GET /v1.0/users"} 1"#,
            r#"tps_graph_request_seconds_count{integration="contoso"} 3"#,
            r#"tps_notification_processing_seconds_bucket{le="0.004",integration="contoso"} 1"#,
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }
}
