//! Server: addresses, the node's id, development mode and what clients are greeted with.

use super::*;

/// Server: addresses, the node's id, development mode and what clients are greeted with.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Development mode (never in production): with no JWT key configured, use the public secret
    /// `switchboard-dev-secret`; with no API key, accept the public key `switchboard-dev-key`;
    /// serve a page at `/` that connects and shows events
    #[arg(help_heading = "Server", long, env = "SWITCHBOARD_DEV")]
    pub dev: bool,

    /// Address and port for clients and the API (and metrics and `/admin` without an admin
    /// listener)
    #[arg(
        help_heading = "Server",
        long,
        env = "SWITCHBOARD_LISTEN",
        default_value = "0.0.0.0:6001"
    )]
    pub listen: String,

    /// Address and port serving `/metrics`, `/admin` and `/health?verbose=1`, and only there; keep
    /// it off the internet [default: none; they are served on the client port]
    #[arg(help_heading = "Server", long, env = "SWITCHBOARD_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,

    /// This node's name in logs, metrics and Redis keys [default: host name]
    #[arg(help_heading = "Server", long, env = "SWITCHBOARD_NODE_ID")]
    pub node_id: Option<String>,

    /// JSON sent to every new socket as a `welcome` event (Socket.IO `/`) or a `welcome` frame
    /// (JSON endpoint) right after it connects, as Go socket servers greet their clients; unset =
    /// none
    #[arg(help_heading = "Server", long, env = "SWITCHBOARD_WELCOME")]
    pub welcome: Option<String>,

    /// Arguments of a broadcast on Socket.IO's `/`: `channel-data` (Laravel Echo's `(channel,
    /// data)`) or `data` (plain socket.io-client apps' `socket.on(event, data => …)`); a client
    /// may choose for itself with `broadcastArgs` in its handshake's `auth`
    #[arg(help_heading = "Server", long, env = "SWITCHBOARD_BROADCAST_ARGS", value_enum, default_value_t = BroadcastArgs::ChannelData)]
    pub broadcast_args: BroadcastArgs,
}

/// The server's checked settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where `/metrics`, `/admin` and the verbose health are served, when not on `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// Whether the public development secret is in use.
    pub dev: bool,
    /// This node's name.
    pub node_id: String,
    /// The `welcome` payload new sockets get, if any.
    pub welcome: Option<Box<serde_json::value::RawValue>>,
    /// Broadcast arguments on Socket.IO's `/` unless a client chooses.
    pub broadcast_args: BroadcastArgs,
}

impl ServerArgs {
    /// Checks the addresses, the node's id and the welcome.
    pub fn validate(&self) -> Result<ServerSettings, ConfigError> {
        let listen: SocketAddr = self.listen.parse().map_err(|e| {
            ConfigError::new(
                "listen",
                format!("`{}` is not host:port ({e})", self.listen),
            )
        })?;
        let admin_listen = match self.admin_listen.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|e| {
                ConfigError::new("admin_listen", format!("`{text}` is not host:port ({e})"))
            })?),
        };
        if admin_listen.is_some_and(|admin| admin.port() != 0 && admin.port() == listen.port()) {
            return Err(ConfigError::new(
                "admin_listen",
                "must be another port than SWITCHBOARD_LISTEN's",
            ));
        }
        let node_id = match self.node_id.clone().filter(|n| !n.trim().is_empty()) {
            Some(id)
                if id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) =>
            {
                id
            }
            Some(id) => {
                return Err(ConfigError::new(
                    "node_id",
                    format!("`{id}` may contain only letters, digits and - _ . :"),
                ));
            }
            None => host_name(),
        };
        let welcome = self
            .welcome
            .as_deref()
            .map(|text| serde_json::value::RawValue::from_string(text.trim().to_owned()))
            .transpose()
            .map_err(|e| ConfigError::new("welcome", format!("not JSON: {e}")))?;
        Ok(ServerSettings {
            listen,
            admin_listen,
            node_id,
            dev: self.dev,
            welcome,
            broadcast_args: self.broadcast_args,
        })
    }
}
