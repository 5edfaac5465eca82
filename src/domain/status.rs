//! The status state machine. Pure: no I/O, no clock.
//!
//! A message's status only moves forward. Each status has a precedence; an
//! incoming status replaces the current one exactly when its precedence is
//! higher. Precedence is the rank from the design (ENQUEUED 0, ROUTED /
//! THROTTLED / DIGESTED 1, SENT 2, DELAYED 3, DELIVERED / UNDELIVERABLE 4,
//! OPENED 5, CLICKED 6, routing terminals last), refined inside a rank by a
//! fixed tie-break so that it is a *total* order:
//!
//! - UNDELIVERABLE outranks DELIVERED: an asynchronous bounce after
//!   acceptance wins over the acceptance, but never over OPENED or CLICKED.
//! - ROUTED outranks DIGESTED, which outranks THROTTLED: a throttled or
//!   digested message that is later routed shows as routed.
//! - Among the routing terminals: SIMULATED < FILTERED < UNMAPPED <
//!   UNROUTABLE < CANCELED.
//!
//! Because the order is total and milestones keep the earliest time, the
//! final status and milestones are the same whatever order events arrive in
//! (a join over a semilattice); a plain "equal rank keeps the first" rule
//! would make the outcome depend on arrival order between, say, THROTTLED and
//! ROUTED, which no consumer could reason about.

use serde::{Deserialize, Serialize};

use super::event::Reason;

/// Courier's message statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Enqueued,
    Routed,
    Throttled,
    Digested,
    Sent,
    Delayed,
    Delivered,
    Undeliverable,
    Opened,
    Clicked,
    Unroutable,
    Unmapped,
    Canceled,
    Filtered,
    Simulated,
}

/// A milestone whose first time is kept on the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Milestone {
    Enqueued,
    Sent,
    Delivered,
    Opened,
    Clicked,
}

impl Status {
    pub const ALL: [Status; 15] = [
        Status::Enqueued,
        Status::Routed,
        Status::Throttled,
        Status::Digested,
        Status::Sent,
        Status::Delayed,
        Status::Delivered,
        Status::Undeliverable,
        Status::Opened,
        Status::Clicked,
        Status::Unroutable,
        Status::Unmapped,
        Status::Canceled,
        Status::Filtered,
        Status::Simulated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Enqueued => "ENQUEUED",
            Status::Routed => "ROUTED",
            Status::Throttled => "THROTTLED",
            Status::Digested => "DIGESTED",
            Status::Sent => "SENT",
            Status::Delayed => "DELAYED",
            Status::Delivered => "DELIVERED",
            Status::Undeliverable => "UNDELIVERABLE",
            Status::Opened => "OPENED",
            Status::Clicked => "CLICKED",
            Status::Unroutable => "UNROUTABLE",
            Status::Unmapped => "UNMAPPED",
            Status::Canceled => "CANCELED",
            Status::Filtered => "FILTERED",
            Status::Simulated => "SIMULATED",
        }
    }

    /// Parses a status name, ignoring ASCII case.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str().eq_ignore_ascii_case(s))
    }

    /// The rank from the design table; routing terminals share the top rank.
    pub fn rank(self) -> u8 {
        match self {
            Status::Enqueued => 0,
            Status::Routed | Status::Throttled | Status::Digested => 1,
            Status::Sent => 2,
            Status::Delayed => 3,
            Status::Delivered | Status::Undeliverable => 4,
            Status::Opened => 5,
            Status::Clicked => 6,
            Status::Unroutable | Status::Unmapped | Status::Canceled | Status::Filtered | Status::Simulated => 7,
        }
    }

    /// The total order used to decide transitions: rank, then the tie-break
    /// described in the module documentation.
    fn precedence(self) -> (u8, u8) {
        let tie = match self {
            Status::Throttled => 0,
            Status::Digested => 1,
            Status::Routed => 2,
            Status::Delivered => 0,
            Status::Undeliverable => 1,
            Status::Simulated => 0,
            Status::Filtered => 1,
            Status::Unmapped => 2,
            Status::Unroutable => 3,
            Status::Canceled => 4,
            Status::Enqueued | Status::Sent | Status::Delayed | Status::Opened | Status::Clicked => 0,
        };
        (self.rank(), tie)
    }

    /// Statuses that mean the message never reached a provider; once reached,
    /// nothing replaces them.
    pub fn is_routing_terminal(self) -> bool {
        self.rank() == 7
    }

    /// Whether a message in this status may still be canceled: it has not
    /// been handed to a provider and has not ended otherwise.
    pub fn is_cancelable(self) -> bool {
        self.rank() < Status::Sent.rank()
    }

    pub fn milestone(self) -> Option<Milestone> {
        match self {
            Status::Enqueued => Some(Milestone::Enqueued),
            Status::Sent => Some(Milestone::Sent),
            Status::Delivered => Some(Milestone::Delivered),
            Status::Opened => Some(Milestone::Opened),
            Status::Clicked => Some(Milestone::Clicked),
            _ => None,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an event with status `incoming` replaces `current`.
pub fn supersedes(incoming: Status, current: Status) -> bool {
    incoming.precedence() > current.precedence()
}

/// First time (epoch ms) of each milestone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Milestones {
    pub enqueued: i64,
    pub sent: Option<i64>,
    pub delivered: Option<i64>,
    pub opened: Option<i64>,
    pub clicked: Option<i64>,
}

fn earliest(slot: &mut Option<i64>, ts: i64) {
    *slot = Some(slot.map_or(ts, |t| t.min(ts)));
}

impl Milestones {
    fn record(&mut self, milestone: Milestone, ts: i64) {
        match milestone {
            Milestone::Enqueued => self.enqueued = self.enqueued.min(ts),
            Milestone::Sent => earliest(&mut self.sent, ts),
            Milestone::Delivered => earliest(&mut self.delivered, ts),
            Milestone::Opened => earliest(&mut self.opened, ts),
            Milestone::Clicked => earliest(&mut self.clicked, ts),
        }
    }

    fn merge(&mut self, other: &Milestones) {
        self.enqueued = self.enqueued.min(other.enqueued);
        for (slot, ts) in [
            (&mut self.sent, other.sent),
            (&mut self.delivered, other.delivered),
            (&mut self.opened, other.opened),
            (&mut self.clicked, other.clicked),
        ] {
            if let Some(ts) = ts {
                earliest(slot, ts);
            }
        }
    }
}

/// The part of a message the state machine owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageState {
    pub status: Status,
    /// Incremented on every status change; consumers keep the highest.
    pub seq: i64,
    pub milestones: Milestones,
    /// Why the message is in its status (set by the event that moved it).
    pub reason: Option<Reason>,
    /// The provider's error text or code for the current status.
    pub error: Option<String>,
}

impl MessageState {
    /// A message first known at `enqueued` (epoch ms), not yet moved.
    pub fn new(enqueued: i64) -> Self {
        MessageState {
            status: Status::Enqueued,
            seq: 0,
            milestones: Milestones { enqueued, ..Milestones::default() },
            reason: None,
            error: None,
        }
    }

    /// Applies one status event; returns whether the status changed.
    ///
    /// The milestone of the event's status is recorded even when the status
    /// does not change (a DELIVERED arriving after OPENED still dates the
    /// delivery).
    pub fn apply(&mut self, status: Status, ts: i64, reason: Option<Reason>, error: Option<&str>) -> bool {
        if let Some(milestone) = status.milestone() {
            self.milestones.record(milestone, ts);
        }
        if !supersedes(status, self.status) {
            return false;
        }
        self.status = status;
        self.seq += 1;
        self.reason = reason;
        self.error = error.map(str::to_owned);
        true
    }

    /// Folds another state of the same message into this one (two records
    /// found to be one message). Returns whether this state's status changed.
    pub fn merge(&mut self, other: &MessageState) -> bool {
        self.milestones.merge(&other.milestones);
        let changed = supersedes(other.status, self.status);
        if changed {
            self.status = other.status;
            self.reason = other.reason;
            self.error.clone_from(&other.error);
        }
        // Numbers already handed out under either record stay below anything
        // sent from now on.
        self.seq = self.seq.max(other.seq) + i64::from(changed);
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::*;
    use proptest::prelude::*;

    /// The expected outcome for every (current, incoming) pair, written out
    /// from the design's rules rather than derived from `precedence`.
    fn expected(current: Status, incoming: Status) -> bool {
        let (c, i) = (current.rank(), incoming.rank());
        if current.is_routing_terminal() {
            // Terminals are only replaced by a later terminal in the tie-break.
            return incoming.is_routing_terminal()
                && [Simulated, Filtered, Unmapped, Unroutable, Canceled].iter().position(|s| *s == incoming)
                    > [Simulated, Filtered, Unmapped, Unroutable, Canceled].iter().position(|s| *s == current);
        }
        if i > c {
            return true;
        }
        if i < c {
            return false;
        }
        matches!(
            (current, incoming),
            (Delivered, Undeliverable) | (Throttled, Digested) | (Throttled, Routed) | (Digested, Routed)
        )
    }

    #[test]
    fn every_pair_follows_the_rules() {
        for current in Status::ALL {
            for incoming in Status::ALL {
                let mut state = MessageState::new(0);
                state.status = current;
                let changed = state.apply(incoming, 10, None, None);
                assert_eq!(changed, expected(current, incoming), "{current} then {incoming}");
                assert_eq!(state.seq, i64::from(changed));
                assert_eq!(state.status, if changed { incoming } else { current });
            }
        }
    }

    #[test]
    fn spot_checks_from_the_design() {
        let cases = [
            (Delivered, Undeliverable, true),
            (Opened, Undeliverable, false),
            (Clicked, Undeliverable, false),
            (Undeliverable, Delivered, false),
            (Sent, Opened, true),
            (Enqueued, Clicked, true),
            (Delivered, Delayed, false),
            (Delayed, Delivered, true),
            (Clicked, Canceled, true),
            (Canceled, Clicked, false),
            (Routed, Throttled, false),
            (Sent, Sent, false),
        ];
        for (current, incoming, changes) in cases {
            assert_eq!(supersedes(incoming, current), changes, "{current} then {incoming}");
        }
    }

    #[test]
    fn milestones_keep_the_first_time_even_without_a_status_change() {
        let mut state = MessageState::new(1_000);
        assert!(state.apply(Opened, 5_000, None, None));
        assert!(!state.apply(Delivered, 4_000, None, None));
        assert!(!state.apply(Delivered, 3_000, None, None));
        assert!(!state.apply(Opened, 9_000, None, None));
        assert_eq!(state.status, Opened);
        assert_eq!(state.milestones.delivered, Some(3_000));
        assert_eq!(state.milestones.opened, Some(5_000));
        assert!(!state.apply(Enqueued, 500, None, None));
        assert_eq!(state.milestones.enqueued, 500);
    }

    #[test]
    fn reason_and_error_follow_the_status() {
        let mut state = MessageState::new(0);
        state.apply(Delayed, 1, None, Some("421 greylisted"));
        assert_eq!(state.error.as_deref(), Some("421 greylisted"));
        state.apply(Undeliverable, 2, Some(Reason::Bounced), Some("550 no such user"));
        assert_eq!(state.reason, Some(Reason::Bounced));
        // A later duplicate bounce changes nothing, not even the text.
        state.apply(Undeliverable, 3, Some(Reason::Failed), Some("other"));
        assert_eq!(state.reason, Some(Reason::Bounced));
        assert_eq!(state.error.as_deref(), Some("550 no such user"));
        assert_eq!(state.seq, 2);
    }

    #[test]
    fn merge_joins_two_records() {
        let mut a = MessageState::new(100);
        a.apply(Sent, 150, None, None);
        let mut b = MessageState::new(50);
        b.apply(Delivered, 200, None, None);
        b.apply(Opened, 300, None, None);
        assert!(a.merge(&b));
        assert_eq!(a.status, Opened);
        assert_eq!(a.seq, 3);
        assert_eq!(a.milestones.enqueued, 50);
        assert_eq!(a.milestones.sent, Some(150));
        assert_eq!(a.milestones.delivered, Some(200));
    }

    fn status() -> impl Strategy<Value = Status> {
        proptest::sample::select(Status::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn any_order_gives_the_same_status_and_milestones(
            events in proptest::collection::vec((status(), 0i64..10_000), 0..24),
            seed in any::<u64>(),
        ) {
            let fold = |events: &[(Status, i64)]| {
                let mut state = MessageState::new(5_000);
                for (status, ts) in events {
                    state.apply(*status, *ts, None, None);
                }
                (state.status, state.milestones)
            };
            let mut shuffled = events.clone();
            let mut rng = fastrand::Rng::with_seed(seed);
            rng.shuffle(&mut shuffled);
            let mut reversed = events.clone();
            reversed.reverse();
            prop_assert_eq!(fold(&events), fold(&shuffled));
            prop_assert_eq!(fold(&events), fold(&reversed));
        }

        #[test]
        fn status_never_moves_backwards(events in proptest::collection::vec(status(), 0..24)) {
            let mut state = MessageState::new(0);
            for status in events {
                let before = state.status;
                state.apply(status, 1, None, None);
                prop_assert!(!supersedes(before, state.status));
            }
        }

        #[test]
        fn merging_is_the_same_as_applying_everything_to_one_record(
            left in proptest::collection::vec((status(), 0i64..10_000), 0..12),
            right in proptest::collection::vec((status(), 0i64..10_000), 0..12),
        ) {
            let fold = |events: &[(Status, i64)], enqueued| {
                let mut state = MessageState::new(enqueued);
                for (status, ts) in events {
                    state.apply(*status, *ts, None, None);
                }
                state
            };
            let mut merged = fold(&left, 7_000);
            merged.merge(&fold(&right, 6_000));
            let all: Vec<_> = left.iter().chain(right.iter()).copied().collect();
            let whole = fold(&all, 6_000);
            prop_assert_eq!(merged.status, whole.status);
            prop_assert_eq!(merged.milestones, whole.milestones);
        }
    }
}
