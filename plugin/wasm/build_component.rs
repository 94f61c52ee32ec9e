// Shared by the build scripts of `presence-plugin-wasm` and `test-components` (`include!`d).

/// Builds `packages` for wasm32-wasip2 (release) with `features`, in a target directory of
/// its own (so the nested build never waits for the outer one's lock) beside the outer one,
/// and hands `take` the directory holding the `.wasm` files. The plugin's build and the test
/// components' share that directory, and build the plugin with other features: a file lock
/// keeps one's build and copy from interleaving with the other's.
fn build_component(root: &Path, packages: &[&str], features: &[&str], take: impl FnOnce(&Path)) {
    // Beside the outer target directory, wherever it is (CARGO_TARGET_DIR, or `target/`).
    let outer = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let outer = if outer.is_absolute() { outer } else { root.join(outer) };
    let target_dir = outer.join("plugin-build");
    std::fs::create_dir_all(&target_dir).expect("creating the components' target directory");
    let lock = std::fs::File::create(target_dir.join("build.lock")).expect("creating the build lock");
    lock.lock().expect("locking the components' target directory");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"]).arg(&target_dir);
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
        .expect("running cargo to build a component");
    assert!(
        status.success(),
        "building {packages:?} failed; is the wasm32-wasip2 target installed? (rustup target add wasm32-wasip2)"
    );
    take(&target_dir.join("wasm32-wasip2/release"));
}
