//! Pushing to the real Prometheus Pushgateway, and reading the series back.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Agent, FakeManager, Reply, eventually, free_port, http_get, require_tool};
use serde_json::json;

const SECOND: Duration = Duration::from_secs(1);

struct Pushgateway {
    child: Child,
    addr: String,
}

impl Pushgateway {
    /// Starts one on a free port. The port is only known free a moment
    /// before the Pushgateway binds it, and the tests run in parallel: a
    /// connect could reach another test's Pushgateway while this one failed
    /// to bind. So this one's own process must hold the listening socket,
    /// else it starts again on another port.
    fn start() -> Pushgateway {
        require_tool("prometheus-pushgateway", "prometheus-pushgateway");
        for _ in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let child = std::cell::RefCell::new(
                Command::new("prometheus-pushgateway")
                    .arg(format!("--web.listen-address={addr}"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
            let pid = child.borrow().id() as i32;
            let exited = || child.borrow_mut().try_wait().ok().flatten().is_some();
            eventually("the Pushgateway listening or gone", 10 * SECOND, || {
                outpost::tasks::is_listening(std::path::Path::new("/"), pid, port) || exited()
            });
            if !exited() {
                return Pushgateway {
                    child: child.into_inner(),
                    addr,
                };
            }
        }
        panic!("the Pushgateway did not start on any of five free ports");
    }

    fn metrics(&self) -> String {
        http_get(&self.addr, "/metrics").1
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pushes_every_interval_and_the_series_read_back() {
    let pgw = Pushgateway::start();
    let url = format!("http://{}", pgw.addr);
    let agent = Agent::start(&[
        ("OUTPOST_PUSHGATEWAY_URL", &url),
        ("OUTPOST_HEARTBEAT_INTERVAL", "300ms"),
    ]);
    eventually("agent series at the Pushgateway", 10 * SECOND, || {
        let text = pgw.metrics();
        text.contains("outpost_uptime_seconds{instance=\"edge-17\",job=\"outpost\"}")
            && text.contains("node_memory_MemTotal_bytes{instance=\"edge-17\",job=\"outpost\"}")
    });
    eventually("pushes counted", 10 * SECOND, || {
        let (_, metrics) = agent.get("/metrics");
        metrics.lines().any(|l| {
            l.starts_with("outpost_pushgateway_pushes_total ")
                && l.split(' ').nth(1).and_then(|v| v.parse::<u64>().ok()) >= Some(3)
        }) && metrics.contains("outpost_pushgateway_failures_total 0")
    });
}

#[test]
fn the_register_answer_sets_the_url_and_failures_are_counted() {
    let pgw = Pushgateway::start();
    let url = format!("http://{}", pgw.addr);
    let manager = FakeManager::start();
    let from_manager = url.clone();
    manager.set_script(move |seen| match seen.path.as_str() {
        "/v1/agent/register" => Reply::json(
            200,
            json!({"agent_id": "a-test", "pushgateway_url": from_manager}),
        ),
        _ => common::default_reply(seen),
    });
    // The configured URL points nowhere; the manager's answer replaces it.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let agent = Agent::with_manager(&manager, &[("OUTPOST_PUSHGATEWAY_URL", &dead)]);
    eventually(
        "series pushed to the manager's Pushgateway",
        10 * SECOND,
        || {
            pgw.metrics()
                .contains("outpost_registered{instance=\"edge-17\",job=\"outpost\"} 1")
        },
    );
    drop(agent);

    let agent = Agent::start(&[
        ("OUTPOST_PUSHGATEWAY_URL", &dead),
        ("OUTPOST_HEARTBEAT_INTERVAL", "200ms"),
    ]);
    eventually(
        "failures counted while /health keeps answering",
        10 * SECOND,
        || {
            let (_, metrics) = agent.get("/metrics");
            !metrics.contains("outpost_pushgateway_failures_total 0")
                && metrics.contains("outpost_pushgateway_failures_total")
        },
    );
    assert_eq!(agent.get("/health").0, 200);
    assert!(
        agent.output().contains("cannot push metrics"),
        "{}",
        agent.output()
    );
}
