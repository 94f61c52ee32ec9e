//! Durable state: a restarted host resumes its subscriptions instead of duplicating them.

use e2e_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_subscriptions_without_duplicates() {
    let mut t = start(700, 2, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    let before: std::collections::BTreeSet<String> = t.emulator.subscriptions().into_iter().map(|s| s.id).collect();
    assert_eq!(before.len(), 2);
    t.restart_host().await.unwrap();
    let s = t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert_eq!(s.state, "ok", "{s:?}");
    let after: std::collections::BTreeSet<String> = t.emulator.subscriptions().into_iter().map(|s| s.id).collect();
    assert_eq!(before, after, "the same subscriptions are kept");
    // Changes still flow after the restart (the persisted clientState is known).
    let u = t.ms_user(5);
    t.emulator.set_presence(&t.seed.tenant_id, &u, "DoNotDisturb", "Presenting", false);
    assert!(t.wait_in_sync(700, EVENTUALLY).await.is_empty());
}
