//! Runs a `wasm32-wasip2` command component, such as a test binary built for that target,
//! with this process's stdio, environment and arguments: a profiling aid that puts the core's
//! tests where the plugin runs (4-byte pointers, the guest's allocator). For the footprint aid:
//!
//! ```text
//! cargo test --release -p presence-core --lib --target wasm32-wasip2 --no-run
//! cargo run --release -p presence-host --example wasi_command -- \
//!     target/wasm32-wasip2/release/deps/presence_core-<hash>.wasm footprint --ignored --nocapture
//! ```

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::bindings::sync::Command;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

struct Guest {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Guest {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

fn main() -> wasmtime::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(file) = args.first() else {
        wasmtime::bail!("usage: wasi_command <component.wasm> [arguments...]");
    };
    let engine = Engine::default();
    let component = Component::from_file(&engine, file)?;
    let mut linker: Linker<Guest> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    let ctx = WasiCtx::builder().inherit_stdio().inherit_env().args(&args).build();
    let mut store = Store::new(&engine, Guest { ctx, table: ResourceTable::new() });
    let command = Command::instantiate(&mut store, &component, &linker)?;
    if command.wasi_cli_run().call_run(&mut store)?.is_err() {
        std::process::exit(1);
    }
    Ok(())
}
