//! Deployment settings: canonicalising, merging and storing them.
//!
//! Invariants (from `shared/src/settings.rs`):
//! - canonicalising any JSON body returns, never panics;
//! - a canonical body is a fixed point: canonicalising it again gives it back unchanged (clients
//!   send back what they read);
//! - in canonical settings every secret is `{"secret": <sealed for the org>}` (an environment
//!   variable may also be a plain string or a secret reference): nothing in plaintext;
//! - merging a canonical patch into canonical stored settings (`POST settings`, and a
//!   create-deployment request's inheritance) gives canonical settings, with no null, and
//!   applying the same patch twice changes nothing more;
//! - what may be stored is checked, and read as a run spec, without a panic.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tarmac::crypto::{Cipher, OrgCipher};
use tarmac::domain::spec::{RunSpec, SourcePolicy};
use tarmac::fuzzing;

/// The schema's keys and those of the values it holds, so generated bodies reach every branch.
const KEYS: &[&str] = &[
    "tag",
    "agentPoolID",
    "approvals",
    "operations",
    "required",
    "approvers",
    "expiresAfter",
    "executorContext",
    "executorImage",
    "reference",
    "credentials",
    "username",
    "password",
    "executorRootPath",
    "workingDirectory",
    "sourceContext",
    "git",
    "repoUrl",
    "branch",
    "repoDir",
    "commit",
    "gitAuth",
    "accessToken",
    "sshAuth",
    "sshPrivateKey",
    "basicAuth",
    "userName",
    "hg",
    "template",
    "gitHub",
    "vcs",
    "provider",
    "repository",
    "deployCommits",
    "paths",
    "tagFilters",
    "operationContext",
    "oidc",
    "aws",
    "roleArn",
    "duration",
    "sessionName",
    "policyArns",
    "audience",
    "subjectTemplate",
    "preRunCommands",
    "operation",
    "environmentVariables",
    "options",
    "timeout",
    "engine",
    "shell",
    "deleteAfterDestroy",
    "cacheOptions",
    "enable",
    "gitSync",
    "enabled",
    "interval",
    "secret",
    "ciphertext",
    "plaintext",
    "fromSecretsManager",
    "secretId",
    "jsonKey",
    "region",
    "fromParameterStore",
    "name",
    "withDecryption",
    "fromVault",
    "address",
    "path",
    "key",
    "namespace",
    "auth",
    "jwt",
    "role",
    "mount",
    "AWS_REGION",
    "TOKEN",
    "_x",
    "1X",
];

const STRINGS: &[&str] = &[
    "",
    "hunter2",
    "https://github.com/o/r.git",
    "git@github.com:o/r.git",
    "main",
    "infra/dev",
    "../x",
    "update",
    "preview",
    "tofu",
    "arn:aws:iam::123456789012:role/r",
    "https://vault.example.com:8200",
    "kv/data/app",
    "jwt",
    "/path/to/param",
    "0123456789abcdef0123456789abcdef01234567",
    "**/*.tf",
    "[",
];

/// Whole values of the schema, for the fuzzer to build bodies from.
const FRAGMENTS: &[&str] = &[
    r#"{"secret": "hunter2"}"#,
    r#"{"plaintext": "pt"}"#,
    r#"{"fromSecretsManager": {"secretId": "arn:aws:secretsmanager:us-east-1:1:secret:s", "jsonKey": "k"}}"#,
    r#"{"fromSecretsManager": {"secretId": "s"}}"#,
    r#"{"fromParameterStore": {"name": "/p", "withDecryption": false}}"#,
    r#"{"fromVault": {"address": "https://vault.example.com:8200", "path": "kv/data/app", "key": "k", "auth": {"jwt": {"role": "r"}}}}"#,
    r#"{"environmentVariables": {"TOKEN": {"secret": "x"}, "AWS_REGION": "us-east-1"}}"#,
    r#"{"operationContext": {"environmentVariables": {"TOKEN": {"fromParameterStore": {"name": "/p"}}}}}"#,
    r#"{"operationContext": {"environmentVariables": {"TOKEN": {"secret": "x"}}}}"#,
    r#"{"operationContext": {"preRunCommands": ["make"], "options": {"timeout": 60, "engine": "tofu"}}}"#,
    r#"{"operationContext": {"oidc": {"aws": {"roleArn": "arn:aws:iam::1:role/r", "sessionName": "s"}}}}"#,
    r#"{"sourceContext": {"git": {"repoUrl": "https://github.com/o/r.git", "branch": "main", "gitAuth": {"accessToken": {"secret": "t"}}}}}"#,
    r#"{"sourceContext": {"git": {"gitAuth": {"sshAuth": {"sshPrivateKey": "k", "password": {"plaintext": "p"}}}}}}"#,
    r#"{"executorContext": {"executorImage": {"reference": "img", "credentials": {"username": "u", "password": {"secret": "pw"}}}}}"#,
    r#"{"executorContext": {"executorImage": "img"}}"#,
    r#"{"approvals": {"operations": ["update"], "required": 1}}"#,
    r#"{"gitSync": {"enabled": true, "interval": 300, "paths": ["infra/**"]}}"#,
    r#"{"gitHub": {"repository": "o/r", "paths": ["**/*.tf"]}}"#,
];

#[derive(Arbitrary, Debug)]
enum Json {
    Fragment(u8),
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Text),
    Arr(Vec<Json>),
    Obj(Vec<(Key, Json)>),
}

#[derive(Arbitrary, Debug)]
enum Key {
    /// A schema key, spelled as it is or in capitals (keys match in any case).
    Known(u8, bool),
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Text {
    Known(u8),
    /// A value sealed for the org, as clients send back what they read.
    Sealed(u8),
    /// A value sealed for another org.
    Foreign(u8),
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    body: Json,
    patch: Json,
    delete_nulls: bool,
    inherit: bool,
}

/// Deep enough for every path of the schema.
const MAX_DEPTH: usize = 8;

fn value(j: &Json, depth: usize, c: &OrgCipher<'_>, other: &OrgCipher<'_>) -> Value {
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    let pick = |i: &u8, from: &[&str]| from[usize::from(*i) % from.len()].to_string();
    match j {
        Json::Fragment(i) => serde_json::from_str(FRAGMENTS[usize::from(*i) % FRAGMENTS.len()])
            .expect("a fragment is JSON"),
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Int(i) => Value::from(*i),
        Json::Float(f) => Value::from(*f),
        Json::Str(Text::Known(i)) => Value::String(pick(i, STRINGS)),
        Json::Str(Text::Sealed(i)) => Value::String(c.seal(&pick(i, STRINGS))),
        Json::Str(Text::Foreign(i)) => Value::String(other.seal(&pick(i, STRINGS))),
        Json::Str(Text::Other(s)) => Value::String(s.clone()),
        Json::Arr(items) => items
            .iter()
            .map(|i| value(i, depth + 1, c, other))
            .collect(),
        Json::Obj(members) => {
            let mut map = Map::new();
            for (k, v) in members {
                let k = match k {
                    Key::Known(i, false) => pick(i, KEYS),
                    Key::Known(i, true) => pick(i, KEYS).to_ascii_uppercase(),
                    Key::Other(s) => s.clone(),
                };
                map.insert(k, value(v, depth + 1, c, other));
            }
            Value::Object(map)
        }
    }
}

fn has_null(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(items) => items.iter().any(has_null),
        Value::Object(m) => m.values().any(has_null),
        _ => false,
    }
}

fuzz_target!(|input: Input| {
    let key = Cipher::from_key(&[7; 32]);
    let c = key.for_org("acme");
    let other = key.for_org("someone-else");
    let body = value(&input.body, 0, &c, &other);
    let patch = value(&input.patch, 0, &c, &other);

    if let Ok((_, _, rest)) = fuzzing::split_create_request(&body, input.inherit) {
        let _ = fuzzing::canonicalize_settings(&rest, &c);
    }

    let Ok(canonical) = fuzzing::canonicalize_settings(&body, &c) else {
        return;
    };
    let again = fuzzing::canonicalize_settings(&canonical, &c);
    assert_eq!(
        again.as_ref().ok(),
        Some(&canonical),
        "canonical settings must canonicalise to themselves: {again:?}"
    );
    let unsealed = fuzzing::unsealed_secrets(&canonical, &c);
    assert!(
        unsealed.is_empty(),
        "secrets not sealed at {unsealed:?}: {canonical}"
    );

    // What `PUT settings` stores.
    let stored = fuzzing::strip_nulls(&canonical);
    let _ = fuzzing::check_stored_settings(&stored);
    let _ = RunSpec::parse(&stored, SourcePolicy::Stored);
    let _ = fuzzing::render_settings(&stored);
    for delete_nulls in [true, false] {
        assert_eq!(
            fuzzing::merge_settings(&stored, &Value::Object(Map::new()), delete_nulls),
            stored
        );
        assert_eq!(
            fuzzing::merge_settings(&stored, &stored, delete_nulls),
            stored
        );
    }

    let Ok(patch) = fuzzing::canonicalize_settings(&patch, &c) else {
        return;
    };
    let merged = fuzzing::merge_settings(&stored, &patch, input.delete_nulls);
    assert!(!has_null(&merged), "merged settings hold a null: {merged}");
    let again = fuzzing::canonicalize_settings(&merged, &c);
    assert_eq!(
        again.as_ref().ok(),
        Some(&merged),
        "merged settings must be canonical: {again:?}\nstored: {stored}\npatch: {patch}"
    );
    assert_eq!(
        fuzzing::merge_settings(&merged, &patch, input.delete_nulls),
        merged,
        "a patch applied twice must change nothing more"
    );
    let _ = fuzzing::check_stored_settings(&merged);
    let _ = RunSpec::parse(&merged, SourcePolicy::Stored);
});
