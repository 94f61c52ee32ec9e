//! Builds the plugin component (`plugin/component`, wasm32-wasip2, release) before the host,
//! so `cargo run` and `cargo test` always embed the component built from the sources next to
//! them. Nothing is downloaded here: the wasm32-wasip2 target must be installed
//! (`rustup target add wasm32-wasip2`; `rust-toolchain.toml` lists it).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    for p in ["wit", "plugin", "tests/guests", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // A target directory of its own, so the nested build never waits for the outer one's lock.
    let target_dir = root.join("target").join("plugin-build");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = |packages: &[&str], features: &[&str]| {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&root)
            .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
            .arg(&target_dir);
        for p in packages {
            cmd.args(["-p", p]);
        }
        for f in features {
            cmd.args(["--features", f]);
        }
        let status = cmd
            // Flags meant for the host build (and clippy's wrapper) must not leak into the guest.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .status()
            .expect("running cargo to build the plugin component");
        assert!(
            status.success(),
            "building {packages:?} failed; is the wasm32-wasip2 target installed? (rustup target add wasm32-wasip2)"
        );
    };
    let built = |name: &str, as_name: &str| {
        let wasm = target_dir.join("wasm32-wasip2/release").join(name);
        std::fs::copy(&wasm, out.join(as_name)).expect("copying a component");
    };
    // The "next" release of the plugin (same sources, another version label), for the hot-swap
    // tests; then the test guests (a hostile one, one of an older WIT major); then the plugin
    // itself. Rebuilding the plugin crate alone with other features takes about a second.
    build(&["presence-plugin"], &["next"]);
    built("presence_plugin.wasm", "presence_plugin_next.wasm");
    build(&["hostile-guest", "old-wit-guest"], &[]);
    built("hostile_guest.wasm", "hostile_guest.wasm");
    built("old_wit_guest.wasm", "old_wit_guest.wasm");
    build(&["presence-plugin"], &[]);
    built("presence_plugin.wasm", "presence_plugin.wasm");
}
