//! Fuzz target: the /proc and /sys text parsers of `metrics/` and
//! `sysinfo.rs`.
//!
//! The kernel writes these files, but containers, gVisor, old kernels and
//! odd drivers all serve variants, and the agent must never panic on one.
//! The first byte picks a parser, the rest is the file's text. The last mode
//! runs the real `Sampler` over a scratch root holding the input as its
//! /proc files, so the rate and exposition code sees parsed values too.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use outpost::exposition::Exposition;
use outpost::metrics::{self, MAX_FILESYSTEMS, Sampler, Snapshot};
use outpost::sysinfo;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    // Production reads with `read_to_string`, which refuses non-UTF-8; lossy
    // decoding still lets the fuzzer reach multi-byte characters.
    let text = String::from_utf8_lossy(rest);
    match selector % 11 {
        0 => stat(&text),
        1 => meminfo(&text),
        2 => net_dev(&text),
        3 => mountinfo(&text),
        4 => {
            if let Some((load, _tasks)) = metrics::parse_loadavg(&text) {
                assert!(load.one.is_finite() && load.five.is_finite() && load.fifteen.is_finite());
            }
            // `/metrics` reads loadavg without the f32 trip; the process
            // scan reads /proc/<pid>/stat lines, whose command name is free.
            if let Some(loads) = metrics::parse_load_exact(&text) {
                assert!(loads.iter().all(|l| l.is_finite()));
            }
            let _ = metrics::parse_pid_stat(&text);
        }
        5 => {
            if let Some(up) = metrics::parse_uptime(&text) {
                assert!(up.is_finite());
            }
        }
        6 => diskstats(&text),
        7 => {
            let _ = sysinfo::os_name(&text);
            for line in text.lines() {
                let _ = sysinfo::unquote(line.split_once('=').map_or(line, |(_, v)| v));
            }
        }
        8 => cpuinfo(&text),
        9 => {
            let _ = sysinfo::nvidia_model(&text);
            let _ = sysinfo::vendor_name(text.trim());
        }
        _ => sampler(&text),
    }
});

/// /proc/stat; a NUL splits a previous reading from the current one.
fn stat(text: &str) {
    let (before, after) = text.split_once('\0').unwrap_or((text, text));
    let prev = metrics::parse_stat(before);
    let mut cur = metrics::parse_stat(text);
    metrics::parse_stat_into(after, &mut cur);
    // sysinfo turns btime into the boot time of the register body.
    if let Some(btime) = cur.btime {
        let _ = outpost::clock::rfc3339_from_unix(btime);
    }
    if let Some(cpu) = metrics::build_cpu(&prev, &cur) {
        let shares = [
            cpu.usage_percent,
            cpu.user_percent,
            cpu.system_percent,
            cpu.iowait_percent,
            cpu.steal_percent,
            cpu.idle_percent,
        ];
        for p in shares.iter().chain(&cpu.per_core_usage_percent) {
            assert!((0.0..=100.0).contains(p), "{p} in {cpu:?}");
        }
        assert_eq!(cpu.core_ids.len(), cpu.per_core_usage_percent.len());
    }
}

fn meminfo(text: &str) {
    let Some(m) = metrics::parse_meminfo(text) else {
        return;
    };
    let mem = metrics::build_memory(&m);
    assert!(mem.available_bytes <= mem.total_bytes);
    assert_eq!(mem.used_bytes + mem.available_bytes, mem.total_bytes);
    assert!((0.0..=100.0).contains(&mem.usage_percent));
    assert!(mem.swap_used_bytes <= mem.swap_total_bytes);
}

fn net_dev(text: &str) {
    // The sampler reuses one list from sample to sample.
    let mut list = Vec::new();
    metrics::parse_net_dev_into(text, &mut list);
    let first = list.clone();
    metrics::parse_net_dev_into(text, &mut list);
    assert_eq!(first, list);
}

fn mountinfo(text: &str) {
    let entries = metrics::parse_mountinfo(text);
    for include_remote in [false, true] {
        let chosen = metrics::select_mounts(&entries, include_remote);
        assert!(chosen.len() <= MAX_FILESYSTEMS);
        for m in &chosen {
            assert!(!metrics::is_pseudo_fs(&m.fs_type));
            assert!(include_remote || !metrics::is_remote_fs(&m.fs_type));
        }
        // Mount points become `mount` labels (and JSON strings); whatever a
        // path holds after unescaping, the exposition must stay well formed.
        let snap = Snapshot {
            filesystems: chosen
                .iter()
                .map(|m| metrics::Filesystem {
                    mount: m.mount_point.clone(),
                    fs_type: m.fs_type.clone(),
                    total_bytes: 1,
                    ..metrics::Filesystem::default()
                })
                .collect(),
            ..Snapshot::default()
        };
        check_snapshot(&snap);
    }
}

/// /proc/diskstats lines as the sampler and `/metrics` read them, then the
/// name rules that decide which devices count.
fn diskstats(text: &str) {
    for line in text.lines() {
        let name = match metrics::parse_diskstats_line(line) {
            Some((name, _)) => name,
            None => line.split_ascii_whitespace().nth(2).unwrap_or(line),
        };
        let _ = metrics::is_virtual_disk(name);
        let _ = metrics::looks_like_partition(name);
        let _ = sysinfo::is_virtual_block(name);
    }
}

fn cpuinfo(text: &str) {
    let info = sysinfo::parse_cpuinfo(text);
    assert!(info.count as usize <= text.lines().count());
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        if let (Some(implementer), Some(part)) = (fields.next(), fields.next()) {
            let _ = sysinfo::arm_core_name(implementer, part);
        }
    }
}

/// A scratch root of this process, created once; each run rewrites its
/// /proc files. On tmpfs when there is one: ext4 flushes a file truncated
/// and rewritten on close, which made this mode a hundred times slower.
fn scratch_root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let base = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        // libFuzzer ends the process with exit(), so no root is ever removed
        // by its owner: each new process clears those of dead ones instead.
        remove_stale_roots(&base);
        let root = base.join(format!("{SCRATCH_PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(root.join("proc/net")).expect("scratch root");
        root
    })
}

const SCRATCH_PREFIX: &str = "outpost-fuzz-proc-";

fn remove_stale_roots(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(SCRATCH_PREFIX)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The files the sampler reads that need no statvfs or sensor scan, in the
/// order the input's NUL-separated parts fill them: one set for a first
/// sample, an optional second set for the next one (so rates are computed).
const FILES: &[&str] = &[
    "proc/stat",
    "proc/meminfo",
    "proc/loadavg",
    "proc/uptime",
    "proc/diskstats",
    "proc/net/dev",
];

fn sampler(text: &str) {
    let root = scratch_root();
    let parts: Vec<&str> = text.split('\0').collect();
    let write_set = |set: &[&str]| {
        for (i, rel) in FILES.iter().enumerate() {
            let path = root.join(rel);
            match set.get(i) {
                Some(content) => std::fs::write(&path, content).expect("scratch file"),
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    };
    let (first, second) = parts.split_at(parts.len().min(FILES.len()));
    let mut sampler = Sampler::new(root.clone());
    write_set(first);
    check_snapshot(&sampler.sample());
    if !second.is_empty() {
        write_set(second);
    }
    check_snapshot(&sampler.sample());
}

/// What the heartbeat and `/metrics` make of a snapshot: JSON that reads
/// back, and an exposition that a Prometheus parser accepts.
fn check_snapshot(snap: &Snapshot) {
    let json = serde_json::to_string(snap).expect("snapshot serialises");
    serde_json::from_str::<serde_json::Value>(&json).expect("snapshot JSON reads back");
    let mut exp = Exposition::new();
    snap.write_prometheus(&mut exp);
    check_exposition(&exp.finish());
}

/// The text format 0.0.4 as promtool reads it: every sample line is a
/// metric name, optional well-escaped labels and a value, and belongs to a
/// family announced once, just before its samples.
fn check_exposition(text: &str) {
    assert!(text.is_empty() || text.ends_with('\n'));
    let mut families: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap_or_default();
            assert!(!families.contains(&name), "family {name} split");
            families.push(name);
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (name, rest) = sample_name(line);
        let family = families.last().copied().unwrap_or_default();
        assert!(name == family, "sample {name} outside its family: {line:?}");
        let rest = match rest.strip_prefix('{') {
            Some(labels) => skip_labels(labels, line),
            None => rest,
        };
        let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("{line:?}"));
        let ok = matches!(value, "NaN" | "+Inf" | "-Inf")
            || (value.parse::<f64>().is_ok_and(f64::is_finite)
                && value
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b"-+.e".contains(&b)));
        assert!(ok, "value {value:?} in {line:?}");
    }
}

fn sample_name(line: &str) -> (&str, &str) {
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..end];
    assert!(
        name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == ':'),
        "{line:?}"
    );
    (name, &line[end..])
}

/// Skips `label="value",...}` and returns what follows the `}`.
fn skip_labels<'a>(mut rest: &'a str, line: &str) -> &'a str {
    loop {
        let eq = rest.find('=').unwrap_or_else(|| panic!("{line:?}"));
        let label = &rest[..eq];
        assert!(
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "label {label:?} in {line:?}"
        );
        let mut chars = rest[eq + 1..]
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("{line:?}"))
            .char_indices();
        let close = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\' | '"' | 'n')) => {}
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some(_) => {}
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        let after = &rest[eq + 2 + close + 1..];
        if let Some(next) = after.strip_prefix(',') {
            rest = next;
        } else {
            return after
                .strip_prefix('}')
                .unwrap_or_else(|| panic!("{line:?}"));
        }
    }
}
