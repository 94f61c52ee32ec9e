//! The sandbox: hostile or broken plugin components (`tests/guests/hostile`, one mode per
//! integration) run next to the real plugin on one host. Each is contained and reported, and
//! the real integration keeps synchronising.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e_tests::*;
use presence_host::StatusView;
use presence_host::sandbox::Limits;
use test_components::HOSTILE;

const MODES: [&str; 7] =
    ["infinite-loop", "memory-bomb", "panic", "disallowed-host", "oversized", "log-flood", "escape"];

fn counter(s: &StatusView, name: &str) -> u64 {
    s.counters.get(name).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_are_contained_reported_and_the_others_keep_serving() {
    // Low enough that runaway guests are stopped quickly; high enough for the oversized
    // guest's honest tick (it hands a 33 MiB value across the boundary: up to about 300 ms
    // of CPU when the whole suite loads a 2-core machine).
    let deadline_ms = 500;
    let t = start(20, 1, |o| {
        o.limits = Limits { call_deadline_ms: deadline_ms, memory_bytes: 64 << 20 };
        o.extra_integrations = MODES.iter().map(|m| (format!("hostile-{m}"), HOSTILE.into())).collect();
    })
    .await;
    let host = t.host.as_ref().unwrap();
    t.wait_status(EVENTUALLY, |s| s.state == "ok").await;

    // Every hostile integration has had its turn a few times (a tick a second).
    let end = Instant::now() + EVENTUALLY;
    let mut seen: BTreeMap<&str, StatusView> = BTreeMap::new();
    loop {
        for m in MODES {
            seen.insert(m, host.integrations()[&format!("hostile-{m}")].status().await.expect("status"));
        }
        let enough = |m: &str, s: &StatusView| match m {
            "infinite-loop" | "memory-bomb" | "panic" => s.traps >= 2,
            "escape" => counter(s, "escape.tried") == 1,
            "log-flood" => counter(s, "log.suppressed") > 0 && s.traps >= 1,
            "oversized" => counter(s, "ticks") >= 4,
            _ => counter(s, "ticks") >= 2,
        };
        if seen.iter().all(|(m, s)| enough(m, s)) || Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // CPU time is what counts; on a loaded machine the wall time of a stopped call can be
    // longer, but never past the wall-time backstop (10 times the bound, at least 1 s).
    let bound = Duration::from_millis(2000);

    // A runaway loop is stopped at the deadline; the instance is replaced and reported.
    let s = &seen["infinite-loop"];
    assert!(s.traps >= 2, "{s:?}");
    assert!(s.last_trap.as_deref().unwrap_or("").contains("interrupt"), "{:?}", s.last_trap);
    assert!(s.slowest_calls_ms["tick"] < bound.as_millis() as u64, "stopped within the bound: {s:?}");

    // A memory bomb hits the memory cap.
    let s = &seen["memory-bomb"];
    assert!(s.traps >= 2, "{s:?}");
    assert!(s.last_trap.as_deref().unwrap_or("").contains("memory"), "{:?}", s.last_trap);
    // The status counts the instance's linear memory, within the cap (the instance now is
    // the one started after the last trap).
    assert!(s.linear_memory_bytes <= 64 << 20, "{s:?}");

    // A panic traps; its message (from the guest's stderr) is in the report.
    let s = &seen["panic"];
    assert!(s.traps >= 2, "{s:?}");
    assert!(s.last_trap.as_deref().unwrap_or("").contains("a deliberate panic in tick"), "{:?}", s.last_trap);

    // Requests off the allow-list, and plain http off loopback, are refused before any
    // connection; the plugin gets `not-allowed` and carries on.
    let s = &seen["disallowed-host"];
    assert_eq!(s.traps, 0, "{s:?}");
    assert!(counter(s, "http.not-allowed") >= 6, "{:?}", s.counters);
    assert_eq!(counter(s, "http.started"), 0, "{:?}", s.counters);
    assert!(s.refused_requests >= 6);

    // Oversized values crossing the boundary are refused with a reason; nothing is stored.
    let s = &seen["oversized"];
    assert_eq!(s.traps, 0, "{s:?}");
    assert!(counter(s, "http.too-large") >= 1, "{:?}", s.counters);
    assert!(counter(s, "state.too-large") >= 1 && counter(s, "state.refused-oversized") >= 1, "{:?}", s.counters);
    assert!(counter(s, "publish.too-long") >= 1 && counter(s, "publish.refused-oversized") >= 1, "{:?}", s.counters);

    // A log flood is cut to the allowance (and the call that floods hits the deadline).
    let s = &seen["log-flood"];
    assert!(counter(s, "log.suppressed") > 1000, "{:?}", s.counters);

    // No filesystem, environment, arguments, sockets or stdin.
    let s = &seen["escape"];
    assert_eq!(counter(s, "escape.tried"), 1, "{:?}", s.counters);
    for c in ["fs-read-ok", "fs-list-ok", "fs-write-ok", "env-vars", "args", "socket-ok", "stdin-bytes"] {
        assert_eq!(counter(s, &format!("escape.{c}")), 0, "escape.{c}: {:?}", s.counters);
    }
    assert!(!std::path::Path::new("/tmp/hostile-guest").exists());

    // Meanwhile the real integration was never touched and still synchronises.
    let real = t.status().await;
    assert_eq!(real.traps, 0, "{real:?}");
    assert_eq!(real.state, "ok");
    assert_eq!(real.users, 20);
    // Its linear memory and instantiation time are reported: a real instance holds some
    // memory, far under the cap, and took some time to instantiate.
    assert!(real.linear_memory_bytes > 64 << 10 && real.linear_memory_bytes < 64 << 20, "{real:?}");
    assert!(real.plugin.instantiate_ms > 0.0, "{real:?}");
    let u = t.ms_user(3);
    t.emulator.set_presence(&t.seed.tenant_id, &u, "DoNotDisturb", "Presenting", false);
    assert!(
        t.wait_until(EVENTUALLY, || t.switchboard.shown("sb-00003").is_some_and(|p| p.activity == "Presenting")).await
    );
    // Each hostile integration reports its own plugin and version.
    for m in MODES {
        let s = &seen[m];
        assert_eq!(s.plugin_version, format!("hostile-guest-{m}"));
        assert_ne!(s.plugin.sha256, real.plugin.sha256);
    }
}
