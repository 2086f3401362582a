//! `allow = "sql"`: a query against MySQL/MariaDB that returns a row when the user may join.
//!
//! The user id and the pattern's placeholder are bound as the named parameters `:user_id`
//! and `:id`, never spliced into the text; which of them a query uses is found at load with
//! the parser mysql_async itself runs, so the names bound are exactly the names it looks for.

use std::collections::HashMap;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Pool, Row, Value};
use mysql_common::named_params::ParsedNamedParams;

use crate::channel::Refusal;

/// A checked `query` and the parameters it uses.
#[derive(Clone)]
pub struct Query {
    text: String,
    uses_user_id: bool,
    uses_id: bool,
}

impl Query {
    /// Checks a query: only `:user_id`, and `:id` when the pattern has a placeholder.
    pub fn parse(text: &str, has_placeholder: bool) -> Result<Self, String> {
        let parsed = ParsedNamedParams::parse(text.as_bytes())
            .map_err(|_| "the query mixes `?` and `:name` parameters; use only :user_id and :id")?;
        let (mut uses_user_id, mut uses_id) = (false, false);
        for name in parsed.params() {
            match &**name {
                b"user_id" => uses_user_id = true,
                b"id" if has_placeholder => uses_id = true,
                b"id" => {
                    return Err(
                        "the query uses `:id`, which needs a {placeholder} in the pattern".into(),
                    );
                }
                other => {
                    return Err(format!(
                        "the query uses `:{}`; only :user_id and :id are bound",
                        String::from_utf8_lossy(other)
                    ));
                }
            }
        }
        Ok(Self {
            text: text.to_owned(),
            uses_user_id,
            uses_id,
        })
    }

    /// The parameters for one request: only the names the query uses.
    pub fn params(&self, user_id: &str, id: Option<&str>) -> Params {
        let mut named = HashMap::new();
        if self.uses_user_id {
            named.insert(b"user_id".to_vec(), Value::from(user_id));
        }
        if let (true, Some(id)) = (self.uses_id, id) {
            named.insert(b"id".to_vec(), Value::from(id));
        }
        if named.is_empty() {
            Params::Empty
        } else {
            Params::Named(named)
        }
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
        let params = self.params(user_id, id);
        let run = async {
            let mut conn = pool.get_conn().await?;
            conn.exec_first::<Row, _, _>(self.text.as_str(), params)
                .await
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(row)) => Ok(row.is_some()),
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

    fn names(params: Params) -> Vec<(String, Value)> {
        let mut names: Vec<_> = match params {
            Params::Empty => Vec::new(),
            Params::Named(map) => map
                .into_iter()
                .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
                .collect(),
            Params::Positional(_) => panic!("positional"),
        };
        names.sort_by(|a, b| a.0.cmp(&b.0));
        names
    }

    fn query(text: &str) -> Query {
        Query::parse(text, true).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn binds_only_the_names_used() {
        let both = query(
            "SELECT 1 FROM forums f JOIN users u ON u.id = :user_id WHERE f.id = :id AND u.level >= f.required_level",
        );
        assert_eq!(
            names(both.params("7", Some("3"))),
            [
                ("id".into(), Value::from("3")),
                ("user_id".into(), Value::from("7"))
            ]
        );
        let user = query("SELECT 1 FROM admins WHERE user_id = :user_id");
        assert_eq!(
            names(user.params("7", Some("3"))),
            [("user_id".into(), Value::from("7"))]
        );
        let id = query("SELECT 1 FROM open_forums WHERE id = :id AND id = :id");
        assert_eq!(
            names(id.params("7", Some("3"))),
            [("id".into(), Value::from("3"))]
        );
        let none = query("SELECT 1");
        assert!(matches!(none.params("7", None), Params::Empty));
    }

    #[test]
    fn names_in_strings_and_comments_are_not_parameters() {
        let q = query("SELECT ':id' /* :other */ FROM t WHERE a = :user_id -- :x\n");
        assert_eq!(names(q.params("7", Some("3"))).len(), 1);
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
        assert!(Query::parse("SELECT :user_id", false).is_ok());
    }
}
