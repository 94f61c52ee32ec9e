//! Teams → switchboard: setup, initial state, live changes.

use e2e_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_of_1353_users_gives_three_subscriptions_and_every_presence() {
    let t = start(1353, 3, |_| {}).await;
    let s = t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert_eq!(s.state, "ok", "status: {s:?}");
    assert_eq!(s.users, 1353);
    let mut covered: Vec<u32> = s.subscriptions.iter().map(|x| x.users_covered).collect();
    covered.sort();
    assert_eq!(covered, vec![53, 650, 650]);
    assert!(s.subscriptions.iter().all(|x| x.subscription_id.is_some() && x.expires_at_ms.is_some()));

    // Graph's side: three live subscriptions, one per integration user, none over 650.
    let subs = t.emulator.subscriptions();
    let mut sizes: Vec<usize> = subs.iter().map(|s| s.users).collect();
    sizes.sort();
    assert_eq!(sizes, vec![53, 650, 650]);
    let creators: std::collections::BTreeSet<_> = subs.iter().map(|s| s.creator_id.clone()).collect();
    assert_eq!(creators.len(), 3, "one subscription per integration user");

    // Every mapped user shows the presence Teams has, right after setup.
    let missing = t.wait_in_sync(1353, EVENTUALLY).await;
    assert!(missing.is_empty(), "{} users not in sync, e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_changes_of_200_users_all_arrive() {
    let t = start(1353, 3, |_| {}).await;
    assert!(t.wait_in_sync(1353, EVENTUALLY).await.is_empty());
    const STATES: [(&str, &str); 6] = [
        ("Available", "Available"),
        ("Busy", "InACall"),
        ("Away", "Away"),
        ("DoNotDisturb", "Presenting"),
        ("Busy", "InAMeeting"),
        ("BeRightBack", "BeRightBack"),
    ];
    let mut users: Vec<usize> = (0..1353).collect();
    use rand::seq::SliceRandom;
    users.shuffle(&mut rand::rng());
    let chosen = &users[..200];
    // Each user changes 1-3 times; only the last state must stick.
    for round in 0..3 {
        for (k, &i) in chosen.iter().enumerate() {
            if round > 0 && (k + round) % 2 == 0 {
                continue;
            }
            let (a, b) = STATES[rand::random::<u64>() as usize % STATES.len()];
            t.emulator.set_presence(&t.seed.tenant_id, &t.ms_user(i), a, b, false);
        }
    }
    let missing = t.wait_in_sync(1353, EVENTUALLY).await;
    assert!(missing.is_empty(), "{} users not in sync: {:?}", missing.len(), &missing[..missing.len().min(5)]);
    let s = t.status().await;
    let c = |k: &str| s.counters.get(k).copied().unwrap_or(0);
    assert!(c("notifications.accepted") >= 200, "{:?}", s.counters);
    // Every notification's key was queued by the host as the webhook took it, and unwrapped
    // on its pool (or, when the pool was behind, in the call that asked for it); none was
    // missed by the host.
    assert!(c("unwrap.parallel") + c("unwrap.in-call") >= c("notifications.accepted"), "{:?}", s.counters);
    assert!(c("unwrap.parallel") > 0, "{:?}", s.counters);
    assert_eq!(c("unwrap.on-demand"), 0, "{:?}", s.counters);
    assert!(s.last_notification_ms.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_presence_wins_over_sessions_as_in_teams() {
    let t = start(20, 1, |_| {}).await;
    assert!(t.wait_in_sync(20, EVENTUALLY).await.is_empty());
    let u = t.ms_user(0);
    t.emulator.set_presence(&t.seed.tenant_id, &u, "Busy", "InACall", false);
    t.emulator.set_presence(&t.seed.tenant_id, &u, "Away", "Away", true);
    assert!(t.wait_in_sync(20, EVENTUALLY).await.is_empty());
    let shown = t.switchboard.shown("sb-00000").unwrap();
    assert_eq!((shown.availability.as_str(), shown.activity.as_str()), ("Away", "Away"));
    assert_eq!(shown.origin, "teams");
}
