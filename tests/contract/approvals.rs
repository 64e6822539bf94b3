//! Approvals in the stores: a deployment waiting for approval is never claimed, and holds its
//! stack's queue (by id, by queue and by pool) until it is approved; decisions are atomic and
//! checked; a rejection or the deadline skips it with the reason in its log, and cancelling it
//! works as for any queued deployment.

use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use tarmac::domain::approvals::{Approval, ApprovalRule, ApprovalStatus, Ballot, Decision, Voter};
use tarmac::domain::pools::ClaimQueue;
use tarmac::domain::spec::{DeploymentConfig, SourcePolicy};
use tarmac::domain::*;
use tarmac::ports::*;

use crate::{Backend, claim, claimed, lease, stack, status};

fn gated(
    st: &StackRef,
    op: Operation,
    expires_after: i64,
    skip_intermediate: bool,
) -> NewDeployment {
    let settings = json!({
        "sourceContext": {"git": {"repoUrl": "https://example.com/r.git"}},
        "operationContext": {"options": {"skipIntermediateDeployments": skip_intermediate}},
        "approvals": {"operations": ["update"], "required": 2, "expiresAfter": expires_after},
    });
    let config = DeploymentConfig::parse(settings, SourcePolicy::Stored).unwrap();
    let rule: Option<ApprovalRule> = config.spec().approvals.clone();
    NewDeployment {
        id: Uuid::new_v4(),
        stack: st.clone(),
        operation: op,
        approval: Approval::needed(rule.as_ref(), op, OffsetDateTime::now_utc()),
        config,
        initiator: "api".into(),
        requested_by: "ci".into(),
    }
}

fn ballot(name: &str, decision: Decision) -> Ballot {
    Ballot {
        voter: Voter {
            token_name: name.into(),
            role: Role::Admin,
        },
        decision,
        comment: Some(format!("{name} says so")),
        at: OffsetDateTime::now_utc(),
    }
}

/// Stores a gated deployment (see `gated`).
async fn queue(
    b: &Backend,
    st: &StackRef,
    op: Operation,
    expires_after: i64,
    skip_intermediate: bool,
) -> Deployment {
    b.deployments
        .create_deployment(gated(st, op, expires_after, skip_intermediate))
        .await
        .unwrap()
}

/// `name`'s decision on a deployment, as the store records it.
async fn decide(
    b: &Backend,
    st: &StackRef,
    id: Uuid,
    name: &str,
    decision: Decision,
) -> tarmac::Result<Deployment> {
    b.deployments
        .decide_approval(st, id, &ballot(name, decision))
        .await
}

async fn log_text(b: &Backend, id: Uuid) -> String {
    b.logs
        .read_logs(
            id,
            LogQuery::Stream {
                after: 0,
                limit: 100,
            },
        )
        .await
        .unwrap()
        .iter()
        .filter_map(|e| e.line.clone())
        .collect()
}

pub(crate) async fn a_deployment_waiting_for_approval_holds_its_stack_until_approved(b: Backend) {
    let st = stack("gated");
    let l = lease("w", 60_000);
    let waiting = queue(&b, &st, Operation::Update, 3600, false).await;
    assert!(waiting.awaiting_approval());
    assert_eq!(waiting.approval.as_ref().unwrap().required, 2);
    // A refresh behind it is not gated, but waits its turn.
    let behind = queue(&b, &st, Operation::Refresh, 3600, false).await;
    assert!(behind.approval.is_none());
    assert!(matches!(
        claim(&b, &st, waiting.id, &l).await,
        ClaimOutcome::AwaitingApproval
    ));
    assert!(matches!(
        claim(&b, &st, behind.id, &l).await,
        ClaimOutcome::AwaitingApproval
    ));
    // Nor is it handed to a claim from the queue, or re-sent by the reconciler.
    if b.queue.is_none() {
        assert!(
            b.runs
                .claim_next(&l, ClaimQueue::BuiltIn)
                .await
                .unwrap()
                .is_none()
        );
    }
    let later = OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let resent = b.runs.queued_before(later).await.unwrap();
    assert!(
        !resent.iter().any(|m| m.deployment_id == waiting.id),
        "{resent:?}"
    );

    // Checked decisions: the requester, a second vote of one token, a missing deployment.
    let err = decide(&b, &st, waiting.id, "ci", Decision::Approve)
        .await
        .unwrap_err();
    assert!(matches!(err, tarmac::Error::Forbidden(_)), "{err}");
    let once = decide(&b, &st, waiting.id, "alice", Decision::Approve)
        .await
        .unwrap();
    assert_eq!(once.approval.as_ref().unwrap().approved_by.len(), 1);
    assert!(once.awaiting_approval());
    let err = decide(&b, &st, waiting.id, "alice", Decision::Approve)
        .await
        .unwrap_err();
    assert!(matches!(err, tarmac::Error::Conflict(_)), "{err}");
    let err = b
        .deployments
        .decide_approval(&st, Uuid::new_v4(), &ballot("bob", Decision::Approve))
        .await
        .unwrap_err();
    assert!(matches!(err, tarmac::Error::NotFound(_)), "{err}");
    let err = decide(&b, &st, behind.id, "bob", Decision::Approve)
        .await
        .unwrap_err();
    assert!(matches!(err, tarmac::Error::Conflict(_)), "{err}");

    // The second approval: it is claimed, then the refresh after it.
    let approved = decide(&b, &st, waiting.id, "bob", Decision::Approve)
        .await
        .unwrap();
    assert_eq!(
        approved.approval.as_ref().unwrap().status,
        ApprovalStatus::Approved
    );
    assert!(!approved.awaiting_approval());
    let resent = b.runs.queued_before(later).await.unwrap();
    assert!(
        resent.iter().any(|m| m.deployment_id == waiting.id),
        "{resent:?}"
    );
    assert_eq!(claimed(claim(&b, &st, waiting.id, &l).await), waiting.id);
    b.runs.mark_running(waiting.id, &l).await.unwrap();
    b.runs
        .finish(waiting.id, &l, JobStatus::Succeeded)
        .await
        .unwrap();
    assert_eq!(claimed(claim(&b, &st, behind.id, &l).await), behind.id);
    let d = b
        .deployments
        .get_deployment(&st, waiting.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        d.approval.unwrap().approved_by[1].comment.as_deref(),
        Some("bob says so")
    );
}

pub(crate) async fn rejection_expiry_cancel_and_supersession_end_a_wait(b: Backend) {
    let l = lease("w", 60_000);
    // Rejected: skipped at once, the reason in its log; the stack moves on.
    let st = stack("rejected");
    let d = queue(&b, &st, Operation::Update, 3600, false).await;
    let after = queue(&b, &st, Operation::Refresh, 3600, false).await;
    let rejected = decide(&b, &st, d.id, "bob", Decision::Reject)
        .await
        .unwrap();
    assert_eq!(rejected.status, JobStatus::Skipped);
    assert_eq!(
        rejected.approval.as_ref().unwrap().status,
        ApprovalStatus::Rejected
    );
    assert!(
        log_text(&b, d.id)
            .await
            .contains("Skipped: rejected by 'bob': bob says so.")
    );
    let err = decide(&b, &st, d.id, "carol", Decision::Approve)
        .await
        .unwrap_err();
    assert!(matches!(err, tarmac::Error::Conflict(_)), "{err}");
    assert_eq!(claimed(claim(&b, &st, after.id, &l).await), after.id);

    // Expired: the reaper skips it, saying so.
    let st = stack("expiring");
    let d = queue(&b, &st, Operation::Update, 1, false).await;
    let far = OffsetDateTime::now_utc() - time::Duration::days(30);
    assert!(
        b.runs
            .reap(OffsetDateTime::now_utc(), far)
            .await
            .unwrap()
            .iter()
            .all(|r| r.id != d.id)
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reaped = b.runs.reap(OffsetDateTime::now_utc(), far).await.unwrap();
    assert!(
        reaped
            .iter()
            .any(|r| r.id == d.id && r.status == JobStatus::Skipped),
        "{reaped:?}"
    );
    let lapsed = b
        .deployments
        .get_deployment(&st, d.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lapsed.status, JobStatus::Skipped);
    assert_eq!(lapsed.approval.unwrap().status, ApprovalStatus::Expired);
    assert!(
        log_text(&b, d.id)
            .await
            .contains("with 0 of 2 approvals given")
    );
    assert!(
        b.runs
            .reap(OffsetDateTime::now_utc(), far)
            .await
            .unwrap()
            .is_empty()
    );

    // Cancelled while waiting: skipped, and nothing is left to decide.
    let st = stack("cancelled");
    let d = queue(&b, &st, Operation::Update, 3600, false).await;
    assert_eq!(
        b.deployments.cancel_deployment(&st, d.id).await.unwrap(),
        CancelOutcome::Dequeued
    );
    assert_eq!(status(&b, &st, d.id).await, JobStatus::Skipped);
    let err = decide(&b, &st, d.id, "bob", Decision::Approve)
        .await
        .unwrap_err();
    assert!(matches!(err, tarmac::Error::Conflict(_)), "{err}");

    // Superseded: with skipIntermediateDeployments, a newer update skips the waiting one,
    // and waits for approval in its turn.
    let st = stack("superseded");
    let old = queue(&b, &st, Operation::Update, 3600, true).await;
    let new = queue(&b, &st, Operation::Update, 3600, true).await;
    assert!(matches!(
        claim(&b, &st, new.id, &l).await,
        ClaimOutcome::AwaitingApproval
    ));
    assert_eq!(status(&b, &st, old.id).await, JobStatus::Skipped);
    assert!(
        log_text(&b, old.id)
            .await
            .contains("a newer update deployment is queued")
    );
    assert!(
        b.deployments
            .get_deployment(&st, new.id)
            .await
            .unwrap()
            .unwrap()
            .awaiting_approval()
    );
    // Or a decision on the superseded one finds it so: it is skipped, and the decision refused.
    let st = stack("superseded-decided");
    let old = queue(&b, &st, Operation::Update, 3600, true).await;
    let new = queue(&b, &st, Operation::Update, 3600, true).await;
    let err = decide(&b, &st, old.id, "bob", Decision::Approve)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("supersedes this one"), "{err}");
    assert_eq!(status(&b, &st, old.id).await, JobStatus::Skipped);
    let approved = decide(&b, &st, new.id, "bob", Decision::Approve)
        .await
        .unwrap();
    assert_eq!(approved.approval.unwrap().approved_by.len(), 1);
}
