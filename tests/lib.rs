//! Helpers shared by the end-to-end tests (`e2e/`): a scenario in a fresh temporary state
//! directory, and plain HTTP helpers. See `README.md` beside this file for the test classes.

use std::time::Duration;

pub use presence_demo::{Scenario, ScenarioOptions};

/// Generous bound for "eventually": the tests assert behaviour, not speed.
pub const EVENTUALLY: Duration = Duration::from_secs(60);

/// A scenario whose state directory lives as long as it.
pub struct TestScenario {
    /// The scenario.
    pub sc: Scenario,
    /// Its state directory.
    pub dir: tempfile::TempDir,
}

impl std::ops::Deref for TestScenario {
    type Target = Scenario;
    fn deref(&self) -> &Scenario {
        &self.sc
    }
}

impl std::ops::DerefMut for TestScenario {
    fn deref_mut(&mut self) -> &mut Scenario {
        &mut self.sc
    }
}

/// Starts a scenario with `users` users and `integration_users` integration users; `tweak`
/// adjusts the options first.
pub async fn start(users: usize, integration_users: usize, tweak: impl FnOnce(&mut ScenarioOptions)) -> TestScenario {
    // RUST_LOG=presence_host=debug shows the host's and the plugin's logs.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
    let dir = tempfile::tempdir().expect("temp dir");
    // The host creates its state directory (0700) itself.
    let mut opts = ScenarioOptions::new(users, integration_users, dir.path().join("state"));
    tweak(&mut opts);
    let sc = Scenario::start(opts).await.expect("scenario starts");
    TestScenario { sc, dir }
}

/// A standalone emulator with the demo tenant of `users` users and one integration user,
/// for tests that run the host from a config file: (emulator, its clock, seed, base URL).
pub async fn demo_emulator(
    users: usize,
) -> (graph_emulator::Emulator, std::sync::Arc<presence_demo::TestClock>, graph_emulator::TenantSeed, String) {
    use presence_demo::{DEMO_CLIENT, DEMO_SECRET, DEMO_TENANT};
    let clock = std::sync::Arc::new(presence_demo::TestClock::default());
    let emu = graph_emulator::Emulator::new(clock.clone());
    let seed = graph_emulator::TenantSeed::new(DEMO_TENANT, "contoso.example", DEMO_CLIENT, DEMO_SECRET, users, 1);
    emu.add_tenant(&seed);
    let base = emu.start().await.expect("emulator starts");
    (emu, clock, seed, base)
}

/// The host binary, built by `scripts/test` (`cargo build --release -p host-harness`) before
/// the tests run; no test invokes cargo. It lies beside this test binary's folder (`deps/`),
/// wherever the target directory is.
pub fn host_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let p = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lies in <target>/<profile>/deps")
        .join("host-harness");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release -p host-harness` first (scripts/test does)",
        p.display()
    );
    p
}

/// The admin token of the hosts [`write_host_config`] configures (in `admin-token` beside the
/// config).
pub const E2E_ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef";

/// Writes `dir/host.toml` for a host process on `port` (its admin listener on any loopback
/// port, its admin token in `dir/admin-token`, its KEK in `dir/kek`) against the emulator at `emu_url`, with one integration
/// `contoso` of the demo tenant whose switchboard is `dir/users.csv`, its integration users
/// `users` (username, password) and `extra` TOML lines; returns its path.
pub fn write_host_config(
    dir: &std::path::Path,
    port: u16,
    public_base_url: &str,
    emu_url: &str,
    users: &[(String, String)],
    extra: &str,
) -> std::path::PathBuf {
    use presence_demo::{DEMO_CLIENT, DEMO_SECRET, DEMO_TENANT};
    let users: Vec<String> =
        users.iter().map(|(u, p)| format!("{{ username = \"{u}\", password = \"{p}\" }}")).collect();
    let path = dir.join("host.toml");
    let token = dir.join("admin-token");
    if !token.exists() {
        presence_host::store::create_private_file(&token).expect("admin token file");
        std::fs::write(&token, E2E_ADMIN_TOKEN).expect("admin token written");
    }
    let kek = dir.join("kek");
    if !kek.exists() {
        presence_host::store::create_private_file(&kek).expect("kek file");
        let mut bytes = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut bytes);
        std::fs::write(&kek, presence_host::seal::Kek::encode(&bytes)).expect("kek written");
    }
    std::fs::write(
        &path,
        format!(
            r#"
[host]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:0"
admin_token_file = "admin-token"
kek_file = "kek"
public_base_url = "{public_base_url}"
state_dir = "state"
graph_base_url = "{emu_url}"
login_base_url = "{emu_url}"

[[integration]]
name = "contoso"
tenant_id = "{DEMO_TENANT}"
client_id = "{DEMO_CLIENT}"
client_secret = "{DEMO_SECRET}"
switchboard_csv = "users.csv"
users = [{}]
{extra}
"#,
            users.join(", ")
        ),
    )
    .expect("config written");
    path
}

/// Where a host process listens, as it prints it.
#[derive(Debug, Clone, Copy)]
pub struct HostAddrs {
    /// The public listener (Graph's webhooks).
    pub public: std::net::SocketAddr,
    /// The admin listener.
    pub admin: std::net::SocketAddr,
}

impl HostAddrs {
    /// `http://<admin address>`.
    pub fn admin_base(&self) -> String {
        format!("http://{}", self.admin)
    }
}

/// Runs the host binary with `config` (which may say port 0) as a child process (killable
/// with SIGKILL), and returns it with the addresses it listens on, as it prints them: no port
/// is chosen before the host binds it.
pub async fn spawn_host_on_any_port(config: &std::path::Path) -> (tokio::process::Child, HostAddrs) {
    spawn_host_with(config, &[], None).await
}

/// [`spawn_host_on_any_port`] with more arguments (`--log-format json`, say) and, with
/// `rust_log`, its log (stderr) piped to the caller at that filter.
pub async fn spawn_host_with(
    config: &std::path::Path,
    args: &[&str],
    rust_log: Option<&str>,
) -> (tokio::process::Child, HostAddrs) {
    spawn_host_env(config, args, rust_log, &[]).await
}

/// [`spawn_host_with`] with more environment variables (a database URL, say).
pub async fn spawn_host_env(
    config: &std::path::Path,
    args: &[&str],
    rust_log: Option<&str>,
    env: &[(&str, &str)],
) -> (tokio::process::Child, HostAddrs) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(host_binary())
        .envs(env.iter().copied())
        .args(args)
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", rust_log.unwrap_or("off"))
        .stdout(std::process::Stdio::piped())
        .stderr(if rust_log.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .kill_on_drop(true)
        .spawn()
        .expect("host starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addrs = tokio::time::timeout(EVENTUALLY, async {
        let mut admin = None;
        while let Some(line) = lines.next_line().await.expect("the host's stdout") {
            if let Some(a) = line.strip_prefix("admin on http://") {
                admin = Some(a.parse().expect("an address"));
            }
            if let Some(a) = line.strip_prefix("listening on http://") {
                return HostAddrs {
                    public: a.parse().expect("an address"),
                    admin: admin.expect("the admin address comes first"),
                };
            }
        }
        panic!("the host ended before it listened");
    })
    .await
    .expect("the host listens");
    (child, addrs)
}

/// An HTTP client that sends [`E2E_ADMIN_TOKEN`].
pub fn admin_client() -> reqwest::Client {
    presence_demo::admin_client(E2E_ADMIN_TOKEN)
}

/// GETs JSON from a host process's admin listener (`None` if it does not answer).
pub async fn admin_get(url: &str) -> Option<serde_json::Value> {
    let r = admin_client().get(url).timeout(Duration::from_secs(5)).send().await.ok()?;
    serde_json::from_str(&r.text().await.ok()?).ok()
}

/// POSTs `body` to `url` and returns status and body.
pub async fn post(url: &str, content_type: &str, body: Vec<u8>) -> (u16, String) {
    let r =
        reqwest::Client::new().post(url).header("content-type", content_type).body(body).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// POSTs `body` to `path` on a scenario's admin listener, with its token; returns status and
/// body.
pub async fn admin_post(sc: &Scenario, path: &str, content_type: &str, body: Vec<u8>) -> (u16, String) {
    let r = sc
        .admin_client()
        .post(sc.admin_url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// GETs JSON.
pub async fn get_json(url: &str) -> serde_json::Value {
    let text = reqwest::get(url).await.expect("request").text().await.expect("body");
    serde_json::from_str(&text).expect("json")
}

/// Makes the emulator answer the next `remaining` `method` requests whose path contains
/// `path` with `status` (and `Retry-After: retry_after` seconds).
pub fn inject_fault(sc: &Scenario, method: &str, path: &str, status: u16, retry_after: Option<u64>, remaining: u32) {
    sc.emulator.with_world(|w| {
        w.faults.push(graph_emulator::Fault {
            method: Some(method.into()),
            path_contains: path.into(),
            status,
            retry_after,
            remaining,
            after: 0,
        })
    });
}

/// A round-robin TCP load balancer on loopback in front of `backends` (see
/// [`presence_demo::round_robin`]); answers its address.
pub async fn round_robin(backends: Vec<std::net::SocketAddr>) -> std::net::SocketAddr {
    presence_demo::round_robin(backends).await.expect("a loopback port for the balancer")
}

/// Posts a line event (`connected`, `ended`, ...) of switchboard user `user` of integration
/// `name` to the admin listener at `admin_base`; answers the status and body.
pub async fn line_event(admin_base: &str, name: &str, user: &str, state: &str) -> (u16, String) {
    let r = admin_client()
        .post(format!("{admin_base}/switchboard/{name}/users/{user}/line-events"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"state": "{state}"}}"#))
        .send()
        .await
        .expect("the host answers");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// Posts a line event (`idle`, `ringing`, `connected`, `on-hold`, `ended`) for seed user `i`
/// to the `contoso` switchboard simulator; its answer.
pub async fn line(sc: &Scenario, i: usize, state: &str) -> (u16, String) {
    admin_post(
        sc,
        &format!("/switchboard/contoso/users/sb-{i:05}/line-events"),
        "application/json",
        format!("{{\"state\": \"{state}\"}}").into_bytes(),
    )
    .await
}

/// Seed user `i`'s Teams presence at the emulator (availability, activity).
pub fn truth_of(sc: &Scenario, i: usize) -> (String, String) {
    sc.emulator.truth(&sc.seed.tenant_id)[&sc.ms_user(i)].clone()
}

/// Waits until seed user `i`'s Teams presence is `want` (or [`EVENTUALLY`]); the last seen.
pub async fn wait_truth(sc: &Scenario, i: usize, want: (&str, &str)) -> (String, String) {
    let end = std::time::Instant::now() + EVENTUALLY;
    loop {
        let now = truth_of(sc, i);
        if (now.0.as_str(), now.1.as_str()) == want || std::time::Instant::now() > end {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
