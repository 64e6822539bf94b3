//! The queue: one run per stack, stacks in parallel, cancel, pause, skip-intermediate,
//! timeouts, leases and shutdown.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{TestApp, TestRepo, stack};

/// Settings whose pre-run command records its start and end in `trace`, sleeping between.
fn traced(repo: &TestRepo, trace: &std::path::Path, sleep: &str) -> Value {
    let mut s = repo.settings();
    s["operationContext"] = json!({
        "preRunCommands": [format!(
            "echo \"$TARMAC_STACK $PULUMI_CI_BUILD_NUMBER start $(date +%s.%N)\" >> {t}; sleep {sleep}; echo \"$TARMAC_STACK $PULUMI_CI_BUILD_NUMBER end $(date +%s.%N)\" >> {t}",
            t = trace.display()
        )],
    });
    s
}

/// `(stack, version) -> (start, end)` from a trace file.
fn intervals(trace: &std::path::Path) -> std::collections::HashMap<(String, i64), (f64, f64)> {
    let mut out = std::collections::HashMap::new();
    for line in std::fs::read_to_string(trace).unwrap().lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let key = (parts[0].to_string(), parts[1].parse().unwrap());
        let t: f64 = parts[3].parse().unwrap();
        let e = out.entry(key).or_insert((0.0, 0.0));
        if parts[2] == "start" {
            e.0 = t
        } else {
            e.1 = t
        }
    }
    out
}

#[tokio::test]
async fn stacks_run_in_parallel_while_one_stack_runs_in_order() {
    require!(Tools);
    // Runs write their trace outside the data dir, where the sandbox lets them.
    let traces = tempfile::tempdir().unwrap();
    let trace = traces.path().join("trace");
    let app = TestApp::spawn_with(&[
        "--workers",
        "4",
        "--sandbox-rw",
        &traces.path().display().to_string(),
    ])
    .await;
    let repo = TestRepo::new();
    let (a, b) = (stack("par-a"), stack("par-b"));
    for s in [&a, &b] {
        app.post(
            &format!("/api/stacks/{s}/deployments/settings"),
            traced(&repo, &trace, "1"),
        )
        .await;
    }
    let a1 = app.deploy(&a, json!({"operation": "update"})).await;
    let a2 = app.deploy(&a, json!({"operation": "update"})).await;
    let b1 = app.deploy(&b, json!({"operation": "update"})).await;
    for (s, id) in [(&a, &a1), (&a, &a2), (&b, &b1)] {
        app.wait_for(s, id, Some("succeeded")).await;
    }
    let iv = intervals(&trace);
    let (a1, a2, b1) = (
        iv[&("par-a".into(), 1)],
        iv[&("par-a".into(), 2)],
        iv[&("par-b".into(), 1)],
    );
    assert!(a1.1 <= a2.0, "one stack's runs overlapped: {a1:?} {a2:?}");
    assert!(
        a1.0 < b1.1 && b1.0 < a1.1,
        "two stacks did not run in parallel: {a1:?} {b1:?}"
    );
}

#[tokio::test]
async fn cancel_skips_a_queued_deployment_and_stops_a_running_one() {
    require!(Tools);
    let app = TestApp::spawn_with(&["--stop-grace", "2"]).await;
    let repo = TestRepo::new();
    let s = stack("cancel");
    let mut settings = repo.settings();
    // The trap shows the process group got SIGTERM before anything harsher.
    settings["operationContext"] = json!({"preRunCommands": ["trap 'echo got SIGTERM; exit 143' TERM; echo sleeping; sleep 60 & wait"]});
    app.post(&format!("/api/stacks/{s}/deployments/settings"), settings)
        .await;
    let running = app.deploy(&s, json!({"operation": "update"})).await;
    let queued = app.deploy(&s, json!({"operation": "update"})).await;
    app.wait_for(&s, &running, Some("running")).await;
    // Wait until the command is really running.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !app.log_text(&s, &running).await.contains("sleeping") {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, _) = app
        .post(
            &format!("/api/stacks/{s}/deployments/{queued}/cancel"),
            json!(null),
        )
        .await;
    assert_eq!(status, 204);
    app.wait_for(&s, &queued, Some("skipped")).await;

    let t = Instant::now();
    let (status, _) = app
        .post(
            &format!("/api/stacks/{s}/deployments/{running}/cancel"),
            json!(null),
        )
        .await;
    assert_eq!(status, 204);
    let d = app.wait_for(&s, &running, Some("failed")).await;
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "cancel took {:?}",
        t.elapsed()
    );
    let log = app.log_text(&s, &running).await;
    assert!(
        log.contains("got SIGTERM") && log.contains("Deployment cancelled."),
        "{log}"
    );
    assert_eq!(d["jobs"][0]["steps"][1]["status"], "failed");

    // Cancelling a finished deployment changes nothing.
    let (status, body) = app
        .post(
            &format!("/api/stacks/{s}/deployments/{running}/cancel"),
            json!(null),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(app.deployment(&s, &running).await["status"], "failed");
}

#[tokio::test]
async fn paused_stacks_and_orgs_hold_their_queue_until_resumed() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("paused");
    app.post(
        &format!("/api/stacks/{s}/deployments/settings"),
        repo.settings(),
    )
    .await;

    let (status, _) = app
        .post(&format!("/api/stacks/{s}/deployments/pause"), json!(null))
        .await;
    assert_eq!(status, 204);
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.deployment(&s, &id).await["status"], "not-started");
    let (_, meta) = app
        .get(&format!("/api/stacks/{s}/deployments/metadata"))
        .await;
    for (key, want) in [
        ("paused", true),
        ("stackPaused", true),
        ("organizationPaused", false),
        ("hasSchedules", false),
    ] {
        assert_eq!(meta[key], want, "{key}: {meta}");
    }
    app.post(&format!("/api/stacks/{s}/deployments/resume"), json!(null))
        .await;
    app.wait_for(&s, &id, Some("succeeded")).await;

    let (status, _) = app
        .post("/api/orgs/default/deployments/pause", json!(null))
        .await;
    assert_eq!(status, 204);
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.deployment(&s, &id).await["status"], "not-started");
    let (_, meta) = app.get("/api/orgs/default/deployments/metadata").await;
    assert_eq!(meta["paused"], true);
    assert_eq!(meta["deploymentCounts"]["notStarted"], 1);
    assert_eq!(meta["deploymentCounts"]["succeeded"], 1);
    let (_, meta) = app
        .get(&format!("/api/stacks/{s}/deployments/metadata"))
        .await;
    assert_eq!(meta["paused"], true);
    assert_eq!(meta["organizationPaused"], true);
    app.post("/api/orgs/default/deployments/resume", json!(null))
        .await;
    app.wait_for(&s, &id, Some("succeeded")).await;
}

#[tokio::test]
async fn skip_intermediate_runs_only_the_latest_queued_deployment_of_each_operation() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("skip");
    let mut settings = repo.settings();
    settings["operationContext"] = json!({"options": {"skipIntermediateDeployments": true}});
    app.post(&format!("/api/stacks/{s}/deployments/settings"), settings)
        .await;
    // Hold the queue so the order is decided by the queue, not by timing.
    app.post(&format!("/api/stacks/{s}/deployments/pause"), json!(null))
        .await;
    let u1 = app.deploy(&s, json!({"operation": "update"})).await;
    let d1 = app.deploy(&s, json!({"operation": "destroy"})).await;
    let u2 = app.deploy(&s, json!({"operation": "update"})).await;
    let u3 = app.deploy(&s, json!({"operation": "update"})).await;
    app.post(&format!("/api/stacks/{s}/deployments/resume"), json!(null))
        .await;
    app.wait_for(&s, &u1, Some("skipped")).await;
    app.wait_for(&s, &u2, Some("skipped")).await;
    app.wait_for(&s, &d1, Some("succeeded")).await;
    app.wait_for(&s, &u3, Some("succeeded")).await;
    assert!(
        app.log_text(&s, &u1)
            .await
            .contains("a newer update deployment is queued")
    );
}

#[tokio::test]
async fn a_run_past_its_timeout_is_stopped_and_failed() {
    require!(Tools);
    let app = TestApp::spawn_with(&["--stop-grace", "1"]).await;
    let repo = TestRepo::new();
    let s = stack("timeout");
    let mut settings = repo.settings();
    settings["operationContext"] =
        json!({"preRunCommands": ["sleep 60"], "options": {"timeout": 2}});
    app.post(&format!("/api/stacks/{s}/deployments/settings"), settings)
        .await;
    let t = Instant::now();
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    app.wait_for(&s, &id, Some("failed")).await;
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(app.log_text(&s, &id).await.contains("timed out after 2s"));
}

#[tokio::test]
async fn a_crashed_server_s_runs_fail_when_their_lease_expires_and_the_stack_moves_on() {
    require!(Tools);
    let mut app = TestApp::spawn_with(&["--lease-secs", "2"]).await;
    let repo = TestRepo::new();
    let s = stack("crash");
    let mut settings = repo.settings();
    settings["operationContext"] = json!({"preRunCommands": ["echo started; sleep 5"]});
    app.post(&format!("/api/stacks/{s}/deployments/settings"), settings)
        .await;
    let first = app.deploy(&s, json!({"operation": "update"})).await;
    let second = app
        .deploy(
            &s,
            json!({"operation": "update", "operationContext": {"preRunCommands": []}}),
        )
        .await;
    app.wait_for(&s, &first, Some("running")).await;

    app.kill();
    app.restart_with(&[]);
    let d = app.wait_for(&s, &first, Some("failed")).await;
    assert!(
        app.log_text(&s, &first)
            .await
            .contains("stopped renewing its lease")
    );
    assert!(
        d["jobs"][0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|st| st["status"] != "running")
    );
    app.wait_for(&s, &second, Some("succeeded")).await;
}

#[tokio::test]
async fn sigterm_lets_runs_finish_within_the_grace_then_fails_the_rest() {
    require!(Tools);
    let mut app = TestApp::spawn_with(&["--shutdown-grace", "1", "--stop-grace", "1"]).await;
    let repo = TestRepo::new();
    let s = stack("shutdown");
    let mut settings = repo.settings();
    settings["operationContext"] = json!({"preRunCommands": ["sleep 60"]});
    app.post(&format!("/api/stacks/{s}/deployments/settings"), settings)
        .await;
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    app.wait_for(&s, &id, Some("running")).await;
    let took = app.terminate();
    assert!(took < Duration::from_secs(15), "shutdown took {took:?}");
    app.restart_with(&[]);
    let d = app.deployment(&s, &id).await;
    assert_eq!(
        d["status"], "failed",
        "nothing may stay running after shutdown"
    );
    assert!(
        app.log_text(&s, &id)
            .await
            .contains("Tarmac shut down before the deployment finished")
    );
}

/// A queued deployment says where it stands: its position counts down as the runs ahead of it
/// end, and `waitingFor` names what holds it (its stack, a pause, its org's limit, a worker).
#[tokio::test]
async fn a_queued_deployment_shows_its_position_counting_down_and_what_holds_it() {
    require!(Tools);
    let app = TestApp::spawn_with(&["--workers", "1"]).await;
    let repo = TestRepo::new();
    let mut settings = repo.settings();
    settings["operationContext"] = json!({"preRunCommands": ["sleep 1"]});
    let stacks: Vec<String> = (0..4).map(|i| stack(&format!("pos{i}"))).collect();
    for s in &stacks {
        app.post(
            &format!("/api/stacks/{s}/deployments/settings"),
            settings.clone(),
        )
        .await;
    }
    let ids: Vec<String> = {
        let mut ids = vec![];
        for s in &stacks {
            ids.push(app.deploy(s, json!({"operation": "update"})).await);
        }
        ids
    };
    // A second one on the first stack waits for its stack.
    let same = app.deploy(&stacks[0], json!({"operation": "update"})).await;
    let d = app.deployment(&stacks[0], &same).await;
    assert_eq!(d["queue"]["waitingFor"], "stack", "{d}");
    // The last of the four counts down to the front, then starts.
    let mut seen: Vec<u64> = vec![];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = app.deployment(&stacks[3], &ids[3]).await;
        if d["status"] != "not-started" {
            assert!(d.get("queue").is_none(), "{d}");
            break;
        }
        let q = &d["queue"];
        assert_eq!(q["waitingFor"], "worker", "{d}");
        assert_eq!(
            q["position"].as_u64().unwrap(),
            q["ahead"].as_u64().unwrap() + 1
        );
        let p = q["position"].as_u64().unwrap();
        if seen.last() != Some(&p) {
            seen.push(p);
        }
        assert!(Instant::now() < deadline, "{seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "only down: {seen:?}");
    assert!(seen.len() >= 2 && seen.last() == Some(&1), "{seen:?}");
    // The stack and org lists show it too.
    let paused = stack("pos-paused");
    app.post(
        &format!("/api/stacks/{paused}/deployments/settings"),
        settings.clone(),
    )
    .await;
    app.post(
        &format!("/api/stacks/{paused}/deployments/pause"),
        json!({}),
    )
    .await;
    let held = app.deploy(&paused, json!({"operation": "update"})).await;
    let (_, list) = app.get(&format!("/api/stacks/{paused}/deployments")).await;
    assert_eq!(
        list["deployments"][0]["queue"]["waitingFor"], "paused",
        "{list}"
    );
    let (_, list) = app.get("/api/orgs/default/deployments?pageSize=100").await;
    let in_org = list["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == held.as_str())
        .cloned()
        .unwrap();
    assert_eq!(in_org["queue"]["waitingFor"], "paused", "{in_org}");
    for (s, id) in stacks.iter().zip(&ids) {
        app.wait_for(s, id, Some("succeeded")).await;
    }
    app.wait_for(&stacks[0], &same, Some("succeeded")).await;
}

/// An org's concurrency limit holds its deployments back (`waitingFor: "org-limit"`) while
/// workers are free; only admins set it, and a bad one is refused.
#[tokio::test]
async fn an_org_limit_holds_deployments_back_and_only_admins_set_it() {
    require!(Tools);
    let app = TestApp::spawn_with(&["--workers", "3"]).await;
    let repo = TestRepo::new();
    let mut settings = repo.settings();
    settings["operationContext"] = json!({"preRunCommands": ["sleep 2"]});
    let writer = app.create_token("default", "write");
    let put = |token: String, body: Value| {
        let app = &app;
        async move {
            app.request(
                reqwest::Method::PUT,
                "/api/orgs/default/deployments/limits",
                Some(&token),
                Some(body.to_string().into_bytes()),
            )
            .await
        }
    };
    let (status, v) = put(writer, json!({"maxConcurrent": 1})).await;
    assert_eq!(status, 403, "{v}");
    for bad in [
        json!({"maxConcurrent": -1}),
        json!({"maxConcurrent": 0}),
        json!({"maxConcurrent": "2"}),
        json!({"maxConcurrent": 10_001}),
    ] {
        let (status, v) = put(app.token.clone(), bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains("maxConcurrent"),
            "{v}"
        );
    }
    let (_, v) = app.get("/api/orgs/default/deployments/limits").await;
    assert_eq!(v, json!({"maxConcurrent": null, "running": 0}));
    let (status, v) = put(app.token.clone(), json!({"maxConcurrent": 1})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["maxConcurrent"], 1);

    let (a, b) = (stack("limited-a"), stack("limited-b"));
    for s in [&a, &b] {
        app.post(
            &format!("/api/stacks/{s}/deployments/settings"),
            settings.clone(),
        )
        .await;
    }
    let first = app.deploy(&a, json!({"operation": "update"})).await;
    app.wait_for(&a, &first, Some("running")).await;
    let second = app.deploy(&b, json!({"operation": "update"})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let d = app.deployment(&b, &second).await;
    assert_eq!(
        (d["status"].as_str(), d["queue"]["waitingFor"].as_str()),
        (Some("not-started"), Some("org-limit")),
        "{d}"
    );
    let (_, v) = app.get("/api/orgs/default/deployments/limits").await;
    assert_eq!(v, json!({"maxConcurrent": 1, "running": 1}));
    let a_done = app.wait_for(&a, &first, Some("succeeded")).await;
    let b_done = app.wait_for(&b, &second, Some("succeeded")).await;
    // One at a time: the second started after the first ended.
    let ended = a_done["jobs"][0]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_string();
    let started = b_done["jobs"][0]["started"].as_str().unwrap().to_string();
    assert!(started >= ended, "{started} before {ended}");
    let (status, v) = put(app.token.clone(), json!({"maxConcurrent": null})).await;
    assert_eq!(
        (status.as_u16(), &v["maxConcurrent"]),
        (200, &Value::Null),
        "{v}"
    );
}

/// Claims go round-robin by org: another org's one deployment runs next, not after a tenant's
/// whole burst.
#[tokio::test]
async fn one_orgs_burst_does_not_starve_another_orgs_deployment() {
    require!(Tools);
    let app = TestApp::spawn_with(&["--workers", "1"]).await;
    let repo = TestRepo::new();
    let other = app.create_token("other", "admin");
    let mut settings = repo.settings();
    settings["operationContext"] = json!({"preRunCommands": ["sleep 0.3"]});
    let mut burst = vec![];
    for i in 0..8 {
        let s = stack(&format!("burst{i}"));
        app.post(
            &format!("/api/stacks/{s}/deployments/settings"),
            settings.clone(),
        )
        .await;
        burst.push((
            s.clone(),
            app.deploy(&s, json!({"operation": "update"})).await,
        ));
    }
    let theirs = "other/proj/single";
    let (status, v) = app
        .request(
            reqwest::Method::POST,
            &format!("/api/stacks/{theirs}/deployments"),
            Some(&other),
            Some(
                {
                    let mut b = settings.clone();
                    b["operation"] = json!("update");
                    b
                }
                .to_string()
                .into_bytes(),
            ),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let d = loop {
        let (_, d) = app
            .request(
                reqwest::Method::GET,
                &format!("/api/stacks/{theirs}/deployments/{id}"),
                Some(&other),
                None,
            )
            .await;
        if d["status"] == "succeeded" {
            break d;
        }
        assert!(Instant::now() < deadline, "{d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // It started before most of the burst had: at most those already going when it came.
    let started = d["jobs"][0]["started"].as_str().unwrap().to_string();
    let mut before = 0;
    for (s, bid) in &burst {
        let b = app.wait_for(s, bid, Some("succeeded")).await;
        if b["jobs"][0]["started"].as_str().unwrap() < started.as_str() {
            before += 1;
        }
    }
    assert!(before <= 3, "{before} of the burst ran first");
}
