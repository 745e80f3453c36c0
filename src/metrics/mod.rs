//! Node metrics: the snapshot of protocol section 5 that heartbeats carry
//! (rates and percentages over the interval), and the node_exporter-
//! compatible series of section 7.1 that `/metrics` and Pushgateway pushes
//! expose (raw counters, never rates or percentages).
//!
//! This module is the front door: the types and functions the rest of the
//! agent (heartbeat, telemetry, sysinfo, the metrics thread, config) and the
//! fuzz targets use are re-exported here, so the files below can be reshaped
//! without touching them. `categories` holds the category names and sets,
//! `wire` the snapshot types and the heartbeat's view of them, `parse` the
//! /proc text parsers, `filesystems` the mount selection and statvfs prober,
//! `sensors` the temperature sources, `sampler` the I/O and state between
//! samples (the metrics thread's), `node` the series read at scrape time,
//! `render` the series taken from the snapshot.
//!
//! Everything comes from text under a root directory (`/` in production, a
//! fixture tree in tests), so every parser here is a pure function over the
//! file's text and the [`Sampler`] only adds I/O and the previous-sample state
//! that rates and CPU percentages need.
//!
//! A category that `OUTPOST_METRICS` turns off is read neither by the
//! sampler nor at scrape time. A file two categories share (`/proc/stat`:
//! cpu and processes) is read when either is on. `node_boot_time_seconds`
//! (always shown) comes from one read of `/proc/stat` at start.
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
//! - **Processes.** `running`/`blocked` are `procs_running`/`procs_blocked`
//!   of `/proc/stat` (the kernel counts runnable and blocked *threads*, as
//!   node_exporter's `node_procs_running` does); `total`, `threads` and
//!   `by_state` come from one read of every `/proc/<pid>/stat` by the
//!   metrics thread: processes, the sum of their `num_threads`, and
//!   processes by state letter. A process that ends between the directory
//!   listing and its read is not counted.
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
//! - **Network.** From `/proc/net/dev`, all interfaces but `lo` and those
//!   administratively down (`IFF_UP` clear in `/sys/class/net/<if>/flags`:
//!   they carry nothing, and idle `ifb` devices were a fifth of a heartbeat);
//!   `/metrics` shows them all, as node_exporter does. Error and drop
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
//! `procfs` parses `/proc/loadavg` and `/proc/uptime` for the heartbeat.
//! `/proc/stat`, `/proc/meminfo`, `/proc/net/dev` and `/proc/diskstats`
//! lines have small parsers
//! here: procfs's `KernelStats` drops the `cpuN` numbers (so an unplugged core
//! would shift the others) and fails without `ctxt`/`processes`; its `Meminfo`
//! fails when any of some forty fields is missing (gVisor and some container
//! runtimes serve a shorter file); its `/proc/net/dev` parser splits on
//! whitespace, so a line like `eth0:68210035552 …` (no space once a counter
//! fills its column) loses the whole table.

mod categories;
mod filesystems;
mod node;
mod parse;
mod render;
mod sampler;
mod sensors;
#[cfg(test)]
mod test_support;
mod wire;

pub use categories::{Categories, Category};
pub use filesystems::{
    MAX_STUCK_PROBES, MountEntry, is_pseudo_fs, is_remote_fs, parse_mountinfo, select_mounts,
};
pub use node::NodeReader;
pub use parse::{
    CpuTicks, MemCounters, NetCounters, StatCounters, build_cpu, build_memory, is_virtual_disk,
    looks_like_partition, parse_diskstats_line, parse_load_exact, parse_loadavg, parse_meminfo,
    parse_net_dev_into, parse_pid_stat, parse_stat, parse_stat_into, parse_uptime,
};
pub use sampler::Sampler;
pub use wire::{
    Cpu, Disk, Filesystem, HeartbeatMetrics, Load, Memory, NetInterface, NodeSensor, ProcStates,
    Processes, Snapshot, Temperature, round2,
};

/// Filesystems reported at most (a bound on memory and body size).
pub const MAX_FILESYSTEMS: usize = 64;
/// Temperature sensors reported at most.
pub const MAX_TEMPERATURES: usize = 64;
