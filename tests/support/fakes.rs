//! HTTP servers the tests stand up on 127.0.0.1: a webhook receiver and a fake GitHub (a mock
//! of GitHub's API: it records requests and answers the few calls Tarmac makes). Each stops
//! when dropped.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Recorded {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

type Respond = Arc<
    dyn Fn(Recorded, usize) -> Pin<Box<dyn Future<Output = (u16, String)> + Send>> + Send + Sync,
>;

pub(crate) struct FakeServer {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    /// Answers every request with `respond(request, index)`, index counting from 0.
    pub(crate) async fn start<F, Fut>(respond: F) -> Self
    where
        F: Fn(Recorded, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = (u16, String)> + Send + 'static,
    {
        let respond: Respond = Arc::new(move |r, i| Box::pin(respond(r, i)));
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let log = Arc::clone(&requests);
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (log, respond) = (Arc::clone(&log), Arc::clone(&respond));
                async move {
                    let r = Recorded {
                        method: method.to_string(),
                        path: uri
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect(),
                        body: String::from_utf8_lossy(&body).to_string(),
                    };
                    let index = {
                        let mut l = log.lock().unwrap();
                        l.push(r.clone());
                        l.len() - 1
                    };
                    let (code, body) = respond(r, index).await;
                    (
                        StatusCode::from_u16(code).unwrap(),
                        [("content-type", "application/json")],
                        body,
                    )
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            requests,
            task,
        }
    }

    pub(crate) fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Polls until `pred` holds for the recorded requests, for up to 30 s.
    pub(crate) async fn wait_until(
        &self,
        what: &str,
        pred: impl Fn(&[Recorded]) -> bool,
    ) -> Vec<Recorded> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let got = self.recorded();
            if pred(&got) {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; got {:#?}",
                got.iter()
                    .map(|r| format!("{} {}", r.method, r.path))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// A fake GitHub: App installation tokens, commit statuses, and issue comments kept in
    /// memory so that edits in place can be seen.
    pub(crate) async fn github() -> Self {
        let comments: Arc<Mutex<Vec<Value>>> = Arc::default();
        Self::start(move |r, _| {
            let comments = Arc::clone(&comments);
            async move {
                let parts: Vec<&str> = r.path.split('?').next().unwrap().split('/').collect();
                match (r.method.as_str(), parts.as_slice()) {
                    ("POST", ["", "app", "installations", _, "access_tokens"]) => {
                        (201, json!({"token": "ghs_installation_token", "expires_at": "2099-01-01T00:00:00Z"}).to_string())
                    }
                    ("POST", ["", "repos", _, _, "statuses", _]) => (201, "{}".into()),
                    ("GET", ["", "repos", _, _, "issues", _, "comments"]) => {
                        (200, Value::Array(comments.lock().unwrap().clone()).to_string())
                    }
                    ("POST", ["", "repos", _, _, "issues", _, "comments"]) => {
                        let mut c = comments.lock().unwrap();
                        let id = 1000 + c.len() as i64;
                        let comment = json!({"id": id, "body": r.json()["body"]});
                        c.push(comment.clone());
                        (201, comment.to_string())
                    }
                    ("PATCH", ["", "repos", _, _, "issues", "comments", id]) => {
                        let mut c = comments.lock().unwrap();
                        let id: i64 = id.parse().unwrap();
                        for comment in c.iter_mut() {
                            if comment["id"] == id {
                                comment["body"] = r.json()["body"].clone();
                            }
                        }
                        (200, json!({"id": id}).to_string())
                    }
                    _ => (404, json!({"message": "Not Found"}).to_string()),
                }
            }
        })
        .await
    }
}
