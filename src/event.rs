//! The main loop's closed set of events. A leaf module: every worker that
//! reports to the main loop imports this, never `agent.rs`.

use std::path::PathBuf;
use std::sync::mpsc::Sender;

use crate::supervisor::Exit;

/// Everything the main loop reacts to.
#[derive(Debug)]
pub enum Event {
    /// SIGTERM or SIGINT: stop cleanly.
    Shutdown { signal: &'static str },
    /// The manager accepted this instance.
    Registered { agent_id: String },
    /// The manager refused the key at registration: stop, exit 78.
    KeyRejected { status: u16 },
    /// Tasks from a claim; `taken` is answered once they are in the table.
    Claimed {
        tasks: Vec<serde_json::Value>,
        taken: Sender<()>,
    },
    /// A spool file, read (or why it could not be).
    Spooled {
        path: PathBuf,
        task: std::result::Result<serde_json::Value, String>,
    },
    /// A child process ended.
    ChildExited(Exit),
    /// Every process a previous instance left of this task is gone.
    LeftoversGone { task_id: String },
    /// An `agent_update`'s program was fetched, kept and tried (or not).
    UpdatePrepared {
        task_id: String,
        result: std::result::Result<crate::programs::Program, (crate::update::ErrorKind, String)>,
    },
    /// A collector config download finished.
    ConfigFetched {
        task_id: String,
        result: std::result::Result<Vec<u8>, String>,
    },
}
