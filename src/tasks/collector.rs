//! Collectors' own knowledge: variable substitution, where their config and
//! log files live, and the persisted desired set that brings them back after
//! a restart with no manager in reach (offline autonomy).
//!
//! Substitution: every `${NAME}` (NAME: a letter or `_`, then letters,
//! digits, `_`) becomes `variables[NAME]`, inserted verbatim and never
//! expanded again; a `${NAME}` without a value is an error naming it. `$${`
//! writes a literal `${`. Anything else with a `$` is left as it is, so
//! OpenTelemetry's own `${env:VAR}` passes through to the collector.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::payload::{CollectorStart, ConfigSource, Restart};
use super::{Ending, Live, Tasks};
use crate::error::Result;
use crate::supervisor::{Exit, ExitStatus, Output, Spec};
use crate::update::{ErrorKind, State};

/// A collector's log file is rotated once it reaches this size.
pub const LOG_MAX_BYTES: u64 = 1024 * 1024;
/// A collector is `running` once its process has stayed up this long.
pub const HOLD: std::time::Duration = std::time::Duration::from_secs(2);

pub fn substitute(
    text: &str,
    variables: &BTreeMap<String, String>,
) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
            continue;
        }
        if let Some(inner) = after.strip_prefix("${")
            && let Some(end) = inner.find('}')
            && is_name(&inner[..end])
        {
            let name = &inner[..end];
            match variables.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    return Err(format!(
                        "variables: ${{{name}}} is used in the config but has no value"
                    ));
                }
            }
            rest = &inner[end + 1..];
            continue;
        }
        out.push('$');
        rest = &after[1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_name(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What the agent keeps about one collector so it can run it again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    pub task_id: String,
    pub args: Vec<String>,
    pub restart: Restart,
}

/// The desired set, `<state>/collectors.json`; configs in the config dir.
pub struct Store {
    file: PathBuf,
    config_dir: PathBuf,
    log_dir: PathBuf,
}

impl Store {
    pub fn open(state_dir: &Path, config_dir: &Path) -> Result<Store> {
        crate::state::ensure_private_dir(config_dir)?;
        let log_dir = state_dir.join("logs");
        crate::state::ensure_private_dir(&log_dir)?;
        Ok(Store {
            file: state_dir.join("collectors.json"),
            config_dir: config_dir.to_path_buf(),
            log_dir,
        })
    }

    pub fn load(&self) -> BTreeMap<String, Desired> {
        let set: BTreeMap<String, Desired> =
            crate::state::load_or_reset(&self.file).unwrap_or_default();
        set.into_iter()
            .filter(|(name, d)| {
                crate::ids::is_valid_id(name) && crate::ids::is_valid_id(&d.task_id)
            })
            .collect()
    }

    pub fn save(&self, set: &BTreeMap<String, Desired>) {
        if let Err(e) = crate::state::write_json(&self.file, set) {
            log::error!("cannot save the collector set: {e}");
        }
    }

    /// Names follow the id rule, so the path cannot leave the directory.
    pub fn config_path(&self, name: &str) -> PathBuf {
        self.config_dir.join(format!("{name}.conf"))
    }

    fn previous_path(&self, name: &str) -> PathBuf {
        self.config_dir.join(format!("{name}.conf.previous"))
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    pub fn read_config(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.config_path(name)).ok()
    }

    /// Writes a collector's config (0600, atomically).
    pub fn write_config(&self, name: &str, text: &str) -> Result<()> {
        crate::state::write_atomic(&self.config_path(name), text.as_bytes())
    }

    /// Before a replacement: keep the running config aside, so that a crash
    /// in the middle still comes back to the last good one.
    pub fn keep_previous(&self, name: &str, text: &str) -> Result<()> {
        crate::state::write_atomic(&self.previous_path(name), text.as_bytes())
    }

    pub fn drop_previous(&self, name: &str) {
        let _ = std::fs::remove_file(self.previous_path(name));
    }

    /// At start: a replacement cut off by a crash is undone.
    pub fn restore_previous(&self, name: &str) {
        let previous = self.previous_path(name);
        if previous.exists() {
            log::warn!(
                "collector {name}: a replacement was cut off; restoring its previous config"
            );
            if let Err(e) = std::fs::rename(&previous, self.config_path(name)) {
                log::error!(
                    "collector {name}: cannot restore {}: {e}",
                    previous.display()
                );
            }
        }
    }

    /// A collector no longer wanted: its config and its logs go with it,
    /// or they would fill the state directory over the device's life.
    pub fn forget(&self, name: &str) {
        let _ = std::fs::remove_file(self.config_path(name));
        self.drop_previous(name);
        let log = self.log_path(name);
        let _ = std::fs::remove_file(&log);
        let mut rotated = log.into_os_string();
        rotated.push(".1");
        let _ = std::fs::remove_file(rotated);
    }

    /// Removes the logs of every collector not in `wanted` (left by one
    /// forgotten while the agent was down, or by an older version).
    pub fn prune_logs(&self, wanted: &BTreeMap<String, Desired>) {
        let Ok(listing) = std::fs::read_dir(&self.log_dir) else {
            return;
        };
        for entry in listing.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let name = file
                .strip_suffix(".log.1")
                .or_else(|| file.strip_suffix(".log"))
                .unwrap_or(&file);
            if !wanted.contains_key(name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Supervision: the task table's collector methods.

/// Restart backoff: 1 s doubling to this, reset after [`STABLE`] of uptime.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);
const STABLE: Duration = Duration::from_secs(60);

/// A collector's supervision state, carried by its task.
pub struct Run {
    pub name: String,
    /// The config after substitution; `None` while it downloads.
    pub config: Option<String>,
    pub args: Vec<String>,
    pub restart: Restart,
    pub sha256: Option<String>,
    pub variables: BTreeMap<String, String>,
    pub restarts: u32,
    pub(super) attempt: u32,
    pub(super) up_since: Option<Instant>,
    pub(super) restart_at: Option<Instant>,
    /// The current run has stayed up [`HOLD`] (and `running` was said).
    pub(super) held: bool,
    /// Never ran well: an early exit fails the task instead of restarting.
    pub(super) fresh: bool,
    /// The task this one replaces, whose process is stopping or stopped.
    pub(super) replacing: Option<String>,
}

impl Run {
    /// A collector that has not run yet.
    pub(super) fn new(name: &str, args: &[String], restart: Restart) -> Run {
        Run {
            name: name.to_string(),
            config: None,
            args: args.to_vec(),
            restart,
            sha256: None,
            variables: BTreeMap::new(),
            restarts: 0,
            attempt: 0,
            up_since: None,
            restart_at: None,
            held: false,
            fresh: true,
            replacing: None,
        }
    }
}

impl Tasks {
    pub(super) fn start_collector(&mut self, mut live: Live, c: CollectorStart) {
        let id = live.task.id.clone();
        live.collector = Some(Run {
            sha256: c.sha256.clone(),
            variables: c.variables.clone(),
            ..Run::new(&c.name, &c.args, c.restart)
        });
        match c.source {
            ConfigSource::Inline(text) => {
                // Everything about an inline config is known now, so a
                // problem with it is a rejection, not a failure.
                let bytes = text.into_bytes();
                if let Err((kind, message)) =
                    prepare(bytes.clone(), c.sha256.as_deref(), &c.variables)
                {
                    self.emit_for(&id, State::Rejected, |u| {
                        *u = u.clone().with_error(kind, message.clone())
                    });
                    return;
                }
                self.live.insert(id.clone(), live);
                self.config_ready(&id, Ok(bytes));
            }
            ConfigSource::Url(url) => {
                if let Err(why) = self.fetcher.check_url(&url) {
                    self.emit_for(&id, State::Rejected, |u| {
                        *u = u.clone().with_error(ErrorKind::InvalidPayload, why.clone());
                    });
                    return;
                }
                self.live.insert(id.clone(), live);
                let (fetcher, events, task_id) =
                    (self.fetcher.clone(), self.events.clone(), id.clone());
                let spawned = std::thread::Builder::new()
                    .name("fetch".into())
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        let result = fetcher.fetch(&url).map_err(|e| e.0);
                        let _ = events.send(crate::event::Event::ConfigFetched { task_id, result });
                    });
                if let Err(e) = spawned {
                    self.config_ready(&id, Err(format!("cannot start a download thread: {e}")));
                }
            }
        }
    }

    /// A collector's config arrived (or could not be had).
    pub fn config_ready(&mut self, id: &str, fetched: std::result::Result<Vec<u8>, String>) {
        let Some(run) = self.live.get(id).and_then(|l| l.collector.as_ref()) else {
            return;
        };
        let (expected, variables, name) =
            (run.sha256.clone(), run.variables.clone(), run.name.clone());
        let prepared = fetched
            .map_err(|e| (ErrorKind::DownloadFailed, e))
            .and_then(|bytes| prepare(bytes, expected.as_deref(), &variables));
        let config = match prepared {
            Ok(config) => config,
            Err((kind, message)) => {
                self.live.remove(id);
                log::warn!(task_id = id; "collector {name}: {message}");
                self.emit_for(id, State::Failed, |u| {
                    *u = u.clone().with_error(kind, message.clone())
                });
                return;
            }
        };
        let args = match self.live.get_mut(id).and_then(|l| l.collector.as_mut()) {
            Some(run) => {
                run.config = Some(config.clone());
                run.args.clone()
            }
            None => return,
        };
        match self.collectors.get(&name).cloned() {
            Some(owner) if owner != id => {
                let same = self
                    .live
                    .get(&owner)
                    .and_then(|l| l.collector.as_ref())
                    .is_some_and(|r| {
                        r.config.as_deref() == Some(config.as_str()) && r.args == args
                    });
                if same {
                    self.take_over(&owner, id);
                } else {
                    self.replace(&owner, id);
                }
            }
            _ => {
                self.collectors.insert(name, id.to_string());
                self.launch(id);
            }
        }
    }

    /// Same name, config and args: the new task takes the running
    /// collector over, with no restart.
    fn take_over(&mut self, old: &str, new: &str) {
        let Some(mut old_live) = self.live.remove(old) else {
            return;
        };
        let Some(old_run) = old_live.collector.take() else {
            return;
        };
        let pid = old_live.process.map(|p| p.pid);
        if let Some(live) = self.live.get_mut(new)
            && let Some(run) = live.collector.as_mut()
        {
            run.restarts = old_run.restarts;
            run.attempt = old_run.attempt;
            run.up_since = old_run.up_since;
            run.restart_at = old_run.restart_at;
            run.held = old_run.held;
            run.fresh = false;
            live.process = old_live.process;
            live.state = State::Running;
        }
        if let Some(pid) = pid {
            self.by_pid.insert(pid, new.to_string());
        }
        let name = old_run.name.clone();
        // The process now belongs to the new task: a restart must find it
        // through the new task's record.
        if let Some(p) = old_live.process {
            self.record_process(new, p);
        }
        self.collectors.insert(name.clone(), new.to_string());
        self.save_desired();
        log::info!(task_id = new; "collector {name}: task {new} takes over from {old} with the same config; no restart");
        let usage = self.hand_cgroup_over(old, new);
        self.emit_for(old, State::Stopped, |u| u.usage = usage);
        self.emit_for(new, State::Running, |u| u.pid = pid);
    }

    /// Different config or args: stop the old process, then start the new
    /// config; if it does not stay up, the old one comes back.
    fn replace(&mut self, old: &str, new: &str) {
        if let Some(run) = self.live.get_mut(new).and_then(|l| l.collector.as_mut()) {
            run.replacing = Some(old.to_string());
        }
        let old_has_process = self.live.get(old).is_some_and(|l| l.process.is_some());
        let name = self
            .live
            .get(new)
            .and_then(|l| l.collector.as_ref())
            .map(|r| r.name.clone())
            .unwrap_or_default();
        log::info!(task_id = new; "collector {name}: task {new} replaces {old} with a new config");
        if let Some(old_live) = self.live.get_mut(old) {
            old_live.ending = Some(Ending::Replaced);
            if let Some(run) = old_live.collector.as_mut() {
                run.restart_at = None;
            }
        }
        if old_has_process {
            if let Some(p) = self.live.get(old).and_then(|l| l.process) {
                self.supervisor.stop(p.pid, self.settings.stop_grace);
            }
        } else {
            self.launch_replacement(old, new);
        }
    }

    /// The old process is gone: keep its config aside and start the new one.
    fn launch_replacement(&mut self, old: &str, new: &str) {
        let old_config = self
            .live
            .get(old)
            .and_then(|l| l.collector.as_ref())
            .and_then(|r| r.config.clone());
        let name = self
            .live
            .get(new)
            .and_then(|l| l.collector.as_ref())
            .map(|r| r.name.clone());
        if let (Some(name), Some(config)) = (name, old_config)
            && let Err(e) = self.store.keep_previous(&name, &config)
        {
            log::warn!("collector {name}: {e}");
        }
        self.launch(new);
    }

    /// Writes the config and starts the collector process.
    fn launch(&mut self, id: &str) {
        let Some(run) = self.live.get(id).and_then(|l| l.collector.as_ref()) else {
            return;
        };
        let (name, config, args) = (
            run.name.clone(),
            run.config.clone().unwrap_or_default(),
            run.args.clone(),
        );
        let path = self.store.config_path(&name);
        let write = self.store.write_config(&name, &config);
        let limits = self.live.get(id).and_then(|l| l.task.limits.clone());
        let started = write
            .map_err(|e| e.to_string())
            .and_then(|()| self.cgroup_for(id, limits.as_ref()))
            .and_then(|cgroup| {
                let mut spec = self.collector_spec(&name, &path, &args, id);
                spec.cgroup = cgroup;
                self.supervisor.spawn(&spec).map_err(|e| e.to_string())
            });
        match started {
            Ok(started) => {
                log::info!(task_id = id; "collector {name} started as pid {}", started.pid);
                self.by_pid.insert(started.pid, id.to_string());
                if let Some(live) = self.live.get_mut(id) {
                    live.process = Some(started);
                    if let Some(run) = live.collector.as_mut() {
                        run.up_since = Some(Instant::now());
                        run.restart_at = None;
                        run.held = false;
                    }
                }
                self.record_process(id, started);
            }
            Err(message) => {
                log::warn!(task_id = id; "collector {name}: {message}");
                let fresh = self
                    .live
                    .get(id)
                    .and_then(|l| l.collector.as_ref())
                    .is_some_and(|r| r.fresh);
                if fresh {
                    self.early_failure(id, ErrorKind::SpawnFailed, message, None);
                } else {
                    self.schedule_restart(id);
                }
            }
        }
    }

    fn collector_spec(
        &self,
        name: &str,
        config: &std::path::Path,
        args: &[String],
        id: &str,
    ) -> Spec {
        let path = config.display().to_string();
        let mut words = self
            .settings
            .collector_cmd
            .iter()
            .map(|w| w.replace("{config}", &path));
        let program = words.next().unwrap_or_default();
        let mut all: Vec<String> = words.collect();
        all.extend(args.iter().cloned());
        let log = self.store.log_path(name);
        Spec {
            program,
            args: all,
            stdout: Output::LogFile {
                path: log.clone(),
                max: LOG_MAX_BYTES,
            },
            stderr_log: Some((log, LOG_MAX_BYTES)),
            task_id: Some(id.to_string()),
            cgroup: None,
        }
    }

    /// A collector's process ended; `live` was taken out of the table.
    pub(super) fn collector_exit(&mut self, id: String, mut live: Live, exit: Exit) {
        live.process = None;
        let tail = (!exit.stderr_tail.is_empty()).then(|| exit.stderr_tail.clone());
        let code = match exit.status {
            ExitStatus::Code(c) => Some(c),
            ExitStatus::Signal(_) => None,
        };
        let Some(run) = live.collector.as_mut() else {
            return;
        };
        let name = run.name.clone();
        // Section 4.2: the memory limit's kill is named as such.
        let oom = self.oom_killed(&id).then(|| {
            format!(
                "{name} was killed by the kernel: over its memory limit (memory_max_bytes {})",
                live.task
                    .limits
                    .as_ref()
                    .and_then(|l| l.memory_max_bytes)
                    .map_or_else(|| "none".to_string(), |b| b.to_string())
            )
        });
        match live.ending {
            Some(Ending::AgentStopping) => {
                // Desired state kept: not final, back at the next start.
            }
            Some(Ending::Replaced) => {
                let new = self
                    .live
                    .iter()
                    .find(|(_, l)| {
                        l.collector.as_ref().and_then(|r| r.replacing.as_deref())
                            == Some(id.as_str())
                    })
                    .map(|(k, _)| k.clone());
                self.live.insert(id.clone(), live);
                if let Some(new) = new {
                    self.launch_replacement(&id, &new);
                }
            }
            Some(Ending::Stopped) | Some(Ending::Timeout) => {
                let stopped = live.ending == Some(Ending::Stopped);
                self.forget(&name, &id);
                if stopped {
                    self.emit_for(&id, State::Stopped, |u| {
                        u.pid = Some(exit.pid);
                        u.exit_code = code;
                    });
                } else {
                    self.emit_for(&id, State::Failed, |u| {
                        *u = u
                            .clone()
                            .with_error(ErrorKind::Timeout, "timeout_s passed; collector stopped");
                        u.stderr_tail = tail.clone();
                    });
                }
            }
            None if run.fresh && !run.held => {
                let words = super::iperf::last_error_line(&exit.stderr_tail);
                let message = format!(
                    "{name} {} before staying up {}s{}",
                    exit.status.describe(),
                    HOLD.as_secs(),
                    if words.is_empty() {
                        String::new()
                    } else {
                        format!(": {words}")
                    }
                );
                self.live.insert(id.clone(), live);
                match oom {
                    Some(oom) => self.early_failure(&id, ErrorKind::OomKilled, oom, tail),
                    None => self.early_failure(&id, ErrorKind::ExitNonzero, message, tail),
                }
            }
            None => {
                let up = run.up_since.map(|t| t.elapsed()).unwrap_or_default();
                let restart = match run.restart {
                    Restart::Always => true,
                    Restart::OnFailure => code != Some(0),
                    Restart::Never => false,
                };
                if restart {
                    if up >= STABLE {
                        run.attempt = 0;
                    }
                    log::warn!(
                        task_id = id.as_str();
                        "collector {name} {} after {}s up: {}",
                        exit.status.describe(),
                        up.as_secs(),
                        super::iperf::last_error_line(&exit.stderr_tail)
                    );
                    self.live.insert(id.clone(), live);
                    self.schedule_restart(&id);
                } else {
                    self.forget(&name, &id);
                    if code == Some(0) && run.restart == Restart::OnFailure {
                        self.emit_for(&id, State::Succeeded, |u| {
                            u.pid = Some(exit.pid);
                            u.exit_code = code;
                        });
                    } else {
                        let (kind, message) = match oom {
                            Some(oom) => (ErrorKind::OomKilled, oom),
                            None => (
                                ErrorKind::ExitNonzero,
                                format!("{name} {} and restart is never", exit.status.describe()),
                            ),
                        };
                        self.emit_for(&id, State::Failed, |u| {
                            *u = u.clone().with_error(kind, message.clone());
                            u.pid = Some(exit.pid);
                            u.exit_code = code;
                            u.stderr_tail = tail.clone();
                        });
                    }
                }
            }
        }
    }

    /// A new collector (or config) that could not run: fail the task, and
    /// when it replaced another, put the previous config back.
    fn early_failure(&mut self, id: &str, kind: ErrorKind, message: String, tail: Option<String>) {
        let Some(live) = self.live.remove(id) else {
            return;
        };
        let Some(run) = live.collector else { return };
        let name = run.name.clone();
        let mut message = message;
        match run.replacing {
            Some(old) if self.live.contains_key(&old) => {
                message.push_str("; the previous config runs again");
                self.store.drop_previous(&name);
                self.collectors.insert(name.clone(), old.clone());
                if let Some(old_live) = self.live.get_mut(&old) {
                    old_live.ending = None;
                    if let Some(r) = old_live.collector.as_mut() {
                        r.fresh = false;
                        // Stays `running` to the manager: nothing to say
                        // until it has a reason to change.
                        r.held = true;
                    }
                }
                log::warn!(task_id = id; "collector {name}: rolling back to task {old}'s config");
                self.launch(&old);
                if let Some(r) = self.live.get_mut(&old).and_then(|l| l.collector.as_mut()) {
                    r.held = true;
                }
            }
            _ => self.forget(&name, id),
        }
        log::warn!(task_id = id; "collector {name}: {message}");
        self.emit_for(id, State::Failed, |u| {
            *u = u.clone().with_error(kind, message.clone());
            u.stderr_tail = tail.clone();
        });
    }

    fn schedule_restart(&mut self, id: &str) {
        if let Some(run) = self.live.get_mut(id).and_then(|l| l.collector.as_mut()) {
            let delay = Duration::from_secs(1u64 << run.attempt.min(6)).min(MAX_RESTART_DELAY);
            run.attempt = run.attempt.saturating_add(1);
            run.restart_at = Some(Instant::now() + delay);
            run.up_since = None;
            log::info!(task_id = id; "collector {} restarts in {}s", run.name, delay.as_secs());
        }
    }

    /// A stop reached a collector that had no process (between restarts).
    pub(super) fn collector_ended_without_process(&mut self, id: &str) {
        let Some(live) = self.live.remove(id) else {
            return;
        };
        let Some(run) = live.collector else { return };
        match live.ending {
            Some(Ending::AgentStopping) | Some(Ending::Replaced) => {
                self.live.insert(
                    id.to_string(),
                    Live {
                        collector: Some(run),
                        ..live
                    },
                );
            }
            _ => {
                self.forget(&run.name, id);
                self.emit_for(id, State::Stopped, |_| {});
            }
        }
    }

    fn forget(&mut self, name: &str, id: &str) {
        if self.collectors.get(name).map(String::as_str) == Some(id) {
            self.collectors.remove(name);
            self.store.forget(name);
            self.save_desired();
        }
    }

    fn save_desired(&self) {
        let mut set: BTreeMap<String, Desired> = self
            .collectors
            .iter()
            .filter_map(|(name, id)| {
                let run = self.live.get(id)?.collector.as_ref()?;
                Some((
                    name.clone(),
                    Desired {
                        task_id: id.clone(),
                        args: run.args.clone(),
                        restart: run.restart,
                    },
                ))
            })
            .collect();
        // Still wanted while their previous process is being stopped.
        for (name, desired) in self.awaiting_leftovers.values().flatten() {
            set.entry(name.clone()).or_insert_with(|| desired.clone());
        }
        self.store.save(&set);
    }

    /// Holds passed, restarts due. Returns when to be called again.
    pub(super) fn tick_collectors(&mut self) -> Duration {
        let now = Instant::now();
        let mut next = Duration::from_secs(1);
        let mut held = Vec::new();
        let mut due = Vec::new();
        for (id, live) in &self.live {
            let Some(run) = &live.collector else { continue };
            if live.ending.is_some() {
                continue;
            }
            if let (Some(_), Some(since), false) = (live.process, run.up_since, run.held) {
                if now.duration_since(since) >= HOLD {
                    held.push(id.clone());
                } else {
                    next = next.min(HOLD - now.duration_since(since));
                }
            }
            if let Some(at) = run.restart_at {
                if at <= now {
                    due.push(id.clone());
                } else {
                    next = next.min(at - now);
                }
            }
        }
        for id in held {
            self.collector_held(&id);
        }
        for id in due {
            if let Some(run) = self.live.get_mut(&id).and_then(|l| l.collector.as_mut()) {
                run.restarts += 1;
                run.restart_at = None;
            }
            self.launch(&id);
        }
        next.max(Duration::from_millis(10))
    }

    /// A collector stayed up: `running`, and a replacement is complete.
    fn collector_held(&mut self, id: &str) {
        let Some(live) = self.live.get_mut(id) else {
            return;
        };
        let pid = live.process.map(|p| p.pid);
        let already_running = live.state == State::Running;
        let Some(run) = live.collector.as_mut() else {
            return;
        };
        run.held = true;
        run.fresh = false;
        let replaced = run.replacing.take();
        let name = run.name.clone();
        if let Some(old) = replaced {
            self.store.drop_previous(&name);
            self.live.remove(&old);
            self.emit_for(&old, State::Stopped, |_| {});
        }
        self.collectors.insert(name, id.to_string());
        self.save_desired();
        if !already_running {
            self.emit_for(id, State::Running, |u| u.pid = pid);
        }
    }

    /// After a restart of the agent: every desired collector runs again,
    /// under the task that owned it. One whose previous process is still
    /// being stopped waits for it (`leftovers_gone`), so there is never a
    /// duplicate.
    pub(super) fn resume_collectors(&mut self, desired: BTreeMap<String, Desired>) {
        self.store.prune_logs(&desired);
        for (name, d) in desired {
            if self.live.contains_key(&d.task_id) {
                continue;
            }
            match self.awaiting_leftovers.get_mut(&d.task_id) {
                Some(slot) => *slot = Some((name, d)),
                None => self.resume_collector(name, d),
            }
        }
    }

    pub(super) fn resume_collector(&mut self, name: String, d: Desired) {
        let record = self.ledger.get(&d.task_id).cloned();
        let Some(record) = record.filter(|r| !r.state.is_final()) else {
            log::warn!(
                "collector {name}: its task {} is gone or final; forgetting it",
                d.task_id
            );
            self.store.forget(&name);
            return;
        };
        if let Some(owner) = self.collectors.get(&name) {
            // Taken over while its old process was being stopped.
            log::info!(task_id = d.task_id.as_str(); "collector {name}: task {owner} took it over during recovery");
            self.emit_for(&d.task_id, State::Stopped, |_| {});
            return;
        }
        self.store.restore_previous(&name);
        let Some(config) = self.store.read_config(&name) else {
            log::warn!("collector {name}: its config file is missing; the task fails");
            self.emit_for(&d.task_id, State::Failed, |u| {
                *u = u.clone().with_error(
                    ErrorKind::AgentRestarted,
                    "config file missing after a restart",
                );
            });
            return;
        };
        let task = super::payload::Task {
            id: d.task_id.clone(),
            kind: super::payload::Kind::CollectorStart(CollectorStart {
                name: name.clone(),
                source: ConfigSource::Inline(String::new()),
                variables: BTreeMap::new(),
                sha256: None,
                restart: d.restart,
                args: d.args.clone(),
            }),
            timeout: None,
            limits: None,
        };
        let run = Run {
            config: Some(config),
            fresh: false,
            ..Run::new(&name, &d.args, d.restart)
        };
        let live = Live {
            deadline: None,
            task,
            state: record.state,
            accepted_reported: true,
            accepted: Instant::now(),
            started_at: std::time::SystemTime::now(),
            process: None,
            ending: None,
            ready_by: None,
            waiting_for: Default::default(),
            stopped_count: 0,
            usage: None,
            collector: Some(run),
        };
        log::info!(task_id = d.task_id.as_str(); "collector {name} starts again after the agent restart");
        self.live.insert(d.task_id.clone(), live);
        self.collectors.insert(name, d.task_id.clone());
        // Said again once it has stayed up (a collector may go
        // `running` more than once).
        if let Some(l) = self.live.get_mut(&d.task_id) {
            l.state = State::Accepted;
        }
        self.launch(&d.task_id);
    }
}

/// Checksum (before substitution, as the contract says), UTF-8, then
/// substitution; errors as `(kind, message)`.
fn prepare(
    bytes: Vec<u8>,
    sha256: Option<&str>,
    variables: &BTreeMap<String, String>,
) -> std::result::Result<String, (ErrorKind, String)> {
    if let Some(want) = sha256 {
        let got = crate::sha256::hex_digest(&bytes);
        if got != want {
            return Err((
                ErrorKind::ChecksumMismatch,
                format!("sha256: the config's is {got}, expected {want}"),
            ));
        }
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        (
            ErrorKind::InvalidPayload,
            "config: not UTF-8 text".to_string(),
        )
    })?;
    substitute(&text, variables).map_err(|e| (ErrorKind::InvalidPayload, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn substitutes_verbatim_once() {
        let v = vars(&[("HOST", "10.0.0.1"), ("X", "${HOST}")]);
        assert_eq!(
            substitute("a ${HOST} b ${X}", &v).unwrap(),
            "a 10.0.0.1 b ${HOST}"
        );
    }

    #[test]
    fn missing_values_are_named() {
        let err = substitute("x ${NOPE} y", &vars(&[])).unwrap_err();
        assert!(err.contains("${NOPE}"), "{err}");
    }

    #[test]
    fn literals_and_foreign_syntax_pass() {
        let v = vars(&[]);
        assert_eq!(
            substitute("$${HOST} ${env:HOME} $5 ${1} $", &v).unwrap(),
            "${HOST} ${env:HOME} $5 ${1} $"
        );
        assert_eq!(substitute("${unterminated", &v).unwrap(), "${unterminated");
    }
}
