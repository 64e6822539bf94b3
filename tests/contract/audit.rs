//! The audit log: appended, read newest first by org and time, paged.

use time::OffsetDateTime;
use uuid::Uuid;

use tarmac::ports::*;

use crate::Backend;

fn event(org: &str, at: i64, path: &str) -> AuditEvent {
    AuditEvent {
        id: Uuid::new_v4(),
        org: org.into(),
        timestamp: OffsetDateTime::from_unix_timestamp(at).unwrap(),
        token_id: "0123456789abcdef01234567".into(),
        token_name: "ci".into(),
        admin: false,
        method: "POST".into(),
        route: "/api/stacks/{org}/{project}/{stack}/deployments".into(),
        path: path.into(),
        status: 202,
        source_ip: "127.0.0.1".into(),
        user_agent: "test".into(),
    }
}

pub(crate) async fn the_audit_log_reads_newest_first_by_org_and_time_in_pages(b: Backend) {
    let t0 = 1_800_000_000;
    let events: Vec<AuditEvent> = (0..5)
        .map(|i| event("org", t0 + i, &format!("/p{i}")))
        .collect();
    for e in &events {
        b.audit.append(e).await.unwrap();
    }
    b.audit
        .append(&event("other", t0 + 2, "/theirs"))
        .await
        .unwrap();
    let at = |s: i64| OffsetDateTime::from_unix_timestamp(s).unwrap();

    // Everything, two at a time, newest first; another org's never.
    let mut seen = vec![];
    let mut cursor = None;
    loop {
        let (page, next) = b
            .audit
            .events("org", at(t0), at(t0 + 100), cursor.as_deref(), 2)
            .await
            .unwrap();
        assert!(page.len() <= 2);
        seen.extend(page);
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let paths: Vec<&str> = seen.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["/p4", "/p3", "/p2", "/p1", "/p0"]);
    assert_eq!(seen[0], events[4]);
    // A window: from t0+1 to before t0+3.
    let (page, next) = b
        .audit
        .events("org", at(t0 + 1), at(t0 + 3), None, 10)
        .await
        .unwrap();
    let paths: Vec<&str> = page.iter().map(|e| e.path.as_str()).collect();
    assert_eq!((paths, next), (vec!["/p2", "/p1"], None));
    assert!(matches!(
        b.audit
            .events("org", at(t0), at(t0 + 100), Some("bogus"), 10)
            .await,
        Err(tarmac::Error::Invalid(_))
    ));
}
