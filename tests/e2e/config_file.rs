//! The `run` path: a TOML config file and a switchboard CSV, as an operator writes them.

use std::time::{Duration, Instant};

use presence_demo::{DEMO_CLIENT, DEMO_SECRET, DEMO_TENANT, switchboard_users};
use presence_host::Config;
use switchboard_sim::Switchboard;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_with_env_secrets_and_csv_users_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let (_emu, clock, seed, base) = e2e_tests::demo_emulator(120).await;
    let mut users = switchboard_users(&seed, 120);
    // A switchboard user without a Microsoft account, and two claiming one address.
    users.push(switchboard_sim::User {
        id: "reception".into(),
        name: "Reception".into(),
        emails: vec!["reception@elsewhere.example".into()],
        line_number: Some("+4680000".into()),
        active: true,
    });
    users[1].emails = users[0].emails.clone();
    Switchboard::write_csv(&dir.path().join("users.csv"), &users).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let toml = format!(
        r#"
[host]
listen = "{addr}"
admin_listen = "{admin_addr}"
admin_token_env = "E2E_ADMIN_TOKEN"
kek_env = "E2E_KEK"
public_base_url = "http://{addr}"
state_dir = "state"
graph_base_url = "{base}"
login_base_url = "{base}"

[[integration]]
name = "contoso"
tenant_id = "{DEMO_TENANT}"
client_id = "{DEMO_CLIENT}"
client_secret_env = "E2E_CONTOSO_SECRET"
client_secret_expires = "{expires}"
switchboard_csv = "users.csv"
users = [{{ username = "{user}", password_env = "E2E_CONTOSO_PW" }}]
"#,
        user = seed.integration_user(0),
        // The secret expires in ten days (by the clock host and emulator share).
        expires = graph_emulator::wire::graph_time(clock.now_ms() + 10 * 24 * 3600 * 1000 - 60_000),
    );
    let path = dir.path().join("host.toml");
    std::fs::write(&path, toml).unwrap();
    // Secrets come from the *_env variables, resolved as Config::load does, through a closure
    // so that the test does not touch the process environment.
    let env = |k: &str| match k {
        "E2E_CONTOSO_SECRET" => Some(DEMO_SECRET.to_string()),
        "E2E_CONTOSO_PW" => Some(seed.integration_password.clone()),
        "E2E_ADMIN_TOKEN" => Some(e2e_tests::E2E_ADMIN_TOKEN.to_string()),
        "E2E_KEK" => Some(presence_host::seal::Kek::encode(&[7; 32])),
        _ => None,
    };
    let text = std::fs::read_to_string(&path).unwrap();
    let cfg = Config::parse(&text, &path.display().to_string(), dir.path(), &env).unwrap();
    let sims = switchboard_sim::from_config(&cfg).unwrap();
    let host = presence_demo::start_host(&cfg, clock, listener, admin, sims).await.unwrap();
    let h = host.integrations()["contoso"].clone();
    let end = Instant::now() + Duration::from_secs(60);
    let s = loop {
        let s = h.status().await.unwrap();
        if s.state == "ok" || Instant::now() > end {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(s.state, "ok", "{s:?}");
    assert_eq!(s.switchboard_users, 121);
    assert_eq!(s.users, 118, "120 minus the two that share an address");
    assert_eq!(s.conflicts.len(), 1);
    assert_eq!(s.conflicts[0].kind, "several-switchboard-users");
    assert_eq!(s.conflicts[0].candidates, vec!["sb-00000", "sb-00001"]);
    // The switchboard API shows presence for a mapped user, none for the unmapped ones.
    let admin = |path: &str| {
        let url = format!("http://{admin_addr}{path}");
        async move { e2e_tests::admin_get(&url).await }
    };
    let v = admin("/switchboard/contoso/users/sb-00002").await.expect("JSON");
    assert!(v["teams_presence"]["availability"].is_string(), "{v}");
    let v = admin("/switchboard/contoso/users/reception").await.expect("JSON");
    assert!(v["teams_presence"].is_null());
    // The status warns of the client secret's expiry, and stays ok.
    let v = admin("/status/contoso").await.expect("JSON");
    assert_eq!((v["state"].as_str(), v["warnings"][0]["code"].as_str()), (Some("ok"), Some("client-secret-expiring")));
    assert!(v["warnings"][0]["hint"].as_str().unwrap().contains("in 10 days"), "{v}");
    // The status API never shows a secret.
    let text = admin("/status").await.expect("JSON").to_string();
    assert!(!text.contains(DEMO_SECRET) && !text.contains(&seed.integration_password));
    host.stop().await;
}
