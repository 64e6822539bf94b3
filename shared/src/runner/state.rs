//! Engine state around the engine step: where it lives on this machine, and its restore and
//! save when it is kept off the machine (AWS mode's S3 store).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::engine::Engine;
use super::{Events, Executor, Failure, Outcome, Run, StepResult};
use crate::domain::Deployment;
use crate::error::Error;

impl Executor {
    pub(super) fn state_dir(&self, d: &Deployment) -> PathBuf {
        d.stack.dir_under(&self.ctx.state_dir)
    }

    /// The engine operation, between restoring the stack's state and saving it when the state
    /// lives off this machine. State is saved whatever the engine's outcome: a failed or
    /// stopped apply may still have created resources its state records.
    pub(super) async fn engine_with_state(
        &self,
        run: &Run<'_>,
        idx: usize,
        engine: Engine,
        program_dir: &Path,
        events: &Events,
    ) -> StepResult<Outcome> {
        let Some(store) = &self.ctx.state_store else {
            return self
                .engine_operation(run, idx, engine, program_dir, events)
                .await;
        };
        let stack = &run.d.stack;
        let dir = self.state_dir(run.d);
        let location = store.location(stack);
        let mut saved = store.restore(stack, &dir).await.map_err(|e| {
            tracing::error!(error = %e.chain(), "could not restore the stack's state");
            Failure::Failed(format!("cannot restore the stack's state from {location}"))
        })?;
        run.log
            .line(
                idx,
                &format!("Restored {} state file(s) from {location}", saved.len()),
            )
            .await;
        let result = self
            .engine_operation(run, idx, engine, program_dir, events)
            .await;
        // A retry resumes where the failed attempt stopped (`saved` follows each write); a
        // conflict is final: another run's state is not to be overwritten.
        let mut outcome = store.save(stack, &dir, &mut saved).await;
        for wait in [1, 4] {
            match &outcome {
                Err(e) if !matches!(e, Error::Conflict(_)) => {
                    tracing::warn!(error = %e.chain(), "could not save the stack's state; retrying");
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                    outcome = store.save(stack, &dir, &mut saved).await;
                }
                _ => break,
            }
        }
        match outcome {
            Ok((0, 0)) => run.log.line(idx, "The stack's state is unchanged").await,
            Ok((written, removed)) => {
                run.log
                    .line(
                        idx,
                        &format!(
                            "Saved the stack's state to {location} ({written} written, {removed} removed)"
                        ),
                    )
                    .await
            }
            Err(e) => {
                tracing::error!(error = %e.chain(), "could not save the stack's state");
                // The next run would start from a state that does not record what this run
                // did, and could make resources twice: nothing runs on this stack until
                // someone has looked.
                let paused = self.ctx.platform.pause_stack(stack).await.is_ok();
                let why = match &e {
                    Error::Conflict(m) => format!("{m}, so this run's state was not saved over it"),
                    _ => format!("cannot save the stack's state to {location}"),
                };
                let message = format!(
                    "{why}: the state this run wrote exists only on this worker. {}",
                    if paused {
                        "The stack is paused so that no deployment runs against the older state; resume it once the state is checked."
                    } else {
                        "Pause the stack until its state is checked."
                    }
                );
                // The engine's own failure, if any, is the one to report; the lost save is
                // logged beside it.
                return match result {
                    Err(f) => {
                        run.log.line(idx, &message).await;
                        Err(f)
                    }
                    Ok(_) => Err(Failure::Failed(message)),
                };
            }
        }
        result
    }
}
