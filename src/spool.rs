//! The spool directory (section 7): `<state>/inbox/*.json` files taken as
//! if claimed, with or without a manager. This is how a device is driven
//! with no manager at all, and how cloud-init seeds first-boot tasks.
//!
//! The thread only reads files and hands them to the main loop; the main
//! loop records the task in the ledger and then removes the file, so a crash
//! in between cannot lose a task (the ledger stops it from running twice).
//! A file that is not a Task (not JSON, not an object, a bad id) is moved to
//! `inbox/rejected/` with a `.error` file beside it saying why. While the
//! state directory cannot be written no file is handed (its task could not
//! be recorded).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use crate::error::Result;
use crate::event::Event;
use crate::stop::Stop;
use crate::telemetry::{Telemetry, Worker};

/// Largest spool file read: a task with a 1 MiB inline config and room.
pub const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024;
const SCAN_EVERY: Duration = Duration::from_millis(250);

pub fn inbox(state_dir: &Path) -> PathBuf {
    state_dir.join("inbox")
}

/// Creates `inbox/` and `inbox/rejected/` (0700).
pub fn prepare(state_dir: &Path) -> Result<()> {
    crate::state::ensure_private_dir(&inbox(state_dir).join("rejected"))?;
    crate::state::ensure_private_dir(&inbox(state_dir))
}

pub fn run(state_dir: PathBuf, telemetry: Arc<Telemetry>, events: Sender<Event>, stop: Stop) {
    let dir = inbox(&state_dir);
    let mut handed: HashSet<PathBuf> = HashSet::new();
    loop {
        telemetry.progress(Worker::Spool, SCAN_EVERY + Duration::from_secs(10));
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
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
        handed.retain(|p| p.exists());
        if telemetry.task_view().storage_fault.is_some() {
            // Files handed while the state directory failed may have been
            // left in place; once it works again they are handed afresh.
            handed.clear();
            files.clear();
        }
        for path in files {
            if handed.contains(&path) || telemetry.task_view().free_slots == 0 {
                continue;
            }
            let task = read_task(&path);
            handed.insert(path.clone());
            if events.send(Event::Spooled { path, task }).is_err() {
                return;
            }
        }
        if stop.wait(SCAN_EVERY) {
            break;
        }
    }
    telemetry.retire(Worker::Spool);
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

/// Moves a file that is not a valid Task to `inbox/rejected/`, with
/// `<name>.error` beside it.
pub fn reject(path: &Path, why: &str) {
    let Some(name) = path.file_name() else { return };
    let Some(inbox) = path.parent() else { return };
    let target = inbox.join("rejected").join(name);
    let mut error_name = name.to_os_string();
    error_name.push(".error");
    log::warn!("spool file {} rejected: {why}", path.display());
    if let Err(e) = crate::state::write_atomic(
        &inbox.join("rejected").join(error_name),
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
}

/// Removes a spool file whose task the ledger now holds.
pub fn consumed(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        log::warn!("cannot remove spool file {}: {e}", path.display());
    }
}
