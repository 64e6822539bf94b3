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

/// `root.join(rel)`, its parent directories made one at a time, each a real directory: a run of
/// the stack may have left a link among them (`.pulumi -> /data`), and following one would let
/// this unconfined process write or remove a file anywhere. The last component is opened by the
/// caller without following a link.
fn beneath(root: &Path, rel: &str, create: bool) -> Result<PathBuf> {
    let rel = files::relative(rel)
        .ok_or_else(|| Error::invalid(format!("'{rel}' is not a plain relative path")))?;
    let mut dir = root.to_path_buf();
    let parents: Vec<_> = rel
        .parent()
        .into_iter()
        .flat_map(Path::components)
        .collect();
    for part in parents {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::Conflict(format!(
                    "{} is not a directory in the stack's state (a link, say); nothing was written through it",
                    dir.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                std::fs::create_dir(&dir)?
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(root.join(rel))
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
            files::fresh_dir(&to)?;
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
                std::fs::create_dir_all(&to)?;
                // Never through a link a run of the stack may have left in its state.
                let path = beneath(&to, rel, true)?;
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
                let removed_file = beneath(&to, &rel, false)
                    .and_then(|path| std::fs::remove_file(path).map_err(Error::from));
                match removed_file {
                    Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                    Ok(()) => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of the stack leaves a link in its state pointing elsewhere (the data dir, another
    /// stack's state); a save through it must write and remove nothing there.
    #[tokio::test]
    async fn a_save_never_follows_a_link_in_the_stacks_state() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("victim"), "keep").unwrap();
        let store = DirStateStore::new(root.path().to_path_buf());
        let stack = StackRef::new("o", "p", "s").unwrap();
        let dir = stack.dir_under(root.path());
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.join(".pulumi")).unwrap();

        let run = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(run.path().join(".pulumi")).unwrap();
        std::fs::write(run.path().join(".pulumi/planted"), "x").unwrap();
        let mut saved = StateManifest::new();
        let refused = store.save(&stack, run.path(), &mut saved).await;
        assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
        assert!(!elsewhere.path().join("planted").exists());

        // Nor does a removal: the run restored `.pulumi/victim`, and now has none.
        let empty = tempfile::tempdir().unwrap();
        let sha = sha256_hex(b"keep");
        let mut saved = StateManifest::from([(
            ".pulumi/victim".to_string(),
            StateFile {
                sha256: sha.clone(),
                etag: sha,
            },
        )]);
        let _ = store.save(&stack, empty.path(), &mut saved).await;
        assert!(elsewhere.path().join("victim").exists());
    }
}
