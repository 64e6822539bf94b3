//! What the server reads of a request before it refuses it: long URLs, big headers, deep JSON,
//! slow clients and more connections than it serves.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestApp, stack};

fn addr(app: &TestApp) -> String {
    app.url.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (or `within` passes): what it sent.
async fn until_closed(conn: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn oversized_requests_get_their_status_and_the_server_carries_on() {
    let app = TestApp::spawn().await;
    let s = stack("limits");
    let settings = format!("/api/stacks/{s}/deployments/settings");
    app.post(
        &settings,
        json!({"operationContext": {"preRunCommands": ["true"]}}),
    )
    .await;
    let (_, before) = app.get(&settings).await;

    // A URL past 8 KiB.
    let long = format!("{settings}?x={}", "a".repeat(9000));
    let (status, v) = app
        .request(Method::GET, &long, Some(&app.token), None)
        .await;
    assert_eq!(status, 414, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("the limit is 8192"),
        "{v}"
    );
    assert_eq!(v["code"], 414);

    // Headers past 16 KiB.
    let mut req = app
        .client
        .get(format!("{}{settings}", app.url))
        .header("Authorization", format!("token {}", app.token));
    for i in 0..40 {
        req = req.header(format!("x-pad-{i}"), "p".repeat(500));
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 431);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("the limit is 16384"),
        "{v}"
    );

    // A head far past that (200 KiB, beyond the 64 KiB read buffer) never reaches a handler:
    // hyper's own 431, and the connection ends.
    let mut conn = TcpStream::connect(addr(&app)).await.unwrap();
    let head = format!(
        "GET /api/orgs/default/deployments/metadata HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(200 * 1024)
    );
    let _ = conn.write_all(head.as_bytes()).await;
    let answer = until_closed(&mut conn, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // JSON nested 100,000 deep: a 400, not a crash.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, v) = app
        .request(
            Method::POST,
            &settings,
            Some(&app.token),
            Some(deep.into_bytes()),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("recursion limit"),
        "{v}"
    );

    // Nothing changed, and the server answers as before.
    let (status, after) = app.get(&settings).await;
    assert_eq!(status, 200);
    assert_eq!(after, before);
}

#[tokio::test]
async fn slow_clients_and_a_connection_flood_cannot_hold_the_server() {
    let app = TestApp::spawn_with(&["--request-timeout", "2", "--max-connections", "20"]).await;
    let s = stack("slow");
    let settings = format!("/api/stacks/{s}/deployments/settings");

    // 30 connections that send their headers a line every half second, for ever.
    let mut slow = Vec::new();
    for _ in 0..30 {
        let mut c = TcpStream::connect(addr(&app)).await.unwrap();
        let _ = c
            .write_all(b"GET /api/orgs/default/deployments/metadata HTTP/1.1\r\nHost: x\r\n")
            .await;
        slow.push(c);
    }
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        let mut closed = vec![None; slow.len()];
        let mut buf = [0u8; 1024];
        while closed.iter().any(Option::is_none) && started.elapsed() < Duration::from_secs(15) {
            for (i, c) in slow.iter_mut().enumerate() {
                if closed[i].is_some() {
                    continue;
                }
                let gone = c.write_all(b"X-Slow: y\r\n").await.is_err()
                    || matches!(
                        tokio::time::timeout(Duration::from_millis(10), c.read(&mut buf)).await,
                        Ok(Ok(0) | Err(_))
                    );
                if gone {
                    closed[i] = Some(started.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        closed
    });
    let closed = trickle.await.unwrap();
    // The 10 past the cap were closed at once; the 20 it served, when their headers had not
    // arrived within the request timeout, however steadily they trickled.
    let mut times: Vec<Duration> = closed
        .iter()
        .map(|c| c.expect("a slow connection was never closed"))
        .collect();
    times.sort();
    assert!(times[9] < Duration::from_millis(1500), "{times:?}");
    assert!(times[29] < Duration::from_secs(6), "{times:?}");

    // A body that trickles is refused with 408.
    let mut c = TcpStream::connect(addr(&app)).await.unwrap();
    let head = format!(
        "POST {settings} HTTP/1.1\r\nHost: x\r\nAuthorization: token {}\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{{\"a\":",
        app.token
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let answer = until_closed(&mut c, Duration::from_secs(8))
        .await
        .unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 2 s"), "{answer}");

    // The slots are free again: the API answers, and nothing was written.
    let (status, v) = app.get("/api/orgs/default/deployments/metadata").await;
    assert_eq!(status, 200, "{v}");
    let (status, _) = app.get(&settings).await;
    assert_eq!(status, 404);
}
