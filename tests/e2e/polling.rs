//! Polling (3.5.0): an integration without integration users polls every mapped user with
//! the app's token; one with too few polls those beyond 650 per integration user (hybrid).
//! Paced within Graph's presence budget: never a 429.

use std::time::Duration;

use e2e_tests::*;

fn rounds(s: &presence_host::StatusView) -> u64 {
    s.counters.get("poll.rounds").copied().unwrap_or(0)
}

/// Changes the Teams presence of every `step`-th of the first `users` users.
fn change_some(t: &TestScenario, users: usize, step: usize) -> usize {
    let ids: Vec<String> = t.emulator.with_world(|w| {
        let k = w.tenant_key(&t.seed.tenant_id).unwrap();
        w.tenants[&k].users.iter().take(users).step_by(step).map(|u| u.id.clone()).collect()
    });
    for (n, id) in ids.iter().enumerate() {
        let (a, b) = if n % 2 == 0 { ("Away", "Away") } else { ("Busy", "InAMeeting") };
        t.emulator.set_presence(&t.seed.tenant_id, id, a, b, false);
    }
    ids.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_keeps_ten_thousand_users_current_within_its_interval_without_a_429() {
    let t = start(10_000, 0, |_| {}).await;
    let s = t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    let p = s.policy.clone().expect("the policy status");
    assert_eq!((p.polled_users, p.poll_interval_ms), (10_000, 5_000), "16 requests per 5 s round");
    assert!(
        s.subscriptions.is_empty() && t.emulator.subscriptions().is_empty(),
        "no integration user, no subscription"
    );
    assert!(t.wait_in_sync(10_000, EVENTUALLY).await.is_empty());
    // Teams changes: a round that starts after them shows them all.
    let changed = change_some(&t, 10_000, 97);
    assert!(changed > 100);
    let r0 = rounds(&t.status().await);
    t.wait_status(EVENTUALLY, |s| rounds(s) >= r0 + 2).await;
    assert!(t.mismatches(10_000).is_empty(), "{:?}", &t.mismatches(10_000)[..5.min(t.mismatches(10_000).len())]);
    assert_eq!(t.emulator.throttling(), (0, 0), "no 429, and no request sooner than allowed");
    // Each round reads every user once: 16 requests of at most 650 ids.
    let reads = t.emulator.count("POST /v1.0/communications/getPresencesByUserId");
    let r1 = rounds(&t.status().await);
    assert!(reads >= 16 * r1 && reads <= 16 * (r1 + 1), "{reads} requests for {r1} rounds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_covers_two_thousand_users_with_three_integration_users() {
    let t = start(2_000, 3, |_| {}).await;
    let s = t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert_eq!((s.users, s.uncovered_users, s.integration_users_needed), (2_000, 0, 1));
    assert_eq!(s.policy.as_ref().unwrap().polled_users, 50, "2,000 - 3 × 650");
    assert_eq!(s.subscriptions.iter().map(|x| x.users_covered).sum::<u32>(), 1_950);
    assert!(t.wait_in_sync(2_000, EVENTUALLY).await.is_empty());
    change_some(&t, 2_000, 13);
    let r0 = rounds(&t.status().await);
    t.wait_status(EVENTUALLY, |s| rounds(s) >= r0 + 2).await;
    assert!(t.wait_in_sync(2_000, EVENTUALLY).await.is_empty(), "0 uncovered: every change shows");
    assert_eq!(t.emulator.throttling().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_without_the_read_permission_says_which_permission() {
    let t = start(20, 0, |o| o.app_roles = Some(vec!["User.Read.All".into()])).await;
    let s = t.wait_status(EVENTUALLY, |s| s.state == "error").await;
    assert!(s.hint.as_deref().unwrap_or_default().contains("Presence.Read.All"), "{s:?}");
    assert_eq!(s.uncovered_users, 20);
    // Granted: polling resumes at its next try (15 minutes later, on the emulated clock).
    t.emulator.with_tenant(&t.seed.tenant_id, |tn| {
        for app in tn.apps.values_mut() {
            app.app_roles.insert("Presence.Read.All".into());
        }
    });
    t.emulator.expire_all_tokens();
    t.clock.advance(Duration::from_secs(16 * 60));
    t.wait_status(EVENTUALLY, |s| s.state == "ok" && s.uncovered_users == 0).await;
    assert!(t.wait_in_sync(20, EVENTUALLY).await.is_empty());
}
