//! Fuzz target: a task as a claim answer or an `inbox/` file brings it.
//!
//! Bytes go through the spool's own gate (`spool::parse_task`: size cap,
//! JSON, an object), then into `payload::decode`, the one place a task is
//! checked. What decode promises is asserted: a refusal can always be
//! logged and reported, and a decoded task's values cannot turn into options
//! of iperf3 or escape the id rule.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::ids;
use outpost::tasks::payload::{self, ConfigSource, Kind, Refusal};
use outpost::tasks::{collector, iperf};
use serde_json::Value;

/// Error kinds that section 4 lets a rejection carry.
const KINDS: &[&str] = &["invalid_payload", "unknown_type"];

fuzz_target!(|data: &[u8]| {
    // A spool file passes the spool's gate first; a claim answer's task
    // reaches decode as any JSON value. Both must be safe.
    let value = match outpost::spool::parse_task(data) {
        Ok(value) => value,
        Err(why) => {
            assert!(!why.is_empty());
            match serde_json::from_slice::<Value>(data) {
                Ok(value) => value,
                Err(_) => return,
            }
        }
    };
    match payload::decode(&value) {
        Ok(task) => check_task(&value, &task),
        Err(Refusal::BadId { escaped }) => {
            // It goes into one log line: nothing may break that line.
            assert!(
                escaped
                    .chars()
                    .all(|c| c == ' ' || c == '…' || c.is_ascii_graphic()),
                "{escaped:?}"
            );
        }
        Err(Refusal::Rejected {
            id,
            type_name,
            kind,
            message,
        }) => {
            // The rejection is sent as an update naming the id.
            assert!(ids::is_valid_id(&id), "{id:?}");
            assert!(KINDS.contains(&kind.as_str()), "{kind}");
            assert!(!message.is_empty());
            assert_eq!(
                Some(type_name.as_str()),
                Some(value["type"].as_str().unwrap_or_default())
            );
        }
    }
});

fn check_task(value: &Value, task: &payload::Task) {
    assert!(ids::is_valid_id(&task.id), "{:?}", task.id);
    assert_eq!(value["type"].as_str(), Some(task.kind.type_name()));
    if let Some(t) = task.timeout {
        assert!(t.as_secs() <= 7 * 86_400, "{t:?}");
    }
    match &task.kind {
        Kind::IperfServer(s) => {
            assert!(s.port >= 1024);
            values_are_not_options(
                &iperf::server_args(s, true),
                &["-p", "-B", "--rcv-timeout", "--snd-timeout"],
            );
        }
        Kind::IperfClient(c) => {
            values_are_not_options(
                &iperf::client_args(c),
                &["-c", "-p", "-b", "-P", "-t", "-O"],
            );
        }
        Kind::TaskStop { task_id } => assert!(ids::is_valid_id(task_id)),
        Kind::CollectorStop { name } => assert!(ids::is_valid_id(name)),
        Kind::CollectorStart(c) => {
            assert!(ids::is_valid_id(&c.name), "{:?}", c.name);
            assert!(c.args.len() <= 64);
            assert!(c.args.iter().all(|a| !a.contains('\0')));
            if let Some(h) = &c.sha256 {
                assert!(h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            }
            // The agent substitutes an inline config as soon as it starts
            // the collector: that must not fail other than with a message.
            if let ConfigSource::Inline(text) = &c.source {
                assert!(text.len() <= payload::MAX_INLINE_CONFIG);
                let _ = collector::substitute(text, &c.variables);
            }
        }
        Kind::AgentUpdate(u) => {
            assert!(u.sha256.len() == 64 && u.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(outpost::programs::is_version(&u.version), "{:?}", u.version);
        }
        Kind::KillAll | Kind::SystemInfo => {}
    }
    // A handover carries tasks as `encode` writes them: they must come
    // back the same (a collector's config travels apart).
    let back = payload::decode(&payload::encode(task)).expect("an encoded task decodes");
    assert_eq!(back.id, task.id);
    assert_eq!(back.limits, task.limits);
    if !matches!(task.kind, Kind::CollectorStart(_)) {
        assert_eq!(back.kind, task.kind);
    }
}

/// The argument after each option that takes a value must not look like an
/// option itself, or a manager could smuggle flags into iperf3.
fn values_are_not_options(args: &[String], taking_value: &[&str]) {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if taking_value.contains(&arg.as_str()) {
            let value = it.next().expect("an option without its value");
            assert!(
                !value.starts_with('-') && !value.is_empty(),
                "{arg} {value:?}"
            );
        }
    }
}
