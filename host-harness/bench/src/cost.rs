//! Cost per notification: the component against the same core compiled natively.

use std::sync::Arc;
use std::time::Duration;

use presence_demo::{Scenario, ScenarioOptions};

use crate::common::*;

/// The sync core natively, on the state a running integration stored: the other side of the
/// per-notification comparison. RSA unwrap with the same host key and library.
pub(crate) struct NativeEnv {
    stored: std::collections::HashMap<String, Vec<u8>>,
    key: presence_host::keys::NotificationKey,
    switchboard: Arc<switchboard_sim::Switchboard>,
    clock: Arc<presence_demo::TestClock>,
    /// CPU time of the RSA unwraps done so far (µs), timed on the calling thread.
    unwrap_us: f64,
}

impl presence_core::Env for NativeEnv {
    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
    fn random_bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| rand::random::<u8>()).collect()
    }
    fn unwrap_key(&mut self, cert: &str, wrapped: &[u8]) -> Result<Vec<u8>, presence_core::UnwrapError> {
        if cert != self.key.cert_id {
            return Err(presence_core::UnwrapError::UnknownCertificate(cert.into()));
        }
        let t0 = cpu_time::ThreadTime::now();
        let r = self.key.unwrap(wrapped);
        self.unwrap_us += t0.elapsed().as_secs_f64() * 1e6;
        r.ok_or(presence_core::UnwrapError::DecryptFailed)
    }
    fn switchboard_users_page(&mut self, start: usize, count: usize) -> Vec<presence_core::SwitchboardUser> {
        self.switchboard
            .users_page(start, count)
            .into_iter()
            .map(|u| presence_core::SwitchboardUser {
                id: u.id,
                display_name: u.name,
                emails: u.emails,
                line_number: u.line_number,
                active: u.active,
            })
            .collect()
    }
    fn switchboard_revision(&mut self) -> u64 {
        presence_host::Switchboard::revision(&*self.switchboard)
    }
    fn load(&mut self, key: &str) -> Option<Vec<u8>> {
        self.stored.get(key).cloned()
    }
    fn keys(&mut self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.stored.keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        keys.sort();
        keys
    }
}

/// The plugin settings of the scenario's integration, as the core takes them.
pub(crate) fn core_settings(s: presence_host::bindings::sync::Settings) -> presence_core::Settings {
    presence_core::Settings {
        name: s.name,
        tenant_id: s.tenant_id,
        client_id: s.client_id,
        client_secret: s.client_secret,
        integration_users: s
            .integration_users
            .into_iter()
            .map(|u| presence_core::IntegrationUser { username: u.username, password: u.password })
            .collect(),
        login_base_url: s.login_base_url,
        graph_base_url: s.graph_base_url,
        notification_url: s.notification_url,
        lifecycle_notification_url: s.lifecycle_notification_url,
        encryption_certificate: s.encryption_certificate,
        encryption_certificate_id: s.encryption_certificate_id,
        push_line_status: s.push_line_status,
        min_call_length_ms: s.min_call_length_ms,
        reconcile_interval_ms: s.reconcile_interval_ms,
        directory_delta_interval_ms: s.directory_delta_interval_ms,
        match_order: vec![],
        overrides: vec![],
    }
}

/// Cost per notification, component vs the same core compiled natively (µs each), and one
/// RSA unwrap alone. The component's figure is the guest call's CPU time plus that of the
/// notification's RSA unwrap, which the host does on its pool before the call. Both process the same `n` bodies in order, the component first. Both
/// count CPU time of the thread doing the work (wall time moved with what else the two cores
/// ran: the component figure varied from 297 to 442 µs between runs, the native one far less);
/// each figure is the median of the means of batches of [`COST_BATCH`].
pub(crate) async fn per_notification(n: usize) -> anyhow::Result<Cost> {
    let dir = state_dir("cost");
    let sc = Scenario::start(ScenarioOptions::new(650, 1, dir.clone())).await?;
    sc.wait_status(Duration::from_secs(60), |s| s.state == "ok").await;
    let sub = sc.emulator.subscriptions()[0].id.clone();
    const STATES: [(&str, &str); 3] = [("Available", "Available"), ("Busy", "InACall"), ("Away", "Away")];
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let (a, b) = STATES[i % 3];
            let item = sc.emulator.notification_for(&sub, &sc.ms_user(i % 650), a, b).expect("notification");
            sc.emulator.batch_body(&sub, vec![item]).to_string().into_bytes()
        })
        .collect();
    let handle = sc.host.as_ref().unwrap().integrations().values().next().unwrap().clone();
    let accepted = |s: &presence_host::StatusView| s.counters.get("notifications.accepted").copied().unwrap_or(0);
    let start = accepted(&sc.status().await);

    // The same core, natively, configured on what the integration stored.
    let name = sc.config.integrations[0].name.clone();
    use presence_host::StateStore as _;
    let db = presence_host::SqliteStore::open(&sc.config.host.state_dir)?;
    let mut stored = std::collections::HashMap::new();
    for k in db.keys(&name, "")? {
        if let Some(v) = db.get(&name, &k)? {
            stored.insert(k, v);
        }
    }
    let kek = &sc.config.host.kek;
    for (k, v) in stored.iter_mut() {
        *v = kek.open(&format!("kv/{name}/{k}"), v)?;
    }
    let key = presence_host::keys::NotificationKey::load_or_create(&db, &name, kek)?;
    let token = presence_host::integration::webhook_token(kek, &name);
    let settings =
        core_settings(presence_host::host::settings_for(&sc.config.host, &sc.config.integrations[0], &key, &token));
    let mut env =
        NativeEnv { stored, key, switchboard: sc.switchboard.clone(), clock: sc.clock.clone(), unwrap_us: 0.0 };
    let mut core = presence_core::Core::new();
    core.configure(&mut env, settings).map_err(|e| anyhow::anyhow!("native configure: {e:?}"))?;
    while !core.ready() {
        core.take_effects();
        core.tick(&mut env);
    }
    core.take_effects();
    let native_sb = switchboard_sim::Switchboard::new(sc.switchboard.users());
    let count = |core: &presence_core::Core, env: &NativeEnv| {
        core.status(env).counters.iter().find(|(k, _)| k == "notifications.accepted").map_or(0, |(_, v)| *v)
    };
    let native_before = count(&core, &env);
    // The notification guest calls so far and their CPU time (the guest call alone: the
    // inbox's write and delete are the host's, outside it).
    // The host unwraps each notification's key on its pool, ahead of the guest call
    // (presence_host::unwrap): that CPU time is counted in too, wherever it ran.
    let totals = |s: &presence_host::StatusView| {
        let calls = s.calls.get("inbox").copied().unwrap_or(0);
        // Keys the actor reached before the pool did are unwrapped in the guest call: that
        // RSA time is taken out of the guest call's and counted with the unwraps.
        let in_call = s.counters.get("unwrap.in-call-cpu-us").copied().unwrap_or(0);
        let guest = s.total_calls_cpu_us.get("inbox").copied().unwrap_or(0).saturating_sub(in_call);
        let unwraps = s.counters.get("unwrap.cpu-us").copied().unwrap_or(0) + in_call;
        (calls, guest as f64, unwraps as f64)
    };
    let (mut components, mut guests, mut unwraps) = (Vec::new(), Vec::new(), Vec::new());
    let (mut natives, mut native_unwraps) = (Vec::new(), Vec::new());
    for batch in bodies.chunks(COST_BATCH) {
        // Through the inbox, one batch after the other: the mean `inbox` guest call and
        // unwrap are the figure.
        let (calls0, g0, u0) = totals(&sc.status().await);
        // The batch goes into the inbox first, then the actor takes it: guest calls back to
        // back, as under load and as the native loop runs. Waited for without a guest call and
        // without spinning (the inbox is empty again).
        for b in batch {
            handle.accept("notifications", b.clone()).await?;
        }
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while handle.inbox_size().0 > 0 {
            anyhow::ensure!(std::time::Instant::now() < end, "the batch was not processed");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (calls1, g1, u1) = totals(&sc.status().await);
        anyhow::ensure!(calls1 - calls0 == batch.len() as u64, "{} inbox calls for {}", calls1 - calls0, batch.len());
        let k = batch.len() as f64;
        components.push((g1 - g0 + u1 - u0) / k);
        guests.push((g1 - g0) / k);
        unwraps.push((u1 - u0) / k);
    }
    for batch in bodies.chunks(COST_BATCH) {
        // CPU time like the component's: this loop runs on this thread, without yielding.
        let (t0, u0) = (cpu_time::ThreadTime::now(), env.unwrap_us);
        for b in batch {
            core.on_notification(&mut env, b);
            for e in core.take_effects() {
                match e {
                    presence_core::Effect::Publish(u) => native_sb.publish(
                        &u.user_id,
                        switchboard_sim::Shown {
                            availability: u.presence.availability,
                            activity: u.presence.activity,
                            origin: "teams".into(),
                            microsoft_user_id: u.microsoft_user_id,
                            observed_at_ms: u.observed_at_ms,
                            updates: 0,
                        },
                    ),
                    presence_core::Effect::Store { key, value: Some(v) } => {
                        env.stored.insert(key, v);
                    }
                    _ => {}
                }
            }
        }
        natives.push(t0.elapsed().as_secs_f64() * 1e6 / batch.len() as f64);
        native_unwraps.push((env.unwrap_us - u0) / batch.len() as f64);
    }
    let s = sc.status().await;
    anyhow::ensure!(accepted(&s) == start + n as u64, "the component took {} of {n}", accepted(&s) - start);
    let taken = count(&core, &env) - native_before;
    anyhow::ensure!(taken == n as u64, "the native core accepted {taken} of {n}");
    stop(sc, dir).await;
    let rsa = 1e6 / rsa_decrypts_per_second(n.min(2000));
    Ok(Cost {
        component: median(components),
        guest: median(guests),
        unwrap: median(unwraps),
        native: median(natives),
        native_unwrap: median(native_unwraps),
        rsa,
    })
}

/// One run of the cost-per-notification figure, µs per notification (medians of batches).
pub(crate) struct Cost {
    /// The guest call and the notification's unwrap on the host's pool.
    pub component: f64,
    /// The guest call alone.
    pub guest: f64,
    /// The unwrap alone.
    pub unwrap: f64,
    /// The same core, natively, RSA included.
    pub native: f64,
    /// The native core's own unwraps (part of `native`), timed inside its loop.
    pub native_unwrap: f64,
    /// One RSA-OAEP-2048 unwrap alone, measured after the run.
    pub rsa: f64,
}

/// Notifications per batch of the cost-per-notification figure.
pub(crate) const COST_BATCH: usize = 100;
