//! The `RunStore` port: claims, leases, steps, logs and terminal states.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::stacks::stack_of;
use super::*;
use crate::aws::item::*;
use crate::domain::pools::ClaimQueue;
use crate::domain::time_fmt::to_micros;
use crate::domain::updates::{UpdateInfo, UpdateKind, UpdateOutcome, UpdateResult};
use crate::domain::*;
use crate::error::{Error, Result};
use crate::ports::*;
use crate::store_codec::{StoredStep, close_running, closing_step_status, decode_steps, stored_id};

/// The mutable part of a deployment that run-side writes change, read before and written back
/// under a condition on `log_seq`, so concurrent writers cannot interleave.
pub(super) struct RunState {
    steps: Vec<StoredStep>,
    log_seq: i64,
    lines: Vec<Value>,
    /// Each step's line count, so lines are numbered within their step.
    step_lines: HashMap<usize, i64>,
}

impl RunState {
    pub(super) fn log(&mut self, step: usize, ts: i64, header: Option<&str>, line: Option<&str>) {
        self.log_seq += 1;
        let n = if header.is_some() {
            Value::Null
        } else {
            let c = self.step_lines.entry(step).or_insert(0);
            *c += 1;
            Value::from(*c - 1)
        };
        self.lines.push(serde_json::json!({"seq": self.log_seq, "step": step, "n": n, "ts": ts, "header": header, "line": line}));
    }

    /// An engine event, in the log's order; not numbered as a line of its step.
    fn event(&mut self, step: usize, ts: i64, event: &Value) {
        self.log_seq += 1;
        self.lines.push(serde_json::json!({"seq": self.log_seq, "step": step, "n": null, "ts": ts, "event": event}));
    }
}

/// Clauses a run-side write adds to the deployment's update, beyond steps and logs.
#[derive(Default)]
pub(super) struct Extra<'a> {
    pub(super) set: &'a str,
    pub(super) remove: &'a str,
    /// A further condition on the deployment item, beside the guard's.
    pub(super) cond: &'a str,
    pub(super) vals: Vec<(&'a str, AttributeValue)>,
}

/// Who may make a run-side write.
#[derive(Clone, Copy)]
pub(super) enum Guard<'a> {
    /// The lease holder, while the deployment is in one of these statuses.
    Lease(&'a Lease, &'static [JobStatus]),
    /// Anyone, while the deployment is in one of these statuses (cancel).
    Status(&'static [JobStatus]),
    /// The reaper: while the deployment is in one of these statuses and its lease expired
    /// before this time (µs). A heartbeat that renews the lease meanwhile wins.
    Expired(&'static [JobStatus], i64),
}

impl DynamoStore {
    /// Applies `f` to a deployment's run state and writes it back with the extra `set` clauses,
    /// retrying if another writer got in between. `f` returns a value for the caller.
    pub(super) async fn write_run<T>(
        &self,
        id: Uuid,
        guard: Guard<'_>,
        extra: Extra<'_>,
        also: impl Fn(&mut Tx, &Item),
        f: impl Fn(&mut RunState, &Item) -> Result<T>,
    ) -> Result<T> {
        let (spk, version) = self.locate_or_conflict(id).await?;
        let dkey = key(&spk, dep_sk(version));
        for _ in 0..RETRIES {
            let item = self
                .get(dkey.clone())
                .await?
                .ok_or_else(|| Error::conflict(format!("deployment {id} is gone")))?;
            let status: JobStatus = get_s(&item, "status")?.parse()?;
            let allowed = match guard {
                Guard::Lease(l, statuses) => {
                    statuses.contains(&status)
                        && opt_s(&item, "lease_owner").as_deref() == Some(l.owner.as_str())
                }
                Guard::Status(statuses) => statuses.contains(&status),
                Guard::Expired(statuses, before) => {
                    statuses.contains(&status)
                        && opt_n(&item, "lease_expires").is_some_and(|e| e < before)
                }
            };
            if !allowed {
                return Err(Error::conflict(format!(
                    "deployment {id} is no longer held by this worker"
                )));
            }
            let steps = decode_steps(&get_s(&item, "steps")?)?;
            let step_lines: HashMap<usize, i64> =
                serde_json::from_str(&opt_s(&item, "step_lines").unwrap_or_else(|| "{}".into()))?;
            let old_seq = get_n(&item, "log_seq")?;
            let mut st = RunState {
                steps,
                log_seq: old_seq,
                lines: vec![],
                step_lines,
            };
            let out = f(&mut st, &item)?;

            let mut tx = self.tx();
            let now = now_us();
            let mut set = String::from(
                "SET #steps = :steps, #step_lines = :step_lines, #log_seq = :new_seq, #modified = :now",
            );
            if !extra.set.is_empty() {
                set.push_str(", ");
                set.push_str(extra.set);
            }
            if !extra.remove.is_empty() {
                set.push_str(" REMOVE ");
                set.push_str(extra.remove);
            }
            let mut vals = vec![
                (":steps", s(serde_json::to_string(&st.steps)?)),
                (":step_lines", s(serde_json::to_string(&st.step_lines)?)),
                (":new_seq", n(st.log_seq)),
                (":old_seq", n(old_seq)),
                (":now", n(now)),
                (":status", s(status.as_str())),
            ];
            vals.extend(extra.vals.iter().cloned());
            let mut cond = match guard {
                Guard::Expired(_, before) => {
                    vals.push((":expired_before", n(before)));
                    "#log_seq = :old_seq AND #status = :status AND #lease_expires < :expired_before"
                }
                _ => "#log_seq = :old_seq AND #status = :status",
            }
            .to_string();
            if !extra.cond.is_empty() {
                cond.push_str(" AND ");
                cond.push_str(extra.cond);
            }
            tx.update(dkey.clone(), &set, Some(&cond), vals);
            also(&mut tx, &item);
            Self::put_log_chunks(&mut tx, id, &st.lines)?;
            match self.commit(tx).await? {
                Ok(()) => return Ok(out),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            }
        }
        Err(Error::conflict(format!(
            "deployment {id} is being changed concurrently"
        )))
    }

    pub(super) fn put_log_chunks(tx: &mut Tx, id: Uuid, lines: &[Value]) -> Result<()> {
        let expires = OffsetDateTime::now_utc().unix_timestamp() + LOG_TTL.as_secs() as i64;
        let mut chunk: Vec<&Value> = Vec::new();
        let mut size = 0;
        let flush = |chunk: &mut Vec<&Value>, tx: &mut Tx| -> Result<()> {
            if let Some(last) = chunk.last() {
                let last_seq = last["seq"].as_i64().unwrap_or_default();
                let mut item = key(log_pk(id), pad(last_seq));
                item.insert("lines".into(), s(serde_json::to_string(chunk)?));
                item.insert("expires".into(), n(expires));
                tx.put(item, None, vec![]);
                chunk.clear();
            }
            Ok(())
        };
        for l in lines {
            let len = l.to_string().len();
            if size + len > CHUNK_BYTES && !chunk.is_empty() {
                flush(&mut chunk, tx)?;
                size = 0;
            }
            size += len;
            chunk.push(l);
        }
        flush(&mut chunk, tx)
    }

    /// Ends a deployment under `guard`: status, running steps closed, lease and slot released,
    /// and an optional last log line.
    pub(super) async fn end(
        &self,
        id: Uuid,
        guard: Guard<'_>,
        status: JobStatus,
        message: Option<&str>,
    ) -> Result<()> {
        let step_status = closing_step_status(status);
        self.write_run(
            id,
            guard,
            Extra {
                set: "#status = :final",
                remove: "#lease_owner, #lease_expires, #gsi1pk, #gsi1sk, #awaiting",
                vals: vec![(":final", s(status.as_str()))],
                ..Extra::default()
            },
            |tx, item| {
                // Only a claimed deployment holds the stack's slot.
                let held = matches!(
                    opt_s(item, "status").as_deref(),
                    Some("accepted" | "running")
                );
                if held {
                    let spk = get_s(item, "pk").unwrap_or_default();
                    tx.update(
                        key(spk, STACK_SK),
                        "REMOVE #active",
                        Some("#active = :id"),
                        vec![(":id", s(id.to_string()))],
                    );
                    // Counted in at its claim, counted out now. No condition: a count that
                    // drifted must never keep a run from ending.
                    if get_b(item, "counted") {
                        let org = get_s(item, "org").unwrap_or_default();
                        tx.update(
                            org_key(&org),
                            "ADD #running :minus_one",
                            None,
                            vec![(":minus_one", n(-1))],
                        );
                    }
                }
            },
            |st, _| {
                let now = now_us();
                close_running(&mut st.steps, step_status, now);
                if let Some(m) = message {
                    st.log(0, now, None, Some(m));
                }
                Ok(())
            },
        )
        .await
    }
}

/// Whether an org item shows the org running as many deployments as its limit allows.
fn at_limit(org: &Item) -> bool {
    match (opt_n(org, "max_concurrent"), opt_n(org, "running")) {
        (Some(max), Some(running)) => running >= max,
        _ => false,
    }
}

#[async_trait]
impl RunStore for DynamoStore {
    async fn held_deployment(
        &self,
        stack: &StackRef,
        id: Uuid,
        owner: &str,
    ) -> Result<Option<Deployment>> {
        let spk = match self.locate(id).await? {
            Some((spk, version)) if spk == stack_pk(stack) => (spk, version),
            _ => return Ok(None),
        };
        let Some(d) = self.get(key(&spk.0, dep_sk(spk.1))).await? else {
            return Ok(None);
        };
        let held = opt_s(&d, "status").as_deref() == Some(JobStatus::Running.as_str())
            && opt_s(&d, "lease_owner").as_deref() == Some(owner)
            && opt_n(&d, "lease_expires").is_some_and(|e| e > now_us());
        if !held {
            return Ok(None);
        }
        let Some(stack_item) = self.get(key(&spk.0, STACK_SK)).await? else {
            return Ok(None);
        };
        Self::to_deployment(&d, &stack_item).map(Some)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn claim(&self, stack: &StackRef, id: Uuid, lease: &Lease) -> Result<ClaimOutcome> {
        let spk = stack_pk(stack);
        let Some(d) = self.get_deployment(stack, id).await? else {
            return Ok(ClaimOutcome::Gone);
        };
        if d.status != JobStatus::NotStarted {
            return Ok(ClaimOutcome::Gone);
        }
        let st = self
            .stack_item(stack)
            .await?
            .ok_or(Error::conflict("stack vanished"))?;
        let org = self.get(org_key(&stack.org)).await?;
        let org_paused = org.as_ref().is_some_and(|o| get_b(o, "paused"));
        if get_b(&st, "paused") || org_paused {
            return Ok(ClaimOutcome::Paused);
        }
        if org.as_ref().is_some_and(at_limit) {
            return Ok(ClaimOutcome::Busy);
        }
        // Queued ahead of it, or the slot taken: the stack's order must hold.
        let queued = self.queued_of_stack(&spk).await?;
        // A head waiting for approval holds the stack's queue, unless a newer deployment of
        // its operation supersedes it.
        if let Some(head) = queued.first().filter(|h| get_b(h, "awaiting")) {
            let op = opt_s(head, "operation");
            let superseded = get_b(head, "skip_intermediate")
                && queued.iter().skip(1).any(|i| opt_s(i, "operation") == op);
            if !superseded {
                return Ok(ClaimOutcome::AwaitingApproval);
            }
            if opt_n(head, "version") != Some(d.version) {
                let head_id = stored_id(&get_s(head, "id")?)?;
                let msg = format!(
                    "Skipped: a newer {} deployment is queued (skipIntermediateDeployments).\n",
                    op.unwrap_or_default()
                );
                match self
                    .end(
                        head_id,
                        Guard::Status(&[JobStatus::NotStarted]),
                        JobStatus::Skipped,
                        Some(&msg),
                    )
                    .await
                {
                    Ok(()) | Err(Error::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
                return Box::pin(self.claim(stack, id, lease)).await;
            }
        }
        let first = queued.first().and_then(|i| opt_n(i, "version"));
        if opt_s(&st, "active").is_some() || first != Some(d.version) {
            return Ok(ClaimOutcome::Busy);
        }
        let skip_intermediate = queued
            .first()
            .is_some_and(|i| get_b(i, "skip_intermediate"));
        let superseded = queued
            .iter()
            .skip(1)
            .any(|i| opt_s(i, "operation").as_deref() == Some(d.operation.as_str()));
        if skip_intermediate && superseded {
            let msg = format!(
                "Skipped: a newer {} deployment is queued (skipIntermediateDeployments).\n",
                d.operation
            );
            return match self
                .end(
                    id,
                    Guard::Status(&[JobStatus::NotStarted]),
                    JobStatus::Skipped,
                    Some(&msg),
                )
                .await
            {
                Ok(()) => Ok(ClaimOutcome::Skipped),
                Err(Error::Conflict(_)) => Ok(ClaimOutcome::Gone),
                Err(e) => Err(e),
            };
        }
        let expires = now_us() + lease.ttl.as_micros() as i64;
        // Where the org has a limit, its run count is checked and counted in this same write,
        // and the deployment marked `counted`, so that its end counts it out (and a run claimed
        // before the limit was set is never counted out). Orgs without one share no item.
        let limited = org
            .as_ref()
            .is_some_and(|o| opt_n(o, "max_concurrent").is_some());
        let mut tx = self.tx();
        tx.update(
            key(&spk, dep_sk(d.version)),
            "SET #status = :accepted, #lease_owner = :owner, #lease_expires = :exp, #modified = :now, #gsi1pk = :leased, #gsi1sk = :gsk, #counted = :counted",
            Some("#status = :ns"),
            vec![
                (":accepted", s(JobStatus::Accepted.as_str())),
                (":owner", s(&lease.owner)),
                (":exp", n(expires)),
                (":now", n(now_us())),
                (":leased", s(LEASED)),
                (":gsk", s(format!("{}#{id}", pad(expires)))),
                (":ns", s(JobStatus::NotStarted.as_str())),
                (":counted", b(limited)),
            ],
        );
        tx.update(
            key(&spk, STACK_SK),
            "SET #active = :id",
            Some("attribute_not_exists(#active) AND #paused = :false"),
            vec![(":id", s(id.to_string())), (":false", b(false))],
        );
        if limited {
            tx.update(
                org_key(&stack.org),
                "ADD #running :one",
                Some(
                    "(attribute_not_exists(#paused) OR #paused = :false) AND \
                     (attribute_not_exists(#max_concurrent) OR attribute_not_exists(#running) OR #running < #max_concurrent)",
                ),
                vec![(":false", b(false)), (":one", n(1))],
            );
        } else {
            // A limit set meanwhile makes this claim look again.
            tx.check(
                org_key(&stack.org),
                "(attribute_not_exists(#paused) OR #paused = :false) AND attribute_not_exists(#max_concurrent)",
                vec![(":false", b(false))],
            );
        }
        match self.commit(tx).await? {
            Ok(()) => {
                let deployment = self
                    .deployment_at(&spk, d.version)
                    .await?
                    .ok_or(Error::conflict("deployment vanished"))?;
                Ok(ClaimOutcome::Claimed(Box::new(Claimed { deployment })))
            }
            // Lost a race (claimed elsewhere, slot taken, paused meanwhile): the message is
            // retried, and the next look sorts out which.
            Err(_) => Ok(ClaimOutcome::Busy),
        }
    }

    async fn claim_next(&self, lease: &Lease, queue: ClaimQueue<'_>) -> Result<Option<Claimed>> {
        let ClaimQueue::Pool(pool) = queue else {
            // SQS decides the built-in workers' order; they claim what it delivers.
            return Err(Error::internal(
                "the DynamoDB backend is fed by SQS: claim deployments by id",
            ));
        };
        // A pool's agents look at its queue, oldest first, and take the first that may start.
        let queued = self
            .query(
                Some("gsi1"),
                "gsi1pk = :pk",
                vec![(":pk", s(pool_queue(pool)))],
                true,
                // Deep enough that busy or paused stacks at the head do not hide the rest.
                Some(1000),
            )
            .await?;
        for d in queued {
            let (stack, id) = super::pools::stack_and_id(&d)?;
            if let ClaimOutcome::Claimed(c) = self.claim(&stack, id, lease).await? {
                return Ok(Some(*c));
            }
        }
        Ok(None)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn mark_running(&self, id: Uuid, lease: &Lease) -> Result<()> {
        let expires = now_us() + lease.ttl.as_micros() as i64;
        self.write_run(
            id,
            Guard::Lease(lease, &[JobStatus::Accepted]),
            Extra {
                set: "#status = :running, #started = :now, #lease_expires = :exp, #gsi1sk = :gsk",
                vals: vec![
                    (":running", s(JobStatus::Running.as_str())),
                    (":exp", n(expires)),
                    (":gsk", s(format!("{}#{id}", pad(expires)))),
                ],
                ..Extra::default()
            },
            |_, _| {},
            |_, _| Ok(()),
        )
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn heartbeat(&self, id: Uuid, lease: &Lease) -> Result<Heartbeat> {
        let (spk, version) = self.locate_or_conflict(id).await?;
        let expires = now_us() + lease.ttl.as_micros() as i64;
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(spk, dep_sk(version))))
            .update_expression("SET #lease_expires = :exp, #gsi1sk = :gsk")
            .condition_expression("#lease_owner = :owner AND #status IN (:a, :r)")
            .set_expression_attribute_names(names(&["#lease_expires #gsi1sk #lease_owner #status"]))
            .expression_attribute_values(":exp", n(expires))
            .expression_attribute_values(":gsk", s(format!("{}#{id}", pad(expires))))
            .expression_attribute_values(":owner", s(&lease.owner))
            .expression_attribute_values(":a", s(JobStatus::Accepted.as_str()))
            .expression_attribute_values(":r", s(JobStatus::Running.as_str()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match checked("UpdateItem", r)? {
            Some(out) => Ok(Heartbeat {
                cancel_requested: get_b(&out.attributes.unwrap_or_default(), "cancel_requested"),
            }),
            None => Err(Error::conflict(format!(
                "deployment {id} is no longer held by this worker"
            ))),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn start_step(&self, id: Uuid, lease: &Lease, name: &str) -> Result<usize> {
        self.write_run(
            id,
            Guard::Lease(lease, &[JobStatus::Running]),
            Extra::default(),
            |_, _| {},
            |st, _| {
                let now = now_us();
                st.steps.push(StoredStep::running(name, now));
                let idx = st.steps.len() - 1;
                st.log(idx, now, Some(name), None);
                Ok(idx)
            },
        )
        .await
    }

    async fn finish_step(
        &self,
        id: Uuid,
        lease: &Lease,
        step: usize,
        status: StepStatus,
    ) -> Result<()> {
        self.write_run(
            id,
            Guard::Lease(lease, &[JobStatus::Running]),
            Extra::default(),
            |_, _| {},
            |st, _| {
                let s = st
                    .steps
                    .get_mut(step)
                    .ok_or_else(|| Error::invalid(format!("the deployment has no step {step}")))?;
                s.status = status.as_str().into();
                s.updated = Some(now_us());
                Ok(())
            },
        )
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn start_update(&self, id: Uuid, lease: &Lease, kind: UpdateKind) -> Result<i64> {
        let (spk, dep_version) = self.locate_or_conflict(id).await?;
        let item = self
            .get(key(&spk, dep_sk(dep_version)))
            .await?
            .ok_or_else(|| Error::conflict(format!("deployment {id} is gone")))?;
        let running = get_s(&item, "status")? == JobStatus::Running.as_str()
            && opt_s(&item, "lease_owner").as_deref() == Some(lease.owner.as_str());
        if !running {
            return Err(Error::conflict(format!(
                "deployment {id} is no longer held by this worker"
            )));
        }
        if item.contains_key("update_info") {
            return Err(Error::conflict(format!(
                "deployment {id} has started its update already"
            )));
        }
        // The stack's next update version. Only the run holding the stack's slot gets here, so
        // versions follow the order updates start; one taken by a run that then loses its lease
        // is skipped, never reused.
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(&spk, STACK_SK)))
            .update_expression("ADD #update_seq :one")
            .condition_expression("attribute_exists(pk)")
            .set_expression_attribute_names(names(&["#update_seq"]))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| aws_err("UpdateItem", e))?;
        let version = out
            .attributes
            .as_ref()
            .and_then(|a| opt_n(a, "update_seq"))
            .ok_or_else(|| Error::internal("UpdateItem returned no update_seq"))?;
        let info = UpdateInfo::starting(version, kind);
        let mut pointer = key(&spk, update_sk(version));
        pointer.insert("dep_version".into(), n(dep_version));
        self.write_run(
            id,
            Guard::Lease(lease, &[JobStatus::Running]),
            Extra {
                set: "#update_info = :info, #update_version = :uv",
                vals: vec![
                    (":info", s(serde_json::to_string(&info)?)),
                    (":uv", n(version)),
                ],
                ..Extra::default()
            },
            |tx, _| tx.put(pointer.clone(), None, vec![]),
            |_, item| {
                if item.contains_key("update_info") {
                    return Err(Error::conflict(format!(
                        "deployment {id} has started its update already"
                    )));
                }
                Ok(())
            },
        )
        .await?;
        Ok(version)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn finish_update(&self, id: Uuid, lease: &Lease, outcome: &UpdateOutcome) -> Result<()> {
        let (spk, dep_version) = self.locate_or_conflict(id).await?;
        let item = self
            .get(key(&spk, dep_sk(dep_version)))
            .await?
            .ok_or_else(|| Error::conflict(format!("deployment {id} is gone")))?;
        let mut info: UpdateInfo = serde_json::from_str(
            &opt_s(&item, "update_info")
                .ok_or_else(|| Error::not_found(format!("deployment {id} has no update")))?,
        )?;
        info.result = outcome.result;
        info.ended = Some(OffsetDateTime::now_utc());
        info.resource_changes = outcome.resource_changes.clone();
        info.resource_count = outcome.resource_count;
        let count = outcome
            .resource_count
            .filter(|_| outcome.result == UpdateResult::Succeeded);
        self.write_run(
            id,
            Guard::Lease(lease, &[JobStatus::Running]),
            Extra {
                set: "#update_info = :info",
                vals: vec![(":info", s(serde_json::to_string(&info)?))],
                ..Extra::default()
            },
            |tx, _| {
                if let Some(count) = count {
                    tx.update(
                        key(&spk, STACK_SK),
                        "SET #resource_count = :count",
                        None,
                        vec![(":count", n(count))],
                    );
                }
            },
            |_, _| Ok(()),
        )
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn append_logs(&self, id: Uuid, lease: &Lease, lines: &[LogLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        self.write_run(
            id,
            Guard::Lease(lease, &[JobStatus::Accepted, JobStatus::Running]),
            Extra::default(),
            |_, _| {},
            |st, _| {
                for l in lines {
                    let ts = to_micros(l.timestamp);
                    match &l.event {
                        Some(e) => st.event(l.step, ts, e),
                        None => st.log(l.step, ts, None, Some(&l.line)),
                    }
                }
                Ok(())
            },
        )
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn record_outputs(&self, id: Uuid, lease: &Lease, outputs: &Value) -> Result<()> {
        let raw = serde_json::to_string(outputs)?;
        let clear = outputs.is_null();
        self.write_run(
            id,
            Guard::Lease(lease, &[JobStatus::Running]),
            Extra::default(),
            |tx, item| {
                let spk = get_s(item, "pk").unwrap_or_default();
                if clear {
                    tx.update(
                        key(spk, STACK_SK),
                        "REMOVE #outputs",
                        Some("#active = :id"),
                        vec![(":id", s(id.to_string()))],
                    );
                } else {
                    tx.update(
                        key(spk, STACK_SK),
                        "SET #outputs = :o",
                        Some("#active = :id"),
                        vec![(":o", s(raw.clone())), (":id", s(id.to_string()))],
                    );
                }
            },
            |_, _| Ok(()),
        )
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn finish(&self, id: Uuid, lease: &Lease, status: JobStatus) -> Result<()> {
        self.end(
            id,
            Guard::Lease(lease, &[JobStatus::Accepted, JobStatus::Running]),
            status,
            None,
        )
        .await
    }

    async fn queued_before(&self, cutoff: OffsetDateTime) -> Result<Vec<QueueMessage>> {
        let items = self
            .query(
                Some("gsi1"),
                "gsi1pk = :pk AND gsi1sk < :t",
                vec![(":pk", s(QUEUED)), (":t", s(pad(to_micros(cutoff))))],
                true,
                None,
            )
            .await?;
        items
            .iter()
            .map(|i| {
                let deployment_id = stored_id(&get_s(i, "id")?)?;
                Ok(QueueMessage {
                    deployment_id,
                    org: get_s(i, "org")?,
                    project: get_s(i, "project")?,
                    stack: get_s(i, "stack")?,
                })
            })
            .collect()
    }

    async fn queue_state(&self, d: &Deployment) -> Result<QueueState> {
        let spk = stack_pk(&d.stack);
        // Ahead of it: its org's entries in its queue before its own (none while it waits for
        // approval).
        let item = self.get(key(&spk, dep_sk(d.version))).await?;
        let ahead = match item.as_ref().and_then(|i| opt_s(i, "gsi1sk")) {
            Some(own) if !d.awaiting_approval() => {
                self.count_where(
                    Some("gsi1"),
                    "gsi1pk = :pk AND gsi1sk < :sk",
                    // Its own org's only: other tenants' queues are not its business.
                    Some("#org = :org"),
                    vec![
                        (":pk", s(queued_pk(d.config.spec().agent_pool.as_deref()))),
                        (":sk", s(own)),
                        (":org", s(&d.stack.org)),
                    ],
                )
                .await?
            }
            _ => 0,
        };
        let st = self.stack_item(&d.stack).await?;
        let first = self
            .queued_of_stack(&spk)
            .await?
            .first()
            .and_then(|i| opt_n(i, "version"));
        let org = self.get(org_key(&d.stack.org)).await?;
        Ok(QueueState {
            ahead,
            stack_busy: st.as_ref().is_some_and(|i| opt_s(i, "active").is_some())
                || first.is_some_and(|v| v < d.version),
            paused: st.as_ref().is_some_and(|i| get_b(i, "paused"))
                || org.as_ref().is_some_and(|o| get_b(o, "paused")),
            org_at_limit: org.as_ref().is_some_and(at_limit),
        })
    }

    async fn reap(&self, now: OffsetDateTime, queue_expiry: OffsetDateTime) -> Result<Vec<Reaped>> {
        let mut changed = Vec::new();
        let leased = self
            .query(
                Some("gsi1"),
                "gsi1pk = :pk AND gsi1sk < :t",
                vec![(":pk", s(LEASED)), (":t", s(pad(to_micros(now))))],
                true,
                None,
            )
            .await?;
        for item in leased {
            let id = stored_id(&get_s(&item, "id")?)?;
            // Checked again by the write's condition: a heartbeat may renew it meanwhile.
            let Some((spk, version)) = self.locate(id).await? else {
                continue;
            };
            let Some(cur) = self.get(key(spk, dep_sk(version))).await? else {
                continue;
            };
            if opt_n(&cur, "lease_expires").is_some_and(|e| e >= to_micros(now)) {
                continue;
            }
            let msg = "The worker running this deployment stopped renewing its lease (it crashed or was killed); marked failed.\n";
            if self
                .end(
                    id,
                    Guard::Expired(&[JobStatus::Accepted, JobStatus::Running], to_micros(now)),
                    JobStatus::Failed,
                    Some(msg),
                )
                .await
                .is_ok()
            {
                changed.push(Reaped {
                    stack: stack_of(&cur)?,
                    id,
                    status: JobStatus::Failed,
                });
            }
        }
        // Approvals past their deadline: the deployment is skipped, saying so.
        let lapsed = self
            .query(
                Some("gsi1"),
                "gsi1pk = :pk AND gsi1sk < :t",
                vec![(":pk", s(AWAITING)), (":t", s(pad(to_micros(now))))],
                true,
                None,
            )
            .await?;
        for item in lapsed {
            let (stack, id) = (stack_of(&item)?, stored_id(&get_s(&item, "id")?)?);
            let Some(d) = self.get_deployment(&stack, id).await? else {
                continue;
            };
            let Some(approval) = d.approval.as_ref().filter(|a| a.is_pending()) else {
                continue;
            };
            // A decision made meanwhile wins.
            if self
                .write_approval(&d, approval, &approval.expired())
                .await
                .is_ok()
            {
                changed.push(Reaped {
                    stack,
                    id,
                    status: JobStatus::Skipped,
                });
            }
        }
        let stale = self
            .query(
                Some("gsi1"),
                "gsi1pk = :pk AND gsi1sk < :t",
                vec![(":pk", s(QUEUED)), (":t", s(pad(to_micros(queue_expiry))))],
                true,
                None,
            )
            .await?;
        for item in stale {
            let id = stored_id(&get_s(&item, "id")?)?;
            let msg = "Skipped: queued for longer than the queue allows.\n";
            if self
                .end(
                    id,
                    Guard::Status(&[JobStatus::NotStarted]),
                    JobStatus::Skipped,
                    Some(msg),
                )
                .await
                .is_ok()
            {
                changed.push(Reaped {
                    stack: stack_of(&item)?,
                    id,
                    status: JobStatus::Skipped,
                });
            }
        }
        Ok(changed)
    }
}
