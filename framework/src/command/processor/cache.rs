//! Which aggregates a processor keeps in memory: the order in which a partition's
//! aggregates were last used, and the choice of which to evict, without Kafka or
//! Postgres.
//!
//! An aggregate may leave memory only when its snapshot row is confirmed at its
//! current version (the caller says which ones are); it is loaded from that row on
//! its next command. This instance is the partition's only writer, so the row is
//! its state.

use std::collections::{BTreeMap, HashMap};

/// The aggregates of one partition in the order they were last used.
#[derive(Debug, Default)]
pub(super) struct Recency {
    tick: u64,
    by_id: HashMap<String, u64>,
    by_tick: BTreeMap<u64, String>,
}

impl Recency {
    /// Notes that `id` was just used.
    pub(super) fn touch(&mut self, id: &str) {
        self.tick += 1;
        let tick = self.tick;
        match self.by_id.get_mut(id) {
            Some(old) => {
                if let Some(name) = self.by_tick.remove(old) {
                    self.by_tick.insert(tick, name);
                }
                *old = tick;
            }
            None => {
                self.by_id.insert(id.to_owned(), tick);
                self.by_tick.insert(tick, id.to_owned());
            }
        }
    }

    /// How many aggregates it orders.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Takes out up to `count` aggregates that `may_evict` allows, least recently
    /// used first, and returns them. The others keep their place.
    pub(super) fn evict(&mut self, count: usize, may_evict: impl Fn(&str) -> bool) -> Vec<String> {
        let mut chosen = Vec::new();
        for (tick, id) in &self.by_tick {
            if chosen.len() >= count {
                break;
            }
            if may_evict(id) {
                chosen.push((*tick, id.clone()));
            }
        }
        chosen
            .into_iter()
            .map(|(tick, id)| {
                self.by_tick.remove(&tick);
                self.by_id.remove(&id);
                id
            })
            .collect()
    }
}

/// Whether an aggregate may leave memory: nothing of it is waiting for a snapshot
/// (`dirty`), and the writer confirmed its row at its current version.
pub(super) fn evictable(dirty: bool, version: u64, confirmed_version: u64) -> bool {
    !dirty && confirmed_version >= version
}

/// How many aggregates one partition may hold when `limit` is shared by `owned`
/// partitions: an even share, at least one.
pub(super) fn share(limit: usize, owned: usize) -> usize {
    (limit / owned.max(1)).max(1)
}

/// How many to evict from a partition holding `held` aggregates with a share of
/// `share`: none until it is over by a sixteenth (so eviction runs in batches, not
/// on every command), then down to the share.
pub(super) fn excess(held: usize, share: usize) -> usize {
    if held > share + share / 16 {
        held - share
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn evicts_the_least_recently_used_first() {
        let mut recency = Recency::default();
        for id in ["a", "b", "c", "d"] {
            recency.touch(id);
        }
        recency.touch("a");
        assert_eq!(recency.evict(2, |_| true), ["b", "c"]);
        assert_eq!(recency.evict(5, |_| true), ["d", "a"]);
        assert_eq!(recency.len(), 0);
    }

    #[test]
    fn keeps_what_may_not_be_evicted_in_its_place() {
        let mut recency = Recency::default();
        for id in ["a", "b", "c"] {
            recency.touch(id);
        }
        assert_eq!(recency.evict(2, |id| id != "a"), ["b", "c"]);
        assert_eq!(recency.len(), 1);
        recency.touch("d");
        assert_eq!(recency.evict(1, |_| true), ["a"]);
    }

    #[test]
    fn only_confirmed_clean_aggregates_may_leave() {
        assert!(evictable(false, 7, 7));
        assert!(!evictable(true, 7, 7), "a row write is on its way");
        assert!(!evictable(false, 8, 7), "its row is older than its state");
        assert!(evictable(false, 0, 0), "never changed");
    }

    #[test]
    fn shares_and_excess() {
        assert_eq!(share(1000, 4), 250);
        assert_eq!(share(3, 4), 1);
        assert_eq!(share(10, 0), 10);
        assert_eq!(excess(250, 250), 0);
        assert_eq!(excess(265, 250), 0);
        assert_eq!(excess(266, 250), 16);
        assert_eq!(excess(2, 1), 1);
    }

    proptest! {
        /// Eviction takes exactly the allowed aggregates that were used least
        /// recently, as many as asked for (or all allowed ones), and forgets them.
        #[test]
        fn eviction_matches_a_model(
            uses in proptest::collection::vec(0..20u8, 0..80),
            pinned in proptest::collection::hash_set(0..20u8, 0..10),
            count in 0..25usize,
        ) {
            let mut recency = Recency::default();
            let mut order: Vec<u8> = Vec::new();
            for id in &uses {
                recency.touch(&id.to_string());
                order.retain(|x| x != id);
                order.push(*id);
            }
            let pinned: HashSet<String> = pinned.iter().map(u8::to_string).collect();
            let expected: Vec<String> = order
                .iter()
                .map(u8::to_string)
                .filter(|id| !pinned.contains(id))
                .take(count)
                .collect();
            let evicted = recency.evict(count, |id| !pinned.contains(id));
            prop_assert_eq!(&evicted, &expected);
            prop_assert_eq!(recency.len(), order.len() - expected.len());
            // What is left comes out in its old order.
            let rest: Vec<String> = order
                .iter()
                .map(u8::to_string)
                .filter(|id| !expected.contains(id))
                .collect();
            prop_assert_eq!(recency.evict(usize::MAX, |_| true), rest);
        }
    }
}
