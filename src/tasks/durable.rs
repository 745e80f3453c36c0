//! Making a task's state changes durable and delivering them: the outbox
//! (manager tasks) or `results/<id>.json` (spool tasks), the ledger, and
//! what happens while the state directory refuses writes.
//!
//! Invariant: every state change goes through [`Tasks::emit_for`], which
//! writes the update to the outbox before the ledger records it (spool
//! tasks: the ledger first, then the results file). A write that fails is
//! kept in memory, still sent, and retried every [`STORAGE_RETRY_EVERY`]
//! until the directory works again; meanwhile no new task is taken.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::Tasks;
use crate::error::Result;
use crate::ledger::Origin;
use crate::update::{State, Update};

/// How often writes that failed are tried again.
pub const STORAGE_RETRY_EVERY: Duration = Duration::from_secs(1);
/// How often `results/` is checked for files of forgotten tasks.
pub(super) const PRUNE_RESULTS_EVERY: Duration = Duration::from_secs(600);

/// The state directory refused a write, and since when.
#[derive(Default)]
pub(super) struct Storage {
    pub(super) fault: Option<(String, SystemTime)>,
    pub(super) write_errors: u64,
    pub(super) last_try: Option<Instant>,
    /// Spool results whose file could not be written, by task id.
    pub(super) unwritten_results: BTreeMap<String, Update>,
    /// Claimed tasks that could not be recorded, in claim order.
    pub(super) deferred: Vec<Value>,
}

impl Tasks {
    /// Makes one state change durable and sends it on its way.
    pub(super) fn emit_for(&mut self, id: &str, state: State, fill: impl FnOnce(&mut Update)) {
        let Some(mut record) = self.ledger.get(id).cloned() else {
            log::error!(task_id = id; "state change for task {id}, which the ledger does not know");
            return;
        };
        let mut update = Update::new(id, record.seq + 1, state);
        fill(&mut update);
        update.task_id = id.to_string();
        update.seq = record.seq + 1;
        update.state = state;
        if state.is_final()
            && let Some(usage) = self.final_usage(id)
        {
            update.usage = Some(usage);
        }
        if let Some(live) = self.live.get_mut(id) {
            live.state = state;
        }
        if record.origin == Origin::Manager
            && let Some(outbox) = &self.outbox
            && let Err(e) = outbox.push(&update)
        {
            log::error!(task_id = id; "cannot write update {} of task {id} to the outbox: {e}; it is sent from memory and written once the state directory can be written", update.seq);
            self.storage_failed(&e);
        }
        record.state = state;
        record.seq = update.seq;
        record.last = Some(update.clone());
        if state.is_final() {
            record.process = None;
            *self
                .finished
                .entry((record.type_name.clone(), state.label().to_string()))
                .or_insert(0) += 1;
            log::info!(task_id = id; "task {id} {}{}", state.label(), update.error.as_ref().map(|e| format!(": {} ({})", e.message, e.kind)).unwrap_or_default());
        }
        let origin = record.origin;
        if let Err(e) = self.ledger.put(record) {
            log::error!(task_id = id; "cannot record task {id} in the ledger: {e}; kept in memory until the state directory can be written");
            self.storage_failed(&e);
        }
        if origin == Origin::Spool {
            self.write_result(&update);
        }
    }

    /// Sends an already-numbered update again (a re-handed-out final task).
    pub(super) fn deliver(&mut self, origin: Origin, update: &Update) {
        match origin {
            Origin::Manager => {
                if let Some(outbox) = &self.outbox
                    && let Err(e) = outbox.push(update)
                {
                    log::error!("{e}");
                    self.storage_failed(&e);
                }
            }
            Origin::Spool => self.write_result(update),
        }
    }

    /// `results/<id>.json`: a spool task's latest update.
    pub(super) fn result_path(&self, task_id: &str) -> PathBuf {
        self.results.join(format!("{task_id}.json"))
    }

    pub(super) fn write_result_file(&self, update: &Update) -> Result<()> {
        crate::state::write_json(&self.result_path(&update.task_id), update)
    }

    pub(super) fn write_result(&mut self, update: &Update) {
        match self.write_result_file(update) {
            Ok(()) => {
                self.storage.unwritten_results.remove(&update.task_id);
            }
            Err(e) => {
                log::error!(task_id = update.task_id.as_str(); "{e}");
                self.storage_failed(&e);
                self.storage
                    .unwritten_results
                    .insert(update.task_id.clone(), update.clone());
            }
        }
    }

    /// Notes a write the state directory refused; the first one of a run
    /// of failures says what it means for the agent.
    pub(super) fn storage_failed(&mut self, error: &crate::error::Error) {
        self.storage.write_errors += 1;
        if self.storage.fault.is_none() {
            log::error!(
                "the state directory {} cannot be written ({error}); no new tasks are taken until it can, and what could not be written is kept in memory and retried every {}s",
                self.settings.state_dir.display(),
                STORAGE_RETRY_EVERY.as_secs()
            );
            self.storage.fault = Some((error.to_string(), SystemTime::now()));
            self.storage.last_try = Some(Instant::now());
            // The claim and spool threads read the fault from the view: at
            // once, not at the next periodic refresh.
            self.refresh_view(true);
        }
    }

    /// Tries again every write that failed; clears the fault once all of
    /// them, and a probe file, go through.
    pub(super) fn retry_storage(&mut self) {
        if self.storage.fault.is_none()
            || self
                .storage
                .last_try
                .is_some_and(|t| t.elapsed() < STORAGE_RETRY_EVERY)
        {
            return;
        }
        self.storage.last_try = Some(Instant::now());
        let probe = self.settings.state_dir.join(".storage-probe");
        let outbox = self.outbox.clone();
        let attempt = outbox
            .as_ref()
            .map_or(Ok(()), |o| o.persist_unwritten())
            .and_then(|()| self.ledger.repair())
            .and_then(|()| {
                let results: Vec<Update> =
                    self.storage.unwritten_results.values().cloned().collect();
                for update in results {
                    self.write_result_file(&update)?;
                    self.storage.unwritten_results.remove(&update.task_id);
                }
                Ok(())
            })
            .and_then(|()| crate::state::write_atomic(&probe, b"outpost\n"));
        let _ = std::fs::remove_file(&probe);
        match attempt {
            Ok(()) => {
                if let Some((_, since)) = self.storage.fault.take() {
                    let secs = since.elapsed().map_or(0, |d| d.as_secs());
                    log::info!(
                        "the state directory {} can be written again (after {secs}s); taking tasks again",
                        self.settings.state_dir.display()
                    );
                }
                for task in std::mem::take(&mut self.storage.deferred) {
                    let _ = self.accept(&task, Origin::Manager);
                }
                self.refresh_view(true);
            }
            Err(e) => {
                log::debug!("state directory still failing: {e}");
                if let Some(fault) = &mut self.storage.fault {
                    fault.0 = e.to_string();
                }
            }
        }
    }

    /// Section 7: `results/` keeps only tasks the ledger still remembers;
    /// the ledger's own bound then bounds the directory.
    pub(super) fn prune_results(&mut self) {
        self.results_pruned = Some(Instant::now());
        let Ok(listing) = std::fs::read_dir(&self.results) else {
            return;
        };
        for entry in listing.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = file.strip_suffix(".json") else {
                continue;
            };
            if self.ledger.get(id).is_none() && !self.storage.unwritten_results.contains_key(id) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
