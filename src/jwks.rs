//! The identity provider's signing keys, from its JWKS URL (`SWITCHBOARD_JWT_JWKS_URL`): fetched
//! at the first token, kept by `kid`, and fetched again when a token names a key we do not
//! have (a key rotation), at most once per [`REFETCH_INTERVAL`], so a flood of made-up `kid`s
//! cannot make us hammer the provider.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::auth::TokenError;

/// Least time between two fetches after the first one.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Longest a fetch may take, connect to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of a key set read (a set holds a few keys of a few hundred bytes each).
const BODY_LIMIT: usize = 256 * 1024;

/// The key set of one JWKS URL.
pub struct Jwks {
    url: reqwest::Url,
    client: reqwest::Client,
    algorithm: Algorithm,
    /// The usable keys by `kid`; replaced whole by each successful fetch.
    keys: RwLock<Arc<HashMap<String, DecodingKey>>>,
    /// Whether a fetch happened, and when the last one after the first did. Held across a
    /// fetch, so concurrent tokens with an unknown `kid` cause one fetch, not one each.
    fetches: tokio::sync::Mutex<Fetches>,
}

#[derive(Default)]
struct Fetches {
    first_done: bool,
    last_refetch: Option<Instant>,
}

impl Fetches {
    /// Whether a fetch may start at `now`: the first always, later ones once per interval.
    fn may_fetch(&self, now: Instant) -> bool {
        !self.first_done
            || self
                .last_refetch
                .is_none_or(|last| now.duration_since(last) >= REFETCH_INTERVAL)
    }

    fn started(&mut self, now: Instant) {
        if self.first_done {
            self.last_refetch = Some(now);
        }
        self.first_done = true;
    }
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL without its query, which may carry a credential.
        f.debug_struct("Jwks")
            .field(
                "url",
                &format_args!(
                    "{}{}",
                    self.url.origin().ascii_serialization(),
                    self.url.path()
                ),
            )
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// Keys for tokens signed with `algorithm` (an RS*, PS*, ES* or EdDSA one), from `url`.
    pub fn new(url: &str, algorithm: Algorithm) -> Result<Self, String> {
        let url =
            reqwest::Url::parse(url.trim()).map_err(|e| format!("`{url}` is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("`{url}` is not an http(s) URL"));
        }
        if matches!(
            algorithm,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(format!(
                "{algorithm:?} needs a secret, not a published key set"
            ));
        }
        Ok(Self {
            url,
            client: crate::http_client::build("the JWKS URL", FETCH_TIMEOUT)?,
            algorithm,
            keys: RwLock::new(Arc::default()),
            fetches: tokio::sync::Mutex::new(Fetches::default()),
        })
    }

    /// The key a token's `kid` names (without a `kid`, the set's only key), fetching the set
    /// when we do not have that key and may fetch now.
    pub async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, TokenError> {
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        let mut fetches = self.fetches.lock().await;
        // Another token may have brought the key while this one waited.
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        let now = Instant::now();
        if !fetches.may_fetch(now) {
            return Err(TokenError::UnknownKey);
        }
        fetches.started(now);
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "fetched the JWKS signing keys");
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch the JWKS signing keys");
                return Err(TokenError::KeysUnavailable);
            }
        }
        self.cached(kid).ok_or(TokenError::UnknownKey)
    }

    fn cached(&self, kid: Option<&str>) -> Option<DecodingKey> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match kid {
            Some(kid) => keys.get(kid).cloned(),
            None if keys.len() == 1 => keys.values().next().cloned(),
            None => None,
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, String> {
        let mut response = self
            .client
            .get(self.url.clone())
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| e.without_url().to_string())?
        {
            if body.len() + chunk.len() > BODY_LIMIT {
                return Err(format!("the key set is larger than {BODY_LIMIT} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        parse(&body, self.algorithm)
    }
}

/// The usable keys of a JWKS document by `kid`: signing keys with a `kid` whose `alg`, when
/// given, is `algorithm`. Keys we cannot read are skipped, so one exotic key does not lose
/// the others.
pub fn parse(body: &[u8], algorithm: Algorithm) -> Result<HashMap<String, DecodingKey>, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<Value>,
    }
    let set: Set =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS document ({e})"))?;
    let wanted = KeyAlgorithm::from(algorithm);
    let keys = set
        .keys
        .into_iter()
        .filter_map(|key| serde_json::from_value::<Jwk>(key).ok())
        .filter(|jwk| {
            jwk.common.key_algorithm.is_none_or(|alg| alg == wanted)
                && jwk
                    .common
                    .public_key_use
                    .as_ref()
                    .is_none_or(|usage| *usage == PublicKeyUse::Signature)
        })
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            Some((kid, DecodingKey::from_jwk(&jwk).ok()?))
        })
        .collect();
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refetches_at_most_once_per_interval() {
        let mut fetches = Fetches::default();
        let t0 = Instant::now();
        assert!(fetches.may_fetch(t0), "the first fetch");
        fetches.started(t0);
        assert!(fetches.may_fetch(t0), "a rotation right after it");
        fetches.started(t0);
        assert!(!fetches.may_fetch(t0 + REFETCH_INTERVAL - Duration::from_millis(1)));
        assert!(fetches.may_fetch(t0 + REFETCH_INTERVAL));
    }

    #[test]
    fn keeps_signing_keys_for_the_algorithm() {
        let rsa = |kid: &str, extra: Value| {
            let mut key = json!({"kty": "RSA", "kid": kid, "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"});
            if let (Value::Object(key), Value::Object(extra)) = (&mut key, extra) {
                key.extend(extra);
            }
            key
        };
        let body = json!({"keys": [
            rsa("plain", json!({})),
            rsa("signing", json!({"use": "sig", "alg": "RS256"})),
            rsa("other-alg", json!({"alg": "RS512"})),
            rsa("encryption", json!({"use": "enc"})),
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
            {"kty": "weird", "kid": "weird"},
        ]});
        let keys = parse(body.to_string().as_bytes(), Algorithm::RS256).expect("a key set");
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        assert_eq!(kids, ["plain", "signing"]);
        assert!(parse(b"[]", Algorithm::RS256).is_err());
    }
}
