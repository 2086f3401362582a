//! PostgreSQL through tokio-postgres in a deadpool pool, TLS by rustls (ring, webpki roots).
//!
//! Arguments go in PostgreSQL's text format, so the server reads `"7"` as whatever type the
//! statement's column has (bigint, uuid, an enum…), as MySQL converts. Columns come back in
//! the binary format and are turned into text here for the common types; a query of an
//! operator's that returns another type casts it (`::text`).

use std::error::Error as StdError;
use std::sync::Arc;

use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
use tokio_postgres::GenericClient;
use tokio_postgres::types::{Format, FromSql, IsNull, Kind, ToSql, Type, to_sql_checked};

use super::{Dialect, Error, Param, Pool, Row, Statement};

/// Connections a PostgreSQL pool opens unless the URL's `pool_max` says otherwise: each one is
/// a server process, so fewer than MySQL's 100.
pub(super) const DEFAULT_POOL_MAX: usize = 20;

/// The pool of a `postgres://` URL, its name for logs and its connection limit.
pub(super) fn pool(url: &str) -> Result<(Pool, String, usize), String> {
    // `pool_max` is ours, not a libpq parameter: taken out before tokio-postgres reads the URL.
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut max_connections = DEFAULT_POOL_MAX;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.strip_prefix("pool_max=") {
            Some(n) => {
                max_connections = n
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("pool_max must be a number above 0")?;
            }
            None => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    let host = config
        .get_hosts()
        .first()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let name = format!("{host}:{port}/{}", config.get_dbname().unwrap_or_default());
    let manager = Manager::from_config(
        config,
        tls()?,
        // A connection a server restart closed is dropped on its way out of the pool.
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(max_connections)
        .build()
        .map_err(|e| e.to_string())?;
    Ok((Pool::Postgres(pool), name, max_connections))
}

/// Rustls with ring and the public CAs, as mysql_async has it; used when the URL's `sslmode`
/// is `prefer` (the default, when the server offers TLS) or `require`.
fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS for PostgreSQL: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Every row.
pub(super) async fn rows<C: GenericClient>(
    client: &C,
    statement: &Statement,
    args: &[Param<'_>],
) -> Result<Vec<Row>, Error> {
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as _).collect();
    let rows = client
        .query(statement.text(Dialect::Postgres), &params)
        .await?;
    rows.iter().map(row).collect()
}

/// The first row, if any.
pub(super) async fn first<C: GenericClient>(
    client: &C,
    statement: &Statement,
    args: &[Param<'_>],
) -> Result<Option<Row>, Error> {
    Ok(rows(client, statement, args).await?.into_iter().next())
}

/// Runs it; the rows it changed.
pub(super) async fn exec<C: GenericClient>(
    client: &C,
    statement: &Statement,
    args: &[Param<'_>],
) -> Result<u64, Error> {
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as _).collect();
    Ok(client
        .execute(statement.text(Dialect::Postgres), &params)
        .await?)
}

fn row(row: &tokio_postgres::Row) -> Result<Row, Error> {
    (0..row.len())
        .map(|column| {
            row.try_get::<_, Text>(column)
                .map(|text| text.0)
                .map_err(|e| Error::Column {
                    column,
                    reason: e
                        .source()
                        .map_or_else(|| e.to_string(), ToString::to_string),
                })
        })
        .collect()
}

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Param::Text(text) => out.extend_from_slice(text.as_bytes()),
            Param::Int(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Param::Null => return Ok(IsNull::Yes),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

/// A column as text: what [`Row`] holds.
struct Text(Option<String>);

impl<'a> FromSql<'a> for Text {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        text(ty, raw).map(|t| Text(Some(t)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Text(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A binary-format value of the types a query here returns, as text.
fn text(ty: &Type, raw: &[u8]) -> Result<String, Box<dyn StdError + Sync + Send>> {
    let utf8 = |bytes: &[u8]| Ok(std::str::from_utf8(bytes)?.to_owned());
    match *ty {
        Type::BOOL => Ok(bool::from_sql(ty, raw)?.to_string()),
        Type::INT2 => Ok(i16::from_sql(ty, raw)?.to_string()),
        Type::INT4 => Ok(i32::from_sql(ty, raw)?.to_string()),
        Type::INT8 => Ok(i64::from_sql(ty, raw)?.to_string()),
        Type::OID => Ok(u32::from_sql(ty, raw)?.to_string()),
        Type::FLOAT4 => Ok(f32::from_sql(ty, raw)?.to_string()),
        Type::FLOAT8 => Ok(f64::from_sql(ty, raw)?.to_string()),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
            utf8(raw)
        }
        // A version byte (1), then the text.
        Type::JSONB => match raw.split_first() {
            Some((1, json)) => utf8(json),
            _ => Err("unknown jsonb version".into()),
        },
        Type::UUID => {
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            if hex.len() != 32 {
                return Err("uuid of the wrong length".into());
            }
            Ok(format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            ))
        }
        _ => match ty.kind() {
            // An enum's binary form is its label (a role column is often one).
            Kind::Enum(_) => utf8(raw),
            Kind::Domain(inner) => text(inner, raw),
            _ => Err(format!(
                "type {} cannot be read; cast it to text in the query",
                ty.name()
            )
            .into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_as_text() {
        let read = |ty: &Type, raw: &[u8]| text(ty, raw).expect("readable");
        assert_eq!(read(&Type::INT8, &42i64.to_be_bytes()), "42");
        assert_eq!(read(&Type::INT4, &(-7i32).to_be_bytes()), "-7");
        assert_eq!(read(&Type::BOOL, &[1]), "true");
        assert_eq!(read(&Type::VARCHAR, b"Ana"), "Ana");
        assert_eq!(read(&Type::JSONB, b"\x01{\"k\":1}"), "{\"k\":1}");
        let uuid: Vec<u8> = (0u8..16).collect();
        assert_eq!(
            read(&Type::UUID, &uuid),
            "00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
        let error = text(&Type::TIMESTAMP, &[0; 8]).expect_err("not read");
        assert!(error.to_string().contains("cast it to text"), "{error}");
    }

    #[test]
    fn arguments_go_as_text() {
        let mut out = BytesMut::new();
        let sent = Param::Int(17)
            .to_sql(&Type::INT8, &mut out)
            .expect("encodes");
        assert!(matches!(sent, IsNull::No));
        assert_eq!(&out[..], b"17");
        assert!(matches!(
            Param::Text("x").encode_format(&Type::INT8),
            Format::Text
        ));
        assert!(matches!(
            Param::Null.to_sql(&Type::TEXT, &mut out),
            Ok(IsNull::Yes)
        ));
    }
}
