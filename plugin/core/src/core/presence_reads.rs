//! Presence reads (`getPresencesByUserId`, 650 ids at most per request): the snapshot after a
//! subscription is created, and the periodic re-read that repairs lost notifications (Graph
//! sends no `missed` event for presence). A change a re-read finds that no notification brought
//! is the one symptom of a subscription deleted at Microsoft: it makes the subscription be
//! checked.

use super::*;

impl Core {
    /// A presence read answered.
    pub(super) fn on_presences(
        &mut self,
        settings: &Settings,
        slot: usize,
        outcome: Result<HttpResponse, HttpError>,
        now: u64,
        jitter: u8,
    ) {
        self.subs[slot].busy = false;
        match outcome {
            Ok(r) if r.status == 200 => {
                // The operation is pageable in Graph's OpenAPI description: follow
                // `@odata.nextLink` when the service sends one.
                #[derive(serde::Deserialize)]
                struct Page {
                    value: Vec<GraphPresence>,
                    #[serde(rename = "@odata.nextLink")]
                    next_link: Option<String>,
                }
                match serde_json::from_slice::<Page>(&r.body) {
                    Ok(page) => {
                        // Applied PRESENCE_STEP users per call: the slot stays busy until the
                        // page is done and its nextLink followed.
                        self.subs[slot].busy = true;
                        self.subs[slot].page =
                            Some(PresencePage { items: page.value.into(), next_link: page.next_link });
                        self.presence_page_step(&settings.graph_base_url, slot, now, PRESENCE_STEP);
                    }
                    Err(e) => self.sub_failed(
                        slot,
                        problem("malformed-response", format!("getPresencesByUserId: {e}")),
                        now,
                        None,
                        jitter,
                    ),
                }
            }
            other => {
                let (p, ra) = graph_failure(&other, "POST /communications/getPresencesByUserId");
                self.sub_failed(slot, p, now, ra, jitter);
            }
        }
    }

    /// The next step of the presence pages being applied (a tick): [`PRESENCE_STEP`] users
    /// in all, the pages in the order of their slots.
    pub(super) fn advance_presence_pages(&mut self, now: u64) {
        let Some(graph) = self.settings.as_ref().map(|s| s.graph_base_url.clone()) else { return };
        let mut budget = PRESENCE_STEP;
        for slot in 0..self.subs.len() {
            if budget == 0 {
                break;
            }
            if self.subs[slot].page.is_some() {
                budget -= self.presence_page_step(&graph, slot, now, budget);
            }
        }
        if self.subs.iter().any(|s| s.page.is_some()) {
            self.effects.push(Effect::RequestTick);
        }
    }

    /// Applies at most `budget` presences of `slot`'s page (returns how many); asks for a tick
    /// while some remain, and ends the read (or follows its nextLink) after the last.
    fn presence_page_step(&mut self, graph: &str, slot: usize, now: u64, budget: usize) -> usize {
        let Some(mut page) = self.subs[slot].page.take() else { return 0 };
        let take = page.items.len().min(budget);
        for p in page.items.drain(..take) {
            // A change no notification brought (our own call state aside): a notification
            // was lost, or the subscription.
            let differs = self.subs[slot].reconciling
                && !self.own_session(&p.id)
                && self.known.has_presence(&p.id)
                && !self.known.shows(&p.id, &p.availability, &p.activity);
            if self.apply_presence(p, PresenceOrigin::Snapshot, now) && differs {
                self.subs[slot].missed_change = true;
                self.count("reconcile.corrected");
            }
        }
        if !page.items.is_empty() {
            self.subs[slot].page = Some(page);
            self.effects.push(Effect::RequestTick);
            return take;
        }
        self.subs[slot].busy = false;
        if self.follow_next_link(slot, page.next_link, Pending::Presences(slot), graph, now) {
            return take;
        }
        let sub = &mut self.subs[slot];
        if std::mem::take(&mut sub.reading_rejoined) {
            // Only the users who came back were read: nothing else changes.
            sub.rejoined.clear();
            sub.retry.succeed();
            return take;
        }
        sub.rejoined.clear();
        sub.needs_snapshot = false;
        sub.last_snapshot_ms = Some(now);
        sub.retry.succeed();
        // A failed earlier attempt's problem is over.
        sub.problem = None;
        sub.verify_due |= sub.reconciling && sub.missed_change;
        sub.reconciling = false;
        sub.missed_change = false;
        take
    }

    /// A notification for `microsoft_id` came: a presence read's answer still being applied
    /// must not show an older state of that user after it.
    pub(super) fn drop_pending_presence(&mut self, microsoft_id: &str) {
        for sub in &mut self.subs {
            if let Some(page) = &mut sub.page {
                page.items.retain(|p| p.id != microsoft_id);
            }
        }
    }
}
