//! The `SigningKeyStore` port: the OIDC keyring, one item.

use async_trait::async_trait;

use super::*;
use crate::aws::item::*;
use crate::error::{Error, Result};
use crate::ports::*;

pub(super) const KEYRING_PK: &str = "CONFIG";
pub(super) const KEYRING_SK: &str = "OIDCKEYS";

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
