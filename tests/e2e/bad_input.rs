//! Bad input: each gets a clear error that names the problem, and changes nothing.

use e2e_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_client_secret_reports_7000215_with_its_hint() {
    let t = start(50, 1, |o| o.configured_secret = "the-secret-id-not-the-value".into()).await;
    let s = t.wait_status(EVENTUALLY, |s| s.state == "error").await;
    assert_eq!(s.code.as_deref(), Some("AADSTS7000215"), "{s:?}");
    let hint = s.hint.clone().unwrap_or_default();
    assert!(hint.contains("wait a minute") && hint.contains("Secret ID"), "{hint}");
    assert_eq!(s.users, 0);
    assert!(t.emulator.subscriptions().is_empty());
    assert!(t.switchboard.all_shown().is_empty());
    // The status never shows the secret.
    let text = t.admin_json("/status").await.to_string();
    assert!(!text.contains("the-secret-id-not-the-value"));
    assert!(text.contains("AADSTS7000215"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mfa_on_an_integration_user_reports_50076_with_the_conditional_access_hint() {
    let t = start(50, 1, |o| o.mfa_users = vec![0]).await;
    let s = t.wait_status(EVENTUALLY, |s| s.state == "error").await;
    assert_eq!(s.code.as_deref(), Some("AADSTS50076"), "{s:?}");
    assert!(s.hint.as_deref().unwrap_or("").contains("Conditional Access"));
    assert_eq!(s.subscriptions[0].code.as_deref(), Some("AADSTS50076"));
    assert!(t.emulator.subscriptions().is_empty());
    // The directory was still read and mapped: the admin sees how many users would sync.
    assert_eq!(s.users, 50);
}

async fn synced(users: usize) -> TestScenario {
    let t = start(users, 1, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert!(t.wait_in_sync(users, EVENTUALLY).await.is_empty());
    t
}

fn counter(s: &presence_host::StatusView, name: &str) -> u64 {
    s.counters.get(name).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_notifications_are_ignored_and_counted() {
    let t = synced(20).await;
    let sub = t.emulator.subscriptions()[0].id.clone();
    let user = t.ms_user(0);
    let before = t.switchboard.shown("sb-00000").unwrap();
    let url = t.notification_url();
    let emu = t.emulator.clone();
    let sub2 = sub.clone();
    let send = |item: serde_json::Value| {
        let url = url.clone();
        let body = emu.batch_body(&sub2, vec![item]);
        async move { post(&url, "application/json", body.to_string().into_bytes()).await }
    };

    // Positive control: a genuine item is accepted.
    let good = t.emulator.notification_for(&sub, &user, "Busy", "InACall").unwrap();
    assert_eq!(send(good).await.0, 202);
    let s = t.status().await;
    assert_eq!(counter(&s, "notifications.accepted"), 1);
    assert_eq!(t.switchboard.shown("sb-00000").unwrap().activity, "InACall");

    // Wrong clientState.
    let mut item = t.emulator.notification_for(&sub, &user, "Away", "Away").unwrap();
    item["clientState"] = json!("guessed");
    assert_eq!(send(item).await.0, 202, "Graph gets 202; the item is dropped");
    // Unknown subscription id.
    let mut item = t.emulator.notification_for(&sub, &user, "Away", "Away").unwrap();
    item["subscriptionId"] = json!("00000000-0000-0000-0000-000000000000");
    send(item).await;
    // Bad HMAC: data altered after signing.
    let mut item = t.emulator.notification_for(&sub, &user, "Away", "Away").unwrap();
    item["encryptedContent"]["dataSignature"] = json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    send(item).await;

    // No validation token at all, and a token whose signature was tampered with: the whole
    // batch is dropped before any item is looked at.
    let item = t.emulator.notification_for(&sub, &user, "Away", "Away").unwrap();
    let no_token = json!({ "value": [item.clone()] }).to_string().into_bytes();
    assert_eq!(post(&url, "application/json", no_token).await.0, 202);
    let mut forged = t.emulator.batch_body(&sub, vec![item]);
    let token = forged["validationTokens"][0].as_str().unwrap().to_string();
    let (head, sig) = token.rsplit_once('.').unwrap();
    let flipped = match sig.strip_prefix('A') {
        Some(rest) => format!("B{rest}"),
        None => format!("A{}", &sig[1..]),
    };
    forged["validationTokens"] = json!([format!("{head}.{flipped}")]);
    assert_eq!(post(&url, "application/json", forged.to_string().into_bytes()).await.0, 202);

    let s = t.status().await;
    assert_eq!(counter(&s, "rejected.validation-token-missing"), 1, "{:?}", s.counters);
    assert_eq!(counter(&s, "rejected.validation-token"), 1, "{:?}", s.counters);
    assert_eq!(counter(&s, "rejected.client-state"), 1, "{:?}", s.counters);
    assert_eq!(counter(&s, "rejected.unknown-subscription"), 1, "{:?}", s.counters);
    assert_eq!(counter(&s, "rejected.signature"), 1, "{:?}", s.counters);
    assert_eq!(counter(&s, "notifications.accepted"), 1);
    let shown = t.switchboard.shown("sb-00000").unwrap();
    assert_eq!(shown.activity, "InACall", "nothing forged reached the switchboard");
    assert_ne!(before.updates, shown.updates);
    // A batch without tokens means the tenant is misconfigured: the status says how to fix it.
    assert_eq!(s.state, "error");
    assert_eq!(s.code.as_deref(), Some("validation-tokens-missing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_bodies_get_400_and_are_counted() {
    let t = synced(10).await;
    let url = t.notification_url();
    let (status, body) = post(&url, "application/json", b"{\"value\": [".to_vec()).await;
    assert_eq!(status, 400);
    assert!(body.contains("malformed"), "{body}");
    let (status, body) = post(&url, "application/json", b"{\"value\": 7}".to_vec()).await;
    assert_eq!(status, 400);
    assert!(body.contains("malformed") && body.contains("sequence"), "{body}");
    // A body past the bound is answered once the bound is passed, and the connection closed.
    // A client still writing the rest races that close (it may see a broken pipe before it
    // reads the answer), so only one byte more than the bound is sent of the 5 MiB declared.
    let (status, body) = post_past_the_bound(&url, 5 << 20, presence_host::sandbox::MAX_WEBHOOK_BODY + 1).await;
    assert_eq!(status, 413);
    assert!(body.contains("exceeds"), "{body}");
    let s = t.status().await;
    assert_eq!(counter(&s, "rejected.malformed"), 2, "{:?}", s.counters);
    assert_eq!(counter(&s, "rejected.oversized"), 1);
    let v = t.admin_json("/status/contoso").await;
    assert_eq!(v["counters"]["rejected.oversized"], 1);
    // Still healthy and in sync.
    assert_eq!(t.status().await.state, "ok");
    assert!(t.mismatches(10).is_empty());
}

/// POSTs to `url` a request head that declares a JSON body of `len` bytes, sends `sent` bytes
/// of it, and reads the answer until the server closes the connection: its status and body.
async fn post_past_the_bound(url: &str, len: usize, sent: usize) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let u = url::Url::parse(url).unwrap();
    let authority = format!("{}:{}", u.host_str().unwrap(), u.port_or_known_default().unwrap());
    let mut c = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n",
        u.path()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&vec![b' '; sent]).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(EVENTUALLY, c.read_to_end(&mut buf)).await.expect("answered and closed").unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status line: {text}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_token_is_echoed_url_decoded_as_plain_text() {
    let t = synced(5).await;
    let token = "Validation: Testing client application reachability <&> 100%";
    let enc: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
    let r =
        reqwest::Client::new().post(format!("{}?validationToken={enc}", t.notification_url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert_eq!(r.text().await.unwrap(), token);
}

#[test]
fn config_with_a_malformed_tenant_id_is_refused_at_load_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.toml");
    std::fs::write(
        &path,
        r#"
[host]
public_base_url = "https://presence.example.com"
admin_token_file = "admin-token"
kek_file = "kek"

[[integration]]
name = "contoso"
tenant_id = "5db68c59-bbeb-41d7-a5df"
client_id = "0ed2fcf1-b202-4699-afe4-cbc36ead3235"
client_secret = "top-secret-value"
users = [{ username = "sync@contoso.com", password = "pw-secret" }]
"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("admin-token"), "an-admin-token-of-some-length").unwrap();
    std::fs::write(dir.path().join("kek"), presence_host::seal::Kek::encode(&[1; 32])).unwrap();
    let e = presence_host::Config::load(&path).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("host.toml"), "{msg}");
    assert!(msg.contains("integration[0].tenant_id"), "{msg}");
    assert!(msg.contains("neither a GUID nor a domain"), "{msg}");
    assert!(!msg.contains("top-secret-value") && !msg.contains("pw-secret"));
}

/// JSON nested as deep as a parser takes it (serde_json stops at 128 levels), where the
/// plugin reads it: in an item, in a validation token's claims, and past the limit. The plugin
/// runs on a small stack (`plugin/component/build.rs`): this is its worst case on the public
/// path, and it costs no trap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_costs_no_trap() {
    let t = synced(10).await;
    let sub = t.emulator.subscriptions()[0].id.clone();
    let user = t.ms_user(0);
    let url = t.notification_url();
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let nested_value = |depth: usize| -> serde_json::Value { serde_json::from_str(&nested(depth)).unwrap() };
    // In a genuine item: fields the plugin does not read are skipped, the item is taken.
    let mut item = t.emulator.notification_for(&sub, &user, "Away", "Away").unwrap();
    item["extra"] = nested_value(120);
    item["resourceData"] = nested_value(120);
    let body = t.emulator.batch_body(&sub, vec![item]);
    assert_eq!(post(&url, "application/json", body.to_string().into_bytes()).await.0, 202);
    // In the token's claims (its signature no longer matches them): the batch is refused.
    use base64::Engine as _;
    let item = t.emulator.notification_for(&sub, &user, "Busy", "Busy").unwrap();
    let mut body = t.emulator.batch_body(&sub, vec![item]);
    let token = body["validationTokens"][0].as_str().unwrap().to_string();
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!({ "aud": nested_value(120) }).to_string());
    body["validationTokens"] = json!([parts.join(".")]);
    assert_eq!(post(&url, "application/json", body.to_string().into_bytes()).await.0, 202);
    // An item nested past the limit: malformed (Graph gets 202; the item is dropped).
    let deep = format!("{{\"value\": [{}]}}", nested(200));
    assert_eq!(post(&url, "application/json", deep.into_bytes()).await.0, 202);

    let s = t.wait_status(EVENTUALLY, |s| s.counters.get("inbox.processed").copied().unwrap_or(0) >= 3).await;
    assert_eq!(s.traps, 0, "{:?}", s.last_trap);
    assert_eq!(s.state, "ok");
    assert_eq!(counter(&s, "notifications.accepted"), 1, "{:?}", s.counters);
    assert_eq!(counter(&s, "rejected.validation-token"), 1, "{:?}", s.counters);
    assert_eq!(counter(&s, "rejected.malformed"), 1, "{:?}", s.counters);
    let shown = t.wait_until(EVENTUALLY, || t.switchboard.shown("sb-00000").is_some_and(|s| s.activity == "Away"));
    assert!(shown.await, "the genuine item was not shown");
}
