//! What the core knows of each Microsoft user's Teams presence: the last presence taken as
//! the user's own, and the last sequence number Graph gave it, in one compact record per user.
//!
//! At 100,000 users this is one of the largest things an instance holds, so:
//! - one map holds both (one key per user, not one per map);
//! - a presence whose two words are among Graph's documented values (spelt exactly as Graph
//!   sent them) is two one-byte indexes into [`WORDS`]; any other spelling is kept as sent;
//! - the map is sized for the mapped users when a mapping is built
//!   ([`Known::reserve_for`]), so that it does not double, and rehash every user, inside the
//!   call that applies a presence read.

use std::collections::HashMap;

use crate::mapping::Id;
use crate::model::TeamsPresence;

/// Graph's documented availability and activity values (both lists, one table).
const WORDS: [&str; 20] = [
    "Available",
    "AvailableIdle",
    "Away",
    "BeRightBack",
    "Busy",
    "BusyIdle",
    "DoNotDisturb",
    "Offline",
    "PresenceUnknown",
    "InACall",
    "InAConferenceCall",
    "Inactive",
    "InAMeeting",
    "OffWork",
    "OutOfOffice",
    "Presenting",
    "UrgentInterruptionsOnly",
    "Focusing",
    "AvailableInactive",
    "Unknown",
];

fn word(w: &str) -> Option<u8> {
    WORDS.iter().position(|k| *k == w).map(|i| i as u8)
}

/// A presence, compact.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Words {
    /// Availability and activity, as indexes into [`WORDS`].
    Known(u8, u8),
    /// Any other spelling, as sent.
    Other(Box<TeamsPresence>),
}

impl Words {
    fn of(p: &TeamsPresence) -> Words {
        match (word(&p.availability), word(&p.activity)) {
            (Some(a), Some(b)) => Words::Known(a, b),
            _ => Words::Other(Box::new(p.clone())),
        }
    }
    fn pair(&self) -> (&str, &str) {
        match self {
            Words::Known(a, b) => (WORDS[*a as usize], WORDS[*b as usize]),
            Words::Other(p) => (&p.availability, &p.activity),
        }
    }
}

/// One user's record.
#[derive(Clone, Debug, Default)]
struct Seen {
    /// The last presence taken as the user's own (never our own call session's).
    presence: Option<Words>,
    /// The last `sequenceNumber` (lexicographically ordered).
    sequence: Option<Box<str>>,
}

/// Presence and sequence number by Microsoft user id.
#[derive(Debug, Default)]
pub(super) struct Known {
    users: HashMap<Id, Seen>,
}

impl Known {
    /// The last presence taken as `ms`'s own.
    pub(super) fn presence(&self, ms: &str) -> Option<TeamsPresence> {
        let (a, b) = self.users.get(ms)?.presence.as_ref()?.pair();
        Some(TeamsPresence { availability: a.to_string(), activity: b.to_string() })
    }

    /// Whether a presence of `ms` is known.
    pub(super) fn has_presence(&self, ms: &str) -> bool {
        self.users.get(ms).is_some_and(|s| s.presence.is_some())
    }

    /// Whether `ms`'s known presence is `availability`/`activity`, as spelt.
    pub(super) fn shows(&self, ms: &str, availability: &str, activity: &str) -> bool {
        self.users.get(ms).and_then(|s| s.presence.as_ref()).is_some_and(|w| w.pair() == (availability, activity))
    }

    /// The availability of `ms`'s known presence.
    pub(super) fn availability(&self, ms: &str) -> Option<&str> {
        Some(self.users.get(ms)?.presence.as_ref()?.pair().0)
    }

    /// `ms`'s record, made when it has none (the key cloned only then).
    fn record(&mut self, ms: &Id) -> &mut Seen {
        if !self.users.contains_key(&**ms) {
            self.users.insert(ms.clone(), Seen::default());
        }
        self.users.get_mut(&**ms).expect("just made")
    }

    pub(super) fn set_presence(&mut self, ms: &Id, p: &TeamsPresence) {
        self.record(ms).presence = Some(Words::of(p));
    }

    /// Forgets `ms`'s presence (its sequence number stays).
    #[cfg(test)]
    pub(super) fn forget_presence(&mut self, ms: &str) {
        if let Some(s) = self.users.get_mut(ms) {
            s.presence = None;
        }
    }

    /// The last sequence number of `ms`.
    pub(super) fn sequence(&self, ms: &str) -> Option<&str> {
        self.users.get(ms)?.sequence.as_deref()
    }

    pub(super) fn set_sequence(&mut self, ms: &Id, seq: &str) {
        self.record(ms).sequence = Some(seq.into());
    }

    /// Forgets all of `ms`.
    pub(super) fn forget(&mut self, ms: &str) {
        self.users.remove(ms);
    }

    /// Makes room for `mapped` users at once (a mapping was built), so that the map does not
    /// grow one doubling at a time while their presence comes in.
    pub(super) fn reserve_for(&mut self, mapped: usize) {
        self.users.reserve(mapped.saturating_sub(self.users.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        s.into()
    }

    fn p(a: &str, b: &str) -> TeamsPresence {
        TeamsPresence { availability: a.into(), activity: b.into() }
    }

    #[test]
    fn presences_come_back_as_spelt_whether_documented_or_not() {
        let mut k = Known::default();
        k.set_presence(&id("u1"), &p("Busy", "InACall"));
        k.set_presence(&id("u2"), &p("busy", "InACall"));
        k.set_presence(&id("u3"), &p("Available", "SomethingNew"));
        assert_eq!(k.presence("u1"), Some(p("Busy", "InACall")));
        assert!(matches!(k.users["u1"].presence, Some(Words::Known(..))));
        assert_eq!(k.presence("u2"), Some(p("busy", "InACall")), "another spelling is kept as sent");
        assert_eq!(k.presence("u3"), Some(p("Available", "SomethingNew")));
        assert!(k.shows("u1", "Busy", "InACall") && !k.shows("u1", "busy", "InACall"));
        assert_eq!(k.availability("u2"), Some("busy"));
        assert_eq!(k.presence("u4"), None);
    }

    #[test]
    fn presence_and_sequence_are_kept_and_forgotten_apart() {
        let mut k = Known::default();
        k.set_sequence(&id("u1"), "0002");
        assert!(!k.has_presence("u1"));
        k.set_presence(&id("u1"), &p("Away", "Away"));
        assert_eq!(k.sequence("u1"), Some("0002"));
        k.forget_presence("u1");
        assert_eq!((k.presence("u1"), k.sequence("u1")), (None, Some("0002")));
        k.set_presence(&id("u1"), &p("Away", "Away"));
        k.forget("u1");
        assert_eq!((k.presence("u1"), k.sequence("u1")), (None, None));
        k.reserve_for(1000);
        assert!(k.users.capacity() >= 1000);
    }
}
