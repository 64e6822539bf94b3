//! The `TokenStore` port.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use crate::domain::*;
use crate::error::{Error, Result};
use crate::ports::*;

use super::*;

pub(super) fn insert_token(
    c: &Connection,
    hash: &str,
    org: &str,
    role: Role,
    name: &str,
) -> Result<()> {
    c.execute(
        "INSERT INTO tokens (hash, org, role, name, created) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![hash, org, role.as_str(), name, now_us()],
    )?;
    Ok(())
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn create_token(&self, hash: &str, org: &str, role: Role, name: &str) -> Result<()> {
        let (hash, org, name) = (hash.to_string(), org.to_string(), name.to_string());
        self.db
            .write(move |c| insert_token(c, &hash, &org, role, &name))
            .await
    }

    async fn redeem_bootstrap(
        &self,
        secret_hash: &str,
        hash: &str,
        org: &str,
        name: &str,
    ) -> Result<()> {
        let (secret_hash, hash, org, name) = (
            secret_hash.to_string(),
            hash.to_string(),
            org.to_string(),
            name.to_string(),
        );
        self.db
            .write(move |c| {
                let tx = c.transaction()?;
                let fresh = tx.execute(
                    "INSERT OR IGNORE INTO bootstrap_redeemed (secret_hash, org, redeemed) VALUES (?1, ?2, ?3)",
                    params![secret_hash, org, now_us()],
                )?;
                if fresh == 0 {
                    return Err(Error::conflict(crate::ports::BOOTSTRAP_USED));
                }
                insert_token(&tx, &hash, &org, Role::Admin, &name)?;
                tx.commit()?;
                Ok(())
            })
            .await
    }

    async fn find_token(&self, hash: &str) -> Result<Option<Principal>> {
        let hash = hash.to_string();
        self.db
            .read(move |c| {
                let row: Option<(String, String, String)> = c
                    .prepare_cached("SELECT org, role, name FROM tokens WHERE hash = ?1")?
                    .query_row([hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                row.map(|(org, role, token_name)| {
                    Ok(Principal {
                        org,
                        role: role.parse()?,
                        token_name,
                    })
                })
                .transpose()
            })
            .await
    }

    async fn list_tokens(&self, org: &str) -> Result<Vec<TokenInfo>> {
        let org = org.to_string();
        self.db
            .read(move |c| {
                let rows: Vec<(String, String, String, i64)> = c
                    .prepare_cached(
                        "SELECT hash, name, role, created FROM tokens WHERE org = ?1 ORDER BY created, hash",
                    )?
                    .query_map([org], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                rows.into_iter()
                    .map(|(hash, name, role, created)| {
                        Ok(TokenInfo {
                            id: token_id(&hash),
                            name,
                            role: role.parse()?,
                            created: from_micros(created),
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn delete_token(&self, org: &str, id: &str) -> Result<()> {
        let (org, id) = (org.to_string(), id.to_string());
        self.db
            .write(move |c| {
                // Ids are hex prefixes of the hash: anything else matches nothing.
                if id.len() != 24 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Error::not_found(format!("token '{id}' not found")));
                }
                let deleted = c.execute(
                    "DELETE FROM tokens WHERE org = ?1 AND substr(hash, 1, 24) = ?2",
                    params![org, id],
                )?;
                if deleted == 0 {
                    return Err(Error::not_found(format!("token '{id}' not found")));
                }
                Ok(())
            })
            .await
    }

    async fn token_count(&self) -> Result<u64> {
        self.db
            .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0))?))
            .await
    }
}
