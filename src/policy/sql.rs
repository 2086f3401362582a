//! `allow = "sql"`: a query against the application's database (MySQL/MariaDB or PostgreSQL)
//! that returns a row when the user may join.
//!
//! The user id and the pattern's placeholder are bound as the named parameters `:user_id`
//! and `:id`, never spliced into the text; which of them a query uses is found at load by the
//! lexer that also writes them as `?` or `$n` ([`Statement`]), so the names bound are exactly
//! the names the text has.

use std::time::Duration;

use crate::channel::Refusal;
use crate::database::{Param, Pool, Statement};

/// A checked `query` and the parameters it uses.
#[derive(Clone)]
pub struct Query {
    statement: Statement,
}

impl Query {
    /// Checks a query: only `:user_id`, and `:id` when the pattern has a placeholder.
    pub fn parse(text: &str, has_placeholder: bool) -> Result<Self, String> {
        let statement = Statement::parse(text).map_err(|_| {
            "the query mixes `?` and `:name` parameters; use only :user_id and :id".to_owned()
        })?;
        if statement.arity() > 0 && statement.names().is_empty() {
            return Err("the query uses `?`; use :user_id and :id".into());
        }
        for name in statement.names() {
            match name.as_str() {
                "user_id" => {}
                "id" if has_placeholder => {}
                "id" => {
                    return Err(
                        "the query uses `:id`, which needs a {placeholder} in the pattern".into(),
                    );
                }
                other => {
                    return Err(format!(
                        "the query uses `:{other}`; only :user_id and :id are bound"
                    ));
                }
            }
        }
        Ok(Self { statement })
    }

    /// The arguments for one request, in the order of the names the query uses.
    fn args<'a>(&self, user_id: &'a str, id: Option<&'a str>) -> Vec<Param<'a>> {
        self.statement
            .names()
            .iter()
            .map(|name| match (name.as_str(), id) {
                ("user_id", _) => Param::Text(user_id),
                (_, Some(id)) => Param::Text(id),
                (_, None) => Param::Null,
            })
            .collect()
    }

    /// Runs the query: `Ok(true)` when it returns a row. A slow or failing database is
    /// `Unavailable`, with details in the log only (never the URL or the SQL to the client).
    pub async fn allows(
        &self,
        pool: &Pool,
        user_id: &str,
        id: Option<&str>,
        timeout: Duration,
        label: &str,
    ) -> Result<bool, Refusal> {
        let args = self.args(user_id, id);
        let run = async {
            let mut conn = pool.conn().await?;
            conn.first(&self.statement, &args).await
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(row)) => Ok(row.is_some()),
            // A channel id the column cannot hold (`200#` for a bigint) matches no row.
            Ok(Err(e)) if e.is_bad_value() => Ok(false),
            Ok(Err(e)) => {
                tracing::warn!(rule = label, error = %e, "policy query failed");
                Err(Refusal::Unavailable("database error".into()))
            }
            Err(_) => {
                tracing::warn!(rule = label, ?timeout, "policy query timed out");
                Err(Refusal::Unavailable("database timed out".into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(args: Vec<Param<'_>>) -> Vec<String> {
        args.into_iter()
            .map(|arg| match arg {
                Param::Text(text) => text.to_owned(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn query(text: &str) -> Query {
        Query::parse(text, true).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn binds_only_the_names_used() {
        let both = query(
            "SELECT 1 FROM forums f JOIN users u ON u.id = :user_id WHERE f.id = :id AND u.level >= f.required_level",
        );
        assert_eq!(names(both.args("7", Some("3"))), ["7", "3"]);
        let user = query("SELECT 1 FROM admins WHERE user_id = :user_id");
        assert_eq!(names(user.args("7", Some("3"))), ["7"]);
        let id = query("SELECT 1 FROM open_forums WHERE id = :id AND id = :id");
        assert_eq!(names(id.args("7", Some("3"))), ["3"]);
        assert!(query("SELECT 1").args("7", None).is_empty());
    }

    #[test]
    fn names_in_strings_and_comments_are_not_parameters() {
        let q = query("SELECT ':id' /* :other */ FROM t WHERE a = :user_id::bigint -- :x\n");
        assert_eq!(names(q.args("7", Some("3"))), ["7"]);
    }

    #[test]
    fn refuses_unknown_or_unbindable_names() {
        let error = |text: &str, placeholder: bool| match Query::parse(text, placeholder) {
            Ok(_) => panic!("accepted {text}"),
            Err(e) => e,
        };
        assert!(error("SELECT :name", true).contains("`:name`"));
        assert!(error("SELECT :id", false).contains("needs a {placeholder}"));
        assert!(error("SELECT ? AND :id", true).contains("mixes"));
        assert!(error("SELECT ?", true).contains("`?`"));
        assert!(Query::parse("SELECT :user_id", false).is_ok());
    }
}
