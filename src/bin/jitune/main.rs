//! The `jitune` command-line tool: tune kernels, verify cached winners, list, show, export,
//! import, merge and prune cache entries, and draw reports. The work is in the `cli` module;
//! `jitune --help` lists the subcommands and the exit codes.
//!
//! The binary doubles as a parallel-compile worker (`run_if_worker` returns at once otherwise).

mod cli;

fn main() {
    // A Ctrl-C in a terminal reaches the whole foreground process group, compile workers
    // included. The tuning process decides what a Ctrl-C means (finish the batch in flight,
    // store the best so far), so a worker ignores it: a worker killed mid-batch would make the
    // pool retry on dead idle workers and record working configs as compile failures. Workers
    // still end when the parent closes their stdin or kills them.
    if std::env::var_os("JITUNE_WORKER").is_some_and(|v| v == "compile") {
        let _ = ctrlc::set_handler(|| {});
    }
    jitune::run_if_worker();
    std::process::exit(cli::main_with_args());
}
