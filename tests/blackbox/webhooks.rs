//! Outbound webhooks against receivers on 127.0.0.1: signatures, ordering, retries with the
//! same id, the delivery log, redelivery, ping, formats, and receivers that never answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use tokio::sync::Notify;

use crate::fakes::{FakeServer, Recorded};
use crate::support::{TestApp, TestRepo, stack};

const SECRET: &str = "receiver-secret";

fn hmac_hex(message: &[u8]) -> String {
    crate::signing::hmac_hex(SECRET, message)
}

/// Checks both signatures the way a receiver would.
fn assert_signed(r: &Recorded) {
    assert_eq!(
        r.header("pulumi-webhook-signature"),
        Some(hmac_hex(r.body.as_bytes()).as_str()),
        "Pulumi's signature"
    );
    let stamped = r
        .header("tarmac-webhook-signature")
        .expect("the timestamped signature");
    let (t, v1) = stamped
        .strip_prefix("t=")
        .and_then(|s| s.split_once(",v1="))
        .expect("t=<unix>,v1=<hex>");
    assert_eq!(v1, hmac_hex(format!("{t}.{}", r.body).as_bytes()));
    let age = time::OffsetDateTime::now_utc().unix_timestamp() - t.parse::<i64>().unwrap();
    assert!((0..300).contains(&age), "a fresh timestamp");
}

async fn deploy_and_wait(app: &TestApp, s: &str) -> String {
    let id = app.deploy(s, json!({"operation": "update"})).await;
    app.wait_for(s, &id, Some("succeeded")).await;
    id
}

#[tokio::test]
async fn a_failing_receiver_gets_retries_with_the_same_id_then_the_log_and_redelivery_show_them() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("hooked");
    app.post(
        &format!("/api/stacks/{s}/deployments/settings"),
        repo.settings(),
    )
    .await;
    // Fails twice, then succeeds.
    let receiver = FakeServer::start(|_, i| async move {
        if i < 2 {
            (500, "{\"error\":\"try later\"}".into())
        } else {
            (200, "{}".into())
        }
    })
    .await;
    let (status, hook) = app
        .post(
            &format!("/api/stacks/{s}/hooks"),
            json!({
                "organizationName": "default", "projectName": "proj", "stackName": "hooked",
                "displayName": "on success", "payloadUrl": receiver.url, "active": true,
                "secret": SECRET, "filters": ["deployment_succeeded"],
            }),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    assert_eq!(hook["hasSecret"], true);
    assert!(!hook.to_string().contains(SECRET));
    let name = hook["name"].as_str().unwrap().to_string();
    let (status, _) = app
        .post(
            &format!("/api/stacks/{s}/hooks"),
            json!({"displayName": "dup", "payloadUrl": receiver.url, "name": name}),
        )
        .await;
    assert_eq!(status, 409, "a taken name");

    deploy_and_wait(&app, &s).await;
    let got = receiver
        .wait_until("three attempts", |rs| rs.len() >= 3)
        .await;
    let ids: Vec<&str> = got
        .iter()
        .map(|r| r.header("pulumi-webhook-id").unwrap())
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one id across retries: {ids:?}"
    );
    for r in &got {
        assert_signed(r);
        assert_eq!(r.header("pulumi-webhook-kind"), Some("deployment"));
        let p = r.json();
        assert_eq!(p["status"], "succeeded");
        assert_eq!(p["stackName"], "hooked");
        assert_eq!(p["version"], 1);
        assert!(p["sequence"].as_i64().unwrap() >= 1);
    }
    // Only the event the filter names.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(receiver.recorded().len(), 3);

    // The delivery log: three attempts, newest first, with their response codes.
    let (status, log) = app
        .get(&format!("/api/stacks/{s}/hooks/{name}/deliveries"))
        .await;
    assert_eq!(status, 200, "{log}");
    let codes: Vec<i64> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["responseCode"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [200, 500, 500]);
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .all(|d| d["id"] == ids[0] && d["kind"] == "deployment")
    );
    assert!(
        log[0]["requestHeaders"]
            .as_str()
            .unwrap()
            .contains("Pulumi-Webhook-Kind: deployment")
    );

    // Redelivery by API: sent again now, same id.
    let (status, again) = app
        .post(
            &format!(
                "/api/stacks/{s}/hooks/{name}/deliveries/{}/redeliver",
                ids[0]
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (again["id"].as_str(), again["responseCode"].as_i64()),
        (Some(ids[0]), Some(200))
    );
    let got = receiver.recorded();
    assert_eq!(got.len(), 4);
    assert_eq!(got[3].header("pulumi-webhook-id"), Some(ids[0]));
    let (status, _) = app
        .post(
            &format!("/api/stacks/{s}/hooks/{name}/deliveries/nope/redeliver"),
            json!({}),
        )
        .await;
    assert_eq!(status, 404);

    // Ping answers with the delivery, whatever the receiver said.
    let (status, ping) = app
        .post(&format!("/api/stacks/{s}/hooks/{name}/ping"), json!({}))
        .await;
    assert_eq!(status, 200, "{ping}");
    assert_eq!(
        (ping["kind"].as_str(), ping["responseCode"].as_i64()),
        (Some("ping"), Some(200))
    );
    assert_eq!(
        receiver.recorded()[4].header("pulumi-webhook-kind"),
        Some("ping")
    );

    // Update keeps what the body does not name; delete ends deliveries.
    let (status, updated) = app
        .request(
            reqwest::Method::PATCH,
            &format!("/api/stacks/{s}/hooks/{name}"),
            Some(&app.token),
            Some(json!({"active": false}).to_string().into_bytes()),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        (updated["active"].clone(), updated["hasSecret"].clone()),
        (json!(false), json!(true))
    );
    let (status, _) = app.delete(&format!("/api/stacks/{s}/hooks/{name}")).await;
    assert_eq!(status, 204);
    let (status, _) = app.get(&format!("/api/stacks/{s}/hooks/{name}")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn org_hooks_hear_every_stack_in_order_in_their_format_and_a_stuck_receiver_delays_nothing() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("org-hooked");
    app.post(
        &format!("/api/stacks/{s}/deployments/settings"),
        repo.settings(),
    )
    .await;
    let slack = FakeServer::start(|_, _| async { (200, "ok".into()) }).await;
    // A receiver that does not answer until the test lets it.
    let release = Arc::new(Notify::new());
    let answered = Arc::new(AtomicUsize::new(0));
    let stuck = {
        let (release, answered) = (Arc::clone(&release), Arc::clone(&answered));
        FakeServer::start(move |_, _| {
            let (release, answered) = (Arc::clone(&release), Arc::clone(&answered));
            async move {
                release.notified().await;
                answered.fetch_add(1, Ordering::SeqCst);
                (200, "{}".into())
            }
        })
        .await
    };
    for (display, url, format) in [("slack", &slack.url, "slack"), ("stuck", &stuck.url, "raw")] {
        let (status, body) = app
            .post(
                "/api/orgs/default/hooks",
                json!({"organizationName": "default", "displayName": display, "payloadUrl": url, "format": format, "active": true}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (_, listed) = app.get("/api/orgs/default/hooks").await;
    assert_eq!(listed.as_array().unwrap().len(), 2);

    // The run finishes while the stuck receiver still holds its requests. Had anything on
    // the way (the API, the worker) waited for it, each send would have held the run for the
    // 10 s a receiver gets before it is given up on.
    let began = std::time::Instant::now();
    deploy_and_wait(&app, &s).await;
    let took = began.elapsed();
    stuck
        .wait_until("the stuck receiver's request", |rs| !rs.is_empty())
        .await;
    assert_eq!(answered.load(Ordering::SeqCst), 0, "nothing answered yet");
    assert!(
        took < std::time::Duration::from_secs(10),
        "the deployment took {took:?}: something waited on the stuck receiver"
    );
    release.notify_waiters();

    let got = slack
        .wait_until("queued, started and succeeded", |rs| rs.len() >= 3)
        .await;
    let texts: Vec<String> = got
        .iter()
        .map(|r| r.json()["text"].as_str().unwrap().to_string())
        .collect();
    // Sent concurrently, so in any order (the raw payloads' `sequence` gives the order).
    for word in ["queued", "started", "succeeded"] {
        assert!(
            texts.iter().any(
                |t| t.contains("default/proj/org-hooked") && t.contains(&format!(") {word} <"))
            ),
            "{word}: {texts:?}"
        );
    }
    assert!(
        got.iter()
            .all(|r| r.header("pulumi-webhook-signature").is_none()),
        "no secret, no signature"
    );

    // Sequence numbers follow the events' order.
    let raw = stuck.wait_until("the raw events", |rs| rs.len() >= 3).await;
    release.notify_waiters();
    let mut seqs: Vec<(i64, String)> = raw
        .iter()
        .map(|r| {
            (
                r.json()["sequence"].as_i64().unwrap(),
                r.json()["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seqs.sort();
    let order: Vec<&str> = seqs.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(order, ["not-started", "running", "succeeded"]);
}

#[tokio::test]
async fn bad_hook_requests_are_refused_and_write_nothing() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("hook-input");
    app.post(
        &format!("/api/stacks/{s}/deployments/settings"),
        repo.settings(),
    )
    .await;
    for (path, body, code) in [
        ("/api/orgs/default/hooks", json!({"displayName": "x"}), 400),
        (
            "/api/orgs/default/hooks",
            json!({"displayName": "x", "payloadUrl": "ftp://x"}),
            400,
        ),
        (
            "/api/orgs/default/hooks",
            json!({"displayName": "x", "payloadUrl": "http://127.0.0.1:9/", "filters": ["everything"]}),
            400,
        ),
        (
            "/api/orgs/default/hooks",
            json!({"displayName": "x", "payloadUrl": "http://127.0.0.1:9/", "format": "pulumi_deployments"}),
            400,
        ),
        (
            "/api/orgs/default/hooks",
            json!({"organizationName": "someone-else", "displayName": "x", "payloadUrl": "http://127.0.0.1:9/"}),
            400,
        ),
        (
            "/api/orgs/other-org/hooks",
            json!({"displayName": "x", "payloadUrl": "http://127.0.0.1:9/"}),
            404,
        ),
        (
            "/api/stacks/default/proj/missing/hooks",
            json!({"displayName": "x", "payloadUrl": "http://127.0.0.1:9/"}),
            404,
        ),
    ] {
        let (status, body) = app.post(path, body).await;
        assert_eq!(status, code, "{path}: {body}");
        assert!(body["message"].is_string(), "{body}");
    }
    // A writer manages stack hooks but not org hooks.
    let writer = app.create_token("default", "write");
    let as_writer = |path: &str| {
        app.client
            .post(format!("{}{path}", app.url))
            .header("Authorization", format!("token {writer}"))
            .json(&json!({"displayName": "x", "payloadUrl": "http://127.0.0.1:9/"}))
            .send()
    };
    assert_eq!(
        as_writer("/api/orgs/default/hooks")
            .await
            .unwrap()
            .status()
            .as_u16(),
        403
    );
    assert_eq!(
        as_writer(&format!("/api/stacks/{s}/hooks"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        201
    );
    let (_, org_hooks) = app.get("/api/orgs/default/hooks").await;
    assert_eq!(org_hooks, json!([]));
    let (_, stack_hooks) = app.get(&format!("/api/stacks/{s}/hooks")).await;
    assert_eq!(stack_hooks.as_array().unwrap().len(), 1);
    // Link-local addresses (cloud metadata services) are never reached.
    let (status, meta) = app
        .post(
            &format!("/api/stacks/{s}/hooks"),
            json!({"displayName": "metadata", "payloadUrl": "http://169.254.169.254/latest/meta-data/"}),
        )
        .await;
    assert_eq!(status, 201, "{meta}");
    let (status, ping) = app
        .post(
            &format!(
                "/api/stacks/{s}/hooks/{}/ping",
                meta["name"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{ping}");
    assert_eq!(ping["responseCode"], 0);
    assert!(
        ping["responseBody"]
            .as_str()
            .unwrap()
            .contains("which webhooks may not reach"),
        "{ping}"
    );
    // A dead receiver (nothing listens on port 9): the deployment still succeeds.
    deploy_and_wait(&app, &s).await;
}

#[tokio::test]
async fn drift_runs_are_announced_to_hooks_that_ask_for_them() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let s = stack("drift-hooked");
    app.post(
        &format!("/api/stacks/{s}/deployments/settings"),
        repo.settings(),
    )
    .await;
    let teams = FakeServer::start(|_, _| async { (200, "1".into()) }).await;
    let (status, body) = app
        .post(
            &format!("/api/stacks/{s}/hooks"),
            json!({"displayName": "drift", "payloadUrl": teams.url, "format": "ms_teams",
                   "filters": ["drift_detected", "drift_detection_succeeded", "drift_detection_failed"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    deploy_and_wait(&app, &s).await;
    let id = app.deploy(&s, json!({"operation": "detect-drift"})).await;
    app.wait_for(&s, &id, Some("succeeded")).await;
    teams
        .wait_until("the drift event", |rs| !rs.is_empty())
        .await;
    // Anything else that was coming has had time to arrive.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let got = teams.recorded();
    assert_eq!(
        got.len(),
        1,
        "no drift, so no drift_detected; and no deployment events"
    );
    let card = got[0].json();
    assert_eq!(card["@type"], "MessageCard");
    assert_eq!(card["title"], "drift detection succeeded");
    assert!(
        card["text"]
            .as_str()
            .unwrap()
            .contains("default/proj/drift-hooked"),
        "{card}"
    );
    assert_eq!(
        got[0].header("pulumi-webhook-kind"),
        Some("drift_detection")
    );
}

#[tokio::test]
async fn a_run_whose_server_died_is_announced_as_failed_after_the_restart() {
    require!(Tools);
    let mut app = TestApp::spawn_with(&["--lease-secs", "2"]).await;
    let repo = TestRepo::new();
    let s = stack("died-hooked");
    let mut settings = repo.settings();
    settings["operationContext"] = json!({"preRunCommands": ["sleep 60"]});
    app.post(&format!("/api/stacks/{s}/deployments/settings"), settings)
        .await;
    let receiver = FakeServer::start(|_, _| async { (200, "{}".into()) }).await;
    let (status, body) = app
        .post(
            &format!("/api/stacks/{s}/hooks"),
            json!({"displayName": "failures", "payloadUrl": receiver.url, "filters": ["deployment_failed"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = app.deploy(&s, json!({"operation": "update"})).await;
    app.wait_for(&s, &id, Some("running")).await;
    // The server dies mid-run; nothing announced the failure before it did.
    app.kill();
    assert!(receiver.recorded().is_empty());
    app.restart_with(&[]);
    let got = receiver
        .wait_until("the failure, announced by the reaper", |rs| !rs.is_empty())
        .await;
    let p = got[0].json();
    assert_eq!(
        (p["status"].as_str(), p["deploymentId"].as_str()),
        (Some("failed"), Some(id.as_str()))
    );
    app.wait_for(&s, &id, Some("failed")).await;
}
