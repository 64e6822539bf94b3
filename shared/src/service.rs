//! Operations that more than one entry point performs: the API, the scheduler's tick and the
//! runner (drift remediation) all create deployments the same way.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::deps::Deps;
use crate::domain::{Deployment, NewDeployment, Operation, StackRef};
use crate::error::{Error, Result};
use crate::ports::QueueMessage;
use crate::runner::git::validate_repo_url;
use crate::settings::{self, Nulls, RunSpec};

/// Checks a create-deployment request without storing anything: the operation, the settings'
/// shape and secrets. (Whether the merged settings can run is checked when it is used.)
pub fn validate_request(deps: &Deps, body: &Value) -> Result<Operation> {
    let (operation, _, rest) = settings::split_create_request(body)?;
    settings::canonicalize(&rest, &deps.cipher)?;
    required_operation(operation)
}

fn required_operation(op: Option<String>) -> Result<Operation> {
    op.ok_or_else(|| {
        Error::invalid("operation is required: one of update, preview, refresh, destroy, detect-drift, remediate-drift")
    })?
    .parse()
}

/// Queues a deployment from a create-deployment request (reference §5.2): the request's
/// settings are merged over the stack's unless `inheritSettings` is false, and the result must
/// name a source this server may clone. Nothing is written if the request is refused.
pub async fn create_deployment(
    deps: &Deps,
    stack: &StackRef,
    body: &Value,
    initiator: &str,
    requested_by: &str,
) -> Result<Deployment> {
    let (operation, inherit, rest) = settings::split_create_request(body)?;
    let operation = required_operation(operation)?;
    let request = settings::canonicalize(&rest, &deps.cipher)?;
    let config = if inherit {
        let stored = deps
            .stacks
            .get_settings(stack)
            .await?
            .map(|s| s.settings)
            .unwrap_or_else(|| json!({}));
        settings::merge(&stored, &request, Nulls::Ignore)
    } else {
        settings::strip_nulls(&request)
    };
    let spec = RunSpec::from_config(&config)?;
    validate_repo_url(&spec.repo_url, deps.allow_local_repos)?;
    let d = deps
        .deployments
        .create_deployment(NewDeployment {
            id: Uuid::new_v4(),
            stack: stack.clone(),
            operation,
            config,
            initiator: initiator.to_string(),
            requested_by: requested_by.to_string(),
            skip_intermediate: spec.skip_intermediate,
        })
        .await?;
    tracing::info!(deployment_id = %d.id, version = d.version, %operation, %initiator, "deployment queued");
    if let Some(queue) = &deps.queue
        && let Err(e) = queue.send(&QueueMessage::new(stack, d.id), 0).await
    {
        // The deployment is stored; the scheduler's reconciler sends it again.
        tracing::warn!(deployment_id = %d.id, error = %e.chain(), "could not send to the queue; the reconciler will");
    }
    Ok(d)
}
