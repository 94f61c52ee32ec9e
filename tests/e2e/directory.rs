//! Directory refresh: "Sync now", and a failed read that never shrinks the mapping.

use std::time::Duration;

use e2e_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_directory_read_keeps_the_mapping_and_shows_degraded_and_sync_now_refreshes() {
    let t = start(20, 1, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    let sync_now = || async { admin_post(&t, "/integrations/contoso/sync-now", "text/plain", vec![]).await };

    // Microsoft's user list fails (the product guide's FAQ: its version empties the table).
    inject_fault(&t, "GET", "/v1.0/users", 503, Some(2), 1);
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
    // sb-00005 is still in the switchboard but matches nobody now: no Teams presence shown.
    assert!(t.wait_until(EVENTUALLY, || t.switchboard.shown("sb-00005").is_none()).await);
    // The subscription keeps the leaver until its renewal (no gap for the other 19), then
    // drops it.
    assert_eq!(t.emulator.subscriptions()[0].users, 20);
    t.clock.advance(Duration::from_secs(46 * 60));
    let followed = t.wait_until(EVENTUALLY, || t.emulator.subscriptions().first().is_some_and(|s| s.users == 19)).await;
    assert!(followed, "the subscription follows the mapping at its renewal");
    assert_eq!(admin_post(&t, "/integrations/nobody/sync-now", "text/plain", vec![]).await.0, 404);
    // "Sync now" right after the 503 still waited for its Retry-After.
    let (early, what) = t.emulator.early_requests();
    assert_eq!(early, 0, "{what:?}");
}

fn counter(s: &presence_host::StatusView, name: &str) -> u64 {
    s.counters.get(name).copied().unwrap_or(0)
}

/// `/users/delta` keeps the mapping current without re-reading everyone; a gone delta state
/// (410) leads to one full resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_rounds_keep_the_mapping_current_and_a_gone_delta_state_resyncs() {
    let t = start(30, 1, |o| o.directory_delta_interval_s = 1).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert!(t.wait_in_sync(30, EVENTUALLY).await.is_empty());
    let full_reads = t.emulator.count("GET /v1.0/users");
    let tenant = t.seed.tenant_id.clone();
    let (u3, u4) = (t.ms_user(3), t.ms_user(4));
    let old_mail = t.emulator.with_tenant(&tenant, |tn| tn.user_mut(&u3).unwrap().mail.clone().unwrap());
    // User 4 leaves; user 3 gets a new address; a new user takes user 3's old one.
    let newcomer = t.emulator.with_tenant(&tenant, |tn| {
        assert!(tn.remove_user(&u4));
        assert!(tn.set_mail(&u3, "renamed@contoso.example"));
        tn.add_user("Newcomer", &old_mail)
    });
    let s = t
        .wait_status(EVENTUALLY, |s| {
            s.microsoft_users > 0 && s.users == 29 && counter(s, "directory.delta-rounds") >= 1
        })
        .await;
    assert_eq!(s.users, 29, "{s:?}");
    // sb-00003 now shows the newcomer's presence, sb-00004 nothing new.
    t.emulator.set_presence(&tenant, &newcomer, "DoNotDisturb", "Presenting", false);
    let shown =
        t.wait_until(EVENTUALLY, || t.switchboard.shown("sb-00003").is_some_and(|p| p.activity == "Presenting")).await;
    assert!(shown, "{:?}", t.switchboard.shown("sb-00003"));
    assert_eq!(t.emulator.count("GET /v1.0/users"), full_reads, "no full read for a change");
    assert_eq!(counter(&t.status().await, "directory.full-resyncs"), 1);

    // The delta state is gone: one full resync, then delta rounds again.
    t.emulator.expire_delta_tokens(&tenant);
    let s = t.wait_status(EVENTUALLY, |s| counter(s, "directory.full-resyncs") == 2 && s.state == "ok").await;
    assert_eq!(counter(&s, "directory.resync-required"), 1, "{:?}", s.counters);
    assert_eq!(s.users, 29, "the mapping never shrank on the way");
    let rounds = counter(&s, "directory.delta-rounds");
    let s = t.wait_status(EVENTUALLY, |s| counter(s, "directory.delta-rounds") > rounds).await;
    assert_eq!(counter(&s, "directory.full-resyncs"), 2);
}

/// Overrides from the API win over addresses, survive a restart, and bad ones are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_from_the_api_win_persist_and_report_what_they_cannot_resolve() {
    let mut t = start(20, 1, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    let url = |t: &TestScenario| t.admin_url("/integrations/contoso/overrides");
    let client = t.admin_client();
    let put = |url: String, body: serde_json::Value| {
        let client = client.clone();
        async move {
            let r = client.put(url).body(body.to_string()).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // Bad input names the problem and changes nothing.
    let (code, text) = put(url(&t), serde_json::json!([{"switchboard_user": "sb-00007"}])).await;
    assert_eq!(code, 400);
    assert!(text.contains("microsoft_user"), "{text}");
    let (code, text) = put(url(&t), serde_json::json!([{"switchboard_user": " ", "microsoft_user": "x"}])).await;
    assert_eq!(code, 400);
    assert!(text.contains("override 0"), "{text}");

    let u8 = t.ms_user(8);
    let (code, _) = put(
        url(&t),
        serde_json::json!([
            {"switchboard_user": "sb-00007", "microsoft_user": u8},
            {"switchboard_user": "sb-00009", "microsoft_user": "ghost@contoso.example"},
        ]),
    )
    .await;
    assert_eq!(code, 204);
    let s = t.wait_status(EVENTUALLY, |s| s.users == 18 && s.state == "ok").await;
    assert_eq!(s.users, 18, "sb-00007→user 8; sb-00008 lost its user; sb-00009 unresolved: {s:?}");
    let c = s.conflicts.iter().find(|c| c.kind == "unresolved-override").expect("reported");
    assert_eq!(c.email, "ghost@contoso.example");
    assert_eq!(c.candidates[0], "sb-00009");
    t.emulator.set_presence(&t.seed.tenant_id, &u8, "Away", "Away", false);
    assert!(t.wait_until(EVENTUALLY, || t.switchboard.shown("sb-00007").is_some_and(|p| p.activity == "Away")).await);

    t.restart_host().await.unwrap();
    let v = t.admin_json("/integrations/contoso/overrides").await;
    assert_eq!(v[0]["switchboard_user"], "sb-00007");
    assert_eq!(v[0]["microsoft_user"], u8);
    let s = t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert_eq!(s.users, 18, "kept across a restart");
}

/// A fault on every DELETE of a subscription, `remaining` times.
fn failing_deletes(t: &Scenario, remaining: u32) {
    inject_fault(t, "DELETE", "/v1.0/subscriptions/", 503, Some(1), remaining);
}

/// The tenant's user 19 joins the switchboard: the subscription gains a user, so it is
/// replaced (delete, then create).
fn user_19_joins(t: &Scenario) {
    let joiner = presence_demo::switchboard_users(&t.seed, 20).pop().unwrap();
    let summary = t.switchboard.change(vec![joiner], &[]).unwrap();
    assert_eq!(summary.added, 1);
}

/// 19 of the tenant's 20 users in the switchboard, synced; and how many subscriptions were
/// created so far.
async fn nineteen_of_twenty() -> (TestScenario, u64) {
    let t = start(20, 1, |o| o.switchboard_users = Some(19)).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert!(t.wait_in_sync(19, EVENTUALLY).await.is_empty());
    let posts = t.emulator.count("POST /v1.0/subscriptions");
    (t, posts)
}

/// Graph allows one presence subscription per app and user: when the DELETE of the old
/// subscription (the mapping changed) answers 503 twice, nothing is created until it
/// succeeded, so Graph never sees a second subscription for that user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_whose_delete_fails_is_deleted_before_another_is_created() {
    let (t, posts) = nineteen_of_twenty().await;
    failing_deletes(&t, 2);
    user_19_joins(&t);
    let end = std::time::Instant::now() + EVENTUALLY;
    while t.emulator.subscriptions().first().is_none_or(|s| s.users != 20) {
        assert!(std::time::Instant::now() < end, "the subscription never followed the mapping");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = t.settle(EVENTUALLY).await;
    assert_eq!(t.emulator.count("DELETE /v1.0/subscriptions/{id}"), 3, "retried until it succeeded");
    // One creation after the delete (and one more per creation that failed on its own, e.g.
    // Graph's validation request not getting through under load: each is counted).
    let failed = counter(&s, "subscriptions.create-failed");
    assert_eq!(t.emulator.count("POST /v1.0/subscriptions"), posts + 1 + failed, "one creation, after the delete");
    assert_eq!(t.emulator.subscriptions().len(), 1);
    assert_eq!(counter(&s, "subscriptions.delete-failed"), 2);
    assert_eq!(s.state, "ok");
}

/// A DELETE that keeps failing: no creation is ever tried for that integration user (the
/// emulator would refuse a second one, as Graph does), the old subscription keeps delivering,
/// the status names it stuck; once Microsoft answers again, it is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_cannot_be_deleted_never_gets_a_second_one() {
    let (t, posts) = nineteen_of_twenty().await;
    let old = t.emulator.subscriptions()[0].id.clone();
    failing_deletes(&t, u32::MAX);
    user_19_joins(&t);
    let s = t
        .wait_status(EVENTUALLY, |s| {
            counter(s, "subscriptions.delete-failed") >= 4
                && s.subscriptions[0].code.as_deref() == Some("subscription-stuck")
        })
        .await;
    assert_eq!(s.subscriptions[0].code.as_deref(), Some("subscription-stuck"), "{s:?}");
    assert!(s.subscriptions[0].hint.as_deref().is_some_and(|h| !h.is_empty()));
    assert_eq!(t.emulator.count("POST /v1.0/subscriptions"), posts, "nothing created while the old one stands");
    let subs = t.emulator.subscriptions();
    assert_eq!((subs.len(), subs[0].id.as_str()), (1, old.as_str()));
    // The old subscription still delivers for the 19.
    t.emulator.set_presence(&t.seed.tenant_id, &t.ms_user(3), "DoNotDisturb", "Presenting", false);
    assert!(
        t.wait_until(EVENTUALLY, || t.switchboard.shown("sb-00003").is_some_and(|p| p.activity == "Presenting")).await
    );

    // Microsoft answers DELETE again: replaced, with the joiner.
    t.emulator.with_world(|w| w.faults.clear());
    let replaced = t.wait_until(EVENTUALLY, || t.emulator.subscriptions().first().is_some_and(|s| s.users == 20)).await;
    assert!(replaced);
    assert!(t.wait_in_sync(20, EVENTUALLY).await.is_empty());
    // One creation once the DELETE went through, and one more per creation that failed on
    // its own (seen under the full suite's load: Graph's validation request to the webhook
    // did not get through, the POST answered 400 and was retried; each is counted).
    let failed = counter(&t.status().await, "subscriptions.create-failed");
    assert_eq!(
        t.emulator.count("POST /v1.0/subscriptions"),
        posts + 1 + failed,
        "requests {:?}; plugin {:?}",
        t.emulator.request_counts(),
        t.status().await
    );
    assert_eq!(t.emulator.subscriptions().len(), 1);
    let s = t.wait_status(EVENTUALLY, |s| s.subscriptions[0].code.is_none()).await;
    assert!(s.subscriptions[0].code.is_none(), "{s:?}");
}
