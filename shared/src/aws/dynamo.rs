//! The DynamoDB adapter: every store port on one table (API tokens optionally on a second). See
//! `TABLE.md` beside this file for the keys, indexes and access patterns.
//!
//! Every read is a GetItem or a Query; every state change is a conditional write, and a lost
//! race surfaces as `Error::Conflict`. Multi-item changes are transactions.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, Put, ReturnValue, Select, TransactWriteItem, Update,
};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::item::*;
use crate::domain::time_fmt::{from_micros, to_micros};
use crate::domain::*;
use crate::error::{Error, Result};
use crate::ports::*;
use crate::store_codec::{
    StoredStep, close_running, closing_step_status, decode_steps, stored_id, to_domain_steps,
};

/// Log chunks stay well below DynamoDB's 400 KB item limit.
const CHUNK_BYTES: usize = 256 * 1024;
/// Log chunks expire (DynamoDB TTL) this long after they are written.
const LOG_TTL: Duration = Duration::from_secs(90 * 86_400);
/// Optimistic writes retry this often before reporting a conflict.
const RETRIES: usize = 20;

pub struct DynamoStore {
    pub(super) client: Client,
    pub(super) table: String,
    /// API tokens and redeemed bootstrap secrets: `table` unless set apart, so that IAM can keep
    /// every function but the API away from them.
    token_table: String,
    /// Deployment id -> (stack partition, version). Immutable once written, so safe to cache.
    locations: Mutex<HashMap<Uuid, (String, i64)>>,
}

pub(super) fn aws_err<E>(op: &str, e: SdkError<E>) -> Error
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + Send + Sync + 'static,
{
    super::sdk_error(format!("DynamoDB {op}"), e)
}

/// Operation errors that can report a failed write condition.
pub(super) trait ConditionalError:
    std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + Send + Sync + 'static
{
    fn condition_failed(&self) -> bool;
}

macro_rules! conditional_error {
    ($($t:ty),*) => {$(
        impl ConditionalError for $t {
            fn condition_failed(&self) -> bool {
                self.is_conditional_check_failed_exception()
            }
        }
    )*};
}

conditional_error!(
    aws_sdk_dynamodb::operation::put_item::PutItemError,
    aws_sdk_dynamodb::operation::update_item::UpdateItemError,
    aws_sdk_dynamodb::operation::delete_item::DeleteItemError
);

/// A conditional write's result: `None` when its condition failed, the caller's typed case.
pub(super) fn checked<T, E: ConditionalError>(
    op: &str,
    r: std::result::Result<T, SdkError<E>>,
) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e)
            if e.as_service_error()
                .is_some_and(ConditionalError::condition_failed) =>
        {
            Ok(None)
        }
        Err(e) => Err(aws_err(op, e)),
    }
}

pub(super) fn stack_pk(stack: &StackRef) -> String {
    format!("STACK#{stack}")
}
pub(super) const STACK_SK: &str = "#STACK";
pub(super) fn dep_sk(version: i64) -> String {
    format!("DEP#{}", pad(version))
}
fn ptr_key(id: Uuid) -> Item {
    key(format!("DEPID#{id}"), "#DEPID")
}
fn log_pk(id: Uuid) -> String {
    format!("LOG#{id}")
}
fn org_key(org: &str) -> Item {
    key(format!("ORG#{org}"), "#ORG")
}
fn org_deps(org: &str) -> String {
    format!("ORG#{org}#DEPS")
}
fn org_stacks(org: &str) -> String {
    format!("ORG#{org}#STACKS")
}
const QUEUED: &str = "QUEUED";
const LEASED: &str = "LEASED";

pub(super) fn now_us() -> i64 {
    to_micros(OffsetDateTime::now_utc())
}

/// Collects the items of one `TransactWriteItems`.
pub(super) struct Tx {
    table: String,
    items: Vec<TransactWriteItem>,
}

impl Tx {
    pub(super) fn put(
        &mut self,
        item: Item,
        cond: Option<&str>,
        vals: Vec<(&str, AttributeValue)>,
    ) {
        let mut p = Put::builder().table_name(&self.table).set_item(Some(item));
        if let Some(c) = cond {
            p = p
                .condition_expression(c)
                .set_expression_attribute_names(names(&[c]));
        }
        let p = p
            .set_expression_attribute_values(values(vals))
            .build()
            .expect("table and item are set");
        self.items.push(TransactWriteItem::builder().put(p).build());
    }

    pub(super) fn update(
        &mut self,
        key: Item,
        set: &str,
        cond: Option<&str>,
        vals: Vec<(&str, AttributeValue)>,
    ) {
        let exprs: Vec<&str> = std::iter::once(set).chain(cond).collect();
        let u = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key))
            .update_expression(set)
            .set_condition_expression(cond.map(str::to_string))
            .set_expression_attribute_names(names(&exprs))
            .set_expression_attribute_values(values(vals))
            .build()
            .expect("table, key and expression are set");
        self.items
            .push(TransactWriteItem::builder().update(u).build());
    }

    pub(super) fn check(&mut self, key: Item, cond: &str, vals: Vec<(&str, AttributeValue)>) {
        let c = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(key))
            .condition_expression(cond)
            .set_expression_attribute_names(names(&[cond]))
            .set_expression_attribute_values(values(vals))
            .build()
            .expect("table, key and condition are set");
        self.items
            .push(TransactWriteItem::builder().condition_check(c).build());
    }

    pub(super) fn delete(&mut self, key: Item, cond: Option<&str>) {
        let d = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key))
            .set_condition_expression(cond.map(str::to_string))
            .set_expression_attribute_names(cond.and_then(|c| names(&[c])))
            .build()
            .expect("table and key are set");
        self.items
            .push(TransactWriteItem::builder().delete(d).build());
    }
}

/// The mutable part of a deployment that run-side writes change, read before and written back
/// under a condition on `log_seq`, so concurrent writers cannot interleave.
struct RunState {
    steps: Vec<StoredStep>,
    log_seq: i64,
    lines: Vec<Value>,
    /// Each step's line count, so lines are numbered within their step.
    step_lines: HashMap<usize, i64>,
}

impl RunState {
    fn log(&mut self, step: usize, ts: i64, header: Option<&str>, line: Option<&str>) {
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
}

/// Clauses a run-side write adds to the deployment's update, beyond steps and logs.
#[derive(Default)]
struct Extra<'a> {
    set: &'a str,
    remove: &'a str,
    vals: Vec<(&'a str, AttributeValue)>,
}

/// Who may make a run-side write.
#[derive(Clone, Copy)]
enum Guard<'a> {
    /// The lease holder, while the deployment is in one of these statuses.
    Lease(&'a Lease, &'static [JobStatus]),
    /// Anyone, while the deployment is in one of these statuses (cancel).
    Status(&'static [JobStatus]),
    /// The reaper: while the deployment is in one of these statuses and its lease expired
    /// before this time (µs). A heartbeat that renews the lease meanwhile wins.
    Expired(&'static [JobStatus], i64),
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        let table = table.into();
        Self {
            client,
            token_table: table.clone(),
            table,
            locations: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps tokens in a table of their own (`TARMAC_TOKEN_TABLE`), same key schema.
    pub fn with_token_table(mut self, table: impl Into<String>) -> Self {
        self.token_table = table.into();
        self
    }

    pub(super) async fn commit(&self, tx: Tx) -> Result<std::result::Result<(), Vec<String>>> {
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(tx.items))
            .send()
            .await
        {
            Ok(_) => Ok(Ok(())),
            // A condition failed or another transaction touched the same items: the caller
            // decides whether to re-read and retry.
            Err(e) => match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(t)) => Ok(Err(t
                    .cancellation_reasons()
                    .iter()
                    .map(|r| r.code().unwrap_or("None").to_string())
                    .collect())),
                _ => Err(aws_err("TransactWriteItems", e)),
            },
        }
    }

    pub(super) fn tx(&self) -> Tx {
        Tx {
            table: self.table.clone(),
            items: vec![],
        }
    }

    pub(super) async fn get(&self, key: Item) -> Result<Option<Item>> {
        self.get_from(&self.table, key).await
    }

    async fn get_from(&self, table: &str, key: Item) -> Result<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_err("GetItem", e))?;
        Ok(out.item)
    }

    /// Every item of a query, following pages.
    pub(super) async fn query(
        &self,
        index: Option<&str>,
        cond: &str,
        vals: Vec<(&str, AttributeValue)>,
        forward: bool,
        limit: Option<usize>,
    ) -> Result<Vec<Item>> {
        let mut out = Vec::new();
        let mut start = None;
        let vals = values(vals);
        loop {
            let resp = self
                .client
                .query()
                .table_name(&self.table)
                .set_index_name(index.map(str::to_string))
                .key_condition_expression(cond)
                .set_expression_attribute_names(names(&[cond]))
                .set_expression_attribute_values(vals.clone())
                .scan_index_forward(forward)
                .consistent_read(index.is_none())
                .set_limit(limit.map(|l| (l.saturating_sub(out.len())).clamp(1, 1000) as i32))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| aws_err("Query", e))?;
            out.extend(resp.items.unwrap_or_default());
            start = resp.last_evaluated_key;
            if start.is_none() || limit.is_some_and(|l| out.len() >= l) {
                return Ok(out);
            }
        }
    }

    pub(super) async fn count(
        &self,
        index: Option<&str>,
        cond: &str,
        vals: Vec<(&str, AttributeValue)>,
    ) -> Result<u64> {
        let mut total = 0u64;
        let mut start = None;
        let vals = values(vals);
        loop {
            let resp = self
                .client
                .query()
                .table_name(&self.table)
                .set_index_name(index.map(str::to_string))
                .key_condition_expression(cond)
                .set_expression_attribute_names(names(&[cond]))
                .set_expression_attribute_values(vals.clone())
                .select(Select::Count)
                .consistent_read(index.is_none())
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| aws_err("Query", e))?;
            total += resp.count.max(0) as u64;
            start = resp.last_evaluated_key;
            if start.is_none() {
                return Ok(total);
            }
        }
    }

    async fn stack_item(&self, stack: &StackRef) -> Result<Option<Item>> {
        self.get(key(stack_pk(stack), STACK_SK)).await
    }

    /// Where a deployment lives: its stack's partition and its version.
    async fn locate(&self, id: Uuid) -> Result<Option<(String, i64)>> {
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

    /// Every stack item of an org (the `gsi2` partition `ORG#{org}#STACKS`).
    async fn org_stack_items(&self, org: &str) -> Result<Vec<Item>> {
        self.query(
            Some("gsi2"),
            "gsi2pk = :pk",
            vec![(":pk", s(org_stacks(org)))],
            true,
            None,
        )
        .await
    }

    async fn locate_or_conflict(&self, id: Uuid) -> Result<(String, i64)> {
        self.locate(id)
            .await?
            .ok_or_else(|| Error::conflict(format!("deployment {id} does not exist")))
    }

    fn to_deployment(&self, d: &Item, stack: &Item) -> Result<Deployment> {
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
        })
    }

    /// A deployment of `stack` (by version), with the stack item it is read against.
    async fn deployment_at(&self, spk: &str, version: i64) -> Result<Option<Deployment>> {
        let Some(d) = self.get(key(spk, dep_sk(version))).await? else {
            return Ok(None);
        };
        let Some(stack) = self.get(key(spk, STACK_SK)).await? else {
            return Ok(None);
        };
        self.to_deployment(&d, &stack).map(Some)
    }

    /// Applies `f` to a deployment's run state and writes it back with the extra `set` clauses,
    /// retrying if another writer got in between. `f` returns a value for the caller.
    async fn write_run<T>(
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
            let cond = match guard {
                Guard::Expired(_, before) => {
                    vals.push((":expired_before", n(before)));
                    "#log_seq = :old_seq AND #status = :status AND #lease_expires < :expired_before"
                }
                _ => "#log_seq = :old_seq AND #status = :status",
            };
            tx.update(dkey.clone(), &set, Some(cond), vals);
            also(&mut tx, &item);
            self.put_log_chunks(&mut tx, id, &st.lines)?;
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

    fn put_log_chunks(&self, tx: &mut Tx, id: Uuid, lines: &[Value]) -> Result<()> {
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

    /// A stack's queued deployments, oldest first. Claims always take a stack's oldest queued
    /// deployment, so every queued one is newer than every deployment that ever started: the
    /// stack's history is read backwards only until the first started one, not in full.
    async fn queued_of_stack(&self, spk: &str) -> Result<Vec<Item>> {
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
                .projection_expression("version, #status, operation, skip_intermediate")
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
    async fn page(
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

    async fn with_stacks(&self, items: Vec<Item>) -> Result<Vec<Deployment>> {
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
            out.push(self.to_deployment(&d, &stacks[&spk])?);
        }
        Ok(out)
    }

    /// Ends a deployment under `guard`: status, running steps closed, lease and slot released,
    /// and an optional last log line.
    async fn end(
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
                remove: "#lease_owner, #lease_expires, #gsi1pk, #gsi1sk",
                vals: vec![(":final", s(status.as_str()))],
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

#[async_trait]
impl StackStore for DynamoStore {
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

    async fn stack_exists(&self, stack: &StackRef) -> Result<bool> {
        Ok(self.stack_item(stack).await?.is_some())
    }

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

    async fn put_settings(&self, stack: &StackRef, settings: &Value, expected: i64) -> Result<i64> {
        let cond = if expected == 0 {
            "attribute_not_exists(#settings)"
        } else {
            "attribute_exists(#settings) AND #settings_version = :expected"
        };
        let set = "SET #settings = :settings, #settings_version = if_not_exists(#settings_version, :zero) + :one, \
                   #org = :org, #project = :project, #stack = :stack, #created = if_not_exists(#created, :now), \
                   #last_version = if_not_exists(#last_version, :zero), #paused = if_not_exists(#paused, :false), \
                   #gsi2pk = :gsi2pk, #gsi2sk = :gsi2sk";
        let mut vals = vec![
            (":settings", s(serde_json::to_string(settings)?)),
            (":zero", n(0)),
            (":one", n(1)),
            (":org", s(&stack.org)),
            (":project", s(&stack.project)),
            (":stack", s(&stack.stack)),
            (":now", n(now_us())),
            (":false", b(false)),
            (":gsi2pk", s(org_stacks(&stack.org))),
            (":gsi2sk", s(format!("{}/{}", stack.project, stack.stack))),
        ];
        if expected != 0 {
            vals.push((":expected", n(expected)));
        }
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(stack_pk(stack), STACK_SK)))
            .update_expression(set)
            .condition_expression(cond)
            .set_expression_attribute_names(names(&[set, cond]))
            .set_expression_attribute_values(values(vals))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        match checked("UpdateItem", r)? {
            Some(out) => get_n(&out.attributes.unwrap_or_default(), "settings_version"),
            None => Err(Error::conflict("settings changed concurrently; retry")),
        }
    }

    async fn delete_settings(&self, stack: &StackRef) -> Result<bool> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(stack_pk(stack), STACK_SK)))
            .update_expression("REMOVE #settings")
            .condition_expression("attribute_exists(pk)")
            .set_expression_attribute_names(names(&["#settings"]))
            .return_values(ReturnValue::UpdatedOld)
            .send()
            .await;
        match checked("UpdateItem", r)? {
            Some(out) => Ok(out.attributes.is_some_and(|a| a.contains_key("settings"))),
            None => Err(Error::not_found(format!("stack '{stack}' not found"))),
        }
    }

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

    async fn stack_paused(&self, stack: &StackRef) -> Result<Option<bool>> {
        Ok(self.stack_item(stack).await?.map(|st| get_b(&st, "paused")))
    }

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
}

/// The stack a deployment item belongs to.
fn stack_of(d: &Item) -> Result<StackRef> {
    Ok(StackRef {
        org: get_s(d, "org")?,
        project: get_s(d, "project")?,
        stack: get_s(d, "stack")?,
    })
}

fn new_stack_item(stack: &StackRef) -> Item {
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

#[async_trait]
impl TokenStore for DynamoStore {
    async fn create_token(&self, hash: &str, org: &str, role: Role, name: &str) -> Result<()> {
        let tx = self.token_tx(hash, org, role, name);
        match self.commit(tx).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::conflict("token already exists")),
        }
    }

    async fn redeem_bootstrap(
        &self,
        secret_hash: &str,
        hash: &str,
        org: &str,
        name: &str,
    ) -> Result<()> {
        // A transaction that lost a race with another write of the token count is retried;
        // only the marker's condition means the secret was used.
        for _ in 0..5 {
            let mut tx = self.token_tx(hash, org, Role::Admin, name);
            let mut marker = key(format!("BOOTSTRAP#{secret_hash}"), "#BOOTSTRAP");
            marker.insert("org".into(), s(org));
            marker.insert("redeemed".into(), n(now_us()));
            tx.put(marker, Some("attribute_not_exists(pk)"), vec![]);
            match self.commit(tx).await? {
                Ok(()) => return Ok(()),
                Err(reasons)
                    if reasons
                        .get(2)
                        .is_some_and(|r| r == "ConditionalCheckFailed") =>
                {
                    return Err(Error::conflict(BOOTSTRAP_USED));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        Err(Error::internal("the bootstrap write kept conflicting"))
    }

    async fn find_token(&self, hash: &str) -> Result<Option<Principal>> {
        let Some(t) = self
            .get_from(&self.token_table, key(format!("TOKEN#{hash}"), "#TOKEN"))
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(Principal {
            org: get_s(&t, "org")?,
            role: get_s(&t, "role")?.parse()?,
            token_name: get_s(&t, "name")?,
        }))
    }

    async fn token_count(&self) -> Result<u64> {
        Ok(self
            .get_from(&self.token_table, key("META", "TOKENS"))
            .await?
            .and_then(|c| opt_n(&c, "count"))
            .unwrap_or(0) as u64)
    }
}

impl DynamoStore {
    /// A transaction on the token table that creates a token and counts it.
    fn token_tx(&self, hash: &str, org: &str, role: Role, name: &str) -> Tx {
        let mut item = key(format!("TOKEN#{hash}"), "#TOKEN");
        item.insert("org".into(), s(org));
        item.insert("role".into(), s(role.as_str()));
        item.insert("name".into(), s(name));
        item.insert("created".into(), n(now_us()));
        let mut tx = Tx {
            table: self.token_table.clone(),
            items: vec![],
        };
        tx.put(item, Some("attribute_not_exists(pk)"), vec![]);
        tx.update(
            key("META", "TOKENS"),
            "ADD #count :one",
            None,
            vec![(":one", n(1))],
        );
        tx
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
                ("gsi1pk", s(QUEUED)),
                ("gsi1sk", s(format!("{}#{}", pad(now), new.id))),
                ("gsi2pk", s(org_deps(&new.stack.org))),
                ("gsi2sk", s(format!("{}#{}", pad(now), new.id))),
            ] {
                d.insert(k.into(), v);
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
        self.to_deployment(&d, &stack_item).map(Some)
    }

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
        let org_paused = self
            .get(org_key(&stack.org))
            .await?
            .is_some_and(|o| get_b(&o, "paused"));
        if get_b(&st, "paused") || org_paused {
            return Ok(ClaimOutcome::Paused);
        }
        // Queued ahead of it, or the slot taken: the stack's order must hold.
        let queued = self.queued_of_stack(&spk).await?;
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
        let mut tx = self.tx();
        tx.update(
            key(&spk, dep_sk(d.version)),
            "SET #status = :accepted, #lease_owner = :owner, #lease_expires = :exp, #modified = :now, #gsi1pk = :leased, #gsi1sk = :gsk",
            Some("#status = :ns"),
            vec![
                (":accepted", s(JobStatus::Accepted.as_str())),
                (":owner", s(&lease.owner)),
                (":exp", n(expires)),
                (":now", n(now_us())),
                (":leased", s(LEASED)),
                (":gsk", s(format!("{}#{id}", pad(expires)))),
                (":ns", s(JobStatus::NotStarted.as_str())),
            ],
        );
        tx.update(
            key(&spk, STACK_SK),
            "SET #active = :id",
            Some("attribute_not_exists(#active) AND #paused = :false"),
            vec![(":id", s(id.to_string())), (":false", b(false))],
        );
        tx.check(
            org_key(&stack.org),
            "attribute_not_exists(#paused) OR #paused = :false",
            vec![(":false", b(false))],
        );
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

    async fn claim_next(&self, _lease: &Lease) -> Result<Option<Claimed>> {
        // The queue decides the order in this backend; workers claim what it delivers.
        Err(Error::internal(
            "the DynamoDB backend is fed by SQS: claim deployments by id",
        ))
    }

    async fn mark_running(&self, id: Uuid, lease: &Lease) -> Result<()> {
        let expires = now_us() + lease.ttl.as_micros() as i64;
        self.write_run(
            id,
            Guard::Lease(lease, &[JobStatus::Accepted]),
            Extra {
                set: "#status = :running, #started = :now, #lease_expires = :exp, #gsi1sk = :gsk",
                remove: "",
                vals: vec![
                    (":running", s(JobStatus::Running.as_str())),
                    (":exp", n(expires)),
                    (":gsk", s(format!("{}#{id}", pad(expires)))),
                ],
            },
            |_, _| {},
            |_, _| Ok(()),
        )
        .await
    }

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
                    .ok_or_else(|| Error::internal(format!("no step {step}")))?;
                s.status = status.as_str().into();
                s.updated = Some(now_us());
                Ok(())
            },
        )
        .await
    }

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
                    st.log(l.step, to_micros(l.timestamp), None, Some(&l.line));
                }
                Ok(())
            },
        )
        .await
    }

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

#[async_trait]
impl LogStore for DynamoStore {
    async fn read_logs(&self, id: Uuid, query: LogQuery) -> Result<Vec<LogEntry>> {
        let after = match query {
            LogQuery::Stream { after, .. } => after,
            LogQuery::Step { .. } => 0,
        };
        // Chunks are keyed by their last sequence number: those past `after` hold what follows.
        let chunks = self
            .query(
                None,
                "pk = :pk AND sk > :after",
                vec![(":pk", s(log_pk(id))), (":after", s(pad(after)))],
                true,
                None,
            )
            .await?;
        let mut entries = Vec::new();
        for c in chunks {
            let lines: Vec<Value> = serde_json::from_str(&get_s(&c, "lines")?)?;
            for l in lines {
                let entry = LogEntry {
                    seq: l["seq"].as_i64().unwrap_or_default(),
                    step: l["step"].as_u64().unwrap_or_default() as usize,
                    timestamp: from_micros(l["ts"].as_i64().unwrap_or_default()),
                    header: l["header"].as_str().map(str::to_string),
                    line: l["line"].as_str().map(str::to_string),
                };
                let keep = match query {
                    LogQuery::Stream { after, .. } => entry.seq > after,
                    LogQuery::Step { step, offset, .. } => {
                        entry.step == step && l["n"].as_u64().is_some_and(|n| n as usize >= offset)
                    }
                };
                if keep {
                    entries.push(entry);
                }
            }
        }
        let limit = match query {
            LogQuery::Stream { limit, .. } => limit,
            LogQuery::Step { count, .. } => count,
        };
        entries.truncate(limit);
        Ok(entries)
    }
}

/// Creates the table with its indexes (tests, and `infra/` describes the same). Waits until it
/// is usable.
pub async fn create_table(client: &Client, table: &str) -> Result<()> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
        Projection, ProjectionType, ScalarAttributeType,
    };
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("set")
    };
    let key_el = |name: &str, kt: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kt)
            .build()
            .expect("set")
    };
    let gsi = |name: &str| {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(key_el(&format!("{name}pk"), KeyType::Hash))
            .key_schema(key_el(&format!("{name}sk"), KeyType::Range))
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .expect("set")
    };
    client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .set_attribute_definitions(Some(
            ["pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk"]
                .iter()
                .map(|a| attr(a))
                .collect(),
        ))
        .key_schema(key_el("pk", KeyType::Hash))
        .key_schema(key_el("sk", KeyType::Range))
        .global_secondary_indexes(gsi("gsi1"))
        .global_secondary_indexes(gsi("gsi2"))
        .send()
        .await
        .map_err(|e| aws_err("CreateTable", e))?;
    Ok(())
}

const KEYRING_PK: &str = "CONFIG";
const KEYRING_SK: &str = "OIDCKEYS";

#[async_trait]
impl SigningKeyStore for DynamoStore {
    async fn keyring(&self) -> Result<(Vec<crate::domain::keys::SigningKey>, i64)> {
        match self.get(key(KEYRING_PK, KEYRING_SK)).await? {
            Some(item) => Ok((
                serde_json::from_str(&get_s(&item, "keys")?)?,
                get_n(&item, "version")?,
            )),
            None => Ok((Vec::new(), 0)),
        }
    }

    async fn put_keyring(
        &self,
        keys: &[crate::domain::keys::SigningKey],
        expected: i64,
    ) -> Result<i64> {
        let cond = if expected == 0 {
            "attribute_not_exists(#version)"
        } else {
            "#version = :expected"
        };
        let set = "SET #keys = :keys, #version = :next";
        let mut vals = vec![
            (":keys", s(serde_json::to_string(keys)?)),
            (":next", n(expected + 1)),
        ];
        if expected != 0 {
            vals.push((":expected", n(expected)));
        }
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(KEYRING_PK, KEYRING_SK)))
            .update_expression(set)
            .condition_expression(cond)
            .set_expression_attribute_names(names(&[set, cond]))
            .set_expression_attribute_values(values(vals))
            .send()
            .await;
        match checked("UpdateItem", r)? {
            Some(_) => Ok(expected + 1),
            None => Err(Error::conflict(
                "the signing keys were changed concurrently",
            )),
        }
    }
}
