//! The `DeploymentStore` port.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use uuid::Uuid;

use super::runs::{Extra, Guard};
use super::stacks::new_stack_item;
use super::*;
use crate::aws::item::*;
use crate::domain::approvals::{Approval, ApprovalStatus, Ballot};
use crate::domain::time_fmt::{from_micros, to_micros};
use crate::domain::*;
use crate::error::{Error, Result};
use crate::ports::*;
use crate::store_codec::{stored_id, to_domain_steps};

impl DynamoStore {
    /// Where a deployment lives: its stack's partition and its version.
    pub(super) async fn locate(&self, id: Uuid) -> Result<Option<(String, i64)>> {
        if let Some(loc) = self
            .locations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(Some(loc.clone()));
        }
        let Some(ptr) = self.get(ptr_key(id)).await? else {
            return Ok(None);
        };
        let loc = (get_s(&ptr, "stack_pk")?, get_n(&ptr, "version")?);
        self.locations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, loc.clone());
        Ok(Some(loc))
    }

    pub(super) async fn locate_or_conflict(&self, id: Uuid) -> Result<(String, i64)> {
        self.locate(id)
            .await?
            .ok_or_else(|| Error::conflict(format!("deployment {id} does not exist")))
    }

    pub(super) fn to_deployment(d: &Item, stack: &Item) -> Result<Deployment> {
        Ok(Deployment {
            id: stored_id(&get_s(d, "id")?)?,
            stack: StackRef {
                org: get_s(d, "org")?,
                project: get_s(d, "project")?,
                stack: get_s(d, "stack")?,
            },
            version: get_n(d, "version")?,
            latest_version: get_n(stack, "last_version")?,
            operation: get_s(d, "operation")?.parse()?,
            status: get_s(d, "status")?.parse()?,
            config: serde_json::from_str(&get_s(d, "config")?)?,
            initiator: get_s(d, "initiator")?,
            requested_by: get_s(d, "requested_by")?,
            created: from_micros(get_n(d, "created")?),
            modified: from_micros(get_n(d, "modified")?),
            started: opt_n(d, "started").map(from_micros),
            steps: to_domain_steps(&get_s(d, "steps")?)?,
            stack_paused: get_b(stack, "paused"),
            update: opt_s(d, "update_info")
                .map(|u| serde_json::from_str(&u))
                .transpose()?,
            approval: opt_s(d, "approval")
                .map(|a| serde_json::from_str(&a))
                .transpose()?,
        })
    }

    /// A deployment of `stack` (by version), with the stack item it is read against.
    pub(super) async fn deployment_at(
        &self,
        spk: &str,
        version: i64,
    ) -> Result<Option<Deployment>> {
        let Some(d) = self.get(key(spk, dep_sk(version))).await? else {
            return Ok(None);
        };
        let Some(stack) = self.get(key(spk, STACK_SK)).await? else {
            return Ok(None);
        };
        Self::to_deployment(&d, &stack).map(Some)
    }

    /// A stack's queued deployments, oldest first. Claims always take a stack's oldest queued
    /// deployment, so every queued one is newer than every deployment that ever started: the
    /// stack's history is read backwards only until the first started one, not in full.
    pub(super) async fn queued_of_stack(&self, spk: &str) -> Result<Vec<Item>> {
        let mut queued = Vec::new();
        let mut start = None;
        loop {
            let resp = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :dep)")
                .expression_attribute_values(":pk", s(spk))
                .expression_attribute_values(":dep", s("DEP#"))
                .projection_expression(
                    "id, version, #status, operation, skip_intermediate, awaiting",
                )
                .set_expression_attribute_names(names(&["#status"]))
                .scan_index_forward(false)
                .consistent_read(true)
                .limit(25)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| aws_err("Query", e))?;
            for item in resp.items.unwrap_or_default() {
                match opt_s(&item, "status").as_deref() {
                    Some("not-started") => queued.push(item),
                    // Cancelled or skipped while queued: keep looking past it.
                    Some("skipped") => {}
                    _ => {
                        queued.reverse();
                        return Ok(queued);
                    }
                }
            }
            start = resp.last_evaluated_key;
            if start.is_none() {
                queued.reverse();
                return Ok(queued);
            }
        }
    }

    /// A page of deployment items (newest first unless ascending), and the total.
    pub(super) async fn page(
        &self,
        index: Option<&str>,
        cond: &str,
        vals: Vec<(&str, AttributeValue)>,
        page: PageRequest,
    ) -> Result<(Vec<Item>, u64)> {
        let total = self.count(index, cond, vals.clone()).await?;
        let skip = (page.page.saturating_sub(1) as usize) * page.page_size as usize;
        let items = self
            .query(
                index,
                cond,
                vals,
                page.ascending,
                Some(skip + page.page_size as usize),
            )
            .await?;
        Ok((
            items
                .into_iter()
                .skip(skip)
                .take(page.page_size as usize)
                .collect(),
            total,
        ))
    }

    pub(super) async fn with_stacks(&self, items: Vec<Item>) -> Result<Vec<Deployment>> {
        let mut stacks: HashMap<String, Item> = HashMap::new();
        let mut out = Vec::with_capacity(items.len());
        for d in items {
            let spk = get_s(&d, "pk")?;
            if !stacks.contains_key(&spk) {
                let Some(st) = self.get(key(&spk, STACK_SK)).await? else {
                    continue;
                };
                stacks.insert(spk.clone(), st);
            }
            out.push(Self::to_deployment(&d, &stacks[&spk])?);
        }
        Ok(out)
    }

    /// Writes a deployment's next approval, on condition that it is still `current` and the
    /// deployment still queued. Approved, the deployment joins its queue (the workers' or its
    /// pool's) in its creation order; rejected or expired, it is skipped, saying why.
    pub(super) async fn write_approval(
        &self,
        d: &Deployment,
        current: &Approval,
        next: &Approval,
    ) -> Result<()> {
        let id = d.id;
        let mut vals = vec![
            (":old", s(serde_json::to_string(current)?)),
            (":approval", s(serde_json::to_string(next)?)),
        ];
        let extra = match next.status {
            ApprovalStatus::Pending => Extra {
                set: "#approval = :approval",
                cond: "#approval = :old",
                vals,
                ..Extra::default()
            },
            ApprovalStatus::Approved => {
                vals.extend([
                    (
                        ":queue",
                        s(queued_pk(d.config.spec().agent_pool.as_deref())),
                    ),
                    // Queued from now: the queue's age limit counts from the approval.
                    (":queued", s(format!("{}#{id}", pad(now_us())))),
                ]);
                Extra {
                    set: "#approval = :approval, #gsi1pk = :queue, #gsi1sk = :queued",
                    remove: "#awaiting",
                    cond: "#approval = :old",
                    vals,
                }
            }
            // (A decision never withdraws; any end but approval ends the deployment.)
            ApprovalStatus::Rejected | ApprovalStatus::Expired | ApprovalStatus::Withdrawn => {
                vals.push((":final", s(JobStatus::Skipped.as_str())));
                Extra {
                    set: "#approval = :approval, #status = :final",
                    remove: "#awaiting, #gsi1pk, #gsi1sk",
                    cond: "#approval = :old",
                    vals,
                }
            }
        };
        let line = matches!(
            next.status,
            ApprovalStatus::Rejected | ApprovalStatus::Expired
        )
        .then(|| next.ending_line());
        self.write_run(
            id,
            Guard::Status(&[JobStatus::NotStarted]),
            extra,
            |_, _| {},
            |st, _| {
                if let Some(line) = &line {
                    st.log(0, now_us(), None, Some(line));
                }
                Ok(())
            },
        )
        .await
        .map_err(|e| match e {
            Error::Conflict(_) => Error::conflict(format!(
                "deployment '{id}' changed while this decision was made; read it and decide again"
            )),
            other => other,
        })
    }
}

#[async_trait]
impl DeploymentStore for DynamoStore {
    async fn create_deployment(&self, new: NewDeployment) -> Result<Deployment> {
        let spk = stack_pk(&new.stack);
        for attempt in 0..RETRIES * 5 {
            let st = self.stack_item(&new.stack).await?;
            let (last, exists) = match &st {
                Some(st) => (get_n(st, "last_version")?, true),
                None => (0, false),
            };
            let version = last + 1;
            let now = now_us();
            let mut tx = self.tx();
            if exists {
                tx.update(
                    key(&spk, STACK_SK),
                    "SET #last_version = :v",
                    Some("#last_version = :last"),
                    vec![(":v", n(version)), (":last", n(last))],
                );
            } else {
                let mut item = new_stack_item(&new.stack);
                item.insert("last_version".into(), n(version));
                tx.put(item, Some("attribute_not_exists(pk)"), vec![]);
            }
            // Queued for the workers or its pool; while it waits for approval, in the
            // approvals' index by deadline instead, where the reaper finds it.
            let pending = new.approval.as_ref().filter(|a| a.is_pending());
            let (gsi1pk, gsi1sk) = match pending {
                Some(a) => (
                    AWAITING.to_string(),
                    format!("{}#{}", pad(to_micros(a.expires_at)), new.id),
                ),
                None => (
                    queued_pk(new.config.spec().agent_pool.as_deref()),
                    format!("{}#{}", pad(now), new.id),
                ),
            };
            let mut d = key(&spk, dep_sk(version));
            for (k, v) in [
                ("id", s(new.id.to_string())),
                ("org", s(&new.stack.org)),
                ("project", s(&new.stack.project)),
                ("stack", s(&new.stack.stack)),
                ("version", n(version)),
                ("operation", s(new.operation.as_str())),
                ("status", s(JobStatus::NotStarted.as_str())),
                ("config", s(serde_json::to_string(&new.config)?)),
                ("initiator", s(&new.initiator)),
                ("requested_by", s(&new.requested_by)),
                ("skip_intermediate", b(new.skip_intermediate())),
                ("created", n(now)),
                ("modified", n(now)),
                ("cancel_requested", b(false)),
                ("steps", s("[]")),
                ("step_lines", s("{}")),
                ("log_seq", n(0)),
                ("gsi1pk", s(gsi1pk)),
                ("gsi1sk", s(gsi1sk)),
                ("gsi2pk", s(org_deps(&new.stack.org))),
                ("gsi2sk", s(format!("{}#{}", pad(now), new.id))),
            ] {
                d.insert(k.into(), v);
            }
            if let Some(pool) = &new.config.spec().agent_pool {
                d.insert("agent_pool".into(), s(pool));
            }
            if let Some(a) = &new.approval {
                d.insert("approval".into(), s(serde_json::to_string(a)?));
            }
            if pending.is_some() {
                d.insert("awaiting".into(), b(true));
            }
            tx.put(d, Some("attribute_not_exists(pk)"), vec![]);
            let mut ptr = ptr_key(new.id);
            ptr.insert("stack_pk".into(), s(&spk));
            ptr.insert("version".into(), n(version));
            tx.put(ptr, Some("attribute_not_exists(pk)"), vec![]);
            match self.commit(tx).await? {
                Ok(()) => {
                    self.locations
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(new.id, (spk.clone(), version));
                    return self
                        .deployment_at(&spk, version)
                        .await?
                        .ok_or_else(|| Error::internal("created deployment vanished"));
                }
                Err(_) => {
                    // A deployment with this id exists: a retried create (a redelivered
                    // webhook, say), not a race for the version.
                    if self.get(ptr_key(new.id)).await?.is_some() {
                        return Err(Error::conflict(format!(
                            "deployment {} already exists",
                            new.id
                        )));
                    }
                    // Another create took this version: back off a little (jittered) and retry.
                    let jitter = (new.id.as_u128() as u64 + attempt as u64) % 7;
                    tokio::time::sleep(Duration::from_millis(2 + jitter)).await;
                }
            }
        }
        Err(Error::conflict(
            "too many concurrent deployments on this stack; retry",
        ))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn get_deployment(&self, stack: &StackRef, id: Uuid) -> Result<Option<Deployment>> {
        match self.locate(id).await? {
            Some((spk, version)) if spk == stack_pk(stack) => {
                self.deployment_at(&spk, version).await
            }
            _ => Ok(None),
        }
    }

    async fn get_deployment_by_version(
        &self,
        stack: &StackRef,
        version: i64,
    ) -> Result<Option<Deployment>> {
        self.deployment_at(&stack_pk(stack), version).await
    }

    async fn list_stack_deployments(
        &self,
        stack: &StackRef,
        page: PageRequest,
    ) -> Result<Page<Deployment>> {
        let (items, total) = self
            .page(
                None,
                "pk = :pk AND begins_with(sk, :dep)",
                vec![(":pk", s(stack_pk(stack))), (":dep", s("DEP#"))],
                page,
            )
            .await?;
        Ok(Page {
            items: self.with_stacks(items).await?,
            total,
        })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn list_updates(&self, stack: &StackRef, page: PageRequest) -> Result<Page<Deployment>> {
        let spk = stack_pk(stack);
        let (pointers, total) = self
            .page(
                None,
                "pk = :pk AND begins_with(sk, :upd)",
                vec![(":pk", s(&spk)), (":upd", s(UPDATE_PREFIX))],
                page,
            )
            .await?;
        let mut items = Vec::with_capacity(pointers.len());
        for p in &pointers {
            if let Some(d) = self.deployment_at(&spk, get_n(p, "dep_version")?).await? {
                items.push(d);
            }
        }
        Ok(Page { items, total })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn update_by_version(
        &self,
        stack: &StackRef,
        version: i64,
    ) -> Result<Option<Deployment>> {
        let spk = stack_pk(stack);
        let Some(p) = self.get(key(&spk, update_sk(version))).await? else {
            return Ok(None);
        };
        self.deployment_at(&spk, get_n(&p, "dep_version")?).await
    }

    async fn list_org_deployments(&self, org: &str, page: PageRequest) -> Result<Page<Deployment>> {
        let (items, total) = self
            .page(
                Some("gsi2"),
                "gsi2pk = :pk",
                vec![(":pk", s(org_deps(org)))],
                page,
            )
            .await?;
        Ok(Page {
            items: self.with_stacks(items).await?,
            total,
        })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn cancel_deployment(&self, stack: &StackRef, id: Uuid) -> Result<CancelOutcome> {
        let d = self
            .get_deployment(stack, id)
            .await?
            .ok_or_else(|| Error::not_found(format!("deployment '{id}' not found")))?;
        match d.status {
            JobStatus::NotStarted => {
                match self
                    .end(
                        id,
                        Guard::Status(&[JobStatus::NotStarted]),
                        JobStatus::Skipped,
                        Some("Cancelled before it started.\n"),
                    )
                    .await
                {
                    Ok(()) => Ok(CancelOutcome::Dequeued),
                    // Claimed meanwhile: cancel the run instead.
                    Err(Error::Conflict(_)) => Box::pin(self.cancel_deployment(stack, id)).await,
                    Err(e) => Err(e),
                }
            }
            JobStatus::Accepted | JobStatus::Running => {
                let (spk, version) = self.locate_or_conflict(id).await?;
                let r = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(key(spk, dep_sk(version))))
                    .update_expression("SET #cancel_requested = :t")
                    .condition_expression("#status IN (:a, :r)")
                    .set_expression_attribute_names(names(&["#cancel_requested #status"]))
                    .expression_attribute_values(":t", b(true))
                    .expression_attribute_values(":a", s(JobStatus::Accepted.as_str()))
                    .expression_attribute_values(":r", s(JobStatus::Running.as_str()))
                    .send()
                    .await;
                match checked("UpdateItem", r)? {
                    Some(_) => Ok(CancelOutcome::Requested),
                    None => Ok(CancelOutcome::AlreadyFinished),
                }
            }
            _ => Ok(CancelOutcome::AlreadyFinished),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn decide_approval(
        &self,
        stack: &StackRef,
        id: Uuid,
        ballot: &Ballot,
    ) -> Result<Deployment> {
        let d = self.get_deployment(stack, id).await?.ok_or_else(|| {
            Error::not_found(format!("deployment '{id}' not found in stack '{stack}'"))
        })?;
        // One a newer deployment supersedes would be skipped when claimed: it is now.
        if d.status == JobStatus::NotStarted && d.config.spec().skip_intermediate {
            let queued = self.queued_of_stack(&stack_pk(stack)).await?;
            let newer = queued.iter().any(|i| {
                opt_n(i, "version").is_some_and(|v| v > d.version)
                    && opt_s(i, "operation").as_deref() == Some(d.operation.as_str())
            });
            if newer {
                let msg = format!(
                    "Skipped: a newer {} deployment is queued (skipIntermediateDeployments).\n",
                    d.operation
                );
                self.end(
                    id,
                    Guard::Status(&[JobStatus::NotStarted]),
                    JobStatus::Skipped,
                    Some(&msg),
                )
                .await?;
                return Err(crate::domain::approvals::superseded(d.operation.as_str()));
            }
        }
        let next = Approval::decide_stored(d.approval.as_ref(), d.status, &d.requested_by, ballot)?;
        let current = d
            .approval
            .as_ref()
            .ok_or_else(|| Error::internal("a decided approval vanished"))?;
        self.write_approval(&d, current, &next).await?;
        self.get_deployment(stack, id)
            .await?
            .ok_or_else(|| Error::internal("decided deployment vanished"))
    }
}
