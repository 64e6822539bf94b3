//! `tarmac apply -f stacks.yaml`: settings as code for many stacks. One reviewed file declares
//! each stack's settings, tags, schedules and secret sources, with defaults and templates
//! shared between stacks; apply changes only what differs and says what it did per stack.
//!
//! Nothing is written until the whole file has been read, every secret source resolved, and
//! every stack's settings checked by the server (`?dryRun=true`), so a bad file changes
//! nothing. Stacks apply marks with the `tarmac:apply` tag (the file's `name`); `--prune`
//! removes what a file no longer declares: its stacks, and the tags and schedules of the
//! stacks it still declares.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{Api, CliError, CliResult, StackPath, enc, exit};
use crate::output::{self, Format, Table};

/// The tag that marks the stacks a file manages.
pub(crate) const MANAGED_TAG: &str = "tarmac:apply";
/// Stacks worked on at once.
const CONCURRENCY: usize = 8;

// --- the file ---------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// Names the set of stacks this file manages (default: the file's name without extension).
    name: Option<String>,
    /// The org of stacks named PROJECT/STACK (default: the token's).
    org: Option<String>,
    #[serde(default)]
    defaults: Part,
    #[serde(default)]
    templates: BTreeMap<String, Part>,
    stacks: Vec<Entry>,
}

/// What defaults, templates and stacks may declare.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Part {
    /// Deployment settings, as the API takes them (`sourceContext`, `operationContext`, ...).
    settings: Option<Value>,
    #[serde(default)]
    tags: BTreeMap<String, Scalar>,
    #[serde(default)]
    schedules: Vec<ScheduleDecl>,
    /// Environment variables whose values are secret: name to `{env: VAR}` or `{file: PATH}`.
    #[serde(default)]
    secrets: BTreeMap<String, SecretSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// PROJECT/STACK, or ORG/PROJECT/STACK.
    stack: String,
    /// Templates applied in order, after the defaults and before the stack's own values.
    #[serde(default)]
    template: Option<OneOrMany>,
    settings: Option<Value>,
    #[serde(default)]
    tags: BTreeMap<String, Scalar>,
    #[serde(default)]
    schedules: Vec<ScheduleDecl>,
    #[serde(default)]
    secrets: BTreeMap<String, SecretSource>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A tag value: YAML may write `ttl: 60`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    S(String),
    I(i64),
    F(f64),
    B(bool),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Self::S(s) => s.clone(),
            Self::I(i) => i.to_string(),
            Self::F(f) => f.to_string(),
            Self::B(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScheduleDecl {
    cron: Option<String>,
    at: Option<String>,
    drift: Option<String>,
    ttl: Option<String>,
    operation: Option<String>,
    #[serde(default)]
    auto_remediate: bool,
    #[serde(default)]
    delete_after_destroy: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretSource {
    env: Option<String>,
    file: Option<String>,
}

// --- what a file asks for ---------------------------------------------------------------------

/// A schedule, reduced to what makes it the same schedule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Sched {
    /// `cron`, `at`, `drift` or `ttl`.
    kind: &'static str,
    /// The cron expression, or the instant as Unix seconds.
    when: String,
    operation: String,
    /// `autoRemediate` (drift) or `deleteAfterDestroy` (ttl).
    flag: bool,
}

impl Sched {
    fn describe(&self) -> String {
        match self.kind {
            "cron" => format!("{} on cron {}", self.operation, self.when),
            "at" => format!("{} at {}", self.operation, instant_text(&self.when)),
            "drift" if self.flag => format!("drift check on cron {} (auto-remediate)", self.when),
            "drift" => format!("drift check on cron {}", self.when),
            _ if self.flag => format!("ttl destroy at {} (then delete)", instant_text(&self.when)),
            _ => format!("ttl destroy at {}", instant_text(&self.when)),
        }
    }

    /// The request that creates it: its endpoint under `S/deployments/` and body.
    fn request(&self) -> (&'static str, Value) {
        match self.kind {
            "cron" => (
                "schedules",
                json!({"scheduleCron": self.when, "request": {"operation": self.operation, "inheritSettings": true}}),
            ),
            "at" => (
                "schedules",
                json!({"scheduleOnce": instant_text(&self.when), "request": {"operation": self.operation, "inheritSettings": true}}),
            ),
            "drift" => (
                "drift/schedules",
                json!({"scheduleCron": self.when, "autoRemediate": self.flag}),
            ),
            _ => (
                "ttl/schedules",
                json!({"timestamp": instant_text(&self.when), "deleteAfterDestroy": self.flag}),
            ),
        }
    }

    /// A schedule the server lists, in the same terms.
    fn of_listed(s: &Value) -> Option<Self> {
        let req = &s["definition"]["request"];
        let operation = req["operation"].as_str()?.to_string();
        let opts = &req["operationContext"]["options"];
        let flag_of = |k: &str| opts[k].as_bool().unwrap_or(false);
        if let Some(c) = s["scheduleCron"].as_str() {
            let when = squash(c);
            return Some(if operation == "detect-drift" {
                Self {
                    kind: "drift",
                    when,
                    operation,
                    flag: flag_of("remediateIfDriftDetected"),
                }
            } else {
                Self {
                    kind: "cron",
                    when,
                    operation,
                    flag: false,
                }
            });
        }
        let at =
            tarmac::domain::schedule::parse_instant("scheduleOnce", s["scheduleOnce"].as_str()?)
                .ok()?;
        let when = at.unix_timestamp().to_string();
        Some(
            if operation == "destroy" && opts.get("deleteAfterDestroy").is_some() {
                Self {
                    kind: "ttl",
                    when,
                    operation,
                    flag: flag_of("deleteAfterDestroy"),
                }
            } else {
                Self {
                    kind: "at",
                    when,
                    operation,
                    flag: false,
                }
            },
        )
    }
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn instant_text(unix: &str) -> String {
    unix.parse::<i64>()
        .ok()
        .and_then(|u| time::OffsetDateTime::from_unix_timestamp(u).ok())
        .map(tarmac::domain::time_fmt::rfc3339)
        .unwrap_or_else(|| unix.to_string())
}

/// One stack as the file wants it.
#[derive(Debug)]
struct Desired {
    stack: StackPath,
    /// Where the file names it.
    line: usize,
    settings: Option<Value>,
    tags: BTreeMap<String, String>,
    schedules: BTreeSet<Sched>,
    /// Secret environment variables, resolved: name to value.
    secrets: BTreeMap<String, String>,
}

/// A file's problem, at a line.
fn at(file: &Path, line: usize, what: impl std::fmt::Display) -> CliError {
    CliError::new(format!("{}:{line}: {what}", file.display()))
        .hint("fix the file and run apply again; nothing was changed on the server")
}

/// The first line (from 1) at or after `from` that has `key` and `needle` on it (else just
/// `needle`, else `from`): where the file names a stack.
fn line_of(text: &str, key: &str, needle: &str, from: usize) -> usize {
    let find = |both: bool| {
        text.lines()
            .enumerate()
            .skip(from.saturating_sub(1))
            .find(|(_, l)| l.contains(needle) && (!both || l.contains(key)))
            .map(|(i, _)| i + 1)
    };
    find(true).or_else(|| find(false)).unwrap_or(from.max(1))
}

/// Objects merge, everything else replaces; `null` deletes.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// `${org}`, `${project}` and `${stack}` in every string.
fn interpolate(v: &mut Value, s: &StackPath) {
    match v {
        Value::String(t) => {
            *t = t
                .replace("${org}", &s.org)
                .replace("${project}", &s.project)
                .replace("${stack}", &s.stack);
        }
        Value::Array(a) => a.iter_mut().for_each(|x| interpolate(x, s)),
        Value::Object(m) => m.values_mut().for_each(|x| interpolate(x, s)),
        _ => {}
    }
}

/// Reads and resolves the file: every error here comes before any request.
fn read(path: &Path, default_org: &str) -> CliResult<(String, Vec<Desired>)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
    let file: File = serde_yaml_ng::from_str(&text).map_err(|e| {
        let line = e.location().map_or(1, |l| l.line());
        at(path, line, e)
    })?;
    let name = file
        .name
        .clone()
        .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "stacks".into());
    tarmac::domain::stacks::validate_tag(MANAGED_TAG, &name).map_err(|e| {
        at(
            path,
            line_of(&text, "name:", "name:", 1),
            format!("name: {e}"),
        )
    })?;
    let org = file.org.clone().unwrap_or_else(|| default_org.to_string());
    let base_dir = path.parent().unwrap_or(Path::new("."));

    let mut seen = BTreeMap::new();
    let mut out = vec![];
    let mut cursor = 1;
    for (i, entry) in file.stacks.iter().enumerate() {
        let line = line_of(&text, "stack:", &entry.stack, cursor);
        cursor = line + 1;
        let fail = |what: String| at(path, line, format!("stacks[{i}] ({}): {what}", entry.stack));
        let stack = StackPath::parse(&entry.stack, Some(&org)).map_err(|e| fail(e.message))?;
        tarmac::domain::StackRef::new(&stack.org, &stack.project, &stack.stack)
            .map_err(|e| fail(e.to_string()))?;
        if let Some(first) = seen.insert(stack.clone(), line) {
            return Err(fail(format!("declared twice (first at line {first})")));
        }
        let names = match &entry.template {
            None => vec![],
            Some(OneOrMany::One(t)) => vec![t.clone()],
            Some(OneOrMany::Many(ts)) => ts.clone(),
        };
        let mut parts = vec![file.defaults.clone()];
        for t in &names {
            let part = file.templates.get(t).ok_or_else(|| {
                fail(format!(
                    "template '{t}' is not defined (templates: {})",
                    file.templates
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            parts.push(part.clone());
        }
        parts.push(Part {
            settings: entry.settings.clone(),
            tags: entry.tags.clone(),
            schedules: entry.schedules.clone(),
            secrets: entry.secrets.clone(),
        });

        let mut settings: Option<Value> = None;
        let mut tags = BTreeMap::new();
        let mut schedules = BTreeSet::new();
        let mut secrets = BTreeMap::new();
        for part in &parts {
            if let Some(s) = &part.settings {
                if !s.is_object() {
                    return Err(fail("settings must be a mapping".into()));
                }
                merge(settings.get_or_insert_with(|| json!({})), s);
            }
            for (k, v) in &part.tags {
                tags.insert(k.clone(), v.text());
            }
            for d in &part.schedules {
                schedules.insert(schedule(d).map_err(|e| fail(format!("schedules: {e}")))?);
            }
            for (k, src) in &part.secrets {
                secrets.insert(k.clone(), src.clone());
            }
        }
        if let Some(s) = settings.as_mut() {
            interpolate(s, &stack);
            if let Some(vars) = s
                .pointer("/operationContext/environmentVariables")
                .and_then(Value::as_object)
            {
                for (k, v) in vars {
                    // A reference to a secret store is no secret: it belongs in the file.
                    if v.is_object() && !tarmac::domain::spec::secrets::is_reference(v) {
                        return Err(fail(format!(
                            "settings: environment variable {k} is a secret written in the file; declare it under secrets: with env: or file:"
                        )));
                    }
                }
            }
        }
        for v in tags.values_mut() {
            let mut t = Value::String(std::mem::take(v));
            interpolate(&mut t, &stack);
            *v = t.as_str().unwrap_or_default().to_string();
        }
        if tags.contains_key(MANAGED_TAG) {
            return Err(fail(format!("tags: {MANAGED_TAG} is set by apply itself")));
        }
        for (k, v) in &tags {
            tarmac::domain::stacks::validate_tag(k, v).map_err(|e| fail(format!("tags: {e}")))?;
        }
        let mut resolved = BTreeMap::new();
        for (k, src) in &secrets {
            resolved.insert(
                k.clone(),
                resolve_secret(k, src, base_dir).map_err(|e| fail(format!("secrets: {e}")))?,
            );
        }
        if !resolved.is_empty() && settings.is_none() {
            return Err(fail("secrets need settings to go in".into()));
        }
        if !schedules.is_empty() && settings.is_none() {
            return Err(fail("schedules need settings to fire against".into()));
        }
        out.push(Desired {
            stack,
            line,
            settings,
            tags,
            schedules,
            secrets: resolved,
        });
    }
    Ok((name, out))
}

fn schedule(d: &ScheduleDecl) -> Result<Sched, String> {
    let op = |default: &str| d.operation.clone().unwrap_or_else(|| default.to_string());
    let kinds = [&d.cron, &d.at, &d.drift, &d.ttl]
        .iter()
        .filter(|k| k.is_some())
        .count();
    if kinds != 1 {
        return Err("each schedule has exactly one of cron, at, drift or ttl".into());
    }
    let instant = |field: &str, t: &str| {
        tarmac::domain::schedule::parse_instant(field, t)
            .map(|t| t.unix_timestamp().to_string())
            .map_err(|e| e.to_string())
    };
    let cron = |c: &str| {
        tarmac::domain::schedule::Cron::parse(c)
            .map(|_| squash(c))
            .map_err(|e| e.to_string())
    };
    let operation = op("update");
    if ![
        "update",
        "preview",
        "refresh",
        "destroy",
        "detect-drift",
        "remediate-drift",
    ]
    .contains(&operation.as_str())
    {
        return Err(format!(
            "operation '{operation}' is not one of update, preview, refresh, destroy, detect-drift, remediate-drift"
        ));
    }
    let fits = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("{what} belongs to another kind of schedule"))
        }
    };
    if let Some(c) = &d.cron {
        fits(
            !d.auto_remediate && !d.delete_after_destroy,
            "autoRemediate or deleteAfterDestroy",
        )?;
        return Ok(Sched {
            kind: "cron",
            when: cron(c)?,
            operation,
            flag: false,
        });
    }
    if let Some(t) = &d.at {
        fits(
            !d.auto_remediate && !d.delete_after_destroy,
            "autoRemediate or deleteAfterDestroy",
        )?;
        return Ok(Sched {
            kind: "at",
            when: instant("at", t)?,
            operation,
            flag: false,
        });
    }
    fits(d.operation.is_none(), "operation")?;
    if let Some(c) = &d.drift {
        fits(!d.delete_after_destroy, "deleteAfterDestroy")?;
        return Ok(Sched {
            kind: "drift",
            when: cron(c)?,
            operation: "detect-drift".into(),
            flag: d.auto_remediate,
        });
    }
    let t = d.ttl.as_deref().unwrap_or_default();
    fits(!d.auto_remediate, "autoRemediate")?;
    Ok(Sched {
        kind: "ttl",
        when: instant("ttl", t)?,
        operation: "destroy".into(),
        flag: d.delete_after_destroy,
    })
}

fn resolve_secret(name: &str, src: &SecretSource, base: &Path) -> Result<String, String> {
    match (&src.env, &src.file) {
        (Some(var), None) => std::env::var(var)
            .map_err(|_| format!("{name}: the environment variable {var} is not set")),
        (None, Some(file)) => {
            let p = base.join(file);
            let text =
                std::fs::read_to_string(&p).map_err(|e| format!("{name}: {}: {e}", p.display()))?;
            Ok(text.strip_suffix('\n').unwrap_or(&text).to_string())
        }
        _ => Err(format!("{name}: give exactly one of env: or file:")),
    }
    .and_then(|v| {
        if v.is_empty() {
            Err(format!("{name}: the value is empty"))
        } else {
            Ok(v)
        }
    })
}

// --- the server's side ------------------------------------------------------------------------

/// A stack as the server has it.
#[derive(Debug, Default)]
struct Current {
    exists: bool,
    tags: BTreeMap<String, String>,
    /// Settings as GET answers them (without `version` and `source`).
    settings: Option<Value>,
    /// Schedule id to schedule; the `ttl` tag's own schedule left out.
    schedules: Vec<(String, Sched)>,
}

async fn current(api: &Api, s: &StackPath) -> CliResult<Current> {
    let Some(stack) = api.get_opt(&s.api()).await? else {
        return Ok(Current::default());
    };
    let tags = stack["tags"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let settings = api
        .get_opt(&format!("{}/deployments/settings", s.api()))
        .await?
        .map(strip_meta);
    let ttl_id = tarmac::domain::StackRef::new(&s.org, &s.project, &s.stack)
        .map(|r| tarmac::domain::stacks::ttl_schedule_id(&r).to_string())
        .unwrap_or_default();
    let mut schedules = vec![];
    if settings.is_some() {
        let listed = api
            .get(&format!("{}/deployments/schedules", s.api()))
            .await?;
        for sc in listed["schedules"].as_array().into_iter().flatten() {
            let id = sc["id"].as_str().unwrap_or_default().to_string();
            if id == ttl_id {
                continue;
            }
            if let Some(parsed) = Sched::of_listed(sc) {
                schedules.push((id, parsed));
            }
        }
    }
    Ok(Current {
        exists: true,
        tags,
        settings,
        schedules,
    })
}

fn strip_meta(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.remove("version");
        m.remove("source");
    }
    v
}

/// Secrets shown as a marker, so two renderings compare by everything but their ciphertext.
fn masked(v: &Value) -> Value {
    match v {
        Value::Object(m) if m.contains_key("ciphertext") || m.contains_key("secret") => {
            json!("(secret)")
        }
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), masked(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(masked).collect()),
        other => other.clone(),
    }
}

/// The settings body apply sends: the file's, with each secret either kept (the ciphertext
/// the server already holds, so nothing changes) or set.
fn settings_body(d: &Desired, cur: &Current, rotate: bool) -> Option<(Value, Vec<String>)> {
    let mut body = d.settings.clone()?;
    let mut written = vec![];
    if d.secrets.is_empty() {
        return Some((body, written));
    }
    let existing = cur
        .settings
        .as_ref()
        .and_then(|s| s.pointer("/operationContext/environmentVariables"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let vars = body
        .as_object_mut()
        .expect("settings are a mapping")
        .entry("operationContext")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .map(|oc| {
            oc.entry("environmentVariables")
                .or_insert_with(|| json!({}))
        });
    let Some(Value::Object(vars)) = vars else {
        return Some((body, written));
    };
    for (k, v) in &d.secrets {
        match existing.get(k).and_then(|e| e.get("ciphertext")) {
            Some(ct) if !rotate => {
                vars.insert(k.clone(), json!({ "ciphertext": ct }));
            }
            _ => {
                vars.insert(k.clone(), json!({ "secret": v }));
                written.push(k.clone());
            }
        }
    }
    Some((body, written))
}

/// What apply will do to one stack.
#[derive(Debug, Default)]
struct Plan {
    create: bool,
    /// The settings to PUT, with what GET would answer before and after (masked YAML).
    settings: Option<(Value, String, String)>,
    secrets_written: Vec<String>,
    tags: Option<BTreeMap<String, String>>,
    tags_added: Vec<String>,
    tags_removed: Vec<String>,
    schedules_add: Vec<Sched>,
    /// Id and schedule.
    schedules_remove: Vec<(String, Sched)>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        !self.create
            && self.settings.is_none()
            && self.tags.is_none()
            && self.schedules_add.is_empty()
            && self.schedules_remove.is_empty()
    }

    fn summary(&self) -> String {
        let mut parts = vec![];
        if self.settings.is_some() {
            let mut s = "settings".to_string();
            if !self.secrets_written.is_empty() {
                s.push_str(&format!(
                    " (secrets set: {})",
                    self.secrets_written.join(", ")
                ));
            }
            parts.push(s);
        }
        if self.tags.is_some() {
            parts.push(format!(
                "tags +{} -{}",
                self.tags_added.len(),
                self.tags_removed.len()
            ));
        }
        if !self.schedules_add.is_empty() || !self.schedules_remove.is_empty() {
            parts.push(format!(
                "schedules +{} -{}",
                self.schedules_add.len(),
                self.schedules_remove.len()
            ));
        }
        parts.join(", ")
    }
}

struct Options {
    name: String,
    prune: bool,
    rotate_secrets: bool,
}

async fn plan(api: &Api, d: &Desired, o: &Options) -> CliResult<Plan> {
    let cur = current(api, &d.stack).await?;
    let mut p = Plan {
        create: !cur.exists,
        ..Plan::default()
    };
    if let Some((body, written)) = settings_body(d, &cur, o.rotate_secrets) {
        // The server's own check and rendering; it writes nothing.
        let would = strip_meta(
            api.put(
                &format!("{}/deployments/settings?dryRun=true", d.stack.api()),
                &body,
            )
            .await?,
        );
        let before = cur.settings.as_ref().map(masked);
        let after = masked(&would);
        if before.as_ref() != Some(&after) || !written.is_empty() {
            let yaml = |v: &Option<Value>| {
                v.as_ref()
                    .map(|v| output::to_yaml(v).unwrap_or_default())
                    .unwrap_or_default()
            };
            p.settings = Some((body, yaml(&before), yaml(&Some(after))));
            p.secrets_written = written;
        }
    }
    let mut tags = d.tags.clone();
    tags.insert(MANAGED_TAG.into(), o.name.clone());
    if !o.prune {
        for (k, v) in &cur.tags {
            tags.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    if tags != cur.tags {
        p.tags_added = tags
            .iter()
            .filter(|(k, v)| cur.tags.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        p.tags_removed = cur
            .tags
            .keys()
            .filter(|k| !tags.contains_key(*k))
            .cloned()
            .collect();
        p.tags = Some(tags);
    }
    let listed: BTreeSet<&Sched> = cur.schedules.iter().map(|(_, s)| s).collect();
    p.schedules_add = d
        .schedules
        .iter()
        .filter(|s| !listed.contains(s))
        .cloned()
        .collect();
    if o.prune {
        p.schedules_remove = cur
            .schedules
            .iter()
            .filter(|(_, s)| !d.schedules.contains(s))
            .cloned()
            .collect();
    }
    Ok(p)
}

/// Carries out a plan, in an order that leaves a usable stack at each step.
async fn carry_out(api: &Api, d: &Desired, p: &Plan) -> CliResult<()> {
    let s = &d.stack;
    if p.create {
        let tags = p.tags.clone().unwrap_or_default();
        api.post(
            &format!("/api/stacks/{}/{}", enc(&s.org), enc(&s.project)),
            &json!({ "stackName": s.stack, "tags": tags }),
        )
        .await?;
    }
    if let Some((body, _, _)) = &p.settings {
        api.put(&format!("{}/deployments/settings", s.api()), body)
            .await?;
    }
    if let (Some(tags), false) = (&p.tags, p.create) {
        api.patch(&format!("{}/tags", s.api()), &json!(tags))
            .await?;
    }
    for (id, _) in &p.schedules_remove {
        api.delete(&format!("{}/deployments/schedules/{}", s.api(), enc(id)))
            .await?;
    }
    for sc in &p.schedules_add {
        let (path, body) = sc.request();
        api.post(&format!("{}/deployments/{path}", s.api()), &body)
            .await?;
    }
    Ok(())
}

/// Stacks the file's name marks that it no longer declares.
async fn orphans(
    api: &Api,
    orgs: &BTreeSet<String>,
    name: &str,
    declared: &BTreeSet<StackPath>,
) -> CliResult<Vec<StackPath>> {
    let mut out = vec![];
    for org in orgs {
        let mut token = String::new();
        loop {
            let v = api
                .get(&format!(
                    "/api/user/stacks?organization={}&tagName={}&tagValue={}{token}",
                    enc(org),
                    enc(MANAGED_TAG),
                    enc(name)
                ))
                .await?;
            for s in v["stacks"].as_array().into_iter().flatten() {
                let p = StackPath::new(
                    s["orgName"].as_str().unwrap_or_default(),
                    s["projectName"].as_str().unwrap_or_default(),
                    s["stackName"].as_str().unwrap_or_default(),
                );
                if !declared.contains(&p) {
                    out.push(p);
                }
            }
            match v["continuationToken"].as_str() {
                Some(t) if !t.is_empty() => token = format!("&continuationToken={}", enc(t)),
                _ => break,
            }
        }
    }
    out.sort();
    Ok(out)
}

#[derive(Debug, clap::Args)]
pub(crate) struct ApplyArgs {
    /// The stacks file (YAML).
    #[arg(long, short = 'f')]
    file: std::path::PathBuf,
    /// Show what would change, per stack, and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also remove what the file no longer declares: its stacks (those without resources),
    /// and undeclared tags and schedules of the stacks it declares.
    #[arg(long)]
    prune: bool,
    /// Write every secret again, even those the server already holds. Without it, a secret is
    /// written only when the stack does not have it yet (the server never shows values, so
    /// apply cannot tell whether one changed).
    #[arg(long)]
    rotate_secrets: bool,
}

pub(crate) async fn apply(api: &Api, a: &ApplyArgs, format: Format) -> CliResult<u8> {
    let org = crate::commands::default_org(api).await?;
    let (name, desired) = read(&a.file, &org)?;
    let o = Options {
        name: name.clone(),
        prune: a.prune,
        rotate_secrets: a.rotate_secrets,
    };

    // Every plan (and the server's check of every stack's settings) before any write.
    let plans: Vec<CliResult<Plan>> =
        futures_util::stream::iter(desired.iter().map(|d| plan(api, d, &o)))
            .buffered(CONCURRENCY)
            .collect()
            .await;
    let mut refused = vec![];
    let mut ready = vec![];
    for (d, p) in desired.iter().zip(plans) {
        match p {
            Ok(p) => ready.push((d, p)),
            Err(e) => refused.push(format!(
                "{}:{}: {}: {}",
                a.file.display(),
                d.line,
                d.stack,
                e.message
            )),
        }
    }
    if !refused.is_empty() {
        return Err(CliError::new(format!(
            "the server refused {} stack(s):\n  {}",
            refused.len(),
            refused.join("\n  ")
        ))
        .hint("fix the file and run apply again; nothing was changed on the server"));
    }
    let declared: BTreeSet<StackPath> = desired.iter().map(|d| d.stack.clone()).collect();
    let orgs: BTreeSet<String> = declared
        .iter()
        .map(|s| s.org.clone())
        .chain(std::iter::once(org))
        .collect();
    let remove = if a.prune {
        orphans(api, &orgs, &name, &declared).await?
    } else {
        vec![]
    };

    let mut results = vec![];
    if a.dry_run {
        for (d, p) in &ready {
            results.push(json!({"stack": d.stack.to_string(), "result": verdict(p, true), "changes": p.summary()}));
            if format == Format::Table {
                print_diff(d, p);
            }
        }
        for s in &remove {
            results
                .push(json!({"stack": s.to_string(), "result": "would be removed", "changes": ""}));
            if format == Format::Table {
                println!("- {s}: would be removed (no longer declared)");
            }
        }
    } else {
        let done: Vec<CliResult<()>> =
            futures_util::stream::iter(ready.iter().map(|(d, p)| async move {
                if p.is_empty() {
                    Ok(())
                } else {
                    carry_out(api, d, p).await
                }
            }))
            .buffered(CONCURRENCY)
            .collect()
            .await;
        for ((d, p), r) in ready.iter().zip(done) {
            results.push(match r {
                Ok(()) => json!({"stack": d.stack.to_string(), "result": verdict(p, false), "changes": p.summary()}),
                Err(e) => json!({"stack": d.stack.to_string(), "result": "failed", "changes": p.summary(), "error": e.message}),
            });
        }
        for s in &remove {
            results.push(match api.delete(&s.api()).await {
                Ok(_) => json!({"stack": s.to_string(), "result": "removed", "changes": ""}),
                Err(e) if e.message.contains("still contains resources") => json!({
                    "stack": s.to_string(), "result": "kept", "changes": "",
                    "error": format!("it still has resources; destroy them first: tarmac run {s} --op destroy --follow"),
                }),
                Err(e) => json!({"stack": s.to_string(), "result": "failed", "changes": "", "error": e.message}),
            });
        }
    }
    let failed = results
        .iter()
        .filter(|r| r["result"] == "failed" || r["result"] == "kept")
        .count();
    let value = json!({ "name": name, "dryRun": a.dry_run, "stacks": results });
    output::emit_text(format, &value, |v| {
        let mut t = Table::new(&["STACK", "RESULT", "CHANGES"]);
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for r in v["stacks"].as_array().into_iter().flatten() {
            let result = r["result"].as_str().unwrap_or_default().to_string();
            *counts.entry(result.clone()).or_default() += 1;
            let mut changes = r["changes"].as_str().unwrap_or_default().to_string();
            if let Some(e) = r["error"].as_str() {
                changes = if changes.is_empty() {
                    e.to_string()
                } else {
                    format!("{changes}: {e}")
                };
            }
            t.row(vec![
                r["stack"].as_str().unwrap_or_default().to_string(),
                result,
                changes,
            ]);
        }
        let tally: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        format!(
            "{}{} stack(s): {}\n",
            t.render(),
            results.len(),
            tally.join(", ")
        )
    })?;
    Ok(if failed > 0 { exit::ERROR } else { exit::OK })
}

fn verdict(p: &Plan, dry: bool) -> &'static str {
    match (p.is_empty(), p.create, dry) {
        (true, _, _) => "unchanged",
        (false, true, true) => "would be created",
        (false, true, false) => "created",
        (false, false, true) => "would be updated",
        (false, false, false) => "updated",
    }
}

/// `--dry-run`'s per-stack diff.
fn print_diff(d: &Desired, p: &Plan) {
    if p.is_empty() {
        println!("= {}: unchanged", d.stack);
        return;
    }
    let sign = if p.create { "+" } else { "~" };
    println!(
        "{sign} {}: {}",
        d.stack,
        if p.create { "new stack" } else { "changes" }
    );
    if let Some((_, before, after)) = &p.settings {
        println!("  settings:");
        let diff = similar::TextDiff::from_lines(before, after);
        for change in diff.iter_all_changes() {
            let mark = match change.tag() {
                similar::ChangeTag::Delete => "-",
                similar::ChangeTag::Insert => "+",
                similar::ChangeTag::Equal => " ",
            };
            print!("    {mark} {change}");
        }
        for k in &p.secrets_written {
            println!("    + secret {k} (value from its source)");
        }
    }
    if let Some(tags) = &p.tags {
        for k in &p.tags_added {
            println!("  + tag {k}={}", tags[k]);
        }
        for k in &p.tags_removed {
            println!("  - tag {k}");
        }
    }
    for s in &p.schedules_add {
        println!("  + schedule: {}", s.describe());
    }
    for (id, s) in &p.schedules_remove {
        println!("  - schedule {id}: {}", s.describe());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fleet.yaml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn templates_defaults_and_the_stacks_own_values_merge_in_order() {
        let (dir, p) = write(
            r#"
defaults:
  settings:
    sourceContext: {git: {repoUrl: "https://example.com/r.git", branch: refs/heads/main}}
    operationContext: {environmentVariables: {REGION: eu-west-1}}
  tags: {team: platform}
templates:
  web:
    settings:
      sourceContext: {git: {repoDir: "stacks/${project}"}}
    schedules:
      - drift: "0 * * * *"
        autoRemediate: true
stacks:
  - stack: web/prod
    template: web
    tags: {tier: gold, ttl: 60}
    secrets:
      DB: {file: pw}
    settings:
      operationContext: {environmentVariables: {REGION: us-east-1, API: {fromParameterStore: {name: /app/api}}}}
"#,
        );
        std::fs::write(dir.path().join("pw"), "hunter2\n").unwrap();
        let (name, ds) = read(&p, "acme").unwrap();
        assert_eq!(name, "fleet");
        let d = &ds[0];
        assert_eq!(d.stack, StackPath::new("acme", "web", "prod"));
        assert_eq!(d.line, 15);
        let s = d.settings.as_ref().unwrap();
        assert_eq!(s["sourceContext"]["git"]["repoDir"], "stacks/web");
        assert_eq!(s["sourceContext"]["git"]["branch"], "refs/heads/main");
        assert_eq!(
            s["operationContext"]["environmentVariables"]["REGION"],
            "us-east-1"
        );
        assert_eq!(
            s["operationContext"]["environmentVariables"]["API"]["fromParameterStore"]["name"],
            "/app/api"
        );
        assert_eq!(d.tags["ttl"], "60");
        assert_eq!(d.tags["team"], "platform");
        assert_eq!(d.secrets["DB"], "hunter2");
        let sched: Vec<_> = d.schedules.iter().collect();
        assert_eq!(sched[0].kind, "drift");
        assert!(sched[0].flag);
    }

    #[test]
    fn a_bad_file_names_its_line_and_field() {
        for (text, line, what) in [
            (
                "stacks:\n  - stack: a/b\n    setings: {}\n",
                3,
                "unknown field `setings`",
            ),
            (
                "stacks:\n  - stack: a/b\n  - stack: c/d\n    template: nope\n",
                3,
                "template 'nope' is not defined",
            ),
            (
                "stacks:\n  - stack: a/b\n    settings: {}\n    schedules:\n      - cron: \"99 * * * *\"\n",
                2,
                "schedules:",
            ),
            (
                "stacks:\n  - stack: a/b\n  - stack: a/b\n",
                3,
                "declared twice",
            ),
            (
                "stacks:\n  - stack: a/b\n    settings: {operationContext: {environmentVariables: {X: {secret: s}}}}\n",
                2,
                "declare it under secrets:",
            ),
            (
                "stacks:\n  - stack: a/b\n    settings: {}\n    secrets: {X: {env: TARMAC_TEST_SURELY_UNSET}}\n",
                2,
                "TARMAC_TEST_SURELY_UNSET is not set",
            ),
        ] {
            let (_dir, p) = write(text);
            let e = read(&p, "acme").unwrap_err();
            let expect = format!("{}:{line}: ", p.display());
            assert!(e.message.starts_with(&expect), "{text}\n{}", e.message);
            assert!(e.message.contains(what), "{text}\n{}", e.message);
        }
    }

    #[test]
    fn listed_schedules_compare_equal_to_declared_ones() {
        let declared = schedule(&ScheduleDecl {
            cron: None,
            at: None,
            drift: None,
            ttl: Some("2030-01-01T00:00:00Z".into()),
            operation: None,
            auto_remediate: false,
            delete_after_destroy: true,
        })
        .unwrap();
        let listed = json!({
            "scheduleOnce": "2030-01-01 00:00:00.000",
            "definition": {"request": {"operation": "destroy", "operationContext": {"options": {"deleteAfterDestroy": true}}}},
        });
        assert_eq!(Sched::of_listed(&listed).unwrap(), declared);
        let cron = schedule(&ScheduleDecl {
            cron: Some("0  3 * * *".into()),
            at: None,
            drift: None,
            ttl: None,
            operation: Some("refresh".into()),
            auto_remediate: false,
            delete_after_destroy: false,
        })
        .unwrap();
        let listed = json!({"scheduleCron": "0 3 * * *", "definition": {"request": {"operation": "refresh"}}});
        assert_eq!(Sched::of_listed(&listed).unwrap(), cron);
    }
}
