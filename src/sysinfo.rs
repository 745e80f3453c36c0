//! Placeholder until the system info gatherer lands (replaced in the same change).
use std::path::Path;
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SystemInfo {
    pub hostname: String,
}
pub fn gather(root: &Path) -> SystemInfo {
    SystemInfo {
        hostname: hostname(root),
    }
}
pub fn hostname(_root: &Path) -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}
