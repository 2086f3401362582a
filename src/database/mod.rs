//! The application's database (`SWITCHBOARD_DATABASE_URL`), shared by the notification store,
//! the migrations and the policy's `sql` rules: MySQL/MariaDB (`mysql://`, mysql_async) or
//! PostgreSQL (`postgres://`, tokio-postgres in a deadpool pool), each in its own pool type.
//!
//! Everything above this module writes SQL once with `?` or `:name` parameters
//! ([`Statement`]) and reads every column as text ([`Row`]), so what differs between the two is
//! only the dialect of a statement's text, chosen by the caller through [`Dialect`].
//!
//! The pool connects lazily, on first use, so a node starts while the database is down.

mod mysql;
mod postgres;
mod statement;

use std::fmt;

use mysql_async::prelude::Queryable;

pub use statement::Statement;

/// Which SQL a database speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// MySQL 8 or MariaDB 10.11+.
    MySql,
    /// PostgreSQL 13+.
    Postgres,
}

/// One argument of a statement, sent as text (PostgreSQL reads it as the column's type, as
/// MySQL converts it).
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    /// A string.
    Text(&'a str),
    /// A number.
    Int(u64),
    /// SQL NULL.
    Null,
}

/// A result row: each column as text, `None` for NULL.
pub type Row = Vec<Option<String>>;

/// A database failure, with the driver's own error as its source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From MySQL/MariaDB.
    #[error("mysql: {0}")]
    MySql(#[from] mysql_async::Error),
    /// From PostgreSQL.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had from the pool.
    #[error("postgres pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A column came back in a form this module cannot read as text.
    #[error("column {column}: {reason}")]
    Column {
        /// Its index.
        column: usize,
        /// What was wrong.
        reason: String,
    },
}

impl Error {
    /// A unique key refused the row (MySQL 1062, PostgreSQL 23505).
    pub fn is_duplicate_key(&self) -> bool {
        match self {
            Error::MySql(mysql_async::Error::Server(e)) => e.code == 1062,
            Error::Postgres(e) => {
                e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
            }
            _ => false,
        }
    }

    /// The database could not read an argument as its column's type (PostgreSQL's class 22,
    /// e.g. `abc` for a bigint; MySQL converts instead): no row can match such a value.
    pub fn is_bad_value(&self) -> bool {
        match self {
            Error::Postgres(e) => e.code().is_some_and(|c| c.code().starts_with("22")),
            _ => false,
        }
    }
}

/// A lazily connecting pool of either kind; cloning shares it.
#[derive(Clone)]
pub enum Pool {
    /// MySQL/MariaDB.
    MySql(mysql_async::Pool),
    /// PostgreSQL.
    Postgres(deadpool_postgres::Pool),
}

/// Connections of a pool, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStatus {
    /// Lent out now.
    pub in_use: usize,
    /// Open and waiting in the pool.
    pub idle: usize,
}

impl Pool {
    /// The SQL its database speaks.
    pub fn dialect(&self) -> Dialect {
        match self {
            Pool::MySql(_) => Dialect::MySql,
            Pool::Postgres(_) => Dialect::Postgres,
        }
    }

    /// A connection from the pool (a new one if none is idle).
    pub async fn conn(&self) -> Result<Conn, Error> {
        Ok(match self {
            Pool::MySql(pool) => Conn::MySql(pool.get_conn().await?),
            Pool::Postgres(pool) => Conn::Postgres(Box::new(pool.get().await?)),
        })
    }

    /// How many connections are in use and idle.
    pub fn status(&self) -> PoolStatus {
        match self {
            Pool::MySql(pool) => mysql::status(pool),
            Pool::Postgres(pool) => {
                let status = pool.status();
                PoolStatus {
                    in_use: status.size.saturating_sub(status.available),
                    idle: status.available,
                }
            }
        }
    }

    /// Closes the idle connections (before the runtime goes, at the end of a command).
    pub async fn close(&self) {
        match self {
            Pool::MySql(pool) => {
                // An error only means a connection was already gone.
                let _ = pool.clone().disconnect().await;
            }
            Pool::Postgres(pool) => pool.close(),
        }
    }
}

/// The pool and its name for logs.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    /// `host:port/db`, for logs: the URL itself carries the password.
    name: String,
    /// The pool's connection limit.
    max_connections: usize,
}

impl Database {
    /// A pool for a `mysql://user:pass@host:port/db` or `postgres://…` (`postgresql://`) URL;
    /// connects on first use. `?pool_max=N` limits the pool on either.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or_default();
        let (pool, name, max_connections) = match scheme {
            "mysql" => mysql::pool(url)?,
            "postgres" | "postgresql" => postgres::pool(url)?,
            _ => return Err("expected a mysql:// or postgres:// URL".into()),
        };
        Ok(Self {
            pool,
            name,
            max_connections,
        })
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The SQL it speaks.
    pub fn dialect(&self) -> Dialect {
        self.pool.dialect()
    }

    /// The most connections the pool opens (`?pool_max=` in the URL).
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the pool's own Debug: it prints the password.
        f.debug_struct("Database")
            .field("server", &self.name)
            .field("dialect", &self.dialect())
            .finish_non_exhaustive()
    }
}

/// A pooled connection; back to the pool when dropped.
pub enum Conn {
    /// MySQL/MariaDB.
    MySql(mysql_async::Conn),
    /// PostgreSQL (boxed: the pool's object is 30 times the size of mysql_async's handle).
    Postgres(Box<deadpool_postgres::Object>),
}

impl Conn {
    /// The SQL it speaks.
    pub fn dialect(&self) -> Dialect {
        match self {
            Conn::MySql(_) => Dialect::MySql,
            Conn::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Whether the server still answers (a connection a restart broke does not).
    pub async fn ping(&mut self) -> Result<(), Error> {
        match self {
            Conn::MySql(conn) => Ok(conn.ping().await?),
            Conn::Postgres(client) => Ok(client.simple_query("").await.map(drop)?),
        }
    }

    /// Every row of `statement` run with `args`.
    pub async fn rows(
        &mut self,
        statement: &Statement,
        args: &[Param<'_>],
    ) -> Result<Vec<Row>, Error> {
        match self {
            Conn::MySql(conn) => mysql::rows(conn, statement, args).await,
            Conn::Postgres(client) => postgres::rows(&****client, statement, args).await,
        }
    }

    /// The first row of `statement` run with `args`, if any.
    pub async fn first(
        &mut self,
        statement: &Statement,
        args: &[Param<'_>],
    ) -> Result<Option<Row>, Error> {
        match self {
            Conn::MySql(conn) => mysql::first(conn, statement, args).await,
            Conn::Postgres(client) => postgres::first(&****client, statement, args).await,
        }
    }

    /// Runs `statement` with `args`; returns the rows it changed (MySQL: changed, not matched).
    pub async fn exec(&mut self, statement: &Statement, args: &[Param<'_>]) -> Result<u64, Error> {
        match self {
            Conn::MySql(conn) => mysql::exec(conn, statement, args).await,
            Conn::Postgres(client) => postgres::exec(&****client, statement, args).await,
        }
    }

    /// Runs one statement of plain SQL without arguments (migrations).
    pub async fn batch(&mut self, sql: &str) -> Result<(), Error> {
        match self {
            Conn::MySql(conn) => Ok(conn.query_drop(sql).await?),
            Conn::Postgres(client) => Ok(client.batch_execute(sql).await?),
        }
    }

    /// Starts a transaction; dropped without [`Tx::commit`], it rolls back.
    pub async fn transaction(&mut self) -> Result<Tx<'_>, Error> {
        Ok(match self {
            Conn::MySql(conn) => Tx::MySql(
                conn.start_transaction(mysql_async::TxOpts::default())
                    .await?,
            ),
            Conn::Postgres(client) => Tx::Postgres(client.transaction().await?),
        })
    }
}

/// A transaction on a [`Conn`].
pub enum Tx<'a> {
    /// MySQL/MariaDB.
    MySql(mysql_async::Transaction<'a>),
    /// PostgreSQL.
    Postgres(deadpool_postgres::Transaction<'a>),
}

impl Tx<'_> {
    /// The first row of `statement` run with `args`, if any.
    pub async fn first(
        &mut self,
        statement: &Statement,
        args: &[Param<'_>],
    ) -> Result<Option<Row>, Error> {
        match self {
            Tx::MySql(tx) => mysql::first(tx, statement, args).await,
            Tx::Postgres(tx) => postgres::first(&**tx, statement, args).await,
        }
    }

    /// Runs `statement` with `args`; returns the rows it changed.
    pub async fn exec(&mut self, statement: &Statement, args: &[Param<'_>]) -> Result<u64, Error> {
        match self {
            Tx::MySql(tx) => mysql::exec(tx, statement, args).await,
            Tx::Postgres(tx) => postgres::exec(&**tx, statement, args).await,
        }
    }

    /// Runs an INSERT and returns the new row's id: MySQL's `LAST_INSERT_ID()`, or the first
    /// column of the row a PostgreSQL statement's `RETURNING` gives.
    pub async fn insert(
        &mut self,
        statement: &Statement,
        args: &[Param<'_>],
    ) -> Result<u64, Error> {
        match self {
            Tx::MySql(tx) => {
                mysql::exec(tx, statement, args).await?;
                Ok(tx.last_insert_id().unwrap_or_default())
            }
            Tx::Postgres(tx) => {
                let row = postgres::first(&**tx, statement, args).await?;
                let id = row.and_then(|row| row.into_iter().next().flatten());
                id.and_then(|id| id.parse().ok())
                    .ok_or_else(|| Error::Column {
                        column: 0,
                        reason: "no id returned".into(),
                    })
            }
        }
    }

    /// Makes its changes permanent.
    pub async fn commit(self) -> Result<(), Error> {
        match self {
            Tx::MySql(tx) => Ok(tx.commit().await?),
            Tx::Postgres(tx) => Ok(tx.commit().await?),
        }
    }

    /// Undoes its changes.
    pub async fn rollback(self) -> Result<(), Error> {
        match self {
            Tx::MySql(tx) => Ok(tx.rollback().await?),
            Tx::Postgres(tx) => Ok(tx.rollback().await?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        for url in [
            "mysql://app:s3cret@db.internal:3307/forum",
            "postgres://app:s3cret@db.internal:3307/forum",
            "postgresql://app:s3cret@db.internal:3307/forum?sslmode=require&pool_max=7",
        ] {
            let db = Database::from_url(url).expect("url");
            let text = format!("{db:?}");
            assert!(text.contains("db.internal:3307/forum"), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
        assert!(Database::from_url("sqlite://x").is_err());
        assert!(Database::from_url("postgres://x/db?sslmode=sometimes").is_err());
    }

    #[tokio::test]
    async fn pool_limits_and_dialects() {
        let pg = Database::from_url("postgres://a@h/db?pool_max=7").expect("url");
        assert_eq!((pg.dialect(), pg.max_connections()), (Dialect::Postgres, 7));
        let pg = Database::from_url("postgres://a@h/db").expect("url");
        assert_eq!(pg.max_connections(), postgres::DEFAULT_POOL_MAX);
        let my = Database::from_url("mysql://a@h/db?pool_max=12").expect("url");
        assert_eq!((my.dialect(), my.max_connections()), (Dialect::MySql, 12));
    }
}
