//! The heartbeat's metrics snapshot as it goes on the wire (protocol
//! section 5): plain data with its serde shape, and nothing that reads
//! /proc. Kept apart so the heartbeat, the renderer and the fuzz target can
//! share the types without pulling in the sampler.

use serde::Serialize;

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
}
