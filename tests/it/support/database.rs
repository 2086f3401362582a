//! The application's database in a test, MariaDB or PostgreSQL, behind one handle, so a test
//! written once runs against both ([`on_both_databases!`](crate::support::on_both_databases)).

use super::{MariaDb, Postgres};

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    MariaDb,
    Postgres,
}

/// A throwaway database of either engine.
pub enum Db {
    // Boxed: a MariaDb handle (a child process) is many times a Postgres one.
    MariaDb(Box<MariaDb>),
    Postgres(Postgres),
}

impl Db {
    /// A fresh database: a MariaDB server of its own, or a database on the test binary's
    /// PostgreSQL server.
    pub async fn start(engine: Engine) -> Db {
        match engine {
            Engine::MariaDb => Db::MariaDb(Box::new(MariaDb::start().await)),
            Engine::Postgres => Db::Postgres(Postgres::database().await),
        }
    }

    /// A database on a server of its own, which [`Db::kill`] and [`Db::restart`] may stop.
    pub async fn alone(engine: Engine) -> Db {
        match engine {
            Engine::MariaDb => Db::MariaDb(Box::new(MariaDb::start().await)),
            Engine::Postgres => Db::Postgres(Postgres::alone().await),
        }
    }

    pub fn engine(&self) -> Engine {
        match self {
            Db::MariaDb(_) => Engine::MariaDb,
            Db::Postgres(_) => Engine::Postgres,
        }
    }

    /// The app's `SWITCHBOARD_DATABASE_URL`.
    pub fn url(&self) -> String {
        match self {
            Db::MariaDb(db) => db.url(),
            Db::Postgres(db) => db.url(),
        }
    }

    /// Runs `sql` (`;`-separated statements); panics with the client's error if it fails.
    pub async fn exec_sql(&self, sql: &str) {
        match self {
            Db::MariaDb(db) => db.exec_sql(sql).await,
            Db::Postgres(db) => db.exec_sql(sql).await,
        }
    }

    /// The rows of `sql`'s result as strings; NULL as "NULL".
    pub async fn query(&self, sql: &str) -> Vec<Vec<String>> {
        match self {
            Db::MariaDb(db) => db.query(sql).await,
            Db::Postgres(db) => db.query(sql).await,
        }
    }

    /// The tables of the app's database, sorted.
    pub async fn tables(&self) -> Vec<String> {
        let schema = match self {
            Db::MariaDb(_) => "DATABASE()",
            Db::Postgres(_) => "current_schema()",
        };
        let rows = self
            .query(&format!(
                "SELECT table_name FROM information_schema.tables \
                 WHERE table_schema = {schema} ORDER BY table_name"
            ))
            .await;
        rows.into_iter()
            .filter_map(|row| row.into_iter().next())
            .collect()
    }

    /// A crash: clients see their connections drop. Needs [`Db::alone`] on PostgreSQL.
    pub async fn kill(&mut self) {
        match self {
            Db::MariaDb(db) => db.kill().await,
            Db::Postgres(db) => db.kill().await,
        }
    }

    /// Starts it again with its data.
    pub async fn restart(&mut self) {
        match self {
            Db::MariaDb(db) => db.restart().await,
            Db::Postgres(db) => db.restart().await,
        }
    }

    pub fn logs(&self) -> String {
        match self {
            Db::MariaDb(db) => db.logs(),
            Db::Postgres(db) => db.logs(),
        }
    }
}

/// `on_both_databases!(a, b)` turns each `async fn a(engine: Engine)` into the tests
/// `a::mariadb` and `a::postgres`.
// Each test file is its own crate; most never use it.
#[allow(unused_macros)]
macro_rules! on_both_databases {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn mariadb() {
                super::$test($crate::support::Engine::MariaDb).await
            }

            #[tokio::test]
            async fn postgres() {
                super::$test($crate::support::Engine::Postgres).await
            }
        }
    )*};
}
pub(crate) use on_both_databases;
