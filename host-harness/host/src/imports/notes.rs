//! `notes`: the Teams status messages and out of office the plugin shows go to the
//! switchboard backend, capped.

use crate::bindings::notes;
use crate::instance::HostState;
use crate::sandbox::MAX_PRESENCE_FIELD;

/// The longest note text taken (a Teams status message is at most 280 characters; an
/// out-of-office message may be longer, and is cut).
pub const MAX_NOTE_TEXT: usize = 4096;

impl notes::Host for HostState {
    fn show_note(&mut self, user_id: String, microsoft_user_id: String, mut note: notes::TeamsNote) {
        if user_id.len() > MAX_PRESENCE_FIELD || microsoft_user_id.len() > MAX_PRESENCE_FIELD {
            self.ctx.count("notes.refused-oversized");
            return;
        }
        let cap = |t: Option<String>| t.map(|t| crate::sandbox::printable(&crate::sandbox::cap(t, MAX_NOTE_TEXT)));
        note.status_message = cap(note.status_message);
        note.out_of_office_message = cap(note.out_of_office_message);
        self.ctx.switchboard.show_note(&user_id, &microsoft_user_id, &note);
    }
}
