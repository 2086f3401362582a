//! The notification tables: every read and write of them, each bounded by the database
//! timeout, on MySQL/MariaDB or PostgreSQL. A failure is an [`StoreError`], counted and logged
//! here; the caller decides what the client is told (never the URL or the SQL).

use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::NotificationSettings;
use crate::database::{self, Conn, Database, Dialect, Param, Row, Statement};
use crate::metrics::Metrics;

/// Rows written per multi-row statement.
const CHUNK: usize = 500;
/// Undelivered notifications sent on one connect; the rest come on the next one.
pub const MAX_PENDING: usize = 500;

/// What [`Store::create`] did.
#[derive(Debug)]
pub enum Created {
    /// Stored these.
    New(Vec<Notification>),
    /// The idempotency key was used before: the first call's (id, user) pairs.
    Repeated(Vec<(u64, String)>),
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or did not answer in time. Nothing was changed, except when the
    /// time ran out while a write committed: repeat it with the same idempotency key to know.
    #[error("database unavailable")]
    Unavailable,
    /// No such notification for this user.
    #[error("notification not found")]
    NotFound,
}

/// A stored notification, as clients see it.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    /// Its id.
    pub id: u64,
    /// The recipient.
    #[serde(rename = "userId")]
    pub user_id: String,
    /// The application's type name.
    #[serde(rename = "type")]
    pub kind: String,
    /// Title.
    pub title: String,
    /// Body text.
    pub message: String,
    /// Any JSON the application attached.
    pub data: Option<Box<RawValue>>,
    /// When it was created (UTC, ISO 8601).
    #[serde(rename = "createdAt")]
    pub created_at: String,
    /// When it was read, if it was.
    #[serde(rename = "readAt")]
    pub read_at: Option<String>,
}

impl Notification {
    /// A row of [`Sql::pending`]'s columns.
    fn from_row(row: Row) -> Option<Self> {
        let mut columns = row.into_iter();
        let mut next = || columns.next().flatten();
        let id = next()?.parse().ok()?;
        Some(Self {
            id,
            user_id: next()?,
            kind: next().unwrap_or_default(),
            title: next().unwrap_or_default(),
            message: next().unwrap_or_default(),
            data: next().and_then(|json| RawValue::from_string(json).ok()),
            created_at: iso(&next().unwrap_or_default()),
            read_at: next().map(|t| iso(&t)),
        })
    }
}

/// A new notification, before it is stored.
#[derive(Debug)]
pub struct NewNotification<'a> {
    /// Type name.
    pub kind: &'a str,
    /// Title.
    pub title: &'a str,
    /// Body.
    pub message: &'a str,
    /// Attached JSON, if any.
    pub data: Option<&'a RawValue>,
}

/// A user of the `/notifications` namespace, as the user query returns them.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// The id.
    #[serde(rename = "userId")]
    pub id: String,
    /// Display name.
    #[serde(rename = "userName")]
    pub name: String,
    /// E-mail address.
    pub email: Option<String>,
    /// Role name.
    pub role: Option<String>,
    /// Sector, if any.
    #[serde(rename = "sectorId")]
    pub sector_id: Option<String>,
    /// Whether the account may connect.
    #[serde(skip)]
    pub active: bool,
}

/// What marking a notification read changed.
#[derive(Debug, Clone)]
pub struct Read {
    /// When it was read (ISO 8601); the earlier time if it was read before.
    pub read_at: String,
    /// Whether this call read it (false: it was read already).
    pub changed: bool,
    /// The user's unread notifications now; unknown when the application's read query marks
    /// its own table.
    pub unread: Option<u64>,
}

/// The notification store on the application's database.
pub struct Store {
    database: Database,
    settings: NotificationSettings,
    metrics: Metrics,
    sql: Sql,
}

impl Store {
    /// A store on `database`; nothing connects until the first call.
    pub fn new(database: Database, settings: NotificationSettings, metrics: Metrics) -> Self {
        let sql = Sql::new(database.dialect());
        Self {
            database,
            settings,
            metrics,
            sql,
        }
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &NotificationSettings {
        &self.settings
    }

    /// Runs `work` within the timeout, counting the connection it holds and any failure.
    async fn run<T>(
        &self,
        op: &'static str,
        work: impl Future<Output = Result<T, database::Error>>,
    ) -> Result<T, StoreError> {
        let metrics = &self.metrics;
        metrics.database_in_use.inc();
        let result = tokio::time::timeout(self.settings.timeout, work).await;
        metrics.database_in_use.dec();
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                metrics.database_errors.with_label_values(&[op]).inc();
                tracing::warn!(op, error = %e, "notification store: database error");
                Err(StoreError::Unavailable)
            }
            Err(_) => {
                metrics.database_errors.with_label_values(&[op]).inc();
                tracing::warn!(op, timeout = ?self.settings.timeout, "notification store: database timed out");
                Err(StoreError::Unavailable)
            }
        }
    }

    /// A pooled connection that answers: one a database restart left broken is replaced.
    async fn conn(&self) -> Result<Conn, database::Error> {
        let mut last = None;
        for _ in 0..3 {
            let mut conn = self.database.pool().conn().await?;
            match conn.ping().await {
                Ok(()) => return Ok(conn),
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(e),
            None => self.database.pool().conn().await,
        }
    }

    /// Recipient ids from the sector query, or the role query run once per role (a user with
    /// two of the roles comes twice: the caller removes repeats).
    pub async fn recipients(&self, target: Target<'_>) -> Result<Vec<String>, StoreError> {
        let (op, query, values) = match target {
            Target::Sector(sector) => (
                "sector_recipients",
                &self.settings.sector_query,
                vec![sector],
            ),
            Target::Roles(roles) => (
                "role_recipients",
                &self.settings.role_query,
                roles.iter().map(String::as_str).collect(),
            ),
        };
        self.run(op, async {
            let mut conn = self.conn().await?;
            let mut ids = Vec::new();
            for value in values {
                let rows = match conn.rows(query, &[Param::Text(value)]).await {
                    // A value the column cannot hold (a PostgreSQL enum's unknown label)
                    // matches nobody.
                    Err(e) if e.is_bad_value() => continue,
                    other => other?,
                };
                ids.extend(rows.into_iter().filter_map(first_column));
            }
            Ok(ids)
        })
        .await
    }

    /// Stores one notification per recipient, each with a pending in-app delivery, in one
    /// transaction: all of them or none. With an idempotency key already used (within a
    /// day), nothing is stored and the first call's (id, user) pairs are answered.
    pub async fn create(
        &self,
        recipients: &[String],
        new: &NewNotification<'_>,
        key: Option<&str>,
    ) -> Result<Created, StoreError> {
        let data = new.data.map(|d| d.get().to_owned());
        let sql = &self.sql;
        self.run("create", async {
            let mut conn = self.conn().await?;
            let mut tx = conn.transaction().await?;
            let now = tx.first(&sql.now, &[]).await?;
            let now = now.and_then(first_column).unwrap_or_default();
            if let Some(key) = key {
                tx.exec(&sql.purge_keys, &[Param::Text(&now)]).await?;
                let claimed = tx
                    .exec(&sql.claim_key, &[Param::Text(key), Param::Text(&now)])
                    .await;
                match claimed {
                    // A concurrent first call holds the key's row lock until it commits, so
                    // the repeat waits here and then reads the committed answer.
                    Err(e) if e.is_duplicate_key() => {
                        tx.rollback().await?;
                        let first = conn.first(&sql.first_answer, &[Param::Text(key)]).await?;
                        let pairs = first
                            .and_then(first_column)
                            .and_then(|json| serde_json::from_str(&json).ok())
                            .unwrap_or_default();
                        return Ok(Created::Repeated(pairs));
                    }
                    other => other?,
                };
            }
            let mut created = Vec::with_capacity(recipients.len());
            for user in recipients {
                let data = data.as_deref().map_or(Param::Null, Param::Text);
                let args = [
                    Param::Text(user),
                    Param::Text(new.kind),
                    Param::Text(new.title),
                    Param::Text(new.message),
                    data,
                    Param::Text(&now),
                ];
                created.push(Notification {
                    id: tx.insert(&sql.insert_notification, &args).await?,
                    user_id: user.clone(),
                    kind: new.kind.to_owned(),
                    title: new.title.to_owned(),
                    message: new.message.to_owned(),
                    data: new.data.map(ToOwned::to_owned),
                    created_at: iso(&now),
                    read_at: None,
                });
            }
            for chunk in created.chunks(CHUNK) {
                let rows = vec!["(?, ?, 'IN_APP', 'PENDING')"; chunk.len()].join(", ");
                let insert = own(&format!(
                    "INSERT INTO notification_deliveries (notification_id, user_id, channel, status) VALUES {rows}"
                ));
                let args: Vec<Param<'_>> = chunk
                    .iter()
                    .flat_map(|n| [Param::Int(n.id), Param::Text(&n.user_id)])
                    .collect();
                tx.exec(&insert, &args).await?;
            }
            if let Some(key) = key {
                let pairs: Vec<(u64, &str)> =
                    created.iter().map(|n| (n.id, n.user_id.as_str())).collect();
                let pairs = serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".into());
                tx.exec(&sql.answer_key, &[Param::Text(&pairs), Param::Text(key)])
                    .await?;
            }
            tx.commit().await?;
            Ok(Created::New(created))
        })
        .await
        .inspect(|created| {
            if let Created::New(created) = created {
                self.metrics.notifications_created.inc_by(created.len() as u64);
            }
        })
    }

    /// Unread counts of several users (missing ones have none).
    pub async fn unread_counts(&self, users: &[&str]) -> Result<Vec<(String, u64)>, StoreError> {
        self.run("unread_counts", async {
            let mut conn = self.conn().await?;
            let mut counts = Vec::with_capacity(users.len());
            for chunk in users.chunks(CHUNK) {
                let marks = vec!["?"; chunk.len()].join(", ");
                let query = own(&format!(
                    "SELECT user_id, COUNT(*) FROM notifications \
                     WHERE read_at IS NULL AND user_id IN ({marks}) GROUP BY user_id"
                ));
                let args: Vec<Param<'_>> = chunk.iter().map(|u| Param::Text(u)).collect();
                for row in conn.rows(&query, &args).await? {
                    let mut columns = row.into_iter().flatten();
                    if let (Some(user), Some(count)) = (columns.next(), columns.next()) {
                        counts.push((user, count.parse().unwrap_or_default()));
                    }
                }
            }
            Ok(counts)
        })
        .await
    }

    /// One user's unread count.
    pub async fn unread_count(&self, user: &str) -> Result<u64, StoreError> {
        self.run("unread_count", async {
            let mut conn = self.conn().await?;
            self.sql.unread(&mut conn, user).await
        })
        .await
    }

    /// Loads a user with the user query; `None` when there is no such user.
    pub async fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.run("user", async {
            let mut conn = self.conn().await?;
            let row = match conn
                .first(&self.settings.user_query, &[Param::Text(id)])
                .await
            {
                // An id the column cannot hold (`abc` for a bigint) is nobody's.
                Err(e) if e.is_bad_value() => None,
                other => other?,
            };
            Ok(row.map(|row| {
                let mut columns = row.into_iter();
                let mut next = || columns.next().flatten();
                User {
                    id: next().unwrap_or_else(|| id.to_owned()),
                    name: next().unwrap_or_default(),
                    email: next(),
                    role: next(),
                    sector_id: next(),
                    active: next().is_some_and(|v| truthy(&v)),
                }
            }))
        })
        .await
    }

    /// The user's undelivered in-app notifications, oldest first (at most [`MAX_PENDING`]),
    /// counted as one more delivery attempt each.
    pub async fn pending(&self, user: &str) -> Result<Vec<Notification>, StoreError> {
        self.run("pending", async {
            let mut conn = self.conn().await?;
            let rows = conn.rows(&self.sql.pending, &[Param::Text(user)]).await?;
            let pending: Vec<Notification> = rows
                .into_iter()
                .filter_map(Notification::from_row)
                .collect();
            if let Some(last) = pending.last() {
                conn.exec(
                    &self.sql.attempted,
                    &[Param::Text(user), Param::Int(last.id)],
                )
                .await?;
            }
            Ok(pending)
        })
        .await
    }

    /// Records the in-app delivery of a user's notification; `Ok(false)` when it was
    /// delivered before. The first delivery is counted, with its delay since creation.
    pub async fn delivered(&self, user: &str, id: u64) -> Result<bool, StoreError> {
        let first = self
            .run("delivered", async {
                let mut conn = self.conn().await?;
                self.sql.mark_delivered(&mut conn, user, id).await
            })
            .await?;
        match first {
            Some(delay) => {
                self.observe_delivery(delay);
                Ok(true)
            }
            None => {
                let exists = self
                    .run("delivered", async {
                        let mut conn = self.conn().await?;
                        self.sql.owned(&mut conn, user, id).await
                    })
                    .await?;
                if exists.is_some() {
                    Ok(false)
                } else {
                    Err(StoreError::NotFound)
                }
            }
        }
    }

    /// Marks a user's notification read: in Switchboard's table (and delivered, if it was
    /// not yet), or with the application's read query when one is set.
    pub async fn read(&self, user: &str, id: u64) -> Result<Read, StoreError> {
        if let Some(query) = &self.settings.read_query {
            return self.read_in_app(query, user, id).await;
        }
        let sql = &self.sql;
        let (read, delay) = self
            .run("read", async {
                let mut conn = self.conn().await?;
                let args = [Param::Int(id), Param::Text(user)];
                let changed = conn.exec(&sql.read, &args).await? > 0;
                let Some(read_at) = sql.owned(&mut conn, user, id).await? else {
                    return Ok((None, None));
                };
                let delay = sql.mark_delivered(&mut conn, user, id).await?;
                let unread = sql.unread(&mut conn, user).await?;
                let read = Read {
                    read_at: read_at.map(|t| iso(&t)).unwrap_or_default(),
                    changed,
                    unread: Some(unread),
                };
                Ok((Some(read), delay))
            })
            .await?;
        if let Some(delay) = delay {
            self.observe_delivery(delay);
        }
        let read = read.ok_or(StoreError::NotFound)?;
        if read.changed {
            self.metrics.notifications_read.inc();
        }
        Ok(read)
    }

    /// The application's read query (`:id`, `:user_id`): a row it changed is a read now; none
    /// is not found (or read before: the query says only how many rows it changed).
    async fn read_in_app(
        &self,
        query: &Statement,
        user: &str,
        id: u64,
    ) -> Result<Read, StoreError> {
        let id_text = id.to_string();
        let args: Vec<Param<'_>> = query
            .names()
            .iter()
            .map(|name| match name.as_str() {
                "user_id" => Param::Text(user),
                _ => Param::Text(&id_text),
            })
            .collect();
        let read_at = self
            .run("read", async {
                let mut conn = self.conn().await?;
                let changed = match conn.exec(query, &args).await {
                    Err(e) if e.is_bad_value() => 0,
                    other => other?,
                };
                if changed == 0 {
                    return Ok(None);
                }
                // The database's clock, as for a read in Switchboard's table.
                let now = conn.first(&self.sql.now, &[]).await?;
                Ok(Some(now.and_then(first_column).unwrap_or_default()))
            })
            .await?
            .ok_or(StoreError::NotFound)?;
        self.metrics.notifications_read.inc();
        Ok(Read {
            read_at: iso(&read_at),
            changed: true,
            unread: None,
        })
    }

    fn observe_delivery(&self, delay: Duration) {
        self.metrics.notifications_delivered.inc();
        self.metrics
            .notification_delivery_seconds
            .observe(delay.as_secs_f64());
    }
}

/// Whom a notification is for, when not a list of ids.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Every user the sector query returns.
    Sector(&'a str),
    /// Every user the role query returns for any of these roles.
    Roles(&'a [String]),
}

/// Switchboard's own statements on its tables, in the database's dialect.
struct Sql {
    /// The database's time now (UTC), as text.
    now: Statement,
    /// Forgets up to 100 idempotency keys older than a day before `?` (now).
    purge_keys: Statement,
    /// Claims an idempotency key: (key, now).
    claim_key: Statement,
    /// The first call's answer of a key.
    first_answer: Statement,
    /// Records the answer of a key: (pairs, key).
    answer_key: Statement,
    /// One notification: (user, type, title, message, data, now); gives its id.
    insert_notification: Statement,
    /// A user's undelivered in-app notifications, oldest first.
    pending: Statement,
    /// Counts a delivery attempt of the pending ones up to an id: (user, id).
    attempted: Statement,
    /// Marks a pending in-app delivery delivered: (id, user).
    delivered: Statement,
    /// The delay from creation to delivery of a notification, in microseconds: (id).
    delay: Statement,
    /// A notification's read time, if it is the user's: (id, user).
    owned: Statement,
    /// Marks it read unless it was: (id, user).
    read: Statement,
    /// A user's unread count: (user).
    unread: Statement,
}

impl Sql {
    fn new(dialect: Dialect) -> Self {
        // What differs between the two: the time now (UTC, in `DATETIME`/`TIMESTAMP` columns
        // without a zone), a time as text, and the few statements below.
        let (now, text) = match dialect {
            Dialect::MySql => ("UTC_TIMESTAMP(3)", "CAST({} AS CHAR)"),
            Dialect::Postgres => (
                "(now() AT TIME ZONE 'UTC')",
                "to_char({}, 'YYYY-MM-DD HH24:MI:SS.MS')",
            ),
        };
        let time = |column: &str| text.replace("{}", column);
        let (purge_keys, insert_notification, delay) = match dialect {
            Dialect::MySql => (
                "DELETE FROM notification_requests WHERE created_at < ? - INTERVAL 1 DAY LIMIT 100",
                "INSERT INTO notifications (user_id, type, title, message, data, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
                "TIMESTAMPDIFF(MICROSECOND, n.created_at, d.delivered_at)",
            ),
            Dialect::Postgres => (
                "DELETE FROM notification_requests WHERE idempotency_key IN (\
                 SELECT idempotency_key FROM notification_requests \
                 WHERE created_at < ?::timestamp - INTERVAL '1 day' LIMIT 100)",
                "INSERT INTO notifications (user_id, type, title, message, data, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                "CAST(EXTRACT(EPOCH FROM d.delivered_at - n.created_at) * 1000000 AS BIGINT)",
            ),
        };
        Self {
            now: own(&format!("SELECT {}", time(now))),
            purge_keys: own(purge_keys),
            claim_key: own(
                "INSERT INTO notification_requests (idempotency_key, created_at) VALUES (?, ?)",
            ),
            first_answer: own(
                "SELECT notifications FROM notification_requests WHERE idempotency_key = ?",
            ),
            answer_key: own(
                "UPDATE notification_requests SET notifications = ? WHERE idempotency_key = ?",
            ),
            insert_notification: own(insert_notification),
            pending: own(&format!(
                "SELECT n.id, n.user_id, n.type, n.title, n.message, n.data, {}, {} \
                 FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id \
                 WHERE d.user_id = ? AND d.channel = 'IN_APP' AND d.status = 'PENDING' \
                 ORDER BY d.notification_id LIMIT {MAX_PENDING}",
                time("n.created_at"),
                time("n.read_at"),
            )),
            attempted: own(
                "UPDATE notification_deliveries SET attempts = attempts + 1 \
                 WHERE user_id = ? AND channel = 'IN_APP' AND status = 'PENDING' AND notification_id <= ?",
            ),
            delivered: own(&format!(
                "UPDATE notification_deliveries SET status = 'DELIVERED', delivered_at = {now} \
                 WHERE notification_id = ? AND user_id = ? AND channel = 'IN_APP' AND status = 'PENDING'"
            )),
            delay: own(&format!(
                "SELECT {delay} FROM notifications n JOIN notification_deliveries d \
                 ON d.notification_id = n.id AND d.channel = 'IN_APP' WHERE n.id = ?"
            )),
            owned: own(&format!(
                "SELECT {} FROM notifications WHERE id = ? AND user_id = ?",
                time("read_at")
            )),
            read: own(&format!(
                "UPDATE notifications SET read_at = {now} WHERE id = ? AND user_id = ? AND read_at IS NULL"
            )),
            unread: own("SELECT COUNT(*) FROM notifications WHERE user_id = ? AND read_at IS NULL"),
        }
    }

    /// Marks a pending in-app delivery delivered; returns the delay since creation when it was
    /// pending.
    async fn mark_delivered(
        &self,
        conn: &mut Conn,
        user: &str,
        id: u64,
    ) -> Result<Option<Duration>, database::Error> {
        let args = [Param::Int(id), Param::Text(user)];
        if conn.exec(&self.delivered, &args).await? == 0 {
            return Ok(None);
        }
        let micros = conn.first(&self.delay, &[Param::Int(id)]).await?;
        let micros: i64 = micros
            .and_then(first_column)
            .and_then(|m| m.parse().ok())
            .unwrap_or_default();
        Ok(Some(Duration::from_micros(micros.max(0) as u64)))
    }

    /// `Some(read_at)` when the notification exists and belongs to `user`.
    async fn owned(
        &self,
        conn: &mut Conn,
        user: &str,
        id: u64,
    ) -> Result<Option<Option<String>>, database::Error> {
        let row = conn
            .first(&self.owned, &[Param::Int(id), Param::Text(user)])
            .await?;
        Ok(row.map(first_column))
    }

    async fn unread(&self, conn: &mut Conn, user: &str) -> Result<u64, database::Error> {
        let count = conn.first(&self.unread, &[Param::Text(user)]).await?;
        Ok(count
            .and_then(first_column)
            .and_then(|c| c.parse().ok())
            .unwrap_or_default())
    }
}

/// One of Switchboard's own statements, which all parse (the unit tests build every one).
fn own(text: &str) -> Statement {
    Statement::parse(text).unwrap_or_else(|e| unreachable!("Switchboard's own SQL: {e}: {text}"))
}

/// The first column of a row, `None` for NULL.
fn first_column(row: Row) -> Option<String> {
    row.into_iter().next().flatten()
}

/// Whether an `is_active` value is true (`1`, `true`, `yes`; anything else is not).
fn truthy(value: &str) -> bool {
    let value = value.trim();
    value.eq_ignore_ascii_case("true")
        || value.eq_ignore_ascii_case("yes")
        || value.parse::<f64>().is_ok_and(|n| n != 0.0)
}

/// `2024-05-01 12:00:00.123` (UTC, as the database prints it) → `2024-05-01T12:00:00.123Z`.
fn iso(database_time: &str) -> String {
    if database_time.is_empty() {
        return String::new();
    }
    format!("{}Z", database_time.trim().replacen(' ', "T", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_statements_parse_in_both_dialects() {
        for dialect in [Dialect::MySql, Dialect::Postgres] {
            let sql = Sql::new(dialect);
            assert_eq!(sql.insert_notification.arity(), 6);
            assert_eq!(sql.purge_keys.arity(), 1);
            assert_eq!(sql.delivered.arity(), 2);
        }
        let pg = Sql::new(Dialect::Postgres);
        assert!(
            pg.purge_keys
                .text(Dialect::Postgres)
                .contains("$1::timestamp")
        );
        assert!(
            pg.read
                .text(Dialect::Postgres)
                .contains("id = $1 AND user_id = $2")
        );
    }

    #[test]
    fn times_and_flags() {
        assert_eq!(iso("2024-05-01 12:00:00.123"), "2024-05-01T12:00:00.123Z");
        assert!(truthy("1") && truthy("TRUE") && !truthy("0") && !truthy("no"));
    }
}
