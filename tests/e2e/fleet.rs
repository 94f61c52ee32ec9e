//! Several hosts on one PostgreSQL database, as real processes behind a round-robin load
//! balancer: each integration runs on one host, a host killed with SIGKILL has its
//! integrations resume on the others, nothing is lost and nothing is doubled.
//!
//! Needs the tests' PostgreSQL server (`PRESENCE_TEST_POSTGRES`, started by `scripts/test`);
//! fails, never skips, without it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use presence_demo::{DEMO_CLIENT, DEMO_SECRET, TestClock, switchboard_users};
use presence_host::StateStore;
use presence_host::store::postgres::{scratch_database, test_server_url};

use e2e_tests::{HostAddrs, admin_get, round_robin, spawn_host_env};

const INTEGRATIONS: usize = 6;
const HOSTS: usize = 3;
const USERS: usize = 10;
/// What the issue asks: failover within 30 s of the kill.
const HANDOVER_WITHIN: Duration = Duration::from_secs(30);

fn tenant(t: usize) -> String {
    format!("00000000-0000-4000-8000-0000000000{t:02}")
}

struct Fleet {
    dirs: Vec<PathBuf>,
    ports: Vec<u16>,
    hosts: Vec<Option<(tokio::process::Child, HostAddrs)>>,
    db: String,
}

impl Fleet {
    async fn start_host(&mut self, i: usize) {
        let (child, addrs) =
            spawn_host_env(&self.dirs[i].join("host.toml"), &[], None, &[("PRESENCE_DATABASE_URL", self.db.as_str())])
                .await;
        assert_eq!(addrs.public.port(), self.ports[i]);
        self.hosts[i] = Some((child, addrs));
    }

    async fn kill(&mut self, i: usize) {
        let (mut child, _) = self.hosts[i].take().expect("running");
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
    }

    /// Which host runs each integration (by the hosts' own `/status`), and in what state.
    async fn placement(&self) -> BTreeMap<String, Vec<(usize, String)>> {
        let mut out: BTreeMap<String, Vec<(usize, String)>> = BTreeMap::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let Some((_, a)) = h else { continue };
            let Some(s) = admin_get(&format!("{}/status", a.admin_base())).await else { continue };
            for st in s["integrations"].as_array().cloned().unwrap_or_default() {
                out.entry(st["name"].as_str().unwrap().to_string())
                    .or_default()
                    .push((i, st["state"].as_str().unwrap_or("").to_string()));
            }
        }
        out
    }

    /// Waits until every integration runs on exactly one live host and is OK; answers how
    /// long that took.
    async fn wait_placed(&self, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let p = self.placement().await;
            let placed = p.len() == INTEGRATIONS && p.values().all(|v| v.len() == 1 && v[0].1 == "ok");
            if placed {
                return start.elapsed();
            }
            assert!(start.elapsed() < within, "not every integration runs on one host within {within:?}: {p:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the integrations are spread evenly (two per host).
    async fn wait_balanced(&self, within: Duration) {
        let start = Instant::now();
        loop {
            let p = self.placement().await;
            let mut per_host = BTreeMap::<usize, usize>::new();
            for v in p.values() {
                *per_host.entry(v[0].0).or_default() += 1;
            }
            let live = self.hosts.iter().filter(|h| h.is_some()).count();
            if p.len() == INTEGRATIONS
                && p.values().all(|v| v.len() == 1 && v[0].1 == "ok")
                && per_host.len() == live
                && per_host.values().all(|n| *n == INTEGRATIONS / live)
            {
                return;
            }
            assert!(start.elapsed() < within, "not balanced within {within:?}: {p:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn write_config(dir: &Path, port: u16, public: &str, emu: &str, host_id: &str, seeds: &[graph_emulator::TenantSeed]) {
    let mut integrations = String::new();
    for (t, seed) in seeds.iter().enumerate() {
        switchboard_sim::Switchboard::write_csv(&dir.join(format!("t{t}.csv")), &switchboard_users(seed, USERS))
            .unwrap();
        integrations.push_str(&format!(
            r#"
[[integration]]
name = "t{t}"
tenant_id = "{}"
client_id = "{DEMO_CLIENT}"
client_secret = "{DEMO_SECRET}"
switchboard_csv = "t{t}.csv"
users = [{{ username = "{}", password = "{}" }}]
reconcile_interval_s = 3600
"#,
            tenant(t),
            seed.integration_user(0),
            seed.integration_password
        ));
    }
    std::fs::write(
        dir.join("host.toml"),
        format!(
            r#"
[host]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:0"
admin_token_file = "admin-token"
kek_file = "kek"
public_base_url = "{public}"
state_dir = "state"
graph_base_url = "{emu}"
login_base_url = "{emu}"
database_url_env = "PRESENCE_DATABASE_URL"
host_id = "{host_id}"
{integrations}"#
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_share_the_integrations_and_each_sigkill_is_taken_over() {
    let db = scratch_database(&test_server_url(), "fleet").await.unwrap();
    let clock = Arc::new(TestClock::default());
    let emu = graph_emulator::Emulator::new(clock.clone());
    let seeds: Vec<_> = (0..INTEGRATIONS)
        .map(|t| {
            graph_emulator::TenantSeed::new(&tenant(t), &format!("t{t}.example"), DEMO_CLIENT, DEMO_SECRET, USERS, 1)
        })
        .collect();
    for s in &seeds {
        emu.add_tenant(s);
    }
    let emu_url = emu.start().await.unwrap();

    // Three hosts on fixed ports behind one balancer, which Graph's notifications reach.
    let root = tempfile::tempdir().unwrap();
    let ports: Vec<u16> =
        (0..HOSTS).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let lb = round_robin(ports.iter().map(|p| ([127, 0, 0, 1], *p).into()).collect()).await;
    let public = format!("http://{lb}");
    let mut dirs = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let dir = root.path().join(format!("host{i}"));
        std::fs::create_dir(&dir).unwrap();
        // One admin token and one KEK for the fleet: any host opens what another sealed.
        for f in ["admin-token", "kek"] {
            presence_host::store::create_private_file(&dir.join(f)).unwrap();
        }
        if i == 0 {
            std::fs::write(dir.join("admin-token"), e2e_tests::E2E_ADMIN_TOKEN).unwrap();
            let mut bytes = [0u8; 32];
            rand::Rng::fill(&mut rand::rng(), &mut bytes);
            std::fs::write(dir.join("kek"), presence_host::seal::Kek::encode(&bytes)).unwrap();
        } else {
            for f in ["admin-token", "kek"] {
                std::fs::copy(root.path().join("host0").join(f), dir.join(f)).unwrap();
            }
        }
        write_config(&dir, *port, &public, &emu_url, &format!("host-{i}"), &seeds);
        dirs.push(dir);
    }
    let mut fleet = Fleet { dirs, ports, hosts: (0..HOSTS).map(|_| None).collect(), db: db.clone() };
    for i in 0..HOSTS {
        fleet.start_host(i).await;
    }
    fleet.wait_placed(Duration::from_secs(60)).await;
    fleet.wait_balanced(Duration::from_secs(60)).await;

    // Presence changes all along: every change is one notification to the balancer.
    let stop = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(AtomicU64::new(0));
    let user_ids: Vec<Vec<String>> = (0..INTEGRATIONS)
        .map(|t| {
            emu.with_world(|w| {
                w.tenants.values().find(|x| x.id == tenant(t)).unwrap().users.iter().map(|u| u.id.clone()).collect()
            })
        })
        .collect();
    let load = {
        let (emu, stop, changes) = (emu.clone(), stop.clone(), changes.clone());
        tokio::spawn(async move {
            let states =
                [("Available", "Available"), ("Busy", "InAMeeting"), ("Away", "Away"), ("DoNotDisturb", "Presenting")];
            let mut tick = tokio::time::interval(Duration::from_millis(2)); // 500 a second
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let t = k % INTEGRATIONS;
                let u = &user_ids[t][(k / INTEGRATIONS) % USERS];
                let (a, act) = states[(k / (INTEGRATIONS * USERS)) % states.len()];
                emu.set_presence(&tenant(t), u, a, act, false);
                changes.fetch_add(1, Ordering::Relaxed);
                k += 1;
            }
        })
    };

    // Kill each host in turn under load; its integrations resume on the others in time;
    // started again, it takes its share back.
    let mut handovers = Vec::new();
    for i in 0..HOSTS {
        tokio::time::sleep(Duration::from_secs(3)).await;
        fleet.kill(i).await;
        handovers.push(fleet.wait_placed(HANDOVER_WITHIN).await);
        fleet.start_host(i).await;
        fleet.wait_balanced(Duration::from_secs(60)).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    eprintln!("{} presence changes; handovers after SIGKILL: {handovers:?}", changes.load(Ordering::Relaxed));

    // Everything Graph sent was taken (none given up), and every row taken was processed:
    // the shared inbox runs empty.
    let store = presence_host::PgStore::connect(&db, false).unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (queued, done) = emu.deliveries();
        let waiting: u64 = (0..INTEGRATIONS).map(|t| store.inbox_size(&format!("t{t}")).unwrap().0).sum();
        if queued == done && waiting == 0 {
            break;
        }
        assert!(Instant::now() < end, "not settled: {queued} queued, {done} done, {waiting} rows waiting");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(emu.stats().dropped.load(Ordering::SeqCst), 0, "Graph gave no notification up");

    // Every user shows what Teams shows, on the host that runs its integration.
    let placement = fleet.placement().await;
    for t in 0..INTEGRATIONS {
        let name = format!("t{t}");
        let host = placement[&name][0].0;
        let base = fleet.hosts[host].as_ref().unwrap().1.admin_base();
        let truth = emu.truth(&tenant(t));
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let users = admin_get(&format!("{base}/switchboard/{name}/users")).await.unwrap();
            let wrong: Vec<String> = users["users"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|u| u["user"]["active"] == true)
                .filter(|u| {
                    let p = &u["teams_presence"];
                    let Some(id) = p["microsoft_user_id"].as_str() else { return true };
                    truth
                        .get(id)
                        .is_none_or(|(a, act)| p["availability"] != a.as_str() || p["activity"] != act.as_str())
                })
                .map(|u| u["user"]["id"].to_string())
                .collect();
            if wrong.is_empty() {
                break;
            }
            assert!(Instant::now() < end, "{name}: users not showing Teams' presence: {wrong:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // One presence subscription per app per integration user: none doubled by a takeover.
    let mut seen = BTreeSet::new();
    for s in emu.subscriptions() {
        assert!(
            seen.insert((s.tenant.clone(), s.creator_id.clone())),
            "a duplicate subscription: {} of {}",
            s.id,
            s.tenant
        );
    }
    assert_eq!(seen.len(), INTEGRATIONS);
}
