//! Git sync: the store's due index, and the polling over real git remotes (smart HTTP behind
//! Basic auth), with a fake clock.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use time::OffsetDateTime;

use tarmac::domain::gitsync::{SyncState, deployment_id};
use tarmac::domain::*;

use crate::git_server::GitServer;
use crate::{Backend, call, claim, claimed, deployments_of, lease, stack};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.email=t@example.com", "-c", "user.name=Test"])
        .args(["-c", "commit.gpgsign=false"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A work tree with one commit, `infra/main.tf`.
fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    commit(dir.path(), "infra/main.tf", "# one");
    dir
}

/// Commits one file and returns the commit.
fn commit(dir: &Path, file: &str, text: &str) -> String {
    let p = dir.join(file);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", file]);
    git(dir, &["rev-parse", "HEAD"])
}

/// Commits one file in `work` and pushes it to the server's repository.
fn push(work: &Path, server: &GitServer, file: &str, text: &str) -> String {
    let sha = commit(work, file, text);
    let bare = server.bare();
    git(work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    sha
}

fn synced_settings(url: &str, sync: Value) -> Value {
    json!({
        "sourceContext": {"git": {
            "repoUrl": url, "branch": "main", "repoDir": "infra",
            "gitAuth": {"basicAuth": {"userName": {"secret": "sync-user"}, "password": {"secret": "sync-pass"}}},
        }},
        "gitSync": sync,
    })
}

fn settings_path(st: &StackRef) -> String {
    format!("/api/stacks/{st}/deployments/settings")
}

/// The stores keep microseconds.
fn whole_micros(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_microsecond(t.microsecond()).unwrap()
}

async fn sync_of(b: &Backend, st: &StackRef) -> Option<(SyncState, OffsetDateTime)> {
    b.stacks.get_sync(st).await.unwrap()
}

pub(crate) async fn a_sync_is_due_when_enabled_recorded_once_and_forgotten_when_off(b: Backend) {
    let st = stack("synced");
    let path = settings_path(&st);
    let before = OffsetDateTime::now_utc();

    // Refused settings write nothing.
    for (bad, says) in [
        (
            json!({"enabled": true, "interval": 59}),
            "between 60 and 86400",
        ),
        (
            json!({"enabled": true, "operation": "destroy"}),
            "update, preview",
        ),
        (
            json!({"enabled": true, "paths": ["infra/[x"]}),
            "is not a glob",
        ),
    ] {
        let (status, v) = call(
            &b,
            "POST",
            &path,
            Some(synced_settings("https://example.com/r.git", bad)),
        )
        .await;
        assert_eq!(status, 400, "{v}");
        assert!(v["message"].as_str().unwrap().contains(says), "{v}");
    }
    let (status, v) = call(
        &b,
        "POST",
        &path,
        Some(json!({"gitSync": {"enabled": true}})),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("repoUrl"), "{v}");
    assert!(b.stacks.get_settings(&st).await.unwrap().is_none());
    assert!(sync_of(&b, &st).await.is_none());

    // Enabled: due now.
    let on = synced_settings("https://example.com/r.git", json!({"enabled": true}));
    let (status, v) = call(&b, "POST", &path, Some(on.clone())).await;
    assert_eq!(status, 200, "{v}");
    let (state, next) = sync_of(&b, &st).await.unwrap();
    assert_eq!(state, SyncState::default());
    assert!(next >= before - time::Duration::seconds(1) && next <= OffsetDateTime::now_utc());
    let now = whole_micros(OffsetDateTime::now_utc());
    let due = b.stacks.due_syncs(now, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].stack, st);
    assert_eq!(due[0].next_check, next);
    assert_eq!(due[0].settings["gitSync"]["enabled"], true);
    // The stored credentials are sealed, as every setting's secrets are.
    assert!(!due[0].settings.to_string().contains("sync-pass"));

    // Recorded once: a racing tick that read the same slot loses.
    let seen = SyncState {
        last_seen_head: Some("a".repeat(40)),
        ..SyncState::default()
    };
    let later = now + time::Duration::seconds(60);
    assert!(b.stacks.record_sync(&st, next, &seen, later).await.unwrap());
    assert!(
        !b.stacks
            .record_sync(&st, next, &SyncState::default(), later)
            .await
            .unwrap()
    );
    assert_eq!(sync_of(&b, &st).await.unwrap(), (seen.clone(), later));
    assert!(b.stacks.due_syncs(now, 10).await.unwrap().is_empty());
    assert_eq!(b.stacks.due_syncs(later, 10).await.unwrap().len(), 1);

    // Another settings change keeps the sync's state and slot.
    let (status, v) = call(
        &b,
        "POST",
        &path,
        Some(json!({"gitSync": {"interval": 120}})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(sync_of(&b, &st).await.unwrap(), (seen, later));

    // Shown to the API.
    let (status, v) = call(
        &b,
        "GET",
        &format!("/api/stacks/{st}/deployments/sync"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["enabled"], true);
    assert_eq!(v["lastSeenHead"], "a".repeat(40));
    let (_, meta) = call(
        &b,
        "GET",
        &format!("/api/stacks/{st}/deployments/metadata"),
        None,
    )
    .await;
    assert_eq!(meta["gitSync"]["lastSeenHead"], "a".repeat(40), "{meta}");

    // Off: forgotten, and no longer due.
    let (status, v) = call(
        &b,
        "POST",
        &path,
        Some(json!({"gitSync": {"enabled": false}})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(sync_of(&b, &st).await.is_none());
    assert!(b.stacks.due_syncs(later, 10).await.unwrap().is_empty());
    let (_, v) = call(
        &b,
        "GET",
        &format!("/api/stacks/{st}/deployments/sync"),
        None,
    )
    .await;
    assert_eq!(v, json!({"enabled": false}));

    // On again, then the settings deleted: gone with them.
    let (status, _) = call(&b, "POST", &path, Some(on)).await;
    assert_eq!(status, 200);
    assert!(sync_of(&b, &st).await.is_some());
    let (status, v) = call(&b, "DELETE", &path, None).await;
    assert!(status < 300, "{status} {v}");
    assert!(sync_of(&b, &st).await.is_none());
    assert!(b.stacks.due_syncs(later, 10).await.unwrap().is_empty());
}

fn commit_of(d: &Deployment) -> String {
    d.config.spec().source.commit.clone().unwrap_or_default()
}

async fn check(b: &Backend, now: OffsetDateTime) -> tarmac::gitsync::SyncReport {
    tarmac::gitsync::check_due(&b.app.deps, now).await.unwrap()
}

pub(crate) async fn polling_costs_one_lookup_per_repository_and_deploys_each_new_head_once(
    b: Backend,
) {
    // 100 stacks on 5 repositories, each behind Basic auth.
    let works: Vec<_> = (0..5).map(|_| repo()).collect();
    let servers: Vec<GitServer> = works
        .iter()
        .map(|w| GitServer::start(w.path(), "sync-user", "sync-pass"))
        .collect();
    let stacks: Vec<Vec<StackRef>> = (0..5)
        .map(|r| (0..20).map(|i| stack(&format!("s{r}-{i}"))).collect())
        .collect();
    for (r, server) in servers.iter().enumerate() {
        let body = synced_settings(
            &server.url,
            json!({"enabled": true, "interval": 60, "paths": ["infra/**"]}),
        );
        let (status, v) = call(&b, "POST", &settings_path(&stacks[r][0]), Some(body)).await;
        assert_eq!(status, 200, "{v}");
        // The rest take the same sealed settings.
        let stored = b.stacks.get_settings(&stacks[r][0]).await.unwrap().unwrap();
        for st in &stacks[r][1..] {
            b.stacks
                .put_settings(st, &stored.settings, 0)
                .await
                .unwrap();
        }
    }
    let heads: Vec<String> = works
        .iter()
        .map(|w| git(w.path(), &["rev-parse", "HEAD"]))
        .collect();

    // The first check: one lookup per repository, and each stack's head deployed.
    let t0 = whole_micros(OffsetDateTime::now_utc());
    let report = check(&b, t0).await;
    assert_eq!(report.checked, 100);
    assert_eq!(report.lookups, 5, "{report:?}");
    assert_eq!(report.deployed, 100, "{report:?}");
    for server in &servers {
        assert_eq!(server.ref_lookups(), 1, "{:?}", server.requests());
    }
    for (r, group) in stacks.iter().enumerate() {
        for st in group {
            let ds = deployments_of(&b, st).await;
            assert_eq!(ds.len(), 1, "{st}");
            assert_eq!(ds[0].id, deployment_id(st, &heads[r]));
            assert_eq!(ds[0].initiator, "git-sync");
            assert_eq!(ds[0].operation, Operation::Update);
            assert_eq!(commit_of(&ds[0]), heads[r]);
        }
    }
    // Not due again before the interval.
    let quiet = check(&b, t0 + time::Duration::seconds(30)).await;
    assert_eq!((quiet.checked, quiet.lookups), (0, 0), "{quiet:?}");

    // One interval on, every deployment is still queued: nothing is looked up or started.
    let t1 = t0 + time::Duration::seconds(61);
    let report = check(&b, t1).await;
    assert_eq!(
        (report.checked, report.lookups, report.deployed),
        (100, 0, 0)
    );

    // One stack's run fails and another's succeeds.
    let (failing, passing) = (&stacks[0][0], &stacks[0][1]);
    let w = lease("worker", 60_000);
    for (st, status) in [
        (failing, JobStatus::Failed),
        (passing, JobStatus::Succeeded),
    ] {
        let id = deployment_id(st, &heads[0]);
        claimed(claim(&b, st, id, &w).await);
        b.runs.finish(id, &w, status).await.unwrap();
    }
    let t2 = t1 + time::Duration::seconds(61);
    let report = check(&b, t2).await;
    assert_eq!((report.lookups, report.deployed), (1, 0), "{report:?}");
    let (state, _) = sync_of(&b, failing).await.unwrap();
    assert!(
        state
            .last_error
            .as_deref()
            .unwrap()
            .contains("ended failed"),
        "{state:?}"
    );
    assert_eq!(
        state.last_attempted_commit.as_deref(),
        Some(heads[0].as_str())
    );
    assert_eq!(state.last_synced_commit, None);
    let (state, _) = sync_of(&b, passing).await.unwrap();
    assert_eq!(state.last_synced_commit.as_deref(), Some(heads[0].as_str()));
    assert_eq!(state.last_error, None);

    // The failed commit is not retried while the branch stays there.
    let t3 = t2 + time::Duration::seconds(61);
    let report = check(&b, t3).await;
    assert_eq!(report.deployed, 0, "{report:?}");
    assert_eq!(deployments_of(&b, failing).await.len(), 1);

    // A push outside `paths`: the stack that synced stays; the one that failed takes the next
    // commit, since nothing was deployed there to compare with.
    let docs = push(works[0].path(), &servers[0], "README.md", "docs");
    let t4 = t3 + time::Duration::seconds(61);
    let report = check(&b, t4).await;
    assert_eq!(report.deployed, 1, "{report:?}");
    let ds = deployments_of(&b, failing).await;
    assert_eq!(ds.len(), 2);
    assert_eq!(commit_of(&ds[0]), docs);
    assert_eq!(deployments_of(&b, passing).await.len(), 1);
    let (state, _) = sync_of(&b, passing).await.unwrap();
    assert_eq!(state.last_seen_head.as_deref(), Some(docs.as_str()));
    assert_eq!(state.last_error, None, "{state:?}");

    // A push inside `paths` is deployed, at exactly that commit.
    let infra = push(works[0].path(), &servers[0], "infra/main.tf", "# two");
    let t5 = t4 + time::Duration::seconds(61);
    check(&b, t5).await;
    let ds = deployments_of(&b, passing).await;
    assert_eq!(ds.len(), 2);
    assert_eq!(commit_of(&ds[0]), infra);
    assert_eq!(ds[0].id, deployment_id(passing, &infra));

    // A branch that disappears is an error that backs off, and shows no credential.
    git(&servers[1].bare(), &["branch", "-m", "main", "moved"]);
    let st = &stacks[1][0];
    let w = lease("worker-2", 60_000);
    let id = deployment_id(st, &heads[1]);
    claimed(claim(&b, st, id, &w).await);
    b.runs.finish(id, &w, JobStatus::Succeeded).await.unwrap();
    let t6 = t5 + time::Duration::seconds(61);
    check(&b, t6).await;
    let (state, next) = sync_of(&b, st).await.unwrap();
    assert!(
        state
            .last_error
            .as_deref()
            .unwrap()
            .contains("has no branch main"),
        "{state:?}"
    );
    assert!(!state.last_error.unwrap().contains("sync-pass"));
    assert_eq!(state.failures, 1);
    assert_eq!(next, t6 + time::Duration::seconds(120), "backed off");
}

pub(crate) async fn a_repository_only_git_can_read_is_followed_through_git_ls_remote(b: Backend) {
    // A worktree's `.git` is a file, which Tarmac's own ref reader leaves to git.
    let main = repo();
    let trees = tempfile::tempdir().unwrap();
    let worktree = trees.path().join("wt");
    git(
        main.path(),
        &[
            "worktree",
            "add",
            "-q",
            "-b",
            "side",
            worktree.to_str().unwrap(),
        ],
    );
    assert!(worktree.join(".git").is_file());
    let st = stack("by-git");
    let body = json!({
        "sourceContext": {"git": {"repoUrl": format!("file://{}", worktree.display()), "branch": "main", "repoDir": "infra"}},
        "gitSync": {"enabled": true},
    });
    let (status, v) = call(&b, "POST", &settings_path(&st), Some(body)).await;
    assert_eq!(status, 200, "{v}");
    // Paused, the stack is only rescheduled; resumed, it is followed.
    b.stacks.set_stack_paused(&st, true).await.unwrap();
    let t0 = whole_micros(OffsetDateTime::now_utc());
    let report = check(&b, t0).await;
    assert_eq!(
        (report.checked, report.lookups, report.deployed),
        (1, 0, 0),
        "{report:?}"
    );
    b.stacks.set_stack_paused(&st, false).await.unwrap();
    let t0 = t0 + time::Duration::seconds(61);
    let report = check(&b, t0).await;
    assert_eq!((report.lookups, report.deployed), (1, 1), "{report:?}");
    let head = git(main.path(), &["rev-parse", "main"]);
    let ds = deployments_of(&b, &st).await;
    assert_eq!(commit_of(&ds[0]), head);

    // The branch moves; once the first run has ended, the next check deploys the new head.
    let w = lease("worker", 60_000);
    claimed(claim(&b, &st, ds[0].id, &w).await);
    b.runs
        .finish(ds[0].id, &w, JobStatus::Succeeded)
        .await
        .unwrap();
    let moved = commit(main.path(), "infra/main.tf", "# two");
    let report = check(&b, t0 + time::Duration::seconds(61)).await;
    assert_eq!(report.deployed, 1, "{report:?}");
    assert_eq!(commit_of(&deployments_of(&b, &st).await[0]), moved);
    let (state, _) = sync_of(&b, &st).await.unwrap();
    assert_eq!(state.last_synced_commit.as_deref(), Some(head.as_str()));
}
