//! Collectors end to end: Debian's collectd as the real collector, and
//! small shell scripts as collectors that crash, exit or start badly
//! (`OUTPOST_COLLECTOR_CMD=/bin/sh {config}` makes the config the program).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{
    Agent, FakeManager, KEY, TempDir, config_server, eventually, processes_matching, require_tool,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

const SECOND: Duration = Duration::from_secs(1);
const SH: &str = "/bin/sh {config}";

fn collector(id: &str, name: &str, config: &str) -> Value {
    json!({"id": id, "type": "collector_start", "payload": {"name": name, "config": config}})
}

/// A shell "collector" that runs until stopped; `marker` tells it apart in
/// the process list.
fn sleeper(marker: &str) -> String {
    format!("# {marker}\nexec sleep 3600 # {marker}\n")
}

fn pids_of(marker: &str) -> Vec<i32> {
    processes_matching("sleep 3600")
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|e| String::from_utf8_lossy(&e).contains(marker))
        })
        .collect()
}

#[test]
fn collectd_runs_with_its_variables_substituted_in_a_private_file() {
    require_tool("collectd", "collectd-core");
    let manager = FakeManager::start();
    let work = TempDir::new("collectd");
    let base = work.path().display().to_string();
    let config = "Hostname \"${HOST}\"\nFQDNLookup false\nBaseDir \"${DIR}\"\nPIDFile \"${DIR}/collectd.pid\"\n\
                  TypesDB \"/usr/share/collectd/types.db\"\nInterval 1\nLoadPlugin load\nLoadPlugin csv\n\
                  <Plugin csv>\n  DataDir \"${DIR}/csv\"\n</Plugin>\n# a literal: $${HOST}\n";
    let agent = Agent::with_manager(
        &manager,
        &[("OUTPOST_COLLECTOR_CMD", "collectd -f -C {config}")],
    );
    manager.hand_out(json!({"id": "cd-1", "type": "collector_start", "payload": {
        "name": "collectd", "config": config, "variables": {"HOST": "edge-17", "DIR": base}
    }}));
    let running = manager.wait_state("cd-1", "running", 20 * SECOND);
    assert!(running["pid"].as_i64().unwrap() > 0);
    let path = agent.state_dir().join("configs/collectd.conf");
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(written.starts_with("Hostname \"edge-17\""), "{written}");
    assert!(written.contains(&format!("BaseDir \"{base}\"")));
    assert!(written.contains("# a literal: ${HOST}"));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    eventually("collectd writing load values", 15 * SECOND, || {
        work.path().join("csv/edge-17/load").is_dir()
    });
    // Its CPU and memory show in the reports.
    eventually("a report with usage", 10 * SECOND, || {
        let (_, status) = agent.get("/status");
        let status: Value = serde_json::from_str(&status).unwrap();
        status["tasks"][0]["rss_bytes"]
            .as_u64()
            .is_some_and(|r| r > 0)
            && status["tasks"][0]["name"] == "collectd"
    });
    let log = agent.state_dir().join("logs/collectd.log");
    eventually("collectd's output in its log file", 10 * SECOND, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("Initialization complete"))
    });
}

#[test]
fn config_checks_http_checksum_and_missing_variables() {
    let manager = FakeManager::start();
    let server = config_server(vec![
        ("/ok.conf", 200, sleeper("dl-ok")),
        ("/moved", 302, "/ok.conf".to_string()),
        ("/big.conf", 200, "x".repeat(1024 * 1024 + 10)),
    ]);
    let _agent = Agent::with_manager(&manager, &[("OUTPOST_COLLECTOR_CMD", SH)]);
    manager.hand_out(json!({"id": "h-1", "type": "collector_start", "payload": {"config_url": format!("{server}/ok.conf")}}));
    let rejected = manager.wait_state("h-1", "rejected", 10 * SECOND);
    assert!(
        rejected["error"]["message"]
            .as_str()
            .unwrap()
            .contains("OUTPOST_ALLOW_HTTP_CONFIG"),
        "{rejected}"
    );
    manager.hand_out(
        json!({"id": "v-1", "type": "collector_start", "payload": {"config": "x ${MISSING} y"}}),
    );
    let rejected = manager.wait_state("v-1", "rejected", 10 * SECOND);
    assert!(
        rejected["error"]["message"]
            .as_str()
            .unwrap()
            .contains("${MISSING}"),
        "{rejected}"
    );
    manager.hand_out(json!({"id": "s-1", "type": "collector_start", "payload": {"config": "x", "sha256": "0".repeat(64)}}));
    assert_eq!(
        manager.wait_state("s-1", "rejected", 10 * SECOND)["error"]["kind"],
        "checksum_mismatch"
    );
    drop(_agent);

    // A fresh manager: the old agent's long poll may still hold a queue slot.
    let manager = FakeManager::start();
    let _agent = Agent::with_manager(
        &manager,
        &[
            ("OUTPOST_COLLECTOR_CMD", SH),
            ("OUTPOST_ALLOW_HTTP_CONFIG", "true"),
        ],
    );
    let good = common_sha(&sleeper("dl-ok"));
    manager.hand_out(json!({"id": "d-1", "type": "collector_start", "payload": {
        "name": "dl", "config_url": format!("{server}/moved"), "sha256": good
    }}));
    manager.wait_state("d-1", "running", 20 * SECOND);
    manager.hand_out(json!({"id": "d-2", "type": "collector_start", "payload": {
        "name": "dl2", "config_url": format!("{server}/ok.conf"), "sha256": "ab".repeat(32)
    }}));
    let failed = manager.wait_state("d-2", "failed", 20 * SECOND);
    assert_eq!(failed["error"]["kind"], "checksum_mismatch", "{failed}");
    manager.hand_out(json!({"id": "d-3", "type": "collector_start", "payload": {"config_url": format!("{server}/nope")}}));
    let failed = manager.wait_state("d-3", "failed", 20 * SECOND);
    assert_eq!(failed["error"]["kind"], "download_failed");
    assert!(
        failed["error"]["message"].as_str().unwrap().contains("404"),
        "{failed}"
    );
    manager.hand_out(json!({"id": "d-4", "type": "collector_start", "payload": {"config_url": format!("{server}/big.conf")}}));
    let failed = manager.wait_state("d-4", "failed", 20 * SECOND);
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("larger than"),
        "{failed}"
    );
}

fn common_sha(text: &str) -> String {
    let path = std::env::temp_dir().join(format!("outpost-sha-it-{}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_killed_collector_comes_back_with_backoff_and_counts_restarts() {
    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, &[("OUTPOST_COLLECTOR_CMD", SH)]);
    manager.hand_out(collector("k-1", "crashy", &sleeper("crashy")));
    manager.wait_state("k-1", "running", 20 * SECOND);
    let first = pids_of("k-1");
    assert_eq!(first.len(), 1, "{first:?}");
    kill(Pid::from_raw(first[0]), Signal::SIGKILL).unwrap();
    let killed = std::time::Instant::now();
    eventually("a new process", 10 * SECOND, || {
        pids_of("k-1").iter().any(|p| *p != first[0])
    });
    assert!(
        killed.elapsed() >= Duration::from_millis(900),
        "restarted after a 1 s backoff"
    );
    eventually("the restart counted", 10 * SECOND, || {
        let (_, status) = agent.get("/status");
        let status: Value = serde_json::from_str(&status).unwrap();
        status["tasks"][0]["restarts"] == 1
    });
    let (_, metrics) = agent.get("/metrics");
    assert!(
        metrics.contains("outpost_collector_restarts_total{name=\"crashy\"} 1"),
        "{metrics}"
    );
    // No new state for the task: it stays running throughout.
    assert!(
        manager
            .updates("k-1")
            .iter()
            .all(|u| u["state"] == "running" || u["state"] == "accepted")
    );
}

#[test]
fn a_bad_replacement_rolls_back_to_the_previous_config() {
    let manager = FakeManager::start();
    let agent = Agent::with_manager(
        &manager,
        &[("OUTPOST_COLLECTOR_CMD", SH), ("OUTPOST_STOP_GRACE", "2s")],
    );
    manager.hand_out(collector("r-1", "otel", &sleeper("good-config")));
    manager.wait_state("r-1", "running", 20 * SECOND);
    manager.hand_out(collector(
        "r-2",
        "otel",
        "echo 'bad config: unknown exporter' >&2\nexit 1\n",
    ));
    let failed = manager.wait_state("r-2", "failed", 20 * SECOND);
    assert!(
        failed["stderr_tail"]
            .as_str()
            .unwrap()
            .contains("unknown exporter"),
        "{failed}"
    );
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("previous config"),
        "{failed}"
    );
    eventually("the good config running again", 10 * SECOND, || {
        pids_of("r-1").len() == 1
    });
    let config = std::fs::read_to_string(agent.state_dir().join("configs/otel.conf")).unwrap();
    assert!(config.contains("good-config"), "{config}");
    assert!(
        manager
            .updates("r-1")
            .iter()
            .all(|u| u["state"] == "running" || u["state"] == "accepted"),
        "the old task stays running"
    );

    // A good replacement takes over: new running, old stopped.
    manager.hand_out(collector("r-3", "otel", &sleeper("better-config")));
    manager.wait_state("r-3", "running", 20 * SECOND);
    manager.wait_state("r-1", "stopped", 5 * SECOND);
    assert_eq!(pids_of("r-3").len(), 1);
    assert!(pids_of("r-1").is_empty());

    // The very same config again: taken over, no restart.
    let pid = pids_of("r-3")[0];
    manager.hand_out(collector("r-4", "otel", &sleeper("better-config")));
    let running = manager.wait_state("r-4", "running", 10 * SECOND);
    manager.wait_state("r-3", "stopped", 5 * SECOND);
    assert_eq!(running["pid"], pid);
    assert!(
        processes_matching("sleep 3600").contains(&pid),
        "same process"
    );
}

#[test]
fn collector_stop_and_kill_all_stop_and_forget() {
    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, &[("OUTPOST_COLLECTOR_CMD", SH)]);
    manager.hand_out(collector("c-1", "one", &sleeper("one")));
    manager.hand_out(collector("c-2", "two", &sleeper("two")));
    manager.wait_state("c-1", "running", 20 * SECOND);
    manager.wait_state("c-2", "running", 20 * SECOND);
    manager.hand_out(json!({"id": "stop-1", "type": "collector_stop", "payload": {"name": "one"}}));
    manager.wait_state("stop-1", "succeeded", 15 * SECOND);
    manager.wait_state("c-1", "stopped", SECOND);
    assert!(pids_of("c-1").is_empty());
    assert!(
        !agent.state_dir().join("configs/one.conf").exists(),
        "forgotten"
    );
    let set = std::fs::read_to_string(agent.state_dir().join("collectors.json")).unwrap();
    assert!(!set.contains("\"one\"") && set.contains("\"two\""), "{set}");
    manager.hand_out(json!({"id": "stop-2", "type": "collector_stop", "payload": {"name": "one"}}));
    assert_eq!(
        manager.wait_state("stop-2", "failed", 10 * SECOND)["error"]["kind"],
        "not_found"
    );

    manager.hand_out(json!({"id": "kill", "type": "kill_all"}));
    assert_eq!(
        manager.wait_state("kill", "succeeded", 15 * SECOND)["result"]["stopped"],
        1
    );
    manager.wait_state("c-2", "stopped", SECOND);
    assert!(pids_of("c-2").is_empty());
    let set = std::fs::read_to_string(agent.state_dir().join("collectors.json")).unwrap();
    assert!(!set.contains("\"two\""), "{set}");
}

#[test]
fn collectors_come_back_after_a_restart_with_the_manager_down() {
    let manager = FakeManager::start();
    let state = TempDir::new("offline");
    let state_path = state.path().to_path_buf();
    let mut agent = Agent::start_in(
        state,
        &[
            ("OUTPOST_MANAGER_URL", manager.base.as_str()),
            ("OUTPOST_AGENT_KEY", KEY),
            ("OUTPOST_COLLECTOR_CMD", SH),
        ],
        &[],
    );
    manager.hand_out(collector("o-1", "offline", &sleeper("offline")));
    manager.wait_state("o-1", "running", 20 * SECOND);
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(15 * SECOND).code(), Some(0));
    assert!(
        pids_of("o-1").is_empty(),
        "a clean stop stops the collector"
    );
    std::mem::forget(agent);

    // The manager is gone: a URL where nothing listens.
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let mut agent = Agent::start_in(
        TempDir(state_path.clone()),
        &[
            ("OUTPOST_MANAGER_URL", &dead),
            ("OUTPOST_AGENT_KEY", KEY),
            ("OUTPOST_COLLECTOR_CMD", SH),
        ],
        &[],
    );
    eventually("the collector back within seconds", 10 * SECOND, || {
        pids_of("o-1").len() == 1
    });

    // kill -9 of the agent, and again: never a duplicate.
    agent.signal(Signal::SIGKILL);
    agent.wait_exit(5 * SECOND);
    assert_eq!(pids_of("o-1").len(), 1, "the orphan survives the agent");
    std::mem::forget(agent);
    let agent = Agent::start_in(
        TempDir(state_path),
        &[
            ("OUTPOST_MANAGER_URL", manager.base.as_str()),
            ("OUTPOST_AGENT_KEY", KEY),
            ("OUTPOST_COLLECTOR_CMD", SH),
        ],
        &[],
    );
    eventually("the collector under the new instance", 15 * SECOND, || {
        let (_, status) = agent.get("/status");
        serde_json::from_str::<Value>(&status).is_ok_and(|s| s["tasks"][0]["state"] == "running")
    });
    assert_eq!(pids_of("o-1").len(), 1, "no duplicate after kill -9");
    // The manager hears `running` again from the new instance.
    eventually("running said again", 10 * SECOND, || {
        manager
            .updates("o-1")
            .iter()
            .filter(|u| u["state"] == "running")
            .count()
            >= 2
    });
}
