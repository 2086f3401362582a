//! Who may join which channel: an ordered list of rules, first match wins.
//!
//! A rule is a channel name pattern and a check: `open`, `deny`, `self` (the placeholder is
//! the user's id), `role` (the JWT `role` reaches a rank), `claim` (a JWT claim lists the
//! channel), `callback` (the application's auth endpoint says yes), `sql` (a query returns a
//! row) or `set` (a Redis set holds the user). A channel no rule matches is decided by the
//! file's `default`: by default unmatched `private-`/`presence-` channels are refused and
//! public ones open; `default = "deny"` refuses them all. Every policy ends with the built-in
//! rule that `private-user.{id}` is its user's. Answers of `callback` and `sql` are cached per
//! user and channel; when they cannot answer, the subscription is refused as unavailable.

mod cache;
mod callback;
mod rules;
mod set;
mod sql;

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

pub use rules::PolicyConfig;

use crate::auth::Principal;
use crate::channel::{self, Kind, Refusal};
use crate::database::Database;
use cache::Cache;
use callback::Callback;
use rules::{Check, Match, Pattern, Rule, Unmatched, normalize_role};
use set::Sets;

/// Settings of the policy that do not live in its file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Longest a callback or query may take.
    pub timeout: Duration,
    /// How long callback and query answers are reused; zero disables the cache.
    pub cache_ttl: Duration,
    /// Most answers cached at once.
    pub cache_size: usize,
    /// The database of `sql` rules.
    pub database: Option<Database>,
    /// The Redis of `set` rules, and the prefix of their keys.
    pub redis: Option<(redis::Client, String)>,
    /// Headers `callback` rules forward beside the built-in allow-list (Authorization, Cookie, …).
    pub forward_headers: Vec<reqwest::header::HeaderName>,
}

/// The channel authorization policy of a node.
pub struct Policy {
    rules: Vec<Rule>,
    unmatched: Unmatched,
    roles: Vec<String>,
    user_info: Vec<String>,
    /// Present when a `callback` rule exists.
    callback: Option<Callback>,
    /// Present when a `sql` rule exists.
    database: Option<Database>,
    /// Present when Redis is configured.
    sets: Option<Sets>,
    timeout: Duration,
    cache: Option<Cache>,
}

/// One subscription to decide.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Who asks.
    pub principal: &'a Principal,
    /// The (validated) channel name.
    pub channel: &'a str,
    /// The socket's id, which the application knows as Echo's `X-Socket-ID`.
    pub socket_id: &'a str,
    /// The `auth` object of the subscribe payload, if any.
    pub auth: Option<&'a Value>,
}

/// A subscription allowed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grant {
    /// Presence member info from the callback's `channel_data`; `None` = build it from the JWT.
    pub member: Option<Value>,
}

impl Policy {
    /// Builds the policy; fails when a `sql` rule has no database or the HTTP client cannot be built.
    pub fn new(config: PolicyConfig, settings: Settings) -> Result<Self, String> {
        let needs = |kind: &str| config.rules.iter().find(|r| r.check.kind() == kind);
        let callback = needs("callback")
            .map(|_| Callback::new(settings.timeout, settings.forward_headers.clone()))
            .transpose()?;
        let database = match (needs("sql"), settings.database) {
            (Some(rule), None) => {
                return Err(format!(
                    "{}: allow = \"sql\" needs a database: set SWITCHBOARD_DATABASE_URL",
                    rule.label
                ));
            }
            (Some(_), database) => database,
            (None, _) => None,
        };
        Ok(Self {
            rules: config.rules,
            unmatched: config.unmatched,
            roles: config.roles,
            user_info: config.user_info,
            callback,
            database,
            sets: settings
                .redis
                .map(|(client, prefix)| Sets::new(client, prefix)),
            timeout: settings.timeout,
            cache: Cache::new(settings.cache_ttl, settings.cache_size),
        })
    }

    /// Claims the verifier must keep on the Principal (the claim rules' claim names + presence.user_info claims).
    pub fn retained_claims(&self) -> Vec<String> {
        let claims = self.rules.iter().filter_map(|rule| match &rule.check {
            Check::Claim(name) => Some(name.clone()),
            _ => None,
        });
        let all: BTreeSet<String> = claims.chain(self.user_info.iter().cloned()).collect();
        all.into_iter().collect()
    }

    /// Decides a subscription: the first rule whose pattern matches the channel decides, else
    /// the default. A refusal names what refused in the debug log; the client is told only
    /// that it is refused.
    pub async fn authorize(&self, request: &Request<'_>) -> Result<Grant, Refusal> {
        let found = self
            .rules
            .iter()
            .find_map(|rule| Some((rule, rule.pattern.matches(request.channel)?)));
        let (answer, by) = match found {
            Some((rule, matched)) => (self.check(rule, matched, request).await, &*rule.label),
            None => {
                let open = match self.unmatched {
                    Unmatched::Conventional => channel::kind(request.channel) == Kind::Public,
                    Unmatched::Deny => false,
                };
                (verdict(open), "the default (no rule matches)")
            }
        };
        if answer == Err(Refusal::Forbidden) {
            tracing::debug!(
                channel = request.channel,
                by,
                "subscription refused by the policy"
            );
        }
        answer
    }

    /// What a rule whose pattern matched says.
    async fn check(
        &self,
        rule: &Rule,
        matched: Match<'_>,
        request: &Request<'_>,
    ) -> Result<Grant, Refusal> {
        let principal = request.principal;
        let allowed = match &rule.check {
            Check::Open => true,
            Check::Deny => false,
            Check::SelfUser => matched.id == Some(&*principal.user_id),
            Check::Role { min_rank } => self.rank(principal).is_some_and(|rank| rank >= *min_rank),
            Check::Claim(name) => claim_covers(principal.claim(name), request.channel),
            Check::Callback(_) | Check::Sql(_) => {
                return self.ask(rule, matched, request).await;
            }
            Check::Set(key) => {
                let sets = self.sets.as_ref().ok_or_else(|| {
                    Refusal::Unavailable("membership sets need SWITCHBOARD_REDIS_URL".into())
                })?;
                sets.contains(
                    key,
                    matched.id,
                    &principal.user_id,
                    self.timeout,
                    &rule.label,
                )
                .await?
            }
        };
        verdict(allowed)
    }

    /// The presence member for a principal when the grant carries none: {"user_id": id, "user_info": {claims listed in presence.user_info that the token has}}
    pub fn member_from_token(&self, principal: &Principal) -> Value {
        let info: Map<String, Value> = self
            .user_info
            .iter()
            .filter_map(|name| Some((name.clone(), principal.claim(name)?.clone())))
            .collect();
        json!({"user_id": &*principal.user_id, "user_info": info})
    }

    /// The principal's rank in the hierarchy; `None` without a role or with an unknown one.
    fn rank(&self, principal: &Principal) -> Option<usize> {
        let role = normalize_role(principal.role.as_deref()?);
        self.roles.iter().position(|r| *r == role)
    }

    /// A `callback` or `sql` rule: from the cache, else from the back-end.
    async fn ask(
        &self,
        rule: &Rule,
        matched: Match<'_>,
        request: &Request<'_>,
    ) -> Result<Grant, Refusal> {
        let (user, channel) = (&*request.principal.user_id, request.channel);
        if let Some(answer) = self
            .cache
            .as_ref()
            .and_then(|c| c.get(user, channel, Instant::now()))
        {
            return answer;
        }
        let answer = match (&rule.check, &self.callback, &self.database) {
            (Check::Callback(url), Some(callback), _) => {
                callback.ask(url, request, &rule.label).await
            }
            (Check::Sql(query), _, Some(database)) => query
                .allows(
                    database.pool(),
                    &request.principal.user_id,
                    matched.id,
                    self.timeout,
                    &rule.label,
                )
                .await
                .and_then(verdict),
            // `new` sets up the client and the database whenever such a rule exists.
            _ => Err(Refusal::Unavailable("not configured".into())),
        };
        if let Some(cache) = &self.cache {
            cache.put(user, channel, &answer, Instant::now());
        }
        answer
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Rules only by pattern and kind: URLs and queries may carry credentials.
        let rules: Vec<String> = self
            .rules
            .iter()
            .map(|r| format!("{} {}", r.pattern, r.check.kind()))
            .collect();
        f.debug_struct("Policy")
            .field("rules", &rules)
            .field("roles", &self.roles)
            .field("timeout", &self.timeout)
            .field("cache", &self.cache.is_some())
            .finish_non_exhaustive()
    }
}

/// An allow or a refusal of the policy's own.
fn verdict(allowed: bool) -> Result<Grant, Refusal> {
    if allowed {
        Ok(Grant::default())
    } else {
        Err(Refusal::Forbidden)
    }
}

/// Whether a claim, an array of channel names or patterns, covers `channel`.
fn claim_covers(claim: Option<&Value>, channel: &str) -> bool {
    let Some(Value::Array(entries)) = claim else {
        return false;
    };
    entries.iter().filter_map(Value::as_str).any(|entry| {
        entry == channel
            || Pattern::parse(entry).is_ok_and(|pattern| pattern.matches(channel).is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> Principal {
        Principal {
            user_id: id.into(),
            role: None,
            claims: None,
            expires: None,
        }
    }

    fn with_role(id: &str, role: &str) -> Principal {
        Principal {
            role: Some(role.into()),
            ..user(id)
        }
    }

    fn with_claims(id: &str, claims: Value) -> Principal {
        let Value::Object(map) = claims else {
            panic!("claims must be an object");
        };
        Principal {
            claims: Some(map.into_iter().collect()),
            ..user(id)
        }
    }

    fn settings() -> Settings {
        Settings {
            timeout: Duration::from_secs(5),
            cache_ttl: Duration::from_secs(60),
            cache_size: 100,
            database: None,
            redis: None,
            forward_headers: Vec::new(),
        }
    }

    fn policy(toml: &str) -> Policy {
        let config = PolicyConfig::from_toml(toml).unwrap_or_else(|e| panic!("{e}"));
        Policy::new(config, settings()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn default_policy() -> Policy {
        Policy::new(PolicyConfig::default(), settings()).unwrap_or_else(|e| panic!("{e}"))
    }

    async fn decide(
        policy: &Policy,
        principal: &Principal,
        channel: &str,
    ) -> Result<Grant, Refusal> {
        let request = Request {
            principal,
            channel,
            socket_id: "s1",
            auth: None,
        };
        policy.authorize(&request).await
    }

    async fn allowed(policy: &Policy, principal: &Principal, channel: &str) -> bool {
        match decide(policy, principal, channel).await {
            Ok(grant) => {
                assert_eq!(grant, Grant::default());
                true
            }
            Err(Refusal::Forbidden) => false,
            Err(other) => panic!("{channel}: {other}"),
        }
    }

    #[tokio::test]
    async fn default_policy_is_todays() {
        let p = default_policy();
        assert!(allowed(&p, &user("1"), "news").await);
        assert!(allowed(&p, &user("1"), "private-user.1").await);
        assert!(!allowed(&p, &user("1"), "private-user.2").await);
        assert!(!allowed(&p, &user("1"), "private-user.10").await);
        assert!(!allowed(&p, &user("1"), "private-orders.1").await);
        assert!(!allowed(&p, &user("1"), "presence-chat.1").await);
        assert_eq!(p.retained_claims(), ["name", "picture"]);
    }

    #[tokio::test]
    async fn first_match_wins_and_unmatched_follow_the_kind() {
        let p = policy(
            r#"
            [[channel]]
            pattern = "private-open.1"
            allow = "role"
            min_role = "guest"
            [[channel]]
            pattern = "private-open.*"
            allow = "open"
            [[channel]]
            pattern = "closed.{id}"
            allow = "self"
            "#,
        );
        assert!(!allowed(&p, &user("1"), "private-open.1").await);
        assert!(allowed(&p, &user("1"), "private-open.2").await);
        assert!(
            !allowed(&p, &user("1"), "closed.x").await,
            "a public name under a rule"
        );
        assert!(allowed(&p, &user("1"), "news").await);
        assert!(!allowed(&p, &user("1"), "presence-x").await);
        assert!(
            allowed(&p, &user("1"), "private-user.1").await,
            "built-in rule kept"
        );
    }

    #[tokio::test]
    async fn deny_rules_and_a_deny_default() {
        let p = policy(
            r#"
            default = "deny"
            [[channel]]
            pattern = "public.secret"
            allow = "deny"
            [[channel]]
            pattern = "public.*"
            allow = "open"
            "#,
        );
        assert!(!allowed(&p, &user("1"), "public.secret").await, "deny rule");
        assert!(allowed(&p, &user("1"), "public.news").await);
        for unmatched in [
            "news",
            "private-orders.1",
            "presence-chat.1",
            "room:1",
            "group:1",
        ] {
            assert!(!allowed(&p, &user("1"), unmatched).await, "{unmatched}");
        }
        assert!(
            allowed(&p, &user("1"), "private-user.1").await,
            "the user channel's built-in rule stays"
        );
        assert!(!allowed(&p, &user("1"), "private-user.2").await);

        // Without `default`, the same deny rule; unmatched names by their kind, and the chat
        // rooms' built-in rule asks Redis (absent here).
        let p = policy("[[channel]]\npattern = \"public.secret\"\nallow = \"deny\"\n");
        assert!(!allowed(&p, &user("1"), "public.secret").await);
        assert!(allowed(&p, &user("1"), "news").await);
        assert!(!allowed(&p, &user("1"), "private-orders.1").await);
        assert!(matches!(
            decide(&p, &user("1"), "room:1").await,
            Err(Refusal::Unavailable(_))
        ));

        // A file rule comes before the built-in ones, so it can take the user channel back.
        let p = policy(
            "default = \"deny\"\n[[channel]]\npattern = \"private-user.*\"\nallow = \"deny\"\n",
        );
        assert!(!allowed(&p, &user("1"), "private-user.1").await);
    }

    #[tokio::test]
    async fn self_compares_the_placeholder() {
        let p = policy("[[channel]]\npattern = \"private-inbox.{user}.mail\"\nallow = \"self\"\n");
        assert!(allowed(&p, &user("7"), "private-inbox.7.mail").await);
        assert!(!allowed(&p, &user("7"), "private-inbox.77.mail").await);
        assert!(!allowed(&p, &user("7"), "private-inbox.7").await);
    }

    #[tokio::test]
    async fn roles_on_the_hierarchy() {
        let p = policy(
            "[[channel]]\npattern = \"presence-thread.{id}\"\nallow = \"role\"\nmin_role = \"member\"\n",
        );
        let thread = "presence-thread.1";
        for role in [
            "member",
            "senior_member",
            "moderator",
            "admin",
            "super_admin",
        ] {
            assert!(allowed(&p, &with_role("1", role), thread).await, "{role}");
        }
        for role in ["SUPER_ADMIN", "super-admin", "Super-Admin", " Member "] {
            assert!(allowed(&p, &with_role("1", role), thread).await, "{role}");
        }
        for role in ["guest", "GUEST", "superadmin", "owner", ""] {
            assert!(!allowed(&p, &with_role("1", role), thread).await, "{role}");
        }
        assert!(!allowed(&p, &user("1"), thread).await, "no role claim");
    }

    #[tokio::test]
    async fn custom_hierarchy() {
        let p = policy(
            "roles = [\"viewer\", \"editor\", \"owner\"]\n[[channel]]\npattern = \"doc.*\"\nallow = \"role\"\nmin_role = \"Editor\"\n",
        );
        assert!(allowed(&p, &with_role("1", "owner"), "doc.1").await);
        assert!(allowed(&p, &with_role("1", "EDITOR"), "doc.1").await);
        assert!(!allowed(&p, &with_role("1", "viewer"), "doc.1").await);
        assert!(
            !allowed(&p, &with_role("1", "admin"), "doc.1").await,
            "not in this hierarchy"
        );
    }

    #[tokio::test]
    async fn claims_list_channels_or_patterns() {
        let p = policy(
            r#"
            [[channel]]
            pattern = "admin.*"
            allow = "claim"
            [[channel]]
            pattern = "private-team.{id}"
            allow = "claim"
            claim = "teams"
            "#,
        );
        assert_eq!(
            p.retained_claims(),
            ["channels", "name", "picture", "teams"]
        );
        let admin = with_claims(
            "1",
            json!({"channels": ["admin.reports", "admin.logs.*", 5, "admin.{x}.audit"], "teams": ["private-team.{id}"]}),
        );
        assert!(allowed(&p, &admin, "admin.reports").await);
        assert!(!allowed(&p, &admin, "admin.reports2").await);
        assert!(allowed(&p, &admin, "admin.logs.today").await);
        assert!(allowed(&p, &admin, "admin.eu.audit").await);
        assert!(!allowed(&p, &admin, "admin.other").await);
        assert!(allowed(&p, &admin, "private-team.9").await);

        let missing = with_claims("1", json!({"teams": []}));
        assert!(!allowed(&p, &missing, "admin.reports").await);
        assert!(!allowed(&p, &user("1"), "admin.reports").await);
        let not_array = with_claims("1", json!({"channels": "admin.reports"}));
        assert!(!allowed(&p, &not_array, "admin.reports").await);
        let object = with_claims("1", json!({"channels": {"admin.reports": true}}));
        assert!(!allowed(&p, &object, "admin.reports").await);
    }

    #[test]
    fn sql_needs_a_database() {
        let config = PolicyConfig::from_toml(
            "[[channel]]\npattern = \"forum.{id}\"\nallow = \"sql\"\nquery = \"SELECT 1 WHERE :id\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let error = Policy::new(config, settings()).expect_err("no database");
        assert!(
            error.starts_with("[[channel]] #1 `forum.{id}`: "),
            "{error}"
        );
        assert!(error.contains("SWITCHBOARD_DATABASE_URL"), "{error}");
    }

    #[test]
    fn member_from_the_token() {
        let p = policy("[presence]\nuser_info = [\"name\", \"avatar\", \"absent\"]\n");
        assert_eq!(p.retained_claims(), ["absent", "avatar", "name"]);
        let principal = with_claims("7", json!({"name": "Ann", "avatar": "a.png"}));
        assert_eq!(
            p.member_from_token(&principal),
            json!({"user_id": "7", "user_info": {"name": "Ann", "avatar": "a.png"}})
        );
        assert_eq!(
            p.member_from_token(&user("8")),
            json!({"user_id": "8", "user_info": {}})
        );
    }

    #[test]
    fn debug_hides_urls() {
        let p = policy(
            "[[channel]]\npattern = \"private-a.*\"\nallow = \"callback\"\nurl = \"http://u:secret@app/auth\"\n",
        );
        let text = format!("{p:?}");
        assert!(text.contains("private-a.* callback"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}
