//! The manager link: the only code that speaks HTTP to the manager.
//!
//! It owns the headers every request carries (section 1), the timeouts, TLS
//! (custom CA, mutual TLS), the body-size caps, and the translation of status
//! codes into the few outcomes the rest of the agent acts on ([`Failure`]).
//! Retrying is the caller's business, because what to retry differs: a
//! heartbeat is rebuilt fresh, a status update is resent as it was.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::secret::Secret;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Added to a long poll's `wait` for its read timeout.
pub const POLL_GRACE: Duration = Duration::from_secs(15);
/// Ordinary answers are small; a bigger one is a manager bug, not data.
pub const MAX_ANSWER_BYTES: u64 = 1024 * 1024;
/// A claim may carry several tasks with inline configs of up to 1 MiB each.
pub const MAX_CLAIM_BYTES: u64 = 16 * 1024 * 1024;
/// How much of an unexpected error body goes into a log line.
const LOGGED_BODY_BYTES: usize = 512;

/// The manager endpoints, named as in `/metrics` labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    Register,
    Heartbeat,
    Claim,
    Status,
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [
        Endpoint::Register,
        Endpoint::Heartbeat,
        Endpoint::Claim,
        Endpoint::Status,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Register => "register",
            Endpoint::Heartbeat => "heartbeat",
            Endpoint::Claim => "claim",
            Endpoint::Status => "status",
        }
    }
}

/// What went wrong with one call, sorted by what the caller must do next.
#[derive(Debug)]
pub enum Failure {
    /// 401 or 403: on register, stop (exit 78); elsewhere, register again.
    Unauthorized { status: u16 },
    /// 404 on heartbeat, claim or status: the manager forgot us; register again.
    UnknownAgent,
    /// 408, 429, 5xx, connection trouble, timeouts, unreadable answers:
    /// retry with backoff, forever.
    Transient {
        retry_after: Option<Duration>,
        detail: String,
    },
    /// Any other 4xx (and unexpected 3xx): retry at the backoff cap.
    Rejected { status: u16, body: String },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unauthorized { status } => write!(f, "key rejected (HTTP {status})"),
            Failure::UnknownAgent => write!(f, "the manager does not know this agent (HTTP 404)"),
            Failure::Transient { detail, .. } => write!(f, "{detail}"),
            Failure::Rejected { status, body } => write!(f, "HTTP {status}: {body}"),
        }
    }
}

/// `POST /v1/agent/register` body.
#[derive(Serialize)]
pub struct RegisterRequest<'a> {
    pub name: &'a str,
    pub agent_version: &'static str,
    pub instance_id: &'a str,
    pub agent_id: Option<&'a str>,
    pub system: &'a crate::sysinfo::SystemInfo,
    pub capabilities: &'a Capabilities,
    pub tasks: Vec<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Capabilities {
    pub task_types: Vec<&'static str>,
    pub iperf3_version: Option<String>,
    pub collector_available: bool,
    pub max_concurrent_tasks: u32,
    /// Section 4.2: tasks run in cgroups of their own, and `limits` work.
    pub cgroups: bool,
}

#[derive(Debug, Deserialize)]
pub struct RegisterAnswer {
    pub agent_id: String,
    #[serde(default)]
    pub heartbeat_interval_s: Option<f64>,
    #[serde(default)]
    pub poll_wait_s: Option<f64>,
    /// Absent: the agent's own setting; `null`: no Pushgateway for this
    /// registration (section 3.1).
    #[serde(default, deserialize_with = "present")]
    pub pushgateway_url: Option<Option<String>>,
    /// Heartbeat metric categories (section 3.1); kept raw so that a bad
    /// value cannot fail the whole answer (`Categories::from_manager_value`).
    #[serde(default, deserialize_with = "present")]
    pub metrics: Option<serde_json::Value>,
}

/// Tells a field that is present (even as `null`) from one that is absent.
fn present<'de, D, T>(deserializer: D) -> std::result::Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

#[derive(Debug, Default, Deserialize)]
pub struct HeartbeatAnswer {
    #[serde(default)]
    pub heartbeat_interval_s: Option<f64>,
    /// As in [`RegisterAnswer`]; `None` when the field is absent, and
    /// `Some(Null)` for an explicit `null`.
    #[serde(default, deserialize_with = "present")]
    pub metrics: Option<serde_json::Value>,
}

/// Cheap to clone: clones share one connection pool and TLS setup.
#[derive(Clone)]
pub struct Manager {
    agent: ureq::Agent,
    base: String,
    name: String,
    key: Secret,
    user_agent: String,
    /// ` (through proxy http://user:***@host:port)`, or empty: said in
    /// every connection error, so a proxy at fault is named.
    via: String,
}

impl Manager {
    pub fn new(config: &Config, tls: ureq::tls::TlsConfig) -> Result<Manager> {
        let base = config
            .manager_url
            .clone()
            .ok_or_else(|| Error::config("OUTPOST_MANAGER_URL", "not set"))?;
        let key = config
            .agent_key
            .clone()
            .ok_or_else(|| Error::config("OUTPOST_AGENT_KEY", "not set"))?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(READ_TIMEOUT))
            .timeout_recv_body(Some(READ_TIMEOUT))
            .timeout_send_body(Some(READ_TIMEOUT))
            // A redirect would carry the key to wherever it points.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .tls_config(tls)
            .user_agent(format!("outpost/{}", crate::VERSION))
            // Always set: left unset, ureq would read the environment
            // itself, past OUTPOST_PROXY and NO_PROXY's CIDR entries.
            .proxy(config.proxy.for_url(&base))
            .build()
            .new_agent();
        let via = config.proxy.via(&base);
        Ok(Manager {
            via,
            agent,
            base,
            name: config.agent_name.clone(),
            key,
            user_agent: format!("outpost/{}", crate::VERSION),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn register(
        &self,
        body: &RegisterRequest,
        idempotency_key: &str,
    ) -> Result<RegisterAnswer, Failure> {
        let bytes = self.post(
            Endpoint::Register,
            "/v1/agent/register",
            body,
            idempotency_key,
            READ_TIMEOUT,
            MAX_ANSWER_BYTES,
        )?;
        let answer: RegisterAnswer = decode(Endpoint::Register, &bytes)?;
        if !crate::ids::is_valid_id(&answer.agent_id) {
            return Err(Failure::Transient {
                retry_after: None,
                detail: format!(
                    "register answer has an unusable agent_id {:?}",
                    crate::ids::escape_for_log(&answer.agent_id)
                ),
            });
        }
        Ok(answer)
    }

    pub fn heartbeat(
        &self,
        body: &impl Serialize,
        idempotency_key: &str,
    ) -> Result<HeartbeatAnswer, Failure> {
        let bytes = self.post(
            Endpoint::Heartbeat,
            "/v1/agent/heartbeat",
            body,
            idempotency_key,
            READ_TIMEOUT,
            MAX_ANSWER_BYTES,
        )?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(HeartbeatAnswer::default());
        }
        decode(Endpoint::Heartbeat, &bytes)
    }

    /// Long-polls for tasks (section 3.3); the raw task objects, checked by
    /// the caller one by one so that one bad task cannot hide the others.
    pub fn claim(
        &self,
        agent_id: &str,
        max_tasks: u32,
        wait: Duration,
    ) -> Result<Vec<serde_json::Value>, Failure> {
        #[derive(Serialize)]
        struct Body<'a> {
            agent_id: &'a str,
            max_tasks: u32,
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            tasks: Vec<serde_json::Value>,
        }
        let wait_s = wait.as_secs();
        let bytes = self.post(
            Endpoint::Claim,
            &format!("/v1/agent/tasks/claim?wait={wait_s}"),
            &Body {
                agent_id,
                max_tasks,
            },
            // A claim is not replayed: a lost answer's tasks are handed out
            // again by the manager (section 3.3).
            &format!("claim:{agent_id}:{}", crate::ids::new_uuid()),
            wait + POLL_GRACE,
            MAX_CLAIM_BYTES,
        )?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Vec::new());
        }
        let answer: Answer = decode(Endpoint::Claim, &bytes)?;
        Ok(answer.tasks)
    }

    /// Sends one status update (section 3.4); `Ok` on 2xx and on 409.
    pub fn status(&self, agent_id: &str, update: &crate::update::Update) -> Result<(), Failure> {
        #[derive(Serialize)]
        struct Body<'a> {
            agent_id: &'a str,
            #[serde(flatten)]
            update: &'a crate::update::Update,
        }
        self.post(
            Endpoint::Status,
            &format!("/v1/agent/tasks/{}/status", percent_encode(&update.task_id)),
            &Body { agent_id, update },
            &format!("status:{}:{}", update.task_id, update.seq),
            READ_TIMEOUT,
            MAX_ANSWER_BYTES,
        )
        .map(|_| ())
    }

    /// One POST with the common headers; the answer body on 2xx.
    fn post(
        &self,
        endpoint: Endpoint,
        path: &str,
        body: &impl Serialize,
        idempotency_key: &str,
        read_timeout: Duration,
        max_bytes: u64,
    ) -> Result<Vec<u8>, Failure> {
        let json = serde_json::to_vec(body).map_err(|e| Failure::Transient {
            retry_after: None,
            detail: format!("cannot encode the {} body: {e}", endpoint.label()),
        })?;
        let url = format!("{}{path}", self.base);
        let request = self
            .agent
            .post(&url)
            .header("X-Agent-Name", &self.name)
            .header("X-Agent-Key", self.key.expose())
            .header("X-API-Version", "1")
            .header("User-Agent", &self.user_agent)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", idempotency_key)
            .config()
            .timeout_recv_response(Some(read_timeout))
            .build();
        let mut response = request.send(&json[..]).map_err(|e| Failure::Transient {
            retry_after: None,
            detail: format!(
                "{} request to {url} failed: {}{}",
                endpoint.label(),
                describe(&e),
                self.via
            ),
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let declared = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = match declared {
            // A status update is delivered by the status line alone; what
            // follows it is not read, so no answer can hold an update back.
            _ if endpoint == Endpoint::Status && (200..300).contains(&status) => Ok(Vec::new()),
            // Refused before a byte is buffered: an oversized answer costs
            // no memory.
            Some(length) if length > max_bytes => Err(ureq::Error::BodyExceedsLimit(max_bytes)),
            _ => response
                .body_mut()
                .with_config()
                .limit(max_bytes)
                .read_to_vec(),
        };
        classify(endpoint, status, retry_after, body)
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Turns a status code and body into the protocol's outcomes (section 1).
fn classify(
    endpoint: Endpoint,
    status: u16,
    retry_after: Option<Duration>,
    body: Result<Vec<u8>, ureq::Error>,
) -> Result<Vec<u8>, Failure> {
    match status {
        200..=299 => body.map_err(|e| Failure::Transient {
            retry_after: None,
            detail: format!(
                "{} answer (HTTP {status}) could not be read: {}",
                endpoint.label(),
                describe(&e)
            ),
        }),
        // The manager already has this update: as good as delivered.
        409 if endpoint == Endpoint::Status => Ok(Vec::new()),
        401 | 403 => Err(Failure::Unauthorized { status }),
        404 if endpoint != Endpoint::Register => Err(Failure::UnknownAgent),
        408 | 429 | 500..=599 => Err(Failure::Transient {
            retry_after,
            detail: format!("{} answered HTTP {status}", endpoint.label()),
        }),
        _ => Err(Failure::Rejected {
            status,
            body: body.map(|b| loggable(&b)).unwrap_or_default(),
        }),
    }
}

fn decode<T: serde::de::DeserializeOwned>(endpoint: Endpoint, bytes: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(bytes).map_err(|e| Failure::Transient {
        retry_after: None,
        detail: format!("{} answer is not the expected JSON: {e}", endpoint.label()),
    })
}

/// A body cut to one printable line for the log.
fn loggable(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(LOGGED_BODY_BYTES)]);
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::BodyExceedsLimit(limit) => format!("answer larger than {limit} bytes"),
        other => match crate::proxy::explain(other) {
            Some(meaning) => format!("{other}: {meaning}"),
            None => other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_percent_encoded() {
        assert_eq!(percent_encode("t-1.a_b"), "t-1.a_b");
        assert_eq!(percent_encode("job:42"), "job%3A42");
    }

    #[test]
    fn status_409_counts_as_delivered() {
        assert!(classify(Endpoint::Status, 409, None, Ok(vec![])).is_ok());
        assert!(matches!(
            classify(Endpoint::Heartbeat, 409, None, Ok(vec![])),
            Err(Failure::Rejected { status: 409, .. })
        ));
    }

    #[test]
    fn status_codes_follow_section_1() {
        let ok = || Ok(b"{}".to_vec());
        assert!(classify(Endpoint::Heartbeat, 200, None, ok()).is_ok());
        assert!(classify(Endpoint::Status, 204, None, Ok(vec![])).is_ok());
        for status in [401, 403] {
            assert!(matches!(
                classify(Endpoint::Register, status, None, ok()),
                Err(Failure::Unauthorized { .. })
            ));
        }
        assert!(matches!(
            classify(Endpoint::Heartbeat, 404, None, ok()),
            Err(Failure::UnknownAgent)
        ));
        assert!(matches!(
            classify(Endpoint::Register, 404, None, ok()),
            Err(Failure::Rejected { status: 404, .. })
        ));
        for status in [408, 429, 500, 502, 503, 599] {
            assert!(matches!(
                classify(Endpoint::Claim, status, Some(Duration::from_secs(3)), ok()),
                Err(Failure::Transient {
                    retry_after: Some(_),
                    ..
                })
            ));
        }
        assert!(matches!(
            classify(Endpoint::Heartbeat, 422, None, Ok(b"bad\nfield".to_vec())),
            Err(Failure::Rejected { status: 422, body }) if body == "bad field"
        ));
    }
}
