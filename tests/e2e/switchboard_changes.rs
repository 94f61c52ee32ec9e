//! Switchboard users who come and go while the host runs: through the simulator's API and by
//! editing its CSV. The plugin sees them through the directory's change counter; Microsoft's
//! directory interval is set to an hour here, so nothing else could bring them in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use e2e_tests::*;
use switchboard_sim::User;

fn counter(s: &presence_host::StatusView, name: &str) -> u64 {
    s.counters.get(name).copied().unwrap_or(0)
}

/// A switchboard user for the tenant's user `ms`, with id `id`.
fn user(t: &Scenario, id: &str, ms: usize) -> User {
    User {
        id: id.into(),
        name: format!("Joiner {ms}"),
        emails: vec![t.seed.user_email(ms)],
        line_number: Some(format!("+4670999{ms:04}")),
        active: true,
    }
}

/// Which integration user's subscription (by its creator) covers each Microsoft user, at the
/// emulator; panics if one is covered twice.
fn covering(t: &Scenario) -> HashMap<String, String> {
    let mut by_user = HashMap::new();
    for s in t.emulator.subscriptions() {
        for u in &s.user_ids {
            let before = by_user.insert(u.clone(), s.creator_id.clone());
            assert!(before.is_none(), "{u} is in two subscriptions");
        }
    }
    by_user
}

/// The switchboard users (of `expected`: switchboard id → Microsoft user) not showing their
/// Microsoft user's presence as the emulator has it.
fn not_shown(t: &Scenario, expected: &BTreeMap<String, String>) -> Vec<String> {
    let truth = t.emulator.truth(&t.seed.tenant_id);
    expected
        .iter()
        .filter(|(sb, ms)| match (t.switchboard.shown(sb), truth.get(*ms)) {
            (Some(s), Some(want)) => {
                s.microsoft_user_id != **ms || (&s.availability, &s.activity) != (&want.0, &want.1)
            }
            _ => true,
        })
        .map(|(sb, _)| sb.clone())
        .collect()
}

async fn wait_shown(t: &Scenario, expected: &BTreeMap<String, String>) {
    let end = std::time::Instant::now() + EVENTUALLY;
    loop {
        let missing = not_shown(t, expected);
        if missing.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < end, "never shown: {:?}", &missing[..missing.len().min(10)]);
        t.switchboard.wait_change(Duration::from_millis(100)).await;
    }
}

async fn send(t: &Scenario, method: reqwest::Method, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = t
        .admin_client()
        .request(method, t.admin_url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_added_changed_and_removed_through_the_api_and_the_csv_follow_within_seconds() {
    // 1,200 of the tenant's 1,400 users are in the switchboard, kept in a CSV; 2 integration
    // users (1,300).
    let home = tempfile::tempdir().unwrap();
    let csv = home.path().join("users.csv");
    let t = start(1400, 2, |o| {
        o.switchboard_users = Some(1200);
        o.directory_delta_interval_s = 3600;
        o.switchboard_csv = Some(csv.clone());
    })
    .await;
    let s = t.wait_status(EVENTUALLY, |s| s.state == "ok" && s.users == 1200).await;
    assert_eq!((s.state.as_str(), s.users), ("ok", 1200), "{s:?}");
    assert!(t.wait_in_sync(1200, EVENTUALLY).await.is_empty());
    let before = covering(&t);
    let rounds = counter(&s, "directory.delta-rounds") + counter(&s, "directory.full-resyncs");

    // Through the API: one joins, one leaves, one changes address.
    let (st, v) = send(&t, reqwest::Method::PUT, "/switchboard/contoso/users/sb-01200", {
        let u = user(&t, "sb-01200", 1200);
        serde_json::json!({"name": u.name, "emails": u.emails, "line_number": u.line_number})
    })
    .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        send(&t, reqwest::Method::DELETE, "/switchboard/contoso/users/sb-00005", serde_json::json!(null)).await.0,
        204
    );
    assert_eq!(
        send(&t, reqwest::Method::DELETE, "/switchboard/contoso/users/sb-00005", serde_json::json!(null)).await.0,
        404
    );
    let (st, v) = send(
        &t,
        reqwest::Method::PUT,
        "/switchboard/contoso/users/sb-00007",
        serde_json::json!({"name": "Renamed", "emails": [t.seed.user_email(1201)]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["summary"]["changed"], 1);
    // Bad input names the problem and changes nothing.
    let (st, v) = send(
        &t,
        reqwest::Method::PUT,
        "/switchboard/contoso/users/sb-00008",
        serde_json::json!({"emails": ["not an address"]}),
    )
    .await;
    assert_eq!(st, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not an address"), "{v}");
    let (st, v) =
        send(&t, reqwest::Method::PUT, "/switchboard/contoso/users/sb-00008", serde_json::json!({"mail": 1})).await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("unknown field `mail`"), "{v}");

    let mut expected: BTreeMap<String, String> =
        [("sb-01200", 1200), ("sb-00007", 1201)].iter().map(|(sb, i)| (sb.to_string(), t.ms_user(*i))).collect();
    wait_shown(&t, &expected).await;
    let s = t.wait_status(EVENTUALLY, |s| s.users == 1200 && s.switchboard_users == 1200).await;
    assert_eq!((s.users, s.switchboard_users), (1200, 1200), "{s:?}");
    assert!(counter(&s, "switchboard.changes-seen") >= 1, "{:?}", s.counters);
    // The API's changes are in the CSV (the switchboard's home), so a restart keeps them.
    let on_disk = switchboard_sim::read_csv(&csv).unwrap();
    assert!(on_disk.iter().any(|u| u.id == "sb-01200") && !on_disk.iter().any(|u| u.id == "sb-00005"));

    // Subscriptions follow: the joiner and the new address are covered, the leaver's and the
    // old address's Microsoft users are not, and nobody else moved.
    let cover = t
        .wait_until(EVENTUALLY, || {
            let c = covering(&t);
            c.contains_key(&t.ms_user(1200)) && c.contains_key(&t.ms_user(1201))
        })
        .await;
    assert!(cover);
    let after = covering(&t);
    let moved: Vec<_> = before.iter().filter(|(u, who)| after.get(*u).is_some_and(|w| w != *who)).collect();
    assert!(moved.is_empty(), "{moved:?}");

    // Editing the CSV: one leaves, one joins, one changes address.
    let mut users = switchboard_sim::read_csv(&csv).unwrap();
    users.retain(|u| u.id != "sb-00010");
    users.push(user(&t, "sb-01202", 1202));
    users.iter_mut().find(|u| u.id == "sb-00011").unwrap().emails = vec![t.seed.user_email(1203)];
    switchboard_sim::Switchboard::write_csv(&csv, &users).unwrap();
    expected.insert("sb-01202".into(), t.ms_user(1202));
    expected.insert("sb-00011".into(), t.ms_user(1203));
    wait_shown(&t, &expected).await;
    let s = t.wait_status(EVENTUALLY, |s| s.users == 1200 && !t.switchboard.has_user("sb-00010")).await;
    assert_eq!(s.users, 1200, "{s:?}");
    assert!(t.switchboard.shown("sb-00010").is_none(), "the leaver is no longer in the console");
    let cover = t.wait_until(EVENTUALLY, || covering(&t).contains_key(&t.ms_user(1202))).await;
    assert!(cover);
    let after = covering(&t);
    let moved: Vec<_> = before.iter().filter(|(u, who)| after.get(*u).is_some_and(|w| w != *who)).collect();
    assert!(moved.is_empty(), "{moved:?}");

    // A CSV that does not parse changes nothing.
    let (revision, errors) = (t.switchboard.revision(), t.switchboard.csv_errors());
    std::fs::write(&csv, "id,name,email,line_number,active\nx,X,x@contoso.example,+461,maybe\n").unwrap();
    assert!(t.wait_until(EVENTUALLY, || t.switchboard.csv_errors() > errors).await);
    assert_eq!((t.switchboard.revision(), t.switchboard.len()), (revision, 1200));
    let why = t.switchboard.last_csv_error().unwrap();
    assert!(why.contains("row 2") && why.contains("active is 'maybe'"), "{why}");

    // None of it waited for Microsoft's directory round.
    let s = t.status().await;
    assert_eq!(counter(&s, "directory.delta-rounds") + counter(&s, "directory.full-resyncs"), rounds);
    assert!(t.wait_in_sync(1, EVENTUALLY).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_users_with_a_thousand_changes_in_one_round() {
    // 10,000 of the tenant's 10,600 users in the switchboard, 16 integration users (10,400).
    let t = start(10_600, 16, |o| {
        o.switchboard_users = Some(10_000);
        o.directory_delta_interval_s = 3600;
    })
    .await;
    let s = t
        .wait_status(EVENTUALLY, |s| s.users == 10_000 && s.subscriptions.iter().all(|x| x.subscription_id.is_some()))
        .await;
    assert_eq!((s.users, s.uncovered_users), (10_000, 0), "{s:?}");
    assert!(t.wait_in_sync(10_000, EVENTUALLY).await.is_empty());
    let before = covering(&t);
    assert_eq!(before.len(), 10_000);
    let posts = t.emulator.count("POST /v1.0/subscriptions");

    // 400 leave, 400 join, 200 change address: 1,000 changes in one request.
    let leavers: Vec<String> = (0..400).map(|i| format!("sb-{:05}", i * 25)).collect();
    let mut upsert: Vec<User> = (0..400).map(|i| user(&t, &format!("sb-new-{i:03}"), 10_000 + i)).collect();
    let movers: Vec<User> = t
        .switchboard
        .users()
        .into_iter()
        .filter(|u| u.id.ends_with('7'))
        .take(200)
        .enumerate()
        .map(|(k, u)| User { emails: vec![t.seed.user_email(10_400 + k)], ..u })
        .collect();
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for (i, u) in upsert.iter().enumerate() {
        expected.insert(u.id.clone(), t.ms_user(10_000 + i));
    }
    for (k, u) in movers.iter().enumerate() {
        expected.insert(u.id.clone(), t.ms_user(10_400 + k));
    }
    let gone: BTreeSet<String> = leavers
        .iter()
        .chain(movers.iter().map(|u| &u.id))
        .map(|sb| t.ms_user(sb[3..].parse::<usize>().unwrap()))
        .collect();
    upsert.extend(movers);
    let (st, v) = send(
        &t,
        reqwest::Method::POST,
        "/switchboard/contoso/users/changes",
        serde_json::json!({"upsert": upsert, "remove": leavers}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["summary"], serde_json::json!({"added": 400, "changed": 200, "removed": 400, "unchanged": 0}));

    wait_shown(&t, &expected).await;
    let s = t.wait_status(EVENTUALLY, |s| s.users == 10_000 && s.uncovered_users == 0).await;
    assert_eq!((s.users, s.switchboard_users, s.uncovered_users), (10_000, 10_000, 0), "{s:?}");
    assert_eq!(counter(&s, "directory.delta-rounds") + counter(&s, "directory.full-resyncs"), 1, "{:?}", s.counters);
    let new_ms: Vec<&String> = expected.values().collect();
    let covered = t.wait_until(EVENTUALLY, || new_ms.iter().all(|u| covering(&t).contains_key(*u))).await;
    assert!(covered);
    let after = covering(&t);
    let moved = before.iter().filter(|(u, who)| after.get(*u).is_some_and(|w| w != *who)).count();
    assert_eq!(moved, 0, "a user who stayed stays in its subscription");
    // The joiners went where there was most room: 4 of the 16 subscriptions were replaced.
    let replaced = t.emulator.count("POST /v1.0/subscriptions") - posts;
    assert!((1..=4).contains(&replaced), "{replaced} subscriptions replaced");
    // Everyone the switchboard still has is in sync.
    let stayed: BTreeMap<String, String> = (0..10_000)
        .filter(|i| i % 25 != 0)
        .map(|i| (format!("sb-{i:05}"), i))
        .filter(|(sb, _)| !expected.contains_key(sb))
        .map(|(sb, i)| (sb, t.ms_user(i)))
        .collect();
    assert!(not_shown(&t, &stayed).is_empty());

    // The users who left stay in their subscription until its renewal, then leave its list;
    // still nobody moves.
    t.clock.advance(Duration::from_secs(46 * 60));
    let left = t
        .wait_until(EVENTUALLY, || {
            let c = covering(&t);
            gone.iter().all(|u| !c.contains_key(u)) && c.len() == 10_000
        })
        .await;
    assert!(
        left,
        "{} of the users who left still covered",
        gone.iter().filter(|u| covering(&t).contains_key(*u)).count()
    );
    let renewed = covering(&t);
    let moved = before.iter().filter(|(u, who)| renewed.get(*u).is_some_and(|w| w != *who)).count();
    assert_eq!(moved, 0);
}
