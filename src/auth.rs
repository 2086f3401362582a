//! Who a client is: JWT verification into a [`Principal`], and where the token is found.
//!
//! The algorithm is pinned by configuration, so a token cannot choose how it is checked
//! (`alg: none`, or an HMAC made with a public RSA key, are refused before any crypto runs).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::jwks::Jwks;

/// An authenticated user, as their token describes them.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user id (`sub`, else `userId`), as a string.
    pub user_id: Arc<str>,
    /// The `role` claim, if any.
    pub role: Option<Box<str>>,
    /// The claims the channel policy reads (see [`JwtVerifier::with_retained_claims`]), by
    /// name. `None` when the token has none of them; an exact-size slice rather than a map,
    /// because every socket holds one (a map's first node alone is ~600 bytes) and a policy
    /// reads only a few claims.
    pub claims: Option<Box<[(String, Value)]>>,
    /// When the token stops being accepted (its `exp` plus the leeway), in seconds since the
    /// Unix epoch; `None` for a token without `exp`. A socket is closed then.
    pub expires: Option<u64>,
}

impl Principal {
    /// A retained claim of the token, if the token had it.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        let claims = self.claims.as_deref()?;
        claims.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// Why a token was refused; the text is what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token in any of the places we look.
    #[error("missing token")]
    Missing,
    /// Not three base64url parts with JSON inside.
    #[error("invalid token: malformed")]
    Malformed,
    /// The header names another algorithm than the configured one (including `none`).
    #[error("invalid token: algorithm not allowed")]
    Algorithm,
    /// The signature does not verify.
    #[error("invalid token: bad signature")]
    Signature,
    /// `exp` is in the past.
    #[error("invalid token: expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("invalid token: not yet valid")]
    NotYetValid,
    /// No usable user id claim.
    #[error("invalid token: no user id (sub or userId)")]
    NoSubject,
    /// The header has `crit`: it names extensions that must be understood, and we know none.
    #[error("invalid token: unsupported critical header")]
    Critical,
    /// `iss` is missing or not a configured issuer.
    #[error("invalid token: wrong issuer")]
    Issuer,
    /// `aud` is missing or names none of the configured audiences (or any, when none is configured).
    #[error("invalid token: wrong audience")]
    Audience,
    /// The `kid` names no key of the JWKS, even after fetching it again (or too soon to).
    #[error("invalid token: unknown key id")]
    UnknownKey,
    /// The JWKS could not be fetched.
    #[error("invalid token: signing keys unavailable")]
    KeysUnavailable,
}

impl TokenError {
    /// A short label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::Signature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::NoSubject => "no_subject",
            Self::Critical => "critical",
            Self::Issuer => "issuer",
            Self::Audience => "audience",
            Self::UnknownKey => "unknown_key",
            Self::KeysUnavailable => "keys_unavailable",
        }
    }
}

/// Where the verifying key comes from.
#[derive(Clone)]
enum Keys {
    /// One configured secret or public key.
    Fixed(DecodingKey),
    /// The identity provider's published set, by the token's `kid`.
    Published(Arc<Jwks>),
}

/// Checks tokens with one algorithm and a configured key or a JWKS.
#[derive(Clone)]
pub struct JwtVerifier {
    keys: Keys,
    validation: Validation,
    /// Claim names copied onto the [`Principal`]; everything else is dropped after `verify`.
    retained: Arc<[String]>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("JwtVerifier")
            .field("algorithm", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    /// RFC 7515 §4.1.11: a recipient that does not understand a listed extension must reject
    /// the token. We understand none, so its presence alone (even empty, which is invalid) refuses.
    #[serde(default)]
    crit: Option<Value>,
    /// Which key of a JWKS signed the token.
    #[serde(default)]
    kid: Option<String>,
}

impl JwtVerifier {
    /// A verifier for HMAC tokens.
    pub fn hmac(secret: &[u8], algorithm: Algorithm) -> Result<Self, String> {
        if !matches!(
            algorithm,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(format!("{algorithm:?} needs a public key, not a secret"));
        }
        Ok(Self::new(
            Keys::Fixed(DecodingKey::from_secret(secret)),
            algorithm,
        ))
    }

    /// A verifier for public-key tokens, from a PEM file's contents.
    pub fn public_key(pem: &[u8], algorithm: Algorithm) -> Result<Self, String> {
        let key = match algorithm {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => DecodingKey::from_rsa_pem(pem),
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
            other => return Err(format!("{other:?} needs a secret, not a public key")),
        }
        .map_err(|e| format!("not a {algorithm:?} public key in PEM format ({e})"))?;
        Ok(Self::new(Keys::Fixed(key), algorithm))
    }

    /// A verifier for public-key tokens whose keys an identity provider publishes at `url`.
    pub fn jwks(url: &str, algorithm: Algorithm) -> Result<Self, String> {
        let jwks = Jwks::new(url, algorithm)?;
        Ok(Self::new(Keys::Published(Arc::new(jwks)), algorithm))
    }

    fn new(keys: Keys, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        // Tokens without `exp` are accepted (as Centrifugo does); when present it is enforced.
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        Self {
            keys,
            validation,
            retained: Arc::new([]),
        }
    }

    /// Sets the tolerated clock skew.
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.validation.leeway = leeway.as_secs();
        self
    }

    /// Requires `iss` to be one of `issuers` (no check when empty).
    pub fn with_issuers(mut self, issuers: &[String]) -> Self {
        if !issuers.is_empty() {
            self.validation.set_issuer(issuers);
            self.validation.required_spec_claims.insert("iss".into());
        }
        self
    }

    /// Requires `aud` to name one of `audiences`. When empty, a token that has an `aud` is
    /// refused (RFC 7519 §4.1.3: we cannot identify ourselves with any value in it).
    pub fn with_audiences(mut self, audiences: &[String]) -> Self {
        if !audiences.is_empty() {
            self.validation.set_audience(audiences);
            self.validation.required_spec_claims.insert("aud".into());
        }
        self
    }

    /// Keeps these claims on every verified [`Principal`] (the channel policy's needs).
    pub fn with_retained_claims(mut self, claims: Vec<String>) -> Self {
        self.retained = claims.into();
        self
    }

    /// Verifies a token found by the caller, if any ([`TokenError::Missing`] if not).
    pub async fn verify_found(&self, token: Option<String>) -> Result<Principal, TokenError> {
        self.verify(&token.ok_or(TokenError::Missing)?).await
    }

    /// Verifies a token and reads the user from it.
    pub async fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let header = token.split('.').next().ok_or(TokenError::Malformed)?;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .map_err(|_| TokenError::Malformed)?;
        let header: Header = serde_json::from_slice(&header).map_err(|_| TokenError::Malformed)?;
        let expected = self.validation.algorithms.first().copied();
        if header.alg.parse::<Algorithm>().ok() != expected {
            return Err(TokenError::Algorithm);
        }
        if header.crit.is_some() {
            return Err(TokenError::Critical);
        }
        let key = match &self.keys {
            Keys::Fixed(key) => Cow::Borrowed(key),
            Keys::Published(jwks) => Cow::Owned(jwks.key(header.kid.as_deref()).await?),
        };
        // One decode into a map: the fixed claims are read from it and the retained ones moved out.
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidSignature => TokenError::Signature,
                ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => TokenError::Algorithm,
                ErrorKind::InvalidIssuer => TokenError::Issuer,
                ErrorKind::InvalidAudience => TokenError::Audience,
                ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => TokenError::Issuer,
                ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => TokenError::Audience,
                _ => TokenError::Malformed,
            })?;
        let mut claims = data.claims;
        let user_id = claims
            .get("sub")
            .and_then(id_string)
            .or_else(|| claims.get("userId").and_then(id_string))
            .ok_or(TokenError::NoSubject)?;
        let role = claims.get("role").and_then(Value::as_str).map(Box::from);
        let expires = claims
            .get("exp")
            .and_then(Value::as_u64)
            .map(|exp| exp.saturating_add(self.validation.leeway));
        let retained: Vec<(String, Value)> = self
            .retained
            .iter()
            .filter_map(|name| Some((name.clone(), claims.remove(name)?)))
            .collect();
        Ok(Principal {
            user_id: user_id.into(),
            role,
            claims: (!retained.is_empty()).then(|| retained.into_boxed_slice()),
            expires,
        })
    }
}

/// A user id claim as a string: strings and integers are accepted; it must be usable in a
/// channel name (`private-user.{id}`).
fn id_string(value: &Value) -> Option<String> {
    let id = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
        _ => return None,
    };
    let usable = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@:=".contains(c));
    usable.then_some(id)
}

/// Strips `Bearer ` from an Authorization header value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The configured key equal to `given`. Every key is compared, without stopping early, so
/// timing says nothing about which one matched.
pub fn find_key<'a>(keys: &'a [String], given: &str) -> Option<&'a String> {
    keys.iter().fold(None, |found, key| {
        if constant_time_eq(key.as_bytes(), given.as_bytes()) {
            Some(key)
        } else {
            found
        }
    })
}

/// Compares secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header as JwtHeader, encode};
    use serde_json::json;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn token(secret: &str, claims: Value) -> String {
        encode(
            &JwtHeader::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::hmac(b"s3cret", Algorithm::HS256).expect("hmac")
    }

    #[tokio::test]
    async fn accepts_good_tokens() {
        let p = verifier()
            .verify(&token(
                "s3cret",
                json!({"sub": 42, "role": "admin", "name": "Ann", "exp": now() + 60}),
            ))
            .await
            .expect("valid");
        assert_eq!((&*p.user_id, p.role.as_deref()), ("42", Some("admin")));
        assert_eq!(p.expires, Some(now() + 60), "exp plus the leeway (0 here)");
        let p = verifier()
            .verify(&token("s3cret", json!({"userId": "u-7"})))
            .await
            .expect("userId claim");
        assert_eq!(&*p.user_id, "u-7");
    }

    #[tokio::test]
    async fn keeps_only_retained_claims() {
        let claims =
            json!({"sub": 1, "role": "admin", "channels": ["a"], "avatar": "x.png", "secret": 1});
        let p = verifier()
            .verify(&token("s3cret", claims.clone()))
            .await
            .expect("valid");
        assert!(p.claims.is_none(), "nothing retained by default");
        let p = verifier()
            .with_retained_claims(vec!["channels".into(), "avatar".into(), "absent".into()])
            .verify(&token("s3cret", claims))
            .await
            .expect("valid");
        assert_eq!(p.claim("channels"), Some(&json!(["a"])));
        assert_eq!(p.claim("avatar"), Some(&json!("x.png")));
        assert_eq!(p.claim("secret"), None);
        assert_eq!(p.claim("absent"), None);
        assert_eq!(p.claims.map(|c| c.len()), Some(2));
        assert_eq!(p.role.as_deref(), Some("admin"));
    }

    #[tokio::test]
    async fn refuses_bad_tokens_with_reasons() {
        let v = verifier();
        assert_eq!(
            v.verify(&token("s3cret", json!({"sub": 1, "exp": now() - 100})))
                .await
                .err(),
            Some(TokenError::Expired)
        );
        assert_eq!(
            v.verify(&token("s3cret", json!({"sub": 1, "nbf": now() + 100})))
                .await
                .err(),
            Some(TokenError::NotYetValid)
        );
        assert_eq!(
            v.verify(&token("other", json!({"sub": 1}))).await.err(),
            Some(TokenError::Signature)
        );
        assert_eq!(
            v.verify(&token("s3cret", json!({"name": "x"}))).await.err(),
            Some(TokenError::NoSubject)
        );
        assert_eq!(
            v.verify(&token("s3cret", json!({"sub": "a b"})))
                .await
                .err(),
            Some(TokenError::NoSubject)
        );
        assert_eq!(v.verify("garbage").await.err(), Some(TokenError::Malformed));
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"sub": 1}))
        );
        assert_eq!(v.verify(&none).await.err(), Some(TokenError::Algorithm));
        let hs512 = encode(
            &JwtHeader::new(Algorithm::HS512),
            &json!({"sub": 1}),
            &EncodingKey::from_secret(b"s3cret"),
        )
        .expect("encode");
        assert_eq!(v.verify(&hs512).await.err(), Some(TokenError::Algorithm));
    }

    #[tokio::test]
    async fn refuses_critical_header_extensions() {
        // RFC 7515 §4.1.11: an extension listed in `crit` that we do not understand (we
        // understand none) makes the token invalid, however good its signature.
        for crit in [vec!["exp-x".to_owned()], vec![]] {
            let header = JwtHeader {
                crit: Some(crit),
                ..JwtHeader::default()
            };
            let critical = encode(
                &header,
                &json!({"sub": 1, "exp-x": 1}),
                &EncodingKey::from_secret(b"s3cret"),
            )
            .expect("encode");
            assert_eq!(
                verifier().verify(&critical).await.err(),
                Some(TokenError::Critical)
            );
        }
    }

    #[tokio::test]
    async fn checks_issuer_and_audience_when_configured() {
        let v = verifier()
            .with_issuers(&["https://id.example".into()])
            .with_audiences(&["chat".into(), "ws".into()]);
        let ok = json!({"sub": 1, "iss": "https://id.example", "aud": ["other", "ws"]});
        assert!(v.verify(&token("s3cret", ok)).await.is_ok());
        let cases = [
            (json!({"sub": 1, "aud": "chat"}), TokenError::Issuer),
            (
                json!({"sub": 1, "iss": "https://evil.example", "aud": "chat"}),
                TokenError::Issuer,
            ),
            (
                json!({"sub": 1, "iss": "https://id.example"}),
                TokenError::Audience,
            ),
            (
                json!({"sub": 1, "iss": "https://id.example", "aud": "other"}),
                TokenError::Audience,
            ),
        ];
        for (claims, error) in cases {
            assert_eq!(
                v.verify(&token("s3cret", claims.clone())).await.err(),
                Some(error),
                "{claims}"
            );
        }
        // Unconfigured: any issuer passes, and a token meant for some audience is not ours.
        assert!(
            verifier()
                .verify(&token("s3cret", json!({"sub": 1, "iss": "x"})))
                .await
                .is_ok()
        );
        assert_eq!(
            verifier()
                .verify(&token("s3cret", json!({"sub": 1, "aud": "chat"})))
                .await
                .err(),
            Some(TokenError::Audience)
        );
    }

    #[tokio::test]
    async fn bearer_and_comparison() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert!(constant_time_eq(b"key", b"key"));
        assert!(!constant_time_eq(b"key", b"kez"));
        assert!(!constant_time_eq(b"key", b"keys"));
    }
}
