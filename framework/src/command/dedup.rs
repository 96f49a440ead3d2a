//! The dedup window of one partition: the command ids decided in the last
//! `dedup_window`, each with what is needed to answer a resend with the original
//! outcome.
//!
//! Entries are compact. An entry decided by this instance keeps its reply bytes
//! (they are at hand, and resends come soon after the original). An entry restored
//! from the outcomes topic keeps only the offset of its outcome record, which is
//! read again if the command is resent: a restore reads the outcomes of the whole
//! window, so keeping their bytes would make memory grow with the window's command
//! volume times the events' size.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

/// How to answer a resent command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The serialized reply.
    Reply(Arc<Vec<u8>>),
    /// The offset of the outcome record in the partition's outcomes topic.
    Outcome(i64),
}

/// Seen command ids of one partition, with expiry in decision order.
#[derive(Debug, Default)]
pub(crate) struct SeenWindow {
    entries: HashMap<Arc<str>, Seen>,
    order: VecDeque<(SystemTime, Arc<str>)>,
}

impl SeenWindow {
    /// Remembers `id`, decided at `time`. Ids must arrive in decision order (the
    /// order of the outcomes), so that expiry can pop from the front.
    pub(crate) fn insert(&mut self, id: &str, time: SystemTime, seen: Seen) {
        let id: Arc<str> = Arc::from(id);
        if self.entries.insert(Arc::clone(&id), seen).is_none() {
            self.order.push_back((time, id));
        }
    }

    /// How to answer a resend of `id`, if it was decided within the window.
    pub(crate) fn get(&self, id: &str) -> Option<&Seen> {
        self.entries.get(id)
    }

    /// Forgets the ids decided before `horizon`.
    pub(crate) fn expire(&mut self, horizon: SystemTime) {
        while self.order.front().is_some_and(|(t, _)| *t < horizon) {
            if let Some((_, id)) = self.order.pop_front() {
                self.entries.remove(&id);
            }
        }
    }

    /// Number of remembered ids.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn remembers_and_expires_in_order() {
        let mut window = SeenWindow::default();
        window.insert("a", at(10), Seen::Outcome(1));
        window.insert("b", at(20), Seen::Reply(Arc::new(b"r".to_vec())));
        window.insert("c", at(30), Seen::Outcome(3));
        assert_eq!(window.get("a"), Some(&Seen::Outcome(1)));
        assert_eq!(window.len(), 3);
        window.expire(at(20));
        assert_eq!(window.get("a"), None);
        assert_eq!(window.get("b"), Some(&Seen::Reply(Arc::new(b"r".to_vec()))));
        window.expire(at(31));
        assert_eq!(window.len(), 0);
    }

    #[test]
    fn a_second_insert_of_an_id_keeps_one_expiry_entry() {
        let mut window = SeenWindow::default();
        window.insert("a", at(10), Seen::Outcome(1));
        window.insert("a", at(11), Seen::Reply(Arc::new(Vec::new())));
        assert_eq!(window.order.len(), 1);
        assert_eq!(window.get("a"), Some(&Seen::Reply(Arc::new(Vec::new()))));
        window.expire(at(12));
        assert_eq!(window.get("a"), None);
    }

    proptest! {
        /// Against a model (first decision time and latest answer per id): after
        /// inserts in decision order and an expiry, an id is found exactly when it
        /// was first decided at or after the horizon, with its latest answer.
        #[test]
        fn lookup_and_expiry_follow_the_first_decision_time(
            inserts in proptest::collection::vec((0..8u8, 0..5u64, 0..100i64), 0..40),
            horizon in 0..60u64,
        ) {
            let mut window = SeenWindow::default();
            let mut model: HashMap<String, (u64, Seen)> = HashMap::new();
            let mut time = 0;
            for (id, gap, offset) in inserts {
                time += gap;
                let id = format!("cmd-{id}");
                window.insert(&id, at(time), Seen::Outcome(offset));
                let first = model.get(&id).map_or(time, |(t, _)| *t);
                model.insert(id, (first, Seen::Outcome(offset)));
            }
            for (id, (_, seen)) in &model {
                prop_assert_eq!(window.get(id), Some(seen));
            }
            prop_assert_eq!(window.len(), model.len());
            window.expire(at(horizon));
            for (id, (first, seen)) in &model {
                let kept = *first >= horizon;
                prop_assert_eq!(window.get(id), kept.then_some(seen), "{} first at {}", id, first);
            }
            prop_assert_eq!(window.len(), model.values().filter(|(t, _)| *t >= horizon).count());
        }
    }
}
