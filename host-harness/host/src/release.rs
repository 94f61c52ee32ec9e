//! Plugin releases: a component is checked, compiled once (or loaded from the compile cache)
//! and prepared for instantiation before any integration switches to it.
//!
//! Checks, in order, each with an error that names the problem:
//! 1. the bytes are a WebAssembly *component* (not a core module, not something else) and not
//!    larger than [`MAX_PLUGIN_BYTES`];
//! 2. wasmtime compiles (validates) it;
//! 3. it exports `teams-presence:plugin/sync` with the same WIT *major* version as this host
//!    ([`crate::bindings::WIT_VERSION`]); a different major is refused;
//! 4. every import is one the host provides (the WIT imports plus WASI p2), and the exports
//!    have the types the host expects.
//!
//! Compiled code is cached as `.cwasm` files keyed by the component's SHA-256, the wasmtime
//! version and the engine settings (wasmtime's `precompile_compatibility_hash`), so a restart
//! or a swap back to an earlier release does not compile again.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, InstancePre, Linker};

use crate::bindings::{WIT_PACKAGE, WIT_VERSION, absence, admin, policy, sync, users};
use crate::instance::HostState;

/// Largest component accepted.
pub const MAX_PLUGIN_BYTES: usize = 64 << 20;

/// A release's exports, looked up once: `sync`, and `admin` (since WIT 3.2.0), `users`
/// (since 3.3.0) and `policy` (since 3.5.0) when the plugin has them (a plugin built against an earlier 3.x lacks them,
/// and runs without them).
pub(crate) struct PluginPre {
    pre: InstancePre<HostState>,
    sync: sync::GuestIndices,
    admin: Option<admin::GuestIndices>,
    users: Option<users::GuestIndices>,
    policy: Option<policy::GuestIndices>,
    absence: Option<absence::GuestIndices>,
}

impl PluginPre {
    fn new(pre: InstancePre<HostState>) -> wasmtime::Result<PluginPre> {
        let sync = sync::GuestIndices::new(&pre)?;
        let admin = admin::GuestIndices::new(&pre).ok();
        let users = users::GuestIndices::new(&pre).ok();
        let policy = policy::GuestIndices::new(&pre).ok();
        let absence = absence::GuestIndices::new(&pre).ok();
        Ok(PluginPre { pre, sync, admin, users, policy, absence })
    }

    /// A new instance in `store`.
    pub(crate) async fn instantiate_async(&self, store: &mut wasmtime::Store<HostState>) -> wasmtime::Result<Plugin> {
        let instance = self.pre.instantiate_async(&mut *store).await?;
        let sync = self.sync.load(&mut *store, &instance)?;
        let admin = match &self.admin {
            Some(a) => Some(a.load(&mut *store, &instance)?),
            None => None,
        };
        let users = match &self.users {
            Some(u) => Some(u.load(&mut *store, &instance)?),
            None => None,
        };
        let policy = match &self.policy {
            Some(p) => Some(p.load(&mut *store, &instance)?),
            None => None,
        };
        let absence = match &self.absence {
            Some(a) => Some(a.load(&mut *store, &instance)?),
            None => None,
        };
        Ok(Plugin { sync, admin, users, policy, absence })
    }
}

/// An instance's exports.
pub(crate) struct Plugin {
    sync: sync::Guest,
    admin: Option<admin::Guest>,
    users: Option<users::Guest>,
    policy: Option<policy::Guest>,
    absence: Option<absence::Guest>,
}

impl Plugin {
    /// The `sync` export.
    pub(crate) fn teams_presence_plugin_sync(&self) -> &sync::Guest {
        &self.sync
    }

    /// The `admin` export, if the plugin has it.
    pub(crate) fn admin(&self) -> Option<&admin::Guest> {
        self.admin.as_ref()
    }

    /// The `users` export, if the plugin has it.
    pub(crate) fn users(&self) -> Option<&users::Guest> {
        self.users.as_ref()
    }

    /// The `policy` export, if the plugin has it.
    pub(crate) fn policy(&self) -> Option<&policy::Guest> {
        self.policy.as_ref()
    }

    /// The `absence` export, if the plugin has it.
    pub(crate) fn absence(&self) -> Option<&absence::Guest> {
        self.absence.as_ref()
    }
}

/// A checked, compiled and prepared plugin release.
pub struct Release {
    pub(crate) pre: PluginPre,
    /// SHA-256 of the component bytes, hex.
    pub sha256: String,
    /// The WIT package version the component exports, e.g. `2.0.0`.
    pub wit_version: String,
    /// Whether the compiled code came from the cache or was compiled now.
    pub from_cache: bool,
    /// Time to load it: compile (or deserialize) plus prepare, in ms.
    pub load_ms: f64,
    /// Size of the component in bytes.
    pub bytes: usize,
}

impl std::fmt::Debug for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Release")
            .field("sha256", &self.sha256)
            .field("wit_version", &self.wit_version)
            .field("from_cache", &self.from_cache)
            .finish()
    }
}

/// `std::hash::Hasher` over SHA-256, to fold wasmtime's compatibility hash into the cache key.
struct ShaHasher(Sha256);

impl std::hash::Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The compile cache: one `.cwasm` file per (component, wasmtime version, engine settings).
pub struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    /// A cache in `dir` (created when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CompileCache { dir: dir.into() }
    }

    fn path(&self, engine: &Engine, sha256: &str) -> PathBuf {
        let mut h = ShaHasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
        let settings = hex(&h.0.finalize()[..8]);
        self.dir.join(format!("{}-{settings}.cwasm", &sha256[..32]))
    }

    fn load(&self, engine: &Engine, path: &Path) -> Option<Component> {
        if !path.exists() {
            return None;
        }
        // SAFETY: `deserialize_file` trusts the file to be wasmtime's own output: only this
        // host writes the cache directory (atomically, via a temporary file and a rename), the
        // file name binds it to the component's SHA-256 and to this engine's version and
        // settings, and wasmtime itself refuses a file from another version or configuration.
        // Whoever can write this directory can also replace the host binary.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize_file(engine, path) };
        match loaded {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "compile cache entry unusable; compiling again");
                None
            }
        }
    }

    fn store(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    }
}

/// Checks, compiles (or loads from `cache`) and prepares `wasm`.
pub(crate) fn load(
    engine: &Engine,
    linker: &Linker<HostState>,
    cache: Option<&CompileCache>,
    wasm: &[u8],
) -> anyhow::Result<Release> {
    let started = Instant::now();
    anyhow::ensure!(
        wasm.len() <= MAX_PLUGIN_BYTES,
        "the plugin is {} bytes; the limit is {MAX_PLUGIN_BYTES} bytes",
        wasm.len()
    );
    match wasm.get(..8) {
        Some([0, b'a', b's', b'm', 0x0d, 0, 1, 0]) => {}
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => anyhow::bail!(
            "this is a core WebAssembly module, not a component: build the plugin for wasm32-wasip2 \
             (cargo build --release --target wasm32-wasip2)"
        ),
        _ => anyhow::bail!("not a WebAssembly component (no component header)"),
    }
    let sha256 = hex(&Sha256::digest(wasm));
    let cache_path = cache.map(|c| c.path(engine, &sha256));
    let cached = cache.zip(cache_path.as_deref()).and_then(|(c, p)| c.load(engine, p));
    let from_cache = cached.is_some();
    let component = match cached {
        Some(c) => c,
        None => Component::new(engine, wasm)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("the component does not compile (invalid WebAssembly)")?,
    };
    let wit_version = check_wit(engine, &component)?;
    if let (Some(c), Some(p), false) = (cache, cache_path.as_deref(), from_cache)
        && let Err(e) = c.store(p, &component)
    {
        tracing::warn!(error = %format!("{e:#}"), "could not write the compile cache");
    }
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("the plugin imports something this host does not provide")?;
    let pre = PluginPre::new(pre)
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("the plugin's exports do not match the presence-sync world")?;
    Ok(Release {
        pre,
        sha256,
        wit_version,
        from_cache,
        load_ms: started.elapsed().as_secs_f64() * 1000.0,
        bytes: wasm.len(),
    })
}

/// The WIT version of the component's `sync` export, if its major equals the host's.
fn check_wit(engine: &Engine, component: &Component) -> anyhow::Result<String> {
    let exports: Vec<String> = component.component_type().exports(engine).map(|(n, _)| n.to_string()).collect();
    let prefix = format!("{WIT_PACKAGE}/sync@");
    let Some(version) = exports.iter().find_map(|n| n.strip_prefix(&prefix)) else {
        anyhow::bail!(
            "not a teams-presence-sync plugin: it exports no {WIT_PACKAGE}/sync interface (its exports: {})",
            if exports.is_empty() { "none".to_string() } else { exports.join(", ") }
        );
    };
    let major = |v: &str| v.split('.').next().unwrap_or("").to_string();
    anyhow::ensure!(
        major(version) == major(WIT_VERSION),
        "incompatible plugin: it speaks {WIT_PACKAGE}@{version}, this host speaks {WIT_PACKAGE}@{WIT_VERSION}; \
         a different major version cannot be loaded (rebuild the plugin against wit/ {}.x)",
        major(WIT_VERSION)
    );
    Ok(version.to_string())
}
