//! The DynamoDB adapters of `ScheduleStore` and `DriftStore` (layout in `TABLE.md`).
//!
//! A schedule lives in its stack's partition (`SCHED#{id}`). While it can fire it is in the
//! sparse `gsi1` partition `DUE`, sorted by its next slot, so a tick's Query reads only what is
//! due. Firing is a conditional update of the next slot: of two ticks, one wins.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{DynamoStore, STACK_SK, aws_err, checked, stack_pk};
use crate::aws::item::*;
use crate::domain::schedule::{Cron, Purpose, Schedule, When};
use crate::domain::time_fmt::{from_micros, to_micros};
use crate::domain::{Page, PageRequest, StackRef};
use crate::error::{Error, Result};
use crate::ports::{
    DriftRun, DriftStore, FireResult, HistoryEvent, PlannedFiring, SKIPPED_NOTE, ScheduleStore,
};
use crate::store_codec::stored_id;

const DUE: &str = "DUE";

fn sched_sk(id: Uuid) -> String {
    format!("SCHED#{id}")
}

fn hist_pk(id: Uuid) -> String {
    format!("SCHEDHIST#{id}")
}

fn due_key(next: OffsetDateTime, id: Uuid) -> String {
    format!("{}#{id}", pad(to_micros(next)))
}

fn schedule_item(s: &Schedule) -> Result<Item> {
    let mut item = key(stack_pk(&s.stack), sched_sk(s.id));
    for (k, v) in [
        ("id", AttributeValue::S(s.id.to_string())),
        ("org", AttributeValue::S(s.stack.org.clone())),
        ("project", AttributeValue::S(s.stack.project.clone())),
        ("stack", AttributeValue::S(s.stack.stack.clone())),
        ("purpose", AttributeValue::S(s.purpose.as_str().into())),
        (
            "definition",
            AttributeValue::S(serde_json::to_string(&s.definition)?),
        ),
        ("paused", b(s.paused)),
        ("created", n(to_micros(s.created))),
        ("modified", n(to_micros(s.modified))),
    ] {
        item.insert(k.into(), v);
    }
    match &s.when {
        When::Cron(c) => item.insert("cron".into(), AttributeValue::S(c.as_str().into())),
        When::Once(t) => item.insert("once".into(), n(to_micros(*t))),
    };
    if let Some(t) = s.last_executed {
        item.insert("last_executed".into(), n(to_micros(t)));
    }
    if let Some(next) = s.next_execution {
        item.insert("next".into(), n(to_micros(next)));
        if !s.paused {
            item.insert("gsi1pk".into(), AttributeValue::S(DUE.into()));
            item.insert("gsi1sk".into(), AttributeValue::S(due_key(next, s.id)));
        }
    }
    Ok(item)
}

fn schedule_from(item: &Item) -> Result<Schedule> {
    let when = match (opt_s(item, "cron"), opt_n(item, "once")) {
        (Some(c), _) => When::Cron(Box::new(Cron::from_stored(&c)?)),
        (None, Some(t)) => When::Once(from_micros(t)),
        _ => return Err(Error::internal("schedule without cron or instant")),
    };
    Ok(Schedule {
        id: stored_id(&get_s(item, "id")?)?,
        stack: StackRef {
            org: get_s(item, "org")?,
            project: get_s(item, "project")?,
            stack: get_s(item, "stack")?,
        },
        purpose: Purpose::parse(&get_s(item, "purpose")?)?,
        when,
        definition: serde_json::from_str(&get_s(item, "definition")?)?,
        next_execution: opt_n(item, "next").map(from_micros),
        paused: get_b(item, "paused"),
        created: from_micros(get_n(item, "created")?),
        modified: from_micros(get_n(item, "modified")?),
        last_executed: opt_n(item, "last_executed").map(from_micros),
    })
}

impl DynamoStore {
    /// Writes an item whole, unconditionally.
    async fn put(&self, item: Item) -> Result<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| aws_err("PutItem", e))?;
        Ok(())
    }

    async fn delete_key(&self, k: Item) -> Result<()> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(k))
            .send()
            .await
            .map_err(|e| aws_err("DeleteItem", e))?;
        Ok(())
    }

    async fn delete_history(&self, schedule: Uuid) -> Result<()> {
        for h in self
            .query(
                None,
                "pk = :pk",
                vec![(":pk", s(hist_pk(schedule)))],
                true,
                None,
            )
            .await?
        {
            self.delete_key(key(get_s(&h, "pk")?, get_s(&h, "sk")?))
                .await?;
        }
        Ok(())
    }

    /// Removes a stack's schedules (with their history) and drift runs; part of deleting it.
    pub(super) async fn delete_schedules_and_drift(&self, spk: &str) -> Result<()> {
        for prefix in ["SCHED#", "DRIFT#", "HOOK#", super::UPDATE_PREFIX] {
            let items = self
                .query(
                    None,
                    "pk = :pk AND begins_with(sk, :p)",
                    vec![(":pk", s(spk)), (":p", s(prefix))],
                    true,
                    None,
                )
                .await?;
            for item in items {
                if prefix == "SCHED#" {
                    self.delete_history(stored_id(&get_s(&item, "id")?)?)
                        .await?;
                }
                self.delete_key(key(spk, get_s(&item, "sk")?)).await?;
            }
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn drift_item(&self, stack: &StackRef, id: Uuid) -> Result<Option<Item>> {
        let items = self
            .query(
                None,
                "pk = :pk AND begins_with(sk, :p)",
                vec![(":pk", s(stack_pk(stack))), (":p", s("DRIFT#"))],
                true,
                None,
            )
            .await?;
        Ok(items
            .into_iter()
            .find(|i| opt_s(i, "id").as_deref() == Some(id.to_string().as_str())))
    }
}

#[async_trait]
impl ScheduleStore for DynamoStore {
    async fn create_schedule(&self, sched: &Schedule) -> Result<()> {
        let mut tx = self.tx();
        tx.check(
            key(stack_pk(&sched.stack), STACK_SK),
            "attribute_exists(pk)",
            vec![],
        );
        tx.put(
            schedule_item(sched)?,
            Some("attribute_not_exists(pk)"),
            vec![],
        );
        match self.commit(tx).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::not_found(format!(
                "stack '{}' not found",
                sched.stack
            ))),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn get_schedule(&self, stack: &StackRef, id: Uuid) -> Result<Option<Schedule>> {
        self.get(key(stack_pk(stack), sched_sk(id)))
            .await?
            .map(|i| schedule_from(&i))
            .transpose()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn list_schedules(&self, stack: &StackRef) -> Result<Vec<Schedule>> {
        let items = self
            .query(
                None,
                "pk = :pk AND begins_with(sk, :p)",
                vec![(":pk", s(stack_pk(stack))), (":p", s("SCHED#"))],
                true,
                None,
            )
            .await?;
        let mut out = items
            .iter()
            .map(schedule_from)
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|s| (s.created, s.id));
        Ok(out)
    }

    async fn update_schedule(
        &self,
        sched: &Schedule,
        expected_next: Option<OffsetDateTime>,
    ) -> Result<()> {
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(schedule_item(sched)?));
        req = match expected_next {
            Some(t) => req
                .condition_expression("attribute_exists(pk) AND #next = :expected")
                .expression_attribute_values(":expected", n(to_micros(t))),
            None => {
                req.condition_expression("attribute_exists(pk) AND attribute_not_exists(#next)")
            }
        };
        let r = req
            .set_expression_attribute_names(names(&["#next"]))
            .send()
            .await;
        match checked("PutItem", r)? {
            Some(_) => Ok(()),
            None if self
                .get(key(stack_pk(&sched.stack), sched_sk(sched.id)))
                .await?
                .is_some() =>
            {
                Err(Error::conflict("the schedule fired meanwhile; retry"))
            }
            None => Err(Error::not_found("schedule not found")),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn delete_schedule(&self, stack: &StackRef, id: Uuid) -> Result<()> {
        let r = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(stack_pk(stack), sched_sk(id))))
            .condition_expression("attribute_exists(pk)")
            .send()
            .await;
        match checked("DeleteItem", r)? {
            Some(_) => self.delete_history(id).await,
            None => Err(Error::not_found(format!("schedule '{id}' not found"))),
        }
    }

    async fn due_schedules(&self, now: OffsetDateTime, limit: usize) -> Result<Vec<Schedule>> {
        // '~' sorts after every id character, so slots exactly at `now` are included.
        let upto = format!("{}#~", pad(to_micros(now)));
        let items = self
            .query(
                Some("gsi1"),
                "gsi1pk = :pk AND gsi1sk <= :t",
                vec![(":pk", s(DUE)), (":t", s(upto))],
                true,
                Some(limit),
            )
            .await?;
        items.iter().take(limit).map(schedule_from).collect()
    }

    async fn advance_schedule(
        &self,
        stack: &StackRef,
        id: Uuid,
        expected: OffsetDateTime,
        next: Option<OffsetDateTime>,
        fired: OffsetDateTime,
    ) -> Result<bool> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(stack_pk(stack), sched_sk(id))))
            .condition_expression("#next = :expected AND #paused = :false")
            .expression_attribute_values(":expected", n(to_micros(expected)))
            .expression_attribute_values(":false", b(false))
            .expression_attribute_values(":fired", n(to_micros(fired)))
            .return_values(ReturnValue::None);
        let set = match next {
            Some(t) => {
                req = req
                    .expression_attribute_values(":next", n(to_micros(t)))
                    .expression_attribute_values(":gsk", s(due_key(t, id)));
                "SET #next = :next, #last_executed = :fired, #gsi1sk = :gsk".to_string()
            }
            None => "SET #last_executed = :fired REMOVE #next, #gsi1pk, #gsi1sk".to_string(),
        };
        let names = names(&[&set, "#next #paused"]);
        let r = req
            .update_expression(set)
            .set_expression_attribute_names(names)
            .send()
            .await;
        match checked("UpdateItem", r)? {
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }

    async fn add_history(&self, _stack: &StackRef, e: &HistoryEvent) -> Result<()> {
        let mut item = key(
            hist_pk(e.schedule_id),
            format!("{}#{}", pad(to_micros(e.executed)), e.id),
        );
        item.insert("id".into(), s(e.id.to_string()));
        item.insert("executed".into(), n(to_micros(e.executed)));
        item.insert("note".into(), s(&e.note));
        if let Some((d, v)) = e.deployment {
            item.insert("deployment".into(), s(d.to_string()));
            item.insert("version".into(), n(v));
        }
        self.put(item).await
    }

    async fn fire(&self, batch: Vec<PlannedFiring>) -> Result<Vec<FireResult>> {
        use crate::ports::DeploymentStore;
        // Each firing is claimed by its conditional advance; what follows is written after it.
        // (A crash in between loses that one firing's deployment, never doubles it.)
        let mut results = Vec::with_capacity(batch.len());
        for f in batch {
            if !self
                .advance_schedule(&f.stack, f.schedule_id, f.expected, f.next, f.fired_at)
                .await?
            {
                results.push(FireResult::Lost);
                continue;
            }
            let event =
                |at: OffsetDateTime, deployment: Option<(Uuid, i64)>, note: String| HistoryEvent {
                    id: Uuid::new_v4(),
                    schedule_id: f.schedule_id,
                    executed: at,
                    deployment,
                    note,
                };
            for missed in &f.skipped {
                self.add_history(&f.stack, &event(*missed, None, SKIPPED_NOTE.to_string()))
                    .await?;
            }
            let created = match f.deployment {
                Ok(new) => match self.create_deployment(new).await {
                    Ok(d) => {
                        self.add_history(
                            &f.stack,
                            &event(f.slot, Some((d.id, d.version)), "fired".into()),
                        )
                        .await?;
                        Some((d.id, d.version))
                    }
                    // The slot is used up either way; the history says what happened, and the
                    // rest of the batch goes on.
                    Err(e) => {
                        tracing::error!(schedule = %f.schedule_id, error = %e.chain(), "a won slot could not create its deployment");
                        self.add_history(&f.stack, &event(f.slot, None, format!("failed: {e}")))
                            .await?;
                        None
                    }
                },
                Err(why) => {
                    self.add_history(&f.stack, &event(f.slot, None, format!("failed: {why}")))
                        .await?;
                    None
                }
            };
            results.push(FireResult::Fired(created));
        }
        Ok(results)
    }

    async fn history(
        &self,
        _stack: &StackRef,
        schedule_id: Uuid,
        limit: usize,
    ) -> Result<Vec<HistoryEvent>> {
        let items = self
            .query(
                None,
                "pk = :pk",
                vec![(":pk", s(hist_pk(schedule_id)))],
                false,
                Some(limit),
            )
            .await?;
        items
            .iter()
            .take(limit)
            .map(|i| {
                let deployment = match (opt_s(i, "deployment"), opt_n(i, "version")) {
                    (Some(d), Some(v)) => Some((stored_id(&d)?, v)),
                    _ => None,
                };
                Ok(HistoryEvent {
                    id: stored_id(&get_s(i, "id")?)?,
                    schedule_id,
                    executed: from_micros(get_n(i, "executed")?),
                    deployment,
                    note: get_s(i, "note")?,
                })
            })
            .collect()
    }
}

fn drift_from(stack: &StackRef, i: &Item) -> Result<DriftRun> {
    Ok(DriftRun {
        id: stored_id(&get_s(i, "id")?)?,
        stack: stack.clone(),
        created: from_micros(get_n(i, "created")?),
        detect: (
            stored_id(&get_s(i, "detect_id")?)?,
            get_n(i, "detect_version")?,
        ),
        drift_detected: get_b(i, "drift_detected"),
        remediation: match (opt_s(i, "remediate_id"), opt_n(i, "remediate_version")) {
            (Some(d), Some(v)) => Some((stored_id(&d)?, v)),
            _ => None,
        },
    })
}

#[async_trait]
impl DriftStore for DynamoStore {
    async fn record_drift_run(&self, run: &DriftRun) -> Result<()> {
        let mut item = key(
            stack_pk(&run.stack),
            format!("DRIFT#{}#{}", pad(to_micros(run.created)), run.id),
        );
        item.insert("id".into(), s(run.id.to_string()));
        item.insert("created".into(), n(to_micros(run.created)));
        item.insert("detect_id".into(), s(run.detect.0.to_string()));
        item.insert("detect_version".into(), n(run.detect.1));
        item.insert("drift_detected".into(), b(run.drift_detected));
        if let Some((d, v)) = run.remediation {
            item.insert("remediate_id".into(), s(d.to_string()));
            item.insert("remediate_version".into(), n(v));
        }
        self.put(item).await
    }

    async fn link_remediation(
        &self,
        stack: &StackRef,
        run: Uuid,
        remediation: (Uuid, i64),
    ) -> Result<()> {
        let item = self
            .drift_item(stack, run)
            .await?
            .ok_or_else(|| Error::not_found("drift run not found"))?;
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(get_s(&item, "pk")?, get_s(&item, "sk")?)))
            .update_expression("SET #remediate_id = :i, #remediate_version = :v")
            .set_expression_attribute_names(names(&["#remediate_id #remediate_version"]))
            .expression_attribute_values(":i", s(remediation.0.to_string()))
            .expression_attribute_values(":v", n(remediation.1))
            .send()
            .await
            .map_err(|e| aws_err("UpdateItem", e))?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn drift_runs(&self, stack: &StackRef, page: PageRequest) -> Result<Page<DriftRun>> {
        let cond = "pk = :pk AND begins_with(sk, :p)";
        let vals = || vec![(":pk", s(stack_pk(stack))), (":p", s("DRIFT#"))];
        let total = self.count(None, cond, vals()).await?;
        let skip = (page.page.saturating_sub(1) as usize) * page.page_size as usize;
        let items = self
            .query(
                None,
                cond,
                vals(),
                page.ascending,
                Some(skip + page.page_size as usize),
            )
            .await?;
        let items = items
            .iter()
            .skip(skip)
            .take(page.page_size as usize)
            .map(|i| drift_from(stack, i))
            .collect::<Result<_>>()?;
        Ok(Page { items, total })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn drift_run(&self, stack: &StackRef, id: Uuid) -> Result<Option<DriftRun>> {
        self.drift_item(stack, id)
            .await?
            .map(|i| drift_from(stack, &i))
            .transpose()
    }
}
