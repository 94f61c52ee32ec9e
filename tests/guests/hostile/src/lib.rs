//! # hostile-guest
//!
//! A component of the real `teams-presence:plugin` world that misbehaves on purpose, for the
//! sandbox tests. It is built like the plugin (wasm32-wasip2, wit-bindgen) by the
//! `test-components` crate's build script. What it does is chosen by the integration's name, which must contain one mode:
//!
//! | mode | what it does on every `tick` |
//! |---|---|
//! | `infinite-loop` | spins forever |
//! | `memory-bomb` | allocates until memory runs out |
//! | `panic` | panics |
//! | `disallowed-host` | starts requests to origins off its allow-list and over plain http |
//! | `oversized` | hands the host oversized values, one per tick in turn: a log message, a state value, a request body, a presence field |
//! | `log-flood` | emits log records as fast as it can |
//! | `escape` | (on `configure`) tries the filesystem, environment, sockets and stdin |
//!
//! With no mode in the name, `configure` fails: the hot-swap tests use that as "a release that
//! does not configure". Its `status` reports what it observed as counters, so tests can check
//! what each attempt got.

#![allow(missing_docs)] // generated bindings
#![allow(unsafe_code)] // generated bindings

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hint::black_box;

wit_bindgen::generate!({ path: "../../../wit", world: "presence-sync" });

use exports::teams_presence::plugin::{absence, admin, policy, sync, users};
use teams_presence::plugin::{log, outbound_http, presence, state, status, types};

const MODES: [&str; 7] =
    ["infinite-loop", "memory-bomb", "panic", "disallowed-host", "oversized", "log-flood", "escape"];

thread_local! {
    static MODE: RefCell<String> = const { RefCell::new(String::new()) };
    static SEEN: RefCell<BTreeMap<String, u64>> = const { RefCell::new(BTreeMap::new()) };
    static GRAPH: RefCell<String> = const { RefCell::new(String::new()) };
}

fn mode() -> String {
    MODE.with(|m| m.borrow().clone())
}

fn saw(what: &str, n: u64) {
    SEEN.with(|s| *s.borrow_mut().entry(what.to_string()).or_default() += n);
}

fn http_outcome(r: Result<(), outbound_http::HttpError>) -> &'static str {
    match r {
        Ok(()) => "started",
        Err(outbound_http::HttpError::NotAllowed(_)) => "not-allowed",
        Err(outbound_http::HttpError::TooLarge(_)) => "too-large",
        Err(outbound_http::HttpError::InvalidRequest(_)) => "invalid-request",
        Err(_) => "other-error",
    }
}

fn request(url: &str, body: Vec<u8>) -> outbound_http::Request {
    outbound_http::Request { method: "POST".into(), url: url.into(), headers: vec![], body }
}

/// Tries every way out of the sandbox that Rust std offers on wasm32-wasip2.
fn try_escape(graph_base_url: &str) {
    saw("escape.fs-read-ok", std::fs::read("/etc/passwd").is_ok() as u64);
    saw("escape.fs-list-ok", std::fs::read_dir("/").is_ok() as u64);
    saw("escape.fs-write-ok", std::fs::write("/tmp/hostile-guest", b"x").is_ok() as u64);
    saw("escape.env-vars", std::env::vars().count() as u64);
    saw("escape.args", std::env::args().count() as u64);
    let authority = graph_base_url.split("://").nth(1).unwrap_or("").split('/').next().unwrap_or("");
    saw("escape.socket-ok", std::net::TcpStream::connect(authority).is_ok() as u64);
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut std::io::stdin(), &mut buf).unwrap_or(0);
    saw("escape.stdin-bytes", n as u64);
    saw("escape.tried", 1);
}

struct Hostile;

impl sync::Guest for Hostile {
    fn configure(settings: sync::Settings) -> Result<(), sync::ConfigError> {
        let Some(mode) = MODES.iter().find(|m| settings.name.contains(*m)) else {
            return Err(sync::ConfigError::Invalid(format!(
                "name: hostile-guest needs one of {MODES:?} in the integration name, got {:?}",
                settings.name
            )));
        };
        MODE.with(|m| *m.borrow_mut() = mode.to_string());
        GRAPH.with(|g| *g.borrow_mut() = settings.graph_base_url.clone());
        if *mode == "escape" {
            try_escape(&settings.graph_base_url);
        }
        Ok(())
    }

    fn on_notification(_body: Vec<u8>) -> sync::NotificationOutcome {
        saw("notifications", 1);
        sync::NotificationOutcome::Taken
    }

    fn on_http_response(_id: u64, _outcome: Result<outbound_http::Response, outbound_http::HttpError>) {}

    fn on_line_event(_event: teams_presence::plugin::presence::LineEvent) -> Result<(), sync::LineEventError> {
        Ok(())
    }

    fn tick() {
        saw("ticks", 1);
        match mode().as_str() {
            "infinite-loop" => {
                let mut i = 0u64;
                loop {
                    i = black_box(i.wrapping_add(1));
                }
            }
            "memory-bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![7u8; 16 << 20]));
                }
            }
            "panic" => panic!("hostile-guest: a deliberate panic in tick"),
            "disallowed-host" => {
                let graph = GRAPH.with(|g| g.borrow().clone());
                let plain = graph.replace("https://", "http://").replace("127.0.0.1", "localhost.example");
                for url in ["https://evil.example.com/steal", "http://203.0.113.7/", plain.as_str()] {
                    saw(&format!("http.{}", http_outcome(outbound_http::start(1, &request(url, vec![])))), 1);
                }
            }
            "oversized" => {
                // One oversized value per tick, in turn: a 1 MiB log message, and over the
                // host's caps of 32 MiB per state value, 16 MiB per request body and 256 bytes
                // per presence field.
                let graph = GRAPH.with(|g| g.borrow().clone());
                let turn = SEEN.with(|s| s.borrow().get("ticks").copied().unwrap_or(0)) % 4;
                match turn {
                    1 => {
                        let too_large =
                            matches!(state::set("hoard", &vec![b'x'; 33 << 20]), Err(state::StateError::TooLarge(_)));
                        saw("state.too-large", too_large as u64);
                    }
                    3 => {
                        let update = presence::PresenceUpdate {
                            user_id: "u".repeat(1024),
                            microsoft_user_id: "m".into(),
                            presence: types::TeamsPresence { availability: "Busy".into(), activity: "InACall".into() },
                            origin: types::PresenceOrigin::Teams,
                            observed_at_ms: 0,
                        };
                        let too_long = matches!(presence::publish(&update), Err(presence::PublishError::TooLong(f)) if f == "user-id");
                        saw("publish.too-long", too_long as u64);
                    }
                    2 => {
                        let r = outbound_http::start(2, &request(&format!("{graph}/v1.0/users"), vec![b'x'; 17 << 20]));
                        saw(&format!("http.{}", http_outcome(r)), 1);
                    }
                    _ => log::emit(log::Level::Info, &"x".repeat(1 << 20), &[]),
                }
            }
            "log-flood" => {
                for i in 0..u64::MAX {
                    log::emit(log::Level::Warn, "flood", &[("i".into(), i.to_string())]);
                }
            }
            _ => {}
        }
    }

    fn set_overrides(_overrides: Vec<sync::MappingOverride>) -> Result<(), sync::OverrideError> {
        Err(sync::OverrideError::InvalidEntry(sync::OverrideProblem {
            index: 0,
            reason: "hostile-guest keeps no overrides".into(),
        }))
    }

    fn get_overrides() -> Vec<sync::MappingOverride> {
        vec![]
    }

    fn sync_now() {}

    fn status() -> status::IntegrationStatus {
        status::IntegrationStatus {
            health: status::Health::Ok,
            mapped_users: 0,
            microsoft_users: 0,
            switchboard_users: 0,
            uncovered_users: 0,
            integration_users_needed: 0,
            subscriptions: vec![],
            conflicts: vec![],
            last_directory_refresh_ms: None,
            last_notification_ms: None,
            last_reconcile_ms: None,
            counters: SEEN.with(|s| s.borrow().iter().map(|(k, v)| (k.clone(), *v)).collect()),
        }
    }

    fn plugin_version() -> String {
        format!("hostile-guest-{}", mode())
    }
}

impl admin::Guest for Hostile {
    fn retire() -> admin::RetireProgress {
        admin::RetireProgress { subscriptions: 0, sessions: 0, users_withdrawn: 0, problem: None }
    }
}

impl users::Guest for Hostile {
    fn page(_: users::UsersQuery) -> users::UsersPage {
        users::UsersPage { total: 0, rows: vec![] }
    }
    fn counts() -> users::MappingCounts {
        users::MappingCounts {
            switchboard_users: 0,
            mapped: 0,
            by_override: 0,
            by_mail: 0,
            by_alias: 0,
            by_upn: 0,
            no_address: 0,
            no_match: 0,
            conflict: 0,
            unresolved_override: 0,
            directory_not_read: 0,
            uncovered: 0,
            passive: 0,
        }
    }
}

impl policy::Guest for Hostile {
    fn set_policy(_: policy::SyncPolicy) -> Result<(), policy::PolicyError> {
        Ok(())
    }
    fn get_policy() -> policy::SyncPolicy {
        policy::SyncPolicy {
            groups: vec![],
            excluded_users: vec![],
            teams_to_switchboard_only: vec![],
            call_replaces: vec![],
            do_not_disturb_in_call: false,
            working_hours: None,
        }
    }
    fn dry_run(_: policy::SyncPolicy) -> Result<Vec<policy::DryRunEntry>, policy::PolicyError> {
        Ok(vec![])
    }
    fn status() -> policy::PolicyStatus {
        policy::PolicyStatus {
            in_scope: 0,
            outside_groups: 0,
            excluded: 0,
            teams_to_switchboard_only: 0,
            group_members: None,
            groups_read_at_ms: None,
            groups_problem: None,
            within_working_hours: true,
            unknown_entries: vec![],
            polling: policy::PollingStatus { users: 0, interval_ms: 0, rounds: 0, last_round_ms: None, problem: None },
        }
    }
}

impl absence::Guest for Hostile {
    fn on_absence(_: absence::AbsenceEvent) -> Result<(), absence::AbsenceError> {
        Ok(())
    }
}

export!(Hostile);
