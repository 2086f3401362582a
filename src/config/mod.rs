//! Every setting, its default and its validation, in groups: one module per group (server,
//! Redis, authentication, Engine.IO, limits, JSON endpoint, back-end, webhooks, telemetry,
//! policy, database), each holding its flags and checking them into plain settings.
//!
//! A setting has one name: the flag `--ping-interval`, the variable `SWITCHBOARD_PING_INTERVAL`
//! and the key `ping_interval` in the `--config` TOML file. Precedence: flag, then variable,
//! then file, then default. [`Args`] is what the user typed; [`Config`] is the checked result
//! the rest of the node reads, group by group (`config.engine.ping_interval`).

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use jsonwebtoken::Algorithm;

use crate::auth::JwtVerifier;
use crate::backend::Backend;
use crate::database::{Database, Statement};
use crate::limit::{Network, Rate};
use crate::policy::{Policy, PolicyConfig, Settings as PolicySettings};
use crate::webhooks::{Kind as WebhookKind, Settings as WebhookSettings};

pub mod auth;
pub mod backend;
pub mod database;
pub mod engine;
pub mod json;
pub mod limits;
pub mod policy;
pub mod redis;
pub mod server;
pub mod telemetry;
pub mod webhooks;

/// The secret `--dev` signs and verifies tokens with. Public on purpose: never use it in production.
pub const DEV_JWT_SECRET: &str = "switchboard-dev-secret";

/// The HTTP API key a `--dev` node accepts when no API key is configured, so a newcomer's first
/// `curl` works. Public on purpose, like [`DEV_JWT_SECRET`].
pub const DEV_API_KEY: &str = "switchboard-dev-key";

/// Command line, environment and file settings of a node.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Real-time gateway: Socket.IO v4 and WebSocket clients, Redis pub/sub fan-out"
)]
pub struct Args {
    /// TOML file with any of these settings (keys as the flag names, with `_` for `-`)
    #[arg(
        help_heading = "Server",
        long,
        env = "SWITCHBOARD_CONFIG",
        global = true
    )]
    pub config: Option<PathBuf>,

    /// The server settings ([`server::ServerArgs`]).
    #[command(flatten)]
    pub server: server::ServerArgs,

    /// The redis settings ([`redis::RedisArgs`]).
    #[command(flatten)]
    pub redis: redis::RedisArgs,

    /// The auth settings ([`auth::AuthArgs`]).
    #[command(flatten)]
    pub auth: auth::AuthArgs,

    /// The engine settings ([`engine::EngineArgs`]).
    #[command(flatten)]
    pub engine: engine::EngineArgs,

    /// The limits settings ([`limits::LimitArgs`]).
    #[command(flatten)]
    pub limits: limits::LimitArgs,

    /// The json settings ([`json::JsonArgs`]).
    #[command(flatten)]
    pub json: json::JsonArgs,

    /// The backend settings ([`backend::BackendArgs`]).
    #[command(flatten)]
    pub backend: backend::BackendArgs,

    /// The webhooks settings ([`webhooks::WebhookArgs`]).
    #[command(flatten)]
    pub webhooks: webhooks::WebhookArgs,

    /// The telemetry settings ([`telemetry::TelemetryArgs`]).
    #[command(flatten)]
    pub telemetry: telemetry::TelemetryArgs,

    /// The policy settings ([`policy::PolicyArgs`]).
    #[command(flatten)]
    pub policy: policy::PolicyArgs,

    /// The database settings ([`database::DatabaseArgs`]).
    #[command(flatten)]
    pub database: database::DatabaseArgs,

    /// What to do instead of serving
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Policy keys (`roles`, `presence`, `channel`) found in the `--config` file, with its path.
    #[arg(skip)]
    pub config_policy: Option<(PathBuf, toml::Table)>,
}

/// Commands other than serving.
#[derive(Debug, Clone, PartialEq, clap::Subcommand)]
pub enum Command {
    /// Apply the SQL migrations of `migrations/` to SWITCHBOARD_DATABASE_URL and exit
    Migrate,
    /// Print a JWT a node with these settings accepts: signed with SWITCHBOARD_JWT_SECRET, or
    /// with `--dev`'s public secret when no key is configured
    Token(TokenArgs),
}

/// What `switchboard token` puts in the token.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct TokenArgs {
    /// The user id (`sub`)
    #[arg(long)]
    pub sub: String,
    /// The user's display name (`name`)
    #[arg(long)]
    pub name: Option<String>,
    /// How long the token is valid (`exp` is now plus this)
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Another claim, repeatable, set last (so it may replace any other): the value is JSON when
    /// it parses as JSON (`3`, `true`, `["a"]`), else a string
    #[arg(long = "claim", value_name = "KEY=VALUE", value_parser = parse_claim)]
    pub claims: Vec<(String, serde_json::Value)>,
}

/// Parses `--claim`'s `key=value`.
fn parse_claim(text: &str) -> Result<(String, serde_json::Value), String> {
    let (key, value) = text
        .split_once('=')
        .filter(|(key, _)| !key.trim().is_empty())
        .ok_or_else(|| format!("`{text}` is not key=value"))?;
    let value =
        serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
    Ok((key.trim().to_owned(), value))
}

/// The key `switchboard token` signs with, and the claims a node with the same settings demands.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenKey {
    /// The HMAC secret.
    pub secret: String,
    /// HS256, HS384 or HS512.
    pub algorithm: Algorithm,
    /// The public development secret, because no key is configured.
    pub development: bool,
    /// The first accepted `iss`, when the node checks it.
    pub issuer: Option<String>,
    /// The first accepted `aud`, when the node checks it.
    pub audience: Option<String>,
}

/// Where a node's token keys come from, before anything is read or parsed.
enum KeySource<'a> {
    Secret(&'a str),
    PublicKey(&'a PathBuf),
    Jwks(&'a str),
    /// No key configured: the public development secret, where allowed.
    Development,
}

/// The arguments a broadcast has on Socket.IO's `/` namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BroadcastArgs {
    /// Laravel Echo's convention: `(channel, data)`.
    ChannelData,
    /// The data alone, as `socket.to(channel).emit(event, data)` sends it: `(data)`.
    Data,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A setting that failed validation: the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    /// The environment variable of the setting.
    pub setting: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    fn new(setting: &str, problem: impl Into<String>) -> Self {
        Self {
            setting: format!("SWITCHBOARD_{}", setting.to_uppercase()),
            problem: problem.into(),
        }
    }
}

/// The clients a node's settings describe, made by [`Args::build`]; none connects until used.
/// The composition root hands each to the parts that use it.
#[derive(Debug, Clone)]
pub struct Clients {
    /// The Redis bus's client, when clustered.
    pub redis: Option<::redis::Client>,
    /// Token verification (with its JWKS fetcher, when keys come from a URL).
    pub jwt: JwtVerifier,
    /// The back-end bridge, when configured.
    pub backend: Option<Arc<Backend>>,
    /// The application's database, when configured.
    pub database: Option<Database>,
    /// Who may join which channel.
    pub policy: Arc<Policy>,
}

/// Checked configuration of a node: plain settings, grouped.
#[derive(Debug, Clone)]
pub struct Config {
    /// The server's checked settings.
    pub server: server::ServerSettings,
    /// Redis's checked settings: its URL and the key prefix.
    pub redis: redis::RedisSettings,
    /// Authentication's checked settings.
    pub auth: auth::AuthSettings,
    /// Engine.IO's checked settings.
    pub engine: engine::EngineSettings,
    /// The checked limits and delivery settings.
    pub limits: limits::LimitSettings,
    /// The JSON endpoint's checked settings.
    pub json: json::JsonSettings,
    /// Webhooks, when configured.
    pub webhooks: Option<WebhookSettings>,
    /// Log format.
    pub log_format: LogFormat,
    /// Whether to apply the migrations at start.
    pub migrate: bool,
    /// Notification settings.
    pub notifications: NotificationSettings,
}

/// The settings of the notification store and the `/notifications` namespace.
#[derive(Debug, Clone)]
pub struct NotificationSettings {
    /// Longest one database operation may take.
    pub timeout: Duration,
    /// Loads a user by id: id, name, email, role, sector_id, is_active.
    pub user_query: Statement,
    /// Recipient ids of a sector.
    pub sector_query: Statement,
    /// Recipient ids of a role.
    pub role_query: Statement,
    /// Marks a notification read in the application's table (`:id`, `:user_id`); `None`:
    /// Switchboard's own.
    pub read_query: Option<Statement>,
    /// Roles that join the `admin` room (compared case-insensitively).
    pub admin_roles: Vec<String>,
}

impl NotificationSettings {
    /// Whether `role` is one of the admin roles (case-insensitive).
    pub fn is_admin(&self, role: &str) -> bool {
        self.admin_roles
            .iter()
            .any(|r| r.eq_ignore_ascii_case(role))
    }
}

impl Args {
    /// Parses flags and environment, then fills unset settings from the `--config` file.
    pub fn load_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut argv: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let matches = Self::command().try_get_matches_from(&argv)?;
        let first = Self::from_arg_matches(&matches)?;
        let Some(path) = first.config.clone() else {
            return Ok(first);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Self::command().error(
                clap::error::ErrorKind::Io,
                format!("SWITCHBOARD_CONFIG: cannot read {}: {e}", path.display()),
            )
        })?;
        let table: toml::Table = text.parse().map_err(|e| {
            Self::command().error(
                clap::error::ErrorKind::InvalidValue,
                format!(
                    "SWITCHBOARD_CONFIG: {} is not valid TOML: {e}",
                    path.display()
                ),
            )
        })?;
        let known: HashSet<String> = Self::command()
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        let mut policy = toml::Table::new();
        let mut from_file: Vec<OsString> = Vec::new();
        for (key, value) in table {
            // The policy may live in this file too; it is checked with the policy file's rules.
            if PolicyConfig::KEYS.contains(&key.as_str()) {
                policy.insert(key, value);
                continue;
            }
            if !known.contains(&key) || key == "config" || key == "command" {
                return Err(Self::command().error(
                    clap::error::ErrorKind::UnknownArgument,
                    format!(
                        "SWITCHBOARD_CONFIG: unknown setting `{key}` in {}",
                        path.display()
                    ),
                ));
            }
            // Flags and variables win over the file.
            if !matches!(
                matches.value_source(&key),
                None | Some(ValueSource::DefaultValue)
            ) {
                continue;
            }
            let flag = format!("--{}", key.replace('_', "-"));
            match value {
                toml::Value::Boolean(true) => from_file.push(flag.into()),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => from_file.push(format!("{flag}={s}").into()),
                toml::Value::Integer(i) => from_file.push(format!("{flag}={i}").into()),
                toml::Value::Array(items) => {
                    let joined: Vec<String> = items
                        .iter()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                        .collect();
                    from_file.push(format!("{flag}={}", joined.join(",")).into());
                }
                other => {
                    return Err(Self::command().error(
                        clap::error::ErrorKind::InvalidValue,
                        format!("SWITCHBOARD_CONFIG: `{key}` cannot be {}", other.type_str()),
                    ));
                }
            }
        }
        // Before any subcommand, whose name must come after the top-level flags.
        let at = argv.len().min(1);
        argv.splice(at..at, from_file);
        let mut args = Self::try_parse_from(argv)?;
        if !policy.is_empty() {
            args.config_policy = Some((path, policy));
        }
        Ok(args)
    }

    /// Checks every setting, group by group, and resolves keys, URLs and names.
    pub fn validate(self) -> Result<Config, ConfigError> {
        self.build().map(|(config, _)| config)
    }

    /// Checks every setting and makes the clients they describe (none connects until used):
    /// the plain settings for the parts, the clients for the composition root to hand out.
    pub fn build(self) -> Result<(Config, Clients), ConfigError> {
        let server = self.server.validate()?;
        let database = self.database()?;
        if self.database.migrate && database.is_none() {
            return Err(ConfigError::new(
                "migrate",
                "needs SWITCHBOARD_DATABASE_URL",
            ));
        }
        let notifications = self.notification_settings()?;
        let (redis, redis_client) = self.redis.validate()?;
        if self.policy.auth_timeout.is_zero() {
            return Err(ConfigError::new("auth_timeout", "must be greater than 0"));
        }
        let policy = Arc::new(self.policy(database.clone(), redis_client.clone())?);
        let jwt = self.jwt()?.with_retained_claims(policy.retained_claims());
        let auth = self.auth.validate(server.dev);
        let limits = self.limits.validate()?;
        let engine = self.engine.validate()?;
        let json = self.json.validate(server.dev)?;
        let backend = self.backend.validate()?;
        let backend_secret = self
            .backend
            .backend_secret
            .as_deref()
            .filter(|s| !s.is_empty());
        let webhooks = self.webhooks.validate(backend_secret)?;
        let config = Config {
            server,
            redis,
            auth,
            engine,
            limits,
            json,
            webhooks,
            log_format: self.telemetry.log_format,
            migrate: self.database.migrate,
            notifications,
        };
        let clients = Clients {
            redis: redis_client,
            jwt,
            backend,
            database,
            policy,
        };
        Ok((config, clients))
    }

    /// The database pool of `--database-url`, if one is given (connects on first use).
    pub fn database(&self) -> Result<Option<Database>, ConfigError> {
        self.database
            .database_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .map(|url| {
                Database::from_url(url).map_err(|e| {
                    ConfigError::new(
                        "database_url",
                        format!("cannot use `{}`: {e}", redact_url(url)),
                    )
                })
            })
            .transpose()
    }

    fn notification_settings(&self) -> Result<NotificationSettings, ConfigError> {
        if self.database.database_timeout.is_zero() {
            return Err(ConfigError::new(
                "database_timeout",
                "must be greater than 0",
            ));
        }
        let one_mark = |name: &str, query: &str| {
            Statement::parse(query)
                .ok()
                .filter(|s| s.arity() == 1 && s.names().is_empty())
                .ok_or_else(|| {
                    ConfigError::new(
                        name,
                        "must use exactly one `?` parameter (the id, sector or role)",
                    )
                })
        };
        let read_query = self
            .database.notifications_read_query
            .as_deref()
            .map(|query| {
                let fail = |why: String| ConfigError::new("notifications_read_query", why);
                let statement = Statement::parse(query).map_err(fail)?;
                let mut names: Vec<&str> = statement.names().iter().map(String::as_str).collect();
                names.sort_unstable();
                if names != ["id", "user_id"] {
                    return Err(fail(
                        "must use `:id` and `:user_id` (the notification and its user), no other parameter".into(),
                    ));
                }
                Ok(statement)
            })
            .transpose()?;
        Ok(NotificationSettings {
            timeout: self.database.database_timeout,
            user_query: one_mark(
                "notifications_user_query",
                &self.database.notifications_user_query,
            )?,
            sector_query: one_mark(
                "notifications_sector_query",
                &self.database.notifications_sector_query,
            )?,
            role_query: one_mark(
                "notifications_role_query",
                &self.database.notifications_role_query,
            )?,
            read_query,
            admin_roles: self
                .database
                .notifications_admin_roles
                .iter()
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty())
                .collect(),
        })
    }

    /// The policy from `--policy-file` or the `--config` file (not both), else the built-in one.
    fn policy(
        &self,
        database: Option<Database>,
        redis: Option<::redis::Client>,
    ) -> Result<Policy, ConfigError> {
        let (setting, path, loaded) = match (&self.policy.policy_file, &self.config_policy) {
            (Some(file), Some((config, _))) => {
                return Err(ConfigError::new(
                    "policy_file",
                    format!(
                        "both {} and {} define the channel policy; keep `roles`, `default`, `[presence]` and `[[channel]]` in one of them",
                        file.display(),
                        config.display()
                    ),
                ));
            }
            (Some(file), None) => {
                let loaded = std::fs::read_to_string(file)
                    .map_err(|e| format!("cannot read it: {e}"))
                    .and_then(|text| PolicyConfig::from_toml(&text));
                ("policy_file", Some(file), loaded)
            }
            (None, Some((config, table))) => (
                "config",
                Some(config),
                PolicyConfig::from_table(table.clone()),
            ),
            (None, None) => ("policy_file", None, Ok(PolicyConfig::default())),
        };
        let fail = |problem: String| {
            ConfigError::new(
                setting,
                match path {
                    Some(path) => format!("{}: {problem}", path.display()),
                    None => problem,
                },
            )
        };
        let settings = PolicySettings {
            timeout: self.policy.auth_timeout,
            cache_ttl: self.policy.auth_cache_ttl,
            cache_size: self.policy.auth_cache_size,
            database,
            redis: redis.map(|client| (client, self.redis.redis_prefix.clone())),
            forward_headers: self
                .policy
                .auth_forward_headers
                .iter()
                .map(|name| name.trim())
                .filter(|name| !name.is_empty())
                .map(|name| {
                    reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        ConfigError::new(
                            "auth_forward_headers",
                            format!("`{name}` is not a header name"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        Policy::new(loaded.map_err(fail)?, settings).map_err(fail)
    }

    /// The one algorithm tokens must use, when configured.
    fn jwt_algorithm(&self) -> Result<Option<Algorithm>, ConfigError> {
        self.auth
            .jwt_algorithm
            .as_deref()
            .map(|name| {
                name.trim()
                    .to_uppercase()
                    .parse::<Algorithm>()
                    .map_err(|_| {
                        ConfigError::new("jwt_algorithm", format!("unknown algorithm `{name}`"))
                    })
            })
            .transpose()
    }

    /// Which key the settings name; more than one is refused.
    fn key_source(&self) -> Result<KeySource<'_>, ConfigError> {
        let secret = self.auth.jwt_secret.as_deref().filter(|s| !s.is_empty());
        let jwks = self
            .auth
            .jwt_jwks_url
            .as_deref()
            .filter(|s| !s.trim().is_empty());
        match (secret, &self.auth.jwt_public_key, jwks) {
            (Some(_), Some(_), _) => Err(ConfigError::new(
                "jwt_secret",
                "set either SWITCHBOARD_JWT_SECRET or SWITCHBOARD_JWT_PUBLIC_KEY, not both",
            )),
            (Some(_), None, Some(_)) | (None, Some(_), Some(_)) => Err(ConfigError::new(
                "jwt_jwks_url",
                "set one of SWITCHBOARD_JWT_SECRET, SWITCHBOARD_JWT_PUBLIC_KEY and SWITCHBOARD_JWT_JWKS_URL",
            )),
            (None, None, Some(url)) => Ok(KeySource::Jwks(url)),
            (Some(secret), None, None) => Ok(KeySource::Secret(secret)),
            (None, Some(path), None) => Ok(KeySource::PublicKey(path)),
            (None, None, None) => Ok(KeySource::Development),
        }
    }

    /// The accepted issuers and audiences, blanks dropped.
    fn issuers_and_audiences(&self) -> (Vec<String>, Vec<String>) {
        let list = |values: &[String]| -> Vec<String> {
            values
                .iter()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect()
        };
        (list(&self.auth.jwt_issuer), list(&self.auth.jwt_audience))
    }

    fn jwt(&self) -> Result<JwtVerifier, ConfigError> {
        let algorithm = self.jwt_algorithm()?;
        let verifier = match self.key_source()? {
            KeySource::Jwks(url) => JwtVerifier::jwks(url, algorithm.unwrap_or(Algorithm::RS256))
                .map_err(|e| ConfigError::new("jwt_jwks_url", e))?,
            KeySource::Secret(secret) => {
                JwtVerifier::hmac(secret.as_bytes(), algorithm.unwrap_or(Algorithm::HS256))
                    .map_err(|e| ConfigError::new("jwt_algorithm", e))?
            }
            KeySource::PublicKey(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    ConfigError::new(
                        "jwt_public_key",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                JwtVerifier::public_key(&pem, algorithm.unwrap_or(Algorithm::RS256)).map_err(
                    |e| ConfigError::new("jwt_public_key", format!("{}: {e}", path.display())),
                )?
            }
            KeySource::Development if self.server.dev => {
                JwtVerifier::hmac(DEV_JWT_SECRET.as_bytes(), Algorithm::HS256)
                    .map_err(|e| ConfigError::new("jwt_algorithm", e))?
            }
            KeySource::Development => {
                return Err(ConfigError::new(
                    "jwt_secret",
                    "no JWT key: set SWITCHBOARD_JWT_SECRET, SWITCHBOARD_JWT_PUBLIC_KEY or SWITCHBOARD_JWT_JWKS_URL (or pass --dev to use a public development secret)",
                ));
            }
        };
        let (issuers, audiences) = self.issuers_and_audiences();
        Ok(verifier
            .with_leeway(self.auth.jwt_leeway)
            .with_issuers(&issuers)
            .with_audiences(&audiences))
    }

    /// What `switchboard token` signs with: the secret and algorithm a node with these settings
    /// verifies with (the public development secret when no key is configured, as `--dev` would
    /// use), and the issuer and audience it demands. A node that verifies with a public key
    /// needs tokens signed by its private key, which it does not have.
    pub fn token_key(&self) -> Result<TokenKey, ConfigError> {
        let algorithm = self.jwt_algorithm()?;
        let (secret, algorithm, development) = match self.key_source()? {
            KeySource::Secret(secret) => (secret, algorithm.unwrap_or(Algorithm::HS256), false),
            KeySource::Development => (DEV_JWT_SECRET, Algorithm::HS256, true),
            KeySource::PublicKey(_) => {
                return Err(ConfigError::new(
                    "jwt_public_key",
                    "tokens are verified with a public key: sign them with its private key",
                ));
            }
            KeySource::Jwks(_) => {
                return Err(ConfigError::new(
                    "jwt_jwks_url",
                    "tokens come from the identity provider: ask it for one",
                ));
            }
        };
        if !matches!(
            algorithm,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(ConfigError::new(
                "jwt_algorithm",
                format!("{algorithm:?} does not sign with a secret (use HS256, HS384 or HS512)"),
            ));
        }
        let (issuers, audiences) = self.issuers_and_audiences();
        Ok(TokenKey {
            secret: secret.to_owned(),
            algorithm,
            development,
            issuer: issuers.into_iter().next(),
            audience: audiences.into_iter().next(),
        })
    }
}

/// Formats a command-line error as one line naming the setting's variable, e.g.
/// `SWITCHBOARD_PING_INTERVAL: invalid value 'soon' …`. Help, version and the errors of a
/// subcommand's own arguments (none of them a setting) pass through, with clap's usage lines.
pub fn describe_arg_error(error: &clap::Error) -> Option<String> {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::MissingRequiredArgument
    ) {
        return None;
    }
    let text = error.to_string();
    let first = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned();
    let names_a_setting = matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    );
    let flag = first
        .split("'--")
        .nth(1)
        .and_then(|rest| rest.split([' ', '\'']).next());
    let setting = match flag {
        Some(flag) if names_a_setting => {
            // A subcommand's own flags (`token --ttl`) are no settings: clap's message fits them.
            if !Args::command()
                .get_arguments()
                .any(|a| a.get_long() == Some(flag))
            {
                return None;
            }
            format!("SWITCHBOARD_{}: ", flag.replace('-', "_").to_uppercase())
        }
        _ => String::new(),
    };
    Some(format!("{setting}{first}"))
}

/// Parses `250ms`, `25s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 500ms, 25s, 2m)"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use ms, s, m or h)"
            ));
        }
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// A rate with its burst; the burst must allow at least one request when the rate is on.
fn rate(
    (rate_name, per_second): (&str, f64),
    (burst_name, burst): (&str, f64),
) -> Result<Rate, ConfigError> {
    if !per_second.is_finite() || per_second < 0.0 {
        return Err(ConfigError::new(
            rate_name,
            "must be 0 (off) or a positive number",
        ));
    }
    if per_second > 0.0 && !(burst.is_finite() && burst >= 1.0) {
        return Err(ConfigError::new(burst_name, "must be at least 1"));
    }
    Ok(Rate { per_second, burst })
}

/// Hides the password of a URL before it is shown.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// The machine's host name, which Kubernetes sets to the pod name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "switchboard".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec!["switchboard"];
        argv.extend_from_slice(extra);
        Args::load_from(argv)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("25s"), Ok(Duration::from_secs(25)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn no_key_without_dev_is_refused() {
        let err = args(&[]).expect("parses").validate().expect_err("no key");
        assert_eq!(err.setting, "SWITCHBOARD_JWT_SECRET");
        assert!(args(&["--dev"]).expect("parses").validate().is_ok());
    }

    #[test]
    fn admin_keys_default_to_the_api_keys() {
        let config = args(&["--dev", "--api-keys", "a, b"])
            .expect("parses")
            .validate()
            .expect("valid");
        assert_eq!(config.auth.admin_keys, ["a", "b"]);
        let config = args(&["--dev", "--api-keys", "a", "--admin-keys", " x ,,y"])
            .expect("parses")
            .validate()
            .expect("valid");
        assert_eq!(config.auth.api_keys, ["a"]);
        assert_eq!(config.auth.admin_keys, ["x", "y"]);
    }

    #[test]
    fn only_a_dev_node_without_api_keys_takes_the_public_dev_key() {
        let valid = |argv: &[&str]| args(argv).expect("parses").validate().expect("valid");
        let config = valid(&["--dev"]);
        assert_eq!(config.auth.api_keys, [DEV_API_KEY]);
        assert!(
            config.auth.admin_keys.is_empty(),
            "the admin endpoints stay shut"
        );
        assert_eq!(
            valid(&["--dev", "--api-keys", "mine"]).auth.api_keys,
            ["mine"]
        );
        let config = valid(&["--jwt-secret", "s"]);
        assert!(config.auth.api_keys.is_empty(), "no key, no API");
    }

    #[test]
    fn a_dev_node_keeps_its_page_path_off_the_json_endpoint() {
        let err = args(&["--dev", "--ws-paths", "/ws,/"])
            .expect("parses")
            .validate()
            .expect_err("/ is the page");
        assert_eq!(err.setting, "SWITCHBOARD_WS_PATHS");
        let config = args(&["--jwt-secret", "s", "--ws-paths", "/"])
            .expect("parses")
            .validate()
            .expect("without --dev, / is free");
        assert_eq!(config.json.ws_paths, ["/"]);
    }

    #[test]
    fn a_subcommand_argument_error_is_clap_s_own_and_a_setting_s_names_it() {
        for argv in [
            &["token"][..],
            &["token", "--sub", "1", "--ttl", "soon"],
            &["token", "--sub", "1", "--claim", "role"],
        ] {
            let err = args(argv).expect_err("refused");
            assert_eq!(describe_arg_error(&err), None, "{argv:?}");
        }
        let err = args(&["--ping-interval", "soon"]).expect_err("refused");
        let line = describe_arg_error(&err).expect("a setting's error");
        assert!(line.starts_with("SWITCHBOARD_PING_INTERVAL: "), "{line}");
    }

    #[test]
    fn admin_listen_is_off_by_default_and_another_port() {
        let config = args(&["--dev"]).expect("parses").validate().expect("valid");
        assert_eq!(config.server.admin_listen, None);
        let config = args(&["--dev", "--admin-listen", "127.0.0.1:9601"])
            .expect("parses")
            .validate()
            .expect("valid");
        assert_eq!(
            config.server.admin_listen,
            Some("127.0.0.1:9601".parse().unwrap())
        );
        for bad in ["nowhere", "0.0.0.0:6001"] {
            let err = args(&["--dev", "--admin-listen", bad])
                .expect("parses")
                .validate()
                .expect_err(bad);
            assert_eq!(err.setting, "SWITCHBOARD_ADMIN_LISTEN", "{bad}");
        }
    }

    #[test]
    fn bad_settings_name_themselves() {
        let err = args(&["--dev", "--redis-url", "nonsense://x"])
            .expect("parses")
            .validate();
        assert_eq!(err.expect_err("bad url").setting, "SWITCHBOARD_REDIS_URL");
        let err = args(&["--jwt-public-key", "/nonexistent.pem"])
            .expect("parses")
            .validate();
        assert_eq!(
            err.expect_err("bad key").setting,
            "SWITCHBOARD_JWT_PUBLIC_KEY"
        );
        let err = args(&["--jwt-secret", "s", "--jwt-algorithm", "none"])
            .expect("parses")
            .validate();
        assert_eq!(
            err.expect_err("bad alg").setting,
            "SWITCHBOARD_JWT_ALGORITHM"
        );
        let err = args(&["--dev", "--listen", "nowhere"])
            .expect("parses")
            .validate();
        assert_eq!(err.expect_err("bad listen").setting, "SWITCHBOARD_LISTEN");
    }

    #[test]
    fn file_fills_unset_settings_only() {
        let dir = std::env::temp_dir().join(format!("sb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "dev = true\nmax_subscriptions = 7\nping_interval = \"5s\"\napi_keys = [\"a\", \"b\"]\nredis_prefix = \"p_\"\n",
        )
        .expect("write");
        let path_arg = path.to_string_lossy().into_owned();
        let loaded = args(&["--config", &path_arg, "--redis-prefix", "cli_"]).expect("loads");
        assert!(loaded.server.dev);
        assert_eq!(loaded.limits.max_subscriptions, 7);
        assert_eq!(loaded.engine.ping_interval, Duration::from_secs(5));
        assert_eq!(loaded.auth.api_keys, vec!["a", "b"]);
        assert_eq!(loaded.redis.redis_prefix, "cli_");

        std::fs::write(&path, "no_such_thing = 1\n").expect("write");
        let err = args(&["--config", &path_arg]).expect_err("unknown key");
        assert!(err.to_string().contains("no_such_thing"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn policy_from_either_file_but_not_both() {
        let dir = std::env::temp_dir().join(format!("sb-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("c.toml");
        let policy = dir.join("p.toml");
        let (config_arg, policy_arg) = (
            config.to_string_lossy().into_owned(),
            policy.to_string_lossy().into_owned(),
        );
        let rule = "[[channel]]\npattern = \"admin.*\"\nallow = \"claim\"\nclaim = \"rights\"\n";
        std::fs::write(&config, format!("dev = true\n{rule}")).expect("write");
        std::fs::write(&policy, rule).expect("write");

        let from_config = args(&["--config", &config_arg]).expect("loads");
        let (_, clients) = from_config.build().expect("valid");
        assert_eq!(
            clients.policy.retained_claims(),
            ["name", "picture", "rights"]
        );
        let from_file = args(&["--dev", "--policy-file", &policy_arg]).expect("loads");
        assert!(from_file.validate().is_ok());

        let err = args(&["--config", &config_arg, "--policy-file", &policy_arg])
            .expect("loads")
            .validate()
            .expect_err("both");
        assert_eq!(err.setting, "SWITCHBOARD_POLICY_FILE");
        assert!(err.problem.contains(&config_arg) && err.problem.contains(&policy_arg));

        std::fs::write(
            &config,
            "dev = true\n[[channel]]\npattern = \"a\"\nallow = \"x\"\n",
        )
        .expect("write");
        let err = args(&["--config", &config_arg])
            .expect("loads")
            .validate()
            .expect_err("bad rule");
        assert_eq!(err.setting, "SWITCHBOARD_CONFIG");
        assert!(
            err.problem
                .starts_with(&format!("{config_arg}: [[channel]] #1 `a`: ")),
            "{err}"
        );

        // `default` is a policy key there too, checked like the rest.
        std::fs::write(&config, "dev = true\ndefault = \"none\"\n").expect("write");
        let err = args(&["--config", &config_arg])
            .expect("loads")
            .validate()
            .expect_err("bad default");
        assert_eq!(err.setting, "SWITCHBOARD_CONFIG");
        assert!(err.problem.contains("`default = \"none\"`"), "{err}");

        let err = args(&["--dev", "--policy-file", "/nonexistent/p.toml"])
            .expect("loads")
            .validate()
            .expect_err("missing file");
        assert_eq!(err.setting, "SWITCHBOARD_POLICY_FILE");
        assert!(
            err.problem
                .starts_with("/nonexistent/p.toml: cannot read it"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_read_query_takes_the_notification_and_its_user() {
        let read = |query: &str| {
            args(&["--dev", "--notifications-read-query", query])
                .expect("parses")
                .validate()
        };
        let config =
            read("UPDATE user_notifications SET is_read = 1 WHERE id = :id AND user_id = :user_id")
                .expect("valid");
        let query = config.notifications.read_query.expect("set");
        assert_eq!(query.names(), ["id", "user_id"]);
        for bad in [
            "UPDATE n SET is_read = 1 WHERE id = :id",
            "UPDATE n SET is_read = 1 WHERE id = ? AND user_id = ?",
            "UPDATE n SET is_read = 1 WHERE id = :id AND user_id = :user_id AND x = :x",
        ] {
            let err = read(bad).expect_err(bad);
            assert_eq!(err.setting, "SWITCHBOARD_NOTIFICATIONS_READ_QUERY", "{bad}");
        }
        let err = args(&[
            "--dev",
            "--notifications-role-query",
            "SELECT id FROM users WHERE role IN (?, ?)",
        ])
        .expect("parses")
        .validate()
        .expect_err("two marks");
        assert_eq!(err.setting, "SWITCHBOARD_NOTIFICATIONS_ROLE_QUERY");
        assert!(
            args(&["--dev"])
                .expect("parses")
                .validate()
                .expect("valid")
                .notifications
                .read_query
                .is_none()
        );
    }

    #[test]
    fn database_url_is_checked_and_redacted() {
        let err = args(&["--dev", "--database-url", "sqlite://u:pw@h/db"])
            .expect("parses")
            .validate()
            .expect_err("neither mysql nor postgres");
        assert_eq!(err.setting, "SWITCHBOARD_DATABASE_URL");
        assert!(!err.problem.contains("pw"), "{err}");
        // Valid and lazy: nothing listens there, yet the configuration is accepted.
        for url in [
            "mysql://u:pw@127.0.0.1:1/db",
            "postgres://u:pw@127.0.0.1:1/db?sslmode=require",
        ] {
            let config = args(&["--dev", "--database-url", url])
                .expect("parses")
                .validate()
                .expect("valid");
            assert!(
                !format!("{config:?}").contains("pw@"),
                "Debug hides the password"
            );
        }
        let err = args(&["--dev", "--auth-timeout", "0s"])
            .expect("parses")
            .validate()
            .expect_err("zero timeout");
        assert_eq!(err.setting, "SWITCHBOARD_AUTH_TIMEOUT");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://:secret@host:6379"),
            "redis://***@host:6379"
        );
        assert_eq!(redact_url("redis://host"), "redis://host");
    }
}
