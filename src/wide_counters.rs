//! Regression tests for the 32-bit and musl traps (issue 15), in one module
//! so that `.ci/cross` runs them under qemu-user on armv7 and aarch64: time
//! past 2038 (`time_t` is 32 bits on armv7 glibc), counters past 2^32
//! (`usize` and `c_ulong` are 32 bits there), and 64-bit atomics. The 20 TiB
//! filesystem (statvfs64) is tested in `metrics`, `uname -m` in `sysinfo`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use crate::metrics::{Sampler, build_cpu, parse_stat};

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("outpost-wide-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn times_past_2038_and_2106_format_right() {
    let at = |secs: u64| crate::clock::rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
    assert_eq!(at(1 << 31), "2038-01-19T03:14:08Z");
    assert_eq!(at(1 << 32), "2106-02-07T06:28:16Z");
    let millis =
        crate::clock::rfc3339_millis(UNIX_EPOCH + Duration::from_millis((1 << 31) * 1000 + 5));
    assert_eq!(millis, "2038-01-19T03:14:08.005Z");
    // The clock itself: std reads it through the 64-bit call on 32-bit glibc.
    assert!(crate::clock::now_rfc3339().as_str() > "2025");
}

#[test]
fn cpu_tick_counters_past_2_32_give_right_shares() {
    // 64 cores at 100 Hz pass 2^32 ticks on the `cpu` line within 8 days.
    let base = 5_000_000_000u64;
    let line = |user: u64, idle: u64| format!("cpu  {user} 0 {base} {idle} 0 0 0 0 0 0\n");
    let prev = parse_stat(&line(base, base));
    let cur = parse_stat(&line(base + 300, base + 100));
    let cpu = build_cpu(&prev, &cur).unwrap();
    assert_eq!(cpu.usage_percent, 75.0);
    assert_eq!(cpu.user_percent, 75.0);
}

#[test]
fn network_counters_past_4_gib_stay_exact() {
    let root = scratch("net");
    let dev = |rx_bytes: u64, errors: u64| {
        format!(
            "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n  \
             eth0: {rx_bytes} 7000000000 {errors} 6000000000 0 0 0 0 {rx_bytes} 7000000000 0 0 0 0 0 0\n"
        )
    };
    // Just under 2^32 bytes, then past it: a 32-bit counter would wrap and
    // lose the rate.
    write(&root, "proc/net/dev", &dev((1 << 32) - 1000, 5_000_000_000));
    let mut sampler = Sampler::new(&root);
    sampler.sample();
    write(
        &root,
        "proc/net/dev",
        &dev((1 << 32) + 1_000_000, 5_000_000_001),
    );
    let snap = sampler.sample();
    std::fs::remove_dir_all(&root).unwrap();
    let eth0 = &snap.network[0];
    assert_eq!(eth0.interface, "eth0");
    assert_eq!(eth0.rx_errors, 5_000_000_001);
    assert_eq!(eth0.rx_dropped, 6_000_000_000);
    let rate = eth0.rx_bytes_per_s.expect("a rate across 2^32");
    assert!(rate > 0.0, "{rate}");
}

#[test]
fn process_usage_past_4_gib_and_2_32_ticks() {
    let root = scratch("usage");
    // utime, stime past 2^32 ticks; 2,000,000 resident pages (8 GB at 4 KiB).
    // The fields after the state, from ppid (stat's 4th) on.
    let mut fields = vec!["0"; 48];
    fields[10] = "4294967396"; // utime, the 14th
    fields[11] = "4294967296"; // stime, the 15th
    fields[20] = "2000000"; // rss, the 24th
    write(
        &root,
        "proc/42/stat",
        &format!("42 (collector) S {}\n", fields.join(" ")),
    );
    let (ticks, rss) = crate::supervisor::usage(&root, 42).unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(ticks, 8_589_934_692);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .unwrap()
        .unwrap() as u64;
    assert_eq!(rss, 2_000_000 * page);
}

#[test]
fn sixty_four_bit_atomics_count_past_2_32() {
    // The telemetry counters are AtomicU64: lock-free on armv7 (ldrexd/strexd)
    // and aarch64; a target without them would not compile the library.
    const { assert!(cfg!(target_has_atomic = "64")) };
    let c = AtomicU64::new(u64::from(u32::MAX));
    c.fetch_add(2, Ordering::Relaxed);
    assert_eq!(c.load(Ordering::Relaxed), (1 << 32) + 1);
}
