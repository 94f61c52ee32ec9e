//! Several hosts on one PostgreSQL database: the store's cost on one host (PostgreSQL next to
//! SQLite), the fleet's total with 1, 2 and 3 hosts, the time to take a lost host's
//! integrations over, and a simulation of the lease keepers of 10,000 small integrations on
//! 4 hosts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use presence_demo::{DEMO_CLIENT, DEMO_SECRET, TestClock, switchboard_users};
use presence_host::lease::{self, Leases, Plan};
use presence_host::store::postgres::scratch_database;
use presence_host::{Config, Host, PgStore};

use crate::common::*;

/// The PostgreSQL server the section runs on: `PRESENCE_TEST_POSTGRES` when set (as
/// `scripts/test` sets it), else a throwaway cluster this run starts (`scripts/pg-cluster`)
/// and stops.
pub(crate) struct Server {
    pub url: String,
    cluster: Option<std::path::PathBuf>,
}

impl Server {
    pub(crate) fn start() -> anyhow::Result<Server> {
        if let Ok(url) = std::env::var("PRESENCE_TEST_POSTGRES") {
            return Ok(Server { url, cluster: None });
        }
        let dir = std::env::temp_dir().join(format!("tps-bench-pg-{}", std::process::id()));
        let out = std::process::Command::new(script()).arg("start").arg(&dir).output()?;
        anyhow::ensure!(
            out.status.success(),
            "starting a PostgreSQL cluster (scripts/pg-cluster) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Server { url: String::from_utf8(out.stdout)?.trim().to_string(), cluster: Some(dir) })
    }
}

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg-cluster")
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(dir) = &self.cluster {
            let _ = std::process::Command::new(script()).arg("stop").arg(dir).status();
        }
    }
}

/// What the fleet section measured.
pub(crate) struct FleetFigures {
    /// (hosts, notifications processed a second by all of them).
    pub totals: Vec<(usize, f64)>,
    /// Seconds from a host's crash until each of its integrations ran on another host.
    pub takeover_s: f64,
    /// Seconds from the crashed host's return until it ran its share again.
    pub rejoin_s: f64,
    /// The lease keepers' simulation.
    pub sim: SimFigures,
}

/// The simulation of many small integrations' leases.
pub(crate) struct SimFigures {
    pub integrations: usize,
    pub hosts: usize,
    pub converge_s: f64,
    pub steady_s: f64,
    pub rounds_per_s: f64,
    pub leases_renewed_per_s: f64,
    pub commits_per_s: f64,
    pub rows_updated_per_s: f64,
    pub mean_round_ms: f64,
    pub max_round_ms: f64,
    pub takeover_s: f64,
}

const TENANT_USERS: usize = 100;
const INTEGRATIONS: usize = 6;

fn tenant(t: usize) -> String {
    format!("00000000-0000-4000-8000-0000000001{t:02}")
}

/// A host of a fleet, in this process: its config names the shared database and KEK.
fn config(
    i: usize,
    port: u16,
    public: &str,
    dir: &std::path::Path,
    emu: &str,
    db: &str,
    kek: &str,
) -> anyhow::Result<Config> {
    let mut text = format!(
        r#"
[host]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:0"
admin_token_env = "TOKEN"
kek_env = "KEK"
public_base_url = "{public}"
state_dir = "host{i}"
graph_base_url = "{emu}"
login_base_url = "{emu}"
database_url_env = "DB"
host_id = "bench-{i}"
"#
    );
    for t in 0..INTEGRATIONS {
        let seed = seed(t);
        text.push_str(&format!(
            "[[integration]]\nname = \"t{t}\"\ntenant_id = \"{}\"\nclient_id = \"{DEMO_CLIENT}\"\nclient_secret = \"{DEMO_SECRET}\"\n\
             users = [{{ username = \"{}\", password = \"{}\" }}]\n",
            tenant(t),
            seed.integration_user(0),
            seed.integration_password
        ));
    }
    let env = |k: &str| match k {
        "TOKEN" => Some("bench-admin-token-0123456789".to_string()),
        "KEK" => Some(kek.to_string()),
        "DB" => Some(db.to_string()),
        _ => None,
    };
    Ok(Config::parse(&text, "bench fleet", dir, &env)?)
}

fn seed(t: usize) -> graph_emulator::TenantSeed {
    graph_emulator::TenantSeed::new(&tenant(t), &format!("t{t}.example"), DEMO_CLIENT, DEMO_SECRET, TENANT_USERS, 1)
}

struct Fleet {
    emu: graph_emulator::Emulator,
    clock: Arc<TestClock>,
    sims: Arc<switchboard_sim::Switchboards>,
    configs: Vec<Config>,
    hosts: Vec<Option<Host>>,
    _dir: tempfile::TempDir,
}

impl Fleet {
    async fn new(n: usize, db: &str) -> anyhow::Result<Fleet> {
        let clock = Arc::new(TestClock::default());
        let emu = graph_emulator::Emulator::new(clock.clone());
        let mut sims = BTreeMap::new();
        for t in 0..INTEGRATIONS {
            emu.add_tenant(&seed(t));
            sims.insert(
                format!("t{t}"),
                Arc::new(switchboard_sim::Switchboard::new(switchboard_users(&seed(t), TENANT_USERS))),
            );
        }
        let emu_url = emu.start().await?;
        let dir = tempfile::tempdir()?;
        let mut bytes = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut bytes);
        let kek = presence_host::seal::Kek::encode(&bytes);
        // Fixed ports behind one round-robin balancer, which Graph's notifications reach.
        let ports: Vec<u16> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()))
            .collect::<Result<_, _>>()?;
        let lb = presence_demo::round_robin(ports.iter().map(|p| ([127, 0, 0, 1], *p).into()).collect()).await?;
        let public = format!("http://{lb}");
        let configs = (0..n)
            .map(|i| config(i, ports[i], &public, dir.path(), &emu_url, db, &kek))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut fleet = Fleet {
            emu,
            clock,
            sims: switchboard_sim::Switchboards::new(sims),
            configs,
            hosts: (0..n).map(|_| None).collect(),
            _dir: dir,
        };
        for i in 0..n {
            fleet.start(i).await?;
        }
        Ok(fleet)
    }

    async fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(&self.configs[i].host.listen).await?;
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut backends = presence_host::Backends::defaults(&self.configs[i], self.sims.clone())?;
        backends.clock = self.clock.clone();
        let mut host = Host::start(&self.configs[i], presence_plugin_wasm::PLUGIN_WASM, backends).await?;
        host.serve(listener, admin, axum::Router::new())?;
        self.hosts[i] = Some(host);
        Ok(())
    }

    /// Integrations running, by host.
    fn placement(&self) -> Vec<usize> {
        self.hosts.iter().map(|h| h.as_ref().map_or(0, |h| h.integrations().len())).collect()
    }

    /// Waits until every integration runs (and, with `even`, the live hosts share them
    /// evenly) and is OK; answers the seconds it took.
    async fn wait_running(&self, even: bool, within: Duration) -> anyhow::Result<f64> {
        let t0 = Instant::now();
        loop {
            let p = self.placement();
            let live: Vec<usize> = p.iter().zip(&self.hosts).filter(|(_, h)| h.is_some()).map(|(n, _)| *n).collect();
            let all = live.iter().sum::<usize>() == INTEGRATIONS;
            let balanced = !even || live.iter().all(|n| *n == INTEGRATIONS / live.len());
            if all && balanced && self.all_ok().await {
                return Ok(t0.elapsed().as_secs_f64());
            }
            anyhow::ensure!(t0.elapsed() < within, "the fleet did not settle within {within:?}: {p:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn all_ok(&self) -> bool {
        for h in self.hosts.iter().flatten() {
            for i in h.integrations().values() {
                if !i.status().await.is_ok_and(|s| s.state == "ok") {
                    return false;
                }
            }
        }
        true
    }

    async fn accepted(&self) -> u64 {
        let mut n = 0;
        for h in self.hosts.iter().flatten() {
            for i in h.integrations().values() {
                n += i
                    .status()
                    .await
                    .map(|s| s.counters.get("notifications.accepted").copied().unwrap_or(0))
                    .unwrap_or(0);
            }
        }
        n
    }

    async fn stop(mut self) {
        for h in self.hosts.iter_mut() {
            if let Some(h) = h.take() {
                h.stop().await;
            }
        }
        self.emu.stop();
    }
}

/// Notifications processed a second by a fleet of `n` hosts in this process, the load spread
/// over them round-robin (what a balancer does).
async fn fleet_total(server: &Server, n: usize, notifications: usize) -> anyhow::Result<(f64, Option<Fleet>)> {
    let db = scratch_database(&server.url, "bench_fleet").await?;
    let fleet = Fleet::new(n, &db).await?;
    fleet.wait_running(true, Duration::from_secs(60)).await?;
    let mut paths = BTreeMap::new();
    for h in fleet.hosts.iter().flatten() {
        for (name, i) in h.integrations().iter() {
            paths.insert(name.clone(), i.webhook_path("notifications"));
        }
    }
    let subs = fleet.emu.subscriptions();
    let states = [("Available", "Available"), ("Busy", "InACall"), ("Away", "Away")];
    let addrs: Vec<String> = fleet.hosts.iter().flatten().map(|h| format!("http://{}", h.addr())).collect();
    let mut bodies = Vec::with_capacity(notifications);
    for k in 0..notifications {
        let t = k % INTEGRATIONS;
        let sub =
            subs.iter().find(|s| s.tenant == tenant(t)).ok_or_else(|| anyhow::anyhow!("no subscription of t{t}"))?;
        let user = sub.user_ids.iter().nth((k / INTEGRATIONS) % sub.user_ids.len()).expect("a user").clone();
        let (a, b) = states[(k / INTEGRATIONS) % 3];
        let item = fleet.emu.notification_for(&sub.id, &user, a, b).expect("notification");
        let url = format!("{}{}", addrs[k % addrs.len()], paths[&format!("t{t}")]);
        bodies.push((url, fleet.emu.batch_body(&sub.id, vec![item]).to_string()));
    }
    let before = fleet.accepted().await;
    let t0 = Instant::now();
    post_all(bodies, 8).await?;
    let want = before + notifications as u64;
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let got = fleet.accepted().await;
        if got >= want {
            break;
        }
        anyhow::ensure!(
            Instant::now() < end,
            "the fleet of {n} did not process every notification: {} of {notifications} (placement {:?})",
            got - before,
            fleet.placement()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = notifications as f64 / t0.elapsed().as_secs_f64();
    if n == 3 {
        return Ok((rate, Some(fleet)));
    }
    fleet.stop().await;
    Ok((rate, None))
}

/// Posts each (url, body) with `concurrency` clients.
async fn post_all(bodies: Vec<(String, String)>, concurrency: usize) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, queue) = (client.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some((url, b)) = queue.lock().unwrap().pop() else { return Ok::<_, anyhow::Error>(()) };
                let r = client.post(&url).header("content-type", "application/json").body(b).send().await?;
                anyhow::ensure!(r.status().is_success(), "status {}", r.status());
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The fleet's figures: totals with 1, 2 and 3 hosts, then (on the 3) a crash and a return,
/// then the lease simulation.
pub(crate) async fn fleet(
    server: &Server,
    notifications: usize,
    sim_integrations: usize,
    sim_seconds: u64,
) -> anyhow::Result<FleetFigures> {
    let mut totals = Vec::new();
    let mut three = None;
    for n in 1..=3 {
        let (rate, fleet) = fleet_total(server, n, notifications).await?;
        totals.push((n, rate));
        three = fleet;
    }
    let mut fleet = three.expect("the three-host fleet");
    // A crash: the host stops as a killed one would, its leases are not handed over.
    let lost = fleet.hosts[0].take().expect("running");
    lost.abandon().await;
    let takeover_s = fleet.wait_running(false, Duration::from_secs(60)).await?;
    let t0 = Instant::now();
    fleet.start(0).await?;
    fleet.wait_running(true, Duration::from_secs(120)).await?;
    let rejoin_s = t0.elapsed().as_secs_f64();
    fleet.stop().await;
    let sim = simulate(server, sim_integrations, 4, sim_seconds).await?;
    Ok(FleetFigures { totals, takeover_s, rejoin_s, sim })
}

/// A simulated host: the lease keeper's rounds (renew, look, take or hand over) without
/// running integrations.
async fn keeper(
    leases: Arc<Leases>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    rounds: Arc<std::sync::Mutex<Vec<f64>>>,
) {
    let mut next = tokio::time::Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep_until(next).await;
        next += lease::ROUND;
        let t0 = Instant::now();
        let may_move = leases.next_round();
        if leases.renew().await.is_err() || !may_move {
            continue;
        }
        let Ok(view) = leases.view().await else { continue };
        match lease::plan(&view, &leases.me, leases.held().len()) {
            Plan::Take(n) => {
                let _ = leases.acquire(n).await;
            }
            Plan::HandOver(n) => {
                let mut held = leases.held();
                for name in held.split_off(held.len() - n) {
                    let _ = leases.release(&name).await;
                }
            }
            Plan::Hold => {}
        }
        rounds.lock().unwrap().push(t0.elapsed().as_secs_f64() * 1000.0);
    }
}

/// `integrations` lease rows kept by `hosts` simulated hosts: the time to share them from
/// nothing, the database's load at steady state for `seconds`, and the time for the others
/// to take over when one host stops renewing.
async fn simulate(server: &Server, integrations: usize, hosts: usize, seconds: u64) -> anyhow::Result<SimFigures> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let db = scratch_database(&server.url, "bench_leases").await?;
    let stores: Vec<Arc<PgStore>> = (0..hosts)
        .map(|i| PgStore::connect_host(&db, &format!("sim-{i}")).map(Arc::new))
        .collect::<anyhow::Result<_>>()?;
    let all: Vec<Arc<Leases>> =
        stores.iter().enumerate().map(|(i, s)| Leases::new(s.clone(), format!("sim-{i}"))).collect();
    all[0].ensure((0..integrations).map(|k| format!("i{k:05}")).collect()).await?;
    let rounds = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stops: Vec<Arc<AtomicBool>> = (0..hosts).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let t0 = Instant::now();
    let tasks: Vec<_> =
        all.iter().zip(&stops).map(|(l, s)| tokio::spawn(keeper(l.clone(), s.clone(), rounds.clone()))).collect();
    let share = integrations / hosts;
    while !all.iter().all(|l| l.held().len() == share) {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(300), "the simulated hosts never shared the leases");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let converge_s = t0.elapsed().as_secs_f64();
    // Steady state: what the database does for the keepers alone.
    let stats = || {
        let pool = stores[0].pool().clone();
        stores[0].block(async move {
            let c = pool.get().await?;
            let r = c
                .query_one(
                    "SELECT xact_commit, tup_updated FROM pg_stat_database WHERE datname = current_database()",
                    &[],
                )
                .await?;
            Ok::<_, anyhow::Error>((r.get::<_, i64>(0), r.get::<_, i64>(1)))
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    rounds.lock().unwrap().clear();
    let (c0, u0) = stats()?;
    let s0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    // The statistics reach pg_stat_database within a second of each transaction.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (c1, u1) = stats()?;
    let steady_s = s0.elapsed().as_secs_f64();
    let round_ms: Vec<f64> = rounds.lock().unwrap().clone();
    let rounds_per_s = round_ms.len() as f64 / (seconds as f64);
    // One host stops renewing (as if killed): the others take its leases over.
    stops[0].store(true, Ordering::Relaxed);
    let k = Instant::now();
    let rest = &all[1..];
    while rest.iter().map(|l| l.held().len()).sum::<usize>() < integrations {
        anyhow::ensure!(k.elapsed() < Duration::from_secs(120), "the others never took the leases over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let takeover_s = k.elapsed().as_secs_f64();
    for s in &stops {
        s.store(true, Ordering::Relaxed);
    }
    for t in tasks {
        let _ = t.await;
    }
    let mean = round_ms.iter().sum::<f64>() / round_ms.len().max(1) as f64;
    Ok(SimFigures {
        integrations,
        hosts,
        converge_s,
        steady_s,
        rounds_per_s,
        leases_renewed_per_s: integrations as f64 / lease::ROUND.as_secs_f64(),
        commits_per_s: (c1 - c0) as f64 / steady_s,
        rows_updated_per_s: (u1 - u0) as f64 / steady_s,
        mean_round_ms: mean,
        max_round_ms: round_ms.iter().cloned().fold(0.0, f64::max),
        takeover_s,
    })
}

/// Ingest and p99 latency on one host through PostgreSQL next to SQLite.
pub(crate) async fn one_host(
    server: &Server,
    notifications: usize,
    rate: usize,
    seconds: usize,
) -> anyhow::Result<Vec<(&'static str, f64, f64, f64)>> {
    let mut out = Vec::new();
    for store in ["SQLite", "PostgreSQL"] {
        // A fresh database for each run (each scenario seals under a KEK of its own).
        let db = async || -> anyhow::Result<Option<String>> {
            Ok(match store {
                "PostgreSQL" => Some(scratch_database(&server.url, "bench_one").await?),
                _ => None,
            })
        };
        let ingest = crate::ingest::ingest_on(notifications, db().await?).await?.rate;
        let mut lat = crate::latency::latency_at_rate_on(rate, seconds, db().await?).await?.ms;
        out.push((store, ingest, percentile(&mut lat, 0.5), percentile(&mut lat, 0.99)));
    }
    Ok(out)
}
