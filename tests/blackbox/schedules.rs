//! Drift and TTL end to end: a real `tarmac serve` (whose ticker fires due schedules), real git,
//! real Terraform. Cron firing is tested with a fake clock in the contract suite, not by
//! waiting for real minutes here.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{TestApp, TestRepo, stack};

fn state_file(app: &TestApp, name: &str) -> std::path::PathBuf {
    app.data()
        .join("state/default/proj")
        .join(name)
        .join("terraform.tfstate")
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn drift_is_detected_recorded_remediated_and_gone() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("drifty");
    app.post(
        &format!("/api/stacks/{s}/deployments/settings"),
        repo.settings(),
    )
    .await;
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    app.wait_for(&s, &id, Some("succeeded")).await;

    // No drift yet.
    let id = app.deploy(&s, json!({"operation": "detect-drift"})).await;
    app.wait_for(&s, &id, Some("succeeded")).await;
    let (_, status) = app.get(&format!("/api/stacks/{s}/drift/status")).await;
    assert_eq!(status["driftDetected"], false, "{status}");

    // An out-of-band change, then detection with remediation asked for.
    let path = state_file(&app, "drifty");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["resources"][0]["instances"][0]["attributes"]["input"]["value"] =
        json!("changed-by-hand");
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    let detect = app
        .deploy(&s, json!({"operation": "detect-drift", "operationContext": {"options": {"remediateIfDriftDetected": true}}}))
        .await;
    app.wait_for(&s, &detect, Some("succeeded")).await;
    let (_, runs) = app.get(&format!("/api/stacks/{s}/drift/runs")).await;
    assert_eq!(runs["total"], 2, "{runs}");
    let (_, oldest_first) = app
        .get(&format!("/api/stacks/{s}/drift/runs?asc=true"))
        .await;
    assert_eq!(
        oldest_first["driftRuns"][0]["id"],
        runs["driftRuns"][1]["id"]
    );
    assert_eq!(
        app.get(&format!("/api/stacks/{s}/drift/runs?pageSize=0"))
            .await
            .0,
        400
    );
    let latest = &runs["driftRuns"][0];
    assert_eq!(latest["driftDetected"], true);
    assert_eq!(latest["deploymentId"], detect.as_str());
    assert_eq!(latest["status"], "succeeded");
    // The remediation follows, linked to the run, and puts the program's value back.
    let mut remediation = String::new();
    wait_until("the remediation to be linked", || {
        let app = &app;
        let s = &s;
        async move {
            let (_, run) = app
                .get(&format!(
                    "/api/stacks/{s}/drift/runs/{}",
                    latest["id"].as_str().unwrap()
                ))
                .await;
            run["remediateUpdate"]["status"] == "succeeded"
        }
    })
    .await;
    let (_, run) = app
        .get(&format!(
            "/api/stacks/{s}/drift/runs/{}",
            latest["id"].as_str().unwrap()
        ))
        .await;
    remediation.push_str(run["remediateUpdate"]["updateId"].as_str().unwrap());
    let d = app.deployment(&s, &remediation).await;
    assert_eq!(
        (d["pulumiOperation"].as_str(), d["initiator"].as_str()),
        (Some("remediate-drift"), Some("drift-remediation"))
    );
    let state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        state["resources"][0]["instances"][0]["attributes"]["input"]["value"],
        "one"
    );

    // Detection now finds none.
    let id = app.deploy(&s, json!({"operation": "detect-drift"})).await;
    app.wait_for(&s, &id, Some("succeeded")).await;
    let (_, status) = app.get(&format!("/api/stacks/{s}/drift/status")).await;
    assert_eq!(status["driftDetected"], false);
    assert_eq!(status["runInProgress"], false);
    let (_, meta) = app
        .get(&format!("/api/stacks/{s}/deployments/metadata"))
        .await;
    assert_eq!(meta["drift"]["latestDriftRun"], status["latestDriftRun"]);
}

#[tokio::test]
async fn a_ttl_schedule_destroys_and_deletes_the_stack_or_keeps_it_when_the_destroy_fails() {
    require!(Tools);
    // A 3 s lease makes the ticker run every second.
    let app = TestApp::spawn_with(&["--lease-secs", "3"]).await;
    let repo = TestRepo::new();
    let now = || {
        time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };

    // A destroy that fails keeps everything, and says so.
    let kept = stack("ttl-kept");
    let mut settings = repo.settings();
    app.post(
        &format!("/api/stacks/{kept}/deployments/settings"),
        settings.clone(),
    )
    .await;
    let id = app.deploy(&kept, json!({"operation": "update"})).await;
    app.wait_for(&kept, &id, Some("succeeded")).await;
    settings["operationContext"] = json!({"preRunCommands": ["echo destroy refused; exit 1"]});
    app.post(
        &format!("/api/stacks/{kept}/deployments/settings"),
        settings.clone(),
    )
    .await;
    let (status, sched) = app
        .post(
            &format!("/api/stacks/{kept}/deployments/ttl/schedules"),
            json!({"timestamp": now(), "deleteAfterDestroy": true}),
        )
        .await;
    assert_eq!(status, 200, "{sched}");
    let history = format!(
        "/api/stacks/{kept}/deployments/schedules/{}/history",
        sched["id"].as_str().unwrap()
    );
    wait_until("the TTL destroy to fail", || {
        let (app, history) = (&app, &history);
        async move { app.get(history).await.1["scheduleHistoryEvents"][0]["result"] == "failed" }
    })
    .await;
    let (_, h) = app.get(&history).await;
    let version = h["scheduleHistoryEvents"][0]["version"].as_i64().unwrap();
    let (_, d) = app
        .get(&format!("/api/stacks/{kept}/deployments/version/{version}"))
        .await;
    assert_eq!(d["pulumiOperation"], "destroy");
    let log = app.log_text(&kept, d["id"].as_str().unwrap()).await;
    assert!(log.contains("deleteAfterDestroy left the stack"), "{log}");
    assert_eq!(
        app.get(&format!("/api/stacks/{kept}/deployments/settings"))
            .await
            .0,
        200
    );
    assert!(state_file(&app, "ttl-kept").exists());

    // A destroy that succeeds removes the resources, then the stack with its settings and schedules.
    let gone = stack("ttl-gone");
    app.post(
        &format!("/api/stacks/{gone}/deployments/settings"),
        repo.settings(),
    )
    .await;
    let id = app.deploy(&gone, json!({"operation": "update"})).await;
    app.wait_for(&gone, &id, Some("succeeded")).await;
    let (status, _) = app
        .post(
            &format!("/api/stacks/{gone}/deployments/ttl/schedules"),
            json!({"timestamp": now(), "deleteAfterDestroy": true}),
        )
        .await;
    assert_eq!(status, 200);
    wait_until("the TTL stack to be deleted", || {
        let (app, gone) = (&app, &gone);
        async move {
            app.get(&format!("/api/stacks/{gone}/deployments/metadata"))
                .await
                .0
                == 404
        }
    })
    .await;
    assert_eq!(
        app.get(&format!("/api/stacks/{gone}/deployments/settings"))
            .await
            .0,
        404
    );
    assert_eq!(
        app.get(&format!("/api/stacks/{gone}/deployments/schedules"))
            .await
            .0,
        404
    );
    assert!(!state_file(&app, "ttl-gone").exists());
}

/// Pulumi's TTL pattern without its webhook processor: a `ttl` tag (minutes) arms a destroy
/// that long after each successful update, shown as the stack's TTL schedule, moved on by the
/// next update and removed with the tag.
#[tokio::test]
async fn a_ttl_tag_arms_a_destroy_after_each_successful_update() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("ttl-tagged");
    app.post(
        &format!("/api/stacks/{s}/deployments/settings"),
        repo.settings(),
    )
    .await;
    let (status, v) = app
        .post(
            &format!("/api/stacks/{s}/tags"),
            json!({"name": "ttl", "value": "90"}),
        )
        .await;
    assert_eq!(status, 204, "{v}");
    let path = format!("/api/stacks/{s}/deployments/schedules");
    let schedules = async |app: &TestApp| -> Vec<Value> {
        app.get(&path).await.1["schedules"]
            .as_array()
            .unwrap()
            .clone()
    };
    // A tag alone arms nothing: the clock starts at an update.
    assert!(schedules(&app).await.is_empty());
    let before = time::OffsetDateTime::now_utc();
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    app.wait_for(&s, &id, Some("succeeded")).await;
    assert!(
        app.log_text(&s, &id)
            .await
            .contains("ttl tag schedules its destroy")
    );
    let armed = schedules(&app).await;
    assert_eq!(armed.len(), 1, "{armed:?}");
    assert_eq!(armed[0]["definition"]["request"]["operation"], "destroy");
    let once = armed[0]["scheduleOnce"].as_str().unwrap();
    let due = time::PrimitiveDateTime::parse(
        once,
        &time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:3]"
        ),
    )
    .unwrap()
    .assume_utc();
    let after = time::OffsetDateTime::now_utc();
    assert!(
        due >= before + time::Duration::minutes(90) - time::Duration::seconds(1)
            && due <= after + time::Duration::minutes(90),
        "due {due}, updated between {before} and {after}"
    );
    // A preview does not move it; the next update does; removing the tag disarms it.
    let id = app.deploy(&s, json!({"operation": "preview"})).await;
    app.wait_for(&s, &id, Some("succeeded")).await;
    assert_eq!(schedules(&app).await[0]["scheduleOnce"], once);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    app.wait_for(&s, &id, Some("succeeded")).await;
    let moved = schedules(&app).await;
    assert_eq!(moved.len(), 1);
    assert!(moved[0]["scheduleOnce"].as_str().unwrap() > once);
    let (status, _) = app.delete(&format!("/api/stacks/{s}/tags/ttl")).await;
    assert_eq!(status, 204);
    assert!(schedules(&app).await.is_empty());
}
