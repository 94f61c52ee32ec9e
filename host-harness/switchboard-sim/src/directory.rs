//! The simulator's user directory: users in a stable order, indexed by id and by address,
//! checked on the way in, and compared so that only real changes count.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Longest id, name, address or line number taken (the reference host takes 256-byte ids).
pub const MAX_FIELD: usize = 256;

/// A switchboard user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Switchboard id.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Addresses.
    #[serde(default)]
    pub emails: Vec<String>,
    /// Line number.
    #[serde(default)]
    pub line_number: Option<String>,
    /// Has a line (an active user); passive users get presence but cause no pushes.
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

impl User {
    /// Checks the user's fields; the error names the field and the problem.
    pub fn check(&self) -> Result<(), String> {
        let id = self.id.trim();
        if id.is_empty() {
            return Err("id is empty".into());
        }
        if id != self.id {
            return Err(format!("id '{}' has leading or trailing spaces", self.id));
        }
        let long = |what: &str, v: &str| {
            (v.len() > MAX_FIELD).then(|| format!("{what} is {} bytes long (at most {MAX_FIELD})", v.len()))
        };
        let fields = [("id", self.id.as_str()), ("name", self.name.as_str())];
        if let Some(e) = fields.iter().find_map(|(w, v)| long(w, v)) {
            return Err(e);
        }
        if self.id.chars().any(char::is_control) {
            return Err("id holds a control character".into());
        }
        for e in &self.emails {
            if let Some(err) = long("an email", e) {
                return Err(err);
            }
            let e = e.trim();
            match e.split_once('@') {
                Some((local, domain))
                    if !local.is_empty() && !domain.is_empty() && !e.contains(char::is_whitespace) => {}
                _ => return Err(format!("email '{e}' is not an address (local@domain)")),
            }
        }
        if let Some(line) = &self.line_number {
            if let Some(err) = long("line_number", line) {
                return Err(err);
            }
            let digits = line.strip_prefix('+').unwrap_or(line);
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
                return Err(format!("line_number '{line}' is not a phone number in E.164 form (+4712345678)"));
            }
        }
        Ok(())
    }
}

/// What a change did, user by user.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Users that were not there.
    pub added: usize,
    /// Users whose fields changed.
    pub changed: usize,
    /// Users taken out.
    pub removed: usize,
    /// Users given exactly as they were.
    pub unchanged: usize,
}

impl Summary {
    /// Whether anything changed.
    pub fn any(&self) -> bool {
        self.added + self.changed + self.removed > 0
    }
}

/// The users, in their order, with indexes.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    pub(crate) users: Vec<User>,
    pub(crate) by_id: HashMap<String, usize>,
    pub(crate) by_email: HashMap<String, Vec<usize>>,
}

impl Directory {
    /// The directory of `users`, which must be valid with unique ids.
    pub(crate) fn new(users: Vec<User>) -> Result<Self, String> {
        let mut by_id = HashMap::with_capacity(users.len());
        let mut by_email: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, u) in users.iter().enumerate() {
            u.check().map_err(|e| format!("user {} ('{}'): {e}", i + 1, u.id))?;
            if let Some(first) = by_id.insert(u.id.clone(), i) {
                return Err(format!("user {} has the id '{}' of user {} (ids are unique)", i + 1, u.id, first + 1));
            }
            for e in &u.emails {
                by_email.entry(e.trim().to_lowercase()).or_default().push(i);
            }
        }
        Ok(Directory { users, by_id, by_email })
    }

    /// `upsert` added or replaced (by id), `remove` taken out, everything else kept in its
    /// place; new users go at the end. Fails, changing nothing, on a bad user, an id given
    /// twice, or an id both upserted and removed.
    pub(crate) fn changed(&self, upsert: Vec<User>, remove: &[String]) -> Result<(Directory, Summary), String> {
        let removing: HashSet<&str> = remove.iter().map(String::as_str).collect();
        let mut seen = HashSet::new();
        for (i, u) in upsert.iter().enumerate() {
            u.check().map_err(|e| format!("upsert[{i}] ('{}'): {e}", u.id))?;
            if !seen.insert(u.id.as_str()) {
                return Err(format!("upsert[{i}]: the id '{}' is given twice", u.id));
            }
            if removing.contains(u.id.as_str()) {
                return Err(format!("upsert[{i}]: the id '{}' is also in remove", u.id));
            }
        }
        let mut summary = Summary::default();
        let mut users = self.users.clone();
        for u in upsert {
            match self.by_id.get(&u.id) {
                Some(&i) if users[i] == u => summary.unchanged += 1,
                Some(&i) => {
                    users[i] = u;
                    summary.changed += 1;
                }
                None => {
                    users.push(u);
                    summary.added += 1;
                }
            }
        }
        let before = users.len();
        users.retain(|u| !removing.contains(u.id.as_str()));
        summary.removed = before - users.len();
        Ok((Directory::new(users)?, summary))
    }

    /// The directory `users` (a whole new list, as a re-read CSV gives it), with what changed
    /// compared to this one.
    pub(crate) fn replaced(&self, users: Vec<User>) -> Result<(Directory, Summary), String> {
        let next = Directory::new(users)?;
        let mut summary = Summary::default();
        for u in &next.users {
            match self.by_id.get(&u.id) {
                Some(&i) if self.users[i] == *u => summary.unchanged += 1,
                Some(_) => summary.changed += 1,
                None => summary.added += 1,
            }
        }
        summary.removed = self.users.iter().filter(|u| !next.by_id.contains_key(&u.id)).count();
        Ok((next, summary))
    }
}

/// Reads users from a CSV with a header `id,name,email,line_number[,active]`. Several
/// addresses go in `email` separated by `;`. An empty `line_number` makes a passive user.
/// Errors name the file, the row and the problem.
pub fn read_csv(path: &Path) -> anyhow::Result<Vec<User>> {
    let mut r = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    // An empty file (or one cut short) is refused, not taken as "no users".
    let header = r.headers().with_context(|| format!("{}: the header", path.display()))?;
    if header.get(0).map(str::trim) != Some("id") || header.len() < 4 {
        anyhow::bail!(
            "{}: the first line must be the header id,name,email,line_number[,active] (it is '{}')",
            path.display(),
            header.iter().collect::<Vec<_>>().join(",")
        );
    }
    let mut users = Vec::new();
    let mut rows: HashMap<String, usize> = HashMap::new();
    for (i, rec) in r.records().enumerate() {
        let row = i + 2;
        let rec = rec.with_context(|| format!("{}: row {row}", path.display()))?;
        let field = |n: usize| rec.get(n).map(str::trim).unwrap_or("");
        let line = field(3);
        let active = match field(4) {
            "" => !line.is_empty(),
            v if v.eq_ignore_ascii_case("true") || v == "1" => true,
            v if v.eq_ignore_ascii_case("false") || v == "0" => false,
            v => anyhow::bail!("{}: row {row}: active is '{v}' (true, false, 1, 0 or empty)", path.display()),
        };
        let u = User {
            id: field(0).into(),
            name: field(1).into(),
            emails: field(2).split(';').map(str::trim).filter(|e| !e.is_empty()).map(Into::into).collect(),
            line_number: (!line.is_empty()).then(|| line.to_string()),
            active,
        };
        u.check().map_err(|e| anyhow::anyhow!("{}: row {row}: {e}", path.display()))?;
        if let Some(first) = rows.insert(u.id.clone(), row) {
            anyhow::bail!("{}: row {row}: the id '{}' is already on row {first}", path.display(), u.id);
        }
        users.push(u);
    }
    Ok(users)
}

/// Writes users as CSV (for the demo and tests). The file is written beside and renamed into
/// place, so a reader never sees half of it.
pub fn write_csv(path: &Path, users: &[User]) -> anyhow::Result<()> {
    let tmp = path.with_extension("csv.tmp");
    let mut w = csv::Writer::from_path(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    w.write_record(["id", "name", "email", "line_number", "active"])?;
    for u in users {
        w.write_record([
            u.id.as_str(),
            &u.name,
            &u.emails.join(";"),
            u.line_number.as_deref().unwrap_or(""),
            if u.active { "true" } else { "false" },
        ])?;
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, email: &str) -> User {
        User { id: id.into(), name: id.to_uppercase(), emails: vec![email.into()], line_number: None, active: true }
    }

    #[test]
    fn changes_keep_the_order_and_count_only_real_changes() {
        let d = Directory::new(vec![user("a", "a@x.com"), user("b", "b@x.com"), user("c", "c@x.com")]).unwrap();
        let (d2, s) =
            d.changed(vec![user("b", "b@x.com"), user("c", "new@x.com"), user("d", "d@x.com")], &["a".into()]).unwrap();
        assert_eq!(s, Summary { added: 1, changed: 1, removed: 1, unchanged: 1 });
        let ids: Vec<_> = d2.users.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "d"]);
        assert_eq!(d2.by_email["new@x.com"], vec![1]);
        let (_, s) = d2.replaced(d2.users.clone()).unwrap();
        assert!(!s.any());
    }

    #[test]
    fn bad_input_is_refused_with_its_reason_and_changes_nothing() {
        let d = Directory::new(vec![user("a", "a@x.com")]).unwrap();
        let cases = [
            (vec![user("", "x@x.com")], vec![], "id is empty"),
            (vec![user("b", "not-an-address")], vec![], "email 'not-an-address' is not an address"),
            (vec![user("b", "b@x.com"), user("b", "c@x.com")], vec![], "given twice"),
            (vec![user("a", "a@x.com")], vec!["a".to_string()], "also in remove"),
            (
                vec![User { line_number: Some("12ab".into()), ..user("b", "b@x.com") }],
                vec![],
                "line_number '12ab' is not a phone number",
            ),
        ];
        for (upsert, remove, why) in cases {
            let e = d.changed(upsert, &remove).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        assert!(Directory::new(vec![user("a", "a@x.com"), user("a", "b@x.com")]).unwrap_err().contains("unique"));
    }

    #[test]
    fn a_csv_with_a_bad_row_names_it() {
        let dir = std::env::temp_dir().join(format!("sbsim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("u.csv");
        std::fs::write(&p, "id,name,email,line_number,active\na,A,a@x.com,+4711,true\na,B,b@x.com,,\n").unwrap();
        let e = read_csv(&p).unwrap_err().to_string();
        assert!(e.contains("row 3") && e.contains("already on row 2"), "{e}");
        std::fs::write(&p, "").unwrap();
        let e = read_csv(&p).unwrap_err().to_string();
        assert!(e.contains("the first line must be the header"), "{e}");
        std::fs::write(&p, "id,name,email,line_number,active\na,A,a@x.com,+4711,maybe\n").unwrap();
        let e = read_csv(&p).unwrap_err().to_string();
        assert!(e.contains("row 2") && e.contains("active is 'maybe'"), "{e}");
        write_csv(&p, &[user("z", "z@x.com")]).unwrap();
        assert_eq!(read_csv(&p).unwrap(), vec![user("z", "z@x.com")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
