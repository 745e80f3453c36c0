//! The core agent, as a process: configuration, the manager link, heartbeats,
//! the health responder, signals and logging.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    Agent, FakeManager, KEY, Reply, TempDir, assert_promtool_clean, command, raw_request,
    require_tool,
};
use nix::sys::signal::Signal;
use serde_json::json;

const SECOND: Duration = Duration::from_secs(1);

fn heartbeats(manager: &FakeManager) -> Vec<common::Seen> {
    manager.seen_at("/v1/agent/heartbeat")
}

#[test]
fn registers_with_every_header_and_then_heartbeats_in_sequence() {
    let manager = FakeManager::with_prefix("/outpost");
    let agent = Agent::with_manager(&manager, &[]);
    manager.wait_for("three heartbeats", 10 * SECOND, |seen| {
        seen.iter()
            .filter(|s| s.path == "/v1/agent/heartbeat")
            .count()
            >= 3
    });
    let register = &manager.seen_at("/v1/agent/register")[0];
    assert_eq!(register.method, "POST");
    assert_eq!(register.header("x-agent-name"), "edge-17");
    assert_eq!(register.header("x-agent-key"), KEY);
    assert_eq!(register.header("x-api-version"), "1");
    assert_eq!(
        register.header("user-agent"),
        format!("outpost/{}", env!("CARGO_PKG_VERSION"))
    );
    assert!(
        register
            .header("content-type")
            .starts_with("application/json")
    );
    let body = &register.body;
    let instance = body["instance_id"].as_str().unwrap().to_string();
    assert_eq!(instance.len(), 36, "a UUID: {instance}");
    assert_eq!(
        register.header("idempotency-key"),
        format!("register:{instance}:1")
    );
    assert_eq!(body["name"], "edge-17");
    assert_eq!(body["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(
        body["agent_id"].is_null(),
        "no agent id before the first registration"
    );
    assert_eq!(body["system"]["os"], "linux");
    assert!(
        body["system"]["hostname"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );
    assert!(body["capabilities"]["max_concurrent_tasks"].is_number());
    assert!(body["tasks"].is_array());

    let beats = heartbeats(&manager);
    for (i, beat) in beats.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(beat.body["seq"], seq);
        assert_eq!(beat.body["agent_id"], "a-test");
        assert_eq!(beat.body["instance_id"], instance.as_str());
        assert_eq!(
            beat.header("idempotency-key"),
            format!("heartbeat:{instance}:{seq}")
        );
        assert_eq!(beat.header("x-agent-key"), KEY);
        assert!(beat.body["sent_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(beat.body["pending_updates"], 0);
        assert!(beat.body["tasks"].as_array().unwrap().is_empty());
    }
    // The agent id is kept for the next start, in a private file.
    let identity = agent.state_dir().join("identity.json");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&identity).unwrap()).unwrap();
    assert_eq!(saved["agent_id"], "a-test");
    assert_eq!(
        std::fs::metadata(&identity).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(agent.state_dir())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
}

#[test]
fn heartbeat_snapshot_matches_proc() {
    let manager = FakeManager::start();
    let _agent = Agent::with_manager(&manager, &[]);
    let seen = manager.wait_for("a heartbeat with CPU rates", 10 * SECOND, |seen| {
        seen.iter().any(|s| {
            s.path == "/v1/agent/heartbeat" && s.body["metrics"]["cpu"]["usage_percent"].is_number()
        })
    });
    let beat = seen
        .iter()
        .rfind(|s| {
            s.path == "/v1/agent/heartbeat" && s.body["metrics"]["cpu"]["usage_percent"].is_number()
        })
        .unwrap();
    let metrics = &beat.body["metrics"];
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(metrics["memory"]["total_bytes"], total_kib * 1024);
    let cores = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    assert_eq!(
        metrics["cpu"]["per_core_usage_percent"]
            .as_array()
            .unwrap()
            .len(),
        cores
    );
    let usage = metrics["cpu"]["usage_percent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&usage), "{usage}");
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let reported = metrics["uptime_s"].as_f64().unwrap();
    assert!((uptime - reported).abs() < 30.0, "{uptime} vs {reported}");
    assert!(metrics["load"]["one"].is_number());
    assert!(metrics["processes"]["total"].as_u64().unwrap() > 0);
    let size = serde_json::to_vec(&beat.body).unwrap().len();
    println!("heartbeat body: {size} bytes");
}

#[test]
fn manager_503_backs_off_and_honours_retry_after() {
    let manager = FakeManager::start();
    manager.set_script(|seen| match seen.path.as_str() {
        "/v1/agent/register" => Reply::status(503).with_header("Retry-After", "1"),
        _ => common::default_reply(seen),
    });
    let _agent = Agent::with_manager(&manager, &[]);
    let seen = manager.wait_for("three register attempts", 10 * SECOND, |seen| {
        seen.len() >= 3
    });
    for pair in seen.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(900),
            "retried after {gap:?} despite Retry-After: 1"
        );
    }
    // Retries of one logical registration reuse its idempotency key.
    assert!(
        seen.iter()
            .all(|s| s.header("idempotency-key") == seen[0].header("idempotency-key"))
    );
}

#[test]
fn manager_503_without_retry_after_backs_off_exponentially() {
    let manager = FakeManager::start();
    manager.set_script(|seen| match seen.path.as_str() {
        "/v1/agent/register" => Reply::status(503),
        _ => common::default_reply(seen),
    });
    let _agent = Agent::with_manager(&manager, &[]);
    std::thread::sleep(4 * SECOND); // observation window, not synchronisation
    let attempts = manager.seen().len();
    // Full jitter with ceilings 1, 2, 4 s: a handful of attempts, never a
    // tight loop (which would make hundreds).
    assert!((1..=8).contains(&attempts), "{attempts} attempts in 4 s");
}

#[test]
fn recovers_when_the_manager_comes_back() {
    let manager = FakeManager::start();
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(2));
    let f = failures.clone();
    manager.set_script(move |seen| {
        if seen.path == "/v1/agent/register" && f.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            f.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            return Reply::status(502).with_header("Retry-After", "0");
        }
        common::default_reply(seen)
    });
    let agent = Agent::with_manager(&manager, &[]);
    manager.wait_for("a heartbeat after recovery", 10 * SECOND, |seen| {
        seen.iter().any(|s| s.path == "/v1/agent/heartbeat")
    });
    let (code, _) = agent.get("/ready");
    assert_eq!(code, 200);
}

#[test]
fn heartbeat_404_means_register_again() {
    let manager = FakeManager::start();
    let mut answered_404 = false;
    manager.set_script(move |seen| {
        if seen.path == "/v1/agent/heartbeat" && seen.body["seq"] == 2 && !answered_404 {
            answered_404 = true;
            return Reply::status(404);
        }
        common::default_reply(seen)
    });
    let _agent = Agent::with_manager(&manager, &[]);
    let seen = manager.wait_for(
        "a second registration and a heartbeat after it",
        10 * SECOND,
        |seen| {
            let registers: Vec<_> = seen
                .iter()
                .filter(|s| s.path == "/v1/agent/register")
                .collect();
            registers.len() >= 2
                && seen.last().is_some_and(|s| {
                    s.path == "/v1/agent/heartbeat" && s.body["seq"].as_u64() > Some(2)
                })
        },
    );
    let registers: Vec<_> = seen
        .iter()
        .filter(|s| s.path == "/v1/agent/register")
        .collect();
    let instance = registers[0].body["instance_id"].as_str().unwrap();
    assert_eq!(
        registers[1].header("idempotency-key"),
        format!("register:{instance}:2")
    );
    assert_eq!(
        registers[1].body["agent_id"], "a-test",
        "the known id is sent back"
    );
}

#[test]
fn heartbeat_401_registers_again_but_register_401_exits_78() {
    let manager = FakeManager::start();
    let mut heartbeat_refused = false;
    manager.set_script(move |seen| match seen.path.as_str() {
        "/v1/agent/heartbeat" if !heartbeat_refused => {
            heartbeat_refused = true;
            Reply::status(401)
        }
        "/v1/agent/register" if heartbeat_refused => Reply::status(403),
        _ => common::default_reply(seen),
    });
    let mut agent = Agent::with_manager(&manager, &[]);
    let status = agent.wait_exit(10 * SECOND);
    assert_eq!(status.code(), Some(78), "{}", agent.output());
    // The claim thread may long-poll between the two registrations (it does
    // under qemu-user); the heartbeat and register sequence is what counts.
    let paths: Vec<_> = manager
        .seen()
        .iter()
        .map(|s| s.path.clone())
        .filter(|p| p != "/v1/agent/tasks/claim")
        .collect();
    assert_eq!(
        paths,
        [
            "/v1/agent/register",
            "/v1/agent/heartbeat",
            "/v1/agent/register"
        ]
    );
    assert!(
        agent.output().contains("rejected the agent key"),
        "{}",
        agent.output()
    );
}

#[test]
fn heartbeat_interval_follows_the_manager() {
    let manager = FakeManager::start();
    manager.set_script(|seen| match seen.path.as_str() {
        "/v1/agent/register" => Reply::json(
            200,
            json!({"agent_id": "a-test", "heartbeat_interval_s": 0.2}),
        ),
        "/v1/agent/heartbeat" if seen.body["seq"].as_u64() >= Some(3) => {
            Reply::json(200, json!({"heartbeat_interval_s": 1.5}))
        }
        _ => common::default_reply(seen),
    });
    let _agent = Agent::with_manager(&manager, &[("OUTPOST_HEARTBEAT_INTERVAL", "10s")]);
    let seen = manager.wait_for("six heartbeats", 15 * SECOND, |seen| {
        seen.iter()
            .filter(|s| s.path == "/v1/agent/heartbeat")
            .count()
            >= 6
    });
    let beats: Vec<_> = seen
        .iter()
        .filter(|s| s.path == "/v1/agent/heartbeat")
        .collect();
    let fast = beats[2].at - beats[1].at;
    let slow = beats[5].at - beats[4].at;
    assert!(
        fast < Duration::from_millis(1000),
        "register answer sets 0.2 s: {fast:?}"
    );
    assert!(
        slow >= Duration::from_millis(1200),
        "heartbeat answer sets 1.5 s: {slow:?}"
    );
}

#[test]
fn sigterm_and_sigint_stop_cleanly() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let manager = FakeManager::start();
        let mut agent = Agent::with_manager(&manager, &[]);
        manager.wait_for("a heartbeat", 10 * SECOND, |seen| {
            seen.iter().any(|s| s.path == "/v1/agent/heartbeat")
        });
        let asked = Instant::now();
        agent.signal(signal);
        let status = agent.wait_exit(5 * SECOND);
        assert_eq!(status.code(), Some(0), "{signal}: {}", agent.output());
        assert!(
            asked.elapsed() < 2 * SECOND,
            "{signal}: took {:?}",
            asked.elapsed()
        );
    }
}

#[test]
fn a_second_signal_exits_at_once_even_mid_request() {
    let manager = FakeManager::start();
    // A manager that never answers register keeps a request in flight.
    manager.set_script(|_| {
        std::thread::sleep(Duration::from_secs(20));
        Reply::status(503)
    });
    let mut agent = Agent::with_manager(&manager, &[]);
    manager.wait_for("the register request", 10 * SECOND, |seen| !seen.is_empty());
    agent.signal(Signal::SIGTERM);
    agent.signal(Signal::SIGTERM);
    let asked = Instant::now();
    agent.wait_exit(5 * SECOND);
    assert!(asked.elapsed() < 2 * SECOND);
}

#[test]
fn the_key_never_reaches_any_output_even_at_trace() {
    let manager = FakeManager::start();
    let mut n = 0;
    manager.set_script(move |seen| {
        n += 1;
        match n {
            1 => Reply::status(500),
            3 => Reply::status(404),
            _ => common::default_reply(seen),
        }
    });
    let dir = TempDir::new("keyfile");
    let key_file = dir.path().join("agent.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let mut agent = Agent::start_in(
        TempDir::new("state"),
        &[
            ("OUTPOST_MANAGER_URL", manager.base.as_str()),
            ("OUTPOST_AGENT_KEY_FILE", key_file.to_str().unwrap()),
            ("OUTPOST_HEARTBEAT_INTERVAL", "200ms"),
            ("OUTPOST_LOG_LEVEL", "trace"),
        ],
        &[],
    );
    manager.wait_for("heartbeats", 10 * SECOND, |seen| {
        seen.iter()
            .filter(|s| s.path == "/v1/agent/heartbeat")
            .count()
            >= 2
    });
    assert_eq!(
        manager.seen()[0].header("x-agent-key"),
        KEY,
        "the key file is used"
    );
    let (_, status) = agent.get("/status");
    let (_, metrics) = agent.get("/metrics");
    let (_, health) = agent.get("/health");
    agent.signal(Signal::SIGTERM);
    agent.wait_exit(5 * SECOND);
    let output = agent.output();
    assert!(
        output.contains("TRACE") || output.contains("DEBUG"),
        "trace logging is on:\n{output}"
    );
    for (what, text) in [
        ("log", &output),
        ("/status", &status),
        ("/metrics", &metrics),
        ("/health", &health),
    ] {
        assert!(!text.contains(KEY), "the key leaked into {what}");
        assert!(
            !text.contains("Secret-0f"),
            "part of the key leaked into {what}"
        );
    }
    let check = command(&[
        ("OUTPOST_MANAGER_URL", "https://m.example"),
        ("OUTPOST_AGENT_KEY", KEY),
        ("OUTPOST_STATE_DIR", "/tmp"),
    ])
    .arg("--check-config")
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success());
    assert!(
        text.contains("OUTPOST_AGENT_KEY=<secret>") && !text.contains(KEY),
        "{text}"
    );
}

#[test]
fn bad_settings_exit_78_naming_the_setting() {
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: &[Case] = &[
        (
            &[("OUTPOST_HEARTBEAT_INTERVAL", "fast")],
            &[],
            "OUTPOST_HEARTBEAT_INTERVAL",
        ),
        (
            &[],
            &["--heartbeat-interval", "500s"],
            "OUTPOST_HEARTBEAT_INTERVAL",
        ),
        (
            &[("OUTPOST_HTTP_ADDR", "nowhere")],
            &[],
            "OUTPOST_HTTP_ADDR",
        ),
        (
            &[("OUTPOST_MANAGER_URL", "https://m.example")],
            &[],
            "OUTPOST_AGENT_KEY",
        ),
        (&[("OUTPOST_MAX_TASKS", "-3")], &[], "OUTPOST_MAX_TASKS"),
        (
            &[("OUTPOST_LOG_FORMAT", "yaml")],
            &["--check-config"],
            "OUTPOST_LOG_FORMAT",
        ),
    ];
    for (env, args, setting) in cases {
        let mut all = vec![("OUTPOST_STATE_DIR", "/tmp/outpost-never-used")];
        all.extend_from_slice(env);
        let out = command(&all)
            .args(*args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{setting}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(setting), "{stderr}");
    }
    let out = command(&[]).arg("--agent-key=x").output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never taken from the command line"));
}

#[test]
fn help_version_and_env_file() {
    let out = command(&[]).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for var in [
        "OUTPOST_MANAGER_URL",
        "OUTPOST_COLLECTOR_CMD",
        "OUTPOST_LOG_FORMAT",
        "--env-file",
    ] {
        assert!(help.contains(var), "{var} missing from --help");
    }
    let out = command(&[]).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("outpost {}", env!("CARGO_PKG_VERSION"))
    );

    let dir = TempDir::new("envfile");
    let file = dir.path().join("agent.env");
    std::fs::write(
        &file,
        "# settings\nOUTPOST_MAX_TASKS=9\nOUTPOST_POLL_WAIT=\"7s\"\n",
    )
    .unwrap();
    let out = command(&[("OUTPOST_STATE_DIR", "/tmp/x"), ("OUTPOST_MAX_TASKS", "11")])
        .args(["--env-file", file.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("OUTPOST_MAX_TASKS=11  (environment)"),
        "{text}"
    );
    assert!(text.contains("OUTPOST_POLL_WAIT=7s  (env file)"), "{text}");
}

#[test]
fn manager_less_mode_is_ready_at_once_and_says_so() {
    let mut agent = Agent::start(&[]);
    let out = agent.wait_output("manager-less mode", 5 * SECOND);
    assert!(
        out.contains("health responder on http://127.0.0.1:"),
        "{out}"
    );
    let (code, body) = agent.get("/ready");
    assert_eq!(code, 200, "{body}");
    let (code, body) = agent.get("/health");
    assert_eq!(code, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["mode"], "manager-less");
    assert!(health["last_heartbeat_ok_ago_s"].is_null());
    let (code, body) = agent.get("/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["name"], "edge-17");
    assert!(status["manager"]["url"].is_null());
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(5 * SECOND).code(), Some(0));
}

#[test]
fn ready_is_503_until_registered_and_health_tells_the_heartbeat_age() {
    let manager = FakeManager::start();
    manager.set_script(|seen| match seen.path.as_str() {
        "/v1/agent/register" => Reply::status(503).with_header("Retry-After", "60"),
        _ => common::default_reply(seen),
    });
    let agent = Agent::with_manager(&manager, &[]);
    manager.wait_for("a register attempt", 10 * SECOND, |seen| !seen.is_empty());
    // The request reached the manager a moment before its answer reached
    // the agent's session: wait for the agent to have taken it in.
    let status_now = || {
        let (code, body) = agent.get("/status");
        assert_eq!(code, 200);
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    common::eventually("the 503 in /status", 10 * SECOND, || {
        status_now()["manager"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("503"))
    });
    let (code, _) = agent.get("/ready");
    assert_eq!(code, 503);
    assert_eq!(status_now()["manager"]["registered"], false);

    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, &[]);
    manager.wait_for("a heartbeat", 10 * SECOND, |seen| {
        seen.iter().any(|s| s.path == "/v1/agent/heartbeat")
    });
    let deadline = Instant::now() + 5 * SECOND;
    loop {
        let (_, body) = agent.get("/health");
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        if let Some(ago) = health["last_heartbeat_ok_ago_s"].as_f64() {
            assert!(ago < 5.0, "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health never showed a heartbeat: {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(agent.get("/ready").0, 200);
}

#[test]
fn responder_answers_404_405_431_and_400() {
    let agent = Agent::start(&[]);
    let addr = agent.http_addr();
    assert_eq!(common::http_get(&addr, "/nope").0, 404);
    assert_eq!(
        raw_request(&addr, b"POST /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0,
        405
    );
    assert_eq!(
        raw_request(&addr, b"DELETE /status HTTP/1.1\r\n\r\n").0,
        405
    );
    let mut big = b"GET /health HTTP/1.1\r\nX-Pad: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 9000));
    big.extend(b"\r\n\r\n");
    assert_eq!(raw_request(&addr, &big).0, 431);
    assert_eq!(
        raw_request(
            &addr,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"
        )
        .0,
        400
    );
    assert_eq!(
        raw_request(
            &addr,
            b"GET /health HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody"
        )
        .0,
        400
    );
    // Still serving after all of that.
    assert_eq!(common::http_get(&addr, "/health").0, 200);
}

#[test]
fn metrics_pass_promtool() {
    require_tool("promtool", "prometheus");
    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, &[]);
    manager.wait_for("two heartbeats", 10 * SECOND, |seen| {
        seen.iter()
            .filter(|s| s.path == "/v1/agent/heartbeat")
            .count()
            >= 2
    });
    let (code, body) = agent.get("/metrics");
    assert_eq!(code, 200);
    for series in [
        "outpost_build_info{version=",
        "outpost_uptime_seconds ",
        "outpost_heartbeats_sent_total ",
        "outpost_heartbeats_failed_total ",
        "outpost_manager_errors_total{endpoint=\"register\"}",
        "outpost_registrations_total 1",
        "node_memory_MemTotal_bytes ",
        "node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} ",
    ] {
        assert!(body.contains(series), "{series} missing:\n{body}");
    }
    assert_promtool_clean(&body);
}

#[test]
fn json_log_format_is_one_object_a_line() {
    let mut agent = Agent::start(&[("OUTPOST_LOG_FORMAT", "json")]);
    agent.wait_output("manager-less", 5 * SECOND);
    agent.signal(Signal::SIGTERM);
    agent.wait_exit(5 * SECOND);
    let output = agent.output();
    let lines: Vec<_> = output.lines().collect();
    assert!(lines.len() >= 2, "{output}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string() && v["message"].is_string(),
            "{line}"
        );
    }
}

#[test]
fn corrupt_identity_is_set_aside_not_a_crash_loop() {
    let manager = FakeManager::start();
    let state = TempDir::new("corrupt");
    let dir = state.path().join("state");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("identity.json"), b"\x00\xffnot json").unwrap();
    let agent = Agent::start_in(
        state,
        &[
            ("OUTPOST_MANAGER_URL", manager.base.as_str()),
            ("OUTPOST_AGENT_KEY", KEY),
            ("OUTPOST_HEARTBEAT_INTERVAL", "200ms"),
        ],
        &[],
    );
    manager.wait_for("a heartbeat", 10 * SECOND, |seen| {
        seen.iter().any(|s| s.path == "/v1/agent/heartbeat")
    });
    assert!(
        agent.output().contains("identity.json"),
        "{}",
        agent.output()
    );
    assert!(agent.state_dir().join("identity.json.corrupt").exists());
    assert!(manager.seen_at("/v1/agent/register")[0].body["agent_id"].is_null());
}

#[test]
fn known_agent_id_is_sent_after_a_restart() {
    let manager = FakeManager::start();
    let state = TempDir::new("restart");
    let dir = state.path().join("state");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("identity.json"), br#"{"agent_id": "a-earlier"}"#).unwrap();
    let _agent = Agent::start_in(
        state,
        &[
            ("OUTPOST_MANAGER_URL", manager.base.as_str()),
            ("OUTPOST_AGENT_KEY", KEY),
        ],
        &[],
    );
    let seen = manager.wait_for("register", 10 * SECOND, |seen| !seen.is_empty());
    assert_eq!(seen[0].body["agent_id"], "a-earlier");
}

#[test]
fn journal_stream_lines_carry_priorities_and_no_timestamps() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new("journal");
    let path = dir.path().join("stderr");
    let file = std::fs::File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let state = dir.path().join("state");
    let mut child = command(&[
        ("OUTPOST_STATE_DIR", state.to_str().unwrap()),
        ("OUTPOST_HTTP_ADDR", "127.0.0.1:0"),
        ("OUTPOST_PUSHGATEWAY_URL", "http://127.0.0.1:9"),
        ("JOURNAL_STREAM", &stream),
    ])
    .stdout(Stdio::null())
    .stderr(file)
    .spawn()
    .unwrap();
    common::eventually("the start-up line and a warning", 10 * SECOND, || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        text.contains("manager-less") && text.contains("cannot push")
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    for line in text.lines() {
        assert!(
            line.len() > 3
                && line.starts_with('<')
                && line.as_bytes()[1].is_ascii_digit()
                && &line[2..3] == ">",
            "no priority prefix: {line}"
        );
        assert!(
            !line[3..].starts_with("20"),
            "a timestamp journald would duplicate: {line}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("<6>") && l.contains("manager-less")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("<4>") && l.contains("cannot push")),
        "{text}"
    );
}

#[test]
fn an_oversized_manager_answer_is_refused_not_swallowed() {
    let manager = FakeManager::start();
    let mut answered = 0;
    manager.set_script(move |seen| {
        if seen.path == "/v1/agent/register" && answered < 2 {
            answered += 1;
            // 2 MiB of JSON: over the 1 MiB cap for a register answer.
            let padding = "x".repeat(2 * 1024 * 1024);
            return Reply::json(200, json!({"agent_id": "a-test", "padding": padding}))
                .with_header("Retry-After", "0");
        }
        common::default_reply(seen)
    });
    let agent = Agent::with_manager(&manager, &[]);
    manager.wait_for(
        "a heartbeat after the oversized answers",
        20 * SECOND,
        |seen| seen.iter().any(|s| s.path == "/v1/agent/heartbeat"),
    );
    assert_eq!(manager.seen_at("/v1/agent/register").len(), 3);
    assert!(agent.output().contains("larger than"), "{}", agent.output());
}
