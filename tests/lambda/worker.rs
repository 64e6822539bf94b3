//! The SQS worker: api → SQS FIFO → worker → DynamoDB, order, pauses, time limits, redelivery.

use super::*;

#[tokio::test]
async fn a_deployment_goes_api_to_sqs_to_worker_and_back_exactly_once() {
    require!(Emulator, Tools);
    let env = Env::new().await;

    let (status, body) = env.api("apigw-v2-patch-settings.json", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains("hunter2"));
    let (status, created) = env.api("apigw-v2-create-deployment.json", "").await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        created["consoleUrl"],
        "https://tarmac.example.com/acme/web/dev/deployments/1"
    );

    // The message is on the FIFO queue, in one of its org's groups.
    let event = env.receive().await;
    assert_eq!(event.records.len(), 1);
    assert!(
        event.records[0].attributes["MessageGroupId"].starts_with("acme/"),
        "{:?}",
        event.records[0].attributes
    );
    let delivered_twice = event.clone();

    let failures = env.work(event).await;
    assert!(failures.is_empty(), "{failures:?}");
    let (_, d) = env.api("apigw-v2-get-deployment.json", &id).await;
    assert_eq!(d["status"], "succeeded", "{d}");
    let text = env.log_text(&id).await;
    assert!(
        text.contains("Apply complete! Resources: 1 added"),
        "{text}"
    );
    assert_eq!(env.engine_runs(), 1);

    // At-least-once delivery: the same message again, and the redelivered fixture, start nothing.
    assert!(env.work(delivered_twice).await.is_empty());
    let redelivered: SqsEvent = serde_json::from_str(&fixture(
        "sqs-redelivered.json",
        &[("__DEPLOYMENT_ID__", &id)],
    ))
    .unwrap();
    assert!(env.work(redelivered).await.is_empty());
    assert_eq!(
        env.engine_runs(),
        1,
        "a redelivered message must never start a second run"
    );
    let (_, d) = env.api("apigw-v2-get-deployment.json", &id).await;
    assert_eq!(d["jobs"][0]["steps"].as_array().unwrap().len(), 4);

    // The stack resource, its tags and the update behind the deployment, through the api
    // function on DynamoDB, as on the embedded server.
    let s = "/api/stacks/acme/web/dev";
    let (status, _) = env
        .call(
            "POST",
            &format!("{s}/tags"),
            Some(r#"{"name":"owner","value":"ops"}"#),
        )
        .await;
    assert_eq!(status, 204);
    let (status, stack) = env.call("GET", s, None).await;
    assert_eq!(status, 200, "{stack}");
    assert_eq!(
        (stack["version"].as_i64(), stack["resourceCount"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(stack["tags"], serde_json::json!({"owner": "ops"}));
    let (_, updates) = env
        .call("GET", &format!("{s}/deployments/{id}/updates"), None)
        .await;
    assert_eq!(updates[0]["updateID"], id.as_str(), "{updates}");
    let (_, events) = env
        .call("GET", &format!("{s}/update/{id}/events"), None)
        .await;
    assert!(events["continuationToken"].is_null(), "{events}");
    let summaries: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.get("summaryEvent"))
        .collect();
    assert_eq!(summaries.len(), 1, "{events}");
    assert_eq!(summaries[0]["result"], "succeeded");
    assert_eq!(summaries[0]["resourceChanges"]["create"], 1);
    let (_, history) = env.call("GET", &format!("{s}/updates"), None).await;
    assert_eq!(history["updates"][0]["result"], "succeeded", "{history}");
    let (status, _) = env
        .call(
            "POST",
            &format!("{s}/tags"),
            Some(r#"{"name":"ttl","value":"soon"}"#),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_worker_reports_poison_and_waiting_messages_as_failures() {
    require!(Emulator, Tools);
    let env = Env::new().await;
    let poison: SqsEvent = serde_json::from_str(&fixture("sqs-poison.json", &[])).unwrap();
    assert_eq!(
        env.work(poison).await,
        ["7d2a3a15-1e6b-4c36-9a0c-6c1d5bbd1f8f"]
    );

    // Two queued on one stack: the second waits for the first (failure: redelivered later),
    // while the batch's other stack (no such deployment) is simply done with.
    env.api("apigw-v2-patch-settings.json", "").await;
    let (_, first) = env.api("apigw-v2-create-deployment.json", "").await;
    let (_, second) = env.api("apigw-v2-create-deployment.json", "").await;
    let batch: SqsEvent = serde_json::from_str(&fixture(
        "sqs-deployment-batch.json",
        &[("__DEPLOYMENT_ID__", second["id"].as_str().unwrap())],
    ))
    .unwrap();
    assert_eq!(
        env.work(batch).await,
        ["059f36b4-87a3-44ab-83d2-661975830a7d"]
    );
    assert_eq!(env.engine_runs(), 0);
    let _ = first;
}

#[tokio::test]
async fn api_events_answer_like_the_embedded_server() {
    require!(Emulator, Tools);
    let env = Env::new().await;
    let (status, body) = env.api("apigw-v2-no-token.json", "").await;
    assert_eq!((status, body["code"].as_u64()), (401, Some(401)));
    let (status, body) = env.api("apigw-v2-bad-json.json", "").await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("malformed JSON"));
    env.api("apigw-v2-patch-settings.json", "").await;
    let (status, body) = env.api("apigw-v1-create-deployment.json", "").await;
    assert_eq!(status, 202, "REST API (v1) events are served too: {body}");
}

#[tokio::test]
async fn the_worker_leaves_messages_when_time_is_short_and_stops_runs_that_would_outlive_it() {
    require!(Emulator, Tools);
    // Margin 4 s, stop grace 1 s: a run is stopped 3 s before the invocation's deadline.
    let env = Env::with(&[
        ("TARMAC_SAFETY_MARGIN_SECS", "4"),
        ("TARMAC_STOP_GRACE", "1"),
    ])
    .await;
    env.api("apigw-v2-patch-settings.json", "").await;
    let (_, created) = env.api("apigw-v2-create-deployment.json", "").await;
    let id = created["id"].as_str().unwrap().to_string();

    // Less time left than the margin: nothing is claimed, the message comes back later.
    let event = env.receive().await;
    let message_id = event.records[0].message_id.clone().unwrap();
    assert_eq!(
        env.work_within(event.clone(), Duration::from_secs(3)).await,
        [message_id]
    );
    let (_, d) = env.api("apigw-v2-get-deployment.json", &id).await;
    assert_eq!(d["status"], "not-started");

    // Handed back at once, it runs in the next invocation.
    assert!(env.work(env.receive().await).await.is_empty());
    let (_, d) = env.api("apigw-v2-get-deployment.json", &id).await;
    assert_eq!(d["status"], "succeeded");

    // Enough time to start, not to finish: the run is stopped before the deadline and failed,
    // and the message is done with (an interrupted engine run is not retried blindly). The
    // request's pre-run commands replace the stack's.
    let t = std::time::Instant::now();
    let slow = {
        let subs = env.subs("");
        let subs: Vec<(&str, &str)> = subs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut ev: Value =
            serde_json::from_str(&fixture("apigw-v2-create-deployment.json", &subs)).unwrap();
        ev["body"] = Value::String(
            r#"{"operation":"update","operationContext":{"preRunCommands":["sleep 60"]}}"#.into(),
        );
        let req = lambda_http::request::from_str(&ev.to_string()).unwrap();
        let resp = tarmac::lambda::api_service(Arc::clone(&env.app.deps))
            .oneshot(req)
            .await
            .unwrap();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()
    };
    let slow_id = slow["id"].as_str().unwrap().to_string();
    let event = env.receive().await;
    assert!(event.records[0].body.as_deref().unwrap().contains(&slow_id));
    assert!(
        env.work_within(event, Duration::from_secs(6))
            .await
            .is_empty()
    );
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    let (_, d) = env.api("apigw-v2-get-deployment.json", &slow_id).await;
    assert_eq!(d["status"], "failed", "{d}");
    let text = env.log_text(&slow_id).await;
    assert!(
        text.contains("Lambda invocation was about to end"),
        "{text}"
    );
}

#[tokio::test]
async fn the_fifo_queue_keeps_each_stack_in_order_and_one_in_flight_per_stack() {
    require!(Emulator, Tools);
    use tarmac::ports::{Queue, QueueMessage};
    let env = Env::new().await;
    let queue = &env.app.queue;
    let (a, b) = (
        tarmac::domain::StackRef::new("acme", "web", "a").unwrap(),
        tarmac::domain::StackRef::new("acme", "web", "b").unwrap(),
    );
    let ids: Vec<uuid::Uuid> = (0..6).map(|_| uuid::Uuid::new_v4()).collect();
    for (i, id) in ids.iter().enumerate() {
        let stack = if i % 2 == 0 { &a } else { &b };
        queue.send(&QueueMessage::new(stack, *id), 0).await.unwrap();
    }
    // A duplicate send of the first is dropped by deduplication.
    queue.send(&QueueMessage::new(&a, ids[0]), 0).await.unwrap();

    let mut order: Vec<uuid::Uuid> = vec![];
    for _ in 0..10 {
        let batch = env.receive().await;
        if batch.records.is_empty() {
            break;
        }
        // While a stack's messages are in flight, no other receive gets that stack's next one.
        let in_flight: Vec<String> = batch
            .records
            .iter()
            .map(|r| r.attributes["MessageGroupId"].clone())
            .collect();
        let meanwhile = env.receive().await;
        for r in &meanwhile.records {
            assert!(
                !in_flight.contains(&r.attributes["MessageGroupId"]),
                "two in flight for {}",
                r.attributes["MessageGroupId"]
            );
        }
        for r in batch.records.iter().chain(&meanwhile.records) {
            let m: QueueMessage = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
            order.push(m.deployment_id);
            env.sqs
                .delete_message()
                .queue_url(&env.queue_url)
                .receipt_handle(r.receipt_handle.clone().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    assert_eq!(order.len(), 6, "every message once, the duplicate dropped");
    let of = |stack_ids: Vec<uuid::Uuid>| {
        order
            .iter()
            .copied()
            .filter(|i| stack_ids.contains(i))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of(vec![ids[0], ids[2], ids[4]]),
        vec![ids[0], ids[2], ids[4]]
    );
    assert_eq!(
        of(vec![ids[1], ids[3], ids[5]]),
        vec![ids[1], ids[3], ids[5]]
    );
}

#[tokio::test]
async fn one_orgs_burst_leaves_the_next_worker_to_another_orgs_run() {
    require!(Emulator, Tools);
    use tarmac::ports::{Queue, QueueMessage};
    let env = Env::with(&[("TARMAC_QUEUE_GROUPS_PER_ORG", "4")]).await;
    let stack = |org: &str, name: String| tarmac::domain::StackRef::new(org, "web", &name).unwrap();
    // Org A queues 40 deployments over 40 stacks, then org B queues one.
    for i in 0..40 {
        let m = QueueMessage::new(&stack("a", format!("s{i}")), uuid::Uuid::new_v4());
        env.app.queue.send(&m, 0).await.unwrap();
    }
    let b = uuid::Uuid::new_v4();
    env.app
        .queue
        .send(&QueueMessage::new(&stack("b", "signup".into()), b), 0)
        .await
        .unwrap();

    // Workers ask one message at a time, as the event source mapping's batches of one, and
    // hold what they get. A's messages fill its four groups, and then the next worker gets B's:
    // with a group per stack it would come after all 40 of A's.
    let mut a_first = vec![];
    loop {
        let got = env
            .sqs
            .receive_message()
            .queue_url(&env.queue_url)
            .max_number_of_messages(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        let m = got
            .messages
            .unwrap_or_default()
            .pop()
            .expect("a message for the worker");
        let group =
            m.attributes.unwrap_or_default()[&MessageSystemAttributeName::MessageGroupId].clone();
        let body: QueueMessage = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
        if body.deployment_id == b {
            assert!(group.starts_with("b/"), "{group}");
            break;
        }
        assert!(group.starts_with("a/"), "{group}");
        a_first.push(group);
    }
    let groups: std::collections::HashSet<&String> = a_first.iter().collect();
    assert!(
        a_first.len() <= 4,
        "B's run waited behind {} of A's",
        a_first.len()
    );
    assert_eq!(
        groups.len(),
        a_first.len(),
        "one in flight per group: {a_first:?}"
    );
}

#[tokio::test]
async fn a_paused_stack_holds_its_deployments_without_blocking_its_queue() {
    require!(Emulator, Tools);
    let env = Env::new().await;
    env.api("apigw-v2-patch-settings.json", "").await;
    assert_eq!(
        env.call("POST", "/api/stacks/acme/web/dev/deployments/pause", None)
            .await
            .0,
        204
    );
    let (_, created) = env.api("apigw-v2-create-deployment.json", "").await;
    let id = created["id"].as_str().unwrap().to_string();
    // The worker drops the message rather than keep the stack's FIFO group blocked.
    assert!(env.work(env.receive().await).await.is_empty());
    assert!(env.receive().await.records.is_empty());
    let (_, d) = env.api("apigw-v2-get-deployment.json", &id).await;
    assert_eq!(d["status"], "not-started");
    // Resuming sends it again, and it runs.
    assert_eq!(
        env.call("POST", "/api/stacks/acme/web/dev/deployments/resume", None)
            .await
            .0,
        204
    );
    assert!(env.work(env.receive().await).await.is_empty());
    let (_, d) = env.api("apigw-v2-get-deployment.json", &id).await;
    assert_eq!(d["status"], "succeeded", "{d}");
}

#[tokio::test]
async fn the_worker_keeps_its_message_invisible_while_the_run_lasts() {
    require!(Emulator, Tools);
    // The queue hides a received message for 2 s only; the run takes 4 s. Without the
    // heartbeat the message would be visible (and delivered again) half way through.
    let env = Env::with_queue(&[("TARMAC_VISIBILITY_SECS", "2")], "2").await;
    env.api("apigw-v2-patch-settings.json", "").await;
    let (_, created) = env
        .call(
            "POST",
            "/api/stacks/acme/web/dev/deployments",
            Some(r#"{"operation":"update","operationContext":{"preRunCommands":["sleep 4"]}}"#),
        )
        .await;
    let event = env.receive().await;
    assert_eq!(event.records.len(), 1);
    let (failures, meanwhile) = tokio::join!(env.work(event), async {
        tokio::time::sleep(Duration::from_millis(3000)).await;
        env.receive().await
    });
    assert!(failures.is_empty());
    assert!(
        meanwhile.records.is_empty(),
        "the message came back while its run was going on"
    );
    let (_, d) = env
        .api(
            "apigw-v2-get-deployment.json",
            created["id"].as_str().unwrap(),
        )
        .await;
    assert_eq!(d["status"], "succeeded");
}

/// Drill R2 (issue 7): every message delivered three times (two more sends, as a re-drive
/// would make, and every batch handled by two workers at once, as when visibility expires
/// mid-run) still runs each deployment's engine exactly once. `TARMAC_DRILL_SCALE=full`: 50.
#[tokio::test]
async fn r2_triple_delivery_runs_each_deployment_once() {
    require!(Emulator, Tools);
    use tarmac::ports::{Queue, QueueMessage};
    let n = if std::env::var("TARMAC_DRILL_SCALE").as_deref() == Ok("full") {
        50
    } else {
        4
    };
    let env = Env::new().await;
    env.api("apigw-v2-patch-settings.json", "").await;
    let stack = tarmac::domain::StackRef::new("acme", "web", "dev").unwrap();
    let queue = &env.app.queue;
    let mut ids = vec![];
    for _ in 0..n {
        let (_, created) = env.api("apigw-v2-create-deployment.json", "").await;
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let id = uuid::Uuid::parse_str(id).unwrap();
        for attempt in [1, 2] {
            queue
                .send(&QueueMessage::new(&stack, id), attempt)
                .await
                .unwrap();
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let mut done = 0;
        for id in &ids {
            let (_, d) = env.api("apigw-v2-get-deployment.json", id).await;
            if d["status"] == "succeeded" {
                done += 1;
            }
        }
        let event = env.receive().await;
        if done == ids.len() && event.records.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{done} of {} succeeded",
            ids.len()
        );
        if !event.records.is_empty() {
            let (_, _) = tokio::join!(env.work(event.clone()), env.work(event));
        }
    }
    assert_eq!(
        env.engine_runs(),
        n,
        "exactly one engine run per deployment"
    );
}

/// The worker reads a secret reference itself (the same step as the embedded server, whose
/// tests cover the OIDC role's credentials): refused without a role, read with the worker's own
/// credentials once the operator allows it, and masked.
#[tokio::test]
async fn the_worker_resolves_a_secret_reference_only_as_the_operator_allows() {
    require!(Emulator, Tools);
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("/tarmac-worker-test/{tag}");
    let value = format!("param-{tag}");
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    aws_sdk_ssm::Client::new(&sdk)
        .put_parameter()
        .name(&name)
        .value(&value)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    for (allowed, env) in [
        (false, Env::new().await),
        (
            true,
            Env::with(&[("TARMAC_SECRETS_WITH_SERVER_CREDENTIALS", "true")]).await,
        ),
    ] {
        let copy = env.trace().with_file_name("param");
        let settings = serde_json::json!({
            "sourceContext": {"git": {"repoUrl": format!("file://{}", env.repo.path().display()), "repoDir": "infra"}},
            "operationContext": {
                "environmentVariables": {"P": {"fromParameterStore": {"name": name}}},
                "preRunCommands": [format!("printf '%s' \"$P\" > {}; echo \"p=$P\"", copy.display())],
            },
        });
        let (status, v) = env
            .call(
                "POST",
                "/api/stacks/acme/web/dev/deployments/settings",
                Some(&settings.to_string()),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        let (status, created) = env
            .call(
                "POST",
                "/api/stacks/acme/web/dev/deployments",
                Some(r#"{"operation": "update"}"#),
            )
            .await;
        assert_eq!(status, 202, "{created}");
        let id = created["id"].as_str().unwrap();
        assert!(env.work(env.receive().await).await.is_empty());
        let log = env.log_text(id).await;
        assert!(!log.contains(&value), "{log}");
        if allowed {
            assert!(log.contains("p=[secret]"), "{log}");
            assert_eq!(std::fs::read_to_string(&copy).unwrap(), value);
            // Nowhere in the store: every item of the table, read whole.
            let items = aws_sdk_dynamodb::Client::new(&sdk)
                .scan()
                .table_name(&env.app.cfg.table)
                .send()
                .await
                .unwrap()
                .items
                .unwrap_or_default();
            assert!(!items.is_empty());
            let dump = format!("{items:?}");
            assert!(
                dump.contains("fromParameterStore"),
                "the reference is stored"
            );
            assert!(!dump.contains(&value), "the value is in the store");
        } else {
            assert!(
                log.contains("the stack has no AWS role to read it with"),
                "{log}"
            );
            assert!(!copy.exists());
        }
    }
}
