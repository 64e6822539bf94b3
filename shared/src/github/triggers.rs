//! Which stacks a GitHub event deploys, and how: pure functions of the payload and the stacks'
//! settings.
//!
//! - `push` to a branch: stacks with `gitHub.deployCommits`, the same repository, the same
//!   branch (the repository's default branch when the stack names none), and, if `gitHub.paths`
//!   is set, at least one changed file that the globs include and no `!` glob excludes. The
//!   deployment is an `update` at exactly the pushed commit.
//! - `push` of a tag: stacks with `gitHub.deployTags` whose `tagFilters` (globs; none means
//!   every tag) match; an `update` at the tagged commit.
//! - `pull_request` (`opened`, `synchronize`, `reopened`) from a branch of the same
//!   repository: stacks with `gitHub.previewPullRequests` whose branch is the pull request's
//!   base; a `preview` at the head commit, fetched through `refs/pull/<n>/head`. Pull requests
//!   from forks are not previewed: their code would run with the stack's secrets and
//!   credentials.

use globset::{Glob, GlobBuilder, GlobMatcher};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::domain::{Operation, StackRef};
use crate::error::{Error, Result};

/// GitHub sends at most this many commits in a push; past it the changed files are unknown.
const PUSH_COMMITS_LIMIT: usize = 20;

#[derive(Debug, Deserialize)]
pub struct Repository {
    pub full_name: String,
    #[serde(default)]
    pub clone_url: Option<String>,
    #[serde(default)]
    pub default_branch: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Commit {
    pub id: String,
    #[serde(default)]
    pub added: Vec<String>,
    #[serde(default)]
    pub modified: Vec<String>,
    #[serde(default)]
    pub removed: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct PushEvent {
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub after: String,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub commits: Vec<Commit>,
    pub head_commit: Option<Commit>,
    pub repository: Repository,
    pub installation: Option<Installation>,
}

#[derive(Debug, Deserialize)]
pub struct Installation {
    pub id: i64,
}

#[derive(Debug, Deserialize)]
pub struct PullRequestEvent {
    pub action: String,
    pub number: i64,
    pub pull_request: PullRequest,
    pub repository: Repository,
    pub installation: Option<Installation>,
}

#[derive(Debug, Deserialize)]
pub struct PullRequest {
    pub head: GitRef,
    pub base: GitRef,
}

#[derive(Debug, Deserialize)]
pub struct GitRef {
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub sha: String,
    /// `null` when a fork was deleted.
    #[serde(default)]
    pub repo: Option<NamedRepo>,
}

#[derive(Debug, Deserialize)]
pub struct NamedRepo {
    pub full_name: String,
}

/// An event Tarmac acts on.
#[derive(Debug)]
pub enum Event {
    Push(PushEvent),
    PullRequest(PullRequestEvent),
}

impl Event {
    /// `None` for events and actions Tarmac ignores.
    pub fn parse(kind: &str, body: &[u8]) -> Result<Option<Self>> {
        let bad = |e: serde_json::Error| Error::invalid(format!("not a GitHub {kind} event: {e}"));
        Ok(match kind {
            "push" => Some(Event::Push(serde_json::from_slice(body).map_err(bad)?)),
            "pull_request" => {
                let e: PullRequestEvent = serde_json::from_slice(body).map_err(bad)?;
                matches!(e.action.as_str(), "opened" | "synchronize" | "reopened")
                    .then_some(Event::PullRequest(e))
            }
            _ => None,
        })
    }

    pub fn repository(&self) -> &Repository {
        match self {
            Event::Push(p) => &p.repository,
            Event::PullRequest(p) => &p.repository,
        }
    }

    pub fn installation(&self) -> Option<i64> {
        match self {
            Event::Push(p) => p.installation.as_ref().map(|i| i.id),
            Event::PullRequest(p) => p.installation.as_ref().map(|i| i.id),
        }
    }
}

/// A deployment an event asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub stack: StackRef,
    pub operation: Operation,
    pub commit: String,
    /// A ref to fetch besides the branches (a pull request's head).
    pub fetch_ref: Option<String>,
    pub pull_request: Option<i64>,
}

impl Trigger {
    /// The create-deployment request for this trigger. The stack's own clone URL and
    /// credentials stand; `clone` (URL and token) is used only when it has none.
    pub fn request(&self, settings: &Value, clone: Option<(&str, Option<&str>)>) -> Value {
        let mut git = json!({"commit": self.commit});
        if let Some(r) = &self.fetch_ref {
            git["branch"] = json!(r);
        }
        let has_url = settings["sourceContext"]["git"]["repoUrl"]
            .as_str()
            .is_some_and(|u| !u.trim().is_empty());
        if !has_url && let Some((url, token)) = clone {
            git["repoUrl"] = json!(url);
            if let Some(token) = token {
                git["gitAuth"] = json!({"accessToken": {"secret": token}});
            }
        }
        json!({
            "operation": self.operation.as_str(),
            "inheritSettings": true,
            "sourceContext": {"git": git},
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct VcsSettings {
    repository: Option<String>,
    deploy_commits: bool,
    deploy_tags: bool,
    preview_pull_requests: bool,
    paths: Vec<String>,
    tag_filters: Vec<String>,
}

fn vcs(settings: &Value) -> VcsSettings {
    serde_json::from_value(settings["gitHub"].clone()).unwrap_or_default()
}

fn short_branch(b: &str) -> &str {
    b.strip_prefix("refs/heads/").unwrap_or(b)
}

fn stack_branch<'a>(settings: &'a Value, repo: &'a Repository) -> Option<&'a str> {
    settings["sourceContext"]["git"]["branch"]
        .as_str()
        .filter(|b| !b.trim().is_empty())
        .or(repo.default_branch.as_deref())
        .map(short_branch)
}

fn glob(pattern: &str) -> Option<GlobMatcher> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .ok()
        .map(|g: Glob| g.compile_matcher())
}

/// Whether the changed files pass `paths`: some file is included (by any non-`!` glob, or by
/// default when there are only excludes) and excluded by no `!` glob.
pub fn paths_match(paths: &[String], changed: &[&str]) -> bool {
    if paths.is_empty() {
        return true;
    }
    let (excludes, includes): (Vec<&String>, Vec<&String>) =
        paths.iter().partition(|p| p.starts_with('!'));
    let includes: Vec<GlobMatcher> = includes.iter().filter_map(|p| glob(p)).collect();
    let excludes: Vec<GlobMatcher> = excludes.iter().filter_map(|p| glob(&p[1..])).collect();
    changed.iter().any(|f| {
        (includes.is_empty() || includes.iter().any(|g| g.is_match(f)))
            && !excludes.iter().any(|g| g.is_match(f))
    })
}

/// The deployments `event` asks of these stacks (each with its canonical settings).
pub fn triggers(event: &Event, stacks: &[(StackRef, Value)]) -> Vec<Trigger> {
    let repo = event.repository();
    let mut out = Vec::new();
    for (stack, settings) in stacks {
        let v = vcs(settings);
        let same_repo = v
            .repository
            .as_deref()
            .is_some_and(|r| r.eq_ignore_ascii_case(&repo.full_name));
        if !same_repo {
            continue;
        }
        let trigger = |operation, commit: &str, fetch_ref: Option<String>, pr| Trigger {
            stack: stack.clone(),
            operation,
            commit: commit.to_string(),
            fetch_ref,
            pull_request: pr,
        };
        match event {
            Event::Push(p) if p.deleted => {}
            Event::Push(p) => {
                if let Some(branch) = p.git_ref.strip_prefix("refs/heads/") {
                    if !v.deploy_commits || stack_branch(settings, repo) != Some(branch) {
                        continue;
                    }
                    let files: Vec<&str> = p
                        .commits
                        .iter()
                        .flat_map(|c| c.added.iter().chain(&c.modified).chain(&c.removed))
                        .map(String::as_str)
                        .collect();
                    let unknown = p.commits.len() >= PUSH_COMMITS_LIMIT;
                    if unknown || paths_match(&v.paths, &files) {
                        out.push(trigger(Operation::Update, &p.after, None, None));
                    }
                } else if let Some(tag) = p.git_ref.strip_prefix("refs/tags/") {
                    let matches = v.tag_filters.is_empty()
                        || v.tag_filters
                            .iter()
                            .filter_map(|f| glob(f))
                            .any(|g| g.is_match(tag));
                    if v.deploy_tags && matches {
                        // `after` is the tag object for annotated tags; deploy the commit.
                        let commit = p.head_commit.as_ref().map_or(&p.after, |c| &c.id);
                        out.push(trigger(Operation::Update, commit, None, None));
                    }
                }
            }
            Event::PullRequest(pr) => {
                let base = short_branch(&pr.pull_request.base.git_ref);
                // A fork's code would run with the stack's secrets and cloud credentials: only
                // pull requests from branches of the repository itself are previewed.
                let same_repo = pr
                    .pull_request
                    .head
                    .repo
                    .as_ref()
                    .is_some_and(|h| h.full_name.eq_ignore_ascii_case(&repo.full_name));
                if v.preview_pull_requests
                    && same_repo
                    && stack_branch(settings, repo) == Some(base)
                {
                    out.push(trigger(
                        Operation::Preview,
                        &pr.pull_request.head.sha,
                        Some(format!("refs/pull/{}/head", pr.number)),
                        Some(pr.number),
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/../events/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn stack(name: &str, gh: Value) -> (StackRef, Value) {
        (
            StackRef::new("o", "p", name).unwrap(),
            json!({"gitHub": gh, "sourceContext": {"git": {"branch": "refs/heads/master"}}}),
        )
    }

    fn names(ts: &[Trigger]) -> Vec<&str> {
        ts.iter().map(|t| t.stack.stack.as_str()).collect()
    }

    #[test]
    fn a_branch_push_deploys_matching_stacks_at_the_pushed_commit() {
        // The real payload: Codertocat/Hello-World, refs/heads/master, README.md added.
        let e = Event::parse("push", &fixture("github-push.json"))
            .unwrap()
            .unwrap();
        let stacks = [
            stack(
                "yes",
                json!({"repository": "codertocat/hello-world", "deployCommits": true}),
            ),
            stack(
                "off",
                json!({"repository": "Codertocat/Hello-World", "deployCommits": false}),
            ),
            stack(
                "other-repo",
                json!({"repository": "Codertocat/Other", "deployCommits": true}),
            ),
            stack(
                "readme",
                json!({"repository": "Codertocat/Hello-World", "deployCommits": true, "paths": ["*.md"]}),
            ),
            stack(
                "infra-only",
                json!({"repository": "Codertocat/Hello-World", "deployCommits": true, "paths": ["infra/**"]}),
            ),
            stack(
                "not-md",
                json!({"repository": "Codertocat/Hello-World", "deployCommits": true, "paths": ["!**/*.md", "!*.md"]}),
            ),
        ];
        let mut other_branch = stack(
            "dev-branch",
            json!({"repository": "Codertocat/Hello-World", "deployCommits": true}),
        );
        other_branch.1["sourceContext"]["git"]["branch"] = json!("dev");
        let mut all = stacks.to_vec();
        all.push(other_branch);
        let ts = triggers(&e, &all);
        assert_eq!(names(&ts), ["yes", "readme"]);
        assert_eq!(ts[0].operation, Operation::Update);
        assert_eq!(ts[0].commit, "6113728f27ae82c7b1a177c8d03f9e96e0adf246");
    }

    #[test]
    fn a_tag_push_deploys_stacks_whose_tag_filters_match() {
        let e = Event::parse("push", &fixture("github-push-tag.json"))
            .unwrap()
            .unwrap();
        let stacks = [
            stack(
                "all-tags",
                json!({"repository": "Codertocat/Hello-World", "deployTags": true}),
            ),
            stack(
                "simple",
                json!({"repository": "Codertocat/Hello-World", "deployTags": true, "tagFilters": ["simple-*"]}),
            ),
            stack(
                "releases",
                json!({"repository": "Codertocat/Hello-World", "deployTags": true, "tagFilters": ["v*"]}),
            ),
            stack(
                "commits-only",
                json!({"repository": "Codertocat/Hello-World", "deployCommits": true}),
            ),
        ];
        let ts = triggers(&e, &stacks);
        assert_eq!(names(&ts), ["all-tags", "simple"]);
        assert_eq!(ts[0].commit, "6113728f27ae82c7b1a177c8d03f9e96e0adf246");
    }

    #[test]
    fn pull_requests_preview_at_the_head_through_the_pull_ref() {
        for name in [
            "github-pull_request-opened.json",
            "github-pull_request-synchronize.json",
        ] {
            let e = Event::parse("pull_request", &fixture(name))
                .unwrap()
                .unwrap();
            let stacks = [
                stack(
                    "previews",
                    json!({"repository": "Codertocat/Hello-World", "previewPullRequests": true}),
                ),
                stack(
                    "no-previews",
                    json!({"repository": "Codertocat/Hello-World", "deployCommits": true}),
                ),
            ];
            let ts = triggers(&e, &stacks);
            assert_eq!(names(&ts), ["previews"], "{name}");
            assert_eq!(ts[0].operation, Operation::Preview);
            assert_eq!(ts[0].commit, "ec26c3e57ca3a959ca5aad62de7213c562f8c821");
            assert_eq!(ts[0].fetch_ref.as_deref(), Some("refs/pull/2/head"));
            assert_eq!(ts[0].pull_request, Some(2));
        }
        // A fork's pull request is not previewed.
        let mut fork: Value =
            serde_json::from_slice(&fixture("github-pull_request-opened.json")).unwrap();
        fork["pull_request"]["head"]["repo"]["full_name"] = json!("mallory/Hello-World");
        let e = Event::parse("pull_request", fork.to_string().as_bytes())
            .unwrap()
            .unwrap();
        let stacks = [stack(
            "previews",
            json!({"repository": "Codertocat/Hello-World", "previewPullRequests": true}),
        )];
        assert!(triggers(&e, &stacks).is_empty());
        // Other actions are ignored.
        let mut closed: Value =
            serde_json::from_slice(&fixture("github-pull_request-opened.json")).unwrap();
        closed["action"] = json!("closed");
        assert!(
            Event::parse("pull_request", closed.to_string().as_bytes())
                .unwrap()
                .is_none()
        );
        assert!(Event::parse("issues", b"{}").unwrap().is_none());
    }

    #[test]
    fn path_filters_include_then_exclude() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(paths_match(&p(&["infra/**"]), &["infra/main.tf"]));
        assert!(!paths_match(&p(&["infra/**"]), &["app/main.go"]));
        assert!(!paths_match(
            &p(&["infra/**", "!infra/docs/**"]),
            &["infra/docs/a.md"]
        ));
        assert!(paths_match(
            &p(&["infra/**", "!infra/docs/**"]),
            &["infra/docs/a.md", "infra/x.tf"]
        ));
        assert!(
            !paths_match(&p(&["*.tf"]), &["infra/x.tf"]),
            "* does not cross directories"
        );
        assert!(
            !paths_match(&p(&["infra/**"]), &[]),
            "no changed files, nothing to deploy"
        );
        assert!(paths_match(&[], &[]));
    }

    #[test]
    fn the_request_uses_the_payloads_clone_url_only_when_the_stack_has_none() {
        let t = Trigger {
            stack: StackRef::new("o", "p", "s").unwrap(),
            operation: Operation::Preview,
            commit: "abc".into(),
            fetch_ref: Some("refs/pull/2/head".into()),
            pull_request: Some(2),
        };
        let own = json!({"sourceContext": {"git": {"repoUrl": "https://git.example.com/x.git"}}});
        let r = t.request(&own, Some(("https://github.com/o/r.git", Some("ghs_x"))));
        assert_eq!(
            r["sourceContext"]["git"],
            json!({"commit": "abc", "branch": "refs/pull/2/head"})
        );
        let r = t.request(
            &json!({}),
            Some(("https://github.com/o/r.git", Some("ghs_x"))),
        );
        assert_eq!(
            r["sourceContext"]["git"]["repoUrl"],
            "https://github.com/o/r.git"
        );
        assert_eq!(
            r["sourceContext"]["git"]["gitAuth"]["accessToken"]["secret"],
            "ghs_x"
        );
        assert_eq!(r["operation"], "preview");
    }
}
