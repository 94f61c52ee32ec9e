//! Status messages and out-of-office, both ways (WIT `notes` and `absence`, since 3.5.0).
//!
//! Teams → switchboard: `statusMessage` and `outOfOfficeSettings` of the presence resource
//! (<https://learn.microsoft.com/en-us/graph/api/resources/presence>), from notifications and
//! full reads, become a [`TeamsNote`] shown whenever it changes. A property a payload lacks
//! keeps its last known value (whether rich notifications carry them is not documented).
//!
//! Switchboard → Teams: a switchboard absence sets the user's status message with its expiry
//! (`setStatusMessage`, <https://learn.microsoft.com/en-us/graph/api/presence-setstatusmessage>)
//! and clears it when the absence ends. Rules:
//! - The user's own words win: before writing, the current status message is read; the
//!   plugin writes only over no message or over the message it set itself (kept in state,
//!   per user), and clears only its own. Otherwise the absence stays out of Teams
//!   (`absence.kept-users-message`).
//! - One request per user at a time; the last event wins; failures back off per user.
//! - Loop safety: a note whose message is the plugin's own is shown with `own` set.

use super::*;

const STATE_OWN_MESSAGES: &str = "v1/own-status-messages";
/// Longest status message Teams takes.
pub const MAX_STATUS_MESSAGE: usize = 280;

/// What to do next for a user's absence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoteOp {
    /// Read the current status message.
    Read,
    /// Set ours.
    Set,
    /// Clear ours.
    Clear,
}

/// One user's absence and how far it got to Teams.
#[derive(Debug, Default)]
pub(super) struct Absence {
    /// The message and its end; `None`: no absence (clear ours, if any).
    want: Option<(String, Option<u64>)>,
    /// What comes next (`None`: nothing: done).
    next: Option<NoteOp>,
    inflight: bool,
    retry: Backoff,
}

impl Absence {
    /// No absence: the message we set (if it is still there) is to be cleared.
    pub(super) fn ended() -> Absence {
        Absence { next: Some(NoteOp::Read), ..Absence::default() }
    }
}

#[derive(Debug, Default)]
pub(super) struct Notes {
    /// The note last shown per Microsoft user.
    pub shown: HashMap<String, TeamsNote>,
    /// The status message we set last, per Microsoft user (persisted).
    pub own: BTreeMap<String, String>,
    pub absences: BTreeMap<String, Absence>,
    /// Absences that came before the first mapping (replayed after a restart): taken when
    /// it is built.
    pub early: Vec<AbsenceEvent>,
}

/// `statusMessage` as Graph sends it.
#[derive(serde::Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub(super) struct GraphStatusMessage {
    #[serde(default)]
    message: Option<GraphItemBody>,
    #[serde(default)]
    expiry_date_time: Option<GraphDateTime>,
}

#[derive(serde::Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "camelCase")]
struct GraphItemBody {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
}

#[derive(serde::Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "camelCase")]
struct GraphDateTime {
    #[serde(default)]
    date_time: Option<String>,
    #[serde(default)]
    time_zone: Option<String>,
}

/// `outOfOfficeSettings` as Graph sends it.
#[derive(serde::Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub(super) struct GraphOutOfOffice {
    #[serde(default)]
    is_out_of_office: Option<bool>,
    #[serde(default)]
    message: Option<String>,
}

/// Deserializes a property that may be absent (`None`), null (`Some(None)`) or set.
pub(super) fn present<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(<Option<T> as serde::Deserialize>::deserialize(d)?))
}

/// The text of an HTML status message: tags dropped, the common entities decoded.
fn text_of_html(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// When a Graph `dateTimeTimeZone` is, in ms (UTC, an offset in the text, or an IANA zone).
fn instant_of(d: &GraphDateTime) -> Option<u64> {
    let text = d.date_time.as_deref()?.trim();
    if let Some(ms) = parse_rfc3339(text) {
        return Some(ms);
    }
    let zone = d.time_zone.as_deref().unwrap_or("UTC").trim();
    if zone.eq_ignore_ascii_case("UTC") {
        return parse_rfc3339(&format!("{text}Z"));
    }
    let civil: jiff::civil::DateTime = text.parse().ok()?;
    let ts = civil.in_tz(zone).ok()?.timestamp();
    u64::try_from(ts.as_millisecond()).ok()
}

/// The message text of a `statusMessage` (`None`: no message).
fn message_text(m: &GraphStatusMessage) -> Option<String> {
    let body = m.message.as_ref()?;
    let content = body.content.as_deref()?;
    let text = if body.content_type.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("html")) {
        text_of_html(content)
    } else {
        content.to_string()
    };
    let text = text.trim().to_string();
    (!text.is_empty()).then_some(text)
}

impl Core {
    /// Shows the note a presence payload carries for mapped user `ms` (switchboard `sb`),
    /// when it changed since the last one shown (or was never shown).
    pub(super) fn apply_note(
        &mut self,
        ms: &str,
        sb: &str,
        status: Option<Option<GraphStatusMessage>>,
        ooo: Option<Option<GraphOutOfOffice>>,
    ) {
        if status.is_none() && ooo.is_none() {
            return;
        }
        let before = self.notes.shown.get(ms);
        let mut note = before.cloned().unwrap_or_default();
        if let Some(m) = status {
            note.status_message = m.as_ref().and_then(message_text);
            note.status_message_expires_ms = m
                .as_ref()
                .and_then(|m| m.expiry_date_time.as_ref())
                .and_then(instant_of)
                .filter(|_| note.status_message.is_some());
        }
        if let Some(o) = ooo {
            let o = o.unwrap_or_default();
            note.out_of_office = o.is_out_of_office.unwrap_or(false);
            note.out_of_office_message = o.message.map(|m| m.trim().to_string()).filter(|m| !m.is_empty());
        }
        note.own = note.status_message.is_some() && note.status_message.as_ref() == self.notes.own.get(ms);
        if before == Some(&note) {
            return;
        }
        self.notes.shown.insert(ms.to_string(), note.clone());
        self.count("notes.shown");
        self.effects.push(Effect::ShowNote { user_id: sb.to_string(), microsoft_user_id: ms.to_string(), note });
    }

    pub(super) fn restore_notes(&mut self, env: &mut dyn Env) {
        self.notes.own = env.load(STATE_OWN_MESSAGES).and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    }

    fn persist_own_messages(&mut self) {
        self.effects.push(Effect::Store {
            key: STATE_OWN_MESSAGES.into(),
            value: Some(serde_json::to_vec(&self.notes.own).unwrap()),
        });
    }

    /// A switchboard absence starts, changes or ends (WIT `absence.on-absence`).
    pub fn on_absence(&mut self, env: &mut dyn Env, ev: AbsenceEvent) -> Result<(), AbsenceError> {
        let len = ev.message.chars().count();
        if len > MAX_STATUS_MESSAGE {
            return Err(AbsenceError::TooLong(len as u32));
        }
        if !self.settings.as_ref().is_some_and(|s| s.push_line_status) {
            return Err(AbsenceError::PushDisabled);
        }
        if !self.mapping_built {
            // Replayed after a restart, before the mapping is back: taken once it is.
            self.notes.early.retain(|e| e.user_id != ev.user_id);
            self.notes.early.push(ev);
            return Ok(());
        }
        self.take_absence(ev)?;
        self.drive(env);
        Ok(())
    }

    /// The absences that came before the first mapping.
    pub(super) fn take_early_absences(&mut self) {
        for ev in std::mem::take(&mut self.notes.early) {
            let _ = self.take_absence(ev);
        }
    }

    fn take_absence(&mut self, ev: AbsenceEvent) -> Result<(), AbsenceError> {
        let Some(ms) = self.mapping.by_switchboard.get(ev.user_id.as_str()).map(|m| m.to_string()) else {
            return Err(AbsenceError::UnmappedUser(ev.user_id));
        };
        if self.applied.teams_only.contains(&ms) {
            // Teams to switchboard only: nothing of this user is written to Teams.
            self.count("absence.one-way-user");
            return Ok(());
        }
        let message = ev.message.trim().to_string();
        let want = (!message.is_empty()).then_some((message, ev.until_ms));
        let a = self.notes.absences.entry(ms).or_default();
        if a.want != want || a.next.is_none() && want.is_some() && !a.inflight {
            a.want = want;
            a.next = Some(NoteOp::Read);
            a.retry.succeed();
        }
        self.count("absence.events");
        Ok(())
    }

    /// Starts the next absence request, one at a time (they share the presence budget).
    pub(super) fn drive_absences(&mut self, settings: &Settings, now: u64) {
        if self.notes.absences.values().all(|a| a.next.is_none()) || self.retiring {
            return;
        }
        if !self.scope_ready(Scope::Presence, now) || self.presence_budget.available(now) == 0 {
            return;
        }
        let Some(token) = self.app_token.access(now).map(str::to_owned) else { return };
        let Some((ms, op)) = self
            .notes
            .absences
            .iter()
            .find(|(_, a)| !a.inflight && a.retry.ready(now) && a.next.is_some())
            .map(|(ms, a)| (ms.clone(), a.next.unwrap()))
        else {
            return;
        };
        let a = self.notes.absences.get_mut(&ms).unwrap();
        a.inflight = true;
        let base = format!("{}/v1.0/users/{ms}/presence", settings.graph_base_url);
        let req = match op {
            NoteOp::Read => get(&base, &token),
            NoteOp::Set => {
                let (message, until) = a.want.clone().unwrap_or_default();
                let mut sm = serde_json::json!({ "message": { "content": message, "contentType": "text" } });
                if let Some(until) = until {
                    // Graph's dateTimeTimeZone: a local date-time and its zone.
                    let at = rfc3339(until);
                    sm["expiryDateTime"] =
                        serde_json::json!({ "dateTime": at.trim_end_matches('Z'), "timeZone": "UTC" });
                }
                request(
                    "POST",
                    &format!("{base}/setStatusMessage"),
                    &token,
                    Some(serde_json::json!({ "statusMessage": sm })),
                )
            }
            NoteOp::Clear => request(
                "POST",
                &format!("{base}/setStatusMessage"),
                &token,
                Some(serde_json::json!({ "statusMessage": { "message": { "content": "", "contentType": "text" } } })),
            ),
        };
        self.presence_budget.take(now, 1);
        self.start(Pending::Absence(ms, op), req);
    }

    pub(super) fn on_absence_response(
        &mut self,
        ms: String,
        op: NoteOp,
        outcome: Result<HttpResponse, HttpError>,
        now: u64,
        jitter: u8,
    ) {
        let status = outcome.as_ref().map_or(0, |r| r.status);
        let Some(a) = self.notes.absences.get_mut(&ms) else { return };
        a.inflight = false;
        let want = a.want.clone();
        match (op, status) {
            (NoteOp::Read, 200) => {
                let body = outcome.as_ref().map(|r| r.body.clone()).unwrap_or_default();
                let Ok(p) = serde_json::from_slice::<GraphPresence>(&body) else {
                    a.retry.fail(now, None, jitter);
                    return;
                };
                let current = p.status_message.as_ref().and_then(|m| m.as_ref()).and_then(message_text);
                let own = self.notes.own.get(&ms).cloned();
                let next = match (&want, &current) {
                    // Ours already (a replay after a restart): nothing to write.
                    (Some((m, _)), Some(c)) if c == m && own.as_ref() == Some(c) => None,
                    (Some(_), None) => Some(NoteOp::Set),
                    (Some(_), Some(c)) if own.as_ref() == Some(c) => Some(NoteOp::Set),
                    (Some(_), Some(_)) => {
                        self.count("absence.kept-users-message");
                        None
                    }
                    (None, Some(c)) if own.as_ref() == Some(c) => Some(NoteOp::Clear),
                    (None, _) => {
                        // Not ours (the user's own, or gone already): left alone, forgotten.
                        if self.notes.own.remove(&ms).is_some() {
                            self.persist_own_messages();
                        }
                        None
                    }
                };
                let a = self.notes.absences.get_mut(&ms).unwrap();
                a.retry.succeed();
                a.next = next;
                let finished = self.notes.absences.get(&ms).is_some_and(|a| a.next.is_none() && a.want.is_none());
                if finished {
                    self.notes.absences.remove(&ms);
                }
                self.apply_presence(p, PresenceOrigin::Snapshot, now);
            }
            (NoteOp::Set, 200..=299) => {
                if let Some((m, _)) = &want {
                    self.notes.own.insert(ms.clone(), m.clone());
                    self.persist_own_messages();
                }
                self.count("absence.set");
                self.after_write(&ms, op);
            }
            (NoteOp::Clear, 200..=299) => {
                if self.notes.own.remove(&ms).is_some() {
                    self.persist_own_messages();
                }
                self.count("absence.cleared");
                self.after_write(&ms, op);
            }
            (_, 404) => {
                // The user no longer exists at Microsoft.
                self.notes.absences.remove(&ms);
            }
            (_, 401) => self.app_token.state = TokenState::Empty,
            _ => {
                self.count("absence.failed");
                let ra = outcome.as_ref().ok().and_then(retry_after);
                let a = self.notes.absences.get_mut(&ms).unwrap();
                a.retry.fail(now, ra, jitter);
            }
        }
    }

    /// After a write: done, unless the absence changed meanwhile (then read again).
    fn after_write(&mut self, ms: &str, op: NoteOp) {
        let Some(a) = self.notes.absences.get_mut(ms) else { return };
        a.retry.succeed();
        let done = match op {
            NoteOp::Set => a.want.is_some() && a.next == Some(NoteOp::Set),
            _ => a.want.is_none() && a.next == Some(NoteOp::Clear),
        };
        if done {
            a.next = None;
        }
        if a.next.is_none() && a.want.is_none() {
            self.notes.absences.remove(ms);
        }
    }
}
