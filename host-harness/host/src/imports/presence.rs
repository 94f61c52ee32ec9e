//! `presence`: what the plugin publishes goes to the switchboard backend.

use crate::bindings::presence;
use crate::instance::HostState;
use crate::sandbox::MAX_PRESENCE_FIELD;

impl presence::Host for HostState {
    fn publish(&mut self, u: presence::PresenceUpdate) -> Result<(), presence::PublishError> {
        let fields = [
            ("user-id", &u.user_id),
            ("microsoft-user-id", &u.microsoft_user_id),
            ("availability", &u.presence.availability),
            ("activity", &u.presence.activity),
        ];
        if let Some((name, _)) = fields.iter().find(|(_, f)| f.len() > MAX_PRESENCE_FIELD) {
            self.ctx.count("publish.refused-oversized");
            return Err(presence::PublishError::TooLong(name.to_string()));
        }
        self.ctx.switchboard.publish(u).map_err(|e| presence::PublishError::UnknownUser(e.0))
    }

    fn withdraw(&mut self, user_id: String) {
        // (The plugin counts them, as `presence.withdrawn`.)
        if user_id.len() <= MAX_PRESENCE_FIELD {
            self.ctx.switchboard.withdraw(&user_id);
        }
    }
}
