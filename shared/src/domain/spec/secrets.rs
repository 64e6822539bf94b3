//! Secret references (a Tarmac extension): an environment variable whose value is read at run
//! time from AWS Secrets Manager, SSM Parameter Store or HashiCorp Vault, instead of being
//! stored in the settings.
//!
//! A reference is checked and put in canonical form when settings are written; the value is
//! read by the run's "Resolve secrets" step (`crate::runner::secrets`), masked in its log, and
//! never stored or returned.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Where an environment variable's value is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SecretRef {
    FromSecretsManager(SecretsManagerRef),
    FromParameterStore(ParameterRef),
    FromVault(VaultRef),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretsManagerRef {
    /// The secret's ARN or name.
    pub secret_id: String,
    /// A key of the secret's JSON object: its value, rather than the whole secret string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_stage: Option<String>,
    /// Where the secret is: else the ARN's region, the run's `AWS_REGION`, or the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParameterRef {
    /// The parameter's name (`/path/to/it`) or ARN.
    pub name: String,
    /// Decrypt a `SecureString` (the default).
    #[serde(default = "yes")]
    pub with_decryption: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VaultRef {
    /// Vault's base URL, `https://vault.example.com:8200`.
    pub address: String,
    /// The secret's API path under `/v1/`: `kv/data/app` (KV version 2) or `secret/app` (1).
    pub path: String,
    /// The field of the secret's data.
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub auth: VaultAuth,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VaultAuth {
    pub jwt: VaultJwt,
}

/// Vault's JWT auth method, given the deployment's own OIDC token: no Vault token is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VaultJwt {
    pub role: String,
    /// Where the method is mounted (`jwt` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
}

/// The keys that make an environment variable's object a reference.
const KINDS: [&str; 3] = ["fromSecretsManager", "fromParameterStore", "fromVault"];

/// Whether an environment variable's object is a reference (not a `SecretValue`).
pub fn is_reference(value: &Value) -> bool {
    value.as_object().is_some_and(|m| {
        m.keys()
            .any(|k| KINDS.iter().any(|kind| kind.eq_ignore_ascii_case(k)))
    })
}

/// Checks a reference written at `path` and returns its canonical JSON: keys spelled as above,
/// unknown ones dropped, the required ones present and well-formed.
pub(crate) fn canonical(value: &Value, path: &str) -> Result<Value> {
    let map = value
        .as_object()
        .ok_or_else(|| invalid(path, "an object"))?;
    let mut found = map
        .iter()
        .filter_map(|(k, v)| {
            KINDS
                .iter()
                .find(|kind| kind.eq_ignore_ascii_case(k))
                .map(|kind| (*kind, v))
        })
        .collect::<Vec<_>>();
    if found.len() != 1 || map.len() != 1 {
        return Err(Error::invalid(format!(
            "{path} must name exactly one of fromSecretsManager, fromParameterStore, fromVault, and nothing else"
        )));
    }
    let (kind, body) = found.remove(0);
    let at = format!("{path}.{kind}");
    let fields: &[(&str, Field)] = match kind {
        "fromSecretsManager" => &[
            ("secretId", Field::Required),
            ("jsonKey", Field::Optional),
            ("versionStage", Field::Optional),
            ("region", Field::Optional),
        ],
        "fromParameterStore" => &[
            ("name", Field::Required),
            ("withDecryption", Field::Bool),
            ("region", Field::Optional),
        ],
        _ => &[
            ("address", Field::Required),
            ("path", Field::Required),
            ("key", Field::Required),
            ("namespace", Field::Optional),
            ("auth", Field::Auth),
        ],
    };
    let body = pick(body, fields, &at)?;
    let mut out = Map::new();
    out.insert(kind.to_string(), body);
    let out = Value::Object(out);
    let parsed: SecretRef =
        serde_json::from_value(out.clone()).map_err(|e| Error::invalid(format!("{path}: {e}")))?;
    parsed.check(path)?;
    Ok(out)
}

#[derive(Clone, Copy)]
enum Field {
    Required,
    Optional,
    Bool,
    /// `{"jwt": {"role": ..., "mount": ...}}`.
    Auth,
}

fn invalid(path: &str, expected: &str) -> Error {
    Error::invalid(format!("{path} must be {expected}"))
}

/// The object at `path` with `fields` taken case-insensitively and checked.
fn pick(value: &Value, fields: &[(&str, Field)], path: &str) -> Result<Value> {
    let map = value
        .as_object()
        .ok_or_else(|| invalid(path, "an object"))?;
    let mut out = Map::new();
    for (name, field) in fields {
        let at = format!("{path}.{name}");
        let got = map
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .filter(|v| !v.is_null());
        let v = match (field, got) {
            (Field::Required, None) => return Err(Error::invalid(format!("{at} is required"))),
            (Field::Optional | Field::Bool, None) => continue,
            (Field::Required | Field::Optional, Some(Value::String(s))) if s.trim().is_empty() => {
                return Err(invalid(&at, "a non-empty string"));
            }
            (Field::Required | Field::Optional, Some(v @ Value::String(_))) => v.clone(),
            (Field::Required | Field::Optional, Some(_)) => return Err(invalid(&at, "a string")),
            (Field::Bool, Some(v @ Value::Bool(_))) => v.clone(),
            (Field::Bool, Some(_)) => return Err(invalid(&at, "true or false")),
            (Field::Auth, None) => {
                return Err(Error::invalid(format!(
                    "{at} is required: {{\"jwt\": {{\"role\": \"...\"}}}} (Vault's JWT auth, with the deployment's OIDC token)"
                )));
            }
            (Field::Auth, Some(v)) => {
                let jwt = v
                    .as_object()
                    .and_then(|m| m.iter().find(|(k, _)| k.eq_ignore_ascii_case("jwt")))
                    .map(|(_, v)| v)
                    .ok_or_else(|| invalid(&at, "{\"jwt\": {\"role\": \"...\"}}"))?;
                let jwt = pick(
                    jwt,
                    &[("role", Field::Required), ("mount", Field::Optional)],
                    &format!("{at}.jwt"),
                )?;
                serde_json::json!({ "jwt": jwt })
            }
        };
        out.insert((*name).to_string(), v);
    }
    Ok(Value::Object(out))
}

impl SecretRef {
    fn check(&self, path: &str) -> Result<()> {
        match self {
            SecretRef::FromSecretsManager(_) | SecretRef::FromParameterStore(_) => Ok(()),
            SecretRef::FromVault(v) => {
                let url = reqwest::Url::parse(&v.address).ok().filter(|u| {
                    matches!(u.scheme(), "https" | "http")
                        && u.host_str().is_some()
                        && u.username().is_empty()
                        && u.password().is_none()
                });
                if url.is_none() {
                    return Err(Error::invalid(format!(
                        "{path}.fromVault.address '{}' must be an http(s) URL with no credentials in it",
                        v.address
                    )));
                }
                let segment_ok = |s: &str| {
                    !s.split('/').any(|c| c.is_empty() || c == "." || c == "..")
                        && !s.contains(['?', '#', '\\'])
                };
                if !segment_ok(v.path.trim_matches('/')) {
                    return Err(Error::invalid(format!(
                        "{path}.fromVault.path '{}' must be a secret's path, like kv/data/app",
                        v.path
                    )));
                }
                if let Some(m) = &v.auth.jwt.mount
                    && !segment_ok(m.trim_matches('/'))
                {
                    return Err(Error::invalid(format!(
                        "{path}.fromVault.auth.jwt.mount '{m}' must be an auth mount path, like jwt"
                    )));
                }
                Ok(())
            }
        }
    }

    /// What the reference names, for logs and errors (never a value).
    pub fn describe(&self) -> String {
        match self {
            SecretRef::FromSecretsManager(r) => {
                let mut s = format!("Secrets Manager secret '{}'", r.secret_id);
                if let Some(k) = &r.json_key {
                    s.push_str(&format!(" key '{k}'"));
                }
                s
            }
            SecretRef::FromParameterStore(r) => format!("SSM parameter '{}'", r.name),
            SecretRef::FromVault(r) => {
                format!("Vault secret '{}' key '{}' at {}", r.path, r.key, r.address)
            }
        }
    }

    /// Whether it is read with AWS credentials.
    pub fn is_aws(&self) -> bool {
        !matches!(self, SecretRef::FromVault(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_canonical_and_checked() {
        let v = canonical(
            &json!({"FromSecretsManager": {"SecretID": "db", "jsonkey": "pw", "other": 1}}),
            "X",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"fromSecretsManager": {"secretId": "db", "jsonKey": "pw"}})
        );
        let v = canonical(&json!({"fromParameterStore": {"name": "/a/b"}}), "X").unwrap();
        let parsed: SecretRef = serde_json::from_value(v).unwrap();
        assert!(matches!(
            parsed,
            SecretRef::FromParameterStore(ParameterRef {
                with_decryption: true,
                ..
            })
        ));
        let vault = json!({"fromVault": {"address": "https://vault:8200", "path": "kv/data/app", "key": "pw", "auth": {"jwt": {"role": "deployer"}}}});
        assert_eq!(canonical(&vault, "X").unwrap(), vault);

        for (bad, says) in [
            (
                json!({"fromSecretsManager": {}}),
                "X.fromSecretsManager.secretId is required",
            ),
            (
                json!({"fromSecretsManager": {"secretId": 7}}),
                "must be a string",
            ),
            (
                json!({"fromSecretsManager": {"secretId": " "}}),
                "non-empty",
            ),
            (
                json!({"fromParameterStore": {"name": "/a", "withDecryption": "yes"}}),
                "true or false",
            ),
            (
                json!({"fromSecretsManager": {"secretId": "a"}, "fromParameterStore": {"name": "b"}}),
                "exactly one",
            ),
            (
                json!({"fromSecretsManager": {"secretId": "a"}, "secret": "x"}),
                "exactly one",
            ),
            (
                json!({"fromVault": {"address": "https://v", "path": "kv/x", "key": "k"}}),
                "auth is required",
            ),
            (
                json!({"fromVault": {"address": "file:///etc", "path": "kv/x", "key": "k", "auth": {"jwt": {"role": "r"}}}}),
                "http(s) URL",
            ),
            (
                json!({"fromVault": {"address": "https://u:p@v", "path": "kv/x", "key": "k", "auth": {"jwt": {"role": "r"}}}}),
                "no credentials",
            ),
            (
                json!({"fromVault": {"address": "https://v", "path": "kv/../sys", "key": "k", "auth": {"jwt": {"role": "r"}}}}),
                "a secret's path",
            ),
            (
                json!({"fromVault": {"address": "https://v", "path": "kv/x", "key": "k", "auth": {"jwt": {}}}}),
                "role is required",
            ),
        ] {
            let err = canonical(&bad, "X").unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
