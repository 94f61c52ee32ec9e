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
    t.settle(EVENTUALLY).await;
    assert_eq!(t.mismatches(700).len(), 3, "nothing delivered them");
    // Five minutes later (emulated) the reconcile has read them.
    t.clock.advance(Duration::from_secs(5 * 60 + 1));
    let left = t.wait_in_sync(700, EVENTUALLY).await;
    assert!(left.is_empty(), "{left:?}");
    let s = t.status().await;
    assert!(s.last_reconcile_ms.unwrap() > first);
    assert_eq!(s.state, "ok");
}

/// A subscription deleted at Microsoft (no lifecycle event tells the app): the next reconcile
/// shows the change it missed, finds the subscription gone from the list and creates a new
/// one, which delivers the changes after it. A reconcile that finds nothing missed does not
/// check the subscription (the renewal's PATCH would answer 404 anyway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_deleted_at_microsoft_is_found_by_the_reconcile_and_recreated() {
    let t = start(40, 1, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert!(t.wait_in_sync(40, EVENTUALLY).await.is_empty());
    // A reconcile with nothing missed: presence is re-read, the subscription is not checked.
    let (reads, lists) = (
        t.emulator.count("POST /v1.0/communications/getPresencesByUserId"),
        t.emulator.count("GET /v1.0/subscriptions"),
    );
    t.clock.advance(Duration::from_secs(5 * 60 + 1));
    assert!(
        t.wait_until(EVENTUALLY, || t.emulator.count("POST /v1.0/communications/getPresencesByUserId") > reads).await
    );
    t.settle(EVENTUALLY).await;
    assert_eq!(t.emulator.count("GET /v1.0/subscriptions"), lists);

    let old = t.emulator.subscriptions()[0].id.clone();
    assert!(t.emulator.delete_subscription(&old));
    assert!(t.emulator.set_presence(&t.seed.tenant_id, &t.ms_user(7), "DoNotDisturb", "Presenting", false));
    t.settle(EVENTUALLY).await;
    assert_eq!(t.mismatches(40).len(), 1, "nothing could deliver it");
    t.clock.advance(Duration::from_secs(5 * 60 + 1));
    assert!(t.wait_in_sync(40, EVENTUALLY).await.is_empty(), "the re-read shows it");
    assert!(
        t.wait_until(EVENTUALLY, || t.emulator.subscriptions().iter().any(|s| s.id != old)).await,
        "a new subscription"
    );
    assert_eq!(t.emulator.count("GET /v1.0/subscriptions"), lists + 1, "one list request found it gone");
    let s = t.wait_status(EVENTUALLY, |s| s.counters.get("subscriptions.lost") == Some(&1)).await;
    assert_eq!(s.counters.get("subscriptions.lost"), Some(&1), "{:?}", s.counters);
    // Live again: a change arrives without any clock movement.
    assert!(t.emulator.set_presence(&t.seed.tenant_id, &t.ms_user(8), "Away", "Away", false));
    assert!(t.wait_in_sync(40, EVENTUALLY).await.is_empty());
    assert_eq!(t.emulator.subscriptions().len(), 1);
}

/// The emulator's (Microsoft's) clock 30 minutes ahead of the host's, then 30 minutes behind:
/// subscriptions are created and renewed, notifications are accepted (their tokens checked by
/// Microsoft's clock), and the status names the offset with its hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_clock_that_is_not_microsofts_is_corrected_and_shown() {
    for ahead in [30 * 60 * 1000i64, -30 * 60 * 1000] {
        let t = start(20, 1, |o| o.microsoft_ahead_ms = ahead).await;
        let s = t.wait_status(EVENTUALLY, |s| s.code.as_deref() == Some("clock-offset") && s.users == 20).await;
        assert_eq!((s.state.as_str(), s.code.as_deref()), ("degraded", Some("clock-offset")), "{s:?}");
        let want = if ahead > 0 { "30.0 minutes behind" } else { "30.0 minutes ahead of" };
        assert!(s.detail.as_deref().unwrap_or("").contains(want), "{s:?}");
        assert!(s.hint.as_deref().unwrap_or("").contains("time sync"), "{s:?}");
        assert!(t.wait_in_sync(20, EVENTUALLY).await.is_empty());
        let sub = t.emulator.subscriptions()[0].clone();
        // A change arrives as a notification whose validation token Microsoft's clock issued.
        let now = t.emulator.truth(&t.seed.tenant_id)[&t.ms_user(3)].clone();
        let (a, b) = if now.1 == "Presenting" { ("Away", "Away") } else { ("DoNotDisturb", "Presenting") };
        t.emulator.set_presence(&t.seed.tenant_id, &t.ms_user(3), a, b, false);
        assert!(t.wait_until(EVENTUALLY, || t.switchboard.shown("sb-00003").is_some_and(|p| p.activity == b)).await);
        let s = t.settle(EVENTUALLY).await;
        assert_eq!(s.counters.get("notifications.accepted").copied(), Some(1), "{:?}", s.counters);
        // 50 minutes on: the subscription is renewed (by Microsoft's clock), not lost.
        t.clock.advance(Duration::from_secs(50 * 60));
        let end = std::time::Instant::now() + EVENTUALLY;
        while t.emulator.subscriptions().first().is_none_or(|s| s.expires_at_ms <= sub.expires_at_ms) {
            assert!(std::time::Instant::now() < end, "never renewed");
            t.host().integrations()["contoso"].tick().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let s = t.settle(EVENTUALLY).await;
        assert_eq!(s.counters.get("rejected.validation-token").copied().unwrap_or(0), 0, "{:?}", s.counters);
        assert!(s.counters.get("notifications.accepted").copied().unwrap_or(0) >= 1, "{:?}", s.counters);
        assert_eq!(t.emulator.subscriptions().len(), 1);
    }
}
