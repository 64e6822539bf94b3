//! Bulk requests in the stores: kept whole (DynamoDB splits a large one over several items),
//! read back by their org only, written once.

use time::OffsetDateTime;
use uuid::Uuid;

use tarmac::domain::Operation;
use tarmac::domain::bulk::{BulkItem, BulkOperation, BulkOutcome};

use crate::Backend;

pub(crate) async fn a_bulk_request_is_kept_whole_by_its_org(b: Backend) {
    // Past DynamoDB's chunk of 500, with an odd remainder.
    let items: Vec<BulkItem> = (0..1201)
        .map(|i| BulkItem {
            stack: format!("fleet/s{i}"),
            outcome: if i % 100 == 7 {
                BulkOutcome::Refused {
                    code: 404,
                    message: format!("stack 'org/fleet/s{i}' not found"),
                }
            } else {
                BulkOutcome::Created {
                    deployment_id: Uuid::new_v4(),
                    version: i,
                }
            },
        })
        .collect();
    let op = BulkOperation {
        id: Uuid::new_v4(),
        org: "org".into(),
        operation: Operation::Update,
        requested_by: "ci".into(),
        // Whole seconds: both stores keep RFC 3339.
        created: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
        items,
    };
    b.bulk.put_bulk(&op).await.unwrap();
    assert_eq!(
        b.bulk.get_bulk("org", op.id).await.unwrap(),
        Some(op.clone())
    );
    assert_eq!(b.bulk.get_bulk("other", op.id).await.unwrap(), None);
    assert_eq!(b.bulk.get_bulk("org", Uuid::new_v4()).await.unwrap(), None);
    assert!(matches!(
        b.bulk.put_bulk(&op).await,
        Err(tarmac::Error::Conflict(_))
    ));
    let small = BulkOperation {
        id: Uuid::new_v4(),
        items: vec![],
        ..op.clone()
    };
    b.bulk.put_bulk(&small).await.unwrap();
    assert_eq!(b.bulk.get_bulk("org", small.id).await.unwrap(), Some(small));
}
