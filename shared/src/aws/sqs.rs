//! The SQS adapter of the `Queue` port: a FIFO queue whose message groups share the workers
//! fairly between orgs.
//!
//! Each org's deployments spread over a fixed number of message groups, `{org}/{shard}`, a
//! stack always in the same shard. SQS keeps one message of a group in flight at a time and
//! delivers a stack's deployments in order; and since an org has no more groups than its
//! share, once its groups are all in flight the next free worker takes another org's message,
//! however many the first has queued. The claim's transaction adds each org's own limit.

use async_trait::async_trait;
use aws_sdk_sqs::Client;

use crate::error::Result;
use crate::ports::{Queue, QueueMessage};

pub struct SqsQueue {
    client: Client,
    url: String,
    groups_per_org: u16,
}

/// The message group of a deployment: its org and the shard of its stack, one of
/// `groups_per_org`. An org name has at most 100 characters, well within SQS's 128.
pub fn group_id(m: &QueueMessage, groups_per_org: u16) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{}/{}", m.project, m.stack).as_bytes());
    let hash = u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 has 32 bytes"));
    format!("{}/{}", m.org, hash % u64::from(groups_per_org.max(1)))
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>, groups_per_org: u16) -> Self {
        Self {
            client,
            url: url.into(),
            groups_per_org,
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
            .message_group_id(group_id(message, self.groups_per_org))
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

    fn message(org: &str, stack: &str) -> QueueMessage {
        QueueMessage {
            deployment_id: uuid::Uuid::new_v4(),
            org: org.into(),
            project: "p".into(),
            stack: stack.into(),
        }
    }

    #[test]
    fn an_orgs_stacks_share_its_groups_and_a_stack_keeps_one() {
        let groups: std::collections::HashSet<String> = (0..500)
            .map(|i| group_id(&message("acme", &format!("s{i}")), 8))
            .collect();
        // 500 stacks fill all eight shards and no more.
        assert_eq!(groups.len(), 8);
        assert!(groups.iter().all(|g| g.starts_with("acme/")));
        let dev = group_id(&message("acme", "dev"), 8);
        assert_eq!(dev, group_id(&message("acme", "dev"), 8));
        assert_eq!(group_id(&message("acme", "dev"), 1), "acme/0");
        assert!(group_id(&message(&"o".repeat(100), "dev"), 1000).len() <= 128);
    }
}
