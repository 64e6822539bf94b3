//! Engine state in S3: one prefix per stack (`{org}/{project}/{stack}/`), restored into the
//! worker's state directory before a run and saved after it. Lambda's disk does not outlive its
//! environment, and a stack's next run may land on any environment.
//!
//! The bucket is versioned (infra/template.yaml), so every save keeps the previous state as a
//! noncurrent version: the undo history of a stack's state. Saves are conditional writes
//! (`If-Match` on the ETag restored, `If-None-Match: *` for a new file), so a run that overlaps
//! another on the same stack cannot silently overwrite the state the other one saved.

use std::path::Path;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;

use crate::crypto::sha256_hex;
use crate::domain::StackRef;
use crate::error::{Error, Result};
use crate::ports::{StateFile, StateManifest, StateStore};
use crate::runner::files::{list_state_files as files, relative};

pub struct S3StateStore {
    client: Client,
    bucket: String,
}

impl S3StateStore {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
        }
    }

    fn prefix(stack: &StackRef) -> String {
        format!("{}/{}/{}/", stack.org, stack.project, stack.stack)
    }

    /// Every key under the stack's prefix.
    async fn keys(&self, stack: &StackRef) -> Result<Vec<String>> {
        list_keys(&self.client, &self.bucket, &Self::prefix(stack), None).await
    }
}

/// Every current key in `bucket` under `prefix`, all pages; `owner` makes S3 refuse a bucket
/// another account owns.
pub async fn list_keys(
    client: &Client,
    bucket: &str,
    prefix: &str,
    owner: Option<&str>,
) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .set_expected_bucket_owner(owner.map(String::from))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| s3_err("ListObjectsV2", e))?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(String::from)),
        );
    }
    Ok(keys)
}

/// An S3 error as ours, with the SDK's whole context.
pub fn s3_err<E>(
    op: &str,
    e: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Error
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    super::sdk_error(format!("S3 {op}"), e)
}

/// Whether a conditional write was refused on its condition: the stored file is no longer the
/// one the run restored (412), another conditional write to it is in flight (409), or it is
/// gone (404 `NoSuchKey`; a missing bucket is a plain failure).
fn lost_condition<E: ProvideErrorMetadata>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    e.as_service_error().is_some_and(|e| {
        matches!(
            e.code(),
            Some("PreconditionFailed" | "ConditionalRequestConflict" | "NoSuchKey")
        )
    })
}

/// The S3 client for `sdk`: path-style addressing when an endpoint is set (an emulator serves
/// buckets by path, not by virtual host).
pub fn client(sdk: &aws_config::SdkConfig) -> Client {
    let conf = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(sdk.endpoint_url().is_some())
        .build();
    Client::from_conf(conf)
}

#[async_trait]
impl StateStore for S3StateStore {
    async fn restore(&self, stack: &StackRef, dir: &Path) -> Result<StateManifest> {
        let fresh = dir.to_path_buf();
        tokio::task::spawn_blocking(move || crate::runner::files::fresh_dir(&fresh))
            .await
            .map_err(|e| Error::internal(format!("clearing the state directory: {e}")))??;
        let prefix = Self::prefix(stack);
        let mut manifest = StateManifest::new();
        for key in self.keys(stack).await? {
            let Some(rel) = key.strip_prefix(&prefix).and_then(relative) else {
                tracing::warn!(key, "skipping a state object whose key is not a plain path");
                continue;
            };
            let out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| s3_err("GetObject", e))?;
            let etag = out
                .e_tag()
                .ok_or_else(|| Error::internal(format!("S3 GetObject {key}: no ETag")))?
                .to_string();
            let body = out
                .body
                .collect()
                .await
                .map_err(|e| Error::internal(format!("S3 GetObject {key}: {e}")))?
                .into_bytes();
            let path = dir.join(&rel);
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            crate::crypto::write_private(&path, &body)?;
            manifest.insert(
                rel.to_string_lossy().into_owned(),
                StateFile {
                    sha256: sha256_hex(&body),
                    etag,
                },
            );
        }
        Ok(manifest)
    }

    async fn save(
        &self,
        stack: &StackRef,
        dir: &Path,
        saved: &mut StateManifest,
    ) -> Result<(usize, usize)> {
        let prefix = Self::prefix(stack);
        let conflict = |rel: &str| {
            Error::Conflict(format!(
                "{}{rel} was changed by another run after this run restored it",
                self.location(stack)
            ))
        };
        let local = {
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || files(&dir))
                .await
                .map_err(|e| Error::internal(format!("listing the state directory: {e}")))??
        };
        let mut written = 0;
        for rel in &local {
            let body = {
                let path = dir.join(rel);
                tokio::task::spawn_blocking(move || crate::runner::files::read(&path))
                    .await
                    .map_err(|e| Error::internal(format!("reading the state directory: {e}")))??
            };
            let sha256 = sha256_hex(&body);
            let put = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(format!("{prefix}{rel}"))
                .body(ByteStream::from(body));
            let put = match saved.get(rel) {
                Some(stored) if stored.sha256 == sha256 => continue,
                Some(stored) => put.if_match(&stored.etag),
                None => put.if_none_match("*"),
            };
            let out = put.send().await.map_err(|e| {
                if lost_condition(&e) {
                    conflict(rel)
                } else {
                    s3_err("PutObject", e)
                }
            })?;
            let etag = out
                .e_tag()
                .ok_or_else(|| Error::internal(format!("S3 PutObject {rel}: no ETag")))?;
            saved.insert(
                rel.clone(),
                StateFile {
                    sha256,
                    etag: etag.to_string(),
                },
            );
            written += 1;
        }
        let mut removed = 0;
        let gone: Vec<(String, String)> = saved
            .iter()
            .filter(|(rel, _)| !local.contains(rel))
            .map(|(rel, stored)| (rel.clone(), stored.etag.clone()))
            .collect();
        for (rel, etag) in gone {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(format!("{prefix}{rel}"))
                .if_match(etag)
                .send()
                .await
                .map_err(|e| {
                    if lost_condition(&e) {
                        conflict(&rel)
                    } else {
                        s3_err("DeleteObject", e)
                    }
                })?;
            saved.remove(&rel);
            removed += 1;
        }
        Ok((written, removed))
    }

    async fn delete(&self, stack: &StackRef) -> Result<()> {
        for key in self.keys(stack).await? {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| s3_err("DeleteObject", e))?;
        }
        Ok(())
    }

    fn location(&self, stack: &StackRef) -> String {
        format!("s3://{}/{}", self.bucket, Self::prefix(stack))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::runner::files::SKIPPED_DIRS;

    #[test]
    fn only_plain_relative_keys_are_restored() {
        assert_eq!(
            relative("terraform.tfstate"),
            Some(PathBuf::from("terraform.tfstate"))
        );
        assert_eq!(
            relative(".pulumi/stacks/p/dev.json"),
            Some(PathBuf::from(".pulumi/stacks/p/dev.json"))
        );
        for bad in [
            "",
            "../other/terraform.tfstate",
            "/etc/passwd",
            "a/../../b",
            "a//b",
            "a/./b",
            "dir/",
        ] {
            assert_eq!(relative(bad), None, "{bad}");
        }
    }

    #[test]
    fn files_lists_nested_files_relative_to_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".pulumi/stacks")).unwrap();
        std::fs::write(dir.path().join(".pulumi/stacks/dev.json"), "{}").unwrap();
        std::fs::write(dir.path().join("terraform.tfstate"), "{}").unwrap();
        for skipped in SKIPPED_DIRS {
            std::fs::create_dir_all(dir.path().join(skipped).join("p")).unwrap();
            std::fs::write(dir.path().join(skipped).join("p/1.json"), "{}").unwrap();
        }
        assert_eq!(
            files(dir.path()).unwrap(),
            vec![".pulumi/stacks/dev.json", "terraform.tfstate"]
        );
        assert!(files(&dir.path().join("missing")).unwrap().is_empty());
    }
}
