//! Pushes the agent's metrics to a Prometheus Pushgateway (section 7), for
//! fleets where no Prometheus can reach the devices.
//!
//! Its own thread and its own HTTP agent with short timeouts: a slow or dead
//! Pushgateway costs this thread its time and never delays a heartbeat.
//! The URL comes from `OUTPOST_PUSHGATEWAY_URL` or a register answer, and is
//! read again before every push.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::stop::Stop;
use crate::telemetry::{Telemetry, Worker};

const TIMEOUT: Duration = Duration::from_secs(10);

/// `PUT <url>/metrics/job/outpost/instance/<name>`.
pub fn push_url(base: &str, name: &str) -> String {
    format!(
        "{}/metrics/job/outpost/instance/{}",
        base.trim_end_matches('/'),
        crate::manager::percent_encode(name)
    )
}

pub fn run(
    telemetry: Arc<Telemetry>,
    tls: ureq::tls::TlsConfig,
    proxy: crate::proxy::ProxyRule,
    stop: Stop,
) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(TIMEOUT))
        .max_redirects(0)
        .tls_config(tls)
        .user_agent(format!("outpost/{}", crate::VERSION))
        .proxy(None)
        .build()
        .new_agent();
    let mut failing = false;
    loop {
        let (url, interval) = {
            let s = telemetry.session();
            (s.pushgateway_url.clone(), s.heartbeat_interval)
        };
        telemetry.progress(Worker::Push, interval + TIMEOUT + Duration::from_secs(10));
        if let Some(base) = url {
            let url = push_url(&base, &telemetry.name);
            let body = telemetry.render_metrics();
            // The URL can change at each registration: the proxy is chosen
            // for each push.
            let via = proxy.via(&url);
            let outcome = agent
                .put(&url)
                .header("Content-Type", "text/plain; version=0.0.4")
                .config()
                .proxy(proxy.for_url(&url))
                .build()
                .send(body.as_bytes())
                .map_err(|e| format!("{e}{via}"))
                .and_then(|mut r| {
                    let status = r.status().as_u16();
                    if (200..300).contains(&status) {
                        Ok(())
                    } else {
                        let text = r
                            .body_mut()
                            .with_config()
                            .limit(4096)
                            .read_to_string()
                            .unwrap_or_default();
                        Err(format!("HTTP {status}: {}", text.trim()))
                    }
                });
            match outcome {
                Ok(()) => {
                    telemetry.pushes.fetch_add(1, Ordering::Relaxed);
                    if failing {
                        log::info!("pushing metrics to {base} works again");
                    }
                    failing = false;
                }
                Err(e) => {
                    telemetry.push_failures.fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        log::warn!("cannot push metrics to {url}: {e}");
                    }
                    failing = true;
                }
            }
        }
        if stop.wait(interval) {
            break;
        }
    }
    telemetry.retire(Worker::Push);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_layout() {
        assert_eq!(
            push_url("http://pgw:9091/", "edge-17"),
            "http://pgw:9091/metrics/job/outpost/instance/edge-17"
        );
    }
}
