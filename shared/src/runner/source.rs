//! The "Get source" step: the git checkout, with credentials through the environment.

use std::path::PathBuf;

use super::exec::{CommandSpec, Stdout};
use super::{Executor, Failure, GitCredentials, Run, StepResult, git};
use crate::domain::spec::{LocalRepos, RunSpec};

impl Executor {
    pub(super) async fn get_source(
        &self,
        run: &Run<'_>,
        idx: usize,
        spec: &RunSpec,
    ) -> StepResult<PathBuf> {
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
        let source = &spec.source;
        match &run.opened.git {
            Some(GitCredentials::Ssh { private_key }) => {
                let key_path = run.workdir.join("ssh-key");
                let mut key = private_key.clone();
                if !key.ends_with('\n') {
                    key.push('\n');
                }
                crate::crypto::write_private(&key_path, key.as_bytes())
                    .map_err(|e| Failure::Failed(format!("cannot write the SSH key: {e}")))?;
                env.push((
                    "GIT_SSH_COMMAND".into(),
                    format!(
                        "ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={}",
                        key_path.display(),
                        run.workdir.join("known_hosts").display()
                    ),
                ));
            }
            Some(GitCredentials::Token { token }) => {
                env.extend(git::http_auth_env("x-access-token", token));
            }
            Some(GitCredentials::Basic { user, password }) => {
                env.extend(git::http_auth_env(user, password));
            }
            None => {}
        }
        // Checked again here: the server's policy may have changed since the deployment was made.
        let url = source.repo_url.to_ascii_lowercase();
        let mut local = None;
        if url.starts_with("file://") || url.starts_with('/') {
            self.ctx
                .local_repos
                .check_path(&source.repo_url)
                .map_err(|e| Failure::Failed(e.to_string()))?;
            local = Some(self.local_repo_grant(&source.repo_url)?);
        }
        let what = source.describe_ref();
        run.log
            .line(idx, &format!("Cloning {} at {what}", source.repo_url))
            .await;
        for args in git::clone_commands(source, "src") {
            let mut cmd = CommandSpec::new("git", args, run.workdir.clone(), env.clone());
            cmd.read_only.extend(local.clone());
            self.command(run, idx, &cmd, Stdout::Log, &[]).await?;
        }
        let src = run.workdir.join("src");
        let rev = CommandSpec::new(
            "git",
            vec!["rev-parse".into(), "HEAD".into()],
            src.clone(),
            env,
        );
        let (_, sha) = self.command(run, idx, &rev, Stdout::Capture, &[]).await?;
        run.log
            .line(
                idx,
                &format!("Checked out {}", String::from_utf8_lossy(&sha).trim()),
            )
            .await;
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
