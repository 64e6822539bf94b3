//! The OIDC issuer's public documents and the bootstrap exchange (`super::super::oidc`,
//! `super::super::bootstrap`).

use utoipa::ToSchema;

/// The issuer's OpenID Provider configuration (OpenID Connect Discovery 1.0).
#[derive(ToSchema)]
pub(crate) struct OidcDiscovery {
    /// The issuer URL: the `iss` of the tokens runs get.
    issuer: String,
    /// `<issuer>/.well-known/jwks.json`.
    jwks_uri: String,
    /// `["id_token"]`.
    response_types_supported: Vec<String>,
    /// `["public"]`.
    subject_types_supported: Vec<String>,
    /// `["RS256"]`.
    id_token_signing_alg_values_supported: Vec<String>,
    claims_supported: Vec<String>,
    /// `["openid"]`.
    scopes_supported: Vec<String>,
}

/// A published RSA signing key (RFC 7517).
#[derive(ToSchema)]
pub(crate) struct OidcJwk {
    /// `RSA`.
    kty: String,
    /// `sig`.
    #[schema(rename = "use")]
    use_: String,
    /// `RS256`.
    alg: String,
    kid: String,
    /// The modulus, base64url.
    n: String,
    /// The exponent, base64url.
    e: String,
}

/// The issuer's published keys: the signing key and any it replaced whose tokens may still be
/// valid.
#[derive(ToSchema)]
pub(crate) struct OidcJwks {
    keys: Vec<OidcJwk>,
}

/// `POST /api/bootstrap`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct BootstrapRequest {
    /// The one-time secret set when Tarmac was deployed.
    secret: String,
    /// The org the admin token is for.
    organization: String,
    /// 1 to 100 characters; `bootstrap-admin` by default.
    #[schema(min_length = 1, max_length = 100)]
    token_name: Option<String>,
}

/// The org's first admin token: shown this once.
#[derive(ToSchema)]
pub(crate) struct BootstrapToken {
    /// Send it as `Authorization: token <value>`.
    token: String,
    organization: String,
    /// `admin`.
    role: String,
    /// The token's name.
    name: String,
}
