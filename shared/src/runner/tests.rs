//! The runner in-process, on the embedded store, with a script standing in for the engine: a
//! `terraform` on the run's `PATH` that logs what it was asked and writes the state file the
//! backend override names. Git is real.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{Runner, StopSignal};
use crate::app::{App, Config, EmbeddedConfig, RunSettings};
use crate::domain::{Deployment, JobStatus, Lease, StepStatus};
use crate::ports::LogQuery;
use crate::service::{CreateRequest, create};

/// The stand-in engine: `apply` writes one output into the state file, `plan` exits with
/// `$PLAN_EXIT`, `apply` sleeps `$APPLY_SLEEP` seconds first.
const ENGINE: &str = r#"#!/bin/sh
echo "fake terraform $*"
case "$1" in
  init) exit 0 ;;
  plan) exit "${PLAN_EXIT:-0}" ;;
  apply|destroy)
    sleep "${APPLY_SLEEP:-0}"
    state=$(sed -n 's/^ *path = "\(.*\)"/\1/p' tarmac_backend_override.tf)
    printf '{"outputs":{"greeting":{"value":"hello","type":"string","sensitive":false}}}' > "$state"
    ;;
esac
"#;

struct Fixture {
    app: App,
    _dir: tempfile::TempDir,
    repo: tempfile::TempDir,
}

fn git(dir: &Path, args: &[&str]) {
    let ok = std::process::Command::new("git")
        .args(["-c", "user.email=t@example.com", "-c", "user.name=Test"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

async fn fixture() -> Fixture {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("terraform"), ENGINE).unwrap();
    std::fs::set_permissions(
        bin.join("terraform"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("main.tf"), "# a program\n").unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "init"]);
    let config = EmbeddedConfig {
        local_repos: crate::domain::spec::LocalRepos::Any,
        run: RunSettings {
            child_path: format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()),
            deployment_timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(2),
            heartbeat_every: Duration::from_millis(100),
            // A unit test's executable cannot be the sandbox helper; the black-box tests run
            // every deployment sandboxed.
            sandbox: crate::sandbox::SandboxConfig {
                mode: crate::sandbox::SandboxMode::Off,
                ..Default::default()
            },
            agent_lease: crate::app::AGENT_LEASE,
            cache_max_bytes: crate::runner::cache::DEFAULT_MAX_BYTES,
            secrets_with_server_credentials: false,
        },
        ..EmbeddedConfig::new(&dir.path().join("data"))
    };
    let app = App::build(Config::Embedded(config)).await.unwrap();
    Fixture {
        app,
        _dir: dir,
        repo,
    }
}

impl Fixture {
    async fn create(&self, body: serde_json::Value) -> Deployment {
        let stack = crate::domain::StackRef::new("acme", "web", "dev").unwrap();
        let mut body = body;
        body["sourceContext"] = json!({"git": {"repoUrl": format!("file://{}", self.repo.path().display()), "branch": "main"}});
        create(
            &self.app.deps,
            &CreateRequest::new(&stack, &body, "api", "test"),
        )
        .await
        .unwrap()
    }

    /// Claims the next deployment and runs it to its end.
    async fn run(&self, runner: &Runner) -> (Deployment, JobStatus) {
        let lease = Lease {
            owner: "test-worker".into(),
            ttl: Duration::from_secs(10),
        };
        let claimed = self
            .app
            .deps
            .runs
            .claim_next(&lease, crate::domain::pools::ClaimQueue::BuiltIn)
            .await
            .unwrap()
            .expect("a deployment to claim");
        let d = claimed.deployment.clone();
        let status = runner
            .run(claimed, &lease, &StopSignal::new("stopped by the test"))
            .await;
        let d = self
            .app
            .deps
            .deployments
            .get_deployment(&d.stack, d.id)
            .await
            .unwrap()
            .unwrap();
        (d, status)
    }

    async fn log(&self, d: &Deployment) -> String {
        let entries = self
            .app
            .deps
            .logs
            .read_logs(
                d.id,
                LogQuery::Stream {
                    after: 0,
                    limit: 10_000,
                },
            )
            .await
            .unwrap();
        entries
            .iter()
            .map(|e| match (&e.header, &e.line) {
                (Some(h), _) => format!("## {h}\n"),
                (None, l) => l.clone().unwrap_or_default(),
            })
            .collect()
    }
}

fn steps(d: &Deployment) -> Vec<(String, StepStatus)> {
    d.steps.iter().map(|s| (s.name.clone(), s.status)).collect()
}

#[tokio::test]
async fn a_run_goes_through_its_steps_masks_secrets_and_records_outputs() {
    let f = fixture().await;
    f.create(json!({"operation": "update", "operationContext": {
        "preRunCommands": ["echo the password is $PASSWORD"],
        "environmentVariables": {"PASSWORD": {"secret": "hunter2-xyz"}},
    }}))
    .await;
    let (d, status) = f.run(&f.app.runner).await;
    assert_eq!(status, JobStatus::Succeeded);
    assert_eq!(d.status, JobStatus::Succeeded);
    let ok = StepStatus::Succeeded;
    assert_eq!(
        steps(&d),
        [
            ("Get source".to_string(), ok),
            ("Pre-run command 1".to_string(), ok),
            ("pulumi update".to_string(), ok),
            ("Record outputs".to_string(), ok),
        ]
    );
    let log = f.log(&d).await;
    assert!(log.contains("the password is [secret]"), "{log}");
    assert!(!log.contains("hunter2-xyz"), "{log}");
    assert!(log.contains("fake terraform init"), "{log}");
    assert!(log.contains("fake terraform apply -auto-approve"), "{log}");
    assert!(log.contains("Recorded 1 outputs: greeting"), "{log}");
    let outputs = f.app.deps.stacks.get_outputs(&d.stack).await.unwrap();
    assert_eq!(outputs, Some(json!({"greeting": {"value": "hello"}})));
}

#[tokio::test]
async fn a_failing_step_fails_the_run_and_no_later_step_starts() {
    let f = fixture().await;
    f.create(json!({"operation": "update", "operationContext": {"preRunCommands": ["exit 3"]}}))
        .await;
    let (d, status) = f.run(&f.app.runner).await;
    assert_eq!(status, JobStatus::Failed);
    assert_eq!(
        steps(&d),
        [
            ("Get source".to_string(), StepStatus::Succeeded),
            ("Pre-run command 1".to_string(), StepStatus::Failed),
        ]
    );
    let log = f.log(&d).await;
    assert!(log.contains("exited with code 3"), "{log}");
    assert!(!log.contains("fake terraform"), "{log}");
}

#[tokio::test]
async fn exit_code_2_of_a_drift_plan_is_drift_not_failure() {
    let f = fixture().await;
    f.create(json!({"operation": "detect-drift", "operationContext": {"environmentVariables": {"PLAN_EXIT": "2"}}}))
        .await;
    let (d, status) = f.run(&f.app.runner).await;
    assert_eq!(status, JobStatus::Succeeded);
    let log = f.log(&d).await;
    assert!(log.contains("Drift detected"), "{log}");
    let page = crate::domain::PageRequest {
        page: 1,
        page_size: 10,
        ascending: false,
    };
    let runs = f.app.deps.drift.drift_runs(&d.stack, page).await.unwrap();
    assert_eq!(runs.items.len(), 1);
    assert!(runs.items[0].drift_detected);

    // Any other non-zero exit of the plan fails the run.
    f.create(json!({"operation": "detect-drift", "operationContext": {"environmentVariables": {"PLAN_EXIT": "1"}}}))
        .await;
    assert_eq!(f.run(&f.app.runner).await.1, JobStatus::Failed);
}

#[tokio::test]
async fn a_cancel_stops_the_engine_and_fails_the_run() {
    let f = fixture().await;
    let d = f
        .create(json!({"operation": "update", "operationContext": {"environmentVariables": {"APPLY_SLEEP": "30"}}}))
        .await;
    let deps = Arc::clone(&f.app.deps);
    let (stack, id) = (d.stack.clone(), d.id);
    let canceller = tokio::spawn(async move {
        // Once the engine is applying, cancel.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the engine step never started"
            );
            let d = deps
                .deployments
                .get_deployment(&stack, id)
                .await
                .unwrap()
                .unwrap();
            if d.steps.iter().any(|s| s.name == "pulumi update") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        deps.deployments
            .cancel_deployment(&stack, id)
            .await
            .unwrap()
    });
    let started = std::time::Instant::now();
    let (d, status) = f.run(&f.app.runner).await;
    canceller.await.unwrap();
    assert_eq!(status, JobStatus::Failed);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the sleep was not stopped"
    );
    let log = f.log(&d).await;
    assert!(log.contains("Deployment cancelled."), "{log}");
    assert!(!log.contains("Recorded"), "{log}");
}

#[tokio::test]
async fn lines_of_a_step_that_never_pauses_are_stored_as_it_goes() {
    let f = fixture().await;
    // 100 lines, 30 ms apart: never a pause, and fewer than a batch. Were lines held until the
    // step paused or a batch filled, none would be stored before the step ends (3 s).
    let d = f
        .create(
            json!({"operation": "update", "operationContext": {"preRunCommands": [
                "i=0; while [ $i -lt 100 ]; do echo tick $i; i=$((i+1)); sleep 0.03; done"
            ]}}),
        )
        .await;
    let deps = Arc::clone(&f.app.deps);
    let id = d.id;
    let watcher = tokio::spawn(async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let entries = deps
                .logs
                .read_logs(
                    id,
                    LogQuery::Stream {
                        after: 0,
                        limit: 10_000,
                    },
                )
                .await
                .unwrap();
            let ticks: Vec<String> = entries
                .iter()
                .filter_map(|e| e.line.clone())
                .filter(|l| l.starts_with("tick "))
                .collect();
            if !ticks.is_empty() {
                return ticks;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no tick was ever stored"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (_, status) = f.run(&f.app.runner).await;
    assert_eq!(status, JobStatus::Succeeded);
    let first_seen = watcher.await.unwrap();
    assert!(
        first_seen.len() < 100,
        "the first ticks were stored only when the step ended: {} at once",
        first_seen.len()
    );
}
