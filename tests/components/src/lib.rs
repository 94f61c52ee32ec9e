//! # test-components
//!
//! Components that only tests and benchmarks use, built by this crate's build script before
//! any test runs (no test invokes cargo). The plugin itself comes from
//! `presence-plugin-wasm`.

/// The plugin's `next` build: the same sources with another version label ("v2" of the
/// hot-swap tests).
pub const PLUGIN_NEXT: &str = concat!(env!("OUT_DIR"), "/presence_plugin_next.wasm");
/// `tests/guests/hostile`: a plugin of the real world that misbehaves on purpose.
pub const HOSTILE: &str = concat!(env!("OUT_DIR"), "/hostile_guest.wasm");
/// `tests/guests/old-wit`: a component of an incompatible WIT major version.
pub const OLD_WIT: &str = concat!(env!("OUT_DIR"), "/old_wit_guest.wasm");
/// `tests/guests/wit-3-0`: a component of the previous minor WIT version (3.0.0), which a host
/// of a later 3.x loads.
pub const WIT_3_0: &str = concat!(env!("OUT_DIR"), "/wit_3_0_guest.wasm");
