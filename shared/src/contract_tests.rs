//! The store ports' contract, written once and run against every adapter: SQLite on a temp
//! file, and DynamoDB on the local AWS emulator (each test on a fresh table). The bodies use the
//! ports only.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::*;
use crate::error::Error;
use crate::ports::*;

/// One backend's ports, and whatever keeps it alive.
struct Backend {
    stacks: Arc<dyn StackStore>,
    orgs: Arc<dyn OrgStore>,
    tokens: Arc<dyn TokenStore>,
    deployments: Arc<dyn DeploymentStore>,
    runs: Arc<dyn RunStore>,
    logs: Arc<dyn LogStore>,
    schedules: Arc<dyn ScheduleStore>,
    drift: Arc<dyn DriftStore>,
    keys: Arc<dyn SigningKeyStore>,
    hooks: Arc<dyn HookStore>,
    outbox: Arc<dyn Outbox>,
    /// Old outbox messages expire by the table's TTL, not by `prune_done` (DynamoDB).
    expires_by_ttl: bool,
    _keep: Box<dyn std::any::Any + Send>,
}

fn backend<S>(store: Arc<S>, keep: Box<dyn std::any::Any + Send>) -> Backend
where
    S: StackStore
        + OrgStore
        + TokenStore
        + DeploymentStore
        + RunStore
        + LogStore
        + ScheduleStore
        + DriftStore
        + SigningKeyStore
        + HookStore
        + Outbox
        + 'static,
{
    Backend {
        stacks: store.clone(),
        orgs: store.clone(),
        tokens: store.clone(),
        deployments: store.clone(),
        runs: store.clone(),
        logs: store.clone(),
        schedules: store.clone(),
        keys: store.clone(),
        hooks: store.clone(),
        outbox: store.clone(),
        drift: store,
        expires_by_ttl: false,
        _keep: keep,
    }
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::sqlite::SqliteStore::open(&dir.path().join("t.db")).unwrap();
    backend(Arc::new(store), Box::new(dir))
}

/// The SDK's clients for the emulator that tests/run.sh starts.
pub async fn aws_config() -> aws_config::SdkConfig {
    assert!(
        std::env::var_os("AWS_ENDPOINT_URL").is_some(),
        "AWS_ENDPOINT_URL is not set: run the tests with tests/run.sh, which starts the AWS emulator"
    );
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

async fn dynamo() -> Backend {
    let client = aws_sdk_dynamodb::Client::new(&aws_config().await);
    let table = format!("tarmac-test-{}", Uuid::new_v4().simple());
    // Tokens in a table of their own, as infra/template.yaml deploys them.
    let tokens = format!("{table}-tokens");
    for t in [&table, &tokens] {
        crate::aws::dynamo::create_table(&client, t).await.unwrap();
    }
    Backend {
        expires_by_ttl: true,
        ..backend(
            Arc::new(crate::aws::DynamoStore::new(client, table).with_token_table(tokens)),
            Box::new(()),
        )
    }
}

/// Runs each named body against each backend, as `<backend>::<name>`.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(#[tokio::test] async fn $name() { super::$name(super::sqlite().await).await })*
        }
        mod dynamodb_backend {
            $(#[tokio::test] async fn $name() { super::$name(super::dynamo().await).await })*
        }
    };
}

contract!(
    concurrent_creates_get_distinct_consecutive_versions,
    claims_run_one_per_stack_in_order_and_stacks_in_parallel,
    paused_stacks_and_orgs_are_not_claimed,
    every_run_write_is_conditional_on_the_lease,
    the_reaper_fails_expired_leases_frees_the_stack_and_skips_stale_queue_items,
    skip_intermediate_keeps_the_newest_of_each_operation,
    cancel_dequeues_or_flags_and_reports_finished_ones,
    settings_writes_are_optimistic,
    logs_read_as_a_stream_and_by_step,
    deleting_a_stack_removes_its_deployments_but_not_while_one_runs,
    stacks_orgs_and_tokens,
    a_bootstrap_secret_gives_one_admin_token,
    lists_page_newest_first,
    racing_claims_start_exactly_one_run,
    schedules_are_stored_listed_and_due_by_their_next_slot,
    advancing_a_slot_happens_once,
    drift_runs_are_recorded_linked_and_paged,
    deleting_a_stack_removes_its_schedules_and_drift_runs,
    racing_ticks_fire_each_slot_once,
    after_downtime_a_schedule_fires_once_and_history_records_the_missed_slots,
    paused_schedules_do_not_fire_and_resume_at_their_next_future_slot,
    one_time_and_ttl_schedules_fire_once,
    schedule_requests_are_validated,
    only_the_lease_holder_of_a_running_deployment_is_recognised,
    the_signing_keyring_is_written_optimistically,
    tokens_verify_against_the_jwks_across_a_rotation,
    only_a_running_deployments_worker_gets_its_credentials,
    a_create_with_a_taken_id_is_a_conflict_and_changes_nothing,
    integrations_and_an_orgs_stack_settings,
    hooks_are_scoped_named_once_and_go_with_their_stack,
    the_outbox_hands_each_due_message_to_one_dispatcher_and_logs_attempts,
);

fn stack(name: &str) -> StackRef {
    StackRef::new("org", "proj", name).unwrap()
}

fn new(stack: &StackRef, op: Operation, skip_intermediate: bool) -> NewDeployment {
    NewDeployment {
        id: Uuid::new_v4(),
        stack: stack.clone(),
        operation: op,
        config: json!({"sourceContext": {"git": {"repoUrl": "https://example.com/r.git"}}}),
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

async fn create(b: &Backend, st: &StackRef, op: Operation) -> Uuid {
    b.deployments
        .create_deployment(new(st, op, false))
        .await
        .unwrap()
        .id
}

async fn status(b: &Backend, st: &StackRef, id: Uuid) -> JobStatus {
    b.deployments
        .get_deployment(st, id)
        .await
        .unwrap()
        .unwrap()
        .status
}

async fn claim(b: &Backend, st: &StackRef, id: Uuid, l: &Lease) -> ClaimOutcome {
    b.runs.claim(st, id, l).await.unwrap()
}

fn claimed(o: ClaimOutcome) -> Uuid {
    match o {
        ClaimOutcome::Claimed(c) => c.deployment.id,
        other => panic!("expected a claim, got {other:?}"),
    }
}

async fn concurrent_creates_get_distinct_consecutive_versions(b: Backend) {
    let st = stack("dev");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (d, st) = (b.deployments.clone(), st.clone());
        tasks.spawn(async move {
            d.create_deployment(new(&st, Operation::Update, false))
                .await
                .unwrap()
                .version
        });
    }
    let mut versions = tasks.join_all().await;
    versions.sort();
    assert_eq!(versions, (1..=20).collect::<Vec<_>>());
    let d = b
        .deployments
        .get_deployment_by_version(&st, 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.latest_version, 20);
    assert_eq!(d.status, JobStatus::NotStarted);
}

async fn claims_run_one_per_stack_in_order_and_stacks_in_parallel(b: Backend) {
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

async fn paused_stacks_and_orgs_are_not_claimed(b: Backend) {
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

async fn every_run_write_is_conditional_on_the_lease(b: Backend) {
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

async fn the_reaper_fails_expired_leases_frees_the_stack_and_skips_stale_queue_items(b: Backend) {
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

async fn skip_intermediate_keeps_the_newest_of_each_operation(b: Backend) {
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

async fn cancel_dequeues_or_flags_and_reports_finished_ones(b: Backend) {
    let st = stack("c");
    let run = create(&b, &st, Operation::Update).await;
    let queued = create(&b, &st, Operation::Update).await;
    let w = lease("w", 60_000);
    claimed(claim(&b, &st, run, &w).await);
    b.runs.mark_running(run, &w).await.unwrap();
    assert_eq!(
        b.deployments.cancel_deployment(&st, queued).await.unwrap(),
        CancelOutcome::Dequeued
    );
    assert_eq!(status(&b, &st, queued).await, JobStatus::Skipped);
    assert_eq!(
        b.deployments.cancel_deployment(&st, run).await.unwrap(),
        CancelOutcome::Requested
    );
    assert!(b.runs.heartbeat(run, &w).await.unwrap().cancel_requested);
    b.runs.finish(run, &w, JobStatus::Failed).await.unwrap();
    assert_eq!(
        b.deployments.cancel_deployment(&st, run).await.unwrap(),
        CancelOutcome::AlreadyFinished
    );
    assert!(matches!(
        b.deployments.cancel_deployment(&stack("other"), run).await,
        Err(Error::NotFound(_))
    ));
}

async fn settings_writes_are_optimistic(b: Backend) {
    let st = stack("set");
    assert!(b.stacks.get_settings(&st).await.unwrap().is_none());
    assert_eq!(
        b.stacks
            .put_settings(&st, &json!({"a": 1}), 0)
            .await
            .unwrap(),
        1
    );
    assert!(
        b.stacks.stack_exists(&st).await.unwrap(),
        "settings create the stack"
    );
    assert!(matches!(
        b.stacks.put_settings(&st, &json!({"a": 2}), 0).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(
        b.stacks
            .put_settings(&st, &json!({"a": 2}), 1)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        b.stacks.get_settings(&st).await.unwrap().unwrap().settings,
        json!({"a": 2})
    );
    assert!(b.stacks.delete_settings(&st).await.unwrap());
    assert!(b.stacks.get_settings(&st).await.unwrap().is_none());
    assert!(
        !b.stacks.delete_settings(&st).await.unwrap(),
        "nothing left to delete"
    );
    // Versions keep counting after a delete.
    assert_eq!(
        b.stacks
            .put_settings(&st, &json!({"a": 3}), 0)
            .await
            .unwrap(),
        3
    );
    assert!(matches!(
        b.stacks.delete_settings(&stack("none")).await,
        Err(Error::NotFound(_))
    ));
}

async fn logs_read_as_a_stream_and_by_step(b: Backend) {
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

async fn deleting_a_stack_removes_its_deployments_but_not_while_one_runs(b: Backend) {
    let st = stack("del");
    let id = create(&b, &st, Operation::Update).await;
    let w = lease("w", 60_000);
    claimed(claim(&b, &st, id, &w).await);
    assert!(matches!(
        b.stacks.delete_stack(&st).await,
        Err(Error::Conflict(_))
    ));
    b.runs.finish(id, &w, JobStatus::Failed).await.unwrap();
    b.stacks.delete_stack(&st).await.unwrap();
    assert!(
        b.deployments
            .get_deployment(&st, id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(!b.stacks.stack_exists(&st).await.unwrap());
    let page = PageRequest {
        page: 1,
        page_size: 10,
        ascending: false,
    };
    assert_eq!(
        b.deployments
            .list_org_deployments("org", page)
            .await
            .unwrap()
            .total,
        0
    );
    assert!(matches!(
        b.stacks.delete_stack(&st).await,
        Err(Error::NotFound(_))
    ));
    // The name starts over.
    let again = b
        .deployments
        .create_deployment(new(&st, Operation::Update, false))
        .await
        .unwrap();
    assert_eq!(again.version, 1);
}

async fn stacks_orgs_and_tokens(b: Backend) {
    let st = stack("explicit");
    b.stacks.create_stack(&st).await.unwrap();
    assert!(matches!(
        b.stacks.create_stack(&st).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(b.stacks.get_outputs(&st).await.unwrap(), Some(json!({})));
    assert_eq!(b.stacks.get_outputs(&stack("none")).await.unwrap(), None);
    b.stacks.set_stack_paused(&st, true).await.unwrap();
    let id = create(&b, &stack("other"), Operation::Preview).await;
    let org = b.orgs.org_state("org").await.unwrap();
    assert!(!org.paused);
    assert_eq!(org.paused_stacks, vec!["proj/explicit".to_string()]);
    assert_eq!(org.counts.0.get(&JobStatus::NotStarted), Some(&1));
    assert!(
        b.deployments
            .get_deployment(&stack("other"), id)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        b.deployments
            .get_deployment(&st, id)
            .await
            .unwrap()
            .is_none(),
        "ids are scoped to their stack"
    );

    assert_eq!(b.tokens.token_count().await.unwrap(), 0);
    b.tokens
        .create_token("h1", "org", Role::Read, "reader")
        .await
        .unwrap();
    b.tokens
        .create_token("h2", "acme", Role::Admin, "boss")
        .await
        .unwrap();
    assert_eq!(b.tokens.token_count().await.unwrap(), 2);
    let p = b.tokens.find_token("h2").await.unwrap().unwrap();
    assert_eq!(
        (p.org.as_str(), p.role, p.token_name.as_str()),
        ("acme", Role::Admin, "boss")
    );
    assert!(b.tokens.find_token("nope").await.unwrap().is_none());
}

async fn lists_page_newest_first(b: Backend) {
    let (a, c) = (stack("la"), stack("lc"));
    let mut ids = vec![];
    for _ in 0..5 {
        ids.push(create(&b, &a, Operation::Update).await);
    }
    create(&b, &c, Operation::Update).await;
    let page = |page, page_size, ascending| PageRequest {
        page,
        page_size,
        ascending,
    };
    let p = b
        .deployments
        .list_stack_deployments(&a, page(1, 2, false))
        .await
        .unwrap();
    assert_eq!(p.total, 5);
    assert_eq!(
        p.items.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![ids[4], ids[3]]
    );
    let p = b
        .deployments
        .list_stack_deployments(&a, page(3, 2, false))
        .await
        .unwrap();
    assert_eq!(
        p.items.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    let p = b
        .deployments
        .list_stack_deployments(&a, page(1, 2, true))
        .await
        .unwrap();
    assert_eq!(
        p.items.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![ids[0], ids[1]]
    );
    assert_eq!(p.items[0].latest_version, 5);
    let p = b
        .deployments
        .list_org_deployments("org", page(1, 100, false))
        .await
        .unwrap();
    assert_eq!(p.total, 6);
    assert_eq!(p.items[0].stack, c);
    assert_eq!(
        b.deployments
            .list_stack_deployments(&stack("none"), page(1, 10, false))
            .await
            .unwrap()
            .total,
        0
    );
}

async fn racing_claims_start_exactly_one_run(b: Backend) {
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

fn at(minute: i64) -> OffsetDateTime {
    time::macros::datetime!(2026-06-01 00:00 UTC) + time::Duration::minutes(minute)
}

fn schedule(
    st: &StackRef,
    when: crate::schedule::When,
    next: Option<OffsetDateTime>,
) -> crate::schedule::Schedule {
    crate::schedule::Schedule {
        id: Uuid::new_v4(),
        stack: st.clone(),
        purpose: crate::schedule::Purpose::Custom,
        when,
        definition: json!({"request": {"operation": "update", "inheritSettings": true}}),
        next_execution: next,
        paused: false,
        created: at(0),
        modified: at(0),
        last_executed: None,
    }
}

fn cron(expr: &str) -> crate::schedule::When {
    crate::schedule::When::Cron(Box::new(crate::schedule::Cron::parse(expr).unwrap()))
}

async fn schedules_are_stored_listed_and_due_by_their_next_slot(b: Backend) {
    let st = stack("sched");
    assert!(
        matches!(
            b.schedules
                .create_schedule(&schedule(&st, cron("* * * * *"), Some(at(1))))
                .await,
            Err(Error::NotFound(_))
        ),
        "schedules need an existing stack"
    );
    b.stacks.create_stack(&st).await.unwrap();
    let every = schedule(&st, cron("*/5 * * * *"), Some(at(5)));
    let once = schedule(&st, crate::schedule::When::Once(at(2)), Some(at(2)));
    let mut later = schedule(&st, cron("0 * * * *"), Some(at(60)));
    later.created = at(1);
    for s in [&every, &once, &later] {
        b.schedules.create_schedule(s).await.unwrap();
    }
    let listed = b.schedules.list_schedules(&st).await.unwrap();
    assert_eq!(listed.len(), 3);
    let got = b
        .schedules
        .get_schedule(&st, once.id)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(got.when, crate::schedule::When::Once(t) if t == at(2)));
    assert_eq!(got.definition, once.definition);
    assert!(
        b.schedules
            .get_schedule(&stack("other"), once.id)
            .await
            .unwrap()
            .is_none()
    );

    // Due at minute 5: the one-time one and the five-minute one, earliest first; not the hourly.
    let due: Vec<Uuid> = b
        .schedules
        .due_schedules(at(5), 10)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(due, vec![once.id, every.id]);
    assert_eq!(b.schedules.due_schedules(at(5), 1).await.unwrap().len(), 1);
    assert!(
        b.schedules
            .due_schedules(at(1), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Paused schedules are not due; updates move them.
    let mut paused = every.clone();
    paused.paused = true;
    b.schedules
        .update_schedule(&paused, every.next_execution)
        .await
        .unwrap();
    let due: Vec<Uuid> = b
        .schedules
        .due_schedules(at(5), 10)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(due, vec![once.id]);
    let mut moved = later.clone();
    moved.next_execution = Some(at(3));
    moved.when = cron("3 * * * *");
    b.schedules
        .update_schedule(&moved, later.next_execution)
        .await
        .unwrap();
    let due: Vec<Uuid> = b
        .schedules
        .due_schedules(at(5), 10)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(due, vec![once.id, later.id]);

    // History, newest first.
    for (i, minute) in [1, 2, 3].iter().enumerate() {
        let e = HistoryEvent {
            id: Uuid::new_v4(),
            schedule_id: once.id,
            executed: at(*minute),
            deployment: Some((Uuid::new_v4(), i as i64 + 1)),
            note: "fired".into(),
        };
        b.schedules.add_history(&st, &e).await.unwrap();
    }
    let h = b.schedules.history(&st, once.id, 10).await.unwrap();
    assert_eq!(
        h.iter().map(|e| e.executed).collect::<Vec<_>>(),
        vec![at(3), at(2), at(1)]
    );
    assert_eq!(h[0].deployment.unwrap().1, 3);

    b.schedules.delete_schedule(&st, once.id).await.unwrap();
    assert!(matches!(
        b.schedules.delete_schedule(&st, once.id).await,
        Err(Error::NotFound(_))
    ));
    assert!(
        b.schedules
            .history(&st, once.id, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        b.schedules
            .update_schedule(&once, once.next_execution)
            .await,
        Err(Error::NotFound(_))
    ));
}

async fn advancing_a_slot_happens_once(b: Backend) {
    let st = stack("advance");
    b.stacks.create_stack(&st).await.unwrap();
    let s = schedule(&st, cron("*/5 * * * *"), Some(at(5)));
    b.schedules.create_schedule(&s).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let (store, st, id) = (b.schedules.clone(), st.clone(), s.id);
        tasks.spawn(async move {
            store
                .advance_schedule(&st, id, at(5), Some(at(10)), at(5))
                .await
                .unwrap()
        });
    }
    let wins = tasks.join_all().await.into_iter().filter(|w| *w).count();
    assert_eq!(wins, 1);
    let got = b.schedules.get_schedule(&st, s.id).await.unwrap().unwrap();
    assert_eq!(
        (got.next_execution, got.last_executed),
        (Some(at(10)), Some(at(5)))
    );
    // An update based on the slot before the firing is refused; one based on the new slot works.
    let mut edited = got.clone();
    edited.paused = true;
    assert!(matches!(
        b.schedules.update_schedule(&edited, Some(at(5))).await,
        Err(Error::Conflict(_))
    ));
    b.schedules
        .update_schedule(&edited, Some(at(10)))
        .await
        .unwrap();
    edited.paused = false;
    b.schedules
        .update_schedule(&edited, Some(at(10)))
        .await
        .unwrap();
    // A stale expectation loses; a one-time schedule leaves the due index once fired.
    assert!(
        !b.schedules
            .advance_schedule(&st, s.id, at(5), Some(at(15)), at(6))
            .await
            .unwrap()
    );
    assert!(
        b.schedules
            .advance_schedule(&st, s.id, at(10), None, at(10))
            .await
            .unwrap()
    );
    assert!(
        b.schedules
            .due_schedules(at(1000), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        b.schedules
            .get_schedule(&st, s.id)
            .await
            .unwrap()
            .unwrap()
            .next_execution,
        None
    );
}

async fn drift_runs_are_recorded_linked_and_paged(b: Backend) {
    let st = stack("drift");
    b.stacks.create_stack(&st).await.unwrap();
    let mut ids = vec![];
    for i in 0..3 {
        let run = DriftRun {
            id: Uuid::new_v4(),
            stack: st.clone(),
            created: at(i),
            detect: (Uuid::new_v4(), i + 1),
            drift_detected: i == 2,
            remediation: None,
        };
        b.drift.record_drift_run(&run).await.unwrap();
        ids.push(run.id);
    }
    let rem = (Uuid::new_v4(), 4);
    b.drift.link_remediation(&st, ids[2], rem).await.unwrap();
    assert!(matches!(
        b.drift.link_remediation(&st, Uuid::new_v4(), rem).await,
        Err(Error::NotFound(_))
    ));
    let page = b
        .drift
        .drift_runs(
            &st,
            PageRequest {
                page: 1,
                page_size: 2,
                ascending: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.total, 3);
    assert_eq!(
        page.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1]]
    );
    assert_eq!(page.items[0].remediation, Some(rem));
    assert!(page.items[0].drift_detected && !page.items[1].drift_detected);
    assert_eq!(
        b.drift
            .drift_run(&st, ids[0])
            .await
            .unwrap()
            .unwrap()
            .detect
            .1,
        1
    );
    assert!(
        b.drift
            .drift_run(&stack("elsewhere"), ids[0])
            .await
            .unwrap()
            .is_none()
    );
}

async fn deleting_a_stack_removes_its_schedules_and_drift_runs(b: Backend) {
    let st = stack("gone");
    b.stacks.create_stack(&st).await.unwrap();
    let s = schedule(&st, cron("* * * * *"), Some(at(1)));
    b.schedules.create_schedule(&s).await.unwrap();
    let run = DriftRun {
        id: Uuid::new_v4(),
        stack: st.clone(),
        created: at(0),
        detect: (Uuid::new_v4(), 1),
        drift_detected: false,
        remediation: None,
    };
    b.drift.record_drift_run(&run).await.unwrap();
    b.stacks.delete_stack(&st).await.unwrap();
    assert!(
        b.schedules
            .due_schedules(at(10), 10)
            .await
            .unwrap()
            .is_empty()
    );
    b.stacks.create_stack(&st).await.unwrap();
    assert!(b.schedules.list_schedules(&st).await.unwrap().is_empty());
    assert_eq!(
        b.drift
            .drift_runs(
                &st,
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
}

async fn a_bootstrap_secret_gives_one_admin_token(b: Backend) {
    use tower::ServiceExt;
    let secret = "tmb_the-secret";
    let mut d = deps(&b);
    Arc::get_mut(&mut d).unwrap().bootstrap_sha256 =
        Some(crate::crypto::sha256_hex(secret.as_bytes()));
    let post = |body: serde_json::Value| {
        let router = crate::http::router(Arc::clone(&d));
        async move {
            let req = axum::http::Request::builder()
                .method("POST")
                .uri("/api/bootstrap")
                .body(axum::body::Body::from(body.to_string()))
                .unwrap();
            let resp = router.oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
            )
        }
    };
    // Refusals write nothing.
    for (body, want) in [
        (json!({"secret": "tmb_wrong", "organization": "acme"}), 401),
        (json!({"organization": "acme"}), 400),
        (json!({"secret": secret, "organization": "no/such"}), 400),
    ] {
        let (status, v) = post(body.clone()).await;
        assert_eq!(status, want, "{body} -> {v}");
        assert_eq!(v["code"], want, "{v}");
    }
    assert_eq!(b.tokens.token_count().await.unwrap(), 0);

    let (status, v) = post(json!({"secret": secret, "organization": "acme"})).await;
    assert_eq!(status, 201, "{v}");
    let token = v["token"].as_str().unwrap();
    let p = b
        .tokens
        .find_token(&crate::crypto::token_hash(token))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((p.org.as_str(), p.role), ("acme", Role::Admin));
    assert_eq!(p.token_name, "bootstrap-admin");
    assert!(!v.to_string().contains(secret));

    // Once only, for this org or any other.
    let (status, v) = post(json!({"secret": secret, "organization": "other"})).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(b.tokens.token_count().await.unwrap(), 1);
    // The store refuses a second redemption by itself, too.
    let hash = crate::crypto::sha256_hex(secret.as_bytes());
    assert!(matches!(
        b.tokens
            .redeem_bootstrap(&hash, "h2", "acme", "again")
            .await,
        Err(crate::error::Error::Conflict(_))
    ));
    assert!(b.tokens.find_token("h2").await.unwrap().is_none());

    // Without a configured secret the route does not exist.
    let (status, v) = call(
        &b,
        "POST",
        "/api/bootstrap",
        Some(json!({"secret": secret, "organization": "acme"})),
    )
    .await;
    assert_eq!(status, 404, "{v}");
}

/// `Deps` over a backend's ports, as the API and the tick use them.
fn deps(b: &Backend) -> Arc<crate::deps::Deps> {
    Arc::new(crate::deps::Deps {
        stacks: b.stacks.clone(),
        orgs: b.orgs.clone(),
        tokens: b.tokens.clone(),
        deployments: b.deployments.clone(),
        logs: b.logs.clone(),
        runs: b.runs.clone(),
        schedules: b.schedules.clone(),
        drift: b.drift.clone(),
        queue: None,
        cipher: crate::crypto::Cipher::from_key(&[9; 32]),
        public_url: "http://tarmac.test".into(),
        allow_local_repos: true,
        state_dir: None,
        state_store: None,
        bootstrap_sha256: None,
        concurrency: 1,
        issuer: None,
        credentials: None,
        hooks: None,
        outbox: None,
    })
}

/// Calls the real router as a write-role token of `org`.
async fn call(
    b: &Backend,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    use tower::ServiceExt;
    let token = crate::crypto::new_token();
    b.tokens
        .create_token(&crate::crypto::token_hash(&token), "org", Role::Write, "t")
        .await
        .unwrap();
    let req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("Authorization", format!("token {token}"))
        .body(axum::body::Body::from(
            body.map(|v| v.to_string()).unwrap_or_default(),
        ))
        .unwrap();
    let resp = crate::http::router(deps(b)).oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

const SETTINGS: &str = "/api/stacks/org/proj/ticks/deployments/settings";
const SCHEDULES: &str = "/api/stacks/org/proj/ticks/deployments/schedules";

async fn with_settings(b: &Backend) {
    let (status, v) = call(
        b,
        "POST",
        SETTINGS,
        Some(json!({"sourceContext": {"git": {"repoUrl": "https://example.com/r.git"}}})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

fn ticks() -> StackRef {
    stack("ticks")
}

async fn schedule_at(b: &Backend, body: serde_json::Value) -> crate::schedule::Schedule {
    let (status, v) = call(b, "POST", SCHEDULES, Some(body)).await;
    assert_eq!(status, 200, "{v}");
    let id = Uuid::parse_str(v["id"].as_str().unwrap()).unwrap();
    b.schedules
        .get_schedule(&ticks(), id)
        .await
        .unwrap()
        .unwrap()
}

async fn tick(b: &Backend, now: OffsetDateTime) -> crate::scheduler::TickReport {
    crate::scheduler::tick(&deps(b), now, Duration::from_secs(7 * 86_400))
        .await
        .unwrap()
}

async fn deployment_count(b: &Backend) -> u64 {
    b.deployments
        .list_stack_deployments(
            &ticks(),
            PageRequest {
                page: 1,
                page_size: 100,
                ascending: false,
            },
        )
        .await
        .unwrap()
        .total
}

async fn racing_ticks_fire_each_slot_once(b: Backend) {
    with_settings(&b).await;
    let s = schedule_at(&b, json!({"scheduleCron": "*/5 * * * *", "request": {"operation": "update", "inheritSettings": true}})).await;
    let slot = s.next_execution.unwrap();
    assert!(
        tick(&b, slot - time::Duration::seconds(1)).await.fired == 0,
        "not due yet"
    );
    let (r1, r2) = tokio::join!(tick(&b, slot), tick(&b, slot));
    assert_eq!(r1.fired + r2.fired, 1, "{r1:?} {r2:?}");
    assert_eq!(deployment_count(&b).await, 1);
    let after = b
        .schedules
        .get_schedule(&ticks(), s.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        after.next_execution,
        Some(slot + time::Duration::minutes(5))
    );
    assert_eq!(after.last_executed, Some(slot));
    let (_, h) = call(&b, "GET", &format!("{SCHEDULES}/{}/history", s.id), None).await;
    let events = h["scheduleHistoryEvents"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["version"], 1);
    assert_eq!(
        events[0]["result"], "not-started",
        "a firing's result is its deployment's status"
    );
    let d = b
        .deployments
        .get_deployment_by_version(&ticks(), 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (d.operation, d.initiator.as_str()),
        (Operation::Update, "schedule")
    );
}

async fn after_downtime_a_schedule_fires_once_and_history_records_the_missed_slots(b: Backend) {
    with_settings(&b).await;
    let s = schedule_at(
        &b,
        json!({"scheduleCron": "0 * * * *", "request": {"operation": "refresh"}}),
    )
    .await;
    let first = s.next_execution.unwrap();
    let report = tick(&b, first + time::Duration::minutes(3 * 60 + 30)).await;
    assert_eq!((report.fired, report.skipped), (1, 3));
    assert_eq!(deployment_count(&b).await, 1);
    let after = b
        .schedules
        .get_schedule(&ticks(), s.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.next_execution, Some(first + time::Duration::hours(4)));
    let h = b.schedules.history(&ticks(), s.id, 10).await.unwrap();
    assert_eq!(h.len(), 4);
    assert_eq!(h[0].executed, first + time::Duration::hours(3));
    assert!(h[0].deployment.is_some());
    assert!(
        h[1..]
            .iter()
            .all(|e| e.deployment.is_none() && e.note.starts_with("skipped"))
    );
    assert_eq!(
        tick(&b, first + time::Duration::minutes(3 * 60 + 31))
            .await
            .fired,
        0
    );
}

async fn paused_schedules_do_not_fire_and_resume_at_their_next_future_slot(b: Backend) {
    with_settings(&b).await;
    let s = schedule_at(
        &b,
        json!({"scheduleCron": "* * * * *", "request": {"operation": "preview"}}),
    )
    .await;
    assert_eq!(
        call(&b, "POST", &format!("{SCHEDULES}/{}/pause", s.id), None)
            .await
            .0,
        204
    );
    let far = OffsetDateTime::now_utc() + time::Duration::hours(2);
    assert_eq!(tick(&b, far).await.fired, 0);
    let (_, v) = call(&b, "GET", &format!("{SCHEDULES}/{}", s.id), None).await;
    assert_eq!(v["paused"], true);
    assert_eq!(
        call(&b, "POST", &format!("{SCHEDULES}/{}/resume", s.id), None)
            .await
            .0,
        204
    );
    let resumed = b
        .schedules
        .get_schedule(&ticks(), s.id)
        .await
        .unwrap()
        .unwrap();
    let next = resumed.next_execution.unwrap();
    assert!(
        next > OffsetDateTime::now_utc()
            && next <= OffsetDateTime::now_utc() + time::Duration::minutes(1)
    );
    let report = tick(&b, next).await;
    assert_eq!(
        (report.fired, report.skipped),
        (1, 0),
        "slots missed while paused do not fire"
    );
}

async fn one_time_and_ttl_schedules_fire_once(b: Backend) {
    with_settings(&b).await;
    let at = (OffsetDateTime::now_utc() + time::Duration::minutes(10))
        .replace_nanosecond(0)
        .unwrap();
    let once = schedule_at(&b, json!({"scheduleOnce": crate::domain::time_fmt::rfc3339(at), "request": {"operation": "update"}})).await;
    assert_eq!(once.next_execution, Some(at));
    let (status, ttl) = call(
        &b,
        "POST",
        "/api/stacks/org/proj/ticks/deployments/ttl/schedules",
        Some(
            json!({"timestamp": crate::domain::time_fmt::rfc3339(at), "deleteAfterDestroy": true}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{ttl}");
    assert_eq!(ttl["definition"]["request"]["operation"], "destroy");
    assert_eq!(
        ttl["definition"]["request"]["operationContext"]["options"]["deleteAfterDestroy"],
        true
    );
    assert!(ttl["scheduleOnce"].is_string() && ttl["lastExecuted"] == "");
    assert_eq!(tick(&b, at).await.fired, 2);
    assert_eq!(tick(&b, at + time::Duration::days(1)).await.fired, 0);
    let (_, v) = call(&b, "GET", &format!("{SCHEDULES}/{}", once.id), None).await;
    assert_eq!(v["nextExecution"], "");
    assert!(
        v["lastExecuted"]
            .as_str()
            .unwrap()
            .starts_with(&at.year().to_string())
    );
    let ops: Vec<Operation> = b
        .deployments
        .list_stack_deployments(
            &ticks(),
            PageRequest {
                page: 1,
                page_size: 10,
                ascending: true,
            },
        )
        .await
        .unwrap()
        .items
        .iter()
        .map(|d| d.operation)
        .collect();
    assert!(ops.contains(&Operation::Update) && ops.contains(&Operation::Destroy));
    let (_, meta) = call(
        &b,
        "GET",
        "/api/stacks/org/proj/ticks/deployments/metadata",
        None,
    )
    .await;
    assert_eq!(meta["hasSchedules"], true);
    // Deleting the stack deletes its schedules.
    let queued = b
        .deployments
        .list_stack_deployments(
            &ticks(),
            PageRequest {
                page: 1,
                page_size: 10,
                ascending: true,
            },
        )
        .await
        .unwrap();
    for d in queued.items {
        b.deployments
            .cancel_deployment(&ticks(), d.id)
            .await
            .unwrap();
    }
    assert_eq!(
        call(&b, "DELETE", "/api/stacks/org/proj/ticks", None)
            .await
            .0,
        204
    );
    assert!(
        b.schedules
            .due_schedules(at + time::Duration::days(365), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn schedule_requests_are_validated(b: Backend) {
    // No settings yet: refused with 400, nothing stored.
    b.stacks.create_stack(&ticks()).await.unwrap();
    let body = json!({"scheduleCron": "0 0 * * 0", "request": {"operation": "update"}});
    let (status, v) = call(&b, "POST", SCHEDULES, Some(body.clone())).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("deployment settings not configured")
    );
    with_settings(&b).await;
    for (bad, want) in [
        (
            json!({"request": {"operation": "update"}}),
            "exactly one of scheduleCron and scheduleOnce",
        ),
        (
            json!({"scheduleCron": "0 0 * * 0", "scheduleOnce": "2030-01-01T00:00:00Z", "request": {"operation": "update"}}),
            "exactly one",
        ),
        (
            json!({"scheduleCron": "61 * * * *", "request": {"operation": "update"}}),
            "invalid scheduleCron",
        ),
        (
            json!({"scheduleCron": "* * * *", "request": {"operation": "update"}}),
            "expected 5 fields",
        ),
        (
            json!({"scheduleOnce": "next tuesday", "request": {"operation": "update"}}),
            "not an RFC 3339",
        ),
        (
            json!({"scheduleCron": "0 0 * * 0", "request": {"operation": "explode"}}),
            "unknown Operation",
        ),
        (json!({"scheduleCron": "0 0 * * 0"}), "request is required"),
    ] {
        let (status, v) = call(&b, "POST", SCHEDULES, Some(bad)).await;
        assert_eq!(status, 400, "{v}");
        assert!(v["message"].as_str().unwrap().contains(want), "{v}");
    }
    // SDK style: unset fields sent as null count as absent.
    let (status, v) = call(&b, "POST", SCHEDULES, Some(json!({"scheduleCron": "0 0 * * 0", "scheduleOnce": null, "request": {"operation": "update", "inheritSettings": true, "tag": null}}))).await;
    assert_eq!(status, 200, "{v}");
    let (_, list) = call(&b, "GET", SCHEDULES, None).await;
    assert_eq!(list["schedules"].as_array().unwrap().len(), 1);
    // A request's secrets are sealed when stored and never shown in plaintext.
    let with_secret = json!({"scheduleCron": "0 0 * * 0", "request": {"operation": "update",
        "operationContext": {"environmentVariables": {"DB": {"secret": "plain-text-pw"}}}}});
    let (status, v) = call(&b, "POST", SCHEDULES, Some(with_secret)).await;
    assert_eq!(status, 200, "{v}");
    assert!(!v.to_string().contains("plain-text-pw"), "{v}");
    assert!(
        v["definition"]["request"]["operationContext"]["environmentVariables"]["DB"]["ciphertext"]
            .is_string()
    );
    let stored = b
        .schedules
        .get_schedule(
            &ticks(),
            Uuid::parse_str(v["id"].as_str().unwrap()).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(!stored.definition.to_string().contains("plain-text-pw"));
    let (_, list) = call(&b, "GET", SCHEDULES, None).await;
    assert!(!list.to_string().contains("plain-text-pw"));
    let (status, _) = call(&b, "GET", &format!("{SCHEDULES}/{}", Uuid::new_v4()), None).await;
    assert_eq!(status, 404);
    let (status, _) = call(&b, "GET", &format!("{SCHEDULES}/not-an-id"), None).await;
    assert_eq!(status, 400);
}

/// The embedded queue (`claim_next`) picks the oldest claimable deployment across stacks.
#[tokio::test]
async fn sqlite_claim_next_takes_the_oldest_claimable_deployment() {
    let b = sqlite().await;
    let (a, c) = (stack("a"), stack("c"));
    let a1 = create(&b, &a, Operation::Update).await;
    let a2 = create(&b, &a, Operation::Update).await;
    let c1 = create(&b, &c, Operation::Update).await;
    let w = lease("w", 60_000);
    assert_eq!(
        b.runs.claim_next(&w).await.unwrap().unwrap().deployment.id,
        a1
    );
    assert_eq!(
        b.runs.claim_next(&w).await.unwrap().unwrap().deployment.id,
        c1
    );
    assert!(b.runs.claim_next(&w).await.unwrap().is_none());
    b.runs.finish(a1, &w, JobStatus::Succeeded).await.unwrap();
    assert_eq!(
        b.runs.claim_next(&w).await.unwrap().unwrap().deployment.id,
        a2
    );
}

async fn only_the_lease_holder_of_a_running_deployment_is_recognised(b: Backend) {
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

async fn the_signing_keyring_is_written_optimistically(b: Backend) {
    use crate::oidc::{KeyMaterial, SigningKey};
    let key = |kid: &str| SigningKey {
        kid: kid.into(),
        n: "n".into(),
        e: "AQAB".into(),
        created: 1,
        retired_until: None,
        material: KeyMaterial::Kms(kid.into()),
    };
    assert_eq!(b.keys.keyring().await.unwrap(), (vec![], 0));
    assert_eq!(b.keys.put_keyring(&[key("a")], 0).await.unwrap(), 1);
    assert!(matches!(
        b.keys.put_keyring(&[key("b")], 0).await,
        Err(Error::Conflict(_))
    ));
    let both = [key("a"), key("b")];
    assert_eq!(b.keys.put_keyring(&both, 1).await.unwrap(), 2);
    assert!(matches!(
        b.keys.put_keyring(&[key("c")], 1).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(b.keys.keyring().await.unwrap(), (both.to_vec(), 2));
}

async fn tokens_verify_against_the_jwks_across_a_rotation(b: Backend) {
    let issuer = crate::oidc::Issuer::new(
        "https://tarmac.test/oidc",
        b.keys.clone(),
        Some(crate::crypto::Cipher::from_key(&[5; 32])),
        None,
    );
    issuer.ensure_local_key().await.unwrap();
    issuer.ensure_local_key().await.unwrap();
    let jwks = issuer.jwks().await.unwrap();
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        1,
        "one key, made once"
    );
    let claims = |n: i64| {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        json!({"iss": "https://tarmac.test/oidc", "aud": "org", "sub": format!("s{n}"), "iat": now, "nbf": now, "exp": now + 600})
    };
    let before = issuer.sign(&claims(1)).await.unwrap();
    let old_kid = crate::oidc::testing::kid(&before);
    let new_kid = issuer.rotate_local().await.unwrap();
    assert_ne!(old_kid, new_kid);
    let after = issuer.sign(&claims(2)).await.unwrap();
    assert_eq!(
        crate::oidc::testing::kid(&after),
        new_kid,
        "new tokens carry the new kid"
    );
    let jwks = issuer.jwks().await.unwrap();
    let verify =
        |t: &str| crate::oidc::testing::verify(t, &jwks, "https://tarmac.test/oidc", "org");
    assert_eq!(
        verify(&before).unwrap()["sub"],
        "s1",
        "tokens signed before the rotation still verify"
    );
    assert_eq!(verify(&after).unwrap()["sub"], "s2");
    // A token whose payload was changed does not verify.
    let mut parts: Vec<&str> = after.split('.').collect();
    let forged = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims(3).to_string())
    };
    parts[1] = &forged;
    assert!(verify(&parts.join(".")).is_err());
}

async fn only_a_running_deployments_worker_gets_its_credentials(b: Backend) {
    use crate::oidc::{CredentialBroker, ExchangeRequest, Exchanger, Issuer};
    let issuer = Arc::new(Issuer::new(
        "https://tarmac.test/oidc",
        b.keys.clone(),
        Some(crate::crypto::Cipher::from_key(&[6; 32])),
        None,
    ));
    issuer.ensure_local_key().await.unwrap();
    let exchanger = Exchanger::new(b.runs.clone(), issuer.clone(), None);
    let request = |st: &StackRef, id: Uuid, lease: &str| ExchangeRequest {
        org: st.org.clone(),
        project: st.project.clone(),
        stack: st.stack.clone(),
        deployment_id: id,
        lease: lease.into(),
    };
    let refused = |r: crate::error::Result<crate::oidc::RunCredentials>| match r {
        Err(e) => e.status().as_u16() == 403,
        Ok(_) => false,
    };

    let (mine, theirs) = (stack("creds"), stack("creds-other"));
    let mut n = new(&mine, Operation::Preview, false);
    n.config["operationContext"] = json!({"oidc": {"readScope": true}});
    let id = b.deployments.create_deployment(n).await.unwrap().id;
    let other = create(&b, &theirs, Operation::Update).await;
    // Queued: nobody runs it yet.
    assert!(refused(exchanger.exchange(&request(&mine, id, "w")).await));
    let (w, w2) = (lease("w", 60_000), lease("w2", 60_000));
    claimed(claim(&b, &mine, id, &w).await);
    b.runs.mark_running(id, &w).await.unwrap();
    claimed(claim(&b, &theirs, other, &w2).await);
    b.runs.mark_running(other, &w2).await.unwrap();

    let creds = exchanger.exchange(&request(&mine, id, "w")).await.unwrap();
    assert!(creds.aws.is_none() && creds.azure.is_none() && creds.gcp.is_none());
    let claims = crate::oidc::testing::verify(
        &creds.token,
        &issuer.jwks().await.unwrap(),
        "https://tarmac.test/oidc",
        "org",
    )
    .unwrap();
    assert_eq!(
        claims["sub"],
        "pulumi:deploy:org:org:project:proj:stack:creds:operation:preview:scope:read"
    );
    assert_eq!(claims["scope"], "read");
    assert_eq!(claims["deployment"], 1);
    assert_eq!(creds.expires, claims["exp"].as_i64().unwrap());

    // A wrong lease, another deployment's lease, another stack's path: all 403.
    assert!(refused(
        exchanger.exchange(&request(&mine, id, "thief")).await
    ));
    assert!(refused(exchanger.exchange(&request(&mine, id, "w2")).await));
    assert!(refused(
        exchanger.exchange(&request(&theirs, other, "w")).await
    ));
    assert!(refused(
        exchanger.exchange(&request(&theirs, id, "w")).await
    ));
    // A running deployment without OIDC settings gets no token (400, not a token by default).
    assert_eq!(
        exchanger
            .exchange(&request(&theirs, other, "w2"))
            .await
            .unwrap_err()
            .status()
            .as_u16(),
        400
    );
    // Once finished, not even its own worker gets credentials.
    b.runs.finish(id, &w, JobStatus::Succeeded).await.unwrap();
    assert!(refused(exchanger.exchange(&request(&mine, id, "w")).await));
}

async fn a_create_with_a_taken_id_is_a_conflict_and_changes_nothing(b: Backend) {
    let st = stack("same-id");
    let first = new(&st, Operation::Update, false);
    let again = first.clone();
    b.deployments.create_deployment(first).await.unwrap();
    assert!(matches!(
        b.deployments.create_deployment(again).await,
        Err(Error::Conflict(_))
    ));
    let page = b
        .deployments
        .list_stack_deployments(
            &st,
            PageRequest {
                page: 1,
                page_size: 10,
                ascending: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    // The stack's versions were not consumed by the refused create.
    let next = b
        .deployments
        .create_deployment(new(&st, Operation::Update, false))
        .await
        .unwrap();
    assert_eq!(next.version, 2);
}

async fn integrations_and_an_orgs_stack_settings(b: Backend) {
    assert_eq!(b.orgs.get_integration("org", "github").await.unwrap(), None);
    let cfg = json!({"webhookSecret": "sealed", "apiUrl": "https://api.github.com"});
    b.orgs
        .put_integration("org", "github", Some(&cfg))
        .await
        .unwrap();
    assert_eq!(
        b.orgs.get_integration("org", "github").await.unwrap(),
        Some(cfg)
    );
    assert_eq!(
        b.orgs.get_integration("other", "github").await.unwrap(),
        None
    );
    b.orgs.put_integration("org", "github", None).await.unwrap();
    assert_eq!(b.orgs.get_integration("org", "github").await.unwrap(), None);

    let with = stack("with-settings");
    b.stacks
        .put_settings(&with, &json!({"gitHub": {"repository": "o/r"}}), 0)
        .await
        .unwrap();
    b.stacks.create_stack(&stack("bare")).await.unwrap();
    let elsewhere = StackRef::new("other-org", "proj", "x").unwrap();
    b.stacks
        .put_settings(&elsewhere, &json!({}), 0)
        .await
        .unwrap();
    let listed = b.stacks.list_stack_settings("org").await.unwrap();
    assert_eq!(
        listed,
        vec![(with, json!({"gitHub": {"repository": "o/r"}}))]
    );
}

fn hook(name: &str) -> crate::webhooks::Hook {
    crate::webhooks::Hook {
        name: name.into(),
        display_name: format!("hook {name}"),
        payload_url: "https://example.com/h".into(),
        secret: None,
        active: true,
        format: crate::webhooks::Format::Raw,
        filters: vec![],
        groups: vec![],
    }
}

async fn hooks_are_scoped_named_once_and_go_with_their_stack(b: Backend) {
    use crate::webhooks::HookScope;
    let st = stack("hooked");
    b.stacks.create_stack(&st).await.unwrap();
    let org = HookScope {
        org: "org".into(),
        stack: None,
    };
    let own = HookScope {
        org: "org".into(),
        stack: Some(st.clone()),
    };
    let other = HookScope {
        org: "org".into(),
        stack: Some(stack("other")),
    };
    b.hooks.create_hook(&org, &hook("a")).await.unwrap();
    b.hooks.create_hook(&own, &hook("a")).await.unwrap();
    b.hooks.create_hook(&other, &hook("b")).await.unwrap();
    assert!(matches!(
        b.hooks.create_hook(&org, &hook("a")).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(b.hooks.list_hooks(&org).await.unwrap(), vec![hook("a")]);
    let mut changed = hook("a");
    changed.active = false;
    b.hooks.update_hook(&own, &changed).await.unwrap();
    assert_eq!(
        b.hooks.get_hook(&own, "a").await.unwrap(),
        Some(changed.clone())
    );
    assert!(matches!(
        b.hooks.update_hook(&own, &hook("zz")).await,
        Err(Error::NotFound(_))
    ));
    let mut heard: Vec<(String, bool)> = b
        .hooks
        .hooks_for_stack(&st)
        .await
        .unwrap()
        .into_iter()
        .map(|(scope, h)| (scope.key(), h.active))
        .collect();
    heard.sort();
    assert_eq!(
        heard,
        [
            ("org/org".to_string(), true),
            ("stack/org/proj/hooked".to_string(), false)
        ]
    );
    b.hooks.delete_hook(&org, "a").await.unwrap();
    assert!(matches!(
        b.hooks.delete_hook(&org, "a").await,
        Err(Error::NotFound(_))
    ));
    b.stacks.delete_stack(&st).await.unwrap();
    assert_eq!(
        b.hooks.get_hook(&own, "a").await.unwrap(),
        None,
        "gone with the stack"
    );
    assert_eq!(b.hooks.list_hooks(&other).await.unwrap().len(), 1);
}

async fn the_outbox_hands_each_due_message_to_one_dispatcher_and_logs_attempts(b: Backend) {
    let st = stack("events");
    b.stacks.create_stack(&st).await.unwrap();
    // Stores keep microseconds.
    use crate::domain::time_fmt::{from_micros, to_micros};
    let now = from_micros(to_micros(OffsetDateTime::now_utc()));
    let msg = |id: &str| OutboxMessage {
        id: id.into(),
        org: "org".into(),
        target: "hook:org/org/a".into(),
        kind: "deployment".into(),
        event: "deployment_started".into(),
        body: format!("{{\"n\":\"{id}\"}}"),
        created: now - Duration::from_secs(1),
    };
    b.outbox
        .enqueue(&[msg("m1"), msg("m2")], true)
        .await
        .unwrap();
    b.outbox.enqueue(&[msg("ping")], false).await.unwrap();
    let lease = Duration::from_secs(60);
    let mut first: Vec<String> = b
        .outbox
        .claim_due(now, 10, lease)
        .await
        .unwrap()
        .into_iter()
        .map(|(m, n)| format!("{}:{n}", m.id))
        .collect();
    first.sort();
    assert_eq!(
        first,
        ["m1:0", "m2:0"],
        "the not-due ping is not handed out"
    );
    assert!(
        b.outbox.claim_due(now, 10, lease).await.unwrap().is_empty(),
        "claimed once"
    );

    let attempt = |code: i64, at: OffsetDateTime| Attempt {
        timestamp: at,
        duration_ms: 5,
        request_url: "https://example.com/h".into(),
        request_headers: "Pulumi-Webhook-ID: m1\r\n".into(),
        response_code: code,
        response_headers: String::new(),
        response_body: "x".into(),
    };
    // A failure, due again at once; then a success, done.
    b.outbox
        .record_attempt("m1", &attempt(500, now), Some(now))
        .await
        .unwrap();
    let again = b
        .outbox
        .claim_due(now + Duration::from_millis(1), 10, lease)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].0.id.as_str(), again[0].1), ("m1", 1));
    b.outbox
        .record_attempt("m1", &attempt(200, now + Duration::from_secs(1)), None)
        .await
        .unwrap();
    assert!(
        b.outbox
            .claim_due(now + Duration::from_secs(600), 10, lease)
            .await
            .unwrap()
            .iter()
            .all(|(m, _)| m.id != "m1")
    );
    let log = b.outbox.attempts("hook:org/org/a", 10).await.unwrap();
    let seen: Vec<(String, i64, u32)> = log
        .iter()
        .map(|(m, a, n)| (m.id.clone(), a.response_code, *n))
        .collect();
    assert_eq!(
        seen,
        [("m1".to_string(), 200, 2), ("m1".to_string(), 500, 1)]
    );
    assert_eq!(log[0].0, msg("m1"));
    assert_eq!(
        b.outbox.message("m1").await.unwrap().map(|(_, n)| n),
        Some(2)
    );
    assert_eq!(b.outbox.message("nope").await.unwrap(), None);
    // A dispatcher that died: its claim runs out and the message comes back.
    b.outbox.finish("m2").await.unwrap();
    assert!(
        b.outbox
            .claim_due(now + Duration::from_secs(600), 10, lease)
            .await
            .unwrap()
            .is_empty()
    );
    b.outbox.reschedule("m2", Some(now)).await.unwrap();
    assert_eq!(b.outbox.claim_due(now, 10, lease).await.unwrap().len(), 1);
    // Retention: done messages older than the cut go (SQLite; DynamoDB's TTL does it there),
    // messages still due never do.
    let pruned = b
        .outbox
        .prune_done(now + Duration::from_secs(1))
        .await
        .unwrap();
    if b.expires_by_ttl {
        assert_eq!(pruned, 0);
    } else {
        assert_eq!(pruned, 2, "m1 and the ping, both done");
        assert_eq!(b.outbox.message("m1").await.unwrap(), None);
        assert!(
            b.outbox
                .attempts("hook:org/org/a", 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            b.outbox.message("m2").await.unwrap().is_some(),
            "m2 is due again"
        );
    }
}
