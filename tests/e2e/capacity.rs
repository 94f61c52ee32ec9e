//! More users than integration users can watch: nothing over Graph's limits is attempted,
//! and those beyond 650 per integration user are polled (see `polling.rs`).

use e2e_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_users_with_three_integration_users_subscribe_1950_and_poll_50() {
    let t = start(2000, 3, |_| {}).await;
    let s = t
        .wait_status(EVENTUALLY, |s| {
            s.state == "ok" && s.users == 2000 && s.subscriptions.iter().all(|x| x.subscription_id.is_some())
        })
        .await;
    // Covered: by a subscription or by polling; the status says how many more integration
    // users would make everyone real-time.
    assert_eq!((s.uncovered_users, s.integration_users_needed), (0, 1));
    assert_eq!(s.policy.as_ref().map(|p| p.polled_users), Some(50));
    // Nothing over Graph's limit was attempted.
    assert!(t.emulator.subscriptions().iter().all(|x| x.users <= 650));
    assert_eq!(t.emulator.subscriptions().iter().map(|x| x.users).sum::<usize>(), 1950);
    assert!(t.wait_in_sync(2000, EVENTUALLY).await.is_empty());
}
