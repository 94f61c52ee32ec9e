//! The emulator's world: tenants, app registrations, users with presence sessions, issued
//! tokens and subscriptions. Presence aggregation follows
//! <https://learn.microsoft.com/en-us/graph/cloud-communications-manage-presence-state>: a
//! user-preferred presence wins over sessions; among sessions DoNotDisturb > Busy > Available
//! > Away; with no live session the user is Offline.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

/// The session id the emulator uses for "the user's Teams client".
pub const TEAMS_CLIENT_SESSION: &str = "teams-client";

/// An app registration in a tenant.
#[derive(Debug, Clone)]
pub struct App {
    /// Application (client) id.
    pub client_id: String,
    /// Current secret.
    pub secret: String,
    /// Whether that secret has expired (AADSTS7000222).
    pub secret_expired: bool,
    /// Application permissions granted with admin consent (`User.Read.All`, ...).
    pub app_roles: BTreeSet<String>,
    /// Whether delegated permissions (Presence.Read.All) have been consented.
    pub delegated_consent: bool,
}

/// A presence session (a Teams client, or an app's setPresence session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Availability.
    pub availability: String,
    /// Activity.
    pub activity: String,
    /// When it expires (ms), if ever.
    pub expires_at_ms: Option<u64>,
    /// When it was last set (ms): among sessions of equal availability the latest one's
    /// activity shows (Microsoft documents only the availability precedence).
    pub set_at_ms: u64,
}

/// A Microsoft user.
#[derive(Debug, Clone)]
pub struct User {
    /// Object id.
    pub id: String,
    /// Display name.
    pub display_name: String,
    /// UPN.
    pub upn: String,
    /// Primary SMTP address.
    pub mail: Option<String>,
    /// `SMTP:` / `smtp:` entries.
    pub proxy_addresses: Vec<String>,
    /// Password, for users that sign in (integration users).
    pub password: Option<String>,
    /// Whether sign-in requires MFA (AADSTS50076 for ROPC).
    pub mfa_required: bool,
    /// Presence sessions by session id.
    pub sessions: BTreeMap<String, Session>,
    /// User-preferred presence.
    pub preferred: Option<Session>,
    /// Sequence number of the last presence change.
    pub sequence: u64,
    /// The aggregate last notified.
    pub last_aggregate: (String, String),
    /// The tenant's directory version when this user last changed (delta queries).
    pub dir_version: u64,
    /// The status message the user typed in Teams, or an app set (`setStatusMessage`).
    pub status_message: Option<StatusMessage>,
    /// Out of office (automatic replies on), with this message.
    pub out_of_office: Option<String>,
    /// The note (status message, out of office) last notified.
    pub last_note: (Option<StatusMessage>, Option<String>),
}

/// A presence status message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMessage {
    /// Its text.
    pub content: String,
    /// When it expires (ms), if it does.
    pub expires_at_ms: Option<u64>,
    /// When it was set (ms).
    pub published_ms: u64,
}

impl User {
    /// The status message in force at `now` (an expired one is gone).
    pub fn status_message_at(&self, now: u64) -> Option<&StatusMessage> {
        self.status_message.as_ref().filter(|m| m.expires_at_ms.is_none_or(|e| e > now))
    }

    /// `statusMessage` and `outOfOfficeSettings` as the presence resource carries them.
    pub fn note_json(&self, now: u64) -> (serde_json::Value, serde_json::Value) {
        let message = match self.status_message_at(now) {
            None => serde_json::Value::Null,
            Some(m) => serde_json::json!({
                "message": {"content": m.content, "contentType": "text"},
                "expiryDateTime": m.expires_at_ms.map(|e| serde_json::json!({
                    "dateTime": crate::wire::graph_time(e).trim_end_matches('Z').to_string(),
                    "timeZone": "UTC",
                })),
                "publishedDateTime": crate::wire::graph_time(m.published_ms),
            }),
        };
        let ooo = serde_json::json!({
            "isOutOfOffice": self.out_of_office.is_some(),
            "message": self.out_of_office,
        });
        (message, ooo)
    }

    /// When the first of the user's sessions, preferred presence or status message runs out.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        let sessions = self.sessions.values().filter_map(|s| s.expires_at_ms);
        let preferred = self.preferred.as_ref().and_then(|p| p.expires_at_ms);
        let message = self.status_message.as_ref().and_then(|m| m.expires_at_ms);
        sessions.chain(preferred).chain(message).min()
    }

    /// The aggregated presence at `now`.
    pub fn aggregate(&self, now: u64) -> (String, String) {
        let live: Vec<&Session> = self.sessions.values().filter(|s| s.expires_at_ms.is_none_or(|e| e > now)).collect();
        if live.is_empty() {
            return ("Offline".into(), "Offline".into());
        }
        if let Some(p) = self.preferred.as_ref().filter(|p| p.expires_at_ms.is_none_or(|e| e > now)) {
            return (p.availability.clone(), p.activity.clone());
        }
        let rank = |a: &str| match a.to_ascii_lowercase().as_str() {
            "donotdisturb" => 5,
            "busy" => 4,
            "available" => 3,
            "availableidle" | "availableinactive" => 2,
            "away" | "berightback" => 1,
            _ => 0,
        };
        let best = live.iter().max_by_key(|s| (rank(&s.availability), s.set_at_ms)).unwrap();
        (best.availability.clone(), best.activity.clone())
    }
}

/// A tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Tenant id (GUID).
    pub id: String,
    /// Primary domain.
    pub domain: String,
    /// App registrations by client id.
    pub apps: BTreeMap<String, App>,
    /// Users in directory order.
    pub users: Vec<User>,
    /// Index by id.
    pub by_id: HashMap<String, usize>,
    /// Index by UPN in lower case (the first user with it), for sign-ins: kept by
    /// [`Tenant::user_by_upn`], which checks each hit and rebuilds it on a miss, so code that
    /// adds users or changes a UPN need not know of it.
    pub by_upn: HashMap<String, usize>,
    /// Lifetime range of issued tokens, seconds.
    pub token_lifetime_s: (u64, u64),
    /// Directory version: bumped by every user change (delta queries).
    pub dir_version: u64,
    /// Removed users and the version of their removal.
    pub removed: Vec<(String, u64)>,
    /// Delta tokens of another epoch are gone (`410 Gone`).
    pub delta_epoch: u64,
    /// The tenant's admin declines admin consent (`error=access_denied`, AADSTS65004).
    pub refuse_consent: bool,
    /// Security groups by object id: their direct members (user or group ids).
    pub groups: BTreeMap<String, Vec<String>>,
}

/// A multi-tenant app registration of the switchboard vendor (the product guide's automated
/// setup): a tenant gets it (its service principal, with these permissions) through admin
/// consent.
#[derive(Debug, Clone)]
pub struct PlatformApp {
    /// Application (client) id.
    pub client_id: String,
    /// Its secret.
    pub secret: String,
    /// Application permissions it asks for (granted with the consent).
    pub app_roles: BTreeSet<String>,
    /// Its registered redirect URIs (the consent's `redirect_uri` must be one, exactly).
    pub redirect_uris: Vec<String>,
}

impl Tenant {
    /// Rebuilds the id index.
    pub fn reindex(&mut self) {
        self.by_id = self.users.iter().enumerate().map(|(i, u)| (u.id.clone(), i)).collect();
    }
    /// A user by id.
    pub fn user_mut(&mut self, id: &str) -> Option<&mut User> {
        let i = *self.by_id.get(id)?;
        self.users.get_mut(i)
    }
    /// Adds a directory user; returns its id.
    pub fn add_user(&mut self, display_name: &str, mail: &str) -> String {
        self.dir_version += 1;
        let id = uuid::Uuid::new_v4().to_string();
        self.users.push(User {
            id: id.clone(),
            display_name: display_name.into(),
            upn: mail.into(),
            mail: Some(mail.into()),
            proxy_addresses: vec![format!("SMTP:{mail}")],
            password: None,
            mfa_required: false,
            sessions: BTreeMap::new(),
            preferred: None,
            sequence: 0,
            last_aggregate: ("Offline".into(), "Offline".into()),
            dir_version: self.dir_version,
            status_message: None,
            out_of_office: None,
            last_note: (None, None),
        });
        self.reindex();
        id
    }
    /// Changes a user's mail (and primary SMTP address); false if there is no such user.
    pub fn set_mail(&mut self, id: &str, mail: &str) -> bool {
        self.dir_version += 1;
        let v = self.dir_version;
        let Some(u) = self.user_mut(id) else { return false };
        u.mail = Some(mail.into());
        u.proxy_addresses = vec![format!("SMTP:{mail}")];
        u.dir_version = v;
        true
    }
    /// Deletes a user; false if there is no such user.
    pub fn remove_user(&mut self, id: &str) -> bool {
        let Some(&i) = self.by_id.get(id) else { return false };
        self.dir_version += 1;
        self.users.remove(i);
        self.removed.push((id.to_string(), self.dir_version));
        self.reindex();
        true
    }
    /// Sets a group's direct members (user or group ids), creating the group.
    pub fn set_group(&mut self, id: &str, members: Vec<String>) {
        self.groups.insert(id.to_ascii_lowercase(), members);
    }

    /// A group's transitive members (through nested groups, each once, cycles allowed), in a
    /// stable order: `(id, is_group)`; `None` if there is no such group.
    pub fn transitive_members(&self, id: &str) -> Option<Vec<(String, bool)>> {
        let root = id.to_ascii_lowercase();
        self.groups.get(&root)?;
        let mut seen = BTreeSet::from([root.clone()]);
        let mut out = Vec::new();
        let mut queue = vec![root];
        while let Some(g) = queue.pop() {
            for m in self.groups.get(&g).into_iter().flatten() {
                let key = m.to_ascii_lowercase();
                if !seen.insert(key.clone()) {
                    continue;
                }
                if self.groups.contains_key(&key) {
                    out.push((key.clone(), true));
                    queue.push(key);
                } else if self.by_id.contains_key(m.as_str()) {
                    out.push((m.clone(), false));
                }
            }
        }
        out.sort();
        Some(out)
    }

    /// A user by UPN (case-insensitive).
    pub fn user_by_upn(&mut self, upn: &str) -> Option<&mut User> {
        let key = upn.to_ascii_lowercase();
        let holds = |t: &Tenant, i: usize| t.users.get(i).is_some_and(|u| u.upn.eq_ignore_ascii_case(upn));
        let i = match self.by_upn.get(&key) {
            Some(&i) if holds(self, i) => i,
            _ => {
                self.by_upn.clear();
                for (i, u) in self.users.iter().enumerate() {
                    self.by_upn.entry(u.upn.to_ascii_lowercase()).or_insert(i);
                }
                *self.by_upn.get(&key)?
            }
        };
        self.users.get_mut(i)
    }
}

/// What an issued token grants.
#[derive(Debug, Clone)]
pub enum Grant {
    /// Client credentials: application roles.
    App {
        /// Roles.
        roles: BTreeSet<String>,
    },
    /// Delegated (ROPC): the signed-in user.
    Delegated {
        /// User id.
        user_id: String,
    },
}

/// An issued token.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// Tenant id.
    pub tenant: String,
    /// Client id.
    pub client_id: String,
    /// Grant.
    pub grant: Grant,
    /// Expiry.
    pub expires_at_ms: u64,
}

/// A subscription.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    /// Id.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Creating app.
    pub client_id: String,
    /// Creating user.
    pub creator_id: String,
    /// Resource as given.
    pub resource: String,
    /// Watched user ids.
    #[serde(skip)]
    pub user_ids: BTreeSet<String>,
    /// Watched users.
    pub users: usize,
    /// Notification URL.
    pub notification_url: String,
    /// Lifecycle URL.
    pub lifecycle_notification_url: Option<String>,
    /// clientState.
    #[serde(skip)]
    pub client_state: Option<String>,
    /// Expiry.
    pub expires_at_ms: u64,
    /// SPKI DER of the encryption certificate's public key.
    #[serde(skip)]
    pub spki: Vec<u8>,
    /// Certificate id.
    pub cert_id: String,
    /// SHA-1 thumbprint of the certificate.
    #[serde(skip)]
    pub thumbprint: String,
    /// Rich notifications.
    pub include_resource_data: bool,
    /// Graph sent `reauthorizationRequired` and delivers nothing more until the app renews
    /// (PATCH) the subscription.
    pub reauthorization_required: bool,
}

/// An injected fault: the next `remaining` requests matching `method`/`path_contains`
/// get `status` (with `Retry-After` if given).
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
pub struct Fault {
    /// Method to match (any if absent).
    #[serde(default)]
    pub method: Option<String>,
    /// Substring of the path to match.
    pub path_contains: String,
    /// Status to answer.
    pub status: u16,
    /// Retry-After seconds.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// How many requests to hit.
    #[serde(default = "one")]
    pub remaining: u32,
    /// Let this many matching requests through first (e.g. fail the second page of a list).
    #[serde(default)]
    pub after: u32,
}

fn one() -> u32 {
    1
}

/// Everything the emulator knows.
#[derive(Debug)]
pub struct World {
    /// Tenants by lower-case id.
    pub tenants: BTreeMap<String, Tenant>,
    /// Issued tokens.
    pub tokens: HashMap<String, TokenInfo>,
    /// Subscriptions by id.
    pub subscriptions: BTreeMap<String, Subscription>,
    /// Injected faults.
    pub faults: Vec<Fault>,
    /// Request counts by route.
    pub requests: BTreeMap<String, u64>,
    /// Global sequence for presence changes.
    pub sequence: u64,
    /// Nothing of any user runs out before this (ms): the session timer skips its scan of
    /// every user until then. Lowered wherever something with an expiry is set;
    /// [`crate::Emulator::with_world`] sets it to 0 (scan), as it may set anything.
    pub next_expiry_ms: u64,
    /// Presence rate limit per app per tenant: (requests, window in ms). Graph documents
    /// 1,500 per 30 s (<https://learn.microsoft.com/en-us/graph/api/presence-get>); tests lower it to provoke throttling.
    pub presence_limit: (usize, u64),
    /// Recent presence requests per (tenant, client id).
    pub presence_calls: HashMap<(String, String), std::collections::VecDeque<u64>>,
    /// Until when each (tenant, client id) was told to wait by a `Retry-After`, and the
    /// `$batch` that 429 came in (its other requests were already sent).
    pub retry_until: HashMap<(String, String), (u64, Option<String>)>,
    /// Presence requests answered 429.
    pub throttled: u64,
    /// Requests that came sooner than a `Retry-After` allowed.
    pub early_requests: u64,
    /// After an injected fault with `Retry-After`: until when each (service, tenant, app) must
    /// wait. Services: `directory`, `subscriptions`, `presence`.
    pub fault_retry_until: HashMap<(String, String, String), u64>,
    /// What came early, for the test's message.
    pub early_log: Vec<String>,
    /// Multi-tenant apps by client id.
    pub platform_apps: BTreeMap<String, PlatformApp>,
    /// Device code sign-ins by device code.
    pub device_codes: HashMap<String, DeviceCode>,
    /// Refresh tokens that may still be used (each once: a refresh rotates it).
    pub refresh_tokens: HashMap<String, RefreshToken>,
    /// Device code polls that came sooner than their interval allowed.
    pub device_code_early_polls: u64,
}

/// A device code sign-in in progress.
#[derive(Debug, Clone)]
pub struct DeviceCode {
    /// Tenant key.
    pub tenant: String,
    /// The app that asked.
    pub client_id: String,
    /// The code the user enters.
    pub user_code: String,
    /// When it expires (ms).
    pub expires_at_ms: u64,
    /// Least seconds between two polls; a faster poll gets `slow_down`, and 5 s more.
    pub interval_s: u64,
    /// The last poll (ms).
    pub last_poll_ms: Option<u64>,
    /// Answer the next poll `slow_down` whatever its timing (a busy service).
    pub slow_down_next: bool,
    /// What the user did.
    pub state: DeviceCodeState,
}

/// What the user did with a device code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceCodeState {
    /// Nothing yet.
    Pending,
    /// Signed in (with MFA, where required) and accepted, as this user.
    Approved(String),
    /// Declined.
    Declined,
}

/// A refresh token.
#[derive(Debug, Clone)]
pub struct RefreshToken {
    /// Tenant key.
    pub tenant: String,
    /// The app it was issued to.
    pub client_id: String,
    /// The signed-in user.
    pub user_id: String,
}

impl Default for World {
    fn default() -> Self {
        World {
            tenants: BTreeMap::new(),
            tokens: HashMap::new(),
            subscriptions: BTreeMap::new(),
            faults: Vec::new(),
            requests: BTreeMap::new(),
            sequence: 0,
            next_expiry_ms: 0,
            presence_limit: (1500, 30_000),
            presence_calls: HashMap::new(),
            retry_until: HashMap::new(),
            throttled: 0,
            early_requests: 0,
            fault_retry_until: HashMap::new(),
            early_log: Vec::new(),
            platform_apps: BTreeMap::new(),
            device_codes: HashMap::new(),
            refresh_tokens: HashMap::new(),
            device_code_early_polls: 0,
        }
    }
}

impl World {
    /// A tenant by id or domain (case-insensitive).
    pub fn tenant_key(&self, t: &str) -> Option<String> {
        let t = t.to_ascii_lowercase();
        if self.tenants.contains_key(&t) {
            return Some(t);
        }
        self.tenants.iter().find(|(_, v)| v.domain.eq_ignore_ascii_case(&t)).map(|(k, _)| k.clone())
    }

    /// Takes a matching fault, if any.
    pub fn take_fault(&mut self, method: &str, path: &str) -> Option<Fault> {
        let i = self.faults.iter().position(|f| {
            f.remaining > 0
                && path.contains(&f.path_contains)
                && f.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method))
        })?;
        if self.faults[i].after > 0 {
            self.faults[i].after -= 1;
            return None;
        }
        let f = self.faults[i].clone();
        self.faults[i].remaining -= 1;
        if self.faults[i].remaining == 0 {
            self.faults.remove(i);
        }
        Some(f)
    }
}

/// How to seed a tenant.
#[derive(Debug, Clone)]
pub struct TenantSeed {
    /// Tenant id.
    pub tenant_id: String,
    /// Domain.
    pub domain: String,
    /// Client id of the app registration.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// Regular users.
    pub users: usize,
    /// Integration users (`presence-sync{n}@domain`) with this password.
    pub integration_users: usize,
    /// Password of the integration users.
    pub integration_password: String,
    /// Application roles granted.
    pub app_roles: Vec<String>,
}

impl TenantSeed {
    /// A seed with the product guide's permissions granted.
    pub fn new(
        tenant_id: &str,
        domain: &str,
        client_id: &str,
        secret: &str,
        users: usize,
        integration_users: usize,
    ) -> Self {
        TenantSeed {
            tenant_id: tenant_id.into(),
            domain: domain.into(),
            client_id: client_id.into(),
            client_secret: secret.into(),
            users,
            integration_users,
            integration_password: "Integration-Passw0rd!".into(),
            app_roles: vec!["User.Read.All".into(), "Presence.ReadWrite.All".into()],
        }
    }

    /// The username of integration user `n` (0-based).
    pub fn integration_user(&self, n: usize) -> String {
        format!("presence-sync{}@{}", n + 1, self.domain)
    }

    /// The email of regular user `i`.
    pub fn user_email(&self, i: usize) -> String {
        format!("user{i:05}@{}", self.domain)
    }

    /// Builds the tenant. Users get deterministic ids and a varied initial presence.
    pub fn build(&self) -> Tenant {
        const STATES: [(&str, &str); 6] = [
            ("Available", "Available"),
            ("Busy", "InAMeeting"),
            ("Away", "Away"),
            ("DoNotDisturb", "Presenting"),
            ("Busy", "Busy"),
            ("BeRightBack", "BeRightBack"),
        ];
        let salt = self.tenant_id.chars().filter(|c| c.is_ascii_hexdigit()).take(8).collect::<String>();
        let mut users = Vec::with_capacity(self.users + self.integration_users);
        for i in 0..self.users {
            let mail = self.user_email(i);
            let mut sessions = BTreeMap::new();
            // Every 7th user has no Teams client running (Offline).
            if i % 7 != 6 {
                let (a, b) = STATES[i % STATES.len()];
                sessions.insert(
                    TEAMS_CLIENT_SESSION.to_string(),
                    Session { availability: a.into(), activity: b.into(), expires_at_ms: None, set_at_ms: 0 },
                );
            }
            users.push(User {
                id: format!("{salt:0>8}-{:04x}-4000-8000-{:012x}", (i >> 16) & 0xffff, i),
                display_name: format!("User {i:05}"),
                upn: format!("u{i:05}@{}", self.domain),
                proxy_addresses: vec![format!("SMTP:{mail}"), format!("smtp:user.{i}@{}", self.domain)],
                mail: Some(mail),
                password: None,
                mfa_required: false,
                sessions,
                preferred: None,
                sequence: 0,
                last_aggregate: Default::default(),
                dir_version: 0,
                status_message: None,
                out_of_office: None,
                last_note: (None, None),
            });
        }
        for n in 0..self.integration_users {
            let upn = self.integration_user(n);
            users.push(User {
                id: format!("{salt:0>8}-ffff-4000-8000-{:012x}", n),
                display_name: format!("Presence integration {}", n + 1),
                upn: upn.clone(),
                mail: None,
                proxy_addresses: vec![],
                password: Some(self.integration_password.clone()),
                mfa_required: false,
                sessions: BTreeMap::new(),
                preferred: None,
                sequence: 0,
                last_aggregate: Default::default(),
                dir_version: 0,
                status_message: None,
                out_of_office: None,
                last_note: (None, None),
            });
        }
        let app = App {
            client_id: self.client_id.clone(),
            secret: self.client_secret.clone(),
            secret_expired: false,
            app_roles: self.app_roles.iter().cloned().collect(),
            delegated_consent: true,
        };
        let mut t = Tenant {
            id: self.tenant_id.to_ascii_lowercase(),
            domain: self.domain.clone(),
            apps: BTreeMap::from([(app.client_id.clone(), app)]),
            users,
            by_id: HashMap::new(),
            by_upn: HashMap::new(),
            token_lifetime_s: (3599, 5399),
            dir_version: 0,
            removed: Vec::new(),
            delta_epoch: 0,
            refuse_consent: false,
            groups: BTreeMap::new(),
        };
        t.reindex();
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        TenantSeed::new("00000000-0000-0000-0000-000000000001", "x.com", "c", "s", 1, 0).build().users[0].clone()
    }

    #[test]
    fn dnd_session_beats_busy_and_preferred_beats_all() {
        let mut u = user();
        u.sessions.insert(
            "a".into(),
            Session { availability: "Busy".into(), activity: "InACall".into(), expires_at_ms: None, set_at_ms: 0 },
        );
        u.sessions.insert(
            "b".into(),
            Session {
                availability: "DoNotDisturb".into(),
                activity: "Presenting".into(),
                expires_at_ms: None,
                set_at_ms: 0,
            },
        );
        assert_eq!(u.aggregate(0).0, "DoNotDisturb");
        u.preferred =
            Some(Session { availability: "Away".into(), activity: "Away".into(), expires_at_ms: None, set_at_ms: 0 });
        assert_eq!(u.aggregate(0), ("Away".into(), "Away".into()));
    }

    #[test]
    fn expired_sessions_leave_the_user_offline() {
        let mut u = user();
        u.sessions.clear();
        u.sessions.insert(
            "a".into(),
            Session { availability: "Busy".into(), activity: "InACall".into(), expires_at_ms: Some(10), set_at_ms: 0 },
        );
        assert_eq!(u.aggregate(5).1, "InACall");
        assert_eq!(u.aggregate(11), ("Offline".into(), "Offline".into()));
    }
}
