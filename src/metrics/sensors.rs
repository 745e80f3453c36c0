//! Temperature sensors under `/sys/class/thermal` and `/sys/class/hwmon`:
//! finding them (a directory walk, done every few minutes, not per sample)
//! apart from reading them (one small file each, every sample).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::MAX_TEMPERATURES;
use super::wire::NodeSensor;

#[derive(Debug, Clone)]
pub(super) struct SensorSource {
    /// The heartbeat's `sensor` name (unique among those in the heartbeat).
    pub(super) name: String,
    pub(super) path: PathBuf,
    /// node_exporter's labels for it.
    pub(super) node: NodeSensor,
    /// False for an hwmon input that repeats a thermal zone.
    pub(super) in_heartbeat: bool,
}

/// node_exporter's `cleanMetricName`: lower case, anything but
/// `[a-z0-9:_]` becomes `_`, and `_` trimmed from both ends.
fn clean_name(text: &str) -> String {
    let cleaned: String = text
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == ':' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    cleaned.trim_matches('_').to_owned()
}

/// node_exporter's `chip` label for an hwmon directory, by its rules: the
/// device's bus and name (`platform_coretemp_0`, `pci0000:00_0000:00:18_3`),
/// else the chip's `name` file, else `hwmonN`. Stable across reboots, unlike
/// the hwmon number.
fn hwmon_chip(dir: &Path, n: u64) -> String {
    if let Ok(device) = std::fs::canonicalize(dir.join("device")) {
        let name = device
            .file_name()
            .map(|f| clean_name(&f.to_string_lossy()))
            .unwrap_or_default();
        let bus = device
            .parent()
            .and_then(Path::file_name)
            .map(|f| clean_name(&f.to_string_lossy()))
            .unwrap_or_default();
        if !bus.is_empty() && !name.is_empty() {
            return format!("{bus}_{name}");
        }
        if !name.is_empty() {
            return name;
        }
    }
    if let Some(name) = read_trimmed(&dir.join("name")).map(|n| clean_name(&n)) {
        if !name.is_empty() {
            return name;
        }
    }
    format!("hwmon{n}")
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

pub(super) fn read_millidegrees(path: &Path, buf: &mut String) -> Option<f64> {
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

pub(super) fn scan_sensors(root: &Path) -> Vec<SensorSource> {
    let mut found: Vec<(SensorSource, Option<f64>)> = Vec::new();
    let mut buf = String::new();
    for (z, zone) in numbered_entries(&root.join("sys/class/thermal"), "thermal_zone") {
        let name = read_trimmed(&zone.join("type")).unwrap_or_else(|| "thermal".into());
        let path = zone.join("temp");
        let reading = read_millidegrees(&path, &mut buf);
        let node = NodeSensor::Zone {
            zone: z,
            kind: name.clone(),
        };
        let source = SensorSource {
            name,
            path,
            node,
            in_heartbeat: true,
        };
        found.push((source, reading));
    }
    for (n, chip) in numbered_entries(&root.join("sys/class/hwmon"), "hwmon") {
        let chip_name = read_trimmed(&chip.join("name")).unwrap_or_else(|| format!("hwmon{n}"));
        let node_chip = hwmon_chip(&chip, n);
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
            // Thermal zones register themselves as hwmon chips too: the
            // heartbeat shows such a reading once, node_exporter twice.
            let repeat = found.iter().any(|(s, r)| s.name == name && *r == reading);
            let node = NodeSensor::Hwmon {
                chip: node_chip.clone(),
                chip_name: clean_name(&chip_name),
                sensor: format!("temp{i}"),
            };
            let source = SensorSource {
                name,
                path,
                node,
                in_heartbeat: !repeat,
            };
            found.push((source, reading));
        }
    }
    let mut out: Vec<SensorSource> = Vec::with_capacity(found.len());
    for (mut s, _) in found {
        let taken =
            |out: &[SensorSource], name: &str| out.iter().any(|o| o.in_heartbeat && o.name == name);
        if s.in_heartbeat && taken(&out, &s.name) {
            let base = s.name.clone();
            let mut k = 2;
            while taken(&out, &s.name) {
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
