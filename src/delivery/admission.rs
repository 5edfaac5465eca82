//! How much of each subscription's work this process holds in memory.
//!
//! Every subscription has a budget of local deliveries (queued or in
//! flight). The ingest writer leases a new delivery to this process only
//! while its subscription is under budget; the rest is inserted unleased
//! and stays in the outbox until the subscription has room again, when the
//! worker claims it. So no subscription can fill a buffer another one
//! needs: a slow endpoint's backlog waits in the database, not in memory
//! and not in front of anyone else.
//!
//! A budget follows what the subscription gets through: about
//! [`HORIZON_SECONDS`] of its recent completions, never below two rounds
//! of its in-flight cap and never above [`LANE_LIMIT`]. A fast endpoint
//! keeps thousands handed off without a claim; one that answers every
//! ten seconds keeps a few.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::domain::SubscriptionId;

/// Most deliveries of one subscription held in memory (about 1 KB each).
pub const LANE_LIMIT: usize = 8_192;
/// A subscription's budget before anything is known of its endpoint: small,
/// since the endpoint may be slow; a fast one grows it within seconds.
pub const INITIAL_BUDGET: usize = 64;
/// Seconds of a subscription's recent throughput kept in memory.
pub const HORIZON_SECONDS: f64 = 2.0;

#[derive(Debug)]
struct Load {
    /// Deliveries leased to this process and not yet finished or released.
    local: usize,
    budget: usize,
    /// Work was left in the outbox because the budget was spent: claim
    /// once the subscription is down to half of it.
    refused: bool,
}

impl Load {
    fn new() -> Self {
        Load { local: 0, budget: INITIAL_BUDGET, refused: false }
    }
}

/// Shared by the ingest writer's hand-off and the worker.
#[derive(Debug)]
pub struct Admission {
    accepting: AtomicBool,
    lanes: Mutex<HashMap<SubscriptionId, Load>>,
}

impl Default for Admission {
    fn default() -> Self {
        Admission { accepting: AtomicBool::new(true), lanes: Mutex::default() }
    }
}

impl Admission {
    /// Stops taking new work (shutdown).
    pub fn close(&self) {
        self.accepting.store(false, Ordering::Relaxed);
    }

    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
    }

    /// For each new delivery, by its subscription, whether this process
    /// takes it; the taken ones count against their budgets at once. Also
    /// returns the counts taken per subscription, to give back with
    /// [`Admission::left`] if they never reach the worker.
    pub fn admit(&self, subscriptions: &[&SubscriptionId]) -> (Vec<bool>, Vec<(SubscriptionId, usize)>) {
        let mut taken = Vec::with_capacity(subscriptions.len());
        let mut counts: Vec<(SubscriptionId, usize)> = Vec::new();
        let Ok(mut lanes) = self.lanes.lock() else { return (vec![false; subscriptions.len()], counts) };
        for id in subscriptions {
            let load = match lanes.get_mut(*id) {
                Some(load) => load,
                None => lanes.entry((*id).clone()).or_insert_with(Load::new),
            };
            let take = load.local < load.budget;
            if take {
                load.local += 1;
                match counts.iter_mut().find(|(s, _)| s == *id) {
                    Some((_, n)) => *n += 1,
                    None => counts.push(((*id).clone(), 1)),
                }
            } else {
                load.refused = true;
            }
            taken.push(take);
        }
        (taken, counts)
    }

    /// `n` deliveries claimed from the outbox joined the subscription's local work.
    pub fn arrived(&self, id: &SubscriptionId, n: usize) {
        if let Ok(mut lanes) = self.lanes.lock() {
            match lanes.get_mut(id) {
                Some(load) => load.local += n,
                None => {
                    lanes.insert(id.clone(), Load { local: n, ..Load::new() });
                }
            }
        }
    }

    /// `n` of the subscription's local deliveries finished or went back to
    /// the outbox. True when work was left in the outbox for want of room
    /// and there is room again: time to claim it.
    pub fn left(&self, id: &SubscriptionId, n: usize) -> bool {
        let Ok(mut lanes) = self.lanes.lock() else { return false };
        let Some(load) = lanes.get_mut(id) else { return false };
        load.local = load.local.saturating_sub(n);
        let room = load.refused && load.local <= load.budget / 2;
        if room {
            load.refused = false;
        }
        room
    }

    /// Claimed deliveries of the subscription went back to the outbox for
    /// want of budget: claim again once it is down to half of it.
    pub fn left_behind(&self, id: &SubscriptionId) {
        if let Ok(mut lanes) = self.lanes.lock()
            && let Some(load) = lanes.get_mut(id)
        {
            load.refused = true;
        }
    }

    /// Sets a subscription's budget; true, as [`Admission::left`], when
    /// work was left in the outbox and there is room for it now.
    pub fn set_budget(&self, id: &SubscriptionId, budget: usize) -> bool {
        let Ok(mut lanes) = self.lanes.lock() else { return false };
        let Some(load) = lanes.get_mut(id) else { return false };
        load.budget = budget.clamp(1, LANE_LIMIT);
        let room = load.refused && load.local <= load.budget / 2;
        if room {
            load.refused = false;
        }
        room
    }

    /// The subscriptions whose budget is spent: a claim skips them, and
    /// each says when it has room again ([`Admission::left`]).
    pub fn full(&self) -> Vec<SubscriptionId> {
        let Ok(mut lanes) = self.lanes.lock() else { return Vec::new() };
        let mut full = Vec::new();
        for (id, load) in lanes.iter_mut().filter(|(_, l)| l.local >= l.budget) {
            load.refused = true;
            full.push(id.clone());
        }
        full
    }

    /// How many more deliveries the subscription may take.
    pub fn room(&self, id: &SubscriptionId) -> usize {
        let Ok(lanes) = self.lanes.lock() else { return 0 };
        lanes.get(id).map_or(INITIAL_BUDGET, |l| l.budget.saturating_sub(l.local))
    }

    /// Forgets subscriptions that no longer exist.
    pub fn retain(&self, keep: impl Fn(&SubscriptionId) -> bool) {
        if let Ok(mut lanes) = self.lanes.lock() {
            lanes.retain(|id, load| load.local > 0 || keep(id));
        }
    }
}

/// A subscription's budget for a completion rate (per second) and in-flight cap.
pub fn budget(rate: f64, max_in_flight: usize) -> usize {
    let floor = (max_in_flight * 2).clamp(16, LANE_LIMIT);
    ((rate * HORIZON_SECONDS).ceil() as usize).clamp(floor, LANE_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SubscriptionId {
        SubscriptionId::parse(s).expect("id")
    }

    #[test]
    fn a_spent_budget_leaves_work_in_the_outbox_for_that_subscription_only() {
        let admission = Admission::default();
        let (slow, quick) = (id("sub_slow"), id("sub_quick"));
        admission.arrived(&slow, 0);
        admission.set_budget(&slow, 2);
        let (taken, counts) = admission.admit(&[&slow, &quick, &slow, &slow, &quick]);
        assert_eq!(taken, [true, true, true, false, true]);
        assert_eq!(counts, [(slow.clone(), 2), (quick.clone(), 2)]);
        assert_eq!(admission.full(), std::slice::from_ref(&slow));
        // One finishes: 1 of 2 is not yet half, then room to claim at 1.
        assert!(admission.left(&slow, 1), "at half the budget, claim what was left behind");
        assert!(!admission.left(&slow, 1), "said once");
        assert!(admission.full().is_empty());
    }

    #[test]
    fn budgets_follow_throughput_within_bounds() {
        assert_eq!(budget(0.0, 32), 64, "two rounds of the in-flight cap at least");
        assert_eq!(budget(0.1, 1), 16);
        assert_eq!(budget(3_000.0, 32), 6_000);
        assert_eq!(budget(1e9, 32), LANE_LIMIT);
    }
}
