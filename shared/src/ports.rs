//! The ports: what the API and the workers need from storage, as narrow object-safe traits.
//!
//! Each has an embedded adapter (SQLite) and an AWS one (DynamoDB, SQS, S3, KMS, STS); one
//! contract suite runs against both. No SDK or storage type crosses a port: every one is in
//! the domain's terms.
//! Contracts on absent items and lost races are written on each method.

use async_trait::async_trait;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::approvals::Ballot;
use crate::domain::bulk::BulkOperation;
use crate::domain::gitsync::{DueSync, SyncState};
use crate::domain::hooks::{Hook, HookScope};
use crate::domain::keys::SigningKey;
use crate::domain::pools::{AgentInfo, AgentPool, ClaimQueue, PoolDeleted};
use crate::domain::schedule::Schedule;
use crate::domain::stacks::{StackInfo, Tags};
use crate::domain::updates::{UpdateKind, UpdateOutcome};
use crate::domain::*;
use crate::error::Result;

/// Settings as stored, with the write counter that the API reports as `version`.
#[derive(Debug, Clone)]
pub struct VersionedSettings {
    pub settings: Value,
    pub version: i64,
}

/// This machine's run cache, as far as the API reaches it: a stack's dependency cache can be
/// emptied (`DELETE S/deployments/cache`).
pub trait StackCache: Send + Sync {
    /// Empties the stack's dependency cache; `false` if a run is using it (nothing removed).
    fn clear_stack(&self, stack: &StackRef) -> std::io::Result<bool>;
}

/// Stacks, their settings, pause flags and recorded outputs.
#[async_trait]
pub trait StackStore: Send + Sync {
    /// Creates a stack. `Error::Conflict` if it exists.
    async fn create_stack(&self, stack: &StackRef) -> Result<()>;

    /// Whether the stack exists.
    async fn stack_exists(&self, stack: &StackRef) -> Result<bool>;

    /// Deletes the stack with its settings, deployments and logs. `Error::NotFound` if absent;
    /// `Error::Conflict` if a deployment is accepted or running (cancel it first).
    async fn delete_stack(&self, stack: &StackRef) -> Result<()>;

    /// `None` if the stack or its settings do not exist.
    async fn get_settings(&self, stack: &StackRef) -> Result<Option<VersionedSettings>>;

    /// Stores `settings` if the current settings version is `expected` (0: none stored yet),
    /// creating the stack if needed, and returns the new version. A lost race returns
    /// `Error::Conflict`; the caller re-reads and retries.
    ///
    /// In the same write, the stack's git sync follows `gitSync.enabled`: turned on, its first
    /// check is due now (a sync already on keeps its state and next check); turned off, its
    /// state is forgotten.
    async fn put_settings(&self, stack: &StackRef, settings: &Value, expected: i64) -> Result<i64>;

    /// Removes the settings if they are still at version `expected` (as the caller read them;
    /// 0 for none): a concurrent change makes this `Error::Conflict`, and the caller re-reads.
    /// Returns whether there were any. `Error::NotFound` if no stack. The git sync goes with
    /// them.
    async fn delete_settings(&self, stack: &StackRef, expected: i64) -> Result<bool>;

    /// Stacks whose git sync is on and due at `now`, earliest first, at most `limit`, each
    /// with its settings. The cost follows what is due, not what is stored.
    async fn due_syncs(&self, now: OffsetDateTime, limit: usize) -> Result<Vec<DueSync>>;

    /// Records a sync check's outcome and when the next is due, only if the sync is still on
    /// and its next check is still `expected` (as `due_syncs` read it): of two ticks racing
    /// over one check, one records. Returns whether this call did.
    async fn record_sync(
        &self,
        stack: &StackRef,
        expected: OffsetDateTime,
        state: &SyncState,
        next: OffsetDateTime,
    ) -> Result<bool>;

    /// A stack's sync state and its next check; `None` if its sync is off.
    async fn get_sync(&self, stack: &StackRef) -> Result<Option<(SyncState, OffsetDateTime)>>;

    /// Sets the stack's pause flag. `Error::NotFound` if the stack does not exist.
    async fn set_stack_paused(&self, stack: &StackRef, paused: bool) -> Result<()>;

    /// `None` if the stack does not exist; `Some(false)`/`Some(true)` otherwise.
    async fn stack_paused(&self, stack: &StackRef) -> Result<Option<bool>>;

    /// The outputs recorded by the last successful run that records them; `None` if no stack.
    async fn get_outputs(&self, stack: &StackRef) -> Result<Option<Value>>;

    /// Every stack of `org` that has settings, with them.
    async fn list_stack_settings(&self, org: &str) -> Result<Vec<(StackRef, Value)>>;

    /// The stack, its tags and what its updates left. `None` if it does not exist.
    async fn get_stack(&self, stack: &StackRef) -> Result<Option<StackInfo>>;

    /// Every stack of `org`, ordered by project then name.
    async fn list_stacks(&self, org: &str) -> Result<Vec<StackInfo>>;

    /// Replaces the stack's tags with `tags` if they are still `expected` (as the caller read
    /// them): a concurrent change makes this `Error::Conflict`, and the caller re-reads.
    /// `Error::NotFound` if the stack does not exist.
    async fn replace_tags(&self, stack: &StackRef, tags: &Tags, expected: &Tags) -> Result<()>;
}

/// Orgs' pause flags and deployment counts. Orgs exist implicitly, through their tokens.
#[async_trait]
pub trait OrgStore: Send + Sync {
    async fn set_org_paused(&self, org: &str, paused: bool) -> Result<()>;
    /// Whether the org is paused (false for an org never paused). One read.
    async fn org_paused(&self, org: &str) -> Result<bool>;
    /// The org's concurrency limit, and how many deployments it runs now.
    async fn org_limit(&self, org: &str) -> Result<OrgLimit>;
    /// Sets (or with `None`, removes) the org's concurrency limit. Claims beyond it wait;
    /// runs already going are not stopped.
    async fn set_org_limit(&self, org: &str, max_concurrent: Option<u32>) -> Result<()>;
    /// Pause flags and deployment counts; reads every deployment's status in the org.
    async fn org_state(&self, org: &str) -> Result<OrgState>;
    /// An integration's stored configuration (`kind`: `github`), secrets sealed.
    async fn get_integration(&self, org: &str, kind: &str) -> Result<Option<Value>>;
    /// Stores (or with `None`, removes) an integration's configuration.
    async fn put_integration(&self, org: &str, kind: &str, config: Option<&Value>) -> Result<()>;
}

/// Why a second redemption of a bootstrap secret is refused.
pub const BOOTSTRAP_USED: &str = "this bootstrap secret has already been used; deploy with --new-bootstrap-secret for another one";

/// API tokens. Only hashes are stored.
#[async_trait]
pub trait TokenStore: Send + Sync {
    async fn create_token(&self, hash: &str, org: &str, role: Role, name: &str) -> Result<()>;
    /// Creates an admin token for `org` in exchange for a bootstrap secret (by its hash), at
    /// most once per secret: `Error::Conflict` if the secret was redeemed before. The token and
    /// the redemption are one write.
    async fn redeem_bootstrap(
        &self,
        secret_hash: &str,
        hash: &str,
        org: &str,
        name: &str,
    ) -> Result<()>;
    /// `None` if no token has this hash.
    async fn find_token(&self, hash: &str) -> Result<Option<Principal>>;
    /// The org's tokens, oldest first.
    async fn list_tokens(&self, org: &str) -> Result<Vec<TokenInfo>>;
    /// Revokes the org's token with this id (`token_id`); from then on it authenticates
    /// nothing. `Error::NotFound` if the org has no such token.
    async fn delete_token(&self, org: &str, id: &str) -> Result<()>;
    async fn token_count(&self) -> Result<u64>;
}

/// One change made through the API, as its org's audit log records it. No request body is
/// kept, so no secret is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: Uuid,
    pub org: String,
    pub timestamp: OffsetDateTime,
    /// The token's public id and name (never the token).
    pub token_id: String,
    pub token_name: String,
    pub admin: bool,
    pub method: String,
    /// The route (`/api/stacks/{org}/{project}/{stack}/deployments`) and the path requested.
    pub route: String,
    pub path: String,
    pub status: u16,
    pub source_ip: String,
    pub user_agent: String,
}

/// An org's audit log: appended to, never changed.
#[async_trait]
pub trait AuditLog: Send + Sync {
    async fn append(&self, event: &AuditEvent) -> Result<()>;
    /// The org's events from `since` to before `until`, newest first, at most `limit`, after
    /// the cursor a previous page returned; the next page's cursor if there may be more.
    async fn events(
        &self,
        org: &str,
        since: OffsetDateTime,
        until: OffsetDateTime,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<AuditEvent>, Option<String>)>;
}

/// Bulk requests, kept as they were answered, for their progress and cancellation.
#[async_trait]
pub trait BulkStore: Send + Sync {
    /// Stores a bulk request; `Error::Conflict` if its id is taken.
    async fn put_bulk(&self, op: &BulkOperation) -> Result<()>;
    /// `None` if the org has no bulk request with this id.
    async fn get_bulk(&self, org: &str, id: Uuid) -> Result<Option<BulkOperation>>;
}

/// A response kept for an `Idempotency-Key`, to answer a retry with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// Where a request under an idempotency key stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotentStart {
    /// This request holds the key now: run it, then `keep` its response or `release` the key.
    Run,
    /// The key's request ended with this response: answer it again.
    Replay(KeptResponse),
    /// The key was used for a different request.
    Mismatch,
    /// The key's request is still running.
    InProgress,
}

/// Idempotency keys, per org: each with its request's fingerprint and, once it ended, its
/// response. Both stores expire them.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Takes `key` for a request with `fingerprint`, held for `hold` from `now`, unless it is
    /// taken: a kept response is `Replay` (same fingerprint) or `Mismatch`; a running request
    /// `InProgress` (or `Mismatch`) until its hold runs out. Of two racing starts, one runs.
    async fn start(
        &self,
        org: &str,
        key: &str,
        fingerprint: &str,
        now: OffsetDateTime,
        hold: std::time::Duration,
    ) -> Result<IdempotentStart>;
    /// Keeps the response of the request that holds `key` until `expires`. Does nothing if the
    /// key is no longer that request's.
    async fn keep(
        &self,
        org: &str,
        key: &str,
        fingerprint: &str,
        response: &KeptResponse,
        expires: OffsetDateTime,
    ) -> Result<()>;
    /// Frees `key` if that request still holds it and kept nothing: its retry runs again.
    async fn release(&self, org: &str, key: &str, fingerprint: &str) -> Result<()>;
}

/// Agent pools and their agents. A pool's token is stored only as a hash.
#[async_trait]
pub trait AgentPoolStore: Send + Sync {
    async fn create_pool(&self, pool: &AgentPool, token_hash: &str) -> Result<()>;
    /// `None` if the org has no pool with this id.
    async fn get_pool(&self, org: &str, id: &str) -> Result<Option<AgentPool>>;
    /// The org's pools, oldest first.
    async fn list_pools(&self, org: &str) -> Result<Vec<AgentPool>>;
    /// Renames or redescribes a pool. `Error::NotFound` if absent.
    async fn update_pool(&self, pool: &AgentPool) -> Result<()>;
    /// Deletes a pool with its token and agents. A pool with queued or running deployments is
    /// `Error::Conflict` unless `force`; with `force` the queued ones are failed (with
    /// `POOL_DELETED_REASON` in their log) and the running ones asked to stop, in the same
    /// write. `Error::NotFound` if absent.
    async fn delete_pool(&self, org: &str, id: &str, force: bool) -> Result<PoolDeleted>;
    /// The pool a token belongs to; `None` for any other token.
    async fn find_pool_by_token(&self, token_hash: &str) -> Result<Option<AgentPool>>;
    /// Records that an agent of `pool` was heard from.
    async fn touch_agent(&self, pool: &AgentPool, agent: &AgentInfo) -> Result<()>;
    /// Records that a known agent of `pool` was heard from at `at` (its run's heartbeat); an
    /// unknown agent is left alone.
    async fn agent_seen(&self, pool: &AgentPool, agent_id: &str, at: OffsetDateTime) -> Result<()>;
    /// The pool's agents, most recently seen first.
    async fn list_agents(&self, pool: &AgentPool) -> Result<Vec<AgentInfo>>;
}

/// Deployments as the API sees them.
#[async_trait]
pub trait DeploymentStore: Send + Sync {
    /// Creates the stack if needed, assigns the next per-stack version atomically, and stores
    /// the deployment as `not-started`. In the embedded backend this one transaction is also
    /// the enqueue.
    /// `Error::Conflict` if a deployment with `new.id` exists (so a fixed id makes a retried
    /// create harmless).
    async fn create_deployment(&self, new: NewDeployment) -> Result<Deployment>;

    /// `None` if the stack has no deployment with this id.
    async fn get_deployment(&self, stack: &StackRef, id: Uuid) -> Result<Option<Deployment>>;

    /// `None` if the stack has no deployment with this version.
    async fn get_deployment_by_version(
        &self,
        stack: &StackRef,
        version: i64,
    ) -> Result<Option<Deployment>>;

    /// A stack's deployments, newest first unless `page.ascending`. Empty if no stack.
    async fn list_stack_deployments(
        &self,
        stack: &StackRef,
        page: PageRequest,
    ) -> Result<Page<Deployment>>;

    /// Every deployment in an org, newest first unless `page.ascending`.
    async fn list_org_deployments(&self, org: &str, page: PageRequest) -> Result<Page<Deployment>>;

    /// Cancels a deployment: a queued one becomes `skipped`, a running one is flagged for its
    /// worker. `Error::NotFound` if the stack has no such deployment.
    async fn cancel_deployment(&self, stack: &StackRef, id: Uuid) -> Result<CancelOutcome>;

    /// The stack's deployments that made an update, newest update first. Empty if no stack.
    async fn list_updates(&self, stack: &StackRef, page: PageRequest) -> Result<Page<Deployment>>;

    /// The deployment whose update has this version; `None` if there is none.
    async fn update_by_version(&self, stack: &StackRef, version: i64)
    -> Result<Option<Deployment>>;

    /// Records an approver's decision on a queued deployment, atomically: the stored
    /// approval's `Approval::decide` makes the next one (or refuses), and the write is
    /// conditional on nothing having changed since the read. Approved, the deployment may be
    /// claimed; rejected, it is `skipped` with the reason in its log. Returns the deployment as
    /// written. `Error::NotFound` for no such deployment; `Error::Conflict` if it is not queued
    /// or has no approval to decide.
    async fn decide_approval(
        &self,
        stack: &StackRef,
        id: Uuid,
        ballot: &Ballot,
    ) -> Result<Deployment>;
}

/// A deployment a worker holds, with what it needs to run it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub deployment: Deployment,
}

/// The result of claiming one deployment by id (the queue-driven path).
#[derive(Debug, Clone)]
pub enum ClaimOutcome {
    /// Now `accepted` under the lease, holding the stack's run slot.
    Claimed(Box<Claimed>),
    /// Not `not-started` any more (claimed, run or cancelled): nothing to do.
    Gone,
    /// Another deployment of the stack holds the slot or is queued ahead: try again later.
    Busy,
    /// The stack or its org is paused: it stays queued, and resuming sends it again.
    Paused,
    /// `skipIntermediateDeployments` made it redundant; it is now `skipped`.
    Skipped,
    /// It, or the deployment queued ahead of it, waits for approval: deciding it sends the
    /// stack's queue again.
    AwaitingApproval,
}

/// What a worker learns when it renews its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub cancel_requested: bool,
}

/// The worker's side: claiming, leases, steps, logs and terminal states.
///
/// Every method that takes a `Lease` is conditional on the deployment still being held under
/// it; if the lease was lost (expired and reaped, or taken by another worker) it returns
/// `Error::Conflict` and changes nothing.
#[async_trait]
pub trait RunStore: Send + Sync {
    /// Claims the oldest deployment that may start: `not-started`, first in its stack's queue,
    /// its stack and org not paused, and no other deployment of its stack accepted or running.
    /// Queued deployments that `skipIntermediateDeployments` makes redundant are marked
    /// `skipped` on the way. The claim moves the deployment to `accepted` under `lease` and takes
    /// the stack's run slot. `None` if nothing may start.
    /// Only deployments of `queue` are taken: a pool's agents and the built-in workers never
    /// take each other's.
    async fn claim_next(&self, lease: &Lease, queue: ClaimQueue<'_>) -> Result<Option<Claimed>>;

    /// Claims one deployment, with the same rules as `claim_next`. The queue-driven backends
    /// call this for each message; the outcome says what to do with the message.
    async fn claim(&self, stack: &StackRef, id: Uuid, lease: &Lease) -> Result<ClaimOutcome>;

    /// `accepted` → `running`.
    async fn mark_running(&self, id: Uuid, lease: &Lease) -> Result<()>;

    /// The deployment `id` of `stack` if it is `running` under an unexpired lease held by
    /// `owner`; `None` otherwise. Reads only: this is how a caller proves it runs a deployment.
    async fn held_deployment(
        &self,
        stack: &StackRef,
        id: Uuid,
        owner: &str,
    ) -> Result<Option<Deployment>>;

    /// Extends the lease by its ttl, and reports whether a cancel was requested.
    async fn heartbeat(&self, id: Uuid, lease: &Lease) -> Result<Heartbeat>;

    /// Starts the deployment's update (its engine operation): takes the stack's next update
    /// version, records the update as in progress, and returns the version. At most one per
    /// deployment: a second call is `Error::Conflict`.
    async fn start_update(&self, id: Uuid, lease: &Lease, kind: UpdateKind) -> Result<i64>;

    /// Ends the deployment's update. A successful one records its resource count as the
    /// stack's. `Error::NotFound` if the update was never started.
    async fn finish_update(&self, id: Uuid, lease: &Lease, outcome: &UpdateOutcome) -> Result<()>;

    /// Starts a new step (status `running`) and returns its index.
    async fn start_step(&self, id: Uuid, lease: &Lease, name: &str) -> Result<usize>;

    /// Sets a step's terminal status.
    async fn finish_step(
        &self,
        id: Uuid,
        lease: &Lease,
        step: usize,
        status: StepStatus,
    ) -> Result<()>;

    /// Appends log lines. Lines of one call keep their order.
    async fn append_logs(&self, id: Uuid, lease: &Lease, lines: &[LogLine]) -> Result<()>;

    /// Records the stack's outputs (`Value::Null` clears them).
    async fn record_outputs(&self, id: Uuid, lease: &Lease, outputs: &Value) -> Result<()>;

    /// Moves the deployment to a terminal status, releases the stack's slot and ends the lease.
    async fn finish(&self, id: Uuid, lease: &Lease, status: JobStatus) -> Result<()>;

    /// Queued deployments created before `cutoff`, oldest first: what a reconciler re-sends
    /// when a queue message may have been lost.
    async fn queued_before(&self, cutoff: OffsetDateTime) -> Result<Vec<QueueMessage>>;

    /// Where a queued deployment stands: how many are queued ahead of it, and what holds it.
    async fn queue_state(&self, d: &Deployment) -> Result<QueueState>;

    /// Fails every deployment whose lease expired before `now` (its worker died), with a log
    /// line saying so, and skips those queued since before `queue_expiry`. Returns what it
    /// changed.
    async fn reap(&self, now: OffsetDateTime, queue_expiry: OffsetDateTime) -> Result<Vec<Reaped>>;
}

/// A deployment the reaper ended: failed (its worker died) or skipped (queued too long).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped {
    pub stack: StackRef,
    pub id: Uuid,
    pub status: JobStatus,
}

/// A deployment handed to the workers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueMessage {
    #[serde(rename = "deploymentId")]
    pub deployment_id: Uuid,
    pub org: String,
    pub project: String,
    pub stack: String,
}

impl QueueMessage {
    pub fn new(stack: &StackRef, deployment_id: Uuid) -> Self {
        Self {
            deployment_id,
            org: stack.org.clone(),
            project: stack.project.clone(),
            stack: stack.stack.clone(),
        }
    }

    pub fn stack_ref(&self) -> Result<StackRef> {
        StackRef::new(&self.org, &self.project, &self.stack)
    }
}

/// Delivery of deployments to workers, for backends whose store is not itself the queue.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Sends a deployment to the workers. `attempt` 0 is the first send; a re-send passes a
    /// different number each time, or a FIFO queue would drop it as a duplicate of the first.
    /// Sending one deployment twice is harmless: claims are conditional, so at most one run
    /// starts.
    async fn send(&self, message: &QueueMessage, attempt: u64) -> Result<()>;
}

/// Which part of a deployment's log to read.
#[derive(Debug, Clone, Copy)]
pub enum LogQuery {
    /// Entries after `after` (a sequence number; 0 for the start), at most `limit`.
    Stream { after: i64, limit: usize },
    /// Lines `offset..offset+count` of one step (header entries excluded).
    Step {
        step: usize,
        offset: usize,
        count: usize,
    },
}

/// Reading logs.
#[async_trait]
pub trait LogStore: Send + Sync {
    /// Entries for the query, in order. Empty if none.
    async fn read_logs(&self, id: Uuid, query: LogQuery) -> Result<Vec<LogEntry>>;
}

/// One entry of a schedule's history: a firing (with the deployment it created) or a slot
/// that was skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEvent {
    pub id: Uuid,
    pub schedule_id: Uuid,
    pub executed: OffsetDateTime,
    /// The deployment the firing created: (id, version).
    pub deployment: Option<(Uuid, i64)>,
    /// Why there is no deployment, or "fired".
    pub note: String,
}

/// One due slot, as a tick plans to fire it.
#[derive(Debug, Clone)]
pub struct PlannedFiring {
    pub stack: StackRef,
    pub schedule_id: Uuid,
    /// The next slot the tick read; the firing happens only if it still is.
    pub expected: OffsetDateTime,
    /// The slot after it (`None`: a one-time schedule is done).
    pub next: Option<OffsetDateTime>,
    pub fired_at: OffsetDateTime,
    /// The slot that fires, as its history records it.
    pub slot: OffsetDateTime,
    /// Missed slots, recorded as skipped.
    pub skipped: Vec<OffsetDateTime>,
    /// The deployment to create, or why none can be (which the history records).
    pub deployment: std::result::Result<NewDeployment, String>,
}

/// What became of a planned firing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireResult {
    /// Another tick fired this slot.
    Lost,
    /// Fired: the deployment created `(id, version)`, or `None` if it was refused.
    Fired(Option<(Uuid, i64)>),
}

/// The history note of a missed slot.
pub const SKIPPED_NOTE: &str =
    "skipped: the slot passed while no scheduler was running; only the latest missed slot fires";

/// Schedules and their history.
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// `Error::NotFound` if the stack does not exist.
    async fn create_schedule(&self, schedule: &Schedule) -> Result<()>;

    /// `None` if the stack has no schedule with this id.
    async fn get_schedule(&self, stack: &StackRef, id: Uuid) -> Result<Option<Schedule>>;

    /// A stack's schedules, oldest first.
    async fn list_schedules(&self, stack: &StackRef) -> Result<Vec<Schedule>>;

    /// Replaces when it fires, what it fires, its next slot and its pause flag, only if its
    /// next slot is still `expected_next` (as the caller read it): a tick that fired the
    /// schedule meanwhile makes this `Error::Conflict`, and the caller re-reads. `Error::NotFound`
    /// if absent.
    async fn update_schedule(
        &self,
        schedule: &Schedule,
        expected_next: Option<OffsetDateTime>,
    ) -> Result<()>;

    /// Deletes a schedule and its history. `Error::NotFound` if absent.
    async fn delete_schedule(&self, stack: &StackRef, id: Uuid) -> Result<()>;

    /// Unpaused schedules whose next slot is at or before `now`, earliest first, at most
    /// `limit`. The cost is in proportion to what is due, not to what is stored.
    async fn due_schedules(&self, now: OffsetDateTime, limit: usize) -> Result<Vec<Schedule>>;

    /// Moves a schedule's next slot from `expected` to `next` and records `fired` as its last
    /// execution, only if its next slot is still `expected` and it is not paused. Returns
    /// whether this call did it: of two ticks racing over one slot, exactly one wins.
    async fn advance_schedule(
        &self,
        stack: &StackRef,
        id: Uuid,
        expected: OffsetDateTime,
        next: Option<OffsetDateTime>,
        fired: OffsetDateTime,
    ) -> Result<bool>;

    async fn add_history(&self, stack: &StackRef, event: &HistoryEvent) -> Result<()>;

    /// Fires planned slots. For each one still due (its next slot still `expected`, not
    /// paused), it advances the slot, creates the deployment and records the history (the
    /// skipped slots, then the firing), all at once; a slot another tick fired is `Lost` and
    /// changes nothing.
    async fn fire(&self, batch: Vec<PlannedFiring>) -> Result<Vec<FireResult>>;

    /// A schedule's history, newest first, at most `limit`.
    async fn history(
        &self,
        stack: &StackRef,
        schedule_id: Uuid,
        limit: usize,
    ) -> Result<Vec<HistoryEvent>>;
}

/// A detect-drift run and, if drift was remediated, the remediation that followed.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftRun {
    pub id: Uuid,
    pub stack: StackRef,
    pub created: OffsetDateTime,
    /// The detect-drift deployment: (id, version).
    pub detect: (Uuid, i64),
    pub drift_detected: bool,
    /// The remediate-drift deployment it started: (id, version).
    pub remediation: Option<(Uuid, i64)>,
}

/// Drift runs.
#[async_trait]
pub trait DriftStore: Send + Sync {
    async fn record_drift_run(&self, run: &DriftRun) -> Result<()>;

    /// Links the remediation a drift run started. `Error::NotFound` if absent.
    async fn link_remediation(
        &self,
        stack: &StackRef,
        run: Uuid,
        remediation: (Uuid, i64),
    ) -> Result<()>;

    /// A stack's drift runs, newest first.
    async fn drift_runs(&self, stack: &StackRef, page: PageRequest) -> Result<Page<DriftRun>>;

    /// `None` if the stack has no drift run with this id.
    async fn drift_run(&self, stack: &StackRef, id: Uuid) -> Result<Option<DriftRun>>;
}

/// The OIDC issuer's signing keys, as one keyring with a write counter (0 before the first write).
/// Rotation is rare, so the whole keyring is rewritten each time.
#[async_trait]
pub trait SigningKeyStore: Send + Sync {
    async fn keyring(&self) -> Result<(Vec<SigningKey>, i64)>;

    /// Replaces the keyring if its counter is still `expected`, returning the new counter;
    /// `Error::Conflict` if another writer got in between.
    async fn put_keyring(&self, keys: &[SigningKey], expected: i64) -> Result<i64>;
}

/// Outbound webhooks, at org or stack scope. Names are unique within a scope.
#[async_trait]
pub trait HookStore: Send + Sync {
    /// `Error::Conflict` if the scope has a hook of that name.
    async fn create_hook(&self, scope: &HookScope, hook: &Hook) -> Result<()>;
    async fn list_hooks(&self, scope: &HookScope) -> Result<Vec<Hook>>;
    async fn get_hook(&self, scope: &HookScope, name: &str) -> Result<Option<Hook>>;
    /// `Error::NotFound` if absent.
    async fn update_hook(&self, scope: &HookScope, hook: &Hook) -> Result<()>;
    /// `Error::NotFound` if absent.
    async fn delete_hook(&self, scope: &HookScope, name: &str) -> Result<()>;
    /// The hooks that hear about `stack`: its own and its org's.
    async fn hooks_for_stack(&self, stack: &StackRef) -> Result<Vec<(HookScope, Hook)>>;
}

/// A notification waiting to be sent (or sent): to a hook (`hook:<scope>/<name>`) or GitHub.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// Also the `Pulumi-Webhook-ID` header: the same on every attempt.
    pub id: String,
    pub org: String,
    pub target: String,
    /// `Pulumi-Webhook-Kind` (`deployment`, `drift_detection`, `ping`, ...) or `github_status`
    /// and `github_comment`.
    pub kind: String,
    /// The filter name (`deployment_succeeded`, ...).
    pub event: String,
    pub body: String,
    pub created: OffsetDateTime,
}

/// One attempt to send an outbox message.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub timestamp: OffsetDateTime,
    pub duration_ms: i64,
    pub request_url: String,
    pub request_headers: String,
    /// 0 when there was no response.
    pub response_code: i64,
    pub response_headers: String,
    pub response_body: String,
}

/// The outbox: notifications written beside the state change that caused them, sent later.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Stores messages: due now, or (`due` false) already done, for a caller that sends them
    /// itself (a ping).
    async fn enqueue(&self, messages: &[OutboxMessage], due: bool) -> Result<()>;
    /// Up to `limit` due messages with their attempts so far, each leased for `lease` so that
    /// one dispatcher sends it at a time (a crashed one's messages come back after the lease).
    async fn claim_due(
        &self,
        now: OffsetDateTime,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<(OutboxMessage, u32)>>;
    /// Records an attempt; the message is due again at `next`, or done if `None`.
    async fn record_attempt(
        &self,
        id: &str,
        attempt: &Attempt,
        next: Option<OffsetDateTime>,
    ) -> Result<()>;
    /// Due again at `next` (or done) without an attempt to record.
    async fn reschedule(&self, id: &str, next: Option<OffsetDateTime>) -> Result<()>;
    /// Done: nothing more to send.
    async fn finish(&self, id: &str) -> Result<()>;
    /// A message and its attempts so far.
    async fn message(&self, id: &str) -> Result<Option<(OutboxMessage, u32)>>;
    /// Forgets messages done before `before`, with their attempts (the delivery log's
    /// retention). Stores that expire items themselves (DynamoDB's TTL) do nothing here.
    async fn prune_done(&self, before: OffsetDateTime) -> Result<usize>;
    /// The attempts for `target`'s messages, newest first, at most `limit`.
    async fn attempts(
        &self,
        target: &str,
        limit: usize,
    ) -> Result<Vec<(OutboxMessage, Attempt, u32)>>;
}

/// Engine state kept off the worker's disk (AWS mode: an S3 prefix per stack). The worker
/// restores a stack's state into its state directory before the engine runs and saves it
/// after. One run per stack at a time means nobody else writes it meanwhile; should a second
/// run ever overlap (a lease lost while its engine still ran), saves are conditional, so the
/// later save fails instead of silently overwriting the other run's state.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Replaces `dir` with the stack's saved state, and describes what it wrote.
    async fn restore(&self, stack: &StackRef, dir: &std::path::Path) -> Result<StateManifest>;
    /// Makes the stored state `dir`'s: uploads the files that differ from `saved` and removes
    /// those gone from `dir`. Each write applies only if the stored file is still the one
    /// `saved` describes (absent, for a new file); otherwise `Error::Conflict`, and no file
    /// another run wrote is overwritten. `saved` is updated as each write lands, so a retry
    /// after a partial save resumes where it stopped. Returns the files written and removed.
    async fn save(
        &self,
        stack: &StackRef,
        dir: &std::path::Path,
        saved: &mut StateManifest,
    ) -> Result<(usize, usize)>;
    /// Removes the stack's state (its history stays, as the store keeps it).
    async fn delete(&self, stack: &StackRef) -> Result<()>;
    /// Where the state lives, for logs (`s3://bucket/org/project/stack/`).
    fn location(&self, stack: &StackRef) -> String;
}

/// The stored state files a run started from: relative path to what was stored.
pub type StateManifest = std::collections::BTreeMap<String, StateFile>;

/// One stored state file: its contents' SHA-256 (hex), to skip unchanged files, and the
/// store's version tag (S3's ETag), to make the next write conditional on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateFile {
    pub sha256: String,
    pub etag: String,
}

/// Signs the OIDC issuer's tokens with a key of its keyring: a generated key sealed under the
/// server's cipher (embedded mode), or a KMS key (AWS mode, where only the `oidc` function may
/// sign). A process that only serves the JWKS holds a signer that refuses.
#[async_trait]
pub trait Signer: Send + Sync {
    /// RS256 (RSASSA-PKCS1-v1_5 over SHA-256) of `message` with `key`'s private half.
    /// `Error::Internal` if this signer cannot use that key (a KMS key given to the local
    /// signer, or a sealed key it cannot open).
    async fn sign(&self, key: &SigningKey, message: &[u8]) -> Result<Vec<u8>>;
}

/// An `AssumeRoleWithWebIdentity` request: a deployment's OIDC token for a role's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRoleRequest {
    pub role_arn: String,
    pub session_name: String,
    pub duration: Option<std::time::Duration>,
    pub policy_arns: Vec<String>,
    pub web_identity_token: String,
}

/// Temporary AWS credentials, for a run's environment.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// What the role gave: credentials, the assumed role's ARN and when they expire (for logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumedRole {
    pub credentials: AwsCredentials,
    pub arn: String,
    pub expiration: String,
}

/// Exchanges a deployment's OIDC token for cloud credentials. Only AWS needs a call (STS);
/// Azure and GCP sign in with the token itself, inside the run.
#[async_trait]
pub trait CloudExchange: Send + Sync {
    /// `Error::Upstream`, with the provider's own message, when the provider refuses.
    async fn assume_role(&self, request: &AssumeRoleRequest) -> Result<AssumedRole>;
}
