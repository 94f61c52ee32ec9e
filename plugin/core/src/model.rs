//! Plain data types of the core. They mirror the WIT contract (`wit/`) one to one, so the
//! component glue converts them with `From` and nothing else.

/// Settings of one integration (`sync.settings` in WIT).
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    /// The integration's name.
    pub name: String,
    /// Entra tenant id (GUID) or domain.
    pub tenant_id: String,
    /// Application (client) id.
    pub client_id: String,
    /// Client secret value.
    pub client_secret: String,
    /// Integration users, in the admin's order.
    pub integration_users: Vec<IntegrationUser>,
    /// `https://login.microsoftonline.com` or an emulator.
    pub login_base_url: String,
    /// `https://graph.microsoft.com` or an emulator.
    pub graph_base_url: String,
    /// The change-notification URL.
    pub notification_url: String,
    /// The lifecycle-notification URL.
    pub lifecycle_notification_url: String,
    /// Base64 DER of the encryption certificate.
    pub encryption_certificate: String,
    /// Id echoed back in `encryptedContent`.
    pub encryption_certificate_id: String,
    /// "Push line status to Teams".
    pub push_line_status: bool,
    /// Calls shorter than this are not pushed (ms).
    pub min_call_length_ms: u64,
    /// Presence re-read interval (ms); 0 = [`crate::core::DEFAULT_RECONCILE_MS`].
    pub reconcile_interval_ms: u64,
    /// Interval between `/users/delta` rounds (ms); 0 = [`crate::core::DEFAULT_DELTA_INTERVAL_MS`].
    pub directory_delta_interval_ms: u64,
    /// Which addresses match, in order; empty = mail, proxy addresses, UPN.
    pub match_order: Vec<MatchSource>,
    /// Explicit mappings that win over address matching.
    pub overrides: Vec<MappingOverride>,
}

/// A source of addresses for matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum MatchSource {
    /// The user's `mail`.
    Mail,
    /// `smtp:` entries of `proxyAddresses`.
    ProxyAddresses,
    /// `userPrincipalName`.
    Upn,
}

/// "This switchboard user is that Microsoft user", whatever the addresses say.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MappingOverride {
    /// The switchboard user's id.
    pub switchboard_user_id: String,
    /// The Microsoft user's object id or one of their addresses (mail, alias or UPN).
    pub microsoft_user: String,
}

impl std::fmt::Debug for Settings {
    // Secrets must never reach a log, so Debug lists only what is safe.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("name", &self.name)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("integration_users", &self.integration_users.iter().map(|u| &u.username).collect::<Vec<_>>())
            .field("graph_base_url", &self.graph_base_url)
            .field("login_base_url", &self.login_base_url)
            .finish_non_exhaustive()
    }
}

/// An integration user (delegated identity holding one subscription).
#[derive(Clone, PartialEq, Eq)]
pub struct IntegrationUser {
    /// User principal name.
    pub username: String,
    /// Password for the ROPC grant.
    pub password: String,
}

/// A switchboard user (`directory.switchboard-user`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchboardUser {
    /// Switchboard id.
    pub id: String,
    /// Display name.
    pub display_name: String,
    /// Addresses.
    pub emails: Vec<String>,
    /// Line number, if any.
    pub line_number: Option<String>,
    /// Active (has a line) or passive.
    pub active: bool,
}

/// A Teams presence.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TeamsPresence {
    /// Availability, as Graph spells it.
    pub availability: String,
    /// Activity, as Graph spells it.
    pub activity: String,
}

/// Why a presence is published (see the WIT docs for the loop-safety rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceOrigin {
    /// Changed by the user or Teams.
    Teams,
    /// Our own line-status session.
    OwnLineStatus,
    /// A full read.
    Snapshot,
}

/// A presence to show in the switchboard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceUpdate {
    /// Switchboard user id.
    pub user_id: String,
    /// Microsoft user id.
    pub microsoft_user_id: String,
    /// The presence.
    pub presence: TeamsPresence,
    /// Why.
    pub origin: PresenceOrigin,
    /// When learnt.
    pub observed_at_ms: u64,
}

/// An outbound HTTP request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// Method.
    pub method: String,
    /// Absolute URL.
    pub url: String,
    /// Headers (may contain a bearer token: never log them).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// An HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Why a request produced no response (`outbound-http.http-error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// Origin not on the allow-list.
    NotAllowed(String),
    /// Malformed request.
    InvalidRequest(String),
    /// Over the size cap.
    TooLarge(u64),
    /// Connection failed.
    Connection(String),
    /// Timed out.
    Timeout,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::NotAllowed(o) => write!(f, "origin {o} is not allowed"),
            HttpError::InvalidRequest(r) => write!(f, "invalid request: {r}"),
            HttpError::TooLarge(n) => write!(f, "message larger than {n} bytes"),
            HttpError::Connection(r) => write!(f, "connection failed: {r}"),
            HttpError::Timeout => write!(f, "timed out"),
        }
    }
}

/// Log severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Debug.
    Debug,
    /// Info.
    Info,
    /// Warning.
    Warn,
    /// Error.
    Error,
}

/// Something the host must do for the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Start this request; answer with [`crate::Core::on_http_response`] and the same id.
    Http {
        /// Request id.
        id: u64,
        /// The request.
        request: HttpRequest,
    },
    /// Show this presence in the switchboard.
    Publish(PresenceUpdate),
    /// Stop showing a Teams presence for this switchboard user (no longer mapped).
    Withdraw(String),
    /// Show this note (status message, out of office) for the switchboard user.
    ShowNote {
        /// Switchboard user id.
        user_id: String,
        /// Microsoft user id.
        microsoft_user_id: String,
        /// The note.
        note: TeamsNote,
    },
    /// Keep this refresh token for the integration user instead of the one just used (WIT
    /// `credentials.keep-refresh-token`).
    KeepRefreshToken {
        /// The integration user.
        username: String,
        /// Its new refresh token.
        token: String,
    },
    /// Store (`Some`) or delete (`None`) a durable value.
    Store {
        /// Key.
        key: String,
        /// Value.
        value: Option<Vec<u8>>,
    },
    /// Call [`crate::Core::tick`] again soon: background work (a large mapping) goes on in
    /// bounded steps.
    RequestTick,
    /// Write a log record.
    Log {
        /// Severity.
        level: Level,
        /// Message.
        message: String,
        /// Fields.
        fields: Vec<(String, String)>,
    },
}

/// Why the host could not unwrap a notification key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnwrapError {
    /// Unknown certificate id.
    UnknownCertificate(String),
    /// RSA-OAEP failed.
    DecryptFailed,
}

/// What the core asks of its host synchronously. Implemented by the component glue with WIT
/// imports, and by fakes in tests.
pub trait Env {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Secure random bytes.
    fn random_bytes(&mut self, n: usize) -> Vec<u8>;
    /// RSA-OAEP-SHA1 unwrap of a notification key with the integration's private key.
    fn unwrap_key(&mut self, certificate_id: &str, wrapped: &[u8]) -> Result<Vec<u8>, UnwrapError>;
    /// Switchboard users from position `start`, at most `count` (fewer at the end).
    fn switchboard_users_page(&mut self, start: usize, count: usize) -> Vec<SwitchboardUser>;
    /// The switchboard directory's change counter (0: not tracked). See WIT
    /// `directory.revision`.
    fn switchboard_revision(&mut self) -> u64;
    /// A durable value written earlier with [`Effect::Store`].
    fn load(&mut self, key: &str) -> Option<Vec<u8>>;
    /// The stored keys that start with `prefix`, sorted.
    fn keys(&mut self, prefix: &str) -> Vec<String>;
    /// The refresh token the host keeps for an integration user signed in with the device
    /// code flow (WIT `credentials.refresh-token`); none by default.
    fn refresh_token(&mut self, username: &str) -> Option<String> {
        let _ = username;
        None
    }
}

/// A problem an admin can act on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// Stable code (`AADSTS7000215`, `Authorization_RequestDenied`, `capacity`, ...).
    pub code: String,
    /// What to do.
    pub hint: String,
    /// What happened.
    pub detail: String,
}

/// Overall health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// First sync not done.
    Starting,
    /// Synchronising.
    Ok,
    /// Synchronising on the last good directory read; the latest failed.
    Degraded(Problem),
    /// Fields to fill in.
    MissingCredentials(Vec<String>),
    /// An error.
    Error(Problem),
}

/// One integration user's subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionStatus {
    /// Username.
    pub integration_user: String,
    /// Graph subscription id.
    pub subscription_id: Option<String>,
    /// Users watched.
    pub users_covered: u32,
    /// Expiry.
    pub expires_at_ms: Option<u64>,
    /// Last accepted notification.
    pub last_notification_ms: Option<u64>,
    /// Last full presence re-read of its users.
    pub last_reconcile_ms: Option<u64>,
    /// Why not working.
    pub problem: Option<Problem>,
}

/// Which side of a mapping is ambiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConflictKind {
    /// Several Microsoft users.
    SeveralMicrosoftUsers,
    /// Several switchboard users.
    SeveralSwitchboardUsers,
    /// An override that names no switchboard user, or no single Microsoft user; `email` is
    /// what it names, `candidates` the switchboard user, the reason, and any candidates.
    UnresolvedOverride,
}

/// An ambiguous address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    /// Normalised address.
    pub email: String,
    /// Which side.
    pub kind: ConflictKind,
    /// Candidate ids.
    pub candidates: Vec<String>,
}

/// The status of one integration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntegrationStatus {
    /// Health.
    pub health: Health,
    /// Mapped switchboard users.
    pub mapped_users: u32,
    /// Microsoft users read.
    pub microsoft_users: u32,
    /// Switchboard users.
    pub switchboard_users: u32,
    /// Mapped users no subscription covers.
    pub uncovered_users: u32,
    /// Integration users to add.
    pub integration_users_needed: u32,
    /// Per integration user.
    pub subscriptions: Vec<SubscriptionStatus>,
    /// Ambiguous addresses.
    pub conflicts: Vec<Conflict>,
    /// Last good directory read.
    pub last_directory_refresh_ms: Option<u64>,
    /// Last accepted notification.
    pub last_notification_ms: Option<u64>,
    /// Oldest last full presence read among the subscriptions.
    pub last_reconcile_ms: Option<u64>,
    /// Counters.
    pub counters: Vec<(String, u64)>,
}

/// Why settings were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// Missing field.
    Missing(String),
    /// Bad value: `field: reason`.
    Invalid(String),
}

/// What the core made of a notification batch (WIT `notification-outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotificationOutcome {
    /// Processed: accepted or refused (and counted).
    Taken,
    /// The state is still being restored: offer it again after the next tick.
    RetryLater,
}

/// Why overrides were refused (WIT `override-error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OverrideError {
    /// Entry `index` is malformed.
    InvalidEntry {
        /// Its position in the list.
        index: u32,
        /// What is wrong.
        reason: String,
    },
}

/// A line state from the switchboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineState {
    /// No call.
    Idle,
    /// Ringing.
    Ringing,
    /// In a call.
    Connected,
    /// In a call, on hold.
    OnHold,
    /// The call ended.
    Ended,
}

impl LineState {
    /// Whether the user is in a call.
    pub fn in_call(self) -> bool {
        matches!(self, LineState::Connected | LineState::OnHold)
    }
}

/// A line event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineEvent {
    /// Switchboard user id.
    pub user_id: String,
    /// New state.
    pub state: LineState,
    /// When (ms since epoch).
    pub at_ms: u64,
}

/// Why a line event was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineEventError {
    /// Not mapped.
    UnmappedUser(String),
    /// Passive user.
    PassiveUser(String),
    /// Push is off.
    PushDisabled,
}

/// A GUID in its 8-4-4-4-12 hex form (a tenant id, rather than a domain).
pub fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A day of the week (`policy.weekday`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Weekday {
    /// Monday.
    Monday,
    /// Tuesday.
    Tuesday,
    /// Wednesday.
    Wednesday,
    /// Thursday.
    Thursday,
    /// Friday.
    Friday,
    /// Saturday.
    Saturday,
    /// Sunday.
    Sunday,
}

/// When calls are pushed (`policy.working-hours`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkingHours {
    /// IANA time zone name.
    pub time_zone: String,
    /// Days the hours apply to; empty = every day.
    pub days: Vec<Weekday>,
    /// Start, minutes after local midnight.
    pub start_minute: u32,
    /// End (exclusive), minutes after local midnight; before the start: spans midnight.
    pub end_minute: u32,
}

/// An integration's sync policy (`policy.sync-policy`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncPolicy {
    /// Entra group ids whose (transitive) members sync; empty = everyone.
    pub groups: Vec<String>,
    /// Users who do not sync at all.
    pub excluded_users: Vec<String>,
    /// Users whose calls are never pushed to Teams.
    pub teams_to_switchboard_only: Vec<String>,
    /// Availabilities a call may replace; empty = Available and Busy.
    pub call_replaces: Vec<String>,
    /// Show a call as DoNotDisturb/Presenting instead of Busy/InACall.
    pub do_not_disturb_in_call: bool,
    /// When calls are pushed; `None` = always.
    pub working_hours: Option<WorkingHours>,
}

/// Why a policy was refused (`policy.policy-error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyError {
    /// `field: reason`.
    Invalid(String),
}

/// What the plugin shows in Teams for a user in a call (`policy.call-presence`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallPresence {
    /// Nothing.
    None,
    /// Busy/InACall.
    InACall,
    /// DoNotDisturb/Presenting.
    DoNotDisturb,
}

/// What a policy would change for a user in a call (`policy.dry-run-entry`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DryRunEntry {
    /// Switchboard user id.
    pub user_id: String,
    /// Microsoft user id.
    pub microsoft_user_id: String,
    /// Under the policy in force.
    pub now: CallPresence,
    /// Under the proposed policy.
    pub after: CallPresence,
    /// The deciding rule.
    pub reason: String,
}

/// How the policy in force applies (`policy.policy-status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyStatus {
    /// Mapped users in scope.
    pub in_scope: u32,
    /// Mapped users outside the groups.
    pub outside_groups: u32,
    /// Mapped users excluded by name.
    pub excluded: u32,
    /// Users in scope whose calls are never pushed.
    pub teams_to_switchboard_only: u32,
    /// Members read over all groups.
    pub group_members: Option<u32>,
    /// When the groups were last read in full.
    pub groups_read_at_ms: Option<u64>,
    /// Why the groups could not be read.
    pub groups_problem: Option<Problem>,
    /// Whether calls are pushed now.
    pub within_working_hours: bool,
    /// List entries that name nobody.
    pub unknown_entries: Vec<String>,
    /// Polling of the users no subscription covers.
    pub polling: PollingStatus,
}

/// What a Teams user has written for others to see (`notes.teams-note`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TeamsNote {
    /// The status message's text.
    pub status_message: Option<String>,
    /// When it expires (ms).
    pub status_message_expires_ms: Option<u64>,
    /// Out of office.
    pub out_of_office: bool,
    /// The out-of-office message.
    pub out_of_office_message: Option<String>,
    /// The status message is the plugin's own.
    pub own: bool,
}

/// A switchboard user's absence (`absence.absence-event`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsenceEvent {
    /// Switchboard user id.
    pub user_id: String,
    /// The message; empty: the absence ended.
    pub message: String,
    /// When it ends (ms).
    pub until_ms: Option<u64>,
}

/// Why an absence was not taken (`absence.absence-error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AbsenceError {
    /// Not mapped (or out of scope).
    UnmappedUser(String),
    /// Longer than 280 characters; the payload is its length.
    TooLong(u32),
    /// Pushing to Teams is off.
    PushDisabled,
}

/// How polling stands (`policy.polling-status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PollingStatus {
    /// Users polled.
    pub users: u32,
    /// Round interval (ms; 0: nobody polled).
    pub interval_ms: u64,
    /// Rounds completed.
    pub rounds: u64,
    /// When the last round ended.
    pub last_round_ms: Option<u64>,
    /// Why polling fails.
    pub problem: Option<Problem>,
}
