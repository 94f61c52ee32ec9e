//! The Microsoft directory: a full read, then `/users/delta` rounds (graph-facts.md §5).
//!
//! - A full resync first takes a "from now" anchor (`/users/delta?$deltatoken=latest`), then
//!   pages through `/users?$top=999`. Changes made while it pages come back in the next delta
//!   round (delta replays are expected and harmless), so nothing falls between the two.
//! - A delta round follows `@odata.nextLink` to the `@odata.deltaLink`, collecting changes, and
//!   applies them only when the round is complete. Users come back whole or partial (fields
//!   present overwrite, fields absent are kept) or as `@removed`.
//! - The deltaLink is stored with the directory, so a restart goes on from where it was.
//! - Full resyncs happen daily, on "Sync now", and when Graph says the delta state is gone
//!   (`410 Gone`, `syncStateNotFound`, `resyncRequired`).
//! - A failure anywhere discards the round whole: the last good directory and mapping stay,
//!   the status says "degraded" with the reason, and the round is retried with backoff.

use super::*;

/// Default interval between delta rounds.
pub const DEFAULT_DELTA_INTERVAL_MS: u64 = 60 * 1000;
/// Interval between full resyncs.
pub const FULL_RESYNC_MS: u64 = 24 * 60 * 60 * 1000;
/// The properties read.
pub const USER_SELECT: &str = "id,displayName,userPrincipalName,mail,proxyAddresses";

/// A directory fetch in progress.
#[derive(Debug)]
pub(super) enum DirFetch {
    /// Waiting for the anchor deltaLink of a full resync.
    Anchor,
    /// Paging `/users`; the anchor is where delta rounds start afterwards.
    Full { users: Vec<GraphUser>, anchor: String },
    /// Paging a delta round.
    Delta { changes: Vec<serde_json::Value> },
}

/// The users, stored only when a round changed them (at 100,000 users this is megabytes).
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct PersistedDirectory {
    pub fetched_at_ms: u64,
    pub users: Vec<GraphUser>,
}

/// Where delta rounds go on, stored after every round (small). Written after the users, so
/// a crash between the two replays changes (harmless) rather than skipping them.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct PersistedDeltaState {
    pub fetched_at_ms: u64,
    pub delta_link: String,
    pub full_at_ms: u64,
}

const STATE_DELTA: &str = "v1/directory-delta";

#[derive(Debug, Default)]
pub(super) struct Directory {
    pub fetching: Option<DirFetch>,
    pub users: Option<Vec<GraphUser>>,
    pub delta_link: Option<String>,
    /// When the next delta round is due.
    pub next_at: u64,
    /// When the next full resync is due.
    pub full_due_at: u64,
    pub last_ok_ms: Option<u64>,
    pub problem: Option<Problem>,
    pub retry: Backoff,
}

enum Failure {
    /// Retry later (backoff or Retry-After).
    Retry(Problem, Option<u64>),
    /// The delta state is gone: resync in full at once.
    Resync(String),
}

impl Core {
    pub(super) fn restore_directory(&mut self, env: &mut dyn Env) {
        if let Some(d) = env.load(STATE_DIRECTORY).and_then(|b| serde_json::from_slice::<PersistedDirectory>(&b).ok()) {
            self.dir.users = Some(d.users);
            self.dir.last_ok_ms = Some(d.fetched_at_ms);
            if let Some(s) = env.load(STATE_DELTA).and_then(|b| serde_json::from_slice::<PersistedDeltaState>(&b).ok())
            {
                self.dir.delta_link = Some(s.delta_link);
                self.dir.full_due_at = s.full_at_ms + FULL_RESYNC_MS;
                self.dir.last_ok_ms = Some(s.fetched_at_ms.max(d.fetched_at_ms));
            }
            self.rebuild_mapping(env);
        }
    }

    /// Asks for a full resync as soon as possible.
    pub(super) fn request_full_resync(&mut self) {
        self.dir.full_due_at = 0;
        self.dir.next_at = 0;
        self.dir.retry.succeed();
    }

    pub(super) fn drive_directory(&mut self, settings: &Settings, now: u64) {
        if self.dir.fetching.is_some() || now < self.dir.next_at.min(self.dir.full_due_at) {
            return;
        }
        if !self.dir.retry.ready(now) || !self.scope_ready(Scope::Directory, now) {
            return;
        }
        let Some(token) = self.app_token.access(now).map(str::to_owned) else { return };
        let full = self.dir.delta_link.is_none() || now >= self.dir.full_due_at;
        let url = if full {
            self.dir.fetching = Some(DirFetch::Anchor);
            format!("{}/v1.0/users/delta?$select={USER_SELECT}&$deltatoken=latest", settings.graph_base_url)
        } else {
            self.dir.fetching = Some(DirFetch::Delta { changes: Vec::new() });
            self.dir.delta_link.clone().unwrap()
        };
        self.start(Pending::UsersPage, get(&url, &token));
    }

    pub(super) fn on_users_page(
        &mut self,
        env: &mut dyn Env,
        settings: &Settings,
        outcome: Result<HttpResponse, HttpError>,
        now: u64,
        jitter: u8,
    ) {
        match self.users_page(settings, outcome, now) {
            Ok(None) => {}
            Ok(Some(done)) => self.directory_done(env, done, now),
            Err(Failure::Retry(p, retry_after)) => {
                self.log(
                    Level::Warn,
                    "directory read failed; keeping the last good mapping",
                    vec![("code".into(), p.code.clone())],
                );
                self.dir.fetching = None;
                self.dir.problem = Some(p);
                self.dir.retry.fail(now, retry_after, jitter);
            }
            Err(Failure::Resync(why)) => {
                self.log(Level::Warn, "directory delta state is gone; resyncing in full", vec![("why".into(), why)]);
                self.count("directory.resync-required");
                self.dir.fetching = None;
                self.dir.delta_link = None;
                self.request_full_resync();
            }
        }
    }

    /// Handles one page; `Ok(Some(..))` when the fetch is complete.
    fn users_page(
        &mut self,
        settings: &Settings,
        outcome: Result<HttpResponse, HttpError>,
        now: u64,
    ) -> Result<Option<DirFetch>, Failure> {
        #[derive(serde::Deserialize)]
        struct Page<T> {
            value: Vec<T>,
            #[serde(rename = "@odata.nextLink")]
            next_link: Option<String>,
            #[serde(rename = "@odata.deltaLink")]
            delta_link: Option<String>,
        }
        let what = match self.dir.fetching {
            Some(DirFetch::Full { .. }) => "GET /users",
            _ => "GET /users/delta",
        };
        let r = match outcome {
            Ok(r) if r.status == 200 => r,
            Ok(r) if matches!(self.dir.fetching, Some(DirFetch::Delta { .. })) && delta_state_gone(&r) => {
                return Err(Failure::Resync(format!("{what}: HTTP {}", r.status)));
            }
            other => {
                let (p, ra) = graph_failure(&other, what);
                return Err(Failure::Retry(p, ra));
            }
        };
        let malformed = |e: String| Failure::Retry(problem("malformed-response", format!("{what}: {e}")), None);
        let next = match self.dir.fetching.as_mut() {
            Some(DirFetch::Full { users, .. }) => {
                let page = serde_json::from_slice::<Page<GraphUser>>(&r.body).map_err(|e| malformed(e.to_string()))?;
                users.extend(page.value);
                page.next_link
            }
            Some(DirFetch::Delta { changes }) => {
                let page =
                    serde_json::from_slice::<Page<serde_json::Value>>(&r.body).map_err(|e| malformed(e.to_string()))?;
                changes.extend(page.value);
                match (page.next_link, page.delta_link) {
                    (Some(n), _) => Some(n),
                    (None, Some(d)) => {
                        check_link(settings, &d).map_err(malformed)?;
                        self.dir.delta_link = Some(d);
                        None
                    }
                    (None, None) => return Err(malformed("a page with neither nextLink nor deltaLink".into())),
                }
            }
            Some(DirFetch::Anchor) => {
                // The "latest" round may page too; only its deltaLink matters.
                let page =
                    serde_json::from_slice::<Page<serde_json::Value>>(&r.body).map_err(|e| malformed(e.to_string()))?;
                match (page.next_link, page.delta_link) {
                    (Some(n), _) => Some(n),
                    (None, Some(d)) => {
                        check_link(settings, &d).map_err(malformed)?;
                        self.dir.fetching = Some(DirFetch::Full { users: Vec::new(), anchor: d });
                        Some(format!("{}/v1.0/users?$select={USER_SELECT}&$top=999", settings.graph_base_url))
                    }
                    (None, None) => return Err(malformed("a page with neither nextLink nor deltaLink".into())),
                }
            }
            None => return Ok(None),
        };
        match next {
            Some(next) => {
                check_link(settings, &next).map_err(malformed)?;
                let Some(token) = self.app_token.access(now).map(str::to_owned) else {
                    return Err(Failure::Retry(
                        problem("token-expired", "app token expired while paging users; restarting"),
                        None,
                    ));
                };
                self.start(Pending::UsersPage, get(&next, &token));
                Ok(None)
            }
            None => Ok(self.dir.fetching.take()),
        }
    }

    fn directory_done(&mut self, env: &mut dyn Env, done: DirFetch, now: u64) {
        let changed = match done {
            DirFetch::Full { users, anchor } => {
                self.count("directory.full-resyncs");
                self.dir.delta_link = Some(anchor);
                self.dir.full_due_at = now + FULL_RESYNC_MS;
                self.dir.users = Some(users);
                true
            }
            DirFetch::Delta { changes } => {
                self.count("directory.delta-rounds");
                let n = changes.len();
                apply_delta(self.dir.users.get_or_insert_with(Vec::new), changes);
                n > 0
            }
            DirFetch::Anchor => false,
        };
        self.dir.problem = None;
        self.dir.retry.succeed();
        self.dir.next_at = now + self.delta_interval_ms();
        self.dir.last_ok_ms = Some(now);
        if changed {
            let persisted = PersistedDirectory { fetched_at_ms: now, users: self.dir.users.take().unwrap_or_default() };
            self.effects.push(Effect::Store {
                key: STATE_DIRECTORY.into(),
                value: Some(serde_json::to_vec(&persisted).unwrap()),
            });
            self.dir.users = Some(persisted.users);
        }
        if let Some(delta_link) = self.dir.delta_link.clone() {
            let state = PersistedDeltaState {
                fetched_at_ms: now,
                delta_link,
                full_at_ms: self.dir.full_due_at.saturating_sub(FULL_RESYNC_MS),
            };
            self.effects
                .push(Effect::Store { key: STATE_DELTA.into(), value: Some(serde_json::to_vec(&state).unwrap()) });
        }
        // Rebuilt on every round, changed or not: switchboard users come and go too.
        self.rebuild_mapping(env);
    }

    fn delta_interval_ms(&self) -> u64 {
        match self.settings.as_ref().map_or(0, |s| s.directory_delta_interval_ms) {
            0 => DEFAULT_DELTA_INTERVAL_MS,
            n => n,
        }
    }
}

fn check_link(settings: &Settings, link: &str) -> Result<(), String> {
    if link.starts_with(&settings.graph_base_url) {
        Ok(())
    } else {
        Err("a paging link points outside the Graph base URL".into())
    }
}

/// Whether a delta response says the delta state is gone and a full resync is needed.
fn delta_state_gone(r: &HttpResponse) -> bool {
    if r.status == 410 {
        return true;
    }
    let code = serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v.pointer("/error/code").and_then(|c| c.as_str()).map(str::to_owned));
    (400..500).contains(&r.status) && matches!(code.as_deref(), Some("syncStateNotFound" | "resyncRequired"))
}

/// Applies a delta round's changes in order: `@removed` removes, anything else inserts or
/// updates the fields it carries.
pub(crate) fn apply_delta(users: &mut Vec<GraphUser>, changes: Vec<serde_json::Value>) {
    let mut index: HashMap<String, usize> = users.iter().enumerate().map(|(i, u)| (u.id.clone(), i)).collect();
    let mut removed = BTreeSet::new();
    for c in changes {
        let Some(id) = c.get("id").and_then(|v| v.as_str()).map(str::to_owned) else { continue };
        if c.get("@removed").is_some() {
            if index.contains_key(&id) {
                removed.insert(id);
            }
            continue;
        }
        removed.remove(&id);
        match index.get(&id) {
            Some(&i) => {
                let mut v = serde_json::to_value(&users[i]).unwrap_or_default();
                if let (Some(o), Some(changes)) = (v.as_object_mut(), c.as_object()) {
                    for (k, val) in changes {
                        if !k.starts_with('@') {
                            o.insert(k.clone(), val.clone());
                        }
                    }
                }
                if let Ok(u) = serde_json::from_value::<GraphUser>(v) {
                    users[i] = u;
                }
            }
            None => {
                if let Ok(u) = serde_json::from_value::<GraphUser>(c) {
                    index.insert(id, users.len());
                    users.push(u);
                }
            }
        }
    }
    if !removed.is_empty() {
        users.retain(|u| !removed.contains(&u.id));
    }
}
