//! Secret references end to end: a real `tarmac serve` reads Secrets Manager and Parameter
//! Store on the AWS emulator with the credentials of the stack's OIDC role, masks the values,
//! and keeps them out of its store.
//!
//! The emulator keeps one set of resources per account, and an assumed role's session acts in
//! the role's account. The tenant's secrets are in the role's account (111122223333); the
//! server's own credentials act in another (123456789012). So a run that read with the server's
//! credentials would not find them.

use std::path::Path;

use serde_json::{Value, json};

use crate::support::{TestApp, TestRepo, stack};

const TENANT: &str = "111122223333";
/// The account the server's own credentials act in (`MINISTACK_ACCOUNT_ID`).
const PLATFORM: &str = "123456789012";

/// An SDK configuration acting in `account` on the emulator.
async fn in_account(account: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_sdk_ssm::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ssm::config::Credentials::new(
            account, "test", None, None, "test",
        ))
        .load()
        .await
}

async fn put_secret(account: &str, name: &str, value: &str) {
    aws_sdk_secretsmanager::Client::new(&in_account(account).await)
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .unwrap();
}

async fn put_parameter(account: &str, name: &str, value: &str) {
    aws_sdk_ssm::Client::new(&in_account(account).await)
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
}

fn oidc_role() -> Value {
    json!({"aws": {"roleArn": format!("arn:aws:iam::{TENANT}:role/secrets-reader"), "sessionName": "tarmac-secrets"}})
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

fn step_names(d: &Value) -> Vec<String> {
    d["jobs"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn references_are_read_with_the_stacks_oidc_role_masked_and_never_stored() {
    require!(Tools, Emulator);
    let out = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_with(&["--sandbox-rw", &out.path().display().to_string()]).await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (password, api_token) = (format!("pw-{tag}"), format!("ssm-{tag}"));
    let secret_name = format!("tarmac-test/db-{tag}");
    let parameter = format!("/tarmac-test/{tag}/api-token");
    put_secret(
        TENANT,
        &secret_name,
        &json!({"user": "admin", "password": password}).to_string(),
    )
    .await;
    put_parameter(TENANT, &parameter, &api_token).await;
    // The same name in the server's account holds something else.
    put_parameter(PLATFORM, &parameter, "the-platforms-own").await;

    let repo = TestRepo::new();
    let s = stack("secret-refs");
    let mut settings = repo.settings();
    settings["operationContext"] = json!({
        "oidc": oidc_role(),
        "environmentVariables": {
            "AWS_REGION": "us-east-1",
            "DB_PASSWORD": {"fromSecretsManager": {"secretId": secret_name, "jsonKey": "password"}},
            "API_TOKEN": {"fromParameterStore": {"name": parameter, "withDecryption": true}},
        },
        "preRunCommands": [format!(
            "printf '%s' \"$DB_PASSWORD\" > {0}/db; printf '%s' \"$API_TOKEN\" > {0}/api; echo \"db=$DB_PASSWORD api=$API_TOKEN\"",
            out.path().display()
        )],
    });
    let path = format!("/api/stacks/{s}/deployments/settings");
    let (status, v) = app.post(&path, settings).await;
    assert_eq!(status, 200, "{v}");
    // The settings keep the references, not values.
    let (_, stored) = app.get(&path).await;
    assert_eq!(
        stored["operationContext"]["environmentVariables"]["DB_PASSWORD"],
        json!({"fromSecretsManager": {"secretId": secret_name, "jsonKey": "password"}})
    );

    let id = app.deploy(&s, json!({"operation": "update"})).await;
    let d = app.wait_for(&s, &id, Some("succeeded")).await;
    let log = app.log_text(&s, &id).await;
    assert_eq!(
        step_names(&d)[..3],
        [
            "Get source",
            "Fetch provider credentials via OIDC",
            "Resolve secrets"
        ],
        "{log}"
    );
    // The values reached the run...
    assert_eq!(
        std::fs::read_to_string(out.path().join("db")).unwrap(),
        password
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("api")).unwrap(),
        api_token
    );
    // ...masked in its log, named by their references.
    assert!(log.contains("db=[secret] api=[secret]"), "{log}");
    assert!(
        log.contains(&format!(
            "DB_PASSWORD: Secrets Manager secret '{secret_name}' key 'password'"
        )),
        "{log}"
    );
    // Never returned, and nowhere in the server's files.
    let (_, shown) = app.get(&format!("/api/stacks/{s}/deployments/{id}")).await;
    for value in [&password, &api_token] {
        assert!(!log.contains(value.as_str()), "{value} leaked into the log");
        assert!(!shown.to_string().contains(value.as_str()));
        assert_eq!(files_holding(app.data(), value), Vec::<String>::new());
    }

    // Bad references are refused when written, and change nothing.
    for (bad, says) in [
        (json!({"fromSecretsManager": {}}), "secretId is required"),
        (
            json!({"fromParameterStore": {"name": "/a", "withDecryption": "yes"}}),
            "true or false",
        ),
        (
            json!({"fromVault": {"address": "https://vault:8200", "path": "kv/data/a", "key": "k"}}),
            "auth is required",
        ),
    ] {
        let (status, v) = app
            .post(
                &path,
                json!({"operationContext": {"environmentVariables": {"X": bad}}}),
            )
            .await;
        assert_eq!(status, 400, "{v}");
        assert!(v["message"].as_str().unwrap().contains(says), "{v}");
    }
    let (_, after) = app.get(&path).await;
    assert_eq!(after["version"], stored["version"]);
}

#[tokio::test]
async fn a_missing_secret_fails_the_run_and_no_role_is_refused_unless_the_operator_allows_it() {
    require!(Tools, Emulator);
    let out = tempfile::tempdir().unwrap();
    let mut app = TestApp::spawn_with(&["--sandbox-rw", &out.path().display().to_string()]).await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let repo = TestRepo::new();

    // A secret that does not exist: the run fails, naming it.
    let missing = stack("secret-missing");
    let mut settings = repo.settings();
    settings["operationContext"] = json!({
        "oidc": oidc_role(),
        "environmentVariables": {"DB": {"fromSecretsManager": {"secretId": format!("absent-{tag}")}}},
    });
    let (status, v) = app
        .post(
            &format!("/api/stacks/{missing}/deployments/settings"),
            settings,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = app.deploy(&missing, json!({"operation": "update"})).await;
    app.wait_for(&missing, &id, Some("failed")).await;
    let log = app.log_text(&missing, &id).await;
    assert!(
        log.contains(&format!(
            "DB: could not read Secrets Manager secret 'absent-{tag}': ResourceNotFoundException"
        )),
        "{log}"
    );
    assert!(log.contains("Step 'Resolve secrets' failed."), "{log}");

    // No OIDC role: refused, though the server's own credentials could read it.
    let parameter = format!("/tarmac-test/{tag}/platform-only");
    let platform_value = format!("platform-{tag}");
    put_parameter(PLATFORM, &parameter, &platform_value).await;
    let no_role = stack("secret-no-role");
    let mut settings = repo.settings();
    settings["operationContext"] = json!({
        "environmentVariables": {"P": {"fromParameterStore": {"name": parameter}}},
        "preRunCommands": [format!("printf '%s' \"$P\" > {}/p", out.path().display())],
    });
    let (status, v) = app
        .post(
            &format!("/api/stacks/{no_role}/deployments/settings"),
            settings,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = app.deploy(&no_role, json!({"operation": "update"})).await;
    app.wait_for(&no_role, &id, Some("failed")).await;
    let log = app.log_text(&no_role, &id).await;
    assert!(
        log.contains("the stack has no AWS role to read it with"),
        "{log}"
    );
    assert!(!out.path().join("p").exists());

    // The operator's opt-in: the server's credentials read it.
    app.restart_with(&["--secrets-with-server-credentials"]);
    let id = app.deploy(&no_role, json!({"operation": "update"})).await;
    app.wait_for(&no_role, &id, Some("succeeded")).await;
    assert_eq!(
        std::fs::read_to_string(out.path().join("p")).unwrap(),
        platform_value
    );
    assert!(!app.log_text(&no_role, &id).await.contains(&platform_value));
}
