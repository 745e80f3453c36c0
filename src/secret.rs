//! The `Secret` wrapper: a leaf type so that configuration, the manager
//! link and anything else holding a credential share it without importing
//! each other.

use std::fmt;

/// The agent's registration key. Its `Debug` and `Display` never show it, so
/// it cannot leak through a log line or `--check-config`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The only way to the plain text: grep for `expose` to audit every use.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}
