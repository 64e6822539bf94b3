//! Storage encodings both adapters share: a deployment's steps as stored.

use serde::{Deserialize, Serialize};

use crate::domain::time_fmt::from_micros;
use uuid::Uuid;

use crate::domain::{JobStatus, Step, StepStatus};
use crate::error::{Error, Result};

/// One step as stored (times in microseconds since the epoch).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredStep {
    pub name: String,
    pub status: String,
    pub started: Option<i64>,
    pub updated: Option<i64>,
}

impl StoredStep {
    pub(crate) fn running(name: &str, now: i64) -> Self {
        Self {
            name: name.to_string(),
            status: StepStatus::Running.as_str().into(),
            started: Some(now),
            updated: Some(now),
        }
    }

    pub(crate) fn to_domain(&self) -> Result<Step> {
        Ok(Step {
            name: self.name.clone(),
            status: self.status.parse()?,
            started: self.started.map(from_micros),
            last_updated: self.updated.map(from_micros),
        })
    }
}

/// An id read back from storage; a malformed one is the store's fault, not the caller's.
pub(crate) fn stored_id(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| Error::internal(format!("bad id in store: {e}")))
}

/// The status a deployment's still-running steps take when it ends with `status`.
pub(crate) fn closing_step_status(status: JobStatus) -> StepStatus {
    if status == JobStatus::Succeeded {
        StepStatus::Succeeded
    } else {
        StepStatus::Failed
    }
}

/// Closes every running step with `status`, as a deployment ends.
pub(crate) fn close_running(steps: &mut [StoredStep], status: StepStatus, now: i64) {
    for s in steps
        .iter_mut()
        .filter(|s| s.status == StepStatus::Running.as_str())
    {
        s.status = status.as_str().to_string();
        s.updated = Some(now);
    }
}

pub(crate) fn decode_steps(raw: &str) -> Result<Vec<StoredStep>> {
    Ok(serde_json::from_str(raw)?)
}

pub(crate) fn to_domain_steps(raw: &str) -> Result<Vec<Step>> {
    decode_steps(raw)?
        .iter()
        .map(StoredStep::to_domain)
        .collect()
}
