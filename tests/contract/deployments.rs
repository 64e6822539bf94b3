//! Creating, reading, listing and cancelling deployments.

use tarmac::domain::*;
use tarmac::error::Error;

use crate::{Backend, claim, claimed, create, lease, new, stack, status};

pub(crate) async fn concurrent_creates_get_distinct_consecutive_versions(b: Backend) {
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

pub(crate) async fn cancel_dequeues_or_flags_and_reports_finished_ones(b: Backend) {
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

pub(crate) async fn deleting_a_stack_removes_its_deployments_but_not_while_one_runs(b: Backend) {
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

pub(crate) async fn lists_page_newest_first(b: Backend) {
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

pub(crate) async fn a_create_with_a_taken_id_is_a_conflict_and_changes_nothing(b: Backend) {
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
