//! Temperature sensors under `/sys/class/thermal` and `/sys/class/hwmon`:
//! finding them (a directory walk, done every few minutes, not per sample)
//! apart from reading them (one small file each, every sample).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::MAX_TEMPERATURES;

#[derive(Debug, Clone)]
pub(super) struct SensorSource {
    pub(super) name: String,
    pub(super) path: PathBuf,
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
