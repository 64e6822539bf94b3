//! `Idempotency-Key` through a real server: a retried create answers the first response and
//! creates nothing more; another body is 422; concurrent retries create one deployment.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, TestRepo, stack};

async fn post(
    app: &TestApp,
    token: &str,
    path: &str,
    key: &str,
    body: &Value,
) -> (StatusCode, Option<String>, Value) {
    let resp = app
        .client
        .post(format!("{}{path}", app.url))
        .header("Authorization", format!("token {token}"))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_string());
    (status, replayed, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_retried_create_answers_the_first_response_and_creates_nothing_more() {
    let app = TestApp::spawn_with(&["--workers", "1"]).await;
    let repo = TestRepo::new();
    let s = stack("idem");
    // Pause the stack: the deployments stay queued, so nothing but the API is measured.
    app.post(
        &format!("/api/stacks/{s}/deployments/settings"),
        repo.settings(),
    )
    .await;
    app.post(&format!("/api/stacks/{s}/deployments/pause"), json!({}))
        .await;
    let path = format!("/api/stacks/{s}/deployments");
    let body = json!({"operation": "update"});

    let (status, replayed, first) = post(&app, &app.token, &path, "signup-42", &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(replayed, None);
    let (status, replayed, again) = post(&app, &app.token, &path, "signup-42", &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(again, first, "the same response, the same deployment");

    // The same key with another request is refused, in the error shape.
    let (status, _, v) = post(
        &app,
        &app.token,
        &path,
        "signup-42",
        &json!({"operation": "destroy"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["code"], 422, "{v}");
    // A refused request is kept too: its retry gets the same 400.
    let bad = json!({"operation": "explode"});
    let (status, _, first_bad) = post(&app, &app.token, &path, "bad-1", &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{first_bad}");
    let (status, replayed, again_bad) = post(&app, &app.token, &path, "bad-1", &bad).await;
    assert_eq!(
        (status, replayed.as_deref()),
        (StatusCode::BAD_REQUEST, Some("true"))
    );
    assert_eq!(again_bad, first_bad);
    // Keys are per org: another org's request under the same key is its own.
    let other = app.create_token("other", "write");
    let o = "other/proj/idem";
    app.request(
        reqwest::Method::POST,
        &format!("/api/stacks/{o}/deployments/settings"),
        Some(&other),
        Some(repo.settings().to_string().into_bytes()),
    )
    .await;
    let (status, replayed, theirs) = post(
        &app,
        &other,
        &format!("/api/stacks/{o}/deployments"),
        "signup-42",
        &body,
    )
    .await;
    assert_eq!((status, replayed), (StatusCode::ACCEPTED, None), "{theirs}");
    // Keys are each token's own: another token of the org with the same key and body gets
    // its own deployment, never the first token's response.
    let writer = app.create_token("default", "write");
    let (status, replayed, mine) = post(&app, &writer, &path, "signup-42", &body).await;
    assert_eq!((status, replayed), (StatusCode::ACCEPTED, None), "{mine}");
    assert_ne!(mine["id"], first["id"]);
    // A malformed key is a 400 that creates nothing.
    let (status, _, v) = post(&app, &app.token, &path, &"k".repeat(256), &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");

    // A response that shows a secret once (a new token) is replayed to its retry, but never
    // rests in plaintext: the kept body is sealed with the org's key.
    let mint = json!({"name": "signup-bot"});
    let (status, _, minted) = post(
        &app,
        &app.token,
        "/api/orgs/default/tokens",
        "mint-1",
        &mint,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{minted}");
    let (_, replayed, again) = post(
        &app,
        &app.token,
        "/api/orgs/default/tokens",
        "mint-1",
        &mint,
    )
    .await;
    assert_eq!((replayed.as_deref(), &again), (Some("true"), &minted));
    let token = minted["tokenValue"].as_str().unwrap().as_bytes().to_vec();
    for file in ["tarmac.db", "tarmac.db-wal"] {
        if let Ok(bytes) = std::fs::read(app.data().join(file)) {
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_slice()),
                "the token rests in plaintext in {file}"
            );
        }
    }

    // Ten concurrent retries of one new request: one deployment; each answer is it, or 409.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (client, url, token, path, body) = (
            app.client.clone(),
            app.url.clone(),
            app.token.clone(),
            path.clone(),
            body.clone(),
        );
        tasks.spawn(async move {
            let resp = client
                .post(format!("{url}{path}"))
                .header("Authorization", format!("token {token}"))
                .header("Idempotency-Key", "burst")
                .json(&body)
                .send()
                .await
                .unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap())
        });
    }
    let answers = tasks.join_all().await;
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .map(|(_, v)| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(s, v)| *s == StatusCode::ACCEPTED
                || (*s == StatusCode::CONFLICT && v["code"] == 409)),
        "{answers:?}"
    );
    let (_, list) = app.get(&format!("{path}?pageSize=100")).await;
    assert_eq!(list["deployments"].as_array().unwrap().len(), 3, "{list}");
}

/// The signup flow in one request: the stack, its tags, its settings and its first update,
/// made once however often a client retries it, and refused whole when any part is bad.
#[tokio::test]
async fn one_request_provisions_a_stack_with_tags_settings_and_its_first_update() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let mut settings = repo.settings();
    settings["operationContext"] =
        json!({"environmentVariables": {"CUSTOMER": "42", "API_KEY": {"secret": "signup-secret"}}});
    let signup = json!({
        "stackName": "customer-42",
        "tags": {"customer": "42", "plan": "pro"},
        "deploymentSettings": settings,
        "deployment": {"operation": "update"},
    });
    let path = "/api/stacks/default/tenants";

    // Bad parts are refused before anything is written.
    for (i, bad, want) in [
        (
            json!({"deploymentSettings": {"operationContext": {"options": {"timeout": -1}}}}),
            "timeout",
        ),
        (json!({"deployment": {"operation": "explode"}}), "explode"),
        (
            json!({"deployment": "update"}),
            "deployment must be an object",
        ),
        (
            json!({"deploymentSettings": []}),
            "deploymentSettings must be an object",
        ),
        (json!({"tags": {"": "x"}}), "tag"),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (bad, want))| (i, bad, want))
    {
        let mut body = signup.clone();
        for (k, v) in bad.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, _, v) = post(&app, &app.token, path, &format!("bad-{i}"), &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["message"].as_str().unwrap().contains(want), "{bad}: {v}");
        let (status, v) = app.get("/api/stacks/default/tenants/customer-42").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad} left a stack: {v}");
    }

    let (status, replayed, first) =
        post(&app, &app.token, path, "signup-customer-42", &signup).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(replayed, None);
    assert_eq!(first["stackName"], "customer-42");
    assert_eq!(first["deployment"]["version"], 1, "{first}");
    // A retry (a timeout on the client's side, say) gets the same answer and makes nothing.
    let (status, replayed, again) =
        post(&app, &app.token, path, "signup-customer-42", &signup).await;
    assert_eq!(
        (status, replayed.as_deref()),
        (StatusCode::OK, Some("true"))
    );
    assert_eq!(again, first);
    // Without the key, the stack exists: 409, as Pulumi answers.
    let (status, v) = app.post(path, signup.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");

    let s = "default/tenants/customer-42";
    let id = first["deployment"]["id"].as_str().unwrap();
    let done = app.wait_for(s, id, Some("succeeded")).await;
    assert_eq!(done["version"], 1);
    let (_, list) = app.get(&format!("/api/stacks/{s}/deployments")).await;
    assert_eq!(list["total"], 1, "one deployment: {list}");
    let (_, stack) = app.get(&format!("/api/stacks/{s}")).await;
    assert_eq!(stack["tags"]["customer"], "42", "{stack}");
    assert_eq!(stack["tags"]["plan"], "pro", "{stack}");
    let (_, stored) = app
        .get(&format!("/api/stacks/{s}/deployments/settings"))
        .await;
    assert_eq!(
        stored["operationContext"]["environmentVariables"]["CUSTOMER"], "42",
        "{stored}"
    );
    assert!(!stored.to_string().contains("signup-secret"), "{stored}");
    assert!(!first.to_string().contains("signup-secret"), "{first}");
}
