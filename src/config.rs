//! The command-line contract: every `OUTPOST_*` setting, where it comes from,
//! and what values it accepts.
//!
//! Each setting is taken from its flag, else the process environment, else the
//! `--env-file`, else its default (PROTOCOL.md section 9). Everything is
//! validated here, before any thread starts, so a bad value stops the agent
//! with exit status 78 and one line naming the setting instead of failing
//! later somewhere an operator cannot see.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::clock::{format_duration, parse_duration};
use crate::error::{Error, Result};
pub use crate::secret::Secret;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The effective configuration of one agent process.
#[derive(Clone, Debug)]
pub struct Config {
    pub manager_url: Option<String>,
    pub agent_name: String,
    pub agent_key: Option<Secret>,
    pub agent_key_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub config_dir: PathBuf,
    pub http_addr: Option<SocketAddr>,
    pub heartbeat_interval: Duration,
    pub poll_wait: Duration,
    pub max_tasks: u32,
    pub iperf3: String,
    pub collector_cmd: Vec<String>,
    pub allow_http_config: bool,
    pub allow_link_local_config: bool,
    pub stop_grace: Duration,
    pub pushgateway_url: Option<String>,
    pub tls: crate::tls::TlsFiles,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Metric categories collected at all (section 9's `OUTPOST_METRICS`).
    pub metrics: crate::metrics::Categories,
    /// Where each setting's value came from, for `--check-config`.
    pub sources: BTreeMap<&'static str, Source>,
    /// Valid but risky choices, said by `--check-config` and at start.
    pub warnings: Vec<String>,
    /// How each outbound connection reaches its host.
    pub proxy: crate::proxy::ProxyRule,
}

/// What the command line asks the process to do.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    CheckConfig(Box<Config>),
    Help,
    Version,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Environment,
    EnvFile,
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Flag => "flag",
            Source::Environment => "environment",
            Source::EnvFile => "env file",
            Source::Default => "default",
        })
    }
}

/// One row of the settings table: the single source for parsing, `--help`
/// and the README's configuration table.
struct Setting {
    var: &'static str,
    flag: Option<&'static str>,
    default: &'static str,
    meaning: &'static str,
}

const SETTINGS: &[Setting] = &[
    Setting {
        var: "OUTPOST_MANAGER_URL",
        flag: Some("--manager-url"),
        default: "none: manager-less mode",
        meaning: "manager base URL (http:// or https://, may carry a path prefix)",
    },
    Setting {
        var: "OUTPOST_AGENT_NAME",
        flag: Some("--name"),
        default: "the hostname",
        meaning: "agent name",
    },
    Setting {
        var: "OUTPOST_AGENT_KEY",
        flag: None,
        default: "required with a manager",
        meaning: "registration key (never on the command line)",
    },
    Setting {
        var: "OUTPOST_AGENT_KEY_FILE",
        flag: Some("--key-file"),
        default: "none",
        meaning: "file that holds the key (systemd credentials)",
    },
    Setting {
        var: "OUTPOST_STATE_DIR",
        flag: Some("--state-dir"),
        default: "$STATE_DIRECTORY, else /var/lib/outpost when writable, else ~/.local/state/outpost",
        meaning: "identity, outbox, task ledger, spool",
    },
    Setting {
        var: "OUTPOST_CONFIG_DIR",
        flag: Some("--config-dir"),
        default: "<state dir>/configs",
        meaning: "collector config files",
    },
    Setting {
        var: "OUTPOST_HTTP_ADDR",
        flag: Some("--http-addr"),
        default: "127.0.0.1:8090",
        meaning: "health responder address; `off` disables it",
    },
    Setting {
        var: "OUTPOST_HEARTBEAT_INTERVAL",
        flag: Some("--heartbeat-interval"),
        default: "5s",
        meaning: "heartbeat interval (5, 5s, 500ms, 1m), 0.2s-300s",
    },
    Setting {
        var: "OUTPOST_POLL_WAIT",
        flag: None,
        default: "25s",
        meaning: "long-poll wait asked of the manager, 0s-120s",
    },
    Setting {
        var: "OUTPOST_MAX_TASKS",
        flag: None,
        default: "64",
        meaning: "tasks running at once, 1-4096",
    },
    Setting {
        var: "OUTPOST_IPERF3",
        flag: None,
        default: "iperf3 from PATH",
        meaning: "iperf3 program",
    },
    Setting {
        var: "OUTPOST_COLLECTOR_CMD",
        flag: None,
        default: "otelcol-contrib --config {config}",
        meaning: "collector program and arguments, split on spaces; {config} becomes the config file path",
    },
    Setting {
        var: "OUTPOST_ALLOW_HTTP_CONFIG",
        flag: None,
        default: "false",
        meaning: "allow http:// config URLs",
    },
    Setting {
        var: "OUTPOST_ALLOW_LINK_LOCAL_CONFIG",
        flag: None,
        default: "false",
        meaning: "allow config URLs at link-local addresses (169.254.0.0/16, fe80::/10: cloud metadata)",
    },
    Setting {
        var: "OUTPOST_STOP_GRACE",
        flag: None,
        default: "10s",
        meaning: "SIGTERM to SIGKILL grace for child processes, 0s-300s",
    },
    Setting {
        var: "OUTPOST_PUSHGATEWAY_URL",
        flag: None,
        default: "none",
        meaning: "Pushgateway base URL",
    },
    Setting {
        var: "OUTPOST_CA_FILE",
        flag: None,
        default: "built-in web roots",
        meaning: "CA bundle (PEM) trusted for the manager and config downloads, instead of the built-in roots",
    },
    Setting {
        var: "OUTPOST_CLIENT_CERT",
        flag: None,
        default: "none",
        meaning: "client certificate chain (PEM) for mutual TLS",
    },
    Setting {
        var: "OUTPOST_CLIENT_KEY",
        flag: None,
        default: "none",
        meaning: "client private key (PEM) for mutual TLS",
    },
    Setting {
        var: "OUTPOST_LOG_LEVEL",
        flag: Some("--log-level"),
        default: "info",
        meaning: "error, warn, info, debug, trace, or an env_logger filter",
    },
    Setting {
        var: "OUTPOST_LOG_FORMAT",
        flag: Some("--log-format"),
        default: "text",
        meaning: "text or json (one JSON object a line)",
    },
    Setting {
        var: "OUTPOST_METRICS",
        flag: Some("--metrics"),
        default: "all",
        meaning: "metric categories to collect: all, none, or a comma-separated list of cpu, memory, load, filesystems, disks, network, processes, temperatures",
    },
    Setting {
        var: "OUTPOST_PROXY",
        // It can hold credentials: never on the command line.
        flag: None,
        default: "from HTTPS_PROXY/HTTP_PROXY/ALL_PROXY and NO_PROXY",
        meaning: "http://[user:pass@]host:port for every outbound connection, or none",
    },
];

/// Where the values come from; tests build one by hand instead of touching
/// the real process environment.
pub struct Inputs {
    pub args: Vec<OsString>,
    pub env: BTreeMap<String, String>,
}

impl Inputs {
    pub fn from_process(args: impl IntoIterator<Item = OsString>) -> Inputs {
        Inputs {
            args: args.into_iter().skip(1).collect(),
            env: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }
}

/// Parses the command line and the environment into what to do.
pub fn parse(inputs: &Inputs) -> Result<Command> {
    let mut flags: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut env_file: Option<PathBuf> = None;
    let mut check = false;
    let mut args = inputs.args.iter();
    while let Some(arg) = args.next() {
        let arg = arg
            .to_str()
            .ok_or_else(|| Error::Usage(format!("argument {arg:?} is not valid UTF-8")))?;
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg, None),
        };
        match name {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--check-config" => check = true,
            "--agent-key" | "--key" => {
                return Err(Error::Usage(
                    "the agent key is never taken from the command line (anyone can read it in the process list); \
                     use OUTPOST_AGENT_KEY or --key-file"
                        .into(),
                ));
            }
            _ => {
                let value = |args: &mut std::slice::Iter<OsString>| -> Result<String> {
                    match inline.clone() {
                        Some(v) => Ok(v),
                        None => args
                            .next()
                            .and_then(|v| v.to_str().map(str::to_string))
                            .ok_or_else(|| Error::Usage(format!("{name} needs a value"))),
                    }
                };
                if name == "--env-file" {
                    env_file = Some(PathBuf::from(value(&mut args)?));
                    continue;
                }
                let setting = SETTINGS
                    .iter()
                    .find(|s| s.flag == Some(name))
                    .ok_or_else(|| Error::Usage(format!("unknown argument {arg:?}")))?;
                flags.insert(setting.var, value(&mut args)?);
            }
        }
    }
    let file_values = match &env_file {
        Some(path) => read_env_file(path)?,
        None => BTreeMap::new(),
    };
    let raw = Raw {
        flags,
        env: &inputs.env,
        file: file_values,
    };
    let config = resolve(&raw)?;
    Ok(if check {
        Command::CheckConfig(Box::new(config))
    } else {
        Command::Run(Box::new(config))
    })
}

struct Raw<'a> {
    flags: BTreeMap<&'static str, String>,
    env: &'a BTreeMap<String, String>,
    file: BTreeMap<String, String>,
}

impl Raw<'_> {
    /// The value and its source; an empty value counts as unset, as systemd's
    /// `Environment=OUTPOST_X=` is the usual way to clear a setting.
    fn get(&self, var: &'static str) -> Option<(String, Source)> {
        if let Some(v) = self.flags.get(var) {
            return Some((v.clone(), Source::Flag));
        }
        if let Some(v) = self.env.get(var).filter(|v| !v.is_empty()) {
            return Some((v.clone(), Source::Environment));
        }
        self.file
            .get(var)
            .filter(|v| !v.is_empty())
            .map(|v| (v.clone(), Source::EnvFile))
    }
}

/// Reads `NAME=value` lines; `#` starts a comment line; one pair of matching
/// quotes around a value is removed, as systemd's `EnvironmentFile=` does.
pub fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("--env-file: cannot read {}: {e}", path.display())))?;
    let mut values = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            return Err(Error::Usage(format!(
                "--env-file {} line {}: expected NAME=value",
                path.display(),
                number + 1
            )));
        };
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        values.insert(name.trim().to_string(), value.to_string());
    }
    Ok(values)
}

fn resolve(raw: &Raw) -> Result<Config> {
    let mut sources = BTreeMap::new();
    let mut take = |var: &'static str| -> Option<String> {
        match raw.get(var) {
            Some((value, source)) => {
                sources.insert(var, source);
                Some(value)
            }
            None => {
                sources.insert(var, Source::Default);
                None
            }
        }
    };

    let manager_url = take("OUTPOST_MANAGER_URL")
        .map(|v| parse_url("OUTPOST_MANAGER_URL", &v))
        .transpose()?;
    let mut warnings = Vec::new();
    let agent_name = match take("OUTPOST_AGENT_NAME") {
        Some(name) => check_name(&name)?,
        None => {
            let hostname = crate::sysinfo::hostname(Path::new("/"));
            match check_name(&hostname) {
                Ok(name) => name,
                // A manager would refuse the name at every registration:
                // say so now, where the operator can fix it.
                Err(_) if manager_url.is_some() => {
                    return Err(Error::config(
                        "OUTPOST_AGENT_NAME",
                        format!(
                            "not set, and the hostname {:?} breaks the name rule (1-128 characters of A-Z a-z 0-9 . _ : -); set OUTPOST_AGENT_NAME",
                            crate::ids::escape_for_log(&hostname)
                        ),
                    ));
                }
                Err(_) => {
                    warnings.push(format!(
                        "the hostname {:?} breaks the agent name rule; set OUTPOST_AGENT_NAME before adding a manager",
                        crate::ids::escape_for_log(&hostname)
                    ));
                    hostname
                }
            }
        }
    };
    if let Some(url) = &manager_url
        && url.starts_with("http://")
    {
        warnings.push(format!(
            "OUTPOST_MANAGER_URL {url} is http://: the agent key and every task travel in clear text; use https://"
        ));
    }
    let inline_key = take("OUTPOST_AGENT_KEY");
    let agent_key_file = take("OUTPOST_AGENT_KEY_FILE").map(PathBuf::from);
    // The systemd unit always names a key file, which install.sh creates
    // empty: an empty file means "no key here", not an error.
    let file_key = match &agent_key_file {
        Some(path) => read_key_file(path)?,
        None => None,
    };
    let agent_key = match (inline_key, file_key) {
        (Some(_), Some(_)) => {
            return Err(Error::config(
                "OUTPOST_AGENT_KEY",
                "both OUTPOST_AGENT_KEY and a non-empty OUTPOST_AGENT_KEY_FILE are set; set only one",
            ));
        }
        (Some(key), None) => Some(check_key("OUTPOST_AGENT_KEY", key)?),
        (None, file_key) => file_key,
    };
    if manager_url.is_some() && agent_key.is_none() {
        return Err(Error::config(
            "OUTPOST_AGENT_KEY",
            "a manager URL is set but no key: set OUTPOST_AGENT_KEY or OUTPOST_AGENT_KEY_FILE",
        ));
    }

    let state_dir = match take("OUTPOST_STATE_DIR") {
        Some(dir) => absolute("OUTPOST_STATE_DIR", &dir)?,
        None => default_state_dir(raw.env)?,
    };
    let config_dir = match take("OUTPOST_CONFIG_DIR") {
        Some(dir) => absolute("OUTPOST_CONFIG_DIR", &dir)?,
        None => state_dir.join("configs"),
    };
    let http_addr = match take("OUTPOST_HTTP_ADDR").as_deref() {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 8090))),
        Some("off") => None,
        Some(text) => Some(text.parse().map_err(|_| {
            Error::config(
                "OUTPOST_HTTP_ADDR",
                format!("{text:?} is not an address like 127.0.0.1:8090, [::1]:8090 or `off`"),
            )
        })?),
    };
    let heartbeat_interval = duration_in(
        "OUTPOST_HEARTBEAT_INTERVAL",
        take("OUTPOST_HEARTBEAT_INTERVAL"),
        Duration::from_secs(5),
        Duration::from_millis(200),
        Duration::from_secs(300),
    )?;
    let poll_wait = duration_in(
        "OUTPOST_POLL_WAIT",
        take("OUTPOST_POLL_WAIT"),
        Duration::from_secs(25),
        Duration::ZERO,
        Duration::from_secs(120),
    )?;
    let max_tasks = match take("OUTPOST_MAX_TASKS") {
        None => 64,
        Some(text) => match text.trim().parse::<u32>() {
            Ok(n) if (1..=4096).contains(&n) => n,
            _ => {
                return Err(Error::config(
                    "OUTPOST_MAX_TASKS",
                    format!("{text:?} is not a whole number from 1 to 4096"),
                ));
            }
        },
    };
    let iperf3 = take("OUTPOST_IPERF3").unwrap_or_else(|| "iperf3".into());
    let collector_cmd_text =
        take("OUTPOST_COLLECTOR_CMD").unwrap_or_else(|| "otelcol-contrib --config {config}".into());
    let collector_cmd: Vec<String> = collector_cmd_text
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !collector_cmd.iter().any(|a| a.contains("{config}")) {
        return Err(Error::config(
            "OUTPOST_COLLECTOR_CMD",
            format!(
                "{collector_cmd_text:?} must contain {{config}}, where the config file path goes"
            ),
        ));
    }
    let flag = |name: &'static str, value: Option<String>| match value {
        None => Ok(false),
        Some(text) => parse_bool(&text)
            .ok_or_else(|| Error::config(name, format!("{text:?} is not true or false"))),
    };
    let allow_http_config = flag(
        "OUTPOST_ALLOW_HTTP_CONFIG",
        take("OUTPOST_ALLOW_HTTP_CONFIG"),
    )?;
    let allow_link_local_config = flag(
        "OUTPOST_ALLOW_LINK_LOCAL_CONFIG",
        take("OUTPOST_ALLOW_LINK_LOCAL_CONFIG"),
    )?;
    let stop_grace = duration_in(
        "OUTPOST_STOP_GRACE",
        take("OUTPOST_STOP_GRACE"),
        Duration::from_secs(10),
        Duration::ZERO,
        Duration::from_secs(300),
    )?;
    let pushgateway_url = take("OUTPOST_PUSHGATEWAY_URL")
        .map(|v| parse_url("OUTPOST_PUSHGATEWAY_URL", &v))
        .transpose()?;
    let ca_file = take("OUTPOST_CA_FILE").map(PathBuf::from);
    let client_cert = take("OUTPOST_CLIENT_CERT").map(PathBuf::from);
    let client_key = take("OUTPOST_CLIENT_KEY").map(PathBuf::from);
    let log_level = take("OUTPOST_LOG_LEVEL").unwrap_or_else(|| "info".into());
    check_log_filter(&log_level)?;
    let log_format = match take("OUTPOST_LOG_FORMAT").as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(Error::config(
                "OUTPOST_LOG_FORMAT",
                format!("{other:?} is not `text` or `json`"),
            ));
        }
    };
    let metrics = match take("OUTPOST_METRICS") {
        None => crate::metrics::Categories::ALL,
        Some(text) => crate::metrics::Categories::parse(&text)
            .map_err(|message| Error::config("OUTPOST_METRICS", message))?,
    };

    let outpost_proxy = take("OUTPOST_PROXY");
    // The standard variables come from the same places as the settings
    // (the environment, else the env file), so agent.env can hold them.
    let proxy = crate::proxy::ProxyRule::from_settings(outpost_proxy.as_deref(), |name| {
        raw.get(name).map(|(value, _)| value)
    })?;

    let config = Config {
        manager_url,
        agent_name,
        agent_key,
        agent_key_file,
        state_dir,
        config_dir,
        http_addr,
        heartbeat_interval,
        poll_wait,
        max_tasks,
        iperf3,
        collector_cmd,
        allow_http_config,
        allow_link_local_config,
        stop_grace,
        pushgateway_url,
        tls: crate::tls::TlsFiles {
            ca_file,
            client_cert,
            client_key,
        },
        log_level,
        log_format,
        metrics,
        sources,
        warnings,
        proxy,
    };
    // Loading the PEM files here, not at the first request, turns a typo in
    // a path into exit 78 at start rather than endless retries.
    crate::tls::client_config(&config.tls, Path::new("/"))?;
    Ok(config)
}

fn parse_url(setting: &'static str, text: &str) -> Result<String> {
    let trimmed = text.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .ok_or_else(|| {
            Error::config(
                setting,
                format!("{text:?} must start with https:// or http://"),
            )
        })?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) || rest.contains(['?', '#']) {
        return Err(Error::config(
            setting,
            format!("{text:?} is not a base URL like https://manager.example:8443/prefix"),
        ));
    }
    Ok(trimmed.to_string())
}

/// Agent names go into HTTP headers and the Pushgateway path, so they follow
/// the task-id character rule.
fn check_name(name: &str) -> Result<String> {
    if crate::ids::is_valid_id(name) {
        Ok(name.to_string())
    } else {
        Err(Error::config(
            "OUTPOST_AGENT_NAME",
            format!(
                "{:?} must be 1-128 characters of A-Z a-z 0-9 . _ : -",
                crate::ids::escape_for_log(name)
            ),
        ))
    }
}

fn check_key(setting: &'static str, key: String) -> Result<Secret> {
    let key = key.trim().to_string();
    if key.is_empty() {
        return Err(Error::config(setting, "the key is empty"));
    }
    // The key travels in a header: only visible ASCII survives that intact.
    // The message never quotes the key itself.
    if !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) || key.len() > 4096 {
        return Err(Error::config(
            setting,
            "the key must be at most 4096 visible ASCII characters (no spaces or control characters)",
        ));
    }
    Ok(Secret::new(key))
}

/// The key in a key file; `None` for an empty (or blank) file.
fn read_key_file(path: &Path) -> Result<Option<Secret>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::config(
            "OUTPOST_AGENT_KEY_FILE",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    check_key("OUTPOST_AGENT_KEY_FILE", text).map(Some)
}

fn absolute(setting: &'static str, dir: &str) -> Result<PathBuf> {
    let path = PathBuf::from(dir);
    if path.is_absolute() {
        Ok(path)
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(&path))
            .map_err(|e| {
                Error::config(
                    setting,
                    format!("{dir:?} is relative and the working directory is unknown: {e}"),
                )
            })
    }
}

/// Where the state directory is when the settings as a whole cannot be
/// read: `--state-dir`, `OUTPOST_STATE_DIR` or the default (an `--env-file`
/// is not read). For a new version on trial that refuses its settings, to
/// find its handover (PROTOCOL section 4.3).
pub fn state_dir_hint(inputs: &Inputs) -> Option<PathBuf> {
    let mut args = inputs.args.iter().filter_map(|a| a.to_str());
    while let Some(arg) = args.next() {
        if let Some(dir) = arg.strip_prefix("--state-dir=") {
            return Some(PathBuf::from(dir));
        }
        if arg == "--state-dir" {
            return args.next().map(PathBuf::from);
        }
    }
    match inputs
        .env
        .get("OUTPOST_STATE_DIR")
        .filter(|v| !v.is_empty())
    {
        Some(dir) => Some(PathBuf::from(dir)),
        None => default_state_dir(&inputs.env).ok(),
    }
}

/// `$STATE_DIRECTORY` (systemd), else `/var/lib/outpost` when we may write
/// there, else `~/.local/state/outpost` (XDG state home for a plain user).
fn default_state_dir(env: &BTreeMap<String, String>) -> Result<PathBuf> {
    if let Some(dirs) = env.get("STATE_DIRECTORY").filter(|v| !v.is_empty()) {
        // systemd joins several StateDirectory= entries with ':'.
        if let Some(first) = dirs.split(':').next() {
            return Ok(PathBuf::from(first));
        }
    }
    let system = Path::new("/var/lib/outpost");
    let writable = |p: &Path| nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok();
    if (system.exists() && writable(system))
        || (!system.exists() && writable(Path::new("/var/lib")))
    {
        return Ok(system.to_path_buf());
    }
    match env.get("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(Path::new(home).join(".local/state/outpost")),
        None => Err(Error::config(
            "OUTPOST_STATE_DIR",
            "/var/lib/outpost is not writable and HOME is not set: set OUTPOST_STATE_DIR",
        )),
    }
}

fn duration_in(
    setting: &'static str,
    value: Option<String>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration> {
    let Some(text) = value else {
        return Ok(default);
    };
    match parse_duration(&text) {
        Some(d) if d >= min && d <= max => Ok(d),
        Some(_) => Err(Error::config(
            setting,
            format!(
                "{text:?} is out of range {}-{}",
                format_duration(min),
                format_duration(max)
            ),
        )),
        None => Err(Error::config(
            setting,
            format!("{text:?} is not a duration such as 5, 5s, 500ms or 1m"),
        )),
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// Accepts a level or env_logger directives (`info,outpost::manager=trace`);
/// env_logger itself ignores a bad directive silently, which would leave an
/// operator wondering why nothing is logged.
fn check_log_filter(filter: &str) -> Result<()> {
    let bad = |d: &str| {
        Error::config(
            "OUTPOST_LOG_LEVEL",
            format!(
                "{d:?} in {filter:?} is not a level (error, warn, info, debug, trace) or module=level"
            ),
        )
    };
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match directive.split_once('=') {
            Some((module, level)) => {
                let level = level.to_ascii_lowercase();
                if module.is_empty()
                    || !LEVELS.contains(&level.as_str())
                    || !module
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                {
                    return Err(bad(directive));
                }
            }
            None => {
                let lower = directive.to_ascii_lowercase();
                let is_module = directive
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                    && directive.contains("::");
                if !LEVELS.contains(&lower.as_str()) && !is_module {
                    return Err(bad(directive));
                }
            }
        }
    }
    Ok(())
}

impl Config {
    /// The effective configuration, one `NAME=value (source)` line each,
    /// secrets masked.
    pub fn describe(&self) -> String {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
        let path = |v: &Option<PathBuf>| {
            v.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(none)".into())
        };
        let rows: Vec<(&'static str, String)> = vec![
            ("OUTPOST_MANAGER_URL", opt(&self.manager_url)),
            ("OUTPOST_AGENT_NAME", self.agent_name.clone()),
            (
                "OUTPOST_AGENT_KEY",
                match &self.agent_key {
                    Some(k) => k.to_string(),
                    None => "(none)".into(),
                },
            ),
            ("OUTPOST_AGENT_KEY_FILE", path(&self.agent_key_file)),
            ("OUTPOST_STATE_DIR", self.state_dir.display().to_string()),
            ("OUTPOST_CONFIG_DIR", self.config_dir.display().to_string()),
            (
                "OUTPOST_HTTP_ADDR",
                self.http_addr
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "off".into()),
            ),
            (
                "OUTPOST_HEARTBEAT_INTERVAL",
                format_duration(self.heartbeat_interval),
            ),
            ("OUTPOST_POLL_WAIT", format_duration(self.poll_wait)),
            ("OUTPOST_MAX_TASKS", self.max_tasks.to_string()),
            ("OUTPOST_IPERF3", self.iperf3.clone()),
            ("OUTPOST_COLLECTOR_CMD", self.collector_cmd.join(" ")),
            (
                "OUTPOST_ALLOW_HTTP_CONFIG",
                self.allow_http_config.to_string(),
            ),
            (
                "OUTPOST_ALLOW_LINK_LOCAL_CONFIG",
                self.allow_link_local_config.to_string(),
            ),
            ("OUTPOST_STOP_GRACE", format_duration(self.stop_grace)),
            ("OUTPOST_PUSHGATEWAY_URL", opt(&self.pushgateway_url)),
            ("OUTPOST_CA_FILE", path(&self.tls.ca_file)),
            ("OUTPOST_CLIENT_CERT", path(&self.tls.client_cert)),
            ("OUTPOST_CLIENT_KEY", path(&self.tls.client_key)),
            ("OUTPOST_LOG_LEVEL", self.log_level.clone()),
            (
                "OUTPOST_LOG_FORMAT",
                match self.log_format {
                    LogFormat::Text => "text".into(),
                    LogFormat::Json => "json".into(),
                },
            ),
            ("OUTPOST_PROXY", self.proxy.describe()),
            ("OUTPOST_METRICS", self.metrics.to_string()),
        ];
        let mut out = String::new();
        for (name, value) in rows {
            let source = self.sources.get(name).copied().unwrap_or(Source::Default);
            out.push_str(&format!("{name}={value}  ({source})\n"));
        }
        for (link, route) in self.proxy_routes() {
            out.push_str(&format!("proxy for {link}: {route}\n"));
        }
        for warning in &self.warnings {
            out.push_str(&format!("warning: {warning}\n"));
        }
        out
    }

    /// How the manager and the Pushgateway are reached, and downloads
    /// (per URL: an `https://` example stands for them).
    pub fn proxy_routes(&self) -> Vec<(&'static str, String)> {
        let mut routes = Vec::new();
        if let Some(url) = &self.manager_url {
            routes.push(("the manager", self.proxy.route(url).to_string()));
        }
        if let Some(url) = &self.pushgateway_url {
            routes.push(("the Pushgateway", self.proxy.route(url).to_string()));
        }
        routes.push((
            "downloads",
            format!(
                "per URL, NO_PROXY applied to each host; an https:// one goes {}",
                self.proxy.route("https://download.invalid/")
            ),
        ));
        routes
    }

    pub fn manager_less(&self) -> bool {
        self.manager_url.is_none()
    }
}

/// `outpost --help`.
pub fn help() -> String {
    let mut out = format!(
        "outpost {} - fleet agent: heartbeats, tasks, iperf3 and supervised collectors\n\n\
         Usage: outpost [FLAGS]\n\n\
         Flags:\n  \
           -h, --help           print this help\n  \
           -V, --version        print the version\n      \
           --check-config   validate and print the effective configuration, then exit (0, or 78)\n      \
           --env-file PATH  read NAME=value settings from PATH (after flags and environment)\n",
        crate::VERSION
    );
    for s in SETTINGS.iter().filter(|s| s.flag.is_some()) {
        if let Some(flag) = s.flag {
            out.push_str(&format!("      {flag} VALUE   sets {}\n", s.var));
        }
    }
    out.push_str("\nSettings (flag, else environment, else env file, else default):\n");
    for s in SETTINGS {
        out.push_str(&format!(
            "  {}\n      {}\n      default: {}\n",
            s.var, s.meaning, s.default
        ));
    }
    out.push_str(
        "\nExit status: 0 clean stop, 78 configuration error or rejected key, 1 anything else.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(args: &[&str], env: &[(&str, &str)]) -> Inputs {
        let mut env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.entry("OUTPOST_STATE_DIR".into())
            .or_insert_with(|| "/tmp/outpost-test-state".into());
        Inputs {
            args: args.iter().map(OsString::from).collect(),
            env,
        }
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Result<Config> {
        match parse(&inputs(args, env))? {
            Command::Run(c) | Command::CheckConfig(c) => Ok(*c),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn setting_of(err: Error) -> &'static str {
        match err {
            Error::Config { setting, .. } => setting,
            other => panic!("not a config error: {other}"),
        }
    }

    #[test]
    fn the_state_dir_is_found_when_the_settings_are_refused() {
        let hint = |args: &[&str], env: &[(&str, &str)]| state_dir_hint(&inputs(args, env));
        let env = [
            ("OUTPOST_STATE_DIR", "/srv/env"),
            ("OUTPOST_HEARTBEAT_INTERVAL", "x"),
        ];
        assert_eq!(hint(&[], &env), Some("/srv/env".into()));
        assert_eq!(
            hint(&["--state-dir", "/srv/flag"], &env),
            Some("/srv/flag".into())
        );
        assert_eq!(hint(&["--state-dir=/srv/eq"], &env), Some("/srv/eq".into()));
        let systemd = [
            ("OUTPOST_STATE_DIR", ""),
            ("STATE_DIRECTORY", "/var/lib/o:/x"),
        ];
        assert_eq!(hint(&["--bogus"], &systemd), Some("/var/lib/o".into()));
    }

    #[test]
    fn defaults_are_manager_less() {
        let c = config(&[], &[]).unwrap();
        assert!(c.manager_less());
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.poll_wait, Duration::from_secs(25));
        assert_eq!(c.max_tasks, 64);
        assert_eq!(c.http_addr, Some("127.0.0.1:8090".parse().unwrap()));
        assert_eq!(
            c.config_dir,
            PathBuf::from("/tmp/outpost-test-state/configs")
        );
        assert_eq!(c.collector_cmd, ["otelcol-contrib", "--config", "{config}"]);
    }

    #[test]
    fn flag_beats_environment_beats_file() {
        let dir = std::env::temp_dir().join(format!("outpost-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("agent.env");
        std::fs::write(
            &file,
            "# comment\nOUTPOST_HEARTBEAT_INTERVAL=\"3s\"\nOUTPOST_MAX_TASKS=7\nOUTPOST_POLL_WAIT=9\n",
        )
        .unwrap();
        let env_file = file.to_str().unwrap();
        let c = config(
            &["--env-file", env_file, "--heartbeat-interval=1s"],
            &[
                ("OUTPOST_HEARTBEAT_INTERVAL", "2s"),
                ("OUTPOST_MAX_TASKS", "8"),
            ],
        )
        .unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(c.sources["OUTPOST_HEARTBEAT_INTERVAL"], Source::Flag);
        assert_eq!(c.max_tasks, 8);
        assert_eq!(c.sources["OUTPOST_MAX_TASKS"], Source::Environment);
        assert_eq!(c.poll_wait, Duration::from_secs(9));
        assert_eq!(c.sources["OUTPOST_POLL_WAIT"], Source::EnvFile);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn metric_categories_from_flag_environment_and_default() {
        let c = config(&[], &[]).unwrap();
        assert_eq!(c.metrics, crate::metrics::Categories::ALL);
        let c = config(
            &["--metrics", "cpu,network"],
            &[("OUTPOST_METRICS", "none")],
        )
        .unwrap();
        assert_eq!(c.metrics.to_string(), "cpu,network");
        assert_eq!(c.sources["OUTPOST_METRICS"], Source::Flag);
        assert!(
            c.describe()
                .contains("OUTPOST_METRICS=cpu,network  (flag)\n")
        );
        let c = config(&[], &[("OUTPOST_METRICS", "none")]).unwrap();
        assert!(c.metrics.is_empty());
        assert!(help().contains("--metrics VALUE   sets OUTPOST_METRICS"));
    }

    #[test]
    fn bad_values_name_their_setting() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("OUTPOST_HEARTBEAT_INTERVAL", "0.1s")],
                "OUTPOST_HEARTBEAT_INTERVAL",
            ),
            (
                &[("OUTPOST_HEARTBEAT_INTERVAL", "soon")],
                "OUTPOST_HEARTBEAT_INTERVAL",
            ),
            (&[("OUTPOST_POLL_WAIT", "121")], "OUTPOST_POLL_WAIT"),
            (&[("OUTPOST_MAX_TASKS", "0")], "OUTPOST_MAX_TASKS"),
            (&[("OUTPOST_HTTP_ADDR", "localhost")], "OUTPOST_HTTP_ADDR"),
            (&[("OUTPOST_MANAGER_URL", "ftp://x")], "OUTPOST_MANAGER_URL"),
            (
                &[("OUTPOST_MANAGER_URL", "https://m.example")],
                "OUTPOST_AGENT_KEY",
            ),
            (&[("OUTPOST_LOG_FORMAT", "xml")], "OUTPOST_LOG_FORMAT"),
            (&[("OUTPOST_METRICS", "cpu,gpu")], "OUTPOST_METRICS"),
            (&[("OUTPOST_LOG_LEVEL", "loud")], "OUTPOST_LOG_LEVEL"),
            (
                &[("OUTPOST_ALLOW_HTTP_CONFIG", "maybe")],
                "OUTPOST_ALLOW_HTTP_CONFIG",
            ),
            (
                &[("OUTPOST_ALLOW_LINK_LOCAL_CONFIG", "1.5")],
                "OUTPOST_ALLOW_LINK_LOCAL_CONFIG",
            ),
            (
                &[("OUTPOST_COLLECTOR_CMD", "otelcol")],
                "OUTPOST_COLLECTOR_CMD",
            ),
            (&[("OUTPOST_AGENT_NAME", "../etc")], "OUTPOST_AGENT_NAME"),
            (
                &[("OUTPOST_CA_FILE", "/nonexistent/ca.pem")],
                "OUTPOST_CA_FILE",
            ),
            (
                &[("OUTPOST_AGENT_KEY_FILE", "/nonexistent/key")],
                "OUTPOST_AGENT_KEY_FILE",
            ),
        ];
        for (env, want) in cases {
            let err = config(&[], env).expect_err(want);
            assert_eq!(setting_of(err), *want, "{env:?}");
        }
    }

    #[test]
    fn key_never_comes_from_a_flag_and_never_prints() {
        assert!(matches!(
            parse(&inputs(&["--agent-key", "k"], &[])),
            Err(Error::Usage(_))
        ));
        let c = config(
            &["--check-config"],
            &[
                ("OUTPOST_MANAGER_URL", "https://m.example/prefix/"),
                ("OUTPOST_AGENT_KEY", "hunter2-very-secret"),
            ],
        )
        .unwrap();
        assert_eq!(c.manager_url.as_deref(), Some("https://m.example/prefix"));
        let text = format!("{} {:?}", c.describe(), c);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("OUTPOST_AGENT_KEY=<secret>"));
    }

    #[test]
    fn an_empty_key_file_means_no_key() {
        let dir = std::env::temp_dir().join(format!("outpost-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("agent.key");
        std::fs::write(&file, "\n").unwrap();
        let path = file.to_str().unwrap();
        let c = config(&[], &[("OUTPOST_AGENT_KEY_FILE", path)]).unwrap();
        assert!(
            c.agent_key.is_none(),
            "manager-less with the unit's empty key file"
        );
        let c = config(
            &[],
            &[
                ("OUTPOST_AGENT_KEY_FILE", path),
                ("OUTPOST_AGENT_KEY", "k1"),
                ("OUTPOST_MANAGER_URL", "https://m"),
            ],
        )
        .unwrap();
        assert_eq!(c.agent_key.unwrap().expose(), "k1");
        let err = config(
            &[],
            &[
                ("OUTPOST_AGENT_KEY_FILE", path),
                ("OUTPOST_MANAGER_URL", "https://m"),
            ],
        )
        .unwrap_err();
        assert_eq!(setting_of(err), "OUTPOST_AGENT_KEY");
        std::fs::write(&file, "k2\n").unwrap();
        let c = config(
            &[],
            &[
                ("OUTPOST_AGENT_KEY_FILE", path),
                ("OUTPOST_MANAGER_URL", "https://m"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.agent_key.unwrap().expose(),
            "k2",
            "trailing newline trimmed"
        );
        assert!(
            config(
                &[],
                &[
                    ("OUTPOST_AGENT_KEY_FILE", path),
                    ("OUTPOST_AGENT_KEY", "k1")
                ]
            )
            .is_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn state_dir_prefers_systemd() {
        let env: BTreeMap<String, String> = [(
            "STATE_DIRECTORY".to_string(),
            "/var/lib/outpost:/other".to_string(),
        )]
        .into();
        assert_eq!(
            default_state_dir(&env).unwrap(),
            PathBuf::from("/var/lib/outpost")
        );
    }

    #[test]
    fn log_filters() {
        assert!(check_log_filter("debug").is_ok());
        assert!(check_log_filter("info,outpost::manager=trace").is_ok());
        assert!(check_log_filter("outpost=bogus").is_err());
    }

    #[test]
    fn help_lists_every_setting() {
        let text = help();
        for s in SETTINGS {
            assert!(text.contains(s.var), "{}", s.var);
        }
    }
}
