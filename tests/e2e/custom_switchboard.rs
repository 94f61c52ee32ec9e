//! A platform's own switchboard, not the simulator: the host syncs through the
//! `presence_host::Switchboard` backend alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_tests::*;
use presence_host::switchboard::{LineEvent, PresenceUpdate, SwitchboardUser, UnknownUser};
use presence_host::{Backends, Config, Host, Switchboard};

/// A platform's console: a fixed list of users (one of each seed user's addresses) and the
/// last presence each shows.
struct Console {
    users: Vec<SwitchboardUser>,
    shown: Mutex<HashMap<String, (String, String)>>,
}

impl Switchboard for Console {
    fn users_page(&self, start: usize, count: usize) -> Vec<SwitchboardUser> {
        self.users.iter().skip(start).take(count).cloned().collect()
    }
    fn publish(&self, u: PresenceUpdate) -> Result<(), UnknownUser> {
        if !self.users.iter().any(|x| x.id == u.user_id) {
            return Err(UnknownUser(u.user_id));
        }
        self.shown.lock().unwrap().insert(u.user_id, (u.presence.availability, u.presence.activity));
        Ok(())
    }
    fn withdraw(&self, user_id: &str) {
        self.shown.lock().unwrap().remove(user_id);
    }
    fn calls_in_progress(&self) -> Vec<LineEvent> {
        vec![]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchboard_that_is_not_the_simulator_gets_every_presence() {
    let (emu, clock, seed, base) = demo_emulator(40).await;
    let console = Arc::new(Console {
        users: (0..40)
            .map(|i| SwitchboardUser {
                id: format!("ext-{i}"),
                display_name: format!("Extension {i}"),
                emails: vec![seed.user_email(i)],
                line_number: None,
                active: false,
            })
            .collect(),
        shown: Mutex::default(),
    });
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The workshop's config writer; the host never reads its `switchboard_csv`.
    let users = [(seed.integration_user(0), seed.integration_password.clone())];
    let path = write_host_config(dir.path(), addr.port(), &format!("http://{addr}"), &base, &users, "");
    let config = Config::load(&path).unwrap();
    let mut backends =
        Backends::defaults(&config, BTreeMap::from([("contoso".to_string(), console.clone() as Arc<dyn Switchboard>)]))
            .unwrap();
    backends.clock = clock;
    let mut host = Host::start(&config, presence_demo::PLUGIN_WASM, backends).await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    host.serve(listener, admin, axum::Router::new()).unwrap();

    // Every user shows the emulator's truth, through the platform's console alone.
    let truth = |emu: &graph_emulator::Emulator| emu.truth(&seed.tenant_id);
    let ids: Vec<String> = emu.with_world(|w| {
        let k = w.tenant_key(&seed.tenant_id).unwrap();
        w.tenants[&k].users.iter().take(40).map(|u| u.id.clone()).collect()
    });
    let in_sync = |console: &Console| {
        let t = truth(&emu);
        let shown = console.shown.lock().unwrap();
        (0..40).all(|i| shown.get(&format!("ext-{i}")) == t.get(&ids[i]))
    };
    let end = Instant::now() + EVENTUALLY;
    while !in_sync(&console) {
        assert!(Instant::now() < end, "the console never showed every presence");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A change in Teams arrives as a notification.
    let now = truth(&emu)[&ids[7]].clone();
    let (a, b) = if now.0 == "Away" { ("Busy", "InAMeeting") } else { ("Away", "Away") };
    emu.set_presence(&seed.tenant_id, &ids[7], a, b, false);
    let end = Instant::now() + EVENTUALLY;
    while console.shown.lock().unwrap().get("ext-7") != Some(&(a.to_string(), b.to_string())) {
        assert!(Instant::now() < end, "the change never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = host.integration("contoso").unwrap().status().await.unwrap();
    assert_eq!((s.state.as_str(), s.users, s.switchboard_users), ("ok", 40, 40), "{s:?}");
    // The Microsoft user of ext-9 leaves the tenant: after "Sync now" the console shows no
    // Teams presence for ext-9 any more (withdrawn), and the others stay.
    emu.with_world(|w| {
        let tn = w.tenants.values_mut().next().unwrap();
        tn.users.retain(|u| u.id != ids[9]);
        tn.reindex();
    });
    host.integration("contoso").unwrap().sync_now().await.unwrap();
    let end = Instant::now() + EVENTUALLY;
    while console.shown.lock().unwrap().contains_key("ext-9") {
        assert!(Instant::now() < end, "ext-9 was never withdrawn");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(console.shown.lock().unwrap().len(), 39);
    let s = host.integration("contoso").unwrap().status().await.unwrap();
    assert_eq!((s.users, s.counters.get("presence.withdrawn").copied()), (39, Some(1)), "{s:?}");
    host.stop().await;
}
