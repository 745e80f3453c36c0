//! Security properties checked on a real run: every file the agent keeps is
//! private, and nothing a task says can move a file outside its directory.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{Agent, FakeManager, eventually, free_port};
use serde_json::json;

const SECOND: Duration = Duration::from_secs(1);

/// Every file under `dir` (recursively) with a mode other than 0600, and
/// every directory with a mode other than 0700.
fn loose_modes(dir: &Path) -> Vec<String> {
    let mut loose = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            if mode != 0o700 {
                loose.push(format!("{} {mode:o}", path.display()));
            }
            loose.extend(loose_modes(&path));
        } else if mode != 0o600 {
            loose.push(format!("{} {mode:o}", path.display()));
        }
    }
    loose
}

#[test]
fn every_file_the_agent_keeps_is_0600_in_0700_directories() {
    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, &[("OUTPOST_COLLECTOR_CMD", "/bin/sh {config}")]);
    let inbox = agent.state_dir().join("inbox");
    eventually("the inbox", 10 * SECOND, || inbox.is_dir());
    // Files dropped by an operator with a loose umask.
    for (name, text) in [
        (
            "spooled.json",
            json!({"id": "sec-spool", "type": "system_info"}).to_string(),
        ),
        ("garbage.json", "{{{".to_string()),
    ] {
        let path = inbox.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    manager.hand_out(json!({"id": "sec-info", "type": "system_info"}));
    manager.hand_out(json!({"id": "sec-cli", "type": "iperf_client_run", "payload": {"server": "127.0.0.1", "port": free_port()}}));
    manager.hand_out(json!({"id": "sec-col", "type": "collector_start",
        "payload": {"name": "sec", "config": "echo chatter; echo noise >&2; exec sleep 3600\n"}}));
    manager.wait_state("sec-info", "succeeded", 10 * SECOND);
    manager.wait_state("sec-col", "running", 20 * SECOND);
    let state = agent.state_dir();
    eventually("the spool handled", 10 * SECOND, || {
        state.join("results/sec-spool.json").exists()
            && state.join("inbox/rejected/garbage.json").exists()
    });
    eventually("the collector's log written", 10 * SECOND, || {
        std::fs::read_to_string(state.join("logs/sec.log")).is_ok_and(|t| t.contains("noise"))
    });
    for dir in [
        "outbox",
        "configs",
        "logs",
        "results",
        "inbox",
        "inbox/rejected",
    ] {
        assert!(state.join(dir).is_dir(), "{dir} missing");
    }
    assert!(state.join("ledger.jsonl").exists() && state.join("collectors.json").exists());
    let loose = loose_modes(&state);
    assert!(
        loose.is_empty(),
        "files or directories with loose modes: {loose:#?}"
    );
    let root_mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(root_mode, 0o700);
}

#[test]
fn names_and_ids_never_leave_their_directories() {
    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, &[("OUTPOST_COLLECTOR_CMD", "/bin/sh {config}")]);
    for (id, payload) in [
        (
            "esc-1",
            json!({"name": "../../escaped", "config": "exec sleep 1"}),
        ),
        (
            "esc-2",
            json!({"name": "/tmp/escaped", "config": "exec sleep 1"}),
        ),
        ("esc-3", json!({"name": "a/b", "config": "exec sleep 1"})),
    ] {
        manager.hand_out(json!({"id": id, "type": "collector_start", "payload": payload}));
        let rejected = manager.wait_state(id, "rejected", 10 * SECOND);
        assert!(
            rejected["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("name"),
            "{rejected}"
        );
    }
    for bad in ["../../escaped", "..", "x/../../y"] {
        manager.hand_out(json!({"id": bad, "type": "system_info"}));
    }
    eventually("three bad ids counted", 10 * SECOND, || {
        agent
            .get("/metrics")
            .1
            .contains("outpost_invalid_task_ids_total 3")
    });
    let state = agent.state_dir();
    let parent = state.parent().unwrap();
    let stray: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        stray.len(),
        1,
        "only the state dir in its parent: {stray:?}"
    );
    assert!(!Path::new("/tmp/escaped.conf").exists());
}

#[test]
fn config_urls_at_link_local_metadata_addresses_are_refused() {
    let manager = FakeManager::start();
    // http is allowed, so only the link-local rule stands in the way.
    let agent = Agent::with_manager(
        &manager,
        &[
            ("OUTPOST_COLLECTOR_CMD", "/bin/sh {config}"),
            ("OUTPOST_ALLOW_HTTP_CONFIG", "true"),
        ],
    );
    // A literal address: refused when the task is checked.
    manager.hand_out(
        json!({"id": "meta-literal", "type": "collector_start", "payload": {
        "config_url": "http://169.254.169.254/latest/meta-data/iam/security-credentials/"}}),
    );
    let rejected = manager.wait_state("meta-literal", "rejected", 10 * SECOND);
    assert_eq!(rejected["error"]["kind"], "invalid_payload");
    let message = rejected["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("config_url:") && message.contains("OUTPOST_ALLOW_LINK_LOCAL_CONFIG"),
        "{message}"
    );
    // A name that only resolves there (the decimal form of the same
    // address): refused before anything connects.
    manager.hand_out(
        json!({"id": "meta-name", "type": "collector_start", "payload": {
        "config_url": "http://2852039166/latest/meta-data/"}}),
    );
    let failed = manager.wait_state("meta-name", "failed", 20 * SECOND);
    assert_eq!(failed["error"]["kind"], "download_failed");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("link-local"), "{message}");
    drop(agent);
}
