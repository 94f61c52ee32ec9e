//! A component built against `teams-presence:plugin@3.0.0`, the minor version before the
//! host's: a host of a later 3.x must load it (its imports are a subset of what the host
//! provides, its export is semver-compatible). It synchronises nothing; on every `tick` it
//! calls the 3.0.0 imports it would need (`directory.list-users-page`, `clock.now-ms`) and its
//! `status` counts what they gave.

#![allow(missing_docs)] // generated bindings
#![allow(unsafe_code)] // generated bindings

use std::cell::Cell;

wit_bindgen::generate!({ path: "wit", world: "presence-sync" });

use exports::teams_presence::plugin::sync;
use teams_presence::plugin::{clock, directory, outbound_http, status};

thread_local! {
    static TICKS: Cell<u64> = const { Cell::new(0) };
    static USERS_SEEN: Cell<u64> = const { Cell::new(0) };
}

struct Previous;

impl sync::Guest for Previous {
    fn configure(_settings: sync::Settings) -> Result<(), sync::ConfigError> {
        Ok(())
    }
    fn on_notification(_body: Vec<u8>) -> sync::NotificationOutcome {
        sync::NotificationOutcome::Taken
    }
    fn on_http_response(_id: u64, _outcome: Result<outbound_http::Response, outbound_http::HttpError>) {}
    fn on_line_event(_event: teams_presence::plugin::presence::LineEvent) -> Result<(), sync::LineEventError> {
        Err(sync::LineEventError::PushDisabled)
    }
    fn tick() {
        if clock::now_ms() > 0 {
            TICKS.set(TICKS.get() + 1);
        }
        USERS_SEEN.set(directory::list_users_page(0, 1000).len() as u64);
    }
    fn set_overrides(_overrides: Vec<sync::MappingOverride>) -> Result<(), sync::OverrideError> {
        Ok(())
    }
    fn get_overrides() -> Vec<sync::MappingOverride> {
        vec![]
    }
    fn sync_now() {}
    fn status() -> status::IntegrationStatus {
        status::IntegrationStatus {
            health: status::Health::Starting,
            mapped_users: 0,
            microsoft_users: 0,
            switchboard_users: USERS_SEEN.get() as u32,
            uncovered_users: 0,
            integration_users_needed: 0,
            subscriptions: vec![],
            conflicts: vec![],
            last_directory_refresh_ms: None,
            last_notification_ms: None,
            last_reconcile_ms: None,
            counters: vec![("guest.ticks".into(), TICKS.get())],
        }
    }
    fn plugin_version() -> String {
        "wit-3.0-guest".into()
    }
}

export!(Previous);
