//! Schema migrations: the SQL files of `migrations/` (`migrations/postgres/` for PostgreSQL),
//! compiled into the binary and applied in order, each once, as recorded in the
//! `switchboard_migrations` table. Nodes started together with `--migrate` take turns through a
//! named lock (`GET_LOCK` on MariaDB and MySQL, an advisory lock on PostgreSQL).

use crate::config::Args;
use crate::database::{self, Conn, Dialect, Param, Pool, Statement};

/// One migration: a version (its file name without `.sql`) and its statements per dialect.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The file name without `.sql`, recorded once applied.
    pub version: &'static str,
    /// MySQL/MariaDB: `;`-separated statements (never a `;` inside a string or comment).
    pub mysql: &'static str,
    /// The same tables for PostgreSQL.
    pub postgres: &'static str,
}

impl Migration {
    fn sql(&self, dialect: Dialect) -> &'static str {
        match dialect {
            Dialect::MySql => self.mysql,
            Dialect::Postgres => self.postgres,
        }
    }
}

/// Every migration, in the order they apply.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: "0001_notifications",
        mysql: include_str!("../../migrations/0001_notifications.sql"),
        postgres: include_str!("../../migrations/postgres/0001_notifications.sql"),
    },
    Migration {
        version: "0002_notification_requests",
        mysql: include_str!("../../migrations/0002_notification_requests.sql"),
        postgres: include_str!("../../migrations/postgres/0002_notification_requests.sql"),
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
    Database(#[from] database::Error),
    /// Another node kept the migration lock too long.
    #[error("another process held the migration lock for {LOCK_WAIT_SECONDS}s")]
    Locked,
    /// A migration's statement failed; the ones before it stay applied.
    #[error("migration {version}: {source}")]
    Failed {
        /// The migration.
        version: &'static str,
        /// The database's error.
        source: database::Error,
    },
}

/// The bookkeeping statements of a dialect.
struct Bookkeeping {
    /// Takes the lock, waiting up to [`LOCK_WAIT_SECONDS`] (`{wait}` in MySQL's): (lock name);
    /// a row of `1` when taken.
    lock: &'static str,
    /// Gives it back: (lock name).
    unlock: &'static str,
    /// The table of applied versions.
    table: &'static str,
    /// Records a version: (version).
    record: &'static str,
}

const MYSQL: Bookkeeping = Bookkeeping {
    lock: "SELECT GET_LOCK(?, {wait})",
    unlock: "DO RELEASE_LOCK(?)",
    table: "CREATE TABLE IF NOT EXISTS switchboard_migrations (
            version VARCHAR(191) NOT NULL PRIMARY KEY,
            applied_at DATETIME(3) NOT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    record: "INSERT INTO switchboard_migrations (version, applied_at) VALUES (?, UTC_TIMESTAMP(3))",
};

/// PostgreSQL's advisory locks take a number: the lock name's hash. The session's
/// `lock_timeout`, set just before, bounds the wait.
const POSTGRES: Bookkeeping = Bookkeeping {
    lock: "SELECT 1 FROM (SELECT pg_advisory_lock(hashtext(?))) AS taken",
    unlock: "SELECT pg_advisory_unlock(hashtext(?))",
    table: "CREATE TABLE IF NOT EXISTS switchboard_migrations (
            version VARCHAR(191) NOT NULL PRIMARY KEY,
            applied_at TIMESTAMP(3) NOT NULL
        )",
    record: "INSERT INTO switchboard_migrations (version, applied_at) \
             VALUES (?, now() AT TIME ZONE 'UTC')",
};

/// Applies the migrations not yet recorded; returns the versions applied now.
pub async fn migrate(pool: &Pool) -> Result<Vec<&'static str>, MigrateError> {
    let dialect = pool.dialect();
    let sql = match dialect {
        Dialect::MySql => &MYSQL,
        Dialect::Postgres => &POSTGRES,
    };
    let mut conn = pool.conn().await?;
    if dialect == Dialect::Postgres {
        conn.batch(&format!("SET lock_timeout = '{LOCK_WAIT_SECONDS}s'"))
            .await?;
    }
    let lock = own(&sql.lock.replace("{wait}", &LOCK_WAIT_SECONDS.to_string()));
    let locked = match conn.first(&lock, &[Param::Text(LOCK)]).await {
        Ok(row) => row.and_then(|r| r.into_iter().next().flatten()),
        // PostgreSQL's lock_not_available: the wait ran out.
        Err(database::Error::Postgres(e)) if e.code().is_some_and(|c| c.code() == "55P03") => None,
        Err(e) => return Err(e.into()),
    };
    if locked.as_deref() != Some("1") {
        return Err(MigrateError::Locked);
    }
    let result = apply(&mut conn, sql).await;
    // The lock also ends with the connection; release it now so the next node need not wait.
    let _ = conn.first(&own(sql.unlock), &[Param::Text(LOCK)]).await;
    if dialect == Dialect::Postgres {
        // The connection goes back to the pool: without the session's wait limit.
        let _ = conn.batch("RESET lock_timeout").await;
    }
    result
}

async fn apply(conn: &mut Conn, sql: &Bookkeeping) -> Result<Vec<&'static str>, MigrateError> {
    conn.batch(sql.table).await?;
    let done: Vec<String> = conn
        .rows(&own("SELECT version FROM switchboard_migrations"), &[])
        .await?
        .into_iter()
        .filter_map(|row| row.into_iter().next().flatten())
        .collect();
    let mut applied = Vec::new();
    for migration in MIGRATIONS {
        if done.iter().any(|v| v == migration.version) {
            continue;
        }
        for statement in statements(migration.sql(conn.dialect())) {
            conn.batch(&statement)
                .await
                .map_err(|source| MigrateError::Failed {
                    version: migration.version,
                    source,
                })?;
        }
        conn.exec(&own(sql.record), &[Param::Text(migration.version)])
            .await?;
        tracing::info!(version = migration.version, "migration applied");
        applied.push(migration.version);
    }
    Ok(applied)
}

/// A bookkeeping statement, which all parse (the unit tests run every one through here).
fn own(text: &str) -> Statement {
    Statement::parse(text)
        .unwrap_or_else(|e| unreachable!("migration bookkeeping SQL: {e}: {text}"))
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
    database.pool().close().await;
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
            for dialect in [Dialect::MySql, Dialect::Postgres] {
                assert!(
                    statements(migration.sql(dialect)).count() > 0,
                    "{} {dialect:?}",
                    migration.version
                );
            }
        }
        for sql in [&MYSQL, &POSTGRES] {
            assert_eq!(own(sql.lock).arity(), 1);
            assert_eq!(own(sql.record).arity(), 1);
        }
    }
}
