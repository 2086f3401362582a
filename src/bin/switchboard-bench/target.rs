//! Where the clients connect: the servers' addresses, resolved once, and the loopback source
//! addresses connections are spread over so that no source runs out of ephemeral ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, bail};
use tokio::net::{TcpSocket, TcpStream};

use crate::cli::Protocol;

/// Connections one source address may carry before auto mode adds another (of ~28,000 ports).
const CONNECTIONS_PER_SOURCE: usize = 20_000;

/// One server, as given by a base URL such as `http://127.0.0.1:6001`.
#[derive(Debug, Clone)]
pub struct Target {
    /// The base URL as given, without a trailing slash.
    pub base: String,
    /// `host[:port]`, for the Host header.
    pub authority: String,
    /// Path prefix before `/socket.io/`, `/ws` and `/api/`, empty or starting with `/`.
    pub path: String,
    /// The resolved address.
    pub addr: SocketAddr,
}

impl Target {
    /// Parses and resolves an `http://` or `ws://` base URL.
    pub async fn resolve(url: &str) -> Result<Target> {
        let base = url.trim().trim_end_matches('/');
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("ws://"))
            .with_context(|| format!("--url {url}: only http:// and ws:// URLs are supported"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() {
            bail!("--url {url}: no host");
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'))
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .with_context(|| format!("--url {url}: cannot resolve {with_port}"))?
            .next()
            .with_context(|| format!("--url {url}: {with_port} has no address"))?;
        Ok(Target {
            base: base.to_owned(),
            authority: authority.to_owned(),
            path: path.to_owned(),
            addr,
        })
    }

    /// The websocket endpoint of `protocol`; the JSON endpoint takes the token in the URL
    /// (Socket.IO's goes in CONNECT).
    pub fn websocket_url(&self, protocol: Protocol, token: &str) -> String {
        match protocol {
            Protocol::Socketio => format!(
                "ws://{}{}/socket.io/?EIO=4&transport=websocket",
                self.authority, self.path
            ),
            // A JWT is base64url and dots: nothing to escape in a query string.
            Protocol::Json => format!("ws://{}{}/ws?token={token}", self.authority, self.path),
        }
    }
}

/// The source addresses client sockets bind to; empty means the system's choice.
pub fn source_addresses(
    targets: &[Target],
    connections: usize,
    requested: Option<u32>,
) -> Result<Vec<Ipv4Addr>> {
    let loopback = targets.iter().all(|t| t.addr.ip().is_loopback());
    let count = match requested {
        Some(n) => n as usize,
        None if loopback => connections.div_ceil(CONNECTIONS_PER_SOURCE).max(1),
        None => 1,
    };
    if count == 1 {
        return Ok(Vec::new());
    }
    if !targets
        .iter()
        .all(|t| t.addr.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST))
    {
        bail!("--source-addresses {count}: several source addresses need 127.0.0.1 targets");
    }
    Ok((0..count)
        .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
        .collect())
}

/// Opens a TCP connection to `addr`, from `source` when given.
pub async fn connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
            socket.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}
