//! One task state change: the body of a status update (section 3.4), and
//! the record the outbox, the ledger and the spool's results files keep.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Accepted,
    Running,
    Succeeded,
    Failed,
    Stopped,
    Rejected,
}

impl State {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Succeeded | State::Failed | State::Stopped | State::Rejected
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            State::Accepted => "accepted",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Stopped => "stopped",
            State::Rejected => "rejected",
        }
    }
}

/// The kinds of task error this agent reports (section 3.4), one closed
/// set, so a typo cannot invent a kind a manager has never heard of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidPayload,
    UnknownType,
    SpawnFailed,
    ExitNonzero,
    Exited,
    Timeout,
    DownloadFailed,
    ChecksumMismatch,
    AgentRestarted,
    AgentStopped,
    NotFound,
    Capacity,
    InvalidOutput,
    OutputTooLarge,
    Iperf3Error,
    LimitsUnavailable,
    OomKilled,
    UpdateFailed,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidPayload => "invalid_payload",
            ErrorKind::UnknownType => "unknown_type",
            ErrorKind::SpawnFailed => "spawn_failed",
            ErrorKind::ExitNonzero => "exit_nonzero",
            ErrorKind::Exited => "exited",
            ErrorKind::Timeout => "timeout",
            ErrorKind::DownloadFailed => "download_failed",
            ErrorKind::ChecksumMismatch => "checksum_mismatch",
            ErrorKind::AgentRestarted => "agent_restarted",
            ErrorKind::AgentStopped => "agent_stopped",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Capacity => "capacity",
            ErrorKind::InvalidOutput => "invalid_output",
            ErrorKind::OutputTooLarge => "output_too_large",
            ErrorKind::Iperf3Error => "iperf3_error",
            ErrorKind::LimitsUnavailable => "limits_unavailable",
            ErrorKind::OomKilled => "oom_killed",
            ErrorKind::UpdateFailed => "update_failed",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The wire and storage form keeps `kind` as text: a record written by
/// another version of the agent still reads back whatever kind it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    pub kind: String,
    pub message: String,
}

/// A status update; `agent_id` is added when it is sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub task_id: String,
    pub seq: u64,
    pub state: State,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_tail: Option<String>,
    /// Section 4.2: in every final update of a task that ran a process in
    /// a cgroup of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::cgroup::Usage>,
}

impl Update {
    pub fn new(task_id: &str, seq: u64, state: State) -> Update {
        Update {
            task_id: task_id.to_string(),
            seq,
            state,
            at: crate::clock::now_rfc3339(),
            pid: None,
            exit_code: None,
            result: None,
            error: None,
            stderr_tail: None,
            usage: None,
        }
    }

    pub fn with_error(mut self, kind: ErrorKind, message: impl Into<String>) -> Update {
        self.error = Some(TaskError {
            kind: kind.as_str().to_string(),
            message: message.into(),
        });
        self
    }
}
