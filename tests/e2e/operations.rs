//! Operations: Prometheus metrics, readiness, JSON logs, and a graceful stop on SIGTERM.

use std::time::Duration;

use e2e_tests::*;
use switchboard_sim::Switchboard;

/// The value of the sample `line_start` (metric name and labels) in `text`.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_notifications_rejects_graph_requests_and_latency_behind_the_token() {
    let t = start(20, 1, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert!(t.wait_in_sync(20, EVENTUALLY).await.is_empty());
    // A genuine change, a request to a wrong webhook path, and a 429 on the directory.
    t.emulator.set_presence(&t.seed.tenant_id, &t.ms_user(2), "DoNotDisturb", "Presenting", false);
    assert!(
        t.wait_until(EVENTUALLY, || t.switchboard.shown("sb-00002").is_some_and(|p| p.activity == "Presenting")).await
    );
    let wrong = format!("http://{}/webhook/contoso/not-the-secret/notifications", t.config.host.listen);
    assert_eq!(post(&wrong, "application/json", br#"{"value": []}"#.to_vec()).await.0, 404);
    inject_fault(&t, "GET", "/v1.0/users", 429, Some(1), 1);
    assert_eq!(admin_post(&t, "/integrations/contoso/sync-now", "text/plain", vec![]).await.0, 202);
    t.wait_status(EVENTUALLY, |s| s.counters.get("directory.full-resyncs").copied().unwrap_or(0) >= 2).await;

    // Behind the admin token only.
    let anonymous = reqwest::get(t.admin_url("/metrics")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let r = t.admin_client().get(t.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = r.text().await.unwrap();
    let c = |line: &str| sample(&text, line).unwrap_or_else(|| panic!("no {line} in\n{text}"));
    assert!(c(r#"tps_notifications_accepted_total{integration="contoso"}"#) >= 1.0);
    assert!(c(r#"tps_presence_published_total{integration="contoso"}"#) >= 21.0);
    assert_eq!(c(r#"tps_notifications_rejected_total{integration="contoso",reason="webhook-path"}"#), 1.0);
    assert_eq!(
        c(r#"tps_graph_requests_total{integration="contoso",route="POST /v1.0/subscriptions",status="201"}"#),
        1.0
    );
    assert_eq!(c(r#"tps_graph_throttled_total{integration="contoso",route="GET /v1.0/users/delta"}"#), 1.0);
    assert!(c(r#"tps_graph_request_seconds_count{integration="contoso"}"#) >= 5.0);
    assert!(c(r#"tps_notification_processing_seconds_count{integration="contoso"}"#) >= 1.0);
    assert_eq!(c(r#"tps_users{integration="contoso",kind="mapped"}"#), 20.0);
    assert_eq!(c(r#"tps_subscriptions{integration="contoso"}"#), 1.0);
    assert_eq!(c(r#"tps_integration_state{integration="contoso",state="ok"}"#), 1.0);
    assert_eq!(c(r#"tps_plugin_traps_total{integration="contoso"}"#), 0.0);
    assert_eq!(text.lines().last(), Some("# EOF"));
    // No secret in it.
    for secret in [presence_demo::DEMO_SECRET, t.seed.integration_password.as_str()] {
        assert!(!text.contains(secret));
    }

    // Ready: on the public listener (nothing but the word), and with details on the admin one.
    let public = reqwest::get(format!("http://{}/readyz", t.config.host.listen)).await.unwrap();
    assert_eq!((public.status().as_u16(), public.text().await.unwrap()), (200, "ready".to_string()));
    let admin = t.admin_json("/readyz").await;
    assert_eq!(admin, serde_json::json!({"ready": true, "not_ready": []}));
    // Readiness reads a timestamp: 50 requests on the public listener cost no guest call.
    let status_calls = |s: &presence_host::StatusView| s.calls.get("status").copied().unwrap_or(0);
    let before = status_calls(&t.status().await);
    for _ in 0..50 {
        assert_eq!(reqwest::get(format!("http://{}/readyz", t.config.host.listen)).await.unwrap().status(), 200);
    }
    assert_eq!(status_calls(&t.status().await), before + 1, "only this status read");
}

/// `host-harness --log-format json run`: every log line is a JSON object; SIGTERM stops the
/// host gracefully (exit 0, "stopping" with the signal, then "stopped").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_a_graceful_stop_on_sigterm() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let (_emu, _clock, seed, emu_url) = demo_emulator(5).await;
    Switchboard::write_csv(&dir.path().join("users.csv"), &presence_demo::switchboard_users(&seed, 5)).unwrap();
    let users = [(seed.integration_user(0), seed.integration_password.clone())];
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = write_host_config(dir.path(), port, &format!("http://127.0.0.1:{port}"), &emu_url, &users, "");
    let (mut host, addrs) =
        spawn_host_with(&config, &["--log-format", "json"], Some("warn,presence_host=info,host_harness=info")).await;
    let base = addrs.admin_base();
    let end = std::time::Instant::now() + EVENTUALLY;
    while admin_get(&format!("{base}/status/contoso")).await.is_none_or(|s| s["state"] != "ok") {
        assert!(std::time::Instant::now() < end, "never ok");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = host.id().expect("a pid").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(EVENTUALLY, host.wait()).await.expect("it stops").unwrap();
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    host.stderr.take().unwrap().read_to_string(&mut log).await.unwrap();
    let records: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let message = |r: &serde_json::Value| r["fields"]["message"].as_str().unwrap_or("").to_string();
    assert!(records.iter().any(|r| message(r) == "integration started"), "{log}");
    let stopping = records.iter().find(|r| message(r) == "stopping").expect("a stopping record");
    assert_eq!(stopping["fields"]["signal"], "SIGTERM");
    assert_eq!(records.last().map(message).as_deref(), Some("stopped"), "{log}");
    assert!(records.iter().all(|r| r["level"].is_string() && r["timestamp"].is_string()));
    for secret in [presence_demo::DEMO_SECRET, seed.integration_password.as_str(), E2E_ADMIN_TOKEN] {
        assert!(!log.contains(secret));
    }
}
