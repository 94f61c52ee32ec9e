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
    integrations: usize,
    /// Hosts paused with SIGSTOP: not asked anything (they would not answer).
    paused: Vec<bool>,
    dirs: Vec<PathBuf>,
    ports: Vec<u16>,
    hosts: Vec<Option<(tokio::process::Child, HostAddrs)>>,
    db: String,
    /// The journal every host's switchboard writes each update to: what one switchboard that
    /// all hosts feed receives, in order (see `switchboard_sim::Journal`).
    journal: PathBuf,
}

impl Fleet {
    async fn start_host(&mut self, i: usize) {
        let (child, addrs) = spawn_host_env(
            &self.dirs[i].join("host.toml"),
            &[],
            None,
            &[
                ("PRESENCE_DATABASE_URL", self.db.as_str()),
                (switchboard_sim::JOURNAL_ENV, self.journal.to_str().unwrap()),
            ],
        )
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
            if self.paused[i] {
                continue;
            }
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
            let placed = p.len() == self.integrations && p.values().all(|v| v.len() == 1 && v[0].1 == "ok");
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
            if p.len() == self.integrations
                && p.values().all(|v| v.len() == 1 && v[0].1 == "ok")
                && per_host.len() == live
                && per_host.values().all(|n| *n == self.integrations / live)
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
push_line_status = true
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

/// What a fleet test runs on: the hosts, the emulator, the database.
struct Setup {
    fleet: Fleet,
    emu: graph_emulator::Emulator,
    db: String,
    _root: tempfile::TempDir,
}

/// `hosts` host processes on one fresh database behind a round-robin balancer, sharing
/// `integrations` integrations (one tenant each), started and balanced. Every write of an
/// integration's state is audited (which host made it, and which host held the lease then).
async fn setup(hosts: usize, integrations: usize) -> Setup {
    let db = scratch_database(&test_server_url(), "fleet").await.unwrap();
    let clock = Arc::new(TestClock::default());
    let emu = graph_emulator::Emulator::new(clock.clone());
    let seeds: Vec<_> = (0..integrations)
        .map(|t| {
            graph_emulator::TenantSeed::new(&tenant(t), &format!("t{t}.example"), DEMO_CLIENT, DEMO_SECRET, USERS, 1)
        })
        .collect();
    for s in &seeds {
        emu.add_tenant(s);
    }
    let emu_url = emu.start().await.unwrap();

    // Hosts on fixed ports behind one balancer, which Graph's notifications reach.
    let root = tempfile::tempdir().unwrap();
    let ports: Vec<u16> =
        (0..hosts).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
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
    // The schema first (a store migrates it), then the audit on it.
    let store = presence_host::PgStore::connect(&db, false).unwrap();
    sql(&store, AUDIT);
    let mut fleet = Fleet {
        integrations,
        paused: vec![false; hosts],
        dirs,
        ports,
        hosts: (0..hosts).map(|_| None).collect(),
        db: db.clone(),
        journal: root.path().join("switchboard-journal"),
    };
    for i in 0..hosts {
        fleet.start_host(i).await;
    }
    fleet.wait_placed(Duration::from_secs(60)).await;
    fleet.wait_balanced(Duration::from_secs(60)).await;
    Setup { fleet, emu, db, _root: root }
}

/// Records each write of an integration's state: the connection's host, and the owner of
/// the integration's lease at that moment (inside the write's transaction). Inbox rows are
/// written by any host; only their removal is the owner's.
const AUDIT: &str = r#"
CREATE TABLE audit (app TEXT, tbl TEXT, op TEXT, integration TEXT, owner TEXT, at TIMESTAMPTZ DEFAULT clock_timestamp());
CREATE FUNCTION audit_write() RETURNS trigger AS $$
DECLARE i TEXT;
BEGIN
  IF TG_OP = 'DELETE' THEN i := OLD.integration; ELSE i := NEW.integration; END IF;
  INSERT INTO audit (app, tbl, op, integration, owner)
  VALUES (current_setting('application_name'), TG_TABLE_NAME, TG_OP, i, (SELECT owner FROM lease WHERE integration = i));
  RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON kv FOR EACH ROW EXECUTE FUNCTION audit_write();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON kv_backup FOR EACH ROW EXECUTE FUNCTION audit_write();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON notification_key FOR EACH ROW EXECUTE FUNCTION audit_write();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON credential FOR EACH ROW EXECUTE FUNCTION audit_write();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON swapped_release FOR EACH ROW EXECUTE FUNCTION audit_write();
CREATE TRIGGER audit AFTER DELETE ON inbox FOR EACH ROW EXECUTE FUNCTION audit_write();
"#;

fn sql(store: &presence_host::PgStore, q: &'static str) {
    let pool = store.pool().clone();
    store.block(async move { pool.get().await.unwrap().batch_execute(q).await.unwrap() });
}

/// (writes audited, writes made by a host that did not hold the integration's lease then).
fn audited(store: &presence_host::PgStore) -> (i64, i64, Vec<String>) {
    let pool = store.pool().clone();
    store.block(async move {
        let c = pool.get().await.unwrap();
        let all: i64 = c.query_one("SELECT COUNT(*) FROM audit", &[]).await.unwrap().get(0);
        let bad = c
            .query(
                "SELECT app || ' wrote ' || tbl || ' ' || op || ' of ' || integration || ' while ' || COALESCE(owner, 'nobody') || ' held it'
                 FROM audit WHERE owner IS NULL OR app <> 'teams-presence-sync/' || owner",
                &[],
            )
            .await
            .unwrap();
        (all, bad.len() as i64, bad.iter().take(5).map(|r| r.get(0)).collect())
    })
}

/// Changes presence in every tenant, `per_second` times a second, until `stop`.
fn presence_load(
    emu: &graph_emulator::Emulator,
    integrations: usize,
    per_second: u64,
    stop: Arc<AtomicBool>,
    changes: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let user_ids: Vec<Vec<String>> = (0..integrations)
        .map(|t| {
            emu.with_world(|w| {
                w.tenants.values().find(|x| x.id == tenant(t)).unwrap().users.iter().map(|u| u.id.clone()).collect()
            })
        })
        .collect();
    let emu = emu.clone();
    tokio::spawn(async move {
        let states =
            [("Available", "Available"), ("Busy", "InAMeeting"), ("Away", "Away"), ("DoNotDisturb", "Presenting")];
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
        let mut k = 0usize;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            // User 0 of each tenant is left alone (the tests put it in calls).
            let t = k % integrations;
            let u = &user_ids[t][1 + (k / integrations) % (USERS - 1)];
            let (a, act) = states[(k / (integrations * USERS)) % states.len()];
            emu.set_presence(&tenant(t), u, a, act, false);
            changes.fetch_add(1, Ordering::Relaxed);
            k += 1;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_share_the_integrations_and_each_sigkill_is_taken_over() {
    let Setup { mut fleet, emu, db, _root } = setup(HOSTS, INTEGRATIONS).await;
    let started = Instant::now();
    // 500 presence changes a second all along: each is one notification to the balancer.
    let stop = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(AtomicU64::new(0));
    let load = presence_load(&emu, INTEGRATIONS, 500, stop.clone(), changes.clone());
    // Kill each host in turn under load; its integrations resume on the others in time;
    // started again, it takes its share back.
    let mut handovers = Vec::new();
    for i in 0..HOSTS {
        tokio::time::sleep(Duration::from_secs(3)).await;
        // A call on the mobile line of a user of an integration this host runs: Teams shows
        // "In a call" (set by this host).
        let name = fleet.placement().await.into_iter().find(|(_, on)| on[0].0 == i).map(|(n, _)| n).unwrap();
        let t: usize = name[1..].parse().unwrap();
        let user0 = emu.with_world(|w| w.tenants.values().find(|x| x.id == tenant(t)).unwrap().users[0].id.clone());
        emu.set_presence(&tenant(t), &user0, "Available", "Available", false);
        let base = fleet.hosts[i].as_ref().unwrap().1.admin_base();
        assert_eq!(e2e_tests::line_event(&base, &name, "sb-00000", "connected").await.0, 202);
        until(&format!("{name}: Teams shows In a call"), async || emu.truth(&tenant(t))[&user0].1 == "InACall").await;
        fleet.kill(i).await;
        handovers.push(fleet.wait_placed(HANDOVER_WITHIN).await);
        // The host that took it over finds no such call in its switchboard: "In a call" is
        // cleared, not left until the session runs out at Microsoft.
        until(&format!("{name}: In a call cleared after the takeover"), async || {
            emu.truth(&tenant(t))[&user0].1 != "InACall"
        })
        .await;
        fleet.start_host(i).await;
        fleet.wait_balanced(Duration::from_secs(60)).await;
    }
    // At least 60 s of load.
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(started.elapsed())).await;
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

    // Every write of an integration's state came from the host that held its lease.
    let (writes, stale, examples) = audited(&store);
    assert!(writes > 0);
    assert_eq!(stale, 0, "writes by a host without the lease: {examples:?}");

    // One switchboard fed by all hosts: nothing from a host that had lost the lease, and it
    // shows what Teams shows.
    let r = assert_one_switchboard_shows_teams(&fleet, &emu, 0).await;
    eprintln!("the switchboard took {} updates, {} shown again unchanged by a new owner", r.updates, r.repeated);
}

/// What the switchboard that all hosts feed received, from the fleet's journal.
struct Received {
    /// Updates in all.
    updates: usize,
    /// Updates that came from a host after another host, holding a newer lease of the
    /// integration, had shown something (a host paused between its lease check and its
    /// publish). The documented rule has the one switchboard drop them, and so does this
    /// reading of the journal (each host's simulator sees only its own updates, so the
    /// journal's `dropped` cannot tell).
    stale: Vec<String>,
    /// Updates shown again by the next owner exactly as shown before (a replay after a
    /// takeover; nothing visible changes).
    repeated: usize,
    /// What it shows at the end: (integration, user) → (Microsoft user, availability, activity).
    shown: BTreeMap<(String, String), (String, String, String)>,
}

fn received(journal: &Path) -> Received {
    let text = std::fs::read_to_string(journal).unwrap_or_default();
    let mut greatest: BTreeMap<String, i64> = BTreeMap::new();
    let mut owner_of: BTreeMap<(String, i64), String> = BTreeMap::new();
    let mut r = Received { updates: 0, stale: vec![], repeated: 0, shown: BTreeMap::new() };
    let mut last_token: BTreeMap<(String, String), i64> = BTreeMap::new();
    for line in text.lines() {
        let l: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("journal line {line}: {e}"));
        let s = |k: &str| l[k].as_str().unwrap_or_default().to_string();
        let (integration, user) = (s("integration"), s("user"));
        let token = l["token"].as_i64().expect("every update of a fleet's host carries its lease's token");
        r.updates += 1;
        // One host per token.
        let host = owner_of.entry((integration.clone(), token)).or_insert_with(|| s("host"));
        assert_eq!(*host, s("host"), "two hosts published {integration} under token {token}");
        let g = greatest.entry(integration.clone()).or_insert(token);
        if token < *g {
            r.stale.push(format!("{} published {} {user} under token {token} after token {g}", s("host"), s("op")));
            continue; // the switchboard drops it (the fence rule)
        }
        *g = token;
        let key = (integration, user);
        let value = (s("microsoft_user"), s("availability"), s("activity"));
        let before = last_token.insert(key.clone(), token);
        if s("op") == "withdraw" {
            r.shown.remove(&key);
        } else {
            if before.is_some_and(|b| b < token) && r.shown.get(&key) == Some(&value) {
                r.repeated += 1;
            }
            r.shown.insert(key, value);
        }
    }
    r
}

/// The journal's reading finds an update from a host after its successor's, and a replay.
#[test]
fn the_journal_check_finds_a_stale_update_and_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let line = |host: &str, token: i64, act: &str| {
        format!(
            r#"{{"integration":"t0","op":"publish","user":"sb-1","microsoft_user":"m1","availability":"Busy","activity":"{act}","origin":"teams","host":"{host}","token":{token},"dropped":false}}"#
        )
    };
    let lines =
        [line("h0", 1, "InACall"), line("h1", 2, "InACall"), line("h0", 1, "Away"), line("h1", 2, "InAMeeting")];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let r = received(&path);
    assert_eq!(r.updates, 4);
    assert_eq!(r.stale, ["h0 published publish sb-1 under token 1 after token 2"]);
    assert_eq!(r.repeated, 1, "h1 showed InACall again");
    assert_eq!(r.shown[&("t0".to_string(), "sb-1".to_string())].2, "InAMeeting");
}

/// The switchboard that all hosts feed never got an update from a host that had lost the
/// lease to one that already showed something, and shows what Teams shows for every user.
/// `max_stale`: stale updates allowed (dropped by the switchboard): 0 unless a host was
/// paused mid-step.
async fn assert_one_switchboard_shows_teams(
    fleet: &Fleet,
    emu: &graph_emulator::Emulator,
    max_stale: usize,
) -> Received {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let r = received(&fleet.journal);
        // A host paused between its lease check and its publish may still send what that step
        // had in hand; the switchboard drops it (the documented fence rule, applied by
        // `received` as by the one switchboard), so nothing stale is ever shown.
        assert!(r.stale.len() <= max_stale, "a host published after it lost the lease: {:?}", r.stale);
        let mut wrong = Vec::new();
        for t in 0..fleet.integrations {
            let truth = emu.truth(&tenant(t));
            for ((i, user), (ms, a, act)) in r.shown.iter().filter(|((i, _), _)| *i == format!("t{t}")) {
                if truth.get(ms).is_none_or(|(ta, tact)| ta != a || tact != act) {
                    wrong.push(format!("{i}/{user}: {a}/{act}, Teams: {:?}", truth.get(ms)));
                }
            }
            let shown = r.shown.keys().filter(|(i, _)| *i == format!("t{t}")).count();
            if shown != USERS {
                wrong.push(format!("t{t}: {shown} of {USERS} users show a presence"));
            }
        }
        if wrong.is_empty() {
            return r;
        }
        assert!(Instant::now() < end, "the switchboard does not show what Teams shows: {wrong:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends `signal` (`STOP`, `CONT`) to a host process.
fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("running").to_string();
    let ok = std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap().success();
    assert!(ok, "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_paused_past_its_lease_writes_nothing_when_it_resumes() {
    let Setup { mut fleet, emu, db, _root } = setup(2, 2).await;
    let stop = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(AtomicU64::new(0));
    let load = presence_load(&emu, 2, 100, stop.clone(), changes.clone());
    let placement = fleet.placement().await;
    let victim = placement.iter().find(|(_, v)| v[0].0 == 0).map(|(n, _)| n.clone()).expect("host 0 runs one");

    // Paused (SIGSTOP) while its integration's notifications keep coming: the other host
    // takes the lease over once it runs out.
    signal(&fleet.hosts[0].as_ref().unwrap().0, "STOP");
    fleet.paused[0] = true;
    let took_over = fleet.wait_placed(HANDOVER_WITHIN).await;
    assert_eq!(fleet.placement().await[&victim][0].0, 1, "host 1 runs {victim}");

    // Resumed: it finds its lease gone, stops the integration, and writes nothing for it
    // (every write is checked against the lease's token inside its transaction).
    signal(&fleet.hosts[0].as_ref().unwrap().0, "CONT");
    fleet.paused[0] = false;
    let base = fleet.hosts[0].as_ref().unwrap().1.admin_base();
    let end = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let f = admin_get(&format!("{base}/fleet")).await.unwrap_or_default();
        if f["keeper"]["lost"].as_u64().unwrap_or(0) >= 1 {
            break f;
        }
        assert!(Instant::now() < end, "host 0 never noticed it lost {victim}: {f}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // It takes its share back in time, with a new token; the fleet converges.
    fleet.wait_balanced(Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let store = presence_host::PgStore::connect(&db, false).unwrap();
    let (writes, stale, examples) = audited(&store);
    eprintln!(
        "taken over after {took_over:?}; {writes} writes audited; host 0 after resuming: {}",
        after["fenced_writes"]
    );
    assert!(writes > 0);
    assert_eq!(stale, 0, "writes by a host without the lease: {examples:?}");
    let mut seen = BTreeSet::new();
    for s in emu.subscriptions() {
        assert!(seen.insert((s.tenant.clone(), s.creator_id.clone())), "a duplicate subscription: {}", s.id);
    }
    // Nor did it show anything after host 1 took over: what it still sent, until it noticed
    // the lost lease (its next keeper round, 2 s of this load at most), the switchboard dropped.
    let r = assert_one_switchboard_shows_teams(&fleet, &emu, 1_000).await;
    eprintln!("the switchboard took {} updates, dropped {} stale ones", r.updates, r.stale.len());
}

/// Waits until `f` holds, or fails with `what`.
async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(Instant::now() < end, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_and_line_events_reach_the_owner_from_any_host() {
    let Setup { fleet, emu, db, _root } = setup(2, 2).await;
    let placement = fleet.placement().await;
    let client = e2e_tests::admin_client();
    for (name, on) in &placement {
        let t: usize = name[1..].parse().unwrap();
        let other = 1 - on[0].0;
        let base = fleet.hosts[other].as_ref().unwrap().1.admin_base();
        // Status and the users list, asked of the host that does not run it.
        let r = client.get(format!("{base}/status/{name}")).send().await.unwrap();
        let code = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(code, 200, "the owner's status, through the other host: {text}");
        let s: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!((s["name"].as_str(), s["state"].as_str()), (Some(name.as_str()), Some("ok")));
        let users = admin_get(&format!("{base}/integrations/{name}/users?limit=5")).await.expect("users");
        assert_eq!(users["total"], USERS);
        let list = admin_get(&format!("{base}/integrations")).await.unwrap();
        let mine = list["integrations"].as_array().unwrap().iter().find(|i| i["name"] == name.as_str()).unwrap();
        assert_eq!(mine["status"]["state"], "ok", "the list shows the owner's status: {mine}");

        // A line event taken by the other host puts "In a call" in Teams, and its end clears it.
        let user0 = emu.with_world(|w| w.tenants.values().find(|x| x.id == tenant(t)).unwrap().users[0].id.clone());
        for (state, want) in [("connected", "InACall"), ("ended", "Available")] {
            let (code, body) = e2e_tests::line_event(&base, name, "sb-00000", state).await;
            assert_eq!(code, 202, "{body}");
            until(&format!("{name}: Teams shows {want}"), async || emu.truth(&tenant(t))[&user0].1 == want).await;
        }
        // Sync now, through the other host.
        let r = client.post(format!("{base}/integrations/{name}/sync-now")).send().await.unwrap();
        assert_eq!(r.status(), 202);
    }

    // The admin page of either host shows both integrations' status, and the users of the
    // one it does not run.
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for (i, h) in fleet.hosts.iter().enumerate() {
        let base = h.as_ref().unwrap().1.admin_base();
        let r = browser
            .post(format!("{base}/ui/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={}", e2e_tests::E2E_ADMIN_TOKEN))
            .send()
            .await
            .unwrap();
        let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
        let page = |path: String| {
            let (browser, cookie) = (browser.clone(), cookie.clone());
            async move {
                let r = browser.get(path).header("cookie", cookie).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        let (code, list) = page(format!("{base}/ui")).await;
        assert_eq!(code, 200);
        assert_eq!(list.matches("title=\"Ok\"").count(), 2, "host {i}'s list shows both OK: {list}");
        let elsewhere = placement.iter().find(|(_, on)| on[0].0 != i).map(|(n, _)| n.clone()).unwrap();
        let (code, users) = page(format!("{base}/ui/integrations/{elsewhere}/users")).await;
        assert_eq!(code, 200, "{users}");
        assert!(users.contains("data-id=\"sb-00000\""), "host {i} lists the users of {elsewhere}: {users}");
    }

    // The device-code sign-in of an integration user (MFA), started and followed through the
    // host that does not run it: the owner runs it, and the code is used once.
    let (name, on) = placement.iter().last().unwrap();
    let t: usize = name[1..].parse().unwrap();
    let base = fleet.hosts[1 - on[0].0].as_ref().unwrap().1.admin_base();
    let upn = graph_emulator::TenantSeed::new(&tenant(t), &format!("t{t}.example"), DEMO_CLIENT, DEMO_SECRET, USERS, 1)
        .integration_user(0);
    let url = format!("{base}/integrations/{name}/users/{upn}/device-code");
    let r = client.post(&url).send().await.unwrap();
    let code = r.status();
    let started: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(code, 202, "{started}");
    assert_eq!(started["state"], "pending", "{started}");
    let user_code = started["user_code"].as_str().unwrap().to_string();
    assert!(emu.answer_device_code(&user_code, &upn, true));
    until("signed in, as seen through the other host", async || {
        admin_get(&url).await.is_some_and(|s| s["state"] == "signed-in")
    })
    .await;
    assert!(emu.with_world(|w| w.device_codes.is_empty()), "the code was used");

    // A delete through the host that does not run it: the owner retires it (its subscription
    // goes at Microsoft) and removes it; both hosts forget it.
    let (name, on) = placement.iter().next().unwrap();
    let t: usize = name[1..].parse().unwrap();
    let other = 1 - on[0].0;
    let base = fleet.hosts[other].as_ref().unwrap().1.admin_base();
    let r = client.delete(format!("{base}/integrations/{name}")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    until("the deleted integration's subscription is gone at Microsoft", async || {
        !emu.subscriptions().iter().any(|s| s.tenant == tenant(t))
    })
    .await;
    for h in fleet.hosts.iter().flatten() {
        let url = format!("{}/integrations/{name}", h.1.admin_base());
        until("both hosts forget it", async || client.get(&url).send().await.unwrap().status() == 404).await;
    }
    let store = presence_host::PgStore::connect(&db, false).unwrap();
    let pool = store.pool().clone();
    let n = name.clone();
    let leases: i64 = store.block(async move {
        pool.get()
            .await
            .unwrap()
            .query_one("SELECT COUNT(*) FROM lease WHERE integration = $1", &[&n])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(leases, 0, "its lease row went with it");
    let (_, stale, examples) = audited(&store);
    assert_eq!(stale, 0, "{examples:?}");
}

/// On PostgreSQL an inbox row's id is given when it is written, not when it commits: a row
/// that commits after a row with a greater id was taken is still taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_row_that_commits_late_is_still_taken() {
    let db = scratch_database(&test_server_url(), "late").await.unwrap();
    let sc = e2e_tests::start(20, 1, |o| o.database = Some(db.clone())).await;
    let left = sc.wait_in_sync(16, e2e_tests::EVENTUALLY).await;
    assert!(left.is_empty(), "{left:?}");
    let sub = sc.emulator.subscriptions()[0].id.clone();
    let body = |user: usize, a: &str, b: &str| {
        let item = sc.emulator.notification_for(&sub, &sc.ms_user(user), a, b).expect("a notification");
        sc.emulator.batch_body(&sub, vec![item]).to_string()
    };
    // A state each user does not show yet.
    let other_than = |user: &str| {
        let now = sc.switchboard.shown(user).map(|s| s.activity).unwrap_or_default();
        [("Busy", "InAMeeting"), ("Away", "Away")].into_iter().find(|(_, act)| *act != now).unwrap()
    };
    let (a_state, b_state) = (other_than("sb-00001"), other_than("sb-00002"));
    // Row A is written (its id given) but its transaction stays open.
    let sealed = sc.config.host.kek.seal("inbox/contoso", body(1, a_state.0, a_state.1).as_bytes());
    let store = presence_host::PgStore::connect(&db, false).unwrap();
    let pool = store.pool().clone();
    let (commit, committed) = tokio::sync::oneshot::channel::<()>();
    let (written, id_of_a) = tokio::sync::oneshot::channel::<i64>();
    let writer = store.handle().spawn(async move {
        let mut c = pool.get().await.unwrap();
        let t = c.transaction().await.unwrap();
        // Held open for as long as the test needs (the store's sessions end after 5 s idle
        // inside a transaction).
        t.batch_execute("SET LOCAL idle_in_transaction_session_timeout = 0").await.unwrap();
        let id: i64 = t
            .query_one(
                "INSERT INTO inbox (integration, kind, body, received_ms) VALUES ('contoso', 'notifications', $1, 0) RETURNING id",
                &[&sealed],
            )
            .await
            .unwrap()
            .get(0);
        written.send(id).unwrap();
        committed.await.unwrap();
        t.commit().await.unwrap();
    });
    let a = id_of_a.await.unwrap();
    // Row B comes after it, through the webhook, and is taken.
    let (code, _) =
        e2e_tests::post(&sc.notification_url(), "application/json", body(2, b_state.0, b_state.1).into_bytes()).await;
    assert_eq!(code, 202);
    let end = Instant::now() + e2e_tests::EVENTUALLY;
    while sc.switchboard.shown("sb-00002").is_none_or(|s| s.activity != b_state.1) {
        assert!(Instant::now() < end, "row B was never taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Row A commits now, after B (a greater id) was taken: it is taken too.
    commit.send(()).unwrap();
    writer.await.unwrap();
    while sc.switchboard.shown("sb-00001").is_none_or(|s| s.activity != a_state.1) {
        assert!(Instant::now() < end, "row {a}, committed after a later row was taken, was never taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And removed, as B was.
    while store.inbox_size("contoso").unwrap() != (0, 0) {
        assert!(Instant::now() < end, "rows left: {:?}", store.inbox_size("contoso").unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
