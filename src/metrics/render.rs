//! The snapshot's part of the node series on `/metrics` and the
//! Pushgateway: what the metrics thread measured because it can block or
//! walks directories (filesystems by `statvfs`, temperatures, processes by
//! state). Rendering only: it reads a finished [`Snapshot`] and never
//! touches /proc. The counters read at scrape time are in `node.rs`.

use super::wire::{NodeSensor, Snapshot};
use crate::exposition::{Exposition, Kind};

impl Snapshot {
    /// Writes the snapshot's node series under node_exporter's names and
    /// labels; an empty part writes no family.
    pub fn write_prometheus(&self, out: &mut Exposition) {
        use Kind::Gauge;
        if !self.filesystems.is_empty() {
            type FsField = fn(&super::Filesystem) -> f64;
            let fams: [(&str, &str, FsField); 6] = [
                (
                    "node_filesystem_size_bytes",
                    "Filesystem size in bytes.",
                    |f| f.total_bytes as f64,
                ),
                (
                    "node_filesystem_free_bytes",
                    "Filesystem free space in bytes.",
                    |f| f.free_bytes as f64,
                ),
                (
                    "node_filesystem_avail_bytes",
                    "Filesystem space available to non-root users in bytes.",
                    |f| f.available_bytes as f64,
                ),
                (
                    "node_filesystem_files",
                    "Filesystem total file nodes.",
                    |f| f.files as f64,
                ),
                (
                    "node_filesystem_files_free",
                    "Filesystem total free file nodes.",
                    |f| f.files_free as f64,
                ),
                (
                    "node_filesystem_readonly",
                    "Filesystem read-only status.",
                    |f| if f.readonly { 1.0 } else { 0.0 },
                ),
            ];
            for (name, help, get) in fams {
                out.family(name, help, Gauge);
                for f in &self.filesystems {
                    out.sample(
                        name,
                        &[
                            ("device", &f.device),
                            ("fstype", &f.fs_type),
                            ("mountpoint", &f.mount),
                        ],
                        get(f),
                    );
                }
            }
        }
        let hwmon = "node_hwmon_temp_celsius";
        let mut started = false;
        for t in &self.temperatures {
            if let Some(NodeSensor::Hwmon { chip, sensor, .. }) = &t.node {
                if !started {
                    out.family(hwmon, "Hardware monitor for temperature (input)", Gauge);
                    started = true;
                }
                out.sample(hwmon, &[("chip", chip), ("sensor", sensor)], t.raw_celsius);
            }
        }
        // One `node_hwmon_chip_names` per chip, in first-seen order.
        let names = "node_hwmon_chip_names";
        let mut chips: Vec<(&str, &str)> = Vec::new();
        for t in &self.temperatures {
            if let Some(NodeSensor::Hwmon {
                chip, chip_name, ..
            }) = &t.node
            {
                if !chips.iter().any(|(c, _)| c == chip) {
                    chips.push((chip, chip_name));
                }
            }
        }
        if !chips.is_empty() {
            out.family(
                names,
                "Annotation metric for human-readable chip names",
                Gauge,
            );
            for (chip, chip_name) in chips {
                out.sample(names, &[("chip", chip), ("chip_name", chip_name)], 1.0);
            }
        }
        let zone_name = "node_thermal_zone_temp";
        let mut started = false;
        for t in &self.temperatures {
            if let Some(NodeSensor::Zone { zone, kind }) = &t.node {
                if !started {
                    out.family(zone_name, "Zone temperature in Celsius", Gauge);
                    started = true;
                }
                let zone = zone.to_string();
                out.sample(zone_name, &[("type", kind), ("zone", &zone)], t.raw_celsius);
            }
        }
        if let Some(p) = &self.processes {
            if !p.letters.is_empty() {
                let name = "node_processes_state";
                out.family(name, "Number of processes in each state.", Gauge);
                let mut letter = [0u8; 4];
                for (state, count) in &p.letters {
                    out.sample(
                        name,
                        &[("state", state.encode_utf8(&mut letter))],
                        *count as f64,
                    );
                }
            }
            out.single(
                "node_processes_pids",
                "Number of PIDs",
                Gauge,
                p.total as f64,
            );
            out.single(
                "node_processes_threads",
                "Allocated threads in system",
                Gauge,
                p.threads as f64,
            );
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
        assert!(text.contains("# TYPE node_filesystem_size_bytes gauge\n"));
        assert!(text.contains("node_filesystem_readonly{device=\""));
        assert!(text.contains(",fstype=\"ext4\",mountpoint=\"/\"} 0\n"));
        // No rates or percentages: the heartbeat keeps those.
        assert!(!text.contains("_percent") && !text.contains("per_second"));
        promtool_check(&text);
    }
}
