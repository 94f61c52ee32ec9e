//! The sync policy: scope (groups, excluded users), direction, and the push rules (which
//! availabilities a call replaces, Do not disturb in a call, working hours), and its dry run.

use super::*;

const GROUP: &str = "6a1f0c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b";

fn withdrawn(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Withdraw(id) => Some(id.clone()),
            _ => None,
        })
        .collect()
}

fn sets(effects: &[Effect]) -> Vec<(String, serde_json::Value)> {
    requests(effects)
        .into_iter()
        .filter(|(_, r)| r.url.ends_with("/setPresence") || r.url.ends_with("/clearPresence"))
        .map(|(_, r)| (r.url.clone(), serde_json::from_slice(&r.body).unwrap()))
        .collect()
}

/// Sets `policy` and answers what follows; returns every effect seen.
fn apply(core: &mut Core, env: &mut FakeEnv, users: usize, policy: SyncPolicy) -> Vec<Effect> {
    env.log.clear();
    core.set_policy(env, policy).unwrap();
    let effects = core.take_effects();
    run_graph(core, env, users, effects);
    std::mem::take(&mut env.log)
}

/// A line event, answered like Graph would; returns every effect seen.
fn call(core: &mut Core, env: &mut FakeEnv, users: usize, user: &str, state: LineState) -> Vec<Effect> {
    env.log.clear();
    let at_ms = env.now;
    let _ = core.on_line_event(env, LineEvent { user_id: user.into(), state, at_ms });
    let effects = core.take_effects();
    run_graph(core, env, users, effects);
    std::mem::take(&mut env.log)
}

fn group_policy() -> SyncPolicy {
    SyncPolicy { groups: vec![GROUP.into()], ..SyncPolicy::default() }
}

#[test]
fn a_user_who_leaves_the_group_is_withdrawn_and_loses_the_session_we_set() {
    let (mut core, mut env) = synced_pushing(4, 0);
    env.groups.insert(GROUP.into(), vec![ms_id(0), ms_id(1), ms_id(2), "a-nested-group-id".into()]);
    let effects = apply(&mut core, &mut env, 4, group_policy());
    assert!(env.seen.iter().any(|(_, u)| u.contains(&format!("/groups/{GROUP}/transitiveMembers?$select=id"))));
    assert_eq!(withdrawn(&effects), vec!["sb3".to_string()], "sb3 is in no group");
    assert_eq!(core.status(&env).mapped_users, 3);
    let st = core.policy_status(&env);
    assert_eq!((st.in_scope, st.outside_groups, st.group_members), (3, 1, Some(4)));

    let effects = call(&mut core, &mut env, 4, "sb1", LineState::Connected);
    assert_eq!(sets(&effects).len(), 1, "sb1 is in the group: its call is pushed");

    // sb1's Microsoft user leaves the group; the next directory round reads it again.
    env.groups.insert(GROUP.into(), vec![ms_id(0), ms_id(2)]);
    let effects = later(&mut core, &mut env, 4, DEFAULT_DELTA_INTERVAL_MS + 1);
    assert_eq!(withdrawn(&effects), vec!["sb1".to_string()]);
    assert!(counter(&core, &env, "mapping.changed-in-place") >= 1, "the scope left a kept pair out");
    let cleared = sets(&effects);
    assert_eq!(cleared.len(), 1);
    assert!(cleared[0].0.ends_with(&format!("/users/{}/presence/clearPresence", ms_id(1))), "{cleared:?}");
    assert_eq!(core.status(&env).mapped_users, 2);
    assert_eq!(
        core.on_line_event(&mut env, LineEvent { user_id: "sb1".into(), state: LineState::Connected, at_ms: 0 }),
        Err(LineEventError::UnmappedUser("sb1".into())),
        "out of scope: no pushes"
    );

    // Back in the group: shown again.
    env.groups.insert(GROUP.into(), vec![ms_id(0), ms_id(1), ms_id(2)]);
    let effects = later(&mut core, &mut env, 4, DEFAULT_DELTA_INTERVAL_MS + 1);
    assert!(publishes(&effects).iter().any(|p| p.user_id == "sb1"), "sb1 shows its presence again");
}

#[test]
fn a_failed_group_read_keeps_the_last_good_membership_and_says_why() {
    let (mut core, mut env) = synced_pushing(3, 0);
    env.groups.insert(GROUP.into(), vec![ms_id(0), ms_id(1)]);
    apply(&mut core, &mut env, 3, group_policy());
    assert_eq!(core.status(&env).mapped_users, 2);
    env.groups_status = Some(403);
    let effects = later(&mut core, &mut env, 3, DEFAULT_DELTA_INTERVAL_MS + 1);
    assert!(withdrawn(&effects).is_empty(), "nothing lost to a failed read");
    assert_eq!(core.status(&env).mapped_users, 2);
    let st = core.status(&env);
    match st.health {
        Health::Degraded(p) => {
            assert_eq!(p.code, "Authorization_RequestDenied");
            assert!(p.hint.contains("GroupMember.Read.All"), "{}", p.hint);
        }
        other => panic!("{other:?}"),
    }
    env.groups_status = None;
    later(&mut core, &mut env, 3, 10 * 60 * 1000);
    assert!(matches!(core.status(&env).health, Health::Ok), "{:?}", core.status(&env).health);
}

#[test]
fn a_group_that_does_not_exist_leaves_its_users_out_and_names_the_group() {
    let (mut core, mut env) = synced_pushing(2, 0);
    let effects = apply(&mut core, &mut env, 2, group_policy());
    let mut w = withdrawn(&effects);
    w.sort();
    assert_eq!(w, vec!["sb0".to_string(), "sb1".to_string()], "a scope that cannot be read syncs nobody");
    let p = core.policy_status(&env).groups_problem.expect("a problem");
    assert_eq!(p.code, "Request_ResourceNotFound");
    assert!(p.hint.contains(GROUP), "{}", p.hint);
}

#[test]
fn the_group_scope_is_applied_before_the_first_mapping_after_a_restart() {
    let (mut core, mut env) = synced_pushing(3, 0);
    env.groups.insert(GROUP.into(), vec![ms_id(0)]);
    apply(&mut core, &mut env, 3, group_policy());
    // A new instance with the same state, Graph unreachable for groups: the stored
    // membership applies; nobody outside it is ever published.
    env.groups_status = Some(503);
    env.log.clear();
    let mut core = Core::new();
    let mut s = settings(1);
    s.push_line_status = true;
    core.configure(&mut env, s).unwrap();
    let effects = core.take_effects();
    let (published, _) = run_graph(&mut core, &mut env, 3, effects);
    assert!(published.iter().all(|p| p.user_id == "sb0"), "{published:?}");
    assert_eq!(core.policy(), &group_policy(), "the policy is kept in state");
}

#[test]
fn excluded_and_one_way_users_are_named_by_any_of_their_names() {
    let (mut core, mut env) = synced_pushing(5, 0);
    let policy = SyncPolicy {
        // By switchboard id, by Microsoft id and by address (any case).
        excluded_users: vec!["sb0".into(), ms_id(1), "U2@X.com".into(), "nobody@x.com".into()],
        teams_to_switchboard_only: vec!["u3@x.com".into()],
        ..SyncPolicy::default()
    };
    let effects = apply(&mut core, &mut env, 5, policy);
    let mut w = withdrawn(&effects);
    w.sort();
    assert_eq!(w, vec!["sb0", "sb1", "sb2"]);
    let st = core.policy_status(&env);
    assert_eq!((st.in_scope, st.excluded, st.teams_to_switchboard_only), (2, 3, 1));
    assert_eq!(st.unknown_entries, vec!["nobody@x.com".to_string()]);
    assert!(sets(&call(&mut core, &mut env, 5, "sb3", LineState::Connected)).is_empty(), "Teams to switchboard only");
    assert_eq!(sets(&call(&mut core, &mut env, 5, "sb4", LineState::Connected)).len(), 1);
    // Made two-way during its call: the call shows at once.
    let effects = apply(&mut core, &mut env, 5, SyncPolicy::default());
    assert!(sets(&effects).iter().any(|(u, _)| u.contains(&ms_id(3)) && u.ends_with("/setPresence")));
}

#[test]
fn a_user_made_one_way_during_a_call_loses_the_session() {
    let (mut core, mut env) = synced_pushing(2, 0);
    assert_eq!(sets(&call(&mut core, &mut env, 2, "sb1", LineState::Connected)).len(), 1);
    let effects = apply(
        &mut core,
        &mut env,
        2,
        SyncPolicy { teams_to_switchboard_only: vec!["sb1".into()], ..Default::default() },
    );
    let s = sets(&effects);
    assert_eq!(s.len(), 1);
    assert!(s[0].0.ends_with("/clearPresence"));
    assert!(withdrawn(&effects).is_empty(), "still shown in the switchboard");
}

#[test]
fn do_not_disturb_in_a_call_sets_it_and_restores_the_users_own_presence() {
    let (mut core, mut env) = synced_pushing(2, 0);
    apply(&mut core, &mut env, 2, SyncPolicy { do_not_disturb_in_call: true, ..Default::default() });
    let s = sets(&call(&mut core, &mut env, 2, "sb1", LineState::Connected));
    assert_eq!(s.len(), 1);
    assert_eq!(
        (s[0].1["availability"].as_str(), s[0].1["activity"].as_str()),
        (Some("DoNotDisturb"), Some("Presenting"))
    );
    // Our own DoNotDisturb is shown as ours and never taken as the user's state.
    assert!(core.is_own_presence_for_test(&ms_id(1), "DoNotDisturb", "Presenting"));
    assert!(!core.is_own_presence_for_test(&ms_id(1), "Busy", "InACall"));
    let s = sets(&call(&mut core, &mut env, 2, "sb1", LineState::Ended));
    assert_eq!(s.len(), 1);
    assert!(s[0].0.ends_with("/clearPresence"), "the session goes: the user's own presence shows again");
    assert_eq!(core.presence_of(&ms_id(1)).map(|p| p.availability).as_deref(), Some("Available"));
}

#[test]
fn switching_do_not_disturb_on_during_a_call_sets_the_other_pair() {
    let (mut core, mut env) = synced_pushing(2, 0);
    call(&mut core, &mut env, 2, "sb1", LineState::Connected);
    let s = sets(&apply(&mut core, &mut env, 2, SyncPolicy { do_not_disturb_in_call: true, ..Default::default() }));
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].1["availability"], "DoNotDisturb");
}

#[test]
fn a_call_replaces_only_the_availabilities_the_policy_names() {
    let (mut core, mut env) = synced_pushing(3, 0);
    // The users are Away now; the core reads a user's presence before it decides.
    env.own_presence = ("Away".into(), "Away".into());
    core.forget_presence_for_test(&ms_id(1));
    core.forget_presence_for_test(&ms_id(2));
    assert!(
        sets(&call(&mut core, &mut env, 3, "sb1", LineState::Connected)).is_empty(),
        "Away is not replaced by default"
    );
    call(&mut core, &mut env, 3, "sb1", LineState::Ended);
    apply(
        &mut core,
        &mut env,
        3,
        SyncPolicy { call_replaces: vec!["available".into(), "AWAY".into()], ..Default::default() },
    );
    assert_eq!(sets(&call(&mut core, &mut env, 3, "sb2", LineState::Connected)).len(), 1, "Away is named now");
}

/// 2027-01-18 (after the tests' T0) is a Monday. 08:00 in Copenhagen (UTC+1 in winter) is 07:00 UTC.
const MONDAY_0700_UTC: u64 = 1_800_255_600_000;

fn office_hours() -> SyncPolicy {
    SyncPolicy {
        working_hours: Some(WorkingHours {
            time_zone: "Europe/Copenhagen".into(),
            days: vec![Weekday::Monday, Weekday::Tuesday, Weekday::Wednesday, Weekday::Thursday, Weekday::Friday],
            start_minute: 8 * 60,
            end_minute: 17 * 60,
        }),
        ..Default::default()
    }
}

#[test]
fn working_hours_follow_the_time_zone_and_its_daylight_saving_time() {
    let w = office_hours().working_hours.unwrap();
    let tz = jiff::tz::TimeZone::get("Europe/Copenhagen").unwrap();
    let hour = 3_600_000;
    assert!(!within_hours(&w, &tz, MONDAY_0700_UTC - 1), "07:59:59 local");
    assert!(within_hours(&w, &tz, MONDAY_0700_UTC), "08:00 local");
    assert!(within_hours(&w, &tz, MONDAY_0700_UTC + 9 * hour - 1), "16:59:59 local");
    assert!(!within_hours(&w, &tz, MONDAY_0700_UTC + 9 * hour), "17:00 local");
    assert!(!within_hours(&w, &tz, MONDAY_0700_UTC - 2 * 24 * hour), "Saturday");
    // Summer time (UTC+2): Monday 2026-06-01 08:00 local is 06:00 UTC.
    let june_monday_0600_utc = 1_780_293_600_000;
    assert!(within_hours(&w, &tz, june_monday_0600_utc));
    assert!(!within_hours(&w, &tz, june_monday_0600_utc - 1));
    // Over midnight: Friday 22:00 to Saturday 06:00.
    let night = WorkingHours { days: vec![Weekday::Friday], start_minute: 22 * 60, end_minute: 6 * 60, ..w };
    let friday_2200_local = MONDAY_0700_UTC + 4 * 24 * hour + 14 * hour;
    assert!(within_hours(&night, &tz, friday_2200_local));
    assert!(within_hours(&night, &tz, friday_2200_local + 7 * hour + 59 * 60_000), "Saturday 05:59");
    assert!(!within_hours(&night, &tz, friday_2200_local + 8 * hour), "Saturday 06:00");
    assert!(!within_hours(&night, &tz, friday_2200_local - 24 * hour), "Thursday 22:00");
}

#[test]
fn nothing_is_pushed_outside_working_hours_and_a_session_ends_with_them() {
    let (mut core, mut env) = synced_pushing(2, 0);
    env.now = MONDAY_0700_UTC - 60_000;
    apply(&mut core, &mut env, 2, office_hours());
    assert!(!core.policy_status(&env).within_working_hours);
    assert!(sets(&call(&mut core, &mut env, 2, "sb1", LineState::Connected)).is_empty(), "07:59: not yet");
    let s = sets(&later(&mut core, &mut env, 2, 60_000));
    assert_eq!(s.len(), 1, "08:00: the call in progress is pushed");
    assert!(s[0].0.ends_with("/setPresence"));
    // The call lasts past 17:00: the session is cleared then, not kept alive.
    let to_1659 = MONDAY_0700_UTC + 9 * 3_600_000 - 30_000 - env.now;
    let s = sets(&later(&mut core, &mut env, 2, to_1659));
    assert!(s.iter().all(|(u, _)| u.ends_with("/setPresence")), "kept alive until then");
    let s = sets(&later(&mut core, &mut env, 2, 30_000));
    assert_eq!(s.len(), 1);
    assert!(s[0].0.ends_with("/clearPresence"), "{s:?}");
    assert!(sets(&later(&mut core, &mut env, 2, 10 * 60_000)).is_empty());
}

#[test]
fn a_dry_run_says_what_a_policy_would_do_to_the_calls_without_doing_it() {
    let (mut core, mut env) = synced_pushing(3, 0);
    call(&mut core, &mut env, 3, "sb1", LineState::Connected);
    call(&mut core, &mut env, 3, "sb2", LineState::Connected);
    let proposed =
        SyncPolicy { do_not_disturb_in_call: true, teams_to_switchboard_only: vec![ms_id(2)], ..Default::default() };
    env.log.clear();
    let mut out = core.dry_run(&mut env, &proposed).unwrap();
    out.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    assert!(core.take_effects().is_empty(), "a dry run does nothing");
    assert_eq!(out.len(), 2, "only the users in a call");
    assert_eq!(
        (out[0].user_id.as_str(), out[0].now, out[0].after),
        ("sb1", CallPresence::InACall, CallPresence::DoNotDisturb)
    );
    assert_eq!((out[1].user_id.as_str(), out[1].now, out[1].after), ("sb2", CallPresence::InACall, CallPresence::None));
    assert!(out[1].reason.contains("Teams to switchboard only"), "{}", out[1].reason);
    assert_eq!(core.policy(), &SyncPolicy::default(), "the policy in force is unchanged");
}

#[test]
fn a_bad_policy_is_refused_with_the_field_and_changes_nothing() {
    let (mut core, mut env) = synced_pushing(2, 0);
    let cases: Vec<(SyncPolicy, &str)> = vec![
        (SyncPolicy { groups: vec!["sales".into()], ..Default::default() }, "groups[0]"),
        (SyncPolicy { excluded_users: vec![" ".into()], ..Default::default() }, "excluded-users[0]"),
        (SyncPolicy { call_replaces: vec!["Busy!".into()], ..Default::default() }, "call-replaces[0]"),
        (
            SyncPolicy {
                working_hours: Some(WorkingHours {
                    time_zone: "Mars/Olympus".into(),
                    days: vec![],
                    start_minute: 0,
                    end_minute: 60,
                }),
                ..Default::default()
            },
            "working-hours.time-zone",
        ),
        (
            SyncPolicy {
                working_hours: Some(WorkingHours {
                    time_zone: "UTC".into(),
                    days: vec![],
                    start_minute: 60,
                    end_minute: 60,
                }),
                ..Default::default()
            },
            "working-hours.end-minute",
        ),
    ];
    for (p, field) in cases {
        match core.set_policy(&mut env, p.clone()) {
            Err(PolicyError::Invalid(m)) => assert!(m.starts_with(&format!("{field}: ")), "{m}"),
            other => panic!("{p:?} gave {other:?}"),
        }
        assert!(core.dry_run(&mut env, &p).is_err());
    }
    assert_eq!(core.policy(), &SyncPolicy::default());
    assert!(!env.stored.contains_key("v1/policy"));
}
