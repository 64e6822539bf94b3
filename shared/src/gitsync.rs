//! Git sync: the scheduler's tick polls the branches of stacks whose `gitSync` is on, and
//! deploys a new head whose changed files match `paths`, at exactly that commit.
//!
//! One tick reads the syncs that are due (the store's index, so the cost follows what is due)
//! and groups them by repository and credentials: each group costs one ref advertisement
//! (`ls-remote`'s round trip, in-process, see `runner::remote`; `git ls-remote` for what that
//! cannot read, such as SSH remotes), however many stacks and branches it holds. Only when a head moved and the stack has `paths` is anything more read:
//! the commits and trees between the last synced commit and the head (no file contents), in a
//! private temporary repository, to list the changed files.
//!
//! A commit is deployed once, whatever comes of it: a failed one waits for the next commit or
//! a manual deployment. A check that fails backs off (`GitSync::next_check`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::deps::Deps;
use crate::domain::gitsync::{DueSync, GitSync, SyncAttempt, SyncState, deployment_id};
use crate::domain::spec::{DeploymentConfig, LocalRepos, SourcePolicy};
use crate::domain::{JobStatus, StackRef};
use crate::error::{Error, Result};
use crate::runner::GitCredentials;
use crate::runner::remote::{self, Lookup};

/// What deployments made by a sync are initiated and requested by.
pub const INITIATOR: &str = "git-sync";

/// Due syncs are read in batches of this many per tick.
const BATCH: usize = 500;

/// How long listing a moved head's changed files may take.
const DIFF_TIMEOUT: Duration = Duration::from_secs(120);

/// What one tick's syncing did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    /// Stacks checked.
    pub checked: usize,
    /// Ref advertisements read (one per repository and credentials).
    pub lookups: usize,
    /// Deployments created.
    pub deployed: usize,
}

/// One due stack on its way through a tick.
struct Check {
    due: DueSync,
    sync: GitSync,
    state: SyncState,
    url: String,
    /// The full ref followed: `refs/heads/<branch>`, or `HEAD` for the default branch.
    reference: String,
    creds: Option<GitCredentials>,
    local: Option<PathBuf>,
    /// Set once the check is decided: an error, or nothing more to do.
    done: Option<std::result::Result<(), String>>,
}

fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(crate::USER_AGENT)
            .build()
            .unwrap_or_default()
    })
}

/// How long one tick spends on syncs, batch after batch; what is left is due at the next.
const BUDGET: Duration = Duration::from_secs(40);

/// What a cycle learnt of each repository (by repository and credentials): its refs, so that
/// a stack in a later batch costs no second lookup, and the files changed between two commits,
/// so that the stacks following one branch list them once.
#[derive(Default)]
struct Seen {
    /// Whether each org is paused, read once a cycle.
    org_paused: HashMap<String, bool>,
    /// The stacks checked: an index read that lags (DynamoDB's) may return one again.
    stacks: std::collections::HashSet<StackRef>,
    refs: HashMap<(String, String), HashMap<String, std::result::Result<Lookup, String>>>,
    changes: HashMap<(String, String, String, String), Changes>,
}

/// The files changed between two commits; `None` if the first is not in the second's history.
type Changes = std::result::Result<Option<Vec<String>>, String>;

/// Checks the syncs due at `now`, in batches, for at most `BUDGET`.
pub async fn check_due(deps: &Arc<Deps>, now: OffsetDateTime) -> Result<SyncReport> {
    let started = std::time::Instant::now();
    let mut report = SyncReport::default();
    let mut seen = Seen::default();
    loop {
        let read = check_batch(deps, now, &mut report, &mut seen).await?;
        if read < BATCH || started.elapsed() > BUDGET {
            break;
        }
    }
    if report.deployed > 0 {
        tracing::info!(?report, "git sync");
    }
    Ok(report)
}

/// One batch of due syncs; returns how many were read.
async fn check_batch(
    deps: &Arc<Deps>,
    now: OffsetDateTime,
    report: &mut SyncReport,
    seen: &mut Seen,
) -> Result<usize> {
    let due = deps.stacks.due_syncs(now, BATCH).await?;
    let read = due.len();
    let due: Vec<DueSync> = due
        .into_iter()
        .filter(|d| seen.stacks.insert(d.stack.clone()))
        .collect();
    if due.is_empty() {
        return Ok(0);
    }
    report.checked += due.len();
    let mut checks = Vec::with_capacity(due.len());
    for d in due {
        let paused = match seen.org_paused.get(&d.stack.org) {
            Some(&p) => p,
            None => {
                let p = deps.orgs.org_paused(&d.stack.org).await?;
                seen.org_paused.insert(d.stack.org.clone(), p);
                p
            }
        };
        if let Some(check) = prepare(deps, d, paused, now).await? {
            checks.push(check);
        }
    }

    // One ref advertisement per repository and credentials, for the refs not seen yet.
    let mut groups: HashMap<(String, String), Vec<usize>> = HashMap::new();
    for (i, c) in checks.iter().enumerate() {
        if c.done.is_none() {
            groups.entry(group_key(c)).or_default().push(i);
        }
    }
    for (key, members) in groups {
        let known = seen.refs.entry(key).or_default();
        let mut wanted: Vec<&str> = members
            .iter()
            .map(|&i| checks[i].reference.as_str())
            .filter(|r| !known.contains_key(*r))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        if !wanted.is_empty() {
            let first = &checks[members[0]];
            report.lookups += 1;
            let mut found = remote::heads(
                http(),
                &first.url,
                first.creds.as_ref(),
                &wanted,
                first.local.as_deref(),
            )
            .await;
            // What could not be read in-process is asked of git, in the same round.
            if let Ok(all) = &found
                && all.contains(&Lookup::Git)
            {
                found = ls_remote(deps, first, &wanted).await;
            }
            for (k, r) in wanted.iter().enumerate() {
                let lookup = match &found {
                    Ok(all) => Ok(all.get(k).cloned().unwrap_or(Lookup::Git)),
                    Err(e) => Err(e.clone()),
                };
                known.insert(r.to_string(), lookup);
            }
        }
        let lookups: Vec<_> = members
            .iter()
            .map(|&i| known[&checks[i].reference].clone())
            .collect();
        for (i, lookup) in members.into_iter().zip(lookups) {
            if follow(deps, &mut checks[i], lookup, &mut seen.changes).await? {
                report.deployed += 1;
            }
        }
    }

    for c in checks {
        record(deps, c, now).await;
    }
    Ok(read)
}

/// Reads a due stack's sync: its settings, the end of the deployment it made last, and its
/// credentials. `None` if it is no longer due (its sync was turned off meanwhile). A paused
/// stack, or a stack of a paused org (`org_paused`), is only rescheduled.
async fn prepare(
    deps: &Deps,
    due: DueSync,
    org_paused: bool,
    now: OffsetDateTime,
) -> Result<Option<Check>> {
    let sync = match GitSync::from_settings(&due.settings) {
        Ok(Some(sync)) => sync,
        Ok(None) => return Ok(None),
        Err(e) => {
            // Stored settings are checked when written; this is a server that changed since.
            let fallback = GitSync {
                interval: crate::domain::gitsync::MIN_INTERVAL,
                paths: vec![],
                operation: crate::domain::Operation::Update,
            };
            let mut c = blank(due, fallback);
            c.done = Some(Err(e.to_string()));
            return Ok(Some(c));
        }
    };
    let mut c = blank(due, sync);
    c.state.last_check = Some(now);
    if let Some(p) = c.state.pending.clone() {
        match deps
            .deployments
            .get_deployment(&c.due.stack, p.deployment)
            .await?
        {
            Some(d) if !d.status.is_terminal() => {
                // Still queued, awaiting approval or running: nothing starts meanwhile.
                c.done = Some(Ok(()));
                return Ok(Some(c));
            }
            Some(d) if d.status == JobStatus::Succeeded => {
                c.state.last_synced_commit = Some(p.commit.clone());
                c.state.last_error = None;
            }
            Some(d) => {
                c.state.last_error = Some(format!(
                    "deployment {} of commit {} ended {}; the next commit, or a deployment started by hand, tries again",
                    d.id, p.commit, d.status
                ));
            }
            None => {}
        }
        c.state.pending = None;
    }
    let stack = &c.due.stack;
    if c.due.paused || org_paused {
        c.done = Some(Ok(()));
        return Ok(Some(c));
    }
    let spec = match DeploymentConfig::parse(
        c.due.settings.clone(),
        SourcePolicy::Server(&deps.local_repos),
    ) {
        Ok(config) => config.spec().source.clone(),
        Err(e) => {
            c.done = Some(Err(e.to_string()));
            return Ok(Some(c));
        }
    };
    c.reference = match spec.branch.as_deref() {
        None => "HEAD".into(),
        Some(b) if b.starts_with("refs/") => b.to_string(),
        Some(b) => format!("refs/heads/{b}"),
    };
    c.url = spec.repo_url.clone();
    let cipher = deps.cipher.for_org(&stack.org);
    match crate::runner::git_credentials(&cipher, spec.auth.as_ref()) {
        Ok(creds) => c.creds = creds,
        Err(e) => c.done = Some(Err(e)),
    }
    match local_repo(deps, &c.url) {
        Ok(local) => c.local = local,
        Err(e) => c.done = Some(Err(e)),
    }
    Ok(Some(c))
}

fn blank(due: DueSync, sync: GitSync) -> Check {
    Check {
        state: due.state.clone(),
        due,
        sync,
        url: String::new(),
        reference: String::new(),
        creds: None,
        local: None,
        done: None,
    }
}

/// A local repository's path, where the server's policy allows it and it is not the server's
/// own data.
fn local_repo(deps: &Deps, url: &str) -> std::result::Result<Option<PathBuf>, String> {
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("file://") || url.starts_with('/')) {
        return Ok(None);
    }
    deps.local_repos
        .check_path(url)
        .map_err(|e| e.to_string())?;
    let path = crate::domain::spec::local_path(url).to_path_buf();
    let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    let data = deps.state_dir.parent().unwrap_or(&deps.state_dir);
    let data = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf());
    if !matches!(deps.local_repos, LocalRepos::Under(_)) && real.starts_with(&data) {
        return Err(format!(
            "{} is in the server's data directory, which git sync does not read",
            path.display()
        ));
    }
    Ok(Some(path))
}

/// Stacks share a lookup when they name one repository with the same credentials (a hash of
/// them: nothing secret is kept in the key).
fn group_key(c: &Check) -> (String, String) {
    let creds = c
        .creds
        .as_ref()
        .and_then(|g| serde_json::to_vec(g).ok())
        .map(|b| format!("{:x}", Sha256::digest(b)))
        .unwrap_or_default();
    (c.url.clone(), creds)
}

/// Acts on a stack's branch head: deploys it if it is new and its changes match `paths`.
/// Returns whether a deployment was created.
async fn follow(
    deps: &Deps,
    c: &mut Check,
    lookup: std::result::Result<Lookup, String>,
    changes: &mut HashMap<(String, String, String, String), Changes>,
) -> Result<bool> {
    let head = match lookup {
        Ok(Lookup::Found(sha)) => sha,
        Ok(Lookup::Missing) => {
            c.done = Some(Err(format!(
                "{} has no {}",
                c.url,
                c.reference.replace("refs/heads/", "branch ")
            )));
            return Ok(false);
        }
        Ok(Lookup::Git) => {
            c.done = Some(Err(format!("could not read {}'s branch heads", c.url)));
            return Ok(false);
        }
        Err(e) => {
            c.done = Some(Err(e));
            return Ok(false);
        }
    };
    let seen_before = c.state.last_seen_head.replace(head.clone());
    let known = [
        &c.state.last_attempted_commit,
        &c.state.last_synced_commit,
        &seen_before,
    ];
    if known.iter().any(|k| k.as_deref() == Some(head.as_str())) {
        c.done = Some(Ok(()));
        return Ok(false);
    }
    if let (false, Some(base)) = (c.sync.paths.is_empty(), c.state.last_synced_commit.clone()) {
        let (url, creds) = group_key(c);
        let key = (url, creds, base.clone(), head.clone());
        if !changes.contains_key(&key) {
            let listed = changed_files(deps, c, &base, &head).await;
            changes.insert(key.clone(), listed);
        }
        match changes[&key].clone() {
            // The base is gone (history rewritten): everything may have changed.
            Ok(None) => {}
            Ok(Some(files)) => {
                let files: Vec<&str> = files.iter().map(String::as_str).collect();
                if !crate::github::triggers::paths_match(&c.sync.paths, &files) {
                    c.done = Some(Ok(()));
                    return Ok(false);
                }
            }
            Err(e) => {
                // Looked at again next time.
                c.state.last_seen_head = seen_before;
                c.done = Some(Err(e));
                return Ok(false);
            }
        }
    }
    let body = json!({
        "operation": c.sync.operation.as_str(),
        "sourceContext": {"git": {"commit": head}},
    });
    let id = deployment_id(&c.due.stack, &head);
    let create = crate::service::CreateRequest {
        id: Some(id),
        ..crate::service::CreateRequest::new(&c.due.stack, &body, INITIATOR, INITIATOR)
    };
    let created = match crate::service::create(deps, &create).await {
        Ok(_) => true,
        // Made by a tick that raced this one.
        Err(Error::Conflict(_))
            if deps
                .deployments
                .get_deployment(&c.due.stack, id)
                .await?
                .is_some() =>
        {
            false
        }
        Err(e) if e.is_internal() => return Err(e),
        Err(e) => {
            c.done = Some(Err(format!(
                "could not create the deployment of {head}: {e}"
            )));
            return Ok(false);
        }
    };
    c.state.last_attempted_commit = Some(head.clone());
    c.state.pending = Some(SyncAttempt {
        commit: head,
        deployment: id,
    });
    c.state.last_error = None;
    c.done = Some(Ok(()));
    Ok(created)
}

/// Writes a check's outcome and schedules the next.
async fn record(deps: &Deps, mut c: Check, now: OffsetDateTime) {
    match c.done.take() {
        Some(Err(mut e)) => {
            // A message may quote the URL: credentials in it, or the stack's own, never show.
            let secrets = (crate::runner::git::url_credentials(&c.url).into_iter())
                .chain(c.creds.iter().flat_map(GitCredentials::secrets));
            for s in secrets.filter(|s| !s.is_empty()) {
                e = e.replace(&s, "***");
            }
            c.state.failures = c.state.failures.saturating_add(1);
            tracing::warn!(stack = %c.due.stack, error = %e, "git sync check failed");
            c.state.last_error = Some(e);
        }
        _ => {
            if c.state.failures > 0 && c.state.pending.is_none() {
                c.state.last_error = None;
            }
            c.state.failures = 0;
        }
    }
    let next = c.sync.next_check(c.due.next_check, now, c.state.failures);
    let stack: &StackRef = &c.due.stack;
    if let Err(e) = deps
        .stacks
        .record_sync(stack, c.due.next_check, &c.state, next)
        .await
    {
        tracing::error!(%stack, error = %e.chain(), "could not record a git sync check");
    }
}

/// The files changed between `base` and `head`; `None` if `base` is no longer in the branch's
/// history. Reads commits and trees only, into a private temporary repository, with the
/// stack's credentials in git's environment (never on its command line).
async fn changed_files(
    deps: &Deps,
    c: &Check,
    base: &str,
    head: &str,
) -> std::result::Result<Option<Vec<String>>, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a directory: {e}"))?;
    let git_dir = dir.path().join("repo.git");
    let mut env = git_env(deps, c, dir.path())?;
    env.push(("GIT_DIR".to_string(), git_dir.display().to_string()));
    let run = |args: Vec<String>| git(dir.path(), &env, args);
    run(vec!["init".into(), "--bare".into(), "-q".into()]).await?;
    run(vec![
        "fetch".into(),
        "-q".into(),
        "--no-tags".into(),
        "--no-write-fetch-head".into(),
        "--filter=blob:none".into(),
        "--".into(),
        c.url.clone(),
        format!("+{}:refs/sync/head", c.reference),
    ])
    .await
    .map_err(|e| format!("could not fetch {} to list the changed files: {e}", c.url))?;
    let base_known = run(vec![
        "merge-base".into(),
        "--is-ancestor".into(),
        base.into(),
        head.into(),
    ])
    .await
    .is_ok();
    if !base_known {
        return Ok(None);
    }
    let out = run(vec![
        "diff".into(),
        "--no-renames".into(),
        "--name-only".into(),
        "-z".into(),
        base.into(),
        head.into(),
    ])
    .await?;
    Ok(Some(
        out.split('\0')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect(),
    ))
}

/// Git's environment for a stack's repository, in the private directory `dir`: nothing of the
/// server's but `PATH`, no system configuration, no prompt, the allowed protocols, and the
/// stack's credentials (an HTTP password in git's environment, an SSH key in a file of `dir`;
/// never on a command line).
fn git_env(
    deps: &Deps,
    c: &Check,
    dir: &Path,
) -> std::result::Result<Vec<(String, String)>, String> {
    let mut env = vec![
        (
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_default(),
        ),
        ("HOME".to_string(), dir.display().to_string()),
        ("GIT_TERMINAL_PROMPT".to_string(), "0".to_string()),
        ("GIT_CONFIG_NOSYSTEM".to_string(), "1".to_string()),
        (
            "GIT_ALLOW_PROTOCOL".to_string(),
            crate::runner::git::allowed_protocols(&deps.local_repos).to_string(),
        ),
    ];
    env.extend(
        crate::runner::git::credentials_env(c.creds.as_ref(), dir)
            .map_err(|e| format!("cannot write the SSH key: {e}"))?,
    );
    Ok(env)
}

/// `git ls-remote` for what the in-process reader leaves to git (SSH remotes, `git://`, a dumb
/// HTTP server, a repository whose refs are not plain files): one process for the group.
async fn ls_remote(
    deps: &Deps,
    c: &Check,
    references: &[&str],
) -> std::result::Result<Vec<Lookup>, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a directory: {e}"))?;
    let env = git_env(deps, c, dir.path())?;
    let mut args = vec!["ls-remote".to_string(), "--".to_string(), c.url.clone()];
    args.extend(references.iter().map(|r| r.to_string()));
    let out = git(dir.path(), &env, args)
        .await
        .map_err(|e| format!("git ls-remote {} failed: {e}", c.url))?;
    Ok(references
        .iter()
        .map(|r| match crate::runner::git::remote_head(&out, r) {
            Some(sha) => Lookup::Found(sha),
            None => Lookup::Missing,
        })
        .collect())
}

/// Runs git with exactly `env`; its stdout if it exits 0, else its stderr's last line.
async fn git(
    cwd: &Path,
    env: &[(String, String)],
    args: Vec<String>,
) -> std::result::Result<String, String> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(&args)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(DIFF_TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("git timed out after {}s", DIFF_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("git failed")
            .trim()
            .to_string())
    }
}
