//! Filesystems: which mounts of `/proc/self/mountinfo` are worth reporting,
//! and the `statvfs` prober that asks their sizes off the sampling thread,
//! so that a hung network or FUSE mount costs the sampler one timeout and
//! never a stalled heartbeat. The `statvfs` call itself is the one small
//! function [`statvfs_usage`], so a platform fix (32-bit field widths) has
//! one place to land.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use super::MAX_FILESYSTEMS;

/// How long one `statvfs` may take before its mount is given up on.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// Stuck prober threads allowed to exist at once; past this no probing.
pub const MAX_STUCK_PROBES: usize = 4;

/// One line of /proc/self/mountinfo, the parts we use. Public for the fuzz
/// target only.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: String,
    pub fs_type: String,
    /// The mount source after the type (`/dev/vda1`): node_exporter's
    /// `device` label.
    pub source: String,
    /// Mounted read-only (`ro` in the mount's or the superblock's options).
    pub readonly: bool,
    /// `major:minor`, which tells bind mounts of one filesystem apart.
    device: String,
    root_is_fs_root: bool,
}

/// Undoes the kernel's octal escaping of space, tab, newline and backslash.
fn unescape_mount_path(text: &str) -> String {
    if !text.contains('\\') {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let oct = text
                .get(i + 1..i + 4)
                .filter(|o| o.bytes().all(|b| (b'0'..=b'7').contains(&b)));
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Public for the fuzz target only.
#[doc(hidden)]
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.split(' ');
        let (Some(_id), Some(_parent), Some(device), Some(root), Some(mount_point), Some(options)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        // Optional fields run up to a lone "-"; type, source and superblock
        // options follow it.
        let Some(fs_type) = fields.by_ref().skip_while(|f| *f != "-").nth(1) else {
            continue;
        };
        let source = fields.next().unwrap_or_default();
        let super_options = fields.next().unwrap_or_default();
        let ro = |opts: &str| opts.split(',').any(|o| o == "ro");
        out.push(MountEntry {
            mount_point: unescape_mount_path(mount_point),
            fs_type: fs_type.to_owned(),
            source: unescape_mount_path(source),
            readonly: ro(options) || ro(super_options),
            device: device.to_owned(),
            root_is_fs_root: root == "/",
        });
    }
    out
}

/// Filesystems with no storage of their own, or only in memory. Public for
/// the fuzz target only.
#[doc(hidden)]
pub fn is_pseudo_fs(fs_type: &str) -> bool {
    const PSEUDO: &[&str] = &[
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devpts",
        "devtmpfs",
        "efivarfs",
        "fusectl",
        "hugetlbfs",
        "mqueue",
        "nsfs",
        "overlay",
        "proc",
        "pstore",
        "ramfs",
        "rootfs",
        "rpc_pipefs",
        "securityfs",
        "selinuxfs",
        "squashfs",
        "sysfs",
        "tmpfs",
        "tracefs",
        "nfsd",
        "aufs",
        "erofs",
    ];
    PSEUDO.contains(&fs_type)
}

/// Filesystems whose `statvfs` can hang on a server or a user daemon.
/// Public for the fuzz target only.
#[doc(hidden)]
pub fn is_remote_fs(fs_type: &str) -> bool {
    const REMOTE: &[&str] = &[
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "coda",
        "ceph",
        "glusterfs",
        "9p",
        "lustre",
        "gpfs",
        "beegfs",
        "davfs",
        "virtiofs",
        "fuse",
        "fuseblk",
        "sshfs",
    ];
    REMOTE.contains(&fs_type) || fs_type.starts_with("fuse.")
}

/// Mount points under /proc, /sys and /dev hold kernel interfaces, never
/// storage, whatever type the table claims (an autofs trigger there would even
/// mount something when probed).
fn is_kernel_mount_point(path: &str) -> bool {
    ["/proc", "/sys", "/dev"].iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// The mounts worth a `statvfs`: real, local (unless `include_remote`), one
/// per device, and for a stacked mount point the one on top. Public for the
/// fuzz target only.
#[doc(hidden)]
pub fn select_mounts(entries: &[MountEntry], include_remote: bool) -> Vec<&MountEntry> {
    let mut chosen: Vec<&MountEntry> = Vec::new();
    for e in entries {
        if is_pseudo_fs(&e.fs_type)
            || (!include_remote && is_remote_fs(&e.fs_type))
            || is_kernel_mount_point(&e.mount_point)
        {
            continue;
        }
        // A later mount on the same point hides the earlier one.
        chosen.retain(|c| c.mount_point != e.mount_point);
        match chosen.iter().position(|c| c.device == e.device) {
            Some(i) if !chosen[i].root_is_fs_root && e.root_is_fs_root => chosen[i] = e,
            Some(_) => {}
            None => chosen.push(e),
        }
    }
    chosen.truncate(MAX_FILESYSTEMS);
    chosen
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct FsUsage {
    pub(super) total: u64,
    pub(super) free: u64,
    pub(super) avail: u64,
    pub(super) files: u64,
    pub(super) files_free: u64,
}

pub(super) fn statvfs_usage(path: &Path) -> Option<FsUsage> {
    match statvfs_wide(path) {
        Ok(usage) => Some(usage),
        Err(e) => {
            warn_once_statvfs(path, e);
            None
        }
    }
}

/// A filesystem that cannot be measured is left out of the snapshot; the
/// first failure for each mount point says so, later ones are quiet.
fn warn_once_statvfs(path: &Path, e: nix::errno::Errno) {
    static SAID: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut said = lock(&SAID);
    if said.iter().any(|p| p == path) || said.len() >= 4 * MAX_FILESYSTEMS {
        return;
    }
    said.push(path.to_owned());
    log::warn!(
        "statvfs of {} failed: {e}; it is left out of the filesystem metrics (said once)",
        path.display()
    );
}

/// Bytes from block counts, in the fragment size (the unit of the counts).
fn usage_from(frsize: u64, bsize: u64, blocks: [u64; 3], files: u64, files_free: u64) -> FsUsage {
    let unit = if frsize == 0 { bsize } else { frsize };
    let [total, free, avail] = blocks;
    FsUsage {
        total: total.saturating_mul(unit),
        free: free.saturating_mul(unit),
        avail: avail.saturating_mul(unit),
        files,
        files_free,
    }
}

/// `statvfs(3)` with 64-bit counts. On 32-bit glibc the plain call (nix's)
/// fails with EOVERFLOW above 2^32 blocks (16 TiB at 4 KiB), so
/// `statvfs64` is called there; musl and 64-bit glibc count in 64 bits anyway.
#[cfg(all(target_env = "gnu", target_pointer_width = "32"))]
fn statvfs_wide(path: &Path) -> nix::Result<FsUsage> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| nix::errno::Errno::EINVAL)?;
    let mut buf = std::mem::MaybeUninit::<nix::libc::statvfs64>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string that lives across the call,
    // and `buf` is a writable `statvfs64` of the right size and alignment,
    // which the call only writes to.
    let rc = unsafe { nix::libc::statvfs64(c_path.as_ptr(), buf.as_mut_ptr()) };
    nix::errno::Errno::result(rc)?;
    // SAFETY: `statvfs64` returned 0, so it filled in the whole struct.
    let s = unsafe { buf.assume_init() };
    Ok(usage_from(
        s.f_frsize as u64,
        s.f_bsize as u64,
        [s.f_blocks, s.f_bfree, s.f_bavail],
        s.f_files,
        s.f_ffree,
    ))
}

#[cfg(not(all(target_env = "gnu", target_pointer_width = "32")))]
fn statvfs_wide(path: &Path) -> nix::Result<FsUsage> {
    let s = nix::sys::statvfs::statvfs(path)?;
    Ok(usage_from(
        s.fragment_size() as u64,
        s.block_size() as u64,
        [
            s.blocks() as u64,
            s.blocks_free() as u64,
            s.blocks_available() as u64,
        ],
        s.files() as u64,
        s.files_free() as u64,
    ))
}

enum ProbeReply {
    Usage(Option<FsUsage>),
    Done,
}

struct ProbeWorker {
    jobs: mpsc::Sender<Vec<PathBuf>>,
    replies: mpsc::Receiver<ProbeReply>,
    generation: u64,
}

/// Runs `statvfs` calls on a helper thread so a hung mount costs the sampler
/// at most [`PROBE_TIMEOUT`] once, not a stalled heartbeat.
pub(super) struct FsProber {
    worker: Option<ProbeWorker>,
    next_generation: u64,
    /// Mounts whose probe is stuck, with the generation of the thread stuck
    /// on it; that thread removes its entries when its call returns.
    stuck: Arc<Mutex<Vec<(PathBuf, u64)>>>,
    timeout: Duration,
    probe: fn(&Path) -> Option<FsUsage>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data is a plain list that a panic cannot leave half-written.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FsProber {
    pub(super) fn new(timeout: Duration, probe: fn(&Path) -> Option<FsUsage>) -> FsProber {
        FsProber {
            worker: None,
            next_generation: 0,
            stuck: Arc::new(Mutex::new(Vec::new())),
            timeout,
            probe,
        }
    }

    fn spawn(&mut self) -> Option<ProbeWorker> {
        let (job_tx, job_rx) = mpsc::channel::<Vec<PathBuf>>();
        let (reply_tx, reply_rx) = mpsc::channel();
        let generation = self.next_generation;
        self.next_generation += 1;
        let stuck = Arc::clone(&self.stuck);
        let probe = self.probe;
        let spawned = thread::Builder::new()
            .name("outpost-statvfs".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                'jobs: while let Ok(batch) = job_rx.recv() {
                    for path in &batch {
                        if reply_tx.send(ProbeReply::Usage(probe(path))).is_err() {
                            break 'jobs;
                        }
                    }
                    if reply_tx.send(ProbeReply::Done).is_err() {
                        break;
                    }
                }
                lock(&stuck).retain(|(_, g)| *g != generation);
            });
        match spawned {
            Ok(_) => Some(ProbeWorker {
                jobs: job_tx,
                replies: reply_rx,
                generation,
            }),
            Err(e) => {
                log::warn!("cannot start the statvfs thread: {e}");
                None
            }
        }
    }

    /// Usage of each path, `None` where unknown, failed, timed out or stuck.
    pub(super) fn probe_all(&mut self, paths: &[PathBuf]) -> Vec<Option<FsUsage>> {
        let mut results = vec![None; paths.len()];
        let mut batch = Vec::with_capacity(paths.len());
        let mut index = Vec::with_capacity(paths.len());
        {
            let stuck = lock(&self.stuck);
            if stuck.len() >= MAX_STUCK_PROBES {
                return results;
            }
            for (i, p) in paths.iter().enumerate() {
                if !stuck.iter().any(|(s, _)| s == p) {
                    batch.push(p.clone());
                    index.push(i);
                }
            }
        }
        if batch.is_empty() {
            return results;
        }
        let Some(worker) = self.worker.take().or_else(|| self.spawn()) else {
            return results;
        };
        if worker.jobs.send(batch).is_err() {
            return results;
        }
        let mut received = 0;
        loop {
            match worker.replies.recv_timeout(self.timeout) {
                Ok(ProbeReply::Usage(usage)) => {
                    if let Some(&i) = index.get(received) {
                        results[i] = usage;
                    }
                    received += 1;
                }
                Ok(ProbeReply::Done) => {
                    self.worker = Some(worker);
                    return results;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(&i) = index.get(received) {
                        log::warn!(
                            "statvfs of {} did not return within {:?}; skipping it until it does",
                            paths[i].display(),
                            self.timeout
                        );
                        lock(&self.stuck).push((paths[i].clone(), worker.generation));
                    }
                    // Dropping the worker abandons its thread to the stuck call.
                    return results;
                }
                Err(RecvTimeoutError::Disconnected) => return results,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::test_support::fixture_text;
    use std::time::Instant;

    #[test]
    fn mounts_leave_out_pseudo_fuse_and_bind_duplicates() {
        let entries = parse_mountinfo(&fixture_text("ne-8core", "proc/self/mountinfo"));
        assert_eq!(entries.len(), 31);
        let chosen: Vec<(&str, &str)> = select_mounts(&entries, false)
            .iter()
            .map(|m| (m.mount_point.as_str(), m.fs_type.as_str()))
            .collect();
        assert_eq!(
            chosen,
            [
                ("/", "ext4"),
                ("/boot", "ext2"),
                (
                    "/var/lib/kubelet/plugins/kubernetes.io/vsphere-volume/mounts/[vsanDatastore] bafb9e5a-8856-7e6c-699c-801844e77a4a/kubernetes-dynamic-pvc-3eba5bba-48a3-11e8-89ab-005056b92113.vmdk",
                    "ext4"
                ),
            ]
        );
        // With remote filesystems asked for, the FUSE mount comes back.
        let all = select_mounts(&entries, true);
        assert!(all.iter().any(|m| m.fs_type == "fuse.gvfsd-fuse"));
        assert!(all.iter().all(|m| m.fs_type != "tmpfs"));
    }

    #[test]
    fn nfs_mounts_are_skipped_by_default_and_deduplicated_when_asked_for() {
        let entries = parse_mountinfo(&fixture_text("ne-nfs", "proc/self/mountinfo"));
        let local: Vec<&str> = select_mounts(&entries, false)
            .iter()
            .map(|m| m.mount_point.as_str())
            .collect();
        assert_eq!(local, ["/"]);
        let all: Vec<(&str, &str)> = select_mounts(&entries, true)
            .iter()
            .map(|m| (m.mount_point.as_str(), m.fs_type.as_str()))
            .collect();
        assert_eq!(all, [("/", "ext4"), ("/mnt/nfs/test", "nfs4")]);
    }

    #[test]
    fn vm_mounts_are_just_the_root_disk() {
        let entries = parse_mountinfo(&fixture_text("vm-2core", "proc/self/mountinfo"));
        let chosen: Vec<(&str, &str)> = select_mounts(&entries, false)
            .iter()
            .map(|m| (m.mount_point.as_str(), m.fs_type.as_str()))
            .collect();
        assert_eq!(chosen, [("/", "ext4")]);
    }

    #[test]
    fn mount_sources_and_read_only_flags() {
        let text = "29 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    30 29 8:1 / /boot ro,relatime - ext2 /dev/sda1 rw\n\
                    31 29 8:2 / /data rw - xfs /dev/my\\040disk ro,noatime\n";
        let got: Vec<(String, String, bool)> = parse_mountinfo(text)
            .into_iter()
            .map(|m| (m.mount_point, m.source, m.readonly))
            .collect();
        assert_eq!(
            got,
            [
                ("/".into(), "/dev/vda".into(), false),
                ("/boot".into(), "/dev/sda1".into(), true),
                ("/data".into(), "/dev/my disk".into(), true),
            ]
        );
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape_mount_path(r"/x\9"), r"/x\9");
        assert_eq!(unescape_mount_path(r"/x\"), r"/x\");
        assert_eq!(unescape_mount_path("/é\\04"), "/é\\04");
    }

    fn fake_probe(path: &Path) -> Option<FsUsage> {
        if path.to_string_lossy().contains("hang") {
            thread::sleep(Duration::from_millis(400));
        }
        Some(FsUsage {
            total: 100,
            free: 40,
            avail: 30,
            files: 10,
            files_free: 5,
        })
    }

    #[test]
    fn a_hung_statvfs_is_skipped_until_it_returns() {
        let mut prober = FsProber::new(Duration::from_millis(50), fake_probe);
        let paths: Vec<PathBuf> = ["/a", "/hang", "/b"].iter().map(PathBuf::from).collect();

        let started = Instant::now();
        let first = prober.probe_all(&paths);
        assert!(started.elapsed() < Duration::from_millis(300));
        assert!(first[0].is_some() && first[1].is_none());
        assert_eq!(lock(&prober.stuck).len(), 1);

        // While stuck, the mount is not probed again, so no second thread hangs.
        for _ in 0..3 {
            let again = prober.probe_all(&paths);
            assert!(again[0].is_some() && again[1].is_none() && again[2].is_some());
            assert_eq!(lock(&prober.stuck).len(), 1);
        }

        // Once the stuck call returns, its thread clears the mark and exits.
        thread::sleep(Duration::from_millis(500));
        assert!(lock(&prober.stuck).is_empty());
        let later = prober.probe_all(&paths[..1]);
        assert!(later[0].is_some());
    }

    #[test]
    fn stuck_probes_are_capped() {
        let mut prober = FsProber::new(Duration::from_millis(20), fake_probe);
        let paths: Vec<PathBuf> = (0..10)
            .map(|i| PathBuf::from(format!("/hang{i}")))
            .collect();
        for _ in 0..10 {
            prober.probe_all(&paths);
        }
        assert_eq!(lock(&prober.stuck).len(), MAX_STUCK_PROBES);
    }
}
