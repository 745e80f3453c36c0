//! The task table's side of `agent_update` (section 4.3): intake, the
//! preparation thread, what the table hands over to the next program image
//! and takes back from the previous one, readiness, probation and the
//! final report.
//!
//! Invariants:
//! - At most one update is in progress (`updating`); another is
//!   `rejected` with `capacity`.
//! - A handover happens only while no task is changing state (no stop in
//!   progress, no collector download or replacement, no leftovers being
//!   stopped, no failed write pending): what is handed over is then only
//!   running processes and collectors waiting to restart.
//! - The update task's final state is sent by the image that knows it:
//!   `succeeded` by the new one once ready, `failed` by the old one when
//!   it takes over again (in the same process, or at the next start).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::collector::Run;
use super::payload::{AgentUpdate, Kind, Restart};
use super::{Live, Tasks};
use crate::handover::Handover;
use crate::programs::{self, Program};
use crate::update::{ErrorKind, State};

/// How long a prepared update waits for tasks to settle before it fails.
const SETTLE_WITHIN: Duration = Duration::from_secs(60);

/// One task as a handover carries it.
#[derive(Debug)]
pub struct Handed {
    /// As `payload::encode` makes it.
    pub task: Value,
    pub state: State,
    pub accepted_reported: bool,
    /// Milliseconds since the epoch.
    pub started_at_ms: u64,
    pub pid: Option<i32>,
    pub deadline_in_ms: Option<u64>,
    pub collector: Option<HandedRun>,
}

/// A collector's supervision state as a handover carries it.
#[derive(Debug)]
pub struct HandedRun {
    pub name: String,
    pub config: Option<String>,
    pub args: Vec<String>,
    pub restart: Restart,
    pub restarts: u32,
    pub attempt: u32,
    pub held: bool,
    pub fresh: bool,
    pub up_for_ms: Option<u64>,
    pub restart_in_ms: Option<u64>,
}

impl Handed {
    pub fn to_json(&self) -> Value {
        use crate::handover::field::opt;
        let collector = self.collector.as_ref().map(|r| {
            json!({
                "name": r.name, "config": opt(r.config.clone()), "args": r.args,
                "restart": match r.restart {
                    Restart::Always => "always",
                    Restart::OnFailure => "on-failure",
                    Restart::Never => "never",
                },
                "restarts": r.restarts, "attempt": r.attempt, "held": r.held, "fresh": r.fresh,
                "up_for_ms": opt(r.up_for_ms), "restart_in_ms": opt(r.restart_in_ms),
            })
        });
        json!({
            "task": self.task, "state": self.state.label(),
            "accepted_reported": self.accepted_reported, "started_at_ms": self.started_at_ms,
            "pid": opt(self.pid), "deadline_in_ms": opt(self.deadline_in_ms),
            "collector": opt(collector),
        })
    }

    pub fn from_json(v: &Value) -> Option<Handed> {
        use crate::handover::field;
        let state = match v.get("state")?.as_str()? {
            "accepted" => State::Accepted,
            "running" => State::Running,
            _ => return None,
        };
        let collector = match v.get("collector") {
            Some(c) if c.is_object() => Some(HandedRun {
                name: field::string(c, "name")?,
                config: field::string(c, "config"),
                args: c
                    .get("args")?
                    .as_array()?
                    .iter()
                    .map(|a| a.as_str().map(str::to_string))
                    .collect::<Option<_>>()?,
                restart: match c.get("restart")?.as_str()? {
                    "on-failure" => Restart::OnFailure,
                    "never" => Restart::Never,
                    _ => Restart::Always,
                },
                restarts: u32::try_from(field::u64(c, "restarts")?).ok()?,
                attempt: u32::try_from(field::u64(c, "attempt")?).ok()?,
                held: field::bool(c, "held"),
                fresh: field::bool(c, "fresh"),
                up_for_ms: field::u64(c, "up_for_ms"),
                restart_in_ms: field::u64(c, "restart_in_ms"),
            }),
            _ => None,
        };
        Some(Handed {
            task: v.get("task")?.clone(),
            state,
            accepted_reported: field::bool(v, "accepted_reported"),
            started_at_ms: field::u64(v, "started_at_ms").unwrap_or(0),
            pid: field::i32(v, "pid"),
            deadline_in_ms: field::u64(v, "deadline_in_ms"),
            collector,
        })
    }
}

/// An update in this image's hands.
pub(super) enum Phase {
    /// Being fetched and tried (a thread of its own).
    Preparing,
    /// Tried; waiting for tasks to settle, then the handover.
    Prepared { program: Program, since: Instant },
    /// This image is the new program on trial: not yet ready.
    Trial {
        from: Program,
        to: Program,
        since: Instant,
        /// Its start-up failed after the children were taken over: it
        /// hands back at once, for this reason.
        failed: Option<String>,
    },
    /// Ready; probation runs (`Tasks::probation_until`).
    Probation,
}

pub(super) struct Updating {
    pub id: String,
    pub phase: Phase,
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl Tasks {
    /// Another update while one is in progress is refused.
    pub(super) fn update_in_progress(&self) -> bool {
        matches!(
            self.updating.as_ref().map(|u| &u.phase),
            Some(Phase::Preparing | Phase::Prepared { .. } | Phase::Trial { .. })
        )
    }

    pub(super) fn start_agent_update(&mut self, live: Live, update: AgentUpdate) {
        let id = live.task.id.clone();
        if update.version == crate::VERSION {
            log::info!(task_id = id.as_str(); "agent_update to {}: already running it", update.version);
            self.emit_for(&id, State::Succeeded, |u| {
                u.result = Some(json!({"from": crate::VERSION, "to": crate::VERSION}));
            });
            return;
        }
        log::info!(task_id = id.as_str(); "agent_update: preparing version {}", update.version);
        self.live.insert(id.clone(), live);
        self.updating = Some(Updating {
            id: id.clone(),
            phase: Phase::Preparing,
        });
        let (fetcher, events, state_dir) = (
            self.fetcher.clone(),
            self.events.clone(),
            self.settings.state_dir.clone(),
        );
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        let task_id = id.clone();
        let spawned = std::thread::Builder::new()
            .name("update".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let result = programs::prepare(&update, &fetcher, &state_dir, &args);
                let _ = events.send(crate::event::Event::UpdatePrepared { task_id, result });
            });
        if let Err(e) = spawned {
            self.update_prepared(
                &id,
                Err((
                    ErrorKind::UpdateFailed,
                    format!("cannot start the update thread: {e}"),
                )),
            );
        }
    }

    /// Steps 1 and 2 are done (or failed).
    pub fn update_prepared(&mut self, id: &str, result: Result<Program, (ErrorKind, String)>) {
        if self.updating.as_ref().map(|u| u.id.as_str()) != Some(id) {
            return;
        }
        match result {
            Ok(program) => {
                log::info!(task_id = id; "agent_update: version {} is kept as {} and passed its checks; handing over once tasks settle", program.version, program.path.display());
                self.updating = Some(Updating {
                    id: id.to_string(),
                    phase: Phase::Prepared {
                        program,
                        since: Instant::now(),
                    },
                });
            }
            Err((kind, message)) => self.update_failed(id, kind, message, None),
        }
    }

    /// The update ends `failed`; nothing else changes.
    pub fn update_failed(
        &mut self,
        id: &str,
        kind: ErrorKind,
        message: String,
        stderr_tail: Option<String>,
    ) {
        log::warn!(task_id = id; "agent_update failed: {message}");
        self.live.remove(id);
        self.updating = None;
        self.emit_for(id, State::Failed, |u| {
            *u = u.clone().with_error(kind, message.clone());
            u.stderr_tail = stderr_tail.clone();
        });
        self.refresh_view(true);
    }

    /// A prepared update whose moment has come: the task id, its origin and
    /// the program, once no task is changing state. One that waited too
    /// long fails.
    pub fn handover_due(&mut self) -> Option<(String, crate::ledger::Origin, Program)> {
        let Updating {
            id,
            phase: Phase::Prepared { program, since },
        } = self.updating.as_ref()?
        else {
            return None;
        };
        let (id, program, since) = (id.clone(), program.clone(), *since);
        match self.unsettled() {
            None => {
                let origin = self.ledger.get(&id)?.origin;
                Some((id, origin, program))
            }
            Some(why) if since.elapsed() >= SETTLE_WITHIN => {
                self.update_failed(
                    &id,
                    ErrorKind::UpdateFailed,
                    format!(
                        "tasks did not settle within {}s for the handover: {why}",
                        SETTLE_WITHIN.as_secs()
                    ),
                    None,
                );
                None
            }
            Some(_) => None,
        }
    }

    /// Why the table cannot be handed over right now, if it cannot.
    fn unsettled(&self) -> Option<String> {
        if self.storage.fault.is_some() || !self.storage.deferred.is_empty() {
            return Some("the state directory refuses writes".into());
        }
        if let Some(id) = self.awaiting_leftovers.keys().next() {
            return Some(format!("leftovers of task {id} are being stopped"));
        }
        self.live.values().find_map(|l| {
            let id = &l.task.id;
            if matches!(l.task.kind, Kind::AgentUpdate(_)) {
                return None;
            }
            if l.ending.is_some() || !l.waiting_for.is_empty() {
                return Some(format!("task {id} is stopping or waiting for a stop"));
            }
            if matches!(
                l.task.kind,
                Kind::KillAll | Kind::TaskStop { .. } | Kind::CollectorStop { .. }
            ) {
                return Some(format!("task {id} is in progress"));
            }
            match &l.collector {
                Some(run) if run.config.is_none() || run.replacing.is_some() => {
                    Some(format!("collector task {id} is being set up"))
                }
                None if l.process.is_none() => Some(format!("task {id} has no process yet")),
                _ => None,
            }
        })
    }

    /// Everything but the update task, for the handover file.
    pub fn export(&self) -> Vec<Handed> {
        let now = Instant::now();
        self.live
            .values()
            .filter(|l| !matches!(l.task.kind, Kind::AgentUpdate(_)))
            .map(|l| Handed {
                task: super::payload::encode(&l.task),
                state: l.state,
                accepted_reported: l.accepted_reported,
                started_at_ms: l
                    .started_at
                    .duration_since(UNIX_EPOCH)
                    .map(millis)
                    .unwrap_or(0),
                pid: l.process.map(|p| p.pid),
                deadline_in_ms: l.deadline.map(|d| millis(d.saturating_duration_since(now))),
                collector: l.collector.as_ref().map(|r| HandedRun {
                    name: r.name.clone(),
                    config: r.config.clone(),
                    args: r.args.clone(),
                    restart: r.restart,
                    restarts: r.restarts,
                    attempt: r.attempt,
                    held: r.held,
                    fresh: r.fresh,
                    up_for_ms: r.up_since.map(|t| millis(now.duration_since(t))),
                    restart_in_ms: r
                        .restart_at
                        .map(|t| millis(t.saturating_duration_since(now))),
                }),
            })
            .collect()
    }

    /// The supervisor's children, for the handover (see
    /// `Supervisor::export`).
    pub fn export_children(
        &self,
    ) -> Option<(
        Vec<crate::supervisor::Inherited>,
        std::sync::mpsc::Sender<bool>,
    )> {
        self.supervisor.export()
    }

    pub fn origin_of(&self, id: &str) -> Option<crate::ledger::Origin> {
        self.ledger.get(id).map(|r| r.origin)
    }

    /// The handover did not happen: the update fails, everything else goes on.
    pub fn handover_failed(&mut self, id: &str, why: String) {
        self.update_failed(id, ErrorKind::UpdateFailed, why, None);
    }

    /// At start, in the image that received a handover: the children
    /// become this supervisor's, their tasks this table's. Returns the ids
    /// taken, which recovery then leaves alone.
    pub(super) fn adopt(&mut self, handover: &mut Handover) {
        let mut started = HashMap::new();
        for child in handover.children.drain(..) {
            let pid = child.pid;
            match self.supervisor.adopt(child) {
                Some(s) => {
                    started.insert(pid, s);
                }
                None => log::warn!(
                    "pid {pid} of the handover is not a child of this process; recovery settles its task"
                ),
            }
        }
        let now = Instant::now();
        for handed in handover.tasks.drain(..) {
            // Anything this version cannot read goes to recovery.
            let Ok(task) = super::payload::decode(&handed.task) else {
                continue;
            };
            let id = task.id.clone();
            let Some(record) = self.ledger.get(&id).filter(|r| !r.state.is_final()) else {
                continue;
            };
            let _ = record;
            let process = match handed.pid {
                Some(pid) => match started.get(&pid) {
                    Some(s) => Some(*s),
                    None => continue,
                },
                None if handed.collector.is_some() => None,
                None => continue,
            };
            let collector = handed.collector.map(|r| {
                let mut run = Run::new(&r.name, &r.args, r.restart);
                run.config = r.config;
                run.restarts = r.restarts;
                run.attempt = r.attempt;
                run.held = r.held;
                run.fresh = r.fresh;
                run.up_since = r
                    .up_for_ms
                    .map(|ms| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now));
                run.restart_at = r.restart_in_ms.map(|ms| now + Duration::from_millis(ms));
                if process.is_none() && run.restart_at.is_none() {
                    run.restart_at = Some(now);
                }
                run
            });
            if let Some(run) = &collector {
                self.collectors.insert(run.name.clone(), id.clone());
            }
            if let (Some(cgroups), true) = (&self.settings.cgroups, process.is_some()) {
                let dir = cgroups.task_path(&id);
                if dir.is_dir() {
                    self.cgroup_of
                        .insert(id.clone(), super::cgroups::TaskCgroup { dir, peak: 0 });
                }
            }
            let ready_by = (matches!(task.kind, Kind::IperfServer(_))
                && handed.state != State::Running)
                .then(|| now + super::iperf::SERVER_READY_TIMEOUT);
            let live = Live {
                deadline: handed
                    .deadline_in_ms
                    .map(|ms| now + Duration::from_millis(ms)),
                state: handed.state,
                accepted_reported: handed.accepted_reported,
                accepted: now,
                started_at: UNIX_EPOCH + Duration::from_millis(handed.started_at_ms),
                process,
                ending: None,
                ready_by,
                waiting_for: Default::default(),
                stopped_count: 0,
                usage: None,
                collector,
                task,
            };
            if let Some(p) = process {
                self.by_pid.insert(p.pid, id.clone());
            }
            self.live.insert(id, live);
        }
        log::info!(
            "took over {} task(s) and {} process(es) from version {}",
            self.live.len(),
            started.len(),
            handover.from.version
        );
        let id = handover.update_task_id.clone();
        match handover.rollback.clone() {
            // This is the previous program again: the update failed.
            Some(why) => {
                let stderr = programs::tail_text(
                    handover.trial_stderr.take().unwrap_or_default().as_bytes(),
                    crate::supervisor::STDERR_TAIL_BYTES,
                );
                let mut record = programs::load(&self.settings.state_dir);
                if !record.failed.contains(&handover.to.sha256) {
                    record.failed.push(handover.to.sha256.clone());
                }
                record.trial = None;
                record.current = Some(handover.from.clone()).filter(|p| !p.sha256.is_empty());
                if let Err(e) = programs::save(&self.settings.state_dir, &record) {
                    log::error!("{e}");
                }
                self.updating = None;
                if self.ledger.get(&id).is_some_and(|r| !r.state.is_final()) {
                    self.emit_for(&id, State::Failed, |u| {
                        *u = u.clone().with_error(
                            ErrorKind::UpdateFailed,
                            format!(
                                "version {} could not take over ({why}); version {} took over again",
                                handover.to.version,
                                crate::VERSION
                            ),
                        );
                        u.stderr_tail = (!stderr.trim().is_empty()).then_some(stderr.clone());
                    });
                }
            }
            None => {
                self.updating = Some(Updating {
                    id,
                    phase: Phase::Trial {
                        from: handover.from.clone(),
                        to: handover.to.clone(),
                        since: now,
                        failed: None,
                    },
                });
            }
        }
    }

    /// This image is ready (registered, or manager-less): an update on
    /// trial succeeded. Returns true when that just happened.
    pub fn update_ready(&mut self) -> bool {
        let Some(Updating {
            id,
            phase: Phase::Trial { from, to, .. },
        }) = self.updating.as_ref()
        else {
            return false;
        };
        let (id, from, to) = (id.clone(), from.clone(), to.clone());
        let state_dir = self.settings.state_dir.clone();
        let mut record = programs::load(&state_dir);
        if let Some(trial) = record.trial.as_mut() {
            trial.ready = true;
        }
        record.current = Some(to.clone());
        record.failed.retain(|s| *s != to.sha256);
        if let Err(e) = programs::save(&state_dir, &record) {
            log::error!("{e}");
        }
        programs::prune(&state_dir, &[&to.path, &from.path]);
        self.updating = Some(Updating {
            id: id.clone(),
            phase: Phase::Probation,
        });
        self.probation_until = Some(Instant::now() + programs::PROBATION);
        log::info!(task_id = id.as_str(); "agent_update: version {} took over from {}", to.version, from.version);
        if self.ledger.get(&id).is_some_and(|r| !r.state.is_final()) {
            self.emit_for(&id, State::Succeeded, |u| {
                u.result = Some(json!({"from": from.version, "to": to.version}));
            });
        }
        self.refresh_view(true);
        true
    }

    /// An image on trial that is not ready in time hands back: the reason,
    /// the update task id, and the program to go back to.
    pub fn rollback_due(&self) -> Option<(String, String, Program, Program)> {
        match self.updating.as_ref()? {
            Updating {
                id,
                phase:
                    Phase::Trial {
                        from,
                        to,
                        since,
                        failed,
                    },
            } => {
                let why = match failed {
                    Some(why) => why.clone(),
                    None if since.elapsed() >= programs::READY_WITHIN => format!(
                        "not ready (registered) within {}s",
                        programs::READY_WITHIN.as_secs()
                    ),
                    None => return None,
                };
                Some((why, id.clone(), from.clone(), to.clone()))
            }
            _ => None,
        }
    }

    /// This image, on trial, cannot take over (`why`): it hands back at
    /// the next [`rollback_due`](Self::rollback_due). False when it is not
    /// on trial.
    pub fn cannot_take_over(&mut self, why: String) -> bool {
        match self.updating.as_mut() {
            Some(Updating {
                phase: Phase::Trial { failed, .. },
                ..
            }) => {
                *failed = Some(why);
                true
            }
            _ => false,
        }
    }

    /// Probation passed, or the agent stops cleanly (not a death): the
    /// trial record goes. Kept apart from `updating`, which a later update
    /// may take over while this probation runs.
    pub fn end_probation(&mut self, stopping: bool) {
        let over = match self.probation_until {
            Some(until) => stopping || Instant::now() >= until,
            None => stopping,
        };
        if !over {
            return;
        }
        self.probation_until = None;
        if matches!(
            self.updating.as_ref().map(|u| &u.phase),
            Some(Phase::Probation | Phase::Trial { .. })
        ) {
            self.updating = None;
        }
        let mut record = programs::load(&self.settings.state_dir);
        if record.trial.take().is_some()
            && let Err(e) = programs::save(&self.settings.state_dir, &record)
        {
            log::error!("{e}");
        }
    }

    /// Recovery met an `agent_update` a previous instance did not finish:
    /// it fails with what is known.
    pub(super) fn update_cut_off(&mut self, id: &str) {
        let mut record = programs::load(&self.settings.state_dir);
        let report = record.report.take().filter(|r| r.task_id == id);
        if report.is_some()
            && let Err(e) = programs::save(&self.settings.state_dir, &record)
        {
            log::error!("{e}");
        }
        let (message, tail) = match report {
            Some(r) => (r.message, r.stderr_tail),
            None => (
                "the agent restarted during the update; the previous version runs".to_string(),
                None,
            ),
        };
        self.emit_for(id, State::Failed, |u| {
            *u = u
                .clone()
                .with_error(ErrorKind::UpdateFailed, message.clone());
            u.stderr_tail = tail.clone();
        });
    }
}

/// Seconds since the epoch, for the trial record.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
