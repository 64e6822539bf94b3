//! GitHub: webhooks that deploy (pushes, tags, pull requests), and commit statuses and pull
//! request comments sent back.
//!
//! Each Tarmac org connects its own GitHub (`PUT /api/orgs/{org}/integrations/github`): a
//! webhook secret, the API base URL (GitHub Enterprise works), and either a token or a GitHub
//! App (id, private key, installation). GitHub posts to the org's own endpoint,
//! `POST /api/orgs/{org}/integrations/github/webhook`, and only that org's stacks are matched,
//! so one org's pushes never deploy another org's stacks.

pub mod client;
pub mod triggers;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::crypto::OrgCipher;
use crate::error::{Error, Result};

pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// An org's GitHub connection as stored: every secret sealed for the org.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Integration {
    pub webhook_secret: String,
    pub api_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<App>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    pub app_id: String,
    /// The App's private key (PEM), sealed.
    pub private_key: String,
    /// Used when an event does not name its installation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation_id: Option<i64>,
}

fn secret_string(body: &Value, key: &str) -> Result<Option<String>> {
    match crate::json::member(body, key) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        // A `SecretValue` object, as settings take them.
        Some(v @ Value::Object(_)) => {
            match crate::json::member(v, "secret").or(crate::json::member(v, "plaintext")) {
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                _ => Err(Error::invalid(format!("{key} must be a non-empty string"))),
            }
        }
        Some(_) => Err(Error::invalid(format!("{key} must be a non-empty string"))),
    }
}

impl Integration {
    /// Reads a `PUT` body, sealing its secrets. Everything is checked before anything is kept.
    pub fn from_request(body: &Value, cipher: &OrgCipher<'_>) -> Result<Self> {
        if !body.is_object() {
            return Err(Error::invalid("the request body must be a JSON object"));
        }
        let webhook_secret = secret_string(body, "webhookSecret")?
            .ok_or_else(|| Error::invalid("webhookSecret is required"))?;
        let api_url = match crate::json::member(body, "apiUrl") {
            None => DEFAULT_API_URL.to_string(),
            Some(Value::String(u)) if u.starts_with("https://") || u.starts_with("http://") => {
                u.trim_end_matches('/').to_string()
            }
            Some(_) => return Err(Error::invalid("apiUrl must be an http(s) URL")),
        };
        let token = secret_string(body, "token")?;
        let app = match crate::json::member(body, "app") {
            None => None,
            Some(app) => {
                let app_id = match crate::json::member(app, "appId") {
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => return Err(Error::invalid("app.appId is required")),
                };
                let key = secret_string(app, "privateKey")?
                    .ok_or_else(|| Error::invalid("app.privateKey is required"))?;
                client::app_key(&key)?;
                let installation_id =
                    match crate::json::member(app, "installationId") {
                        None => None,
                        Some(v) => Some(v.as_i64().ok_or_else(|| {
                            Error::invalid("app.installationId must be an integer")
                        })?),
                    };
                Some(App {
                    app_id,
                    private_key: cipher.seal(&key),
                    installation_id,
                })
            }
        };
        if token.is_some() && app.is_some() {
            return Err(Error::invalid("set either token or app, not both"));
        }
        Ok(Self {
            webhook_secret: cipher.seal(&webhook_secret),
            api_url,
            token: token.map(|t| cipher.seal(&t)),
            app,
        })
    }

    /// What the API shows: never a secret.
    pub fn render(&self) -> Value {
        json!({
            "apiUrl": self.api_url,
            "hasWebhookSecret": true,
            "hasToken": self.token.is_some(),
            "app": self.app.as_ref().map(|a| json!({
                "appId": a.app_id,
                "installationId": a.installation_id,
                "hasPrivateKey": true,
            })),
        })
    }
}

/// Checks `X-Hub-Signature-256` (`sha256=<hex HMAC-SHA256 of the raw body>`) in constant time.
pub fn signature_valid(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    header
        .and_then(|h| h.trim().strip_prefix("sha256="))
        .and_then(crate::crypto::from_hex)
        .is_some_and(|tag| crate::crypto::hmac_sha256_valid(secret, body, &tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_over_the_raw_body() {
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let good = format!("sha256={}", crate::crypto::hmac_sha256_hex("s3cret", body));
        assert!(signature_valid("s3cret", body, Some(&good)));
        assert!(!signature_valid("other", body, Some(&good)));
        assert!(!signature_valid("s3cret", b"{}", Some(&good)));
        assert!(!signature_valid("s3cret", body, None));
        assert!(!signature_valid("s3cret", body, Some("sha1=abc")));
        assert!(!signature_valid("s3cret", body, Some("sha256=zz")));
        // A hex digit pair is two hex digits: "+7" is not "07", though Rust's integer parsing
        // would take it (found by the `signatures` fuzz target).
        assert!(!signature_valid(
            "It's a Secret to Everybody",
            b"Hello, World!",
            Some("sha256=7571+7ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
        ));
        // GitHub's documented example (docs: "Validating webhook deliveries").
        assert!(signature_valid(
            "It's a Secret to Everybody",
            b"Hello, World!",
            Some("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
        ));
    }

    #[test]
    fn the_integration_keeps_secrets_sealed_and_shows_none() {
        let key = crate::crypto::Cipher::from_key(&[2; 32]);
        let c = key.for_org("o");
        let i = Integration::from_request(
            &json!({"webhookSecret": "hook-secret", "token": {"secret": "ghp_token"}, "apiUrl": "https://ghe.example.com/api/v3/"}),
            &c,
        )
        .unwrap();
        assert_eq!(c.open(&i.webhook_secret).unwrap(), "hook-secret");
        assert_eq!(c.open(i.token.as_ref().unwrap()).unwrap(), "ghp_token");
        assert_eq!(i.api_url, "https://ghe.example.com/api/v3");
        let shown = i.render().to_string();
        assert!(!shown.contains("hook-secret") && !shown.contains("ghp_token"));
        for (body, want) in [
            (json!({}), "webhookSecret is required"),
            (json!({"webhookSecret": "s", "apiUrl": "ftp://x"}), "apiUrl"),
            (
                json!({"webhookSecret": "s", "app": {"privateKey": "k"}}),
                "app.appId",
            ),
            (
                json!({"webhookSecret": "s", "app": {"appId": 1, "privateKey": "not a key"}}),
                "private key",
            ),
        ] {
            let err = Integration::from_request(&body, &c)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
    }
}
