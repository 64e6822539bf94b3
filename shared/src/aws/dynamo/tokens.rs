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
