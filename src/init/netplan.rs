//! The network plan (pure): the board's `[network]` and the kernel command line → the
//! interfaces `onair init` brings up, each with its address and routes. [`super::netlink`]
//! carries a plan out; nothing here touches the system.
//!
//! - **Management NIC**: address `onair.ip=` else `network.address`; default route via
//!   `onair.gw=` else `network.gateway`.
//! - **Fabric NIC**, only when the board names one that is not the management NIC: address
//!   `onair.fabric_ip=` else `network.fabric_address` (none: link up without IPv4 address);
//!   the multicast route `224.0.0.0/4` out of it, so a join on "any interface" (`iface=0.0.0.0`)
//!   and multicast sends go to the fabric, not to the management network; a fallback default
//!   route via `onair.fabric_gw=` else `network.fabric_gateway`, metric
//!   [`FABRIC_GATEWAY_METRIC`] (the management gateway, metric 0, always wins).
//! - Fabric NIC = management NIC (qemu-x86_64): one interface, as before — no multicast route.
//!
//! A bad setting is an error in [`NetPlan::errors`] and that setting is left out; the rest of the
//! plan stands (the management NIC must come up even if the fabric settings are wrong).

use std::fmt;
use std::net::Ipv4Addr;

use super::cmdline::Cmdline;
use crate::board::{Ipv4Cidr, Network};

/// The IPv4 multicast range, routed out of a separate fabric NIC.
pub const MULTICAST: Ipv4Cidr = Ipv4Cidr {
    addr: Ipv4Addr::new(224, 0, 0, 0),
    prefix_len: 4,
};

/// Metric of the fabric side's default route: a fallback behind the management gateway.
pub const FABRIC_GATEWAY_METRIC: u32 = 1024;

/// The management NIC when there is no board file.
pub const DEFAULT_MANAGEMENT: &str = "eth0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Management,
    Fabric,
    /// The fabric NIC is the management NIC.
    ManagementAndFabric,
}

/// One route out of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// None: the default route.
    pub dst: Option<Ipv4Cidr>,
    /// None: on-link (no gateway).
    pub gateway: Option<Ipv4Addr>,
    /// None: the kernel's default (0).
    pub metric: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Kernel name, e.g. "eth1".
    pub name: String,
    pub role: Role,
    /// None: link up only.
    pub address: Option<Ipv4Cidr>,
    /// Added after the address, in this order.
    pub routes: Vec<Route>,
}

/// A setting the plan refused, naming where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanError {
    /// "onair.fabric_ip=" or "network.fabric_address", ...
    pub setting: &'static str,
    pub reason: String,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (ignored)", self.setting, self.reason)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetPlan {
    /// The management NIC first, then a separate fabric NIC.
    pub interfaces: Vec<Interface>,
    pub errors: Vec<PlanError>,
}

impl NetPlan {
    pub fn management(&self) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.role != Role::Fabric)
    }

    pub fn fabric(&self) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.role != Role::Management)
    }
}

/// A value and the setting it came from: the command line wins over the board file.
fn pick<T: Copy>(
    cmdline: Option<T>,
    cmd_name: &'static str,
    board: Option<T>,
    board_name: &'static str,
) -> Option<(T, &'static str)> {
    cmdline
        .map(|v| (v, cmd_name))
        .or(board.map(|v| (v, board_name)))
}

/// The plan for `network` (None: no board file) and the kernel command line.
pub fn plan(network: Option<&Network>, cmdline: &Cmdline) -> NetPlan {
    let mut errors = Vec::new();
    let mut err = |setting, reason: String| errors.push(PlanError { setting, reason });
    let fabric_nic = network.and_then(Network::separate_fabric);

    let mgmt_name = network.map_or(DEFAULT_MANAGEMENT, |n| n.management.as_str());
    let mut mgmt = Interface {
        name: mgmt_name.to_string(),
        role: if fabric_nic.is_some() {
            Role::Management
        } else {
            Role::ManagementAndFabric
        },
        address: None,
        routes: Vec::new(),
    };
    let addr = pick(
        cmdline.ip,
        "onair.ip=",
        network.and_then(|n| n.address),
        "network.address",
    );
    mgmt.address = host(addr, &mut err);
    if let Some((gw, from)) = pick(
        cmdline.gw,
        "onair.gw=",
        network.and_then(|n| n.gateway),
        "network.gateway",
    ) && let Some(route) = gateway_route(mgmt.address, gw, from, None, &mut err)
    {
        mgmt.routes.push(route);
    }

    let Some(fabric_name) = fabric_nic else {
        for (set, name) in [
            (cmdline.fabric_ip.is_some(), "onair.fabric_ip="),
            (cmdline.fabric_gw.is_some(), "onair.fabric_gw="),
        ] {
            if set {
                err(
                    name,
                    format!("the fabric NIC is the management NIC ({mgmt_name})"),
                );
            }
        }
        return NetPlan {
            interfaces: vec![mgmt],
            errors,
        };
    };
    let mut fabric = Interface {
        name: fabric_name.to_string(),
        role: Role::Fabric,
        address: None,
        routes: Vec::new(),
    };
    let addr = pick(
        cmdline.fabric_ip,
        "onair.fabric_ip=",
        network.and_then(|n| n.fabric_address),
        "network.fabric_address",
    );
    fabric.address = host(addr, &mut err);
    if let (Some(m), Some(f)) = (mgmt.address, fabric.address)
        && m.overlaps(f)
    {
        let from = if cmdline.fabric_ip.is_some() {
            "onair.fabric_ip="
        } else {
            "network.fabric_address"
        };
        err(
            from,
            format!("{f} overlaps the management subnet of {m} on {mgmt_name}"),
        );
        fabric.address = None;
    }
    fabric.routes.push(Route {
        dst: Some(MULTICAST),
        gateway: None,
        metric: None,
    });
    if let Some((gw, from)) = pick(
        cmdline.fabric_gw,
        "onair.fabric_gw=",
        network.and_then(|n| n.fabric_gateway),
        "network.fabric_gateway",
    ) && let Some(route) = gateway_route(
        fabric.address,
        gw,
        from,
        Some(FABRIC_GATEWAY_METRIC),
        &mut err,
    ) {
        fabric.routes.push(route);
    }
    NetPlan {
        interfaces: vec![mgmt, fabric],
        errors,
    }
}

/// The address if it is a usable host address.
fn host(
    addr: Option<(Ipv4Cidr, &'static str)>,
    err: &mut impl FnMut(&'static str, String),
) -> Option<Ipv4Cidr> {
    let (a, from) = addr?;
    match a.check_host() {
        Ok(()) => Some(a),
        Err(e) => {
            err(from, e);
            None
        }
    }
}

/// The default route via `gw`, if `gw` is on the interface's subnet.
fn gateway_route(
    addr: Option<Ipv4Cidr>,
    gw: Ipv4Addr,
    from: &'static str,
    metric: Option<u32>,
    err: &mut impl FnMut(&'static str, String),
) -> Option<Route> {
    let Some(a) = addr else {
        err(from, format!("{gw}: needs an address on the same NIC"));
        return None;
    };
    match a.check_gateway(gw) {
        Ok(()) => Some(Route {
            dst: None,
            gateway: Some(gw),
            metric,
        }),
        Err(e) => {
            err(from, e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(management: &str, fabric: Option<&str>) -> Network {
        Network {
            management: management.into(),
            fabric: fabric.map(String::from),
            address: None,
            gateway: None,
            fabric_address: None,
            fabric_gateway: None,
        }
    }

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().expect("cidr")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    fn default_via(gw: &str, metric: Option<u32>) -> Route {
        Route {
            dst: None,
            gateway: Some(ip(gw)),
            metric,
        }
    }

    const MCAST: Route = Route {
        dst: Some(MULTICAST),
        gateway: None,
        metric: None,
    };

    #[test]
    fn shared_nic_is_one_interface_as_before() {
        let mut n = net("eth0", Some("eth0"));
        n.address = Some(cidr("10.0.2.15/24"));
        n.gateway = Some(ip("10.0.2.2"));
        let p = plan(Some(&n), &Cmdline::default());
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(
            p.interfaces,
            vec![Interface {
                name: "eth0".into(),
                role: Role::ManagementAndFabric,
                address: Some(cidr("10.0.2.15/24")),
                routes: vec![default_via("10.0.2.2", None)],
            }]
        );
        assert_eq!(p.management(), p.fabric());
        // No fabric named at all: the same.
        let p2 = plan(Some(&Network { fabric: None, ..n }), &Cmdline::default());
        assert_eq!(p2.interfaces, p.interfaces);
    }

    #[test]
    fn separate_fabric_gets_address_and_multicast_route() {
        let mut n = net("eth0", Some("eth1"));
        n.address = Some(cidr("10.1.0.5/24"));
        n.gateway = Some(ip("10.1.0.1"));
        n.fabric_address = Some(cidr("192.168.50.10/24"));
        let p = plan(Some(&n), &Cmdline::default());
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let m = p.management().expect("management");
        assert_eq!((m.name.as_str(), m.role), ("eth0", Role::Management));
        assert_eq!(m.routes, vec![default_via("10.1.0.1", None)]);
        let f = p.fabric().expect("fabric");
        assert_eq!((f.name.as_str(), f.role), ("eth1", Role::Fabric));
        assert_eq!(f.address, Some(cidr("192.168.50.10/24")));
        assert_eq!(
            f.routes,
            vec![MCAST],
            "no gateway on the fabric unless given"
        );
    }

    #[test]
    fn command_line_overrides_the_board() {
        let mut n = net("eth0", Some("eth1"));
        n.fabric_address = Some(cidr("192.168.50.10/24"));
        let c = Cmdline::parse(
            "onair.ip=10.9.0.2/24 onair.gw=10.9.0.1 onair.fabric_ip=172.20.0.2/16 \
             onair.fabric_gw=172.20.0.1",
        );
        let p = plan(Some(&n), &c);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let m = p.management().expect("management");
        assert_eq!(m.address, Some(cidr("10.9.0.2/24")));
        let f = p.fabric().expect("fabric");
        assert_eq!(f.address, Some(cidr("172.20.0.2/16")));
        assert_eq!(
            f.routes,
            vec![
                MCAST,
                default_via("172.20.0.1", Some(FABRIC_GATEWAY_METRIC))
            ]
        );
    }

    #[test]
    fn fabric_without_address_is_link_up_with_multicast_route() {
        let p = plan(
            Some(&net("eth0", Some("eth1"))),
            &Cmdline::parse("onair.ip=10.9.0.2/24"),
        );
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let f = p.fabric().expect("fabric");
        assert_eq!((f.address, f.routes.as_slice()), (None, &[MCAST][..]));
    }

    #[test]
    fn no_board_means_eth0_from_the_command_line() {
        let p = plan(
            None,
            &Cmdline::parse("onair.ip=10.0.2.15/24 onair.fabric_ip=10.5.0.1/24"),
        );
        assert_eq!(p.interfaces.len(), 1);
        let m = p.management().expect("management");
        assert_eq!(
            (m.name.as_str(), m.address),
            ("eth0", Some(cidr("10.0.2.15/24")))
        );
        assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
        assert_eq!(p.errors[0].setting, "onair.fabric_ip=");
        let p = plan(None, &Cmdline::default());
        assert_eq!(p.management().and_then(|m| m.address), None);
        assert!(p.errors.is_empty());
    }

    #[test]
    fn bad_addresses_are_named_errors_and_the_rest_stands() {
        let cases: &[(&str, &str)] = &[
            ("onair.ip=10.9.0.0/24", "onair.ip="),
            ("onair.ip=10.9.0.255/24", "onair.ip="),
            ("onair.ip=127.0.0.1/8", "onair.ip="),
            ("onair.ip=239.1.1.1/24", "onair.ip="),
            ("onair.ip=0.0.0.0/8", "onair.ip="),
            ("onair.ip=10.9.0.2/24 onair.gw=10.8.0.1", "onair.gw="),
            ("onair.ip=10.9.0.2/24 onair.gw=10.9.0.2", "onair.gw="),
            ("onair.gw=10.9.0.1", "onair.gw="),
            (
                "onair.ip=10.9.0.2/24 onair.fabric_ip=172.20.255.255/16",
                "onair.fabric_ip=",
            ),
            (
                "onair.ip=10.9.0.2/24 onair.fabric_ip=10.9.0.3/24",
                "onair.fabric_ip=",
            ),
            (
                "onair.ip=10.9.0.2/16 onair.fabric_ip=10.9.200.3/24",
                "onair.fabric_ip=",
            ),
            (
                "onair.ip=10.9.0.2/24 onair.fabric_gw=172.20.0.1",
                "onair.fabric_gw=",
            ),
            (
                "onair.ip=10.9.0.2/24 onair.fabric_ip=172.20.0.2/16 onair.fabric_gw=172.21.0.1",
                "onair.fabric_gw=",
            ),
        ];
        let n = net("eth0", Some("eth1"));
        for (line, setting) in cases {
            let p = plan(Some(&n), &Cmdline::parse(line));
            assert_eq!(p.errors.len(), 1, "{line}: {:?}", p.errors);
            assert_eq!(p.errors[0].setting, *setting, "{line}");
            assert!(p.errors[0].to_string().contains("ignored"), "{line}");
            // Management and fabric are both still there; nothing invalid is planned.
            assert_eq!(p.interfaces.len(), 2, "{line}");
            for i in &p.interfaces {
                if let Some(a) = i.address {
                    assert!(a.check_host().is_ok(), "{line}: {a}");
                }
            }
            let f = p.fabric().expect("fabric");
            assert_eq!(f.routes.first(), Some(&MCAST), "{line}");
        }
        // The management address survives a bad fabric address.
        let p = plan(
            Some(&n),
            &Cmdline::parse("onair.ip=10.9.0.2/24 onair.fabric_ip=10.9.0.3/24"),
        );
        assert_eq!(
            p.management().and_then(|m| m.address),
            Some(cidr("10.9.0.2/24"))
        );
        assert_eq!(p.fabric().and_then(|f| f.address), None);
    }

    #[test]
    fn fabric_settings_on_a_shared_nic_are_errors() {
        let c = Cmdline::parse(
            "onair.ip=10.0.2.15/24 onair.fabric_ip=10.5.0.2/24 onair.fabric_gw=10.5.0.1",
        );
        let p = plan(Some(&net("eth0", Some("eth0"))), &c);
        assert_eq!(p.interfaces.len(), 1);
        let settings: Vec<_> = p.errors.iter().map(|e| e.setting).collect();
        assert_eq!(settings, ["onair.fabric_ip=", "onair.fabric_gw="]);
    }

    /// An address-ish word for the command line: mostly near-valid values around two subnets,
    /// with out-of-range prefixes and garbage mixed in.
    fn word() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..=3, any::<u8>(), 0u8..=40)
                .prop_map(|(net, host, p)| format!("10.{net}.0.{host}/{p}")),
            (0u8..=3, any::<u8>()).prop_map(|(net, host)| format!("10.{net}.0.{host}")),
            (any::<u32>(), any::<u8>()).prop_map(|(a, p)| format!("{}/{p}", Ipv4Addr::from(a))),
            "[0-9./x]{0,20}",
        ]
    }

    proptest::proptest! {
        /// Whatever the command line says: no panic, and what is planned is sound.
        #[test]
        fn any_command_line_gives_a_sound_plan(
            ip in word(), gw in word(), fip in word(), fgw in word(), separate in proptest::bool::ANY,
        ) {
            let n = net("eth0", Some(if separate { "eth1" } else { "eth0" }));
            let line = format!("onair.ip={ip} onair.gw={gw} onair.fabric_ip={fip} onair.fabric_gw={fgw}");
            let p = plan(Some(&n), &Cmdline::parse(&line));
            proptest::prop_assert!(p.management().is_some());
            proptest::prop_assert_eq!(p.interfaces.len(), if separate { 2 } else { 1 });
            for i in &p.interfaces {
                if let Some(a) = i.address {
                    proptest::prop_assert!(a.check_host().is_ok(), "{}", a);
                }
                for r in &i.routes {
                    if let Some(g) = r.gateway {
                        let a = i.address.expect("a gateway route needs an address");
                        proptest::prop_assert!(a.check_gateway(g).is_ok(), "{} {}", a, g);
                    }
                }
            }
            if let (Some(m), Some(f)) = (
                p.management().and_then(|m| m.address),
                p.fabric().filter(|f| f.role == Role::Fabric).and_then(|f| f.address),
            ) {
                proptest::prop_assert!(!m.overlaps(f), "{} {}", m, f);
            }
        }
    }

    #[test]
    fn point_to_point_prefixes_are_hosts() {
        for s in ["10.0.0.0/31", "10.0.0.1/31", "10.0.0.7/32"] {
            assert!(cidr(s).check_host().is_ok(), "{s}");
        }
        assert!(cidr("10.0.0.0/30").check_host().is_err());
        assert!(cidr("10.0.0.3/30").check_host().is_err());
        assert!(cidr("255.255.255.255/32").check_host().is_err());
    }
}
