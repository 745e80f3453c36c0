//! The same agent built against two C libraries, side by side in one run:
//! idle RSS, whole-process CPU per heartbeat, CPU per `/metrics` scrape.
//! For the x86_64 musl build against the static glibc one (issue 15), but
//! any binaries of this machine's architecture do:
//!
//! ```sh
//! OUTPOST_BENCH_BINS=glibc=target/x86_64-unknown-linux-gnu/release/outpost,musl=target/cross-rustup/x86_64-unknown-linux-musl/release/outpost \
//!     cargo bench --bench libc
//! ```
//!
//! Each binary runs alone (never two at once), in two rounds A B A B so
//! that a change in the machine's load shows as a spread between rounds.
//! `OUTPOST_BENCH_QUICK=1` shortens the soaks. Nothing is asserted.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{FakeManager, KEY, TempDir, cpu_seconds, free_port, http_get};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/libc: run with `cargo bench --bench libc`");
        return;
    }
    let Ok(bins) = std::env::var("OUTPOST_BENCH_BINS") else {
        println!("benches/libc: set OUTPOST_BENCH_BINS=label=path,label=path");
        return;
    };
    let bins: Vec<(String, String)> = bins
        .split(',')
        .filter_map(|b| b.split_once('='))
        .map(|(l, p)| (l.to_owned(), p.to_owned()))
        .collect();
    let quick = std::env::var_os("OUTPOST_BENCH_QUICK").is_some();
    let soak = Duration::from_secs(if quick { 10 } else { 30 });
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    for round in 1..=2 {
        for (label, path) in &bins {
            let idle = idle(path, soak);
            let beat = heartbeat_cpu(path, soak);
            let scrape = scrape_cpu(path);
            let size = std::fs::metadata(path).map_or(0, |m| m.len());
            eprintln!("{label} round {round}: {idle}; {beat}; {scrape}");
            rows.push((
                format!("{label} (round {round})"),
                vec![
                    format!("{:.2} MiB", size as f64 / 1048576.0),
                    idle,
                    beat,
                    scrape,
                ],
            ));
        }
    }
    println!();
    println!(
        "| build | stripped size | idle RSS after {} s, 1 s heartbeats | CPU per heartbeat, whole process, 200 ms heartbeats | CPU per /metrics scrape, 3,000 scrapes |",
        soak.as_secs()
    );
    println!("|---|---|---|---|---|");
    for (label, cells) in rows {
        println!("| {label} | {} |", cells.join(" | "));
    }
}

struct Running {
    child: Child,
    addr: String,
    _state: TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// Starts `path` with a clean environment and waits for /health.
fn start(path: &str, env: &[(&str, &str)]) -> Running {
    let state = TempDir::new("bench-libc");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(path);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OUTPOST_STATE_DIR", state.path().join("state"))
        .env("OUTPOST_HTTP_ADDR", &addr)
        .env("OUTPOST_AGENT_NAME", "bench")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().expect("start the agent");
    let running = Running {
        child,
        addr,
        _state: state,
    };
    common::eventually("/health", Duration::from_secs(10), || {
        std::net::TcpStream::connect(&running.addr).is_ok()
            && http_get(&running.addr, "/health").0 == 200
    });
    running
}

fn with_manager(path: &str, manager: &FakeManager, interval: &str) -> Running {
    start(
        path,
        &[
            ("OUTPOST_MANAGER_URL", manager.base.as_str()),
            ("OUTPOST_AGENT_KEY", KEY),
            ("OUTPOST_HEARTBEAT_INTERVAL", interval),
        ],
    )
}

fn status_mib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn beats(manager: &FakeManager) -> usize {
    manager.seen_at("/v1/agent/heartbeat").len()
}

/// RSS after `soak` of 1 s heartbeats with a manager.
fn idle(path: &str, soak: Duration) -> String {
    let manager = FakeManager::start();
    let agent = with_manager(path, &manager, "1s");
    manager.wait_for("a heartbeat", Duration::from_secs(10), |s| {
        s.iter().any(|s| s.path == "/v1/agent/heartbeat")
    });
    std::thread::sleep(soak);
    let pid = agent.child.id();
    format!(
        "{:.2} MiB ({:.2} anon, {:.2} file)",
        status_mib(pid, "VmRSS:"),
        status_mib(pid, "RssAnon:"),
        status_mib(pid, "RssFile:")
    )
}

/// Whole-process CPU (every thread: snapshot, heartbeat, claim, responder)
/// divided by the heartbeats sent, at 200 ms heartbeats for `soak`.
fn heartbeat_cpu(path: &str, soak: Duration) -> String {
    let manager = FakeManager::start();
    let agent = with_manager(path, &manager, "200ms");
    manager.wait_for("a heartbeat", Duration::from_secs(10), |s| {
        s.iter().any(|s| s.path == "/v1/agent/heartbeat")
    });
    let pid = agent.child.id();
    let (cpu0, beats0) = (cpu_seconds(pid), beats(&manager));
    std::thread::sleep(soak);
    let cpu = cpu_seconds(pid) - cpu0;
    let n = beats(&manager) - beats0;
    format!(
        "{:.3} ms ({n} beats, {cpu:.2} s CPU)",
        cpu * 1000.0 / n.max(1) as f64
    )
}

/// CPU per `/metrics` scrape, manager-less, and the RSS after them.
fn scrape_cpu(path: &str) -> String {
    const SCRAPES: u32 = 3000;
    let agent = start(path, &[("OUTPOST_HEARTBEAT_INTERVAL", "1s")]);
    common::eventually("node series", Duration::from_secs(10), || {
        http_get(&agent.addr, "/metrics")
            .1
            .contains("outpost_node_")
    });
    let pid = agent.child.id();
    let cpu0 = cpu_seconds(pid);
    let t = Instant::now();
    for _ in 0..SCRAPES {
        assert_eq!(http_get(&agent.addr, "/metrics").0, 200);
    }
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    format!(
        "{:.3} ms ({:.2} ms wall); RSS after {:.2} MiB",
        cpu * 1000.0 / f64::from(SCRAPES),
        wall * 1000.0 / f64::from(SCRAPES),
        status_mib(pid, "VmRSS:")
    )
}
