//! `directory`: the switchboard's users, read through the switchboard backend.

use crate::bindings::directory;
use crate::instance::HostState;
use crate::sandbox::MAX_PRESENCE_FIELD;

/// Users read per backend call while listing all of them.
const PAGE: usize = 5_000;

impl directory::Host for HostState {
    fn list_users(&mut self) -> Vec<directory::SwitchboardUser> {
        let mut all = Vec::new();
        loop {
            let page = self.ctx.switchboard.users_page(all.len(), PAGE);
            let last = page.len() < PAGE;
            all.extend(page);
            if last {
                return all;
            }
        }
    }
    fn list_users_page(&mut self, start: u32, count: u32) -> Vec<directory::SwitchboardUser> {
        self.ctx.switchboard.users_page(start as usize, count as usize)
    }
    fn find_by_email(&mut self, email: String) -> Vec<directory::SwitchboardUser> {
        if email.len() > MAX_PRESENCE_FIELD {
            return vec![];
        }
        let wanted = email.trim().to_lowercase();
        let mut users = directory::Host::list_users(self);
        users.retain(|u| u.emails.iter().any(|e| e.trim().to_lowercase() == wanted));
        users
    }
}
