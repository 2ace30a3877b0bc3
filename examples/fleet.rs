//! A fleet of processes and hosts tuning one kernel's keys through the real tuner, cache,
//! store, leases and adoption, on a simulated GPU that replays a recorded space (no GPU
//! needed); see `examples/fleet/mod.rs` and `--help`.
//!
//! ```text
//! cargo run --release --example fleet -- --procs 8 --hosts 1 \
//!     --data tests/data/convolution_A4000.json.gz --keys 20 --cache-dir /tmp/fleet \
//!     [--kill-tuner] [--remote redis://127.0.0.1:6379/0] [--seconds 60] --json /tmp/fleet.json
//! ```

#[path = "fleet/mod.rs"]
mod fleet;

use std::process::ExitCode;

fn main() -> ExitCode {
    jitune::run_if_worker();
    if let Some(code) = fleet::child_role() {
        return code;
    }
    fleet::cli(std::env::args().skip(1).collect())
}
