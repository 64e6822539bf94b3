//! The read-and-change commands: stacks, deployments, pause and resume, schedules, tags and
//! tokens. Each is one or a few REST calls and a table.

use std::io::IsTerminal;

use clap::Subcommand;
use serde_json::{Value, json};

use crate::api::{Api, CliError, CliResult, StackPath, enc, exit};
use crate::output::{self, Format, Table, cell, when};

/// The org of the caller's token.
pub(crate) async fn default_org(api: &Api) -> CliResult<String> {
    let v = api.get("/api/user/organizations/default").await?;
    v["GitHubLogin"]
        .as_str()
        .or_else(|| v["gitHubLogin"].as_str())
        .map(str::to_string)
        .ok_or_else(|| CliError::new("the server did not say which org this token is for"))
}

/// A stack argument, with the token's org for `PROJECT/STACK`.
pub(crate) async fn stack_arg(api: &Api, s: &str) -> CliResult<StackPath> {
    if s.split('/').count() == 2 {
        let org = default_org(api).await?;
        return StackPath::parse(s, Some(&org));
    }
    StackPath::parse(s, None)
}

async fn org_arg(api: &Api, org: Option<&str>) -> CliResult<String> {
    match org {
        Some(o) => Ok(o.to_string()),
        None => default_org(api).await,
    }
}

fn last_deployment(d: &Value) -> (String, String, String) {
    if d.is_null() {
        return (String::new(), String::new(), String::new());
    }
    (
        format!("{} {}", cell(&d["pulumiOperation"]), cell(&d["status"])),
        when(&d["modified"]),
        cell(&d["requestedBy"]["githubLogin"]),
    )
}

#[derive(Debug, Subcommand)]
pub(crate) enum StacksCommand {
    /// List the org's stacks with their last deployment.
    Ls {
        #[arg(long)]
        org: Option<String>,
        /// Only stacks whose PROJECT/STACK or a tag value contains this.
        #[arg(long)]
        query: Option<String>,
    },
    /// Show one stack.
    Get { stack: String },
    /// Delete a stack with its settings, schedules and state.
    Rm {
        stack: String,
        /// Delete even if its state still holds resources (they are left running, untracked).
        #[arg(long)]
        force: bool,
        /// Do not ask.
        #[arg(long, short)]
        yes: bool,
    },
}

pub(crate) async fn stacks(api: &Api, cmd: &StacksCommand, format: Format) -> CliResult<u8> {
    match cmd {
        StacksCommand::Ls { org, query } => {
            let org = org_arg(api, org.as_deref()).await?;
            let mut all = vec![];
            for page in 1..=1000 {
                let q = query
                    .as_deref()
                    .map(|q| format!("&query={}", enc(q)))
                    .unwrap_or_default();
                let v = api
                    .get(&format!(
                        "/api/orgs/{}/stacks?pageSize=100&page={page}{q}",
                        enc(&org)
                    ))
                    .await?;
                let items = v["stacks"].as_array().cloned().unwrap_or_default();
                let n = items.len();
                all.extend(items);
                if n < 100 {
                    break;
                }
            }
            let v = json!({ "stacks": all });
            output::emit(format, &v, |v| {
                let mut t = Table::new(&[
                    "STACK",
                    "LAST DEPLOYMENT",
                    "WHEN",
                    "BY",
                    "DRIFT",
                    "PAUSED",
                    "SCHEDULES",
                ]);
                for s in v["stacks"].as_array().into_iter().flatten() {
                    let (last, at, by) = last_deployment(&s["lastDeployment"]);
                    t.row(vec![
                        format!(
                            "{}/{}/{}",
                            cell(&s["orgName"]),
                            cell(&s["projectName"]),
                            cell(&s["stackName"])
                        ),
                        last,
                        at,
                        by,
                        drift_cell(&s["drift"]),
                        yes_no(&s["paused"]),
                        yes_no(&s["hasSchedules"]),
                    ]);
                }
                t
            })?;
        }
        StacksCommand::Get { stack } => {
            let s = stack_arg(api, stack).await?;
            let v = api.get(&s.api()).await?;
            output::emit(format, &v, |v| {
                let mut t = Table::new(&["STACK", "VERSION", "RESOURCES", "TAGS"]);
                let tags = v["tags"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", cell(v)))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                t.row(vec![
                    s.to_string(),
                    cell(&v["version"]),
                    cell(&v["resourceCount"]),
                    tags,
                ]);
                t
            })?;
        }
        StacksCommand::Rm { stack, force, yes } => {
            let s = stack_arg(api, stack).await?;
            if !yes {
                confirm_by_name(
                    &s.stack,
                    &format!("Delete stack {s} with its settings, schedules and state?"),
                )?;
            }
            let q = if *force { "?force=true" } else { "" };
            api.delete(&format!("{}{q}", s.api())).await.map_err(|e| {
                if e.message.contains("still contains resources") {
                    e.hint(format!("destroy them first (tarmac run {s} --op destroy --follow), or pass --force to leave them untracked"))
                } else {
                    e
                }
            })?;
            println!("Deleted {s}.");
        }
    }
    Ok(exit::OK)
}

fn yes_no(v: &Value) -> String {
    if v.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
    .to_string()
}

fn drift_cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Object(m) => m
            .get("status")
            .or_else(|| m.get("driftDetected"))
            .map(cell)
            .unwrap_or_default(),
        other => cell(other),
    }
}

/// On a terminal, asks the user to type `name`; elsewhere, refuses without `--yes`.
pub(crate) fn confirm_by_name(name: &str, question: &str) -> CliResult<()> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::new("refusing to delete without confirmation").hint("pass --yes"));
    }
    eprint!("{question}\nType the stack name ({name}) to confirm: ");
    let mut s = String::new();
    std::io::stdin().read_line(&mut s)?;
    if s.trim() != name {
        return Err(CliError::new("not confirmed; nothing was deleted"));
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeploymentsCommand {
    /// List a stack's deployments (or the org's, with --org), newest first.
    Ls {
        /// ORG/PROJECT/STACK; without it, the org's.
        stack: Option<String>,
        #[arg(long)]
        org: Option<String>,
        #[arg(long, default_value_t = 1)]
        page: u32,
        #[arg(long, default_value_t = 20)]
        page_size: u32,
    },
    /// Show a deployment: ORG/PROJECT/STACK/ID, its console URL, or its id.
    Get {
        deployment: String,
        #[arg(long)]
        org: Option<String>,
    },
    /// Cancel a queued or running deployment.
    Cancel {
        deployment: String,
        #[arg(long)]
        org: Option<String>,
    },
    /// Approve a deployment that waits for approval (the stack's `approvals` setting).
    Approve {
        deployment: String,
        #[arg(long)]
        org: Option<String>,
        /// Why, for the record.
        #[arg(long, short = 'm')]
        comment: Option<String>,
    },
    /// Reject a deployment that waits for approval: it is skipped.
    Reject {
        deployment: String,
        #[arg(long)]
        org: Option<String>,
        #[arg(long, short = 'm')]
        comment: Option<String>,
    },
}

pub(crate) async fn deployments(
    api: &Api,
    cmd: &DeploymentsCommand,
    format: Format,
) -> CliResult<u8> {
    match cmd {
        DeploymentsCommand::Ls {
            stack,
            org,
            page,
            page_size,
        } => {
            let base = match stack {
                Some(s) => format!("{}/deployments", stack_arg(api, s).await?.api()),
                None => format!(
                    "/api/orgs/{}/deployments",
                    enc(&org_arg(api, org.as_deref()).await?)
                ),
            };
            let v = api
                .get(&format!("{base}?page={page}&pageSize={page_size}"))
                .await?;
            output::emit(format, &v, |v| {
                let mut t = Table::new(&[
                    "ID",
                    "STACK",
                    "VERSION",
                    "OPERATION",
                    "STATUS",
                    "CREATED",
                    "BY",
                ]);
                for d in v["deployments"].as_array().into_iter().flatten() {
                    t.row(vec![
                        cell(&d["id"]),
                        format!("{}/{}", cell(&d["projectName"]), cell(&d["stackName"])),
                        cell(&d["version"]),
                        cell(&d["pulumiOperation"]),
                        cell(&d["status"]),
                        when(&d["created"]),
                        cell(&d["requestedBy"]["githubLogin"]),
                    ]);
                }
                t
            })?;
        }
        DeploymentsCommand::Get { deployment, org } => {
            let (s, id) = crate::run::locate(api, deployment, org.as_deref()).await?;
            let v = api.get(&format!("{}/deployments/{id}", s.api())).await?;
            output::emit_text(format, &v, |v| {
                let mut head =
                    Table::new(&["DEPLOYMENT", "STACK", "VERSION", "OPERATION", "STATUS"]);
                head.row(vec![
                    id.clone(),
                    s.to_string(),
                    cell(&v["version"]),
                    cell(&v["pulumiOperation"]),
                    cell(&v["status"]),
                ]);
                let mut steps = Table::new(&["STEP", "STATUS", "STARTED", "UPDATED"]);
                for st in v["jobs"][0]["steps"].as_array().into_iter().flatten() {
                    steps.row(vec![
                        cell(&st["name"]),
                        cell(&st["status"]),
                        when(&st["started"]),
                        when(&st["lastUpdated"]),
                    ]);
                }
                let approval = &v["approval"];
                let approval = if approval.is_object() {
                    format!(
                        "Approval: {} ({} of {} given, expires {})\n",
                        cell(&approval["status"]),
                        cell(&approval["given"]),
                        cell(&approval["required"]),
                        cell(&approval["expiresAt"])
                    )
                } else {
                    String::new()
                };
                format!("{}\n{approval}{}", head.render(), steps.render())
            })?;
        }
        DeploymentsCommand::Approve {
            deployment,
            org,
            comment,
        }
        | DeploymentsCommand::Reject {
            deployment,
            org,
            comment,
        } => {
            let verb = if matches!(cmd, DeploymentsCommand::Approve { .. }) {
                "approve"
            } else {
                "reject"
            };
            let (s, id) = crate::run::locate(api, deployment, org.as_deref()).await?;
            let v = api
                .post(
                    &format!("{}/deployments/{id}/{verb}", s.api()),
                    &json!({ "comment": comment }),
                )
                .await?;
            output::emit_text(format, &v, |v| {
                format!(
                    "{s}/{id}: approval {} ({} of {} given); the deployment is {}.",
                    cell(&v["approval"]["status"]),
                    cell(&v["approval"]["given"]),
                    cell(&v["approval"]["required"]),
                    cell(&v["status"])
                )
            })?;
        }
        DeploymentsCommand::Cancel { deployment, org } => {
            let (s, id) = crate::run::locate(api, deployment, org.as_deref()).await?;
            api.post(&format!("{}/deployments/{id}/cancel", s.api()), &json!({}))
                .await?;
            println!("Cancel requested for {s}/{id}.");
        }
    }
    Ok(exit::OK)
}

/// `tarmac pause|resume STACK|--org ORG`.
pub(crate) async fn pause(
    api: &Api,
    stack: Option<&str>,
    org: Option<&str>,
    resume: bool,
) -> CliResult<u8> {
    let verb = if resume { "resume" } else { "pause" };
    let (path, what) = match (stack, org) {
        (Some(s), _) => {
            let s = stack_arg(api, s).await?;
            (format!("{}/deployments/{verb}", s.api()), s.to_string())
        }
        (None, Some(o)) => (
            format!("/api/orgs/{}/deployments/{verb}", enc(o)),
            format!("org {o}"),
        ),
        (None, None) => {
            return Err(
                CliError::new(format!("{verb} what?")).hint("name a stack, or pass --org ORG")
            );
        }
    };
    api.post(&path, &json!({})).await?;
    println!("{} {what}.", if resume { "Resumed" } else { "Paused" });
    Ok(exit::OK)
}

#[derive(Debug, Subcommand)]
pub(crate) enum SchedulesCommand {
    /// List a stack's schedules.
    Ls { stack: String },
    /// Create a schedule: --cron or --at (with --op), --drift, or --ttl.
    Create {
        stack: String,
        /// A 5-field cron expression, in UTC.
        #[arg(long, group = "kind")]
        cron: Option<String>,
        /// One time (RFC 3339, or "YYYY-MM-DD hh:mm:ss" in UTC).
        #[arg(long, group = "kind")]
        at: Option<String>,
        /// The operation of a --cron or --at schedule.
        #[arg(long, value_enum, default_value = "update")]
        op: crate::run::Op,
        /// A drift check on this cron expression.
        #[arg(long, group = "kind")]
        drift: Option<String>,
        /// With --drift: run remediate-drift when drift is found.
        #[arg(long, requires = "drift")]
        auto_remediate: bool,
        /// A destroy at this time (the stack's time to live).
        #[arg(long, group = "kind")]
        ttl: Option<String>,
        /// With --ttl: delete the stack after a successful destroy.
        #[arg(long, requires = "ttl")]
        delete_after_destroy: bool,
    },
    /// Pause a schedule.
    Pause { stack: String, id: String },
    /// Resume a schedule (from its next future slot).
    Resume { stack: String, id: String },
    /// Delete a schedule.
    Rm { stack: String, id: String },
    /// A schedule's firings.
    History { stack: String, id: String },
}

/// A schedule's time and what it runs, for tables.
pub(crate) fn schedule_summary(s: &Value) -> (String, String) {
    let at = match (s["scheduleCron"].as_str(), s["scheduleOnce"].as_str()) {
        (Some(c), _) => format!("cron {c}"),
        (None, Some(t)) => format!("at {t}"),
        _ => String::new(),
    };
    let req = &s["definition"]["request"];
    let mut op = cell(&req["operation"]);
    let opts = &req["operationContext"]["options"];
    if opts["remediateIfDriftDetected"] == json!(true) {
        op.push_str(" (auto-remediate)");
    }
    if opts["deleteAfterDestroy"] == json!(true) {
        op.push_str(" (delete after)");
    }
    (at, op)
}

pub(crate) async fn schedules(api: &Api, cmd: &SchedulesCommand, format: Format) -> CliResult<u8> {
    let one = |stack: &StackPath, id: &str, tail: &str| {
        format!("{}/deployments/schedules/{}{tail}", stack.api(), enc(id))
    };
    match cmd {
        SchedulesCommand::Ls { stack } => {
            let s = stack_arg(api, stack).await?;
            let v = api
                .get(&format!("{}/deployments/schedules", s.api()))
                .await?;
            output::emit(format, &v, |v| {
                let mut t = Table::new(&["ID", "WHEN", "OPERATION", "NEXT", "PAUSED", "LAST"]);
                for sc in v["schedules"].as_array().into_iter().flatten() {
                    let (at, op) = schedule_summary(sc);
                    t.row(vec![
                        cell(&sc["id"]),
                        at,
                        op,
                        cell(&sc["nextExecution"]),
                        yes_no(&sc["paused"]),
                        cell(&sc["lastExecuted"]),
                    ]);
                }
                t
            })?;
        }
        SchedulesCommand::Create {
            stack,
            cron,
            at,
            op,
            drift,
            auto_remediate,
            ttl,
            delete_after_destroy,
        } => {
            let s = stack_arg(api, stack).await?;
            let (path, body) = match (cron, at, drift, ttl) {
                (Some(c), ..) => (
                    "schedules",
                    json!({"scheduleCron": c, "request": {"operation": op.wire(), "inheritSettings": true}}),
                ),
                (_, Some(t), ..) => (
                    "schedules",
                    json!({"scheduleOnce": t, "request": {"operation": op.wire(), "inheritSettings": true}}),
                ),
                (_, _, Some(c), _) => (
                    "drift/schedules",
                    json!({"scheduleCron": c, "autoRemediate": auto_remediate}),
                ),
                (_, _, _, Some(t)) => (
                    "ttl/schedules",
                    json!({"timestamp": t, "deleteAfterDestroy": delete_after_destroy}),
                ),
                _ => return Err(CliError::new("give one of --cron, --at, --drift or --ttl")),
            };
            let v = api
                .post(&format!("{}/deployments/{path}", s.api()), &body)
                .await?;
            output::emit(format, &v, |v| {
                let mut t = Table::new(&["ID", "WHEN", "OPERATION", "NEXT"]);
                let (at, op) = schedule_summary(v);
                t.row(vec![cell(&v["id"]), at, op, cell(&v["nextExecution"])]);
                t
            })?;
        }
        SchedulesCommand::Pause { stack, id } | SchedulesCommand::Resume { stack, id } => {
            let s = stack_arg(api, stack).await?;
            let resume = matches!(cmd, SchedulesCommand::Resume { .. });
            let verb = if resume { "resume" } else { "pause" };
            api.post(&one(&s, id, &format!("/{verb}")), &json!({}))
                .await?;
            println!(
                "{} schedule {id}.",
                if resume { "Resumed" } else { "Paused" }
            );
        }
        SchedulesCommand::Rm { stack, id } => {
            let s = stack_arg(api, stack).await?;
            api.delete(&one(&s, id, "")).await?;
            println!("Deleted schedule {id}.");
        }
        SchedulesCommand::History { stack, id } => {
            let s = stack_arg(api, stack).await?;
            let v = api.get(&one(&s, id, "/history")).await?;
            output::emit(format, &v, |v| {
                let mut t = Table::new(&["EXECUTED", "VERSION", "RESULT"]);
                for e in v["scheduleHistoryEvents"].as_array().into_iter().flatten() {
                    t.row(vec![
                        cell(&e["executed"]),
                        cell(&e["version"]),
                        cell(&e["result"]),
                    ]);
                }
                t
            })?;
        }
    }
    Ok(exit::OK)
}

#[derive(Debug, Subcommand)]
pub(crate) enum TagsCommand {
    /// A stack's tags.
    Ls { stack: String },
    /// Set tags: NAME=VALUE ... (a `ttl` tag, in minutes, arms a destroy after each update).
    Set {
        stack: String,
        #[arg(required = true, value_name = "NAME=VALUE")]
        tags: Vec<String>,
    },
    /// Remove tags by name.
    Rm {
        stack: String,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub(crate) async fn tags(api: &Api, cmd: &TagsCommand, format: Format) -> CliResult<u8> {
    match cmd {
        TagsCommand::Ls { stack } => {
            let s = stack_arg(api, stack).await?;
            let v = api.get(&s.api()).await?["tags"].clone();
            output::emit(format, &v, |v| {
                let mut t = Table::new(&["NAME", "VALUE"]);
                for (k, val) in v.as_object().into_iter().flatten() {
                    t.row(vec![k.clone(), cell(val)]);
                }
                t
            })?;
        }
        TagsCommand::Set { stack, tags } => {
            let s = stack_arg(api, stack).await?;
            let mut all = api.get(&s.api()).await?["tags"].clone();
            if !all.is_object() {
                all = json!({});
            }
            for t in tags {
                let (k, v) = t
                    .split_once('=')
                    .ok_or_else(|| CliError::new(format!("'{t}' is not NAME=VALUE")))?;
                all[k] = json!(v);
            }
            api.patch(&format!("{}/tags", s.api()), &all).await?;
            println!("Tagged {s}.");
        }
        TagsCommand::Rm { stack, names } => {
            let s = stack_arg(api, stack).await?;
            for n in names {
                api.delete(&format!("{}/tags/{}", s.api(), enc(n))).await?;
            }
            println!("Removed {} tag(s) from {s}.", names.len());
        }
    }
    Ok(exit::OK)
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokensCommand {
    /// Create a token (admins only). Its value is printed once.
    Create {
        /// What the token is for; shown as the requester of its deployments.
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "write", value_parser = ["admin", "write", "read"])]
        role: String,
        #[arg(long)]
        org: Option<String>,
    },
    /// List the org's tokens (never their values).
    Ls {
        #[arg(long)]
        org: Option<String>,
    },
    /// Revoke a token by id.
    Revoke {
        id: String,
        #[arg(long)]
        org: Option<String>,
    },
}

pub(crate) async fn tokens(api: &Api, cmd: &TokensCommand, format: Format) -> CliResult<u8> {
    match cmd {
        TokensCommand::Create { name, role, org } => {
            let org = org_arg(api, org.as_deref()).await?;
            let v = api
                .post(
                    &format!("/api/orgs/{}/tokens", enc(&org)),
                    &json!({"name": name, "role": role}),
                )
                .await?;
            output::emit(format, &v, |v| {
                let mut t = Table::new(&["ID", "NAME", "ROLE", "TOKEN (shown once)"]);
                t.row(vec![
                    cell(&v["id"]),
                    cell(&v["name"]),
                    cell(&v["role"]),
                    cell(&v["tokenValue"]),
                ]);
                t
            })?;
        }
        TokensCommand::Ls { org } => {
            let org = org_arg(api, org.as_deref()).await?;
            let v = api.get(&format!("/api/orgs/{}/tokens", enc(&org))).await?;
            output::emit(format, &v, |v| {
                let mut t = Table::new(&["ID", "NAME", "ROLE", "CREATED"]);
                for k in v["tokens"].as_array().into_iter().flatten() {
                    t.row(vec![
                        cell(&k["id"]),
                        cell(&k["name"]),
                        cell(&k["role"]),
                        when(&k["created"]),
                    ]);
                }
                t
            })?;
        }
        TokensCommand::Revoke { id, org } => {
            let org = org_arg(api, org.as_deref()).await?;
            api.delete(&format!("/api/orgs/{}/tokens/{}", enc(&org), enc(id)))
                .await?;
            println!("Revoked token {id}.");
        }
    }
    Ok(exit::OK)
}
