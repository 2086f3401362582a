//! Schema migrations: the SQL files of `migrations/`, compiled into the binary and applied in
//! order, each once, as recorded in the `switchboard_migrations` table. Nodes started together
//! with `--migrate` take turns through a named lock (`GET_LOCK`, on MariaDB and MySQL alike).

use mysql_async::Pool;
use mysql_async::prelude::Queryable;

use crate::config::Args;

/// One migration: a version (its file name without `.sql`) and its statements.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The file name without `.sql`, recorded once applied.
    pub version: &'static str,
    /// `;`-separated statements (never a `;` inside a string or comment).
    pub sql: &'static str,
}

/// Every migration, in the order they apply.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: "0001_notifications",
        sql: include_str!("../../migrations/0001_notifications.sql"),
    },
    Migration {
        version: "0002_notification_requests",
        sql: include_str!("../../migrations/0002_notification_requests.sql"),
    },
];

/// The named lock that serialises migrating nodes.
const LOCK: &str = "switchboard_migrations";
/// How long a node waits for another one's migrations, in seconds.
const LOCK_WAIT_SECONDS: u32 = 60;

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The database could not be reached or refused a bookkeeping statement.
    #[error("database error: {0}")]
    Database(#[from] mysql_async::Error),
    /// Another node kept the migration lock too long.
    #[error("another process held the migration lock for {LOCK_WAIT_SECONDS}s")]
    Locked,
    /// A migration's statement failed; the ones before it stay applied.
    #[error("migration {version}: {source}")]
    Failed {
        /// The migration.
        version: &'static str,
        /// The database's error.
        source: mysql_async::Error,
    },
}

/// Applies the migrations not yet recorded; returns the versions applied now.
pub async fn migrate(pool: &Pool) -> Result<Vec<&'static str>, MigrateError> {
    let mut conn = pool.get_conn().await?;
    let locked: Option<Option<i64>> = conn
        .exec_first("SELECT GET_LOCK(?, ?)", (LOCK, LOCK_WAIT_SECONDS))
        .await?;
    if locked.flatten() != Some(1) {
        return Err(MigrateError::Locked);
    }
    let result = apply(&mut conn).await;
    // The lock also ends with the connection; release it now so the next node need not wait.
    let _ = conn.exec_drop("DO RELEASE_LOCK(?)", (LOCK,)).await;
    result
}

async fn apply(conn: &mut mysql_async::Conn) -> Result<Vec<&'static str>, MigrateError> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS switchboard_migrations (
            version VARCHAR(191) NOT NULL PRIMARY KEY,
            applied_at DATETIME(3) NOT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    )
    .await?;
    let done: Vec<String> = conn
        .query("SELECT version FROM switchboard_migrations")
        .await?;
    let mut applied = Vec::new();
    for migration in MIGRATIONS {
        if done.iter().any(|v| v == migration.version) {
            continue;
        }
        for statement in statements(migration.sql) {
            conn.query_drop(statement)
                .await
                .map_err(|source| MigrateError::Failed {
                    version: migration.version,
                    source,
                })?;
        }
        conn.exec_drop(
            "INSERT INTO switchboard_migrations (version, applied_at) VALUES (?, UTC_TIMESTAMP(3))",
            (migration.version,),
        )
        .await?;
        tracing::info!(version = migration.version, "migration applied");
        applied.push(migration.version);
    }
    Ok(applied)
}

/// The statements of a migration file: `;`-separated, comment-only lines dropped.
fn statements(sql: &str) -> impl Iterator<Item = String> + '_ {
    sql.split(';')
        .map(|chunk| {
            chunk
                .lines()
                .filter(|line| !line.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|statement| !statement.trim().is_empty())
}

/// `switchboard migrate`: applies the migrations to `--database-url`; the error is one line.
pub async fn command(args: &Args) -> Result<Vec<&'static str>, String> {
    let database = args
        .database()
        .map_err(|e| e.to_string())?
        .ok_or("SWITCHBOARD_DATABASE_URL: needed to migrate")?;
    let result = migrate(database.pool()).await;
    // Close the pool's connections before the runtime goes.
    let _ = database.pool().clone().disconnect().await;
    result.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_and_drops_comments() {
        let found: Vec<String> =
            statements("-- a comment\nCREATE TABLE a (x INT);\n\n-- b\nCREATE TABLE b (y INT);\n")
                .collect();
        assert_eq!(
            found,
            ["CREATE TABLE a (x INT)", "\n\nCREATE TABLE b (y INT)"]
        );
        for migration in MIGRATIONS {
            assert!(
                statements(migration.sql).count() > 0,
                "{}",
                migration.version
            );
        }
    }
}
