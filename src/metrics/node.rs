//! node_exporter-compatible series (protocol section 7.1), read when
//! `/metrics` is scraped or a push is built.
//!
//! Raw counters need no previous sample, so the cheap files (`stat`,
//! `meminfo`, `loadavg`, `diskstats`, `net/dev`) are read at the moment of
//! the scrape, as node_exporter does: a value is the kernel's at scrape
//! time, whatever the heartbeat interval (a manager that slows heartbeats to
//! a minute must not make Prometheus see steps). What can block or costs a
//! directory walk — `statvfs`, the sensor scan, the /proc/<pid> scan — comes
//! from the metrics thread's latest [`Snapshot`] instead (see `render.rs`).
//! A category that is off is not read here either.

use std::fmt::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use super::categories::{Categories, Category};
use super::parse::{
    StatCounters, net_dev_rows, parse_diskstats_line, parse_load_exact, parse_stat_into,
};
use super::sampler::{DiskFilter, read_into};
use super::wire::Snapshot;
use crate::exposition::{Exposition, Kind};

/// diskstats counts sectors of 512 bytes regardless of the device.
const SECTOR_BYTES: f64 = 512.0;

/// Reads and renders the scrape-time node series; keeps its buffers and
/// disk verdicts from one scrape to the next.
pub struct NodeReader {
    root: PathBuf,
    categories: Categories,
    buf: String,
    name: String,
    label: String,
    stat: StatCounters,
    disk_filter: DiskFilter,
    disks: Vec<(String, [u64; 11])>,
    net: Vec<(String, [u64; 16])>,
    /// `btime` of /proc/stat, read once: it does not change while the
    /// machine runs, and reading /proc/stat for it alone would break "an
    /// off category is not read".
    boot_time: Option<i64>,
    ticks_per_second: f64,
}

impl NodeReader {
    pub fn new(root: impl Into<PathBuf>, categories: Categories) -> NodeReader {
        let root = root.into();
        let mut buf = String::with_capacity(8192);
        let mut stat = StatCounters::default();
        if let Some(text) = read_into(&root, "proc/stat", &mut buf) {
            parse_stat_into(text, &mut stat);
        }
        NodeReader {
            root,
            categories,
            buf,
            name: String::new(),
            label: String::new(),
            boot_time: stat.btime,
            stat,
            disk_filter: DiskFilter::default(),
            disks: Vec::new(),
            net: Vec::new(),
            ticks_per_second: crate::supervisor::ticks_per_second().max(1) as f64,
        }
    }

    pub fn categories(&self) -> Categories {
        self.categories
    }

    /// Writes every node series: fresh reads for the counters, `snapshot`
    /// for filesystems, temperatures and process states, and `wall` as
    /// `node_time_seconds`.
    pub fn write(&mut self, out: &mut Exposition, snapshot: Option<&Snapshot>, wall: SystemTime) {
        use Kind::{Counter, Gauge};
        let categories = self.categories;
        let on = |c| categories.has(c);
        if on(Category::Cpu) || on(Category::Processes) {
            match read_into(&self.root, "proc/stat", &mut self.buf) {
                Some(text) => parse_stat_into(text, &mut self.stat),
                None => parse_stat_into("", &mut self.stat),
            }
        }
        if on(Category::Cpu) {
            self.write_cpu(out);
        }
        if on(Category::Memory) {
            self.write_memory(out);
        }
        if on(Category::Load) {
            if let Some([one, five, fifteen]) =
                read_into(&self.root, "proc/loadavg", &mut self.buf).and_then(parse_load_exact)
            {
                out.single("node_load1", "1m load average.", Gauge, one);
                out.single("node_load5", "5m load average.", Gauge, five);
                out.single("node_load15", "15m load average.", Gauge, fifteen);
            }
        }
        if on(Category::Disks) {
            self.write_disks(out);
        }
        if on(Category::Network) {
            self.write_network(out);
        }
        if on(Category::Processes) {
            let s = &self.stat;
            let rows: [(&str, &str, Kind, Option<u64>); 4] = [
                (
                    "node_procs_running",
                    "Number of processes in runnable state.",
                    Gauge,
                    s.procs_running,
                ),
                (
                    "node_procs_blocked",
                    "Number of processes blocked waiting for I/O to complete.",
                    Gauge,
                    s.procs_blocked,
                ),
                (
                    "node_forks_total",
                    "Total number of forks.",
                    Counter,
                    s.forks,
                ),
                (
                    "node_context_switches_total",
                    "Total number of context switches.",
                    Counter,
                    s.ctxt,
                ),
            ];
            for (name, help, kind, value) in rows {
                if let Some(v) = value {
                    out.single(name, help, kind, v as f64);
                }
            }
        }
        if let Some(snapshot) = snapshot {
            snapshot.write_prometheus(out);
        }
        if let Some(btime) = self.boot_time {
            out.single(
                "node_boot_time_seconds",
                "Node boot time, in unixtime.",
                Gauge,
                btime as f64,
            );
        }
        let now = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        out.single(
            "node_time_seconds",
            "System time in seconds since epoch (1970).",
            Gauge,
            now,
        );
        write_uname(out);
    }

    fn write_cpu(&mut self, out: &mut Exposition) {
        let name = "node_cpu_seconds_total";
        if !self.stat.cores.is_empty() {
            out.family(name, "Seconds the CPUs spent in each mode.", Kind::Counter);
        }
        let hz = self.ticks_per_second;
        for (id, t) in &self.stat.cores {
            self.label.clear();
            let _ = write!(self.label, "{id}");
            let modes = [
                ("idle", t.idle),
                ("iowait", t.iowait),
                ("irq", t.irq),
                ("nice", t.nice),
                ("softirq", t.softirq),
                ("steal", t.steal),
                ("system", t.system),
                ("user", t.user),
            ];
            for (mode, ticks) in modes {
                out.sample(
                    name,
                    &[("cpu", &self.label), ("mode", mode)],
                    ticks as f64 / hz,
                );
            }
        }
        let guest = "node_cpu_guest_seconds_total";
        if !self.stat.cores.is_empty() {
            out.family(
                guest,
                "Seconds the CPUs spent in guests (VMs) for each mode.",
                Kind::Counter,
            );
        }
        for (id, t) in &self.stat.cores {
            self.label.clear();
            let _ = write!(self.label, "{id}");
            for (mode, ticks) in [("nice", t.guest_nice), ("user", t.guest)] {
                out.sample(
                    guest,
                    &[("cpu", &self.label), ("mode", mode)],
                    ticks as f64 / hz,
                );
            }
        }
        if let Some(intr) = self.stat.intr {
            out.single(
                "node_intr_total",
                "Total number of interrupts serviced.",
                Kind::Counter,
                intr as f64,
            );
        }
    }

    /// Every line of /proc/meminfo, named as node_exporter names it:
    /// `Active(anon)` becomes `Active_anon`, and a value in kB is in bytes
    /// with a `_bytes` suffix (`HugePages_Total` has no unit and no suffix).
    fn write_memory(&mut self, out: &mut Exposition) {
        let Some(text) = read_into(&self.root, "proc/meminfo", &mut self.buf) else {
            return;
        };
        let mut help = String::new();
        for line in text.lines() {
            let Some((key, rest)) = line.split_once(':') else {
                continue;
            };
            let mut parts = rest.split_ascii_whitespace();
            let Some(Ok(value)) = parts.next().map(str::parse::<f64>) else {
                continue;
            };
            let kb = parts.next() == Some("kB");
            let name = &mut self.name;
            name.clear();
            name.push_str("node_memory_");
            for c in key.chars() {
                match c {
                    '(' => name.push('_'),
                    ')' => {}
                    c if c.is_ascii_alphanumeric() || c == '_' => name.push(c),
                    _ => name.push('_'),
                }
            }
            if kb {
                name.push_str("_bytes");
            }
            help.clear();
            let _ = write!(
                help,
                "Memory information field {}.",
                &name["node_memory_".len()..]
            );
            let value = if kb { value * 1024.0 } else { value };
            out.single(name, &help, Kind::Gauge, value);
        }
    }

    fn write_disks(&mut self, out: &mut Exposition) {
        self.disks.clear();
        self.disk_filter.start();
        let mut buf = std::mem::take(&mut self.buf);
        if let Some(text) = read_into(&self.root, "proc/diskstats", &mut buf) {
            for line in text.lines() {
                if let Some((name, f)) = parse_diskstats_line(line) {
                    if self.disk_filter.keep(&self.root, name) {
                        self.disks.push((name.to_owned(), f));
                    }
                }
            }
        }
        self.buf = buf;
        self.disk_filter.finish();
        if self.disks.is_empty() {
            return;
        }
        // (name, help, kind, field, scale)
        let families: [(&str, &str, Kind, usize, f64); 11] = [
            (
                "node_disk_reads_completed_total",
                "The total number of reads completed successfully.",
                Kind::Counter,
                0,
                1.0,
            ),
            (
                "node_disk_reads_merged_total",
                "The total number of reads merged.",
                Kind::Counter,
                1,
                1.0,
            ),
            (
                "node_disk_read_bytes_total",
                "The total number of bytes read successfully.",
                Kind::Counter,
                2,
                SECTOR_BYTES,
            ),
            (
                "node_disk_read_time_seconds_total",
                "The total number of seconds spent by all reads.",
                Kind::Counter,
                3,
                0.001,
            ),
            (
                "node_disk_writes_completed_total",
                "The total number of writes completed successfully.",
                Kind::Counter,
                4,
                1.0,
            ),
            (
                "node_disk_writes_merged_total",
                "The number of writes merged.",
                Kind::Counter,
                5,
                1.0,
            ),
            (
                "node_disk_written_bytes_total",
                "The total number of bytes written successfully.",
                Kind::Counter,
                6,
                SECTOR_BYTES,
            ),
            (
                "node_disk_write_time_seconds_total",
                "This is the total number of seconds spent by all writes.",
                Kind::Counter,
                7,
                0.001,
            ),
            (
                "node_disk_io_now",
                "The number of I/Os currently in progress.",
                Kind::Gauge,
                8,
                1.0,
            ),
            (
                "node_disk_io_time_seconds_total",
                "Total seconds spent doing I/Os.",
                Kind::Counter,
                9,
                0.001,
            ),
            (
                "node_disk_io_time_weighted_seconds_total",
                "The weighted # of seconds spent doing I/Os.",
                Kind::Counter,
                10,
                0.001,
            ),
        ];
        for (name, help, kind, field, scale) in families {
            out.family(name, help, kind);
            for (device, f) in &self.disks {
                out.sample(name, &[("device", device)], f[field] as f64 * scale);
            }
        }
    }

    fn write_network(&mut self, out: &mut Exposition) {
        self.net.clear();
        if let Some(text) = read_into(&self.root, "proc/net/dev", &mut self.buf) {
            self.net
                .extend(net_dev_rows(text).map(|(name, f)| (name.to_owned(), f)));
        }
        if self.net.is_empty() {
            return;
        }
        const COLUMNS: [&str; 16] = [
            "node_network_receive_bytes_total",
            "node_network_receive_packets_total",
            "node_network_receive_errs_total",
            "node_network_receive_drop_total",
            "node_network_receive_fifo_total",
            "node_network_receive_frame_total",
            "node_network_receive_compressed_total",
            "node_network_receive_multicast_total",
            "node_network_transmit_bytes_total",
            "node_network_transmit_packets_total",
            "node_network_transmit_errs_total",
            "node_network_transmit_drop_total",
            "node_network_transmit_fifo_total",
            "node_network_transmit_colls_total",
            "node_network_transmit_carrier_total",
            "node_network_transmit_compressed_total",
        ];
        let mut help = String::new();
        for (column, name) in COLUMNS.iter().enumerate() {
            help.clear();
            let what = &name["node_network_".len()..name.len() - "_total".len()];
            let _ = write!(help, "Network device statistic {what}.");
            out.family(name, &help, Kind::Counter);
            for (device, f) in &self.net {
                out.sample(name, &[("device", device)], f[column] as f64);
            }
        }
    }
}

/// `node_uname_info`: the uname(2) fields as labels, value 1.
fn write_uname(out: &mut Exposition) {
    let Ok(u) = nix::sys::utsname::uname() else {
        return;
    };
    let s = |v: &std::ffi::OsStr| v.to_string_lossy().into_owned();
    let (sysname, release, version) = (s(u.sysname()), s(u.release()), s(u.version()));
    let (machine, nodename, domainname) = (s(u.machine()), s(u.nodename()), s(u.domainname()));
    out.family(
        "node_uname_info",
        "Labeled system information as provided by the uname system call.",
        Kind::Gauge,
    )
    .sample(
        "node_uname_info",
        &[
            ("domainname", &domainname),
            ("machine", &machine),
            ("nodename", &nodename),
            ("release", &release),
            ("sysname", &sysname),
            ("version", &version),
        ],
        1.0,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::test_support::{fixture, promtool_check};

    fn render(root: PathBuf, categories: &str) -> String {
        let mut reader = NodeReader::new(root, Categories::parse(categories).unwrap());
        let mut exp = Exposition::new();
        reader.write(&mut exp, None, SystemTime::UNIX_EPOCH);
        exp.finish()
    }

    #[test]
    fn raw_counters_from_the_vm_capture() {
        let text = render(fixture("vm-2core"), "all");
        for line in [
            "node_cpu_seconds_total{cpu=\"1\",mode=\"user\"} ",
            "node_memory_MemTotal_bytes 25276063744\n",
            "node_memory_Active_anon_bytes ",
            "node_memory_HugePages_Total 0\n",
            "node_load1 0.13\n",
            "node_disk_read_bytes_total{device=\"vda\"} ",
            "node_network_receive_bytes_total{device=\"eth0\"} ",
            "node_network_receive_bytes_total{device=\"lo\"} ",
            "node_procs_running 2\n",
            "node_boot_time_seconds 1795395205\n",
            "node_time_seconds 0\n",
            "# TYPE node_context_switches_total counter\n",
            "# TYPE node_forks_total counter\n",
            "node_uname_info{domainname=",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        assert!(!text.contains("zram") && !text.contains("loop0"));
        assert!(!text.contains("_percent") && !text.contains("per_second"));
        // Whole counters, not rates: cpu1 user is 12345 ticks in the capture.
        let stat = std::fs::read_to_string(fixture("vm-2core").join("proc/stat")).unwrap();
        let user_ticks: f64 = stat
            .lines()
            .find(|l| l.starts_with("cpu1 "))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap();
        let want = format!(
            "node_cpu_seconds_total{{cpu=\"1\",mode=\"user\"}} {}\n",
            user_ticks / crate::supervisor::ticks_per_second() as f64
        );
        assert!(text.contains(&want), "{want}");
        promtool_check_allowing_node_memory(&text);
    }

    #[test]
    fn off_categories_write_nothing() {
        let text = render(fixture("vm-2core"), "none");
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            families,
            [
                "node_boot_time_seconds",
                "node_time_seconds",
                "node_uname_info"
            ]
        );
        let text = render(fixture("vm-2core"), "network");
        assert!(text.contains("node_network_") && !text.contains("node_cpu_"));
    }

    /// promtool's only finding on node_exporter's own `node_memory_*`
    /// names is its camelCase lint; node_exporter's output gets the same.
    fn promtool_check_allowing_node_memory(text: &str) {
        let filtered: String = text
            .lines()
            .filter(|l| !l.contains("node_memory_"))
            .map(|l| format!("{l}\n"))
            .collect();
        promtool_check(&filtered);
    }
}
