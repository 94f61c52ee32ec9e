//! The Microsoft directory: a full read, then `/users/delta` rounds
//! (<https://learn.microsoft.com/en-us/graph/api/user-delta>, <https://learn.microsoft.com/en-us/graph/delta-query-overview>).
//!
//! - A full resync first takes a "from now" anchor (`/users/delta?$deltatoken=latest`), then
//!   pages through `/users?$top=999`. Changes made while it pages come back in the next delta
//!   round (delta replays are expected and harmless), so nothing falls between the two.
//! - A full resync over a directory in use keeps only what differs ([`FullRead`]): each user
//!   read is looked up in the directory, and only users new or changed are kept until the
//!   read is complete; users not read again are removed then. The directory is never held
//!   twice, and a resync that finds it unchanged (the daily case) neither writes it nor
//!   rebuilds the mapping for it.
//! - A delta round follows `@odata.nextLink` to the `@odata.deltaLink`, collecting changes, and
//!   applies them only when the round is complete. Users come back whole or partial (fields
//!   present overwrite, fields absent are kept) or as `@removed`.
//! - The deltaLink is stored with the directory, so a restart goes on from where it was.
//! - The users are stored in chunks of [`DIR_CHUNK`] behind a head (`v2/directory`) that names
//!   the chunks' generation: a changed directory is written a few chunks per call, the head
//!   last, then the previous generation is deleted; a restart reads the chunks a few per call.
//!   No call ever handles the whole of a 100,000-user directory at once. Until the directory
//!   and the first mapping are back, notifications are answered 503 (the host keeps them).
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
pub const USER_SELECT: &str = "id,userPrincipalName,mail,proxyAddresses";

/// A directory fetch in progress.
#[derive(Debug)]
pub(super) enum DirFetch {
    /// Waiting for the anchor deltaLink of a full resync.
    Anchor,
    /// Paging `/users`; the anchor is where delta rounds start afterwards.
    Full { read: FullRead, anchor: String },
    /// Paging a delta round.
    Delta { changes: Vec<serde_json::Value> },
}

/// Schema 1: the users in one value (read only to upgrade; the tests write one).
#[cfg(test)]
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct PersistedDirectory {
    pub fetched_at_ms: u64,
    pub users: Vec<GraphUser>,
}

/// Schema 1's key of [`PersistedDirectory`].
const STATE_DIRECTORY_V1: &str = "v1/directory";
/// Schema 2's head of the stored directory.
const STATE_DIRECTORY_HEAD: &str = "v2/directory";
/// Users per stored chunk (about 150 KB of JSON: a chunk is built in the instance's memory,
/// and that memory, once grown, stays the instance's).
pub const DIR_CHUNK: usize = 1_000;
/// Chunks written, or users read back, per call.
const PERSIST_CHUNKS_PER_STEP: usize = 2;
const RESTORE_USERS_PER_STEP: usize = 5_000;

fn chunk_key(generation: u64, i: usize) -> String {
    format!("v2/directory/{generation}/{i:05}")
}

/// What `v2/directory` holds: which generation of chunks is complete.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct DirectoryHead {
    generation: u64,
    chunks: usize,
    users: usize,
    fetched_at_ms: u64,
}

/// A directory being written, a few chunks per call.
#[derive(Debug)]
pub(super) struct DirPersist {
    generation: u64,
    next: usize,
    chunks: usize,
    fetched_at_ms: u64,
    /// The delta state that goes with these users, written after the head.
    delta: Option<PersistedDeltaState>,
}

/// A stored directory being read back, a few thousand users per call.
#[derive(Debug)]
pub(super) enum DirRestore {
    /// Schema 2 chunks.
    Chunks { head: DirectoryHead, next: usize, users: Vec<GraphUser> },
    /// A schema-1 value, parsed a slice at a time from `offset` (inside its `users` array).
    Legacy { bytes: Vec<u8>, offset: usize, fetched_at_ms: u64, users: Vec<GraphUser> },
}

/// Where delta rounds go on, stored after every round (small). Written after the users, so
/// a crash between the two replays changes (harmless) rather than skipping them.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
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
    /// The stored directory's head (the last complete generation).
    pub stored: Option<DirectoryHead>,
    /// A generation being written.
    pub persisting: Option<DirPersist>,
    /// Generations abandoned halfway (generation, chunks written), deleted at the next commit.
    pub abandoned: Vec<(u64, usize)>,
    /// A schema-1 value is still stored (deleted once the directory is in chunks).
    pub legacy_stored: bool,
    /// The stored directory being read back.
    pub restoring: Option<DirRestore>,
}

/// A full read of the directory, compared page by page with the directory in use (none on a
/// first read: every user is then new).
#[derive(Debug)]
pub(super) struct FullRead {
    /// Positions of the directory's users, by [`mapping::id_hash`] of their ids.
    index: mapping::Index,
    /// Which of the directory's users were read again.
    seen: Vec<bool>,
    /// Users new or changed, as read (a changed user with the id the directory holds).
    fresh: Vec<GraphUser>,
}

/// The positions of `users`, by [`mapping::id_hash`] of their ids.
fn id_positions(users: &[GraphUser]) -> mapping::Index {
    let mut index = mapping::Index::with_capacity(users.len());
    for (i, u) in users.iter().enumerate() {
        index.insert(mapping::id_hash(&u.id), i as u32);
    }
    index
}

/// Where user `id` is in `users`, by `index` (from [`id_positions`], kept up to date).
fn position(index: &mapping::Index, users: &[GraphUser], id: &str) -> Option<usize> {
    let under = index.under(mapping::id_hash(id));
    under.iter().map(|&i| i as usize).find(|&i| users.get(i).is_some_and(|u| &*u.id == id))
}

impl FullRead {
    /// A read to compare with `users` (the directory in use).
    fn over(users: Option<&[GraphUser]>) -> FullRead {
        let users = users.unwrap_or_default();
        FullRead { index: id_positions(users), seen: vec![false; users.len()], fresh: Vec::new() }
    }

    /// Where user `id` is in `users`.
    fn position(&self, users: &[GraphUser], id: &str) -> Option<usize> {
        position(&self.index, users, id)
    }

    /// Takes a page of users read.
    fn add(&mut self, users: &[GraphUser], page: Vec<GraphUser>) {
        for mut u in page {
            match self.position(users, &u.id) {
                Some(i) => {
                    self.seen[i] = true;
                    if users[i] != u {
                        u.id = users[i].id.clone();
                        self.fresh.push(u);
                    }
                }
                None => self.fresh.push(u),
            }
        }
    }

    /// Brings `users` to what was read; answers whether anything changed. A user read twice
    /// (it moved between pages while they were read) is taken as last read.
    fn apply(mut self, users: &mut Vec<GraphUser>) -> bool {
        let before = users.len();
        if self.fresh.is_empty() && self.seen.iter().all(|s| *s) {
            return false;
        }
        for u in std::mem::take(&mut self.fresh) {
            match self.position(users, &u.id) {
                Some(i) => users[i] = u,
                None => {
                    self.index.insert(mapping::id_hash(&u.id), users.len() as u32);
                    users.push(u);
                }
            }
        }
        let mut i = 0;
        users.retain(|_| {
            let keep = i >= before || self.seen[i];
            i += 1;
            keep
        });
        true
    }
}

enum Failure {
    /// Retry later (backoff or Retry-After).
    Retry(Problem, Option<u64>),
    /// The delta state is gone: resync in full at once.
    Resync(String),
}

impl Core {
    pub(super) fn restore_directory(&mut self, env: &mut dyn Env) {
        let head = env.load(STATE_DIRECTORY_HEAD).and_then(|b| serde_json::from_slice::<DirectoryHead>(&b).ok());
        let legacy = env.load(STATE_DIRECTORY_V1);
        self.dir.legacy_stored = legacy.is_some();
        self.dir.restoring = match (head, legacy) {
            (Some(head), _) => {
                self.dir.stored = Some(head);
                self.dir.last_ok_ms = Some(head.fetched_at_ms);
                Some(DirRestore::Chunks { head, next: 0, users: Vec::with_capacity(head.users) })
            }
            (None, Some(bytes)) => match legacy_users_start(&bytes) {
                Some((offset, fetched_at_ms)) => {
                    self.dir.last_ok_ms = Some(fetched_at_ms);
                    Some(DirRestore::Legacy { bytes, offset, fetched_at_ms, users: Vec::new() })
                }
                None => None,
            },
            (None, None) => None,
        };
        if self.dir.restoring.is_some() {
            if let Some(s) = env.load(STATE_DELTA).and_then(|b| serde_json::from_slice::<PersistedDeltaState>(&b).ok())
            {
                self.dir.delta_link = Some(s.delta_link);
                self.dir.full_due_at = s.full_at_ms + FULL_RESYNC_MS;
                self.dir.last_ok_ms = Some(s.fetched_at_ms.max(self.dir.last_ok_ms.unwrap_or(0)));
            }
            self.advance_restore(env);
        }
    }

    /// One step of reading the stored directory back; when it is complete, the mapping is
    /// rebuilt (and a schema-1 directory is written again in chunks).
    pub(super) fn advance_restore(&mut self, env: &mut dyn Env) {
        let Some(job) = self.dir.restoring.as_mut() else { return };
        let outcome: Result<bool, String> = match job {
            DirRestore::Chunks { head, next, users } => {
                let mut read = 0;
                let mut result = Ok(false);
                while read < RESTORE_USERS_PER_STEP && *next < head.chunks {
                    let key = chunk_key(head.generation, *next);
                    match env.load(&key).map(|b| serde_json::from_slice::<Vec<GraphUser>>(&b)) {
                        Some(Ok(chunk)) => {
                            read += chunk.len().max(1);
                            users.extend(chunk);
                            *next += 1;
                        }
                        Some(Err(e)) => {
                            result = Err(format!("{key}: {e}"));
                            break;
                        }
                        None => {
                            result = Err(format!("{key} is missing"));
                            break;
                        }
                    }
                }
                if result.is_ok() && *next == head.chunks { Ok(true) } else { result }
            }
            DirRestore::Legacy { bytes, offset, users, .. } => legacy_users_step(bytes, offset, users),
        };
        match outcome {
            Ok(false) => {
                self.count("directory.restore-steps");
                self.effects.push(Effect::RequestTick);
            }
            Ok(true) => {
                let (users, legacy_fetched) = match self.dir.restoring.take().unwrap() {
                    DirRestore::Chunks { users, .. } => (users, None),
                    DirRestore::Legacy { users, fetched_at_ms, .. } => (users, Some(fetched_at_ms)),
                };
                self.dir.users = Some(users);
                if let Some(fetched_at_ms) = legacy_fetched {
                    self.start_persist(fetched_at_ms, None);
                }
                self.rebuild_mapping(env);
            }
            Err(why) => {
                // The stored directory is damaged: read it again from Graph. Until then the
                // mapping is empty, and the status says why.
                self.dir.restoring = None;
                self.log(Level::Error, "stored directory unreadable; reading it again", vec![("reason".into(), why)]);
                self.count("directory.restore-failed");
                self.request_full_resync();
            }
        }
    }

    /// Starts writing the current users as a new generation of chunks.
    fn start_persist(&mut self, fetched_at_ms: u64, delta: Option<PersistedDeltaState>) {
        if let Some(p) = self.dir.persisting.take() {
            self.dir.abandoned.push((p.generation, p.next));
        }
        let generation =
            self.dir.abandoned.iter().map(|(g, _)| *g).chain(self.dir.stored.map(|h| h.generation)).max().unwrap_or(0)
                + 1;
        let n = self.dir.users.as_ref().map_or(0, Vec::len);
        self.dir.persisting =
            Some(DirPersist { generation, next: 0, chunks: n.div_ceil(DIR_CHUNK), fetched_at_ms, delta });
        self.advance_persist();
    }

    /// Writes the next chunks; after the last one, the head, the delta state that goes with
    /// it, and deletes the generations it replaces.
    pub(super) fn advance_persist(&mut self) {
        let Some(p) = self.dir.persisting.as_mut() else { return };
        let users = self.dir.users.as_deref().unwrap_or_default();
        let mut written = 0;
        while p.next < p.chunks && written < PERSIST_CHUNKS_PER_STEP {
            let chunk = &users[p.next * DIR_CHUNK..users.len().min((p.next + 1) * DIR_CHUNK)];
            self.effects.push(Effect::Store {
                key: chunk_key(p.generation, p.next),
                value: Some(serde_json::to_vec(chunk).unwrap()),
            });
            p.next += 1;
            written += 1;
        }
        if p.next < p.chunks {
            self.effects.push(Effect::RequestTick);
            return;
        }
        let p = self.dir.persisting.take().unwrap();
        let head = DirectoryHead {
            generation: p.generation,
            chunks: p.chunks,
            users: users.len(),
            fetched_at_ms: p.fetched_at_ms,
        };
        self.effects
            .push(Effect::Store { key: STATE_DIRECTORY_HEAD.into(), value: Some(serde_json::to_vec(&head).unwrap()) });
        if let Some(d) = p.delta {
            self.effects.push(Effect::Store { key: STATE_DELTA.into(), value: Some(serde_json::to_vec(&d).unwrap()) });
        }
        let mut dead: Vec<(u64, usize)> = std::mem::take(&mut self.dir.abandoned);
        if let Some(old) = self.dir.stored.replace(head) {
            dead.push((old.generation, old.chunks));
        }
        for (generation, chunks) in dead {
            for i in 0..chunks {
                self.effects.push(Effect::Store { key: chunk_key(generation, i), value: None });
            }
        }
        if std::mem::take(&mut self.dir.legacy_stored) {
            self.effects.push(Effect::Store { key: STATE_DIRECTORY_V1.into(), value: None });
        }
    }

    /// Asks for a full resync as soon as possible.
    pub(super) fn request_full_resync(&mut self) {
        // The policy's groups are read again with it.
        self.groups.next_at = 0;
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
            Some(DirFetch::Full { read, .. }) => {
                let page = serde_json::from_slice::<Page<GraphUser>>(&r.body).map_err(|e| malformed(e.to_string()))?;
                read.add(self.dir.users.as_deref().unwrap_or_default(), page.value);
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
                        let read = FullRead::over(self.dir.users.as_deref());
                        self.dir.fetching = Some(DirFetch::Full { read, anchor: d });
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
            DirFetch::Full { read, anchor } => {
                self.count("directory.full-resyncs");
                self.dir.delta_link = Some(anchor);
                self.dir.full_due_at = now + FULL_RESYNC_MS;
                match self.dir.users.as_mut() {
                    Some(users) => {
                        let changed = read.apply(users);
                        if !changed {
                            self.count("directory.full-resyncs-unchanged");
                        }
                        changed
                    }
                    None => {
                        let mut users = read.fresh;
                        // Paged in, the list doubled as it grew: its spare room goes.
                        users.shrink_to_fit();
                        self.dir.users = Some(users);
                        true
                    }
                }
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
        let delta = self.dir.delta_link.clone().map(|delta_link| PersistedDeltaState {
            fetched_at_ms: now,
            delta_link,
            full_at_ms: self.dir.full_due_at.saturating_sub(FULL_RESYNC_MS),
        });
        if changed {
            // The delta state is written with the users' head: never a newer deltaLink over
            // older users (a crash would skip changes).
            self.start_persist(now, delta);
        } else if let Some(p) = self.dir.persisting.as_mut() {
            p.delta = delta.or(p.delta.take());
        } else if let Some(d) = delta {
            self.effects.push(Effect::Store { key: STATE_DELTA.into(), value: Some(serde_json::to_vec(&d).unwrap()) });
        }
        // Rebuilt when either side changed. A switchboard that keeps a change counter is
        // also watched between rounds (`watch_switchboard`); one that does not (0) is read
        // again every round.
        if changed || !self.mapping_built || self.switchboard_may_have_changed(env) {
            self.rebuild_mapping(env);
        }
    }

    pub(super) fn delta_interval_ms(&self) -> u64 {
        match self.settings.as_ref().map_or(0, |s| s.directory_delta_interval_ms) {
            0 => DEFAULT_DELTA_INTERVAL_MS,
            n => n,
        }
    }
}

/// Where the `users` array of a schema-1 directory value starts, and its `fetched_at_ms`.
fn legacy_users_start(bytes: &[u8]) -> Option<(usize, u64)> {
    let find = |needle: &[u8]| bytes.windows(needle.len()).position(|w| w == needle).map(|i| i + needle.len());
    let at = find(b"\"fetched_at_ms\":")?;
    let digits: String = bytes[at..].iter().take_while(|b| b.is_ascii_digit()).map(|&b| b as char).collect();
    Some((find(b"\"users\":[")?, digits.parse().ok()?))
}

/// Parses up to [`RESTORE_USERS_PER_STEP`] users of a schema-1 `users` array from `offset`;
/// `Ok(true)` at its end.
fn legacy_users_step(bytes: &[u8], offset: &mut usize, users: &mut Vec<GraphUser>) -> Result<bool, String> {
    for _ in 0..RESTORE_USERS_PER_STEP {
        while bytes.get(*offset).is_some_and(|b| b.is_ascii_whitespace() || *b == b',') {
            *offset += 1;
        }
        match bytes.get(*offset) {
            Some(b']') => return Ok(true),
            None => return Err("v1/directory ends inside its users".into()),
            Some(_) => {}
        }
        let mut it = serde_json::Deserializer::from_slice(&bytes[*offset..]).into_iter::<GraphUser>();
        match it.next() {
            Some(Ok(u)) => {
                users.push(u);
                *offset += it.byte_offset();
            }
            Some(Err(e)) => return Err(format!("v1/directory: {e}")),
            None => return Err("v1/directory ends inside its users".into()),
        }
    }
    Ok(false)
}

fn check_link(settings: &Settings, link: &str) -> Result<(), String> {
    if super::on_origin(&settings.graph_base_url, link) {
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
    if changes.is_empty() {
        return;
    }
    let mut index = id_positions(users);
    let mut removed = BTreeSet::new();
    for c in changes {
        let Some(id) = c.get("id").and_then(|v| v.as_str()) else { continue };
        let at = position(&index, users, id);
        if c.get("@removed").is_some() {
            if let Some(i) = at {
                removed.insert(i);
            }
            continue;
        }
        match at {
            Some(i) => {
                removed.remove(&i);
                let mut v = serde_json::to_value(&users[i]).unwrap_or_default();
                if let (Some(o), Some(changes)) = (v.as_object_mut(), c.as_object()) {
                    for (k, val) in changes {
                        if !k.starts_with('@') {
                            o.insert(k.clone(), val.clone());
                        }
                    }
                }
                if let Ok(mut u) = serde_json::from_value::<GraphUser>(v) {
                    // The id string the mapping (and the rest) holds stays.
                    u.id = users[i].id.clone();
                    users[i] = u;
                }
            }
            None => {
                if let Ok(u) = serde_json::from_value::<GraphUser>(c) {
                    index.insert(mapping::id_hash(&u.id), users.len() as u32);
                    users.push(u);
                }
            }
        }
    }
    if !removed.is_empty() {
        let mut i = 0;
        users.retain(|_| {
            let keep = !removed.contains(&i);
            i += 1;
            keep
        });
    }
}
