//! outpost's `/metrics` side by side with Debian's prometheus-node-exporter
//! on the same machine (protocol section 7.1): the same series names, label
//! names and, read together, values.
//!
//! Scrapes are taken node_exporter, outpost, node_exporter, one after the
//! other. A counter read by outpost in between must then lie between
//! node_exporter's two readings (what can change between the scrapes is
//! exactly what happened between them), with the scrape window added for
//! CPU seconds (per-CPU iowait and idle may step back a little) and the
//! heartbeat interval for the parts outpost reads on its metrics thread.
//! Gauges get a small relative tolerance.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{
    Agent, assert_promtool_clean, free_port, http_get, is_node_memory_camel_case_lint,
    promtool_findings, raw_request, require_tool,
};

const SECOND: Duration = Duration::from_secs(1);

/// The collectors outpost stands in for (and the benches compare).
const COLLECTORS: &[&str] = &[
    "cpu",
    "meminfo",
    "loadavg",
    "filesystem",
    "diskstats",
    "netdev",
    "hwmon",
    "thermal_zone",
    "stat",
    "time",
    "uname",
];

/// Section 7.1's series, every one of which outpost must expose on this
/// machine (temperatures only where there are sensors).
const SECTION_7_1: &[&str] = &[
    "node_cpu_seconds_total",
    "node_memory_MemTotal_bytes",
    "node_memory_MemFree_bytes",
    "node_memory_MemAvailable_bytes",
    "node_memory_Buffers_bytes",
    "node_memory_Cached_bytes",
    "node_memory_SwapTotal_bytes",
    "node_memory_SwapFree_bytes",
    "node_load1",
    "node_load5",
    "node_load15",
    "node_filesystem_size_bytes",
    "node_filesystem_free_bytes",
    "node_filesystem_avail_bytes",
    "node_filesystem_files",
    "node_filesystem_files_free",
    "node_filesystem_readonly",
    "node_disk_reads_completed_total",
    "node_disk_writes_completed_total",
    "node_disk_read_bytes_total",
    "node_disk_written_bytes_total",
    "node_disk_io_time_seconds_total",
    "node_network_receive_bytes_total",
    "node_network_transmit_bytes_total",
    "node_network_receive_packets_total",
    "node_network_transmit_packets_total",
    "node_network_receive_errs_total",
    "node_network_transmit_errs_total",
    "node_network_receive_drop_total",
    "node_network_transmit_drop_total",
    "node_procs_running",
    "node_procs_blocked",
    "node_forks_total",
    "node_context_switches_total",
    "node_hwmon_temp_celsius",
    "node_thermal_zone_temp",
    "node_boot_time_seconds",
    "node_time_seconds",
    "node_uname_info",
];

/// One exposition: family types, and samples by name then label set.
#[derive(Default)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, BTreeMap<Vec<(String, String)>, f64>>,
    /// Wall-clock seconds just before and just after the request.
    before: f64,
    after: f64,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `GET /metrics` as HTTP/1.0, so node_exporter (Go) answers without
/// chunked encoding.
fn get_metrics(addr: &str) -> (u16, String) {
    raw_request(addr, b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
}

fn scrape(addr: &str) -> (String, Scrape) {
    let before = now();
    let (code, body) = get_metrics(addr);
    let after = now();
    assert_eq!(code, 200, "{addr}: {body}");
    let mut s = parse(&body);
    s.before = before;
    s.after = after;
    (body, s)
}

fn parse(text: &str) -> Scrape {
    let mut s = Scrape::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            s.types.insert(name.into(), kind.into());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap();
        let name = &line[..name_end];
        let mut labels = Vec::new();
        let mut rest = &line[name_end..];
        if let Some(mut inner) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = inner.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = inner.find('=').unwrap();
                let label = inner[..eq].trim_start_matches(',').to_string();
                let mut value = String::new();
                let mut chars = inner[eq + 2..].char_indices();
                let close = loop {
                    match chars.next().unwrap() {
                        (_, '\\') => match chars.next().unwrap().1 {
                            'n' => value.push('\n'),
                            c => value.push(c),
                        },
                        (i, '"') => break i,
                        (_, c) => value.push(c),
                    }
                };
                inner = &inner[eq + 2 + close + 1..];
                inner = inner.strip_prefix(',').unwrap_or(inner);
                // Prometheus treats an empty label value as no label.
                if !value.is_empty() {
                    labels.push((label, value));
                }
            }
        }
        let value: f64 = rest.trim().split(' ').next().unwrap().parse().unwrap();
        labels.sort();
        s.samples
            .entry(name.into())
            .or_default()
            .insert(labels, value);
    }
    s
}

struct NodeExporter(Child);

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts node_exporter with `COLLECTORS` on a free loopback port; it
/// counts as started once its own process answers there (a parallel test
/// could have taken the port: then it exits, and another port is tried).
fn start_node_exporter() -> (NodeExporter, String) {
    require_tool("prometheus-node-exporter", "prometheus-node-exporter");
    for _ in 0..5 {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new("prometheus-node-exporter");
        cmd.arg(format!("--web.listen-address={addr}"))
            .arg("--collector.disable-defaults")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for c in COLLECTORS {
            cmd.arg(format!("--collector.{c}"));
        }
        let mut ne = NodeExporter(cmd.spawn().expect("start node_exporter"));
        let deadline = Instant::now() + 10 * SECOND;
        while Instant::now() < deadline {
            if ne.0.try_wait().unwrap().is_some() {
                break;
            }
            if let Ok(stream) = std::net::TcpStream::connect(&addr) {
                drop(stream);
                let (code, body) = get_metrics(&addr);
                if code == 200 && body.contains("node_exporter_build_info") {
                    return (ne, addr);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = ne.0.kill();
    }
    panic!("node_exporter did not start");
}

fn label_names(samples: &BTreeMap<Vec<(String, String)>, f64>) -> BTreeSet<Vec<String>> {
    samples
        .keys()
        .map(|labels| labels.iter().map(|(n, _)| n.clone()).collect())
        .collect()
}

/// How far outpost's reading may lie outside node_exporter's two, for a
/// series, given the scrapes' times. `None`: the value is a level that can
/// move arbitrarily between scrapes; only its presence is compared.
fn allowance(name: &str, n0: f64, n2: f64, window: f64) -> Option<f64> {
    let level = n0.abs().max(n2.abs());
    Some(match name {
        // Seconds of CPU time advance at most one second per second, and
        // /proc/stat shows hundredths.
        "node_cpu_seconds_total" => window + 0.02,
        // Levels the scheduler moves at will.
        "node_procs_running" | "node_procs_blocked" | "node_disk_io_now" => return None,
        // Recomputed by the kernel every 5 s.
        "node_load1" | "node_load5" | "node_load15" => 0.1 * level + 0.1,
        "node_boot_time_seconds" => 1.0,
        // outpost reads statvfs on its metrics thread (every 200 ms here).
        n if n.starts_with("node_filesystem_") => 0.01 * level + 64.0 * 1024.0 * 1024.0,
        // Other engineers' builds move memory; a small relative tolerance.
        n if n.starts_with("node_memory_") => 0.02 * level + 16.0 * 1024.0 * 1024.0,
        n if n.starts_with("node_hwmon_") || n.starts_with("node_thermal_") => 2.0,
        // Every other shared series is a counter read fresh at scrape time.
        _ => 1e-9 * level,
    })
}

#[test]
fn node_series_match_node_exporter_read_together() {
    let (_ne, ne_addr) = start_node_exporter();
    let agent = Agent::start(&[("OUTPOST_HEARTBEAT_INTERVAL", "200ms")]);
    let addr = agent.http_addr();
    // The filesystem series come with the first snapshot.
    let deadline = Instant::now() + 10 * SECOND;
    while !http_get(&addr, "/metrics")
        .1
        .contains("node_filesystem_size_bytes")
    {
        assert!(Instant::now() < deadline, "no filesystem series");
        std::thread::sleep(Duration::from_millis(20));
    }

    let (_, n0) = scrape(&ne_addr);
    let (ours_text, ours) = scrape(&addr);
    let (ne_text, n2) = scrape(&ne_addr);
    let window = n2.after - n0.before;

    let mut compared = 0;
    for name in SECTION_7_1 {
        let temperature = name.contains("hwmon") || name.contains("thermal");
        if !temperature {
            assert!(ours.samples.contains_key(*name), "outpost lacks {name}");
        }
        let (Some(o), Some(a), Some(b)) = (
            ours.samples.get(*name),
            n0.samples.get(*name),
            n2.samples.get(*name),
        ) else {
            continue;
        };
        assert_eq!(
            ours.types.get(*name),
            n0.types.get(*name),
            "{name}: TYPE differs"
        );
        assert_eq!(label_names(o), label_names(a), "{name}: label names differ");
        let mut shared = 0;
        for (labels, value) in o {
            let (Some(&v0), Some(&v2)) = (a.get(labels), b.get(labels)) else {
                continue;
            };
            shared += 1;
            if *name == "node_time_seconds" {
                assert!(
                    (ours.before - 0.01..=ours.after + 0.01).contains(value),
                    "node_time_seconds {value} outside its scrape {}..{}",
                    ours.before,
                    ours.after
                );
                continue;
            }
            let Some(slack) = allowance(name, v0, v2, window) else {
                continue;
            };
            let (lo, hi) = (v0.min(v2) - slack, v0.max(v2) + slack);
            assert!(
                (lo..=hi).contains(value),
                "{name}{labels:?}: outpost {value}, node_exporter {v0} then {v2} \
                 (allowed {lo}..{hi}, scrapes {window:.3} s apart)"
            );
        }
        assert!(shared > 0, "{name}: no label set in common");
        compared += 1;
    }
    // Everything but temperatures (no sensors on a VM) was compared.
    assert!(compared >= SECTION_7_1.len() - 2, "compared {compared}");

    // Every node series outpost has that node_exporter has too carries the
    // same label names (beyond section 7.1: the whole meminfo, disk and
    // network families).
    for (name, o) in &ours.samples {
        if let Some(a) = n0.samples.get(name) {
            assert_eq!(label_names(o), label_names(a), "{name}: label names");
            assert_eq!(ours.types.get(name), n0.types.get(name), "{name}: TYPE");
        }
    }

    // No agent-computed rates or percentages among the node series.
    for name in ours.types.keys() {
        assert!(!name.starts_with("outpost_node_"), "{name}");
        if name.starts_with("node_") {
            assert!(
                !name.contains("_per_second") && !name.contains("_percent"),
                "{name}"
            );
        }
    }

    // promtool: outpost's only findings are its camelCase lint on
    // node_exporter's own node_memory_* names, and node_exporter's output
    // gets exactly those findings for the names both have.
    assert_promtool_clean(&ours_text);
    let ours_findings = promtool_findings(&ours_text).unwrap();
    let ne_findings = promtool_findings(&ne_text).unwrap();
    assert!(!ours_findings.is_empty(), "the lint is expected");
    for f in &ours_findings {
        assert!(is_node_memory_camel_case_lint(f), "{f}");
        assert!(ne_findings.contains(f), "node_exporter lacks finding {f}");
    }
    for f in ne_findings
        .iter()
        .filter(|f| is_node_memory_camel_case_lint(f))
    {
        let name = f.split(' ').next().unwrap();
        if ours.samples.contains_key(name) {
            assert!(ours_findings.contains(f), "outpost lacks finding {f}");
        }
    }
}
