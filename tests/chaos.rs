//! Manager chaos: for a fixed time (30 s here; `OUTPOST_CHAOS_SECONDS` by
//! hand) the fake manager answers at random with 5xx, 429 and
//! `Retry-After`, connection resets, slow answers, truncated bodies, garbage
//! JSON, oversized bodies and the odd 404, while iperf3 servers and
//! clients, collectors, one-shot and spool tasks run and tasks are handed
//! out twice. Then it recovers.
//!
//! What must hold: every update arrives as it was produced (the same bytes
//! each time it is sent, as the ledger keeps it) and in order per task (an
//! update is only sent once the one before it was acknowledged); no task
//! runs twice; heartbeats come back within one backoff cap of the
//! recovery; the agent's memory stays bounded.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Agent, FakeManager, Fault, KEY, Reply, Rng, TempDir, free_port, require_tool, rss_kib,
};
use serde_json::{Value, json};

const SECOND: Duration = Duration::from_secs(1);

/// What the manager acknowledged, and what broke the order rule.
#[derive(Default)]
struct Ledger {
    /// (task, seq) answered with a 2xx or 409 status line.
    acked: BTreeSet<(String, u64)>,
    /// Every status body received, per (task, seq).
    bodies: BTreeMap<(String, u64), Vec<Value>>,
    violations: Vec<String>,
}

/// A random fault in place of (or on top of) the answer the manager meant.
fn chaotic(rng: &mut Rng, path: &str, reply: Reply) -> Reply {
    let oversized = || {
        Reply::json(
            200,
            json!({"agent_id": "a-test", "tasks": [], "pad": "x".repeat(2 << 20)}),
        )
    };
    match rng.below(100) {
        0..=9 => Reply::status(503),
        10..=14 => Reply::status(429).with_header("Retry-After", "1"),
        15..=17 => Reply::status(502).with_header("Retry-After", "2"),
        18..=19 if path != "/v1/agent/register" => Reply::status(404),
        20..=29 => reply.with_fault(Fault::Reset),
        30..=37 => {
            let delay = Duration::from_millis(rng.below(2000));
            reply.with_fault(Fault::Slow(delay))
        }
        38..=45 => reply.with_fault(Fault::Truncated),
        46..=51 => Reply {
            status: 200,
            headers: vec![],
            body: "{\"agent_id\": [\"a-test\", {\"tasks\": 7".into(),
            fault: None,
        },
        52..=54 => oversized(),
        _ => reply,
    }
}

#[test]
fn a_manager_in_chaos_loses_no_update_and_runs_no_task_twice() {
    require_tool("iperf3", "iperf3");
    let seconds: u64 = std::env::var("OUTPOST_CHAOS_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    println!("chaos: {seconds} s, seed {seed:#x}");

    let work = TempDir::new("chaos-work");
    let runs = work.path().join("runs.log");
    // The real iperf3, with a note of every run of every task.
    let iperf = work.path().join("iperf3");
    std::fs::write(
        &iperf,
        format!(
            "#!/bin/sh\necho \"$OUTPOST_TASK\" >> {}\nexec iperf3 \"$@\"\n",
            runs.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&iperf, std::fs::Permissions::from_mode(0o755)).unwrap();
    let collector_config = format!(
        "echo \"$OUTPOST_TASK\" >> {}\nwhile :; do sleep 1; done\n",
        runs.display()
    );

    let manager = FakeManager::start();
    let book = Arc::new(Mutex::new(Ledger::default()));
    let active = Arc::new(AtomicBool::new(false));
    {
        let book = book.clone();
        let active = active.clone();
        let mut rng = Rng(seed);
        manager.set_chaos(move |seen, reply| {
            let status_of = seen
                .path
                .strip_prefix("/v1/agent/tasks/")
                .and_then(|p| p.strip_suffix("/status"))
                .map(String::from);
            let reply = if active.load(Ordering::Relaxed) {
                chaotic(&mut rng, &seen.path, reply)
            } else {
                reply
            };
            if let Some(task) = status_of {
                let seq = seen.body["seq"].as_u64().unwrap_or(0);
                let mut book = book.lock().unwrap();
                if let Some(missing) = (1..seq).find(|k| !book.acked.contains(&(task.clone(), *k)))
                {
                    book.violations.push(format!(
                        "{task} #{seq} sent before #{missing} was acknowledged"
                    ));
                }
                book.bodies
                    .entry((task.clone(), seq))
                    .or_default()
                    .push(seen.body.clone());
                let answered = (200..300).contains(&reply.status) || reply.status == 409;
                if answered && reply.fault != Some(Fault::Reset) {
                    book.acked.insert((task, seq));
                }
            }
            reply
        });
    }

    let state = TempDir::new("chaos-state");
    let iperf_path = iperf.display().to_string();
    let agent = Agent::start_in(
        state,
        &[
            ("OUTPOST_MANAGER_URL", manager.base.as_str()),
            ("OUTPOST_AGENT_KEY", KEY),
            ("OUTPOST_HEARTBEAT_INTERVAL", "200ms"),
            ("OUTPOST_STOP_GRACE", "1s"),
            ("OUTPOST_IPERF3", iperf_path.as_str()),
            ("OUTPOST_COLLECTOR_CMD", "/bin/sh {config}"),
        ],
        &[],
    );
    let pid = agent.child.id();
    let dir = agent.state_dir();
    common::eventually("registered", 10 * SECOND, || agent.get("/ready").0 == 200);
    let inbox = dir.join("inbox");

    // The workload, then chaos from the first task on.
    // Servers 0-2 serve one client each; server 3 is there to be stopped
    // (stopping a server under a client would fail the client, whenever the
    // chaotic claims happen to bring the two).
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let mut handed: Vec<Value> = Vec::new();
    let hand = |task: Value, handed: &mut Vec<Value>| {
        manager.hand_out(task.clone());
        handed.push(task);
    };
    for (i, port) in ports.iter().enumerate() {
        hand(
            json!({"id": format!("srv-{i}"), "type": "iperf_server_start", "payload": {"port": port}}),
            &mut handed,
        );
    }
    for name in ["col-a", "col-b"] {
        hand(
            json!({"id": name, "type": "collector_start", "payload": {"name": name, "config": collector_config}}),
            &mut handed,
        );
    }
    active.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut rng = Rng(seed.rotate_left(17));
    let mut rss: Vec<u64> = Vec::new();
    let mut spooled: Vec<String> = Vec::new();
    let mut second = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_millis(250));
        rss.push(rss_kib(pid));
        let now = started.elapsed().as_secs();
        if now == second {
            continue;
        }
        second = now;
        hand(
            json!({"id": format!("info-{second}"), "type": "system_info"}),
            &mut handed,
        );
        if second % 3 == 0 {
            let id = format!("sp-{second}");
            let file = inbox.join(format!("{id}.json"));
            std::fs::write(&file, json!({"id": id, "type": "system_info"}).to_string()).unwrap();
            spooled.push(id);
        }
        if second % 2 == 0 {
            // A hand-out the manager believes was lost: never a second run.
            let again = handed[rng.below(handed.len() as u64) as usize].clone();
            manager.hand_out(again);
        }
        let client = match second {
            3 => Some(0),
            8 => Some(1),
            13 => Some(2),
            _ => None,
        };
        if let Some(i) = client {
            hand(
                json!({"id": format!("cli-{i}"), "type": "iperf_client_run",
                    "payload": {"server": "127.0.0.1", "port": ports[i], "time": 2}}),
                &mut handed,
            );
        }
        if second == 20 {
            hand(
                json!({"id": "stop-col-b", "type": "collector_stop", "payload": {"name": "col-b"}}),
                &mut handed,
            );
            hand(
                json!({"id": "stop-srv-3", "type": "task_stop", "payload": {"task_id": "srv-3"}}),
                &mut handed,
            );
        }
    }

    // Recovery: heartbeats must come back within one backoff cap (60 s).
    active.store(false, Ordering::Relaxed);
    let recovered = Instant::now();
    let beat = manager.wait_for("a heartbeat after recovery", 75 * SECOND, |seen| {
        seen.iter()
            .any(|s| s.path == "/v1/agent/heartbeat" && s.at > recovered)
    });
    let back_after = beat
        .iter()
        .find(|s| s.path == "/v1/agent/heartbeat" && s.at > recovered)
        .map(|s| s.at.duration_since(recovered))
        .unwrap();
    println!("chaos: heartbeats back {back_after:?} after recovery");
    assert!(back_after <= 65 * SECOND, "{back_after:?}");

    // Everything settles: no update waits, every task handed out is known.
    let expected_final: BTreeMap<String, &str> = handed
        .iter()
        .filter_map(|t| {
            let id = t["id"].as_str()?.to_string();
            let state = match id.as_str() {
                "col-a" | "srv-0" | "srv-1" | "srv-2" => "running",
                "col-b" | "srv-3" => "stopped",
                _ => "succeeded",
            };
            Some((id, state))
        })
        .collect();
    let settle = Instant::now() + 90 * SECOND;
    loop {
        let (_, body) = agent.get("/status");
        let status: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let latest = |id: &str| {
            manager
                .updates(id)
                .last()
                .and_then(|u| u["state"].as_str().map(String::from))
        };
        let pending = status["outbox"]["pending"].as_u64();
        let unsettled: Vec<&String> = expected_final
            .iter()
            .filter(|(id, want)| latest(id).as_deref() != Some(**want))
            .map(|(id, _)| id)
            .collect();
        if pending == Some(0) && manager.queued() == 0 && unsettled.is_empty() {
            break;
        }
        assert!(
            Instant::now() < settle,
            "not settled: outbox {pending:?}, queued {}, tasks {unsettled:?}; {}",
            manager.queued(),
            agent.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let book = book.lock().unwrap();
    assert!(book.violations.is_empty(), "{:#?}", book.violations);
    // Every update 1..n of every task reached the manager, each copy the
    // same, and the same as the agent's own record of the task.
    let ledger: BTreeMap<String, Value> = std::fs::read_to_string(dir.join("ledger.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|r| (r["id"].as_str().unwrap_or("").to_string(), r))
        .collect();
    let mut updates = 0;
    for id in expected_final.keys() {
        let seqs: Vec<u64> = book
            .bodies
            .keys()
            .filter(|(t, _)| t == id)
            .map(|(_, s)| *s)
            .collect();
        let n = *seqs.iter().max().unwrap_or(&0);
        assert!(n >= 1, "{id}: no update");
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "{id}: a gap");
        for seq in 1..=n {
            assert!(
                book.acked.contains(&(id.clone(), seq)),
                "{id} #{seq} never acknowledged"
            );
            let copies = &book.bodies[&(id.clone(), seq)];
            assert!(
                copies.iter().all(|c| c == &copies[0]),
                "{id} #{seq} changed between sends: {copies:#?}"
            );
            updates += 1;
        }
        let mut last = book.bodies[&(id.clone(), n)][0].clone();
        last.as_object_mut().unwrap().remove("agent_id");
        assert_eq!(
            ledger[id]["last"], last,
            "{id}: sent is not what was recorded"
        );
    }
    // No task ran twice: one iperf3 per server and client, one collector
    // start per collector (they never exit, so never restart).
    let log = std::fs::read_to_string(&runs).unwrap_or_default();
    let mut starts: BTreeMap<&str, usize> = BTreeMap::new();
    for line in log.lines() {
        *starts.entry(line).or_default() += 1;
    }
    for id in [
        "srv-0", "srv-1", "srv-2", "srv-3", "cli-0", "cli-1", "cli-2", "col-a", "col-b",
    ] {
        assert_eq!(
            starts.get(id),
            Some(&1),
            "{id} ran {:?} times",
            starts.get(id)
        );
    }
    for id in &spooled {
        let result: Value = serde_json::from_slice(
            &std::fs::read(dir.join("results").join(format!("{id}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(result["state"], "succeeded", "{id}: {result}");
    }
    // Memory: bounded, and not creeping up over the run.
    let max = rss.iter().max().copied().unwrap_or(0);
    let early = rss[rss.len() / 4];
    let late = *rss.last().unwrap();
    println!(
        "chaos: {} tasks, {updates} updates, {} requests; agent RSS early {early} KiB, late {late} KiB, max {max} KiB",
        expected_final.len() + spooled.len(),
        manager.seen().len()
    );
    assert!(max < 64 * 1024, "RSS reached {max} KiB");
    assert!(
        late < early + 8 * 1024,
        "RSS grew from {early} to {late} KiB"
    );
}
