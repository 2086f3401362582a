//! Authentication: tokens, API and admin keys, browser origins.

use super::*;

/// Authentication: tokens, API and admin keys, browser origins.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// HMAC secret for HS256/HS384/HS512 tokens
    #[arg(
        help_heading = "Authentication",
        long,
        env = "SWITCHBOARD_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// PEM file with the public key for RS*/PS*/ES*/EdDSA tokens
    #[arg(
        help_heading = "Authentication",
        long,
        env = "SWITCHBOARD_JWT_PUBLIC_KEY"
    )]
    pub jwt_public_key: Option<PathBuf>,

    /// URL of the identity provider's JWKS: its public keys (RS*, PS*, ES*, EdDSA), chosen by the
    /// token's `kid`, fetched at the first token and again for an unknown `kid` (at most once per
    /// 30 s)
    #[arg(
        help_heading = "Authentication",
        long,
        env = "SWITCHBOARD_JWT_JWKS_URL"
    )]
    pub jwt_jwks_url: Option<String>,

    /// The one JWT algorithm accepted [default: HS256 with a secret, RS256 with a public key or
    /// JWKS]
    #[arg(
        help_heading = "Authentication",
        long,
        env = "SWITCHBOARD_JWT_ALGORITHM"
    )]
    pub jwt_algorithm: Option<String>,

    /// Clock skew tolerated on `exp` and `nbf`
    #[arg(help_heading = "Authentication", long, env = "SWITCHBOARD_JWT_LEEWAY", default_value = "5s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,

    /// Comma-separated accepted `iss` values; when set, a token must carry one of them [default: no
    /// check]
    #[arg(
        help_heading = "Authentication",
        long,
        env = "SWITCHBOARD_JWT_ISSUER",
        value_delimiter = ','
    )]
    pub jwt_issuer: Vec<String>,

    /// Comma-separated audiences this node answers to; when set, a token's `aud` must name one
    /// [default: tokens with `aud` refused]
    #[arg(
        help_heading = "Authentication",
        long,
        env = "SWITCHBOARD_JWT_AUDIENCE",
        value_delimiter = ','
    )]
    pub jwt_audience: Vec<String>,

    /// Comma-separated bearer keys for the HTTP API (empty = API refuses every call)
    #[arg(
        help_heading = "Authentication",
        long,
        env = "SWITCHBOARD_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// Comma-separated bearer keys for the [admin page](docs/OPERATIONS.md)'s endpoints; unset = the API
    /// keys are the admin keys [default: the API keys]
    #[arg(
        help_heading = "Authentication",
        long,
        env = "SWITCHBOARD_ADMIN_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_keys: Vec<String>,

    /// Comma-separated browser origins allowed to connect; these get CORS with credentials
    /// (cookies), while empty or `*` answers `Access-Control-Allow-Origin: *` without credentials
    /// (enough for socket.io-client's default `withCredentials: false`)
    #[arg(
        help_heading = "Authentication",
        long,
        env = "SWITCHBOARD_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
}

/// Authentication's checked settings.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Accepted API keys.
    pub api_keys: Vec<String>,
    /// Keys accepted by the admin endpoints (the API keys when none are configured).
    pub admin_keys: Vec<String>,
    /// Allowed origins; empty means any.
    pub allowed_origins: HashSet<String>,
}

impl AuthArgs {
    /// Resolves the keys and the origins; `dev`: whether the node runs in development mode
    /// (a public API key when it has none). The token verifier is built apart.
    pub fn validate(&self, dev: bool) -> AuthSettings {
        let keys = |keys: Vec<String>| -> Vec<String> {
            keys.into_iter()
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
                .collect()
        };
        let api_keys = keys(self.api_keys.clone());
        let admin_keys = match keys(self.admin_keys.clone()) {
            admin if admin.is_empty() => api_keys.clone(),
            admin => admin,
        };
        // Only a --dev node with no key of its own takes the public key, and for the API only:
        // the admin endpoints stay behind the keys the operator configured.
        let api_keys = if dev && api_keys.is_empty() {
            vec![DEV_API_KEY.to_owned()]
        } else {
            api_keys
        };
        let allowed_origins = self
            .allowed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        AuthSettings {
            api_keys,
            admin_keys,
            allowed_origins,
        }
    }
}
