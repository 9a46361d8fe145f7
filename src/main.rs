//! The `ringmta` binary: parse arguments, load config, run the sub-command. No logic here.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = ringmta::cli::Cli::parse();
    match ringmta::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringmta: {e:#}");
            ExitCode::FAILURE
        }
    }
}
