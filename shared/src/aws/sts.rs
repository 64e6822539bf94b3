//! The `CloudExchange` adapter for AWS: STS `AssumeRoleWithWebIdentity`.

use async_trait::async_trait;
use aws_sdk_sts::error::ProvideErrorMetadata;
use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use crate::ports::{AssumeRoleRequest, AssumedRole, AwsCredentials, CloudExchange};

/// Exchanges tokens at STS. `AssumeRoleWithWebIdentity` is an unsigned call, so the server
/// needs no AWS credentials of its own (only a region and, for an emulator,
/// `AWS_ENDPOINT_URL`); the client is built on first use when not given.
#[derive(Debug, Default)]
pub struct StsExchange {
    client: OnceCell<aws_sdk_sts::Client>,
}

impl StsExchange {
    pub fn new(client: Option<aws_sdk_sts::Client>) -> Self {
        Self {
            client: OnceCell::new_with(client),
        }
    }

    async fn client(&self) -> &aws_sdk_sts::Client {
        self.client
            .get_or_init(|| async {
                let region = aws_config::meta::region::RegionProviderChain::default_provider()
                    .or_else("us-east-1");
                let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(region)
                    .load()
                    .await;
                aws_sdk_sts::Client::new(&sdk)
            })
            .await
    }
}

#[async_trait]
impl CloudExchange for StsExchange {
    async fn assume_role(&self, r: &AssumeRoleRequest) -> Result<AssumedRole> {
        let mut call = self
            .client()
            .await
            .assume_role_with_web_identity()
            .role_arn(&r.role_arn)
            .role_session_name(&r.session_name)
            .web_identity_token(&r.web_identity_token);
        if let Some(duration) = r.duration {
            call = call.duration_seconds(duration.as_secs() as i32);
        }
        for arn in &r.policy_arns {
            call = call.policy_arns(
                aws_sdk_sts::types::PolicyDescriptorType::builder()
                    .arn(arn)
                    .build(),
            );
        }
        let out = call.send().await.map_err(|e| {
            // A refusal is the provider's answer, for the user; anything else is ours.
            match e.as_service_error() {
                Some(se) => Error::Upstream(format!(
                    "AWS STS refused AssumeRoleWithWebIdentity for {}: {}: {}",
                    r.role_arn,
                    se.code().unwrap_or("error"),
                    se.message().unwrap_or("no message")
                )),
                None => super::sdk_error("STS AssumeRoleWithWebIdentity", e),
            }
        })?;
        let c = out
            .credentials
            .ok_or_else(|| Error::Upstream("AWS STS returned no credentials".into()))?;
        let arn = out
            .assumed_role_user
            .map(|u| u.arn)
            .unwrap_or_else(|| r.role_arn.clone());
        Ok(AssumedRole {
            credentials: AwsCredentials {
                access_key_id: c.access_key_id,
                secret_access_key: c.secret_access_key,
                session_token: c.session_token,
            },
            arn,
            expiration: c.expiration.to_string(),
        })
    }
}
