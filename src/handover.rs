//! The handover of section 4.3 step 3: one program image passing the
//! running agent to another in the same process (`execv`, same PID), so
//! every child stays a child (waitpid, exit codes and pipes keep working)
//! and systemd sees no change.
//!
//! What the next image needs travels in `<state>/handover.json` (written
//! atomically) and in descriptors left open across the exec: each child's
//! output pipes, the health responder's listening socket, and the saved
//! standard error of a program on trial. Every other descriptor the agent
//! opens is close-on-exec, as always.
//!
//! Invariants:
//! - A handover file is used only by the very process that wrote it (its
//!   pid and start time, which an exec keeps), and only once: it is removed
//!   as it is read. Anything else about it (unreadable, another process's,
//!   another format) falls back to the ordinary recovery of section 6.2.
//! - It never holds the key: the next image reads its settings again.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::ledger::Origin;
use crate::programs::Program;
use crate::supervisor::Inherited;
use crate::tasks::Handed;

const FORMAT: u32 = 1;

/// Written and read by hand (`to_json`, `from_json`) rather than derived:
/// the derived code for these types cost tens of KiB of the binary.
#[derive(Debug)]
pub struct Handover {
    pub format: u32,
    pub pid: i32,
    pub start_ticks: u64,
    pub update_task_id: String,
    pub origin: Origin,
    pub from: Program,
    pub to: Program,
    /// Set when a new program that could not take over hands back to the
    /// previous one: why.
    pub rollback: Option<String>,
    /// The agent's own standard error, saved while a program on trial
    /// writes to a file instead.
    pub saved_stderr: Option<RawFd>,
    /// What the program on trial wrote to standard error, read by the
    /// image taking over again (not part of the file).
    pub trial_stderr: Option<String>,
    pub listener: Option<RawFd>,
    pub children: Vec<Inherited>,
    pub tasks: Vec<Handed>,
    /// Wall-clock nanoseconds since the epoch just before the exec, for
    /// the handover time the next image logs.
    pub exec_at_ns: u64,
}

/// Why a handover did not happen.
#[derive(Debug)]
pub enum HandoverError {
    Write(crate::error::Error),
    Exec { program: PathBuf, errno: nix::Error },
    Supervisor,
    Busy(String),
}

impl std::fmt::Display for HandoverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandoverError::Write(e) => write!(f, "cannot write the handover file: {e}"),
            HandoverError::Exec { program, errno } => {
                write!(f, "cannot exec {}: {}", program.display(), errno.desc())
            }
            HandoverError::Supervisor => {
                write!(f, "the supervisor did not hand its children over in time")
            }
            HandoverError::Busy(why) => write!(f, "tasks are changing state: {why}"),
        }
    }
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("handover.json")
}

/// This process's start time in clock ticks (kept by exec).
pub fn own_start_ticks() -> u64 {
    crate::supervisor::start_ticks(Path::new("/"), std::process::id() as i32).unwrap_or(0)
}

/// Field access for the handover's hand-written JSON.
pub(crate) mod field {
    use serde_json::Value;

    pub fn u64(v: &Value, k: &str) -> Option<u64> {
        v.get(k)?.as_u64()
    }
    pub fn i32(v: &Value, k: &str) -> Option<i32> {
        i32::try_from(v.get(k)?.as_i64()?).ok()
    }
    pub fn bool(v: &Value, k: &str) -> bool {
        v.get(k).and_then(Value::as_bool).unwrap_or(false)
    }
    pub fn string(v: &Value, k: &str) -> Option<String> {
        Some(v.get(k)?.as_str()?.to_string())
    }
    pub fn opt<T: Into<Value>>(x: Option<T>) -> Value {
        x.map_or(Value::Null, Into::into)
    }
}

impl Handover {
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.into(), v);
        };
        put("format", self.format.into());
        put("pid", self.pid.into());
        put("start_ticks", self.start_ticks.into());
        put("update_task_id", self.update_task_id.clone().into());
        put("spool", (self.origin == Origin::Spool).into());
        put("from", self.from.to_json());
        put("to", self.to.to_json());
        put("rollback", field::opt(self.rollback.clone()));
        put("saved_stderr", field::opt(self.saved_stderr));
        put("listener", field::opt(self.listener));
        put("exec_at_ns", self.exec_at_ns.into());
        put(
            "children",
            self.children.iter().map(Inherited::to_json).collect(),
        );
        put("tasks", self.tasks.iter().map(Handed::to_json).collect());
        Value::Object(m)
    }

    /// `None` when anything the next image needs is missing or malformed;
    /// a child or task that cannot be read is left to recovery.
    pub fn from_json(v: &Value) -> Option<Handover> {
        let list = |k: &str| {
            v.get(k)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        Some(Handover {
            format: u32::try_from(field::u64(v, "format")?).ok()?,
            pid: field::i32(v, "pid")?,
            start_ticks: field::u64(v, "start_ticks")?,
            update_task_id: field::string(v, "update_task_id")?,
            origin: if field::bool(v, "spool") {
                Origin::Spool
            } else {
                Origin::Manager
            },
            from: Program::from_json(v.get("from")?)?,
            to: Program::from_json(v.get("to")?)?,
            rollback: field::string(v, "rollback"),
            saved_stderr: field::i32(v, "saved_stderr"),
            trial_stderr: None,
            listener: field::i32(v, "listener"),
            children: list("children")
                .iter()
                .filter_map(Inherited::from_json)
                .collect(),
            tasks: list("tasks").iter().filter_map(Handed::from_json).collect(),
            exec_at_ns: field::u64(v, "exec_at_ns").unwrap_or(0),
        })
    }

    pub fn new(update_task_id: &str, origin: Origin, from: Program, to: Program) -> Handover {
        Handover {
            format: FORMAT,
            pid: std::process::id() as i32,
            start_ticks: own_start_ticks(),
            update_task_id: update_task_id.to_string(),
            origin,
            from,
            to,
            rollback: None,
            saved_stderr: None,
            trial_stderr: None,
            listener: None,
            children: Vec::new(),
            tasks: Vec::new(),
            exec_at_ns: 0,
        }
    }
}

/// The handover this process was given, if any; the file is removed
/// whatever it holds.
pub fn take(state_dir: &Path) -> Option<Handover> {
    read(state_dir, true)
}

/// Like [`take`], but another process's file is left where it is: for a
/// command line that failed before it knew it was the agent.
pub fn take_own(state_dir: &Path) -> Option<Handover> {
    read(state_dir, false)
}

fn read(state_dir: &Path, remove_any: bool) -> Option<Handover> {
    let path = path(state_dir);
    let bytes = std::fs::read(&path).ok()?;
    let parsed = serde_json::from_slice::<Value>(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|v| Handover::from_json(&v).ok_or_else(|| "a field is missing".into()));
    let own = parsed.as_ref().is_ok_and(|h| {
        h.format == FORMAT
            && h.pid == std::process::id() as i32
            && h.start_ticks == own_start_ticks()
    });
    if !own && !remove_any {
        return None;
    }
    let _ = std::fs::remove_file(&path);
    let _ = crate::state::sync_dir(state_dir);
    match parsed {
        Ok(h) if own => Some(h),
        Ok(h) => {
            log::warn!(
                "{}: left by another process (pid {}); recovering as after a crash",
                path.display(),
                h.pid
            );
            None
        }
        Err(e) => {
            log::error!(
                "{}: unreadable ({e}); recovering as after a crash",
                path.display()
            );
            None
        }
    }
}

/// Writes the handover file and execs `program` with this process's own
/// arguments; returns only if that failed (the file is removed again).
pub fn exec(state_dir: &Path, handover: &mut Handover, program: &Path) -> HandoverError {
    use std::os::unix::ffi::OsStrExt;
    let file = path(state_dir);
    handover.exec_at_ns = wall_ns();
    let bytes = match crate::state::encode_json(&handover.to_json()) {
        Ok(b) => b,
        Err(e) => return HandoverError::Write(e),
    };
    if let Err(e) = crate::state::write_atomic(&file, &bytes) {
        return HandoverError::Write(e);
    }
    for fd in handover.saved_stderr.iter().chain(handover.listener.iter()) {
        crate::supervisor::set_cloexec(*fd, false);
    }
    let cstring = |b: &[u8]| std::ffi::CString::new(b).unwrap_or_default();
    let path = cstring(program.as_os_str().as_bytes());
    let mut argv = vec![path.clone()];
    argv.extend(std::env::args_os().skip(1).map(|a| cstring(a.as_bytes())));
    let errno = match nix::unistd::execv(&path, &argv) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    for fd in handover.saved_stderr.iter().chain(handover.listener.iter()) {
        crate::supervisor::set_cloexec(*fd, true);
    }
    let _ = std::fs::remove_file(&file);
    HandoverError::Exec {
        program: program.to_path_buf(),
        errno,
    }
}

/// Section 4.3 step 4 for an image on trial whose start-up failed before
/// it took the children over: the previous program takes the process back
/// with the handover as it came, and reports the update failed with
/// `error`. Returns `error` when that cannot be: this image was not on
/// trial (or is itself the previous program taking over again), or the
/// exec failed; the caller then exits with it, and the next start rolls
/// back as after a death.
pub fn hand_back_unstarted(
    state_dir: &Path,
    handover: Option<Handover>,
    error: crate::error::Error,
) -> crate::error::Error {
    let Some(mut handover) = handover.filter(|h| h.rollback.is_none()) else {
        return error;
    };
    log::error!(
        task_id = handover.update_task_id.as_str();
        "agent_update: version {} cannot start ({error}); handing back to version {}",
        crate::VERSION,
        handover.from.version
    );
    log::logger().flush();
    handover.rollback = Some(format!("its start-up failed: {error}"));
    let back_to = handover.from.path.clone();
    let why = exec(state_dir, &mut handover, &back_to);
    log::error!("handing back failed: {why}");
    error
}

/// The update tests' stand-in for a version with a start-up bug: a build
/// made with `OUTPOST_BUILD_BROKEN_START` set fails its start-up at the
/// step `OUTPOST_BROKEN_START_AT` names (`config`, `state`, `workers`).
/// Every other build compiles this to `Ok`.
pub fn broken_start(step: &'static str) -> crate::error::Result<()> {
    if option_env!("OUTPOST_BUILD_BROKEN_START").is_some()
        && std::env::var("OUTPOST_BROKEN_START_AT").is_ok_and(|at| at == step)
    {
        return Err(crate::error::Error::Internal {
            what: "start-up",
            message: format!("this build is made to fail its start-up at the {step} step"),
        });
    }
    Ok(())
}

fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Time since the previous image's exec, by the wall clock.
pub fn since_exec(handover: &Handover) -> std::time::Duration {
    std::time::Duration::from_nanos(wall_ns().saturating_sub(handover.exec_at_ns))
}

/// Sends standard error to `file` (a program on trial writes there) and
/// returns the saved descriptor of the real one, open across exec.
pub fn divert_stderr(file: &Path) -> Option<RawFd> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .ok()?;
    // SAFETY: dup of standard error into a new descriptor this code owns.
    let saved = unsafe { nix::libc::fcntl(2, nix::libc::F_DUPFD_CLOEXEC, 10) };
    if saved < 0 {
        return None;
    }
    // SAFETY: dup2 onto standard error; both descriptors are open.
    if unsafe { nix::libc::dup2(log.as_raw_fd(), 2) } < 0 {
        // SAFETY: `saved` was opened above and is owned here.
        unsafe { nix::libc::close(saved) };
        return None;
    }
    Some(saved)
}

/// Puts the saved standard error back (the trial is over) and closes the
/// saved descriptor; what went to the trial file is copied to it first, so
/// the journal misses nothing. Returns that text.
pub fn restore_stderr(saved: RawFd, trial_file: &Path) -> String {
    use std::io::Write;
    if saved <= 2 {
        return String::new();
    }
    let kept = std::fs::read(trial_file).unwrap_or_default();
    // SAFETY: `saved` came from the handover as the agent's standard
    // error; dup2 onto 2 and close of the saved copy.
    unsafe {
        if nix::libc::dup2(saved, 2) >= 0 {
            nix::libc::close(saved);
        }
    }
    let _ = std::io::stderr().write_all(&kept);
    // What a later death leaves there is then its own, not this start's.
    let _ = std::fs::remove_file(trial_file);
    String::from_utf8_lossy(&kept).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(version: &str) -> Program {
        Program {
            version: version.into(),
            path: "/x".into(),
            sha256: String::new(),
        }
    }

    #[test]
    fn a_handover_is_taken_once_and_only_by_its_own_process() {
        let dir = std::env::temp_dir().join(format!("outpost-handover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mine = Handover::new("t-up", Origin::Manager, program("1"), program("2"));
        let write = |h: &Handover| {
            crate::state::write_atomic(
                &path(&dir),
                &crate::state::encode_json(&h.to_json()).unwrap(),
            )
            .unwrap()
        };
        write(&mine);
        let taken = take(&dir).expect("this process's own handover");
        assert_eq!(taken.update_task_id, "t-up");
        assert!(take(&dir).is_none(), "taken twice");
        assert!(!path(&dir).exists());
        // Another process's (pid reused, or a stale file after a crash).
        let mut other = Handover::new("t-up", Origin::Manager, program("1"), program("2"));
        other.start_ticks += 1;
        write(&other);
        // A command line that failed before it knew it was the agent
        // leaves it alone; the agent's own start clears it.
        assert!(take_own(&dir).is_none());
        assert!(path(&dir).exists());
        assert!(take(&dir).is_none());
        assert!(!path(&dir).exists());
        write(&mine);
        assert!(take_own(&dir).is_some());
        assert!(!path(&dir).exists());
        // Everything written is read back as it was.
        let mut full = Handover::new("t-up", Origin::Spool, program("1"), program("2"));
        full.rollback = Some("why".into());
        full.listener = Some(7);
        full.children.push(Inherited {
            pid: 42,
            start_ticks: 9,
            stdout_fd: Some(11),
            stderr_fd: None,
            stdout: crate::supervisor::Output::LogFile {
                path: "/l".into(),
                max: 5,
            },
            stderr_log: Some(("/l".into(), 5)),
            captured: "{\"end\": {}}".into(),
            truncated: false,
            tail: "oops".into(),
            stopped: true,
            cgroup: None,
            exited: Some(crate::supervisor::ExitStatus::Signal(9)),
        });
        full.tasks.push(Handed {
            task: serde_json::json!({"id": "c", "type": "collector_start"}),
            state: crate::update::State::Running,
            accepted_reported: true,
            started_at_ms: 1,
            pid: Some(42),
            deadline_in_ms: None,
            collector: Some(crate::tasks::HandedRun {
                name: "c".into(),
                config: Some("x".into()),
                args: vec!["-a".into()],
                restart: crate::tasks::payload::Restart::OnFailure,
                restarts: 3,
                attempt: 2,
                held: true,
                fresh: false,
                up_for_ms: Some(1500),
                restart_in_ms: None,
            }),
        });
        let back = Handover::from_json(&full.to_json()).unwrap();
        assert_eq!(back.to_json(), full.to_json());
        assert_eq!(back.children.len(), 1);
        assert_eq!(back.tasks.len(), 1);
        // Unreadable: recovery as after a crash, never a panic.
        std::fs::write(path(&dir), b"{\"format\": 1, \"pid\": \"x\"").unwrap();
        assert!(take(&dir).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
