//! More users than integration users can watch.

use e2e_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_users_with_three_integration_users_reports_50_uncovered() {
    let t = start(2000, 3, |_| {}).await;
    let s = t
        .wait_status(EVENTUALLY, |s| s.users == 2000 && s.subscriptions.iter().all(|x| x.subscription_id.is_some()))
        .await;
    assert_eq!(s.users, 2000);
    assert_eq!(s.uncovered_users, 50);
    assert_eq!(s.integration_users_needed, 1);
    assert_eq!(s.state, "error");
    assert_eq!(s.code.as_deref(), Some("capacity"));
    assert!(s.detail.as_deref().unwrap_or("").contains("50 mapped users are not covered"), "{s:?}");
    assert!(s.hint.as_deref().unwrap_or("").contains("650"), "{s:?}");
    // Nothing over Graph's limit was attempted, and the covered users are in sync.
    assert!(t.emulator.subscriptions().iter().all(|x| x.users <= 650));
    assert_eq!(t.emulator.subscriptions().iter().map(|x| x.users).sum::<usize>(), 1950);
}
