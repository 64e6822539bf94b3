//! The agent protocol's messages, shared by `tarmac agent` and the API that serves it. Every
//! call carries the pool's token (`Authorization: token tpa_...`); the calls about one run
//! also carry the run's lease (`Tarmac-Lease`), and change nothing unless it still holds.
//!
//! `P` is `/api/agent`, `R` is `P/stacks/{org}/{project}/{stack}/deployments/{id}`:
//!
//! | call | body | answer |
//! |---|---|---|
//! | `POST P/claim` | `ClaimRequest` | 200 `Job`, or 204 after `waitSeconds` with nothing to run |
//! | `POST R/heartbeat` | none | `HeartbeatReply` |
//! | `POST R/steps` | `StepStart` | `{"step": n}` |
//! | `POST R/steps/{n}` | `StepEnd` | 204 |
//! | `POST R/logs` | `Logs` | 204 |
//! | `POST R/update` | `UpdateStart` | `{"version": n}` |
//! | `POST R/update/finish` | `UpdateOutcome` | 204 |
//! | `POST R/outputs` | `{"outputs": [Output]}` | 204 |
//! | `GET R/state` | none | `StateFiles` |
//! | `POST R/state` | `StateSave` | `StateSaved` |
//! | `POST R/credentials` | none | the run's OIDC token and cloud credentials |
//! | `POST R/complete` | `Ended` | 204 |

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::JobStatus;
use crate::domain::updates::UpdateKind;
use crate::ports::StateManifest;
use crate::runner::Opened;

/// The header that carries a run's lease.
pub const LEASE_HEADER: &str = "tarmac-lease";
/// The longest a claim waits for work before answering 204.
pub const MAX_WAIT_SECONDS: u64 = 25;

/// Who an agent is, as the pool's agent list shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentHello {
    /// Random per agent process.
    pub id: String,
    pub version: String,
    pub platform: String,
    pub hostname: String,
    pub pid: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRequest {
    pub agent: AgentHello,
    /// How long to wait for work (at most `MAX_WAIT_SECONDS`).
    #[serde(default)]
    pub wait_seconds: u64,
}

/// A deployment an agent now holds, with what it needs to run it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: uuid::Uuid,
    pub org: String,
    pub project: String,
    pub stack: String,
    pub version: i64,
    pub operation: crate::domain::Operation,
    /// The effective settings, as stored (secrets sealed).
    pub settings: Value,
    /// The run's secrets, opened, or why they could not be (which fails the run).
    pub opened: Option<Opened>,
    pub error: Option<String>,
    /// The lease: send it back on every call about this run.
    pub lease: String,
    /// How long the lease lasts without a heartbeat, in milliseconds.
    pub lease_millis: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatReply {
    pub cancel_requested: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepStart {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepEnd {
    pub status: crate::domain::StepStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Logs {
    pub lines: Vec<Line>,
}

/// One log line or engine event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    pub step: usize,
    /// Unix microseconds.
    pub ts: i64,
    #[serde(default)]
    pub line: String,
    #[serde(default)]
    pub event: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateStart {
    pub kind: UpdateKind,
}

/// One state file, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateFileBody {
    pub path: String,
    /// Base64 (standard, padded).
    pub content: String,
}

/// `GET R/state`: the stack's state files and the manifest that a save must start from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateFiles {
    pub files: Vec<StateFileBody>,
    pub manifest: Manifest,
}

/// `POST R/state`: every file the run's state directory now holds, and the manifest it
/// started from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateSave {
    pub files: Vec<StateFileBody>,
    pub manifest: Manifest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateSaved {
    pub manifest: Manifest,
    pub written: usize,
    pub removed: usize,
}

/// A `StateManifest` on the wire: path to `{sha256, etag}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Manifest(pub std::collections::BTreeMap<String, ManifestEntry>);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub sha256: String,
    pub etag: String,
}

impl From<&StateManifest> for Manifest {
    fn from(m: &StateManifest) -> Self {
        Self(
            m.iter()
                .map(|(k, f)| {
                    (
                        k.clone(),
                        ManifestEntry {
                            sha256: f.sha256.clone(),
                            etag: f.etag.clone(),
                        },
                    )
                })
                .collect(),
        )
    }
}

impl From<Manifest> for StateManifest {
    fn from(m: Manifest) -> Self {
        m.0.into_iter()
            .map(|(k, e)| {
                (
                    k,
                    crate::ports::StateFile {
                        sha256: e.sha256,
                        etag: e.etag,
                    },
                )
            })
            .collect()
    }
}

/// Every state file under `dir` (as `list_state_files` finds them, links never followed), for the
/// wire. Blocking.
pub fn read_state_files(dir: &std::path::Path) -> crate::error::Result<Vec<StateFileBody>> {
    use base64::Engine as _;
    crate::runner::files::list_state_files(dir)?
        .into_iter()
        .map(|rel| {
            let bytes = crate::runner::files::read(&dir.join(&rel))?;
            Ok(StateFileBody {
                path: rel,
                content: base64::engine::general_purpose::STANDARD.encode(bytes),
            })
        })
        .collect()
}

/// Writes state files from the wire under `dir` (which exists), each at a plain relative path.
/// Blocking. `Error::Invalid` names a file whose path or content is not acceptable.
pub fn write_state_files(
    dir: &std::path::Path,
    files: &[StateFileBody],
) -> crate::error::Result<()> {
    use crate::error::Error;
    use base64::Engine as _;
    for f in files {
        let rel = crate::runner::files::relative(&f.path)
            .ok_or_else(|| Error::invalid(format!("'{}' is not a plain relative path", f.path)))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&f.content)
            .map_err(|_| Error::invalid(format!("the content of '{}' is not base64", f.path)))?;
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        crate::crypto::write_private(&path, &bytes)?;
    }
    Ok(())
}

/// Whether a terminal status is one an agent may report.
pub fn reportable(status: JobStatus) -> bool {
    matches!(status, JobStatus::Succeeded | JobStatus::Failed)
}
