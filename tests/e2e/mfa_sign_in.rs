//! An integration user who must use multi-factor authentication (Entra refuses it the
//! password grant, AADSTS50076) is signed in once with the device code flow through the admin
//! API; the host keeps its refresh token sealed, and the plugin uses it, keeping each
//! successor, across restarts.

use e2e_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integration_user_with_mfa_signs_in_with_a_device_code_and_its_refresh_token_rotates() {
    let mut t = start(20, 1, |o| o.mfa_users = vec![0]).await;
    let s = t.wait_status(EVENTUALLY, |s| s.state == "error").await;
    assert_eq!(s.code.as_deref(), Some("AADSTS50076"), "{s:?}");
    let upn = t.seed.integration_user(0);
    let path = format!("/integrations/contoso/users/{upn}/device-code");

    let r = t.admin_client().post(t.admin_url(&path)).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let started: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(started["state"], "pending", "{started}");
    let user_code = started["user_code"].as_str().unwrap().to_string();
    assert!(started["message"].as_str().unwrap().contains(&user_code));
    assert_eq!(t.admin_json(&path).await["state"], "pending");
    // Asked again while it waits: the same code (one sign-in, one poller, per user).
    let again = t.admin_client().post(t.admin_url(&path)).send().await.unwrap();
    let again: serde_json::Value = serde_json::from_str(&again.text().await.unwrap()).unwrap();
    assert_eq!(again["user_code"], started["user_code"]);
    let unknown = t.admin_client().post(t.admin_url("/integrations/contoso/users/nobody@x.example/device-code"));
    assert_eq!(unknown.send().await.unwrap().status(), 404);

    // Entra is busy: its first answer is `slow_down`; the host then waits 5 s more per poll
    // (the emulator counts a poll that comes sooner).
    t.emulator.with_world(|w| w.device_codes.values_mut().for_each(|d| d.slow_down_next = true));
    let end = std::time::Instant::now() + EVENTUALLY;
    while t.emulator.with_world(|w| w.device_codes.values().any(|d| d.slow_down_next)) {
        assert!(std::time::Instant::now() < end, "never polled");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The admin signs the user in elsewhere (with its second factor).
    assert!(t.emulator.answer_device_code(&user_code, &upn, true));

    let end = std::time::Instant::now() + EVENTUALLY;
    while t.admin_json(&path).await["state"] != "signed-in" {
        assert!(std::time::Instant::now() < end, "never signed in: {}", t.admin_json(&path).await);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(t.emulator.with_world(|w| w.device_codes.is_empty()), "the code was used");
    assert_eq!(t.emulator.with_world(|w| w.device_code_early_polls), 0, "no poll came sooner than the interval");
    t.wait_status(EVENTUALLY, |s| s.state == "ok" && s.users == 20).await;
    assert!(t.wait_in_sync(20, EVENTUALLY).await.is_empty());

    // Each use spends the refresh token: the plugin keeps the successor, so a restart (which
    // signs the user in again) works, twice.
    let live =
        |t: &presence_demo::Scenario| t.emulator.with_world(|w| w.refresh_tokens.keys().cloned().collect::<Vec<_>>());
    let first = live(&t);
    assert_eq!(first.len(), 1);
    for _ in 0..2 {
        let before = live(&t);
        t.restart_host().await.unwrap();
        let end = std::time::Instant::now() + EVENTUALLY;
        while live(&t) == before {
            assert!(std::time::Instant::now() < end, "the refresh token was never used after the restart");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
        assert_eq!(live(&t).len(), 1, "the spent one is gone, its successor kept");
    }
    // Sealed at rest.
    let token = live(&t).remove(0);
    let mut on_disk = Vec::new();
    for f in ["state.db", "state.db-wal"] {
        on_disk.extend(std::fs::read(t.config.host.state_dir.join(f)).unwrap_or_default());
    }
    assert!(!on_disk.windows(token.len()).any(|w| w == token.as_bytes()), "a refresh token in clear at rest");
    // A refresh token that Entra no longer takes (revoked): the status says so, with the fix.
    t.emulator.with_world(|w| w.refresh_tokens.clear());
    t.restart_host().await.unwrap();
    let s = t.wait_status(EVENTUALLY, |s| s.state == "error").await;
    assert_eq!(s.code.as_deref(), Some("AADSTS70008"), "{s:?}");
    assert!(s.hint.as_deref().unwrap_or("").contains("sign it in again"), "{s:?}");
}

/// The same from a shell: `host-harness device-code` prints the code and where to enter it,
/// waits, and says when the user is signed in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_signs_in_an_mfa_user_with_a_device_code() {
    use tokio::io::AsyncBufReadExt;
    let t = start(10, 1, |o| o.mfa_users = vec![0]).await;
    t.wait_status(EVENTUALLY, |s| s.state == "error").await;
    let upn = t.seed.integration_user(0);
    let mut cli = tokio::process::Command::new(host_binary())
        .args(["device-code", "--host", &t.admin_url(""), "--integration", "contoso", "--user", &upn])
        .env("TPS_ADMIN_TOKEN", t.config.host.admin_token.expose())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(cli.stdout.take().unwrap()).lines();
    let message = lines.next_line().await.unwrap().expect("the code");
    let code = message.split_whitespace().skip_while(|w| *w != "code").nth(1).expect("a code in the message");
    assert!(t.emulator.answer_device_code(code, &upn, true), "{message}");
    let done = tokio::time::timeout(EVENTUALLY, lines.next_line()).await.unwrap().unwrap().unwrap();
    assert!(done.contains("signed in"), "{done}");
    assert!(tokio::time::timeout(EVENTUALLY, cli.wait()).await.unwrap().unwrap().success());
    t.wait_status(EVENTUALLY, |s| s.state == "ok" && s.users == 10).await;
}
