//! Directory refresh: "Sync now", and a failed read that never shrinks the mapping.

use std::time::Duration;

use e2e_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_directory_read_keeps_the_mapping_and_shows_degraded_and_sync_now_refreshes() {
    let t = start(20, 1, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    let host = format!("http://{}", t.host.as_ref().unwrap().addr);
    let sync_now = || async { post(&format!("{host}/integrations/contoso/sync-now"), "text/plain", vec![]).await };

    // Microsoft's user list fails (the product guide's FAQ: its version empties the table).
    t.emulator.with_world(|w| {
        w.faults.push(host_harness::emulator::Fault {
            method: Some("GET".into()),
            path_contains: "/v1.0/users".into(),
            status: 503,
            retry_after: Some(30),
            remaining: 1,
        })
    });
    assert_eq!(sync_now().await.0, 202);
    let s = t.wait_status(EVENTUALLY, |s| s.state == "degraded").await;
    assert_eq!(s.state, "degraded", "{s:?}");
    assert_eq!(s.code.as_deref(), Some("serviceNotAvailable"));
    assert_eq!(s.users, 20, "the last good mapping is kept");
    assert!(t.wait_in_sync(20, Duration::from_secs(5)).await.is_empty(), "and presence keeps flowing");

    // A user leaves the tenant; "Sync now" picks it up at once (not at the next hourly read).
    let gone = t.ms_user(5);
    t.emulator.with_world(|w| {
        let tn = w.tenants.values_mut().next().unwrap();
        tn.users.retain(|u| u.id != gone);
        tn.reindex();
    });
    assert_eq!(sync_now().await.0, 202);
    let s = t.wait_status(EVENTUALLY, |s| s.state == "ok" && s.users == 19).await;
    assert_eq!((s.state.as_str(), s.users), ("ok", 19), "{s:?}");
    let sub = &t.emulator.subscriptions()[0];
    assert_eq!(sub.users, 19, "the subscription follows the mapping");
    assert_eq!(post(&format!("{host}/integrations/nobody/sync-now"), "text/plain", vec![]).await.0, 404);
}
