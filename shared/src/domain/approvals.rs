//! Approval gates. A stack's settings may name operations that need approval
//! (`approvals: {operations, required, approvers, expiresAfter}`); a deployment of one of them
//! waits, `not-started`, until `required` approvers have approved it. One rejection skips it,
//! and so does its deadline passing. Previews and drift detection change nothing and never wait.
//!
//! An approver is an API token: Tarmac has no users. The rule names approvers by role (`admin`,
//! `write`: that role or above) or by token name; the token that asked for the deployment can
//! never approve it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::{JobStatus, Operation, Role};
use crate::error::{Error, Result};

/// The most approvals a rule may require.
pub const MAX_REQUIRED: i64 = 10;
/// The longest an approval may wait: 30 days.
pub const MAX_EXPIRES_AFTER_SECS: i64 = 30 * 86_400;
/// Without `expiresAfter`, an approval waits a day.
pub const DEFAULT_EXPIRES_AFTER_SECS: i64 = 86_400;
/// The longest comment an approver may leave.
pub const MAX_COMMENT_CHARS: usize = 1000;

/// A stack's approval rule, read from its settings' `approvals`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRule {
    pub operations: Vec<Operation>,
    pub required: u32,
    /// Roles (`admin`, `write`) or token names; empty means any token that may write.
    pub approvers: Vec<String>,
    pub expires_after_secs: i64,
}

impl ApprovalRule {
    /// The rule in canonical settings, if they have one that gates any operation. Refuses an
    /// unknown or never-gated operation, a count outside 1 to 10, a deadline outside a second
    /// to 30 days, and an empty approver name.
    pub fn from_settings(settings: &Value) -> Result<Option<Self>> {
        let raw = &settings["approvals"];
        if raw.is_null() {
            return Ok(None);
        }
        let mut operations = Vec::new();
        for op in raw["operations"].as_array().into_iter().flatten() {
            let name = op.as_str().unwrap_or_default();
            let op: Operation = name.parse().map_err(|_| {
                Error::invalid(format!(
                    "approvals.operations: '{name}' is not an operation that can need approval: use update, destroy, refresh or remediate-drift"
                ))
            })?;
            if matches!(op, Operation::Preview | Operation::DetectDrift) {
                return Err(Error::invalid(format!(
                    "approvals.operations: {op} changes nothing and never needs approval"
                )));
            }
            if !operations.contains(&op) {
                operations.push(op);
            }
        }
        let required = raw["required"].as_i64().unwrap_or(1);
        if !(1..=MAX_REQUIRED).contains(&required) {
            return Err(Error::invalid(format!(
                "approvals.required must be between 1 and {MAX_REQUIRED}, not {required}"
            )));
        }
        let expires_after_secs = raw["expiresAfter"]
            .as_i64()
            .unwrap_or(DEFAULT_EXPIRES_AFTER_SECS);
        if !(1..=MAX_EXPIRES_AFTER_SECS).contains(&expires_after_secs) {
            return Err(Error::invalid(format!(
                "approvals.expiresAfter must be between 1 and {MAX_EXPIRES_AFTER_SECS} seconds, not {expires_after_secs}"
            )));
        }
        let approvers: Vec<String> = raw["approvers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        if approvers.iter().any(|a| a.trim().is_empty()) {
            return Err(Error::invalid(
                "approvals.approvers: names must not be empty",
            ));
        }
        // Each token votes once: named tokens alone must be enough to approve.
        let roles = approvers.iter().any(|a| a == "admin" || a == "write");
        if !approvers.is_empty() && !roles && (approvers.len() as i64) < required {
            return Err(Error::invalid(format!(
                "approvals.required is {required} but approvals.approvers names only {} token(s), each of which votes once",
                approvers.len()
            )));
        }
        if operations.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            operations,
            required: required as u32,
            approvers,
            expires_after_secs,
        }))
    }

    pub fn gates(&self, op: Operation) -> bool {
        self.operations.contains(&op)
    }
}

wire_enum!(
    /// Where an approval stands.
    ApprovalStatus {
        Pending = "pending",
        Approved = "approved",
        Rejected = "rejected",
        Expired = "expired",
        /// Never decided: its deployment ended first (cancelled, or skipped by a newer one).
        /// Only ever reported, not stored: see `Deployment::approval_now`.
        Withdrawn = "withdrawn",
    }
);

/// One approver's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// The token's name.
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Who decides: a token of the deployment's org.
#[derive(Debug, Clone)]
pub struct Voter {
    pub token_name: String,
    pub role: Role,
}

impl Voter {
    /// Whether this token is one of `approvers` (roles, or token names; none: any token that
    /// may write). Reading tokens never are.
    pub fn is_among(&self, approvers: &[String]) -> bool {
        if self.role < Role::Write {
            return false;
        }
        approvers.is_empty()
            || approvers.iter().any(|a| match a.as_str() {
                "admin" => self.role >= Role::Admin,
                "write" => self.role >= Role::Write,
                name => name == self.token_name,
            })
    }
}

/// A deployment's approval, as stored with it. The rule it was made under is kept in it, so a
/// later change of the stack's settings does not change what this deployment needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub status: ApprovalStatus,
    pub required: u32,
    pub approvers: Vec<String>,
    pub approved_by: Vec<Vote>,
    pub rejected_by: Option<Vote>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// What an approver decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
}

/// One approver's decision on one deployment, as the store applies it.
#[derive(Debug, Clone)]
pub struct Ballot {
    pub voter: Voter,
    pub decision: Decision,
    pub comment: Option<String>,
    pub at: OffsetDateTime,
}

impl Approval {
    /// The approval a new deployment of `operation` needs under `rule`, if any.
    pub fn needed(
        rule: Option<&ApprovalRule>,
        operation: Operation,
        now: OffsetDateTime,
    ) -> Option<Self> {
        let rule = rule.filter(|r| r.gates(operation))?;
        Some(Self {
            status: ApprovalStatus::Pending,
            required: rule.required,
            approvers: rule.approvers.clone(),
            approved_by: vec![],
            rejected_by: None,
            expires_at: now + time::Duration::seconds(rule.expires_after_secs),
        })
    }

    pub fn is_pending(&self) -> bool {
        self.status == ApprovalStatus::Pending
    }

    /// This approval after `voter`'s decision at `now`, on a deployment `requested_by` asked
    /// for. Refused (403) for the deployment's own requester and for tokens the rule does not
    /// name; refused (409) once it is decided or expired, and for a second vote of one token.
    pub fn decide(&self, ballot: &Ballot, requested_by: &str) -> Result<Self> {
        let Ballot {
            voter,
            decision,
            comment,
            at: now,
        } = ballot;
        let now = *now;
        if !self.is_pending() {
            return Err(Error::conflict(format!(
                "this deployment's approval is already {}",
                self.status
            )));
        }
        if now >= self.expires_at {
            return Err(Error::conflict("this deployment's approval has expired"));
        }
        if voter.token_name == requested_by {
            return Err(Error::Forbidden(
                "the token that asked for a deployment cannot approve or reject it".into(),
            ));
        }
        if !voter.is_among(&self.approvers) {
            return Err(Error::Forbidden(format!(
                "token '{}' is not one of this stack's approvers ({})",
                voter.token_name,
                if self.approvers.is_empty() {
                    "tokens with the write or admin role".to_string()
                } else {
                    self.approvers.join(", ")
                }
            )));
        }
        if self.approved_by.iter().any(|v| v.name == voter.token_name) {
            return Err(Error::conflict(format!(
                "token '{}' has already approved this deployment",
                voter.token_name
            )));
        }
        let vote = Vote {
            name: voter.token_name.clone(),
            at: now,
            comment: comment.clone(),
        };
        let mut next = self.clone();
        match decision {
            Decision::Reject => {
                next.rejected_by = Some(vote);
                next.status = ApprovalStatus::Rejected;
            }
            Decision::Approve => {
                next.approved_by.push(vote);
                if next.approved_by.len() as u32 >= next.required {
                    next.status = ApprovalStatus::Approved;
                }
            }
        }
        Ok(next)
    }

    /// The next approval of a stored deployment (`status`, asked for by `requested_by`) after
    /// `ballot`: 409 if it has none to decide, or is no longer queued.
    pub fn decide_stored(
        current: Option<&Self>,
        status: JobStatus,
        requested_by: &str,
        ballot: &Ballot,
    ) -> Result<Self> {
        let current =
            current.ok_or_else(|| Error::conflict("this deployment needs no approval"))?;
        if status != JobStatus::NotStarted && current.is_pending() {
            return Err(Error::conflict(format!(
                "this deployment is {status}: there is nothing to approve"
            )));
        }
        current.decide(ballot, requested_by)
    }

    /// The line a deployment's log gets when its approval ends it.
    pub fn ending_line(&self) -> String {
        match (&self.status, &self.rejected_by) {
            (ApprovalStatus::Rejected, Some(v)) => format!(
                "Skipped: rejected by '{}'{}.\n",
                v.name,
                v.comment
                    .as_deref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default()
            ),
            _ => format!(
                "Skipped: its approval expired at {} with {} of {} approvals given.\n",
                super::time_fmt::rfc3339(self.expires_at),
                self.approved_by.len(),
                self.required
            ),
        }
    }

    /// The same approval, expired.
    pub fn expired(&self) -> Self {
        Self {
            status: ApprovalStatus::Expired,
            ..self.clone()
        }
    }
}

/// Why a decision on a deployment that a newer one of its `operation` supersedes (with
/// `skipIntermediateDeployments`) is refused: it was skipped instead.
pub fn superseded(operation: &str) -> Error {
    Error::conflict(format!(
        "a newer {operation} deployment is queued and supersedes this one (skipIntermediateDeployments): it was skipped; decide on the newer one"
    ))
}

/// An approver's comment: at most 1000 characters, no control characters but newlines.
pub fn validate_comment(comment: &str) -> Result<()> {
    if comment.chars().count() > MAX_COMMENT_CHARS {
        return Err(Error::invalid(format!(
            "comment must be at most {MAX_COMMENT_CHARS} characters"
        )));
    }
    if comment.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Error::invalid(
            "comment must not contain control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(v: Value) -> Result<Option<ApprovalRule>> {
        ApprovalRule::from_settings(&json!({ "approvals": v }))
    }

    fn voter(name: &str, role: Role) -> Voter {
        Voter {
            token_name: name.into(),
            role,
        }
    }

    fn ballot(
        name: &str,
        role: Role,
        decision: Decision,
        comment: Option<&str>,
        at: OffsetDateTime,
    ) -> Ballot {
        Ballot {
            voter: voter(name, role),
            decision,
            comment: comment.map(str::to_string),
            at,
        }
    }

    #[test]
    fn rules_are_checked() {
        let r = rule(json!({"operations": ["update", "destroy"], "required": 2, "approvers": ["admin", "release-bot"], "expiresAfter": 3600}))
            .unwrap()
            .unwrap();
        assert!(r.gates(Operation::Update) && !r.gates(Operation::Refresh));
        assert_eq!((r.required, r.expires_after_secs), (2, 3600));
        assert!(rule(json!({"operations": []})).unwrap().is_none());
        for (bad, want) in [
            (json!({"operations": ["deploy"]}), "not an operation"),
            (json!({"operations": ["preview"]}), "never needs approval"),
            (
                json!({"operations": ["update"], "required": 0}),
                "between 1 and 10",
            ),
            (
                json!({"operations": ["update"], "required": -1}),
                "between 1 and 10",
            ),
            (
                json!({"operations": ["update"], "expiresAfter": 0}),
                "expiresAfter",
            ),
            (
                json!({"operations": ["update"], "approvers": [" "]}),
                "must not be empty",
            ),
        ] {
            let err = rule(bad.clone()).unwrap_err().to_string();
            assert!(err.contains(want), "{bad}: {err}");
        }
    }

    #[test]
    fn approvers_are_roles_or_token_names() {
        let r = rule(json!({"operations": ["update"], "approvers": ["admin", "release-bot"]}))
            .unwrap()
            .unwrap();
        assert!(voter("alice", Role::Admin).is_among(&r.approvers));
        assert!(voter("release-bot", Role::Write).is_among(&r.approvers));
        assert!(!voter("bob", Role::Write).is_among(&r.approvers));
        assert!(!voter("release-bot", Role::Read).is_among(&r.approvers));
        let anyone = rule(json!({"operations": ["update"]})).unwrap().unwrap();
        assert!(voter("bob", Role::Write).is_among(&anyone.approvers));
        assert!(!voter("reader", Role::Read).is_among(&anyone.approvers));
    }

    #[test]
    fn decisions_follow_the_rule() {
        use Decision::*;
        let now = OffsetDateTime::now_utc();
        let r = rule(json!({"operations": ["update"], "required": 2, "expiresAfter": 60}))
            .unwrap()
            .unwrap();
        assert!(Approval::needed(Some(&r), Operation::Preview, now).is_none());
        let a = Approval::needed(Some(&r), Operation::Update, now).unwrap();
        let err = a
            .decide(&ballot("alice", Role::Write, Approve, None, now), "alice")
            .unwrap_err();
        assert!(matches!(err, Error::Forbidden(_)), "{err}");
        let once = a
            .decide(
                &ballot("alice", Role::Write, Approve, Some("ok"), now),
                "ci",
            )
            .unwrap();
        assert!(once.is_pending());
        let err = once
            .decide(&ballot("alice", Role::Write, Approve, None, now), "ci")
            .unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err}");
        let twice = once
            .decide(&ballot("bob", Role::Admin, Approve, None, now), "ci")
            .unwrap();
        assert_eq!(twice.status, ApprovalStatus::Approved);
        let err = twice
            .decide(&ballot("carol", Role::Admin, Reject, None, now), "ci")
            .unwrap_err();
        assert!(err.to_string().contains("already approved"), "{err}");
        let rejected = once
            .decide(
                &ballot("bob", Role::Admin, Reject, Some("not today"), now),
                "ci",
            )
            .unwrap();
        assert_eq!(rejected.status, ApprovalStatus::Rejected);
        assert_eq!(
            rejected.ending_line(),
            "Skipped: rejected by 'bob': not today.\n"
        );
        let late = now + time::Duration::seconds(61);
        let err = a
            .decide(&ballot("alice", Role::Write, Approve, None, late), "ci")
            .unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        let line = a.expired().ending_line();
        assert!(line.contains("with 0 of 2 approvals given"), "{line}");
    }
}
