//! `Env`: a fresh AWS deployment of Tarmac on the emulator, in-process, and the calls the
//! tests make through its handlers.

use super::*;

/// A fresh table, FIFO queue (with its DLQ) and KMS key on the emulator, and an app over them.
pub(crate) struct Env {
    pub(crate) app: Arc<AwsApp>,
    pub(crate) sqs: aws_sdk_sqs::Client,
    pub(crate) queue_url: String,
    pub(crate) token: String,
    pub(crate) repo: tempfile::TempDir,
    pub(crate) work: tempfile::TempDir,
}

pub(crate) fn tools_bin() -> PathBuf {
    let tools = std::env::var("TARMAC_TEST_TOOLS")
        .expect("TARMAC_TEST_TOOLS is not set: run the tests with tests/run.sh");
    Path::new(&tools).join("bin")
}

/// A Tarmac executable whose `main` starts the sandbox helper.
pub(crate) fn sandbox_helper() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tarmac"))
}

pub(crate) fn git(dir: &Path, args: &[&str]) {
    let ok = std::process::Command::new("git")
        .args(["-c", "user.email=t@example.com", "-c", "user.name=Test"])
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(ok.success());
}

impl Env {
    pub(crate) async fn new() -> Self {
        Self::with(&[]).await
    }

    /// With extra configuration, e.g. a short safety margin.
    pub(crate) async fn with(extra: &[(&'static str, &'static str)]) -> Self {
        Self::with_queue(extra, "60").await
    }

    /// With extra configuration and the queue's own visibility timeout, in seconds.
    pub(crate) async fn with_queue(
        extra: &[(&'static str, &'static str)],
        queue_visibility: &str,
    ) -> Self {
        let res = emulator::resources(queue_visibility).await;
        let sqs = aws_sdk_sqs::Client::new(&res.sdk);
        let queue_url = res.queue_url.clone();
        let work = tempfile::tempdir().unwrap();
        let path = format!(
            "{}:{}",
            tools_bin().display(),
            std::env::var("PATH").unwrap()
        );
        let work_dir = work.path().join("work").display().to_string();
        let state_dir = work.path().join("state").display().to_string();
        let cache_dir = work.path().join("cache").display().to_string();
        // Where runs write what tests read (the trace of runs): the one place outside its own
        // directory a run may write.
        let out = work.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let out = out.display().to_string();
        let vars = [
            ("TARMAC_PUBLIC_URL", "https://tarmac.example.com"),
            ("TARMAC_ALLOW_LOCAL_REPOS", "true"),
            ("TARMAC_CHILD_PATH", path.as_str()),
            ("TARMAC_SAFETY_MARGIN_SECS", "30"),
            ("TARMAC_WORK_DIR", work_dir.as_str()),
            ("TARMAC_STATE_DIR", state_dir.as_str()),
            ("TARMAC_CACHE_DIR", cache_dir.as_str()),
            ("TARMAC_SANDBOX_RW", out.as_str()),
        ];
        let vars: Vec<(&str, &str)> = extra.iter().copied().chain(vars).collect();
        let mut cfg = res.config(&vars);
        // This test binary's main is libtest's: the tarmac binary starts the runs' processes in
        // their sandbox, as the worker's own bootstrap does in Lambda.
        cfg.sandbox.helper = Some(sandbox_helper());
        let app = Arc::new(AwsApp::build(cfg, &res.sdk).await.unwrap());
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

    pub(crate) fn trace(&self) -> PathBuf {
        self.work.path().join("out/trace")
    }

    pub(crate) fn subs(&self, deployment: &str) -> Vec<(&'static str, String)> {
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
    pub(crate) async fn api(&self, name: &str, deployment: &str) -> (u16, Value) {
        let subs = self.subs(deployment);
        let subs: Vec<(&str, &str)> = subs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let req = lambda_http::request::from_str(&fixture(name, &subs)).unwrap();
        let resp = tarmac::lambda::api_service(Arc::clone(&self.app.deps))
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
    pub(crate) async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let subs = self.subs("");
        let subs: Vec<(&str, &str)> = subs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut ev: Value =
            serde_json::from_str(&fixture("apigw-v2-create-deployment.json", &subs)).unwrap();
        ev["rawPath"] = Value::String(path.into());
        ev["requestContext"]["http"]["method"] = Value::String(method.into());
        ev["requestContext"]["http"]["path"] = Value::String(path.into());
        ev["body"] = body.map_or(Value::Null, |b| Value::String(b.into()));
        let req = lambda_http::request::from_str(&ev.to_string()).unwrap();
        let resp = tarmac::lambda::api_service(Arc::clone(&self.app.deps))
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
    pub(crate) async fn receive(&self) -> SqsEvent {
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

    pub(crate) async fn work(&self, event: SqsEvent) -> Vec<String> {
        self.work_within(event, Duration::from_secs(900)).await
    }

    /// Runs the worker handler as an invocation with `left` until its deadline.
    pub(crate) async fn work_within(&self, event: SqsEvent, left: Duration) -> Vec<String> {
        let mut ctx = Context::default();
        ctx.request_id = uuid::Uuid::new_v4().to_string();
        let deadline = SystemTime::now() + left;
        ctx.deadline = deadline.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let records = event.records.clone();
        let resp = tarmac::lambda::worker(&self.app, LambdaEvent::new(event, ctx))
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
    pub(crate) async fn log_text(&self, deployment: &str) -> String {
        let (_, logs) = self.api("apigw-v2-get-logs.json", deployment).await;
        logs["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["line"].as_str())
            .collect()
    }

    pub(crate) fn engine_runs(&self) -> usize {
        std::fs::read_to_string(self.trace())
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }
}
