//! The engine lifecycle through the API, with real git and real Terraform.

use serde_json::{Value, json};

use crate::support::{TestApp, TestRepo, stack};

fn state_file(app: &TestApp, name: &str) -> std::path::PathBuf {
    app.data()
        .join("state/default/proj")
        .join(name)
        .join("terraform.tfstate")
}

fn resource_input(state: &Value) -> String {
    state["resources"][0]["instances"][0]["attributes"]["input"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn read_state(app: &TestApp, name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(state_file(app, name)).unwrap()).unwrap()
}

#[tokio::test]
async fn every_operation_runs_terraform_against_persistent_state() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("life");
    let (status, _) = app
        .post(
            &format!("/api/stacks/{s}/deployments/settings"),
            repo.settings(),
        )
        .await;
    assert_eq!(status, 200);

    // update creates the resource; steps are the documented four, all succeeded.
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    let d = app.wait_for(&s, &id, Some("succeeded")).await;
    let steps: Vec<(&str, &str)> = d["jobs"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| (st["name"].as_str().unwrap(), st["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("Get source", "succeeded"),
            ("pulumi update", "succeeded"),
            ("Record outputs", "succeeded")
        ]
    );
    let log = app.log_text(&s, &id).await;
    assert!(log.contains("1 added, 0 changed, 0 destroyed"), "{log}");
    assert_eq!(resource_input(&read_state(&app, "life")), "one");

    // Outputs are recorded, the sensitive one only as a Pulumi secret.
    let (_, export) = app.get(&format!("/api/stacks/{s}/export")).await;
    let outputs = &export["deployment"]["resources"][0]["outputs"];
    assert_eq!(outputs["val"], "one");
    assert_eq!(
        outputs["pw"]["4dabf18193072939515e22adb298388d"],
        "1b47061264138c4ac30d75fd1eb44270"
    );
    assert!(!export.to_string().contains("sensitive-output"));

    // A second update sees the first one's resources: nothing to do.
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    app.wait_for(&s, &id, Some("succeeded")).await;
    assert!(app.log_text(&s, &id).await.contains("No changes."));

    // A request's settings are merged over the stack's for that run only.
    let id = app
        .deploy(&s, json!({"operation": "preview", "operationContext": {"environmentVariables": {"TF_VAR_v": "two"}}}))
        .await;
    app.wait_for(&s, &id, Some("succeeded")).await;
    let log = app.log_text(&s, &id).await;
    assert!(log.contains("1 to change"), "{log}");
    assert!(
        !log.contains("Record outputs"),
        "preview records no outputs"
    );
    assert_eq!(
        resource_input(&read_state(&app, "life")),
        "one",
        "preview must not change state"
    );

    let id = app.deploy(&s, json!({"operation": "refresh"})).await;
    app.wait_for(&s, &id, Some("succeeded")).await;
    assert!(app.log_text(&s, &id).await.contains("-refresh-only"));

    // detect-drift with no drift.
    let id = app.deploy(&s, json!({"operation": "detect-drift"})).await;
    app.wait_for(&s, &id, Some("succeeded")).await;
    assert!(app.log_text(&s, &id).await.contains("No drift detected."));

    // An out-of-band change to the recorded state is drift; detecting it changes nothing.
    let mut state = read_state(&app, "life");
    state["resources"][0]["instances"][0]["attributes"]["input"]["value"] =
        json!("changed-by-hand");
    std::fs::write(
        state_file(&app, "life"),
        serde_json::to_vec_pretty(&state).unwrap(),
    )
    .unwrap();
    let before = std::fs::read(state_file(&app, "life")).unwrap();
    let id = app.deploy(&s, json!({"operation": "detect-drift"})).await;
    app.wait_for(&s, &id, Some("succeeded")).await;
    let log = app.log_text(&s, &id).await;
    assert!(log.contains("Drift detected"), "{log}");
    assert_eq!(
        std::fs::read(state_file(&app, "life")).unwrap(),
        before,
        "detect-drift must not write state"
    );

    // remediate-drift puts the program's value back.
    let id = app
        .deploy(&s, json!({"operation": "remediate-drift"}))
        .await;
    app.wait_for(&s, &id, Some("succeeded")).await;
    assert_eq!(resource_input(&read_state(&app, "life")), "one");

    // destroy removes the resources and clears the outputs.
    let id = app.deploy(&s, json!({"operation": "destroy"})).await;
    app.wait_for(&s, &id, Some("succeeded")).await;
    assert!(app.log_text(&s, &id).await.contains("1 destroyed"));
    assert!(
        read_state(&app, "life")["resources"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let (_, export) = app.get(&format!("/api/stacks/{s}/export")).await;
    assert_eq!(export["deployment"]["resources"][0]["outputs"], json!({}));

    // Versions count up per stack and the list is newest first.
    let (_, list) = app
        .get(&format!("/api/stacks/{s}/deployments?pageSize=100"))
        .await;
    let versions: Vec<i64> = list["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, (1..=8).rev().collect::<Vec<_>>());
}

#[tokio::test]
async fn secrets_are_masked_and_the_child_gets_a_clean_environment() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("secrets");
    let mut settings = repo.settings();
    settings["operationContext"] = json!({
        "preRunCommands": ["echo \"the password is $DB_PASSWORD\"", "env"],
        "environmentVariables": {"DB_PASSWORD": {"secret": "correct-horse-battery"}, "REGION": "eu-west-1"},
    });
    app.post(&format!("/api/stacks/{s}/deployments/settings"), settings)
        .await;
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    let d = app.wait_for(&s, &id, Some("succeeded")).await;
    let log = app.log_text(&s, &id).await;
    assert!(log.contains("the password is [secret]"), "{log}");
    assert!(log.contains("DB_PASSWORD=[secret]"));
    assert!(log.contains("REGION=eu-west-1"));
    assert!(!log.contains("correct-horse-battery"));
    // The server was started with AWS credentials and a data dir; none of it reaches the run.
    for leaked in [
        "AKIAPLATFORMSECRET",
        "platform-secret-key-must-not-leak",
        "TARMAC_DATA_DIR",
        "secret.key",
    ] {
        assert!(
            !log.contains(leaked),
            "{leaked} leaked into the run:\n{log}"
        );
    }
    // The deployment shows secret variables without values.
    let vars = d["configuration"]["environmentVariables"]
        .as_array()
        .unwrap();
    assert!(vars.contains(&json!({"name": "DB_PASSWORD", "secret": true})));
    assert!(vars.contains(&json!({"name": "REGION", "value": "eu-west-1", "secret": false})));
    // Settings never return plaintext.
    let (_, got) = app
        .get(&format!("/api/stacks/{s}/deployments/settings"))
        .await;
    assert!(!got.to_string().contains("correct-horse-battery"));
    // Nor does the database file.
    let db = std::fs::read(app.data().join("tarmac.db")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains("correct-horse-battery"));
}

#[tokio::test]
async fn source_is_checked_out_at_a_commit_tag_or_branch() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let first = repo.git(&["rev-parse", "HEAD"]);
    repo.git(&["tag", "v1"]);
    repo.commit(
        &[(
            "infra/main.tf",
            &crate::support::PROGRAM.replace("\"one\"", "\"two\""),
        )],
        "second",
    );
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.commit(
        &[(
            "infra/main.tf",
            &crate::support::PROGRAM.replace("\"one\"", "\"three\""),
        )],
        "third",
    );
    repo.git(&["checkout", "-q", "main"]);
    let s = stack("refs");
    app.post(
        &format!("/api/stacks/{s}/deployments/settings"),
        repo.settings(),
    )
    .await;

    let cases = [
        (json!({"commit": first}), "one"),
        (json!({"tag": "v1"}), "one"),
        (json!({"branch": "refs/heads/main"}), "two"),
        (json!({"branch": "feature"}), "three"),
    ];
    for (git, want) in cases {
        let id = app
            .deploy(
                &s,
                json!({"operation": "update", "sourceContext": {"git": git}}),
            )
            .await;
        app.wait_for(&s, &id, Some("succeeded")).await;
        let (_, export) = app.get(&format!("/api/stacks/{s}/export")).await;
        assert_eq!(
            export["deployment"]["resources"][0]["outputs"]["val"], want,
            "{git}"
        );
    }

    // A commit that does not exist fails the source step with git's own message.
    let id = app.deploy(&s, json!({"operation": "update", "sourceContext": {"git": {"commit": "0123456789abcdef0123456789abcdef01234567"}}})).await;
    let d = app.wait_for(&s, &id, Some("failed")).await;
    assert_eq!(d["jobs"][0]["steps"][0]["status"], "failed");
    assert!(
        app.log_text(&s, &id)
            .await
            .contains("Step 'Get source' failed.")
    );
}

#[tokio::test]
async fn a_failing_pre_run_command_fails_the_deployment_and_stops_there() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("prerun");
    let mut settings = repo.settings();
    settings["operationContext"] =
        json!({"preRunCommands": ["echo first", "echo boom >&2; exit 3", "echo never"]});
    app.post(&format!("/api/stacks/{s}/deployments/settings"), settings)
        .await;
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    let d = app.wait_for(&s, &id, Some("failed")).await;
    let statuses: Vec<&str> = d["jobs"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["succeeded", "succeeded", "failed"]);
    let log = app.log_text(&s, &id).await;
    assert!(
        log.contains("boom") && log.contains("exited with code 3"),
        "{log}"
    );
    assert!(!log.contains("never"));
    // Step mode reads one step's lines; a finished step has no nextOffset.
    let (_, step) = app
        .get(&format!(
            "/api/stacks/{s}/deployments/{id}/logs?job=0&step=2&offset=0&count=100"
        ))
        .await;
    assert_eq!(step["__type"], "DeploymentLogsStep");
    assert_eq!(step["name"], "Pre-run command 2");
    assert!(step.get("nextOffset").is_none(), "{step}");
    let text: String = step["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert!(text.contains("boom") && !text.contains("first"));
    // Paging through a step: offset and count.
    let (_, page) = app
        .get(&format!(
            "/api/stacks/{s}/deployments/{id}/logs?job=0&step=2&offset=1&count=1"
        ))
        .await;
    assert_eq!(page["lines"].as_array().unwrap().len(), 1);
    assert_eq!(page["nextOffset"], 2);
}
