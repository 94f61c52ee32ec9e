//! Subscription answers: creation (and, when Graph refuses a second subscription for the
//! same user, finding and removing ours), renewal, the check that a subscription still exists,
//! deletion. Graph allows one presence subscription per app and delegated user, for at most
//! 650 users and 60 minutes
//! (<https://learn.microsoft.com/en-us/graph/changenotifications-for-presence>).

use super::*;

impl Core {
    /// `POST /subscriptions` answered.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_created(
        &mut self,
        settings: &Settings,
        slot: usize,
        client_state: String,
        members: BTreeSet<Id>,
        outcome: Result<HttpResponse, HttpError>,
        now: u64,
        jitter: u8,
    ) {
        self.subs[slot].busy = false;
        match outcome {
            Ok(r) if r.status == 201 => {
                let parsed: Option<(String, u64)> =
                    serde_json::from_slice::<serde_json::Value>(&r.body).ok().and_then(|v| {
                        let id = v.get("id")?.as_str()?.to_string();
                        let exp = parse_rfc3339(v.get("expirationDateTime")?.as_str()?)?;
                        Some((id, exp))
                    });
                let Some((id, expires_at_ms)) = parsed else {
                    self.sub_failed(
                        slot,
                        problem(
                            "malformed-response",
                            "POST /subscriptions answered 201 without id or expirationDateTime",
                        ),
                        now,
                        None,
                        jitter,
                    );
                    return;
                };
                self.log(
                    Level::Info,
                    "subscription created",
                    vec![("subscription".into(), id.clone()), ("users".into(), members.len().to_string())],
                );
                let sub = &mut self.subs[slot];
                sub.active = Some(ActiveSub {
                    id,
                    client_state,
                    expires_at_ms,
                    members,
                    notification_url: Some(settings.notification_url.clone()),
                });
                sub.needs_snapshot = true;
                sub.problem = None;
                sub.cleanup_tried = false;
                sub.retry.succeed();
                self.persist_sub(slot);
            }
            Ok(r) if (r.status == 403 || r.status == 409) && !self.subs[slot].cleanup_tried => {
                // One presence subscription per app per user: one left over from an
                // earlier run (state lost) blocks us. List ours and remove them.
                self.subs[slot].cleanup_tried = true;
                if let Some(access) = self.user_tokens[slot].access(now).map(str::to_owned) {
                    self.subs[slot].busy = true;
                    let req = get(&format!("{}/v1.0/subscriptions", settings.graph_base_url), &access);
                    self.start(Pending::ListSubs(slot), req);
                }
            }
            other => {
                // Counted: a creation that failed (Graph's validation request did not get
                // through, say) is retried, and each POST must be accounted for.
                self.count("subscriptions.create-failed");
                let (p, ra) = graph_failure(&other, "POST /subscriptions");
                self.sub_failed(slot, p, now, ra, jitter);
            }
        }
    }

    /// `GET /subscriptions` answered after a creation was refused: remove ours.
    pub(super) fn on_listed(
        &mut self,
        settings: &Settings,
        slot: usize,
        outcome: Result<HttpResponse, HttpError>,
        now: u64,
        jitter: u8,
    ) {
        self.subs[slot].busy = false;
        let ours: Vec<String> = match &outcome {
            Ok(r) if r.status == 200 => serde_json::from_slice::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v.get("value").and_then(|v| v.as_array()).cloned())
                .unwrap_or_default()
                .iter()
                .filter(|s| s.get("notificationUrl").and_then(|u| u.as_str()) == Some(&settings.notification_url))
                .filter_map(|s| s.get("id").and_then(|i| i.as_str()).map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        if ours.is_empty() {
            let p = problem(
                "subscription-quota",
                "POST /subscriptions refused and no subscription of ours was found to replace",
            );
            self.sub_failed(slot, p, now, None, jitter);
        } else if let Some(access) = self.user_tokens[slot].access(now).map(str::to_owned) {
            self.subs[slot].busy = true;
            self.subs[slot].cleanup_outstanding = ours.len();
            for id in ours {
                let req =
                    request("DELETE", &format!("{}/v1.0/subscriptions/{id}", settings.graph_base_url), &access, None);
                self.start(Pending::CleanupDelete(slot), req);
            }
        }
    }

    /// One `DELETE` of a leftover answered.
    pub(super) fn on_cleanup_deleted(&mut self, slot: usize) {
        let sub = &mut self.subs[slot];
        sub.cleanup_outstanding = sub.cleanup_outstanding.saturating_sub(1);
        if sub.cleanup_outstanding == 0 {
            sub.busy = false;
        }
    }

    /// `PATCH /subscriptions/{id}` (renewal or reauthorization) answered.
    pub(super) fn on_renewed(&mut self, slot: usize, outcome: Result<HttpResponse, HttpError>, now: u64, jitter: u8) {
        self.subs[slot].busy = false;
        match outcome {
            Ok(r) if r.status == 200 => {
                let exp = serde_json::from_slice::<serde_json::Value>(&r.body)
                    .ok()
                    .and_then(|v| parse_rfc3339(v.get("expirationDateTime")?.as_str()?));
                let sub = &mut self.subs[slot];
                if let (Some(a), Some(exp)) = (sub.active.as_mut(), exp) {
                    a.expires_at_ms = exp;
                }
                sub.reauthorize = false;
                sub.problem = None;
                sub.retry.succeed();
                self.persist_sub(slot);
            }
            Ok(r) if r.status == 404 => {
                // Gone (expired or deleted): create a new one, never retry the PATCH.
                self.log(Level::Warn, "subscription gone; recreating", vec![]);
                let sub = &mut self.subs[slot];
                sub.active = None;
                sub.reauthorize = false;
                self.persist_sub(slot);
            }
            other => {
                let (p, ra) = graph_failure(&other, "PATCH /subscriptions");
                self.sub_failed(slot, p, now, ra, jitter);
            }
        }
    }

    /// `GET /subscriptions` answered when checking that ours still exists.
    pub(super) fn on_verified(
        &mut self,
        settings: &Settings,
        slot: usize,
        outcome: Result<HttpResponse, HttpError>,
        now: u64,
        jitter: u8,
    ) {
        self.subs[slot].busy = false;
        #[derive(serde::Deserialize)]
        struct Listed {
            id: String,
        }
        #[derive(serde::Deserialize)]
        struct Page {
            value: Vec<Listed>,
            #[serde(rename = "@odata.nextLink")]
            next_link: Option<String>,
        }
        let ours = self.subs[slot].active.as_ref().map(|a| a.id.clone());
        match outcome {
            Ok(r) if r.status == 200 => match serde_json::from_slice::<Page>(&r.body) {
                Ok(page) if ours.as_ref().is_some_and(|id| page.value.iter().any(|s| &s.id == id)) => {
                    let sub = &mut self.subs[slot];
                    sub.verify_due = false;
                    sub.problem = None;
                    sub.retry.succeed();
                }
                Ok(page) => {
                    let graph = &settings.graph_base_url;
                    if !self.follow_next_link(slot, page.next_link, Pending::VerifySub(slot), graph, now) {
                        self.log(Level::Warn, "subscription was deleted at Microsoft; recreating", vec![]);
                        self.count("subscriptions.lost");
                        let sub = &mut self.subs[slot];
                        sub.verify_due = false;
                        sub.active = None;
                        self.persist_sub(slot);
                    }
                }
                Err(e) => {
                    // Not known either way; the renewal's PATCH answers 404 if it is gone.
                    self.subs[slot].verify_due = false;
                    self.count("subscriptions.verify-failed");
                    self.log(
                        Level::Warn,
                        "GET /subscriptions answered 200 without a subscription list; not checked",
                        vec![("error".into(), e.to_string())],
                    );
                }
            },
            Ok(r) if r.status != 429 && r.status < 500 => {
                // Refused (4xx): not known either way, and asking again will not help;
                // the renewal's PATCH answers 404 if the subscription is gone.
                self.subs[slot].verify_due = false;
                self.count("subscriptions.verify-failed");
                self.log(
                    Level::Warn,
                    "GET /subscriptions refused; the subscription is not checked",
                    vec![("status".into(), r.status.to_string())],
                );
            }
            other => {
                // Throttled, unavailable or unreachable: check again after the backoff.
                let (p, ra) = graph_failure(&other, "GET /subscriptions");
                self.sub_failed(slot, p, now, ra, jitter);
            }
        }
    }

    /// `DELETE /subscriptions/{id}` of ours answered.
    /// `DELETE /subscriptions/{id}` answered. Only a 2xx or a 404 (gone) frees the integration
    /// user for a new subscription: Graph allows one presence subscription per app and user,
    /// so a failed DELETE is retried (after its `Retry-After`, else with backoff) before
    /// anything is created, and the status shows the subscription as stuck meanwhile.
    pub(super) fn on_deleted(&mut self, slot: usize, outcome: Result<HttpResponse, HttpError>, now: u64, jitter: u8) {
        self.subs[slot].busy = false;
        match outcome {
            Ok(r) if (200..300).contains(&r.status) || r.status == 404 => {
                let sub = &mut self.subs[slot];
                sub.active = None;
                sub.stale_url = false;
                sub.problem = None;
                sub.retry.succeed();
                self.persist_sub(slot);
            }
            other => {
                self.count("subscriptions.delete-failed");
                let (p, ra) = graph_failure(&other, "DELETE /subscriptions");
                let p = problem("subscription-stuck", format!("{} ({}: {})", p.detail, p.code, p.hint));
                self.sub_failed(slot, p, now, ra, jitter);
            }
        }
    }

    pub(super) fn sub_failed(&mut self, slot: usize, p: Problem, now: u64, retry_after: Option<u64>, jitter: u8) {
        self.log(
            Level::Warn,
            "subscription request failed",
            vec![("code".into(), p.code.clone()), ("detail".into(), p.detail.clone())],
        );
        let sub = &mut self.subs[slot];
        sub.problem = Some(p);
        sub.retry.fail(now, retry_after, jitter);
    }

    /// Stores one integration user's subscription (schema 2: one small key per slot, so a
    /// renewal never rewrites the other slots' member lists).
    pub(super) fn persist_sub(&mut self, slot: usize) {
        let s = self.settings.as_ref().unwrap();
        let value = self.subs[slot].active.clone().map(|active| {
            serde_json::to_vec(&PersistedSub {
                tenant_id: s.tenant_id.clone(),
                client_id: s.client_id.clone(),
                username: s.integration_users[slot].username.clone(),
                active,
            })
            .unwrap()
        });
        self.effects.push(Effect::Store { key: sub_key(slot), value });
    }
}
