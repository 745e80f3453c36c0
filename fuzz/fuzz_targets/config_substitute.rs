//! Fuzz target: `${NAME}` substitution in a collector config.
//!
//! The input is `config NUL name=value NUL name=value ...` so seeds stay
//! readable: the config is text a manager sends inline or a download
//! brings, the variables are the task's `variables` object. Besides not
//! panicking, the rules of `collector.rs`'s module doc are checked where
//! they can be without a second implementation.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use outpost::tasks::collector::substitute;

fuzz_target!(|data: &[u8]| {
    // Both a config and JSON strings are UTF-8 by the time they get here;
    // lossy decoding keeps multi-byte characters in play around the `$`.
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let config = parts.next().unwrap_or_default();
    let variables: BTreeMap<String, String> = parts
        .take(8)
        .map(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            (name.to_string(), value.to_string())
        })
        .collect();
    match substitute(config, &variables) {
        Ok(out) => {
            if !config.contains('$') {
                assert_eq!(out, config);
            }
            // Every `$` of the output comes from the config or from a value:
            // with no `$` in any value, substitution can only remove some.
            if variables.values().all(|v| !v.contains('$')) {
                assert!(out.matches('$').count() <= config.matches('$').count());
            }
        }
        Err(message) => {
            // The error names a variable that really has no value.
            let name = message
                .strip_prefix("variables: ${")
                .and_then(|m| m.split_once('}'))
                .map(|(name, _)| name)
                .expect("the message names the variable");
            assert!(!variables.contains_key(name), "{name}");
            assert!(config.contains(&format!("${{{name}}}")));
        }
    }
});
