//! Cooperative shutdown: one flag that every worker thread sleeps on.
//!
//! Worker threads never sleep with `thread::sleep`; they wait on this, so a
//! SIGTERM wakes every one of them at once instead of after its next timer.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub struct Stop {
    inner: Arc<(Mutex<bool>, Condvar)>,
}

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }

    pub fn request(&self) {
        let (flag, cvar) = &*self.inner;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cvar.notify_all();
    }

    pub fn is_requested(&self) -> bool {
        *self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleeps up to `timeout`; true when a stop was requested.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (flag, cvar) = &*self.inner;
        let mut stopped = flag.lock().unwrap_or_else(|p| p.into_inner());
        while !*stopped {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            stopped = cvar
                .wait_timeout(stopped, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }

    /// Sleeps until `deadline`; true when a stop was requested.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        self.wait(deadline.saturating_duration_since(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wakes_a_waiter() {
        let stop = Stop::new();
        let waiter = {
            let stop = stop.clone();
            std::thread::spawn(move || stop.wait(Duration::from_secs(30)))
        };
        stop.request();
        assert!(waiter.join().unwrap());
        assert!(!Stop::new().wait(Duration::from_millis(1)));
    }
}
