//! Tarmac as an OIDC issuer: per-deployment tokens, and the exchange of a token for cloud
//! credentials.
//!
//! - `Issuer` holds the keyring (a `SigningKeyStore`) and signs RS256 JWTs with its active key
//!   through the `Signer` port: `LocalSigner` here (a key generated and sealed by the server's
//!   cipher, embedded mode) or the KMS adapter (AWS mode, where only the `oidc` function may
//!   call `kms:Sign`).
//! - A rotation adds a key that signs from then on; the replaced key stays in the JWKS until
//!   every token it signed has expired (`MAX_TOKEN_LIFETIME` plus clock skew).
//! - `token` turns a deployment and its settings into Pulumi-format claims; `exchange` checks
//!   that the caller runs the deployment, signs its token and trades it for credentials
//!   through the `CloudExchange` port.

pub mod exchange;
pub mod token;

use std::sync::Arc;

use async_trait::async_trait;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::crypto::Cipher;
use crate::domain::keys::{KeyMaterial, SigningKey, active_key, published_keys, rotated};
use crate::error::{Error, Result};
use crate::ports::{Signer, SigningKeyStore};

pub use crate::domain::keys::MAX_TOKEN_LIFETIME;
pub use exchange::{CredentialBroker, ExchangeRequest, Exchanger, RunCredentials};

/// Where the issuer's documents are served, under the API's base URL.
pub const ISSUER_PATH: &str = "/oidc";

/// The AAD under which an embedded signing key is sealed: no org can open it.
const KEY_SEAL_LABEL: &str = "#oidc-signing-key";

/// The issuer: its URL, its keyring, and the signer of its active key.
pub struct Issuer {
    url: String,
    keys: Arc<dyn SigningKeyStore>,
    signer: Arc<dyn Signer>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("url", &self.url).finish()
    }
}

impl Issuer {
    /// `url` is the issuer identifier (`iss`), without a trailing slash.
    pub fn new(url: &str, keys: Arc<dyn SigningKeyStore>, signer: Arc<dyn Signer>) -> Self {
        Self {
            url: url.trim_end_matches('/').to_string(),
            keys,
            signer,
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

    /// Whether the keyring has a key that signs.
    pub async fn has_active_key(&self) -> Result<bool> {
        let (keys, _) = self.keys.keyring().await?;
        Ok(active_key(&keys).is_some())
    }

    /// Installs a key made by `new_key` as the first signing key, unless there is one: another
    /// process installing its own at the same moment wins, and that is fine.
    pub async fn ensure_key<F>(&self, new_key: F) -> Result<()>
    where
        F: AsyncFnOnce() -> Result<SigningKey>,
    {
        if self.has_active_key().await? {
            return Ok(());
        }
        match self.rotate(new_key().await?).await {
            Ok(_) | Err(Error::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Makes `key` the signing key; the one it replaces stays published until its tokens have
    /// expired. Returns its `kid`. `Error::Conflict` if another rotation got in between.
    pub async fn rotate(&self, key: SigningKey) -> Result<String> {
        let kid = key.kid.clone();
        let (keys, version) = self.keys.keyring().await?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        self.keys
            .put_keyring(&rotated(&keys, key, now), version)
            .await?;
        tracing::info!(kid = %kid, "new OIDC signing key");
        Ok(kid)
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
        let signature = self.signer.sign(key, input.as_bytes()).await?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// The embedded signer: RSA keys generated here, stored sealed by the server's cipher.
#[derive(Clone)]
pub struct LocalSigner {
    cipher: Cipher,
}

impl std::fmt::Debug for LocalSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSigner").finish_non_exhaustive()
    }
}

impl LocalSigner {
    pub fn new(cipher: Cipher) -> Self {
        Self { cipher }
    }

    /// A new RSA-2048 key, its private half sealed.
    pub async fn generate(&self) -> Result<SigningKey> {
        let pair = tokio::task::spawn_blocking(|| KeyPair::generate(KeySize::Rsa2048))
            .await
            .map_err(|e| Error::internal(format!("key generation task: {e}")))?
            .map_err(|_| Error::internal("RSA key generation failed"))?;
        let pkcs8 = pair
            .as_der()
            .map_err(|_| Error::internal("cannot encode the RSA key"))?;
        let sealed = self
            .cipher
            .for_org(KEY_SEAL_LABEL)
            .seal(&STANDARD.encode(pkcs8.as_ref()));
        let public = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        Ok(SigningKey::new(
            &public.n,
            &public.e,
            KeyMaterial::Sealed(sealed),
            OffsetDateTime::now_utc().unix_timestamp(),
        ))
    }
}

#[async_trait]
impl Signer for LocalSigner {
    async fn sign(&self, key: &SigningKey, message: &[u8]) -> Result<Vec<u8>> {
        let KeyMaterial::Sealed(sealed) = &key.material else {
            return Err(Error::internal(
                "the OIDC signing key is a KMS key; only the oidc function signs with it",
            ));
        };
        let pkcs8 = self
            .cipher
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

/// The signer of a process that only serves the issuer's documents (the API in AWS mode).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSigner;

#[async_trait]
impl Signer for NoSigner {
    async fn sign(&self, _key: &SigningKey, _message: &[u8]) -> Result<Vec<u8>> {
        Err(Error::internal("this process does not sign OIDC tokens"))
    }
}
