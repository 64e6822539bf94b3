//! AWS mode in-process: the `events/` fixtures, the Lambda handlers, and the whole path
//! api → SQS FIFO → worker → DynamoDB, on the local AWS emulator that tests/run.sh starts,
//! with a real git repository and the real Terraform engine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::apigw::{ApiGatewayProxyRequest, ApiGatewayV2httpRequest};
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::Value;
use tarmac::aws::{AwsApp, AwsConfig};
use tarmac::crypto::{new_token, token_hash};
use tarmac::domain::Role;
use tower::ServiceExt;

#[path = "../support/signing.rs"]
mod signing;
// Shared with the black-box tests; this crate uses part of it.
#[allow(dead_code)]
#[path = "../support/fakes.rs"]
mod fakes;
#[path = "../support/git_server.rs"]
mod git_server;
mod infra;
mod state;

fn events_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../events")
}

fn fixture(name: &str, subs: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(events_dir().join(name)).unwrap();
    for (k, v) in subs {
        text = text.replace(k, v);
    }
    text
}

#[test]
fn every_event_fixture_parses_with_its_type() {
    let mut seen = 0;
    for entry in std::fs::read_dir(events_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let ok = if name.starts_with("apigw-v2-") {
            serde_json::from_str::<ApiGatewayV2httpRequest>(&text)
                .map(|_| ())
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    lambda_http::request::from_str(&text)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
        } else if name.starts_with("apigw-v1-") {
            serde_json::from_str::<ApiGatewayProxyRequest>(&text)
                .map(|_| ())
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    lambda_http::request::from_str(&text)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
        } else if name.starts_with("sqs-") {
            serde_json::from_str::<SqsEvent>(&text)
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else if let Some(rest) = name.strip_prefix("github-") {
            // Real GitHub webhook payloads, named by their X-GitHub-Event.
            let kind = ["pull_request", "push", "ping"]
                .into_iter()
                .find(|k| rest.starts_with(k))
                .unwrap_or("unknown");
            match kind {
                "ping" => serde_json::from_str::<Value>(&text)
                    .map_err(|e| e.to_string())
                    .and_then(|v| v["zen"].as_str().map(|_| ()).ok_or("no zen".into())),
                _ => tarmac::github::triggers::Event::parse(kind, text.as_bytes())
                    .map_err(|e| e.to_string())
                    .and_then(|e| e.map(|_| ()).ok_or(format!("{kind} was ignored"))),
            }
        } else if name.starts_with("invoke-oidc-") {
            // The worker's direct invocation of the oidc function.
            let text = text.replace("__DEPLOYMENT_ID__", &uuid::Uuid::new_v4().to_string());
            serde_json::from_str::<tarmac::oidc::ExchangeRequest>(&text)
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else if name.starts_with("eventbridge-") {
            serde_json::from_str::<EventBridgeEvent>(&text)
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            Err(format!("{name}: fixtures are named <trigger>-<case>.json"))
        };
        ok.unwrap_or_else(|e| panic!("{name}: {e}"));
        seen += 1;
    }
    assert!(seen >= 17, "fixtures missing: saw {seen}");
}

/// A fresh table, FIFO queue (with its DLQ) and KMS key on the emulator, and an app over them.
struct Env {
    app: Arc<AwsApp>,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    token: String,
    repo: tempfile::TempDir,
    work: tempfile::TempDir,
}

fn tools_bin() -> PathBuf {
    let tools = std::env::var("TARMAC_TEST_TOOLS")
        .expect("TARMAC_TEST_TOOLS is not set: run the tests with tests/run.sh");
    Path::new(&tools).join("bin")
}

fn git(dir: &Path, args: &[&str]) {
    let ok = std::process::Command::new("git")
        .args(["-c", "user.email=t@example.com", "-c", "user.name=Test"])
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(ok.success());
}

impl Env {
    async fn new() -> Self {
        Self::with(&[]).await
    }

    /// With extra configuration, e.g. a short safety margin.
    async fn with(extra: &[(&'static str, &'static str)]) -> Self {
        Self::with_queue(extra, "60").await
    }

    /// With extra configuration and the queue's own visibility timeout, in seconds.
    async fn with_queue(extra: &[(&'static str, &'static str)], queue_visibility: &str) -> Self {
        assert!(
            std::env::var_os("AWS_ENDPOINT_URL").is_some(),
            "AWS_ENDPOINT_URL is not set: run the tests with tests/run.sh"
        );
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
        let table = format!("tarmac-{suffix}");
        tarmac::aws::dynamo::create_table(&dynamo, &table)
            .await
            .unwrap();

        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let dlq = sqs
            .create_queue()
            .queue_name(format!("tarmac-dlq-{suffix}.fifo"))
            .attributes(QueueAttributeName::FifoQueue, "true")
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let dlq_arn = sqs
            .get_queue_attributes()
            .queue_url(&dlq)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap()[&QueueAttributeName::QueueArn]
            .clone();
        let queue_url = sqs
            .create_queue()
            .queue_name(format!("tarmac-{suffix}.fifo"))
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::ContentBasedDeduplication, "false")
            .attributes(QueueAttributeName::VisibilityTimeout, queue_visibility)
            .attributes(
                QueueAttributeName::RedrivePolicy,
                format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"5"}}"#),
            )
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let kms = aws_sdk_kms::Client::new(&sdk);
        let key_id = kms
            .create_key()
            .send()
            .await
            .unwrap()
            .key_metadata
            .unwrap()
            .key_id;

        let work = tempfile::tempdir().unwrap();
        let path = format!(
            "{}:{}",
            tools_bin().display(),
            std::env::var("PATH").unwrap()
        );
        let vars = [
            ("TARMAC_TABLE", table.as_str()),
            ("TARMAC_QUEUE_URL", queue_url.as_str()),
            ("TARMAC_KMS_KEY_ID", key_id.as_str()),
            ("TARMAC_PUBLIC_URL", "https://tarmac.example.com"),
            ("TARMAC_ALLOW_LOCAL_REPOS", "true"),
            ("TARMAC_CHILD_PATH", path.as_str()),
            ("TARMAC_SAFETY_MARGIN_SECS", "30"),
        ];
        let vars: Vec<(&str, &str)> = extra.iter().copied().chain(vars).collect();
        let work_dir = work.path().join("work").display().to_string();
        let state_dir = work.path().join("state").display().to_string();
        let cfg = AwsConfig::from_lookup(|k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
                .or(match k {
                    "TARMAC_WORK_DIR" => Some(work_dir.clone()),
                    "TARMAC_STATE_DIR" => Some(state_dir.clone()),
                    _ => None,
                })
        })
        .unwrap();
        let app = Arc::new(AwsApp::build(cfg, &sdk).await.unwrap());
        let token = new_token();
        app.deps
            .tokens
            .create_token(&token_hash(&token), "acme", Role::Write, "ci")
            .await
            .unwrap();

        let repo = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(repo.path().join("infra")).unwrap();
        std::fs::write(
            repo.path().join("infra/main.tf"),
            "resource \"terraform_data\" \"x\" {\n  input = \"aws\"\n}\noutput \"val\" { value = terraform_data.x.output }\n",
        )
        .unwrap();
        git(repo.path(), &["init", "-q", "-b", "main"]);
        git(repo.path(), &["add", "-A"]);
        git(repo.path(), &["commit", "-q", "-m", "init"]);
        Self {
            app,
            sqs,
            queue_url,
            token,
            repo,
            work,
        }
    }

    fn trace(&self) -> PathBuf {
        self.work.path().join("trace")
    }

    fn subs(&self, deployment: &str) -> Vec<(&'static str, String)> {
        vec![
            ("__TOKEN__", self.token.clone()),
            (
                "__REPO_URL__",
                format!("file://{}", self.repo.path().display()),
            ),
            ("__TRACE_FILE__", self.trace().display().to_string()),
            ("__DEPLOYMENT_ID__", deployment.to_string()),
        ]
    }

    /// Feeds an API Gateway event fixture to the `api` handler (the router, as lambda_http
    /// serves it) and returns the status and JSON body.
    async fn api(&self, name: &str, deployment: &str) -> (u16, Value) {
        let subs = self.subs(deployment);
        let subs: Vec<(&str, &str)> = subs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let req = lambda_http::request::from_str(&fixture(name, &subs)).unwrap();
        let resp = tarmac::aws::lambda::api_service(Arc::clone(&self.app.deps))
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Sends any request through the `api` handler, as an HTTP API (v2) event.
    async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let subs = self.subs("");
        let subs: Vec<(&str, &str)> = subs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut ev: Value =
            serde_json::from_str(&fixture("apigw-v2-create-deployment.json", &subs)).unwrap();
        ev["rawPath"] = Value::String(path.into());
        ev["requestContext"]["http"]["method"] = Value::String(method.into());
        ev["requestContext"]["http"]["path"] = Value::String(path.into());
        ev["body"] = body.map_or(Value::Null, |b| Value::String(b.into()));
        let req = lambda_http::request::from_str(&ev.to_string()).unwrap();
        let resp = tarmac::aws::lambda::api_service(Arc::clone(&self.app.deps))
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Receives what the queue holds, as the event source mapping would deliver it.
    async fn receive(&self) -> SqsEvent {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        let mut event = SqsEvent::default();
        for m in out.messages.unwrap_or_default() {
            let mut r = SqsMessage::default();
            r.message_id = m.message_id;
            r.receipt_handle = m.receipt_handle;
            r.body = m.body;
            r.attributes = m
                .attributes
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.as_str().to_string(), v))
                .collect();
            r.event_source = Some("aws:sqs".into());
            event.records.push(r);
        }
        event
    }

    async fn work(&self, event: SqsEvent) -> Vec<String> {
        self.work_within(event, Duration::from_secs(900)).await
    }

    /// Runs the worker handler as an invocation with `left` until its deadline.
    async fn work_within(&self, event: SqsEvent, left: Duration) -> Vec<String> {
        let mut ctx = Context::default();
        ctx.request_id = uuid::Uuid::new_v4().to_string();
        let deadline = SystemTime::now() + left;
        ctx.deadline = deadline.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let records = event.records.clone();
        let resp = tarmac::aws::lambda::worker(&self.app, LambdaEvent::new(event, ctx))
            .await
            .unwrap();
        let failures: Vec<String> = resp
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect();
        // As the event source mapping does: delete what was not reported as failed. (Fixture
        // events carry made-up receipts; deleting those fails harmlessly.)
        for r in records
            .iter()
            .filter(|r| !failures.contains(r.message_id.as_ref().unwrap()))
        {
            let _ = self
                .sqs
                .delete_message()
                .queue_url(&self.queue_url)
                .receipt_handle(r.receipt_handle.clone().unwrap())
                .send()
                .await;
        }
        failures
    }

    /// The deployment's log lines, read through the `api` handler, as one text.
    async fn log_text(&self, deployment: &str) -> String {
        let (_, logs) = self.api("apigw-v2-get-logs.json", deployment).await;
        logs["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["line"].as_str())
            .collect()
    }

    fn engine_runs(&self) -> usize {
        std::fs::read_to_string(self.trace())
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }
}

#[tokio::test]
async fn a_deployment_goes_api_to_sqs_to_worker_and_back_exactly_once() {
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

    // The message is on the FIFO queue, grouped by stack.
    let event = env.receive().await;
    assert_eq!(event.records.len(), 1);
    assert_eq!(
        event.records[0].attributes["MessageGroupId"],
        "acme/web/dev"
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
}

#[tokio::test]
async fn the_worker_reports_poison_and_waiting_messages_as_failures() {
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
async fn the_scheduler_tick_reaps_and_re_sends_lost_messages() {
    let env = Env::new().await;
    let tick: EventBridgeEvent =
        serde_json::from_str(&fixture("eventbridge-scheduler-tick.json", &[])).unwrap();
    let report =
        tarmac::aws::lambda::scheduler(&env.app, LambdaEvent::new(tick, Context::default()))
            .await
            .unwrap();
    assert_eq!(report, tarmac::scheduler::TickReport::default());

    // A deployment whose message was lost (stored, never sent) is sent again by a later tick.
    env.api("apigw-v2-patch-settings.json", "").await;
    let (_, created) = env.api("apigw-v2-create-deployment.json", "").await;
    let sent = env.receive().await;
    assert_eq!(sent.records.len(), 1);
    for r in &sent.records {
        env.sqs
            .delete_message()
            .queue_url(&env.queue_url)
            .receipt_handle(r.receipt_handle.clone().unwrap())
            .send()
            .await
            .unwrap();
    }
    let later = time::OffsetDateTime::now_utc() + time::Duration::minutes(3);
    let report = tarmac::scheduler::tick(&env.app.deps, later, Duration::from_secs(7 * 86_400))
        .await
        .unwrap();
    assert_eq!(report.resent, 1);
    let again = env.receive().await;
    assert!(
        again.records[0]
            .body
            .as_deref()
            .unwrap()
            .contains(created["id"].as_str().unwrap())
    );
    assert!(env.work(again).await.is_empty());
    assert_eq!(env.engine_runs(), 1);
}

#[tokio::test]
async fn the_worker_leaves_messages_when_time_is_short_and_stops_runs_that_would_outlive_it() {
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
        let resp = tarmac::aws::lambda::api_service(Arc::clone(&env.app.deps))
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
    use tarmac::ports::{Queue, QueueMessage};
    let env = Env::new().await;
    let queue = tarmac::aws::SqsQueue::new(env.sqs.clone(), &env.queue_url);
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
async fn a_paused_stack_holds_its_deployments_without_blocking_its_queue() {
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
    use tarmac::ports::{Queue, QueueMessage};
    let n = if std::env::var("TARMAC_DRILL_SCALE").as_deref() == Ok("full") {
        50
    } else {
        4
    };
    let env = Env::new().await;
    env.api("apigw-v2-patch-settings.json", "").await;
    let stack = tarmac::domain::StackRef::new("acme", "web", "dev").unwrap();
    let queue = tarmac::aws::SqsQueue::new(env.sqs.clone(), &env.queue_url);
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

/// An RSA-2048 signing key in the emulator's KMS.
async fn kms_signing_key(kms: &aws_sdk_kms::Client) -> String {
    kms.create_key()
        .key_spec(aws_sdk_kms::types::KeySpec::Rsa2048)
        .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id
}

#[tokio::test]
async fn the_oidc_function_signs_with_kms_exchanges_at_sts_and_answers_only_the_lease_holder() {
    use tarmac::aws::oidc::{OidcFunction, Reply};
    use tarmac::domain::{Lease, NewDeployment, Operation, StackRef};
    use tarmac::ports::ClaimOutcome;

    let env = Env::new().await;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let kms = aws_sdk_kms::Client::new(&sdk);
    let first_key = kms_signing_key(&kms).await;
    let table = env.app.cfg.table.clone();
    let vars = [
        ("TARMAC_TABLE", table.clone()),
        (
            "TARMAC_PUBLIC_URL",
            "https://tarmac.example.com".to_string(),
        ),
        ("TARMAC_OIDC_KMS_KEY_ID", first_key.clone()),
    ];
    let lookup = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    let function = OidcFunction::build(lookup, &sdk).await.unwrap();
    // A second cold start finds the key registered and keeps it.
    OidcFunction::build(lookup, &sdk).await.unwrap();

    // A running deployment with AWS OIDC settings, held by the worker's lease.
    let stack = StackRef::new("acme", "web", "oidc").unwrap();
    let id = uuid::Uuid::new_v4();
    env.app
        .deps
        .deployments
        .create_deployment(NewDeployment {
            id,
            stack: stack.clone(),
            operation: Operation::Update,
            config: serde_json::json!({
                "sourceContext": {"git": {"repoUrl": "https://example.com/r.git"}},
                "operationContext": {"oidc": {"aws": {
                    "roleArn": "arn:aws:iam::123456789012:role/deployer",
                    "sessionName": "${organization.name}-${deployment.id}",
                    "policyArns": ["arn:aws:iam::aws:policy/ReadOnlyAccess"],
                }}},
            }),
            initiator: "api".into(),
            requested_by: "ci".into(),
            skip_intermediate: false,
        })
        .await
        .unwrap();
    let lease = Lease {
        owner: "lambda-worker-1".into(),
        ttl: Duration::from_secs(60),
    };
    let claimed = env.app.deps.runs.claim(&stack, id, &lease).await.unwrap();
    assert!(matches!(claimed, ClaimOutcome::Claimed(_)));
    env.app.deps.runs.mark_running(id, &lease).await.unwrap();

    let ask = |owner: &str| serde_json::json!({"org": "acme", "project": "web", "stack": "oidc", "deploymentId": id, "lease": owner});
    let reply = |v: Value| serde_json::from_value::<Reply>(v).unwrap();
    let Reply::Credentials(creds) = reply(function.handle(ask("lambda-worker-1")).await) else {
        panic!("the lease holder was refused");
    };
    let aws = creds.aws.as_ref().expect("AWS credentials from STS");
    assert!(!aws.access_key_id.is_empty() && !aws.session_token.is_empty());
    assert!(
        creds
            .notes
            .iter()
            .any(|n| n.contains(&format!("assumed-role/deployer/acme-{id}"))),
        "{:?}",
        creds.notes
    );

    // The API serves the KMS key's JWKS; the token verifies against it.
    let (status, jwks) = env.call("GET", "/oidc/.well-known/jwks.json", None).await;
    assert_eq!(status, 200, "{jwks}");
    let issuer = "https://tarmac.example.com/oidc";
    let claims = signing::verify(&creds.token, &jwks, issuer, "acme").unwrap();
    assert_eq!(
        claims["sub"],
        "pulumi:deploy:org:acme:project:web:stack:oidc:operation:update:scope:write"
    );
    let (_, discovery) = env
        .call("GET", "/oidc/.well-known/openid-configuration", None)
        .await;
    assert_eq!(discovery["issuer"], issuer);

    // Refused: a wrong lease, another stack's path, a request that is not one.
    for bad in [
        ask("someone-else"),
        serde_json::json!({"org": "acme", "project": "web", "stack": "dev", "deploymentId": id, "lease": "lambda-worker-1"}),
    ] {
        match reply(function.handle(bad).await) {
            Reply::Error { code, .. } => assert_eq!(code, 403),
            Reply::Credentials(_) => panic!("credentials for a caller without the lease"),
        }
    }
    assert!(matches!(
        reply(function.handle(serde_json::json!({"hello": 1})).await),
        Reply::Error { code: 400, .. }
    ));

    // Rotation to a second KMS key: new tokens carry its kid, old ones still verify.
    let old_kid = signing::kid(&creds.token);
    let second_key = kms_signing_key(&kms).await;
    let store = Arc::new(tarmac::aws::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        &table,
    ));
    let new_kid = tarmac::oidc::Issuer::new("", store, None, Some(kms.clone()))
        .rotate_kms(&second_key)
        .await
        .unwrap();
    assert_ne!(new_kid, old_kid);
    let Reply::Credentials(after) = reply(function.handle(ask("lambda-worker-1")).await) else {
        panic!("refused after the rotation");
    };
    assert_eq!(signing::kid(&after.token), new_kid);
    let (_, jwks) = env.call("GET", "/oidc/.well-known/jwks.json", None).await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    signing::verify(&creds.token, &jwks, issuer, "acme").unwrap();
    signing::verify(&after.token, &jwks, issuer, "acme").unwrap();

    // A finished deployment gets nothing, even with its lease.
    env.app
        .deps
        .runs
        .finish(id, &lease, tarmac::domain::JobStatus::Succeeded)
        .await
        .unwrap();
    assert!(matches!(
        reply(function.handle(ask("lambda-worker-1")).await),
        Reply::Error { code: 403, .. }
    ));
}

/// The worker's side of the exchange, over a real Lambda Invoke on the emulator, for the answers
/// a real run cannot provoke: the function behind it is a stand-in (a mock, in Python) that
/// refuses as the `oidc` function does (the test above covers the real one's refusals, and
/// `infra.rs` the real worker invoking the real, deployed function).
#[tokio::test]
async fn the_workers_broker_invokes_the_oidc_function_and_reads_its_refusals() {
    use tarmac::oidc::{CredentialBroker, ExchangeRequest};
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let lambda = aws_sdk_lambda::Client::new(&sdk);
    let dir = tempfile::tempdir().unwrap();
    let handler = r#"
import json
def handler(event, context):
    if event.get("lease") == "held":
        return {"credentials": {"token": "t", "expires": 1, "aws": None, "azure": None,
                                "gcp": None, "notes": [json.dumps(event, sort_keys=True)]}}
    return {"error": {"code": 403, "message": "not held: " + event["deploymentId"]}}
"#;
    std::fs::write(dir.path().join("stand_in.py"), handler).unwrap();
    let zip = dir.path().join("f.zip");
    let ok = std::process::Command::new("python3")
        .args(["-c", "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1], 'w'); z.write(sys.argv[2], 'stand_in.py'); z.close()"])
        .arg(&zip)
        .arg(dir.path().join("stand_in.py"))
        .status()
        .unwrap();
    assert!(ok.success());
    let name = format!("tarmac-oidc-{}", uuid::Uuid::new_v4().simple());
    lambda
        .create_function()
        .function_name(&name)
        .runtime(aws_sdk_lambda::types::Runtime::Python312)
        .role("arn:aws:iam::123456789012:role/oidc")
        .handler("stand_in.handler")
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .zip_file(aws_sdk_lambda::primitives::Blob::new(
                    std::fs::read(&zip).unwrap(),
                ))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let broker = tarmac::aws::oidc::LambdaBroker::new(lambda.clone(), &name);
    let id = uuid::Uuid::new_v4();
    let request = |lease: &str| ExchangeRequest {
        org: "acme".into(),
        project: "web".into(),
        stack: "dev".into(),
        deployment_id: id,
        lease: lease.into(),
    };
    let creds = broker.exchange(&request("held")).await.unwrap();
    // The function received the request as the worker sent it.
    let received: Value = serde_json::from_str(&creds.notes[0]).unwrap();
    assert_eq!(received, serde_json::to_value(request("held")).unwrap());
    let refused = broker.exchange(&request("stolen")).await.unwrap_err();
    assert_eq!(refused.status().as_u16(), 403);
    assert_eq!(refused.to_string(), format!("not held: {id}"));
    lambda
        .delete_function()
        .function_name(&name)
        .send()
        .await
        .unwrap();
}

/// AWS mode sends notifications from the Lambdas: the worker after its runs, the scheduler's
/// tick for whatever is left (retries included). Receivers are on 127.0.0.1.
#[tokio::test]
async fn in_aws_mode_the_worker_and_the_tick_deliver_webhooks_and_retries() {
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
    tarmac::aws::lambda::scheduler(&env.app, LambdaEvent::new(tick, Context::default()))
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
        let resp = tarmac::aws::lambda::api_service(Arc::clone(&env.app.deps))
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
