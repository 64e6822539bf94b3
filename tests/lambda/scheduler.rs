//! The scheduler's tick in AWS mode: reaping and re-sending lost messages.

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
