//! Schedules, their firing by the tick, and drift runs.

use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use tarmac::domain::*;
use tarmac::error::Error;
use tarmac::ports::*;

use crate::{Backend, call, stack};

fn at(minute: i64) -> OffsetDateTime {
    time::macros::datetime!(2026-06-01 00:00 UTC) + time::Duration::minutes(minute)
}

fn schedule(
    st: &StackRef,
    when: tarmac::domain::schedule::When,
    next: Option<OffsetDateTime>,
) -> tarmac::domain::schedule::Schedule {
    tarmac::domain::schedule::Schedule {
        id: Uuid::new_v4(),
        stack: st.clone(),
        purpose: tarmac::domain::schedule::Purpose::Custom,
        when,
        definition: json!({"request": {"operation": "update", "inheritSettings": true}}),
        next_execution: next,
        paused: false,
        created: at(0),
        modified: at(0),
        last_executed: None,
    }
}

fn cron(expr: &str) -> tarmac::domain::schedule::When {
    tarmac::domain::schedule::When::Cron(Box::new(
        tarmac::domain::schedule::Cron::parse(expr).unwrap(),
    ))
}

pub(crate) async fn schedules_are_stored_listed_and_due_by_their_next_slot(b: Backend) {
    let st = stack("sched");
    assert!(
        matches!(
            b.schedules
                .create_schedule(&schedule(&st, cron("* * * * *"), Some(at(1))))
                .await,
            Err(Error::NotFound(_))
        ),
        "schedules need an existing stack"
    );
    b.stacks.create_stack(&st).await.unwrap();
    let every = schedule(&st, cron("*/5 * * * *"), Some(at(5)));
    let once = schedule(
        &st,
        tarmac::domain::schedule::When::Once(at(2)),
        Some(at(2)),
    );
    let mut later = schedule(&st, cron("0 * * * *"), Some(at(60)));
    later.created = at(1);
    for s in [&every, &once, &later] {
        b.schedules.create_schedule(s).await.unwrap();
    }
    let listed = b.schedules.list_schedules(&st).await.unwrap();
    assert_eq!(listed.len(), 3);
    let got = b
        .schedules
        .get_schedule(&st, once.id)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(got.when, tarmac::domain::schedule::When::Once(t) if t == at(2)));
    assert_eq!(got.definition, once.definition);
    assert!(
        b.schedules
            .get_schedule(&stack("other"), once.id)
            .await
            .unwrap()
            .is_none()
    );

    // Due at minute 5: the one-time one and the five-minute one, earliest first; not the hourly.
    let due: Vec<Uuid> = b
        .schedules
        .due_schedules(at(5), 10)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(due, vec![once.id, every.id]);
    assert_eq!(b.schedules.due_schedules(at(5), 1).await.unwrap().len(), 1);
    assert!(
        b.schedules
            .due_schedules(at(1), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Paused schedules are not due; updates move them.
    let mut paused = every.clone();
    paused.paused = true;
    b.schedules
        .update_schedule(&paused, every.next_execution)
        .await
        .unwrap();
    let due: Vec<Uuid> = b
        .schedules
        .due_schedules(at(5), 10)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(due, vec![once.id]);
    let mut moved = later.clone();
    moved.next_execution = Some(at(3));
    moved.when = cron("3 * * * *");
    b.schedules
        .update_schedule(&moved, later.next_execution)
        .await
        .unwrap();
    let due: Vec<Uuid> = b
        .schedules
        .due_schedules(at(5), 10)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(due, vec![once.id, later.id]);

    // History, newest first.
    for (i, minute) in [1, 2, 3].iter().enumerate() {
        let e = HistoryEvent {
            id: Uuid::new_v4(),
            schedule_id: once.id,
            executed: at(*minute),
            deployment: Some((Uuid::new_v4(), i as i64 + 1)),
            note: "fired".into(),
        };
        b.schedules.add_history(&st, &e).await.unwrap();
    }
    let h = b.schedules.history(&st, once.id, 10).await.unwrap();
    assert_eq!(
        h.iter().map(|e| e.executed).collect::<Vec<_>>(),
        vec![at(3), at(2), at(1)]
    );
    assert_eq!(h[0].deployment.unwrap().1, 3);

    b.schedules.delete_schedule(&st, once.id).await.unwrap();
    assert!(matches!(
        b.schedules.delete_schedule(&st, once.id).await,
        Err(Error::NotFound(_))
    ));
    assert!(
        b.schedules
            .history(&st, once.id, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        b.schedules
            .update_schedule(&once, once.next_execution)
            .await,
        Err(Error::NotFound(_))
    ));
}

pub(crate) async fn advancing_a_slot_happens_once(b: Backend) {
    let st = stack("advance");
    b.stacks.create_stack(&st).await.unwrap();
    let s = schedule(&st, cron("*/5 * * * *"), Some(at(5)));
    b.schedules.create_schedule(&s).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let (store, st, id) = (b.schedules.clone(), st.clone(), s.id);
        tasks.spawn(async move {
            store
                .advance_schedule(&st, id, at(5), Some(at(10)), at(5))
                .await
                .unwrap()
        });
    }
    let wins = tasks.join_all().await.into_iter().filter(|w| *w).count();
    assert_eq!(wins, 1);
    let got = b.schedules.get_schedule(&st, s.id).await.unwrap().unwrap();
    assert_eq!(
        (got.next_execution, got.last_executed),
        (Some(at(10)), Some(at(5)))
    );
    // An update based on the slot before the firing is refused; one based on the new slot works.
    let mut edited = got.clone();
    edited.paused = true;
    assert!(matches!(
        b.schedules.update_schedule(&edited, Some(at(5))).await,
        Err(Error::Conflict(_))
    ));
    b.schedules
        .update_schedule(&edited, Some(at(10)))
        .await
        .unwrap();
    edited.paused = false;
    b.schedules
        .update_schedule(&edited, Some(at(10)))
        .await
        .unwrap();
    // A stale expectation loses; a one-time schedule leaves the due index once fired.
    assert!(
        !b.schedules
            .advance_schedule(&st, s.id, at(5), Some(at(15)), at(6))
            .await
            .unwrap()
    );
    assert!(
        b.schedules
            .advance_schedule(&st, s.id, at(10), None, at(10))
            .await
            .unwrap()
    );
    assert!(
        b.schedules
            .due_schedules(at(1000), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        b.schedules
            .get_schedule(&st, s.id)
            .await
            .unwrap()
            .unwrap()
            .next_execution,
        None
    );
}

pub(crate) async fn drift_runs_are_recorded_linked_and_paged(b: Backend) {
    let st = stack("drift");
    b.stacks.create_stack(&st).await.unwrap();
    let mut ids = vec![];
    for i in 0..3 {
        let run = DriftRun {
            id: Uuid::new_v4(),
            stack: st.clone(),
            created: at(i),
            detect: (Uuid::new_v4(), i + 1),
            drift_detected: i == 2,
            remediation: None,
        };
        b.drift.record_drift_run(&run).await.unwrap();
        ids.push(run.id);
    }
    let rem = (Uuid::new_v4(), 4);
    b.drift.link_remediation(&st, ids[2], rem).await.unwrap();
    assert!(matches!(
        b.drift.link_remediation(&st, Uuid::new_v4(), rem).await,
        Err(Error::NotFound(_))
    ));
    let page = b
        .drift
        .drift_runs(
            &st,
            PageRequest {
                page: 1,
                page_size: 2,
                ascending: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.total, 3);
    assert_eq!(
        page.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1]]
    );
    assert_eq!(page.items[0].remediation, Some(rem));
    assert!(page.items[0].drift_detected && !page.items[1].drift_detected);
    assert_eq!(
        b.drift
            .drift_run(&st, ids[0])
            .await
            .unwrap()
            .unwrap()
            .detect
            .1,
        1
    );
    assert!(
        b.drift
            .drift_run(&stack("elsewhere"), ids[0])
            .await
            .unwrap()
            .is_none()
    );
}

pub(crate) async fn deleting_a_stack_removes_its_schedules_and_drift_runs(b: Backend) {
    let st = stack("gone");
    b.stacks.create_stack(&st).await.unwrap();
    let s = schedule(&st, cron("* * * * *"), Some(at(1)));
    b.schedules.create_schedule(&s).await.unwrap();
    let run = DriftRun {
        id: Uuid::new_v4(),
        stack: st.clone(),
        created: at(0),
        detect: (Uuid::new_v4(), 1),
        drift_detected: false,
        remediation: None,
    };
    b.drift.record_drift_run(&run).await.unwrap();
    b.stacks.delete_stack(&st).await.unwrap();
    assert!(
        b.schedules
            .due_schedules(at(10), 10)
            .await
            .unwrap()
            .is_empty()
    );
    b.stacks.create_stack(&st).await.unwrap();
    assert!(b.schedules.list_schedules(&st).await.unwrap().is_empty());
    assert_eq!(
        b.drift
            .drift_runs(
                &st,
                PageRequest {
                    page: 1,
                    page_size: 10,
                    ascending: false
                }
            )
            .await
            .unwrap()
            .total,
        0
    );
}

const SETTINGS: &str = "/api/stacks/org/proj/ticks/deployments/settings";

const SCHEDULES: &str = "/api/stacks/org/proj/ticks/deployments/schedules";

async fn with_settings(b: &Backend) {
    let (status, v) = call(
        b,
        "POST",
        SETTINGS,
        Some(json!({"sourceContext": {"git": {"repoUrl": "https://example.com/r.git"}}})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

fn ticks() -> StackRef {
    stack("ticks")
}

async fn schedule_at(b: &Backend, body: serde_json::Value) -> tarmac::domain::schedule::Schedule {
    let (status, v) = call(b, "POST", SCHEDULES, Some(body)).await;
    assert_eq!(status, 200, "{v}");
    let id = Uuid::parse_str(v["id"].as_str().unwrap()).unwrap();
    b.schedules
        .get_schedule(&ticks(), id)
        .await
        .unwrap()
        .unwrap()
}

async fn tick(b: &Backend, now: OffsetDateTime) -> tarmac::scheduler::TickReport {
    tarmac::scheduler::tick(&b.app.deps.clone(), now, Duration::from_secs(7 * 86_400))
        .await
        .unwrap()
}

async fn deployment_count(b: &Backend) -> u64 {
    crate::deployments_of(b, &ticks()).await.len() as u64
}

pub(crate) async fn racing_ticks_fire_each_slot_once(b: Backend) {
    with_settings(&b).await;
    let s = schedule_at(&b, json!({"scheduleCron": "*/5 * * * *", "request": {"operation": "update", "inheritSettings": true}})).await;
    let slot = s.next_execution.unwrap();
    assert!(
        tick(&b, slot - time::Duration::seconds(1)).await.fired == 0,
        "not due yet"
    );
    let (r1, r2) = tokio::join!(tick(&b, slot), tick(&b, slot));
    assert_eq!(r1.fired + r2.fired, 1, "{r1:?} {r2:?}");
    assert_eq!(deployment_count(&b).await, 1);
    let after = b
        .schedules
        .get_schedule(&ticks(), s.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        after.next_execution,
        Some(slot + time::Duration::minutes(5))
    );
    assert_eq!(after.last_executed, Some(slot));
    let (_, h) = call(&b, "GET", &format!("{SCHEDULES}/{}/history", s.id), None).await;
    let events = h["scheduleHistoryEvents"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["version"], 1);
    assert_eq!(
        events[0]["result"], "not-started",
        "a firing's result is its deployment's status"
    );
    let d = b
        .deployments
        .get_deployment_by_version(&ticks(), 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (d.operation, d.initiator.as_str()),
        (Operation::Update, "schedule")
    );
}

pub(crate) async fn after_downtime_a_schedule_fires_once_and_history_records_the_missed_slots(
    b: Backend,
) {
    with_settings(&b).await;
    let s = schedule_at(
        &b,
        json!({"scheduleCron": "0 * * * *", "request": {"operation": "refresh"}}),
    )
    .await;
    let first = s.next_execution.unwrap();
    let report = tick(&b, first + time::Duration::minutes(3 * 60 + 30)).await;
    assert_eq!((report.fired, report.skipped), (1, 3));
    assert_eq!(deployment_count(&b).await, 1);
    let after = b
        .schedules
        .get_schedule(&ticks(), s.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.next_execution, Some(first + time::Duration::hours(4)));
    let h = b.schedules.history(&ticks(), s.id, 10).await.unwrap();
    assert_eq!(h.len(), 4);
    assert_eq!(h[0].executed, first + time::Duration::hours(3));
    assert!(h[0].deployment.is_some());
    assert!(
        h[1..]
            .iter()
            .all(|e| e.deployment.is_none() && e.note.starts_with("skipped"))
    );
    assert_eq!(
        tick(&b, first + time::Duration::minutes(3 * 60 + 31))
            .await
            .fired,
        0
    );
}

pub(crate) async fn paused_schedules_do_not_fire_and_resume_at_their_next_future_slot(b: Backend) {
    with_settings(&b).await;
    let s = schedule_at(
        &b,
        json!({"scheduleCron": "* * * * *", "request": {"operation": "preview"}}),
    )
    .await;
    assert_eq!(
        call(&b, "POST", &format!("{SCHEDULES}/{}/pause", s.id), None)
            .await
            .0,
        204
    );
    let far = OffsetDateTime::now_utc() + time::Duration::hours(2);
    assert_eq!(tick(&b, far).await.fired, 0);
    let (_, v) = call(&b, "GET", &format!("{SCHEDULES}/{}", s.id), None).await;
    assert_eq!(v["paused"], true);
    assert_eq!(
        call(&b, "POST", &format!("{SCHEDULES}/{}/resume", s.id), None)
            .await
            .0,
        204
    );
    let resumed = b
        .schedules
        .get_schedule(&ticks(), s.id)
        .await
        .unwrap()
        .unwrap();
    let next = resumed.next_execution.unwrap();
    assert!(
        next > OffsetDateTime::now_utc()
            && next <= OffsetDateTime::now_utc() + time::Duration::minutes(1)
    );
    let report = tick(&b, next).await;
    assert_eq!(
        (report.fired, report.skipped),
        (1, 0),
        "slots missed while paused do not fire"
    );
}

pub(crate) async fn one_time_and_ttl_schedules_fire_once(b: Backend) {
    with_settings(&b).await;
    let at = (OffsetDateTime::now_utc() + time::Duration::minutes(10))
        .replace_nanosecond(0)
        .unwrap();
    let once = schedule_at(&b, json!({"scheduleOnce": tarmac::domain::time_fmt::rfc3339(at), "request": {"operation": "update"}})).await;
    assert_eq!(once.next_execution, Some(at));
    let (status, ttl) = call(
        &b,
        "POST",
        "/api/stacks/org/proj/ticks/deployments/ttl/schedules",
        Some(
            json!({"timestamp": tarmac::domain::time_fmt::rfc3339(at), "deleteAfterDestroy": true}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{ttl}");
    assert_eq!(ttl["definition"]["request"]["operation"], "destroy");
    assert_eq!(
        ttl["definition"]["request"]["operationContext"]["options"]["deleteAfterDestroy"],
        true
    );
    assert!(ttl["scheduleOnce"].is_string() && ttl["lastExecuted"] == "");
    assert_eq!(tick(&b, at).await.fired, 2);
    assert_eq!(tick(&b, at + time::Duration::days(1)).await.fired, 0);
    let (_, v) = call(&b, "GET", &format!("{SCHEDULES}/{}", once.id), None).await;
    assert_eq!(v["nextExecution"], "");
    assert!(
        v["lastExecuted"]
            .as_str()
            .unwrap()
            .starts_with(&at.year().to_string())
    );
    let ops: Vec<Operation> = b
        .deployments
        .list_stack_deployments(
            &ticks(),
            PageRequest {
                page: 1,
                page_size: 10,
                ascending: true,
            },
        )
        .await
        .unwrap()
        .items
        .iter()
        .map(|d| d.operation)
        .collect();
    assert!(ops.contains(&Operation::Update) && ops.contains(&Operation::Destroy));
    let (_, meta) = call(
        &b,
        "GET",
        "/api/stacks/org/proj/ticks/deployments/metadata",
        None,
    )
    .await;
    assert_eq!(meta["hasSchedules"], true);
    // Deleting the stack deletes its schedules.
    let queued = b
        .deployments
        .list_stack_deployments(
            &ticks(),
            PageRequest {
                page: 1,
                page_size: 10,
                ascending: true,
            },
        )
        .await
        .unwrap();
    for d in queued.items {
        b.deployments
            .cancel_deployment(&ticks(), d.id)
            .await
            .unwrap();
    }
    assert_eq!(
        call(&b, "DELETE", "/api/stacks/org/proj/ticks", None)
            .await
            .0,
        204
    );
    assert!(
        b.schedules
            .due_schedules(at + time::Duration::days(365), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub(crate) async fn schedule_requests_are_validated(b: Backend) {
    // No settings yet: refused with 400, nothing stored.
    b.stacks.create_stack(&ticks()).await.unwrap();
    let body = json!({"scheduleCron": "0 0 * * 0", "request": {"operation": "update"}});
    let (status, v) = call(&b, "POST", SCHEDULES, Some(body.clone())).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("deployment settings not configured")
    );
    with_settings(&b).await;
    for (bad, want) in [
        (
            json!({"request": {"operation": "update"}}),
            "exactly one of scheduleCron and scheduleOnce",
        ),
        (
            json!({"scheduleCron": "0 0 * * 0", "scheduleOnce": "2030-01-01T00:00:00Z", "request": {"operation": "update"}}),
            "exactly one",
        ),
        (
            json!({"scheduleCron": "61 * * * *", "request": {"operation": "update"}}),
            "invalid scheduleCron",
        ),
        (
            json!({"scheduleCron": "* * * *", "request": {"operation": "update"}}),
            "expected 5 fields",
        ),
        (
            json!({"scheduleOnce": "next tuesday", "request": {"operation": "update"}}),
            "not an RFC 3339",
        ),
        (
            json!({"scheduleCron": "0 0 * * 0", "request": {"operation": "explode"}}),
            "unknown Operation",
        ),
        (json!({"scheduleCron": "0 0 * * 0"}), "request is required"),
    ] {
        let (status, v) = call(&b, "POST", SCHEDULES, Some(bad)).await;
        assert_eq!(status, 400, "{v}");
        assert!(v["message"].as_str().unwrap().contains(want), "{v}");
    }
    // SDK style: unset fields sent as null count as absent.
    let (status, v) = call(&b, "POST", SCHEDULES, Some(json!({"scheduleCron": "0 0 * * 0", "scheduleOnce": null, "request": {"operation": "update", "inheritSettings": true, "tag": null}}))).await;
    assert_eq!(status, 200, "{v}");
    let (_, list) = call(&b, "GET", SCHEDULES, None).await;
    assert_eq!(list["schedules"].as_array().unwrap().len(), 1);
    // A request's secrets are sealed when stored and never shown in plaintext.
    let with_secret = json!({"scheduleCron": "0 0 * * 0", "request": {"operation": "update",
        "operationContext": {"environmentVariables": {"DB": {"secret": "plain-text-pw"}}}}});
    let (status, v) = call(&b, "POST", SCHEDULES, Some(with_secret)).await;
    assert_eq!(status, 200, "{v}");
    assert!(!v.to_string().contains("plain-text-pw"), "{v}");
    assert!(
        v["definition"]["request"]["operationContext"]["environmentVariables"]["DB"]["ciphertext"]
            .is_string()
    );
    let stored = b
        .schedules
        .get_schedule(
            &ticks(),
            Uuid::parse_str(v["id"].as_str().unwrap()).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(!stored.definition.to_string().contains("plain-text-pw"));
    let (_, list) = call(&b, "GET", SCHEDULES, None).await;
    assert!(!list.to_string().contains("plain-text-pw"));
    let (status, _) = call(&b, "GET", &format!("{SCHEDULES}/{}", Uuid::new_v4()), None).await;
    assert_eq!(status, 404);
    let (status, _) = call(&b, "GET", &format!("{SCHEDULES}/not-an-id"), None).await;
    assert_eq!(status, 400);
}

/// A deployment a schedule fires is announced like any other: `deployment_queued` reaches the
/// stack's hooks (it once went to the queue without the announcement).
pub(crate) async fn a_fired_schedules_deployment_is_announced_as_queued(b: Backend) {
    use tarmac::domain::hooks::{Format, Hook, HookScope};
    with_settings(&b).await;
    let hook = Hook {
        name: "queued".into(),
        display_name: "queued".into(),
        payload_url: "https://example.com/h".into(),
        secret: None,
        active: true,
        format: Format::Raw,
        filters: vec!["deployment_queued".into()],
        groups: vec![],
    };
    b.hooks
        .create_hook(&HookScope::for_stack(&ticks()), &hook)
        .await
        .unwrap();
    let at = (OffsetDateTime::now_utc() + time::Duration::minutes(10))
        .replace_nanosecond(0)
        .unwrap();
    schedule_at(
        &b,
        json!({"scheduleOnce": tarmac::domain::time_fmt::rfc3339(at), "request": {"operation": "update"}}),
    )
    .await;
    assert_eq!(tick(&b, at).await.fired, 1);
    let fired = b
        .deployments
        .list_stack_deployments(
            &ticks(),
            PageRequest {
                page: 1,
                page_size: 10,
                ascending: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(fired.items.len(), 1);
    let due = b
        .outbox
        .claim_due(at + time::Duration::minutes(1), 10, Duration::from_secs(30))
        .await
        .unwrap();
    let queued: Vec<serde_json::Value> = due
        .iter()
        .filter(|(m, _)| m.event == "deployment_queued")
        .map(|(m, _)| serde_json::from_str(&m.body).unwrap())
        .collect();
    assert_eq!(queued.len(), 1, "{due:?}");
    assert_eq!(queued[0]["deploymentId"], fired.items[0].id.to_string());
    assert_eq!(queued[0]["status"], "not-started");
}
