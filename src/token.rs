//! `switchboard token`: a signed JWT for trying a node out, or for an operator's own checks.
//!
//! The claims are those a node reads (`sub`, `name`, `exp`, and `iss`/`aud` when it checks
//! them) and any `--claim`; the key is the one a node with the same settings verifies with
//! ([`Args::token_key`](crate::config::Args::token_key)).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Map, Value};

use crate::config::{TokenArgs, TokenKey};

/// The claims of the token `args` describe, issued at `now` (seconds since the epoch).
pub fn claims(key: &TokenKey, args: &TokenArgs, now: u64) -> Map<String, Value> {
    let mut claims = Map::new();
    claims.insert("sub".into(), args.sub.clone().into());
    if let Some(name) = &args.name {
        claims.insert("name".into(), name.clone().into());
    }
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), now.saturating_add(args.ttl.as_secs()).into());
    if let Some(issuer) = &key.issuer {
        claims.insert("iss".into(), issuer.clone().into());
    }
    if let Some(audience) = &key.audience {
        claims.insert("aud".into(), audience.clone().into());
    }
    // Last, so a test can make any token it needs (say, `--claim exp=0`).
    for (name, value) in &args.claims {
        claims.insert(name.clone(), value.clone());
    }
    claims
}

/// Signs the token `args` describe with `key`, issued now.
pub fn mint(key: &TokenKey, args: &TokenArgs) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    jsonwebtoken::encode(
        &Header::new(key.algorithm),
        &claims(key, args, now),
        &EncodingKey::from_secret(key.secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::{Args, Command};

    /// The settings and token arguments of `switchboard <argv>`, which must end in `token …`.
    fn parse(argv: &[&str]) -> (Args, TokenArgs) {
        let args = Args::load_from(std::iter::once("switchboard").chain(argv.iter().copied()))
            .expect("parses");
        match args.command.clone() {
            Some(Command::Token(token)) => (args, token),
            other => panic!("not a token command: {other:?}"),
        }
    }

    /// What a node started with `args`' settings makes of `token`.
    async fn verify(args: Args, token: &str) -> crate::auth::Principal {
        let (_, clients) = args.build().expect("valid settings");
        clients
            .jwt
            .verify(token)
            .await
            .expect("the node accepts it")
    }

    #[tokio::test]
    async fn a_dev_node_accepts_the_token_made_without_a_key() {
        let (args, token) = parse(&["token", "--sub", "1", "--name", "Ada"]);
        let key = args.token_key().expect("the development key");
        assert!(key.development);
        let minted = mint(&key, &token).expect("signs");
        let mut dev = args;
        dev.server.dev = true;
        let user = verify(dev, &minted).await;
        assert_eq!(&*user.user_id, "1");
    }

    #[tokio::test]
    async fn a_node_with_a_secret_issuer_and_audience_accepts_its_token() {
        let settings = [
            "--jwt-secret",
            "s3cret",
            "--jwt-algorithm",
            "hs512",
            "--jwt-issuer",
            "auth.example, other",
            "--jwt-audience",
            "app",
        ];
        let argv: Vec<&str> = settings
            .iter()
            .copied()
            .chain(["token", "--sub", "7", "--claim", "role=admin"])
            .collect();
        let (args, token) = parse(&argv);
        let key = args.token_key().expect("the configured secret");
        assert!(!key.development);
        assert_eq!(key.algorithm, jsonwebtoken::Algorithm::HS512);
        let minted = mint(&key, &token).expect("signs");
        let user = verify(args, &minted).await;
        assert_eq!(&*user.user_id, "7");
        assert_eq!(user.role.as_deref(), Some("admin"));
        // Another secret's node refuses it: the token really is signed with the configured one.
        let (other, _) = parse(&["--jwt-secret", "another", "token", "--sub", "7"]);
        let (_, clients) = other.build().expect("valid settings");
        assert!(clients.jwt.verify(&minted).await.is_err());
    }

    #[test]
    fn claims_are_the_flags_then_each_claim_read_as_json_when_it_is() {
        let (args, token) = parse(&[
            "--jwt-issuer",
            "iss.example",
            "token",
            "--sub",
            "42",
            "--ttl",
            "90m",
            "--claim",
            "sector_id=3",
            "--claim",
            "tags=[\"a\"]",
            "--claim",
            "role=admin",
            "--claim",
            "exp=5",
        ]);
        let key = args.token_key().expect("key");
        assert_eq!(
            Value::Object(claims(&key, &token, 1_000)),
            json!({"sub": "42", "iat": 1_000, "exp": 5, "iss": "iss.example",
                   "sector_id": 3, "tags": ["a"], "role": "admin"})
        );
        let (args, token) = parse(&["token", "--sub", "42", "--ttl", "90m"]);
        let key = args.token_key().expect("key");
        assert_eq!(claims(&key, &token, 1_000)["exp"], 1_000 + 90 * 60);
    }

    #[test]
    fn no_token_without_a_secret_to_sign_with() {
        for (argv, setting) in [
            (
                &["--jwt-public-key", "/k.pem", "token", "--sub", "1"][..],
                "SWITCHBOARD_JWT_PUBLIC_KEY",
            ),
            (
                &["--jwt-jwks-url", "http://idp/jwks", "token", "--sub", "1"][..],
                "SWITCHBOARD_JWT_JWKS_URL",
            ),
            (
                &[
                    "--jwt-secret",
                    "s",
                    "--jwt-algorithm",
                    "RS256",
                    "token",
                    "--sub",
                    "1",
                ][..],
                "SWITCHBOARD_JWT_ALGORITHM",
            ),
        ] {
            let (args, _) = parse(argv);
            let err = args.token_key().expect_err("no secret");
            assert_eq!(err.setting, setting, "{argv:?}: {err}");
        }
        let bad = Args::load_from(["switchboard", "token", "--sub", "1", "--claim", "role"]);
        assert!(bad.is_err(), "a claim needs key=value");
    }
}
