//! The system info object of protocol section 5: sent once in the register
//! body and as the result of a `system_info` task.
//!
//! Like [`crate::metrics`] it reads under a root directory so fixture trees
//! can stand in for a machine; only the hostname fallback and the interface
//! addresses ask the running kernel directly, and only when the root is `/`.
//! Gathering never fails: what cannot be read is left out.
//!
//! Decisions that the protocol leaves open:
//!
//! - `os_name`, `kernel`, `machine_id`, `boot_time` and `cpu_model` are absent
//!   from the JSON when unknown; `gpus[].model` likewise, and an interface's
//!   `mac` when sysfs has none (tunnels).
//! - `os_name` is `PRETTY_NAME` of `etc/os-release` (else
//!   `usr/lib/os-release`), else `NAME` and `VERSION`.
//! - `cpu_model` is `model name` of /proc/cpuinfo; on ARM, which has none,
//!   the core named from `CPU implementer`/`CPU part` (`ARM Cortex-A72`), else
//!   `Hardware` (the SoC), else `Model` (the board).
//! - `cpu_count` is the number of `processor` entries of /proc/cpuinfo (online
//!   CPUs), else the `cpuN` lines of /proc/stat.
//! - `disk_total_bytes` sums `sys/block/*/size` × 512 over physical disks:
//!   loop, ram, zram, device-mapper, md, nbd, optical and floppy devices are
//!   left out because they are virtual or sit on top of disks already counted.
//! - Interfaces are those of `sys/class/net` (plus any only `getifaddrs`
//!   knows), without `lo`, sorted by name; addresses are `ip/prefix` with IPv6
//!   link-local addresses written without their `%scope`.
//! - GPUs are PCI display controllers (class `0x03xxxx`).

use std::path::Path;

use serde::Serialize;

use crate::metrics::{parse_meminfo, parse_stat};

#[derive(Debug, Clone, Default, Serialize)]
pub struct SystemInfo {
    pub hostname: String,
    pub os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    pub arch: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<String>,
    pub cpu_count: u32,
    pub mem_total_bytes: u64,
    pub disk_total_bytes: u64,
    pub interfaces: Vec<Interface>,
    pub gpus: Vec<Gpu>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Interface {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Gpu {
    pub vendor: String,
    pub pci_address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

fn is_live(root: &Path) -> bool {
    root == Path::new("/")
}

/// The machine as the running kernel names it, `uname -m` (`armv7l`,
/// `aarch64`), not the target compiled for (`arm`): managers group fleets by
/// it. The compile-time name only if `uname(2)` fails.
fn machine() -> String {
    nix::sys::utsname::uname()
        .ok()
        .map(|u| u.machine().to_string_lossy().into_owned())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
}

fn read_text(root: &Path, rel: &str) -> Option<String> {
    std::fs::read_to_string(root.join(rel)).ok()
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// The host name: the kernel's (under `root`), else `gethostname(2)` when
/// `root` is `/`, else `localhost` so an agent name always exists.
pub fn hostname(root: &Path) -> String {
    if let Some(name) = read_trimmed(&root.join("proc/sys/kernel/hostname")) {
        return name;
    }
    if is_live(root) {
        if let Ok(name) = nix::unistd::gethostname() {
            let name = name.to_string_lossy().trim().to_owned();
            if !name.is_empty() {
                return name;
            }
        }
    }
    "localhost".to_owned()
}

/// Gathers everything; never fails, never panics.
pub fn gather(root: &Path) -> SystemInfo {
    let stat = read_text(root, "proc/stat").map(|t| parse_stat(&t));
    let cpuinfo = read_text(root, "proc/cpuinfo")
        .map(|t| parse_cpuinfo(&t))
        .unwrap_or_default();
    let cpu_count = match cpuinfo.count {
        0 => stat.as_ref().map_or(0, |s| s.cores.len() as u32),
        n => n,
    };
    let cpu_count = match cpu_count {
        0 if is_live(root) => std::thread::available_parallelism().map_or(0, |n| n.get() as u32),
        n => n,
    };
    SystemInfo {
        hostname: hostname(root),
        os: "linux".to_owned(),
        os_name: read_text(root, "etc/os-release")
            .or_else(|| read_text(root, "usr/lib/os-release"))
            .and_then(|t| os_name(&t)),
        kernel: read_trimmed(&root.join("proc/sys/kernel/osrelease")),
        arch: if is_live(root) {
            machine()
        } else {
            std::env::consts::ARCH.to_owned()
        },
        machine_id: read_trimmed(&root.join("etc/machine-id"))
            .or_else(|| read_trimmed(&root.join("var/lib/dbus/machine-id"))),
        boot_time: stat
            .as_ref()
            .and_then(|s| s.btime)
            .map(crate::clock::rfc3339_from_unix),
        cpu_model: cpuinfo.model,
        cpu_count,
        mem_total_bytes: read_text(root, "proc/meminfo")
            .and_then(|t| parse_meminfo(&t))
            .map_or(0, |m| m.total),
        disk_total_bytes: disk_total_bytes(root),
        interfaces: interfaces(root),
        gpus: gpus(root),
    }
}

/// Value of a `KEY=value` os-release line, undoing shell quoting. Public
/// for the fuzz target only.
#[doc(hidden)]
pub fn unquote(value: &str) -> String {
    let value = value.trim();
    let mut chars = value.chars();
    match chars.next() {
        Some('"') => {
            let mut out = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => {
                        if let Some(n) = chars.next() {
                            if !matches!(n, '"' | '\\' | '$' | '`') {
                                out.push('\\');
                            }
                            out.push(n);
                        }
                    }
                    c => out.push(c),
                }
            }
            out
        }
        Some('\'') => chars.take_while(|c| *c != '\'').collect(),
        _ => value.to_owned(),
    }
}

/// Public for the fuzz target only.
#[doc(hidden)]
pub fn os_name(text: &str) -> Option<String> {
    let mut name = None;
    let mut version = None;
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        let value = unquote(value);
        if value.is_empty() {
            continue;
        }
        match key {
            "PRETTY_NAME" => return Some(value),
            "NAME" => name = Some(value),
            "VERSION" => version = Some(value),
            _ => {}
        }
    }
    match (name, version) {
        (Some(n), Some(v)) => Some(format!("{n} {v}")),
        (n, _) => n,
    }
}

/// Public for the fuzz target only.
#[doc(hidden)]
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CpuInfo {
    pub count: u32,
    pub model: Option<String>,
}

/// Public for the fuzz target only.
#[doc(hidden)]
pub fn arm_core_name(implementer: &str, part: &str) -> Option<&'static str> {
    let implementer = u32::from_str_radix(implementer.trim_start_matches("0x"), 16).ok()?;
    let part = u32::from_str_radix(part.trim_start_matches("0x"), 16).ok()?;
    if implementer != 0x41 {
        return None;
    }
    Some(match part {
        0xd03 => "ARM Cortex-A53",
        0xd04 => "ARM Cortex-A35",
        0xd05 => "ARM Cortex-A55",
        0xd07 => "ARM Cortex-A57",
        0xd08 => "ARM Cortex-A72",
        0xd09 => "ARM Cortex-A73",
        0xd0a => "ARM Cortex-A75",
        0xd0b => "ARM Cortex-A76",
        0xd0c => "ARM Neoverse-N1",
        0xd0d => "ARM Cortex-A77",
        0xd40 => "ARM Neoverse-V1",
        0xd41 => "ARM Cortex-A78",
        0xd44 => "ARM Cortex-X1",
        0xd46 => "ARM Cortex-A510",
        0xd47 => "ARM Cortex-A710",
        0xd48 => "ARM Cortex-X2",
        0xd49 => "ARM Neoverse-N2",
        0xd4f => "ARM Neoverse-V2",
        0xd80 => "ARM Cortex-A520",
        0xd81 => "ARM Cortex-A720",
        _ => return None,
    })
}

/// Public for the fuzz target only.
#[doc(hidden)]
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut count = 0;
    let (mut model_name, mut hardware, mut board) = (None, None, None);
    let (mut implementer, mut part) = (None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        let keep = |slot: &mut Option<String>| {
            if slot.is_none() && !value.is_empty() {
                *slot = Some(value.to_owned());
            }
        };
        match key {
            "processor" if value.parse::<u32>().is_ok() => count += 1,
            "model name" | "cpu model" => keep(&mut model_name),
            "Hardware" => keep(&mut hardware),
            "Model" => keep(&mut board),
            "CPU implementer" => keep(&mut implementer),
            "CPU part" => keep(&mut part),
            _ => {}
        }
    }
    let core = match (&implementer, &part) {
        (Some(i), Some(p)) => arm_core_name(i, p).map(str::to_owned),
        _ => None,
    };
    CpuInfo {
        count,
        model: model_name.or(core).or(hardware).or(board),
    }
}

/// Devices under sys/block that are not physical disks of their own.
/// Public for the fuzz target only.
#[doc(hidden)]
pub fn is_virtual_block(name: &str) -> bool {
    const PREFIXES: &[&str] = &["loop", "ram", "zram", "dm-", "md", "nbd", "sr", "fd"];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

fn disk_total_bytes(root: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(root.join("sys/block")) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| !is_virtual_block(n)))
        .filter_map(|e| read_trimmed(&e.path().join("size"))?.parse::<u64>().ok())
        .fold(0u64, |sum, sectors| {
            sum.saturating_add(sectors.saturating_mul(512))
        })
}

fn prefix_len(netmask: &nix::sys::socket::SockaddrStorage) -> Option<u32> {
    if let Some(v4) = netmask.as_sockaddr_in() {
        return Some(v4.ip().to_bits().count_ones());
    }
    netmask
        .as_sockaddr_in6()
        .map(|v6| v6.ip().to_bits().count_ones())
}

/// (interface, "ip/prefix") pairs of the running kernel.
fn live_addresses() -> Vec<(String, String)> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in addrs {
        let Some(addr) = a.address.as_ref() else {
            continue;
        };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            v4.ip().to_string()
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            v6.ip().to_string()
        } else {
            continue;
        };
        let text = match a.netmask.as_ref().and_then(prefix_len) {
            Some(p) => format!("{ip}/{p}"),
            None => ip,
        };
        out.push((a.interface_name, text));
    }
    out
}

fn interfaces(root: &Path) -> Vec<Interface> {
    let mut list: Vec<Interface> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(root.join("sys/class/net")) {
        for e in rd.filter_map(Result::ok) {
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name == "lo" {
                continue;
            }
            let mac = read_trimmed(&e.path().join("address"));
            list.push(Interface {
                name,
                mac,
                addresses: Vec::new(),
            });
        }
    }
    if is_live(root) {
        for (name, address) in live_addresses() {
            if name == "lo" {
                continue;
            }
            match list.iter_mut().find(|i| i.name == name) {
                Some(i) => i.addresses.push(address),
                None => list.push(Interface {
                    name,
                    mac: None,
                    addresses: vec![address],
                }),
            }
        }
    }
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list
}

/// Public for the fuzz target only.
#[doc(hidden)]
pub fn vendor_name(id: &str) -> String {
    match id.to_ascii_lowercase().as_str() {
        "0x10de" => "nvidia".to_owned(),
        "0x1002" => "amd".to_owned(),
        "0x8086" => "intel".to_owned(),
        other => other.to_owned(),
    }
}

/// `Model:` of the NVIDIA driver's per-GPU information file. Public for the
/// fuzz target only.
#[doc(hidden)]
pub fn nvidia_model(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == "Model")
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn gpus(root: &Path) -> Vec<Gpu> {
    let Ok(rd) = std::fs::read_dir(root.join("sys/bus/pci/devices")) else {
        return Vec::new();
    };
    let mut list: Vec<Gpu> = Vec::new();
    for e in rd.filter_map(Result::ok) {
        let dir = e.path();
        let Some(class) = read_trimmed(&dir.join("class")) else {
            continue;
        };
        if !class.to_ascii_lowercase().starts_with("0x03") {
            continue;
        }
        let Some(address) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let vendor = read_trimmed(&dir.join("vendor"))
            .map_or_else(|| "unknown".to_owned(), |v| vendor_name(&v));
        let model = read_text(
            root,
            &format!("proc/driver/nvidia/gpus/{address}/information"),
        )
        .and_then(|t| nvidia_model(&t))
        .or_else(|| read_trimmed(&dir.join("label")))
        .or_else(|| read_trimmed(&dir.join("product_name")));
        list.push(Gpu {
            vendor,
            pci_address: address,
            model,
        });
    }
    list.sort_by(|a, b| a.pci_address.cmp(&b.pci_address));
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    #[test]
    fn gathers_the_vm_capture() {
        let info = gather(&fixture("vm-2core"));
        assert_eq!(info.hostname, "vm");
        assert_eq!(info.os, "linux");
        assert_eq!(
            info.os_name.as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(info.kernel.as_deref(), Some("6.18.44-fc-v782"));
        assert_eq!(
            info.machine_id.as_deref(),
            Some("3d1219c7c4c5404aaa1f6d2a48adfda4")
        );
        assert_eq!(
            info.boot_time.as_deref(),
            Some(crate::clock::rfc3339_from_unix(1_795_395_205).as_str())
        );
        assert_eq!(info.cpu_model.as_deref(), Some("AMD EPYC"));
        assert_eq!(info.cpu_count, 2);
        assert_eq!(info.mem_total_bytes, 24_683_656 * 1024);
        // vda only: the loop devices and zram0 are not disks.
        assert_eq!(info.disk_total_bytes, 536_870_912 * 512);
        let names: Vec<&str> = info.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth0", "ifb0", "ifb1"]);
        assert_eq!(info.interfaces[0].mac.as_deref(), Some("02:fc:00:00:00:01"));
        assert!(
            info.interfaces[0].addresses.is_empty(),
            "addresses only for the live root"
        );
        assert!(
            info.gpus.is_empty(),
            "no display controller on the VM's PCI bus"
        );
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["arch"], std::env::consts::ARCH);
        assert_eq!(json["cpu_count"], 2);
    }

    #[test]
    fn eight_core_host_counts_cpus_from_proc_stat() {
        let info = gather(&fixture("ne-8core"));
        assert_eq!(info.cpu_count, 8);
        assert_eq!(info.hostname, "localhost");
        assert_eq!(info.boot_time.as_deref(), Some("2014-12-10T03:47:56Z"));
        let json = serde_json::to_value(&info).unwrap();
        for absent in ["os_name", "kernel", "machine_id", "cpu_model"] {
            assert!(json.get(absent).is_none(), "{absent}");
        }
    }

    #[test]
    fn missing_root_does_not_panic() {
        let info = gather(Path::new("/nonexistent/outpost"));
        assert_eq!(info.hostname, "localhost");
        assert_eq!(info.cpu_count, 0);
        assert!(info.interfaces.is_empty());
    }

    #[test]
    fn os_release_quoting() {
        assert_eq!(
            os_name("NAME=\"Alpine Linux\"\nPRETTY_NAME=\"Alpine Linux v3.19\"\n").as_deref(),
            Some("Alpine Linux v3.19")
        );
        assert_eq!(
            os_name("PRETTY_NAME='Arch Linux'\n").as_deref(),
            Some("Arch Linux")
        );
        assert_eq!(os_name("PRETTY_NAME=Gentoo\n").as_deref(), Some("Gentoo"));
        assert_eq!(
            os_name("PRETTY_NAME=\"say \\\"hi\\\" \\$x\"\n").as_deref(),
            Some("say \"hi\" $x")
        );
        assert_eq!(
            os_name("NAME=\"Foo\"\nVERSION=\"1 (x)\"\n").as_deref(),
            Some("Foo 1 (x)")
        );
        assert_eq!(os_name("# nothing\n=\n"), None);
    }

    #[test]
    fn cpuinfo_model_fallbacks() {
        let x86 =
            parse_cpuinfo(&std::fs::read_to_string(fixture("vm-2core/proc/cpuinfo")).unwrap());
        assert_eq!(
            x86,
            CpuInfo {
                count: 2,
                model: Some("AMD EPYC".into())
            }
        );
        // The arm64 layout (per-core blocks without "model name", then board lines).
        let arm = "processor\t: 0\nBogoMIPS\t: 108.00\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: 0xd08\n\n\
                   processor\t: 1\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\n\
                   Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n";
        assert_eq!(
            parse_cpuinfo(arm),
            CpuInfo {
                count: 2,
                model: Some("ARM Cortex-A72".into())
            }
        );
        let unknown_core =
            "processor\t: 0\nCPU implementer\t: 0x51\nCPU part\t: 0x001\nHardware\t: Qualcomm\n";
        assert_eq!(
            parse_cpuinfo(unknown_core).model.as_deref(),
            Some("Qualcomm")
        );
        assert_eq!(parse_cpuinfo("").count, 0);
    }

    #[test]
    fn gpus_from_pci_display_controllers() {
        // Built here in the sysfs layout; the VM has no GPU to capture.
        let dir = std::env::temp_dir().join(format!("outpost-sysinfo-gpu-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let write = |rel: &str, text: &str| {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        let pci = "sys/bus/pci/devices";
        write(&format!("{pci}/0000:00:02.0/class"), "0x030000\n");
        write(&format!("{pci}/0000:00:02.0/vendor"), "0x8086\n");
        write(&format!("{pci}/0000:00:02.0/label"), "Onboard - Video\n");
        write(&format!("{pci}/0000:01:00.0/class"), "0x030200\n");
        write(&format!("{pci}/0000:01:00.0/vendor"), "0x10de\n");
        write(
            "proc/driver/nvidia/gpus/0000:01:00.0/information",
            "Model: \t\t NVIDIA A100-SXM4-40GB\nIRQ:   \t\t 166\n",
        );
        write(&format!("{pci}/0000:02:00.0/class"), "0x030000\n");
        write(&format!("{pci}/0000:02:00.0/vendor"), "0x1002\n");
        write(&format!("{pci}/0000:02:00.0/product_name"), "\n");
        write(&format!("{pci}/0000:03:00.0/class"), "0x020000\n");
        write(&format!("{pci}/0000:03:00.0/vendor"), "0x15b3\n");
        write(&format!("{pci}/0000:04:00.0/class"), "0x038000\n");
        write(&format!("{pci}/0000:04:00.0/vendor"), "0x1af4\n");
        let got: Vec<(String, String, Option<String>)> = gpus(&dir)
            .into_iter()
            .map(|g| (g.vendor, g.pci_address, g.model))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "intel".into(),
                    "0000:00:02.0".into(),
                    Some("Onboard - Video".into())
                ),
                (
                    "nvidia".into(),
                    "0000:01:00.0".into(),
                    Some("NVIDIA A100-SXM4-40GB".into())
                ),
                ("amd".into(), "0000:02:00.0".into(), None),
                ("0x1af4".into(), "0000:04:00.0".into(), None),
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn live_machine() {
        let info = gather(Path::new("/"));
        assert!(!info.hostname.is_empty());
        assert_eq!(hostname(Path::new("/")), info.hostname);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        assert_eq!(info.cpu_count, cores);
        assert!(info.mem_total_bytes > 0 && info.boot_time.is_some());
        assert!(info.interfaces.iter().all(|i| i.name != "lo"));
        let with_addr = info.interfaces.iter().flat_map(|i| &i.addresses).next();
        if let Some(a) = with_addr {
            let (ip, prefix) = a.rsplit_once('/').unwrap();
            assert!(ip.parse::<std::net::IpAddr>().is_ok(), "{a}");
            assert!(prefix.parse::<u8>().unwrap() <= 128, "{a}");
        }
        println!("{}", serde_json::to_string(&info).unwrap());
    }

    #[test]
    fn live_arch_is_the_kernels_machine_not_the_compile_target() {
        let arch = gather(Path::new("/")).arch;
        match std::env::consts::ARCH {
            // A 32-bit ARM build reports armv7l, armv8l (or aarch64 on a
            // 64-bit kernel), never the target's "arm".
            "arm" => assert!(
                arch == "aarch64" || (arch.starts_with("armv") && arch.len() > 4),
                "{arch}"
            ),
            "x86" => assert!(arch.starts_with('i') && arch.ends_with("86"), "{arch}"),
            target => assert_eq!(arch, target),
        }
        let uname = nix::sys::utsname::uname().unwrap();
        assert_eq!(arch, uname.machine().to_string_lossy());
    }
}
