//! The claim thread: long-polls the manager for tasks (section 3.3) and
//! hands them to the main loop.
//!
//! It asks for as many tasks as there are free slots, waits for the main
//! loop to take each batch before asking again (so the count is never
//! stale), and pauses while the outbox is full, the state directory cannot
//! be written (a task that cannot be recorded must not be taken) or the
//! agent is stopping.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::event::Event;
use crate::manager::{Failure, Manager, POLL_GRACE};
use crate::stop::Stop;
use crate::telemetry::{Telemetry, Worker};

/// An empty answer sooner than this after asking is followed by a pause, so
/// a `poll_wait_s` of 0 (or a manager that ignores `wait`) cannot turn the
/// long poll into a busy loop.
const MIN_POLL_PERIOD: Duration = Duration::from_secs(1);

pub fn run(manager: Manager, telemetry: Arc<Telemetry>, events: Sender<Event>, stop: Stop) {
    let mut backoff = Backoff::new();
    while !stop.is_requested() {
        let (agent_id, registered, wait) = {
            let s = telemetry.session();
            (s.agent_id.clone(), s.registered, s.poll_wait)
        };
        telemetry.progress(
            Worker::Claim,
            wait + POLL_GRACE + crate::manager::CONNECT_TIMEOUT + Duration::from_secs(10),
        );
        let (free, can_take) = {
            let view = telemetry.task_view();
            (view.free_slots, view.can_take_tasks())
        };
        let Some(agent_id) = agent_id.filter(|_| registered && can_take) else {
            if stop.wait(Duration::from_millis(200)) {
                break;
            }
            continue;
        };
        let asked = Instant::now();
        let delay = match manager.claim(&agent_id, free, wait) {
            Ok(tasks) => {
                backoff.reset();
                telemetry.claims.fetch_add(1, Ordering::Relaxed);
                if stop.is_requested() {
                    if !tasks.is_empty() {
                        // Not in the ledger, so not lost: the manager hands
                        // out again what it believes was lost.
                        log::info!("stopping: leaving {} claimed task(s) unrun", tasks.len());
                    }
                    break;
                }
                let empty = tasks.is_empty();
                log::debug!("claim answered with {} task(s)", tasks.len());
                if !empty {
                    let (taken, done) = mpsc::channel();
                    if events.send(Event::Claimed { tasks, taken }).is_err() {
                        break;
                    }
                    let _ = done.recv_timeout(Duration::from_secs(30));
                }
                if empty {
                    MIN_POLL_PERIOD.saturating_sub(asked.elapsed())
                } else {
                    Duration::ZERO
                }
            }
            Err(Failure::Unauthorized { .. } | Failure::UnknownAgent) => {
                telemetry.count_manager_error(crate::manager::Endpoint::Claim);
                telemetry.request_registration();
                backoff.next_delay(None)
            }
            Err(Failure::Transient {
                retry_after,
                detail,
            }) => {
                telemetry.count_manager_error(crate::manager::Endpoint::Claim);
                log::debug!("claim: {detail}");
                backoff.next_delay(retry_after)
            }
            Err(failure @ Failure::Rejected { .. }) => {
                telemetry.count_manager_error(crate::manager::Endpoint::Claim);
                log::warn!("claim: {failure}");
                backoff.at_cap()
            }
        };
        if !delay.is_zero() {
            telemetry.progress(Worker::Claim, delay + Duration::from_secs(10));
            if stop.wait(delay) {
                break;
            }
        }
    }
    telemetry.retire(Worker::Claim);
}
