//! The few GitHub API calls Tarmac makes: an App installation token, a commit status, and a
//! pull request comment kept up to date in place.

use std::time::Duration;

use aws_lc_rs::rsa::KeyPair;
use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use super::Integration;
use crate::error::{Error, Result};

/// Parses an App's private key: PEM, PKCS#1 (`RSA PRIVATE KEY`, what GitHub hands out) or
/// PKCS#8 (`PRIVATE KEY`).
pub fn app_key(pem: &str) -> Result<KeyPair> {
    let bad = || Error::invalid("app.privateKey is not a PEM RSA private key");
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = STANDARD.decode(body).map_err(|_| bad())?;
    if pem.contains("BEGIN RSA PRIVATE KEY") {
        KeyPair::from_der(&der).map_err(|_| bad())
    } else {
        KeyPair::from_pkcs8(&der).map_err(|_| bad())
    }
}

/// The JWT an App authenticates with: RS256, `iss` the App id, valid for nine minutes (GitHub
/// allows ten), issued a minute back for clock drift.
pub fn app_jwt(app_id: &str, key: &KeyPair, now: i64) -> Result<String> {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD
        .encode(json!({"iat": now - 60, "exp": now + 540, "iss": app_id}).to_string());
    let input = format!("{header}.{claims}");
    let mut sig = vec![0; key.public_modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| Error::internal("RS256 signing failed"))?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// A client for one org's GitHub, with its credentials opened.
pub struct GitHub {
    http: reqwest::Client,
    api: String,
    auth: Auth,
}

enum Auth {
    None,
    Token(String),
    App {
        app_id: String,
        key: KeyPair,
        installation: Option<i64>,
    },
}

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHub").field("api", &self.api).finish()
    }
}

/// Every call gives up after this long: a slow GitHub delays only its own notification.
const TIMEOUT: Duration = Duration::from_secs(10);

impl GitHub {
    /// `open` opens the integration's sealed values.
    pub fn new(i: &Integration, open: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let sealed = || Error::internal("a GitHub secret cannot be opened with this server's key");
        let auth = if let Some(app) = &i.app {
            Auth::App {
                app_id: app.app_id.clone(),
                key: app_key(&open(&app.private_key).ok_or_else(sealed)?)?,
                installation: app.installation_id,
            }
        } else if let Some(t) = &i.token {
            Auth::Token(open(t).ok_or_else(sealed)?)
        } else {
            Auth::None
        };
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(crate::USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::internal(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            api: i.api_url.clone(),
            auth,
        })
    }

    /// A token for API calls and clones: the configured one, or a fresh installation token of
    /// the App (`installation` from the event, else the configured one). `None` without either.
    pub async fn token(&self, installation: Option<i64>) -> Result<Option<String>> {
        match &self.auth {
            Auth::None => Ok(None),
            Auth::Token(t) => Ok(Some(t.clone())),
            Auth::App {
                app_id,
                key,
                installation: configured,
            } => {
                let id = installation.or(*configured).ok_or_else(|| {
                    Error::invalid("the GitHub App has no installation id: set app.installationId")
                })?;
                let jwt = app_jwt(
                    app_id,
                    key,
                    time::OffsetDateTime::now_utc().unix_timestamp(),
                )?;
                let resp = self
                    .http
                    .post(format!("{}/app/installations/{id}/access_tokens", self.api))
                    .bearer_auth(jwt)
                    .header("Accept", "application/vnd.github+json")
                    .send()
                    .await
                    .map_err(|e| Error::Upstream(format!("GitHub installation token: {e}")))?;
                let body: Value = checked(resp, "installation token").await?;
                body["token"]
                    .as_str()
                    .map(|t| Some(t.to_string()))
                    .ok_or_else(|| Error::Upstream("GitHub returned no installation token".into()))
            }
        }
    }

    async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api))
            .header("Authorization", format!("token {token}"))
            .header("Accept", "application/vnd.github+json");
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::Upstream(format!("GitHub {path}: {e}")))?;
        checked(resp, path).await
    }

    /// `POST /repos/{repo}/statuses/{sha}`.
    pub async fn set_status(
        &self,
        token: &str,
        repo: &str,
        sha: &str,
        status: &Value,
    ) -> Result<()> {
        self.call(
            token,
            reqwest::Method::POST,
            &format!("/repos/{repo}/statuses/{sha}"),
            Some(status),
        )
        .await
        .map(|_| ())
    }

    /// Posts `body` on the pull request, or edits the comment that carries `marker` if there is
    /// one, so each stack keeps one comment per pull request.
    pub async fn upsert_comment(
        &self,
        token: &str,
        repo: &str,
        pr: i64,
        marker: &str,
        body: &str,
    ) -> Result<()> {
        let text = format!("{body}\n\n{marker}");
        let payload = json!({ "body": text });
        // Ours is the newest comment carrying the marker (first pages are oldest first).
        let mut found = None;
        for page in 1..=MAX_COMMENT_PAGES {
            let listed = self
                .call(
                    token,
                    reqwest::Method::GET,
                    &format!("/repos/{repo}/issues/{pr}/comments?per_page=100&page={page}"),
                    None,
                )
                .await?;
            let comments = listed.as_array().cloned().unwrap_or_default();
            for c in &comments {
                if c["body"].as_str().is_some_and(|b| b.contains(marker)) {
                    found = c["id"].as_i64().or(found);
                }
            }
            if comments.len() < 100 {
                break;
            }
        }
        if let Some(id) = found {
            let edited = self
                .call(
                    token,
                    reqwest::Method::PATCH,
                    &format!("/repos/{repo}/issues/comments/{id}"),
                    Some(&payload),
                )
                .await;
            // Someone else's comment that quotes the marker cannot be edited: post our own.
            match edited {
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::info!(error = %e, "could not edit the preview comment; posting a new one")
                }
            }
        }
        self.call(
            token,
            reqwest::Method::POST,
            &format!("/repos/{repo}/issues/{pr}/comments"),
            Some(&payload),
        )
        .await
        .map(|_| ())
    }
}

/// Pull requests with more comments than this many pages of 100 get a new comment.
const MAX_COMMENT_PAGES: u32 = 10;

async fn checked(resp: reqwest::Response, what: &str) -> Result<Value> {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        return Err(Error::Upstream(format!(
            "GitHub {what}: {status}: {message}"
        )));
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}
