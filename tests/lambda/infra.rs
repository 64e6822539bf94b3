//! The deployed bundle: `infra/deploy` builds the real zips, uploads them and deploys
//! `infra/template.yaml` to the emulator's CloudFormation, exactly as a user deploys to AWS.
//! Everything after that goes through the emulated API Gateway URL: nothing runs in process,
//! and the web console is driven there in a real browser (`tests/console/aws.mjs`).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::env::git;
use crate::git_server::GitServer;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `infra/deploy <args>`, as a user runs it (the endpoint comes from AWS_ENDPOINT_URL).
fn infra(args: &[&str]) -> Output {
    let out = Command::new("bash")
        .arg(root().join("infra/deploy"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    eprintln!(
        "infra/deploy {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn deployed(out: &Output) -> Value {
    assert!(out.status.success(), "deploy failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("deploy printed no JSON ({e}): {stdout}"))
}

/// The resources of `stack` in the emulator, by kind (`tests/tools/aws_resources.py`).
fn resources(stack: &str) -> Value {
    let python = Path::new(&std::env::var("TARMAC_TEST_TOOLS").unwrap()).join("emu/bin/python");
    let out = Command::new(python)
        .arg(root().join("tests/tools/aws_resources.py"))
        .arg(stack)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Destroys the stack if the test ends early, so no functions keep running.
struct Teardown<'a> {
    stack: &'a str,
    done: bool,
}

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        if !self.done {
            infra(&[
                "deploy",
                "--stack-name",
                self.stack,
                "--arch",
                "x86_64",
                "--skip-build",
                "--deletion-protection",
                "false",
                "--json",
            ]);
            infra(&["destroy", "--stack-name", self.stack, "--delete-state"]);
        }
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("token {t}"));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A POST with an `Idempotency-Key`: the status, the body and whether it was a replay.
    async fn post_keyed(&self, path: &str, body: Value, key: &str) -> (u16, Value, bool) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header(
                "Authorization",
                format!("token {}", self.token.as_deref().unwrap_or_default()),
            )
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let replayed = resp.headers().contains_key("idempotent-replayed");
        (status, resp.json().await.unwrap_or(Value::Null), replayed)
    }

    /// Writes `stack`'s settings: the source in `remote` (with its basic auth), and `extra`.
    async fn configure(&self, stack: &str, remote: &GitServer, mut extra: Value) {
        extra["sourceContext"] = json!({"git": {
            "repoUrl": remote.url, "branch": "main",
            "gitAuth": {"basicAuth": {"userName": {"secret": "deployer"}, "password": {"secret": "git-pass"}}}
        }});
        let (status, v) = self
            .call(
                "POST",
                &format!("/api/stacks/{stack}/deployments/settings"),
                Some(extra),
            )
            .await;
        assert_eq!(status, 200, "{v}");
    }

    /// Waits for the deployment to end and returns it.
    async fn finished(&self, stack: &str, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let (status, d) = self
                .call(
                    "GET",
                    &format!("/api/stacks/{stack}/deployments/{id}"),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{d}");
            if matches!(
                d["status"].as_str(),
                Some("succeeded" | "failed" | "skipped")
            ) {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "deployment {id} is still {}",
                d["status"]
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn logs(&self, stack: &str, id: &str) -> String {
        let (status, v) = self
            .call(
                "GET",
                &format!("/api/stacks/{stack}/deployments/{id}/logs"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                l["header"]
                    .as_str()
                    .map(|h| format!("## {h}\n"))
                    .unwrap_or_else(|| l["line"].as_str().unwrap_or_default().to_string())
            })
            .collect()
    }

    /// Starts an update of `stack` and returns its id.
    async fn start(&self, stack: &str) -> String {
        let (status, v) = self
            .call(
                "POST",
                &format!("/api/stacks/{stack}/deployments"),
                Some(json!({"operation": "update"})),
            )
            .await;
        assert_eq!(status, 202, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    async fn deploy(&self, stack: &str) -> Value {
        let id = self.start(stack).await;
        let d = self.finished(stack, &id).await;
        assert_eq!(
            d["status"],
            "succeeded",
            "{d}\n{}",
            self.logs(stack, &id).await
        );
        d
    }
}

/// The console served by the `api` function behind the emulated API Gateway, at `api.base`
/// (`.../_aws/execute-api/{id}/$default`): a deep link answers the page, and in a browser
/// (`tests/console/aws.mjs`) the console signs in, starts an update of `stack` and follows it
/// to success. That is the stack's next deployment.
async fn the_console_works_behind_the_gateway(api: &Api, stack: &str) {
    let resp = api
        .http
        .get(format!("{}/{stack}", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{headers:?}"
    );
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let html = resp.text().await.unwrap();
    // The function got the path without the gateway's prefix, and the page's files are
    // relative to it, so they load under the prefix.
    assert!(
        html.contains(&format!("<meta name=\"tarmac-path\" content=\"/{stack}\">")),
        "{html}"
    );
    assert!(html.contains("src=\"../../console/js/app.js\""), "{html}");
    let js = api
        .http
        .get(format!("{}/console/js/app.js", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );

    let script = root().join("tests/console/aws.mjs");
    let args = [
        api.base.clone(),
        api.token.clone().expect("signed in"),
        stack.to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args(args)
            .current_dir(root())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("tests/console/aws.mjs: {}\n{stdout}\n{stderr}", out.status);
    assert!(
        out.status.success(),
        "the console behind API Gateway failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// A `tarmac agent` process, killed when dropped.
struct AgentProcess(std::process::Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The bundle is deployed with this worker invocation limit (the template's least), so that a
/// run can outlast it in a test.
const WORKER_TIMEOUT_SECS: u64 = 120;

/// What each of the two long runs does before its Terraform program: longer than the worker's
/// invocation.
fn outlast_the_worker(what: &str) -> String {
    format!("echo {what} in $PWD; sleep {}", WORKER_TIMEOUT_SECS + 5)
}

async fn the_agent_runs_a_pools_deployment(api: &Api, remote: &GitServer) {
    let (status, pool) = api
        .call(
            "POST",
            "/api/orgs/acme/agent-pools",
            Some(json!({"name": "on-prem", "description": "the test machine"})),
        )
        .await;
    assert_eq!(status, 200, "{pool}");
    let work = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        crate::env::tools_bin().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let agent = AgentProcess(
        Command::new(env!("CARGO_BIN_EXE_tarmac"))
            // Short polls: a claim waiting in the gateway when the test moves on would outlive
            // the agent, and write its log after the stack is destroyed.
            .args([
                "agent",
                "--url",
                &api.base,
                "--poll-secs",
                "2",
                "--work-dir",
            ])
            .arg(work.path())
            .env("TARMAC_AGENT_TOKEN", pool["tokenValue"].as_str().unwrap())
            .env("PATH", path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stack = "acme/site/agent";
    api.configure(
        stack,
        remote,
        json!({
            "agentPoolID": pool["id"],
            "operationContext": {"preRunCommands": [outlast_the_worker("agent run")]}
        }),
    )
    .await;
    let started = Instant::now();
    let run = api.deploy(stack).await;
    let took = started.elapsed();
    let logs = api.logs(stack, run["id"].as_str().unwrap()).await;
    let dir = std::fs::canonicalize(work.path()).unwrap();
    assert!(
        logs.contains(&format!("agent run in {}", dir.display())),
        "{logs}"
    );
    assert!(took > Duration::from_secs(WORKER_TIMEOUT_SECS), "{took:?}");
    assert!(
        logs.contains("Apply complete! Resources: 1 added"),
        "{logs}"
    );
    assert!(
        logs.contains("Saved the stack's state to the server"),
        "{logs}"
    );
    assert!(!logs.contains("git-pass"), "{logs}");
    // The pool's agent is listed, online.
    let (status, detail) = api
        .call(
            "GET",
            &format!(
                "/api/orgs/acme/agent-pools/{}",
                pool["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["agents"][0]["status"], "online", "{detail}");
    drop(agent);
    // Its last claim ends within its 2-second wait.
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// The same long run on the worker: the invocation's end stops it, and it fails, saying why.
async fn the_worker_fails_a_run_longer_than_its_invocation(api: &Api, remote: &GitServer) {
    let stack = "acme/site/long";
    api.configure(
        stack,
        remote,
        json!({
            "operationContext": {"preRunCommands": [outlast_the_worker("worker run")]}
        }),
    )
    .await;
    let id = api.start(stack).await;
    let run = api.finished(stack, &id).await;
    let logs = api.logs(stack, &id).await;
    assert_eq!(run["status"], "failed", "{run}\n{logs}");
    assert!(logs.contains("worker run in"), "{logs}");
    assert!(logs.contains(tarmac::lambda::INVOCATION_ENDING), "{logs}");
}

async fn the_gate_holds_a_deployment_until_approved(api: &Api, remote: &GitServer) {
    let stack = "acme/site/gated";
    api.configure(
        stack,
        remote,
        json!({
            "approvals": {"operations": ["update"], "required": 1, "approvers": ["admin"]}
        }),
    )
    .await;
    let (status, approver) = api
        .call(
            "POST",
            "/api/orgs/acme/tokens",
            Some(json!({"name": "approver", "role": "admin"})),
        )
        .await;
    assert_eq!(status, 200, "{approver}");
    let id = api.start(stack).await;
    // Long enough for a worker to have run it, had it been sent.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let path = format!("/api/stacks/{stack}/deployments/{id}");
    let (_, d) = api.call("GET", &path, None).await;
    assert_eq!(
        (d["status"].as_str(), d["approval"]["status"].as_str()),
        (Some("not-started"), Some("pending")),
        "{d}"
    );
    // The requester cannot approve it; another admin token can.
    let (status, v) = api
        .call("POST", &format!("{path}/approve"), Some(json!({})))
        .await;
    assert_eq!(status, 403, "{v}");
    let as_approver = Api {
        http: api.http.clone(),
        base: api.base.clone(),
        token: approver["tokenValue"].as_str().map(str::to_string),
    };
    let (status, v) = as_approver
        .call(
            "POST",
            &format!("{path}/approve"),
            Some(json!({"comment": "ship it"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["approval"]["status"], "approved", "{v}");
    let d = api.finished(stack, &id).await;
    assert_eq!(
        d["status"],
        "succeeded",
        "{d}\n{}",
        api.logs(stack, &id).await
    );
}

#[tokio::test]
async fn the_bundle_deploys_itself_runs_deployments_and_is_destroyed() {
    require!(Emulator, Tools, Browser);
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .expect("AWS_ENDPOINT_URL is not set: run the tests with tests/run.sh");
    let name = format!("tt{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let name = name.as_str();
    let mut teardown = Teardown {
        stack: name,
        done: false,
    };

    // Build (a no-op after tests/run.sh's build), upload, create; then the update that turns
    // the tables' deletion protection on (the default).
    let out = deployed(&infra(&[
        "deploy",
        "--stack-name",
        name,
        "--region",
        "us-east-1",
        "--arch",
        "x86_64",
        "--parameter",
        &format!("WorkerTimeout={WORKER_TIMEOUT_SECS}"),
        "--json",
    ]));
    assert_eq!(out["status"], "UPDATE_COMPLETE", "{out}");
    let outputs = &out["outputs"];
    let secret = out["bootstrapSecret"].as_str().unwrap().to_string();
    let mut api = Api {
        http: reqwest::Client::new(),
        base: format!(
            "{endpoint}/_aws/execute-api/{}/$default",
            outputs["ApiId"].as_str().unwrap()
        ),
        token: None,
    };

    // The first admin token, from the one-time secret; nothing else gets one.
    let (status, v) = api.call("GET", "/api/user", None).await;
    assert_eq!(status, 401, "{v}");
    let (status, v) = api
        .call(
            "POST",
            "/api/bootstrap",
            Some(json!({"secret": "tmb_guess", "organization": "acme"})),
        )
        .await;
    assert_eq!((status, v["code"].as_u64()), (401, Some(401)), "{v}");
    let (status, v) = api
        .call(
            "POST",
            "/api/bootstrap",
            Some(json!({"secret": secret, "organization": "acme"})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    api.token = Some(v["token"].as_str().unwrap().to_string());
    let (status, v) = api
        .call(
            "POST",
            "/api/bootstrap",
            Some(json!({"secret": secret, "organization": "evil"})),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    let (status, v) = api.call("GET", "/api/user", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["organizations"][0]["name"], "acme");

    // Idempotency keys on DynamoDB: a retried stack create answers its first 200, where a second
    // create would be 409; the same key with another body is 422.
    let create = json!({"stackName": "retried"});
    let (status, v, replayed) = api
        .post_keyed("/api/stacks/acme/site", create.clone(), "k-1")
        .await;
    assert_eq!((status, replayed), (200, false), "{v}");
    let (status, again, replayed) = api.post_keyed("/api/stacks/acme/site", create, "k-1").await;
    assert_eq!((status, replayed), (200, true), "{again}");
    assert_eq!(again, v);
    let (status, v, _) = api
        .post_keyed(
            "/api/stacks/acme/site",
            json!({"stackName": "other"}),
            "k-1",
        )
        .await;
    assert_eq!(status, 422, "{v}");
    // ... and the audit log on DynamoDB: the create, once (a replay or a refused reuse of the
    // key changes nothing, and is answered before the route).
    let (status, log) = api.call("GET", "/api/orgs/acme/auditlogs", None).await;
    assert_eq!(status, 200, "{log}");
    let seen: Vec<(String, u64)> = log["auditLogEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["path"] == "/api/stacks/acme/site")
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("POST /api/stacks/{org}/{project}".to_string(), 200)],
        "{log}"
    );

    // A Terraform program in a git remote that wants credentials.
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(
        repo.path().join("main.tf"),
        "resource \"terraform_data\" \"site\" {\n  input = \"deployed\"\n}\noutput \"site\" { value = terraform_data.site.output }\n",
    )
    .unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "site"]);
    let remote = GitServer::start(repo.path(), "deployer", "git-pass");
    let stack = "acme/site/prod";
    api.configure(stack, &remote, json!({})).await;

    // api → SQS FIFO → worker (event source mapping) → DynamoDB; state saved to S3.
    let first = api.deploy(stack).await;
    let id = first["id"].as_str().unwrap();
    let logs = api.logs(stack, id).await;
    assert!(
        logs.contains("Restored 0 state file(s) from s3://"),
        "{logs}"
    );
    assert!(
        logs.contains("Apply complete! Resources: 1 added"),
        "{logs}"
    );
    assert!(logs.contains("Saved the stack's state to s3://"), "{logs}");
    assert!(!logs.contains("git-pass"), "{logs}");
    let (status, v) = api
        .call("GET", &format!("/api/stacks/{stack}/export"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v.to_string().contains("deployed"),
        "the output is recorded: {v}"
    );

    // The next run, on whichever worker environment, starts from that state.
    let second = api.deploy(stack).await;
    let logs = api.logs(stack, second["id"].as_str().unwrap()).await;
    assert!(
        logs.contains("Restored 1 state file(s) from s3://"),
        "{logs}"
    );
    assert!(logs.contains("No changes."), "{logs}");

    // The web console, from the same Lambda under the gateway's path prefix (which the
    // function never sees): the page and its files load, and a deployment started from it
    // runs, its log read by polling (no event stream behind API Gateway).
    the_console_works_behind_the_gateway(&api, stack).await;

    // OIDC, all deployed: the worker invokes the oidc function, which signs with the stack's
    // KMS key (registering it on its first cold start) and exchanges the token at STS; the run
    // gets those credentials, and the token verifies against the JWKS that the api serves for
    // the issuer the stack reports.
    let oidc_stack = "acme/site/oidc";
    let oidc = json!({
        "oidc": {"aws": {"roleArn": "arn:aws:iam::123456789012:role/deployer", "sessionName": "tarmac-run"}},
        // The run is sandboxed (it may write nothing outside its directory) and the token is
        // masked in the log: it prints it encoded, for the test.
        "preRunCommands": [
            "test -n \"$AWS_SESSION_TOKEN\" && echo \"token-b64: $(base64 -w0 < \"$PULUMI_OIDC_TOKEN_FILE\")\""
        ]
    });
    api.configure(oidc_stack, &remote, json!({ "operationContext": oidc }))
        .await;
    let run = api.deploy(oidc_stack).await;
    let logs = api.logs(oidc_stack, run["id"].as_str().unwrap()).await;
    assert!(logs.contains("assumed-role/deployer/tarmac-run"), "{logs}");
    let token = logs
        .lines()
        .find_map(|l| l.strip_prefix("token-b64: "))
        .unwrap_or_else(|| panic!("{logs}"));
    let token =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, token.trim()).unwrap();
    let token = String::from_utf8(token).unwrap();
    assert!(!logs.contains(token.trim()), "the token is masked: {logs}");
    let (status, jwks) = api.call("GET", "/oidc/.well-known/jwks.json", None).await;
    assert_eq!(status, 200, "{jwks}");
    let issuer = outputs["OidcIssuer"].as_str().unwrap();
    let claims = crate::signing::verify(token.trim(), &jwks, issuer, "acme").unwrap();
    assert_eq!(
        claims["sub"],
        "pulumi:deploy:org:acme:project:site:stack:oidc:operation:update:scope:write"
    );
    let (_, discovery) = api
        .call("GET", "/oidc/.well-known/openid-configuration", None)
        .await;
    assert_eq!(discovery["issuer"], issuer, "{discovery}");

    // An approval gate, deployed: the gated update is not sent to the workers; a second
    // token's approval sends it, and it runs.
    the_gate_holds_a_deployment_until_approved(&api, &remote).await;

    // An agent pool of the deployed bundle, served by a `tarmac agent` on this machine through
    // the gateway's agent route (the agent gateway function, with its own role). Its run lasts
    // longer than the worker's invocation limit, and succeeds; the same run on the worker,
    // meanwhile, is stopped by that limit and fails. The agent's run never goes through SQS,
    // and keeps its state in the state bucket through the gateway.
    tokio::join!(
        the_agent_runs_a_pools_deployment(&api, &remote),
        the_worker_fails_a_run_longer_than_its_invocation(&api, &remote),
    );

    // The EventBridge rule's tick fires a one-time schedule.
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (status, v) = api
        .call(
            "POST",
            &format!("/api/stacks/{stack}/deployments/schedules"),
            Some(json!({"scheduleOnce": now, "request": {"operation": "update"}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(150);
    let scheduled = loop {
        let (status, v) = api
            .call(
                "GET",
                &format!("/api/stacks/{stack}/deployments?pageSize=10"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        if let Some(d) = v["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["version"] == 4)
        {
            break d.clone();
        }
        assert!(Instant::now() < deadline, "the scheduler never fired: {v}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let third = api.finished(stack, scheduled["id"].as_str().unwrap()).await;
    assert_eq!(third["status"], "succeeded", "{third}");

    // Every kind of resource is there (so the listing below can find them).
    let before = resources(name);
    for (kind, items) in before.as_object().unwrap() {
        assert!(!items.as_array().unwrap().is_empty(), "no {kind}: {before}");
    }

    // Destroy refuses while the tables are protected, and while the bucket holds state.
    let refused = infra(&["destroy", "--stack-name", name]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("has deletion protection on"));
    // (No --arch: an update keeps the stack's x86_64.)
    let out = deployed(&infra(&[
        "deploy",
        "--stack-name",
        name,
        "--skip-build",
        "--deletion-protection",
        "false",
        "--json",
    ]));
    assert_eq!(out["status"], "UPDATE_COMPLETE", "{out}");
    assert_eq!(out["outputs"]["ApiId"], outputs["ApiId"], "the same API");
    assert_eq!(
        out["bootstrapSecret"],
        Value::Null,
        "an update keeps the secret"
    );
    let refused = infra(&["destroy", "--stack-name", name]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(
            "engine state of 4 stack(s) (acme/site/agent, acme/site/gated, acme/site/oidc, acme/site/prod)"
        ),
        "{stderr}"
    );
    // The API still works: the refusals changed nothing.
    let (status, _) = api.call("GET", "/api/user", None).await;
    assert_eq!(status, 200);

    let done = infra(&["destroy", "--stack-name", name, "--delete-state"]);
    assert!(done.status.success());
    teardown.done = true;
    let after = resources(name);
    for (kind, items) in after.as_object().unwrap() {
        assert!(items.as_array().unwrap().is_empty(), "{kind} left: {after}");
    }
    drop(remote);
}
