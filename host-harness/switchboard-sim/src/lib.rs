//! # switchboard-sim
//!
//! The switchboard simulator: the switchboard's users (from a CSV) and what its operator
//! console shows of each user's Teams presence; its lines' states. It implements
//! presence-host's [`presence_host::Switchboard`] backend, so the plugin reads these users
//! through the `directory` import and shows presence through the `presence` import, and it
//! serves its own HTTP routes ([`routes`]): what the console shows, and line events.

mod routes;

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;

use anyhow::Context;
use presence_host::switchboard::{self as seam, LineEvent, PresenceUpdate, SwitchboardUser, UnknownUser};
use serde::Serialize;

pub use routes::routes;

/// A switchboard user.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct User {
    /// Switchboard id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Addresses.
    pub emails: Vec<String>,
    /// Line number.
    pub line_number: Option<String>,
    /// Has a line.
    pub active: bool,
}

/// The Teams presence shown for a user.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Shown {
    /// Availability.
    pub availability: String,
    /// Activity.
    pub activity: String,
    /// `teams`, `own-line-status` or `snapshot`.
    pub origin: String,
    /// The Microsoft user.
    pub microsoft_user_id: String,
    /// When the plugin learnt it (ms since epoch).
    pub observed_at_ms: u64,
    /// How many updates this user received.
    pub updates: u64,
}

/// One customer's switchboard.
#[derive(Default)]
pub struct Switchboard {
    users: Vec<User>,
    /// User id → index in `users`; normalised email → indexes.
    by_id: HashMap<String, usize>,
    by_email: HashMap<String, Vec<usize>>,
    presence: RwLock<HashMap<String, Shown>>,
    /// User id → line state and when it began.
    lines: RwLock<HashMap<String, (String, u64)>>,
    changed: tokio::sync::Notify,
    /// (user id, origin) → updates received.
    by_origin: std::sync::Mutex<HashMap<(String, String), u64>>,
    /// While on (benchmarks): every publish with the moment it arrived.
    recording: std::sync::Mutex<Option<Vec<Published>>>,
}

/// One recorded publish: user, availability, activity, when it arrived.
pub type Published = (String, String, String, std::time::Instant);

impl Switchboard {
    /// A switchboard with these users.
    pub fn new(users: Vec<User>) -> Self {
        let by_id = users.iter().enumerate().map(|(i, u)| (u.id.clone(), i)).collect();
        let mut by_email: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, u) in users.iter().enumerate() {
            for e in &u.emails {
                by_email.entry(e.trim().to_lowercase()).or_default().push(i);
            }
        }
        Switchboard { users, by_id, by_email, ..Default::default() }
    }

    /// Loads users from a CSV with a header `id,name,email,line_number[,active]`. Several
    /// addresses go in `email` separated by `;`. An empty `line_number` makes a passive user.
    pub fn from_csv(path: &Path) -> anyhow::Result<Self> {
        let mut r = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
        let mut users = Vec::new();
        for (i, rec) in r.records().enumerate() {
            let rec = rec.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
            let field = |n: usize| rec.get(n).map(str::trim).unwrap_or("");
            if field(0).is_empty() {
                anyhow::bail!("{}: row {}: id is empty", path.display(), i + 2);
            }
            let line = field(3);
            users.push(User {
                id: field(0).into(),
                name: field(1).into(),
                emails: field(2).split(';').map(str::trim).filter(|e| !e.is_empty()).map(Into::into).collect(),
                line_number: (!line.is_empty()).then(|| line.to_string()),
                active: match field(4) {
                    "" => !line.is_empty(),
                    v => v.eq_ignore_ascii_case("true") || v == "1",
                },
            });
        }
        Ok(Switchboard::new(users))
    }

    /// Writes users as CSV (for the demo and tests).
    pub fn write_csv(path: &Path, users: &[User]) -> anyhow::Result<()> {
        let mut w = csv::Writer::from_path(path)?;
        w.write_record(["id", "name", "email", "line_number", "active"])?;
        for u in users {
            w.write_record([
                u.id.as_str(),
                &u.name,
                &u.emails.join(";"),
                u.line_number.as_deref().unwrap_or(""),
                if u.active { "true" } else { "false" },
            ])?;
        }
        w.flush()?;
        Ok(())
    }

    /// All users.
    pub fn users(&self) -> Vec<User> {
        self.users.clone()
    }

    /// Users from position `start`, at most `count` of them.
    pub fn users_page(&self, start: usize, count: usize) -> Vec<User> {
        self.users.iter().skip(start).take(count).cloned().collect()
    }

    /// Users carrying `email` (trimmed, case-insensitive).
    pub fn find_by_email(&self, email: &str) -> Vec<User> {
        let users = &self.users;
        let found = self.by_email.get(&email.trim().to_lowercase());
        found.into_iter().flatten().map(|&i| users[i].clone()).collect()
    }

    /// Whether a user exists.
    pub fn has_user(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// A user by id.
    pub fn user(&self, id: &str) -> Option<User> {
        self.by_id.get(id).map(|&i| self.users[i].clone())
    }

    /// Shows a presence (called through the plugin's `presence.publish`).
    pub fn publish(&self, user_id: &str, mut shown: Shown) {
        if let Some(log) = self.recording.lock().unwrap().as_mut() {
            let at = std::time::Instant::now();
            log.push((user_id.to_string(), shown.availability.clone(), shown.activity.clone(), at));
        }
        *self.by_origin.lock().unwrap().entry((user_id.to_string(), shown.origin.clone())).or_default() += 1;
        let mut p = self.presence.write().unwrap();
        shown.updates = p.get(user_id).map_or(0, |s| s.updates) + 1;
        p.insert(user_id.to_string(), shown);
        drop(p);
        self.changed.notify_waiters();
    }

    /// Starts recording every publish with its arrival time (benchmarks).
    pub fn start_recording(&self) {
        *self.recording.lock().unwrap() = Some(Vec::new());
    }

    /// Stops recording and returns what was recorded.
    pub fn take_recording(&self) -> Vec<Published> {
        self.recording.lock().unwrap().take().unwrap_or_default()
    }

    /// How many updates of this origin (`teams`, `snapshot`, `own-line-status`) the user got.
    pub fn updates_from(&self, user_id: &str, origin: &str) -> u64 {
        self.by_origin.lock().unwrap().get(&(user_id.to_string(), origin.to_string())).copied().unwrap_or(0)
    }

    /// Records a user's line state (`idle`, `ringing`, `connected`, `on-hold`, `ended`), and
    /// when it changed (ms since the epoch).
    pub fn set_line(&self, user_id: &str, state: &str, at_ms: u64) {
        self.lines.write().unwrap().insert(user_id.to_string(), (state.to_string(), at_ms));
    }

    /// What the console shows for a user.
    pub fn shown(&self, user_id: &str) -> Option<Shown> {
        self.presence.read().unwrap().get(user_id).cloned()
    }

    /// What the console shows for every user with a presence.
    pub fn all_shown(&self) -> HashMap<String, Shown> {
        self.presence.read().unwrap().clone()
    }

    /// Waits until something is published (or `timeout`).
    pub async fn wait_change(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.changed.notified()).await;
    }
}

impl seam::Switchboard for Switchboard {
    fn users_page(&self, start: usize, count: usize) -> Vec<SwitchboardUser> {
        self.users_page(start, count)
            .into_iter()
            .map(|u| SwitchboardUser {
                id: u.id,
                display_name: u.name,
                emails: u.emails,
                line_number: u.line_number,
                active: u.active,
            })
            .collect()
    }

    fn publish(&self, u: PresenceUpdate) -> Result<(), UnknownUser> {
        if !self.has_user(&u.user_id) {
            return Err(UnknownUser(u.user_id));
        }
        Switchboard::publish(
            self,
            &u.user_id,
            Shown {
                availability: u.presence.availability,
                activity: u.presence.activity,
                origin: seam::origin_name(u.origin).into(),
                microsoft_user_id: u.microsoft_user_id,
                observed_at_ms: u.observed_at_ms,
                updates: 0,
            },
        );
        Ok(())
    }

    fn calls_in_progress(&self) -> Vec<LineEvent> {
        self.lines
            .read()
            .unwrap()
            .iter()
            .filter(|(_, (s, _))| *s == "connected" || *s == "on-hold")
            .filter_map(|(u, (s, at_ms))| {
                Some(LineEvent { user_id: u.clone(), state: seam::line_state(s)?, at_ms: *at_ms })
            })
            .collect()
    }
}

/// One simulator per integration of `config`: its `switchboard_csv`, or none (no users).
pub fn from_config(
    config: &presence_host::Config,
) -> anyhow::Result<std::collections::BTreeMap<String, std::sync::Arc<Switchboard>>> {
    config
        .integrations
        .iter()
        .map(|ic| {
            let sb = match &ic.switchboard_csv {
                Some(p) => Switchboard::from_csv(p).with_context(|| format!("integration {}", ic.name))?,
                None => Switchboard::default(),
            };
            Ok((ic.name.clone(), std::sync::Arc::new(sb)))
        })
        .collect()
}
