//! The REST client the commands share: one base URL and token, Pulumi-shaped errors turned into
//! messages that say what to do next.

use std::fmt;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Exit codes, as `tarmac --help` lists them.
pub(crate) mod exit {
    /// The command did what it was asked; a followed deployment succeeded.
    pub(crate) const OK: u8 = 0;
    /// The server refused the request, could not be reached, or a local file was wrong.
    pub(crate) const ERROR: u8 = 1;
    /// The followed deployment failed.
    pub(crate) const FAILED: u8 = 3;
    /// The followed deployment was cancelled.
    pub(crate) const CANCELLED: u8 = 4;
    /// The followed deployment was skipped (cancelled while queued, or superseded).
    pub(crate) const SKIPPED: u8 = 5;
    /// Ctrl-C: following stopped, the deployment goes on.
    pub(crate) const DETACHED: u8 = 130;

    pub(crate) const HELP: &str = "\
Exit codes:
  0    success; with --follow, the deployment succeeded
  1    error: the server refused the request or could not be reached, or a file is invalid
  2    bad usage
  3    the deployment failed
  4    the deployment was cancelled
  5    the deployment was skipped (cancelled while queued, or superseded by a newer one)
  130  Ctrl-C, and you chose not to cancel: following stopped, the deployment goes on";
}

/// A failed command: what went wrong, what to do about it, and the exit code.
#[derive(Debug)]
pub(crate) struct CliError {
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
    pub(crate) code: u8,
    /// The HTTP status, when the server answered.
    pub(crate) status: Option<StatusCode>,
}

impl CliError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hint: None,
            code: exit::ERROR,
            status: None,
        }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub(crate) fn is_not_found(&self) -> bool {
        self.status == Some(StatusCode::NOT_FOUND)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        Self::new(e.to_string())
    }
}

pub(crate) type CliResult<T> = std::result::Result<T, CliError>;

/// Requests other than a followed stream must answer within this.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub(crate) struct Api {
    base: String,
    auth: String,
    http: reqwest::Client,
}

impl Api {
    pub(crate) fn new(url: &str, token: &str) -> CliResult<Self> {
        let http = reqwest::Client::builder()
            .user_agent(tarmac::USER_AGENT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| CliError::new(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            base: url.trim_end_matches('/').to_string(),
            auth: format!("token {token}"),
            http,
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.base
    }

    pub(crate) async fn get(&self, path: &str) -> CliResult<Value> {
        self.call(Method::GET, path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> CliResult<Value> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub(crate) async fn put(&self, path: &str, body: &Value) -> CliResult<Value> {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub(crate) async fn patch(&self, path: &str, body: &Value) -> CliResult<Value> {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub(crate) async fn delete(&self, path: &str) -> CliResult<Value> {
        self.call(Method::DELETE, path, None).await
    }

    /// `GET`, with a 404 as `None`.
    pub(crate) async fn get_opt(&self, path: &str) -> CliResult<Option<Value>> {
        match self.get(path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One JSON request; an empty answer is `null`.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> CliResult<Value> {
        let mut req = self
            .request(method.clone(), path)
            .timeout(TIMEOUT)
            .header("Accept", "application/json");
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        if !status.is_success() {
            return Err(refused(&method, path, status, &bytes));
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            CliError::new(format!(
                "{method} {path}: the server's answer is not JSON ({e})"
            ))
            .hint(format!("is {} a Tarmac server?", self.base))
        })
    }

    /// A request with the token, for callers that read the response themselves (streams).
    pub(crate) fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
    }

    pub(crate) fn unreachable(&self, e: &reqwest::Error) -> CliError {
        let what = if e.is_timeout() {
            "timed out"
        } else {
            "could not be reached"
        };
        CliError::new(format!("{} {what}: {}", self.base, error_chain(e))).hint(
            "is the server running? Start one with `tarmac serve`, or pick another with --url, TARMAC_URL or --profile",
        )
    }
}

/// A reqwest error with its causes (its own Display stops at "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A non-2xx answer as a message (the server's `{"code","message"}`) and what to do.
pub(crate) fn refused(method: &Method, path: &str, status: StatusCode, body: &[u8]) -> CliError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| {
            String::from_utf8_lossy(body)
                .trim()
                .chars()
                .take(300)
                .collect()
        });
    let hint = match status.as_u16() {
        401 => Some(
            "the token was refused (wrong, revoked or for another server): run `tarmac login` again, or set TARMAC_TOKEN",
        ),
        403 => {
            Some("this token's role does not allow it: ask an admin for a token with more rights")
        }
        404 => Some("check the org, project and stack names (`tarmac stacks ls`) and the id"),
        409 => {
            Some("it conflicts with what is happening now: look with `tarmac deployments ls STACK`")
        }
        _ => None,
    };
    let mut e = CliError::new(format!("{method} {path}: {} {message}", status.as_u16()));
    e.status = Some(status);
    match hint {
        Some(h) => e.hint(h),
        None => e,
    }
}

/// Percent-encodes one path segment or query value.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `ORG/PROJECT/STACK`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct StackPath {
    pub(crate) org: String,
    pub(crate) project: String,
    pub(crate) stack: String,
}

impl StackPath {
    /// `ORG/PROJECT/STACK`, or `PROJECT/STACK` in `default_org`.
    pub(crate) fn parse(s: &str, default_org: Option<&str>) -> CliResult<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || {
            CliError::new(format!("'{s}' is not a stack")).hint(
                "name it ORG/PROJECT/STACK (or PROJECT/STACK in your default org), e.g. acme/web/prod",
            )
        };
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        match (parts.as_slice(), default_org) {
            ([org, project, stack], _) => Ok(Self::new(org, project, stack)),
            ([project, stack], Some(org)) => Ok(Self::new(org, project, stack)),
            _ => Err(bad()),
        }
    }

    pub(crate) fn new(org: &str, project: &str, stack: &str) -> Self {
        Self {
            org: org.into(),
            project: project.into(),
            stack: stack.into(),
        }
    }

    /// `/api/stacks/{org}/{project}/{stack}`.
    pub(crate) fn api(&self) -> String {
        format!(
            "/api/stacks/{}/{}/{}",
            enc(&self.org),
            enc(&self.project),
            enc(&self.stack)
        )
    }
}

impl fmt::Display for StackPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.org, self.project, self.stack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_are_named_with_or_without_their_org() {
        let s = StackPath::parse("acme/web/prod", None).unwrap();
        assert_eq!(s.api(), "/api/stacks/acme/web/prod");
        assert_eq!(
            StackPath::parse("web/prod", Some("acme")).unwrap(),
            StackPath::new("acme", "web", "prod")
        );
        for bad in ["web/prod", "a/b/c/d", "a//c", ""] {
            let e = StackPath::parse(bad, None).unwrap_err();
            assert!(e.message.contains("is not a stack"), "{bad}: {e}");
        }
    }

    #[test]
    fn refusals_carry_the_servers_message_and_a_hint() {
        let e = refused(
            &Method::GET,
            "/api/x",
            StatusCode::UNAUTHORIZED,
            br#"{"code":401,"message":"Unauthorized: bad token"}"#,
        );
        assert_eq!(e.message, "GET /api/x: 401 Unauthorized: bad token");
        assert!(e.hint.unwrap().contains("tarmac login"));
        assert_eq!(enc("a b/é"), "a%20b%2F%C3%A9");
    }
}
