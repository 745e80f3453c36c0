//! Deployment files: the systemd unit, install.sh and the cloud-init user data.
//!
//! These tests do not need the outpost binary. They need these tools, which
//! CI installs (a missing one fails the test with the package to install):
//! `systemd-analyze` (Debian package `systemd`), `cloud-init` (`cloud-init`),
//! `shellcheck` (`shellcheck`), `useradd` (`passwd`), `setpriv`
//! (`util-linux`), `sha256sum` (`coreutils`) and `bash` (`bash`).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const UNIT: &str = "systemd/outpost.service";
const DROP_IN_EXAMPLE: &str = "systemd/collector-extra.conf.example";
const INSTALL_SH: &str = "systemd/install.sh";
const USER_DATA: &str = "cloud-init/user-data.yaml";
const MAX_EXPOSURE: f64 = 2.0;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    let path = repo(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Fails (never skips) when `program` is not on PATH, naming the Debian
/// package that provides it.
fn require(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]) {
        let candidate = dir.join(program);
        if let Ok(meta) = fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return candidate;
            }
        }
    }
    panic!(
        "`{program}` not found on PATH: install the Debian package `{package}` \
         (apt-get install -y {package}); CI installs it"
    );
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "outpost-deploy-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // World-traversable, so the non-root refusal test can reach files here.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn write_executable(path: &Path, content: &str) {
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn is_root() -> bool {
    let out = run(Command::new("id").arg("-u"));
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

// ---------------------------------------------------------------- the unit

/// A copy of the unit whose ExecStart= points at a stub executable, since
/// `systemd-analyze verify` insists that the program exists.
fn unit_with_stub(dir: &Path, extra_service_lines: &str) -> PathBuf {
    let unit = read(UNIT);
    let exec = "ExecStart=/usr/local/bin/outpost\n";
    assert!(unit.contains(exec), "{UNIT} must contain `{exec}`");
    let stub = dir.join("outpost-stub");
    write_executable(&stub, "#!/bin/sh\nexit 0\n");
    let mut unit = unit.replace(exec, &format!("ExecStart={}\n", stub.display()));
    // [Service] is not the last section; append extras as a section of their own.
    if !extra_service_lines.is_empty() {
        unit.push_str("\n[Service]\n");
        unit.push_str(extra_service_lines);
    }
    let path = dir.join("outpost.service");
    fs::write(&path, unit).unwrap();
    path
}

fn verify(unit: &Path) -> (Output, String) {
    let analyze = require("systemd-analyze", "systemd");
    let out = run(Command::new(analyze)
        .arg("verify")
        .arg(unit)
        .current_dir(unit.parent().unwrap())
        .env("SYSTEMD_LOG_COLOR", "0"));
    let all = text(&out);
    (out, all)
}

#[test]
fn unit_passes_systemd_analyze_verify_silently() {
    let dir = TempDir::new("verify");
    let (out, all) = verify(&unit_with_stub(dir.path(), ""));
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{all}"
    );
    assert_eq!(all, "", "systemd-analyze verify must print nothing");

    // Control: the same check does see a bad line (verify exits 0 on those).
    let (_, all) = verify(&unit_with_stub(dir.path(), "NoSuchSetting=1\n"));
    assert!(
        all.contains("NoSuchSetting"),
        "control not reported:\n{all}"
    );
}

#[test]
fn drop_in_example_lines_are_valid_settings() {
    let example = read(DROP_IN_EXAMPLE);
    assert!(example.contains("[Service]"));
    // Every commented-out setting, uncommented.
    let lines: String = example
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        .filter(|l| l.contains('='))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        lines.lines().count() >= 8,
        "too few settings found:\n{lines}"
    );
    let dir = TempDir::new("dropin");
    let (out, all) = verify(&unit_with_stub(dir.path(), &lines));
    assert!(out.status.success(), "{all}");
    assert_eq!(all, "", "drop-in example settings:\n{lines}");
}

fn exposure(unit: &Path) -> (f64, String) {
    let analyze = require("systemd-analyze", "systemd");
    let out = run(Command::new(analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("SYSTEMD_COLORS", "0"));
    let all = text(&out);
    let line = all
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no 'Overall exposure level' line:\n{all}"));
    // "→ Overall exposure level for outpost.service: 1.3 OK 🙂"
    let after = line.rsplit_once(": ").map(|(_, s)| s).unwrap_or("");
    let score: f64 = after
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse the score in {line:?}"));
    (score, all)
}

#[test]
fn unit_security_exposure_is_at_most_2() {
    let (score, all) = exposure(&repo(UNIT));
    eprintln!("systemd-analyze security: overall exposure {score}");
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}:\n{all}"
    );
}

/// Settings of the unit for a key (all assignments, in order).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

fn seconds(value: &str) -> f64 {
    let v = value.trim();
    if let Some(m) = v.strip_suffix("min") {
        return m.parse::<f64>().unwrap() * 60.0;
    }
    v.trim_end_matches('s').parse().unwrap()
}

#[test]
fn unit_keeps_the_agent_contract() {
    let unit = read(UNIT);
    let one = |key: &str| -> String {
        let v = unit_values(&unit, key);
        assert_eq!(v.len(), 1, "{key}= must be set exactly once, found {v:?}");
        v[0].clone()
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(one("ExecStart"), "/usr/local/bin/outpost");
    assert_eq!(one("Restart"), "always");
    assert_eq!(one("RestartPreventExitStatus"), "78");
    assert_eq!(one("KillMode"), "mixed");
    assert_eq!(one("StateDirectory"), "outpost outpost/programs");
    // Section 4.3: only the kept programs may run from what the agent writes.
    assert_eq!(one("ExecPaths"), "/var/lib/outpost/programs");
    assert!(
        one("NoExecPaths")
            .split_whitespace()
            .any(|p| p == "/var/lib/outpost")
    );
    assert_eq!(one("StateDirectoryMode"), "0700");
    assert_eq!(one("EnvironmentFile"), "-/etc/outpost/agent.env");
    assert_eq!(one("LoadCredential"), "agent.key:/etc/outpost/agent.key");
    assert_eq!(one("Environment"), "OUTPOST_AGENT_KEY_FILE=%d/agent.key");
    assert_eq!(one("User"), "outpost");
    assert_eq!(one("CapabilityBoundingSet"), "");
    // The agent must be able to stop its children (10 s grace) and drain
    // its outbox (2 s) before systemd kills what is left.
    let stop = seconds(&one("TimeoutStopSec"));
    assert!(
        stop >= 15.0,
        "TimeoutStopSec={stop}s leaves no room for 10 s grace + 2 s drain"
    );
    let watchdog = seconds(&one("WatchdogSec"));
    assert!(watchdog >= 10.0, "WatchdogSec={watchdog}s is too tight");
    // Network: the manager (HTTPS), iperf3, sd_notify, getifaddrs().
    let families = one("RestrictAddressFamilies");
    for family in ["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"] {
        assert!(
            families.split_whitespace().any(|f| f == family),
            "{family} missing"
        );
    }
    for key in ["PrivateNetwork", "IPAddressDeny", "ProcSubset"] {
        assert!(
            unit_values(&unit, key).is_empty(),
            "{key}= would break the agent"
        );
    }
    // A refused system call in a child must fail, not kill it.
    assert_eq!(one("SystemCallErrorNumber"), "EPERM");
}

/// Section 4.3: the unit's `ExecStopPost=` records how the agent ended in
/// the file, and the words, that the agent's next start reads. Run here as
/// systemd would run it: `$$` is a `$`, `-` only says a failure is ignored.
#[test]
fn unit_records_how_the_agent_ended_where_and_as_the_agent_reads_it() {
    let unit = read(UNIT);
    let lines = unit_values(&unit, "ExecStopPost");
    assert_eq!(lines.len(), 1, "ExecStopPost= must be set once: {lines:?}");
    let raw = lines[0]
        .strip_prefix('-')
        .expect("ExecStopPost=- (never fails the unit)");
    // No variable or specifier left for systemd itself to expand.
    assert!(!raw.replace("$$", "").contains('$'), "{raw}");
    assert!(!raw.replace("%%", "").contains('%'), "{raw}");
    let script = raw
        .strip_prefix("/bin/sh -c '")
        .and_then(|r| r.strip_suffix('\''))
        .expect("ExecStopPost=-/bin/sh -c '...'")
        .replace("$$", "$");
    let installed = outpost::programs::last_exit_path(Path::new("/var/lib/outpost"));
    let installed = installed.to_str().unwrap();
    assert!(
        script.contains(installed),
        "{script} must write {installed}"
    );
    let dir = TempDir::new("last-exit");
    let here = outpost::programs::last_exit_path(dir.path());
    let script = script.replace(installed, here.to_str().unwrap());
    for (vars, said) in [
        (["exit-code", "exited", "1"], "exited with status 1"),
        (["signal", "killed", "SEGV"], "killed by signal SEGV"),
        (
            ["watchdog", "dumped", "ABRT"],
            "killed by systemd's watchdog (signal ABRT)",
        ),
    ] {
        let out = run(Command::new("/bin/sh")
            .args(["-c", &script])
            .env("SERVICE_RESULT", vars[0])
            .env("EXIT_CODE", vars[1])
            .env("EXIT_STATUS", vars[2]));
        assert!(out.status.success(), "{}", text(&out));
        let ending = outpost::programs::Ending::take(dir.path());
        assert_eq!(ending.to_string(), said);
        assert!(!here.exists());
    }
}

/// Section 4.2: the unit delegates exactly the controllers the limits need,
/// leaves /sys/fs/cgroup writable (ProtectControlGroups=yes makes it
/// read-only on systemd 252), survives a task's OOM kill, and lets systemd
/// kill a crashed agent's leftovers: with KillMode=process a restart with a
/// task's process left in the unit's cgroup failed with 219/CGROUP (the
/// kernel refuses a process in a cgroup that hands controllers down; seen
/// in the boot test).
#[test]
fn unit_delegates_cgroups_and_lets_systemd_kill_leftovers() {
    let unit = read(UNIT);
    let one = |key: &str| -> String {
        let v = unit_values(&unit, key);
        assert_eq!(v.len(), 1, "{key}= must be set exactly once, found {v:?}");
        v[0].clone()
    };
    let mut delegated: Vec<String> = one("Delegate")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    delegated.sort();
    assert_eq!(delegated, ["cpu", "memory", "pids"]);
    assert_eq!(one("OOMPolicy"), "continue");
    assert!(
        unit_values(&unit, "ProtectControlGroups").is_empty(),
        "ProtectControlGroups= makes the delegated subtree read-only on systemd 252"
    );
    assert_eq!(one("KillMode"), "mixed");
}

/// READY=1 waits for registration (no start timeout), so nothing that starts
/// the service may wait for the start job: it would hang while the manager is
/// unreachable.
#[test]
fn service_starts_are_not_waited_for() {
    let unit = read(UNIT);
    let timeout = unit_values(&unit, "TimeoutStartSec");
    if timeout.iter().any(|v| v == "infinity") {
        for (file, text) in [(INSTALL_SH, read(INSTALL_SH)), (USER_DATA, read(USER_DATA))] {
            for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
                let starts = [
                    "enable --now",
                    "systemctl start",
                    "systemctl restart",
                    "try-restart",
                ];
                if line.contains("systemctl") && starts.iter().any(|s| line.contains(s)) {
                    assert!(
                        line.contains("--no-block"),
                        "{file}: `{}` would block",
                        line.trim()
                    );
                }
            }
        }
    }
}

// -------------------------------------------------------------- cloud-init

#[test]
fn cloud_init_user_data_is_valid_without_deprecations() {
    let cloud_init = require("cloud-init", "cloud-init");
    let path = repo(USER_DATA);
    let data = read(USER_DATA);
    assert!(
        data.starts_with("#cloud-config\n"),
        "must start with #cloud-config"
    );
    let out = run(Command::new(&cloud_init)
        .args(["schema", "--config-file"])
        .arg(&path));
    let all = text(&out);
    assert!(out.status.success(), "cloud-init schema failed:\n{all}");
    assert!(all.contains("Valid cloud-config"), "{all}");
    assert!(
        !all.to_lowercase().contains("deprecat"),
        "deprecation warnings:\n{all}"
    );

    // Control: this cloud-init version does report deprecated keys.
    let dir = TempDir::new("schema");
    let bad = dir.path().join("deprecated.yaml");
    fs::write(
        &bad,
        "#cloud-config\nusers:\n  - name: x\n    lock-passwd: true\n",
    )
    .unwrap();
    let out = run(Command::new(&cloud_init)
        .args(["schema", "--config-file"])
        .arg(&bad));
    let all = text(&out);
    assert!(
        all.to_lowercase().contains("deprecat"),
        "control: cloud-init did not report a deprecated key:\n{all}"
    );
}

#[test]
fn cloud_init_placeholders_are_all_explained() {
    let data = read(USER_DATA);
    let header: String = data
        .lines()
        .take_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut placeholders = BTreeSet::new();
    for (i, _) in data.match_indices("REPLACE_ME_") {
        let name: String = data[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.len() > "REPLACE_ME_".len() {
            placeholders.insert(name);
        }
    }
    for expected in [
        "REPLACE_ME_OUTPOST_BINARY_URL",
        "REPLACE_ME_OUTPOST_BINARY_SHA256",
        "REPLACE_ME_AGENT_KEY",
        "REPLACE_ME_MANAGER_URL",
    ] {
        assert!(placeholders.contains(expected), "{expected} missing");
    }
    for name in &placeholders {
        assert!(
            header.contains(name.as_str()),
            "{name} is not explained in the header"
        );
    }
    for needle in [
        "sha256sum -c -",
        "curl -fsSL",
        "systemctl daemon-reload",
        "systemctl enable --now",
        "- set -eu",
    ] {
        assert!(data.contains(needle), "runcmd lacks `{needle}`");
    }
}

/// The unit carried in the user data is the same text as systemd/outpost.service.
#[test]
fn cloud_init_unit_matches_systemd_unit() {
    let data = read(USER_DATA);
    let lines: Vec<&str> = data.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim() == "- path: /etc/systemd/system/outpost.service")
        .expect("write_files entry for /etc/systemd/system/outpost.service");
    let content = lines[at..]
        .iter()
        .position(|l| l.trim() == "content: |")
        .map(|i| at + i + 1)
        .expect("content: | for the unit");
    let indent = lines[content].len() - lines[content].trim_start().len();
    let mut embedded = String::new();
    for line in &lines[content..] {
        if line.trim().is_empty() {
            embedded.push('\n');
        } else if line.len() - line.trim_start().len() >= indent {
            embedded.push_str(&line[indent..]);
            embedded.push('\n');
        } else {
            break;
        }
    }
    let embedded = embedded.trim_end().to_owned() + "\n";
    let unit = read(UNIT).trim_end().to_owned() + "\n";
    assert!(
        embedded == unit,
        "the unit in {USER_DATA} differs from {UNIT}; copy it over (indented by {indent})"
    );
}

// --------------------------------------------------------------- install.sh

fn install_sh(args: &[&OsStr]) -> Output {
    let bash = require("bash", "bash");
    run(Command::new(bash).arg(repo(INSTALL_SH)).args(args))
}

fn sha256(path: &Path) -> String {
    let tool = require("sha256sum", "coreutils");
    let out = run(Command::new(tool).arg(path));
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Every path under `root` with its type, mode, owner, inode, mtime and the
/// sha256 of its content: equal snapshots mean nothing was touched.
fn snapshot(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let kind = if meta.is_dir() {
                "dir".to_owned()
            } else if meta.is_file() {
                format!("file {}", sha256(&path))
            } else {
                "other".to_owned()
            };
            out.push(format!(
                "{rel} {kind} mode={:o} uid={} gid={} ino={} mtime={}.{}",
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid(),
                meta.ino(),
                meta.mtime(),
                meta.mtime_nsec()
            ));
            if meta.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

#[test]
fn install_sh_twice_into_a_temp_root_changes_nothing() {
    let tmp = TempDir::new("install");
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let binary = tmp.path().join("outpost-stub");
    write_executable(&binary, "#!/bin/sh\necho 'outpost 0.0.0-stub'\n");
    let host_passwd = fs::read("/etc/passwd").ok();

    let args = [OsStr::new("--root"), root.as_os_str(), binary.as_os_str()];
    let first = install_sh(&args);
    let first_text = text(&first);
    assert!(first.status.success(), "first run failed:\n{first_text}");
    let before = snapshot(&root);
    let second = install_sh(&args);
    let second_text = text(&second);
    assert!(second.status.success(), "second run failed:\n{second_text}");
    let after = snapshot(&root);
    assert_eq!(before, after, "second run changed files:\n{second_text}");
    for word in ["created", "installed", "updated", "->"] {
        assert!(
            !second_text.contains(word),
            "second run reports a change ({word}):\n{second_text}"
        );
    }

    let bin = root.join("usr/local/bin/outpost");
    let env = root.join("etc/outpost/agent.env");
    let key = root.join("etc/outpost/agent.key");
    let unit = root.join("etc/systemd/system/outpost.service");
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(fs::read(&bin).unwrap(), fs::read(&binary).unwrap());
    assert_eq!(mode(&root.join("etc/outpost")), 0o750);
    assert_eq!(mode(&env), 0o640);
    assert_eq!(mode(&key), 0o600);
    assert_eq!(
        fs::metadata(&key).unwrap().len(),
        0,
        "key placeholder must be empty"
    );
    assert_eq!(mode(&unit), 0o644);
    assert_eq!(fs::read_to_string(&unit).unwrap(), read(UNIT));
    let env_text = fs::read_to_string(&env).unwrap();
    for setting in [
        "OUTPOST_MANAGER_URL",
        "OUTPOST_HTTP_ADDR",
        "OUTPOST_STOP_GRACE",
    ] {
        assert!(
            env_text.contains(&format!("#{setting}=")),
            "{setting} missing"
        );
    }
    assert!(
        env_text.lines().all(|l| l.is_empty() || l.starts_with('#')),
        "the template must set nothing"
    );
    // One line per action; systemctl and the user are skipped with a note.
    assert!(first_text.contains("systemctl: skipped"), "{first_text}");
    assert!(first_text.contains("user outpost: skipped"), "{first_text}");
    assert_eq!(
        fs::read("/etc/passwd").ok(),
        host_passwd,
        "host users changed"
    );

    // Settings and key already there: kept as they are; a new binary replaces
    // the old one.
    fs::write(&env, "OUTPOST_AGENT_NAME=kept\n").unwrap();
    fs::write(&key, "secret\n").unwrap();
    write_executable(&binary, "#!/bin/sh\necho 'outpost 0.0.1-stub'\n");
    let third = install_sh(&args);
    let third_text = text(&third);
    assert!(third.status.success(), "{third_text}");
    assert_eq!(
        fs::read_to_string(&env).unwrap(),
        "OUTPOST_AGENT_NAME=kept\n"
    );
    assert_eq!(fs::read_to_string(&key).unwrap(), "secret\n");
    assert_eq!(fs::read(&bin).unwrap(), fs::read(&binary).unwrap());
    assert!(third_text.contains("updated"), "{third_text}");
}

#[test]
fn install_sh_creates_the_user_inside_an_image_root_only() {
    if !is_root() {
        // useradd --root needs root; install.sh skips the user then.
        return;
    }
    require("useradd", "passwd");
    let tmp = TempDir::new("image");
    let root = tmp.path().join("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    let binary = tmp.path().join("outpost-stub");
    write_executable(&binary, "#!/bin/sh\n");
    let host_passwd = fs::read("/etc/passwd").ok();
    let host_group = fs::read("/etc/group").ok();

    let args = [OsStr::new("--root"), root.as_os_str(), binary.as_os_str()];
    let first = install_sh(&args);
    assert!(first.status.success(), "{}", text(&first));
    let before = snapshot(&root);
    let second = install_sh(&args);
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(before, snapshot(&root), "{}", text(&second));

    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    let users: Vec<&str> = passwd
        .lines()
        .filter(|l| l.starts_with("outpost:"))
        .collect();
    assert_eq!(users.len(), 1, "{passwd}");
    assert!(users[0].ends_with(":/usr/sbin/nologin"), "{}", users[0]);
    let group = fs::read_to_string(root.join("etc/group")).unwrap();
    let gid: u32 = group
        .lines()
        .find_map(|l| l.strip_prefix("outpost:"))
        .and_then(|rest| rest.split(':').nth(1))
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("no group outpost in\n{group}"));
    let env = fs::metadata(root.join("etc/outpost/agent.env")).unwrap();
    assert_eq!(
        (env.uid(), env.gid()),
        (0, gid),
        "agent.env must be root:outpost"
    );
    let dir = fs::metadata(root.join("etc/outpost")).unwrap();
    assert_eq!(
        (dir.uid(), dir.gid()),
        (0, gid),
        "/etc/outpost must be root:outpost"
    );
    let key = fs::metadata(root.join("etc/outpost/agent.key")).unwrap();
    assert_eq!(
        (key.uid(), key.gid()),
        (0, 0),
        "agent.key must be root:root"
    );

    assert_eq!(
        fs::read("/etc/passwd").ok(),
        host_passwd,
        "host users changed"
    );
    assert_eq!(
        fs::read("/etc/group").ok(),
        host_group,
        "host groups changed"
    );
}

#[test]
fn install_sh_help_and_errors() {
    let help = install_sh(&[OsStr::new("--help")]);
    let help_text = text(&help);
    assert!(help.status.success(), "{help_text}");
    assert!(
        help_text.contains("Usage:") && help_text.contains("--root"),
        "{help_text}"
    );
    assert!(help_text.contains("needs root"), "{help_text}");

    let none = install_sh(&[]);
    assert!(!none.status.success());
    assert!(text(&none).contains("no BINARY"), "{}", text(&none));

    let tmp = TempDir::new("errors");
    let missing = tmp.path().join("no-such-binary");
    let out = install_sh(&[
        OsStr::new("--root"),
        tmp.path().as_os_str(),
        missing.as_os_str(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("does not exist"), "{}", text(&out));
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "wrote files on error"
    );

    let out = install_sh(&[OsStr::new("--bogus")]);
    assert!(!out.status.success());
    assert!(text(&out).contains("unknown option"), "{}", text(&out));
}

/// Installing into / without root is refused before anything is written.
#[test]
fn install_sh_refuses_a_real_install_without_root() {
    let bash = require("bash", "bash");
    let tmp = TempDir::new("nonroot");
    // A world-readable copy: the checkout may sit under a private home.
    for file in [INSTALL_SH, UNIT] {
        let name = Path::new(file).file_name().unwrap();
        fs::copy(repo(file), tmp.path().join(name)).unwrap();
    }
    let binary = tmp.path().join("outpost-stub");
    write_executable(&binary, "#!/bin/sh\n");
    let script = tmp.path().join("install.sh");
    let mut cmd = if is_root() {
        let setpriv = require("setpriv", "util-linux");
        let mut cmd = Command::new(setpriv);
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bash);
        cmd
    } else {
        Command::new(bash)
    };
    let out = run(cmd.arg(&script).arg(&binary));
    let all = text(&out);
    assert!(
        !out.status.success(),
        "a non-root install into / succeeded:\n{all}"
    );
    assert!(all.contains("needs root"), "{all}");
}

#[test]
fn install_sh_passes_shellcheck() {
    let shellcheck = require("shellcheck", "shellcheck");
    let out = run(Command::new(shellcheck).arg(repo(INSTALL_SH)));
    assert!(out.status.success(), "{}", text(&out));
}

/// The real install into / (user, ownership, systemctl calls), run in a
/// private mount namespace: /etc is an overlay and /usr/local/bin and
/// /run/systemd are scratch mounts, so the host is not touched. Root only.
#[test]
fn install_sh_real_install_in_a_private_mount_namespace() {
    if !is_root() {
        return;
    }
    let unshare = require("unshare", "util-linux");
    require("useradd", "passwd");
    let bash = require("bash", "bash");
    let tmp = TempDir::new("real");
    let t = tmp.path();
    for dir in ["up", "work", "bin", "ulb"] {
        fs::create_dir(t.join(dir)).unwrap();
    }
    let log = t.join("systemctl.log");
    write_executable(
        &t.join("bin/systemctl"),
        &format!(
            "#!/bin/sh\necho \"$*\" >> {log}\ncase \"$*\" in\n  *is-enabled*|*is-active*) [ -f {t}/enabled ] ;;\n  *enable*) touch {t}/enabled ;;\nesac\n",
            log = log.display(),
            t = t.display()
        ),
    );
    let bin1 = t.join("outpost-1");
    let bin2 = t.join("outpost-2");
    write_executable(&bin1, "#!/bin/sh\necho 1\n");
    write_executable(&bin2, "#!/bin/sh\necho 2\n");
    let script = format!(
        r#"set -eu
mount -t overlay overlay -o lowerdir=/etc,upperdir={t}/up,workdir={t}/work /etc
mount --bind {t}/ulb /usr/local/bin
mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system
export PATH={t}/bin:$PATH
snap() {{ find /etc/outpost /usr/local/bin /etc/systemd/system/outpost.service -printf '%p %m %u %g %i %T@\n' | sort; sha256sum /etc/outpost/* /usr/local/bin/outpost /etc/systemd/system/outpost.service; }}
bash {install} {bin1}; echo '== run 1' >> {log}; snap > {t}/snap1
bash {install} {bin1}; echo '== run 2' >> {log}; snap > {t}/snap2
bash {install} {bin2}; echo '== run 3' >> {log}
grep -c '^outpost:' /etc/passwd > {t}/users
stat -c '%U:%G %a' /etc/outpost /etc/outpost/agent.env /etc/outpost/agent.key > {t}/owners
"#,
        t = t.display(),
        install = repo(INSTALL_SH).display(),
        log = log.display(),
        bin1 = bin1.display(),
        bin2 = bin2.display(),
    );
    let host_passwd = fs::read("/etc/passwd").ok();
    let out = run(Command::new(unshare)
        .args(["--mount", "--propagation", "private"])
        .arg(bash)
        .args(["-c", &script]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        fs::read("/etc/passwd").ok(),
        host_passwd,
        "host users changed"
    );

    let snap1 = fs::read_to_string(t.join("snap1")).unwrap();
    assert_eq!(
        snap1,
        fs::read_to_string(t.join("snap2")).unwrap(),
        "second run changed files"
    );
    assert_eq!(fs::read_to_string(t.join("users")).unwrap().trim(), "1");
    assert_eq!(
        fs::read_to_string(t.join("owners")).unwrap(),
        "root:outpost 750\nroot:outpost 640\nroot:root 600\n"
    );
    let calls = fs::read_to_string(&log).unwrap();
    let runs: Vec<&str> = calls.split("== run ").collect();
    assert_eq!(runs.len(), 4, "{calls}");
    assert!(
        runs[0].contains("daemon-reload") && runs[0].contains("enable --now --no-block outpost"),
        "{calls}"
    );
    assert!(
        !runs[1].contains("enable --now") && !runs[1].contains("restart"),
        "run 2: {calls}"
    );
    assert!(
        runs[2].contains("try-restart --no-block outpost"),
        "run 3: {calls}"
    );
}
