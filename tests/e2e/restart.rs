//! Durable state: a restarted host resumes its subscriptions instead of duplicating them.

use e2e_tests::*;
use presence_host::StateStore as _;

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

/// A notification Graph got a 202 for, but the host died before the plugin processed it, sits in
/// the durable inbox; the next start replays it (then reconciles).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_but_unprocessed_notifications_are_replayed_after_a_crash() {
    let mut t = start(30, 1, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert!(t.wait_in_sync(30, EVENTUALLY).await.is_empty());
    let sub = t.emulator.subscriptions()[0].id.clone();
    let user = t.ms_user(3);
    t.stop_host().await;
    // The state a crash between "persisted and acknowledged" and "processed" leaves behind.
    let item = t.emulator.notification_for(&sub, &user, "DoNotDisturb", "Presenting").unwrap();
    let body = t.emulator.batch_body(&sub, vec![item]).to_string().into_bytes();
    let db = presence_host::SqliteStore::open(&t.config.host.state_dir).unwrap();
    db.inbox_push("contoso", "notifications", &body, 0).unwrap();
    drop(db);
    t.restart_host().await.unwrap();
    let s = t.wait_status(EVENTUALLY, |s| s.counters.get("notifications.accepted").copied().unwrap_or(0) >= 1).await;
    assert_eq!(s.counters.get("inbox.replayed"), Some(&1), "{:?}", s.counters);
    assert_eq!(s.counters.get("notifications.accepted"), Some(&1), "{:?}", s.counters);
    // A replayed row's key is queued by the host when the actor reads the row, like a row the
    // webhook took.
    let early = ["unwrap.parallel", "unwrap.in-call"].iter().filter_map(|k| s.counters.get(*k)).sum::<u64>();
    assert_eq!((early, s.counters.get("unwrap.on-demand")), (1, None), "{:?}", s.counters);
    let db = presence_host::SqliteStore::open(&t.config.host.state_dir).unwrap();
    // The actor hands a processed entry's delete to the store's writer and goes on: it is
    // gone soon after, not necessarily before the status answers.
    assert!(t.wait_until(EVENTUALLY, || db.inbox_size("contoso").unwrap().0 == 0).await, "the inbox is drained");
}

/// A large directory comes back over several calls after a restart; notifications replayed
/// from the inbox meanwhile are answered 503 by the plugin, kept by the host in order, and
/// processed once the mapping is back: none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_that_arrive_while_a_large_directory_is_restored_wait_and_are_not_lost() {
    let users = 6000;
    let mut t = start(users, users.div_ceil(650), |_| {}).await;
    assert!(t.wait_in_sync(users, EVENTUALLY).await.is_empty());
    let subs = t.emulator.subscriptions();
    t.stop_host().await;
    let db = presence_host::SqliteStore::open(&t.config.host.state_dir).unwrap();
    let mut changed = Vec::new();
    for i in [1usize, 2500, 5999] {
        let user = t.ms_user(i);
        let sub = subs.iter().find(|s| s.resource.contains(&user)).expect("a subscription covers the user").id.clone();
        let item = t.emulator.notification_for(&sub, &user, "DoNotDisturb", "Presenting").unwrap();
        let body = t.emulator.batch_body(&sub, vec![item]).to_string().into_bytes();
        db.inbox_push("contoso", "notifications", &body, 0).unwrap();
        changed.push(format!("sb-{i:05}"));
    }
    drop(db);
    t.restart_host().await.unwrap();
    let s = t.wait_status(EVENTUALLY, |s| s.counters.get("notifications.accepted").copied().unwrap_or(0) >= 3).await;
    assert_eq!(s.counters.get("notifications.accepted"), Some(&3), "{:?}", s.counters);
    assert!(s.counters.get("inbox.deferred").copied().unwrap_or(0) >= 1, "they had to wait: {:?}", s.counters);
    assert!(s.counters.get("directory.restore-steps").copied().unwrap_or(0) >= 1, "{:?}", s.counters);
    for u in &changed {
        assert!(t.switchboard.shown(u).is_some_and(|p| p.activity == "Presenting"), "{u}");
    }
    let db = presence_host::SqliteStore::open(&t.config.host.state_dir).unwrap();
    assert!(t.wait_until(EVENTUALLY, || db.inbox_size("contoso").unwrap().0 == 0).await, "the inbox is drained");
    assert_eq!(s.users as usize, users);
}
