//! The store's contract, run against the SQLite adapter. Each test body takes the store through
//! the ports only, so another adapter can run the same bodies.

use std::time::Duration;

use serde_json::json;

use super::*;

fn store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (SqliteStore::open(&dir.path().join("t.db")).unwrap(), dir)
}

fn stack(name: &str) -> StackRef {
    StackRef::new("org", "proj", name).unwrap()
}

fn new(stack: &StackRef, op: Operation, skip_intermediate: bool) -> NewDeployment {
    NewDeployment {
        id: Uuid::new_v4(),
        stack: stack.clone(),
        operation: op,
        config: json!({}),
        initiator: "api".into(),
        requested_by: "test".into(),
        skip_intermediate,
    }
}

fn lease(owner: &str, ttl_ms: u64) -> Lease {
    Lease {
        owner: owner.into(),
        ttl: Duration::from_millis(ttl_ms),
    }
}

async fn status(s: &SqliteStore, st: &StackRef, id: Uuid) -> JobStatus {
    s.get_deployment(st, id).await.unwrap().unwrap().status
}

#[tokio::test]
async fn concurrent_creates_get_distinct_consecutive_versions() {
    let (s, _d) = store();
    let st = stack("dev");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (s, st) = (s.clone(), st.clone());
        tasks.spawn(async move {
            s.create_deployment(new(&st, Operation::Update, false))
                .await
                .unwrap()
                .version
        });
    }
    let mut versions = tasks.join_all().await;
    versions.sort();
    assert_eq!(versions, (1..=50).collect::<Vec<_>>());
    let latest = s
        .get_deployment_by_version(&st, 1)
        .await
        .unwrap()
        .unwrap()
        .latest_version;
    assert_eq!(latest, 50);
}

#[tokio::test]
async fn claims_run_one_per_stack_in_order_and_stacks_in_parallel() {
    let (s, _d) = store();
    let (a, b) = (stack("a"), stack("b"));
    let a1 = s
        .create_deployment(new(&a, Operation::Update, false))
        .await
        .unwrap()
        .id;
    let a2 = s
        .create_deployment(new(&a, Operation::Update, false))
        .await
        .unwrap()
        .id;
    let b1 = s
        .create_deployment(new(&b, Operation::Update, false))
        .await
        .unwrap()
        .id;
    let w = lease("w", 60_000);
    assert_eq!(s.claim_next(&w).await.unwrap().unwrap().deployment.id, a1);
    // a2 waits for a1; b1 may start beside it.
    assert_eq!(s.claim_next(&w).await.unwrap().unwrap().deployment.id, b1);
    assert!(s.claim_next(&w).await.unwrap().is_none());
    s.mark_running(a1, &w).await.unwrap();
    s.finish(a1, &w, JobStatus::Succeeded).await.unwrap();
    assert_eq!(s.claim_next(&w).await.unwrap().unwrap().deployment.id, a2);
    assert_eq!(status(&s, &a, a1).await, JobStatus::Succeeded);
    assert_eq!(status(&s, &a, a2).await, JobStatus::Accepted);
}

#[tokio::test]
async fn paused_stacks_and_orgs_are_not_claimed() {
    let (s, _d) = store();
    let st = stack("p");
    let id = s
        .create_deployment(new(&st, Operation::Update, false))
        .await
        .unwrap()
        .id;
    let w = lease("w", 60_000);
    s.set_stack_paused(&st, true).await.unwrap();
    assert!(s.claim_next(&w).await.unwrap().is_none());
    s.set_stack_paused(&st, false).await.unwrap();
    s.set_org_paused("org", true).await.unwrap();
    assert!(s.claim_next(&w).await.unwrap().is_none());
    s.set_org_paused("org", false).await.unwrap();
    assert_eq!(s.claim_next(&w).await.unwrap().unwrap().deployment.id, id);
    assert!(matches!(
        s.set_stack_paused(&stack("nope"), true).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn every_run_write_is_conditional_on_the_lease() {
    let (s, _d) = store();
    let st = stack("l");
    let id = s
        .create_deployment(new(&st, Operation::Update, false))
        .await
        .unwrap()
        .id;
    let (w, thief) = (lease("w", 60_000), lease("thief", 60_000));
    s.claim_next(&w).await.unwrap().unwrap();
    assert!(matches!(
        s.mark_running(id, &thief).await,
        Err(Error::Conflict(_))
    ));
    s.mark_running(id, &w).await.unwrap();
    assert!(
        matches!(s.mark_running(id, &w).await, Err(Error::Conflict(_))),
        "running twice"
    );
    assert!(matches!(
        s.heartbeat(id, &thief).await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        s.start_step(id, &thief, "x").await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        s.finish(id, &thief, JobStatus::Failed).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(
        s.heartbeat(id, &w).await.unwrap(),
        Heartbeat {
            cancel_requested: false
        }
    );
    s.finish(id, &w, JobStatus::Succeeded).await.unwrap();
    assert!(
        matches!(
            s.finish(id, &w, JobStatus::Failed).await,
            Err(Error::Conflict(_))
        ),
        "finished twice"
    );
    assert_eq!(status(&s, &st, id).await, JobStatus::Succeeded);
}

#[tokio::test]
async fn the_reaper_fails_expired_leases_frees_the_stack_and_skips_stale_queue_items() {
    let (s, _d) = store();
    let st = stack("r");
    let dead = s
        .create_deployment(new(&st, Operation::Update, false))
        .await
        .unwrap()
        .id;
    let next = s
        .create_deployment(new(&st, Operation::Update, false))
        .await
        .unwrap()
        .id;
    let w = lease("w", 50);
    s.claim_next(&w).await.unwrap().unwrap();
    s.mark_running(dead, &w).await.unwrap();
    s.start_step(dead, &w, "Get source").await.unwrap();
    let now = OffsetDateTime::now_utc();
    assert!(
        s.reap(now, now - time::Duration::days(7))
            .await
            .unwrap()
            .is_empty(),
        "lease still valid"
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    let now = OffsetDateTime::now_utc();
    assert_eq!(
        s.reap(now, now - time::Duration::days(7)).await.unwrap(),
        vec![dead]
    );
    let d = s.get_deployment(&st, dead).await.unwrap().unwrap();
    assert_eq!(d.status, JobStatus::Failed);
    assert_eq!(d.steps[0].status, StepStatus::Failed);
    // The dead worker's late writes are refused; the stack's next deployment may start.
    assert!(matches!(
        s.finish(dead, &w, JobStatus::Succeeded).await,
        Err(Error::Conflict(_))
    ));
    let w2 = lease("w2", 60_000);
    assert_eq!(
        s.claim_next(&w2).await.unwrap().unwrap().deployment.id,
        next
    );

    // Queue expiry: anything created before the cut-off is skipped.
    let old = s
        .create_deployment(new(&stack("r2"), Operation::Update, false))
        .await
        .unwrap()
        .id;
    let later = OffsetDateTime::now_utc() + time::Duration::seconds(1);
    assert_eq!(
        s.reap(OffsetDateTime::now_utc(), later).await.unwrap(),
        vec![old]
    );
    assert_eq!(status(&s, &stack("r2"), old).await, JobStatus::Skipped);
}

#[tokio::test]
async fn skip_intermediate_keeps_the_newest_of_each_operation() {
    let (s, _d) = store();
    let st = stack("s");
    let u1 = s
        .create_deployment(new(&st, Operation::Update, true))
        .await
        .unwrap()
        .id;
    let d1 = s
        .create_deployment(new(&st, Operation::Destroy, true))
        .await
        .unwrap()
        .id;
    let u2 = s
        .create_deployment(new(&st, Operation::Update, true))
        .await
        .unwrap()
        .id;
    let w = lease("w", 60_000);
    assert_eq!(s.claim_next(&w).await.unwrap().unwrap().deployment.id, d1);
    assert_eq!(status(&s, &st, u1).await, JobStatus::Skipped);
    s.finish(d1, &w, JobStatus::Succeeded).await.unwrap();
    assert_eq!(s.claim_next(&w).await.unwrap().unwrap().deployment.id, u2);
}

#[tokio::test]
async fn cancel_dequeues_or_flags_and_reports_finished_ones() {
    let (s, _d) = store();
    let st = stack("c");
    let run = s
        .create_deployment(new(&st, Operation::Update, false))
        .await
        .unwrap()
        .id;
    let queued = s
        .create_deployment(new(&st, Operation::Update, false))
        .await
        .unwrap()
        .id;
    let w = lease("w", 60_000);
    s.claim_next(&w).await.unwrap().unwrap();
    s.mark_running(run, &w).await.unwrap();
    assert_eq!(
        s.cancel_deployment(&st, queued).await.unwrap(),
        CancelOutcome::Dequeued
    );
    assert_eq!(status(&s, &st, queued).await, JobStatus::Skipped);
    assert_eq!(
        s.cancel_deployment(&st, run).await.unwrap(),
        CancelOutcome::Requested
    );
    assert!(s.heartbeat(run, &w).await.unwrap().cancel_requested);
    s.finish(run, &w, JobStatus::Failed).await.unwrap();
    assert_eq!(
        s.cancel_deployment(&st, run).await.unwrap(),
        CancelOutcome::AlreadyFinished
    );
    assert!(matches!(
        s.cancel_deployment(&stack("other"), run).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn settings_writes_are_optimistic() {
    let (s, _d) = store();
    let st = stack("set");
    assert!(s.get_settings(&st).await.unwrap().is_none());
    assert_eq!(s.put_settings(&st, &json!({"a": 1}), 0).await.unwrap(), 1);
    assert!(matches!(
        s.put_settings(&st, &json!({"a": 2}), 0).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(s.put_settings(&st, &json!({"a": 2}), 1).await.unwrap(), 2);
    assert!(s.delete_settings(&st).await.unwrap());
    assert!(s.get_settings(&st).await.unwrap().is_none());
    // Versions keep counting after a delete.
    assert_eq!(s.put_settings(&st, &json!({"a": 3}), 0).await.unwrap(), 3);
    assert!(matches!(
        s.delete_settings(&stack("none")).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn logs_read_as_a_stream_and_by_step() {
    let (s, _d) = store();
    let st = stack("logs");
    let id = s
        .create_deployment(new(&st, Operation::Update, false))
        .await
        .unwrap()
        .id;
    let w = lease("w", 60_000);
    s.claim_next(&w).await.unwrap().unwrap();
    s.mark_running(id, &w).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let line = |step: usize, text: &str| LogLine {
        step,
        timestamp: now,
        line: format!("{text}\n"),
    };
    let s0 = s.start_step(id, &w, "one").await.unwrap();
    s.append_logs(id, &w, &[line(s0, "a"), line(s0, "b")])
        .await
        .unwrap();
    let s1 = s.start_step(id, &w, "two").await.unwrap();
    s.append_logs(id, &w, &[line(s1, "c"), line(s1, "d"), line(s1, "e")])
        .await
        .unwrap();

    let all = s
        .read_logs(
            id,
            LogQuery::Stream {
                after: 0,
                limit: 100,
            },
        )
        .await
        .unwrap();
    let shown: Vec<String> = all
        .iter()
        .map(|e| e.header.clone().unwrap_or_else(|| e.line.clone().unwrap()))
        .collect();
    assert_eq!(shown, ["one", "a\n", "b\n", "two", "c\n", "d\n", "e\n"]);
    let rest = s
        .read_logs(
            id,
            LogQuery::Stream {
                after: all[3].seq,
                limit: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rest.iter()
            .map(|e| e.line.clone().unwrap())
            .collect::<Vec<_>>(),
        ["c\n", "d\n"]
    );
    let step = s
        .read_logs(
            id,
            LogQuery::Step {
                step: s1,
                offset: 1,
                count: 5,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        step.iter()
            .map(|e| e.line.clone().unwrap())
            .collect::<Vec<_>>(),
        ["d\n", "e\n"]
    );
}

#[tokio::test]
async fn deleting_a_stack_removes_its_deployments_but_not_while_one_runs() {
    let (s, _d) = store();
    let st = stack("del");
    let id = s
        .create_deployment(new(&st, Operation::Update, false))
        .await
        .unwrap()
        .id;
    let w = lease("w", 60_000);
    s.claim_next(&w).await.unwrap().unwrap();
    assert!(matches!(s.delete_stack(&st).await, Err(Error::Conflict(_))));
    s.finish(id, &w, JobStatus::Failed).await.unwrap();
    s.delete_stack(&st).await.unwrap();
    assert!(s.get_deployment(&st, id).await.unwrap().is_none());
    assert_eq!(
        s.list_org_deployments(
            "org",
            PageRequest {
                page: 1,
                page_size: 10,
                ascending: false
            }
        )
        .await
        .unwrap()
        .total,
        0
    );
    assert!(matches!(s.delete_stack(&st).await, Err(Error::NotFound(_))));
}
