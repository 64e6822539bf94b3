//! Following a deployment to its end: its log lines once each and in order, its steps, and its
//! final status. Where the server streams (`tarmac serve`'s server-sent events) the follow
//! listens; elsewhere (behind API Gateway) it polls the logs' continuation token. Both resume
//! from the last line seen, so a dropped connection or a restarted server neither repeats nor
//! loses a line.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::Value;

use crate::api::{Api, CliError, CliResult, StackPath, exit};

/// How long the follow keeps trying to reach a server that went away.
const RECONNECT_FOR: Duration = Duration::from_secs(600);
/// Between polls when nothing new came.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// The runner's last line when a deployment was cancelled (`runner::finish`).
const CANCELLED_LINE: &str = "Deployment cancelled.";

/// How a followed deployment ended.
#[derive(Debug, Clone)]
pub(crate) struct Ended {
    pub(crate) status: String,
    pub(crate) cancelled: bool,
}

impl Ended {
    pub(crate) fn exit_code(&self) -> u8 {
        match self.status.as_str() {
            "succeeded" => exit::OK,
            "skipped" => exit::SKIPPED,
            _ if self.cancelled => exit::CANCELLED,
            _ => exit::FAILED,
        }
    }
}

/// Lines to stdout; on a terminal, a spinner under them on stderr.
enum Ui {
    Terminal(ProgressBar),
    Plain,
}

fn spinner() -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("a valid template"),
    );
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

impl Ui {
    fn new() -> Self {
        if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
            Self::Terminal(spinner())
        } else {
            Self::Plain
        }
    }

    fn print(&self, text: &str) {
        match self {
            Self::Terminal(pb) => pb.suspend(|| println!("{text}")),
            Self::Plain => println!("{text}"),
        }
    }

    fn note(&self, text: &str) {
        match self {
            Self::Terminal(pb) => pb.suspend(|| eprintln!("{text}")),
            Self::Plain => eprintln!("{text}"),
        }
    }

    fn status(&self, text: String) {
        if let Self::Terminal(pb) = self {
            pb.set_message(text);
        }
    }

    /// Clears and stops the spinner while a prompt waits for its answer: it shares the
    /// prompt's line, and each tick would redraw that line without the prompt.
    fn pause(&self) {
        if let Self::Terminal(pb) = self {
            pb.disable_steady_tick();
            pb.finish_and_clear();
        }
    }

    /// A new spinner after `pause`, where the old one left off.
    fn resume(&mut self) {
        if let Self::Terminal(pb) = self {
            *pb = spinner()
                .with_elapsed(pb.elapsed())
                .with_message(pb.message());
        }
    }

    fn done(&self) {
        if let Self::Terminal(pb) = self {
            pb.finish_and_clear();
        }
    }
}

/// Why one connection's worth of following stopped.
enum Stop {
    /// The server does not stream here: poll instead.
    NoStream,
    /// The connection broke or the server is restarting: reconnect and resume.
    Lost(CliError),
    /// The server refused (a missing deployment, a revoked token): give up.
    Fatal(CliError),
}

pub(crate) struct Follower {
    api: Api,
    stack: StackPath,
    id: String,
    /// The sequence number of the last log entry handled; the stream and the continuation
    /// token both resume after it.
    after: i64,
    stream: bool,
    status: String,
    step: String,
    last_line: String,
    ui: Ui,
    /// Set once this client asked for the deployment to be cancelled.
    pub(crate) cancel_requested: bool,
}

impl Follower {
    pub(crate) fn new(api: &Api, stack: &StackPath, id: &str) -> Self {
        Self {
            api: api.clone(),
            stack: stack.clone(),
            id: id.to_string(),
            after: 0,
            stream: true,
            status: "queued".into(),
            step: String::new(),
            last_line: String::new(),
            ui: Ui::new(),
            cancel_requested: false,
        }
    }

    fn path(&self, tail: &str) -> String {
        format!("{}/deployments/{}{tail}", self.stack.api(), self.id)
    }

    /// Stops the spinner for a prompt; `resume_spinner` brings it back.
    pub(crate) fn pause_spinner(&self) {
        self.ui.pause();
    }

    pub(crate) fn resume_spinner(&mut self) {
        self.ui.resume();
    }

    pub(crate) fn note(&self, text: &str) {
        self.ui.note(text);
    }

    /// Prints the lines logged so far, without waiting for more.
    pub(crate) async fn print_so_far(&mut self) -> CliResult<()> {
        self.ui.done();
        self.ui = Ui::Plain;
        loop {
            let token = if self.after > 0 {
                format!("?continuationToken={}", self.after)
            } else {
                String::new()
            };
            let page = self.api.get(&self.path(&format!("/logs{token}"))).await?;
            let lines = page["lines"].as_array().cloned().unwrap_or_default();
            for line in &lines {
                self.show_line(line);
            }
            match page["nextToken"]
                .as_str()
                .and_then(|t| t.parse::<i64>().ok())
            {
                Some(next) if !lines.is_empty() || next > self.after => self.after = next,
                _ => return Ok(()),
            }
        }
    }

    /// Follows until the deployment ends. Safe to drop at any await and call again: the
    /// position is kept between calls.
    pub(crate) async fn run(&mut self) -> CliResult<Ended> {
        let mut lost_since: Option<Instant> = None;
        let mut backoff = Duration::from_millis(250);
        loop {
            let before = self.after;
            let round = if self.stream {
                self.listen().await
            } else {
                self.poll().await
            };
            let stop = match round {
                Ok(ended) => {
                    self.ui.done();
                    return Ok(ended);
                }
                Err(stop) => stop,
            };
            match stop {
                Stop::NoStream => self.stream = false,
                Stop::Fatal(e) => {
                    self.ui.done();
                    return Err(e);
                }
                Stop::Lost(e) => {
                    if self.after != before {
                        // It got somewhere before it broke: a fresh outage.
                        lost_since = None;
                        backoff = Duration::from_millis(250);
                    }
                    let since = *lost_since.get_or_insert_with(|| {
                        self.ui.note(&format!("{}; reconnecting ...", e.message));
                        Instant::now()
                    });
                    if since.elapsed() > RECONNECT_FOR {
                        self.ui.done();
                        return Err(e.hint(format!(
                            "the deployment may still be running: tarmac logs {} --follow",
                            self.reference()
                        )));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// `ORG/PROJECT/STACK/ID`, as `tarmac logs` takes it.
    pub(crate) fn reference(&self) -> String {
        format!("{}/{}", self.stack, self.id)
    }

    fn ended(&self) -> Ended {
        Ended {
            status: self.status.clone(),
            cancelled: self.cancel_requested || self.last_line.trim() == CANCELLED_LINE,
        }
    }

    fn show_deployment(&mut self, d: &Value) {
        if let Some(s) = d["status"].as_str() {
            self.status = s.to_string();
        }
        let steps = d["jobs"][0]["steps"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(current) = steps.iter().rev().find(|s| s["status"] != "not-started") {
            self.step = current["name"].as_str().unwrap_or_default().to_string();
        }
        let step = if self.step.is_empty() {
            String::new()
        } else {
            format!(" · {}", self.step)
        };
        self.ui.status(format!("{}{step}", self.status));
    }

    fn show_line(&mut self, line: &Value) {
        if let Some(h) = line["header"].as_str() {
            self.ui.print(&format!("==> {h}"));
        } else if let Some(l) = line["line"].as_str() {
            let text = l.strip_suffix('\n').unwrap_or(l);
            self.ui.print(text);
            self.last_line = text.to_string();
        }
    }

    /// One server-sent events connection, from `after`.
    async fn listen(&mut self) -> Result<Ended, Stop> {
        let path = self.path(&format!("/stream?after={}", self.after));
        let resp = self
            .api
            .request(Method::GET, &path)
            .header("Accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| Stop::Lost(self.api.unreachable(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            let e = crate::api::refused(&Method::GET, &path, status, &body);
            return Err(classify(status, e, true));
        }
        let mut events = eventsource_stream::Eventsource::eventsource(resp.bytes_stream());
        while let Some(event) = events.next().await {
            let event = event
                .map_err(|e| Stop::Lost(CliError::new(format!("the live stream broke: {e}"))))?;
            match event.event.as_str() {
                "deployment" => {
                    if let Ok(d) = serde_json::from_str::<Value>(&event.data) {
                        self.show_deployment(&d);
                    }
                }
                "log" => {
                    let Ok(line) = serde_json::from_str::<Value>(&event.data) else {
                        continue;
                    };
                    let seq = line["seq"].as_i64().unwrap_or(self.after);
                    if seq <= self.after {
                        continue;
                    }
                    self.show_line(&line);
                    self.after = seq;
                }
                "end" => return Ok(self.ended()),
                _ => {}
            }
        }
        Err(Stop::Lost(CliError::new("the live stream closed early")))
    }

    /// Polls the logs' continuation token until the deployment has ended.
    async fn poll(&mut self) -> Result<Ended, Stop> {
        loop {
            let token = if self.after > 0 {
                format!("?continuationToken={}", self.after)
            } else {
                String::new()
            };
            let page = self
                .api
                .get(&self.path(&format!("/logs{token}")))
                .await
                .map_err(lost_or_fatal)?;
            let lines = page["lines"].as_array().cloned().unwrap_or_default();
            for line in &lines {
                self.show_line(line);
            }
            match page["nextToken"].as_str() {
                Some(next) => {
                    // The token is the last entry's sequence number.
                    if let Ok(n) = next.parse::<i64>() {
                        self.after = n.max(self.after);
                    }
                    if lines.is_empty() {
                        let d = self.api.get(&self.path("")).await.map_err(lost_or_fatal)?;
                        self.show_deployment(&d);
                        tokio::time::sleep(POLL_EVERY).await;
                    }
                }
                None => {
                    let d = self.api.get(&self.path("")).await.map_err(lost_or_fatal)?;
                    self.show_deployment(&d);
                    return Ok(self.ended());
                }
            }
        }
    }
}

/// A refused request: 404 from a server without streams means "poll"; 5xx and gateway errors
/// are a server on its way back; the rest is final.
fn classify(status: reqwest::StatusCode, e: CliError, streaming: bool) -> Stop {
    if streaming
        && status == reqwest::StatusCode::NOT_FOUND
        && (e.message.contains("live streams are not available") || e.message.contains("no route"))
    {
        return Stop::NoStream;
    }
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Stop::Lost(e);
    }
    Stop::Fatal(e)
}

fn lost_or_fatal(e: CliError) -> Stop {
    match e.status {
        None => Stop::Lost(e),
        Some(s) => classify(s, e, false),
    }
}

/// `tarmac logs --step N`: one step's lines, followed with the step mode's offsets.
pub(crate) async fn step_lines(
    api: &Api,
    stack: &StackPath,
    id: &str,
    step: usize,
    follow: bool,
) -> CliResult<()> {
    let mut offset = 0;
    loop {
        let page = api
            .get(&format!(
                "{}/deployments/{id}/logs?job=0&step={step}&offset={offset}&count=499",
                stack.api()
            ))
            .await?;
        let lines = page["lines"].as_array().cloned().unwrap_or_default();
        for l in &lines {
            let text = l["line"].as_str().unwrap_or_default();
            println!("{}", text.strip_suffix('\n').unwrap_or(text));
        }
        match page["nextOffset"].as_i64() {
            Some(next) if follow => {
                offset = next;
                if lines.is_empty() {
                    tokio::time::sleep(POLL_EVERY).await;
                }
            }
            Some(next) if !lines.is_empty() => offset = next,
            _ => return Ok(()),
        }
    }
}
