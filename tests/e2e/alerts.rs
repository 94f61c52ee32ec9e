//! Alerts: an integration that leaves `ok` is announced to the alert webhook once per
//! incident, and once more when it is over (ok again, or deleted); a webhook that fails is
//! tried again; `/metrics` counts it all.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};

use e2e_tests::*;

/// What the alert webhook received: (authorization header, body), and how many requests
/// it still fails with 503.
#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<(String, serde_json::Value)>>,
    fail: Mutex<u32>,
}

async fn receive(rx: Arc<Receiver>) -> String {
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let rx = rx.clone();
            async move {
                let mut fail = rx.fail.lock().unwrap();
                if *fail > 0 {
                    *fail -= 1;
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                rx.got.lock().unwrap().push((auth, serde_json::from_str(&body).expect("a JSON body")));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

async fn wait_alerts(rx: &Receiver, n: usize) -> Vec<serde_json::Value> {
    let end = Instant::now() + EVENTUALLY;
    loop {
        let got: Vec<serde_json::Value> = rx.got.lock().unwrap().iter().map(|(_, b)| b.clone()).collect();
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < end, "{n} alerts never came: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the alert watcher has done `more` rounds of looking at the statuses.
async fn wait_rounds(t: &TestScenario, more: u64) {
    let rounds = || async {
        let m = t.admin_client().get(t.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
        m.lines().find_map(|l| l.strip_prefix("tps_alert_rounds_total ")).and_then(|n| n.parse::<u64>().ok())
    };
    let before = rounds().await.expect("tps_alert_rounds_total in /metrics");
    let end = Instant::now() + EVENTUALLY;
    while rounds().await.unwrap_or(0) < before + more {
        assert!(Instant::now() < end, "the alert watcher never looked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_alerts_once_and_its_end_once_and_a_failing_webhook_is_retried() {
    let rx = Arc::new(Receiver::default());
    let url = receive(rx.clone()).await;
    let t = start(20, 1, |o| o.alert_url = Some(url)).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    let sync_now = || async { admin_post(&t, "/integrations/contoso/sync-now", "text/plain", vec![]).await };

    // Microsoft's user list fails: degraded. The webhook is down at first (one 503).
    *rx.fail.lock().unwrap() = 1;
    inject_fault(&t, "GET", "/v1.0/users", 503, Some(2), 1);
    assert_eq!(sync_now().await.0, 202);
    let s = t.wait_status(EVENTUALLY, |s| s.state == "degraded").await;
    let got = wait_alerts(&rx, 1).await;
    assert_eq!(got[0]["kind"], "incident", "starting and ok raised nothing before: {got:?}");
    assert_eq!(got[0]["integration"], "contoso");
    assert_eq!(got[0]["state"], "degraded");
    assert_eq!(got[0]["code"].as_str(), s.code.as_deref());
    assert!(got[0]["hint"].as_str().is_some_and(|h| !h.is_empty()), "{got:?}");
    assert_eq!(rx.got.lock().unwrap()[0].0, "Bearer alert-token");

    // Over: one "recovered", with when it began.
    assert_eq!(sync_now().await.0, 202);
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    let got = wait_alerts(&rx, 2).await;
    assert_eq!((got[1]["kind"].as_str(), got[1]["state"].as_str()), (Some("recovered"), Some("ok")));
    assert_eq!(got[1]["since_ms"], got[0]["since_ms"]);
    assert!(got[1]["at_ms"].as_u64() >= got[0]["at_ms"].as_u64());

    // A second incident is a second alert; deleted while in it, the integration's incident
    // ends as "deleted".
    inject_fault(&t, "GET", "/v1.0/users", 503, Some(2), 1);
    assert_eq!(sync_now().await.0, 202);
    t.wait_status(EVENTUALLY, |s| s.state == "degraded").await;
    wait_alerts(&rx, 3).await;
    let r = t.admin_client().delete(t.admin_url("/integrations/contoso")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let got = wait_alerts(&rx, 4).await;
    let kinds: Vec<(&str, &str)> =
        got.iter().map(|a| (a["kind"].as_str().unwrap(), a["state"].as_str().unwrap())).collect();
    assert_eq!(
        kinds,
        [("incident", "degraded"), ("recovered", "ok"), ("incident", "degraded"), ("recovered", "deleted")]
    );
    // No secret in what went out.
    let all = serde_json::to_string(&got).unwrap();
    assert!(!all.contains(presence_demo::DEMO_SECRET) && !all.contains("alert-token"));

    // /metrics: raised, sent, retried; none open.
    let m = t.admin_client().get(t.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    for line in [
        "tps_alerts_total{kind=\"incident\",outcome=\"raised\"} 2",
        "tps_alerts_total{kind=\"recovered\",outcome=\"raised\"} 2",
        "tps_alerts_total{kind=\"any\",outcome=\"sent\"} 4",
        "tps_alerts_total{kind=\"any\",outcome=\"retried\"} 1",
        "tps_alerts_total{kind=\"any\",outcome=\"failed\"} 0",
        "tps_incidents_open 0",
    ] {
        assert!(m.contains(line), "{line} not in {m}");
    }
    // Nothing more comes in two more rounds (one alert per incident).
    wait_rounds(&t, 2).await;
    assert_eq!(rx.got.lock().unwrap().len(), 4);
}

/// A subscription that did not deliver while its users changed: the periodic re-read finds
/// the changes, and that is an incident (the state stays ok); the next re-read that finds
/// nothing missed ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_that_never_came_are_an_incident_until_a_re_read_finds_none_missed() {
    let rx = Arc::new(Receiver::default());
    let url = receive(rx.clone()).await;
    let t = start(40, 1, |o| o.alert_url = Some(url)).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert!(t.wait_in_sync(40, EVENTUALLY).await.is_empty());
    // The watcher has looked at the integration (its baseline) before anything is lost: a
    // round that began after the integration was ok has ended.
    wait_rounds(&t, 2).await;
    // A state the user does not have yet, whose notification is lost.
    let now = t.emulator.truth(&t.seed.tenant_id)[&t.ms_user(3)].1.clone();
    let (a, act) = [("DoNotDisturb", "Presenting"), ("Away", "Away")].into_iter().find(|(_, x)| *x != now).unwrap();
    assert!(t.emulator.set_presence_losing_notification(&t.seed.tenant_id, &t.ms_user(3), a, act));
    t.settle(EVENTUALLY).await;
    assert_eq!(t.mismatches(40).len(), 1, "nothing delivered it");
    t.clock.advance(Duration::from_secs(5 * 60 + 1));
    assert!(t.wait_in_sync(40, EVENTUALLY).await.is_empty());
    let got = wait_alerts(&rx, 1).await;
    assert_eq!(
        (got[0]["kind"].as_str(), got[0]["code"].as_str(), got[0]["state"].as_str()),
        (Some("incident"), Some(presence_host::alerts::MISSED), Some("ok"))
    );
    // The next re-read finds nothing missed: over.
    t.clock.advance(Duration::from_secs(5 * 60 + 1));
    let got = wait_alerts(&rx, 2).await;
    assert_eq!(
        (got[1]["kind"].as_str(), got[1]["code"].as_str()),
        (Some("recovered"), Some(presence_host::alerts::MISSED))
    );
    wait_rounds(&t, 2).await;
    assert_eq!(rx.got.lock().unwrap().len(), 2, "one alert per incident");
}
