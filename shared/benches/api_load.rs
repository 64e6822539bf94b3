//! P4: `GET S/deployments/{id}` under load, on loopback, against a release `tarmac serve`.
//!
//! `--connections` keep-alive clients (default 32) send requests back to back for
//! `--seconds` (default 10); prints requests per second and latency percentiles. The load
//! generator runs on the same machine (and cores) as the server.
//!
//! cargo bench --bench api_load -- [--connections 32] [--seconds 10]

mod common;

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let connections = common::arg("--connections", 32) as usize;
    let seconds = common::arg("--seconds", 10);
    let data = tempfile::tempdir().unwrap();
    let server = common::Server::start(data.path(), &["--workers", "1"], None);
    let url = server.url.clone();

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap();
    let stack = format!("{url}/api/stacks/default/bench/dev");
    // A deployment to read: paused, so it stays queued and nothing else runs meanwhile.
    let auth = server.auth.clone();
    client
        .post(format!("{stack}/deployments/pause"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    let created: serde_json::Value = client
        .post(format!("{stack}/deployments"))
        .header("Authorization", &auth)
        .json(
            &serde_json::json!({"operation": "update", "inheritSettings": false,
            "sourceContext": {"git": {"repoUrl": "https://example.com/r.git"}},
            "operationContext": {"environmentVariables": {"A": "1", "B": {"secret": "x"}}}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let target = format!("{stack}/deployments/{}", created["id"].as_str().unwrap());

    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (client, target, auth) = (client.clone(), target.clone(), auth.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                let resp = client
                    .get(&target)
                    .header("Authorization", &auth)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                let _ = resp.bytes().await.unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        });
    }
    let mut lat: Vec<f64> = tasks.join_all().await.into_iter().flatten().collect();
    drop(server);
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((p / 100.0) * (lat.len() - 1) as f64).round() as usize];
    println!(
        "GET S/deployments/{{id}}, {connections} keep-alive connections, {seconds} s, client and server on one 2-core machine"
    );
    println!("| requests | req/s | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms |",
        lat.len(),
        lat.len() as f64 / seconds as f64,
        pct(50.0),
        pct(99.0),
        lat[lat.len() - 1]
    );
}
