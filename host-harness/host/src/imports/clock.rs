//! `clock`: the integration's clock.

use crate::bindings::clock;
use crate::instance::HostState;

impl clock::Host for HostState {
    fn now_ms(&mut self) -> u64 {
        self.ctx.clock.now_ms()
    }
}
