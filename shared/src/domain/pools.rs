//! Agent pools: where a stack's deployments run when its settings name one (`agentPoolID`),
//! served by `tarmac agent` processes that hold the pool's token, instead of the built-in
//! workers.

use time::OffsetDateTime;

use crate::error::{Error, Result};

/// A pool as stored. Its token is kept only as a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPool {
    pub id: String,
    pub org: String,
    pub name: String,
    pub description: String,
    pub created: OffsetDateTime,
}

/// An agent of a pool, as it last reported itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// The agent's own id (random per process), unique within its pool.
    pub id: String,
    pub version: String,
    pub platform: String,
    pub hostname: String,
    pub ip: String,
    pub pid: String,
    pub last_seen: OffsetDateTime,
}

/// An agent not heard from for this long is `offline`: an idle agent long-polls about every
/// 20 seconds, so three missed polls.
pub const AGENT_ONLINE_WINDOW: time::Duration = time::Duration::seconds(60);

impl AgentInfo {
    pub fn status(&self, now: OffsetDateTime) -> &'static str {
        if now - self.last_seen <= AGENT_ONLINE_WINDOW {
            "online"
        } else {
            "offline"
        }
    }
}

/// The longest pool description.
pub const MAX_POOL_DESCRIPTION: usize = 1000;

/// A pool's description: at most 1000 characters.
pub fn validate_pool_description(description: &str) -> Result<()> {
    if description.chars().count() > MAX_POOL_DESCRIPTION {
        return Err(Error::invalid(format!(
            "description must be at most {MAX_POOL_DESCRIPTION} characters"
        )));
    }
    Ok(())
}

/// A pool id as the API takes it: a UUID (anything else names no pool).
pub fn parse_pool_id(id: &str) -> Option<String> {
    uuid::Uuid::parse_str(id).ok().map(|u| u.to_string())
}

/// Which deployments a claim may take: those no pool serves (the built-in workers), or one
/// pool's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimQueue<'a> {
    BuiltIn,
    Pool(&'a str),
}

impl ClaimQueue<'_> {
    pub fn pool(self) -> Option<String> {
        match self {
            ClaimQueue::BuiltIn => None,
            ClaimQueue::Pool(id) => Some(id.to_string()),
        }
    }
}

/// What deleting a pool did with its queued deployments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolDeleted {
    /// Queued deployments failed with the reason in their log.
    pub failed: Vec<(super::StackRef, uuid::Uuid)>,
    /// Running deployments asked to stop (their agents can no longer report).
    pub cancelled: usize,
}

/// The log line of a queued deployment failed by a forced delete.
pub const POOL_DELETED_REASON: &str =
    "Failed: its agent pool was deleted (force) before an agent took this deployment.";
