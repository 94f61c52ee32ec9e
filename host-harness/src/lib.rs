//! # host-harness
//!
//! The reference host for the teams-presence-sync plugin, and the test and demo harness.
//!
//! ## Layout
//! - [`config`]: the TOML config (`[host]`, `[[integration]]`), validated at load.
//! - [`runtime`]: wasmtime embedding: `bindgen!`, host impls of every WIT import, one actor
//!   per integration.
//! - [`host`]: wiring: state, keys, switchboards, actors, and the one HTTP listener
//!   (webhooks, switchboard API, status API).
//! - [`switchboard`]: the switchboard simulator.
//! - [`store`]: SQLite state (WAL).
//! - [`keys`]: per-integration RSA key and self-signed certificate; RSA-OAEP unwrap.
//! - [`emulator`]: a Microsoft Graph / Entra ID emulator (token endpoint, users, presence,
//!   subscriptions with validation handshake and encrypted rich notifications, control API).
//! - [`demo`]: the seeded demo, and the scenario builder tests and benchmarks share.
//! - [`bench`]: the benchmark suite that writes BENCHMARKS.md.

pub mod bench;
pub mod config;
pub mod demo;
pub mod emulator;
pub mod host;
pub mod keys;
pub mod release;
pub mod runtime;
pub mod store;
pub mod switchboard;

/// The plugin component built from `plugin/component` by this crate's build script.
pub static PLUGIN_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/presence_plugin.wasm"));

/// Components the build script builds for the tests and benchmarks (not embedded in the host).
pub mod test_components {
    /// The plugin's `next` build: the same sources with another version label ("v2" of the
    /// hot-swap tests).
    pub const PLUGIN_NEXT: &str = concat!(env!("OUT_DIR"), "/presence_plugin_next.wasm");
    /// `tests/guests/hostile`: a plugin of the real world that misbehaves on purpose.
    pub const HOSTILE: &str = concat!(env!("OUT_DIR"), "/hostile_guest.wasm");
    /// `tests/guests/old-wit`: a component of an incompatible WIT major version.
    pub const OLD_WIT: &str = concat!(env!("OUT_DIR"), "/old_wit_guest.wasm");
}
