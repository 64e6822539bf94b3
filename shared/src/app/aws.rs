//! The AWS mode's wiring (the `aws` feature): DynamoDB, SQS, S3 and KMS behind the ports, the
//! `oidc` function's exchanger, and KMS key rotation.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::{App, NoCredentials};
use crate::aws::{AwsConfig, DynamoStore, KmsSigner, S3StateStore, SqsQueue, StsExchange};
use crate::deps::Deps;
use crate::error::Result;
use crate::oidc::{CredentialBroker, Exchanger, Issuer, NoSigner};
use crate::ports::Queue;
use crate::runner::{Runner, RunnerConfig};
use crate::sandbox::Sandbox;

impl App {
    /// Reads (or creates) the secrets data key through KMS.
    pub(super) async fn aws(cfg: &AwsConfig, sdk: &aws_config::SdkConfig) -> Result<Self> {
        let dynamo = aws_sdk_dynamodb::Client::new(sdk);
        let cipher = crate::aws::kms::load_cipher(
            &aws_sdk_kms::Client::new(sdk),
            &cfg.kms_key_id,
            &dynamo,
            &cfg.table,
        )
        .await?;
        let mut store = DynamoStore::new(dynamo, &cfg.table);
        if let Some(tokens) = &cfg.token_table {
            store = store.with_token_table(tokens);
        }
        let store = Arc::new(store);
        let state_store = cfg.state_bucket.as_deref().map(|bucket| {
            Arc::new(S3StateStore::new(crate::aws::s3::client(sdk), bucket))
                as Arc<dyn crate::ports::StateStore>
        });
        // The API serves the issuer's documents from the keyring; only the `oidc` function signs.
        let issuer = cfg
            .oidc_issuer
            .as_deref()
            .map(|url| Arc::new(Issuer::new(url, store.clone(), Arc::new(NoSigner))));
        let credentials: Arc<dyn CredentialBroker> = match cfg.oidc_function.as_deref() {
            Some(f) => Arc::new(crate::aws::oidc::LambdaBroker::new(
                aws_sdk_lambda::Client::new(sdk),
                f,
            )),
            None => Arc::new(NoCredentials),
        };
        let sqs = Arc::new(SqsQueue::new(
            aws_sdk_sqs::Client::new(sdk),
            &cfg.queue_url,
            cfg.queue_groups_per_org,
        ));
        // No run sees another's directory or another stack's state. Engines are found without
        // running them: a cold start has no time to spare.
        let found: Vec<std::path::PathBuf> = ["git", "terraform", "tofu", "pulumi"]
            .iter()
            .filter_map(|name| crate::runner::engine::which(name, &cfg.child_path))
            .collect();
        let sandbox = Sandbox::new(
            &cfg.sandbox,
            &cfg.child_path,
            &found,
            &[
                cfg.work_dir.clone(),
                cfg.state_dir.clone(),
                cfg.cache_dir.clone(),
            ],
        )?;
        let deps = Arc::new(Deps {
            stacks: store.clone(),
            orgs: store.clone(),
            tokens: store.clone(),
            pools: store.clone(),
            idempotency: store.clone(),
            audit: store.clone(),
            bulk: store.clone(),
            deployments: store.clone(),
            logs: store.clone(),
            runs: store.clone(),
            schedules: store.clone(),
            drift: store.clone(),
            keys: store.clone(),
            hooks: store.clone(),
            outbox: store,
            queue: Some(sqs.clone() as Arc<dyn Queue>),
            cipher,
            public_url: cfg.public_url.clone(),
            local_repos: if cfg.allow_local_repos {
                crate::domain::spec::LocalRepos::Any
            } else {
                crate::domain::spec::LocalRepos::Denied
            },
            agent_state: state_store
                .clone()
                .unwrap_or_else(|| Arc::new(super::DirStateStore::new(cfg.state_dir.clone()))),
            state_dir: cfg.state_dir.clone(),
            state_store,
            bootstrap_sha256: cfg.bootstrap_sha256.clone(),
            // Lambda concurrency, not Tarmac, bounds parallel runs in AWS mode.
            concurrency: 0,
            issuer,
            credentials,
            run_changes: None,
            work_signal: None,
            agent_lease: cfg.lease_ttl,
            tools: vec![],
            // The workers' caches are theirs, in their own /tmp.
            run_cache: None,
        });
        let runner = Arc::new(Runner::new(
            Arc::clone(&deps),
            RunnerConfig {
                work_dir: cfg.work_dir.clone(),
                path_env: cfg.child_path.clone(),
                lang: "C.UTF-8".into(),
                default_timeout: cfg.deployment_timeout,
                stop_grace: cfg.stop_grace,
                heartbeat_every: (cfg.lease_ttl / 6).min(Duration::from_secs(10)),
                sandbox: Arc::new(sandbox),
                // Best-effort across warm invocations of one execution environment.
                cache: Arc::new(crate::runner::cache::Cache::open(
                    &cfg.cache_dir,
                    cfg.cache_max_bytes,
                )?),
                secrets_with_server_credentials: cfg.secrets_with_server_credentials,
            },
        ));
        Ok(Self {
            deps,
            runner,
            work_signal: Arc::new(Notify::new()),
            outbox_signal: Arc::new(Notify::new()),
            sqs: Some(sqs),
        })
    }
}

/// The `oidc` function's exchanger: the keyring and leases in DynamoDB, KMS to sign (registering
/// `kms_key_id` on a cold start that finds the keyring empty), STS to exchange. It loads no
/// secrets data key: its role may not decrypt one.
pub async fn aws_oidc_exchanger(
    table: &str,
    issuer_url: &str,
    kms_key_id: Option<&str>,
    sdk: &aws_config::SdkConfig,
) -> Result<Exchanger> {
    let store = Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), table));
    let signer = KmsSigner::new(aws_sdk_kms::Client::new(sdk));
    let issuer = Arc::new(Issuer::new(
        issuer_url,
        store.clone(),
        Arc::new(signer.clone()),
    ));
    if let Some(key_id) = kms_key_id {
        issuer.ensure_key(async || signer.key(key_id).await).await?;
    }
    Ok(Exchanger::new(
        store,
        issuer,
        Arc::new(StsExchange::new(Some(aws_sdk_sts::Client::new(sdk)))),
    ))
}

/// `tarmac oidc rotate-key --kms-key-id`: makes a KMS key the signing key of the AWS
/// deployment whose table is `table`.
pub async fn rotate_kms_key(table: &str, key_id: &str) -> Result<String> {
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let store = Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), table));
    let signer = KmsSigner::new(aws_sdk_kms::Client::new(&sdk));
    let key = signer.key(key_id).await?;
    Issuer::new("", store, Arc::new(signer)).rotate(key).await
}
