//! sd_notify as systemd sees it: a real datagram socket (path and abstract
//! name) receiving what the real binary sends.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{Agent, FakeManager, Reply, TempDir};
use nix::sys::signal::Signal;

const SECOND: Duration = Duration::from_secs(1);

/// Collects datagrams on a background thread, with their arrival times.
struct Listener {
    messages: std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
}

impl Listener {
    fn new(socket: UnixDatagram) -> Listener {
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                sink.lock().unwrap().push((Instant::now(), text));
            }
        });
        Listener { messages }
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.messages.lock().unwrap().clone()
    }

    fn wait_for(&self, what: &str, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((at, _)) = self.all().into_iter().find(|(_, m)| m == what) {
                return at;
            }
            assert!(
                Instant::now() < deadline,
                "no {what:?}; got {:?}",
                self.texts()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn texts(&self) -> Vec<String> {
        self.all().into_iter().map(|(_, m)| m).collect()
    }
}

#[test]
fn ready_only_after_registration_then_watchdog_and_stopping() {
    let dir = TempDir::new("notify");
    let path = dir.path().join("notify.sock");
    let listener = Listener::new(UnixDatagram::bind(&path).unwrap());
    let manager = FakeManager::start();
    let registrations_allowed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let allowed = registrations_allowed.clone();
    manager.set_script(move |seen| {
        if seen.path == "/v1/agent/register" && !allowed.load(std::sync::atomic::Ordering::SeqCst) {
            return Reply::status(503).with_header("Retry-After", "1");
        }
        common::default_reply(seen)
    });
    let mut agent = Agent::with_manager(
        &manager,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    manager.wait_for("a refused registration", 10 * SECOND, |seen| {
        !seen.is_empty()
    });
    listener.wait_for("WATCHDOG=1", 5 * SECOND);
    assert!(
        !listener.texts().iter().any(|m| m == "READY=1"),
        "READY before registration: {:?}",
        listener.texts()
    );
    assert!(
        listener
            .texts()
            .iter()
            .any(|m| m.starts_with("STATUS=registering")),
        "{:?}",
        listener.texts()
    );
    registrations_allowed.store(true, std::sync::atomic::Ordering::SeqCst);
    listener.wait_for("READY=1", 10 * SECOND);
    let deadline = Instant::now() + 10 * SECOND;
    while !listener
        .texts()
        .iter()
        .any(|m| m.starts_with("STATUS=registered as a-test"))
    {
        assert!(Instant::now() < deadline, "{:?}", listener.texts());
        std::thread::sleep(Duration::from_millis(10));
    }

    // Pings keep coming at about half the watchdog period, manager or not.
    let window_start = Instant::now();
    std::thread::sleep(2 * SECOND); // observation window
    let pings = listener
        .all()
        .iter()
        .filter(|(at, m)| m == "WATCHDOG=1" && *at >= window_start)
        .count();
    assert!(
        (6..=14).contains(&pings),
        "{pings} pings in 2 s at a 200 ms cadence"
    );

    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(5 * SECOND).code(), Some(0));
    listener.wait_for("STOPPING=1", SECOND);
}

#[test]
fn abstract_socket_and_manager_less_ready_at_once() {
    let name = format!("outpost-test-{}", std::process::id());
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            name.as_bytes(),
        )
        .unwrap();
    let listener = Listener::new(UnixDatagram::bind_addr(&addr).unwrap());
    let socket = format!("@{name}");
    let mut agent = Agent::start(&[("NOTIFY_SOCKET", socket.as_str())]);
    listener.wait_for("READY=1", 5 * SECOND);
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(5 * SECOND).code(), Some(0));
    listener.wait_for("STOPPING=1", SECOND);
}

#[test]
fn no_notify_or_watchdog_variable_reaches_a_child() {
    let dir = TempDir::new("childenv");
    let path = dir.path().join("notify.sock");
    let _listener = Listener::new(UnixDatagram::bind(&path).unwrap());
    let out = dir.path().join("env.txt");
    let manager = FakeManager::start();
    let _agent = Agent::with_manager(
        &manager,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "10000000"),
            ("WATCHDOG_PID", "1"),
            ("LISTEN_FDS", "3"),
            ("OUTPOST_COLLECTOR_CMD", "/bin/sh {config}"),
        ],
    );
    // The collector is a shell script that writes out its environment.
    let script = format!("env > {}\nexec sleep 3600\n", out.display());
    manager.hand_out(serde_json::json!({"id": "env-1", "type": "collector_start", "payload": {"config": script}}));
    manager.wait_state("env-1", "running", 20 * SECOND);
    let env = std::fs::read_to_string(&out).unwrap();
    for var in [
        "NOTIFY_SOCKET",
        "WATCHDOG_",
        "LISTEN_FDS",
        "OUTPOST_AGENT_KEY",
        common::KEY,
    ] {
        assert!(!env.contains(var), "{var} reached the child:\n{env}");
    }
    assert!(env.contains("OUTPOST_TASK=env-1"), "{env}");
}
