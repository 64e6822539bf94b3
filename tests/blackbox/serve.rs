//! `tarmac serve` as a process: restarts, and one server per data dir.

use std::process::Command;

use crate::support::TestApp;

#[tokio::test]
async fn restarting_keeps_tokens_and_mints_no_new_bootstrap_token() {
    let mut app = TestApp::spawn().await;
    app.restart_with(&[]);
    let (status, _) = app.get("/api/orgs/default/deployments/metadata").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let app = TestApp::spawn().await;
    let out = Command::new(env!("CARGO_BIN_EXE_tarmac"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(app.data())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another tarmac serve is already using the data dir"),
        "{stderr}"
    );
    // The first server is unaffected.
    let (status, _) = app.get("/api/orgs/default/deployments/metadata").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_restart_kills_what_a_crashed_server_left_running() {
    require!(Tools);
    use crate::support::{TestRepo, stack};
    // The run tells its pid through a directory the sandbox lets it write.
    let out = tempfile::tempdir().unwrap();
    let mut app = TestApp::spawn_with(&["--sandbox-rw", &out.path().display().to_string()]).await;
    let repo = TestRepo::new();
    let s = stack("orphans");
    let pid_file = out.path().join("orphan.pid");
    let mut settings = repo.settings();
    // `exec` keeps the shell's pid for the sleep, so the file names the process to watch.
    settings["operationContext"] = serde_json::json!({"preRunCommands": [format!("echo $$ > {}; exec sleep 300", pid_file.display())]});
    app.post(&format!("/api/stacks/{s}/deployments/settings"), settings)
        .await;
    let id = app
        .deploy(&s, serde_json::json!({"operation": "update"}))
        .await;
    app.wait_for(&s, &id, Some("running")).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !pid_file.exists()
        || std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the pre-run command never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();

    app.kill();
    // SIGKILL of the server does not reach its runs' process groups.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        alive(pid),
        "expected the engine-side process to outlive the crash"
    );
    app.restart_with(&[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the restart left process {pid} running"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
