//! outpost: a small, synchronous fleet agent.
//!
//! `main.rs` only calls [`run`]; everything else is this library, so the
//! integration tests drive the same code the binary runs. See
//! ARCHITECTURE.md for the map.

pub mod agent;
pub mod backoff;
pub mod cgroup;
pub mod claim;
pub mod clock;
pub mod config;
pub mod error;
pub mod event;
pub mod exposition;
pub mod fetch;
pub mod handover;
pub mod health;
pub mod heartbeat;
pub mod ids;
pub mod ledger;
pub mod logging;
pub mod manager;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod programs;
pub mod proxy;
pub mod pushgateway;
pub mod secret;
pub mod sha256;
pub mod spool;
pub mod state;
pub mod stop;
pub mod supervisor;
pub mod sysinfo;
pub mod tasks;
pub mod telemetry;
pub mod tls;
pub mod update;
#[cfg(test)]
mod wide_counters;

use std::ffi::OsString;

use config::Command;

/// This build's version: `OUTPOST_BUILD_VERSION` at build time when set
/// (the update tests build a second binary that way), else Cargo's.
pub const VERSION: &str = match option_env!("OUTPOST_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// Runs the agent as the command line says and returns the exit status.
pub fn run(args: impl IntoIterator<Item = OsString>) -> i32 {
    // Before the key is read: a process that is not dumpable leaves no
    // core dump (not even through a core_pattern pipe) and its memory and
    // environment are readable by root only.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("outpost: cannot turn off core dumps: {e}");
    }
    let inputs = config::Inputs::from_process(args);
    let parsed = config::parse(&inputs).and_then(|command| match command {
        Command::Run(_) => handover::broken_start("config").map(|()| command),
        other => Ok(other),
    });
    match parsed {
        Err(e) => {
            eprintln!("outpost: {e}");
            // A new version on trial that refuses the settings it was
            // tried with hands back (section 4.3) rather than exit 78,
            // which systemd would not restart.
            let e = match config::state_dir_hint(&inputs) {
                Some(dir) => handover::hand_back_unstarted(&dir, handover::take_own(&dir), e),
                None => e,
            };
            e.exit_code()
        }
        Ok(Command::Help) => {
            print!("{}", config::help());
            0
        }
        Ok(Command::Version) => {
            println!("outpost {VERSION}");
            0
        }
        Ok(Command::CheckConfig(config)) => {
            print!("{}", config.describe());
            println!("configuration is valid");
            0
        }
        Ok(Command::Run(config)) => {
            logging::init(&config.log_level, config.log_format);
            match agent::run(*config) {
                Ok(code) => code,
                Err(e) => {
                    log::error!("{e}");
                    e.exit_code()
                }
            }
        }
    }
}
