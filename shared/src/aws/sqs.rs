//! The SQS adapter of the `Queue` port: a FIFO queue with one message group per stack, so a
//! stack's deployments arrive in order while stacks proceed in parallel.

use async_trait::async_trait;
use aws_sdk_sqs::Client;

use crate::error::Result;
use crate::ports::{Queue, QueueMessage};

pub struct SqsQueue {
    client: Client,
    url: String,
}

/// SQS allows 128 characters in a group id; longer stack paths are hashed.
pub fn group_id(m: &QueueMessage) -> String {
    let path = format!("{}/{}/{}", m.org, m.project, m.stack);
    if path.len() <= 128 {
        path
    } else {
        crate::crypto::sha256_hex(path.as_bytes())
    }
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    /// Keeps a message invisible for `secs` more seconds: the worker's heartbeat while it runs.
    pub async fn extend_visibility(&self, receipt_handle: &str, secs: i32) -> Result<()> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(secs)
            .send()
            .await
            .map_err(|e| super::sdk_error("SQS ChangeMessageVisibility", e))?;
        Ok(())
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, message: &QueueMessage, attempt: u64) -> Result<()> {
        let dedup = match attempt {
            0 => message.deployment_id.to_string(),
            n => format!("{}-{n}", message.deployment_id),
        };
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(serde_json::to_string(message)?)
            .message_group_id(group_id(message))
            // Within SQS's five-minute window a second send with one id is dropped; the
            // conditional claim makes any duplicate that does arrive harmless.
            .message_deduplication_id(dedup)
            .send()
            .await
            .map_err(|e| super::sdk_error("SQS SendMessage", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_fit_sqs_limits() {
        let m = |stack: &str| QueueMessage {
            deployment_id: uuid::Uuid::nil(),
            org: "o".into(),
            project: "p".into(),
            stack: stack.into(),
        };
        assert_eq!(group_id(&m("dev")), "o/p/dev");
        let long = group_id(&m(&"x".repeat(200)));
        assert_eq!(long.len(), 64);
        assert_ne!(long, group_id(&m(&"y".repeat(200))));
    }
}
