//! The system calls of `onair init`: mounts, module loading, partitions by GPT name, the
//! watchdog, the ACPI power button, power off. All through `nix` (no `unsafe` here).
//! Every function reports failure to its caller; none panics.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

pub type Res<T> = std::result::Result<T, String>;

/// Mounts `fstype` `source` at `target` (creating the directory if it can).
pub fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Res<()> {
    let _ = fs::create_dir_all(target);
    mount(Some(source), target, Some(fstype), flags, data)
        .map_err(|e| format!("mount {fstype} {source} on {target}: {e}"))
}

/// Moves the mount at `from` to `to` (MS_MOVE).
pub fn move_mount(from: &str, to: &str) -> Res<()> {
    mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("move mount {from} → {to}: {e}"))
}

/// Whether `path` is a mount point (listed in /proc/self/mountinfo).
pub fn is_mounted(path: &str) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|t| t.lines().any(|l| l.split(' ').nth(4) == Some(path)))
        .unwrap_or(false)
}

/// The early mounts: devtmpfs, proc, sysfs, tmpfs on /run. Returns the failures.
pub fn early_mounts() -> Vec<String> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    let mut errors = Vec::new();
    for (src, target, fstype, flags, data) in [
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        ("proc", "/proc", "proc", nosuid | MsFlags::MS_NODEV, None),
        ("sysfs", "/sys", "sysfs", nosuid | MsFlags::MS_NODEV, None),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            nosuid | MsFlags::MS_NODEV,
            Some("mode=0755,size=16m"),
        ),
    ] {
        if is_mounted(target) {
            continue;
        }
        if let Err(e) = mount_fs(src, target, fstype, flags, data) {
            errors.push(e);
        }
    }
    errors
}

/// Loads the modules listed (one path per line, dependencies first) in `list`, relative to
/// `dir`. Already-loaded modules are fine. Returns (loaded, failures).
pub fn load_modules(dir: &Path, list: &Path) -> (usize, Vec<String>) {
    let text = match fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) => return (0, vec![format!("{}: {e}", list.display())]),
    };
    let mut loaded = 0;
    let mut errors = Vec::new();
    for rel in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = dir.join(rel);
        let result = fs::File::open(&path)
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)))
            .and_then(|f| nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty()));
        match result {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => loaded += 1,
            Err(e) => errors.push(format!("module {rel}: {e}")),
        }
    }
    (loaded, errors)
}

/// The `KEY=value` pairs of a sysfs `uevent` file (pure).
pub fn uevent_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// `/dev/NAME` of the partition whose GPT name is `partname`, waiting up to `wait` for the
/// disk to appear (drivers probe asynchronously).
pub fn find_partition(partname: &str, wait: Duration) -> Res<PathBuf> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(dir) = fs::read_dir("/sys/class/block") {
            for entry in dir.flatten() {
                let Ok(text) = fs::read_to_string(entry.path().join("uevent")) else {
                    continue;
                };
                if uevent_value(&text, "PARTNAME") == Some(partname)
                    && let Some(dev) = uevent_value(&text, "DEVNAME")
                {
                    return Ok(Path::new("/dev").join(dev));
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("no partition named {partname:?} after {wait:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits up to `wait` for network interface `name` to exist; returns its index.
pub fn wait_interface(name: &str, wait: Duration) -> Res<u32> {
    let deadline = Instant::now() + wait;
    loop {
        match nix::net::if_::if_nametoindex(name) {
            Ok(i) => return Ok(i),
            Err(e) if Instant::now() >= deadline => return Err(format!("interface {name}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A running watchdog petter; [`Watchdog::disarm`] stops it with the magic close.
pub struct Watchdog {
    stop: std::sync::mpsc::Sender<()>,
    done: std::sync::mpsc::Receiver<()>,
}

/// Pets `device` every `interval` on a thread until disarmed.
pub fn start_watchdog(device: &Path, interval: Duration) -> Res<Watchdog> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(device)
        .map_err(|e| format!("watchdog {}: {e}", device.display()))?;
    let (stop, stop_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            loop {
                if let Err(e) = f.write_all(b"\0") {
                    tracing::warn!(error = %e, "watchdog pet failed");
                }
                match stop_rx.recv_timeout(interval) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                    _ => break,
                }
            }
            // The magic close: the driver disarms, a clean shutdown is not taken for a hang.
            let _ = f.write_all(b"V");
            drop(f);
            let _ = done_tx.send(());
        })
        .map_err(|e| format!("watchdog thread: {e}"))?;
    Ok(Watchdog { stop, done })
}

impl Watchdog {
    /// Stops petting and disarms the watchdog (waits up to 2 s for the thread).
    pub fn disarm(self) {
        let _ = self.stop.send(());
        let _ = self.done.recv_timeout(Duration::from_secs(2));
    }
}

/// One `struct input_event` on 64-bit Linux: timeval (16 bytes), type, code, value.
pub const INPUT_EVENT_BYTES: usize = 24;
const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

/// Whether a raw input event is a press of the power key (pure).
pub fn is_power_press(ev: &[u8]) -> bool {
    if ev.len() < INPUT_EVENT_BYTES {
        return false;
    }
    let kind = u16::from_ne_bytes([ev[16], ev[17]]);
    let code = u16::from_ne_bytes([ev[18], ev[19]]);
    let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

/// Watches every input device named "Power Button" (ACPI, e.g. qemu `system_powerdown`) and
/// calls `on_press` when it is pressed. Returns how many devices it watches.
pub fn watch_power_button(on_press: impl Fn() + Send + Clone + 'static) -> usize {
    let Ok(dir) = fs::read_dir("/sys/class/input") else {
        return 0;
    };
    let mut n = 0;
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            continue;
        }
        let is_button = fs::read_to_string(entry.path().join("device/name"))
            .is_ok_and(|d| d.trim() == "Power Button");
        let Ok(mut f) = fs::File::open(Path::new("/dev/input").join(&name)) else {
            continue;
        };
        if !is_button {
            continue;
        }
        let cb = on_press.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("power-{name}"))
            .spawn(move || {
                let mut ev = [0u8; INPUT_EVENT_BYTES];
                while f.read_exact(&mut ev).is_ok() {
                    if is_power_press(&ev) {
                        cb();
                    }
                }
            });
        if spawned.is_ok() {
            n += 1;
        }
    }
    n
}

/// The admin token the qemu host may provision through fw_cfg (`opt/onair/admin-token`).
pub fn fw_cfg_admin_token() -> Option<String> {
    let raw = fs::read("/sys/firmware/qemu_fw_cfg/by_name/opt/onair/admin-token/raw").ok()?;
    let t = String::from_utf8(raw).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// Replaces the process image (PID 1 stays PID 1) with `path args…`.
pub fn exec(path: &str, args: &[&str]) -> Res<()> {
    let cpath = CString::new(path).map_err(|e| e.to_string())?;
    let cargs: Vec<CString> = args.iter().filter_map(|a| CString::new(*a).ok()).collect();
    nix::unistd::execv(&cpath, &cargs)
        .map(|_| ())
        .map_err(|e| format!("exec {path}: {e}"))
}

/// Enters `new_root` as `/`, the way switch_root does: move it over `/`, chroot, chdir.
/// The initramfs stays in memory underneath (it is small); it is not reachable any more.
pub fn switch_root(new_root: &str) -> Res<()> {
    nix::unistd::chdir(new_root).map_err(|e| format!("chdir {new_root}: {e}"))?;
    move_mount(".", "/")?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))
}

/// Unmounts `target` (lazily if it is busy).
pub fn unmount(target: &str) -> Res<()> {
    umount2(target, MntFlags::empty())
        .or_else(|_| umount2(target, MntFlags::MNT_DETACH))
        .map_err(|e| format!("umount {target}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uevent_lookup() {
        let t = "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nPARTN=2\nPARTNAME=root_a\n";
        assert_eq!(uevent_value(t, "PARTNAME"), Some("root_a"));
        assert_eq!(uevent_value(t, "DEVNAME"), Some("vda2"));
        assert_eq!(uevent_value(t, "PART"), None);
        assert_eq!(uevent_value("", "DEVNAME"), None);
    }

    #[test]
    fn power_key_press_only() {
        let ev = |kind: u16, code: u16, value: i32| {
            let mut b = vec![0u8; 16];
            b.extend_from_slice(&kind.to_ne_bytes());
            b.extend_from_slice(&code.to_ne_bytes());
            b.extend_from_slice(&value.to_ne_bytes());
            b
        };
        assert!(is_power_press(&ev(1, 116, 1)));
        assert!(!is_power_press(&ev(1, 116, 0)), "release");
        assert!(!is_power_press(&ev(0, 0, 0)), "sync");
        assert!(!is_power_press(&ev(1, 30, 1)), "another key");
        assert!(!is_power_press(&[1, 2, 3]));
    }
}
