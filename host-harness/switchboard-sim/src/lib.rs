//! # switchboard-sim
//!
//! The switchboard simulator: the switchboard's users (from a CSV) and what its operator
//! console shows of each user's Teams presence; its lines' states. It implements
//! presence-host's [`presence_host::Switchboard`] backend, so the plugin reads these users
//! through the `directory` import and shows presence through the `presence` import, and it
//! serves its own HTTP routes ([`routes`]): what the console shows, and line events.

mod directory;
mod routes;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use presence_host::switchboard::{self as seam, LineEvent, PresenceUpdate, SwitchboardUser, UnknownUser};
use serde::Serialize;

pub use directory::{MAX_FIELD, Summary, User, read_csv};
pub use routes::routes;

/// The environment variable naming a journal file (see [`Journal`]).
pub const JOURNAL_ENV: &str = "PRESENCE_SWITCHBOARD_JOURNAL";

/// How often a watched CSV's size and modification time are looked at.
pub const CSV_POLL: Duration = Duration::from_secs(1);

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
pub struct Switchboard {
    /// The users; a change swaps in a new directory, so a reader never waits for a writer
    /// and never sees half a change.
    dir: RwLock<Arc<directory::Directory>>,
    /// The directory's change counter (WIT `directory.revision`): moves with every change
    /// that changed something.
    revision: AtomicU64,
    /// Changes are made one at a time (the counter moves once per change). Holds the CSV
    /// the users live in, if any ([`Switchboard::watch_csv`]): changes through the API are
    /// written there.
    writing: std::sync::Mutex<Option<PathBuf>>,
    presence: RwLock<HashMap<String, Shown>>,
    /// User id → line state and when it began.
    lines: RwLock<HashMap<String, (String, u64)>>,
    changed: tokio::sync::Notify,
    /// (user id, origin) → updates received.
    by_origin: std::sync::Mutex<HashMap<(String, String), u64>>,
    /// While on (benchmarks): every publish with the moment it arrived.
    recording: std::sync::Mutex<Option<Vec<Published>>>,
    /// Re-reads of the watched CSV that failed, and why the last one did.
    csv_errors: AtomicU64,
    last_csv_error: std::sync::Mutex<Option<String>>,
    /// The fence rule of a switchboard that several hosts feed (see
    /// [`seam::Switchboard::publish_fenced`]): the greatest token taken, and the updates
    /// dropped under a smaller one. Held while an update is shown, so that the order of the
    /// decisions is the order of what is shown.
    fence: std::sync::Mutex<FenceState>,
    /// Where every update is also written, if anywhere.
    journal: std::sync::Mutex<Option<Journal>>,
    /// User id → the Teams note (status message, out of office) the console shows.
    notes: RwLock<HashMap<String, Note>>,
    /// User id → the absence in force (message, until ms).
    absences: RwLock<HashMap<String, (String, Option<u64>)>>,
}

/// A Teams status message and out of office, as the console shows them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Note {
    /// The status message.
    pub status_message: Option<String>,
    /// When it expires (ms since the epoch).
    pub status_message_expires_ms: Option<u64>,
    /// Out of office.
    pub out_of_office: bool,
    /// The out-of-office message.
    pub out_of_office_message: Option<String>,
    /// The status message was set by the plugin from this switchboard's absence.
    pub set_by_plugin: bool,
}

#[derive(Default)]
struct FenceState {
    greatest: Option<i64>,
    stale: u64,
}

/// A journal of every update a switchboard takes, one JSON object a line, appended to a file
/// (workshop: the fleet tests give each host process's simulator the same file, named by
/// [`JOURNAL_ENV`], and read it as what one switchboard that all hosts feed would have
/// received, in order: each line is one `write` to a file opened for appending, so lines
/// of different processes never mix and their order is the order of the writes).
///
/// A line: `{"integration", "op": "publish"|"withdraw", "user", "microsoft_user",
/// "availability", "activity", "origin", "host", "token", "dropped"}`; `host` and `token` are null outside a fleet;
/// `dropped`: refused under a smaller token than one taken before (by this process).
pub struct Journal {
    integration: String,
    file: std::fs::File,
}

impl Journal {
    /// Appends to `path` (created if missing) for `integration`.
    pub fn open(path: &Path, integration: &str) -> anyhow::Result<Journal> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the switchboard journal {}", path.display()))?;
        Ok(Journal { integration: integration.to_string(), file })
    }

    fn write(&mut self, line: serde_json::Value) {
        use std::io::Write;
        let mut l = serde_json::Value::Object(
            [("integration".to_string(), serde_json::Value::String(self.integration.clone()))].into_iter().collect(),
        );
        if let (Some(o), serde_json::Value::Object(add)) = (l.as_object_mut(), line) {
            o.extend(add);
        }
        let mut bytes = l.to_string().into_bytes();
        bytes.push(b'\n');
        // One write of the whole line.
        if let Err(e) = self.file.write_all(&bytes) {
            tracing::warn!("the switchboard journal was not written: {e}");
        }
    }
}

impl Default for Switchboard {
    fn default() -> Self {
        Switchboard {
            dir: RwLock::default(),
            revision: AtomicU64::new(1),
            writing: std::sync::Mutex::default(),
            presence: RwLock::default(),
            lines: RwLock::default(),
            changed: tokio::sync::Notify::new(),
            by_origin: std::sync::Mutex::default(),
            recording: std::sync::Mutex::default(),
            csv_errors: AtomicU64::new(0),
            last_csv_error: std::sync::Mutex::default(),
            fence: std::sync::Mutex::default(),
            journal: std::sync::Mutex::default(),
            notes: RwLock::default(),
            absences: RwLock::default(),
        }
    }
}

/// One recorded publish: user, availability, activity, when it arrived.
pub type Published = (String, String, String, std::time::Instant);

impl Switchboard {
    /// A switchboard with these users.
    ///
    /// # Panics
    /// If a user is invalid or two share an id (see [`Switchboard::try_new`]).
    pub fn new(users: Vec<User>) -> Self {
        Switchboard::try_new(users).expect("valid switchboard users")
    }

    /// A switchboard with these users, or why they cannot be taken.
    pub fn try_new(users: Vec<User>) -> anyhow::Result<Self> {
        let n = users.len();
        let dir = directory::Directory::new(users).map_err(anyhow::Error::msg)?;
        // Sized for every user at once: growing it a doubling at a time rehashes every user
        // inside the publish that crosses the size, which a platform's console would not do
        // (it counted as 30 ms of the plugin's call at 100,000 users).
        Ok(Switchboard {
            dir: RwLock::new(Arc::new(dir)),
            presence: RwLock::new(HashMap::with_capacity(n)),
            by_origin: std::sync::Mutex::new(HashMap::with_capacity(n)),
            notes: RwLock::new(HashMap::with_capacity(n)),
            ..Default::default()
        })
    }

    /// Loads users from a CSV with a header `id,name,email,line_number[,active]` (see
    /// [`read_csv`]).
    pub fn from_csv(path: &Path) -> anyhow::Result<Self> {
        Switchboard::try_new(read_csv(path)?).with_context(|| path.display().to_string())
    }

    /// Writes users as CSV (for the demo and tests), atomically.
    pub fn write_csv(path: &Path, users: &[User]) -> anyhow::Result<()> {
        directory::write_csv(path, users)
    }

    fn snapshot(&self) -> Arc<directory::Directory> {
        self.dir.read().unwrap().clone()
    }

    /// The directory's change counter.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Adds or replaces (by id) the users of `upsert` and removes those of `remove`, all or
    /// nothing. Users who stay keep their place; new ones go at the end. Returns what changed
    /// (the change counter moves only if something did), or why nothing was changed.
    /// With a CSV ([`Switchboard::watch_csv`]), the change is written there first; if that
    /// fails, nothing changes.
    pub fn change(&self, upsert: Vec<User>, remove: &[String]) -> Result<Summary, String> {
        self.swap(true, |d| d.changed(upsert, remove))
    }

    /// Replaces all users (a re-read CSV), keeping what did not change.
    pub fn replace_all(&self, users: Vec<User>) -> Result<Summary, String> {
        self.swap(false, |d| d.replaced(users))
    }

    fn swap(
        &self,
        to_csv: bool,
        f: impl FnOnce(&directory::Directory) -> Result<(directory::Directory, Summary), String>,
    ) -> Result<Summary, String> {
        let csv = self.writing.lock().unwrap();
        let old = self.snapshot();
        let (next, summary) = f(&old)?;
        if summary.any() {
            if let (true, Some(path)) = (to_csv, csv.as_ref()) {
                directory::write_csv(path, &next.users).map_err(|e| format!("{e:#}; nothing was changed"))?;
            }
            let gone: Vec<String> =
                old.users.iter().filter(|u| !next.by_id.contains_key(&u.id)).map(|u| u.id.clone()).collect();
            *self.dir.write().unwrap() = Arc::new(next);
            self.revision.fetch_add(1, Ordering::AcqRel);
            // A removed user is no longer in the console: nothing shown, no line.
            if !gone.is_empty() {
                let mut p = self.presence.write().unwrap();
                let mut l = self.lines.write().unwrap();
                for id in &gone {
                    p.remove(id);
                    l.remove(id);
                }
            }
        }
        Ok(summary)
    }

    /// Makes `path` (the CSV these users came from) their home: changes through the API are
    /// written to it (atomically), and it is re-read whenever its size or modification time
    /// changed and then stood still for one look (looked at every [`CSV_POLL`]), until this
    /// switchboard is dropped. A file that
    /// does not parse is reported in the log and changes nothing: the users stay as they
    /// were until a good file is there. Polling rather than file-system events: it works the
    /// same on every file system (network mounts and container volumes included) and whether
    /// an editor writes in place or renames a new file over the old one.
    pub fn watch_csv(self: &Arc<Self>, path: PathBuf) -> tokio::task::JoinHandle<()> {
        *self.writing.lock().unwrap() = Some(path.clone());
        let me: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let stamp = |p: &Path| -> Option<(SystemTime, u64)> {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len()))
            };
            let mut seen = stamp(&path);
            // A change is read once the file has stood still for a poll: never half of a file
            // an editor or a script is still writing.
            let mut moving = None;
            loop {
                tokio::time::sleep(CSV_POLL).await;
                let Some(sb) = me.upgrade() else { return };
                let now = stamp(&path);
                if now == seen {
                    moving = None;
                    continue;
                }
                if moving != Some(now) {
                    moving = Some(now);
                    continue;
                }
                moving = None;
                seen = now;
                let read = read_csv(&path).and_then(|users| sb.replace_all(users).map_err(anyhow::Error::msg));
                if read.is_ok() {
                    *sb.last_csv_error.lock().unwrap() = None;
                }
                match read {
                    Ok(s) if s.any() => tracing::info!(
                        file = %path.display(), added = s.added, changed = s.changed, removed = s.removed,
                        "switchboard users re-read"
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        let why = format!("{e:#}");
                        tracing::warn!(file = %path.display(), error = %why,
                            "switchboard CSV not taken; the users stay as they were");
                        *sb.last_csv_error.lock().unwrap() = Some(why);
                        sb.csv_errors.fetch_add(1, Ordering::AcqRel);
                    }
                }
            }
        })
    }

    /// How many re-reads of the watched CSV failed (the users stayed as they were).
    pub fn csv_errors(&self) -> u64 {
        self.csv_errors.load(Ordering::Acquire)
    }

    /// Why the last re-read of the watched CSV failed, until one succeeds.
    pub fn last_csv_error(&self) -> Option<String> {
        self.last_csv_error.lock().unwrap().clone()
    }

    /// All users.
    pub fn users(&self) -> Vec<User> {
        self.snapshot().users.clone()
    }

    /// How many users.
    pub fn len(&self) -> usize {
        self.snapshot().users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Users from position `start`, at most `count` of them.
    pub fn users_page(&self, start: usize, count: usize) -> Vec<User> {
        self.snapshot().users.iter().skip(start).take(count).cloned().collect()
    }

    /// Users carrying `email` (trimmed, case-insensitive).
    pub fn find_by_email(&self, email: &str) -> Vec<User> {
        let d = self.snapshot();
        let found = d.by_email.get(&email.trim().to_lowercase());
        found.into_iter().flatten().map(|&i| d.users[i].clone()).collect()
    }

    /// Whether a user exists.
    pub fn has_user(&self, id: &str) -> bool {
        self.snapshot().by_id.contains_key(id)
    }

    /// A user by id.
    pub fn user(&self, id: &str) -> Option<User> {
        let d = self.snapshot();
        d.by_id.get(id).map(|&i| d.users[i].clone())
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

    /// Writes every update from now on to `journal` too.
    pub fn set_journal(&self, journal: Journal) {
        *self.journal.lock().unwrap() = Some(journal);
    }

    /// Updates dropped because they came under a smaller fencing token than one taken before
    /// (see [`seam::Switchboard::publish_fenced`]).
    pub fn stale_dropped(&self) -> u64 {
        self.fence.lock().unwrap().stale
    }

    /// Applies the fence rule to an update under `fence` (none: one host) and journals it;
    /// answers whether it is shown. Called with the fence state locked.
    fn admit(
        &self,
        f: &mut FenceState,
        op: &str,
        user: &str,
        update: Option<&PresenceUpdate>,
        fence: Option<&seam::Fence>,
    ) -> bool {
        let dropped = match (fence, f.greatest) {
            (Some(fc), Some(g)) => fc.token < g,
            _ => false,
        };
        if let Some(j) = self.journal.lock().unwrap().as_mut() {
            j.write(serde_json::json!({
                "op": op, "user": user,
                "microsoft_user": update.map_or("", |u| u.microsoft_user_id.as_str()),
                "availability": update.map_or("", |u| u.presence.availability.as_str()),
                "activity": update.map_or("", |u| u.presence.activity.as_str()),
                "origin": update.map_or("", |u| seam::origin_name(u.origin)),
                "host": fence.map(|f| f.host.clone()), "token": fence.map(|f| f.token), "dropped": dropped,
            }));
        }
        if dropped {
            f.stale += 1;
            return false;
        }
        if let Some(fc) = fence {
            f.greatest = Some(fc.token);
        }
        true
    }

    fn show(&self, u: PresenceUpdate, fence: Option<&seam::Fence>) -> Result<(), UnknownUser> {
        if !self.has_user(&u.user_id) {
            return Err(UnknownUser(u.user_id));
        }
        let mut f = self.fence.lock().unwrap();
        if !self.admit(&mut f, "publish", &u.user_id, Some(&u), fence) {
            return Ok(());
        }
        let origin = seam::origin_name(u.origin);
        Switchboard::publish(
            self,
            &u.user_id,
            Shown {
                availability: u.presence.availability,
                activity: u.presence.activity,
                origin: origin.into(),
                microsoft_user_id: u.microsoft_user_id,
                observed_at_ms: u.observed_at_ms,
                updates: 0,
            },
        );
        Ok(())
    }

    fn hide(&self, user_id: &str, fence: Option<&seam::Fence>) {
        let mut f = self.fence.lock().unwrap();
        if self.admit(&mut f, "withdraw", user_id, None, fence)
            && (self.presence.write().unwrap().remove(user_id).is_some()
                | self.notes.write().unwrap().remove(user_id).is_some())
        {
            self.changed.notify_waiters();
        }
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

    /// The Teams note the console shows for a user.
    pub fn note(&self, user_id: &str) -> Option<Note> {
        self.notes.read().unwrap().get(user_id).cloned()
    }

    /// Records a user's absence (`None`: it ended).
    pub fn set_absence(&self, user_id: &str, absence: Option<(String, Option<u64>)>) {
        let mut a = self.absences.write().unwrap();
        match absence {
            Some(x) => a.insert(user_id.to_string(), x),
            None => a.remove(user_id),
        };
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
    fn revision(&self) -> u64 {
        Switchboard::revision(self)
    }

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
        self.show(u, None)
    }

    fn publish_fenced(&self, u: PresenceUpdate, fence: &seam::Fence) -> Result<(), UnknownUser> {
        self.show(u, Some(fence))
    }

    fn withdraw(&self, user_id: &str) {
        self.hide(user_id, None)
    }

    fn withdraw_fenced(&self, user_id: &str, fence: &seam::Fence) {
        self.hide(user_id, Some(fence))
    }

    fn show_note(&self, user_id: &str, _microsoft_user_id: &str, note: &seam::TeamsNote) {
        let n = Note {
            status_message: note.status_message.clone(),
            status_message_expires_ms: note.status_message_expires_ms,
            out_of_office: note.out_of_office,
            out_of_office_message: note.out_of_office_message.clone(),
            set_by_plugin: note.set_by_plugin,
        };
        self.notes.write().unwrap().insert(user_id.to_string(), n);
        self.changed.notify_waiters();
    }

    fn absences_in_progress(&self) -> Vec<seam::AbsenceEvent> {
        self.absences
            .read()
            .unwrap()
            .iter()
            .map(|(u, (m, until))| seam::AbsenceEvent { user_id: u.clone(), message: m.clone(), until_ms: *until })
            .collect()
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

/// The simulator's switchboards, by integration name: the host's [`seam::Switchboards`]. An
/// integration added at run time (the admin API) gets its `switchboard_csv`, watched for
/// changes, or an empty switchboard; one that already has a switchboard here (put there with
/// [`Switchboards::insert`]) gets that one. A deleted integration's switchboard stays: the
/// customer's switchboard outlives the integration, and shows its users without Teams.
#[derive(Default)]
pub struct Switchboards {
    map: RwLock<BTreeMap<String, Arc<Switchboard>>>,
    /// Each new switchboard writes a [`Journal`] here.
    journal: Option<PathBuf>,
}

impl Switchboards {
    /// These switchboards.
    pub fn new(map: BTreeMap<String, Arc<Switchboard>>) -> Arc<Switchboards> {
        Arc::new(Switchboards { map: RwLock::new(map), journal: None })
    }

    /// Integration `name`'s switchboard.
    pub fn get(&self, name: &str) -> Option<Arc<Switchboard>> {
        self.map.read().unwrap().get(name).cloned()
    }

    /// Gives integration `name` this switchboard (before it is created).
    pub fn insert(&self, name: &str, sb: Arc<Switchboard>) {
        self.map.write().unwrap().insert(name.to_string(), sb);
    }

    /// The switchboard of `ic`: the one it has, else a new one (see the type's docs).
    pub fn for_integration(&self, ic: &presence_host::config::IntegrationConfig) -> anyhow::Result<Arc<Switchboard>> {
        if let Some(sb) = self.get(&ic.name) {
            return Ok(sb);
        }
        let sb = match &ic.switchboard_csv {
            Some(p) => {
                let sb = Arc::new(Switchboard::from_csv(p).with_context(|| format!("integration {}", ic.name))?);
                sb.watch_csv(p.clone());
                sb
            }
            None => Arc::new(Switchboard::default()),
        };
        if let Some(path) = &self.journal {
            sb.set_journal(Journal::open(path, &ic.name)?);
        }
        Ok(self.map.write().unwrap().entry(ic.name.clone()).or_insert(sb).clone())
    }
}

impl seam::Switchboards for Switchboards {
    fn switchboard(
        &self,
        integration: &presence_host::config::IntegrationConfig,
    ) -> anyhow::Result<Arc<dyn seam::Switchboard>> {
        Ok(self.for_integration(integration)?)
    }
}

/// One simulator per integration of `config`: its `switchboard_csv`, watched for changes
/// ([`Switchboard::watch_csv`]), or none (no users); each writes a [`Journal`] to the file
/// [`JOURNAL_ENV`] names, if set. Call it inside a tokio runtime.
pub fn from_config(config: &presence_host::Config) -> anyhow::Result<Arc<Switchboards>> {
    let journal = std::env::var_os(JOURNAL_ENV).map(PathBuf::from);
    let sims = Arc::new(Switchboards { journal, ..Default::default() });
    for ic in &config.integrations {
        sims.for_integration(ic)?;
    }
    Ok(sims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_host::switchboard::{Fence, PresenceOrigin, Switchboard as _, TeamsPresence};

    fn update(activity: &str) -> PresenceUpdate {
        PresenceUpdate {
            user_id: "a".into(),
            microsoft_user_id: "m".into(),
            presence: TeamsPresence { availability: "Busy".into(), activity: activity.into() },
            origin: PresenceOrigin::Teams,
            observed_at_ms: 1,
        }
    }

    /// Several hosts feed one switchboard: once an update under a greater token was shown,
    /// one under a smaller token (a host that lost the lease) is dropped, journalled as such.
    #[test]
    fn updates_under_an_older_lease_are_dropped_and_journalled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let user = User { id: "a".into(), name: "A".into(), emails: vec![], line_number: None, active: true };
        let sb = Switchboard::new(vec![user]);
        sb.set_journal(Journal::open(&path, "t0").unwrap());
        let (old, new) = (Fence { host: "h0".into(), token: 1 }, Fence { host: "h1".into(), token: 2 });
        sb.publish_fenced(update("InACall"), &old).unwrap();
        sb.publish_fenced(update("InAMeeting"), &new).unwrap();
        sb.publish_fenced(update("Stale"), &old).unwrap();
        sb.withdraw_fenced("a", &old);
        assert_eq!(sb.shown("a").unwrap().activity, "InAMeeting");
        assert_eq!(sb.stale_dropped(), 2);
        sb.publish_fenced(update("Presenting"), &new).unwrap();
        assert_eq!(sb.shown("a").unwrap().activity, "Presenting");
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let seen: Vec<_> = lines
            .iter()
            .map(|l| {
                (l["op"].as_str().unwrap(), l["activity"].as_str().unwrap(), l["token"].as_i64(), l["dropped"] == true)
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("publish", "InACall", Some(1), false),
                ("publish", "InAMeeting", Some(2), false),
                ("publish", "Stale", Some(1), true),
                ("withdraw", "", Some(1), true),
                ("publish", "Presenting", Some(2), false),
            ]
        );
        assert!(lines.iter().all(|l| l["integration"] == "t0"));
    }
}
