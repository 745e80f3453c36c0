//! The snapshot as Prometheus series for `/metrics` and the Pushgateway.
//! Rendering only: it reads a finished [`Snapshot`] and never touches /proc,
//! so a scrape costs string formatting and nothing else.

use super::wire::{Disk, Filesystem, NetInterface, Snapshot};
use crate::exposition::{Exposition, Kind};

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
    use crate::exposition::Exposition;
    use crate::metrics::test_support::{promtool_check, vm_two_samples};

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
}
