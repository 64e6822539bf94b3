//! OIDC end to end: the issuer's public documents, a deployment's token verified by an
//! independent JWT library against the served JWKS, the exchange for AWS credentials at the
//! emulator's STS, and the run's environment.

use serde_json::{Value, json};

use crate::signing::{kid, verify};
use crate::support::{TestApp, TestRepo, stack};

/// The emulator's Python, which has boto3: the run's "AWS client".
fn emulator_python() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/test-tools/emu/bin/python"
    )
    .to_string()
}

fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").expect(
        "AWS_ENDPOINT_URL is not set: run the tests with tests/run.sh, which starts the AWS emulator",
    )
}

/// A GET without a token, as a relying party fetches the issuer's documents.
async fn anonymous_get(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn a_deployment_gets_a_verifiable_token_and_assumed_role_credentials_and_nothing_of_the_platform()
 {
    require!(Tools, Emulator);
    // The run copies its token out, to a directory the sandbox lets it write.
    let out = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_with(&["--sandbox-rw", &out.path().display().to_string()]).await;
    // The issuer's documents need no token.
    let discovery = anonymous_get(&format!(
        "{}/oidc/.well-known/openid-configuration",
        app.url
    ))
    .await;
    let issuer = format!("{}/oidc", app.url);
    assert_eq!(discovery["issuer"], issuer);
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        json!(["RS256"])
    );
    let jwks_url = discovery["jwks_uri"].as_str().unwrap().to_string();
    assert_eq!(jwks_url, format!("{issuer}/.well-known/jwks.json"));

    let repo = TestRepo::new();
    let s = stack("oidc-aws");
    let token_copy = out.path().join("token");
    let mut settings = repo.settings();
    settings["operationContext"] = json!({
        "oidc": {"aws": {
            "roleArn": "arn:aws:iam::123456789012:role/deployer",
            "sessionName": "tarmac-${stack.name}-${deployment.version}",
            "duration": "1h0m0s",
        }},
        "environmentVariables": {"AWS_ENDPOINT_URL": endpoint(), "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"},
        "preRunCommands": [
            "test -n \"$AWS_ACCESS_KEY_ID\" && test -n \"$AWS_SESSION_TOKEN\" && echo 'AWS credentials are set'",
            format!("{} -c \"import boto3; print('caller:', boto3.client('sts').get_caller_identity()['Arn'])\"", emulator_python()),
            // The test keeps what the run received, to verify it; the log shows it masked.
            format!("cp \"$PULUMI_OIDC_TOKEN_FILE\" {}; echo \"token: $PULUMI_OIDC_TOKEN\"", token_copy.display()),
            "env | sort".to_string(),
        ],
    });
    let (status, _) = app
        .post(&format!("/api/stacks/{s}/deployments/settings"), settings)
        .await;
    assert_eq!(status, 200);
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    let d = app.wait_for(&s, &id, Some("succeeded")).await;
    let log = app.log_text(&s, &id).await;

    let steps: Vec<&str> = d["jobs"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps[..2],
        ["Get source", "Fetch provider credentials via OIDC"],
        "{steps:?}"
    );
    assert!(log.contains("AWS credentials are set"), "{log}");
    assert!(
        log.contains("caller: arn:aws:sts::123456789012:assumed-role/deployer/tarmac-oidc-aws-1"),
        "the run acts as the assumed role:\n{log}"
    );

    // The token verifies against the served JWKS, with every claim in Pulumi's format.
    let token = std::fs::read_to_string(&token_copy).unwrap();
    let jwks = anonymous_get(&jwks_url).await;
    let claims = verify(token.trim(), &jwks, &issuer, "default").unwrap();
    assert_eq!(
        claims["sub"],
        "pulumi:deploy:org:default:project:proj:stack:oidc-aws:operation:update:scope:write"
    );
    assert_eq!(claims["org"], "default");
    assert_eq!(claims["project"], "proj");
    assert_eq!(claims["stack"], "oidc-aws");
    assert_eq!(claims["operation"], "update");
    assert_eq!(claims["deployment"], 1);
    assert_eq!(claims["scope"], "write");
    assert!(claims["stackId"].as_str().is_some_and(|s| s.len() == 36));
    assert!(claims["jti"].as_str().is_some_and(|s| s.len() == 36));
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 3600, "an hour by default");
    assert_eq!(claims["nbf"], claims["iat"]);
    assert!(verify(token.trim(), &jwks, &issuer, "another-org").is_err());

    // The token and the assumed credentials are in the environment, masked in the log.
    assert!(!log.contains(token.trim()), "the token leaked into the log");
    assert!(log.contains("token: [secret]"), "{log}");
    assert!(log.contains("PULUMI_OIDC_TOKEN=[secret]"), "{log}");
    assert!(log.contains("AWS_SESSION_TOKEN=[secret]"), "{log}");
    assert!(log.contains("AWS_SECRET_ACCESS_KEY=[secret]"), "{log}");
    let key_line = log
        .lines()
        .find(|l| l.starts_with("AWS_ACCESS_KEY_ID="))
        .expect("the env dump shows the access key id");
    // None of the platform's own credentials, key paths or configuration reach the run.
    for leaked in [
        "AKIAPLATFORMSECRET",
        "platform-secret-key-must-not-leak",
        "secret.key",
        "tarmac.db",
        "TARMAC_DATA_DIR",
    ] {
        assert!(
            !log.contains(leaked),
            "{leaked} leaked into the run:\n{log}"
        );
    }
    assert_ne!(key_line, "AWS_ACCESS_KEY_ID=AKIAPLATFORMSECRET");
}

#[tokio::test]
async fn a_refused_exchange_fails_the_deployment_with_the_providers_message() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("oidc-refused");
    let mut settings = repo.settings();
    // STS refuses a malformed role ARN, as AWS does.
    settings["operationContext"] = json!({
        "oidc": {"aws": {"roleArn": "not-an-arn", "sessionName": "s"}},
        "preRunCommands": ["echo should-not-run"],
    });
    app.post(&format!("/api/stacks/{s}/deployments/settings"), settings)
        .await;
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    let d = app.wait_for(&s, &id, Some("failed")).await;
    let log = app.log_text(&s, &id).await;
    assert!(
        log.contains("AWS STS refused AssumeRoleWithWebIdentity for not-an-arn"),
        "{log}"
    );
    assert!(!log.contains("should-not-run"));
    let steps = d["jobs"][0]["steps"].as_array().unwrap();
    assert_eq!(
        steps.last().unwrap()["name"],
        "Fetch provider credentials via OIDC"
    );
    assert_eq!(steps.last().unwrap()["status"], "failed");
}

#[tokio::test]
async fn bad_oidc_settings_are_refused_and_nothing_is_written() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("oidc-bad");
    let path = format!("/api/stacks/{s}/deployments/settings");
    app.post(&path, repo.settings()).await;
    let (_, before) = app.get(&path).await;
    for (oidc, want) in [
        (
            json!({"aws": {"sessionName": "x"}}),
            "operationContext.oidc.aws.roleArn is required",
        ),
        (
            json!({"aws": {"roleArn": "r", "duration": "forever"}}),
            "is not a duration",
        ),
        (
            json!({"tokenExpiration": "24h"}),
            "tokenExpiration must be between",
        ),
        (json!({"subjectTemplate": "${nope}"}), "unknown variable"),
    ] {
        let (status, body) = app
            .post(&path, json!({"operationContext": {"oidc": oidc}}))
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(body["message"].as_str().unwrap().contains(want), "{body}");
        // Nor may a deployment bring them.
        let (status, body) = app
            .post(
                &format!("/api/stacks/{s}/deployments"),
                json!({"operation": "update", "operationContext": {"oidc": oidc}}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
    }
    assert_eq!(app.get(&path).await.1, before);
    let (_, list) = app.get(&format!("/api/stacks/{s}/deployments")).await;
    assert_eq!(list["total"], 0, "{list}");
}

/// A deployment whose settings ask for the token alone, which its pre-run command copies to
/// `copy`. Returns the token.
async fn token_of_a_deployment(
    app: &TestApp,
    repo: &TestRepo,
    s: &str,
    copy: &std::path::Path,
) -> String {
    let mut settings = repo.settings();
    settings["operationContext"] = json!({
        "oidc": {},
        "preRunCommands": [format!("cp \"$PULUMI_OIDC_TOKEN_FILE\" {}", copy.display())],
    });
    app.post(&format!("/api/stacks/{s}/deployments/settings"), settings)
        .await;
    let id = app.deploy(s, json!({"operation": "preview"})).await;
    app.wait_for(s, &id, Some("succeeded")).await;
    std::fs::read_to_string(copy).unwrap().trim().to_string()
}

#[tokio::test]
async fn rotating_the_key_while_serving_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_kid()
{
    require!(Tools);
    let out = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_with(&["--sandbox-rw", &out.path().display().to_string()]).await;
    let repo = TestRepo::new();
    let s = stack("oidc-rotate");
    let issuer = format!("{}/oidc", app.url);
    let jwks_url = format!("{issuer}/.well-known/jwks.json");
    let jwks = || anonymous_get(&jwks_url);
    let before = token_of_a_deployment(&app, &repo, &s, &out.path().join("1")).await;
    let first = jwks().await;
    assert_eq!(first["keys"].as_array().unwrap().len(), 1);
    assert_eq!(first["keys"][0]["kid"].as_str().unwrap(), kid(&before));

    let rotated = std::process::Command::new(env!("CARGO_BIN_EXE_tarmac"))
        .args(["oidc", "rotate-key", "--data-dir"])
        .arg(app.data())
        .output()
        .unwrap();
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let printed = String::from_utf8(rotated.stdout).unwrap();
    let new_kid = printed
        .trim()
        .strip_prefix("new signing key: ")
        .unwrap()
        .to_string();

    let after = token_of_a_deployment(&app, &repo, &s, &out.path().join("2")).await;
    assert_eq!(kid(&after), new_kid, "new tokens carry the new kid");
    let both = jwks().await;
    assert_eq!(both["keys"].as_array().unwrap().len(), 2);
    let before_claims = verify(&before, &both, &issuer, "default").unwrap();
    verify(&after, &both, &issuer, "default").unwrap();
    // Without readScope, a preview's token is a write token, as in Pulumi.
    assert_eq!(before_claims["scope"], "write");
    assert_eq!(before_claims["operation"], "preview");
}
