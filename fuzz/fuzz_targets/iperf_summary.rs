//! Fuzz target: reading what an iperf3 client run left behind.
//!
//! iperf3's JSON is outside input like any other (a different version, a
//! cut-off run, a server that answers with garbage). The first byte picks
//! the exit status and the truncation flag `client_outcome` is given; the
//! rest is the standard output (and, as text, the standard error tail).
//! When the rest is JSON, `summarise` is also run on it directly, since it
//! must hold up on any JSON shape, not only on iperf3's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::tasks::iperf::{Outcome, client_outcome, last_error_line, summarise};
use serde_json::Value;

const SUMMARY_KEYS: &[&str] = &[
    "sent_bps",
    "received_bps",
    "retransmits",
    "jitter_ms",
    "lost_percent",
];

fuzz_target!(|data: &[u8]| {
    let Some((&control, stdout)) = data.split_first() else {
        return;
    };
    let exit_code = match control & 0x03 {
        0 => Some(0),
        1 => Some(1),
        2 => None,
        _ => Some(i32::from(control as i8)),
    };
    let truncated = control & 0x80 != 0;
    let stderr = String::from_utf8_lossy(stdout);

    let line = last_error_line(&stderr);
    assert!(!line.contains('\n'));

    match client_outcome(exit_code, stdout, truncated, &stderr) {
        Outcome::Succeeded(result) => {
            assert_eq!(exit_code, Some(0));
            assert!(!truncated);
            check_summary(&result["summary"]);
        }
        Outcome::Failed(kind, message) => {
            assert!(!kind.as_str().is_empty());
            // An error field may be empty; the agent's own messages never are.
            let from_json = serde_json::from_slice::<Value>(stdout)
                .ok()
                .is_some_and(|v| v.get("error").is_some_and(Value::is_string));
            assert!(from_json || !message.is_empty());
        }
    }

    if let Ok(report) = serde_json::from_slice::<Value>(stdout) {
        check_summary(&summarise(&report));
    }
});

/// Five keys, each a number or null (section 4).
fn check_summary(summary: &Value) {
    let object = summary.as_object().expect("summary is an object");
    assert_eq!(object.len(), SUMMARY_KEYS.len());
    for key in SUMMARY_KEYS {
        let v = &object[*key];
        assert!(v.is_null() || v.is_number(), "{key}: {v}");
    }
}
