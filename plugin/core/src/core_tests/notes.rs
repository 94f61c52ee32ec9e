//! Status messages and out of office, both ways.

use super::*;

fn notes_shown(effects: &[Effect]) -> Vec<(String, TeamsNote)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ShowNote { user_id, note, .. } => Some((user_id.clone(), note.clone())),
            _ => None,
        })
        .collect()
}

fn status_writes(effects: &[Effect]) -> Vec<serde_json::Value> {
    requests(effects)
        .into_iter()
        .filter(|(_, r)| r.url.ends_with("/setStatusMessage"))
        .map(|(_, r)| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

/// An absence event, answered like Graph would; returns every effect seen.
fn absence(
    core: &mut Core,
    env: &mut FakeEnv,
    users: usize,
    user: &str,
    message: &str,
    until_ms: Option<u64>,
) -> Vec<Effect> {
    env.log.clear();
    core.on_absence(env, AbsenceEvent { user_id: user.into(), message: message.into(), until_ms }).unwrap();
    let effects = core.take_effects();
    run_graph(core, env, users, effects);
    std::mem::take(&mut env.log)
}

/// A presence read as `getPresencesByUserId` answers it, applied to the core.
fn snapshot_of(core: &mut Core, env: &mut FakeEnv, items: Vec<serde_json::Value>) -> Vec<Effect> {
    // A reconcile reads the presence of every covered user: answer it with `items`.
    env.now += DEFAULT_RECONCILE_MS + 1;
    core.tick(env);
    let mut out = Vec::new();
    let mut effects = core.take_effects();
    loop {
        out.extend(effects.iter().cloned());
        let reqs = requests(&effects);
        if reqs.is_empty() {
            return out;
        }
        for (id, r) in reqs {
            let resp = if r.url.ends_with("getPresencesByUserId") {
                ok(200, serde_json::json!({ "value": items }))
            } else if r.url.contains("/subscriptions/") && r.method == "PATCH" {
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                ok(
                    200,
                    serde_json::json!({"id": r.url.rsplit('/').next(), "expirationDateTime": body["expirationDateTime"]}),
                )
            } else if r.url.ends_with("/oauth2/v2.0/token") {
                ok(200, serde_json::json!({"access_token": "tok", "expires_in": 3599}))
            } else {
                directory_answer(
                    &r,
                    (0..2).map(|i| serde_json::json!({"id": ms_id(i), "mail": format!("U{i}@x.com")})).collect(),
                )
            };
            core.on_http_response(env, id, resp);
        }
        effects = core.take_effects();
    }
}

#[test]
fn the_status_message_and_out_of_office_reach_the_switchboard_and_absent_fields_are_kept() {
    let (mut core, mut env) = synced_pushing(2, 0);
    let item = serde_json::json!({
        "id": ms_id(1), "availability": "Available", "activity": "Available", "sequenceNumber": "0002",
        "statusMessage": {"message": {"content": "<p>In Paris &amp; Lyon</p>", "contentType": "html"},
                          "expiryDateTime": {"dateTime": "2027-01-16T17:00:00.0000000", "timeZone": "UTC"}},
        "outOfOfficeSettings": {"isOutOfOffice": true, "message": "Back Monday"},
    });
    let shown = notes_shown(&snapshot_of(&mut core, &mut env, vec![item]));
    let (user, note) = shown.iter().find(|(u, _)| u == "sb1").expect("a note for sb1");
    assert_eq!(user, "sb1");
    assert_eq!(note.status_message.as_deref(), Some("In Paris & Lyon"), "HTML is reduced to its text");
    assert_eq!(note.status_message_expires_ms, Some(1_800_118_800_000));
    assert!(note.out_of_office && !note.own);
    assert_eq!(note.out_of_office_message.as_deref(), Some("Back Monday"));
    // A payload without the two properties (a notification may lack them) keeps the note;
    // the same note again shows nothing new.
    let same = serde_json::json!({"id": ms_id(1), "availability": "Available", "activity": "Available", "sequenceNumber": "0003"});
    assert!(notes_shown(&snapshot_of(&mut core, &mut env, vec![same])).is_empty());
    // Cleared in Teams: null.
    let cleared = serde_json::json!({"id": ms_id(1), "availability": "Available", "activity": "Available", "sequenceNumber": "0004",
        "statusMessage": null, "outOfOfficeSettings": {"isOutOfOffice": false, "message": null}});
    let shown = notes_shown(&snapshot_of(&mut core, &mut env, vec![cleared]));
    assert_eq!(shown, vec![("sb1".to_string(), TeamsNote::default())]);
}

#[test]
fn an_absence_sets_the_status_message_with_its_expiry_and_its_end_clears_it() {
    let (mut core, mut env) = synced_pushing(2, 0);
    let until = env.now + 3_600_000;
    let effects = absence(&mut core, &mut env, 2, "sb1", "At lunch until 13:00", Some(until));
    let writes = status_writes(&effects);
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0]["statusMessage"]["message"]["content"], "At lunch until 13:00");
    let expiry = &writes[0]["statusMessage"]["expiryDateTime"];
    assert_eq!(expiry["timeZone"], "UTC");
    assert_eq!(parse_rfc3339(&format!("{}Z", expiry["dateTime"].as_str().unwrap())), Some(until));
    assert_eq!(env.status_messages.get(&ms_id(1)).map(String::as_str), Some("At lunch until 13:00"));
    assert_eq!(
        env.stored.get("v1/own-status-messages").map(|b| String::from_utf8_lossy(b).contains("At lunch")),
        Some(true)
    );
    // Our own message comes back from Teams: shown as ours (loop safety).
    let item = serde_json::json!({"id": ms_id(1), "availability": "Available", "activity": "Available", "sequenceNumber": "0009",
        "statusMessage": {"message": {"content": "At lunch until 13:00", "contentType": "text"}}});
    let shown = notes_shown(&snapshot_of(&mut core, &mut env, vec![item]));
    assert!(shown.iter().any(|(u, n)| u == "sb1" && n.own), "{shown:?}");
    // The absence ends: ours is cleared.
    let writes = status_writes(&absence(&mut core, &mut env, 2, "sb1", "", None));
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0]["statusMessage"]["message"]["content"], "");
    assert!(!env.status_messages.contains_key(&ms_id(1)));
}

#[test]
fn a_status_message_the_user_typed_is_never_overwritten_nor_cleared() {
    let (mut core, mut env) = synced_pushing(2, 0);
    env.status_messages.insert(ms_id(1), "In Paris".into());
    let effects = absence(&mut core, &mut env, 2, "sb1", "At lunch", None);
    assert!(status_writes(&effects).is_empty(), "the user's own words win");
    assert_eq!(env.status_messages[&ms_id(1)], "In Paris");
    assert_eq!(
        core.status(&env).counters.iter().find(|(k, _)| k == "absence.kept-users-message").map(|x| x.1),
        Some(1)
    );
    assert!(status_writes(&absence(&mut core, &mut env, 2, "sb1", "", None)).is_empty(), "not ours: not cleared");
    assert_eq!(env.status_messages[&ms_id(1)], "In Paris");

    // Ours set, then the user types over it during the absence: its end leaves the user's.
    env.status_messages.remove(&ms_id(1));
    assert_eq!(status_writes(&absence(&mut core, &mut env, 2, "sb1", "In a meeting room", None)).len(), 1);
    env.status_messages.insert(ms_id(1), "Working from home".into());
    assert!(status_writes(&absence(&mut core, &mut env, 2, "sb1", "", None)).is_empty());
    assert_eq!(env.status_messages[&ms_id(1)], "Working from home");
}

#[test]
fn an_absence_too_long_or_for_an_unmapped_user_is_refused_with_the_reason() {
    let (mut core, mut env) = synced_pushing(2, 0);
    let long = "x".repeat(281);
    assert_eq!(
        core.on_absence(&mut env, AbsenceEvent { user_id: "sb1".into(), message: long, until_ms: None }),
        Err(AbsenceError::TooLong(281))
    );
    assert_eq!(
        core.on_absence(&mut env, AbsenceEvent { user_id: "nobody".into(), message: "x".into(), until_ms: None }),
        Err(AbsenceError::UnmappedUser("nobody".into()))
    );
}

#[test]
fn a_user_who_leaves_the_scope_loses_the_status_message_we_set() {
    let (mut core, mut env) = synced_pushing(2, 0);
    assert_eq!(status_writes(&absence(&mut core, &mut env, 2, "sb1", "At lunch", None)).len(), 1);
    env.log.clear();
    core.set_policy(&mut env, SyncPolicy { excluded_users: vec!["sb1".into()], ..Default::default() }).unwrap();
    let effects = core.take_effects();
    run_graph(&mut core, &mut env, 2, effects);
    let writes = status_writes(&std::mem::take(&mut env.log));
    assert_eq!(writes.len(), 1, "cleared, as its call session would be");
    assert_eq!(writes[0]["statusMessage"]["message"]["content"], "");
    assert!(!env.status_messages.contains_key(&ms_id(1)));
}

#[test]
fn no_status_message_is_written_when_pushing_is_off_or_for_a_one_way_user() {
    let mut env = env(2);
    let mut core = Core::new();
    core.configure(&mut env, settings(1)).unwrap();
    let effects = core.take_effects();
    run_graph(&mut core, &mut env, 2, effects);
    assert_eq!(
        core.on_absence(&mut env, AbsenceEvent { user_id: "sb1".into(), message: "x".into(), until_ms: None }),
        Err(AbsenceError::PushDisabled)
    );
    let (mut core, mut env) = synced_pushing(2, 0);
    env.log.clear();
    core.set_policy(&mut env, SyncPolicy { teams_to_switchboard_only: vec!["sb1".into()], ..Default::default() })
        .unwrap();
    let effects = core.take_effects();
    run_graph(&mut core, &mut env, 2, effects);
    assert!(status_writes(&absence(&mut core, &mut env, 2, "sb1", "At lunch", None)).is_empty());
}
