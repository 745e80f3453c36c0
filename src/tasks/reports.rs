//! What the rest of the agent sees of the task table: task reports for
//! heartbeats and registration, counters for `/status` and `/metrics`,
//! published through `Telemetry::task_view`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use super::Tasks;
use crate::clock;
use crate::supervisor;

/// How long a process's CPU and memory reading is reused in reports.
const USAGE_EVERY: Duration = Duration::from_secs(5);

impl Tasks {
    /// Publishes reports and counters for the heartbeat, /status and
    /// /metrics; process usage is read at most once a second.
    pub fn refresh_view(&mut self, force: bool) {
        let now = Instant::now();
        if !force
            && self
                .last_view
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_view = Some(now);
        let hz = supervisor::ticks_per_second() as f64;
        let mut reports = Vec::with_capacity(self.live.len());
        // Section 4.2: measured on the task's cgroup (its whole tree) where
        // it has one, else on its leader's /proc entry. CPU time is kept in
        // µs either way.
        let ids: Vec<String> = self.live.keys().cloned().collect();
        let mut samples = std::collections::HashMap::new();
        for id in ids {
            let due = self.live.get(&id).is_some_and(|l| {
                l.process.is_some()
                    && l.usage
                        .is_none_or(|u| now.duration_since(u.1) >= USAGE_EVERY)
            });
            if due && let Some(sample) = self.cgroup_sample(&id) {
                samples.insert(id, sample);
            }
        }
        for live in self.live.values_mut() {
            let mut report = json!({
                "id": live.task.id,
                "type": live.task.kind.type_name(),
                "state": live.state.label(),
                "started_at": clock::rfc3339(live.started_at),
                "restarts": live.collector.as_ref().map_or(0, |c| c.restarts),
            });
            if let Some(c) = &live.collector {
                report["name"] = json!(c.name);
            }
            if let Some(p) = live.process {
                report["pid"] = json!(p.pid);
                // Reading /proc for hundreds of collectors on every event
                // would cost more than the collectors: a sample is reused
                // for a few seconds.
                let fresh = live.usage.filter(|u| now.duration_since(u.1) < USAGE_EVERY);
                if let Some((_, _, cpu, rss)) = fresh {
                    report["cpu_percent"] = json!(cpu);
                    report["rss_bytes"] = json!(rss);
                } else if let Some((usec, rss)) =
                    samples.get(&live.task.id).copied().or_else(|| {
                        supervisor::usage(Path::new("/"), p.pid)
                            .map(|(ticks, rss)| ((ticks as f64 / hz * 1e6) as u64, rss))
                    })
                {
                    let cpu = match live.usage {
                        Some((last_usec, at, _, _)) if now > at => {
                            let secs = now.duration_since(at).as_secs_f64();
                            (usec.saturating_sub(last_usec) as f64 / 1e6 / secs * 100.0 * 10.0)
                                .round()
                                / 10.0
                        }
                        Some((_, _, cpu, _)) => cpu,
                        None => 0.0,
                    };
                    live.usage = Some((usec, now, cpu, rss));
                    report["cpu_percent"] = json!(cpu);
                    report["rss_bytes"] = json!(rss);
                }
            }
            reports.push(report);
        }
        let collectors = self
            .live
            .values()
            .filter(|l| l.ending.is_none())
            .filter_map(|l| {
                let run = l.collector.as_ref()?;
                let (cpu, rss) = l
                    .usage
                    .filter(|_| l.process.is_some())
                    .map_or((0.0, 0), |u| (u.2, u.3));
                Some((
                    run.name.clone(),
                    run.restarts,
                    l.process.is_some(),
                    cpu,
                    rss,
                ))
            })
            .collect();
        // Whole CPU seconds for `/metrics`: Prometheus works out the rate.
        let usage = self
            .live
            .values()
            .filter(|l| l.process.is_some())
            .filter_map(|l| {
                let (usec, _, _, rss) = l.usage?;
                Some(crate::telemetry::TaskUsage {
                    task_id: l.task.id.clone(),
                    type_name: l.task.kind.type_name(),
                    name: l.collector.as_ref().map(|c| c.name.clone()),
                    cpu_seconds: usec as f64 / 1e6,
                    rss_bytes: rss,
                })
            })
            .collect();
        let pending = self.outbox.as_ref().map_or(0, |o| o.len());
        let full = self.outbox.as_ref().is_some_and(|o| o.is_full());
        let free = self.free_slots();
        let mut view = self.telemetry.task_view();
        view.reports = reports;
        view.free_slots = free;
        view.outbox_pending = pending;
        view.outbox_full = full;
        view.finished = self.finished.clone();
        view.collectors = collectors;
        view.usage = usage;
        view.storage_fault = self.storage.fault.clone();
        view.storage_write_errors = self.storage.write_errors;
    }
}
