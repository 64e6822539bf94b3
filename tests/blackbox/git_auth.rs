//! Cloning from a remote that demands credentials, with `gitAuth` access tokens and basic auth.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::support::{TestApp, TestRepo, stack};

/// `tests/tools/git_http_server.py`: real `git http-backend` behind Basic auth. Killed on drop.
struct GitServer {
    child: Child,
    url: String,
    _root: tempfile::TempDir,
}

impl GitServer {
    fn start(repo: &TestRepo, user: &str, password: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let bare = root.path().join("repo.git");
        let ok = Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(repo.dir.path())
            .arg(&bare)
            .status()
            .unwrap();
        assert!(ok.success());
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/tools/git_http_server.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .arg(root.path())
            .args([user, password])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut port = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut port)
            .unwrap();
        Self {
            child,
            url: format!("http://127.0.0.1:{}/repo.git", port.trim()),
            _root: root,
        }
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn settings(url: &str, auth: Value) -> Value {
    json!({"sourceContext": {"git": {"repoUrl": url, "branch": "main", "repoDir": "infra", "gitAuth": auth}}})
}

#[tokio::test]
async fn private_repositories_clone_with_an_access_token_or_basic_auth() {
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();

    // GitHub-style token: any user name, the token as password.
    let server = GitServer::start(&repo, "x-access-token", "ghp_tarmac-test-token");
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

    let server = GitServer::start(&repo, "alice", "s3cret-pass");
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
