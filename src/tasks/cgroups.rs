//! The task table's side of section 4.2: which task owns which cgroup,
//! usage in final updates, `oom_killed`, and leftover cgroups of an earlier
//! instance. The cgroup files themselves are `crate::cgroup`'s.
//!
//! Invariants:
//! - A task has a cgroup entry from just before its first process starts
//!   until its final update, which carries the usage read from it; the
//!   cgroup is removed then (it is empty: the supervisor reports an exit
//!   only once the task's cgroup is empty).
//! - A collector keeps one cgroup across its restarts; a task that takes a
//!   running collector over takes its cgroup over too.

use std::path::PathBuf;
use std::time::Duration;

use super::Tasks;
use super::payload::Limits;
use crate::cgroup::{self, Usage};

/// A task's cgroup and the highest memory.current seen in it (the peak on
/// kernels without memory.peak).
#[derive(Clone, Debug)]
pub(super) struct TaskCgroup {
    pub dir: PathBuf,
    pub peak: u64,
}

impl Tasks {
    /// The cgroup task `id`'s next process runs in: its existing one, or a
    /// new one with `limits`. `Ok(None)` where the agent has no cgroups.
    pub(super) fn cgroup_for(
        &mut self,
        id: &str,
        limits: Option<&Limits>,
    ) -> Result<Option<PathBuf>, String> {
        let Some(cgroups) = &self.settings.cgroups else {
            return Ok(None);
        };
        if let Some(existing) = self.cgroup_of.get(id) {
            return Ok(Some(existing.dir.clone()));
        }
        let dir = cgroups
            .create(id, limits)
            .map_err(|e| format!("cannot make the task's cgroup: {e}"))?;
        self.cgroup_of.insert(
            id.to_string(),
            TaskCgroup {
                dir: dir.clone(),
                peak: 0,
            },
        );
        Ok(Some(dir))
    }

    /// A task's process never started: its cgroup goes, with no usage.
    pub(super) fn drop_cgroup(&mut self, id: &str) {
        if let Some(cg) = self.cgroup_of.remove(id) {
            let _ = cgroup::remove(&cg.dir, Duration::ZERO);
        }
    }

    /// `new` takes over `old`'s running collector: its cgroup too, with
    /// `new`'s limits. Returns `old`'s usage so far for its final update.
    pub(super) fn hand_cgroup_over(&mut self, old: &str, new: &str) -> Option<Usage> {
        let cg = self.cgroup_of.remove(old)?;
        let usage = cgroup::usage(&cg.dir, cg.peak);
        let limits = self.live.get(new).and_then(|l| l.task.limits.clone());
        if let Err(e) = cgroup::apply(&cg.dir, limits.as_ref()) {
            log::warn!(task_id = new; "task {new}: {e}");
        }
        // A fresh cgroup the new task may have made before it knew about
        // the takeover is not needed.
        self.drop_cgroup(new);
        self.cgroup_of.insert(new.to_string(), cg);
        usage
    }

    /// The final update of task `id` is being made: its usage, read from
    /// its cgroup, which is then removed.
    pub(super) fn final_usage(&mut self, id: &str) -> Option<Usage> {
        let cg = self.cgroup_of.remove(id)?;
        let usage = cgroup::usage(&cg.dir, cg.peak);
        if cgroup::populated(&cg.dir) {
            // Not expected (exits are reported once the cgroup is empty);
            // a final task leaves nothing running all the same.
            log::warn!(task_id = id; "task {id} ended with processes left in {}; killing them", cg.dir.display());
            cgroup::kill(&cg.dir);
        }
        if let Err(e) = cgroup::remove(&cg.dir, Duration::from_secs(1)) {
            log::warn!(task_id = id; "task {id}: {e}");
        }
        usage
    }

    /// The memory limit killed a process of task `id`.
    pub(super) fn oom_killed(&self, id: &str) -> bool {
        self.cgroup_of
            .get(id)
            .is_some_and(|cg| cgroup::oom_kills(&cg.dir) > 0)
    }

    /// CPU time in µs and memory now of task `id`, measured on its cgroup.
    pub(super) fn cgroup_sample(&mut self, id: &str) -> Option<(u64, u64)> {
        let cg = self.cgroup_of.get_mut(id)?;
        let usec = cgroup::cpu_usec(&cg.dir)?;
        let memory = cgroup::memory_current(&cg.dir).unwrap_or(0);
        cg.peak = cg.peak.max(memory);
        Some((usec, memory))
    }
}
