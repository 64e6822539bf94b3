//! Tarmac's domain: stacks, operations, statuses and deployments, with no storage or HTTP in them.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{Error, Result};

/// A fully qualified stack name. Every part is validated on construction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StackRef {
    pub org: String,
    pub project: String,
    pub stack: String,
}

/// Pulumi's rule for org, project and stack names: 1 to 100 of `[A-Za-z0-9_.-]`. Names made
/// only of dots are refused too: names become paths on disk (engine state), where `..` would
/// reach outside the stack's own directory.
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.bytes().all(|b| b == b'.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid {kind} name '{name}': use 1 to 100 letters, digits, '_', '.' or '-'"
        )))
    }
}

impl StackRef {
    /// `org/project/stack`, as `Display` writes it.
    pub fn parse(path: &str) -> Result<Self> {
        let mut parts = path.splitn(3, '/');
        let mut next = || parts.next().unwrap_or_default();
        Self::new(next(), next(), next())
    }

    /// The stack's own directory under `root` (`root/org/project/stack`): where its engine
    /// state lives on disk. `new` refuses names with `/` or made only of dots, so it stays
    /// under `root`.
    pub fn dir_under(&self, root: &std::path::Path) -> std::path::PathBuf {
        root.join(&self.org).join(&self.project).join(&self.stack)
    }

    pub fn new(org: &str, project: &str, stack: &str) -> Result<Self> {
        validate_name("organization", org)?;
        validate_name("project", project)?;
        validate_name("stack", stack)?;
        Ok(Self {
            org: org.into(),
            project: project.into(),
            stack: stack.into(),
        })
    }
}

impl std::fmt::Display for StackRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.org, self.project, self.stack)
    }
}

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $($(#[$vmeta])* #[serde(rename = $wire)] $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($wire => Ok($name::$variant),)+
                    other => Err(Error::invalid(format!(
                        concat!("unknown ", stringify!($name), " '{}': expected one of {}"),
                        other,
                        [$($wire),+].join(", ")
                    ))),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub mod approvals;
pub mod bulk;
pub mod gitsync;
pub mod hooks;
pub mod keys;
pub mod pools;
pub mod schedule;
pub mod spec;
pub mod stacks;
pub mod updates;

wire_enum!(
    /// Pulumi's `PulumiOperation`.
    Operation {
        Update = "update",
        Preview = "preview",
        Destroy = "destroy",
        Refresh = "refresh",
        DetectDrift = "detect-drift",
        RemediateDrift = "remediate-drift",
    }
);

wire_enum!(
    /// The IaC engines a deployment can run.
    Engine {
        Pulumi = "pulumi",
        Terraform = "terraform",
        Tofu = "tofu",
    }
);

impl Engine {
    /// The command that runs it.
    pub fn binary(self) -> &'static str {
        self.as_str()
    }
}

/// A tool deployments use (an engine, git), as found on their `PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tool {
    pub name: String,
    /// Where it is, if found.
    pub path: Option<std::path::PathBuf>,
    /// The first line of its version output, if it answered.
    pub version: Option<String>,
}

impl Tool {
    pub fn found(&self) -> bool {
        self.path.is_some()
    }
}

wire_enum!(
    /// Pulumi's `JobStatus`, used for deployments and jobs. Never add values: clients reject them.
    JobStatus {
        NotStarted = "not-started",
        Accepted = "accepted",
        Running = "running",
        Failed = "failed",
        Succeeded = "succeeded",
        Skipped = "skipped",
    }
);

wire_enum!(
    /// Pulumi's `StepStatus`.
    StepStatus {
        NotStarted = "not-started",
        Running = "running",
        Failed = "failed",
        Succeeded = "succeeded",
    }
);

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Failed | Self::Succeeded | Self::Skipped)
    }
}

/// An API token's role within its org. Each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(Error::invalid(format!(
                "unknown role '{other}': use admin, write or read"
            ))),
        }
    }
}

/// An API token as its org's admins see it: never the token, nor its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// A public handle: the first 24 hex digits of the token's SHA-256.
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created: OffsetDateTime,
}

/// A name people give a token or an agent pool: 1 to 100 characters, no control characters.
pub fn validate_label(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().count() > 100 {
        return Err(Error::invalid("name is required: 1 to 100 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid("name must not contain control characters"));
    }
    Ok(())
}

/// A token's public id, from its hash.
pub fn token_id(hash: &str) -> String {
    hash.chars().take(24).collect()
}

/// Who a request acts as: the org its token belongs to, and the token's role.
#[derive(Debug, Clone)]
pub struct Principal {
    pub org: String,
    pub role: Role,
    pub token_name: String,
}

/// One step of a deployment's job.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: String,
    pub status: StepStatus,
    pub started: Option<OffsetDateTime>,
    pub last_updated: Option<OffsetDateTime>,
}

/// A deployment as stored. `config` is the effective settings (the request merged over the
/// stack's settings at creation time), with secrets still sealed, and the run spec read from
/// them.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: Uuid,
    pub stack: StackRef,
    pub version: i64,
    /// The stack's highest deployment version when this was read.
    pub latest_version: i64,
    pub operation: Operation,
    pub status: JobStatus,
    pub config: spec::DeploymentConfig,
    pub initiator: String,
    pub requested_by: String,
    pub created: OffsetDateTime,
    pub modified: OffsetDateTime,
    pub started: Option<OffsetDateTime>,
    pub steps: Vec<Step>,
    pub stack_paused: bool,
    /// The update its engine operation made, once that started. Its `updateID` is the
    /// deployment's own id: a deployment runs at most one engine operation.
    pub update: Option<updates::UpdateInfo>,
    /// Set when the stack's settings gate its operation: it waits while this is pending.
    pub approval: Option<approvals::Approval>,
}

impl Deployment {
    /// Queued, and waiting for approval before it may start.
    pub fn awaiting_approval(&self) -> bool {
        self.status == JobStatus::NotStarted
            && self.approval.as_ref().is_some_and(|a| a.is_pending())
    }

    /// Its approval as it stands now: one still pending on a deployment that has ended
    /// (cancelled, or skipped by a newer one) was withdrawn.
    pub fn approval_now(&self) -> Option<approvals::Approval> {
        let mut a = self.approval.clone()?;
        if a.is_pending() && self.status != JobStatus::NotStarted {
            a.status = approvals::ApprovalStatus::Withdrawn;
        }
        Some(a)
    }
}

/// What the API hands the store to create a deployment.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub id: Uuid,
    pub stack: StackRef,
    pub operation: Operation,
    pub config: spec::DeploymentConfig,
    pub initiator: String,
    pub requested_by: String,
    /// The approval it must wait for, if its stack gates its operation.
    pub approval: Option<approvals::Approval>,
}

impl NewDeployment {
    /// Whether a newer queued deployment of the same operation makes this one redundant.
    pub fn skip_intermediate(&self) -> bool {
        self.config.spec().skip_intermediate
    }
}

/// A worker's hold on a deployment. Every run-side write is conditional on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub ttl: std::time::Duration,
}

/// A page request, as the list endpoints take it.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    /// 1-based.
    pub page: u32,
    /// 1 to 100.
    pub page_size: u32,
    pub ascending: bool,
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
}

/// One line of a deployment's log, as a worker produces it.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub step: usize,
    pub timestamp: OffsetDateTime,
    pub line: String,
    /// An engine event of the deployment's update (`line` is then empty): stored in the same
    /// ordered stream, served apart (`GET S/update/{id}/events`).
    pub event: Option<serde_json::Value>,
}

/// A stored log entry. `header` entries mark the start of a step in the streaming view.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub seq: i64,
    pub step: usize,
    pub timestamp: OffsetDateTime,
    pub header: Option<String>,
    pub line: Option<String>,
    pub event: Option<serde_json::Value>,
}

/// Counts of deployments per status.
#[derive(Debug, Clone, Default)]
pub struct StatusCounts(pub std::collections::HashMap<JobStatus, u64>);

/// An org's deployment-wide flags.
#[derive(Debug, Clone, Default)]
pub struct OrgState {
    pub paused: bool,
    pub paused_stacks: Vec<String>,
    pub counts: StatusCounts,
}

wire_enum!(
    /// Why a queued deployment has not started (Tarmac's `queue.waitingFor`), first reason first.
    WaitingFor {
        Approval = "approval",
        Paused = "paused",
        Stack = "stack",
        OrgLimit = "org-limit",
        Worker = "worker",
    }
);

/// What the store knows of a queued deployment's place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueState {
    /// Its org's deployments in its queue (the workers', or its agent pool's) queued before
    /// it, not counting those waiting for approval. Other orgs' are not counted: one tenant
    /// learns nothing of another's queue.
    pub ahead: u64,
    /// Its stack has a run in progress, or an older deployment queued.
    pub stack_busy: bool,
    /// Its stack or its org is paused.
    pub paused: bool,
    /// Its org runs as many deployments as its limit allows.
    pub org_at_limit: bool,
}

impl QueueState {
    pub fn waiting_for(&self, d: &Deployment) -> WaitingFor {
        if d.awaiting_approval() {
            WaitingFor::Approval
        } else if self.paused {
            WaitingFor::Paused
        } else if self.stack_busy {
            WaitingFor::Stack
        } else if self.org_at_limit {
            WaitingFor::OrgLimit
        } else {
            WaitingFor::Worker
        }
    }
}

/// An org's concurrency limit and what it runs now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrgLimit {
    /// The most deployments the org may run at once; `None`: no limit.
    pub max_concurrent: Option<u32>,
    /// Deployments claimed and not finished. In AWS mode, those claimed while the limit was
    /// set: they are the ones the limit counts.
    pub running: u64,
}

/// The highest `maxConcurrent` an org may be given.
pub const MAX_ORG_CONCURRENCY: i64 = 10_000;

/// The outcome of a cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued, and is now `skipped`.
    Dequeued,
    /// It is running; its worker will stop it and mark it `failed`.
    Requested,
    /// It had already finished; nothing changed.
    AlreadyFinished,
}

pub mod time_fmt {
    //! The two timestamp formats on the wire.
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    /// RFC 3339 UTC with exactly 6 fractional digits (Python 3.10's `fromisoformat` takes 3 or 6).
    pub fn rfc3339(t: OffsetDateTime) -> String {
        let t = t.to_offset(time::UtcOffset::UTC);
        let micros = t.microsecond();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            micros
        )
    }

    /// Go's zero time, which Pulumi uses for steps that have not started.
    pub const ZERO: &str = "0001-01-01T00:00:00Z";

    pub fn rfc3339_or_zero(t: Option<OffsetDateTime>) -> String {
        t.map(rfc3339).unwrap_or_else(|| ZERO.to_string())
    }

    /// Pulumi's `created`/`modified` form: `YYYY-MM-DD hh:mm:ss.fff`, UTC.
    pub fn pulumi_datetime(t: OffsetDateTime) -> String {
        let t = t.to_offset(time::UtcOffset::UTC);
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    }

    pub fn from_micros(us: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    pub fn to_micros(t: OffsetDateTime) -> i64 {
        (t.unix_timestamp_nanos() / 1000) as i64
    }

    pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(s, &Rfc3339).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(StackRef::new("acme", "web-app", "dev_1.x").is_ok());
        assert!(StackRef::new("acme", ".hidden", "..dev").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "...",
            "a b",
            "p/q",
            "dev?x",
            &"x".repeat(101),
        ] {
            assert!(
                StackRef::new("acme", bad, "dev").is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn enums_round_trip_their_wire_values() {
        for op in Operation::ALL {
            assert_eq!(op.as_str().parse::<Operation>().unwrap(), *op);
        }
        assert_eq!(
            serde_json::to_string(&JobStatus::NotStarted).unwrap(),
            "\"not-started\""
        );
        let err = "cancelled".parse::<JobStatus>().unwrap_err().to_string();
        assert!(err.contains("unknown JobStatus 'cancelled'"), "{err}");
    }

    #[test]
    fn timestamps_have_at_most_six_fraction_digits() {
        let t = time::macros::datetime!(2026-11-22 10:11:12.123456789 UTC);
        assert_eq!(time_fmt::rfc3339(t), "2026-11-22T10:11:12.123456Z");
        assert_eq!(time_fmt::pulumi_datetime(t), "2026-11-22 10:11:12.123");
        assert_eq!(
            time_fmt::from_micros(time_fmt::to_micros(t)).microsecond(),
            123456
        );
    }
}
