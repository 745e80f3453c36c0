//! Behind a proxy: every outbound link (manager, config download,
//! Pushgateway) against Debian's real tinyproxy, started by the test on
//! 127.0.0.1, whose log shows each CONNECT.

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Agent, FakeManager, KEY, TempDir, command, config_server, eventually, free_port};
use serde_json::{Value, json};

const SECOND: Duration = Duration::from_secs(1);
const PASSWORD: &str = "pr0xy-Pa55-never-logged";

struct Tinyproxy {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl Tinyproxy {
    /// A tinyproxy on `port`; with `auth`, it wants `alice:PASSWORD`.
    fn start_on(port: u16, auth: bool) -> Tinyproxy {
        common::require_tool("tinyproxy", "tinyproxy");
        let dir = TempDir::new("tinyproxy");
        let log = dir.path().join("log");
        let conf = dir.path().join("conf");
        let mut text = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{}\"\nLogLevel Connect\nMaxClients 50\nAllow 127.0.0.1\n",
            log.display()
        );
        if auth {
            text.push_str(&format!("BasicAuth alice {PASSWORD}\n"));
        }
        std::fs::write(&conf, text).unwrap();
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        eventually("tinyproxy listening", 10 * SECOND, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Tinyproxy {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn start(auth: bool) -> Tinyproxy {
        Tinyproxy::start_on(free_port(), auth)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn connects_to(&self, base: &str) -> usize {
        let target = base.trim_start_matches("http://");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("CONNECT {target} ")))
            .count()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status(agent: &Agent) -> Value {
    serde_json::from_str(&agent.get("/status").1).unwrap()
}

#[test]
fn every_link_goes_through_outpost_proxy() {
    let proxy = Tinyproxy::start(false);
    let manager = FakeManager::start();
    let pushgateway = FakeManager::start();
    let config = config_server(vec![(
        "/collector.conf",
        200,
        "exec sleep 3600\n".to_string(),
    )]);
    let pushgateway_url = format!("{}/pgw", pushgateway.base);
    let agent = Agent::with_manager(
        &manager,
        &[
            ("OUTPOST_PROXY", proxy.url().as_str()),
            ("OUTPOST_PUSHGATEWAY_URL", pushgateway_url.as_str()),
            ("OUTPOST_ALLOW_HTTP_CONFIG", "true"),
            ("OUTPOST_COLLECTOR_CMD", "/bin/sh {config}"),
            // Ignored: OUTPOST_PROXY wins.
            ("HTTP_PROXY", "http://127.0.0.1:9"),
        ],
    );
    manager.hand_out(json!({"id": "px-col", "type": "collector_start",
        "payload": {"name": "px", "config_url": format!("{config}/collector.conf")}}));
    manager.wait_state("px-col", "running", 20 * SECOND);
    eventually("a push through the proxy", 20 * SECOND, || {
        pushgateway
            .seen()
            .iter()
            .any(|s| s.path.starts_with("/pgw/metrics/job/outpost"))
    });
    for (what, base) in [
        ("manager", manager.base.as_str()),
        ("Pushgateway", pushgateway.base.as_str()),
        ("config download", config.as_str()),
    ] {
        assert!(
            proxy.connects_to(base) > 0,
            "{what} did not go through the proxy"
        );
    }
    // The link-local refusal holds for the target, whatever the proxy.
    manager.hand_out(json!({"id": "px-meta", "type": "collector_start",
        "payload": {"name": "meta", "config_url": "http://169.254.169.254/latest/user-data"}}));
    let refused = manager.wait_state("px-meta", "rejected", 20 * SECOND);
    assert_eq!(refused["error"]["kind"], "invalid_payload", "{refused}");
    assert_eq!(proxy.connects_to("169.254.169.254:80"), 0);
    let routes = &status(&agent)["proxy"];
    assert!(
        routes["manager"]
            .as_str()
            .unwrap()
            .starts_with(&format!("via {}", proxy.url())),
        "{routes}"
    );
    assert!(
        routes["pushgateway"]
            .as_str()
            .unwrap()
            .contains("OUTPOST_PROXY")
    );
}

#[test]
fn no_proxy_bypasses_the_standard_variables() {
    let proxy = Tinyproxy::start(false);
    let manager = FakeManager::start();
    let agent = Agent::with_manager(
        &manager,
        &[
            ("HTTP_PROXY", proxy.url().as_str()),
            ("HTTPS_PROXY", proxy.url().as_str()),
            ("NO_PROXY", "example.org,127.0.0.0/8"),
        ],
    );
    manager.hand_out(json!({"id": "np-1", "type": "system_info"}));
    manager.wait_state("np-1", "succeeded", 20 * SECOND);
    assert_eq!(proxy.connects_to(&manager.base), 0);
    let route = status(&agent)["proxy"]["manager"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(route, "direct (NO_PROXY 127.0.0.0/8)");
    // Without the exception the same variables are used.
    let through = Agent::with_manager(&manager, &[("HTTP_PROXY", proxy.url().as_str())]);
    eventually("registration through HTTP_PROXY", 20 * SECOND, || {
        proxy.connects_to(&manager.base) > 0
    });
    drop(through);
}

#[test]
fn a_proxy_that_wants_credentials() {
    let proxy = Tinyproxy::start(true);
    let manager = FakeManager::start();
    let with = format!("http://alice:{PASSWORD}@127.0.0.1:{}", proxy.port);
    let without = proxy.url();
    let wrong = format!("http://alice:wrong-{PASSWORD}@127.0.0.1:{}", proxy.port);

    // --check-config masks them.
    let out = command(&[
        ("OUTPOST_PROXY", with.as_str()),
        ("OUTPOST_MANAGER_URL", manager.base.as_str()),
        ("OUTPOST_AGENT_KEY", KEY),
        ("OUTPOST_AGENT_NAME", "edge-17"),
        ("OUTPOST_STATE_DIR", "/tmp/outpost-proxy-check"),
    ])
    .arg("--check-config")
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
    assert!(
        text.contains(&format!(
            "proxy for the manager: via http://alice:***@127.0.0.1:{}",
            proxy.port
        )),
        "{text}"
    );

    for (label, url) in [("none", without.as_str()), ("wrong", wrong.as_str())] {
        let agent = Agent::with_manager(
            &manager,
            &[("OUTPOST_PROXY", url), ("OUTPOST_LOG_LEVEL", "trace")],
        );
        let last_error = || {
            status(&agent)["manager"]["last_error"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        eventually(
            &format!("{label}: the proxy's refusal reported"),
            20 * SECOND,
            // tinyproxy: 407 without credentials, 401 for wrong ones.
            || last_error().contains("proxy wants other credentials"),
        );
        let error = last_error();
        assert!(
            error.contains("through proxy http://") && error.contains(&format!(":{}", proxy.port)),
            "{label}: {error}"
        );
        assert!(!error.contains(PASSWORD), "{label}: {error}");
        assert!(
            !agent.output().contains(PASSWORD),
            "{label}: the password is in the log"
        );
        assert!(manager.seen_at("/v1/agent/register").is_empty());
    }

    let agent = Agent::with_manager(
        &manager,
        &[
            ("OUTPOST_PROXY", with.as_str()),
            ("OUTPOST_LOG_LEVEL", "trace"),
        ],
    );
    manager.hand_out(json!({"id": "auth-1", "type": "system_info"}));
    manager.wait_state("auth-1", "succeeded", 20 * SECOND);
    assert!(proxy.connects_to(&manager.base) > 0);
    let (_, body) = agent.get("/status");
    assert!(!body.contains(PASSWORD));
    assert!(
        !agent.output().contains(PASSWORD),
        "the password is in the trace log"
    );
}

#[test]
fn a_proxy_that_is_down_is_waited_for_and_nothing_is_lost() {
    let port = free_port();
    let manager = FakeManager::start();
    let url = format!("http://127.0.0.1:{port}");
    let agent = Agent::with_manager(&manager, &[("OUTPOST_PROXY", url.as_str())]);
    manager.hand_out(json!({"id": "down-1", "type": "system_info"}));
    eventually("the dead proxy named in /status", 20 * SECOND, || {
        status(&agent)["manager"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("through proxy {url}")))
    });
    assert!(manager.seen().is_empty(), "nothing reaches the manager");
    let proxy = Tinyproxy::start_on(port, false);
    // The backoff is at most a few seconds this early.
    manager.wait_state("down-1", "succeeded", 60 * SECOND);
    assert!(proxy.connects_to(&manager.base) > 0);
}
