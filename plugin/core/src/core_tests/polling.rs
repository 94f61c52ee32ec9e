//! Polling: an integration without integration users, and the users beyond 650 per
//! integration user, have their presence read with the app's token, paced and budgeted.

use super::*;

fn poll_requests(effects: &[Effect]) -> Vec<HttpRequest> {
    requests(effects).into_iter().map(|(_, r)| r).filter(|r| r.url.ends_with("/getPresencesByUserId")).collect()
}

fn ids_of(r: &HttpRequest) -> usize {
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    body["ids"].as_array().unwrap().len()
}

/// Answers requests until none is pending: `special` first, else like Graph for a tenant of
/// three users (tokens, login documents, directory).
fn answer_with(
    core: &mut Core,
    env: &mut FakeEnv,
    mut effects: Vec<Effect>,
    special: &mut dyn FnMut(&HttpRequest) -> Option<Result<HttpResponse, HttpError>>,
) {
    loop {
        let reqs = requests(&effects);
        if reqs.is_empty() {
            return;
        }
        for (id, r) in reqs {
            let resp = if let Some(resp) = special(&r) {
                resp
            } else if r.url.ends_with("/oauth2/v2.0/token") {
                ok(200, serde_json::json!({"access_token": "tok", "expires_in": 3599}))
            } else if let Some(resp) = login_documents(&r) {
                resp
            } else {
                let users =
                    (0..3).map(|i| serde_json::json!({"id": ms_id(i), "mail": format!("U{i}@x.com")})).collect();
                directory_answer(&r, users)
            };
            core.on_http_response(env, id, resp);
        }
        effects = core.take_effects();
    }
}

#[test]
fn the_interval_adapts_to_the_users_within_the_polling_budget() {
    assert_eq!(poll_interval_ms(1), MIN_POLL_INTERVAL_MS);
    assert_eq!(poll_interval_ms(10_000), MIN_POLL_INTERVAL_MS, "16 requests per round");
    // 200,000 users: 308 requests per round at most 1,000 per 30 s.
    assert_eq!(poll_interval_ms(200_000), 9_240);
    for users in [1usize, 650, 651, 10_000, 100_000, 500_000] {
        let per_window = users.div_ceil(650) as u64 * PRESENCE_WINDOW_MS / poll_interval_ms(users);
        assert!(per_window <= POLL_BUDGET as u64, "{users} users: {per_window} requests per window");
    }
}

#[test]
fn without_integration_users_every_mapped_user_is_polled_with_the_apps_token_paced_over_the_interval() {
    let mut env = env(1_300);
    let mut core = Core::new();
    core.configure(&mut env, settings(0)).unwrap();
    let effects = core.take_effects();
    env.log.clear();
    let (published, created) = run_graph(&mut core, &mut env, 1_300, effects);
    assert!(created.is_empty(), "no subscription");
    let polls = poll_requests(&env.log);
    assert_eq!(polls.len(), 1, "the round's second request waits for its turn");
    assert_eq!(ids_of(&polls[0]), 650);
    assert!(polls[0].headers.iter().any(|(k, v)| k == "authorization" && v == "Bearer tok-client_credentials"));
    assert_eq!(published.len(), 650);
    assert_eq!(core.status(&env).health, Health::Starting, "until the first round is complete");
    // Half the interval later: the second request, and the round is complete.
    let effects = later(&mut core, &mut env, 1_300, MIN_POLL_INTERVAL_MS / 2);
    let polls = poll_requests(&effects);
    assert_eq!(polls.iter().map(ids_of).collect::<Vec<_>>(), vec![650]);
    assert_eq!(publishes(&effects).len(), 650);
    let st = core.status(&env);
    assert_eq!((st.health, st.mapped_users, st.uncovered_users), (Health::Ok, 1_300, 0));
    let p = core.policy_status(&env).polling;
    assert_eq!((p.users, p.interval_ms, p.rounds), (1_300, MIN_POLL_INTERVAL_MS, 1));
    // The next round starts one interval after the first began, not sooner.
    assert!(poll_requests(&later(&mut core, &mut env, 1_300, MIN_POLL_INTERVAL_MS / 2 - 100)).is_empty());
    assert_eq!(poll_requests(&later(&mut core, &mut env, 1_300, 100)).len(), 1);
}

#[test]
fn with_too_few_integration_users_those_beyond_are_polled() {
    let mut env = env(700);
    let mut core = Core::new();
    let mut s = settings(1);
    s.push_line_status = true;
    core.configure(&mut env, s).unwrap();
    let effects = core.take_effects();
    env.log.clear();
    let (published, created) = run_graph(&mut core, &mut env, 700, effects);
    assert_eq!(created.len(), 1);
    let polls = poll_requests(&env.log);
    // The subscription's snapshot (650) and one polling request (50).
    assert!(polls.iter().any(|r| ids_of(r) == 50), "{:?}", polls.iter().map(ids_of).collect::<Vec<_>>());
    assert_eq!(published.len(), 700, "everyone shows");
    let st = core.status(&env);
    assert_eq!((st.health, st.uncovered_users, st.integration_users_needed), (Health::Ok, 0, 1));
    assert_eq!(core.policy_status(&env).polling.users, 50);
}

#[test]
fn without_the_read_permission_polling_stops_and_says_which_permission() {
    let mut env = env(3);
    let mut core = Core::new();
    core.configure(&mut env, settings(0)).unwrap();
    let effects = core.take_effects();
    // Answer like Graph, but polling is refused.
    answer_with(&mut core, &mut env, effects, &mut |r| {
        r.url
            .ends_with("getPresencesByUserId")
            .then(|| ok(403, serde_json::json!({"error": {"code": "Forbidden", "message": "Insufficient privileges"}})))
    });
    let st = core.status(&env);
    match &st.health {
        Health::Error(p) => assert!(p.hint.contains("Presence.Read.All"), "{p:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(st.uncovered_users, 3);
    // Not retried before its time (15 minutes).
    env.now += 60_000;
    core.tick(&mut env);
    assert!(poll_requests(&core.take_effects()).is_empty());
}

#[test]
fn a_polling_answer_that_pages_is_followed_before_the_round_moves_on() {
    let mut env = env(3);
    let mut core = Core::new();
    core.configure(&mut env, settings(0)).unwrap();
    let effects = core.take_effects();
    let mut followed = 0;
    answer_with(&mut core, &mut env, effects, &mut |r| {
        if r.url.ends_with("getPresencesByUserId") {
            let first = serde_json::json!({"id": ms_id(0), "availability": "Away", "activity": "Away"});
            let next = "https://graph.test/v1.0/communications/presences?$skiptoken=2";
            Some(ok(200, serde_json::json!({"value": [first], "@odata.nextLink": next})))
        } else if r.url.contains("$skiptoken=2") {
            followed += 1;
            let rest: Vec<_> = (1..3)
                .map(|i| serde_json::json!({"id": ms_id(i), "availability": "Busy", "activity": "Busy"}))
                .collect();
            Some(ok(200, serde_json::json!({ "value": rest })))
        } else {
            None
        }
    });
    assert_eq!(followed, 1);
    assert_eq!(core.policy_status(&env).polling.rounds, 1);
    assert_eq!(core.presence_of(&ms_id(2)).map(|p| p.availability).as_deref(), Some("Busy"));
}
