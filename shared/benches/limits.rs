//! The server's memory under hostile clients: `--slow` connections that send their headers a
//! line every second (slowloris), then `--flood` connections opened at once, past
//! `--max-connections`. Prints the server's resident memory (VmRSS) before, at the worst of
//! each, and after; and checks the API still answers between them.
//!
//! cargo bench --bench limits -- [--slow 1000] [--flood 5000] [--max-connections 1024] [--request-timeout 10]

mod common;

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::main]
async fn main() {
    let slow = common::arg("--slow", 1000) as usize;
    let flood = common::arg("--flood", 5000) as usize;
    let max = common::arg("--max-connections", 1024);
    let timeout = common::arg("--request-timeout", 10);
    let data = tempfile::tempdir().unwrap();
    let server = common::Server::start(
        data.path(),
        &[
            "--max-connections",
            &max.to_string(),
            "--request-timeout",
            &timeout.to_string(),
        ],
        None,
    );
    let addr = server.url.trim_start_matches("http://").to_string();
    let client = reqwest::Client::new();
    let answers = || async {
        client
            .get(format!(
                "{}/api/orgs/default/deployments/metadata",
                server.url
            ))
            .header("Authorization", &server.auth)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    println!("| moment | server VmRSS | API answers |");
    println!("|---|---|---|");
    let row = |moment: &str, status: u16| {
        println!(
            "| {moment} | {:.1} MiB | {status} |",
            server.rss_kib() as f64 / 1024.0
        );
    };
    row("idle", answers().await);

    // Slowloris: every connection sends one more header line a second, never the end.
    let mut conns = Vec::with_capacity(slow);
    for _ in 0..slow {
        if let Ok(mut c) = TcpStream::connect(&addr).await {
            let _ = c
                .write_all(b"GET /api/orgs/default/deployments/metadata HTTP/1.1\r\nHost: x\r\n")
                .await;
            conns.push(c);
        }
    }
    let mut worst = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(timeout / 2) {
        for c in &mut conns {
            let _ = c.write_all(b"X-Slow: y\r\n").await;
        }
        worst = worst.max(server.rss_kib());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "| {slow} slow clients, after {} s | {:.1} MiB (worst) | (slots full until the timeout) |",
        started.elapsed().as_secs(),
        worst as f64 / 1024.0
    );
    tokio::time::sleep(Duration::from_secs(timeout / 2 + 2)).await;
    row(
        &format!("{slow} slow clients, past the {timeout} s timeout"),
        answers().await,
    );
    drop(conns);

    // A flood: many connections at once, each sending nothing.
    let mut flooded = Vec::with_capacity(flood);
    for _ in 0..flood {
        match TcpStream::connect(&addr).await {
            Ok(c) => flooded.push(c),
            Err(_) => break,
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    row(&format!("{} connections open at once", flooded.len()), 0);
    drop(flooded);
    tokio::time::sleep(Duration::from_secs(timeout + 2)).await;
    row("after both", answers().await);
}
