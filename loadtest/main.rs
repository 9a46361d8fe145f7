//! `loadtest`: an SMTP load generator and sink for benchmarking MTAs on loopback.
//!
//! `loadtest send` drives N connections (one io_uring runtime per thread) with the same
//! sans-IO `ClientSession` that ringmta's delivery uses, and reports throughput, errors by
//! reply code and latency percentiles from HDR histograms (`--report` writes them as an HTML
//! page with plots). `loadtest sink` accepts mail as fast
//! as it can, with optional fault injection, and can record Message-IDs for loss checks.
//! Both stop by themselves (`--messages`/`--duration`, or a signal for the sink).

mod report;
mod send;
mod sink;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "loadtest", about = "SMTP load generator and sink")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Send mail to an SMTP server.
    Send(send::SendArgs),
    /// Accept mail (and optionally fail some of it on purpose).
    Sink(sink::SinkArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Send(a) => send::run(a),
        Cmd::Sink(a) => sink::run(a),
    }
}
