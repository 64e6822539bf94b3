//! The stack resource's parts: tags, replaced only as read; and updates, numbered per stack,
//! ended with their result, listed as the stack's history, their events kept in the log's
//! order.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;

use tarmac::domain::stacks::Tags;
use tarmac::domain::updates::{UpdateKind, UpdateOutcome, UpdateResult};
use tarmac::domain::*;
use tarmac::error::Error;
use tarmac::ports::LogQuery;

use crate::{Backend, claim, claimed, create, lease, stack};

fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(crate) async fn tags_are_replaced_only_as_read_and_go_with_their_stack(b: Backend) {
    let st = stack("tagged");
    assert_eq!(b.stacks.get_stack(&st).await.unwrap(), None);
    assert!(matches!(
        b.stacks
            .replace_tags(&st, &tags(&[("a", "1")]), &Tags::new())
            .await,
        Err(Error::NotFound(_))
    ));
    b.stacks.create_stack(&st).await.unwrap();
    let info = b.stacks.get_stack(&st).await.unwrap().unwrap();
    assert_eq!(
        (info.tags.len(), info.update_version, info.resource_count),
        (0, 0, None)
    );
    assert!(!info.paused && info.active.is_none());

    let first = tags(&[("owner", "ops"), ("ttl", "30")]);
    b.stacks
        .replace_tags(&st, &first, &Tags::new())
        .await
        .unwrap();
    // A writer that read the tags before that change loses, and changes nothing.
    assert!(matches!(
        b.stacks
            .replace_tags(&st, &tags(&[("x", "y")]), &Tags::new())
            .await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(b.stacks.get_stack(&st).await.unwrap().unwrap().tags, first);
    let second = tags(&[("owner", "dev")]);
    b.stacks.replace_tags(&st, &second, &first).await.unwrap();
    b.stacks
        .replace_tags(&st, &Tags::new(), &second)
        .await
        .unwrap();
    b.stacks
        .replace_tags(&st, &second, &Tags::new())
        .await
        .unwrap();

    let other = stack("tagged-too");
    b.stacks.create_stack(&other).await.unwrap();
    let listed: Vec<(String, Tags)> = b
        .stacks
        .list_stacks("org")
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.stack.stack.starts_with("tagged"))
        .map(|s| (s.stack.stack, s.tags))
        .collect();
    assert_eq!(
        listed,
        [
            ("tagged".to_string(), second),
            ("tagged-too".to_string(), Tags::new())
        ]
    );
    b.stacks.delete_stack(&st).await.unwrap();
    assert_eq!(b.stacks.get_stack(&st).await.unwrap(), None);
    assert!(b.stacks.get_stack(&other).await.unwrap().is_some());
}

pub(crate) async fn updates_are_numbered_per_stack_ended_and_listed_newest_first(b: Backend) {
    let st = stack("updated");
    let page = |n: u32| PageRequest {
        page: n,
        page_size: 2,
        ascending: false,
    };
    let mut ids = vec![];
    for (i, result) in [
        UpdateResult::Succeeded,
        UpdateResult::Succeeded,
        UpdateResult::Failed,
    ]
    .into_iter()
    .enumerate()
    {
        let id = create(&b, &st, Operation::Update).await;
        let w = lease("w", 60_000);
        claimed(claim(&b, &st, id, &w).await);
        // Only the running deployment's worker starts its update.
        assert!(matches!(
            b.runs.start_update(id, &w, UpdateKind::Update).await,
            Err(Error::Conflict(_))
        ));
        b.runs.mark_running(id, &w).await.unwrap();
        assert!(matches!(
            b.runs
                .start_update(id, &lease("thief", 1000), UpdateKind::Update)
                .await,
            Err(Error::Conflict(_))
        ));
        let version = b
            .runs
            .start_update(id, &w, UpdateKind::Update)
            .await
            .unwrap();
        assert_eq!(version, i as i64 + 1);
        assert!(matches!(
            b.runs.start_update(id, &w, UpdateKind::Update).await,
            Err(Error::Conflict(_))
        ));
        let d = b
            .deployments
            .get_deployment(&st, id)
            .await
            .unwrap()
            .unwrap();
        let u = d.update.unwrap();
        assert_eq!(
            (u.version, u.kind, u.result),
            (version, UpdateKind::Update, UpdateResult::InProgress)
        );
        assert_eq!(u.ended, None);

        // Events go in the log's order, apart from the step's numbered lines.
        let step = b.runs.start_step(id, &w, "pulumi update").await.unwrap();
        let now = OffsetDateTime::now_utc();
        let entry = |line: &str, event| LogLine {
            step,
            timestamp: now,
            line: line.to_string(),
            event,
        };
        b.runs
            .append_logs(
                id,
                &w,
                &[
                    entry(
                        "",
                        Some(json!({"sequence": 1, "preludeEvent": {"config": {}}})),
                    ),
                    entry("creating\n", None),
                    entry(
                        "",
                        Some(json!({"sequence": 2, "summaryEvent": {"result": "succeeded"}})),
                    ),
                ],
            )
            .await
            .unwrap();
        let stream = b
            .logs
            .read_logs(
                id,
                LogQuery::Stream {
                    after: 0,
                    limit: 100,
                },
            )
            .await
            .unwrap();
        let events: Vec<i64> = stream
            .iter()
            .filter_map(|e| e.event.as_ref())
            .map(|e| e["sequence"].as_i64().unwrap())
            .collect();
        assert_eq!(events, [1, 2]);
        let lines = b
            .logs
            .read_logs(
                id,
                LogQuery::Step {
                    step,
                    offset: 0,
                    count: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(lines.len(), 1, "events are not lines of the step");
        assert_eq!(lines[0].line.as_deref(), Some("creating\n"));

        let outcome = UpdateOutcome {
            result,
            resource_changes: BTreeMap::from([("create".to_string(), 2)]),
            resource_count: Some(10 + i as i64),
        };
        b.runs.finish_update(id, &w, &outcome).await.unwrap();
        b.runs.finish(id, &w, JobStatus::Succeeded).await.unwrap();
        ids.push(id);
    }
    let info = b.stacks.get_stack(&st).await.unwrap().unwrap();
    // The failed third update left the count of the last successful one.
    assert_eq!((info.update_version, info.resource_count), (3, Some(11)));

    let first = b.deployments.list_updates(&st, page(1)).await.unwrap();
    assert_eq!(first.total, 3);
    let versions: Vec<i64> = first
        .items
        .iter()
        .map(|d| d.update.as_ref().unwrap().version)
        .collect();
    assert_eq!(versions, [3, 2]);
    let last = b.deployments.list_updates(&st, page(2)).await.unwrap();
    assert_eq!(last.items.len(), 1);
    assert_eq!(last.items[0].id, ids[0]);
    let u = last.items[0].update.as_ref().unwrap();
    assert_eq!(u.result, UpdateResult::Succeeded);
    assert_eq!(u.resource_changes["create"], 2);
    assert!(u.ended.is_some());

    let second = b
        .deployments
        .update_by_version(&st, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.id, ids[1]);
    assert!(
        b.deployments
            .update_by_version(&st, 4)
            .await
            .unwrap()
            .is_none()
    );
    // A deployment that never reached its engine step made no update.
    create(&b, &st, Operation::Update).await;
    assert_eq!(
        b.deployments
            .list_updates(&st, page(1))
            .await
            .unwrap()
            .total,
        3
    );
    let other = stack("never-updated");
    assert_eq!(
        b.deployments
            .list_updates(&other, page(1))
            .await
            .unwrap()
            .total,
        0
    );
    // Updates go with their stack.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let queued = b
        .deployments
        .list_stack_deployments(&st, page(1))
        .await
        .unwrap();
    b.deployments
        .cancel_deployment(&st, queued.items[0].id)
        .await
        .unwrap();
    b.stacks.delete_stack(&st).await.unwrap();
    assert_eq!(
        b.deployments
            .list_updates(&st, page(1))
            .await
            .unwrap()
            .total,
        0
    );
    assert!(
        b.deployments
            .update_by_version(&st, 1)
            .await
            .unwrap()
            .is_none()
    );
}
