//! The `AgentPoolStore` port: a pool is an item of its org's `ORG#<org>#POOLS` partition, its
//! token hash an item of the token table (so that only the API reads it), its agents items of
//! `POOL#<id>#AGENTS`. A pool's queued deployments are `gsi1` partition `QUEUED#POOL#<id>`.

use async_trait::async_trait;

use super::*;
use crate::aws::item::*;
use crate::domain::pools::{AgentInfo, AgentPool, POOL_DELETED_REASON, PoolDeleted};
use crate::domain::time_fmt::from_micros;
use crate::error::{Error, Result};
use crate::ports::*;

fn pools_pk(org: &str) -> String {
    format!("ORG#{org}#POOLS")
}
fn pool_sk(id: &str) -> String {
    format!("POOL#{id}")
}
fn agents_pk(pool: &str) -> String {
    format!("POOL#{pool}#AGENTS")
}
fn token_key(hash: &str) -> Item {
    key(format!("POOLTOKEN#{hash}"), "#POOLTOKEN")
}

fn to_pool(item: &Item) -> Result<AgentPool> {
    Ok(AgentPool {
        id: get_s(item, "id")?,
        org: get_s(item, "org")?,
        name: get_s(item, "name")?,
        description: get_s(item, "description")?,
        created: from_micros(get_n(item, "created")?),
    })
}

#[async_trait]
impl AgentPoolStore for DynamoStore {
    async fn create_pool(&self, pool: &AgentPool, token_hash: &str) -> Result<()> {
        // The token first: a token whose pool item is missing finds no pool.
        let mut token = token_key(token_hash);
        token.insert("org".into(), s(&pool.org));
        token.insert("pool".into(), s(&pool.id));
        let mut tx = self.token_table_tx();
        tx.put(token, Some("attribute_not_exists(pk)"), vec![]);
        if self.commit(tx).await?.is_err() {
            return Err(Error::conflict("agent pool token already exists"));
        }
        let mut item = key(pools_pk(&pool.org), pool_sk(&pool.id));
        item.insert("id".into(), s(&pool.id));
        item.insert("org".into(), s(&pool.org));
        item.insert("name".into(), s(&pool.name));
        item.insert("description".into(), s(&pool.description));
        item.insert("created".into(), n(to_micros(pool.created)));
        item.insert("token_hash".into(), s(token_hash));
        let mut tx = self.tx();
        tx.put(item, Some("attribute_not_exists(pk)"), vec![]);
        match self.commit(tx).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::conflict(format!("agent pool '{}' exists", pool.id))),
        }
    }

    async fn get_pool(&self, org: &str, id: &str) -> Result<Option<AgentPool>> {
        self.get(key(pools_pk(org), pool_sk(id)))
            .await?
            .map(|i| to_pool(&i))
            .transpose()
    }

    async fn list_pools(&self, org: &str) -> Result<Vec<AgentPool>> {
        let items = self
            .query(
                None,
                "pk = :pk",
                vec![(":pk", s(pools_pk(org)))],
                true,
                None,
            )
            .await?;
        let mut pools = items.iter().map(to_pool).collect::<Result<Vec<_>>>()?;
        pools.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(pools)
    }

    async fn update_pool(&self, pool: &AgentPool) -> Result<()> {
        let mut tx = self.tx();
        tx.update(
            key(pools_pk(&pool.org), pool_sk(&pool.id)),
            "SET #name = :name, #description = :description",
            Some("attribute_exists(pk)"),
            vec![
                (":name", s(&pool.name)),
                (":description", s(&pool.description)),
            ],
        );
        match self.commit(tx).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::not_found(format!(
                "agent pool '{}' not found",
                pool.id
            ))),
        }
    }

    async fn delete_pool(&self, org: &str, id: &str, force: bool) -> Result<PoolDeleted> {
        let not_found = || Error::not_found(format!("agent pool '{id}' not found"));
        let item = self
            .get(key(pools_pk(org), pool_sk(id)))
            .await?
            .ok_or_else(not_found)?;
        let queued = self
            .query(
                Some("gsi1"),
                "gsi1pk = :pk",
                vec![(":pk", s(pool_queue(id)))],
                true,
                None,
            )
            .await?;
        // Running deployments are few: the leased ones, filtered by pool.
        let running: Vec<Item> = self
            .query(
                Some("gsi1"),
                "gsi1pk = :pk",
                vec![(":pk", s(LEASED))],
                true,
                None,
            )
            .await?
            .into_iter()
            .filter(|d| opt_s(d, "agent_pool").as_deref() == Some(id))
            .collect();
        let live = queued.len() + running.len();
        if live > 0 && !force {
            return Err(Error::conflict(format!(
                "agent pool '{id}' has {live} queued or running deployment(s); cancel them, or delete with force=true to fail them"
            )));
        }
        let mut out = PoolDeleted::default();
        // Item by item (DynamoDB has no transaction that large); a deployment claimed meanwhile
        // is asked to stop instead.
        for d in &queued {
            let (stack, did) = stack_and_id(d)?;
            let line = format!("{POOL_DELETED_REASON}\n");
            match self
                .end(
                    did,
                    super::runs::Guard::Status(&[JobStatus::NotStarted]),
                    JobStatus::Failed,
                    Some(&line),
                )
                .await
            {
                Ok(()) => out.failed.push((stack, did)),
                Err(Error::Conflict(_)) => {
                    self.cancel_deployment(&stack, did).await?;
                    out.cancelled += 1;
                }
                Err(e) => return Err(e),
            }
        }
        for d in &running {
            let (stack, did) = stack_and_id(d)?;
            self.cancel_deployment(&stack, did).await?;
            out.cancelled += 1;
        }
        let mut tx = self.tx();
        tx.delete(
            key(pools_pk(org), pool_sk(id)),
            Some("attribute_exists(pk)"),
        );
        if self.commit(tx).await?.is_err() {
            return Err(not_found());
        }
        let mut tx = self.token_table_tx();
        tx.delete(token_key(&get_s(&item, "token_hash")?), None);
        self.commit(tx)
            .await?
            .map_err(|_| Error::internal("could not remove a deleted agent pool's token"))?;
        for agent in self
            .query(
                None,
                "pk = :pk",
                vec![(":pk", s(agents_pk(id)))],
                true,
                None,
            )
            .await?
        {
            let mut tx = self.tx();
            tx.delete(key(agents_pk(id), get_s(&agent, "sk")?), None);
            let _ = self.commit(tx).await?;
        }
        Ok(out)
    }

    async fn find_pool_by_token(&self, token_hash: &str) -> Result<Option<AgentPool>> {
        let Some(t) = self
            .get_from(&self.token_table, token_key(token_hash))
            .await?
        else {
            return Ok(None);
        };
        self.get_pool(&get_s(&t, "org")?, &get_s(&t, "pool")?).await
    }

    async fn touch_agent(&self, pool: &AgentPool, agent: &AgentInfo) -> Result<()> {
        let mut item = key(agents_pk(&pool.id), format!("AGENT#{}", agent.id));
        for (k, v) in [
            ("id", &agent.id),
            ("version", &agent.version),
            ("platform", &agent.platform),
            ("hostname", &agent.hostname),
            ("ip", &agent.ip),
            ("pid", &agent.pid),
        ] {
            item.insert(k.into(), s(v));
        }
        item.insert("last_seen".into(), n(to_micros(agent.last_seen)));
        let mut tx = self.tx();
        tx.put(item, None, vec![]);
        self.commit(tx)
            .await?
            .map_err(|_| Error::internal("could not record an agent"))
    }

    async fn agent_seen(
        &self,
        pool: &AgentPool,
        agent_id: &str,
        at: time::OffsetDateTime,
    ) -> Result<()> {
        let mut tx = self.tx();
        tx.update(
            key(agents_pk(&pool.id), format!("AGENT#{agent_id}")),
            "SET #last_seen = :at",
            Some("attribute_exists(pk)"),
            vec![(":at", n(to_micros(at)))],
        );
        // An agent unknown here (never claimed) is left alone.
        let _ = self.commit(tx).await?;
        Ok(())
    }

    async fn list_agents(&self, pool: &AgentPool) -> Result<Vec<AgentInfo>> {
        let items = self
            .query(
                None,
                "pk = :pk",
                vec![(":pk", s(agents_pk(&pool.id)))],
                true,
                None,
            )
            .await?;
        let mut agents = items
            .iter()
            .map(|a| {
                Ok(AgentInfo {
                    id: get_s(a, "id")?,
                    version: get_s(a, "version")?,
                    platform: get_s(a, "platform")?,
                    hostname: get_s(a, "hostname")?,
                    ip: get_s(a, "ip")?,
                    pid: get_s(a, "pid")?,
                    last_seen: from_micros(get_n(a, "last_seen")?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        agents.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(a.id.cmp(&b.id)));
        Ok(agents)
    }
}

/// A deployment item's stack and id.
pub(super) fn stack_and_id(d: &Item) -> Result<(StackRef, Uuid)> {
    let stack = StackRef::new(
        &get_s(d, "org")?,
        &get_s(d, "project")?,
        &get_s(d, "stack")?,
    )?;
    Ok((stack, stored_uuid(&get_s(d, "id")?)?))
}

fn stored_uuid(id: &str) -> Result<Uuid> {
    Uuid::parse_str(id)
        .map_err(|_| Error::internal(format!("stored deployment id '{id}' is not a UUID")))
}
