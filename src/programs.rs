//! The agent's own programs kept in the state directory (PROTOCOL 4.3):
//! why an `agent_update` survives restarts, how a new program is tried
//! before it is trusted, and which program runs at start.
//!
//! `<state>/programs/` holds each program an update brought, as
//! `<version>-<sha256 prefix>` (mode 0700), and `update.json`: the kept
//! program that runs at start (`current`), the programs that failed (never
//! started again unless a new `agent_update` names them), the update on
//! probation (`trial`), and a failure found at start that the task table
//! reports.
//!
//! Invariants:
//! - A trial exists from just before the exec into a new program until
//!   that program has run its probation (10 minutes from readiness) or
//!   stopped cleanly. A trial found at a start that did not come through a
//!   handover means the new program died: it is marked failed and the
//!   previous one runs. What is known of how it ended comes from
//!   `<state>/last-exit`, which the unit's `ExecStopPost=` writes after
//!   every stop of the process (`$SERVICE_RESULT $EXIT_CODE $EXIT_STATUS`);
//!   every start reads and removes it, so it only ever describes the most
//!   recent stop, and it is untrusted input (bounded, sanitised).
//! - The installed program runs a kept program only when that one is
//!   strictly newer and has not failed; an operator installing a newer
//!   program by hand therefore wins.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::handover::field;

use crate::tasks::payload::{AgentUpdate, ProgramSource};
use crate::update::ErrorKind;

/// Section 4.3: the largest program an update may bring.
pub const MAX_PROGRAM_BYTES: u64 = 64 * 1024 * 1024;
/// Section 4.3: a new program must be ready within this.
pub const READY_WITHIN: Duration = Duration::from_secs(60);
/// Section 4.3: a new program that dies within this of its start fails.
pub const PROBATION: Duration = Duration::from_secs(600);
/// How long `--version` and `--check-config` may take when a program is tried.
const TRY_WITHIN: Duration = Duration::from_secs(10);
/// How much of a program's output a report carries.
const OUTPUT_TAIL: usize = 4096;
/// The most of `last-exit` that is read: systemd writes three short words.
const LAST_EXIT_MAX: u64 = 256;
/// The most of one of its words that a message shows.
const LAST_EXIT_WORD: usize = 32;

/// A kept (or the installed) program.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub version: String,
    pub path: PathBuf,
    /// Empty for the installed program.
    pub sha256: String,
}

/// An update between the exec into the new program and the end of its
/// probation.
#[derive(Clone, Debug, PartialEq)]
pub struct Trial {
    pub task_id: String,
    pub from: Program,
    pub to: Program,
    /// The new program said it was ready (registered, or manager-less).
    pub ready: bool,
    /// Seconds since the epoch when the exec happened.
    pub since: u64,
}

/// A failed update found at start, for the task table to report.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub task_id: String,
    pub message: String,
    pub stderr_tail: Option<String>,
}

/// `update.json`. Its JSON is written and read by hand, like the handover
/// file's (binary size).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    pub current: Option<Program>,
    pub failed: Vec<String>,
    pub trial: Option<Trial>,
    pub report: Option<Report>,
}

impl Program {
    pub fn to_json(&self) -> Value {
        json!({"version": self.version, "path": self.path, "sha256": self.sha256})
    }

    pub fn from_json(v: &Value) -> Option<Program> {
        Some(Program {
            version: field::string(v, "version")?,
            path: field::string(v, "path")?.into(),
            sha256: field::string(v, "sha256").unwrap_or_default(),
        })
    }
}

impl Record {
    fn to_json(&self) -> Value {
        let trial = self.trial.as_ref().map(|t| {
            json!({"task_id": t.task_id, "from": t.from.to_json(), "to": t.to.to_json(),
                "ready": t.ready, "since": t.since})
        });
        let report = self.report.as_ref().map(|r| {
            json!({"task_id": r.task_id, "message": r.message,
                "stderr_tail": field::opt(r.stderr_tail.clone())})
        });
        json!({
            "current": field::opt(self.current.as_ref().map(Program::to_json)),
            "failed": self.failed,
            "trial": field::opt(trial),
            "report": field::opt(report),
        })
    }

    fn from_json(v: &Value) -> Record {
        let trial = v.get("trial").and_then(|t| {
            Some(Trial {
                task_id: field::string(t, "task_id")?,
                from: Program::from_json(t.get("from")?)?,
                to: Program::from_json(t.get("to")?)?,
                ready: field::bool(t, "ready"),
                since: field::u64(t, "since").unwrap_or(0),
            })
        });
        let report = v.get("report").and_then(|r| {
            Some(Report {
                task_id: field::string(r, "task_id")?,
                message: field::string(r, "message")?,
                stderr_tail: field::string(r, "stderr_tail"),
            })
        });
        Record {
            current: v.get("current").and_then(Program::from_json),
            failed: v
                .get("failed")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            trial,
            report,
        }
    }
}

/// `<state>/programs`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("programs")
}

fn record_path(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("update.json")
}

/// Where a new program's standard error goes during its first minute, so
/// a program that dies at start leaves its words behind.
pub fn trial_stderr_path(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("trial-stderr.log")
}

/// `<state>/last-exit`: how the agent's process last ended, one line
/// `$SERVICE_RESULT $EXIT_CODE $EXIT_STATUS` written by the unit's
/// `ExecStopPost=` (systemd/outpost.service). The path is the unit's too.
pub fn last_exit_path(state_dir: &Path) -> PathBuf {
    state_dir.join("last-exit")
}

/// How the previous process of the agent ended, as far as is known.
#[derive(Clone, Debug, PartialEq)]
pub enum Ending {
    /// No `last-exit`: the agent was not run by systemd with the unit's
    /// `ExecStopPost=` (by hand, an older unit), or the machine went down
    /// before systemd could record anything.
    NotRecorded,
    /// A `last-exit` that cannot be read or makes no sense: why, in words.
    Unreadable(String),
    /// systemd's three words, sanitised; a missing one is empty.
    Recorded {
        result: String,
        code: String,
        status: String,
    },
}

impl Ending {
    /// Reads and removes `last-exit`: whatever this start makes of it, the
    /// next one must not take it for its own stop.
    pub fn take(state_dir: &Path) -> Ending {
        let path = last_exit_path(state_dir);
        let mut bytes = Vec::new();
        // Neither a symbolic link nor a FIFO may stall or redirect the start.
        let read = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&path)
            .and_then(|f| f.take(LAST_EXIT_MAX).read_to_end(&mut bytes));
        let ending = match read {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ending::NotRecorded,
            Err(e) => Ending::Unreadable(format!("{}: {e}", path.display())),
            Ok(_) => Ending::parse(&String::from_utf8_lossy(&bytes)),
        };
        if let Err(e) = std::fs::remove_file(&path) {
            log::warn!("cannot remove {}: {e}", path.display());
        }
        ending
    }

    /// The file's first line: up to three words; anything else is shown
    /// as it is, sanitised.
    pub fn parse(text: &str) -> Ending {
        let line = text.lines().next().unwrap_or_default();
        let mut words = line.split_whitespace().map(sanitise);
        let Some(result) = words.next() else {
            return Ending::Unreadable("last-exit is empty".to_string());
        };
        Ending::Recorded {
            result,
            code: words.next().unwrap_or_default(),
            status: words.next().unwrap_or_default(),
        }
    }
}

/// A word from `last-exit` as a message may show it: printable ASCII of
/// the kinds systemd's words are made of, at most [`LAST_EXIT_WORD`]
/// characters; anything else is `?`.
fn sanitise(word: &str) -> String {
    let mut out: String = word
        .chars()
        .take(LAST_EXIT_WORD)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.+".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect();
    if word.chars().count() > LAST_EXIT_WORD {
        out.push_str("...");
    }
    out
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::NotRecorded => f.write_str(
                "its exit status is not known (the agent was not run by systemd with the \
                 unit's ExecStopPost=, or the machine went down)",
            ),
            Ending::Unreadable(why) => write!(f, "its exit status is not known ({why})"),
            Ending::Recorded {
                result,
                code,
                status,
            } => {
                // systemd names signals without "SIG"; a word that has it
                // anyway reads the same.
                let signal = status.strip_prefix("SIG").unwrap_or(status);
                match (result.as_str(), code.as_str()) {
                    ("watchdog", _) => write!(f, "killed by systemd's watchdog (signal {signal})"),
                    ("oom-kill", _) => write!(f, "killed by the kernel's OOM killer"),
                    (_, "exited") => write!(f, "exited with status {status}"),
                    (_, "killed") => write!(f, "killed by signal {signal}"),
                    (_, "dumped") => write!(f, "dumped core on signal {signal}"),
                    _ => write!(
                        f,
                        "it ended as systemd recorded it: {}",
                        [result, code, status]
                            .iter()
                            .filter(|w| !w.is_empty())
                            .map(|w| w.as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                }
            }
        }
    }
}

/// The record; a missing or unreadable one is an empty one (an unreadable
/// one is set aside: never a crash loop).
pub fn load(state_dir: &Path) -> Record {
    crate::state::load_or_reset::<Value>(&record_path(state_dir))
        .map(|v| Record::from_json(&v))
        .unwrap_or_default()
}

pub fn save(state_dir: &Path, record: &Record) -> crate::error::Result<()> {
    crate::state::ensure_private_dir(&dir(state_dir))?;
    crate::state::write_json(&record_path(state_dir), &record.to_json())
}

/// A version as `agent_update` may name it: a digit first, then digits,
/// letters, `.`, `-`, `+`; at most 64 characters.
pub fn is_version(text: &str) -> bool {
    text.len() <= 64
        && text.starts_with(|c: char| c.is_ascii_digit())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
}

/// Dotted numeric comparison (`1.10.0` > `1.9.2`); a pre-release
/// (`1.2.0-rc1`) comes before its release; build metadata (`+...`) is
/// ignored.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    fn split(v: &str) -> (Vec<u64>, Option<&str>) {
        let v = v.split('+').next().unwrap_or(v);
        let (core, pre) = match v.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (v, None),
        };
        let numbers = core
            .split('.')
            .map(|part| {
                let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().unwrap_or(0)
            })
            .collect();
        (numbers, pre)
    }
    let ((mut x, xp), (mut y, yp)) = (split(a), split(b));
    let len = x.len().max(y.len());
    x.resize(len, 0);
    y.resize(len, 0);
    x.cmp(&y).then_with(|| match (xp, yp) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (Some(_), None) => std::cmp::Ordering::Less,
        (Some(p), Some(q)) => p.cmp(q),
    })
}

/// The program this process runs, as a [`Program`] (with its sha256 when
/// it is the current kept one; the installed program has none).
pub fn running() -> Program {
    Program {
        version: crate::VERSION.to_string(),
        path: std::env::current_exe().unwrap_or_default(),
        sha256: String::new(),
    }
}

pub fn running_in(state_dir: &Path) -> Program {
    let me = running();
    match load(state_dir).current {
        Some(current) if current.path == me.path => current,
        _ => me,
    }
}

/// Steps 1 and 2 of section 4.3, off the main thread: fetch or read the
/// program, check it, keep it, try it. `args` are the agent's own
/// arguments, so `--check-config` sees the present settings.
pub fn prepare(
    update: &AgentUpdate,
    fetcher: &crate::fetch::Fetcher,
    state_dir: &Path,
    args: &[OsString],
) -> Result<Program, (ErrorKind, String)> {
    let bytes = match &update.source {
        ProgramSource::Url(url) => fetcher
            .fetch_at_most(url, MAX_PROGRAM_BYTES, "program")
            .map_err(|e| (ErrorKind::DownloadFailed, e.0))?,
        ProgramSource::Path(path) => {
            read_program(path).map_err(|e| (ErrorKind::DownloadFailed, format!("path: {e}")))?
        }
    };
    let actual = crate::sha256::hex_digest(&bytes);
    if actual != update.sha256 {
        return Err((
            ErrorKind::ChecksumMismatch,
            format!("sha256: the program's is {actual}, not {}", update.sha256),
        ));
    }
    let failed = |e: crate::error::Error| (ErrorKind::UpdateFailed, e.to_string());
    let dir = dir(state_dir);
    crate::state::ensure_private_dir(&dir).map_err(failed)?;
    let path = dir.join(format!("{}-{}", update.version, &actual[..16]));
    crate::state::write_atomic(&path, &bytes).map_err(failed)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| failed(crate::error::Error::io("set mode 0700 on", &path, e)))?;
    let (ok, out) = run_for(&path, &[OsString::from("--version")], &dir)
        .map_err(|e| (ErrorKind::UpdateFailed, e))?;
    if !ok || !out.split_whitespace().any(|w| w == update.version) {
        return Err((
            ErrorKind::UpdateFailed,
            format!(
                "the program does not say it is version {} when run with --version: {}",
                update.version,
                out.trim()
            ),
        ));
    }
    let mut check: Vec<OsString> = args.to_vec();
    check.push("--check-config".into());
    let (ok, out) = run_for(&path, &check, &dir).map_err(|e| (ErrorKind::UpdateFailed, e))?;
    if !ok {
        return Err((
            ErrorKind::UpdateFailed,
            format!(
                "the program refuses the present settings (--check-config): {}",
                out.trim()
            ),
        ));
    }
    Ok(Program {
        version: update.version.clone(),
        path,
        sha256: actual,
    })
}

fn read_program(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_PROGRAM_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PROGRAM_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_PROGRAM_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

/// Runs a program being tried, with the agent's environment, its output
/// (both streams) in a file; `(exited 0, the output's tail)`. A program
/// that takes longer than [`TRY_WITHIN`] is killed and has failed.
fn run_for(program: &Path, args: &[OsString], dir: &Path) -> Result<(bool, String), String> {
    let out_path = dir.join("try.out");
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&out_path)
            .map_err(|e| format!("{}: {e}", out_path.display()))
    };
    let out = open()?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut tries = 0;
    let mut child = loop {
        let spawned = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(err.try_clone().map_err(|e| e.to_string())?)
            .spawn();
        match spawned {
            Ok(child) => break child,
            // A child forked by another thread while the program was being
            // written may still hold it open for writing until its exec.
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("cannot run {}: {e}", program.display())),
        }
    };
    let deadline = Instant::now() + TRY_WITHIN;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let text = tail_of(&out_path, OUTPUT_TAIL);
    let _ = std::fs::remove_file(&out_path);
    match status {
        Some(s) => Ok((s.success(), text)),
        None => Err(format!(
            "{} {} did not finish within {}s: {}",
            program.display(),
            args.last().map(|a| a.to_string_lossy()).unwrap_or_default(),
            TRY_WITHIN.as_secs(),
            text.trim()
        )),
    }
}

/// Removes every kept program but `keep` (the one running and the one to
/// go back to), so updates do not fill the disk.
pub fn prune(state_dir: &Path, keep: &[&Path]) {
    let Ok(listing) = std::fs::read_dir(dir(state_dir)) else {
        return;
    };
    for entry in listing.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let is_program = name
            .to_str()
            .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit()));
        if is_program && !keep.contains(&path.as_path()) {
            log::info!(
                "removing {}, a program no update needs any more",
                path.display()
            );
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The last `max` bytes of a file, as text.
pub fn tail_of(path: &Path, max: usize) -> String {
    tail_text(&std::fs::read(path).unwrap_or_default(), max)
}

/// The last `max` bytes, as text.
pub fn tail_text(bytes: &[u8], max: usize) -> String {
    let from = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

/// Start-up, before any thread: settles a trial whose new program died (it
/// is marked failed; its task is reported by the task table), then returns
/// the kept program to run instead of this one, if any: the current one
/// when it is strictly newer than this program and has not failed.
/// `handed_over` is true when this image came through a handover, which
/// owns the trial then. Reads and removes `last-exit` at every start; the
/// report of a dead trial says what it tells.
pub fn at_start(state_dir: &Path, handed_over: bool) -> Option<Program> {
    // Taken at every start, needed or not, so that it never outlives the
    // stop it describes.
    let ending = Ending::take(state_dir);
    let path = record_path(state_dir);
    if !path.exists() {
        return None;
    }
    let mut record = load(state_dir);
    let mut back_to = None;
    if !handed_over && let Some(trial) = record.trial.take() {
        // This very image is the program that failed (its handover was
        // unreadable): the previous one takes over at once.
        if std::env::current_exe().is_ok_and(|me| me == trial.to.path) && trial.from.path.is_file()
        {
            back_to = Some(trial.from.clone());
        }
        let stderr = tail_of(&trial_stderr_path(state_dir), OUTPUT_TAIL);
        let message = format!(
            "version {} ended within its first {} minutes ({}): {ending}; version {} runs again",
            trial.to.version,
            PROBATION.as_secs() / 60,
            if trial.ready {
                "after it was ready"
            } else {
                "before it was ready"
            },
            trial.from.version
        );
        log::error!("update to {}: {message}", trial.to.version);
        if !record.failed.contains(&trial.to.sha256) {
            record.failed.push(trial.to.sha256.clone());
        }
        record.current = Some(trial.from.clone()).filter(|p| !p.sha256.is_empty());
        record.report = Some(Report {
            task_id: trial.task_id,
            message,
            stderr_tail: (!stderr.trim().is_empty()).then_some(stderr),
        });
        if let Err(e) = save(state_dir, &record) {
            log::error!("{e}");
        }
    }
    if handed_over {
        return None;
    }
    if back_to.is_some() {
        return back_to;
    }
    let current = record.current?;
    let newer = compare_versions(&current.version, crate::VERSION) == std::cmp::Ordering::Greater;
    let good = !record.failed.contains(&current.sha256) && current.path.is_file();
    (newer && good).then_some(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare_versions("1.10.0", "1.9.2"), Greater);
        assert_eq!(compare_versions("0.1.1", "0.1.0"), Greater);
        assert_eq!(compare_versions("1.2", "1.2.0"), Equal);
        assert_eq!(compare_versions("1.2.0-rc1", "1.2.0"), Less);
        assert_eq!(compare_versions("1.2.0+abc", "1.2.0"), Equal);
        assert!(is_version("0.1.1") && is_version("1.2.0-rc.1"));
        assert!(!is_version("") && !is_version("v1") && !is_version("1/2"));
    }

    #[test]
    fn a_dead_trial_is_failed_reported_and_never_run_again() {
        let dir = std::env::temp_dir().join(format!("outpost-programs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("programs")).unwrap();
        let new = dir.join("programs/99.0.0-x");
        std::fs::write(&new, "x").unwrap();
        let to = Program {
            version: "99.0.0".into(),
            path: new,
            sha256: "bad".into(),
        };
        let record = Record {
            current: Some(to.clone()),
            trial: Some(Trial {
                task_id: "t-up".into(),
                from: running(),
                to,
                ready: false,
                since: 0,
            }),
            ..Record::default()
        };
        save(&dir, &record).unwrap();
        std::fs::write(trial_stderr_path(&dir), "boom\n").unwrap();
        // Handed over: the trial is the new image's; nothing to run instead.
        assert_eq!(at_start(&dir, true), None);
        assert!(load(&dir).trial.is_some());
        // A plain start: the new program died, and systemd said how.
        std::fs::write(last_exit_path(&dir), "exit-code exited 1\n").unwrap();
        assert_eq!(at_start(&dir, false), None);
        assert!(!last_exit_path(&dir).exists());
        let after = load(&dir);
        assert_eq!(after.trial, None);
        assert_eq!(after.failed, ["bad"]);
        let report = after.report.unwrap();
        assert_eq!(report.task_id, "t-up");
        assert_eq!(report.stderr_tail.as_deref(), Some("boom\n"));
        assert!(
            report.message.starts_with(
                "version 99.0.0 ended within its first 10 minutes (before it was ready): \
                 exited with status 1; version "
            ),
            "{}",
            report.message
        );
        // This image is the one on trial, without its handover: the
        // previous program runs at once.
        let previous = dir.join("programs/1.0.0-p");
        std::fs::write(&previous, "p").unwrap();
        let mut record = load(&dir);
        record.trial = Some(Trial {
            task_id: "t-up2".into(),
            from: Program {
                version: "1.0.0".into(),
                path: previous.clone(),
                sha256: "p".into(),
            },
            to: running(),
            ready: true,
            since: 0,
        });
        save(&dir, &record).unwrap();
        assert_eq!(at_start(&dir, false).map(|p| p.path), Some(previous));
        // Nothing recorded how it ended.
        assert!(
            load(&dir)
                .report
                .unwrap()
                .message
                .contains("(after it was ready): its exit status is not known ("),
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn said(line: &str) -> String {
        Ending::parse(line).to_string()
    }

    #[test]
    fn each_ending_is_said_in_plain_words() {
        assert_eq!(said("exit-code exited 1\n"), "exited with status 1");
        assert_eq!(said("success exited 0"), "exited with status 0");
        assert_eq!(said("signal killed SEGV\n"), "killed by signal SEGV");
        assert_eq!(said("signal killed SIGKILL"), "killed by signal KILL");
        assert_eq!(said("core-dump dumped ABRT"), "dumped core on signal ABRT");
        assert_eq!(
            said("watchdog dumped ABRT"),
            "killed by systemd's watchdog (signal ABRT)"
        );
        assert_eq!(
            said("oom-kill killed KILL"),
            "killed by the kernel's OOM killer"
        );
        // Words this code does not know are shown as they are.
        assert_eq!(
            said("resources"),
            "it ended as systemd recorded it: resources"
        );
        assert_eq!(
            said("novel vanished 7"),
            "it ended as systemd recorded it: novel vanished 7"
        );
        // ... but never as more than a short line of plain characters.
        assert_eq!(
            said("exit-code exited 1;rm\u{1b}[2J\u{e9}"),
            "exited with status 1?rm??2J?"
        );
        let long = said(&format!("x {} 1", "y".repeat(500)));
        assert_eq!(
            long,
            format!("it ended as systemd recorded it: x {}... 1", "y".repeat(32))
        );
        assert!(said("").starts_with("its exit status is not known (last-exit is empty"));
        assert!(said(" \n exit-code exited 1").contains("is empty"));
        assert!(
            Ending::NotRecorded
                .to_string()
                .starts_with("its exit status is not known (the agent was not run by systemd")
        );
    }

    #[test]
    fn last_exit_is_read_bounded_and_removed_at_every_take() {
        let dir = std::env::temp_dir().join(format!("outpost-last-exit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = last_exit_path(&dir);
        assert_eq!(Ending::take(&dir), Ending::NotRecorded);
        std::fs::write(&path, "signal killed SEGV\n").unwrap();
        assert_eq!(
            Ending::take(&dir),
            Ending::Recorded {
                result: "signal".into(),
                code: "killed".into(),
                status: "SEGV".into()
            }
        );
        assert!(!path.exists());
        assert_eq!(Ending::take(&dir), Ending::NotRecorded);
        // A huge file with no line break: only its start is read.
        let mut huge = b"exit-code exited 3".to_vec();
        huge.extend(std::iter::repeat_n(b'9', 1 << 20));
        std::fs::write(&path, &huge).unwrap();
        match Ending::take(&dir) {
            Ending::Recorded { status, .. } => {
                assert_eq!(status, format!("3{}...", "9".repeat(31)))
            }
            other => panic!("{other:?}"),
        }
        // Not UTF-8; then not a file at all.
        std::fs::write(&path, b"exit-code \xff\xfe 1").unwrap();
        assert_eq!(
            Ending::take(&dir).to_string(),
            "it ended as systemd recorded it: exit-code ?? 1"
        );
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        assert!(matches!(Ending::take(&dir), Ending::Unreadable(_)));
        assert!(std::fs::symlink_metadata(&path).is_err());
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(matches!(Ending::take(&dir), Ending::Unreadable(_)));
        assert!(std::fs::symlink_metadata(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
