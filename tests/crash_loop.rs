//! `kill -9` of the agent at random moments during a mixed workload of
//! one-shot, client, server, collector and spool tasks, restarting it each
//! time (50 rounds here; `OUTPOST_CRASH_ROUNDS=500` by hand). After every
//! restart: the state loads, no process is orphaned or duplicated. At the end: no task ran twice, every task is final (or a
//! running collector), and every task's updates arrived numbered 1, 2, 3…
//! without a gap.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{Agent, FakeManager, KEY, Rng, TempDir, eventually, free_port};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const SECOND: Duration = Duration::from_secs(1);

/// Processes (pid list) per `OUTPOST_TASK` value whose command line holds
/// `marker`.
fn processes_by_task(marker: &str) -> BTreeMap<String, Vec<i32>> {
    let mut found: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for pid in common::processes_matching(marker) {
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            for var in env.split(|b| *b == 0) {
                if let Some(task) = var.strip_prefix(b"OUTPOST_TASK=") {
                    found
                        .entry(String::from_utf8_lossy(task).into_owned())
                        .or_default()
                        .push(pid);
                }
            }
        }
    }
    found
}

/// Fields of /proc/<pid>/stat after the command name: state, ppid, pgid.
fn stat_of(pid: i32) -> Option<(String, i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.to_string();
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    Some((state, ppid, pgid))
}

/// Live processes of the test's tasks (by `OUTPOST_TASK=r<round>-…`) whose
/// process group was not started by `agent`: leftovers of an earlier
/// instance that recovery should have stopped.
fn orphans_of(agent: u32, prefix: &str) -> Vec<String> {
    let mut orphans = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let Some(task) = env
            .split(|b| *b == 0)
            .find_map(|v| v.strip_prefix(b"OUTPOST_TASK="))
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .filter(|t| t.starts_with(prefix))
        else {
            continue;
        };
        let Some((state, _, pgid)) = stat_of(pid) else {
            continue;
        };
        if state == "Z" {
            continue; // dead; this container's PID 1 does not reap
        }
        let leader_parent = stat_of(pgid).map(|(_, ppid, _)| ppid);
        if leader_parent != Some(agent as i32) {
            orphans.push(format!("{task}: pid {pid} in group {pgid}"));
        }
    }
    orphans
}

#[test]
fn kill_9_at_random_moments_loses_nothing_and_runs_nothing_twice() {
    let rounds: u32 = std::env::var("OUTPOST_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let work = TempDir::new("crash-work");
    let runs = work.path().join("runs.log");
    let marker = format!("crashloop-{}", std::process::id());
    // A stand-in iperf3 that notes every run of its task, then answers
    // with JSON like a successful client run; servers are the real iperf3.
    let fake_iperf = work.path().join("iperf3");
    std::fs::write(
        &fake_iperf,
        format!(
            "#!/bin/sh\necho \"$OUTPOST_TASK\" >> {}\n[ \"$1\" = -s ] && exec iperf3 \"$@\"\nsleep 0.2\necho '{{\"end\":{{}}}}'\n",
            runs.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake_iperf, std::fs::Permissions::from_mode(0o755)).unwrap();
    let collector_cmd = "/bin/sh {config}";

    let manager = FakeManager::start();
    let state = TempDir::new("crash-state");
    let state_path = state.path().to_path_buf();
    std::mem::forget(state); // removed at the end, after the last agent
    let iperf = fake_iperf.display().to_string();
    let env = [
        ("OUTPOST_MANAGER_URL", manager.base.as_str()),
        ("OUTPOST_AGENT_KEY", KEY),
        ("OUTPOST_HEARTBEAT_INTERVAL", "200ms"),
        ("OUTPOST_STOP_GRACE", "1s"),
        ("OUTPOST_IPERF3", iperf.as_str()),
        ("OUTPOST_COLLECTOR_CMD", collector_cmd),
    ];
    let mut handed: BTreeSet<String> = BTreeSet::new();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ u64::from(std::process::id()));
    let mut random = |n: u64| rng.below(n);
    for round in 0..rounds {
        let mut agent = Agent::start_in(TempDir(state_path.clone()), &env, &[]);
        // Every restart starts cleanly: it registers again.
        eventually("a registration", 10 * SECOND, || {
            manager
                .seen_at("/v1/agent/register")
                .iter()
                .filter(|s| s.body["instance_id"].is_string())
                .count()
                > round as usize
        });
        // Registered means recovery is over: whatever an earlier instance
        // left is stopped or supervised again, by this one.
        eventually("no orphan of an earlier instance", 10 * SECOND, || {
            orphans_of(agent.child.id(), "r").is_empty()
        });
        for i in 0..3 {
            let id = format!("r{round}-{i}");
            let task = match random(5) {
                0 => json!({"id": id, "type": "system_info"}),
                1 => {
                    json!({"id": id, "type": "iperf_client_run", "payload": {"server": "127.0.0.1", "time": 1}})
                }
                2 => json!({"id": id, "type": "collector_start",
                    "payload": {"name": format!("c{}", random(3)), "config": format!("exec sleep 3600 # {marker} {}\n", random(2))}}),
                3 => json!({"id": id, "type": "iperf_server_start",
                    "payload": {"port": free_port(), "one_off": random(2) == 0}}),
                _ => {
                    let path = agent.state_dir().join("inbox").join(format!("{id}.json"));
                    let _ =
                        std::fs::write(&path, json!({"id": id, "type": "system_info"}).to_string());
                    continue;
                }
            };
            handed.insert(id);
            manager.hand_out(task);
        }
        std::thread::sleep(Duration::from_millis(50 + random(450)));
        eventually("every task process supervised", 10 * SECOND, || {
            orphans_of(agent.child.id(), "r").is_empty()
        });
        agent.signal(Signal::SIGKILL);
        agent.wait_exit(5 * SECOND);
        std::mem::forget(agent);
        // Orphans may outlive the agent, but never two of one collector.
        for (task, pids) in processes_by_task(&marker) {
            assert!(
                pids.len() <= 1,
                "round {round}: task {task} has processes {pids:?}"
            );
        }
    }
    // A last, clean run: everything settles.
    let agent = Agent::start_in(TempDir(state_path.clone()), &env, &[]);
    let settled = |id: &str| {
        manager.updates(id).last().is_some_and(|u| {
            ["succeeded", "failed", "stopped", "rejected", "running"]
                .contains(&u["state"].as_str().unwrap_or(""))
        })
    };
    // Tasks still in the fake manager's queue when an agent died are lost
    // in transit, as a real manager's would be; they were never taken.
    let taken: Vec<String> = handed
        .iter()
        .filter(|id| !manager.updates(id).is_empty())
        .cloned()
        .collect();
    eventually("every task that was taken settled", 60 * SECOND, || {
        taken.iter().all(|id| settled(id))
    });
    // Updates of each task are numbered 1..n with nothing missing.
    for id in &taken {
        let seqs: BTreeSet<u64> = manager
            .updates(id)
            .iter()
            .filter_map(|u| u["seq"].as_u64())
            .collect();
        let max = *seqs.iter().max().unwrap();
        assert_eq!(seqs.len() as u64, max, "{id}: updates {seqs:?} have a gap");
    }
    // No one-shot task ran twice.
    let log = std::fs::read_to_string(&runs).unwrap_or_default();
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    // Empty lines are the agent's own `iperf3 --version` probe at start.
    for line in log.lines().filter(|l| !l.is_empty()) {
        *counts.entry(line).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "tasks that ran twice: {twice:?}");
    // Exactly one process per desired collector, none orphaned.
    eventually("collectors settled", 15 * SECOND, || {
        processes_by_task(&marker).values().all(|p| p.len() == 1)
    });
    let (_, status) = agent.get("/status");
    let status: Value = serde_json::from_str(&status).unwrap();
    let running: BTreeSet<String> = status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect();
    for task in processes_by_task(&marker).keys() {
        assert!(
            running.contains(task),
            "process of {task} is not supervised: {running:?}"
        );
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&state_path);
}
