//! [`HostState`]: the per-store state of one plugin instance (WASI context, memory meter, the
//! running call's clock), and [`arm`], which starts the CPU bound of the next guest call.

use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::context::IntegrationCtx;
use crate::sandbox::{CallClock, GuestStderr, MemoryMeter};

/// Per-store state: one per instance.
pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryMeter,
    pub(crate) ctx: Arc<IntegrationCtx>,
    pub(crate) stderr: GuestStderr,
    pub(crate) call: Option<CallClock>,
}

impl HostState {
    /// A fresh state: no preopened directories, environment, arguments, stdin or sockets;
    /// stderr (where a panicking guest writes its message) is kept, its tail only, for trap
    /// reports.
    pub(crate) fn new(ctx: Arc<IntegrationCtx>, memory_bytes: usize) -> HostState {
        let stderr = GuestStderr::default();
        HostState {
            wasi: WasiCtx::builder().stderr(stderr.clone()).build(),
            table: ResourceTable::new(),
            limiter: MemoryMeter::new(memory_bytes),
            ctx,
            stderr,
            call: None,
        }
    }

    /// The instance's linear memory, in bytes.
    pub(crate) fn linear_memory_bytes(&self) -> usize {
        self.limiter.bytes
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Arms the deadline for the next guest call on `store`: checked at every epoch tick (see
/// [`CallClock::exceeded`]); `force` stops it at the very first check.
pub(crate) fn arm(store: &mut Store<HostState>, force: bool) {
    store.data_mut().call = Some(CallClock::start(force));
    store.set_epoch_deadline(if force { 0 } else { 1 });
}

/// Gives the call just armed a CPU bound of its own (never below the instance's).
pub(crate) fn extend(store: &mut Store<HostState>, bound: std::time::Duration) {
    if let Some(c) = store.data_mut().call.as_mut() {
        c.bound = Some(bound);
    }
}
