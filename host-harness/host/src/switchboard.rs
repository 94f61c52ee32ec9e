//! The switchboard seam: the platform's user directory and its operator console.
//!
//! The host reads the switchboard's users for the plugin (`directory` interface), shows the
//! presence the plugin publishes (`presence.publish`) and, after a restart, replays the calls
//! in progress so that the plugin knows which "In a call" sessions still hold. A platform
//! implements [`Switchboard`] over its own directory and console; the workshop's simulator
//! (`switchboard-sim`) is one implementation.

use std::sync::Arc;

pub use crate::bindings::absence::AbsenceEvent;
pub use crate::bindings::directory::SwitchboardUser;
pub use crate::bindings::notes::TeamsNote;
pub use crate::bindings::presence::{LineEvent, LineState, PresenceUpdate};
pub use crate::bindings::types::{PresenceOrigin, TeamsPresence};

/// No switchboard user has this id (removed meanwhile).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no switchboard user {0}")]
pub struct UnknownUser(pub String);

/// The lease under which a host of a fleet (several hosts on one PostgreSQL database) shows
/// an integration's presence: the host's id and the lease's fencing token, which grows with
/// every takeover of that integration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The host's id (`[host] host_id`).
    pub host: String,
    /// The lease's fencing token.
    pub token: i64,
}

/// One customer's switchboard, as an integration sees it.
pub trait Switchboard: Send + Sync + 'static {
    /// Users from position `start`, at most `count` of them (fewer at the end), in a stable
    /// order. The plugin reads the directory a page at a time.
    fn users_page(&self, start: usize, count: usize) -> Vec<SwitchboardUser>;

    /// The directory's change counter: changes whenever a user is added, changed or removed
    /// (WIT `directory.revision`). Called about once a second per integration, so it must not
    /// do I/O. The default, 0, means "not tracked": the plugin then re-reads the users with
    /// every round of Microsoft's directory (once a minute by default).
    fn revision(&self) -> u64 {
        0
    }

    /// Shows a user's Teams presence in the console. `update.origin` tells why (see
    /// [`PresenceOrigin`]: an `own-line-status` update must never become a line-status change).
    fn publish(&self, update: PresenceUpdate) -> Result<(), UnknownUser>;

    /// [`Switchboard::publish`] by a host of a fleet, under `fence`. A host checks its lease
    /// before each update, but a host paused (SIGSTOP, a VM stall) between that check and
    /// the update may deliver it after another host took the integration over. A switchboard
    /// that several hosts feed should therefore keep, per integration, the greatest token it
    /// took and drop (answering `Ok`) an update under a smaller one: then nothing stale is
    /// ever shown after the new owner's first update. The default ignores the fence (one host).
    fn publish_fenced(&self, update: PresenceUpdate, fence: &Fence) -> Result<(), UnknownUser> {
        let _ = fence;
        self.publish(update)
    }

    /// [`Switchboard::withdraw`] by a host of a fleet, under `fence` (the same rule as
    /// [`Switchboard::publish_fenced`]).
    fn withdraw_fenced(&self, user_id: &str, fence: &Fence) {
        let _ = fence;
        self.withdraw(user_id)
    }

    /// Stops showing a Teams presence for a user that is no longer mapped to a Microsoft user
    /// (WIT `presence.withdraw`): the console shows it as a user without Teams until the next
    /// `publish` for it; its Teams note ([`Switchboard::show_note`]) goes too. An unknown
    /// user is ignored.
    fn withdraw(&self, user_id: &str);

    /// The lines in a call now (`connected` or `on-hold`), each as the event that put it in
    /// that state (with its time, or 0 if unknown): the host replays them to the plugin after
    /// a restart, so that it keeps the sessions of calls still going on and clears the rest.
    fn calls_in_progress(&self) -> Vec<LineEvent>;

    /// Shows a user's Teams status message and out of office in the console (WIT
    /// `notes.show-note`), whenever they change. A note with `set_by_plugin` carries the status
    /// message the plugin set from this switchboard's absence: never turn it into an absence
    /// again. The default shows nothing (a console without notes).
    fn show_note(&self, user_id: &str, microsoft_user_id: &str, note: &TeamsNote) {
        let _ = (user_id, microsoft_user_id, note);
    }

    /// The absences in force now (a message, and when each ends): the host replays them to
    /// the plugin after a restart, as it does the calls. The default: none (a switchboard
    /// without absences).
    fn absences_in_progress(&self) -> Vec<AbsenceEvent> {
        Vec::new()
    }
}

/// The wire name of a presence origin (`teams`, `own-line-status`, `snapshot`).
pub fn origin_name(o: PresenceOrigin) -> &'static str {
    match o {
        PresenceOrigin::Teams => "teams",
        PresenceOrigin::OwnLineStatus => "own-line-status",
        PresenceOrigin::Snapshot => "snapshot",
    }
}

/// A line state from its wire name (`idle`, `ringing`, `connected`, `on-hold`, `ended`).
pub fn line_state(s: &str) -> Option<LineState> {
    Some(match s {
        "idle" => LineState::Idle,
        "ringing" => LineState::Ringing,
        "connected" => LineState::Connected,
        "on-hold" => LineState::OnHold,
        "ended" => LineState::Ended,
        _ => return None,
    })
}

/// Where a host finds each integration's switchboard: at start, and when an operator adds an
/// integration at run time (the admin API). A platform maps the integration to its customer's
/// switchboard; a map by integration name (`BTreeMap<String, Arc<dyn Switchboard>>`) serves a
/// host whose integrations are all known at start.
pub trait Switchboards: Send + Sync + 'static {
    /// The switchboard of `integration`; an error refuses the integration (at start, or the
    /// admin API's create) with that reason.
    fn switchboard(&self, integration: &crate::config::IntegrationConfig) -> anyhow::Result<Arc<dyn Switchboard>>;

    /// The integration was deleted: every user it showed was withdrawn (when its plugin could
    /// retire, see WIT `admin.retire`); the platform may let go of what it holds for it.
    fn removed(&self, _integration: &str) {}
}

impl Switchboards for std::collections::BTreeMap<String, Arc<dyn Switchboard>> {
    fn switchboard(&self, integration: &crate::config::IntegrationConfig) -> anyhow::Result<Arc<dyn Switchboard>> {
        self.get(&integration.name).cloned().ok_or_else(|| anyhow::anyhow!("no switchboard was given for it"))
    }
}

impl<T: Switchboards> Switchboards for Arc<T> {
    fn switchboard(&self, integration: &crate::config::IntegrationConfig) -> anyhow::Result<Arc<dyn Switchboard>> {
        (**self).switchboard(integration)
    }
    fn removed(&self, integration: &str) {
        (**self).removed(integration)
    }
}
