//! Native tests of the state machine with a fake [`Env`]: every request the core makes is
//! answered by the test, with an injected clock.

use std::collections::{BTreeSet, HashMap};

use super::core::*;
use super::*;

struct FakeEnv {
    now: u64,
    users: Vec<SwitchboardUser>,
    stored: HashMap<String, Vec<u8>>,
    draws: u64,
    /// How far Microsoft's clock (the `Date` of `run_graph`'s answers) is ahead of `now`;
    /// `None`: its answers carry no `Date`.
    microsoft_ahead_ms: Option<i64>,
    /// The switchboard directory's change counter (0: not tracked).
    revision: u64,
    /// Every request `run_graph` answered (method, URL), and the subscriptions it created.
    seen: Vec<(String, String)>,
    subs_created: usize,
    /// Refresh tokens the host keeps, by integration user.
    refresh: HashMap<String, String>,
    /// Entra groups and their transitive members (ids), as `run_graph` answers them; a
    /// group not here is answered 404. `groups_status`: answer every group read so instead.
    groups: HashMap<String, Vec<String>>,
    groups_status: Option<u16>,
    /// Every effect `run_graph` saw, in order.
    log: Vec<Effect>,
    /// What `run_graph` answers to a presence read (availability, activity).
    own_presence: (String, String),
    /// Status messages by Microsoft user, as `run_graph`'s presence reads answer them and
    /// its `setStatusMessage` sets them.
    status_messages: HashMap<String, String>,
    /// `run_graph` keeps what is stored and every effect (false: a footprint run, whose
    /// heap is the core's alone).
    keep: bool,
    /// Publishes `run_graph` saw while not keeping them.
    published_uncounted: usize,
}

impl Env for FakeEnv {
    fn now_ms(&self) -> u64 {
        self.now
    }
    fn random_bytes(&mut self, n: usize) -> Vec<u8> {
        self.draws += 1;
        let d = self.draws;
        (0..n)
            .map(|i| (i as u64).wrapping_mul(31).wrapping_add(d.wrapping_mul(0x9e37_79b9)) as u8 ^ (d >> 8) as u8)
            .collect()
    }
    fn unwrap_key(&mut self, cert: &str, wrapped: &[u8]) -> Result<Vec<u8>, UnwrapError> {
        // The fake "RSA": the wrapped key is the key itself, for certificate "cert-1" only.
        if cert != "cert-1" {
            return Err(UnwrapError::UnknownCertificate(cert.into()));
        }
        Ok(wrapped.to_vec())
    }
    fn switchboard_users_page(&mut self, start: usize, count: usize) -> Vec<SwitchboardUser> {
        self.users.iter().skip(start).take(count).cloned().collect()
    }
    fn switchboard_revision(&mut self) -> u64 {
        self.revision
    }
    fn load(&mut self, key: &str) -> Option<Vec<u8>> {
        self.stored.get(key).cloned()
    }
    fn keys(&mut self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.stored.keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        keys.sort();
        keys
    }
    fn refresh_token(&mut self, username: &str) -> Option<String> {
        self.refresh.get(username).cloned()
    }
}

const T0: u64 = 1_800_000_000_000;

fn env(n: usize) -> FakeEnv {
    FakeEnv {
        now: T0,
        users: (0..n)
            .map(|i| SwitchboardUser {
                id: format!("sb{i}"),
                display_name: format!("U{i}"),
                emails: vec![format!("u{i}@x.com")],
                line_number: None,
                active: true,
            })
            .collect(),
        stored: HashMap::new(),
        draws: 0,
        microsoft_ahead_ms: None,
        revision: 0,
        seen: Vec::new(),
        subs_created: 0,
        refresh: HashMap::new(),
        groups: HashMap::new(),
        groups_status: None,
        log: Vec::new(),
        own_presence: ("Available".into(), "Available".into()),
        status_messages: HashMap::new(),
        keep: true,
        published_uncounted: 0,
    }
}

fn settings(users: usize) -> Settings {
    Settings {
        name: "t".into(),
        tenant_id: "tenant".into(),
        client_id: "client".into(),
        client_secret: "s3cret".into(),
        integration_users: (0..users)
            .map(|i| IntegrationUser { username: format!("sync{i}@x.com"), password: "pw".into() })
            .collect(),
        login_base_url: "https://login.test".into(),
        graph_base_url: "https://graph.test".into(),
        notification_url: "https://hook.test/n".into(),
        lifecycle_notification_url: "https://hook.test/l".into(),
        encryption_certificate: "Q0VSVA==".into(),
        encryption_certificate_id: "cert-1".into(),
        push_line_status: false,
        min_call_length_ms: 0,
        reconcile_interval_ms: 0,
        directory_delta_interval_ms: 0,
        match_order: vec![],
        overrides: vec![],
    }
}

fn ms_id(i: usize) -> String {
    format!("00000000-0000-0000-0000-{i:012}")
}

fn ok(status: u16, body: serde_json::Value) -> Result<HttpResponse, HttpError> {
    Ok(HttpResponse { status, headers: vec![], body: body.to_string().into_bytes() })
}

fn requests(effects: &[Effect]) -> Vec<(u64, HttpRequest)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Http { id, request } => Some((*id, request.clone())),
            _ => None,
        })
        .collect()
}

fn publishes(effects: &[Effect]) -> Vec<PresenceUpdate> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// Graph's answer to a directory request: the "latest" delta anchor, an empty delta round, or
/// `value` as the `/users` page.
fn directory_answer(r: &HttpRequest, value: Vec<serde_json::Value>) -> Result<HttpResponse, HttpError> {
    if r.url.contains("/v1.0/users/delta") {
        ok(
            200,
            serde_json::json!({"value": [], "@odata.deltaLink": "https://graph.test/v1.0/users/delta?$deltatoken=next"}),
        )
    } else {
        ok(200, serde_json::json!({ "value": value }))
    }
}

fn form(r: &HttpRequest) -> HashMap<String, String> {
    form_urlencoded::parse(&r.body).into_owned().collect()
}

/// Answers requests like Graph would until nothing is pending; returns everything published.
fn run_graph(
    core: &mut Core,
    env: &mut FakeEnv,
    users: usize,
    effects: Vec<Effect>,
) -> (Vec<PresenceUpdate>, Vec<serde_json::Value>) {
    run_graph_observed(core, env, users, effects, &mut |_, _| {})
}

/// [`run_graph`], calling `observe` after every step (a tick, or a batch of answers).
fn run_graph_observed(
    core: &mut Core,
    env: &mut FakeEnv,
    users: usize,
    mut effects: Vec<Effect>,
    observe: &mut dyn FnMut(&Core, &FakeEnv),
) -> (Vec<PresenceUpdate>, Vec<serde_json::Value>) {
    let mut published = vec![];
    let mut created = vec![];
    loop {
        if env.keep {
            for e in &effects {
                if let Effect::Store { key, value: Some(v) } = e {
                    env.stored.insert(key.clone(), v.clone());
                }
            }
            env.log.extend(effects.iter().cloned());
            published.extend(publishes(&effects));
        } else {
            env.published_uncounted += publishes(&effects).len();
        }
        let reqs = requests(&effects);
        let wants_tick = effects.iter().any(|e| matches!(e, Effect::RequestTick));
        if reqs.is_empty() {
            // The host calls `tick` when the core asks for the next step of its work.
            if wants_tick {
                core.tick(env);
                observe(core, env);
                effects = core.take_effects();
                continue;
            }
            return (published, created);
        }
        for (id, r) in reqs {
            env.seen.push((r.method.clone(), r.url.clone()));
            let resp = if let Some(resp) = login_documents(&r) {
                resp
            } else if r.url.ends_with("/oauth2/v2.0/token") {
                ok(
                    200,
                    serde_json::json!({"access_token": format!("tok-{}", form(&r)["grant_type"]), "expires_in": 3599}),
                )
            } else if let Some(rest) = r.url.strip_prefix("https://graph.test/v1.0/groups/") {
                let group = rest.split('/').next().unwrap();
                match (env.groups_status, env.groups.get(group)) {
                    (Some(status), _) => ok(
                        status,
                        serde_json::json!({"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges to complete the operation."}}),
                    ),
                    (None, Some(members)) => ok(
                        200,
                        serde_json::json!({"value": members.iter().map(|id| serde_json::json!({"@odata.type": "#microsoft.graph.user", "id": id})).collect::<Vec<_>>()}),
                    ),
                    (None, None) => ok(404, serde_json::json!({"error": {"code": "Request_ResourceNotFound"}})),
                }
            } else if r.url.ends_with("/presence/setPresence") || r.url.ends_with("/presence/clearPresence") {
                ok(200, serde_json::json!({}))
            } else if r.url.ends_with("/presence/setStatusMessage") {
                let id = r.url.trim_end_matches("/presence/setStatusMessage").rsplit('/').next().unwrap().to_string();
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                match body["statusMessage"]["message"]["content"].as_str().unwrap_or("") {
                    "" => env.status_messages.remove(&id),
                    text => env.status_messages.insert(id, text.to_string()),
                };
                ok(200, serde_json::json!({}))
            } else if r.url.ends_with("/presence") && r.method == "GET" {
                let id = r.url.trim_end_matches("/presence").rsplit('/').next().unwrap();
                let message = env.status_messages.get(id).map(
                    |m| serde_json::json!({"message": {"content": m, "contentType": "text"}, "expiryDateTime": null}),
                );
                ok(
                    200,
                    serde_json::json!({"id": id, "availability": env.own_presence.0, "activity": env.own_presence.1, "statusMessage": message}),
                )
            } else if r.url.contains("/v1.0/users") && !r.url.contains("/v1.0/users/delta") {
                // Pages of 999, as Graph's `$top=999`.
                let from: usize = r.url.split("$skiptoken=").nth(1).map_or(0, |s| s.parse().unwrap());
                let to = users.min(from + 999);
                let value: Vec<_> = (from..to)
                    .map(|i| {
                        if env.keep {
                            serde_json::json!({"id": ms_id(i), "mail": format!("U{i}@x.com")})
                        } else {
                            // A footprint run: every field Entra has, as the emulator's.
                            serde_json::json!({
                                "id": ms_id(i),
                                "displayName": format!("User {i}"),
                                "userPrincipalName": format!("u{i}@x.onmicrosoft.com"),
                                "mail": format!("U{i}@x.com"),
                                "proxyAddresses": [format!("SMTP:U{i}@x.com"), format!("smtp:user.{i}@x.com")],
                            })
                        }
                    })
                    .collect();
                let mut page = serde_json::json!({ "value": value });
                if to < users {
                    page["@odata.nextLink"] = format!("https://graph.test/v1.0/users?$top=999&$skiptoken={to}").into();
                }
                ok(200, page)
            } else if r.url.contains("/v1.0/users") {
                directory_answer(&r, vec![])
            } else if r.url.ends_with("/v1.0/subscriptions") && r.method == "POST" {
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                created.push(body.clone());
                env.subs_created += 1;
                ok(
                    201,
                    serde_json::json!({"id": format!("sub-{}", env.subs_created), "expirationDateTime": body["expirationDateTime"]}),
                )
            } else if r.url.contains("/v1.0/subscriptions/") && r.method == "DELETE" {
                ok(204, serde_json::json!(null))
            } else if r.url.contains("/v1.0/subscriptions/") && r.method == "PATCH" {
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                ok(
                    200,
                    serde_json::json!({"id": r.url.rsplit('/').next(), "expirationDateTime": body["expirationDateTime"]}),
                )
            } else if r.url.ends_with("getPresencesByUserId") {
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                let value: Vec<_> = body["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|id| serde_json::json!({"id": id, "availability": "Available", "activity": "Available", "sequenceNumber": "0001"}))
                    .collect();
                ok(200, serde_json::json!({ "value": value }))
            } else {
                panic!("unexpected request {} {}", r.method, r.url)
            };
            let resp = match (resp, env.microsoft_ahead_ms) {
                (Ok(mut r), Some(ahead)) => {
                    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis((env.now as i64 + ahead) as u64);
                    r.headers.push(("date".into(), httpdate::fmt_http_date(at)));
                    Ok(r)
                }
                (r, _) => r,
            };
            core.on_http_response(env, id, resp);
            observe(core, env);
        }
        effects = core.take_effects();
        // A tick asked for alongside requests comes after them, as the host's does.
        if wants_tick {
            core.tick(env);
            observe(core, env);
            effects.extend(core.take_effects());
        }
    }
}

fn synced(users: usize, slots: usize) -> (Core, FakeEnv, Vec<serde_json::Value>) {
    let mut env = env(users);
    let mut core = Core::new();
    core.configure(&mut env, settings(slots)).unwrap();
    let effects = core.take_effects();
    let (published, created) = run_graph(&mut core, &mut env, users, effects);
    assert_eq!(published.len(), users.min(slots * 650));
    (core, env, created)
}

#[test]
fn full_setup_reads_directory_subscribes_and_snapshots() {
    let (core, env, created) = synced(700, 2);
    assert_eq!(created.len(), 2);
    let body = &created[0];
    assert_eq!(body["changeType"], "updated");
    assert_eq!(body["includeResourceData"], true);
    assert_eq!(body["encryptionCertificateId"], "cert-1");
    assert!(body["resource"].as_str().unwrap().starts_with("/communications/presences?$filter=id in ('"));
    let exp = parse_rfc3339(body["expirationDateTime"].as_str().unwrap()).unwrap();
    assert!(exp > T0 && exp <= T0 + 60 * 60 * 1000, "at most 60 minutes");
    assert!(body["clientState"].as_str().unwrap().len() <= 128);
    assert_ne!(created[0]["clientState"], created[1]["clientState"], "one clientState per subscription");
    let s = core.status(&env);
    assert_eq!(s.health, Health::Ok);
    assert_eq!(s.mapped_users, 700);
    assert_eq!(s.subscriptions.iter().map(|x| x.users_covered).collect::<Vec<_>>(), vec![650, 50]);
}

#[test]
fn the_status_says_starting_until_the_first_mapping_is_built() {
    // The switchboard is read and matched in steps after the directory read: in between, a
    // status must not say "ok" with no user mapped.
    let users = 9_000;
    let mut env = env(users);
    let mut core = Core::new();
    core.configure(&mut env, settings(14)).unwrap();
    let effects = core.take_effects();
    let mut seen = Vec::new();
    run_graph_observed(&mut core, &mut env, users, effects, &mut |core, env| {
        let s = core.status(env);
        let subscribed = s.subscriptions.iter().filter(|x| x.subscription_id.is_some()).count();
        seen.push((s.health.clone(), s.mapped_users, subscribed));
    });
    assert!(seen.iter().any(|(h, ..)| *h == Health::Starting));
    let early_ok: Vec<_> =
        seen.iter().filter(|(h, n, subs)| *h == Health::Ok && (*n < users as u32 || *subs < 14)).collect();
    assert!(early_ok.is_empty(), "ok before every user was mapped and subscribed: {early_ok:?}");
    assert_eq!(seen.last().unwrap(), &(Health::Ok, users as u32, 14));
}

#[test]
fn tokens_are_cached_until_shortly_before_expires_in() {
    let mut env = env(1);
    let mut core = Core::new();
    core.configure(&mut env, settings(1)).unwrap();
    let reqs: Vec<_> =
        requests(&core.take_effects()).into_iter().filter(|(_, r)| !r.url.contains("/common/")).collect();
    assert_eq!(reqs.len(), 1, "only the app token first (besides the login service's public keys)");
    // A short lifetime (600 s): refreshed at 80 %, not at 3600 s.
    core.on_http_response(&mut env, reqs[0].0, ok(200, serde_json::json!({"access_token": "a", "expires_in": 600})));
    let _ = core.take_effects();
    env.now += 470_000;
    core.tick(&mut env);
    assert!(
        requests(&core.take_effects())
            .iter()
            .all(|(_, r)| !r.url.ends_with("/token") || form(r)["grant_type"] != "client_credentials")
    );
    env.now += 20_000;
    core.tick(&mut env);
    let reqs = requests(&core.take_effects());
    assert!(reqs.iter().any(|(_, r)| r.url.ends_with("/token") && form(r)["grant_type"] == "client_credentials"));
}

#[test]
fn token_error_shows_code_and_hint_and_retries_with_backoff() {
    let mut env = env(1);
    let mut core = Core::new();
    core.configure(&mut env, settings(1)).unwrap();
    let reqs = requests(&core.take_effects());
    core.on_http_response(
        &mut env,
        reqs[0].0,
        ok(401, serde_json::json!({"error": "invalid_client", "error_codes": [7000215]})),
    );
    let s = core.status(&env);
    let Health::Error(p) = s.health else { panic!("{:?}", s.health) };
    assert_eq!(p.code, "AADSTS7000215");
    assert!(!format!("{p:?}").contains("s3cret"));
    assert!(requests(&core.take_effects()).is_empty(), "no immediate retry");
    env.now += 1_000;
    core.tick(&mut env);
    assert!(requests(&core.take_effects()).is_empty(), "still backing off");
    env.now += 5_000;
    core.tick(&mut env);
    assert_eq!(requests(&core.take_effects()).len(), 1, "retried after the backoff");
}

#[test]
fn missing_credentials_are_listed() {
    let mut env = env(1);
    let mut core = Core::new();
    let mut s = settings(0);
    s.client_secret.clear();
    core.configure(&mut env, s).unwrap();
    assert!(requests(&core.take_effects()).is_empty());
    let st = core.status(&env);
    // No integration users is not missing: such an integration polls (`core_tests/polling.rs`).
    assert_eq!(st.health, Health::MissingCredentials(vec!["client-secret".into()]));
}

#[test]
fn failed_directory_read_keeps_the_last_good_mapping() {
    let (mut core, mut env, _) = synced(10, 1);
    core.sync_now(&mut env);
    let reqs = requests(&core.take_effects());
    let (id, _) = reqs.iter().find(|(_, r)| r.url.contains("/v1.0/users")).unwrap();
    core.on_http_response(&mut env, *id, ok(503, serde_json::json!({"error": {"code": "serviceNotAvailable"}})));
    let s = core.status(&env);
    assert_eq!(s.mapped_users, 10, "mapping kept");
    assert_eq!(s.subscriptions[0].users_covered, 10);
    assert!(matches!(s.health, Health::Degraded(ref p) if p.code == "serviceNotAvailable"), "{:?}", s.health);
}

fn notification(sub: &str, client_state: &str, user: &str, seq: &str, availability: &str) -> serde_json::Value {
    let key = [9u8; 32];
    let plain =
        serde_json::json!({"id": user, "availability": availability, "activity": availability, "sequenceNumber": seq});
    let (data, sig) = crypto::encrypt_like_graph(&key, plain.to_string().as_bytes());
    use base64::Engine as _;
    serde_json::json!({
        "subscriptionId": sub,
        "clientState": client_state,
        "changeType": "updated",
        "encryptedContent": {
            "data": data, "dataSignature": sig,
            "dataKey": base64::engine::general_purpose::STANDARD.encode(key),
            "encryptionCertificateId": "cert-1",
        }
    })
}

/// A notification batch as Graph posts it, with a good validation token.
fn webhook(items: Vec<serde_json::Value>) -> Vec<u8> {
    webhook_with_tokens(items, vec![validation_token("test-kid", "client", crate::jwt::GRAPH_CHANGE_TRACKING_APP_ID)])
}

fn webhook_with_tokens(items: Vec<serde_json::Value>, tokens: Vec<String>) -> Vec<u8> {
    serde_json::json!({ "value": items, "validationTokens": tokens }).to_string().into_bytes()
}

const TEST_KEY: &str = include_str!("../testdata/jwt-test-key.pem");

fn test_key() -> rsa::RsaPrivateKey {
    use rsa::pkcs8::DecodePrivateKey;
    rsa::RsaPrivateKey::from_pkcs8_pem(TEST_KEY).unwrap()
}

/// A validationTokens JWT as the login service signs it (with the test key, as `kid`).
fn validation_token(kid: &str, aud: &str, caller: &str) -> String {
    validation_token_for(kid, aud, caller, "5db68c59-bbeb-41d7-a5df-b316a4434048")
}

/// A validationTokens JWT issued for tenant `tid`.
fn validation_token_for(kid: &str, aud: &str, caller: &str, tid: &str) -> String {
    validation_token_valid(kid, aud, caller, tid, T0 / 1000 - 60, (T0 / 1000) + 10 * 24 * 3600)
}

/// A validationTokens JWT valid from `nbf` to `exp` (seconds since the epoch).
fn validation_token_valid(kid: &str, aud: &str, caller: &str, tid: &str, nbf: u64, exp: u64) -> String {
    use base64::Engine as _;
    use rsa::signature::{SignatureEncoding, Signer};
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let h = b64.encode(serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": kid}).to_string());
    let c = b64.encode(
        serde_json::json!({"aud": aud, "exp": exp, "nbf": nbf, "appid": caller, "tid": tid,
            "iss": format!("https://sts.windows.net/{tid}/")})
        .to_string(),
    );
    let input = format!("{h}.{c}");
    let sig = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(test_key()).sign(input.as_bytes());
    format!("{input}.{}", b64.encode(sig.to_bytes()))
}

/// The login service's OpenID configuration and signing keys (the test key as "test-kid").
fn login_documents(r: &HttpRequest) -> Option<Result<HttpResponse, HttpError>> {
    use base64::Engine as _;
    use rsa::traits::PublicKeyParts;
    if r.url == "https://login.test/common/.well-known/openid-configuration" {
        return Some(ok(200, serde_json::json!({"jwks_uri": "https://login.test/common/discovery/keys"})));
    }
    if r.url == "https://login.test/common/discovery/keys" {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let k = test_key();
        return Some(ok(
            200,
            serde_json::json!({"keys": [{"kty": "RSA", "use": "sig", "kid": "test-kid",
                "n": b64.encode(k.n().to_bytes_be()), "e": b64.encode(k.e().to_bytes_be())}]}),
        ));
    }
    None
}

#[test]
fn notifications_are_checked_decrypted_ordered_and_published() {
    let (mut core, mut env, created) = synced(3, 1);
    let cs = created[0]["clientState"].as_str().unwrap().to_string();
    let u = ms_id(1);
    let r = core.on_notification(&mut env, &webhook(vec![notification("sub-1", &cs, &u, "0005", "Busy")]));
    assert_eq!(r, NotificationOutcome::Taken);
    let p = publishes(&core.take_effects());
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].user_id.as_str(), p[0].presence.availability.as_str()), ("sb1", "Busy"));
    assert_eq!(p[0].origin, PresenceOrigin::Teams);
    // An older update arriving late is dropped; forgeries are counted.
    core.on_notification(
        &mut env,
        &webhook(vec![
            notification("sub-1", &cs, &u, "0004", "Away"),
            notification("sub-1", "wrong", &u, "0009", "Away"),
            notification("sub-9", &cs, &u, "0009", "Away"),
        ]),
    );
    assert!(publishes(&core.take_effects()).is_empty());
    let counters: HashMap<_, _> = core.status(&env).counters.into_iter().collect();
    assert_eq!(counters["rejected.stale"], 1);
    assert_eq!(counters["rejected.client-state"], 1);
    assert_eq!(counters["rejected.unknown-subscription"], 1);
}

#[test]
fn renewal_patches_before_expiry_and_recreates_on_404() {
    let (mut core, mut env, _) = synced(3, 1);
    env.now += 45 * 60 * 1000;
    core.tick(&mut env);
    let reqs = requests(&core.take_effects());
    let (id, r) = reqs.iter().find(|(_, r)| r.method == "PATCH").expect("renewal PATCH");
    assert!(r.url.ends_with("/v1.0/subscriptions/sub-1"));
    core.on_http_response(&mut env, *id, ok(404, serde_json::json!({"error": {"code": "ResourceNotFound"}})));
    let reqs = requests(&core.take_effects());
    assert!(
        reqs.iter().any(|(_, r)| r.method == "POST" && r.url.ends_with("/v1.0/subscriptions")),
        "recreated, not re-PATCHed"
    );
    assert!(!reqs.iter().any(|(_, r)| r.method == "PATCH"));
}

#[test]
fn restart_restores_mapping_and_subscriptions_from_state() {
    let (_, env, _) = synced(3, 1);
    let mut env2 = FakeEnv { stored: env.stored.clone(), ..self::env(3) };
    let mut core = Core::new();
    core.configure(&mut env2, settings(1)).unwrap();
    // The last good mapping is there before Microsoft answers anything.
    assert_eq!(core.status(&env2).mapped_users, 3);
    let effects = core.take_effects();
    let app = requests(&effects);
    // Token first; then the existing subscription is verified with a PATCH, never duplicated.
    for (id, r) in app {
        core.on_http_response(
            &mut env2,
            id,
            ok(200, serde_json::json!({"access_token": format!("t-{}", r.url.len()), "expires_in": 3599})),
        );
    }
    let mut saw_patch = false;
    for _ in 0..5 {
        let reqs = requests(&core.take_effects());
        for (id, r) in reqs {
            assert!(!(r.method == "POST" && r.url.ends_with("/v1.0/subscriptions")), "no new subscription");
            let resp = if r.method == "PATCH" {
                saw_patch = true;
                ok(200, serde_json::json!({"id": "sub-1", "expirationDateTime": rfc3339(env2.now + 3_000_000)}))
            } else if r.url.contains("/token") {
                ok(200, serde_json::json!({"access_token": "d", "expires_in": 3599}))
            } else if r.url.contains("/v1.0/users") {
                let value: Vec<_> =
                    (0..3).map(|i| serde_json::json!({"id": ms_id(i), "mail": format!("u{i}@x.com")})).collect();
                directory_answer(&r, value)
            } else {
                ok(200, serde_json::json!({ "value": [] }))
            };
            core.on_http_response(&mut env2, id, resp);
        }
    }
    assert!(saw_patch);
}

/// A new core on `env`'s stored state, configured with another notification URL (the host's
/// public URL changed): what a restart after that change sees.
fn restarted_on_another_url(env: &FakeEnv) -> (Core, FakeEnv) {
    let mut env2 = FakeEnv { stored: env.stored.clone(), ..self::env(3) };
    let mut core = Core::new();
    let mut s = settings(1);
    s.notification_url = "https://hook.test/other-path/n".into();
    core.configure(&mut env2, s).unwrap();
    (core, env2)
}

/// The answers of Microsoft's side to a restarted core of three users, but for DELETE and
/// POST /subscriptions, which `other` answers.
fn answer_restart(
    r: &HttpRequest,
    other: &mut dyn FnMut(&HttpRequest) -> Result<HttpResponse, HttpError>,
) -> Result<HttpResponse, HttpError> {
    if let Some(resp) = login_documents(r) {
        resp
    } else if r.url.contains("/token") {
        ok(200, serde_json::json!({"access_token": "t", "expires_in": 3599}))
    } else if r.url.contains("/v1.0/users") {
        let value: Vec<_> =
            (0..3).map(|i| serde_json::json!({"id": ms_id(i), "mail": format!("u{i}@x.com")})).collect();
        directory_answer(r, value)
    } else if r.method == "DELETE" || (r.method == "POST" && r.url.ends_with("/v1.0/subscriptions")) {
        other(r)
    } else {
        ok(200, serde_json::json!({ "value": [] }))
    }
}

/// The webhook URL changed (the host's public URL or its secret path): the subscription made
/// for the old one is deleted and a new one made for the new one; the counters come back.
#[test]
fn a_subscription_for_another_webhook_url_is_replaced_and_counters_survive_a_new_instance() {
    let (mut core, mut env, _) = synced(3, 1);
    core.on_notification(&mut env, b"{\"value\": [{\"subscriptionId\": \"forged\"}]}");
    let before = core.status(&env).counters;
    assert!(!before.is_empty());
    core.tick(&mut env);
    for e in core.take_effects() {
        if let Effect::Store { key, value } = e {
            match value {
                Some(v) => env.stored.insert(key, v),
                None => env.stored.remove(&key),
            };
        }
    }
    let (mut core, mut env2) = restarted_on_another_url(&env);
    for (k, n) in &before {
        // The new instance built its mapping once more, from the stored directory.
        let n = if k == "mapping.builds" { n + 1 } else { *n };
        assert_eq!(core.status(&env2).counters.iter().find(|(x, _)| x == k).map(|(_, v)| *v), Some(n), "{k}");
    }
    let (mut deleted, mut created) = (false, None);
    let mut effects = core.take_effects();
    for _ in 0..10 {
        for (id, r) in requests(&effects) {
            let resp = answer_restart(&r, &mut |r| {
                if r.method == "DELETE" {
                    assert!(r.url.ends_with("/v1.0/subscriptions/sub-1"), "{}", r.url);
                    deleted = true;
                    ok(204, serde_json::json!(null))
                } else {
                    assert!(deleted, "the old one goes first (one subscription per user)");
                    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                    created = Some(body["notificationUrl"].as_str().unwrap().to_string());
                    ok(201, serde_json::json!({"id": "sub-2", "expirationDateTime": body["expirationDateTime"]}))
                }
            });
            core.on_http_response(&mut env2, id, resp);
        }
        core.tick(&mut env2);
        effects = core.take_effects();
    }
    assert!(deleted);
    assert_eq!(created.as_deref(), Some("https://hook.test/other-path/n"));
}

/// Graph allows one presence subscription per app and user: a DELETE that fails is retried
/// (after its Retry-After) and nothing is created for that user until it succeeded; the status
/// shows the subscription as stuck meanwhile.
#[test]
fn no_second_subscription_while_the_old_one_cannot_be_deleted() {
    let (mut core, mut env, _) = synced(3, 1);
    for e in core.take_effects() {
        if let Effect::Store { key, value: Some(v) } = e {
            env.stored.insert(key, v);
        }
    }
    let (mut core, mut env2) = restarted_on_another_url(&env);
    let mut deletes = 0;
    let mut posted_after = None;
    let mut stuck_seen = false;
    let mut effects = core.take_effects();
    for _ in 0..40 {
        for (id, r) in requests(&effects) {
            let resp = answer_restart(&r, &mut |r| {
                if r.method == "DELETE" {
                    deletes += 1;
                    if deletes <= 2 {
                        return Ok(HttpResponse {
                            status: 503,
                            headers: vec![
                                ("retry-after".into(), "2".into()),
                                ("content-type".into(), "application/json".into()),
                            ],
                            body: br#"{"error": {"code": "serviceNotAvailable", "message": "busy"}}"#.to_vec(),
                        });
                    }
                    ok(204, serde_json::json!(null))
                } else {
                    posted_after.get_or_insert(deletes);
                    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                    ok(201, serde_json::json!({"id": "sub-2", "expirationDateTime": body["expirationDateTime"]}))
                }
            });
            core.on_http_response(&mut env2, id, resp);
        }
        if deletes > 0 && deletes <= 2 {
            let st = core.status(&env2);
            stuck_seen |= st.subscriptions[0].problem.as_ref().is_some_and(|p| p.code == "subscription-stuck");
        }
        env2.now += 1000;
        core.tick(&mut env2);
        effects = core.take_effects();
    }
    assert_eq!(deletes, 3, "retried until it succeeded");
    assert_eq!(posted_after, Some(3), "created only after the DELETE succeeded");
    assert!(stuck_seen, "the status showed it stuck");
    assert!(core.status(&env2).subscriptions[0].problem.is_none());
}

/// Microsoft's clock 30 minutes ahead of the host's, then 30 minutes behind: expirations are
/// asked by Microsoft's clock, and the status names the offset.
#[test]
fn expirations_follow_microsofts_clock_and_the_offset_is_shown() {
    for ahead in [30 * 60 * 1000i64, -30 * 60 * 1000] {
        let mut env = env(3);
        env.microsoft_ahead_ms = Some(ahead);
        let mut core = Core::new();
        core.configure(&mut env, settings(1)).unwrap();
        let effects = core.take_effects();
        let (_, created) = run_graph(&mut core, &mut env, 3, effects);
        let exp = parse_rfc3339(created.last().unwrap()["expirationDateTime"].as_str().unwrap()).unwrap() as i64;
        let microsoft_now = env.now as i64 + ahead;
        assert!(
            exp > microsoft_now + 50 * 60 * 1000 && exp <= microsoft_now + 60 * 60 * 1000,
            "asked {} min after Microsoft's now",
            (exp - microsoft_now) / 60_000
        );
        assert!((core.clock_offset_ms() - ahead).abs() <= 1000, "{}", core.clock_offset_ms());
        let Health::Degraded(p) = core.status(&env).health else { panic!("{:?}", core.status(&env).health) };
        assert_eq!(p.code, "clock-offset");
        assert!(
            p.detail.contains(if ahead > 0 { "30.0 minutes behind" } else { "30.0 minutes ahead of" }),
            "{}",
            p.detail
        );
    }
}

/// Microsoft's clock 30 minutes ahead of the host's: a validation token that the host's clock
/// finds valid but Microsoft's finds expired (beyond the 5-minute leeway) is refused; one
/// valid by Microsoft's clock is taken, though the host's clock finds it not yet valid.
#[test]
fn validation_tokens_are_checked_by_microsofts_clock() {
    const AHEAD_MS: u64 = 30 * 60 * 1000;
    let mut env = env(3);
    env.microsoft_ahead_ms = Some(AHEAD_MS as i64);
    let mut core = Core::new();
    core.configure(&mut env, settings(1)).unwrap();
    let effects = core.take_effects();
    let (_, created) = run_graph(&mut core, &mut env, 3, effects);
    let cs = created[0]["clientState"].as_str().unwrap().to_string();
    let tid = "5db68c59-bbeb-41d7-a5df-b316a4434048";
    let graph = crate::jwt::GRAPH_CHANGE_TRACKING_APP_ID;
    let (host_s, microsoft_s) = (env.now / 1000, (env.now + AHEAD_MS) / 1000);
    let expired_for_microsoft = validation_token_valid("test-kid", "client", graph, tid, host_s - 600, host_s + 1200);
    let item = |seq: &str| notification("sub-1", &cs, &ms_id(1), seq, "Busy");
    core.on_notification(&mut env, &webhook_with_tokens(vec![item("0005")], vec![expired_for_microsoft]));
    assert!(publishes(&core.take_effects()).is_empty(), "expired 10 minutes ago by Microsoft's clock");
    assert_eq!(counter(&core, &env, "rejected.validation-token"), 1);
    let valid_for_microsoft =
        validation_token_valid("test-kid", "client", graph, tid, microsoft_s - 60, microsoft_s + 3600);
    core.on_notification(&mut env, &webhook_with_tokens(vec![item("0006")], vec![valid_for_microsoft]));
    assert_eq!(publishes(&core.take_effects()).len(), 1, "valid by Microsoft's clock, 29 minutes ahead of ours");
}

#[test]
fn presence_snapshot_follows_next_link_and_tolerates_nulls() {
    let mut env = env(2);
    let mut core = Core::new();
    core.configure(&mut env, settings(1)).unwrap();
    let mut effects = core.take_effects();
    let mut published = vec![];
    let mut pages = 0;
    for _ in 0..10 {
        published.extend(publishes(&effects));
        for (id, r) in requests(&effects) {
            let resp = if r.url.ends_with("/token") {
                ok(200, serde_json::json!({"access_token": "t", "expires_in": "3599"}))
            } else if r.url.contains("/v1.0/users") {
                let value: Vec<_> = (0..2)
                    .map(|i| serde_json::json!({"id": ms_id(i), "mail": format!("u{i}@x.com"), "proxyAddresses": null}))
                    .collect();
                directory_answer(&r, value)
            } else if r.method == "POST" && r.url.ends_with("/v1.0/subscriptions") {
                ok(201, serde_json::json!({"id": "s", "expirationDateTime": "2027-01-15T10:00:00.0000000Z"}))
            } else if r.url.contains("getPresencesByUserId") {
                pages += 1;
                if r.method == "POST" {
                    ok(
                        200,
                        serde_json::json!({"value": [{"id": ms_id(0), "availability": "Busy", "activity": null}],
                        "@odata.nextLink": "https://graph.test/v1.0/communications/getPresencesByUserId?$skiptoken=x"}),
                    )
                } else {
                    ok(
                        200,
                        serde_json::json!({"value": [{"id": ms_id(1), "availability": "Away", "activity": "Away"}]}),
                    )
                }
            } else if let Some(resp) = login_documents(&r) {
                resp
            } else {
                panic!("{} {}", r.method, r.url)
            };
            core.on_http_response(&mut env, id, resp);
        }
        effects = core.take_effects();
    }
    assert_eq!(pages, 2);
    assert_eq!(published.len(), 2);
    assert_eq!(published[0].presence.activity, "PresenceUnknown");
    assert_eq!(core.status(&env).health, Health::Ok);
}

fn synced_pushing(users: usize, min_call_length_ms: u64) -> (Core, FakeEnv) {
    let mut env = env(users);
    let mut core = Core::new();
    let mut s = settings(1);
    s.push_line_status = true;
    s.min_call_length_ms = min_call_length_ms;
    core.configure(&mut env, s).unwrap();
    let effects = core.take_effects();
    run_graph(&mut core, &mut env, users, effects);
    (core, env)
}

fn line(core: &mut Core, env: &mut FakeEnv, user: &str, state: LineState) -> Vec<(u64, HttpRequest)> {
    let at_ms = env.now;
    core.on_line_event(env, LineEvent { user_id: user.into(), state, at_ms }).unwrap();
    requests(&core.take_effects())
}

fn op_of(r: &HttpRequest) -> &'static str {
    if r.url.ends_with("/setPresence") {
        "set"
    } else if r.url.ends_with("/clearPresence") {
        "clear"
    } else {
        "other"
    }
}

#[test]
fn a_burst_of_line_events_costs_one_write_per_lasting_state() {
    let (mut core, mut env) = synced_pushing(3, 0);
    let mut sent = line(&mut core, &mut env, "sb1", LineState::Ringing);
    assert!(sent.is_empty(), "ringing is not a call");
    sent.extend(line(&mut core, &mut env, "sb1", LineState::Connected));
    assert_eq!(sent.len(), 1, "pushed at once, within one round trip");
    let body: serde_json::Value = serde_json::from_slice(&sent[0].1.body).unwrap();
    assert_eq!(body["sessionId"], "client");
    assert_eq!((body["availability"].as_str(), body["activity"].as_str()), (Some("Busy"), Some("InACall")));
    assert_eq!(body["expirationDuration"], "PT5M");
    // Hold, resume and hang up while the first write is in flight: nothing more goes out.
    for s in [LineState::OnHold, LineState::Connected, LineState::Ended] {
        assert!(line(&mut core, &mut env, "sb1", s).is_empty());
    }
    core.on_http_response(&mut env, sent[0].0, ok(200, serde_json::json!({})));
    let next = requests(&core.take_effects());
    assert_eq!(next.iter().map(|(_, r)| op_of(r)).collect::<Vec<_>>(), vec!["clear"], "the final state wins");
    core.on_http_response(&mut env, next[0].0, ok(404, serde_json::json!({"error": {"code": "itemNotFound"}})));
    assert!(requests(&core.take_effects()).is_empty(), "404 on clear means already gone");
    env.now += 10 * 60 * 1000;
    core.tick(&mut env);
    assert!(requests(&core.take_effects()).iter().all(|(_, r)| op_of(r) == "other"));
}

#[test]
fn the_session_is_kept_alive_while_the_call_lasts() {
    let (mut core, mut env) = synced_pushing(3, 0);
    let sent = line(&mut core, &mut env, "sb1", LineState::Connected);
    core.on_http_response(&mut env, sent[0].0, ok(200, serde_json::json!({})));
    let _ = core.take_effects();
    env.now += 3 * 60 * 1000;
    core.tick(&mut env);
    assert!(requests(&core.take_effects()).iter().all(|(_, r)| op_of(r) != "set"), "not yet");
    env.now += 61 * 1000;
    core.tick(&mut env);
    let again = requests(&core.take_effects());
    assert_eq!(again.iter().filter(|(_, r)| op_of(r) == "set").count(), 1, "re-asserted before PT5M runs out");
}

#[test]
fn calls_shorter_than_the_minimum_are_not_pushed() {
    let (mut core, mut env) = synced_pushing(3, 3_000);
    assert!(line(&mut core, &mut env, "sb1", LineState::Connected).is_empty());
    env.now += 2_000;
    core.tick(&mut env);
    assert!(requests(&core.take_effects()).is_empty());
    assert!(line(&mut core, &mut env, "sb1", LineState::Ended).is_empty());
    assert!(line(&mut core, &mut env, "sb1", LineState::Connected).is_empty());
    env.now += 3_500;
    core.tick(&mut env);
    let sent = requests(&core.take_effects());
    assert_eq!(sent.iter().map(|(_, r)| op_of(r)).collect::<Vec<_>>(), vec!["set"]);
}

#[test]
fn a_call_counts_from_when_the_switchboard_saw_it() {
    let (mut core, mut env) = synced_pushing(3, 3_000);
    // A call that began 5 s ago on the switchboard (replayed after a restart, say) is long
    // enough already; one stamped ahead of our clock counts from now.
    let at_ms = env.now - 5_000;
    core.on_line_event(&mut env, LineEvent { user_id: "sb1".into(), state: LineState::Connected, at_ms }).unwrap();
    let sent = requests(&core.take_effects());
    assert_eq!(sent.iter().map(|(_, r)| op_of(r)).collect::<Vec<_>>(), vec!["set"]);
    let at_ms = env.now + 60_000;
    core.on_line_event(&mut env, LineEvent { user_id: "sb2".into(), state: LineState::Connected, at_ms }).unwrap();
    assert!(requests(&core.take_effects()).is_empty());
    env.now += 2_000;
    core.tick(&mut env);
    assert!(requests(&core.take_effects()).iter().all(|(_, r)| !r.url.contains(&ms_id(2))));
}

#[test]
fn our_own_in_a_call_is_marked_and_never_taken_as_the_users_state() {
    let (mut core, mut env) = synced_pushing(3, 0);
    let sent = line(&mut core, &mut env, "sb1", LineState::Connected);
    core.on_http_response(&mut env, sent[0].0, ok(200, serde_json::json!({})));
    let _ = core.take_effects();
    let cs = {
        // The subscription's clientState, from what the core persisted.
        let v: serde_json::Value = serde_json::from_slice(&env.stored["v2/subscription/0000"]).unwrap();
        v["active"]["client_state"].as_str().unwrap().to_string()
    };
    let sub = {
        let v: serde_json::Value = serde_json::from_slice(&env.stored["v2/subscription/0000"]).unwrap();
        v["active"]["id"].as_str().unwrap().to_string()
    };
    let mut n = notification(&sub, &cs, &ms_id(1), "0009", "Busy");
    // Our own session's presence: Busy/InACall.
    let key = [9u8; 32];
    let plain =
        serde_json::json!({"id": ms_id(1), "availability": "Busy", "activity": "InACall", "sequenceNumber": "0009"});
    let (data, sig) = crypto::encrypt_like_graph(&key, plain.to_string().as_bytes());
    n["encryptedContent"]["data"] = data.into();
    n["encryptedContent"]["dataSignature"] = sig.into();
    core.on_notification(&mut env, &webhook(vec![n]));
    let effects = core.take_effects();
    let p = publishes(&effects);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].origin, PresenceOrigin::OwnLineStatus);
    assert!(requests(&effects).is_empty(), "no push caused by our own change");
    assert_eq!(core.presence_of(&ms_id(1)).unwrap().availability, "Available", "the user's own state is kept");
}

#[test]
fn an_unknown_teams_state_is_read_before_deciding() {
    let mut env = env(2);
    let mut core = Core::new();
    let mut s = settings(1);
    s.push_line_status = true;
    core.configure(&mut env, s).unwrap();
    // Set up without the initial snapshot answering for user 1.
    let mut effects = core.take_effects();
    for _ in 0..10 {
        for (id, r) in requests(&effects) {
            let resp = if r.url.ends_with("/token") {
                ok(200, serde_json::json!({"access_token": "t", "expires_in": 3599}))
            } else if r.url.contains("/v1.0/users") {
                let value: Vec<_> =
                    (0..2).map(|i| serde_json::json!({"id": ms_id(i), "mail": format!("u{i}@x.com")})).collect();
                directory_answer(&r, value)
            } else if r.method == "POST" && r.url.ends_with("/v1.0/subscriptions") {
                ok(201, serde_json::json!({"id": "s", "expirationDateTime": rfc3339(T0 + 3_000_000)}))
            } else {
                ok(
                    200,
                    serde_json::json!({"value": [{"id": ms_id(0), "availability": "Available", "activity": "Available"}]}),
                )
            };
            core.on_http_response(&mut env, id, resp);
        }
        effects = core.take_effects();
    }
    let sent = line(&mut core, &mut env, "sb1", LineState::Connected);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].1.method.as_str(), sent[0].1.url.ends_with(&format!("/users/{}/presence", ms_id(1)))),
        ("GET", true)
    );
    // DoNotDisturb: nothing is pushed.
    core.on_http_response(
        &mut env,
        sent[0].0,
        ok(200, serde_json::json!({"id": ms_id(1), "availability": "DoNotDisturb", "activity": "Presenting"})),
    );
    assert!(requests(&core.take_effects()).is_empty());
    // Available: pushed.
    let sent = line(&mut core, &mut env, "sb0", LineState::Connected);
    assert_eq!(sent.iter().map(|(_, r)| op_of(r)).collect::<Vec<_>>(), vec!["set"]);
}

#[test]
fn a_set_presence_in_flight_is_persisted_so_a_restart_can_clear_it() {
    let (mut core, mut env) = synced_pushing(3, 0);
    core.on_line_event(&mut env, LineEvent { user_id: "sb1".into(), state: LineState::Connected, at_ms: 0 }).unwrap();
    let effects = core.take_effects();
    assert_eq!(requests(&effects).len(), 1);
    let stored = effects.iter().find_map(|e| match e {
        Effect::Store { key, value: Some(v) } if key == "v1/calls" => Some(v.clone()),
        _ => None,
    });
    let calls: std::collections::BTreeMap<String, u64> =
        serde_json::from_slice(&stored.expect("persisted at send")).unwrap();
    assert!(calls.contains_key(&ms_id(1)));
    // The host dies before the answer; the restarted core clears the session.
    let mut env2 = FakeEnv { stored: env.stored.clone(), ..self::env(3) };
    env2.stored.insert("v1/calls".into(), serde_json::to_vec(&calls).unwrap());
    let mut core2 = Core::new();
    let mut s = settings(1);
    s.push_line_status = true;
    core2.configure(&mut env2, s).unwrap();
    let mut effects = core2.take_effects();
    let mut cleared = false;
    for _ in 0..6 {
        for (id, r) in requests(&effects) {
            cleared |= op_of(&r) == "clear";
            let resp = if r.url.ends_with("/token") {
                ok(200, serde_json::json!({"access_token": "t", "expires_in": 3599}))
            } else if r.method == "PATCH" {
                ok(200, serde_json::json!({"id": "sub-1", "expirationDateTime": rfc3339(env2.now + 3_000_000)}))
            } else {
                ok(200, serde_json::json!({ "value": [] }))
            };
            core2.on_http_response(&mut env2, id, resp);
        }
        effects = core2.take_effects();
    }
    assert!(cleared, "the persisted session is cleared after the restart");
}

/// Answers a reconcile's presence read: everyone Available, except `changed` users Away.
fn answer_read(core: &mut Core, env: &mut FakeEnv, id: u64, r: &HttpRequest, changed: &[usize]) {
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let value: Vec<_> = body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let a = if changed.contains(&i) { "Away" } else { "Available" };
            serde_json::json!({"id": id, "availability": a, "activity": a, "sequenceNumber": "0002"})
        })
        .collect();
    core.on_http_response(env, id, ok(200, serde_json::json!({ "value": value })));
}

#[test]
fn presence_is_re_read_on_the_reconcile_interval_and_a_missed_change_checks_the_subscription() {
    let (mut core, mut env, _) = synced(3, 1);
    let first = core.status(&env).last_reconcile_ms.unwrap();
    env.now += DEFAULT_RECONCILE_MS - 1_000;
    core.tick(&mut env);
    assert!(!requests(&core.take_effects()).iter().any(|(_, r)| r.url.ends_with("getPresencesByUserId")));
    env.now += 2_000;
    core.tick(&mut env);
    // The re-read goes out at once; nothing changed, so the subscription is not checked.
    let reqs = requests(&core.take_effects());
    let (id, r) = reqs.iter().find(|(_, r)| r.url.ends_with("getPresencesByUserId")).expect("reconcile read");
    let ids: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(ids["ids"].as_array().unwrap().len(), 3);
    answer_read(&mut core, &mut env, *id, r, &[]);
    assert!(core.status(&env).last_reconcile_ms.unwrap() > first);
    assert!(!requests(&core.take_effects()).iter().any(|(_, r)| r.url.contains("/v1.0/subscriptions")));

    // Next time a user changed without a notification: the re-read shows it, then the
    // subscription is looked for in the list (a GET of it alone is not in Graph's OpenAPI
    // subset). Still there: nothing more.
    env.now += DEFAULT_RECONCILE_MS + 1_000;
    core.tick(&mut env);
    let reqs = requests(&core.take_effects());
    let (id, r) = reqs.iter().find(|(_, r)| r.url.ends_with("getPresencesByUserId")).expect("reconcile read");
    answer_read(&mut core, &mut env, *id, r, &[1]);
    let counters: HashMap<_, _> = core.status(&env).counters.into_iter().collect();
    assert_eq!(counters["reconcile.corrected"], 1);
    let effects = core.take_effects();
    let published: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Publish(p) => Some(p.presence.availability.clone()),
            _ => None,
        })
        .collect();
    assert!(published.contains(&"Away".to_string()), "the missed change is shown");
    let reqs = requests(&effects);
    let (id, r) = reqs.iter().find(|(_, r)| r.url.contains("/v1.0/subscriptions")).expect("checked");
    assert_eq!((r.method.as_str(), r.url.ends_with("/v1.0/subscriptions")), ("GET", true));
    core.on_http_response(&mut env, *id, ok(200, serde_json::json!({"value": [{"id": "sub-1"}]})));
    core.tick(&mut env);
    assert!(requests(&core.take_effects()).is_empty(), "found: nothing more to do");

    // Another missed change, and this time the subscription is gone: recreated.
    env.now += DEFAULT_RECONCILE_MS + 1_000;
    core.tick(&mut env);
    let reqs = requests(&core.take_effects());
    let (id, r) = reqs.iter().find(|(_, r)| r.url.ends_with("getPresencesByUserId")).expect("reconcile read");
    answer_read(&mut core, &mut env, *id, r, &[0]);
    let reqs = requests(&core.take_effects());
    let (id, _) = reqs.iter().find(|(_, r)| r.url.ends_with("/v1.0/subscriptions")).expect("checked");
    core.on_http_response(&mut env, *id, ok(200, serde_json::json!({"value": [{"id": "someone-elses"}]})));
    let reqs = requests(&core.take_effects());
    assert!(reqs.iter().any(|(_, r)| r.method == "POST" && r.url.ends_with("/v1.0/subscriptions")), "recreated");
    let counters: HashMap<_, _> = core.status(&env).counters.into_iter().collect();
    assert_eq!(counters["subscriptions.lost"], 1);
}

#[test]
fn a_retry_after_holds_back_every_request_of_that_service() {
    let (mut core, mut env, _) = synced(700, 2);
    // Both subscriptions are due for a presence re-read; the first read gets 429 + 30 s.
    // (Verifications are answered as they come, one at a time.)
    env.now += DEFAULT_RECONCILE_MS + 1_000;
    core.tick(&mut env);
    for (id, r) in requests(&core.take_effects()) {
        let resp =
            if r.url.contains("/v1.0/users") { directory_answer(&r, vec![]) } else { ok(200, serde_json::json!({})) };
        core.on_http_response(&mut env, id, resp);
    }
    let reqs = requests(&core.take_effects());
    let reads: Vec<_> = reqs.iter().filter(|(_, r)| r.url.ends_with("getPresencesByUserId")).collect();
    assert_eq!(reads.len(), 1, "one presence request in flight at a time");
    let throttled = Ok(HttpResponse {
        status: 429,
        headers: vec![("retry-after".into(), "30".into())],
        body: br#"{"error":{"code":"TooManyRequests"}}"#.to_vec(),
    });
    core.on_http_response(&mut env, reads[0].0, throttled);
    // Nothing of the presence service goes out for 30 s: neither slot's read, nor a
    // line-status push.
    let at_ms = env.now;
    let _ = core.on_line_event(&mut env, LineEvent { user_id: "sb1".into(), state: LineState::Connected, at_ms });
    for _ in 0..29 {
        env.now += 1_000;
        core.tick(&mut env);
        let reqs = requests(&core.take_effects());
        assert!(
            reqs.iter().all(|(_, r)| !r.url.contains("getPresencesByUserId")
                && !r.url.contains("/presence")
                && !r.url.contains("$batch")),
            "{:?}",
            reqs.iter().map(|(_, r)| &r.url).collect::<Vec<_>>()
        );
    }
    env.now += 1_500;
    core.tick(&mut env);
    let reqs = requests(&core.take_effects());
    assert!(reqs.iter().any(|(_, r)| r.url.ends_with("getPresencesByUserId")), "after Retry-After");
    assert_eq!(counter(&core, &env, "throttled.presence"), 1);
}

/// Answers one directory request of `core` with `resp`; panics if none is outstanding.
fn answer_directory(core: &mut Core, env: &mut FakeEnv, resp: Result<HttpResponse, HttpError>) -> HttpRequest {
    let reqs = requests(&core.take_effects());
    let (id, r) = reqs.into_iter().find(|(_, r)| r.url.contains("/v1.0/users")).expect("a directory request");
    core.on_http_response(env, id, resp);
    r
}

#[test]
fn links_are_followed_only_on_the_exact_origin_of_the_base_url() {
    use crate::core::on_origin;
    assert!(on_origin("https://graph.test", "https://graph.test/v1.0/users?$skiptoken=x"));
    assert!(on_origin("https://graph.test", "https://graph.test"));
    for evil in [
        "https://graph.test.evil.example/v1.0/users",
        "https://graph.test@evil.example/v1.0/users",
        "https://graph.test:8443/v1.0/users",
        "http://graph.test/v1.0/users",
        "https://evil.example/https://graph.test/",
    ] {
        assert!(!on_origin("https://graph.test", evil), "{evil}");
    }
    // A delta round whose next page lies on another host: not followed, the round fails and the
    // mapping stays.
    let (mut core, mut env, _) = synced(3, 1);
    env.now += 61_000;
    core.tick(&mut env);
    let evil = "https://graph.test.evil.example/v1.0/users/delta?$skiptoken=p2";
    let r = answer_directory(
        &mut core,
        &mut env,
        ok(200, serde_json::json!({"value": [{"id": ms_id(1), "mail": "x@x.com"}], "@odata.nextLink": evil})),
    );
    assert!(r.url.starts_with("https://graph.test/v1.0/users/delta"), "{}", r.url);
    assert!(requests(&core.take_effects()).iter().all(|(_, r)| !r.url.contains("evil")));
    let s = core.status(&env);
    assert!(matches!(s.health, Health::Degraded(_)), "{:?}", s.health);
    assert_eq!(s.mapped_users, 3);
}

#[test]
fn delta_rounds_follow_the_stored_delta_link_and_apply_changes_whole() {
    let (mut core, mut env, _) = synced(3, 1);
    assert_eq!(core.status(&env).mapped_users, 3);
    env.users.push(SwitchboardUser {
        id: "sb9".into(),
        display_name: "U9".into(),
        emails: vec!["u9@x.com".into()],
        line_number: None,
        active: true,
    });
    // Not due before the interval.
    env.now += 30_000;
    core.tick(&mut env);
    assert!(requests(&core.take_effects()).iter().all(|(_, r)| !r.url.contains("/users")));
    env.now += 31_000;
    core.tick(&mut env);
    // Page 1 of the round: user 1 changes address (partial object), nextLink.
    let r = answer_directory(
        &mut core,
        &mut env,
        ok(
            200,
            serde_json::json!({
                "value": [{"id": ms_id(1), "mail": "renamed@x.com"}],
                "@odata.nextLink": "https://graph.test/v1.0/users/delta?$skiptoken=p2"
            }),
        ),
    );
    assert_eq!(r.url, "https://graph.test/v1.0/users/delta?$deltatoken=next", "the stored deltaLink");
    assert_eq!(core.status(&env).mapped_users, 3, "nothing applied before the round completes");
    // Page 2: user 0 removed, user 9 added; the round ends with a new deltaLink.
    answer_directory(
        &mut core,
        &mut env,
        ok(
            200,
            serde_json::json!({
                "value": [{"id": ms_id(0), "@removed": {"reason": "deleted"}}, {"id": ms_id(9), "mail": "u9@x.com"}],
                "@odata.deltaLink": "https://graph.test/v1.0/users/delta?$deltatoken=after"
            }),
        ),
    );
    let s = core.status(&env);
    assert_eq!(s.microsoft_users, 3);
    assert_eq!(s.mapped_users, 2, "u2 and u9; u0 removed, u1's address changed");
    let effects = core.take_effects();
    let stored = |name: &str| {
        effects.iter().find_map(|e| match e {
            Effect::Store { key, value: Some(v) } if key == name => {
                Some(serde_json::from_slice::<serde_json::Value>(v).unwrap())
            }
            _ => None,
        })
    };
    // Schema 2: the users in a new generation of chunks, then the head naming it, then the
    // deltaLink that goes with them.
    let head = stored("v2/directory").expect("changed users persisted");
    assert_eq!((head["users"].as_u64(), head["chunks"].as_u64()), (Some(3), Some(1)));
    let generation = head["generation"].as_u64().unwrap();
    let chunk = stored(&format!("v2/directory/{generation}/00000")).expect("the chunk");
    assert_eq!(chunk.as_array().unwrap().len(), 3);
    let order: Vec<&str> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Store { key, .. } if key.starts_with("v2/directory") || key == "v1/directory-delta" => {
                Some(key.as_str())
            }
            _ => None,
        })
        .collect();
    let at = |k: &str| order.iter().position(|x| *x == k).unwrap();
    assert!(at(&format!("v2/directory/{generation}/00000")) < at("v2/directory"));
    assert!(at("v2/directory") < at("v1/directory-delta"));
    // The previous generation is deleted after the head.
    let deleted_old = effects.iter().any(
        |e| matches!(e, Effect::Store { key, value: None } if key == &format!("v2/directory/{}/00000", generation - 1)),
    );
    assert!(deleted_old, "{order:?}");
    let delta = stored("v1/directory-delta").expect("deltaLink persisted");
    assert_eq!(delta["delta_link"], "https://graph.test/v1.0/users/delta?$deltatoken=after");

    // A round without changes stores the new deltaLink, not the users again.
    env.now += 61_000;
    core.tick(&mut env);
    answer_directory(
        &mut core,
        &mut env,
        ok(
            200,
            serde_json::json!({"value": [], "@odata.deltaLink": "https://graph.test/v1.0/users/delta?$deltatoken=later"}),
        ),
    );
    let keys: Vec<String> = core
        .take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Store { key, value: Some(_) } => Some(key),
            _ => None,
        })
        .collect();
    assert!(
        keys.contains(&"v1/directory-delta".to_string()) && !keys.iter().any(|k| k.starts_with("v2/directory")),
        "{keys:?}"
    );
}

#[test]
fn a_failed_delta_round_changes_nothing_and_a_gone_delta_state_resyncs_in_full() {
    let (mut core, mut env, _) = synced(3, 1);
    env.now += 61_000;
    core.tick(&mut env);
    answer_directory(
        &mut core,
        &mut env,
        ok(
            200,
            serde_json::json!({
                "value": [{"id": ms_id(0), "@removed": {"reason": "deleted"}}],
                "@odata.nextLink": "https://graph.test/v1.0/users/delta?$skiptoken=p2"
            }),
        ),
    );
    answer_directory(&mut core, &mut env, ok(503, serde_json::json!({"error": {"code": "serviceNotAvailable"}})));
    let s = core.status(&env);
    assert_eq!(s.mapped_users, 3, "the partial round's removal was discarded");
    assert!(matches!(s.health, Health::Degraded(ref p) if p.code == "serviceNotAvailable"), "{:?}", s.health);
    // The retry uses the same deltaLink; Graph says the delta state is gone (410).
    env.now += 10 * 60_000;
    core.tick(&mut env);
    let r = answer_directory(&mut core, &mut env, ok(410, serde_json::json!({"error": {"code": "resyncRequired"}})));
    assert!(r.url.ends_with("$deltatoken=next"), "{}", r.url);
    // A full resync follows at once: the "latest" anchor, then /users.
    let r = answer_directory(
        &mut core,
        &mut env,
        directory_answer(
            &HttpRequest {
                method: "GET".into(),
                url: "https://graph.test/v1.0/users/delta".into(),
                headers: vec![],
                body: vec![],
            },
            vec![],
        ),
    );
    assert!(r.url.contains("/v1.0/users/delta?") && r.url.contains("$deltatoken=latest"), "{}", r.url);
    let value: Vec<_> = (0..3).map(|i| serde_json::json!({"id": ms_id(i), "mail": format!("u{i}@x.com")})).collect();
    let r = answer_directory(&mut core, &mut env, ok(200, serde_json::json!({ "value": value })));
    assert!(r.url.contains("/v1.0/users?") && r.url.contains("$top=999"), "{}", r.url);
    let s = core.status(&env);
    assert_eq!(s.mapped_users, 3);
    assert_eq!(s.counters.iter().find(|(k, _)| k == "directory.resync-required").map(|(_, v)| *v), Some(1));
    // syncStateNotFound (a 400) means the same.
    env.now += 61_000;
    core.tick(&mut env);
    answer_directory(&mut core, &mut env, ok(400, serde_json::json!({"error": {"code": "syncStateNotFound"}})));
    let reqs = requests(&core.take_effects());
    assert!(reqs.iter().any(|(_, r)| r.url.contains("$deltatoken=latest")));
}

fn counter(core: &Core, env: &FakeEnv, name: &str) -> u64 {
    core.status(env).counters.into_iter().find(|(k, _)| k == name).map_or(0, |(_, v)| v)
}

#[test]
fn validation_tokens_are_required_and_checked_before_any_item() {
    let (mut core, mut env, created) = synced(3, 1);
    let cs = created[0]["clientState"].as_str().unwrap().to_string();
    let item = || notification("sub-1", &cs, &ms_id(1), "0005", "Busy");
    let _ = core.take_effects();
    // No tokens at all: refused, and the status tells the admin how to fix the tenant.
    let r = core.on_notification(&mut env, &webhook_with_tokens(vec![item()], vec![]));
    assert_eq!(r, NotificationOutcome::Taken);
    assert!(publishes(&core.take_effects()).is_empty());
    let Health::Error(p) = core.status(&env).health else { panic!() };
    assert_eq!(p.code, "validation-tokens-missing");
    assert!(p.hint.contains("0bf30f3b-4a52-48df-9a82-234910c4a086"));
    // Tokens for another app, or from another caller: refused and counted, health untouched.
    for t in [
        validation_token("test-kid", "another-app", crate::jwt::GRAPH_CHANGE_TRACKING_APP_ID),
        validation_token("test-kid", "client", "not-graph"),
    ] {
        core.on_notification(&mut env, &webhook_with_tokens(vec![item()], vec![t]));
        assert!(publishes(&core.take_effects()).is_empty());
    }
    assert_eq!(counter(&core, &env, "rejected.validation-token"), 2);
    // A good one is accepted and clears the misconfiguration error.
    core.on_notification(&mut env, &webhook(vec![item()]));
    assert_eq!(publishes(&core.take_effects()).len(), 1);
    assert_eq!(core.status(&env).health, Health::Ok);
}

#[test]
fn a_forged_batch_without_our_client_state_changes_no_health_and_is_never_kept() {
    let (mut core, mut env, created) = synced(3, 1);
    let cs = created[0]["clientState"].as_str().unwrap().to_string();
    let _ = core.take_effects();
    let forged = || notification("sub-1", "not-the-client-state", &ms_id(1), "0005", "Busy");
    // Rich data without tokens, but not ours: counted, the health stays ok.
    core.on_notification(&mut env, &webhook_with_tokens(vec![forged()], vec![]));
    assert_eq!(core.status(&env).health, Health::Ok);
    assert_eq!(counter(&core, &env, "rejected.validation-token-missing"), 1);
    // Signed with a key nobody published, and not ours: refused at once, never kept aside.
    let token = validation_token("unknown-kid", "client", crate::jwt::GRAPH_CHANGE_TRACKING_APP_ID);
    core.on_notification(&mut env, &webhook_with_tokens(vec![forged()], vec![token]));
    let effects = core.take_effects();
    assert!(!effects.iter().any(|e| matches!(e, Effect::Store { key, .. } if key.starts_with("v2/waiting/"))));
    assert_eq!(counter(&core, &env, "notifications.waiting-for-keys"), 0);
    assert_eq!(counter(&core, &env, "rejected.validation-token"), 1);
    assert_eq!(core.status(&env).health, Health::Ok);
    // The same without tokens and with our clientState: the tenant's setting is missing.
    core.on_notification(
        &mut env,
        &webhook_with_tokens(vec![notification("sub-1", &cs, &ms_id(1), "0005", "Busy")], vec![]),
    );
    let Health::Error(p) = core.status(&env).health else { panic!() };
    assert_eq!(p.code, "validation-tokens-missing");
}

#[test]
fn a_token_signed_with_a_rotated_key_waits_for_the_keys_then_counts() {
    use base64::Engine as _;
    use rsa::traits::PublicKeyParts;
    let (mut core, mut env, created) = synced(3, 1);
    let cs = created[0]["clientState"].as_str().unwrap().to_string();
    let _ = core.take_effects();
    let token = validation_token("rotated-kid", "client", crate::jwt::GRAPH_CHANGE_TRACKING_APP_ID);
    let body = webhook_with_tokens(vec![notification("sub-1", &cs, &ms_id(2), "0005", "Away")], vec![token]);
    core.on_notification(&mut env, &body);
    let effects = core.take_effects();
    assert!(publishes(&effects).is_empty(), "waits");
    let parked = |effects: &[Effect]| -> Vec<String> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Store { key, value: Some(_) } if key.starts_with("v2/waiting/") => Some(key.clone()),
                _ => None,
            })
            .collect()
    };
    let first = parked(&effects);
    assert_eq!(first.len(), 1, "stored under a key of its own");
    // A second waiting batch writes only itself: the first is not rewritten.
    let token2 = validation_token("rotated-kid", "client", crate::jwt::GRAPH_CHANGE_TRACKING_APP_ID);
    let body2 = webhook_with_tokens(vec![notification("sub-1", &cs, &ms_id(1), "0006", "Away")], vec![token2]);
    core.on_notification(&mut env, &body2);
    let second = parked(&core.take_effects());
    assert_eq!(second.len(), 1);
    assert_ne!(second, first);
    assert_eq!(counter(&core, &env, "notifications.waiting-for-keys"), 2);
    // The keys were read moments ago: re-read only after 5 minutes.
    core.tick(&mut env);
    assert!(requests(&core.take_effects()).iter().all(|(_, r)| !r.url.contains("/common/")));
    env.now += 5 * 60 * 1000;
    core.tick(&mut env);
    let reqs = requests(&core.take_effects());
    let (id, _) = reqs.iter().find(|(_, r)| r.url.ends_with("openid-configuration")).expect("keys re-read");
    core.on_http_response(
        &mut env,
        *id,
        ok(200, serde_json::json!({"jwks_uri": "https://login.test/common/discovery/keys"})),
    );
    let reqs = requests(&core.take_effects());
    let (id, r) = reqs.iter().find(|(_, r)| r.url.ends_with("/discovery/keys")).expect("jwks read");
    assert!(r.headers.iter().all(|(k, _)| k != "authorization"), "public document, no token sent");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let k = test_key();
    let jwks = serde_json::json!({"keys": [{"kty": "RSA", "use": "sig", "kid": "rotated-kid",
        "n": b64.encode(k.n().to_bytes_be()), "e": b64.encode(k.e().to_bytes_be())}]});
    core.on_http_response(&mut env, *id, ok(200, jwks));
    let effects = core.take_effects();
    let p = publishes(&effects);
    assert_eq!(p.len(), 2, "the waiting batches are processed once the keys are known");
    assert_eq!(p[0].presence.availability, "Away");
    for k in first.iter().chain(&second) {
        assert!(effects.iter().any(|e| matches!(e, Effect::Store { key, value: None } if key == k)), "{k} removed");
    }
}

#[test]
fn waiting_batches_are_bounded_in_bytes() {
    let (mut core, mut env, created) = synced(3, 1);
    let cs = created[0]["clientState"].as_str().unwrap().to_string();
    let _ = core.take_effects();
    // Batches of 1 MiB each (padding in an extra field) signed with a key not yet known: at
    // most MAX_WAITING_BYTES of them wait, the oldest go first.
    let token = validation_token("rotated-kid", "client", crate::jwt::GRAPH_CHANGE_TRACKING_APP_ID);
    let mut item = notification("sub-1", &cs, &ms_id(2), "0005", "Away");
    item["padding"] = "x".repeat(1 << 20).into();
    let body = webhook_with_tokens(vec![item], vec![token]);
    let n = super::core::MAX_WAITING_BYTES / body.len() + 4;
    for _ in 0..n {
        core.on_notification(&mut env, &body);
    }
    let effects = core.take_effects();
    let stored: usize = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Store { key, value: Some(v) } if key.starts_with("v2/waiting/") => Some(v.len()),
            _ => None,
        })
        .sum();
    let removed = effects
        .iter()
        .filter(|e| matches!(e, Effect::Store { key, value: None } if key.starts_with("v2/waiting/")))
        .count();
    assert!(removed >= 4, "the oldest were dropped: {removed}");
    assert!(stored - removed * body.len() <= super::core::MAX_WAITING_BYTES);
    assert!(counter(&core, &env, "rejected.waiting-overflow") >= 4);
}

#[test]
fn validation_tokens_are_pinned_to_the_first_tenant_and_another_tenants_are_refused() {
    let (mut core, mut env, created) = synced(3, 1);
    let cs = created[0]["clientState"].as_str().unwrap().to_string();
    let _ = core.take_effects();
    let caller = crate::jwt::GRAPH_CHANGE_TRACKING_APP_ID;
    // The configured tenant id ("tenant") is not a GUID: the first good token pins its tenant.
    let ours = validation_token("test-kid", "client", caller);
    core.on_notification(
        &mut env,
        &webhook_with_tokens(vec![notification("sub-1", &cs, &ms_id(1), "0005", "Away")], vec![ours]),
    );
    let effects = core.take_effects();
    assert_eq!(publishes(&effects).len(), 1);
    assert!(effects.iter().any(|e| matches!(e, Effect::Store { key, value: Some(_) } if key == "v2/token-tenant")));
    // A token Microsoft signed for another tenant (a multi-tenant app's other customer).
    let theirs = validation_token_for("test-kid", "client", caller, "8c1d5e2a-3f4b-4c6d-9e8f-0a1b2c3d4e5f");
    core.on_notification(
        &mut env,
        &webhook_with_tokens(vec![notification("sub-1", &cs, &ms_id(2), "0006", "Busy")], vec![theirs]),
    );
    assert!(publishes(&core.take_effects()).is_empty());
    assert_eq!(counter(&core, &env, "rejected.validation-token"), 1);
    assert_eq!(core.status(&env).health, Health::Ok, "counted, not shown as the integration's health");
}

#[test]
fn reauthorization_required_fetches_a_fresh_token_then_renews_then_re_reads() {
    let (mut core, mut env, created) = synced(3, 1);
    let cs = created[0]["clientState"].as_str().unwrap().to_string();
    let _ = core.take_effects();
    let lifecycle = serde_json::json!({
        "subscriptionId": "sub-1", "clientState": cs, "lifecycleEvent": "reauthorizationRequired",
        "subscriptionExpirationDateTime": rfc3339(env.now + 3_000_000),
    });
    core.on_notification(&mut env, &webhook(vec![lifecycle]));
    let reqs = requests(&core.take_effects());
    assert_eq!(reqs.len(), 1, "{:?}", reqs.iter().map(|(_, r)| &r.url).collect::<Vec<_>>());
    let (id, r) = &reqs[0];
    assert!(r.url.ends_with("/token") && form(r)["grant_type"] == "password", "a fresh delegated token first");
    core.on_http_response(&mut env, *id, ok(200, serde_json::json!({"access_token": "fresh", "expires_in": 3599})));
    let reqs = requests(&core.take_effects());
    let (id, r) = reqs.iter().find(|(_, r)| r.method == "PATCH").expect("then the renewal");
    assert!(r.headers.iter().any(|(k, v)| k == "authorization" && v == "Bearer fresh"));
    let renewed = ok(200, serde_json::json!({"id": "sub-1", "expirationDateTime": rfc3339(env.now + 3_000_000)}));
    core.on_http_response(&mut env, *id, renewed);
    let reqs = requests(&core.take_effects());
    assert!(reqs.iter().any(|(_, r)| r.url.ends_with("getPresencesByUserId")), "then presence is re-read");
}

#[test]
fn state_carries_its_schema_version_and_a_newer_schema_is_refused_untouched() {
    // A first configure records the schema.
    let (_, env, _) = synced(5, 1);
    assert_eq!(env.stored.get("meta/state-schema").map(|v| v.as_slice()), Some(b"2".as_slice()));

    // State written by a newer release: refused with a reason, and nothing is written over it.
    let mut env2 = self::env(5);
    env2.stored = env.stored.clone();
    env2.stored.insert("meta/state-schema".into(), b"3".to_vec());
    let mut core = Core::new();
    match core.configure(&mut env2, settings(1)) {
        Err(ConfigError::Invalid(why)) => {
            assert!(why.contains("schema 3") && why.contains("newer plugin release"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(core.take_effects().iter().all(|e| !matches!(e, Effect::Store { .. } | Effect::Http { .. })));
}

/// Performs the core's stores and deletes on the fake state.
fn store_all(env: &mut FakeEnv, effects: &[Effect]) {
    for e in effects {
        if let Effect::Store { key, value } = e {
            match value {
                Some(v) => env.stored.insert(key.clone(), v.clone()),
                None => env.stored.remove(key),
            };
        }
    }
}

/// Schema-1 state as release 0.1.0 wrote it: the directory in one value, every subscription
/// in one value.
fn schema_1_state(users: usize) -> HashMap<String, Vec<u8>> {
    let graph_users: Vec<crate::mapping::GraphUser> = (0..users)
        .map(|i| serde_json::from_value(serde_json::json!({"id": ms_id(i), "mail": format!("U{i}@x.com")})).unwrap())
        .collect();
    let dir = crate::core::directory::PersistedDirectory { fetched_at_ms: T0 - 1000, users: graph_users };
    let members: Vec<String> = (0..users.min(650)).map(ms_id).collect();
    let subs = serde_json::json!({"tenant_id": "tenant", "client_id": "client", "slots": [["sync0@x.com",
        {"id": "sub-old", "client_state": "cs-old", "expires_at_ms": T0 + 3_000_000, "members": members}]]});
    let delta = serde_json::json!({"fetched_at_ms": T0 - 1000, "delta_link": "https://graph.test/v1.0/users/delta?$deltatoken=old", "full_at_ms": T0 - 5000});
    HashMap::from([
        ("meta/state-schema".to_string(), b"1".to_vec()),
        ("v1/directory".to_string(), serde_json::to_vec(&dir).unwrap()),
        ("v1/subscriptions".to_string(), subs.to_string().into_bytes()),
        ("v1/directory-delta".to_string(), delta.to_string().into_bytes()),
    ])
}

#[test]
fn schema_1_state_is_upgraded_as_it_is_read_and_a_large_directory_comes_back_in_steps() {
    // Small: all in the configure call.
    let mut env = env(5);
    env.stored = schema_1_state(5);
    let mut core = Core::new();
    core.configure(&mut env, settings(1)).unwrap();
    let effects = core.take_effects();
    let wrote = |k: &str| effects.iter().any(|e| matches!(e, Effect::Store { key, value: Some(_) } if key == k));
    let deleted = |k: &str| effects.iter().any(|e| matches!(e, Effect::Store { key, value: None } if key == k));
    assert!(wrote("meta/state-schema") && wrote("v2/subscription/0000") && wrote("v2/directory"));
    assert!(deleted("v1/subscriptions") && deleted("v1/directory"));
    assert!(!requests(&effects).iter().any(|(_, r)| r.url.contains("/v1.0/users")), "restored, not re-read");
    assert_eq!(core.status(&env).mapped_users, 5);
    assert!(core.ready());

    // Large: 12,000 users come back over several calls; meanwhile notifications get 503 (the
    // host keeps them), and the old values are deleted only once the new ones are complete.
    let n = 12_000;
    let mut env = self::env(n);
    env.stored = schema_1_state(n);
    let mut core = Core::new();
    core.configure(&mut env, settings(19)).unwrap();
    assert!(!core.ready());
    let r = core.on_notification(&mut env, &webhook(vec![]));
    assert_eq!(r, NotificationOutcome::RetryLater);
    let mut calls = 1;
    let mut effects = core.take_effects();
    while !core.ready() || effects.iter().any(|e| matches!(e, Effect::RequestTick)) {
        store_all(&mut env, &effects);
        assert!(effects.iter().any(|e| matches!(e, Effect::RequestTick)), "asks for the next step");
        core.tick(&mut env);
        effects = core.take_effects();
        calls += 1;
        assert!(calls < 200, "never finished");
    }
    store_all(&mut env, &effects);
    assert!(calls >= 4, "in steps: {calls}");
    assert_eq!(core.status(&env).mapped_users as usize, n);
    assert!(!env.stored.contains_key("v1/directory") && !env.stored.contains_key("v1/subscriptions"));
    let head: serde_json::Value = serde_json::from_slice(&env.stored["v2/directory"]).unwrap();
    assert_eq!(head["users"].as_u64(), Some(n as u64));
    assert_eq!(head["chunks"].as_u64(), Some(n.div_ceil(crate::core::directory::DIR_CHUNK) as u64));

    // And a restart reads the chunks back; meanwhile the status shows the last counts.
    let mut core = Core::new();
    core.configure(&mut env, settings(19)).unwrap();
    assert!(!core.ready());
    assert_eq!(core.status(&env).mapped_users as usize, n, "not 0 while restoring");
    let mut calls = 0;
    while !core.ready() {
        core.take_effects();
        core.tick(&mut env);
        calls += 1;
        assert!(calls < 200);
    }
    assert!(calls >= 2, "in steps");
    assert_eq!(core.status(&env).mapped_users as usize, n);
}

#[test]
fn request_ids_of_a_new_instance_do_not_start_where_another_started() {
    let first = |draw_seed: u64| {
        let mut env = env(3);
        env.draws = draw_seed;
        let mut core = Core::new();
        core.configure(&mut env, settings(1)).unwrap();
        requests(&core.take_effects()).first().map(|(id, _)| *id).unwrap()
    };
    let (a, b) = (first(0), first(1000));
    assert_ne!(a, b);
    assert!(a > 1 && b > 1, "not counted from zero: {a} {b}");
}

#[test]
fn a_large_directory_is_matched_in_steps_and_the_old_mapping_holds_meanwhile() {
    let n = 2 * MAPPING_STEP;
    let (mut core, mut env, _) = synced(n, n.div_ceil(650));
    let s = core.status(&env);
    assert_eq!(s.mapped_users as usize, n);
    let steps = s.counters.iter().find(|(k, _)| k == "mapping.steps").map_or(0, |(_, v)| *v);
    assert!(steps >= 2, "{:?}", s.counters);

    // A new build (a user leaves the switchboard) starts; until it completes the mapping in
    // effect is the old one, and the host is asked for the next step.
    env.users.pop();
    core.sync_now(&mut env);
    let effects = core.take_effects();
    let (id, r) = requests(&effects).into_iter().find(|(_, r)| r.url.contains("/users")).unwrap();
    core.on_http_response(&mut env, id, directory_answer(&r, vec![]));
    let mut effects = core.take_effects();
    // Answer the directory read with the same users.
    loop {
        let reqs: Vec<_> = requests(&effects).into_iter().filter(|(_, r)| r.url.contains("/v1.0/users")).collect();
        if reqs.is_empty() {
            break;
        }
        for (id, r) in reqs {
            let value: Vec<_> =
                (0..n).map(|i| serde_json::json!({"id": ms_id(i), "mail": format!("U{i}@x.com")})).collect();
            core.on_http_response(&mut env, id, directory_answer(&r, value));
        }
        effects = core.take_effects();
    }
    assert!(effects.iter().any(|e| matches!(e, Effect::RequestTick)), "more steps to go");
    assert_eq!(core.status(&env).mapped_users as usize, n, "the old mapping is still in effect");
    let mut ticks = 0;
    while core.status(&env).mapped_users as usize != n - 1 {
        core.tick(&mut env);
        core.take_effects();
        ticks += 1;
        assert!(ticks < 20, "the build never completed");
    }
    assert!(ticks >= 1, "it took more than the call that started it");
}

/// Answers a full resync's directory requests with `pages` (each after the first linked from
/// the one before), then runs the rest as Graph would.
fn resync_with(core: &mut Core, env: &mut FakeEnv, pages: Vec<Vec<serde_json::Value>>) {
    core.sync_now(env);
    let mut effects = core.take_effects();
    let mut served = 0;
    loop {
        let reqs: Vec<_> = requests(&effects).into_iter().filter(|(_, r)| r.url.contains("/v1.0/users")).collect();
        if reqs.is_empty() {
            break;
        }
        for (id, r) in reqs {
            let resp = if r.url.contains("/users/delta") {
                directory_answer(&r, vec![])
            } else {
                let mut page = serde_json::json!({ "value": pages[served] });
                served += 1;
                if served < pages.len() {
                    page["@odata.nextLink"] = format!("https://graph.test/v1.0/users?$skiptoken=p{served}").into();
                }
                ok(200, page)
            };
            core.on_http_response(env, id, resp);
        }
        effects = core.take_effects();
    }
    assert_eq!(served, pages.len(), "every page was asked for");
    run_graph(core, env, 0, effects);
}

#[test]
fn a_full_resync_changes_only_what_differs_and_an_unchanged_directory_is_left_as_it_is() {
    // A switchboard that keeps a change counter: the mapping is rebuilt only for a change.
    let mut env = env(5);
    env.revision = 7;
    let mut core = Core::new();
    core.configure(&mut env, settings(1)).unwrap();
    let effects = core.take_effects();
    run_graph(&mut core, &mut env, 5, effects);
    assert_eq!(core.status(&env).mapped_users, 5);
    assert_eq!(counter(&core, &env, "mapping.builds"), 1);
    let user = |i: usize, mail: &str| serde_json::json!({"id": ms_id(i), "mail": mail});
    let same: Vec<_> = (0..5).map(|i| user(i, &format!("U{i}@x.com"))).collect();

    // The same users, in other pages and order: nothing is written, nothing rebuilt.
    let logged = env.log.len();
    let mut shuffled = same.clone();
    shuffled.reverse();
    resync_with(&mut core, &mut env, vec![shuffled[..2].to_vec(), shuffled[2..].to_vec()]);
    assert_eq!(counter(&core, &env, "directory.full-resyncs"), 2);
    assert_eq!(counter(&core, &env, "directory.full-resyncs-unchanged"), 1);
    assert_eq!(counter(&core, &env, "mapping.builds"), 1, "not rebuilt");
    let wrote_users = |log: &[Effect]| {
        log.iter().any(|e| matches!(e, Effect::Store { key, value: Some(_) } if key.starts_with("v2/directory")))
    };
    assert!(!wrote_users(&env.log[logged..]), "the unchanged directory is not written again");

    // User 1 changes its mail (no longer matched), user 3 is gone, user 2 is read twice (it
    // moved between pages), user 8 is new: only that changes.
    let logged = env.log.len();
    let pages = vec![
        vec![user(0, "U0@x.com"), user(1, "changed@x.com"), user(2, "U2@x.com")],
        vec![user(8, "nobody@x.com"), user(2, "U2@x.com"), user(4, "U4@x.com")],
    ];
    resync_with(&mut core, &mut env, pages);
    assert_eq!(counter(&core, &env, "directory.full-resyncs-unchanged"), 1);
    assert_eq!(counter(&core, &env, "mapping.builds"), 2);
    let s = core.status(&env);
    assert_eq!(s.mapped_users, 3, "users 0, 2 and 4");
    assert!(wrote_users(&env.log[logged..]), "the changed directory is written");
    let head: serde_json::Value = serde_json::from_slice(&env.stored["v2/directory"]).unwrap();
    assert_eq!(head["users"], 5, "0, 1, 2, 4 and 8: {head}");
    // What was written comes back as the directory after a restart.
    let mut again = Core::new();
    again.configure(&mut env, settings(1)).unwrap();
    let effects = again.take_effects();
    run_graph(&mut again, &mut env, 0, effects);
    assert_eq!(again.status(&env).mapped_users, 3);
    assert_eq!(again.status(&env).microsoft_users, 5);
}

#[test]
fn a_removed_integration_users_stored_subscription_is_deleted_at_restore() {
    let (_, mut env, _) = synced(700, 2);
    assert!(env.stored.contains_key("v2/subscription/0001"));
    let mut core = Core::new();
    core.configure(&mut env, settings(1)).unwrap();
    let effects = core.take_effects();
    let deleted: Vec<&str> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Store { key, value: None } if key.starts_with("v2/subscription/") => Some(key.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deleted, vec!["v2/subscription/0001"]);
}

#[test]
fn a_failed_re_read_shows_until_one_succeeds_then_clears() {
    let (mut core, mut env, _) = synced(3, 1);
    env.now += DEFAULT_RECONCILE_MS + 1_000;
    core.tick(&mut env);
    let reqs = requests(&core.take_effects());
    let (id, _) = reqs.iter().find(|(_, r)| r.url.ends_with("getPresencesByUserId")).expect("reconcile read");
    core.on_http_response(&mut env, *id, ok(503, serde_json::json!({"error": {"code": "ServiceUnavailable"}})));
    let _ = core.take_effects();
    assert!(core.status(&env).subscriptions[0].problem.is_some(), "the failure shows");
    // After the backoff the read is tried again and succeeds: the problem is gone.
    env.now += 5 * 60 * 1000;
    core.tick(&mut env);
    let reqs = requests(&core.take_effects());
    let (id, r) = reqs.iter().find(|(_, r)| r.url.ends_with("getPresencesByUserId")).expect("read again");
    answer_read(&mut core, &mut env, *id, r, &[]);
    let s = core.status(&env);
    assert_eq!(s.subscriptions[0].problem, None, "{s:?}");
    assert_eq!(s.health, Health::Ok);
}

fn sb_user(i: usize) -> SwitchboardUser {
    SwitchboardUser {
        id: format!("sb{i}"),
        display_name: format!("U{i}"),
        emails: vec![format!("u{i}@x.com")],
        line_number: None,
        active: true,
    }
}

/// The user ids a subscription request's `resource` filter names.
fn filter_ids(created: &serde_json::Value) -> BTreeSet<String> {
    let resource = created["resource"].as_str().unwrap();
    let inside = resource.split_once("id in (").unwrap().1.trim_end_matches(')');
    inside.split(',').map(|s| s.trim_matches('\'').to_string()).collect()
}

/// Ticks [`SWITCHBOARD_REREAD_MS`] later and answers like Graph until nothing is left to do.
fn settle(core: &mut Core, env: &mut FakeEnv, ms_users: usize) -> (Vec<PresenceUpdate>, Vec<serde_json::Value>) {
    env.now += SWITCHBOARD_REREAD_MS;
    core.tick(env);
    let effects = core.take_effects();
    run_graph(core, env, ms_users, effects)
}

/// A core synced with `sb_users` switchboard users (keeping a change counter) of `ms_users`
/// Microsoft users and `slots` integration users; also what it created.
fn synced_counted(sb_users: usize, ms_users: usize, slots: usize) -> (Core, FakeEnv, Vec<serde_json::Value>) {
    let mut env = env(sb_users);
    env.revision = 1;
    let mut core = Core::new();
    core.configure(&mut env, settings(slots)).unwrap();
    let effects = core.take_effects();
    let (_, created) = run_graph(&mut core, &mut env, ms_users, effects);
    (core, env, created)
}

#[test]
fn the_switchboards_change_counter_brings_users_in_and_only_shards_that_gained_users_are_replaced() {
    // 1,300 switchboard users of 2,000 Microsoft users, 2 integration users: 650 + 650.
    let (mut core, mut env, created) = synced_counted(1300, 2000, 2);
    assert_eq!(created.len(), 2);
    let before: Vec<BTreeSet<String>> = created.iter().map(filter_ids).collect();
    let shard1_client_state = created[1]["clientState"].as_str().unwrap().to_string();

    // An unchanged counter: nothing is read again, nothing moves.
    env.now += 10_000;
    let (published, created) = settle(&mut core, &mut env, 2000);
    assert!(published.is_empty() && created.is_empty());
    assert_eq!(counter(&core, &env, "switchboard.changes-seen"), 0);

    // A user joins and one leaves (shard 0): the counter moves; within seconds the joiner
    // shows its presence and is covered (in shard 0, the one with room); only shard 0's
    // subscription is replaced, and nobody else moves.
    env.users.push(sb_user(1300));
    let left = ms_id(5);
    env.users.retain(|u| u.id != "sb5");
    env.revision = 2;
    env.seen.clear();
    let (published, created) = settle(&mut core, &mut env, 2000);
    assert_eq!(counter(&core, &env, "switchboard.changes-seen"), 1);
    assert!(published.iter().any(|p| p.user_id == "sb1300" && p.microsoft_user_id == ms_id(1300)));
    assert!(published.iter().all(|p| p.microsoft_user_id != left));
    assert_eq!(created.len(), 1, "one shard replaced");
    let mut expected = before[0].clone();
    expected.remove(&left);
    expected.insert(ms_id(1300));
    assert_eq!(filter_ids(&created[0]), expected, "shard 0: the leaver out, the joiner in, the rest in place");
    let deletes: Vec<_> = env.seen.iter().filter(|(m, _)| m == "DELETE").collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert!(deletes[0].1.ends_with("/subscriptions/sub-1"), "{deletes:?}");
    let st = core.status(&env);
    assert_eq!(st.mapped_users, 1300);

    // A user of shard 1 leaves, nobody joins: shard 1's subscription stays (no gap for the 649
    // others) and its notifications for the leaver are ignored, until the renewal is due:
    // then it is replaced without the leaver instead of renewed.
    env.users.retain(|u| u.id != "sb700");
    env.revision = 3;
    env.seen.clear();
    let (published, created) = settle(&mut core, &mut env, 2000);
    assert!(created.is_empty() && published.is_empty());
    assert!(env.seen.iter().all(|(m, _)| m != "DELETE"), "{:?}", env.seen);
    assert_eq!(core.status(&env).mapped_users, 1299);
    let sub2 = core.status(&env).subscriptions[1].subscription_id.clone().unwrap();
    assert_eq!(sub2, "sub-2");
    let body = webhook(vec![notification(&sub2, &shard1_client_state, &ms_id(700), "0009", "Away")]);
    core.on_notification(&mut env, &body);
    assert!(publishes(&core.take_effects()).is_empty());
    assert_eq!(counter(&core, &env, "notifications.withdrawn-user"), 1);
    env.now += 45 * 60 * 1000;
    env.seen.clear();
    let (_, created) = settle(&mut core, &mut env, 2000);
    assert!(env.seen.iter().any(|(m, u)| m == "DELETE" && u.ends_with(&format!("/subscriptions/{sub2}"))));
    assert!(env.seen.iter().all(|(m, u)| m != "PATCH" || !u.ends_with(&sub2)), "replaced, not renewed: {:?}", env.seen);
    let replaced: Vec<_> = created.iter().map(filter_ids).filter(|ids| ids.contains(&ms_id(650))).collect();
    assert_eq!(replaced.len(), 1);
    let mut expected = before[1].clone();
    expected.remove(&ms_id(700));
    assert_eq!(replaced[0], expected);
}

#[test]
fn a_call_of_a_user_who_leaves_the_switchboard_is_cleared_and_moved_addresses_show_at_once() {
    let (mut core, mut env) = synced_pushing(3, 0);
    let sent = line(&mut core, &mut env, "sb1", LineState::Connected);
    core.on_http_response(&mut env, sent[0].0, ok(200, serde_json::json!({})));
    let _ = core.take_effects();
    // sb1 leaves mid-call; sb0 and sb2 swap addresses (a mistake corrected in the switchboard).
    env.users.retain(|u| u.id != "sb1");
    for u in env.users.iter_mut() {
        u.emails = vec![if u.id == "sb0" { "u2@x.com" } else { "u0@x.com" }.into()];
    }
    env.revision = 2;
    env.now += SWITCHBOARD_REREAD_MS;
    core.tick(&mut env);
    let effects = core.take_effects();
    let clears: Vec<_> = requests(&effects).into_iter().filter(|(_, r)| op_of(r) == "clear").collect();
    assert_eq!(clears.len(), 1, "the session held for the leaver is cleared");
    assert!(clears[0].1.url.contains(&ms_id(1)), "{}", clears[0].1.url);
    let published = publishes(&effects);
    assert!(published.iter().all(|p| p.origin == PresenceOrigin::Snapshot));
    let shown: BTreeSet<_> = published.into_iter().map(|p| (p.user_id, p.microsoft_user_id)).collect();
    let expected: BTreeSet<_> = [("sb0".to_string(), ms_id(2)), ("sb2".to_string(), ms_id(0))].into_iter().collect();
    assert_eq!(shown, expected, "each shows its new Microsoft user's presence at once");
    assert_eq!(counter(&core, &env, "line.calls-ended-by-directory"), 1);
    assert_eq!(counter(&core, &env, "mapping.changed-in-place"), 1, "the mapping in effect was changed, not rebuilt");
    assert!(matches!(
        core.on_line_event(&mut env, LineEvent { user_id: "sb1".into(), state: LineState::Ended, at_ms: 0 }),
        Err(LineEventError::UnmappedUser(_))
    ));
}

#[test]
fn ten_thousand_users_and_a_thousand_changes_move_nobody_else() {
    // 10,000 switchboard users of 12,000 Microsoft users, 16 integration users (10,400).
    let (mut core, mut env, mut created) = synced_counted(10_000, 12_000, 16);
    // Which subscription covers whom, by slot, from the status and the creation requests
    // (subscription ids are numbered in creation order).
    let slots = |core: &Core, env: &FakeEnv, created: &[serde_json::Value]| -> HashMap<String, usize> {
        let mut by_user = HashMap::new();
        for (slot, sub) in core.status(env).subscriptions.iter().enumerate() {
            let Some(id) = &sub.subscription_id else { continue };
            let n: usize = id.trim_start_matches("sub-").parse().unwrap();
            for u in filter_ids(&created[n - 1]) {
                assert!(by_user.insert(u, slot).is_none(), "a user in two subscriptions");
            }
        }
        by_user
    };
    let before = slots(&core, &env, &created);
    assert_eq!(before.len(), 10_000);
    // 400 leave, 400 join, 200 change address to another Microsoft user.
    let leavers: BTreeSet<String> = (0..400).map(|i| format!("sb{}", i * 25)).collect();
    let gone: BTreeSet<String> = (0..400).map(|i| ms_id(i * 25)).collect();
    env.users.retain(|u| !leavers.contains(&u.id));
    env.users.extend((10_000..10_400).map(sb_user));
    let mut moved_from = BTreeSet::new();
    for (k, u) in env.users.iter_mut().filter(|u| u.id.ends_with('7')).take(200).enumerate() {
        moved_from.insert(ms_id(u.id[2..].parse().unwrap()));
        u.emails = vec![format!("u{}@x.com", 10_400 + k)];
    }
    env.revision = 2;
    let (published, round) = settle(&mut core, &mut env, 12_000);
    created.extend(round.iter().cloned());
    let st = core.status(&env);
    assert_eq!((st.mapped_users, st.uncovered_users), (10_000, 0));
    assert_eq!(counter(&core, &env, "mapping.changed-in-place"), 1, "1,200 pairs changed in place");
    let after = slots(&core, &env, &created);
    // Every user mapped now is covered; whoever joined has been shown.
    let shown: BTreeSet<_> = published.iter().map(|p| p.microsoft_user_id.clone()).collect();
    for i in (10_000..10_600).map(ms_id) {
        assert!(after.contains_key(&i) && shown.contains(&i), "{i}");
    }
    let moved = before.iter().filter(|(id, s)| after.get(*id).is_some_and(|t| t != *s)).count();
    assert_eq!(moved, 0, "a user stays in its subscription");
    // The 600 joiners went where there was most room: the last shard (about 410 free), then
    // the three that lost most (about 90 each); 4 of 16 subscriptions replaced, not all.
    assert!(round.len() <= 4, "{} subscriptions replaced", round.len());
    // Those who left are still listed only in subscriptions that were not replaced.
    let still: usize = gone.iter().chain(&moved_from).filter(|u| after.contains_key(*u)).count();
    assert!(still > 0 && still < 600, "{still}");
}

#[test]
fn a_switchboard_user_who_loses_its_microsoft_user_is_withdrawn() {
    let (mut core, mut env, _) = synced_counted(4, 4, 1);
    // sb1's address now matches nobody; sb2 leaves the switchboard (nothing to withdraw:
    // the switchboard no longer has it); sb3 keeps its user.
    env.users[1].emails = vec!["nobody@x.com".into()];
    env.users.retain(|u| u.id != "sb2");
    env.revision = 2;
    env.now += SWITCHBOARD_REREAD_MS;
    core.tick(&mut env);
    let withdrawn: Vec<String> = core
        .take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Withdraw(id) => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(withdrawn, vec!["sb1".to_string()]);
    assert_eq!(counter(&core, &env, "presence.withdrawn"), 1);
    assert_eq!(core.status(&env).mapped_users, 2);
}

#[test]
fn a_user_who_leaves_and_comes_back_before_the_renewal_is_read_again_at_once() {
    let (mut core, mut env, _) = synced_counted(4, 4, 1);
    let sb2 = env.users[2].clone();
    env.users.retain(|u| u.id != "sb2");
    env.revision = 2;
    let (published, created) = settle(&mut core, &mut env, 4);
    assert!(published.is_empty() && created.is_empty(), "the subscription stays until its renewal");
    // Back in the switchboard (its Microsoft user is still in the subscription): its presence
    // is read, its only, and shown; nothing is replaced.
    env.users.push(sb2);
    env.revision = 3;
    env.seen.clear();
    let (published, created) = settle(&mut core, &mut env, 4);
    assert!(created.is_empty());
    assert!(env.seen.iter().all(|(m, _)| m != "DELETE"), "{:?}", env.seen);
    assert_eq!(published.iter().map(|p| p.user_id.as_str()).collect::<Vec<_>>(), vec!["sb2"]);
    assert_eq!(env.seen.iter().filter(|(_, u)| u.ends_with("getPresencesByUserId")).count(), 1);
}

#[test]
fn retiring_withdraws_every_user_clears_our_sessions_deletes_every_subscription_and_starts_nothing_after() {
    let mut env = env(700);
    let mut core = Core::new();
    let mut s = settings(2);
    s.push_line_status = true;
    core.configure(&mut env, s).unwrap();
    let effects = core.take_effects();
    run_graph(&mut core, &mut env, 700, effects);
    let sent = line(&mut core, &mut env, "sb1", LineState::Connected);
    assert_eq!(sent.iter().map(|(_, r)| op_of(r)).collect::<Vec<_>>(), vec!["set"]);
    core.on_http_response(&mut env, sent[0].0, ok(200, serde_json::json!({})));
    let _ = core.take_effects();

    let p = core.retire(&mut env);
    assert_eq!((p.subscriptions, p.sessions, p.users_withdrawn, p.done()), (2, 1, 700, false), "{p:?}");
    let effects = core.take_effects();
    let withdrawn: BTreeSet<String> =
        effects.iter().filter_map(|e| if let Effect::Withdraw(u) = e { Some(u.clone()) } else { None }).collect();
    assert_eq!(withdrawn.len(), 700, "every mapped switchboard user, at once");
    // One request at a time per service: answered as they come, the first DELETE failing.
    let mut reqs = requests(&effects);
    let mut ops = Vec::new();
    let mut failed = false;
    while !reqs.is_empty() {
        for (id, r) in &reqs {
            ops.push(format!("{} {}", r.method, op_of(r)));
            let answer = match r.method.as_str() {
                "DELETE" if !failed => {
                    failed = true;
                    ok(503, serde_json::json!({}))
                }
                "DELETE" => ok(204, serde_json::json!(null)),
                _ => ok(200, serde_json::json!({})),
            };
            core.on_http_response(&mut env, *id, answer);
        }
        reqs = requests(&core.take_effects());
    }
    ops.sort();
    assert_eq!(ops, vec!["DELETE other", "DELETE other", "POST clear"], "{ops:?}");
    let p = core.retire(&mut env);
    assert_eq!((p.subscriptions, p.sessions, p.users_withdrawn), (1, 0, 700), "{p:?}");
    assert!(p.problem.as_deref().is_some_and(|m| m.starts_with("subscription-stuck")), "{p:?}");
    assert!(core.take_effects().iter().all(|e| !matches!(e, Effect::Withdraw(_))), "withdrawn once");
    // Retried after its backoff; nothing else goes out, ever: no directory, no subscription,
    // no presence read, no push.
    let mut retried = 0;
    for _ in 0..200 {
        env.now += 60_000;
        core.tick(&mut env);
        reqs = requests(&core.take_effects());
        reqs.extend(requests(&core.take_effects()));
        for (id, r) in &reqs {
            if r.url.ends_with("/oauth2/v2.0/token") {
                let token = serde_json::json!({"access_token": "tok-again", "expires_in": 3599});
                core.on_http_response(&mut env, *id, ok(200, token));
                continue;
            }
            assert_eq!(r.method, "DELETE", "only the deletion goes on: {} {}", r.method, r.url);
            retried += 1;
            core.on_http_response(&mut env, *id, ok(204, serde_json::json!(null)));
        }
    }
    assert_eq!(retried, 1);
    let p = core.retire(&mut env);
    assert!(p.done() && p.problem.is_none(), "{p:?}");
    let at_ms = env.now;
    let taken = core.on_line_event(&mut env, LineEvent { user_id: "sb2".into(), state: LineState::Connected, at_ms });
    assert!(matches!(taken, Err(LineEventError::PushDisabled)), "no line event is taken: {taken:?}");
    core.sync_now(&mut env);
    env.revision += 1;
    env.now += FULL_RESYNC_MS;
    core.tick(&mut env);
    let after: Vec<String> =
        requests(&core.take_effects()).iter().map(|(_, r)| format!("{} {}", r.method, r.url)).collect();
    assert!(after.is_empty(), "no directory read, no subscription: {after:?}");
}

#[test]
fn the_users_list_says_how_each_user_was_matched_or_why_not_and_counts_the_reasons() {
    let mut env = env(6);
    env.users[2].emails = vec![];
    env.users[3].emails = vec!["u4@x.com".into()];
    env.users[5].emails = vec!["nobody@x.com".into()];
    let mut s = settings(1);
    s.overrides = vec![MappingOverride { switchboard_user_id: "sb1".into(), microsoft_user: ms_id(1) }];
    let mut core = Core::new();
    // Before Microsoft's directory is read, no one can be matched, and the list says why.
    core.configure(&mut env, s).unwrap();
    let before = core.mapping_counts(&mut env);
    assert_eq!((before.switchboard_users, before.directory_not_read), (6, 6), "{before:?}");
    let effects = core.take_effects();
    run_graph(&mut core, &mut env, 6, effects);

    let c = core.mapping_counts(&mut env);
    let want = MappingCounts {
        switchboard_users: 6,
        mapped: 2,
        by_override: 1,
        by_mail: 1,
        no_address: 1,
        no_match: 1,
        conflict: 2,
        ..Default::default()
    };
    assert_eq!(c, want);

    let query = |search: &str, filter, offset, limit| UsersQuery { search: search.into(), filter, offset, limit };
    let page = core.switchboard_users_view(&mut env, query("", UsersFilter::Unmatched, 0, 50));
    let why: Vec<(&str, Option<Unmatched>)> =
        page.rows.iter().map(|r| (r.switchboard_user_id.as_str(), r.unmatched)).collect();
    assert_eq!(
        why,
        [
            ("sb2", Some(Unmatched::NoAddress)),
            ("sb3", Some(Unmatched::Conflict)),
            ("sb4", Some(Unmatched::Conflict)),
            ("sb5", Some(Unmatched::NoMatch))
        ]
    );
    assert_eq!(page.rows[1].conflict.as_deref(), Some("u4@x.com"));

    let one = core.switchboard_users_view(&mut env, query("U0@X", UsersFilter::All, 0, 50));
    assert_eq!(one.total, 1);
    let r = &one.rows[0];
    assert_eq!((r.matched_by, r.microsoft_user_id.clone()), (Some(MatchedBy::Mail), Some(ms_id(0))));
    assert_eq!(r.integration_user.as_deref(), Some("sync0@x.com"));
    assert_eq!(r.presence.as_ref().map(|p| p.availability.as_str()), Some("Available"));
    let overridden = core.switchboard_users_view(&mut env, query("sb1", UsersFilter::All, 0, 50));
    assert_eq!(overridden.rows[0].matched_by, Some(MatchedBy::Override));

    // Pages, sorted by name: the total counts every match, the rows only the slice.
    let p2 = core.switchboard_users_view(&mut env, query("", UsersFilter::All, 2, 2));
    assert_eq!(p2.total, 6);
    assert_eq!(p2.rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["U2", "U3"]);
    assert!(core.take_effects().iter().all(|e| !matches!(e, Effect::Http { .. })), "a query sends nothing");
}

#[test]
fn an_integration_user_without_a_password_signs_in_with_the_kept_refresh_token_and_hands_back_its_successor() {
    let mut env = env(3);
    let mut s = settings(1);
    s.integration_users[0].password = String::new();
    // Neither a password nor a refresh token: missing credentials, nothing sent.
    let mut core = Core::new();
    core.configure(&mut env, s.clone()).unwrap();
    assert!(requests(&core.take_effects()).iter().all(|(_, r)| !form(r).contains_key("username")));
    assert!(
        matches!(core.status(&env).health, Health::MissingCredentials(ref m) if m.contains(&"integration-users[0].password".to_string()))
    );

    env.refresh.insert("sync0@x.com".into(), "rt-1".into());
    let mut core = Core::new();
    core.configure(&mut env, s).unwrap();
    let mut effects = core.take_effects();
    let mut kept = Vec::new();
    for _ in 0..20 {
        kept.extend(effects.iter().filter_map(|e| match e {
            Effect::KeepRefreshToken { username, token } => Some((username.clone(), token.clone())),
            _ => None,
        }));
        let reqs = requests(&effects);
        if reqs.is_empty() {
            break;
        }
        for (id, r) in reqs {
            let f = form(&r);
            let resp = if r.url.ends_with("/oauth2/v2.0/token")
                && f.get("grant_type").map(String::as_str) == Some("refresh_token")
            {
                assert_eq!(f["refresh_token"], "rt-1");
                assert!(f["scope"].contains("offline_access"));
                assert!(!f.contains_key("password"));
                ok(200, serde_json::json!({"access_token": "user-tok", "expires_in": 3599, "refresh_token": "rt-2"}))
            } else if r.url.ends_with("/oauth2/v2.0/token") {
                ok(200, serde_json::json!({"access_token": "app-tok", "expires_in": 3599}))
            } else if let Some(resp) = login_documents(&r) {
                resp
            } else if r.url.contains("/v1.0/users") {
                let value: Vec<_> =
                    (0..3).map(|i| serde_json::json!({"id": ms_id(i), "mail": format!("U{i}@x.com")})).collect();
                directory_answer(&r, value)
            } else if r.url.ends_with("/v1.0/subscriptions") {
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                ok(201, serde_json::json!({"id": "sub-1", "expirationDateTime": body["expirationDateTime"]}))
            } else {
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                let value: Vec<_> = body["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|id| serde_json::json!({"id": id, "availability": "Available", "activity": "Available"}))
                    .collect();
                ok(200, serde_json::json!({ "value": value }))
            };
            core.on_http_response(&mut env, id, resp);
        }
        effects = core.take_effects();
        if effects.iter().any(|e| matches!(e, Effect::RequestTick)) {
            core.tick(&mut env);
            effects.extend(core.take_effects());
        }
    }
    assert_eq!(kept, [("sync0@x.com".to_string(), "rt-2".to_string())], "the successor is handed back, once");
    assert!(
        core.status(&env).subscriptions.iter().any(|s| s.subscription_id.is_some()),
        "it subscribed with the user's token"
    );
}

/// A tick `ms` later, answered like Graph would; returns every effect seen.
fn later(core: &mut Core, env: &mut FakeEnv, users: usize, ms: u64) -> Vec<Effect> {
    env.log.clear();
    env.now += ms;
    core.tick(env);
    let effects = core.take_effects();
    run_graph(core, env, users, effects);
    std::mem::take(&mut env.log)
}

mod footprint;
mod notes;
mod policy;
mod polling;

/// A presence read's answer is applied PRESENCE_STEP users per call (the heaviest call at
/// 100,000 users was one 650-user answer, each published), the read ends only after its last
/// step, and a notification that comes between two steps is not overwritten by the older
/// state of the rest of the answer.
#[test]
fn a_presence_read_is_applied_in_bounded_steps_and_a_notification_between_them_wins() {
    let (mut core, mut env, created) = synced(650, 1);
    let cs = created[0]["clientState"].as_str().unwrap().to_string();
    // The periodic re-read comes due.
    env.now += 6 * 60 * 1000;
    core.tick(&mut env);
    let reqs = requests(&core.take_effects());
    let (id, read) = reqs.iter().find(|(_, r)| r.url.ends_with("getPresencesByUserId")).expect("a re-read");
    let ids: Vec<String> = serde_json::from_slice::<serde_json::Value>(&read.body).unwrap()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 650);
    let value: Vec<_> = ids
        .iter()
        .map(|u| serde_json::json!({"id": u, "availability": "Busy", "activity": "Busy", "sequenceNumber": "0002"}))
        .collect();
    core.on_http_response(&mut env, *id, ok(200, serde_json::json!({ "value": value })));
    let mut steps = vec![];
    let mut effects = core.take_effects();
    let last = ids.last().unwrap().clone();
    loop {
        let published = publishes(&effects);
        steps.push(published.len());
        assert!(published.iter().all(|p| p.presence.availability == "Busy"), "only the answer's state");
        if !effects.iter().any(|e| matches!(e, Effect::RequestTick)) {
            break;
        }
        if steps.len() == 1 {
            // Between two steps the last user of the answer changes in Teams.
            assert_eq!(core.status(&env).subscriptions[0].last_reconcile_ms, Some(T0), "the read is not over");
            // A periodic re-read is no new start: the status stays ok meanwhile.
            assert_eq!(core.status(&env).health, Health::Ok);
            core.on_notification(&mut env, &webhook(vec![notification("sub-1", &cs, &last, "0003", "Away")]));
            let p = publishes(&core.take_effects());
            assert_eq!(p.len(), 1);
            assert_eq!(p[0].presence.availability, "Away");
        }
        core.tick(&mut env);
        effects = core.take_effects();
    }
    assert!(steps.iter().all(|&n| n <= PRESENCE_STEP), "{steps:?}");
    assert_eq!(steps.len(), 650usize.div_ceil(PRESENCE_STEP), "{steps:?}");
    assert_eq!(steps.iter().sum::<usize>(), 649, "every user but the one the notification moved");
    assert_eq!(core.presence_of(&last).unwrap().availability, "Away");
    assert_eq!(core.status(&env).subscriptions[0].last_reconcile_ms, Some(env.now), "the read is over");
}
