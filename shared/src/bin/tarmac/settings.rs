//! `tarmac settings get|set|edit`: a stack's deployment settings, read as YAML, changed by key
//! path, or edited whole in `$EDITOR` and saved only once the server accepts them.

use std::io::IsTerminal;

use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::api::{Api, CliError, CliResult, StackPath, exit};
use crate::output::{self, Format};

#[derive(Debug, Subcommand)]
pub(crate) enum SettingsCommand {
    /// Show a stack's deployment settings (secrets show only as ciphertext).
    Get { stack: String },
    /// Change settings by key path: sourceContext.git.branch=refs/heads/dev ... Values that
    /// read as JSON (numbers, true/false, null, [..], {..}) are taken as JSON, except
    /// environment variables, which stay strings; null removes a key.
    Set {
        stack: String,
        #[arg(value_name = "PATH=VALUE")]
        values: Vec<String>,
        /// A secret from a file: operationContext.environmentVariables.DB=@PATH (repeatable).
        #[arg(long, value_name = "PATH=@FILE")]
        secret: Vec<String>,
    },
    /// Edit the settings as YAML in $VISUAL or $EDITOR; saved only if the server accepts them.
    Edit { stack: String },
}

pub(crate) async fn settings(api: &Api, cmd: &SettingsCommand, format: Format) -> CliResult<u8> {
    match cmd {
        SettingsCommand::Get { stack } => {
            let s = crate::commands::stack_arg(api, stack).await?;
            let v = api.get(&path(&s)).await.map_err(no_settings(&s))?;
            let f = if format == Format::Table {
                Format::Yaml
            } else {
                format
            };
            output::emit(f, &v, |_| unreachable!("tables print as YAML"))?;
        }
        SettingsCommand::Set {
            stack,
            values,
            secret,
        } => {
            if values.is_empty() && secret.is_empty() {
                return Err(CliError::new("nothing to set")
                    .hint("give PATH=VALUE pairs, e.g. sourceContext.git.branch=refs/heads/dev"));
            }
            let s = crate::commands::stack_arg(api, stack).await?;
            let mut patch = json!({});
            for kv in values {
                let (k, v) = split(kv)?;
                set_path(&mut patch, k, typed(k, v))?;
            }
            for kv in secret {
                let (k, v) = split(kv)?;
                let file = v.strip_prefix('@').ok_or_else(|| {
                    CliError::new(format!("--secret {k}: give a file, as {k}=@PATH"))
                        .hint("secret values are read from files so they never appear in the process list or shell history")
                })?;
                let text = std::fs::read_to_string(file)
                    .map_err(|e| CliError::new(format!("--secret {k}: {file}: {e}")))?;
                set_path(
                    &mut patch,
                    k,
                    json!({ "secret": text.strip_suffix('\n').unwrap_or(&text) }),
                )?;
            }
            let v = api.post(&path(&s), &patch).await?;
            eprintln!(
                "Saved the settings of {s} (version {}).",
                output::cell(&v["version"])
            );
        }
        SettingsCommand::Edit { stack } => {
            let s = crate::commands::stack_arg(api, stack).await?;
            return edit(api, &s).await;
        }
    }
    Ok(exit::OK)
}

fn path(s: &StackPath) -> String {
    format!("{}/deployments/settings", s.api())
}

fn no_settings(s: &StackPath) -> impl Fn(CliError) -> CliError + '_ {
    move |e| {
        if e.is_not_found() {
            e.hint(format!("set some with `tarmac settings edit {s}` or `tarmac settings set {s} sourceContext.git.repoUrl=...`"))
        } else {
            e
        }
    }
}

fn split(kv: &str) -> CliResult<(&str, &str)> {
    kv.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| CliError::new(format!("'{kv}' is not PATH=VALUE")))
}

/// JSON where the value reads as JSON, a string otherwise; environment variables are strings.
fn typed(key: &str, v: &str) -> Value {
    if key.contains("environmentVariables.") && v != "null" {
        return Value::String(v.to_string());
    }
    match serde_json::from_str::<Value>(v) {
        Ok(j) if !j.is_string() => j,
        _ => Value::String(v.to_string()),
    }
}

/// Sets `a.b.c` in `root`, making the objects on the way.
fn set_path(root: &mut Value, key: &str, value: Value) -> CliResult<()> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(CliError::new(format!("'{key}' is not a key path (a.b.c)")));
    }
    let mut at = root;
    for p in &parts[..parts.len() - 1] {
        let map = at
            .as_object_mut()
            .ok_or_else(|| CliError::new(format!("{key}: {p} is not a mapping")))?;
        at = map
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !at.is_object() {
            return Err(CliError::new(format!("{key}: {p} is not a mapping")));
        }
    }
    at.as_object_mut()
        .expect("checked above")
        .insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

const EDIT_HEADER: &str = "\
# Deployment settings of STACK. Save and quit to apply; an empty file cancels.
# Secrets show as {ciphertext: ...}: keep that to keep the secret, or write
# {secret: new-value} to replace it. Removing a key removes it from the settings.
";

/// Opens the settings in the user's editor until the server accepts them or the user gives up.
async fn edit(api: &Api, s: &StackPath) -> CliResult<u8> {
    let current = api.get_opt(&path(s)).await?;
    let shown = match &current {
        Some(v) => {
            let mut v = v.clone();
            if let Value::Object(m) = &mut v {
                m.remove("version");
                m.remove("source");
            }
            keep_ciphertext(&mut v);
            v
        }
        None => json!({
            "sourceContext": {"git": {"repoUrl": "", "branch": "refs/heads/main", "repoDir": ""}},
            "operationContext": {"preRunCommands": [], "environmentVariables": {}},
        }),
    };
    let dir = tempfile::Builder::new()
        .prefix("tarmac-settings-")
        .tempdir()?;
    let file = dir
        .path()
        .join(format!("{}-{}-{}.yaml", s.org, s.project, s.stack));
    let header = EDIT_HEADER.replace("STACK", &s.to_string());
    let mut text = format!("{header}{}", output::to_yaml(&shown)?);
    loop {
        std::fs::write(&file, &text)?;
        run_editor(&file)?;
        let edited = std::fs::read_to_string(&file)?;
        if edited
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            eprintln!("Empty file: nothing saved.");
            return Ok(exit::OK);
        }
        let problem = match serde_yaml_ng::from_str::<Value>(&edited) {
            Err(e) => format!("{}: {e}", file.display()),
            Ok(v) if v == shown && current.is_some() => {
                eprintln!("No changes.");
                return Ok(exit::OK);
            }
            Ok(v) if !v.is_object() => "the settings must be a mapping".to_string(),
            Ok(v) => match api.put(&path(s), &v).await {
                Ok(saved) => {
                    eprintln!(
                        "Saved the settings of {s} (version {}).",
                        output::cell(&saved["version"])
                    );
                    return Ok(exit::OK);
                }
                Err(e) if e.status.is_some_and(|st| st.is_client_error()) => e.message,
                Err(e) => return Err(e),
            },
        };
        eprintln!("error: {problem}");
        if !std::io::stdin().is_terminal() || !ask("Edit again? [Y/n] ")? {
            let keep = std::env::temp_dir().join(format!(
                "tarmac-settings-{}-{}-{}.yaml",
                s.org, s.project, s.stack
            ));
            std::fs::copy(&file, &keep)?;
            return Err(CliError::new("the settings were not saved")
                .hint(format!("your edit is kept in {}", keep.display())));
        }
        text = edited;
    }
}

/// `{secret, ciphertext}` as `{ciphertext}`: what the editor shows and the server takes back.
fn keep_ciphertext(v: &mut Value) {
    match v {
        Value::Object(m) if m.contains_key("ciphertext") => {
            let ct = m["ciphertext"].clone();
            m.clear();
            m.insert("ciphertext".into(), ct);
        }
        Value::Object(m) => m.values_mut().for_each(keep_ciphertext),
        Value::Array(a) => a.iter_mut().for_each(keep_ciphertext),
        _ => {}
    }
}

fn ask(q: &str) -> CliResult<bool> {
    eprint!("{q}");
    let mut s = String::new();
    std::io::stdin().read_line(&mut s)?;
    Ok(!matches!(s.trim(), "n" | "N" | "no"))
}

/// `$VISUAL`, else `$EDITOR`, else `vi`, run by the shell so it may carry arguments.
fn run_editor(file: &std::path::Path) -> CliResult<()> {
    let editor = ["VISUAL", "EDITOR"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(file)
        .status()
        .map_err(|e| CliError::new(format!("cannot run the editor '{editor}': {e}")))?;
    if !status.success() {
        return Err(CliError::new(format!(
            "the editor '{editor}' exited with {status}; nothing saved"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_build_a_merge_patch() {
        let mut p = json!({});
        set_path(
            &mut p,
            "sourceContext.git.branch",
            typed("sourceContext.git.branch", "refs/heads/dev"),
        )
        .unwrap();
        set_path(
            &mut p,
            "operationContext.options.timeout",
            typed("operationContext.options.timeout", "600"),
        )
        .unwrap();
        set_path(
            &mut p,
            "operationContext.environmentVariables.PORT",
            typed("operationContext.environmentVariables.PORT", "8080"),
        )
        .unwrap();
        set_path(
            &mut p,
            "operationContext.preRunCommands",
            typed("x", r#"["make"]"#),
        )
        .unwrap();
        assert_eq!(
            p,
            json!({
                "sourceContext": {"git": {"branch": "refs/heads/dev"}},
                "operationContext": {"options": {"timeout": 600}, "environmentVariables": {"PORT": "8080"}, "preRunCommands": ["make"]},
            })
        );
        assert!(set_path(&mut p, "sourceContext.git.branch.x", json!(1)).is_err());
        assert!(set_path(&mut p, "a..b", json!(1)).is_err());
    }
}
