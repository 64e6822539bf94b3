//! What the web console stands on, from the server's side: its pages and files with strict
//! headers, the live stream of a deployment, the org overview, and admins' tokens. (The
//! console itself is driven in a real browser by `tests/console/`.)

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, TestRepo, stack};

async fn get_raw(app: &TestApp, path: &str) -> reqwest::Response {
    app.client
        .get(format!("{}{path}", app.url))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_console_is_served_at_the_root_and_deep_links_with_strict_headers() {
    let app = TestApp::spawn().await;
    for (path, root) in [
        ("/", ""),
        ("/default/proj/dev/deployments/3", "../../../../"),
        ("/default", ""),
        ("/default/", "../"),
    ] {
        let resp = get_raw(&app, path).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let h = resp.headers().clone();
        assert!(
            h["content-type"].to_str().unwrap().starts_with("text/html"),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{csp}");
        }
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("http"),
            "{csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        let html = resp.text().await.unwrap();
        // Its files relative to the path, which works under any prefix a gateway or proxy
        // removed; the path itself for the app to find that prefix.
        assert!(
            html.contains(&format!("src=\"{root}console/js/app.js\"")),
            "{html}"
        );
        assert!(
            html.contains(&format!("<meta name=\"tarmac-path\" content=\"{path}\">")),
            "{html}"
        );
        // No inline script: the page's only script is the app's file.
        assert!(!html.contains("<script>"), "{html}");
    }
    let js = get_raw(&app, "/console/js/app.js").await;
    assert_eq!(js.status(), StatusCode::OK);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    for (path, status) in [
        ("/console/nope.js", StatusCode::NOT_FOUND),
        ("/api/nope", StatusCode::NOT_FOUND),
        ("/oidc/nope", StatusCode::NOT_FOUND),
    ] {
        let resp = get_raw(&app, path).await;
        assert_eq!(resp.status(), status, "{path}");
        assert_ne!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/html; charset=utf-8",
            "{path}"
        );
    }
    // API answers carry the same protections.
    let (status, _) = app.get("/api/user").await;
    assert_eq!(status, StatusCode::OK);
    let resp = app
        .client
        .get(format!("{}/api/user", app.url))
        .header("Authorization", format!("token {}", app.token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
}

/// The server-sent events of one deployment: `(event, data)` pairs until `end` or the deadline.
async fn sse(app: &TestApp, path: &str, token: &str) -> (StatusCode, Vec<(String, Value)>) {
    let mut resp = app
        .client
        .get(format!("{}{path}", app.url))
        .header("Authorization", format!("token {token}"))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    if status != StatusCode::OK {
        return (status, vec![]);
    }
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut buf, mut events) = (String::new(), vec![]);
    while Instant::now() < deadline {
        let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(30), resp.chunk())
            .await
            .unwrap()
        else {
            break;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut event, mut data) = (String::from("message"), String::new());
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ").or(line.strip_prefix("event:")) {
                    event = e.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
                    data.push_str(d);
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            let done = event == "end";
            events.push((event, serde_json::from_str(&data).unwrap()));
            if done {
                return (status, events);
            }
        }
    }
    (status, events)
}

#[tokio::test]
async fn a_live_stream_carries_status_changes_and_every_line_once_in_order() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("live");
    app.post(
        &format!("/api/stacks/{s}/deployments/settings"),
        repo.settings(),
    )
    .await;
    let id = app
        .deploy(&s, json!({"operation": "update", "operationContext": {"preRunCommands": ["for i in 1 2 3; do echo tick $i; sleep 0.2; done"]}}))
        .await;
    // Opened while the deployment is queued or starting: it follows it to the end.
    let (status, events) = sse(
        &app,
        &format!("/api/stacks/{s}/deployments/{id}/stream"),
        &app.token,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(events.first().map(|e| e.0.as_str()), Some("deployment"));
    assert_eq!(
        events.last().map(|e| e.0.as_str()),
        Some("end"),
        "{events:?}"
    );
    let statuses: Vec<&str> = events
        .iter()
        .filter(|e| e.0 == "deployment")
        .map(|e| e.1["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.last(), Some(&"succeeded"), "{statuses:?}");
    assert!(
        statuses.len() >= 2,
        "status changes are sent as they happen: {statuses:?}"
    );
    let logs: Vec<&Value> = events
        .iter()
        .filter(|e| e.0 == "log")
        .map(|e| &e.1)
        .collect();
    let seqs: Vec<i64> = logs.iter().map(|l| l["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let streamed: String = logs
        .iter()
        .map(|l| match l["header"].as_str() {
            Some(h) => format!("## {h}\n"),
            None => l["line"].as_str().unwrap().to_string(),
        })
        .collect();
    // Exactly the log the polling API serves, nothing lost, nothing twice.
    assert_eq!(streamed, app.log_text(&s, &id).await);
    assert!(
        streamed.contains("tick 3") && streamed.contains("Apply complete"),
        "{streamed}"
    );

    // Resuming after a line sends only what follows it.
    let middle = seqs[seqs.len() / 2];
    let (_, again) = sse(
        &app,
        &format!("/api/stacks/{s}/deployments/{id}/stream?after={middle}"),
        &app.token,
    )
    .await;
    let resumed: Vec<i64> = again
        .iter()
        .filter(|e| e.0 == "log")
        .map(|e| e.1["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        resumed,
        seqs.iter()
            .copied()
            .filter(|n| *n > middle)
            .collect::<Vec<_>>()
    );
    // Another org's token learns nothing.
    let stranger = app.create_token("acme", "admin");
    let (status, _) = sse(
        &app,
        &format!("/api/stacks/{s}/deployments/{id}/stream"),
        &stranger,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_org_overview_lists_stacks_with_their_last_deployment_filtered_and_paged() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    for name in ["web-a", "web-b", "db"] {
        let s = stack(name);
        app.post(
            &format!("/api/stacks/{s}/deployments/settings"),
            repo.settings(),
        )
        .await;
    }
    let id = app
        .deploy(&stack("web-b"), json!({"operation": "update"}))
        .await;
    app.wait_for(&stack("web-b"), &id, Some("succeeded")).await;
    app.post(
        &format!("/api/stacks/{}/deployments/pause", stack("db")),
        json!({}),
    )
    .await;

    let (status, all) = app.get("/api/orgs/default/stacks").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["total"], 3);
    let names: Vec<&str> = all["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stackName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db", "web-a", "web-b"]);
    let b = &all["stacks"][2];
    assert_eq!(b["lastDeployment"]["status"], "succeeded");
    assert_eq!(b["lastDeployment"]["pulumiOperation"], "update");
    assert_eq!(b["lastDeployment"]["initiator"], "api");
    assert!(all["stacks"][1]["lastDeployment"].is_null());
    assert_eq!(all["stacks"][0]["paused"], true);
    assert_eq!(b["hasSchedules"], false);
    assert!(b["drift"].is_object());

    let (_, web) = app
        .get("/api/orgs/default/stacks?query=WEB&pageSize=1&page=2")
        .await;
    assert_eq!(web["total"], 2);
    assert_eq!(web["stacks"][0]["stackName"], "web-b");
    let (status, v) = app.get("/api/orgs/default/stacks?pageSize=500").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let stranger = app.create_token("acme", "admin");
    let (status, _) = app
        .request(
            reqwest::Method::GET,
            "/api/orgs/default/stacks",
            Some(&stranger),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn admins_create_list_and_revoke_tokens_and_a_revoked_token_opens_nothing() {
    let app = TestApp::spawn().await;
    let (status, made) = app
        .post(
            "/api/orgs/default/tokens",
            json!({"name": "ci bot", "role": "write"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    let value = made["tokenValue"].as_str().unwrap().to_string();
    assert!(value.starts_with("tmc_"));
    let (status, user) = app
        .request(reqwest::Method::GET, "/api/user", Some(&value), None)
        .await;
    assert_eq!(
        (status, user["name"].as_str()),
        (StatusCode::OK, Some("ci bot"))
    );

    let (_, listed) = app.get("/api/orgs/default/tokens").await;
    let tokens = listed["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2, "{listed}");
    assert!(
        tokens
            .iter()
            .any(|t| t["id"] == made["id"] && t["role"] == "write" && t["name"] == "ci bot")
    );
    // Never a value, nor a hash.
    assert!(!listed.to_string().contains(&value));
    assert!(
        !listed
            .to_string()
            .contains(&tarmac::crypto::token_hash(&value))
    );

    // Roles below admin, and other orgs, get nothing.
    let (status, _) = app
        .request(
            reqwest::Method::GET,
            "/api/orgs/default/tokens",
            Some(&value),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let stranger = app.create_token("acme", "admin");
    let (status, _) = app
        .request(
            reqwest::Method::GET,
            "/api/orgs/default/tokens",
            Some(&stranger),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for bad in [
        json!({"role": "write"}),
        json!({"name": "x", "role": "owner"}),
        json!({"name": ""}),
    ] {
        let (status, v) = app.post("/api/orgs/default/tokens", bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    }
    assert_eq!(
        app.get("/api/orgs/default/tokens").await.1["tokens"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let id = made["id"].as_str().unwrap();
    let (status, _) = app.delete(&format!("/api/orgs/default/tokens/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, v) = app
        .request(reqwest::Method::GET, "/api/user", Some(&value), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    let (status, _) = app.delete(&format!("/api/orgs/default/tokens/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
