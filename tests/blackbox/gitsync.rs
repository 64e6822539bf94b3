//! Git sync end to end: a real `tarmac serve` polls a real git server (smart HTTP behind Basic
//! auth), and real Terraform deploys what it finds. The fake-clock cases (lookups per
//! repository, a failed commit, backoff) are in the contract suite.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::git_server::GitServer;
use crate::support::{TestApp, TestRepo, stack};

/// Polls `check` every 250 ms until it returns `Some`, for at most `limit`.
async fn within<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn deployments(app: &TestApp, s: &str) -> Vec<Value> {
    let (_, page) = app.get(&format!("/api/stacks/{s}/deployments")).await;
    page["deployments"].as_array().cloned().unwrap_or_default()
}

fn push(repo: &TestRepo, server: &GitServer, file: &str, text: &str) -> String {
    let sha = repo.commit(&[(file, text)], file);
    repo.git(&["push", "-q", server.bare().to_str().unwrap(), "main"]);
    sha
}

#[tokio::test]
async fn a_synced_stack_deploys_a_push_within_one_interval_and_not_one_outside_its_paths() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let server = GitServer::start(repo.dir.path(), "sync-user", "sync-pass");
    let s = stack("git-synced");
    let st = tarmac::domain::StackRef::new("default", "proj", "git-synced").unwrap();
    let (status, v) = app
        .post(
            &format!("/api/stacks/{s}/deployments/settings"),
            json!({
                "sourceContext": {"git": {
                    "repoUrl": server.url, "branch": "main", "repoDir": "infra",
                    "gitAuth": {"basicAuth": {"userName": {"secret": "sync-user"}, "password": {"secret": "sync-pass"}}},
                }},
                "gitSync": {"enabled": true, "interval": 60, "paths": ["infra/**"]},
            }),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let first = repo.git(&["rev-parse", "HEAD"]);

    // Turned on, the first check is due at once: the branch head is deployed.
    let d = within("the first sync", Duration::from_secs(30), || async {
        deployments(&app, &s).await.into_iter().next()
    })
    .await;
    assert_eq!(d["initiator"], "git-sync", "{d}");
    let id = tarmac::domain::gitsync::deployment_id(&st, &first).to_string();
    assert_eq!(d["id"], id.as_str());
    app.wait_for(&s, &id, Some("succeeded")).await;

    // A push outside `paths` is seen at the next check, and not deployed.
    let docs = push(&repo, &server, "README.md", "docs");
    let sync_path = format!("/api/stacks/{s}/deployments/sync");
    let seen = within(
        "the docs push to be seen",
        Duration::from_secs(75),
        || async {
            let (_, v) = app.get(&sync_path).await;
            (v["lastSeenHead"] == docs.as_str()).then_some(v)
        },
    )
    .await;
    assert_eq!(seen["lastSyncedCommit"], first.as_str(), "{seen}");
    assert_eq!(seen["lastError"], Value::Null, "{seen}");
    assert_eq!(deployments(&app, &s).await.len(), 1);

    // A push inside them is deployed within one interval, at exactly that commit.
    let infra = push(
        &repo,
        &server,
        "infra/main.tf",
        &crate::support::PROGRAM.replace("\"one\"", "\"two\""),
    );
    let pushed = Instant::now();
    let d = within(
        "the infra push's deployment",
        Duration::from_secs(70),
        || async {
            let all = deployments(&app, &s).await;
            (all.len() == 2).then(|| all[0].clone())
        },
    )
    .await;
    let latency = pushed.elapsed();
    println!("push to deployment: {:.1}s", latency.as_secs_f64());
    assert!(latency <= Duration::from_secs(65), "{latency:?}");
    let id = tarmac::domain::gitsync::deployment_id(&st, &infra).to_string();
    assert_eq!(d["id"], id.as_str(), "{d}");
    app.wait_for(&s, &id, Some("succeeded")).await;
    let state = std::fs::read_to_string(
        app.data()
            .join("state/default/proj/git-synced/terraform.tfstate"),
    )
    .unwrap();
    assert!(state.contains("\"two\""), "the pushed program was applied");
    // The sync's view, in the stack's metadata too; no credential shows.
    let (_, meta) = app
        .get(&format!("/api/stacks/{s}/deployments/metadata"))
        .await;
    assert_eq!(
        meta["gitSync"]["lastAttemptedCommit"],
        infra.as_str(),
        "{meta}"
    );
    assert!(!meta.to_string().contains("sync-pass"));
}
