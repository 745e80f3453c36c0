//! The health responder under abuse: idle connections by the thousand,
//! heads that never end, binary garbage, and a load generator. `/health`
//! must keep answering quickly through all of it.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, FakeManager, Rng, http_get, require_tool, rss_kib};

/// The median and the slowest of `n` sequential `/health` requests. Tests
/// hold the median to the 100 ms bound (a single slow one on a busy CI
/// machine is noise, and is printed).
fn health_latency(addr: &str, n: usize) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let (code, _) = http_get(addr, "/health");
            assert_eq!(code, 200);
            t.elapsed()
        })
        .collect();
    times.sort();
    (times[n / 2], times[n - 1])
}

#[test]
fn a_thousand_idle_connections_do_not_lock_out_health() {
    let agent = Agent::start(&[]);
    let addr = agent.http_addr();
    let before = rss_kib(agent.child.id());
    // Slowloris: 1,000 connections, each sending half a request head and
    // then nothing.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let mut s = TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nX-Slow: ");
        idle.push(s);
    }
    let (median, worst) = health_latency(&addr, 20);
    println!("/health with 1,000 idle connections: median {median:?}, worst {worst:?}");
    assert!(
        median < Duration::from_millis(100),
        "/health took {median:?}"
    );
    let after = rss_kib(agent.child.id());
    println!("RSS {before} KiB -> {after} KiB");
    // At most 256 connections of at most 8 KiB each are kept.
    assert!(
        after < before + 4 * 1024,
        "memory grew from {before} to {after} KiB"
    );
    let (_, metrics) = agent.get("/metrics");
    assert!(
        !metrics.contains("outpost_http_connections_dropped_total 0"),
        "idle connections were dropped"
    );
    drop(idle);
}

#[test]
fn endless_and_binary_heads_are_cut_off() {
    let agent = Agent::start(&[]);
    let addr = agent.http_addr();
    // A head that keeps coming: answered 431 once it passes 8 KiB, and the
    // connection closed, however much more the client sends.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nX: ");
    let _ = s.write_all(&vec![b'a'; 16 * 1024]);
    let mut answer = Vec::new();
    // read_to_end ends Ok only at EOF: the responder closed the connection
    // (a read timeout would be an Err).
    let closed = std::io::Read::read_to_end(&mut s, &mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
    assert!(
        closed.is_ok(),
        "the connection stayed open after the 431: {closed:?}"
    );
    // Random binary heads of many sizes.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for size in [1, 7, 100, 4000, 8192, 9000, 20000] {
        let bytes: Vec<u8> = (0..size).map(|_| rng.next_u64() as u8).collect();
        let mut s = TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(&bytes);
        let _ = s.write_all(b"\r\n\r\n");
    }
    let (median, worst) = health_latency(&addr, 5);
    println!("/health after garbage: median {median:?}, worst {worst:?}");
    assert!(median < Duration::from_millis(100));
}

#[test]
fn health_stays_quick_under_a_load_generator() {
    require_tool("wrk", "wrk");
    let manager = FakeManager::start();
    let agent = Agent::with_manager(&manager, &[]);
    let addr = agent.http_addr();
    common::eventually("registered", Duration::from_secs(10), || {
        agent.get("/ready").0 == 200
    });
    let before = rss_kib(agent.child.id());
    let load_began = Instant::now();
    let wrk = Command::new("wrk")
        .args(["-t1", "-c64", "-d4s", &format!("http://{addr}/metrics")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500)); // let the load build up
    let (median, worst) = health_latency(&addr, 30);
    let out = wrk.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}\n/health under load: median {median:?}, worst {worst:?}");
    assert!(report.contains("Requests/sec"), "{report}");
    assert!(
        median < Duration::from_millis(100),
        "/health took {median:?} under load"
    );
    // Nothing else slowed: the 200 ms heartbeats went on through the load
    // (a gap of a second would be five missed beats), and memory did not
    // follow the request count.
    let beats: Vec<Instant> = manager
        .seen_at("/v1/agent/heartbeat")
        .iter()
        .map(|s| s.at)
        .filter(|at| *at > load_began)
        .collect();
    let widest = beats
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    println!(
        "heartbeats during the load: {}, widest gap {widest:?}",
        beats.len()
    );
    assert!(beats.len() >= 10, "{} heartbeats in 4 s", beats.len());
    assert!(
        widest < Duration::from_secs(1),
        "a heartbeat gap of {widest:?}"
    );
    let after = rss_kib(agent.child.id());
    println!("RSS {before} KiB -> {after} KiB");
    assert!(
        after < before + 4 * 1024,
        "memory grew from {before} to {after} KiB"
    );
}
