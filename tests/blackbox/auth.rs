//! Tokens: scoped to one org, with roles; only hashes stored.

use reqwest::Method;
use serde_json::json;

use crate::support::{TestApp, TestRepo, stack};

#[tokio::test]
async fn tokens_are_checked_scoped_to_their_org_and_limited_by_role() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("auth");
    let path = format!("/api/stacks/{s}/deployments/settings");

    let (status, v) = app.request(Method::GET, &path, None, None).await;
    assert_eq!(
        (status.as_u16(), v["code"].as_u64()),
        (401, Some(401)),
        "{v}"
    );
    let (status, _) = app
        .request(Method::GET, &path, Some("tmc_not-a-real-token"), None)
        .await;
    assert_eq!(status, 401);
    let resp = app
        .client
        .get(format!("{}{path}", app.url))
        .header("Authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let writer = app.create_token("default", "write");
    let reader = app.create_token("default", "read");
    let body = repo.settings().to_string().into_bytes();
    let (status, _) = app
        .request(Method::POST, &path, Some(&writer), Some(body.clone()))
        .await;
    assert_eq!(status, 200);
    let (status, v) = app
        .request(Method::POST, &path, Some(&reader), Some(body))
        .await;
    assert_eq!(status, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains("'write' role"));
    let (status, _) = app.request(Method::GET, &path, Some(&reader), None).await;
    assert_eq!(status, 200);

    // Org pause is for admins only.
    let (status, _) = app
        .request(
            Method::POST,
            "/api/orgs/default/deployments/pause",
            Some(&writer),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (_, meta) = app.get("/api/orgs/default/deployments/metadata").await;
    assert_eq!(meta["paused"], false);

    // Another org's token sees nothing of this org: 404, not 403.
    let stranger = app.create_token("acme", "admin");
    for (method, p) in [
        (Method::GET, path.clone()),
        (Method::GET, format!("/api/stacks/{s}/deployments")),
        (Method::GET, "/api/orgs/default/deployments".to_string()),
        (
            Method::POST,
            "/api/orgs/default/deployments/pause".to_string(),
        ),
    ] {
        let (status, v) = app.request(method, &p, Some(&stranger), None).await;
        assert_eq!(status, 404, "{p}: {v}");
    }
    let (_, user) = app
        .request(Method::GET, "/api/user", Some(&stranger), None)
        .await;
    assert_eq!(
        user["organizations"],
        json!([{"githubLogin": "acme", "name": "acme", "avatarUrl": "", "role": "admin"}])
    );

    // Only hashes are stored.
    let db = std::fs::read(app.data().join("tarmac.db")).unwrap();
    let text = String::from_utf8_lossy(&db);
    for t in [&app.token, &writer, &reader, &stranger] {
        assert!(!text.contains(t.as_str()), "a token is stored in clear");
    }
}
