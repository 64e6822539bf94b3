//! Fresh AWS resources on the local emulator that `tests/run.sh` starts (`AWS_ENDPOINT_URL`):
//! what `infra/template.yaml` deploys for one Tarmac, made per test so tests share nothing.

use aws_sdk_sqs::types::QueueAttributeName;

/// A table and a token table, a FIFO queue with its dead-letter queue, and a KMS key.
#[allow(dead_code)]
pub(crate) struct Resources {
    pub sdk: aws_config::SdkConfig,
    pub table: String,
    pub token_table: String,
    pub queue_url: String,
    pub key_id: String,
}

/// The SDK's configuration for the emulator.
pub(crate) async fn sdk() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// New resources; the queue's visibility timeout is `queue_visibility` seconds.
pub(crate) async fn resources(queue_visibility: &str) -> Resources {
    let sdk = sdk().await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let table = format!("tarmac-{suffix}");
    let token_table = format!("tarmac-{suffix}-tokens");
    for t in [&table, &token_table] {
        tarmac::aws::dynamo::create_table(&dynamo, t).await.unwrap();
    }
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dlq = sqs
        .create_queue()
        .queue_name(format!("tarmac-dlq-{suffix}.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("tarmac-{suffix}.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::ContentBasedDeduplication, "false")
        .attributes(QueueAttributeName::VisibilityTimeout, queue_visibility)
        .attributes(
            QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"5"}}"#),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let key_id = aws_sdk_kms::Client::new(&sdk)
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id;
    Resources {
        sdk,
        table,
        token_table,
        queue_url,
        key_id,
    }
}

impl Resources {
    /// The functions' configuration over these resources, as their environment would give it;
    /// `vars` add to or override it.
    pub(crate) fn config(&self, vars: &[(&str, &str)]) -> tarmac::aws::AwsConfig {
        let base = [
            ("TARMAC_TABLE", self.table.as_str()),
            ("TARMAC_TOKEN_TABLE", self.token_table.as_str()),
            ("TARMAC_QUEUE_URL", self.queue_url.as_str()),
            ("TARMAC_KMS_KEY_ID", self.key_id.as_str()),
        ];
        tarmac::aws::AwsConfig::from_lookup(|k| {
            vars.iter()
                .chain(base.iter())
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap()
    }
}
