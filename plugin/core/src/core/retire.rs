//! Retiring an integration the operator deletes: its switchboard users are withdrawn, the
//! presence sessions it set in Teams are cleared and its subscriptions deleted at Microsoft,
//! through the same machinery as a switchboard that lost every user (a shard left empty has
//! its subscription deleted; a call of a user no longer mapped has its session cleared).

use super::*;

/// What is still left of a retirement (WIT `admin.retire-progress`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetireProgress {
    /// Subscriptions still held at Microsoft.
    pub subscriptions: u32,
    /// App presence sessions still set in Teams.
    pub sessions: u32,
    /// Switchboard users withdrawn by this retirement.
    pub users_withdrawn: u32,
    /// What stands in the way of the rest, as `code: hint`.
    pub problem: Option<String>,
}

impl RetireProgress {
    /// Nothing is left at Microsoft.
    pub fn done(&self) -> bool {
        self.subscriptions == 0 && self.sessions == 0
    }
}

impl Core {
    /// Starts retiring (idempotent) and answers what is left. See the module docs.
    pub fn retire(&mut self, env: &mut dyn Env) -> RetireProgress {
        if !self.retiring {
            self.retiring = true;
            self.log(Level::Info, "retiring: withdrawing users, clearing sessions, deleting subscriptions", vec![]);
            // A read or a match in progress would bring users back.
            self.loading_switchboard = None;
            if let Some(b) = self.building.take() {
                b.discard(&mut self.trash);
            }
            if let Some(job) = self.sharding.take() {
                self.trash.placed(job.placed);
            }
            for sb in self.mapping.by_switchboard.keys() {
                self.effects.push(Effect::Withdraw(sb.to_string()));
            }
            self.retire_withdrawn = self.mapping.by_switchboard.len() as u32;
            self.count_n("presence.withdrawn", self.retire_withdrawn as usize);
            let old = std::mem::take(&mut self.mapping);
            // Ends every call (its session is cleared at the next drive) and forgets presence.
            self.follow_remapped(Remap::between(&old, &self.mapping), env.now_ms());
            self.trash.mapping(old);
            self.shards = Shards::new(self.subs.len(), MAX_USERS_PER_SUBSCRIPTION);
            for sub in &mut self.subs {
                // Empty and shrunk: `drive_slot` deletes the subscription at once.
                sub.shrunk = true;
                sub.members_dirty = false;
                sub.needs_snapshot = false;
                sub.reconciling = false;
                sub.rejoined.clear();
            }
            self.drive(env);
        }
        self.retire_progress(env.now_ms())
    }

    /// Whether [`Core::retire`] was called.
    pub fn retiring(&self) -> bool {
        self.retiring
    }

    fn retire_progress(&self, now: u64) -> RetireProgress {
        let sessions = self.push.calls.values().filter(|c| c.pushed_until.is_some_and(|u| u > now)).count() as u32;
        let subscriptions = self.subs.iter().filter(|s| s.active.is_some()).count() as u32;
        let problem = self
            .app_token
            .problem()
            .filter(|_| sessions > 0)
            .or_else(|| self.push.problem.as_ref().filter(|_| sessions > 0))
            .or_else(|| {
                self.subs
                    .iter()
                    .zip(&self.user_tokens)
                    .filter(|(s, _)| s.active.is_some())
                    .find_map(|(s, t)| t.problem().or(s.problem.as_ref()))
            })
            .map(|p| format!("{}: {}", p.code, p.hint));
        RetireProgress { subscriptions, sessions, users_withdrawn: self.retire_withdrawn, problem }
    }
}
