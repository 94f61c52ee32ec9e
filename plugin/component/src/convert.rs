//! `From` conversions between the WIT types and the core's types.

use super::*;

impl From<sync::Settings> for core::Settings {
    fn from(s: sync::Settings) -> Self {
        core::Settings {
            name: s.name,
            tenant_id: s.tenant_id,
            client_id: s.client_id,
            client_secret: s.client_secret,
            integration_users: s
                .integration_users
                .into_iter()
                .map(|u| core::IntegrationUser { username: u.username, password: u.password })
                .collect(),
            login_base_url: s.login_base_url,
            graph_base_url: s.graph_base_url,
            notification_url: s.notification_url,
            lifecycle_notification_url: s.lifecycle_notification_url,
            encryption_certificate: s.encryption_certificate,
            encryption_certificate_id: s.encryption_certificate_id,
            push_line_status: s.push_line_status,
            min_call_length_ms: s.min_call_length_ms,
            reconcile_interval_ms: s.reconcile_interval_ms,
            directory_delta_interval_ms: s.directory_delta_interval_ms,
            match_order: s.match_order.into_iter().map(Into::into).collect(),
            overrides: s.overrides.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<sync::MatchSource> for core::MatchSource {
    fn from(m: sync::MatchSource) -> Self {
        match m {
            sync::MatchSource::Mail => core::MatchSource::Mail,
            sync::MatchSource::ProxyAddresses => core::MatchSource::ProxyAddresses,
            sync::MatchSource::Upn => core::MatchSource::Upn,
        }
    }
}

impl From<sync::MappingOverride> for core::MappingOverride {
    fn from(o: sync::MappingOverride) -> Self {
        core::MappingOverride { switchboard_user_id: o.switchboard_user_id, microsoft_user: o.microsoft_user }
    }
}

impl From<core::MappingOverride> for sync::MappingOverride {
    fn from(o: core::MappingOverride) -> Self {
        sync::MappingOverride { switchboard_user_id: o.switchboard_user_id, microsoft_user: o.microsoft_user }
    }
}

impl From<core::ConfigError> for sync::ConfigError {
    fn from(e: core::ConfigError) -> Self {
        match e {
            core::ConfigError::Missing(f) => sync::ConfigError::Missing(f),
            core::ConfigError::Invalid(r) => sync::ConfigError::Invalid(r),
        }
    }
}

impl From<directory::SwitchboardUser> for core::SwitchboardUser {
    fn from(u: directory::SwitchboardUser) -> Self {
        core::SwitchboardUser {
            id: u.id,
            display_name: u.display_name,
            emails: u.emails,
            line_number: u.line_number,
            active: u.active,
        }
    }
}

impl From<core::HttpRequest> for outbound_http::Request {
    fn from(r: core::HttpRequest) -> Self {
        outbound_http::Request { method: r.method, url: r.url, headers: r.headers, body: r.body }
    }
}

impl From<outbound_http::Response> for core::HttpResponse {
    fn from(r: outbound_http::Response) -> Self {
        core::HttpResponse { status: r.status, headers: r.headers, body: r.body }
    }
}

impl From<outbound_http::HttpError> for core::HttpError {
    fn from(e: outbound_http::HttpError) -> Self {
        match e {
            outbound_http::HttpError::NotAllowed(o) => core::HttpError::NotAllowed(o),
            outbound_http::HttpError::InvalidRequest(r) => core::HttpError::InvalidRequest(r),
            outbound_http::HttpError::TooLarge(n) => core::HttpError::TooLarge(n),
            outbound_http::HttpError::Connection(r) => core::HttpError::Connection(r),
            outbound_http::HttpError::Timeout => core::HttpError::Timeout,
        }
    }
}

impl From<core::PresenceUpdate> for presence::PresenceUpdate {
    fn from(u: core::PresenceUpdate) -> Self {
        presence::PresenceUpdate {
            user_id: u.user_id,
            microsoft_user_id: u.microsoft_user_id,
            presence: types::TeamsPresence { availability: u.presence.availability, activity: u.presence.activity },
            origin: match u.origin {
                core::PresenceOrigin::Teams => types::PresenceOrigin::Teams,
                core::PresenceOrigin::OwnLineStatus => types::PresenceOrigin::OwnLineStatus,
                core::PresenceOrigin::Snapshot => types::PresenceOrigin::Snapshot,
            },
            observed_at_ms: u.observed_at_ms,
        }
    }
}

impl From<core::Level> for log::Level {
    fn from(l: core::Level) -> Self {
        match l {
            core::Level::Debug => log::Level::Debug,
            core::Level::Info => log::Level::Info,
            core::Level::Warn => log::Level::Warn,
            core::Level::Error => log::Level::Error,
        }
    }
}

impl From<core::NotificationOutcome> for sync::NotificationOutcome {
    fn from(o: core::NotificationOutcome) -> Self {
        match o {
            core::NotificationOutcome::Taken => sync::NotificationOutcome::Taken,
            core::NotificationOutcome::RetryLater => sync::NotificationOutcome::RetryLater,
        }
    }
}

impl From<core::OverrideError> for sync::OverrideError {
    fn from(e: core::OverrideError) -> Self {
        match e {
            core::OverrideError::InvalidEntry { index, reason } => {
                sync::OverrideError::InvalidEntry(sync::OverrideProblem { index, reason })
            }
        }
    }
}

impl From<core::Problem> for types::Problem {
    fn from(p: core::Problem) -> Self {
        types::Problem { code: p.code, hint: p.hint, detail: p.detail }
    }
}

impl From<core::IntegrationStatus> for status::IntegrationStatus {
    fn from(s: core::IntegrationStatus) -> Self {
        status::IntegrationStatus {
            health: match s.health {
                core::Health::Starting => status::Health::Starting,
                core::Health::Ok => status::Health::Ok,
                core::Health::Degraded(p) => status::Health::Degraded(p.into()),
                core::Health::MissingCredentials(f) => status::Health::MissingCredentials(f),
                core::Health::Error(p) => status::Health::Error(p.into()),
            },
            mapped_users: s.mapped_users,
            microsoft_users: s.microsoft_users,
            switchboard_users: s.switchboard_users,
            uncovered_users: s.uncovered_users,
            integration_users_needed: s.integration_users_needed,
            subscriptions: s
                .subscriptions
                .into_iter()
                .map(|x| status::SubscriptionStatus {
                    integration_user: x.integration_user,
                    subscription_id: x.subscription_id,
                    users_covered: x.users_covered,
                    expires_at_ms: x.expires_at_ms,
                    last_notification_ms: x.last_notification_ms,
                    last_reconcile_ms: x.last_reconcile_ms,
                    problem: x.problem.map(Into::into),
                })
                .collect(),
            conflicts: s
                .conflicts
                .into_iter()
                .map(|c| status::Conflict {
                    email: c.email,
                    kind: match c.kind {
                        core::ConflictKind::SeveralMicrosoftUsers => status::ConflictKind::SeveralMicrosoftUsers,
                        core::ConflictKind::SeveralSwitchboardUsers => status::ConflictKind::SeveralSwitchboardUsers,
                        core::ConflictKind::UnresolvedOverride => status::ConflictKind::UnresolvedOverride,
                    },
                    candidates: c.candidates,
                })
                .collect(),
            last_directory_refresh_ms: s.last_directory_refresh_ms,
            last_notification_ms: s.last_notification_ms,
            last_reconcile_ms: s.last_reconcile_ms,
            counters: s.counters,
        }
    }
}

impl From<presence::LineEvent> for core::LineEvent {
    fn from(e: presence::LineEvent) -> Self {
        core::LineEvent {
            user_id: e.user_id,
            state: match e.state {
                presence::LineState::Idle => core::LineState::Idle,
                presence::LineState::Ringing => core::LineState::Ringing,
                presence::LineState::Connected => core::LineState::Connected,
                presence::LineState::OnHold => core::LineState::OnHold,
                presence::LineState::Ended => core::LineState::Ended,
            },
            at_ms: e.at_ms,
        }
    }
}

impl From<core::LineEventError> for sync::LineEventError {
    fn from(e: core::LineEventError) -> Self {
        match e {
            core::LineEventError::UnmappedUser(u) => sync::LineEventError::UnmappedUser(u),
            core::LineEventError::PassiveUser(u) => sync::LineEventError::PassiveUser(u),
            core::LineEventError::PushDisabled => sync::LineEventError::PushDisabled,
        }
    }
}

impl From<core::RetireProgress> for admin::RetireProgress {
    fn from(p: core::RetireProgress) -> Self {
        admin::RetireProgress {
            subscriptions: p.subscriptions,
            sessions: p.sessions,
            users_withdrawn: p.users_withdrawn,
            problem: p.problem,
        }
    }
}

impl From<users::UsersQuery> for core::UsersQuery {
    fn from(q: users::UsersQuery) -> Self {
        core::UsersQuery {
            search: q.search,
            filter: match q.filter {
                users::UsersFilter::All => core::UsersFilter::All,
                users::UsersFilter::Unmatched => core::UsersFilter::Unmatched,
                users::UsersFilter::Uncovered => core::UsersFilter::Uncovered,
                users::UsersFilter::Conflicts => core::UsersFilter::Conflicts,
            },
            offset: q.offset,
            limit: q.limit,
        }
    }
}

impl From<core::UserRow> for users::UserRow {
    fn from(r: core::UserRow) -> Self {
        users::UserRow {
            switchboard_user_id: r.switchboard_user_id,
            name: r.name,
            emails: r.emails,
            active: r.active,
            microsoft_user_id: r.microsoft_user_id,
            microsoft_user: r.microsoft_user,
            matched_by: r.matched_by.map(|m| match m {
                core::MatchedBy::Override => users::MatchedBy::Override,
                core::MatchedBy::Mail => users::MatchedBy::Mail,
                core::MatchedBy::Alias => users::MatchedBy::Alias,
                core::MatchedBy::Upn => users::MatchedBy::Upn,
            }),
            unmatched: r.unmatched.map(|u| match u {
                core::Unmatched::NoAddress => users::UnmatchedReason::NoAddress,
                core::Unmatched::NoMatch => users::UnmatchedReason::NoMatch,
                core::Unmatched::Conflict => users::UnmatchedReason::Conflict,
                core::Unmatched::UnresolvedOverride => users::UnmatchedReason::UnresolvedOverride,
                core::Unmatched::DirectoryNotRead => users::UnmatchedReason::DirectoryNotRead,
            }),
            presence: r.presence.map(|p| types::TeamsPresence { availability: p.availability, activity: p.activity }),
            integration_user: r.integration_user,
            conflict: r.conflict,
        }
    }
}

impl From<core::UsersPage> for users::UsersPage {
    fn from(p: core::UsersPage) -> Self {
        users::UsersPage { total: p.total, rows: p.rows.into_iter().map(Into::into).collect() }
    }
}

impl From<core::MappingCounts> for users::MappingCounts {
    fn from(c: core::MappingCounts) -> Self {
        users::MappingCounts {
            switchboard_users: c.switchboard_users,
            mapped: c.mapped,
            by_override: c.by_override,
            by_mail: c.by_mail,
            by_alias: c.by_alias,
            by_upn: c.by_upn,
            no_address: c.no_address,
            no_match: c.no_match,
            conflict: c.conflict,
            unresolved_override: c.unresolved_override,
            directory_not_read: c.directory_not_read,
            uncovered: c.uncovered,
            passive: c.passive,
        }
    }
}

impl From<policy::Weekday> for core::Weekday {
    fn from(d: policy::Weekday) -> Self {
        match d {
            policy::Weekday::Monday => core::Weekday::Monday,
            policy::Weekday::Tuesday => core::Weekday::Tuesday,
            policy::Weekday::Wednesday => core::Weekday::Wednesday,
            policy::Weekday::Thursday => core::Weekday::Thursday,
            policy::Weekday::Friday => core::Weekday::Friday,
            policy::Weekday::Saturday => core::Weekday::Saturday,
            policy::Weekday::Sunday => core::Weekday::Sunday,
        }
    }
}

impl From<core::Weekday> for policy::Weekday {
    fn from(d: core::Weekday) -> Self {
        match d {
            core::Weekday::Monday => policy::Weekday::Monday,
            core::Weekday::Tuesday => policy::Weekday::Tuesday,
            core::Weekday::Wednesday => policy::Weekday::Wednesday,
            core::Weekday::Thursday => policy::Weekday::Thursday,
            core::Weekday::Friday => policy::Weekday::Friday,
            core::Weekday::Saturday => policy::Weekday::Saturday,
            core::Weekday::Sunday => policy::Weekday::Sunday,
        }
    }
}

impl From<policy::SyncPolicy> for core::SyncPolicy {
    fn from(p: policy::SyncPolicy) -> Self {
        core::SyncPolicy {
            groups: p.groups,
            excluded_users: p.excluded_users,
            teams_to_switchboard_only: p.teams_to_switchboard_only,
            call_replaces: p.call_replaces,
            do_not_disturb_in_call: p.do_not_disturb_in_call,
            working_hours: p.working_hours.map(|w| core::WorkingHours {
                time_zone: w.time_zone,
                days: w.days.into_iter().map(Into::into).collect(),
                start_minute: w.start_minute,
                end_minute: w.end_minute,
            }),
        }
    }
}

impl From<core::SyncPolicy> for policy::SyncPolicy {
    fn from(p: core::SyncPolicy) -> Self {
        policy::SyncPolicy {
            groups: p.groups,
            excluded_users: p.excluded_users,
            teams_to_switchboard_only: p.teams_to_switchboard_only,
            call_replaces: p.call_replaces,
            do_not_disturb_in_call: p.do_not_disturb_in_call,
            working_hours: p.working_hours.map(|w| policy::WorkingHours {
                time_zone: w.time_zone,
                days: w.days.into_iter().map(Into::into).collect(),
                start_minute: w.start_minute,
                end_minute: w.end_minute,
            }),
        }
    }
}

impl From<core::PolicyError> for policy::PolicyError {
    fn from(e: core::PolicyError) -> Self {
        match e {
            core::PolicyError::Invalid(r) => policy::PolicyError::Invalid(r),
        }
    }
}

impl From<core::CallPresence> for policy::CallPresence {
    fn from(c: core::CallPresence) -> Self {
        match c {
            core::CallPresence::None => policy::CallPresence::None,
            core::CallPresence::InACall => policy::CallPresence::InACall,
            core::CallPresence::DoNotDisturb => policy::CallPresence::DoNotDisturb,
        }
    }
}

impl From<core::DryRunEntry> for policy::DryRunEntry {
    fn from(e: core::DryRunEntry) -> Self {
        policy::DryRunEntry {
            user_id: e.user_id,
            microsoft_user_id: e.microsoft_user_id,
            now: e.now.into(),
            after: e.after.into(),
            reason: e.reason,
        }
    }
}

impl From<core::PolicyStatus> for policy::PolicyStatus {
    fn from(s: core::PolicyStatus) -> Self {
        policy::PolicyStatus {
            in_scope: s.in_scope,
            outside_groups: s.outside_groups,
            excluded: s.excluded,
            teams_to_switchboard_only: s.teams_to_switchboard_only,
            group_members: s.group_members,
            groups_read_at_ms: s.groups_read_at_ms,
            groups_problem: s.groups_problem.map(Into::into),
            within_working_hours: s.within_working_hours,
            unknown_entries: s.unknown_entries,
            polling: policy::PollingStatus {
                users: s.polling.users,
                interval_ms: s.polling.interval_ms,
                rounds: s.polling.rounds,
                last_round_ms: s.polling.last_round_ms,
                problem: s.polling.problem.map(Into::into),
            },
        }
    }
}

impl From<core::TeamsNote> for notes::TeamsNote {
    fn from(n: core::TeamsNote) -> Self {
        notes::TeamsNote {
            status_message: n.status_message,
            status_message_expires_ms: n.status_message_expires_ms,
            out_of_office: n.out_of_office,
            out_of_office_message: n.out_of_office_message,
            set_by_plugin: n.own,
        }
    }
}
