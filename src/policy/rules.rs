//! The policy's TOML: `roles`, `default`, `[presence]` and the ordered `[[channel]]` rules,
//! parsed and checked at load, so a mistake stops the node at start instead of refusing users
//! later.

use std::fmt;

use serde::Deserialize;

use super::sql::Query;
use crate::channel;

/// The role hierarchy when the file names none, lowest first.
pub const DEFAULT_ROLES: [&str; 6] = [
    "guest",
    "member",
    "senior_member",
    "moderator",
    "admin",
    "super_admin",
];

/// The built-in rule every policy ends with: every socket joins its own user channel at
/// connect, so subscribing to it again must agree.
const USER_CHANNEL: &str = "private-user.{id}";

/// A channel name pattern: literal text with at most one `{name}` placeholder (a non-empty
/// run of any text) or a trailing `*` (any rest, empty included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    prefix: String,
    tail: Tail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tail {
    /// The whole name is the prefix.
    Exact,
    /// `*`: anything may follow the prefix.
    Rest,
    /// `{name}`: a non-empty run between the prefix and this suffix.
    Placeholder { suffix: String },
}

impl Pattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("the pattern is empty".into());
        }
        let (literal, star) = match text.strip_suffix('*') {
            Some(rest) => (rest, true),
            None => (text, false),
        };
        if literal.contains('*') {
            return Err("`*` is only allowed at the end of a pattern".into());
        }
        let (prefix, tail) = match literal.split_once('{') {
            None if star => (literal, Tail::Rest),
            None => (literal, Tail::Exact),
            Some((prefix, rest)) => {
                let (name, suffix) = rest.split_once('}').ok_or("`{` without a closing `}`")?;
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "`{{{name}}}` is not a placeholder: name it with letters, digits and _"
                    ));
                }
                if suffix.contains('{') {
                    return Err("a pattern has at most one {placeholder}".into());
                }
                if star {
                    return Err(
                        "a pattern has either one {placeholder} or a trailing `*`, not both".into(),
                    );
                }
                (
                    prefix,
                    Tail::Placeholder {
                        suffix: suffix.into(),
                    },
                )
            }
        };
        let suffix = match &tail {
            Tail::Placeholder { suffix } => suffix.as_str(),
            Tail::Exact | Tail::Rest => "",
        };
        if let Some(bad) = prefix
            .chars()
            .chain(suffix.chars())
            .find(|c| !channel::is_name_char(*c))
        {
            return Err(format!(
                "{bad:?} cannot appear in a channel name, so the pattern would never match"
            ));
        }
        Ok(Self {
            text: text.into(),
            prefix: prefix.into(),
            tail,
        })
    }

    /// Whether `name` matches, and if so the placeholder's text.
    pub fn matches<'n>(&self, name: &'n str) -> Option<Match<'n>> {
        let rest = name.strip_prefix(self.prefix.as_str())?;
        match &self.tail {
            Tail::Exact => rest.is_empty().then_some(Match { id: None }),
            Tail::Rest => Some(Match { id: None }),
            Tail::Placeholder { suffix } => rest
                .strip_suffix(suffix.as_str())
                .filter(|id| !id.is_empty())
                .map(|id| Match { id: Some(id) }),
        }
    }

    /// Whether the pattern has a `{name}` placeholder.
    pub fn has_placeholder(&self) -> bool {
        matches!(self.tail, Tail::Placeholder { .. })
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A channel name that matched a [`Pattern`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match<'n> {
    /// The placeholder's text, when the pattern has one.
    pub id: Option<&'n str>,
}

/// What a rule checks once its pattern matched.
#[derive(Clone)]
pub enum Check {
    /// Everyone.
    Open,
    /// No one.
    Deny,
    /// The placeholder is the user's own id.
    SelfUser,
    /// The `role` claim reaches this rank of the hierarchy.
    Role {
        /// Index of `min_role` in the hierarchy.
        min_rank: usize,
    },
    /// This claim, an array of channel names or patterns, covers the channel.
    Claim(String),
    /// The application's auth endpoint says yes (Laravel's `/broadcasting/auth`).
    Callback(reqwest::Url),
    /// This query returns a row.
    Sql(Query),
    /// The user is in this Redis set (`{id}` replaced by the placeholder).
    Set(String),
}

impl Check {
    /// The `allow` value that names this check.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Deny => "deny",
            Self::SelfUser => "self",
            Self::Role { .. } => "role",
            Self::Claim(_) => "claim",
            Self::Callback(_) => "callback",
            Self::Sql(_) => "sql",
            Self::Set(_) => "set",
        }
    }
}

/// One `[[channel]]` rule.
#[derive(Clone)]
pub struct Rule {
    /// Which channels it covers.
    pub pattern: Pattern,
    /// Who may join them.
    pub check: Check,
    /// `[[channel]] #n `pattern`` for messages; `built-in` for the built-in rule.
    pub label: String,
}

/// What becomes of a channel no rule matches: the file's top-level `default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// Laravel's convention: `private-…` and `presence-…` refused, any other name open.
    #[default]
    Conventional,
    /// Refused, whatever the name.
    Deny,
}

/// The policy settings of a TOML file, checked; the rule list ends with the built-in rules.
#[derive(Clone)]
pub struct PolicyConfig {
    /// The role hierarchy, lowest first, in [`normalize_role`] form.
    pub(super) roles: Vec<String>,
    /// Claims copied into a presence member's `user_info`.
    pub(super) user_info: Vec<String>,
    /// Ordered rules; the first whose pattern matches decides.
    pub(super) rules: Vec<Rule>,
    /// What decides when no rule matches.
    pub(super) unmatched: Unmatched,
}

impl Default for PolicyConfig {
    /// The built-in policy: only the built-in rules.
    fn default() -> Self {
        Self {
            roles: DEFAULT_ROLES.iter().map(|r| (*r).to_owned()).collect(),
            // `picture`: the OpenID Connect claim chat clients show as the user's image.
            user_info: vec!["name".into(), "picture".into()],
            rules: built_in_rules(Unmatched::default()),
            unmatched: Unmatched::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    roles: Option<Vec<String>>,
    presence: Option<PresenceShape>,
    default: Option<toml::Value>,
    #[serde(default)]
    channel: Vec<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceShape {
    user_info: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleShape {
    pattern: String,
    allow: String,
    min_role: Option<String>,
    url: Option<String>,
    query: Option<String>,
    claim: Option<String>,
    key: Option<String>,
}

impl PolicyConfig {
    /// The top-level keys of the policy, also accepted inside the `--config` file.
    pub const KEYS: [&'static str; 4] = ["roles", "presence", "channel", "default"];

    /// Parses a policy file's text; the error is one line.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let shape: FileShape = toml::from_str(text).map_err(|e| toml_error(&e, Some(text)))?;
        Self::from_shape(shape)
    }

    /// Parses the policy keys taken out of the `--config` file.
    pub fn from_table(table: toml::Table) -> Result<Self, String> {
        let shape: FileShape = toml::Value::Table(table)
            .try_into()
            .map_err(|e| toml_error(&e, None))?;
        Self::from_shape(shape)
    }

    fn from_shape(shape: FileShape) -> Result<Self, String> {
        let roles = match shape.roles {
            None => Self::default().roles,
            Some(roles) => {
                let roles: Vec<String> = roles.iter().map(|r| normalize_role(r)).collect();
                if roles.is_empty() {
                    return Err("`roles` is empty".into());
                }
                if roles.iter().any(String::is_empty) {
                    return Err("`roles` has an empty name".into());
                }
                if let Some((i, role)) = roles
                    .iter()
                    .enumerate()
                    .find(|(i, role)| roles[..*i].contains(role))
                {
                    return Err(format!(
                        "`roles` names `{role}` twice (entry {}; case, - and _ do not count)",
                        i + 1
                    ));
                }
                roles
            }
        };
        let user_info = shape
            .presence
            .and_then(|p| p.user_info)
            .unwrap_or_else(|| Self::default().user_info);
        if user_info.iter().any(|c| c.trim().is_empty()) {
            return Err("`presence.user_info` has an empty claim name".into());
        }
        let unmatched = match shape.default {
            None => Unmatched::default(),
            Some(value) => value.clone().try_into().map_err(|_| {
                format!("`default = {value}`: expected \"conventional\" or \"deny\"")
            })?,
        };
        let mut rules = shape
            .channel
            .into_iter()
            .enumerate()
            .map(|(i, table)| parse_rule(i + 1, table, &roles))
            .collect::<Result<Vec<_>, _>>()?;
        rules.extend(built_in_rules(unmatched));
        Ok(Self {
            roles,
            user_info,
            rules,
            unmatched,
        })
    }
}

/// A role as it is compared: lowercase, with `-` read as `_`.
pub fn normalize_role(role: &str) -> String {
    role.trim().to_ascii_lowercase().replace('-', "_")
}

/// Rules a policy ends with, after the file's own (so a file rule for the same names wins): a
/// user's own channel, which every socket joins at connect and so must be granted whatever
/// the default; and, unless `default = "deny"`, chat rooms and groups open to the members of
/// the Redis sets the back-end keeps. A deny-by-default file grants only what it lists, and
/// those two are grants the file did not make.
fn built_in_rules(unmatched: Unmatched) -> Vec<Rule> {
    let placeholder = |text: &str, prefix: &str, check: Check| Rule {
        pattern: Pattern {
            text: text.into(),
            prefix: prefix.into(),
            tail: Tail::Placeholder {
                suffix: String::new(),
            },
        },
        check,
        label: "built-in".into(),
    };
    let mut rules = vec![placeholder(USER_CHANNEL, "private-user.", Check::SelfUser)];
    if unmatched == Unmatched::Conventional {
        // The same kinds and keys the members API writes (`members:room:{id}`, …).
        for kind in crate::members::KINDS {
            rules.push(placeholder(
                &format!("{kind}{{id}}"),
                kind,
                Check::Set(format!("members:{kind}{{id}}")),
            ));
        }
    }
    rules
}

fn parse_rule(index: usize, table: toml::Table, roles: &[String]) -> Result<Rule, String> {
    let pattern_text = table
        .get("pattern")
        .and_then(toml::Value::as_str)
        .map(str::to_owned);
    let label = match &pattern_text {
        Some(pattern) => format!("[[channel]] #{index} `{pattern}`"),
        None => format!("[[channel]] #{index}"),
    };
    let fail = |problem: String| format!("{label}: {problem}");
    let shape: RuleShape = toml::Value::Table(table)
        .try_into()
        .map_err(|e| fail(toml_error(&e, None)))?;
    let pattern = Pattern::parse(&shape.pattern).map_err(fail)?;
    // Keys that belong to another kind of check are mistakes, not harmless extras.
    let given = [
        ("min_role", shape.min_role.is_some()),
        ("url", shape.url.is_some()),
        ("query", shape.query.is_some()),
        ("claim", shape.claim.is_some()),
        ("key", shape.key.is_some()),
    ];
    let applies: &[&str] = match shape.allow.as_str() {
        "open" | "deny" | "self" => &[],
        "role" => &["min_role"],
        "claim" => &["claim"],
        "callback" => &["url"],
        "sql" => &["query"],
        "set" => &["key"],
        other => {
            return Err(fail(format!(
                "unknown allow = \"{other}\" (expected open, deny, self, role, claim, callback, sql or set)"
            )));
        }
    };
    if let Some((key, _)) = given
        .iter()
        .find(|(key, set)| *set && !applies.contains(key))
    {
        return Err(fail(format!(
            "`{key}` does not apply to allow = \"{}\"",
            shape.allow
        )));
    }
    let needs = |value: Option<String>, key: &str| {
        value
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| fail(format!("allow = \"{}\" needs `{key}`", shape.allow)))
    };
    let check = match shape.allow.as_str() {
        "open" => Check::Open,
        "deny" => Check::Deny,
        "self" if !pattern.has_placeholder() => {
            return Err(fail(
                "allow = \"self\" needs a {placeholder} in the pattern to compare with the user id"
                    .into(),
            ));
        }
        "self" => Check::SelfUser,
        "role" => {
            let min_role = needs(shape.min_role, "min_role")?;
            let min_rank = roles
                .iter()
                .position(|r| *r == normalize_role(&min_role))
                .ok_or_else(|| {
                    fail(format!(
                        "min_role `{min_role}` is not in the role hierarchy ({})",
                        roles.join(", ")
                    ))
                })?;
            Check::Role { min_rank }
        }
        "claim" => {
            let claim = shape
                .claim
                .map_or_else(|| "channels".to_owned(), |c| c.trim().to_owned());
            if claim.is_empty() {
                return Err(fail("`claim` is empty".into()));
            }
            Check::Claim(claim)
        }
        "callback" => {
            let url = needs(shape.url, "url")?;
            let parsed = reqwest::Url::parse(url.trim())
                .map_err(|e| fail(format!("url is not a URL ({e})")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(fail("url must be http:// or https://".into()));
            }
            Check::Callback(parsed)
        }
        "set" => Check::Set(needs(shape.key, "key")?.trim().to_owned()),
        _ => {
            let query = needs(shape.query, "query")?;
            Check::Sql(Query::parse(&query, pattern.has_placeholder()).map_err(fail)?)
        }
    };
    Ok(Rule {
        pattern,
        check,
        label,
    })
}

/// A TOML error on one line, with its line number when the text is known.
fn toml_error(error: &toml::de::Error, text: Option<&str>) -> String {
    let message = error.message().trim().replace('\n', " ");
    match (error.span(), text) {
        (Some(span), Some(text)) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        _ => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> Pattern {
        Pattern::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn load_error(text: &str) -> String {
        match PolicyConfig::from_toml(text) {
            Ok(_) => panic!("loaded:\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn placeholder_patterns() {
        let p = pattern("presence-thread.{id}");
        assert!(p.has_placeholder());
        assert_eq!(
            p.matches("presence-thread.42"),
            Some(Match { id: Some("42") })
        );
        assert_eq!(
            p.matches("presence-thread.4.2"),
            Some(Match { id: Some("4.2") })
        );
        assert_eq!(p.matches("presence-thread."), None, "empty placeholder");
        assert_eq!(p.matches("presence-thread"), None);
        assert_eq!(p.matches("private-thread.1"), None);

        let p = pattern("forum.{forum_id}.posts");
        assert_eq!(p.matches("forum.7.posts"), Some(Match { id: Some("7") }));
        assert_eq!(p.matches("forum..posts"), None);
        assert_eq!(p.matches("forum.7.post"), None);
    }

    #[test]
    fn literal_and_star_patterns() {
        let p = pattern("news");
        assert!(!p.has_placeholder());
        assert_eq!(p.matches("news"), Some(Match { id: None }));
        assert_eq!(p.matches("news2"), None);
        let p = pattern("admin.*");
        assert_eq!(p.matches("admin.x.y"), Some(Match { id: None }));
        assert_eq!(p.matches("admin."), Some(Match { id: None }));
        assert_eq!(p.matches("admin"), None);
        assert_eq!(pattern("*").matches("anything"), Some(Match { id: None }));
        assert_eq!(p.to_string(), "admin.*");
    }

    #[test]
    fn rejected_patterns() {
        for (text, why) in [
            ("", "empty"),
            ("a.{x}.{y}", "at most one"),
            ("a*.b", "only allowed at the end"),
            ("a.**", "only allowed at the end"),
            ("a.{id}.*", "not both"),
            ("a.{id", "without a closing"),
            ("a.{}", "not a placeholder"),
            ("a.{i-d}", "not a placeholder"),
            ("a b.{id}", "cannot appear"),
            ("a.}", "cannot appear"),
        ] {
            let error = Pattern::parse(text).expect_err(text);
            assert!(error.contains(why), "{text}: {error}");
        }
    }

    #[test]
    fn built_in_rules_are_parsed_patterns() {
        let patterns = |unmatched| -> Vec<Pattern> {
            built_in_rules(unmatched)
                .into_iter()
                .map(|r| r.pattern)
                .collect()
        };
        assert_eq!(
            patterns(Unmatched::Conventional),
            [
                pattern(USER_CHANNEL),
                pattern("room:{id}"),
                pattern("group:{id}")
            ]
        );
        assert_eq!(patterns(Unmatched::Deny), [pattern(USER_CHANNEL)]);
        let config = PolicyConfig::default();
        assert_eq!(config.rules.len(), 3);
        assert_eq!(config.unmatched, Unmatched::Conventional);
        assert_eq!(config.roles, DEFAULT_ROLES);
        assert_eq!(config.user_info, ["name", "picture"]);
    }

    #[test]
    fn default_deny_keeps_only_the_user_channel_after_the_files_rules() {
        let config = PolicyConfig::from_toml(
            "default = \"deny\"\n[[channel]]\npattern = \"room:{id}\"\nallow = \"deny\"\n",
        )
        .expect("loads");
        assert_eq!(config.unmatched, Unmatched::Deny);
        let rules: Vec<(String, &str)> = config
            .rules
            .iter()
            .map(|r| (r.pattern.to_string(), r.check.kind()))
            .collect();
        assert_eq!(
            rules,
            [
                ("room:{id}".to_owned(), "deny"),
                (USER_CHANNEL.to_owned(), "self")
            ]
        );
        let config = PolicyConfig::from_toml("default = \"conventional\"\n").expect("loads");
        assert_eq!(config.unmatched, Unmatched::Conventional);
        assert_eq!(config.rules.len(), 3);
    }

    #[test]
    fn loads_every_kind() {
        let config = PolicyConfig::from_toml(
            r#"
            roles = ["Reader", "Writer-Pro"]
            [presence]
            user_info = ["name", "avatar"]

            [[channel]]
            pattern = "public.*"
            allow = "open"
            [[channel]]
            pattern = "public.secret"
            allow = "deny"
            [[channel]]
            pattern = "private-inbox.{id}"
            allow = "self"
            [[channel]]
            pattern = "presence-thread.{id}"
            allow = "role"
            min_role = "WRITER_PRO"
            [[channel]]
            pattern = "admin.*"
            allow = "claim"
            [[channel]]
            pattern = "ops.*"
            allow = "claim"
            claim = "ops_channels"
            [[channel]]
            pattern = "private-orders.{id}"
            allow = "callback"
            url = "http://app.internal/broadcasting/auth"
            [[channel]]
            pattern = "forum.{id}"
            allow = "sql"
            query = "SELECT 1 FROM forums WHERE id = :id AND owner = :user_id"
            "#,
        )
        .expect("loads");
        assert_eq!(config.roles, ["reader", "writer_pro"]);
        assert_eq!(config.user_info, ["name", "avatar"]);
        let kinds: Vec<_> = config.rules.iter().map(|r| r.check.kind()).collect();
        assert_eq!(
            kinds,
            [
                "open", "deny", "self", "role", "claim", "claim", "callback", "sql", "self", "set",
                "set"
            ]
        );
        assert!(matches!(config.rules[3].check, Check::Role { min_rank: 1 }));
        assert!(matches!(&config.rules[4].check, Check::Claim(c) if c == "channels"));
        assert!(matches!(&config.rules[5].check, Check::Claim(c) if c == "ops_channels"));
        assert_eq!(config.rules[2].label, "[[channel]] #3 `private-inbox.{id}`");
        assert_eq!(config.rules[8].label, "built-in");
    }

    #[test]
    fn load_errors_name_the_rule() {
        let rule = |body: &str| format!("[[channel]]\npattern = \"x.{{id}}\"\n{body}\n");
        for (text, why) in [
            (rule("allow = \"maybe\""), "unknown allow = \"maybe\""),
            (rule("allow = \"role\""), "needs `min_role`"),
            (rule("allow = \"role\"\nmin_role = \"king\""), "not in the role hierarchy"),
            (rule("allow = \"callback\""), "needs `url`"),
            (rule("allow = \"callback\"\nurl = \"ftp://x\""), "http:// or https://"),
            (rule("allow = \"callback\"\nurl = \"not a url\""), "not a URL"),
            (rule("allow = \"sql\""), "needs `query`"),
            (rule("allow = \"sql\"\nquery = \"SELECT :other\""), "`:other`"),
            (rule("allow = \"claim\"\nclaim = \"\""), "`claim` is empty"),
            (rule("allow = \"open\"\nurl = \"http://x\""), "`url` does not apply"),
            (rule("allow = \"deny\"\nquery = \"SELECT 1\""), "`query` does not apply"),
            (rule("allow = \"open\"\ncolour = \"red\""), "unknown field `colour`"),
            (rule(""), "missing field `allow`"),
            (
                "[[channel]]\npattern = \"a.{x}.{y}\"\nallow = \"open\"\n".into(),
                "at most one",
            ),
            ("[[channel]]\nallow = \"open\"\n".into(), "missing field `pattern`"),
            (
                "[[channel]]\npattern = \"private-a.*\"\nallow = \"self\"\n".into(),
                "needs a {placeholder}",
            ),
            (
                "[[channel]]\npattern = \"forum.*\"\nallow = \"sql\"\nquery = \"SELECT 1 WHERE :id\"\n"
                    .into(),
                "`:id`, which needs a {placeholder}",
            ),
        ] {
            let error = load_error(&text);
            assert!(error.contains(why), "{text}\n→ {error}");
            assert!(error.starts_with("[[channel]] #1"), "{text}\n→ {error}");
        }
        let error = load_error(
            "[[channel]]\npattern = \"a\"\nallow = \"open\"\n[[channel]]\npattern = \"b.*\"\nallow = \"nope\"\n",
        );
        assert!(error.starts_with("[[channel]] #2 `b.*`: "), "{error}");
    }

    #[test]
    fn load_errors_at_the_top() {
        for (text, why) in [
            ("colour = 1\n", "line 1: unknown field `colour`"),
            ("roles = []\n", "`roles` is empty"),
            ("roles = [\"a\", \"B\", \"b\"]\n", "names `b` twice"),
            ("roles = [\"a\", \" \"]\n", "empty name"),
            ("[presence]\nuser_info = [\"\"]\n", "empty claim name"),
            ("[presence]\navatar = true\n", "unknown field `avatar`"),
            ("\n\nroles = \n", "line 3"),
            (
                "default = \"open\"\n",
                "`default = \"open\"`: expected \"conventional\" or \"deny\"",
            ),
            ("default = false\n", "`default = false`: expected"),
        ] {
            let error = load_error(text);
            assert!(error.contains(why), "{text:?} → {error}");
            assert!(!error.contains('\n'), "one line: {error}");
        }
    }

    #[test]
    fn example_file_loads() {
        let config = PolicyConfig::from_toml(include_str!("../../examples/policy.toml"))
            .unwrap_or_else(|e| panic!("examples/policy.toml: {e}"));
        assert_eq!(config.rules.len(), 10);
        assert_eq!(config.user_info, ["name", "avatar"]);
        let config = PolicyConfig::from_toml(include_str!("../../examples/mechamap-policy.toml"))
            .unwrap_or_else(|e| panic!("examples/mechamap-policy.toml: {e}"));
        assert_eq!(config.unmatched, Unmatched::Deny);
        let kinds: Vec<_> = config.rules.iter().map(|r| r.check.kind()).collect();
        assert_eq!(kinds, ["open", "self", "sql", "sql", "sql", "self"]);
    }

    #[test]
    fn config_file_table() {
        let table: toml::Table = "[[channel]]\npattern = \"a.*\"\nallow = \"open\"\n"
            .parse()
            .expect("toml");
        let config = PolicyConfig::from_table(table).expect("loads");
        assert_eq!(config.rules.len(), 4);
    }
}
