//! Entry points for the fuzz targets in `shared/fuzz` (run by `tests/fuzz.sh`): thin wrappers
//! around crate-private code, so nothing else need be public. Not an API: only the fuzz targets
//! use it.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde_json::Value;
use tokio::io::{AsyncRead, ReadBuf};

use crate::crypto::OrgCipher;
use crate::error::Result;
use crate::runner::logs::Masker;
use crate::settings::{Nulls, SETTINGS, Shape};

/// `settings::canonicalize`: what every settings body goes through first.
pub fn canonicalize_settings(value: &Value, cipher: &OrgCipher<'_>) -> Result<Value> {
    crate::settings::canonicalize(value, cipher)
}

/// `settings::merge`, with `POST settings`' nulls (`delete_nulls`) or a create-deployment
/// request's.
pub fn merge_settings(current: &Value, patch: &Value, delete_nulls: bool) -> Value {
    let nulls = if delete_nulls {
        Nulls::Delete
    } else {
        Nulls::Ignore
    };
    crate::settings::merge(current, patch, nulls)
}

pub fn strip_nulls(value: &Value) -> Value {
    crate::settings::strip_nulls(value)
}

/// `settings::check_stored`: whether settings may be stored.
pub fn check_stored_settings(settings: &Value) -> Result<()> {
    crate::settings::check_stored(settings)
}

/// `settings::render`: stored settings as a response shows them.
pub fn render_settings(stored: &Value) -> Value {
    crate::settings::render(stored)
}

/// `settings::split_create_request`.
pub fn split_create_request(
    body: &Value,
    inherit_by_default: bool,
) -> Result<(Option<String>, bool, Value)> {
    crate::settings::split_create_request(body, inherit_by_default)
}

/// Where canonical settings hold a secret that is not `{"secret": <sealed for this org>}` (nor,
/// for an environment variable, a plain string or a secret reference), by path; empty if none.
pub fn unsealed_secrets(canonical: &Value, cipher: &OrgCipher<'_>) -> Vec<String> {
    let mut found = Vec::new();
    unsealed(canonical, &SETTINGS, "", cipher, &mut found);
    found
}

fn unsealed(v: &Value, shape: &Shape, path: &str, c: &OrgCipher<'_>, found: &mut Vec<String>) {
    let sealed = |v: &Value| {
        v.as_object().is_some_and(|m| {
            m.len() == 1
                && m.get("secret")
                    .and_then(Value::as_str)
                    .is_some_and(|s| c.is_sealed(s))
        })
    };
    let at = |key: &str| format!("{path}.{key}");
    match (shape, v) {
        (_, Value::Null) => {}
        (Shape::Secret, v) if !sealed(v) => found.push(path.to_string()),
        (Shape::EnvValue, Value::Object(_))
            if !sealed(v) && !crate::domain::spec::secrets::is_reference(v) =>
        {
            found.push(path.to_string())
        }
        (Shape::EnvMap, Value::Object(m)) => {
            for (k, v) in m {
                unsealed(v, &Shape::EnvValue, &at(k), c, found);
            }
        }
        (Shape::Image, Value::Object(m)) => {
            if let Some(p) = m.get("credentials").and_then(|c| c.get("password")) {
                unsealed(p, &Shape::Secret, &at("credentials.password"), c, found);
            }
        }
        (Shape::Obj(fields), Value::Object(m)) => {
            for (name, shape) in fields.iter() {
                if let Some(v) = m.get(*name) {
                    unsealed(v, shape, &at(name), c, found);
                }
            }
        }
        _ => {}
    }
}

/// A pipe that delivers its bytes in the reads given (a read of at least one byte each; what is
/// left after the last comes in one read).
struct Chunked<'a> {
    data: &'a [u8],
    reads: std::slice::Iter<'a, usize>,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let want = self.reads.next().map_or(usize::MAX, |n| (*n).max(1));
        let n = want.min(buf.remaining()).min(self.data.len());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// One piece of a child's output as the run log gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedPiece {
    /// The bytes read.
    pub raw: Vec<u8>,
    /// What is logged of them (before the newline the log adds to a piece without one).
    pub text: String,
}

/// A child's `output`, delivered in `reads`, read as the runner reads it (lines, and pieces of
/// at most `max_line` bytes) and masked for `secrets` as the run log masks it.
pub fn log_output(
    secrets: &[String],
    output: &[u8],
    reads: &[usize],
    max_line: u64,
) -> Vec<LoggedPiece> {
    let masker = Masker::new(secrets.iter().cloned());
    let pipe = Chunked {
        data: output,
        reads: reads.iter(),
    };
    let read = async {
        let mut pieces = crate::runner::exec::Pieces::new(pipe, max_line);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(cut) = pieces.next(&mut buf).await {
            out.push(LoggedPiece {
                text: masker.mask_piece(&String::from_utf8_lossy(&buf), cut),
                raw: buf.clone(),
            });
        }
        out
    };
    // The pipe is always ready, so reading never waits: one poll, and no runtime.
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(read).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("an in-memory pipe never waits"),
    }
}

/// `Masker::mask` of a masker made with `first`, then told `later` (as `RunLog::mask_also`
/// tells it secrets learnt during a run).
pub fn mask_line(first: &[String], later: &[String], line: &str) -> String {
    let mut masker = Masker::new(first.iter().cloned());
    masker.extend(later.iter().cloned());
    masker.mask(line)
}

/// The signature headers of an outbound webhook request sent at unix time `t`.
pub fn webhook_signatures(secret: &str, body: &str, t: i64) -> [(&'static str, String); 2] {
    crate::delivery::signatures(secret, body, t)
}

/// `runner::files::relative`: the path of a stack's state file below its prefix, if the key is
/// a plain relative path.
pub fn state_file_path(key: &str) -> Option<PathBuf> {
    crate::runner::files::relative(key)
}
