//! Running one child process: a clean environment, its own process group, output into the run
//! log line by line, and a stop that terminates the whole group, then kills it after a grace.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::logs::{Cut, RunLog};
use crate::sandbox::Launch;

/// A command to run. `env` is the child's whole environment: nothing is inherited.
#[derive(Debug, Clone)]
pub(crate) struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// What the command may read beyond what every command of the run may (a local repository
    /// it clones, say).
    pub read_only: Vec<PathBuf>,
    /// What it may write beyond that (the git mirror it fetches into).
    pub read_write: Vec<PathBuf>,
}

impl CommandSpec {
    pub(crate) fn new(
        program: impl Into<String>,
        args: Vec<String>,
        cwd: PathBuf,
        env: Vec<(String, String)>,
    ) -> Self {
        Self {
            program: program.into(),
            args,
            cwd,
            env,
            read_only: vec![],
            read_write: vec![],
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Exit {
    /// It exited with this code (a signal death counts as -1).
    Code(i32),
    /// The stop token fired and the process group was terminated.
    Stopped,
    /// It could not be started.
    SpawnFailed(String),
}

/// What to do with stdout.
#[derive(Debug, Clone)]
pub(crate) enum Stdout {
    Log,
    /// Kept in memory and returned, never logged (e.g. `terraform output -json`).
    Capture,
    /// `terraform -json` lines: each logged as its human message, and made engine events.
    TerraformJson(super::Events),
}

pub(crate) struct Output {
    pub exit: Exit,
    pub stdout: Vec<u8>,
}

/// Runs `spec`, started as `launch` says (in its sandbox), logging into `step`. Stops the
/// process group when `stop` fires. The group's id is appended to `groups_file`, so a restarted
/// server can find what a crashed one left.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    spec: &CommandSpec,
    launch: &Launch,
    log: &RunLog,
    step: usize,
    stdout_mode: Stdout,
    stop: &CancellationToken,
    grace: Duration,
    groups_file: &Path,
) -> Output {
    let mut cmd = Command::new(&launch.program);
    cmd.args(&launch.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a stop reaches everything it started (shells, engine plugins).
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("could not start {}: {e}", spec.program);
            return Output {
                exit: Exit::SpawnFailed(msg),
                stdout: vec![],
            };
        }
    };
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    if let Some(pgid) = pgid {
        record_group(groups_file, pgid);
    }
    let out_task = {
        let pipe = child.stdout.take().expect("stdout is piped");
        let log = log.clone();
        tokio::spawn(async move { pump(pipe, log, step, stdout_mode).await })
    };
    let err_task = {
        let pipe = child.stderr.take().expect("stderr is piped");
        let log = log.clone();
        tokio::spawn(async move { pump(pipe, log, step, Stdout::Log).await })
    };

    let signal_group = |sig: Signal| {
        if let Some(pgid) = pgid {
            // ESRCH (the group is gone) is the expected, harmless case.
            let _ = killpg(pgid, sig);
        }
    };
    let exit = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => Exit::Code(s.code().unwrap_or(-1)),
            Err(e) => Exit::SpawnFailed(format!("waiting for {}: {e}", spec.program)),
        },
        _ = stop.cancelled() => {
            signal_group(Signal::SIGTERM);
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                signal_group(Signal::SIGKILL);
                let _ = child.wait().await;
            }
            Exit::Stopped
        }
    };
    // Anything the command left running in its group goes with it; this also closes the pipes
    // such leftovers would hold open.
    signal_group(Signal::SIGKILL);
    let stdout = match tokio::time::timeout(Duration::from_secs(5), out_task).await {
        Ok(Ok(bytes)) => bytes,
        _ => vec![],
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), err_task).await;
    Output { exit, stdout }
}

fn record_group(file: &Path, pgid: Pid) {
    let written = super::files::append(file, &format!("{pgid}\n"));
    if let Err(e) = written {
        tracing::warn!(error = %e, "could not record a process group; a crash would leave it running");
    }
}

/// Kills what runs of an earlier, crashed process left behind in `work_dir`: every process in a
/// recorded group whose environment names that run's deployment (so a reused pid is never
/// touched). Returns how many it killed.
pub(crate) fn kill_orphans(work_dir: &Path) -> usize {
    let Ok(runs) = std::fs::read_dir(work_dir) else {
        return 0;
    };
    let mut wanted: Vec<(i32, String)> = Vec::new();
    for run in runs.flatten() {
        let id = run.file_name().to_string_lossy().to_string();
        let Ok(groups) = super::files::read_to_string(&run.path().join(GROUPS_FILE)) else {
            continue;
        };
        wanted.extend(
            groups
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .map(|g| (g, id.clone())),
        );
    }
    if wanted.is_empty() {
        return 0;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // /proc/<pid>/stat: "pid (comm) state ppid pgrp ..."; comm may hold spaces, so split
        // after its closing parenthesis.
        let Ok(stat) = std::fs::read_to_string(p.path().join("stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let Some(pgrp) = rest
            .split_whitespace()
            .nth(2)
            .and_then(|g| g.parse::<i32>().ok())
        else {
            continue;
        };
        let Some((_, id)) = wanted.iter().find(|(g, _)| *g == pgrp) else {
            continue;
        };
        let Ok(environ) = std::fs::read(p.path().join("environ")) else {
            continue;
        };
        let marker = format!("TARMAC_DEPLOYMENT_ID={id}");
        if environ.split(|b| *b == 0).any(|kv| kv == marker.as_bytes())
            && nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
        {
            killed += 1;
        }
    }
    killed
}

/// Where a run's working directory records its process groups.
pub(crate) const GROUPS_FILE: &str = "process-groups";

/// A longer line is logged in pieces of this size, so no output can grow memory without bound.
const MAX_LINE: u64 = 64 * 1024;

/// A child's output, a piece at a time: each line, and a line longer than `max` bytes in pieces
/// of `max` bytes. A cut never splits a UTF-8 character: one it would split goes whole to the next
/// piece (a piece is then up to 3 bytes short), so no secret is hidden from masking behind a
/// replacement character. However the pipe delivers the bytes, the pieces are the same.
pub(crate) struct Pieces<R> {
    reader: BufReader<R>,
    max: u64,
    /// Whether the last piece stopped inside its line.
    cut: bool,
    /// The start of a character the last cut would have split, for the next piece.
    carry: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Pieces<R> {
    pub(crate) fn new(pipe: R, max: u64) -> Self {
        Self {
            reader: BufReader::new(pipe),
            max: max.max(1),
            cut: false,
            carry: Vec::new(),
        }
    }

    /// Reads the next piece into `buf` (cleared first), and says where it was cut from the rest
    /// of its line. `None` at the end of the output, or when it can no longer be read.
    pub(crate) async fn next(&mut self, buf: &mut Vec<u8>) -> Option<Cut> {
        buf.clear();
        buf.append(&mut self.carry);
        let room = self.max - buf.len() as u64;
        let read = (&mut self.reader).take(room).read_until(b'\n', buf).await;
        if read.is_err() || buf.is_empty() {
            return None;
        }
        let before = self.cut;
        self.cut = buf.len() as u64 == self.max && !buf.ends_with(b"\n");
        if self.cut {
            let keep = buf.len() - incomplete_char(buf);
            if keep > 0 {
                self.carry = buf.split_off(keep);
            }
        }
        Some(Cut {
            before,
            after: self.cut,
        })
    }
}

/// How many bytes at the end of `buf` start a UTF-8 character that does not end in it.
fn incomplete_char(buf: &[u8]) -> usize {
    for back in 1..=buf.len().min(3) {
        let b = buf[buf.len() - back];
        // Continuation bytes are 10xxxxxx; anything else starts a character.
        if b & 0xC0 != 0x80 {
            let len = match b {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            };
            return if len > back { back } else { 0 };
        }
    }
    0
}

async fn pump(pipe: impl AsyncRead + Unpin, log: RunLog, step: usize, mode: Stdout) -> Vec<u8> {
    let mut pieces = Pieces::new(pipe, MAX_LINE);
    let mut captured = Vec::new();
    let mut buf = Vec::new();
    while let Some(cut) = pieces.next(&mut buf).await {
        match &mode {
            Stdout::Capture => captured.extend_from_slice(&buf),
            Stdout::Log => log.piece(step, &String::from_utf8_lossy(&buf), cut).await,
            Stdout::TerraformJson(events) => {
                let mut line = String::from_utf8_lossy(&buf);
                // A piece of an overlong line is no `-json` line: logged and made a message as it
                // is, where it would be masked as a whole line. Its cut ends are masked first.
                if cut != Cut::default() {
                    line = log.mask_piece(&line, cut).into();
                }
                let (text, made) = events
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .terraform(&line);
                if let Some(text) = &text {
                    log.line(step, text).await;
                }
                for e in made {
                    log.event(step, e).await;
                }
            }
        }
    }
    captured
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::logs::Masker;

    /// What the log shows of `output`, read in pieces of at most `max` bytes.
    async fn logged(masker: &Masker, output: &[u8], max: u64) -> String {
        let mut pieces = Pieces::new(output, max);
        let mut buf = Vec::new();
        let mut out = String::new();
        while let Some(cut) = pieces.next(&mut buf).await {
            out.push_str(&masker.mask_piece(&String::from_utf8_lossy(&buf), cut));
        }
        out
    }

    #[tokio::test]
    async fn a_secret_across_the_line_limit_is_masked() {
        let masker = Masker::new(["hunter2".to_string()]);
        // Pieces of 6 bytes cut the secret after "hun": neither piece holds it whole.
        assert_eq!(
            logged(&masker, b"pw=hunter2 ok\nhunter2\n", 6).await,
            "pw=[secret][secret] ok\n[secret][secret]\n"
        );
        // A cut inside a character moves it whole to the next piece: no replacement character
        // hides a secret from masking.
        let masker = Masker::new(["gä2x".to_string()]);
        assert_eq!(
            logged(&masker, "ab=gä2x\n".as_bytes(), 5).await,
            "ab=[secret][secret]\n"
        );
        let mut pieces = Pieces::new("aé€😀".as_bytes(), 4);
        let mut buf = Vec::new();
        let mut seen = Vec::new();
        while pieces.next(&mut buf).await.is_some() {
            seen.push(String::from_utf8(buf.clone()).unwrap());
        }
        assert_eq!(seen, ["aé", "€", "😀"]);
        let masker = Masker::new(["hunter2".to_string()]);
        // The real limit: a secret across the first 64 KiB of a long line.
        let mut long = vec![b'x'; MAX_LINE as usize - 3];
        long.extend(b"hunter2\n");
        let shown = logged(&masker, &long, MAX_LINE).await;
        assert!(
            !shown.contains("hun") && !shown.contains("ter2"),
            "{}",
            &shown[shown.len() - 40..]
        );
    }
}
