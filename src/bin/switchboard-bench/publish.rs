//! Publishing bench messages into the cluster, the two ways a back-end does: Redis `PUBLISH`
//! with Laravel's envelope, or `POST /api/broadcast` over one keep-alive HTTP/1.1 connection
//! (requests of a batch are pipelined).

use std::fmt::Write as _;

use anyhow::{Context, Result};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::http1;
use crate::target::Target;

/// The event name of every bench message.
pub const EVENT: &str = "bench";
/// Most HTTP requests written before their responses are read.
const PIPELINE_DEPTH: usize = 64;

/// One message to publish: the channel's index and the JSON data.
pub struct Outgoing {
    pub channel: u32,
    pub data: String,
}

/// A way of publishing.
pub enum Publisher {
    Redis(RedisPublisher),
    Http(HttpPublisher),
}

impl Publisher {
    /// Publishes `batch`; `accepted[i]` tells whether message i was accepted.
    ///
    /// An error means the connection broke: none of the batch counts as accepted, and the
    /// next batch reconnects.
    pub async fn publish(&mut self, batch: &[Outgoing], accepted: &mut Vec<bool>) -> Result<()> {
        accepted.clear();
        match self {
            Publisher::Redis(redis) => redis.publish(batch, accepted).await,
            Publisher::Http(http) => http.publish(batch, accepted).await,
        }
    }

    /// The first refusal the server gave, for stderr.
    pub fn first_refusal(&self) -> Option<&str> {
        match self {
            Publisher::Redis(_) => None,
            Publisher::Http(http) => http.first_refusal.as_deref(),
        }
    }
}

/// `PUBLISH <prefix>bench.<n> {"event":"bench","data":…,"socket":null}`, pipelined per batch.
pub struct RedisPublisher {
    connection: redis::aio::MultiplexedConnection,
    prefix: String,
}

impl RedisPublisher {
    /// Connects to `url`.
    pub async fn connect(url: &str, prefix: String) -> Result<Self> {
        let client = redis::Client::open(url).with_context(|| format!("--redis-url {url}"))?;
        // No response timeout (redis-rs's default is 500 ms): a large pipeline answered late
        // was counted as failed although Redis had published it.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .with_context(|| format!("cannot connect to Redis at {url}"))?;
        Ok(Self { connection, prefix })
    }

    async fn publish(&mut self, batch: &[Outgoing], accepted: &mut Vec<bool>) -> Result<()> {
        let mut pipe = redis::pipe();
        let mut payload = String::new();
        for message in batch {
            payload.clear();
            let _ = write!(
                payload,
                r#"{{"event":"{EVENT}","data":{},"socket":null}}"#,
                message.data
            );
            pipe.cmd("PUBLISH")
                .arg(format!("{}bench.{}", self.prefix, message.channel))
                .arg(payload.as_str());
        }
        let _receivers: Vec<i64> = pipe
            .query_async(&mut self.connection)
            .await
            .context("Redis PUBLISH")?;
        accepted.resize(batch.len(), true);
        Ok(())
    }
}

/// `POST /api/broadcast` over one keep-alive HTTP/1.1 connection, reconnected when it breaks.
pub struct HttpPublisher {
    target: Target,
    head: String,
    connection: Option<BufReader<TcpStream>>,
    request: Vec<u8>,
    body: Vec<u8>,
    first_refusal: Option<String>,
}

impl HttpPublisher {
    /// A publisher to `target`'s API with bearer `api_key`; connects on first use.
    pub fn new(target: Target, api_key: &str) -> Self {
        let head = format!(
            "POST {}/api/broadcast HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {api_key}\r\nContent-Type: application/json\r\n",
            target.path, target.authority
        );
        Self {
            target,
            head,
            connection: None,
            request: Vec::new(),
            body: Vec::new(),
            first_refusal: None,
        }
    }

    async fn publish(&mut self, batch: &[Outgoing], accepted: &mut Vec<bool>) -> Result<()> {
        for chunk in batch.chunks(PIPELINE_DEPTH) {
            if let Err(e) = self.publish_chunk(chunk, accepted).await {
                self.connection = None;
                accepted.clear();
                return Err(e);
            }
        }
        Ok(())
    }

    async fn publish_chunk(&mut self, chunk: &[Outgoing], accepted: &mut Vec<bool>) -> Result<()> {
        self.request.clear();
        for message in chunk {
            let body = format!(
                r#"{{"channel":"bench.{}","event":"{EVENT}","data":{}}}"#,
                message.channel, message.data
            );
            self.request.extend_from_slice(self.head.as_bytes());
            self.request
                .extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            self.request.extend_from_slice(body.as_bytes());
        }
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => {
                let stream = TcpStream::connect(self.target.addr)
                    .await
                    .with_context(|| format!("cannot connect to {}", self.target.base))?;
                stream.set_nodelay(true)?;
                self.connection.insert(BufReader::new(stream))
            }
        };
        connection
            .get_mut()
            .write_all(&self.request)
            .await
            .context("write HTTP request")?;
        let mut keep_alive = true;
        for _ in chunk {
            let http1::Head { status, close } = http1::read_response(connection, &mut self.body)
                .await
                .context("read HTTP response")?;
            let ok = (200..300).contains(&status);
            if !ok && self.first_refusal.is_none() {
                self.first_refusal = Some(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&self.body)
                ));
            }
            accepted.push(ok);
            keep_alive &= !close;
        }
        if !keep_alive {
            self.connection = None;
        }
        Ok(())
    }
}
