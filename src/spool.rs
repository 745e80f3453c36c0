//! The spool directory (section 7): `<state>/inbox/*.json` files taken as
//! if claimed, with or without a manager. This is how a device is driven
//! with no manager at all, and how cloud-init seeds first-boot tasks.
//!
//! Invariants:
//! - A file is taken by renaming it into `inbox/.taken/` under a name never
//!   used before; only then is it read for good and handed to the main
//!   loop, which records the task in the ledger and removes that taken
//!   file. So the name in `inbox/` is free again at once (a new file under
//!   it is a new task), nothing that lands in `inbox/` is ever removed
//!   unread, and a crash before the ledger write leaves the taken file to be
//!   handed again at the next start (the ledger stops it running twice).
//! - A file whose content does not parse yet and that changed in the last
//!   [`SETTLE`] is being written in place: it is waited for, not rejected.
//! - A file that is not a Task (not JSON, not an object, a bad id) is moved
//!   to `inbox/rejected/` under its own name with a `.error` file beside it;
//!   `rejected/` keeps the newest [`MAX_REJECTED`] of them.
//! - While the state directory cannot be written, nothing is taken or
//!   handed (its task could not be recorded).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, SystemTime};

use crate::error::Result;
use crate::event::Event;
use crate::stop::Stop;
use crate::telemetry::{Telemetry, Worker};

/// Largest spool file read: a task with a 1 MiB inline config and room.
pub const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024;
/// A file that does not parse and changed more recently than this may
/// still be being written.
pub const SETTLE: Duration = Duration::from_secs(2);
/// How many rejected files `inbox/rejected/` keeps (section 7).
pub const MAX_REJECTED: usize = 1000;
const SCAN_EVERY: Duration = Duration::from_millis(250);

pub fn inbox(state_dir: &Path) -> PathBuf {
    state_dir.join("inbox")
}

fn taken_dir(state_dir: &Path) -> PathBuf {
    inbox(state_dir).join(".taken")
}

/// Creates `inbox/`, `inbox/rejected/` and `inbox/.taken/` (0700).
pub fn prepare(state_dir: &Path) -> Result<()> {
    crate::state::ensure_private_dir(&inbox(state_dir).join("rejected"))?;
    crate::state::ensure_private_dir(&taken_dir(state_dir))?;
    crate::state::ensure_private_dir(&inbox(state_dir))
}

pub fn run(state_dir: PathBuf, telemetry: Arc<Telemetry>, events: Sender<Event>, stop: Stop) {
    let inbox = inbox(&state_dir);
    let taken = taken_dir(&state_dir);
    let mut handed: HashSet<PathBuf> = HashSet::new();
    loop {
        telemetry.progress(Worker::Spool, SCAN_EVERY + Duration::from_secs(10));
        handed.retain(|p| p.exists());
        if telemetry.task_view().storage_fault.is_some() {
            // Files handed while the state directory failed may have been
            // left in place; once it works again they are handed afresh.
            handed.clear();
        } else if telemetry.task_view().free_slots > 0 {
            for path in json_files(&inbox) {
                if let Reading::Settled(_) = read(&path) {
                    take(&path, &taken);
                }
            }
            for path in json_files(&taken) {
                if handed.contains(&path) || telemetry.task_view().free_slots == 0 {
                    continue;
                }
                let task = match read(&path) {
                    Reading::Settled(task) => task,
                    // Renamed while its writer still had it open.
                    Reading::BeingWritten => continue,
                };
                handed.insert(path.clone());
                if events.send(Event::Spooled { path, task }).is_err() {
                    return;
                }
            }
        }
        if stop.wait(SCAN_EVERY) {
            break;
        }
    }
    telemetry.retire(Worker::Spool);
}

/// `*.json` files of a directory (not hidden ones), oldest name first.
fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|listing| {
            listing
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"))
                .filter(|p| {
                    !p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

enum Reading {
    /// A Task, or why the file is not one.
    Settled(std::result::Result<serde_json::Value, String>),
    BeingWritten,
}

fn read(path: &Path) -> Reading {
    let task = read_task(path);
    let fresh = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|changed| {
            // A time in the future (a clock step) counts as just now.
            SystemTime::now()
                .duration_since(changed)
                .map_or(true, |age| age < SETTLE)
        });
    match task {
        Err(_) if fresh => Reading::BeingWritten,
        task => Reading::Settled(task),
    }
}

/// Renames an inbox file into `.taken/` as `<unique>-<name>`; the unique
/// part keeps two files that arrive under one name apart.
fn take(path: &Path, taken: &Path) {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let Some(name) = path.file_name() else { return };
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let unique = format!(
        "{stamp:024}-{:08}-{}",
        COUNTER.fetch_add(1, Ordering::Relaxed),
        name.to_string_lossy()
    );
    if let Err(e) = std::fs::rename(path, taken.join(unique))
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!("cannot take spool file {}: {e}", path.display());
    }
}

/// The name a taken file had in `inbox/`.
fn original_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.splitn(3, '-').nth(2) {
        Some(original) if path.parent().is_some_and(|p| p.ends_with(".taken")) => {
            original.to_string()
        }
        _ => name,
    }
}

fn read_task(path: &Path) -> std::result::Result<serde_json::Value, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(format!("file is {size} bytes, more than {MAX_FILE_BYTES}"));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    parse_task(&bytes)
}

/// A spool file's bytes as a Task object, or why they are not one.
pub fn parse_task(bytes: &[u8]) -> std::result::Result<serde_json::Value, String> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "file is {} bytes, more than {MAX_FILE_BYTES}",
            bytes.len()
        ));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    if !value.is_object() {
        return Err("not a Task: the JSON is not an object".into());
    }
    Ok(value)
}

/// Moves a taken file that is not a valid Task to `inbox/rejected/`
/// under the name it arrived with, with `<name>.error` beside it, and keeps
/// the newest [`MAX_REJECTED`] there.
pub fn reject(path: &Path, why: &str) {
    let Some(inbox) = path.parent().map(|p| {
        if p.ends_with(".taken") {
            p.parent().unwrap_or(p)
        } else {
            p
        }
    }) else {
        return;
    };
    let name = original_name(path);
    let rejected = inbox.join("rejected");
    let target = rejected.join(&name);
    log::warn!("spool file {name} rejected: {why}");
    if let Err(e) = crate::state::write_atomic(
        &rejected.join(format!("{name}.error")),
        format!("{why}\n").as_bytes(),
    ) {
        log::warn!("{e}");
    }
    if std::fs::rename(path, &target).is_err() {
        let _ = std::fs::remove_file(path);
        return;
    }
    // Whatever mode it was dropped with, it now lives in the private state
    // directory like every other file there.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600));
    prune_rejected(&rejected, MAX_REJECTED);
}

/// Keeps the newest `keep` rejected files (by modification time), each
/// with its `.error` file.
pub fn prune_rejected(dir: &Path, keep: usize) {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(SystemTime, PathBuf)> = listing
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_none_or(|e| e != "error"))
        .map(|p| {
            let at = std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (at, p)
        })
        .collect();
    if files.len() <= keep {
        return;
    }
    files.sort();
    for (_, path) in &files[..files.len() - keep] {
        let _ = std::fs::remove_file(path);
        let mut error = path.as_os_str().to_os_string();
        error.push(".error");
        let _ = std::fs::remove_file(PathBuf::from(error));
    }
}

/// Removes a spool file whose task the ledger now holds.
pub fn consumed(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        log::warn!("cannot remove spool file {}: {e}", path.display());
    }
}
