//! The OIDC issuer's signing keys as data: the keyring, which key signs, and which are
//! published. Signing itself is behind the `Signer` port.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The longest a token may live; a replaced key is published at least this long.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Leeway for verifiers whose clocks run behind ours.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

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

/// Where a key's private half is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum KeyMaterial {
    /// A PKCS#8 private key sealed by the server's cipher (embedded mode).
    Sealed(String),
    /// A KMS key (`RSA_2048`, `SIGN_VERIFY`), by id or ARN (AWS mode).
    Kms(String),
}

impl SigningKey {
    /// A new key from its public modulus and exponent (big-endian bytes), created `now` (unix
    /// seconds).
    pub fn new(n: &[u8], e: &[u8], material: KeyMaterial, now: i64) -> Self {
        let (n, e) = (URL_SAFE_NO_PAD.encode(n), URL_SAFE_NO_PAD.encode(e));
        Self {
            kid: thumbprint(&n, &e),
            n,
            e,
            created: now,
            retired_until: None,
            material,
        }
    }
}

/// The RFC 7638 thumbprint of an RSA public key (base64url `n` and `e`).
pub fn thumbprint(n: &str, e: &str) -> String {
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
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
