//! AWS mode's wiring: `Deps` over DynamoDB, SQS and KMS, built once per cold start.

use std::sync::Arc;

use crate::aws::config::AwsConfig;
use crate::aws::oidc::LambdaBroker;
use crate::aws::{DynamoStore, S3StateStore, SqsQueue, kms};
use crate::deps::Deps;
use crate::error::Result;
use crate::oidc::{CredentialBroker, Issuer};
use crate::runner::{Runner, RunnerConfig};

/// Everything the Lambda handlers share.
pub struct AwsApp {
    pub cfg: AwsConfig,
    pub deps: Arc<Deps>,
    pub runner: Arc<Runner>,
    pub queue: Arc<SqsQueue>,
}

impl AwsApp {
    /// Builds the clients and ports. Reads (or creates) the secrets data key through KMS.
    pub async fn build(cfg: AwsConfig, sdk: &aws_config::SdkConfig) -> Result<Self> {
        let dynamo = aws_sdk_dynamodb::Client::new(sdk);
        let cipher = kms::load_cipher(
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
            .map(|url| Arc::new(Issuer::new(url, store.clone(), None, None)));
        let credentials = cfg.oidc_function.as_deref().map(|f| {
            Arc::new(LambdaBroker::new(aws_sdk_lambda::Client::new(sdk), f))
                as Arc<dyn CredentialBroker>
        });
        let queue = Arc::new(SqsQueue::new(aws_sdk_sqs::Client::new(sdk), &cfg.queue_url));
        let deps = Arc::new(Deps {
            stacks: store.clone(),
            orgs: store.clone(),
            tokens: store.clone(),
            deployments: store.clone(),
            logs: store.clone(),
            runs: store.clone(),
            schedules: store.clone(),
            drift: store.clone(),
            queue: Some(queue.clone()),
            cipher: cipher.clone(),
            public_url: cfg.public_url.clone(),
            allow_local_repos: cfg.allow_local_repos,
            state_dir: None,
            state_store,
            bootstrap_sha256: cfg.bootstrap_sha256.clone(),
            // Lambda concurrency, not Tarmac, bounds parallel runs in AWS mode.
            concurrency: 0,
            issuer,
            credentials,
            hooks: Some(store.clone()),
            outbox: Some(store.clone()),
        });
        let runner = Arc::new(Runner::new(
            Arc::clone(&deps),
            RunnerConfig {
                work_dir: cfg.work_dir.clone(),
                state_dir: cfg.state_dir.clone(),
                path_env: cfg.child_path.clone(),
                lang: "C.UTF-8".into(),
                default_timeout: cfg.deployment_timeout,
                stop_grace: cfg.stop_grace,
                heartbeat_every: (cfg.lease_ttl / 6).min(std::time::Duration::from_secs(10)),
                allow_local_repos: cfg.allow_local_repos,
            },
        ));
        Ok(Self {
            cfg,
            deps,
            runner,
            queue,
        })
    }
}
