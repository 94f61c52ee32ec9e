//! Mapping Microsoft users to switchboard users by email address.
//!
//! Addresses are compared trimmed and case-insensitively. A switchboard address is looked up
//! among Microsoft users' `mail` first, then their `proxyAddresses` `smtp:` aliases, then
//! their `userPrincipalName`; the first source that knows the address decides. Ambiguity is
//! never settled at random: an address carried by several Microsoft users, or several
//! switchboard users claiming one address or one Microsoft user, is reported as a conflict
//! and those users stay unmapped.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{Conflict, ConflictKind, SwitchboardUser};

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

/// Matches `switchboard` users to `microsoft` users.
pub fn build(microsoft: &[GraphUser], switchboard: &[SwitchboardUser]) -> Mapping {
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
    for s in switchboard {
        let mut found: BTreeSet<&str> = BTreeSet::new();
        let mut via = String::new();
        for e in &s.emails {
            let e = normalise(e);
            if e.is_empty() || sb_by_email.get(&e).is_some_and(|ids| ids.len() > 1) {
                continue;
            }
            let hit = [&by_mail, &by_alias, &by_upn].into_iter().find_map(|ix| ix.get(&e));
            match hit {
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

    let mut mapping = Mapping::default();
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
    fn two_switchboard_users_reaching_one_microsoft_user_is_a_conflict() {
        let m = build(
            &[ms("m1", Some("a@x.com"), "u1@x.com", &["smtp:alias@x.com"])],
            &[sb("s1", &["a@x.com"]), sb("s2", &["alias@x.com"])],
        );
        assert!(m.by_microsoft.is_empty());
        assert_eq!(m.conflicts[0].kind, ConflictKind::SeveralSwitchboardUsers);
    }
}
