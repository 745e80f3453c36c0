//! The heartbeat's metrics snapshot as it goes on the wire (protocol
//! section 5): plain data with its serde shape, and nothing that reads
//! /proc. Kept apart so the heartbeat, the renderer and the fuzz target can
//! share the types without pulling in the sampler.

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use super::categories::{Categories, Category};

#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub at: String,
    /// The categories this snapshot was taken with (the operator's set);
    /// an off category's part is empty and never serialised.
    #[serde(skip)]
    pub collected: Categories,
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
    /// The mount source (`/dev/vda1`): node_exporter's `device` label.
    #[serde(skip)]
    pub device: String,
    #[serde(skip)]
    pub files: u64,
    #[serde(skip)]
    pub files_free: u64,
    #[serde(skip)]
    pub readonly: bool,
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
    /// Processes (not threads), from the /proc/<pid> scan.
    pub total: u64,
    /// `procs_running`/`procs_blocked` of /proc/stat: the kernel counts
    /// threads here, as node_exporter's `node_procs_*` do.
    pub running: u64,
    pub blocked: u64,
    pub threads: u64,
    pub by_state: ProcStates,
    /// Processes by the raw state letter of /proc/<pid>/stat, sorted, for
    /// node_exporter's `node_processes_state{state}`.
    #[serde(skip)]
    pub letters: Vec<(char, u64)>,
}

/// Section 5's `by_state`: processes by the state letter of
/// /proc/<pid>/stat. Letters outside these (X dead, W, P, K on old kernels)
/// count in `total` only.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ProcStates {
    pub running: u64,
    pub sleeping: u64,
    pub disk_sleep: u64,
    pub stopped: u64,
    pub zombie: u64,
    pub idle: u64,
}

impl ProcStates {
    /// Counts one process in state `letter`.
    pub fn count(&mut self, letter: char) {
        match letter {
            'R' => self.running += 1,
            'S' => self.sleeping += 1,
            'D' => self.disk_sleep += 1,
            'T' | 't' => self.stopped += 1,
            'Z' => self.zombie += 1,
            'I' => self.idle += 1,
            _ => {}
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Temperature {
    pub sensor: String,
    pub celsius: f64,
    /// The reading unrounded, as node_exporter shows it.
    #[serde(skip)]
    pub raw_celsius: f64,
    /// Where node_exporter would put this reading: its labels on `/metrics`.
    #[serde(skip)]
    pub node: Option<NodeSensor>,
    /// False for an hwmon input that repeats a thermal zone: node_exporter
    /// shows both, the heartbeat only one.
    #[serde(skip)]
    pub in_heartbeat: bool,
}

/// node_exporter's labels for one temperature reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeSensor {
    /// `node_thermal_zone_temp{type,zone}`.
    Zone { zone: u64, kind: String },
    /// `node_hwmon_temp_celsius{chip,sensor}`; `chip_name` (the chip's
    /// `name` file) goes into `node_hwmon_chip_names{chip,chip_name}`, which
    /// dashboards join on.
    Hwmon {
        chip: String,
        chip_name: String,
        sensor: String,
    },
}

impl Snapshot {
    /// The heartbeat's `metrics` object: `at`, `uptime_s`, and of the parts
    /// this snapshot holds only those in `wanted` (the manager's choice
    /// within the operator's, sections 3.2 and 5).
    pub fn for_heartbeat(&self, wanted: Categories) -> HeartbeatMetrics<'_> {
        HeartbeatMetrics {
            snap: self,
            wanted: wanted.intersect(self.collected),
        }
    }
}

/// A snapshot as one heartbeat carries it; see [`Snapshot::for_heartbeat`].
pub struct HeartbeatMetrics<'a> {
    snap: &'a Snapshot,
    wanted: Categories,
}

impl Serialize for HeartbeatMetrics<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let s = self.snap;
        let on = |c| self.wanted.has(c);
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("at", &s.at)?;
        if let (true, Some(cpu)) = (on(Category::Cpu), &s.cpu) {
            map.serialize_entry("cpu", cpu)?;
        }
        if let (true, Some(m)) = (on(Category::Memory), &s.memory) {
            map.serialize_entry("memory", m)?;
        }
        if let (true, Some(l)) = (on(Category::Load), &s.load) {
            map.serialize_entry("load", l)?;
        }
        if on(Category::Filesystems) {
            map.serialize_entry("filesystems", &s.filesystems)?;
        }
        if on(Category::Disks) {
            map.serialize_entry("disks", &s.disks)?;
        }
        if on(Category::Network) {
            map.serialize_entry("network", &s.network)?;
        }
        if let (true, Some(p)) = (on(Category::Processes), &s.processes) {
            map.serialize_entry("processes", p)?;
        }
        if on(Category::Temperatures) {
            let shown: Vec<&Temperature> =
                s.temperatures.iter().filter(|t| t.in_heartbeat).collect();
            map.serialize_entry("temperatures", &shown)?;
        }
        if let Some(up) = s.uptime_s {
            map.serialize_entry("uptime_s", &up)?;
        }
        map.end()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round2_rounds_and_tames_non_finite_values() {
        assert_eq!(round2(27.876_106), 27.88);
        assert_eq!(round2(0.125_f32 as f64), 0.13);
        assert_eq!(round2(f64::NAN), 0.0);
        assert_eq!(round2(f64::INFINITY), 0.0);
    }

    #[test]
    fn a_heartbeat_carries_only_the_wanted_categories_it_collected() {
        let snap = Snapshot {
            at: "t".into(),
            collected: Categories::parse("cpu,memory,disks").unwrap(),
            cpu: Some(Cpu::default()),
            memory: Some(Memory::default()),
            load: Some(Load::default()),
            uptime_s: Some(1.5),
            ..Snapshot::default()
        };
        let json = |wanted: &str| {
            let v = serde_json::to_value(snap.for_heartbeat(Categories::parse(wanted).unwrap()));
            let v = v.unwrap();
            let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            keys.join(",")
        };
        assert_eq!(json("all"), "at,cpu,disks,memory,uptime_s");
        assert_eq!(json("memory,network,load"), "at,memory,uptime_s");
        assert_eq!(json("none"), "at,uptime_s");
    }
}
