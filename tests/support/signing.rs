//! Signature checks shared by the test crates and the library's own tests: JWTs with an
//! independent library (`jsonwebtoken`), HMACs computed as a webhook's other end would.

use serde_json::Value;

/// The `kid` in a token's header.
pub(crate) fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// Verifies a token as a relying party would: RS256 under the JWKS key its `kid` names, and
/// `iss`, `aud`, `exp`, `nbf`. Returns the claims.
pub(crate) fn verify(token: &str, jwks: &Value, iss: &str, aud: &str) -> Result<Value, String> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
    let set: JwkSet = serde_json::from_value(jwks.clone()).map_err(|e| e.to_string())?;
    let kid = jsonwebtoken::decode_header(token)
        .map_err(|e| e.to_string())?
        .kid
        .ok_or("no kid")?;
    let jwk = set.find(&kid).ok_or(format!("kid {kid} not in the JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut v = Validation::new(Algorithm::RS256);
    v.set_issuer(&[iss]);
    v.set_audience(&[aud]);
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf", "iat"]);
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

/// Hex HMAC-SHA256 of `message` under `key`, as GitHub and webhook receivers compute it.
pub(crate) fn hmac_hex(key: &str, message: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes()), message);
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
