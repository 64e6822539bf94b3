//! Tarmac as an OIDC issuer: signing keys, per-deployment tokens, and the exchange of a token
//! for cloud credentials.
//!
//! - `Issuer` holds the keyring (a `SigningKeyStore`) and signs RS256 JWTs with its active key:
//!   a key generated here and sealed by the server's cipher (embedded mode), or a KMS asymmetric
//!   key (AWS mode, where only the `oidc` function may call `kms:Sign`).
//! - A rotation adds a key that signs from then on; the replaced key stays in the JWKS until
//!   every token it signed has expired (`MAX_TOKEN_LIFETIME` plus clock skew).
//! - `token` turns a deployment and its settings into Pulumi-format claims; `exchange` checks
//!   that the caller runs the deployment, signs its token and trades it for credentials.

pub mod exchange;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::crypto::Cipher;
use crate::error::{Error, Result};
use crate::ports::SigningKeyStore;

pub use exchange::{CredentialBroker, ExchangeRequest, Exchanger, RunCredentials};
pub use token::OidcSpec;

/// The longest a token may live; a replaced key is published at least this long.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Leeway for verifiers whose clocks run behind ours.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Where the issuer's documents are served, under the API's base URL.
pub const ISSUER_PATH: &str = "/oidc";

/// The AAD under which an embedded signing key is sealed: no org can open it.
const KEY_SEAL_LABEL: &str = "#oidc-signing-key";

/// One key of the issuer's keyring, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SigningKey {
    /// The RFC 7638 thumbprint of the public key.
    pub kid: String,
    /// The public modulus and exponent, base64url (JWK `n`, `e`).
    pub n: String,
    pub e: String,
    /// Unix seconds.
    pub created: i64,
    /// Set once a newer key replaced this one: until then (unix seconds) it is still published
    /// in the JWKS, but signs nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_until: Option<i64>,
    pub material: KeyMaterial,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum KeyMaterial {
    /// A PKCS#8 private key sealed by the server's cipher (embedded mode).
    Sealed(String),
    /// A KMS key (`RSA_2048`, `SIGN_VERIFY`), by id or ARN (AWS mode).
    Kms(String),
}

fn kms_err<E: std::error::Error + Send + Sync + 'static>(
    op: &str,
    e: aws_sdk_kms::error::SdkError<E>,
) -> Error {
    Error::internal(format!(
        "KMS {op}: {}",
        aws_sdk_kms::error::DisplayErrorContext(e)
    ))
}

/// The RFC 7638 thumbprint of an RSA public key.
fn thumbprint(n: &str, e: &str) -> String {
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

fn new_key(n: &[u8], e: &[u8], material: KeyMaterial) -> SigningKey {
    let (n, e) = (URL_SAFE_NO_PAD.encode(n), URL_SAFE_NO_PAD.encode(e));
    SigningKey {
        kid: thumbprint(&n, &e),
        n,
        e,
        created: OffsetDateTime::now_utc().unix_timestamp(),
        retired_until: None,
        material,
    }
}

/// The key that signs: the newest that has not been replaced.
pub fn active_key(keys: &[SigningKey]) -> Option<&SigningKey> {
    keys.iter()
        .filter(|k| k.retired_until.is_none())
        .max_by_key(|k| k.created)
}

/// The keys a verifier may meet at `now`: the active one and those replaced less than
/// `MAX_TOKEN_LIFETIME` (plus skew) ago.
pub fn published_keys(keys: &[SigningKey], now: i64) -> impl Iterator<Item = &SigningKey> {
    keys.iter()
        .filter(move |k| k.retired_until.is_none_or(|until| until > now))
}

/// The keyring after `new` replaces the active key at `now`. Keys no longer published are
/// dropped.
pub fn rotated(keys: &[SigningKey], new: SigningKey, now: i64) -> Vec<SigningKey> {
    let keep = (MAX_TOKEN_LIFETIME + CLOCK_SKEW).as_secs() as i64;
    let mut out: Vec<SigningKey> = published_keys(keys, now)
        .filter(|k| k.kid != new.kid)
        .cloned()
        .map(|mut k| {
            k.retired_until.get_or_insert(now + keep);
            k
        })
        .collect();
    out.push(new);
    out
}

/// The issuer: its URL, its keyring, and the means to sign with the active key.
pub struct Issuer {
    url: String,
    keys: Arc<dyn SigningKeyStore>,
    /// Seals and opens generated keys (embedded mode).
    cipher: Option<Cipher>,
    kms: Option<aws_sdk_kms::Client>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("url", &self.url).finish()
    }
}

impl Issuer {
    /// `url` is the issuer identifier (`iss`), without a trailing slash. `cipher` is needed
    /// only for generated keys (embedded mode), `kms` only for KMS keys (AWS mode); a process
    /// that serves the JWKS needs neither.
    pub fn new(
        url: &str,
        keys: Arc<dyn SigningKeyStore>,
        cipher: Option<Cipher>,
        kms: Option<aws_sdk_kms::Client>,
    ) -> Self {
        Self {
            url: url.trim_end_matches('/').to_string(),
            keys,
            cipher,
            kms,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// `/.well-known/openid-configuration`.
    pub fn discovery(&self) -> Value {
        json!({
            "issuer": self.url,
            "jwks_uri": format!("{}/.well-known/jwks.json", self.url),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": [
                "iss", "aud", "sub", "exp", "iat", "nbf", "jti", "org", "project", "stack",
                "stackId", "operation", "deployment", "scope",
            ],
            "scopes_supported": ["openid"],
        })
    }

    /// `/.well-known/jwks.json`: every published key.
    pub async fn jwks(&self) -> Result<Value> {
        let (keys, _) = self.keys.keyring().await?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let keys: Vec<Value> = published_keys(&keys, now)
            .map(|k| {
                json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": k.kid, "n": k.n, "e": k.e})
            })
            .collect();
        Ok(json!({ "keys": keys }))
    }

    /// Makes sure there is a key to sign with, generating one (embedded mode) if there is none.
    pub async fn ensure_local_key(&self) -> Result<()> {
        let (keys, _) = self.keys.keyring().await?;
        if active_key(&keys).is_none() {
            match self.rotate_local().await {
                // Another process created the first key at the same moment: theirs stands.
                Ok(_) | Err(Error::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Generates an RSA-2048 key, sealed by the server's cipher, and makes it the signing key.
    /// Returns its `kid`.
    pub async fn rotate_local(&self) -> Result<String> {
        let pair = tokio::task::spawn_blocking(|| KeyPair::generate(KeySize::Rsa2048))
            .await
            .map_err(|e| Error::internal(format!("key generation task: {e}")))?
            .map_err(|_| Error::internal("RSA key generation failed"))?;
        let pkcs8 = pair
            .as_der()
            .map_err(|_| Error::internal("cannot encode the RSA key"))?;
        let sealed = self
            .cipher()?
            .for_org(KEY_SEAL_LABEL)
            .seal(&STANDARD.encode(pkcs8.as_ref()));
        let public = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        self.install(new_key(&public.n, &public.e, KeyMaterial::Sealed(sealed)))
            .await
    }

    /// Makes a KMS key (`RSA_2048`, `SIGN_VERIFY`) the signing key. Returns its `kid`.
    pub async fn rotate_kms(&self, key_id: &str) -> Result<String> {
        let kms = self.kms_client()?;
        let out = kms
            .get_public_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(|e| kms_err("GetPublicKey", e))?;
        let der = out
            .public_key
            .ok_or_else(|| Error::internal("KMS returned no public key"))?;
        let public = aws_lc_rs::rsa::PublicKey::from_der(der.as_ref())
            .map_err(|_| Error::invalid(format!("KMS key {key_id} is not an RSA signing key")))?;
        let public = PublicKeyComponents::<Vec<u8>>::from(&public);
        self.install(new_key(
            &public.n,
            &public.e,
            KeyMaterial::Kms(key_id.to_string()),
        ))
        .await
    }

    async fn install(&self, key: SigningKey) -> Result<String> {
        let kid = key.kid.clone();
        let (keys, version) = self.keys.keyring().await?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        self.keys
            .put_keyring(&rotated(&keys, key, now), version)
            .await?;
        tracing::info!(kid = %kid, "new OIDC signing key");
        Ok(kid)
    }

    fn cipher(&self) -> Result<&Cipher> {
        self.cipher
            .as_ref()
            .ok_or_else(|| Error::internal("this process has no key to seal signing keys with"))
    }

    fn kms_client(&self) -> Result<&aws_sdk_kms::Client> {
        self.kms
            .as_ref()
            .ok_or_else(|| Error::internal("this process has no KMS client to sign with"))
    }

    /// Signs `claims` as an RS256 JWT with the active key.
    pub async fn sign(&self, claims: &Value) -> Result<String> {
        let (keys, _) = self.keys.keyring().await?;
        let key = active_key(&keys)
            .ok_or_else(|| Error::internal("the OIDC issuer has no signing key"))?;
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": key.kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?)
        );
        let signature = match &key.material {
            KeyMaterial::Sealed(sealed) => self.sign_local(sealed.as_str(), input.as_bytes())?,
            KeyMaterial::Kms(key_id) => {
                let out = self
                    .kms_client()?
                    .sign()
                    .key_id(key_id)
                    // KMS takes raw messages only up to 4 KB: send the SHA-256 digest.
                    .message(aws_sdk_kms::primitives::Blob::new(
                        Sha256::digest(input.as_bytes()).to_vec(),
                    ))
                    .message_type(aws_sdk_kms::types::MessageType::Digest)
                    .signing_algorithm(
                        aws_sdk_kms::types::SigningAlgorithmSpec::RsassaPkcs1V15Sha256,
                    )
                    .send()
                    .await
                    .map_err(|e| kms_err("Sign", e))?;
                out.signature
                    .ok_or_else(|| Error::internal("KMS returned no signature"))?
                    .into_inner()
            }
        };
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    fn sign_local(&self, sealed: &str, message: &[u8]) -> Result<Vec<u8>> {
        let pkcs8 = self
            .cipher()?
            .for_org(KEY_SEAL_LABEL)
            .open(sealed)
            .and_then(|b64| STANDARD.decode(b64).ok())
            .ok_or_else(|| {
                Error::internal("the OIDC signing key cannot be opened with this server's key")
            })?;
        let pair = KeyPair::from_pkcs8(&pkcs8)
            .map_err(|_| Error::internal("the OIDC signing key is not a valid RSA key"))?;
        let mut signature = vec![0; pair.public_modulus_len()];
        pair.sign(
            &RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            message,
            &mut signature,
        )
        .map_err(|_| Error::internal("RS256 signing failed"))?;
        Ok(signature)
    }
}

/// Token checks for tests, with an independent JWT library: the same file the test crates use.
#[cfg(test)]
#[path = "../../../tests/support/signing.rs"]
pub mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str, created: i64, retired_until: Option<i64>) -> SigningKey {
        SigningKey {
            kid: kid.into(),
            n: "n".into(),
            e: "AQAB".into(),
            created,
            retired_until,
            material: KeyMaterial::Kms(kid.into()),
        }
    }

    #[test]
    fn rotation_retires_the_active_key_for_the_longest_token_lifetime_then_drops_it() {
        let ring = vec![key("a", 100, None)];
        let ring = rotated(&ring, key("b", 200, None), 200);
        assert_eq!(active_key(&ring).unwrap().kid, "b");
        let keep = (MAX_TOKEN_LIFETIME + CLOCK_SKEW).as_secs() as i64;
        assert_eq!(ring[0].retired_until, Some(200 + keep));
        let published: Vec<_> = published_keys(&ring, 200 + keep - 1)
            .map(|k| k.kid.as_str())
            .collect();
        assert_eq!(published, ["a", "b"]);
        let published: Vec<_> = published_keys(&ring, 200 + keep)
            .map(|k| k.kid.as_str())
            .collect();
        assert_eq!(published, ["b"]);
        // The next rotation forgets keys no longer published, and keeps the retirement dates.
        let ring = rotated(&ring, key("c", 300 + keep, None), 300 + keep);
        let kids: Vec<_> = ring.iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, ["b", "c"]);
    }

    #[test]
    fn the_thumbprint_is_rfc_7638s() {
        // RFC 7638 §3.1's example key and thumbprint.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        assert_eq!(
            thumbprint(n, "AQAB"),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }
}
