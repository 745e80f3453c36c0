//! The heartbeat thread: registers with the manager and then keeps it told,
//! every `heartbeat_interval_s`, how the device and its tasks are doing.
//!
//! It runs on its own fixed-rate schedule and only reads the latest metrics
//! snapshot (taken by the metrics thread), so neither a slow /proc read nor a
//! long task can make a heartbeat late. Registration lives here too, because
//! every rule that says "register again" is a rule about the session the
//! heartbeat keeps alive.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::backoff::Backoff;
use crate::clock;
use crate::event::Event;
use crate::manager::{Capabilities, Endpoint, Failure, Manager, RegisterRequest};
use crate::metrics::{Categories, HeartbeatMetrics};
use crate::state::{Identity, StateDir};
use crate::stop::Stop;
use crate::telemetry::{Telemetry, Worker};

/// Slack on top of a bounded wait before the watchdog calls it a stall.
const PROGRESS_SLACK: Duration = Duration::from_secs(10);

#[derive(Serialize)]
struct HeartbeatRequest<'a> {
    agent_id: &'a str,
    instance_id: &'a str,
    seq: u64,
    sent_at: String,
    uptime_s: f64,
    metrics: Option<HeartbeatMetrics<'a>>,
    tasks: Vec<serde_json::Value>,
    pending_updates: u64,
}

pub struct Heartbeat {
    pub manager: Manager,
    pub telemetry: Arc<Telemetry>,
    pub state: StateDir,
    pub events: Sender<Event>,
    pub stop: Stop,
    pub capabilities: Capabilities,
}

impl Heartbeat {
    pub fn run(self) {
        let mut seq: u64 = 0;
        let mut registrations: u64 = 0;
        let mut identity = self.state.load_identity();
        let mut need_register = true;
        let mut backoff = Backoff::new();
        let mut next_due = Instant::now();
        loop {
            if self.stop.is_requested() {
                break;
            }
            if self.telemetry.take_registration_request() {
                need_register = true;
            }
            if need_register {
                registrations += 1;
                match self.register(&mut identity, registrations, &mut backoff) {
                    Some(()) => {
                        need_register = false;
                        next_due = Instant::now();
                    }
                    None => break,
                }
            }
            self.telemetry.progress(
                Worker::Heartbeat,
                next_due.saturating_duration_since(Instant::now()) + PROGRESS_SLACK,
            );
            if self.stop.wait_until(next_due) {
                break;
            }
            seq += 1;
            self.telemetry.progress(
                Worker::Heartbeat,
                crate::manager::CONNECT_TIMEOUT + crate::manager::READ_TIMEOUT * 2 + PROGRESS_SLACK,
            );
            match self.beat(identity.agent_id.as_deref().unwrap_or_default(), seq) {
                Ok(()) => {
                    backoff.reset();
                    // Fixed rate: the next beat is due one interval after
                    // this one was due, not after it finished; an interval
                    // the answer just set applies from this next beat on.
                    next_due += self.telemetry.session().heartbeat_interval;
                    if next_due < Instant::now() {
                        next_due = Instant::now();
                    }
                }
                Err(Failure::Unauthorized { .. } | Failure::UnknownAgent) => {
                    need_register = true;
                }
                Err(Failure::Transient { retry_after, .. }) => {
                    next_due = Instant::now() + backoff.next_delay(retry_after);
                }
                Err(Failure::Rejected { .. }) => {
                    next_due = Instant::now() + backoff.at_cap();
                }
            }
        }
        self.telemetry.retire(Worker::Heartbeat);
    }

    /// Registers, retrying forever on transient trouble. `None` when the
    /// agent must stop instead (key rejected, or shutdown requested).
    fn register(&self, identity: &mut Identity, n: u64, backoff: &mut Backoff) -> Option<()> {
        let idempotency_key = format!("register:{}:{n}", self.telemetry.instance_id);
        let system = crate::sysinfo::gather(std::path::Path::new("/"));
        loop {
            self.telemetry.progress(
                Worker::Heartbeat,
                crate::manager::CONNECT_TIMEOUT + crate::manager::READ_TIMEOUT * 2 + PROGRESS_SLACK,
            );
            let body = RegisterRequest {
                name: &self.telemetry.name,
                agent_version: crate::VERSION,
                instance_id: &self.telemetry.instance_id,
                agent_id: identity.agent_id.as_deref(),
                system: &system,
                capabilities: &self.capabilities,
                tasks: self.telemetry.task_view().reports.clone(),
            };
            let delay = match self.manager.register(&body, &idempotency_key) {
                Ok(answer) => {
                    backoff.reset();
                    if identity.agent_id.as_deref() != Some(answer.agent_id.as_str()) {
                        identity.agent_id = Some(answer.agent_id.clone());
                        if let Err(e) = self.state.save_identity(identity) {
                            // The id still works for this run; only a
                            // restart would register as a new agent.
                            log::warn!("{e}");
                        }
                    }
                    self.apply_register_answer(&answer);
                    self.telemetry.registrations.fetch_add(1, Ordering::Relaxed);
                    log::info!(
                        agent_id = answer.agent_id.as_str();
                        "registered with {} as {}",
                        self.manager.base_url(),
                        answer.agent_id
                    );
                    let _ = self.events.send(Event::Registered {
                        agent_id: answer.agent_id,
                    });
                    return Some(());
                }
                Err(Failure::Unauthorized { status }) => {
                    self.telemetry.count_manager_error(Endpoint::Register);
                    self.note_failure(Endpoint::Register, &Failure::Unauthorized { status });
                    let _ = self.events.send(Event::KeyRejected { status });
                    return None;
                }
                Err(failure) => {
                    self.telemetry.count_manager_error(Endpoint::Register);
                    self.note_failure(Endpoint::Register, &failure);
                    match failure {
                        Failure::Transient { retry_after, .. } => backoff.next_delay(retry_after),
                        _ => backoff.at_cap(),
                    }
                }
            };
            self.telemetry
                .progress(Worker::Heartbeat, delay + PROGRESS_SLACK);
            if self.stop.wait(delay) {
                return None;
            }
        }
    }

    fn apply_register_answer(&self, answer: &crate::manager::RegisterAnswer) {
        let mut session = self.telemetry.session();
        session.agent_id = Some(answer.agent_id.clone());
        session.registered = true;
        // Each setting lasts until the next registration: one this answer
        // leaves out goes back to the agent's own configuration.
        let configured = session.configured.clone();
        session.heartbeat_interval = answer
            .heartbeat_interval_s
            .map_or(configured.heartbeat_interval, |s| {
                clamp_seconds(s, 0.2, 300.0)
            });
        session.poll_wait = answer
            .poll_wait_s
            .map_or(configured.poll_wait, |s| clamp_seconds(s, 0.0, 120.0));
        session.pushgateway_url = match &answer.pushgateway_url {
            None => configured.pushgateway_url,
            Some(None) => None,
            Some(Some(url)) => Some(url.trim_end_matches('/').to_string()),
        };
        // Lasts until the next registration, which resets it when absent.
        session.heartbeat_metrics = answer
            .metrics
            .as_ref()
            .and_then(Categories::from_manager_value);
    }

    fn beat(&self, agent_id: &str, seq: u64) -> Result<(), Failure> {
        let snapshot = self.telemetry.snapshot();
        // One guard at a time: two in one expression would deadlock.
        let view = self.telemetry.task_view().clone();
        let categories = self.telemetry.heartbeat_categories();
        let body = HeartbeatRequest {
            agent_id,
            instance_id: &self.telemetry.instance_id,
            seq,
            sent_at: clock::rfc3339(SystemTime::now()),
            uptime_s: (self.telemetry.uptime().as_secs_f64() * 10.0).round() / 10.0,
            metrics: snapshot.as_deref().map(|s| s.for_heartbeat(categories)),
            tasks: view.reports,
            pending_updates: view.outbox_pending as u64,
        };
        let idempotency_key = format!("heartbeat:{}:{seq}", self.telemetry.instance_id);
        match self.manager.heartbeat(&body, &idempotency_key) {
            Ok(answer) => {
                self.telemetry
                    .heartbeats_sent
                    .fetch_add(1, Ordering::Relaxed);
                let mut session = self.telemetry.session();
                session.last_heartbeat_ok = Some((Instant::now(), SystemTime::now()));
                session.consecutive_failures = 0;
                session.last_error = None;
                if let Some(s) = answer.heartbeat_interval_s {
                    let interval = clamp_seconds(s, 0.2, 300.0);
                    if interval != session.heartbeat_interval {
                        log::info!(
                            "manager set the heartbeat interval to {}",
                            clock::format_duration(interval)
                        );
                        session.heartbeat_interval = interval;
                    }
                }
                if let Some(value) = &answer.metrics {
                    let chosen = Categories::from_manager_value(value);
                    if chosen != session.heartbeat_metrics {
                        log::info!(
                            "manager set the heartbeat's metric categories to {}",
                            chosen.map_or("the agent's own".into(), |c| c.to_string())
                        );
                        session.heartbeat_metrics = chosen;
                    }
                }
                Ok(())
            }
            Err(failure) => {
                self.telemetry
                    .heartbeats_failed
                    .fetch_add(1, Ordering::Relaxed);
                self.telemetry.count_manager_error(Endpoint::Heartbeat);
                self.note_failure(Endpoint::Heartbeat, &failure);
                Err(failure)
            }
        }
    }

    fn note_failure(&self, endpoint: Endpoint, failure: &Failure) {
        let mut session = self.telemetry.session();
        session.consecutive_failures = session.consecutive_failures.saturating_add(1);
        session.last_error = Some(format!("{}: {failure}", endpoint.label()));
        // The first failure of a streak is news; the next ones are noise
        // until the streak ends.
        let first = session.consecutive_failures == 1;
        drop(session);
        match failure {
            Failure::Rejected { .. } => log::warn!("{}: {failure}", endpoint.label()),
            _ if first => log::warn!("{}: {failure}; retrying with backoff", endpoint.label()),
            _ => log::debug!("{}: {failure}", endpoint.label()),
        }
    }
}

/// The manager's numbers are clamped into the protocol's ranges, never
/// rejected (section 3.1).
fn clamp_seconds(value: f64, min: f64, max: f64) -> Duration {
    let value = if value.is_finite() { value } else { min };
    Duration::from_secs_f64(value.clamp(min, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_values_are_clamped() {
        assert_eq!(clamp_seconds(0.01, 0.2, 300.0), Duration::from_millis(200));
        assert_eq!(clamp_seconds(1e9, 0.2, 300.0), Duration::from_secs(300));
        assert_eq!(
            clamp_seconds(f64::NAN, 0.2, 300.0),
            Duration::from_millis(200)
        );
        assert_eq!(clamp_seconds(2.0, 0.2, 300.0), Duration::from_secs(2));
    }
}
