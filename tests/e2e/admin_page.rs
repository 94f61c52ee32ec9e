//! The admin page in a real browser (Debian's Chromium, driven through chromedriver): sign in
//! with the admin token, the integration list, add an integration with the form (+ and ✕ for
//! integration users), see it sync, a refused save, Sync now, Delete; the session cookie's
//! flags, CSRF, and no secret in any page.

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_tests::*;
use fantoccini::{Client, ClientBuilder, Locator};
use graph_emulator::model::TenantSeed;
use presence_demo::{DEMO_SECRET, SECOND_CLIENT, SECOND_TENANT};
use switchboard_sim::Switchboard;

/// A headless Chromium behind its chromedriver; both stop when it drops.
struct Browser {
    client: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

async fn browser() -> Browser {
    for p in [CHROMEDRIVER, CHROMIUM] {
        assert!(
            std::path::Path::new(p).exists(),
            "{p} is missing: the admin page's tests need Debian's chromium and chromium-driver (scripts/test installs them)"
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let driver = tokio::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    // chromedriver listens once it has started: connect until it answers.
    let end = Instant::now() + EVENTUALLY;
    let client = loop {
        match ClientBuilder::rustls()
            .unwrap()
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < end, "chromedriver never answered: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    Browser { client, _driver: driver, _profile: profile }
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.unwrap()
}

async fn fill(c: &Client, css: &str, value: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

/// Clicks an element that stays on the page (a button of the page's script).
async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).click().await.unwrap();
}

/// Clicks an element that loads another page, and waits until the new page is loaded (the
/// old page's root is gone and the new one is complete).
async fn submit(c: &Client, css: &str) {
    let old = c.find(Locator::Css("html")).await.unwrap();
    click(c, css).await;
    let end = Instant::now() + EVENTUALLY;
    loop {
        let gone = old.tag_name().await.is_err();
        let ready =
            c.execute("return document.readyState", vec![]).await.ok().and_then(|v| v.as_str().map(String::from));
        if gone && ready.as_deref() == Some("complete") {
            return;
        }
        assert!(Instant::now() < end, "clicking {css} loaded no page");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reloads until the element's text satisfies `pred` (the page shows the status at load).
async fn reload_until(c: &Client, css: &str, pred: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + EVENTUALLY;
    loop {
        let t = text(c, css).await;
        if pred(&t) {
            return t;
        }
        assert!(Instant::now() < end, "{css} stayed {t:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.refresh().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_adds_checks_and_deletes_an_integration_on_the_admin_page() {
    let t = start(20, 1, |_| {}).await;
    let seed2 = TenantSeed::new(SECOND_TENANT, "fabrikam.example", SECOND_CLIENT, DEMO_SECRET, 20, 1);
    t.emulator.add_tenant(&seed2);
    let fabrikam_sb = Arc::new(Switchboard::new(presence_demo::switchboard_users(&seed2, 20)));
    t.sims.insert("fabrikam-ltd", fabrikam_sb.clone());
    t.wait_status(EVENTUALLY, |s| s.state == "ok" && s.users == 20).await;
    let b = browser().await;
    let c = &b.client;
    let base = t.admin_url("");

    // Signed out, the page sends the browser to the sign-in; a wrong token is refused.
    c.goto(&format!("{base}/ui")).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/ui/login");
    fill(c, "#token", "not-the-token").await;
    submit(c, "button[type=submit]").await;
    assert_eq!(text(c, ".error").await, "Wrong admin token.");
    fill(c, "#token", t.config.host.admin_token.expose()).await;
    submit(c, "button[type=submit]").await;
    assert_eq!(c.current_url().await.unwrap().path(), "/ui");
    let cookie = c.get_named_cookie("tps_session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.same_site().map(|s| s.to_string()).as_deref(), Some("Strict"));

    // The list: Name, Type, Users, Status.
    assert_eq!(text(c, "tr[data-name=contoso] td.users").await, "20");
    assert_eq!(text(c, "tr[data-name=contoso] td.status").await, "✓");

    // The form says how many users are synced (and why others are not); the users list,
    // searchable.
    c.goto(&format!("{base}/ui/integrations/contoso")).await.unwrap();
    let counts = text(c, "#counts").await;
    assert!(counts.starts_with("20 of 20 switchboard users synced (by mail 20)."), "{counts}");
    submit(c, "#users-link").await;
    assert_eq!(c.find_all(Locator::Css("#user-list tbody tr")).await.unwrap().len(), 20);
    fill(c, "#search", "sb-00007").await;
    submit(c, "#search-button").await;
    assert_eq!(text(c, "#user-list tbody tr td.how").await, "mail");
    assert!(text(c, "#paging").await.starts_with("1 user ·"), "{}", text(c, "#paging").await);
    c.goto(&format!("{base}/ui")).await.unwrap();

    // Add an integration: + adds an integration user's row, ✕ removes one.
    submit(c, "#add").await;
    fill(c, "#display_name", "Fabrikam Ltd").await;
    fill(c, "#tenant_id", SECOND_TENANT).await;
    fill(c, "#client_id", SECOND_CLIENT).await;
    fill(c, "#client_secret", DEMO_SECRET).await;
    fill(c, "#users tr:nth-child(1) input[name=username]", &seed2.integration_user(0)).await;
    fill(c, "#users tr:nth-child(1) input[name=password]", &seed2.integration_password).await;
    click(c, "button.add-user").await;
    assert_eq!(c.find_all(Locator::Css("#users tr")).await.unwrap().len(), 2);
    click(c, "#users tr:nth-child(2) button.remove-user").await;
    assert_eq!(c.find_all(Locator::Css("#users tr")).await.unwrap().len(), 1);
    submit(c, "#save").await;
    assert_eq!(c.current_url().await.unwrap().path(), "/ui/integrations/fabrikam-ltd");
    assert_eq!(text(c, ".notice").await, "Saved.");
    reload_until(c, "#status", |s| s.contains('✓')).await;
    assert!(t.wait_until(EVENTUALLY, || fabrikam_sb.all_shown().len() == 20).await);
    // The secret and the password are never in a page; their fields say they are set.
    let html = c.source().await.unwrap();
    assert!(!html.contains(DEMO_SECRET) && !html.contains(&seed2.integration_password));
    let placeholder = c.find(Locator::Css("#client_secret")).await.unwrap().attr("placeholder").await.unwrap();
    assert_eq!(placeholder.as_deref(), Some("set (leave empty to keep)"));
    assert_eq!(c.find(Locator::Css("#client_secret")).await.unwrap().prop("value").await.unwrap().as_deref(), Some(""));

    // A refused save names the field and changes nothing.
    fill(c, "#tenant_id", "not a tenant!").await;
    submit(c, "#save").await;
    assert!(text(c, ".error").await.contains("tenant_id"), "{}", text(c, ".error").await);
    assert_eq!(t.host().registry.entry("fabrikam-ltd").unwrap().config.tenant_id, SECOND_TENANT);

    // Sync now.
    c.goto(&format!("{base}/ui/integrations/fabrikam-ltd")).await.unwrap();
    submit(c, "#sync").await;
    assert_eq!(text(c, ".notice").await, "Directory refresh started.");

    // The list shows it with its users; the form goes through the CSRF check only: the same
    // session without the form's token is refused, and pages are never cached.
    c.goto(&format!("{base}/ui")).await.unwrap();
    reload_until(c, "tr[data-name=fabrikam-ltd] td.users", |u| u == "20").await;
    let session = format!("tps_session={}", c.get_named_cookie("tps_session").await.unwrap().value());
    let http = reqwest::Client::new();
    let page = http.get(format!("{base}/ui")).header("cookie", &session).send().await.unwrap();
    assert_eq!(page.headers()["cache-control"], "no-store");
    let forged = http
        .post(format!("{base}/ui/integrations/fabrikam-ltd"))
        .header("cookie", &session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("action=delete-confirmed")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(t.host().registry.entry("fabrikam-ltd").is_some());

    // Delete, after a confirmation: nothing of it stays at Microsoft or in the switchboard.
    c.goto(&format!("{base}/ui/integrations/fabrikam-ltd")).await.unwrap();
    submit(c, "#delete").await;
    submit(c, "#confirm-delete").await;
    assert_eq!(c.current_url().await.unwrap().path(), "/ui");
    assert!(text(c, ".notice").await.contains("nothing of it is left at Microsoft"));
    assert!(c.find(Locator::Css("tr[data-name=fabrikam-ltd]")).await.is_err());
    assert_eq!(t.emulator.subscriptions().iter().filter(|s| s.client_id == SECOND_CLIENT).count(), 0);
    assert!(fabrikam_sb.all_shown().is_empty());

    // Sign out: the session is gone.
    submit(c, "nav button[type=submit]").await;
    assert_eq!(c.current_url().await.unwrap().path(), "/ui/login");
    let after = http.get(format!("{base}/ui")).header("cookie", &session).send().await.unwrap();
    assert_eq!(after.url().path(), "/ui/login", "the old cookie opens nothing");
    b.client.close().await.unwrap();
}

async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/ui/login")).await.unwrap();
    fill(c, "#token", token).await;
    submit(c, "button[type=submit]").await;
    assert_eq!(c.current_url().await.unwrap().path(), "/ui");
}

/// The product guide's default: "Manual client setup" off. On Save the browser goes to
/// Microsoft's admin consent (the emulator's) and comes back to the page: a declined consent
/// shows its code and what to do; once granted, the integration signs in with the host's own
/// app and syncs. A consent answer this host did not ask for is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_automated_setup_sends_the_admin_to_microsofts_consent_and_back() {
    let t = start(20, 1, |o| o.platform_app = true).await;
    let seed2 = TenantSeed::new(SECOND_TENANT, "fabrikam.example", SECOND_CLIENT, DEMO_SECRET, 20, 1);
    t.emulator.add_tenant(&seed2);
    t.emulator.with_tenant(SECOND_TENANT, |tenant| tenant.refuse_consent = true);
    let fabrikam_sb = Arc::new(Switchboard::new(presence_demo::switchboard_users(&seed2, 20)));
    t.sims.insert("fabrikam", fabrikam_sb.clone());
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    let b = browser().await;
    let c = &b.client;
    let base = t.admin_url("");
    sign_in(c, &base, t.config.host.admin_token.expose()).await;

    submit(c, "#add").await;
    let manual = c.find(Locator::Css("#manual")).await.unwrap();
    assert!(!manual.is_selected().await.unwrap(), "the automated setup is the default");
    fill(c, "#display_name", "Fabrikam").await;
    fill(c, "#tenant_id", SECOND_TENANT).await;
    fill(c, "#users tr:nth-child(1) input[name=username]", &seed2.integration_user(0)).await;
    fill(c, "#users tr:nth-child(1) input[name=password]", &seed2.integration_password).await;
    // Save sends the browser to Microsoft, whose admin declines here.
    submit(c, "#save").await;
    assert_eq!(c.current_url().await.unwrap().path(), "/ui/consent");
    let declined = text(c, "#consent-result").await;
    assert!(declined.contains("AADSTS65004") && declined.contains("choose Accept"), "{declined}");
    assert_eq!(t.host().registry.entry("fabrikam").unwrap().config.client_id, presence_demo::PLATFORM_CLIENT);

    // Asked again, the admin accepts: it signs in with the host's app and syncs.
    t.emulator.with_tenant(SECOND_TENANT, |tenant| tenant.refuse_consent = false);
    submit(c, "#continue").await;
    submit(c, "#consent").await;
    assert_eq!(c.current_url().await.unwrap().path(), "/ui/consent");
    assert!(text(c, "#consent-result").await.contains("Admin consent granted"));
    submit(c, "#continue").await;
    reload_until(c, "#status", |s| s.contains('✓')).await;
    assert!(t.wait_until(EVENTUALLY, || fabrikam_sb.all_shown().len() == 20).await);
    let html = c.source().await.unwrap();
    assert!(!html.contains(presence_demo::PLATFORM_SECRET));

    // An answer with a state this host never made (or one used already) changes nothing.
    let forged = reqwest::get(format!("{base}/ui/consent?admin_consent=True&tenant={SECOND_TENANT}&state=0123abcd"))
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    b.client.close().await.unwrap();
}

/// An integration user with MFA: "Sign in (MFA)" on its row shows the device code and where
/// to enter it; once the user signed in, the page says so and the integration works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mfa_user_is_signed_in_from_the_page_with_a_device_code() {
    let t = start(10, 1, |o| o.mfa_users = vec![0]).await;
    t.wait_status(EVENTUALLY, |s| s.state == "error").await;
    let b = browser().await;
    let c = &b.client;
    let base = t.admin_url("");
    sign_in(c, &base, t.config.host.admin_token.expose()).await;
    c.goto(&format!("{base}/ui/integrations/contoso")).await.unwrap();
    assert!(text(c, "#status").await.contains("AADSTS50076"), "{}", text(c, "#status").await);
    submit(c, "#users button.sign-in").await;
    let code = text(c, "#user-code").await;
    assert!(!code.is_empty());
    let upn = t.seed.integration_user(0);
    assert!(t.emulator.answer_device_code(&code, &upn, true));
    let end = Instant::now() + EVENTUALLY;
    loop {
        submit(c, "#check").await;
        if let Ok(r) = c.find(Locator::Css("#sign-in-result")).await {
            assert!(r.text().await.unwrap().contains("Signed in"));
            break;
        }
        assert!(Instant::now() < end, "never signed in");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    submit(c, "#continue").await;
    reload_until(c, "#status", |s| s.contains('✓')).await;
    b.client.close().await.unwrap();
}

/// The "Sync policy" part of the form: an operator excludes a user and sets working hours; a
/// bad time zone is refused naming the field (nothing changes); the saved policy applies (the
/// excluded user is withdrawn) and shows again in the form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_edits_the_sync_policy_on_the_admin_page() {
    let t = start(10, 1, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert!(t.wait_in_sync(10, EVENTUALLY).await.is_empty());
    let b = browser().await;
    let c = &b.client;
    let base = t.admin_url("");
    sign_in(c, &base, t.config.host.admin_token.expose()).await;
    c.goto(&format!("{base}/ui/integrations/contoso")).await.unwrap();
    fill(c, "#policy_excluded", &format!("sb-00003\n{}", t.seed.user_email(5))).await;
    fill(c, "#policy_time_zone", "Europe/Nowhere").await;
    fill(c, "#policy_start", "08:00").await;
    fill(c, "#policy_end", "17:00").await;
    click(c, "#working-hours input[value=mon]").await;
    click(c, "#policy_dnd").await;
    submit(c, "#save").await;
    let refused = text(c, ".error").await;
    assert!(refused.contains("policy.working_hours.time_zone"), "{refused}");
    assert!(t.host().registry.entry("contoso").unwrap().config.policy.is_default(), "nothing saved");
    // What the operator typed is still there; the time zone corrected, it saves.
    assert!(c.find(Locator::Css("#policy_dnd")).await.unwrap().is_selected().await.unwrap());
    fill(c, "#policy_time_zone", "Europe/Copenhagen").await;
    submit(c, "#save").await;
    let policy = t.host().registry.entry("contoso").unwrap().config.policy;
    assert_eq!(policy.excluded_users, vec!["sb-00003".to_string(), t.seed.user_email(5)]);
    assert!(policy.do_not_disturb_in_call);
    let hours = policy.working_hours.expect("working hours");
    assert_eq!(
        (hours.time_zone.as_str(), hours.start.as_str(), hours.end.as_str()),
        ("Europe/Copenhagen", "08:00", "17:00")
    );
    assert_eq!(hours.days, vec!["mon".to_string()]);
    assert!(
        t.wait_until(EVENTUALLY, || t.switchboard.shown("sb-00003").is_none()
            && t.switchboard.shown("sb-00005").is_none())
            .await,
        "the excluded users are withdrawn"
    );
    c.goto(&format!("{base}/ui/integrations/contoso")).await.unwrap();
    let line = reload_until(c, "#policy-status", |t| t.contains("2 excluded")).await;
    assert!(line.contains("8 in scope"), "{line}");
    let excluded =
        c.find(Locator::Css("#policy_excluded")).await.unwrap().prop("value").await.unwrap().unwrap_or_default();
    assert_eq!(excluded, format!("sb-00003\n{}", t.seed.user_email(5)));
    b.client.close().await.unwrap();
}
