//! Bad input gets a clear Pulumi-shaped 4xx and changes nothing.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestApp, TestRepo, stack};

/// Everything a bad request could have touched, as the API reports it.
async fn snapshot(app: &TestApp, s: &str) -> Value {
    let (_, settings) = app
        .get(&format!("/api/stacks/{s}/deployments/settings"))
        .await;
    let (_, list) = app
        .get(&format!("/api/stacks/{s}/deployments?pageSize=100"))
        .await;
    let (_, org) = app.get("/api/orgs/default/deployments?pageSize=100").await;
    let (_, meta) = app.get("/api/orgs/default/deployments/metadata").await;
    json!({"settings": settings, "list": list, "org": org, "meta": meta})
}

fn assert_error(status: reqwest::StatusCode, body: &Value, want: u16, contains: &str) {
    assert_eq!(status.as_u16(), want, "{body}");
    assert_eq!(
        body["code"], want,
        "error body must carry the status: {body}"
    );
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(
        msg.to_lowercase().contains(&contains.to_lowercase()),
        "message {msg:?} should mention {contains:?}"
    );
}

#[tokio::test]
async fn bad_requests_get_their_4xx_and_leave_the_store_unchanged() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("bad");
    app.post(
        &format!("/api/stacks/{s}/deployments/settings"),
        repo.settings(),
    )
    .await;
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    app.wait_for(&s, &id, Some("succeeded")).await;
    let before = snapshot(&app, &s).await;
    let other_org = app.create_token("other", "admin");
    let big = format!(
        "{{\"operation\":\"update\",\"pad\":\"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );

    let raw = |method: Method, path: String, body: &str, token: Option<String>| {
        let app = &app;
        let body = body.as_bytes().to_vec();
        async move {
            app.request(
                method,
                &path,
                Some(token.as_deref().unwrap_or(&app.token)),
                Some(body),
            )
            .await
        }
    };
    let dep = format!("/api/stacks/{s}/deployments");
    // (method, path, body, token other than the admin's, expected status, message fragment)
    type Case<'a> = (Method, String, String, Option<String>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (Method::POST, dep.clone(), "{\"operation\": \"update\",".into(), None, 400, "malformed JSON"),
        (Method::POST, format!("{dep}/settings"), "{not json}".into(), None, 400, "malformed JSON"),
        (Method::PUT, format!("{dep}/settings"), "[1,2]".into(), None, 400, "must be an object"),
        (Method::POST, dep.clone(), "{\"operation\": \"explode\"}".into(), None, 400, "unknown Operation 'explode'"),
        (Method::POST, dep.clone(), "{}".into(), None, 400, "operation is required"),
        (Method::POST, dep.clone(), "{\"operation\": \"update\", \"inheritSettings\": false}".into(), None, 400, "no source to deploy"),
        (Method::POST, format!("{dep}/settings"), "{\"operationContext\": {\"preRunCommands\": \"ls\"}}".into(), None, 400, "array of strings"),
        (Method::POST, format!("{dep}/settings"), "{\"sourceContext\": {\"git\": {\"repoUrl\": 42}}}".into(), None, 400, "sourceContext.git.repoUrl must be a string"),
        (Method::POST, dep.clone(), "{\"operation\": \"update\", \"sourceContext\": {\"git\": {\"repoUrl\": \"ext::sh -c id\"}}}".into(), None, 400, "unsupported scheme"),
        // Git takes these as arguments.
        (Method::POST, dep.clone(), "{\"operation\": \"update\", \"sourceContext\": {\"git\": {\"commit\": \"--output=/tmp/x\"}}}".into(), None, 400, "is not a commit id"),
        (Method::POST, format!("{dep}/settings"), "{\"sourceContext\": {\"git\": {\"branch\": \"--upload-pack=touch /tmp/x\"}}}".into(), None, 400, "is not a git ref name"),
        (Method::POST, dep.clone(), big, None, 413, "larger than"),
        (Method::POST, dep.clone(), "{\"operation\": \"update\"}".into(), Some(other_org.clone()), 404, "not found"),
        (Method::GET, format!("{dep}/{id}"), "".into(), Some(other_org.clone()), 404, "not found"),
        (Method::POST, format!("{dep}/{id}/cancel"), "".into(), Some(other_org), 404, "not found"),
        (Method::GET, format!("{dep}/version/0"), "".into(), None, 400, "not a deployment version"),
        (Method::GET, format!("{dep}/version/abc"), "".into(), None, 400, "not a deployment version"),
        (Method::GET, format!("{dep}/not-a-uuid"), "".into(), None, 400, "not a deployment id"),
        (Method::GET, format!("{dep}/not-a-uuid/logs"), "".into(), None, 400, "not a deployment id"),
        (Method::GET, format!("{dep}/{}", uuid_like()), "".into(), None, 404, "not found"),
        (Method::GET, format!("{dep}?pageSize=1000"), "".into(), None, 400, "pageSize"),
        (Method::GET, format!("{dep}?page=0"), "".into(), None, 400, "page must be"),
        (Method::GET, format!("{dep}?asc=maybe"), "".into(), None, 400, "invalid query"),
        (Method::GET, format!("{dep}/{id}/logs?job=0&step=0&count=1000"), "".into(), None, 400, "count must be"),
        (Method::GET, format!("{dep}/{id}/logs?job=0&step=99"), "".into(), None, 400, "does not exist"),
        (Method::GET, format!("{dep}/{id}/logs?continuationToken=zzz"), "".into(), None, 400, "continuation token"),
        (Method::GET, "/api/stacks/default/p%20q/dev/deployments".into(), "".into(), None, 400, "invalid project name"),
        // Names become paths on disk: `..` must not reach outside the stack's state directory.
        (Method::POST, "/api/stacks/default/proj".into(), "{\"stackName\": \"..\"}".into(), None, 400, "invalid stack name"),
        (Method::POST, format!("{dep}/settings/encrypt"), "{\"secret\": \"\"}".into(), None, 400, "must not be empty"),
        (Method::GET, "/api/nothing/here".into(), "".into(), None, 404, "no route"),
        (Method::PATCH, dep.clone(), "{}".into(), None, 405, "not allowed"),
    ];
    for (method, path, body, token, want, contains) in cases {
        let (status, v) = raw(method.clone(), path.clone(), &body, token).await;
        assert_error(status, &v, want, contains);
        assert_eq!(
            snapshot(&app, &s).await,
            before,
            "{method} {path} changed the store"
        );
    }
}

fn uuid_like() -> &'static str {
    "3f2b8c1e-9d4a-4e7b-8f1c-2a6d5e9b0c71"
}

#[tokio::test]
async fn a_deleted_stack_is_gone_with_its_deployments_and_state() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("gone");
    app.post(
        &format!("/api/stacks/{s}/deployments/settings"),
        repo.settings(),
    )
    .await;
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    app.wait_for(&s, &id, Some("succeeded")).await;
    assert!(app.data().join("state/default/proj/gone").exists());

    // Its state holds a resource: deleting it needs `force` (the CLI's) or `forceDestroy` (the
    // Service provider's), and a refusal removes nothing.
    for query in ["", "?force=false"] {
        let (status, v) = app.delete(&format!("/api/stacks/{s}{query}")).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["message"], "Bad Request: Stack still contains resources.");
    }
    assert!(app.data().join("state/default/proj/gone").exists());
    let (status, _) = app.get(&format!("/api/stacks/{s}/deployments/{id}")).await;
    assert_eq!(status, 200);
    let (status, _) = app.delete(&format!("/api/stacks/{s}?force=true")).await;
    assert_eq!(status, 204);
    assert!(!app.data().join("state/default/proj/gone").exists());
    for path in [
        format!("/api/stacks/{s}/deployments/{id}"),
        format!("/api/stacks/{s}/deployments/version/1"),
        format!("/api/stacks/{s}/deployments/settings"),
        format!("/api/stacks/{s}/deployments"),
        format!("/api/stacks/{s}/export"),
        format!("/api/stacks/{s}/deployments/metadata"),
    ] {
        let (status, v) = app.get(&path).await;
        assert_error(status, &v, 404, "");
    }
    let (status, v) = app
        .post(
            &format!("/api/stacks/{s}/deployments/{id}/cancel"),
            json!(null),
        )
        .await;
    assert_error(status, &v, 404, "not found");
    let (status, v) = app.delete(&format!("/api/stacks/{s}")).await;
    assert_error(status, &v, 404, "not found");
    let (_, org) = app.get("/api/orgs/default/deployments").await;
    assert_eq!(org["total"], 0);

    // The name can be used again, from version 1; its settings went with it.
    let (status, _) = app
        .post(
            &format!("/api/stacks/{s}/deployments"),
            json!({"operation": "update"}),
        )
        .await;
    assert_eq!(status, 400);
    let mut body = repo.settings();
    body["operation"] = json!("update");
    let id = app.deploy(&s, body).await;
    let d = app.wait_for(&s, &id, Some("succeeded")).await;
    assert_eq!(d["version"], 1);
}

#[tokio::test]
async fn a_stack_with_a_deployment_in_progress_cannot_be_deleted() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("busy");
    let mut settings = repo.settings();
    settings["operationContext"] = json!({"preRunCommands": ["sleep 30"]});
    app.post(&format!("/api/stacks/{s}/deployments/settings"), settings)
        .await;
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    app.wait_for(&s, &id, Some("running")).await;
    let (status, v) = app.delete(&format!("/api/stacks/{s}")).await;
    assert_error(status, &v, 409, "in progress");
    assert_eq!(app.deployment(&s, &id).await["status"], "running");
    app.post(
        &format!("/api/stacks/{s}/deployments/{id}/cancel"),
        json!(null),
    )
    .await;
    app.wait_for(&s, &id, Some("failed")).await;
    let (status, _) = app.delete(&format!("/api/stacks/{s}")).await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn local_repositories_need_the_operator_s_permission() {
    require!(Tools);
    let app = TestApp::spawn_strict(&[]).await;
    let repo = TestRepo::new();
    let s = stack("local");
    // Settings may name any URL; a deployment from the server's own disk is refused up front.
    let (status, _) = app
        .post(
            &format!("/api/stacks/{s}/deployments/settings"),
            repo.settings(),
        )
        .await;
    assert_eq!(status, 200);
    let (status, v) = app
        .post(
            &format!("/api/stacks/{s}/deployments"),
            json!({"operation": "update"}),
        )
        .await;
    assert_error(status, &v, 400, "--allow-local-repos");
    let (_, list) = app.get(&format!("/api/stacks/{s}/deployments")).await;
    assert_eq!(list["total"], 0);
}

#[tokio::test]
async fn dot_dot_names_are_refused_even_when_sent_raw() {
    // HTTP clients normalise `%2E%2E` segments away; a raw request does not.
    use std::io::{Read, Write};
    let app = TestApp::spawn().await;
    let addr = app.url.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "DELETE /api/stacks/default/%2E%2E/%2E%2E HTTP/1.1\r\nHost: {addr}\r\nAuthorization: token {}\r\nConnection: close\r\n\r\n",
        app.token
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("invalid project name '..'"), "{response}");
    assert!(app.data().join("tarmac.db").exists());
}
