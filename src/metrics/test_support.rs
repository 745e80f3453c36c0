//! Helpers the metrics tests share: fixture trees, scratch trees built at
//! run time, and promtool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use super::{Sampler, Snapshot};

pub(super) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub(super) fn fixture_text(name: &str, rel: &str) -> String {
    std::fs::read_to_string(fixture(name).join(rel)).unwrap()
}

/// A fresh directory under the system temp dir for trees built at run time.
pub(super) fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("outpost-metrics-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(super) fn write_file(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Two samples of the captured VM, one second apart.
pub(super) fn vm_two_samples() -> (Snapshot, Snapshot) {
    let mut sampler = Sampler::new(fixture("vm-2core"));
    let t0 = Instant::now();
    let first = sampler.sample_at(t0, SystemTime::UNIX_EPOCH);
    sampler.root = fixture("vm-2core-t1");
    let second = sampler.sample_at(t0 + Duration::from_secs(1), SystemTime::UNIX_EPOCH);
    (first, second)
}

pub(super) fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        println!("promtool not found; skipping the exposition check");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejected the exposition:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
