//! Cloning from a remote that demands credentials, with `gitAuth` access tokens and basic auth.

use serde_json::{Value, json};

use crate::git_server::GitServer;
use crate::support::{TestApp, TestRepo, stack};

fn settings(url: &str, auth: Value) -> Value {
    json!({"sourceContext": {"git": {"repoUrl": url, "branch": "main", "repoDir": "infra", "gitAuth": auth}}})
}

#[tokio::test]
async fn private_repositories_clone_with_an_access_token_or_basic_auth() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();

    // GitHub-style token: any user name, the token as password.
    let server = GitServer::start(repo.dir.path(), "x-access-token", "ghp_tarmac-test-token");
    let s = stack("token");
    app.post(
        &format!("/api/stacks/{s}/deployments/settings"),
        settings(
            &server.url,
            json!({"accessToken": {"secret": "ghp_tarmac-test-token"}}),
        ),
    )
    .await;
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    app.wait_for(&s, &id, Some("succeeded")).await;
    let (_, got) = app
        .get(&format!("/api/stacks/{s}/deployments/settings"))
        .await;
    assert!(!got.to_string().contains("ghp_tarmac-test-token"), "{got}");

    // A wrong token fails the source step, and the token never shows in the logs.
    let id = app
        .deploy(&s, json!({"operation": "update", "sourceContext": {"git": {"gitAuth": {"accessToken": {"secret": "ghp_wrong-token"}}}}}))
        .await;
    app.wait_for(&s, &id, Some("failed")).await;
    let log = app.log_text(&s, &id).await;
    assert!(log.contains("Step 'Get source' failed."), "{log}");
    assert!(!log.contains("ghp_wrong-token"));

    // Credentials written into the URL work too, and are masked like the others.
    let in_url = server
        .url
        .replacen("http://", "http://x-access-token:ghp_tarmac-test-token@", 1);
    let id = app
        .deploy(
            &s,
            json!({"operation": "update", "inheritSettings": false,
            "sourceContext": {"git": {"repoUrl": in_url, "branch": "main", "repoDir": "infra"}},
            "operationContext": {"preRunCommands": ["git -C .. remote -v"]}}),
        )
        .await;
    app.wait_for(&s, &id, Some("succeeded")).await;
    let log = app.log_text(&s, &id).await;
    assert!(
        log.contains("x-access-token:[secret]@") || log.contains("[secret]@"),
        "{log}"
    );
    assert!(!log.contains("ghp_tarmac-test-token"), "{log}");
    drop(server);

    let server = GitServer::start(repo.dir.path(), "alice", "s3cret-pass");
    let s = stack("basic");
    let auth = json!({"basicAuth": {"userName": {"secret": "alice"}, "password": {"secret": "s3cret-pass"}}});
    app.post(
        &format!("/api/stacks/{s}/deployments/settings"),
        settings(&server.url, auth),
    )
    .await;
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    app.wait_for(&s, &id, Some("succeeded")).await;

    // Without credentials the same remote refuses the clone.
    let id = app.deploy(&s, json!({"operation": "update", "inheritSettings": false, "sourceContext": {"git": {"repoUrl": server.url, "branch": "main", "repoDir": "infra"}}})).await;
    app.wait_for(&s, &id, Some("failed")).await;
}
