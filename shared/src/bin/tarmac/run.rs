//! `tarmac run` and `tarmac logs`: start a deployment, follow it, exit with what happened.

use std::io::IsTerminal;

use serde_json::{Map, Value, json};

use crate::api::{Api, CliError, CliResult, StackPath, exit};
use crate::follow::Follower;
use crate::output::{self, Format, Table};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Op {
    Update,
    Preview,
    Refresh,
    Destroy,
    DetectDrift,
    RemediateDrift,
}

impl Op {
    pub(crate) fn wire(self) -> &'static str {
        match self {
            Self::Update => "update",
            Self::Preview => "preview",
            Self::Refresh => "refresh",
            Self::Destroy => "destroy",
            Self::DetectDrift => "detect-drift",
            Self::RemediateDrift => "remediate-drift",
        }
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = exit::HELP)]
pub(crate) struct RunArgs {
    /// The stack: ORG/PROJECT/STACK (or PROJECT/STACK in your default org).
    pub(crate) stack: String,
    /// The operation.
    #[arg(long, value_enum, default_value = "update")]
    op: Op,
    /// Deploy this branch (e.g. main or refs/heads/main) instead of the settings' one.
    #[arg(long, conflicts_with_all = ["commit", "tag"])]
    branch: Option<String>,
    /// Deploy this commit.
    #[arg(long, conflicts_with_all = ["branch", "tag"])]
    commit: Option<String>,
    /// Deploy this tag.
    #[arg(long, conflicts_with_all = ["branch", "commit"])]
    tag: Option<String>,
    /// An environment variable for this run only: K=V (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// A secret environment variable for this run only, read from a file: K=@PATH (repeatable).
    /// Values are never taken from the command line, where other users could see them.
    #[arg(long = "secret-env", value_name = "K=@PATH")]
    secret_env: Vec<String>,
    /// Do not start from the stack's deployment settings: the request must carry them all.
    #[arg(long)]
    no_inherit: bool,
    /// Follow the run to its end and exit with its outcome.
    #[arg(long, short)]
    follow: bool,
}

fn pair(s: &str, flag: &str) -> CliResult<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(CliError::new(format!("{flag} '{s}' is not K=V"))),
    }
}

/// The request body of `POST S/deployments`.
fn request(a: &RunArgs) -> CliResult<Value> {
    let mut body = json!({ "operation": a.op.wire(), "inheritSettings": !a.no_inherit });
    let git_ref = match (&a.branch, &a.commit, &a.tag) {
        (Some(b), _, _) if b.starts_with("refs/") => Some(json!({ "branch": b })),
        (Some(b), _, _) => Some(json!({ "branch": format!("refs/heads/{b}") })),
        (_, Some(c), _) => Some(json!({ "commit": c })),
        (_, _, Some(t)) => Some(json!({ "branch": format!("refs/tags/{t}") })),
        _ => None,
    };
    if let Some(g) = git_ref {
        body["sourceContext"] = json!({ "git": g });
    }
    let mut vars = Map::new();
    for e in &a.env {
        let (k, v) = pair(e, "--env")?;
        vars.insert(k, Value::String(v));
    }
    for e in &a.secret_env {
        let (k, v) = pair(e, "--secret-env")?;
        let path = v.strip_prefix('@').ok_or_else(|| {
            CliError::new(format!("--secret-env {k}: give a file, as {k}=@PATH"))
                .hint("secret values are read from files so they never appear in the process list or shell history")
        })?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::new(format!("--secret-env {k}: {path}: {e}")))?;
        let value = text.strip_suffix('\n').unwrap_or(&text).to_string();
        vars.insert(k, json!({ "secret": value }));
    }
    if !vars.is_empty() {
        body["operationContext"] = json!({ "environmentVariables": vars });
    }
    Ok(body)
}

pub(crate) async fn run(
    api: &Api,
    stack: &StackPath,
    a: &RunArgs,
    format: Format,
) -> CliResult<u8> {
    let created = api
        .post(&format!("{}/deployments", stack.api()), &request(a)?)
        .await?;
    let id = created["id"]
        .as_str()
        .ok_or_else(|| CliError::new("the server did not answer a deployment id"))?
        .to_string();
    if !a.follow {
        output::emit(format, &created, |c| {
            let mut t = Table::new(&["DEPLOYMENT", "VERSION", "CONSOLE"]);
            t.row(vec![
                output::cell(&c["id"]),
                output::cell(&c["version"]),
                output::cell(&c["consoleUrl"]),
            ]);
            t
        })?;
        return Ok(exit::OK);
    }
    eprintln!(
        "Deployment {id} (version {}) of {stack}: {}",
        output::cell(&created["version"]),
        output::cell(&created["consoleUrl"])
    );
    follow(api, stack, &id).await
}

/// Follows to the end; Ctrl-C asks whether to cancel.
pub(crate) async fn follow(api: &Api, stack: &StackPath, id: &str) -> CliResult<u8> {
    let mut f = Follower::new(api, stack, id);
    loop {
        let ended = tokio::select! {
            r = f.run() => r?,
            _ = tokio::signal::ctrl_c() => {
                if f.cancel_requested {
                    // A second Ctrl-C after a cancel: stop waiting for it.
                    return Ok(detach(&f));
                }
                match ask_cancel(&mut f).await {
                    Answer::Cancel => {
                        // Too late when it has finished meanwhile: the follow says how.
                        if cancel(api, stack, id).await? {
                            f.cancel_requested = true;
                            f.note("Cancel requested; following the deployment to its end (Ctrl-C again to stop following).");
                        }
                        continue;
                    }
                    Answer::Detach => return Ok(detach(&f)),
                }
            }
        };
        let code = ended.exit_code();
        let outcome = match code {
            exit::OK => "succeeded".to_string(),
            exit::CANCELLED => "was cancelled".to_string(),
            exit::SKIPPED => "was skipped".to_string(),
            _ => ended.status.clone(),
        };
        eprintln!("Deployment {id} {outcome}.");
        return Ok(code);
    }
}

/// `tarmac logs` without --follow: what was logged so far.
pub(crate) async fn print_log(api: &Api, stack: &StackPath, id: &str) -> CliResult<u8> {
    Follower::new(api, stack, id).print_so_far().await?;
    Ok(exit::OK)
}

fn detach(f: &Follower) -> u8 {
    f.note(&format!(
        "Stopped following; the deployment goes on. Follow it again with: tarmac logs {} --follow",
        f.reference()
    ));
    exit::DETACHED
}

enum Answer {
    Cancel,
    Detach,
}

/// On a terminal: "Cancel deployment ...? [y/N]". Elsewhere there is no one to ask, so the
/// follow stops and the deployment goes on.
async fn ask_cancel(f: &mut Follower) -> Answer {
    if !std::io::stdin().is_terminal() {
        return Answer::Detach;
    }
    f.pause_spinner();
    eprint!("\nCancel deployment {}? [y/N] ", f.reference());
    // On a thread of its own, not the runtime's blocking pool: when Ctrl-C answers instead, the
    // read is left waiting, and the runtime would wait for it before the process could exit.
    let (tx, read) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = tx.send(std::io::stdin().read_line(&mut s).map(|_| s));
    });
    let answer = tokio::select! {
        answer = read => match answer {
            Ok(Ok(s)) if matches!(s.trim(), "y" | "Y" | "yes") => Answer::Cancel,
            _ => Answer::Detach,
        },
        _ = tokio::signal::ctrl_c() => {
            // Off the prompt's line.
            eprintln!();
            Answer::Detach
        }
    };
    if let Answer::Cancel = answer {
        f.resume_spinner();
    }
    answer
}

/// Asks the server to cancel; false if the deployment had already finished.
async fn cancel(api: &Api, stack: &StackPath, id: &str) -> CliResult<bool> {
    match api
        .post(
            &format!("{}/deployments/{id}/cancel", stack.api()),
            &json!({}),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.status == Some(reqwest::StatusCode::CONFLICT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A deployment named on the command line: `ORG/PROJECT/STACK/ID`, a console URL
/// (`.../ORG/PROJECT/STACK/deployments/VERSION`), or a bare id looked up among the org's
/// deployments.
pub(crate) async fn locate(
    api: &Api,
    given: &str,
    org: Option<&str>,
) -> CliResult<(StackPath, String)> {
    // A URL's path: the console may be served under a base path, so only its end counts.
    let url = given.contains("://");
    let path = match given.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, p)| p),
        None => given,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let found = match parts.as_slice() {
        [.., o, p, s, "deployments", id] if url => Some((StackPath::new(o, p, s), *id)),
        [o, p, s, id] | [o, p, s, "deployments", id] => Some((StackPath::new(o, p, s), *id)),
        _ => None,
    };
    if let Some((stack, id)) = found {
        if !id.bytes().all(|b| b.is_ascii_digit()) {
            return Ok((stack, id.to_string()));
        }
        // The console names a deployment by its version in the stack.
        let d = api
            .get(&format!("{}/deployments/version/{id}", stack.api()))
            .await?;
        return match d["id"].as_str() {
            Some(id) => Ok((stack, id.to_string())),
            None => Err(CliError::new("the server did not answer a deployment id")),
        };
    }
    let path = path.trim_matches('/');
    match parts.as_slice() {
        [_] if !url => {}
        _ => {
            return Err(CliError::new(format!("'{given}' is not a deployment"))
                .hint("name it ORG/PROJECT/STACK/ID, paste its console URL, or give its id"));
        }
    }
    let org = match org {
        Some(o) => o.to_string(),
        None => crate::commands::default_org(api).await?,
    };
    for page in 1..=100 {
        let listed = api
            .get(&format!(
                "/api/orgs/{}/deployments?pageSize=100&page={page}",
                crate::api::enc(&org)
            ))
            .await?;
        let items = listed["deployments"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for d in &items {
            if d["id"].as_str() == Some(path) {
                let project = d["projectName"].as_str().unwrap_or_default();
                let stack = d["stackName"].as_str().unwrap_or_default();
                return Ok((StackPath::new(&org, project, stack), path.to_string()));
            }
        }
        if items.len() < 100 {
            break;
        }
    }
    Err(CliError::new(format!("no deployment {path} in org {org}"))
        .hint("name it ORG/PROJECT/STACK/ID, or pass --org"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: RunArgs,
    }

    #[test]
    fn requests_carry_the_ref_and_the_run_only_variables() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("pw");
        std::fs::write(&secret, "hunter2\n").unwrap();
        let secret_arg = format!("DB=@{}", secret.display());
        let t = T::parse_from([
            "t",
            "a/b/c",
            "--op",
            "destroy",
            "--tag",
            "v1",
            "--env",
            "A=1=2",
            "--secret-env",
            &secret_arg,
        ]);
        let body = request(&t.a).unwrap();
        assert_eq!(
            body,
            json!({
                "operation": "destroy",
                "inheritSettings": true,
                "sourceContext": {"git": {"branch": "refs/tags/v1"}},
                "operationContext": {"environmentVariables": {"A": "1=2", "DB": {"secret": "hunter2"}}},
            })
        );
        let t = T::parse_from(["t", "a/b/c", "--secret-env", "DB=hunter2"]);
        let e = request(&t.a).unwrap_err();
        assert!(e.message.contains("give a file"), "{e}");
        let t = T::parse_from(["t", "a/b/c", "--branch", "dev", "--no-inherit"]);
        let body = request(&t.a).unwrap();
        assert_eq!(body["sourceContext"]["git"]["branch"], "refs/heads/dev");
        assert_eq!(body["inheritSettings"], false);
    }
}
