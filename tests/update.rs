//! In-place agent updates (PROTOCOL 4.3) end to end: the real binary
//! updated to a second real build of this crate (`OUTPOST_BUILD_VERSION`
//! set at build time, built once into `target/update-peer`), to a third
//! whose start-up fails on purpose (`OUTPOST_BUILD_BROKEN_START`), and to
//! small scripts standing in for programs that die or never get ready.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::{Agent, FakeManager, Reply, TempDir, eventually, free_port, processes_matching};
use serde_json::{Value, json};

const SECOND: Duration = Duration::from_secs(1);
const SH: &str = "/bin/sh {config}";
const PEER_VERSION: &str = "0.1.1";
const BROKEN_VERSION: &str = "0.1.2";

/// A build of this crate with `env` set at build time, copied out to
/// `target/update-peer/outpost-<name>`. The builds share one target
/// directory (only this crate is rebuilt when `env` changes), so one at a
/// time.
fn build_peer(name: &str, env: &[(&str, &str)]) -> PathBuf {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _building = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = manifest.join("target/update-peer");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--bin", "outpost", "--target-dir"])
        .arg(&target)
        .envs(env.iter().copied())
        // Without debug info: a debug build with it is about 62 MiB,
        // next to the 64 MiB an update may be, and slow to hash.
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .env("CARGO_PROFILE_DEV_STRIP", "debuginfo")
        .current_dir(manifest)
        .status()
        .expect("run cargo for the peer build");
    assert!(status.success(), "the {name} peer build failed");
    // A new file renamed into place: an earlier copy may be running.
    let out = target.join(format!("outpost-{name}"));
    let tmp = target.join(format!(".outpost-{name}.tmp"));
    std::fs::copy(target.join("debug/outpost"), &tmp).unwrap();
    std::fs::rename(&tmp, &out).unwrap();
    out
}

/// The second build: this crate with another version number.
fn peer() -> &'static Path {
    static PEER: OnceLock<PathBuf> = OnceLock::new();
    PEER.get_or_init(|| build_peer(PEER_VERSION, &[("OUTPOST_BUILD_VERSION", PEER_VERSION)]))
}

/// A third build whose start-up fails where `OUTPOST_BROKEN_START_AT`
/// says, standing in for a version with a start-up bug.
fn broken_peer() -> &'static Path {
    static BROKEN: OnceLock<PathBuf> = OnceLock::new();
    BROKEN.get_or_init(|| {
        build_peer(
            "broken",
            &[
                ("OUTPOST_BUILD_VERSION", BROKEN_VERSION),
                ("OUTPOST_BUILD_BROKEN_START", "1"),
            ],
        )
    })
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn update_task(id: &str, path: &Path, version: &str) -> Value {
    json!({"id": id, "type": "agent_update", "payload": {
        "path": path, "sha256": sha256_of(path), "version": version}})
}

/// A script that answers `--version` and `--check-config` like an agent
/// of `version` would, and otherwise runs `body`.
fn script(dir: &Path, name: &str, version: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do\n  case \"$a\" in\n    --version) echo \"outpost {version}\"; exit 0;;\n    --check-config) echo ok; exit 0;;\n  esac\ndone\n{body}\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn sleeper(marker: &str) -> String {
    format!("# {marker}\nexec sleep 3600 # {marker}\n")
}

fn collector(id: &str) -> Value {
    json!({"id": id, "type": "collector_start", "payload": {"name": id, "config": sleeper(id)}})
}

/// Collector processes whose environment holds every one of `markers`
/// (`;`-separated).
fn pids_of(markers: &str) -> Vec<i32> {
    processes_matching("sleep 3600")
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|e| {
                let env = String::from_utf8_lossy(&e);
                markers.split(';').all(|m| env.contains(m))
            })
        })
        .collect()
}

/// The collector processes of task `id` of this agent (other agents, of
/// tests running meanwhile, may have a task of that name).
fn collector_of(agent: &Agent, id: &str) -> Vec<i32> {
    pids_of(&format!(
        "OUTPOST_TASK={id}\0;OUTPOST_TASK_OWNER={}\0",
        agent.state_dir().display()
    ))
}

/// The agent's open descriptors, the fewest of a few looks (HTTP
/// connections come and go).
fn fewest_fds(pid: u32) -> usize {
    (0..10)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .min()
        .unwrap()
}

fn registrations(manager: &FakeManager) -> Vec<Value> {
    manager
        .seen_at("/v1/agent/register")
        .into_iter()
        .map(|s| s.body)
        .collect()
}

fn status_of(agent: &Agent) -> Value {
    let (_, body) = agent.get("/status");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn an_update_keeps_the_pid_every_child_and_a_running_client() {
    let peer = peer();
    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, &[("OUTPOST_COLLECTOR_CMD", SH)]);
    let pid = agent.child.id();
    let port = free_port();
    manager.hand_out(collector("c-1"));
    manager.hand_out(json!({"id": "srv", "type": "iperf_server_start", "payload": {"port": port}}));
    manager.wait_state("c-1", "running", 20 * SECOND);
    manager.wait_state("srv", "running", 20 * SECOND);
    let collector_pids = pids_of("c-1");
    assert_eq!(collector_pids.len(), 1, "{collector_pids:?}");
    manager.hand_out(json!({"id": "cli", "type": "iperf_client_run",
        "payload": {"server": "127.0.0.1", "port": port, "time": 4}}));
    eventually("the client runs", 20 * SECOND, || {
        status_of(&agent)["tasks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["id"] == "cli" && t["pid"].is_number()))
    });
    let status = status_of(&agent);
    let pid_of = |id: &str, status: &Value| {
        status["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .map(|t| t["pid"].clone())
    };
    let (server_pid, client_pid) = (pid_of("srv", &status), pid_of("cli", &status));
    let before = registrations(&manager).len();
    let fds_before = fewest_fds(pid);

    manager.hand_out(update_task("up-1", peer, PEER_VERSION));
    let done = manager.wait_state("up-1", "succeeded", 60 * SECOND);
    assert_eq!(
        done["result"],
        json!({"from": env!("CARGO_PKG_VERSION"), "to": PEER_VERSION})
    );

    // The same process, registered again as the new version.
    assert_eq!(agent.child.id(), pid);
    let regs = registrations(&manager);
    assert!(regs.len() > before);
    let last = regs.last().unwrap();
    assert_eq!(last["agent_version"], PEER_VERSION);
    assert_ne!(last["instance_id"], regs[0]["instance_id"]);
    assert!(
        last["capabilities"]["task_types"]
            .as_array()
            .unwrap()
            .contains(&json!("agent_update"))
    );
    // Every child kept, under the same pid, and still supervised.
    assert_eq!(pids_of("c-1"), collector_pids);
    let status = status_of(&agent);
    assert_eq!(status["version"], PEER_VERSION, "{status}");
    assert_eq!(pid_of("srv", &status), server_pid);
    // The client's result still arrives, through the new image.
    let result = manager.wait_state("cli", "succeeded", 30 * SECOND);
    assert_eq!(Some(result["pid"].clone()), client_pid);
    assert!(
        result["result"]["summary"]["sent_bps"].as_f64().unwrap() > 0.0,
        "{result}"
    );
    // Nothing was reported twice or out of order for the collector.
    let states: Vec<Value> = manager
        .updates("c-1")
        .iter()
        .map(|u| u["seq"].clone())
        .collect();
    assert!(
        states.windows(2).all(|w| w[0].as_u64() < w[1].as_u64()),
        "{states:?}"
    );
    assert!(
        manager
            .updates("c-1")
            .iter()
            .all(|u| u["state"] != "failed")
    );
    // No zombies: the new image reaps what the old one started.
    assert!(common::zombie_children(pid).is_empty());
    let (code, _) = agent.get("/health");
    assert_eq!(code, 200);
    // Nothing but what the handover names crossed the exec: the new image
    // holds what the old one held (a leak would add its descriptors).
    let fds_after = fewest_fds(pid);
    eprintln!("descriptors: {fds_before} before the update, {fds_after} after");
    assert!(
        fds_after <= fds_before + 1,
        "{fds_before} descriptors before, {fds_after} after"
    );
    // Kept: the program that runs now (the previous one is installed).
    let kept: Vec<String> = std::fs::read_dir(agent.state_dir().join("programs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].starts_with(PEER_VERSION), "{kept:?}");
}

#[test]
fn a_checksum_mismatch_or_a_refused_config_change_nothing() {
    let dir = TempDir::new("update-bad");
    let refuses = dir.path().join("refuses");
    std::fs::write(
        &refuses,
        "#!/bin/sh\ncase \"$*\" in *--version*) echo outpost 9.0.0;; *) echo 'OUTPOST_X: no such setting' >&2; exit 78;; esac\n",
    )
    .unwrap();
    std::fs::set_permissions(&refuses, std::fs::Permissions::from_mode(0o755)).unwrap();
    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, &[]);
    let pid = agent.child.id();

    let mut wrong = update_task("bad-sum", &refuses, "9.0.0");
    wrong["payload"]["sha256"] = json!("0".repeat(64));
    manager.hand_out(wrong);
    let failed = manager.wait_state("bad-sum", "failed", 30 * SECOND);
    assert_eq!(failed["error"]["kind"], "checksum_mismatch", "{failed}");

    manager.hand_out(update_task("refused", &refuses, "9.0.0"));
    let failed = manager.wait_state("refused", "failed", 30 * SECOND);
    assert_eq!(failed["error"]["kind"], "update_failed", "{failed}");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("no such setting"), "{message}");

    manager.hand_out(json!({"id": "no-version", "type": "agent_update",
        "payload": {"path": refuses, "sha256": "0".repeat(64)}}));
    let rejected = manager.wait_state("no-version", "rejected", 30 * SECOND);
    assert!(
        rejected["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("version")
    );

    // Same process, same version, nothing kept to run at the next start.
    assert_eq!(agent.child.id(), pid);
    assert_eq!(status_of(&agent)["version"], env!("CARGO_PKG_VERSION"));
    let record: Value = std::fs::read(agent.state_dir().join("programs/update.json"))
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap_or(Value::Null);
    assert!(record["current"].is_null(), "{record}");
    assert_eq!(registrations(&manager).len(), 1);
}

#[test]
fn updating_to_the_running_version_changes_nothing() {
    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, &[]);
    let me = Path::new(common::binary());
    manager.hand_out(update_task("same", me, env!("CARGO_PKG_VERSION")));
    let done = manager.wait_state("same", "succeeded", 30 * SECOND);
    let v = env!("CARGO_PKG_VERSION");
    assert_eq!(done["result"], json!({"from": v, "to": v}));
    assert_eq!(registrations(&manager).len(), 1);
    assert!(!agent.state_dir().join("programs/update.json").exists());
}

#[test]
fn a_version_that_dies_at_start_is_rolled_back_with_its_stderr() {
    let dir = TempDir::new("update-dies");
    let dies = script(
        dir.path(),
        "dies",
        "7.0.0",
        "echo 'fatal: cannot start the new agent' >&2\nexit 1",
    );
    let manager = FakeManager::start();
    let mut agent = Agent::with_manager(&manager, &[("OUTPOST_COLLECTOR_CMD", SH)]);
    manager.hand_out(collector("c-d"));
    manager.wait_state("c-d", "running", 20 * SECOND);
    manager.hand_out(update_task("up-dies", &dies, "7.0.0"));
    // The process is the script now, and it dies.
    let status = agent.wait_exit(30 * SECOND);
    assert_eq!(status.code(), Some(1));
    // systemd would record how it ended (the unit's ExecStopPost=) and
    // start the agent again; here the test does both.
    std::fs::write(agent.state_dir().join("last-exit"), "exit-code exited 1\n").unwrap();
    let state = std::mem::replace(&mut agent.state, TempDir::new("unused"));
    let env = [
        ("OUTPOST_MANAGER_URL", manager.base.as_str()),
        ("OUTPOST_AGENT_KEY", common::KEY),
        ("OUTPOST_HEARTBEAT_INTERVAL", "200ms"),
        ("OUTPOST_COLLECTOR_CMD", SH),
    ];
    let mut again = Agent::start_in(state, &env, &[]);
    let failed = manager.wait_state("up-dies", "failed", 30 * SECOND);
    assert_eq!(failed["error"]["kind"], "update_failed", "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("(before it was ready): exited with status 1; version"),
        "{failed}"
    );
    assert!(!again.state_dir().join("last-exit").exists());
    assert!(
        failed["stderr_tail"]
            .as_str()
            .unwrap_or_default()
            .contains("fatal: cannot start the new agent"),
        "{failed}"
    );
    // The previous version runs, with its collector (section 6.2).
    assert_eq!(status_of(&again)["version"], env!("CARGO_PKG_VERSION"));
    eventually("the collector runs again", 20 * SECOND, || {
        pids_of("c-d").len() == 1
    });
    // Never started again by itself: a restart stays on this version.
    let record: Value = serde_json::from_slice(
        &std::fs::read(again.state_dir().join("programs/update.json")).unwrap(),
    )
    .unwrap();
    assert!(
        record["trial"].is_null() && record["current"].is_null(),
        "{record}"
    );
    assert_eq!(record["failed"].as_array().unwrap().len(), 1, "{record}");
    // Once more, restarted the way nothing records how it ended (not by
    // systemd, or by an older unit): the report says so. The task goes
    // out after the new instance's second claim: the dead process's long
    // poll, which the manager holds for up to a second, would take it.
    manager.wait_for("two claims of the new instance", 20 * SECOND, |seen| {
        let registered = seen
            .iter()
            .rposition(|s| s.path == "/v1/agent/register")
            .unwrap_or(0);
        seen[registered..]
            .iter()
            .filter(|s| s.path == "/v1/agent/tasks/claim")
            .count()
            >= 2
    });
    manager.hand_out(update_task("up-dies-2", &dies, "7.0.0"));
    assert_eq!(again.wait_exit(30 * SECOND).code(), Some(1));
    let state = std::mem::replace(&mut again.state, TempDir::new("unused"));
    let _third = Agent::start_in(state, &env, &[]);
    let failed = manager.wait_state("up-dies-2", "failed", 30 * SECOND);
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("(before it was ready): its exit status is not known ("),
        "{failed}"
    );
}

/// An agent with collector `id` running, and a manager that answers the
/// peer build's registrations with `status`: the agent, its manager and
/// the collector's pids.
fn peer_registration_answered(status: u16, id: &str) -> (FakeManager, Agent, Vec<i32>) {
    let manager = FakeManager::start();
    manager.set_script(move |seen| {
        if seen.path == "/v1/agent/register" && seen.body["agent_version"] == PEER_VERSION {
            Reply::status(status)
        } else {
            common::default_reply(seen)
        }
    });
    let agent = Agent::with_manager(&manager, &[("OUTPOST_COLLECTOR_CMD", SH)]);
    manager.hand_out(collector(id));
    manager.wait_state(id, "running", 20 * SECOND);
    let pids = collector_of(&agent, id);
    (manager, agent, pids)
}

#[test]
fn a_version_that_never_gets_ready_hands_back_with_every_child_and_its_stderr() {
    let peer = peer();
    // The manager turns the new version away, so it never registers.
    let (manager, agent, collector_pids) = peer_registration_answered(503, "c-n");
    let pid = agent.child.id();
    manager.hand_out(update_task("up-never", peer, PEER_VERSION));
    let failed = manager.wait_state("up-never", "failed", 120 * SECOND);
    assert_eq!(failed["error"]["kind"], "update_failed", "{failed}");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("not ready"), "{message}");
    // Regression: the image taking over again removed the file holding
    // the new version's standard error before the report read it.
    assert!(
        failed["stderr_tail"]
            .as_str()
            .unwrap_or_default()
            .contains("503"),
        "{failed}"
    );
    assert_eq!(agent.child.id(), pid);
    assert_eq!(collector_of(&agent, "c-n"), collector_pids);
    assert_eq!(status_of(&agent)["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        registrations(&manager)
            .iter()
            .any(|r| r["agent_version"] == PEER_VERSION)
    );
}

/// Section 4.3 step 4: a new version whose start-up fails at `step`
/// hands back in the same process, at once; every child is kept and
/// supervised by the previous version, which reports why.
fn a_start_up_failure_hands_back_with_every_child(step: &str) {
    let broken = broken_peer();
    let manager = FakeManager::start();
    let agent = Agent::with_manager(
        &manager,
        &[
            ("OUTPOST_COLLECTOR_CMD", SH),
            ("OUTPOST_BROKEN_START_AT", step),
        ],
    );
    let collector_id = format!("c-{step}");
    manager.hand_out(collector(&collector_id));
    manager.wait_state(&collector_id, "running", 20 * SECOND);
    let collector_pids = collector_of(&agent, &collector_id);
    assert_eq!(collector_pids.len(), 1, "{collector_pids:?}");
    let id = format!("up-{step}");
    manager.hand_out(update_task(&id, broken, BROKEN_VERSION));
    // Well inside the 60 s a version that never gets ready is given.
    let failed = manager.wait_state(&id, "failed", 40 * SECOND);
    assert_eq!(failed["error"]["kind"], "update_failed", "{failed}");
    let why = format!("at the {step} step");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("start-up failed") && message.contains(&why),
        "{message}"
    );
    assert!(
        failed["stderr_tail"]
            .as_str()
            .unwrap_or_default()
            .contains(&why),
        "{failed}"
    );
    assert_eq!(status_of(&agent)["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(collector_of(&agent, &collector_id), collector_pids);
    assert!(common::zombie_children(agent.child.id()).is_empty());
    // Still supervised by the version that took over again: a collector
    // that dies is restarted.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(collector_pids[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually("the collector restarted", 30 * SECOND, || {
        let now = collector_of(&agent, &collector_id);
        now.len() == 1 && now != collector_pids
    });
    let record: Value = serde_json::from_slice(
        &std::fs::read(agent.state_dir().join("programs/update.json")).unwrap(),
    )
    .unwrap();
    assert!(
        record["trial"].is_null() && record["current"].is_null(),
        "{record}"
    );
    assert_eq!(record["failed"], json!([sha256_of(broken)]), "{record}");
}

#[test]
fn a_version_that_refuses_its_settings_at_start_hands_back() {
    a_start_up_failure_hands_back_with_every_child("config");
}

#[test]
fn a_version_whose_start_up_fails_before_taking_the_children_hands_back() {
    a_start_up_failure_hands_back_with_every_child("state");
}

#[test]
fn a_version_whose_start_up_fails_after_taking_the_children_hands_back() {
    a_start_up_failure_hands_back_with_every_child("workers");
}

#[test]
fn a_version_the_manager_turns_away_hands_back_at_once() {
    let peer = peer();
    let (manager, agent, collector_pids) = peer_registration_answered(401, "c-k");
    manager.hand_out(update_task("up-key", peer, PEER_VERSION));
    let failed = manager.wait_state("up-key", "failed", 40 * SECOND);
    assert_eq!(failed["error"]["kind"], "update_failed", "{failed}");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("registration failed") && message.contains("HTTP 401"),
        "{message}"
    );
    // Not an exit 78 that systemd would leave down: the previous version
    // runs on, registered again, with its children.
    assert_eq!(status_of(&agent)["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(collector_of(&agent, "c-k"), collector_pids);
    assert_eq!(
        registrations(&manager).last().unwrap()["agent_version"],
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn after_an_update_a_restart_from_the_installed_program_runs_the_new_one() {
    let peer = peer();
    let manager = FakeManager::start();
    let mut agent = Agent::with_manager(&manager, &[]);
    manager.hand_out(update_task("up-r", peer, PEER_VERSION));
    // One update at a time: a second one meanwhile is turned away.
    manager.hand_out(update_task("up-r2", peer, PEER_VERSION));
    let second = manager.wait_state("up-r2", "rejected", 60 * SECOND);
    assert_eq!(second["error"]["kind"], "capacity", "{second}");
    manager.wait_state("up-r", "succeeded", 60 * SECOND);
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(agent.wait_exit(30 * SECOND).success());
    let before = registrations(&manager).len();
    let state = std::mem::replace(&mut agent.state, TempDir::new("unused"));
    let again = Agent::start_in(
        state,
        &[
            ("OUTPOST_MANAGER_URL", manager.base.as_str()),
            ("OUTPOST_AGENT_KEY", common::KEY),
            ("OUTPOST_HEARTBEAT_INTERVAL", "200ms"),
        ],
        &[],
    );
    manager.wait_for("a registration", 30 * SECOND, |seen| {
        seen.iter()
            .filter(|s| s.path == "/v1/agent/register")
            .count()
            > before
    });
    assert_eq!(
        registrations(&manager).last().unwrap()["agent_version"],
        PEER_VERSION
    );
    assert_eq!(status_of(&again)["version"], PEER_VERSION);
}

/// Every task's updates, as first seen by the manager, numbered 1, 2, 3…
/// in order, with no gap.
fn assert_in_order(manager: &FakeManager, id: &str) {
    let mut first_seen: Vec<u64> = Vec::new();
    for u in manager.updates(id) {
        let seq = u["seq"].as_u64().unwrap();
        if !first_seen.contains(&seq) {
            first_seen.push(seq);
        }
    }
    let expected: Vec<u64> = (1..=first_seen.len() as u64).collect();
    assert_eq!(first_seen, expected, "updates of {id}");
}

#[test]
fn updates_pending_through_a_manager_outage_during_the_update_arrive_in_order() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let peer = peer();
    let manager = FakeManager::start();
    let down = Arc::new(AtomicBool::new(false));
    {
        let down = down.clone();
        manager.set_chaos(move |seen, reply| {
            if down.load(Ordering::SeqCst) && seen.path.ends_with("/status") {
                Reply::status(503)
            } else {
                reply
            }
        });
    }
    let agent = Agent::with_manager(&manager, &[("OUTPOST_COLLECTOR_CMD", SH)]);
    let port = free_port();
    manager
        .hand_out(json!({"id": "o-srv", "type": "iperf_server_start", "payload": {"port": port}}));
    manager.wait_state("o-srv", "running", 20 * SECOND);
    // Status updates stop getting through, then tasks change state on both
    // sides of the exec.
    down.store(true, Ordering::SeqCst);
    manager.hand_out(collector("o-col"));
    manager.hand_out(json!({"id": "o-cli", "type": "iperf_client_run",
        "payload": {"server": "127.0.0.1", "port": port, "time": 3}}));
    manager.hand_out(json!({"id": "o-info", "type": "system_info"}));
    manager.hand_out(update_task("o-up", peer, PEER_VERSION));
    manager.wait_for("the new version's registration", 60 * SECOND, |seen| {
        seen.iter()
            .any(|s| s.path == "/v1/agent/register" && s.body["agent_version"] == PEER_VERSION)
    });
    eventually("the client done", 30 * SECOND, || {
        let status = status_of(&agent);
        !status["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == "o-cli")
    });
    down.store(false, Ordering::SeqCst);
    manager.wait_state("o-up", "succeeded", 30 * SECOND);
    manager.wait_state("o-cli", "succeeded", 30 * SECOND);
    manager.wait_state("o-info", "succeeded", 30 * SECOND);
    manager.wait_state("o-col", "running", 30 * SECOND);
    for id in ["o-srv", "o-col", "o-cli", "o-info", "o-up"] {
        assert_in_order(&manager, id);
    }
}

#[test]
fn a_spool_update_without_a_manager_succeeds_at_once() {
    let peer = peer();
    let agent = Agent::start(&[("OUTPOST_COLLECTOR_CMD", SH)]);
    let pid = agent.child.id();
    let inbox = agent.state_dir().join("inbox");
    eventually("the inbox", 10 * SECOND, || inbox.is_dir());
    let write = |name: &str, task: Value| {
        let tmp = agent.state_dir().join(format!("{name}.tmp"));
        std::fs::write(&tmp, task.to_string()).unwrap();
        std::fs::rename(&tmp, inbox.join(format!("{name}.json"))).unwrap();
    };
    write("c", collector("s-col"));
    let result = |id: &str| -> Value {
        std::fs::read(agent.state_dir().join(format!("results/{id}.json")))
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap_or(Value::Null)
    };
    eventually("the collector running", 20 * SECOND, || {
        result("s-col")["state"] == "running"
    });
    let collector_pids = pids_of("s-col");
    write("u", update_task("s-up", peer, PEER_VERSION));
    eventually("the update done", 60 * SECOND, || {
        result("s-up")["state"] == "succeeded"
    });
    assert_eq!(
        result("s-up")["result"],
        json!({"from": env!("CARGO_PKG_VERSION"), "to": PEER_VERSION})
    );
    assert_eq!(agent.child.id(), pid);
    assert_eq!(pids_of("s-col"), collector_pids);
    assert_eq!(status_of(&agent)["version"], PEER_VERSION);
    // Another update while none is in progress any more: the same version.
    write("u2", update_task("s-up2", peer, PEER_VERSION));
    eventually("the second update done", 30 * SECOND, || {
        result("s-up2")["state"] == "succeeded"
    });
}

/// Processes that run the agent for `state` (its environment names the
/// state directory; task children get a clean environment).
fn agents_for(state: &Path) -> Vec<i32> {
    let needle = format!("OUTPOST_STATE_DIR={}", state.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rfind(')').is_some_and(|i| s[i + 2..].starts_with('Z')));
        if !zombie && env.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn kill_9_at_random_moments_of_updates_loses_nothing() {
    let peer = peer();
    let rounds: u64 = std::env::var("OUTPOST_UPDATE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let manager = FakeManager::start();
    let state = TempDir::new("update-crash");
    let state_dir = state.path().join("state");
    // The collector's environment names its task and this agent's state.
    let marker = format!(
        "OUTPOST_TASK=k-col\0;OUTPOST_TASK_OWNER={}\0",
        state_dir.display()
    );
    let env = [
        ("OUTPOST_MANAGER_URL", manager.base.as_str()),
        ("OUTPOST_AGENT_KEY", common::KEY),
        ("OUTPOST_HEARTBEAT_INTERVAL", "200ms"),
        ("OUTPOST_STOP_GRACE", "1s"),
        ("OUTPOST_COLLECTOR_CMD", SH),
    ];
    let mut rng = common::Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let mut updates = Vec::new();
    for round in 0..rounds {
        let mut agent = Agent::start_in(TempDir(state.path().to_path_buf()), &env, &[]);
        if round == 0 {
            manager.hand_out(json!({"id": "k-col", "type": "collector_start",
                "payload": {"name": "k-col", "config": sleeper("k-col")}}));
            manager.wait_state("k-col", "running", 20 * SECOND);
        }
        let id = format!("k-up-{round}");
        manager.hand_out(update_task(&id, peer, PEER_VERSION));
        updates.push(id);
        // Anywhere from the claim to well after the handover.
        std::thread::sleep(Duration::from_millis(rng.below(12_000)));
        agent.signal(nix::sys::signal::Signal::SIGKILL);
        agent.wait_exit(10 * SECOND);
        std::mem::forget(agent);
        eventually("no agent left", 10 * SECOND, || {
            agents_for(&state_dir).is_empty()
        });
        assert!(
            pids_of(&marker).len() <= 1,
            "two collectors: {:?}",
            pids_of(&marker)
        );
    }
    let agent = Agent::start_in(TempDir(state.path().to_path_buf()), &env, &[]);
    manager.wait_for("the last registration", 30 * SECOND, |seen| {
        seen.iter()
            .filter(|s| s.path == "/v1/agent/register")
            .count() as u64
            > rounds
    });
    // Every update that was taken reached one final state, reported once.
    // (One still in the fake manager's hands when its agent died is lost
    // in transit, as a real manager's would be until it hands it out
    // again; it never ran.)
    eventually("updates settled", 60 * SECOND, || {
        updates.iter().all(|id| {
            let u = manager.updates(id);
            u.is_empty()
                || u.iter()
                    .any(|u| u["state"] == "succeeded" || u["state"] == "failed")
        })
    });
    let taken: Vec<&String> = updates
        .iter()
        .filter(|id| !manager.updates(id).is_empty())
        .collect();
    assert!(!taken.is_empty());
    for id in taken {
        let done = |id: &str| {
            manager
                .updates(id)
                .iter()
                .any(|u| u["state"] == "succeeded" || u["state"] == "failed")
        };
        eventually(&format!("{id} final"), 120 * SECOND, || done(id));
        let finals: std::collections::BTreeSet<String> = manager
            .updates(id)
            .iter()
            .filter(|u| ["succeeded", "failed", "rejected"].contains(&u["state"].as_str().unwrap()))
            .map(|u| u["state"].to_string())
            .collect();
        assert_eq!(finals.len(), 1, "{id}: {:?}", manager.updates(id));
        assert_in_order(&manager, id);
    }
    assert_in_order(&manager, "k-col");
    // One agent, one collector, supervised by it.
    eventually("one agent", 10 * SECOND, || {
        agents_for(&state_dir).len() == 1
    });
    let deadline = std::time::Instant::now() + 20 * SECOND;
    while pids_of(&marker).len() != 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        pids_of(&marker).len(),
        1,
        "collector processes {:?} of {:?}; updates {:?}; output:\n{}",
        pids_of(&marker),
        processes_matching("sleep 3600")
            .iter()
            .map(|p| String::from_utf8_lossy(
                &std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default()
            )
            .into_owned())
            .collect::<Vec<_>>(),
        manager.updates("k-col"),
        agent.output()
    );
    let collector = pids_of(&marker)[0];
    let ppid = std::fs::read_to_string(format!("/proc/{collector}/stat"))
        .ok()
        .and_then(|s| {
            s[s.rfind(')').unwrap() + 2..]
                .split_whitespace()
                .nth(1)
                .map(str::to_string)
        });
    assert_eq!(ppid, Some(agent.child.id().to_string()));
    drop(agent);
    std::mem::forget(state);
}

/// A program that passes the checks but never runs outpost's code cannot
/// hand back by itself: the SIGALRM armed before the exec ends it after
/// 60 s, and the next start puts the previous version back.
#[test]
fn a_foreign_program_that_never_gets_ready_is_ended_and_rolled_back() {
    let dir = TempDir::new("update-foreign");
    let hangs = script(
        dir.path(),
        "hangs",
        "8.0.0",
        "echo 'waiting for nothing' >&2\nexec sleep 3600",
    );
    let manager = FakeManager::start();
    let mut agent = Agent::with_manager(&manager, &[]);
    manager.hand_out(update_task("up-hangs", &hangs, "8.0.0"));
    let status = agent.wait_exit(120 * SECOND);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(nix::libc::SIGALRM), "{status:?}");
    let state = std::mem::replace(&mut agent.state, TempDir::new("unused"));
    let again = Agent::start_in(
        state,
        &[
            ("OUTPOST_MANAGER_URL", manager.base.as_str()),
            ("OUTPOST_AGENT_KEY", common::KEY),
            ("OUTPOST_HEARTBEAT_INTERVAL", "200ms"),
        ],
        &[],
    );
    let failed = manager.wait_state("up-hangs", "failed", 30 * SECOND);
    assert_eq!(failed["error"]["kind"], "update_failed", "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("before it was ready"),
        "{failed}"
    );
    assert!(
        failed["stderr_tail"]
            .as_str()
            .unwrap_or_default()
            .contains("waiting for nothing"),
        "{failed}"
    );
    assert_eq!(status_of(&again)["version"], env!("CARGO_PKG_VERSION"));
}
