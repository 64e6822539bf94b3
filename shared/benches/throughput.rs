//! P3: sustained deployments per second through API, queue and worker, with a trivial engine
//! (a `terraform` script that does nothing) and the source cache over a local repository.
//!
//! Clients create deployments over `--stacks` stacks (default 100) for `--seconds` (default
//! 60), keeping at most `--in-flight` (default 64) unfinished; `tarmac serve` runs
//! `--workers` workers (default 2 × cores). Prints the completion rate over the window and
//! queue-wait percentiles (creation to the run's start, from the deployments' own records).
//!
//! cargo bench --bench throughput -- [--seconds 60] [--workers 4] [--stacks 100]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[tokio::main]
async fn main() {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let (seconds, workers, stacks, in_flight) = (
        common::arg("--seconds", 60),
        common::arg("--workers", 2 * cores),
        common::arg("--stacks", 100) as usize,
        common::arg("--in-flight", 64) as usize,
    );
    let work = tempfile::tempdir().unwrap();
    let bin = common::trivial_engine(work.path());
    let repo = common::repo_with(work.path(), "# trivial\n");

    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let server = common::Server::start(
        &work.path().join("data"),
        &["--allow-local-repos", "--workers", &workers.to_string()],
        Some(&path),
    );
    let url = server.url.clone();
    let client = reqwest::Client::new();
    let auth = server.auth.clone();
    let settings = json!({"sourceContext": {"git": {"repoUrl": format!("file://{}", repo.display()), "branch": "main", "repoDir": "infra"}}});
    common::put_settings(
        &client,
        &auth,
        (0..stacks).map(|s| format!("{url}/api/stacks/default/tput/s{s}")),
        &settings,
    )
    .await;

    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (client, url, auth, next) = (client.clone(), url.clone(), auth.clone(), next.clone());
        clients.spawn(async move {
            let mut done = vec![];
            while Instant::now() < until {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let stack = format!("{url}/api/stacks/default/tput/s{}", i % stacks);
                let id = common::create_deployment(
                    &client,
                    &stack,
                    &auth,
                    &json!({"operation": "update"}),
                )
                .await;
                // Each client keeps one deployment in flight: it waits for it to end.
                let d = common::wait_succeeded(
                    &client,
                    &format!("{stack}/deployments/{id}"),
                    &auth,
                    Duration::from_millis(200),
                )
                .await;
                done.push(d);
            }
            done
        });
    }
    let done: Vec<Value> = clients.join_all().await.into_iter().flatten().collect();
    let elapsed = start.elapsed().as_secs_f64();
    drop(server);
    let mut waits: Vec<f64> = done
        .iter()
        .map(|d| {
            (common::parse_time(d["jobs"][0]["started"].as_str().unwrap())
                - common::parse_time(d["created"].as_str().unwrap()))
            .as_seconds_f64()
                * 1000.0
        })
        .collect();
    waits.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| waits[((p / 100.0) * (waits.len() - 1) as f64).round() as usize];
    println!(
        "P3: trivial engine, source cache, {stacks} stacks, {in_flight} deployments in flight, --workers {workers}, {seconds} s"
    );
    println!("| completed | rate | queue wait p50 | p99 |");
    println!("|---|---|---|---|");
    println!(
        "| {} | {:.1}/s | {:.1} ms | {:.1} ms |",
        done.len(),
        done.len() as f64 / elapsed,
        pct(50.0),
        pct(99.0)
    );
}
