//! Child processes: the only module that starts, watches, stops and reaps
//! them.
//!
//! Children are started with fork/exec through nix. The agent is
//! multi-threaded, so everything that allocates (argument vectors, the
//! environment, the program path) is prepared before `fork`, and the child
//! makes only async-signal-safe calls until `exec`. Each child gets its own
//! process group (so a stop reaches its descendants too), stdin from
//! /dev/null, a clean environment (never the agent key, never `NOTIFY_SOCKET`
//! or `WATCHDOG_*`), no inherited descriptors, and SIGPIPE back at its default
//! (Rust ignores it in the agent, and an ignored signal survives exec).
//!
//! One thread watches every child at once: it polls all their output pipes
//! plus a self-pipe that SIGCHLD writes to, reaps exits with `waitpid` on the
//! pids it knows (never `-1`, which would steal other code's children), and
//! escalates stops from SIGTERM to SIGKILL when the grace period runs out.
//! Hundreds of collectors therefore cost one thread, not hundreds.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{ForkResult, Pid};

/// How much of standard error is kept for `stderr_tail`.
pub const STDERR_TAIL_BYTES: usize = 4096;
/// The PATH children get; the agent's own PATH may be a systemd minimum or
/// a developer's shell, neither of which a task should depend on.
pub const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// After the leader exits, how long to wait for its pipes to reach EOF
/// before reporting the exit anyway (a grandchild may hold them open).
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// After the leader exits and its cgroup was killed, how long to wait for
/// the cgroup to empty before reporting the exit anyway (a process stuck in
/// the kernel); logged when it happens.
const CGROUP_EMPTY_GRACE: Duration = Duration::from_secs(10);

/// Where a child's standard output goes.
#[derive(Clone, Debug)]
pub enum Output {
    /// Kept in memory up to `max` bytes (iperf3's JSON).
    Capture {
        max: usize,
    },
    /// Appended to a log file that is rotated once at `max` bytes.
    LogFile {
        path: PathBuf,
        max: u64,
    },
    Discard,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Spec {
    pub program: String,
    pub args: Vec<String>,
    pub stdout: Output,
    /// Standard error's tail is always kept; this also appends it to a file.
    pub stderr_log: Option<(PathBuf, u64)>,
    /// Set as `OUTPOST_TASK` in the child's environment, so that after a
    /// crash a process can be traced to its task even if its pid was never
    /// recorded.
    pub task_id: Option<String>,
    /// The task's cgroup (section 4.2), entered by the child before exec;
    /// stops and exits then reach every process in it.
    pub cgroup: Option<PathBuf>,
}

/// The environment variable naming a child's task.
pub const TASK_VAR: &str = "OUTPOST_TASK";
/// The environment variable naming the agent a child belongs to (its state
/// directory), so that recovery never takes another agent's child on the
/// same host for its own when both run a task of the same id.
pub const OWNER_VAR: &str = "OUTPOST_TASK_OWNER";

/// A started child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    pub pid: i32,
    /// Start time in clock ticks since boot (/proc/<pid>/stat field 22):
    /// with the pid, it names this process and no later one.
    pub start_ticks: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    pub fn describe(self) -> String {
        match self {
            ExitStatus::Code(c) => format!("exited with status {c}"),
            ExitStatus::Signal(s) => {
                let name = Signal::try_from(s)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown signal");
                format!("killed by {name}")
            }
        }
    }
}

/// A child that has ended, with what it wrote.
#[derive(Debug)]
pub struct Exit {
    pub pid: i32,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_tail: String,
    /// The agent asked it to stop (as opposed to it ending on its own).
    pub stopped: bool,
}

#[derive(Debug)]
pub enum SpawnError {
    NotFound {
        program: String,
    },
    Os {
        program: String,
        what: &'static str,
        errno: Errno,
    },
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::NotFound { program } => {
                write!(f, "program {program:?} not found (looked in {CHILD_PATH})")
            }
            SpawnError::Os {
                program,
                what,
                errno,
            } => {
                write!(f, "cannot start {program:?}: {what}: {}", errno.desc())
            }
        }
    }
}

enum Command {
    Watch(Box<Watched>),
    Stop {
        pid: i32,
        grace: Duration,
    },
    /// Hand every child over (an agent update, section 4.3): answer with
    /// them, their pipes left open across exec, then wait; `true` on the
    /// second channel means the exec failed and watching goes on.
    Export(Sender<Vec<Inherited>>, Receiver<bool>),
}

/// A child as a handover carries it to the next program image: everything
/// the watcher knew, and the pipe descriptors (open across the exec).
#[derive(Debug)]
pub struct Inherited {
    pub pid: i32,
    pub start_ticks: u64,
    pub stdout_fd: Option<i32>,
    pub stderr_fd: Option<i32>,
    pub stdout: Output,
    pub stderr_log: Option<(PathBuf, u64)>,
    /// Output so far, as text: iperf3's JSON is UTF-8, and a JSON string
    /// is a quarter of the size of a JSON array of bytes.
    pub captured: String,
    pub truncated: bool,
    pub tail: String,
    pub stopped: bool,
    pub cgroup: Option<PathBuf>,
    /// Already reaped, with this status (its output may still be coming).
    pub exited: Option<ExitStatus>,
}

struct Watched {
    pid: i32,
    stdout_pipe: Option<File>,
    stderr_pipe: Option<File>,
    stdout: Output,
    stderr_log: Option<(PathBuf, u64)>,
    captured: Vec<u8>,
    truncated: bool,
    tail: Vec<u8>,
    status: Option<(ExitStatus, Instant)>,
    kill_at: Option<Instant>,
    stopped: bool,
    cgroup: Option<PathBuf>,
}

type OnExit = Box<dyn Fn(Exit) + Send>;

/// Handle to the supervisor thread; cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    /// Set as [`OWNER_VAR`] beside [`TASK_VAR`].
    owner: String,
    commands: Sender<Command>,
    wake: Arc<Mutex<File>>,
    running: Arc<Mutex<HashMap<i32, Started>>>,
}

impl Supervisor {
    /// Starts the watcher thread; `on_exit` is called (on that thread) once
    /// per child with its exit.
    /// `owner` names this agent in its children's environment (its state
    /// directory).
    pub fn start(
        owner: String,
        on_exit: impl Fn(Exit) + Send + 'static,
    ) -> std::io::Result<Supervisor> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let write = File::from(write);
        // SIGCHLD writes a byte to the self-pipe, waking the poll.
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGCHLD, write.try_clone()?)?;
        let (commands, inbox) = mpsc::channel();
        let running = Arc::new(Mutex::new(HashMap::new()));
        let watcher = Watcher {
            wake: File::from(read),
            inbox,
            children: HashMap::new(),
            on_exit: Box::new(on_exit),
            running: running.clone(),
        };
        std::thread::Builder::new()
            .name("supervisor".into())
            .stack_size(256 * 1024)
            .spawn(move || watcher.run())?;
        Ok(Supervisor {
            owner,
            commands,
            wake: Arc::new(Mutex::new(write)),
            running,
        })
    }

    fn send(&self, command: Command) {
        let _ = self.commands.send(command);
        let _ = self
            .wake
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(&[1]);
    }

    /// Starts `spec` as a new child in its own process group.
    pub fn spawn(&self, spec: &Spec) -> Result<Started, SpawnError> {
        let prepared = Prepared::new(spec, &self.owner)?;
        let os = |what: &'static str| {
            let program = spec.program.clone();
            move |errno: Errno| SpawnError::Os {
                program: program.clone(),
                what,
                errno,
            }
        };
        let devnull = nix::fcntl::open(
            "/dev/null",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(os("open /dev/null"))?;
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(os("pipe"))?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(os("pipe"))?;
        let (status_r, status_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(os("pipe"))?;

        // SAFETY: the child branch below calls only async-signal-safe
        // functions (setpgid, sigprocmask, signal, dup2, close_range/close,
        // execve, write, _exit) on memory prepared before the fork, and
        // never returns into Rust code that could allocate or take a lock.
        match unsafe { nix::unistd::fork() }.map_err(os("fork"))? {
            ForkResult::Child => {
                // SAFETY: see above; `child_exec` never returns.
                unsafe {
                    child_exec(
                        &prepared,
                        devnull.as_raw_fd(),
                        out_w.as_raw_fd(),
                        err_w.as_raw_fd(),
                        status_w.as_raw_fd(),
                    )
                }
            }
            ForkResult::Parent { child } => {
                drop((out_w, err_w, status_w, devnull));
                let pid = child.as_raw();
                // The status pipe closes on a successful exec (CLOEXEC); on
                // failure the child writes its errno first.
                let mut report = [0u8; 5];
                let mut status = File::from(status_r);
                let mut n = 0;
                while n < report.len() {
                    match status.read(&mut report[n..]) {
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
                if n == report.len() {
                    let _ = waitpid(child, None);
                    let errno = [report[0], report[1], report[2], report[3]];
                    return Err(SpawnError::Os {
                        program: spec.program.clone(),
                        what: if report[4] == STAGE_CGROUP {
                            "enter the task's cgroup"
                        } else {
                            "exec"
                        },
                        errno: Errno::from_raw(i32::from_ne_bytes(errno)),
                    });
                }
                let started = Started {
                    pid,
                    start_ticks: start_ticks(Path::new("/"), pid).unwrap_or(0),
                };
                self.running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(pid, started);
                let pipe = |fd: OwnedFd| {
                    let _ = nix::fcntl::fcntl(
                        fd.as_fd(),
                        nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
                    );
                    Some(File::from(fd))
                };
                self.send(Command::Watch(Box::new(Watched {
                    pid,
                    stdout_pipe: pipe(out_r),
                    stderr_pipe: pipe(err_r),
                    stdout: spec.stdout.clone(),
                    stderr_log: spec.stderr_log.clone(),
                    captured: Vec::new(),
                    truncated: false,
                    tail: Vec::new(),
                    status: None,
                    kill_at: None,
                    stopped: false,
                    cgroup: spec.cgroup.clone(),
                })));
                Ok(started)
            }
        }
    }

    /// SIGTERM to the child's process group now, SIGKILL after `grace`.
    pub fn stop(&self, pid: i32, grace: Duration) {
        self.send(Command::Stop { pid, grace });
    }

    /// Stops watching for an exec into another program image: every child
    /// with its pipes drained and left open across exec. The watcher then
    /// waits; `resume` (after a failed exec) makes it watch again.
    pub fn export(&self) -> Option<(Vec<Inherited>, Sender<bool>)> {
        let (answer, children) = mpsc::channel();
        let (resume, resumed) = mpsc::channel();
        self.send(Command::Export(answer, resumed));
        let children = children.recv_timeout(Duration::from_secs(2)).ok()?;
        Some((children, resume))
    }

    /// Takes a child handed over by the previous program image back under
    /// watch, as if this supervisor had started it. `None` when the pid is
    /// not this process's child or not the recorded process.
    pub fn adopt(&self, child: Inherited) -> Option<Started> {
        let ours = std::fs::read_to_string(format!("/proc/{}/stat", child.pid))
            .ok()
            .filter(|stat| parse_start_ticks(stat) == Some(child.start_ticks))
            .and_then(|stat| {
                let ppid = stat
                    .rfind(')')
                    .and_then(|i| stat[i + 1..].split_whitespace().nth(1))?;
                ppid.parse::<i32>().ok()
            })
            .is_some_and(|ppid| ppid == std::process::id() as i32);
        if !ours && child.exited.is_none() {
            return None;
        }
        let started = Started {
            pid: child.pid,
            start_ticks: child.start_ticks,
        };
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(child.pid, started);
        self.send(Command::Watch(Box::new(Watched {
            pid: child.pid,
            stdout_pipe: child.stdout_fd.and_then(inherited_pipe),
            stderr_pipe: child.stderr_fd.and_then(inherited_pipe),
            stdout: child.stdout,
            stderr_log: child.stderr_log,
            captured: child.captured.into_bytes(),
            truncated: child.truncated,
            tail: child.tail.into_bytes(),
            status: child.exited.map(|s| (s, Instant::now())),
            kill_at: None,
            stopped: child.stopped,
            cgroup: child.cgroup,
        })));
        Some(started)
    }

    /// Children started and not yet reported as exited.
    pub fn running(&self) -> Vec<Started> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .copied()
            .collect()
    }
}

impl Inherited {
    pub fn to_json(&self) -> serde_json::Value {
        use crate::handover::field::opt;
        let path = |p: &Option<PathBuf>| opt(p.as_ref().map(|p| p.to_string_lossy().into_owned()));
        let (stdout_kind, stdout_path, stdout_max) = match &self.stdout {
            Output::Capture { max } => ("capture", None, *max as u64),
            Output::LogFile { path, max } => ("log_file", Some(path.clone()), *max),
            Output::Discard => ("discard", None, 0),
        };
        let (code, signal) = match self.exited {
            Some(ExitStatus::Code(c)) => (Some(c), None),
            Some(ExitStatus::Signal(s)) => (None, Some(s)),
            None => (None, None),
        };
        serde_json::json!({
            "pid": self.pid, "start_ticks": self.start_ticks,
            "stdout_fd": opt(self.stdout_fd), "stderr_fd": opt(self.stderr_fd),
            "stdout": stdout_kind, "stdout_path": path(&stdout_path), "stdout_max": stdout_max,
            "stderr_log": path(&self.stderr_log.as_ref().map(|l| l.0.clone())),
            "stderr_log_max": self.stderr_log.as_ref().map_or(0, |l| l.1),
            "captured": self.captured, "truncated": self.truncated, "tail": self.tail,
            "stopped": self.stopped, "cgroup": path(&self.cgroup),
            "exit_code": opt(code), "exit_signal": opt(signal),
        })
    }

    pub fn from_json(v: &serde_json::Value) -> Option<Inherited> {
        use crate::handover::field;
        let path = |k: &str| field::string(v, k).map(PathBuf::from);
        let stdout = match v.get("stdout")?.as_str()? {
            "capture" => Output::Capture {
                max: usize::try_from(field::u64(v, "stdout_max")?).ok()?,
            },
            "log_file" => Output::LogFile {
                path: path("stdout_path")?,
                max: field::u64(v, "stdout_max")?,
            },
            _ => Output::Discard,
        };
        let exited = match (field::i32(v, "exit_code"), field::i32(v, "exit_signal")) {
            (Some(c), _) => Some(ExitStatus::Code(c)),
            (None, Some(s)) => Some(ExitStatus::Signal(s)),
            _ => None,
        };
        Some(Inherited {
            pid: field::i32(v, "pid")?,
            start_ticks: field::u64(v, "start_ticks")?,
            stdout_fd: field::i32(v, "stdout_fd"),
            stderr_fd: field::i32(v, "stderr_fd"),
            stdout,
            stderr_log: path("stderr_log")
                .map(|p| (p, field::u64(v, "stderr_log_max").unwrap_or(0))),
            captured: field::string(v, "captured").unwrap_or_default(),
            truncated: field::bool(v, "truncated"),
            tail: field::string(v, "tail").unwrap_or_default(),
            stopped: field::bool(v, "stopped"),
            cgroup: path("cgroup"),
            exited,
        })
    }
}

/// A pipe named by a handover, as a `File`.
fn inherited_pipe(fd: i32) -> Option<File> {
    inherited_fd(fd, nix::sys::stat::SFlag::S_IFIFO).map(File::from)
}

/// A descriptor named by a handover (section 4.3): taken only if it is
/// above the standard descriptors and of the `kind` expected (a pipe, a
/// socket), and made close-on-exec again.
pub fn inherited_fd(fd: i32, kind: nix::sys::stat::SFlag) -> Option<std::os::fd::OwnedFd> {
    use nix::sys::stat::{SFlag, fstat};
    if fd <= 2 {
        return None;
    }
    // SAFETY: only looks at the descriptor; an fd that is not open fails.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let stat = fstat(borrowed).ok()?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != kind {
        return None;
    }
    set_cloexec(fd, true);
    // SAFETY: the handover gave this image the descriptor, which nothing
    // else in it owns; it is of the kind checked above and is owned from
    // here on by the returned OwnedFd alone.
    Some(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Sets or clears FD_CLOEXEC on one descriptor.
pub fn set_cloexec(fd: RawFd, on: bool) {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    // SAFETY: fcntl on a descriptor number only changes its flags.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    let _ = fcntl(borrowed, FcntlArg::F_SETFD(flags));
}

/// Everything the child needs, allocated before the fork.
struct Prepared {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const nix::libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const nix::libc::c_char>,
    /// `<task cgroup>/cgroup.procs`, which the child writes "0" to.
    cgroup_procs: Option<CString>,
}

impl Prepared {
    fn new(spec: &Spec, owner: &str) -> Result<Prepared, SpawnError> {
        let not_found = || SpawnError::NotFound {
            program: spec.program.clone(),
        };
        let path = resolve_program(&spec.program).ok_or_else(not_found)?;
        let cstring = |s: &[u8]| {
            CString::new(s).map_err(|_| SpawnError::Os {
                program: spec.program.clone(),
                what: "argument with a NUL byte",
                errno: Errno::EINVAL,
            })
        };
        let path = cstring(path.as_os_str().as_bytes())?;
        let mut argv = vec![cstring(spec.program.as_bytes())?];
        for arg in &spec.args {
            argv.push(cstring(arg.as_bytes())?);
        }
        let mut envp = vec![cstring(format!("PATH={CHILD_PATH}").as_bytes())?];
        envp.push(cstring(b"LANG=C.UTF-8")?);
        if let Ok(home) = std::env::var("HOME") {
            envp.push(cstring(format!("HOME={home}").as_bytes())?);
        }
        if let Some(id) = &spec.task_id {
            envp.push(cstring(format!("{TASK_VAR}={id}").as_bytes())?);
            envp.push(cstring(format!("{OWNER_VAR}={owner}").as_bytes())?);
        }
        let argv_ptrs = argv
            .iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        let envp_ptrs = envp
            .iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        let cgroup_procs = match &spec.cgroup {
            Some(dir) => Some(cstring(dir.join("cgroup.procs").as_os_str().as_bytes())?),
            None => None,
        };
        Ok(Prepared {
            cgroup_procs,
            path,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
        })
    }
}

/// A program name with a `/` is taken as it is; otherwise it is looked up
/// in the children's PATH.
pub fn resolve_program(program: &str) -> Option<PathBuf> {
    // Mode bits, not access(2): as root, access says yes to any file.
    let is_executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_executable(&p).then_some(p);
    }
    if program.is_empty() {
        return None;
    }
    CHILD_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| is_executable(p))
}

/// The child side of fork: set up the process and exec. Never returns.
///
/// # Safety
/// Must only be called in the child right after `fork`; it uses only
/// async-signal-safe calls on memory prepared before the fork.
unsafe fn child_exec(p: &Prepared, devnull: RawFd, out: RawFd, err: RawFd, status: RawFd) -> ! {
    use nix::libc;
    // SAFETY: all calls below are async-signal-safe (POSIX.1-2017 2.4.3, and
    // close_range as a raw syscall), and every pointer refers to memory
    // owned by `p`, alive for the duration of the call.
    unsafe {
        libc::setpgid(0, 0);
        // Into the task's cgroup before anything else runs: "0" names the
        // writer itself, so no pid needs formatting here.
        if let Some(procs) = &p.cgroup_procs {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                fail(status, STAGE_CGROUP);
            }
            libc::close(fd);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if libc::dup2(devnull, 0) < 0 || libc::dup2(out, 1) < 0 || libc::dup2(err, 2) < 0 {
            fail(status, STAGE_EXEC);
        }
        // Everything above 2 goes, except the status pipe, which is
        // CLOEXEC and reports an exec failure.
        if status > 3 {
            close_range(3, (status - 1) as u32);
        }
        close_range((status + 1) as u32, u32::MAX);
        libc::execve(p.path.as_ptr(), p.argv_ptrs.as_ptr(), p.envp_ptrs.as_ptr());
        fail(status, STAGE_EXEC)
    }
}

/// # Safety
/// Child side of fork only.
unsafe fn close_range(first: u32, last: u32) {
    use nix::libc;
    // SAFETY: a raw syscall with integer arguments; async-signal-safe.
    let done = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) } == 0;
    if !done {
        // Kernels before 5.9: close one by one up to a sane bound.
        let last = last.min(65_535);
        for fd in first..=last {
            // SAFETY: closing a descriptor number is async-signal-safe.
            unsafe { libc::close(fd as i32) };
        }
    }
}

/// What the child was doing when it failed (the status pipe's fifth byte).
const STAGE_EXEC: u8 = 0;
const STAGE_CGROUP: u8 = 1;

/// # Safety
/// Child side of fork only: reports errno and the stage through the status
/// pipe and exits.
unsafe fn fail(status: RawFd, stage: u8) -> ! {
    use nix::libc;
    // SAFETY: errno location, write and _exit are async-signal-safe; the
    // buffer lives on this stack.
    unsafe {
        let errno = *libc::__errno_location();
        let e = errno.to_ne_bytes();
        let bytes = [e[0], e[1], e[2], e[3], stage];
        libc::write(status, bytes.as_ptr().cast(), 5);
        libc::_exit(127)
    }
}

/// Start time of `pid` in clock ticks since boot, from `<root>/proc/<pid>/stat`.
pub fn start_ticks(root: &Path, pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(root.join(format!("proc/{pid}/stat"))).ok()?;
    parse_start_ticks(&text)
}

/// Field 22 of a /proc/<pid>/stat line; the command name (field 2) may hold
/// spaces and parentheses, so counting starts after its last `)`.
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// `iperf3 --version`'s number, or `None` when iperf3 cannot be run. The
/// one program the agent runs for itself, once at start, to know which
/// options its iperf3 takes.
pub fn iperf3_version(program: &str) -> Option<String> {
    let path = resolve_program(program)?;
    let out = std::process::Command::new(path)
        .arg("--version")
        .env_clear()
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "iperf 3.12 (cJSON 1.7.15)"
    text.split_whitespace().nth(1).map(str::to_string)
}

/// Every process whose environment names `owner` (this agent, see
/// [`OWNER_VAR`]) and a task (see [`Spec::task_id`]), by task id, with
/// start times: one pass over /proc, however many tasks are looked for.
pub fn processes_by_task(root: &Path, owner: &str) -> HashMap<String, Vec<(i32, u64)>> {
    let owned = format!("{OWNER_VAR}={owner}");
    let task_prefix = format!("{TASK_VAR}=");
    let mut found: HashMap<String, Vec<(i32, u64)>> = HashMap::new();
    let Ok(listing) = std::fs::read_dir(root.join("proc")) else {
        return found;
    };
    for pid in listing
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let Ok(env) = std::fs::read(root.join(format!("proc/{pid}/environ"))) else {
            continue;
        };
        let (mut task, mut ours) = (None, false);
        for var in env.split(|b| *b == 0) {
            ours |= var == owned.as_bytes();
            if let Some(id) = var.strip_prefix(task_prefix.as_bytes()) {
                task = Some(String::from_utf8_lossy(id).into_owned());
            }
        }
        if let (Some(task), true) = (task, ours)
            && let Some(ticks) = start_ticks(root, pid)
        {
            found.entry(task).or_default().push((pid, ticks));
        }
    }
    found
}

/// True when `pid` is alive and is still the process that started at
/// `start_ticks` (not a later process that reused the pid). A zombie is
/// not alive: where init is slow to reap orphans (containers), waiting for
/// one to vanish would wait out the whole grace period.
pub fn is_same_process(pid: i32, start_ticks: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z") | Some("X")) && parse_start_ticks(&stat) == Some(start_ticks)
}

struct Watcher {
    wake: File,
    inbox: Receiver<Command>,
    children: HashMap<i32, Watched>,
    on_exit: OnExit,
    running: Arc<Mutex<HashMap<i32, Started>>>,
}

impl Watcher {
    fn run(mut self) {
        loop {
            let now = Instant::now();
            let timeout = self
                .children
                .values()
                .filter_map(|c| match (c.status, c.kill_at) {
                    (Some((_, at)), _) if now >= at + DRAIN_GRACE => {
                        Some(now + Duration::from_millis(20))
                    }
                    (Some((_, at)), _) => Some(at + DRAIN_GRACE),
                    (None, Some(kill_at)) => Some(kill_at),
                    _ => None,
                })
                .map(|t| t.saturating_duration_since(now))
                .min()
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            let mut readable: Vec<(i32, bool)> = Vec::new();
            {
                let mut fds = vec![PollFd::new(self.wake.as_fd(), PollFlags::POLLIN)];
                let mut owners = Vec::new();
                for child in self.children.values() {
                    for (pipe, is_stdout) in
                        [(&child.stdout_pipe, true), (&child.stderr_pipe, false)]
                    {
                        if let Some(pipe) = pipe {
                            fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
                            owners.push((child.pid, is_stdout));
                        }
                    }
                }
                let millis = PollTimeout::try_from(timeout.as_millis().max(1) as i32)
                    .unwrap_or(PollTimeout::MAX);
                match poll(&mut fds, millis) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => log::error!("supervisor: poll failed: {e}"),
                }
                for (fd, owner) in fds.iter().skip(1).zip(owners) {
                    if fd.revents().is_some_and(|r| !r.is_empty()) {
                        readable.push(owner);
                    }
                }
            }
            let mut byte = [0u8; 64];
            while matches!(self.wake.read(&mut byte), Ok(n) if n > 0) {}
            while let Ok(command) = self.inbox.try_recv() {
                self.apply(command);
            }
            for (pid, is_stdout) in readable {
                if let Some(child) = self.children.get_mut(&pid) {
                    child.drain(is_stdout);
                }
            }
            self.reap();
            self.escalate();
            self.report();
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Watch(child) => {
                self.children.insert(child.pid, *child);
            }
            Command::Export(answer, resumed) => {
                let children = self.export();
                let fds: Vec<RawFd> = children
                    .iter()
                    .flat_map(|c| [c.stdout_fd, c.stderr_fd])
                    .flatten()
                    .collect();
                if answer.send(children).is_err() {
                    return self.resume(&fds);
                }
                // The exec ends this thread; a `true` (or a dropped
                // sender) means the exec did not happen.
                let _ = resumed.recv();
                self.resume(&fds);
            }
            Command::Stop { pid, grace } => {
                if let Some(child) = self.children.get_mut(&pid)
                    && child.status.is_none()
                {
                    child.stopped = true;
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
                    let kill_at = Instant::now() + grace;
                    child.kill_at = Some(child.kill_at.map_or(kill_at, |k| k.min(kill_at)));
                }
            }
        }
    }

    fn export(&mut self) -> Vec<Inherited> {
        let pids: Vec<i32> = self.children.keys().copied().collect();
        let mut out = Vec::new();
        for pid in pids {
            let Some(child) = self.children.get_mut(&pid) else {
                continue;
            };
            child.drain(true);
            child.drain(false);
            let fd = |p: &Option<File>| {
                p.as_ref().map(|f| {
                    set_cloexec(f.as_raw_fd(), false);
                    f.as_raw_fd()
                })
            };
            let started = self
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&pid)
                .copied();
            out.push(Inherited {
                pid,
                start_ticks: started.map(|s| s.start_ticks).unwrap_or(0),
                stdout_fd: fd(&child.stdout_pipe),
                stderr_fd: fd(&child.stderr_pipe),
                stdout: child.stdout.clone(),
                stderr_log: child.stderr_log.clone(),
                captured: String::from_utf8_lossy(&child.captured).into_owned(),
                truncated: child.truncated,
                tail: String::from_utf8_lossy(&child.tail).into_owned(),
                stopped: child.stopped,
                cgroup: child.cgroup.clone(),
                exited: child.status.map(|(s, _)| s),
            });
        }
        out
    }

    /// The exec did not happen: the pipes are close-on-exec again.
    fn resume(&mut self, fds: &[RawFd]) {
        for fd in fds {
            set_cloexec(*fd, true);
        }
    }

    fn reap(&mut self) {
        for child in self.children.values_mut().filter(|c| c.status.is_none()) {
            let pid = Pid::from_raw(child.pid);
            // Looked at without reaping first: while the leader is a zombie
            // its pid, and so its group id, cannot be reused, so the
            // SIGKILL below reaches only what the task left in its group.
            // Reaped first, a new process could take the pid and make it
            // its group's id before the kill.
            match waitid(
                Id::Pid(pid),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
            ) {
                Ok(WaitStatus::StillAlive) => continue,
                Ok(_) => {
                    let _ = killpg(pid, Signal::SIGKILL);
                    // The task is its leader: what it left behind, in its
                    // group or not, goes with it.
                    if let Some(dir) = &child.cgroup {
                        crate::cgroup::kill(dir);
                    }
                }
                Err(Errno::ECHILD) => {}
                Err(_) => continue,
            }
            let status = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => ExitStatus::Code(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => ExitStatus::Signal(signal as i32),
                Ok(_) => continue,
                // Someone else reaped it: report it as gone all the same.
                Err(Errno::ECHILD) => ExitStatus::Signal(Signal::SIGKILL as i32),
                Err(_) => continue,
            };
            child.status = Some((status, Instant::now()));
        }
    }

    fn escalate(&mut self) {
        let now = Instant::now();
        for child in self.children.values_mut() {
            if child.status.is_none() && child.kill_at.is_some_and(|k| k <= now) {
                let _ = killpg(Pid::from_raw(child.pid), Signal::SIGKILL);
                if let Some(dir) = &child.cgroup {
                    crate::cgroup::kill(dir);
                }
                child.kill_at = None;
            }
        }
    }

    fn report(&mut self) {
        let now = Instant::now();
        let done: Vec<i32> = self
            .children
            .values()
            .filter(|c| match c.status {
                Some((_, at)) => {
                    let drained = (c.stdout_pipe.is_none() && c.stderr_pipe.is_none())
                        || now >= at + DRAIN_GRACE;
                    drained && c.cgroup_empty(now >= at + CGROUP_EMPTY_GRACE)
                }
                None => false,
            })
            .map(|c| c.pid)
            .collect();
        for pid in done {
            let Some(mut child) = self.children.remove(&pid) else {
                continue;
            };
            child.drain(true);
            child.drain(false);
            self.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&pid);
            let Some((status, _)) = child.status else {
                continue;
            };
            (self.on_exit)(Exit {
                pid,
                status,
                stdout: std::mem::take(&mut child.captured),
                stdout_truncated: child.truncated,
                stderr_tail: String::from_utf8_lossy(&child.tail).into_owned(),
                stopped: child.stopped,
            });
        }
    }
}

impl Watched {
    /// The task's cgroup holds no process any more (or there is none). A
    /// stopped task is reported only once all of it is gone, so that its
    /// cgroup can be removed and a restart finds its ports free.
    fn cgroup_empty(&self, given_up: bool) -> bool {
        let Some(dir) = &self.cgroup else {
            return true;
        };
        if !crate::cgroup::populated(dir) {
            return true;
        }
        if given_up {
            log::error!(
                "{}: processes survive SIGKILL after {}s; reporting the exit anyway",
                dir.display(),
                CGROUP_EMPTY_GRACE.as_secs()
            );
            return true;
        }
        // Killed again: a process that forked while the first kill went
        // out is no exception.
        crate::cgroup::kill(dir);
        false
    }

    /// Reads what is available from one pipe; closes it at EOF.
    fn drain(&mut self, is_stdout: bool) {
        let mut buf = [0u8; 8192];
        loop {
            let pipe = if is_stdout {
                &mut self.stdout_pipe
            } else {
                &mut self.stderr_pipe
            };
            let Some(file) = pipe.as_mut() else { return };
            match file.read(&mut buf) {
                Ok(0) => {
                    *pipe = None;
                    return;
                }
                Ok(n) => {
                    let data = &buf[..n];
                    if is_stdout {
                        self.take_stdout(data);
                    } else {
                        self.take_stderr(data);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    *pipe = None;
                    return;
                }
            }
        }
    }

    fn take_stdout(&mut self, data: &[u8]) {
        match &self.stdout {
            Output::Capture { max } => {
                let room = max.saturating_sub(self.captured.len());
                self.captured
                    .extend_from_slice(&data[..data.len().min(room)]);
                if data.len() > room {
                    self.truncated = true;
                }
            }
            Output::LogFile { path, max } => append_log(path, *max, data),
            Output::Discard => {}
        }
    }

    fn take_stderr(&mut self, data: &[u8]) {
        self.tail.extend_from_slice(data);
        if self.tail.len() > STDERR_TAIL_BYTES {
            let cut = self.tail.len() - STDERR_TAIL_BYTES;
            self.tail.drain(..cut);
        }
        if let Some((path, max)) = &self.stderr_log {
            append_log(path, *max, data);
        }
    }
}

/// Appends to a log file, rotating it to `<path>.1` once it reaches `max`
/// bytes, so a chatty child can use at most twice `max` of disk.
pub fn append_log(path: &Path, max: u64, data: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size + data.len() as u64 > max && size > 0 {
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        let _ = std::fs::rename(path, rotated);
    }
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
    {
        let _ = file.write_all(data);
    }
}

/// CPU time (clock ticks) and resident memory (bytes) of a process, from
/// `<root>/proc/<pid>/stat`.
pub fn usage(root: &Path, pid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(root.join(format!("proc/{pid}/stat"))).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command name: state is field 3, utime 14, stime 15, rss 24.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    Some((utime + stime, rss_pages * page_size()))
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map(|v| v as u64)
        .unwrap_or(4096)
}

/// Clock ticks per second, for turning tick deltas into CPU percent.
pub fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|v| v as u64)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supervisor() -> (Supervisor, Receiver<Exit>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let s = Supervisor::start("/test/owner".into(), move |exit| {
            let _ = tx.lock().unwrap().send(exit);
        })
        .unwrap();
        (s, rx)
    }

    fn spec(program: &str, args: &[&str]) -> Spec {
        Spec {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            stdout: Output::Capture { max: 1 << 20 },
            stderr_log: None,
            task_id: Some("t-env".into()),
            cgroup: None,
        }
    }

    #[test]
    fn parses_start_ticks_past_odd_command_names() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 987654 1000 200 18446744073709551615";
        assert_eq!(parse_start_ticks(stat), Some(987_654));
        assert_eq!(parse_start_ticks("garbage"), None);
    }

    #[test]
    fn captures_output_exit_code_and_stderr_tail() {
        let (s, rx) = supervisor();
        let started = s
            .spawn(&spec("sh", &["-c", "echo out; echo err >&2; exit 3"]))
            .unwrap();
        assert!(started.start_ticks > 0);
        let exit = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(exit.pid, started.pid);
        assert_eq!(exit.status, ExitStatus::Code(3));
        assert_eq!(exit.stdout, b"out\n");
        assert_eq!(exit.stderr_tail, "err\n");
        assert!(!exit.stopped);
        assert!(s.running().is_empty());
    }

    #[test]
    fn children_get_a_clean_environment_and_no_descriptors() {
        let (s, rx) = supervisor();
        s.spawn(&spec("sh", &["-c", "env; ls /proc/self/fd"]))
            .unwrap();
        let exit = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let out = String::from_utf8_lossy(&exit.stdout);
        assert!(out.contains(&format!("PATH={CHILD_PATH}")), "{out}");
        // Only what the supervisor sets (and what sh adds itself) is there,
        // whatever the agent's own environment holds.
        for line in out.lines().filter(|l| l.contains('=')) {
            let name = line.split('=').next().unwrap();
            assert!(
                [
                    "PATH", "LANG", "HOME", "PWD", "SHLVL", "_", "OLDPWD", TASK_VAR, OWNER_VAR
                ]
                .contains(&name),
                "unexpected variable {name} in a child's environment"
            );
        }
        // ls itself opens one descriptor for the directory it lists.
        let fds: Vec<&str> = out
            .lines()
            .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        assert_eq!(fds, ["0", "1", "2", "3"], "descriptors beyond stdio");
    }

    #[test]
    fn stop_escalates_to_sigkill_and_reaches_the_group() {
        let (s, rx) = supervisor();
        // A shell that ignores SIGTERM, with a grandchild sleeping.
        let started = s
            .spawn(&spec("sh", &["-c", "trap '' TERM; sleep 300 & wait"]))
            .unwrap();
        std::thread::sleep(Duration::from_millis(200)); // let the trap be set
        let asked = Instant::now();
        s.stop(started.pid, Duration::from_millis(300));
        let exit = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(exit.stopped);
        assert_eq!(exit.status, ExitStatus::Signal(Signal::SIGKILL as i32));
        assert!(asked.elapsed() >= Duration::from_millis(300));
        // Nothing of the group is left.
        let deadline = Instant::now() + Duration::from_secs(5);
        while killpg(Pid::from_raw(started.pid), None).is_ok() {
            assert!(Instant::now() < deadline, "group still alive");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_child_can_be_traced_to_its_task_without_its_pid() {
        let (s, rx) = supervisor();
        let id = format!("t-find-{}", std::process::id());
        let mut spec = spec("sleep", &["30"]);
        spec.task_id = Some(id.clone());
        let started = s.spawn(&spec).unwrap();
        let ours = processes_by_task(Path::new("/"), "/test/owner");
        assert_eq!(ours[&id], [(started.pid, started.start_ticks)]);
        assert!(!ours.contains_key("t-nobody"));
        // Another agent's child with the same task id is not ours.
        assert!(!processes_by_task(Path::new("/"), "/another/agent").contains_key(&id));
        s.stop(started.pid, Duration::from_secs(1));
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }

    #[test]
    fn a_missing_program_is_a_clear_error() {
        let (s, _rx) = supervisor();
        let err = s.spawn(&spec("no-such-program-outpost", &[])).unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
        let file = std::env::temp_dir().join(format!("outpost-noexec-{}", std::process::id()));
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        let err = s.spawn(&spec(file.to_str().unwrap(), &[])).unwrap_err();
        assert!(matches!(err, SpawnError::NotFound { .. }), "{err}");
        // Executable but not a program: the exec error comes back.
        std::fs::write(&file, "\x00\x01not a program").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let err = s.spawn(&spec(file.to_str().unwrap(), &[])).unwrap_err();
        assert!(err.to_string().contains("exec"), "{err}");
        std::fs::remove_file(&file).unwrap();
    }

    /// A child that cannot enter its task's cgroup never runs: no window
    /// where a task's process lives outside it (section 4.2).
    #[test]
    fn a_child_that_cannot_enter_its_cgroup_never_runs() {
        let (s, _rx) = supervisor();
        let dir = std::env::temp_dir().join(format!("outpost-nocg-{}", std::process::id()));
        let marker = dir.join("ran");
        std::fs::create_dir_all(&dir).unwrap();
        let mut spec = spec("touch", &[marker.to_str().unwrap()]);
        // No cgroup.procs in it: the child's open fails before exec.
        spec.cgroup = Some(dir.join("task.t-1"));
        let err = s.spawn(&spec).unwrap_err();
        assert!(err.to_string().contains("enter the task's cgroup"), "{err}");
        assert!(!marker.exists(), "the program ran outside its cgroup");
        // A writable cgroup.procs (a plain file here) lets it run.
        let cg = dir.join("task.t-2");
        std::fs::create_dir_all(&cg).unwrap();
        std::fs::write(cg.join("cgroup.procs"), "").unwrap();
        spec.cgroup = Some(cg.clone());
        s.spawn(&spec).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !marker.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(marker.exists(), "the program did not run");
        assert_eq!(
            std::fs::read_to_string(cg.join("cgroup.procs")).unwrap(),
            "0"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn log_files_rotate_once_at_their_cap() {
        let dir = std::env::temp_dir().join(format!("outpost-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("c.log");
        for _ in 0..10 {
            append_log(&log, 100, &[b'a'; 30]);
        }
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&log) <= 100, "{}", size(&log));
        assert!(size(&dir.join("c.log.1")) > 0 && size(&dir.join("c.log.1")) <= 100);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stdout_capture_is_capped() {
        let (s, rx) = supervisor();
        let mut spec = spec("sh", &["-c", "head -c 100000 /dev/zero"]);
        spec.stdout = Output::Capture { max: 1000 };
        s.spawn(&spec).unwrap();
        let exit = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(exit.stdout.len(), 1000);
        assert!(exit.stdout_truncated);
    }
}
