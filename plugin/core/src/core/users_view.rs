//! The product guide's "Teams Presence users" list and the counts that explain "OK, but 0
//! users" (WIT `users`): every switchboard user with its Microsoft user, how it was matched
//! (or why not), its presence and the subscription that covers it.
//!
//! Computed when asked, from the switchboard's directory (read again, a page at a time), the
//! mapping, the Microsoft directory and the shards: nothing is kept for it between calls.

use std::collections::{BTreeSet, HashMap};

use super::*;

/// How a switchboard user was matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedBy {
    /// An explicit mapping.
    Override,
    /// The Microsoft user's `mail`.
    Mail,
    /// An `smtp:` alias.
    Alias,
    /// The user principal name.
    Upn,
}

/// Why a switchboard user is not matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// No email address.
    NoAddress,
    /// No Microsoft user has its addresses.
    NoMatch,
    /// Its address is ambiguous.
    Conflict,
    /// Its explicit mapping names nobody (or several).
    UnresolvedOverride,
    /// Microsoft's directory could not be read.
    DirectoryNotRead,
}

/// Which users a query returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsersFilter {
    /// Everyone.
    All,
    /// Without a Microsoft user.
    Unmatched,
    /// Matched, covered by no subscription.
    Uncovered,
    /// In a conflict.
    Conflicts,
}

/// A page of the list.
#[derive(Debug, Clone)]
pub struct UsersQuery {
    /// Case-insensitive text in the id, name, addresses or Microsoft user.
    pub search: String,
    /// Which users.
    pub filter: UsersFilter,
    /// Rows to skip.
    pub offset: u32,
    /// Rows to return (1 to [`MAX_USERS_PAGE`]).
    pub limit: u32,
}

/// The most rows of one page.
pub const MAX_USERS_PAGE: u32 = 500;

/// A row of the list.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    /// Switchboard user id.
    pub switchboard_user_id: String,
    /// Its name.
    pub name: String,
    /// Its addresses.
    pub emails: Vec<String>,
    /// Has a line.
    pub active: bool,
    /// The Microsoft user's id.
    pub microsoft_user_id: Option<String>,
    /// Its UPN (or mail).
    pub microsoft_user: Option<String>,
    /// How it was matched.
    pub matched_by: Option<MatchedBy>,
    /// Why not.
    pub unmatched: Option<Unmatched>,
    /// The last known presence.
    pub presence: Option<TeamsPresence>,
    /// The integration user whose subscription covers it.
    pub integration_user: Option<String>,
    /// The address of a conflict it is in.
    pub conflict: Option<String>,
}

/// A page and the number of users matching the query.
#[derive(Debug, Clone, PartialEq)]
pub struct UsersPage {
    /// Users matching.
    pub total: u32,
    /// The slice asked for.
    pub rows: Vec<UserRow>,
}

/// Switchboard users by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MappingCounts {
    /// Read.
    pub switchboard_users: u32,
    /// Matched.
    pub mapped: u32,
    /// Matched by an explicit mapping.
    pub by_override: u32,
    /// By mail.
    pub by_mail: u32,
    /// By alias.
    pub by_alias: u32,
    /// By UPN.
    pub by_upn: u32,
    /// No address.
    pub no_address: u32,
    /// No match.
    pub no_match: u32,
    /// In a conflict.
    pub conflict: u32,
    /// Unresolved explicit mapping.
    pub unresolved_override: u32,
    /// Microsoft's directory not read.
    pub directory_not_read: u32,
    /// Matched, covered by no subscription.
    pub uncovered: u32,
    /// Passive.
    pub passive: u32,
}

/// One switchboard user, classified.
struct Class<'a> {
    sb: &'a SwitchboardUser,
    ms_id: Option<&'a str>,
    matched_by: Option<MatchedBy>,
    unmatched: Option<Unmatched>,
    conflict: Option<String>,
    slot: Option<usize>,
}

/// What classifying a user needs, gathered once per call.
struct Lookup<'a> {
    ms: HashMap<&'a str, &'a GraphUser>,
    overridden: BTreeSet<String>,
    conflict_ids: HashMap<&'a str, &'a str>,
    conflict_emails: HashMap<&'a str, ()>,
    order: Vec<MatchSource>,
    read: bool,
    /// Microsoft user → the slot whose subscription covers it.
    slot: HashMap<&'a str, usize>,
}

impl Core {
    fn all_switchboard_users(&self, env: &mut dyn Env) -> Vec<SwitchboardUser> {
        let mut users = Vec::new();
        loop {
            let page = env.switchboard_users_page(users.len(), SWITCHBOARD_PAGE);
            let last = page.len() < SWITCHBOARD_PAGE;
            users.extend(page);
            if last {
                return users;
            }
        }
    }

    fn lookup(&self) -> Lookup<'_> {
        let mut conflict_ids = HashMap::new();
        let mut conflict_emails = HashMap::new();
        for c in &self.mapping.conflicts {
            conflict_emails.insert(c.email.as_str(), ());
            for id in &c.candidates {
                conflict_ids.insert(id.as_str(), c.email.as_str());
            }
        }
        let order = match self.settings.as_ref().map(|s| s.match_order.clone()) {
            Some(o) if !o.is_empty() => o,
            _ => mapping::DEFAULT_ORDER.to_vec(),
        };
        Lookup {
            ms: self.dir.users.iter().flatten().map(|u| (&*u.id, u)).collect(),
            overridden: self.effective_overrides().into_iter().map(|o| o.switchboard_user_id).collect(),
            conflict_ids,
            conflict_emails,
            order,
            read: self.dir.users.is_some(),
            slot: (0..self.shards.slots())
                .flat_map(|i| self.shards.members(i).iter().map(move |m| (&**m, i)))
                .collect(),
        }
    }

    /// How `sb` was matched (needs its Microsoft user's addresses), or why not; the cheap
    /// part first: only what `need_how` asks costs the Microsoft user's addresses.
    fn classify<'a>(&'a self, l: &Lookup<'a>, sb: &'a SwitchboardUser, need_how: bool) -> Class<'a> {
        let ms_id = self.mapping.by_switchboard.get(sb.id.as_str()).map(|m| &**m);
        let emails = || sb.emails.iter().map(|e| mapping::normalise(e)).filter(|e| !e.is_empty());
        let conflict = l.conflict_ids.get(sb.id.as_str()).map(|e| e.to_string()).or_else(|| {
            if l.conflict_emails.is_empty() {
                None
            } else {
                emails().find(|e| l.conflict_emails.contains_key(e.as_str()))
            }
        });
        let unmatched = match ms_id {
            Some(_) => None,
            None if !l.read => Some(Unmatched::DirectoryNotRead),
            None if l.overridden.contains(&sb.id) => Some(Unmatched::UnresolvedOverride),
            None if emails().next().is_none() => Some(Unmatched::NoAddress),
            None if conflict.is_some() => Some(Unmatched::Conflict),
            None => Some(Unmatched::NoMatch),
        };
        let matched_by = match ms_id {
            Some(_) if l.overridden.contains(&sb.id) => Some(MatchedBy::Override),
            Some(id) if need_how => l.ms.get(id).and_then(|ms| {
                let emails: Vec<String> = emails().collect();
                let has = |src: MatchSource| match src {
                    MatchSource::Mail => ms.mail().is_some_and(|m| emails.contains(&mapping::normalise(m))),
                    MatchSource::ProxyAddresses => ms.aliases().any(|a| emails.contains(&mapping::normalise(a))),
                    MatchSource::Upn => {
                        ms.user_principal_name().is_some_and(|u| emails.contains(&mapping::normalise(u)))
                    }
                };
                l.order.iter().copied().find(|s| has(*s)).map(|s| match s {
                    MatchSource::Mail => MatchedBy::Mail,
                    MatchSource::ProxyAddresses => MatchedBy::Alias,
                    MatchSource::Upn => MatchedBy::Upn,
                })
            }),
            _ => None,
        };
        let slot = ms_id.and_then(|id| l.slot.get(id).copied());
        Class { sb, ms_id, matched_by, unmatched, conflict, slot }
    }

    fn row(&self, l: &Lookup<'_>, c: Class<'_>) -> UserRow {
        let ms = c.ms_id.and_then(|id| l.ms.get(id).copied());
        let settings = self.settings.as_ref();
        UserRow {
            switchboard_user_id: c.sb.id.clone(),
            name: c.sb.display_name.clone(),
            emails: c.sb.emails.clone(),
            active: c.sb.active,
            microsoft_user_id: c.ms_id.map(str::to_string),
            microsoft_user: ms.and_then(|m| m.user_principal_name().or(m.mail()).map(String::from)),
            matched_by: c.matched_by,
            unmatched: c.unmatched,
            presence: c.ms_id.and_then(|id| self.known.presence(id)),
            integration_user: c
                .slot
                .and_then(|slot| settings.and_then(|s| s.integration_users.get(slot)).map(|u| u.username.clone())),
            conflict: c.conflict,
        }
    }

    /// A page of the "Teams Presence users" list.
    pub fn switchboard_users_view(&mut self, env: &mut dyn Env, q: UsersQuery) -> UsersPage {
        let mut users = self.all_switchboard_users(env);
        users.sort_by_cached_key(|u| (u.display_name.to_lowercase(), u.id.clone()));
        let l = self.lookup();
        let needle = q.search.trim().to_lowercase();
        let limit = q.limit.clamp(1, MAX_USERS_PAGE) as usize;
        let mut total = 0u32;
        let mut rows = Vec::new();
        for sb in &users {
            let c = self.classify(&l, sb, false);
            let wanted = match q.filter {
                UsersFilter::All => true,
                UsersFilter::Unmatched => c.unmatched.is_some(),
                UsersFilter::Uncovered => c.ms_id.is_some() && c.slot.is_none(),
                UsersFilter::Conflicts => c.conflict.is_some(),
            };
            let found = needle.is_empty() || {
                let ms = c.ms_id.and_then(|id| l.ms.get(id));
                [Some(sb.id.as_str()), Some(sb.display_name.as_str()), c.ms_id]
                    .into_iter()
                    .flatten()
                    .chain(sb.emails.iter().map(String::as_str))
                    .chain(ms.and_then(|m| m.user_principal_name()))
                    .chain(ms.and_then(|m| m.mail()))
                    .any(|t| t.to_lowercase().contains(&needle))
            };
            if wanted && found {
                if total as usize >= q.offset as usize && rows.len() < limit {
                    let c = self.classify(&l, sb, true);
                    rows.push(self.row(&l, c));
                }
                total += 1;
            }
        }
        UsersPage { total, rows }
    }

    /// The switchboard's users by outcome.
    pub fn mapping_counts(&mut self, env: &mut dyn Env) -> MappingCounts {
        let users = self.all_switchboard_users(env);
        let l = self.lookup();
        let mut c = MappingCounts { switchboard_users: users.len() as u32, ..Default::default() };
        for sb in &users {
            let class = self.classify(&l, sb, true);
            if !sb.active {
                c.passive += 1;
            }
            if class.ms_id.is_some() {
                c.mapped += 1;
                if let Some(m) = class.matched_by {
                    *match m {
                        MatchedBy::Override => &mut c.by_override,
                        MatchedBy::Mail => &mut c.by_mail,
                        MatchedBy::Alias => &mut c.by_alias,
                        MatchedBy::Upn => &mut c.by_upn,
                    } += 1;
                }
                if class.slot.is_none() {
                    c.uncovered += 1;
                }
            } else if let Some(u) = class.unmatched {
                *match u {
                    Unmatched::NoAddress => &mut c.no_address,
                    Unmatched::NoMatch => &mut c.no_match,
                    Unmatched::Conflict => &mut c.conflict,
                    Unmatched::UnresolvedOverride => &mut c.unresolved_override,
                    Unmatched::DirectoryNotRead => &mut c.directory_not_read,
                } += 1;
            }
        }
        c
    }
}
