//! The store contract, exercised directly on both backends: merges across
//! batches and concurrent writers on one database.

use std::sync::Arc;

use hookrelay::config::{DatabaseConfig, IngestConfig};
use hookrelay::domain::{MessageFields, MessageId, NormalizedEvent, ProviderName, ProviderRef, Status, Target};
use hookrelay::ingest::Ingest;
use hookrelay::plan::{Command, Outcome, Registration};
use hookrelay::store::Store;
use tokio_util::sync::CancellationToken;

use crate::backend_tests;
use crate::helpers::{Backend, TestDb};

backend_tests!(
    callbacks_before_registration_merge_into_it,
    concurrent_writers_record_each_event_once,
    keys_stored_before_scopes_keep_every_right,
);

async fn open(db: &TestDb) -> Arc<dyn Store> {
    hookrelay::store::open(&DatabaseConfig { url: db.url(), pool_size: 4, ..DatabaseConfig::default() })
        .await
        .expect("open store")
}

fn pref(pmid: &str) -> ProviderRef {
    ProviderRef::new(ProviderName::parse("ses").expect("name"), pmid).expect("ref")
}

fn callback(pmid: &str, status: Status, key: &str, ts: i64) -> Command {
    Command::Event {
        target: Target { id: None, provider: Some(pref(pmid)) },
        event: Box::new(NormalizedEvent::status(status, ts, key.into())),
        create: true,
        want_message: false,
        guard: None,
    }
}

fn registration(id: &str, pmid: &str) -> Command {
    Command::Register(Box::new(Registration {
        id: Some(MessageId::parse(id).expect("id")),
        idempotency_key: None,
        fields: MessageFields {
            recipient: Some("r@example.com".into()),
            provider: Some(ProviderName::parse("ses").expect("name")),
            provider_message_id: Some(pmid.into()),
            tags: vec!["t".into()],
            ..MessageFields::default()
        },
        ts: 2_000,
    }))
}

async fn callbacks_before_registration_merge_into_it(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = open(&db).await;
    let early = store
        .apply_batch(vec![callback("ses-1", Status::Delivered, "ses:a", 1_500)].into(), 3_000, None)
        .await
        .expect("first batch")
        .outcomes;
    let Outcome::Applied { id: Some(temporary), .. } = &early[0] else { panic!("{early:?}") };
    let opened = store
        .apply_batch(vec![callback("ses-1", Status::Opened, "ses:b", 1_600)].into(), 3_100, None)
        .await
        .expect("second")
        .outcomes;
    assert!(matches!(&opened[0], Outcome::Applied { id: Some(same), .. } if same == temporary));

    let registered =
        store.apply_batch(vec![registration("mine", "ses-1")].into(), 4_000, None).await.expect("register").outcomes;
    assert_eq!(registered[0], Outcome::Registered { id: MessageId::parse("mine").expect("id"), created: true });
    assert!(store.get_message(temporary).await.expect("read").is_none(), "the callback record was merged away");
    let merged = store.get_message(&MessageId::parse("mine").expect("id")).await.expect("read").expect("exists");
    assert_eq!(merged.state.status, Status::Opened);
    assert_eq!(merged.state.milestones.delivered, Some(1_500));
    assert_eq!(merged.state.milestones.enqueued, 1_500);
    assert_eq!(merged.fields.provider_message_id.as_deref(), Some("ses-1"));
    assert!(merged.registered);
    let history = store.history(&merged.id, None).await.expect("history").expect("exists");
    let kinds: Vec<_> = history.iter().map(|h| h.kind.as_str()).collect();
    assert_eq!(kinds, ["DELIVERED", "OPENED", "ENQUEUED"]);

    // Later callbacks by provider id land on the merged record.
    store
        .apply_batch(vec![callback("ses-1", Status::Clicked, "ses:c", 5_000)].into(), 5_000, None)
        .await
        .expect("later");
    let merged = store.get_message(&merged.id).await.expect("read").expect("exists");
    assert_eq!(merged.state.status, Status::Clicked);
    let tagged = store
        .list_messages(&hookrelay::store::MessageQuery { tag: Some("t".into()), limit: 10, ..Default::default() })
        .await
        .expect("list");
    assert_eq!(tagged.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["mine"]);
}

async fn concurrent_writers_record_each_event_once(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    // Two pipelines on one database, as two hookrelay processes would have.
    let mut handles = Vec::new();
    let mut ingests = Vec::new();
    let stop = CancellationToken::new();
    let writers = if backend == Backend::Postgres { 2 } else { 1 };
    for _ in 0..writers {
        let (ingest, writer) = Ingest::new(open(&db).await, &IngestConfig::default());
        handles.push(tokio::spawn(writer.run(stop.clone())));
        ingests.push(ingest);
    }
    let mut submissions = Vec::new();
    for round in 0..20 {
        for (n, ingest) in ingests.iter().enumerate() {
            for copy in 0..3 {
                let ingest = ingest.clone();
                let commands: Vec<Command> = (0..10)
                    .map(|i| {
                        callback(&format!("pm-{i}"), Status::Delivered, &format!("ses:{round}:{i}"), 1_000 + round)
                    })
                    .collect();
                submissions.push(tokio::spawn(async move {
                    let _ = (n, copy);
                    ingest.submit(commands).await
                }));
            }
        }
    }
    let mut applied = 0;
    for s in submissions {
        let outcomes = s.await.expect("join").expect("committed");
        applied += outcomes.iter().filter(|o| matches!(o, Outcome::Applied { duplicate: false, .. })).count();
    }
    assert_eq!(applied, 200, "each of the 200 distinct events is applied exactly once");
    let store = open(&db).await;
    let mut total = 0;
    for i in 0..10 {
        let all = store
            .list_messages(&hookrelay::store::MessageQuery { limit: 100, ..Default::default() })
            .await
            .expect("list");
        assert_eq!(all.len(), 10, "one message per provider id");
        let m =
            all.iter().find(|m| m.fields.provider_message_id.as_deref() == Some(&format!("pm-{i}"))).expect("message");
        total += store.history(&m.id, None).await.expect("history").expect("exists").len();
    }
    assert_eq!(total, 200);
    stop.cancel();
    for h in handles {
        h.await.expect("writer");
    }
}

/// A database migrated by an earlier version, with an API key in it: the
/// key keeps working, as an admin key, with an id to manage it by.
async fn keys_stored_before_scopes_keep_every_right(backend: Backend) {
    let Some(db) = TestDb::empty(backend).await else { return };
    let (migrations, before) = match backend {
        Backend::Sqlite => (hookrelay::store::sqlite::MIGRATIONS, 4),
        Backend::Postgres => (hookrelay::store::postgres::MIGRATIONS, 6),
    };
    let mut sql =
        String::from("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL);\n");
    for (version, migration) in migrations.iter().filter(|(v, _)| *v <= before) {
        sql.push_str(migration);
        sql.push_str(&format!("\nINSERT INTO schema_migrations VALUES ({version}, 1);\n"));
    }
    let key = "hr_an-old-key-from-before-scopes-0123456789";
    let hash = hookrelay::http::auth::hash_key(key);
    sql.push_str(&format!("INSERT INTO api_keys (hash, label, created_at) VALUES ('{hash}', 'old', 5);"));
    db.execute(&sql).await;

    let store = open(&db).await;
    let keys = store.api_keys().await.expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].scopes, hookrelay::domain::Scopes::ADMIN);
    assert_eq!(keys[0].name, "old");
    assert!(keys[0].id.as_str().starts_with("key_"), "{:?}", keys[0].id);
    let checked = hookrelay::http::auth::ApiKeys::load(&[], store.clone()).await.check(key).await;
    assert_eq!(checked.map(|c| c.scopes), Some(hookrelay::domain::Scopes::ADMIN));
}
