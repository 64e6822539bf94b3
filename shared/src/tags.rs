//! Stack tags: every change validated and written optimistically, and the destroy a `ttl` tag
//! arms after each successful update (shown as the stack's TTL schedule, so no webhook
//! processor is needed for Pulumi's TTL pattern).

use serde_json::json;
use time::OffsetDateTime;

use crate::deps::Deps;
use crate::domain::schedule::{Purpose, Schedule, When};
use crate::domain::stacks::{TTL_TAG, Tags, ttl_minutes, ttl_schedule_id, validate_tags};
use crate::domain::{Operation, StackRef};
use crate::error::{Error, Result};

/// Optimistic writes retry this often before giving up with the conflict.
const RETRIES: usize = 10;

/// Applies `change` to the stack's tags and stores the result if it is valid; retries when
/// another writer got in between. A refused change writes nothing. Returns the new tags.
pub(crate) async fn change(
    deps: &Deps,
    stack: &StackRef,
    change: impl Fn(&Tags) -> Result<Tags>,
) -> Result<Tags> {
    let mut last = None;
    for _ in 0..RETRIES {
        let current = deps
            .stacks
            .get_stack(stack)
            .await?
            .ok_or_else(|| Error::not_found(format!("stack '{stack}' not found")))?
            .tags;
        let tags = change(&current)?;
        validate_tags(&tags)?;
        match deps.stacks.replace_tags(stack, &tags, &current).await {
            Ok(()) => {
                if !tags.contains_key(TTL_TAG) && current.contains_key(TTL_TAG) {
                    disarm(deps, stack).await?;
                }
                return Ok(tags);
            }
            Err(e @ Error::Conflict(_)) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::conflict("the stack's tags keep changing; retry")))
}

/// After a successful update: if the stack has a `ttl` tag, its destroy is due that many
/// minutes from `now` (a later update moves it on). Returns when it is due.
pub(crate) async fn arm(
    deps: &Deps,
    stack: &StackRef,
    now: OffsetDateTime,
) -> Result<Option<OffsetDateTime>> {
    let Some(info) = deps.stacks.get_stack(stack).await? else {
        return Ok(None);
    };
    let Some(ttl) = info.tags.get(TTL_TAG) else {
        return Ok(None);
    };
    let due = now + time::Duration::minutes(ttl_minutes(ttl)?);
    let id = ttl_schedule_id(stack);
    let when = When::Once(due);
    let definition = json!({"request": {
        "operation": Operation::Destroy,
        "inheritSettings": true,
        "operationContext": {"options": {"deleteAfterDestroy": false}},
    }});
    for _ in 0..RETRIES {
        match deps.schedules.get_schedule(stack, id).await? {
            Some(mut s) => {
                let read_next = s.next_execution;
                s.when = when.clone();
                s.next_execution = Some(due);
                s.paused = false;
                s.modified = now;
                match deps.schedules.update_schedule(&s, read_next).await {
                    Ok(()) => return Ok(Some(due)),
                    Err(Error::Conflict(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            None => {
                let s = Schedule {
                    id,
                    stack: stack.clone(),
                    purpose: Purpose::Ttl,
                    when: when.clone(),
                    definition: definition.clone(),
                    next_execution: Some(due),
                    paused: false,
                    created: now,
                    modified: now,
                    last_executed: None,
                };
                match deps.schedules.create_schedule(&s).await {
                    Ok(()) => return Ok(Some(due)),
                    Err(Error::Conflict(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Err(Error::conflict(
        "the stack's TTL schedule keeps changing; retry",
    ))
}

/// The `ttl` tag is gone: so is the destroy it armed.
async fn disarm(deps: &Deps, stack: &StackRef) -> Result<()> {
    match deps
        .schedules
        .delete_schedule(stack, ttl_schedule_id(stack))
        .await
    {
        Ok(()) | Err(Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
