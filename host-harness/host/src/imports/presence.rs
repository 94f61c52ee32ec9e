//! `presence`: what the plugin publishes goes to the switchboard backend.

use crate::bindings::presence;
use crate::instance::HostState;
use crate::sandbox::{MAX_PRESENCE_FIELD, cap};

impl presence::Host for HostState {
    fn publish(&mut self, u: presence::PresenceUpdate) -> Result<(), presence::PublishError> {
        if [&u.user_id, &u.microsoft_user_id, &u.presence.availability, &u.presence.activity]
            .iter()
            .any(|f| f.len() > MAX_PRESENCE_FIELD)
        {
            self.ctx.count("publish.refused-oversized");
            return Err(presence::PublishError::UnknownUser(cap(u.user_id, 64)));
        }
        self.ctx.switchboard.publish(u).map_err(|e| presence::PublishError::UnknownUser(e.0))
    }
}
