//! # presence-plugin-wasm
//!
//! The plugin component, built from `plugin/component` for wasm32-wasip2 (release) by this
//! crate's build script, so that whatever depends on it embeds the component built from the
//! sources next to it. A platform that deploys the `.wasm` file itself does not need this
//! crate: it hands the file's bytes to the host.

/// The component's bytes.
pub static PLUGIN_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/presence_plugin.wasm"));
