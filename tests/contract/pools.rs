//! Agent pools: stored with a token hash, listed, renamed, deleted with their queue; each pool's
//! deployments are claimed only from that pool, and the built-in queue never takes them.

use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use tarmac::domain::pools::{AgentInfo, AgentPool, ClaimQueue, POOL_DELETED_REASON};
use tarmac::domain::spec::{DeploymentConfig, SourcePolicy};
use tarmac::domain::*;
use tarmac::ports::*;

use crate::{Backend, lease, stack, status};

fn pool(org: &str, name: &str) -> AgentPool {
    AgentPool {
        id: Uuid::new_v4().to_string(),
        org: org.into(),
        name: name.into(),
        description: String::new(),
        // Whole microseconds, as both stores keep them.
        created: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
    }
}

fn on_pool(st: &StackRef, pool: Option<&str>) -> NewDeployment {
    let mut settings = json!({"sourceContext": {"git": {"repoUrl": "https://example.com/r.git"}}});
    if let Some(p) = pool {
        settings["agentPoolID"] = json!(p);
    }
    NewDeployment {
        id: Uuid::new_v4(),
        stack: st.clone(),
        operation: Operation::Update,
        config: DeploymentConfig::parse(settings, SourcePolicy::Stored).unwrap(),
        initiator: "api".into(),
        requested_by: "test".into(),
        approval: None,
    }
}

pub(crate) async fn pools_are_stored_by_token_hash_and_scoped_to_their_org(b: Backend) {
    let p = pool("org", "private");
    b.pools.create_pool(&p, "hash-1").await.unwrap();
    let other = pool("other", "theirs");
    b.pools.create_pool(&other, "hash-2").await.unwrap();
    assert_eq!(
        b.pools.find_pool_by_token("hash-1").await.unwrap(),
        Some(p.clone())
    );
    assert_eq!(b.pools.find_pool_by_token("nope").await.unwrap(), None);
    assert_eq!(b.pools.list_pools("org").await.unwrap(), vec![p.clone()]);
    assert_eq!(b.pools.get_pool("org", &other.id).await.unwrap(), None);

    let renamed = AgentPool {
        name: "renamed".into(),
        description: "d".into(),
        ..p.clone()
    };
    b.pools.update_pool(&renamed).await.unwrap();
    assert_eq!(
        b.pools.get_pool("org", &p.id).await.unwrap(),
        Some(renamed.clone())
    );
    let missing = AgentPool {
        id: Uuid::new_v4().to_string(),
        ..renamed.clone()
    };
    assert!(matches!(
        b.pools.update_pool(&missing).await,
        Err(tarmac::Error::NotFound(_))
    ));

    let seen = OffsetDateTime::from_unix_timestamp(1_700_000_100).unwrap();
    let agent = AgentInfo {
        id: "a1".into(),
        version: "1".into(),
        platform: "linux/x86_64".into(),
        hostname: "h".into(),
        ip: String::new(),
        pid: "42".into(),
        last_seen: seen,
    };
    b.pools.touch_agent(&renamed, &agent).await.unwrap();
    b.pools.touch_agent(&renamed, &agent).await.unwrap();
    assert_eq!(
        b.pools.list_agents(&renamed).await.unwrap(),
        vec![agent.clone()]
    );
    // A heartbeat moves a known agent's lastSeen, and records no unknown one.
    let later = OffsetDateTime::from_unix_timestamp(1_700_000_200).unwrap();
    b.pools.agent_seen(&renamed, "a1", later).await.unwrap();
    b.pools
        .agent_seen(&renamed, "stranger", later)
        .await
        .unwrap();
    let agents = b.pools.list_agents(&renamed).await.unwrap();
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!(agents[0].last_seen, later);

    let gone = b.pools.delete_pool("org", &p.id, false).await.unwrap();
    assert!(gone.failed.is_empty());
    assert_eq!(b.pools.find_pool_by_token("hash-1").await.unwrap(), None);
    assert!(matches!(
        b.pools.delete_pool("org", &p.id, true).await,
        Err(tarmac::Error::NotFound(_))
    ));
}

pub(crate) async fn a_pools_deployments_are_claimed_only_from_that_pool(b: Backend) {
    let (p, q) = (pool("org", "p"), pool("org", "q"));
    b.pools.create_pool(&p, "hp").await.unwrap();
    b.pools.create_pool(&q, "hq").await.unwrap();
    let (s1, s2) = (stack("pool-1"), stack("pool-2"));
    let on_p = b
        .deployments
        .create_deployment(on_pool(&s1, Some(&p.id)))
        .await
        .unwrap()
        .id;
    let w = lease("w", 60_000);
    assert!(
        b.runs
            .claim_next(&w, ClaimQueue::Pool(&q.id))
            .await
            .unwrap()
            .is_none()
    );
    let claimed = b
        .runs
        .claim_next(&w, ClaimQueue::Pool(&p.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.deployment.id, on_p);
    assert_eq!(
        claimed.deployment.config.spec().agent_pool.as_deref(),
        Some(p.id.as_str())
    );
    assert!(
        b.runs
            .claim_next(&w, ClaimQueue::Pool(&p.id))
            .await
            .unwrap()
            .is_none()
    );
    // The stack's run slot is held: the pool's next deployment of it waits.
    b.deployments
        .create_deployment(on_pool(&s1, Some(&p.id)))
        .await
        .unwrap();
    assert!(
        b.runs
            .claim_next(&w, ClaimQueue::Pool(&p.id))
            .await
            .unwrap()
            .is_none()
    );
    // Another stack's is taken meanwhile.
    let other = b
        .deployments
        .create_deployment(on_pool(&s2, Some(&p.id)))
        .await
        .unwrap()
        .id;
    let c = b
        .runs
        .claim_next(&w, ClaimQueue::Pool(&p.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.deployment.id, other);
}

pub(crate) async fn deleting_a_pool_with_queued_deployments_needs_force(b: Backend) {
    let p = pool("org", "busy");
    b.pools.create_pool(&p, "hb").await.unwrap();
    let st = stack("pool-busy");
    let queued = b
        .deployments
        .create_deployment(on_pool(&st, Some(&p.id)))
        .await
        .unwrap()
        .id;
    assert!(matches!(
        b.pools.delete_pool("org", &p.id, false).await,
        Err(tarmac::Error::Conflict(_))
    ));
    assert!(b.pools.get_pool("org", &p.id).await.unwrap().is_some());
    let deleted = b.pools.delete_pool("org", &p.id, true).await.unwrap();
    assert_eq!(deleted.failed, vec![(st.clone(), queued)]);
    assert_eq!(status(&b, &st, queued).await, JobStatus::Failed);
    let log = b
        .logs
        .read_logs(
            queued,
            LogQuery::Stream {
                after: 0,
                limit: 100,
            },
        )
        .await
        .unwrap();
    assert!(
        log.iter().any(|e| e
            .line
            .as_deref()
            .is_some_and(|l| l.contains(POOL_DELETED_REASON))),
        "{log:?}"
    );
    assert_eq!(b.pools.find_pool_by_token("hb").await.unwrap(), None);
}

/// The embedded queue: the built-in workers' `claim_next` never takes a pool's deployment, and
/// one run per stack holds across the two.
#[tokio::test]
async fn sqlite_built_in_workers_never_take_a_pools_deployments() {
    let b = crate::sqlite().await;
    let p = pool("org", "p");
    b.pools.create_pool(&p, "hp").await.unwrap();
    let st = stack("mixed");
    let on_p = b
        .deployments
        .create_deployment(on_pool(&st, Some(&p.id)))
        .await
        .unwrap()
        .id;
    let built_in = b
        .deployments
        .create_deployment(on_pool(&st, None))
        .await
        .unwrap()
        .id;
    let w = lease("w", 60_000);
    // The stack's first deployment is the pool's: the built-in one waits behind it.
    assert!(
        b.runs
            .claim_next(&w, ClaimQueue::BuiltIn)
            .await
            .unwrap()
            .is_none()
    );
    let c = b
        .runs
        .claim_next(&w, ClaimQueue::Pool(&p.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.deployment.id, on_p);
    b.runs.mark_running(on_p, &w).await.unwrap();
    b.runs.finish(on_p, &w, JobStatus::Succeeded).await.unwrap();
    let c = b
        .runs
        .claim_next(&w, ClaimQueue::BuiltIn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.deployment.id, built_in);
}
