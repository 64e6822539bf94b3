//! Git sync's polling cost: `--stacks` stacks (default 1,000) following `--repos` repositories
//! (default 20), each repository behind its own git smart-HTTP server with Basic auth
//! (`tests/tools/git_http_server.py`), on SQLite.
//!
//! Times one check cycle (`gitsync::check_due`) three ways: the first (every head is new: a
//! deployment per stack), a steady one (nothing moved: one ref advertisement per repository,
//! nothing created), and one after a push to one repository (its stacks list the changed files
//! and deploy). Reports the ref advertisements the servers answered.
//!
//! cargo bench --bench git_sync -- [--stacks N] [--repos N]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::json;
use time::{Duration, OffsetDateTime};

use tarmac::app::{App, Config, EmbeddedConfig};
use tarmac::domain::gitsync::deployment_id;
use tarmac::domain::{JobStatus, Lease, StackRef};
use tarmac::ports::ClaimOutcome;

mod common;
#[path = "../../tests/support/git_server.rs"]
mod git_server;

use git_server::GitServer;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.email=b@example.com", "-c", "user.name=Bench"])
        .args(["-c", "commit.gpgsign=false"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A repository with `infra/main.tf`, and a git server in front of a copy of it.
struct Served {
    work: tempfile::TempDir,
    server: GitServer,
}

impl Served {
    fn start() -> Self {
        let work = tempfile::tempdir().unwrap();
        git(work.path(), &["init", "-q", "-b", "main"]);
        std::fs::create_dir_all(work.path().join("infra")).unwrap();
        std::fs::write(work.path().join("infra/main.tf"), "# one\n").unwrap();
        git(work.path(), &["add", "-A"]);
        git(work.path(), &["commit", "-q", "-m", "init"]);
        let server = GitServer::start(work.path(), "bench", "bench-pass");
        Self { work, server }
    }

    fn push(&self, file: &str) {
        std::fs::write(self.work.path().join(file), "# two\n").unwrap();
        git(self.work.path(), &["add", "-A"]);
        git(self.work.path(), &["commit", "-q", "-m", file]);
        let bare = self.server.bare();
        git(
            self.work.path(),
            &["push", "-q", bare.to_str().unwrap(), "main"],
        );
    }
}

#[tokio::main]
async fn main() {
    let stacks = common::arg("--stacks", 1000) as usize;
    let repos = (common::arg("--repos", 20) as usize).max(1);
    let dir = tempfile::tempdir().unwrap();
    let app = App::build(Config::Embedded(EmbeddedConfig::new(dir.path())))
        .await
        .unwrap();
    let deps = app.deps.clone();
    let served: Vec<Served> = (0..repos).map(|_| Served::start()).collect();
    // One stack's settings through the API (which seals the credentials), copied to the rest.
    let token = tarmac::crypto::new_token();
    deps.tokens
        .create_token(
            &tarmac::crypto::token_hash(&token),
            "bench",
            tarmac::domain::Role::Write,
            "bench",
        )
        .await
        .unwrap();
    let body = json!({
        "sourceContext": {"git": {"repoUrl": served[0].server.url, "branch": "main", "repoDir": "infra",
            "gitAuth": {"basicAuth": {"userName": {"secret": "bench"}, "password": {"secret": "bench-pass"}}}}},
        "gitSync": {"enabled": true, "interval": 60, "paths": ["infra/**"]},
    });
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/api/stacks/bench/template/settings/deployments/settings")
        .header("Authorization", format!("token {token}"))
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let resp = tower::ServiceExt::oneshot(tarmac::http::router(deps.clone()), req)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let template = StackRef::new("bench", "template", "settings").unwrap();
    let sealed = deps.stacks.get_settings(&template).await.unwrap().unwrap();
    deps.stacks.delete_stack(&template).await.unwrap();
    let mut all = Vec::new();
    for i in 0..stacks {
        let r = i % repos;
        let st = StackRef::new("bench", &format!("p{r}"), &format!("s{i}")).unwrap();
        let mut settings = sealed.settings.clone();
        settings["sourceContext"]["git"]["repoUrl"] = json!(served[r].server.url);
        deps.stacks.put_settings(&st, &settings, 0).await.unwrap();
        all.push((st, r));
    }
    let lookups = || served.iter().map(|s| s.server.ref_lookups()).sum::<usize>();
    let t0 = OffsetDateTime::now_utc();

    let timed = async |at: OffsetDateTime, what: &str| {
        let before = lookups();
        let start = Instant::now();
        let report = tarmac::gitsync::check_due(&deps, at).await.unwrap();
        let took = start.elapsed();
        println!(
            "{what}: {} stacks checked, {} deployed, {} ref advertisements ({} at the servers) in {:.1} ms ({:.3} ms a stack)",
            report.checked,
            report.deployed,
            report.lookups,
            lookups() - before,
            took.as_secs_f64() * 1e3,
            took.as_secs_f64() * 1e3 / report.checked.max(1) as f64,
        );
    };
    timed(t0, "first cycle (every head new)").await;

    // Every sync deployment succeeds, as a worker would have it.
    let lease = Lease {
        owner: "bench".into(),
        ttl: std::time::Duration::from_secs(600),
    };
    let heads: Vec<String> = served
        .iter()
        .map(|s| git(s.work.path(), &["rev-parse", "HEAD"]))
        .collect();
    for (st, r) in &all {
        let id = deployment_id(st, &heads[*r]);
        match deps.runs.claim(st, id, &lease).await.unwrap() {
            ClaimOutcome::Claimed(_) => {}
            other => panic!("{other:?}"),
        }
        deps.runs
            .finish(id, &lease, JobStatus::Succeeded)
            .await
            .unwrap();
    }
    timed(t0 + Duration::seconds(61), "steady cycle (results read)").await;
    timed(t0 + Duration::seconds(122), "steady cycle (nothing moved)").await;
    served[0].push("infra/main.tf");
    timed(t0 + Duration::seconds(183), "one repository pushed").await;
}
