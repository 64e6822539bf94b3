//! Getting the source: which URLs may be cloned, the clone commands, and credentials passed
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

/// The git invocations that put the source into `dest`, in order.
pub(crate) fn clone_commands(spec: &GitSource, dest: &str) -> Vec<Vec<String>> {
    let url = spec.repo_url.clone();
    let args = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    if let Some(commit) = &spec.commit {
        // A commit may not be at any ref's tip, so fetch the history and check it out. A pull
        // request's head (perhaps from a fork) is only under its `refs/pull/<n>/head`.
        let mut cmds = vec![args(&[
            "clone",
            "--quiet",
            "--no-checkout",
            "--",
            &url,
            dest,
        ])];
        if let Some(pull) = spec
            .branch
            .as_deref()
            .filter(|b| b.starts_with("refs/pull/"))
        {
            cmds.push(args(&["-C", dest, "fetch", "--quiet", "origin", pull]));
        }
        cmds.push(args(&[
            "-C", dest, "checkout", "--quiet", "--detach", commit,
        ]));
        return cmds;
    }
    let reference = spec
        .tag
        .as_deref()
        .map(|t| short_ref(t, "refs/tags/"))
        .or(spec.branch.as_deref().map(|b| short_ref(b, "refs/heads/")));
    match reference {
        Some(r) => vec![args(&[
            "clone",
            "--quiet",
            "--depth",
            "1",
            "--single-branch",
            "--branch",
            r,
            "--",
            &url,
            dest,
        ])],
        None => vec![args(&[
            "clone", "--quiet", "--depth", "1", "--", &url, dest,
        ])],
    }
}

/// Credentials for HTTP remotes, as git config passed through the environment (not the command
/// line, where other users of the machine could read them).
pub(crate) fn http_auth_env(user: &str, password: &str) -> Vec<(String, String)> {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    vec![
        ("GIT_CONFIG_COUNT".into(), "1".into()),
        ("GIT_CONFIG_KEY_0".into(), "http.extraHeader".into()),
        (
            "GIT_CONFIG_VALUE_0".into(),
            format!("Authorization: Basic {basic}"),
        ),
    ]
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
    fn clone_follows_commit_then_tag_then_branch() {
        let mut spec = GitSource {
            repo_url: "https://h/r.git".into(),
            branch: Some("refs/heads/main".into()),
            ..Default::default()
        };
        assert!(clone_commands(&spec, "src")[0].contains(&"main".to_string()));
        spec.tag = Some("refs/tags/v1".into());
        assert!(clone_commands(&spec, "src")[0].contains(&"v1".to_string()));
        spec.commit = Some("abc123".into());
        let cmds = clone_commands(&spec, "src");
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[1].last().unwrap(), "abc123");
    }
}
