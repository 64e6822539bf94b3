//! AWS mode's configuration: read once from the environment at cold start.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `TARMAC_TABLE` | required | the DynamoDB table (see `TABLE.md`) |
//! | `TARMAC_QUEUE_URL` | required | the SQS FIFO queue of deployments |
//! | `TARMAC_KMS_KEY_ID` | required | the symmetric KMS key that wraps the secrets data key |
//! | `TARMAC_TOKEN_TABLE` | `TARMAC_TABLE` | the DynamoDB table of API tokens (same key schema), apart so IAM can keep the other functions away from it |
//! | `TARMAC_STATE_BUCKET` | none | the S3 bucket where engine state is kept between runs; without it, state stays under `TARMAC_STATE_DIR` |
//! | `TARMAC_BOOTSTRAP_SHA256` | none | SHA-256 (hex) of the one-time secret `POST /api/bootstrap` exchanges for an org's first admin token |
//! | `TARMAC_PUBLIC_URL` | empty | base of `consoleUrl` links (the API's public URL) |
//! | `TARMAC_LEASE_SECS` | 60 | a worker's (or, in the agent gateway, an agent's) claim without a heartbeat |
//! | `TARMAC_DEPLOYMENT_TIMEOUT` | 3600 | default run limit, in seconds (the invocation caps it) |
//! | `TARMAC_STOP_GRACE` | 10 | seconds between SIGTERM and SIGKILL of a stopped run |
//! | `TARMAC_SAFETY_MARGIN_SECS` | 60 | the worker takes no new message with less time left, and stops a run this long before the invocation ends |
//! | `TARMAC_VISIBILITY_SECS` | 300 | how far each heartbeat pushes the message's visibility |
//! | `TARMAC_QUEUE_MAX_DAYS` | 7 | queued deployments older than this are skipped |
//! | `TARMAC_QUEUE_GROUPS_PER_ORG` | 10 | the queue's message groups per org (1 to 1000): the most deployments one org runs at once on the workers; below the workers' concurrency, it leaves room to other orgs whatever one org has queued |
//! | `TARMAC_WORK_DIR` | `/tmp/tarmac/work` | per-run working directories |
//! | `TARMAC_CACHE_DIR` | `/tmp/tarmac/cache` | git mirrors, plugins and dependency caches, kept across warm invocations |
//! | `TARMAC_CACHE_MAX_SIZE` | `2G` | the cache's size cap (`K`, `M`, `G` suffixes) |
//! | `TARMAC_STATE_DIR` | `/tmp/tarmac/state` | engine state when the program has no backend of its own |
//! | `TARMAC_CHILD_PATH` | this process's `PATH` | `PATH` for deployments |
//! | `TARMAC_ALLOW_LOCAL_REPOS` | false | allow `file://` repositories (tests) |
//! | `TARMAC_OIDC_ISSUER` | `TARMAC_PUBLIC_URL` + `/oidc` | the OIDC issuer whose JWKS the API serves |
//! | `TARMAC_OIDC_FUNCTION` | none | the `oidc` function the worker invokes for credentials; without it, runs with `operationContext.oidc` fail |
//! | `TARMAC_SANDBOX` | `best-effort` | how runs are confined: `required`, `best-effort` or `off` (Lambda's kernel is not known to enable Landlock; see the README's Security section) |
//! | `TARMAC_SANDBOX_RO`, `TARMAC_SANDBOX_RW` | none | more directories runs may read, or read and write (`:`-separated) |
//!
//! Endpoints (an emulator, say) come from the SDK's own `AWS_ENDPOINT_URL` and
//! `AWS_ENDPOINT_URL_<SERVICE>`.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::sandbox::{SandboxConfig, SandboxMode};

/// The template's default too: half the workers' default concurrency (20).
const DEFAULT_GROUPS_PER_ORG: u16 = 10;

#[derive(Debug, Clone)]
pub struct AwsConfig {
    pub table: String,
    pub queue_url: String,
    pub kms_key_id: String,
    pub token_table: Option<String>,
    pub state_bucket: Option<String>,
    pub bootstrap_sha256: Option<String>,
    pub public_url: String,
    pub lease_ttl: Duration,
    pub deployment_timeout: Duration,
    pub stop_grace: Duration,
    pub safety_margin: Duration,
    pub visibility: Duration,
    pub queue_max_age: Duration,
    pub queue_groups_per_org: u16,
    pub work_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub cache_max_bytes: u64,
    /// `TARMAC_SECRETS_WITH_SERVER_CREDENTIALS`: AWS secret references of stacks without an
    /// OIDC role are read with the worker's own role.
    pub secrets_with_server_credentials: bool,
    pub state_dir: PathBuf,
    pub child_path: String,
    pub allow_local_repos: bool,
    pub oidc_issuer: Option<String>,
    pub oidc_function: Option<String>,
    pub sandbox: SandboxConfig,
}

impl AwsConfig {
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get`, so tests need not touch the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let required = |k: &str| {
            get(k)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Error::invalid(format!("{k} must be set")))
        };
        let optional = |k: &str| get(k).filter(|v| !v.is_empty());
        let secs = |k: &str, default: u64| -> Result<Duration> {
            match get(k) {
                None => Ok(Duration::from_secs(default)),
                Some(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Duration::from_secs)
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "{k} must be a positive number of seconds, not '{v}'"
                        ))
                    }),
            }
        };
        let flag = |k: &str| -> Result<bool> {
            match get(k).as_deref() {
                None | Some("" | "false" | "0") => Ok(false),
                Some("true" | "1") => Ok(true),
                Some(v) => Err(Error::invalid(format!(
                    "{k} must be true or false, not '{v}'"
                ))),
            }
        };
        let paths = |k: &str| -> Vec<PathBuf> {
            optional(k)
                .map(|v| std::env::split_paths(&v).collect())
                .unwrap_or_default()
        };
        let cfg = Self {
            table: required("TARMAC_TABLE")?,
            queue_url: required("TARMAC_QUEUE_URL")?,
            kms_key_id: required("TARMAC_KMS_KEY_ID")?,
            token_table: optional("TARMAC_TOKEN_TABLE"),
            state_bucket: optional("TARMAC_STATE_BUCKET"),
            bootstrap_sha256: match optional("TARMAC_BOOTSTRAP_SHA256") {
                Some(h) if h.len() == 64 && crate::crypto::from_hex(&h).is_some() => {
                    Some(h.to_ascii_lowercase())
                }
                Some(_) => {
                    return Err(Error::invalid(
                        "TARMAC_BOOTSTRAP_SHA256 must be a SHA-256 in hex (64 digits)",
                    ));
                }
                None => None,
            },
            public_url: get("TARMAC_PUBLIC_URL")
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_string(),
            lease_ttl: secs("TARMAC_LEASE_SECS", 60)?,
            deployment_timeout: secs("TARMAC_DEPLOYMENT_TIMEOUT", 3600)?,
            stop_grace: secs("TARMAC_STOP_GRACE", 10)?,
            safety_margin: secs("TARMAC_SAFETY_MARGIN_SECS", 60)?,
            visibility: secs("TARMAC_VISIBILITY_SECS", 300)?,
            queue_max_age: secs("TARMAC_QUEUE_MAX_DAYS", 7)? * 86_400,
            queue_groups_per_org: match get("TARMAC_QUEUE_GROUPS_PER_ORG") {
                None => DEFAULT_GROUPS_PER_ORG,
                Some(v) => v
                    .parse::<u16>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "TARMAC_QUEUE_GROUPS_PER_ORG must be a number from 1 to 1000, not '{v}'"
                        ))
                    })?,
            },
            work_dir: get("TARMAC_WORK_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/tmp/tarmac/work".into()),
            cache_dir: get("TARMAC_CACHE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/tmp/tarmac/cache".into()),
            cache_max_bytes: match get("TARMAC_CACHE_MAX_SIZE") {
                None => 2 << 30,
                Some(v) => crate::runner::cache::parse_size(&v).ok_or_else(|| {
                    Error::invalid(format!(
                        "TARMAC_CACHE_MAX_SIZE must be a size such as 2G or 500M, not '{v}'"
                    ))
                })?,
            },
            state_dir: get("TARMAC_STATE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/tmp/tarmac/state".into()),
            child_path: get("TARMAC_CHILD_PATH")
                .or_else(|| get("PATH"))
                .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            allow_local_repos: flag("TARMAC_ALLOW_LOCAL_REPOS")?,
            secrets_with_server_credentials: flag("TARMAC_SECRETS_WITH_SERVER_CREDENTIALS")?,
            oidc_issuer: crate::aws::oidc::issuer_url(&get).ok(),
            oidc_function: optional("TARMAC_OIDC_FUNCTION"),
            sandbox: SandboxConfig {
                mode: match optional("TARMAC_SANDBOX") {
                    None => SandboxMode::BestEffort,
                    Some(m) => m
                        .parse()
                        .map_err(|e: String| Error::invalid(format!("TARMAC_SANDBOX: {e}")))?,
                },
                read_only: paths("TARMAC_SANDBOX_RO"),
                read_write: paths("TARMAC_SANDBOX_RW"),
                helper: None,
            },
        };
        if cfg.lease_ttl < Duration::from_secs(3) {
            return Err(Error::invalid("TARMAC_LEASE_SECS must be at least 3"));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const BASE: &[(&str, &str)] = &[
        ("TARMAC_TABLE", "t"),
        ("TARMAC_QUEUE_URL", "q"),
        ("TARMAC_KMS_KEY_ID", "k"),
        ("PATH", "/bin"),
    ];

    #[test]
    fn defaults_apply_and_required_values_are_named() {
        let cfg = AwsConfig::from_lookup(lookup(BASE)).unwrap();
        assert_eq!(cfg.lease_ttl, Duration::from_secs(60));
        assert_eq!(cfg.queue_max_age, Duration::from_secs(7 * 86_400));
        assert_eq!(cfg.queue_groups_per_org, 10);
        assert_eq!(cfg.child_path, "/bin");
        assert!(!cfg.allow_local_repos);
        assert_eq!(cfg.sandbox.mode, SandboxMode::BestEffort);
        let err = AwsConfig::from_lookup(lookup(&[("TARMAC_TABLE", "t")]))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "TARMAC_QUEUE_URL must be set");
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        for (k, v, want) in [
            (
                "TARMAC_LEASE_SECS",
                "soon",
                "TARMAC_LEASE_SECS must be a positive number",
            ),
            ("TARMAC_LEASE_SECS", "1", "at least 3"),
            (
                "TARMAC_QUEUE_GROUPS_PER_ORG",
                "0",
                "TARMAC_QUEUE_GROUPS_PER_ORG must be a number from 1 to 1000, not '0'",
            ),
            (
                "TARMAC_QUEUE_GROUPS_PER_ORG",
                "1001",
                "TARMAC_QUEUE_GROUPS_PER_ORG must be a number from 1 to 1000",
            ),
            (
                "TARMAC_BOOTSTRAP_SHA256",
                "secret",
                "TARMAC_BOOTSTRAP_SHA256 must be a SHA-256",
            ),
            (
                "TARMAC_ALLOW_LOCAL_REPOS",
                "yes",
                "TARMAC_ALLOW_LOCAL_REPOS must be true or false",
            ),
            (
                "TARMAC_SANDBOX",
                "maybe",
                "TARMAC_SANDBOX: the sandbox mode must be required, best-effort or off",
            ),
        ] {
            let mut pairs = BASE.to_vec();
            pairs.push((k, v));
            let err = AwsConfig::from_lookup(lookup(&pairs))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
