//! The SQL store: one connection pool through sqlx's `Any` driver, so the same queries run on
//! SQLite (default, a file in the data folder) and PostgreSQL (`database_url = "postgres://..."`).
//! Queries use `$1`-style binds, which both accept.

use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor};

use crate::error::StartError;

pub type Db = AnyPool;
pub type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

/// The schema's migrations, embedded in the binary (version, description, SQL). Append only.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/0001_initial.sql")),
    (2, "address counters", include_str!("../migrations/0002_address_counters.sql")),
];

fn migrator() -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|&(version, description, sql)| Migration::new(version, description.into(), MigrationType::Simple, sql.into(), false))
        .collect::<Vec<_>>();
    Migrator { migrations: migrations.into(), ..Migrator::DEFAULT }
}

/// Connect and bring the schema up to date.
pub async fn connect(url: &str) -> Result<Db, StartError> {
    sqlx::any::install_default_drivers();
    let db_err = |source| StartError::Database { url: redact(url), source };
    let options: AnyConnectOptions = url.parse().map_err(db_err)?;
    let sqlite = url.starts_with("sqlite:");
    let pool = AnyPoolOptions::new()
        .max_connections(if sqlite { 8 } else { 16 })
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    // WAL lets readers run beside the writer; writers wait for each other
                    // (busy_timeout) instead of failing.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 30000").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(db_err)?;
    migrator().run(&pool).await?;
    Ok(pool)
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(colon) => format!("{}:***{}", &url[..s + 3 + colon], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(super::redact("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(super::redact("sqlite://x.db"), "sqlite://x.db");
    }
}
