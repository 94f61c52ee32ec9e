//! The sync policy (WIT `policy`, 3.5.0) end to end: scope by Entra group and by name,
//! Teams-only users, Do not disturb in a call, working hours on the emulated clock, and the
//! admin API's dry run and validation.

use std::time::Duration;

use e2e_tests::*;
use serde_json::json;

const SET: &str = "POST /v1.0/users/{id}/presence/setPresence";
const CLEAR: &str = "POST /v1.0/users/{id}/presence/clearPresence";
const GROUP: &str = "5d2f0a7c-1b3e-4c5d-9e8f-0a1b2c3d4e5f";
const NESTED: &str = "7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9a0b";

/// Changes the scenario's integration to carry `policy` (the integrations API).
async fn put_policy(t: &TestScenario, policy: serde_json::Value) -> (u16, serde_json::Value) {
    let spec = json!({
        "tenant_id": t.seed.tenant_id,
        "client_id": t.seed.client_id,
        "users": [{"username": t.seed.integration_user(0)}],
        "push_line_status": true,
        "policy": policy,
    });
    let r = t
        .admin_client()
        .put(t.admin_url("/integrations/contoso"))
        .header("content-type", "application/json")
        .body(spec.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, serde_json::from_str(&r.text().await.unwrap()).unwrap_or(serde_json::Value::Null))
}

fn with_group_permission(o: &mut ScenarioOptions) {
    o.app_roles = Some(vec!["User.Read.All".into(), "Presence.ReadWrite.All".into(), "GroupMember.Read.All".into()]);
}

async fn wait_policy(
    t: &TestScenario,
    f: impl Fn(&presence_host::status::PolicyView) -> bool,
) -> presence_host::StatusView {
    t.wait_status(EVENTUALLY, |s| s.state == "ok" && s.policy.as_ref().is_some_and(&f)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_group_members_sync_and_one_who_leaves_is_withdrawn_and_loses_the_call_session() {
    let t = start(12, 1, with_group_permission).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert!(t.wait_in_sync(12, EVENTUALLY).await.is_empty());
    // The group: users 0-3 directly, 4-5 through a nested group.
    let ids: Vec<String> = (0..6).map(|i| t.ms_user(i)).collect();
    t.emulator.with_tenant(&t.seed.tenant_id, |tn| {
        tn.set_group(NESTED, ids[4..6].to_vec());
        tn.set_group(GROUP, ids[..4].iter().cloned().chain([NESTED.to_string()]).collect());
    });
    let (status, _) = put_policy(&t, json!({"groups": [GROUP]})).await;
    assert_eq!(status, 200);
    let s = wait_policy(&t, |p| p.in_scope == 6 && p.outside_groups == 6).await;
    assert_eq!(s.users, 6, "the Users column counts those in scope");
    assert_eq!(s.policy.unwrap().group_members, Some(7), "six users and the nested group");
    assert!(t.wait_until(EVENTUALLY, || (6..12).all(|i| t.switchboard.shown(&format!("sb-{i:05}")).is_none())).await);
    assert!((0..6).all(|i| t.switchboard.shown(&format!("sb-{i:05}")).is_some()));

    // User 0 is Available and in a call: "In a call" in Teams.
    assert_eq!(line(&t, 0, "connected").await.0, 202);
    assert_eq!(wait_truth(&t, 0, ("Busy", "InACall")).await.1, "InACall");
    // User 0 leaves the group; the next directory round (one minute on the emulated clock)
    // reads the membership again.
    t.emulator.with_tenant(&t.seed.tenant_id, |tn| {
        tn.set_group(GROUP, ids[1..4].iter().cloned().chain([NESTED.to_string()]).collect())
    });
    t.clock.advance(Duration::from_secs(61));
    assert!(t.wait_until(EVENTUALLY, || t.switchboard.shown("sb-00000").is_none()).await, "withdrawn");
    assert_eq!(wait_truth(&t, 0, ("Available", "Available")).await.0, "Available", "the session we set is cleared");
    assert!(!t.emulator.sessions(&t.seed.tenant_id, &t.ms_user(0)).contains_key(&t.seed.client_id));
    let s = wait_policy(&t, |p| p.in_scope == 5).await;
    assert_eq!(s.users, 5);
    // Its line events are refused now: it is not synced.
    let (code, body) = line(&t, 0, "ended").await;
    assert_eq!(code, 422, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_group_permission_the_status_says_which_permission_and_nobody_is_lost_later() {
    let t = start(6, 1, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    let ids: Vec<String> = (0..3).map(|i| t.ms_user(i)).collect();
    t.emulator.with_tenant(&t.seed.tenant_id, |tn| tn.set_group(GROUP, ids.clone()));
    assert_eq!(put_policy(&t, json!({"groups": [GROUP]})).await.0, 200);
    let s = t
        .wait_status(EVENTUALLY, |s| {
            s.state == "degraded" && s.policy.as_ref().is_some_and(|p| p.groups_code.is_some())
        })
        .await;
    assert_eq!(s.code.as_deref(), Some("Authorization_RequestDenied"), "{s:?}");
    assert!(s.hint.as_deref().unwrap_or_default().contains("GroupMember.Read.All"), "{s:?}");
    // Granted: the membership is read, and only the group syncs.
    t.emulator.with_tenant(&t.seed.tenant_id, |tn| {
        for app in tn.apps.values_mut() {
            app.app_roles.insert("GroupMember.Read.All".into());
        }
    });
    t.emulator.expire_all_tokens();
    t.clock.advance(Duration::from_secs(6 * 60));
    let s = wait_policy(&t, |p| p.in_scope == 3 && p.groups_code.is_none()).await;
    assert_eq!(s.users, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_and_teams_only_users_by_address_and_id() {
    let t = start(12, 1, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    let email6 = t.seed.user_email(6).to_uppercase();
    let (status, _) =
        put_policy(&t, json!({"excluded_users": ["sb-00001", email6], "teams_to_switchboard_only": [t.ms_user(0)]}))
            .await;
    assert_eq!(status, 200);
    let s = wait_policy(&t, |p| p.excluded == 2 && p.teams_to_switchboard_only == 1).await;
    assert_eq!(s.users, 10);
    assert!(
        t.wait_until(EVENTUALLY, || t.switchboard.shown("sb-00001").is_none()
            && t.switchboard.shown("sb-00006").is_none())
            .await
    );
    // User 0 still shows its Teams presence, but its calls are not pushed; user 10 (Busy)
    // is the positive control.
    assert!(t.switchboard.shown("sb-00000").is_some());
    let (code, body) = line(&t, 0, "connected").await;
    assert_eq!(code, 202, "taken, not pushed: {body}");
    assert_eq!(line(&t, 10, "connected").await.0, 202);
    assert_eq!(wait_truth(&t, 10, ("Busy", "InACall")).await.1, "InACall");
    t.settle(EVENTUALLY).await;
    assert_eq!(truth_of(&t, 0), ("Available".into(), "Available".into()));
    assert_eq!(t.emulator.count(SET), 1, "only user 10 was pushed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_not_disturb_in_a_call_is_shown_as_ours_and_the_users_presence_comes_back() {
    let t = start(12, 1, |o| o.policy.do_not_disturb_in_call = true).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert!(t.wait_in_sync(12, EVENTUALLY).await.is_empty());
    assert_eq!(line(&t, 0, "connected").await.0, 202);
    assert_eq!(wait_truth(&t, 0, ("DoNotDisturb", "Presenting")).await, ("DoNotDisturb".into(), "Presenting".into()));
    assert!(t.emulator.sessions(&t.seed.tenant_id, &t.ms_user(0)).contains_key(&t.seed.client_id));
    assert!(
        t.wait_until(EVENTUALLY, || t.switchboard.shown("sb-00000").is_some_and(|s| s.activity == "Presenting")).await
    );
    assert_eq!(t.switchboard.shown("sb-00000").unwrap().origin, "own-line-status", "loop-safe");
    assert_eq!(line(&t, 0, "ended").await.0, 202);
    assert_eq!(wait_truth(&t, 0, ("Available", "Available")).await.0, "Available");
    assert!(t.wait_in_sync(12, EVENTUALLY).await.is_empty());
    assert_eq!(t.switchboard.shown("sb-00000").unwrap().origin, "teams");
    assert_eq!((t.emulator.count(SET), t.emulator.count(CLEAR)), (1, 1));
}

/// Minutes after midnight UTC of `ms`.
fn utc_minute(ms: u64) -> u32 {
    ((ms / 60_000) % 1440) as u32
}

fn hhmm(m: u32) -> String {
    format!("{:02}:{:02}", (m % 1440) / 60, m % 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_pushed_outside_working_hours_on_the_emulated_clock() {
    let t = start(12, 1, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    // Working hours that start 20 minutes from now and last 4 minutes (UTC, every day): short
    // enough that the session set when they begin (PT5M) is still up when they end.
    let now = utc_minute(t.clock.now_ms());
    let (start_at, end_at) = ((now + 20) % 1440, (now + 24) % 1440);
    let hours = json!({"time_zone": "UTC", "start": hhmm(start_at), "end": if end_at == 0 { "24:00".into() } else { hhmm(end_at) }});
    assert_eq!(put_policy(&t, json!({"working_hours": hours})).await.0, 200);
    wait_policy(&t, |p| !p.within_working_hours).await;
    assert_eq!(line(&t, 0, "connected").await.0, 202);
    t.settle(EVENTUALLY).await;
    assert_eq!(truth_of(&t, 0), ("Available".into(), "Available".into()));
    assert_eq!(t.emulator.count(SET), 0, "outside working hours");
    // The hours begin: the call in progress is pushed.
    t.clock.advance(Duration::from_secs(21 * 60));
    assert_eq!(wait_truth(&t, 0, ("Busy", "InACall")).await.1, "InACall");
    wait_policy(&t, |p| p.within_working_hours).await;
    // They end while the call goes on: the session is cleared (not left to run out).
    t.clock.advance(Duration::from_secs(3 * 60));
    assert_eq!(wait_truth(&t, 0, ("Available", "Available")).await.0, "Available");
    assert_eq!(t.emulator.count(CLEAR), 1);
    wait_policy(&t, |p| !p.within_working_hours).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_answers_what_a_policy_would_do_without_doing_it_and_bad_input_names_the_field() {
    let t = start(12, 1, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert_eq!(line(&t, 0, "connected").await.0, 202);
    assert_eq!(line(&t, 10, "connected").await.0, 202);
    assert_eq!(wait_truth(&t, 10, ("Busy", "InACall")).await.1, "InACall");
    assert_eq!(wait_truth(&t, 0, ("Busy", "InACall")).await.1, "InACall");
    let r = t
        .admin_client()
        .post(t.admin_url("/integrations/contoso/policy/dry-run"))
        .header("content-type", "application/json")
        .body(json!({"do_not_disturb_in_call": true, "excluded_users": ["sb-00010"]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let mut changes = v["changes"].as_array().unwrap().clone();
    changes.sort_by_key(|c| c["user_id"].as_str().unwrap().to_string());
    assert_eq!(changes.len(), 2, "{v}");
    assert_eq!(
        (changes[0]["user_id"].as_str(), changes[0]["now"].as_str(), changes[0]["after"].as_str()),
        (Some("sb-00000"), Some("in-a-call"), Some("do-not-disturb"))
    );
    assert_eq!((changes[1]["user_id"].as_str(), changes[1]["after"].as_str()), (Some("sb-00010"), Some("none")));
    assert!(changes[1]["reason"].as_str().unwrap().contains("excluded"), "{v}");
    t.settle(EVENTUALLY).await;
    assert_eq!(truth_of(&t, 0), ("Busy".into(), "InACall".into()), "nothing was done");
    assert_eq!(t.emulator.count(SET), 2);

    // Bad input: the field is named, and nothing changes.
    let r = t
        .admin_client()
        .post(t.admin_url("/integrations/contoso/policy/dry-run"))
        .header("content-type", "application/json")
        .body(json!({"working_hours": {"time_zone": "Mars/Olympus", "start": "08:00", "end": "17:00"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap()["field"],
        "policy.working_hours.time_zone"
    );
    let (status, body) = put_policy(&t, json!({"groups": ["sales"]})).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("policy.groups[0]")), "{body}");
    let (status, body) = put_policy(&t, json!({"call_replace": ["Away"]})).await;
    assert_eq!(status, 400, "an unknown field is refused: {body}");
    let shown = t.admin_json("/integrations/contoso").await;
    assert_eq!(
        shown["policy"],
        json!({"groups": [], "excluded_users": [], "teams_to_switchboard_only": [], "call_replaces": [], "do_not_disturb_in_call": false, "working_hours": null})
    );
}
