//! Getting the source: which URLs may be fetched, what a run wants of them, and credentials passed
//! through the environment (never on a command line, where other users could read them).

use base64::Engine as _;

use crate::domain::spec::source::GitSource;

/// Credentials written into a URL (`https://user:token@host/...`): the password, and the whole
/// `user:password`, so logs can mask them.
pub(crate) fn url_credentials(url: &str) -> Vec<String> {
    let Some((_, rest)) = url.split_once("://") else {
        return vec![];
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return vec![];
    };
    match userinfo.split_once(':') {
        Some((_, password)) if !password.is_empty() => {
            vec![userinfo.to_string(), password.to_string()]
        }
        _ => vec![userinfo.to_string()],
    }
}

/// Git protocols a clone may use, given the same policy as `validate_repo_url`.
pub(crate) fn allowed_protocols(local: &crate::domain::spec::LocalRepos) -> &'static str {
    if local.any_allowed() {
        "https:http:ssh:git:file"
    } else {
        "https:http:ssh:git"
    }
}

fn short_ref<'a>(r: &'a str, prefix: &str) -> &'a str {
    r.strip_prefix(prefix).unwrap_or(r)
}

/// What a run checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Want {
    /// A commit, pinned: no round trip when the mirror has it. `fetch` is the ref to fetch it
    /// by when it does not (a branch, or a pull request's `refs/pull/<n>/head`).
    Commit { sha: String, fetch: Option<String> },
    /// A branch's or tag's head (a full ref name), or the default branch's (`HEAD`), asked of
    /// the remote each run, since it may have moved.
    Head(String),
}

impl Want {
    pub(crate) fn of(spec: &GitSource) -> Self {
        let branch = spec
            .branch
            .as_deref()
            .map(|b| match b.starts_with("refs/") {
                true => b.to_string(),
                false => format!("refs/heads/{b}"),
            });
        if let Some(sha) = &spec.commit {
            return Want::Commit {
                sha: sha.clone(),
                fetch: branch,
            };
        }
        match (&spec.tag, branch) {
            (Some(t), _) => Want::Head(format!("refs/tags/{}", short_ref(t, "refs/tags/"))),
            (None, Some(b)) => Want::Head(b),
            (None, None) => Want::Head("HEAD".into()),
        }
    }
}

/// The commit `ls-remote` output names for `reference`: an annotated tag's peeled commit
/// (`^{}`) over the tag object itself.
pub(crate) fn remote_head(ls_remote: &str, reference: &str) -> Option<String> {
    let peeled = format!("{reference}^{{}}");
    let mut found = None;
    for line in ls_remote.lines() {
        let Some((sha, name)) = line.split_once('\t') else {
            continue;
        };
        if name == peeled {
            return Some(sha.to_string());
        }
        if name == reference {
            found = Some(sha.to_string());
        }
    }
    found
}

/// The refspecs that bring a commit into a mirror, tried in order until it has it: its own
/// ref, then the commit itself (servers that allow it), then every branch and tag.
pub(crate) fn fetch_refspecs(want: &Want) -> Vec<Vec<String>> {
    let spec = |r: &str| vec![format!("+{r}:{}", mirror_ref(r))];
    match want {
        Want::Head(r) => vec![spec(r)],
        Want::Commit { sha, fetch } => {
            let mut out = vec![];
            if let Some(r) = fetch {
                out.push(spec(r));
            }
            out.push(vec![sha.clone()]);
            out.push(vec![
                "+refs/heads/*:refs/heads/*".into(),
                "+refs/tags/*:refs/tags/*".into(),
            ]);
            out
        }
    }
}

/// Where a mirror keeps a fetched ref: branches and tags under their own names, anything else
/// (`HEAD`, pull requests) under `refs/tarmac/`.
fn mirror_ref(r: &str) -> String {
    if r.starts_with("refs/heads/") || r.starts_with("refs/tags/") {
        r.to_string()
    } else {
        format!("refs/tarmac/{}", r.trim_start_matches("refs/"))
    }
}

/// Whether `s` can only be a full commit id (what a mirror's trees are named by).
pub(crate) fn is_full_sha(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Credentials for HTTP remotes, as git config passed through the environment (not the command
/// line, where other users of the machine could read them).
pub(crate) fn http_auth_env(user: &str, password: &str) -> Vec<(String, String)> {
    vec![
        ("GIT_CONFIG_COUNT".into(), "1".into()),
        ("GIT_CONFIG_KEY_0".into(), "http.extraHeader".into()),
        (
            "GIT_CONFIG_VALUE_0".into(),
            format!("Authorization: {}", basic_auth(user, password)),
        ),
    ]
}

/// Git's environment for `creds`: an HTTP user and password (`http_auth_env`), or an SSH key
/// written to a private file of `dir`, where ssh also keeps the hosts it met. Never on a command
/// line.
pub(crate) fn credentials_env(
    creds: Option<&super::GitCredentials>,
    dir: &std::path::Path,
) -> std::io::Result<Vec<(String, String)>> {
    Ok(match creds {
        Some(super::GitCredentials::Ssh { private_key }) => {
            let key = dir.join("ssh-key");
            let mut text = private_key.clone();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            crate::crypto::write_private(&key, text.as_bytes()).map_err(std::io::Error::other)?;
            vec![(
                "GIT_SSH_COMMAND".to_string(),
                format!(
                    "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={}",
                    key.display(),
                    dir.join("known_hosts").display()
                ),
            )]
        }
        Some(http) => match http.http_basic() {
            Some((user, password)) => http_auth_env(user, password),
            None => vec![],
        },
        None => vec![],
    })
}

/// An HTTP Basic `Authorization` value, as git sends it and as Tarmac's own ref lookup does.
pub(crate) fn basic_auth(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_found_for_masking() {
        assert_eq!(
            url_credentials("https://bot:ghp_abc@github.com/o/r.git"),
            ["bot:ghp_abc", "ghp_abc"]
        );
        assert_eq!(
            url_credentials("https://ghp_token@github.com/o/r.git"),
            ["ghp_token"]
        );
        assert!(url_credentials("https://github.com/o/r.git").is_empty());
        assert!(url_credentials("git@github.com:o/r.git").is_empty());
    }

    #[test]
    fn a_run_wants_its_commit_then_tag_then_branch_then_the_default() {
        let mut spec = GitSource {
            repo_url: "https://h/r.git".into(),
            branch: Some("main".into()),
            ..Default::default()
        };
        assert_eq!(Want::of(&spec), Want::Head("refs/heads/main".into()));
        spec.tag = Some("refs/tags/v1".into());
        assert_eq!(Want::of(&spec), Want::Head("refs/tags/v1".into()));
        spec.commit = Some("abc123".into());
        spec.branch = Some("refs/pull/7/head".into());
        let want = Want::of(&spec);
        assert_eq!(
            want,
            Want::Commit {
                sha: "abc123".into(),
                fetch: Some("refs/pull/7/head".into())
            }
        );
        let specs = fetch_refspecs(&want);
        assert_eq!(specs[0], ["+refs/pull/7/head:refs/tarmac/pull/7/head"]);
        assert_eq!(specs[1], ["abc123"]);
        assert_eq!(specs.len(), 3);
        assert_eq!(Want::of(&GitSource::default()), Want::Head("HEAD".into()));
    }

    #[test]
    fn remote_heads_prefer_a_tags_commit() {
        let out = "1111\trefs/heads/main\n2222\trefs/tags/v1\n3333\trefs/tags/v1^{}\n4444\trefs/heads/main-old\n";
        assert_eq!(remote_head(out, "refs/heads/main").as_deref(), Some("1111"));
        assert_eq!(remote_head(out, "refs/tags/v1").as_deref(), Some("3333"));
        assert_eq!(remote_head(out, "refs/heads/gone"), None);
        assert!(is_full_sha(&"a".repeat(40)) && !is_full_sha("abc123"));
    }
}
