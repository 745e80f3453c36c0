//! Section 6.2's "nothing left behind" after a restart: processes of the
//! previous instance are stopped or taken back, and every task that was
//! not final reaches a final state (collectors run again).

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use super::Tasks;
use crate::ledger::{Origin, ProcessRef, Record};
use crate::supervisor;
use crate::update::{ErrorKind, State, Update};

impl Tasks {
    /// Section 6.2, "nothing left behind": processes of the previous
    /// instance are stopped (checked by pid and start time, so a reused pid
    /// is never touched) and their tasks end `failed` with
    /// `agent_restarted`.
    pub(super) fn recover(&mut self) {
        let desired = self.store.load();
        let kept: HashSet<String> = desired.values().map(|d| d.task_id.clone()).collect();
        for record in self.ledger.unfinished() {
            stop_leftovers(&record, self.settings.stop_grace);
            if kept.contains(&record.id) {
                continue; // a collector: it runs again below
            }
            log::info!(
                task_id = record.id.as_str();
                "task {} ({}) was cut off by an agent restart",
                record.id,
                record.type_name
            );
            self.emit_for(&record.id, State::Failed, |u| {
                *u = u.clone().with_error(
                    ErrorKind::AgentRestarted,
                    "the agent restarted while the task ran",
                );
            });
        }
        // A spool task's result file is written after its ledger record; a
        // crash between the two leaves the file behind, so catch it up.
        let stale: Vec<Update> = self
            .ledger
            .records()
            .filter(|r| r.origin == Origin::Spool)
            .filter_map(|r| r.last.clone())
            .filter(|last| {
                let path = self.result_path(&last.task_id);
                crate::state::read_json::<Update>(&path)
                    .ok()
                    .flatten()
                    .is_none_or(|on_disk| on_disk.seq < last.seq)
            })
            .collect();
        for update in stale {
            self.write_result(&update);
        }
        self.resume_collectors(desired);
    }
}

/// Stops what an earlier instance left of a task: its recorded process,
/// and any process whose environment names the task (`OUTPOST_TASK`), which
/// covers one started in the instant before its pid was recorded.
pub(super) fn stop_leftovers(record: &Record, grace: Duration) {
    if let Some(process) = record.process {
        stop_orphan(process, grace);
    }
    for (pid, start_ticks) in supervisor::find_by_task(Path::new("/"), &record.id) {
        stop_orphan(ProcessRef { pid, start_ticks }, grace);
    }
}

/// Stops a process of an earlier instance if it is still that process:
/// SIGTERM to its group, SIGKILL after the grace period.
fn stop_orphan(process: ProcessRef, grace: Duration) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    if !supervisor::is_same_process(process.pid, process.start_ticks) {
        return;
    }
    log::info!(
        "stopping pid {} left by the previous agent instance",
        process.pid
    );
    let group = Pid::from_raw(process.pid);
    let _ = killpg(group, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && supervisor::is_same_process(process.pid, process.start_ticks)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = killpg(group, Signal::SIGKILL);
}
