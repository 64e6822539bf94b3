//! Deployment settings: the wire schema, input normalisation, merging and rendering.
//!
//! Clients disagree on key spelling (`repoUrl`, `repoURL`, `Git`) and on how secrets are sent
//! (reference §2.4, §3.1). Every body is first canonicalised against one schema: keys are matched
//! case-insensitively and renamed to their canonical spelling, unknown keys are dropped, types
//! are checked, and every secret is sealed. Everything after that works on canonical JSON.
//! Stored settings hold secrets only as `{"secret": <sealed>}`.

use serde_json::{Map, Value};

use crate::crypto::OrgCipher;
use crate::error::{Error, Result};
use crate::json::member;

/// The type of a value in the settings schema.
#[derive(Debug)]
pub(crate) enum Shape {
    Str,
    Bool,
    Int,
    StrList,
    /// A `SecretValue`: every form it arrives in is sealed.
    Secret,
    /// An environment variable: a bare string is plain, an object is a `SecretValue` or a
    /// reference to a secret store (`fromSecretsManager`, `fromParameterStore`, `fromVault`).
    EnvValue,
    /// A map whose keys are kept verbatim (environment variable names).
    EnvMap,
    /// `executorImage`: a bare string (Go clients) or `{reference, credentials}`.
    Image,
    Obj(&'static [(&'static str, Shape)]),
    /// Accepted by Pulumi but not by Tarmac; a non-null value is refused with this reason.
    Unsupported(&'static str),
}

use Shape::*;

const GIT_AUTH: Shape = Obj(&[
    ("accessToken", Secret),
    (
        "sshAuth",
        Obj(&[("sshPrivateKey", Secret), ("password", Secret)]),
    ),
    (
        "basicAuth",
        Obj(&[("userName", Secret), ("password", Secret)]),
    ),
]);

const VCS_FIELDS: &[(&str, Shape)] = &[
    ("provider", Str),
    ("repository", Str),
    ("deployCommits", Bool),
    ("deployTags", Bool),
    ("paths", StrList),
    ("tagFilters", StrList),
    ("installationId", Str),
    ("pullRequestTemplate", Bool),
    ("previewPullRequests", Bool),
    ("deployPullRequest", Int),
    ("reviewStackLabels", StrList),
];

/// `DeploymentSettingsRequest`, plus Tarmac's extensions, which Pulumi clients ignore:
/// `operationContext.options` `timeout` (seconds) and `engine`, `approvals` and `gitSync`.
pub(crate) const SETTINGS: Shape = Obj(&[
    ("tag", Str),
    ("agentPoolID", Str),
    (
        "approvals",
        Obj(&[
            ("operations", StrList),
            ("required", Int),
            ("approvers", StrList),
            ("expiresAfter", Int),
        ]),
    ),
    (
        "executorContext",
        Obj(&[
            ("executorImage", Image),
            ("executorRootPath", Str),
            ("workingDirectory", Str),
        ]),
    ),
    (
        "sourceContext",
        Obj(&[
            (
                "git",
                Obj(&[
                    ("repoUrl", Str),
                    ("branch", Str),
                    ("repoDir", Str),
                    ("commit", Str),
                    ("tag", Str),
                    ("gitAuth", GIT_AUTH),
                ]),
            ),
            (
                "hg",
                Unsupported("Mercurial sources are not supported; use sourceContext.git"),
            ),
            (
                "template",
                Unsupported("template sources are not supported; use sourceContext.git"),
            ),
        ]),
    ),
    ("gitHub", Obj(VCS_FIELDS)),
    ("vcs", Obj(VCS_FIELDS)),
    (
        "operationContext",
        Obj(&[
            (
                "oidc",
                Obj(&[
                    (
                        "aws",
                        Obj(&[
                            ("duration", Str),
                            ("policyArns", StrList),
                            ("roleArn", Str),
                            ("sessionName", Str),
                        ]),
                    ),
                    (
                        "azure",
                        Obj(&[
                            ("clientId", Str),
                            ("tenantId", Str),
                            ("subscriptionId", Str),
                        ]),
                    ),
                    (
                        "gcp",
                        Obj(&[
                            ("projectId", Str),
                            ("region", Str),
                            ("workloadPoolId", Str),
                            ("providerId", Str),
                            ("serviceAccount", Str),
                            ("tokenLifetime", Str),
                        ]),
                    ),
                    // Tarmac's token options (see `oidc::token`).
                    ("audience", Str),
                    ("subjectTemplate", Str),
                    ("tokenExpiration", Str),
                    ("readScope", Bool),
                ]),
            ),
            ("preRunCommands", StrList),
            ("operation", Str),
            ("environmentVariables", EnvMap),
            (
                "options",
                Obj(&[
                    ("skipInstallDependencies", Bool),
                    ("skipIntermediateDeployments", Bool),
                    ("shell", Str),
                    ("deleteAfterDestroy", Bool),
                    ("remediateIfDriftDetected", Bool),
                    ("timeout", Int),
                    ("engine", Str),
                ]),
            ),
            (
                "role",
                Obj(&[("id", Str), ("name", Str), ("defaultIdentifier", Str)]),
            ),
        ]),
    ),
    ("cacheOptions", Obj(&[("enable", Bool)])),
    (
        "gitSync",
        Obj(&[
            ("enabled", Bool),
            ("interval", Int),
            ("paths", StrList),
            ("operation", Str),
        ]),
    ),
]);

/// Canonicalises a settings body, which must be an object. `null` members are kept: the caller
/// decides what they mean.
pub(crate) fn canonicalize(value: &Value, cipher: &OrgCipher<'_>) -> Result<Value> {
    // Not even a `null` body: as a patch it would replace all the settings with `null`.
    if !value.is_object() {
        return Err(type_error("the request body", "an object"));
    }
    walk(value, &SETTINGS, "", cipher)
}

fn type_error(path: &str, expected: &str) -> Error {
    Error::invalid(format!("{path} must be {expected}"))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn walk(value: &Value, shape: &Shape, path: &str, cipher: &OrgCipher<'_>) -> Result<Value> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    let path_or_body = if path.is_empty() {
        "the request body"
    } else {
        path
    };
    Ok(match shape {
        Str => match value {
            Value::String(_) => value.clone(),
            _ => return Err(type_error(path_or_body, "a string")),
        },
        Bool => match value {
            Value::Bool(_) => value.clone(),
            _ => return Err(type_error(path_or_body, "true or false")),
        },
        Int => match value.as_i64() {
            Some(_) => value.clone(),
            None => return Err(type_error(path_or_body, "an integer")),
        },
        StrList => match value {
            Value::Array(items) if items.iter().all(Value::is_string) => value.clone(),
            _ => return Err(type_error(path_or_body, "an array of strings")),
        },
        Secret => seal_secret(value, path_or_body, cipher)?,
        EnvValue => match value {
            Value::String(_) => value.clone(),
            // Read at run time, never stored: see `domain::spec::secrets`.
            Value::Object(_) if crate::domain::spec::secrets::is_reference(value) => {
                crate::domain::spec::secrets::canonical(value, path_or_body)?
            }
            Value::Object(_) => seal_secret(value, path_or_body, cipher)?,
            _ => {
                return Err(type_error(
                    path_or_body,
                    "a string, a secret object or a secret reference",
                ));
            }
        },
        EnvMap => {
            let Value::Object(map) = value else {
                return Err(type_error(path_or_body, "an object"));
            };
            let mut out = Map::new();
            for (name, v) in map {
                validate_env_name(name)?;
                out.insert(name.clone(), walk(v, &EnvValue, &join(path, name), cipher)?);
            }
            Value::Object(out)
        }
        Image => match value {
            Value::String(s) => serde_json::json!({ "reference": s }),
            Value::Object(_) => walk(
                value,
                &Obj(&[
                    ("reference", Str),
                    (
                        "credentials",
                        Obj(&[("username", Str), ("password", Secret)]),
                    ),
                ]),
                path,
                cipher,
            )?,
            _ => return Err(type_error(path_or_body, "a string or an object")),
        },
        Obj(fields) => {
            let Value::Object(map) = value else {
                return Err(type_error(path_or_body, "an object"));
            };
            let mut out = Map::new();
            for (key, v) in map {
                // Unknown keys are ignored, as Pulumi's own clients and server do.
                if let Some((canonical, field)) = fields
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(key))
                {
                    let child = walk(v, field, &join(path, canonical), cipher)?;
                    // Two spellings of one key in one body: the non-null one wins.
                    if !(child.is_null() && out.contains_key(*canonical)) {
                        out.insert((*canonical).to_string(), child);
                    }
                }
            }
            Value::Object(out)
        }
        Unsupported(reason) => return Err(Error::invalid(*reason)),
    })
}

fn validate_env_name(name: &str) -> Result<()> {
    let mut bytes = name.bytes();
    let ok = matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid environment variable name '{name}': use letters, digits and '_', not starting with a digit"
        )))
    }
}

/// Turns any `SecretValue` form into `{"secret": <sealed>}`.
fn seal_secret(value: &Value, path: &str, cipher: &OrgCipher<'_>) -> Result<Value> {
    let sealed = match value {
        Value::String(s) => seal_unless_sealed(s, cipher, path)?,
        Value::Object(_) => {
            let member = |name: &str| member(value, name);
            if let Some(v) = member("secret") {
                let s = v
                    .as_str()
                    .ok_or_else(|| type_error(&format!("{path}.secret"), "a string"))?;
                seal_unless_sealed(s, cipher, path)?
            } else if let Some(v) = member("ciphertext") {
                let s = v
                    .as_str()
                    .ok_or_else(|| type_error(&format!("{path}.ciphertext"), "a string"))?;
                if !cipher.is_sealed(s) {
                    return Err(Error::invalid(format!(
                        "{path}.ciphertext was not encrypted by this server; send the value as {{\"secret\": \"...\"}}"
                    )));
                }
                s.to_string()
            } else if let Some(v) = member("plaintext") {
                let s = v
                    .as_str()
                    .ok_or_else(|| type_error(&format!("{path}.plaintext"), "a string"))?;
                cipher.seal(s)
            } else {
                return Err(Error::invalid(format!(
                    "{path} must have a non-null 'secret', 'ciphertext' or 'plaintext'"
                )));
            }
        }
        _ => return Err(type_error(path, "a string or a secret object")),
    };
    Ok(serde_json::json!({ "secret": sealed }))
}

fn seal_unless_sealed(s: &str, cipher: &OrgCipher<'_>, path: &str) -> Result<String> {
    // Clients send back the `{"secret": <ciphertext>}` they read (reference §3.1).
    if cipher.is_sealed(s) {
        Ok(s.to_string())
    } else if crate::crypto::looks_sealed(s) {
        Err(Error::invalid(format!(
            "{path} holds a value encrypted for another organization or by another server; send the plaintext instead"
        )))
    } else {
        Ok(cipher.seal(s))
    }
}

/// How `null` in a patch is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nulls {
    /// `POST settings`: `null` deletes the key.
    Delete,
    /// Create-deployment inheritance: `null` is "unset", as the Python SDK sends every unset
    /// field as `null` and would otherwise wipe the stack's source (reference §5.2); and so are
    /// `""`, `[]` and `{}`, which the Pulumi CLI sends on every run (`operation: ""`,
    /// `preRunCommands: []`, `environmentVariables: {}`) and which would otherwise wipe the
    /// stack's pre-run commands and variables.
    Ignore,
}

/// Whether a patch value says nothing: `null`, `""`, `[]` or `{}`.
fn says_nothing(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Whether a settings object is one value, which a patch replaces whole: a secret
/// (`{"secret": <sealed>}`) or a secret reference. Merged key by key, an environment variable
/// changed from one to the other would hold both, and a reference would keep the old one's
/// optional fields (its `jsonKey`, its `region`).
fn is_one_value(v: &Value) -> bool {
    let secret = v
        .as_object()
        .is_some_and(|m| m.len() == 1 && m.contains_key("secret"));
    secret || crate::domain::spec::secrets::is_reference(v)
}

/// Pulumi's merge: objects merge key by key, anything else (arrays included) is replaced, and so
/// is a secret or a secret reference.
pub(crate) fn merge(current: &Value, patch: &Value, nulls: Nulls) -> Value {
    match (current, patch) {
        (Value::Object(cur), Value::Object(p)) => {
            let mut out = cur.clone();
            for (k, v) in p {
                if v.is_null() {
                    if nulls == Nulls::Delete {
                        out.remove(k);
                    }
                    continue;
                }
                if nulls == Nulls::Ignore && says_nothing(v) {
                    continue;
                }
                let merged = match out.get(k) {
                    Some(existing)
                        if existing.is_object()
                            && v.is_object()
                            && !is_one_value(existing)
                            && !is_one_value(v) =>
                    {
                        merge(existing, v, nulls)
                    }
                    _ => strip_nulls(v),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (_, p) => strip_nulls(p),
    }
}

/// Removes `null` members at every depth (`PUT` semantics: null means absent).
pub(crate) fn strip_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Renders stored settings for a response: each secret as `{"secret", "ciphertext"}` (both the
/// sealed value, which is base64), never plaintext; plain environment variables as bare strings.
pub(crate) fn render(stored: &Value) -> Value {
    match stored {
        Value::Object(map) => {
            if map.len() == 1
                && let Some(Value::String(sealed)) = map.get("secret")
            {
                return serde_json::json!({ "secret": sealed, "ciphertext": sealed });
            }
            Value::Object(map.iter().map(|(k, v)| (k.clone(), render(v))).collect())
        }
        other => other.clone(),
    }
}

/// Splits a create-deployment body into `(operation, inheritSettings, settings part)`. The
/// operation is the top-level one, else `operationContext.operation` (where Pulumi's first API
/// and the REST drivers in its docs put it); an empty one counts as absent.
pub(crate) fn split_create_request(
    body: &Value,
    inherit_by_default: bool,
) -> Result<(Option<String>, bool, Value)> {
    let Value::Object(map) = body else {
        return Err(Error::invalid("the request body must be a JSON object"));
    };
    let mut operation = None;
    let mut inherit = inherit_by_default;
    let mut rest = Map::new();
    for (k, v) in map {
        if k.eq_ignore_ascii_case("operation") {
            match v {
                Value::Null => {}
                Value::String(s) => operation = Some(s.clone()),
                _ => return Err(type_error("operation", "a string")),
            }
        } else if k.eq_ignore_ascii_case("inheritSettings") {
            match v {
                Value::Null => {}
                Value::Bool(b) => inherit = *b,
                _ => return Err(type_error("inheritSettings", "true or false")),
            }
        } else {
            rest.insert(k.clone(), v.clone());
        }
    }
    let operation = operation.filter(|o| !o.is_empty()).or_else(|| {
        member(&Value::Object(rest.clone()), "operationContext")
            .and_then(|c| member(c, "operation"))
            .and_then(Value::as_str)
            .filter(|o| !o.is_empty())
            .map(str::to_string)
    });
    Ok((operation, inherit, Value::Object(rest)))
}

/// Stored settings (and a deployment's effective settings) stay well inside every backend's
/// limits (DynamoDB items are at most 400 KB).
pub(crate) const MAX_SETTINGS_BYTES: usize = 256 * 1024;

/// Refuses settings that cannot be stored: too large, or with options no run could use.
pub(crate) fn check_stored(settings: &Value) -> Result<()> {
    check_size(settings)?;
    crate::domain::spec::check_settings(settings)?;
    // A stack's own setting: a deployment pins its commit whatever `gitSync` says.
    crate::domain::gitsync::GitSync::from_settings(settings).map(|_| ())
}

/// Refuses settings too large to store.
pub(crate) fn check_size(settings: &Value) -> Result<()> {
    let len = serde_json::to_vec(settings)?.len();
    if len > MAX_SETTINGS_BYTES {
        return Err(Error::invalid(format!(
            "the deployment settings are too large: {len} bytes, at most {MAX_SETTINGS_BYTES}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cipher() -> crate::crypto::Cipher {
        crate::crypto::Cipher::from_key(&[1; 32])
    }

    #[test]
    fn keys_match_case_insensitively_and_unknown_keys_drop() {
        let key = cipher();
        let c = key.for_org("o");
        let v = canonicalize(
            &json!({"sourceContext": {"Git": {"repoURL": "https://x/y.git", "Branch": "main", "bogus": 1}}, "extra": true}),
            &c,
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"sourceContext": {"git": {"repoUrl": "https://x/y.git", "branch": "main"}}})
        );
    }

    #[test]
    fn every_secret_form_is_sealed_and_plain_strings_stay_plain() {
        let key = cipher();
        let c = key.for_org("o");
        let sealed = c.seal("issued");
        let v = canonicalize(
            &json!({"operationContext": {"environmentVariables": {
                "PLAIN": "us-west-2",
                "SDK": {"plaintext": null, "secret": "s3cr3t", "ciphertext": null},
                "GO": {"secret": "hunter2"},
                "BACK": {"secret": sealed},
                "PROVIDER": {"ciphertext": sealed},
                "PT": {"plaintext": "pt"},
            }}}),
            &c,
        )
        .unwrap();
        let env = &v["operationContext"]["environmentVariables"];
        assert_eq!(env["PLAIN"], "us-west-2");
        let open = |k: &str| c.open(env[k]["secret"].as_str().unwrap()).unwrap();
        assert_eq!(open("SDK"), "s3cr3t");
        assert_eq!(open("GO"), "hunter2");
        assert_eq!(open("BACK"), "issued");
        assert_eq!(open("PROVIDER"), "issued");
        assert_eq!(open("PT"), "pt");
        assert!(!v.to_string().contains("s3cr3t"));
    }

    #[test]
    fn bad_inputs_are_refused_with_their_path() {
        let key = cipher();
        let c = key.for_org("o");
        let cases = [
            (
                json!({"operationContext": {"preRunCommands": "echo"}}),
                "operationContext.preRunCommands must be an array of strings",
            ),
            (
                json!({"operationContext": {"environmentVariables": {"1X": "a"}}}),
                "invalid environment variable name '1X'",
            ),
            (
                json!({"operationContext": {"environmentVariables": {"X": {"ciphertext": "Zm9v"}}}}),
                "was not encrypted by this server",
            ),
            (
                json!({"operationContext": {"environmentVariables": {"X": {"secret": null}}}}),
                "must have a non-null",
            ),
            (
                json!({"sourceContext": {"template": {"sourceUrl": "x"}}}),
                "template sources are not supported",
            ),
            (json!([1]), "the request body must be an object"),
            (json!(null), "the request body must be an object"),
        ];
        for (body, want) in cases {
            let err = canonicalize(&body, &c).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
        // A value sealed for another org is refused, not taken for a password.
        let foreign = key.for_org("someone-else").seal("their-secret");
        for body in [
            json!({"operationContext": {"environmentVariables": {"X": {"secret": foreign}}}}),
            json!({"sourceContext": {"git": {"gitAuth": {"accessToken": foreign}}}}),
            json!({"operationContext": {"environmentVariables": {"X": {"ciphertext": foreign}}}}),
        ] {
            let err = canonicalize(&body, &c).unwrap_err().to_string();
            assert!(
                err.contains("another organization")
                    || err.contains("not encrypted by this server"),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn merge_follows_the_documented_example() {
        let current = json!({"sourceContext":{"git":{"repoUrl":"u","branch":"refs/heads/demo","repoDir":"d"}},
            "operationContext":{"preRunCommands":["echo \"hello world\""],"environmentVariables":{"AWS_REGION":"us-west-2","A":"1","B":"2"}}});
        let patch = json!({"sourceContext":{"git":{"repoUrl":null}},
            "operationContext":{"preRunCommands":["echo \"bonjour\""],"environmentVariables":{"A":null,"B":null},
              "oidc":{"aws":{"roleArn":"r","sessionName":"s"}}},
            "gitHub":{"repository":"pulumi/deploy-demos"}});
        let merged = merge(&current, &patch, Nulls::Delete);
        assert_eq!(
            merged,
            json!({"sourceContext":{"git":{"branch":"refs/heads/demo","repoDir":"d"}},
            "operationContext":{"preRunCommands":["echo \"bonjour\""],"environmentVariables":{"AWS_REGION":"us-west-2"},
              "oidc":{"aws":{"roleArn":"r","sessionName":"s"}}},
            "gitHub":{"repository":"pulumi/deploy-demos"}})
        );
        let kept = merge(
            &current,
            &json!({"sourceContext": null, "tag": "t"}),
            Nulls::Ignore,
        );
        assert_eq!(kept["sourceContext"], current["sourceContext"]);
        assert_eq!(kept["tag"], "t");
    }

    #[test]
    fn a_patch_replaces_a_secret_or_a_reference_whole() {
        let key = cipher();
        let c = key.for_org("o");
        let env = |vars: Value| json!({"operationContext": {"environmentVariables": vars}});
        let stored = env(json!({
            "A": {"secret": c.seal("a")},
            "B": {"fromSecretsManager": {"secretId": "s", "jsonKey": "k"}},
            "C": {"fromParameterStore": {"name": "/p"}},
        }));
        let patch = env(json!({
            "A": {"fromParameterStore": {"name": "/p"}},
            "B": {"fromSecretsManager": {"secretId": "t"}},
            "C": {"secret": c.seal("c")},
        }));
        for nulls in [Nulls::Delete, Nulls::Ignore] {
            let merged = merge(&stored, &patch, nulls);
            assert_eq!(merged, patch);
            // What is stored reads back as it is.
            assert_eq!(canonicalize(&merged, &c).unwrap(), merged);
        }
    }

    #[test]
    fn render_never_shows_plaintext() {
        let key = cipher();
        let c = key.for_org("o");
        let stored = canonicalize(
            &json!({"operationContext":{"environmentVariables":{"S":{"secret":"pw"},"P":"x"}}}),
            &c,
        )
        .unwrap();
        let out = render(&stored);
        let s = &out["operationContext"]["environmentVariables"]["S"];
        assert_eq!(s["secret"], s["ciphertext"]);
        assert_eq!(out["operationContext"]["environmentVariables"]["P"], "x");
        assert!(!out.to_string().contains("\"pw\""));
    }
}
