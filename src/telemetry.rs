//! The agent's live view of itself: session facts, counters, the latest
//! /proc snapshot and each thread's progress.
//!
//! Worker threads write here; the health responder, the Pushgateway push,
//! sd_notify status lines and the watchdog read from here. Keeping it in one
//! place means `/status`, `/metrics` and `systemctl status` can never
//! disagree about what the agent is doing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::clock;
use crate::exposition::{Exposition, Kind};
use crate::manager::Endpoint;
use crate::metrics::{Categories, NodeReader, Snapshot};

/// Facts about the manager session, changed together under one lock.
#[derive(Clone, Debug)]
pub struct Session {
    pub agent_id: Option<String>,
    /// The operator's own settings, which a registration answer overrides
    /// only until the next registration (section 3.1).
    pub configured: Configured,
    /// Registered with this instance at least once (section 7: `/ready`
    /// stays 200 through later outages).
    pub registered: bool,
    pub heartbeat_interval: Duration,
    pub poll_wait: Duration,
    pub pushgateway_url: Option<String>,
    pub last_heartbeat_ok: Option<(Instant, SystemTime)>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    /// The manager's `metrics` choice for heartbeats (sections 3.1, 3.2);
    /// `None`: what the operator collects. Never wider than that: see
    /// [`Telemetry::heartbeat_categories`].
    pub heartbeat_metrics: Option<Categories>,
}

/// The settings a register answer may override, as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct Configured {
    pub heartbeat_interval: Duration,
    pub poll_wait: Duration,
    pub pushgateway_url: Option<String>,
}

/// The threads whose progress the systemd watchdog vouches for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Worker {
    Main,
    Heartbeat,
    Metrics,
    Health,
    Claim,
    Outbox,
    Spool,
    Push,
}

impl Worker {
    pub const ALL: [Worker; 4] = [
        Worker::Main,
        Worker::Heartbeat,
        Worker::Metrics,
        Worker::Health,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Worker::Main => "main",
            Worker::Heartbeat => "heartbeat",
            Worker::Metrics => "metrics",
            Worker::Health => "health",
            Worker::Claim => "claim",
            Worker::Outbox => "outbox",
            Worker::Spool => "spool",
            Worker::Push => "push",
        }
    }
}

pub struct Telemetry {
    pub instance_id: String,
    pub name: String,
    pub manager_url: Option<String>,
    pub started: Instant,
    pub started_at: SystemTime,
    session: Mutex<Session>,
    /// The proxy rule, set once at start, for `/status`.
    pub proxy: std::sync::OnceLock<crate::proxy::ProxyRule>,
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_failed: AtomicU64,
    pub registrations: AtomicU64,
    manager_errors: [AtomicU64; 4],
    pub http_requests: AtomicU64,
    pub http_rejected: AtomicU64,
    pub snapshots: AtomicU64,
    pub stopping: AtomicBool,
    /// Per worker: milliseconds since `started` by which it promised to
    /// report progress again; 0 = not running (not watched).
    progress: [AtomicU64; 8],
    pub pushes: AtomicU64,
    pub push_failures: AtomicU64,
    pub updates_delivered: AtomicU64,
    pub claims: AtomicU64,
    pub invalid_task_ids: AtomicU64,
    /// Set by any thread that met 401/403/404; the heartbeat thread
    /// registers again and clears it.
    need_registration: AtomicBool,
    /// What the task table publishes for the other threads.
    pub tasks: Mutex<TaskView>,
    /// The scrape-time node series reader; held for a whole scrape, so
    /// nothing on the heartbeat path takes it.
    node: Mutex<NodeReader>,
    /// The operator's categories (`OUTPOST_METRICS`), apart from `node` for
    /// the heartbeat's sake.
    node_categories: Categories,
}

/// The task table's public face, refreshed by the main loop.
#[derive(Clone, Debug, Default)]
pub struct TaskView {
    /// Reports of every task not yet final (section 6.3).
    pub reports: Vec<serde_json::Value>,
    pub free_slots: u32,
    pub outbox_pending: usize,
    pub outbox_full: bool,
    /// Final states by (type, state).
    pub finished: std::collections::BTreeMap<(String, String), u64>,
    /// Collectors: (name, restarts, process up, cpu percent, rss bytes).
    pub collectors: Vec<(String, u32, bool, f64, u64)>,
    /// CPU and memory of each task with a live process, for the
    /// `outpost_task_*` series.
    pub usage: Vec<TaskUsage>,
    /// The state directory refuses writes: the latest error, and since
    /// when. Claiming and the spool pause meanwhile.
    pub storage_fault: Option<(String, SystemTime)>,
    /// Writes to the state directory that failed, this instance.
    pub storage_write_errors: u64,
}

/// One task's process usage as `/metrics` shows it.
#[derive(Clone, Debug, Default)]
pub struct TaskUsage {
    pub task_id: String,
    pub type_name: &'static str,
    /// Collectors' name.
    pub name: Option<String>,
    /// utime + stime of the task's process since it started.
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

impl TaskView {
    /// New tasks can be recorded (and so taken) now.
    pub fn can_take_tasks(&self) -> bool {
        self.free_slots > 0 && !self.outbox_full && self.storage_fault.is_none()
    }
}

impl Telemetry {
    pub fn new(
        instance_id: String,
        name: String,
        manager_url: Option<String>,
        heartbeat_interval: Duration,
        poll_wait: Duration,
        pushgateway_url: Option<String>,
    ) -> Telemetry {
        Telemetry {
            instance_id,
            name,
            manager_url,
            started: Instant::now(),
            started_at: SystemTime::now(),
            session: Mutex::new(Session {
                agent_id: None,
                configured: Configured {
                    heartbeat_interval,
                    poll_wait,
                    pushgateway_url: pushgateway_url.clone(),
                },
                registered: false,
                heartbeat_interval,
                poll_wait,
                pushgateway_url,
                last_heartbeat_ok: None,
                last_error: None,
                consecutive_failures: 0,
                heartbeat_metrics: None,
            }),
            proxy: std::sync::OnceLock::new(),
            snapshot: Mutex::new(None),
            heartbeats_sent: AtomicU64::new(0),
            heartbeats_failed: AtomicU64::new(0),
            registrations: AtomicU64::new(0),
            manager_errors: Default::default(),
            http_requests: AtomicU64::new(0),
            http_rejected: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            progress: Default::default(),
            updates_delivered: AtomicU64::new(0),
            pushes: AtomicU64::new(0),
            push_failures: AtomicU64::new(0),
            claims: AtomicU64::new(0),
            invalid_task_ids: AtomicU64::new(0),
            need_registration: AtomicBool::new(false),
            tasks: Mutex::new(TaskView::default()),
            node: Mutex::new(NodeReader::new("/", Categories::ALL)),
            node_categories: Categories::ALL,
        }
    }

    /// Sets the operator's metric categories (`OUTPOST_METRICS`); what is
    /// off is read neither by scrapes nor, through the metrics thread's own
    /// setting, by snapshots.
    pub fn with_node_metrics(mut self, categories: Categories) -> Telemetry {
        self.node = Mutex::new(NodeReader::new("/", categories));
        self.node_categories = categories;
        self
    }

    /// The operator's categories.
    pub fn node_metrics(&self) -> Categories {
        self.node_categories
    }

    /// What heartbeats carry now: the manager's last choice within the
    /// operator's (the operator's word on the device wins, section 5).
    pub fn heartbeat_categories(&self) -> Categories {
        let operator = self.node_metrics();
        match self.session().heartbeat_metrics {
            Some(manager) => manager.intersect(operator),
            None => operator,
        }
    }

    pub fn request_registration(&self) {
        self.need_registration.store(true, Ordering::Relaxed);
    }

    pub fn take_registration_request(&self) -> bool {
        self.need_registration.swap(false, Ordering::Relaxed)
    }

    pub fn task_view(&self) -> MutexGuard<'_, TaskView> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn session(&self) -> MutexGuard<'_, Session> {
        // A poisoned lock only means a panicking writer; the data is plain
        // values and still usable.
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ready(&self) -> bool {
        self.manager_url.is_none() || self.session().registered
    }

    pub fn set_snapshot(&self, snapshot: Snapshot) {
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(snapshot));
        self.snapshots.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn count_manager_error(&self, endpoint: Endpoint) {
        self.manager_errors[endpoint as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn manager_errors(&self, endpoint: Endpoint) -> u64 {
        self.manager_errors[endpoint as usize].load(Ordering::Relaxed)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// `worker` is alive and promises to call again within `within`.
    pub fn progress(&self, worker: Worker, within: Duration) {
        let deadline = self.started.elapsed() + within;
        self.progress[worker as usize].store(deadline.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// `worker` has ended on purpose; the watchdog stops watching it.
    pub fn retire(&self, worker: Worker) {
        self.progress[worker as usize].store(0, Ordering::Relaxed);
    }

    /// The first worker that missed its promise, if any.
    pub fn stalled_worker(&self) -> Option<Worker> {
        let now = self.started.elapsed().as_millis() as u64;
        Worker::ALL.into_iter().find(|w| {
            let deadline = self.progress[*w as usize].load(Ordering::Relaxed);
            deadline != 0 && now > deadline
        })
    }
}

impl Telemetry {
    fn last_heartbeat_ago(&self, session: &Session) -> Option<f64> {
        session
            .last_heartbeat_ok
            .map(|(at, _)| round2(at.elapsed().as_secs_f64()))
    }

    /// `/health`: the process serves; plus how long ago a heartbeat got
    /// through, which is what an operator wants to know next.
    pub fn health_json(&self) -> String {
        // Read before the session lock: no lock is taken inside another.
        let storage_ok = self.task_view().storage_fault.is_none();
        let session = self.session();
        let body = serde_json::json!({
            "status": "ok",
            "uptime_s": round2(self.uptime().as_secs_f64()),
            "mode": if self.manager_url.is_some() { "manager" } else { "manager-less" },
            "last_heartbeat_ok_ago_s": self.last_heartbeat_ago(&session),
            "storage_ok": storage_ok,
        });
        format!("{body}\n")
    }

    /// `/status`: identity, manager connection, tasks, outbox.
    pub fn status_json(&self) -> String {
        let session = self.session().clone();
        let view = self.task_view().clone();
        let body = serde_json::json!({
            "name": self.name,
            "version": crate::VERSION,
            "instance_id": self.instance_id,
            "agent_id": session.agent_id,
            "started_at": clock::rfc3339(self.started_at),
            "uptime_s": round2(self.uptime().as_secs_f64()),
            "ready": self.ready(),
            "stopping": self.stopping.load(Ordering::Relaxed),
            "manager": {
                "url": self.manager_url,
                "registered": session.registered,
                "heartbeat_interval_s": session.heartbeat_interval.as_secs_f64(),
                "poll_wait_s": session.poll_wait.as_secs_f64(),
                "pushgateway_url": session.pushgateway_url,
                "heartbeat_metrics": session
                    .heartbeat_metrics
                    .unwrap_or(self.node_categories)
                    .intersect(self.node_categories)
                    .to_string(),
                "last_heartbeat_ok_at": session.last_heartbeat_ok.map(|(_, at)| clock::rfc3339(at)),
                "last_heartbeat_ok_ago_s": self.last_heartbeat_ago(&session),
                "consecutive_failures": session.consecutive_failures,
                "last_error": session.last_error,
                "heartbeats_sent": self.heartbeats_sent.load(Ordering::Relaxed),
                "heartbeats_failed": self.heartbeats_failed.load(Ordering::Relaxed),
            },
            "metrics": self.node_categories.to_string(),
            "tasks": view.reports,
            "outbox": {
                "pending": view.outbox_pending,
                "full": view.outbox_full,
                "delivered": self.updates_delivered.load(Ordering::Relaxed),
            },
            "proxy": self.proxy.get().map(|rule| serde_json::json!({
                "manager": self.manager_url.as_deref().map(|u| rule.route(u).to_string()),
                "pushgateway": session.pushgateway_url.as_deref().map(|u| rule.route(u).to_string()),
                "downloads": format!("per URL; an https:// one goes {}", rule.route("https://download.invalid/")),
            })),
            "storage": {
                "ok": view.storage_fault.is_none(),
                "error": view.storage_fault.as_ref().map(|(e, _)| e),
                "failing_since": view.storage_fault.as_ref().map(|(_, at)| clock::rfc3339(*at)),
                "write_errors": view.storage_write_errors,
                "taking_tasks": view.can_take_tasks(),
            },
        });
        format!("{body}\n")
    }

    /// `/metrics` (and the Pushgateway body): agent series, then node series
    /// from the latest snapshot.
    pub fn render_metrics(&self) -> String {
        let mut exp = Exposition::new();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        exp.family(
            "outpost_build_info",
            "Agent version; always 1.",
            Kind::Gauge,
        )
        .sample("outpost_build_info", &[("version", crate::VERSION)], 1.0);
        exp.single(
            "outpost_uptime_seconds",
            "Seconds since this agent instance started.",
            Kind::Gauge,
            self.uptime().as_secs_f64(),
        );
        let session = self.session().clone();
        exp.single(
            "outpost_registered",
            "1 once this instance has registered with the manager.",
            Kind::Gauge,
            if session.registered { 1.0 } else { 0.0 },
        );
        exp.single(
            "outpost_registrations_total",
            "Successful registrations of this instance.",
            Kind::Counter,
            load(&self.registrations),
        );
        exp.single(
            "outpost_heartbeats_sent_total",
            "Heartbeats the manager acknowledged.",
            Kind::Counter,
            load(&self.heartbeats_sent),
        );
        exp.single(
            "outpost_heartbeats_failed_total",
            "Heartbeats that failed.",
            Kind::Counter,
            load(&self.heartbeats_failed),
        );
        if let Some(ago) = self.last_heartbeat_ago(&session) {
            exp.single(
                "outpost_last_heartbeat_success_age_seconds",
                "Seconds since the last acknowledged heartbeat.",
                Kind::Gauge,
                ago,
            );
        }
        exp.family(
            "outpost_manager_errors_total",
            "Failed manager calls by endpoint.",
            Kind::Counter,
        );
        for endpoint in Endpoint::ALL {
            exp.sample(
                "outpost_manager_errors_total",
                &[("endpoint", endpoint.label())],
                self.manager_errors(endpoint) as f64,
            );
        }
        exp.single(
            "outpost_http_requests_total",
            "Requests answered by the local responder.",
            Kind::Counter,
            load(&self.http_requests),
        );
        exp.single(
            "outpost_http_connections_dropped_total",
            "Unfinished responder connections dropped to admit new ones.",
            Kind::Counter,
            load(&self.http_rejected),
        );
        exp.single(
            "outpost_snapshots_total",
            "Metrics snapshots taken.",
            Kind::Counter,
            load(&self.snapshots),
        );
        let view = self.task_view().clone();
        exp.single(
            "outpost_tasks_running",
            "Tasks not yet in a final state.",
            Kind::Gauge,
            view.reports.len() as f64,
        );
        exp.family(
            "outpost_tasks_finished_total",
            "Tasks that reached a final state, by type and state.",
            Kind::Counter,
        );
        for ((type_name, state), count) in &view.finished {
            exp.sample(
                "outpost_tasks_finished_total",
                &[("type", type_name), ("state", state)],
                *count as f64,
            );
        }
        if !view.collectors.is_empty() {
            exp.family(
                "outpost_collector_up",
                "1 while the collector's process runs.",
                Kind::Gauge,
            );
            for (name, _, up, _, _) in &view.collectors {
                exp.sample(
                    "outpost_collector_up",
                    &[("name", name)],
                    if *up { 1.0 } else { 0.0 },
                );
            }
            exp.family(
                "outpost_collector_restarts_total",
                "Restarts of the collector since its task started.",
                Kind::Counter,
            );
            for (name, restarts, _, _, _) in &view.collectors {
                exp.sample(
                    "outpost_collector_restarts_total",
                    &[("name", name)],
                    f64::from(*restarts),
                );
            }
        }
        write_task_usage(&mut exp, &view.usage);
        exp.single(
            "outpost_outbox_pending",
            "Status updates waiting in the durable outbox.",
            Kind::Gauge,
            view.outbox_pending as f64,
        );
        exp.single(
            "outpost_outbox_full",
            "1 while the outbox is at its limit and claiming is paused.",
            Kind::Gauge,
            if view.outbox_full { 1.0 } else { 0.0 },
        );
        exp.single(
            "outpost_storage_ok",
            "0 while the state directory refuses writes and no new task is taken.",
            Kind::Gauge,
            if view.storage_fault.is_none() {
                1.0
            } else {
                0.0
            },
        );
        exp.single(
            "outpost_storage_write_errors_total",
            "Writes to the state directory that failed.",
            Kind::Counter,
            view.storage_write_errors as f64,
        );
        exp.single(
            "outpost_status_updates_delivered_total",
            "Status updates the manager acknowledged.",
            Kind::Counter,
            load(&self.updates_delivered),
        );
        exp.single(
            "outpost_claims_total",
            "Claim round trips that got an answer.",
            Kind::Counter,
            load(&self.claims),
        );
        exp.single(
            "outpost_pushgateway_pushes_total",
            "Metrics pushes the Pushgateway accepted.",
            Kind::Counter,
            load(&self.pushes),
        );
        exp.single(
            "outpost_pushgateway_failures_total",
            "Metrics pushes that failed.",
            Kind::Counter,
            load(&self.push_failures),
        );
        exp.single(
            "outpost_invalid_task_ids_total",
            "Tasks dropped because their id breaks the id rule.",
            Kind::Counter,
            load(&self.invalid_task_ids),
        );
        let snapshot = self.snapshot();
        self.node.lock().unwrap_or_else(|p| p.into_inner()).write(
            &mut exp,
            snapshot.as_deref(),
            SystemTime::now(),
        );
        exp.finish()
    }
}

impl Telemetry {
    /// One line for `systemctl status`: who we are to the manager, tasks,
    /// outbox, and the last error if the link is failing.
    pub fn status_line(&self) -> String {
        let session = self.session();
        let link = match (&self.manager_url, &session.agent_id, session.registered) {
            (None, _, _) => "manager-less".to_string(),
            (Some(_), Some(id), true) if session.consecutive_failures == 0 => {
                format!("registered as {id}")
            }
            (Some(_), Some(id), true) => format!("registered as {id}, manager unreachable"),
            (Some(_), _, _) => "registering".to_string(),
        };
        drop(session);
        let (running, pending, storage) = {
            let view = self.task_view();
            (
                view.reports.len(),
                view.outbox_pending,
                view.storage_fault.clone(),
            )
        };
        let session = self.session();
        let mut line = format!("{link}; {running} tasks running; outbox {pending}");
        if let Some((error, _)) = storage {
            line.push_str("; state directory failing: ");
            line.push_str(&error);
        }
        if let Some(error) = &session.last_error {
            line.push_str("; last error: ");
            line.push_str(error);
        }
        line
    }
}

/// `outpost_task_cpu_seconds_total` and `outpost_task_memory_rss_bytes`
/// (section 7.1): counters and levels, so Prometheus works out rates.
fn write_task_usage(exp: &mut Exposition, usage: &[TaskUsage]) {
    if usage.is_empty() {
        return;
    }
    type Field = fn(&TaskUsage) -> f64;
    let families: [(&str, &str, Kind, Field); 2] = [
        (
            "outpost_task_cpu_seconds_total",
            "CPU time (user + system) of the task's process.",
            Kind::Counter,
            |u| u.cpu_seconds,
        ),
        (
            "outpost_task_memory_rss_bytes",
            "Resident memory of the task's process.",
            Kind::Gauge,
            |u| u.rss_bytes as f64,
        ),
    ];
    for (family, help, kind, get) in families {
        exp.family(family, help, kind);
        for u in usage {
            match &u.name {
                Some(name) => exp.sample(
                    family,
                    &[
                        ("task_id", &u.task_id),
                        ("type", u.type_name),
                        ("name", name),
                    ],
                    get(u),
                ),
                None => exp.sample(
                    family,
                    &[("task_id", &u.task_id), ("type", u.type_name)],
                    get(u),
                ),
            };
        }
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missed_promise_is_a_stall() {
        let t = Telemetry::new(
            "i".into(),
            "n".into(),
            None,
            Duration::from_secs(5),
            Duration::from_secs(25),
            None,
        );
        assert_eq!(t.stalled_worker(), None);
        t.progress(Worker::Heartbeat, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(t.stalled_worker(), Some(Worker::Heartbeat));
        t.progress(Worker::Heartbeat, Duration::from_secs(60));
        assert_eq!(t.stalled_worker(), None);
        t.retire(Worker::Heartbeat);
        assert_eq!(t.stalled_worker(), None);
        assert!(t.ready(), "manager-less is ready at once");
    }
}
