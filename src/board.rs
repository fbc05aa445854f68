//! Board files (`board/<name>/board.toml`): what the image recipe and `onair init` need to know
//! about one kind of hardware — target triple, the pinned Debian kernel and the modules to load,
//! console and kernel command line, NIC roles and the management address, the watchdog, the disk
//! and its partition layout, and for emulated boards the qemu arguments.
//!
//! Pure: parsing and validation only. Strict (unknown keys are refused, naming the key). The
//! image recipe reads a board through `onair board FILE` (shell assignments), so the build and
//! the device share this one parser.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

use crate::error::Result;

/// The partition names the image and `onair init` rely on (GPT partition names).
pub const ESP: &str = "esp";
pub const ROOT_A: &str = "root_a";
pub const ROOT_B: &str = "root_b";
pub const DATA: &str = "data";

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Must equal the folder name under `board/`.
    pub name: String,
    /// Free text. Default "".
    #[serde(default)]
    pub description: String,
    /// Rust target triple of the onair binary, e.g. "x86_64-unknown-linux-musl".
    pub target: String,
    pub kernel: Kernel,
    pub network: Network,
    /// No watchdog when absent.
    pub watchdog: Option<Watchdog>,
    pub disk: Disk,
    /// Emulated boards only.
    pub qemu: Option<Qemu>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Debian kernel flavour ("amd64", "cloud-amd64").
    pub flavour: String,
    /// Debian binary package, e.g. "linux-image-6.1.0-56-amd64".
    pub package: String,
    /// Pinned Debian version of that package, e.g. "6.1.192-2".
    pub version: String,
    /// `uname -r` of that kernel: the folder under /lib/modules.
    pub release: String,
    /// Modules to load at boot, in this order (their dependencies are added by the recipe).
    pub modules: Vec<String>,
    /// The console device without /dev, with options, e.g. "ttyS0,115200".
    pub console: String,
    /// Extra kernel command line (the recipe adds console= and onair.slot=). Default "".
    #[serde(default)]
    pub cmdline: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Kernel name of the NIC that carries the admin API (no udev renaming: "eth0").
    pub management: String,
    /// Kernel name of the NIC that faces the conferencing fabric. None: the management NIC.
    pub fabric: Option<String>,
    /// Static management address. The kernel command line `onair.ip=` overrides it.
    pub address: Option<Ipv4Cidr>,
    /// Default gateway. The kernel command line `onair.gw=` overrides it.
    pub gateway: Option<Ipv4Addr>,
    /// Static address of the fabric NIC, when it is not the management NIC. The kernel command
    /// line `onair.fabric_ip=` overrides it. None: the fabric NIC comes up without an IPv4
    /// address (link up and the multicast route only).
    pub fabric_address: Option<Ipv4Cidr>,
    /// A gateway on the fabric side: a default route through the fabric NIC with a worse metric
    /// than the management one (a fallback, never preferred). The kernel command line
    /// `onair.fabric_gw=` overrides it. None: no gateway on the fabric side.
    pub fabric_gateway: Option<Ipv4Addr>,
}

impl Network {
    /// The fabric NIC if it is a different interface from the management NIC.
    pub fn separate_fabric(&self) -> Option<&str> {
        self.fabric
            .as_deref()
            .filter(|f| *f != self.management.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watchdog {
    /// The driver module (also listed in kernel.modules), e.g. "i6300esb".
    pub driver: String,
    /// Default "/dev/watchdog".
    #[serde(default = "default_watchdog_device")]
    pub device: PathBuf,
    /// Seconds between pets. Default 5 (the drivers' default timeouts are 30 s or more).
    #[serde(default = "default_pet_interval")]
    pub pet_interval_s: u64,
}

fn default_watchdog_device() -> PathBuf {
    PathBuf::from("/dev/watchdog")
}

fn default_pet_interval() -> u64 {
    5
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// The disk the image is flashed to on this board, e.g. "/dev/vda", "/dev/nvme0n1".
    pub device: String,
    /// GPT partitions in disk order. Must hold esp, root_a, root_b and data.
    pub partitions: Vec<Partition>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// GPT partition name; `onair init` finds partitions by it.
    pub name: String,
    pub fs: Fs,
    /// Size in MiB.
    pub size_mib: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fs {
    Vfat,
    Squashfs,
    Ext4,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Qemu {
    /// Guest memory, MiB.
    pub memory_mib: u32,
    pub cpus: u32,
    /// Extra qemu arguments (devices); the runner adds firmware, disk, network and console.
    pub args: Vec<String>,
}

/// An IPv4 address with its prefix length, "10.0.2.15/24".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Network {
    /// The addresses must be usable host addresses and each gateway must be on its
    /// interface's subnet; fabric settings need a separate fabric NIC.
    fn validate(&self) -> Result<()> {
        let bad = |e: String| crate::err!(InvalidArgument, "board: network.{e}");
        if let Some(a) = self.address {
            a.check_host().map_err(|e| bad(format!("address: {e}")))?;
        }
        if let (Some(a), Some(gw)) = (self.address, self.gateway) {
            a.check_gateway(gw)
                .map_err(|e| bad(format!("gateway: {e}")))?;
        }
        if self.separate_fabric().is_none()
            && (self.fabric_address.is_some() || self.fabric_gateway.is_some())
        {
            return Err(bad(
                "fabric_address/fabric_gateway: need a fabric NIC other than the management NIC"
                    .into(),
            ));
        }
        if let Some(f) = self.fabric_address {
            f.check_host()
                .map_err(|e| bad(format!("fabric_address: {e}")))?;
            if let Some(a) = self.address
                && a.overlaps(f)
            {
                return Err(bad(format!(
                    "fabric_address: {f} overlaps the management subnet of {a}"
                )));
            }
        }
        if let Some(gw) = self.fabric_gateway {
            let f = self
                .fabric_address
                .ok_or_else(|| bad("fabric_gateway: needs fabric_address".into()))?;
            f.check_gateway(gw)
                .map_err(|e| bad(format!("fabric_gateway: {e}")))?;
        }
        Ok(())
    }
}

impl Ipv4Cidr {
    /// The network address ("10.0.2.15/24" → 10.0.2.0).
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    fn mask(self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    /// Whether `ip` is on this subnet.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// Whether the two subnets share any address.
    pub fn overlaps(self, other: Ipv4Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// An address an interface can have: unicast, not loopback, not the subnet's network or
    /// broadcast address (prefixes /31 and /32 have neither).
    pub fn check_host(self) -> std::result::Result<(), String> {
        let a = self.addr;
        if a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast() {
            return Err(format!("{self}: not a unicast host address"));
        }
        if self.prefix_len <= 30 {
            let host = u32::from(a) & !self.mask();
            if host == 0 || host == !self.mask() {
                return Err(format!(
                    "{self}: the network or broadcast address of its subnet"
                ));
            }
        }
        Ok(())
    }

    /// A gateway for this interface address: on its subnet and not the address itself.
    pub fn check_gateway(self, gw: Ipv4Addr) -> std::result::Result<(), String> {
        if gw == self.addr || !self.contains(gw) || gw.is_multicast() || gw.is_unspecified() {
            return Err(format!("{gw}: not a host on the subnet of {self}"));
        }
        Ok(())
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected ADDRESS/PREFIX"))?;
        let addr = a
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("{s:?}: bad IPv4 address"))?;
        let prefix_len = p
            .parse::<u8>()
            .ok()
            .filter(|n| (1..=32).contains(n))
            .ok_or_else(|| format!("{s:?}: prefix must be 1..=32"))?;
        Ok(Ipv4Cidr { addr, prefix_len })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Board {
    pub fn from_toml(text: &str) -> Result<Board> {
        let b: Board =
            toml::from_str(text).map_err(|e| crate::err!(InvalidArgument, "board: {e}"))?;
        b.validate()?;
        Ok(b)
    }

    pub fn load(path: &std::path::Path) -> Result<Board> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| crate::err!(InvalidArgument, "cannot read {}: {e}", path.display()))?;
        Board::from_toml(&text)
    }

    pub fn validate(&self) -> Result<()> {
        let ident = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        for (what, v) in [
            ("name", &self.name),
            ("target", &self.target),
            ("kernel.flavour", &self.kernel.flavour),
            ("kernel.package", &self.kernel.package),
            ("kernel.version", &self.kernel.version),
            ("kernel.release", &self.kernel.release),
            ("network.management", &self.network.management),
        ] {
            if !ident(v) {
                crate::bail!(InvalidArgument, "board: {what} {v:?} is not a plain name");
            }
        }
        if let Some(f) = &self.network.fabric
            && !ident(f)
        {
            crate::bail!(
                InvalidArgument,
                "board: network.fabric {f:?} is not a plain name"
            );
        }
        self.network.validate()?;
        if let Some(m) = self.kernel.modules.iter().find(|m| !ident(m)) {
            crate::bail!(InvalidArgument, "board: module {m:?} is not a plain name");
        }
        if let Some(w) = &self.watchdog
            && (w.pet_interval_s == 0 || !self.kernel.modules.contains(&w.driver))
        {
            crate::bail!(
                InvalidArgument,
                "board: watchdog driver {:?} must be in kernel.modules, pet_interval_s > 0",
                w.driver
            );
        }
        let mut names: Vec<&str> = Vec::new();
        for p in &self.disk.partitions {
            if p.size_mib == 0 || names.contains(&p.name.as_str()) || !ident(&p.name) {
                crate::bail!(
                    InvalidArgument,
                    "board: partition {:?}: empty, duplicate or bad name",
                    p.name
                );
            }
            names.push(&p.name);
        }
        for (need, fs) in [
            (ESP, Fs::Vfat),
            (ROOT_A, Fs::Squashfs),
            (ROOT_B, Fs::Squashfs),
            (DATA, Fs::Ext4),
        ] {
            if self.partition(need).map(|p| p.fs) != Some(fs) {
                crate::bail!(
                    InvalidArgument,
                    "board: needs partition {need:?} of fs {fs:?}"
                );
            }
        }
        Ok(())
    }

    pub fn partition(&self, name: &str) -> Option<&Partition> {
        self.disk.partitions.iter().find(|p| p.name == name)
    }

    /// `KEY='value'` lines for the image recipe's shell scripts (single-quoted, safe to `eval`).
    pub fn shell_vars(&self) -> String {
        let mut v: Vec<(String, String)> = vec![
            ("BOARD_NAME".into(), self.name.clone()),
            ("BOARD_TARGET".into(), self.target.clone()),
            ("KERNEL_FLAVOUR".into(), self.kernel.flavour.clone()),
            ("KERNEL_PACKAGE".into(), self.kernel.package.clone()),
            ("KERNEL_VERSION".into(), self.kernel.version.clone()),
            ("KERNEL_RELEASE".into(), self.kernel.release.clone()),
            ("KERNEL_MODULES".into(), self.kernel.modules.join(" ")),
            ("KERNEL_CONSOLE".into(), self.kernel.console.clone()),
            ("KERNEL_CMDLINE".into(), self.kernel.cmdline.clone()),
            ("DISK_DEVICE".into(), self.disk.device.clone()),
            (
                "PARTITIONS".into(),
                self.disk
                    .partitions
                    .iter()
                    .map(|p| format!("{}:{}:{}", p.name, fs_name(p.fs), p.size_mib))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        ];
        if let Some(q) = &self.qemu {
            v.push(("QEMU_MEMORY_MIB".into(), q.memory_mib.to_string()));
            v.push(("QEMU_CPUS".into(), q.cpus.to_string()));
            v.push(("QEMU_ARGS".into(), q.args.join(" ")));
        }
        v.iter()
            .map(|(k, val)| format!("{k}='{}'\n", val.replace('\'', r"'\''")))
            .collect()
    }
}

fn fs_name(fs: Fs) -> &'static str {
    match fs {
        Fs::Vfat => "vfat",
        Fs::Squashfs => "squashfs",
        Fs::Ext4 => "ext4",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU: &str = include_str!("../board/qemu-x86_64/board.toml");
    const GENERIC: &str = include_str!("../board/generic-x86_64/board.toml");

    #[test]
    fn shipped_boards_parse() {
        let q = Board::from_toml(QEMU).expect("qemu board");
        assert_eq!(q.name, "qemu-x86_64");
        assert_eq!(q.network.address, "10.0.2.15/24".parse().ok());
        assert!(q.qemu.is_some());
        assert_eq!(
            q.watchdog.as_ref().map(|w| w.driver.as_str()),
            Some("i6300esb")
        );
        let g = Board::from_toml(GENERIC).expect("generic board");
        assert_eq!(g.name, "generic-x86_64");
        assert!(g.qemu.is_none());
        for b in [&q, &g] {
            assert_eq!(b.target, "x86_64-unknown-linux-musl");
            for p in [ESP, ROOT_A, ROOT_B, DATA] {
                assert!(b.partition(p).is_some(), "{} lacks {p}", b.name);
            }
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let text = QEMU.replace("[network]", "[network]\ncolour = 1");
        let e = Board::from_toml(&text).expect_err("unknown key");
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn missing_partition_or_bad_watchdog_is_refused() {
        let text = QEMU.replace("name = \"root_b\"", "name = \"root_c\"");
        assert!(Board::from_toml(&text).is_err());
        let text = QEMU.replace("driver = \"i6300esb\"", "driver = \"softdog\"");
        assert!(Board::from_toml(&text).is_err());
    }

    #[test]
    fn fabric_settings_are_checked() {
        let g = Board::from_toml(GENERIC).expect("generic board");
        assert_eq!(g.network.separate_fabric(), Some("eth1"));
        let q = Board::from_toml(QEMU).expect("qemu board");
        assert_eq!(q.network.separate_fabric(), None);
        let with = |board: &str, extra: &str| {
            Board::from_toml(&board.replace("[network]", &format!("[network]\n{extra}")))
        };
        let ok = with(
            GENERIC,
            "address = \"10.1.0.2/24\"\nfabric_address = \"192.168.50.10/24\"\n\
             fabric_gateway = \"192.168.50.1\"",
        )
        .expect("fabric address and gateway");
        assert_eq!(ok.network.fabric_address, "192.168.50.10/24".parse().ok());
        for (board, extra, needle) in [
            (
                GENERIC,
                "fabric_address = \"192.168.50.0/24\"",
                "fabric_address",
            ),
            (
                GENERIC,
                "fabric_address = \"192.168.50.10\"",
                "ADDRESS/PREFIX",
            ),
            (
                GENERIC,
                "fabric_gateway = \"192.168.50.1\"",
                "needs fabric_address",
            ),
            (
                GENERIC,
                "address = \"10.1.0.2/16\"\nfabric_address = \"10.1.7.2/24\"",
                "overlaps",
            ),
            (
                GENERIC,
                "fabric_address = \"192.168.50.10/24\"\nfabric_gateway = \"10.0.0.1\"",
                "fabric_gateway",
            ),
            (
                QEMU,
                "fabric_address = \"192.168.50.10/24\"",
                "fabric NIC other",
            ),
        ] {
            let e = with(board, extra).expect_err(extra);
            assert!(e.to_string().contains(needle), "{extra}: {e}");
        }
        let e = Board::from_toml(&QEMU.replace("10.0.2.15/24", "10.0.2.255/24"))
            .expect_err("broadcast address");
        assert!(e.to_string().contains("broadcast"), "{e}");
        let e = Board::from_toml(&QEMU.replace("\"10.0.2.2\"", "\"10.0.3.2\""))
            .expect_err("gateway off the subnet");
        assert!(e.to_string().contains("network.gateway"), "{e}");
        let e = Board::from_toml(&GENERIC.replace("fabric = \"eth1\"", "fabric = \"eth 1\""))
            .expect_err("bad fabric name");
        assert!(e.to_string().contains("network.fabric"), "{e}");
    }

    #[test]
    fn cidr_parses_strictly() {
        let c: Ipv4Cidr = "10.0.2.15/24".parse().expect("cidr");
        assert_eq!((c.addr, c.prefix_len), (Ipv4Addr::new(10, 0, 2, 15), 24));
        assert_eq!(c.to_string(), "10.0.2.15/24");
        for bad in [
            "10.0.2.15",
            "10.0.2.15/33",
            "10.0.2.15/0",
            "x/24",
            "10.0.2/24",
            "",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn shell_vars_are_quoted() {
        let mut b = Board::from_toml(QEMU).expect("qemu board");
        b.kernel.cmdline = "a='b' c".into();
        let s = b.shell_vars();
        assert!(s.contains("KERNEL_CMDLINE='a='\\''b'\\'' c'\n"), "{s}");
        assert!(s.contains("PARTITIONS='esp:vfat:"), "{s}");
    }
}
