//! The worker's side: claims, leases, steps, logs, the reaper.

use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use tarmac::domain::*;
use tarmac::error::Error;
use tarmac::ports::*;

use crate::{Backend, claim, claimed, create, lease, new, stack, status};

pub(crate) async fn claims_run_one_per_stack_in_order_and_stacks_in_parallel(b: Backend) {
    let (a, bb) = (stack("a"), stack("b"));
    let a1 = create(&b, &a, Operation::Update).await;
    let a2 = create(&b, &a, Operation::Update).await;
    let b1 = create(&b, &bb, Operation::Update).await;
    let w = lease("w", 60_000);
    // Out of order is refused; in order is claimed; other stacks are independent.
    assert!(matches!(claim(&b, &a, a2, &w).await, ClaimOutcome::Busy));
    assert_eq!(claimed(claim(&b, &a, a1, &w).await), a1);
    assert!(
        matches!(claim(&b, &a, a1, &w).await, ClaimOutcome::Gone),
        "a second claim must not start a second run"
    );
    assert!(matches!(claim(&b, &a, a2, &w).await, ClaimOutcome::Busy));
    assert_eq!(claimed(claim(&b, &bb, b1, &w).await), b1);
    b.runs.mark_running(a1, &w).await.unwrap();
    b.runs.finish(a1, &w, JobStatus::Succeeded).await.unwrap();
    assert_eq!(claimed(claim(&b, &a, a2, &w).await), a2);
    assert_eq!(status(&b, &a, a1).await, JobStatus::Succeeded);
    assert_eq!(status(&b, &a, a2).await, JobStatus::Accepted);
    assert!(matches!(
        claim(&b, &a, Uuid::new_v4(), &w).await,
        ClaimOutcome::Gone
    ));
}

pub(crate) async fn paused_stacks_and_orgs_are_not_claimed(b: Backend) {
    let st = stack("p");
    let id = create(&b, &st, Operation::Update).await;
    let w = lease("w", 60_000);
    b.stacks.set_stack_paused(&st, true).await.unwrap();
    assert!(matches!(claim(&b, &st, id, &w).await, ClaimOutcome::Paused));
    assert_eq!(b.stacks.stack_paused(&st).await.unwrap(), Some(true));
    b.stacks.set_stack_paused(&st, false).await.unwrap();
    b.orgs.set_org_paused("org", true).await.unwrap();
    assert!(matches!(claim(&b, &st, id, &w).await, ClaimOutcome::Paused));
    assert!(b.orgs.org_state("org").await.unwrap().paused);
    assert!(b.orgs.org_paused("org").await.unwrap());
    assert!(!b.orgs.org_paused("never-paused").await.unwrap());
    b.orgs.set_org_paused("org", false).await.unwrap();
    assert_eq!(claimed(claim(&b, &st, id, &w).await), id);
    assert!(matches!(
        b.stacks.set_stack_paused(&stack("nope"), true).await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(b.stacks.stack_paused(&stack("nope")).await.unwrap(), None);
}

pub(crate) async fn every_run_write_is_conditional_on_the_lease(b: Backend) {
    let st = stack("l");
    let id = create(&b, &st, Operation::Update).await;
    let (w, thief) = (lease("w", 60_000), lease("thief", 60_000));
    claimed(claim(&b, &st, id, &w).await);
    assert!(matches!(
        b.runs.mark_running(id, &thief).await,
        Err(Error::Conflict(_))
    ));
    b.runs.mark_running(id, &w).await.unwrap();
    assert!(
        matches!(b.runs.mark_running(id, &w).await, Err(Error::Conflict(_))),
        "running twice"
    );
    assert!(matches!(
        b.runs.heartbeat(id, &thief).await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        b.runs.start_step(id, &thief, "x").await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        b.runs.finish(id, &thief, JobStatus::Failed).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(
        b.runs.heartbeat(id, &w).await.unwrap(),
        Heartbeat {
            cancel_requested: false
        }
    );
    let step = b.runs.start_step(id, &w, "Get source").await.unwrap();
    b.runs
        .finish_step(id, &w, step, StepStatus::Succeeded)
        .await
        .unwrap();
    // A step the run never started is the caller's mistake (an agent's `steps/{step}`): 400.
    assert!(matches!(
        b.runs
            .finish_step(id, &w, step + 7, StepStatus::Succeeded)
            .await,
        Err(Error::Invalid(_))
    ));
    b.runs
        .record_outputs(id, &w, &json!({"url": {"value": "https://x"}}))
        .await
        .unwrap();
    b.runs.finish(id, &w, JobStatus::Succeeded).await.unwrap();
    assert!(
        matches!(
            b.runs.finish(id, &w, JobStatus::Failed).await,
            Err(Error::Conflict(_))
        ),
        "finished twice"
    );
    let d = b
        .deployments
        .get_deployment(&st, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.status, JobStatus::Succeeded);
    assert_eq!(d.steps.len(), 1);
    assert_eq!(d.steps[0].status, StepStatus::Succeeded);
    assert!(d.started.is_some());
    assert_eq!(
        b.stacks.get_outputs(&st).await.unwrap().unwrap(),
        json!({"url": {"value": "https://x"}})
    );
}

pub(crate) async fn the_reaper_fails_expired_leases_frees_the_stack_and_skips_stale_queue_items(
    b: Backend,
) {
    let st = stack("r");
    let dead = create(&b, &st, Operation::Update).await;
    let next = create(&b, &st, Operation::Update).await;
    let w = lease("w", 300);
    claimed(claim(&b, &st, dead, &w).await);
    b.runs.mark_running(dead, &w).await.unwrap();
    b.runs.start_step(dead, &w, "Get source").await.unwrap();
    let week = time::Duration::days(7);
    let now = OffsetDateTime::now_utc();
    assert!(
        b.runs.reap(now, now - week).await.unwrap().is_empty(),
        "lease still valid"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let now = OffsetDateTime::now_utc();
    assert_eq!(
        b.runs.reap(now, now - week).await.unwrap(),
        vec![Reaped {
            stack: st.clone(),
            id: dead,
            status: JobStatus::Failed
        }]
    );
    let d = b
        .deployments
        .get_deployment(&st, dead)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.status, JobStatus::Failed);
    assert_eq!(d.steps[0].status, StepStatus::Failed);
    // The dead worker's late writes are refused; the stack's next deployment may start.
    assert!(matches!(
        b.runs.finish(dead, &w, JobStatus::Succeeded).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(
        claimed(claim(&b, &st, next, &lease("w2", 60_000)).await),
        next
    );

    // Queued: visible to the reconciler, and skipped once older than the queue allows.
    let st2 = stack("r2");
    let old = create(&b, &st2, Operation::Update).await;
    let later = OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let queued = b.runs.queued_before(later).await.unwrap();
    assert_eq!(
        queued.iter().map(|m| m.deployment_id).collect::<Vec<_>>(),
        vec![old]
    );
    assert_eq!(queued[0].stack_ref().unwrap(), st2);
    assert!(
        b.runs
            .queued_before(later - time::Duration::minutes(5))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        b.runs.reap(OffsetDateTime::now_utc(), later).await.unwrap(),
        vec![Reaped {
            stack: st2.clone(),
            id: old,
            status: JobStatus::Skipped
        }]
    );
    assert_eq!(status(&b, &st2, old).await, JobStatus::Skipped);
    assert!(b.runs.queued_before(later).await.unwrap().is_empty());
}

pub(crate) async fn skip_intermediate_keeps_the_newest_of_each_operation(b: Backend) {
    let st = stack("s");
    let d = |op| new(&st, op, true);
    let u1 = b
        .deployments
        .create_deployment(d(Operation::Update))
        .await
        .unwrap()
        .id;
    let d1 = b
        .deployments
        .create_deployment(d(Operation::Destroy))
        .await
        .unwrap()
        .id;
    let u2 = b
        .deployments
        .create_deployment(d(Operation::Update))
        .await
        .unwrap()
        .id;
    let w = lease("w", 60_000);
    assert!(matches!(
        claim(&b, &st, u1, &w).await,
        ClaimOutcome::Skipped
    ));
    assert_eq!(status(&b, &st, u1).await, JobStatus::Skipped);
    assert_eq!(claimed(claim(&b, &st, d1, &w).await), d1);
    b.runs.finish(d1, &w, JobStatus::Succeeded).await.unwrap();
    assert_eq!(claimed(claim(&b, &st, u2, &w).await), u2);
    let log = b
        .logs
        .read_logs(
            u1,
            LogQuery::Stream {
                after: 0,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert!(log.iter().any(|e| {
        e.line
            .as_deref()
            .is_some_and(|l| l.contains("newer update deployment"))
    }));
}

pub(crate) async fn logs_read_as_a_stream_and_by_step(b: Backend) {
    let st = stack("logs");
    let id = create(&b, &st, Operation::Update).await;
    let w = lease("w", 60_000);
    claimed(claim(&b, &st, id, &w).await);
    b.runs.mark_running(id, &w).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let line = |step: usize, text: &str| LogLine {
        step,
        timestamp: now,
        line: format!("{text}\n"),
        event: None,
    };
    let s0 = b.runs.start_step(id, &w, "one").await.unwrap();
    b.runs
        .append_logs(id, &w, &[line(s0, "a"), line(s0, "b")])
        .await
        .unwrap();
    let s1 = b.runs.start_step(id, &w, "two").await.unwrap();
    b.runs
        .append_logs(id, &w, &[line(s1, "c"), line(s1, "d"), line(s1, "e")])
        .await
        .unwrap();

    let all = b
        .logs
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
    let rest = b
        .logs
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
    let step = b
        .logs
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

    // A large batch is stored whole and in order (DynamoDB splits it across items).
    let big: Vec<LogLine> = (0..400)
        .map(|i| line(s1, &format!("{i:04} {}", "x".repeat(2000))))
        .collect();
    b.runs.append_logs(id, &w, &big).await.unwrap();
    let got = b
        .logs
        .read_logs(
            id,
            LogQuery::Step {
                step: s1,
                offset: 3,
                count: 500,
            },
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 400);
    assert!(got.windows(2).all(|p| p[0].seq < p[1].seq));
    assert!(got[399].line.as_deref().unwrap().starts_with("0399 "));
}

pub(crate) async fn racing_claims_start_exactly_one_run(b: Backend) {
    let st = stack("race");
    let id = create(&b, &st, Operation::Update).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..6 {
        let (runs, st) = (b.runs.clone(), st.clone());
        tasks.spawn(async move {
            runs.claim(&st, id, &lease(&format!("w{i}"), 60_000))
                .await
                .unwrap()
        });
    }
    let outcomes = tasks.join_all().await;
    let wins = outcomes
        .iter()
        .filter(|o| matches!(o, ClaimOutcome::Claimed(_)))
        .count();
    assert_eq!(wins, 1, "{outcomes:?}");
    assert_eq!(status(&b, &st, id).await, JobStatus::Accepted);
}

/// The built-in workers' next claim, by id.
async fn next_built_in(b: &Backend, w: &Lease) -> Option<Uuid> {
    b.runs
        .claim_next(w, tarmac::domain::pools::ClaimQueue::BuiltIn)
        .await
        .unwrap()
        .map(|c| c.deployment.id)
}

/// The embedded queue (`claim_next`) picks the oldest claimable deployment across stacks.
#[tokio::test]
async fn sqlite_claim_next_takes_the_oldest_claimable_deployment() {
    let b = crate::sqlite().await;
    let (a, c) = (stack("a"), stack("c"));
    let a1 = create(&b, &a, Operation::Update).await;
    let a2 = create(&b, &a, Operation::Update).await;
    let c1 = create(&b, &c, Operation::Update).await;
    let w = lease("w", 60_000);
    assert_eq!(next_built_in(&b, &w).await, Some(a1));
    assert_eq!(next_built_in(&b, &w).await, Some(c1));
    assert_eq!(next_built_in(&b, &w).await, None);
    b.runs.finish(a1, &w, JobStatus::Succeeded).await.unwrap();
    assert_eq!(next_built_in(&b, &w).await, Some(a2));
}

pub(crate) async fn only_the_lease_holder_of_a_running_deployment_is_recognised(b: Backend) {
    let st = stack("held");
    let id = create(&b, &st, Operation::Update).await;
    let held = |owner: &'static str, st: StackRef| {
        let runs = b.runs.clone();
        async move {
            runs.held_deployment(&st, id, owner)
                .await
                .unwrap()
                .map(|d| d.id)
        }
    };
    assert_eq!(held("w", st.clone()).await, None, "queued");
    let w = lease("w", 60_000);
    claimed(claim(&b, &st, id, &w).await);
    assert_eq!(
        held("w", st.clone()).await,
        None,
        "accepted, not yet running"
    );
    b.runs.mark_running(id, &w).await.unwrap();
    assert_eq!(held("w", st.clone()).await, Some(id));
    assert_eq!(held("thief", st.clone()).await, None, "another lease");
    assert_eq!(
        held("w", stack("other")).await,
        None,
        "another stack's path"
    );
    b.runs.finish(id, &w, JobStatus::Succeeded).await.unwrap();
    assert_eq!(held("w", st.clone()).await, None, "finished");

    // An expired lease proves nothing, even before the reaper has run.
    let id = create(&b, &st, Operation::Update).await;
    let short = lease("short", 300);
    claimed(claim(&b, &st, id, &short).await);
    b.runs.mark_running(id, &short).await.unwrap();
    assert!(
        b.runs
            .held_deployment(&st, id, "short")
            .await
            .unwrap()
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        b.runs
            .held_deployment(&st, id, "short")
            .await
            .unwrap()
            .is_none()
    );
}
