//! The scheduler's tick in AWS mode: reaping, re-sending lost messages, and git sync.

use super::*;

#[tokio::test]
async fn the_scheduler_tick_reaps_and_re_sends_lost_messages() {
    require!(Emulator, Tools);
    let env = Env::new().await;
    let tick: EventBridgeEvent =
        serde_json::from_str(&fixture("eventbridge-scheduler-tick.json", &[])).unwrap();
    let report = tarmac::lambda::scheduler(&env.app, LambdaEvent::new(tick, Context::default()))
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
async fn the_scheduler_tick_deploys_a_synced_branch_once_and_again_when_it_moves() {
    require!(Emulator, Tools);
    let env = Env::new().await;
    let server = crate::git_server::GitServer::start(env.repo.path(), "sync-user", "sync-pass");
    let settings = serde_json::json!({
        "sourceContext": {"git": {
            "repoUrl": server.url, "branch": "main", "repoDir": "infra",
            "gitAuth": {"basicAuth": {"userName": {"secret": "sync-user"}, "password": {"secret": "sync-pass"}}},
        }},
        "gitSync": {"enabled": true, "interval": 60},
    });
    let (status, v) = env
        .call(
            "POST",
            "/api/stacks/acme/web/dev/deployments/settings",
            Some(&settings.to_string()),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    // EventBridge's next minute.
    let mut tick: serde_json::Value =
        serde_json::from_str(&fixture("eventbridge-scheduler-tick.json", &[])).unwrap();
    let now = time::OffsetDateTime::now_utc();
    tick["time"] = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
        .into();
    let tick: EventBridgeEvent = serde_json::from_value(tick).unwrap();
    let report = tarmac::lambda::scheduler(&env.app, LambdaEvent::new(tick, Context::default()))
        .await
        .unwrap();
    assert_eq!(report.synced, 1, "{report:?}");
    assert_eq!(server.ref_lookups(), 1);

    // The worker runs it from the queue, at the branch's head.
    let sent = env.receive().await;
    assert_eq!(sent.records.len(), 1);
    assert!(env.work(sent).await.is_empty());
    let (_, sync) = env
        .call("GET", "/api/stacks/acme/web/dev/deployments/sync", None)
        .await;
    let id = sync["pendingDeployment"].as_str().unwrap();
    let log = env.log_text(id).await;
    assert!(log.contains("terraform update succeeded"), "{log}");
    let head = sync["lastAttemptedCommit"].as_str().unwrap().to_string();

    // One interval on, the same head is not deployed again; a moved one is.
    let later = time::OffsetDateTime::now_utc() + time::Duration::seconds(61);
    let report = tarmac::scheduler::tick(&env.app.deps, later, Duration::from_secs(7 * 86_400))
        .await
        .unwrap();
    assert_eq!(report.synced, 0, "{report:?}");
    let (_, sync) = env
        .call("GET", "/api/stacks/acme/web/dev/deployments/sync", None)
        .await;
    assert_eq!(sync["lastSyncedCommit"], head.as_str(), "{sync}");
    std::fs::write(env.repo.path().join("infra/moved.tf"), "# moved\n").unwrap();
    git(env.repo.path(), &["add", "-A"]);
    git(env.repo.path(), &["commit", "-qam", "moved"]);
    git(
        env.repo.path(),
        &["push", "-q", server.bare().to_str().unwrap(), "HEAD:main"],
    );
    let report = tarmac::scheduler::tick(
        &env.app.deps,
        later + time::Duration::seconds(61),
        Duration::from_secs(7 * 86_400),
    )
    .await
    .unwrap();
    assert_eq!(report.synced, 1, "{report:?}");
}
