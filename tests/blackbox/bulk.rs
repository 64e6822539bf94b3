//! Bulk deployments through a real server: 200 stacks in one request, with a result per stack;
//! its progress; cancelling the rest; a tag filter whose deployments run to the end; and the
//! limits, refused before anything is created.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, TestRepo};

async fn org_total(app: &TestApp) -> u64 {
    let (status, v) = app.get("/api/orgs/default/deployments").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["total"].as_u64().unwrap()
}

#[tokio::test]
async fn a_bulk_update_of_200_stacks_reports_each_and_can_be_cancelled() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    for i in 0..200 {
        let (status, v) = app
            .post(
                &format!("/api/stacks/default/fleet/s{i:03}/deployments/settings"),
                repo.settings(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    // Bad requests create nothing.
    let many: Vec<String> = (0..10_001).map(|i| format!("fleet/s{i}")).collect();
    for (body, want) in [
        (
            json!({"operation": "update", "stacks": many}),
            "at most 10000 stacks; this one names 10001",
        ),
        (json!({"operation": "update"}), "stacks (a list of"),
        (
            json!({"operation": "update", "stacks": []}),
            "at least one stack",
        ),
        (
            json!({"operation": "update", "stacks": ["fleet/s000"], "filter": {}}),
            "not both",
        ),
        (
            json!({"operation": "explode", "stacks": ["fleet/s000"]}),
            "explode",
        ),
        (json!({"stacks": ["fleet/s000"]}), "operation is required"),
        (
            json!({"operation": "update", "filter": {"tag": {"value": "x"}}}),
            "filter.tag",
        ),
        (
            json!({"operation": "update", "stacks": ["fleet/s000"], "approvals": {"operations": []}}),
            "approvals is a stack setting",
        ),
    ] {
        let (status, v) = app
            .post("/api/orgs/default/deployments/bulk", body.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["message"].as_str().unwrap().contains(want), "{v}");
    }
    assert_eq!(org_total(&app).await, 0);

    // The org is paused, so the 200 stay queued while they are looked at.
    let (status, _) = app
        .post("/api/orgs/default/deployments/pause", json!({}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let mut names: Vec<String> = (0..200).map(|i| format!("fleet/s{i:03}")).collect();
    names.extend([
        "fleet/missing".into(),
        "fleet/s007".into(),
        "no-slash".into(),
    ]);
    let started = Instant::now();
    let (status, bulk) = app
        .post(
            "/api/orgs/default/deployments/bulk",
            json!({"operation": "update", "stacks": names,
                   "operationContext": {"environmentVariables": {"WAVE": "1"}}}),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::ACCEPTED, "{bulk}");
    eprintln!("bulk create of 203 items took {took:?}");
    assert_eq!(
        (
            bulk["total"].as_u64(),
            bulk["created"].as_u64(),
            bulk["refused"].as_u64()
        ),
        (Some(203), Some(200), Some(3)),
        "{bulk}"
    );
    let items = bulk["items"].as_array().unwrap();
    assert_eq!(items[0]["stack"], "fleet/s000");
    assert_eq!(items[0]["status"], "created");
    assert_eq!(items[0]["version"], 1);
    let refusal = |i: usize| {
        (
            items[i]["status"].as_str(),
            items[i]["code"].as_u64(),
            items[i]["message"].as_str().unwrap_or_default(),
        )
    };
    assert_eq!(refusal(200).0, Some("refused"));
    assert_eq!(refusal(200).1, Some(404), "{}", items[200]);
    assert!(
        refusal(201).2.contains("listed more than once"),
        "{}",
        items[201]
    );
    assert!(
        refusal(202).2.contains("not a stack name"),
        "{}",
        items[202]
    );
    assert!(app.get("/api/stacks/default/fleet/missing").await.0 == StatusCode::NOT_FOUND);
    assert_eq!(org_total(&app).await, 200);
    // Each deployment is an ordinary one, with the request's override, started by `bulk`.
    let s = "default/fleet/s042";
    let d = app
        .deployment(s, items[42]["deploymentId"].as_str().unwrap())
        .await;
    assert_eq!(
        (d["initiator"].as_str(), d["status"].as_str()),
        (Some("bulk"), Some("not-started")),
        "{d}"
    );
    assert!(d.to_string().contains("\"WAVE\""), "{d}");

    let id = bulk["id"].as_str().unwrap();
    let (status, progress) = app
        .get(&format!("/api/orgs/default/deployments/bulk/{id}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{progress}");
    assert_eq!(
        progress["counts"],
        json!({"not-started": 200, "refused": 3}),
        "{progress}"
    );
    assert_eq!(progress["finished"], false);
    let (status, v) = app
        .get(&format!("/api/orgs/other/deployments/bulk/{id}"))
        .await;
    assert_ne!(status, StatusCode::OK, "{v}");
    let (status, v) = app
        .get(&format!(
            "/api/orgs/default/deployments/bulk/{}",
            uuid::Uuid::new_v4()
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");

    // Cancelled: every queued one is skipped.
    let (status, after) = app
        .post(
            &format!("/api/orgs/default/deployments/bulk/{id}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after["cancelled"]["dequeued"], 200, "{after}");
    assert_eq!(
        after["counts"],
        json!({"refused": 3, "skipped": 200}),
        "{after}"
    );
    assert_eq!(after["finished"], true);
    let (status, _) = app
        .post("/api/orgs/default/deployments/resume", json!({}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // By tag: three stacks tagged `wave: canary` are deployed, to the end.
    for i in [3, 50, 199] {
        let (status, v) = app
            .post(
                &format!("/api/stacks/default/fleet/s{i:03}/tags"),
                json!({"name": "wave", "value": "canary"}),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    }
    let (status, canary) = app
        .post(
            "/api/orgs/default/deployments/bulk",
            json!({"operation": "update", "filter": {"project": "fleet", "tag": {"name": "wave", "value": "canary"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{canary}");
    let stacks: Vec<&str> = canary["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["stack"].as_str().unwrap())
        .collect();
    assert_eq!(stacks, ["fleet/s003", "fleet/s050", "fleet/s199"]);
    let path = format!(
        "/api/orgs/default/deployments/bulk/{}",
        canary["id"].as_str().unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let done: Value = loop {
        let (_, p) = app.get(&path).await;
        if p["finished"] == true {
            break p;
        }
        assert!(Instant::now() < deadline, "{p}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(done["counts"], json!({"succeeded": 3}), "{done}");
    assert_eq!(done["items"][1]["deploymentStatus"], "succeeded");
}
