//! Builds the plugin component (`plugin/component`, wasm32-wasip2, release). Nothing is
//! downloaded here: the wasm32-wasip2 target must be installed (`rustup target add
//! wasm32-wasip2`; `rust-toolchain.toml` lists it).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().parent().unwrap().to_path_buf();
    for p in ["wit", "plugin/core", "plugin/component", "Cargo.lock", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    build_component(&root, &["presence-plugin"], &[], |dir| {
        std::fs::copy(dir.join("presence_plugin.wasm"), out.join("presence_plugin.wasm")).expect("copying the plugin");
    });
}

include!("build_component.rs");
