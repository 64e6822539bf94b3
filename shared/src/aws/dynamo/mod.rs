//! The DynamoDB adapter: every store port on one table (API tokens optionally on a second). See
//! `TABLE.md` beside this file for the keys, indexes and access patterns.
//!
//! Every read is a GetItem or a Query; every state change is a conditional write, and a lost
//! race surfaces as `Error::Conflict`. Multi-item changes are transactions.
//!
//! One file per port, with the same names as the SQLite adapter's.

mod audit;
mod bulk;
mod deployments;
mod idempotency;
mod logs;
mod notifications;
mod pools;
mod runs;
mod schedules;
mod signing_keys;
mod stacks;
mod table;
mod tokens;

pub use table::create_table;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, Put, Select, TransactWriteItem, Update,
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::item::*;
use crate::domain::time_fmt::to_micros;
use crate::domain::*;
use crate::error::{Error, Result};

/// Log chunks stay well below DynamoDB's 400 KB item limit.
pub(super) const CHUNK_BYTES: usize = 256 * 1024;
/// Log chunks expire (DynamoDB TTL) this long after they are written.
pub(super) const LOG_TTL: Duration = Duration::from_secs(90 * 86_400);
/// Optimistic writes retry this often before reporting a conflict.
pub(super) const RETRIES: usize = 20;

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
pub(super) fn ptr_key(id: Uuid) -> Item {
    key(format!("DEPID#{id}"), "#DEPID")
}
pub(super) fn log_pk(id: Uuid) -> String {
    format!("LOG#{id}")
}
pub(super) fn org_key(org: &str) -> Item {
    key(format!("ORG#{org}"), "#ORG")
}
pub(super) fn org_deps(org: &str) -> String {
    format!("ORG#{org}#DEPS")
}
pub(super) fn org_stacks(org: &str) -> String {
    format!("ORG#{org}#STACKS")
}
/// A stack's update pointers: `UPD#<version>` -> the deployment version that made it.
pub(super) const UPDATE_PREFIX: &str = "UPD#";
pub(super) fn update_sk(version: i64) -> String {
    format!("{UPDATE_PREFIX}{}", pad(version))
}
pub(super) const QUEUED: &str = "QUEUED";
/// The `gsi1` partition of a queued deployment: the built-in workers' (fed by SQS), or its
/// agent pool's (claimed by the pool's agents).
pub(super) fn queued_pk(pool: Option<&str>) -> String {
    match pool {
        None => QUEUED.to_string(),
        Some(id) => pool_queue(id),
    }
}
pub(super) fn pool_queue(pool: &str) -> String {
    format!("{QUEUED}#POOL#{pool}")
}
pub(super) const LEASED: &str = "LEASED";
/// The `gsi1` partition of deployments waiting for approval, by deadline.
pub(super) const AWAITING: &str = "AWAITING";

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

    /// A delete, conditional on `cond` (whose `:values` are `vals`) if given.
    pub(super) fn delete_if(
        &mut self,
        key: Item,
        cond: Option<&str>,
        vals: Vec<(&str, AttributeValue)>,
    ) {
        let d = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key))
            .set_condition_expression(cond.map(str::to_string))
            .set_expression_attribute_names(cond.and_then(|c| names(&[c])))
            .set_expression_attribute_values(values(vals))
            .build()
            .expect("table and key are set");
        self.items
            .push(TransactWriteItem::builder().delete(d).build());
    }

    pub(super) fn delete(&mut self, key: Item, cond: Option<&str>) {
        self.delete_if(key, cond, vec![]);
    }
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

    /// A transaction on the token table.
    pub(super) fn token_table_tx(&self) -> Tx {
        Tx {
            table: self.token_table.clone(),
            items: vec![],
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

    pub(super) async fn get_from(&self, table: &str, key: Item) -> Result<Option<Item>> {
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
        self.query_table(&self.table, index, cond, vals, forward, limit)
            .await
    }

    /// Every item of another table (the token table) that the key condition selects.
    pub(super) async fn query_in(
        &self,
        table: &str,
        cond: &str,
        vals: Vec<(&str, AttributeValue)>,
    ) -> Result<Vec<Item>> {
        self.query_table(table, None, cond, vals, true, None).await
    }

    async fn query_table(
        &self,
        table: &str,
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
                .table_name(table)
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
        self.count_where(index, cond, None, vals).await
    }

    /// `count`, of the items that also pass `filter`.
    pub(super) async fn count_where(
        &self,
        index: Option<&str>,
        cond: &str,
        filter: Option<&str>,
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
                .set_filter_expression(filter.map(str::to_string))
                .set_expression_attribute_names(names(
                    &std::iter::once(cond).chain(filter).collect::<Vec<_>>(),
                ))
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
}
