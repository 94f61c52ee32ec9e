//! The "Teams Presence users" list and the counts that explain "OK, but 0 users", through the
//! admin API: how each switchboard user was matched, or why not; search, filters, paging.

use e2e_tests::*;
use switchboard_sim::User;

fn user(id: &str, emails: &[&str]) -> User {
    User {
        id: id.into(),
        name: format!("Zz {id}"),
        emails: emails.iter().map(|e| e.to_string()).collect(),
        line_number: None,
        active: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_list_names_every_user_how_it_was_matched_or_why_not() {
    let t = start(20, 1, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok" && s.users == 20).await;
    // Four switchboard users that cannot be synced, each for its own reason.
    let shared = t.seed.user_email(25);
    t.switchboard
        .change(
            vec![
                user("sb-noaddr", &[]),
                user("sb-nomatch", &["nobody@elsewhere.example"]),
                user("sb-twin-a", &[&shared]),
                user("sb-twin-b", &[&shared]),
            ],
            &[],
        )
        .unwrap();
    t.wait_status(EVENTUALLY, |s| s.switchboard_users == 24 && !s.conflicts.is_empty()).await;

    let users = |q: &str| {
        let url = t.admin_url(&format!("/integrations/contoso/users{q}"));
        let client = t.admin_client();
        async move {
            let r = client.get(url).send().await.unwrap();
            let code = r.status().as_u16();
            (code, serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap_or_default())
        }
    };
    let (code, all) = users("").await;
    assert_eq!(code, 200, "{all}");
    let c = &all["counts"];
    assert_eq!(
        (c["switchboard_users"].as_u64(), c["mapped"].as_u64(), c["by_mail"].as_u64()),
        (Some(24), Some(20), Some(20)),
        "{c}"
    );
    assert_eq!(
        (c["no_address"].as_u64(), c["no_match"].as_u64(), c["conflict"].as_u64()),
        (Some(1), Some(1), Some(2)),
        "{c}"
    );
    assert_eq!(c["passive"], 4, "every fifth seeded user has no line");
    assert_eq!((all["total"].as_u64(), all["rows"].as_array().unwrap().len()), (Some(24), 24));

    let (_, unmatched) = users("?filter=unmatched").await;
    let why: Vec<(&str, &str)> = unmatched["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["switchboard_user_id"].as_str().unwrap(), r["unmatched"].as_str().unwrap()))
        .collect();
    assert_eq!(
        why,
        [("sb-noaddr", "no-address"), ("sb-nomatch", "no-match"), ("sb-twin-a", "conflict"), ("sb-twin-b", "conflict")]
    );
    assert_eq!(unmatched["rows"][2]["conflict"], shared.to_lowercase());

    let (_, one) = users("?search=SB-00003").await;
    assert_eq!(one["total"], 1);
    let r = &one["rows"][0];
    assert_eq!(
        (r["matched_by"].as_str(), r["microsoft_user_id"].as_str()),
        (Some("mail"), Some(t.ms_user(3).as_str()))
    );
    assert_eq!(r["integration_user"], t.seed.integration_user(0));
    assert!(r["presence"][0].is_string(), "{r}");

    // Pages, sorted by name: the seeded users first ("User 00000" ...), then "Zz ...".
    let (_, p) = users("?offset=18&limit=4").await;
    let ids: Vec<&str> =
        p["rows"].as_array().unwrap().iter().map(|r| r["switchboard_user_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["sb-00018", "sb-00019", "sb-noaddr", "sb-nomatch"]);
    assert_eq!(p["total"], 24);

    for bad in ["?limit=0", "?limit=501", "?filter=bogus", "?offset=-1"] {
        assert_eq!(users(bad).await.0, 400, "{bad}");
    }
    assert_eq!(users("").await.0, 200);
    let other = t.admin_client().get(t.admin_url("/integrations/nope/users")).send().await.unwrap();
    assert_eq!(other.status(), 404);
    // The integration's own answer carries the counts too.
    let shown = t.admin_json("/integrations/contoso").await;
    assert_eq!(shown["mapping"]["no_match"], 1, "{shown}");
}
