//! The cgroup v2 subtree systemd delegates to the agent (section 4.2): one
//! cgroup per task, so that the kernel enforces the task's limits, a stop
//! reaches every process of the task (including those that left its
//! process group), leftovers of a crashed instance can be found, and usage
//! is measured on the whole process tree.
//!
//! Layout, under the agent's own cgroup `<base>` (its unit's, e.g.
//! `/sys/fs/cgroup/system.slice/outpost.service`):
//!
//! ```text
//! <base>/agent/          the agent itself ("no internal processes": a
//!                        cgroup with controllers enabled for its children
//!                        may hold no process)
//! <base>/task.<id>/      one per task that runs a process
//! ```
//!
//! Invariants:
//! - Only a subtree that is verifiably delegated is used (owned by the
//!   agent's user, or marked by systemd's `delegate` extended attribute):
//!   an agent run by hand in someone else's cgroup (a login session) never
//!   rearranges it; it runs without cgroups, as on cgroup v1.
//! - A task cgroup exists before its first process and is entered by the
//!   child between fork and exec, so no process of a task ever runs
//!   outside it.
//! - A task cgroup is removed only when empty, after its usage is read.
//! - Every reader takes the directory it reads from, so unit tests run on
//!   captured files (tests/fixtures/cgroup/).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::tasks::payload::Limits;

/// The controllers the agent needs (the unit delegates exactly these).
pub const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];
/// cpu.max's period: a percentage of one core becomes a quota of
/// `percent × 1000` µs per 100 ms.
const CPU_PERIOD_USEC: u64 = 100_000;
const TASK_PREFIX: &str = "task.";

/// Why the agent runs without cgroups, or why a cgroup operation failed.
#[derive(Debug)]
pub enum CgroupError {
    /// No cgroup v2 unified hierarchy (v1 or hybrid, or no /proc).
    NotUnified,
    /// The agent's cgroup is not delegated to it.
    NotDelegated { path: PathBuf },
    /// A controller the agent needs is not available in its cgroup.
    MissingController { path: PathBuf, name: &'static str },
    Io {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
}

impl std::fmt::Display for CgroupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CgroupError::NotUnified => write!(f, "no cgroup v2 unified hierarchy"),
            CgroupError::NotDelegated { path } => write!(
                f,
                "{} is not delegated to this agent (systemd's Delegate=)",
                path.display()
            ),
            CgroupError::MissingController { path, name } => write!(
                f,
                "controller {name} is not available in {}",
                path.display()
            ),
            CgroupError::Io { what, path, error } => {
                write!(f, "cannot {what} {}: {error}", path.display())
            }
        }
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |error| CgroupError::Io { what, path, error }
}

/// What a task's processes used, for its final update (section 4.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub memory_peak_bytes: u64,
    pub oom_kills: u64,
}

/// The agent's delegated subtree.
#[derive(Clone, Debug)]
pub struct Cgroups {
    base: PathBuf,
}

impl Cgroups {
    /// Finds the agent's delegated cgroup under `root` (`/` outside tests),
    /// moves the agent into `<base>/agent` and enables the controllers for
    /// the task cgroups.
    pub fn set_up(root: &Path) -> Result<Cgroups, CgroupError> {
        let base = own_cgroup(root)?;
        if !is_delegated(&base) {
            return Err(CgroupError::NotDelegated { path: base });
        }
        let available = read(&base.join("cgroup.controllers")).unwrap_or_default();
        for name in CONTROLLERS {
            if !available.split_whitespace().any(|c| c == name) {
                return Err(CgroupError::MissingController { path: base, name });
            }
        }
        let leaf = base.join("agent");
        mkdir(&leaf)?;
        let procs = leaf.join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string()).map_err(io("enter", &procs))?;
        let control = base.join("cgroup.subtree_control");
        let wanted: Vec<String> = CONTROLLERS.iter().map(|c| format!("+{c}")).collect();
        std::fs::write(&control, wanted.join(" ")).map_err(io("write", &control))?;
        Ok(Cgroups { base })
    }

    /// The subtree at `base` as it is (tests, and `--check-config`-like
    /// readers); no process is moved.
    pub fn at(base: PathBuf) -> Cgroups {
        Cgroups { base }
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The cgroup of task `id` (ids are checked: never `/`, `.` or `..`
    /// alone, and the prefix keeps `.` and `..` apart anyway).
    pub fn task_path(&self, id: &str) -> PathBuf {
        self.base.join(format!("{TASK_PREFIX}{id}"))
    }

    /// Makes the cgroup of task `id` (an existing one is reused) and writes
    /// its limits; a task without limits gets the defaults ("max"), so a
    /// reused cgroup never keeps an earlier task's limits.
    pub fn create(&self, id: &str, limits: Option<&Limits>) -> Result<PathBuf, CgroupError> {
        let dir = self.task_path(id);
        mkdir(&dir)?;
        if let Err(e) = apply(&dir, limits) {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        Ok(dir)
    }

    /// Task cgroups left in the subtree (by an earlier instance), by task id.
    pub fn task_dirs(&self) -> Vec<(String, PathBuf)> {
        let Ok(listing) = std::fs::read_dir(&self.base) else {
            return Vec::new();
        };
        let mut found: Vec<(String, PathBuf)> = listing
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let id = name.strip_prefix(TASK_PREFIX)?.to_string();
                Some((id, e.path()))
            })
            .collect();
        found.sort();
        found
    }
}

/// Writes `limits` (or the defaults) into the task cgroup at `dir`.
pub fn apply(dir: &Path, limits: Option<&Limits>) -> Result<(), CgroupError> {
    let limits = limits.cloned().unwrap_or_default();
    for (file, value) in limit_files(&limits) {
        let path = dir.join(file);
        match std::fs::write(&path, &value) {
            Ok(()) => {}
            // Without swap accounting there is no memory.swap.max, and
            // before 4.19 no memory.oom.group; the limit holds all the same.
            Err(e)
                if matches!(file, "memory.swap.max" | "memory.oom.group")
                    && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(CgroupError::Io {
                    what: "write",
                    path,
                    error,
                });
            }
        }
    }
    Ok(())
}

/// The files and values that carry `limits`. Swap is held to nothing when
/// memory is limited (otherwise a task over its limit swaps instead of
/// being stopped), and an OOM kill takes the whole task (`memory.oom.group`):
/// a task is one unit, never left half-killed.
pub fn limit_files(limits: &Limits) -> Vec<(&'static str, String)> {
    let max = |v: Option<u64>| v.map_or_else(|| "max".to_string(), |n| n.to_string());
    let cpu = match limits.cpu_max_percent {
        Some(p) => format!("{} {CPU_PERIOD_USEC}", p * CPU_PERIOD_USEC / 100),
        None => format!("max {CPU_PERIOD_USEC}"),
    };
    let swap = if limits.memory_max_bytes.is_some() {
        "0".to_string()
    } else {
        "max".to_string()
    };
    vec![
        ("memory.max", max(limits.memory_max_bytes)),
        ("memory.swap.max", swap),
        ("memory.oom.group", "1".to_string()),
        ("cpu.max", cpu),
        ("pids.max", max(limits.pids_max)),
    ]
}

/// The agent's own cgroup directory: `<root>/sys/fs/cgroup` plus the path
/// of the unified hierarchy's line (`0::/…`) in `<root>/proc/self/cgroup`.
pub fn own_cgroup(root: &Path) -> Result<PathBuf, CgroupError> {
    let mount = root.join("sys/fs/cgroup");
    if !mount.join("cgroup.controllers").exists() {
        return Err(CgroupError::NotUnified);
    }
    let text = read(&root.join("proc/self/cgroup")).ok_or(CgroupError::NotUnified)?;
    let path = parse_unified_path(&text).ok_or(CgroupError::NotUnified)?;
    // A restarted agent that finds itself in its own leaf (run by hand
    // twice in one cgroup) uses the same subtree again.
    let path = path.strip_suffix("/agent").unwrap_or(&path).to_string();
    Ok(mount.join(path.trim_start_matches('/')))
}

/// The path of the `0::` line of /proc/<pid>/cgroup; `None` on a v1 or
/// hybrid system (other lines with controllers).
pub fn parse_unified_path(text: &str) -> Option<String> {
    let mut unified = None;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if id == "0" && controllers.is_empty() {
            unified = Some(path.to_string());
        } else if !controllers.is_empty() {
            return None;
        }
    }
    unified.filter(|p| p.starts_with('/') && !p.split('/').any(|c| c == ".."))
}

/// Delegated: owned by this process's user (systemd chowns a delegated
/// cgroup to the unit's `User=`), or, for root, marked by systemd's
/// `trusted.delegate` / `user.delegate` extended attribute.
fn is_delegated(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return false;
    };
    let uid = nix::unistd::geteuid().as_raw();
    if uid != 0 {
        return meta.uid() == uid && writable(&dir.join("cgroup.procs"));
    }
    ["trusted.delegate", "user.delegate"]
        .iter()
        .any(|name| xattr_is_one(dir, name))
}

fn writable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok()
}

fn xattr_is_one(path: &Path, name: &str) -> bool {
    let (Ok(path), Ok(name)) = (
        CString::new(path.as_os_str().as_bytes()),
        CString::new(name),
    ) else {
        return false;
    };
    let mut value = [0u8; 8];
    // SAFETY: both strings are NUL-terminated and alive for the call; the
    // kernel writes at most `value.len()` bytes into `value`.
    let n = unsafe {
        nix::libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    n > 0 && value[..n as usize].starts_with(b"1")
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io("create", dir)(e)),
        _ => Ok(()),
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The value of `key` in a flat-keyed cgroup file (`cpu.stat`,
/// `memory.events`, `cgroup.events`: "key value" lines).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// CPU time of the cgroup's processes so far, in microseconds.
pub fn cpu_usec(dir: &Path) -> Option<u64> {
    keyed(&read(&dir.join("cpu.stat"))?, "usage_usec")
}

/// Memory charged to the cgroup now.
pub fn memory_current(dir: &Path) -> Option<u64> {
    read(&dir.join("memory.current"))?.trim().parse().ok()
}

/// Usage of the cgroup at `dir`. `sampled_peak` is the highest
/// memory.current the agent has seen: the peak where the kernel has no
/// memory.peak (before 5.19), and never lower than it where it has.
pub fn usage(dir: &Path, sampled_peak: u64) -> Option<Usage> {
    let usec = cpu_usec(dir)?;
    let peak = read(&dir.join("memory.peak"))
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(0)
        .max(sampled_peak)
        .max(memory_current(dir).unwrap_or(0));
    Some(Usage {
        cpu_seconds: (usec as f64 / 1e6 * 1000.0).round() / 1000.0,
        memory_peak_bytes: peak,
        oom_kills: oom_kills(dir),
    })
}

/// Processes the kernel killed for the memory limit (memory.events'
/// `oom_kill`; counted in this cgroup, which has no children).
pub fn oom_kills(dir: &Path) -> u64 {
    read(&dir.join("memory.events"))
        .and_then(|t| keyed(&t, "oom_kill"))
        .unwrap_or(0)
}

/// True while any process is in the cgroup (cgroup.events `populated`); a
/// cgroup that is gone is empty.
pub fn populated(dir: &Path) -> bool {
    read(&dir.join("cgroup.events"))
        .and_then(|t| keyed(&t, "populated"))
        .is_some_and(|p| p != 0)
}

/// The pids in the cgroup.
pub fn pids(dir: &Path) -> Vec<i32> {
    read(&dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// SIGKILL to every process of the cgroup at once: `cgroup.kill` (5.14),
/// or where it is missing, freeze the cgroup (so nothing forks meanwhile),
/// SIGKILL each process and thaw (a frozen process dies of SIGKILL).
pub fn kill(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    let frozen = std::fs::write(dir.join("cgroup.freeze"), "1").is_ok();
    for pid in pids(dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if frozen {
        let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
    }
}

/// Removes an empty task cgroup, waiting up to `within` for its last
/// processes to be gone (killed ones take a moment to exit).
pub fn remove(dir: &Path, within: Duration) -> Result<(), CgroupError> {
    let deadline = Instant::now() + within;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(io("remove", dir)(e)),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cgroup")
            .join(name)
    }

    #[test]
    fn unified_path_from_a_systemd_service() {
        assert_eq!(
            parse_unified_path("0::/system.slice/outpost.service\n").as_deref(),
            Some("/system.slice/outpost.service")
        );
    }

    #[test]
    fn v1_and_hybrid_systems_have_no_unified_path() {
        let v1 = std::fs::read_to_string(fixture("proc-self-cgroup-v1")).unwrap();
        assert_eq!(parse_unified_path(&v1), None);
        assert_eq!(parse_unified_path(""), None);
        assert_eq!(parse_unified_path("0::/a/../b\n"), None);
    }

    #[test]
    fn cpu_memory_and_oom_from_a_task_killed_by_its_limit() {
        let dir = fixture("task.oom");
        assert_eq!(cpu_usec(&dir), Some(1_234_567));
        assert_eq!(memory_current(&dir), Some(20_480));
        assert_eq!(oom_kills(&dir), 1);
        assert!(!populated(&dir));
        let u = usage(&dir, 0).unwrap();
        assert_eq!(u.cpu_seconds, 1.235);
        assert_eq!(u.memory_peak_bytes, 16_777_216);
        assert_eq!(u.oom_kills, 1);
    }

    #[test]
    fn peak_falls_back_to_the_sampled_maximum_without_memory_peak() {
        // Captured from a kernel before 5.19: no memory.peak file.
        let dir = fixture("task.nopeak");
        assert!(!dir.join("memory.peak").exists());
        let u = usage(&dir, 9_000_000).unwrap();
        assert_eq!(u.memory_peak_bytes, 9_000_000);
        assert_eq!(u.oom_kills, 0);
        assert!(populated(&dir));
        assert_eq!(pids(&dir), vec![812, 813]);
    }

    #[test]
    fn limits_become_kernel_settings() {
        let limits = Limits {
            memory_max_bytes: Some(64 << 20),
            cpu_max_percent: Some(20),
            pids_max: Some(16),
        };
        let files = limit_files(&limits);
        let get = |f: &str| files.iter().find(|(n, _)| *n == f).unwrap().1.clone();
        assert_eq!(get("memory.max"), "67108864");
        assert_eq!(get("memory.swap.max"), "0");
        assert_eq!(get("cpu.max"), "20000 100000");
        assert_eq!(get("pids.max"), "16");
        let none = limit_files(&Limits::default());
        let get = |f: &str| none.iter().find(|(n, _)| *n == f).unwrap().1.clone();
        assert_eq!(get("memory.max"), "max");
        assert_eq!(get("cpu.max"), "max 100000");
        // Two cores: 150 % is one and a half periods per period.
        let wide = limit_files(&Limits {
            cpu_max_percent: Some(150),
            ..Limits::default()
        });
        assert!(wide.contains(&("cpu.max", "150000 100000".to_string())));
    }

    #[test]
    fn no_cgroups_without_a_unified_hierarchy() {
        // A root whose sys/fs/cgroup has no cgroup.controllers (v1).
        let root = fixture("root-v1");
        assert!(matches!(own_cgroup(&root), Err(CgroupError::NotUnified)));
    }

    #[test]
    fn a_cgroup_nobody_delegated_is_left_alone() {
        // A v2 root whose service cgroup is neither owned by a non-root
        // agent with a writable cgroup.procs nor marked delegated.
        let root = fixture("root-v2");
        let err = Cgroups::set_up(&root).unwrap_err();
        assert!(matches!(err, CgroupError::NotDelegated { .. }), "{err}");
        assert!(
            !root
                .join("sys/fs/cgroup/system.slice/outpost.service/agent")
                .exists(),
            "made a leaf in a cgroup that is not the agent's"
        );
    }

    #[test]
    fn own_cgroup_under_a_v2_root() {
        let root = fixture("root-v2");
        assert_eq!(
            own_cgroup(&root).unwrap(),
            root.join("sys/fs/cgroup/system.slice/outpost.service")
        );
    }
}
