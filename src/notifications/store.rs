//! The notification tables: every read and write of them, each bounded by the database
//! timeout. A failure is an [`StoreError`], counted and logged here; the caller decides
//! what the client is told (never the URL or the SQL).

use std::future::Future;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, TxOpts, Value};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::NotificationSettings;
use crate::database::Database;
use crate::metrics::Metrics;

/// Rows written per multi-row statement.
const CHUNK: usize = 500;
/// Undelivered notifications sent on one connect; the rest come on the next one.
pub const MAX_PENDING: usize = 500;
/// Columns of a notification as [`Notification::from_row`] reads them.
const COLUMNS: &str = "n.id, n.user_id, n.type, n.title, n.message, n.data, \
     CAST(n.created_at AS CHAR), CAST(n.read_at AS CHAR)";

/// MySQL's and MariaDB's "duplicate entry for key" error.
const DUPLICATE_KEY: u16 = 1062;

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
    fn from_row(mut row: Row) -> Option<Self> {
        let id = text(&mut row, 0)?.parse().ok()?;
        Some(Self {
            id,
            user_id: text(&mut row, 1)?,
            kind: text(&mut row, 2).unwrap_or_default(),
            title: text(&mut row, 3).unwrap_or_default(),
            message: text(&mut row, 4).unwrap_or_default(),
            data: text(&mut row, 5).and_then(|json| RawValue::from_string(json).ok()),
            created_at: iso(&text(&mut row, 6).unwrap_or_default()),
            read_at: text(&mut row, 7).map(|t| iso(&t)),
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
    /// The user's unread notifications now.
    pub unread: u64,
}

/// The notification store on the application's database.
pub struct Store {
    database: Database,
    settings: NotificationSettings,
    metrics: Metrics,
}

impl Store {
    /// A store on `database`; nothing connects until the first call.
    pub fn new(database: Database, settings: NotificationSettings, metrics: Metrics) -> Self {
        Self {
            database,
            settings,
            metrics,
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
        work: impl Future<Output = Result<T, mysql_async::Error>>,
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
    async fn conn(&self) -> Result<Conn, mysql_async::Error> {
        let mut last = None;
        for _ in 0..3 {
            let mut conn = self.database.pool().get_conn().await?;
            match conn.ping().await {
                Ok(()) => return Ok(conn),
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(e),
            None => self.database.pool().get_conn().await,
        }
    }

    /// Recipient ids from the sector or role query.
    pub async fn recipients(&self, target: Target<'_>) -> Result<Vec<String>, StoreError> {
        let (op, query, value) = match target {
            Target::Sector(sector) => ("sector_recipients", &self.settings.sector_query, sector),
            Target::Role(role) => ("role_recipients", &self.settings.role_query, role),
        };
        self.run(op, async {
            let mut conn = self.conn().await?;
            let rows: Vec<Row> = conn.exec(query.as_str(), (value,)).await?;
            Ok(rows
                .into_iter()
                .filter_map(|mut row| text(&mut row, 0))
                .collect())
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
        self.run("create", async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await?;
            let now: Option<String> = tx.query_first("SELECT CAST(UTC_TIMESTAMP(3) AS CHAR)").await?;
            let now = now.unwrap_or_default();
            if let Some(key) = key {
                tx.exec_drop(
                    "DELETE FROM notification_requests WHERE created_at < ? - INTERVAL 1 DAY LIMIT 100",
                    (now.as_str(),),
                )
                .await?;
                let claimed = tx
                    .exec_drop(
                        "INSERT INTO notification_requests (idempotency_key, created_at) VALUES (?, ?)",
                        (key, now.as_str()),
                    )
                    .await;
                match claimed {
                    // A concurrent first call holds the key's row lock until it commits, so
                    // the repeat waits here and then reads the committed answer.
                    Err(mysql_async::Error::Server(e)) if e.code == DUPLICATE_KEY => {
                        tx.rollback().await?;
                        let first: Option<Option<String>> = conn
                            .exec_first(
                                "SELECT CAST(notifications AS CHAR) FROM notification_requests WHERE idempotency_key = ?",
                                (key,),
                            )
                            .await?;
                        let pairs = first
                            .flatten()
                            .and_then(|json| serde_json::from_str(&json).ok())
                            .unwrap_or_default();
                        return Ok(Created::Repeated(pairs));
                    }
                    other => other?,
                }
            }
            let mut created = Vec::with_capacity(recipients.len());
            for user in recipients {
                tx.exec_drop(
                    "INSERT INTO notifications (user_id, type, title, message, data, created_at) \
                     VALUES (?, ?, ?, ?, ?, ?)",
                    (user, new.kind, new.title, new.message, data.as_deref(), now.as_str()),
                )
                .await?;
                created.push(Notification {
                    id: tx.last_insert_id().unwrap_or_default(),
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
                let params: Vec<Value> = chunk
                    .iter()
                    .flat_map(|n| [Value::from(n.id), Value::from(n.user_id.as_str())])
                    .collect();
                tx.exec_drop(
                    format!(
                        "INSERT INTO notification_deliveries (notification_id, user_id, channel, status) VALUES {rows}"
                    ),
                    params,
                )
                .await?;
            }
            if let Some(key) = key {
                let pairs: Vec<(u64, &str)> =
                    created.iter().map(|n| (n.id, n.user_id.as_str())).collect();
                let pairs = serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".into());
                tx.exec_drop(
                    "UPDATE notification_requests SET notifications = ? WHERE idempotency_key = ?",
                    (pairs, key),
                )
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
                let rows: Vec<(String, u64)> = conn
                    .exec(
                        format!(
                            "SELECT user_id, COUNT(*) FROM notifications \
                             WHERE read_at IS NULL AND user_id IN ({marks}) GROUP BY user_id"
                        ),
                        chunk.to_vec(),
                    )
                    .await?;
                counts.extend(rows);
            }
            Ok(counts)
        })
        .await
    }

    /// One user's unread count.
    pub async fn unread_count(&self, user: &str) -> Result<u64, StoreError> {
        self.run("unread_count", async {
            let mut conn = self.conn().await?;
            unread(&mut conn, user).await
        })
        .await
    }

    /// Loads a user with the user query; `None` when there is no such user.
    pub async fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.run("user", async {
            let mut conn = self.conn().await?;
            let row: Option<Row> = conn
                .exec_first(self.settings.user_query.as_str(), (id,))
                .await?;
            Ok(row.map(|mut row| User {
                id: text(&mut row, 0).unwrap_or_else(|| id.to_owned()),
                name: text(&mut row, 1).unwrap_or_default(),
                email: text(&mut row, 2),
                role: text(&mut row, 3),
                sector_id: text(&mut row, 4),
                active: text(&mut row, 5).is_some_and(|v| truthy(&v)),
            }))
        })
        .await
    }

    /// The user's undelivered in-app notifications, oldest first (at most [`MAX_PENDING`]),
    /// counted as one more delivery attempt each.
    pub async fn pending(&self, user: &str) -> Result<Vec<Notification>, StoreError> {
        self.run("pending", async {
            let mut conn = self.conn().await?;
            let rows: Vec<Row> = conn
                .exec(
                    format!(
                        "SELECT {COLUMNS} FROM notification_deliveries d \
                         JOIN notifications n ON n.id = d.notification_id \
                         WHERE d.user_id = ? AND d.channel = 'IN_APP' AND d.status = 'PENDING' \
                         ORDER BY d.notification_id LIMIT {MAX_PENDING}"
                    ),
                    (user,),
                )
                .await?;
            let pending: Vec<Notification> =
                rows.into_iter().filter_map(Notification::from_row).collect();
            if let Some(last) = pending.last() {
                conn.exec_drop(
                    "UPDATE notification_deliveries SET attempts = attempts + 1 \
                     WHERE user_id = ? AND channel = 'IN_APP' AND status = 'PENDING' AND notification_id <= ?",
                    (user, last.id),
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
                mark_delivered(&mut conn, user, id).await
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
                        owned(&mut conn, user, id).await
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

    /// Marks a user's notification read (and delivered, if it was not yet).
    pub async fn read(&self, user: &str, id: u64) -> Result<Read, StoreError> {
        let (read, delay) = self
            .run("read", async {
                let mut conn = self.conn().await?;
                let changed = conn
                    .exec_iter(
                        "UPDATE notifications SET read_at = UTC_TIMESTAMP(3) \
                         WHERE id = ? AND user_id = ? AND read_at IS NULL",
                        (id, user),
                    )
                    .await?
                    .affected_rows()
                    > 0;
                let Some(read_at) = owned(&mut conn, user, id).await? else {
                    return Ok((None, None));
                };
                let delay = mark_delivered(&mut conn, user, id).await?;
                let unread = unread(&mut conn, user).await?;
                let read = Read {
                    read_at: read_at.map(|t| iso(&t)).unwrap_or_default(),
                    changed,
                    unread,
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
    /// Every user the role query returns.
    Role(&'a str),
}

/// Marks a pending in-app delivery delivered; returns the delay since creation when it was
/// pending.
async fn mark_delivered(
    conn: &mut Conn,
    user: &str,
    id: u64,
) -> Result<Option<Duration>, mysql_async::Error> {
    let changed = conn
        .exec_iter(
            "UPDATE notification_deliveries SET status = 'DELIVERED', delivered_at = UTC_TIMESTAMP(3) \
             WHERE notification_id = ? AND user_id = ? AND channel = 'IN_APP' AND status = 'PENDING'",
            (id, user),
        )
        .await?
        .affected_rows()
        > 0;
    if !changed {
        return Ok(None);
    }
    let micros: Option<Option<i64>> = conn
        .exec_first(
            "SELECT TIMESTAMPDIFF(MICROSECOND, n.created_at, d.delivered_at) \
             FROM notifications n JOIN notification_deliveries d \
             ON d.notification_id = n.id AND d.channel = 'IN_APP' WHERE n.id = ?",
            (id,),
        )
        .await?;
    let micros = micros.flatten().unwrap_or_default().max(0);
    Ok(Some(Duration::from_micros(micros as u64)))
}

/// `Some(read_at)` when the notification exists and belongs to `user`.
async fn owned(
    conn: &mut Conn,
    user: &str,
    id: u64,
) -> Result<Option<Option<String>>, mysql_async::Error> {
    conn.exec_first(
        "SELECT CAST(read_at AS CHAR) FROM notifications WHERE id = ? AND user_id = ?",
        (id, user),
    )
    .await
}

async fn unread(conn: &mut Conn, user: &str) -> Result<u64, mysql_async::Error> {
    let count: Option<u64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM notifications WHERE user_id = ? AND read_at IS NULL",
            (user,),
        )
        .await?;
    Ok(count.unwrap_or_default())
}

/// Column `index` as text, whatever its SQL type; `None` for NULL or a missing column.
fn text(row: &mut Row, index: usize) -> Option<String> {
    match row.take::<Value, usize>(index)? {
        Value::NULL => None,
        Value::Bytes(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Double(d) => Some(d.to_string()),
        Value::Date(y, m, d, h, mi, s, us) => Some(format!(
            "{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}.{:03}",
            us / 1000
        )),
        Value::Time(..) => None,
    }
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
    fn times_and_flags() {
        assert_eq!(iso("2024-05-01 12:00:00.123"), "2024-05-01T12:00:00.123Z");
        assert!(truthy("1") && truthy("TRUE") && !truthy("0") && !truthy("no"));
    }
}
