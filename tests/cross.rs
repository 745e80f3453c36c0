//! The traps of the edge builds, checked against whichever binary runs:
//! `.ci/cross` points `OUTPOST_TEST_BIN` at each cross-built binary (through
//! a qemu-user wrapper for ARM) and `OUTPOST_TEST_ARCH` at the machine it
//! should report (`aarch64`, `armv7`, `x86_64`); unset, this build and this
//! machine.

mod common;

use std::time::Duration;

use common::{Agent, FakeManager, KEY};

const WAIT: Duration = Duration::from_secs(30);

fn registration(manager: &FakeManager) -> serde_json::Value {
    let seen = manager.wait_for("a registration", WAIT, |seen| {
        seen.iter().any(|s| s.path == "/v1/agent/register")
    });
    let register = seen.iter().find(|s| s.path == "/v1/agent/register");
    register.unwrap().body.clone()
}

#[test]
fn registers_with_the_kernels_machine_as_arch() {
    let manager = FakeManager::start();
    let _agent = Agent::with_manager(&manager, &[]);
    let body = registration(&manager);
    let arch = body["system"]["arch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    match std::env::var("OUTPOST_TEST_ARCH").as_deref() {
        // uname -m of a 32-bit ARM userland: armv7l (armv8l, or aarch64 on a
        // 64-bit kernel), never the compile target's "arm".
        Ok("armv7") => assert!(
            arch.starts_with("armv") || arch == "aarch64",
            "arch {arch:?}"
        ),
        Ok(want) => assert_eq!(arch, want),
        Err(_) => assert_eq!(arch, std::env::consts::ARCH),
    }
}

#[test]
fn a_manager_named_by_host_name_is_resolved() {
    // musl's resolver and static glibc's both read /etc/hosts without NSS
    // modules; "localhost" is there on every machine the tests run on.
    let manager = FakeManager::start();
    let url = manager.base.replace("127.0.0.1", "localhost");
    assert_ne!(url, manager.base);
    let _agent = Agent::start(&[
        ("OUTPOST_MANAGER_URL", url.as_str()),
        ("OUTPOST_AGENT_KEY", KEY),
        ("OUTPOST_HEARTBEAT_INTERVAL", "200ms"),
    ]);
    let body = registration(&manager);
    assert_eq!(body["name"], "edge-17");
    manager.wait_for("a heartbeat", WAIT, |seen| {
        seen.iter().any(|s| s.path == "/v1/agent/heartbeat")
    });
}

#[test]
fn metrics_carry_the_node_series_of_this_build() {
    let agent = Agent::start(&[("OUTPOST_HEARTBEAT_INTERVAL", "200ms")]);
    common::eventually("node series in /metrics", WAIT, || {
        let (status, text) = agent.get("/metrics");
        // node_exporter's names (section 7); the values must be positive on
        // every build, or a 32-bit statvfs or meminfo read went wrong.
        status == 200
            && positive(&text, "node_memory_MemTotal_bytes")
            && positive(&text, "node_filesystem_size_bytes{")
    });
}

fn positive(text: &str, series: &str) -> bool {
    text.lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .any(|value| value > 0.0)
}
