//! What an administrator sees of an integration ([`StatusView`], the status API's JSON) and
//! of a hot swap ([`SwapReport`]). Neither ever holds a secret.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::bindings::{WIT_VERSION, status};
pub use crate::error::SwapOutcome;

/// What the host knows of an integration, besides what its plugin reports.
pub(crate) struct HostSide {
    pub name: String,
    pub plugin_version: String,
    pub plugin: PluginView,
    pub last_swap: Option<SwapReport>,
    pub traps: u64,
    pub last_trap: Option<String>,
    pub config_error: Option<String>,
    pub refused_requests: u64,
    pub outbound_in_flight: u64,
    /// Guest calls per kind: how many, their total time and their total CPU time, in µs.
    pub call_totals: BTreeMap<&'static str, (u64, u64, u64)>,
    /// The longest guest call per kind, in ms.
    pub slowest: BTreeMap<&'static str, u64>,
    /// The most CPU time one guest call took per kind, in µs.
    pub slowest_cpu: BTreeMap<&'static str, u64>,
    pub linear_memory_bytes: u64,
    /// The host's counters and those carried over from releases before a swap.
    pub counters: BTreeMap<String, u64>,
    /// Rows and bytes waiting in the inbox.
    pub inbox: (u64, u64),
    /// State writes the store refused, being retried.
    pub state_writes_pending: u64,
    /// Why the last one failed.
    pub state_error: Option<String>,
    /// When the client secret expires, as the admin entered it (ms since the epoch).
    pub client_secret_expires_ms: Option<u64>,
    /// Now, by the host's clock.
    pub now_ms: u64,
}

/// An integration's status as the status API returns it (JSON). Holds no secrets.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// Integration name.
    pub name: String,
    /// `ok`, `starting`, `missing-credentials` or `error`.
    pub state: String,
    /// For `error`: the code (AADSTS or Graph code, or one of ours).
    pub code: Option<String>,
    /// For `error`: what to do.
    pub hint: Option<String>,
    /// For `error`: what happened.
    pub detail: Option<String>,
    /// For `missing-credentials`: which fields.
    pub missing: Vec<String>,
    /// Mapped users (the "Users" column).
    pub users: u32,
    /// Microsoft users read.
    pub microsoft_users: u32,
    /// Switchboard users.
    pub switchboard_users: u32,
    /// Users no subscription covers.
    pub uncovered_users: u32,
    /// Integration users to add.
    pub integration_users_needed: u32,
    /// Per integration user.
    pub subscriptions: Vec<SubscriptionView>,
    /// Ambiguous addresses.
    pub conflicts: Vec<ConflictView>,
    /// Last good directory read (ms since epoch).
    pub last_directory_refresh_ms: Option<u64>,
    /// Last accepted notification (ms since epoch).
    pub last_notification_ms: Option<u64>,
    /// Oldest last full presence re-read (ms since epoch).
    pub last_reconcile_ms: Option<u64>,
    /// Counters from the plugin.
    pub counters: BTreeMap<String, u64>,
    /// The running plugin's version.
    pub plugin_version: String,
    /// The running release: SHA-256 of the component, its WIT version, how it was loaded.
    pub plugin: PluginView,
    /// The last hot swap, if any.
    pub last_swap: Option<SwapReport>,
    /// The WIT package version the host speaks (the plugin's is in `plugin`).
    pub wit_version: String,
    /// Traps of this integration's plugin since start.
    pub traps: u64,
    /// The last trap.
    pub last_trap: Option<String>,
    /// Outbound requests refused by the allow-list.
    pub refused_requests: u64,
    /// Outbound requests the plugin started whose answer it has not been given yet (0: the
    /// plugin waits for nothing).
    pub outbound_in_flight: u64,
    /// The longest guest call so far per kind of call, in ms (the CPU bound is
    /// `call_deadline_ms`).
    pub slowest_calls_ms: BTreeMap<String, u64>,
    /// The most CPU time one guest call took so far per kind, in ms (guest code and the host
    /// imports it calls; what the `call_deadline_ms` bound counts).
    pub slowest_calls_cpu_ms: BTreeMap<String, f64>,
    /// The mean guest call per kind, in µs (guest code plus the host imports it calls).
    pub mean_calls_us: BTreeMap<String, f64>,
    /// Guest calls per kind so far.
    pub calls: BTreeMap<String, u64>,
    /// The CPU time those calls used, per kind, in µs.
    pub total_calls_cpu_us: BTreeMap<String, u64>,
    /// The instance's linear memory, in bytes, all its memories (the sandbox's memory cap
    /// applies to each; the plugin has one).
    pub linear_memory_bytes: u64,
    /// Notification batches acknowledged to Graph and not yet processed.
    pub inbox_rows: u64,
    /// Their bytes (as stored, sealed).
    pub inbox_bytes: u64,
    /// Plugin state writes the state store refused and the host retries every second (0:
    /// everything the plugin wrote is stored). While any wait, the state is `degraded` with
    /// the code `state-write-failed`.
    pub state_writes_pending: u64,
    /// Why the last of them failed.
    pub state_write_error: Option<String>,
    /// When the client secret expires, as the admin entered it (`client_secret_expires`).
    pub client_secret_expires_ms: Option<u64>,
    /// What needs the admin soon although the integration works now (a client secret that
    /// expires within [`SECRET_WARN_DAYS`] days, or has expired).
    pub warnings: Vec<WarningView>,
    /// How the sync policy applies now; `None`: the plugin has no `policy` export (WIT
    /// 3.5.0), or the status was read without it.
    pub policy: Option<PolicyView>,
}

/// How an integration's sync policy applies now (WIT `policy.policy-status`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PolicyView {
    /// Mapped users the policy lets sync.
    pub in_scope: u32,
    /// Mapped users in none of the policy's groups.
    pub outside_groups: u32,
    /// Mapped users excluded by name.
    pub excluded: u32,
    /// Users in scope whose calls are never pushed.
    pub teams_to_switchboard_only: u32,
    /// Members read over all groups (`null`: not read).
    pub group_members: Option<u32>,
    /// When the groups were last read in full (ms since the epoch).
    pub groups_read_at_ms: Option<u64>,
    /// Why the groups could not be read: code and hint.
    pub groups_code: Option<String>,
    /// What to do about it.
    pub groups_hint: Option<String>,
    /// Whether calls are pushed now (within working hours, or none set).
    pub within_working_hours: bool,
    /// Entries of the policy's user lists that name nobody.
    pub unknown_entries: Vec<String>,
    /// Users polled (no subscription covers them).
    pub polled_users: u32,
    /// How often each is read (ms; 0: nobody is polled).
    pub poll_interval_ms: u64,
    /// Polling rounds completed since the plugin started.
    pub poll_rounds: u64,
    /// When the last round completed (ms since the epoch).
    pub last_poll_round_ms: Option<u64>,
    /// Why polling fails: code.
    pub poll_code: Option<String>,
}

impl From<crate::bindings::policy::PolicyStatus> for PolicyView {
    fn from(s: crate::bindings::policy::PolicyStatus) -> Self {
        use crate::sandbox::{cap, printable};
        PolicyView {
            in_scope: s.in_scope,
            outside_groups: s.outside_groups,
            excluded: s.excluded,
            teams_to_switchboard_only: s.teams_to_switchboard_only,
            group_members: s.group_members,
            groups_read_at_ms: s.groups_read_at_ms,
            groups_code: s.groups_problem.as_ref().map(|p| printable(&cap(p.code.clone(), 128))),
            groups_hint: s.groups_problem.map(|p| printable(&cap(p.hint, 1024))),
            within_working_hours: s.within_working_hours,
            unknown_entries: s.unknown_entries.into_iter().take(100).map(|e| printable(&cap(e, 256))).collect(),
            polled_users: s.polling.users,
            poll_interval_ms: s.polling.interval_ms,
            poll_rounds: s.polling.rounds,
            last_poll_round_ms: s.polling.last_round_ms,
            poll_code: s.polling.problem.map(|p| printable(&cap(p.code, 128))),
        }
    }
}

/// What a proposed policy would do to one user in a call (`POST .../policy/dry-run`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DryRunView {
    /// Switchboard user id.
    pub user_id: String,
    /// Microsoft user id.
    pub microsoft_user_id: String,
    /// What Teams shows for the call now: `none`, `in-a-call`, `do-not-disturb`.
    pub now: String,
    /// What it would show under the proposed policy.
    pub after: String,
    /// The rule that decides.
    pub reason: String,
}

/// Days before the client secret's expiry from which the status warns.
pub const SECRET_WARN_DAYS: u64 = 30;

/// A warning in [`StatusView`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WarningView {
    /// Stable code (`client-secret-expiring`, `client-secret-expired`).
    pub code: String,
    /// What to do, with the date.
    pub hint: String,
}

/// The day (UTC, `YYYY-MM-DD`) of `ms` since the epoch.
pub fn date_of(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64).map(|t| t.date().to_string()).unwrap_or_default()
}

/// The warning for a client secret that expires at `expires_ms`, seen at `now_ms`.
pub fn secret_warning(expires_ms: u64, now_ms: u64) -> Option<WarningView> {
    const DAY_MS: u64 = 24 * 60 * 60 * 1000;
    let date = date_of(expires_ms);
    let renew = "create a new client secret in the app registration (Certificates & secrets), enter it in the integration, then delete the old one";
    if expires_ms <= now_ms {
        return Some(WarningView {
            code: "client-secret-expired".into(),
            hint: format!("The client secret expired on {date}: {renew}."),
        });
    }
    let days = (expires_ms - now_ms).div_ceil(DAY_MS);
    (days <= SECRET_WARN_DAYS).then(|| WarningView {
        code: "client-secret-expiring".into(),
        hint: format!(
            "The client secret expires on {date}, in {days} day{}: {renew}.",
            if days == 1 { "" } else { "s" }
        ),
    })
}

/// The running release in [`StatusView`].
#[derive(Debug, Clone, Serialize)]
pub struct PluginView {
    /// SHA-256 of the component, hex.
    pub sha256: String,
    /// The WIT package version the component speaks.
    pub wit_version: String,
    /// Component size in bytes.
    pub bytes: usize,
    /// Whether its compiled code came from the compile cache.
    pub from_cache: bool,
    /// Time to load it (compile or deserialize, plus prepare), in ms.
    pub load_ms: f64,
    /// Time to instantiate the running instance from the loaded release, in ms.
    pub instantiate_ms: f64,
}

/// One subscription in [`StatusView`].
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionView {
    /// Integration user.
    pub integration_user: String,
    /// Graph subscription id.
    pub subscription_id: Option<String>,
    /// Users covered.
    pub users_covered: u32,
    /// Expiry (ms since epoch).
    pub expires_at_ms: Option<u64>,
    /// Last accepted notification (ms since epoch).
    pub last_notification_ms: Option<u64>,
    /// Last full presence re-read of its users (ms since epoch).
    pub last_reconcile_ms: Option<u64>,
    /// Problem code.
    pub code: Option<String>,
    /// Problem hint.
    pub hint: Option<String>,
}

/// One conflict in [`StatusView`].
#[derive(Debug, Clone, Serialize)]
pub struct ConflictView {
    /// Address.
    pub email: String,
    /// `several-microsoft-users` or `several-switchboard-users`.
    pub kind: String,
    /// Candidates.
    pub candidates: Vec<String>,
}

impl StatusView {
    pub(crate) fn new(a: HostSide, s: Option<status::IntegrationStatus>) -> StatusView {
        let mut v = StatusView {
            name: a.name,
            state: "error".into(),
            code: None,
            hint: None,
            detail: None,
            missing: vec![],
            users: 0,
            microsoft_users: 0,
            switchboard_users: 0,
            uncovered_users: 0,
            integration_users_needed: 0,
            subscriptions: vec![],
            conflicts: vec![],
            last_directory_refresh_ms: None,
            last_notification_ms: None,
            last_reconcile_ms: None,
            counters: Default::default(),
            plugin_version: a.plugin_version,
            plugin: a.plugin,
            last_swap: a.last_swap,
            wit_version: WIT_VERSION.into(),
            traps: a.traps,
            last_trap: a.last_trap,
            refused_requests: a.refused_requests,
            outbound_in_flight: a.outbound_in_flight,
            slowest_calls_ms: a.slowest.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            slowest_calls_cpu_ms: a.slowest_cpu.iter().map(|(k, v)| (k.to_string(), *v as f64 / 1000.0)).collect(),
            mean_calls_us: a
                .call_totals
                .iter()
                .map(|(k, (n, us, _))| (k.to_string(), *us as f64 / (*n).max(1) as f64))
                .collect(),
            calls: a.call_totals.iter().map(|(k, (n, _, _))| (k.to_string(), *n)).collect(),
            total_calls_cpu_us: a.call_totals.iter().map(|(k, (_, _, cpu))| (k.to_string(), *cpu)).collect(),
            linear_memory_bytes: a.linear_memory_bytes,
            inbox_rows: a.inbox.0,
            inbox_bytes: a.inbox.1,
            state_writes_pending: a.state_writes_pending,
            state_write_error: a.state_error.clone(),
            client_secret_expires_ms: a.client_secret_expires_ms,
            warnings: a.client_secret_expires_ms.and_then(|e| secret_warning(e, a.now_ms)).into_iter().collect(),
            policy: None,
        };
        let Some(s) = s else {
            v.code = Some("plugin-trap".into());
            v.hint = Some(
                "The plugin failed and is being restarted; if this persists, roll back the plugin release.".into(),
            );
            return v;
        };
        if let Some(e) = a.config_error {
            v.code = Some("invalid-settings".into());
            v.hint = Some("The plugin refused the settings; correct them in the integration.".into());
            v.detail = Some(e);
        }
        match s.health {
            status::Health::Ok => v.state = "ok".into(),
            status::Health::Starting => v.state = "starting".into(),
            status::Health::Degraded(p) => {
                v.state = "degraded".into();
                v.code = Some(p.code);
                v.hint = Some(p.hint);
                v.detail = Some(p.detail);
            }
            status::Health::MissingCredentials(f) => {
                v.state = "missing-credentials".into();
                v.missing = f;
            }
            status::Health::Error(p) => {
                v.code = Some(p.code);
                v.hint = Some(p.hint);
                v.detail = Some(p.detail);
            }
        }
        if a.state_writes_pending > 0 && matches!(v.state.as_str(), "ok" | "degraded" | "starting") {
            v.state = "degraded".into();
            v.code = Some("state-write-failed".into());
            v.hint = Some(
                "The host cannot write this integration's state (disk full, read-only or the database is locked?); it \
                 retries every second, and what was not written is lost if the host stops meanwhile. Free the storage."
                    .into(),
            );
            v.detail = a.state_error.clone();
        }
        v.users = s.mapped_users;
        v.microsoft_users = s.microsoft_users;
        v.switchboard_users = s.switchboard_users;
        v.uncovered_users = s.uncovered_users;
        v.integration_users_needed = s.integration_users_needed;
        v.subscriptions = s
            .subscriptions
            .into_iter()
            .map(|x| SubscriptionView {
                integration_user: x.integration_user,
                subscription_id: x.subscription_id,
                users_covered: x.users_covered,
                expires_at_ms: x.expires_at_ms,
                last_notification_ms: x.last_notification_ms,
                last_reconcile_ms: x.last_reconcile_ms,
                code: x.problem.as_ref().map(|p| p.code.clone()),
                hint: x.problem.map(|p| p.hint),
            })
            .collect();
        v.conflicts = s
            .conflicts
            .into_iter()
            .map(|c| ConflictView {
                email: c.email,
                kind: match c.kind {
                    status::ConflictKind::SeveralMicrosoftUsers => "several-microsoft-users",
                    status::ConflictKind::SeveralSwitchboardUsers => "several-switchboard-users",
                    status::ConflictKind::UnresolvedOverride => "unresolved-override",
                }
                .into(),
                candidates: c.candidates,
            })
            .collect();
        v.last_directory_refresh_ms = s.last_directory_refresh_ms;
        v.last_notification_ms = s.last_notification_ms;
        v.last_reconcile_ms = s.last_reconcile_ms;
        v.counters = s.counters.into_iter().collect();
        for (k, n) in a.counters {
            *v.counters.entry(k).or_default() += n;
        }
        v
    }
}

/// The outcome of a hot swap, as the admin API returns it.
#[derive(Debug, Clone, Serialize)]
pub struct SwapReport {
    /// The integration.
    pub integration: String,
    /// What came of it.
    pub outcome: SwapOutcome,
    /// The release that ran before (plugin version and SHA-256 prefix).
    pub from: String,
    /// The release asked for.
    pub to: String,
    /// Why it rolled back or was refused.
    pub reason: Option<String>,
    /// How long this integration's events waited: from the swap's start (events held) to the
    /// moment the new instance was configured and took them, in ms.
    pub pause_ms: f64,
    /// Of the pause, the time spent waiting for outbound requests in flight to finish, in ms.
    pub drain_ms: f64,
    /// Events (webhooks, line events, ticks, answers) that waited during the swap and were
    /// then processed by the release that runs after it.
    pub held_events: usize,
    /// When it happened (ms since the epoch).
    pub at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_side(pending: u64) -> HostSide {
        HostSide {
            name: "contoso".into(),
            plugin_version: "0.1.0".into(),
            plugin: PluginView {
                sha256: "ab".into(),
                wit_version: WIT_VERSION.into(),
                bytes: 1,
                from_cache: false,
                load_ms: 0.0,
                instantiate_ms: 0.0,
            },
            last_swap: None,
            traps: 0,
            last_trap: None,
            config_error: None,
            refused_requests: 0,
            outbound_in_flight: 0,
            call_totals: Default::default(),
            slowest: Default::default(),
            slowest_cpu: Default::default(),
            linear_memory_bytes: 0,
            counters: Default::default(),
            inbox: (0, 0),
            state_writes_pending: pending,
            state_error: (pending > 0).then(|| "disk I/O error".to_string()),
            client_secret_expires_ms: None,
            now_ms: 1_800_000_000_000,
        }
    }

    fn healthy() -> status::IntegrationStatus {
        status::IntegrationStatus {
            health: status::Health::Ok,
            mapped_users: 3,
            microsoft_users: 3,
            switchboard_users: 3,
            uncovered_users: 0,
            integration_users_needed: 0,
            subscriptions: vec![],
            conflicts: vec![],
            last_directory_refresh_ms: None,
            last_notification_ms: None,
            last_reconcile_ms: None,
            counters: vec![],
        }
    }

    /// A healthy integration whose state writes fail shows it: degraded, its own code, the
    /// reason, how many wait.
    #[test]
    fn pending_state_writes_make_a_healthy_integration_degraded() {
        let v = StatusView::new(host_side(0), Some(healthy()));
        assert_eq!((v.state.as_str(), v.code.as_deref()), ("ok", None));
        let v = StatusView::new(host_side(2), Some(healthy()));
        assert_eq!(v.state, "degraded");
        assert_eq!(v.code.as_deref(), Some("state-write-failed"));
        assert_eq!(v.detail.as_deref(), Some("disk I/O error"));
        assert_eq!(v.state_writes_pending, 2);
        assert!(v.hint.unwrap().contains("retries"));
    }

    /// The admin entered the client secret's expiry: nothing until 30 days before, then a
    /// warning with the date and the days left (the integration stays ok), then "expired".
    #[test]
    fn a_client_secret_that_expires_soon_is_warned_of_30_days_ahead() {
        const DAY: u64 = 24 * 60 * 60 * 1000;
        let now = 1_800_000_000_000; // 2027-01-15T08:00:00Z
        let at = |expires: u64| {
            let v =
                StatusView::new(HostSide { client_secret_expires_ms: Some(expires), ..host_side(0) }, Some(healthy()));
            assert_eq!(v.state, "ok");
            v.warnings
        };
        assert!(at(now + 31 * DAY).is_empty());
        let w = at(now + 29 * DAY + 1);
        assert_eq!(w[0].code, "client-secret-expiring");
        assert!(w[0].hint.contains("2027-02-13") && w[0].hint.contains("in 30 days"), "{}", w[0].hint);
        assert!(at(now + DAY / 2)[0].hint.contains("in 1 day:"));
        let w = at(now - DAY);
        assert_eq!(w[0].code, "client-secret-expired");
        assert!(w[0].hint.contains("expired on 2027-01-14"), "{}", w[0].hint);
        assert!(StatusView::new(host_side(0), Some(healthy())).warnings.is_empty());
    }
}

/// What is still left of an integration being retired (WIT `admin.retire-progress`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retirement {
    /// Subscriptions still held at Microsoft.
    pub subscriptions: u32,
    /// Presence sessions still set in Teams.
    pub sessions: u32,
    /// Switchboard users withdrawn.
    pub users_withdrawn: u32,
    /// What stands in the way of the rest.
    pub problem: Option<String>,
}

impl Retirement {
    /// Nothing is left at Microsoft.
    pub fn done(&self) -> bool {
        self.subscriptions == 0 && self.sessions == 0
    }
}

/// The "Teams Presence users" list's query (WIT `users.users-query`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct UsersQuery {
    /// Text in the id, name, addresses or Microsoft user.
    #[serde(default)]
    pub search: String,
    /// `all` (default), `unmatched`, `uncovered` or `conflicts`.
    #[serde(default)]
    pub filter: UsersFilter,
    /// Rows to skip.
    #[serde(default)]
    pub offset: u32,
    /// Rows (1 to 500; default 50).
    #[serde(default = "default_limit")]
    pub limit: u32,
}

fn default_limit() -> u32 {
    50
}

/// Which users a [`UsersQuery`] returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UsersFilter {
    /// Everyone.
    #[default]
    All,
    /// Without a Microsoft user.
    Unmatched,
    /// Matched, covered by no subscription.
    Uncovered,
    /// In a conflict.
    Conflicts,
}

/// A row of the list (the guest's words, capped and made printable).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct UserRowView {
    /// Switchboard user id.
    pub switchboard_user_id: String,
    /// Name.
    pub name: String,
    /// Addresses.
    pub emails: Vec<String>,
    /// Has a line.
    pub active: bool,
    /// Microsoft user id.
    pub microsoft_user_id: Option<String>,
    /// Microsoft user (UPN or mail).
    pub microsoft_user: Option<String>,
    /// `override`, `mail`, `alias` or `upn`.
    pub matched_by: Option<std::borrow::Cow<'static, str>>,
    /// `no-address`, `no-match`, `conflict`, `unresolved-override` or `directory-not-read`.
    pub unmatched: Option<std::borrow::Cow<'static, str>>,
    /// Availability and activity.
    pub presence: Option<(String, String)>,
    /// The integration user whose subscription covers it.
    pub integration_user: Option<String>,
    /// The address of its conflict.
    pub conflict: Option<String>,
}

/// A page of the list.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct UsersPageView {
    /// Users matching the query.
    pub total: u32,
    /// The page.
    pub rows: Vec<UserRowView>,
}

/// Switchboard users by outcome (WIT `users.mapping-counts`).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct MappingCountsView {
    /// Read.
    pub switchboard_users: u32,
    /// Matched.
    pub mapped: u32,
    /// By explicit mapping.
    pub by_override: u32,
    /// By mail.
    pub by_mail: u32,
    /// By alias.
    pub by_alias: u32,
    /// By UPN.
    pub by_upn: u32,
    /// No address.
    pub no_address: u32,
    /// No Microsoft user has the address.
    pub no_match: u32,
    /// In a conflict.
    pub conflict: u32,
    /// Explicit mapping that names nobody.
    pub unresolved_override: u32,
    /// Microsoft's directory not read.
    pub directory_not_read: u32,
    /// Matched, covered by no subscription.
    pub uncovered: u32,
    /// Passive.
    pub passive: u32,
}
