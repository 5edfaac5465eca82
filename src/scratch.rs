//! Throwaway databases, for the integration suite and `hookrelay-bench`: a
//! SQLite file in a temporary directory, or a database of its own on a
//! PostgreSQL server, created empty or cloned from a migrated template and
//! dropped when the value is.

use std::time::Duration;

use crate::config::DatabaseConfig;

/// PostgreSQL used when `TEST_DATABASE_URL` is not set.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The server to create scratch databases on: `TEST_DATABASE_URL`, or the
/// local default.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.into())
}

/// A scratch database. Dropping it deletes the file or drops the database.
#[derive(Debug)]
pub enum ScratchDb {
    Sqlite { dir: tempfile::TempDir, url: String },
    Postgres { admin_url: String, name: String, url: String },
}

/// Whether a scratch PostgreSQL database starts empty or migrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    Empty,
    Migrated,
}

impl ScratchDb {
    /// A SQLite file (`<file>` in a new temporary directory).
    pub fn sqlite(file: &str) -> std::io::Result<ScratchDb> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join(file).display());
        Ok(ScratchDb::Sqlite { dir, url })
    }

    /// A new database named `<prefix>_<random>` on the server at
    /// `admin_url`. A migrated one is cloned from a template built once per
    /// schema (named after a hash of the migrations, so a stale template is
    /// never used), which is much faster than migrating each time.
    pub async fn postgres(admin_url: &str, prefix: &str, schema: Schema) -> anyhow::Result<ScratchDb> {
        let client = connect(admin_url).await?;
        let name = format!("{prefix}_{}", random_suffix());
        match schema {
            Schema::Empty => client.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await?,
            Schema::Migrated => {
                // One builder at a time across test processes.
                client.execute("SELECT pg_advisory_lock(4242)", &[]).await?;
                let created = async {
                    let template = ensure_template(&client, admin_url).await?;
                    client.batch_execute(&format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\"")).await?;
                    anyhow::Ok(())
                }
                .await;
                client.execute("SELECT pg_advisory_unlock(4242)", &[]).await?;
                created?;
            }
        }
        Ok(ScratchDb::Postgres { url: with_database(admin_url, &name), admin_url: admin_url.to_owned(), name })
    }

    /// The URL hookrelay's `database.url` takes.
    pub fn url(&self) -> &str {
        match self {
            ScratchDb::Sqlite { url, .. } | ScratchDb::Postgres { url, .. } => url,
        }
    }

    /// The SQLite file's directory.
    pub fn dir(&self) -> Option<&std::path::Path> {
        match self {
            ScratchDb::Sqlite { dir, .. } => Some(dir.path()),
            ScratchDb::Postgres { .. } => None,
        }
    }

    /// The server the PostgreSQL database lives on.
    pub fn admin_url(&self) -> Option<&str> {
        match self {
            ScratchDb::Postgres { admin_url, .. } => Some(admin_url),
            ScratchDb::Sqlite { .. } => None,
        }
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if let ScratchDb::Postgres { admin_url, name, .. } = self {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop needs a runtime of its own: the caller's may be shutting down.
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
                rt.block_on(async {
                    if let Ok(client) = connect(&admin_url).await {
                        let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
                    }
                });
            })
            .join();
        }
    }
}

/// A connection to `url` (3 s to connect), its driver running on a task.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(3));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// `url` with its database name replaced by `name` (query kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let base = match base.rfind('/') {
        Some(i) if i > base.find("://").map_or(0, |s| s + 2) => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_or_else(|_| format!("{:016x}", fastrand::u64(..)), |()| hex::encode(bytes))
}

/// The migrated template's name; built (under the caller's advisory lock)
/// when missing.
async fn ensure_template(client: &tokio_postgres::Client, admin_url: &str) -> anyhow::Result<String> {
    let schema: String = crate::store::postgres::MIGRATIONS.iter().map(|(_, sql)| *sql).collect();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in schema.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let template = format!("hookrelay_tpl_{hash:016x}");
    let exists = client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template]).await?.is_some();
    if !exists {
        let building = format!("{template}_building");
        client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{building}\" WITH (FORCE)")).await?;
        client.batch_execute(&format!("CREATE DATABASE \"{building}\"")).await?;
        let config = DatabaseConfig { url: with_database(admin_url, &building), pool_size: 1, ..Default::default() };
        drop(crate::store::open(&config).await?);
        client.batch_execute(&format!("ALTER DATABASE \"{building}\" RENAME TO \"{template}\"")).await?;
    }
    Ok(template)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced() {
        assert_eq!(with_database("postgres://u@h:5432/test", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h/test?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
