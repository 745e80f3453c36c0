//! Tasks end to end: the real binary, the real iperf3, a fake manager
//! handing out tasks, and the spool directory.

mod common;

use std::time::{Duration, Instant};

use common::{
    Agent, FakeManager, KEY, Reply, TempDir, eventually, free_port, port_is_closed,
    processes_matching, require_tool, zombie_children,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const SECOND: Duration = Duration::from_secs(1);

fn server_task(id: &str, port: u16) -> Value {
    json!({"id": id, "type": "iperf_server_start", "payload": {"port": port}})
}

fn client_task(id: &str, port: u16, extra: Value) -> Value {
    let mut payload = json!({"server": "127.0.0.1", "port": port, "time": 1});
    for (k, v) in extra.as_object().unwrap() {
        payload[k] = v.clone();
    }
    json!({"id": id, "type": "iperf_client_run", "payload": payload})
}

fn seqs(updates: &[Value]) -> Vec<u64> {
    updates.iter().map(|u| u["seq"].as_u64().unwrap()).collect()
}

#[test]
fn tcp_and_udp_clients_against_a_server_task_then_stop_it() {
    require_tool("iperf3", "iperf3");
    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, &[]);
    let port = free_port();
    manager.hand_out(server_task("srv-1", port));
    let running = manager.wait_state("srv-1", "running", 15 * SECOND);
    assert_eq!(running["result"]["port"], port);
    assert!(running["pid"].as_i64().unwrap() > 0);
    assert_eq!(running["agent_id"], "a-test");

    manager.hand_out(client_task("tcp-1", port, json!({})));
    let done = manager.wait_state("tcp-1", "succeeded", 30 * SECOND);
    let summary = &done["result"]["summary"];
    assert!(summary["sent_bps"].as_f64().unwrap() > 0.0, "{done}");
    assert!(summary["received_bps"].as_f64().unwrap() > 0.0);
    assert!(summary["retransmits"].is_u64());
    assert!(summary["jitter_ms"].is_null());
    assert_eq!(
        done["result"]["iperf3"]["start"]["test_start"]["protocol"],
        "TCP"
    );
    assert_eq!(done["exit_code"], 0);

    manager.hand_out(client_task(
        "udp-1",
        port,
        json!({"udp": true, "bandwidth": "10M"}),
    ));
    let done = manager.wait_state("udp-1", "succeeded", 30 * SECOND);
    let summary = &done["result"]["summary"];
    assert!(summary["jitter_ms"].is_number(), "{summary}");
    assert!(summary["lost_percent"].is_number());
    assert!(summary["retransmits"].is_null());

    // The running server shows in heartbeats and /status with its usage.
    let seen = manager.wait_for(
        "a heartbeat reporting the server's usage",
        10 * SECOND,
        |seen| {
            seen.iter().any(|s| {
                s.path == "/v1/agent/heartbeat"
                    && s.body["tasks"][0]["rss_bytes"]
                        .as_u64()
                        .is_some_and(|r| r > 0)
            })
        },
    );
    let beat = seen
        .iter()
        .rfind(|s| s.path == "/v1/agent/heartbeat" && s.body["tasks"][0]["rss_bytes"].is_u64())
        .unwrap();
    let report = &beat.body["tasks"][0];
    assert_eq!(report["id"], "srv-1");
    assert_eq!(report["type"], "iperf_server_start");
    assert_eq!(report["state"], "running");
    assert!(
        report["cpu_percent"].is_number()
            && report["pid"].is_number()
            && report["started_at"].is_string()
    );
    let (_, status) = agent.get("/status");
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["tasks"][0]["id"], "srv-1");
    // The update reaches the manager from the outbox thread, which can be
    // a moment before the main loop publishes the task view.
    common::eventually("the client runs counted finished", 10 * SECOND, || {
        agent.get("/metrics").1.contains("outpost_tasks_running 1")
    });
    let (_, metrics) = agent.get("/metrics");
    assert!(
        metrics.contains(
            "outpost_tasks_finished_total{type=\"iperf_client_run\",state=\"succeeded\"} 2"
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains("outpost_claims_total 0"),
        "claim round trips are counted"
    );
    assert!(zombie_children(agent.child.id()).is_empty());

    manager.hand_out(json!({"id": "stop-1", "type": "task_stop", "payload": {"task_id": "srv-1"}}));
    manager.wait_state("stop-1", "succeeded", 15 * SECOND);
    let stopped = manager.wait_state("srv-1", "stopped", 5 * SECOND);
    assert_eq!(
        seqs(&manager.updates("srv-1")).last(),
        stopped["seq"].as_u64().as_ref()
    );
    assert!(port_is_closed(port));
    // Each status update carries the headers and its own idempotency key.
    let update = manager
        .seen()
        .into_iter()
        .find(|s| s.path == "/v1/agent/tasks/tcp-1/status")
        .unwrap();
    assert_eq!(update.header("x-agent-key"), KEY);
    assert_eq!(
        update.header("idempotency-key"),
        format!("status:tcp-1:{}", update.body["seq"])
    );
    assert!(zombie_children(agent.child.id()).is_empty());
}

#[test]
fn a_refused_client_fails_with_iperf3s_own_words() {
    require_tool("iperf3", "iperf3");
    let manager = FakeManager::start();
    let _agent = Agent::with_manager(&manager, &[]);
    manager.hand_out(client_task("refused", free_port(), json!({})));
    let failed = manager.wait_state("refused", "failed", 30 * SECOND);
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("Connection refused"), "{failed}");
}

#[test]
fn two_servers_on_one_port_and_a_port_in_use() {
    require_tool("iperf3", "iperf3");
    let manager = FakeManager::start();
    let _agent = Agent::with_manager(&manager, &[]);
    let port = free_port();
    manager.hand_out(server_task("a", port));
    manager.wait_state("a", "running", 15 * SECOND);
    manager.hand_out(server_task("b", port));
    let rejected = manager.wait_state("b", "rejected", 5 * SECOND);
    assert_eq!(rejected["error"]["kind"], "invalid_payload");
    assert!(
        rejected["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("port")
    );

    // A port some other program holds: iperf3's own words come back.
    let holder = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let busy = holder.local_addr().unwrap().port();
    manager.hand_out(server_task("c", busy));
    let failed = manager.wait_state("c", "failed", 15 * SECOND);
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(
        message.to_lowercase().contains("address already in use"),
        "{failed}"
    );
    assert!(
        failed["stderr_tail"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{failed}"
    );
}

#[test]
fn every_validation_rule_rejects_naming_the_field() {
    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, &[]);
    let cases = [
        (
            json!({"id": "v1", "type": "iperf_client_run", "payload": {}}),
            "invalid_payload",
            "server",
        ),
        (
            json!({"id": "v2", "type": "iperf_client_run", "payload": {"server": "-D"}}),
            "invalid_payload",
            "server",
        ),
        (
            json!({"id": "v3", "type": "iperf_client_run", "payload": {"server": "h", "parallel": 500}}),
            "invalid_payload",
            "parallel",
        ),
        (
            json!({"id": "v4", "type": "iperf_server_start", "payload": {"port": 22}}),
            "invalid_payload",
            "port",
        ),
        (
            json!({"id": "v5", "type": "iperf_server_start", "payload": {"bind": "not-an-ip"}}),
            "invalid_payload",
            "bind",
        ),
        (
            json!({"id": "v6", "type": "task_stop", "payload": {}}),
            "invalid_payload",
            "task_id",
        ),
        (
            json!({"id": "v7", "type": "reboot"}),
            "unknown_type",
            "type",
        ),
    ];
    for (task, _, _) in &cases {
        manager.hand_out(task.clone());
    }
    manager.hand_out(json!({"id": "../../etc/passwd", "type": "kill_all"}));
    for (task, kind, field) in &cases {
        let id = task["id"].as_str().unwrap();
        let rejected = manager.wait_state(id, "rejected", 10 * SECOND);
        assert_eq!(rejected["seq"], 1);
        assert_eq!(rejected["error"]["kind"], *kind, "{rejected}");
        assert!(
            rejected["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(field),
            "{rejected}"
        );
    }
    eventually("the bad id counted", 10 * SECOND, || {
        agent
            .get("/metrics")
            .1
            .contains("outpost_invalid_task_ids_total 1")
    });
    assert!(
        agent.output().contains("../../etc/passwd"),
        "the bad id is logged, escaped"
    );
    assert!(
        !manager.seen().iter().any(|s| s.path.contains("passwd")),
        "no update for a bad id"
    );
}

#[test]
fn kill_all_stops_everything_and_closes_the_ports() {
    require_tool("iperf3", "iperf3");
    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, &[]);
    let (p1, p2) = (free_port(), free_port());
    manager.hand_out(server_task("k1", p1));
    manager.hand_out(server_task("k2", p2));
    manager.wait_state("k1", "running", 15 * SECOND);
    manager.wait_state("k2", "running", 15 * SECOND);
    manager.hand_out(json!({"id": "kill", "type": "kill_all"}));
    let done = manager.wait_state("kill", "succeeded", 15 * SECOND);
    assert_eq!(done["result"]["stopped"], 2);
    manager.wait_state("k1", "stopped", SECOND);
    manager.wait_state("k2", "stopped", SECOND);
    assert!(port_is_closed(p1) && port_is_closed(p2));
    manager.hand_out(json!({"id": "stop-none", "type": "task_stop", "payload": {"task_id": "k1"}}));
    let failed = manager.wait_state("stop-none", "failed", 10 * SECOND);
    assert_eq!(failed["error"]["kind"], "not_found");
    assert!(zombie_children(agent.child.id()).is_empty());
}

#[test]
fn timeout_fails_the_task_and_stops_the_process() {
    require_tool("iperf3", "iperf3");
    let manager = FakeManager::start();
    let _agent = Agent::with_manager(&manager, &[]);
    let port = free_port();
    manager.hand_out(server_task("t-srv", port));
    manager.wait_state("t-srv", "running", 15 * SECOND);
    let mut task = client_task("t-long", port, json!({"time": 60}));
    task["timeout_s"] = json!(1.5);
    manager.hand_out(task);
    let failed = manager.wait_state("t-long", "failed", 20 * SECOND);
    assert_eq!(failed["error"]["kind"], "timeout", "{failed}");
    let states: Vec<_> = manager
        .updates("t-long")
        .iter()
        .map(|u| u["state"].clone())
        .collect();
    assert_eq!(
        states,
        [json!("accepted"), json!("failed")],
        "accepted after a second, then the timeout"
    );
    eventually("the client gone", 10 * SECOND, || {
        processes_matching(&format!("-p {port} -P")).is_empty()
    });
}

#[test]
fn a_task_handed_out_twice_runs_once_and_its_final_update_is_sent_again() {
    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, &[]);
    manager.hand_out(json!({"id": "twice", "type": "system_info"}));
    let first = manager.wait_state("twice", "succeeded", 10 * SECOND);
    assert_eq!(first["result"]["os"], "linux");
    manager.hand_out(json!({"id": "twice", "type": "system_info"}));
    eventually("the final update sent again", 10 * SECOND, || {
        manager.updates("twice").len() == 2
    });
    let updates = manager.updates("twice");
    assert_eq!(updates[0], updates[1], "the very same update, same seq");
    let runs = agent.output().matches("task twice succeeded").count();
    assert_eq!(runs, 1, "{}", agent.output());
}

#[test]
fn updates_survive_a_manager_answering_503_and_arrive_in_order() {
    require_tool("iperf3", "iperf3");
    let manager = FakeManager::start();
    let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let d = down.clone();
    manager.set_script(move |seen| {
        if seen.path.ends_with("/status") && d.load(std::sync::atomic::Ordering::SeqCst) {
            return Reply::status(503).with_header("Retry-After", "1");
        }
        common::default_reply(seen)
    });
    let agent = Agent::with_manager(&manager, &[]);
    let port = free_port();
    manager.hand_out(server_task("o-srv", port));
    for i in 0..3 {
        manager.hand_out(json!({"id": format!("o-info-{i}"), "type": "system_info"}));
    }
    eventually("the server listening", 15 * SECOND, || {
        !port_is_closed(port)
    });
    manager.hand_out(client_task("o-cli", port, json!({})));
    // Everything finishes while the manager refuses every update.
    eventually("updates pending in the outbox", 30 * SECOND, || {
        let (_, status) = agent.get("/status");
        let status: Value = serde_json::from_str(&status).unwrap();
        status["outbox"]["pending"].as_u64() >= Some(5)
            && status["tasks"].as_array().unwrap().len() == 1
    });
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    let delivered = |id: &str| -> Vec<Value> {
        let path = format!("/v1/agent/tasks/{id}/status");
        let mut out = Vec::new();
        for s in manager.seen().into_iter().filter(|s| s.path == path) {
            if !out.iter().any(|u: &Value| u["seq"] == s.body["seq"])
                && !down.load(std::sync::atomic::Ordering::SeqCst)
            {
                out.push(s.body);
            }
        }
        out
    };
    manager.wait_state("o-cli", "succeeded", 30 * SECOND);
    eventually("every update delivered", 30 * SECOND, || {
        (0..3).all(|i| !delivered(&format!("o-info-{i}")).is_empty())
            && delivered("o-srv").len() == 1
    });
    // In order per task: sequence numbers only ever grow, from 1.
    for id in ["o-srv", "o-cli", "o-info-0", "o-info-1", "o-info-2"] {
        let all: Vec<u64> = seqs(&manager.updates(id));
        assert_eq!(all.first(), Some(&1), "{id}: {all:?}");
        assert!(
            all.windows(2).all(|w| w[0] <= w[1]),
            "{id} out of order: {all:?}"
        );
    }
    eventually("an empty outbox", 10 * SECOND, || {
        agent.get("/metrics").1.contains("outpost_outbox_pending 0")
    });
}

#[test]
fn kill_9_mid_task_then_restart_leaves_nothing_behind() {
    require_tool("iperf3", "iperf3");
    let manager = FakeManager::start();
    let state = TempDir::new("crash");
    let state_path = state.path().to_path_buf();
    let env = [
        ("OUTPOST_MANAGER_URL", manager.base.as_str()),
        ("OUTPOST_AGENT_KEY", KEY),
        ("OUTPOST_HEARTBEAT_INTERVAL", "200ms"),
        ("OUTPOST_STOP_GRACE", "2s"),
    ];
    let mut agent = Agent::start_in(state, &env, &[]);
    let port = free_port();
    manager.hand_out(server_task("c-srv", port));
    manager.wait_state("c-srv", "running", 15 * SECOND);
    manager.hand_out(client_task("c-cli", port, json!({"time": 60})));
    manager.wait_state("c-cli", "accepted", 15 * SECOND);
    let old = processes_matching(&format!("-p {port}"));
    assert_eq!(old.len(), 2, "server and client running: {old:?}");

    agent.signal(Signal::SIGKILL);
    agent.wait_exit(5 * SECOND);
    assert!(
        !processes_matching(&format!("-p {port}")).is_empty(),
        "orphans survive the agent's death"
    );

    // Same state directory, new instance.
    let restarted = TempDir(state_path.clone());
    let agent2 = Agent::start_in(restarted, &env, &[]);
    for id in ["c-srv", "c-cli"] {
        let failed = manager.wait_state(id, "failed", 20 * SECOND);
        assert_eq!(failed["error"]["kind"], "agent_restarted", "{failed}");
    }
    eventually("no process of the old instance", 10 * SECOND, || {
        processes_matching(&format!("-p {port}")).is_empty()
    });
    assert!(port_is_closed(port));
    // The tasks are final now: handed out again, they do not run.
    manager.hand_out(server_task("c-srv", port));
    std::thread::sleep(SECOND); // give a wrong second run the chance to show
    assert!(port_is_closed(port));
    assert!(zombie_children(agent2.child.id()).is_empty());
    std::mem::forget(agent); // its state dir now belongs to agent2
}

#[test]
fn sigterm_stops_children_and_records_their_states() {
    require_tool("iperf3", "iperf3");
    let manager = FakeManager::start();
    let mut agent = Agent::with_manager(&manager, &[("OUTPOST_STOP_GRACE", "2s")]);
    let port = free_port();
    manager.hand_out(server_task("s-srv", port));
    manager.wait_state("s-srv", "running", 15 * SECOND);
    manager.hand_out(client_task("s-cli", port, json!({"time": 60})));
    manager.wait_state("s-cli", "accepted", 15 * SECOND);
    let asked = Instant::now();
    agent.signal(Signal::SIGTERM);
    assert_eq!(
        agent.wait_exit(10 * SECOND).code(),
        Some(0),
        "{}",
        agent.output()
    );
    assert!(asked.elapsed() < 5 * SECOND);
    manager.wait_state("s-srv", "stopped", SECOND);
    let failed = manager.wait_state("s-cli", "failed", SECOND);
    assert_eq!(failed["error"]["kind"], "agent_stopped");
    assert!(processes_matching(&format!("-p {port}")).is_empty());
}

#[test]
fn spool_mode_without_a_manager() {
    let state = TempDir::new("spool");
    let inbox = state.path().join("state/inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(
        inbox.join("one.json"),
        json!({"id": "sp-1", "type": "system_info"}).to_string(),
    )
    .unwrap();
    std::fs::write(inbox.join("garbage.json"), "{not json").unwrap();
    std::fs::write(
        inbox.join("badid.json"),
        json!({"id": "a/b", "type": "system_info"}).to_string(),
    )
    .unwrap();
    std::fs::write(
        inbox.join("invalid.json"),
        json!({"id": "sp-2", "type": "iperf_client_run", "payload": {"server": "-x"}}).to_string(),
    )
    .unwrap();
    let agent = Agent::start_in(state, &[], &[]);
    let results = agent.state_dir().join("results");
    eventually("results written", 10 * SECOND, || {
        results.join("sp-1.json").exists() && results.join("sp-2.json").exists()
    });
    let one: Value =
        serde_json::from_slice(&std::fs::read(results.join("sp-1.json")).unwrap()).unwrap();
    assert_eq!(one["state"], "succeeded");
    assert_eq!(one["result"]["os"], "linux");
    let two: Value =
        serde_json::from_slice(&std::fs::read(results.join("sp-2.json")).unwrap()).unwrap();
    assert_eq!(two["state"], "rejected");
    assert_eq!(two["error"]["kind"], "invalid_payload");
    let rejected = agent.state_dir().join("inbox/rejected");
    eventually("bad files set aside", 10 * SECOND, || {
        rejected.join("garbage.json").exists() && rejected.join("badid.json").exists()
    });
    let why = std::fs::read_to_string(rejected.join("garbage.json.error")).unwrap();
    assert!(why.contains("JSON"), "{why}");
    assert!(
        std::fs::read_to_string(rejected.join("badid.json.error"))
            .unwrap()
            .contains("id")
    );
    eventually("inbox emptied", 5 * SECOND, || {
        std::fs::read_dir(agent.state_dir().join("inbox"))
            .unwrap()
            .flatten()
            .all(|e| e.path().is_dir())
    });
    // A spooled id is in the same ledger: dropping it again does not rerun it.
    std::fs::write(
        agent.state_dir().join("inbox/again.json"),
        json!({"id": "sp-1", "type": "system_info"}).to_string(),
    )
    .unwrap();
    eventually("the repeat consumed", 5 * SECOND, || {
        !agent.state_dir().join("inbox/again.json").exists()
    });
    assert_eq!(agent.output().matches("task sp-1 succeeded").count(), 1);
}

/// Section 4.2: where no delegated cgroup v2 subtree exists (this
/// machine's cgroups are v1, in a container), a task that asks for limits
/// is never run without them, and register says so.
#[test]
fn limits_are_rejected_where_they_cannot_be_enforced() {
    let manager = FakeManager::start();
    let _agent = Agent::with_manager(&manager, &[]);
    let register = manager.wait_for("register", 10 * SECOND, |seen| {
        seen.iter().any(|s| s.path == "/v1/agent/register")
    });
    let body = &register
        .iter()
        .find(|s| s.path == "/v1/agent/register")
        .unwrap()
        .body;
    assert_eq!(body["capabilities"]["cgroups"], false, "{body}");
    let port = free_port();
    manager.hand_out(json!({"id": "lim-srv", "type": "iperf_server_start",
        "payload": {"port": port, "limits": {"memory_max_bytes": 67108864}}}));
    manager.hand_out(json!({"id": "lim-bad", "type": "iperf_client_run",
        "payload": {"server": "127.0.0.1", "limits": {"memory_max_bytes": 1000}}}));
    manager.hand_out(json!({"id": "lim-cpu", "type": "collector_start",
        "payload": {"name": "lim", "config": "x", "limits": {"cpu_max_percent": 0}}}));
    let rejected = manager.wait_state("lim-srv", "rejected", 10 * SECOND);
    assert_eq!(
        rejected["error"]["kind"], "limits_unavailable",
        "{rejected}"
    );
    let bad = manager.wait_state("lim-bad", "rejected", 10 * SECOND);
    assert_eq!(bad["error"]["kind"], "invalid_payload", "{bad}");
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("limits.memory_max_bytes: 1000"),
        "{bad}"
    );
    let cpu = manager.wait_state("lim-cpu", "rejected", 10 * SECOND);
    assert!(
        cpu["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("limits.cpu_max_percent: 0"),
        "{cpu}"
    );
    // Nothing ran: the port was never listened on.
    assert!(common::port_is_closed(port));
    // The same server without limits runs as it always did, and its final
    // update has no usage (there is no cgroup to measure it on).
    manager.hand_out(json!({"id": "nolim-srv", "type": "iperf_server_start",
        "payload": {"port": port}}));
    manager.wait_state("nolim-srv", "running", 10 * SECOND);
    manager.hand_out(json!({"id": "nolim-stop", "type": "task_stop",
        "payload": {"task_id": "nolim-srv"}}));
    let stopped = manager.wait_state("nolim-srv", "stopped", 20 * SECOND);
    assert!(stopped.get("usage").is_none(), "{stopped}");
}
