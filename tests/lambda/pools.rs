//! Agent pools in AWS mode, through the `api` handler on the emulator: a pool's deployment is
//! never sent to the workers' SQS queue, neither when it is created nor when the scheduler's
//! reconciler re-sends queued deployments, while a built-in one is.

use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;

use crate::Env;

#[tokio::test]
async fn a_pools_deployments_never_reach_the_workers_queue() {
    require!(Emulator);
    let env = Env::new().await;
    let pool = tarmac::domain::pools::AgentPool {
        id: uuid::Uuid::new_v4().to_string(),
        org: "acme".into(),
        name: "vpc".into(),
        description: String::new(),
        created: OffsetDateTime::now_utc(),
    };
    env.app
        .deps
        .pools
        .create_pool(&pool, "pool-token-hash")
        .await
        .unwrap();
    let repo = format!("file://{}", env.repo.path().display());
    let settings = |pool: Option<&str>| {
        let mut s = json!({"sourceContext": {"git": {"repoUrl": repo, "repoDir": "infra"}}});
        if let Some(p) = pool {
            s["agentPoolID"] = json!(p);
        }
        s.to_string()
    };
    let env = &env;
    let deploy = |stack: &'static str| async move {
        let (status, v) = env
            .call(
                "POST",
                &format!("/api/stacks/acme/web/{stack}/deployments"),
                Some(r#"{"operation": "update"}"#),
            )
            .await;
        assert_eq!(status, 202, "{v}");
        v["id"].as_str().unwrap().to_string()
    };
    let (status, v) = env
        .call(
            "POST",
            "/api/stacks/acme/web/pooled/deployments/settings",
            Some(&settings(Some(&pool.id))),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = env
        .call(
            "POST",
            "/api/stacks/acme/web/built-in/deployments/settings",
            Some(&settings(None)),
        )
        .await;
    assert_eq!(status, 200, "{v}");

    let pooled = deploy("pooled").await;
    let built_in = deploy("built-in").await;
    let sent = |event: aws_lambda_events::event::sqs::SqsEvent| -> Vec<String> {
        event
            .records
            .iter()
            .filter_map(|r| r.body.as_deref())
            .map(|b| {
                serde_json::from_str::<serde_json::Value>(b).unwrap()["deploymentId"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let received = env.receive().await;
    // Handled, as a worker would once it claimed: a FIFO group holds back the rest while a
    // message of it is in flight.
    for r in &received.records {
        env.sqs
            .delete_message()
            .queue_url(&env.queue_url)
            .receipt_handle(r.receipt_handle.clone().unwrap())
            .send()
            .await
            .unwrap();
    }
    let first = sent(received);
    assert_eq!(
        first,
        vec![built_in.clone()],
        "only the built-in deployment is queued"
    );

    // The reconciler, a few minutes on, re-sends what is queued and idle: still not the pool's.
    let later = OffsetDateTime::now_utc() + Duration::from_secs(300);
    tarmac::scheduler::tick(&env.app.deps, later, Duration::from_secs(7 * 86_400))
        .await
        .unwrap();
    let mut resent = vec![];
    for _ in 0..3 {
        resent.extend(sent(env.receive().await));
    }
    assert!(resent.contains(&built_in), "the reconciler ran: {resent:?}");
    assert!(!resent.contains(&pooled), "{resent:?}");
}
