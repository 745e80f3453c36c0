//! Decoding and checking a Task (PROTOCOL.md section 4) before anything runs.
//!
//! Every field is checked here, once, into typed values; nothing downstream
//! sees raw JSON. Values that end up in iperf3's argument vector are checked
//! so that none can be taken for an option (a server name such as `-D` would
//! otherwise turn a client run into a daemon).

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::ids;
use crate::update::ErrorKind;

/// The task types this build runs.
pub const TYPES: &[&str] = &[
    "iperf_server_start",
    "iperf_client_run",
    "kill_all",
    "task_stop",
    "collector_start",
    "collector_stop",
    "system_info",
    "agent_update",
];

/// A task that passed every check.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub id: String,
    pub kind: Kind,
    pub timeout: Option<Duration>,
    /// Section 4.2, on the three process types.
    pub limits: Option<Limits>,
}

/// Resource limits a task asks for (section 4.2), checked but not yet
/// known to be enforceable: that is the task table's call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    pub memory_max_bytes: Option<u64>,
    /// 100 is one whole core.
    pub cpu_max_percent: Option<u64>,
    pub pids_max: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    IperfServer(IperfServer),
    IperfClient(IperfClient),
    KillAll,
    TaskStop { task_id: String },
    CollectorStart(CollectorStart),
    CollectorStop { name: String },
    SystemInfo,
    AgentUpdate(AgentUpdate),
}

/// Section 4.3: where the new program comes from, and what it must be.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentUpdate {
    pub source: ProgramSource,
    /// Lowercase hex.
    pub sha256: String,
    pub version: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ProgramSource {
    Url(String),
    Path(std::path::PathBuf),
}

impl Kind {
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::IperfServer(_) => "iperf_server_start",
            Kind::IperfClient(_) => "iperf_client_run",
            Kind::KillAll => "kill_all",
            Kind::TaskStop { .. } => "task_stop",
            Kind::CollectorStart(_) => "collector_start",
            Kind::CollectorStop { .. } => "collector_stop",
            Kind::SystemInfo => "system_info",
            Kind::AgentUpdate(_) => "agent_update",
        }
    }

    /// One-shot tasks end by themselves; the others run until stopped.
    pub fn is_one_shot(&self) -> bool {
        !matches!(self, Kind::IperfServer(_) | Kind::CollectorStart(_))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct IperfServer {
    pub port: u16,
    pub udp: bool,
    pub bind: Option<IpAddr>,
    pub one_off: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct IperfClient {
    pub server: String,
    pub port: u16,
    pub udp: bool,
    pub parallel: u32,
    pub time: u32,
    pub bandwidth: Option<String>,
    pub reverse: bool,
    pub bidir: bool,
    pub omit: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ConfigSource {
    Url(String),
    Inline(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    Always,
    OnFailure,
    Never,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CollectorStart {
    pub name: String,
    pub source: ConfigSource,
    pub variables: std::collections::BTreeMap<String, String>,
    /// Lowercase hex.
    pub sha256: Option<String>,
    pub restart: Restart,
    pub args: Vec<String>,
}

/// Largest inline config, as for a downloaded one.
pub const MAX_INLINE_CONFIG: usize = 1024 * 1024;

/// Why a task was not accepted.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// The id breaks the id rule: no update can be sent; log and count only.
    BadId { escaped: String },
    /// `rejected` with this error kind and message.
    Rejected {
        id: String,
        type_name: String,
        kind: ErrorKind,
        message: String,
    },
}

/// Checks a task as it came from a claim or a spool file.
pub fn decode(value: &Value) -> Result<Task, Refusal> {
    let Some(object) = value.as_object() else {
        return Err(Refusal::BadId {
            escaped: ids::escape_for_log(&value.to_string()),
        });
    };
    let id = match object.get("id") {
        Some(Value::String(id)) if ids::is_valid_id(id) => id.clone(),
        Some(Value::String(id)) => {
            return Err(Refusal::BadId {
                escaped: ids::escape_for_log(id),
            });
        }
        other => {
            return Err(Refusal::BadId {
                escaped: ids::escape_for_log(&other.map(Value::to_string).unwrap_or_default()),
            });
        }
    };
    let type_name = object
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let reject = |kind: ErrorKind, message: String| Refusal::Rejected {
        id: id.clone(),
        type_name: type_name.clone(),
        kind,
        message,
    };
    let empty = Map::new();
    let payload = match object.get("payload") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(p)) => p,
        Some(_) => {
            return Err(reject(
                ErrorKind::InvalidPayload,
                "payload: must be an object".into(),
            ));
        }
    };
    let timeout = match object.get("timeout_s") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(s) if s > 0.0 && s <= 7.0 * 86_400.0 => Some(Duration::from_secs_f64(s)),
            _ => {
                return Err(reject(
                    ErrorKind::InvalidPayload,
                    format!(
                        "timeout_s: {} is not a number of seconds from 0 to 604800",
                        shown(v)
                    ),
                ));
            }
        },
    };
    let fields = Fields(payload);
    let kind = match type_name.as_str() {
        "iperf_server_start" => fields.iperf_server(),
        "iperf_client_run" => fields.iperf_client(),
        "kill_all" => Ok(Kind::KillAll),
        "task_stop" => fields.task_stop(),
        "collector_start" => fields.collector_start(&id),
        "collector_stop" => fields.collector_stop(),
        "system_info" => Ok(Kind::SystemInfo),
        "agent_update" => fields.agent_update(),
        "" => return Err(reject(ErrorKind::UnknownType, "type: missing".into())),
        other => {
            return Err(reject(
                ErrorKind::UnknownType,
                format!(
                    "type: {:?} is not one this agent runs",
                    ids::escape_for_log(other)
                ),
            ));
        }
    }
    .map_err(|message| reject(ErrorKind::InvalidPayload, message))?;
    let limits = match kind {
        Kind::IperfServer(_) | Kind::IperfClient(_) | Kind::CollectorStart(_) => fields
            .limits()
            .map_err(|message| reject(ErrorKind::InvalidPayload, message))?,
        // Not a field of the other types: ignored, as unknown fields are.
        _ => None,
    };
    Ok(Task {
        id,
        kind,
        timeout,
        limits,
    })
}

/// The task as [`decode`] takes it back: a handover (section 4.3) carries
/// tasks this way. A collector's config is left out (the handover carries
/// the config in use).
pub fn encode(task: &Task) -> Value {
    let mut p = Map::new();
    let mut put = |k: &str, v: Value| {
        p.insert(k.to_string(), v);
    };
    match &task.kind {
        Kind::IperfServer(s) => {
            put("port", s.port.into());
            put("udp", s.udp.into());
            put("one_off", s.one_off.into());
            if let Some(bind) = s.bind {
                put("bind", bind.to_string().into());
            }
        }
        Kind::IperfClient(c) => {
            put("server", c.server.clone().into());
            put("port", c.port.into());
            put("udp", c.udp.into());
            put("parallel", c.parallel.into());
            put("time", c.time.into());
            put("reverse", c.reverse.into());
            put("bidir", c.bidir.into());
            put("omit", c.omit.into());
            if let Some(b) = &c.bandwidth {
                put("bandwidth", b.clone().into());
            }
        }
        Kind::TaskStop { task_id } => put("task_id", task_id.clone().into()),
        Kind::CollectorStop { name } => put("name", name.clone().into()),
        Kind::CollectorStart(c) => {
            put("name", c.name.clone().into());
            put("config", "".into());
            put(
                "restart",
                serde_json::to_value(c.restart).unwrap_or_default(),
            );
            put("args", c.args.clone().into());
        }
        Kind::AgentUpdate(u) => {
            match &u.source {
                ProgramSource::Url(url) => put("url", url.clone().into()),
                ProgramSource::Path(path) => put("path", path.to_string_lossy().into()),
            }
            put("sha256", u.sha256.clone().into());
            put("version", u.version.clone().into());
        }
        Kind::KillAll | Kind::SystemInfo => {}
    }
    if let Some(l) = &task.limits {
        let mut limits = Map::new();
        for (k, v) in [
            ("memory_max_bytes", l.memory_max_bytes),
            ("cpu_max_percent", l.cpu_max_percent),
            ("pids_max", l.pids_max),
        ] {
            if let Some(v) = v {
                limits.insert(k.to_string(), v.into());
            }
        }
        put("limits", Value::Object(limits));
    }
    let mut task_value = Map::new();
    task_value.insert("id".into(), task.id.clone().into());
    task_value.insert("type".into(), task.kind.type_name().into());
    task_value.insert("payload".into(), Value::Object(p));
    if let Some(t) = task.timeout {
        task_value.insert("timeout_s".into(), t.as_secs_f64().into());
    }
    Value::Object(task_value)
}

/// A value as a rejection message shows it: JSON, cut to the id length, so
/// that a multi-megabyte value cannot fill a log line or a status update.
fn shown(value: &Value) -> String {
    ids::escape_for_log(&value.to_string())
}

struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn limits(&self) -> Result<Option<Limits>, String> {
        let object = match self.0.get("limits") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(o)) => o,
            Some(v) => return Err(format!("limits: {} is not an object", shown(v))),
        };
        let cpus = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
            .ok()
            .flatten()
            .map_or(1, |n| n.max(1) as u64);
        let field = |name: &str, min: u64, max: u64| -> Result<Option<u64>, String> {
            match object.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                    _ => Err(format!(
                        "limits.{name}: {} is not a whole number from {min} to {max}",
                        shown(v)
                    )),
                },
            }
        };
        Ok(Some(Limits {
            memory_max_bytes: field("memory_max_bytes", 1024 * 1024, u64::MAX)?,
            cpu_max_percent: field("cpu_max_percent", 1, 100 * cpus)?,
            pids_max: field("pids_max", 1, u64::MAX)?,
        }))
    }

    fn bool(&self, name: &str, default: bool) -> Result<bool, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(format!("{name}: {} is not true or false", shown(v))),
        }
    }

    fn int(&self, name: &str, default: u64, min: u64, max: u64) -> Result<u64, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(format!(
                    "{name}: {} is not a whole number from {min} to {max}",
                    shown(v)
                )),
            },
        }
    }

    fn string(&self, name: &str) -> Result<Option<&str>, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(format!("{name}: {} is not a string", shown(v))),
        }
    }

    fn port(&self) -> Result<u16, String> {
        self.int("port", 5201, 1024, 65535).map(|p| p as u16)
    }

    fn iperf_server(&self) -> Result<Kind, String> {
        let bind = match self.string("bind")? {
            None => None,
            Some(text) => Some(text.parse::<IpAddr>().map_err(|_| {
                format!("bind: {:?} is not an IP address", ids::escape_for_log(text))
            })?),
        };
        Ok(Kind::IperfServer(IperfServer {
            port: self.port()?,
            udp: self.bool("udp", false)?,
            bind,
            one_off: self.bool("one_off", false)?,
        }))
    }

    fn iperf_client(&self) -> Result<Kind, String> {
        let server = self
            .string("server")?
            .ok_or_else(|| "server: required".to_string())?;
        check_host(server)?;
        let bandwidth = match self.string("bandwidth")? {
            None => None,
            Some(b) if is_bandwidth(b) => Some(b.to_string()),
            Some(b) => {
                return Err(format!(
                    "bandwidth: {:?} is not iperf3 -b syntax such as 0, 100M or 1G/10",
                    ids::escape_for_log(b)
                ));
            }
        };
        let reverse = self.bool("reverse", false)?;
        let bidir = self.bool("bidir", false)?;
        if reverse && bidir {
            return Err("reverse, bidir: only one of them can be true".into());
        }
        Ok(Kind::IperfClient(IperfClient {
            server: server.to_string(),
            port: self.port()?,
            udp: self.bool("udp", false)?,
            parallel: self.int("parallel", 1, 1, 128)? as u32,
            time: self.int("time", 10, 1, 86_400)? as u32,
            bandwidth,
            reverse,
            bidir,
            omit: self.int("omit", 0, 0, 600)? as u32,
        }))
    }

    fn collector_start(&self, id: &str) -> Result<Kind, String> {
        let name = match self.string("name")? {
            None => id.to_string(),
            Some(n) if ids::is_valid_id(n) => n.to_string(),
            Some(n) => {
                return Err(format!(
                    "name: {:?} must be 1-128 characters of A-Z a-z 0-9 . _ : -",
                    ids::escape_for_log(n)
                ));
            }
        };
        let source = match (self.string("config_url")?, self.string("config")?) {
            (Some(url), None) => ConfigSource::Url(url.to_string()),
            (None, Some(text)) if text.len() <= MAX_INLINE_CONFIG => {
                ConfigSource::Inline(text.to_string())
            }
            (None, Some(text)) => {
                return Err(format!(
                    "config: {} bytes, more than {MAX_INLINE_CONFIG}",
                    text.len()
                ));
            }
            (Some(_), Some(_)) => {
                return Err("config_url, config: give exactly one, not both".into());
            }
            (None, None) => return Err("config_url, config: one of them is required".into()),
        };
        let mut variables = std::collections::BTreeMap::new();
        match self.0.get("variables") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (k, v) in map {
                    let Some(v) = v.as_str() else {
                        return Err(format!("variables: the value of {k:?} is not a string"));
                    };
                    variables.insert(k.clone(), v.to_string());
                }
            }
            Some(v) => {
                return Err(format!(
                    "variables: {} is not an object of strings",
                    shown(v)
                ));
            }
        }
        let sha256 = match self.string("sha256")? {
            None => None,
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(h.to_ascii_lowercase())
            }
            Some(h) => {
                return Err(format!(
                    "sha256: {:?} is not 64 hex characters",
                    ids::escape_for_log(h)
                ));
            }
        };
        let restart = match self.string("restart")? {
            None | Some("always") => Restart::Always,
            Some("on-failure") => Restart::OnFailure,
            Some("never") => Restart::Never,
            Some(other) => {
                return Err(format!(
                    "restart: {:?} is not always, on-failure or never",
                    ids::escape_for_log(other)
                ));
            }
        };
        let args = match self.0.get("args") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) if items.len() <= 64 => items
                .iter()
                .map(|a| match a.as_str() {
                    Some(s) if s.len() <= 4096 && !s.contains('\0') => Ok(s.to_string()),
                    _ => Err(format!(
                        "args: {a} is not a string of at most 4096 characters"
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(v) => {
                return Err(format!(
                    "args: {} is not a list of at most 64 strings",
                    shown(v)
                ));
            }
        };
        Ok(Kind::CollectorStart(CollectorStart {
            name,
            source,
            variables,
            sha256,
            restart,
            args,
        }))
    }

    fn agent_update(&self) -> Result<Kind, String> {
        let source = match (self.string("url")?, self.string("path")?) {
            (Some(url), None) => {
                // The program runs as the agent: never over plain http.
                if !url.starts_with("https://") {
                    return Err(format!(
                        "url: {:?} is not an https:// URL",
                        ids::escape_for_log(url)
                    ));
                }
                ProgramSource::Url(url.to_string())
            }
            (None, Some(path)) if path.starts_with('/') && !path.contains('\0') => {
                ProgramSource::Path(path.into())
            }
            (None, Some(path)) => {
                return Err(format!(
                    "path: {:?} is not an absolute path",
                    ids::escape_for_log(path)
                ));
            }
            (Some(_), Some(_)) => return Err("url, path: give exactly one, not both".into()),
            (None, None) => return Err("url, path: one of them is required".into()),
        };
        let sha256 = match self.string("sha256")? {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                h.to_ascii_lowercase()
            }
            Some(h) => {
                return Err(format!(
                    "sha256: {:?} is not 64 hex characters",
                    ids::escape_for_log(h)
                ));
            }
            None => return Err("sha256: required".into()),
        };
        let version = match self.string("version")? {
            Some(v) if crate::programs::is_version(v) => v.to_string(),
            Some(v) => {
                return Err(format!(
                    "version: {:?} is not a dotted version such as 1.2.3",
                    ids::escape_for_log(v)
                ));
            }
            None => return Err("version: required".into()),
        };
        Ok(Kind::AgentUpdate(AgentUpdate {
            source,
            sha256,
            version,
        }))
    }

    fn collector_stop(&self) -> Result<Kind, String> {
        let name = self
            .string("name")?
            .ok_or_else(|| "name: required".to_string())?;
        if !ids::is_valid_id(name) {
            return Err(format!(
                "name: {:?} is not a valid collector name",
                ids::escape_for_log(name)
            ));
        }
        Ok(Kind::CollectorStop {
            name: name.to_string(),
        })
    }

    fn task_stop(&self) -> Result<Kind, String> {
        let task_id = self
            .string("task_id")?
            .ok_or_else(|| "task_id: required".to_string())?;
        if !ids::is_valid_id(task_id) {
            return Err(format!(
                "task_id: {:?} is not a valid task id",
                ids::escape_for_log(task_id)
            ));
        }
        Ok(Kind::TaskStop {
            task_id: task_id.to_string(),
        })
    }
}

/// An IP address, or a DNS name of at most 253 characters made of labels
/// of letters, digits and inner hyphens. Neither form can start with `-`.
fn check_host(host: &str) -> Result<(), String> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let valid_label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    if host.len() <= 253 && !name.is_empty() && name.split('.').all(valid_label) {
        Ok(())
    } else {
        Err(format!(
            "server: {:?} is not an IP address or a DNS name",
            ids::escape_for_log(host)
        ))
    }
}

/// iperf3's `-b` syntax: a number, an optional K/M/G/T suffix, an optional
/// `/burst` count.
fn is_bandwidth(text: &str) -> bool {
    let (rate, burst) = match text.split_once('/') {
        Some((r, b)) => (r, Some(b)),
        None => (text, None),
    };
    let rate = rate
        .strip_suffix(['k', 'K', 'm', 'M', 'g', 'G', 't', 'T'])
        .unwrap_or(rate);
    let number_ok = !rate.is_empty()
        && rate.len() <= 20
        && rate.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && rate.bytes().filter(|b| *b == b'.').count() <= 1
        && rate.as_bytes()[0].is_ascii_digit();
    let burst_ok = burst
        .is_none_or(|b| !b.is_empty() && b.len() <= 6 && b.bytes().all(|c| c.is_ascii_digit()));
    number_ok && burst_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rejected(v: Value) -> (String, String) {
        match decode(&v) {
            Err(Refusal::Rejected { kind, message, .. }) => (kind.to_string(), message),
            other => panic!("expected a rejection for {v}, got {other:?}"),
        }
    }

    #[test]
    fn a_huge_bad_value_is_cut_in_the_message() {
        let huge = "9".repeat(1 << 20);
        for task in [
            json!({"id": "t", "type": "system_info", "timeout_s": huge}),
            json!({"id": "t", "type": "iperf_client_run", "payload": {"server": "h", "parallel": huge}}),
            json!({"id": "t", "type": "collector_start", "payload": {"config": "x", "args": huge}}),
        ] {
            let (kind, message) = rejected(task);
            assert_eq!(kind, "invalid_payload");
            assert!(message.len() < 300, "{} bytes", message.len());
            assert!(message.contains('…'), "{message}");
        }
    }

    #[test]
    fn defaults_fill_in() {
        let task = decode(
            &json!({"id": "t-1", "type": "iperf_client_run", "payload": {"server": "10.0.0.1"}}),
        )
        .unwrap();
        assert_eq!(
            task.kind,
            Kind::IperfClient(IperfClient {
                server: "10.0.0.1".into(),
                port: 5201,
                udp: false,
                parallel: 1,
                time: 10,
                bandwidth: None,
                reverse: false,
                bidir: false,
                omit: 0
            })
        );
        let task = decode(&json!({"id": "s", "type": "iperf_server_start", "unknown": 1})).unwrap();
        assert_eq!(
            task.kind,
            Kind::IperfServer(IperfServer {
                port: 5201,
                udp: false,
                bind: None,
                one_off: false
            })
        );
    }

    #[test]
    fn bad_ids_get_no_update() {
        for v in [
            json!({"id": "../x", "type": "kill_all"}),
            json!({"id": 7}),
            json!({"type": "kill_all"}),
            json!("x"),
        ] {
            assert!(matches!(decode(&v), Err(Refusal::BadId { .. })), "{v}");
        }
    }

    #[test]
    fn every_field_rule_names_its_field() {
        let client =
            |payload: Value| json!({"id": "t", "type": "iperf_client_run", "payload": payload});
        let cases = [
            (client(json!({})), "server"),
            (client(json!({"server": "-D"})), "server"),
            (client(json!({"server": "--logfile=/etc/x"})), "server"),
            (client(json!({"server": "a b"})), "server"),
            (client(json!({"server": "x".repeat(254)})), "server"),
            (client(json!({"server": "h", "port": 80})), "port"),
            (client(json!({"server": "h", "port": 70000})), "port"),
            (client(json!({"server": "h", "port": "5201"})), "port"),
            (client(json!({"server": "h", "udp": "yes"})), "udp"),
            (client(json!({"server": "h", "parallel": 0})), "parallel"),
            (client(json!({"server": "h", "parallel": 129})), "parallel"),
            (client(json!({"server": "h", "time": 0})), "time"),
            (client(json!({"server": "h", "time": 86401})), "time"),
            (
                client(json!({"server": "h", "bandwidth": "-1"})),
                "bandwidth",
            ),
            (
                client(json!({"server": "h", "bandwidth": "fast"})),
                "bandwidth",
            ),
            (client(json!({"server": "h", "omit": 601})), "omit"),
            (
                client(json!({"server": "h", "reverse": true, "bidir": true})),
                "reverse",
            ),
            (
                json!({"id": "t", "type": "iperf_server_start", "payload": {"bind": "eth0"}}),
                "bind",
            ),
            (
                json!({"id": "t", "type": "iperf_server_start", "payload": {"one_off": 1}}),
                "one_off",
            ),
            (
                json!({"id": "t", "type": "task_stop", "payload": {}}),
                "task_id",
            ),
            (
                json!({"id": "t", "type": "task_stop", "payload": {"task_id": "../../x"}}),
                "task_id",
            ),
            (
                json!({"id": "t", "type": "kill_all", "payload": []}),
                "payload",
            ),
            (
                json!({"id": "t", "type": "kill_all", "timeout_s": -1}),
                "timeout_s",
            ),
        ];
        for (task, field) in cases {
            let (kind, message) = rejected(task.clone());
            assert_eq!(kind, "invalid_payload", "{task}");
            assert!(message.starts_with(field), "{task}: {message}");
        }
    }

    #[test]
    fn agent_update_fields_are_checked_and_named() {
        let sha = "a".repeat(64);
        let update =
            |payload: Value| json!({"id": "u", "type": "agent_update", "payload": payload});
        let ok = decode(&update(
            json!({"path": "/opt/outpost", "sha256": sha.to_uppercase(), "version": "1.2.3"}),
        ))
        .unwrap();
        assert_eq!(
            ok.kind,
            Kind::AgentUpdate(AgentUpdate {
                source: ProgramSource::Path("/opt/outpost".into()),
                sha256: sha.clone(),
                version: "1.2.3".into(),
            })
        );
        let cases = [
            (json!({"sha256": sha, "version": "1"}), "url, path"),
            (
                json!({"url": "https://h/o", "path": "/o", "sha256": sha, "version": "1"}),
                "url, path",
            ),
            (
                json!({"url": "http://h/o", "sha256": sha, "version": "1"}),
                "url",
            ),
            (json!({"path": "o", "sha256": sha, "version": "1"}), "path"),
            (json!({"path": "/o", "version": "1"}), "sha256"),
            (
                json!({"path": "/o", "sha256": "abc", "version": "1"}),
                "sha256",
            ),
            (json!({"path": "/o", "sha256": sha}), "version"),
            (
                json!({"path": "/o", "sha256": sha, "version": "v1"}),
                "version",
            ),
            (
                json!({"path": "/o", "sha256": sha, "version": "1/../x"}),
                "version",
            ),
        ];
        for (payload, field) in cases {
            let (kind, message) = rejected(update(payload.clone()));
            assert_eq!(kind, "invalid_payload", "{payload}");
            assert!(message.starts_with(field), "{payload}: {message}");
        }
    }

    #[test]
    fn encoded_tasks_decode_to_themselves() {
        for v in [
            json!({"id": "a", "type": "iperf_server_start", "payload": {"port": 6000, "bind": "127.0.0.1", "one_off": true, "limits": {"pids_max": 5}}}),
            json!({"id": "b", "type": "iperf_client_run", "timeout_s": 30, "payload": {"server": "h", "bandwidth": "10M", "time": 3, "omit": 1, "reverse": true}}),
            json!({"id": "c", "type": "collector_start", "payload": {"config": "", "restart": "on-failure", "args": ["-x"]}}),
            json!({"id": "d", "type": "agent_update", "payload": {"url": "https://h/p", "sha256": "b".repeat(64), "version": "2"}}),
            json!({"id": "e", "type": "task_stop", "payload": {"task_id": "a"}}),
            json!({"id": "f", "type": "kill_all"}),
        ] {
            let task = decode(&v).unwrap();
            assert_eq!(decode(&encode(&task)).unwrap(), task, "{v}");
        }
    }

    #[test]
    fn unknown_types_are_named() {
        let (kind, message) = rejected(json!({"id": "t", "type": "format_disk"}));
        assert_eq!(kind, "unknown_type");
        assert!(message.contains("format_disk"));
        assert_eq!(rejected(json!({"id": "t"})).0, "unknown_type");
    }

    #[test]
    fn hosts_and_bandwidths() {
        for ok in [
            "10.0.0.1",
            "::1",
            "fe80::1",
            "iperf.example.com",
            "a-b.c",
            "host.",
        ] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        for bad in ["-c", "", "a..b", "-a.b", "a-.b", "a_b", "a/b"] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
        for ok in ["0", "100M", "1.5G", "10k", "1G/10"] {
            assert!(is_bandwidth(ok), "{ok}");
        }
        for bad in ["", "M", "-1", "1X", ".5", "1/", "1M/x", "1..2"] {
            assert!(!is_bandwidth(bad), "{bad}");
        }
    }
}
