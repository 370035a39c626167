//! The `loadgen` command line; the scenarios live in the library (see lib.rs).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use loadgen::{output, report, scenario};

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for the edge: idle, fan-out, reconnect-storm, typing, inbox and churn scenarios with correctness checks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open and hold N connections.
    Idle(scenario::idle::IdleArgs),
    /// Steady chat traffic in R rooms of M members.
    Fanout(scenario::fanout::FanoutArgs),
    /// Make N connections reconnect at once.
    Storm(scenario::storm::StormArgs),
    /// One room where every member types: typing events delivered and their server CPU.
    Typing(scenario::typing::TypingArgs),
    /// The latency of `sync` for a user in many rooms.
    Inbox(scenario::inbox::InboxArgs),
    /// Connect, join, send, leave, disconnect and reconnect-storm churn for a bounded time (soak runs).
    Churn(scenario::churn::ChurnArgs),
    /// Print the ratios of two runs' figures (B/A).
    Compare {
        /// The baseline run's JSON.
        a: PathBuf,
        /// The run compared with it.
        b: PathBuf,
    },
    /// Regenerate a results directory's README.md table and latency plot from its loadgen JSON files.
    Report {
        /// The results directory.
        #[arg(long, default_value = "results")]
        dir: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    output::mark_start();
    let r = match cli.cmd {
        Cmd::Idle(a) => scenario::idle::run(a),
        Cmd::Fanout(a) => scenario::fanout::run(a),
        Cmd::Storm(a) => scenario::storm::run(a),
        Cmd::Typing(a) => scenario::typing::run(a),
        Cmd::Inbox(a) => scenario::inbox::run(a),
        Cmd::Churn(a) => scenario::churn::run(a),
        Cmd::Compare { a, b } => output::compare(&a, &b).map(|()| true),
        Cmd::Report { dir } => report::regenerate(&dir).map(|()| true),
    };
    match r {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("loadgen: the run failed its correctness checks (see above)");
            std::process::ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
