//! Test harness: a fake manager (the other side of the protocol) on
//! 127.0.0.1:0 and a handle on the real `outpost` binary, started with a
//! clean environment in a temporary state directory.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const KEY: &str = "k3y-Sup3r-Secret-0f-edge17";

/// One request the fake manager received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path without the base prefix and without the query.
    pub path: String,
    pub query: String,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
    pub at: Instant,
}

impl Seen {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// What the fake manager answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// How the answer goes wrong on the wire, if it does.
    pub fault: Option<Fault>,
}

/// Ways an answer can break in transit (the chaos test's faults).
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// The connection is reset instead of answered.
    Reset,
    /// The answer comes after this long.
    Slow(Duration),
    /// The head promises the whole body; half of it comes, then the close.
    Truncated,
}

impl Reply {
    /// The agent saw a whole 2xx (or a 409) answer.
    pub fn is_clean_success(&self) -> bool {
        ((200..300).contains(&self.status) || self.status == 409)
            && matches!(self.fault, None | Some(Fault::Slow(_)))
    }
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: body.to_string(),
            fault: None,
        }
    }
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: String::new(),
            fault: None,
        }
    }
    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
    pub fn with_fault(mut self, fault: Fault) -> Reply {
        self.fault = Some(fault);
        self
    }
}

type Script = Box<dyn FnMut(&Seen) -> Reply + Send>;
/// Rewrites every answer, claims with tasks included, just before it goes.
type Chaos = Box<dyn FnMut(&Seen, Reply) -> Reply + Send>;

pub struct FakeManager {
    pub base: String,
    prefix: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<Script>>,
    chaos: Arc<Mutex<Chaos>>,
    queue: Arc<TaskQueue>,
}

/// Tasks waiting for a claim; a held long poll wakes when one is queued,
/// as a real manager's would.
#[derive(Default)]
struct TaskQueue {
    tasks: Mutex<std::collections::VecDeque<Value>>,
    queued: std::sync::Condvar,
}

/// The default manager: registers everyone as `a-test`, acknowledges the rest.
pub fn default_reply(seen: &Seen) -> Reply {
    match seen.path.as_str() {
        "/v1/agent/register" => Reply::json(200, serde_json::json!({"agent_id": "a-test"})),
        "/v1/agent/tasks/claim" => Reply::status(204),
        _ => Reply::json(200, serde_json::json!({})),
    }
}

impl FakeManager {
    pub fn start() -> FakeManager {
        FakeManager::with_prefix("")
    }

    /// A manager behind a path prefix (`https://host/outpost`).
    pub fn with_prefix(prefix: &str) -> FakeManager {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake manager");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Mutex<Script>> = Arc::new(Mutex::new(Box::new(default_reply)));
        let chaos: Arc<Mutex<Chaos>> = Arc::new(Mutex::new(Box::new(|_, reply| reply)));
        let queue = Arc::new(TaskQueue::default());
        {
            let seen = seen.clone();
            let script = script.clone();
            let chaos = chaos.clone();
            let prefix = prefix.to_string();
            let queue = queue.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let seen = seen.clone();
                    let script = script.clone();
                    let chaos = chaos.clone();
                    let prefix = prefix.clone();
                    let queue = queue.clone();
                    std::thread::spawn(move || {
                        serve(stream, &prefix, &seen, &script, &chaos, &queue)
                    });
                }
            });
        }
        FakeManager {
            base: format!("http://{addr}{prefix}"),
            prefix: prefix.to_string(),
            seen,
            script,
            chaos,
            queue,
        }
    }

    /// Queues a task for the next claim (the long poll answers at once).
    pub fn hand_out(&self, task: Value) {
        self.queue.tasks.lock().unwrap().push_back(task);
        self.queue.queued.notify_all();
    }

    /// Status update bodies of `task_id`, in arrival order.
    pub fn updates(&self, task_id: &str) -> Vec<Value> {
        let path = format!("/v1/agent/tasks/{task_id}/status");
        self.seen()
            .into_iter()
            .filter(|s| s.path == path)
            .map(|s| s.body)
            .collect()
    }

    /// Waits for an update of `task_id` in `state`; returns its body.
    pub fn wait_state(&self, task_id: &str, state: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(u) = self
                .updates(task_id)
                .into_iter()
                .find(|u| u["state"] == state)
            {
                return u;
            }
            if Instant::now() > deadline {
                let paths: Vec<String> = self
                    .seen()
                    .iter()
                    .map(|s| format!("{} {}?{}", s.method, s.path, s.query))
                    .collect();
                panic!(
                    "no {state} update for {task_id}; updates: {:#?}; requests: {paths:#?}",
                    self.updates(task_id)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn set_script(&self, script: impl FnMut(&Seen) -> Reply + Send + 'static) {
        *self.script.lock().unwrap() = Box::new(script);
    }

    /// Rewrites every answer from now on (`|_, reply| reply` undoes it). A
    /// claim whose tasks did not arrive cleanly puts them back in the
    /// queue, as a manager that believes the hand-out was lost would.
    pub fn set_chaos(&self, chaos: impl FnMut(&Seen, Reply) -> Reply + Send + 'static) {
        *self.chaos.lock().unwrap() = Box::new(chaos);
    }

    /// Tasks queued and not yet handed out.
    pub fn queued(&self) -> usize {
        self.queue.tasks.lock().unwrap().len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }

    /// Polls until `cond` holds for the requests seen so far.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&[Seen]) -> bool,
    ) -> Vec<Seen> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.seen();
            if cond(&seen) {
                return seen;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; seen: {:#?}", summary(&seen));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn summary(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect()
}

/// One request per connection: the answers say `Connection: close`.
fn serve(
    mut stream: TcpStream,
    prefix: &str,
    seen: &Mutex<Vec<Seen>>,
    script: &Mutex<Script>,
    chaos: &Mutex<Chaos>,
    queue: &TaskQueue,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (target.clone(), String::new()),
        };
        let path = path
            .strip_prefix(prefix)
            .unwrap_or("/wrong-prefix")
            .to_string();
        let request = Seen {
            method,
            path,
            query,
            headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            at: Instant::now(),
        };
        seen.lock().unwrap().push(request.clone());
        let mut handed = Vec::new();
        let reply = if request.path == "/v1/agent/tasks/claim" {
            // A long poll, held at most a second so tests stay quick.
            let max = request.body["max_tasks"].as_u64().unwrap_or(1) as usize;
            let deadline = Instant::now() + Duration::from_secs(1);
            let mut q = queue.tasks.lock().unwrap();
            loop {
                let n = q.len().min(max);
                if n > 0 {
                    let tasks: Vec<Value> = q.drain(..n).collect();
                    drop(q);
                    handed = tasks.clone();
                    break Reply::json(200, serde_json::json!({ "tasks": tasks }));
                }
                let now = Instant::now();
                if now > deadline {
                    drop(q);
                    break (script.lock().unwrap())(&request);
                }
                q = queue.queued.wait_timeout(q, deadline - now).unwrap().0;
            }
        } else {
            (script.lock().unwrap())(&request)
        };
        let meant = reply.body.clone();
        let reply = (chaos.lock().unwrap())(&request, reply);
        if !handed.is_empty() && (!reply.is_clean_success() || reply.body != meant) {
            let mut q = queue.tasks.lock().unwrap();
            for task in handed.into_iter().rev() {
                q.push_front(task);
            }
        }
        match reply.fault {
            Some(Fault::Reset) => {
                // SO_LINGER 0: the close sends a reset, not a FIN.
                let _ = nix::sys::socket::setsockopt(
                    &stream,
                    nix::sys::socket::sockopt::Linger,
                    &nix::libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    },
                );
                return;
            }
            Some(Fault::Slow(delay)) => std::thread::sleep(delay),
            Some(Fault::Truncated) | None => {}
        }
        let body = match reply.fault {
            Some(Fault::Truncated) => &reply.body.as_bytes()[..reply.body.len() / 2],
            _ => reply.body.as_bytes(),
        };
        let mut out = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\nContent-Type: application/json\r\nConnection: close\r\n",
            reply.status,
            reply.body.len()
        );
        for (k, v) in &reply.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let _ = stream
            .write_all(out.as_bytes())
            .and_then(|()| stream.write_all(body));
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "outpost-it-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The real binary, running.
pub struct Agent {
    pub child: Child,
    pub state: TempDir,
    output: Arc<Mutex<String>>,
    pub status: Option<ExitStatus>,
}

/// The binary under test: this build's, or `OUTPOST_TEST_BIN` (the
/// benches point it at the static release build).
pub fn binary() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("OUTPOST_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_outpost").to_string())
    })
}

/// A command for the binary with no ambient `OUTPOST_*` (or anything else)
/// from the test runner's environment.
pub fn command(env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.env_clear();
    for keep in ["PATH", "HOME"] {
        if let Ok(v) = std::env::var(keep) {
            cmd.env(keep, v);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Agent {
    /// Starts the agent with the responder on a free port and `env` on top.
    pub fn start(env: &[(&str, &str)]) -> Agent {
        Agent::start_in(TempDir::new("state"), env, &[])
    }

    pub fn with_manager(manager: &FakeManager, env: &[(&str, &str)]) -> Agent {
        let mut all = vec![
            ("OUTPOST_MANAGER_URL", manager.base.as_str()),
            ("OUTPOST_AGENT_KEY", KEY),
            ("OUTPOST_HEARTBEAT_INTERVAL", "200ms"),
        ];
        all.extend_from_slice(env);
        Agent::start(&all)
    }

    pub fn start_in(state: TempDir, env: &[(&str, &str)], args: &[&str]) -> Agent {
        let state_dir = state.path().join("state");
        let mut all = vec![
            ("OUTPOST_STATE_DIR", state_dir.to_str().unwrap()),
            ("OUTPOST_HTTP_ADDR", "127.0.0.1:0"),
            ("OUTPOST_AGENT_NAME", "edge-17"),
        ];
        all.extend_from_slice(env);
        let mut child = command(&all)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start outpost");
        let output = Arc::new(Mutex::new(String::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    output.lock().unwrap().push_str(&line);
                    line.clear();
                }
            });
        }
        Agent {
            child,
            state,
            output,
            status: None,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state.path().join("state")
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub fn wait_output(&self, what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output();
            if out.contains(what) {
                return out;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what:?} in output:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The responder's address, read from the start-up log line.
    pub fn http_addr(&self) -> String {
        let out = self.wait_output("health responder on http://", Duration::from_secs(10));
        let rest = out.split("health responder on http://").nth(1).unwrap();
        rest.split([';', ' ', '\n']).next().unwrap().to_string()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.http_addr(), path)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.status = Some(status);
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "outpost did not exit within {timeout:?}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    /// A clean stop, so that the agent's children go with it; SIGKILL only
    /// if it does not stop in time.
    fn drop(&mut self) {
        if self.status.is_none() {
            self.signal(nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A minimal GET over a fresh connection: status and body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    raw_request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

pub fn raw_request(addr: &str, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to responder");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Serves fixed bodies over plain HTTP on 127.0.0.1 (configs for download).
pub fn config_server(routes: Vec<(&'static str, u16, String)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let n = stream.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, body) = routes
                .iter()
                .find(|(p, _, _)| *p == path)
                .map(|(_, s, b)| (*s, b.clone()))
                .unwrap_or((404, String::new()));
            let extra = if (300..400).contains(&status) {
                format!("Location: {body}\r\n")
            } else {
                String::new()
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{}",
                body.len(),
                if extra.is_empty() { body.as_str() } else { "" }
            );
        }
    });
    format!("http://{addr}")
}

/// xorshift64: random enough for picking faults, sizes and moments, and
/// reproducible from a printed seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Resident memory of `pid` in KiB (VmRSS), 0 if it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of `pid` in seconds, 0 if it cannot be read (clock ticks:
/// 10 ms resolution, so a measurement must run long enough to make that
/// small).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rfind(')').map(|i| &stat[i + 2..]).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Children of `pid` that are zombies (state Z in /proc/<child>/stat).
pub fn zombie_children(pid: u32) -> Vec<i32> {
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&pid.to_string().as_str()) {
            zombies.push(child);
        }
    }
    zombies
}

/// Processes whose command line contains `needle`.
pub fn processes_matching(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(pid);
            }
        }
    }
    found
}

pub fn port_is_closed(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_err()
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn eventually(what: &str, timeout: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Fails with the Debian package to install when a tool is missing.
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: apt-get install {package} (the README's test command does)"
    );
}

/// `promtool check metrics` on `text`: the lint findings it printed (one
/// line each), or the error when promtool could not parse the text at all.
pub fn promtool_findings(text: &str) -> Result<Vec<String>, String> {
    use std::io::Write;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (.ci/deps installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Exit status 3 means lint findings only; anything else but 0 is an
    // error in the text itself.
    match out.status.code() {
        Some(0) | Some(3) => Ok(printed
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()),
        _ => Err(printed),
    }
}

/// promtool's one finding allowed on `/metrics`: its camelCase lint on
/// node_exporter's own `node_memory_*` names (node_exporter's output gets
/// exactly the same; the names are kept so dashboards work).
pub fn is_node_memory_camel_case_lint(finding: &str) -> bool {
    finding.starts_with("node_memory_")
        && finding.ends_with("metric names should be written in 'snake_case' not 'camelCase'")
}

/// `text` passes promtool but for [`is_node_memory_camel_case_lint`].
pub fn assert_promtool_clean(text: &str) {
    let findings = promtool_findings(text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
    let other: Vec<&String> = findings
        .iter()
        .filter(|f| !is_node_memory_camel_case_lint(f))
        .collect();
    assert!(other.is_empty(), "promtool findings {other:?} in\n{text}");
}
