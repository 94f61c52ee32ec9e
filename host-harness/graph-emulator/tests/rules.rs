//! The emulator enforces Graph's and Entra's documented rules, so the plugin is never tested
//! against a shortcut. These tests talk to the emulator directly, as a client of Microsoft's
//! would.

use std::sync::Arc;

use graph_emulator::{Clock, Emulator, SystemClock, TenantSeed};

/// A tenant, its app registration and the app's secret.
const DEMO_TENANT: &str = "5db68c59-bbeb-41d7-a5df-b316a4434048";
const DEMO_CLIENT: &str = "0ed2fcf1-b202-4699-afe4-cbc36ead3235";
const DEMO_SECRET: &str = "emulator-secret-value";
use serde_json::{Value, json};

struct Emu {
    base: String,
    seed: TenantSeed,
    emu: Emulator,
    http: reqwest::Client,
}

async fn emu(users: usize) -> Emu {
    let emu = Emulator::new(Arc::new(SystemClock));
    let seed = TenantSeed::new(DEMO_TENANT, "contoso.example", DEMO_CLIENT, DEMO_SECRET, users, 2);
    emu.add_tenant(&seed);
    let base = emu.start().await.unwrap();
    Emu { base, seed, emu, http: reqwest::Client::new() }
}

impl Emu {
    async fn token_raw(&self, tenant: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/{tenant}/oauth2/v2.0/token", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), serde_json::from_str(&r.text().await.unwrap()).unwrap())
    }
    async fn app_token(&self) -> String {
        let (s, v) = self
            .token_raw(
                DEMO_TENANT,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", DEMO_CLIENT),
                    ("client_secret", DEMO_SECRET),
                    ("scope", "https://graph.microsoft.com/.default"),
                ],
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["access_token"].as_str().unwrap().to_string()
    }
    async fn user_token(&self, n: usize) -> String {
        let user = self.seed.integration_user(n);
        let (s, v) = self
            .token_raw(
                DEMO_TENANT,
                &[
                    ("grant_type", "password"),
                    ("client_id", DEMO_CLIENT),
                    ("client_secret", DEMO_SECRET),
                    ("scope", "https://graph.microsoft.com/Presence.Read.All"),
                    ("username", &user),
                    ("password", &self.seed.integration_password),
                ],
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["access_token"].as_str().unwrap().to_string()
    }
    async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut rb = self.http.request(method.parse().unwrap(), format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(b) = body {
            rb = rb.header("content-type", "application/json").body(b.to_string());
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
    fn ids(&self, n: usize) -> Vec<String> {
        self.emu.with_world(|w| w.tenants.values().next().unwrap().users.iter().take(n).map(|u| u.id.clone()).collect())
    }
}

fn code(v: &Value) -> u64 {
    v["error_codes"][0].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_answers_with_entra_error_codes() {
    let e = emu(3).await;
    let cc = |secret: &'static str, client: &'static str| {
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("client_secret", secret),
            ("scope", "https://graph.microsoft.com/.default"),
        ]
    };
    let (s, v) = e.token_raw(DEMO_TENANT, &cc("wrong", DEMO_CLIENT)).await;
    assert_eq!((s, code(&v), v["error"].as_str()), (401, 7000215, Some("invalid_client")));
    assert!(v["error_description"].as_str().unwrap().starts_with("AADSTS7000215:"));
    let (_, v) = e.token_raw(DEMO_TENANT, &cc(DEMO_SECRET, "11111111-1111-1111-1111-111111111111")).await;
    assert_eq!(code(&v), 700016);
    let (_, v) = e.token_raw("99999999-9999-9999-9999-999999999999", &cc(DEMO_SECRET, DEMO_CLIENT)).await;
    assert_eq!(code(&v), 90002);
    let (_, v) = e.token_raw("not a tenant", &cc(DEMO_SECRET, DEMO_CLIENT)).await;
    assert_eq!(code(&v), 900023);
    let user = e.seed.integration_user(0);
    let ropc = |pw: &'static str| -> Vec<(&str, String)> {
        vec![
            ("grant_type", "password".into()),
            ("client_id", DEMO_CLIENT.into()),
            ("client_secret", DEMO_SECRET.into()),
            ("scope", "https://graph.microsoft.com/Presence.Read.All".into()),
            ("username", user.clone()),
            ("password", pw.into()),
        ]
    };
    let as_ref = |v: &Vec<(&'static str, String)>| v.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>();
    let form = as_ref(&ropc("bad"));
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (s, v) = e.token_raw(DEMO_TENANT, &form).await;
    assert_eq!((s, code(&v)), (400, 50126));
    e.emu.with_world(|w| w.tenants.values_mut().next().unwrap().user_by_upn(&user).unwrap().mfa_required = true);
    let good = as_ref(&ropc("Integration-Passw0rd!"));
    let good: Vec<(&str, &str)> = good.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_, v) = e.token_raw(DEMO_TENANT, &good).await;
    assert_eq!(code(&v), 50076);
    e.emu.with_world(|w| {
        let t = w.tenants.values_mut().next().unwrap();
        t.user_by_upn(&user).unwrap().mfa_required = false;
        t.apps.values_mut().next().unwrap().delegated_consent = false;
    });
    let (_, v) = e.token_raw(DEMO_TENANT, &good).await;
    assert_eq!(code(&v), 65001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_page_with_next_link_and_reject_top_over_999() {
    let e = emu(250).await;
    let t = e.app_token().await;
    let (s, v) = e.call("GET", "/v1.0/users?$select=id,mail&$top=1000", &t, None).await;
    assert_eq!(s, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("between 1 and 999"));
    // Default page size 100, following the whole nextLink.
    let (s, v) = e.call("GET", "/v1.0/users?$select=id,mail", &t, None).await;
    assert_eq!(s, 200);
    assert_eq!(v["value"].as_array().unwrap().len(), 100);
    assert!(v["value"][0].get("displayName").is_none(), "$select is honoured");
    let mut seen = v["value"].as_array().unwrap().len();
    let mut next = v["@odata.nextLink"].as_str().map(str::to_string);
    while let Some(n) = next {
        let path = n.strip_prefix(&e.base).unwrap().to_string();
        let (_, v) = e.call("GET", &path, &t, None).await;
        seen += v["value"].as_array().unwrap().len();
        next = v["@odata.nextLink"].as_str().map(str::to_string);
    }
    assert_eq!(seen, 252, "250 users + 2 integration users");
    // A delegated token without User.Read.All application permission is refused.
    let d = e.user_token(0).await;
    let (s, v) = e.call("GET", "/v1.0/users", &d, None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("Authorization_RequestDenied")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reads_take_at_most_650_ids() {
    let e = emu(700).await;
    let d = e.user_token(0).await;
    let (s, _) =
        e.call("POST", "/v1.0/communications/getPresencesByUserId", &d, Some(json!({"ids": e.ids(651)}))).await;
    assert_eq!(s, 400);
    let (s, v) =
        e.call("POST", "/v1.0/communications/getPresencesByUserId", &d, Some(json!({"ids": e.ids(650)}))).await;
    assert_eq!(s, 200);
    assert_eq!(v["value"].as_array().unwrap().len(), 650);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_follow_the_presence_rules() {
    let e = emu(700).await;
    let app = e.app_token().await;
    let d0 = e.user_token(0).await;
    // A webhook that answers the validation handshake.
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", hook.local_addr().unwrap());
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(|q: axum::extract::Query<std::collections::HashMap<String, String>>| async move {
            q.get("validationToken").cloned().unwrap_or_default()
        }),
    );
    tokio::spawn(async move { axum::serve(hook, router).await.unwrap() });
    let cert = {
        let kp = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
        let c = rcgen::CertificateParams::new(vec!["x".into()]).unwrap().self_signed(&kp).unwrap();
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(c.der())
    };
    let exp = |mins: u64| graph_emulator::wire::graph_time(SystemClock.now_ms() + mins * 60_000);
    let body = |ids: &[String], mins: u64, url: &str| {
        json!({
            "changeType": "updated", "notificationUrl": url,
            "resource": format!("/communications/presences?$filter=id in ({})", ids.iter().map(|i| format!("'{i}'")).collect::<Vec<_>>().join(",")),
            "expirationDateTime": exp(mins), "clientState": "x", "includeResourceData": true,
            "encryptionCertificate": cert, "encryptionCertificateId": "c1",
        })
    };
    let ids = e.ids(700);
    // Application tokens cannot subscribe to presence.
    let (s, _) = e.call("POST", "/v1.0/subscriptions", &app, Some(body(&ids[..10], 30, &hook_url))).await;
    assert_eq!(s, 403);
    // More than 650 users, or more than 60 minutes.
    let (s, _) = e.call("POST", "/v1.0/subscriptions", &d0, Some(body(&ids[..651], 30, &hook_url))).await;
    assert_eq!(s, 400);
    let (s, _) = e.call("POST", "/v1.0/subscriptions", &d0, Some(body(&ids[..10], 62, &hook_url))).await;
    assert_eq!(s, 400);
    // Rich data needs the certificate.
    let mut no_cert = body(&ids[..10], 30, &hook_url);
    no_cert.as_object_mut().unwrap().remove("encryptionCertificate");
    assert_eq!(e.call("POST", "/v1.0/subscriptions", &d0, Some(no_cert)).await.0, 400);
    // A webhook that does not answer the handshake fails creation.
    let (s, v) =
        e.call("POST", "/v1.0/subscriptions", &d0, Some(body(&ids[..10], 30, "http://127.0.0.1:9/nothing"))).await;
    assert_eq!(s, 400, "{v}");
    // Plain http to a non-loopback host is refused (Graph requires HTTPS).
    assert_eq!(
        e.call("POST", "/v1.0/subscriptions", &d0, Some(body(&ids[..10], 30, "http://example.com/hook"))).await.0,
        400
    );
    // The good one.
    let (s, v) = e.call("POST", "/v1.0/subscriptions", &d0, Some(body(&ids[..650], 59, &hook_url))).await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    // One per app per delegated user.
    let (s, _) = e.call("POST", "/v1.0/subscriptions", &d0, Some(body(&ids[650..], 59, &hook_url))).await;
    assert_eq!(s, 403);
    // Renewal within 60 minutes; unknown ids are 404.
    let (s, _) =
        e.call("PATCH", &format!("/v1.0/subscriptions/{id}"), &d0, Some(json!({"expirationDateTime": exp(55)}))).await;
    assert_eq!(s, 200);
    let (s, _) = e
        .call(
            "PATCH",
            "/v1.0/subscriptions/00000000-0000-0000-0000-000000000000",
            &d0,
            Some(json!({"expirationDateTime": exp(55)})),
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(e.call("DELETE", &format!("/v1.0/subscriptions/{id}"), &d0, None).await.0, 204);
    assert!(e.emu.subscriptions().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_presence_follows_graphs_rules() {
    let e = emu(5).await;
    let app = e.app_token().await;
    let user = e.ids(1)[0].clone();
    let set = |body: Value| {
        let (e, app, user) = (&e, app.clone(), user.clone());
        async move { e.call("POST", &format!("/v1.0/users/{user}/presence/setPresence"), &app, Some(body)).await.0 }
    };
    let good =
        json!({"sessionId": DEMO_CLIENT, "availability": "Busy", "activity": "InACall", "expirationDuration": "PT5M"});
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    assert_eq!(set(with("sessionId", json!("another-app"))).await, 400, "sessionId must be the caller's client id");
    assert_eq!(set(with("activity", json!("InAMeeting"))).await, 400, "only the five documented pairs");
    assert_eq!(set(with("expirationDuration", json!("PT4M"))).await, 400);
    assert_eq!(set(with("expirationDuration", json!("PT4H1M"))).await, 400);
    assert_eq!(set(with("expirationDuration", json!("PT4H"))).await, 200);
    assert_eq!(set(good.clone()).await, 200);
    // A delegated token (no Presence.ReadWrite.All application permission) is refused.
    let d = e.user_token(0).await;
    let (s, v) = e.call("POST", &format!("/v1.0/users/{user}/presence/setPresence"), &d, Some(good.clone())).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("Authorization_RequestDenied")));
    // Clear: 200 once, then 404 (no session left).
    let clear = json!({"sessionId": DEMO_CLIENT});
    let path = format!("/v1.0/users/{user}/presence/clearPresence");
    assert_eq!(e.call("POST", &path, &app, Some(clear.clone())).await.0, 200);
    assert_eq!(e.call("POST", &path, &app, Some(clear)).await.0, 404);
    // JSON batching: at most 20 requests, each answered on its own.
    let reqs: Vec<Value> = (0..21)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": format!("/users/{user}/presence")}))
        .collect();
    assert_eq!(e.call("POST", "/v1.0/$batch", &app, Some(json!({"requests": reqs}))).await.0, 400);
    let reqs = json!({"requests": [
        {"id": "1", "method": "POST", "url": format!("/users/{user}/presence/setPresence"), "headers": {"Content-Type": "application/json"}, "body": good},
        {"id": "2", "method": "POST", "url": format!("/users/{user}/presence/setPresence"), "headers": {"Content-Type": "application/json"}, "body": {"sessionId": "x", "availability": "Busy", "activity": "InACall"}},
    ]});
    let (s, v) = e.call("POST", "/v1.0/$batch", &app, Some(reqs)).await;
    assert_eq!(s, 200);
    let statuses: Vec<u64> = v["responses"].as_array().unwrap().iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, vec![200, 400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_requests_are_throttled_with_retry_after() {
    let e = emu(5).await;
    let app = e.app_token().await;
    let user = e.ids(1)[0].clone();
    e.emu.set_presence_limit(3, std::time::Duration::from_secs(30));
    for _ in 0..3 {
        assert_eq!(e.call("GET", &format!("/v1.0/users/{user}/presence"), &app, None).await.0, 200);
    }
    let r = e.http.get(format!("{}/v1.0/users/{user}/presence", e.base)).bearer_auth(&app).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let secs: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&secs));
    // Coming back before Retry-After is counted as a violation.
    assert_eq!(e.call("GET", &format!("/v1.0/users/{user}/presence"), &app, None).await.0, 429);
    assert_eq!(e.emu.throttling(), (2, 1));
}

/// Admin consent (v2): the registered redirect URI only, `scope=https://graph.microsoft.com/.default`,
/// a tenant (not `common`); the answer comes back on the redirect URI with the `state`; until
/// a tenant consented, the multi-tenant app cannot sign in there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_consent_creates_the_apps_principal_or_says_why_not() {
    const PLATFORM: &str = "7f3c2a91-5e4d-4b8a-9c1f-2d6e8a0b4c37";
    let e = emu(3).await;
    let back = "https://admin.example/ui/consent";
    e.emu.add_platform_app(graph_emulator::PlatformApp {
        client_id: PLATFORM.into(),
        secret: "platform-secret".into(),
        app_roles: ["User.Read.All".to_string(), "Presence.ReadWrite.All".to_string()].into(),
        redirect_uris: vec![back.into()],
    });
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", PLATFORM),
        ("client_secret", "platform-secret"),
        ("scope", "https://graph.microsoft.com/.default"),
    ];
    let (s, v) = e.token_raw(DEMO_TENANT, &form).await;
    assert_eq!((s, code(&v)), (400, 700016), "not consented yet: {v}");
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let consent = |tenant: &str, scope: &str, redirect: &str| {
        let mut u = url::Url::parse(&format!("{}/{tenant}/v2.0/adminconsent", e.base)).unwrap();
        u.query_pairs_mut()
            .append_pair("client_id", PLATFORM)
            .append_pair("scope", scope)
            .append_pair("redirect_uri", redirect)
            .append_pair("state", "s-1");
        let http = http.clone();
        async move {
            let r = http.get(u).send().await.unwrap();
            (r.status().as_u16(), r.headers().get("location").map(|l| l.to_str().unwrap().to_string()))
        }
    };
    const ALL: &str = "https://graph.microsoft.com/.default";
    assert_eq!(consent("common", ALL, back).await.0, 400, "a tenant is needed");
    assert_eq!(consent(DEMO_TENANT, ALL, "https://evil.example/cb").await, (400, None), "only a registered URI");
    let (s, to) = consent(DEMO_TENANT, "User.Read.All", back).await;
    assert_eq!(s, 302);
    assert!(to.unwrap().contains("error=invalid_request"));
    e.emu.with_tenant(DEMO_TENANT, |t| t.refuse_consent = true);
    let (_, to) = consent(DEMO_TENANT, ALL, back).await;
    let to = to.unwrap();
    assert!(
        to.starts_with(back)
            && to.contains("error=access_denied")
            && to.contains("AADSTS65004")
            && to.ends_with("state=s-1"),
        "{to}"
    );
    assert_eq!(e.token_raw(DEMO_TENANT, &form).await.0, 400, "declined: still no principal");
    e.emu.with_tenant(DEMO_TENANT, |t| t.refuse_consent = false);
    let (_, to) = consent(DEMO_TENANT, ALL, back).await;
    let to = to.unwrap();
    assert!(
        to.contains("admin_consent=True") && to.contains(&format!("tenant={DEMO_TENANT}")) && to.contains("state=s-1"),
        "{to}"
    );
    let (s, v) = e.token_raw(DEMO_TENANT, &form).await;
    assert_eq!(s, 200, "consented: {v}");
}

/// The device code sign-in (for an integration user that must use MFA, whom the password
/// grant refuses with AADSTS50076): `/devicecode`, then the token endpoint polled no faster
/// than `interval` (`authorization_pending` until the user signs in; a faster poll gets
/// `slow_down`, RFC 8628), then a refresh token that works once (each refresh rotates it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_code_sign_in_follows_the_protocol_and_refresh_tokens_rotate() {
    let e = emu(3).await;
    let upn = e.seed.integration_user(0);
    e.emu.with_tenant(DEMO_TENANT, |t| t.user_by_upn(&upn).unwrap().mfa_required = true);
    let scope = "https://graph.microsoft.com/Presence.Read.All offline_access";
    let (s, v) = e
        .token_raw(
            DEMO_TENANT,
            &[
                ("grant_type", "password"),
                ("client_id", DEMO_CLIENT),
                ("client_secret", DEMO_SECRET),
                ("scope", scope),
                ("username", &upn),
                ("password", &e.seed.integration_password),
            ],
        )
        .await;
    assert_eq!((s, code(&v)), (400, 50076), "MFA: no password grant: {v}");

    let r = e
        .http
        .post(format!("{}/{DEMO_TENANT}/oauth2/v2.0/devicecode", e.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "client_id={DEMO_CLIENT}&scope={}",
            url::form_urlencoded::byte_serialize(scope.as_bytes()).collect::<String>()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let dc: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!((dc["expires_in"].as_u64(), dc["interval"].as_u64()), (Some(900), Some(5)));
    assert!(dc["message"].as_str().unwrap().contains(dc["user_code"].as_str().unwrap()));
    let device = dc["device_code"].as_str().unwrap().to_string();
    let poll_form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ("client_id", DEMO_CLIENT),
        ("client_secret", DEMO_SECRET),
        ("device_code", device.as_str()),
    ];
    let (s, v) = e.token_raw(DEMO_TENANT, &poll_form).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("authorization_pending")));
    let (_, v) = e.token_raw(DEMO_TENANT, &poll_form).await;
    assert_eq!(v["error"], "slow_down", "polled again at once");
    assert!(e.emu.answer_device_code(dc["user_code"].as_str().unwrap(), &upn, true));
    // Still within the (grown) interval: slow down; after it, the tokens.
    e.emu.with_world(|w| w.device_codes.values_mut().for_each(|d| d.last_poll_ms = Some(0)));
    let (s, v) = e.token_raw(DEMO_TENANT, &poll_form).await;
    assert_eq!(s, 200, "{v}");
    let first = v["refresh_token"].as_str().unwrap().to_string();
    let refresh_form = |token: &str| {
        [
            ("grant_type", "refresh_token".to_string()),
            ("client_id", DEMO_CLIENT.to_string()),
            ("client_secret", DEMO_SECRET.to_string()),
            ("refresh_token", token.to_string()),
            ("scope", scope.to_string()),
        ]
    };
    let (s, v) =
        e.token_raw(DEMO_TENANT, &refresh_form(&first).iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    assert_eq!(s, 200, "{v}");
    let second = v["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(first, second, "rotated");
    let (s, v) =
        e.token_raw(DEMO_TENANT, &refresh_form(&first).iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    assert_eq!((s, code(&v)), (400, 70008), "a used refresh token is refused: {v}");
    assert_eq!(
        e.token_raw(DEMO_TENANT, &refresh_form(&second).iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>())
            .await
            .0,
        200
    );
    // The device code is gone once used.
    assert_eq!(e.token_raw(DEMO_TENANT, &poll_form).await.1["error"], "bad_verification_code");
}
