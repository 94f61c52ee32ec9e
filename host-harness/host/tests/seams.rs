//! The host's actor, inbox and hot swap, driven through the public API on fake backends: an
//! in-memory state store, an HTTP client that records what the plugin sends and answers 503,
//! and a switchboard of three users. The real plugin runs (compiled once: the tests share a
//! compile cache).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use presence_host::error::StoreError;
use presence_host::http::{HttpFuture, OutboundRequest, Response};
use presence_host::store::{InboxEntry, StoredKey};
use presence_host::switchboard::{LineEvent, PresenceUpdate, SwitchboardUser, UnknownUser};
use presence_host::{
    Backends, Config, Host, HttpClient, StateStore, StatusView, SwapOutcome, Switchboard, SystemClock,
};

/// An inbox row: integration, kind, body, when it arrived.
type InboxRow = (String, String, Vec<u8>, u64);
/// A stored key: certificate id, PKCS#8, certificate DER.
type KeyRow = (String, Vec<u8>, Vec<u8>);

/// An in-memory state store that counts backups and restores.
#[derive(Default)]
struct MemStore {
    kv: Mutex<BTreeMap<(String, String), Vec<u8>>>,
    backup: Mutex<BTreeMap<(String, String), Vec<u8>>>,
    inbox: Mutex<BTreeMap<i64, InboxRow>>,
    next_id: Mutex<i64>,
    keys: Mutex<BTreeMap<String, KeyRow>>,
    calls: Mutex<Vec<&'static str>>,
    /// Inbox rows deleted, in order.
    deleted: Mutex<Vec<i64>>,
    /// Plugin state writes fail as unavailable while set (a full disk).
    fail_writes: std::sync::atomic::AtomicBool,
    /// Reading the inbox fails while set (the actor cannot drain it: a full inbox, made
    /// certain).
    hold_inbox: std::sync::atomic::AtomicBool,
    records: Mutex<BTreeMap<String, Vec<u8>>>,
    credentials: Mutex<BTreeMap<(String, String), Vec<u8>>>,
}

impl MemStore {
    fn called(&self, what: &str) -> usize {
        self.calls.lock().unwrap().iter().filter(|c| **c == what).count()
    }
    fn inbox_len(&self) -> usize {
        self.inbox.lock().unwrap().len()
    }
}

impl StateStore for MemStore {
    fn get(&self, i: &str, k: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.kv.lock().unwrap().get(&(i.into(), k.into())).cloned())
    }
    fn set(&self, i: &str, k: &str, v: &[u8]) -> Result<(), StoreError> {
        if self.fail_writes.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable("disk I/O error".into()));
        }
        self.kv.lock().unwrap().insert((i.into(), k.into()), v.to_vec());
        Ok(())
    }
    fn delete(&self, i: &str, k: &str) -> Result<(), StoreError> {
        self.kv.lock().unwrap().remove(&(i.to_string(), k.to_string()));
        Ok(())
    }
    fn keys(&self, i: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .kv
            .lock()
            .unwrap()
            .keys()
            .filter(|(n, k)| n == i && k.starts_with(prefix))
            .map(|(_, k)| k.clone())
            .collect())
    }
    fn kv_backup(&self, i: &str) -> Result<(), StoreError> {
        self.calls.lock().unwrap().push("kv_backup");
        let kv = self.kv.lock().unwrap();
        let mut b = self.backup.lock().unwrap();
        b.retain(|(n, _), _| n != i);
        b.extend(kv.iter().filter(|((n, _), _)| n == i).map(|(k, v)| (k.clone(), v.clone())));
        Ok(())
    }
    fn kv_restore(&self, i: &str) -> Result<(), StoreError> {
        self.calls.lock().unwrap().push("kv_restore");
        let b = self.backup.lock().unwrap();
        let mut kv = self.kv.lock().unwrap();
        kv.retain(|(n, _), _| n != i);
        kv.extend(b.iter().filter(|((n, _), _)| n == i).map(|(k, v)| (k.clone(), v.clone())));
        Ok(())
    }
    fn inbox_push(&self, i: &str, kind: &str, body: &[u8], at: u64) -> Result<i64, StoreError> {
        let mut id = self.next_id.lock().unwrap();
        *id += 1;
        self.inbox.lock().unwrap().insert(*id, (i.into(), kind.into(), body.to_vec(), at));
        Ok(*id)
    }
    fn inbox_delete(&self, id: i64) -> Result<(), StoreError> {
        self.calls.lock().unwrap().push("inbox_delete");
        self.deleted.lock().unwrap().push(id);
        self.inbox.lock().unwrap().remove(&id);
        Ok(())
    }
    fn inbox_size(&self, i: &str) -> Result<(u64, u64), StoreError> {
        let inbox = self.inbox.lock().unwrap();
        let rows: Vec<_> = inbox.values().filter(|(n, _, _, _)| n == i).collect();
        Ok((rows.len() as u64, rows.iter().map(|(_, _, b, _)| b.len() as u64).sum()))
    }
    fn inbox_after(&self, i: &str, after: i64, limit: usize) -> Result<Vec<InboxEntry>, StoreError> {
        if self.hold_inbox.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable("held".into()));
        }
        Ok(self
            .inbox
            .lock()
            .unwrap()
            .range(after + 1..)
            .filter(|(_, (n, _, _, _))| n == i)
            .take(limit)
            .map(|(id, (_, kind, body, at))| InboxEntry {
                id: *id,
                kind: kind.clone(),
                body: body.clone(),
                received_ms: *at,
            })
            .collect())
    }
    fn key(&self, i: &str) -> Result<Option<StoredKey>, StoreError> {
        Ok(self.keys.lock().unwrap().get(i).map(|(id, p, c)| StoredKey {
            cert_id: id.clone(),
            pkcs8: p.clone(),
            cert_der: c.clone(),
        }))
    }
    fn put_key(&self, i: &str, k: &StoredKey) -> Result<(), StoreError> {
        self.keys.lock().unwrap().insert(i.into(), (k.cert_id.clone(), k.pkcs8.clone(), k.cert_der.clone()));
        Ok(())
    }
    fn put_swapped_release(&self, _: &str, _: &str, _: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    fn swapped_release(&self, _: &str, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    fn credential(&self, i: &str, u: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.credentials.lock().unwrap().get(&(i.to_string(), u.to_lowercase())).cloned())
    }
    fn put_credential(&self, i: &str, u: &str, sealed: &[u8]) -> Result<(), StoreError> {
        self.credentials.lock().unwrap().insert((i.to_string(), u.to_lowercase()), sealed.to_vec());
        Ok(())
    }
    fn integration_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self.records.lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
    fn put_integration_record(&self, i: &str, record: &[u8]) -> Result<(), StoreError> {
        self.records.lock().unwrap().insert(i.into(), record.to_vec());
        Ok(())
    }
    fn purge(&self, i: &str) -> Result<(), StoreError> {
        self.kv.lock().unwrap().retain(|(n, _), _| n != i);
        self.backup.lock().unwrap().retain(|(n, _), _| n != i);
        self.inbox.lock().unwrap().retain(|_, (n, _, _, _)| n != i);
        self.keys.lock().unwrap().remove(i);
        self.credentials.lock().unwrap().retain(|(n, _), _| n != i);
        Ok(())
    }
}

/// Records every request the allow-list let through and answers 503 (Microsoft is down).
#[derive(Default)]
struct DownHttp(Mutex<Vec<String>>);

impl HttpClient for DownHttp {
    fn send(&self, req: OutboundRequest) -> HttpFuture {
        self.0.lock().unwrap().push(format!("{} {}", req.method, req.url));
        Box::pin(async {
            Ok(Response { status: 503, headers: vec![("retry-after".into(), "1".into())], body: vec![] })
        })
    }
}

/// Three users; records what is published.
#[derive(Default)]
struct ThreeUsers(Mutex<Vec<PresenceUpdate>>);

impl Switchboard for ThreeUsers {
    fn users_page(&self, start: usize, count: usize) -> Vec<SwitchboardUser> {
        (0..3)
            .skip(start)
            .take(count)
            .map(|i| SwitchboardUser {
                id: format!("u{i}"),
                display_name: format!("User {i}"),
                emails: vec![format!("user{i}@contoso.example")],
                line_number: Some(format!("+4670000000{i}")),
                active: true,
            })
            .collect()
    }
    fn publish(&self, u: PresenceUpdate) -> Result<(), UnknownUser> {
        self.0.lock().unwrap().push(u);
        Ok(())
    }
    fn withdraw(&self, _user_id: &str) {}
    fn calls_in_progress(&self) -> Vec<LineEvent> {
        vec![]
    }
}

struct Fixture {
    host: Host,
    store: Arc<MemStore>,
    http: Arc<DownHttp>,
    _dir: tempfile::TempDir,
}

/// The compile cache every test shares, so the plugin is compiled once.
fn cache_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("presence-host-seams-cache-{}", std::process::id()));
    presence_host::store::secure_dir(&d).unwrap();
    d
}

/// The fixture's configuration: Microsoft at `base` (login and Graph), state in `dir`.
fn config(base: &str, dir: &std::path::Path) -> Config {
    let text = format!(
        r#"
[host]
public_base_url = "http://127.0.0.1:9"
admin_token_env = "ADMIN_TOKEN"
kek_env = "KEK"
state_dir = "state"
plugin_cache_dir = "{}"
graph_base_url = "{base}"
login_base_url = "{base}"

[[integration]]
name = "contoso"
tenant_id = "5db68c59-bbeb-41d7-a5df-b316a4434048"
client_id = "0ed2fcf1-b202-4699-afe4-cbc36ead3235"
client_secret = "not-a-real-secret"
push_line_status = true
users = [{{ username = "sync1@contoso.example", password = "pw" }}]
"#,
        cache_dir().display()
    );
    let env = |k: &str| match k {
        "ADMIN_TOKEN" => Some("seams-admin-token-0123456789".to_string()),
        "KEK" => Some(presence_host::seal::Kek::encode(&[9; 32])),
        _ => None,
    };
    Config::parse(&text, "host.toml", dir, &env).unwrap()
}

async fn start(store: Arc<MemStore>) -> Fixture {
    start_with(store, Default::default()).await
}

/// [`start`] with these inbox bounds.
async fn start_with(store: Arc<MemStore>, inbox_limits: presence_host::context::InboxLimits) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config("http://127.0.0.1:9", dir.path());
    config.host.inbox_limits = inbox_limits;
    let http = Arc::new(DownHttp::default());
    let backends = Backends {
        store: store.clone(),
        http: http.clone(),
        clock: Arc::new(SystemClock),
        switchboards: Arc::new(BTreeMap::from([(
            "contoso".to_string(),
            Arc::new(ThreeUsers::default()) as Arc<dyn Switchboard>,
        )])),
        leases: None,
    };
    let host = Host::start(&config, presence_plugin_wasm::PLUGIN_WASM, backends).await.unwrap();
    Fixture { host, store, http, _dir: dir }
}

impl Fixture {
    async fn status(&self) -> StatusView {
        self.host.integration("contoso").unwrap().status().await.unwrap()
    }
    /// Waits (on the status, polled) until `f` holds; panics after a minute.
    async fn wait(&self, what: &str, f: impl Fn(&StatusView) -> bool) -> StatusView {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.status().await;
            if f(&s) {
                return s;
            }
            assert!(Instant::now() < end, "never: {what}: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn counter(s: &StatusView, name: &str) -> u64 {
    s.counters.get(name).copied().unwrap_or(0)
}

/// A notification body Graph could have sent (for a subscription the plugin does not know).
fn body(n: usize) -> Vec<u8> {
    format!(r#"{{"value":[{{"subscriptionId":"s-{n}","clientState":"x","changeType":"updated","resource":"communications/presences/m{n}"}}]}}"#)
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_left_by_a_crash_is_replayed_in_order_then_emptied() {
    let store = Arc::new(MemStore::default());
    for n in 0..3 {
        store.inbox_push("contoso", "notifications", &body(n), 0).unwrap();
    }
    let f = start(store).await;
    let s = f.wait("the replayed rows are processed", |s| counter(s, "inbox.processed") == 3).await;
    assert_eq!(counter(&s, "inbox.replayed"), 3);
    assert_eq!(f.store.inbox_len(), 0);
    // A new one is persisted before it is acknowledged, then processed and deleted.
    let h = f.host.integration("contoso").unwrap();
    h.accept("notifications", body(9)).await.unwrap();
    let s = f.wait("the accepted row is processed", |s| counter(s, "inbox.processed") == 4).await;
    assert_eq!(counter(&s, "inbox.accepted"), 1);
    assert_eq!(f.store.inbox_len(), 0);
    assert_eq!(f.store.called("inbox_delete"), 4);
    f.host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_taken_from_the_inbox_in_order_a_step_at_a_time() {
    // More rows than one step takes, some left by a crash, more accepted while it works.
    let store = Arc::new(MemStore::default());
    for n in 0..150 {
        store.inbox_push("contoso", "notifications", &body(n), 0).unwrap();
    }
    let f = start(store).await;
    let h = f.host.integration("contoso").unwrap();
    for n in 150..300 {
        h.accept("notifications", body(n)).await.unwrap();
    }
    let s = f.wait("every row is processed", |s| counter(s, "inbox.processed") == 300).await;
    assert_eq!((counter(&s, "inbox.replayed"), counter(&s, "inbox.accepted")), (150, 150));
    assert_eq!(f.store.inbox_len(), 0);
    let deleted = f.store.deleted.lock().unwrap().clone();
    assert_eq!(deleted, (1..=300).collect::<Vec<i64>>(), "in the order they came, each once");
    f.host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_http_backend_only_through_the_allow_list() {
    let f = start(Arc::new(MemStore::default())).await;
    let end = Instant::now() + Duration::from_secs(60);
    while f.http.0.lock().unwrap().is_empty() {
        assert!(Instant::now() < end, "the plugin sent nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = f.http.0.lock().unwrap().clone();
    assert!(sent.iter().all(|r| r.contains("http://127.0.0.1:9/")), "{sent:?}");
    assert!(sent[0].starts_with("POST http://127.0.0.1:9/5db68c59-bbeb-41d7-a5df-b316a4434048/oauth2/"), "{sent:?}");
    let s = f.status().await;
    assert_eq!(s.refused_requests, 0);
    f.host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_restarts_only_the_instance_and_is_reported() {
    let f = start(Arc::new(MemStore::default())).await;
    let h = f.host.integration("contoso").unwrap();
    h.interrupt_next_call().await;
    let s = f.wait("the trap is reported", |s| s.traps == 1).await;
    assert!(s.last_trap.as_deref().unwrap_or("").contains("interrupt"), "{:?}", s.last_trap);
    // The new instance answers.
    let s = f.status().await;
    assert_eq!(s.traps, 1);
    assert!(!s.plugin_version.is_empty());
    f.host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_backs_up_the_state_and_switches() {
    let f = start(Arc::new(MemStore::default())).await;
    let before = f.status().await.plugin_version;
    let next = std::fs::read(test_components::PLUGIN_NEXT).unwrap();
    let r = f.host.swap(&next, None).await.unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].outcome, SwapOutcome::Switched, "{:?}", r[0]);
    assert_eq!(f.store.called("kv_backup"), 1);
    assert_eq!(f.store.called("kv_restore"), 0);
    let s = f.status().await;
    assert_ne!(s.plugin_version, before);
    assert_eq!(counter(&s, "plugin.swaps"), 1);
    f.host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_refuses_the_settings_is_rolled_back_on_the_state_as_it_was() {
    let f = start(Arc::new(MemStore::default())).await;
    let before = f.status().await.plugin_version;
    let kv_before = f.store.kv.lock().unwrap().clone();
    // The hostile guest, given no misbehaviour to show, refuses to configure.
    let hostile = std::fs::read(test_components::HOSTILE).unwrap();
    let r = f.host.swap(&hostile, None).await.unwrap();
    assert_eq!(r[0].outcome, SwapOutcome::RolledBack, "{:?}", r[0]);
    assert!(r[0].reason.as_deref().unwrap_or("").contains("refused the settings"), "{:?}", r[0].reason);
    assert_eq!((f.store.called("kv_backup"), f.store.called("kv_restore")), (1, 1));
    let s = f.status().await;
    assert_eq!(s.plugin_version, before);
    assert_eq!(counter(&s, "plugin.rollbacks"), 1);
    // The old instance carries on, on its own state (it may have written more since).
    let kv_after = f.store.kv.lock().unwrap().clone();
    assert!(kv_before.keys().all(|k| kv_after.contains_key(k)));
    f.host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_so_nothing_leaves_the_allow_list() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let serve = |app: axum::Router| async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        addr
    };
    // Another origin, which counts what reaches it (a client secret would, on a redirect).
    let stolen = Arc::new(AtomicUsize::new(0));
    let thief = stolen.clone();
    let elsewhere = serve(axum::Router::new().fallback(move || {
        thief.fetch_add(1, Ordering::SeqCst);
        async { "thanks" }
    }))
    .await;
    // The configured login and Graph origin answers every request with a 307 to it.
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let microsoft =
        serve(
            axum::Router::new().fallback(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    (axum::http::StatusCode::TEMPORARY_REDIRECT, [("location", format!("http://{elsewhere}/steal"))])
                }
            }),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&format!("http://{microsoft}"), dir.path());
    let store = Arc::new(MemStore::default());
    let backends = Backends {
        store: store.clone(),
        http: Arc::new(presence_host::ReqwestClient::new().unwrap()),
        clock: Arc::new(SystemClock),
        switchboards: Arc::new(BTreeMap::from([(
            "contoso".to_string(),
            Arc::new(ThreeUsers::default()) as Arc<dyn Switchboard>,
        )])),
        leases: None,
    };
    let host = Host::start(&config, presence_plugin_wasm::PLUGIN_WASM, backends).await.unwrap();
    let f = Fixture { host, store, http: Arc::new(DownHttp::default()), _dir: dir };
    // The token request was answered with the redirect, and the plugin has that answer.
    f.wait("the plugin had its answers", |s| asked.load(Ordering::SeqCst) > 0 && s.outbound_in_flight == 0).await;
    assert_eq!(stolen.load(Ordering::SeqCst), 0, "a redirect was followed to another origin");
    f.host.stop().await;
}

/// A state write the store refuses is not just logged: the status shows it (degraded,
/// `state-write-failed`, how many wait), the host retries it every tick, and once the store
/// takes writes again it is written and the status is clear. What reaches the store is sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_state_write_is_retried_and_shown_and_values_are_sealed() {
    use std::sync::atomic::Ordering;
    let store = Arc::new(MemStore::default());
    let f = start(store.clone()).await;
    let h = f.host.integration("contoso").unwrap();
    f.wait("configured", |s| s.state != "error" || s.code.as_deref() != Some("plugin-trap")).await;
    store.fail_writes.store(true, Ordering::SeqCst);
    // Overrides are written to the plugin's state at once.
    let o = presence_host::bindings::sync::MappingOverride {
        switchboard_user_id: "sb-1".into(),
        microsoft_user: "someone@contoso.example".into(),
    };
    h.set_overrides(vec![o]).await.unwrap();
    let s = f.wait("the failed write is shown", |s| s.state_writes_pending > 0).await;
    assert!(s.state_write_error.as_deref().unwrap_or("").contains("disk I/O error"), "{s:?}");
    // Microsoft is down in this fixture (the state says so first); otherwise the state is
    // `degraded` with this code (`status.rs`'s unit test).
    assert!(s.state == "error" || s.code.as_deref() == Some("state-write-failed"), "{s:?}");
    assert!(counter(&s, "state.write-failed") >= 1);
    // The plugin reads back what it wrote meanwhile.
    assert_eq!(h.overrides().await.unwrap().len(), 1);
    store.fail_writes.store(false, Ordering::SeqCst);
    let s = f.wait("the write is retried", |s| s.state_writes_pending == 0).await;
    assert_ne!(s.code.as_deref(), Some("state-write-failed"));
    assert!(counter(&s, "state.write-retried") >= 1);
    let kv = store.kv.lock().unwrap().clone();
    let overrides = kv.iter().find(|((_, k), _)| k.contains("overrides")).expect("the overrides are stored");
    assert!(presence_host::seal::Kek::is_sealed(overrides.1), "stored sealed");
    assert!(!String::from_utf8_lossy(overrides.1).contains("someone@contoso.example"));
    for (_, (_, pkcs8, _)) in store.keys.lock().unwrap().iter() {
        assert!(presence_host::seal::Kek::is_sealed(pkcs8), "the private key is stored sealed");
    }
    f.host.stop().await;
}

/// Finding 3: the inbox holds at most its configured rows; beyond them a batch is answered 503
/// with Retry-After (Graph retries) and nothing is stored; the secret path is checked first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbox_answers_503_with_retry_after_and_stores_nothing_more() {
    use std::sync::atomic::Ordering;
    let store = Arc::new(MemStore::default());
    store.hold_inbox.store(true, Ordering::SeqCst);
    let limits = presence_host::context::InboxLimits { rows: 100, ..Default::default() };
    let mut f = start_with(store.clone(), limits).await;
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    f.host.serve(public, admin, axum::Router::new()).unwrap();
    let h = f.host.integration("contoso").unwrap().clone();
    let url = format!("http://{}{}", f.host.addr(), h.webhook_path("notifications"));
    let client = reqwest::Client::new();
    let mut codes = BTreeMap::<u16, u32>::new();
    for n in 0..130 {
        let r = client.post(&url).body(body(n)).send().await.unwrap();
        if r.status() == 503 {
            assert!(r.headers().get("retry-after").is_some(), "503 without Retry-After");
        }
        *codes.entry(r.status().as_u16()).or_default() += 1;
    }
    assert_eq!(codes, BTreeMap::from([(202, 100), (503, 30)]));
    assert_eq!(f.store.inbox_len(), 100, "nothing stored beyond the cap");
    assert_eq!(h.inbox_size().0, 100);
    // A wrong secret segment: 404, never stored.
    let wrong = format!("http://{}/webhook/contoso/AAAAAAAAAAAAAAAAAAAAAA/notifications", f.host.addr());
    assert_eq!(client.post(&wrong).body(body(0)).send().await.unwrap().status().as_u16(), 404);
    // Once the plugin takes them, there is room again.
    store.hold_inbox.store(false, Ordering::SeqCst);
    h.tick().await;
    let s = f.wait("drained", |s| s.inbox_rows == 0).await;
    assert_eq!(counter(&s, "rejected.inbox-full"), 30);
    assert_eq!(counter(&s, "rejected.webhook-path"), 1);
    assert_eq!(client.post(&url).body(body(1)).send().await.unwrap().status().as_u16(), 202);
    f.host.stop().await;
}
