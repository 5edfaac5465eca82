use super::*;
use crate::domain::subscription::SubscriptionFilter;
use crate::domain::{EventKind, MessageFields, ProviderName, Reason, SubscriptionId};

const NOW: i64 = 1_700_000_000_000;

fn reg(id: Option<&str>) -> Registration {
    Registration {
        id: id.map(|s| MessageId::parse(s).expect("id")),
        idempotency_key: None,
        fields: MessageFields {
            recipient: Some("someone@example.com".into()),
            channel: Some(crate::domain::Channel::Email),
            notification: Some("welcome".into()),
            tags: vec!["a".into()],
            ..MessageFields::default()
        },
        ts: NOW - 10,
    }
}

fn pref(pmid: &str) -> ProviderRef {
    ProviderRef::new(ProviderName::parse("sendgrid").expect("name"), pmid).expect("ref")
}

fn ev(status: Status, key: &str, ts: i64) -> Box<NormalizedEvent> {
    Box::new(NormalizedEvent::status(status, ts, key.into()))
}

fn callback(pmid: &str, status: Status, key: &str) -> Command {
    Command::Event {
        target: Target { id: None, provider: Some(pref(pmid)) },
        event: ev(status, key, NOW - 5),
        create: true,
        want_message: false,
        guard: None,
    }
}

fn sub(id: &str, statuses: Option<Vec<Status>>, all_events: bool) -> SubscriptionFilter {
    SubscriptionFilter { id: SubscriptionId::parse(id).expect("sub id"), statuses, all_events }
}

/// Ids counted from 1, so that a plan is exact: `msg_` and `dlv_` followed
/// by 32 hex digits, as generated ones are.
#[derive(Default)]
struct Counted(u128);

impl Ids for Counted {
    fn message_id(&mut self) -> MessageId {
        self.0 += 1;
        MessageId::parse(&format!("msg_{:032x}", self.0)).expect("id")
    }

    fn delivery_id(&mut self) -> DeliveryId {
        self.0 += 1;
        DeliveryId::parse(&format!("dlv_{:032x}", self.0)).expect("id")
    }
}

fn run(commands: &[Command], loaded: Loaded) -> Plan {
    plan(commands, loaded, NOW, "2023-11-14T22:13:20Z".into(), &mut Counted::default())
}

fn stored(plan: &Plan, id: &str) -> MessageRecord {
    plan.messages.iter().find(|m| m.record.id.as_str() == id).map(|m| m.record.clone()).expect("written")
}

#[test]
fn a_registration_is_the_first_transition() {
    let loaded = Loaded { subscriptions: vec![sub("sub_a", None, false)], ..Loaded::default() };
    let plan = run(&[Command::Register(Box::new(reg(Some("m1"))))], loaded);
    assert_eq!(plan.outcomes, vec![Outcome::Registered { id: MessageId::parse("m1").expect("id"), created: true }]);
    let m = stored(&plan, "m1");
    assert!(m.registered);
    assert_eq!(m.state.status, Status::Enqueued);
    assert_eq!(m.state.seq, 1);
    assert_eq!(m.state.milestones.enqueued, NOW - 10);
    assert!(plan.messages[0].is_new && plan.messages[0].tags_changed);
    assert_eq!(plan.events.len(), 1);
    assert_eq!(plan.events[0].kind, "ENQUEUED");
    assert_eq!(plan.deliveries.len(), 1);
    let body: Value = serde_json::from_slice(&plan.deliveries[0].payload).expect("json");
    assert_eq!(body["type"], "message:updated");
    assert_eq!(body["data"]["id"], "m1");
    assert_eq!(body["data"]["seq"], 1);
    assert_eq!(body["timestamp"], "2023-11-14T22:13:20Z");
}

#[test]
fn repeats_and_idempotency_keys_answer_the_first_registration() {
    let mut existing = MessageRecord::new(MessageId::parse("m1").expect("id"), NOW - 100);
    existing.registered = true;
    existing.idempotency_key = Some("key-1".into());
    let loaded = Loaded { messages: vec![existing], ..Loaded::default() };
    let mut by_key = reg(None);
    by_key.idempotency_key = Some("key-1".into());
    let mut fresh_key = reg(None);
    fresh_key.idempotency_key = Some("key-2".into());
    let mut fresh_key_again = fresh_key.clone();
    fresh_key_again.fields.recipient = Some("other@example.com".into());
    let plan = run(
        &[
            Command::Register(Box::new(reg(Some("m1")))),
            Command::Register(Box::new(by_key)),
            Command::Register(Box::new(fresh_key)),
            Command::Register(Box::new(fresh_key_again)),
        ],
        loaded,
    );
    let m1 = MessageId::parse("m1").expect("id");
    assert_eq!(plan.outcomes[0], Outcome::Registered { id: m1.clone(), created: false });
    assert_eq!(plan.outcomes[1], Outcome::Registered { id: m1, created: false });
    let Outcome::Registered { id: new_id, created: true } = &plan.outcomes[2] else {
        panic!("expected a new registration: {:?}", plan.outcomes[2]);
    };
    assert_eq!(plan.outcomes[3], Outcome::Registered { id: new_id.clone(), created: false });
    assert_eq!(plan.messages.len(), 1, "only the new message is written");
    assert_eq!(plan.events.len(), 1);
}

#[test]
fn callbacks_before_registration_are_kept_and_merged() {
    // First batch: a delivery callback for a message nobody registered yet.
    let plan1 = run(&[callback("pm-1", Status::Delivered, "sg:e1")], Loaded::default());
    let created = stored(&plan1, plan1.messages[0].record.id.as_str());
    assert!(!created.registered);
    assert_eq!(created.state.status, Status::Delivered);
    assert_eq!(created.fields.provider_message_id.as_deref(), Some("pm-1"));

    // Second batch: the sender registers it under its own id.
    let mut r = reg(Some("order-7"));
    r.fields.provider = Some(ProviderName::parse("sendgrid").expect("name"));
    r.fields.provider_message_id = Some("pm-1".into());
    let subs = vec![sub("sub_a", None, false)];
    let plan2 = run(
        &[Command::Register(Box::new(r))],
        Loaded { messages: vec![created.clone()], subscriptions: subs, ..Loaded::default() },
    );
    let merged = stored(&plan2, "order-7");
    assert!(merged.registered);
    assert_eq!(merged.state.status, Status::Delivered);
    assert_eq!(merged.state.milestones.delivered, Some(NOW - 5));
    assert_eq!(merged.fields.recipient.as_deref(), Some("someone@example.com"));
    assert_eq!(merged.fields.provider_message_id.as_deref(), Some("pm-1"));
    assert_eq!(plan2.merges, vec![(created.id.clone(), merged.id.clone())]);
    assert!(plan2.messages.iter().all(|m| m.record.id != created.id), "the old record is not rewritten");
    // seq keeps growing past what subscribers saw for either record.
    assert!(merged.state.seq > created.state.seq);
    let last: Value = serde_json::from_slice(&plan2.deliveries.last().expect("delivery").payload).expect("json");
    assert_eq!(last["data"]["status"], "DELIVERED");

    // Without an id of its own, the registration completes the record.
    let mut r = reg(None);
    r.fields.provider = Some(ProviderName::parse("sendgrid").expect("name"));
    r.fields.provider_message_id = Some("pm-1".into());
    let plan3 = run(&[Command::Register(Box::new(r))], Loaded { messages: vec![created.clone()], ..Loaded::default() });
    assert_eq!(plan3.outcomes[0], Outcome::Registered { id: created.id.clone(), created: true });
    assert!(plan3.merges.is_empty());
    assert_eq!(stored(&plan3, created.id.as_str()).state.status, Status::Delivered);
}

#[test]
fn merges_inside_one_batch_never_touch_the_database_twice() {
    let mut r = reg(Some("order-8"));
    r.fields.provider = Some(ProviderName::parse("sendgrid").expect("name"));
    r.fields.provider_message_id = Some("pm-2".into());
    let plan = run(
        &[
            callback("pm-2", Status::Sent, "sg:a"),
            Command::Register(Box::new(r)),
            callback("pm-2", Status::Opened, "sg:b"),
        ],
        Loaded::default(),
    );
    assert!(plan.merges.is_empty());
    assert_eq!(plan.messages.len(), 1);
    let m = stored(&plan, "order-8");
    assert_eq!(m.state.status, Status::Opened);
    assert!(plan.events.iter().all(|e| e.message_id.as_str() == "order-8"));
    assert_eq!(plan.events.len(), 3);
}

#[test]
fn duplicates_change_nothing() {
    let loaded = Loaded { existing_dedupe_keys: ["sg:old".to_owned()].into(), ..Loaded::default() };
    let plan = run(
        &[
            callback("pm-3", Status::Delivered, "sg:old"),
            callback("pm-3", Status::Delivered, "sg:new"),
            callback("pm-3", Status::Delivered, "sg:new"),
        ],
        loaded,
    );
    let flags: Vec<_> = plan.outcomes.iter().map(|o| matches!(o, Outcome::Applied { duplicate: true, .. })).collect();
    assert_eq!(flags, vec![true, false, true]);
    assert_eq!(plan.events.len(), 1);
    assert_eq!(plan.messages.len(), 1);
}

#[test]
fn the_sender_api_does_not_create_messages() {
    let command = Command::Event {
        target: Target { id: Some(MessageId::parse("nobody").expect("id")), provider: None },
        event: ev(Status::Sent, "api:x", NOW),
        create: false,
        want_message: true,
        guard: None,
    };
    let plan = run(&[command], Loaded::default());
    assert_eq!(plan.outcomes, vec![Outcome::NotFound]);
    assert!(plan.messages.is_empty() && plan.events.is_empty());
}

#[test]
fn sender_events_attach_the_provider_id() {
    let mut m = MessageRecord::new(MessageId::parse("m5").expect("id"), NOW - 100);
    m.registered = true;
    let command = Command::Event {
        target: Target { id: Some(m.id.clone()), provider: Some(pref("pm-5")) },
        event: ev(Status::Sent, "api:s", NOW - 50),
        create: false,
        want_message: true,
        guard: None,
    };
    let plan =
        run(&[command, callback("pm-5", Status::Delivered, "sg:d")], Loaded { messages: vec![m], ..Loaded::default() });
    let Outcome::Applied { message: Some(message), changed: true, .. } = &plan.outcomes[0] else {
        panic!("{:?}", plan.outcomes[0]);
    };
    assert_eq!(message.state.status, Status::Sent);
    assert_eq!(stored(&plan, "m5").state.status, Status::Delivered);
    assert_eq!(stored(&plan, "m5").fields.provider.as_ref().map(ProviderName::as_str), Some("sendgrid"));
}

#[test]
fn cancel_only_before_sending() {
    let mut queued = MessageRecord::new(MessageId::parse("q").expect("id"), NOW);
    queued.registered = true;
    let mut sent = queued.clone();
    sent.id = MessageId::parse("s").expect("id");
    sent.state.apply(Status::Sent, NOW, None, None);
    let loaded = Loaded { messages: vec![queued, sent], ..Loaded::default() };
    let plan = run(
        &[
            Command::Cancel { id: MessageId::parse("q").expect("id"), ts: NOW },
            Command::Cancel { id: MessageId::parse("q").expect("id"), ts: NOW },
            Command::Cancel { id: MessageId::parse("s").expect("id"), ts: NOW },
            Command::Cancel { id: MessageId::parse("zz").expect("id"), ts: NOW },
        ],
        loaded,
    );
    assert!(matches!(&plan.outcomes[0], Outcome::Canceled { message } if message.state.status == Status::Canceled));
    assert!(matches!(&plan.outcomes[1], Outcome::Canceled { .. }));
    assert_eq!(plan.outcomes[2], Outcome::Conflict { status: Status::Sent });
    assert_eq!(plan.outcomes[3], Outcome::NotFound);
    assert_eq!(plan.events.len(), 1);
}

#[test]
fn subscriptions_hear_what_they_asked_for() {
    let subs = vec![
        sub("sub_all", None, false),
        sub("sub_bounces", Some(vec![Status::Undeliverable]), false),
        sub("sub_everything", None, true),
    ];
    let mut complaint = NormalizedEvent::status(Status::Sent, NOW, "sg:c".into());
    complaint.kind = EventKind::Complained;
    let mut bounce = NormalizedEvent::status(Status::Undeliverable, NOW, "sg:b".into());
    bounce.reason = Some(Reason::Bounced);
    let commands = [
        callback("pm-9", Status::Delivered, "sg:d"),
        Command::Event {
            target: Target { id: None, provider: Some(pref("pm-9")) },
            event: Box::new(complaint),
            create: true,
            want_message: false,
            guard: None,
        },
        Command::Event {
            target: Target { id: None, provider: Some(pref("pm-9")) },
            event: Box::new(bounce),
            create: true,
            want_message: false,
            guard: None,
        },
    ];
    let plan = run(&commands, Loaded { subscriptions: subs, ..Loaded::default() });
    let to = |s: &str| plan.deliveries.iter().filter(|d| d.subscription_id.as_str() == s).count();
    assert_eq!(to("sub_all"), 2, "DELIVERED and UNDELIVERABLE");
    assert_eq!(to("sub_bounces"), 1);
    assert_eq!(to("sub_everything"), 3, "both changes and the complaint");
    let complaint_delivery = plan
        .deliveries
        .iter()
        .find(|d| d.kind == DeliveryKind::Event)
        .map(|d| serde_json::from_slice::<Value>(&d.payload).expect("json"))
        .expect("event delivery");
    assert_eq!(complaint_delivery["event"]["type"], "COMPLAINED");
    assert_eq!(complaint_delivery["data"]["status"], "DELIVERED");
    let seqs: Vec<_> =
        plan.deliveries.iter().filter(|d| d.subscription_id.as_str() == "sub_all").map(|d| d.seq).collect();
    assert_eq!(seqs, vec![1, 2]);
}

#[test]
fn lookups_cover_every_key() {
    let mut r = reg(Some("m1"));
    r.idempotency_key = Some("k".into());
    r.fields.provider = Some(ProviderName::parse("sendgrid").expect("name"));
    r.fields.provider_message_id = Some("pm".into());
    let l = Lookups::for_batch(&[
        Command::Register(Box::new(r)),
        callback("pm", Status::Sent, "sg:1"),
        Command::Cancel { id: MessageId::parse("m2").expect("id"), ts: 0 },
    ]);
    assert_eq!(l.ids.len(), 2);
    assert_eq!(l.provider_refs, vec![pref("pm")]);
    assert_eq!(l.idempotency_keys, vec!["k".to_owned()]);
    // Registrations and cancels have keys of their own, looked up too.
    assert_eq!(l.dedupe_keys, vec!["canceled:m2".to_owned(), "enqueued:m1".to_owned(), "sg:1".to_owned()]);
}

fn registered(id: &str, pmid: Option<&str>) -> MessageRecord {
    let mut m = MessageRecord::new(MessageId::parse(id).expect("id"), NOW - 1_000);
    m.registered = true;
    if let Some(pmid) = pmid {
        m.fields.provider = Some(ProviderName::parse("sendgrid").expect("name"));
        m.fields.provider_message_id = Some(pmid.into());
    }
    m
}

fn reg_with_ref(id: Option<&str>, pmid: &str) -> Command {
    let mut r = reg(id);
    r.fields.provider = Some(ProviderName::parse("sendgrid").expect("name"));
    r.fields.provider_message_id = Some(pmid.into());
    Command::Register(Box::new(r))
}

#[test]
fn registered_messages_are_never_merged_away() {
    let a = registered("a1", Some("X-MSG-1"));
    let loaded = || Loaded { messages: vec![a.clone()], ..Loaded::default() };
    // Another registration with the same provider id: refused, `a1` untouched.
    let plan = run(&[reg_with_ref(Some("b1"), "X-MSG-1")], loaded());
    assert_eq!(plan.outcomes, vec![Outcome::ProviderIdTaken { owner: a.id.clone() }]);
    assert!(plan.messages.is_empty() && plan.merges.is_empty() && plan.events.is_empty());
    // Without an id it is refused too (it may be another recipient's message).
    let plan = run(&[reg_with_ref(None, "X-MSG-1")], loaded());
    assert_eq!(plan.outcomes, vec![Outcome::ProviderIdTaken { owner: a.id.clone() }]);
    // Two registrations sharing a provider id in one batch: the second is refused.
    let plan = run(&[reg_with_ref(Some("c1"), "X-MSG-2"), reg_with_ref(Some("d1"), "X-MSG-2")], Loaded::default());
    assert_eq!(plan.outcomes[1], Outcome::ProviderIdTaken { owner: MessageId::parse("c1").expect("id") });
    assert_eq!(plan.messages.len(), 1);
    // A sender event carrying another registered message's provider id.
    let b = registered("b2", None);
    let command = Command::Event {
        target: Target { id: Some(b.id.clone()), provider: Some(pref("X-MSG-1")) },
        event: ev(Status::Sent, "api:b2", NOW),
        create: false,
        want_message: true,
        guard: None,
    };
    let plan = run(&[command], Loaded { messages: vec![a.clone(), b], ..Loaded::default() });
    assert_eq!(plan.outcomes, vec![Outcome::ProviderIdTaken { owner: a.id.clone() }]);
    assert!(plan.events.is_empty());
}

#[test]
fn a_callback_naming_one_message_by_id_leaves_anothers_provider_id_alone() {
    let a = registered("a1", Some("X-MSG-1"));
    let y = registered("y1", None);
    let command = Command::Event {
        target: Target { id: Some(y.id.clone()), provider: Some(pref("X-MSG-1")) },
        event: ev(Status::Delivered, "sg:d", NOW),
        create: true,
        want_message: false,
        guard: None,
    };
    let plan = run(&[command], Loaded { messages: vec![a, y], ..Loaded::default() });
    assert!(plan.merges.is_empty());
    assert_eq!(stored(&plan, "y1").state.status, Status::Delivered);
    assert_eq!(stored(&plan, "y1").fields.provider_message_id, None);
    assert!(plan.messages.iter().all(|m| m.record.id.as_str() != "a1"));
}

#[test]
fn deliveries_of_a_record_merged_in_the_same_batch_are_dropped() {
    let subs = vec![sub("sub_a", None, false)];
    let mut r = reg(Some("order-9"));
    r.fields.provider = Some(ProviderName::parse("sendgrid").expect("name"));
    r.fields.provider_message_id = Some("pm-9".into());
    let plan = run(
        &[callback("pm-9", Status::Delivered, "sg:1"), Command::Register(Box::new(r))],
        Loaded { subscriptions: subs, ..Loaded::default() },
    );
    assert!(plan.deliveries.iter().all(|d| d.message_id.as_str() == "order-9"), "no delivery for an id never written");
    for d in &plan.deliveries {
        let body: Value = serde_json::from_slice(&d.payload).expect("json");
        assert_eq!(body["data"]["id"], "order-9");
    }
    let last: Value = serde_json::from_slice(&plan.deliveries.last().expect("delivery").payload).expect("json");
    assert_eq!(last["data"]["status"], "DELIVERED");
}

#[test]
fn later_commands_for_a_merged_record_follow_it() {
    // An anonymous record (made from provider-id-only callbacks) is merged
    // by a registration; a later command in the same batch naming the old
    // id (as listed by GET /messages) lands on the survivor.
    let mut anonymous = MessageRecord::new(MessageId::generate(), NOW - 100);
    anonymous.fields.provider = Some(ProviderName::parse("sendgrid").expect("name"));
    anonymous.fields.provider_message_id = Some("pm-10".into());
    anonymous.state.apply(Status::Sent, NOW - 90, None, None);
    let old_id = anonymous.id.clone();
    let mut r = reg(Some("final"));
    r.fields.provider = Some(ProviderName::parse("sendgrid").expect("name"));
    r.fields.provider_message_id = Some("pm-10".into());
    let by_old_id = Command::Event {
        target: Target { id: Some(old_id.clone()), provider: None },
        event: ev(Status::Opened, "api:x", NOW - 5),
        create: false,
        want_message: false,
        guard: None,
    };
    let plan =
        run(&[Command::Register(Box::new(r)), by_old_id], Loaded { messages: vec![anonymous], ..Loaded::default() });
    assert_eq!(plan.merges, vec![(old_id, MessageId::parse("final").expect("id"))]);
    assert_eq!(plan.messages.len(), 1);
    assert_eq!(stored(&plan, "final").state.status, Status::Opened);
    assert!(plan.events.iter().all(|e| e.message_id.as_str() == "final"));
}

#[test]
fn a_registration_whose_enqueued_key_exists_adds_no_second_entry() {
    let loaded = Loaded { existing_dedupe_keys: ["enqueued:m1".to_owned()].into(), ..Loaded::default() };
    let plan = run(&[Command::Register(Box::new(reg(Some("m1"))))], loaded);
    assert!(matches!(plan.outcomes[0], Outcome::Registered { created: true, .. }));
    assert!(plan.events.is_empty(), "the existing ENQUEUED entry is not written again");
}

#[test]
fn one_send_to_several_recipients_stays_several_messages() {
    // SendGrid personalizations / Mailgun recipient variables: one provider
    // id, each recipient's callbacks naming its own hookrelay id.
    let named = |id: &str, key: &str| Command::Event {
        target: Target { id: Some(MessageId::parse(id).expect("id")), provider: Some(pref("X-BATCH")) },
        event: ev(Status::Delivered, key, NOW - 5),
        create: true,
        want_message: false,
        guard: None,
    };
    let plan = run(&[named("batch-a", "sg:a"), named("batch-b", "sg:b")], Loaded::default());
    assert!(plan.merges.is_empty());
    assert_eq!(plan.messages.len(), 2, "two messages");
    assert_eq!(stored(&plan, "batch-a").fields.provider_message_id.as_deref(), Some("X-BATCH"));
    assert_eq!(stored(&plan, "batch-b").fields.provider_message_id, None, "the first keeps the shared provider id");
    assert_eq!(stored(&plan, "batch-b").state.status, Status::Delivered);
    // Across batches too.
    let a = stored(&plan, "batch-a");
    let plan = run(&[named("batch-c", "sg:c")], Loaded { messages: vec![a], ..Loaded::default() });
    assert!(plan.merges.is_empty());
    assert!(plan.messages.iter().any(|m| m.record.id.as_str() == "batch-c"));
    // A registration claiming the provider id another named message holds is refused.
    let plan =
        run(&[reg_with_ref(Some("batch-z"), "X-BATCH")], Loaded { messages: vec![stored_a()], ..Loaded::default() });
    assert_eq!(plan.outcomes, vec![Outcome::ProviderIdTaken { owner: MessageId::parse("batch-a").expect("id") }]);
}

fn stored_a() -> MessageRecord {
    let mut a = MessageRecord::new(MessageId::parse("batch-a").expect("id"), NOW - 100);
    a.fields.provider = Some(ProviderName::parse("sendgrid").expect("name"));
    a.fields.provider_message_id = Some("X-BATCH".into());
    a
}

#[test]
fn a_message_made_from_callbacks_takes_their_recipient() {
    let mut first = callback("pm-1", Status::Delivered, "k1");
    let mut second = callback("pm-1", Status::Opened, "k2");
    if let Command::Event { event, .. } = &mut first {
        event.recipient = Some("ada@example.com".into());
    }
    if let Command::Event { event, .. } = &mut second {
        event.recipient = Some("someone-else@example.com".into());
    }
    let plan = run(&[first, second], Loaded::default());
    assert_eq!(plan.messages.len(), 1);
    assert_eq!(plan.messages[0].record.fields.recipient.as_deref(), Some("ada@example.com"), "the first one is kept");

    // A recipient the sender registered is never replaced by a callback's.
    let mut registered = MessageRecord::new(MessageId::parse("m1").expect("id"), NOW - 100);
    registered.registered = true;
    registered.fields.recipient = Some("registered@example.com".into());
    let mut named = callback("pm-2", Status::Delivered, "k3");
    if let Command::Event { target, event, .. } = &mut named {
        target.id = Some(MessageId::parse("m1").expect("id"));
        event.recipient = Some("callback@example.com".into());
    }
    let plan = run(&[named], Loaded { messages: vec![registered], ..Loaded::default() });
    assert_eq!(stored(&plan, "m1").fields.recipient.as_deref(), Some("registered@example.com"));

    // One too long for the list index stays in the history only.
    let mut long = callback("pm-3", Status::Delivered, "k4");
    if let Command::Event { event, .. } = &mut long {
        event.recipient = Some("x".repeat(MAX_RECIPIENT_LEN + 1));
    }
    let plan = run(&[long], Loaded::default());
    assert_eq!(plan.messages[0].record.fields.recipient, None);
}

#[test]
fn a_single_use_token_may_not_carry_another_body() {
    let guarded = |key: &str, hash: &str| {
        let mut command = callback("pm-g", Status::Delivered, key);
        if let Command::Event { guard, .. } = &mut command {
            *guard = Some(Box::new(ReplayGuard {
                source: "mailgun".into(),
                token: "tok-1".into(),
                body_hash: hash.into(),
                expires_at: NOW + 900_000,
            }));
        }
        command
    };
    // First use: recorded, and the token is remembered.
    let plan = run(&[guarded("k-g1", "hash-a")], Loaded::default());
    assert!(matches!(plan.outcomes[0], Outcome::Applied { duplicate: false, .. }));
    assert_eq!(plan.tokens.len(), 1);
    // The same token with the same body (a retry) is a duplicate; with
    // another body it is refused, in the same batch or a later one.
    let plan = run(&[guarded("k-g1", "hash-a"), guarded("k-g2", "hash-b")], Loaded::default());
    assert!(matches!(plan.outcomes[0], Outcome::Applied { duplicate: false, .. }));
    assert_eq!(plan.outcomes[1], Outcome::Replayed);
    assert_eq!(plan.events.len(), 1, "the replayed body records nothing");
    let known = HashMap::from([(("mailgun".to_owned(), "tok-1".to_owned()), "hash-a".to_owned())]);
    let loaded = || Loaded {
        tokens: known.clone(),
        existing_dedupe_keys: HashSet::from(["k-g1".to_owned()]),
        ..Loaded::default()
    };
    let plan = run(&[guarded("k-g1", "hash-a")], loaded());
    assert!(matches!(plan.outcomes[0], Outcome::Applied { duplicate: true, .. }));
    assert!(plan.tokens.is_empty());
    let plan = run(&[guarded("k-g3", "hash-c")], loaded());
    assert_eq!(plan.outcomes, vec![Outcome::Replayed]);
    assert!(plan.events.is_empty() && plan.messages.is_empty());
}

#[test]
fn history_types_are_every_status_and_the_events_that_change_none() {
    for status in Status::ALL {
        assert!(is_history_type(status.as_str()), "{status:?}");
    }
    for kind in [EventKind::Complained, EventKind::Unsubscribed, EventKind::Resubscribed, EventKind::Unknown] {
        assert!(is_history_type(kind.history_type()), "{kind:?}");
    }
    assert_eq!(HISTORY_TYPES.len(), Status::ALL.len() + 4);
    assert!(is_history_type("delivered") && !is_history_type("") && !is_history_type("BOUNCE"));
}

#[test]
fn a_failover_records_the_provider_that_sent() {
    // m1 was registered for sendgrid without its id; m2 owns sendgrid's "0".
    let mut m1 = MessageRecord::new(MessageId::parse("m1").expect("id"), NOW - 100);
    m1.registered = true;
    m1.fields.provider = Some(ProviderName::parse("sendgrid").expect("name"));
    let mut m2 = MessageRecord::new(MessageId::parse("m2").expect("id"), NOW - 100);
    m2.registered = true;
    m2.fields.provider = Some(ProviderName::parse("sendgrid").expect("name"));
    m2.fields.provider_message_id = Some("0".into());
    // m1 went out through mailgun as "0" after all.
    let mailgun = ProviderRef::new(ProviderName::parse("mailgun").expect("name"), "0").expect("ref");
    let command = Command::Event {
        target: Target { id: Some(MessageId::parse("m1").expect("id")), provider: Some(mailgun) },
        event: ev(Status::Sent, "k-fo", NOW - 5),
        create: false,
        want_message: true,
        guard: None,
    };
    let plan = run(&[command], Loaded { messages: vec![m1, m2], ..Loaded::default() });
    assert!(matches!(plan.outcomes[0], Outcome::Applied { changed: true, .. }), "{:?}", plan.outcomes);
    let m1 = stored(&plan, "m1");
    assert_eq!(m1.fields.provider.as_ref().map(ProviderName::as_str), Some("mailgun"));
    assert_eq!(m1.fields.provider_message_id.as_deref(), Some("0"), "not sendgrid's \"0\", which m2 holds");
}
