//! The manager link over real TLS: a private CA (`OUTPOST_CA_FILE`) and a
//! client certificate (mutual TLS), with socat terminating TLS in front of
//! the fake manager and openssl making the certificates.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    Agent, FakeManager, KEY, TempDir, config_server, eventually, free_port, require_tool,
};

const SECOND: Duration = Duration::from_secs(1);

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=outpost test CA",
    ]);
    openssl(dir, &ca);
    for (name, cn, ext) in [
        (
            "server",
            "/CN=127.0.0.1",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "/CN=edge-17", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\n{ext}"),
        )
        .unwrap();
        let (key, csr, pem, extfile) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", cn]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ],
        );
    }
}

struct Socat(Child);

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// TLS on `port`, requiring a client certificate from the CA, in front of
/// the plain-HTTP fake manager.
fn tls_front(dir: &Path, port: u16, backend: &str) -> Socat {
    tls_front_with(dir, port, backend, true)
}

fn tls_front_with(dir: &Path, port: u16, backend: &str, verify_client: bool) -> Socat {
    let backend = backend.trim_start_matches("http://");
    let child = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={d}/server.pem,key={d}/server.key,cafile={d}/ca.pem,verify={v}",
            d = dir.display(),
            v = u8::from(verify_client)
        ))
        .arg(format!("TCP:{backend}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually("socat listening", 10 * SECOND, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Socat(child)
}

#[test]
fn mutual_tls_with_a_private_ca() {
    require_tool("openssl", "openssl");
    require_tool("socat", "socat");
    let certs = TempDir::new("tls");
    make_certificates(certs.path());
    let manager = FakeManager::start();
    let port = free_port();
    let _front = tls_front(certs.path(), port, &manager.base);
    let url = format!("https://127.0.0.1:{port}");
    let file = |n: &str| certs.path().join(n).display().to_string();

    let agent = Agent::start(&[
        ("OUTPOST_MANAGER_URL", &url),
        ("OUTPOST_AGENT_KEY", KEY),
        ("OUTPOST_HEARTBEAT_INTERVAL", "200ms"),
        ("OUTPOST_CA_FILE", &file("ca.pem")),
        ("OUTPOST_CLIENT_CERT", &file("client.pem")),
        ("OUTPOST_CLIENT_KEY", &file("client.key")),
    ]);
    manager.wait_for("a heartbeat through TLS", 15 * SECOND, |seen| {
        seen.iter().any(|s| s.path == "/v1/agent/heartbeat")
    });
    assert_eq!(manager.seen()[0].header("x-agent-key"), KEY);
    drop(agent);

    // Without the client certificate the TLS front refuses the agent: no
    // request reaches the manager, and /status says why.
    let manager2 = FakeManager::start();
    let port2 = free_port();
    let _front2 = tls_front(certs.path(), port2, &manager2.base);
    let url2 = format!("https://127.0.0.1:{port2}");
    let agent = Agent::start(&[
        ("OUTPOST_MANAGER_URL", &url2),
        ("OUTPOST_AGENT_KEY", KEY),
        ("OUTPOST_CA_FILE", &file("ca.pem")),
    ]);
    eventually("a failed registration", 15 * SECOND, || {
        let (_, status) = agent.get("/status");
        serde_json::from_str::<serde_json::Value>(&status).is_ok_and(|s| {
            s["manager"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("register"))
        })
    });
    assert!(manager2.seen().is_empty());
    drop(agent);

    // The built-in roots do not trust a private CA.
    let manager3 = FakeManager::start();
    let port3 = free_port();
    let _front3 = tls_front(certs.path(), port3, &manager3.base);
    let url3 = format!("https://127.0.0.1:{port3}");
    let agent = Agent::start(&[
        ("OUTPOST_MANAGER_URL", &url3),
        ("OUTPOST_AGENT_KEY", KEY),
        ("OUTPOST_CLIENT_CERT", &file("client.pem")),
        ("OUTPOST_CLIENT_KEY", &file("client.key")),
    ]);
    eventually("a certificate error", 15 * SECOND, || {
        let (_, status) = agent.get("/status");
        serde_json::from_str::<serde_json::Value>(&status).is_ok_and(|s| {
            s["manager"]["last_error"]
                .as_str()
                .is_some_and(|e| e.to_lowercase().contains("certificate"))
        })
    });
    assert!(manager3.seen().is_empty());
}

#[test]
fn bad_pem_files_are_exit_78_naming_the_setting() {
    let dir = TempDir::new("badpem");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let junk = junk.display().to_string();
    for (env, setting) in [
        (vec![("OUTPOST_CA_FILE", junk.as_str())], "OUTPOST_CA_FILE"),
        (
            vec![
                ("OUTPOST_CLIENT_CERT", junk.as_str()),
                ("OUTPOST_CLIENT_KEY", junk.as_str()),
            ],
            "OUTPOST_CLIENT_CERT",
        ),
        (
            vec![("OUTPOST_CLIENT_CERT", junk.as_str())],
            "OUTPOST_CLIENT_KEY",
        ),
    ] {
        let mut all = vec![("OUTPOST_STATE_DIR", "/tmp/outpost-never-used")];
        all.extend(env);
        let out = common::command(&all)
            .arg("--check-config")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        assert!(stderr.contains(setting), "{stderr}");
    }
}

#[test]
fn configs_download_over_https_and_never_follow_a_redirect_down_to_http() {
    require_tool("openssl", "openssl");
    require_tool("socat", "socat");
    let certs = TempDir::new("tls-config");
    make_certificates(certs.path());
    let plain = config_server(vec![
        ("/ok.conf", 200, "exec sleep 3600 # tls-ok\n".to_string()),
        ("/down", 302, String::new()),
    ]);
    let port = free_port();
    let _front = tls_front_with(certs.path(), port, &plain, false);
    // The redirect target is only known once the plain server has a port.
    let plain2 = config_server(vec![("/down", 302, format!("{plain}/ok.conf"))]);
    let port2 = free_port();
    let _front2 = tls_front_with(certs.path(), port2, &plain2, false);
    let manager = FakeManager::start();
    let ca = certs.path().join("ca.pem").display().to_string();
    let _agent = Agent::with_manager(
        &manager,
        &[
            ("OUTPOST_COLLECTOR_CMD", "/bin/sh {config}"),
            ("OUTPOST_ALLOW_HTTP_CONFIG", "true"),
            ("OUTPOST_CA_FILE", &ca),
        ],
    );
    manager.hand_out(serde_json::json!({"id": "tls-1", "type": "collector_start",
        "payload": {"config_url": format!("https://127.0.0.1:{port}/ok.conf")}}));
    manager.wait_state("tls-1", "running", 20 * SECOND);
    manager.hand_out(serde_json::json!({"id": "tls-2", "type": "collector_start",
        "payload": {"name": "down", "config_url": format!("https://127.0.0.1:{port2}/down")}}));
    let failed = manager.wait_state("tls-2", "failed", 20 * SECOND);
    assert_eq!(failed["error"]["kind"], "download_failed");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("https down to http"),
        "{failed}"
    );
}
