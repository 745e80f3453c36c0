//! Broken storage: state files that are truncated or corrupt when the agent
//! starts, and a state directory on a small filesystem that fills up while
//! tasks run (a tmpfs mounted by the test, so it needs root, as the
//! README's test command has).
//!
//! What must hold: a bad file means a clean start with a log line naming
//! it, never a crash loop; a full disk means the agent keeps serving health
//! and heartbeats, takes no new task, says so in `/status` and `/metrics`,
//! and picks up where it was once space returns, without losing an update.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Agent, FakeManager, KEY, TempDir, eventually, free_port, require_tool};
use serde_json::{Value, json};

const SECOND: Duration = Duration::from_secs(1);

fn status(agent: &Agent) -> Value {
    let (code, body) = agent.get("/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn metric(agent: &Agent, name: &str) -> f64 {
    let (_, body) = agent.get("/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{body}"))
}

#[test]
fn corrupt_and_truncated_state_files_mean_a_clean_start_with_a_log_line() {
    let manager = FakeManager::start();
    let state = TempDir::new("broken-files");
    let dir = state.path().join("state");
    std::fs::create_dir_all(dir.join("outbox")).unwrap();
    std::fs::write(dir.join("identity.json"), b"\x00\xff{\"agent_id\": ").unwrap();
    // A whole record, a line of binary garbage, a whole record, a torn tail.
    let done = json!({"id": "t-done", "type": "system_info", "origin": "manager",
        "state": "succeeded", "seq": 1, "finished": 1,
        "last": {"task_id": "t-done", "seq": 1, "state": "succeeded", "at": "2026-11-22T08:31:40Z"}});
    let running = json!({"id": "t-cut", "type": "system_info", "origin": "manager",
        "state": "accepted", "seq": 0});
    let mut ledger = format!("{done}\n").into_bytes();
    ledger.extend_from_slice(b"\xde\xad\xbe\xef\x00{{{\n");
    ledger.extend_from_slice(format!("{running}\n").as_bytes());
    ledger.extend_from_slice(b"{\"id\":\"t-torn\",\"ty");
    std::fs::write(dir.join("ledger.jsonl"), ledger).unwrap();
    std::fs::write(
        dir.join("outbox/00000000000000000007.json"),
        b"{\"task_id\":\"t-x\",\"se",
    )
    .unwrap();
    std::fs::write(dir.join("outbox/00000000000000000008.json"), b"").unwrap();
    std::fs::write(dir.join("collectors.json"), b"[1, 2").unwrap();
    let env = [
        ("OUTPOST_MANAGER_URL", manager.base.as_str()),
        ("OUTPOST_AGENT_KEY", KEY),
        ("OUTPOST_HEARTBEAT_INTERVAL", "200ms"),
    ];
    let state_path = state.path().to_path_buf();
    let mut agent = Agent::start_in(state, &env, &[]);
    eventually("registered", 10 * SECOND, || agent.get("/ready").0 == 200);
    let out = agent.output();
    for named in [
        "identity.json",
        "ledger.jsonl: skipped 2 unreadable line(s)",
        "00000000000000000007.json is unreadable",
        "00000000000000000008.json is unreadable",
        "collectors.json",
    ] {
        assert!(out.contains(named), "no log line naming {named}:\n{out}");
    }
    // The unreadable identity is set aside: the agent registered afresh.
    let register = &manager.seen_at("/v1/agent/register")[0];
    assert!(register.body["agent_id"].is_null(), "{}", register.body);
    assert!(dir.join("identity.json.corrupt").exists());
    assert!(dir.join("collectors.json.corrupt").exists());
    assert!(
        dir.join("outbox/corrupt/00000000000000000007.json")
            .exists()
    );
    // What was readable is kept: the cut-off task is settled, the finished
    // one is not run again but its final state is sent again.
    let cut = manager.wait_state("t-cut", "failed", 10 * SECOND);
    assert_eq!(cut["error"]["kind"], "agent_restarted");
    manager.hand_out(json!({"id": "t-done", "type": "system_info"}));
    let again = manager.wait_state("t-done", "succeeded", 10 * SECOND);
    assert_eq!(again["seq"], 1);
    assert!(again.get("result").is_none(), "not run again: {again}");
    // And it works: a new task runs.
    manager.hand_out(json!({"id": "t-new", "type": "system_info"}));
    manager.wait_state("t-new", "succeeded", 10 * SECOND);

    // A second start finds nothing to complain about: no crash loop, no
    // repeated warnings.
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(agent.wait_exit(20 * SECOND).code(), Some(0));
    std::mem::forget(agent);
    let again = Agent::start_in(TempDir(state_path), &env, &[]);
    eventually("registered again", 10 * SECOND, || {
        again.get("/ready").0 == 200
    });
    let out = again.output();
    assert!(
        !out.contains("unreadable") && !out.contains("corrupt"),
        "a clean state after the first start:\n{out}"
    );
}

/// A tmpfs of a few MiB, mounted for one test and unmounted after it.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(tag: &str, size: &str) -> Tmpfs {
        let dir = TempDir::new(tag).0.clone();
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} (this test needs root, as the README's test command has): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    /// Writes a file until the filesystem refuses more.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        for chunk in [64 * 1024, 4096, 512, 1] {
            let block = vec![0u8; chunk];
            while file.write_all(&block).is_ok() {}
        }
        let _ = file.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ledger_state(dir: &Path, id: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("ledger.jsonl")).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["id"] == id)
        .and_then(|r| r["state"].as_str().map(String::from))
}

#[test]
fn a_full_disk_pauses_taking_tasks_keeps_serving_and_recovers() {
    require_tool("iperf3", "iperf3");
    let fs = Tmpfs::mount("full-disk", "4m");
    let manager = FakeManager::start();
    let env = [
        ("OUTPOST_MANAGER_URL", manager.base.as_str()),
        ("OUTPOST_AGENT_KEY", KEY),
        ("OUTPOST_HEARTBEAT_INTERVAL", "200ms"),
        ("OUTPOST_STOP_GRACE", "2s"),
    ];
    let mut agent = Agent::start_in(TempDir(fs.dir.clone()), &env, &[]);
    let dir = agent.state_dir();
    manager.hand_out(json!({"id": "before", "type": "system_info"}));
    manager.wait_state("before", "succeeded", 15 * SECOND);
    let port = free_port();
    manager.hand_out(json!({"id": "srv", "type": "iperf_server_start", "payload": {"port": port}}));
    manager.wait_state("srv", "running", 15 * SECOND);
    manager.hand_out(json!({"id": "cli", "type": "iperf_client_run",
        "payload": {"server": "127.0.0.1", "port": port, "time": 3}}));
    manager.wait_state("cli", "accepted", 15 * SECOND);
    // The manager has the update before the agent removes its outbox file:
    // a removal after the fill would free the block the next ledger record
    // needs, and the task claimed on a "full" disk would run.
    eventually(
        "the outbox files of sent updates removed",
        10 * SECOND,
        || {
            std::fs::read_dir(dir.join("outbox"))
                .unwrap()
                .filter_map(|e| e.ok())
                .all(|e| !e.file_name().to_string_lossy().ends_with(".json"))
        },
    );

    let filler = fs.fill();
    // The ledger's last page still has room; blank lines (which a replay
    // skips) use it up, so its next record needs space that is not there.
    let mut ledger = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("ledger.jsonl"))
        .unwrap();
    for _ in 0..8192 {
        if ledger.write_all(b"\n").is_err() {
            break;
        }
    }
    // A task claimed now cannot be recorded: it is not run, and waits.
    manager.hand_out(json!({"id": "during", "type": "system_info"}));
    manager.wait_for("the claim of the task", 10 * SECOND, |_| {
        manager.queued() == 0
    });
    // The client's final state cannot be written: it is sent all the same.
    let done = manager.wait_state("cli", "succeeded", 30 * SECOND);
    assert!(done["result"]["summary"]["sent_bps"].as_f64().unwrap() > 0.0);
    eventually("the fault in /status", 10 * SECOND, || {
        status(&agent)["storage"]["ok"] == false
    });
    let s = status(&agent);
    assert!(
        s["storage"]["error"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{s}"
    );
    assert_eq!(s["storage"]["taking_tasks"], false);
    assert_eq!(metric(&agent, "outpost_storage_ok"), 0.0);
    assert!(metric(&agent, "outpost_storage_write_errors_total") >= 1.0);
    let (code, health) = agent.get("/health");
    assert_eq!(code, 200);
    assert!(health.contains("\"storage_ok\":false"), "{health}");
    assert!(
        agent
            .output()
            .contains("no new tasks are taken until it can"),
        "{}",
        agent.output()
    );

    // Heartbeats go on; claims do not. A claim already in flight when the
    // fault came is over within the fake manager's one-second hold (a task
    // it brought would not be taken, and this fake does not hand it out
    // again as a real manager would), so the count is taken after it.
    let ten_more_heartbeats = || {
        let beats = manager.seen_at("/v1/agent/heartbeat").len();
        manager.wait_for("ten more heartbeats", 20 * SECOND, |seen| {
            seen.iter()
                .filter(|s| s.path == "/v1/agent/heartbeat")
                .count()
                >= beats + 10
        });
    };
    ten_more_heartbeats();
    let claims = manager.seen_at("/v1/agent/tasks/claim").len();
    manager.hand_out(json!({"id": "after", "type": "system_info"}));
    ten_more_heartbeats();
    assert_eq!(
        manager.seen_at("/v1/agent/tasks/claim").len(),
        claims,
        "claimed while the disk was full"
    );
    assert!(manager.updates("after").is_empty());
    assert_eq!(manager.queued(), 1, "the task waits at the manager");

    assert!(
        manager.updates("during").is_empty(),
        "not run on a full disk"
    );
    assert!(
        agent.output().contains("task during not taken"),
        "{}",
        agent.output()
    );

    // Space returns: the fault clears, what was kept in memory is written,
    // the task that waited runs, once, and the queued one is taken.
    std::fs::remove_file(&filler).unwrap();
    manager.wait_state("during", "succeeded", 20 * SECOND);
    manager.wait_state("after", "succeeded", 20 * SECOND);
    let during = manager.updates("during");
    assert_eq!(during.len(), 1, "{during:?}");
    assert_eq!(during[0]["seq"], 1);
    eventually("the fault cleared", 10 * SECOND, || {
        status(&agent)["storage"]["ok"] == true
    });
    assert_eq!(metric(&agent, "outpost_storage_ok"), 1.0);
    assert!(agent.output().contains("can be written again"));
    assert_eq!(ledger_state(&dir, "cli").as_deref(), Some("succeeded"));

    // Across a restart the client is still known as done: handed out
    // again, it is not run, and the same final update is sent again.
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(agent.wait_exit(20 * SECOND).code(), Some(0));
    std::mem::forget(agent);
    let restarted = Agent::start_in(TempDir(fs.dir.clone()), &env, &[]);
    let before = manager.updates("cli").len();
    manager.hand_out(json!({"id": "cli", "type": "iperf_client_run",
        "payload": {"server": "127.0.0.1", "port": port, "time": 3}}));
    manager.wait_for("cli's final update again", 15 * SECOND, |_| {
        manager.updates("cli").len() > before
    });
    let updates = manager.updates("cli");
    let resent = updates.last().unwrap();
    assert_eq!(resent["state"], "succeeded");
    assert_eq!(resent["seq"], done["seq"]);
    assert_eq!(
        resent["result"], done["result"],
        "the same update, not a new run"
    );
    drop(restarted);
}
