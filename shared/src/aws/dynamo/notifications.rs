//! The DynamoDB adapters of `HookStore` and `Outbox` (layout in `TABLE.md`).
//!
//! A stack's hooks live in its partition (`HOOK#{name}`), so they go with the stack; an org's
//! under `ORG#{org}`. An outbox message is its own item; while it is due it sits in the sparse
//! `gsi1` partition `OUTBOX`, sorted by when, and a dispatcher claims it with a conditional
//! update of that sort key (of two dispatchers, one wins). Attempts are items under
//! `ATTEMPTS#{target}`, newest last, carrying what the delivery log shows.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use time::OffsetDateTime;

use super::{DynamoStore, aws_err, checked, stack_pk};
use crate::aws::item::*;
use crate::domain::StackRef;
use crate::domain::hooks::{Hook, HookScope};
use crate::domain::time_fmt::{from_micros, to_micros};
use crate::error::{Error, Result};
use crate::ports::{Attempt, HookStore, Outbox, OutboxMessage};

const OUTBOX: &str = "OUTBOX";

/// How long messages and their attempts are kept: DynamoDB's TTL removes them after.
pub(super) const RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

fn expires(from: OffsetDateTime) -> AttributeValue {
    n((from + RETENTION).unix_timestamp())
}

fn scope_pk(scope: &HookScope) -> String {
    match &scope.stack {
        Some(s) => stack_pk(s),
        None => format!("ORG#{}", scope.org),
    }
}

fn hook_sk(name: &str) -> String {
    format!("HOOK#{name}")
}

fn msg_key(id: &str) -> Item {
    key(format!("OUTBOX#{id}"), "#MSG")
}

fn due_sk(at: i64, id: &str) -> String {
    format!("{}#{id}", pad(at))
}

fn message_of(item: &Item) -> Result<(OutboxMessage, u32)> {
    Ok((
        OutboxMessage {
            id: get_s(item, "id")?,
            org: get_s(item, "org")?,
            target: get_s(item, "target")?,
            kind: get_s(item, "kind")?,
            event: get_s(item, "event")?,
            body: get_s(item, "body")?,
            created: from_micros(get_n(item, "created")?),
        },
        opt_n(item, "attempts").unwrap_or(0) as u32,
    ))
}

impl DynamoStore {
    async fn hooks_in(&self, pk: &str) -> Result<Vec<Hook>> {
        self.query(
            None,
            "pk = :pk AND begins_with(sk, :h)",
            vec![(":pk", s(pk)), (":h", s("HOOK#"))],
            true,
            None,
        )
        .await?
        .iter()
        .map(|i| Ok(serde_json::from_str(&get_s(i, "body")?)?))
        .collect()
    }
}

#[async_trait]
impl HookStore for DynamoStore {
    async fn create_hook(&self, scope: &HookScope, hook: &Hook) -> Result<()> {
        let mut item = key(scope_pk(scope), hook_sk(&hook.name));
        item.insert("body".into(), s(serde_json::to_string(hook)?));
        item.insert("created".into(), n(super::now_us()));
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
            None => Err(Error::conflict(format!(
                "a webhook named '{}' already exists",
                hook.name
            ))),
        }
    }

    async fn list_hooks(&self, scope: &HookScope) -> Result<Vec<Hook>> {
        self.hooks_in(&scope_pk(scope)).await
    }

    async fn get_hook(&self, scope: &HookScope, name: &str) -> Result<Option<Hook>> {
        self.get(key(scope_pk(scope), hook_sk(name)))
            .await?
            .map(|i| Ok(serde_json::from_str(&get_s(&i, "body")?)?))
            .transpose()
    }

    async fn update_hook(&self, scope: &HookScope, hook: &Hook) -> Result<()> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(scope_pk(scope), hook_sk(&hook.name))))
            .update_expression("SET #body = :body")
            .condition_expression("attribute_exists(pk)")
            .set_expression_attribute_names(names(&["#body"]))
            .expression_attribute_values(":body", s(serde_json::to_string(hook)?))
            .send()
            .await;
        match checked("UpdateItem", r)? {
            Some(_) => Ok(()),
            None => Err(Error::not_found(format!(
                "webhook '{}' not found",
                hook.name
            ))),
        }
    }

    async fn delete_hook(&self, scope: &HookScope, name: &str) -> Result<()> {
        let r = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(scope_pk(scope), hook_sk(name))))
            .condition_expression("attribute_exists(pk)")
            .send()
            .await;
        match checked("DeleteItem", r)? {
            Some(_) => Ok(()),
            None => Err(Error::not_found(format!("webhook '{name}' not found"))),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn hooks_for_stack(&self, stack: &StackRef) -> Result<Vec<(HookScope, Hook)>> {
        let org = HookScope {
            org: stack.org.clone(),
            stack: None,
        };
        let own = HookScope::for_stack(stack);
        let mut out = Vec::new();
        for scope in [org, own] {
            for hook in self.hooks_in(&scope_pk(&scope)).await? {
                out.push((scope.clone(), hook));
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Outbox for DynamoStore {
    async fn enqueue(&self, messages: &[OutboxMessage], due: bool) -> Result<()> {
        // One transaction holds at most 100 items.
        for chunk in messages.chunks(100) {
            let mut tx = self.tx();
            for m in chunk {
                let mut item = msg_key(&m.id);
                for (k, v) in [
                    ("id", s(&m.id)),
                    ("org", s(&m.org)),
                    ("target", s(&m.target)),
                    ("kind", s(&m.kind)),
                    ("event", s(&m.event)),
                    ("body", s(&m.body)),
                    ("created", n(to_micros(m.created))),
                    ("attempts", n(0)),
                    ("expires", expires(m.created)),
                ] {
                    item.insert(k.into(), v);
                }
                if due {
                    item.insert("gsi1pk".into(), s(OUTBOX));
                    item.insert("gsi1sk".into(), s(due_sk(to_micros(m.created), &m.id)));
                }
                tx.put(item, Some("attribute_not_exists(pk)"), vec![]);
            }
            if self.commit(tx).await?.is_err() {
                return Err(Error::conflict("an outbox message with this id exists"));
            }
        }
        Ok(())
    }

    async fn claim_due(
        &self,
        now: OffsetDateTime,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<(OutboxMessage, u32)>> {
        let due = self
            .query(
                Some("gsi1"),
                "gsi1pk = :p AND gsi1sk <= :now",
                vec![
                    (":p", s(OUTBOX)),
                    (":now", s(format!("{}#~", pad(to_micros(now))))),
                ],
                true,
                Some(limit),
            )
            .await?;
        let until = to_micros(now + lease);
        let mut out = Vec::new();
        for entry in due {
            let id = get_s(&entry, "id")?;
            let r = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(msg_key(&id)))
                .update_expression("SET #gsi1sk = :lease")
                .condition_expression("#gsi1sk = :seen")
                .set_expression_attribute_names(names(&["#gsi1sk"]))
                .expression_attribute_values(":lease", s(due_sk(until, &id)))
                .expression_attribute_values(":seen", s(get_s(&entry, "gsi1sk")?))
                .return_values(ReturnValue::AllNew)
                .send()
                .await;
            // Another dispatcher claimed it, or it was sent in between: not ours.
            if let Some(updated) = checked("UpdateItem", r)? {
                out.push(message_of(&updated.attributes.unwrap_or_default())?);
            }
        }
        Ok(out)
    }

    async fn record_attempt(
        &self,
        id: &str,
        attempt: &Attempt,
        next: Option<OffsetDateTime>,
    ) -> Result<()> {
        let item = self
            .get(msg_key(id))
            .await?
            .ok_or_else(|| Error::not_found(format!("notification {id} not found")))?;
        let (m, attempts) = message_of(&item)?;
        let number = attempts + 1;
        let mut log = key(
            format!("ATTEMPTS#{}", m.target),
            format!("{}#{id}#{number:06}", pad(to_micros(attempt.timestamp))),
        );
        for (k, v) in [
            ("id", s(id)),
            ("n", n(number as i64)),
            ("ts", n(to_micros(attempt.timestamp))),
            ("duration_ms", n(attempt.duration_ms)),
            ("request_url", s(&attempt.request_url)),
            ("request_headers", s(&attempt.request_headers)),
            ("response_code", n(attempt.response_code)),
            ("response_headers", s(&attempt.response_headers)),
            ("response_body", s(&attempt.response_body)),
            ("expires", expires(attempt.timestamp)),
        ] {
            log.insert(k.into(), v);
        }
        let mut tx = self.tx();
        tx.put(log, None, vec![]);
        match next {
            Some(at) => tx.update(
                msg_key(id),
                "SET #attempts = :n, #gsi1pk = :p, #gsi1sk = :due",
                None,
                vec![
                    (":n", n(number as i64)),
                    (":p", s(OUTBOX)),
                    (":due", s(due_sk(to_micros(at), id))),
                ],
            ),
            None => tx.update(
                msg_key(id),
                "SET #attempts = :n REMOVE #gsi1pk, #gsi1sk",
                None,
                vec![(":n", n(number as i64))],
            ),
        }
        self.commit(tx)
            .await?
            .map_err(|reasons| Error::internal(format!("recording an attempt: {reasons:?}")))
    }

    async fn reschedule(&self, id: &str, next: Option<OffsetDateTime>) -> Result<()> {
        let mut call = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(msg_key(id)));
        call = match next {
            Some(at) => call
                .update_expression("ADD #attempts :one SET #gsi1pk = :p, #gsi1sk = :due")
                .set_expression_attribute_names(names(&["#attempts #gsi1pk #gsi1sk"]))
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":p", s(OUTBOX))
                .expression_attribute_values(":due", s(due_sk(to_micros(at), id))),
            None => call
                .update_expression("ADD #attempts :one REMOVE #gsi1pk, #gsi1sk")
                .set_expression_attribute_names(names(&["#attempts #gsi1pk #gsi1sk"]))
                .expression_attribute_values(":one", n(1)),
        };
        call.send().await.map_err(|e| aws_err("UpdateItem", e))?;
        Ok(())
    }

    async fn finish(&self, id: &str) -> Result<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(msg_key(id)))
            .update_expression("REMOVE #gsi1pk, #gsi1sk")
            .set_expression_attribute_names(names(&["#gsi1pk #gsi1sk"]))
            .send()
            .await
            .map_err(|e| aws_err("UpdateItem", e))?;
        Ok(())
    }

    async fn prune_done(&self, _before: OffsetDateTime) -> Result<usize> {
        // The table's TTL (`expires`) removes old messages and attempts.
        Ok(0)
    }

    async fn message(&self, id: &str) -> Result<Option<(OutboxMessage, u32)>> {
        self.get(msg_key(id))
            .await?
            .map(|i| message_of(&i))
            .transpose()
    }

    async fn attempts(
        &self,
        target: &str,
        limit: usize,
    ) -> Result<Vec<(OutboxMessage, Attempt, u32)>> {
        let rows = self
            .query(
                None,
                "pk = :pk",
                vec![(":pk", s(format!("ATTEMPTS#{target}")))],
                false,
                Some(limit),
            )
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let Some((m, _)) = self.message(&get_s(&r, "id")?).await? else {
                continue;
            };
            out.push((
                m,
                Attempt {
                    timestamp: from_micros(get_n(&r, "ts")?),
                    duration_ms: get_n(&r, "duration_ms")?,
                    request_url: get_s(&r, "request_url")?,
                    request_headers: get_s(&r, "request_headers")?,
                    response_code: get_n(&r, "response_code")?,
                    response_headers: get_s(&r, "response_headers")?,
                    response_body: get_s(&r, "response_body")?,
                },
                get_n(&r, "n")? as u32,
            ));
        }
        Ok(out)
    }
}
