//! The harness as a real process, killed with SIGKILL in the middle of a call.
//!
//! The binary is built by `scripts/test` (`cargo build --release -p host-harness`) before the
//! tests run; no test invokes cargo.

use std::time::{Duration, Instant};

use presence_demo::{DEMO_CLIENT, DEMO_TENANT, switchboard_users};
use switchboard_sim::Switchboard;

use e2e_tests::{admin_get as get, spawn_host_on_any_port as spawn};

/// Waits until the host process has nothing on its way: the emulator delivered every
/// notification it queued, the host processed every one it took, and the plugin waits for
/// no answer.
async fn settle(emu: &graph_emulator::Emulator, base: &str) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (queued, done) = emu.deliveries();
        let s = get(&format!("{base}/status/contoso")).await.unwrap_or_default();
        let c = |k: &str| s["counters"][k].as_u64().unwrap_or(0);
        let processed = c("inbox.processed") == c("inbox.accepted") + c("inbox.replayed");
        if queued == done && processed && s["outbound_in_flight"] == 0 && emu.deliveries() == (queued, done) {
            return;
        }
        assert!(Instant::now() < end, "the host never settled: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Until the host is healthy. The test moves the emulator's (Microsoft's) clock 5 minutes
/// past the host process's, which the status rightly names (`clock-offset`, corrected for):
/// that counts as healthy here.
async fn wait_ok(base: &str) {
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        if get(&format!("{base}/status/contoso"))
            .await
            .is_some_and(|v| v["state"] == "ok" || (v["state"] == "degraded" && v["code"] == "clock-offset"))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the host never became ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_call_leaves_teams_right_within_the_session_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, clock, seed, emu_url) = e2e_tests::demo_emulator(20).await;
    Switchboard::write_csv(&dir.path().join("users.csv"), &switchboard_users(&seed, 20)).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let public = format!("http://127.0.0.1:{port}");
    let users = [(seed.integration_user(0), seed.integration_password.clone())];
    let config = e2e_tests::write_host_config(dir.path(), port, &public, &emu_url, &users, "push_line_status = true");
    let (mut host, addrs) = spawn(&config).await;
    let base = addrs.admin_base();
    wait_ok(&base).await;
    let user0 = emu.with_world(|w| w.tenants.values().next().unwrap().users[0].id.clone());
    let teams = || emu.truth(DEMO_TENANT)[&user0].clone();
    assert_eq!(teams(), ("Available".into(), "Available".into()));
    assert_eq!(e2e_tests::line_event(&base, "contoso", "sb-00000", "connected").await.0, 202);
    let end = Instant::now() + Duration::from_secs(30);
    while teams().1 != "InACall" && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(teams(), ("Busy".into(), "InACall".into()));

    // SIGKILL: nothing of the host runs any more, nothing is cleaned up.
    host.kill().await.unwrap();
    // Within the session's expiration (PT5M; the emulator's clock moves on) Teams is right again.
    clock.advance(Duration::from_secs(5 * 60 + 1));
    let end = Instant::now() + Duration::from_secs(10);
    while teams().1 == "InACall" && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(teams(), ("Available".into(), "Available".into()));

    // Restarted (its line states died with it, so the call counts as over): nothing is
    // re-asserted, nothing is stuck.
    let sets = emu.count("POST /v1.0/users/{id}/presence/setPresence");
    let (mut host, addrs) = spawn(&config).await;
    let base = addrs.admin_base();
    wait_ok(&base).await;
    settle(&emu, &base).await;
    assert_eq!(emu.count("POST /v1.0/users/{id}/presence/setPresence"), sets);
    assert_eq!(teams(), ("Available".into(), "Available".into()));
    assert!(!emu.sessions(DEMO_TENANT, &user0).contains_key(DEMO_CLIENT));
    host.kill().await.unwrap();
}
