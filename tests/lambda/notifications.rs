//! Notifications in AWS mode: webhooks from the worker and the tick, GitHub pushes and statuses.

use super::*;

/// AWS mode sends notifications from the Lambdas: the worker after its runs, the scheduler's
/// tick for whatever is left (retries included). Receivers are on 127.0.0.1.
#[tokio::test]
async fn in_aws_mode_the_worker_and_the_tick_deliver_webhooks_and_retries() {
    require!(Emulator, Tools);
    let env = Env::new().await;
    // Fails the first request, then succeeds.
    let receiver = fakes::FakeServer::start(|_, i| async move {
        if i == 0 {
            (503, "{}".into())
        } else {
            (200, "{}".into())
        }
    })
    .await;
    let create_hook = serde_json::json!({"displayName": "ops", "payloadUrl": receiver.url, "secret": "s3", "filters": ["deployment_succeeded", "deployment_started"]}).to_string();
    let hooks = "/api/stacks/acme/web/dev/hooks";
    // The stack does not exist before its settings: 404, then create it.
    let (status, hook) = env.call("POST", hooks, Some(&create_hook)).await;
    assert_eq!(status, 404, "{hook}");
    let (status, _) = env.api("apigw-v2-patch-settings.json", "").await;
    assert_eq!(status, 200);
    let (status, hook) = env.call("POST", hooks, Some(&create_hook)).await;
    assert_eq!(status, 201, "{hook}");
    let name = hook["name"].as_str().unwrap().to_string();

    let (status, created) = env.api("apigw-v2-create-deployment.json", "").await;
    assert_eq!(status, 202, "{created}");
    let failures = env.work(env.receive().await).await;
    assert!(failures.is_empty(), "{failures:?}");
    // The worker sent both events before returning; the first attempt got a 503.
    let got = receiver.recorded();
    assert_eq!(got.len(), 2, "{got:#?}");
    let kinds: Vec<String> = got
        .iter()
        .map(|r| r.json()["status"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.contains(&"running".to_string()) && kinds.contains(&"succeeded".to_string()),
        "{kinds:?}"
    );

    // The retry is due a second later; the next tick sends it, with the same id.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let tick: EventBridgeEvent =
        serde_json::from_str(&fixture("eventbridge-scheduler-tick.json", &[])).unwrap();
    tarmac::lambda::scheduler(&env.app, LambdaEvent::new(tick, Context::default()))
        .await
        .unwrap();
    let got = receiver.recorded();
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[2].header("pulumi-webhook-id"),
        got[0].header("pulumi-webhook-id")
    );
    let (status, log) = env
        .call(
            "GET",
            &format!("/api/stacks/acme/web/dev/hooks/{name}/deliveries"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{log}");
    let codes: Vec<i64> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["responseCode"].as_i64().unwrap())
        .collect();
    let mut sorted = codes.clone();
    sorted.sort();
    assert_eq!(sorted, [200, 200, 503], "{log}");
}

/// GitHub's webhook through the `api` function on DynamoDB: a push deploys the stack once (a
/// redelivery finds its deployment made), the worker runs it, and its statuses reach GitHub.
#[tokio::test]
async fn in_aws_mode_a_signed_push_deploys_once_and_the_status_reaches_github() {
    require!(Emulator, Tools);
    let env = Env::new().await;
    let github = fakes::FakeServer::github().await;
    let secret = "aws-webhook-secret";
    let integration = tarmac::github::Integration::from_request(
        &serde_json::json!({"webhookSecret": secret, "apiUrl": github.url, "token": "ghp_aws"}),
        &env.app.deps.cipher.for_org("acme"),
    )
    .unwrap();
    env.app
        .deps
        .orgs
        .put_integration(
            "acme",
            "github",
            Some(&serde_json::to_value(&integration).unwrap()),
        )
        .await
        .unwrap();
    let (status, _) = env.api("apigw-v2-patch-settings.json", "").await;
    assert_eq!(status, 200);
    let (status, _) = env
        .call(
            "POST",
            "/api/stacks/acme/web/dev/deployments/settings",
            Some(r#"{"sourceContext":{"git":{"branch":"master"}},"gitHub":{"repository":"Codertocat/Hello-World","deployCommits":true}}"#),
        )
        .await;
    assert_eq!(status, 200);
    git(env.repo.path(), &["branch", "master"]);
    let sha = String::from_utf8(
        std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(env.repo.path())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let body =
        fixture("github-push.json", &[]).replace("6113728f27ae82c7b1a177c8d03f9e96e0adf246", &sha);
    let signature = format!("sha256={}", signing::hmac_hex(secret, body.as_bytes()));
    let post = |delivery: &str| {
        let mut ev: Value =
            serde_json::from_str(&fixture("apigw-v2-create-deployment.json", &[])).unwrap();
        let path = "/api/orgs/acme/integrations/github/webhook";
        ev["rawPath"] = Value::String(path.into());
        ev["requestContext"]["http"]["path"] = Value::String(path.into());
        ev["headers"]["x-github-event"] = Value::String("push".into());
        ev["headers"]["x-github-delivery"] = Value::String(delivery.into());
        ev["headers"]["x-hub-signature-256"] = Value::String(signature.clone());
        ev["body"] = Value::String(body.clone());
        lambda_http::request::from_str(&ev.to_string()).unwrap()
    };
    let respond = |req| async {
        let resp = tarmac::lambda::api_service(Arc::clone(&env.app.deps))
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice::<Value>(&bytes).unwrap())
    };
    let (status, first) = respond(post("aws-delivery-1")).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["deployments"].as_array().unwrap().len(), 1, "{first}");
    let (status, again) = respond(post("aws-delivery-1")).await;
    assert_eq!(
        (status, again["duplicates"].as_i64()),
        (202, Some(1)),
        "{again}"
    );

    let failures = env.work(env.receive().await).await;
    assert!(failures.is_empty(), "{failures:?}");
    let id = first["deployments"][0]["id"].as_str().unwrap();
    let (_, d) = env.api("apigw-v2-get-deployment.json", id).await;
    assert_eq!(d["status"], "succeeded", "{d}");
    let sent = github.recorded();
    let states: Vec<String> = sent
        .iter()
        .filter(|r| r.path == format!("/repos/Codertocat/Hello-World/statuses/{sha}"))
        .map(|r| r.json()["state"].as_str().unwrap().to_string())
        .collect();
    assert!(states.contains(&"success".to_string()), "{states:?}");
}
