//! Pure parsers of /proc text (`stat`, `meminfo`, `loadavg`, `uptime`,
//! `net/dev`) and the disk name rules: functions over a file's text, so the
//! fuzz target and the fixture tests reach them without any I/O. Kept apart
//! from the sampler because they are the code that meets outside input.

use procfs::FromRead;

use super::wire::{Cpu, Load, Memory, round2};

/// One `cpu` line of /proc/stat, in ticks. Public for the fuzz target only.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub(super) user: u64,
    pub(super) nice: u64,
    pub(super) system: u64,
    pub(super) idle: u64,
    pub(super) iowait: u64,
    pub(super) irq: u64,
    pub(super) softirq: u64,
    pub(super) steal: u64,
    /// Already inside `user`/`nice`; shown apart by node_exporter.
    pub(super) guest: u64,
    pub(super) guest_nice: u64,
}

/// The parts of /proc/stat the snapshot and system info use. Public for
/// the fuzz target only.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct StatCounters {
    pub total: Option<CpuTicks>,
    /// (`N` of `cpuN`, ticks), in file order.
    pub cores: Vec<(u32, CpuTicks)>,
    pub procs_running: Option<u64>,
    pub procs_blocked: Option<u64>,
    pub btime: Option<i64>,
    /// `ctxt`, `processes` (forks since boot) and the first `intr` number:
    /// node_exporter's stat counters.
    pub ctxt: Option<u64>,
    pub forks: Option<u64>,
    pub intr: Option<u64>,
}

fn parse_cpu_ticks(fields: &str) -> Option<CpuTicks> {
    let mut it = fields.split_ascii_whitespace().map(|f| f.parse::<u64>());
    let mut next = || it.next().and_then(Result::ok);
    let user = next()?;
    let nice = next()?;
    let system = next()?;
    let idle = next()?;
    // Fields from iowait on appeared in later kernels.
    Some(CpuTicks {
        user,
        nice,
        system,
        idle,
        iowait: next().unwrap_or(0),
        irq: next().unwrap_or(0),
        softirq: next().unwrap_or(0),
        steal: next().unwrap_or(0),
        guest: next().unwrap_or(0),
        guest_nice: next().unwrap_or(0),
    })
}

/// Parses /proc/stat into `out`, reusing its core list. Public for the fuzz
/// target only.
#[doc(hidden)]
pub fn parse_stat_into(text: &str, out: &mut StatCounters) {
    out.total = None;
    out.cores.clear();
    out.procs_running = None;
    out.procs_blocked = None;
    out.btime = None;
    out.ctxt = None;
    out.forks = None;
    out.intr = None;
    for line in text.lines() {
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        if let Some(n) = key.strip_prefix("cpu") {
            if n.is_empty() {
                out.total = parse_cpu_ticks(rest);
            } else if let (Ok(n), Some(ticks)) = (n.parse::<u32>(), parse_cpu_ticks(rest)) {
                out.cores.push((n, ticks));
            }
        } else {
            let value = rest.trim();
            match key {
                "procs_running" => out.procs_running = value.parse().ok(),
                "procs_blocked" => out.procs_blocked = value.parse().ok(),
                "btime" => out.btime = value.parse().ok(),
                "ctxt" => out.ctxt = value.parse().ok(),
                "processes" => out.forks = value.parse().ok(),
                "intr" => {
                    out.intr = value
                        .split_ascii_whitespace()
                        .next()
                        .and_then(|v| v.parse().ok());
                }
                _ => {}
            }
        }
    }
}

/// Public for the fuzz target only.
#[doc(hidden)]
pub fn parse_stat(text: &str) -> StatCounters {
    let mut out = StatCounters::default();
    parse_stat_into(text, &mut out);
    out
}

/// Shares of CPU time between two readings, in percent.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuShares {
    usage: f64,
    user: f64,
    system: f64,
    iowait: f64,
    steal: f64,
    idle: f64,
}

fn cpu_shares(prev: &CpuTicks, cur: &CpuTicks) -> Option<CpuShares> {
    // A counter that went backwards made no progress, never negative progress.
    let d = |a: u64, b: u64| b.saturating_sub(a) as f64;
    let user = d(prev.user, cur.user) + d(prev.nice, cur.nice);
    let system = d(prev.system, cur.system) + d(prev.irq, cur.irq) + d(prev.softirq, cur.softirq);
    let iowait = d(prev.iowait, cur.iowait);
    let steal = d(prev.steal, cur.steal);
    let idle = d(prev.idle, cur.idle);
    let total = user + system + iowait + steal + idle;
    if total <= 0.0 {
        return None;
    }
    let pct = |x: f64| x * 100.0 / total;
    let (idle, iowait) = (pct(idle), pct(iowait));
    Some(CpuShares {
        usage: (100.0 - idle - iowait).clamp(0.0, 100.0),
        user: pct(user),
        system: pct(system),
        iowait,
        steal: pct(steal),
        idle,
    })
}

/// Public for the fuzz target only.
#[doc(hidden)]
pub fn build_cpu(prev: &StatCounters, cur: &StatCounters) -> Option<Cpu> {
    let total = cpu_shares(prev.total.as_ref()?, cur.total.as_ref()?)?;
    let mut cpu = Cpu {
        usage_percent: round2(total.usage),
        user_percent: round2(total.user),
        system_percent: round2(total.system),
        iowait_percent: round2(total.iowait),
        steal_percent: round2(total.steal),
        idle_percent: round2(total.idle),
        per_core_usage_percent: Vec::with_capacity(cur.cores.len()),
        core_ids: Vec::with_capacity(cur.cores.len()),
    };
    for (i, (id, ticks)) in cur.cores.iter().enumerate() {
        // Same position is the common case; search only when cores changed.
        let before = match prev.cores.get(i) {
            Some((pid, t)) if pid == id => Some(t),
            _ => prev.cores.iter().find(|(pid, _)| pid == id).map(|(_, t)| t),
        };
        if let Some(shares) = before.and_then(|b| cpu_shares(b, ticks)) {
            cpu.per_core_usage_percent.push(round2(shares.usage));
            cpu.core_ids.push(*id);
        }
    }
    Some(cpu)
}

/// The /proc/meminfo fields the snapshot uses, in bytes. Public for the
/// fuzz target only.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemCounters {
    pub total: u64,
    free: u64,
    available: Option<u64>,
    buffers: u64,
    cached: u64,
    swap_total: u64,
    swap_free: u64,
}

/// Parses /proc/meminfo; `None` without a `MemTotal` line. Public for the
/// fuzz target only.
#[doc(hidden)]
pub fn parse_meminfo(text: &str) -> Option<MemCounters> {
    let mut m = MemCounters::default();
    let mut have_total = false;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_ascii_whitespace();
        let Some(Ok(value)) = parts.next().map(str::parse::<u64>) else {
            continue;
        };
        let bytes = match parts.next() {
            Some("kB") => value.saturating_mul(1024),
            _ => value,
        };
        match key {
            "MemTotal" => {
                m.total = bytes;
                have_total = true;
            }
            "MemFree" => m.free = bytes,
            "MemAvailable" => m.available = Some(bytes),
            "Buffers" => m.buffers = bytes,
            "Cached" => m.cached = bytes,
            "SwapTotal" => m.swap_total = bytes,
            "SwapFree" => m.swap_free = bytes,
            _ => {}
        }
    }
    have_total.then_some(m)
}

/// Public for the fuzz target only.
#[doc(hidden)]
pub fn build_memory(m: &MemCounters) -> Memory {
    let available = m
        .available
        .unwrap_or_else(|| m.free.saturating_add(m.buffers).saturating_add(m.cached))
        .min(m.total);
    let used = m.total - available;
    let usage = if m.total > 0 {
        used as f64 * 100.0 / m.total as f64
    } else {
        0.0
    };
    Memory {
        total_bytes: m.total,
        available_bytes: available,
        used_bytes: used,
        usage_percent: round2(usage),
        buffers_bytes: m.buffers,
        cached_bytes: m.cached,
        swap_total_bytes: m.swap_total,
        swap_used_bytes: m.swap_total.saturating_sub(m.swap_free),
    }
}

/// Load averages and the task count of /proc/loadavg (via procfs). Public
/// for the fuzz target only.
#[doc(hidden)]
pub fn parse_loadavg(text: &str) -> Option<(Load, u64)> {
    let l = procfs::LoadAverage::from_read(text.as_bytes()).ok()?;
    let load = Load {
        one: round2(f64::from(l.one)),
        five: round2(f64::from(l.five)),
        fifteen: round2(f64::from(l.fifteen)),
    };
    Some((load, u64::from(l.max)))
}

/// Public for the fuzz target only.
#[doc(hidden)]
pub fn parse_uptime(text: &str) -> Option<f64> {
    procfs::Uptime::from_read(text.as_bytes())
        .ok()
        .map(|u| round2(u.uptime))
}

/// Public for the fuzz target only.
#[doc(hidden)]
pub fn is_virtual_disk(name: &str) -> bool {
    name.starts_with("loop") || name.starts_with("ram") || name.starts_with("zram")
}

/// Name rule for roots without /sys: is `name` a partition of a disk?
/// Public for the fuzz target only.
#[doc(hidden)]
pub fn looks_like_partition(name: &str) -> bool {
    let trimmed = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if trimmed.len() == name.len() {
        return false;
    }
    // nvme0n1p1, mmcblk0p1, loop0p1: "<disk with trailing digit>p<N>".
    if let Some(base) = trimmed.strip_suffix('p') {
        if base.ends_with(|c: char| c.is_ascii_digit())
            && (base.starts_with("nvme") || base.starts_with("mmcblk") || base.starts_with("nbd"))
        {
            return true;
        }
    }
    // sda1, vdb2, xvda1, hda3: letters-only disk name plus a number.
    ["sd", "vd", "hd", "xvd"].iter().any(|p| {
        trimmed.starts_with(p) && trimmed[p.len()..].chars().all(|c| c.is_ascii_lowercase())
    })
}

/// Network interface counters of one /proc/net/dev line. Public for the
/// fuzz target only.
#[doc(hidden)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub(super) name: String,
    pub(super) rx_bytes: u64,
    pub(super) rx_packets: u64,
    pub(super) rx_errors: u64,
    pub(super) rx_dropped: u64,
    pub(super) tx_bytes: u64,
    pub(super) tx_packets: u64,
    pub(super) tx_errors: u64,
    pub(super) tx_dropped: u64,
}

/// The sixteen counters of one /proc/net/dev line, in the file's order:
/// receive bytes, packets, errs, drop, fifo, frame, compressed, multicast,
/// then transmit bytes, packets, errs, drop, fifo, colls, carrier,
/// compressed. Lines with fewer than 12 numbers are skipped, missing ones
/// are 0. `lo` included: node_exporter shows it.
pub(super) fn net_dev_rows(text: &str) -> impl Iterator<Item = (&str, [u64; 16])> {
    text.lines().skip(2).filter_map(|line| {
        // The name may itself hold a colon (alias "eth0:1"), and a counter may
        // touch the colon ("eth0:68210035552"), so split at the last one.
        let (name, rest) = line.rsplit_once(':')?;
        let name = name.trim();
        if name.is_empty() {
            return None;
        }
        let mut f = [0u64; 16];
        let mut n = 0;
        for (slot, field) in f.iter_mut().zip(rest.split_ascii_whitespace()) {
            match field.parse() {
                Ok(v) => *slot = v,
                Err(_) => break,
            }
            n += 1;
        }
        (n >= 12).then_some((name, f))
    })
}

/// Parses /proc/net/dev into `out` (reusing it), leaving out `lo`. Public
/// for the fuzz target only.
#[doc(hidden)]
pub fn parse_net_dev_into(text: &str, out: &mut Vec<NetCounters>) {
    out.clear();
    for (name, f) in net_dev_rows(text) {
        if name == "lo" {
            continue;
        }
        out.push(NetCounters {
            name: name.to_owned(),
            rx_bytes: f[0],
            rx_packets: f[1],
            rx_errors: f[2],
            rx_dropped: f[3],
            tx_bytes: f[8],
            tx_packets: f[9],
            tx_errors: f[10],
            tx_dropped: f[11],
        });
    }
}

/// One /proc/diskstats line: the device name and the eleven classic
/// counters after it (reads, reads merged, sectors read, ms reading,
/// writes, writes merged, sectors written, ms writing, I/Os in progress, ms
/// doing I/O, weighted ms). Newer kernels' discard and flush fields are
/// ignored. `None` for a line that is not one. Public for the fuzz target
/// only.
#[doc(hidden)]
pub fn parse_diskstats_line(line: &str) -> Option<(&str, [u64; 11])> {
    let mut it = line.split_ascii_whitespace();
    let _major = it.next()?;
    let _minor = it.next()?;
    let name = it.next()?;
    let mut f = [0u64; 11];
    for slot in &mut f {
        *slot = it.next()?.parse().ok()?;
    }
    Some((name, f))
}

/// The three load averages of /proc/loadavg as written (no trip through
/// `f32`, so `/metrics` shows `0.13`, as node_exporter does). Public for
/// the fuzz target only.
#[doc(hidden)]
pub fn parse_load_exact(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_ascii_whitespace().map(|f| f.parse::<f64>());
    let mut next = || it.next()?.ok().filter(|v| v.is_finite());
    Some([next()?, next()?, next()?])
}

/// The state letter and thread count of one /proc/<pid>/stat. The command
/// name may hold spaces and parentheses, so fields are counted after the
/// last `)`. Public for the fuzz target only.
#[doc(hidden)]
pub fn parse_pid_stat(text: &str) -> Option<(char, u64)> {
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // num_threads is field 20 of the line, the 17th after the state.
    let threads = fields.nth(16)?.parse().ok()?;
    Some((state, threads))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::test_support::{fixture_text, vm_two_samples};

    #[test]
    fn parses_proc_stat_of_the_vm_and_an_eight_core_host() {
        let vm = parse_stat(&fixture_text("vm-2core", "proc/stat"));
        assert_eq!(vm.cores.len(), 2);
        assert_eq!(vm.cores[1].0, 1);
        assert_eq!(vm.total.unwrap().user, 24540);
        assert_eq!(vm.total.unwrap().steal, 331);
        assert_eq!(vm.procs_running, Some(2));
        assert_eq!(vm.procs_blocked, Some(0));
        assert_eq!(vm.btime, Some(1_795_395_205));

        let big = parse_stat(&fixture_text("ne-8core", "proc/stat"));
        let ids: Vec<u32> = big.cores.iter().map(|(n, _)| *n).collect();
        assert_eq!(ids, (0..8).collect::<Vec<_>>());
        assert_eq!(big.total.unwrap().idle, 8_979_004);
        assert_eq!(big.procs_running, Some(2));
        assert_eq!(big.btime, Some(1_418_183_276));
    }

    #[test]
    fn cpu_percentages_over_two_real_samples() {
        let (first, second) = vm_two_samples();
        assert!(first.cpu.is_none(), "the first sample has no interval");
        let cpu = second.cpu.unwrap();
        // Deltas: user 54, system 9, idle 160, iowait 3 (of 226 ticks).
        assert_eq!(cpu.user_percent, 23.89);
        assert_eq!(cpu.system_percent, 3.98);
        assert_eq!(cpu.idle_percent, 70.8);
        assert_eq!(cpu.iowait_percent, 1.33);
        assert_eq!(cpu.steal_percent, 0.0);
        assert_eq!(cpu.usage_percent, 27.88);
        let sum = cpu.user_percent
            + cpu.system_percent
            + cpu.idle_percent
            + cpu.iowait_percent
            + cpu.steal_percent;
        assert!((sum - 100.0).abs() < 0.05, "shares sum to {sum}");
        assert_eq!(cpu.per_core_usage_percent, vec![8.04, 46.9]);
        assert_eq!(cpu.core_ids, vec![0, 1]);
    }

    #[test]
    fn cpu_survives_resets_stalls_and_unplugged_cores() {
        let before = parse_stat(
            "cpu  100 0 100 1000 50 0 0 0\ncpu0 50 0 50 500 25\ncpu1 50 0 50 500 25\ncpu2 0 0 0 0 0\n",
        );
        // iowait went backwards, cpu1 was unplugged, cpu3 is new.
        let after = parse_stat(
            "cpu  150 0 100 1100 10 0 0 0\ncpu0 100 0 50 550 0\ncpu2 0 0 0 100 0\ncpu3 5 0 0 5 0\n",
        );
        let cpu = build_cpu(&before, &after).unwrap();
        for v in [
            cpu.usage_percent,
            cpu.user_percent,
            cpu.idle_percent,
            cpu.iowait_percent,
        ] {
            assert!(v.is_finite() && (0.0..=100.0).contains(&v), "{cpu:?}");
        }
        assert_eq!(cpu.iowait_percent, 0.0);
        assert_eq!(cpu.user_percent, 33.33);
        assert_eq!(cpu.core_ids, vec![0, 2]);
        assert_eq!(cpu.per_core_usage_percent, vec![50.0, 0.0]);
        // No ticks at all between two reads: no percentages rather than NaN.
        assert!(build_cpu(&after, &after).is_none());
        // A whole counter reset (all fields smaller) is not negative either.
        assert!(build_cpu(&after, &before).is_none_or(|c| c.usage_percent >= 0.0));
    }

    #[test]
    fn memory_from_the_vm_capture() {
        let m = parse_meminfo(&fixture_text("vm-2core", "proc/meminfo")).unwrap();
        let mem = build_memory(&m);
        assert_eq!(mem.total_bytes, 24_683_656 * 1024);
        assert_eq!(mem.available_bytes, 24_311_076 * 1024);
        assert_eq!(mem.used_bytes, (24_683_656 - 24_311_076) * 1024);
        assert_eq!(mem.usage_percent, 1.51);
        assert_eq!(mem.buffers_bytes, 1148 * 1024);
        assert_eq!(mem.cached_bytes, 502_032 * 1024);
        assert_eq!(mem.swap_total_bytes, 0);
        assert_eq!(mem.swap_used_bytes, 0);
    }

    #[test]
    fn memory_without_mem_available_or_total() {
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\nSwapTotal: 10 kB\nSwapFree: 4 kB\n";
        let mem = build_memory(&parse_meminfo(old).unwrap());
        assert_eq!(mem.available_bytes, 400 * 1024);
        assert_eq!(mem.used_bytes, 600 * 1024);
        assert_eq!(mem.swap_used_bytes, 6 * 1024);
        assert!(parse_meminfo("MemFree: 1 kB\n").is_none());
        assert!(parse_meminfo("garbage\n\u{0}:::\n").is_none());
    }

    #[test]
    fn net_dev_keeps_everything_but_lo_even_when_counters_touch_the_colon() {
        let mut list = Vec::new();
        parse_net_dev_into(&fixture_text("ne-8core", "proc/net/dev"), &mut list);
        let names: Vec<&str> = list.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "tun0",
                "veth4B09XN",
                "eth0",
                "lxcbr0",
                "wlan0",
                "docker0",
                "ibr10:30"
            ]
        );
        let eth0 = &list[2];
        assert_eq!(eth0.rx_bytes, 68_210_035_552);
        assert_eq!(eth0.rx_packets, 520_993_275);
        assert_eq!(eth0.tx_bytes, 9_315_587_528);
        assert_eq!(eth0.tx_packets, 43_451_486);

        parse_net_dev_into(&fixture_text("vm-2core", "proc/net/dev"), &mut list);
        let names: Vec<&str> = list.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["ifb0", "ifb1", "eth0"]);
    }

    #[test]
    fn procfs_net_dev_parser_loses_the_table_on_that_file() {
        // Why /proc/net/dev has its own parser here.
        let text = fixture_text("ne-8core", "proc/net/dev");
        assert!(procfs::net::InterfaceDeviceStatus::from_read(text.as_bytes()).is_err());
    }

    #[test]
    fn stat_counters_for_node_series() {
        let vm = parse_stat(&fixture_text("vm-2core", "proc/stat"));
        assert!(vm.ctxt.is_some() && vm.forks.is_some() && vm.intr.is_some());
        let s = parse_stat("ctxt 42\nprocesses 7\nintr 99 1 2 3\n");
        assert_eq!((s.ctxt, s.forks, s.intr), (Some(42), Some(7), Some(99)));
    }

    #[test]
    fn diskstats_lines_old_and_new_kernels() {
        let old = "   8       0 sda 100 2 800 30 50 1 400 20 0 40 50";
        let (name, f) = parse_diskstats_line(old).unwrap();
        assert_eq!(name, "sda");
        assert_eq!(f, [100, 2, 800, 30, 50, 1, 400, 20, 0, 40, 50]);
        let new = " 254 0 vda 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17";
        assert_eq!(parse_diskstats_line(new).unwrap().1[9], 10);
        assert!(parse_diskstats_line("8 0 sda 1 2 3").is_none());
        assert!(parse_diskstats_line("").is_none());
        let text = fixture_text("vm-2core", "proc/diskstats");
        assert!(text.lines().all(|l| parse_diskstats_line(l).is_some()));
    }

    #[test]
    fn load_exact_and_pid_stat() {
        assert_eq!(
            parse_load_exact("0.13 0.05 0.01 2/128 999\n"),
            Some([0.13, 0.05, 0.01])
        );
        assert!(parse_load_exact("0.1 x").is_none());
        let line = "1234 (a) b (c)) T 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 7 0 1 2 3";
        assert_eq!(parse_pid_stat(line), Some(('T', 7)));
        assert!(parse_pid_stat("1 (x)").is_none());
        assert!(parse_pid_stat("no paren").is_none());
    }

    #[test]
    fn partition_name_rule() {
        for p in ["sda1", "vda2", "xvda1", "hdb3", "nvme0n1p1", "mmcblk0p2"] {
            assert!(looks_like_partition(p), "{p}");
        }
        for d in [
            "sda", "vda", "nvme0n1", "mmcblk0", "dm-0", "md127", "sr0", "fd0", "sdaa",
        ] {
            assert!(!looks_like_partition(d), "{d}");
        }
    }
}
