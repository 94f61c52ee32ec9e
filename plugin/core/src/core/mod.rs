//! The sync state machine. Every entry point takes the [`Env`] (time, randomness, the host's
//! synchronous capabilities) and leaves [`Effect`]s to perform in [`Core::take_effects`].
//!
//! Progress is made by [`Core::drive`], a reconciler run after every event: it compares what
//! is with what should be (tokens valid, directory read, one subscription per non-empty shard,
//! a snapshot after each new subscription) and starts the next request where one is due. At
//! most one request per concern is in flight, so responses can never interleave badly.

pub(crate) mod directory;
mod known;
mod notes;
mod policy;
mod polling;
mod presence_reads;
mod push;
mod retire;
mod subscriptions;
mod throttling;
mod tokens;
mod users_view;
mod validation;

pub use policy::{MAX_GROUPS, MAX_POLICY_ENTRIES, within_hours};
pub use polling::{MIN_POLL_INTERVAL_MS, POLL_BUDGET, poll_interval_ms};
pub use retire::RetireProgress;
pub use users_view::{
    MAX_USERS_PAGE, MappingCounts, MatchedBy, Unmatched, UserRow, UsersFilter, UsersPage, UsersQuery,
};
pub use validation::{MAX_WAITING_BATCHES, MAX_WAITING_BYTES};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use directory::Directory;
pub use directory::{DEFAULT_DELTA_INTERVAL_MS, FULL_RESYNC_MS};
use push::{Push, PushOp};
use throttling::retry_after;
use tokens::token_request;

use base64::Engine as _;
use subtle::ConstantTimeEq;

use crate::crypto::{self, EncryptedContent};
use crate::hints::{self, problem};
use crate::mapping::{self, GraphUser, Id, Mapping};
use crate::model::*;
use crate::shards::{MAX_USERS_PER_SUBSCRIPTION, Shards};

/// Graph allows presence subscriptions to live at most 60 minutes; we ask for 59 so clock
/// skew between us and Graph never makes a request invalid.
pub const SUBSCRIPTION_LIFETIME_MS: u64 = 59 * 60 * 1000;
/// Renew this long before expiry (several retries fit before it lapses).
pub const RENEW_BEFORE_MS: u64 = 15 * 60 * 1000;
/// Default interval of the presence reconcile: Graph sends no `missed` lifecycle event for
/// presence (<https://learn.microsoft.com/en-us/graph/change-notifications-lifecycle-events>), so every covered user's presence is re-read this often.
pub const DEFAULT_RECONCILE_MS: u64 = 5 * 60 * 1000;
/// Largest webhook body the plugin accepts (a Graph batch of rich notifications is far smaller).
pub const MAX_WEBHOOK_BODY: usize = 4 << 20;
/// `getPresencesByUserId` takes at most 650 ids per call (<https://learn.microsoft.com/en-us/graph/api/cloudcommunications-getpresencesbyuserid>).
pub const MAX_IDS_PER_PRESENCE_READ: usize = 650;
const MAX_BACKOFF_MS: u64 = 5 * 60 * 1000;
const FIRST_BACKOFF_MS: u64 = 2_000;
/// The version of the layout of everything this core keeps in the key-value store. A release
/// that changes the layout raises it and upgrades older state in [`upgrade_state`]; a release
/// refuses state of a higher version (written by a newer release) instead of misreading it.
pub const STATE_SCHEMA_VERSION: u32 = 2;
/// Users' worth of matching work per call (about 10–20 ms inside the component).
pub const MAPPING_STEP: usize = 4_000;
/// Switchboard users read per call.
pub const SWITCHBOARD_PAGE: usize = 5_000;
/// Least time between two reads of the switchboard's directory caused by its change counter.
pub const SWITCHBOARD_REREAD_MS: u64 = 2_000;
/// Users' worth of shard assignment per call.
pub const SHARD_STEP: usize = 8_000;
/// Items freed per tick (see [`mapping::Trash`]).
pub const TRASH_STEP: usize = 50_000;
const STATE_SCHEMA: &str = "meta/state-schema";
/// Schema 1: every slot's subscription in one value (read only to upgrade).
const STATE_SUBSCRIPTIONS: &str = "v1/subscriptions";
const STATE_OVERRIDES: &str = "v1/overrides";

#[derive(Debug, Clone)]
enum Pending {
    AppToken,
    UserToken(usize),
    UsersPage,
    CreateSub {
        slot: usize,
        client_state: String,
        members: BTreeSet<Id>,
    },
    RenewSub(usize),
    DeleteSub(usize),
    ListSubs(usize),
    CleanupDelete(usize),
    Presences(usize),
    VerifySub(usize),
    Push(Vec<(String, PushOp)>),
    GroupMembers,
    Absence(String, notes::NoteOp),
    /// A polling request; the last id it reads.
    Poll(String),
    OpenIdConfig,
    Jwks,
}

/// Graph's services throttle separately; a `Retry-After` holds back every request of its
/// service (not only the one concern that got it), so that no request of ours arrives sooner
/// than Microsoft allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Scope {
    Directory,
    Subscriptions,
    Presence,
}

impl Scope {
    fn of(p: &Pending) -> Option<Scope> {
        Some(match p {
            Pending::UsersPage | Pending::GroupMembers => Scope::Directory,
            Pending::CreateSub { .. }
            | Pending::RenewSub(_)
            | Pending::DeleteSub(_)
            | Pending::ListSubs(_)
            | Pending::CleanupDelete(_)
            | Pending::VerifySub(_) => Scope::Subscriptions,
            Pending::Presences(_) | Pending::Push(_) | Pending::Absence(..) | Pending::Poll(_) => Scope::Presence,
            Pending::AppToken | Pending::UserToken(_) | Pending::OpenIdConfig | Pending::Jwks => return None,
        })
    }
    fn name(self) -> &'static str {
        match self {
            Scope::Directory => "directory",
            Scope::Subscriptions => "subscriptions",
            Scope::Presence => "presence",
        }
    }
}

/// Presence requests per window that we allow ourselves, all kinds together (reads,
/// snapshots, setPresence, clearPresence; each request inside a `$batch` counts): Graph allows
/// 1,500 per 30 s per app per tenant (<https://learn.microsoft.com/en-us/graph/api/cloudcommunications-getpresencesbyuserid>).
pub const PRESENCE_BUDGET: usize = 1_400;
/// The budget's window.
pub const PRESENCE_WINDOW_MS: u64 = 30_000;

/// The per-tenant presence budget: when each recent presence request went out.
#[derive(Debug, Default)]
struct PresenceBudget {
    recent: std::collections::VecDeque<u64>,
}

impl PresenceBudget {
    /// Requests still allowed in the window ending now.
    fn available(&mut self, now: u64) -> usize {
        while self.recent.front().is_some_and(|&t| t + PRESENCE_WINDOW_MS <= now) {
            self.recent.pop_front();
        }
        PRESENCE_BUDGET.saturating_sub(self.recent.len())
    }
    fn take(&mut self, now: u64, n: usize) {
        self.recent.extend(std::iter::repeat_n(now, n));
    }
}

#[derive(Debug, Default, Clone)]
struct Backoff {
    failures: u32,
    not_before: u64,
}

impl Backoff {
    fn ready(&self, now: u64) -> bool {
        now >= self.not_before
    }
    fn fail(&mut self, now: u64, retry_after_ms: Option<u64>, jitter: u8) {
        if let Some(r) = retry_after_ms {
            // Microsoft said how long: wait exactly that; it does not grow the backoff.
            self.not_before = now + r.max(1);
            return;
        }
        self.failures += 1;
        let exp = FIRST_BACKOFF_MS.saturating_mul(1u64 << self.failures.min(16).saturating_sub(1)).min(MAX_BACKOFF_MS);
        // Up to +25 % jitter so that many integrations do not retry in step.
        let delay = exp + exp * u64::from(jitter) / 1024;
        self.not_before = now + delay;
    }
    fn succeed(&mut self) {
        *self = Backoff::default();
    }
}

#[derive(Debug, Clone, Default)]
enum TokenState {
    #[default]
    Empty,
    Requesting,
    Valid {
        access: String,
        refresh_at: u64,
    },
    Failed(Problem),
}

#[derive(Debug, Clone, Default)]
struct Token {
    state: TokenState,
    retry: Backoff,
}

impl Token {
    fn access(&self, now: u64) -> Option<&str> {
        match &self.state {
            TokenState::Valid { access, refresh_at } if now < *refresh_at => Some(access),
            _ => None,
        }
    }
    fn wants_request(&self, now: u64) -> bool {
        !matches!(self.state, TokenState::Requesting) && self.access(now).is_none() && self.retry.ready(now)
    }
    fn problem(&self) -> Option<&Problem> {
        match &self.state {
            TokenState::Failed(p) => Some(p),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
struct ActiveSub {
    id: String,
    client_state: String,
    expires_at_ms: u64,
    members: BTreeSet<Id>,
    /// The `notificationUrl` it was created with (absent: created by a release that did not
    /// record it). A subscription whose URL is no longer the configured one is replaced.
    #[serde(default)]
    notification_url: Option<String>,
}

/// How far Microsoft's clock is from the host's, from the `Date` header of its answers: the
/// median of the last samples (a `Date` has whole seconds; the median drops a slow answer).
/// Subscription expirations, renewals and token checks use Microsoft's time, not the host's:
/// a host whose clock is off (a resumed VM, a container without time sync) must not ask for
/// expirations Graph finds in the past, nor refuse tokens Graph just issued.
#[derive(Debug, Clone, Default)]
struct MicrosoftClock {
    samples: std::collections::VecDeque<i64>,
    offset_ms: i64,
}

/// Samples the offset is the median of.
const CLOCK_SAMPLES: usize = 9;
/// An offset beyond this shows in the status.
pub const CLOCK_OFFSET_SHOWN_MS: i64 = 2 * 60 * 1000;

impl MicrosoftClock {
    fn sample(&mut self, date_header: &str, now: u64) {
        let Ok(t) = httpdate::parse_http_date(date_header) else { return };
        let Ok(d) = t.duration_since(std::time::UNIX_EPOCH) else { return };
        // The header truncates to the second: its middle is half a second later.
        let sample = d.as_millis() as i64 + 500 - now as i64;
        if self.samples.len() == CLOCK_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        let mut sorted: Vec<i64> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        self.offset_ms = sorted[sorted.len() / 2];
    }
}

#[derive(Debug, Clone, Default)]
struct Sub {
    active: Option<ActiveSub>,
    /// Created with another `notificationUrl` than the configured one (the host's public URL
    /// or webhook path changed): delete it and create a new one.
    stale_url: bool,
    /// The shard's members may differ from the subscription's: compare them at the next
    /// drive (comparing every shard after every event would cost O(users) per event).
    members_dirty: bool,
    /// The shard only lost users since the subscription was made: it is replaced (without
    /// them) when its renewal is due, not before.
    shrunk: bool,
    /// Users the subscription still covers who were mapped again (they left and came back
    /// before its renewal): their presence is read, theirs only.
    rejoined: BTreeSet<Id>,
    /// The presence read in flight is of `rejoined` only.
    reading_rejoined: bool,
    /// A presence read's answer being applied, [`PRESENCE_STEP`] users per call.
    page: Option<PresencePage>,
    busy: bool,
    needs_snapshot: bool,
    /// When the last full presence read of this subscription's users succeeded.
    last_snapshot_ms: Option<u64>,
    /// When this subscription last delivered an accepted notification.
    last_notification_ms: Option<u64>,
    reauthorize: bool,
    /// A periodic re-read is under way (not the first read after a creation or restart).
    reconciling: bool,
    /// That re-read found a user whose presence changed without a notification.
    missed_change: bool,
    /// Check the subscription still exists (`GET /subscriptions`): a re-read found a missed
    /// change, the one symptom of a subscription deleted at Microsoft (Graph sends no
    /// lifecycle event for that).
    verify_due: bool,
    cleanup_tried: bool,
    cleanup_outstanding: usize,
    problem: Option<Problem>,
    retry: Backoff,
}

/// A presence read's answer, applied in steps (see `presence_reads`).
#[derive(Debug, Clone, Default)]
struct PresencePage {
    /// Presences not applied yet, in the order of the answer.
    items: std::collections::VecDeque<GraphPresence>,
    /// The answer's `@odata.nextLink`, followed once the page is applied.
    next_link: Option<String>,
}

/// Users of a presence read's answer applied (and published) per call: a 650-user answer at
/// 100,000 users took up to 99 ms of CPU in one call; in steps each stays a fraction of that.
pub const PRESENCE_STEP: usize = 200;

/// Presence reads in flight or being applied at once, at most. Answers come faster than
/// they are applied ([`PRESENCE_STEP`] users a call): without a bound, a first sync of
/// 100,000 users held every answer (about 20 MiB) in memory at once, waiting its turn. Two
/// keep the work going: one is applied while the next is on its way.
pub const MAX_READS_OPEN: usize = 2;

#[derive(serde::Serialize, serde::Deserialize)]
struct PersistedSubs {
    tenant_id: String,
    client_id: String,
    slots: Vec<Option<(String, ActiveSub)>>,
}

/// Schema 2: one integration user's subscription, under [`sub_key`].
#[derive(serde::Serialize, serde::Deserialize)]
struct PersistedSub {
    tenant_id: String,
    client_id: String,
    username: String,
    active: ActiveSub,
}

/// The counts of the last complete mapping (`v2/mapping-summary`), shown while a restarted
/// plugin restores a large directory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct MappingSummary {
    mapped: u32,
    microsoft: u32,
    switchboard: u32,
}

const STATE_SUMMARY: &str = "v2/mapping-summary";
/// The counters, written at a tick when they changed: they survive a trap (and a restart).
const STATE_COUNTERS: &str = "v2/counters";

const SUB_KEY_PREFIX: &str = "v2/subscription/";

fn sub_key(slot: usize) -> String {
    format!("{SUB_KEY_PREFIX}{slot:04}")
}

/// One integration's sync state. See the module docs.
#[derive(Default)]
pub struct Core {
    /// Shared, not copied: every event's `drive` holds it while it acts.
    settings: Option<std::sync::Arc<Settings>>,
    missing: Vec<String>,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    app_token: Token,
    user_tokens: Vec<Token>,
    dir: Directory,
    mapping: Mapping,
    /// Switchboard users being read for a mapping build (users so far, their ids).
    loading_switchboard: Option<mapping::SwitchboardLoad>,
    /// The switchboard directory's change counter when it was last read (`None`: never).
    switchboard_revision: Option<u64>,
    /// No switchboard-triggered read before then (a stream of changes costs a read every
    /// [`SWITCHBOARD_REREAD_MS`], not one per change).
    switchboard_read_after: u64,
    /// A mapping build in progress (large directories are matched in steps).
    building: Option<mapping::MappingBuild>,
    /// Large values freed a slice per tick.
    trash: mapping::Trash,
    /// A mapping was completed since `configure`.
    mapping_built: bool,
    /// The counts of the last mapping, as stored.
    summary: Option<MappingSummary>,
    /// The counters as last stored.
    stored_counters: BTreeMap<String, u64>,
    /// Microsoft's clock as seen from the host's (the `Date` of its answers).
    ms_clock: MicrosoftClock,
    /// Mapped users being assigned to shards (subscriptions wait until it is done).
    sharding: Option<crate::shards::ShardsApply>,
    /// Microsoft users the last mapping added, for the shards that already cover them.
    joined: BTreeSet<Id>,
    switchboard_users: usize,
    shards: Shards,
    subs: Vec<Sub>,
    /// Each Microsoft user's last presence and sequence number.
    known: known::Known,
    counters: BTreeMap<String, u64>,
    last_notification_ms: Option<u64>,
    effects: Vec<Effect>,
    push: Push,
    passive: BTreeSet<String>,
    api_overrides: Vec<MappingOverride>,
    keys: validation::SigningKeys,
    /// Until when each Graph service asked us to wait (`Retry-After`).
    throttled_until: BTreeMap<Scope, u64>,
    /// Requests in flight per service.
    scope_busy: BTreeMap<Scope, usize>,
    presence_budget: PresenceBudget,
    /// [`Core::retire`] was called: nothing new starts, what is at Microsoft goes.
    retiring: bool,
    /// Switchboard users the retirement withdrew.
    retire_withdrawn: u32,
    /// The sync policy in force (`policy.rs`), and its working hours' time zone.
    policy: SyncPolicy,
    policy_tz: Option<jiff::tz::TimeZone>,
    /// The policy's groups and their membership.
    groups: policy::Groups,
    /// What the policy made of the last mapping.
    applied: policy::Applied,
    /// Status messages and out of office, both ways.
    notes: notes::Notes,
    /// Presence polling of the users no subscription covers.
    poll: polling::Poll,
}

impl Core {
    /// A core with no settings.
    pub fn new() -> Self {
        Core::default()
    }

    /// The effects produced since the last call.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Now by Microsoft's clock (see [`MicrosoftClock`]), from the host's `now`.
    fn microsoft_now(&self, now: u64) -> u64 {
        (now as i64 + self.ms_clock.offset_ms).max(0) as u64
    }

    /// How far Microsoft's clock is ahead of the host's (ms; negative: behind).
    pub fn clock_offset_ms(&self) -> i64 {
        self.ms_clock.offset_ms
    }

    /// The last known Teams presence of a Microsoft user.
    pub fn presence_of(&self, microsoft_user_id: &str) -> Option<TeamsPresence> {
        self.known.presence(microsoft_user_id)
    }

    /// Applies settings and starts synchronising. Missing credentials are not an error: the
    /// status then says which are missing, as the switchboard's admin page does.
    pub fn configure(&mut self, env: &mut dyn Env, settings: Settings) -> Result<(), ConfigError> {
        validate(&settings)?;
        let stored_schema = match env.load(STATE_SCHEMA) {
            None => 0,
            Some(b) => std::str::from_utf8(&b).ok().and_then(|s| s.trim().parse::<u32>().ok()).ok_or_else(|| {
                ConfigError::Invalid("state: meta/state-schema is not a number; the stored state is damaged".into())
            })?,
        };
        if stored_schema > STATE_SCHEMA_VERSION {
            return Err(ConfigError::Invalid(format!(
                "state: schema {stored_schema} was written by a newer plugin release; this release reads up to \
                 schema {STATE_SCHEMA_VERSION}: run the newer release again"
            )));
        }
        let mut missing = Vec::new();
        for (field, value) in [
            ("tenant-id", &settings.tenant_id),
            ("client-id", &settings.client_id),
            ("client-secret", &settings.client_secret),
        ] {
            if value.trim().is_empty() {
                missing.push(field.to_string());
            }
        }
        // No integration users: polling only (`polling.rs`).
        for (i, u) in settings.integration_users.iter().enumerate() {
            if u.username.trim().is_empty() {
                missing.push(format!("integration-users[{i}].username"));
            }
            // A user without a password signs in with the refresh token the host keeps
            // (device code sign-in, for MFA).
            if u.password.is_empty() && env.refresh_token(&u.username).is_none() {
                missing.push(format!("integration-users[{i}].password"));
            }
        }
        let slots = settings.integration_users.len();
        // Request ids start at a random point, so that answers to a previous instance's requests
        // (after a restart or a hot swap) are never taken for this one's.
        let next_id = match self.next_id {
            0 => u64::from_le_bytes(env.random_bytes(8).try_into().unwrap_or([1; 8])) >> 12,
            n => n,
        };
        *self = Core { counters: std::mem::take(&mut self.counters), next_id, ..Core::default() };
        self.missing = missing;
        self.user_tokens = vec![Token::default(); slots];
        self.subs = vec![Sub::default(); slots];
        self.shards = Shards::new(slots, MAX_USERS_PER_SUBSCRIPTION);
        self.log(Level::Info, "configured", vec![("integration".into(), settings.name.clone())]);
        self.settings = Some(std::sync::Arc::new(settings));
        if stored_schema < STATE_SCHEMA_VERSION {
            upgrade_state(stored_schema, env, &mut self.effects);
            self.effects.push(Effect::Store {
                key: STATE_SCHEMA.into(),
                value: Some(STATE_SCHEMA_VERSION.to_string().into_bytes()),
            });
        }
        self.restore(env);
        self.drive(env);
        Ok(())
    }

    fn restore(&mut self, env: &mut dyn Env) {
        let settings = self.settings.as_ref().unwrap();
        let now = env.now_ms();
        let mut members = vec![BTreeSet::new(); self.subs.len()];
        let legacy = env.load(STATE_SUBSCRIPTIONS).and_then(|b| serde_json::from_slice::<PersistedSubs>(&b).ok());
        for (i, slot_members) in members.iter_mut().enumerate() {
            let stored = match env.load(&sub_key(i)).and_then(|b| serde_json::from_slice::<PersistedSub>(&b).ok()) {
                Some(p) => Some(p),
                None => legacy.as_ref().and_then(|l| {
                    let (username, active) = l.slots.get(i).cloned().flatten()?;
                    Some(PersistedSub {
                        tenant_id: l.tenant_id.clone(),
                        client_id: l.client_id.clone(),
                        username,
                        active,
                    })
                }),
            };
            if let Some(p) = stored
                && p.tenant_id == settings.tenant_id
                && p.client_id == settings.client_id
                && p.username == settings.integration_users[i].username
            {
                *slot_members = p.active.members.clone();
                if p.active.expires_at_ms > now {
                    // Verify it still exists (a PATCH answers 404 if not) and re-read presence.
                    self.subs[i].stale_url = p.active.notification_url.as_deref() != Some(&settings.notification_url);
                    self.subs[i].active = Some(p.active);
                    self.subs[i].members_dirty = true;
                    self.subs[i].reauthorize = true;
                    self.subs[i].needs_snapshot = true;
                }
            }
        }
        if legacy.is_some() {
            // Schema 1 -> 2: rewrite per slot, then drop the old value.
            for i in 0..self.subs.len() {
                self.persist_sub(i);
            }
            self.effects.push(Effect::Store { key: STATE_SUBSCRIPTIONS.into(), value: None });
        }
        // Slots of integration users no longer configured.
        for key in env.keys(SUB_KEY_PREFIX) {
            if key[SUB_KEY_PREFIX.len()..].parse::<usize>().is_ok_and(|i| i >= self.subs.len()) {
                self.effects.push(Effect::Store { key, value: None });
            }
        }
        self.shards = Shards::restore(self.subs.len(), MAX_USERS_PER_SUBSCRIPTION, members);
        self.api_overrides = env
            .load(STATE_OVERRIDES)
            .and_then(|b| serde_json::from_slice::<Vec<MappingOverride>>(&b).ok())
            .unwrap_or_default();
        self.summary = env.load(STATE_SUMMARY).and_then(|b| serde_json::from_slice(&b).ok());
        if self.counters.is_empty() {
            // A new instance (after a trap, a swap or a restart): the evidence so far stays.
            self.counters = env
                .load(STATE_COUNTERS)
                .and_then(|b| serde_json::from_slice::<BTreeMap<String, u64>>(&b).ok())
                .unwrap_or_default();
            self.stored_counters = self.counters.clone();
        }
        self.restore_policy(env);
        self.restore_notes(env);
        self.restore_directory(env);
        self.restore_keys(env);
        self.restore_calls(env);
    }

    /// Overrides set through the API (kept across restarts; they come after, and win over,
    /// the configured ones). Takes effect at once.
    pub fn set_overrides(&mut self, env: &mut dyn Env, overrides: Vec<MappingOverride>) -> Result<(), OverrideError> {
        for (i, o) in overrides.iter().enumerate() {
            if o.switchboard_user_id.trim().is_empty() || o.microsoft_user.trim().is_empty() {
                return Err(OverrideError::InvalidEntry {
                    index: i as u32,
                    reason: format!("override {i}: switchboard-user-id and microsoft-user must not be empty"),
                });
            }
        }
        self.effects
            .push(Effect::Store { key: STATE_OVERRIDES.into(), value: Some(serde_json::to_vec(&overrides).unwrap()) });
        self.api_overrides = overrides;
        if self.dir.users.is_some() {
            self.rebuild_mapping(env);
        }
        self.drive(env);
        Ok(())
    }

    /// The overrides set through the API.
    pub fn api_overrides(&self) -> &[MappingOverride] {
        &self.api_overrides
    }

    /// Configured overrides, then API ones; for one switchboard user the last one wins.
    fn effective_overrides(&self) -> Vec<MappingOverride> {
        let configured = self.settings.as_ref().map(|s| s.overrides.clone()).unwrap_or_default();
        let mut by_sb: BTreeMap<String, MappingOverride> = BTreeMap::new();
        for o in configured.into_iter().chain(self.api_overrides.iter().cloned()) {
            by_sb.insert(o.switchboard_user_id.clone(), o);
        }
        by_sb.into_values().collect()
    }

    /// The periodic timer.
    pub fn tick(&mut self, env: &mut dyn Env) {
        if self.counters != self.stored_counters {
            self.stored_counters = self.counters.clone();
            self.effects.push(Effect::Store {
                key: STATE_COUNTERS.into(),
                value: Some(serde_json::to_vec(&self.counters).unwrap()),
            });
        }
        self.advance_restore(env);
        self.watch_switchboard(env);
        // One step of the mapping, or else of the shards, or else of the directory's writing:
        // each step is bounded, and several in one call made the slowest calls (a mapping's
        // last step, the first step of its shards and a slice of the trash took 41 ms of CPU
        // at 100,000 users). Freeing goes on beside them, in smaller slices: what a full
        // resync replaced (the previous directory) must not wait for the rebuild it started.
        // Each job asks for the tick that goes on with it.
        let shed = if self.loading_switchboard.is_some() || self.building.is_some() {
            self.advance_mapping(env);
            TRASH_STEP / 5
        } else if self.sharding.is_some() {
            self.advance_shards();
            TRASH_STEP / 5
        } else {
            self.advance_persist();
            TRASH_STEP
        };
        self.trash.shed(shed);
        if self.dir.persisting.is_some() || !self.trash.is_empty() {
            self.effects.push(Effect::RequestTick);
        }
        if self.keys.release_pending && self.ready() {
            self.release_waiting(env);
        }
        self.advance_presence_pages(env.now_ms());
        self.drive(env);
    }

    /// Starts a directory refresh now (the "Sync now" button).
    pub fn sync_now(&mut self, env: &mut dyn Env) {
        if self.retiring {
            return;
        }
        self.request_full_resync();
        self.drive(env);
    }

    /// Starts whatever is due. Idempotent.
    pub fn drive(&mut self, env: &mut dyn Env) {
        let Some(settings) = self.settings.clone() else { return };
        if !self.missing.is_empty() {
            return;
        }
        let now = env.now_ms();
        // Retiring, the app's token is needed only to clear the sessions still set.
        let app_token_needed = !self.retiring || self.push.calls.values().any(|c| c.pushed_until.is_some());
        if app_token_needed && self.app_token.wants_request(now) {
            self.app_token.state = TokenState::Requesting;
            let req = token_request(&settings, None, None);
            self.start(Pending::AppToken, req);
        }
        if !self.retiring {
            self.drive_directory(&settings, now);
            self.drive_groups(&settings, now);
            self.drive_keys(&settings, now);
        }
        // While users are being assigned to shards, the shards are half updated: subscriptions
        // wait (a few calls at most).
        if self.sharding.is_none() {
            let mut reads_open = self.subs.iter().filter(|s| s.page.is_some()).count()
                + self.pending.values().filter(|p| matches!(p, Pending::Presences(_))).count();
            for slot in 0..self.subs.len() {
                self.drive_slot(env, &settings, slot, now, &mut reads_open);
            }
        }
        self.drive_pushes(&settings, now);
        self.drive_absences(&settings, now);
        if !self.retiring {
            self.drive_polling(&settings, now);
        }
    }

    /// `reads_open`: presence reads in flight or being applied; no more start beyond
    /// [`MAX_READS_OPEN`].
    fn drive_slot(&mut self, env: &mut dyn Env, settings: &Settings, slot: usize, now: u64, reads_open: &mut usize) {
        // Runs after every event for every slot: decide by borrowing, clone only to act.
        enum Next {
            Delete(String),
            Renew(String),
            Verify,
            Snapshot(Vec<Id>),
            Reconcile(Vec<Id>),
            Create,
        }
        let members = self.shards.members(slot);
        let sub = &self.subs[slot];
        if sub.busy || !sub.retry.ready(now) || (members.is_empty() && sub.active.is_none()) {
            return;
        }
        let token = &self.user_tokens[slot];
        let Some(access) = token.access(now).map(str::to_owned) else {
            if token.wants_request(now) {
                self.user_tokens[slot].state = TokenState::Requesting;
                let user = &settings.integration_users[slot];
                let refresh = env.refresh_token(&user.username);
                let req = token_request(settings, Some(user), refresh.as_deref());
                self.start(Pending::UserToken(slot), req);
            }
            return;
        };
        if sub.members_dirty && sub.active.as_ref().is_some_and(|a| &a.members == members) {
            self.subs[slot].members_dirty = false;
        }
        let sub = &self.subs[slot];
        let members = self.shards.members(slot);
        let reconcile_ms = match settings.reconcile_interval_ms {
            0 => DEFAULT_RECONCILE_MS,
            ms => ms,
        };
        // A subscription's user list cannot be changed (PATCH takes only the expiry and the
        // URLs): a shard that gained users is replaced at once (DELETE, then POST, then a
        // presence read of its users covers the gap). A shard that only lost users keeps its
        // subscription until its renewal is due and is replaced then: no gap for the others,
        // and notifications for the users who left are ignored meanwhile.
        // (Which of the two a changed shard is was decided once, in `advance_shards`: nothing
        // here costs O(users) per event.)
        let dirty = sub.members_dirty && sub.active.as_ref().is_some_and(|a| &a.members != members);
        let shrunk = sub.shrunk;
        // The users read: those the subscription covers that are still in the shard.
        let read_ids = |a: &ActiveSub| -> Vec<Id> {
            a.members
                .iter()
                .filter(|m| !shrunk || members.contains(*m))
                .take(MAX_IDS_PER_PRESENCE_READ)
                .cloned()
                .collect()
        };
        let next = match &sub.active {
            Some(a) if sub.stale_url || dirty || (shrunk && members.is_empty()) => Next::Delete(a.id.clone()),
            Some(a) if sub.reauthorize || self.microsoft_now(now) + RENEW_BEFORE_MS >= a.expires_at_ms => {
                if shrunk && &a.members != members { Next::Delete(a.id.clone()) } else { Next::Renew(a.id.clone()) }
            }
            Some(_) if sub.verify_due => Next::Verify,
            Some(a) if sub.needs_snapshot => Next::Snapshot(read_ids(a)),
            Some(_) if !sub.rejoined.is_empty() => {
                Next::Snapshot(sub.rejoined.iter().take(MAX_IDS_PER_PRESENCE_READ).cloned().collect())
            }
            // The periodic reconcile re-reads presence (Graph sends no `missed` lifecycle event
            // for presence); a change it finds that no notification brought makes it check the
            // subscription still exists.
            Some(a) if sub.last_snapshot_ms.is_some_and(|t| now >= t + reconcile_ms) => Next::Reconcile(read_ids(a)),
            Some(_) => return,
            None if !members.is_empty() => Next::Create,
            None => return,
        };
        let scope =
            if matches!(next, Next::Snapshot(_) | Next::Reconcile(_)) { Scope::Presence } else { Scope::Subscriptions };
        if !self.scope_ready(scope, now) {
            return;
        }
        if scope == Scope::Presence {
            if self.presence_budget.available(now) == 0 || *reads_open >= MAX_READS_OPEN {
                return;
            }
            self.presence_budget.take(now, 1);
            *reads_open += 1;
        }
        let graph = &settings.graph_base_url;
        self.subs[slot].busy = true;
        self.subs[slot].reading_rejoined = !self.subs[slot].needs_snapshot && matches!(next, Next::Snapshot(_));
        if matches!(next, Next::Reconcile(_)) {
            // A retry after a failed page goes on as `Snapshot`, still counting as this reconcile.
            let sub = &mut self.subs[slot];
            sub.needs_snapshot = true;
            sub.reconciling = true;
            sub.missed_change = false;
        }
        match next {
            Next::Verify => {
                // The list, not `GET /subscriptions/{id}`: the list is among the operations
                // Graph's OpenAPI description of the operations we call gives us
                // (<https://learn.microsoft.com/en-us/graph/api/subscription-list>).
                // Delegated, it holds the app's subscriptions of this integration user.
                let req = get(&format!("{graph}/v1.0/subscriptions"), &access);
                self.start(Pending::VerifySub(slot), req);
            }
            Next::Delete(id) => {
                let req = request("DELETE", &format!("{graph}/v1.0/subscriptions/{id}"), &access, None);
                self.start(Pending::DeleteSub(slot), req);
            }
            Next::Renew(id) => {
                let body = serde_json::json!({
                    "expirationDateTime": rfc3339(self.microsoft_now(now) + SUBSCRIPTION_LIFETIME_MS)
                });
                let req = request("PATCH", &format!("{graph}/v1.0/subscriptions/{id}"), &access, Some(body));
                self.start(Pending::RenewSub(slot), req);
            }
            Next::Snapshot(ids) | Next::Reconcile(ids) => {
                let body = serde_json::json!({ "ids": ids });
                let req =
                    request("POST", &format!("{graph}/v1.0/communications/getPresencesByUserId"), &access, Some(body));
                self.start(Pending::Presences(slot), req);
            }
            Next::Create => {
                self.subs[slot].shrunk = false;
                let members = self.shards.members(slot).clone();
                let client_state = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(env.random_bytes(32));
                let resource = format!(
                    "/communications/presences?$filter=id in ({})",
                    members.iter().map(|m| format!("'{m}'")).collect::<Vec<_>>().join(",")
                );
                let body = serde_json::json!({
                    "changeType": "updated",
                    "notificationUrl": settings.notification_url,
                    "lifecycleNotificationUrl": settings.lifecycle_notification_url,
                    "resource": resource,
                    "expirationDateTime": rfc3339(self.microsoft_now(now) + SUBSCRIPTION_LIFETIME_MS),
                    "clientState": client_state,
                    "includeResourceData": true,
                    "encryptionCertificate": settings.encryption_certificate,
                    "encryptionCertificateId": settings.encryption_certificate_id,
                    "latestSupportedTlsVersion": "v1_2",
                });
                let req = request("POST", &format!("{graph}/v1.0/subscriptions"), &access, Some(body));
                self.start(Pending::CreateSub { slot, client_state, members }, req);
            }
        }
    }

    /// Asks for the next page of a pageable answer of slot `slot`'s user (Graph's OpenAPI
    /// description marks them pageable) if there is one on the Graph host and a token to send
    /// it with; returns whether it did.
    fn follow_next_link(
        &mut self,
        slot: usize,
        next_link: Option<String>,
        pending: Pending,
        graph: &str,
        now: u64,
    ) -> bool {
        let next = next_link.filter(|n| on_origin(graph, n));
        match (next, self.user_tokens[slot].access(now).map(str::to_owned)) {
            (Some(next), Some(token)) => {
                self.subs[slot].busy = true;
                self.start(pending, get(&next, &token));
                true
            }
            _ => false,
        }
    }

    /// Whether a request of `scope` may go out now: no `Retry-After` pending, and none of its
    /// requests in flight (one at a time per service, so that after a 429 nothing else of that
    /// service is already on its way).
    fn scope_ready(&self, scope: Scope, now: u64) -> bool {
        self.throttled_until.get(&scope).is_none_or(|&t| now >= t)
            && self.scope_busy.get(&scope).is_none_or(|&n| n == 0)
    }

    fn start(&mut self, pending: Pending, request: HttpRequest) {
        if let Some(scope) = Scope::of(&pending) {
            *self.scope_busy.entry(scope).or_default() += 1;
        }
        self.next_id += 1;
        let id = self.next_id;
        self.pending.insert(id, pending);
        self.effects.push(Effect::Http { id, request });
    }

    /// The outcome of a request the core started: the throttling and token rules that hold
    /// for every Graph and Entra answer first (`throttling.rs`), then the answer's own
    /// concern: tokens (`tokens.rs`), the directory (`directory.rs`), the signing keys
    /// (`validation.rs`), pushes (`push.rs`), subscriptions (`subscriptions.rs`) or presence
    /// reads (`presence_reads.rs`).
    pub fn on_http_response(&mut self, env: &mut dyn Env, id: u64, outcome: Result<HttpResponse, HttpError>) {
        let Some(pending) = self.pending.remove(&id) else { return };
        let now = env.now_ms();
        let jitter = env.random_bytes(1)[0];
        let settings = self.settings.clone().unwrap();
        self.note_answer(&pending, &outcome, now);
        if let Ok(r) = &outcome
            && let Some(date) = r.header("date")
        {
            self.ms_clock.sample(date, now);
        }
        match pending {
            Pending::AppToken => self.on_app_token(outcome, now, jitter),
            Pending::UserToken(slot) => self.on_user_token(&settings, slot, outcome, now, jitter),
            Pending::UsersPage => self.on_users_page(env, &settings, outcome, now, jitter),
            Pending::GroupMembers => self.on_group_page(env, &settings, outcome, now, jitter),
            Pending::Absence(ms, op) => self.on_absence_response(ms, op, outcome, now, jitter),
            Pending::Poll(last) => self.on_poll(&settings, last, outcome, now, jitter),
            Pending::OpenIdConfig => self.on_openid_config(&settings, outcome, now, jitter),
            Pending::Jwks => self.on_jwks(env, outcome, now, jitter),
            Pending::Push(ops) => self.on_push_response(ops, outcome, now, jitter),
            Pending::Presences(slot) => self.on_presences(&settings, slot, outcome, now, jitter),
            Pending::CreateSub { slot, client_state, members } => {
                self.on_created(&settings, slot, client_state, members, outcome, now, jitter)
            }
            Pending::ListSubs(slot) => self.on_listed(&settings, slot, outcome, now, jitter),
            Pending::CleanupDelete(slot) => self.on_cleanup_deleted(slot),
            Pending::RenewSub(slot) => self.on_renewed(slot, outcome, now, jitter),
            Pending::VerifySub(slot) => self.on_verified(&settings, slot, outcome, now, jitter),
            Pending::DeleteSub(slot) => self.on_deleted(slot, outcome, now, jitter),
        }
        self.drive(env);
    }

    /// Starts matching the directory against the switchboard again. The current mapping stays
    /// in effect until the new one is complete. A large directory is matched in steps of
    /// [`MAPPING_STEP`] users' worth of work, one per call (`Effect::RequestTick` asks the host
    /// for the next), so that no call runs long; a small one completes in this call.
    fn rebuild_mapping(&mut self, env: &mut dyn Env) {
        if self.retiring {
            return;
        }
        if self.groups_pending() {
            // The policy's groups are being read for the first time: the build follows it.
            self.groups.rebuild_after = true;
            return;
        }
        if let Some(old) = self.building.take() {
            old.discard(&mut self.trash);
        }
        // Changes after this point are seen by the next read.
        self.switchboard_revision = Some(env.switchboard_revision());
        self.switchboard_read_after = env.now_ms() + SWITCHBOARD_REREAD_MS;
        // The switchboard's users first, a page per step.
        self.loading_switchboard = Some(mapping::SwitchboardLoad::with_capacity(self.switchboard_users));
        self.advance_mapping(env);
    }

    /// Reads the switchboard's directory again when its change counter moved (WIT
    /// `directory.revision`), unless a read or a match is already under way (it is then
    /// checked again when that is done) or the last one was under [`SWITCHBOARD_REREAD_MS`]
    /// ago. Costs one cheap host call per tick when nothing changed.
    fn watch_switchboard(&mut self, env: &mut dyn Env) {
        if self.settings.is_none()
            || self.retiring
            || !self.missing.is_empty()
            || self.dir.users.is_none()
            || self.dir.restoring.is_some()
            || self.loading_switchboard.is_some()
            || self.building.is_some()
            || self.sharding.is_some()
            || env.now_ms() < self.switchboard_read_after
        {
            return;
        }
        let revision = env.switchboard_revision();
        if revision == 0 || Some(revision) == self.switchboard_revision {
            return;
        }
        self.count("switchboard.changes-seen");
        self.log(Level::Info, "the switchboard's directory changed; reading it again", vec![]);
        self.rebuild_mapping(env);
    }

    /// Whether the switchboard may have changed since its last read: its counter moved, or
    /// the platform does not keep one (0).
    fn switchboard_may_have_changed(&self, env: &mut dyn Env) -> bool {
        let revision = env.switchboard_revision();
        revision == 0 || Some(revision) != self.switchboard_revision
    }

    /// One step of a mapping build in progress; applies the mapping when it is complete.
    fn advance_mapping(&mut self, env: &mut dyn Env) {
        if let Some(load) = self.loading_switchboard.as_mut() {
            let page = env.switchboard_users_page(load.len(), SWITCHBOARD_PAGE);
            let last = page.len() < SWITCHBOARD_PAGE;
            load.add(page, &self.mapping.by_switchboard);
            if !last {
                self.effects.push(Effect::RequestTick);
                return;
            }
            let users = self.loading_switchboard.take().unwrap().into_users();
            let several_pages = users.len() >= SWITCHBOARD_PAGE;
            let settings = self.settings.as_ref().unwrap();
            self.building = Some(mapping::MappingBuild::new(users, &settings.match_order, self.effective_overrides()));
            if several_pages {
                // The matching starts at the next step: this one had its share of work.
                self.effects.push(Effect::RequestTick);
                return;
            }
        }
        let Some(build) = self.building.as_mut() else { return };
        let Some(built) = build.step(self.dir.users.as_deref().unwrap_or_default(), &self.mapping, MAPPING_STEP) else {
            self.count("mapping.steps");
            self.effects.push(Effect::RequestTick);
            return;
        };
        let build = self.building.take().unwrap();
        let sb = build.switchboard();
        self.switchboard_users = sb.len();
        self.passive = sb.iter().filter(|u| !u.active).map(|u| u.id.to_string()).collect();
        // The policy's scope: pairs outside it are not mapped (so withdrawn, and their calls end).
        let remap = match built {
            mapping::Built::Whole(mut mapping) => {
                self.apply_scope(&mut mapping, sb);
                let old = std::mem::replace(&mut self.mapping, mapping);
                let remap = Remap::between(&old, &self.mapping);
                self.trash.mapping(old);
                remap
            }
            mapping::Built::Change(mut change) => {
                self.count("mapping.changed-in-place");
                let mut mapping = std::mem::take(&mut self.mapping);
                change.apply_to(&mut mapping);
                let out = self.apply_scope(&mut mapping, sb);
                self.mapping = mapping;
                if !out.is_empty() {
                    // Of the pairs the scope left out, those just added never were; the
                    // others were in effect, and go.
                    let added: HashSet<Id> = change.added.iter().map(|(ms, _)| ms.clone()).collect();
                    let out_ms: HashSet<&Id> = out.iter().map(|(ms, _)| ms).collect();
                    change.added.retain(|(ms, _)| !out_ms.contains(ms));
                    change.removed.extend(out.iter().filter(|(ms, _)| !added.contains(ms)).cloned());
                }
                Remap::of(&change)
            }
        };
        // Switchboard users mapped before and not now, but still in the switchboard: their
        // last Teams presence must not stay shown.
        let withdrawn: Vec<String> = if remap.lost.is_empty() {
            vec![]
        } else {
            sb.iter().filter(|u| remap.lost.contains(&*u.id)).map(|u| u.id.to_string()).collect()
        };
        build.discard(&mut self.trash);
        for id in withdrawn {
            self.count("presence.withdrawn");
            self.effects.push(Effect::Withdraw(id));
        }
        self.mapping_built = true;
        self.count("mapping.builds");
        self.follow_remapped(remap, env.now_ms());
        self.known.reserve_for(self.mapping.by_microsoft.len());
        self.take_early_absences();
        let summary = MappingSummary {
            mapped: self.mapping.by_microsoft.len() as u32,
            microsoft: self.dir.users.as_ref().map_or(0, |u| u.len()) as u32,
            switchboard: self.switchboard_users as u32,
        };
        if self.summary.as_ref() != Some(&summary) {
            self.effects
                .push(Effect::Store { key: STATE_SUMMARY.into(), value: Some(serde_json::to_vec(&summary).unwrap()) });
            self.summary = Some(summary);
        }
        self.effects.push(Effect::RequestTick);
        // The mapped users go into the shards (one per integration user) in steps too: at
        // once when they are few, from the next call on when this one had its share.
        if let Some(old) = self.sharding.replace(self.shards.start_apply()) {
            self.trash.placed(old.placed);
        }
        if self.mapping.by_microsoft.len() <= SHARD_STEP {
            self.advance_shards();
        }
    }

    /// What a new mapping (in effect now) changes beyond the shards:
    /// - a Microsoft user now shown on another switchboard user (addresses moved between
    ///   switchboard users) has its last known presence shown there at once;
    /// - a Microsoft user no longer mapped (its switchboard user was removed, or changed
    ///   addresses) is forgotten, and a call pushed to Teams for it ends (the session we hold
    ///   is cleared at the next drive); so does a call of a user who became passive.
    fn follow_remapped(&mut self, remap: Remap, now: u64) {
        let Remap { joined, gone, moved: republish, .. } = remap;
        self.joined = joined;
        for ms in &gone {
            let ms: &str = ms;
            self.known.forget(ms);
            self.notes.shown.remove(ms);
            // A status message we set for a user who is no longer synced goes, as the call
            // session does.
            self.notes.absences.remove(ms);
            if self.notes.own.contains_key(ms) {
                self.notes.absences.insert(ms.to_string(), notes::Absence::ended());
            }
        }
        for (ms, sb) in republish {
            if let Some(presence) = self.known.presence(&ms) {
                let origin =
                    if self.own_session(&ms) { PresenceOrigin::OwnLineStatus } else { PresenceOrigin::Snapshot };
                self.effects.push(Effect::Publish(PresenceUpdate {
                    user_id: sb.to_string(),
                    microsoft_user_id: ms.to_string(),
                    presence,
                    origin,
                    observed_at_ms: now,
                }));
                self.count("presence.published");
            }
        }
        let mapping = &self.mapping;
        let passive = &self.passive;
        let mut ended = 0;
        for (ms, call) in self.push.calls.iter_mut() {
            let still = mapping.by_microsoft.get(ms.as_str()).is_some_and(|sb| !passive.contains(&**sb));
            if call.in_call && !still {
                call.in_call = false;
                call.since_ms = now;
                ended += 1;
            }
        }
        if ended > 0 {
            self.count_n("line.calls-ended-by-directory", ended);
        }
        if !gone.is_empty() {
            self.log(
                Level::Info,
                "users no longer mapped are withdrawn",
                vec![("users".into(), gone.len().to_string())],
            );
        }
    }

    /// One step of assigning the mapped users to shards; when done, the shards whose members
    /// changed get their subscription updated and their presence re-read.
    fn advance_shards(&mut self) {
        let Some(job) = self.sharding.as_mut() else { return };
        let Some(changed) = self.shards.apply_step(job, &self.mapping.by_microsoft, SHARD_STEP) else {
            self.effects.push(Effect::RequestTick);
            return;
        };
        let job = self.sharding.take().unwrap();
        self.trash.placed(job.placed);
        let joined = std::mem::take(&mut self.joined);
        for (slot, changed) in changed.into_iter().enumerate() {
            if changed {
                let sub = &mut self.subs[slot];
                let members = self.shards.members(slot);
                if sub.active.as_ref().is_some_and(|a| members.is_subset(&a.members)) {
                    // Only users gone, or back: replaced at renewal; those back are read.
                    sub.shrunk = true;
                    sub.rejoined.extend(joined.iter().filter(|u| members.contains(*u)).cloned());
                } else {
                    sub.members_dirty = true;
                    sub.needs_snapshot = true;
                }
            }
        }
        self.log(
            Level::Info,
            "mapping rebuilt",
            vec![
                ("mapped".into(), self.mapping.by_microsoft.len().to_string()),
                ("conflicts".into(), self.mapping.conflicts.len().to_string()),
                ("uncovered".into(), self.shards.uncovered().to_string()),
            ],
        );
    }

    fn apply_presence(&mut self, p: GraphPresence, origin: PresenceOrigin, now: u64) -> bool {
        // One lookup: the mapping's own id string (shared, see `mapping::Id`) and the user's
        // switchboard user.
        let mapped = self.mapping.by_microsoft.get_key_value(p.id.as_str()).map(|(k, sb)| (k.clone(), sb.to_string()));
        let key: Id = match &mapped {
            Some((k, _)) => k.clone(),
            None => p.id.as_str().into(),
        };
        if let Some(seq) = &p.sequence_number {
            match self.known.sequence(&p.id) {
                // Strictly older only: the same sequence number is the same state (a snapshot
                // read after a notification), harmless to show again.
                Some(last) if seq.as_str() < last => {
                    // A re-read that a newer notification overtook is not a rejected notification.
                    self.count(if origin == PresenceOrigin::Snapshot { "snapshot.stale" } else { "rejected.stale" });
                    return false;
                }
                _ => {
                    self.known.set_sequence(&key, seq);
                }
            }
        }
        let Some((_, sb)) = mapped else {
            self.count("rejected.unmapped");
            return false;
        };
        self.apply_note(&p.id, &sb, p.status_message, p.out_of_office_settings);
        let presence = TeamsPresence { availability: p.availability, activity: p.activity };
        // Loop safety: Busy/InACall while our own session is up is our own doing. It is shown
        // as such and never taken as the user's Teams state (which decides future pushes).
        let own = self.is_own_presence(&p.id, &presence);
        let origin = if own { PresenceOrigin::OwnLineStatus } else { origin };
        if !own {
            self.known.set_presence(&key, &presence);
        }
        self.effects.push(Effect::Publish(PresenceUpdate {
            user_id: sb,
            microsoft_user_id: p.id,
            presence,
            origin,
            observed_at_ms: now,
        }));
        self.count("presence.published");
        true
    }

    fn count_n(&mut self, name: &str, n: usize) {
        // A counter met before is found without allocating its name again (the hot path).
        match self.counters.get_mut(name) {
            Some(c) => *c += n.max(1) as u64,
            None => {
                self.counters.insert(name.to_string(), n.max(1) as u64);
            }
        }
    }

    fn count(&mut self, name: &str) {
        self.count_n(name, 1);
    }

    fn log(&mut self, level: Level, message: &str, fields: Vec<(String, String)>) {
        self.effects.push(Effect::Log { level, message: message.into(), fields });
    }

    /// A batch of change or lifecycle notifications (the body Graph posted). The host
    /// answered Graph's validation handshake and checked the envelope before.
    pub fn on_notification(&mut self, env: &mut dyn Env, body: &[u8]) -> NotificationOutcome {
        if body.len() > MAX_WEBHOOK_BODY {
            self.count("rejected.oversized");
            return NotificationOutcome::Taken;
        }
        if !self.ready() {
            // The stored directory or its first mapping is still being restored (a large
            // tenant takes a few calls): the host keeps the notification and offers it again.
            self.count("notifications.deferred");
            return NotificationOutcome::RetryLater;
        }
        self.on_batch(env, body, true);
        self.drive(env);
        NotificationOutcome::Taken
    }

    /// Whether notifications can be processed: the stored directory is back and mapped (a
    /// mapping rebuilt later keeps the previous one in effect meanwhile).
    pub fn ready(&self) -> bool {
        self.dir.restoring.is_none()
            && ((self.building.is_none() && self.loading_switchboard.is_none()) || self.mapping_built)
    }

    /// Whether an item of the batch names one of our subscriptions with its `clientState`: a
    /// secret Graph alone was given, so such a batch did come from Graph (or from someone who
    /// has the secret). Only such a batch may change what the status says or be kept aside;
    /// anything else is counted and dropped.
    fn carries_our_client_state(&self, items: &[Result<Notification, serde_json::Value>]) -> bool {
        items.iter().any(|item| {
            let (id, given) = match item {
                Ok(n) => (Some(n.subscription_id.as_str()), n.client_state.as_deref()),
                Err(v) => {
                    let field = |k: &str| v.get(k).and_then(serde_json::Value::as_str);
                    (field("subscriptionId"), field("clientState"))
                }
            };
            let (Some(id), Some(given)) = (id, given) else { return false };
            self.subs
                .iter()
                .filter_map(|s| s.active.as_ref())
                .any(|a| a.id == id && bool::from(a.client_state.as_bytes().ct_eq(given.as_bytes())))
        })
    }

    /// A notification batch: tokens first (see `validation`), then each item.
    fn on_batch(&mut self, env: &mut dyn Env, body: &[u8], may_wait: bool) {
        #[derive(serde::Deserialize)]
        struct Batch<'a> {
            #[serde(borrow)]
            value: Vec<&'a serde_json::value::RawValue>,
            #[serde(default, rename = "validationTokens")]
            validation_tokens: Option<Vec<String>>,
        }
        let batch = match serde_json::from_slice::<Batch>(body) {
            Ok(b) => b,
            Err(e) => {
                self.count("rejected.malformed");
                self.log(Level::Warn, "malformed notification batch", vec![("error".into(), e.to_string())]);
                return;
            }
        };
        let now = env.now_ms();
        // Each item is read once, into its type; only an item that does not read as a
        // notification is looked at as plain JSON (for what the batch's checks need of it).
        let items: Vec<Result<Notification, serde_json::Value>> = batch
            .value
            .iter()
            .map(|raw| {
                serde_json::from_str::<Notification>(raw.get())
                    .map_err(|_| serde_json::from_str(raw.get()).unwrap_or(serde_json::Value::Null))
            })
            .collect();
        let rich = items.iter().any(|item| match item {
            Ok(n) => n.encrypted_content.is_some(),
            Err(v) => v.get("encryptedContent").is_some(),
        });
        let ours = self.carries_our_client_state(&items);
        match self.verdict(body, batch.validation_tokens.as_deref(), rich, ours, items.len(), now, may_wait) {
            validation::Verdict::Trusted => {}
            validation::Verdict::Wait | validation::Verdict::Refused => return,
        }
        for item in items {
            match item {
                Ok(n) => self.on_item(env, n, now),
                Err(_) => self.count("rejected.malformed"),
            }
        }
    }

    fn on_item(&mut self, env: &mut dyn Env, n: Notification, now: u64) {
        let Some(slot) = self.subs.iter().position(|s| s.active.as_ref().is_some_and(|a| a.id == n.subscription_id))
        else {
            self.count("rejected.unknown-subscription");
            return;
        };
        let expected = self.subs[slot].active.as_ref().unwrap().client_state.clone();
        let given = n.client_state.unwrap_or_default();
        if !bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
            self.count("rejected.client-state");
            return;
        }
        if let Some(event) = n.lifecycle_event {
            self.count(&format!("lifecycle.{event}"));
            if event == "reauthorizationRequired" {
                // A fresh token first, then renew (which reauthorizes), then re-read: changes
                // may have been missed meanwhile.
                if matches!(self.user_tokens[slot].state, TokenState::Valid { .. }) {
                    self.user_tokens[slot].state = TokenState::Empty;
                }
                self.subs[slot].reauthorize = true;
                self.subs[slot].needs_snapshot = true;
            }
            return;
        }
        let Some(content) = n.encrypted_content else {
            self.count("rejected.no-content");
            return;
        };
        let wrapped = match crypto::wrapped_key(&content) {
            Ok(w) => w,
            Err(_) => return self.count("rejected.malformed"),
        };
        let key = match env.unwrap_key(&content.encryption_certificate_id, &wrapped) {
            Ok(k) => k,
            Err(_) => return self.count("rejected.key"),
        };
        let plain = match crypto::decrypt(&content, &key) {
            Ok(p) => p,
            Err(crypto::DecryptError::Signature) => return self.count("rejected.signature"),
            Err(_) => return self.count("rejected.decrypt"),
        };
        let Ok(p) = serde_json::from_slice::<GraphPresence>(&plain) else {
            return self.count("rejected.malformed");
        };
        if !self.subs[slot].active.as_ref().unwrap().members.contains(p.id.as_str()) {
            return self.count("rejected.not-subscribed");
        }
        if !self.mapping.by_microsoft.contains_key(p.id.as_str()) {
            // Its switchboard user left; the subscription drops it at its renewal.
            return self.count("notifications.withdrawn-user");
        }
        self.count("notifications.accepted");
        self.last_notification_ms = Some(now);
        self.subs[slot].last_notification_ms = Some(now);
        if self.subs.iter().any(|s| s.page.is_some()) {
            self.drop_pending_presence(&p.id);
        }
        self.apply_presence(p, PresenceOrigin::Teams, now);
    }

    /// The status as an admin sees it.
    pub fn status(&self, _env: &dyn Env) -> IntegrationStatus {
        // Until the stored directory and its mapping are back after a restart (a few calls for
        // a large tenant), the counts are the last ones stored: nothing was lost meanwhile.
        let counts = match (&self.summary, self.mapping_built) {
            (Some(stored), false) => stored.clone(),
            _ => MappingSummary {
                mapped: self.mapping.by_microsoft.len() as u32,
                microsoft: self.dir.users.as_ref().map_or(0, |u| u.len()) as u32,
                switchboard: self.switchboard_users as u32,
            },
        };
        let settings = self.settings.as_ref();
        let subscriptions = settings
            .map(|s| {
                s.integration_users
                    .iter()
                    .enumerate()
                    .map(|(i, u)| {
                        let sub = &self.subs[i];
                        SubscriptionStatus {
                            integration_user: u.username.clone(),
                            subscription_id: sub.active.as_ref().map(|a| a.id.clone()),
                            users_covered: self.shards.members(i).len() as u32,
                            expires_at_ms: sub.active.as_ref().map(|a| a.expires_at_ms),
                            last_notification_ms: sub.last_notification_ms,
                            last_reconcile_ms: sub.last_snapshot_ms,
                            problem: self.user_tokens[i].problem().cloned().or_else(|| sub.problem.clone()),
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let health = if settings.is_none() {
            Health::MissingCredentials(vec!["settings".into()])
        } else if !self.missing.is_empty() {
            Health::MissingCredentials(self.missing.clone())
        } else if let Some(p) = self
            .app_token
            .problem()
            .or(self.dir.problem.as_ref().filter(|_| self.dir.users.is_none()))
            .or_else(|| subscriptions.iter().find_map(|s| s.problem.as_ref()))
        {
            Health::Error(p.clone())
        } else if let Some(p) = self.push.problem.as_ref().or(self.keys.refused.as_ref()) {
            Health::Error(p.clone())
        } else if let Some(p) = self.keys.problem.as_ref().filter(|_| !self.keys.waiting_is_empty()) {
            Health::Degraded(p.clone())
        } else if let Some(p) = &self.dir.problem {
            Health::Degraded(p.clone())
        } else if let Some(p) = self.groups.problem.as_ref().filter(|_| !self.policy.groups.is_empty()) {
            // The policy's groups: the last good membership stays in force (or, before the
            // first read, nobody of them syncs).
            Health::Degraded(p.clone())
        } else if self.ms_clock.offset_ms.abs() > CLOCK_OFFSET_SHOWN_MS {
            let o = self.ms_clock.offset_ms;
            Health::Degraded(problem(
                "clock-offset",
                format!(
                    "the host's clock is {:.1} minutes {} Microsoft's",
                    o.unsigned_abs() as f64 / 60_000.0,
                    if o > 0 { "behind" } else { "ahead of" }
                ),
            ))
        } else if let Some(p) = self.poll.problem.as_ref().filter(|_| self.shards.uncovered() > 0) {
            // The users no subscription covers are polled; polling fails.
            Health::Error(Problem {
                detail: format!(
                    "{}; {} mapped users are covered by no subscription (add {} integration user(s)) and cannot be polled",
                    p.detail,
                    self.shards.uncovered(),
                    self.shards.integration_users_needed()
                ),
                ..p.clone()
            })
        } else if self.dir.last_ok_ms.is_none()
            // The first mapping (switchboard read and matching, in steps) is not built yet.
            || !self.ready()
            // Nor are its users in the shards yet.
            || (self.sharding.is_some() && self.subs.iter().all(|s| s.active.is_none()))
            || self
                .subs
                .iter()
                .enumerate()
                .any(|(i, s)| {
                    // A periodic re-read (in flight, or its answer applied in steps) is no new start.
                    !self.shards.members(i).is_empty() && (s.active.is_none() || (s.needs_snapshot && !s.reconciling))
                })
            // The polled users' first round is not complete yet.
            || (self.shards.uncovered() > 0 && self.poll.rounds == 0)
        {
            Health::Starting
        } else {
            Health::Ok
        };
        IntegrationStatus {
            health,
            mapped_users: counts.mapped,
            microsoft_users: counts.microsoft,
            switchboard_users: counts.switchboard,
            // Users no subscription covers are polled: uncovered only while polling fails.
            uncovered_users: if self.poll.problem.is_some() { self.shards.uncovered() as u32 } else { 0 },
            integration_users_needed: self.shards.integration_users_needed() as u32,
            subscriptions,
            conflicts: self.mapping.conflicts.clone(),
            last_directory_refresh_ms: self.dir.last_ok_ms,
            last_notification_ms: self.last_notification_ms,
            last_reconcile_ms: self
                .subs
                .iter()
                .enumerate()
                .filter(|(i, s)| s.active.is_some() && !self.shards.members(*i).is_empty())
                .map(|(_, s)| s.last_snapshot_ms)
                .min()
                .flatten(),
            counters: self.counters.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Notification {
    subscription_id: String,
    client_state: Option<String>,
    lifecycle_event: Option<String>,
    encrypted_content: Option<EncryptedContent>,
}

/// A presence as Graph returns it. `availability` and `activity` are nullable in Graph's
/// schema; a missing or null value is shown as `PresenceUnknown`.
#[derive(serde::Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
struct GraphPresence {
    id: String,
    #[serde(default = "unknown", deserialize_with = "null_as_unknown")]
    availability: String,
    #[serde(default = "unknown", deserialize_with = "null_as_unknown")]
    activity: String,
    #[serde(default)]
    sequence_number: Option<String>,
    #[serde(default, deserialize_with = "notes::present")]
    status_message: Option<Option<notes::GraphStatusMessage>>,
    #[serde(default, deserialize_with = "notes::present")]
    out_of_office_settings: Option<Option<notes::GraphOutOfOffice>>,
}

/// What a new mapping changes, user by user.
#[derive(Debug, Default)]
struct Remap {
    /// Microsoft users mapped now and not before.
    joined: BTreeSet<Id>,
    /// Microsoft users mapped before and not now.
    gone: Vec<Id>,
    /// Microsoft users mapped before and now to another switchboard user (that one).
    moved: Vec<(Id, Id)>,
    /// Switchboard users mapped before and not now.
    lost: BTreeSet<Id>,
}

impl Remap {
    /// Between two whole mappings, in one pass over both (sorted) maps. Nobody joins a first
    /// mapping (or the first after a restart): it reads every subscription anyway.
    fn between(old: &Mapping, new: &Mapping) -> Remap {
        let mut r = Remap {
            joined: if old.by_microsoft.is_empty() {
                BTreeSet::new()
            } else {
                keys_gone(&new.by_microsoft, &old.by_microsoft).cloned().collect()
            },
            lost: keys_gone(&old.by_switchboard, &new.by_switchboard).cloned().collect(),
            ..Remap::default()
        };
        let mut new_it = new.by_microsoft.iter().peekable();
        for (ms, old_sb) in &old.by_microsoft {
            while new_it.next_if(|(k, _)| *k < ms).is_some() {}
            match new_it.peek() {
                Some((k, sb)) if *k == ms => {
                    if *sb != old_sb {
                        r.moved.push((ms.clone(), (*sb).clone()));
                    }
                }
                _ => r.gone.push(ms.clone()),
            }
        }
        r
    }

    /// Of a change: the pairs it removes were in effect, the ones it adds were not.
    fn of(change: &mapping::MappingChange) -> Remap {
        let removed: HashSet<&Id> = change.removed.iter().map(|(ms, _)| ms).collect();
        let added: HashSet<&Id> = change.added.iter().map(|(ms, _)| ms).collect();
        let added_sb: HashSet<&Id> = change.added.iter().map(|(_, sb)| sb).collect();
        let mut r = Remap::default();
        for (ms, sb) in &change.added {
            if removed.contains(ms) {
                r.moved.push((ms.clone(), sb.clone()));
            } else {
                r.joined.insert(ms.clone());
            }
        }
        for (ms, sb) in &change.removed {
            if !added.contains(ms) {
                r.gone.push(ms.clone());
            }
            if !added_sb.contains(sb) {
                r.lost.insert(sb.clone());
            }
        }
        r
    }
}

/// The keys of `old` that `new` lacks, in one pass over both (sorted) maps.
fn keys_gone<'a, V, W>(old: &'a BTreeMap<Id, V>, new: &'a BTreeMap<Id, W>) -> impl Iterator<Item = &'a Id> {
    let mut new_keys = new.keys().peekable();
    old.keys().filter(move |k| {
        while new_keys.next_if(|n| n < k).is_some() {}
        new_keys.peek() != Some(k)
    })
}

fn unknown() -> String {
    "PresenceUnknown".into()
}

fn null_as_unknown<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(<Option<String> as serde::Deserialize>::deserialize(d)?.unwrap_or_else(unknown))
}

/// Brings state written under schema `from` to [`STATE_SCHEMA_VERSION`], before it is read.
/// - 0 -> 1: state from before the schema was recorded has schema 1's layout (the `v1/`
///   keys): nothing to rewrite.
/// - 1 -> 2: the directory in chunks behind a head (`v2/directory`), and one key per
///   integration user's subscription (`v2/subscription/NNNN`). Converted as it is read: the
///   restore reads the schema-1 values when the schema-2 ones are absent, rewrites them in the
///   new layout and then deletes them (a large directory over several calls), so an upgrade
///   never needs one long call and a crash halfway reads the old values again.
fn upgrade_state(from: u32, _env: &mut dyn Env, _effects: &mut Vec<Effect>) {
    for step in from..STATE_SCHEMA_VERSION {
        match step {
            0 | 1 => {}
            _ => unreachable!("no upgrade from schema {step}"),
        }
    }
}

fn validate(s: &Settings) -> Result<(), ConfigError> {
    for (field, url) in [
        ("login-base-url", &s.login_base_url),
        ("graph-base-url", &s.graph_base_url),
        ("notification-url", &s.notification_url),
        ("lifecycle-notification-url", &s.lifecycle_notification_url),
    ] {
        if url.is_empty() {
            return Err(ConfigError::Missing(field.into()));
        }
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.ends_with('/') {
            return Err(ConfigError::Invalid(format!(
                "{field}: '{url}' must be an http(s) URL without a trailing slash"
            )));
        }
    }
    if s.encryption_certificate.is_empty() {
        return Err(ConfigError::Missing("encryption-certificate".into()));
    }
    if s.encryption_certificate_id.is_empty() || s.encryption_certificate_id.len() > 128 {
        return Err(ConfigError::Invalid("encryption-certificate-id: must be 1 to 128 characters".into()));
    }
    Ok(())
}

fn graph_failure(outcome: &Result<HttpResponse, HttpError>, what: &str) -> (Problem, Option<u64>) {
    match outcome {
        Ok(r) => (hints::from_graph_error(r.status, &r.body, what), retry_after(r)),
        Err(e) => (problem("network", format!("{what}: {e}")), None),
    }
}

fn get(url: &str, token: &str) -> HttpRequest {
    request("GET", url, token, None)
}

fn request(method: &str, url: &str, token: &str, body: Option<serde_json::Value>) -> HttpRequest {
    let mut headers = vec![("authorization".to_string(), format!("Bearer {token}"))];
    let body = match body {
        Some(b) => {
            headers.push(("content-type".into(), "application/json".into()));
            serde_json::to_vec(&b).unwrap()
        }
        None => Vec::new(),
    };
    HttpRequest { method: method.into(), url: url.into(), headers, body }
}

/// Formats milliseconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Whether `link` (a URL Graph or the login service handed back: a paging or delta link, a
/// `jwks_uri`) lies on `base`'s origin: `base` (`scheme://host[:port]`, no path) followed by
/// nothing, a path or a query. A prefix alone is not enough:
/// `https://graph.microsoft.com.evil.example/` and `https://graph.microsoft.com@evil.example/`
/// both start with the Graph base URL.
pub(crate) fn on_origin(base: &str, link: &str) -> bool {
    link.strip_prefix(base).is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
}

/// Parses an RFC 3339 date-time (any number of fraction digits) into milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}
