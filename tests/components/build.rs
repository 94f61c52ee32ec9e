//! Builds the test components (wasm32-wasip2, release): the plugin with its `next` feature, and
//! the guests in `tests/guests`. Nothing is downloaded here: the wasm32-wasip2 target must be installed (`rustup target add
//! wasm32-wasip2`; `rust-toolchain.toml` lists it).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().parent().unwrap().to_path_buf();
    for p in ["wit", "plugin/core", "plugin/component", "plugin/wasm/build_component.rs", "tests/guests", "Cargo.lock"]
    {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // The "next" release of the plugin (same sources, another version label) for the hot-swap
    // tests, then the test guests. The plugin's own build (presence-plugin-wasm) shares the
    // nested target directory, so its dependencies are built once.
    let copy = |dir: &Path, name: &str, as_name: &str| {
        std::fs::copy(dir.join(name), out.join(as_name)).expect("copying a component");
    };
    build_component(&root, &["presence-plugin"], &["next"], |dir| {
        copy(dir, "presence_plugin.wasm", "presence_plugin_next.wasm");
    });
    build_component(&root, &["hostile-guest", "old-wit-guest", "wit-3-0-guest"], &[], |dir| {
        copy(dir, "hostile_guest.wasm", "hostile_guest.wasm");
        copy(dir, "old_wit_guest.wasm", "old_wit_guest.wasm");
        copy(dir, "wit_3_0_guest.wasm", "wit_3_0_guest.wasm");
    });
}

include!("../../plugin/wasm/build_component.rs");
