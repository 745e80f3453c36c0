//! The one error type of the agent.
//!
//! Every failure an operator can see names what failed and with which value,
//! so a log line is enough to act on without reading the source.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Exit status for a configuration error or a rejected key (`EX_CONFIG`).
pub const EXIT_CONFIG: i32 = 78;

#[derive(Debug)]
pub enum Error {
    /// A setting has a bad value; `setting` is the `OUTPOST_*` name.
    Config {
        setting: &'static str,
        message: String,
    },
    /// The command line itself is malformed (unknown flag, missing value).
    Usage(String),
    /// A file-system operation on `path` failed.
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A state file exists but holds something we cannot use.
    CorruptState { path: PathBuf, message: String },
    /// The manager rejected the agent's key while registering.
    KeyRejected { status: u16 },
    /// Something that should not happen in a healthy process (a thread could
    /// not start, a socket could not bind).
    Internal { what: &'static str, message: String },
}

impl Error {
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub fn config(setting: &'static str, message: impl Into<String>) -> Error {
        Error::Config {
            setting,
            message: message.into(),
        }
    }

    /// The process exit status this error calls for (section 8).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config { .. } | Error::Usage(_) | Error::KeyRejected { .. } => EXIT_CONFIG,
            _ => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { setting, message } => write!(f, "{setting}: {message}"),
            Error::Usage(message) => write!(f, "{message} (see outpost --help)"),
            Error::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            Error::CorruptState { path, message } => {
                write!(f, "state file {} is unusable: {message}", path.display())
            }
            Error::KeyRejected { status } => write!(
                f,
                "the manager rejected the agent key (HTTP {status}); check OUTPOST_AGENT_KEY or OUTPOST_AGENT_KEY_FILE"
            ),
            Error::Internal { what, message } => write!(f, "{what}: {message}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
