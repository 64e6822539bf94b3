//! `tarmac-infra`: builds the four Lambda zips, uploads them, and deploys `infra/template.yaml`
//! as a CloudFormation stack; `destroy` removes it all again. `infra/deploy` runs it (after
//! making sure cargo-lambda is there). Endpoints come from the SDK's `AWS_ENDPOINT_URL`, so the
//! same code deploys to an emulator.
#![forbid(unsafe_code)]

mod artifacts;
mod stack;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tarmac::error::{Error, Result};

#[derive(Parser)]
#[command(name = "tarmac-infra", about = "Deploy Tarmac to an AWS account")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the zips (unless --skip-build), upload them, and create or update the stack.
    Deploy(DeployArgs),
    /// Delete the stack and the artifact bucket.
    Destroy(DestroyArgs),
    /// Only build the zips, into target/lambda/<function>/bootstrap.zip.
    Build {
        #[arg(long, value_enum, default_value_t = Arch::Arm64)]
        arch: Arch,
    },
}

#[derive(clap::Args)]
struct Target {
    /// The CloudFormation stack's name: 1 to 24 lowercase letters, digits and '-', starting
    /// with a letter (it names the artifact bucket and the log groups too).
    #[arg(long, default_value = "tarmac")]
    stack_name: String,
    /// The AWS region (default: the SDK's, from AWS_REGION or the profile).
    #[arg(long)]
    region: Option<String>,
}

#[derive(clap::Args)]
pub struct DeployArgs {
    #[command(flatten)]
    target: Target,
    /// The functions' instruction set (a new stack: arm64; an update: the stack's).
    #[arg(long, value_enum)]
    arch: Option<Arch>,
    /// Use the zips already in target/lambda.
    #[arg(long)]
    skip_build: bool,
    /// The API's public base URL, when a custom domain fronts it (default: the HTTP API's URL).
    #[arg(long)]
    public_url: Option<String>,
    /// The OIDC issuer URL (default: the public URL followed by /oidc).
    #[arg(long)]
    issuer_url: Option<String>,
    /// Deletion protection on the tables (on for a new stack; an update keeps the stack's).
    #[arg(long)]
    deletion_protection: Option<bool>,
    /// Replace the bootstrap secret (a new stack always gets one). Use it when the first secret
    /// was lost before it was used, or to mint an admin token for a new org.
    #[arg(long)]
    new_bootstrap_secret: bool,
    /// Any other template parameter, as Name=Value (repeatable).
    #[arg(long = "parameter", value_name = "NAME=VALUE")]
    parameters: Vec<String>,
    /// Print the result as JSON (with the bootstrap secret, if one was made).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct DestroyArgs {
    #[command(flatten)]
    target: Target,
    /// Also delete the engine state of every stack Tarmac deployed. Without it, destroy refuses
    /// while the state bucket holds state: losing it loses track of real infrastructure.
    #[arg(long)]
    delete_state: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Arch {
    Arm64,
    #[value(name = "x86_64")]
    X86_64,
}

impl Arch {
    /// The name Lambda's `Architectures` uses, which is also the option's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Arm64 => "arm64",
            Arch::X86_64 => "x86_64",
        }
    }
}

fn validate_stack_name(name: &str) -> Result<()> {
    let ok = (1..=24).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid stack name '{name}': use 1 to 24 lowercase letters, digits and '-', starting with a letter"
        )))
    }
}

async fn sdk_config(target: &Target) -> Result<aws_config::SdkConfig> {
    validate_stack_name(&target.stack_name)?;
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &target.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        return Err(Error::invalid("no region: pass --region or set AWS_REGION"));
    }
    Ok(sdk)
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build { arch } => artifacts::build(arch),
        Command::Deploy(args) => {
            let sdk = sdk_config(&args.target).await?;
            stack::deploy(&sdk, &args).await
        }
        Command::Destroy(args) => {
            let sdk = sdk_config(&args.target).await?;
            stack::destroy(&sdk, &args).await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.chain());
            // A refusal (bad arguments, a protected stack) is the user's to fix: exit 2.
            if e.is_internal() {
                ExitCode::FAILURE
            } else {
                ExitCode::from(2)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_values_are_lambdas_architecture_names() {
        for arch in [Arch::Arm64, Arch::X86_64] {
            assert_eq!(Arch::from_str(arch.as_str(), false), Ok(arch));
        }
    }

    #[test]
    fn stack_names_fit_bucket_and_log_group_names() {
        for good in ["tarmac", "t", "tarmac-prod-eu1", "a23456789012345678901234"] {
            assert!(validate_stack_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Tarmac",
            "1tarmac",
            "tarmac_",
            "tarmac-",
            "a234567890123456789012345",
        ] {
            assert!(validate_stack_name(bad).is_err(), "{bad}");
        }
    }
}
