//! The `jitune` command-line tool: tune kernels, list, show, export, import, merge and prune
//! cache entries, and draw reports. The work is in `jitune::cli`; `jitune --help` lists the
//! subcommands and the exit codes.
//!
//! The binary doubles as a parallel-compile worker (`run_if_worker` returns at once otherwise).

fn main() {
    jitune::gpu::pool::run_if_worker();
    std::process::exit(jitune::cli::main_with_args());
}
