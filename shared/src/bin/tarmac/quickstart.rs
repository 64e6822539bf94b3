//! `tarmac quickstart`: from a running `tarmac serve --demo` to a succeeded deployment.
//!
//! It writes a small example program into a git repository under the data dir's `demo/`
//! directory (the only place on disk a `--demo` server clones from), points the demo stack
//! `ORG/quickstart/dev` at it, runs an update and follows it. Everything it makes is marked
//! with the `tarmac:demo` tag, and it refuses to touch a stack of that name it did not make.
//! A second run reuses the repository and the stack.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::api::{Api, CliError, CliResult, StackPath, enc, exit};

pub(crate) const PROJECT: &str = "quickstart";
pub(crate) const STACK: &str = "dev";
/// The mark on everything the quickstart makes.
pub(crate) const DEMO_TAG: &str = "tarmac:demo";

#[derive(Debug, clap::Args)]
pub(crate) struct QuickstartArgs {
    /// The server's data dir: the example repository goes in its `demo/` directory.
    #[arg(long, env = "TARMAC_DATA_DIR", default_value = "./.tarmac")]
    data_dir: PathBuf,
    /// The API token (the one `tarmac serve` printed on first start). Defaults to
    /// TARMAC_TOKEN, then the signed-in profile.
    #[arg(long, env = "TARMAC_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

const TERRAFORM_PROGRAM: &str = r#"# Tarmac quickstart: a Terraform program with nothing outside Terraform itself.
variable "greeting" {
  type    = string
  default = "Hello from Tarmac"
}

resource "terraform_data" "greeting" {
  input = var.greeting
}

output "greeting" {
  value = terraform_data.greeting.output
}
"#;

const PULUMI_PROGRAM: &str = r#"# Tarmac quickstart: a Pulumi YAML program with no cloud resources.
name: quickstart
runtime: yaml
description: Tarmac quickstart
outputs:
  greeting: Hello from Tarmac
"#;

pub(crate) async fn quickstart(
    a: &QuickstartArgs,
    profile: Option<&str>,
    url: Option<&str>,
) -> CliResult<u8> {
    let api = connect(a, profile, url)?;
    let caps = api.get("/api/capabilities").await?;
    let tarmac = &caps["tarmac"];
    if tarmac["demo"] != json!(true) {
        return Err(CliError::new(format!("the server at {} does not allow the quickstart's repository", api.url()))
            .hint("restart it with `tarmac serve --demo`: deployments may then clone from its data dir's demo/ directory, and nowhere else on its disk"));
    }
    let engine = pick_engine(tarmac)?;
    let org = crate::commands::default_org(&api).await?;
    let stack = StackPath::new(&org, PROJECT, STACK);

    let repo = a.data_dir.join("demo").join(PROJECT);
    let repo = ensure_repo(&repo, engine)?;
    eprintln!(
        "Example {} program: {}",
        engine_label(engine),
        repo.display()
    );

    ensure_stack(&api, &stack).await?;
    let settings = json!({
        "sourceContext": {"git": {"repoUrl": format!("file://{}", repo.display()), "branch": "refs/heads/main"}},
        "operationContext": {"options": {"engine": engine}},
    });
    api.put(&format!("{}/deployments/settings", stack.api()), &settings)
        .await?;
    eprintln!("Stack {stack} is set to deploy it.");

    let created = api
        .post(
            &format!("{}/deployments", stack.api()),
            &json!({"operation": "update", "inheritSettings": true}),
        )
        .await?;
    let id = created["id"].as_str().unwrap_or_default().to_string();
    let console = created["consoleUrl"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    eprintln!("Deployment {id} started; following its log.\n");
    let code = crate::run::follow(&api, &stack, &id).await?;
    println!();
    println!("Open it in the console: {console}");
    if code == exit::OK {
        println!("Try next:");
        println!(
            "  tarmac run {stack} --op preview --follow                  # another run, from the CLI"
        );
        println!(
            "  tarmac schedules create {stack} --drift \"0 * * * *\"       # a drift check every hour"
        );
        println!("  tarmac run {stack} --op detect-drift --follow             # a drift check now");
        println!("  tarmac run {stack} --op destroy --follow                  # clean up");
    }
    Ok(code)
}

fn connect(a: &QuickstartArgs, profile: Option<&str>, url: Option<&str>) -> CliResult<Api> {
    if let Some(token) = a.token.as_deref().filter(|t| !t.trim().is_empty()) {
        let url = url
            .map(str::to_string)
            .or_else(|| std::env::var("TARMAC_URL").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        return Api::new(&url, token.trim());
    }
    crate::profile::resolve(profile, url)
        .map_err(|e| e.hint("pass the token `tarmac serve` printed on first start: tarmac quickstart --token tmc_..."))?
        .api()
}

/// Terraform (or OpenTofu) if the server's deployments find it, else Pulumi.
fn pick_engine(tarmac: &Value) -> CliResult<&'static str> {
    let found = |name: &str| {
        tarmac["engines"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["name"] == name && e["found"] == json!(true))
    };
    if !found("git") {
        return Err(CliError::new("the server's deployments cannot find git")
            .hint("install git where the server's --child-path (or PATH) looks"));
    }
    for engine in ["terraform", "tofu", "pulumi"] {
        if found(engine) {
            return Ok(engine);
        }
    }
    Err(
        CliError::new("the server's deployments find no IaC engine (terraform, tofu or pulumi)")
            .hint("install one where the server's --child-path (or PATH) looks, then restart it"),
    )
}

fn engine_label(engine: &str) -> &'static str {
    match engine {
        "pulumi" => "Pulumi YAML",
        "tofu" => "OpenTofu",
        _ => "Terraform",
    }
}

/// The example repository, made once; later runs reuse it as it is.
fn ensure_repo(repo: &Path, engine: &str) -> CliResult<PathBuf> {
    if !repo.join(".git").is_dir() {
        std::fs::create_dir_all(repo)?;
        let (file, text) = match engine {
            "pulumi" => ("Pulumi.yaml", PULUMI_PROGRAM),
            _ => ("main.tf", TERRAFORM_PROGRAM),
        };
        std::fs::write(repo.join(file), text)?;
        std::fs::write(
            repo.join("README.md"),
            "Made by `tarmac quickstart`; safe to delete with the demo stack.\n",
        )?;
        for args in [
            &["init", "-q", "-b", "main"][..],
            &["add", "-A"],
            &[
                "-c",
                "user.name=Tarmac quickstart",
                "-c",
                "user.email=quickstart@tarmac.invalid",
                "commit",
                "-q",
                "-m",
                "Tarmac quickstart example",
            ],
        ] {
            let status = Command::new("git")
                .args(args)
                .current_dir(repo)
                .status()
                .map_err(|e| CliError::new(format!("cannot run git: {e}")).hint("install git"))?;
            if !status.success() {
                return Err(CliError::new(format!(
                    "git {} failed in {}",
                    args.join(" "),
                    repo.display()
                )));
            }
        }
    }
    Ok(std::fs::canonicalize(repo)?)
}

/// Creates the demo stack, or checks that an existing one is the quickstart's.
async fn ensure_stack(api: &Api, stack: &StackPath) -> CliResult<()> {
    match api.get_opt(&stack.api()).await? {
        Some(s) if s["tags"][DEMO_TAG].is_string() => Ok(()),
        Some(_) => Err(CliError::new(format!(
            "a stack {stack} exists that the quickstart did not make; it is left alone"
        ))
        .hint("the quickstart only ever works on its own demo stack")),
        None => {
            api.post(
                &format!("/api/stacks/{}/{}", enc(&stack.org), enc(&stack.project)),
                &json!({"stackName": stack.stack, "tags": {DEMO_TAG: "quickstart"}}),
            )
            .await?;
            Ok(())
        }
    }
}
