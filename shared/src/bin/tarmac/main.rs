//! The `tarmac` command.
//!
//! Server side: `serve` runs everything on one machine; `token` and `oidc` administer a data
//! dir or an AWS deployment directly. Client side, every other command speaks only the public
//! REST API, so it works the same against `tarmac serve` and a Tarmac deployed on AWS.
#![forbid(unsafe_code)]

mod admin;
mod api;
mod apply;
mod commands;
mod follow;
mod output;
mod profile;
mod quickstart;
mod run;
mod settings;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use api::{CliResult, exit};
use output::Format;

#[derive(Parser)]
#[command(
    name = "tarmac",
    version,
    about = "Self-hosted deployments for infrastructure-as-code stacks",
    after_help = exit::HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The signed-in profile to use (see `tarmac login`).
    #[arg(long, global = true, env = "TARMAC_PROFILE")]
    profile: Option<String>,
    /// The server, overriding the profile's.
    #[arg(long, global = true)]
    url: Option<String>,
    /// How read commands print: a table, or the server's JSON or YAML.
    #[arg(long, short, global = true, value_enum, default_value = "table")]
    output: Format,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API, workers, scheduler and console in one process on an embedded SQLite store.
    Serve(admin::ServeArgs),
    /// Run an agent pool's deployments on this machine (no time limit; inside your network).
    Agent(admin::AgentArgs),
    /// Deploy an example stack on a running server and follow it: the first five minutes.
    Quickstart(quickstart::QuickstartArgs),
    /// Sign in: check a token against the server and save it as a profile (0600).
    Login,
    /// Forget a profile's token.
    Logout,
    /// Start a deployment; with --follow, stream its log and exit with its outcome.
    Run(run::RunArgs),
    /// A deployment's log (ORG/PROJECT/STACK/ID, its console URL, or its id).
    Logs {
        deployment: String,
        /// Keep following until the deployment ends.
        #[arg(long, short)]
        follow: bool,
        /// Only this step's lines (from 0).
        #[arg(long)]
        step: Option<usize>,
        #[arg(long)]
        org: Option<String>,
    },
    /// List, show and cancel deployments.
    #[command(subcommand)]
    Deployments(commands::DeploymentsCommand),
    /// List, show and delete stacks.
    #[command(subcommand, alias = "stack")]
    Stacks(commands::StacksCommand),
    /// Pause deployments of a stack, or of an org (admins).
    Pause {
        stack: Option<String>,
        #[arg(long, conflicts_with = "stack")]
        org: Option<String>,
    },
    /// Resume deployments of a stack, or of an org (admins).
    Resume {
        stack: Option<String>,
        #[arg(long, conflicts_with = "stack")]
        org: Option<String>,
    },
    /// A stack's deployment settings.
    #[command(subcommand)]
    Settings(settings::SettingsCommand),
    /// Settings as code: make many stacks match one YAML file.
    Apply(apply::ApplyArgs),
    /// A stack's schedules.
    #[command(subcommand)]
    Schedules(commands::SchedulesCommand),
    /// A stack's tags.
    #[command(subcommand)]
    Tags(commands::TagsCommand),
    /// The org's API tokens, through the API (admins).
    #[command(subcommand)]
    Tokens(commands::TokensCommand),
    /// Create a token directly in a data dir, on the server's machine.
    Token {
        #[command(subcommand)]
        command: admin::TokenCommand,
    },
    /// The run cache on this machine: git mirrors, engine plugins, stacks' dependency caches.
    Cache {
        #[command(subcommand)]
        command: admin::CacheCommand,
    },
    /// Manage the OIDC issuer's signing keys.
    Oidc {
        #[command(subcommand)]
        command: admin::OidcCommand,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    // First: started as a deployment's sandbox helper, this process becomes that child.
    tarmac::sandbox::trampoline();
    run()
}

#[tokio::main]
async fn run() -> ExitCode {
    let cli = Cli::parse();
    let server = match cli.command {
        Command::Serve(a) => Some(admin::serve(a).await),
        Command::Agent(a) => Some(admin::agent(a, cli.url.clone()).await),
        Command::Token { command } => Some(admin::token(command).await),
        Command::Oidc { command } => Some(admin::oidc(command).await),
        Command::Cache { command } => Some(admin::cache(command)),
        command => {
            return match client(
                command,
                cli.profile.as_deref(),
                cli.url.as_deref(),
                cli.output,
            )
            .await
            {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(e.code)
                }
            };
        }
    };
    match server {
        Some(Err(e)) => {
            eprintln!("tarmac: {}", e.chain());
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

/// The client commands: each resolves its server and token, then speaks the REST API.
async fn client(
    command: Command,
    profile: Option<&str>,
    url: Option<&str>,
    format: Format,
) -> CliResult<u8> {
    let api = || profile::resolve(profile, url)?.api();
    match command {
        Command::Login => profile::login(profile, url).await.map(|()| exit::OK),
        Command::Logout => profile::logout(profile).map(|()| exit::OK),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "tarmac", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Quickstart(a) => quickstart::quickstart(&a, profile, url).await,
        Command::Run(a) => {
            let api = api()?;
            let stack = commands::stack_arg(&api, &a.stack).await?;
            run::run(&api, &stack, &a, format).await
        }
        Command::Logs {
            deployment,
            follow,
            step,
            org,
        } => {
            let api = api()?;
            let (stack, id) = run::locate(&api, &deployment, org.as_deref()).await?;
            match step {
                Some(n) => follow::step_lines(&api, &stack, &id, n, follow)
                    .await
                    .map(|()| exit::OK),
                None if follow => run::follow(&api, &stack, &id).await,
                None => run::print_log(&api, &stack, &id).await,
            }
        }
        Command::Deployments(c) => commands::deployments(&api()?, &c, format).await,
        Command::Stacks(c) => commands::stacks(&api()?, &c, format).await,
        Command::Pause { stack, org } => {
            commands::pause(&api()?, stack.as_deref(), org.as_deref(), false).await
        }
        Command::Resume { stack, org } => {
            commands::pause(&api()?, stack.as_deref(), org.as_deref(), true).await
        }
        Command::Settings(c) => settings::settings(&api()?, &c, format).await,
        Command::Apply(a) => apply::apply(&api()?, &a, format).await,
        Command::Schedules(c) => commands::schedules(&api()?, &c, format).await,
        Command::Tags(c) => commands::tags(&api()?, &c, format).await,
        Command::Tokens(c) => commands::tokens(&api()?, &c, format).await,
        Command::Serve(_)
        | Command::Agent(_)
        | Command::Token { .. }
        | Command::Oidc { .. }
        | Command::Cache { .. } => {
            unreachable!("handled in main")
        }
    }
}
