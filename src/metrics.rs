//! The node metrics snapshot of protocol section 5: what the heartbeat
//! carries and what `/metrics` exposes as `outpost_node_*` series.
//!
//! Everything comes from text under a root directory (`/` in production, a
//! fixture tree in tests), so every parser here is a pure function over the
//! file's text and the [`Sampler`] only adds I/O and the previous-sample state
//! that rates and CPU percentages need.
//!
//! Decisions that the protocol leaves open:
//!
//! - **CPU.** Percentages are shares of the tick deltas since the previous
//!   sample. `user` is user+nice, `system` is system+irq+softirq; guest time is
//!   already inside user/nice and is not added again. `usage_percent` is
//!   `100 - idle - iowait` (so it includes steal: time the VM wanted to run).
//!   Counters that go backwards (iowait does; a hot-plugged core restarts at
//!   zero) count as zero progress, never as negative. A core is matched with
//!   its previous reading by its `cpuN` number, so an unplugged core drops out
//!   of the list instead of shifting the others; a core seen for the first time
//!   is left out until it has a previous reading. `/metrics` labels cores by
//!   that number.
//! - **Memory.** `used = MemTotal - MemAvailable` (MemFree+Buffers+Cached on
//!   kernels without MemAvailable); `cached` is the `Cached` line alone (the
//!   page cache; unlike `free(1)`'s "cache" it leaves out reclaimable slab,
//!   and it includes tmpfs/shmem pages, which cannot be dropped); swap used is
//!   `SwapTotal - SwapFree`.
//! - **Processes.** No `/proc/<pid>` scan: `running`/`blocked` are
//!   `procs_running`/`procs_blocked` of `/proc/stat`; `total` is the second
//!   half of the 4th field of `/proc/loadavg`, which counts kernel scheduling
//!   entities (threads), not processes.
//! - **Filesystems.** From `/proc/self/mountinfo`. Pseudo filesystems (proc,
//!   sysfs, tmpfs, cgroup, overlay, squashfs, …) and anything mounted under
//!   `/proc`, `/sys` or `/dev` are left out, and so are
//!   network and FUSE filesystems (nfs, cifs, fuse.*, fuseblk, ceph, 9p, …)
//!   unless [`Sampler::set_remote_filesystems`] asks for them, because
//!   `statvfs` on a hung network mount blocks forever. Of several mounts of one
//!   device (bind mounts) only one is reported: a mount of the filesystem's
//!   own root if there is one, else the first. `usage_percent` is computed the
//!   way `df` does it: `used / (used + available)`. `statvfs` runs on one
//!   long-lived prober thread with a 200 ms deadline per mount; a mount that
//!   misses it is skipped, and not probed again until its stuck probe returns
//!   (the stuck thread is left behind and a fresh one takes over; at most
//!   [`MAX_STUCK_PROBES`] can exist, after that filesystems are skipped). At
//!   most [`MAX_FILESYSTEMS`] are reported.
//! - **Disks.** From `/proc/diskstats`; loop, ram and zram devices and
//!   partitions are left out. Whole disks and device-mapper/md devices are
//!   kept (an LVM volume's I/O therefore shows both on `dm-N` and on the disk
//!   below it). A whole disk is a device with `<root>/sys/block/<name>`; a root
//!   without `sys/block` falls back to a name rule (`sda1`, `vda2`, `nvme0n1p1`,
//!   `mmcblk0p1` are partitions). Byte rates use 512-byte sectors, the unit of
//!   diskstats whatever the hardware sector size.
//! - **Network.** From `/proc/net/dev`, all interfaces but `lo`. Error and drop
//!   figures are counters since boot, so they are present on the first sample.
//! - **Rates.** Over the monotonic time between this sample and the previous
//!   one. A device that is new, or whose counter went backwards (driver reload,
//!   wrap), has its per-second fields absent for that sample.
//! - **Temperatures.** `thermal_zone*` (named by `type`) and `hwmon*` (named
//!   `name`, `name/label`, or `name/tempN` when an unlabelled chip has several
//!   inputs). An hwmon input that repeats a thermal zone of the same name and
//!   reading is dropped, and repeated names get a `_2`, `_3`, … suffix so every
//!   `/metrics` series is unique. The sensor list is found again every five
//!   minutes, not on every sample; at most [`MAX_TEMPERATURES`] are kept.
//! - **Size.** Floats are rounded to two decimals ([`round2`]) to keep the
//!   heartbeat small.
//!
//! `procfs` parses `/proc/loadavg`, `/proc/uptime` and the `/proc/diskstats`
//! lines. `/proc/stat`, `/proc/meminfo` and `/proc/net/dev` have small parsers
//! here: procfs's `KernelStats` drops the `cpuN` numbers (so an unplugged core
//! would shift the others) and fails without `ctxt`/`processes`; its `Meminfo`
//! fails when any of some forty fields is missing (gVisor and some container
//! runtimes serve a shorter file); its `/proc/net/dev` parser splits on
//! whitespace, so a line like `eth0:68210035552 …` (no space once a counter
//! fills its column) loses the whole table.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use procfs::FromRead;
use serde::Serialize;

use crate::exposition::{Exposition, Kind};

/// How long one `statvfs` may take before its mount is given up on.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// Stuck prober threads allowed to exist at once; past this no probing.
pub const MAX_STUCK_PROBES: usize = 4;
/// Filesystems reported at most (a bound on memory and body size).
pub const MAX_FILESYSTEMS: usize = 64;
/// Temperature sensors reported at most.
pub const MAX_TEMPERATURES: usize = 64;
/// How often the set of temperature sensors is looked for again.
const SENSOR_RESCAN: Duration = Duration::from_secs(300);
/// diskstats counts sectors of 512 bytes regardless of the device.
const SECTOR_BYTES: f64 = 512.0;

// ---------------------------------------------------------------------------
// The snapshot (protocol section 5).

#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
    pub filesystems: Vec<Filesystem>,
    pub disks: Vec<Disk>,
    pub network: Vec<NetInterface>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<Processes>,
    pub temperatures: Vec<Temperature>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Cpu {
    pub usage_percent: f64,
    pub user_percent: f64,
    pub system_percent: f64,
    pub iowait_percent: f64,
    pub steal_percent: f64,
    pub idle_percent: f64,
    pub per_core_usage_percent: Vec<f64>,
    /// The kernel's number of each entry of `per_core_usage_percent`; not in
    /// the JSON (the protocol has a plain list) but used for `/metrics` labels.
    #[serde(skip)]
    pub core_ids: Vec<u32>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub usage_percent: f64,
    pub buffers_bytes: u64,
    pub cached_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Load {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Filesystem {
    pub mount: String,
    pub fs_type: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub available_bytes: u64,
    pub usage_percent: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Disk {
    pub device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_bytes_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_bytes_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reads_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes_per_s: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NetInterface {
    pub interface: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_bytes_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_bytes_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_packets_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_packets_per_s: Option<f64>,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Processes {
    pub total: u64,
    pub running: u64,
    pub blocked: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Temperature {
    pub sensor: String,
    pub celsius: f64,
}

/// Rounds to two decimals; anything not finite becomes 0 so the JSON stays
/// valid (serde_json would write `null` for NaN).
pub fn round2(value: f64) -> f64 {
    if value.is_finite() {
        (value * 100.0).round() / 100.0
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------
// Parsers: pure functions over a file's text.

/// One `cpu` line of /proc/stat, in ticks. Public for the fuzz target only.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    user: u64,
    nice: u64,
    system: u64,
    idle: u64,
    iowait: u64,
    irq: u64,
    softirq: u64,
    steal: u64,
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

/// The diskstats counters the snapshot uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DiskCounters {
    name: String,
    reads: u64,
    sectors_read: u64,
    writes: u64,
    sectors_written: u64,
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
    name: String,
    rx_bytes: u64,
    rx_packets: u64,
    rx_errors: u64,
    rx_dropped: u64,
    tx_bytes: u64,
    tx_packets: u64,
    tx_errors: u64,
    tx_dropped: u64,
}

/// Parses /proc/net/dev into `out` (reusing it), leaving out `lo`. Public
/// for the fuzz target only.
#[doc(hidden)]
pub fn parse_net_dev_into(text: &str, out: &mut Vec<NetCounters>) {
    out.clear();
    for line in text.lines().skip(2) {
        // The name may itself hold a colon (alias "eth0:1"), and a counter may
        // touch the colon ("eth0:68210035552"), so split at the last one.
        let Some((name, rest)) = line.rsplit_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" || name.is_empty() {
            continue;
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
        if n < 12 {
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

/// One line of /proc/self/mountinfo, the parts we use. Public for the fuzz
/// target only.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: String,
    pub fs_type: String,
    device: String,
    root_is_fs_root: bool,
}

/// Undoes the kernel's octal escaping of space, tab, newline and backslash.
fn unescape_mount_path(text: &str) -> String {
    if !text.contains('\\') {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let oct = text
                .get(i + 1..i + 4)
                .filter(|o| o.bytes().all(|b| (b'0'..=b'7').contains(&b)));
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Public for the fuzz target only.
#[doc(hidden)]
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.split(' ');
        let (Some(_id), Some(_parent), Some(device), Some(root), Some(mount_point)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        // Optional fields run up to a lone "-"; the type follows it.
        let Some(fs_type) = fields.by_ref().skip_while(|f| *f != "-").nth(1) else {
            continue;
        };
        out.push(MountEntry {
            mount_point: unescape_mount_path(mount_point),
            fs_type: fs_type.to_owned(),
            device: device.to_owned(),
            root_is_fs_root: root == "/",
        });
    }
    out
}

/// Filesystems with no storage of their own, or only in memory. Public for
/// the fuzz target only.
#[doc(hidden)]
pub fn is_pseudo_fs(fs_type: &str) -> bool {
    const PSEUDO: &[&str] = &[
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devpts",
        "devtmpfs",
        "efivarfs",
        "fusectl",
        "hugetlbfs",
        "mqueue",
        "nsfs",
        "overlay",
        "proc",
        "pstore",
        "ramfs",
        "rootfs",
        "rpc_pipefs",
        "securityfs",
        "selinuxfs",
        "squashfs",
        "sysfs",
        "tmpfs",
        "tracefs",
        "nfsd",
        "aufs",
        "erofs",
    ];
    PSEUDO.contains(&fs_type)
}

/// Filesystems whose `statvfs` can hang on a server or a user daemon.
/// Public for the fuzz target only.
#[doc(hidden)]
pub fn is_remote_fs(fs_type: &str) -> bool {
    const REMOTE: &[&str] = &[
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "coda",
        "ceph",
        "glusterfs",
        "9p",
        "lustre",
        "gpfs",
        "beegfs",
        "davfs",
        "virtiofs",
        "fuse",
        "fuseblk",
        "sshfs",
    ];
    REMOTE.contains(&fs_type) || fs_type.starts_with("fuse.")
}

/// Mount points under /proc, /sys and /dev hold kernel interfaces, never
/// storage, whatever type the table claims (an autofs trigger there would even
/// mount something when probed).
fn is_kernel_mount_point(path: &str) -> bool {
    ["/proc", "/sys", "/dev"].iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// The mounts worth a `statvfs`: real, local (unless `include_remote`), one
/// per device, and for a stacked mount point the one on top. Public for the
/// fuzz target only.
#[doc(hidden)]
pub fn select_mounts(entries: &[MountEntry], include_remote: bool) -> Vec<&MountEntry> {
    let mut chosen: Vec<&MountEntry> = Vec::new();
    for e in entries {
        if is_pseudo_fs(&e.fs_type)
            || (!include_remote && is_remote_fs(&e.fs_type))
            || is_kernel_mount_point(&e.mount_point)
        {
            continue;
        }
        // A later mount on the same point hides the earlier one.
        chosen.retain(|c| c.mount_point != e.mount_point);
        match chosen.iter().position(|c| c.device == e.device) {
            Some(i) if !chosen[i].root_is_fs_root && e.root_is_fs_root => chosen[i] = e,
            Some(_) => {}
            None => chosen.push(e),
        }
    }
    chosen.truncate(MAX_FILESYSTEMS);
    chosen
}

// ---------------------------------------------------------------------------
// statvfs off the sampling thread.

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct FsUsage {
    total: u64,
    free: u64,
    avail: u64,
}

fn statvfs_usage(path: &Path) -> Option<FsUsage> {
    match statvfs_wide(path) {
        Ok(usage) => Some(usage),
        Err(e) => {
            warn_once_statvfs(path, e);
            None
        }
    }
}

/// A filesystem that cannot be measured is left out of the snapshot; the
/// first failure for each mount point says so, later ones are quiet.
fn warn_once_statvfs(path: &Path, e: nix::errno::Errno) {
    static SAID: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut said = lock(&SAID);
    if said.iter().any(|p| p == path) || said.len() >= 4 * MAX_FILESYSTEMS {
        return;
    }
    said.push(path.to_owned());
    log::warn!(
        "statvfs of {} failed: {e}; it is left out of the filesystem metrics (said once)",
        path.display()
    );
}

/// Bytes from block counts, in the fragment size (the unit of the counts).
fn usage_from(frsize: u64, bsize: u64, blocks: u64, bfree: u64, bavail: u64) -> FsUsage {
    let unit = if frsize == 0 { bsize } else { frsize };
    FsUsage {
        total: blocks.saturating_mul(unit),
        free: bfree.saturating_mul(unit),
        avail: bavail.saturating_mul(unit),
    }
}

/// `statvfs(3)` with 64-bit block counts. On 32-bit glibc the plain call
/// (nix's) fails with EOVERFLOW above 2^32 blocks (16 TiB at 4 KiB), so
/// `statvfs64` is called there; musl and 64-bit glibc count in 64 bits anyway.
#[cfg(all(target_env = "gnu", target_pointer_width = "32"))]
fn statvfs_wide(path: &Path) -> nix::Result<FsUsage> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| nix::errno::Errno::EINVAL)?;
    let mut buf = std::mem::MaybeUninit::<nix::libc::statvfs64>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string that lives across the call,
    // and `buf` is a writable `statvfs64` of the right size and alignment,
    // which the call only writes to.
    let rc = unsafe { nix::libc::statvfs64(c_path.as_ptr(), buf.as_mut_ptr()) };
    nix::errno::Errno::result(rc)?;
    // SAFETY: `statvfs64` returned 0, so it filled in the whole struct.
    let s = unsafe { buf.assume_init() };
    Ok(usage_from(
        s.f_frsize as u64,
        s.f_bsize as u64,
        s.f_blocks,
        s.f_bfree,
        s.f_bavail,
    ))
}

#[cfg(not(all(target_env = "gnu", target_pointer_width = "32")))]
fn statvfs_wide(path: &Path) -> nix::Result<FsUsage> {
    let s = nix::sys::statvfs::statvfs(path)?;
    Ok(usage_from(
        s.fragment_size() as u64,
        s.block_size() as u64,
        s.blocks() as u64,
        s.blocks_free() as u64,
        s.blocks_available() as u64,
    ))
}

enum ProbeReply {
    Usage(Option<FsUsage>),
    Done,
}

struct ProbeWorker {
    jobs: mpsc::Sender<Vec<PathBuf>>,
    replies: mpsc::Receiver<ProbeReply>,
    generation: u64,
}

/// Runs `statvfs` calls on a helper thread so a hung mount costs the sampler
/// at most [`PROBE_TIMEOUT`] once, not a stalled heartbeat.
struct FsProber {
    worker: Option<ProbeWorker>,
    next_generation: u64,
    /// Mounts whose probe is stuck, with the generation of the thread stuck
    /// on it; that thread removes its entries when its call returns.
    stuck: Arc<Mutex<Vec<(PathBuf, u64)>>>,
    timeout: Duration,
    probe: fn(&Path) -> Option<FsUsage>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data is a plain list that a panic cannot leave half-written.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FsProber {
    fn new(timeout: Duration, probe: fn(&Path) -> Option<FsUsage>) -> FsProber {
        FsProber {
            worker: None,
            next_generation: 0,
            stuck: Arc::new(Mutex::new(Vec::new())),
            timeout,
            probe,
        }
    }

    fn spawn(&mut self) -> Option<ProbeWorker> {
        let (job_tx, job_rx) = mpsc::channel::<Vec<PathBuf>>();
        let (reply_tx, reply_rx) = mpsc::channel();
        let generation = self.next_generation;
        self.next_generation += 1;
        let stuck = Arc::clone(&self.stuck);
        let probe = self.probe;
        let spawned = thread::Builder::new()
            .name("outpost-statvfs".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                'jobs: while let Ok(batch) = job_rx.recv() {
                    for path in &batch {
                        if reply_tx.send(ProbeReply::Usage(probe(path))).is_err() {
                            break 'jobs;
                        }
                    }
                    if reply_tx.send(ProbeReply::Done).is_err() {
                        break;
                    }
                }
                lock(&stuck).retain(|(_, g)| *g != generation);
            });
        match spawned {
            Ok(_) => Some(ProbeWorker {
                jobs: job_tx,
                replies: reply_rx,
                generation,
            }),
            Err(e) => {
                log::warn!("cannot start the statvfs thread: {e}");
                None
            }
        }
    }

    /// Usage of each path, `None` where unknown, failed, timed out or stuck.
    fn probe_all(&mut self, paths: &[PathBuf]) -> Vec<Option<FsUsage>> {
        let mut results = vec![None; paths.len()];
        let mut batch = Vec::with_capacity(paths.len());
        let mut index = Vec::with_capacity(paths.len());
        {
            let stuck = lock(&self.stuck);
            if stuck.len() >= MAX_STUCK_PROBES {
                return results;
            }
            for (i, p) in paths.iter().enumerate() {
                if !stuck.iter().any(|(s, _)| s == p) {
                    batch.push(p.clone());
                    index.push(i);
                }
            }
        }
        if batch.is_empty() {
            return results;
        }
        let Some(worker) = self.worker.take().or_else(|| self.spawn()) else {
            return results;
        };
        if worker.jobs.send(batch).is_err() {
            return results;
        }
        let mut received = 0;
        loop {
            match worker.replies.recv_timeout(self.timeout) {
                Ok(ProbeReply::Usage(usage)) => {
                    if let Some(&i) = index.get(received) {
                        results[i] = usage;
                    }
                    received += 1;
                }
                Ok(ProbeReply::Done) => {
                    self.worker = Some(worker);
                    return results;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(&i) = index.get(received) {
                        log::warn!(
                            "statvfs of {} did not return within {:?}; skipping it until it does",
                            paths[i].display(),
                            self.timeout
                        );
                        lock(&self.stuck).push((paths[i].clone(), worker.generation));
                    }
                    // Dropping the worker abandons its thread to the stuck call.
                    return results;
                }
                Err(RecvTimeoutError::Disconnected) => return results,
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Temperatures.

#[derive(Debug, Clone)]
struct SensorSource {
    name: String,
    path: PathBuf,
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

fn read_millidegrees(path: &Path, buf: &mut String) -> Option<f64> {
    buf.clear();
    File::open(path).ok()?.read_to_string(buf).ok()?;
    let milli: i64 = buf.trim().parse().ok()?;
    let c = milli as f64 / 1000.0;
    // Outside this range the value is a driver's error code, not a reading.
    (-100.0..=250.0).contains(&c).then_some(c)
}

/// Directory entries of `dir` starting with `prefix`, ordered by the number
/// after the prefix (thermal_zone2 before thermal_zone10).
fn numbered_entries(dir: &Path, prefix: &str) -> Vec<(u64, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, PathBuf)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix(prefix)?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    out.sort_by_key(|(n, _)| *n);
    out
}

fn scan_sensors(root: &Path) -> Vec<SensorSource> {
    let mut found: Vec<(SensorSource, Option<f64>)> = Vec::new();
    let mut buf = String::new();
    for (_, zone) in numbered_entries(&root.join("sys/class/thermal"), "thermal_zone") {
        let name = read_trimmed(&zone.join("type")).unwrap_or_else(|| "thermal".into());
        let path = zone.join("temp");
        let reading = read_millidegrees(&path, &mut buf);
        found.push((SensorSource { name, path }, reading));
    }
    for (n, chip) in numbered_entries(&root.join("sys/class/hwmon"), "hwmon") {
        let chip_name = read_trimmed(&chip.join("name")).unwrap_or_else(|| format!("hwmon{n}"));
        let Ok(rd) = std::fs::read_dir(&chip) else {
            continue;
        };
        let mut inputs: Vec<u64> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let f = e.file_name();
                f.to_str()?
                    .strip_prefix("temp")?
                    .strip_suffix("_input")?
                    .parse()
                    .ok()
            })
            .collect();
        inputs.sort_unstable();
        let several = inputs.len() > 1;
        for i in inputs {
            let name = match read_trimmed(&chip.join(format!("temp{i}_label"))) {
                Some(label) => format!("{chip_name}/{label}"),
                None if several => format!("{chip_name}/temp{i}"),
                None => chip_name.clone(),
            };
            let path = chip.join(format!("temp{i}_input"));
            let reading = read_millidegrees(&path, &mut buf);
            // Thermal zones register themselves as hwmon chips too.
            if found.iter().any(|(s, r)| s.name == name && *r == reading) {
                continue;
            }
            found.push((SensorSource { name, path }, reading));
        }
    }
    let mut out: Vec<SensorSource> = Vec::with_capacity(found.len());
    for (mut s, _) in found {
        if out.iter().any(|o| o.name == s.name) {
            let base = s.name.clone();
            let mut k = 2;
            while out.iter().any(|o| o.name == s.name) {
                s.name = format!("{base}_{k}");
                k += 1;
            }
        }
        out.push(s);
        if out.len() == MAX_TEMPERATURES {
            break;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The sampler.

/// Takes snapshots; keeps what the next snapshot's rates need.
pub struct Sampler {
    root: PathBuf,
    buf: String,
    prev_stat: StatCounters,
    cur_stat: StatCounters,
    prev_disks: Vec<DiskCounters>,
    cur_disks: Vec<DiskCounters>,
    /// (name, keep?) per diskstats line, so /sys is asked only when the device
    /// list changes.
    disk_verdicts: Vec<(String, bool)>,
    prev_net: Vec<NetCounters>,
    cur_net: Vec<NetCounters>,
    prev_at: Option<Instant>,
    include_remote: bool,
    prober: FsProber,
    sensors: Vec<SensorSource>,
    sensors_scanned: Option<Instant>,
}

/// Reads `root/rel` into `buf`; `None` if missing or unreadable.
fn read_into<'a>(root: &Path, rel: &str, buf: &'a mut String) -> Option<&'a str> {
    buf.clear();
    File::open(root.join(rel)).ok()?.read_to_string(buf).ok()?;
    Some(buf.as_str())
}

fn rate(prev: u64, cur: u64, secs: f64) -> Option<f64> {
    (cur >= prev && secs > 0.0).then(|| round2((cur - prev) as f64 / secs))
}

impl Sampler {
    pub fn new(root: impl Into<PathBuf>) -> Sampler {
        Sampler {
            root: root.into(),
            buf: String::with_capacity(8192),
            prev_stat: StatCounters::default(),
            cur_stat: StatCounters::default(),
            prev_disks: Vec::new(),
            cur_disks: Vec::new(),
            disk_verdicts: Vec::new(),
            prev_net: Vec::new(),
            cur_net: Vec::new(),
            prev_at: None,
            include_remote: false,
            prober: FsProber::new(PROBE_TIMEOUT, statvfs_usage),
            sensors: Vec::new(),
            sensors_scanned: None,
        }
    }

    /// Also report network and FUSE filesystems (off by default: a hung
    /// server can make each of their probes cost the full timeout once).
    pub fn set_remote_filesystems(&mut self, include: bool) {
        self.include_remote = include;
    }

    pub fn sample(&mut self) -> Snapshot {
        self.sample_at(Instant::now(), SystemTime::now())
    }

    fn sample_at(&mut self, now: Instant, wall: SystemTime) -> Snapshot {
        let secs = self
            .prev_at
            .map(|p| now.saturating_duration_since(p).as_secs_f64());
        let mut snap = Snapshot {
            at: crate::clock::rfc3339(wall),
            ..Snapshot::default()
        };

        // /proc/stat: CPU shares and process states.
        let have_prev_stat = self.prev_stat.total.is_some();
        match read_into(&self.root, "proc/stat", &mut self.buf) {
            Some(text) => parse_stat_into(text, &mut self.cur_stat),
            None => parse_stat_into("", &mut self.cur_stat),
        }
        if have_prev_stat {
            snap.cpu = build_cpu(&self.prev_stat, &self.cur_stat);
        }
        std::mem::swap(&mut self.prev_stat, &mut self.cur_stat);

        snap.memory = read_into(&self.root, "proc/meminfo", &mut self.buf)
            .and_then(parse_meminfo)
            .map(|m| build_memory(&m));

        let loadavg = read_into(&self.root, "proc/loadavg", &mut self.buf).and_then(parse_loadavg);
        let running = self.prev_stat.procs_running;
        let blocked = self.prev_stat.procs_blocked;
        if let Some((load, tasks)) = loadavg {
            snap.load = Some(load);
            snap.processes = Some(Processes {
                total: tasks,
                running: running.unwrap_or(0),
                blocked: blocked.unwrap_or(0),
            });
        } else if running.is_some() || blocked.is_some() {
            snap.processes = Some(Processes {
                total: 0,
                running: running.unwrap_or(0),
                blocked: blocked.unwrap_or(0),
            });
        }

        snap.uptime_s = read_into(&self.root, "proc/uptime", &mut self.buf).and_then(parse_uptime);

        self.sample_disks(secs, &mut snap);
        self.sample_network(secs, &mut snap);
        self.sample_filesystems(&mut snap);
        self.sample_temperatures(now, &mut snap);

        self.prev_at = Some(now);
        snap
    }

    fn disk_kept(&mut self, index: usize, name: &str) -> bool {
        if let Some((n, keep)) = self.disk_verdicts.get(index) {
            if n == name {
                return *keep;
            }
        }
        let keep = !is_virtual_disk(name) && {
            let sys_block = self.root.join("sys/block");
            if sys_block.is_dir() {
                // /sys/block spells a '/' in a device name as '!'.
                sys_block.join(name.replace('/', "!")).exists()
            } else {
                !looks_like_partition(name)
            }
        };
        if index < self.disk_verdicts.len() {
            self.disk_verdicts[index] = (name.to_owned(), keep);
        } else {
            self.disk_verdicts.push((name.to_owned(), keep));
        }
        keep
    }

    fn sample_disks(&mut self, secs: Option<f64>, snap: &mut Snapshot) {
        self.cur_disks.clear();
        let mut buf = std::mem::take(&mut self.buf);
        let mut lines = 0;
        if let Some(text) = read_into(&self.root, "proc/diskstats", &mut buf) {
            for line in text.lines() {
                let Ok(d) = procfs::DiskStat::from_line(line) else {
                    continue;
                };
                let index = lines;
                lines += 1;
                if self.disk_kept(index, &d.name) {
                    self.cur_disks.push(DiskCounters {
                        name: d.name,
                        reads: d.reads,
                        sectors_read: d.sectors_read,
                        writes: d.writes,
                        sectors_written: d.sectors_written,
                    });
                }
            }
        }
        self.buf = buf;
        self.disk_verdicts.truncate(lines);
        snap.disks.reserve(self.cur_disks.len());
        for (i, cur) in self.cur_disks.iter().enumerate() {
            let prev = match self.prev_disks.get(i) {
                Some(p) if p.name == cur.name => Some(p),
                _ => self.prev_disks.iter().find(|p| p.name == cur.name),
            };
            let mut disk = Disk {
                device: cur.name.clone(),
                ..Disk::default()
            };
            if let (Some(p), Some(s)) = (prev, secs) {
                let sectors = |a: u64, b: u64| rate(a, b, s).map(|r| round2(r * SECTOR_BYTES));
                disk.read_bytes_per_s = sectors(p.sectors_read, cur.sectors_read);
                disk.write_bytes_per_s = sectors(p.sectors_written, cur.sectors_written);
                disk.reads_per_s = rate(p.reads, cur.reads, s);
                disk.writes_per_s = rate(p.writes, cur.writes, s);
            }
            snap.disks.push(disk);
        }
        std::mem::swap(&mut self.prev_disks, &mut self.cur_disks);
    }

    fn sample_network(&mut self, secs: Option<f64>, snap: &mut Snapshot) {
        match read_into(&self.root, "proc/net/dev", &mut self.buf) {
            Some(text) => parse_net_dev_into(text, &mut self.cur_net),
            None => self.cur_net.clear(),
        }
        snap.network.reserve(self.cur_net.len());
        for (i, cur) in self.cur_net.iter().enumerate() {
            let prev = match self.prev_net.get(i) {
                Some(p) if p.name == cur.name => Some(p),
                _ => self.prev_net.iter().find(|p| p.name == cur.name),
            };
            let mut net = NetInterface {
                interface: cur.name.clone(),
                rx_errors: cur.rx_errors,
                tx_errors: cur.tx_errors,
                rx_dropped: cur.rx_dropped,
                tx_dropped: cur.tx_dropped,
                ..NetInterface::default()
            };
            if let (Some(p), Some(s)) = (prev, secs) {
                net.rx_bytes_per_s = rate(p.rx_bytes, cur.rx_bytes, s);
                net.tx_bytes_per_s = rate(p.tx_bytes, cur.tx_bytes, s);
                net.rx_packets_per_s = rate(p.rx_packets, cur.rx_packets, s);
                net.tx_packets_per_s = rate(p.tx_packets, cur.tx_packets, s);
            }
            snap.network.push(net);
        }
        std::mem::swap(&mut self.prev_net, &mut self.cur_net);
    }

    fn sample_filesystems(&mut self, snap: &mut Snapshot) {
        let Some(text) = read_into(&self.root, "proc/self/mountinfo", &mut self.buf) else {
            return;
        };
        let entries = parse_mountinfo(text);
        let mounts = select_mounts(&entries, self.include_remote);
        let paths: Vec<PathBuf> = mounts
            .iter()
            .map(|m| self.root.join(m.mount_point.trim_start_matches('/')))
            .collect();
        let usages = self.prober.probe_all(&paths);
        for (m, usage) in mounts.iter().zip(usages) {
            let Some(u) = usage else { continue };
            if u.total == 0 {
                continue;
            }
            let used = u.total.saturating_sub(u.free);
            let denominator = used.saturating_add(u.avail);
            let usage_percent = if denominator > 0 {
                used as f64 * 100.0 / denominator as f64
            } else {
                0.0
            };
            snap.filesystems.push(Filesystem {
                mount: m.mount_point.clone(),
                fs_type: m.fs_type.clone(),
                total_bytes: u.total,
                free_bytes: u.free,
                available_bytes: u.avail,
                usage_percent: round2(usage_percent),
            });
        }
    }

    fn sample_temperatures(&mut self, now: Instant, snap: &mut Snapshot) {
        let due = self
            .sensors_scanned
            .is_none_or(|t| now.saturating_duration_since(t) >= SENSOR_RESCAN);
        if due {
            self.sensors = scan_sensors(&self.root);
            self.sensors_scanned = Some(now);
        }
        for s in &self.sensors {
            if let Some(c) = read_millidegrees(&s.path, &mut self.buf) {
                snap.temperatures.push(Temperature {
                    sensor: s.name.clone(),
                    celsius: round2(c),
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Prometheus exposition.

impl Snapshot {
    /// Writes the node series (`outpost_node_*`); a part absent from the
    /// snapshot writes no family.
    pub fn write_prometheus(&self, out: &mut Exposition) {
        use Kind::{Counter, Gauge};
        if let Some(c) = &self.cpu {
            out.single(
                "outpost_node_cpu_usage_percent",
                "CPU busy share (100 - idle - iowait) since the previous sample.",
                Gauge,
                c.usage_percent,
            );
            out.single(
                "outpost_node_cpu_user_percent",
                "CPU share in user mode (user+nice) since the previous sample.",
                Gauge,
                c.user_percent,
            );
            out.single(
                "outpost_node_cpu_system_percent",
                "CPU share in the kernel (system+irq+softirq) since the previous sample.",
                Gauge,
                c.system_percent,
            );
            out.single(
                "outpost_node_cpu_iowait_percent",
                "CPU share idle waiting for I/O since the previous sample.",
                Gauge,
                c.iowait_percent,
            );
            out.single(
                "outpost_node_cpu_steal_percent",
                "CPU share stolen by the hypervisor since the previous sample.",
                Gauge,
                c.steal_percent,
            );
            out.single(
                "outpost_node_cpu_idle_percent",
                "CPU share idle since the previous sample.",
                Gauge,
                c.idle_percent,
            );
            if !c.per_core_usage_percent.is_empty() {
                let name = "outpost_node_cpu_core_usage_percent";
                out.family(
                    name,
                    "Busy share of one core since the previous sample.",
                    Gauge,
                );
                for (id, v) in c.core_ids.iter().zip(&c.per_core_usage_percent) {
                    out.sample(name, &[("core", &id.to_string())], *v);
                }
            }
        }
        if let Some(m) = &self.memory {
            let rows: [(&str, &str, f64); 8] = [
                (
                    "outpost_node_memory_total_bytes",
                    "Usable RAM.",
                    m.total_bytes as f64,
                ),
                (
                    "outpost_node_memory_available_bytes",
                    "RAM available to new work without swapping.",
                    m.available_bytes as f64,
                ),
                (
                    "outpost_node_memory_used_bytes",
                    "RAM in use (total - available).",
                    m.used_bytes as f64,
                ),
                (
                    "outpost_node_memory_usage_percent",
                    "RAM in use, percent of total.",
                    m.usage_percent,
                ),
                (
                    "outpost_node_memory_buffers_bytes",
                    "Block device buffers.",
                    m.buffers_bytes as f64,
                ),
                (
                    "outpost_node_memory_cached_bytes",
                    "Page cache (Cached of /proc/meminfo).",
                    m.cached_bytes as f64,
                ),
                (
                    "outpost_node_memory_swap_total_bytes",
                    "Swap space.",
                    m.swap_total_bytes as f64,
                ),
                (
                    "outpost_node_memory_swap_used_bytes",
                    "Swap space in use.",
                    m.swap_used_bytes as f64,
                ),
            ];
            for (name, help, value) in rows {
                out.single(name, help, Gauge, value);
            }
        }
        if let Some(l) = &self.load {
            out.single(
                "outpost_node_load1",
                "Load average over 1 minute.",
                Gauge,
                l.one,
            );
            out.single(
                "outpost_node_load5",
                "Load average over 5 minutes.",
                Gauge,
                l.five,
            );
            out.single(
                "outpost_node_load15",
                "Load average over 15 minutes.",
                Gauge,
                l.fifteen,
            );
        }
        if !self.filesystems.is_empty() {
            type FsField = fn(&Filesystem) -> f64;
            let fams: [(&str, &str, FsField); 4] = [
                (
                    "outpost_node_filesystem_size_bytes",
                    "Filesystem size.",
                    |f| f.total_bytes as f64,
                ),
                (
                    "outpost_node_filesystem_free_bytes",
                    "Filesystem free space.",
                    |f| f.free_bytes as f64,
                ),
                (
                    "outpost_node_filesystem_avail_bytes",
                    "Filesystem space available to unprivileged users.",
                    |f| f.available_bytes as f64,
                ),
                (
                    "outpost_node_filesystem_usage_percent",
                    "Filesystem use as df shows it: used / (used + available).",
                    |f| f.usage_percent,
                ),
            ];
            for (name, help, get) in fams {
                out.family(name, help, Gauge);
                for f in &self.filesystems {
                    out.sample(
                        name,
                        &[("mount", &f.mount), ("fs_type", &f.fs_type)],
                        get(f),
                    );
                }
            }
        }
        type DiskField = fn(&Disk) -> Option<f64>;
        let disk_fams: [(&str, &str, DiskField); 4] = [
            (
                "outpost_node_disk_read_bytes_per_second",
                "Bytes read per second.",
                |d| d.read_bytes_per_s,
            ),
            (
                "outpost_node_disk_written_bytes_per_second",
                "Bytes written per second.",
                |d| d.write_bytes_per_s,
            ),
            (
                "outpost_node_disk_reads_per_second",
                "Reads completed per second.",
                |d| d.reads_per_s,
            ),
            (
                "outpost_node_disk_writes_per_second",
                "Writes completed per second.",
                |d| d.writes_per_s,
            ),
        ];
        for (name, help, get) in disk_fams {
            write_optional(out, name, help, &self.disks, "device", |d| &d.device, get);
        }
        type NetRate = fn(&NetInterface) -> Option<f64>;
        let net_rates: [(&str, &str, NetRate); 4] = [
            (
                "outpost_node_network_receive_bytes_per_second",
                "Bytes received per second.",
                |n| n.rx_bytes_per_s,
            ),
            (
                "outpost_node_network_transmit_bytes_per_second",
                "Bytes sent per second.",
                |n| n.tx_bytes_per_s,
            ),
            (
                "outpost_node_network_receive_packets_per_second",
                "Packets received per second.",
                |n| n.rx_packets_per_s,
            ),
            (
                "outpost_node_network_transmit_packets_per_second",
                "Packets sent per second.",
                |n| n.tx_packets_per_s,
            ),
        ];
        for (name, help, get) in net_rates {
            write_optional(
                out,
                name,
                help,
                &self.network,
                "interface",
                |n| &n.interface,
                get,
            );
        }
        if !self.network.is_empty() {
            type NetCount = fn(&NetInterface) -> u64;
            let counters: [(&str, &str, NetCount); 4] = [
                (
                    "outpost_node_network_receive_errors_total",
                    "Receive errors since boot.",
                    |n| n.rx_errors,
                ),
                (
                    "outpost_node_network_transmit_errors_total",
                    "Transmit errors since boot.",
                    |n| n.tx_errors,
                ),
                (
                    "outpost_node_network_receive_drop_total",
                    "Received packets dropped since boot.",
                    |n| n.rx_dropped,
                ),
                (
                    "outpost_node_network_transmit_drop_total",
                    "Packets to send dropped since boot.",
                    |n| n.tx_dropped,
                ),
            ];
            for (name, help, get) in counters {
                out.family(name, help, Counter);
                for n in &self.network {
                    out.sample(name, &[("interface", &n.interface)], get(n) as f64);
                }
            }
        }
        if let Some(p) = &self.processes {
            // Not `_procs_total`: promtool rejects a `_total` suffix on a
            // gauge, and this is a level, not a counter.
            out.single(
                "outpost_node_procs",
                "Tasks (threads included) that exist, from /proc/loadavg.",
                Gauge,
                p.total as f64,
            );
            out.single(
                "outpost_node_procs_running",
                "Runnable tasks.",
                Gauge,
                p.running as f64,
            );
            out.single(
                "outpost_node_procs_blocked",
                "Tasks blocked on I/O.",
                Gauge,
                p.blocked as f64,
            );
        }
        if !self.temperatures.is_empty() {
            let name = "outpost_node_temperature_celsius";
            out.family(name, "Sensor temperature.", Gauge);
            for t in &self.temperatures {
                out.sample(name, &[("sensor", &t.sensor)], t.celsius);
            }
        }
        if let Some(u) = self.uptime_s {
            out.single("outpost_node_uptime_seconds", "Time since boot.", Gauge, u);
        }
    }
}

/// A family over the items that have the value; no family if none has it.
fn write_optional<T>(
    out: &mut Exposition,
    name: &str,
    help: &str,
    items: &[T],
    label: &str,
    key: impl Fn(&T) -> &String,
    get: impl Fn(&T) -> Option<f64>,
) {
    let mut started = false;
    for item in items {
        if let Some(v) = get(item) {
            if !started {
                out.family(name, help, Kind::Gauge);
                started = true;
            }
            out.sample(name, &[(label, key(item))], v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn fixture_text(name: &str, rel: &str) -> String {
        std::fs::read_to_string(fixture(name).join(rel)).unwrap()
    }

    /// A fresh directory under the system temp dir for trees built at run time.
    fn scratch_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("outpost-metrics-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write_file(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Two samples of the captured VM, one second apart.
    fn vm_two_samples() -> (Snapshot, Snapshot) {
        let mut sampler = Sampler::new(fixture("vm-2core"));
        let t0 = Instant::now();
        let first = sampler.sample_at(t0, SystemTime::UNIX_EPOCH);
        sampler.root = fixture("vm-2core-t1");
        let second = sampler.sample_at(t0 + Duration::from_secs(1), SystemTime::UNIX_EPOCH);
        (first, second)
    }

    fn promtool_check(text: &str) {
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

    #[test]
    fn round2_rounds_and_tames_non_finite_values() {
        assert_eq!(round2(27.876_106), 27.88);
        assert_eq!(round2(0.125_f32 as f64), 0.13);
        assert_eq!(round2(f64::NAN), 0.0);
        assert_eq!(round2(f64::INFINITY), 0.0);
    }

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
    fn mounts_leave_out_pseudo_fuse_and_bind_duplicates() {
        let entries = parse_mountinfo(&fixture_text("ne-8core", "proc/self/mountinfo"));
        assert_eq!(entries.len(), 31);
        let chosen: Vec<(&str, &str)> = select_mounts(&entries, false)
            .iter()
            .map(|m| (m.mount_point.as_str(), m.fs_type.as_str()))
            .collect();
        assert_eq!(
            chosen,
            [
                ("/", "ext4"),
                ("/boot", "ext2"),
                (
                    "/var/lib/kubelet/plugins/kubernetes.io/vsphere-volume/mounts/[vsanDatastore] bafb9e5a-8856-7e6c-699c-801844e77a4a/kubernetes-dynamic-pvc-3eba5bba-48a3-11e8-89ab-005056b92113.vmdk",
                    "ext4"
                ),
            ]
        );
        // With remote filesystems asked for, the FUSE mount comes back.
        let all = select_mounts(&entries, true);
        assert!(all.iter().any(|m| m.fs_type == "fuse.gvfsd-fuse"));
        assert!(all.iter().all(|m| m.fs_type != "tmpfs"));
    }

    #[test]
    fn nfs_mounts_are_skipped_by_default_and_deduplicated_when_asked_for() {
        let entries = parse_mountinfo(&fixture_text("ne-nfs", "proc/self/mountinfo"));
        let local: Vec<&str> = select_mounts(&entries, false)
            .iter()
            .map(|m| m.mount_point.as_str())
            .collect();
        assert_eq!(local, ["/"]);
        let all: Vec<(&str, &str)> = select_mounts(&entries, true)
            .iter()
            .map(|m| (m.mount_point.as_str(), m.fs_type.as_str()))
            .collect();
        assert_eq!(all, [("/", "ext4"), ("/mnt/nfs/test", "nfs4")]);
    }

    #[test]
    fn vm_mounts_are_just_the_root_disk() {
        let entries = parse_mountinfo(&fixture_text("vm-2core", "proc/self/mountinfo"));
        let chosen: Vec<(&str, &str)> = select_mounts(&entries, false)
            .iter()
            .map(|m| (m.mount_point.as_str(), m.fs_type.as_str()))
            .collect();
        assert_eq!(chosen, [("/", "ext4")]);
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape_mount_path(r"/x\9"), r"/x\9");
        assert_eq!(unescape_mount_path(r"/x\"), r"/x\");
        assert_eq!(unescape_mount_path("/é\\04"), "/é\\04");
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

    #[test]
    fn first_sample_has_counters_but_no_rates() {
        let (first, _) = vm_two_samples();
        assert_eq!(first.at, "1970-01-01T00:00:00Z");
        let devices: Vec<&str> = first.disks.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(devices, ["vda"], "loop and zram are left out");
        assert!(first.disks[0].read_bytes_per_s.is_none());
        let ifs: Vec<&str> = first.network.iter().map(|n| n.interface.as_str()).collect();
        assert_eq!(ifs, ["ifb0", "ifb1", "eth0"]);
        assert!(first.network.iter().all(|n| n.rx_bytes_per_s.is_none()));
        let json = serde_json::to_value(&first).unwrap();
        assert!(json.get("cpu").is_none());
        assert!(json["disks"][0].get("read_bytes_per_s").is_none());
        assert_eq!(json["network"][2]["rx_errors"], 0);
        assert!(json["network"][2].get("rx_bytes_per_s").is_none());
        assert_eq!(json["load"]["one"], 0.13);
        assert_eq!(json["processes"]["total"], 128);
        assert_eq!(json["processes"]["running"], 2);
        assert_eq!(json["uptime_s"], 5570.52);
        assert_eq!(json["memory"]["total_bytes"], 24_683_656u64 * 1024);
        // The fixture's "/" is the fixture directory itself, so it can be probed.
        let mounts: Vec<&str> = first.filesystems.iter().map(|f| f.mount.as_str()).collect();
        assert_eq!(mounts, ["/"]);
    }

    #[test]
    fn second_sample_has_disk_and_network_rates() {
        let (_, second) = vm_two_samples();
        let vda = &second.disks[0];
        assert_eq!(vda.read_bytes_per_s, Some(888.0 * 512.0));
        assert_eq!(vda.write_bytes_per_s, Some(32768.0 * 512.0));
        assert_eq!(vda.reads_per_s, Some(25.0));
        assert_eq!(vda.writes_per_s, Some(32.0));
        let eth0 = second
            .network
            .iter()
            .find(|n| n.interface == "eth0")
            .unwrap();
        assert_eq!(eth0.rx_bytes_per_s, Some(0.0));
        assert_eq!(second.processes.as_ref().unwrap().running, 1);
    }

    #[test]
    fn eight_core_host_without_sys_uses_the_name_rule_for_disks() {
        let mut sampler = Sampler::new(fixture("ne-8core"));
        let snap = sampler.sample();
        let devices: Vec<&str> = snap.disks.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(
            devices,
            [
                "sda", "dm-0", "dm-1", "dm-2", "dm-3", "dm-4", "dm-5", "mmcblk0", "fd0", "vda",
                "sr0", "nvme0n1", "sdb", "sdc"
            ]
        );
        assert!(snap.memory.is_none() && snap.load.is_none() && snap.uptime_s.is_none());
        assert_eq!(snap.processes.as_ref().unwrap().running, 2);
        // Same files again: counters unchanged, so the rates are zero.
        let again = sampler.sample();
        assert_eq!(
            again.cpu.as_ref().map(|c| c.per_core_usage_percent.len()),
            None
        );
        assert!(
            again
                .disks
                .iter()
                .all(|d| d.reads_per_s == Some(0.0) || d.reads_per_s.is_none())
        );
    }

    #[test]
    fn counters_going_backwards_give_no_rate() {
        assert_eq!(rate(10, 5, 1.0), None);
        assert_eq!(rate(5, 10, 0.0), None);
        assert_eq!(rate(5, 10, 2.0), Some(2.5));
    }

    #[test]
    fn missing_root_gives_an_empty_snapshot_without_panicking() {
        let mut sampler = Sampler::new("/nonexistent/outpost/root");
        for _ in 0..2 {
            let snap = sampler.sample();
            assert!(snap.cpu.is_none() && snap.memory.is_none() && snap.processes.is_none());
            assert!(
                snap.disks.is_empty() && snap.network.is_empty() && snap.filesystems.is_empty()
            );
            let mut exp = Exposition::new();
            snap.write_prometheus(&mut exp);
            assert_eq!(exp.finish(), "");
        }
    }

    #[test]
    fn garbage_files_do_not_panic() {
        let dir = scratch_dir("garbage");
        let junk =
            "cpu x y\ncpu0\ncpu99999999999 1 2 3 4\n\u{1}\u{2}: : :\n - - - -\nprocs_running -1\n";
        for rel in [
            "proc/stat",
            "proc/meminfo",
            "proc/loadavg",
            "proc/uptime",
            "proc/diskstats",
            "proc/net/dev",
            "proc/self/mountinfo",
        ] {
            write_file(&dir.join(rel), junk);
        }
        let mut sampler = Sampler::new(&dir);
        sampler.sample();
        let snap = sampler.sample();
        assert!(snap.cpu.is_none() && snap.memory.is_none() && snap.load.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temperatures_from_thermal_zones_and_hwmon() {
        // Built here (no capture from a machine with sensors was available),
        // in the layout of a laptop's sysfs.
        let dir = scratch_dir("thermal");
        let t = dir.join("sys/class/thermal");
        write_file(&t.join("thermal_zone0/type"), "acpitz\n");
        write_file(&t.join("thermal_zone0/temp"), "27800\n");
        write_file(&t.join("thermal_zone10/type"), "x86_pkg_temp\n");
        write_file(&t.join("thermal_zone10/temp"), "45000\n");
        write_file(&t.join("thermal_zone2/type"), "acpitz\n");
        write_file(&t.join("thermal_zone2/temp"), "29800\n");
        write_file(&t.join("cooling_device0/type"), "Processor\n");
        let h = dir.join("sys/class/hwmon");
        // The ACPI zone registered as a hwmon chip: same name and reading.
        write_file(&h.join("hwmon0/name"), "acpitz\n");
        write_file(&h.join("hwmon0/temp1_input"), "27800\n");
        write_file(&h.join("hwmon1/name"), "coretemp\n");
        write_file(&h.join("hwmon1/temp1_input"), "46000\n");
        write_file(&h.join("hwmon1/temp1_label"), "Package id 0\n");
        write_file(&h.join("hwmon1/temp2_input"), "44123\n");
        write_file(&h.join("hwmon1/temp2_label"), "Core 0\n");
        write_file(&h.join("hwmon2/name"), "nvme\n");
        write_file(&h.join("hwmon2/temp1_input"), "38850\n");
        write_file(&h.join("hwmon3/name"), "broken\n");
        write_file(&h.join("hwmon3/temp1_input"), "-273150\n");

        let mut sampler = Sampler::new(&dir);
        let snap = sampler.sample();
        let got: Vec<(&str, f64)> = snap
            .temperatures
            .iter()
            .map(|t| (t.sensor.as_str(), t.celsius))
            .collect();
        assert_eq!(
            got,
            [
                ("acpitz", 27.8),
                ("acpitz_2", 29.8),
                ("x86_pkg_temp", 45.0),
                ("coretemp/Package id 0", 46.0),
                ("coretemp/Core 0", 44.12),
                ("nvme", 38.85),
            ]
        );
        let mut exp = Exposition::new();
        snap.write_prometheus(&mut exp);
        let text = exp.finish();
        assert!(
            text.contains("outpost_node_temperature_celsius{sensor=\"coretemp/Core 0\"} 44.12\n")
        );
        promtool_check(&text);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A directory with a tmpfs mounted on it for one test (root only, as the
    /// README's test command runs), unmounted when dropped.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }

    #[test]
    fn a_filesystem_of_more_than_2_32_blocks_is_in_the_snapshot() {
        // 20 TiB of tmpfs is 5.4e9 blocks of 4 KiB: past 2^32, where 32-bit
        // glibc's statvfs fails with EOVERFLOW. tmpfs takes no memory for it.
        let root = scratch_dir("big-fs");
        let mount_point = root.join("big");
        std::fs::create_dir_all(&mount_point).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=20T,mode=0700", "tmpfs"])
            .arg(&mount_point)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} (this test needs root, as the README's test command has): {}",
            mount_point.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let mounted = Mounted(mount_point.clone());
        // tmpfs is a pseudo filesystem, which snapshots leave out, so this
        // root's mountinfo calls it xfs; the statvfs is the real one's.
        write_file(
            &root.join("proc/self/mountinfo"),
            "90 1 0:99 / /big rw,relatime shared:9 - xfs /dev/big rw\n",
        );
        let snap = Sampler::new(&root).sample();
        drop(mounted);
        std::fs::remove_dir_all(&root).unwrap();
        let fs = snap
            .filesystems
            .iter()
            .find(|f| f.mount == "/big")
            .unwrap_or_else(|| panic!("no /big in {:?}", snap.filesystems));
        assert_eq!(fs.total_bytes, 20 << 40);
        assert_eq!(fs.free_bytes, 20 << 40);
        assert_eq!(fs.available_bytes, 20 << 40);
        assert_eq!(fs.usage_percent, 0.0);
    }

    fn fake_probe(path: &Path) -> Option<FsUsage> {
        if path.to_string_lossy().contains("hang") {
            thread::sleep(Duration::from_millis(400));
        }
        Some(FsUsage {
            total: 100,
            free: 40,
            avail: 30,
        })
    }

    #[test]
    fn a_hung_statvfs_is_skipped_until_it_returns() {
        let mut prober = FsProber::new(Duration::from_millis(50), fake_probe);
        let paths: Vec<PathBuf> = ["/a", "/hang", "/b"].iter().map(PathBuf::from).collect();

        let started = Instant::now();
        let first = prober.probe_all(&paths);
        assert!(started.elapsed() < Duration::from_millis(300));
        assert!(first[0].is_some() && first[1].is_none());
        assert_eq!(lock(&prober.stuck).len(), 1);

        // While stuck, the mount is not probed again, so no second thread hangs.
        for _ in 0..3 {
            let again = prober.probe_all(&paths);
            assert!(again[0].is_some() && again[1].is_none() && again[2].is_some());
            assert_eq!(lock(&prober.stuck).len(), 1);
        }

        // Once the stuck call returns, its thread clears the mark and exits.
        thread::sleep(Duration::from_millis(500));
        assert!(lock(&prober.stuck).is_empty());
        let later = prober.probe_all(&paths[..1]);
        assert!(later[0].is_some());
    }

    #[test]
    fn stuck_probes_are_capped() {
        let mut prober = FsProber::new(Duration::from_millis(20), fake_probe);
        let paths: Vec<PathBuf> = (0..10)
            .map(|i| PathBuf::from(format!("/hang{i}")))
            .collect();
        for _ in 0..10 {
            prober.probe_all(&paths);
        }
        assert_eq!(lock(&prober.stuck).len(), MAX_STUCK_PROBES);
    }

    #[test]
    fn fixture_exposition_passes_promtool() {
        let (_, second) = vm_two_samples();
        let mut exp = Exposition::new();
        second.write_prometheus(&mut exp);
        let text = exp.finish();
        assert!(text.contains("outpost_node_cpu_core_usage_percent{core=\"1\"} 46.9\n"));
        assert!(text.contains("outpost_node_memory_total_bytes 25276063744\n"));
        assert!(text.contains("outpost_node_disk_read_bytes_per_second{device=\"vda\"} 454656\n"));
        assert!(text.contains("# TYPE outpost_node_network_receive_errors_total counter\n"));
        assert!(text.contains("outpost_node_load1 0.13\n"));
        assert!(text.contains("outpost_node_cpu_usage_percent 27.88\n"));
        assert!(text.contains("outpost_node_procs 128\n"));
        assert!(text.contains("outpost_node_memory_cached_bytes 514560000\n"));
        promtool_check(&text);
    }

    #[test]
    fn live_machine_gives_plausible_numbers_and_a_small_body() {
        let mut sampler = Sampler::new("/");
        let first = sampler.sample();
        assert!(first.cpu.is_none());
        thread::sleep(Duration::from_millis(250));
        let second = sampler.sample();

        let cpu = second.cpu.as_ref().expect("cpu on the second sample");
        assert!((0.0..=100.0).contains(&cpu.usage_percent));
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(cpu.per_core_usage_percent.len(), cores);
        let mem = second.memory.as_ref().unwrap();
        assert!(mem.total_bytes > 64 << 20 && mem.used_bytes <= mem.total_bytes);
        assert!(second.uptime_s.unwrap() > 0.0);
        assert!(second.processes.as_ref().unwrap().total > 0);
        assert!(
            second
                .filesystems
                .iter()
                .any(|f| f.mount == "/" && f.total_bytes > 0)
        );
        assert!(second.network.iter().all(|n| n.interface != "lo"));
        assert!(second.disks.iter().all(|d| !d.device.starts_with("loop")));
        assert!(second.disks.iter().all(|d| d.read_bytes_per_s.is_some()));

        let json = serde_json::to_string(&second).unwrap();
        println!("{} bytes: {json}", json.len());
        if cores <= 2 {
            assert!(
                json.len() <= 1500,
                "heartbeat metrics are {} bytes",
                json.len()
            );
        }

        let mut exp = Exposition::new();
        second.write_prometheus(&mut exp);
        promtool_check(&exp.finish());
    }

    /// `cargo test --release -- --ignored --nocapture sample_cost`
    #[test]
    #[ignore]
    fn sample_cost() {
        const N: u32 = 1000;
        let files = [
            "/proc/stat",
            "/proc/meminfo",
            "/proc/loadavg",
            "/proc/uptime",
            "/proc/diskstats",
            "/proc/net/dev",
            "/proc/self/mountinfo",
        ];
        let mut buf = String::new();
        let started = Instant::now();
        for _ in 0..N {
            for f in files {
                buf.clear();
                File::open(f).unwrap().read_to_string(&mut buf).unwrap();
            }
        }
        let read = started.elapsed() / N;

        let mut sampler = Sampler::new("/");
        sampler.sample();
        let started = Instant::now();
        for _ in 0..N {
            std::hint::black_box(sampler.sample());
        }
        let sample = started.elapsed() / N;
        println!(
            "mean over {N}: sample() {sample:?}, reading the same files {read:?} ({:.2}x)",
            sample.as_secs_f64() / read.as_secs_f64()
        );
    }
}
