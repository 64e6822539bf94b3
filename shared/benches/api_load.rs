//! P4: `GET S/deployments/{id}` under load, on loopback, against a release `tarmac serve`.
//!
//! `--connections` keep-alive clients (default 32) send requests back to back for
//! `--seconds` (default 10); prints requests per second and latency percentiles. The load
//! generator runs on the same machine (and cores) as the server.
//!
//! Then the same load against the framework's ceiling: a bare axum handler, in a process of
//! its own (this executable, re-run with `--bare-server`), answering the very bytes Tarmac
//! answered, with no authentication and no database. The ratio says how close Tarmac is to it.
//!
//! cargo bench --bench api_load -- [--connections 32] [--seconds 10]

mod common;

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--bare-server") {
        return bare_server().await;
    }
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

    let body = client
        .get(&target)
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut lat = load(&client, &target, Some(&auth), connections, seconds).await;
    drop(server);

    // The ceiling, measured right after on the same machine.
    let mut bare = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--bare-server")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = bare.stdin.take().unwrap();
        stdin.write_all(&body).unwrap();
    }
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(bare.stdout.take().unwrap()),
        &mut port,
    )
    .unwrap();
    let bare_url = format!("http://127.0.0.1:{}/", port.trim());
    let mut ceiling = load(&client, &bare_url, None, connections, seconds).await;
    let _ = bare.kill();
    let _ = bare.wait();

    println!(
        "GET S/deployments/{{id}}, {connections} keep-alive connections, {seconds} s, client and server on one 2-core machine"
    );
    println!("| server | requests | req/s | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    let tarmac_rate = row("tarmac serve", &mut lat, seconds);
    let bare_rate = row("bare axum handler, same body", &mut ceiling, seconds);
    println!(
        "Tarmac's throughput is {:.0}% of the bare handler's ({} bytes a response)",
        100.0 * tarmac_rate / bare_rate,
        body.len()
    );
}

/// Requests `target` from `connections` clients back to back for `seconds`; the latencies, ms.
async fn load(
    client: &reqwest::Client,
    target: &str,
    auth: Option<&str>,
    connections: usize,
    seconds: u64,
) -> Vec<f64> {
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (client, target, auth) = (client.clone(), target.to_string(), auth.map(str::to_string));
        tasks.spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                let mut req = client.get(&target);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                let resp = req.send().await.unwrap();
                assert_eq!(resp.status(), 200);
                let _ = resp.bytes().await.unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        });
    }
    tasks.join_all().await.into_iter().flatten().collect()
}

/// Prints one server's row; returns its requests per second.
fn row(name: &str, lat: &mut [f64], seconds: u64) -> f64 {
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((p / 100.0) * (lat.len() - 1) as f64).round() as usize];
    let rate = lat.len() as f64 / seconds as f64;
    println!(
        "| {name} | {} | {rate:.0} | {:.2} ms | {:.2} ms | {:.2} ms |",
        lat.len(),
        pct(50.0),
        pct(99.0),
        lat[lat.len() - 1]
    );
    rate
}

/// The ceiling: axum answering the bytes read from stdin, as JSON, on any path. Prints its
/// port, and serves until killed.
async fn bare_server() {
    use std::io::Read;
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body).unwrap();
    let body = axum::body::Bytes::from(body);
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move { ([("content-type", "application/json")], body) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap().port());
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    axum::serve(listener, app).await.unwrap();
}
