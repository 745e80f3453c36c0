//! Section 6.2's "nothing left behind" after a restart: processes of the
//! previous instance are stopped, and every task that was not final
//! reaches a final state (collectors run again).
//!
//! Invariants:
//! - Leftovers are stopped all at once, against one deadline, on a thread
//!   of their own: start-up (registration, heartbeats, `/ready`, new tasks)
//!   never waits for them.
//! - A task's ledger record stays unfinished until its leftovers are gone,
//!   so a crash meanwhile finds them again at the next start.
//! - A process is signalled only while it is verifiably the one recorded
//!   (pid and start time), carries this agent's task markers in its
//!   environment, or is in a task cgroup of this agent's subtree; its group
//!   only while it is alive, which keeps the group id from being reused
//!   under us.
//! - Where tasks had cgroups, those are the primary way leftovers are
//!   found (they hold every descendant, whatever it did to its environment
//!   or process group); the environment scan stays as the fallback. A
//!   leftover cgroup is killed as a whole after the grace and removed once
//!   empty, whether or not the ledger still knows its task.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::Tasks;
use crate::cgroup;
use crate::event::Event;
use crate::ledger::{Origin, ProcessRef, Record};
use crate::supervisor;
use crate::update::{ErrorKind, State, Update};

/// How long leftovers that ignored SIGKILL (stuck in the kernel) are
/// waited for before their tasks are settled anyway.
const AFTER_KILL: Duration = Duration::from_secs(10);
const POLL_EVERY: Duration = Duration::from_millis(20);

impl Tasks {
    /// Finds what the previous instance left, starts stopping it, and
    /// settles every task whose processes are already gone.
    pub(super) fn recover(&mut self) {
        let desired = self.store.load();
        let kept: HashSet<String> = desired.values().map(|d| d.task_id.clone()).collect();
        let mut stopping = Vec::new();
        // Tasks handed over by the previous image (and the update itself)
        // are this instance's already; the rest is recovered.
        let unfinished: Vec<Record> = self
            .ledger
            .unfinished()
            .into_iter()
            .filter(|r| {
                !self.live.contains_key(&r.id)
                    && self.updating.as_ref().is_none_or(|u| u.id != r.id)
            })
            .collect();
        // One pass over every /proc/<pid>/environ: skipped when nothing is
        // left to look for (after a handover, which has to be quick).
        let mut marked = if unfinished.is_empty() {
            Default::default()
        } else {
            supervisor::processes_by_task(
                Path::new("/"),
                &self.settings.state_dir.to_string_lossy(),
            )
        };
        let mut left_cgroups: BTreeMap<String, PathBuf> = self
            .settings
            .cgroups
            .as_ref()
            .map(|c| c.task_dirs())
            .unwrap_or_default()
            .into_iter()
            .collect();
        for id in self.live.keys() {
            left_cgroups.remove(id);
        }
        for record in unfinished {
            let cgroup = left_cgroups.remove(&record.id);
            let mut candidates = marked.remove(&record.id).unwrap_or_default();
            candidates.extend(cgroup.as_deref().map(in_cgroup).unwrap_or_default());
            let found = find_leftovers(&record, candidates);
            if found.is_empty() && cgroup.as_deref().is_none_or(|d| !cgroup::populated(d)) {
                if let Some(dir) = &cgroup {
                    let _ = cgroup::remove(dir, Duration::ZERO);
                }
                if !kept.contains(&record.id) {
                    self.cut_off(&record);
                }
                continue;
            }
            log::info!(
                task_id = record.id.as_str();
                "stopping {} process(es) of task {} left by the previous agent instance",
                found.len(),
                record.id
            );
            self.awaiting_leftovers.insert(record.id.clone(), None);
            stopping.push((record.id.clone(), found, cgroup));
        }
        // Cgroups of tasks the ledger holds as final (or forgot): whatever
        // is in them is a leftover all the same.
        for (id, dir) in left_cgroups {
            if !cgroup::populated(&dir) {
                let _ = cgroup::remove(&dir, Duration::ZERO);
                continue;
            }
            log::info!(
                "stopping the processes left in {} by the previous agent instance",
                dir.display()
            );
            let found = in_cgroup(&dir)
                .into_iter()
                .map(|(pid, start_ticks)| ProcessRef { pid, start_ticks })
                .collect();
            stopping.push((id, found, Some(dir)));
        }
        if !stopping.is_empty() {
            spawn_stopper(stopping, self.settings.stop_grace, self.events.clone());
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

    /// Every process the previous instance left of `task_id` is gone: its
    /// collector runs again, any other task ends `failed`.
    pub fn leftovers_gone(&mut self, task_id: &str) {
        let Some(collector) = self.awaiting_leftovers.remove(task_id) else {
            return;
        };
        match collector {
            Some((name, desired)) => self.resume_collector(name, desired),
            None => {
                if let Some(record) = self.ledger.get(task_id).cloned()
                    && !record.state.is_final()
                {
                    self.cut_off(&record);
                }
            }
        }
        self.refresh_view(true);
    }

    fn cut_off(&mut self, record: &Record) {
        if record.type_name == "agent_update" {
            return self.update_cut_off(&record.id);
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
}

/// The live processes an earlier instance left of a task: its recorded
/// process, and `marked`, those whose environment names the task and this
/// agent (which covers one started in the instant before its pid was
/// recorded, and descendants that left its process group).
fn find_leftovers(record: &Record, marked: Vec<(i32, u64)>) -> Vec<ProcessRef> {
    let mut found: Vec<ProcessRef> = record
        .process
        .filter(|p| supervisor::is_same_process(p.pid, p.start_ticks))
        .into_iter()
        .collect();
    for (pid, start_ticks) in marked {
        if !found.iter().any(|p| p.pid == pid) && supervisor::is_same_process(pid, start_ticks) {
            found.push(ProcessRef { pid, start_ticks });
        }
    }
    found
}

/// The processes in a leftover cgroup, with their start times.
fn in_cgroup(dir: &Path) -> Vec<(i32, u64)> {
    cgroup::pids(dir)
        .into_iter()
        .filter_map(|pid| Some((pid, supervisor::start_ticks(Path::new("/"), pid)?)))
        .collect()
}

/// Signals a leftover and its process group, only while it is verifiably
/// still that process: a live process keeps its pid, and so a group named
/// by it, from being reused.
fn signal(process: ProcessRef, signal: Signal) -> bool {
    if !supervisor::is_same_process(process.pid, process.start_ticks) {
        return false;
    }
    let pid = Pid::from_raw(process.pid);
    let _ = killpg(pid, signal);
    let _ = kill(pid, signal);
    true
}

/// A task's leftovers: its id, the processes found, its cgroup if any.
type Leftovers = (String, Vec<ProcessRef>, Option<PathBuf>);

/// Stops every leftover at once: SIGTERM now, SIGKILL to whatever is left
/// after `grace` (to the whole cgroup where there is one), and a
/// `LeftoversGone` event for each task as soon as all its processes are
/// gone (and its cgroup removed).
fn spawn_stopper(mut stopping: Vec<Leftovers>, grace: Duration, events: Sender<Event>) {
    let body = move || {
        for (_, processes, _) in &stopping {
            for p in processes {
                signal(*p, Signal::SIGTERM);
            }
        }
        let kill_at = Instant::now() + grace;
        let mut killed = false;
        loop {
            stopping.retain(|(task_id, processes, dir)| {
                let alive = processes
                    .iter()
                    .any(|p| supervisor::is_same_process(p.pid, p.start_ticks))
                    || dir.as_deref().is_some_and(cgroup::populated);
                if !alive {
                    if let Some(dir) = dir
                        && let Err(e) = cgroup::remove(dir, Duration::ZERO)
                    {
                        log::warn!("{e}");
                    }
                    let _ = events.send(Event::LeftoversGone {
                        task_id: task_id.clone(),
                    });
                }
                alive
            });
            if stopping.is_empty() {
                return;
            }
            let now = Instant::now();
            if !killed && now >= kill_at {
                for (_, processes, dir) in &stopping {
                    for p in processes {
                        if signal(*p, Signal::SIGKILL) {
                            log::warn!("pid {} ignored SIGTERM; killed", p.pid);
                        }
                    }
                    if let Some(dir) = dir {
                        cgroup::kill(dir);
                    }
                }
                killed = true;
            }
            if killed && now >= kill_at + AFTER_KILL {
                for (task_id, _, _) in stopping.drain(..) {
                    log::error!(task_id = task_id.as_str(); "task {task_id}: a process of the previous instance survives SIGKILL; settling the task anyway");
                    let _ = events.send(Event::LeftoversGone { task_id });
                }
                return;
            }
            // A short-lived helper, bounded by grace + AFTER_KILL; no
            // worker waits on it.
            std::thread::sleep(POLL_EVERY);
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("leftovers".into())
        .stack_size(64 * 1024)
        .spawn(body)
    {
        log::error!("cannot start the thread that stops leftovers: {e}");
    }
}
