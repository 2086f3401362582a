//! MySQL/MariaDB through mysql_async: its pool, and statements run on a connection or a
//! transaction (both `Queryable`), every column read as text.

use std::sync::atomic::Ordering;

use mysql_async::prelude::Queryable;
use mysql_async::{Opts, Params, Value};

use super::{Error, Param, Pool, PoolStatus, Row, Statement};
use crate::database::Dialect;

/// The pool of a `mysql://` URL, its name for logs and its connection limit.
pub(super) fn pool(url: &str) -> Result<(Pool, String, usize), String> {
    let opts = Opts::from_url(url).map_err(|e| e.to_string())?;
    let name = format!(
        "{}:{}/{}",
        opts.ip_or_hostname(),
        opts.tcp_port(),
        opts.db_name().unwrap_or_default()
    );
    let max_connections = opts.pool_opts().constraints().max();
    Ok((
        Pool::MySql(mysql_async::Pool::new(opts)),
        name,
        max_connections,
    ))
}

/// Connections in use and idle.
pub(super) fn status(pool: &mysql_async::Pool) -> PoolStatus {
    let metrics = pool.metrics();
    PoolStatus {
        in_use: metrics.connections_in_use.load(Ordering::Relaxed),
        idle: metrics.connections_in_pool.load(Ordering::Relaxed),
    }
}

/// Every row.
pub(super) async fn rows<Q: Queryable>(
    conn: &mut Q,
    statement: &Statement,
    args: &[Param<'_>],
) -> Result<Vec<Row>, Error> {
    let rows: Vec<mysql_async::Row> = conn
        .exec(statement.text(Dialect::MySql), params(statement, args))
        .await?;
    Ok(rows.into_iter().map(row).collect())
}

/// The first row, if any.
pub(super) async fn first<Q: Queryable>(
    conn: &mut Q,
    statement: &Statement,
    args: &[Param<'_>],
) -> Result<Option<Row>, Error> {
    let first: Option<mysql_async::Row> = conn
        .exec_first(statement.text(Dialect::MySql), params(statement, args))
        .await?;
    Ok(first.map(row))
}

/// Runs it; the rows it changed.
pub(super) async fn exec<Q: Queryable>(
    conn: &mut Q,
    statement: &Statement,
    args: &[Param<'_>],
) -> Result<u64, Error> {
    let result = conn
        .exec_iter(statement.text(Dialect::MySql), params(statement, args))
        .await?;
    let changed = result.affected_rows();
    result.drop_result().await?;
    Ok(changed)
}

/// One value per `?`, taken from the argument of its slot.
fn params(statement: &Statement, args: &[Param<'_>]) -> Params {
    if statement.slots().is_empty() {
        return Params::Empty;
    }
    Params::Positional(
        statement
            .slots()
            .iter()
            .map(|slot| match args.get(*slot) {
                Some(Param::Text(text)) => Value::from(*text),
                Some(Param::Int(n)) => Value::from(*n),
                Some(Param::Null) | None => Value::NULL,
            })
            .collect(),
    )
}

fn row(mut row: mysql_async::Row) -> Row {
    (0..row.len()).map(|i| text(&mut row, i)).collect()
}

/// Column `index` as text, whatever its SQL type; `None` for NULL.
fn text(row: &mut mysql_async::Row, index: usize) -> Option<String> {
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
