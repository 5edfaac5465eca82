//! The batch planner. Pure: given the commands of one batch, the rows the
//! store loaded for them, the time and a source of new ids, it decides every
//! write of the transaction (message rows, history rows, merges, outbox
//! deliveries) and every answer. Both store backends run exactly this code
//! between their load and write steps, which is what keeps them in step.
//!
//! The commands the edges submit ([`command`]) live here too: they are the
//! planner's input, and the ingest queue only carries them.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

pub mod command;

pub use command::{Command, Outcome, Registration, ReplayGuard};

use crate::domain::event::{HistoryEntry, dedupe_key};
use crate::domain::outbox::{DeliveryKind, DeliveryRow, payload};
use crate::domain::subscription::SubscriptionFilter;
use crate::domain::{DeliveryId, MessageId, MessageRecord, NormalizedEvent, ProviderRef, Status, Target};

/// Longest recipient a callback may give a message (the API's limit):
/// a longer one stays in the event's history only.
pub const MAX_RECIPIENT_LEN: usize = 512;

/// The keys the store must look up before planning a batch.
#[derive(Debug, Default, PartialEq)]
pub struct Lookups {
    pub ids: Vec<MessageId>,
    pub provider_refs: Vec<ProviderRef>,
    pub idempotency_keys: Vec<String>,
    pub dedupe_keys: Vec<String>,
    /// Single-use callback tokens, as `(source, token)`.
    pub tokens: Vec<(String, String)>,
}

impl Lookups {
    pub fn for_batch(commands: &[Command]) -> Lookups {
        let mut l = Lookups::default();
        for command in commands {
            match command {
                Command::Register(r) => {
                    if let Some(id) = &r.id {
                        l.ids.push(id.clone());
                        l.dedupe_keys.push(dedupe_key("enqueued", id.as_str()));
                    }
                    if let Some(key) = &r.idempotency_key {
                        l.idempotency_keys.push(key.clone());
                    }
                    if let Some(pref) = registration_ref(r) {
                        l.provider_refs.push(pref);
                    }
                }
                Command::Event { target, event, guard, .. } => {
                    if let Some(g) = guard {
                        l.tokens.push((g.source.clone(), g.token.clone()));
                    }
                    if let Some(id) = &target.id {
                        l.ids.push(id.clone());
                    }
                    if let Some(pref) = &target.provider {
                        l.provider_refs.push(pref.clone());
                    }
                    l.dedupe_keys.push(event.dedupe_key.clone());
                }
                Command::Cancel { id, .. } => {
                    l.ids.push(id.clone());
                    l.dedupe_keys.push(dedupe_key("canceled", id.as_str()));
                }
            }
        }
        l.ids.sort();
        l.ids.dedup();
        l.provider_refs.sort_by(|a, b| (&a.provider, &a.message_id).cmp(&(&b.provider, &b.message_id)));
        l.provider_refs.dedup();
        l.idempotency_keys.sort();
        l.idempotency_keys.dedup();
        l.dedupe_keys.sort();
        l.dedupe_keys.dedup();
        l.tokens.sort();
        l.tokens.dedup();
        l
    }
}

fn registration_ref(r: &Registration) -> Option<ProviderRef> {
    let provider = r.fields.provider.clone()?;
    ProviderRef::new(provider, r.fields.provider_message_id.as_deref()?).ok()
}

/// Everything the store found for a batch's lookups.
#[derive(Debug, Default)]
pub struct Loaded {
    pub messages: Vec<MessageRecord>,
    pub existing_dedupe_keys: HashSet<String>,
    pub subscriptions: Vec<SubscriptionFilter>,
    /// Body hashes of the single-use tokens already recorded, by `(source, token)`.
    pub tokens: HashMap<(String, String), String>,
}

/// A message row to write.
#[derive(Debug)]
pub struct MessageWrite {
    pub record: MessageRecord,
    /// Insert (it was not in the database) rather than update.
    pub is_new: bool,
    /// Rewrite its rows in `message_tags`.
    pub tags_changed: bool,
}

/// A history row to insert.
#[derive(Debug, PartialEq)]
pub struct EventRow {
    pub message_id: MessageId,
    pub dedupe_key: String,
    pub ts: i64,
    pub received_at: i64,
    pub kind: &'static str,
    /// The history entry's fields besides `ts` and `type`, as JSON text.
    pub detail: String,
}

/// Every write of one batch's transaction, in the order the store applies
/// them, and the answers to send once it commits.
#[derive(Debug, Default)]
pub struct Plan {
    pub messages: Vec<MessageWrite>,
    pub events: Vec<EventRow>,
    /// `(from, into)`: records found to be one message; `from` exists in the
    /// database and its history and deliveries move to `into`.
    pub merges: Vec<(MessageId, MessageId)>,
    pub deliveries: Vec<DeliveryRow>,
    /// Single-use tokens seen for the first time, to remember.
    pub tokens: Vec<ReplayGuard>,
    pub outcomes: Vec<Outcome>,
}

struct Work {
    record: MessageRecord,
    is_new: bool,
    dirty: bool,
    tags_changed: bool,
}

/// Where the planner gets new ids: [`Fresh`] ones in the stores, counted
/// ones in tests, so that a plan is a function of its inputs.
pub trait Ids {
    fn message_id(&mut self) -> MessageId;
    fn delivery_id(&mut self) -> DeliveryId;
}

/// New time-ordered ids (UUIDv7), as the stores plan with.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fresh;

impl Ids for Fresh {
    fn message_id(&mut self) -> MessageId {
        MessageId::generate()
    }

    fn delivery_id(&mut self) -> DeliveryId {
        DeliveryId::generate()
    }
}

struct Planner<'a> {
    ids: &'a mut dyn Ids,
    now: i64,
    timestamp: String,
    subscriptions: &'a [SubscriptionFilter],
    work: HashMap<MessageId, Work>,
    by_ref: HashMap<ProviderRef, MessageId>,
    by_idempotency: HashMap<String, MessageId>,
    seen_keys: HashSet<String>,
    existing_keys: HashSet<String>,
    /// Body hashes of single-use tokens, recorded before or in this batch.
    tokens: HashMap<(String, String), String>,
    /// Records merged away in this batch, and where they went.
    merged: HashMap<MessageId, MessageId>,
    plan: Plan,
}

/// Plans one batch. `now` is epoch ms; `timestamp` its RFC 3339 form; new
/// messages and deliveries take their ids from `ids`.
pub fn plan(commands: &[Command], loaded: Loaded, now: i64, timestamp: String, ids: &mut dyn Ids) -> Plan {
    let Loaded { messages, existing_dedupe_keys, subscriptions, tokens } = loaded;
    let mut p = Planner {
        ids,
        now,
        timestamp,
        subscriptions: &subscriptions,
        work: HashMap::with_capacity(messages.len() + commands.len()),
        by_ref: HashMap::new(),
        by_idempotency: HashMap::new(),
        seen_keys: HashSet::with_capacity(commands.len()),
        existing_keys: existing_dedupe_keys,
        tokens,
        merged: HashMap::new(),
        plan: Plan::default(),
    };
    for record in messages {
        p.index(&record);
        p.work.insert(record.id.clone(), Work { record, is_new: false, dirty: false, tags_changed: false });
    }
    for command in commands {
        let outcome = match command {
            Command::Register(r) => p.register(r),
            Command::Event { guard: Some(guard), .. } if !p.admit(guard) => Outcome::Replayed,
            Command::Event { target, event, create, want_message, .. } => {
                p.event(target, event, *create, *want_message)
            }
            Command::Cancel { id, ts } => p.cancel(id, *ts),
        };
        p.plan.outcomes.push(outcome);
    }
    let mut plan = p.plan;
    let mut writes: Vec<_> = p.work.into_values().filter(|w| w.dirty).collect();
    for w in &mut writes {
        w.record.updated_at = now;
    }
    // A stable order keeps row locks and inserts deterministic.
    writes.sort_by(|a, b| a.record.id.cmp(&b.record.id));
    plan.messages = writes
        .into_iter()
        .map(|w| MessageWrite { record: w.record, is_new: w.is_new, tags_changed: w.tags_changed })
        .collect();
    plan
}

impl Planner<'_> {
    fn index(&mut self, record: &MessageRecord) {
        if let (Some(provider), Some(pmid)) = (&record.fields.provider, &record.fields.provider_message_id)
            && let Ok(r) = ProviderRef::new(provider.clone(), pmid)
        {
            self.by_ref.insert(r, record.id.clone());
        }
        if let Some(key) = &record.idempotency_key {
            self.by_idempotency.insert(key.clone(), record.id.clone());
        }
    }

    fn create(&mut self, id: MessageId, ts: i64) -> &mut Work {
        let record = MessageRecord::new(id.clone(), ts.min(self.now));
        self.work.entry(id).or_insert(Work { record, is_new: true, dirty: true, tags_changed: false })
    }

    /// Where a record merged away in this batch went (itself otherwise).
    fn alias(&self, id: &MessageId) -> MessageId {
        let mut id = id;
        while let Some(next) = self.merged.get(id) {
            id = next;
        }
        id.clone()
    }

    fn is_registered(&self, id: &MessageId) -> bool {
        self.work.get(id).is_some_and(|w| w.record.registered)
    }

    /// Whether a record is known only by the provider's id: made from
    /// callbacks that named no message of hookrelay's. Only such records are
    /// merged into others; a record someone named (a registration, or a
    /// callback carrying `hookrelay_id`) is its own message, even when it
    /// shares a provider id with another (one send to several recipients).
    fn is_anonymous(&self, id: &MessageId) -> bool {
        id.is_generated() && !self.is_registered(id)
    }

    /// Whether a single-use token may come with this body: it is new (and
    /// is remembered from now on) or it came with this very body before (a
    /// retry, which dedupe answers as a duplicate).
    fn admit(&mut self, guard: &ReplayGuard) -> bool {
        let key = (guard.source.clone(), guard.token.clone());
        match self.tokens.get(&key) {
            Some(hash) => *hash == guard.body_hash,
            None => {
                self.tokens.insert(key, guard.body_hash.clone());
                self.plan.tokens.push(guard.clone());
                true
            }
        }
    }

    fn is_duplicate(&self, key: &str) -> bool {
        self.existing_keys.contains(key) || self.seen_keys.contains(key)
    }

    fn register(&mut self, r: &Registration) -> Outcome {
        if let Some(key) = &r.idempotency_key
            && let Some(id) = self.by_idempotency.get(key)
        {
            return Outcome::Registered { id: self.alias(id), created: false };
        }
        let pref = registration_ref(r);
        let owner = pref.as_ref().and_then(|p| self.by_ref.get(p)).cloned();
        let id = match (&r.id, &owner) {
            (Some(id), _) => self.alias(id),
            (None, Some(owner)) if self.is_anonymous(owner) => owner.clone(),
            (None, Some(owner)) => return Outcome::ProviderIdTaken { owner: owner.clone() },
            (None, None) => self.ids.message_id(),
        };
        if self.is_registered(&id) {
            // A repeat of an earlier registration: answer it, change nothing.
            return Outcome::Registered { id, created: false };
        }
        if let Some(owner) = owner.as_ref().filter(|o| **o != id && !self.is_anonymous(o)) {
            return Outcome::ProviderIdTaken { owner: owner.clone() };
        }
        let fresh = !self.work.contains_key(&id);
        let work = self.create(id.clone(), r.ts);
        fill_registration(&mut work.record, r);
        work.dirty = true;
        work.tags_changed |= !r.fields.tags.is_empty();
        if let Some(key) = &r.idempotency_key {
            self.by_idempotency.insert(key.clone(), id.clone());
        }
        let mut event = NormalizedEvent::status(Status::Enqueued, r.ts, dedupe_key("enqueued", id.as_str()));
        event.provider.clone_from(&r.fields.provider);
        if self.is_duplicate(&event.dedupe_key) {
            // Registered once already under this id (the record was merged
            // away since): the history keeps the first ENQUEUED.
        } else if fresh {
            // A first registration is the message's first transition (seq 1),
            // which subscribers hear about.
            if let Some(work) = self.work.get_mut(&id) {
                work.record.state.seq = 1;
            }
            self.seen_keys.insert(event.dedupe_key.clone());
            let (row, _) = self.history_row(id.clone(), &event);
            self.plan.events.push(row);
            self.notify(&id, Some(Status::Enqueued), None);
        } else {
            self.record_event(&id, &event);
        }
        // Callbacks got here first under the provider's id: same message.
        if let Some(owner) = owner.filter(|o| *o != id) {
            self.merge(&owner, &id);
        }
        if let Some(pref) = pref {
            self.claim_ref(&id, pref);
        }
        Outcome::Registered { id, created: true }
    }

    fn event(&mut self, target: &Target, event: &NormalizedEvent, create: bool, want_message: bool) -> Outcome {
        if self.is_duplicate(&event.dedupe_key) {
            let known = self.resolve(target);
            return Outcome::Applied { id: known, duplicate: true, changed: false, message: None };
        }
        // hookrelay's own id wins; the provider's id finds the record otherwise.
        let named = target.id.as_ref().map(|id| self.alias(id));
        let owner = target.provider.as_ref().and_then(|p| self.by_ref.get(p)).cloned();
        let id = match (named, &owner) {
            (Some(id), _) if self.work.contains_key(&id) => id,
            (Some(_), _) | (None, None) if !create => return Outcome::NotFound,
            (Some(id), _) => id,
            (None, Some(owner)) => owner.clone(),
            (None, None) => self.ids.message_id(),
        };
        let taken = owner.as_ref().filter(|o| **o != id && !self.is_anonymous(o)).cloned();
        if let Some(owner) = &taken
            && !create
        {
            // A sender reporting another message's provider id.
            return Outcome::ProviderIdTaken { owner: owner.clone() };
        }
        if !self.work.contains_key(&id) {
            self.create(id.clone(), event.ts);
        }
        // A message made from callbacks is found by its recipient like a
        // registered one (a recipient the sender gave is kept).
        if let Some(recipient) = event.recipient.as_ref().filter(|r| !r.is_empty() && r.len() <= MAX_RECIPIENT_LEN)
            && let Some(work) = self.work.get_mut(&id)
            && work.record.fields.recipient.is_none()
        {
            work.record.fields.recipient = Some(recipient.clone());
            work.dirty = true;
        }
        match (&target.provider, owner) {
            // Another named message keeps its provider id; this event is
            // recorded on the message hookrelay's id names.
            (Some(_), Some(_)) if taken.is_some() => {}
            (Some(pref), owner) => {
                // A record made from earlier anonymous callbacks is the same message.
                if let Some(owner) = owner.filter(|o| *o != id) {
                    self.merge(&owner, &id);
                }
                self.claim_ref(&id, pref.clone());
            }
            (None, _) => {
                if let Some(provider) = &event.provider
                    && let Some(work) = self.work.get_mut(&id)
                    && work.record.fields.provider.is_none()
                {
                    work.record.fields.provider = Some(provider.clone());
                    work.dirty = true;
                }
            }
        }
        let changed = self.record_event(&id, event);
        let message = want_message.then(|| self.work.get(&id).map(|w| Box::new(w.record.clone()))).flatten();
        Outcome::Applied { id: Some(id), duplicate: false, changed, message }
    }

    fn cancel(&mut self, id: &MessageId, ts: i64) -> Outcome {
        let id = self.alias(id);
        let Some(work) = self.work.get(&id) else {
            return Outcome::NotFound;
        };
        let status = work.record.state.status;
        if status == Status::Canceled {
            return Outcome::Canceled { message: Box::new(work.record.clone()) };
        }
        if !status.is_cancelable() {
            return Outcome::Conflict { status };
        }
        let event = NormalizedEvent::status(Status::Canceled, ts, dedupe_key("canceled", id.as_str()));
        self.record_event(&id, &event);
        match self.work.get(&id) {
            Some(w) => Outcome::Canceled { message: Box::new(w.record.clone()) },
            None => Outcome::NotFound,
        }
    }

    /// Finds the record a target names, without creating one.
    fn resolve(&self, target: &Target) -> Option<MessageId> {
        if let Some(id) = target.id.as_ref().map(|id| self.alias(id))
            && self.work.contains_key(&id)
        {
            return Some(id);
        }
        if let Some(pref) = &target.provider
            && let Some(id) = self.by_ref.get(pref)
        {
            return Some(id.clone());
        }
        None
    }

    /// Gives `id` the provider reference if it has none yet.
    fn claim_ref(&mut self, id: &MessageId, pref: ProviderRef) {
        let Some(work) = self.work.get_mut(id) else { return };
        let record = &mut work.record;
        if record.fields.provider_message_id.is_some() {
            return;
        }
        // Registered for one provider and reported by another (a failover),
        // the message is the reporting provider's now: its callbacks carry
        // this pair, and this pair is the one checked for another owner.
        record.fields.provider = Some(pref.provider.clone());
        record.fields.provider_message_id = Some(pref.message_id.clone());
        work.dirty = true;
        self.by_ref.insert(pref, id.clone());
    }

    /// Appends one history event to a record, applies it, and plans the
    /// deliveries it causes. Returns whether the status changed.
    fn record_event(&mut self, id: &MessageId, event: &NormalizedEvent) -> bool {
        self.seen_keys.insert(event.dedupe_key.clone());
        let Some(work) = self.work.get_mut(id) else { return false };
        let changed = match event.effective_status() {
            Some(status) => {
                let before = work.record.state.milestones;
                let changed = work.record.state.apply(status, event.ts, event.reason, event.error.as_deref());
                if changed || before != work.record.state.milestones {
                    work.dirty = true;
                    work.tags_changed |=
                        before.enqueued != work.record.state.milestones.enqueued && !work.record.fields.tags.is_empty();
                }
                changed
            }
            None => false,
        };
        let (row, entry) = self.history_row(id.clone(), event);
        if changed {
            self.notify(id, event.effective_status(), None);
        } else if self.subscriptions.iter().any(|s| s.all_events) {
            self.notify(id, None, Some(&entry.to_json()));
        }
        self.plan.events.push(row);
        changed
    }

    /// The history row an event adds, and the entry it shows as.
    fn history_row(&self, message_id: MessageId, event: &NormalizedEvent) -> (EventRow, HistoryEntry) {
        let entry =
            HistoryEntry { ts: event.ts, kind: event.kind.history_type().into(), detail: event.history_detail() };
        let row = EventRow {
            message_id,
            dedupe_key: event.dedupe_key.clone(),
            ts: event.ts,
            received_at: self.now,
            kind: event.kind.history_type(),
            detail: serde_json::to_string(&entry.detail).unwrap_or_else(|_| "{}".into()),
        };
        (row, entry)
    }

    /// Plans one delivery per interested subscription: for a status change
    /// when `status` is set, for a history-only event otherwise.
    fn notify(&mut self, id: &MessageId, status: Option<Status>, event: Option<&Value>) {
        let Some(work) = self.work.get(id) else { return };
        let mut payload_bytes: Option<Vec<u8>> = None;
        for sub in self.subscriptions {
            let wanted = match status {
                Some(status) => sub.wants_status(status),
                None => sub.all_events,
            };
            if !wanted {
                continue;
            }
            let bytes = payload_bytes.get_or_insert_with(|| payload(&work.record, &self.timestamp, event));
            self.plan.deliveries.push(DeliveryRow {
                id: self.ids.delivery_id(),
                subscription_id: sub.id.clone(),
                message_id: id.clone(),
                seq: work.record.state.seq,
                kind: if status.is_some() { DeliveryKind::Status } else { DeliveryKind::Event },
                payload: bytes.clone(),
                created_at: self.now,
            });
        }
    }

    /// Folds record `from` (made from callbacks, never a registered message)
    /// into record `into`: states join, empty fields are filled, history and
    /// deliveries move.
    fn merge(&mut self, from: &MessageId, into: &MessageId) {
        let Some(source) = self.work.remove(from) else { return };
        let changed = {
            let Some(target) = self.work.get_mut(into) else {
                self.work.insert(from.clone(), source);
                return;
            };
            let t = &mut target.record;
            let s = &source.record;
            let changed = t.state.merge(&s.state);
            t.registered |= s.registered;
            t.fields.fill_from(&s.fields);
            if t.idempotency_key.is_none() {
                t.idempotency_key.clone_from(&s.idempotency_key);
            }
            target.dirty = true;
            target.tags_changed = true;
            changed
        };
        // History planned for `from` moves; deliveries planned for it are
        // dropped, since they describe a record that no longer exists (the
        // merged state is announced below when it changed anything).
        for row in &mut self.plan.events {
            if row.message_id == *from {
                row.message_id = into.clone();
            }
        }
        self.plan.deliveries.retain(|d| d.message_id != *from);
        for (_, target) in &mut self.plan.merges {
            if target == from {
                *target = into.clone();
            }
        }
        for target in self.merged.values_mut() {
            if target == from {
                *target = into.clone();
            }
        }
        self.merged.insert(from.clone(), into.clone());
        if !source.is_new {
            self.plan.merges.push((from.clone(), into.clone()));
        }
        for id in self.by_ref.values_mut().chain(self.by_idempotency.values_mut()) {
            if id == from {
                *id = into.clone();
            }
        }
        if changed {
            let status = self.work.get(into).map(|w| w.record.state.status);
            self.notify(into, status, None);
        }
    }
}

/// Registration fields win over what callbacks inferred.
fn fill_registration(record: &mut MessageRecord, r: &Registration) {
    record.registered = true;
    record.fields.overlay(&r.fields);
    if record.idempotency_key.is_none() {
        record.idempotency_key.clone_from(&r.idempotency_key);
    }
    record.state.milestones.enqueued = record.state.milestones.enqueued.min(r.ts);
}

/// Every `type` a history entry can have: the statuses, then the events
/// that change none.
pub const HISTORY_TYPES: [&str; 19] = [
    "ENQUEUED",
    "ROUTED",
    "SENT",
    "DELAYED",
    "DELIVERED",
    "OPENED",
    "CLICKED",
    "UNDELIVERABLE",
    "UNROUTABLE",
    "UNMAPPED",
    "CANCELED",
    "FILTERED",
    "THROTTLED",
    "DIGESTED",
    "SIMULATED",
    "COMPLAINED",
    "UNSUBSCRIBED",
    "RESUBSCRIBED",
    "UNKNOWN",
];

/// The kind of a history event named by `?type=`, if it is one hookrelay writes.
pub fn is_history_type(s: &str) -> bool {
    HISTORY_TYPES.iter().any(|t| t.eq_ignore_ascii_case(s))
}

#[cfg(test)]
mod tests;
