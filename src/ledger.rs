//! The task ledger: every task id this agent has taken, with its latest
//! state, so that a task id runs at most once across restarts (section 6.2).
//!
//! It is an append-only journal of JSON lines (`ledger.jsonl`), one whole
//! record per line, fsynced before the task it records may start: replaying
//! it gives the latest record per id. A torn last line (power cut mid-write)
//! or a corrupt line is skipped with a log line. The journal is compacted
//! (rewritten atomically) when it holds twice as many lines as records, and
//! compaction keeps at most [`MAX_FINISHED`] finished tasks, the newest: a
//! task id that finished more than that many tasks ago is forgotten.
//!
//! When an append fails (a full disk), the journal may end in half a line,
//! so nothing more is appended to it: the records live on in memory and the
//! next write rewrites the whole journal instead, until that works again. A
//! record of an id the ledger did not know is never kept in memory only:
//! a task that cannot be recorded durably must not run.
//!
//! A finished task's final update is kept so that it can be sent again
//! when the task is handed out again. Results can be large (iperf3's JSON
//! of a long test with many streams runs to megabytes), so only the newest
//! final updates, up to [`FULL_RESULTS_BUDGET`] bytes, keep their `result`
//! and `stderr_tail`; older ones keep their state, seq and error. The
//! manager already has the whole update under the same Idempotency-Key, and
//! memory and the journal stay bounded whatever the tasks return.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::update::{State, Update};

/// Finished tasks remembered (the at-most-once window).
pub const MAX_FINISHED: usize = 10_000;
/// Bytes of journal lines of finished tasks whose final update is kept
/// whole, `result` included.
pub const FULL_RESULTS_BUDGET: usize = 4 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Claimed from the manager: updates go through the outbox.
    Manager,
    /// Read from the spool inbox: updates go to `results/<id>.json`.
    Spool,
}

/// A process of a task, named so that a reused pid is never mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: i32,
    pub start_ticks: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub origin: Origin,
    pub state: State,
    /// The `seq` of the latest update made (0: none yet).
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Update>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessRef>,
    /// Order of finishing, for keeping the newest finished records.
    #[serde(default)]
    pub finished: u64,
}

pub struct Ledger {
    path: PathBuf,
    file: Option<File>,
    records: HashMap<String, Record>,
    lines: usize,
    finished_counter: u64,
    max_finished: usize,
    /// An append failed: the journal must be rewritten before use.
    rewrite_pending: bool,
    /// Finished records whose final update is whole, by finishing order:
    /// (id, bytes of its journal line).
    whole: BTreeMap<u64, (String, usize)>,
    whole_bytes: usize,
    whole_budget: usize,
}

impl Ledger {
    /// Opens `<dir>/ledger.jsonl`, replaying what is there.
    pub fn open(dir: &Path) -> Result<Ledger> {
        Ledger::open_bounded(dir, MAX_FINISHED)
    }

    /// Like [`Ledger::open`] with another bound on finished records.
    pub fn open_bounded(dir: &Path, max_finished: usize) -> Result<Ledger> {
        Ledger::open_with(dir, max_finished, FULL_RESULTS_BUDGET)
    }

    /// Like [`Ledger::open`] with other bounds on finished records and on
    /// the bytes of whole final updates.
    pub fn open_with(dir: &Path, max_finished: usize, whole_budget: usize) -> Result<Ledger> {
        let path = dir.join("ledger.jsonl");
        let mut records: HashMap<String, (Record, usize)> = HashMap::new();
        let mut lines = 0;
        let mut skipped = 0;
        if let Ok(file) = File::open(&path) {
            for line in BufReader::new(file).split(b'\n') {
                let Ok(line) = line else {
                    skipped += 1;
                    break;
                };
                if line.is_empty() {
                    continue;
                }
                lines += 1;
                match serde_json::from_slice::<Record>(&line) {
                    Ok(record) if crate::ids::is_valid_id(&record.id) => {
                        records.insert(record.id.clone(), (record, line.len()));
                    }
                    _ => skipped += 1,
                }
            }
        }
        if skipped > 0 {
            log::warn!(
                "{}: skipped {skipped} unreadable line(s) (a torn write or corruption); the other records are kept",
                path.display()
            );
        }
        let finished_counter = records.values().map(|r| r.0.finished).max().unwrap_or(0);
        let mut ledger = Ledger {
            path,
            file: None,
            records: HashMap::with_capacity(records.len()),
            lines,
            finished_counter,
            max_finished,
            rewrite_pending: false,
            whole: BTreeMap::new(),
            whole_bytes: 0,
            whole_budget,
        };
        let mut replayed: Vec<(Record, usize)> = records.into_values().collect();
        replayed.sort_by_key(|(r, _)| r.finished);
        for (record, weight) in replayed {
            ledger.keep(record, weight);
        }
        // Start every run from a clean, compact journal: this also drops a
        // torn tail so new lines never follow half a line. On a full disk
        // the agent still starts (a failing start would be a crash loop):
        // the rewrite waits for the next write.
        if let Err(e) = ledger.compact() {
            log::error!("{e}; the ledger is kept in memory until it can be rewritten");
            ledger.rewrite_pending = true;
        }
        Ok(ledger)
    }

    /// The journal on disk is behind the records in memory.
    pub fn needs_rewrite(&self) -> bool {
        self.rewrite_pending
    }

    /// Rewrites the journal if an earlier write failed.
    pub fn repair(&mut self) -> Result<()> {
        if self.rewrite_pending {
            self.compact()?;
        }
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<&Record> {
        self.records.get(id)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    /// Records that are not final, from this or an earlier instance.
    pub fn unfinished(&self) -> Vec<Record> {
        self.records
            .values()
            .filter(|r| !r.state.is_final())
            .cloned()
            .collect()
    }

    /// Stores `record` durably (fsync) before returning. On `Err` a record
    /// of a known id is still kept in memory (the journal is rewritten
    /// later); a record of a new id is not kept at all.
    pub fn put(&mut self, mut record: Record) -> Result<()> {
        if record.state.is_final() && record.finished == 0 {
            self.finished_counter += 1;
            record.finished = self.finished_counter;
        }
        let known = self.records.contains_key(&record.id);
        let id = record.id.clone();
        let written = if self.rewrite_pending {
            let weight = serde_json::to_vec(&record).map_or(0, |v| v.len());
            self.keep(record, weight);
            self.compact()
        } else {
            self.append(record)
        };
        if let Err(e) = written {
            self.rewrite_pending = true;
            if !known {
                self.records.remove(&id);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Holds `record` in memory; `weight` is the size of its journal line.
    /// A finished record's final update stays whole while the newest whole
    /// ones fit the budget; past it the oldest lose `result` and
    /// `stderr_tail`.
    fn keep(&mut self, record: Record, weight: usize) {
        if let Some(old) = self.records.get(&record.id)
            && let Some((_, bytes)) = self.whole.remove(&old.finished)
        {
            self.whole_bytes -= bytes;
        }
        let is_whole = record.state.is_final()
            && record
                .last
                .as_ref()
                .is_some_and(|l| l.result.is_some() || l.stderr_tail.is_some());
        let finished = record.finished;
        let id = record.id.clone();
        self.records.insert(id.clone(), record);
        if !is_whole {
            return;
        }
        self.whole.insert(finished, (id, weight));
        self.whole_bytes += weight;
        while self.whole_bytes > self.whole_budget && self.whole.len() > 1 {
            let Some((_, (id, bytes))) = self.whole.pop_first() else {
                break;
            };
            self.whole_bytes -= bytes;
            if let Some(last) = self.records.get_mut(&id).and_then(|r| r.last.as_mut()) {
                last.result = None;
                last.stderr_tail = None;
            }
        }
    }

    /// Appends one record to the journal. On a failed write the record is
    /// still in memory.
    fn append(&mut self, record: Record) -> Result<()> {
        let mut line = serde_json::to_vec(&record).map_err(|e| Error::Internal {
            what: "encode ledger record",
            message: e.to_string(),
        })?;
        line.push(b'\n');
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                return Err(Error::io(
                    "append to",
                    &self.path,
                    std::io::Error::other("ledger not open"),
                ));
            }
        };
        let written = file
            .write_all(&line)
            .and_then(|_| file.sync_data())
            .map_err(|e| Error::io("append to", &self.path, e));
        self.keep(record, line.len());
        written?;
        self.lines += 1;
        if (self.lines > 2 * self.records.len() + 1024 || self.finished_over_bound())
            && let Err(e) = self.compact()
        {
            // The journal on disk is whole (the rewrite goes through a
            // temporary file); the records are in memory and the next put
            // or the storage retry rewrites it.
            log::warn!("{e}; the ledger is rewritten at the next write");
        }
        Ok(())
    }

    fn finished_over_bound(&self) -> bool {
        // Counting is O(n); only look when the total could be over.
        self.records.len() > self.max_finished
            && self.records.values().filter(|r| r.state.is_final()).count() > self.max_finished * 2
    }

    /// Rewrites the journal with one line per record, keeping every
    /// unfinished record and the newest [`MAX_FINISHED`] finished ones.
    fn compact(&mut self) -> Result<()> {
        let mut finished: Vec<(u64, String)> = self
            .records
            .values()
            .filter(|r| r.state.is_final())
            .map(|r| (r.finished, r.id.clone()))
            .collect();
        if finished.len() > self.max_finished {
            finished.sort();
            for (order, id) in &finished[..finished.len() - self.max_finished] {
                self.records.remove(id);
                if let Some((_, bytes)) = self.whole.remove(order) {
                    self.whole_bytes -= bytes;
                }
            }
        }
        let mut text = Vec::new();
        for record in self.records.values() {
            if let Ok(line) = serde_json::to_vec(record) {
                text.extend_from_slice(&line);
                text.push(b'\n');
            }
        }
        // Whatever happens below, no handle on the old journal survives: a
        // failed rewrite leaves the ledger with no open journal, so appends
        // fail loudly (and the rewrite is retried) instead of going to a
        // file that may no longer be the one at the path.
        self.file = None;
        self.rewrite_pending = true;
        self.file = Some(crate::state::replace(&self.path, &text)?);
        self.rewrite_pending = false;
        self.lines = self.records.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::os::unix::fs::MetadataExt;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("outpost-ledger-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn record(id: &str, state: State) -> Record {
        Record {
            id: id.into(),
            type_name: "system_info".into(),
            origin: Origin::Manager,
            state,
            seq: 1,
            last: None,
            process: None,
            finished: 0,
        }
    }

    #[test]
    fn survives_reopen_and_a_torn_tail() {
        let d = dir("torn");
        let mut ledger = Ledger::open(&d).unwrap();
        ledger.put(record("a", State::Accepted)).unwrap();
        ledger.put(record("a", State::Succeeded)).unwrap();
        ledger.put(record("b", State::Running)).unwrap();
        drop(ledger);
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.join("ledger.jsonl"))
            .unwrap();
        f.write_all(b"{\"id\":\"c\",\"ty").unwrap();
        drop(f);
        let mut ledger = Ledger::open(&d).unwrap();
        assert_eq!(ledger.get("a").unwrap().state, State::Succeeded);
        assert_eq!(ledger.unfinished().len(), 1);
        assert!(ledger.get("c").is_none());
        ledger.put(record("d", State::Failed)).unwrap();
        drop(ledger);
        let ledger = Ledger::open(&d).unwrap();
        assert_eq!(
            ledger.len(),
            3,
            "the torn line did not swallow the next record"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_write_keeps_known_records_and_refuses_new_ones() {
        let d = dir("unwritable");
        let mut ledger = Ledger::open(&d).unwrap();
        ledger.put(record("a", State::Running)).unwrap();
        // A directory where the journal's temporary file goes, and the
        // journal's handle pointed at a file that refuses writes: both
        // fail as on a full disk.
        ledger.file = Some(File::open(d.join("ledger.jsonl")).unwrap());
        std::fs::create_dir(d.join(".ledger.jsonl.tmp")).unwrap();
        std::fs::write(d.join(".ledger.jsonl.tmp/x"), b"").unwrap();
        assert!(ledger.put(record("a", State::Succeeded)).is_err());
        assert_eq!(
            ledger.get("a").unwrap().state,
            State::Succeeded,
            "kept in memory"
        );
        assert!(ledger.needs_rewrite());
        assert!(ledger.put(record("b", State::Accepted)).is_err());
        assert!(
            ledger.get("b").is_none(),
            "a new task is not taken unrecorded"
        );
        assert!(ledger.repair().is_err());
        std::fs::remove_dir_all(d.join(".ledger.jsonl.tmp")).unwrap();
        ledger.repair().unwrap();
        assert!(!ledger.needs_rewrite());
        ledger.put(record("b", State::Accepted)).unwrap();
        drop(ledger);
        let ledger = Ledger::open(&d).unwrap();
        assert_eq!(ledger.get("a").unwrap().state, State::Succeeded);
        assert!(ledger.get("b").is_some());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Regression: compaction renamed the new journal into place and then
    /// opened it again; had that open failed, appends went on into the old,
    /// unlinked journal and were lost at the next start (a task could then
    /// run twice). Now the handle is the new file's own, and a compaction
    /// that fails leaves no handle at all.
    #[test]
    fn compaction_never_leaves_appends_going_to_a_replaced_journal() {
        let d = dir("compact-handle");
        let mut ledger = Ledger::open(&d).unwrap();
        ledger.put(record("a", State::Running)).unwrap();
        ledger.compact().unwrap();
        let handle = ledger.file.as_ref().unwrap().metadata().unwrap().ino();
        let at_path = std::fs::metadata(d.join("ledger.jsonl")).unwrap().ino();
        assert_eq!(handle, at_path, "appends go to the file at the path");
        // A compaction that fails half way leaves no journal open.
        std::fs::create_dir(d.join(".ledger.jsonl.tmp")).unwrap();
        std::fs::write(d.join(".ledger.jsonl.tmp/x"), b"").unwrap();
        assert!(ledger.compact().is_err());
        assert!(ledger.file.is_none() && ledger.needs_rewrite());
        assert!(ledger.put(record("a", State::Succeeded)).is_err());
        std::fs::remove_dir_all(d.join(".ledger.jsonl.tmp")).unwrap();
        ledger.put(record("b", State::Accepted)).unwrap();
        drop(ledger);
        let ledger = Ledger::open(&d).unwrap();
        assert_eq!(ledger.get("a").unwrap().state, State::Succeeded);
        assert!(ledger.get("b").is_some());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn only_the_newest_results_are_kept_whole() {
        let d = dir("whole");
        let mut ledger = Ledger::open_with(&d, 100, 4_000).unwrap();
        for i in 0..20 {
            let id = format!("t{i}");
            let mut last = Update::new(&id, 2, State::Succeeded);
            last.result = Some(serde_json::json!({ "iperf3": "x".repeat(900) }));
            last.stderr_tail = Some("warning".into());
            ledger
                .put(Record {
                    last: Some(last),
                    ..record(&id, State::Succeeded)
                })
                .unwrap();
        }
        let whole = |l: &Ledger| {
            (0..20)
                .filter(|i| {
                    l.get(&format!("t{i}"))
                        .unwrap()
                        .last
                        .as_ref()
                        .unwrap()
                        .result
                        .is_some()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            whole(&ledger),
            [17, 18, 19],
            "the newest, within 4,000 bytes"
        );
        let slim = ledger.get("t0").unwrap().last.as_ref().unwrap();
        assert_eq!(
            (slim.seq, slim.state, slim.stderr_tail.as_deref()),
            (2, State::Succeeded, None)
        );
        drop(ledger);
        let ledger = Ledger::open_with(&d, 100, 4_000).unwrap();
        assert_eq!(whole(&ledger), [17, 18, 19], "the same after a replay");
        let journal = std::fs::metadata(d.join("ledger.jsonl")).unwrap().len();
        assert!(
            journal < 8_000,
            "the compacted journal is bounded too: {journal}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn keeps_the_newest_finished_records() {
        let d = dir("bound");
        let mut ledger = Ledger::open_bounded(&d, 20).unwrap();
        ledger.put(record("still-running", State::Running)).unwrap();
        for i in 0..70 {
            ledger
                .put(record(&format!("t{i}"), State::Succeeded))
                .unwrap();
        }
        assert!(
            ledger.len() <= 2 * 20 + 1,
            "bounded while running: {}",
            ledger.len()
        );
        drop(ledger);
        let ledger = Ledger::open_bounded(&d, 20).unwrap();
        assert!(ledger.get("still-running").is_some());
        assert!(ledger.get("t0").is_none());
        assert!(ledger.get("t69").is_some());
        assert_eq!(ledger.len(), 21);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
