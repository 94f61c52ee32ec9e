//! Switchboard → Teams: a call on the mobile line shows "In a call" in Teams.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use e2e_tests::*;

const SET: &str = "POST /v1.0/users/{id}/presence/setPresence";
const CLEAR: &str = "POST /v1.0/users/{id}/presence/clearPresence";

async fn ready(users: usize, integration_users: usize, tweak: impl FnOnce(&mut ScenarioOptions)) -> TestScenario {
    let t = start(users, integration_users, tweak).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert!(t.wait_in_sync(users, EVENTUALLY).await.is_empty());
    t
}

/// Seed users whose Teams state is Available or Busy (so a call may be shown), per the
/// emulator's seeding (`TenantSeed::build`).
fn overridable(i: usize) -> bool {
    i % 7 != 6 && matches!(i % 6, 0 | 1 | 4) && active(i)
}

/// Every fifth seed user is passive (no line), per `demo::switchboard_users`.
fn active(i: usize) -> bool {
    i % 5 != 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn available_user_shows_in_a_call_and_returns_to_available() {
    let t = ready(20, 1, |_| {}).await;
    assert_eq!(truth_of(&t, 0), ("Available".into(), "Available".into()));
    assert_eq!(line(&t, 0, "ringing").await.0, 202);
    assert_eq!(line(&t, 0, "connected").await.0, 202);
    assert_eq!(wait_truth(&t, 0, ("Busy", "InACall")).await, ("Busy".into(), "InACall".into()));
    let sessions = t.emulator.sessions(&t.seed.tenant_id, &t.ms_user(0));
    assert!(sessions.contains_key(&t.seed.client_id), "an app session with sessionId = client id: {sessions:?}");
    // The switchboard shows it, marked as our own doing (loop safety).
    let end = Instant::now() + EVENTUALLY;
    while t.switchboard.shown("sb-00000").is_none_or(|s| s.activity != "InACall") && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(t.switchboard.shown("sb-00000").unwrap().origin, "own-line-status");
    assert_eq!(line(&t, 0, "ended").await.0, 202);
    assert_eq!(wait_truth(&t, 0, ("Available", "Available")).await, ("Available".into(), "Available".into()));
    assert!(!t.emulator.sessions(&t.seed.tenant_id, &t.ms_user(0)).contains_key(&t.seed.client_id));
    assert!(t.wait_in_sync(20, EVENTUALLY).await.is_empty());
    assert_eq!(t.switchboard.shown("sb-00000").unwrap().origin, "teams");
    assert_eq!((t.emulator.count(SET), t.emulator.count(CLEAR)), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_not_disturb_and_preferred_away_are_left_alone() {
    let t = ready(20, 1, |_| {}).await;
    // User 3 is DoNotDisturb/Presenting; user 1 sets a preferred Away over a Busy session.
    assert_eq!(truth_of(&t, 3).0, "DoNotDisturb");
    t.emulator.set_presence(&t.seed.tenant_id, &t.ms_user(1), "Away", "Away", true);
    assert!(t.wait_in_sync(20, EVENTUALLY).await.is_empty());
    line(&t, 3, "connected").await;
    line(&t, 1, "connected").await;
    // Positive control in the same run: user 10 is Busy/Busy and does get "In a call".
    assert_eq!(truth_of(&t, 10), ("Busy".into(), "Busy".into()));
    assert_eq!(line(&t, 10, "connected").await.0, 202);
    assert_eq!(wait_truth(&t, 10, ("Busy", "InACall")).await.1, "InACall");
    t.settle(EVENTUALLY).await;
    assert_eq!(truth_of(&t, 3), ("DoNotDisturb".into(), "Presenting".into()));
    assert_eq!(truth_of(&t, 1), ("Away".into(), "Away".into()));
    assert_eq!(t.emulator.count(SET), 1, "only user 10 was pushed");
    for i in [1, 3] {
        assert!(!t.emulator.sessions(&t.seed.tenant_id, &t.ms_user(i)).contains_key(&t.seed.client_id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_calls_in_ten_seconds_end_right_and_respect_retry_after() {
    let t = ready(600, 1, |_| {}).await;
    // A tight limit so that throttling certainly happens.
    t.emulator.set_presence_limit(30, Duration::from_secs(2));
    let before: HashMap<usize, (String, String)> = (0..500).map(|i| (i, truth_of(&t, i))).collect();
    // The switchboard's events, on a fixed schedule inside 10 s: user i's call connects at
    // i × 10 ms and ends at 5 s + i × 10 ms. Each is sent on its own task so a slow answer never
    // delays the schedule.
    let client = t.admin_client();
    let t0 = tokio::time::Instant::now();
    let mut sends = Vec::new();
    for i in 0..500u64 {
        for (offset_ms, state) in [(i * 10, "connected"), (5_000 + i * 10, "ended")] {
            let url = t.admin_url(&format!("/switchboard/contoso/users/sb-{i:05}/line-events"));
            let client = client.clone();
            sends.push(tokio::spawn(async move {
                tokio::time::sleep_until(t0 + Duration::from_millis(offset_ms)).await;
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(format!("{{\"state\": \"{state}\"}}"))
                    .send()
                    .await
                    .expect("request");
                r.status().as_u16()
            }));
        }
    }
    for s in sends {
        let status = s.await.unwrap();
        assert!(status == 202 || status == 422, "{status}");
    }
    // Every final state is what Teams showed before the call, and no session is left.
    let end = Instant::now() + Duration::from_secs(120);
    let wrong = loop {
        let truth = t.emulator.truth(&t.seed.tenant_id);
        let wrong: Vec<usize> = (0..500)
            .filter(|&i| {
                truth[&t.ms_user(i)] != before[&i]
                    || t.emulator.sessions(&t.seed.tenant_id, &t.ms_user(i)).contains_key(&t.seed.client_id)
            })
            .collect();
        if wrong.is_empty() || Instant::now() > end {
            break wrong;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(wrong.is_empty(), "{} users wrong, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
    let (throttled, early) = t.emulator.throttling();
    assert!(throttled > 0, "the test must provoke 429s");
    assert_eq!(early, 0, "no request came sooner than Retry-After allowed");
    let s = t.status().await;
    assert!(s.counters.get("push.throttled").copied().unwrap_or(0) > 0);
    assert!(t.emulator.count("POST /v1.0/$batch") > 0, "JSON batching was used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_killed_mid_call_leaves_nothing_stuck() {
    let mut t = ready(20, 1, |_| {}).await;
    assert_eq!(line(&t, 0, "connected").await.0, 202);
    assert_eq!(line(&t, 10, "connected").await.0, 202);
    assert_eq!(wait_truth(&t, 0, ("Busy", "InACall")).await.1, "InACall");
    assert_eq!(wait_truth(&t, 10, ("Busy", "InACall")).await.1, "InACall");
    // The host dies: nothing is cleaned up on its way out.
    t.stop_host().await;
    // Both calls end while it is down.
    t.switchboard.set_line("sb-00000", "ended", 0);
    t.switchboard.set_line("sb-00010", "ended", 0);
    // The sessions run out by themselves within their expiration (PT5M).
    t.clock.advance(Duration::from_secs(5 * 60 + 1));
    assert_eq!(wait_truth(&t, 0, ("Available", "Available")).await, ("Available".into(), "Available".into()));
    assert_eq!(wait_truth(&t, 10, ("Busy", "Busy")).await, ("Busy".into(), "Busy".into()));
    // After a restart nothing is re-asserted for calls that ended.
    let sets = t.emulator.count(SET);
    t.restart_host().await.unwrap();
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    t.settle(EVENTUALLY).await;
    assert_eq!(t.emulator.count(SET), sets);
    for i in [0, 10] {
        assert!(!t.emulator.sessions(&t.seed.tenant_id, &t.ms_user(i)).contains_key(&t.seed.client_id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_clears_sessions_of_calls_that_ended_and_keeps_calls_that_go_on() {
    let mut t = ready(20, 1, |_| {}).await;
    assert_eq!(line(&t, 0, "connected").await.0, 202);
    assert_eq!(line(&t, 1, "connected").await.0, 202);
    assert_eq!(wait_truth(&t, 0, ("Busy", "InACall")).await.1, "InACall");
    assert_eq!(wait_truth(&t, 1, ("Busy", "InACall")).await.1, "InACall");
    t.stop_host().await;
    t.switchboard.set_line("sb-00000", "ended", 0);
    // Restart well within the session's life: user 0's session is cleared at once, user 1's
    // call goes on and keeps "In a call".
    t.restart_host().await.unwrap();
    assert_eq!(wait_truth(&t, 0, ("Available", "Available")).await, ("Available".into(), "Available".into()));
    assert!(t.emulator.count(CLEAR) >= 1);
    t.settle(EVENTUALLY).await;
    assert_eq!(truth_of(&t, 1), ("Busy".into(), "InACall".into()));
    // And the call that went on is still cleared when it ends.
    assert_eq!(line(&t, 1, "ended").await, (202, String::new()));
    assert_eq!(wait_truth(&t, 1, ("Busy", "InAMeeting")).await, ("Busy".into(), "InAMeeting".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pushes_make_exactly_a_thousand_graph_writes() {
    let t = ready(1500, 3, |_| {}).await;
    let users: Vec<usize> = (0..1500).filter(|&i| overridable(i)).take(500).collect();
    assert_eq!(users.len(), 500);
    for chunk in users.chunks(100) {
        for &i in chunk {
            line(&t, i, "connected").await;
        }
    }
    let end = Instant::now() + EVENTUALLY;
    while users.iter().any(|&i| truth_of(&t, i).1 != "InACall") && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(users.iter().all(|&i| truth_of(&t, i).1 == "InACall"));
    for &i in &users {
        line(&t, i, "ended").await;
    }
    let end = Instant::now() + EVENTUALLY;
    while users.iter().any(|&i| truth_of(&t, i).1 == "InACall") && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Our own sessions' notifications came back (1,000 of them) and caused nothing more.
    t.settle(EVENTUALLY).await;
    assert_eq!(t.emulator.count(SET) + t.emulator.count(CLEAR), 1000);
    assert_eq!((t.emulator.count(SET), t.emulator.count(CLEAR)), (500, 500));
    let s = t.status().await;
    assert!(t.wait_in_sync(1500, EVENTUALLY).await.is_empty());
    assert_eq!(s.counters.get("push.set").copied(), Some(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_presence_readwrite_all_is_reported_and_teams_to_switchboard_keeps_flowing() {
    let t = ready(20, 1, |o| o.app_roles = Some(vec!["User.Read.All".into()])).await;
    assert_eq!(line(&t, 0, "connected").await.0, 202);
    let s = t.wait_status(EVENTUALLY, |s| s.state == "error").await;
    assert_eq!(s.code.as_deref(), Some("Authorization_RequestDenied"), "{s:?}");
    assert!(s.hint.as_deref().unwrap_or("").contains("Presence.ReadWrite.All"));
    assert_eq!(truth_of(&t, 0), ("Available".into(), "Available".into()));
    // Pushes stop: another call is not even tried.
    let sets = t.emulator.count(SET);
    assert_eq!(line(&t, 10, "connected").await.0, 202);
    t.settle(EVENTUALLY).await;
    assert_eq!(t.emulator.count(SET), sets);
    // Teams → switchboard still works.
    t.emulator.set_presence(&t.seed.tenant_id, &t.ms_user(7), "DoNotDisturb", "Presenting", false);
    assert!(t.wait_in_sync(20, EVENTUALLY).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_and_unknown_users_get_a_clear_error() {
    let t = ready(10, 1, |_| {}).await;
    // Every fifth seed user is passive (no line).
    let (status, body) = line(&t, 9, "connected").await;
    assert_eq!(status, 422);
    assert!(body.contains("passive"), "{body}");
    let (status, body) = admin_post(
        &t,
        "/switchboard/contoso/users/sb-00000/line-events",
        "application/json",
        b"{\"state\": \"talking\"}".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("talking"), "{body}");
    let (status, _) = admin_post(
        &t,
        "/switchboard/contoso/users/nobody/line-events",
        "application/json",
        b"{\"state\": \"connected\"}".to_vec(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(t.emulator.count(SET), 0);
}
