//! `postvak`: every Postvak service in one binary.

use clap::Parser;
use std::process::ExitCode;

mod cli;
mod openapi;
mod startup;

#[tokio::main]
async fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args).await {
        Ok(code) => code,
        Err(e) => {
            // Logging may not be up yet: the error goes to stderr as a plain line.
            eprintln!("postvak: {e:#}");
            ExitCode::from(2)
        }
    }
}
