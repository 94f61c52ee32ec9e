//! # presence-plugin
//!
//! The teams-presence-sync WebAssembly component: the only `wit_bindgen::generate!` site. It
//! converts between the WIT types and [`presence_core`]'s types and performs the core's
//! effects through the host's imports. No sync logic lives here.
//!
//! ## Layout
//! - `HostEnv`: the core's [`presence_core::Env`] backed by WIT imports.
//! - `run_effects`: performs effects until none are left.
//! - `Plugin`: the `sync`, `admin`, `users`, `policy` and `absence` exports.
//! - `convert`: `From` impls between WIT and core types.

#![allow(missing_docs)] // generated bindings
#![allow(unsafe_code)] // generated bindings

use std::cell::RefCell;

use presence_core as core;

wit_bindgen::generate!({
    path: "../../wit",
    world: "presence-sync",
});

use exports::teams_presence::plugin::{absence, admin, policy, sync, users};
use teams_presence::plugin::{
    clock, credentials, crypto, directory, log, notes, outbound_http, presence, scheduler, state, status, types,
};

mod convert;

/// The guest's `memcmp`, in place of the C library's one byte per step: every ordered map of
/// the core compares ids through it (see [`presence_core::bytes`]). A symbol of our own is
/// linked before the library's.
///
/// # Safety
/// As C's `memcmp`: `a` and `b` each point to `n` readable bytes.
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    if n == 0 {
        return 0;
    }
    // SAFETY: `memcmp`'s contract: `a` and `b` each point to `n` readable bytes.
    let (a, b) = unsafe { (std::slice::from_raw_parts(a, n), std::slice::from_raw_parts(b, n)) };
    core::bytes::compare(a, b)
}

/// Version of this plugin release (reported in the status).
#[cfg(not(feature = "next"))]
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Version of this plugin release (reported in the status): the `next` build, which the
/// hot-swap tests use as "v2".
#[cfg(feature = "next")]
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-next");

thread_local! {
    static CORE: RefCell<core::Core> = RefCell::new(core::Core::new());
}

struct HostEnv;

impl core::Env for HostEnv {
    fn now_ms(&self) -> u64 {
        clock::now_ms()
    }
    fn random_bytes(&mut self, n: usize) -> Vec<u8> {
        crypto::random_bytes(n as u32)
    }
    fn unwrap_key(&mut self, certificate_id: &str, wrapped: &[u8]) -> Result<Vec<u8>, core::UnwrapError> {
        crypto::unwrap_key(certificate_id, wrapped).map_err(|e| match e {
            crypto::UnwrapError::UnknownCertificate(c) => core::UnwrapError::UnknownCertificate(c),
            crypto::UnwrapError::DecryptFailed => core::UnwrapError::DecryptFailed,
        })
    }
    fn switchboard_users_page(&mut self, start: usize, count: usize) -> Vec<core::SwitchboardUser> {
        directory::list_users_page(start as u32, count as u32).into_iter().map(Into::into).collect()
    }
    fn switchboard_revision(&mut self) -> u64 {
        directory::revision()
    }
    fn load(&mut self, key: &str) -> Option<Vec<u8>> {
        state::get(key)
    }
    fn keys(&mut self, prefix: &str) -> Vec<String> {
        state::list_keys(prefix)
    }
    fn refresh_token(&mut self, username: &str) -> Option<String> {
        credentials::refresh_token(username)
    }
}

/// Performs the core's effects; a request the host refuses to start is fed back at once.
fn run_effects(core: &mut core::Core) {
    let mut env = HostEnv;
    loop {
        let effects = core.take_effects();
        if effects.is_empty() {
            return;
        }
        for effect in effects {
            match effect {
                core::Effect::Http { id, request } => {
                    if let Err(e) = outbound_http::start(id, &request.into()) {
                        core.on_http_response(&mut env, id, Err(e.into()));
                    }
                }
                core::Effect::Publish(update) => match presence::publish(&update.into()) {
                    Ok(()) => {}
                    Err(presence::PublishError::UnknownUser(u)) => {
                        log::emit(log::Level::Warn, "switchboard user vanished", &[("user".into(), u)]);
                    }
                    Err(presence::PublishError::TooLong(field)) => {
                        log::emit(
                            log::Level::Warn,
                            "presence not shown: a field is too long",
                            &[("field".into(), field)],
                        );
                    }
                },
                core::Effect::Store { key, value: Some(v) } => {
                    if let Err(e) = state::set(&key, &v) {
                        let reason = match e {
                            state::StateError::QuotaExceeded(q) => format!("quota of {q} bytes exceeded"),
                            state::StateError::TooLarge(max) => format!("larger than the host's {max} bytes per value"),
                            state::StateError::Unavailable(r) => r,
                        };
                        log::emit(
                            log::Level::Error,
                            "state write failed",
                            &[("key".into(), key), ("reason".into(), reason)],
                        );
                    }
                }
                core::Effect::Store { key, value: None } => state::delete(&key),
                core::Effect::Log { level, message, fields } => log::emit(level.into(), &message, &fields),
                core::Effect::RequestTick => scheduler::request_tick(),
                core::Effect::Withdraw(user_id) => presence::withdraw(&user_id),
                core::Effect::ShowNote { user_id, microsoft_user_id, note } => {
                    notes::show_note(&user_id, &microsoft_user_id, &note.into())
                }
                core::Effect::KeepRefreshToken { username, token } => {
                    credentials::keep_refresh_token(&username, &token)
                }
            }
        }
    }
}

fn with_core<R>(f: impl FnOnce(&mut core::Core, &mut HostEnv) -> R) -> R {
    CORE.with(|c| {
        let mut core = c.borrow_mut();
        let r = f(&mut core, &mut HostEnv);
        run_effects(&mut core);
        r
    })
}

struct Plugin;

impl sync::Guest for Plugin {
    fn configure(settings: sync::Settings) -> Result<(), sync::ConfigError> {
        with_core(|core, env| core.configure(env, settings.into()).map_err(Into::into))
    }

    fn on_notification(body: Vec<u8>) -> sync::NotificationOutcome {
        with_core(|core, env| core.on_notification(env, &body).into())
    }

    fn on_http_response(id: u64, outcome: Result<outbound_http::Response, outbound_http::HttpError>) {
        with_core(|core, env| core.on_http_response(env, id, outcome.map(Into::into).map_err(Into::into)))
    }

    fn on_line_event(event: presence::LineEvent) -> Result<(), sync::LineEventError> {
        with_core(|core, env| core.on_line_event(env, event.into()).map_err(Into::into))
    }

    fn tick() {
        with_core(|core, env| core.tick(env))
    }

    fn set_overrides(overrides: Vec<sync::MappingOverride>) -> Result<(), sync::OverrideError> {
        with_core(|core, env| {
            core.set_overrides(env, overrides.into_iter().map(Into::into).collect()).map_err(Into::into)
        })
    }

    fn get_overrides() -> Vec<sync::MappingOverride> {
        with_core(|core, _| core.api_overrides().iter().cloned().map(Into::into).collect())
    }

    fn sync_now() {
        with_core(|core, env| core.sync_now(env))
    }

    fn status() -> status::IntegrationStatus {
        with_core(|core, env| core.status(env).into())
    }

    fn plugin_version() -> String {
        VERSION.to_string()
    }
}

impl admin::Guest for Plugin {
    fn retire() -> admin::RetireProgress {
        with_core(|core, env| core.retire(env).into())
    }
}

impl users::Guest for Plugin {
    fn page(query: users::UsersQuery) -> users::UsersPage {
        with_core(|core, env| core.switchboard_users_view(env, query.into()).into())
    }

    fn counts() -> users::MappingCounts {
        with_core(|core, env| core.mapping_counts(env).into())
    }
}

impl policy::Guest for Plugin {
    fn set_policy(p: policy::SyncPolicy) -> Result<(), policy::PolicyError> {
        with_core(|core, env| core.set_policy(env, p.into()).map_err(Into::into))
    }

    fn get_policy() -> policy::SyncPolicy {
        with_core(|core, _| core.policy().clone().into())
    }

    fn dry_run(p: policy::SyncPolicy) -> Result<Vec<policy::DryRunEntry>, policy::PolicyError> {
        with_core(|core, env| {
            core.dry_run(env, &p.into()).map(|v| v.into_iter().map(Into::into).collect()).map_err(Into::into)
        })
    }

    fn status() -> policy::PolicyStatus {
        with_core(|core, env| core.policy_status(env).into())
    }
}

impl absence::Guest for Plugin {
    fn on_absence(event: absence::AbsenceEvent) -> Result<(), absence::AbsenceError> {
        with_core(|core, env| {
            core.on_absence(
                env,
                core::AbsenceEvent { user_id: event.user_id, message: event.message, until_ms: event.until_ms },
            )
            .map_err(|e| match e {
                core::AbsenceError::UnmappedUser(u) => absence::AbsenceError::UnmappedUser(u),
                core::AbsenceError::TooLong(n) => absence::AbsenceError::TooLong(n),
                core::AbsenceError::PushDisabled => absence::AbsenceError::PushDisabled,
            })
        })
    }
}

export!(Plugin);
