//! The sync policy (WIT `policy`, since 3.5.0): which users sync (Entra groups, excluded
//! users), which way (Teams → switchboard only), and when and how a call is pushed (the
//! availabilities it may replace, Do not disturb in a call, working hours).
//!
//! Rules this module encodes:
//! - Scope is applied to every mapping as it is completed: a pair outside it is dropped from
//!   the mapping, so the machinery that follows a new mapping withdraws its switchboard user,
//!   ends its pushed call and stops watching its presence. Nothing else needs to know.
//! - Group membership comes from `/groups/{id}/transitiveMembers?$select=id`
//!   (<https://learn.microsoft.com/en-us/graph/api/group-list-transitivemembers>), the plain
//!   form of the operation (no OData cast): nested groups, devices and contacts come back too,
//!   but their ids never match a user, so they are harmless. It is read again with every
//!   directory round; a read that fails keeps the last good membership, and until a group
//!   list was read once the mapping waits for it (at most one read: after a failure nobody of
//!   a group is in scope, and the status says why).
//! - The membership in force is persisted, so a restart applies it before its first mapping.
//! - Pushes ask [`Core::push_allowed`] (scope direction, working hours); what they set is
//!   `Busy`/`InACall` or `DoNotDisturb`/`Presenting` (the only Do not disturb pair setPresence
//!   takes, <https://learn.microsoft.com/en-us/graph/api/presence-setpresence>).

use std::collections::HashSet;

use super::*;

const STATE_POLICY: &str = "v1/policy";
const STATE_GROUPS: &str = "v1/group-members";
/// Groups a policy may name.
pub const MAX_GROUPS: usize = 50;
/// Entries a user list may hold.
pub const MAX_POLICY_ENTRIES: usize = 10_000;

/// The last complete read of the groups' membership.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct GroupsRead {
    pub groups: Vec<String>,
    pub members: BTreeSet<String>,
    pub at_ms: u64,
}

/// A read of the groups in progress: group `index` is being paged.
#[derive(Debug)]
pub(super) struct GroupFetch {
    groups: Vec<String>,
    index: usize,
    members: BTreeSet<String>,
}

#[derive(Debug, Default)]
pub(super) struct Groups {
    pub read: Option<GroupsRead>,
    pub fetching: Option<GroupFetch>,
    pub next_at: u64,
    pub retry: Backoff,
    pub problem: Option<Problem>,
    /// A mapping build waits for the first read of the groups.
    pub rebuild_after: bool,
}

/// What the last scope application found.
#[derive(Debug, Default)]
pub(super) struct Applied {
    /// Microsoft users in scope whose calls are never pushed.
    pub teams_only: HashSet<String>,
    pub in_scope: u32,
    pub outside_groups: u32,
    pub excluded: u32,
    pub unknown_entries: Vec<String>,
}

/// Lower-cased, trimmed entries of a user list.
fn entry_set(list: &[String]) -> HashSet<String> {
    list.iter().map(|e| e.trim().to_lowercase()).filter(|e| !e.is_empty()).collect()
}

/// A user's names as the lists may give them: object id, mail, UPN, `smtp:` aliases.
fn names_of(u: &GraphUser) -> impl Iterator<Item = String> + '_ {
    std::iter::once(u.id.to_lowercase())
        .chain(u.mail().map(|m| m.trim().to_lowercase()))
        .chain(u.user_principal_name().map(|m| m.trim().to_lowercase()))
        .chain(u.aliases().map(|a| a.trim().to_lowercase()))
}

fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Checks a policy; the error names the field.
pub(super) fn validate_policy(p: &SyncPolicy) -> Result<Option<jiff::tz::TimeZone>, PolicyError> {
    let bad = |field: String, reason: &str| Err(PolicyError::Invalid(format!("{field}: {reason}")));
    if p.groups.len() > MAX_GROUPS {
        return bad("groups".into(), &format!("at most {MAX_GROUPS} groups"));
    }
    for (i, g) in p.groups.iter().enumerate() {
        if !is_guid(g.trim()) {
            return bad(
                format!("groups[{i}]"),
                &format!(
                    "{:?} is not a group's object id (a GUID such as 0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0)",
                    cap(g)
                ),
            );
        }
    }
    for (name, list) in
        [("excluded-users", &p.excluded_users), ("teams-to-switchboard-only", &p.teams_to_switchboard_only)]
    {
        if list.len() > MAX_POLICY_ENTRIES {
            return bad(name.into(), &format!("at most {MAX_POLICY_ENTRIES} entries"));
        }
        for (i, e) in list.iter().enumerate() {
            if e.trim().is_empty() {
                return bad(
                    format!("{name}[{i}]"),
                    "empty; name a switchboard user id, a Microsoft user id or address",
                );
            }
            if e.len() > 256 {
                return bad(format!("{name}[{i}]"), "longer than 256 bytes");
            }
        }
    }
    for (i, a) in p.call_replaces.iter().enumerate() {
        if a.is_empty() || a.len() > 64 || !a.chars().all(|c| c.is_ascii_alphabetic()) {
            return bad(
                format!("call-replaces[{i}]"),
                &format!("{:?} is not an availability (such as Available, Busy, Away)", cap(a)),
            );
        }
    }
    let Some(w) = &p.working_hours else { return Ok(None) };
    if w.start_minute >= 1440 {
        return bad("working-hours.start-minute".into(), "must be 0 to 1439 (minutes after midnight)");
    }
    if w.end_minute == 0 || w.end_minute > 1440 {
        return bad("working-hours.end-minute".into(), "must be 1 to 1440 (minutes after midnight)");
    }
    if w.start_minute == w.end_minute {
        return bad("working-hours.end-minute".into(), "equals the start: the hours would be empty");
    }
    match jiff::tz::TimeZone::get(w.time_zone.trim()) {
        Ok(tz) => Ok(Some(tz)),
        Err(_) => bad(
            "working-hours.time-zone".into(),
            &format!("{:?} is not an IANA time zone (such as Europe/Copenhagen)", cap(&w.time_zone)),
        ),
    }
}

fn cap(s: &str) -> String {
    s.chars().take(80).collect()
}

fn weekday_of(w: jiff::civil::Weekday) -> Weekday {
    match w {
        jiff::civil::Weekday::Monday => Weekday::Monday,
        jiff::civil::Weekday::Tuesday => Weekday::Tuesday,
        jiff::civil::Weekday::Wednesday => Weekday::Wednesday,
        jiff::civil::Weekday::Thursday => Weekday::Thursday,
        jiff::civil::Weekday::Friday => Weekday::Friday,
        jiff::civil::Weekday::Saturday => Weekday::Saturday,
        jiff::civil::Weekday::Sunday => Weekday::Sunday,
    }
}

fn previous(d: Weekday) -> Weekday {
    use Weekday::*;
    match d {
        Monday => Sunday,
        Tuesday => Monday,
        Wednesday => Tuesday,
        Thursday => Wednesday,
        Friday => Thursday,
        Saturday => Friday,
        Sunday => Saturday,
    }
}

/// Whether `now_ms` falls inside the working hours `w` (in time zone `tz`).
pub fn within_hours(w: &WorkingHours, tz: &jiff::tz::TimeZone, now_ms: u64) -> bool {
    let Ok(ts) = jiff::Timestamp::from_millisecond(now_ms as i64) else { return true };
    let local = ts.to_zoned_datetime(tz.clone());
    let day = weekday_of(local.weekday());
    let minute = local.hour() as u32 * 60 + local.minute() as u32;
    let on = |d: Weekday| w.days.is_empty() || w.days.contains(&d);
    if w.start_minute < w.end_minute {
        on(day) && minute >= w.start_minute && minute < w.end_minute
    } else {
        // Spans midnight: the evening of a listed day, or the morning after one.
        (on(day) && minute >= w.start_minute) || (on(previous(day)) && minute < w.end_minute)
    }
}

/// Whether a user's own availability may be replaced by a call under `p`.
pub(super) fn may_replace(p: &SyncPolicy, presence: &TeamsPresence) -> bool {
    if presence.activity.eq_ignore_ascii_case("presenting") {
        return false;
    }
    let a = presence.availability.as_str();
    if p.call_replaces.is_empty() {
        a.eq_ignore_ascii_case("available") || a.eq_ignore_ascii_case("busy")
    } else {
        p.call_replaces.iter().any(|x| x.eq_ignore_ascii_case(a))
    }
}

impl Core {
    /// Sets the policy (WIT `policy.set-policy`).
    pub fn set_policy(&mut self, env: &mut dyn Env, policy: SyncPolicy) -> Result<(), PolicyError> {
        let tz = validate_policy(&policy)?;
        if policy == self.policy {
            return Ok(());
        }
        let scope_changed = policy.groups != self.policy.groups
            || policy.excluded_users != self.policy.excluded_users
            || policy.teams_to_switchboard_only != self.policy.teams_to_switchboard_only;
        if policy.groups != self.policy.groups {
            // Read the new groups at once (the old membership stays until then).
            self.groups.next_at = 0;
            self.groups.retry.succeed();
            self.groups.fetching = None;
            if policy.groups.is_empty() {
                self.groups.read = None;
                self.groups.problem = None;
                self.effects.push(Effect::Store { key: STATE_GROUPS.into(), value: None });
            }
        }
        self.log(Level::Info, "policy set", vec![("groups".into(), policy.groups.len().to_string())]);
        self.effects
            .push(Effect::Store { key: STATE_POLICY.into(), value: Some(serde_json::to_vec(&policy).unwrap()) });
        self.policy = policy;
        self.policy_tz = tz;
        if scope_changed && self.dir.users.is_some() && self.settings.is_some() {
            self.rebuild_mapping(env);
        }
        self.drive(env);
        Ok(())
    }

    /// Whether `availability`/`activity` of `ms` would be taken as our own session's.
    #[cfg(test)]
    pub fn is_own_presence_for_test(&self, ms: &str, availability: &str, activity: &str) -> bool {
        self.is_own_presence(ms, &TeamsPresence { availability: availability.into(), activity: activity.into() })
    }

    /// Forgets the last known presence of `ms` (so that a push reads it first).
    #[cfg(test)]
    pub fn forget_presence_for_test(&mut self, ms: &str) {
        self.known.forget_presence(ms);
    }

    /// The policy in force.
    pub fn policy(&self) -> &SyncPolicy {
        &self.policy
    }

    pub(super) fn restore_policy(&mut self, env: &mut dyn Env) {
        if let Some(p) = env.load(STATE_POLICY).and_then(|b| serde_json::from_slice::<SyncPolicy>(&b).ok())
            && let Ok(tz) = validate_policy(&p)
        {
            self.policy = p;
            self.policy_tz = tz;
        }
        if !self.policy.groups.is_empty() {
            self.groups.read = env.load(STATE_GROUPS).and_then(|b| serde_json::from_slice::<GroupsRead>(&b).ok());
        }
    }

    /// Whether calls are pushed now (working hours).
    pub(super) fn within_working_hours(&self, now: u64) -> bool {
        match (&self.policy.working_hours, &self.policy_tz) {
            (Some(w), Some(tz)) => within_hours(w, tz, now),
            _ => true,
        }
    }

    /// Whether a call of Microsoft user `ms` may be pushed now (direction and hours).
    pub(super) fn push_allowed(&self, ms: &str, hours_open: bool) -> bool {
        hours_open && !self.applied.teams_only.contains(ms)
    }

    /// Whether a mapping build must wait for the groups' first read.
    pub(super) fn groups_pending(&self) -> bool {
        !self.policy.groups.is_empty()
            && self.groups.read.is_none()
            && (self.groups.problem.is_none() || self.groups.fetching.is_some())
    }

    /// Drops the pairs outside the policy's scope from a new `mapping` (built whole, or the
    /// one in effect once changed), and returns them; notes who is pushed to (see [`Applied`]). `switchboard` is every switchboard user.
    pub(super) fn apply_scope(&mut self, mapping: &mut Mapping, switchboard: &[mapping::SbUser]) -> Vec<(Id, Id)> {
        let excluded = entry_set(&self.policy.excluded_users);
        let teams_only = entry_set(&self.policy.teams_to_switchboard_only);
        let mut named_excluded: HashSet<&str> = HashSet::new();
        let mut named_teams_only: HashSet<&str> = HashSet::new();
        let mut seen: HashSet<String> = HashSet::new();
        if !excluded.is_empty() || !teams_only.is_empty() {
            for u in self.dir.users.as_deref().unwrap_or_default() {
                for n in names_of(u) {
                    if excluded.contains(&n) {
                        named_excluded.insert(&*u.id);
                        seen.insert(n.clone());
                    }
                    if teams_only.contains(&n) {
                        named_teams_only.insert(&*u.id);
                        seen.insert(n);
                    }
                }
            }
            for u in switchboard {
                let id = u.id.trim().to_lowercase();
                if excluded.contains(&id) || teams_only.contains(&id) {
                    seen.insert(id);
                }
            }
        }
        let members: Option<&BTreeSet<String>> = if self.policy.groups.is_empty() {
            None
        } else {
            static EMPTY: BTreeSet<String> = BTreeSet::new();
            Some(self.groups.read.as_ref().map_or(&EMPTY, |r| &r.members))
        };
        let mut applied = Applied::default();
        let mut out = Vec::new();
        for (ms, sb) in &mapping.by_microsoft {
            let sb_l = sb.to_lowercase();
            if named_excluded.contains(&**ms) || excluded.contains(&sb_l) {
                applied.excluded += 1;
                out.push(ms.clone());
            } else if members.is_some_and(|m| !m.contains(&**ms)) {
                applied.outside_groups += 1;
                out.push(ms.clone());
            } else {
                applied.in_scope += 1;
                if named_teams_only.contains(&**ms) || teams_only.contains(&sb_l) {
                    applied.teams_only.insert(ms.to_string());
                }
            }
        }
        let mut dropped = Vec::with_capacity(out.len());
        for ms in out {
            if let Some(sb) = mapping.by_microsoft.remove(&ms) {
                mapping.by_switchboard.remove(&sb);
                dropped.push((ms, sb));
            }
        }
        let mut unknown: Vec<String> = excluded.union(&teams_only).filter(|e| !seen.contains(*e)).cloned().collect();
        unknown.sort();
        applied.unknown_entries = unknown;
        self.applied = applied;
        dropped
    }

    /// Starts or goes on reading the groups' membership when it is due.
    pub(super) fn drive_groups(&mut self, settings: &Settings, now: u64) {
        if self.policy.groups.is_empty() || self.groups.fetching.is_some() {
            return;
        }
        let stale_list = self.groups.read.as_ref().is_none_or(|r| r.groups != self.policy.groups);
        if (!stale_list && now < self.groups.next_at) || !self.groups.retry.ready(now) {
            return;
        }
        if !self.scope_ready(Scope::Directory, now) {
            return;
        }
        let Some(token) = self.app_token.access(now).map(str::to_owned) else { return };
        let fetch = GroupFetch { groups: self.policy.groups.clone(), index: 0, members: BTreeSet::new() };
        let url = group_url(settings, &fetch.groups[0]);
        self.groups.fetching = Some(fetch);
        self.start(Pending::GroupMembers, get(&url, &token));
    }

    pub(super) fn on_group_page(
        &mut self,
        env: &mut dyn Env,
        settings: &Settings,
        outcome: Result<HttpResponse, HttpError>,
        now: u64,
        jitter: u8,
    ) {
        #[derive(serde::Deserialize)]
        struct Member {
            id: String,
        }
        #[derive(serde::Deserialize)]
        struct Page {
            value: Vec<Member>,
            #[serde(rename = "@odata.nextLink")]
            next_link: Option<String>,
        }
        let Some(fetch) = self.groups.fetching.as_mut() else { return };
        let group = fetch.groups[fetch.index].clone();
        let what = "GET /groups/{id}/transitiveMembers";
        let page = match &outcome {
            Ok(r) if r.status == 200 => serde_json::from_slice::<Page>(&r.body)
                .map_err(|e| (problem("malformed-response", format!("{what}: {e}")), None)),
            Ok(r) if r.status == 404 => Err((
                Problem {
                    code: "Request_ResourceNotFound".into(),
                    hint: format!(
                        "The group {group} of the sync policy does not exist in this tenant: correct its object id in the policy."
                    ),
                    detail: format!("{what}: HTTP 404"),
                },
                None,
            )),
            Ok(r) if r.status == 403 => {
                let p = hints::from_graph_error(403, &r.body, what);
                Err((
                    Problem {
                        hint: "Scope by group needs the Application permission GroupMember.Read.All with admin consent: add it in the app registration and grant admin consent.".into(),
                        ..p
                    },
                    None,
                ))
            }
            other => Err(graph_failure(other, what)),
        };
        let next = match page {
            Ok(page) => {
                fetch.members.extend(page.value.into_iter().map(|m| m.id));
                match page.next_link {
                    Some(n) if on_origin(&settings.graph_base_url, &n) => Some(n),
                    Some(_) => {
                        self.fail_groups(
                            env,
                            problem("malformed-response", format!("{what}: a nextLink off Graph's origin")),
                            None,
                            now,
                            jitter,
                        );
                        return;
                    }
                    None => {
                        fetch.index += 1;
                        fetch.groups.get(fetch.index).map(|g| group_url(settings, g))
                    }
                }
            }
            Err((p, ra)) => {
                self.fail_groups(env, p, ra, now, jitter);
                return;
            }
        };
        match next {
            Some(url) => {
                let Some(token) = self.app_token.access(now).map(str::to_owned) else {
                    self.fail_groups(
                        env,
                        problem("token-expired", "app token expired while reading groups"),
                        None,
                        now,
                        jitter,
                    );
                    return;
                };
                self.start(Pending::GroupMembers, get(&url, &token));
            }
            None => {
                let fetch = self.groups.fetching.take().unwrap();
                self.count("groups.reads");
                let changed =
                    self.groups.read.as_ref().is_none_or(|r| r.groups != fetch.groups || r.members != fetch.members);
                let read = GroupsRead { groups: fetch.groups, members: fetch.members, at_ms: now };
                if changed {
                    self.effects.push(Effect::Store {
                        key: STATE_GROUPS.into(),
                        value: Some(serde_json::to_vec(&read).unwrap()),
                    });
                }
                self.groups.read = Some(read);
                self.groups.problem = None;
                self.groups.retry.succeed();
                self.groups.next_at = now + self.delta_interval_ms();
                if (changed || std::mem::take(&mut self.groups.rebuild_after)) && self.dir.users.is_some() {
                    self.rebuild_mapping(env);
                }
            }
        }
    }

    fn fail_groups(&mut self, env: &mut dyn Env, p: Problem, retry_after: Option<u64>, now: u64, jitter: u8) {
        self.log(
            Level::Warn,
            "group membership read failed; keeping the last good one",
            vec![("code".into(), p.code.clone())],
        );
        self.count("groups.read-failures");
        self.groups.fetching = None;
        self.groups.problem = Some(p);
        self.groups.retry.fail(now, retry_after, jitter);
        // A first read failed: the mapping goes on without the groups' members (nobody of
        // them is in scope) rather than wait, and the status says why.
        if std::mem::take(&mut self.groups.rebuild_after) && self.dir.users.is_some() {
            self.rebuild_mapping(env);
        }
    }

    /// The policy's status (WIT `policy.status`).
    pub fn policy_status(&self, env: &dyn Env) -> PolicyStatus {
        PolicyStatus {
            in_scope: self.applied.in_scope,
            outside_groups: self.applied.outside_groups,
            excluded: self.applied.excluded,
            teams_to_switchboard_only: self.applied.teams_only.len() as u32,
            group_members: self.groups.read.as_ref().map(|r| r.members.len() as u32),
            groups_read_at_ms: self.groups.read.as_ref().map(|r| r.at_ms),
            groups_problem: self.groups.problem.clone(),
            within_working_hours: self.within_working_hours(env.now_ms()),
            unknown_entries: self.applied.unknown_entries.clone(),
            polling: self.polling_status(),
        }
    }

    /// What `proposed` would change for the users now in a call (WIT `policy.dry-run`).
    pub fn dry_run(&self, env: &mut dyn Env, proposed: &SyncPolicy) -> Result<Vec<DryRunEntry>, PolicyError> {
        let tz = validate_policy(proposed)?;
        let now = env.now_ms();
        let settings = self.settings.as_ref();
        let push_on = settings.is_some_and(|s| s.push_line_status) && !self.retiring;
        let min_len = settings.map_or(0, |s| s.min_call_length_ms);
        let in_call: Vec<(&String, &push::Call)> = self.push.calls.iter().filter(|(_, c)| c.in_call).collect();
        let wanted: HashSet<&str> = in_call.iter().map(|(ms, _)| ms.as_str()).collect();
        let mut names: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for u in self.dir.users.as_deref().unwrap_or_default() {
            if wanted.contains(&*u.id) {
                names.insert(&*u.id, names_of(u).collect());
            }
        }
        let excluded = entry_set(&proposed.excluded_users);
        let teams_only = entry_set(&proposed.teams_to_switchboard_only);
        let hours_open = match (&proposed.working_hours, &tz) {
            (Some(w), Some(tz)) => within_hours(w, tz, now),
            _ => true,
        };
        let groups_known = self.groups.read.as_ref().filter(|r| r.groups == proposed.groups);
        let mut out = Vec::new();
        for (ms, c) in in_call {
            let Some(sb) = self.mapping.by_microsoft.get(ms.as_str()) else { continue };
            let now_shows = match c.pushed_until {
                Some(_) if c.dnd => CallPresence::DoNotDisturb,
                Some(_) => CallPresence::InACall,
                None => CallPresence::None,
            };
            let user_names = names.get(ms.as_str()).cloned().unwrap_or_default();
            let named =
                |set: &HashSet<String>| set.contains(&sb.to_lowercase()) || user_names.iter().any(|n| set.contains(n));
            let (after, reason) = if !push_on {
                (CallPresence::None, "pushing line status is off for this integration".to_string())
            } else if named(&excluded) {
                (CallPresence::None, "excluded by the policy: leaves the scope, its session is cleared".into())
            } else if !proposed.groups.is_empty() && groups_known.is_some_and(|r| !r.members.contains(ms.as_str())) {
                (CallPresence::None, "in none of the policy's groups: leaves the scope, its session is cleared".into())
            } else if named(&teams_only) {
                (CallPresence::None, "Teams to switchboard only: its calls are not pushed".into())
            } else if !hours_open {
                (CallPresence::None, "outside the working hours".into())
            } else if now.saturating_sub(c.since_ms) < min_len {
                (CallPresence::None, "the call is shorter than the minimum call length so far".into())
            } else if c.pushed_until.is_none()
                && !self.known.presence(ms.as_str()).is_some_and(|p| may_replace(proposed, &p))
            {
                let shown = self.known.availability(ms.as_str()).unwrap_or("unknown").to_string();
                (CallPresence::None, format!("a call may not replace the user's own availability ({shown})"))
            } else {
                let what =
                    if proposed.do_not_disturb_in_call { CallPresence::DoNotDisturb } else { CallPresence::InACall };
                let mut why = if proposed.do_not_disturb_in_call {
                    "in a call: shown as Do not disturb".to_string()
                } else {
                    "in a call: shown as In a call".to_string()
                };
                if !proposed.groups.is_empty() && groups_known.is_none() {
                    why.push_str(" (the groups' membership is not read yet: counted as a member)");
                }
                (what, why)
            };
            out.push(DryRunEntry {
                user_id: sb.to_string(),
                microsoft_user_id: ms.to_string(),
                now: now_shows,
                after,
                reason,
            });
        }
        Ok(out)
    }
}

fn group_url(settings: &Settings, group: &str) -> String {
    format!("{}/v1.0/groups/{}/transitiveMembers?$select=id&$top=999", settings.graph_base_url, group.trim())
}
