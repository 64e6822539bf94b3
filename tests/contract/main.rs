//! The store ports' contract, written once and run against every adapter: SQLite on a temp
//! file, and DynamoDB on the local AWS emulator (each test on a fresh table). Each backend is
//! built by the composition root, `tarmac::app::App::build`, as production builds it. The
//! bodies use the ports only.

// Shared with the other test crates; this one uses part of each.
#[macro_use]
#[allow(dead_code)]
#[path = "../support/require.rs"]
mod require;
#[path = "../support/emulator.rs"]
mod emulator;
#[path = "../support/git_server.rs"]
mod git_server;
#[allow(dead_code)]
#[path = "../support/signing.rs"]
mod signing;

mod approvals;
mod audit;
mod bulk;
mod deployments;
mod gitsync;
mod idempotency;
mod notifications;
mod oidc;
mod pools;
mod queue;
mod runs;
mod schedules;
mod stacks;
mod updates;

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use tarmac::app::{App, Config, EmbeddedConfig};
use tarmac::deps::Deps;
use tarmac::domain::spec::{DeploymentConfig, SourcePolicy};
use tarmac::domain::*;
use tarmac::ports::*;

/// One backend's application, and whatever keeps it alive. It derefs to its ports.
pub(crate) struct Backend {
    app: App,
    /// Old outbox messages expire by the table's TTL, not by `prune_done` (DynamoDB).
    expires_by_ttl: bool,
    _keep: Box<dyn std::any::Any + Send>,
}

impl std::ops::Deref for Backend {
    type Target = Deps;
    fn deref(&self) -> &Deps {
        &self.app.deps
    }
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig {
        public_url: "http://tarmac.test".into(),
        local_repos: tarmac::domain::spec::LocalRepos::Any,
        ..EmbeddedConfig::new(dir.path())
    };
    Backend {
        app: App::build(Config::Embedded(config)).await.unwrap(),
        expires_by_ttl: false,
        _keep: Box::new(dir),
    }
}

/// AWS mode on the emulator, each test with tables, a data key and a queue of its own.
async fn dynamo() -> Backend {
    let res = emulator::resources("60").await;
    let cfg = res.config(&[
        ("TARMAC_PUBLIC_URL", "http://tarmac.test"),
        ("TARMAC_ALLOW_LOCAL_REPOS", "true"),
    ]);
    Backend {
        app: App::build(Config::Aws(Box::new((cfg, res.sdk))))
            .await
            .unwrap(),
        expires_by_ttl: true,
        _keep: Box::new(()),
    }
}

/// Runs each named body against each backend, as `<backend>::<name>`.
macro_rules! contract {
    ($($module:ident :: $name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(#[tokio::test] async fn $name() { super::$module::$name(super::sqlite().await).await })*
        }
        mod dynamodb_backend {
            $(#[tokio::test] async fn $name() {
                require!(Emulator);
                super::$module::$name(super::dynamo().await).await
            })*
        }
    };
}

contract!(
    deployments::concurrent_creates_get_distinct_consecutive_versions,
    runs::claims_run_one_per_stack_in_order_and_stacks_in_parallel,
    runs::paused_stacks_and_orgs_are_not_claimed,
    runs::every_run_write_is_conditional_on_the_lease,
    runs::the_reaper_fails_expired_leases_frees_the_stack_and_skips_stale_queue_items,
    runs::skip_intermediate_keeps_the_newest_of_each_operation,
    deployments::cancel_dequeues_or_flags_and_reports_finished_ones,
    stacks::settings_writes_are_optimistic,
    runs::logs_read_as_a_stream_and_by_step,
    deployments::deleting_a_stack_removes_its_deployments_but_not_while_one_runs,
    stacks::stacks_orgs_and_tokens,
    stacks::a_bootstrap_secret_gives_one_admin_token,
    deployments::lists_page_newest_first,
    runs::racing_claims_start_exactly_one_run,
    schedules::schedules_are_stored_listed_and_due_by_their_next_slot,
    schedules::advancing_a_slot_happens_once,
    schedules::drift_runs_are_recorded_linked_and_paged,
    schedules::deleting_a_stack_removes_its_schedules_and_drift_runs,
    schedules::racing_ticks_fire_each_slot_once,
    schedules::after_downtime_a_schedule_fires_once_and_history_records_the_missed_slots,
    schedules::paused_schedules_do_not_fire_and_resume_at_their_next_future_slot,
    schedules::one_time_and_ttl_schedules_fire_once,
    schedules::schedule_requests_are_validated,
    schedules::a_fired_schedules_deployment_is_announced_as_queued,
    runs::only_the_lease_holder_of_a_running_deployment_is_recognised,
    oidc::the_signing_keyring_is_written_optimistically,
    oidc::tokens_verify_against_the_jwks_across_a_rotation,
    oidc::only_a_running_deployments_worker_gets_its_credentials,
    deployments::a_create_with_a_taken_id_is_a_conflict_and_changes_nothing,
    stacks::integrations_and_an_orgs_stack_settings,
    notifications::hooks_are_scoped_named_once_and_go_with_their_stack,
    notifications::the_outbox_hands_each_due_message_to_one_dispatcher_and_logs_attempts,
    updates::tags_are_replaced_only_as_read_and_go_with_their_stack,
    updates::updates_are_numbered_per_stack_ended_and_listed_newest_first,
    pools::pools_are_stored_by_token_hash_and_scoped_to_their_org,
    pools::a_pools_deployments_are_claimed_only_from_that_pool,
    pools::deleting_a_pool_with_queued_deployments_needs_force,
    idempotency::an_idempotency_key_replays_refuses_and_expires,
    audit::the_audit_log_reads_newest_first_by_org_and_time_in_pages,
    approvals::a_deployment_waiting_for_approval_holds_its_stack_until_approved,
    approvals::rejection_expiry_cancel_and_supersession_end_a_wait,
    bulk::a_bulk_request_is_kept_whole_by_its_org,
    queue::an_org_limit_holds_claims_and_the_queue_state_says_why,
    gitsync::a_sync_is_due_when_enabled_recorded_once_and_forgotten_when_off,
    gitsync::polling_costs_one_lookup_per_repository_and_deploys_each_new_head_once,
    gitsync::a_repository_only_git_can_read_is_followed_through_git_ls_remote,
);

fn stack(name: &str) -> StackRef {
    StackRef::new("org", "proj", name).unwrap()
}

fn new(stack: &StackRef, op: Operation, skip_intermediate: bool) -> NewDeployment {
    new_with(
        stack,
        op,
        json!({"options": {"skipIntermediateDeployments": skip_intermediate}}),
    )
}

/// A deployment with these `operationContext` settings.
fn new_with(stack: &StackRef, op: Operation, operation_context: Value) -> NewDeployment {
    let settings = json!({
        "sourceContext": {"git": {"repoUrl": "https://example.com/r.git"}},
        "operationContext": operation_context,
    });
    NewDeployment {
        id: Uuid::new_v4(),
        stack: stack.clone(),
        operation: op,
        config: DeploymentConfig::parse(settings, SourcePolicy::Stored).unwrap(),
        initiator: "api".into(),
        requested_by: "test".into(),
        approval: None,
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

/// A stack's deployments, newest first (its first 100).
async fn deployments_of(b: &Backend, st: &StackRef) -> Vec<Deployment> {
    b.deployments
        .list_stack_deployments(
            st,
            PageRequest {
                page: 1,
                page_size: 100,
                ascending: false,
            },
        )
        .await
        .unwrap()
        .items
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

/// Calls the real router as a write-role token of `org`.
async fn call(
    b: &Backend,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    use tower::ServiceExt;
    let token = tarmac::crypto::new_token();
    b.tokens
        .create_token(&tarmac::crypto::token_hash(&token), "org", Role::Write, "t")
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
    let resp = tarmac::http::router(b.app.deps.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}
