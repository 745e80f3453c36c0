//! The [`Sampler`]: the I/O around the parsers, and the state one sample
//! keeps for the next (previous counters for rates and CPU shares, the disk
//! verdicts, the sensor list, the statvfs prober). The metrics thread owns
//! one; nothing on the heartbeat path ever calls it.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use super::categories::{Categories, Category};
use super::filesystems::{FsProber, PROBE_TIMEOUT, parse_mountinfo, select_mounts, statvfs_usage};
use super::parse::{
    NetCounters, StatCounters, build_cpu, build_memory, is_virtual_disk, looks_like_partition,
    parse_diskstats_line, parse_loadavg, parse_meminfo, parse_net_dev_into, parse_pid_stat,
    parse_stat_into, parse_uptime,
};
use super::sensors::{SensorSource, read_millidegrees, scan_sensors};
use super::wire::{
    Disk, Filesystem, NetInterface, ProcStates, Processes, Snapshot, Temperature, round2,
};

/// How often the set of temperature sensors is looked for again.
const SENSOR_RESCAN: std::time::Duration = std::time::Duration::from_secs(300);
/// diskstats counts sectors of 512 bytes regardless of the device.
const SECTOR_BYTES: f64 = 512.0;

/// The diskstats counters the snapshot uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct DiskCounters {
    name: String,
    reads: u64,
    sectors_read: u64,
    writes: u64,
    sectors_written: u64,
}

/// Takes snapshots; keeps what the next snapshot's rates need.
pub struct Sampler {
    pub(super) root: PathBuf,
    buf: String,
    prev_stat: StatCounters,
    cur_stat: StatCounters,
    prev_disks: Vec<DiskCounters>,
    cur_disks: Vec<DiskCounters>,
    disk_filter: DiskFilter,
    prev_net: Vec<NetCounters>,
    cur_net: Vec<NetCounters>,
    prev_at: Option<Instant>,
    include_remote: bool,
    prober: FsProber,
    sensors: Vec<SensorSource>,
    sensors_scanned: Option<Instant>,
    categories: Categories,
}

/// Which diskstats devices count: whole disks and device-mapper/md
/// devices, not partitions, loop, ram or zram. Remembers its verdicts by
/// line, so /sys is asked only when the device list changes.
#[derive(Default)]
pub(super) struct DiskFilter {
    /// (name, keep?) per diskstats line.
    verdicts: Vec<(String, bool)>,
    lines: usize,
}

impl DiskFilter {
    /// Call before the first line of a new read of diskstats.
    pub(super) fn start(&mut self) {
        self.lines = 0;
    }

    /// The verdict for the next line's device.
    pub(super) fn keep(&mut self, root: &Path, name: &str) -> bool {
        let index = self.lines;
        self.lines += 1;
        if let Some((n, keep)) = self.verdicts.get(index) {
            if n == name {
                return *keep;
            }
        }
        let keep = !is_virtual_disk(name) && {
            let sys_block = root.join("sys/block");
            if sys_block.is_dir() {
                // /sys/block spells a '/' in a device name as '!'.
                sys_block.join(name.replace('/', "!")).exists()
            } else {
                !looks_like_partition(name)
            }
        };
        if index < self.verdicts.len() {
            self.verdicts[index] = (name.to_owned(), keep);
        } else {
            self.verdicts.push((name.to_owned(), keep));
        }
        keep
    }

    /// Call after the last line: forgets devices that went away.
    pub(super) fn finish(&mut self) {
        self.verdicts.truncate(self.lines);
    }
}

/// Reads `root/rel` into `buf`; `None` if missing or unreadable.
pub(super) fn read_into<'a>(root: &Path, rel: &str, buf: &'a mut String) -> Option<&'a str> {
    buf.clear();
    File::open(root.join(rel)).ok()?.read_to_string(buf).ok()?;
    Some(buf.as_str())
}

/// `IFF_UP` of `/sys/class/net/<name>/flags`; an interface whose flags
/// cannot be read (no /sys, an alias such as `eth0:1`) counts as up.
fn interface_is_up(root: &Path, name: &str, buf: &mut String) -> bool {
    if name.contains('/') || name.contains("..") {
        return true;
    }
    let rel = format!("sys/class/net/{name}/flags");
    read_into(root, &rel, buf)
        .and_then(|t| u32::from_str_radix(t.trim().trim_start_matches("0x"), 16).ok())
        .is_none_or(|flags| flags & 1 != 0)
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
            disk_filter: DiskFilter::default(),
            prev_net: Vec::new(),
            cur_net: Vec::new(),
            prev_at: None,
            include_remote: false,
            prober: FsProber::new(PROBE_TIMEOUT, statvfs_usage),
            sensors: Vec::new(),
            sensors_scanned: None,
            categories: Categories::ALL,
        }
    }

    /// What to collect at all (`OUTPOST_METRICS`): a category that is off
    /// is not read, and its part of the snapshot stays empty.
    pub fn set_categories(&mut self, categories: Categories) {
        self.categories = categories;
    }

    /// Also report network and FUSE filesystems (off by default: a hung
    /// server can make each of their probes cost the full timeout once).
    pub fn set_remote_filesystems(&mut self, include: bool) {
        self.include_remote = include;
    }

    pub fn sample(&mut self) -> Snapshot {
        self.sample_at(Instant::now(), SystemTime::now())
    }

    pub(super) fn sample_at(&mut self, now: Instant, wall: SystemTime) -> Snapshot {
        let secs = self
            .prev_at
            .map(|p| now.saturating_duration_since(p).as_secs_f64());
        let mut snap = Snapshot {
            at: crate::clock::rfc3339(wall),
            ..Snapshot::default()
        };

        let categories = self.categories;
        let on = |c| categories.has(c);
        snap.collected = self.categories;

        // /proc/stat: CPU shares, and the kernel's runnable/blocked counts.
        if on(Category::Cpu) || on(Category::Processes) {
            let have_prev_stat = self.prev_stat.total.is_some();
            match read_into(&self.root, "proc/stat", &mut self.buf) {
                Some(text) => parse_stat_into(text, &mut self.cur_stat),
                None => parse_stat_into("", &mut self.cur_stat),
            }
            if have_prev_stat && on(Category::Cpu) {
                snap.cpu = build_cpu(&self.prev_stat, &self.cur_stat);
            }
            std::mem::swap(&mut self.prev_stat, &mut self.cur_stat);
        }

        if on(Category::Memory) {
            snap.memory = read_into(&self.root, "proc/meminfo", &mut self.buf)
                .and_then(parse_meminfo)
                .map(|m| build_memory(&m));
        }
        if on(Category::Load) {
            snap.load = read_into(&self.root, "proc/loadavg", &mut self.buf)
                .and_then(parse_loadavg)
                .map(|(load, _)| load);
        }
        if on(Category::Processes) {
            snap.processes = self.scan_processes();
        }

        snap.uptime_s = read_into(&self.root, "proc/uptime", &mut self.buf).and_then(parse_uptime);

        if on(Category::Disks) {
            self.sample_disks(secs, &mut snap);
        }
        if on(Category::Network) {
            self.sample_network(secs, &mut snap);
        }
        if on(Category::Filesystems) {
            self.sample_filesystems(&mut snap);
        }
        if on(Category::Temperatures) {
            self.sample_temperatures(now, &mut snap);
        }

        self.prev_at = Some(now);
        snap
    }

    /// Processes by state: one read of /proc/<pid>/stat per process. The
    /// metrics thread's job alone: it costs a few hundred small reads, which
    /// the heartbeat and scrapes must never wait for.
    fn scan_processes(&mut self) -> Option<Processes> {
        let proc_dir = self.root.join("proc");
        let entries = std::fs::read_dir(&proc_dir).ok()?;
        let mut p = Processes {
            running: self.prev_stat.procs_running.unwrap_or(0),
            blocked: self.prev_stat.procs_blocked.unwrap_or(0),
            by_state: ProcStates::default(),
            ..Processes::default()
        };
        let mut path = proc_dir;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            path.push(pid);
            path.push("stat");
            self.buf.clear();
            // A process that ended since the directory was listed is skipped.
            let read = File::open(&path).and_then(|mut f| f.read_to_string(&mut self.buf));
            path.pop();
            path.pop();
            let Some((state, threads)) = read.ok().and_then(|_| parse_pid_stat(&self.buf)) else {
                continue;
            };
            p.total += 1;
            p.threads += threads;
            p.by_state.count(state);
            match p.letters.iter_mut().find(|(l, _)| *l == state) {
                Some((_, n)) => *n += 1,
                None => p.letters.push((state, 1)),
            }
        }
        p.letters.sort_unstable();
        Some(p)
    }

    fn sample_disks(&mut self, secs: Option<f64>, snap: &mut Snapshot) {
        self.cur_disks.clear();
        let mut buf = std::mem::take(&mut self.buf);
        self.disk_filter.start();
        if let Some(text) = read_into(&self.root, "proc/diskstats", &mut buf) {
            for line in text.lines() {
                let Some((name, f)) = parse_diskstats_line(line) else {
                    continue;
                };
                if self.disk_filter.keep(&self.root, name) {
                    self.cur_disks.push(DiskCounters {
                        name: name.to_owned(),
                        reads: f[0],
                        sectors_read: f[2],
                        writes: f[4],
                        sectors_written: f[6],
                    });
                }
            }
        }
        self.buf = buf;
        self.disk_filter.finish();
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
        // An interface that is administratively down carries nothing; the
        // heartbeat leaves it out (`/metrics` keeps it, as node_exporter).
        let root = &self.root;
        let buf = &mut self.buf;
        self.cur_net.retain(|n| interface_is_up(root, &n.name, buf));
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
                device: m.source.clone(),
                files: u.files,
                files_free: u.files_free,
                readonly: m.readonly,
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
                    raw_celsius: c,
                    node: Some(s.node.clone()),
                    in_heartbeat: s.in_heartbeat,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition::Exposition;
    use crate::metrics::Categories;
    use crate::metrics::test_support::{
        fixture, promtool_check, scratch_dir, vm_two_samples, write_file,
    };
    use std::thread;
    use std::time::Duration;

    /// A directory with a tmpfs mounted on it for one test (root only, as the
    /// README's test command runs), unmounted when dropped.
    struct Mounted(std::path::PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }

    #[test]
    fn a_filesystem_of_more_than_2_32_blocks_is_in_the_snapshot() {
        // 20 TiB of tmpfs is 5.4e9 blocks of 4 KiB: past 2^32, where 32-bit
        // glibc's statvfs fails with EOVERFLOW. tmpfs takes no memory for it.
        let root = scratch_dir("big-fs");
        let mount_point = root.join("big");
        std::fs::create_dir_all(&mount_point).unwrap();
        let out = std::process::Command::new("mount")
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
        // The capture has no /proc/<pid> directories to count.
        assert_eq!(json["processes"]["total"], 0);
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
    fn processes_by_state_from_a_fixture_tree() {
        let mut sampler = Sampler::new(fixture("procs"));
        sampler.set_categories(Categories::parse("processes").unwrap());
        let snap = sampler.sample();
        let p = snap.processes.as_ref().expect("processes");
        assert_eq!(
            (p.total, p.threads),
            (7, 23),
            "pid 1 has 14 threads, 303 has 4"
        );
        assert_eq!((p.running, p.blocked), (3, 1), "from /proc/stat");
        assert_eq!(
            p.by_state,
            ProcStates {
                running: 1,
                sleeping: 1,
                disk_sleep: 1,
                stopped: 2,
                zombie: 1,
                idle: 1,
            }
        );
        let json = serde_json::to_value(snap.for_heartbeat(Categories::ALL)).unwrap();
        assert_eq!(json["processes"]["by_state"]["stopped"], 2);
        assert!(json.get("cpu").is_none() && json.get("disks").is_none());
        let mut exp = Exposition::new();
        snap.write_prometheus(&mut exp);
        let text = exp.finish();
        assert!(text.contains("node_processes_state{state=\"t\"} 1\n"));
        assert!(text.contains("node_processes_state{state=\"T\"} 1\n"));
        assert!(text.contains("node_processes_pids 7\n"));
        promtool_check(&text);
    }

    #[test]
    fn an_off_category_is_not_read() {
        // A root where every file is unreadable garbage would still be
        // opened; instead: files that do not exist for off categories give
        // no part, and the parts that are on are there.
        let mut sampler = Sampler::new(fixture("vm-2core"));
        sampler.set_categories(Categories::parse("memory,network").unwrap());
        sampler.sample();
        let snap = sampler.sample();
        assert!(snap.memory.is_some() && !snap.network.is_empty());
        assert!(snap.cpu.is_none() && snap.load.is_none() && snap.processes.is_none());
        assert!(snap.disks.is_empty() && snap.filesystems.is_empty());
        assert!(snap.temperatures.is_empty());
    }

    #[test]
    fn interfaces_that_are_down_are_left_out_of_the_heartbeat() {
        let dir = scratch_dir("ifdown");
        write_file(
            &dir.join("proc/net/dev"),
            &std::fs::read_to_string(fixture("vm-2core").join("proc/net/dev")).unwrap(),
        );
        write_file(&dir.join("sys/class/net/eth0/flags"), "0x1003\n");
        write_file(&dir.join("sys/class/net/ifb0/flags"), "0x82\n");
        // ifb1 has no flags file: kept.
        let mut sampler = Sampler::new(&dir);
        sampler.set_categories(Categories::parse("network").unwrap());
        let snap = sampler.sample();
        let names: Vec<&str> = snap.network.iter().map(|n| n.interface.as_str()).collect();
        assert_eq!(names, ["ifb1", "eth0"]);
        std::fs::remove_dir_all(&dir).unwrap();
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
            .filter(|t| t.in_heartbeat)
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
        // node_exporter's labels: chips by name (no device link here), the
        // zone repeated as hwmon shown twice, as node_exporter does.
        for line in [
            "node_hwmon_temp_celsius{chip=\"coretemp\",sensor=\"temp2\"} 44.123\n",
            "node_hwmon_temp_celsius{chip=\"acpitz\",sensor=\"temp1\"} 27.8\n",
            "node_thermal_zone_temp{type=\"x86_pkg_temp\",zone=\"10\"} 45\n",
            "node_thermal_zone_temp{type=\"acpitz\",zone=\"0\"} 27.8\n",
            "node_hwmon_chip_names{chip=\"coretemp\",chip_name=\"coretemp\"} 1\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        promtool_check(&text);
        std::fs::remove_dir_all(&dir).unwrap();
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
