//! The function zips: built by cargo-lambda, uploaded content-addressed to a bucket of the
//! stack's own (so CloudFormation updates a function exactly when its code changed).

use std::path::{Path, PathBuf};
use std::process::Command;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CreateBucketConfiguration, PublicAccessBlockConfiguration, Tag,
    Tagging,
};
pub(crate) use tarmac::aws::s3::client;
use tarmac::aws::s3::s3_err;
use tarmac::crypto::sha256_hex;
use tarmac::error::{Error, Result};

use crate::Arch;

/// The functions, each a binary of the workspace and a parameter of the template.
pub(crate) const FUNCTIONS: [(&str, &str); 4] = [
    ("api", "ApiCodeKey"),
    ("worker", "WorkerCodeKey"),
    ("scheduler", "SchedulerCodeKey"),
    ("oidc", "OidcCodeKey"),
];

/// The workspace root (the directory above this crate's).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("infra/ has a parent")
        .to_path_buf()
}

fn zip_path(function: &str) -> PathBuf {
    workspace_root()
        .join("target/lambda")
        .join(function)
        .join("bootstrap.zip")
}

/// The Cargo profile the zips are built with: `lambda-zip` (whole-program optimisation), unless
/// `TARMAC_LAMBDA_PROFILE` names another. The test suite deploys `lambda-test` zips to the
/// emulator: the same code, without the optimisation that takes most of a cold build.
fn profile() -> String {
    std::env::var("TARMAC_LAMBDA_PROFILE")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "lambda-zip".into())
}

/// `cargo lambda build --profile lambda-zip --output-format zip` for the four functions. x86_64 on an
/// x86_64 Linux host builds with plain cargo; anything else cross-compiles with zig.
pub(crate) fn build(arch: Arch) -> Result<()> {
    let mut cmd = Command::new("cargo");
    let profile = profile();
    cmd.current_dir(workspace_root()).args([
        "lambda",
        "build",
        "--profile",
        &profile,
        "--output-format",
        "zip",
        // The functions are not among the default members (see the workspace's Cargo.toml).
        "--workspace",
    ]);
    for (function, _) in FUNCTIONS {
        cmd.args(["--bin", function]);
    }
    let native = cfg!(all(target_os = "linux", target_arch = "x86_64"));
    match arch {
        Arch::Arm64 => {
            // zig links for aarch64, but the Rust standard library must be there.
            let _ = Command::new("rustup")
                .args(["target", "add", "aarch64-unknown-linux-gnu"])
                .status();
            cmd.arg("--arm64");
        }
        Arch::X86_64 if native => {
            cmd.args(["--x86-64", "--compiler", "cargo"]);
        }
        Arch::X86_64 => {
            cmd.arg("--x86-64");
        }
    }
    eprintln!(
        "Building the functions for {} (profile {profile}) ...",
        arch.as_str()
    );
    let status = cmd.status().map_err(|e| {
        Error::invalid(format!(
            "cannot run `cargo lambda` ({e}); infra/deploy installs it, or: pip install cargo-lambda"
        ))
    })?;
    if !status.success() {
        return Err(Error::internal(format!(
            "cargo lambda build failed ({status})"
        )));
    }
    Ok(())
}

/// `{stack}-{account}-{region}-artifacts`: at most 62 characters for a 24-character stack name.
pub(crate) fn bucket_name(stack: &str, account: &str, region: &str) -> String {
    format!("{stack}-{account}-{region}-artifacts")
}

/// Whether the account's bucket exists. Naming the expected owner, a bucket of that name in
/// someone else's account is an error, never a place to write to.
async fn bucket_exists(s3: &Client, bucket: &str, account: &str) -> Result<bool> {
    let head = s3
        .head_bucket()
        .bucket(bucket)
        .expected_bucket_owner(account)
        .send()
        .await;
    match head {
        Ok(_) => Ok(true),
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(false),
        Err(e) => Err(s3_err("HeadBucket", e)),
    }
}

/// Creates the artifact bucket if it does not exist. Every later call names the expected
/// owner.
pub(crate) async fn ensure_bucket(
    s3: &Client,
    bucket: &str,
    account: &str,
    region: &str,
    stack: &str,
) -> Result<()> {
    if bucket_exists(s3, bucket, account).await? {
        return Ok(());
    }
    // CreateBucket cannot name an owner; it fails if the name is taken, by anyone.
    let mut create = s3.create_bucket().bucket(bucket);
    if region != "us-east-1" {
        create = create.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region))
                .build(),
        );
    }
    create.send().await.map_err(|e| s3_err("CreateBucket", e))?;
    s3.put_public_access_block()
        .bucket(bucket)
        .expected_bucket_owner(account)
        .public_access_block_configuration(
            PublicAccessBlockConfiguration::builder()
                .block_public_acls(true)
                .block_public_policy(true)
                .ignore_public_acls(true)
                .restrict_public_buckets(true)
                .build(),
        )
        .send()
        .await
        .map_err(|e| s3_err("PutPublicAccessBlock", e))?;
    let tag = Tag::builder()
        .key("tarmac:stack")
        .value(stack)
        .build()
        .map_err(|e| Error::internal(format!("bucket tag: {e}")))?;
    s3.put_bucket_tagging()
        .bucket(bucket)
        .expected_bucket_owner(account)
        .tagging(
            Tagging::builder()
                .tag_set(tag)
                .build()
                .map_err(|e| Error::internal(format!("bucket tagging: {e}")))?,
        )
        .send()
        .await
        .map_err(|e| s3_err("PutBucketTagging", e))?;
    eprintln!("Created the artifact bucket {bucket}");
    Ok(())
}

/// Uploads each function's zip as `{function}/{sha256}.zip` (once) and returns the template
/// parameters naming them.
pub(crate) async fn upload(
    s3: &Client,
    bucket: &str,
    account: &str,
) -> Result<Vec<(String, String)>> {
    let mut params = Vec::new();
    for (function, parameter) in FUNCTIONS {
        let path = zip_path(function);
        let bytes = std::fs::read(&path).map_err(|e| {
            Error::invalid(format!(
                "cannot read {} ({e}): build first, or drop --skip-build",
                path.display()
            ))
        })?;
        let key = format!("{function}/{}.zip", sha256_hex(&bytes));
        let exists = s3
            .head_object()
            .bucket(bucket)
            .key(&key)
            .expected_bucket_owner(account)
            .send()
            .await
            .is_ok();
        if !exists {
            s3.put_object()
                .bucket(bucket)
                .key(&key)
                .expected_bucket_owner(account)
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map_err(|e| s3_err("PutObject", e))?;
            eprintln!("Uploaded s3://{bucket}/{key}");
        }
        params.push((parameter.to_string(), key));
    }
    Ok(params)
}

/// Deletes every object version and delete marker in `bucket`; returns how many.
pub(crate) async fn empty_bucket(s3: &Client, bucket: &str, account: &str) -> Result<usize> {
    let mut removed = 0;
    loop {
        let page = s3
            .list_object_versions()
            .bucket(bucket)
            .expected_bucket_owner(account)
            .send()
            .await
            .map_err(|e| s3_err("ListObjectVersions", e))?;
        let versions = page
            .versions()
            .iter()
            .map(|v| (v.key(), v.version_id()))
            .chain(
                page.delete_markers()
                    .iter()
                    .map(|m| (m.key(), m.version_id())),
            );
        let mut any = false;
        for (key, version) in versions {
            let Some(key) = key else { continue };
            s3.delete_object()
                .bucket(bucket)
                .key(key)
                .expected_bucket_owner(account)
                .set_version_id(version.map(String::from))
                .send()
                .await
                .map_err(|e| s3_err("DeleteObject", e))?;
            removed += 1;
            any = true;
        }
        if !any {
            return Ok(removed);
        }
    }
}

/// The current (not deleted) objects in `bucket`.
pub(crate) async fn current_objects(
    s3: &Client,
    bucket: &str,
    account: &str,
) -> Result<Vec<String>> {
    tarmac::aws::s3::list_keys(s3, bucket, "", Some(account)).await
}

/// Empties and deletes the bucket; nothing if it does not exist.
pub(crate) async fn delete_bucket(s3: &Client, bucket: &str, account: &str) -> Result<()> {
    if !bucket_exists(s3, bucket, account).await? {
        return Ok(());
    }
    empty_bucket(s3, bucket, account).await?;
    s3.delete_bucket()
        .bucket(bucket)
        .expected_bucket_owner(account)
        .send()
        .await
        .map_err(|e| s3_err("DeleteBucket", e))?;
    eprintln!("Deleted the bucket {bucket}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_bucket_name_is_valid() {
        let name = bucket_name(&"a".repeat(24), "123456789012", "ap-southeast-2");
        assert!(name.len() <= 63, "{} characters", name.len());
    }
}
