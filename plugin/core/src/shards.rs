//! Assignment of mapped Microsoft users to integration users' subscriptions.
//!
//! Graph allows one presence subscription per app per delegated user, for at most 650 user
//! ids (graph-facts.md §1.1), so each integration user holds one shard of at most 650 users.
//! The assignment is stable: users keep their shard across refreshes, a new user fills the
//! first shard with room, and only shards whose members changed need a new subscription.

use std::collections::{BTreeMap, BTreeSet};

/// Graph's limit of user ids in one presence subscription.
pub const MAX_USERS_PER_SUBSCRIPTION: usize = 650;

/// Shards of users, one per integration user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shards {
    members: Vec<BTreeSet<String>>,
    uncovered: BTreeSet<String>,
    capacity: usize,
}

impl Shards {
    /// Empty shards for `slots` integration users of `capacity` users each.
    pub fn new(slots: usize, capacity: usize) -> Self {
        Shards { members: vec![BTreeSet::new(); slots], uncovered: BTreeSet::new(), capacity }
    }

    /// Shards restored from persisted members (extra members beyond capacity become uncovered
    /// at the next [`Shards::apply`]).
    pub fn restore(slots: usize, capacity: usize, members: Vec<BTreeSet<String>>) -> Self {
        let mut s = Shards::new(slots, capacity);
        for (i, m) in members.into_iter().enumerate().take(slots) {
            s.members[i] = m;
        }
        s
    }

    /// Applies the current set of mapped users. Returns, per slot, whether its members changed.
    pub fn apply(&mut self, mapped: &BTreeSet<String>) -> Vec<bool> {
        let before = self.members.clone();
        let mut placed: BTreeMap<String, usize> = BTreeMap::new();
        for (i, m) in self.members.iter_mut().enumerate() {
            m.retain(|u| mapped.contains(u));
            // A shard restored over capacity keeps its first `capacity` users.
            while m.len() > self.capacity {
                let last = m.iter().next_back().cloned().unwrap();
                m.remove(&last);
            }
            for u in m.iter() {
                placed.insert(u.clone(), i);
            }
        }
        self.uncovered.clear();
        let mut slot = 0;
        for u in mapped.iter().filter(|u| !placed.contains_key(*u)) {
            while slot < self.members.len() && self.members[slot].len() >= self.capacity {
                slot += 1;
            }
            match self.members.get_mut(slot) {
                Some(m) => {
                    m.insert(u.clone());
                }
                None => {
                    self.uncovered.insert(u.clone());
                }
            }
        }
        self.members.iter().zip(before.iter()).map(|(a, b)| a != b).collect()
    }

    /// Members of slot `i`.
    pub fn members(&self, i: usize) -> &BTreeSet<String> {
        &self.members[i]
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.members.len()
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

    fn users(range: std::ops::Range<usize>) -> BTreeSet<String> {
        range.map(|i| format!("u{i:05}")).collect()
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
}
