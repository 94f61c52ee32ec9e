//! Bindings generated from `wit/`: the only `bindgen!` site of the host. Every other module
//! takes the WIT types from here.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "presence-sync",
    exports: { default: async },
});

pub use exports::teams_presence::plugin::{absence, admin, policy, sync, users};
pub use teams_presence::plugin::{
    clock, credentials, crypto, directory, log, notes, outbound_http, presence, scheduler, state, status, types,
};

/// The WIT package version this host implements.
pub const WIT_VERSION: &str = "3.5.0";

/// The WIT package the plugin's export belongs to.
pub const WIT_PACKAGE: &str = "teams-presence:plugin";
