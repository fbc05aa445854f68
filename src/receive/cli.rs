//! `onair receive --config FILE`: runs the receiver until SIGINT/SIGTERM.
//!
//! Stream keys come only from the config file (or the `key_file`s it names), never from argv.

use std::path::Path;
use std::process::ExitCode;

use super::{ReceiverConfig, start};
use crate::error::Result;
use crate::{bail, err};

const USAGE: &str = "usage: onair receive --config FILE\n\
  Runs the private RTMP/RTMPS ingest server; see docs/receive.md for the config file.";

/// `args` are the arguments after `receive`.
pub fn main(args: &[String]) -> ExitCode {
    init_tracing();
    let path = match parse_args(args) {
        Ok(Some(p)) => p,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("onair receive: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(Path::new(&path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("onair receive: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Fails only if a subscriber is already set, which is fine.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

/// `Ok(None)` for `--help`.
fn parse_args(args: &[String]) -> Result<Option<String>> {
    let mut config = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--config" | "-c" => match it.next() {
                Some(p) => config = Some(p.clone()),
                None => bail!(InvalidArgument, "--config needs a file"),
            },
            // Never echo the argument: it could be a key pasted by mistake.
            _ => bail!(
                InvalidArgument,
                "unexpected argument (keys go in the config file)"
            ),
        }
    }
    match config {
        Some(c) => Ok(Some(c)),
        None => bail!(InvalidArgument, "--config FILE is required"),
    }
}

pub fn load_config(path: &Path) -> Result<ReceiverConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err!(InvalidArgument, "config {}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    ReceiverConfig::from_toml(&text, base)
        .map_err(|e| err!(InvalidArgument, "{}: {}", path.display(), e.message()))
}

fn run(path: &Path) -> Result<()> {
    let config = load_config(path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| err!(Io, "tokio runtime: {e}"))?;
    rt.block_on(async move {
        let handle = start(config).await?;
        wait_for_signal().await?;
        tracing::info!("stopping");
        let stats = handle.stop().await;
        tracing::info!(
            files = stats.files_completed.len(),
            accepted = stats.publishes_accepted,
            rejected = stats.publishes_rejected,
            "stopped"
        );
        Ok(())
    })
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| err!(Io, "SIGTERM: {e}"))?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(|e| err!(Io, "SIGINT: {e}")),
        _ = term.recv() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn args() {
        assert_eq!(
            parse_args(&s(&["--config", "a.toml"])).ok(),
            Some(Some("a.toml".into()))
        );
        assert_eq!(parse_args(&s(&["--help"])).ok(), Some(None));
        assert!(parse_args(&s(&[])).is_err());
        let e = parse_args(&s(&["--config", "a", "--key", "hunter2"])).expect_err("rejected");
        assert!(!e.to_string().contains("hunter2"));
    }
}
