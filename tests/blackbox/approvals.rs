//! Approval gates through a real server: a gated deployment waits, `not-started`, until enough
//! approvers approve it, then runs; a rejection or the deadline skips it, saying why; the token
//! that asked cannot approve; previews never wait; the gate is the stack admins' to set, and a
//! request cannot lift it. Webhooks hear each step.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fakes::FakeServer;
use crate::support::{TestApp, TestRepo, stack};

async fn call(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    app.request(
        method,
        path,
        Some(token),
        Some(body.to_string().into_bytes()),
    )
    .await
}

#[tokio::test]
async fn gated_deployments_wait_for_approvers_and_run_or_are_skipped() {
    require!(Tools);
    // Short leases make the ticker (which expires approvals) run every second.
    let app = TestApp::spawn_with(&["--lease-secs", "3"]).await;
    let repo = TestRepo::new();
    let s = stack("gated");
    let hooks = FakeServer::start(|_, _| async { (200, "{}".into()) }).await;
    let (status, v) = app
        .post(
            "/api/orgs/default/hooks",
            json!({"organizationName": "default", "displayName": "approvals", "payloadUrl": hooks.url, "format": "raw", "active": true,
                   "filters": ["deployment_approval_required", "deployment_approved", "deployment_rejected"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let deployer = app.create_named_token("default", "write", "deployer");
    let alice = app.create_named_token("default", "write", "alice");
    let bob = app.create_named_token("default", "admin", "bob");
    let reader = app.create_named_token("default", "read", "reader");

    // A writer may set the source, but not the gate: that is an admin's.
    let (status, v) = call(
        &app,
        &deployer,
        Method::POST,
        &format!("/api/stacks/{s}/deployments/settings"),
        repo.settings(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let rule = json!({"approvals": {"operations": ["update", "destroy"], "required": 2,
                                    "approvers": ["alice", "admin"], "expiresAfter": 3600}});
    let (status, v) = call(
        &app,
        &deployer,
        Method::POST,
        &format!("/api/stacks/{s}/deployments/settings"),
        rule.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    // Bad rules are refused, and change nothing.
    for bad in [
        json!({"approvals": {"operations": ["deploy"]}}),
        json!({"approvals": {"operations": ["preview"]}}),
        json!({"approvals": {"operations": ["update"], "required": -1}}),
    ] {
        let (status, v) = app
            .post(
                &format!("/api/stacks/{s}/deployments/settings"),
                bad.clone(),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["message"].as_str().unwrap().contains("approvals"), "{v}");
    }
    let (_, current) = app
        .get(&format!("/api/stacks/{s}/deployments/settings"))
        .await;
    assert!(current.get("approvals").is_none(), "{current}");
    let (status, v) = app
        .post(&format!("/api/stacks/{s}/deployments/settings"), rule)
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["approvals"]["required"], 2, "{v}");

    // A request cannot bring its own rule, and one that does not inherit the stack's settings
    // is gated all the same.
    let (status, v) = call(
        &app,
        &deployer,
        Method::POST,
        &format!("/api/stacks/{s}/deployments"),
        json!({"operation": "update", "approvals": {"operations": []}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("approvals is a stack setting"),
        "{v}"
    );
    let mut alone = repo.settings();
    alone["operation"] = json!("update");
    alone["inheritSettings"] = json!(false);
    let (status, v) = call(
        &app,
        &deployer,
        Method::POST,
        &format!("/api/stacks/{s}/deployments"),
        alone,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let uninherited = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        app.deployment(&s, &uninherited).await["approval"]["status"],
        "pending"
    );
    let (status, v) = app
        .post(
            &format!("/api/stacks/{s}/deployments/{uninherited}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    // Cancelled undecided, its approval is no longer pending.
    let cancelled = app.deployment(&s, &uninherited).await;
    assert_eq!(cancelled["status"], "skipped", "{cancelled}");
    assert_eq!(cancelled["approval"]["status"], "withdrawn", "{cancelled}");

    // A preview never waits.
    let (status, v) = call(
        &app,
        &deployer,
        Method::POST,
        &format!("/api/stacks/{s}/deployments"),
        json!({"operation": "preview"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let preview = app
        .wait_for(&s, v["id"].as_str().unwrap(), Some("succeeded"))
        .await;
    assert!(preview.get("approval").is_none(), "{preview}");

    // An update waits, not-started, with its approval shown.
    let (status, v) = call(
        &app,
        &deployer,
        Method::POST,
        &format!("/api/stacks/{s}/deployments"),
        json!({"operation": "update"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let d = app.deployment(&s, &id).await;
    assert_eq!(d["status"], "not-started", "{d}");
    assert_eq!(d["approval"]["status"], "pending", "{d}");
    assert_eq!(
        (
            d["approval"]["required"].as_u64(),
            d["approval"]["given"].as_u64()
        ),
        (Some(2), Some(0)),
        "{d}"
    );
    let (_, listed) = app.get(&format!("/api/stacks/{s}/deployments")).await;
    let listed = listed["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(listed["approval"]["status"], "pending", "{listed}");

    let path = |verb: &str, id: &str| format!("/api/stacks/{s}/deployments/{id}/{verb}");
    // The requester cannot approve its own; a reader, or a writer the rule does not name,
    // cannot approve at all; a bad comment is refused. None of this changes the approval.
    for (who, body, want) in [
        (&deployer, json!({}), StatusCode::FORBIDDEN),
        (&reader, json!({}), StatusCode::FORBIDDEN),
        (&alice, json!({"comment": 42}), StatusCode::BAD_REQUEST),
        (
            &alice,
            json!({"comment": "x".repeat(1001)}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, v) = call(&app, who, Method::POST, &path("approve", &id), body).await;
        assert_eq!(status, want, "{v}");
        assert!(v["message"].is_string() && v["code"].is_number(), "{v}");
    }
    let (status, v) = call(
        &app,
        &alice,
        Method::POST,
        &path("approve", "not-a-uuid"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = call(
        &app,
        &alice,
        Method::POST,
        &path("approve", &uuid::Uuid::new_v4().to_string()),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(app.deployment(&s, &id).await["approval"]["given"], 0);

    // One approval of two: still waiting; the same approver twice is a conflict.
    let (status, v) = call(
        &app,
        &alice,
        Method::POST,
        &path("approve", &id),
        json!({"comment": "plan looks right"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (
            v["status"].as_str(),
            v["approval"]["status"].as_str(),
            v["approval"]["given"].as_u64()
        ),
        (Some("not-started"), Some("pending"), Some(1)),
        "{v}"
    );
    assert_eq!(v["approval"]["approvedBy"][0]["name"], "alice");
    assert_eq!(
        v["approval"]["approvedBy"][0]["comment"],
        "plan looks right"
    );
    let (status, v) = call(&app, &alice, Method::POST, &path("approve", &id), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");

    // A deployment queued behind it waits too, and can still be cancelled.
    let behind = app.deploy(&s, json!({"operation": "refresh"})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.deployment(&s, &behind).await["status"], "not-started");
    let (status, v) = app
        .post(
            &format!("/api/stacks/{s}/deployments/{behind}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(app.deployment(&s, &behind).await["status"], "skipped");

    // `tarmac deployments get` shows where it stands; the second approval, from the CLI (an
    // admin: the rule names the role), lets it run.
    let home = tempfile::tempdir().unwrap();
    let cli = |token: &str, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tarmac"))
            .args(args)
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("TARMAC_URL", &app.url)
            .env("TARMAC_TOKEN", token)
            .env_remove("TARMAC_PROFILE")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let target = format!("{s}/{id}");
    let (code, text) = cli(&bob, &["deployments", "get", &target]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("Approval: pending (1 of 2 given"), "{text}");
    let (code, text) = cli(&bob, &["deployments", "approve", &target, "-m", "lgtm"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("approval approved (2 of 2 given)"), "{text}");
    let done = app.wait_for(&s, &id, Some("succeeded")).await;
    assert_eq!(done["approval"]["given"], 2);
    assert_eq!(done["approval"]["approvedBy"][1]["comment"], "lgtm");
    let (code, text) = cli(&alice, &["deployments", "reject", &target]);
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("already approved"), "{text}");
    let (status, v) = call(&app, &bob, Method::POST, &path("reject", &id), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");

    // Rejected: skipped at once, with who and why in its log.
    let rejected = app.deploy(&s, json!({"operation": "destroy"})).await;
    let (status, v) = call(
        &app,
        &bob,
        Method::POST,
        &path("reject", &rejected),
        json!({"comment": "not on a Friday"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (v["status"].as_str(), v["approval"]["status"].as_str()),
        (Some("skipped"), Some("rejected")),
        "{v}"
    );
    assert_eq!(v["approval"]["rejectedBy"]["name"], "bob");
    let log = app.log_text(&s, &rejected).await;
    assert!(
        log.contains("Skipped: rejected by 'bob': not on a Friday."),
        "{log}"
    );

    // A deployment a schedule starts is requested by the token that set the schedule, which
    // cannot approve it either.
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (status, v) = call(
        &app,
        &deployer,
        Method::POST,
        &format!("/api/stacks/{s}/deployments/schedules"),
        json!({"scheduleOnce": now, "request": {"operation": "update"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let scheduled = loop {
        let (_, list) = app.get(&format!("/api/stacks/{s}/deployments")).await;
        if let Some(d) = list["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["initiator"] == "schedule")
        {
            break d.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the schedule never fired: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(scheduled["requestedBy"]["name"], "deployer", "{scheduled}");
    assert_eq!(scheduled["approval"]["status"], "pending", "{scheduled}");
    let sid = scheduled["id"].as_str().unwrap();
    let (status, v) = call(
        &app,
        &deployer,
        Method::POST,
        &path("approve", sid),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let (status, v) = app
        .post(
            &format!("/api/stacks/{s}/deployments/{sid}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");

    // Expired: the deadline passes and the ticker skips it, saying so.
    let (status, v) = app
        .post(
            &format!("/api/stacks/{s}/deployments/settings"),
            json!({"approvals": {"expiresAfter": 2}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let lapsed = app.deploy(&s, json!({"operation": "update"})).await;
    let d = app.wait_for(&s, &lapsed, Some("skipped")).await;
    assert_eq!(d["approval"]["status"], "expired", "{d}");
    let log = app.log_text(&s, &lapsed).await;
    assert!(
        log.contains("its approval expired at") && log.contains("with 0 of 2 approvals given"),
        "{log}"
    );
    let (status, v) = call(
        &app,
        &alice,
        Method::POST,
        &path("approve", &lapsed),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");

    // The hook heard each step, in order for each deployment.
    hooks
        .wait_until("the approval events", |r| r.len() >= 4)
        .await;
    let events: Vec<(String, String)> = hooks
        .recorded()
        .iter()
        .map(|r| {
            let p = r.json();
            (
                p["deploymentId"].as_str().unwrap_or_default().to_string(),
                p["event"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let of = |dep: &str| -> Vec<&str> {
        let mut e: Vec<&str> = events
            .iter()
            .filter(|(d, _)| d == dep)
            .map(|(_, e)| e.as_str())
            .collect();
        e.sort();
        e
    };
    assert_eq!(
        of(&id),
        ["deployment_approval_required", "deployment_approved"],
        "{events:?}"
    );
    assert_eq!(
        of(&rejected),
        ["deployment_approval_required", "deployment_rejected"],
        "{events:?}"
    );
    assert_eq!(of(&lapsed), ["deployment_approval_required"], "{events:?}");

    // Removing the gate is an admin's too; then updates run at once.
    let (status, v) = call(
        &app,
        &deployer,
        Method::DELETE,
        &format!("/api/stacks/{s}/deployments/settings"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let (status, v) = app
        .post(
            &format!("/api/stacks/{s}/deployments/settings"),
            json!({"approvals": null}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let free = app.deploy(&s, json!({"operation": "update"})).await;
    let d = app.wait_for(&s, &free, Some("succeeded")).await;
    assert!(d.get("approval").is_none(), "{d}");
}
