//! When to count a user's inbox: after every few entries this worker adds for them, not
//! after each one.
//!
//! Counting an inbox is a consumer created, asked and deleted on the inbox's stream: done
//! after every new entry, it cost more than the rest of the notification. Now each worker
//! counts after every `step` entries it adds for a user (`step` = a fortieth of the bound,
//! at least 1) and trims once the count passes `max + slack - (step - 1)` (slack = a tenth of
//! the bound), so with one worker an inbox still never holds more than `max + slack`
//! entries, as when every entry was counted; with several workers each may add up to
//! `step - 1` more before its next count. Bounds under 80 have a step of 1: every entry is
//! counted, as before.

use std::collections::HashMap;
use std::sync::Mutex;

/// Users tallied at once; past that a new user's entries are counted every time (the
/// tally never forgets a user with entries uncounted).
const MAX_USERS: usize = 100_000;

/// Entries added per user since this worker last counted their inbox.
pub struct InboxTally {
    step: u64,
    threshold: u64,
    users: Mutex<HashMap<String, u64>>,
}

impl InboxTally {
    /// The tally for inboxes bounded at `max` entries.
    pub fn new(max: usize) -> Self {
        let max = max as u64;
        let slack = max / 10;
        let step = (max / 40).max(1);
        InboxTally {
            step,
            threshold: max + slack - (step - 1),
            users: Mutex::default(),
        }
    }

    /// Past how many entries an inbox is trimmed (down to the bound).
    pub fn threshold(&self) -> u64 {
        self.threshold
    }

    /// Records a new entry in `user`'s inbox; true when the inbox should be counted now.
    pub fn added(&self, user: &str) -> bool {
        if self.step == 1 {
            return true;
        }
        let mut users = self.users.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let full = users.len() >= MAX_USERS;
        let tallied = users.get_mut(user).map(|n| {
            *n += 1;
            *n
        });
        match tallied {
            Some(n) if n >= self.step => {
                users.remove(user);
                true
            }
            Some(_) => false,
            None if full => true,
            None => {
                users.insert(user.to_owned(), 1);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bounds_count_every_entry() {
        let t = InboxTally::new(5);
        assert_eq!(t.threshold(), 5);
        assert!((0..10).all(|_| t.added("u")));
        let t = InboxTally::new(39);
        assert_eq!(t.threshold(), 39 + 3);
        assert!(t.added("u"));
    }

    #[test]
    fn large_bounds_count_every_step_per_user_and_keep_one_worker_within_the_slack() {
        let t = InboxTally::new(1000);
        assert_eq!((t.step, t.threshold()), (25, 1076));
        let counted: Vec<usize> = (1..=100).filter(|_| t.added("a")).collect();
        assert_eq!(counted, vec![25, 50, 75, 100]);
        // Another user's tally is their own.
        assert!(!t.added("b"));
        // Uncounted entries past the last count: at most step - 1; found above the
        // threshold at a count: trimmed. So the most one worker lets an inbox reach:
        assert_eq!(t.threshold() + t.step - 1, 1000 + 100);
    }
}
