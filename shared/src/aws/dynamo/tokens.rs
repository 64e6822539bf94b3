//! The `TokenStore` port, on the token table.

use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::aws::item::*;
use crate::domain::*;
use crate::error::{Error, Result};
use crate::ports::*;

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
            let marker_at = tx.items.len();
            tx.put(marker, Some("attribute_not_exists(pk)"), vec![]);
            match self.commit(tx).await? {
                Ok(()) => return Ok(()),
                Err(reasons)
                    if reasons
                        .get(marker_at)
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

    async fn list_tokens(&self, org: &str) -> Result<Vec<TokenInfo>> {
        let items = self
            .query_in(
                &self.token_table,
                "pk = :pk",
                vec![(":pk", s(org_tokens_pk(org)))],
            )
            .await?;
        let mut tokens = items
            .iter()
            .map(|t| {
                Ok(TokenInfo {
                    id: token_id(get_s(t, "sk")?.trim_start_matches("TOKEN#")),
                    name: get_s(t, "name")?,
                    role: get_s(t, "role")?.parse()?,
                    created: crate::domain::time_fmt::from_micros(get_n(t, "created")?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        tokens.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(tokens)
    }

    async fn delete_token(&self, org: &str, id: &str) -> Result<()> {
        let not_found = || Error::not_found(format!("token '{id}' not found"));
        // The org's index names the token's hash; both items go together.
        let items = self
            .query_in(
                &self.token_table,
                "pk = :pk AND begins_with(sk, :prefix)",
                vec![
                    (":pk", s(org_tokens_pk(org))),
                    (":prefix", s(format!("TOKEN#{id}"))),
                ],
            )
            .await?;
        let [entry] = items.as_slice() else {
            return Err(not_found());
        };
        let sk = get_s(entry, "sk")?;
        let mut tx = Tx {
            table: self.token_table.clone(),
            items: vec![],
        };
        tx.delete(key(sk.clone(), "#TOKEN"), Some("attribute_exists(pk)"));
        tx.delete(key(org_tokens_pk(org), sk), None);
        tx.update(
            key("META", "TOKENS"),
            "ADD #count :minus",
            None,
            vec![(":minus", n(-1))],
        );
        match self.commit(tx).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(not_found()),
        }
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
        // The org's index of its tokens, so admins can list them with a Query.
        let mut entry = key(org_tokens_pk(org), format!("TOKEN#{hash}"));
        entry.insert("name".into(), s(name));
        entry.insert("role".into(), s(role.as_str()));
        entry.insert("created".into(), n(now_us()));
        tx.put(entry, None, vec![]);
        tx
    }
}

fn org_tokens_pk(org: &str) -> String {
    format!("ORGTOKENS#{org}")
}
