//! The CloudFormation stack: create or update with the template this binary was built with,
//! wait for it to settle, report; or delete it and what it leaves behind.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_cloudformation::Client;
use aws_sdk_cloudformation::error::DisplayErrorContext;
use aws_sdk_cloudformation::types::{Capability, Parameter, Stack};
use clap::ValueEnum;
use serde_json::json;
use tarmac::crypto::{new_secret, sha256_hex};
use tarmac::error::{Error, Result};

use crate::artifacts;
use crate::{Arch, DeployArgs, DestroyArgs};

/// The template, compiled in: what is deployed is what this binary was built with.
pub(crate) const TEMPLATE: &str = include_str!("../template.yaml");

fn cfn_err<E: std::error::Error + 'static>(
    op: &str,
    e: aws_sdk_cloudformation::error::SdkError<
        E,
        aws_sdk_cloudformation::config::http::HttpResponse,
    >,
) -> Error {
    Error::internal(format!("CloudFormation {op}: {}", DisplayErrorContext(e)))
}

async fn account_id(sdk: &aws_config::SdkConfig) -> Result<String> {
    aws_sdk_sts::Client::new(sdk)
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| {
            Error::internal(format!(
                "STS GetCallerIdentity (are AWS credentials set?): {}",
                aws_sdk_sts::error::DisplayErrorContext(e)
            ))
        })?
        .account
        .ok_or_else(|| Error::internal("STS returned no account id"))
}

/// The stack, or `None` if it does not exist.
async fn describe(cfn: &Client, name: &str) -> Result<Option<Stack>> {
    match cfn.describe_stacks().stack_name(name).send().await {
        Ok(out) => Ok(out.stacks().first().cloned()),
        // CloudFormation says so with a ValidationError, not an error code of its own.
        Err(e)
            if DisplayErrorContext(&e)
                .to_string()
                .contains("does not exist") =>
        {
            Ok(None)
        }
        Err(e) => Err(cfn_err("DescribeStacks", e)),
    }
}

fn status(stack: &Stack) -> &str {
    stack.stack_status().map(|s| s.as_str()).unwrap_or("")
}

/// Waits until the stack leaves its `*_IN_PROGRESS` state; `None` once it is gone (delete).
async fn settle(cfn: &Client, name: &str) -> Result<Option<Stack>> {
    let mut delay = Duration::from_millis(200);
    loop {
        let Some(stack) = describe(cfn, name).await? else {
            return Ok(None);
        };
        if !status(&stack).ends_with("_IN_PROGRESS") {
            return Ok(Some(stack));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// The reasons resources failed, newest first, for the error message.
async fn failures(cfn: &Client, name: &str) -> String {
    let Ok(out) = cfn.describe_stack_events().stack_name(name).send().await else {
        return String::new();
    };
    out.stack_events()
        .iter()
        .filter(|e| {
            e.resource_status()
                .is_some_and(|s| s.as_str().ends_with("_FAILED"))
        })
        .take(10)
        .map(|e| {
            format!(
                "\n  {} ({}): {}",
                e.logical_resource_id().unwrap_or("?"),
                e.resource_status().map(|s| s.as_str()).unwrap_or("?"),
                e.resource_status_reason().unwrap_or("")
            )
        })
        .collect()
}

fn param(key: &str, value: &str) -> Parameter {
    Parameter::builder()
        .parameter_key(key)
        .parameter_value(value)
        .build()
}

fn keep(key: &str) -> Parameter {
    Parameter::builder()
        .parameter_key(key)
        .use_previous_value(true)
        .build()
}

fn outputs(stack: &Stack) -> BTreeMap<String, String> {
    stack
        .outputs()
        .iter()
        .filter_map(|o| Some((o.output_key()?.to_string(), o.output_value()?.to_string())))
        .collect()
}

fn parameters(stack: &Stack) -> BTreeMap<String, String> {
    stack
        .parameters()
        .iter()
        .filter_map(|p| {
            Some((
                p.parameter_key()?.to_string(),
                p.parameter_value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

/// `NAME=VALUE` pairs from `--parameter`.
fn parse_parameters(given: &[String]) -> Result<BTreeMap<String, String>> {
    given
        .iter()
        .map(|p| {
            p.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Error::invalid(format!("--parameter '{p}' is not NAME=VALUE")))
        })
        .collect()
}

/// The parameter names the template declares (its `Parameters:` section).
fn template_parameters() -> Vec<&'static str> {
    TEMPLATE
        .lines()
        .skip_while(|l| *l != "Parameters:")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' ') || l.starts_with('#'))
        .filter_map(|l| {
            let name = l.strip_prefix("  ")?.strip_suffix(':')?;
            (!name.starts_with(' ') && !name.is_empty()).then_some(name)
        })
        .collect()
}

const CAPABILITIES: [Capability; 2] = [Capability::CapabilityIam, Capability::CapabilityAutoExpand];

/// Runs an update and waits for it; `None` when there was nothing to change.
async fn update(cfn: &Client, name: &str, params: Vec<Parameter>) -> Result<Option<Stack>> {
    let update = cfn
        .update_stack()
        .stack_name(name)
        .template_body(TEMPLATE)
        .set_parameters(Some(params))
        .set_capabilities(Some(CAPABILITIES.to_vec()))
        .send()
        .await;
    match update {
        Ok(_) => settle(cfn, name).await,
        Err(e)
            if DisplayErrorContext(&e)
                .to_string()
                .contains("No updates are to be performed") =>
        {
            Ok(None)
        }
        Err(e) => Err(cfn_err("UpdateStack", e)),
    }
}

/// The stack, unless it did not end `CREATE_COMPLETE` or `UPDATE_COMPLETE`: then why not.
async fn require_complete(cfn: &Client, name: &str, stack: Option<Stack>) -> Result<Stack> {
    let stack = stack.ok_or_else(|| Error::internal(format!("the stack {name} disappeared")))?;
    match status(&stack) {
        "CREATE_COMPLETE" | "UPDATE_COMPLETE" => Ok(stack),
        other => Err(Error::internal(format!(
            "the stack {name} ended {other}{}",
            failures(cfn, name).await
        ))),
    }
}

pub(crate) async fn deploy(sdk: &aws_config::SdkConfig, args: &DeployArgs) -> Result<()> {
    let name = &args.target.stack_name;
    let region = sdk.region().map(|r| r.to_string()).unwrap_or_default();
    let cfn = Client::new(sdk);
    let existing = describe(&cfn, name).await?;
    if let Some(stack) = &existing
        && !matches!(
            status(stack),
            "CREATE_COMPLETE" | "UPDATE_COMPLETE" | "UPDATE_ROLLBACK_COMPLETE"
        )
    {
        return Err(Error::invalid(format!(
            "the stack {name} is {}: it cannot be updated now. If its creation failed, destroy it first: infra/deploy destroy --stack-name {name} --region {region}",
            status(stack)
        )));
    }
    let previous = existing.as_ref().map(parameters).unwrap_or_default();
    // The architecture: as asked, else the stack's, else arm64. The zips are built for it.
    let arch = args
        .arch
        .or_else(|| {
            previous
                .get("Architecture")
                .and_then(|a| Arch::from_str(a, false).ok())
        })
        .unwrap_or(Arch::Arm64);
    if !args.skip_build {
        artifacts::build(arch)?;
    }
    let account = account_id(sdk).await?;
    let s3 = artifacts::client(sdk);
    let bucket = artifacts::bucket_name(name, &account, &region);
    artifacts::ensure_bucket(&s3, &bucket, &account, &region, name).await?;
    let code = artifacts::upload(&s3, &bucket, &account).await?;

    let mut values: BTreeMap<String, String> = BTreeMap::new();
    values.insert("ArtifactBucket".into(), bucket.clone());
    values.extend(code);
    values.insert("Architecture".into(), arch.as_str().into());
    if let Some(url) = &args.public_url {
        values.insert("PublicUrl".into(), url.trim_end_matches('/').into());
    }
    if let Some(url) = &args.issuer_url {
        values.insert("OidcIssuerUrl".into(), url.trim_end_matches('/').into());
    }
    let secret = (existing.is_none() || args.new_bootstrap_secret).then(|| new_secret("tmb_"));
    if let Some(secret) = &secret {
        values.insert(
            "BootstrapSecretSha256".into(),
            sha256_hex(secret.as_bytes()),
        );
    }
    for (k, v) in parse_parameters(&args.parameters)? {
        if k == "BootstrapSecretSha256" || k == "ArtifactBucket" || k.ends_with("CodeKey") {
            return Err(Error::invalid(format!(
                "{k} is set by the deploy command itself"
            )));
        }
        if k == "DeletionProtection" || k == "Architecture" {
            return Err(Error::invalid(format!(
                "{k} has its own option: --deletion-protection, --arch"
            )));
        }
        values.insert(k, v);
    }
    let known = template_parameters();
    if let Some(unknown) = values.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(Error::invalid(format!(
            "the template has no parameter {unknown}; it has: {}",
            known.join(", ")
        )));
    }

    let stack = match &existing {
        None => {
            // Created unprotected, then protected by an update: a creation that fails must be
            // able to roll back and be destroyed, which protected tables would prevent.
            eprintln!("Creating the stack {name} in {region} ...");
            let mut create = values.clone();
            create.insert("DeletionProtection".into(), "false".into());
            cfn.create_stack()
                .stack_name(name)
                .template_body(TEMPLATE)
                .set_parameters(Some(create.iter().map(|(k, v)| param(k, v)).collect()))
                .set_capabilities(Some(CAPABILITIES.to_vec()))
                .tags(
                    aws_sdk_cloudformation::types::Tag::builder()
                        .key("tarmac:stack")
                        .value(name)
                        .build(),
                )
                .send()
                .await
                .map_err(|e| cfn_err("CreateStack", e))?;
            let created = require_complete(&cfn, name, settle(&cfn, name).await?).await?;
            if args.deletion_protection == Some(false) {
                created
            } else {
                eprintln!("Turning on the tables' deletion protection ...");
                let params = parameters(&created)
                    .keys()
                    .map(|k| match k.as_str() {
                        "DeletionProtection" => param(k, "true"),
                        _ => keep(k),
                    })
                    .collect();
                let updated = update(&cfn, name, params).await?;
                require_complete(&cfn, name, updated.or(Some(created))).await?
            }
        }
        Some(stack) => {
            eprintln!("Updating the stack {name} in {region} ...");
            if let Some(on) = args.deletion_protection {
                values.insert("DeletionProtection".into(), on.to_string());
            }
            // Parameters not given keep the stack's values; new ones take the template's
            // default; ones the template no longer has are dropped.
            let params = known
                .iter()
                .filter_map(|k| match values.get(*k) {
                    Some(v) => Some(param(k, v)),
                    None => previous.contains_key(*k).then(|| keep(k)),
                })
                .collect();
            match update(&cfn, name, params).await? {
                Some(updated) => require_complete(&cfn, name, Some(updated)).await?,
                None => {
                    eprintln!("The stack is up to date.");
                    stack.clone()
                }
            }
        }
    };
    report(&stack, secret.as_deref(), args.json);
    Ok(())
}

fn report(stack: &Stack, secret: Option<&str>, as_json: bool) {
    let out = outputs(stack);
    let api = out.get("ApiUrl").cloned().unwrap_or_default();
    if as_json {
        println!(
            "{}",
            json!({
                "stackName": stack.stack_name(),
                "status": status(stack),
                "apiUrl": api,
                "bootstrapSecret": secret,
                "outputs": out,
            })
        );
        return;
    }
    println!("Tarmac is deployed ({}).", status(stack));
    println!("  API:          {api}");
    if let Some(issuer) = out.get("OidcIssuer") {
        println!("  OIDC issuer:  {issuer}");
    }
    match secret {
        Some(secret) => {
            println!();
            println!("Create the first admin token of your organization (the secret works once,");
            println!("and is shown only here; the stack stores only its hash):");
            println!();
            println!(
                "  curl -sS -X POST {api}/api/bootstrap -H 'Content-Type: application/json' \\"
            );
            println!("    -d '{{\"secret\": \"{secret}\", \"organization\": \"<your-org>\"}}'");
        }
        None => {
            println!();
            println!("The bootstrap secret is unchanged (--new-bootstrap-secret makes a new one).");
        }
    }
}

pub(crate) async fn destroy(sdk: &aws_config::SdkConfig, args: &DestroyArgs) -> Result<()> {
    let name = &args.target.stack_name;
    let region = sdk.region().map(|r| r.to_string()).unwrap_or_default();
    let account = account_id(sdk).await?;
    let s3 = artifacts::client(sdk);
    let cfn = Client::new(sdk);
    if let Some(stack) = describe(&cfn, name).await? {
        let params = parameters(&stack);
        // A stack whose creation rolled back has no tables left to protect.
        let created = status(&stack) != "ROLLBACK_COMPLETE";
        if created && params.get("DeletionProtection").map(String::as_str) == Some("true") {
            return Err(Error::invalid(format!(
                "the stack {name} has deletion protection on, which keeps its tables; lift it first: infra/deploy deploy --stack-name {name} --region {region} --deletion-protection false"
            )));
        }
        if let Some(state) = outputs(&stack).get("StateBucketName") {
            let objects = artifacts::current_objects(&s3, state, &account).await?;
            if !objects.is_empty() && !args.delete_state {
                // Keys are `org/project/stack/<file>`.
                let stacks: std::collections::BTreeSet<String> = objects
                    .iter()
                    .map(|k| k.splitn(4, '/').take(3).collect::<Vec<_>>().join("/"))
                    .collect();
                return Err(Error::invalid(format!(
                    "the state bucket {state} holds the engine state of {} stack(s) ({}); without it \
                     their infrastructure is no longer tracked. Destroy those stacks first, or pass --delete-state",
                    stacks.len(),
                    stacks.into_iter().take(5).collect::<Vec<_>>().join(", ")
                )));
            }
            // CloudFormation deletes only empty buckets; a versioned one keeps every version.
            let removed = artifacts::empty_bucket(&s3, state, &account).await?;
            eprintln!("Emptied the state bucket {state} ({removed} object versions)");
        }
        eprintln!("Deleting the stack {name} in {region} ...");
        cfn.delete_stack()
            .stack_name(name)
            .send()
            .await
            .map_err(|e| cfn_err("DeleteStack", e))?;
        if let Some(stack) = settle(&cfn, name).await?
            && status(&stack) != "DELETE_COMPLETE"
        {
            return Err(Error::internal(format!(
                "the stack {name} ended {}{}",
                status(&stack),
                failures(&cfn, name).await
            )));
        }
        eprintln!("Deleted the stack {name}");
    } else {
        eprintln!("There is no stack {name} in {region}.");
    }
    let bucket = artifacts::bucket_name(name, &account, &region);
    artifacts::delete_bucket(&s3, &bucket, &account).await?;
    println!("Tarmac ({name}) is destroyed; its KMS keys are scheduled for deletion in 7 days.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_parameters_are_read_from_the_template() {
        let names = template_parameters();
        for want in [
            "ArtifactBucket",
            "ApiCodeKey",
            "Architecture",
            "BootstrapSecretSha256",
            "DeletionProtection",
            "WorkerImageUri",
            "AlarmTopicArn",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert!(!names.contains(&"Type") && !names.contains(&"Conditions"));
    }

    #[test]
    fn parameters_are_name_value_pairs() {
        let got = parse_parameters(&["A=1".into(), "B=x=y".into(), "C=".into()]).unwrap();
        assert_eq!(got["A"], "1");
        assert_eq!(got["B"], "x=y");
        assert_eq!(got["C"], "");
        for bad in ["A", "=1"] {
            assert!(parse_parameters(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
