//! The `onair` binary: one static executable, subcommands dispatched here.

use std::process::ExitCode;

const USAGE: &str = "usage: onair <command> [options]

commands:
  run          the appliance service (admin API, consent-gated sessions): onair run [--config FILE]
  ctl          admin API client: onair ctl [--url URL] [--token-file F] get|post|put|delete PATH
  fabric-sim   play a TS file over UDP as the conferencing fabric would (paced, looping)
  receive      run the private ingest: an RTMP/RTMPS server recording publishes to FLV
  init         PID 1 of the appliance image (see docs/image.md); only as PID 1
  init-net     the network bring-up of init, alone (tests, benches): init-net --board FILE [--cmdline TEXT]
  board        check a board file and print it as shell variables: onair board FILE
  version      print the version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let rest = args.get(2..).unwrap_or(&[]);
    // As PID 1 (the kernel runs /init with its own arguments), onair is the init.
    #[cfg(target_os = "linux")]
    if std::process::id() == 1 {
        return onair::init::main(rest);
    }
    if args.get(1).map(String::as_str) == Some("run") {
        // `run` sets up logging from its config.
        return onair::run::main(rest);
    }
    init_tracing();
    match args.get(1).map(String::as_str) {
        Some("fabric-sim") => onair::fabric_sim::cli_main(rest),
        Some("receive") => onair::receive::cli::main(rest),
        Some("ctl") => onair::ctl::main(rest),
        Some("board") => board_main(rest),
        #[cfg(target_os = "linux")]
        Some("init-net") => onair::init::net_main(rest),
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

/// `onair board FILE`: validates a board file and prints it as shell assignments.
fn board_main(args: &[String]) -> ExitCode {
    let [path] = args else {
        eprintln!("usage: onair board FILE");
        return ExitCode::from(2);
    };
    match onair::board::Board::load(std::path::Path::new(path)) {
        Ok(b) => {
            print!("{}", b.shell_vars());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("onair board: {e}");
            ExitCode::from(1)
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
