//! Micro-benchmarks of the pure cores outside the callback path: the status
//! state machine, outbound webhook signing and tracking tokens.
//!
//! Each case is checked once before it is timed (the lifecycle ends where
//! the rules say, signatures verify, tokens round-trip), so the figures are
//! those of the code doing its real work.
//!
//! Run: `cargo bench --bench core` (add `-- --quick` for a fast look).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hookrelay::domain::outbox::payload;
use hookrelay::domain::signing::{self, Scheme, SigningKey, VerifyKey};
use hookrelay::domain::status::supersedes;
use hookrelay::domain::{Channel, MessageId, MessageRecord, MessageState, ProviderName, Reason, Status};
use hookrelay::tracking::token::{Claims, Keyring, TokenKind};
use serde_json::json;

/// Epoch ms the benchmarks' messages were enqueued at.
const T0: i64 = 1_700_000_000_000;

/// One status event: status, time, reason, provider error.
type StatusEvent = (Status, i64, Option<Reason>, Option<&'static str>);

/// Applies `events` to a fresh state, as the planner does for one message.
fn run_lifecycle(events: &[StatusEvent]) -> MessageState {
    let mut state = MessageState::new(T0);
    for &(status, ts, reason, error) in events {
        state.apply(status, ts, reason, error);
    }
    state
}

/// `status_engine/*`: [`MessageState::apply`] over whole lifecycles, and
/// [`supersedes`] over every pair of statuses.
fn status_engine(c: &mut Criterion) {
    let in_order: Vec<StatusEvent> =
        [Status::Enqueued, Status::Sent, Status::Delivered, Status::Opened, Status::Clicked]
            .into_iter()
            .enumerate()
            .map(|(i, s)| (s, T0 + i as i64 * 1_000, None, None))
            .collect();
    // What providers really send for one message, in a scrambled arrival
    // order (batches and retries reorder): a deferral, a late bounce after
    // the delivery, repeated opens and clicks. The order is fixed so that
    // runs compare.
    let shuffled: Vec<StatusEvent> = vec![
        (Status::Opened, T0 + 60_000, None, None),
        (Status::Delivered, T0 + 5_000, None, None),
        (Status::Clicked, T0 + 90_000, None, None),
        (Status::Sent, T0 + 1_000, None, None),
        (Status::Undeliverable, T0 + 30_000, Some(Reason::Bounced), Some("550 5.1.1 mailbox unavailable")),
        (Status::Delayed, T0 + 2_000, None, Some("421 4.7.0 try again later")),
        (Status::Opened, T0 + 45_000, None, None),
        (Status::Enqueued, T0, None, None),
        (Status::Clicked, T0 + 120_000, None, None),
        (Status::Opened, T0 + 300_000, None, None),
    ];
    // The rules: the final status is the highest whatever the order, and
    // milestones keep the earliest time.
    let ordered = run_lifecycle(&in_order);
    assert_eq!((ordered.status, ordered.seq), (Status::Clicked, 4));
    let scrambled = run_lifecycle(&shuffled);
    assert_eq!(scrambled.status, Status::Clicked);
    assert_eq!(scrambled.milestones.opened, Some(T0 + 45_000));
    assert_eq!(scrambled.milestones.sent, Some(T0 + 1_000));

    let mut group = c.benchmark_group("status_engine");
    for (name, events) in [("apply/lifecycle-in-order", &in_order), ("apply/lifecycle-shuffled", &shuffled)] {
        group.throughput(Throughput::Elements(events.len() as u64));
        group.bench_function(name, |b| b.iter(|| run_lifecycle(black_box(events))));
    }
    let pairs = Status::ALL.len() * Status::ALL.len();
    group.throughput(Throughput::Elements(pairs as u64));
    group.bench_function("supersedes/all-pairs", |b| {
        b.iter(|| {
            let mut replaced = 0u32;
            for incoming in black_box(Status::ALL) {
                for current in black_box(Status::ALL) {
                    replaced += u32::from(supersedes(incoming, current));
                }
            }
            replaced
        })
    });
    group.finish();
}

/// A `message:updated` payload as the planner builds it
/// ([`hookrelay::domain::outbox::payload`]) for a registered, clicked email:
/// 562 bytes, about what hookrelay sends for a registered email.
fn outbound_payload() -> Vec<u8> {
    let id = MessageId::parse("msg_01HZX3RELAYEXAMPLE0000000000").expect("id");
    let mut record = MessageRecord::new(id, T0);
    record.registered = true;
    record.fields.recipient = Some("recipient@example.com".into());
    record.fields.channel = Some(Channel::Email);
    record.fields.provider = Some(ProviderName::parse("sendgrid").expect("provider"));
    record.fields.provider_message_id = Some("wrfRRvF7Q0GgwUo2CvDmEA".into());
    record.fields.notification = Some("welcome-email".into());
    record.fields.event = Some("user-signed-up".into());
    record.fields.tags = vec!["onboarding".into(), "welcome".into()];
    record.fields.list = Some("product-updates".into());
    record.fields.metadata =
        Some(json!({"account": "acct_42", "plan": "team", "locale": "en-GB", "campaign": "autumn-2023"}));
    for (status, ts) in [(Status::Sent, T0 + 1_000), (Status::Delivered, T0 + 5_000), (Status::Clicked, T0 + 90_000)] {
        record.state.apply(status, ts, None, None);
    }
    payload(&record, "2023-11-14T22:14:50.123Z", None)
}

/// `outbound_signing/<scheme>/<n>-secret(s)`: the headers of one delivery,
/// with one secret and with two (a rotation signs with both).
fn outbound_signing(c: &mut Criterion) {
    let payload = outbound_payload();
    assert!((550..=650).contains(&payload.len()), "payload is {} bytes", payload.len());
    let secrets = [
        SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret"),
        SigningKey::parse("whsec_c2VjcmV0LW9mLWFub3RoZXItZW5kcG9pbnQ=").expect("secret"),
    ];
    let ed25519 = SigningKey::parse("whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=").expect("signing key");
    let id = "dlv_0190f3c4a1b27c3e9d4f5a6b7c8d9e0f";
    let now = T0 + 90_500;

    // Each scheme's headers verify with each secret (`delivery::signing`'s
    // own checks, which subscribers mirror).
    let one = [&secrets[0]];
    let both = [&secrets[0], &secrets[1]];
    let standard = signing::headers(Scheme::StandardWebhooks, &both, id, now, &payload);
    let value = |headers: &[(&str, String)], name: &str| {
        headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()).expect("header present")
    };
    let courier = signing::headers(Scheme::Courier, &both, id, now, &payload);
    for secret in &secrets {
        let (ts, sig) = (value(&standard, "webhook-timestamp"), value(&standard, "webhook-signature"));
        let key = VerifyKey::parse(secret.expose()).expect("secret");
        assert_eq!(signing::verify_standard(&key, id, &ts, &sig, &payload, now, 300), Ok(()));
        let VerifyKey::Hmac(secret) = key else { unreachable!("a secret") };
        let courier_header = value(&courier, "courier-signature");
        assert_eq!(signing::verify_courier(&secret, &courier_header, &payload, now, 300), Ok(()));
    }
    let ed = signing::headers(Scheme::StandardWebhooksEd25519, &[&ed25519], id, now, &payload);
    let public = VerifyKey::parse(&ed25519.verification_key()).expect("public key");
    let (ts, sig) = (value(&ed, "webhook-timestamp"), value(&ed, "webhook-signature"));
    assert_eq!(signing::verify_standard(&public, id, &ts, &sig, &payload, now, 300), Ok(()));

    let mut group = c.benchmark_group("outbound_signing");
    group.throughput(Throughput::Bytes(payload.len() as u64));
    for scheme in [Scheme::StandardWebhooks, Scheme::Courier] {
        for (label, keys) in [("1-secret", &one[..]), ("2-secrets", &both[..])] {
            group.bench_with_input(BenchmarkId::new(scheme.as_str(), label), &keys, |b, keys| {
                b.iter(|| signing::headers(scheme, keys, id, black_box(now), black_box(&payload)))
            });
        }
    }
    let ed_keys = [&ed25519];
    group.bench_function(BenchmarkId::new(Scheme::StandardWebhooksEd25519.as_str(), "1-key"), |b| {
        b.iter(|| signing::headers(Scheme::StandardWebhooksEd25519, &ed_keys, id, black_box(now), black_box(&payload)))
    });
    group.finish();
}

/// `tracking_tokens/{sign,verify}/{open,click}`: what every tracked email
/// costs at send time (sign) and on every pixel load or click (verify).
fn tracking_tokens(c: &mut Criterion) {
    let keyring = Keyring::new([("k2024", &b"tracking-secret-of-at-least-32-bytes-0001"[..])]).expect("keyring");
    let message = MessageId::parse("msg_01HZX3RELAYEXAMPLE0000000000").expect("id");
    let issued = 1_700_000_000;
    let open = Claims::open(message.clone(), issued);
    let click = Claims::click(
        message,
        "https://example.com/products/autumn-collection?utm_source=newsletter&utm_medium=email&utm_campaign=autumn",
        issued,
    )
    .expect("a trackable URL");
    let open_token = keyring.sign(&open);
    let click_token = keyring.sign(&click);
    assert_eq!(keyring.verify(&open_token, TokenKind::Open), Ok(open.clone()));
    assert_eq!(keyring.verify(&click_token, TokenKind::Click), Ok(click.clone()));

    let mut group = c.benchmark_group("tracking_tokens");
    group.bench_function("sign/open", |b| b.iter(|| keyring.sign(black_box(&open))));
    group.bench_function("sign/click", |b| b.iter(|| keyring.sign(black_box(&click))));
    group.bench_function("verify/open", |b| b.iter(|| keyring.verify(black_box(&open_token), TokenKind::Open)));
    group.bench_function("verify/click", |b| b.iter(|| keyring.verify(black_box(&click_token), TokenKind::Click)));
    group.finish();
}

criterion_group!(benches, status_engine, outbound_signing, tracking_tokens);
criterion_main!(benches);
