//! The task table: every task this instance is running, and the one place
//! task states change.
//!
//! It is owned by the main loop and touched by nothing else, so it needs no
//! lock. This file holds intake (decoding, at-most-once, capacity), starting
//! and stopping, and the final state of each exit. Its parts:
//!
//! - `durable`: every state change made durable and delivered, and what a
//!   state directory that refuses writes means for tasks;
//! - `recovery`: what a previous instance left behind;
//! - `reports`: the task view other threads read;
//! - `payload`, `iperf`, `collector`: each task type's own knowledge.

mod agent_update;
mod cgroups;
pub mod collector;
mod durable;
pub mod iperf;
pub mod payload;
mod recovery;
mod reports;

pub use agent_update::{Handed, HandedRun, unix_now};
pub use durable::STORAGE_RETRY_EVERY;
use durable::Storage;
pub use iperf::{is_listening, listening_inodes};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::error::Result;
use crate::ledger::{Ledger, Origin, ProcessRef, Record};
use crate::outbox::Outbox;
use crate::supervisor::{Exit, ExitStatus, Output, Spec, Started, Supervisor};
use crate::telemetry::Telemetry;
use crate::update::{ErrorKind, State};
use payload::{Kind, Refusal, Task};

/// One-shot tasks that are still running after this long report `accepted`.
const ACCEPTED_AFTER: Duration = Duration::from_secs(1);
/// A client run gets its test time plus this before `timeout_s` applies by
/// default (connection set-up, omitted seconds, the final exchange).
const CLIENT_TIMEOUT_SLACK: Duration = Duration::from_secs(60);

/// What became of a task handed to [`Tasks::accept`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intake {
    /// In the ledger: it runs (or was reported) from here on.
    Taken,
    /// Not recorded, because the state directory cannot be written. A
    /// manager's task waits in memory and is taken once the directory works
    /// again (a restart meanwhile loses it, and the manager hands it out
    /// again); a spool file stays in `inbox/`.
    Deferred,
}

pub struct Settings {
    pub iperf3: String,
    /// `iperf3 --version`'s number, when iperf3 can be run.
    pub iperf3_version: Option<String>,
    pub stop_grace: Duration,
    pub max_tasks: u32,
    pub state_dir: PathBuf,
    pub config_dir: PathBuf,
    pub collector_cmd: Vec<String>,
    pub allow_http_config: bool,
    /// The delegated cgroup v2 subtree, when there is one (section 4.2).
    pub cgroups: Option<crate::cgroup::Cgroups>,
}

/// Why the agent is ending a task's process.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ending {
    /// `task_stop` or `kill_all`: the task ends `stopped`.
    Stopped,
    /// `timeout_s` passed: `failed` with `timeout`.
    Timeout,
    /// The agent is shutting down (section 8).
    AgentStopping,
    /// A collector making way for the task that replaces it.
    Replaced,
}

struct Live {
    task: Task,
    state: State,
    /// `accepted` has been reported (tasks that take over a second).
    accepted_reported: bool,
    accepted: Instant,
    started_at: SystemTime,
    process: Option<Started>,
    deadline: Option<Instant>,
    ending: Option<Ending>,
    /// Servers: when to give up waiting for the listening socket.
    ready_by: Option<Instant>,
    /// kill_all / task_stop: the tasks whose end completes this one.
    waiting_for: HashSet<String>,
    stopped_count: u64,
    usage: Option<(u64, Instant, f64, u64)>,
    collector: Option<collector::Run>,
}

pub struct Tasks {
    settings: Settings,
    ledger: Ledger,
    outbox: Option<Arc<Outbox>>,
    results: PathBuf,
    supervisor: Supervisor,
    telemetry: Arc<Telemetry>,
    live: BTreeMap<String, Live>,
    by_pid: HashMap<i32, String>,
    finished: BTreeMap<(String, String), u64>,
    last_view: Option<Instant>,
    store: collector::Store,
    /// Collector name → the task that owns it now.
    collectors: BTreeMap<String, String>,
    fetcher: Arc<crate::fetch::Fetcher>,
    events: std::sync::mpsc::Sender<crate::event::Event>,
    storage: Storage,
    results_pruned: Option<Instant>,
    /// Tasks whose previous-instance processes are being stopped, with the
    /// collector to resume once they are gone.
    awaiting_leftovers: BTreeMap<String, Option<(String, collector::Desired)>>,
    /// Task id → its cgroup (section 4.2), while it is not final.
    cgroup_of: HashMap<String, cgroups::TaskCgroup>,
    /// The `agent_update` in progress or on probation (section 4.3).
    updating: Option<agent_update::Updating>,
    /// When the probation of the version running now ends.
    probation_until: Option<Instant>,
}

impl Live {
    /// Has something `task_stop` or `kill_all` can stop.
    fn stoppable(&self) -> bool {
        self.ending.is_none() && (self.process.is_some() || self.collector.is_some())
    }
}

impl Tasks {
    /// Opens the ledger and results directory, reconciles the ledger with
    /// the outbox, and settles every task an earlier instance left behind.
    pub fn open(
        settings: Settings,
        outbox: Option<Arc<Outbox>>,
        supervisor: Supervisor,
        telemetry: Arc<Telemetry>,
        fetcher: crate::fetch::Fetcher,
        events: std::sync::mpsc::Sender<crate::event::Event>,
        handover: Option<&mut crate::handover::Handover>,
    ) -> Result<Tasks> {
        let results = settings.state_dir.join("results");
        let store = collector::Store::open(&settings.state_dir, &settings.config_dir)?;
        crate::state::ensure_private_dir(&results)?;
        let mut ledger = Ledger::open(&settings.state_dir)?;
        // An update reaches the outbox before the ledger; a crash between
        // the two leaves the outbox ahead, so the ledger catches up here.
        if let Some(outbox) = &outbox {
            outbox.each_pending(|update| {
                if let Some(record) = ledger.get(&update.task_id).cloned()
                    && update.seq > record.seq
                    && let Err(e) = ledger.put(Record {
                        state: update.state,
                        seq: update.seq,
                        last: Some(update),
                        ..record
                    })
                {
                    // Kept in memory; the storage retry writes it.
                    log::error!("{e}");
                }
            });
        }
        let mut tasks = Tasks {
            settings,
            ledger,
            outbox,
            results,
            supervisor,
            telemetry,
            live: BTreeMap::new(),
            by_pid: HashMap::new(),
            finished: BTreeMap::new(),
            last_view: None,
            store,
            collectors: BTreeMap::new(),
            fetcher: Arc::new(fetcher),
            events,
            storage: Storage::default(),
            results_pruned: None,
            awaiting_leftovers: BTreeMap::new(),
            cgroup_of: HashMap::new(),
            updating: None,
            probation_until: None,
        };
        if tasks.ledger.needs_rewrite() {
            tasks.storage_failed(&crate::error::Error::io(
                "rewrite",
                tasks.settings.state_dir.join("ledger.jsonl"),
                std::io::Error::other("the ledger could not be rewritten at start"),
            ));
        }
        // Children handed over by the previous program image are taken
        // before recovery, which then leaves them alone.
        if let Some(handover) = handover {
            tasks.adopt(handover);
        }
        tasks.recover();
        tasks.prune_results();
        tasks.refresh_view(true);
        Ok(tasks)
    }

    /// Free slots for claiming (section 3.3).
    pub fn free_slots(&self) -> u32 {
        self.settings
            .max_tasks
            .saturating_sub(self.live.len() as u32)
    }

    /// Takes a task from a claim or a spool file. `Err` (with the reason)
    /// only for a task whose id breaks the id rule: it cannot be reported.
    pub fn accept(&mut self, value: &Value, origin: Origin) -> std::result::Result<Intake, String> {
        let intake = self.take(value, origin)?;
        // The claim asked for no more than the free slots, so this holds
        // at most a slot's worth of tasks.
        if intake == Intake::Deferred
            && origin == Origin::Manager
            && self.storage.deferred.len() < self.settings.max_tasks as usize
        {
            self.storage.deferred.push(value.clone());
        }
        Ok(intake)
    }

    fn take(&mut self, value: &Value, origin: Origin) -> std::result::Result<Intake, String> {
        let task = match payload::decode(value) {
            Ok(task) => task,
            Err(Refusal::BadId { escaped }) => {
                self.telemetry
                    .invalid_task_ids
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let why = format!(
                    "task id {escaped:?} breaks the id rule (1-128 of A-Z a-z 0-9 . _ : -)"
                );
                log::warn!("dropped a task: {why}; no update can name it");
                return Err(why);
            }
            Err(Refusal::Rejected {
                id,
                type_name,
                kind,
                message,
            }) => {
                if self.ledger.get(&id).is_some() {
                    self.handed_out_again(&id);
                    return Ok(Intake::Taken);
                }
                log::warn!(task_id = id.as_str(); "task {id} rejected: {message}");
                return Ok(self.reject(&id, &type_name, origin, kind, message));
            }
        };
        if self.ledger.get(&task.id).is_some() {
            self.handed_out_again(&task.id);
            return Ok(Intake::Taken);
        }
        if task.limits.is_some() && self.settings.cgroups.is_none() {
            // Section 4.2: a limit is never silently not enforced. This
            // agent has no delegated cgroup v2 subtree to enforce one in.
            let message = "limits: this agent cannot enforce resource limits (no delegated cgroup v2 subtree)".to_string();
            return Ok(self.reject(
                &task.id,
                task.kind.type_name(),
                origin,
                ErrorKind::LimitsUnavailable,
                message,
            ));
        }
        if self.live.len() as u32 >= self.settings.max_tasks {
            let message = format!("{} tasks are running, the limit", self.settings.max_tasks);
            return Ok(self.reject(
                &task.id,
                task.kind.type_name(),
                origin,
                ErrorKind::Capacity,
                message,
            ));
        }
        if matches!(task.kind, Kind::AgentUpdate(_)) && self.update_in_progress() {
            return Ok(self.reject(
                &task.id,
                task.kind.type_name(),
                origin,
                ErrorKind::Capacity,
                "another agent_update is in progress".to_string(),
            ));
        }
        if let Kind::IperfServer(server) = &task.kind
            && let Some(other) = self.server_on_port(server.port)
        {
            let message = format!("port: {} is already served by task {other}", server.port);
            return Ok(self.reject(
                &task.id,
                task.kind.type_name(),
                origin,
                ErrorKind::InvalidPayload,
                message,
            ));
        }
        Ok(self.start(task, origin))
    }

    /// Records a task that never runs and reports it `rejected`.
    fn reject(
        &mut self,
        id: &str,
        type_name: &str,
        origin: Origin,
        kind: ErrorKind,
        message: String,
    ) -> Intake {
        if self.new_record(id, type_name, origin) == Intake::Deferred {
            return Intake::Deferred;
        }
        self.emit_for(id, State::Rejected, |u| {
            *u = u.clone().with_error(kind, message)
        });
        Intake::Taken
    }

    /// Notes a task's (new) process in the ledger, so that a restart can
    /// find and stop it.
    fn record_process(&mut self, id: &str, started: Started) {
        if let Some(mut record) = self.ledger.get(id).cloned() {
            record.process = Some(ProcessRef {
                pid: started.pid,
                start_ticks: started.start_ticks,
            });
            if let Err(e) = self.ledger.put(record) {
                log::error!(task_id = id; "cannot record the process of task {id}: {e}");
                self.storage_failed(&e);
            }
        }
    }

    /// Section 6.2: a task id runs at most once. Its final update is sent
    /// again when known; a task still running is left alone.
    fn handed_out_again(&mut self, id: &str) {
        let Some(record) = self.ledger.get(id).cloned() else {
            return;
        };
        log::info!(task_id = id; "task {id} handed out again; it is not run twice");
        if record.state.is_final()
            && let Some(last) = record.last
        {
            self.deliver(record.origin, &last);
        }
    }

    fn server_on_port(&self, port: u16) -> Option<String> {
        self.live.values().find_map(|l| match &l.task.kind {
            Kind::IperfServer(s) if s.port == port => Some(l.task.id.clone()),
            _ => None,
        })
    }

    /// Puts a new task id in the ledger; `Deferred` when it cannot be made
    /// durable, and then the task must not run.
    fn new_record(&mut self, id: &str, type_name: &str, origin: Origin) -> Intake {
        let record = Record {
            id: id.to_string(),
            type_name: type_name.to_string(),
            origin,
            state: State::Accepted,
            seq: 0,
            last: None,
            process: None,
            finished: 0,
        };
        match self.ledger.put(record) {
            Ok(()) => Intake::Taken,
            Err(e) => {
                log::error!(task_id = id; "task {id} not taken: cannot record it in the ledger: {e}; it is taken once the state directory can be written");
                self.storage_failed(&e);
                Intake::Deferred
            }
        }
    }

    fn start(&mut self, task: Task, origin: Origin) -> Intake {
        let id = task.id.clone();
        // The ledger knows the id before anything runs: at most once.
        if self.new_record(&id, task.kind.type_name(), origin) == Intake::Deferred {
            return Intake::Deferred;
        }
        self.run_recorded(task);
        Intake::Taken
    }

    /// Starts a task the ledger now holds.
    fn run_recorded(&mut self, task: Task) {
        let id = task.id.clone();
        let mut live = Live {
            deadline: None,
            task,
            state: State::Accepted,
            accepted_reported: false,
            accepted: Instant::now(),
            started_at: SystemTime::now(),
            process: None,
            ending: None,
            ready_by: None,
            waiting_for: HashSet::new(),
            stopped_count: 0,
            usage: None,
            collector: None,
        };
        let spec = match &live.task.kind {
            Kind::IperfServer(server) => Some(iperf::server_args(
                server,
                iperf::knows_stall_timeouts(self.settings.iperf3_version.as_deref()),
            )),
            Kind::IperfClient(client) => Some(iperf::client_args(client)),
            _ => None,
        };
        if let Some(args) = spec {
            let stdout = match live.task.kind {
                Kind::IperfClient(_) => Output::Capture {
                    max: iperf::MAX_JSON_BYTES,
                },
                _ => Output::Discard,
            };
            let limits = live.task.limits.clone();
            let spawned = self.cgroup_for(&id, limits.as_ref()).and_then(|cgroup| {
                let spec = Spec {
                    program: self.settings.iperf3.clone(),
                    args,
                    stdout,
                    stderr_log: None,
                    task_id: Some(id.clone()),
                    cgroup,
                };
                self.supervisor.spawn(&spec).map_err(|e| e.to_string())
            });
            match spawned {
                Ok(started) => {
                    log::info!(task_id = id.as_str(); "task {id} ({}) started as pid {}", live.task.kind.type_name(), started.pid);
                    live.process = Some(started);
                    self.by_pid.insert(started.pid, id.clone());
                    self.record_process(&id, started);
                    live.deadline = match (&live.task.kind, live.task.timeout) {
                        (_, Some(t)) => Some(Instant::now() + t),
                        (Kind::IperfClient(c), None) => Some(
                            Instant::now()
                                + Duration::from_secs(u64::from(c.time) + u64::from(c.omit))
                                + CLIENT_TIMEOUT_SLACK,
                        ),
                        _ => None,
                    };
                    if matches!(live.task.kind, Kind::IperfServer(_)) {
                        live.ready_by = Some(Instant::now() + iperf::SERVER_READY_TIMEOUT);
                    }
                    self.live.insert(id.clone(), live);
                    self.probe_servers();
                }
                Err(e) => {
                    log::warn!(task_id = id.as_str(); "task {id}: {e}");
                    self.drop_cgroup(&id);
                    self.emit_for(&id, State::Failed, |u| {
                        *u = u.clone().with_error(ErrorKind::SpawnFailed, e.clone());
                    });
                }
            }
            return;
        }
        match live.task.kind.clone() {
            Kind::SystemInfo => {
                let info = crate::sysinfo::gather(Path::new("/"));
                let result = serde_json::to_value(info).unwrap_or(Value::Null);
                self.emit_for(&id, State::Succeeded, |u| u.result = Some(result));
            }
            Kind::KillAll => {
                let targets: Vec<String> = self
                    .live
                    .values()
                    .filter(|l| l.stoppable())
                    .map(|l| l.task.id.clone())
                    .collect();
                live.stopped_count = targets.len() as u64;
                for target in &targets {
                    self.stop_task(target, Ending::Stopped);
                }
                live.waiting_for = targets.into_iter().collect();
                self.live.insert(id.clone(), live);
                self.complete_waiters();
            }
            Kind::TaskStop { task_id } => {
                let stoppable = self.live.get(&task_id).is_some_and(Live::stoppable);
                if !stoppable {
                    self.emit_for(&id, State::Failed, |u| {
                        *u = u
                            .clone()
                            .with_error(ErrorKind::NotFound, format!("no running task {task_id}"));
                    });
                    return;
                }
                self.stop_task(&task_id, Ending::Stopped);
                live.waiting_for.insert(task_id);
                self.live.insert(id.clone(), live);
            }
            Kind::CollectorStart(c) => self.start_collector(live, c),
            Kind::AgentUpdate(u) => self.start_agent_update(live, u),
            Kind::CollectorStop { name } => {
                let Some(owner) = self.collectors.get(&name).cloned() else {
                    self.emit_for(&id, State::Failed, |u| {
                        *u = u
                            .clone()
                            .with_error(ErrorKind::NotFound, format!("no collector named {name}"));
                    });
                    return;
                };
                self.stop_task(&owner, Ending::Stopped);
                if self.live.contains_key(&owner) {
                    live.waiting_for.insert(owner);
                }
                self.live.insert(id.clone(), live);
                self.complete_waiters();
            }
            Kind::IperfServer(_) | Kind::IperfClient(_) => {}
        }
    }

    fn stop_task(&mut self, id: &str, why: Ending) {
        let Some(live) = self.live.get_mut(id) else {
            return;
        };
        if live.ending.is_some() {
            return;
        }
        live.ending = Some(why);
        match live.process {
            Some(p) => self.supervisor.stop(p.pid, self.settings.stop_grace),
            // A collector between restarts has no process to wait for.
            None if live.collector.is_some() => self.collector_ended_without_process(id),
            None => {}
        }
    }

    /// A child ended: its task reaches a final state.
    pub fn on_exit(&mut self, exit: Exit) {
        let Some(id) = self.by_pid.remove(&exit.pid) else {
            return;
        };
        let Some(live) = self.live.remove(&id) else {
            return;
        };
        if live.collector.is_some() {
            self.collector_exit(id, live, exit);
            self.complete_waiters();
            self.refresh_view(true);
            return;
        }
        let code = match exit.status {
            ExitStatus::Code(c) => Some(c),
            ExitStatus::Signal(_) => None,
        };
        let tail = (!exit.stderr_tail.is_empty()).then(|| exit.stderr_tail.clone());
        let pid = exit.pid;
        if live.ending.is_none() && self.oom_killed(&id) {
            let limit = live.task.limits.as_ref().and_then(|l| l.memory_max_bytes);
            let message = match limit {
                Some(bytes) => format!(
                    "killed by the kernel: over its memory limit (memory_max_bytes {bytes})"
                ),
                None => "killed by the kernel: out of memory".to_string(),
            };
            log::warn!(task_id = id.as_str(); "task {id}: {message}");
            self.emit_for(&id, State::Failed, |u| {
                *u = u.clone().with_error(ErrorKind::OomKilled, message.clone());
                u.pid = Some(pid);
                u.exit_code = code;
                u.stderr_tail = tail.clone();
            });
            self.complete_waiters();
            self.refresh_view(true);
            return;
        }
        match (live.ending, &live.task.kind) {
            (Some(Ending::Stopped), _) => self.emit_for(&id, State::Stopped, |u| {
                u.pid = Some(pid);
                u.exit_code = code;
            }),
            (Some(Ending::Timeout), _) => self.emit_for(&id, State::Failed, |u| {
                *u = u.clone().with_error(
                    ErrorKind::Timeout,
                    format!(
                        "timeout_s passed after {}s; stopped",
                        live.accepted.elapsed().as_secs()
                    ),
                );
                u.pid = Some(pid);
                u.exit_code = code;
                u.stderr_tail = tail.clone();
            }),
            (Some(Ending::AgentStopping), Kind::IperfServer(_)) => {
                self.emit_for(&id, State::Stopped, |u| {
                    u.pid = Some(pid);
                    u.exit_code = code;
                })
            }
            // Only collectors are replaced; they never reach this match.
            (Some(Ending::AgentStopping) | Some(Ending::Replaced), _) => {
                self.emit_for(&id, State::Failed, |u| {
                    *u = u.clone().with_error(
                        ErrorKind::AgentStopped,
                        "the agent stopped while the task ran",
                    );
                    u.pid = Some(pid);
                    u.stderr_tail = tail.clone();
                })
            }
            (None, Kind::IperfClient(_)) => {
                match iperf::client_outcome(
                    code,
                    &exit.stdout,
                    exit.stdout_truncated,
                    &exit.stderr_tail,
                ) {
                    iperf::Outcome::Succeeded(result) => {
                        self.emit_for(&id, State::Succeeded, |u| {
                            u.pid = Some(pid);
                            u.exit_code = code;
                            u.result = Some(result);
                        })
                    }
                    iperf::Outcome::Failed(kind, message) => {
                        self.emit_for(&id, State::Failed, |u| {
                            *u = u.clone().with_error(kind, message.clone());
                            u.pid = Some(pid);
                            u.exit_code = code;
                            u.stderr_tail = tail.clone();
                        })
                    }
                }
            }
            (None, _) => {
                // A server that ends on its own has failed, in iperf3's own
                // words: its last error line (it ends with "iperf3: exiting").
                let words = iperf::last_error_line(&exit.stderr_tail);
                let message = if words.is_empty() {
                    format!("iperf3 {}", exit.status.describe())
                } else {
                    words
                };
                let kind = match code {
                    Some(0) if live.state == State::Running => ErrorKind::Exited,
                    _ => ErrorKind::ExitNonzero,
                };
                // A one-off server that served its client is done, not broken.
                let one_off_done = matches!(&live.task.kind, Kind::IperfServer(s) if s.one_off)
                    && code == Some(0)
                    && live.state == State::Running;
                if one_off_done {
                    self.emit_for(&id, State::Succeeded, |u| {
                        u.pid = Some(pid);
                        u.exit_code = code;
                    });
                } else {
                    self.emit_for(&id, State::Failed, |u| {
                        *u = u.clone().with_error(kind, message.clone());
                        u.pid = Some(pid);
                        u.exit_code = code;
                        u.stderr_tail = tail.clone();
                    });
                }
            }
        }
        self.complete_waiters();
        self.refresh_view(true);
    }

    /// kill_all and task_stop succeed once what they stopped has ended.
    fn complete_waiters(&mut self) {
        let done: Vec<(String, u64, bool)> = self
            .live
            .values()
            .filter(|l| {
                matches!(
                    l.task.kind,
                    Kind::KillAll | Kind::TaskStop { .. } | Kind::CollectorStop { .. }
                )
            })
            .filter(|l| l.waiting_for.iter().all(|t| !self.live.contains_key(t)))
            .map(|l| {
                (
                    l.task.id.clone(),
                    l.stopped_count,
                    matches!(l.task.kind, Kind::KillAll),
                )
            })
            .collect();
        for (id, stopped, is_kill_all) in done {
            self.live.remove(&id);
            self.emit_for(&id, State::Succeeded, |u| {
                if is_kill_all {
                    u.result = Some(json!({ "stopped": stopped }));
                }
            });
        }
    }

    /// Time-driven work: `accepted` after a second, timeouts, servers
    /// becoming ready. Returns when it wants to be called again.
    pub fn tick(&mut self) -> Duration {
        let now = Instant::now();
        let due_accepted: Vec<String> = self
            .live
            .values()
            .filter(|l| {
                l.state == State::Accepted
                    && !l.accepted_reported
                    && now.duration_since(l.accepted) >= ACCEPTED_AFTER
            })
            .map(|l| l.task.id.clone())
            .collect();
        for id in due_accepted {
            if let Some(l) = self.live.get_mut(&id) {
                l.accepted_reported = true;
            }
            let pid = self.live.get(&id).and_then(|l| l.process.map(|p| p.pid));
            self.emit_for(&id, State::Accepted, |u| u.pid = pid);
        }
        let timed_out: Vec<String> = self
            .live
            .values()
            .filter(|l| l.ending.is_none() && l.deadline.is_some_and(|d| d <= now))
            .map(|l| l.task.id.clone())
            .collect();
        for id in timed_out {
            log::warn!(task_id = id.as_str(); "task {id} ran past its timeout; stopping it");
            self.stop_task(&id, Ending::Timeout);
        }
        self.probe_servers();
        let collectors_next = self.tick_collectors();
        self.retry_storage();
        if self
            .results_pruned
            .is_none_or(|t| t.elapsed() >= durable::PRUNE_RESULTS_EVERY)
        {
            self.prune_results();
        }
        self.refresh_view(false);
        let next = if self.live.values().any(|l| l.ready_by.is_some()) {
            iperf::SERVER_PROBE_EVERY
        } else {
            Duration::from_millis(500)
        };
        next.min(collectors_next)
    }

    /// Section 8: stop every child; the exits arrive through `on_exit`.
    pub fn begin_shutdown(&mut self) {
        let ids: Vec<String> = self.live.keys().cloned().collect();
        for id in ids {
            if let Some(live) = self.live.get_mut(&id) {
                live.ending = Some(Ending::AgentStopping);
                if let Some(p) = live.process {
                    self.supervisor.stop(p.pid, self.settings.stop_grace);
                }
            }
        }
    }

    /// True once no task has a process left.
    pub fn all_processes_gone(&self) -> bool {
        self.live.values().all(|l| l.process.is_none())
    }

    /// Records what shutdown leaves: tasks without a process (kill_all,
    /// task_stop waiting) end `failed` with `agent_stopped`.
    pub fn finish_shutdown(&mut self) {
        let ids: Vec<String> = self.live.keys().cloned().collect();
        for id in ids {
            let Some(live) = self.live.remove(&id) else {
                continue;
            };
            if live.collector.is_some() && live.process.is_none() {
                // Keeps its desired state; it runs again at the next start.
                continue;
            }
            if let Some(p) = live.process {
                log::warn!(task_id = id.as_str(); "task {id}: pid {} did not exit in time", p.pid);
            }
            self.emit_for(&id, State::Failed, |u| {
                *u = u.clone().with_error(
                    ErrorKind::AgentStopped,
                    "the agent stopped while the task ran",
                );
            });
        }
        self.refresh_view(true);
    }

    pub fn running_count(&self) -> usize {
        self.live.len()
    }
}
