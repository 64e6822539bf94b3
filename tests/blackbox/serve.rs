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
