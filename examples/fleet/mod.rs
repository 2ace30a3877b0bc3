//! The fleet simulation (issue 14, deliverable 4; issue 15, item 6): many processes and hosts
//! tuning one kernel's keys through the real [`Tuner`](jitune::Tuner), cache, store, leases and
//! adoption, without a GPU.
//!
//! Why a simulation: what jitune does between processes (who tunes a key, how the others get
//! its winner, what happens when a tuner dies mid-search, whether a row goes missing) is the
//! same code on a laptop as on a GPU server, and only a run with many real processes shows it.
//! Each child process builds one [`SimDevice`](jitune::tuner::SimDevice) replaying a recorded
//! Kernel Tuner space (each evaluation sleeps its recorded cost, scaled) and one tuner on its
//! host's SQLite file, and "launches" every key round after round with
//! [`Tuner::resolve`](jitune::Tuner::resolve). The parent spawns them, can SIGKILL one in the
//! middle of a search, and afterwards reads the children's event logs and reports and the
//! hosts' stores into the figures of the issue (`searches_per_key`, `winners`, ...).
//!
//! Shared by `examples/fleet.rs` (the command line) and `tests/fleet.rs` (CI), which include
//! this directory with `#[path]`; both binaries re-run themselves as the children.
//!
//! | file | concern |
//! |---|---|
//! | `args` | the options and their parsing (`--help`) |
//! | `sim` | the simulated device every process shares, the time scale, key text |
//! | `child` | one fleet process: its tuner, the launch loop, its event log and report |
//! | `parent` | spawning, watching, killing a lease holder, ending the run |
//! | `report` | the event log's lines, and the figures (OUT.json) drawn from logs and stores |
//! | `probe` | `--remote`: refuse unless this jitune shares winners through the URL |
#![allow(dead_code)] // the example and the test use different parts

pub mod args;
pub mod child;
pub mod parent;
pub mod probe;
pub mod report;
pub mod sim;

use std::process::ExitCode;

#[allow(unused_imports)] // the test's names
pub use {
    args::Options,
    parent::{run, FleetError, Run},
    report::Figures,
};

/// Environment variable that makes this program a fleet child; its value is the child's
/// settings (JSON, see `child::ChildSpec`).
pub const CHILD_ENV: &str = "JITUNE_FLEET_CHILD";

/// Runs this process as a fleet child if it is one (returns its exit code), else `None`.
pub fn child_role() -> Option<ExitCode> {
    let spec = std::env::var(CHILD_ENV).ok()?;
    Some(child::main(&spec))
}

/// The command line of `examples/fleet.rs`: exit 0 after a run, 1 when the run failed (a
/// child crashed or could not report, the output could not be written), 2 on a usage error or a
/// refused `--remote`.
pub fn cli(args: Vec<String>) -> ExitCode {
    let opts = match args::parse(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{}", args::HELP);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("fleet: {e}\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    let run = match parent::run(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    run.print_summary();
    let json = run.figures.to_json();
    println!("{json}");
    if let Some(out) = &opts.json {
        if let Err(e) = std::fs::write(out, format!("{json}\n")) {
            eprintln!("fleet: cannot write {}: {e}", out.display());
            return ExitCode::from(1);
        }
        eprintln!("fleet: wrote {}", out.display());
    }
    if run.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        for p in &run.problems {
            eprintln!("fleet: problem: {p}");
        }
        ExitCode::from(1)
    }
}
