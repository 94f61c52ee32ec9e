//! Switchboard → Teams: a mobile-line call shows as `Busy`/`InACall` in Teams through an app
//! presence session (<https://learn.microsoft.com/en-us/graph/api/presence-setpresence>,
//! <https://learn.microsoft.com/en-us/graph/cloud-communications-manage-presence-state>).
//!
//! Rules this module encodes:
//! - The session id is the app's client id; the session lives `PT5M` and is re-asserted a
//!   minute before it runs out while the call lasts, so a host that dies mid-call leaves
//!   "In a call" for at most five minutes.
//! - A call is pushed only over `Available` or `Busy` (the user's own Teams state, never our
//!   own session's); DoNotDisturb, BeRightBack, Away, Offline, Presenting are left alone. An
//!   unknown state is read (`GET /users/{id}/presence`) before deciding. The sync policy
//!   (`policy.rs`) may name other availabilities, show the call as Do not disturb, keep a
//!   user's calls out of Teams, or push only within working hours.
//! - At most one request per user is in flight; events arriving meanwhile only change the
//!   wanted state, so a burst costs one write per state that lasts and the last state wins.
//! - Requests stay under Graph's presence limit (1,500 per 30 s per app per tenant) with a
//!   local budget, honour `Retry-After`, and go out in JSON batches of up to 20.
//! - A 403 (no Presence.ReadWrite.All or no admin consent) stops pushes and shows the fix in
//!   the status; Teams → switchboard is not affected.

use std::collections::BTreeMap;

use super::*;

/// Lifetime of our presence session (`expirationDuration`).
pub const SESSION_LIFETIME_MS: u64 = 5 * 60 * 1000;
/// Re-assert the session this long before it runs out.
pub const KEEPALIVE_MARGIN_MS: u64 = 60 * 1000;
/// Graph's JSON batch limit.
pub const MAX_BATCH: usize = 20;
/// After a 403, try again this much later (the admin may grant consent meanwhile).
const PERMISSION_RETRY_MS: u64 = 15 * 60 * 1000;
const STATE_CALLS: &str = "v1/calls";

/// One user's line and what we hold in Teams for it.
#[derive(Debug, Clone, Default)]
pub(super) struct Call {
    /// The line says the user is in a call.
    pub(super) in_call: bool,
    /// Since when the line is in its current state.
    pub(super) since_ms: u64,
    /// Our session exists in Teams until then.
    pub(super) pushed_until: Option<u64>,
    /// A request for this user is in flight.
    pub(super) inflight: bool,
    /// Not before (after a failure for this user).
    pub(super) not_before: u64,
    /// `pushed_until` before the Set in flight (restored if it fails).
    pub(super) before_set: Option<u64>,
    /// The session shows (or the Set in flight sets) DoNotDisturb/Presenting rather than
    /// Busy/InACall.
    pub(super) dnd: bool,
    /// `dnd` before the Set in flight (restored if it fails).
    pub(super) before_dnd: bool,
}

/// What to do for a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PushOp {
    Set,
    Clear,
    Read,
}

/// Push state of the integration.
#[derive(Debug, Default)]
pub(super) struct Push {
    pub(super) calls: BTreeMap<String, Call>,
    pub(super) problem: Option<Problem>,
    pub(super) problem_retry_at: u64,
    pub(super) not_before: u64,
    /// A push request is in flight. One at a time (up to 20 operations in it) is far more
    /// than Graph's limit allows on average, and it means that after a 429 nothing else is
    /// already on its way.
    pub(super) busy: bool,
}

impl Core {
    /// A line event from the switchboard.
    pub fn on_line_event(&mut self, env: &mut dyn Env, ev: LineEvent) -> Result<(), LineEventError> {
        let Some(settings) = self.settings.as_ref() else { return Err(LineEventError::PushDisabled) };
        if !settings.push_line_status || self.retiring {
            return Err(LineEventError::PushDisabled);
        }
        if self.passive.contains(&ev.user_id) {
            return Err(LineEventError::PassiveUser(ev.user_id));
        }
        let Some(ms) = self.mapping.by_switchboard.get(ev.user_id.as_str()).map(|m| m.to_string()) else {
            return Err(LineEventError::UnmappedUser(ev.user_id));
        };
        // A user whose calls are never pushed (the policy's Teams to switchboard only) is
        // followed all the same: made two-way during a call, the call shows at once.
        let now = env.now_ms();
        // The call's length counts from when the switchboard saw the change (a call replayed
        // after a restart keeps its age); unknown (0) or ahead of our clock counts as now.
        let at = if ev.at_ms == 0 || ev.at_ms > now { now } else { ev.at_ms };
        let call = self.push.calls.entry(ms).or_default();
        let in_call = ev.state.in_call();
        if call.in_call != in_call {
            call.in_call = in_call;
            call.since_ms = at;
        }
        self.count("line.events");
        self.drive(env);
        Ok(())
    }

    /// Whether `ms` currently has (or is getting) our session: its Busy/InACall is ours.
    pub(super) fn own_session(&self, ms: &str) -> bool {
        self.push.calls.get(ms).is_some_and(|c| c.pushed_until.is_some() || (c.inflight && c.in_call))
    }

    /// Whether `presence` of `ms` is our own session's doing: the session is up (or being
    /// set) and the presence is the pair it sets.
    pub(super) fn is_own_presence(&self, ms: &str, presence: &TeamsPresence) -> bool {
        let Some(c) = self.push.calls.get(ms) else { return false };
        if !(c.pushed_until.is_some() || (c.inflight && c.in_call)) {
            return false;
        }
        let (a, act) = session_pair(c.dnd);
        presence.availability.eq_ignore_ascii_case(a) && presence.activity.eq_ignore_ascii_case(act)
    }

    pub(super) fn restore_calls(&mut self, env: &mut dyn Env) {
        let Some(saved) = env.load(STATE_CALLS).and_then(|b| serde_json::from_slice::<BTreeMap<String, u64>>(&b).ok())
        else {
            return;
        };
        let now = env.now_ms();
        for (ms, until) in saved {
            if until > now {
                // Cleared at the next drive unless the host replays a call for this user.
                let dnd = self.policy.do_not_disturb_in_call;
                self.push.calls.insert(
                    ms,
                    Call { pushed_until: Some(until), since_ms: now, dnd, before_dnd: dnd, ..Call::default() },
                );
            }
        }
    }

    fn persist_calls(&mut self) {
        let saved: BTreeMap<&String, u64> =
            self.push.calls.iter().filter_map(|(k, c)| c.pushed_until.map(|u| (k, u))).collect();
        self.effects.push(Effect::Store { key: STATE_CALLS.into(), value: Some(serde_json::to_vec(&saved).unwrap()) });
    }

    pub(super) fn drive_pushes(&mut self, settings: &Settings, now: u64) {
        // Switched off (or retiring), the sessions we still hold are cleared all the same.
        let push_on = settings.push_line_status && !self.retiring;
        if self.push.calls.is_empty() || (!push_on && self.push.calls.values().all(|c| c.pushed_until.is_none())) {
            return;
        }
        if self.push.problem.is_some() {
            if now < self.push.problem_retry_at {
                return;
            }
            self.push.problem = None;
        }
        let Some(token) = self.app_token.access(now).map(str::to_owned) else { return };
        if self.push.busy || now < self.push.not_before || !self.scope_ready(Scope::Presence, now) {
            return;
        }
        let mut budget = self.presence_budget.available(now);
        let hours_open = self.within_working_hours(now);
        let dnd = self.policy.do_not_disturb_in_call;
        let mut ops: Vec<(String, PushOp)> = Vec::new();
        let mut finished = Vec::new();
        for (ms, c) in &self.push.calls {
            if c.inflight || now < c.not_before {
                continue;
            }
            let want = push_on
                && c.in_call
                && self.push_allowed(ms, hours_open)
                && now.saturating_sub(c.since_ms) >= settings.min_call_length_ms;
            let op = match (want, c.pushed_until) {
                // The policy changed which pair a call shows: set the other one.
                (true, Some(_)) if c.dnd != dnd => Some(PushOp::Set),
                (true, Some(until)) if now + KEEPALIVE_MARGIN_MS >= until => Some(PushOp::Set),
                (true, Some(_)) => None,
                (true, None) => match self.known.presence(ms) {
                    None => Some(PushOp::Read),
                    Some(p) if policy::may_replace(&self.policy, &p) => Some(PushOp::Set),
                    Some(_) => None,
                },
                (false, Some(_)) => Some(PushOp::Clear),
                (false, None) => {
                    if !c.in_call {
                        finished.push(ms.clone());
                    }
                    None
                }
            };
            if let Some(op) = op {
                if budget == 0 || ops.len() == MAX_BATCH {
                    break;
                }
                budget -= 1;
                ops.push((ms.clone(), op));
            }
        }
        for ms in finished {
            self.push.calls.remove(&ms);
        }
        if ops.is_empty() {
            return;
        }
        let mut persist = false;
        for (ms, op) in &ops {
            let c = self.push.calls.get_mut(ms).unwrap();
            c.inflight = true;
            if *op == PushOp::Set {
                // Count it as pushed from the moment it leaves: if the host dies before the
                // answer, the restarted plugin must still know to clear it.
                c.before_set = c.pushed_until;
                c.pushed_until = Some(now + SESSION_LIFETIME_MS);
                c.before_dnd = c.dnd;
                c.dnd = dnd;
                persist = true;
            }
            self.presence_budget.take(now, 1);
        }
        if persist {
            self.persist_calls();
        }
        self.push.busy = true;
        for chunk in ops.chunks(MAX_BATCH) {
            if chunk.len() == 1 {
                let (ms, op) = &chunk[0];
                let (method, url, body) = op_request(settings, ms, *op, dnd);
                let req = request(method, &format!("{}/v1.0{url}", settings.graph_base_url), &token, body);
                self.start(Pending::Push(chunk.to_vec()), req);
            } else {
                let requests: Vec<serde_json::Value> = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, (ms, op))| {
                        let (method, url, body) = op_request(settings, ms, *op, dnd);
                        let mut r = serde_json::json!({ "id": (i + 1).to_string(), "method": method, "url": url });
                        if let Some(b) = body {
                            r["headers"] = serde_json::json!({ "Content-Type": "application/json" });
                            r["body"] = b;
                        }
                        r
                    })
                    .collect();
                let req = request(
                    "POST",
                    &format!("{}/v1.0/$batch", settings.graph_base_url),
                    &token,
                    Some(serde_json::json!({ "requests": requests })),
                );
                self.start(Pending::Push(chunk.to_vec()), req);
            }
        }
    }

    /// Handles the answer to a push request (single or `$batch`).
    pub(super) fn on_push_response(
        &mut self,
        ops: Vec<(String, PushOp)>,
        outcome: Result<HttpResponse, HttpError>,
        now: u64,
        jitter: u8,
    ) {
        self.push.busy = false;
        let results: Vec<(u16, Option<u64>, Vec<u8>)> = match &outcome {
            Ok(r) if ops.len() > 1 && r.status == 200 => {
                let parsed: Option<Vec<serde_json::Value>> = serde_json::from_slice::<serde_json::Value>(&r.body)
                    .ok()
                    .and_then(|v| v.get("responses").and_then(|x| x.as_array()).cloned());
                let by_id: BTreeMap<String, serde_json::Value> = parsed
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|x| Some((x.get("id")?.as_str()?.to_string(), x)))
                    .collect();
                (1..=ops.len())
                    .map(|i| match by_id.get(&i.to_string()) {
                        Some(x) => {
                            let status = x.get("status").and_then(|s| s.as_u64()).unwrap_or(500) as u16;
                            let ra = x
                                .get("headers")
                                .and_then(|h| h.as_object())
                                .and_then(|h| h.iter().find(|(k, _)| k.eq_ignore_ascii_case("retry-after")))
                                .and_then(|(_, v)| v.as_str().and_then(|s| s.trim().parse::<u64>().ok()).or(v.as_u64()))
                                .map(|s| s * 1000);
                            let body = x.get("body").map(|b| b.to_string().into_bytes()).unwrap_or_default();
                            (status, ra, body)
                        }
                        None => (500, None, Vec::new()),
                    })
                    .collect()
            }
            Ok(r) if ops.len() == 1 => vec![(r.status, retry_after(r), r.body.clone())],
            Ok(r) => vec![(r.status, retry_after(r), r.body.clone()); ops.len()],
            Err(_) => vec![(0, None, Vec::new()); ops.len()],
        };
        let mut changed = false;
        for ((ms, op), (status, ra, body)) in ops.into_iter().zip(results) {
            let Some(c) = self.push.calls.get_mut(&ms) else { continue };
            c.inflight = false;
            if op == PushOp::Set && !(200..300).contains(&status) {
                // Not pushed after all (unless it was already before this Set).
                c.pushed_until = c.before_set;
                c.dnd = c.before_dnd;
                changed = true;
            }
            match (op, status) {
                (PushOp::Set, 200..=299) => {
                    c.pushed_until = Some(now + SESSION_LIFETIME_MS);
                    changed = true;
                    self.count("push.set");
                }
                (PushOp::Clear, 200..=299 | 404) => {
                    // 404: the session is already gone (expired), which is what we wanted.
                    c.pushed_until = None;
                    changed = true;
                    self.count("push.clear");
                }
                (PushOp::Read, 200) => {
                    if let Ok(p) = serde_json::from_slice::<GraphPresence>(&body) {
                        self.apply_presence(p, PresenceOrigin::Snapshot, now);
                    }
                    // Still unknown (unreadable answer): do not read again at once.
                    if !self.known.has_presence(&ms)
                        && let Some(c) = self.push.calls.get_mut(&ms)
                    {
                        c.not_before = now + 30_000;
                    }
                }
                (_, 401) => self.app_token.state = TokenState::Empty,
                (_, 403) => {
                    let p = hints::from_graph_error(403, &body, "POST /users/{id}/presence/setPresence");
                    self.log(
                        Level::Error,
                        "pushing line status refused; pushes stop",
                        vec![("code".into(), p.code.clone())],
                    );
                    self.push.problem = Some(Problem {
                        hint: "Push line status needs the Application permission Presence.ReadWrite.All with admin consent: add it in the app registration and grant admin consent, or turn off \"Push line status to Teams\".".into(),
                        ..p
                    });
                    self.push.problem_retry_at = now + PERMISSION_RETRY_MS;
                }
                (_, 429 | 503 | 504) => {
                    self.count("push.throttled");
                    let mut b = Backoff::default();
                    b.fail(now, ra, jitter);
                    self.push.not_before = self.push.not_before.max(b.not_before);
                }
                (_, 404) => {
                    // The user no longer exists in Microsoft.
                    self.push.calls.remove(&ms);
                    changed = true;
                }
                _ => {
                    let mut b = Backoff::default();
                    b.fail(now, ra, jitter);
                    c.not_before = b.not_before;
                    self.count("push.failed");
                }
            }
        }
        if changed {
            self.persist_calls();
        }
    }
}

/// The pair our session sets: Busy/InACall, or DoNotDisturb/Presenting (the one Do not
/// disturb pair setPresence takes).
pub(super) fn session_pair(dnd: bool) -> (&'static str, &'static str) {
    if dnd { ("DoNotDisturb", "Presenting") } else { ("Busy", "InACall") }
}

fn op_request(
    settings: &Settings,
    ms: &str,
    op: PushOp,
    dnd: bool,
) -> (&'static str, String, Option<serde_json::Value>) {
    let (availability, activity) = session_pair(dnd);
    match op {
        PushOp::Set => (
            "POST",
            format!("/users/{ms}/presence/setPresence"),
            Some(serde_json::json!({
                "sessionId": settings.client_id,
                "availability": availability,
                "activity": activity,
                "expirationDuration": "PT5M",
            })),
        ),
        PushOp::Clear => (
            "POST",
            format!("/users/{ms}/presence/clearPresence"),
            Some(serde_json::json!({ "sessionId": settings.client_id })),
        ),
        PushOp::Read => ("GET", format!("/users/{ms}/presence"), None),
    }
}
