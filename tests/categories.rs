//! Metric categories (protocol sections 3.1, 3.2, 5 and 9) and process
//! counts by state, against the real binary and the fake manager.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Agent, FakeManager, Reply, Seen, TempDir, command};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

const SECOND: Duration = Duration::from_secs(1);

fn keys(heartbeat: &Seen) -> BTreeSet<String> {
    heartbeat.body["metrics"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// Waits until the last two heartbeats sent after `since` carry exactly
/// `want` as their metrics keys.
fn wait_heartbeats(manager: &FakeManager, since: Instant, want: &[&str]) {
    let want = set(want);
    manager.wait_for(&format!("heartbeats with {want:?}"), 10 * SECOND, |seen| {
        let beats: Vec<&Seen> = seen
            .iter()
            .filter(|s| s.path == "/v1/agent/heartbeat" && s.at > since)
            .collect();
        beats.len() >= 2 && beats[beats.len() - 2..].iter().all(|b| keys(b) == want)
    });
}

#[test]
fn a_bad_category_stops_the_agent_with_78_naming_the_setting() {
    let state = TempDir::new("categories-bad");
    let dir = state.path().to_str().unwrap().to_string();
    for (env, args) in [
        (vec![("OUTPOST_METRICS", "cpu,gpu")], vec![]),
        (vec![], vec!["--metrics", "cpu,,memory,CPU"]),
        (vec![("OUTPOST_METRICS", "all,cpu")], vec!["--check-config"]),
    ] {
        let mut all = vec![("OUTPOST_STATE_DIR", dir.as_str())];
        all.extend(env);
        let out = command(&all).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {stderr}");
        assert!(stderr.contains("OUTPOST_METRICS"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    // --check-config shows the effective set and where it came from.
    let out = command(&[
        ("OUTPOST_STATE_DIR", &dir),
        ("OUTPOST_METRICS", "network, cpu"),
    ])
    .arg("--check-config")
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("OUTPOST_METRICS=cpu,network  (environment)"),
        "{stdout}"
    );
    let help = command(&[]).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("OUTPOST_METRICS"));
}

#[test]
fn manager_narrows_empties_and_reregistration_restores_heartbeat_categories() {
    let manager = FakeManager::start();
    let registrations = Arc::new(Mutex::new(0u32));
    let heartbeat_answer = Arc::new(Mutex::new(Reply::json(200, json!({}))));
    {
        let registrations = registrations.clone();
        let heartbeat_answer = heartbeat_answer.clone();
        manager.set_script(move |seen| match seen.path.as_str() {
            "/v1/agent/register" => {
                let mut n = registrations.lock().unwrap();
                *n += 1;
                if *n == 1 {
                    // Disks are asked for, but the operator turned them off.
                    Reply::json(
                        200,
                        json!({"agent_id": "a-test", "metrics": ["cpu", "disks", "load"]}),
                    )
                } else {
                    Reply::json(200, json!({"agent_id": "a-test"}))
                }
            }
            "/v1/agent/heartbeat" => heartbeat_answer.lock().unwrap().clone(),
            "/v1/agent/tasks/claim" => Reply::status(204),
            _ => Reply::json(200, json!({})),
        });
    }
    let operator = "cpu,memory,load,network,processes";
    let agent = Agent::with_manager(&manager, &[("OUTPOST_METRICS", operator)]);

    // The register answer's choice, within the operator's.
    wait_heartbeats(&manager, Instant::now(), &["at", "cpu", "load", "uptime_s"]);

    // A heartbeat answer narrows to other categories...
    let since = Instant::now();
    *heartbeat_answer.lock().unwrap() = Reply::json(
        200,
        json!({"metrics": ["memory", "network", "temperatures"]}),
    );
    wait_heartbeats(&manager, since, &["at", "memory", "network", "uptime_s"]);
    // ... and keeps them while answers say nothing of metrics.
    let since = Instant::now();
    *heartbeat_answer.lock().unwrap() = Reply::json(200, json!({}));
    wait_heartbeats(&manager, since, &["at", "memory", "network", "uptime_s"]);

    // An empty list: liveness beats with `at` and uptime only.
    let since = Instant::now();
    *heartbeat_answer.lock().unwrap() = Reply::json(200, json!({"metrics": []}));
    wait_heartbeats(&manager, since, &["at", "uptime_s"]);
    let last = manager.seen_at("/v1/agent/heartbeat").pop().unwrap();
    assert!(last.body["uptime_s"].as_f64().unwrap() > 0.0);

    // A 404 makes the agent register again; that answer names no metrics,
    // so the heartbeats go back to what the operator collects.
    let since = Instant::now();
    *heartbeat_answer.lock().unwrap() = Reply::status(404);
    manager.wait_for("a second registration", 10 * SECOND, |seen| {
        seen.iter()
            .filter(|s| s.path == "/v1/agent/register")
            .count()
            >= 2
    });
    *heartbeat_answer.lock().unwrap() = Reply::json(200, json!({}));
    wait_heartbeats(
        &manager,
        since,
        &[
            "at",
            "cpu",
            "load",
            "memory",
            "network",
            "processes",
            "uptime_s",
        ],
    );

    // /metrics kept what the operator allows all along, and only that.
    let (code, body) = agent.get("/metrics");
    assert_eq!(code, 200);
    for present in [
        "node_cpu_seconds_total{",
        "node_memory_MemTotal_bytes ",
        "node_load1 ",
        "node_network_receive_bytes_total{",
        "node_procs_running ",
        "node_processes_pids ",
        "node_boot_time_seconds ",
    ] {
        assert!(body.contains(present), "{present} missing:\n{body}");
    }
    for absent in [
        "node_disk_",
        "node_filesystem_",
        "node_hwmon_",
        "node_thermal_",
    ] {
        assert!(!body.contains(absent), "{absent} present:\n{body}");
    }
}

#[test]
fn none_collects_nothing_but_heartbeats_still_beat() {
    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, &[("OUTPOST_METRICS", "none")]);
    wait_heartbeats(&manager, Instant::now(), &["at", "uptime_s"]);
    let (_, body) = agent.get("/metrics");
    let node: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE node_"))
        .collect();
    assert_eq!(
        node,
        [
            "boot_time_seconds gauge",
            "time_seconds gauge",
            "uname_info gauge"
        ]
    );
}

/// State letter of /proc/<pid>/stat.
fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

#[test]
fn processes_by_state_count_a_stopped_process_and_a_zombie() {
    let mut stopped = Command::new("sleep")
        .arg("1000")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    kill(Pid::from_raw(stopped.id() as i32), Signal::SIGSTOP).unwrap();
    // Not waited for: once it exits it stays a zombie of this process.
    let zombie = Command::new("true").stdin(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + 10 * SECOND;
    while state_of(stopped.id()) != Some('T') || state_of(zombie.id()) != Some('Z') {
        assert!(Instant::now() < deadline, "no stopped process and zombie");
        std::thread::sleep(Duration::from_millis(10));
    }

    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, &[]);
    let seen = manager.wait_for("a heartbeat counting both", 10 * SECOND, |seen| {
        seen.iter().any(|s| {
            let by_state = &s.body["metrics"]["processes"]["by_state"];
            by_state["stopped"].as_u64() >= Some(1) && by_state["zombie"].as_u64() >= Some(1)
        })
    });
    let beat = seen
        .iter()
        .rev()
        .find(|s| s.body["metrics"]["processes"]["by_state"].is_object())
        .unwrap();
    let p = &beat.body["metrics"]["processes"];
    let total = p["total"].as_u64().unwrap();
    let counted: u64 = p["by_state"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(
        counted <= total && total <= p["threads"].as_u64().unwrap(),
        "{p}"
    );
    for key in ["running", "blocked"] {
        assert!(p[key].is_u64(), "{p}");
    }

    let (_, body) = agent.get("/metrics");
    let value = |series: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert!(value("node_processes_state{state=\"T\"}") >= 1.0, "{body}");
    assert!(value("node_processes_state{state=\"Z\"}") >= 1.0, "{body}");

    let _ = stopped.kill();
    let _ = kill(Pid::from_raw(stopped.id() as i32), Signal::SIGCONT);
    let _ = stopped.wait();
    let mut zombie = zombie;
    let _ = zombie.wait();
}

#[test]
fn a_running_task_has_cpu_seconds_and_rss_series() {
    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, &[("OUTPOST_COLLECTOR_CMD", "/bin/sh {config}")]);
    // A collector that burns some CPU, then sleeps (exec keeps the pid).
    let config = "i=0\nwhile [ $i -lt 300000 ]; do i=$((i+1)); done\nexec sleep 3600\n";
    manager.hand_out(json!({"id": "busy-1", "type": "collector_start",
                            "payload": {"name": "busy", "config": config}}));
    manager.wait_state("busy-1", "running", 20 * SECOND);
    let labels = "{task_id=\"busy-1\",type=\"collector_start\",name=\"busy\"}";
    let value = |body: &str, family: &str| -> Option<f64> {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{family}{labels} ")))
            .and_then(|v| v.parse().ok())
    };
    let deadline = Instant::now() + 20 * SECOND;
    loop {
        let (_, body) = agent.get("/metrics");
        let cpu = value(&body, "outpost_task_cpu_seconds_total");
        let rss = value(&body, "outpost_task_memory_rss_bytes");
        if cpu.is_some_and(|c| c >= 0.05) && rss.is_some_and(|r| r > 0.0) {
            assert!(body.contains("# TYPE outpost_task_cpu_seconds_total counter\n"));
            assert!(body.contains("# TYPE outpost_task_memory_rss_bytes gauge\n"));
            // No percentages on /metrics, for tasks either.
            assert!(!body.contains("_percent"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no task series with CPU seconds:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
