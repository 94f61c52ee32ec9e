//! Chaos: thousands of users, several integration users, random presence changes while
//! "Microsoft" misbehaves in every documented way and the host is killed. Afterwards the
//! switchboard must equal Microsoft's truth for every mapped user, with no duplicate
//! subscription, no request sooner than a `Retry-After` allowed, and a mapping that never
//! shrank.
//!
//! - `chaos_small` (1,950 users, 3 integration users, 400 changes) runs in `scripts/test`.
//! - `chaos_full` (5,000 users, 8 integration users, 2,000 changes) is the run:
//!   `cargo build --release -p host-harness && cargo test --release -p e2e-tests chaos_full -- --ignored --nocapture`
//!
//! The host runs as a real process (the binary `scripts/test` builds) so that it can be
//! SIGKILLed; Graph reaches it through a TCP front (like a load balancer) that the test can
//! restart, which is how Graph sees a webhook listener restart. The emulator runs here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use graph_emulator::{Emulator, Fault, TenantSeed};
use presence_demo::TestClock;
use presence_demo::{DEMO_CLIENT, DEMO_SECRET, DEMO_TENANT, switchboard_users};
use rand::{Rng, SeedableRng};
use switchboard_sim::Switchboard;

use e2e_tests::{EVENTUALLY, spawn_host_on_any_port, write_host_config};

struct Plan {
    users: usize,
    integration_users: usize,
    changes: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_small() {
    chaos(Plan { users: 1950, integration_users: 3, changes: 400 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the full chaos run (about 3 minutes); see the module docs for the command"]
async fn chaos_full() {
    chaos(Plan { users: 5000, integration_users: 8, changes: 2000 }).await;
}

/// A restartable TCP front for the host's listener: the address Graph knows. It binds port 0
/// once; the host behind it may move to another port when it restarts.
struct Front {
    port: u16,
    /// The host's port now.
    target: Arc<AtomicU16>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Front {
    async fn start() -> Front {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut f = Front { port, target: Arc::default(), task: None };
        f.serve(listener);
        f
    }
    /// Opens the listening socket again, on the same port (reusing the address, as a
    /// restarting listener does).
    async fn open(&mut self) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(([127, 0, 0, 1], self.port).into()).expect("the front's port is free again");
        self.serve(socket.listen(1024).unwrap());
    }
    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let target = self.target.clone();
        self.task = Some(tokio::spawn(async move {
            // Connections live in this set: closing the front drops them all, as a restarting
            // listener does (pooled keep-alive connections included).
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.load(Ordering::SeqCst);
                connections.spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        }));
    }
    /// Closes the listening socket (connections are refused until `open`).
    async fn close(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

use e2e_tests::admin_get as get;

/// Switchboard users whose shown presence differs from the emulator's truth.
async fn mismatches(base: &str, emu: &Emulator, ids: &[String]) -> Option<Vec<String>> {
    let v = get(&format!("{base}/switchboard/contoso/users")).await?;
    let shown: std::collections::HashMap<String, (String, String)> = v["users"]
        .as_array()?
        .iter()
        .filter_map(|u| {
            let p = &u["teams_presence"];
            Some((
                u["user"]["id"].as_str()?.to_string(),
                (p["availability"].as_str()?.to_string(), p["activity"].as_str()?.to_string()),
            ))
        })
        .collect();
    let truth = emu.truth(DEMO_TENANT);
    Some(
        ids.iter()
            .enumerate()
            .filter(|(i, id)| shown.get(&format!("sb-{i:05}")) != truth.get(*id))
            .map(|(i, _)| format!("sb-{i:05}"))
            .collect(),
    )
}

const STATES: [(&str, &str); 6] = [
    ("Available", "Available"),
    ("Busy", "InAMeeting"),
    ("Busy", "InACall"),
    ("Away", "Away"),
    ("DoNotDisturb", "Presenting"),
    ("BeRightBack", "BeRightBack"),
];

fn fault(path: &str, status: u16, retry_after: Option<u64>, remaining: u32, after: u32) -> Fault {
    Fault { method: None, path_contains: path.into(), status, retry_after, remaining, after }
}

async fn chaos(plan: Plan) {
    let t_start = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock::default());
    let emu = Emulator::new(clock.clone());
    let seed =
        TenantSeed::new(DEMO_TENANT, "contoso.example", DEMO_CLIENT, DEMO_SECRET, plan.users, plan.integration_users);
    emu.add_tenant(&seed);
    let emu_url = emu.start().await.unwrap();
    Switchboard::write_csv(&dir.path().join("users.csv"), &switchboard_users(&seed, plan.users)).unwrap();
    let ids: Vec<String> =
        emu.with_tenant(DEMO_TENANT, |t| t.users.iter().take(plan.users).map(|u| u.id.clone()).collect());

    let mut front = Front::start().await;
    let users: Vec<(String, String)> =
        (0..plan.integration_users).map(|n| (seed.integration_user(n), seed.integration_password.clone())).collect();
    let config = write_host_config(
        dir.path(),
        0,
        &format!("http://127.0.0.1:{}", front.port),
        &emu_url,
        &users,
        "reconcile_interval_s = 30\ndirectory_delta_interval_s = 10",
    );
    let (mut host, addr) = spawn_host_on_any_port(&config).await;
    front.target.store(addr.public.port(), Ordering::SeqCst);
    let admin_port = Arc::new(std::sync::atomic::AtomicU16::new(addr.admin.port()));
    let base = addr.admin_base();

    // Synced before the chaos starts.
    let t0 = Instant::now();
    let end = t0 + 2 * EVENTUALLY;
    let initial_users = loop {
        if let Some(s) = get(&format!("{base}/status/contoso")).await
            && s["state"] == "ok"
        {
            break s["users"].as_u64().unwrap() as u32;
        }
        assert!(Instant::now() < end, "never became ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(initial_users as usize, plan.users);
    let setup = t0.elapsed();

    // The mapping is watched all along.
    let min_users = Arc::new(AtomicU32::new(u32::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (min_users, stop, port) = (min_users.clone(), stop.clone(), admin_port.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let url = format!("http://127.0.0.1:{}/status/contoso", port.load(Ordering::SeqCst));
                if let Some(s) = get(&url).await
                    && let Some(u) = s["users"].as_u64()
                {
                    min_users.fetch_min(u as u32, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let per_phase = plan.changes / 10;
    let mut changed = 0usize;
    let change = |n: usize, rng: &mut rand::rngs::StdRng| {
        for _ in 0..n {
            let i = rng.random_range(0..plan.users);
            let (a, b) = STATES[rng.random_range(0..STATES.len())];
            emu.set_presence(DEMO_TENANT, &ids[i], a, b, false);
        }
        n
    };
    // Between phases, until the host has recovered from the phase's fault: every
    // subscription is in place and delivering, the status says ok, and every notification
    // queued so far was delivered (the bound only keeps a broken run from hanging).
    let needed = plan.users.div_ceil(650);
    let pause = || async {
        let end = Instant::now() + 3 * EVENTUALLY;
        loop {
            let (queued, done) = emu.deliveries();
            let live = emu.subscriptions();
            let subscribed = live.len() == needed && live.iter().all(|s| !s.reauthorization_required);
            let ok = get(&format!("{base}/status/contoso")).await.is_some_and(|s| s["state"] == "ok");
            if queued == done && subscribed && ok {
                break;
            }
            assert!(Instant::now() < end, "never recovered: {} subscriptions, status ok {ok}", live.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let st = emu.stats();
        eprintln!(
            "chaos: {:>5.1} s: delivered {}, failed attempts {}, subscriptions {}",
            t0.elapsed().as_secs_f64(),
            st.delivered.load(Ordering::Relaxed),
            st.failed_attempts.load(Ordering::Relaxed),
            emu.subscriptions().len()
        );
    };
    let subs = || emu.subscriptions().into_iter().map(|s| s.id).collect::<Vec<_>>();
    // Until Graph has failed to deliver since `before` failed attempts.
    let emu_ref = &emu;
    let failed_since = |before: u64| async move {
        let emu = emu_ref;
        let end = Instant::now() + EVENTUALLY;
        while emu.stats().failed_attempts.load(Ordering::SeqCst) == before && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let sync_now = || async {
        let _ = reqwest::Client::new().post(format!("{base}/integrations/contoso/sync-now")).send().await;
    };

    // 1. A 429 storm with Retry-After on every Graph service we use.
    emu.with_world(|w| {
        w.faults.push(fault("/v1.0/communications/getPresencesByUserId", 429, Some(2), 6, 0));
        w.faults.push(fault("/v1.0/subscriptions", 429, Some(2), 3, 0));
        w.faults.push(fault("/v1.0/users", 429, Some(3), 3, 0));
    });
    sync_now().await;
    emu.require_reauthorization(&subs()[0]);
    changed += change(per_phase, &mut rng);
    pause().await;
    // 2. 503s without Retry-After (exponential backoff with jitter), token endpoint included.
    emu.with_world(|w| {
        w.faults.push(fault("/oauth2/v2.0/token", 503, None, 3, 0));
        w.faults.push(fault("/v1.0/subscriptions", 503, None, 2, 0));
        w.faults.push(fault("/v1.0/communications/getPresencesByUserId", 503, None, 2, 0));
    });
    changed += change(per_phase, &mut rng);
    pause().await;
    // 3. A failure in the middle of user paging (the "latest" anchor and page 1 pass).
    emu.with_world(|w| w.faults.push(Fault { method: Some("GET".into()), ..fault("/v1.0/users", 503, None, 1, 2) }));
    sync_now().await;
    changed += change(per_phase, &mut rng);
    pause().await;
    // 4. Every access token expires at once.
    emu.expire_all_tokens();
    changed += change(per_phase, &mut rng);
    pause().await;
    // 5. A subscription is deleted at Microsoft (nothing tells the app).
    let victim = subs()[plan.integration_users / 2].clone();
    assert!(emu.delete_subscription(&victim));
    changed += change(per_phase, &mut rng);
    pause().await;
    // 6. reauthorizationRequired on another subscription.
    emu.require_reauthorization(subs().last().unwrap());
    changed += change(per_phase, &mut rng);
    pause().await;
    // 7. The webhook listener restarts (down until Graph failed to deliver, while changes keep
    // coming).
    let failed = emu.stats().failed_attempts.load(Ordering::SeqCst);
    front.close().await;
    changed += change(per_phase, &mut rng);
    failed_since(failed).await;
    front.open().await;
    changed += change(per_phase, &mut rng);
    pause().await;
    // 8. kill -9 of the host, changes while it is down (until Graph failed to deliver), restart
    // (on another port: the front follows it).
    let failed = emu.stats().failed_attempts.load(Ordering::SeqCst);
    host.kill().await.unwrap();
    changed += change(per_phase, &mut rng);
    failed_since(failed).await;
    let (restarted, addr) = spawn_host_on_any_port(&config).await;
    host = restarted;
    front.target.store(addr.public.port(), Ordering::SeqCst);
    admin_port.store(addr.admin.port(), Ordering::SeqCst);
    let base = addr.admin_base();
    changed += change(plan.changes - changed, &mut rng);
    let faults_stopped = Instant::now();

    // The switchboard comes to equal the truth for every mapped user; how long it took is
    // reported, not asserted (the bound only keeps a broken run from hanging).
    let give_up = faults_stopped + 3 * EVENTUALLY;
    let mut last = vec!["(host not answering)".to_string()];
    while Instant::now() < give_up {
        if let Some(m) = mismatches(&base, &emu, &ids).await {
            last = m;
            if last.is_empty() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let converged = faults_stopped.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let status = get(&format!("{base}/status/contoso")).await.unwrap_or_default();
    let live = emu.subscriptions();
    let (early, early_what) = emu.early_requests();
    let stats = emu.stats();
    eprintln!(
        "chaos: {} users, {} integration users, {changed} changes; setup {:.1} s; converged {:.1} s after the faults \
         stopped; {} subscriptions; mapping min {} (start {initial_users}); early requests {early}; \
         notifications delivered {} / failed attempts {} / dropped {}; total {:.0} s",
        plan.users,
        plan.integration_users,
        setup.as_secs_f64(),
        converged.as_secs_f64(),
        live.len(),
        min_users.load(Ordering::Relaxed),
        stats.delivered.load(Ordering::Relaxed),
        stats.failed_attempts.load(Ordering::Relaxed),
        stats.dropped.load(Ordering::Relaxed),
        t_start.elapsed().as_secs_f64(),
    );
    eprintln!("chaos: counters {}", status["counters"]);
    host.kill().await.unwrap();

    assert!(
        last.is_empty(),
        "{} of {} users never converged: {:?}",
        last.len(),
        plan.users,
        &last[..last.len().min(10)]
    );
    // One subscription per integration user, none left over.
    let mut creators: Vec<&str> = live.iter().map(|s| s.creator_id.as_str()).collect();
    creators.sort();
    creators.dedup();
    assert_eq!(creators.len(), live.len(), "a duplicate subscription: {live:?}");
    assert_eq!(live.len(), needed, "{live:?}");
    assert!(!live.iter().any(|s| s.id == victim), "the deleted one was replaced");
    assert_eq!(early, 0, "requests sooner than Retry-After allowed: {early_what:?}");
    assert!(min_users.load(Ordering::Relaxed) >= initial_users, "the mapping shrank");
    // Every injected fault was met.
    let left = emu.with_world(|w| w.faults.clone());
    assert!(left.is_empty(), "faults never met: {left:?}");
}
