//! The `--dev` page at `/`: one self-contained HTML file, its script and style inline and no
//! library, that connects to the JSON WebSocket endpoint `/ws` with a pasted token (what
//! `switchboard token` prints), subscribes to a channel and shows every frame as it arrives,
//! with the `curl` line that publishes to that channel. Only a `--dev` node routes it.
//!
//! The page mints no token itself: a node that handed out tokens over HTTP would let anyone who
//! reaches it in, and pasting the one `switchboard token` printed is one step that also shows
//! a newcomer where tokens come from.

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use sha2::{Digest, Sha256};

const PAGE: &str = include_str!("page.html");

/// Where the page is served.
pub const PATH: &str = "/";

/// The page may run only its own inline script and style, named by their hashes, and open
/// websockets: whatever a broadcast holds, it cannot run as script.
static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    let policy = format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self' ws: wss:; \
         form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
        inline_hash(PAGE, "script"),
        inline_hash(PAGE, "style"),
    );
    HeaderValue::from_str(&policy)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
});

/// The page's route; merge into the client port's router of a `--dev` node only.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route(PATH, get(page))
}

/// `GET /`: the page.
async fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CONTENT_SECURITY_POLICY, CSP.clone()),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        PAGE,
    )
        .into_response()
}

/// The CSP source naming the content of `html`'s first `<tag>` element by its SHA-256, or
/// `'none'` when there is none.
fn inline_hash(html: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let Some(start) = html.find(&open).map(|at| at + open.len()) else {
        return "'none'".into();
    };
    let Some(len) = html[start..].find(&close) else {
        return "'none'".into();
    };
    let digest = Sha256::digest(&html.as_bytes()[start..start + len]);
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inline_element_is_named_by_the_hash_of_its_content() {
        // The hash CSP Level 3's own example gives for `<script>alert('Hello, world.');</script>`.
        assert_eq!(
            inline_hash("<p><script>alert('Hello, world.');</script>", "script"),
            "'sha256-qznLcsROx4GACP2dm0UCKCzCG+HiZ1guq6ZZDob/Tng='"
        );
        assert_eq!(inline_hash("<p>no script</p>", "script"), "'none'");
        assert_eq!(inline_hash("<script>unclosed", "script"), "'none'");
    }

    #[test]
    fn the_page_has_its_script_and_style_inline() {
        for tag in ["script", "style"] {
            assert_ne!(inline_hash(PAGE, tag), "'none'", "{tag}");
        }
    }
}
