//! Org concurrency limits and a queued deployment's place: a claim beyond the limit waits
//! (and is counted in the same write as the claim), the count follows runs to their end, and
//! the queue state says what holds a deployment and how many are ahead of it.

use tarmac::domain::*;
use tarmac::ports::*;

use crate::{Backend, claim, claimed, create, lease, stack};

async fn state(b: &Backend, st: &StackRef, id: uuid::Uuid) -> QueueState {
    let d = b.deployments.get_deployment(st, id).await.unwrap().unwrap();
    b.runs.queue_state(&d).await.unwrap()
}

pub(crate) async fn an_org_limit_holds_claims_and_the_queue_state_says_why(b: Backend) {
    let l = lease("w", 60_000);
    assert_eq!(b.orgs.org_limit("org").await.unwrap(), OrgLimit::default());
    b.orgs.set_org_limit("org", Some(1)).await.unwrap();
    let (one, two, three) = (stack("limit-1"), stack("limit-2"), stack("limit-3"));
    let d1 = create(&b, &one, Operation::Update).await;
    let d2 = create(&b, &two, Operation::Update).await;
    let d3 = create(&b, &one, Operation::Update).await;
    assert_eq!(
        state(&b, &two, d2).await,
        QueueState {
            ahead: 1,
            ..QueueState::default()
        }
    );
    assert_eq!(claimed(claim(&b, &one, d1, &l).await), d1);
    assert!(matches!(claim(&b, &two, d2, &l).await, ClaimOutcome::Busy));
    assert_eq!(
        b.orgs.org_limit("org").await.unwrap(),
        OrgLimit {
            max_concurrent: Some(1),
            running: 1
        }
    );
    let s2 = state(&b, &two, d2).await;
    assert_eq!(
        (s2.ahead, s2.org_at_limit, s2.stack_busy),
        (0, true, false),
        "{s2:?}"
    );
    let s3 = state(&b, &one, d3).await;
    assert_eq!((s3.ahead, s3.stack_busy), (1, true), "{s3:?}");

    // The run ends: the count goes down and the next claim is allowed.
    b.runs.mark_running(d1, &l).await.unwrap();
    b.runs.finish(d1, &l, JobStatus::Succeeded).await.unwrap();
    assert_eq!(b.orgs.org_limit("org").await.unwrap().running, 0);
    assert_eq!(claimed(claim(&b, &two, d2, &l).await), d2);
    // Cancelled while running, it ends through its worker, and is counted out too.
    b.runs.mark_running(d2, &l).await.unwrap();
    b.runs.finish(d2, &l, JobStatus::Failed).await.unwrap();
    assert_eq!(b.orgs.org_limit("org").await.unwrap().running, 0);

    b.orgs.set_org_limit("org", None).await.unwrap();
    assert_eq!(b.orgs.org_limit("org").await.unwrap().max_concurrent, None);
    // Another org's limit is its own.
    b.orgs.set_org_limit("other", Some(5)).await.unwrap();
    assert_eq!(b.orgs.org_limit("org").await.unwrap().max_concurrent, None);

    // Paused stacks say so.
    let d4 = create(&b, &three, Operation::Update).await;
    b.stacks.set_stack_paused(&three, true).await.unwrap();
    assert!(state(&b, &three, d4).await.paused);
}
