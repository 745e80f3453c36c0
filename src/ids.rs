//! The identifier rule of the protocol and the per-process `instance_id`.
//!
//! Task ids, collector names and the agent name end up in file names, URL
//! paths and headers. One rule (1-128 characters of `[A-Za-z0-9._:-]`, and
//! not `.` or `..`) keeps every one of those uses safe, so it lives here once.

use std::fmt::Write;
use std::io::Read;

pub const MAX_ID_LEN: usize = 128;

pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A bad id made printable for one log line: control and non-ASCII
/// characters escaped, cut to 128 characters.
pub fn escape_for_log(id: &str) -> String {
    let mut out = String::new();
    for c in id.chars() {
        if out.len() >= MAX_ID_LEN {
            out.push('…');
            break;
        }
        if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            let _ = write!(out, "{}", c.escape_default());
        }
    }
    out
}

/// A random (version 4) UUID from the kernel's random source.
pub fn new_uuid() -> String {
    let mut bytes = [0u8; 16];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !filled {
        // No /dev/urandom (a broken chroot): mix time and pid, which is still
        // unique enough to tell one start of the agent from the next.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes[..16].copy_from_slice(&(now ^ (u128::from(std::process::id()) << 64)).to_le_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_rule() {
        assert!(is_valid_id("t-123"));
        assert!(is_valid_id("a.b_c:d-E9"));
        assert!(is_valid_id(&"x".repeat(128)));
        for bad in ["", ".", "..", "../x", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn escapes_and_cuts() {
        assert_eq!(escape_for_log("a\nb"), "a\\nb");
        assert!(escape_for_log(&"y".repeat(500)).chars().count() <= 130);
    }

    #[test]
    fn uuids_are_v4_and_differ() {
        let (a, b) = (new_uuid(), new_uuid());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
    }
}
