//! The settings, stacks and listing API, checked on the wire.

use serde_json::json;

use crate::support::{TestApp, TestRepo, stack};

#[tokio::test]
async fn settings_merge_replace_delete_and_encrypt() {
    let app = TestApp::spawn().await;
    let s = stack("settings");
    let path = format!("/api/stacks/{s}/deployments/settings");
    let (status, _) = app.get(&path).await;
    assert_eq!(status, 404);

    // The docs' merge example, sent with the Go spellings (repoURL, Git) the server must accept.
    let (status, v) = app
        .post(&path, json!({
            "sourceContext": {"Git": {"repoURL": "https://github.com/pulumi/deploy-demos.git", "branch": "refs/heads/demo", "repoDir": "d"}},
            "operationContext": {"preRunCommands": ["echo \"hello world\""], "environmentVariables": {"AWS_REGION": "us-west-2", "KEY": {"secret": "k1"}}},
        }))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["version"], 1);
    assert_eq!(v["source"], "api");
    let (status, v) = app
        .post(&path, json!({
            "sourceContext": {"git": {"repoUrl": null}},
            "operationContext": {"preRunCommands": ["echo \"bonjour\""], "environmentVariables": {"KEY": null}},
            "gitHub": {"repository": "pulumi/deploy-demos"},
        }))
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["version"], 2);
    assert_eq!(
        v["sourceContext"],
        json!({"git": {"branch": "refs/heads/demo", "repoDir": "d"}})
    );
    assert_eq!(
        v["operationContext"]["preRunCommands"],
        json!(["echo \"bonjour\""])
    );
    assert_eq!(
        v["operationContext"]["environmentVariables"],
        json!({"AWS_REGION": "us-west-2"})
    );
    assert_eq!(v["gitHub"], json!({"repository": "pulumi/deploy-demos"}));
    let (_, got) = app.get(&path).await;
    assert_eq!(got, v);

    // Encrypt, then store the ciphertext the way the Go CLI and provider send it back.
    let (status, enc) = app.post(&format!("{path}/encrypt"), json!("hunter2")).await;
    assert_eq!(status, 200);
    let ct = enc["secret"].as_str().unwrap().to_string();
    assert_eq!(enc["ciphertext"], ct.as_str());
    assert!(!ct.contains("hunter2"));
    let (_, v) = app.post(&path, json!({"operationContext": {"environmentVariables": {"A": {"secret": ct}, "B": {"ciphertext": ct}}}})).await;
    let env = &v["operationContext"]["environmentVariables"];
    assert!(
        env["A"]["secret"].is_string() && env["B"]["ciphertext"].is_string(),
        "{v}"
    );

    // PUT replaces everything.
    let (status, v) = app
        .put(&path, json!({"gitHub": {"repository": "o/r"}, "tag": null}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        v,
        json!({"gitHub": {"repository": "o/r"}, "version": 4, "source": "api"})
    );

    let (status, _) = app.delete(&path).await;
    assert_eq!(status, 204);
    let (status, _) = app.get(&path).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn stacks_are_created_explicitly_or_implicitly() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let (status, v) = app
        .post("/api/stacks/default/proj", json!({"stackName": "explicit"}))
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = app
        .post("/api/stacks/default/proj", json!({"stackName": "explicit"}))
        .await;
    assert_eq!((status.as_u16(), v["code"].as_u64()), (409, Some(409)));
    let (_, list) = app
        .get("/api/stacks/default/proj/explicit/deployments")
        .await;
    assert_eq!(
        list,
        json!({"deployments": [], "itemsPerPage": 10, "total": 0})
    );

    // A deployment on a stack nobody created creates it (the SaaS-signup path).
    let repo = TestRepo::new();
    let s = stack("implicit");
    let mut body = repo.settings();
    body["operation"] = json!("update");
    body["inheritSettings"] = json!(false);
    let (status, created) = app
        .post(&format!("/api/stacks/{s}/deployments"), body)
        .await;
    assert_eq!(status, 202);
    assert_eq!(created["version"], 1);
    assert!(
        created["consoleUrl"]
            .as_str()
            .unwrap()
            .ends_with("/default/proj/implicit/deployments/1")
    );
    app.wait_for(&s, created["id"].as_str().unwrap(), Some("succeeded"))
        .await;
    let (status, _) = app
        .get(&format!("/api/stacks/{s}/deployments/metadata"))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn lists_page_newest_first_and_read_by_version() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let (a, b) = (stack("list-a"), stack("list-b"));
    for s in [&a, &b] {
        app.post(
            &format!("/api/stacks/{s}/deployments/settings"),
            repo.settings(),
        )
        .await;
        app.post(&format!("/api/stacks/{s}/deployments/pause"), json!(null))
            .await;
    }
    let mut ids = vec![];
    for _ in 0..3 {
        ids.push(app.deploy(&a, json!({"operation": "preview"})).await);
    }
    app.deploy(&b, json!({"operation": "preview"})).await;

    let (_, page) = app
        .get(&format!("/api/stacks/{a}/deployments?page=1&pageSize=2"))
        .await;
    assert_eq!(page["total"], 3);
    assert_eq!(page["itemsPerPage"], 2);
    let got: Vec<&str> = page["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str()]);
    let item = &page["deployments"][0];
    for key in [
        "id",
        "created",
        "modified",
        "status",
        "version",
        "requestedBy",
        "pulumiOperation",
        "updates",
        "jobs",
    ] {
        assert!(item.get(key).is_some(), "list items need {key}: {item}");
    }
    assert_eq!(item["paused"], true);
    let (_, page) = app
        .get(&format!(
            "/api/stacks/{a}/deployments?page=2&pageSize=2&asc=true"
        ))
        .await;
    assert_eq!(page["deployments"][0]["id"], ids[2].as_str());

    let (_, org) = app.get("/api/orgs/default/deployments?pageSize=100").await;
    assert_eq!(org["total"], 4);
    assert_eq!(org["deployments"][0]["stackName"], "list-b");

    let (_, v2) = app
        .get(&format!("/api/stacks/{a}/deployments/version/2"))
        .await;
    assert_eq!(v2["id"], ids[1].as_str());
    assert_eq!(v2["latestVersion"], 3);
    assert_eq!(v2["status"], "not-started");
    assert_eq!(v2["jobs"][0]["steps"], json!([]));
    let (status, _) = app
        .get(&format!("/api/stacks/{a}/deployments/version/4"))
        .await;
    assert_eq!(status, 404);

    // A queued deployment's logs are empty but not finished.
    let (_, logs) = app
        .get(&format!("/api/stacks/{a}/deployments/{}/logs", ids[0]))
        .await;
    assert_eq!(logs["lines"], json!([]));
    assert!(logs["nextToken"].is_string());
}
