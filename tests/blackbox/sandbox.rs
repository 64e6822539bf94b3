//! The sandbox (issue 17): a deployment's pre-run command tries every way out it can think of,
//! while a neighbouring stack's run is going, and every attempt fails; the same deployment's
//! Terraform run succeeds. The same attempts succeed with `--sandbox off`, which shows they are
//! real. (As root, here and in CI: Landlock and the dropped capabilities hold regardless.)

use std::collections::BTreeMap;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::escapes::{ATTEMPTS, assert_confined, attempts};
use crate::support::{TestApp, TestRepo, stack};

/// Every attempt the script makes here.
pub(crate) const NAMES: &[&str] = &[
    "server-environ",
    "server-fds",
    "server-cwd",
    "server-signal",
    "neighbour-environ",
    "other-run-dir",
    "write-other-run",
    "data-dir",
    "database",
    "secret-key",
    "write-data-dir",
    "other-state",
    "write-outside",
    "write-tmp",
    "abstract-socket",
    "scan-environ",
];

/// The pid of the `tarmac serve` on `data_dir`, from its command line.
fn server_pid(data_dir: &Path) -> u32 {
    let data = data_dir.to_string_lossy();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if args.get(1).is_some_and(|a| a == "serve") && args.iter().any(|a| *a == data) {
            return pid;
        }
    }
    panic!("no tarmac serve on {data}");
}

/// What one attacking run saw.
struct Seen {
    log: String,
    /// Attempt name -> `None` when it worked, else the error.
    attempts: BTreeMap<String, Option<String>>,
    outside: tempfile::TempDir,
    data: PathBuf,
    deployment: String,
}

/// Deploys a stack (its state: the one to steal), starts a neighbouring run that waits, then the
/// attacking run, whose Terraform update must succeed whatever its pre-run command found.
async fn attack(app: &TestApp) -> Seen {
    let repo = TestRepo::new();
    let data = std::fs::canonicalize(app.data()).unwrap();
    let pid = server_pid(app.data());

    let other = stack("sbx-other");
    app.post(
        &format!("/api/stacks/{other}/deployments/settings"),
        repo.settings(),
    )
    .await;
    let id = app.deploy(&other, json!({"operation": "update"})).await;
    app.wait_for(&other, &id, Some("succeeded")).await;
    let other_state = data.join("state/default/proj/sbx-other/terraform.tfstate");
    assert!(other_state.is_file(), "{}", other_state.display());

    let neighbour = stack("sbx-neighbour");
    let mut settings = repo.settings();
    settings["operationContext"] = json!({
        "preRunCommands": ["echo ready; sleep 61"],
        "environmentVariables": {"NEIGHBOUR_SECRET": {"secret": "neighbour-secret-value"}},
    });
    app.post(
        &format!("/api/stacks/{neighbour}/deployments/settings"),
        settings,
    )
    .await;
    let neighbour_id = app.deploy(&neighbour, json!({"operation": "update"})).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !app
        .log_text(&neighbour, &neighbour_id)
        .await
        .contains("ready")
    {
        assert!(
            Instant::now() < deadline,
            "the neighbouring run never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let abstract_name = format!("tarmac-test-{}", uuid::Uuid::new_v4());
    let _listener =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap())
            .unwrap();
    let outside = tempfile::tempdir().unwrap();
    let attacker = stack("sbx-attacker");
    let mut settings = repo.settings();
    settings["operationContext"] = json!({
        "preRunCommands": [ATTEMPTS],
        "environmentVariables": {
            "SERVER_PID": pid.to_string(),
            "DATA_DIR": data.display().to_string(),
            "OTHER_STATE": other_state.display().to_string(),
            "OTHER_RUN": data.join("work").join(&neighbour_id).display().to_string(),
            "NEIGHBOUR": "sleep 61",
            "OUTSIDE": outside.path().display().to_string(),
            "ABSTRACT": abstract_name,
            // The harness starts the server with this key in its environment.
            "SECRET_MARK": "AKIAPLATFORM",
            "SECRET_MARK_END": "SECRET",
        },
    });
    app.post(
        &format!("/api/stacks/{attacker}/deployments/settings"),
        settings,
    )
    .await;
    let deployment = app.deploy(&attacker, json!({"operation": "update"})).await;
    app.wait_for(&attacker, &deployment, Some("succeeded"))
        .await;
    let log = app.log_text(&attacker, &deployment).await;
    app.post(
        &format!("/api/stacks/{neighbour}/deployments/{neighbour_id}/cancel"),
        json!({}),
    )
    .await;

    let attempts = attempts(&log);
    Seen {
        log,
        attempts,
        outside,
        data,
        deployment,
    }
}

#[tokio::test]
async fn a_run_reaches_nothing_of_the_server_its_data_or_other_runs_and_terraform_still_works() {
    require!(Tools);
    let app = TestApp::spawn_with(&["--workers", "4"]).await;
    let seen = attack(&app).await;
    let log = &seen.log;

    assert_confined(log, NAMES);

    // Nothing of the platform's or the neighbour's secrets, nothing written outside the run.
    for secret in [
        "AKIAPLATFORMSECRET",
        "platform-secret-key-must-not-leak",
        "neighbour-secret-value",
    ] {
        assert!(!log.contains(secret), "{secret} leaked:\n{log}");
    }
    assert!(!seen.data.join("pwned").exists());
    assert_eq!(std::fs::read_dir(seen.outside.path()).unwrap().count(), 0);
    assert!(!Path::new(&format!("/tmp/tarmac-sandbox-pwned-{}", seen.deployment)).exists());

    // The same sandbox runs Terraform: init, apply, outputs.
    assert!(log.contains("Apply complete! Resources: 1 added"), "{log}");
    assert!(log.contains("Recorded 2 outputs: pw, val"), "{log}");
    let (status, _) = app.get("/api/orgs/default/deployments/metadata").await;
    assert_eq!(status, 200, "the server is still up");
}

#[tokio::test]
async fn the_same_attempts_work_with_the_sandbox_off() {
    require!(Tools);
    let app = TestApp::spawn_with(&["--workers", "4", "--sandbox", "off"]).await;
    let seen = attack(&app).await;
    let _ = std::fs::remove_file(format!("/tmp/tarmac-sandbox-pwned-{}", seen.deployment));
    assert!(seen.log.contains("Apply complete!"), "{}", seen.log);
    let worked: Vec<&str> = NAMES
        .iter()
        .copied()
        .filter(|n| seen.attempts.get(*n) == Some(&None))
        .collect();
    let mut expected: Vec<&str> = vec![
        "server-signal",
        "neighbour-environ",
        "other-run-dir",
        "write-other-run",
        "data-dir",
        "database",
        "secret-key",
        "write-data-dir",
        "other-state",
        "write-outside",
        "write-tmp",
        "abstract-socket",
    ];
    // Even off, the server is non-dumpable: only root's CAP_SYS_PTRACE reads it.
    if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0 {
        expected.extend(["server-environ", "server-fds", "server-cwd", "scan-environ"]);
    }
    expected.sort_by_key(|n| NAMES.iter().position(|m| m == n));
    assert_eq!(worked, expected, "{}", seen.log);
}

#[tokio::test]
async fn a_sandbox_grant_that_overlaps_the_data_dir_stops_the_server_at_start() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tarmac"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .arg("--sandbox-rw")
        .arg(data.path().join("cache"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--sandbox-rw") && stderr.contains("which runs may not see"),
        "{stderr}"
    );
}

/// A repository that commits the engine's backend override as a symbolic link to the server's
/// key. The server writes that file itself, unconfined: it replaces the link instead of writing
/// through it, so the key is untouched and the run succeeds.
#[tokio::test]
async fn a_committed_symlink_never_leads_the_server_to_write_its_key() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let key = std::fs::canonicalize(app.data())
        .unwrap()
        .join("secret.key");
    let before = std::fs::read(&key).unwrap();
    let repo = TestRepo::new();
    repo.commit(
        &[("infra/link-target", &key.display().to_string())],
        "the link's target",
    );
    let blob = repo.git(&["hash-object", "-w", "infra/link-target"]);
    repo.git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("120000,{blob},infra/tarmac_backend_override.tf"),
    ]);
    repo.git(&["commit", "-q", "-m", "a link to the server's key"]);
    let s = stack("sbx-link");
    app.post(
        &format!("/api/stacks/{s}/deployments/settings"),
        repo.settings(),
    )
    .await;
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    app.wait_for(&s, &id, Some("succeeded")).await;
    assert_eq!(
        std::fs::read(&key).unwrap(),
        before,
        "the server wrote through the link into its key"
    );
}
