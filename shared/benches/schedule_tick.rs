//! Scheduler tick cost against the number of due schedules.
//!
//! SQLite: stores `--stored` schedules (default 1,000,000) for one stack, `--due` of them due
//! (default 10,000), and times one `scheduler::fire_due` tick, which advances each due slot,
//! records its history and creates its deployment; then the same with a tenth as many due, on a
//! fresh store of the same size. DynamoDB (only with `--dynamo`, against `AWS_ENDPOINT_URL`):
//! the same at the scale an emulator bears (20,000 stored, 500 and 50 due).
//!
//! cargo bench --bench schedule_tick -- [--stored N] [--due N]
//! cargo bench -p tarmac --features aws --bench schedule_tick -- --dynamo

use std::time::Instant;

use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use tarmac::app::{App, Config, EmbeddedConfig};
use tarmac::deps::Deps;
#[cfg(feature = "aws")]
use tarmac::domain::schedule::{Cron, Purpose, Schedule, When};
use tarmac::domain::{PageRequest, StackRef};

#[cfg(feature = "aws")]
#[path = "../../tests/support/emulator.rs"]
mod emulator;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn stack() -> StackRef {
    StackRef::new("bench", "proj", "dev").unwrap()
}

const REQUEST: &str = r#"{"request":{"operation":"update","inheritSettings":true}}"#;

/// A schedule whose next slot is `next`.
#[cfg(feature = "aws")]
fn schedule(next: OffsetDateTime, now: OffsetDateTime) -> Schedule {
    Schedule {
        id: Uuid::new_v4(),
        stack: stack(),
        purpose: Purpose::Custom,
        when: When::Cron(Box::new(Cron::parse("0 * * * *").unwrap())),
        definition: serde_json::from_str(REQUEST).unwrap(),
        next_execution: Some(next),
        paused: false,
        created: now,
        modified: now,
        last_executed: None,
    }
}

async fn settings(deps: &Deps) {
    let st = stack();
    deps.stacks
        .put_settings(
            &st,
            &json!({"sourceContext": {"git": {"repoUrl": "https://example.com/r.git"}}}),
            0,
        )
        .await
        .unwrap();
}

/// Seeds SQLite in one transaction, straight through SQL: a million single-row inserts
/// through the port would time the seeding, not the tick.
fn seed_sqlite(path: &std::path::Path, stored: usize, due: usize, now: OffsetDateTime) {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    let tx = conn.transaction().unwrap();
    let sid: i64 = tx
        .query_row("SELECT id FROM stacks", [], |r| r.get(0))
        .unwrap();
    let now_us = (now.unix_timestamp_nanos() / 1000) as i64;
    {
        let mut stmt = tx
            .prepare(
                "INSERT INTO schedules (id, stack_id, purpose, cron, definition, next_execution, paused, created, modified) \
                 VALUES (?1, ?2, 'custom', '0 * * * *', ?3, ?4, 0, ?5, ?5)",
            )
            .unwrap();
        for i in 0..stored {
            // Due ones a minute ago; the rest spread over the next days.
            let next = if i < due {
                now_us - 60_000_000
            } else {
                now_us + 3_600_000_000 + (i as i64) * 1_000_000
            };
            stmt.execute(rusqlite::params![
                Uuid::new_v4().to_string(),
                sid,
                REQUEST,
                next,
                now_us
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

async fn sqlite_run(stored: usize, due: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let app = App::build(Config::Embedded(EmbeddedConfig::new(dir.path())))
        .await
        .unwrap();
    let deps = app.deps;
    settings(&deps).await;
    let path = dir.path().join(tarmac::app::DB_FILE);
    let now = OffsetDateTime::now_utc();
    let t = Instant::now();
    seed_sqlite(&path, stored, due, now);
    eprintln!(
        "  seeded {stored} schedules ({due} due) in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let (fired, _) = tarmac::scheduler::fire_due(&deps, now).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(fired, due, "every due schedule fires once");
    let page = PageRequest {
        page: 1,
        page_size: 1,
        ascending: false,
    };
    assert_eq!(
        deps.deployments
            .list_stack_deployments(&stack(), page)
            .await
            .unwrap()
            .total as usize,
        due
    );
    // A second tick at the same instant finds nothing due.
    let t2 = Instant::now();
    assert_eq!(tarmac::scheduler::fire_due(&deps, now).await.unwrap().0, 0);
    eprintln!(
        "  empty tick over {stored} stored: {:.2} ms",
        t2.elapsed().as_secs_f64() * 1000.0
    );
    secs
}

#[cfg(feature = "aws")]
async fn dynamo_run(stored: usize, due: usize) -> f64 {
    let res = emulator::resources("60").await;
    let cfg = res.config(&[]);
    let deps = App::build(Config::Aws(Box::new((cfg, res.sdk))))
        .await
        .unwrap()
        .deps;
    settings(&deps).await;
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let next_index = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..16 {
        let (deps, next_index) = (deps.clone(), next_index.clone());
        tasks.spawn(async move {
            loop {
                let i = next_index.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= stored {
                    return;
                }
                let next = if i < due {
                    now - time::Duration::minutes(1)
                } else {
                    now + time::Duration::hours(1) + time::Duration::seconds(i as i64)
                };
                deps.schedules
                    .create_schedule(&schedule(next, now))
                    .await
                    .unwrap();
            }
        });
    }
    tasks.join_all().await;
    eprintln!(
        "  seeded {stored} schedules ({due} due) in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let (fired, _) = tarmac::scheduler::fire_due(&deps, now).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(fired, due);
    secs
}

#[tokio::main]
async fn main() {
    let stored = arg("--stored", 1_000_000);
    let due = arg("--due", 10_000);
    println!(
        "scheduler tick (fire_due): advance each due slot, record history, create its deployment"
    );
    println!("| backend | stored | due | tick | per due schedule |");
    println!("|---|---|---|---|---|");
    let mut rows = vec![];
    for d in [due, due / 10] {
        let secs = sqlite_run(stored, d).await;
        println!(
            "| SQLite | {stored} | {d} | {:.3} s | {:.1} µs |",
            secs,
            secs * 1e6 / d as f64
        );
        rows.push(secs);
    }
    println!(
        "SQLite ratio, {due} due vs {} due: {:.2} (cost ∝ due would be 10)",
        due / 10,
        rows[0] / rows[1]
    );
    if std::env::args().any(|a| a == "--dynamo") {
        dynamo_report().await;
    }
}

/// The DynamoDB rows: the same tick at the emulator's scale.
#[cfg(feature = "aws")]
async fn dynamo_report() {
    let (stored, due) = (arg("--dynamo-stored", 20_000), arg("--dynamo-due", 500));
    let mut rows = vec![];
    for d in [due, due / 10] {
        let secs = dynamo_run(stored, d).await;
        println!(
            "| DynamoDB (emulator) | {stored} | {d} | {:.3} s | {:.1} ms |",
            secs,
            secs * 1e3 / d as f64
        );
        rows.push(secs);
    }
    println!(
        "DynamoDB ratio, {due} due vs {} due: {:.2}",
        due / 10,
        rows[0] / rows[1]
    );
}

#[cfg(not(feature = "aws"))]
async fn dynamo_report() {
    eprintln!(
        "--dynamo needs the AWS mode: cargo bench -p tarmac --features aws --bench schedule_tick -- --dynamo"
    );
    std::process::exit(2);
}
