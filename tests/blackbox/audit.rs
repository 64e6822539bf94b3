//! The audit log through a real server: who changed what, from where, with what outcome; reads
//! and other orgs' changes not in it; no secret in it; admins only.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{TestApp, TestRepo, stack};

#[tokio::test]
async fn every_change_is_recorded_with_who_what_when_where_and_its_outcome() {
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let writer = app.create_token("default", "write");
    let s = stack("audited");
    let call = |token: String, method: Method, path: String, body: Option<Value>| {
        let app = &app;
        async move {
            let mut req = app
                .client
                .request(method, format!("{}{path}", app.url))
                .header("Authorization", format!("token {token}"))
                .header("User-Agent", "audit-test/1.0");
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.unwrap();
            (
                resp.status(),
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let mut settings = repo.settings();
    settings["operationContext"] =
        json!({"environmentVariables": {"API_KEY": {"secret": "very-secret-value"}}});
    let (status, _) = call(
        writer.clone(),
        Method::POST,
        format!("/api/stacks/{s}/deployments/settings"),
        Some(settings),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        writer.clone(),
        Method::POST,
        format!("/api/stacks/{s}/deployments/pause"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // A refused change is recorded with its status; a read is not recorded at all.
    let (status, _) = call(
        writer.clone(),
        Method::POST,
        format!("/api/stacks/{s}/deployments"),
        Some(json!({"operation": "explode"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    call(
        writer.clone(),
        Method::GET,
        format!("/api/stacks/{s}/deployments"),
        None,
    )
    .await;
    // Another org's change is its own.
    let other = app.create_token("other", "admin");
    call(
        other.clone(),
        Method::POST,
        "/api/orgs/other/deployments/pause".into(),
        None,
    )
    .await;

    let (status, v) = call(
        writer.clone(),
        Method::GET,
        "/api/orgs/default/auditlogs".into(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "admins only: {v}");
    let (status, log) = app.get("/api/orgs/default/auditlogs").await;
    assert_eq!(status, StatusCode::OK, "{log}");
    let events = log["auditLogEvents"].as_array().unwrap();
    let summary: Vec<(String, u64)> = events
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "POST /api/stacks/{org}/{project}/{stack}/deployments".to_string(),
                400
            ),
            (
                "POST /api/stacks/{org}/{project}/{stack}/deployments/pause".to_string(),
                204
            ),
            (
                "POST /api/stacks/{org}/{project}/{stack}/deployments/settings".to_string(),
                200
            ),
        ],
        "{log}"
    );
    let e = &events[2];
    assert_eq!(e["path"], format!("/api/stacks/{s}/deployments/settings"));
    assert_eq!(e["tokenName"], "api-token");
    assert_eq!(e["tokenID"].as_str().unwrap().len(), 24);
    assert_eq!(e["sourceIP"], "127.0.0.1");
    assert_eq!(e["userAgent"], "audit-test/1.0");
    assert_eq!(e["reqOrgAdmin"], false);
    assert!(e["timestamp"].as_i64().unwrap() > 1_700_000_000);
    let text = log.to_string();
    assert!(!text.contains("very-secret-value"), "{text}");
    assert!(!text.contains(&writer), "the token itself: {text}");

    // The other org's admin sees only its own; a bad time is a 400.
    let (_, theirs) = call(other, Method::GET, "/api/orgs/other/auditlogs".into(), None).await;
    let theirs = theirs["auditLogEvents"].as_array().unwrap();
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    assert_eq!(theirs[0]["path"], "/api/orgs/other/deployments/pause");
    let (status, _) = app
        .get("/api/orgs/default/auditlogs?startTime=yesterday")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, none) = app.get("/api/orgs/default/auditlogs?endTime=1000").await;
    assert_eq!(none["auditLogEvents"], json!([]), "{none}");
}

/// Each kind of change the issue names lands in the log (settings, deployments, approvals,
/// tokens, hooks, pauses, schedules, tags, stacks, bulk requests), and no secret sent with
/// any of them, nor any token, appears in it.
#[tokio::test]
async fn every_kind_of_change_is_recorded_and_no_secret_is() {
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let canary = "canary-7d1e-secret";
    let s = stack("kinds");
    let mut settings = repo.settings();
    settings["operationContext"] = json!({"environmentVariables": {"K": {"secret": canary}}});
    settings["approvals"] = json!({"operations": ["update"]});
    let ok = |status: StatusCode, v: &Value| assert!(status.is_success(), "{status}: {v}");
    let (st, v) = app
        .post(&format!("/api/stacks/{s}/deployments/settings"), settings)
        .await;
    ok(st, &v);
    let (st, v) = app
        .post(
            &format!("/api/stacks/{s}/tags"),
            json!({"name": "team", "value": "core"}),
        )
        .await;
    ok(st, &v);
    let (st, v) = app
        .post(
            &format!("/api/stacks/{s}/deployments/schedules"),
            json!({"scheduleCron": "0 3 * * *", "request": {"operation": "update"}}),
        )
        .await;
    ok(st, &v);
    let (st, v) = app
        .post("/api/orgs/default/hooks", json!({"organizationName": "default", "displayName": "audited", "payloadUrl": "http://127.0.0.1:9/hook", "secret": canary, "active": true}))
        .await;
    ok(st, &v);
    let (st, v) = app
        .post(
            "/api/orgs/default/tokens",
            json!({"name": "requester", "role": "write"}),
        )
        .await;
    ok(st, &v);
    let requester = v["tokenValue"].as_str().unwrap().to_string();
    let (st, v) = app
        .post(
            "/api/orgs/default/tokens",
            json!({"name": "short-lived", "role": "read"}),
        )
        .await;
    ok(st, &v);
    let (short_id, short_value) = (
        v["id"].as_str().unwrap().to_string(),
        v["tokenValue"].as_str().unwrap().to_string(),
    );
    let (st, v) = app
        .delete(&format!("/api/orgs/default/tokens/{short_id}"))
        .await;
    ok(st, &v);
    let (st, v) = app
        .post(&format!("/api/stacks/{s}/deployments/pause"), json!({}))
        .await;
    ok(st, &v);
    let (st, v) = app
        .request(
            reqwest::Method::POST,
            &format!("/api/stacks/{s}/deployments"),
            Some(&requester),
            Some(json!({"operation": "update"}).to_string().into_bytes()),
        )
        .await;
    ok(st, &v);
    let id = v["id"].as_str().unwrap().to_string();
    let (st, v) = app
        .post(
            &format!("/api/stacks/{s}/deployments/{id}/approve"),
            json!({"comment": "fine"}),
        )
        .await;
    ok(st, &v);
    let (st, v) = app
        .post("/api/stacks/default/proj", json!({"stackName": "signup", "deploymentSettings": {"operationContext": {"environmentVariables": {"K": {"secret": canary}}}}}))
        .await;
    ok(st, &v);
    let (st, v) = app
        .post(
            "/api/orgs/default/deployments/bulk",
            json!({"operation": "preview", "stacks": ["proj/kinds"]}),
        )
        .await;
    ok(st, &v);
    let (st, v) = app
        .post(
            &format!("/api/stacks/{s}/deployments/{id}/cancel"),
            json!({}),
        )
        .await;
    ok(st, &v);

    let (status, log) = app.get("/api/orgs/default/auditlogs").await;
    assert_eq!(status, StatusCode::OK, "{log}");
    let events: Vec<&str> = log["auditLogEvents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for want in [
        "POST /api/stacks/{org}/{project}/{stack}/deployments/settings",
        "POST /api/stacks/{org}/{project}/{stack}/tags",
        "POST /api/stacks/{org}/{project}/{stack}/deployments/schedules",
        "POST /api/orgs/{org}/hooks",
        "POST /api/orgs/{org}/tokens",
        "DELETE /api/orgs/{org}/tokens/{id}",
        "POST /api/stacks/{org}/{project}/{stack}/deployments/pause",
        "POST /api/stacks/{org}/{project}/{stack}/deployments",
        "POST /api/stacks/{org}/{project}/{stack}/deployments/{id}/approve",
        "POST /api/stacks/{org}/{project}",
        "POST /api/orgs/{org}/deployments/bulk",
        "POST /api/stacks/{org}/{project}/{stack}/deployments/{id}/cancel",
    ] {
        assert!(events.contains(&want), "{want} is not in {events:#?}");
    }
    let text = log.to_string();
    for secret in [canary, &requester, &short_value, &app.token] {
        assert!(!text.contains(secret), "{secret} is in the log: {text}");
    }
}
