//! The MySQL/MariaDB connection pool (`SWITCHBOARD_DATABASE_URL`), shared by whatever needs
//! the application's database: today the policy's `sql` rules.
//!
//! The pool connects lazily, on first use, so a node starts while the database is down.

use std::fmt;

use mysql_async::{Opts, Pool};

/// A lazily connecting pool; cloning shares it.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    /// `host:port/db`, for logs: the URL itself carries the password.
    name: String,
    /// The pool's connection limit.
    max_connections: usize,
}

impl Database {
    /// A pool for a `mysql://user:pass@host:port/db` URL; connects on first use.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let opts = Opts::from_url(url).map_err(|e| e.to_string())?;
        let name = format!(
            "{}:{}/{}",
            opts.ip_or_hostname(),
            opts.tcp_port(),
            opts.db_name().unwrap_or_default()
        );
        let max_connections = opts.pool_opts().constraints().max();
        Ok(Self {
            pool: Pool::new(opts),
            name,
            max_connections,
        })
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
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
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let db = Database::from_url("mysql://app:s3cret@db.internal:3307/forum").expect("url");
        let text = format!("{db:?}");
        assert!(text.contains("db.internal:3307/forum"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(Database::from_url("postgres://x").is_err());
    }
}
