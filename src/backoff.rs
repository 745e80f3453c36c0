//! Exponential backoff with full jitter (PROTOCOL.md section 1).
//!
//! Thousands of agents lose the same manager at the same moment; full jitter
//! (a uniform delay between zero and the exponential ceiling) keeps them from
//! coming back in lockstep.

use std::time::Duration;

pub const BASE: Duration = Duration::from_secs(1);
pub const CAP: Duration = Duration::from_secs(60);

pub struct Backoff {
    attempt: u32,
    rng: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

impl Backoff {
    pub fn new() -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64
            ^ (u64::from(std::process::id()) << 32);
        Backoff {
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// The next delay: uniform in `[0, min(cap, base * 2^attempt)]`, and
    /// never shorter than a server's `Retry-After` (itself capped at the
    /// cap, so a confused manager cannot park the fleet for a day). A
    /// `Retry-After` is a floor under the backoff, never a way around it:
    /// `Retry-After: 0` must not turn retries into a busy loop.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let ceiling = BASE.saturating_mul(1u32 << self.attempt.min(16)).min(CAP);
        self.attempt = self.attempt.saturating_add(1);
        let fraction = (self.next_random() >> 11) as f64 / (1u64 << 53) as f64;
        let jittered = ceiling.mul_f64(fraction);
        jittered.max(retry_after.unwrap_or_default().min(CAP))
    }

    /// The delay for an answer that retrying soon will not fix (an unexpected
    /// 4xx): always the cap.
    pub fn at_cap(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        CAP
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for spreading retries, and no dependency.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_the_growing_ceiling() {
        let mut b = Backoff::new();
        for attempt in 0..20u32 {
            let ceiling = BASE.saturating_mul(1 << attempt.min(16)).min(CAP);
            let d = b.next_delay(None);
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        }
    }

    #[test]
    fn retry_after_is_a_capped_floor() {
        let mut b = Backoff::new();
        assert!(b.next_delay(Some(Duration::from_secs(7))) >= Duration::from_secs(7));
        assert_eq!(b.next_delay(Some(Duration::from_secs(3600))), CAP);
        // A zero floor leaves the growing backoff in charge.
        b.attempt = 10;
        let total: Duration = (0..20)
            .map(|_| {
                b.attempt = 10;
                b.next_delay(Some(Duration::ZERO))
            })
            .sum();
        assert!(total > Duration::from_secs(100), "{total:?}");
    }

    #[test]
    fn jitter_spreads() {
        let mut b = Backoff::new();
        b.attempt = 6;
        let delays: Vec<_> = (0..50)
            .map(|_| {
                b.attempt = 6;
                b.next_delay(None)
            })
            .collect();
        let distinct = delays
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        assert!(distinct > 40);
    }
}
