//! The `StackStore` and `OrgStore` ports.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnValue;
use serde_json::Value;
use time::OffsetDateTime;

use super::*;
use crate::aws::item::*;
use crate::domain::gitsync::{DueSync, GitSync, SyncState};
use crate::domain::stacks::{StackInfo, Tags};
use crate::domain::time_fmt::{from_micros, to_micros};
use crate::domain::*;
use crate::error::{Error, Result};
use crate::ports::*;
use crate::store_codec::stored_id;

/// The `gsi1` partition of stacks whose git sync is on, sorted by their next check.
const GIT_SYNC: &str = "GITSYNC";

/// Clearing a stack's settings turns its git sync off.
const REMOVE_SETTINGS: &str = "REMOVE #settings, #sync_next, #sync_state, #gsi1pk, #gsi1sk";

fn sync_key(next_us: i64, stack: &StackRef) -> String {
    format!("{}#{stack}", pad(next_us))
}

fn sync_state(item: &Item) -> Result<SyncState> {
    Ok(match opt_s(item, "sync_state") {
        Some(raw) => serde_json::from_str(&raw)?,
        None => SyncState::default(),
    })
}

impl DynamoStore {
    pub(super) async fn stack_item(&self, stack: &StackRef) -> Result<Option<Item>> {
        self.get(key(stack_pk(stack), STACK_SK)).await
    }

    /// A stack item as the stack resource shows it.
    pub(super) fn stack_info(item: &Item) -> Result<StackInfo> {
        Ok(StackInfo {
            stack: StackRef {
                org: get_s(item, "org")?,
                project: get_s(item, "project")?,
                stack: get_s(item, "stack")?,
            },
            created: from_micros(get_n(item, "created")?),
            tags: match opt_s(item, "tags") {
                Some(t) => serde_json::from_str(&t)?,
                None => Tags::new(),
            },
            update_version: opt_n(item, "update_seq").unwrap_or(0),
            resource_count: opt_n(item, "resource_count"),
            active: opt_s(item, "active").map(|a| stored_id(&a)).transpose()?,
            paused: get_b(item, "paused"),
        })
    }

    /// Every stack item of an org (the `gsi2` partition `ORG#{org}#STACKS`).
    pub(super) async fn org_stack_items(&self, org: &str) -> Result<Vec<Item>> {
        self.query(
            Some("gsi2"),
            "gsi2pk = :pk",
            vec![(":pk", s(org_stacks(org)))],
            true,
            None,
        )
        .await
    }
}

#[async_trait]
impl StackStore for DynamoStore {
    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn create_stack(&self, stack: &StackRef) -> Result<()> {
        let item = new_stack_item(stack);
        let r = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match checked("PutItem", r)? {
            Some(_) => Ok(()),
            None => Err(Error::conflict(format!("stack '{stack}' already exists"))),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn stack_exists(&self, stack: &StackRef) -> Result<bool> {
        Ok(self.stack_item(stack).await?.is_some())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn delete_stack(&self, stack: &StackRef) -> Result<()> {
        let spk = stack_pk(stack);
        for _ in 0..RETRIES {
            let st = self
                .stack_item(stack)
                .await?
                .ok_or_else(|| Error::not_found(format!("stack '{stack}' not found")))?;
            if opt_s(&st, "active").is_some() {
                return Err(Error::conflict(format!(
                    "stack '{stack}' has a deployment in progress; cancel it or wait for it to finish"
                )));
            }
            let last = get_n(&st, "last_version")?;
            // Children first; the stack item last, on condition nothing was added meanwhile.
            let deps = self
                .query(
                    None,
                    "pk = :pk AND begins_with(sk, :dep)",
                    vec![(":pk", s(&spk)), (":dep", s("DEP#"))],
                    true,
                    None,
                )
                .await?;
            for d in &deps {
                let id = stored_id(&get_s(d, "id")?)?;
                let chunks = self
                    .query(None, "pk = :pk", vec![(":pk", s(log_pk(id)))], true, None)
                    .await?;
                for c in chunks {
                    let k = key(get_s(&c, "pk")?, get_s(&c, "sk")?);
                    self.client
                        .delete_item()
                        .table_name(&self.table)
                        .set_key(Some(k))
                        .send()
                        .await
                        .map_err(|e| aws_err("DeleteItem", e))?;
                }
                let mut tx = self.tx();
                tx.delete(key(&spk, get_s(d, "sk")?), None);
                tx.delete(ptr_key(id), None);
                if self.commit(tx).await?.is_err() {
                    return Err(Error::conflict("the stack is changing; retry"));
                }
                self.locations
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
            }
            self.delete_schedules_and_drift(&spk).await?;
            let r = self
                .client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(&spk, STACK_SK)))
                .condition_expression("#last_version = :last AND attribute_not_exists(#active)")
                .set_expression_attribute_names(names(&["#last_version #active"]))
                .expression_attribute_values(":last", n(last))
                .send()
                .await;
            match checked("DeleteItem", r)? {
                Some(_) => return Ok(()),
                None => {
                    continue;
                }
            }
        }
        Err(Error::conflict("the stack is changing; retry"))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn get_settings(&self, stack: &StackRef) -> Result<Option<VersionedSettings>> {
        let Some(st) = self.stack_item(stack).await? else {
            return Ok(None);
        };
        match opt_s(&st, "settings") {
            Some(raw) => Ok(Some(VersionedSettings {
                settings: serde_json::from_str(&raw)?,
                version: get_n(&st, "settings_version")?,
            })),
            None => Ok(None),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn put_settings(&self, stack: &StackRef, settings: &Value, expected: i64) -> Result<i64> {
        let cond = if expected == 0 {
            "attribute_not_exists(#settings)"
        } else {
            "attribute_exists(#settings) AND #settings_version = :expected"
        };
        // The git sync's index entry (`gsi1`, partition `GITSYNC`) is on while `gitSync` is.
        let sync_on = matches!(GitSync::from_settings(settings), Ok(Some(_)));
        let sync = if sync_on {
            ", #sync_next = if_not_exists(#sync_next, :now), #gsi1pk = :sync_pk, \
             #gsi1sk = if_not_exists(#gsi1sk, :sync_sk)"
        } else {
            " REMOVE #sync_next, #sync_state, #gsi1pk, #gsi1sk"
        };
        let set = format!(
            "SET #settings = :settings, #settings_version = if_not_exists(#settings_version, :zero) + :one, \
             #org = :org, #project = :project, #stack = :stack, #created = if_not_exists(#created, :now), \
             #last_version = if_not_exists(#last_version, :zero), #paused = if_not_exists(#paused, :false), \
             #gsi2pk = :gsi2pk, #gsi2sk = :gsi2sk{sync}"
        );
        let now = now_us();
        let mut vals = vec![
            (":settings", s(serde_json::to_string(settings)?)),
            (":zero", n(0)),
            (":one", n(1)),
            (":org", s(&stack.org)),
            (":project", s(&stack.project)),
            (":stack", s(&stack.stack)),
            (":now", n(now)),
            (":false", b(false)),
            (":gsi2pk", s(org_stacks(&stack.org))),
            (":gsi2sk", s(format!("{}/{}", stack.project, stack.stack))),
        ];
        if sync_on {
            vals.push((":sync_pk", s(GIT_SYNC)));
            vals.push((":sync_sk", s(sync_key(now, stack))));
        }
        if expected != 0 {
            vals.push((":expected", n(expected)));
        }
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(stack_pk(stack), STACK_SK)))
            .update_expression(&set)
            .condition_expression(cond)
            .set_expression_attribute_names(names(&[&set, cond]))
            .set_expression_attribute_values(values(vals))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        match checked("UpdateItem", r)? {
            Some(out) => get_n(&out.attributes.unwrap_or_default(), "settings_version"),
            None => Err(Error::conflict("settings changed concurrently; retry")),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn delete_settings(&self, stack: &StackRef, expected: i64) -> Result<bool> {
        let cond = if expected == 0 {
            "attribute_exists(pk) AND attribute_not_exists(#settings)"
        } else {
            "attribute_exists(pk) AND attribute_exists(#settings) AND #settings_version = :expected"
        };
        let vals = (expected != 0).then(|| values(vec![(":expected", n(expected))]));
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(stack_pk(stack), STACK_SK)))
            .update_expression(REMOVE_SETTINGS)
            .condition_expression(cond)
            .set_expression_attribute_names(names(&[REMOVE_SETTINGS, cond]))
            .set_expression_attribute_values(vals.flatten())
            .send()
            .await;
        match checked("UpdateItem", r)? {
            Some(_) => Ok(expected != 0),
            None if self.stack_item(stack).await?.is_none() => {
                Err(Error::not_found(format!("stack '{stack}' not found")))
            }
            None => Err(Error::conflict("settings changed concurrently; retry")),
        }
    }

    async fn due_syncs(&self, now: OffsetDateTime, limit: usize) -> Result<Vec<DueSync>> {
        // '~' sorts after every stack character, so checks due exactly at `now` are included.
        let upto = format!("{}#~", pad(to_micros(now)));
        let items = self
            .query(
                Some("gsi1"),
                "gsi1pk = :pk AND gsi1sk <= :t",
                vec![(":pk", s(GIT_SYNC)), (":t", s(upto))],
                true,
                Some(limit),
            )
            .await?;
        items
            .iter()
            .take(limit)
            .map(|item| {
                Ok(DueSync {
                    stack: Self::stack_info(item)?.stack,
                    settings: match opt_s(item, "settings") {
                        Some(raw) => serde_json::from_str(&raw)?,
                        None => Value::Null,
                    },
                    state: sync_state(item)?,
                    next_check: from_micros(get_n(item, "sync_next")?),
                    paused: get_b(item, "paused"),
                })
            })
            .collect()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn record_sync(
        &self,
        stack: &StackRef,
        expected: OffsetDateTime,
        state: &SyncState,
        next: OffsetDateTime,
    ) -> Result<bool> {
        let set = "SET #sync_state = :state, #sync_next = :next, #gsi1sk = :sk";
        let cond = "#sync_next = :expected";
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(stack_pk(stack), STACK_SK)))
            .update_expression(set)
            .condition_expression(cond)
            .set_expression_attribute_names(names(&[set, cond]))
            .set_expression_attribute_values(values(vec![
                (":state", s(serde_json::to_string(state)?)),
                (":next", n(to_micros(next))),
                (":sk", s(sync_key(to_micros(next), stack))),
                (":expected", n(to_micros(expected))),
            ]))
            .send()
            .await;
        Ok(checked("UpdateItem", r)?.is_some())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn get_sync(&self, stack: &StackRef) -> Result<Option<(SyncState, OffsetDateTime)>> {
        let Some(item) = self.stack_item(stack).await? else {
            return Ok(None);
        };
        match opt_n(&item, "sync_next") {
            Some(next) => Ok(Some((sync_state(&item)?, from_micros(next)))),
            None => Ok(None),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn set_stack_paused(&self, stack: &StackRef, paused: bool) -> Result<()> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(stack_pk(stack), STACK_SK)))
            .update_expression("SET #paused = :p")
            .condition_expression("attribute_exists(pk)")
            .set_expression_attribute_names(names(&["#paused"]))
            .expression_attribute_values(":p", b(paused))
            .send()
            .await;
        match checked("UpdateItem", r)? {
            Some(_) => Ok(()),
            None => Err(Error::not_found("stack not found")),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn stack_paused(&self, stack: &StackRef) -> Result<Option<bool>> {
        Ok(self.stack_item(stack).await?.map(|st| get_b(&st, "paused")))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn get_outputs(&self, stack: &StackRef) -> Result<Option<Value>> {
        let Some(st) = self.stack_item(stack).await? else {
            return Ok(None);
        };
        match opt_s(&st, "outputs") {
            Some(raw) => Ok(Some(serde_json::from_str(&raw)?)),
            None => Ok(Some(Value::Object(Default::default()))),
        }
    }

    async fn list_stack_settings(&self, org: &str) -> Result<Vec<(StackRef, Value)>> {
        let mut out = Vec::new();
        for st in self.org_stack_items(org).await? {
            if let Some(raw) = opt_s(&st, "settings") {
                out.push((stack_of(&st)?, serde_json::from_str(&raw)?));
            }
        }
        Ok(out)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn get_stack(&self, stack: &StackRef) -> Result<Option<StackInfo>> {
        self.stack_item(stack)
            .await?
            .map(|item| Self::stack_info(&item))
            .transpose()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org))]
    async fn list_stacks(&self, org: &str) -> Result<Vec<StackInfo>> {
        // The index sorts by `project/stack`.
        self.org_stack_items(org)
            .await?
            .iter()
            .map(Self::stack_info)
            .collect()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn replace_tags(&self, stack: &StackRef, tags: &Tags, expected: &Tags) -> Result<()> {
        // Tags are stored as their JSON, which serialises a map in key order: equal maps have
        // equal text, so the condition compares the whole map.
        let old = serde_json::to_string(expected)?;
        let cond = if expected.is_empty() {
            "attribute_exists(pk) AND (attribute_not_exists(#tags) OR #tags = :old)"
        } else {
            "attribute_exists(pk) AND #tags = :old"
        };
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(stack_pk(stack), STACK_SK)))
            .update_expression("SET #tags = :new")
            .condition_expression(cond)
            .set_expression_attribute_names(names(&["#tags"]))
            .expression_attribute_values(":new", s(serde_json::to_string(tags)?))
            .expression_attribute_values(":old", s(old))
            .send()
            .await;
        match checked("UpdateItem", r)? {
            Some(_) => Ok(()),
            None if self.stack_item(stack).await?.is_none() => {
                Err(Error::not_found(format!("stack '{stack}' not found")))
            }
            None => Err(Error::conflict(format!(
                "the tags of stack '{stack}' changed meanwhile"
            ))),
        }
    }
}

/// The stack a deployment item belongs to.
pub(super) fn stack_of(d: &Item) -> Result<StackRef> {
    Ok(StackRef {
        org: get_s(d, "org")?,
        project: get_s(d, "project")?,
        stack: get_s(d, "stack")?,
    })
}

pub(super) fn new_stack_item(stack: &StackRef) -> Item {
    let mut item = key(stack_pk(stack), STACK_SK);
    item.insert("org".into(), s(&stack.org));
    item.insert("project".into(), s(&stack.project));
    item.insert("stack".into(), s(&stack.stack));
    item.insert("created".into(), n(now_us()));
    item.insert("paused".into(), b(false));
    item.insert("settings_version".into(), n(0));
    item.insert("last_version".into(), n(0));
    item.insert("gsi2pk".into(), s(org_stacks(&stack.org)));
    item.insert(
        "gsi2sk".into(),
        s(format!("{}/{}", stack.project, stack.stack)),
    );
    item
}

#[async_trait]
impl OrgStore for DynamoStore {
    async fn set_org_paused(&self, org: &str, paused: bool) -> Result<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(org_key(org)))
            .update_expression("SET #paused = :p")
            .set_expression_attribute_names(names(&["#paused"]))
            .expression_attribute_values(":p", b(paused))
            .send()
            .await
            .map_err(|e| aws_err("UpdateItem", e))?;
        Ok(())
    }

    async fn org_paused(&self, org: &str) -> Result<bool> {
        Ok(self
            .get(org_key(org))
            .await?
            .is_some_and(|o| get_b(&o, "paused")))
    }

    async fn org_limit(&self, org: &str) -> Result<OrgLimit> {
        let item = self.get(org_key(org)).await?;
        Ok(OrgLimit {
            max_concurrent: item
                .as_ref()
                .and_then(|o| opt_n(o, "max_concurrent"))
                .map(|m| m as u32),
            running: item
                .as_ref()
                .and_then(|o| opt_n(o, "running"))
                .unwrap_or(0)
                .max(0) as u64,
        })
    }

    async fn set_org_limit(&self, org: &str, max_concurrent: Option<u32>) -> Result<()> {
        let req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(org_key(org)))
            .set_expression_attribute_names(names(&["#max_concurrent"]));
        let req = match max_concurrent {
            Some(m) => req
                .update_expression("SET #max_concurrent = :m")
                .expression_attribute_values(":m", n(i64::from(m))),
            None => req.update_expression("REMOVE #max_concurrent"),
        };
        req.send().await.map_err(|e| aws_err("UpdateItem", e))?;
        Ok(())
    }

    async fn get_integration(&self, org: &str, kind: &str) -> Result<Option<Value>> {
        let item = self
            .get(key(format!("ORG#{org}"), format!("INTEGRATION#{kind}")))
            .await?;
        item.map(|i| Ok(serde_json::from_str(&get_s(&i, "config")?)?))
            .transpose()
    }

    async fn put_integration(&self, org: &str, kind: &str, config: Option<&Value>) -> Result<()> {
        let item_key = key(format!("ORG#{org}"), format!("INTEGRATION#{kind}"));
        match config {
            Some(cfg) => {
                let mut item = item_key;
                item.insert("config".into(), s(serde_json::to_string(cfg)?));
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .send()
                    .await
                    .map_err(|e| aws_err("PutItem", e))?;
            }
            None => {
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(item_key))
                    .send()
                    .await
                    .map_err(|e| aws_err("DeleteItem", e))?;
            }
        }
        Ok(())
    }

    async fn org_state(&self, org: &str) -> Result<OrgState> {
        let paused = self
            .get(org_key(org))
            .await?
            .is_some_and(|o| get_b(&o, "paused"));
        let stacks = self.org_stack_items(org).await?;
        let paused_stacks = stacks
            .iter()
            .filter(|st| get_b(st, "paused"))
            .filter_map(|st| opt_s(st, "gsi2sk"))
            .collect();
        let deps = self
            .query(
                Some("gsi2"),
                "gsi2pk = :pk",
                vec![(":pk", s(org_deps(org)))],
                true,
                None,
            )
            .await?;
        let mut counts = StatusCounts::default();
        for d in deps {
            *counts.0.entry(get_s(&d, "status")?.parse()?).or_insert(0) += 1;
        }
        Ok(OrgState {
            paused,
            paused_stacks,
            counts,
        })
    }
}
