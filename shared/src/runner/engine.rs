//! IaC engines: detection from the program directory, and each operation's commands.

use std::path::{Path, PathBuf};

use crate::domain::Operation;
pub(crate) use crate::domain::{Engine, Tool};

/// Finds `program` on a `PATH` value, as the child's shell would.
pub(crate) fn which(program: &str, path_env: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path_env)
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The engines (and git) on `path_env`, each with its version. Runs each found binary once
/// with its version flag, for at most a few seconds.
pub(crate) async fn discover(path_env: &str) -> Vec<Tool> {
    let probes: [(&'static str, &[&str]); 4] = [
        ("terraform", &["version"]),
        ("tofu", &["version"]),
        ("pulumi", &["version"]),
        ("git", &["--version"]),
    ];
    let mut out = Vec::with_capacity(probes.len());
    for (name, args) in probes {
        let path = which(name, path_env);
        let version = match &path {
            Some(p) => version_of(p, args, path_env).await,
            None => None,
        };
        out.push(Tool {
            name: name.to_string(),
            path,
            version,
        });
    }
    out
}

async fn version_of(binary: &Path, args: &[&str], path_env: &str) -> Option<String> {
    let run = tokio::process::Command::new(binary)
        .args(args)
        .env_clear()
        .env("PATH", path_env)
        .env("CHECKPOINT_DISABLE", "1")
        .env("PULUMI_SKIP_UPDATE_CHECK", "true")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), run)
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// Why an engine cannot run: it is not on the deployments' `PATH`.
pub(crate) fn missing_engine(engine: Engine, path_env: &str) -> Option<String> {
    which(engine.binary(), path_env).is_none().then(|| {
        format!(
            "{} was not found on the deployments' PATH ({path_env}). Install it there, or start the server with --child-path (TARMAC_CHILD_PATH) naming where it is.",
            engine.binary()
        )
    })
}

/// Picks the engine: an explicit override, else `Pulumi.yaml` means pulumi, and `*.tf` means
/// tofu when it is on the child's `PATH`, else terraform.
pub(crate) fn detect(
    dir: &Path,
    explicit: Option<Engine>,
    path_env: &str,
) -> Result<Engine, String> {
    if let Some(engine) = explicit {
        return Ok(engine);
    }
    if dir.join("Pulumi.yaml").is_file() || dir.join("Pulumi.yml").is_file() {
        return Ok(Engine::Pulumi);
    }
    let has_tf = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .any(|e| e.path().extension().is_some_and(|x| x == "tf"));
    if has_tf {
        return Ok(if which("tofu", path_env).is_some() {
            Engine::Tofu
        } else {
            Engine::Terraform
        });
    }
    Err(format!(
        "no IaC program found in {}: expected Pulumi.yaml or *.tf files (set sourceContext.git.repoDir?)",
        dir.display()
    ))
}

/// The commands of one operation, in order. Each is `argv` without the binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub commands: Vec<Vec<String>>,
    /// An exit code of the last command that means "drift found", not failure.
    pub drift_exit_code: Option<i32>,
    /// Where the last command's engine events come from.
    pub events: EventSource,
}

/// How an engine reports what its operation does, for the update's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventSource {
    /// `-json` lines on stdout (Terraform, OpenTofu).
    JsonStdout,
    /// An event log file the run names with `--event-log <file>` (Pulumi).
    EventLog,
}

/// The flag that asks Pulumi for its event log.
pub(crate) const EVENT_LOG_FLAG: &str = "--event-log";

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

pub(crate) fn plan(engine: Engine, op: Operation, stack: &str) -> Plan {
    match engine {
        Engine::Terraform | Engine::Tofu => {
            let init = argv(&["init", "-input=false", "-no-color"]);
            let (main, drift) = match op {
                Operation::Update | Operation::RemediateDrift => (
                    argv(&["apply", "-auto-approve", "-input=false", "-no-color"]),
                    None,
                ),
                Operation::Preview => (argv(&["plan", "-input=false", "-no-color"]), None),
                Operation::Refresh => (
                    argv(&[
                        "apply",
                        "-refresh-only",
                        "-auto-approve",
                        "-input=false",
                        "-no-color",
                    ]),
                    None,
                ),
                Operation::Destroy => (
                    argv(&["destroy", "-auto-approve", "-input=false", "-no-color"]),
                    None,
                ),
                // `plan` refreshes first; exit code 2 means the refreshed state differs from the
                // program, i.e. drift.
                Operation::DetectDrift => (
                    argv(&["plan", "-detailed-exitcode", "-input=false", "-no-color"]),
                    Some(2),
                ),
            };
            let mut main = main;
            main.push("-json".into());
            Plan {
                commands: vec![init, main],
                drift_exit_code: drift,
                events: EventSource::JsonStdout,
            }
        }
        Engine::Pulumi => {
            let select = vec![
                "stack".into(),
                "select".into(),
                "--create".into(),
                "--non-interactive".into(),
                stack.to_string(),
            ];
            let main = match op {
                Operation::Update => argv(&["up", "--yes", "--skip-preview", "--non-interactive"]),
                Operation::Preview => argv(&["preview", "--non-interactive"]),
                Operation::Refresh => argv(&["refresh", "--yes", "--non-interactive"]),
                Operation::Destroy => argv(&["destroy", "--yes", "--non-interactive"]),
                Operation::DetectDrift => argv(&[
                    "preview",
                    "--refresh",
                    "--expect-no-changes",
                    "--non-interactive",
                ]),
                Operation::RemediateDrift => argv(&[
                    "up",
                    "--refresh",
                    "--yes",
                    "--skip-preview",
                    "--non-interactive",
                ]),
            };
            // Pulumi reports unexpected changes as a plain failure, so drift and error cannot
            // be told apart by exit code.
            Plan {
                commands: vec![select, main],
                drift_exit_code: None,
                events: EventSource::EventLog,
            }
        }
    }
}

/// What a run prepares so that `engine` keeps the stack's state in `state_dir`, unless the
/// program configures its own backend: files to write into the program directory, and
/// variables for the engine (the run's own variables of the same name win).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateSetup {
    pub files: Vec<(PathBuf, String)>,
    pub env: Vec<(String, String)>,
}

/// The state setup for one engine. `passphrase` is the stack's Pulumi secrets passphrase.
pub(crate) fn state_setup(
    engine: Engine,
    program_dir: &Path,
    state_dir: &Path,
    passphrase: impl FnOnce() -> String,
) -> StateSetup {
    match engine {
        Engine::Terraform | Engine::Tofu if declares_backend(program_dir) => StateSetup {
            files: vec![],
            env: vec![],
        },
        Engine::Terraform | Engine::Tofu => StateSetup {
            files: vec![(
                program_dir.join(BACKEND_OVERRIDE_FILE),
                terraform_backend_override(&state_dir.join(TERRAFORM_STATE_FILE)),
            )],
            env: vec![],
        },
        Engine::Pulumi => StateSetup {
            files: vec![],
            env: vec![
                (
                    "PULUMI_BACKEND_URL".into(),
                    format!("file://{}", state_dir.display()),
                ),
                ("PULUMI_CONFIG_PASSPHRASE".into(), passphrase()),
            ],
        },
    }
}

/// The state file of Tarmac's Terraform backend, in the stack's state directory.
pub(crate) const TERRAFORM_STATE_FILE: &str = "terraform.tfstate";

/// Where a run reads the stack's outputs after a successful operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OutputsSource {
    /// The state file the engine has just written (Terraform with Tarmac's backend): no need to
    /// start the engine again to print them.
    StateFile(PathBuf),
    /// The engine's command, with secrets shown; and for Pulumi again with them masked, which
    /// tells which outputs are secret.
    Commands {
        shown: Vec<String>,
        masked: Option<Vec<String>>,
    },
}

pub(crate) fn outputs_source(
    engine: Engine,
    program_dir: &Path,
    state_dir: &Path,
) -> OutputsSource {
    match engine {
        Engine::Terraform | Engine::Tofu if !declares_backend(program_dir) => {
            OutputsSource::StateFile(state_dir.join(TERRAFORM_STATE_FILE))
        }
        Engine::Terraform | Engine::Tofu => OutputsSource::Commands {
            shown: outputs_command(engine, true),
            masked: None,
        },
        Engine::Pulumi => OutputsSource::Commands {
            shown: outputs_command(engine, true),
            masked: Some(outputs_command(engine, false)),
        },
    }
}

/// A stack output: name, value, and whether it is secret.
pub(crate) type Output = (String, serde_json::Value, bool);

/// Reads what `outputs_source` pointed at: the state file's bytes, or the commands' output.
pub(crate) fn parse_outputs(
    source: &OutputsSource,
    shown: &[u8],
    masked: Option<&[u8]>,
) -> Result<Vec<Output>, String> {
    match (source, masked) {
        (OutputsSource::StateFile(_), _) => parse_terraform_state_outputs(shown),
        (OutputsSource::Commands { .. }, Some(masked)) => parse_pulumi_outputs(shown, masked),
        (OutputsSource::Commands { .. }, None) => parse_terraform_outputs(shown),
    }
}

/// How many resources the stack's state holds, read from the state Tarmac keeps for it
/// (`None` when the program keeps its own, or the state cannot be read).
pub(crate) fn resource_count(engine: Engine, program_dir: &Path, state_dir: &Path) -> Option<i64> {
    match engine {
        Engine::Terraform | Engine::Tofu if declares_backend(program_dir) => None,
        Engine::Terraform | Engine::Tofu => {
            let state = match super::files::read(&state_dir.join(TERRAFORM_STATE_FILE)) {
                Ok(bytes) => bytes,
                // No state file yet: nothing was ever created.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(0),
                Err(_) => return None,
            };
            let v: serde_json::Value = serde_json::from_slice(&state).ok()?;
            let managed = v["resources"]
                .as_array()?
                .iter()
                .filter(|r| r["mode"] == "managed")
                .map(|r| r["instances"].as_array().map_or(0, Vec::len) as i64)
                .sum();
            Some(managed)
        }
        Engine::Pulumi => None,
    }
}

/// Whether an operation's success changes what the stack's outputs are.
pub(crate) fn records_outputs(op: Operation) -> bool {
    matches!(
        op,
        Operation::Update | Operation::Refresh | Operation::Destroy | Operation::RemediateDrift
    )
}

/// The command that prints the stack's outputs as JSON.
fn outputs_command(engine: Engine, show_secrets: bool) -> Vec<String> {
    match engine {
        Engine::Terraform | Engine::Tofu => argv(&["output", "-json", "-no-color"]),
        Engine::Pulumi if show_secrets => argv(&["stack", "output", "--json", "--show-secrets"]),
        Engine::Pulumi => argv(&["stack", "output", "--json"]),
    }
}

/// Terraform's outputs as `name -> value`, with sensitive ones marked for sealing.
pub(crate) fn parse_terraform_outputs(
    raw: &[u8],
) -> Result<Vec<(String, serde_json::Value, bool)>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(raw).map_err(|e| format!("unreadable output JSON: {e}"))?;
    let map = v.as_object().ok_or("output JSON is not an object")?;
    Ok(map
        .iter()
        .map(|(k, o)| {
            let sensitive = o
                .get("sensitive")
                .and_then(|s| s.as_bool())
                .unwrap_or(false);
            (
                k.clone(),
                o.get("value").cloned().unwrap_or_default(),
                sensitive,
            )
        })
        .collect())
}

/// Terraform's outputs from a state file (`outputs` holds the same `{value, type, sensitive}`
/// objects `terraform output -json` prints). No state yet means no outputs.
pub(crate) fn parse_terraform_state_outputs(
    state: &[u8],
) -> Result<Vec<(String, serde_json::Value, bool)>, String> {
    if state.is_empty() {
        return Ok(vec![]);
    }
    let v: serde_json::Value =
        serde_json::from_slice(state).map_err(|e| format!("unreadable state file: {e}"))?;
    let outputs = v
        .get("outputs")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    parse_terraform_outputs(outputs.to_string().as_bytes())
}

/// Pulumi's outputs, from the same command with and without `--show-secrets`: a value shown as
/// `[secret]` only in the second is a secret.
pub(crate) fn parse_pulumi_outputs(
    shown: &[u8],
    masked: &[u8],
) -> Result<Vec<(String, serde_json::Value, bool)>, String> {
    let shown: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(shown).map_err(|e| format!("unreadable output JSON: {e}"))?;
    let masked: serde_json::Value = serde_json::from_slice(masked).unwrap_or_default();
    Ok(shown
        .into_iter()
        .map(|(k, v)| {
            let secret = masked.get(&k).and_then(|m| m.as_str()) == Some("[secret]");
            (k, v, secret)
        })
        .collect())
}

/// A backend override that keeps Terraform state in Tarmac's per-stack state directory.
pub(crate) fn terraform_backend_override(state_file: &Path) -> String {
    format!(
        "# Written by Tarmac: state for this stack lives in its data directory.\nterraform {{\n  backend \"local\" {{\n    path = {}\n  }}\n}}\n",
        serde_json::Value::String(state_file.display().to_string())
    )
}

/// The file in which Tarmac gives a Terraform program its state backend.
pub(crate) const BACKEND_OVERRIDE_FILE: &str = "tarmac_backend_override.tf";

/// Whether a Terraform program configures its own backend (then Tarmac leaves state to it).
/// Tarmac's own override file does not count.
pub(crate) fn declares_backend(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.path().extension().is_some_and(|x| x == "tf")
                && e.file_name() != BACKEND_OVERRIDE_FILE
        })
        .filter_map(|e| super::files::read_to_string(&e.path()).ok())
        .any(|text| {
            text.lines().any(|l| {
                l.trim_start().starts_with("backend ") || l.trim_start().starts_with("cloud ")
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_prefers_pulumi_then_tofu_then_terraform() {
        let dir = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        let path = bin.path().display().to_string();
        assert!(
            detect(dir.path(), None, &path)
                .unwrap_err()
                .contains("no IaC program")
        );
        std::fs::write(dir.path().join("main.tf"), "").unwrap();
        assert_eq!(detect(dir.path(), None, &path), Ok(Engine::Terraform));
        let tofu = bin.path().join("tofu");
        std::fs::write(&tofu, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tofu, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(detect(dir.path(), None, &path), Ok(Engine::Tofu));
        std::fs::write(dir.path().join("Pulumi.yaml"), "name: x\n").unwrap();
        assert_eq!(detect(dir.path(), None, &path), Ok(Engine::Pulumi));
        assert_eq!(
            detect(dir.path(), Some(Engine::Terraform), &path),
            Ok(Engine::Terraform)
        );
    }

    #[test]
    fn operations_map_to_design_commands() {
        let p = plan(Engine::Terraform, Operation::DetectDrift, "dev");
        assert_eq!(p.commands[0][0], "init");
        assert_eq!(p.commands[1][..2], ["plan", "-detailed-exitcode"]);
        assert_eq!(p.drift_exit_code, Some(2));
        assert_eq!(
            plan(Engine::Tofu, Operation::Refresh, "dev").commands[1][..2],
            ["apply", "-refresh-only"]
        );
        assert_eq!(
            plan(Engine::Terraform, Operation::Destroy, "dev").commands[1][0],
            "destroy"
        );
        let p = plan(Engine::Pulumi, Operation::Update, "dev");
        assert_eq!(
            p.commands[0],
            ["stack", "select", "--create", "--non-interactive", "dev"]
        );
        assert_eq!(p.commands[1][..3], ["up", "--yes", "--skip-preview"]);
        assert_eq!(
            plan(Engine::Pulumi, Operation::DetectDrift, "dev").commands[1][..3],
            ["preview", "--refresh", "--expect-no-changes"]
        );
        assert_eq!(
            plan(Engine::Pulumi, Operation::RemediateDrift, "dev").commands[1][..3],
            ["up", "--refresh", "--yes"]
        );
    }

    #[test]
    fn outputs_parse_with_sensitivity() {
        let tf = br#"{"a":{"sensitive":false,"type":"string","value":"x"},"s":{"sensitive":true,"type":"string","value":"pw"}}"#;
        let mut got = parse_terraform_outputs(tf).unwrap();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got[0], ("a".into(), serde_json::json!("x"), false));
        assert_eq!(got[1], ("s".into(), serde_json::json!("pw"), true));
        let got =
            parse_pulumi_outputs(br#"{"k":"pw","u":"url"}"#, br#"{"k":"[secret]","u":"url"}"#)
                .unwrap();
        assert!(got.iter().any(|(k, _, s)| k == "k" && *s));
        assert!(got.iter().any(|(k, _, s)| k == "u" && !*s));
    }

    #[test]
    fn backend_detection_reads_terraform_blocks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("main.tf"),
            "resource \"terraform_data\" \"x\" {}\n",
        )
        .unwrap();
        assert!(!declares_backend(dir.path()));
        std::fs::write(
            dir.path().join("backend.tf"),
            "terraform {\n  backend \"s3\" {}\n}\n",
        )
        .unwrap();
        assert!(declares_backend(dir.path()));
    }
}
