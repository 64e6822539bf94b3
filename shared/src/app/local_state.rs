//! Engine state that agents restore and save through the API, kept in the data dir's per-stack
//! state directories: the same place the built-in workers run against, so a stack can move
//! between an agent pool and the built-in workers and keep its state.
//!
//! The version tag of a file is its SHA-256: a save applies only over the content the run
//! restored, as S3's conditional writes do in AWS mode.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::crypto::sha256_hex;
use crate::domain::StackRef;
use crate::error::{Error, Result};
use crate::ports::{StateFile, StateManifest, StateStore};
use crate::runner::files;

pub struct DirStateStore {
    root: PathBuf,
}

impl DirStateStore {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn dir(&self, stack: &StackRef) -> PathBuf {
        stack.dir_under(&self.root)
    }
}

fn manifest_of(dir: &Path) -> Result<StateManifest> {
    let mut out = StateManifest::new();
    for rel in files::list_state_files(dir)? {
        let sha256 = sha256_hex(&files::read(&dir.join(&rel))?);
        out.insert(
            rel,
            StateFile {
                etag: sha256.clone(),
                sha256,
            },
        );
    }
    Ok(out)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("state directory task: {e}")))?
}

#[async_trait]
impl StateStore for DirStateStore {
    async fn restore(&self, stack: &StackRef, dir: &Path) -> Result<StateManifest> {
        let (from, to) = (self.dir(stack), dir.to_path_buf());
        blocking(move || {
            match std::fs::remove_dir_all(&to) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
            std::fs::create_dir_all(&to)?;
            let manifest = manifest_of(&from)?;
            for rel in manifest.keys() {
                let path = to.join(rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                crate::crypto::write_private(&path, &files::read(&from.join(rel))?)?;
            }
            Ok(manifest)
        })
        .await
    }

    async fn save(
        &self,
        stack: &StackRef,
        dir: &Path,
        saved: &mut StateManifest,
    ) -> Result<(usize, usize)> {
        let (to, from, mut manifest) = (self.dir(stack), dir.to_path_buf(), saved.clone());
        let location = self.location(stack);
        let (counts, manifest) = blocking(move || {
            let conflict = |rel: &str| {
                Error::Conflict(format!(
                    "{location}{rel} was changed by another run after this run restored it"
                ))
            };
            let current = manifest_of(&to)?;
            let local = files::list_state_files(&from)?;
            let mut written = 0;
            for rel in &local {
                let body = files::read(&from.join(rel))?;
                let sha256 = sha256_hex(&body);
                let expected = manifest.get(rel).map(|f| f.etag.as_str());
                if manifest.get(rel).is_some_and(|f| f.sha256 == sha256) {
                    continue;
                }
                if current.get(rel).map(|f| f.etag.as_str()) != expected {
                    return Err(conflict(rel));
                }
                let path = to.join(rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                // Never through a link a run of the stack may have left in its state.
                files::write_new(&path, &body)?;
                manifest.insert(
                    rel.clone(),
                    StateFile {
                        etag: sha256.clone(),
                        sha256,
                    },
                );
                written += 1;
            }
            let gone: Vec<String> = manifest
                .keys()
                .filter(|rel| !local.contains(rel))
                .cloned()
                .collect();
            let mut removed = 0;
            for rel in gone {
                if current.get(&rel).map(|f| &f.etag) != manifest.get(&rel).map(|f| &f.etag) {
                    return Err(conflict(&rel));
                }
                match std::fs::remove_file(to.join(&rel)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
                manifest.remove(&rel);
                removed += 1;
            }
            Ok(((written, removed), manifest))
        })
        .await?;
        *saved = manifest;
        Ok(counts)
    }

    async fn delete(&self, stack: &StackRef) -> Result<()> {
        match tokio::fs::remove_dir_all(self.dir(stack)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn location(&self, stack: &StackRef) -> String {
        format!("the server's state directory for {stack}/")
    }
}
