//! iperf3: the argument vectors of section 4 and the reading of iperf3's
//! JSON into a result.
//!
//! Argument vectors are built from checked payloads only, and every value
//! follows its option as a separate argument, so nothing a manager sends can
//! become an option of its own.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::payload::{IperfClient, IperfServer, Kind};
use super::{Ending, Tasks};
use crate::update::{ErrorKind, State};

/// Largest iperf3 JSON kept: a day-long run with per-second intervals is
/// tens of MiB; past this the run fails with a clear error instead of
/// taking the device's memory.
pub const MAX_JSON_BYTES: usize = 16 * 1024 * 1024;

/// How long a server's test may go without data received, or without its
/// sent data acknowledged, before iperf3 gives the test up. Without it a
/// client that vanishes mid-test (a frozen or unplugged host) leaves the
/// server "busy running a test" for good: reverse tests never time out on
/// their own (iperf3 issue 1997). Long enough for any real test's gaps.
pub const SERVER_STALL: Duration = Duration::from_secs(30);

/// `stall_guard`: the iperf3 in use knows `--rcv-timeout` and
/// `--snd-timeout` (3.11 and later); older ones refuse them.
pub fn server_args(s: &IperfServer, stall_guard: bool) -> Vec<String> {
    let mut args = vec!["-s".to_string(), "-p".into(), s.port.to_string()];
    if stall_guard {
        let millis = SERVER_STALL.as_millis().to_string();
        args.extend(["--rcv-timeout".into(), millis.clone()]);
        args.extend(["--snd-timeout".into(), millis]);
    }
    if let Some(bind) = s.bind {
        args.push("-B".into());
        args.push(bind.to_string());
    }
    if s.one_off {
        args.push("-1".into());
    }
    args
}

/// iperf3 3.11 brought `--rcv-timeout` and `--snd-timeout`.
pub fn knows_stall_timeouts(version: Option<&str>) -> bool {
    let Some(version) = version else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= (3, 11),
        _ => false,
    }
}

pub fn client_args(c: &IperfClient) -> Vec<String> {
    let mut args = vec![
        "-c".to_string(),
        c.server.clone(),
        "-p".into(),
        c.port.to_string(),
    ];
    if c.udp {
        args.push("-u".into());
    }
    if let Some(bw) = &c.bandwidth {
        args.push("-b".into());
        args.push(bw.clone());
    }
    args.extend([
        "-P".into(),
        c.parallel.to_string(),
        "-t".into(),
        c.time.to_string(),
    ]);
    if c.reverse {
        args.push("-R".into());
    }
    if c.bidir {
        args.push("--bidir".into());
    }
    if c.omit > 0 {
        args.push("-O".into());
        args.push(c.omit.to_string());
    }
    args.push("-J".into());
    args
}

/// What a finished client run amounts to.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Succeeded(Value),
    /// `(error kind, message)`.
    Failed(ErrorKind, String),
}

/// Reads a client run's output. iperf3 3.12 exits 0 on a refused
/// connection under `-J`, so the JSON's own `error` field counts as much as
/// the exit status.
pub fn client_outcome(
    exit_code: Option<i32>,
    stdout: &[u8],
    truncated: bool,
    stderr_tail: &str,
) -> Outcome {
    if truncated {
        return Outcome::Failed(
            ErrorKind::OutputTooLarge,
            format!("iperf3 wrote more than {MAX_JSON_BYTES} bytes of JSON"),
        );
    }
    let parsed: Option<Value> = serde_json::from_slice(stdout).ok();
    let error = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(Value::as_str)
        .map(str::to_string);
    match (exit_code, parsed, error) {
        (_, _, Some(error)) => {
            let kind = if exit_code == Some(0) {
                ErrorKind::Iperf3Error
            } else {
                ErrorKind::ExitNonzero
            };
            Outcome::Failed(kind, error)
        }
        (Some(0), Some(json), None) => {
            let summary = summarise(&json);
            Outcome::Succeeded(json!({ "iperf3": json, "summary": summary }))
        }
        (Some(0), None, None) => Outcome::Failed(
            ErrorKind::InvalidOutput,
            "iperf3 exited 0 but its output is not JSON".into(),
        ),
        (code, _, None) => {
            let last = stderr_tail
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            let status = code
                .map(|c| format!("status {c}"))
                .unwrap_or_else(|| "a signal".into());
            Outcome::Failed(
                ErrorKind::ExitNonzero,
                format!("iperf3 exited with {status}: {last}")
                    .trim_end_matches(": ")
                    .to_string(),
            )
        }
    }
}

/// The line of iperf3's standard error that says what went wrong: the last
/// one mentioning an error, else the last non-empty one.
pub fn last_error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| l.contains("error"))
        .or(lines.last())
        .map(|l| l.to_string())
        .unwrap_or_default()
}

/// The `summary` of section 4; a field that does not apply is null.
pub fn summarise(report: &Value) -> Value {
    let end = &report["end"];
    let udp = report["start"]["test_start"]["protocol"] == "UDP" || end.get("sum").is_some();
    let bps = |v: &Value| v["bits_per_second"].as_f64();
    let sent = bps(&end["sum_sent"]).or_else(|| bps(&end["sum"]));
    let received = bps(&end["sum_received"]).or_else(|| bps(&end["sum"]));
    let (retransmits, jitter, lost) = if udp {
        let receiver = if end["sum_received"].is_object() {
            &end["sum_received"]
        } else {
            &end["sum"]
        };
        (
            Value::Null,
            receiver["jitter_ms"]
                .as_f64()
                .map(Value::from)
                .unwrap_or(Value::Null),
            receiver["lost_percent"]
                .as_f64()
                .map(Value::from)
                .unwrap_or(Value::Null),
        )
    } else {
        (
            end["sum_sent"]["retransmits"]
                .as_u64()
                .map(Value::from)
                .unwrap_or(Value::Null),
            Value::Null,
            Value::Null,
        )
    };
    json!({
        "sent_bps": sent,
        "received_bps": received,
        "retransmits": retransmits,
        "jitter_ms": jitter,
        "lost_percent": lost,
    })
}

// ---------------------------------------------------------------------------
// Server readiness: `running` once the port accepts connections.

/// How long an iperf3 server has to start listening.
pub(super) const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a starting server's listening socket is looked for.
pub(super) const SERVER_PROBE_EVERY: Duration = Duration::from_millis(10);

impl Tasks {
    /// A server is `running` once its port accepts connections: once a
    /// socket of its process listens on the port. Looking it up in /proc
    /// instead of connecting matters: iperf3 takes any connection for a
    /// test, and a probe would use up a `one_off` server.
    pub(super) fn probe_servers(&mut self) {
        let now = Instant::now();
        let starting: Vec<(String, i32, u16, Instant)> = self
            .live
            .values()
            .filter_map(|l| match (&l.task.kind, l.process, l.ready_by) {
                (Kind::IperfServer(s), Some(p), Some(by)) if l.ending.is_none() => {
                    Some((l.task.id.clone(), p.pid, s.port, by))
                }
                _ => None,
            })
            .collect();
        for (id, pid, port, by) in starting {
            if is_listening(Path::new("/"), pid, port) {
                if let Some(l) = self.live.get_mut(&id) {
                    l.ready_by = None;
                }
                self.emit_for(&id, State::Running, |u| {
                    u.pid = Some(pid);
                    u.result = Some(json!({ "port": port }));
                });
            } else if now >= by {
                log::warn!(task_id = id.as_str(); "iperf3 server {id} did not listen on port {port} within {}s", SERVER_READY_TIMEOUT.as_secs());
                self.stop_task(&id, Ending::Timeout);
            }
        }
    }
}

/// True when a socket of `pid` is listening on TCP `port` (IPv4 or IPv6),
/// read from `<root>/proc/net/tcp{,6}` and `<root>/proc/<pid>/fd`.
pub fn is_listening(root: &Path, pid: i32, port: u16) -> bool {
    let mut inodes = HashSet::new();
    for file in ["proc/net/tcp", "proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(root.join(file)) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(root.join(format!("proc/{pid}/fd"))) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .ok()
            .and_then(|target| {
                let t = target.to_string_lossy().into_owned();
                t.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            })
            .is_some_and(|inode| inodes.contains(&inode))
    })
}

/// Inodes of sockets in state LISTEN (0A) on `port`, from /proc/net/tcp text.
pub fn listening_inodes(text: &str, port: u16) -> Vec<u64> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *fields.get(3)? == "0A").then(|| fields.get(9)?.parse().ok())?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/iperf3/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn client_argv_keeps_values_apart_from_options() {
        let c = IperfClient {
            server: "10.0.0.2".into(),
            port: 5202,
            udp: true,
            parallel: 4,
            time: 30,
            bandwidth: Some("100M".into()),
            reverse: true,
            bidir: false,
            omit: 2,
        };
        assert_eq!(
            client_args(&c),
            [
                "-c", "10.0.0.2", "-p", "5202", "-u", "-b", "100M", "-P", "4", "-t", "30", "-R",
                "-O", "2", "-J"
            ]
        );
        let s = IperfServer {
            port: 5300,
            udp: false,
            bind: Some("127.0.0.1".parse().unwrap()),
            one_off: true,
        };
        assert_eq!(
            server_args(&s, false),
            ["-s", "-p", "5300", "-B", "127.0.0.1", "-1"]
        );
        assert_eq!(
            server_args(&s, true)[3..7],
            ["--rcv-timeout", "30000", "--snd-timeout", "30000"]
        );
    }

    #[test]
    fn picks_the_error_line() {
        let tail = "iperf3: error - unable to start listener for connections: Address already in use\niperf3: exiting\n";
        assert!(last_error_line(tail).ends_with("Address already in use"));
        assert_eq!(last_error_line("just this\n\n"), "just this");
        assert_eq!(last_error_line(""), "");
    }

    #[test]
    fn tcp_summary_from_a_real_run() {
        let Outcome::Succeeded(result) =
            client_outcome(Some(0), &fixture("tcp-3.12.json"), false, "")
        else {
            panic!("tcp run should succeed");
        };
        let s = &result["summary"];
        assert!(s["sent_bps"].as_f64().unwrap() > 1e9);
        assert!(s["received_bps"].as_f64().unwrap() > 1e9);
        assert_eq!(s["retransmits"], 0);
        assert!(s["jitter_ms"].is_null() && s["lost_percent"].is_null());
        assert!(result["iperf3"]["end"].is_object());
    }

    #[test]
    fn udp_summary_from_a_real_run() {
        let Outcome::Succeeded(result) =
            client_outcome(Some(0), &fixture("udp-3.12.json"), false, "")
        else {
            panic!("udp run should succeed");
        };
        let s = &result["summary"];
        assert!((s["sent_bps"].as_f64().unwrap() - 10_222_062.0).abs() < 1.0);
        assert!(s["jitter_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(s["lost_percent"], 0.0);
        assert!(s["retransmits"].is_null());
    }

    #[test]
    fn a_refused_connection_fails_with_iperf3s_words_despite_exit_0() {
        assert_eq!(
            client_outcome(Some(0), &fixture("refused-3.12.json"), false, ""),
            Outcome::Failed(
                ErrorKind::Iperf3Error,
                "unable to connect to server: Connection refused".into()
            )
        );
        assert_eq!(
            client_outcome(Some(1), b"", false, "iperf3: error - boom\n"),
            Outcome::Failed(
                ErrorKind::ExitNonzero,
                "iperf3 exited with status 1: iperf3: error - boom".into()
            )
        );
        assert!(matches!(
            client_outcome(Some(0), b"{", false, ""),
            Outcome::Failed(ErrorKind::InvalidOutput, _)
        ));
        assert!(matches!(
            client_outcome(Some(0), b"{}", true, ""),
            Outcome::Failed(ErrorKind::OutputTooLarge, _)
        ));
    }

    #[test]
    fn finds_listening_sockets_in_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1451 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(listening_inodes(text, 5201), [31337]);
        assert!(listening_inodes(text, 5202).is_empty());
    }

    #[test]
    fn stall_guard_needs_3_11() {
        assert!(!knows_stall_timeouts(Some("3.9")));
        assert!(!knows_stall_timeouts(Some("3.10.1")));
        assert!(knows_stall_timeouts(Some("3.11")));
        assert!(knows_stall_timeouts(Some("3.12")));
        assert!(knows_stall_timeouts(Some("4.0")));
        assert!(!knows_stall_timeouts(None));
        assert!(!knows_stall_timeouts(Some("garbage")));
    }
}
