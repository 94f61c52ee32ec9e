//! Assignment of mapped Microsoft users to integration users' subscriptions.
//!
//! Graph allows one presence subscription per app per delegated user, for at most 650 user
//! ids (<https://learn.microsoft.com/en-us/graph/changenotifications-for-presence>), so each integration user holds one shard of at most 650 users.
//! The assignment is stable: users keep their shard across refreshes, and only shards whose
//! members changed need a new subscription. New users go to the shard with the most room,
//! which is filled before the next: a round of joiners touches as few subscriptions as it can
//! (a shard that only lost users keeps its subscription until its renewal; one that gains
//! users has its subscription replaced, a short gap for its other users).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::Bound;

use crate::mapping::Id;

/// Graph's limit of user ids in one presence subscription.
pub const MAX_USERS_PER_SUBSCRIPTION: usize = 650;

/// A [`Shards::apply`] in progress.
#[derive(Debug)]
pub struct ShardsApply {
    phase: ApplyPhase,
    /// Users already in a shard.
    pub placed: HashSet<Id>,
    changed: Vec<bool>,
    /// The slots by room, most first (set when placing starts).
    order: Vec<usize>,
    /// The first position in `order` that may have room.
    room: usize,
}

#[derive(Debug)]
enum ApplyPhase {
    /// Dropping users no longer mapped, from this slot on.
    Retain(usize),
    /// Placing mapped users not yet in a shard, after this one.
    Place(Option<Id>),
}

/// Shards of users, one per integration user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shards {
    members: Vec<BTreeSet<Id>>,
    uncovered: BTreeSet<Id>,
    capacity: usize,
}

impl Shards {
    /// Empty shards for `slots` integration users of `capacity` users each.
    pub fn new(slots: usize, capacity: usize) -> Self {
        Shards { members: vec![BTreeSet::new(); slots], uncovered: BTreeSet::new(), capacity }
    }

    /// Shards restored from persisted members (extra members beyond capacity become uncovered
    /// at the next [`Shards::apply`]).
    pub fn restore(slots: usize, capacity: usize, members: Vec<BTreeSet<Id>>) -> Self {
        let mut s = Shards::new(slots, capacity);
        for (i, m) in members.into_iter().enumerate().take(slots) {
            s.members[i] = m;
        }
        s
    }

    /// Applies the current set of mapped users. Returns, per slot, whether its members changed.
    pub fn apply(&mut self, mapped: &BTreeSet<Id>) -> Vec<bool> {
        let mapped: BTreeMap<Id, ()> = mapped.iter().map(|u| (u.clone(), ())).collect();
        let mut job = self.start_apply();
        loop {
            if let Some(changed) = self.apply_step(&mut job, &mapped, usize::MAX) {
                return changed;
            }
        }
    }

    /// [`Shards::apply`] as a job of bounded steps (see [`Shards::apply_step`]).
    pub fn start_apply(&self) -> ShardsApply {
        ShardsApply {
            phase: ApplyPhase::Retain(0),
            placed: HashSet::new(),
            changed: vec![false; self.members.len()],
            order: Vec::new(),
            room: 0,
        }
    }

    /// Does up to about `budget` users' worth of the job for the mapped users (the keys of
    /// `mapped`, which must not change between steps); returns, when done, per slot whether
    /// its members changed. Meanwhile the members are partly updated: act on them only once
    /// the job is done.
    pub fn apply_step<V>(
        &mut self,
        job: &mut ShardsApply,
        mapped: &BTreeMap<Id, V>,
        budget: usize,
    ) -> Option<Vec<bool>> {
        let mut left = budget.max(1);
        loop {
            match &mut job.phase {
                ApplyPhase::Retain(slot) => {
                    while *slot < self.members.len() && left > 0 {
                        let m = &mut self.members[*slot];
                        let before = m.len();
                        // Kept as the mapping's own strings (restored members were copies).
                        *m = std::mem::take(m)
                            .into_iter()
                            .filter_map(|u| mapped.get_key_value(&u).map(|(k, _)| k.clone()))
                            .collect();
                        // A shard restored over capacity keeps its first `capacity` users.
                        while m.len() > self.capacity {
                            m.pop_last();
                        }
                        job.changed[*slot] = m.len() != before;
                        job.placed.extend(m.iter().cloned());
                        left = left.saturating_sub(before.max(1));
                        *slot += 1;
                    }
                    if *slot < self.members.len() {
                        return None;
                    }
                    self.uncovered.clear();
                    // Most room first; equal room in slot order (a fresh start fills 0, 1, ...).
                    job.order = (0..self.members.len()).collect();
                    job.order.sort_by_key(|&i| std::cmp::Reverse(self.capacity.saturating_sub(self.members[i].len())));
                    job.phase = ApplyPhase::Place(None);
                }
                ApplyPhase::Place(_) if left == 0 => return None,
                ApplyPhase::Place(after) => {
                    let from = match after.take() {
                        Some(k) => mapped.range::<Id, _>((Bound::Excluded(k), Bound::Unbounded)),
                        None => mapped.range::<Id, _>(..),
                    };
                    let mut last = None;
                    for (u, _) in from.take(left) {
                        left -= 1;
                        last = Some(u);
                        if job.placed.contains(u) {
                            continue;
                        }
                        while job.room < job.order.len() && self.members[job.order[job.room]].len() >= self.capacity {
                            job.room += 1;
                        }
                        match job.order.get(job.room).map(|&slot| (slot, &mut self.members[slot])) {
                            Some((slot, m)) => {
                                m.insert(u.clone());
                                job.changed[slot] = true;
                            }
                            None => {
                                self.uncovered.insert(u.clone());
                            }
                        }
                    }
                    match last {
                        Some(k) if left == 0 => {
                            job.phase = ApplyPhase::Place(Some(k.clone()));
                            return None;
                        }
                        _ => return Some(std::mem::take(&mut job.changed)),
                    }
                }
            }
        }
    }

    /// Members of slot `i`.
    pub fn members(&self, i: usize) -> &BTreeSet<Id> {
        &self.members[i]
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.members.len()
    }

    /// The users no shard covers, in id order (they are polled).
    pub fn uncovered_users(&self) -> &BTreeSet<Id> {
        &self.uncovered
    }

    /// Users no shard covers.
    pub fn uncovered(&self) -> usize {
        self.uncovered.len()
    }

    /// Integration users to add to cover everyone.
    pub fn integration_users_needed(&self) -> usize {
        self.uncovered.len().div_ceil(self.capacity.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(range: std::ops::Range<usize>) -> BTreeSet<Id> {
        range.map(|i| Id::from(format!("u{i:05}"))).collect()
    }

    #[test]
    fn splits_1353_into_650_650_53() {
        let mut s = Shards::new(3, 650);
        s.apply(&users(0..1353));
        let sizes: Vec<_> = (0..3).map(|i| s.members(i).len()).collect();
        assert_eq!(sizes, vec![650, 650, 53]);
        assert_eq!(s.uncovered(), 0);
    }

    #[test]
    fn reports_uncovered_and_integration_users_needed() {
        let mut s = Shards::new(3, 650);
        s.apply(&users(0..2000));
        assert_eq!(s.uncovered(), 50);
        assert_eq!(s.integration_users_needed(), 1);
        let mut s = Shards::new(1, 650);
        s.apply(&users(0..2000));
        assert_eq!(s.integration_users_needed(), 3);
    }

    #[test]
    fn one_new_user_does_not_reshuffle() {
        let mut s = Shards::new(3, 650);
        s.apply(&users(0..1353));
        let before: Vec<_> = (0..3).map(|i| s.members(i).clone()).collect();
        let mut more = users(0..1353);
        more.insert("a-new-user-sorting-first".into());
        let changed = s.apply(&more);
        assert_eq!(changed, vec![false, false, true]);
        assert_eq!(s.members(0), &before[0]);
        assert_eq!(s.members(1), &before[1]);
        assert!(s.members(2).contains("a-new-user-sorting-first"));
    }

    #[test]
    fn removed_user_frees_room_only_in_its_shard() {
        let mut s = Shards::new(2, 650);
        s.apply(&users(0..700));
        let mut fewer = users(0..700);
        fewer.remove("u00003");
        let changed = s.apply(&fewer);
        assert_eq!(changed, vec![true, false]);
    }

    #[test]
    fn joiners_go_where_there_is_most_room_so_few_subscriptions_change() {
        // 4 shards: 650, 650, 650, 300. Users leave from every shard; 40 join.
        let mut s = Shards::new(4, 650);
        s.apply(&users(0..2250));
        let mut next = users(0..2250);
        for i in [3, 700, 1400, 2000] {
            next.remove(format!("u{i:05}").as_str());
        }
        next.extend(users(5000..5040));
        let changed = s.apply(&next);
        // Shards 0-2 only lost a user (their subscriptions wait for their renewal); the
        // joiners all went to shard 3, which had the most room.
        assert_eq!(changed, vec![true, true, true, true]);
        assert_eq!(s.members(3).len(), 300 - 1 + 40);
        assert!(users(5000..5040).iter().all(|u| s.members(3).contains(u)));
        assert_eq!((0..3).map(|i| s.members(i).len()).collect::<Vec<_>>(), vec![649, 649, 649]);
    }

    #[test]
    fn apply_in_steps_of_any_size_equals_apply_in_one_go() {
        let mut whole = Shards::new(3, 650);
        whole.apply(&users(0..1000));
        let mut next = users(300..1700);
        next.insert("a-newcomer".into());
        let mut stepped = whole.clone();
        let expected = whole.apply(&next);
        let mapped: BTreeMap<Id, ()> = next.iter().map(|u| (u.clone(), ())).collect();
        for budget in [1, 7, 650, 5000] {
            let mut s = stepped.clone();
            let mut job = s.start_apply();
            let mut steps = 0;
            let changed = loop {
                steps += 1;
                if let Some(c) = s.apply_step(&mut job, &mapped, budget) {
                    break c;
                }
            };
            assert_eq!((changed, &s), (expected.clone(), &whole), "budget {budget}");
            assert!(budget > 1000 || steps > 1, "budget {budget}: {steps} steps");
        }
        stepped.apply(&next);
        assert_eq!(stepped, whole);
    }
}
