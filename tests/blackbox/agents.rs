//! Agent pools: the pool API, and `tarmac agent` processes that run a pool's deployments
//! against a real `tarmac serve` (real git over HTTP, real Terraform): one run per stack across
//! agents, state carried from one agent to the next, cancel, a killed agent, a deleted pool.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::escapes::{ATTEMPTS, assert_confined};
use crate::git_server::GitServer;
use crate::support::{TestApp, TestRepo, stack, tools_bin};

/// A `tarmac agent` process, killed when dropped.
struct Agent {
    child: Option<Child>,
    work: tempfile::TempDir,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Agent {
    fn start(app: &TestApp, token: &str) -> Self {
        Self::start_with(app, token, &[])
    }

    fn start_with(app: &TestApp, token: &str, args: &[&str]) -> Self {
        let work = tempfile::tempdir().unwrap();
        let path = format!(
            "{}:{}",
            tools_bin().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_tarmac"))
            .args(["agent", "--url", &app.url, "--work-dir"])
            .arg(work.path())
            .args(args)
            .env("TARMAC_AGENT_TOKEN", token)
            .env("PATH", path)
            // The agent's own secrets, which no run may see.
            .env("AWS_SECRET_ACCESS_KEY", "agent-secret-key-must-not-leak")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tarmac agent");
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = out.next().and_then(|l| l.ok()).unwrap_or_default();
        if !first.contains("serving its pool") {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
            panic!("the agent did not start: {first}\n{err}");
        }
        std::thread::spawn(move || for _ in out {});
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = std::sync::Arc::clone(&stderr);
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Self {
            child: Some(child),
            work,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Waits for the agent to exit on its own, returning its status.
    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        let c = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(start.elapsed() < within, "the agent did not exit");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn create_pool(app: &TestApp, name: &str) -> (String, String) {
    let (status, v) = app
        .post(
            "/api/orgs/default/agent-pools",
            json!({"name": name, "description": "runs in the test"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let token = v["tokenValue"].as_str().unwrap().to_string();
    assert!(token.starts_with("tpa_"), "{v}");
    (v["id"].as_str().unwrap().to_string(), token)
}

/// Settings that deploy the repository over HTTP on `pool`, after a pre-run command.
fn pool_settings(git: &GitServer, pool: &str, pre_run: &str) -> Value {
    json!({
        "agentPoolID": pool,
        "sourceContext": {"git": {
            "repoUrl": git.url, "branch": "refs/heads/main", "repoDir": "infra",
            "gitAuth": {"basicAuth": {"userName": {"secret": "pool-git-user"}, "password": {"secret": "pool-pass"}}},
        }},
        "operationContext": {"preRunCommands": [pre_run]},
    })
}

async fn wait_status(app: &TestApp, s: &str, id: &str, want: &str, within: Duration) -> Value {
    let start = Instant::now();
    loop {
        let d = app.deployment(s, id).await;
        if d["status"] == want {
            return d;
        }
        assert!(
            start.elapsed() < within,
            "{s} {id} is {} after {within:?}, not {want}: {}",
            d["status"],
            app.log_text(s, id).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_pool_api_shows_a_token_once_and_refuses_what_it_must() {
    let app = TestApp::spawn().await;
    let writer = app.create_token("default", "write");
    let (status, v) = app
        .request(
            Method::POST,
            "/api/orgs/default/agent-pools",
            Some(&writer),
            Some(json!({"name": "x"}).to_string().into_bytes()),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    for bad in [json!({}), json!({"name": ""}), json!({"name": 7})] {
        let (status, v) = app.post("/api/orgs/default/agent-pools", bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    }
    let (id, token) = create_pool(&app, "private-net").await;
    // Only the token's hash is stored.
    for file in ["tarmac.db", "tarmac.db-wal"] {
        if let Ok(bytes) = std::fs::read(app.data().join(file)) {
            let t = token.as_bytes();
            assert!(
                !bytes.windows(t.len()).any(|w| w == t),
                "the pool token rests in plaintext in {file}"
            );
        }
    }

    let (status, v) = app.get("/api/orgs/default/agent-pools").await;
    assert_eq!(status, StatusCode::OK);
    let pools = v["agentPools"].as_array().unwrap();
    assert_eq!(pools.len(), 1, "{v}");
    assert_eq!(pools[0]["id"], id.as_str());
    assert_eq!(pools[0]["status"], "offline");
    assert!(!v.to_string().contains(&token), "the token is shown once");
    let (status, v) = app
        .get(&format!("/api/orgs/default/agent-pools/{id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["agents"], json!([]));
    assert!(!v.to_string().contains(&token));

    let (status, v) = app
        .request(
            Method::PATCH,
            &format!("/api/orgs/default/agent-pools/{id}"),
            Some(&app.token),
            Some(json!({"description": "renamed"}).to_string().into_bytes()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"name": "private-net", "description": "renamed"}));

    // Another org sees nothing of it; a malformed id names nothing.
    let other = app.create_token("other", "admin");
    let (status, _) = app
        .request(
            Method::GET,
            &format!("/api/orgs/other/agent-pools/{id}"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.get("/api/orgs/default/agent-pools/not-a-uuid").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The pool token reaches nothing but the agent API, and org tokens not that.
    let (status, _) = app
        .request(
            Method::GET,
            "/api/orgs/default/agent-pools",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let claim = json!({"agent": {"id": "a1"}, "waitSeconds": 0})
        .to_string()
        .into_bytes();
    let (status, _) = app
        .request(
            Method::POST,
            "/api/agent/claim",
            Some(&app.token),
            Some(claim.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app
        .request(
            Method::POST,
            "/api/agent/claim",
            Some(&token),
            Some(claim.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, v) = app
        .get(&format!("/api/orgs/default/agent-pools/{id}"))
        .await;
    assert_eq!(v["agents"][0]["status"], "online", "{v}");

    // Settings must name one of the org's pools.
    let s = stack("pool-settings");
    for (pool, why) in [
        ("not-a-uuid", "is not an agent pool id"),
        (
            "6a1e8b52-58c4-4a39-9a39-1c1a4e0b7a11",
            "names no agent pool",
        ),
    ] {
        let (status, v) = app
            .post(
                &format!("/api/stacks/{s}/deployments/settings"),
                json!({"agentPoolID": pool}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["message"].as_str().unwrap().contains(why), "{v}");
    }

    // So must a schedule's request, and a deployment's own request.
    let repo = TestRepo::new();
    app.post(
        &format!("/api/stacks/{s}/deployments/settings"),
        repo.settings(),
    )
    .await;
    let missing =
        json!({"operation": "update", "agentPoolID": "6a1e8b52-58c4-4a39-9a39-1c1a4e0b7a11"});
    let (status, v) = app
        .post(
            &format!("/api/stacks/{s}/deployments/schedules"),
            json!({"scheduleCron": "0 * * * *", "request": missing}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = app
        .post(&format!("/api/stacks/{s}/deployments"), missing.clone())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");

    // A queued deployment holds the pool: 409, then force fails it with the reason.
    let mut settings = repo.settings();
    settings["agentPoolID"] = json!(id);
    let (status, v) = app
        .post(&format!("/api/stacks/{s}/deployments/settings"), settings)
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let queued = app.deploy(&s, json!({"operation": "update"})).await;
    // No agent runs: the built-in workers leave it queued.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.deployment(&s, &queued).await["status"], "not-started");
    let (status, v) = app
        .delete(&format!("/api/orgs/default/agent-pools/{id}"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let (status, _) = app
        .delete(&format!("/api/orgs/default/agent-pools/{id}?force=true"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(app.deployment(&s, &queued).await["status"], "failed");
    assert!(
        app.log_text(&s, &queued)
            .await
            .contains("agent pool was deleted")
    );
    let (status, _) = app
        .request(Method::POST, "/api/agent/claim", Some(&token), Some(claim))
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a deleted pool's token is dead"
    );
    let (status, _) = app
        .get(&format!("/api/orgs/default/agent-pools/{id}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Two agents serve a pool: each stack's runs in order, state carried between agents, cancel,
/// and an agent killed mid-run whose run fails within two leases while the other carries on.
#[tokio::test]
async fn two_agents_serve_a_pool() {
    require!(Tools);
    let lease = 3.0;
    let app = TestApp::spawn_with(&["--lease-secs", &lease.to_string()]).await;
    let repo = TestRepo::new();
    let git = GitServer::start(repo.dir.path(), "pool-git-user", "pool-pass");
    let (pool, token) = create_pool(&app, "two").await;

    // State written on one agent is read by the next run, on the other.
    let a = stack("agent-state");
    let (status, v) = app
        .post(
            &format!("/api/stacks/{a}/deployments/settings"),
            pool_settings(
                &git,
                &pool,
                "echo ran in $PWD; echo \"agent key: [$AWS_SECRET_ACCESS_KEY]\"",
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let mut first = Agent::start(&app, &token);
    let id = app.deploy(&a, json!({"operation": "update"})).await;
    wait_status(&app, &a, &id, "succeeded", Duration::from_secs(60)).await;
    let log = app.log_text(&a, &id).await;
    assert!(
        log.contains(&first.work.path().display().to_string()),
        "{log}"
    );
    assert!(log.contains("1 added, 0 changed, 0 destroyed"), "{log}");
    assert!(
        log.contains("agent key: []"),
        "the run sees none of the agent's environment: {log}"
    );
    first.terminate();
    let second = Agent::start(&app, &token);
    let id = app.deploy(&a, json!({"operation": "update"})).await;
    wait_status(&app, &a, &id, "succeeded", Duration::from_secs(60)).await;
    let log = app.log_text(&a, &id).await;
    assert!(
        log.contains(&second.work.path().display().to_string()),
        "{log}"
    );
    assert!(
        log.contains("No changes."),
        "the second agent started from the first's state: {log}"
    );
    drop(second);

    // One run per stack across the agents: a stack's two runs never overlap, and two stacks
    // run at once, one on each agent.
    let traces = tempfile::tempdir().unwrap();
    let (b, c) = (stack("agent-b"), stack("agent-c"));
    for s in [&b, &c] {
        let pre = format!(
            "echo \"$TARMAC_STACK $PULUMI_CI_BUILD_NUMBER $(date +%s.%N) $PWD\" >> {dir}/trace; sleep 2; echo \"$TARMAC_STACK $PULUMI_CI_BUILD_NUMBER $(date +%s.%N) end\" >> {dir}/trace",
            dir = traces.path().display()
        );
        let (status, v) = app
            .post(
                &format!("/api/stacks/{s}/deployments/settings"),
                pool_settings(&git, &pool, &pre),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    // The runs write their trace outside their directory, where the agents let them.
    let rw = traces.path().display().to_string();
    let first = Agent::start_with(&app, &token, &["--sandbox-rw", &rw]);
    let second = Agent::start_with(&app, &token, &["--sandbox-rw", &rw]);
    let mut ids = vec![];
    for s in [&b, &b, &c, &c] {
        ids.push((
            s.clone(),
            app.deploy(s, json!({"operation": "update"})).await,
        ));
    }
    for (s, id) in &ids {
        wait_status(&app, s, id, "succeeded", Duration::from_secs(90)).await;
    }
    let trace = std::fs::read_to_string(traces.path().join("trace")).unwrap();
    let mut spans: std::collections::BTreeMap<(String, String), (f64, f64, String)> =
        Default::default();
    for line in trace.lines() {
        let p: Vec<&str> = line.split_whitespace().collect();
        let e = spans
            .entry((p[0].to_string(), p[1].to_string()))
            .or_insert((0.0, 0.0, String::new()));
        if p[3] == "end" {
            e.1 = p[2].parse().unwrap();
        } else {
            e.0 = p[2].parse().unwrap();
            e.2 = p[3].to_string();
        }
    }
    assert_eq!(spans.len(), 4, "{trace}");
    for stack_name in ["agent-b", "agent-c"] {
        let runs: Vec<&(f64, f64, String)> = spans
            .iter()
            .filter(|((s, _), _)| s == stack_name)
            .map(|(_, v)| v)
            .collect();
        assert!(
            runs[0].1 <= runs[1].0 || runs[1].1 <= runs[0].0,
            "{stack_name}'s runs overlapped: {trace}"
        );
    }
    let dirs: std::collections::BTreeSet<String> = spans
        .values()
        .map(|(_, _, dir)| dir.split("/runs/").next().unwrap().to_string())
        .collect();
    assert_eq!(dirs.len(), 2, "both agents ran deployments: {trace}");

    // A cancel reaches the agent's run.
    let (status, v) = app
        .post(
            &format!("/api/stacks/{b}/deployments/settings"),
            pool_settings(&git, &pool, "echo waiting-for-cancel; sleep 120"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let id = app.deploy(&b, json!({"operation": "update"})).await;
    wait_for_log(&app, &b, &id, "waiting-for-cancel").await;
    let t = Instant::now();
    let (status, _) = app
        .post(
            &format!("/api/stacks/{b}/deployments/{id}/cancel"),
            json!({}),
        )
        .await;
    assert!(status.is_success());
    wait_status(&app, &b, &id, "failed", Duration::from_secs(20)).await;
    assert!(
        app.log_text(&b, &id)
            .await
            .contains("Deployment cancelled.")
    );
    eprintln!("cancel reached the agent's run in {:?}", t.elapsed());

    // An agent killed mid-run: the run fails within two leases; the other agent carries on.
    let (status, v) = app
        .post(
            &format!("/api/stacks/{c}/deployments/settings"),
            pool_settings(&git, &pool, "echo long-run-started in $PWD; sleep 30.0417"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let long = app.deploy(&c, json!({"operation": "update"})).await;
    wait_for_log(&app, &c, &long, "long-run-started in /").await;
    let log = app.log_text(&c, &long).await;
    let on_first = log.contains(&first.work.path().display().to_string());
    let (mut victim, survivor) = if on_first {
        (first, second)
    } else {
        (second, first)
    };
    let killed = Instant::now();
    victim.kill();
    wait_status(
        &app,
        &c,
        &long,
        "failed",
        Duration::from_secs_f64(lease * 2.0 + 2.0),
    )
    .await;
    eprintln!(
        "a killed agent's run failed {:?} after the kill",
        killed.elapsed()
    );
    let (status, v) = app
        .post(
            &format!("/api/stacks/{b}/deployments/settings"),
            pool_settings(&git, &pool, "echo after"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let after = app.deploy(&b, json!({"operation": "update"})).await;
    wait_status(&app, &b, &after, "succeeded", Duration::from_secs(60)).await;
    drop(survivor);
    // The killed agent's engine processes: stopped, so nothing outlives the test.
    let _ = Command::new("pkill").args(["-f", "sleep 30.0417"]).status();
}

/// An agent whose pool is deleted stops with a clear message.
#[tokio::test]
async fn an_agent_whose_pool_is_deleted_stops() {
    let app = TestApp::spawn().await;
    let (pool, token) = create_pool(&app, "doomed").await;
    let mut agent = Agent::start(&app, &token);
    let (status, _) = app
        .delete(&format!("/api/orgs/default/agent-pools/{pool}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let status = agent.wait_exit(Duration::from_secs(40));
    assert!(!status.success());
    let err = agent.stderr.lock().unwrap().clone();
    assert!(err.contains("refused this agent's pool token"), "{err}");
}

async fn wait_for_log(app: &TestApp, s: &str, id: &str, text: &str) {
    let start = Instant::now();
    while !app.log_text(s, id).await.contains(text) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{text} never appeared: {}",
            app.log_text(s, id).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sandbox holds on an agent as in `serve`: a pool's run tries every way out, next to
/// another run of the same agent, on the machine of the server, and fails each time, while its
/// Terraform update succeeds.
#[tokio::test]
async fn an_agents_runs_reach_nothing_of_the_agent_the_server_or_other_runs() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};

    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let git = GitServer::start(repo.dir.path(), "pool-git-user", "pool-pass");
    let (pool, token) = create_pool(&app, "sandboxed").await;
    let agent = Agent::start_with(&app, &token, &["--concurrency", "2"]);
    let data = std::fs::canonicalize(app.data()).unwrap();

    // A stack with state on the server, to steal.
    let other = stack("agent-sbx-other");
    app.post(
        &format!("/api/stacks/{other}/deployments/settings"),
        pool_settings(&git, &pool, "true"),
    )
    .await;
    let id = app.deploy(&other, json!({"operation": "update"})).await;
    wait_status(&app, &other, &id, "succeeded", Duration::from_secs(60)).await;
    let other_state = data.join("state/default/proj/agent-sbx-other/terraform.tfstate");
    assert!(other_state.is_file(), "{}", other_state.display());

    let neighbour = stack("agent-sbx-neighbour");
    let mut settings = pool_settings(&git, &pool, "echo ready; sleep 61.0417");
    settings["operationContext"]["environmentVariables"] =
        json!({"NEIGHBOUR_SECRET": {"secret": "neighbour-secret-value"}});
    app.post(
        &format!("/api/stacks/{neighbour}/deployments/settings"),
        settings,
    )
    .await;
    let neighbour_id = app.deploy(&neighbour, json!({"operation": "update"})).await;
    wait_for_log(&app, &neighbour, &neighbour_id, "\nready").await;

    let abstract_name = format!("tarmac-test-{}", uuid::Uuid::new_v4());
    let _listener =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap())
            .unwrap();
    let outside = tempfile::tempdir().unwrap();
    let work = std::fs::canonicalize(agent.work.path()).unwrap();
    let attacker = stack("agent-sbx-attacker");
    let mut settings = pool_settings(&git, &pool, ATTEMPTS);
    settings["operationContext"]["environmentVariables"] = json!({
        "SERVER_PID": agent.pid().to_string(),
        "DATA_DIR": data.display().to_string(),
        "OTHER_STATE": other_state.display().to_string(),
        "OTHER_RUN": work.join("runs").join(&neighbour_id).display().to_string(),
        "NEIGHBOUR": "sleep 61.0417",
        "OUTSIDE": outside.path().display().to_string(),
        "ABSTRACT": abstract_name,
        // The agent is started with this key in its environment.
        "SECRET_MARK": "agent-secret-key",
        "SECRET_MARK_END": "-must-not-leak",
    });
    app.post(
        &format!("/api/stacks/{attacker}/deployments/settings"),
        settings,
    )
    .await;
    let attack = app.deploy(&attacker, json!({"operation": "update"})).await;
    wait_status(
        &app,
        &attacker,
        &attack,
        "succeeded",
        Duration::from_secs(60),
    )
    .await;
    let log = app.log_text(&attacker, &attack).await;
    app.post(
        &format!("/api/stacks/{neighbour}/deployments/{neighbour_id}/cancel"),
        json!({}),
    )
    .await;

    assert_confined(&log, crate::sandbox::NAMES);
    for secret in [
        "agent-secret-key-must-not-leak",
        token.as_str(),
        "platform-secret-key-must-not-leak",
        "neighbour-secret-value",
    ] {
        assert!(!log.contains(secret), "{secret} leaked:\n{log}");
    }
    assert!(!data.join("pwned").exists());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    assert!(log.contains("Apply complete! Resources: 1 added"), "{log}");
    wait_status(
        &app,
        &neighbour,
        &neighbour_id,
        "failed",
        Duration::from_secs(20),
    )
    .await;
}
