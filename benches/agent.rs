//! Side-by-side figures for the README's performance table.
//!
//! Runs the release binary against the test suite's fake manager and, where
//! a peer exists, Debian's `prometheus-node-exporter` with the same
//! collectors and a psutil heartbeat loop (`benches/psutil_heartbeat.py`,
//! under Debian's `/usr/bin/python3` with `python3-psutil`), then prints one
//! table. Nothing here asserts a speed: the figures are for people to read
//! (and for the README).
//!
//! The `handover` section (agent_update, PROTOCOL 4.3) updates the agent to
//! a second build of this crate with another version: `OUTPOST_UPDATE_PEER`
//! names one, else it is built here once (release, `OUTPOST_BUILD_VERSION`,
//! into `target/update-peer`).
//!
//! `cargo bench --bench agent` (about three minutes; `OUTPOST_BENCH_QUICK=1`
//! shortens the soak from 60 s to 10 s). A peer that is not installed is
//! named in its column and skipped.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, FakeManager, cpu_seconds, free_port, http_get};
use serde_json::json;

struct Row {
    figure: String,
    goal: String,
    measured: String,
    peer: String,
}

fn main() {
    // `cargo test --all-targets` runs bench binaries too; only `cargo bench`
    // (which passes --bench) should spend minutes here.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/agent: run with `cargo bench --bench agent`");
        return;
    }
    let quick = std::env::var_os("OUTPOST_BENCH_QUICK").is_some();
    // OUTPOST_BENCH_ONLY=dispatch (a part of a section name) runs one section.
    let only = std::env::var("OUTPOST_BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || name.contains(only.as_str());
    peer_versions();
    let mut rows = Vec::new();
    // The two sections with a psutil peer also answer to
    // OUTPOST_BENCH_ONLY=psutil: outpost and psutil side by side.
    if run("idle, psutil") {
        idle_and_heartbeat(&mut rows, if quick { 10 } else { 60 });
    }
    if run("heartbeat, psutil") {
        heartbeat_cycle(&mut rows);
    }
    if run("scrape") {
        scrape_cost(&mut rows);
    }
    if run("snapshot") {
        snapshot_cost(&mut rows);
    }
    if run("ready") {
        start_to_ready(&mut rows);
    }
    if run("dispatch") {
        dispatch_latency(&mut rows);
    }
    if run("system_info") {
        system_info_throughput(&mut rows);
    }
    if run("outbox") {
        outbox_rate(&mut rows);
    }
    if run("collectors") {
        collectors_steady_state(&mut rows, if quick { 10 } else { 30 });
    }
    if run("binary") {
        binary_size(&mut rows);
    }
    if run("handover") {
        handover(&mut rows);
    }

    println!();
    println!("| figure | goal | outpost | peer |");
    println!("|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} |",
            r.figure, r.goal, r.measured, r.peer
        );
    }
}

fn row(rows: &mut Vec<Row>, figure: &str, goal: &str, measured: String, peer: String) {
    eprintln!("{figure}: {measured} (peer: {peer})");
    rows.push(Row {
        figure: figure.into(),
        goal: goal.into(),
        measured,
        peer,
    });
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// VmRSS with its anonymous and file-backed parts (for the static binary the
/// file-backed pages are its own code: nothing else is mapped from a file).
fn rss_detail(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    };
    format!(
        "{:.1} MiB ({:.2} MiB anon, {:.2} MiB file-backed)",
        mib("VmRSS:"),
        mib("RssAnon:"),
        mib("RssFile:")
    )
}

/// The Debian version of each peer's package, on one line, so the README can
/// say what was compared.
fn peer_versions() {
    let version = |pkg: &str| {
        Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", pkg])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|| "not installed".into())
    };
    eprintln!(
        "peers: prometheus-node-exporter {}, python3-psutil {}",
        version("prometheus-node-exporter"),
        version("python3-psutil")
    );
}

struct NodeExporter {
    child: std::process::Child,
    addr: String,
}

impl NodeExporter {
    /// node_exporter with the collectors that match outpost's snapshot.
    fn start() -> Option<NodeExporter> {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("prometheus-node-exporter")
            .args([
                &format!("--web.listen-address={addr}"),
                "--collector.disable-defaults",
                "--collector.cpu",
                "--collector.meminfo",
                "--collector.loadavg",
                "--collector.filesystem",
                "--collector.diskstats",
                "--collector.netdev",
                "--collector.hwmon",
                "--collector.thermal_zone",
                "--collector.stat",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(NodeExporter { child, addr })
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a psutil peer column says when there is no psutil.
const PSUTIL_MISSING: &str = "psutil not installed: apt-get install python3-psutil";

/// The psutil peer: `benches/psutil_heartbeat.py` under a Python that can
/// import psutil (Debian's `/usr/bin/python3` first, then `python3` on PATH).
struct Psutil {
    python: &'static str,
    script: PathBuf,
}

impl Psutil {
    /// Looked for once; says so in one line when psutil is missing.
    fn find() -> Option<&'static Psutil> {
        static FOUND: std::sync::OnceLock<Option<Psutil>> = std::sync::OnceLock::new();
        FOUND
            .get_or_init(|| {
                let python = ["/usr/bin/python3", "python3"].into_iter().find(|py| {
                    Command::new(py)
                        .args(["-c", "import psutil"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
                });
                if python.is_none() {
                    eprintln!("psutil peer skipped: {PSUTIL_MISSING}");
                }
                python.map(|python| Psutil {
                    python,
                    script: Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("benches/psutil_heartbeat.py"),
                })
            })
            .as_ref()
    }

    /// The script against `manager`, with the key and a name of its own.
    fn command(&self, manager: &FakeManager, interval_s: &str) -> Command {
        let mut cmd = Command::new(self.python);
        cmd.arg(&self.script)
            .arg(&manager.base)
            .arg(interval_s)
            .env("OUTPOST_AGENT_KEY", common::KEY)
            .env("OUTPOST_AGENT_NAME", "psutil-peer")
            .stdin(Stdio::null());
        cmd
    }
}

/// The psutil heartbeat loop, running; killed on drop.
struct PsutilLoop {
    child: std::process::Child,
}

impl PsutilLoop {
    /// Heartbeats every `interval_s` to `manager`; `None` if there is no
    /// psutil or the first heartbeat does not arrive within 10 s.
    fn start(manager: &FakeManager, interval_s: &str) -> Option<PsutilLoop> {
        let child = Psutil::find()?
            .command(manager, interval_s)
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let peer = PsutilLoop { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while manager.seen_at("/v1/agent/heartbeat").is_empty() {
            if Instant::now() > deadline {
                eprintln!("psutil loop: no heartbeat within 10 s");
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(peer)
    }
}

impl Drop for PsutilLoop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last heartbeat body `manager` got, in bytes (re-encoded compactly, so
/// the agent's own whitespace does not count).
fn last_heartbeat_bytes(manager: &FakeManager) -> usize {
    manager
        .seen_at("/v1/agent/heartbeat")
        .last()
        .map(|s| serde_json::to_vec(&s.body).map(|b| b.len()).unwrap_or(0))
        .unwrap_or(0)
}

/// Outpost and, beside it, node_exporter and the psutil loop (each psutil
/// loop with a fake manager of its own), idle for `soak_s` seconds.
fn idle_and_heartbeat(rows: &mut Vec<Row>, soak_s: u64) {
    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, &[("OUTPOST_HEARTBEAT_INTERVAL", "1s")]);
    let node = NodeExporter::start();
    let psutil_manager = FakeManager::start();
    let psutil = PsutilLoop::start(&psutil_manager, "1");
    manager.wait_for("a heartbeat", Duration::from_secs(10), |s| {
        s.iter().any(|s| s.path == "/v1/agent/heartbeat")
    });
    let pid = agent.child.id();
    let cpu0 = cpu_seconds(pid);
    let beats0 = manager.seen_at("/v1/agent/heartbeat").len();
    let psutil_pid = psutil.as_ref().map(|p| p.child.id());
    let psutil_cpu0 = psutil_pid.map(cpu_seconds).unwrap_or(0.0);
    let psutil_beats0 = psutil_manager.seen_at("/v1/agent/heartbeat").len();
    std::thread::sleep(Duration::from_secs(soak_s));
    let cpu = cpu_seconds(pid) - cpu0;
    let beats = manager.seen_at("/v1/agent/heartbeat").len() - beats0;
    let psutil_cpu = psutil_pid.map(cpu_seconds).unwrap_or(0.0) - psutil_cpu0;
    let psutil_beats = psutil_manager.seen_at("/v1/agent/heartbeat").len() - psutil_beats0;
    let node_rss = node
        .as_ref()
        .map(|n| format!("node_exporter {:.1} MiB", rss_mib(n.child.id())))
        .unwrap_or_else(|| "node_exporter not installed".into());
    let (psutil_rss, psutil_cpu, psutil_body) = match psutil_pid {
        Some(p) => (
            format!("psutil loop {}", rss_detail(p)),
            format!(
                "psutil loop {:.3} ms ({psutil_beats} beats, {psutil_cpu:.2} s CPU)",
                psutil_cpu * 1000.0 / psutil_beats.max(1) as f64
            ),
            format!(
                "psutil loop {} bytes",
                last_heartbeat_bytes(&psutil_manager)
            ),
        ),
        None => (
            PSUTIL_MISSING.into(),
            PSUTIL_MISSING.into(),
            PSUTIL_MISSING.into(),
        ),
    };
    row(
        rows,
        &format!("idle RSS after {soak_s} s, 1 s heartbeats"),
        "≤ 3 MiB",
        rss_detail(pid),
        format!("{node_rss}; {psutil_rss}"),
    );
    row(
        rows,
        "agent CPU per heartbeat interval, whole process at idle (all threads)",
        "—",
        format!(
            "{:.3} ms ({beats} beats, {:.2} s CPU)",
            cpu * 1000.0 / beats.max(1) as f64,
            cpu
        ),
        psutil_cpu,
    );
    row(
        rows,
        "heartbeat body on this 2-core VM, all categories",
        "≤ 1.5 KB",
        format!("{} bytes", last_heartbeat_bytes(&manager)),
        psutil_body,
    );
    drop(psutil);
    drop(agent);
}

/// CPU time of the calling thread, in seconds (microsecond resolution).
fn thread_cpu() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_THREAD)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or(0.0)
}

/// One heartbeat cycle as the heartbeat thread does it, measured on this
/// thread alone: take a snapshot, build the body, POST it, read the answer.
fn heartbeat_cycle(rows: &mut Vec<Row>) {
    const N: u32 = 500;
    let manager = FakeManager::start();
    let http = ureq::Agent::new_with_defaults();
    let url = format!("{}/v1/agent/heartbeat", manager.base);
    let mut sampler = outpost::metrics::Sampler::new("/");
    sampler.sample();
    let mut snapshot_cpu = 0.0;
    let start = thread_cpu();
    for seq in 1..=N {
        let t = thread_cpu();
        let snapshot = sampler.sample();
        snapshot_cpu += thread_cpu() - t;
        let body = json!({
            "agent_id": "a-bench", "instance_id": "6f0c2c1e-2c55-4d0a-9b3e-6a1f7d1d2b11", "seq": seq,
            "sent_at": outpost::clock::now_rfc3339(), "uptime_s": 1.0,
            "metrics": snapshot.for_heartbeat(outpost::metrics::Categories::ALL),
            "tasks": [], "pending_updates": 0,
        });
        let bytes = serde_json::to_vec(&body).unwrap();
        let mut answer = http
            .post(&url)
            .header("X-Agent-Key", common::KEY)
            .header("Content-Type", "application/json")
            .send(&bytes[..])
            .unwrap();
        let _ = answer.body_mut().read_to_vec();
    }
    let total = (thread_cpu() - start) / f64::from(N);
    row(
        rows,
        "CPU per heartbeat cycle: snapshot + JSON + HTTP, measured on one thread",
        "≤ 0.5 ms",
        format!(
            "{:.3} ms: the snapshot (metrics thread, processes by state on) {:.3} ms, \
             JSON + HTTP (the heartbeat thread's part) {:.3} ms",
            total * 1000.0,
            snapshot_cpu * 1000.0 / f64::from(N),
            (total - snapshot_cpu / f64::from(N)) * 1000.0
        ),
        psutil_collection(&manager, N),
    );
}

/// The psutil loop's own cycle, `n` times back to back after one warm-up:
/// snapshot + JSON + urllib POST, its CPU (`time.process_time`, the whole
/// interpreter, which runs no other thread) divided by `n`.
fn psutil_collection(manager: &FakeManager, n: u32) -> String {
    let Some(psutil) = Psutil::find() else {
        return PSUTIL_MISSING.into();
    };
    let out = psutil
        .command(manager, "1")
        .args(["--count", &n.to_string()])
        .stderr(Stdio::inherit())
        .output();
    let figures = out.ok().and_then(|o| {
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        serde_json::from_str::<serde_json::Value>(text.lines().last()?).ok()
    });
    match figures {
        Some(f) => format!(
            "psutil loop {} ms, of which the snapshot {} ms ({n} collections; psutil {}, Python {})",
            f["cpu_ms"],
            f["snapshot_cpu_ms"],
            f["psutil"].as_str().unwrap_or("?"),
            f["python"].as_str().unwrap_or("?")
        ),
        None => "psutil loop failed (see its error above)".into(),
    }
}

fn scrape_cost(rows: &mut Vec<Row>) {
    const SCRAPES: usize = 3000;
    let agent = Agent::start(&[("OUTPOST_HEARTBEAT_INTERVAL", "1s")]);
    let addr = agent.http_addr();
    // Let the first snapshots land so /metrics carries node series.
    std::thread::sleep(Duration::from_millis(2500));
    let scrape = |addr: &str| -> f64 {
        let t = Instant::now();
        for _ in 0..SCRAPES {
            let (code, _) = http_get(addr, "/metrics");
            assert_eq!(code, 200);
        }
        t.elapsed().as_secs_f64()
    };
    let pid = agent.child.id();
    let cpu0 = cpu_seconds(pid);
    let wall = scrape(&addr);
    let cpu = cpu_seconds(pid) - cpu0;
    let size = http_get(&addr, "/metrics").1.len();
    let ours = cpu * 1000.0 / SCRAPES as f64;
    let peer = match NodeExporter::start() {
        Some(node) => {
            let n0 = cpu_seconds(node.child.id());
            scrape(&node.addr);
            let n = cpu_seconds(node.child.id()) - n0;
            let theirs = n * 1000.0 / SCRAPES as f64;
            format!(
                "node_exporter {theirs:.2} ms ({:.0}× outpost's); RSS after scrapes {:.1} MiB",
                theirs / ours,
                rss_mib(node.child.id())
            )
        }
        None => "node_exporter not installed".into(),
    };
    row(
        rows,
        "CPU per /metrics scrape (same collectors; node series read at scrape time)",
        "≥ 10× cheaper than node_exporter",
        format!(
            "{ours:.3} ms ({size} bytes, {:.2} ms wall each); RSS after scrapes {:.1} MiB",
            wall * 1000.0 / SCRAPES as f64,
            rss_mib(pid)
        ),
        peer,
    );
}

fn snapshot_cost(rows: &mut Vec<Row>) {
    const N: u32 = 2000;
    let mut sampler = outpost::metrics::Sampler::new("/");
    sampler.sample();
    let t = Instant::now();
    for _ in 0..N {
        std::hint::black_box(sampler.sample());
    }
    let sample = t.elapsed().as_secs_f64() / f64::from(N);
    // The files a snapshot reads, read and nothing else: the fixed ones,
    // each interface's flags, and every /proc/<pid>/stat (the listing too).
    let mut files: Vec<PathBuf> = [
        "/proc/stat",
        "/proc/meminfo",
        "/proc/loadavg",
        "/proc/self/mountinfo",
        "/proc/diskstats",
        "/proc/net/dev",
        "/proc/uptime",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
        files.extend(dir.flatten().map(|e| e.path().join("flags")));
    }
    let t = Instant::now();
    for _ in 0..N {
        for f in &files {
            std::hint::black_box(std::fs::read(f).ok());
        }
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            std::hint::black_box(std::fs::read(format!("/proc/{pid}/stat")).ok());
        }
    }
    let read = t.elapsed().as_secs_f64() / f64::from(N);
    let processes = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count();
    row(
        rows,
        "snapshot with processes by state vs reading the files it reads",
        "≤ 2×",
        format!(
            "{:.3} ms vs {:.3} ms ({:.1}×; {processes} processes)",
            sample * 1000.0,
            read * 1000.0,
            sample / read
        ),
        "—".into(),
    );
}

fn start_to_ready(rows: &mut Vec<Row>) {
    let mut times = Vec::new();
    for _ in 0..20 {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let state = common::TempDir::new("bench-ready");
        let t = Instant::now();
        let mut child = common::command(&[
            ("OUTPOST_STATE_DIR", state.path().to_str().unwrap()),
            ("OUTPOST_HTTP_ADDR", &addr),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                let _ = s.write_all(b"GET /ready HTTP/1.1\r\n\r\n");
                let mut buf = [0u8; 12];
                if std::io::Read::read(&mut s, &mut buf).is_ok_and(|n| n >= 12)
                    && &buf[9..12] == b"200"
                {
                    break;
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        let _ = child.kill();
        let _ = child.wait();
    }
    times.sort_by(f64::total_cmp);
    row(
        rows,
        "start → /ready answering, manager-less (median of 20)",
        "≤ 10 ms",
        format!("{:.1} ms (max {:.1} ms)", times[10], times[19]),
        "—".into(),
    );
}

/// A stand-in for iperf3 that notes the moment it was exec'd: the dispatch
/// latency ends at exec, not at whatever iperf3 does next.
fn exec_stamp_program(dir: &Path) -> Option<std::path::PathBuf> {
    let src = dir.join("stamp.c");
    let bin = dir.join("stamp");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <time.h>
int main(int argc, char **argv) {
    struct timespec t; clock_gettime(CLOCK_REALTIME, &t);
    char path[256]; snprintf(path, sizeof path, "%s.%s", argv[0], argc > 3 ? argv[3] : "x");
    FILE *f = fopen(path, "w"); if (!f) return 1;
    fprintf(f, "%lld\n", (long long)t.tv_sec * 1000000000LL + t.tv_nsec); fclose(f); return 0;
}"#,
    )
    .ok()?;
    let ok = Command::new("cc")
        .arg("-O2")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .status()
        .ok()?
        .success();
    ok.then_some(bin)
}

fn dispatch_latency(rows: &mut Vec<Row>) {
    let dir = common::TempDir::new("bench-dispatch");
    let Some(stamp) = exec_stamp_program(dir.path()) else {
        row(
            rows,
            "dispatch latency",
            "p50 ≤ 5 ms, p99 ≤ 20 ms",
            "no C compiler".into(),
            "—".into(),
        );
        return;
    };
    let manager = FakeManager::start();
    let _agent = Agent::with_manager(
        &manager,
        &[
            ("OUTPOST_IPERF3", stamp.to_str().unwrap()),
            ("OUTPOST_POLL_WAIT", "25s"),
        ],
    );
    manager.wait_for("registration", Duration::from_secs(10), |s| {
        s.iter().any(|s| s.path == "/v1/agent/tasks/claim")
    });
    let mut latencies = Vec::new();
    for i in 0..200u32 {
        let port = 20000 + i;
        // Wait for the long poll to be in place, as it is in steady state.
        std::thread::sleep(Duration::from_millis(20));
        let queued = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        manager.hand_out(json!({"id": format!("d-{i}"), "type": "iperf_server_start", "payload": {"port": port}}));
        let stamp_file = format!("{}.{port}", stamp.display());
        let deadline = Instant::now() + Duration::from_secs(10);
        let exec_ns: i128 = loop {
            if let Some(ns) = std::fs::read_to_string(&stamp_file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break ns;
            }
            if Instant::now() > deadline {
                break queued + 10_000_000_000;
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        latencies.push((exec_ns - queued) as f64 / 1e6);
    }
    latencies.sort_by(f64::total_cmp);
    let p = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    row(
        rows,
        "dispatch latency, queued at the manager → child exec'd (200 tasks, loopback)",
        "p50 ≤ 5 ms, p99 ≤ 20 ms",
        format!("p50 {:.2} ms, p99 {:.2} ms", p(0.5), p(0.99)),
        "seed agents poll every 5-10 s".into(),
    );
}

fn system_info_throughput(rows: &mut Vec<Row>) {
    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, &[]);
    manager.wait_for("the first claim", Duration::from_secs(10), |s| {
        s.iter().any(|s| s.path == "/v1/agent/tasks/claim")
    });
    let pid = agent.child.id();
    let cpu0 = cpu_seconds(pid);
    let t = Instant::now();
    for i in 0..1000 {
        manager.hand_out(json!({"id": format!("si-{i}"), "type": "system_info"}));
    }
    manager.wait_for("1000 results delivered", Duration::from_secs(300), |s| {
        s.iter()
            .filter(|s| s.path.ends_with("/status") && s.body["state"] == "succeeded")
            .count()
            >= 1000
    });
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    row(
        rows,
        "1,000 system_info tasks end to end",
        "—",
        format!(
            "{:.0} tasks/s; {:.2} ms agent CPU per task",
            1000.0 / wall,
            cpu * 1000.0 / 1000.0
        ),
        "—".into(),
    );
}

fn outbox_rate(rows: &mut Vec<Row>) {
    let dir = common::TempDir::new("bench-outbox");
    let outbox = outpost::outbox::Outbox::open(dir.path()).unwrap();
    let n = 500;
    let t = Instant::now();
    for i in 0..n {
        let update =
            outpost::update::Update::new(&format!("t-{i}"), 1, outpost::update::State::Succeeded);
        outbox.push(&update).unwrap();
    }
    let rate = f64::from(n) / t.elapsed().as_secs_f64();
    row(
        rows,
        "outbox: durable updates per second (fsync, this disk)",
        "—",
        format!("{rate:.0}/s"),
        "—".into(),
    );
}

/// An agent for 200 collectors: each a shell script, room for all of them,
/// 1 s heartbeats.
const MANY_COLLECTORS: &[(&str, &str)] = &[
    ("OUTPOST_COLLECTOR_CMD", "/bin/sh {config}"),
    ("OUTPOST_MAX_TASKS", "256"),
    ("OUTPOST_HEARTBEAT_INTERVAL", "1s"),
];

/// 200 supervised collectors (each a cheap `sleep`): the agent's CPU and
/// memory at steady state, heartbeat punctuality, and how long a
/// collector_start takes to be reported `running` beyond its 2 s hold.
fn collectors_steady_state(rows: &mut Vec<Row>, soak_s: u64) {
    const N: usize = 200;
    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, MANY_COLLECTORS);
    manager.wait_for("the first claim", Duration::from_secs(10), |s| {
        s.iter().any(|s| s.path == "/v1/agent/tasks/claim")
    });
    let mut queued = Vec::new();
    for i in 0..N {
        queued.push(Instant::now());
        manager.hand_out(json!({"id": format!("col-{i}"), "type": "collector_start",
            "payload": {"name": format!("c{i}"), "config": "exec sleep 3600\n"}}));
    }
    wait_running(&manager, N);
    let mut startup: Vec<f64> = (0..N)
        .filter_map(|i| {
            let path = format!("/v1/agent/tasks/col-{i}/status");
            let running = manager
                .seen()
                .into_iter()
                .find(|s| s.path == path && s.body["state"] == "running")?;
            Some((running.at - queued[i]).as_secs_f64() * 1000.0 - 2000.0)
        })
        .collect();
    startup.sort_by(f64::total_cmp);
    // Steady state: everything started, nothing changing.
    std::thread::sleep(Duration::from_secs(3));
    let pid = agent.child.id();
    let cpu0 = cpu_seconds(pid);
    let beats0 = manager.seen_at("/v1/agent/heartbeat").len();
    std::thread::sleep(Duration::from_secs(soak_s));
    let cpu = cpu_seconds(pid) - cpu0;
    let beats: Vec<Instant> = manager.seen_at("/v1/agent/heartbeat")[beats0..]
        .iter()
        .map(|s| s.at)
        .collect();
    let late_ms = beats
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0 - 1000.0)
        .fold(0.0_f64, f64::max);
    let body = manager
        .seen_at("/v1/agent/heartbeat")
        .last()
        .map(|s| serde_json::to_vec(&s.body).map(|b| b.len()).unwrap_or(0))
        .unwrap_or(0);
    row(
        rows,
        "200 collectors, steady state: agent CPU",
        "≤ 0.5 % of one core",
        format!(
            "{:.2} % ({:.2} s CPU in {soak_s} s)",
            cpu * 100.0 / soak_s as f64,
            cpu
        ),
        "—".into(),
    );
    row(
        rows,
        "200 collectors: agent RSS",
        "≤ 6 MiB",
        format!("{:.1} MiB", rss_mib(pid)),
        "—".into(),
    );
    row(
        rows,
        "200 collectors: heartbeat lateness (worst gap past 1 s)",
        "≤ 100 ms",
        format!(
            "{late_ms:.0} ms over {} beats; body {body} bytes",
            beats.len()
        ),
        "—".into(),
    );
    let p = |q: f64| startup[((startup.len() as f64 - 1.0) * q) as usize];
    row(
        rows,
        "collector_start claimed → running reported, minus the 2 s hold",
        "—",
        format!(
            "p50 {:.0} ms, p99 {:.0} ms (200 started at once)",
            p(0.5),
            p(0.99)
        ),
        "—".into(),
    );
}

fn binary_size(rows: &mut Vec<Row>) {
    let size = std::fs::metadata(common::binary())
        .map(|m| m.len())
        .unwrap_or(0);
    row(
        rows,
        "release binary (this bench's build; static build: .ci/static-build)",
        "≤ 4 MiB stripped static",
        format!("{:.2} MiB", size as f64 / 1048576.0),
        "node_exporter 1.5.0: /usr/bin size below".into(),
    );
    if let Ok(m) = std::fs::metadata("/usr/bin/prometheus-node-exporter") {
        eprintln!(
            "node_exporter binary: {:.1} MiB",
            m.len() as f64 / 1048576.0
        );
    }
}

/// The second build an update goes to: `OUTPOST_UPDATE_PEER`, else built.
fn update_peer() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("OUTPOST_UPDATE_PEER") {
        return Some(PathBuf::from(path));
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = manifest.join("target/update-peer");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "--bin",
            "outpost",
            "--target-dir",
        ])
        .arg(&target)
        .env("OUTPOST_BUILD_VERSION", "99.0.0")
        .current_dir(manifest)
        .status()
        .is_ok_and(|s| s.success());
    built.then(|| target.join("release/outpost"))
}

/// Handover time (exec → the new image serving /health and supervising
/// every child, as the new image logs it) and `agent_update` claimed →
/// `succeeded`, with 0 and 200 collectors.
fn handover(rows: &mut Vec<Row>) {
    let Some(peer) = update_peer() else {
        eprintln!("handover: no peer build; skipped");
        return;
    };
    let version = Command::new(&peer)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .replace("outpost ", "")
        })
        .unwrap_or_default();
    let sha = Command::new("sha256sum")
        .arg(&peer)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default();
    for n in [0usize, 200] {
        let manager = FakeManager::start();
        let agent = Agent::with_manager(&manager, MANY_COLLECTORS);
        for i in 0..n {
            manager.hand_out(json!({"id": format!("hc-{i}"), "type": "collector_start",
                "payload": {"name": format!("h{i}"), "config": "exec sleep 3600\n"}}));
        }
        wait_running(&manager, n);
        let queued = Instant::now();
        manager.hand_out(json!({"id": "hup", "type": "agent_update",
            "payload": {"path": peer, "sha256": sha, "version": version}}));
        manager.wait_state("hup", "succeeded", Duration::from_secs(120));
        let done = manager
            .seen_at("/v1/agent/tasks/hup/status")
            .into_iter()
            .find(|s| s.body["state"] == "succeeded")
            .map(|s| (s.at - queued).as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN);
        let out = agent.wait_output("after the exec", Duration::from_secs(30));
        let exec_ms = out
            .split("task(s) ")
            .filter_map(|rest| rest.split(" ms after the exec").next()?.parse::<f64>().ok())
            .last()
            .unwrap_or(f64::NAN);
        let goal = if n == 200 { "≤ 100 ms" } else { "—" };
        row(
            rows,
            &format!("handover: exec → new image serving and supervising, {n} collectors"),
            goal,
            format!("{exec_ms:.1} ms"),
            "—".into(),
        );
        row(
            rows,
            &format!("agent_update queued → `succeeded` received, {n} collectors"),
            "—",
            format!(
                "{done:.0} ms (a {:.1} MiB program: read, sha256, kept, tried, handed over, registered)",
                std::fs::metadata(&peer)
                    .map(|m| m.len() as f64 / 1048576.0)
                    .unwrap_or(0.0)
            ),
            "—".into(),
        );
    }
}

/// Waits until the manager has seen `n` updates to `running`.
fn wait_running(manager: &FakeManager, n: usize) {
    manager.wait_for(
        &format!("{n} tasks running"),
        Duration::from_secs(120),
        |s| {
            s.iter()
                .filter(|s| s.path.ends_with("/status") && s.body["state"] == "running")
                .count()
                >= n
        },
    );
}
