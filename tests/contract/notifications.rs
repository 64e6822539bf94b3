//! Webhooks and the outbox.

use std::time::Duration;

use time::OffsetDateTime;

use tarmac::error::Error;
use tarmac::ports::*;

use crate::{Backend, stack};

fn hook(name: &str) -> tarmac::webhooks::Hook {
    tarmac::webhooks::Hook {
        name: name.into(),
        display_name: format!("hook {name}"),
        payload_url: "https://example.com/h".into(),
        secret: None,
        active: true,
        format: tarmac::webhooks::Format::Raw,
        filters: vec![],
        groups: vec![],
    }
}

pub(crate) async fn hooks_are_scoped_named_once_and_go_with_their_stack(b: Backend) {
    use tarmac::webhooks::HookScope;
    let st = stack("hooked");
    b.stacks.create_stack(&st).await.unwrap();
    let org = HookScope {
        org: "org".into(),
        stack: None,
    };
    let own = HookScope {
        org: "org".into(),
        stack: Some(st.clone()),
    };
    let other = HookScope {
        org: "org".into(),
        stack: Some(stack("other")),
    };
    b.hooks.create_hook(&org, &hook("a")).await.unwrap();
    b.hooks.create_hook(&own, &hook("a")).await.unwrap();
    b.hooks.create_hook(&other, &hook("b")).await.unwrap();
    assert!(matches!(
        b.hooks.create_hook(&org, &hook("a")).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(b.hooks.list_hooks(&org).await.unwrap(), vec![hook("a")]);
    let mut changed = hook("a");
    changed.active = false;
    b.hooks.update_hook(&own, &changed).await.unwrap();
    assert_eq!(
        b.hooks.get_hook(&own, "a").await.unwrap(),
        Some(changed.clone())
    );
    assert!(matches!(
        b.hooks.update_hook(&own, &hook("zz")).await,
        Err(Error::NotFound(_))
    ));
    let mut heard: Vec<(String, bool)> = b
        .hooks
        .hooks_for_stack(&st)
        .await
        .unwrap()
        .into_iter()
        .map(|(scope, h)| (scope.key(), h.active))
        .collect();
    heard.sort();
    assert_eq!(
        heard,
        [
            ("org/org".to_string(), true),
            ("stack/org/proj/hooked".to_string(), false)
        ]
    );
    b.hooks.delete_hook(&org, "a").await.unwrap();
    assert!(matches!(
        b.hooks.delete_hook(&org, "a").await,
        Err(Error::NotFound(_))
    ));
    b.stacks.delete_stack(&st).await.unwrap();
    assert_eq!(
        b.hooks.get_hook(&own, "a").await.unwrap(),
        None,
        "gone with the stack"
    );
    assert_eq!(b.hooks.list_hooks(&other).await.unwrap().len(), 1);
}

pub(crate) async fn the_outbox_hands_each_due_message_to_one_dispatcher_and_logs_attempts(
    b: Backend,
) {
    let st = stack("events");
    b.stacks.create_stack(&st).await.unwrap();
    // Stores keep microseconds.
    use tarmac::domain::time_fmt::{from_micros, to_micros};
    let now = from_micros(to_micros(OffsetDateTime::now_utc()));
    let msg = |id: &str| OutboxMessage {
        id: id.into(),
        org: "org".into(),
        target: "hook:org/org/a".into(),
        kind: "deployment".into(),
        event: "deployment_started".into(),
        body: format!("{{\"n\":\"{id}\"}}"),
        created: now - Duration::from_secs(1),
    };
    b.outbox
        .enqueue(&[msg("m1"), msg("m2")], true)
        .await
        .unwrap();
    b.outbox.enqueue(&[msg("ping")], false).await.unwrap();
    let lease = Duration::from_secs(60);
    let mut first: Vec<String> = b
        .outbox
        .claim_due(now, 10, lease)
        .await
        .unwrap()
        .into_iter()
        .map(|(m, n)| format!("{}:{n}", m.id))
        .collect();
    first.sort();
    assert_eq!(
        first,
        ["m1:0", "m2:0"],
        "the not-due ping is not handed out"
    );
    assert!(
        b.outbox.claim_due(now, 10, lease).await.unwrap().is_empty(),
        "claimed once"
    );

    let attempt = |code: i64, at: OffsetDateTime| Attempt {
        timestamp: at,
        duration_ms: 5,
        request_url: "https://example.com/h".into(),
        request_headers: "Pulumi-Webhook-ID: m1\r\n".into(),
        response_code: code,
        response_headers: String::new(),
        response_body: "x".into(),
    };
    // A failure, due again at once; then a success, done.
    b.outbox
        .record_attempt("m1", &attempt(500, now), Some(now))
        .await
        .unwrap();
    let again = b
        .outbox
        .claim_due(now + Duration::from_millis(1), 10, lease)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].0.id.as_str(), again[0].1), ("m1", 1));
    b.outbox
        .record_attempt("m1", &attempt(200, now + Duration::from_secs(1)), None)
        .await
        .unwrap();
    assert!(
        b.outbox
            .claim_due(now + Duration::from_secs(600), 10, lease)
            .await
            .unwrap()
            .iter()
            .all(|(m, _)| m.id != "m1")
    );
    let log = b.outbox.attempts("hook:org/org/a", 10).await.unwrap();
    let seen: Vec<(String, i64, u32)> = log
        .iter()
        .map(|(m, a, n)| (m.id.clone(), a.response_code, *n))
        .collect();
    assert_eq!(
        seen,
        [("m1".to_string(), 200, 2), ("m1".to_string(), 500, 1)]
    );
    assert_eq!(log[0].0, msg("m1"));
    assert_eq!(
        b.outbox.message("m1").await.unwrap().map(|(_, n)| n),
        Some(2)
    );
    assert_eq!(b.outbox.message("nope").await.unwrap(), None);
    // A dispatcher that died: its claim runs out and the message comes back.
    b.outbox.finish("m2").await.unwrap();
    assert!(
        b.outbox
            .claim_due(now + Duration::from_secs(600), 10, lease)
            .await
            .unwrap()
            .is_empty()
    );
    b.outbox.reschedule("m2", Some(now)).await.unwrap();
    assert_eq!(b.outbox.claim_due(now, 10, lease).await.unwrap().len(), 1);
    // Retention: done messages older than the cut go (SQLite; DynamoDB's TTL does it there),
    // messages still due never do.
    let pruned = b
        .outbox
        .prune_done(now + Duration::from_secs(1))
        .await
        .unwrap();
    if b.expires_by_ttl {
        assert_eq!(pruned, 0);
    } else {
        assert_eq!(pruned, 2, "m1 and the ping, both done");
        assert_eq!(b.outbox.message("m1").await.unwrap(), None);
        assert!(
            b.outbox
                .attempts("hook:org/org/a", 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            b.outbox.message("m2").await.unwrap().is_some(),
            "m2 is due again"
        );
    }
}
