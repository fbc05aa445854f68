//! `onair init`: PID 1 of the appliance (Linux only).
//!
//! Two stages, one binary:
//! 1. **initramfs** (the kernel runs `/init`, a link to onair): mounts devtmpfs, proc, sysfs and
//!    /run, loads the board's kernel modules (list made by the image recipe, dependencies
//!    first), finds `root_a`/`root_b` by GPT partition name (`onair.slot=`), mounts that
//!    squashfs read-only, moves the early mounts into it, makes it `/` (switch_root) and
//!    execs `/usr/bin/onair init --on-root` from it — still PID 1.
//! 2. **root** (read-only squashfs): mounts the `data` partition (ext4) on /data, brings up
//!    loopback, the management NIC (address from `onair.ip=`/`onair.gw=` or the board
//!    file) and a separate fabric NIC (`onair.fabric_ip=` or the board file; the multicast
//!    route; see [`netplan`]), pets the watchdog, watches the ACPI power button, reaps orphans, and runs the
//!    service (`run::start_with`) with its state in /data/onair and the admin API on the
//!    management address, HTTPS on 8443. The first boot prints the admin URL, the certificate
//!    fingerprint and where the admin token is on the console.
//!
//! Signals: SIGTERM, SIGUSR2 and the power button power off; SIGINT (Ctrl-Alt-Del) and
//! SIGUSR1 reboot. Either way the service stops, the watchdog is disarmed, /data is synced and
//! unmounted, then the kernel powers off or reboots.
//!
//! Never panics and never exits: a failure is logged on the console and init keeps what it
//! can running (no root → it stays on the initramfs; no data partition → state on a tmpfs; no
//! service → it retries every 5 s).

pub mod cmdline;
pub mod netlink;
pub mod netplan;
pub mod sys;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use nix::mount::MsFlags;

use crate::board::{Board, Ipv4Cidr};
use crate::config::RunConfig;
use cmdline::Cmdline;

/// Where the image puts the board file (initramfs and root).
pub const BOARD_FILE: &str = "/etc/onair/board.toml";
/// The module list written by the image recipe (paths relative to /lib/modules).
pub const MODULE_LIST: &str = "/lib/modules/onair.load";
/// The onair binary on the root filesystem.
pub const ROOT_ONAIR: &str = "/usr/bin/onair";
/// The data partition's mount point and the service's state directory.
pub const DATA_MOUNT: &str = "/data";
pub const DATA_DIR: &str = "/data/onair";
/// An optional service config on the data partition (replaces the built-in one).
pub const DATA_CONFIG: &str = "/data/onair.toml";
/// The admin API port on the management address.
pub const API_PORT: u16 = 8443;

/// What to do when the service stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    PowerOff,
    Reboot,
}

/// `onair init [--on-root]`. Refuses to run unless it is PID 1.
pub fn main(args: &[String]) -> ExitCode {
    if std::process::id() != 1 {
        eprintln!("onair init: must run as PID 1 (the appliance's init)");
        return ExitCode::from(2);
    }
    init_tracing();
    let on_root = args.iter().any(|a| a == "--on-root");
    if !on_root {
        stage1();
    }
    stage2(on_root)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

fn log_all(what: &str, errors: &[String]) {
    for e in errors {
        tracing::error!("{what}: {e}");
    }
}

/// Stage 1, on the initramfs. Returns only if the root could not be entered (init then runs
/// stage 2 from the initramfs).
fn stage1() {
    log_all("early mounts", &sys::early_mounts());
    let cmdline = read_cmdline();
    let (n, errors) = sys::load_modules(Path::new("/lib/modules"), Path::new(MODULE_LIST));
    tracing::info!(modules = n, "kernel modules loaded");
    log_all("modules", &errors);
    match enter_root(&cmdline) {
        Ok(()) => {
            if let Err(e) = sys::exec(ROOT_ONAIR, &["onair", "init", "--on-root"]) {
                tracing::error!("{e}: continuing with this binary on the root");
            }
        }
        Err(e) => tracing::error!(
            "root filesystem: {e}: continuing from the initramfs (the root is NOT read-only)"
        ),
    }
}

fn enter_root(cmdline: &Cmdline) -> sys::Res<()> {
    let part = cmdline.slot.root_partition();
    let dev = sys::find_partition(part, Duration::from_secs(15))?;
    let dev = dev.to_string_lossy();
    sys::mount_fs(
        &dev,
        "/sysroot",
        "squashfs",
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None,
    )?;
    tracing::info!(partition = part, device = %dev, "root mounted read-only");
    for m in ["/dev", "/proc", "/sys", "/run"] {
        sys::move_mount(m, &format!("/sysroot{m}"))?;
    }
    sys::switch_root("/sysroot")
}

fn read_cmdline() -> Cmdline {
    let c = Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    for w in &c.warnings {
        tracing::warn!("kernel command line: {w}");
    }
    c
}

fn load_board() -> Option<Board> {
    match Board::load(Path::new(BOARD_FILE)) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::error!("{e}");
            None
        }
    }
}

/// Stage 2: never returns (powers off or reboots).
fn stage2(on_root: bool) -> ! {
    log_all("early mounts", &sys::early_mounts());
    let cmdline = read_cmdline();
    let board = load_board();
    tracing::info!(
        slot = cmdline.slot.as_str(),
        board = board.as_ref().map_or("-", |b| b.name.as_str()),
        on_root,
        "onair init"
    );
    let _ = std::fs::write("/proc/sys/kernel/hostname", "onair");
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        tracing::warn!("Ctrl-Alt-Del → SIGINT: {e}");
    }
    mount_data();
    let net = bring_up_network(board.as_ref(), &cmdline);
    let watchdog = board
        .as_ref()
        .and_then(|b| b.watchdog.as_ref())
        .and_then(|w| {
            sys::start_watchdog(&w.device, Duration::from_secs(w.pet_interval_s))
                .inspect(|_| tracing::info!(device = %w.device.display(), "watchdog armed"))
                .inspect_err(|e| tracing::error!("{e}"))
                .ok()
        });
    let buttons = sys::watch_power_button(|| {
        tracing::info!("power button pressed");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGUSR2);
    });
    tracing::info!(devices = buttons, "watching the power button");
    let config = service_config(net);
    let action = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(serve(config)),
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}; waiting for a signal");
            wait_signal_blocking()
        }
    };
    shutdown(action, watchdog)
}

fn mount_data() {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME;
    let result = sys::find_partition(crate::board::DATA, Duration::from_secs(5))
        .and_then(|dev| sys::mount_fs(&dev.to_string_lossy(), DATA_MOUNT, "ext4", flags, None));
    match result {
        Ok(()) => tracing::info!("data partition mounted on {DATA_MOUNT}"),
        Err(e) => {
            tracing::error!("data partition: {e}: using a tmpfs, STATE WILL NOT PERSIST");
            if let Err(e) = sys::mount_fs("tmpfs", DATA_MOUNT, "tmpfs", flags, Some("mode=0755")) {
                tracing::error!("{e}");
            }
        }
    }
}

/// Loopback, the management NIC and a separate fabric NIC (see [`netplan`]).
fn bring_up_network(board: Option<&Board>, cmdline: &Cmdline) -> netlink::Applied {
    let plan = netplan::plan(board.map(|b| &b.network), cmdline);
    if plan.management().and_then(|m| m.address).is_none() {
        tracing::error!("network: no management address (board file or onair.ip=)");
    }
    netlink::apply(
        &plan,
        netlink::Waits {
            management: Duration::from_secs(10),
            fabric: Duration::from_secs(5),
        },
    )
}

/// `onair init-net --board FILE [--cmdline TEXT]`: the network bring-up of `onair init`, on its
/// own (not PID 1). For tests in a network namespace and for checking a board on a bench; it
/// changes the network of wherever it runs. Exit 0 if the management address is set.
pub fn net_main(args: &[String]) -> ExitCode {
    let mut board_file = None;
    let mut cmdline_text = String::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--board", Some(v)) => board_file = Some(PathBuf::from(v)),
            ("--cmdline", Some(v)) => cmdline_text = v.clone(),
            _ => {
                eprintln!("usage: onair init-net --board FILE [--cmdline TEXT]");
                return ExitCode::from(2);
            }
        }
    }
    let board = match board_file.as_deref().map(Board::load) {
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => {
            eprintln!("onair init-net: {e}");
            return ExitCode::from(2);
        }
        None => None,
    };
    let cmdline = Cmdline::parse(&cmdline_text);
    for w in &cmdline.warnings {
        tracing::warn!("kernel command line: {w}");
    }
    let plan = netplan::plan(board.as_ref().map(|b| &b.network), &cmdline);
    let waits = netlink::Waits {
        management: Duration::from_secs(2),
        fabric: Duration::from_secs(1),
    };
    let applied = netlink::apply(&plan, waits);
    println!(
        "management {} fabric {}",
        applied.management.map_or("-".into(), |a| a.to_string()),
        applied.fabric.map_or("-".into(), |a| a.to_string())
    );
    if applied.management.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The service's config: /data/onair.toml if present, else state in /data/onair and the API
/// on the management address (HTTPS, port 8443); fabric sources on the management subnet and
/// on a separate fabric NIC's subnet.
fn service_config(net: netlink::Applied) -> RunConfig {
    if Path::new(DATA_CONFIG).exists() {
        match RunConfig::load(Path::new(DATA_CONFIG)) {
            Ok(c) => return c,
            Err(e) => tracing::error!("{e}: using the built-in config"),
        }
    }
    let ip = net.management.map_or(Ipv4Addr::UNSPECIFIED, |c| c.addr);
    let mut c = RunConfig {
        data_dir: PathBuf::from(DATA_DIR),
        ..RunConfig::default()
    };
    c.api.listen = SocketAddr::new(IpAddr::V4(ip), API_PORT);
    c.api.tls = Some(true);
    c.fabric.allowed_sources = vec!["127.0.0.0/8".into()];
    for n in [net.management, net.fabric].into_iter().flatten() {
        c.fabric.allowed_sources.push(network_of(n).to_string());
    }
    c
}

/// The network a CIDR address is in ("10.0.2.15/24" → "10.0.2.0/24").
fn network_of(c: Ipv4Cidr) -> Ipv4Cidr {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(c.prefix_len))
        .unwrap_or(0);
    Ipv4Cidr {
        addr: Ipv4Addr::from(u32::from(c.addr) & mask),
        prefix_len: c.prefix_len,
    }
}

/// Runs the service until a signal says to stop; retries a failed start every 5 s.
async fn serve(config: RunConfig) -> Action {
    use tokio::signal::unix::{SignalKind, signal};
    let kinds = [
        SignalKind::terminate(),
        SignalKind::user_defined2(),
        SignalKind::interrupt(),
        SignalKind::user_defined1(),
        SignalKind::child(),
    ];
    let mut sigs = Vec::new();
    for k in kinds {
        match signal(k) {
            Ok(s) => sigs.push(s),
            Err(e) => tracing::error!("signal handler: {e}"),
        }
    }
    let Ok([mut term, mut usr2, mut int, mut usr1, mut child]) = <[_; 5]>::try_from(sigs) else {
        return wait_signal_blocking();
    };
    let mut next_signal = async move || -> Action {
        loop {
            tokio::select! {
                _ = term.recv() => return Action::PowerOff,
                _ = usr2.recv() => return Action::PowerOff,
                _ = int.recv() => return Action::Reboot,
                _ = usr1.recv() => return Action::Reboot,
                _ = child.recv() => reap(),
                _ = tokio::time::sleep(Duration::from_secs(30)) => reap(),
            }
        }
    };
    let token = sys::fw_cfg_admin_token().map(crate::secret::Secret::new);
    loop {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let started = crate::run::start_with(
            &config,
            async move {
                let _ = rx.await;
            },
            token.clone(),
        )
        .await;
        match started {
            Ok(service) => {
                if let Some(path) = &service.admin_token_file {
                    first_boot_banner(&service, path);
                }
                let action = next_signal().await;
                tracing::info!(?action, "stopping the service");
                let _ = tx.send(());
                let _ = tokio::time::timeout(Duration::from_secs(10), service.api.join()).await;
                return action;
            }
            Err(e) => {
                tracing::error!("the service did not start: {e}; retrying in 5 s");
                tokio::select! {
                    a = next_signal() => return a,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    }
}

fn first_boot_banner(service: &crate::run::Service, token_file: &Path) {
    let addr = service.api.local_addr();
    eprintln!(
        "\n==================== onair: first boot ====================\n\
         admin API        https://{addr}/\n\
         certificate      SHA-256 {}\n\
         admin token      {} (data partition, root only)\n\
         ===========================================================\n",
        service.api.fingerprint().unwrap_or("-"),
        token_file.display()
    );
}

/// Collects every exited child (orphans are re-parented to PID 1).
fn reap() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Without a runtime: block until SIGTERM/SIGUSR2 (power off) or SIGINT/SIGUSR1 (reboot).
fn wait_signal_blocking() -> Action {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGUSR2,
        Signal::SIGINT,
        Signal::SIGUSR1,
    ] {
        set.add(s);
    }
    let _ = set.thread_block();
    loop {
        match set.wait() {
            Ok(Signal::SIGINT | Signal::SIGUSR1) => return Action::Reboot,
            Ok(_) => return Action::PowerOff,
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

fn shutdown(action: Action, watchdog: Option<sys::Watchdog>) -> ! {
    use nix::sys::reboot::{RebootMode, reboot};
    use nix::sys::signal::{Signal, kill};
    // Any other process (none in normal operation) gets SIGTERM, then SIGKILL.
    let all = nix::unistd::Pid::from_raw(-1);
    if kill(all, Signal::SIGTERM).is_ok() {
        std::thread::sleep(Duration::from_millis(500));
        let _ = kill(all, Signal::SIGKILL);
    }
    reap();
    if let Some(w) = watchdog {
        w.disarm();
    }
    nix::unistd::sync();
    match sys::unmount(DATA_MOUNT) {
        Ok(()) => tracing::info!("{DATA_MOUNT} unmounted"),
        Err(e) => tracing::error!("{e}"),
    }
    nix::unistd::sync();
    let mode = match action {
        Action::PowerOff => RebootMode::RB_POWER_OFF,
        Action::Reboot => RebootMode::RB_AUTOBOOT,
    };
    eprintln!(
        "onair: {}",
        if action == Action::PowerOff {
            "power off"
        } else {
            "reboot"
        }
    );
    loop {
        let Err(e) = reboot(mode);
        tracing::error!("reboot({mode:?}): {e}");
        std::thread::sleep(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_of_masks_the_host_bits() {
        let n = |s: &str| network_of(s.parse().expect("cidr")).to_string();
        assert_eq!(n("10.0.2.15/24"), "10.0.2.0/24");
        assert_eq!(n("192.168.1.77/32"), "192.168.1.77/32");
        assert_eq!(n("172.16.5.4/12"), "172.16.0.0/12");
        assert_eq!(n("1.2.3.4/1"), "0.0.0.0/1");
    }

    #[test]
    fn built_in_service_config_serves_https_on_the_management_address() {
        let c = service_config(netlink::Applied {
            management: "10.0.2.15/24".parse().ok(),
            fabric: None,
        });
        assert_eq!(c.api.listen, "10.0.2.15:8443".parse().expect("addr"));
        assert_eq!(c.api_tls(), Some(true));
        assert_eq!(c.data_dir, PathBuf::from("/data/onair"));
        assert!(
            c.fabric
                .allowed_sources
                .contains(&"10.0.2.0/24".to_string())
        );
        c.validate().expect("valid");
        let c = service_config(netlink::Applied {
            management: "10.0.2.15/24".parse().ok(),
            fabric: "192.168.50.10/24".parse().ok(),
        });
        assert_eq!(
            c.fabric.allowed_sources,
            ["127.0.0.0/8", "10.0.2.0/24", "192.168.50.0/24"]
        );
        c.validate().expect("valid");
    }
}
