//! The task table: every task this instance is running, and the one place
//! task states change.
//!
//! It is owned by the main loop and touched by nothing else, so it needs no
//! lock. Every state change goes through [`Tasks::emit`]: it numbers the
//! update, makes it durable (the outbox for manager tasks, first; then the
//! ledger; for spool tasks the ledger, then `results/<id>.json`) and only
//! then is anything else allowed to happen. The submodules hold the task
//! types' own knowledge: checking payloads, and iperf3's arguments and JSON.
//!
//! When the state directory cannot be written (a full disk), the table
//! takes no new task (one that cannot be recorded must not run), keeps what
//! it could not write in memory, publishes the fault for `/status`,
//! `/metrics` and the claim and spool threads, and retries the writes every
//! [`STORAGE_RETRY_EVERY`] until they go through.

pub mod collector;
pub mod iperf;
pub mod payload;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::clock;
use crate::error::Result;
use crate::ledger::{Ledger, Origin, ProcessRef, Record};
use crate::outbox::Outbox;
use crate::supervisor::{self, Exit, ExitStatus, Output, Spec, Started, Supervisor};
use crate::telemetry::Telemetry;
use crate::update::{State, Update};
use payload::{Kind, Refusal, Task};

/// One-shot tasks that are still running after this long report `accepted`.
const ACCEPTED_AFTER: Duration = Duration::from_secs(1);
/// How long an iperf3 server has to start listening.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a starting server's listening socket is looked for.
const SERVER_PROBE_EVERY: Duration = Duration::from_millis(10);
/// How long a process's CPU and memory reading is reused in reports.
const USAGE_EVERY: Duration = Duration::from_secs(5);
/// A client run gets its test time plus this before `timeout_s` applies by
/// default (connection set-up, omitted seconds, the final exchange).
const CLIENT_TIMEOUT_SLACK: Duration = Duration::from_secs(60);
/// How often writes that failed are tried again.
pub const STORAGE_RETRY_EVERY: Duration = Duration::from_secs(1);

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

/// The state directory refused a write, and since when.
#[derive(Default)]
struct Storage {
    fault: Option<(String, SystemTime)>,
    write_errors: u64,
    last_try: Option<Instant>,
    /// Spool results whose file could not be written, by task id.
    unwritten_results: BTreeMap<String, Update>,
    /// Claimed tasks that could not be recorded, in claim order.
    deferred: Vec<Value>,
}

pub struct Settings {
    pub iperf3: String,
    pub stop_grace: Duration,
    pub max_tasks: u32,
    pub state_dir: PathBuf,
    pub config_dir: PathBuf,
    pub collector_cmd: Vec<String>,
    pub allow_http_config: bool,
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
    events: std::sync::mpsc::Sender<crate::agent::Event>,
    storage: Storage,
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
        events: std::sync::mpsc::Sender<crate::agent::Event>,
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
        };
        if tasks.ledger.needs_rewrite() {
            tasks.storage_failed(&crate::error::Error::io(
                "rewrite",
                tasks.settings.state_dir.join("ledger.jsonl"),
                std::io::Error::other("the ledger could not be rewritten at start"),
            ));
        }
        tasks.recover();
        tasks.refresh_view(true);
        Ok(tasks)
    }

    /// Section 6.2, "nothing left behind": processes of the previous
    /// instance are stopped (checked by pid and start time, so a reused pid
    /// is never touched) and their tasks end `failed` with
    /// `agent_restarted`.
    fn recover(&mut self) {
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
                *u = u
                    .clone()
                    .with_error("agent_restarted", "the agent restarted while the task ran");
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
        if self.live.len() as u32 >= self.settings.max_tasks {
            let message = format!("{} tasks are running, the limit", self.settings.max_tasks);
            return Ok(self.reject(&task.id, task.kind.type_name(), origin, "capacity", message));
        }
        if let Kind::IperfServer(server) = &task.kind
            && let Some(other) = self.server_on_port(server.port)
        {
            let message = format!("port: {} is already served by task {other}", server.port);
            return Ok(self.reject(
                &task.id,
                task.kind.type_name(),
                origin,
                "invalid_payload",
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
        kind: &str,
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
            Kind::IperfServer(server) => Some(iperf::server_args(server)),
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
            let spec = Spec {
                program: self.settings.iperf3.clone(),
                args,
                stdout,
                stderr_log: None,
                task_id: Some(id.clone()),
            };
            match self.supervisor.spawn(&spec) {
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
                        live.ready_by = Some(Instant::now() + SERVER_READY_TIMEOUT);
                    }
                    self.live.insert(id.clone(), live);
                    self.probe_servers();
                }
                Err(e) => {
                    log::warn!(task_id = id.as_str(); "task {id}: {e}");
                    self.emit_for(&id, State::Failed, |u| {
                        *u = u.clone().with_error("spawn_failed", e.to_string());
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
                            .with_error("not_found", format!("no running task {task_id}"));
                    });
                    return;
                }
                self.stop_task(&task_id, Ending::Stopped);
                live.waiting_for.insert(task_id);
                self.live.insert(id.clone(), live);
            }
            Kind::CollectorStart(c) => self.start_collector(live, c),
            Kind::CollectorStop { name } => {
                let Some(owner) = self.collectors.get(&name).cloned() else {
                    self.emit_for(&id, State::Failed, |u| {
                        *u = u
                            .clone()
                            .with_error("not_found", format!("no collector named {name}"));
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
        match (live.ending, &live.task.kind) {
            (Some(Ending::Stopped), _) => self.emit_for(&id, State::Stopped, |u| {
                u.pid = Some(pid);
                u.exit_code = code;
            }),
            (Some(Ending::Timeout), _) => self.emit_for(&id, State::Failed, |u| {
                *u = u.clone().with_error(
                    "timeout",
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
                    *u = u
                        .clone()
                        .with_error("agent_stopped", "the agent stopped while the task ran");
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
                    Some(0) if live.state == State::Running => "exited",
                    _ => "exit_nonzero",
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
        self.refresh_view(false);
        let next = if self.live.values().any(|l| l.ready_by.is_some()) {
            SERVER_PROBE_EVERY
        } else {
            Duration::from_millis(500)
        };
        next.min(collectors_next)
    }

    /// A server is `running` once its port accepts connections: once a
    /// socket of its process listens on the port. Looking it up in /proc
    /// instead of connecting matters: iperf3 takes any connection for a
    /// test, and a probe would use up a `one_off` server.
    fn probe_servers(&mut self) {
        let now = Instant::now();
        let starting: Vec<(String, i32, u16, Instant)> = self
            .live
            .values()
            .filter_map(|l| match (&l.task.kind, l.process, l.ready_by) {
                (Kind::IperfServer(s), Some(p), Some(by)) if l.ending.is_none() => {
                    Some((l.task.id.clone(), p.pid, s.port, by))
                }
                _ => None,
            })
            .collect();
        for (id, pid, port, by) in starting {
            if is_listening(Path::new("/"), pid, port) {
                if let Some(l) = self.live.get_mut(&id) {
                    l.ready_by = None;
                }
                self.emit_for(&id, State::Running, |u| {
                    u.pid = Some(pid);
                    u.result = Some(json!({ "port": port }));
                });
            } else if now >= by {
                log::warn!(task_id = id.as_str(); "iperf3 server {id} did not listen on port {port} within {}s", SERVER_READY_TIMEOUT.as_secs());
                self.stop_task(&id, Ending::Timeout);
            }
        }
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
                *u = u
                    .clone()
                    .with_error("agent_stopped", "the agent stopped while the task ran");
            });
        }
        self.refresh_view(true);
    }

    /// Makes one state change durable and sends it on its way.
    fn emit_for(&mut self, id: &str, state: State, fill: impl FnOnce(&mut Update)) {
        let Some(mut record) = self.ledger.get(id).cloned() else {
            log::error!(task_id = id; "state change for task {id}, which the ledger does not know");
            return;
        };
        let mut update = Update::new(id, record.seq + 1, state);
        fill(&mut update);
        update.task_id = id.to_string();
        update.seq = record.seq + 1;
        update.state = state;
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
    fn deliver(&mut self, origin: Origin, update: &Update) {
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
    fn result_path(&self, task_id: &str) -> PathBuf {
        self.results.join(format!("{task_id}.json"))
    }

    fn write_result_file(&self, update: &Update) -> Result<()> {
        crate::state::write_json(&self.result_path(&update.task_id), update)
    }

    fn write_result(&mut self, update: &Update) {
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
    fn storage_failed(&mut self, error: &crate::error::Error) {
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
    fn retry_storage(&mut self) {
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
                } else if let Some((ticks, rss)) = supervisor::usage(Path::new("/"), p.pid) {
                    let cpu = match live.usage {
                        Some((last_ticks, at, _, _)) if now > at => {
                            let secs = now.duration_since(at).as_secs_f64();
                            (ticks.saturating_sub(last_ticks) as f64 / hz / secs * 100.0 * 10.0)
                                .round()
                                / 10.0
                        }
                        Some((_, _, cpu, _)) => cpu,
                        None => 0.0,
                    };
                    live.usage = Some((ticks, now, cpu, rss));
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
                let (ticks, _, _, rss) = l.usage?;
                Some(crate::telemetry::TaskUsage {
                    task_id: l.task.id.clone(),
                    type_name: l.task.kind.type_name(),
                    name: l.collector.as_ref().map(|c| c.name.clone()),
                    cpu_seconds: ticks as f64 / hz,
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

    pub fn running_count(&self) -> usize {
        self.live.len()
    }
}

/// Stops what an earlier instance left of a task: its recorded process,
/// and any process whose environment names the task (`OUTPOST_TASK`), which
/// covers one started in the instant before its pid was recorded.
fn stop_leftovers(record: &Record, grace: Duration) {
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

/// True when a socket of `pid` is listening on TCP `port` (IPv4 or IPv6),
/// read from `<root>/proc/net/tcp{,6}` and `<root>/proc/<pid>/fd`.
pub fn is_listening(root: &Path, pid: i32, port: u16) -> bool {
    let mut inodes = HashSet::new();
    for file in ["proc/net/tcp", "proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(root.join(file)) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(root.join(format!("proc/{pid}/fd"))) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .ok()
            .and_then(|target| {
                let t = target.to_string_lossy().into_owned();
                t.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            })
            .is_some_and(|inode| inodes.contains(&inode))
    })
}

/// Inodes of sockets in state LISTEN (0A) on `port`, from /proc/net/tcp text.
pub fn listening_inodes(text: &str, port: u16) -> Vec<u64> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *fields.get(3)? == "0A").then(|| fields.get(9)?.parse().ok())?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_listening_sockets_in_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1451 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(listening_inodes(text, 5201), [31337]);
        assert!(listening_inodes(text, 5202).is_empty());
    }
}
