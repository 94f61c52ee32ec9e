//! What Microsoft does to a running integration: signing keys rotate, subscriptions ask for
//! reauthorization.

use std::time::Duration;

use e2e_tests::*;

fn counter(s: &presence_host::StatusView, name: &str) -> u64 {
    s.counters.get(name).copied().unwrap_or(0)
}

/// Microsoft rotates its token signing keys: batches signed with the new key wait until the
/// keys are re-read, then are applied; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_key_rotation_is_followed_without_losing_notifications() {
    let t = start(20, 1, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert!(t.wait_in_sync(20, EVENTUALLY).await.is_empty());
    let s = t.status().await;
    assert_eq!(counter(&s, "signing-keys.fetched"), 1);
    let accepted = counter(&s, "notifications.accepted");
    t.emulator.rotate_signing_key();
    t.emulator.set_presence(&t.seed.tenant_id, &t.ms_user(2), "DoNotDisturb", "Presenting", false);
    let s = t.wait_status(EVENTUALLY, |s| counter(s, "notifications.waiting-for-keys") >= 1).await;
    assert!(counter(&s, "notifications.waiting-for-keys") >= 1, "{:?}", s.counters);
    // Keys are re-read at most every 5 minutes; emulated time moves on.
    t.clock.advance(Duration::from_secs(5 * 60));
    let s = t.wait_status(EVENTUALLY, |s| counter(s, "signing-keys.fetched") == 2).await;
    assert_eq!(counter(&s, "signing-keys.fetched"), 2, "{:?}", s.counters);
    assert_eq!(counter(&s, "rejected.validation-token"), 0, "{:?}", s.counters);
    assert_eq!(counter(&s, "notifications.accepted"), accepted + 1, "the parked batch was applied");
    assert!(t.wait_in_sync(20, EVENTUALLY).await.is_empty());
}

/// `reauthorizationRequired`: Graph stops delivering until the subscription is renewed; the
/// plugin renews it and re-reads presence, so changes made meanwhile still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauthorization_required_renews_the_subscription_and_repairs_the_gap() {
    let t = start(20, 1, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert!(t.wait_in_sync(20, EVENTUALLY).await.is_empty());
    let sub = t.emulator.subscriptions()[0].id.clone();
    let patches = t.emulator.count("PATCH /v1.0/subscriptions/{id}");
    assert!(t.emulator.require_reauthorization(&sub));
    // Changes while Graph holds deliveries back.
    t.emulator.set_presence(&t.seed.tenant_id, &t.ms_user(4), "Away", "Away", false);
    let s = t.wait_status(EVENTUALLY, |s| counter(s, "lifecycle.reauthorizationRequired") == 1).await;
    assert_eq!(counter(&s, "lifecycle.reauthorizationRequired"), 1, "{:?}", s.counters);
    assert!(t.wait_in_sync(20, EVENTUALLY).await.is_empty(), "the gap is repaired");
    assert!(t.emulator.count("PATCH /v1.0/subscriptions/{id}") > patches, "renewed");
    assert!(t.emulator.with_world(|w| !w.subscriptions[&sub].reauthorization_required));
    assert_eq!(t.emulator.subscriptions().len(), 1, "the same subscription, no duplicate");
    // Deliveries flow again.
    t.emulator.set_presence(&t.seed.tenant_id, &t.ms_user(5), "Busy", "InAMeeting", false);
    assert!(t.wait_in_sync(20, EVENTUALLY).await.is_empty());
}
