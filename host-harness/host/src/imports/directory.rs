//! `directory`: the switchboard's users, read through the switchboard backend a page at a time.

use crate::bindings::directory;
use crate::instance::HostState;

impl directory::Host for HostState {
    fn list_users_page(&mut self, start: u32, count: u32) -> Vec<directory::SwitchboardUser> {
        self.ctx.switchboard.users_page(start as usize, count as usize)
    }

    fn revision(&mut self) -> u64 {
        self.ctx.switchboard.revision()
    }
}
