//! Where a deployment's program comes from: the git source, its credentials, and which
//! repository URLs a server may clone.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `sourceContext.git.gitAuth`, every secret sealed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GitAuth {
    pub access_token: Option<SealedValue>,
    pub ssh_auth: Option<SshAuth>,
    pub basic_auth: Option<BasicAuth>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SshAuth {
    pub ssh_private_key: Option<SealedValue>,
    pub password: Option<SealedValue>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    pub user_name: Option<SealedValue>,
    pub password: Option<SealedValue>,
}

/// A secret as stored: sealed for its org.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SealedValue {
    pub secret: String,
}

impl GitAuth {
    /// Every sealed value it holds.
    pub fn sealed(&self) -> impl Iterator<Item = &str> {
        let ssh = self.ssh_auth.as_ref();
        let basic = self.basic_auth.as_ref();
        [
            self.access_token.as_ref(),
            ssh.and_then(|s| s.ssh_private_key.as_ref()),
            ssh.and_then(|s| s.password.as_ref()),
            basic.and_then(|b| b.password.as_ref()),
        ]
        .into_iter()
        .flatten()
        .map(|s| s.secret.as_str())
    }
}

/// The git source of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GitSource {
    pub repo_url: String,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub tag: Option<String>,
    pub repo_dir: Option<String>,
    pub auth: Option<GitAuth>,
}

impl GitSource {
    /// What is checked out, for logs.
    pub fn describe_ref(&self) -> String {
        self.commit
            .as_ref()
            .map(|c| format!("commit {c}"))
            .or(self.tag.as_ref().map(|t| format!("tag {t}")))
            .or(self.branch.as_ref().map(|b| format!("branch {b}")))
            .unwrap_or_else(|| "the default branch".into())
    }
}

/// Which repositories on the server's own disk deployments may clone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LocalRepos {
    /// None: remote URLs only (the default).
    #[default]
    Denied,
    /// Only those inside this directory (`tarmac serve --demo`: the data dir's `demo/`).
    Under(std::path::PathBuf),
    /// Any (`--allow-local-repos`).
    Any,
}

impl LocalRepos {
    /// Whether a clone may use git's `file` transport at all.
    pub fn any_allowed(&self) -> bool {
        !matches!(self, Self::Denied)
    }

    /// Checks a local URL (`file://...` or `/path`). Under a directory, the path is resolved
    /// first (symbolic links, `..`), so nothing outside it passes; a path that does not exist
    /// does not pass either.
    pub fn check_path(&self, url: &str) -> Result<()> {
        match self {
            Self::Any => Ok(()),
            Self::Denied => Err(Error::invalid(format!(
                "repository URL '{url}' is on the server's own disk; the server must be started with --allow-local-repos to clone it"
            ))),
            Self::Under(dir) => {
                let path = local_path(url);
                let inside = match (std::fs::canonicalize(path), std::fs::canonicalize(dir)) {
                    (Ok(p), Ok(d)) => p.starts_with(&d),
                    _ => false,
                };
                if inside {
                    Ok(())
                } else {
                    Err(Error::invalid(format!(
                        "repository URL '{url}' is on the server's own disk; this server (--demo) clones from there only inside {}",
                        dir.display()
                    )))
                }
            }
        }
    }
}

/// The path of a local repository URL: `file://` (any case) removed, or the path as given.
pub fn local_path(url: &str) -> &std::path::Path {
    let path = match url.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("file://") => &url[7..],
        _ => url,
    };
    std::path::Path::new(path)
}

/// Refuses URLs whose transport could reach outside the intended remote: `ext::` runs commands,
/// and local paths or `file://` read the server's own disk unless the operator allows it.
pub fn validate_repo_url(url: &str, local: &LocalRepos) -> Result<()> {
    let lower = url.to_ascii_lowercase();
    let remote = ["https://", "http://", "ssh://", "git://"]
        .iter()
        .any(|p| lower.starts_with(p));
    // scp-like `user@host:path`.
    let scp = !lower.contains("://")
        && url
            .split_once(':')
            .is_some_and(|(host, _)| host.contains('@') && !host.contains('/'));
    let is_local = lower.starts_with("file://") || url.starts_with('/');
    if url.starts_with('-') {
        return Err(Error::invalid(format!(
            "repository URL '{url}' is not valid"
        )));
    }
    if remote || scp {
        return Ok(());
    }
    if is_local {
        return local.check_path(url);
    }
    Err(Error::invalid(format!(
        "repository URL '{url}' has an unsupported scheme: use https://, ssh:// or git@host:path"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_against_the_local_policy() {
        for ok in [
            "https://github.com/o/r.git",
            "ssh://git@h/r",
            "git@github.com:o/r.git",
        ] {
            assert!(validate_repo_url(ok, &LocalRepos::Denied).is_ok(), "{ok}");
        }
        assert!(
            validate_repo_url("file:///srv/r", &LocalRepos::Denied)
                .unwrap_err()
                .to_string()
                .contains("--allow-local-repos")
        );
        assert!(validate_repo_url("file:///srv/r", &LocalRepos::Any).is_ok());
        for bad in [
            "ext::sh -c touch% /tmp/x",
            "-uhttps://x",
            "ftp://x/y",
            "relative/path",
        ] {
            assert!(validate_repo_url(bad, &LocalRepos::Any).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_demo_server_clones_from_its_demo_directory_only() {
        let root = tempfile::tempdir().unwrap();
        let demo = root.path().join("demo");
        std::fs::create_dir_all(demo.join("quickstart")).unwrap();
        std::fs::create_dir_all(root.path().join("secret")).unwrap();
        std::os::unix::fs::symlink(root.path().join("secret"), demo.join("link")).unwrap();
        let policy = LocalRepos::Under(demo.clone());
        let inside = demo.join("quickstart");
        assert!(validate_repo_url(&format!("file://{}", inside.display()), &policy).is_ok());
        assert!(validate_repo_url(&inside.display().to_string(), &policy).is_ok());
        for outside in [
            format!("file://{}/../secret", demo.display()),
            format!("file://{}", demo.join("link").display()),
            format!("file://{}", root.path().join("secret").display()),
            format!("file://{}", demo.join("missing").display()),
        ] {
            let err = validate_repo_url(&outside, &policy)
                .unwrap_err()
                .to_string();
            assert!(err.contains("only inside"), "{outside}: {err}");
        }
    }
}
