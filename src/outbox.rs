//! The durable outbox of status updates (section 6.2, "at least once, in
//! order").
//!
//! Every update bound for the manager is written here, one file per update
//! (`outbox/<n>.json`, atomically and fsynced), before anything else happens
//! to it, and the file is removed only once the manager acknowledged it
//! (`2xx` or `409`). The sender thread sends each task's updates oldest
//! first; one task stuck on an odd answer does not hold the others back.
//! Past [`LIMIT`] entries the agent stops claiming new tasks, but an update
//! is never dropped: final states are still written.
//!
//! When the state directory cannot be written (a full disk), an update is
//! still queued, in memory, and sent like any other: the manager hearing of
//! it matters more than a file that cannot be made. The task table retries
//! the write ([`Outbox::persist_unwritten`]) until it succeeds or the
//! update is acknowledged, whichever comes first.
//!
//! Memory stays bounded while the manager is gone for days: updates are
//! held in memory only up to [`MEMORY_BUDGET`] bytes; the rest are read
//! back from their files when their turn comes.
//!
//! An entry that cannot be read is moved to `outbox/corrupt/` for an
//! operator to look at; the newest [`MAX_CORRUPT`] are kept there, so a
//! disk that keeps tearing writes cannot fill the state directory with them.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::manager::{Endpoint, Failure, Manager};
use crate::stop::Stop;
use crate::telemetry::{Telemetry, Worker};
use crate::update::Update;

/// Pending updates past which claiming stops.
pub const LIMIT: usize = 10_000;
/// How many unreadable entries `outbox/corrupt/` keeps (the newest).
pub const MAX_CORRUPT: usize = 1000;
/// Bytes of pending updates held in memory; past it they wait on disk only.
pub const MEMORY_BUDGET: usize = 4 * 1024 * 1024;

struct Entry {
    task_id: String,
    /// The update, unless it waits on disk only (see [`MEMORY_BUDGET`]).
    held: Option<Update>,
    /// Size of its file, counted against the budget while held.
    bytes: usize,
    not_before: Instant,
    /// Its file exists (false only while the state directory is failing).
    durable: bool,
}

struct Inner {
    entries: BTreeMap<u64, Entry>,
    next: u64,
    held_bytes: usize,
}

impl Inner {
    /// Queues an update, held in memory if it must be (no file) or fits.
    fn insert(&mut self, n: u64, update: Update, bytes: usize, durable: bool) {
        let hold = !durable || self.held_bytes + bytes <= MEMORY_BUDGET;
        if hold {
            self.held_bytes += bytes;
        }
        self.entries.insert(
            n,
            Entry {
                task_id: update.task_id.clone(),
                held: hold.then_some(update),
                bytes,
                not_before: Instant::now(),
                durable,
            },
        );
    }

    fn remove(&mut self, n: u64) -> Option<Entry> {
        let entry = self.entries.remove(&n)?;
        if entry.held.is_some() {
            self.held_bytes -= entry.bytes;
        }
        Some(entry)
    }
}

pub struct Outbox {
    dir: PathBuf,
    inner: Mutex<Inner>,
    changed: Condvar,
    limit: usize,
}

impl Outbox {
    /// Opens `<state>/outbox`, loading what an earlier run left. Files that
    /// cannot be read are moved to `outbox/corrupt/` with a log line.
    pub fn open(state_dir: &Path) -> Result<Outbox> {
        Outbox::open_with_limit(state_dir, LIMIT)
    }

    /// Like [`Outbox::open`] with another limit.
    pub fn open_with_limit(state_dir: &Path, limit: usize) -> Result<Outbox> {
        let dir = state_dir.join("outbox");
        crate::state::ensure_private_dir(&dir)?;
        let mut inner = Inner {
            entries: BTreeMap::new(),
            next: 1,
            held_bytes: 0,
        };
        let listing = std::fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))?;
        for item in listing.flatten() {
            let path = item.path();
            let name = item.file_name().to_string_lossy().into_owned();
            if !path.is_file() || name.starts_with('.') {
                continue;
            }
            let number = name
                .strip_suffix(".json")
                .and_then(|n| n.parse::<u64>().ok());
            let update = crate::state::read_json::<Update>(&path);
            match (number, update) {
                (Some(n), Ok(Some(update))) if crate::ids::is_valid_id(&update.task_id) => {
                    let bytes = item.metadata().map_or(0, |m| m.len() as usize);
                    inner.insert(n, update, bytes, true);
                }
                _ => set_aside(&dir, &path, &name),
            }
        }
        crate::spool::prune_rejected(&dir.join("corrupt"), MAX_CORRUPT);
        inner.next = inner.entries.keys().next_back().map_or(1, |n| n + 1);
        Ok(Outbox {
            dir,
            inner: Mutex::new(inner),
            changed: Condvar::new(),
            limit,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry_path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{n:020}.json"))
    }

    /// Writes `update` durably and queues it for sending. When the write
    /// fails the update is queued all the same, in memory only, and the
    /// error says why it is not durable yet.
    pub fn push(&self, update: &Update) -> Result<()> {
        let bytes = crate::state::encode_json(update)?;
        let mut inner = self.lock();
        let n = inner.next;
        let written = crate::state::write_atomic(&self.entry_path(n), &bytes);
        inner.next += 1;
        inner.insert(n, update.clone(), bytes.len(), written.is_ok());
        self.changed.notify_all();
        written
    }

    /// An entry's update: from memory, or read back from its file.
    fn load(&self, n: u64, entry: &Entry) -> Result<Update> {
        if let Some(update) = &entry.held {
            return Ok(update.clone());
        }
        let path = self.entry_path(n);
        crate::state::read_json::<Update>(&path)?.ok_or_else(|| Error::CorruptState {
            path,
            message: "the file is gone".into(),
        })
    }

    /// Queued updates that have no file yet.
    pub fn unwritten(&self) -> usize {
        self.lock().entries.values().filter(|e| !e.durable).count()
    }

    /// Writes the files of updates queued while the state directory could
    /// not be written, oldest first; stops at the first failure.
    pub fn persist_unwritten(&self) -> Result<()> {
        let mut inner = self.lock();
        for (n, entry) in inner.entries.iter_mut().filter(|(_, e)| !e.durable) {
            if let Some(update) = &entry.held {
                crate::state::write_json(&self.entry_path(*n), update)?;
            }
            entry.durable = true;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_full(&self) -> bool {
        self.len() >= self.limit
    }

    /// Every pending update, oldest first, one at a time (reconciling the
    /// ledger at start must not load them all at once).
    pub fn each_pending(&self, mut f: impl FnMut(Update)) {
        let inner = self.lock();
        for (n, entry) in &inner.entries {
            match self.load(*n, entry) {
                Ok(update) => f(update),
                Err(e) => log::warn!("{e}"),
            }
        }
    }

    /// Every pending update, oldest first.
    pub fn pending(&self) -> Vec<Update> {
        let mut all = Vec::new();
        self.each_pending(|u| all.push(u));
        all
    }

    /// Bytes of pending updates held in memory.
    pub fn held_bytes(&self) -> usize {
        self.lock().held_bytes
    }

    /// The oldest update of each task, in outbox order, whose retry time
    /// has come; waits up to `timeout` for one.
    fn next_ready(&self, timeout: Duration) -> Option<(u64, Update)> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            let now = Instant::now();
            let mut seen = HashSet::new();
            let mut soonest: Option<Instant> = None;
            let mut due = None;
            for (n, entry) in &inner.entries {
                if !seen.insert(entry.task_id.as_str()) {
                    continue; // an older update of this task goes first
                }
                if entry.not_before <= now {
                    due = Some(*n);
                    break;
                }
                soonest = Some(soonest.map_or(entry.not_before, |s| s.min(entry.not_before)));
            }
            if let Some(n) = due {
                let loaded = inner.entries.get(&n).map(|entry| self.load(n, entry));
                match loaded {
                    Some(Ok(update)) => return Some((n, update)),
                    Some(Err(e)) => {
                        // Written, then damaged on disk: nothing is left to
                        // send. Said loudly, and the task's later updates go.
                        log::error!("outbox entry {n} cannot be read back: {e}; it is not sent");
                        inner.remove(n);
                        let path = self.entry_path(n);
                        if path.exists() {
                            set_aside(&self.dir, &path, &format!("{n:020}.json"));
                            crate::spool::prune_rejected(&self.dir.join("corrupt"), MAX_CORRUPT);
                        }
                    }
                    None => {}
                }
                continue;
            }
            let until = soonest.map_or(deadline, |s| s.min(deadline));
            if now >= deadline {
                return None;
            }
            inner = self
                .changed
                .wait_timeout(inner, until.saturating_duration_since(now))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn acknowledge(&self, n: u64) {
        let mut inner = self.lock();
        let durable = inner.remove(n).is_some_and(|e| e.durable);
        let path = self.entry_path(n);
        if durable && let Err(e) = std::fs::remove_file(&path) {
            log::warn!("cannot remove sent update {}: {e}", path.display());
        }
        self.changed.notify_all();
    }

    fn defer(&self, n: u64, delay: Duration) {
        if let Some(entry) = self.lock().entries.get_mut(&n) {
            entry.not_before = Instant::now() + delay;
        }
    }

    /// Makes every deferred update due now (after a re-registration).
    fn retry_all_now(&self) {
        let mut inner = self.lock();
        let now = Instant::now();
        for entry in inner.entries.values_mut() {
            entry.not_before = now;
        }
        self.changed.notify_all();
    }

    /// Waits until the outbox is empty or `deadline` passes (shutdown).
    pub fn wait_empty(&self, deadline: Instant) -> bool {
        let mut inner = self.lock();
        while !inner.entries.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            inner = self
                .changed
                .wait_timeout(inner, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }
}

fn set_aside(dir: &Path, path: &Path, name: &str) {
    let corrupt = dir.join("corrupt");
    let _ = crate::state::ensure_private_dir(&corrupt);
    let target = corrupt.join(name);
    log::warn!(
        "outbox entry {} is unreadable; moved to {} (it will not be sent)",
        path.display(),
        target.display()
    );
    if std::fs::rename(path, &target).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

/// The sender thread: delivers outbox entries to the manager until stopped.
pub fn run_sender(outbox: Arc<Outbox>, manager: Manager, telemetry: Arc<Telemetry>, stop: Stop) {
    let mut backoff = Backoff::new();
    let mut registered_generation = telemetry.registrations.load(Ordering::Relaxed);
    while !stop.is_requested() {
        telemetry.progress(Worker::Outbox, Duration::from_secs(90));
        let generation = telemetry.registrations.load(Ordering::Relaxed);
        if generation != registered_generation {
            registered_generation = generation;
            outbox.retry_all_now();
        }
        let agent_id = telemetry.session().agent_id.clone();
        let Some(agent_id) = agent_id.filter(|_| telemetry.session().registered) else {
            if stop.wait(Duration::from_millis(200)) {
                break;
            }
            continue;
        };
        let Some((n, update)) = outbox.next_ready(Duration::from_millis(500)) else {
            continue;
        };
        match manager.status(&agent_id, &update) {
            Ok(()) => {
                backoff.reset();
                outbox.acknowledge(n);
                telemetry.updates_delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(failure) => {
                telemetry.count_manager_error(Endpoint::Status);
                let delay = match &failure {
                    Failure::Unauthorized { .. } | Failure::UnknownAgent => {
                        telemetry.request_registration();
                        backoff.next_delay(None)
                    }
                    Failure::Transient { retry_after, .. } => backoff.next_delay(*retry_after),
                    Failure::Rejected { .. } => {
                        log::warn!(
                            task_id = update.task_id.as_str();
                            "status update {} of task {} refused: {failure}; retrying in {}s",
                            update.seq,
                            update.task_id,
                            crate::backoff::CAP.as_secs()
                        );
                        outbox.defer(n, crate::backoff::CAP);
                        continue;
                    }
                };
                log::debug!(
                    "status update of {} not delivered: {failure}",
                    update.task_id
                );
                // Trouble reaching the manager holds every update back, not
                // just this one: they would all meet the same trouble.
                if stop.wait(delay) {
                    break;
                }
            }
        }
    }
    telemetry.retire(Worker::Outbox);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::State;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("outpost-outbox-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn full_at_the_limit_but_never_refuses_an_update() {
        let d = dir("limit");
        let outbox = Outbox::open_with_limit(&d, 2).unwrap();
        outbox.push(&Update::new("a", 1, State::Running)).unwrap();
        assert!(!outbox.is_full());
        outbox.push(&Update::new("a", 2, State::Succeeded)).unwrap();
        assert!(outbox.is_full());
        outbox.push(&Update::new("b", 1, State::Failed)).unwrap();
        assert_eq!(
            outbox.len(),
            3,
            "a final state past the limit is still kept"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_update_that_cannot_be_written_is_queued_and_written_later() {
        let d = dir("unwritable");
        let outbox = Outbox::open(&d).unwrap();
        // A file where the directory was: every write in it fails, as on a
        // full disk, without needing one.
        std::fs::remove_dir_all(d.join("outbox")).unwrap();
        std::fs::write(d.join("outbox"), b"").unwrap();
        assert!(outbox.push(&Update::new("a", 1, State::Running)).is_err());
        assert_eq!((outbox.len(), outbox.unwritten()), (1, 1));
        assert!(outbox.persist_unwritten().is_err());
        let (n, queued) = outbox.next_ready(Duration::ZERO).unwrap();
        assert_eq!(
            (queued.task_id.as_str(), queued.seq),
            ("a", 1),
            "still sent"
        );
        std::fs::remove_file(d.join("outbox")).unwrap();
        std::fs::create_dir(d.join("outbox")).unwrap();
        outbox.persist_unwritten().unwrap();
        assert_eq!(outbox.unwritten(), 0);
        assert!(d.join(format!("outbox/{n:020}.json")).exists());
        drop(outbox);
        let reopened = Outbox::open(&d).unwrap();
        assert_eq!(reopened.pending()[0].task_id, "a");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn memory_is_bounded_and_what_waits_on_disk_is_sent_in_order() {
        let d = dir("budget");
        let outbox = Outbox::open(&d).unwrap();
        let big = "x".repeat(100 * 1024);
        for seq in 1..=60 {
            let mut u = Update::new("big", seq, State::Running);
            u.result = Some(serde_json::json!({ "iperf3": big }));
            outbox.push(&u).unwrap();
        }
        assert!(
            outbox.held_bytes() <= MEMORY_BUDGET,
            "{}",
            outbox.held_bytes()
        );
        for seq in 1..=60 {
            let (n, u) = outbox.next_ready(Duration::ZERO).unwrap();
            assert_eq!(u.seq, seq);
            assert_eq!(
                u.result.as_ref().unwrap()["iperf3"].as_str().unwrap().len(),
                big.len()
            );
            outbox.acknowledge(n);
        }
        assert!(outbox.is_empty());
        assert_eq!(outbox.held_bytes(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unreadable_entries_set_aside_do_not_pile_up_without_bound() {
        let d = dir("corrupt-bound");
        std::fs::create_dir_all(d.join("outbox/corrupt")).unwrap();
        for n in 0..MAX_CORRUPT + 5 {
            std::fs::write(d.join(format!("outbox/corrupt/{n:020}.json")), b"{torn").unwrap();
        }
        std::fs::write(d.join("outbox/00000000000000099999.json"), b"{torn").unwrap();
        let outbox = Outbox::open(&d).unwrap();
        assert!(outbox.is_empty());
        let kept = std::fs::read_dir(d.join("outbox/corrupt")).unwrap().count();
        assert_eq!(kept, MAX_CORRUPT);
        // The newest (just set aside) is among those kept.
        assert!(d.join("outbox/corrupt/00000000000000099999.json").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn survives_a_restart_in_order_and_sets_corrupt_entries_aside() {
        let d = dir("restart");
        let outbox = Outbox::open(&d).unwrap();
        outbox.push(&Update::new("a", 1, State::Accepted)).unwrap();
        outbox.push(&Update::new("b", 1, State::Running)).unwrap();
        outbox.push(&Update::new("a", 2, State::Succeeded)).unwrap();
        drop(outbox);
        std::fs::write(d.join("outbox/00000000000000000099.json"), b"{torn").unwrap();
        let outbox = Outbox::open(&d).unwrap();
        assert_eq!(outbox.len(), 3);
        assert!(d.join("outbox/corrupt/00000000000000000099.json").exists());
        // Per task, the oldest goes first; b is not held back behind a.
        let (n1, first) = outbox.next_ready(Duration::ZERO).unwrap();
        assert_eq!((first.task_id.as_str(), first.seq), ("a", 1));
        outbox.defer(n1, Duration::from_secs(60));
        let (n2, second) = outbox.next_ready(Duration::ZERO).unwrap();
        assert_eq!((second.task_id.as_str(), second.seq), ("b", 1));
        outbox.acknowledge(n2);
        assert!(
            outbox.next_ready(Duration::from_millis(10)).is_none(),
            "a#2 waits for a#1"
        );
        outbox.retry_all_now();
        outbox.acknowledge(n1);
        let (n3, third) = outbox.next_ready(Duration::ZERO).unwrap();
        assert_eq!((third.task_id.as_str(), third.seq), ("a", 2));
        outbox.acknowledge(n3);
        assert!(outbox.is_empty());
        let left = std::fs::read_dir(d.join("outbox"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_file())
            .count();
        assert_eq!(left, 0);
        // Numbering continues past what was on disk.
        drop(outbox);
        let outbox = Outbox::open(&d).unwrap();
        outbox.push(&Update::new("c", 1, State::Running)).unwrap();
        assert!(d.join("outbox/00000000000000000001.json").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
