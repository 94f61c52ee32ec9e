//! [`Runtime`]: the wasmtime engine (epoch interruption, ticked every
//! [`EPOCH_TICK_MS`]), the linker with every WIT import and WASI p2, and the compile cache.
//! Shared by all integrations of a host.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store};

use crate::bindings::PresenceSync;
use crate::context::IntegrationCtx;
use crate::instance::{HostState, arm};
use crate::release::{CompileCache, Release};
use crate::sandbox::{EPOCH_TICK_MS, Limits};

/// wasmtime 48 has its own error type; bring it into anyhow with its full chain.
pub(crate) fn wt<T>(r: wasmtime::Result<T>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e:#}"))
}

/// The engine and the linker, shared by all integrations, and the compile cache. Releases
/// (compiled plugins) are loaded with [`Runtime::load`]; each integration's actor runs one.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache: Option<CompileCache>,
    /// The sandbox limits of every instance.
    pub limits: Limits,
}

impl Runtime {
    /// An engine with epoch interruption, a linker with the WIT imports and WASI p2, and the
    /// compile cache in `cache_dir` (none: always compile). Starts the epoch ticker, which
    /// stops when the engine is dropped.
    pub fn new(limits: Limits, cache_dir: Option<std::path::PathBuf>) -> anyhow::Result<Arc<Runtime>> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        // `PRESENCE_PROFILE=perfmap`: the plugin's compiled functions are named in
        // /tmp/perf-<pid>.map, so `perf record` / `perf report` show where a guest call spends.
        if std::env::var("PRESENCE_PROFILE").is_ok_and(|v| v == "perfmap") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = wt(Engine::new(&config))?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        wt(wasmtime_wasi::p2::add_to_linker_async(&mut linker))?;
        wt(PresenceSync::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s))?;
        let weak = engine.weak();
        std::thread::Builder::new().name("epoch-ticker".into()).spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
            }
        })?;
        Ok(Arc::new(Runtime { engine, linker, cache: cache_dir.map(CompileCache::new), limits }))
    }

    /// Checks, compiles (or loads from the cache) and prepares a plugin release. Nothing runs
    /// it yet; see [`crate::release`] for the checks.
    pub fn load(&self, wasm: &[u8]) -> anyhow::Result<Arc<Release>> {
        let r = crate::release::load(&self.engine, &self.linker, self.cache.as_ref(), wasm)?;
        tracing::info!(sha256 = %&r.sha256[..12], wit = %r.wit_version, from_cache = r.from_cache,
            load_ms = format!("{:.1}", r.load_ms), "plugin release loaded");
        Ok(Arc::new(r))
    }

    /// A store for one instance of `ctx`'s integration, under the sandbox's limits: the
    /// memory meter and the CPU bound per call, checked at every epoch tick.
    pub(crate) fn new_store(&self, ctx: Arc<IntegrationCtx>) -> Store<HostState> {
        let mut store = Store::new(&self.engine, HostState::new(ctx, self.limits.memory_bytes));
        store.limiter(|s| &mut s.limiter);
        let cpu_bound = Duration::from_millis(self.limits.call_deadline_ms);
        store.epoch_deadline_callback(move |ctx| {
            Ok(match &ctx.data().call {
                Some(c) if c.exceeded(cpu_bound) => wasmtime::UpdateDeadline::Interrupt,
                _ => wasmtime::UpdateDeadline::Continue(1),
            })
        });
        // Instantiation runs guest code too (start functions): give it the same deadline.
        arm(&mut store, false);
        store
    }
}
