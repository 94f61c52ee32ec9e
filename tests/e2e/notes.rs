//! Status messages and out of office, both ways (WIT `notes` and `absence`, 3.5.0): Teams'
//! status message and out of office reach the switchboard; a switchboard absence becomes the
//! Teams status message with its expiry and goes when it ends; a message the user typed is
//! never overwritten.

use std::time::Duration;

use e2e_tests::*;

const SET_MESSAGE: &str = "POST /v1.0/users/{id}/presence/setStatusMessage";

async fn absence(t: &TestScenario, i: usize, body: serde_json::Value) -> (u16, String) {
    admin_post(
        t,
        &format!("/switchboard/contoso/users/sb-{i:05}/absence"),
        "application/json",
        body.to_string().into_bytes(),
    )
    .await
}

fn counter(s: &presence_host::StatusView, k: &str) -> u64 {
    s.counters.get(k).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_teams_status_message_and_out_of_office_show_in_the_switchboard() {
    let t = start(6, 1, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert!(t.wait_in_sync(6, EVENTUALLY).await.is_empty());
    let expires = t.clock.now_ms() + 2 * 3_600_000;
    t.emulator.set_status_message(&t.seed.tenant_id, &t.ms_user(2), Some(("Visiting a customer", Some(expires))));
    t.emulator.set_out_of_office(&t.seed.tenant_id, &t.ms_user(3), Some("On holiday until Monday"));
    assert!(
        t.wait_until(EVENTUALLY, || t.switchboard.note("sb-00002").is_some_and(|n| n.status_message.is_some())).await
    );
    let n = t.switchboard.note("sb-00002").unwrap();
    assert_eq!(n.status_message.as_deref(), Some("Visiting a customer"));
    assert_eq!(n.status_message_expires_ms.map(|e| e / 1000), Some(expires / 1000));
    assert!(!n.set_by_plugin);
    assert!(t.wait_until(EVENTUALLY, || t.switchboard.note("sb-00003").is_some_and(|n| n.out_of_office)).await);
    assert_eq!(
        t.switchboard.note("sb-00003").unwrap().out_of_office_message.as_deref(),
        Some("On holiday until Monday")
    );
    // Cleared in Teams: cleared in the switchboard.
    t.emulator.set_status_message(&t.seed.tenant_id, &t.ms_user(2), None);
    assert!(
        t.wait_until(EVENTUALLY, || t.switchboard.note("sb-00002").is_some_and(|n| n.status_message.is_none())).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchboard_absence_is_the_teams_status_message_until_it_ends_or_expires() {
    let t = start(6, 1, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    let (tenant, user1) = (t.seed.tenant_id.clone(), t.ms_user(1));
    let until = t.clock.now_ms() + 3_600_000;
    let (code, body) = absence(&t, 1, serde_json::json!({"message": "At lunch until 13:00", "until_ms": until})).await;
    assert_eq!(code, 202, "{body}");
    assert!(
        t.wait_until(EVENTUALLY, || t.emulator.status_message(&tenant, &user1).as_deref()
            == Some("At lunch until 13:00"))
            .await
    );
    // It comes back to the switchboard marked as the plugin's own (loop safety).
    assert!(t.wait_until(EVENTUALLY, || t.switchboard.note("sb-00001").is_some_and(|n| n.set_by_plugin)).await);
    // The absence ends: the message goes.
    assert_eq!(absence(&t, 1, serde_json::json!({"message": ""})).await.0, 202);
    assert!(t.wait_until(EVENTUALLY, || t.emulator.status_message(&tenant, &user1).is_none()).await);
    assert!(
        t.wait_until(EVENTUALLY, || t.switchboard.note("sb-00001").is_some_and(|n| n.status_message.is_none())).await
    );
    // Another one runs out on its own in Teams (its expiry), on the emulated clock.
    let until = t.clock.now_ms() + 30 * 60_000;
    assert_eq!(absence(&t, 1, serde_json::json!({"message": "Back at 14:00", "until_ms": until})).await.0, 202);
    assert!(t.wait_until(EVENTUALLY, || t.emulator.status_message(&tenant, &user1).is_some()).await);
    t.clock.advance(Duration::from_secs(31 * 60));
    assert!(t.wait_until(EVENTUALLY, || t.emulator.status_message(&tenant, &user1).is_none()).await);
    assert!(
        t.wait_until(EVENTUALLY, || t.switchboard.note("sb-00001").is_some_and(|n| n.status_message.is_none())).await
    );
    let s = t.settle(EVENTUALLY).await;
    assert_eq!((counter(&s, "absence.set"), counter(&s, "absence.cleared")), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_message_the_user_typed_is_never_overwritten() {
    let t = start(6, 1, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    let (tenant, user2) = (t.seed.tenant_id.clone(), t.ms_user(2));
    t.emulator.set_status_message(&tenant, &user2, Some(("Do not call: interviewing", None)));
    assert!(
        t.wait_until(EVENTUALLY, || t.switchboard.note("sb-00002").is_some_and(|n| n.status_message.is_some())).await
    );
    assert_eq!(absence(&t, 2, serde_json::json!({"message": "At lunch"})).await.0, 202);
    // Positive control in the same run: user 3 has no message and gets the absence.
    assert_eq!(absence(&t, 3, serde_json::json!({"message": "At lunch"})).await.0, 202);
    assert!(t.wait_until(EVENTUALLY, || t.emulator.status_message(&tenant, &t.ms_user(3)).is_some()).await);
    // The emulator shows user 3's message before its answer reaches the plugin, which counts
    // the write then: both counters are waited for.
    let s = t
        .wait_status(EVENTUALLY, |s| counter(s, "absence.kept-users-message") == 1 && counter(s, "absence.set") >= 1)
        .await;
    assert_eq!(counter(&s, "absence.set"), 1);
    assert_eq!(t.emulator.status_message(&tenant, &user2).as_deref(), Some("Do not call: interviewing"));
    assert_eq!(absence(&t, 2, serde_json::json!({"message": ""})).await.0, 202);
    t.settle(EVENTUALLY).await;
    assert_eq!(t.emulator.status_message(&tenant, &user2).as_deref(), Some("Do not call: interviewing"));
    assert_eq!(t.emulator.count(SET_MESSAGE), 1, "only user 3's");
    // Bad input is refused with the reason.
    let (code, body) = absence(&t, 3, serde_json::json!({"message": "x".repeat(281)})).await;
    assert_eq!(code, 422);
    assert!(body.contains("280"), "{body}");
    let (code, _) = absence(&t, 3, serde_json::json!({"msg": "x"})).await;
    assert_eq!(code, 400);
}
