//! Memory: the host process's RSS and each instance's linear memory.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

/// What a host process holds once every user of every integration is synced.
pub(crate) struct MemoryFigures {
    /// Resident set of the host process, now and at its peak, in bytes.
    pub(crate) rss: u64,
    pub(crate) peak_rss: u64,
    /// Linear memory of each instance, in bytes.
    pub(crate) linear: Vec<u64>,
    /// With one integration: its linear memory after a full resync ("Sync now"; the daily
    /// one is the same) that found 1 % of the users changed was done and the mapping
    /// rebuilt for it, in bytes.
    pub(crate) after_resync: Option<u64>,
    /// Seconds from starting the process until every user was synced.
    pub(crate) sync_secs: f64,
}

/// `VmRSS` and `VmHWM` of a process, in bytes.
pub(crate) fn rss_of(pid: u32) -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = text.lines().find(|l| l.starts_with(name)).ok_or_else(|| anyhow::anyhow!("no {name}"))?;
        let kib: u64 = line.split_whitespace().nth(1).unwrap_or("").parse()?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Memory of the host alone: this binary's `run` as its own process (the switchboard
/// simulator of each integration in it, read from a CSV), against the emulator in this
/// process, with `integrations` tenants of `users` users each. Measured once every user is
/// synced, after a 2 s pause.
pub(crate) async fn memory(integrations: usize, users: usize) -> anyhow::Result<MemoryFigures> {
    use graph_emulator::{Emulator, TenantSeed};
    let dir = state_dir("memory");
    std::fs::create_dir_all(&dir)?;
    let emulator = Emulator::new(Arc::new(graph_emulator::SystemClock));
    let mut config = String::new();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let token = presence_demo::random_token();
    let seeds: Vec<TenantSeed> = (0..integrations)
        .map(|k| {
            TenantSeed::new(
                &format!("{k:08x}-0000-4000-8000-00000000be7c"),
                &format!("tenant{k}.example"),
                &format!("{k:08x}-1111-4000-8000-00000000be7c"),
                presence_demo::DEMO_SECRET,
                users,
                users.div_ceil(650),
            )
        })
        .collect();
    for seed in &seeds {
        emulator.add_tenant(seed);
    }
    let url = emulator.start().await?;
    writeln!(
        config,
        "[host]\nlisten = \"{addr}\"\nadmin_listen = \"{admin}\"\nadmin_token_env = \"TPS_BENCH_ADMIN_TOKEN\"\n\
         kek_env = \"TPS_BENCH_KEK\"\npublic_base_url = \"http://{addr}\"\nstate_dir = \"{}\"\n\
         graph_base_url = \"{url}\"\nlogin_base_url = \"{url}\"\nplugin_cache_dir = \"{}\"\n",
        dir.join("state").display(),
        dir.join("cache").display()
    )?;
    for (k, seed) in seeds.iter().enumerate() {
        let csv = dir.join(format!("switchboard-{k}.csv"));
        switchboard_sim::Switchboard::write_csv(&csv, &presence_demo::switchboard_users(seed, users))?;
        writeln!(
            config,
            "[[integration]]\nname = \"tenant{k}\"\ntenant_id = \"{}\"\nclient_id = \"{}\"\n\
             client_secret_env = \"TPS_BENCH_SECRET\"\nswitchboard_csv = \"{}\"\npush_line_status = true",
            seed.tenant_id,
            seed.client_id,
            csv.display()
        )?;
        for n in 0..seed.integration_users {
            writeln!(
                config,
                "[[integration.users]]\nusername = \"{}\"\npassword_env = \"TPS_BENCH_PASSWORD\"",
                seed.integration_user(n)
            )?;
        }
    }
    // A host restarts with its releases in the compile cache: warm it, so that the figures
    // are the running host's, not Cranelift's.
    presence_host::store::secure_dir(&dir.join("cache"))?;
    presence_host::engine::Runtime::new(Default::default(), Some(dir.join("cache")))?
        .load(presence_demo::PLUGIN_WASM)?;
    let config_path = dir.join("host.toml");
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(dir.join("host.log"))?;
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .env("TPS_BENCH_SECRET", presence_demo::DEMO_SECRET)
        .env("TPS_BENCH_PASSWORD", &seeds[0].integration_password)
        .env("TPS_BENCH_ADMIN_TOKEN", &token)
        .env("TPS_BENCH_KEK", presence_host::seal::Kek::encode(&[5; 32]))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("the host process ended at once"))?;
    let client = presence_demo::admin_client(&token);
    let synced = |v: &serde_json::Value| -> bool {
        let all = v["integrations"].as_array().cloned().unwrap_or_default();
        all.len() == integrations
            && all.iter().all(|i| {
                let subs = i["subscriptions"].as_array().cloned().unwrap_or_default();
                i["state"] == "ok"
                    && i["users"].as_u64() == Some(users as u64)
                    && subs.iter().map(|s| s["users_covered"].as_u64().unwrap_or(0)).sum::<u64>() == users as u64
                    && subs.iter().all(|s| s["subscription_id"].is_string() && s["last_reconcile_ms"].is_u64())
            })
    };
    let deadline = Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(exit) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("host.log")).unwrap_or_default();
            anyhow::bail!("the host process ended ({exit}): {}", log.lines().last().unwrap_or(""));
        }
        let got = client.get(format!("http://{admin}/status")).send().await;
        if let Ok(r) = got
            && let Ok(text) = r.text().await
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && synced(&v)
        {
            break v;
        }
        anyhow::ensure!(Instant::now() < deadline, "the host never synced every user");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sync_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, peak_rss) = rss_of(pid)?;
    let linear = status["integrations"]
        .as_array()
        .map(|a| a.iter().map(|i| i["linear_memory_bytes"].as_u64().unwrap_or(0)).collect())
        .unwrap_or_default();
    // A full resync reads the whole directory again, and a change matches every user again
    // while the mapping in effect stays (then changed in place): the instance's other peak. 1 % of the users swap their
    // addresses in pairs first (every user stays mapped, 1 % to another switchboard user), so
    // that the mapping is rebuilt (the full resync or a delta round before it sees them).
    let after_resync = if integrations == 1 {
        let counter = |v: &serde_json::Value, name: &str| v["integrations"][0]["counters"][name].as_u64().unwrap_or(0);
        let builds = counter(&status, "mapping.builds");
        emulator.with_tenant(&seeds[0].tenant_id, |t| {
            for k in 0..users / 200 {
                let (a, b) = (t.users[2 * k].clone(), t.users[2 * k + 1].clone());
                if let (Some(ma), Some(mb)) = (a.mail, b.mail) {
                    t.set_mail(&a.id, &mb);
                    t.set_mail(&b.id, &ma);
                }
            }
        });
        let r = client.post(format!("http://{admin}/integrations/tenant0/sync-now")).send().await?;
        anyhow::ensure!(r.status().is_success(), "sync-now: {}", r.status());
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let got = client.get(format!("http://{admin}/status")).send().await;
            if let Ok(r) = got
                && let Ok(text) = r.text().await
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && counter(&v, "directory.full-resyncs") >= 2
                && counter(&v, "mapping.builds") > builds
                && synced(&v)
            {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the full resync never completed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let text = client.get(format!("http://{admin}/status")).send().await?.text().await?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        v["integrations"][0]["linear_memory_bytes"].as_u64()
    } else {
        None
    };
    child.kill().await?;
    emulator.stop();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(MemoryFigures { rss, peak_rss, linear, after_resync, sync_secs })
}
