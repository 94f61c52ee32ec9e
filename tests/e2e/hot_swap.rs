//! Hot swap: a new plugin release replaces the running one while notifications keep coming;
//! nothing is lost or processed twice, a release that does not configure is rolled back, an
//! incompatible one is refused before anything switches, and compiled releases are cached.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use e2e_tests::*;
use presence_host::{StatusView, SwapOutcome};
use test_components::{HOSTILE, OLD_WIT, PLUGIN_NEXT};

fn counter(s: &StatusView, name: &str) -> u64 {
    s.counters.get(name).copied().unwrap_or(0)
}

const STATES: [(&str, &str); 3] = [("Available", "Available"), ("Away", "Away"), ("DoNotDisturb", "Presenting")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_v1_v2_v1_under_1000_notifications_a_second_loses_and_duplicates_nothing() {
    let users = 650;
    let t = start(users, 1, |_| {}).await;
    let host = t.host.as_ref().unwrap();
    let first = t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert!(!first.plugin.from_cache, "a fresh state directory has nothing cached: {:?}", first.plugin);
    let v1_sha = first.plugin.sha256.clone();
    let v2 = std::fs::read(PLUGIN_NEXT).unwrap();

    // The stream: 1,000 presence changes a second for 4 s, each one a real change of the
    // user's presence at "Microsoft" (so each is one notification).
    let tenant = t.seed.tenant_id.clone();
    let ids: Vec<String> = (0..users).map(|i| t.ms_user(i)).collect();
    let mut current: HashMap<String, (String, String)> = t.emulator.truth(&tenant);
    let emulator = t.emulator.clone();
    let (queued_before, _) = t.emulator.deliveries();
    let stream = tokio::spawn(async move {
        let mut changes: HashMap<String, u64> = HashMap::new();
        let mut iv = tokio::time::interval(Duration::from_millis(10));
        let mut n = 0usize;
        for _ in 0..400 {
            iv.tick().await;
            for _ in 0..10 {
                let id = &ids[n % ids.len()];
                // The next of the three states after the current one: always a change.
                let cur = current.get(id).cloned().unwrap_or_default();
                let at = STATES.iter().position(|(a, b)| (a.to_string(), b.to_string()) == cur);
                let next = STATES[at.map_or(0, |i| (i + 1) % 3)];
                assert!(emulator.set_presence(&tenant, id, next.0, next.1, false));
                current.insert(id.clone(), (next.0.into(), next.1.into()));
                *changes.entry(id.clone()).or_default() += 1;
                n += 1;
            }
        }
        changes
    });

    // v1 -> v2 -> v1 while it runs: after about 1,200 and 2,600 of the 4,000 changes.
    let emu = t.emulator.clone();
    assert!(t.wait_until(EVENTUALLY, || emu.deliveries().0 >= queued_before + 1_200).await);
    let to_v2 = host.swap(&v2, None).await.expect("v2 loads");
    assert!(t.wait_until(EVENTUALLY, || emu.deliveries().0 >= queued_before + 2_600).await);
    let back = host.swap(presence_demo::PLUGIN_WASM, None).await.expect("v1 loads");
    let changes = stream.await.unwrap();
    let total: u64 = changes.values().sum();
    assert_eq!(total, 4000);
    for r in to_v2.iter().chain(&back) {
        assert_eq!(r.outcome, SwapOutcome::Switched, "{r:?}");
        println!(
            "swap {} -> {}: pause {:.2} ms (drain {:.2} ms), {} events held",
            r.from, r.to, r.pause_ms, r.drain_ms, r.held_events
        );
    }
    assert!(to_v2[0].to.starts_with("0.1.0-next"), "{:?}", to_v2[0]);
    assert!(back[0].to.starts_with("0.1.0 "), "{:?}", back[0]);

    // Every notification was processed exactly once, by one release or the other.
    let end = Instant::now() + EVENTUALLY;
    let mut s = t.status().await;
    while counter(&s, "notifications.accepted") < total && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s = t.status().await;
    }
    t.settle(EVENTUALLY).await; // anything extra would show now
    let s = t.status().await;
    let stats = t.emulator.stats();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.failed_attempts.load(Relaxed), 0, "no delivery failed, so Graph retried nothing");
    assert_eq!(stats.dropped.load(Relaxed), 0);
    assert_eq!(counter(&s, "notifications.accepted"), total, "accepted once each: {:?}", s.counters);
    assert_eq!(counter(&s, "inbox.accepted"), counter(&s, "inbox.processed"), "{:?}", s.counters);
    let published: u64 = changes
        .keys()
        .map(|id| {
            let i = (0..users).find(|&i| &t.ms_user(i) == id).unwrap();
            t.switchboard.updates_from(&format!("sb-{i:05}"), "teams")
        })
        .sum();
    // A notification older than a presence re-read (after each swap the new release re-reads
    // presence) is dropped as stale; every other one is shown exactly once.
    assert_eq!(published + counter(&s, "rejected.stale"), total, "{:?}", s.counters);
    assert_eq!(counter(&s, "plugin.swaps"), 2);
    assert!(t.wait_in_sync(users, EVENTUALLY).await.is_empty(), "the switchboard shows the truth");

    // The status names the running release; v1 came back from the compile cache.
    assert_eq!(s.plugin_version, "0.1.0");
    assert_eq!(s.plugin.sha256, v1_sha);
    assert!(s.plugin.from_cache, "{:?}", s.plugin);
    assert_eq!(s.plugin.wit_version, presence_host::WIT_VERSION);
    assert_eq!(s.last_swap.as_ref().map(|r| r.outcome), Some(SwapOutcome::Switched));
    assert_eq!(t.emulator.subscriptions().len(), 1, "the subscription was handed over, not duplicated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_does_not_configure_is_rolled_back_and_the_status_says_why() {
    let t = start(30, 1, |_| {}).await;
    let host = t.host.as_ref().unwrap();
    let before = t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    let subs: Vec<String> = t.emulator.subscriptions().into_iter().map(|s| s.id).collect();

    // The hostile guest refuses settings without a mode in the integration name.
    let reports = host.swap(&std::fs::read(HOSTILE).unwrap(), None).await.expect("it loads");
    let r = &reports[0];
    assert_eq!(r.outcome, SwapOutcome::RolledBack, "{r:?}");
    let why = r.reason.as_deref().unwrap_or("");
    assert!(why.contains("refused the settings") && why.contains("hostile-guest needs one of"), "{why}");

    let s = t.status().await;
    assert_eq!(s.plugin.sha256, before.plugin.sha256, "still the old release");
    assert_eq!(s.plugin_version, before.plugin_version);
    assert_eq!(s.last_swap.as_ref().and_then(|r| r.reason.clone()).as_deref(), Some(why));
    assert_eq!(counter(&s, "plugin.rollbacks"), 1);
    assert_eq!(s.state, "ok");
    assert_eq!(s.users, 30);
    let after: Vec<String> = t.emulator.subscriptions().into_iter().map(|s| s.id).collect();
    assert_eq!(subs, after);

    // And it keeps synchronising.
    let u = t.ms_user(4);
    t.emulator.set_presence(&t.seed.tenant_id, &u, "DoNotDisturb", "Presenting", false);
    assert!(
        t.wait_until(EVENTUALLY, || t.switchboard.shown("sb-00004").is_some_and(|p| p.activity == "Presenting")).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incompatible_or_broken_component_is_refused_before_anything_switches() {
    let t = start(10, 1, |_| {}).await;
    let host = t.host.as_ref().unwrap();
    let before = t.wait_status(EVENTUALLY, |s| s.state == "ok").await;

    let e = host.swap(&std::fs::read(OLD_WIT).unwrap(), None).await.unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("incompatible plugin: it speaks teams-presence:plugin@2.1.0")
            && msg.contains(&format!("this host speaks teams-presence:plugin@{}", presence_host::WIT_VERSION)),
        "{msg}"
    );
    for (bytes, expected) in [
        (b"\0asm\x01\0\0\0".to_vec(), "core WebAssembly module, not a component"),
        (b"MZ not wasm at all".to_vec(), "not a WebAssembly component"),
        (b"\0asm\x0d\0\x01\0\xff\xff".to_vec(), "does not compile"),
    ] {
        let msg = format!("{:#}", host.swap(&bytes, None).await.unwrap_err());
        assert!(msg.contains(expected), "{msg}");
    }
    let e = host.swap(presence_demo::PLUGIN_WASM, Some("nobody")).await.unwrap_err();
    assert!(format!("{e:#}").contains("no integration named \"nobody\""));

    let s = t.status().await;
    assert_eq!(s.plugin.sha256, before.plugin.sha256);
    assert!(s.last_swap.is_none(), "nothing was switched or tried: {:?}", s.last_swap);
    assert_eq!(counter(&s, "plugin.swaps") + counter(&s, "plugin.rollbacks"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_and_the_cli_swap_with_a_token_and_the_swap_holds_across_a_restart() {
    let token = "a-long-enough-admin-token";
    let mut t = start(10, 1, |o| o.admin_token = token.into()).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    let addr = t.host.as_ref().unwrap().admin_addr();
    let url = format!("http://{addr}/admin/plugin");
    let client = reqwest::Client::new();

    // Without the token, or with a wrong one: refused. (Without a body, as below: the host
    // answers before it reads one and closes the connection, so a client still writing the
    // 1.4 MB component may see a broken pipe instead of the 401.)
    let r = client.put(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Refused before the body is read: a request that announces 64 MiB and sends 1 KiB gets
    // its 401 at once (the host does not wait for, or buffer, the rest).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("PUT /admin/plugin HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\n\r\n", 64 << 20);
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&[0u8; 1024]).await.unwrap();
        let mut answer = vec![0u8; 12];
        tokio::time::timeout(EVENTUALLY, tcp.read_exact(&mut answer))
            .await
            .expect("an answer before the body is complete")
            .unwrap();
        assert_eq!(&answer, b"HTTP/1.1 401");
    }
    // (Without a body: the host answers a wrong token before it reads one and then closes the
    // connection, so a client still writing 1 MB may see a broken pipe instead of the 401.
    // The CLI asks `/healthz` with its token first and says so.)
    let r = client.put(&url).bearer_auth("wrong-token-of-some-length").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let out = std::process::Command::new(host_binary())
        .args(["swap", "--host", &format!("http://{addr}"), "--plugin", PLUGIN_NEXT])
        .env("TPS_ADMIN_TOKEN", "wrong-token-of-some-length")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("401") && stderr.contains("admin token"), "{stderr}");
    // An incompatible component: 422 and why.
    let r = client.put(&url).bearer_auth(token).body(std::fs::read(OLD_WIT).unwrap()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 422);
    assert!(r.text().await.unwrap().contains("incompatible plugin"));

    // The CLI, against the running host.
    let out = std::process::Command::new(host_binary())
        .args(["swap", "--host", &format!("http://{addr}"), "--plugin", PLUGIN_NEXT, "--integration", "contoso"])
        .env("TPS_ADMIN_TOKEN", token)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("\"outcome\":\"switched\""), "{stdout}");
    assert!(!stdout.contains(token));
    let s = t.status().await;
    assert_eq!(s.plugin_version, "0.1.0-next");

    // The swap holds across a restart (the configuration still names the same release), and
    // the compiled release comes from the cache in the state directory.
    t.restart_host().await.unwrap();
    let s = t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert_eq!(s.plugin_version, "0.1.0-next");
    assert!(s.plugin.from_cache, "{:?}", s.plugin);

    // And back over the API.
    let r = client.put(&url).bearer_auth(token).body(presence_demo::PLUGIN_WASM.to_vec()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["reports"][0]["outcome"], "switched", "{body}");
    assert_eq!(t.status().await.plugin_version, "0.1.0");

    t.restart_host().await.unwrap();
    let s = t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    assert_eq!(s.plugin_version, "0.1.0");
    assert!(s.plugin.from_cache, "{:?}", s.plugin);
    let cached = std::fs::read_dir(t.config.host.plugin_cache_dir.clone()).unwrap().count();
    assert_eq!(cached, 2, "one entry per release (v1, v2)");
}

/// A plugin built against the previous minor version of the contract (3.0.0, before
/// `directory.revision`) still loads and runs on this host, and the status names its version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_of_the_previous_minor_wit_version_loads_and_runs() {
    let t = start(10, 1, |_| {}).await;
    let host = t.host.as_ref().unwrap();
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    let reports = host.swap(&std::fs::read(test_components::WIT_3_0).unwrap(), None).await.expect("it loads");
    assert_eq!(reports[0].outcome, SwapOutcome::Switched, "{:?}", reports[0]);
    // Its ticks reach the 3.0.0 imports it uses (the directory shows the 10 users).
    let s = t.wait_status(EVENTUALLY, |s| counter(s, "guest.ticks") >= 2 && s.switchboard_users == 10).await;
    assert_eq!((s.plugin_version.as_str(), s.plugin.wit_version.as_str()), ("wit-3.0-guest", "3.0.0"), "{s:?}");
    assert_eq!(s.switchboard_users, 10);
    // It has neither `users` (3.3.0) nor `admin` (3.2.0): the users list says so, and a
    // delete says what it could not clean up.
    let list = t.admin_client().get(t.admin_url("/integrations/contoso/users")).send().await.unwrap();
    assert_eq!(list.status(), 501);
    assert!(list.text().await.unwrap().contains("WIT 3.2 or earlier"));
    // And back to this release.
    let reports = host.swap(presence_demo::PLUGIN_WASM, None).await.expect("it loads");
    assert_eq!(reports[0].outcome, SwapOutcome::Switched, "{:?}", reports[0]);
    let s = t.wait_status(EVENTUALLY, |s| s.state == "ok" && s.plugin.wit_version == presence_host::WIT_VERSION).await;
    assert_eq!(s.plugin_version, "0.1.0");
}

/// A plugin without the `admin` export (WIT 3.0 or 3.1) cannot retire: its delete still
/// removes the integration here, and says what stays at Microsoft and for how long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_integration_whose_plugin_cannot_retire_says_what_is_left() {
    let t = start(10, 1, |_| {}).await;
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;
    let reports = t.host().swap(&std::fs::read(test_components::WIT_3_0).unwrap(), None).await.expect("it loads");
    assert_eq!(reports[0].outcome, SwapOutcome::Switched, "{:?}", reports[0]);
    let r = t.admin_client().delete(t.admin_url("/integrations/contoso")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let report: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!((&report["complete"], &report["retired"]), (&serde_json::json!(false), &serde_json::Value::Null));
    let note = report["note"].as_str().unwrap();
    assert!(note.contains("WIT 3.0 or 3.1") && note.contains("within 60 minutes"), "{note}");
    assert!(t.host().integration("contoso").is_none());
    assert_eq!(t.emulator.subscriptions().len(), 1, "left at Microsoft, to expire");
}
