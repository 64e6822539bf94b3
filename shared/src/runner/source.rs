//! The "Get source" step, through the host's cache of git mirrors.
//!
//! A run asks the remote where its branch or tag points (one `ls-remote`; none for a pinned
//! commit), fetches into its mirror only if the mirror lacks that commit, and copies the
//! commit's files, extracted once per commit, into its own directory, with a `.git` that
//! borrows the mirror's objects. Every git process runs in the run's sandbox, with the run's
//! credentials in its environment.
//!
//! A mirror that fails (a corrupt object store, a half-deleted directory) is deleted and
//! fetched afresh, once; a commit the remote no longer has fails the run, saying so.

use std::path::{Path, PathBuf};

use super::cache::{Cache, FETCH_LOCK, Held, copy_tree, remove_dir_all_quiet};
use super::exec::{CommandSpec, Stdout};
use super::git::{self, Want};
use super::{Executor, Failure, Run, StepResult};
use crate::domain::spec::{LocalRepos, RunSpec};

/// A git invocation's environment and grants, shared by the step's commands.
struct Git {
    env: Vec<(String, String)>,
    url: String,
    /// A local repository the commands may read.
    local: Option<PathBuf>,
}

impl Git {
    /// A git command that may write the mirror `entry` (and read a local repository).
    fn on_mirror(&self, run: &Run<'_>, entry: &Path, args: Vec<String>) -> CommandSpec {
        let mut cmd = CommandSpec::new("git", args, run.workdir.clone(), self.env.clone());
        cmd.read_only.extend(self.local.clone());
        cmd.read_write.push(entry.to_path_buf());
        cmd
    }
}

impl Executor {
    pub(super) async fn get_source(
        &self,
        run: &Run<'_>,
        idx: usize,
        spec: &RunSpec,
    ) -> StepResult<PathBuf> {
        let source = &spec.source;
        let git = Git {
            env: self.git_env(run)?,
            url: source.repo_url.clone(),
            local: self.local_grant(&source.repo_url)?,
        };
        run.log
            .line(
                idx,
                &format!("Fetching {} at {}", source.repo_url, source.describe_ref()),
            )
            .await;
        let want = Want::of(source);
        let sha = match &want {
            Want::Head(reference) => self.remote_head(run, idx, &git, reference).await?,
            Want::Commit { sha, .. } => sha.clone(),
        };
        let cache = &self.cfg.cache;
        let entry = cache.mirror(&run.d.stack.org, &source.repo_url, run.opened.git.as_ref());
        let src = run.workdir.join("src");
        let cached = entry.join("repo.git").join("HEAD").exists();
        let (sha, held) = match self
            .checkout(run, idx, &git, &entry, &want, &sha, &src)
            .await
        {
            Ok(done) => done,
            // A mirror that was there and failed may be damaged: never used again as it is.
            Err(Failure::Failed(why)) if cached => {
                run.log
                    .line(
                        idx,
                        &format!("The cached mirror could not be used ({why}); fetching the repository afresh."),
                    )
                    .await;
                {
                    let _using = Cache::hold(&entry).await.map_err(cache_error)?;
                    let _fetching = Cache::serialise(&entry.join(FETCH_LOCK))
                        .await
                        .map_err(cache_error)?;
                    remove_dir_all_quiet(&entry.join("repo.git")).map_err(cache_error)?;
                    remove_dir_all_quiet(&entry.join("trees")).map_err(cache_error)?;
                }
                let _ = tokio::fs::remove_dir_all(&src).await;
                self.checkout(run, idx, &git, &entry, &want, &sha, &src)
                    .await?
            }
            Err(e) => return Err(e),
        };
        // The run keeps its mirror (whose objects its `.git` borrows) until it ends.
        run.grant_read(entry.join("repo.git").join("objects"));
        run.hold(held);
        run.log.line(idx, &format!("Checked out {sha}")).await;
        let program_dir = match &source.repo_dir {
            Some(dir) => src.join(dir),
            None => src,
        };
        if !program_dir.is_dir() {
            return Err(Failure::Failed(format!(
                "repoDir '{}' does not exist in the repository",
                source.repo_dir.as_deref().unwrap_or_default()
            )));
        }
        Ok(program_dir)
    }

    /// Puts commit `sha` (the remote head `want` resolved to, or the pinned one) into `src`,
    /// fetching into the mirror and extracting the commit first if need be (one run at a time
    /// per mirror). Returns the full commit id and the mirror, held for the run.
    #[allow(clippy::too_many_arguments)]
    async fn checkout(
        &self,
        run: &Run<'_>,
        idx: usize,
        git: &Git,
        entry: &Path,
        want: &Want,
        sha: &str,
        src: &Path,
    ) -> StepResult<(String, Held)> {
        let held = Cache::hold(entry).await.map_err(cache_error)?;
        let extracted = |sha: &str| entry.join("trees").join(sha).join("tree").is_dir();
        // The common case, a commit extracted before: no git at all.
        if git::is_full_sha(sha) && extracted(sha) {
            materialise(entry, sha, src).await?;
            return Ok((sha.to_string(), held));
        }
        let fetching = Cache::serialise(&entry.join(FETCH_LOCK))
            .await
            .map_err(cache_error)?;
        let repo = entry.join("repo.git");
        if !repo.join("HEAD").is_file() || !repo.join("objects").is_dir() {
            remove_dir_all_quiet(&repo).map_err(cache_error)?;
            self.git(
                run,
                idx,
                git,
                entry,
                vec![
                    "init".into(),
                    "--quiet".into(),
                    "--bare".into(),
                    repo.display().to_string(),
                ],
                true,
            )
            .await?;
        }
        let full = match self.commit_in(run, idx, git, entry, sha).await? {
            Some(full) => full,
            None => {
                let (mut found, mut fetched) = (None, false);
                for refspecs in git::fetch_refspecs(want) {
                    let mut args = vec![
                        "--git-dir".into(),
                        repo.display().to_string(),
                        "fetch".into(),
                        "--quiet".into(),
                        "--no-tags".into(),
                        "--no-write-fetch-head".into(),
                        "--".into(),
                        git.url.clone(),
                    ];
                    args.extend(refspecs);
                    // A refspec the server refuses (a bare commit id, say) is no failure yet:
                    // the next one may bring the commit.
                    fetched |= self.git(run, idx, git, entry, args, false).await?.is_some();
                    found = self.commit_in(run, idx, git, entry, sha).await?;
                    if found.is_some() {
                        break;
                    }
                }
                found.ok_or_else(|| {
                    Failure::Failed(match fetched {
                        true => format!(
                            "commit {sha} is not in {}: it does not exist there, or the branch's history was rewritten and no longer holds it",
                            git.url
                        ),
                        // Every fetch failed: the repository, not the commit, is the matter.
                        false => format!(
                            "could not fetch from {} (git's messages are above: the URL, the credentials or the network)",
                            git.url
                        ),
                    })
                })?
            }
        };
        let trees = entry.join("trees");
        // Another run may have extracted it while this one waited for the fetch lock.
        if !extracted(&full) {
            // Extracted aside and renamed into place: a reader never sees half a tree.
            let tmp = trees.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
            tokio::fs::create_dir_all(tmp.join("tree"))
                .await
                .map_err(cache_error)?;
            let mut env = git.env.clone();
            env.push((
                "GIT_INDEX_FILE".into(),
                tmp.join("index").display().to_string(),
            ));
            let extract = Git {
                env,
                url: git.url.clone(),
                local: None,
            };
            let args = vec![
                "--git-dir".into(),
                repo.display().to_string(),
                "--work-tree".into(),
                tmp.join("tree").display().to_string(),
                "checkout".into(),
                "--quiet".into(),
                full.clone(),
                "--".into(),
                ".".into(),
            ];
            let done = self.git(run, idx, &extract, entry, args, true).await;
            if let Err(e) = done {
                let _ = tokio::fs::remove_dir_all(&tmp).await;
                return Err(e);
            }
            tokio::fs::rename(&tmp, trees.join(&full))
                .await
                .map_err(cache_error)?;
            self.cfg.cache.trim_soon(true);
        }
        drop(fetching);
        materialise(entry, &full, src).await?;
        Ok((full, held))
    }

    /// The full id of commit `sha` if the mirror has it.
    async fn commit_in(
        &self,
        run: &Run<'_>,
        idx: usize,
        git: &Git,
        entry: &Path,
        sha: &str,
    ) -> StepResult<Option<String>> {
        let args = vec![
            "--git-dir".into(),
            entry.join("repo.git").display().to_string(),
            "rev-parse".into(),
            "--quiet".into(),
            "--verify".into(),
            format!("{sha}^{{commit}}"),
        ];
        let out = self.git(run, idx, git, entry, args, false).await?;
        Ok(out.map(|o| String::from_utf8_lossy(&o).trim().to_string()))
    }

    /// Where `reference` points on the remote: one round trip, with the run's credentials;
    /// in-process where it can be (see `remote`), else `git ls-remote`.
    async fn remote_head(
        &self,
        run: &Run<'_>,
        idx: usize,
        git: &Git,
        reference: &str,
    ) -> StepResult<String> {
        let missing = || {
            Failure::Failed(format!(
                "{} has no {}",
                git.url,
                reference
                    .replace("refs/heads/", "branch ")
                    .replace("refs/tags/", "tag ")
            ))
        };
        let asked = super::remote::head(
            &self.http,
            &git.url,
            run.opened.git.as_ref(),
            reference,
            git.local.as_deref(),
        )
        .await
        .map_err(Failure::Failed)?;
        match asked {
            super::remote::Lookup::Found(sha) => return Ok(sha),
            super::remote::Lookup::Missing => return Err(missing()),
            super::remote::Lookup::Git => {}
        }
        let mut args = vec![
            "ls-remote".into(),
            "--".into(),
            git.url.clone(),
            reference.into(),
        ];
        if reference.starts_with("refs/tags/") {
            args.push(format!("{reference}^{{}}"));
        }
        let mut cmd = CommandSpec::new("git", args, run.workdir.clone(), git.env.clone());
        cmd.read_only.extend(git.local.clone());
        let (_, out) = self.command(run, idx, &cmd, Stdout::Capture, &[]).await?;
        git::remote_head(&String::from_utf8_lossy(&out), reference).ok_or_else(missing)
    }

    /// Runs git on the mirror: its stdout if it exits 0. Another exit fails the step if the
    /// command is `required`, and is `None` if not.
    async fn git(
        &self,
        run: &Run<'_>,
        idx: usize,
        git: &Git,
        entry: &Path,
        args: Vec<String>,
        required: bool,
    ) -> StepResult<Option<Vec<u8>>> {
        let cmd = git.on_mirror(run, entry, args);
        let tolerated: Vec<i32> = match required {
            true => vec![],
            false => (1..=255).collect(),
        };
        let (code, out) = self
            .command(run, idx, &cmd, Stdout::Capture, &tolerated)
            .await?;
        Ok((code == 0).then_some(out))
    }

    /// Git's environment for this run: no system config, no prompt, the allowed protocols, and
    /// the run's git credentials (never on a command line).
    fn git_env(&self, run: &Run<'_>) -> StepResult<Vec<(String, String)>> {
        let mut env = vec![
            ("PATH".to_string(), self.cfg.path_env.clone()),
            (
                "HOME".to_string(),
                run.workdir.join("home").display().to_string(),
            ),
            ("LANG".to_string(), self.cfg.lang.clone()),
            ("GIT_TERMINAL_PROMPT".to_string(), "0".to_string()),
            // Marks the run's processes, so a restarted server can recognise its orphans.
            ("TARMAC_DEPLOYMENT_ID".to_string(), run.d.id.to_string()),
            ("GIT_CONFIG_NOSYSTEM".to_string(), "1".to_string()),
            (
                "GIT_ALLOW_PROTOCOL".to_string(),
                git::allowed_protocols(&self.ctx.local_repos).to_string(),
            ),
        ];
        env.extend(
            git::credentials_env(run.opened.git.as_ref(), &run.workdir)
                .map_err(|e| Failure::Failed(format!("cannot write the SSH key: {e}")))?,
        );
        Ok(env)
    }

    /// A local repository's path, if `url` names one the policy allows (checked again here:
    /// the server's policy may have changed since the deployment was made).
    fn local_grant(&self, url: &str) -> StepResult<Option<PathBuf>> {
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("file://") || lower.starts_with('/')) {
            return Ok(None);
        }
        self.ctx
            .local_repos
            .check_path(url)
            .map_err(|e| Failure::Failed(e.to_string()))?;
        self.local_repo_grant(url).map(Some)
    }

    /// A local repository the clone may read, inside the sandbox: one the policy allows, and
    /// nothing runs may not see (the data dir), unless the policy names that place itself
    /// (`--demo`'s directory).
    fn local_repo_grant(&self, url: &str) -> StepResult<PathBuf> {
        let path = crate::domain::spec::local_path(url).to_path_buf();
        // `check_path` has put a `Under` policy's repository inside its directory.
        let named = matches!(&self.ctx.local_repos, LocalRepos::Under(_));
        if named || self.cfg.sandbox.may_grant(&path) {
            Ok(path)
        } else {
            Err(Failure::Failed(format!(
                "{} cannot be cloned: deployments may not read the server's data directory",
                path.display()
            )))
        }
    }
}

fn cache_error(e: std::io::Error) -> Failure {
    Failure::Failed(format!("the source cache failed: {e}"))
}

/// Copies commit `sha`'s extracted files into `src`, with a `.git` whose objects are the
/// mirror's (read-only to the run): `git log`, `git status` and `git describe` work as in a
/// clone.
async fn materialise(entry: &Path, sha: &str, src: &Path) -> StepResult<()> {
    let (tree, src) = (entry.join("trees").join(sha), src.to_path_buf());
    let objects = entry.join("repo.git").join("objects");
    let sha = sha.to_string();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        copy_tree(&tree.join("tree"), &src)?;
        let dot_git = src.join(".git");
        for dir in ["objects/info", "refs/heads", "refs/tags"] {
            std::fs::create_dir_all(dot_git.join(dir))?;
        }
        std::fs::write(dot_git.join("HEAD"), format!("{sha}\n"))?;
        std::fs::write(
            dot_git.join("config"),
            "[core]\n\trepositoryformatversion = 0\n\tbare = false\n",
        )?;
        std::fs::write(
            dot_git.join("objects/info/alternates"),
            format!("{}\n", objects.display()),
        )?;
        std::fs::copy(tree.join("index"), dot_git.join("index"))?;
        Ok(())
    })
    .await
    .map_err(|e| Failure::Failed(format!("the checkout failed: {e}")))?
    .map_err(|e| {
        Failure::Failed(format!(
            "cannot copy the source into the run's directory: {e}"
        ))
    })
}
