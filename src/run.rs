//! `onair run`: the appliance service — store, supervisor (consent state machine and relays),
//! admin API. Nothing streams until an admin enables the entitlement, a subscriber sets up a
//! profile and confirms a session, and the fabric acknowledges the indicator.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use crate::api::v1::{ControlTokens, V1};
use crate::api::{self, ApiConfig, TlsMode};
use crate::config::RunConfig;
use crate::control::consent::Command;
use crate::control::destination::Cidr;
use crate::control::model::{Actor, Role};
use crate::control::supervisor::{self, Control, RealClocks, SupervisorConfig};
use crate::error::Result;
use crate::store::Store;

/// Where the first-start admin token is written (0600), relative to the data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

const USAGE: &str = "usage: onair run [--config FILE]";

/// `onair run …`
pub fn main(args: &[String]) -> ExitCode {
    let config = match parse_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("onair run: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("onair run: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "onair run failed");
            eprintln!("onair run: {e}");
            ExitCode::from(1)
        }
    }
}

fn parse_args(args: &[String]) -> Result<RunConfig> {
    match args {
        [] => Ok(RunConfig::default()),
        [flag, path] if flag == "--config" => RunConfig::load(Path::new(path)),
        _ => crate::bail!(InvalidArgument, "unexpected arguments"),
    }
}

fn init_tracing(config: &RunConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if config.log.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// A running service (also used by tests in-process).
pub struct Service {
    pub control: Control,
    pub api: api::ServerHandle,
    /// Set on the first start only: where the admin token was written.
    pub admin_token_file: Option<PathBuf>,
}

/// Every route of the admin API: the infrastructure routes and the v1 resources (what
/// [`start`] serves; tests check its table against docs/openapi.json).
pub fn routes(v1: V1) -> api::Routes {
    api::base_router().merge(crate::api::v1::routes(v1))
}

/// Starts everything; returns once the API is listening.
pub async fn start(
    config: &RunConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Service> {
    start_with(config, shutdown, None).await
}

/// [`start`], with an admin token provisioned by the platform (e.g. the qemu host through
/// fw_cfg, see docs/image.md). It is used only on the first start, instead of a random one,
/// and only if it has the shape of a generated token.
pub async fn start_with(
    config: &RunConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    provisioned_admin_token: Option<crate::secret::Secret>,
) -> Result<Service> {
    config.validate()?;
    let store = Store::open(&config.data_dir)?;
    let control = supervisor::start(
        store,
        Arc::new(RealClocks),
        SupervisorConfig {
            egress: config.egress_options(),
            ..SupervisorConfig::default()
        },
    )?;
    let admin_token_file =
        first_admin_token(&control, &config.data_dir, provisioned_admin_token).await?;
    let allowed_sources = config
        .fabric
        .allowed_sources
        .iter()
        .filter_map(|c| Cidr::parse(c))
        .collect();
    let v1 = V1 {
        control: control.clone(),
        allowed_sources: Arc::new(allowed_sources),
        indicator_streams: Arc::default(),
    };
    let app = api::App::new(Arc::new(ControlTokens(control.clone())));
    app.metrics
        .register(Arc::new(SessionMetrics(control.clone())));
    let built = app.build(routes(v1));
    let api_config = ApiConfig {
        listen: config.api.listen,
        tls: if config.api_tls() == Some(false) {
            TlsMode::Plain
        } else {
            TlsMode::Device
        },
        tls_dir: config.data_dir.join("tls"),
        max_body_bytes: config.api.max_body_bytes,
        ..ApiConfig::default()
    };
    let api = api::serve(api_config, built.router, shutdown).await?;
    let scheme = if api.fingerprint().is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(url = %format!("{scheme}://{}", api.local_addr()), fingerprint = api.fingerprint().unwrap_or("-"), "admin API listening");
    Ok(Service {
        control,
        api,
        admin_token_file,
    })
}

async fn run(config: RunConfig) -> Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let service = start(&config, async move {
        let _ = rx.await;
    })
    .await?;
    if let Some(path) = &service.admin_token_file {
        // On the console once: where the token is (never the token itself).
        eprintln!(
            "onair: first start — admin token written to {} (readable by root only)",
            path.display()
        );
    }
    wait_for_signal().await;
    tracing::info!("stopping");
    let _ = tx.send(());
    service.api.join().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// On the first start (no admin token in the store): makes one, writes it to a root-only file
/// (temp → fsync → rename) and only then records its hash, so a crash in between just makes
/// a new one at the next start.
async fn first_admin_token(
    control: &Control,
    data_dir: &Path,
    provisioned: Option<crate::secret::Secret>,
) -> Result<Option<PathBuf>> {
    let has_admin = control
        .read(|s| s.tokens.values().any(|t| t.role == Role::Admin))
        .unwrap_or(false);
    if has_admin {
        return Ok(None);
    }
    let token = match provisioned {
        Some(t) if is_token_shaped(t.expose()) => t,
        Some(_) => {
            tracing::warn!("the provisioned admin credential is malformed: ignored");
            crate::store::new_token()?
        }
        None => crate::store::new_token()?,
    };
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    crate::api::tls::write_private(&path, format!("{}\n", token.expose()).as_bytes())?;
    let cmd = Command::CreateToken {
        role: Role::Admin,
        subscriber: None,
        label: "first-start admin".into(),
        hash: crate::store::hash_token(token.expose()),
    };
    control
        .submit(Actor::system(), cmd)
        .await
        .map_err(|r| crate::err!(Io, "recording the first admin token: {r:?}"))?;
    Ok(Some(path))
}

/// The shape of [`crate::store::new_token`]'s tokens: the prefix and 64 lowercase hex digits.
fn is_token_shaped(t: &str) -> bool {
    t.strip_prefix(crate::store::TOKEN_PREFIX).is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Prometheus figures of the sessions.
struct SessionMetrics(Control);

impl api::metrics::MetricsSource for SessionMetrics {
    fn write(&self, w: &mut api::metrics::TextWriter) {
        use api::metrics::MetricType;
        let Some((counts, active)) = self.0.read(|s| {
            let mut counts = std::collections::BTreeMap::<&'static str, u64>::new();
            for x in s.sessions.values() {
                *counts.entry(x.state.name()).or_default() += 1;
            }
            let active: Vec<String> = s
                .sessions
                .values()
                .filter(|x| x.state.is_active())
                .map(|x| x.id.clone())
                .collect();
            (counts, active)
        }) else {
            return;
        };
        w.family("onair_sessions", MetricType::Gauge, "Sessions by state.");
        for (state, n) in &counts {
            w.sample("onair_sessions", &[("state", state)], *n as f64);
        }
        // Totals only: session ids are not exposed on this unauthenticated endpoint.
        let (mut bytes, mut dropped) = (0u64, 0u64);
        for id in &active {
            if let Some(st) = self.0.session_stats(id) {
                bytes += st.bytes_sent;
                dropped += st.frames_dropped;
            }
        }
        w.family(
            "onair_egress_bytes_sent",
            MetricType::Gauge,
            "Bytes sent to ingests by the live sessions.",
        );
        w.sample("onair_egress_bytes_sent", &[], bytes as f64);
        w.family(
            "onair_egress_frames_dropped",
            MetricType::Gauge,
            "Frames dropped under congestion by the live sessions.",
        );
        w.sample("onair_egress_frames_dropped", &[], dropped as f64);
    }
}
