//! The worker's sandbox (issue 17), on the emulator: `best-effort`, Lambda's default, applies
//! everything this kernel has (Landlock, its scopes, no capabilities, limits), so a run's
//! pre-run command reaches nothing of the worker, of another run or of another stack, and the
//! same run's Terraform update succeeds.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};

use serde_json::json;
use tarmac::sandbox::SandboxMode;

use super::*;
use crate::escapes::{ATTEMPTS, assert_confined};

/// Every attempt the script makes against the worker.
const NAMES: &[&str] = &[
    "server-environ",
    "server-fds",
    "server-cwd",
    "server-signal",
    "other-run-dir",
    "write-other-run",
    "other-state",
    "write-outside",
    "write-tmp",
    "abstract-socket",
];

#[tokio::test]
async fn best_effort_confines_each_run_of_the_worker_with_all_this_kernel_has() {
    require!(Emulator, Tools);
    let env = Env::new().await;
    assert_eq!(env.app.runner.sandbox().mode(), SandboxMode::BestEffort);

    // A first stack's run leaves its state in the worker's state directory; a run cut off in
    // an earlier invocation left its directory.
    env.api("apigw-v2-patch-settings.json", "").await;
    let (status, created) = env.api("apigw-v2-create-deployment.json", "").await;
    assert_eq!(status, 202, "{created}");
    assert!(env.work(env.receive().await).await.is_empty());
    let other_state = env.work.path().join("state/acme/web/dev/terraform.tfstate");
    assert!(other_state.is_file(), "{}", other_state.display());
    let other_run = env.work.path().join("work/an-earlier-run");
    std::fs::create_dir_all(&other_run).unwrap();
    std::fs::write(other_run.join("token"), "an earlier run's secret").unwrap();

    let abstract_name = format!("tarmac-worker-{}", uuid::Uuid::new_v4());
    let _listener =
        UnixListener::bind_addr(&UnixAddr::from_abstract_name(abstract_name.as_bytes()).unwrap())
            .unwrap();
    let outside = tempfile::tempdir().unwrap();
    let s = "/api/stacks/acme/web/attacker";
    let settings = json!({
        "sourceContext": {"git": {
            "repoUrl": format!("file://{}", env.repo.path().display()),
            "branch": "main",
            "repoDir": "infra",
        }},
        "operationContext": {
            "preRunCommands": [ATTEMPTS],
            "environmentVariables": {
                // In-process, the worker is this test's own process.
                "SERVER_PID": std::process::id().to_string(),
                "OTHER_STATE": other_state.display().to_string(),
                "OTHER_RUN": other_run.display().to_string(),
                "OUTSIDE": outside.path().display().to_string(),
                "ABSTRACT": abstract_name,
            },
        },
    });
    let (status, v) = env
        .call(
            "POST",
            &format!("{s}/deployments/settings"),
            Some(&settings.to_string()),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, created) = env
        .call(
            "POST",
            &format!("{s}/deployments"),
            Some(r#"{"operation": "update"}"#),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap();
    assert!(env.work(env.receive().await).await.is_empty());

    let (_, logs) = env
        .call("GET", &format!("{s}/deployments/{id}/logs"), None)
        .await;
    let log: String = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["line"].as_str())
        .collect();
    let (_, d) = env
        .call("GET", &format!("{s}/deployments/{id}"), None)
        .await;
    assert_eq!(d["status"], "succeeded", "{log}");
    assert_confined(&log, NAMES);
    assert!(!log.contains("an earlier run's secret"), "{log}");
    assert!(!other_run.join("pwned").exists());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    assert!(
        log.contains("Apply complete! Resources: 1 added"),
        "the same sandbox runs Terraform:\n{log}"
    );
}
