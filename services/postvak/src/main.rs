//! `postvak`: every Postvak service in one binary.

use clap::Parser;
use std::process::ExitCode;

mod bench;
mod bench_api;
mod bench_routing;
mod cli;
mod openapi;
mod startup;

/// mimalloc instead of glibc's allocator: the services allocate and free many short-lived
/// buffers (mail bodies, sealed payloads, JSON), and glibc's `malloc`/`free` and its chunk
/// consolidation took a fifth of their CPU under the routing bench (ADR 0033).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // The one TLS crypto provider of the process (ring): HTTP clients (OIDC discovery, JWKS,
    // OTLP export) panic without one.
    let _ = rustls::crypto::ring::default_provider().install_default();
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
