//! `spawn_app()`: the real server on port 0 with a fresh database per test.
//! SQLite: a file in a temporary directory. PostgreSQL: a database cloned
//! from a migrated template (`TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). When no PostgreSQL server is
//! reachable the PostgreSQL tests are skipped with a message, unless
//! `HOOKRELAY_REQUIRE_POSTGRES=1`, which makes that a failure.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Once;

use hookrelay::domain::Secret;
use hookrelay::scratch::{self, Schema, ScratchDb};
use hookrelay::{Application, Config};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const API_KEY: &str = "test-api-key-0123456789";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh database for one test ([`ScratchDb`]): the file is deleted, or
/// the database dropped, when the test ends.
#[derive(Debug)]
pub struct TestDb(ScratchDb);

impl TestDb {
    pub async fn new(backend: Backend) -> Option<TestDb> {
        TestDb::create(backend, Schema::Migrated).await
    }

    /// A database with no schema at all (migration tests build old ones).
    pub async fn empty(backend: Backend) -> Option<TestDb> {
        TestDb::create(backend, Schema::Empty).await
    }

    async fn create(backend: Backend, schema: Schema) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => Some(TestDb(ScratchDb::sqlite("hookrelay.db").expect("temp dir"))),
            Backend::Postgres => {
                let admin_url = scratch::admin_url();
                if scratch::connect(&admin_url).await.is_err() {
                    skip_postgres(&admin_url);
                    return None;
                }
                let db = ScratchDb::postgres(&admin_url, "hookrelay_test", schema).await;
                Some(TestDb(db.expect("create a scratch database")))
            }
        }
    }

    /// Runs SQL statements directly on the database.
    pub async fn execute(&self, sql: &str) {
        match self.0.dir() {
            Some(dir) => {
                let conn = rusqlite::Connection::open(dir.join("hookrelay.db")).expect("open");
                conn.execute_batch(sql).expect("execute");
            }
            None => {
                let client = scratch::connect(self.0.url()).await.expect("connect");
                client.batch_execute(sql).await.expect("execute");
            }
        }
    }

    pub fn url(&self) -> String {
        self.0.url().to_owned()
    }

    /// Rows in `table`, read directly from the database.
    pub async fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM {table}");
        match self.0.dir() {
            Some(dir) => {
                let conn = rusqlite::Connection::open(dir.join("hookrelay.db")).expect("open");
                conn.query_row(&sql, [], |r| r.get(0)).expect("count")
            }
            None => {
                let client = scratch::connect(self.0.url()).await.expect("connect");
                client.query_one(&sql, &[]).await.expect("count").get(0)
            }
        }
    }
}

fn postgres_required() -> bool {
    std::env::var("HOOKRELAY_REQUIRE_POSTGRES").is_ok_and(|v| v == "1" || v == "true")
}

/// No server answers: fail when PostgreSQL is required, else say once that
/// the PostgreSQL suite is skipped.
fn skip_postgres(admin_url: &str) {
    if postgres_required() {
        panic!("HOOKRELAY_REQUIRE_POSTGRES=1 but no PostgreSQL server answers at {admin_url}");
    }
    static SKIPPED: Once = Once::new();
    SKIPPED.call_once(|| {
        // Written past the test harness's capture so that it is seen.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** PostgreSQL suite SKIPPED: no server at {admin_url} (set TEST_DATABASE_URL; \
             HOOKRELAY_REQUIRE_POSTGRES=1 makes this an error) ***\n"
        );
    });
}

/// A running hookrelay and a client for it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub store: std::sync::Arc<dyn hookrelay::store::Store>,
    pub generated_key: Option<String>,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    pub db: TestDb,
}

/// The configuration tests start from.
pub fn test_config(db: &TestDb) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.database.url = db.url();
    config.database.pool_size = 4;
    config.auth.api_keys = vec![Secret::new(API_KEY)];
    config.log.level = "warn,deadpool=error".into();
    config
}

/// Starts hookrelay on a fresh database; `None` when the backend is
/// unavailable and allowed to be skipped.
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<TestApp> {
    let db = TestDb::new(backend).await?;
    let mut config = test_config(&db);
    tweak(&mut config);
    Some(start(config, db).await)
}

pub async fn start(config: Config, db: TestDb) -> TestApp {
    start_with(config, db, hookrelay::app::Services::default()).await
}

/// [`start`] with outside services (Amazon SNS) stood in for.
pub async fn start_with(config: Config, db: TestDb, services: hookrelay::app::Services) -> TestApp {
    hookrelay::net::install_crypto_provider();
    hookrelay::telemetry::init_logging(&config.log);
    let app = Application::build_with(config, services).await.expect("build the application");
    let addr = app.local_addr();
    let store = app.store();
    let generated_key = app.generated_api_key().map(str::to_owned);
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(app.run(shutdown.clone()));
    TestApp { addr, client: reqwest::Client::new(), store, generated_key, shutdown, handle: Some(handle), db }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).bearer_auth(API_KEY).send().await.expect("GET");
        read(response).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self.client.patch(self.url(path)).bearer_auth(API_KEY).json(&body).send().await.expect("PATCH");
        read(response).await
    }

    pub async fn delete(&self, path: &str) -> u16 {
        self.client.delete(self.url(path)).bearer_auth(API_KEY).send().await.expect("DELETE").status().as_u16()
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self.client.post(self.url(path)).bearer_auth(API_KEY).json(&body).send().await.expect("POST");
        read(response).await
    }

    /// Posts raw bytes with the given headers (no API key) to `path`.
    pub async fn post_raw(&self, path: &str, headers: &[(&str, &str)], body: impl Into<reqwest::Body>) -> (u16, Value) {
        let mut request = self.client.post(self.url(path)).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        read(request.send().await.expect("POST")).await
    }

    /// The `type`s of a message's history, in order.
    pub async fn history_types(&self, id: &str) -> Vec<String> {
        let (status, body) = self.get(&format!("/messages/{id}/history")).await;
        assert_eq!(status, 200, "{body}");
        body["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|e| e["type"].as_str().expect("type").to_owned())
            .collect()
    }

    /// Registers a message and returns its id.
    pub async fn register(&self, body: Value) -> String {
        let (status, json) = self.post("/messages", body).await;
        assert_eq!(status, 202, "{json}");
        json["requestId"].as_str().expect("requestId").to_owned()
    }

    pub async fn event(&self, id: &str, body: Value) -> Value {
        let (status, json) = self.post(&format!("/messages/{id}/events"), body).await;
        assert_eq!(status, 202, "{json}");
        json
    }

    /// Stops the server (as SIGTERM would) and waits for it; returns the database.
    pub async fn stop(mut self) -> TestDb {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.expect("join").expect("clean shutdown");
        }
        let TestApp { db, .. } = self;
        db
    }
}

pub async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let json = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    (status, json)
}

/// Declares each listed test once per backend: `sqlite::name` and
/// `postgres::name`, both calling `name(Backend)`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await;
                }
            )*
        }
    };
}

/// Polls `check` until it gives a value (every 10 ms, at most 10 s), for
/// state committed in the background that sends no signal a test could
/// wait on (delivery outcomes, queued tracking hits).
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
    loop {
        tick.tick().await;
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "not within 10 s: {what}");
    }
}
