//! `host-harness`: runs the host with a config (`run`, and `sync-now` and `swap` against a
//! running one); for development, the demo, the emulator alone and the benchmarks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use graph_emulator::{Emulator, TenantSeed};
use presence_host::{Backends, Config, Host};

/// mimalloc, not glibc's malloc: the host allocates and frees small buffers for every request
/// and guest call from several threads, where glibc's arenas spent measurably more (measured
/// with `bench --only ingest`: 1,509-1,543 notifications a second against 1,412-1,493 with
/// glibc, on a 2-core VM).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "teams-presence-sync reference host")]
struct Cli {
    /// Log records as text (for people) or JSON (one object a line, for a log collector).
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the host with real networking, as configured in FILE.
    Run {
        /// The TOML config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Runs the demo on the embedded emulator: a seeded tenant, the switchboard simulator and
    /// live presence changes.
    Demo {
        /// Microsoft users (each with a switchboard user).
        #[arg(long, default_value_t = 1353)]
        users: usize,
        /// Integration users.
        #[arg(long, default_value_t = 3)]
        integration_users: usize,
        /// Stop after this many seconds (runs until Ctrl-C otherwise).
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// "Sync now": asks a running host to re-read an integration's directory at once.
    SyncNow {
        /// The host's admin base URL (its `admin_listen` address).
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        host: String,
        /// The integration's name.
        #[arg(long)]
        integration: String,
        /// The environment variable holding the admin token (the host's `admin_token_env`).
        #[arg(long, default_value = "TPS_ADMIN_TOKEN")]
        token_env: String,
    },
    /// Signs in an integration user who must use multi-factor authentication, with the device
    /// code flow: prints the code and where to enter it, then waits until the user signed in
    /// (the host keeps the refresh token, sealed) or it failed.
    DeviceCode {
        /// The host's admin base URL (its `admin_listen` address).
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        host: String,
        /// The integration's name.
        #[arg(long)]
        integration: String,
        /// The integration user (user principal name).
        #[arg(long)]
        user: String,
        /// The environment variable holding the admin token (the host's `admin_token_env`).
        #[arg(long, default_value = "TPS_ADMIN_TOKEN")]
        token_env: String,
    },
    /// Hot swap: sends a plugin component to a running host, which checks it and switches
    /// every integration (or one) to it; prints each integration's report.
    Swap {
        /// The host's admin base URL (its `admin_listen` address).
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        host: String,
        /// The component (`.wasm`).
        #[arg(long)]
        plugin: PathBuf,
        /// Only this integration.
        #[arg(long)]
        integration: Option<String>,
        /// The environment variable holding the admin token (the host's `admin_token_env`).
        #[arg(long, default_value = "TPS_ADMIN_TOKEN")]
        token_env: String,
    },
    /// Runs the benchmark suite and writes BENCHMARKS.md.
    Bench {
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: std::path::PathBuf,
        /// A tiny smoke run (CI): proves the suite works, measures nothing worth keeping.
        #[arg(long)]
        smoke: bool,
        /// Only these sections (comma-separated): sync, activation, directory, latency, flood,
        /// ingest, line, load, swap, cost, steady, polling, memory, fleet. The report then holds
        /// only them.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Runs the Graph/Entra emulator alone, for manual testing.
    Emulator {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
        /// Users in the seeded tenant.
        #[arg(long, default_value_t = 1353)]
        users: usize,
        /// Integration users in the seeded tenant.
        #[arg(long, default_value_t = 3)]
        integration_users: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo and the benchmarks print their own account; the host logs only problems there.
    let quiet = matches!(cli.cmd, Cmd::Demo { .. } | Cmd::Bench { .. });
    let default_filter = if quiet { "warn" } else { "warn,presence_host=info,host_harness=info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    match cli.log_format {
        // Logs on stderr: stdout carries what `run` prints for whoever started it (addresses).
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init(),
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init(),
    }
    match cli.cmd {
        Cmd::Run { config } => {
            let cfg = Config::load(&config)?;
            let listener = tokio::net::TcpListener::bind(&cfg.host.listen)
                .await
                .with_context(|| format!("listening on {}", cfg.host.listen))?;
            let admin = tokio::net::TcpListener::bind(&cfg.host.admin_listen)
                .await
                .with_context(|| format!("listening on {} (admin)", cfg.host.admin_listen))?;
            // The switchboards are the simulator's, from each integration's `switchboard_csv`.
            // Integrations created at run time get theirs the same way (an empty one if no CSV).
            let sims = switchboard_sim::from_config(&cfg)?;
            let mut host =
                Host::start(&cfg, presence_plugin_wasm::PLUGIN_WASM, Backends::defaults(&cfg, sims.clone())?).await?;
            let routes = switchboard_sim::routes(sims, host.registry.clone());
            host.serve(listener, admin, routes)?;
            let (addr, admin) = (host.addr(), host.admin_addr());
            tracing::info!(%addr, %admin, integrations = host.integrations().len(), "host running");
            // For whoever started it with port 0: where it listens, on stdout (the admin
            // listener first).
            println!("admin on http://{admin}");
            println!("listening on http://{addr}");
            let signal = stop_signal().await?;
            tracing::info!(signal, "stopping");
            host.stop().await;
            tracing::info!("stopped");
        }
        Cmd::Demo { users, integration_users, seconds } => {
            presence_demo::run(users, integration_users, seconds.map(Duration::from_secs)).await?;
        }
        Cmd::SyncNow { host, integration, token_env } => {
            let token =
                std::env::var(&token_env).with_context(|| format!("${token_env} (the admin token) is not set"))?;
            let url = format!("{}/integrations/{integration}/sync-now", host.trim_end_matches('/'));
            let r = reqwest::Client::new()
                .post(&url)
                .bearer_auth(token)
                .send()
                .await
                .with_context(|| format!("POST {url}"))?;
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            anyhow::ensure!(status.is_success(), "{url}: {status}: {text}");
            println!("{integration}: {text}");
        }
        Cmd::DeviceCode { host, integration, user, token_env } => {
            let token =
                std::env::var(&token_env).with_context(|| format!("${token_env} (the admin token) is not set"))?;
            let url = format!("{}/integrations/{integration}/users/{user}/device-code", host.trim_end_matches('/'));
            let client = reqwest::Client::new();
            let r = client.post(&url).bearer_auth(&token).send().await.with_context(|| format!("POST {url}"))?;
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            anyhow::ensure!(status.is_success(), "{url}: {status}: {text}");
            let v: serde_json::Value = serde_json::from_str(&text)?;
            println!("{}", v["message"].as_str().unwrap_or(&text));
            // The host polls Entra; this asks the host how it stands.
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let r = client.get(&url).bearer_auth(&token).send().await.with_context(|| format!("GET {url}"))?;
                let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap_or_default())?;
                match v["state"].as_str() {
                    Some("pending") => {}
                    Some("signed-in") => {
                        println!("{user}: signed in; the integration uses it now");
                        break;
                    }
                    _ => anyhow::bail!("{user}: the sign-in failed: {} {}", v["code"], v["detail"]),
                }
            }
        }
        Cmd::Swap { host, plugin, integration, token_env } => {
            let wasm = std::fs::read(&plugin).with_context(|| format!("reading {}", plugin.display()))?;
            let token =
                std::env::var(&token_env).with_context(|| format!("${token_env} (the admin token) is not set"))?;
            let mut url = url::Url::parse(&format!("{}/admin/plugin", host.trim_end_matches('/')))
                .with_context(|| format!("--host {host}"))?;
            if let Some(name) = &integration {
                url.query_pairs_mut().append_pair("integration", name);
            }
            // The token first: a host refuses a wrong one before it reads the (large) body and
            // closes the connection, which a client still sending sees as a broken pipe.
            let client = reqwest::Client::new();
            let probe = format!("{}/healthz", host.trim_end_matches('/'));
            let r = client.get(&probe).bearer_auth(&token).send().await.with_context(|| format!("GET {probe}"))?;
            anyhow::ensure!(
                r.status().is_success(),
                "{probe}: {}: the admin token in ${token_env} is not the host's",
                r.status()
            );
            let r = client
                .put(url.clone())
                .bearer_auth(token)
                .body(wasm)
                .send()
                .await
                .with_context(|| format!("PUT {url}"))?;
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            println!("{text}");
            anyhow::ensure!(status.is_success(), "swap failed: {status}");
        }
        Cmd::Bench { out, smoke, only } => {
            if let Some(bad) = only.iter().find(|s| !presence_bench::SECTIONS.contains(&s.as_str())) {
                anyhow::bail!("--only: no section {bad:?}; the sections are {}", presence_bench::SECTIONS.join(", "));
            }
            let mut opts =
                if smoke { presence_bench::BenchOptions::smoke() } else { presence_bench::BenchOptions::full() };
            opts.only = only.clone();
            let mut command = "cargo run --release -p host-harness -- bench".to_string();
            if smoke {
                command += " --smoke";
            }
            if !only.is_empty() {
                command += &format!(" --only {}", only.join(","));
            }
            if smoke || !only.is_empty() {
                command += &format!(" --out {}", out.display());
            }
            let md = presence_bench::run(&opts, &command).await?;
            std::fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
            println!("{md}");
        }
        Cmd::Emulator { listen, users, integration_users } => {
            let emu = Emulator::new(Arc::new(graph_emulator::SystemClock));
            let seed = TenantSeed::new(
                presence_demo::DEMO_TENANT,
                "contoso.example",
                presence_demo::DEMO_CLIENT,
                presence_demo::DEMO_SECRET,
                users,
                integration_users,
            );
            emu.add_tenant(&seed);
            let base = emu.serve(tokio::net::TcpListener::bind(&listen).await?).await?;
            println!("Graph/Entra emulator on {base}");
            println!("  tenant {} client {} secret {}", seed.tenant_id, seed.client_id, seed.client_secret);
            for n in 0..integration_users {
                println!("  integration user {} password {}", seed.integration_user(n), seed.integration_password);
            }
            println!("  control API: {base}/_emulator/stats, {base}/_emulator/subscriptions");
            tokio::signal::ctrl_c().await?;
        }
    }
    Ok(())
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM (what a service manager or `docker stop` sends);
/// returns which.
async fn stop_signal() -> anyhow::Result<&'static str> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT").map_err(Into::into),
        _ = term.recv() => Ok("SIGTERM"),
    }
}
