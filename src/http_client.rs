//! The outgoing HTTP client: one pooled, keep-alive client per purpose (auth callbacks, the
//! back-end bridge, webhooks), TLS through rustls with the ring provider.

use std::time::Duration;

/// A client that does not follow redirects (a redirect is usually a login page) and gives up
/// connecting after `connect_timeout`.
pub fn build(purpose: &str, connect_timeout: Duration) -> Result<reqwest::Client, String> {
    install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client for {purpose}: {e}"))
}

/// Makes ring rustls' process-wide provider. reqwest is built without a default one (its
/// default would pull aws-lc); ring is the one mysql_async uses too.
pub fn install_crypto_provider() {
    // An error means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
