//! The `onair.*` parameters of the kernel command line (pure).
//!
//! - `onair.slot=a|b`: which root partition (`root_a`/`root_b`) to mount. Default `a`.
//! - `onair.ip=ADDR/PREFIX`: the management address (overrides the board file).
//! - `onair.gw=ADDR`: the default gateway (overrides the board file).
//! - `onair.fabric_ip=ADDR/PREFIX`: the fabric NIC's address, when the board's fabric NIC is
//!   not the management NIC (overrides the board file's `fabric_address`).
//! - `onair.fabric_gw=ADDR`: a fallback default route through the fabric NIC (overrides the
//!   board file's `fabric_gateway`).
//!
//! Unknown `onair.*` keys and bad values are reported, never fatal.

use std::net::Ipv4Addr;

use crate::board::Ipv4Cidr;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cmdline {
    pub slot: Slot,
    pub ip: Option<Ipv4Cidr>,
    pub gw: Option<Ipv4Addr>,
    pub fabric_ip: Option<Ipv4Cidr>,
    pub fabric_gw: Option<Ipv4Addr>,
    /// Problems to log: unknown keys, bad values.
    pub warnings: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Slot {
    #[default]
    A,
    B,
}

impl Slot {
    /// The GPT partition name of this slot's root.
    pub fn root_partition(self) -> &'static str {
        match self {
            Slot::A => crate::board::ROOT_A,
            Slot::B => crate::board::ROOT_B,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

impl Cmdline {
    pub fn parse(text: &str) -> Cmdline {
        let mut c = Cmdline::default();
        for word in text.split_ascii_whitespace() {
            let Some(rest) = word.strip_prefix("onair.") else {
                continue;
            };
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            match key {
                "slot" => match value {
                    "a" => c.slot = Slot::A,
                    "b" => c.slot = Slot::B,
                    _ => c
                        .warnings
                        .push(format!("onair.slot={value:?}: expected a or b")),
                },
                "ip" => match value.parse() {
                    Ok(ip) => c.ip = Some(ip),
                    Err(e) => c.warnings.push(format!("onair.ip: {e}")),
                },
                "gw" => match value.parse() {
                    Ok(gw) => c.gw = Some(gw),
                    Err(_) => c
                        .warnings
                        .push(format!("onair.gw={value:?}: bad IPv4 address")),
                },
                "fabric_ip" => match value.parse() {
                    Ok(ip) => c.fabric_ip = Some(ip),
                    Err(e) => c.warnings.push(format!("onair.fabric_ip: {e}")),
                },
                "fabric_gw" => match value.parse() {
                    Ok(gw) => c.fabric_gw = Some(gw),
                    Err(_) => c
                        .warnings
                        .push(format!("onair.fabric_gw={value:?}: bad IPv4 address")),
                },
                _ => c.warnings.push(format!("unknown parameter onair.{key}")),
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_onair_parameters_and_ignores_others() {
        let c = Cmdline::parse(
            "console=ttyS0,115200 onair.slot=b quiet onair.ip=10.0.2.15/24 onair.gw=10.0.2.2\n",
        );
        assert_eq!(c.slot, Slot::B);
        assert_eq!(c.ip, "10.0.2.15/24".parse().ok());
        assert_eq!(c.gw, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.slot.root_partition(), "root_b");
        assert_eq!((c.fabric_ip, c.fabric_gw), (None, None));
        let c = Cmdline::parse("onair.fabric_ip=192.168.50.10/24 onair.fabric_gw=192.168.50.1");
        assert_eq!(c.fabric_ip, "192.168.50.10/24".parse().ok());
        assert_eq!(c.fabric_gw, Some(Ipv4Addr::new(192, 168, 50, 1)));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn bad_values_warn_and_keep_defaults() {
        let c = Cmdline::parse("onair.slot=c onair.ip=10.0.2.15 onair.gw=x onair.colour");
        assert_eq!(c.slot, Slot::A);
        assert_eq!((c.ip, c.gw), (None, None));
        assert_eq!(c.warnings.len(), 4, "{:?}", c.warnings);
        let c = Cmdline::parse("onair.fabric_ip=192.168.50.10 onair.fabric_gw=1.2.3");
        assert_eq!((c.fabric_ip, c.fabric_gw), (None, None));
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("fabric_ip"), "{:?}", c.warnings);
    }
}
