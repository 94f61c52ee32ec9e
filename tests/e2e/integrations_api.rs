//! Integrations at run time through the admin API: create, change, delete, list, without a
//! restart; a delete leaves nothing at Microsoft and nothing shown in the switchboard; what
//! the API changes survives a restart and wins over the file.

use std::time::Duration;

use e2e_tests::*;
use presence_demo::{DEMO_SECRET, SECOND_CLIENT, SECOND_TENANT, Scenario};
use presence_host::StatusView;
use reqwest::Method;
use serde_json::json;

/// An admin API call: status, JSON body (`null` if none) and the raw text.
async fn api(
    t: &Scenario,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value, String) {
    let mut r = t.admin_client().request(method, t.admin_url(path));
    if let Some(b) = body {
        r = r.header("content-type", "application/json").body(b.to_string());
    }
    let r = r.send().await.expect("admin request");
    let code = r.status().as_u16();
    let text = r.text().await.expect("body");
    (code, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null), text)
}

/// Waits until integration `name`'s status satisfies `pred`.
async fn wait_for(t: &Scenario, name: &str, pred: impl Fn(&StatusView) -> bool) -> StatusView {
    let end = std::time::Instant::now() + EVENTUALLY;
    loop {
        let s = match t.host().integration(name) {
            Some(h) => h.status().await.ok(),
            None => None,
        };
        if let Some(s) = &s
            && pred(s)
        {
            return s.clone();
        }
        assert!(std::time::Instant::now() < end, "{name} never got there: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Microsoft user `i` of the second tenant.
fn second_user(t: &Scenario, i: usize) -> String {
    t.emulator.with_world(|w| {
        let k = w.tenant_key(SECOND_TENANT).unwrap();
        w.tenants[&k].users[i].id.clone()
    })
}

fn subscriptions_of(t: &Scenario, client: &str) -> usize {
    t.emulator.subscriptions().iter().filter(|s| s.client_id == client).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrations_are_created_changed_and_deleted_at_run_time_and_a_delete_leaves_nothing_behind() {
    let mut t = start(20, 1, |o| o.second_integration = Some("fabrikam".into())).await;
    let fabrikam_sb = t.second_switchboard.clone().unwrap();
    let seed2 = t.second_seed.clone().unwrap();
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert!(t.wait_in_sync(20, EVENTUALLY).await.is_empty());
    wait_for(&t, "fabrikam", |s| s.state == "ok").await;
    assert!(t.wait_until(EVENTUALLY, || fabrikam_sb.all_shown().len() == 20).await);

    // The list: both, from the file, secrets only as "set".
    let (code, list, text) = api(&t, Method::GET, "/integrations", None).await;
    assert_eq!(code, 200, "{text}");
    let names: Vec<&str> =
        list["integrations"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["contoso", "fabrikam"]);
    let fab = &list["integrations"][1];
    assert_eq!((fab["source"].as_str(), fab["client_secret"].as_str()), (Some("file"), Some("set")));
    assert_eq!(fab["users"][0]["password"], "set");
    assert_eq!(fab["status"]["state"], "ok");
    for secret in [DEMO_SECRET, seed2.integration_password.as_str(), t.seed.integration_password.as_str()] {
        assert!(!text.contains(secret), "a secret in the list");
    }

    // A fabrikam user in a call: "In a call" in Teams.
    let caller = second_user(&t, 1);
    let (code, _, text) =
        api(&t, Method::POST, "/switchboard/fabrikam/users/sb-00001/line-events", Some(json!({"state": "connected"})))
            .await;
    assert_eq!(code, 202, "{text}");
    // Our session's id is the app's client id (the user's own Teams client has one of its own).
    let ours = || t.emulator.sessions(SECOND_TENANT, &caller).contains_key(SECOND_CLIENT);
    assert!(t.wait_until(EVENTUALLY, ours).await);
    let webhook = t.host().integration("fabrikam").unwrap().webhook_path("notifications");

    // Delete: every subscription deleted at Microsoft, the session cleared, the users
    // withdrawn, the webhook gone; contoso never noticed.
    assert_eq!(subscriptions_of(&t, SECOND_CLIENT), 1);
    let (code, report, text) = api(&t, Method::DELETE, "/integrations/fabrikam", None).await;
    assert_eq!(code, 200, "{text}");
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["retired"]["users_withdrawn"], 20, "{report}");
    assert_eq!(subscriptions_of(&t, SECOND_CLIENT), 0, "no subscription of the deleted integration's app is left");
    assert!(!ours(), "no session of ours is left");
    assert!(fabrikam_sb.all_shown().is_empty(), "its users show no Teams presence any more");
    let url = format!("http://{}{webhook}", t.config.host.listen);
    assert_eq!(post(&url, "application/json", br#"{"value":[]}"#.to_vec()).await.0, 404);
    assert_eq!(api(&t, Method::GET, "/integrations/fabrikam", None).await.0, 404);
    assert_eq!(api(&t, Method::DELETE, "/integrations/fabrikam", None).await.0, 404);
    t.emulator.set_presence(&t.seed.tenant_id, &t.ms_user(3), "Away", "Away", false);
    assert!(
        t.wait_until(EVENTUALLY, || t.switchboard.shown("sb-00003").is_some_and(|p| p.availability == "Away")).await
    );

    // Bad input is refused, naming the field, and changes nothing.
    let spec = |secret: Option<&str>, password: Option<&str>| {
        let mut s = json!({
            "display_name": "Fabrikam Ltd",
            "tenant_id": SECOND_TENANT,
            "client_id": SECOND_CLIENT,
            "users": [{"username": seed2.integration_user(0)}],
            "push_line_status": true,
        });
        if let Some(v) = secret {
            s["client_secret"] = json!(v);
        }
        if let Some(p) = password {
            s["users"][0]["password"] = json!(p);
        }
        s
    };
    let named = |mut s: serde_json::Value, name: &str| {
        s["name"] = json!(name);
        s
    };
    for (body, code, field) in [
        (json!({"name": "x", "bogus": 1}), 400, None),
        (named(spec(None, None), "Not A Name"), 422, Some("name")),
        (json!({"tenant_id": SECOND_TENANT}), 422, Some("name")),
        (
            {
                let mut s = named(spec(None, None), "fabrikam");
                s["tenant_id"] = json!("not a tenant!");
                s
            },
            422,
            Some("tenant_id"),
        ),
        (
            {
                let mut s = named(spec(None, None), "fabrikam");
                s["tenant_id"] = json!(t.seed.tenant_id);
                s["client_id"] = json!(t.config.integrations[0].client_id);
                s
            },
            422,
            Some("client_id"),
        ),
        (named(spec(None, None), "contoso"), 409, None),
    ] {
        let (c, v, text) = api(&t, Method::POST, "/integrations", Some(body.clone())).await;
        assert_eq!(c, code, "{body}: {text}");
        if let Some(f) = field {
            assert_eq!(v["field"], f, "{body}: {text}");
        }
    }
    assert_eq!(t.host().integrations().len(), 1);

    // Two creates of one name at once: one is created, the other refused; never two.
    let twice = named(spec(Some("wrong-secret"), Some(&seed2.integration_password)), "race");
    let (a, b) = tokio::join!(
        api(&t, Method::POST, "/integrations", Some(twice.clone())),
        api(&t, Method::POST, "/integrations", Some(twice))
    );
    let mut codes = [a.0, b.0];
    codes.sort();
    assert_eq!(codes, [201, 409], "{} / {}", a.2, b.2);
    assert_eq!(api(&t, Method::DELETE, "/integrations/race", None).await.0, 200);

    // Created again through the API, with a wrong secret: the status shows Entra's code.
    let (code, created, text) = api(
        &t,
        Method::POST,
        "/integrations",
        Some(named(spec(Some("wrong-secret"), Some(&seed2.integration_password)), "fabrikam")),
    )
    .await;
    assert_eq!(code, 201, "{text}");
    assert_eq!(
        (created["source"].as_str(), created["display_name"].as_str()),
        (Some("admin-api"), Some("Fabrikam Ltd"))
    );
    assert!(!text.contains("wrong-secret") && !text.contains(&seed2.integration_password));
    let s = wait_for(&t, "fabrikam", |s| s.state == "error").await;
    assert_eq!(s.code.as_deref(), Some("AADSTS7000215"), "{s:?}");

    // The right secret, nothing else sent again (the password is kept): it recovers, no restart.
    let (code, changed, text) =
        api(&t, Method::PUT, "/integrations/fabrikam", Some(spec(Some(DEMO_SECRET), None))).await;
    assert_eq!(code, 200, "{text}");
    assert_eq!(changed["users"][0]["password"], "set");
    wait_for(&t, "fabrikam", |s| s.state == "ok").await;
    assert!(t.wait_until(EVENTUALLY, || fabrikam_sb.all_shown().len() == 20).await);
    assert_eq!(subscriptions_of(&t, SECOND_CLIENT), 1);

    // The stored integration is sealed: no secret of it is on disk in clear.
    let dir = t.config.host.state_dir.clone();
    let mut on_disk = Vec::new();
    for f in ["state.db", "state.db-wal"] {
        on_disk.extend(std::fs::read(dir.join(f)).unwrap_or_default());
    }
    for secret in [DEMO_SECRET, seed2.integration_password.as_str()] {
        assert!(!on_disk.windows(secret.len()).any(|w| w == secret.as_bytes()), "a secret in clear at rest");
    }
    assert!(on_disk.windows(8).any(|w| w == b"fabrikam"), "the record is there (sealed)");

    // A restart keeps what the API did: fabrikam as the API left it, and once deleted
    // through the API it stays deleted although the file still names it.
    t.restart_host().await.unwrap();
    let (_, list, _) = api(&t, Method::GET, "/integrations", None).await;
    assert_eq!(list["integrations"][1]["source"], "admin-api", "{list}");
    assert_eq!(list["integrations"][1]["display_name"], "Fabrikam Ltd", "{list}");
    wait_for(&t, "fabrikam", |s| s.state == "ok").await;
    let (code, report, _) = api(&t, Method::DELETE, "/integrations/fabrikam", None).await;
    assert_eq!((code, &report["complete"]), (200, &json!(true)), "{report}");
    t.restart_host().await.unwrap();
    assert_eq!(api(&t, Method::GET, "/integrations/fabrikam", None).await.0, 404);
    assert!(t.config.integrations.iter().any(|i| i.name == "fabrikam"), "the file still names it");
    assert_eq!(subscriptions_of(&t, SECOND_CLIENT), 0);
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
}
