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

/// A create-deployment request in the form a schedule stores: checked (operation, settings'
/// shape), canonical, nulls dropped, and every secret sealed, so nothing is kept or shown in
/// plaintext. Whether the merged settings can run is checked when the schedule fires.
pub fn sealed_request(deps: &Deps, org: &str, body: &Value) -> Result<Value> {
    let (operation, inherit, rest) = settings::split_create_request(body)?;
    let operation = required_operation(operation)?;
    let mut request =
        settings::strip_nulls(&settings::canonicalize(&rest, &deps.cipher.for_org(org))?);
    request["operation"] = json!(operation);
    request["inheritSettings"] = json!(inherit);
    Ok(request)
}

fn required_operation(op: Option<String>) -> Result<Operation> {
    op.ok_or_else(|| {
        Error::invalid("operation is required: one of update, preview, refresh, destroy, detect-drift, remediate-drift")
    })?
    .parse()
}

/// Builds the deployment a create-deployment request asks for (reference §5.2), without
/// storing it: the request's settings are merged over `stored` (the stack's settings) unless
/// `inheritSettings` is false, and the result must name a source this server may clone.
pub fn prepare_deployment(
    deps: &Deps,
    stack: &StackRef,
    body: &Value,
    stored: Option<&Value>,
    initiator: &str,
    requested_by: &str,
) -> Result<NewDeployment> {
    let (operation, inherit, rest) = settings::split_create_request(body)?;
    let operation = required_operation(operation)?;
    let request = settings::canonicalize(&rest, &deps.cipher.for_org(&stack.org))?;
    let config = if inherit {
        settings::merge(stored.unwrap_or(&json!({})), &request, Nulls::Ignore)
    } else {
        settings::strip_nulls(&request)
    };
    settings::check_stored(&config)?;
    let spec = RunSpec::from_config(&config)?;
    validate_repo_url(&spec.repo_url, deps.allow_local_repos)?;
    Ok(NewDeployment {
        id: Uuid::new_v4(),
        stack: stack.clone(),
        operation,
        config,
        initiator: initiator.to_string(),
        requested_by: requested_by.to_string(),
        skip_intermediate: spec.skip_intermediate,
    })
}

/// Sends a stored deployment to the queue, where the queue is separate from the store.
pub async fn enqueue(deps: &Deps, stack: &StackRef, id: Uuid) {
    if let Some(queue) = &deps.queue
        && let Err(e) = queue.send(&QueueMessage::new(stack, id), 0).await
    {
        // The deployment is stored; the scheduler's reconciler sends it again.
        tracing::warn!(deployment_id = %id, error = %e.chain(), "could not send to the queue; the reconciler will");
    }
}

/// Queues a deployment from a create-deployment request (see `prepare_deployment`). Nothing
/// is written if the request is refused.
pub async fn create_deployment(
    deps: &Deps,
    stack: &StackRef,
    body: &Value,
    initiator: &str,
    requested_by: &str,
) -> Result<Deployment> {
    let stored = deps.stacks.get_settings(stack).await?.map(|s| s.settings);
    let new = prepare_deployment(deps, stack, body, stored.as_ref(), initiator, requested_by)?;
    store_deployment(deps, new).await
}

/// Stores a prepared deployment, sends it to the queue and announces it (`deployment_queued`).
pub async fn store_deployment(deps: &Deps, new: NewDeployment) -> Result<Deployment> {
    let (operation, stack) = (new.operation, new.stack.clone());
    let initiator = new.initiator.clone();
    let d = deps.deployments.create_deployment(new).await?;
    tracing::info!(deployment_id = %d.id, version = d.version, %operation, %initiator, "deployment queued");
    enqueue(deps, &stack, d.id).await;
    crate::webhooks::events::deployment(deps, &d, "deployment_queued").await;
    Ok(d)
}
