//! The `onair` binary: one static executable, subcommands dispatched here.

use std::process::ExitCode;

const USAGE: &str = "usage: onair <command> [options]

commands:
  run          the appliance service (admin API, consent-gated sessions): onair run [--config FILE]
  ctl          admin API client: onair ctl [--url URL] [--token-file F] get|post|put|delete PATH
  fabric-sim   play a TS file over UDP as the conferencing fabric would (paced, looping)
  receive      run the private ingest: an RTMP/RTMPS server recording publishes to FLV
  version      print the version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let rest = args.get(2..).unwrap_or(&[]);
    if args.get(1).map(String::as_str) == Some("run") {
        // `run` sets up logging from its config.
        return onair::run::main(rest);
    }
    init_tracing();
    match args.get(1).map(String::as_str) {
        Some("fabric-sim") => onair::fabric_sim::cli_main(rest),
        Some("receive") => onair::receive::cli::main(rest),
        Some("ctl") => onair::ctl::main(rest),
        Some("version" | "--version") => {
            println!("onair {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("onair: unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
        None => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr; `RUST_LOG` filters (default `info`), `ONAIR_LOG_JSON=1` for JSON lines.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var_os("ONAIR_LOG_JSON").is_some_and(|v| v == "1") {
        builder.json().init();
    } else {
        builder.init();
    }
}
