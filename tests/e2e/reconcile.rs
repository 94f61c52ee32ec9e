//! Missed notifications: Graph sends no `missed` event for presence, so the plugin re-reads
//! every covered user's presence on an interval (default 5 minutes).

use std::time::Duration;

use e2e_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_notifications_are_repaired_by_the_periodic_reconcile() {
    let t = start(700, 2, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert!(t.wait_in_sync(700, EVENTUALLY).await.is_empty());
    let first = t.status().await.last_reconcile_ms.expect("the initial read counts as a reconcile");
    // Three changes whose notifications are lost.
    for i in [1, 334, 698] {
        assert!(t.emulator.set_presence_losing_notification(
            &t.seed.tenant_id,
            &t.ms_user(i),
            "DoNotDisturb",
            "Presenting"
        ));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(t.mismatches(700).len(), 3, "nothing delivered them");
    // Five minutes later (emulated) the reconcile has read them.
    t.clock.advance(Duration::from_secs(5 * 60 + 1));
    let left = t.wait_in_sync(700, EVENTUALLY).await;
    assert!(left.is_empty(), "{left:?}");
    let s = t.status().await;
    assert!(s.last_reconcile_ms.unwrap() > first);
    assert_eq!(s.state, "ok");
}
