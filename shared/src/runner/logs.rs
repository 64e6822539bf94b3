//! The path from a child process's output to the log store: masking, then batching.
//!
//! Lines go through a channel to one flusher task per run, which writes them in batches so a
//! chatty engine costs a few transactions a second, not one per line.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::domain::{Lease, LogLine};
use crate::ports::RunStore;

/// Replaces every secret value with `[secret]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Masker {
    needles: Vec<String>,
}

pub(crate) const MASK: &str = "[secret]";

/// Where a piece of output was cut from the rest of its line (a line too long to read whole is
/// read in pieces, see `exec::Pieces`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Cut {
    /// The piece continues the line of the piece before it.
    pub before: bool,
    /// The line goes on in the next piece.
    pub after: bool,
}

impl Masker {
    /// Secrets of one character are not masked: masking every `1` or `a` would hide the log and
    /// protect nothing.
    pub(crate) fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut masker = Self::default();
        masker.extend(secrets);
        masker
    }

    /// Adds secrets learnt during the run (an OIDC token, say).
    pub(crate) fn extend(&mut self, secrets: impl IntoIterator<Item = String>) {
        let needles = &mut self.needles;
        for s in secrets {
            // A multi-line secret (a private key) is also masked line by line, since output is
            // read one line at a time.
            for part in std::iter::once(s.as_str()).chain(s.lines()) {
                let part = part.trim();
                if part.len() > 1 && !needles.iter().any(|n| n == part) {
                    needles.push(part.to_string());
                }
            }
        }
        // Longest first, so a secret containing another is masked whole.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    }

    pub(crate) fn mask(&self, line: &str) -> String {
        let mut out = line.to_string();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), MASK);
            }
        }
        out
    }

    /// Masks a piece of a line that `cut` says was cut from the rest of it. A secret split by a
    /// cut is whole in neither piece, so at a cut the end that could begin a secret, or the start
    /// that could finish one, is masked too (at worst a little more than the secret).
    /// The open ends are found in the piece as it came, before masking: a shorter secret inside
    /// a longer one would otherwise hide the longer one's part at the cut.
    pub(crate) fn mask_piece(&self, piece: &str, cut: Cut) -> String {
        let end = if cut.after { self.open_end(piece) } else { 0 };
        let start = if cut.before {
            self.open_start(piece)
        } else {
            0
        };
        if start == 0 && end == 0 {
            return self.mask(piece);
        }
        if start + end >= piece.len() {
            return MASK.to_string();
        }
        let middle = self.mask(&piece[start..piece.len() - end]);
        let mut masked = String::with_capacity(middle.len() + 2 * MASK.len());
        if start > 0 {
            masked.push_str(MASK);
        }
        masked.push_str(&middle);
        if end > 0 {
            masked.push_str(MASK);
        }
        masked
    }

    /// The length of the longest end of `text` that a secret begins with (and goes on after).
    fn open_end(&self, text: &str) -> usize {
        self.needles
            .iter()
            .flat_map(|n| {
                (1..n.len()).filter(move |k| n.is_char_boundary(*k) && text.ends_with(&n[..*k]))
            })
            .max()
            .unwrap_or(0)
    }

    /// The length of the longest start of `text` that a secret ends with (and began before).
    fn open_start(&self, text: &str) -> usize {
        self.needles
            .iter()
            .flat_map(|n| {
                (1..n.len()).filter(move |k| {
                    n.is_char_boundary(n.len() - k) && text.starts_with(&n[n.len() - k..])
                })
            })
            .max()
            .unwrap_or(0)
    }
}

enum Msg {
    Line(LogLine),
    Flush(oneshot::Sender<()>),
}

/// A run's log writer. Cheap to clone; every clone feeds the same flusher.
#[derive(Clone)]
pub(crate) struct RunLog {
    tx: mpsc::Sender<Msg>,
    masker: Arc<RwLock<Masker>>,
}

const BATCH: usize = 256;
/// The longest a line waits in the buffer: lines are written at most this long after the first
/// of a batch arrived, however steadily more keep coming (a live log stays live).
const LINGER: Duration = Duration::from_millis(50);

impl RunLog {
    /// Starts the flusher. It ends when every clone of the returned `RunLog` is dropped.
    pub(crate) fn start(store: Arc<dyn RunStore>, id: Uuid, lease: Lease, masker: Masker) -> Self {
        let (tx, mut rx) = mpsc::channel::<Msg>(4096);
        tokio::spawn(async move {
            let mut buf: Vec<LogLine> = Vec::new();
            // When the buffer's first line must be written by.
            let mut due = tokio::time::Instant::now();
            loop {
                let msg = if buf.is_empty() {
                    let m = rx.recv().await;
                    due = tokio::time::Instant::now() + LINGER;
                    m
                } else {
                    match tokio::time::timeout_at(due, rx.recv()).await {
                        Ok(m) => m,
                        Err(_) => {
                            write(&*store, id, &lease, &mut buf).await;
                            continue;
                        }
                    }
                };
                match msg {
                    Some(Msg::Line(l)) => {
                        buf.push(l);
                        if buf.len() >= BATCH {
                            write(&*store, id, &lease, &mut buf).await;
                        }
                    }
                    Some(Msg::Flush(done)) => {
                        write(&*store, id, &lease, &mut buf).await;
                        let _ = done.send(());
                    }
                    None => {
                        write(&*store, id, &lease, &mut buf).await;
                        return;
                    }
                }
            }
        });
        Self {
            tx,
            masker: Arc::new(RwLock::new(masker)),
        }
    }

    /// `Masker::mask_piece` with what the run knows now.
    pub(crate) fn mask_piece(&self, text: &str, cut: Cut) -> String {
        self.masker
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .mask_piece(text, cut)
    }

    /// Masks these too, from the next line on.
    pub(crate) fn mask_also(&self, secrets: impl IntoIterator<Item = String>) {
        self.masker
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(secrets);
    }

    /// Logs one line of a step, masked. A trailing newline is added if missing.
    pub(crate) async fn line(&self, step: usize, text: &str) {
        self.piece(step, text, Cut::default()).await;
    }

    /// Logs a piece of a line of a step (a whole line if `cut` says so), masked. A trailing
    /// newline is added if missing.
    pub(crate) async fn piece(&self, step: usize, text: &str, cut: Cut) {
        let mut line = self.mask_piece(text, cut);
        if !line.ends_with('\n') {
            line.push('\n');
        }
        let l = LogLine {
            step,
            timestamp: OffsetDateTime::now_utc(),
            line,
            event: None,
        };
        let _ = self.tx.send(Msg::Line(l)).await;
    }

    /// Records an engine event of the step's update, every string in it masked.
    pub(crate) async fn event(&self, step: usize, mut event: serde_json::Value) {
        {
            let masker = self.masker.read().unwrap_or_else(|p| p.into_inner());
            super::events::mask_strings(&mut event, &|t: &str| masker.mask(t));
        }
        let l = LogLine {
            step,
            timestamp: OffsetDateTime::now_utc(),
            line: String::new(),
            event: Some(event),
        };
        let _ = self.tx.send(Msg::Line(l)).await;
    }

    /// Waits until everything logged so far is stored.
    pub(crate) async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn write(store: &dyn RunStore, id: Uuid, lease: &Lease, buf: &mut Vec<LogLine>) {
    if buf.is_empty() {
        return;
    }
    if let Err(e) = store.append_logs(id, lease, buf).await {
        // A lost lease means the run is being torn down; the lines have nowhere to go.
        tracing::warn!(deployment_id = %id, error = %e.chain(), lines = buf.len(), "dropping log lines");
    }
    buf.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_secrets_longest_first_and_by_line() {
        let m = Masker::new([
            "hunter2".to_string(),
            "hunter2-long".into(),
            "x".into(),
            "-----BEGIN\nabcdef\n-----END".into(),
        ]);
        assert_eq!(
            m.mask("pw=hunter2-long and hunter2"),
            "pw=[secret] and [secret]"
        );
        assert_eq!(m.mask("x marks"), "x marks");
        assert_eq!(m.mask("key line abcdef"), "key line [secret]");
    }

    #[test]
    fn a_secret_split_by_a_cut_is_masked_on_both_sides() {
        let m = Masker::new(["hunter2".to_string(), "ab".into()]);
        let cut = |before, after| Cut { before, after };
        assert_eq!(m.mask_piece("pw=hun", cut(false, true)), "pw=[secret]");
        assert_eq!(m.mask_piece("ter2 ok", cut(true, false)), "[secret] ok");
        assert_eq!(m.mask_piece("a", cut(true, true)), "[secret]");
        // Away from a cut, a piece masks as a line does.
        assert_eq!(m.mask_piece("pw=hun", cut(true, false)), "pw=hun");
        assert_eq!(m.mask_piece("hunter2 a", cut(false, false)), "[secret] a");
        // A short secret inside a longer one cut at the end: the longer one's part is masked.
        let m = Masker::new(["P9".to_string(), "pg://app:P9@db.internal".into()]);
        assert_eq!(
            m.mask_piece("url pg://app:P9@db.int", cut(false, true)),
            "url [secret]"
        );
    }
}
