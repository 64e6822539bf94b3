//! Git sync (a Tarmac extension): a stack follows its branch with no webhook. The scheduler
//! polls the branch, and a new head whose changed files match `paths` gets a deployment at
//! exactly that commit (see `crate::gitsync`).
//!
//! The settings say what to follow (`gitSync`); the store keeps, beside them, what the polling
//! has seen (`SyncState`) and when it looks next.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Operation, StackRef};
use crate::error::{Error, Result};

/// The shortest polling interval: one `ls-remote` per repository a minute at most.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);
/// The longest: a day.
pub const MAX_INTERVAL: Duration = Duration::from_secs(86_400);
/// After failures, checks back off up to this far apart (or the interval, if longer).
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// `gitSync`, enabled and valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSync {
    pub interval: Duration,
    /// Globs as in `gitHub.paths` (a leading `!` excludes); empty means every change.
    pub paths: Vec<String>,
    /// `update` or `preview`.
    pub operation: Operation,
}

impl GitSync {
    /// The stack's `gitSync` if it is enabled; an error if it is malformed, whether enabled or
    /// not, so that a stored setting is always one the scheduler can follow.
    pub fn from_settings(settings: &Value) -> Result<Option<Self>> {
        let sync = &settings["gitSync"];
        if sync.is_null() {
            return Ok(None);
        }
        let interval = match sync["interval"].as_i64() {
            None => MIN_INTERVAL,
            Some(s) if s >= MIN_INTERVAL.as_secs() as i64 && s <= MAX_INTERVAL.as_secs() as i64 => {
                Duration::from_secs(s as u64)
            }
            Some(s) => {
                return Err(Error::invalid(format!(
                    "gitSync.interval must be between {} and {} seconds, not {s}",
                    MIN_INTERVAL.as_secs(),
                    MAX_INTERVAL.as_secs()
                )));
            }
        };
        let operation = match sync["operation"].as_str().unwrap_or("update") {
            "update" => Operation::Update,
            "preview" => Operation::Preview,
            other => {
                return Err(Error::invalid(format!(
                    "gitSync.operation '{other}' is not one of update, preview"
                )));
            }
        };
        let paths: Vec<String> = sync["paths"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        for p in &paths {
            globset::Glob::new(p.strip_prefix('!').unwrap_or(p))
                .map_err(|e| Error::invalid(format!("gitSync.paths: '{p}' is not a glob: {e}")))?;
        }
        if sync["enabled"].as_bool() != Some(true) {
            return Ok(None);
        }
        let git = &settings["sourceContext"]["git"];
        let set = |key: &str| git[key].as_str().is_some_and(|v| !v.trim().is_empty());
        if !set("repoUrl") {
            return Err(Error::invalid(
                "gitSync follows a repository: set sourceContext.git.repoUrl",
            ));
        }
        if set("commit") || set("tag") {
            return Err(Error::invalid(
                "gitSync follows a branch: remove sourceContext.git.commit and sourceContext.git.tag",
            ));
        }
        Ok(Some(Self {
            interval,
            paths,
            operation,
        }))
    }

    /// When to look again after the check due at `slot`, made at `now`, that ended in its
    /// `failures`th error in a row (0: it did not fail). Without failures, one interval after
    /// the slot (a late tick does not push the next check later), or after `now` if that
    /// has passed too; after failures, the interval doubled per failure up to `MAX_BACKOFF`.
    pub fn next_check(
        &self,
        slot: OffsetDateTime,
        now: OffsetDateTime,
        failures: u32,
    ) -> OffsetDateTime {
        if failures == 0 {
            let next = slot + self.interval;
            return if next > now {
                next
            } else {
                now + self.interval
            };
        }
        let cap = MAX_BACKOFF.max(self.interval);
        let wait = self
            .interval
            .checked_mul(1 << failures.min(16))
            .unwrap_or(cap)
            .min(cap);
        now + wait
    }
}

/// The deployment a sync made, and the commit it deploys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncAttempt {
    pub commit: String,
    pub deployment: Uuid,
}

/// What the polling of one stack has seen. Stored as JSON beside the stack's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SyncState {
    /// The branch head at the last check that reached the repository.
    pub last_seen_head: Option<String>,
    /// The last commit a sync deployed successfully: the base `paths` are compared against.
    pub last_synced_commit: Option<String>,
    /// The last commit a sync deployed, whatever came of it: it is not deployed again.
    pub last_attempted_commit: Option<String>,
    /// The sync deployment not yet finished, if any; no other starts meanwhile.
    pub pending: Option<SyncAttempt>,
    /// Why the last check or sync deployment failed; cleared by the next success.
    pub last_error: Option<String>,
    /// Checks failed in a row (the backoff).
    pub failures: u32,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_check: Option<OffsetDateTime>,
}

/// A stack whose sync is due: its settings, its state and the next check it was due at.
#[derive(Debug, Clone)]
pub struct DueSync {
    pub stack: StackRef,
    pub settings: Value,
    pub state: SyncState,
    pub next_check: OffsetDateTime,
    /// The stack's own pause flag (its org's is read apart).
    pub paused: bool,
}

/// The id of the deployment a sync makes of `commit` on `stack`: fixed, so that two checks
/// racing over one head make one deployment.
pub fn deployment_id(stack: &StackRef, commit: &str) -> Uuid {
    crate::crypto::derived_uuid(&[
        b"git-sync:",
        stack.to_string().as_bytes(),
        b"@",
        commit.as_bytes(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(sync: Value) -> Value {
        json!({"sourceContext": {"git": {"repoUrl": "https://example.com/r.git", "branch": "main"}}, "gitSync": sync})
    }

    #[test]
    fn a_sync_is_read_with_its_defaults_and_refused_when_malformed() {
        let s = GitSync::from_settings(&settings(json!({"enabled": true})))
            .unwrap()
            .unwrap();
        assert_eq!(s.interval, MIN_INTERVAL);
        assert_eq!(s.operation, Operation::Update);
        assert_eq!(
            GitSync::from_settings(&settings(json!({"enabled": false, "interval": 120}))).unwrap(),
            None
        );
        for (bad, says) in [
            (
                json!({"enabled": true, "interval": 59}),
                "between 60 and 86400",
            ),
            (
                json!({"enabled": false, "interval": 0}),
                "between 60 and 86400",
            ),
            (
                json!({"enabled": true, "operation": "destroy"}),
                "not one of update, preview",
            ),
            (json!({"enabled": true, "paths": ["a/[b"]}), "is not a glob"),
        ] {
            let err = GitSync::from_settings(&settings(bad.clone()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let pinned = json!({"sourceContext": {"git": {"repoUrl": "https://x/r.git", "commit": "abcd"}}, "gitSync": {"enabled": true}});
        assert!(
            GitSync::from_settings(&pinned)
                .unwrap_err()
                .to_string()
                .contains("follows a branch")
        );
        let none = json!({"gitSync": {"enabled": true}});
        assert!(
            GitSync::from_settings(&none)
                .unwrap_err()
                .to_string()
                .contains("repoUrl")
        );
    }

    #[test]
    fn checks_keep_their_slots_and_failures_back_off_up_to_an_hour() {
        let s = GitSync {
            interval: Duration::from_secs(60),
            paths: vec![],
            operation: Operation::Update,
        };
        let t = OffsetDateTime::UNIX_EPOCH;
        let late = t + time::Duration::seconds(5);
        assert_eq!(s.next_check(t, late, 0) - t, time::Duration::seconds(60));
        let very_late = t + time::Duration::seconds(90);
        assert_eq!(
            s.next_check(t, very_late, 0) - very_late,
            time::Duration::seconds(60)
        );
        assert_eq!(s.next_check(t, t, 2) - t, time::Duration::seconds(240));
        assert_eq!(s.next_check(t, t, 40) - t, time::Duration::seconds(3600));
    }
}
