//! A small HTTP/1.1 server standing in for the application behind Switchboard (Laravel's
//! `/broadcasting/auth`, a back-end receiving forwarded events or webhooks). It records every
//! request and answers through a handler the test gives.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body bytes as sent (signatures are over these).
    pub raw: Vec<u8>,
    /// The body as JSON, or null.
    pub body: Value,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the request carries `X-Switchboard-Signature: sha256=<hex HMAC-SHA256 of the
    /// exact body bytes>` keyed with `secret`, as the application would check it.
    pub fn signed_with(&self, secret: &str) -> bool {
        use hmac::{Hmac, Mac};
        let Some(hex) = self
            .header("x-switchboard-signature")
            .and_then(|h| h.strip_prefix("sha256="))
        else {
            return false;
        };
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(&self.raw);
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        expected == hex
    }
}

/// The answer to a request: HTTP status and JSON body text.
pub type Answer = Pin<Box<dyn Future<Output = (u16, String)> + Send>>;

type Handler = Arc<dyn Fn(Received) -> Answer + Send + Sync>;

pub struct AppServer {
    base: String,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AppServer {
    /// Listens on a free port of 127.0.0.1 and answers every request with `handler`.
    pub async fn start(handler: impl Fn(Received) -> Answer + Send + Sync + 'static) -> AppServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let handler: Handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, log.clone(), handler.clone()));
            }
        });
        AppServer {
            base,
            received,
            task,
        }
    }

    /// The server's URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads HTTP/1.1 requests on one connection (keep-alive, as pooled clients use it),
/// records each and writes the handler's answer.
async fn serve(mut stream: TcpStream, log: Arc<Mutex<Vec<Received>>>, handler: Handler) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_owned();
        let path = request_line.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buffer.len() < head_end + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let raw: Vec<u8> = buffer.drain(..head_end + length).skip(head_end).collect();
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        let request = Received {
            method,
            path,
            headers,
            raw,
            body,
        };
        log.lock().expect("lock").push(request.clone());
        let (status, text) = handler(request).await;
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}
