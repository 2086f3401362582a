//! Tokens for auth tests.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

/// Writes a new 2048-bit RSA private key (PEM) to `path` with openssl.
pub fn openssl_rsa_key(path: &std::path::Path) {
    let made = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(path)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl genpkey")
        .success();
    assert!(made, "openssl made a key at {}", path.display());
}

/// A JWT signed with HMAC-SHA256 over `secret`.
pub fn jwt_hs256(secret: &str, claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode HS256 test token")
}

/// An unsigned `alg: none` token, built by hand because no library will sign
/// one; the server must reject it.
pub fn jwt_none(claims: Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT"});
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}
