//! Log output: plain text, one JSON object a line, or journald-friendly
//! lines with `<N>` priority prefixes when stderr is the journal.
//!
//! Invariant: no filter, however it is written, lets another crate log
//! below `info` (rustls below `warn`). At `debug` and `trace` the HTTP
//! crates print request headers and hex dumps of whole requests, and one
//! header is the agent key. env_logger's own directives cannot promise
//! that (its longest matching directive wins, so `ureq_proto::util=trace`
//! beats any cap set on `ureq_proto`), so the cap sits in a logger of our
//! own in front of it, on every record.

use std::io::Write;
use std::os::fd::AsFd;

use log::{Level, LevelFilter};

use crate::config::LogFormat;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Style {
    Text,
    Json,
    Journal,
}

/// Installs the global logger. Safe to call more than once (later calls are
/// ignored), which keeps tests simple.
pub fn init(filter: &str, format: LogFormat) {
    let style = match format {
        LogFormat::Json => Style::Json,
        LogFormat::Text if stderr_is_journal() => Style::Journal,
        LogFormat::Text => Style::Text,
    };
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(filter);
    builder.format(move |out, record| match style {
        Style::Text => writeln!(
            out,
            "{} {:<5} {}{}",
            crate::clock::rfc3339_millis(std::time::SystemTime::now()),
            record.level(),
            record.args(),
            fields_text(record)
        ),
        Style::Journal => writeln!(
            out,
            "<{}>{}{}",
            syslog_priority(record.level()),
            record.args(),
            fields_text(record)
        ),
        Style::Json => writeln!(out, "{}", json_line(record)),
    });
    builder.write_style(env_logger::WriteStyle::Never);
    let inner = builder.build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Capped { inner })).is_ok() {
        log::set_max_level(max);
    }
}

/// env_logger behind the cap on other crates' records.
struct Capped {
    inner: env_logger::Logger,
}

impl log::Log for Capped {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        allowed(metadata.target(), metadata.level()) && self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        // A record's module path can differ from its target; both must
        // pass, so neither a custom target nor a re-export slips through.
        if allowed(record.target(), record.level())
            && record
                .module_path()
                .is_none_or(|module| allowed(module, record.level()))
        {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// The most verbose level a record from `target` may have: anything of
/// outpost's own, `info` for every other crate, `warn` for the TLS stack.
fn allowed(target: &str, level: Level) -> bool {
    let crate_name = target.split("::").next().unwrap_or(target);
    let cap = match crate_name {
        "outpost" => return true,
        "rustls" | "webpki" | "rustls_pki_types" | "ring" => LevelFilter::Warn,
        _ => LevelFilter::Info,
    };
    level <= cap
}

fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// systemd sets `JOURNAL_STREAM=dev:inode` for a service whose stderr is the
/// journal; it only counts while stderr is still that very stream.
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    is_stream(std::io::stderr().as_fd(), dev, ino)
}

/// Whether `fd` is the file `dev:ino`. `st_dev` and `st_ino` are 32 bits wide
/// on some targets (`ino_t` on 32-bit glibc), so both widen to u64 first.
fn is_stream(fd: std::os::fd::BorrowedFd<'_>, dev: u64, ino: u64) -> bool {
    match nix::sys::stat::fstat(fd) {
        #[allow(clippy::unnecessary_cast)] // u64 on 64-bit targets only
        Ok(st) => st.st_dev as u64 == dev && st.st_ino as u64 == ino,
        Err(_) => false,
    }
}

struct Collect(Vec<(String, String)>);

impl<'kvs> log::kv::VisitSource<'kvs> for Collect {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        self.0.push((key.to_string(), value.to_string()));
        Ok(())
    }
}

fn fields(record: &log::Record) -> Vec<(String, String)> {
    let mut collect = Collect(Vec::new());
    let _ = record.key_values().visit(&mut collect);
    collect.0
}

fn fields_text(record: &log::Record) -> String {
    fields(record)
        .into_iter()
        .map(|(k, v)| format!(" {k}={v}"))
        .collect()
}

fn json_line(record: &log::Record) -> String {
    let mut object = serde_json::Map::new();
    object.insert(
        "timestamp".into(),
        crate::clock::rfc3339_millis(std::time::SystemTime::now()).into(),
    );
    object.insert(
        "level".into(),
        record.level().as_str().to_ascii_lowercase().into(),
    );
    object.insert("target".into(), record.target().into());
    object.insert("message".into(), record.args().to_string().into());
    for (key, value) in fields(record) {
        object.entry(key).or_insert(value.into());
    }
    serde_json::Value::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_carry_fields() {
        let kvs: &[(&str, &str)] = &[("task_id", "t-1")];
        let record = log::Record::builder()
            .args(format_args!("hello \"x\""))
            .level(Level::Warn)
            .target("outpost::tasks")
            .key_values(&kvs)
            .build();
        let line = json_line(&record);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["message"], "hello \"x\"");
        assert_eq!(v["task_id"], "t-1");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn priorities_and_levels() {
        assert_eq!(syslog_priority(Level::Error), 3);
        assert_eq!(syslog_priority(Level::Info), 6);
        assert!(allowed("outpost::manager", Level::Trace));
        assert!(!allowed("ureq_proto::util", Level::Trace));
        assert!(!allowed("ureq", Level::Debug));
        assert!(allowed("ureq", Level::Info));
        assert!(!allowed("rustls::conn", Level::Info));
        assert!(!allowed("some_future_crate", Level::Debug));
    }

    #[test]
    fn journal_stream_matches_by_device_and_inode() {
        use std::os::unix::fs::MetadataExt;
        let path = std::env::temp_dir().join(format!("outpost-journal-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let meta = file.metadata().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(is_stream(file.as_fd(), meta.dev(), meta.ino()));
        assert!(!is_stream(file.as_fd(), meta.dev(), meta.ino() + 1));
        assert!(!is_stream(file.as_fd(), meta.dev() + 1, meta.ino()));
    }
}
