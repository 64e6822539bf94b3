//! The source cache: one mirror per org, URL and credentials; commits extracted once; force
//! pushes, vanished commits, private repositories, corruption and eviction.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::git_server::GitServer;
use crate::support::{PROGRAM, TestApp, TestRepo, stack};

/// The mirrors of `org` in the server's cache.
fn mirrors(app: &TestApp, org: &str) -> Vec<PathBuf> {
    let dir = app.data().join("cache").join(org).join("mirrors");
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// Every file under `dir`, as bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()) {
        let p = e.path();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(files(&p));
        } else if t.is_file() {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

/// A program that prints `marker` from a pre-run command, and a stack deploying it.
fn marked(marker: &str) -> Vec<(&'static str, String)> {
    vec![
        ("infra/main.tf", PROGRAM.to_string()),
        ("infra/marker.txt", format!("{marker}\n")),
    ]
}

async fn deploy_printing_marker(
    app: &TestApp,
    s: &str,
    body: serde_json::Value,
) -> (String, String) {
    let mut body = body;
    body["operationContext"] =
        json!({"preRunCommands": ["cat marker.txt", "git log -1 --format=gitlog:%H"]});
    let id = app.deploy(s, body).await;
    let d = app.wait_for(s, &id, None).await;
    let log = app.log_text(s, &id).await;
    (d["status"].as_str().unwrap().to_string(), log)
}

/// Creates a deployment on `s` with `token` (another org's, say), waits for its end, and
/// returns it with its log.
async fn deploy_as(
    app: &TestApp,
    token: &str,
    s: &str,
    body: &serde_json::Value,
) -> (serde_json::Value, String) {
    let call = |method: reqwest::Method, path: String, body: Option<Vec<u8>>| async move {
        app.request(method, &path, Some(token), body).await
    };
    let (status, created) = call(
        reqwest::Method::POST,
        format!("/api/stacks/{s}/deployments"),
        Some(body.to_string().into_bytes()),
    )
    .await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap();
    let d = loop {
        let (_, d) = call(
            reqwest::Method::GET,
            format!("/api/stacks/{s}/deployments/{id}"),
            None,
        )
        .await;
        if matches!(d["status"].as_str(), Some("succeeded" | "failed")) {
            break d;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let (_, logs) = call(
        reqwest::Method::GET,
        format!("/api/stacks/{s}/deployments/{id}/logs"),
        None,
    )
    .await;
    let log = logs["lines"]
        .as_array()
        .map(|lines| lines.iter().filter_map(|l| l["line"].as_str()).collect())
        .unwrap_or_default();
    (d, log)
}

fn commit_all(repo: &TestRepo, files: &[(&str, String)], message: &str) -> String {
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
    repo.commit(&files, message)
}

#[tokio::test]
async fn stacks_on_one_repository_share_its_mirror_at_their_own_commits() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let first = commit_all(&repo, &marked("marker-one"), "one");
    let second = commit_all(&repo, &marked("marker-two"), "two");
    let (a, b) = (stack("cache-a"), stack("cache-b"));
    for s in [&a, &b] {
        app.post(
            &format!("/api/stacks/{s}/deployments/settings"),
            repo.settings(),
        )
        .await;
    }
    // Two stacks, two pinned commits, in parallel.
    let pinned =
        |sha: &str| json!({"operation": "update", "sourceContext": {"git": {"commit": sha}}});
    let (one, two) = tokio::join!(
        deploy_printing_marker(&app, &a, pinned(&first)),
        deploy_printing_marker(&app, &b, pinned(&second)),
    );
    assert_eq!(one.0, "succeeded", "{}", one.1);
    assert_eq!(two.0, "succeeded", "{}", two.1);
    assert!(
        one.1.contains("marker-one") && !one.1.contains("marker-two"),
        "{}",
        one.1
    );
    assert!(
        two.1.contains("marker-two") && !two.1.contains("marker-one"),
        "{}",
        two.1
    );
    // Each run's `.git` is a repository at its commit.
    assert!(one.1.contains(&format!("Checked out {first}")), "{}", one.1);
    assert!(one.1.contains(&format!("gitlog:{first}")), "{}", one.1);
    assert_eq!(
        mirrors(&app, "default").len(),
        1,
        "one mirror for both stacks"
    );

    // Pinned and already extracted: no git at all, so a remote gone missing does not matter.
    let moved = repo.dir.path().with_extension("moved");
    std::fs::rename(repo.dir.path(), &moved).unwrap();
    let again = deploy_printing_marker(&app, &a, pinned(&first)).await;
    std::fs::rename(&moved, repo.dir.path()).unwrap();
    assert_eq!(again.0, "succeeded", "{}", again.1);
    assert!(again.1.contains("marker-one"), "{}", again.1);
}

#[tokio::test]
async fn a_force_push_is_followed_and_a_vanished_commit_fails_clearly() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("rewritten");
    app.post(
        &format!("/api/stacks/{s}/deployments/settings"),
        repo.settings(),
    )
    .await;
    commit_all(&repo, &marked("before-rewrite"), "before");
    let (status, log) = deploy_printing_marker(&app, &s, json!({"operation": "update"})).await;
    assert_eq!(status, "succeeded", "{log}");
    assert!(log.contains("before-rewrite"), "{log}");

    // The branch is rewritten: its head is now a commit that does not descend from the one
    // deployed.
    repo.git(&["reset", "-q", "--hard", "HEAD~1"]);
    let rewritten = commit_all(&repo, &marked("after-rewrite"), "rewritten");
    let (status, log) = deploy_printing_marker(&app, &s, json!({"operation": "update"})).await;
    assert_eq!(status, "succeeded", "{log}");
    assert!(
        log.contains("after-rewrite") && log.contains(&rewritten),
        "{log}"
    );

    // A commit that existed on the remote only between two force pushes, now gone for good.
    let lost = commit_all(&repo, &marked("lost"), "lost");
    repo.git(&["reset", "-q", "--hard", "HEAD~1"]);
    repo.git(&["reflog", "expire", "--expire=now", "--all"]);
    repo.git(&["gc", "-q", "--prune=now"]);
    let id = app
        .deploy(
            &s,
            json!({"operation": "update", "sourceContext": {"git": {"commit": lost}}}),
        )
        .await;
    app.wait_for(&s, &id, Some("failed")).await;
    let log = app.log_text(&s, &id).await;
    assert!(
        log.contains(&format!("commit {lost} is not in")) && log.contains("history was rewritten"),
        "{log}"
    );
}

#[tokio::test]
async fn another_org_cannot_read_a_private_repository_through_the_cache() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let secret_marker = "private-content-7f3a";
    commit_all(&repo, &marked(secret_marker), "private");
    let server = GitServer::start(repo.dir.path(), "x-access-token", "ghp_cache-test-token");
    let settings = |auth: serde_json::Value| json!({"sourceContext": {"git": {"repoUrl": server.url, "branch": "main", "repoDir": "infra", "gitAuth": auth}}});
    let a = stack("private-a");
    app.post(
        &format!("/api/stacks/{a}/deployments/settings"),
        settings(json!({"accessToken": {"secret": "ghp_cache-test-token"}})),
    )
    .await;
    let (status, log) = deploy_printing_marker(&app, &a, json!({"operation": "update"})).await;
    assert_eq!(status, "succeeded", "{log}");
    assert!(log.contains(secret_marker), "{log}");
    let sha = repo.git(&["rev-parse", "HEAD"]);

    // Org B: no token, then a wrong one; by branch and by the very commit org A has cached.
    let other = app.create_token("other", "admin");
    let b = "other/proj/private-b";
    for auth in [json!(null), json!({"accessToken": {"secret": "ghp_wrong"}})] {
        for git in [json!({"branch": "main"}), json!({"commit": sha})] {
            let mut body = settings(auth.clone());
            for (k, v) in git.as_object().unwrap() {
                body["sourceContext"]["git"][k] = v.clone();
            }
            body["operation"] = json!("update");
            body["inheritSettings"] = json!(false);
            body["operationContext"] = json!({"preRunCommands": ["cat marker.txt"]});
            let (d, log) = deploy_as(&app, &other, b, &body).await;
            assert_eq!(
                d["status"], "failed",
                "org B read org A's private repository with {auth} at {git}"
            );
            // And the run says why: the remote refused it.
            let why = match git.get("commit") {
                Some(_) => "could not fetch from",
                None => "refused the run's git credentials (HTTP 401)",
            };
            assert!(log.contains(why), "{log}");
            assert!(
                !log.contains(secret_marker) && !log.contains("ghp_wrong"),
                "{log}"
            );
        }
    }
    // Org B's attempts left nothing of the repository in its own cache, and no mirror holds
    // a credential.
    for m in mirrors(&app, "other") {
        assert!(
            !m.join("trees").exists()
                || std::fs::read_dir(m.join("trees")).unwrap().next().is_none()
        );
    }
    for (path, bytes) in files(&app.data().join("cache")) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("ghp_cache-test-token") && !text.contains("ghp_wrong"),
            "{}",
            path.display()
        );
    }
}

#[tokio::test]
async fn a_corrupt_mirror_is_detected_deleted_and_fetched_again() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    commit_all(&repo, &marked("intact"), "intact");
    let s = stack("corrupt");
    app.post(
        &format!("/api/stacks/{s}/deployments/settings"),
        repo.settings(),
    )
    .await;
    let (status, log) = deploy_printing_marker(&app, &s, json!({"operation": "update"})).await;
    assert_eq!(status, "succeeded", "{log}");

    // Every object of the mirror overwritten, and the extracted commit gone.
    let [mirror] = mirrors(&app, "default").try_into().unwrap();
    std::fs::remove_dir_all(mirror.join("trees")).unwrap();
    let objects = files(&mirror.join("repo.git/objects"));
    assert!(!objects.is_empty());
    for (path, bytes) in objects {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, vec![0x5a; bytes.len().max(1)]).unwrap();
    }
    let (status, log) = deploy_printing_marker(&app, &s, json!({"operation": "update"})).await;
    assert_eq!(status, "succeeded", "{log}");
    assert!(log.contains("The cached mirror could not be used"), "{log}");
    assert!(log.contains("intact"), "{log}");
    // The mirror is whole again: the next run needs no repair.
    let (status, log) = deploy_printing_marker(&app, &s, json!({"operation": "update"})).await;
    assert_eq!(status, "succeeded", "{log}");
    assert!(!log.contains("could not be used"), "{log}");
}

#[tokio::test]
async fn the_cache_stays_under_its_cap_least_recently_used_first() {
    require!(Tools);
    let app = TestApp::spawn_with(&["--cache-max-size", "1K"]).await;
    let (first, second) = (TestRepo::new(), TestRepo::new());
    let (a, b) = (stack("evict-a"), stack("evict-b"));
    app.post(
        &format!("/api/stacks/{a}/deployments/settings"),
        first.settings(),
    )
    .await;
    app.post(
        &format!("/api/stacks/{b}/deployments/settings"),
        second.settings(),
    )
    .await;
    let id = app.deploy(&a, json!({"operation": "update"})).await;
    app.wait_for(&a, &id, Some("succeeded")).await;
    let after_first = mirrors(&app, "default");
    assert_eq!(after_first.len(), 1);
    // The second repository's mirror grows the cache past 1 KiB: the first one, no run's and
    // the least recently used, goes.
    let id = app.deploy(&b, json!({"operation": "update"})).await;
    app.wait_for(&b, &id, Some("succeeded")).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while after_first[0].exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let now = mirrors(&app, "default");
    assert!(!after_first[0].exists(), "{now:?}");
    assert_eq!(now.len(), 1, "{now:?}");

    // `tarmac cache prune` empties it, the server running.
    let said = app.admin(&["cache", "prune"]);
    assert!(
        said.contains("evicted") && said.contains("0 after"),
        "{said}"
    );
    assert!(mirrors(&app, "default").is_empty());
    // And the next run fills it again.
    let id = app.deploy(&a, json!({"operation": "update"})).await;
    app.wait_for(&a, &id, Some("succeeded")).await;
}

#[tokio::test]
async fn plugin_caches_are_the_orgs_and_dependency_caches_the_stacks() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let show = "echo \"dirs: tf=$TF_PLUGIN_CACHE_DIR npm=$npm_config_cache pip=$PIP_CACHE_DIR go=$GOMODCACHE\"; \
                ls \"$npm_config_cache\"; touch \"$npm_config_cache/from-$TARMAC_STACK\"; \
                touch \"$TF_PLUGIN_CACHE_DIR/from-$TARMAC_STACK\"; ls -d \"$HOME/.pulumi/plugins/\"; \
                (: > \"$TF_PLUGIN_CACHE_DIR/../.init.lock\") 2>/dev/null && echo lock=writable || echo lock=refused";
    let run = |org_token: Option<String>, s: String| {
        let app = &app;
        let body = json!({"operation": "update", "inheritSettings": false,
            "sourceContext": repo.settings()["sourceContext"].clone(),
            "operationContext": {"preRunCommands": [show]}});
        async move {
            let token = org_token.unwrap_or_else(|| app.token.clone());
            let (d, log) = deploy_as(app, &token, &s, &body).await;
            assert_eq!(d["status"], "succeeded", "{log}");
            log
        }
    };
    let value = |log: &str, key: &str| -> String {
        let line = log
            .lines()
            .find(|l| l.starts_with("dirs: "))
            .unwrap_or_else(|| panic!("no dirs in {log}"));
        let at = line.find(&format!(" {key}=")).unwrap() + key.len() + 2;
        line[at..].split(' ').next().unwrap().to_string()
    };
    let first = run(None, stack("caches-a")).await;
    let again = run(None, stack("caches-a")).await;
    let sibling = run(None, stack("caches-b")).await;
    let other_org = run(
        Some(app.create_token("elsewhere", "admin")),
        "elsewhere/proj/caches-a".into(),
    )
    .await;

    // A stack's dependency cache outlives its runs, and is its own.
    assert_eq!(value(&first, "npm"), value(&again, "npm"));
    assert!(again.contains("from-caches-a"), "{again}");
    assert_ne!(value(&first, "npm"), value(&sibling, "npm"));
    assert!(!sibling.contains("from-caches-a\n"), "{sibling}");
    for key in ["pip", "go"] {
        assert_eq!(value(&first, key), value(&again, key));
        assert_ne!(value(&first, key), value(&sibling, key));
    }
    // The plugin cache is shared by the org's stacks, and by no other org.
    assert_eq!(value(&first, "tf"), value(&sibling, "tf"));
    assert_ne!(value(&first, "tf"), value(&other_org, "tf"));
    for log in [&first, &again, &sibling, &other_org] {
        assert!(log.contains(".pulumi/plugins/"), "{log}");
        // The cache's own lock files are out of the run's reach.
        assert!(log.lines().any(|l| l == "lock=refused"), "{log}");
        assert!(
            value(log, "tf").starts_with(app.data().join("cache").to_str().unwrap()),
            "{log}"
        );
    }
}

#[tokio::test]
async fn a_long_run_does_not_hold_up_another_stacks_fetch_of_a_new_commit() {
    require!(Tools);
    let app = TestApp::spawn_with(&["--workers", "2"]).await;
    let repo = TestRepo::new();
    let (slow, quick) = (stack("holds-mirror"), stack("needs-fetch"));
    for s in [&slow, &quick] {
        app.post(
            &format!("/api/stacks/{s}/deployments/settings"),
            repo.settings(),
        )
        .await;
    }
    let long = app
        .deploy(
            &slow,
            json!({"operation": "update", "operationContext": {"preRunCommands": ["sleep 20"]}}),
        )
        .await;
    // The slow run is using the mirror...
    app.wait_for(&slow, &long, Some("running")).await;
    // ...when a new commit needs fetching into it for another stack.
    let newer = commit_all(&repo, &marked("newer"), "newer");
    let started = std::time::Instant::now();
    let (status, log) = deploy_printing_marker(&app, &quick, json!({"operation": "update"})).await;
    assert_eq!(status, "succeeded", "{log}");
    assert!(log.contains(&format!("Checked out {newer}")), "{log}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "the fetch waited for the other run: {:?}",
        started.elapsed()
    );
    assert_eq!(app.deployment(&slow, &long).await["status"], "running");
    app.post(
        &format!("/api/stacks/{slow}/deployments/{long}/cancel"),
        json!({}),
    )
    .await;
    app.wait_for(&slow, &long, Some("failed")).await;
}

#[tokio::test]
async fn deleting_a_stacks_cache_empties_its_dependency_cache_for_the_next_run() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("cache-cleared");
    let mut settings = repo.settings();
    settings["operationContext"] = json!({"preRunCommands": [
        "state=cold; [ -f \"$TARMAC_CACHE_DIR/marker\" ] && state=warm; echo \"cache-$state\"; touch \"$TARMAC_CACHE_DIR/marker\""
    ]});
    let (status, v) = app
        .post(&format!("/api/stacks/{s}/deployments/settings"), settings)
        .await;
    assert_eq!(status, 200, "{v}");
    let run = async || {
        let id = app.deploy(&s, json!({"operation": "update"})).await;
        app.wait_for(&s, &id, Some("succeeded")).await;
        let log = app.log_text(&s, &id).await;
        match (log.contains("cache-warm"), log.contains("cache-cold")) {
            (true, false) => "warm",
            (false, true) => "cold",
            _ => panic!("{log}"),
        }
    };
    assert_eq!(run().await, "cold");
    assert_eq!(run().await, "warm");

    // Another org's admin finds no such stack; a read token may not clear it.
    let path = format!("/api/stacks/{s}/deployments/cache");
    let other = app.create_token("someone-else", "admin");
    let (status, _) = app
        .request(reqwest::Method::DELETE, &path, Some(&other), None)
        .await;
    assert_eq!(status, 404);
    let reader = app.create_token("default", "read");
    let (status, _) = app
        .request(reqwest::Method::DELETE, &path, Some(&reader), None)
        .await;
    assert_eq!(status, 403);
    assert_eq!(run().await, "warm", "refused clears change nothing");

    // Not while a run uses it.
    let busy = app
        .deploy(
            &s,
            json!({"operation": "update", "operationContext": {"preRunCommands": ["sleep 3"]}}),
        )
        .await;
    // Its pre-run command has started, so the run holds its cache.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !app.log_text(&s, &busy).await.contains("$ sleep 3") {
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, v) = app.delete(&path).await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("is using its cache"),
        "{v}"
    );
    app.wait_for(&s, &busy, Some("succeeded")).await;

    let (status, v) = app.delete(&path).await;
    assert_eq!(status, 204, "{v}");
    assert_eq!(run().await, "cold");
    let (status, v) = app
        .delete("/api/stacks/default/proj/no-such-stack/deployments/cache")
        .await;
    assert_eq!(status, 404, "{v}");
}
