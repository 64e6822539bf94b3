//! GitHub in: real webhook payloads (`events/github-*.json`, from `@octokit/webhooks-examples`)
//! signed and posted to a real server, deploying real commits of a real repository with the
//! Terraform engine; GitHub out: statuses and preview comments sent to a fake GitHub.
//!
//! The payloads name commits of GitHub's example repository; each test swaps those ids for
//! commits of its own repository, and keeps everything else as GitHub sent it.

use serde_json::{Value, json};

use crate::fakes::FakeServer;
use crate::support::{TestApp, TestRepo, stack};

const PUSHED: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
const PR_HEAD: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
const SECRET: &str = "webhook-secret-for-tests";

fn fixture(name: &str, swaps: &[(&str, &str)]) -> String {
    let mut text =
        std::fs::read_to_string(format!("{}/../events/{name}", env!("CARGO_MANIFEST_DIR")))
            .unwrap();
    for (from, to) in swaps {
        text = text.replace(from, to);
    }
    text
}

fn sign(body: &str) -> String {
    format!(
        "sha256={}",
        crate::signing::hmac_hex(SECRET, body.as_bytes())
    )
}

/// Posts a GitHub event; `signature` `None` leaves the header out.
async fn deliver(
    app: &TestApp,
    event: &str,
    delivery: &str,
    body: &str,
    signature: Option<String>,
) -> (u16, Value) {
    let mut req = app
        .client
        .post(format!(
            "{}/api/orgs/default/integrations/github/webhook",
            app.url
        ))
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(s) = signature {
        req = req.header("X-Hub-Signature-256", s);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn connect(app: &TestApp, github: &FakeServer) {
    let (status, body) = app
        .put(
            "/api/orgs/default/integrations/github",
            json!({"webhookSecret": SECRET, "apiUrl": github.url, "token": "ghp_configured_token"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains(SECRET) && !body.to_string().contains("ghp_"));
}

async fn settings(app: &TestApp, name: &str, repo: &TestRepo, branch: &str, gh: Value) {
    let mut s = repo.settings();
    s["sourceContext"]["git"]["branch"] = json!(branch);
    s["gitHub"] = gh;
    let (status, body) = app
        .post(
            &format!("/api/stacks/{}/deployments/settings", stack(name)),
            s,
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn deployment_count(app: &TestApp, name: &str) -> i64 {
    let (_, list) = app
        .get(&format!("/api/stacks/{}/deployments", stack(name)))
        .await;
    list["total"].as_i64().unwrap_or(0)
}

#[tokio::test]
async fn pushes_and_tags_deploy_the_pushed_commit_once_and_report_status_to_github() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let github = FakeServer::github().await;
    connect(&app, &github).await;
    let repo = TestRepo::new();
    repo.git(&["branch", "master"]);
    let sha = repo.git(&["rev-parse", "HEAD"]);
    let gh = |extra: Value| {
        let mut v = json!({"repository": "Codertocat/Hello-World"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    // README.md is the pushed change.
    settings(
        &app,
        "gh-push",
        &repo,
        "master",
        gh(json!({"deployCommits": true, "paths": ["README.md", "infra/**"]})),
    )
    .await;
    settings(
        &app,
        "gh-docs",
        &repo,
        "master",
        gh(json!({"deployCommits": true, "paths": ["docs/**", "!README.md"]})),
    )
    .await;
    settings(
        &app,
        "gh-other-branch",
        &repo,
        "main",
        gh(json!({"deployCommits": true})),
    )
    .await;
    settings(
        &app,
        "gh-tags",
        &repo,
        "master",
        gh(json!({"deployTags": true, "tagFilters": ["simple-*"]})),
    )
    .await;
    let mut other = repo.settings();
    other["gitHub"] = json!({"repository": "Someone/Else", "deployCommits": true});
    app.post(
        &format!(
            "/api/stacks/{}/deployments/settings",
            stack("gh-other-repo")
        ),
        other,
    )
    .await;

    let push = fixture("github-push.json", &[(PUSHED, &sha)]);
    let (status, body) = deliver(&app, "push", "delivery-push-1", &push, Some(sign(&push))).await;
    assert_eq!(status, 202, "{body}");
    let made = body["deployments"].as_array().unwrap();
    assert_eq!(made.len(), 1, "{body}");
    assert_eq!(made[0]["stack"], "default/proj/gh-push");
    assert_eq!(made[0]["operation"], "update");
    let id = made[0]["id"].as_str().unwrap().to_string();
    let d = app
        .wait_for(&stack("gh-push"), &id, Some("succeeded"))
        .await;
    assert_eq!(d["initiator"], "github");
    let log = app.log_text(&stack("gh-push"), &id).await;
    assert!(log.contains(&format!("Checked out {sha}")), "{log}");

    // A redelivery does nothing twice.
    let (status, again) = deliver(&app, "push", "delivery-push-1", &push, Some(sign(&push))).await;
    assert_eq!(status, 202);
    assert_eq!(again["deployments"], json!([]));
    assert_eq!(again["duplicates"], 1);
    // Nor does a replay of the signed body under a new delivery id.
    let (status, replay) =
        deliver(&app, "push", "delivery-replayed", &push, Some(sign(&push))).await;
    assert_eq!(
        (status, replay["duplicates"].clone()),
        (202, json!(1)),
        "{replay}"
    );
    for (name, want) in [
        ("gh-push", 1),
        ("gh-docs", 0),
        ("gh-other-branch", 0),
        ("gh-other-repo", 0),
        ("gh-tags", 0),
    ] {
        assert_eq!(deployment_count(&app, name).await, want, "{name}");
    }

    // The commit's status went pending, then success, linked to the deployment.
    let statuses = github
        .wait_until("a success status", |rs| {
            rs.iter().any(|r| {
                r.path == format!("/repos/Codertocat/Hello-World/statuses/{sha}")
                    && r.json()["state"] == "success"
            })
        })
        .await;
    let mine: Vec<&crate::fakes::Recorded> = statuses
        .iter()
        .filter(|r| r.path.contains("/statuses/"))
        .collect();
    // Each status reports the deployment's state when it is sent, so the last is final however
    // the sends interleave.
    assert!(
        mine.iter()
            .all(|r| ["pending", "success"].contains(&r.json()["state"].as_str().unwrap())),
        "{mine:?}"
    );
    let last = mine.last().unwrap().json();
    assert_eq!(last["context"], "tarmac/proj/gh-push");
    assert!(
        last["target_url"]
            .as_str()
            .unwrap()
            .ends_with("/default/proj/gh-push/deployments/1")
    );
    assert_eq!(
        mine[0].header("authorization"),
        Some("token ghp_configured_token")
    );

    // A tag push deploys the stacks that follow matching tags, at the tagged commit.
    let tag = fixture("github-push-tag.json", &[(PUSHED, &sha)]);
    let (status, body) = deliver(&app, "push", "delivery-tag-1", &tag, Some(sign(&tag))).await;
    assert_eq!(status, 202, "{body}");
    let made = body["deployments"].as_array().unwrap();
    assert_eq!(made.len(), 1, "{body}");
    assert_eq!(made[0]["stack"], "default/proj/gh-tags");
    app.wait_for(
        &stack("gh-tags"),
        made[0]["id"].as_str().unwrap(),
        Some("succeeded"),
    )
    .await;
}

#[tokio::test]
async fn pull_requests_get_a_preview_and_one_comment_updated_in_place() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let github = FakeServer::github().await;
    connect(&app, &github).await;
    let repo = TestRepo::new();
    repo.git(&["branch", "master"]);
    settings(
        &app,
        "gh-previews",
        &repo,
        "master",
        json!({"repository": "Codertocat/Hello-World", "previewPullRequests": true}),
    )
    .await;
    settings(
        &app,
        "gh-no-previews",
        &repo,
        "master",
        json!({"repository": "Codertocat/Hello-World", "deployCommits": true}),
    )
    .await;

    // The pull request's head exists only under refs/pull/2/head, as a fork's would.
    let head = repo.commit(
        &[("infra/extra.tf", "resource \"terraform_data\" \"y\" {}\n")],
        "pr change",
    );
    repo.git(&["update-ref", "refs/pull/2/head", &head]);
    repo.git(&["reset", "-q", "--hard", "HEAD~1"]);
    let opened = fixture("github-pull_request-opened.json", &[(PR_HEAD, &head)]);
    let (status, body) = deliver(
        &app,
        "pull_request",
        "delivery-pr-1",
        &opened,
        Some(sign(&opened)),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let made = body["deployments"].as_array().unwrap();
    assert_eq!(made.len(), 1, "{body}");
    assert_eq!(made[0]["operation"], "preview");
    let id = made[0]["id"].as_str().unwrap().to_string();
    app.wait_for(&stack("gh-previews"), &id, Some("succeeded"))
        .await;
    let log = app.log_text(&stack("gh-previews"), &id).await;
    assert!(log.contains(&format!("Checked out {head}")), "{log}");

    let recorded = github
        .wait_until("the preview comment", |rs| {
            rs.iter().any(|r| {
                r.method == "POST" && r.path == "/repos/Codertocat/Hello-World/issues/2/comments"
            })
        })
        .await;
    let comment = recorded
        .iter()
        .find(|r| r.method == "POST" && r.path.ends_with("/issues/2/comments"))
        .unwrap()
        .json();
    let text = comment["body"].as_str().unwrap();
    assert!(
        text.contains("Tarmac preview") && text.contains("succeeded"),
        "{text}"
    );
    assert!(
        text.contains("Plan: 2 to add"),
        "the change summary: {text}"
    );

    // The next push to the pull request previews again and edits the same comment.
    repo.git(&["checkout", "-q", &head]);
    let head2 = repo.commit(
        &[("infra/more.tf", "resource \"terraform_data\" \"z\" {}\n")],
        "more",
    );
    repo.git(&["update-ref", "refs/pull/2/head", &head2]);
    let sync = fixture("github-pull_request-synchronize.json", &[(PR_HEAD, &head2)]);
    let (status, body) = deliver(
        &app,
        "pull_request",
        "delivery-pr-2",
        &sync,
        Some(sign(&sync)),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id2 = body["deployments"][0]["id"].as_str().unwrap().to_string();
    app.wait_for(&stack("gh-previews"), &id2, Some("succeeded"))
        .await;
    let recorded = github
        .wait_until("the comment edited in place", |rs| {
            rs.iter().any(|r| {
                r.method == "PATCH"
                    && r.path == "/repos/Codertocat/Hello-World/issues/comments/1000"
            })
        })
        .await;
    let posts = recorded
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/issues/2/comments"))
        .count();
    assert_eq!(posts, 1, "one comment per stack and pull request");
    assert_eq!(deployment_count(&app, "gh-no-previews").await, 0);
}

#[tokio::test]
async fn unsigned_foreign_and_uninteresting_events_change_nothing() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let github = FakeServer::github().await;
    let repo = TestRepo::new();
    repo.git(&["branch", "master"]);
    let sha = repo.git(&["rev-parse", "HEAD"]);
    let push = fixture("github-push.json", &[(PUSHED, &sha)]);
    // Before the org connects GitHub, every delivery is refused like a bad signature.
    let (status, _) = deliver(&app, "push", "d0", &push, Some(sign(&push))).await;
    assert_eq!(status, 401);
    connect(&app, &github).await;
    settings(
        &app,
        "gh-guarded",
        &repo,
        "master",
        json!({"repository": "Codertocat/Hello-World", "deployCommits": true}),
    )
    .await;

    let (status, body) = deliver(&app, "push", "d1", &push, Some("sha256=00".to_string())).await;
    assert_eq!((status, body["code"].clone()), (401, json!(401)), "{body}");
    let (status, _) = deliver(&app, "push", "d2", &push, None).await;
    assert_eq!(status, 401, "a missing signature");
    let tampered = push.replace("\"deleted\": false", "\"deleted\": true");
    let (status, _) = deliver(&app, "push", "d3", &tampered, Some(sign(&push))).await;
    assert_eq!(status, 401, "a body that is not the one signed");
    // Signed with another org's secret: refused too.
    let (status, _) = deliver(
        &app,
        "push",
        "d4",
        &push,
        Some("sha256=".to_string() + &"ab".repeat(32)),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(deployment_count(&app, "gh-guarded").await, 0);

    let ping = fixture("github-ping.json", &[]);
    let (status, body) = deliver(&app, "ping", "d5", &ping, Some(sign(&ping))).await;
    assert_eq!((status, body["message"].clone()), (200, json!("pong")));
    let issue = r#"{"action":"opened","issue":{"number":1},"repository":{"full_name":"Codertocat/Hello-World"}}"#;
    let (status, body) = deliver(&app, "issues", "d6", issue, Some(sign(issue))).await;
    assert_eq!(status, 202);
    assert!(
        body["ignored"].as_str().unwrap().contains("issues"),
        "{body}"
    );
    let (status, body) = deliver(&app, "push", "d7", "{not json", Some(sign("{not json"))).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(deployment_count(&app, "gh-guarded").await, 0);
    assert!(github.recorded().is_empty(), "nothing was sent to GitHub");

    // Only an admin connects GitHub, and the secret never comes back.
    let writer = app.create_token("default", "write");
    let resp = app
        .client
        .put(format!("{}/api/orgs/default/integrations/github", app.url))
        .header("Authorization", format!("token {writer}"))
        .json(&json!({"webhookSecret": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let (_, shown) = app.get("/api/orgs/default/integrations/github").await;
    assert_eq!(shown["hasWebhookSecret"], true);
    assert!(!shown.to_string().contains(SECRET));

    // A push payload far above the API's 1 MiB limit (GitHub sends up to 25 MB) is taken.
    let mut big: Value = serde_json::from_str(&push).unwrap();
    big["padding"] = json!("x".repeat(3 * 1024 * 1024));
    let big = big.to_string();
    let (status, body) = deliver(&app, "push", "d8", &big, Some(sign(&big))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(deployment_count(&app, "gh-guarded").await, 1);
}

/// An RSA key as GitHub hands App keys out (PKCS#1 PEM), and its public key (PKCS#1 DER).
fn app_key() -> (String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("app.pem");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    run(&[
        "genrsa",
        "-traditional",
        "-out",
        pem.to_str().unwrap(),
        "2048",
    ]);
    let public = run(&[
        "rsa",
        "-in",
        pem.to_str().unwrap(),
        "-RSAPublicKey_out",
        "-outform",
        "DER",
    ]);
    (std::fs::read_to_string(&pem).unwrap(), public)
}

#[tokio::test]
async fn a_github_app_authenticates_with_a_signed_jwt_and_uses_its_installation_token() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let github = FakeServer::github().await;
    let (pem, public) = app_key();
    assert!(pem.contains("BEGIN RSA PRIVATE KEY"));
    let (status, body) = app
        .put(
            "/api/orgs/default/integrations/github",
            json!({"webhookSecret": SECRET, "apiUrl": github.url, "app": {"appId": "4242", "privateKey": pem, "installationId": 9}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["app"],
        json!({"appId": "4242", "installationId": 9, "hasPrivateKey": true})
    );
    assert!(!body.to_string().contains("PRIVATE KEY"));

    let repo = TestRepo::new();
    repo.git(&["branch", "master"]);
    let sha = repo.git(&["rev-parse", "HEAD"]);
    settings(
        &app,
        "gh-app",
        &repo,
        "master",
        json!({"repository": "Codertocat/Hello-World", "deployCommits": true}),
    )
    .await;
    // The push names installation 1: that installation's token is used, not the default.
    let push = fixture("github-push.json", &[(PUSHED, &sha)]);
    let (status, body) = deliver(&app, "push", "delivery-app-1", &push, Some(sign(&push))).await;
    assert_eq!(status, 202, "{body}");
    let got = github
        .wait_until("a status sent with the installation token", |rs| {
            rs.iter()
                .any(|r| r.path.contains("/statuses/") && r.json()["state"] == "success")
        })
        .await;
    let exchange = got
        .iter()
        .find(|r| r.path == "/app/installations/1/access_tokens")
        .expect("an installation token was requested");
    let jwt = exchange
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap();
    // Verify the App JWT with the public key, as GitHub does.
    let (signed, sig) = jwt.rsplit_once('.').unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        &public,
    )
    .verify(signed.as_bytes(), &b64.decode(sig).unwrap())
    .expect("the App JWT is signed with the App's key");
    let claims: Value =
        serde_json::from_slice(&b64.decode(signed.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(claims["iss"], "4242");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600
    );
    let status_call = got.iter().find(|r| r.path.contains("/statuses/")).unwrap();
    assert_eq!(
        status_call.header("authorization"),
        Some("token ghs_installation_token")
    );
}
