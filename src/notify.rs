//! Readiness, status and watchdog notifications to the service manager
//! (the `sd_notify(3)` protocol), hand-rolled.
//!
//! Why not a crate or libsystemd: the protocol is one datagram of
//! `KEY=value` lines sent to the socket named by `NOTIFY_SOCKET`; doing it
//! with `std` keeps the binary static (no libsystemd to link), adds no
//! dependency, and keeps the behaviour small enough to test here: the tests
//! bind a real datagram socket and read what the agent sends.
//!
//! What the unit relies on (`systemd/outpost.service`): `Type=notify` gets
//! `READY=1` once this instance has registered with the manager (at once in
//! manager-less mode); `WatchdogSec=` gets `WATCHDOG=1` every
//! [`Notifier::watchdog_interval`] (half the period), sent by the main loop
//! only while every worker thread keeps its progress promise, so a wedged
//! thread gets the agent restarted while a manager outage does not;
//! `STOPPING=1` on SIGTERM; `STATUS=` lines show in `systemctl status`.
//!
//! Everything here is best effort: when `NOTIFY_SOCKET` is unset (run by hand,
//! in a container, in tests) every call is a no-op. A send never blocks (the
//! socket is non-blocking) and never panics; the first failure is logged at
//! debug level, later ones are silent.
//!
//! The variables are read once at start. They never reach child processes:
//! the supervisor builds each child's environment from scratch.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The variables that must never reach a child process.
pub const NOTIFY_VARS: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// Sends notifications to the service manager; a no-op when not run by one.
///
/// `Notifier` is `Send + Sync`: share one (e.g. in an `Arc`) between threads.
#[derive(Debug)]
pub struct Notifier {
    /// Where to send, and the socket to send from; `None` when disabled.
    target: Option<Target>,
    /// Half of `WATCHDOG_USEC`, when the watchdog is on for this process.
    watchdog_interval: Option<Duration>,
    /// Set after the first failed send has been logged.
    failure_logged: AtomicBool,
}

#[derive(Debug)]
struct Target {
    /// As given in `NOTIFY_SOCKET`, for log messages.
    name: String,
    addr: SocketAddr,
    socket: UnixDatagram,
}

/// systemd's `USEC_INFINITY`: never a valid watchdog period.
const USEC_INFINITY: u64 = u64::MAX;

impl Notifier {
    /// Reads `NOTIFY_SOCKET` (`/path` or `@abstract`), `WATCHDOG_USEC` and
    /// `WATCHDOG_PID` once at start. A variable that is not valid UTF-8 is
    /// taken as unset.
    pub fn from_env() -> Notifier {
        let var = |name: &str| std::env::var_os(name).and_then(|v| v.into_string().ok());
        let socket = var("NOTIFY_SOCKET");
        let usec = var("WATCHDOG_USEC");
        let pid = var("WATCHDOG_PID");
        Notifier::from_vars(socket.as_deref(), usec.as_deref(), pid.as_deref())
    }

    /// Builds a notifier from the values of the three variables (testable
    /// form of [`Notifier::from_env`]).
    pub fn from_vars(
        notify_socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
    ) -> Notifier {
        Notifier {
            target: notify_socket.and_then(Target::open),
            watchdog_interval: watchdog_interval(watchdog_usec, watchdog_pid),
            failure_logged: AtomicBool::new(false),
        }
    }

    /// True when `NOTIFY_SOCKET` named a usable socket address.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// `READY=1`: start-up is finished.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// `STATUS=...`: a one-line status shown by `systemctl status`.
    /// Line breaks (and NUL bytes) are replaced by spaces.
    pub fn status(&self, line: &str) {
        let clean: String = line
            .trim()
            .chars()
            .map(|c| {
                if matches!(c, '\n' | '\r' | '\0') {
                    ' '
                } else {
                    c
                }
            })
            .collect();
        self.send(&format!("STATUS={clean}"));
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// `WATCHDOG=1`: the keep-alive ping.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// Per `sd_watchdog_enabled(3)`: `Some(half of WATCHDOG_USEC)` when it is
    /// set, valid (a positive integer, not infinity) and `WATCHDOG_PID` is
    /// absent or equals `getpid()`; else `None`. Ping at least this often.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_interval
    }

    fn send(&self, message: &str) {
        let Some(target) = &self.target else {
            return;
        };
        match target.socket.send_to_addr(message.as_bytes(), &target.addr) {
            Ok(_) => {}
            Err(err) => {
                if !self.failure_logged.swap(true, Ordering::Relaxed) {
                    log::debug!(
                        "sd_notify to {} failed (further failures not logged): {err}",
                        target.name
                    );
                }
            }
        }
    }
}

impl Target {
    fn open(name: &str) -> Option<Target> {
        let addr = match parse_address(name) {
            Ok(addr) => addr,
            Err(why) => {
                log::debug!("NOTIFY_SOCKET={name:?} ignored: {why}");
                return None;
            }
        };
        let socket = match UnixDatagram::unbound().and_then(|s| {
            s.set_nonblocking(true)?;
            Ok(s)
        }) {
            Ok(socket) => socket,
            Err(err) => {
                log::debug!("sd_notify disabled: cannot create a datagram socket: {err}");
                return None;
            }
        };
        Some(Target {
            name: name.to_owned(),
            addr,
            socket,
        })
    }
}

fn parse_address(name: &str) -> Result<SocketAddr, String> {
    if name.starts_with('/') {
        SocketAddr::from_pathname(name).map_err(|e| e.to_string())
    } else if let Some(abstract_name) = name.strip_prefix('@') {
        abstract_address(abstract_name)
    } else {
        Err("neither an absolute path nor an @abstract name".to_owned())
    }
}

#[cfg(target_os = "linux")]
fn abstract_address(name: &str) -> Result<SocketAddr, String> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name.as_bytes()).map_err(|e| e.to_string())
}

#[cfg(not(target_os = "linux"))]
fn abstract_address(_name: &str) -> Result<SocketAddr, String> {
    Err("abstract socket names exist on Linux only".to_owned())
}

fn watchdog_interval(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 || usec == USEC_INFINITY {
        return None;
    }
    if let Some(pid) = pid {
        let pid: u32 = pid.trim().parse().ok()?;
        if pid != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicUsize;

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    fn unique(tag: &str) -> String {
        format!(
            "outpost-notify-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> TempDir {
            let dir = std::env::temp_dir().join(unique("dir"));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn receiver_timeout(sock: &UnixDatagram) {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn assert_all_messages(notifier: &Notifier, sock: &UnixDatagram) {
        notifier.ready();
        assert_eq!(recv(sock), "READY=1");
        notifier.status("registered; 3 tasks\nrunning\r\n");
        assert_eq!(recv(sock), "STATUS=registered; 3 tasks running");
        notifier.watchdog();
        assert_eq!(recv(sock), "WATCHDOG=1");
        notifier.stopping();
        assert_eq!(recv(sock), "STOPPING=1");
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = TempDir::new();
        let path = dir.0.join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        receiver_timeout(&sock);
        let notifier = Notifier::from_vars(path.to_str(), None, None);
        assert!(notifier.is_enabled());
        assert_all_messages(&notifier, &sock);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = unique("abstract");
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        receiver_timeout(&sock);
        let notifier = Notifier::from_vars(Some(&format!("@{name}")), None, None);
        assert!(notifier.is_enabled());
        assert_all_messages(&notifier, &sock);
    }

    #[test]
    fn disabled_without_a_usable_socket_name() {
        for value in [None, Some(""), Some("relative/path"), Some("notify")] {
            let notifier = Notifier::from_vars(value, None, None);
            assert!(!notifier.is_enabled(), "{value:?}");
            // No-ops, no panic.
            notifier.ready();
            notifier.status("x");
            notifier.watchdog();
            notifier.stopping();
        }
    }

    #[test]
    fn send_failures_neither_panic_nor_block() {
        let dir = TempDir::new();
        let path = dir.0.join("nobody-listens");
        let notifier = Notifier::from_vars(path.to_str(), None, None);
        assert!(notifier.is_enabled());
        for _ in 0..3 {
            notifier.ready();
            notifier.watchdog();
        }
        assert!(notifier.failure_logged.load(Ordering::Relaxed));
    }

    #[test]
    fn full_receive_queue_does_not_block() {
        let dir = TempDir::new();
        let path = dir.0.join("never-read");
        let _sock = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::from_vars(path.to_str(), None, None);
        let started = std::time::Instant::now();
        // Far more than a default receive queue holds.
        for _ in 0..5000 {
            notifier.status(&"x".repeat(1000));
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(notifier.failure_logged.load(Ordering::Relaxed));
    }

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec() {
        let n = Notifier::from_vars(None, Some("30000000"), None);
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
        let me = std::process::id().to_string();
        let n = Notifier::from_vars(None, Some("3"), Some(&me));
        assert_eq!(n.watchdog_interval(), Some(Duration::from_micros(1)));
    }

    #[test]
    fn watchdog_off_when_unset_invalid_or_for_another_pid() {
        let other = (std::process::id() + 1).to_string();
        let cases: &[(Option<&str>, Option<&str>)] = &[
            (None, None),
            (Some(""), None),
            (Some("0"), None),
            (Some("-5"), None),
            (Some("30s"), None),
            (Some("abc"), None),
            (Some("18446744073709551615"), None),
            (Some("99999999999999999999999"), None),
            (Some("30000000"), Some(other.as_str())),
            (Some("30000000"), Some("not-a-pid")),
            (Some("30000000"), Some("")),
        ];
        for (usec, pid) in cases {
            let n = Notifier::from_vars(None, *usec, *pid);
            assert_eq!(n.watchdog_interval(), None, "{usec:?} {pid:?}");
        }
    }

    #[test]
    fn notifier_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Notifier>();
    }
}
