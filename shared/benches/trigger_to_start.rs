//! Trigger-to-engine-start latency of the embedded core loop.
//!
//! Starts a real `tarmac serve` (release build), points a trivial engine at it (a `terraform`
//! script that records when it starts and does nothing else), and drives deployments through
//! the API from `--clients` closed-loop clients over `--stacks` stacks. For each deployment it
//! measures from just before the `POST S/deployments` is sent to the moment the engine process
//! starts. The source comes from a local git repository through the source cache: its branch
//! is looked up each run, and the commit extracted once.
//!
//! `--cold` empties the cache before each deployment (use `--clients 1`: a run in progress keeps
//! its entries), for the first-run figure.
//!
//! cargo bench --bench trigger_to_start -- [--deployments 200] [--stacks 20] [--clients 2] [--workers 2] [--cold]

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Args {
    deployments: usize,
    stacks: usize,
    clients: usize,
    workers: usize,
    /// Empty the run cache before each deployment (`tarmac cache prune`), outside the timed
    /// span: every run fetches and extracts, as the first run of a repository does.
    cold: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        deployments: 200,
        stacks: 20,
        clients: 2,
        workers: 2,
        cold: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = || {
            argv.get(i + 1)
                .and_then(|v| v.parse().ok())
                .expect("flag needs a number")
        };
        match argv[i].as_str() {
            "--deployments" => a.deployments = value(),
            "--stacks" => a.stacks = value(),
            "--clients" => a.clients = value(),
            "--workers" => a.workers = value(),
            "--cold" => {
                a.cold = true;
                i += 1;
                continue;
            }
            _ => {} // cargo bench passes --bench
        }
        i += if argv[i].starts_with("--") && argv[i] != "--bench" {
            2
        } else {
            1
        };
    }
    a
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let work = tempfile::tempdir().unwrap();
    let bin = work.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // Runs are sandboxed: the trace goes to a directory they may write (`--sandbox-rw`).
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let trace = out.join("trace");
    // The trivial engine: records the deployment id and its start time on `init`, prints no
    // outputs, and exits 0.
    let engine = bin.join("terraform");
    std::fs::write(
        &engine,
        "#!/bin/sh\nif [ \"$1\" = init ]; then echo \"$PULUMI_CI_BUILD_ID $(date +%s%N)\" >> \"$TRACE_FILE\"; fi\nif [ \"$1\" = output ]; then echo '{}'; fi\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&engine, std::fs::Permissions::from_mode(0o755)).unwrap();
    let repo = common::repo_with(work.path(), "# trivial\n");

    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let data = work.path().join("data");
    let server = common::Server::start(
        &data,
        &[
            "--allow-local-repos",
            "--workers",
            &args.workers.to_string(),
            "--sandbox-rw",
            &out.display().to_string(),
        ],
        Some(&path),
    );
    let (url, token) = (
        server.url.clone(),
        server.auth.trim_start_matches("token ").to_string(),
    );

    let client = reqwest::Client::new();
    let settings = json!({
        "sourceContext": {"git": {"repoUrl": format!("file://{}", repo.display()), "branch": "main", "repoDir": "infra"}},
        "operationContext": {"environmentVariables": {"TRACE_FILE": trace.display().to_string()}},
    });
    common::put_settings(
        &client,
        &format!("token {token}"),
        (0..args.stacks).map(|s| format!("{url}/api/stacks/default/bench/s{s}")),
        &settings,
    )
    .await;

    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        let (client, url, token, next) = (client.clone(), url.clone(), token.clone(), next.clone());
        let (n, stacks, cold, data) = (args.deployments, args.stacks, args.cold, data.clone());
        tasks.spawn(async move {
            let mut sent = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return sent;
                }
                let stack = format!("{url}/api/stacks/default/bench/s{}", i % stacks);
                if cold {
                    let pruned = std::process::Command::new(env!("CARGO_BIN_EXE_tarmac"))
                        .args(["cache", "prune", "--data-dir"])
                        .arg(&data)
                        .output()
                        .unwrap();
                    assert!(pruned.status.success());
                }
                let t0 = common::now_ns();
                let id = common::create_deployment(
                    &client,
                    &stack,
                    &format!("token {token}"),
                    &json!({"operation": "update"}),
                )
                .await;
                // Closed loop: the next trigger waits for this run to end, so the figure is the
                // platform's own latency, not time spent queued behind other runs.
                let auth = format!("token {token}");
                let d = common::wait_succeeded(
                    &client,
                    &format!("{stack}/deployments/{id}"),
                    &auth,
                    Duration::from_millis(20),
                )
                .await;
                let steps = d["jobs"][0]["steps"].clone();
                sent.push((id, (t0, steps)));
            }
        });
    }
    let sent: HashMap<String, (u128, Value)> =
        tasks.join_all().await.into_iter().flatten().collect();
    let elapsed = started.elapsed();
    drop(server);

    let mut ms: Vec<f64> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (id, t) = l.split_once(' ')?;
            let t: u128 = t.trim().parse().ok()?;
            Some((t.saturating_sub(sent.get(id)?.0)) as f64 / 1e6)
        })
        .collect();
    assert_eq!(
        ms.len(),
        args.deployments,
        "every deployment's engine must have started once"
    );
    println!(
        "trigger -> engine start, embedded (tarmac serve, SQLite), trivial engine, source cache (warm after the first run)"
    );
    println!(
        "deployments={} stacks={} clients={} workers={} wall={:.1}s",
        args.deployments,
        args.stacks,
        args.clients,
        args.workers,
        elapsed.as_secs_f64()
    );
    let row = |name: &str, v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            common::percentile(v, 50.0),
            common::percentile(v, 95.0),
            common::percentile(v, 99.0),
            v[v.len() - 1]
        );
    };
    // The breakdown comes from the deployments' own step timestamps.
    let step_ns = |steps: &Value, i: usize| -> u128 {
        let t = time::OffsetDateTime::parse(
            steps[i]["started"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        t.unix_timestamp_nanos() as u128
    };
    let mut to_source: Vec<f64> = sent
        .values()
        .map(|(t0, st)| step_ns(st, 0).saturating_sub(*t0) as f64 / 1e6)
        .collect();
    let mut source: Vec<f64> = sent
        .values()
        .map(|(_, st)| (step_ns(st, 1) - step_ns(st, 0)) as f64 / 1e6)
        .collect();
    // From the engine step's start (the last step the deployment records before its process
    // starts) to the process's first line.
    let engine_start: HashMap<&str, u128> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (id, t) = l.split_once(' ')?;
            Some((sent.get_key_value(id)?.0.as_str(), t.trim().parse().ok()?))
        })
        .collect();
    let mut to_process: Vec<f64> = sent
        .iter()
        .filter_map(|(id, (_, st))| {
            let t = engine_start.get(id.as_str())?;
            Some(t.saturating_sub(step_ns(st, 1)) as f64 / 1e6)
        })
        .collect();
    println!("| span | p50 | p95 | p99 | max |");
    println!("|---|---|---|---|---|");
    row("trigger -> engine process start", &mut ms);
    row(
        "  trigger -> 'Get source' step start (API, queue, claim)",
        &mut to_source,
    );
    row(
        "  'Get source' step (ref lookup, source cache, copy)",
        &mut source,
    );
    row(
        "  engine step start -> engine process start (sandbox helper, shell)",
        &mut to_process,
    );
}
