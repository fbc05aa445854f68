use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("receive") => onair::receive::cli::main(&args[2..]),
        _ => {
            eprintln!("usage: onair receive --config FILE");
            ExitCode::from(2)
        }
    }
}
