//! Polling: users no subscription covers have their presence read with the app's own token
//! (`POST /communications/getPresencesByUserId`, 650 ids at most, application permission
//! `Presence.Read.All`, <https://learn.microsoft.com/en-us/graph/api/cloudcommunications-getpresencesbyuserid>).
//!
//! - **Polling only**: an integration without integration users polls every mapped user.
//! - **Hybrid**: the users beyond 650 × integration users are polled instead of left
//!   uncovered.
//!
//! Rules this module encodes:
//! - A round reads every polled user once, in id order, 650 per request. Its requests are
//!   spread evenly over the round's interval (never a burst), one at a time.
//! - The interval adapts to the users: at least [`MIN_POLL_INTERVAL_MS`], and long enough
//!   that a round takes at most [`POLL_BUDGET`] of the [`PRESENCE_BUDGET`] requests per
//!   window; the rest stays for pushes, snapshots and re-reads. 10,000 users: 16 requests
//!   per 5 s round, 96 per 30 s.
//! - Before each request the shared presence budget must keep that rest free; a 429 holds
//!   every presence request back (`throttling.rs`) and the round goes on after it.
//! - A 403 (no `Presence.Read.All` application permission) stops polling for 15 minutes and
//!   says so in the status.

use super::*;

/// Least time between the starts of two rounds.
pub const MIN_POLL_INTERVAL_MS: u64 = 5_000;
/// Presence requests per [`PRESENCE_WINDOW_MS`] that polling may use, of [`PRESENCE_BUDGET`].
pub const POLL_BUDGET: usize = 1_000;
const PERMISSION_RETRY_MS: u64 = 15 * 60 * 1000;

/// The polling round interval for `users` polled users.
pub fn poll_interval_ms(users: usize) -> u64 {
    let requests = users.div_ceil(MAX_IDS_PER_PRESENCE_READ) as u64;
    MIN_POLL_INTERVAL_MS.max(requests * PRESENCE_WINDOW_MS / POLL_BUDGET as u64)
}

#[derive(Debug, Default)]
pub(super) struct Poll {
    /// The round in progress: when it started, the last id read (the request in flight reads
    /// the ids after it), requests answered.
    round: Option<(u64, Option<String>, u64)>,
    /// When the next round may start.
    next_at: u64,
    inflight: bool,
    retry: Backoff,
    pub rounds: u64,
    pub last_round_ms: Option<u64>,
    pub problem: Option<Problem>,
}

impl Core {
    /// Starts the next polling request when one is due.
    pub(super) fn drive_polling(&mut self, settings: &Settings, now: u64) {
        let users = self.shards.uncovered();
        if users == 0 || self.retiring || self.sharding.is_some() || self.poll.inflight || !self.poll.retry.ready(now) {
            return;
        }
        let interval = poll_interval_ms(users);
        let (started, after, sent) = match self.poll.round.clone() {
            Some(r) => r,
            None if now >= self.poll.next_at => (now, None, 0),
            None => return,
        };
        // Paced: request k of a round of n goes out k/n of the interval after its start.
        let requests = users.div_ceil(MAX_IDS_PER_PRESENCE_READ) as u64;
        if now < started + sent * interval / requests.max(1) {
            self.poll.round = Some((started, after, sent));
            return;
        }
        let reserve = PRESENCE_BUDGET - POLL_BUDGET;
        if !self.scope_ready(Scope::Presence, now) || self.presence_budget.available(now) <= reserve {
            self.poll.round = Some((started, after, sent));
            return;
        }
        let Some(token) = self.app_token.access(now).map(str::to_owned) else { return };
        let ids: Vec<Id> = match &after {
            Some(a) => self
                .shards
                .uncovered_users()
                .range::<str, _>((std::ops::Bound::Excluded(a.as_str()), std::ops::Bound::Unbounded))
                .take(MAX_IDS_PER_PRESENCE_READ)
                .cloned()
                .collect(),
            None => self.shards.uncovered_users().iter().take(MAX_IDS_PER_PRESENCE_READ).cloned().collect(),
        };
        let Some(last) = ids.last().cloned() else {
            self.end_round(started, now);
            return;
        };
        self.poll.round = Some((started, after, sent));
        self.poll.inflight = true;
        self.presence_budget.take(now, 1);
        let body = serde_json::json!({ "ids": ids });
        let url = format!("{}/v1.0/communications/getPresencesByUserId", settings.graph_base_url);
        self.start(Pending::Poll(last.to_string()), request("POST", &url, &token, Some(body)));
    }

    /// A polled presence: published when it changed (a round every few seconds must not
    /// republish every user), its note shown when that changed.
    fn apply_polled(&mut self, mut p: GraphPresence, now: u64) {
        let same = self.known.shows(&p.id, &p.availability, &p.activity);
        if !same {
            self.apply_presence(p, PresenceOrigin::Snapshot, now);
            return;
        }
        let Some((key, sb)) = self.mapping.by_microsoft.get_key_value(p.id.as_str()) else { return };
        let (key, sb) = (key.clone(), sb.to_string());
        self.apply_note(&p.id, &sb, p.status_message.take(), p.out_of_office_settings.take());
        if let Some(seq) = p.sequence_number {
            self.known.set_sequence(&key, &seq);
        }
    }

    fn end_round(&mut self, started: u64, now: u64) {
        self.poll.round = None;
        self.poll.rounds += 1;
        self.poll.last_round_ms = Some(now);
        self.poll.next_at = started + poll_interval_ms(self.shards.uncovered());
        self.count("poll.rounds");
    }

    pub(super) fn on_poll(
        &mut self,
        settings: &Settings,
        last: String,
        outcome: Result<HttpResponse, HttpError>,
        now: u64,
        jitter: u8,
    ) {
        self.poll.inflight = false;
        // The operation is pageable in Graph's OpenAPI description: a `@odata.nextLink` is
        // followed before the round moves on.
        #[derive(serde::Deserialize)]
        struct Page {
            value: Vec<GraphPresence>,
            #[serde(rename = "@odata.nextLink")]
            next_link: Option<String>,
        }
        match outcome {
            Ok(r) if r.status == 200 => match serde_json::from_slice::<Page>(&r.body) {
                Ok(page) => {
                    self.poll.retry.succeed();
                    self.poll.problem = None;
                    self.count("poll.requests");
                    for p in page.value {
                        self.apply_polled(p, now);
                    }
                    if let Some(next) = page.next_link.filter(|n| on_origin(&settings.graph_base_url, n))
                        && let Some(token) = self.app_token.access(now).map(str::to_owned)
                    {
                        self.poll.inflight = true;
                        self.start(Pending::Poll(last), get(&next, &token));
                        return;
                    }
                    if let Some((started, _, sent)) = self.poll.round.clone() {
                        self.poll.round = Some((started, Some(last.clone()), sent + 1));
                    }
                    let more = self
                        .shards
                        .uncovered_users()
                        .range::<str, _>((std::ops::Bound::Excluded(last.as_str()), std::ops::Bound::Unbounded))
                        .next()
                        .is_some();
                    if !more && let Some((started, _, _)) = self.poll.round.clone() {
                        self.end_round(started, now);
                    }
                }
                Err(e) => self.poll_failed(
                    problem("malformed-response", format!("getPresencesByUserId: {e}")),
                    None,
                    now,
                    jitter,
                ),
            },
            Ok(r) if r.status == 403 => {
                let p = hints::from_graph_error(403, &r.body, "POST /communications/getPresencesByUserId");
                let p = Problem {
                    hint: "Polling presence needs the Application permission Presence.Read.All with admin consent: add it in the app registration and grant admin consent, or add integration users.".into(),
                    ..p
                };
                self.poll_failed(p, Some(PERMISSION_RETRY_MS), now, jitter);
            }
            other => {
                let (p, ra) = graph_failure(&other, "POST /communications/getPresencesByUserId");
                self.poll_failed(p, ra, now, jitter);
            }
        }
    }

    fn poll_failed(&mut self, p: Problem, retry_after: Option<u64>, now: u64, jitter: u8) {
        // The round's cursor did not move: the same users are read again.
        self.count("poll.failed");
        self.poll.problem = Some(p);
        self.poll.retry.fail(now, retry_after, jitter);
    }

    /// How polling stands, for the status.
    pub fn polling_status(&self) -> PollingStatus {
        let users = self.shards.uncovered();
        PollingStatus {
            users: users as u32,
            interval_ms: if users == 0 { 0 } else { poll_interval_ms(users) },
            rounds: self.poll.rounds,
            last_round_ms: self.poll.last_round_ms,
            problem: self.poll.problem.clone(),
        }
    }
}
