//! Bulk deployments (Tarmac's): `POST /api/orgs/{org}/deployments/bulk` creates a deployment
//! on each of many stacks, through the same creation path as every other deployment, and
//! answers 202 with one result per stack; `GET .../bulk/{id}` reads its progress and
//! `POST .../bulk/{id}/cancel` cancels what has not finished.
//!
//! The body is a create-deployment request (`operation`, `inheritSettings` and settings
//! overrides) plus the stacks: `stacks: ["project/stack", ...]`, or
//! `filter: {project, tag: {name, value}}`, at most 10,000 either way.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use futures_util::stream::{self, StreamExt};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::AppState;
use super::deployments::parse_id;
use super::extract::{JsonBody, OrgCtx, Params, param};
use crate::deps::Deps;
use crate::domain::bulk::{BulkItem, BulkOperation, BulkOutcome, MAX_BULK_ITEMS};
use crate::domain::{CancelOutcome, Deployment, JobStatus, Operation, StackRef};
use crate::error::{Error, Result};

/// Deployments created, or read, at once.
const PARALLEL: usize = 16;

/// The longest `project/stack` name.
const MAX_NAME: usize = 201;

/// Where an API call has a hard time limit (API Gateway's 29 s before a Lambda), the creation
/// stops after this long: the stacks not reached are refused with 503, to be sent again, and
/// the request is still recorded and answered.
const AWS_BUDGET: std::time::Duration = std::time::Duration::from_secs(20);

/// The stacks a bulk request names, in its order: each parsed, or refused with why.
async fn selected(
    state: &AppState,
    org: &str,
    body: &Value,
) -> Result<Vec<(String, Result<StackRef>)>> {
    use crate::json::member;
    match (member(body, "stacks"), member(body, "filter")) {
        (Some(_), Some(_)) => Err(Error::invalid("give either stacks or filter, not both")),
        (None, None) => Err(Error::invalid(
            "stacks (a list of \"project/stack\") or filter ({project, tag: {name, value}}) is required",
        )),
        (Some(Value::Array(list)), None) => {
            if list.is_empty() {
                return Err(Error::invalid("stacks must name at least one stack"));
            }
            if list.len() > MAX_BULK_ITEMS {
                return Err(Error::invalid(format!(
                    "a bulk request may name at most {MAX_BULK_ITEMS} stacks; this one names {}",
                    list.len()
                )));
            }
            // Entries no stack could have are refused whole, before anything is created (and
            // never echoed back at length).
            if let Some(bad) = list
                .iter()
                .find(|v| v.as_str().is_none_or(|n| n.len() > MAX_NAME))
            {
                let shown: String = bad.to_string().chars().take(60).collect();
                return Err(Error::invalid(format!(
                    "stacks must be \"project/stack\" names of at most {MAX_NAME} characters; {shown} is not"
                )));
            }
            let mut seen = HashSet::new();
            Ok(list
                .iter()
                .map(|v| {
                    let name = v.as_str().unwrap_or_default().to_string();
                    let parsed = match name.split_once('/') {
                        Some((project, stack)) => StackRef::new(org, project, stack),
                        None => Err(Error::invalid(format!(
                            "'{name}' is not a stack name: use \"project/stack\""
                        ))),
                    }
                    .and_then(|s| {
                        if seen.insert(s.clone()) {
                            Ok(s)
                        } else {
                            Err(Error::invalid(format!("'{name}' is listed more than once")))
                        }
                    });
                    (name, parsed)
                })
                .collect())
        }
        (Some(_), None) => Err(Error::invalid(
            "stacks must be a list of \"project/stack\" names",
        )),
        (None, Some(filter @ Value::Object(_))) => {
            let project = match member(filter, "project") {
                None => None,
                Some(Value::String(p)) => Some(p.clone()),
                Some(_) => return Err(Error::invalid("filter.project must be a string")),
            };
            let tag = match member(filter, "tag") {
                None => None,
                Some(t) => match (t["name"].as_str(), t["value"].as_str()) {
                    (Some(n), value)
                        if !n.is_empty() && (value.is_some() || t["value"].is_null()) =>
                    {
                        Some((n.to_string(), value.map(str::to_string)))
                    }
                    _ => {
                        return Err(Error::invalid(
                            "filter.tag must be {\"name\": ..., \"value\": ...} (value optional)",
                        ));
                    }
                },
            };
            let mut stacks: Vec<StackRef> = state
                .deps
                .stacks
                .list_stacks(org)
                .await?
                .into_iter()
                .filter(|s| project.as_ref().is_none_or(|p| &s.stack.project == p))
                .filter(|s| {
                    tag.as_ref().is_none_or(|(name, value)| {
                        s.tags
                            .get(name)
                            .is_some_and(|v| value.as_ref().is_none_or(|want| v == want))
                    })
                })
                .map(|s| s.stack)
                .collect();
            if stacks.len() > MAX_BULK_ITEMS {
                return Err(Error::invalid(format!(
                    "the filter selects {} stacks; a bulk request may take at most {MAX_BULK_ITEMS}",
                    stacks.len()
                )));
            }
            stacks.sort_by(|a, b| (&a.project, &a.stack).cmp(&(&b.project, &b.stack)));
            Ok(stacks
                .into_iter()
                .map(|s| (format!("{}/{}", s.project, s.stack), Ok(s)))
                .collect())
        }
        (None, Some(_)) => Err(Error::invalid(
            "filter must be an object: {project, tag: {name, value}}",
        )),
    }
}

fn refused(e: &Error) -> BulkOutcome {
    BulkOutcome::Refused {
        code: e.status().as_u16(),
        message: if e.is_internal() {
            "internal server error".into()
        } else {
            e.to_string()
        },
    }
}

/// `POST /api/orgs/{org}/deployments/bulk`.
#[utoipa::path(
    post,
    path = "/api/orgs/{org}/deployments/bulk",
    tag = "bulk",
    request_body = super::schema::bulk::BulkRequest,
    responses((status = 202, description = "A deployment queued on each stack that could have one; the others refused, each with why", body = super::schema::bulk::BulkCreated)),
    security(("token" = ["write"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn create(
    State(state): State<AppState>,
    ctx: OrgCtx,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>)> {
    let Value::Object(fields) = &body else {
        return Err(Error::invalid("the request body must be a JSON object"));
    };
    // The deployment request every stack gets: checked whole before anything is created.
    let request: Map<String, Value> = fields
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("stacks") && !k.eq_ignore_ascii_case("filter"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let request = Value::Object(request);
    let sealed = crate::service::sealed_request(&state.deps, &ctx.org, &request)?;
    let operation: Operation = sealed["operation"].as_str().unwrap_or_default().parse()?;
    let stacks = selected(&state, &ctx.org, &body).await?;

    let requested_by = ctx.principal.token_name.clone();
    let request = Arc::new(request);
    // The AWS backend answers through API Gateway (the queue is its marker).
    let deadline = state
        .deps
        .queue
        .is_some()
        .then(|| std::time::Instant::now() + AWS_BUDGET);
    let items: Vec<BulkItem> = stream::iter(stacks)
        .map(|(name, parsed)| {
            let (deps, request, requested_by) =
                (state.deps.clone(), request.clone(), requested_by.clone());
            async move {
                let late = deadline.is_some_and(|d| std::time::Instant::now() >= d);
                let outcome = match parsed {
                    Err(e) => refused(&e),
                    Ok(_) if late => BulkOutcome::Refused {
                        code: 503,
                        message:
                            "not attempted: the request ran out of time; send this stack again"
                                .into(),
                    },
                    Ok(stack) => match one(&deps, &stack, &request, &requested_by).await {
                        Ok(d) => BulkOutcome::Created {
                            deployment_id: d.id,
                            version: d.version,
                        },
                        Err(e) => refused(&e),
                    },
                };
                BulkItem {
                    stack: name,
                    outcome,
                }
            }
        })
        .buffered(PARALLEL)
        .collect()
        .await;
    let op = BulkOperation {
        id: Uuid::new_v4(),
        org: ctx.org.clone(),
        operation,
        requested_by,
        created: time::OffsetDateTime::now_utc(),
        items,
    };
    state.deps.bulk.put_bulk(&op).await?;
    let created = op.created().count();
    tracing::info!(bulk_id = %op.id, created, refused = op.items.len() - created, "bulk request");
    let mut out = header(&op);
    out["created"] = json!(created);
    out["refused"] = json!(op.items.len() - created);
    out["items"] = serde_json::to_value(&op.items)?;
    Ok((StatusCode::ACCEPTED, Json(out)))
}

/// One stack's deployment: the stack must exist (a bulk request never creates stacks, so a
/// typo is refused rather than made into a stack).
async fn one(
    deps: &Deps,
    stack: &StackRef,
    request: &Value,
    requested_by: &str,
) -> Result<Deployment> {
    if !deps.stacks.stack_exists(stack).await? {
        return Err(Error::not_found(format!("stack '{stack}' not found")));
    }
    let req = crate::service::CreateRequest::new(stack, request, "bulk", requested_by);
    crate::service::create(deps, &req).await
}

fn header(op: &BulkOperation) -> Value {
    json!({
        "id": op.id,
        "operation": op.operation,
        "requestedBy": op.requested_by,
        "created": crate::domain::time_fmt::rfc3339(op.created),
        "total": op.items.len(),
    })
}

async fn find(state: &AppState, ctx: &OrgCtx, raw: &str) -> Result<BulkOperation> {
    let id = parse_id(raw)?;
    state
        .deps
        .bulk
        .get_bulk(&ctx.org, id)
        .await?
        .ok_or_else(|| Error::not_found(format!("bulk request '{id}' not found")))
}

/// Each created deployment's current status, in the bulk's order (`None`: refused, or since
/// deleted).
async fn statuses(state: &AppState, op: &BulkOperation) -> Result<Vec<Option<JobStatus>>> {
    let created: Vec<Option<(StackRef, Uuid)>> = op
        .items
        .iter()
        .map(|item| match item.outcome {
            BulkOutcome::Created { deployment_id, .. } => {
                stack_of(&op.org, &item.stack).map(|s| (s, deployment_id))
            }
            BulkOutcome::Refused { .. } => None,
        })
        .collect();
    stream::iter(created)
        .map(|target| {
            let deps = state.deps.clone();
            async move {
                let Some((stack, id)) = target else {
                    return Ok(None);
                };
                Ok(deps
                    .deployments
                    .get_deployment(&stack, id)
                    .await?
                    .map(|d| d.status))
            }
        })
        .buffered(PARALLEL * 2)
        .collect::<Vec<Result<_>>>()
        .await
        .into_iter()
        .collect()
}

/// A bulk item's stack, in the bulk's org.
fn stack_of(org: &str, name: &str) -> Option<StackRef> {
    let (project, stack) = name.split_once('/')?;
    StackRef::new(org, project, stack).ok()
}

/// The bulk with each deployment's status, and counts by status (`refused` for stacks that got
/// none).
async fn progress(state: &AppState, op: &BulkOperation) -> Result<Value> {
    let statuses = statuses(state, op).await?;
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut items = Vec::with_capacity(op.items.len());
    for (item, status) in op.items.iter().zip(&statuses) {
        let mut v = serde_json::to_value(item)?;
        let key = match (&item.outcome, status) {
            (BulkOutcome::Refused { .. }, _) => "refused",
            (BulkOutcome::Created { .. }, Some(s)) => {
                v["deploymentStatus"] = json!(s);
                s.as_str()
            }
            (BulkOutcome::Created { .. }, None) => "deleted",
        };
        *counts.entry(key).or_default() += 1;
        items.push(v);
    }
    let done = statuses
        .iter()
        .flatten()
        .filter(|s| s.is_terminal())
        .count()
        + op.items.len()
        - op.created().count();
    let mut out = header(op);
    out["counts"] = json!(counts);
    out["finished"] = json!(done == op.items.len());
    out["items"] = json!(items);
    Ok(out)
}

/// `GET /api/orgs/{org}/deployments/bulk/{id}`.
#[utoipa::path(
    get,
    path = "/api/orgs/{org}/deployments/bulk/{id}",
    tag = "bulk",
    params(("id" = uuid::Uuid, Path, description = "The bulk request's id")),
    responses((status = 200, description = "Its progress: each deployment's status now", body = super::schema::bulk::BulkProgress)),
    security(("token" = ["read"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn get(
    State(state): State<AppState>,
    ctx: OrgCtx,
    Params(p): Params,
) -> Result<Json<Value>> {
    let op = find(&state, &ctx, &param(&p, "id")).await?;
    Ok(Json(progress(&state, &op).await?))
}

/// `POST /api/orgs/{org}/deployments/bulk/{id}/cancel`: queued deployments are skipped,
/// running ones stopped; answers the progress after, with how many of each.
#[utoipa::path(
    post,
    path = "/api/orgs/{org}/deployments/bulk/{id}/cancel",
    tag = "bulk",
    params(("id" = uuid::Uuid, Path, description = "The bulk request's id")),
    responses((status = 200, description = "Queued deployments skipped, running ones asked to stop; its progress after, with how many of each", body = super::schema::bulk::BulkCancelResult)),
    security(("token" = ["write"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn cancel(
    State(state): State<AppState>,
    ctx: OrgCtx,
    Params(p): Params,
) -> Result<Json<Value>> {
    let op = find(&state, &ctx, &param(&p, "id")).await?;
    let targets: Vec<(StackRef, Uuid)> = op
        .created()
        .filter_map(|(name, id)| stack_of(&op.org, name).map(|s| (s, id)))
        .collect();
    let outcomes: Vec<Option<CancelOutcome>> = stream::iter(targets)
        .map(|(stack, id)| {
            let deps = state.deps.clone();
            async move {
                match deps.deployments.cancel_deployment(&stack, id).await {
                    Ok(o) => Some(o),
                    Err(e) => {
                        tracing::warn!(deployment_id = %id, error = %e.chain(), "bulk cancel: could not cancel");
                        None
                    }
                }
            }
        })
        .buffered(PARALLEL)
        .collect()
        .await;
    let count = |want: CancelOutcome| outcomes.iter().filter(|o| **o == Some(want)).count();
    let mut out = progress(&state, &op).await?;
    out["cancelled"] = json!({
        "dequeued": count(CancelOutcome::Dequeued),
        "stopping": count(CancelOutcome::Requested),
        "alreadyFinished": count(CancelOutcome::AlreadyFinished),
    });
    Ok(Json(out))
}
