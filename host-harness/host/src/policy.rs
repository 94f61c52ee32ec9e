//! An integration's sync policy as the host's configuration holds it (`[integration.policy]`
//! in the TOML file, `"policy"` in the admin API's JSON, the admin page's "Sync policy"), and
//! its conversion to the WIT `policy.sync-policy` the plugin applies. The plugin checks it
//! again (it is the contract); the host checks it first so that a bad value is refused at
//! load and at Save with the field's name, before anything runs.

use serde::{Deserialize, Serialize};

use crate::bindings::policy;

/// `[integration.policy]`. Every field is optional; the default is the product's behaviour
/// without a policy (every matched user, both ways, calls over Available and Busy, any hour).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Entra group object ids: only their (transitive) members sync.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Users who do not sync (switchboard id, Microsoft id or address).
    #[serde(default)]
    pub excluded_users: Vec<String>,
    /// Users whose calls are never pushed to Teams.
    #[serde(default)]
    pub teams_to_switchboard_only: Vec<String>,
    /// Availabilities a call may replace (default Available, Busy).
    #[serde(default)]
    pub call_replaces: Vec<String>,
    /// Show a call as Do not disturb.
    #[serde(default)]
    pub do_not_disturb_in_call: bool,
    /// When calls are pushed.
    #[serde(default)]
    pub working_hours: Option<WorkingHoursConfig>,
}

/// `[integration.policy.working_hours]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkingHoursConfig {
    /// IANA time zone, e.g. `Europe/Copenhagen`.
    pub time_zone: String,
    /// Days, `mon` .. `sun` (or the full English names); empty: every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// `HH:MM`, local.
    pub start: String,
    /// `HH:MM`, local, exclusive (`24:00` for midnight); before `start`: spans midnight.
    pub end: String,
}

const DAYS: [(&str, policy::Weekday); 7] = [
    ("mon", policy::Weekday::Monday),
    ("tue", policy::Weekday::Tuesday),
    ("wed", policy::Weekday::Wednesday),
    ("thu", policy::Weekday::Thursday),
    ("fri", policy::Weekday::Friday),
    ("sat", policy::Weekday::Saturday),
    ("sun", policy::Weekday::Sunday),
];

fn day(s: &str) -> Option<policy::Weekday> {
    let s = s.trim().to_ascii_lowercase();
    DAYS.iter().find(|(short, _)| s == *short || s == full_name(short)).map(|(_, d)| *d)
}

fn full_name(short: &str) -> &'static str {
    match short {
        "mon" => "monday",
        "tue" => "tuesday",
        "wed" => "wednesday",
        "thu" => "thursday",
        "fri" => "friday",
        "sat" => "saturday",
        _ => "sunday",
    }
}

/// Minutes after midnight of `HH:MM` (`24:00` only where `end` allows it).
fn minutes(s: &str, end: bool) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    if m >= 60 || h > 24 || (h == 24 && (m != 0 || !end)) {
        return None;
    }
    Some(h * 60 + m)
}

fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

impl PolicyConfig {
    /// Checks the policy; an error is `(field, reason)`, the field relative to the
    /// integration (`policy.working_hours.start`, ...).
    pub fn check(&self) -> Result<(), (String, String)> {
        self.to_wit().map(|_| ())
    }

    /// The WIT policy, checked.
    pub fn to_wit(&self) -> Result<policy::SyncPolicy, (String, String)> {
        let e = |field: String, reason: String| Err((format!("policy.{field}"), reason));
        if self.groups.len() > 50 {
            return e("groups".into(), "at most 50 groups".into());
        }
        for (i, g) in self.groups.iter().enumerate() {
            if !is_guid(g.trim()) {
                return e(
                    format!("groups[{i}]"),
                    format!("'{g}' is not a group's object id (a GUID, as Entra shows it)"),
                );
            }
            if self.groups[..i].iter().any(|x| x.trim().eq_ignore_ascii_case(g.trim())) {
                return e(format!("groups[{i}]"), format!("'{g}' is listed twice"));
            }
        }
        for (name, list) in
            [("excluded_users", &self.excluded_users), ("teams_to_switchboard_only", &self.teams_to_switchboard_only)]
        {
            if list.len() > 10_000 {
                return e(name.into(), "at most 10,000 entries".into());
            }
            for (i, x) in list.iter().enumerate() {
                if x.trim().is_empty() || x.len() > 256 {
                    return e(
                        format!("{name}[{i}]"),
                        "name a switchboard user id, a Microsoft user id or an address (1 to 256 characters)".into(),
                    );
                }
            }
        }
        for (i, a) in self.call_replaces.iter().enumerate() {
            if a.is_empty() || a.len() > 64 || !a.chars().all(|c| c.is_ascii_alphabetic()) {
                return e(
                    format!("call_replaces[{i}]"),
                    format!("'{a}' is not an availability (Available, Busy, Away, ...)"),
                );
            }
        }
        let working_hours = match &self.working_hours {
            None => None,
            Some(w) => {
                if jiff::tz::TimeZone::get(w.time_zone.trim()).is_err() {
                    return e(
                        "working_hours.time_zone".into(),
                        format!("'{}' is not an IANA time zone (such as Europe/Copenhagen)", w.time_zone),
                    );
                }
                let mut days = Vec::new();
                for (i, d) in w.days.iter().enumerate() {
                    match day(d) {
                        Some(d) if !days.contains(&d) => days.push(d),
                        Some(_) => return e(format!("working_hours.days[{i}]"), format!("'{d}' is listed twice")),
                        None => {
                            return e(format!("working_hours.days[{i}]"), format!("'{d}' is not a day (mon .. sun)"));
                        }
                    }
                }
                let Some(start) = minutes(&w.start, false) else {
                    return e(
                        "working_hours.start".into(),
                        format!("'{}' is not a time of day (HH:MM, 00:00 to 23:59)", w.start),
                    );
                };
                let Some(end) = minutes(&w.end, true).filter(|m| *m > 0) else {
                    return e(
                        "working_hours.end".into(),
                        format!("'{}' is not a time of day (HH:MM, 00:01 to 24:00)", w.end),
                    );
                };
                if start == end {
                    return e("working_hours.end".into(), "equals the start: the hours would be empty".into());
                }
                Some(policy::WorkingHours {
                    time_zone: w.time_zone.trim().to_string(),
                    days,
                    start_minute: start,
                    end_minute: end,
                })
            }
        };
        Ok(policy::SyncPolicy {
            groups: self.groups.iter().map(|g| g.trim().to_string()).collect(),
            excluded_users: self.excluded_users.iter().map(|x| x.trim().to_string()).collect(),
            teams_to_switchboard_only: self.teams_to_switchboard_only.iter().map(|x| x.trim().to_string()).collect(),
            call_replaces: self.call_replaces.clone(),
            do_not_disturb_in_call: self.do_not_disturb_in_call,
            working_hours,
        })
    }

    /// Whether this is the default policy (what a plugin without the `policy` export does).
    pub fn is_default(&self) -> bool {
        self == &PolicyConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hours(start: &str, end: &str, days: &[&str], tz: &str) -> PolicyConfig {
        PolicyConfig {
            working_hours: Some(WorkingHoursConfig {
                time_zone: tz.into(),
                days: days.iter().map(|d| d.to_string()).collect(),
                start: start.into(),
                end: end.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_policy_converts_and_a_bad_one_names_its_field() {
        let p = hours("08:00", "17:30", &["mon", "Tuesday", "FRI"], "Europe/Copenhagen").to_wit().unwrap();
        let w = p.working_hours.unwrap();
        assert_eq!((w.start_minute, w.end_minute, w.days.len()), (480, 1050, 3));
        assert_eq!(hours("22:00", "24:00", &[], "UTC").to_wit().unwrap().working_hours.unwrap().end_minute, 1440);
        let field = |p: PolicyConfig| p.check().unwrap_err().0;
        assert_eq!(field(hours("8", "17:00", &[], "UTC")), "policy.working_hours.start");
        assert_eq!(field(hours("08:00", "24:01", &[], "UTC")), "policy.working_hours.end");
        assert_eq!(field(hours("08:00", "08:00", &[], "UTC")), "policy.working_hours.end");
        assert_eq!(field(hours("08:00", "17:00", &["funday"], "UTC")), "policy.working_hours.days[0]");
        assert_eq!(field(hours("08:00", "17:00", &["mon", "monday"], "UTC")), "policy.working_hours.days[1]");
        assert_eq!(field(hours("08:00", "17:00", &[], "Europe/Atlantis")), "policy.working_hours.time_zone");
        assert_eq!(field(PolicyConfig { groups: vec!["sales".into()], ..Default::default() }), "policy.groups[0]");
        assert_eq!(
            field(PolicyConfig { excluded_users: vec!["".into()], ..Default::default() }),
            "policy.excluded_users[0]"
        );
        assert_eq!(
            field(PolicyConfig { call_replaces: vec!["Be right back".into()], ..Default::default() }),
            "policy.call_replaces[0]"
        );
    }
}
