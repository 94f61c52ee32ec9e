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
                        for p in page.value {
                            // A change no notification brought (our own call state
                            // aside): a notification was lost, or the subscription.
                            let differs = self.subs[slot].reconciling
                                && !self.own_session(&p.id)
                                && self.presence.get(&p.id).is_some_and(|known| {
                                    known.availability != p.availability || known.activity != p.activity
                                });
                            if self.apply_presence(p, PresenceOrigin::Snapshot, now) && differs {
                                self.subs[slot].missed_change = true;
                                self.count("reconcile.corrected");
                            }
                        }
                        let graph = &settings.graph_base_url;
                        if !self.follow_next_link(slot, page.next_link, Pending::Presences(slot), graph, now) {
                            let sub = &mut self.subs[slot];
                            if std::mem::take(&mut sub.reading_rejoined) {
                                // Only the users who came back were read: nothing else changes.
                                sub.rejoined.clear();
                                sub.retry.succeed();
                                return;
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
                        }
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
}
