//! `scheduler`: the plugin asks for a prompt `tick` (the actor queues it after what waits).

use std::sync::atomic::Ordering;

use crate::bindings::scheduler;
use crate::instance::HostState;

impl scheduler::Host for HostState {
    fn request_tick(&mut self) {
        self.ctx.tick_requested.store(true, Ordering::SeqCst);
    }
}
