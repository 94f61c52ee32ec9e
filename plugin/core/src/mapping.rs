//! Mapping Microsoft users to switchboard users by email address.
//!
//! Explicit overrides (switchboard user → Microsoft user id or address) come first and take
//! both users out of address matching. Addresses are compared trimmed and case-insensitively.
//! A switchboard address is looked up among Microsoft users' `mail` first, then their
//! `proxyAddresses` `smtp:` aliases, then their `userPrincipalName` (the order is
//! configurable, and a source can be left out); the first source that knows the address
//! decides. An override that names nobody, or nobody unambiguously, is reported. Ambiguity is
//! never settled at random: an address carried by several Microsoft users, or several
//! switchboard users claiming one address or one Microsoft user, is reported as a conflict
//! and those users stay unmapped.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{Conflict, ConflictKind, MappingOverride, MatchSource, SwitchboardUser};

/// A Microsoft user as `GET /users?$select=id,displayName,userPrincipalName,mail,proxyAddresses`
/// returns it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphUser {
    /// Object id (GUID).
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// User principal name.
    #[serde(default)]
    pub user_principal_name: Option<String>,
    /// Primary SMTP address.
    #[serde(default)]
    pub mail: Option<String>,
    /// `SMTP:primary`, `smtp:alias`, `SIP:...` entries (null is read as none).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub proxy_addresses: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(<Option<Vec<String>> as serde::Deserialize>::deserialize(d)?.unwrap_or_default())
}

/// Normalises an address: trimmed, lower case.
pub fn normalise(email: &str) -> String {
    email.trim().to_lowercase()
}

/// The result of matching.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    /// Microsoft user id → switchboard user id.
    pub by_microsoft: BTreeMap<String, String>,
    /// Switchboard user id → Microsoft user id.
    pub by_switchboard: BTreeMap<String, String>,
    /// Ambiguous addresses, sorted.
    pub conflicts: Vec<Conflict>,
}

/// The default match order: mail, then `smtp:` proxy addresses, then UPN.
pub const DEFAULT_ORDER: [MatchSource; 3] = [MatchSource::Mail, MatchSource::ProxyAddresses, MatchSource::Upn];

/// Matches `switchboard` users to `microsoft` users with the default order and no overrides.
pub fn build(microsoft: &[GraphUser], switchboard: &[SwitchboardUser]) -> Mapping {
    build_with(microsoft, switchboard, &DEFAULT_ORDER, &[])
}

/// Matches `switchboard` users to `microsoft` users: `overrides` first, then addresses in
/// `order` (empty = [`DEFAULT_ORDER`]).
pub fn build_with(
    microsoft: &[GraphUser],
    switchboard: &[SwitchboardUser],
    order: &[MatchSource],
    overrides: &[MappingOverride],
) -> Mapping {
    let order = if order.is_empty() { &DEFAULT_ORDER[..] } else { order };
    let mut by_mail: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let mut by_alias: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let mut by_upn: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for u in microsoft {
        if let Some(m) = u.mail.as_deref().filter(|m| !m.trim().is_empty()) {
            by_mail.entry(normalise(m)).or_default().insert(&u.id);
        }
        for p in &u.proxy_addresses {
            if let Some(alias) = p.get(..5).filter(|s| s.eq_ignore_ascii_case("smtp:")).map(|_| &p[5..]) {
                by_alias.entry(normalise(alias)).or_default().insert(&u.id);
            }
        }
        if let Some(upn) = u.user_principal_name.as_deref() {
            by_upn.entry(normalise(upn)).or_default().insert(&u.id);
        }
    }

    let mut conflicts = BTreeSet::new();
    let mut mapping = Mapping::default();

    // Overrides: resolve each to exactly one Microsoft user; the pair is then fixed.
    let ms_ids: BTreeSet<&str> = microsoft.iter().map(|u| u.id.as_str()).collect();
    let sb_ids: BTreeSet<&str> = switchboard.iter().map(|u| u.id.as_str()).collect();
    let mut fixed: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    // A switchboard user with an override is never matched by address, even when the
    // override cannot be resolved: the admin said who it is, a guess would contradict that.
    let mut taken_sb: BTreeSet<&str> = BTreeSet::new();
    for o in overrides {
        let target = o.microsoft_user.trim();
        let resolved: BTreeSet<&str> = if let Some(id) = ms_ids.get(target) {
            BTreeSet::from([*id])
        } else {
            let key = normalise(target);
            [&by_mail, &by_alias, &by_upn].into_iter().filter_map(|ix| ix.get(&key)).flatten().copied().collect()
        };
        let unresolved = |why: &str| Conflict {
            email: target.to_string(),
            kind: ConflictKind::UnresolvedOverride,
            candidates: vec![o.switchboard_user_id.clone(), why.to_string()],
        };
        if let Some(id) = sb_ids.get(o.switchboard_user_id.as_str()) {
            taken_sb.insert(id);
        }
        if !sb_ids.contains(o.switchboard_user_id.as_str()) {
            conflicts.insert(unresolved("no such switchboard user"));
        } else if resolved.is_empty() {
            conflicts.insert(unresolved("no Microsoft user has this id or address"));
        } else if resolved.len() > 1 {
            let mut c = unresolved("several Microsoft users have this address");
            c.candidates.extend(resolved.iter().map(|s| s.to_string()));
            conflicts.insert(c);
        } else {
            fixed.entry(resolved.into_iter().next().unwrap()).or_default().push(&o.switchboard_user_id);
        }
    }
    let mut taken_ms: BTreeSet<&str> = BTreeSet::new();
    for (ms, sbs) in fixed {
        taken_ms.insert(ms);
        let distinct: BTreeSet<&str> = sbs.iter().copied().collect();
        if distinct.len() == 1 {
            mapping.by_microsoft.insert(ms.to_string(), sbs[0].to_string());
            mapping.by_switchboard.insert(sbs[0].to_string(), ms.to_string());
        } else {
            conflicts.insert(Conflict {
                email: ms.to_string(),
                kind: ConflictKind::SeveralSwitchboardUsers,
                candidates: distinct.iter().map(|s| s.to_string()).collect(),
            });
        }
    }
    let indexes: Vec<&BTreeMap<String, BTreeSet<&str>>> = order
        .iter()
        .map(|s| match s {
            MatchSource::Mail => &by_mail,
            MatchSource::ProxyAddresses => &by_alias,
            MatchSource::Upn => &by_upn,
        })
        .collect();

    // Addresses that several switchboard users claim.
    let mut sb_by_email: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for s in switchboard {
        for e in &s.emails {
            let e = normalise(e);
            if !e.is_empty() {
                sb_by_email.entry(e).or_default().insert(&s.id);
            }
        }
    }
    for (email, ids) in &sb_by_email {
        if ids.len() > 1 {
            conflicts.insert(Conflict {
                email: email.clone(),
                kind: ConflictKind::SeveralSwitchboardUsers,
                candidates: ids.iter().map(|s| s.to_string()).collect(),
            });
        }
    }

    // Each switchboard user's candidate Microsoft user.
    let mut claims: BTreeMap<&str, Vec<(&str, String)>> = BTreeMap::new();
    for s in switchboard.iter().filter(|s| !taken_sb.contains(s.id.as_str())) {
        let mut found: BTreeSet<&str> = BTreeSet::new();
        let mut via = String::new();
        for e in &s.emails {
            let e = normalise(e);
            if e.is_empty() || sb_by_email.get(&e).is_some_and(|ids| ids.len() > 1) {
                continue;
            }
            let hit = indexes
                .iter()
                .find_map(|ix| ix.get(&e))
                .map(|ids| ids.iter().copied().filter(|id| !taken_ms.contains(id)).collect::<BTreeSet<&str>>());
            match hit {
                Some(ids) if ids.is_empty() => {}
                Some(ids) if ids.len() == 1 => {
                    found.extend(ids.iter().copied());
                    via = e;
                }
                Some(ids) => {
                    conflicts.insert(Conflict {
                        email: e,
                        kind: ConflictKind::SeveralMicrosoftUsers,
                        candidates: ids.iter().map(|s| s.to_string()).collect(),
                    });
                    found.clear();
                    break;
                }
                None => {}
            }
        }
        if found.len() == 1 {
            let ms = *found.iter().next().unwrap();
            claims.entry(ms).or_default().push((&s.id, via));
        } else if found.len() > 1 {
            conflicts.insert(Conflict {
                email: s.emails.first().map(|e| normalise(e)).unwrap_or_default(),
                kind: ConflictKind::SeveralMicrosoftUsers,
                candidates: found.iter().map(|s| s.to_string()).collect(),
            });
        }
    }

    for (ms, sbs) in claims {
        if sbs.len() == 1 {
            mapping.by_microsoft.insert(ms.to_string(), sbs[0].0.to_string());
            mapping.by_switchboard.insert(sbs[0].0.to_string(), ms.to_string());
        } else {
            conflicts.insert(Conflict {
                email: sbs[0].1.clone(),
                kind: ConflictKind::SeveralSwitchboardUsers,
                candidates: sbs.iter().map(|(id, _)| id.to_string()).collect(),
            });
        }
    }
    mapping.conflicts = conflicts.into_iter().collect();
    mapping
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(id: &str, mail: Option<&str>, upn: &str, proxies: &[&str]) -> GraphUser {
        GraphUser {
            id: id.into(),
            display_name: None,
            user_principal_name: Some(upn.into()),
            mail: mail.map(Into::into),
            proxy_addresses: proxies.iter().map(|s| s.to_string()).collect(),
        }
    }
    fn sb(id: &str, emails: &[&str]) -> SwitchboardUser {
        SwitchboardUser {
            id: id.into(),
            display_name: id.into(),
            emails: emails.iter().map(|s| s.to_string()).collect(),
            line_number: None,
            active: true,
        }
    }

    #[test]
    fn matches_trimmed_and_case_insensitive() {
        let m = build(
            &[ms("m1", Some("Anna@Contoso.com"), "anna@contoso.onmicrosoft.com", &[])],
            &[sb("s1", &["  anna@contoso.COM "])],
        );
        assert_eq!(m.by_microsoft.get("m1").map(String::as_str), Some("s1"));
        assert!(m.conflicts.is_empty());
    }

    #[test]
    fn alias_then_upn() {
        let m = build(
            &[
                ms("m1", Some("a@x.com"), "a@x.onmicrosoft.com", &["SMTP:a@x.com", "smtp:anna@x.com"]),
                ms("m2", None, "b@x.com", &[]),
            ],
            &[sb("s1", &["anna@x.com"]), sb("s2", &["b@x.com"])],
        );
        assert_eq!(m.by_switchboard.get("s1").map(String::as_str), Some("m1"));
        assert_eq!(m.by_switchboard.get("s2").map(String::as_str), Some("m2"));
    }

    #[test]
    fn mail_wins_over_alias_of_another_user() {
        let m = build(
            &[ms("m1", Some("a@x.com"), "u1@x.com", &[]), ms("m2", Some("b@x.com"), "u2@x.com", &["smtp:a@x.com"])],
            &[sb("s1", &["a@x.com"])],
        );
        assert_eq!(m.by_switchboard.get("s1").map(String::as_str), Some("m1"));
    }

    #[test]
    fn two_microsoft_users_with_one_email_is_a_conflict() {
        let m = build(
            &[ms("m1", Some("a@x.com"), "u1@x.com", &[]), ms("m2", Some("A@x.com"), "u2@x.com", &[])],
            &[sb("s1", &["a@x.com"])],
        );
        assert!(m.by_microsoft.is_empty());
        assert_eq!(m.conflicts.len(), 1);
        assert_eq!(m.conflicts[0].kind, ConflictKind::SeveralMicrosoftUsers);
        assert_eq!(m.conflicts[0].candidates, vec!["m1", "m2"]);
    }

    #[test]
    fn two_switchboard_users_with_one_email_is_a_conflict() {
        let m = build(&[ms("m1", Some("a@x.com"), "u1@x.com", &[])], &[sb("s1", &["a@x.com"]), sb("s2", &["A@X.com"])]);
        assert!(m.by_microsoft.is_empty());
        assert_eq!(m.conflicts.len(), 1);
        assert_eq!(m.conflicts[0].kind, ConflictKind::SeveralSwitchboardUsers);
        assert_eq!(m.conflicts[0].candidates, vec!["s1", "s2"]);
    }

    #[test]
    fn match_order_is_configurable_and_sources_can_be_left_out() {
        let users = [ms("m1", Some("a@x.com"), "u1@x.com", &[]), ms("m2", Some("b@x.com"), "a@x.com", &[])];
        let sbs = [sb("s1", &["a@x.com"])];
        let upn_first = build_with(&users, &sbs, &[MatchSource::Upn, MatchSource::Mail], &[]);
        assert_eq!(upn_first.by_switchboard.get("s1").map(String::as_str), Some("m2"));
        let mail_first = build_with(&users, &sbs, &[], &[]);
        assert_eq!(mail_first.by_switchboard.get("s1").map(String::as_str), Some("m1"));
        let no_mail = build_with(&[ms("m1", Some("a@x.com"), "u1@x.com", &[])], &sbs, &[MatchSource::Upn], &[]);
        assert!(no_mail.by_switchboard.is_empty());
    }

    #[test]
    fn overrides_win_and_take_both_users_out_of_address_matching() {
        let users = [ms("m1", Some("a@x.com"), "u1@x.com", &[]), ms("m2", Some("b@x.com"), "u2@x.com", &[])];
        // s1's address says m1, but the override says m2 (by address); s2 claims m1 by id.
        let sbs = [sb("s1", &["a@x.com"]), sb("s2", &["nobody@x.com"]), sb("s3", &["b@x.com"])];
        let ov = |s: &str, m: &str| MappingOverride { switchboard_user_id: s.into(), microsoft_user: m.into() };
        let m = build_with(&users, &sbs, &[], &[ov("s1", "B@x.com"), ov("s2", "m1")]);
        assert_eq!(m.by_switchboard.get("s1").map(String::as_str), Some("m2"));
        assert_eq!(m.by_switchboard.get("s2").map(String::as_str), Some("m1"));
        // s3's address names m2, which the override took: s3 stays unmapped, no conflict.
        assert!(!m.by_switchboard.contains_key("s3"));
        assert!(m.conflicts.is_empty(), "{:?}", m.conflicts);
    }

    #[test]
    fn overrides_that_name_nobody_are_reported() {
        let users = [ms("m1", Some("a@x.com"), "u1@x.com", &[]), ms("m2", None, "u2@x.com", &["smtp:a@x.com"])];
        // s1 would match m1 by address, but its (unresolvable) override rules that out.
        let sbs = [sb("s1", &["a@x.com"]), sb("s2", &[])];
        let ov = |s: &str, m: &str| MappingOverride { switchboard_user_id: s.into(), microsoft_user: m.into() };
        let m = build_with(&users, &sbs, &[], &[ov("s1", "ghost@x.com"), ov("s9", "m1"), ov("s2", "a@x.com")]);
        assert!(m.by_switchboard.is_empty());
        assert_eq!(m.conflicts.len(), 3, "{:?}", m.conflicts);
        assert!(m.conflicts.iter().all(|c| c.kind == ConflictKind::UnresolvedOverride));
        let amb = m.conflicts.iter().find(|c| c.email == "a@x.com").unwrap();
        assert_eq!(amb.candidates, vec!["s2", "several Microsoft users have this address", "m1", "m2"]);
    }

    #[test]
    fn two_switchboard_users_reaching_one_microsoft_user_is_a_conflict() {
        let m = build(
            &[ms("m1", Some("a@x.com"), "u1@x.com", &["smtp:alias@x.com"])],
            &[sb("s1", &["a@x.com"]), sb("s2", &["alias@x.com"])],
        );
        assert!(m.by_microsoft.is_empty());
        assert_eq!(m.conflicts[0].kind, ConflictKind::SeveralSwitchboardUsers);
    }
}
